//! The single write path: validation, limits and rejection counters between a decoded request and
//! the store.
//!
//! Owns: the rules that decide whether a series or sample is accepted, and the counters that say
//! why one was not. Never touches: HTTP (status codes are decided in `api::error`), wire decoding
//! (`proto`), or storage internals beyond the `Appender` contract.

mod loki;
mod remote_write;

pub use loki::{
    Appended, AppendedStream, DEFAULT_SERVICE_NAME_LABELS, DecodedStream, Discard, LokiIngester, LokiLimits, LokiStats,
    PushOutcome,
};

pub use remote_write::{IngestStats, Limits, MetricsIngester, SeriesRejection, WriteOutcome};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A failure a retry can fix (disk full, WAL write error): maps to 5xx.
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::metrics::StorageError),
    /// The log store failed (disk full, WAL write error): maps to 5xx.
    #[error("log store: {0}")]
    Logs(#[from] crate::storage::logs::LogsError),
    /// The push body could not be decoded: 400.
    #[error("{0}")]
    Decode(#[from] crate::proto::ProtoError),
}
