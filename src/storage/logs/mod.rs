//! The log store (Loki's model): a stream is a tenant and a label set; its entries (ns timestamp,
//! line, structured metadata) go to the WAL, then to the stream's head block, which is compressed
//! into a block of the stream's open chunk when it holds `block_size` bytes; a chunk is closed at
//! `chunk_target_size` raw bytes or by age. An inverted index maps label pairs to streams.
//!
//! Owns: `<data>/logs/` (`wal/`: entries not yet in a block; `data/`: stream, block and chunk
//! records; `index/`: streams gone idle, moved out of memory, see [`index`]). Never touches: HTTP, LogQL, validation policy (that is `ingest`), configuration files.
//! Writers use [`LogStore::append`]; readers use [`LogReader`].
//!
//! Both directories are logs of the shared `storage::wal` format (segments of CRC-framed records,
//! torn-tail repair, checkpoints). `data/` is read back by position ([`crate::storage::wal::read_record_at`]),
//! and its oldest segments are dropped by retention through a checkpoint that re-states the live
//! streams. Record layouts are drawn in [`block`].

pub mod block;
mod index;
mod read;
mod store;

pub use block::{Codec, Entry};
pub use read::{
    BlockBatch, BlockEntry, BlockVisitor, Direction, EntryIter, IndexStats, LogReader, SelectRequest, StreamEntry,
};
pub use store::{AppendResult, LogStore, LogsOptions, LogsStats, PushEntry, PushStream, StreamKey};

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("logs: {0}")]
    Wal(#[from] crate::storage::wal::WalError),
    #[error("logs: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("logs: corrupt record: {0}")]
    BadRecord(&'static str),
    #[error("logs: record format version {0} is newer than this build (1)")]
    UnsupportedVersion(u8),
    #[error("logs: unknown block codec {0}")]
    UnknownCodec(u8),
    #[error("logs: compression: {0}")]
    Codec(String),
    #[error("the log store is closed")]
    Closed,
}
