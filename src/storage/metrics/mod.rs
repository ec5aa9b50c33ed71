//! The metrics store: WAL first, then an in-memory head of open chunks, cut every `block_duration`
//! into immutable on-disk blocks that are compacted and expired by retention.
//!
//! Owns: `<data>/metrics/` (`wal/`, `chunks_head/`, `blocks/`). Never touches: HTTP, query languages,
//! configuration parsing. Writers use [`Appender`] (commit or rollback); readers use [`MetricsReader`].

pub mod block;
pub mod chunk;
mod db;
mod head;
mod read;
mod walrec;

pub use db::{Appender, DbStats, MetricsDb, MetricsOptions, RejectReason, SeriesKey};
pub use read::{MetricMetadata, MetricsReader, SampleIter, SelectedSeries};

/// Errors of the metrics store. Per-sample rejections are not errors: they are reported by
/// [`Appender::commit`] as counts by [`RejectReason`].
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("write-ahead log: {0}")]
    Wal(#[from] crate::storage::wal::WalError),
    #[error("block: {0}")]
    Block(#[from] block::BlockError),
    #[error("chunk: {0}")]
    Chunk(#[from] chunk::ChunkError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt write-ahead log record: {0}")]
    BadRecord(&'static str),
    #[error("the metrics store is closed")]
    Closed,
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}
