//! The Prometheus-compatible metrics scraper: exposition parser (`parse`).
//!
//! Owns: turning scrape bodies into samples and metadata. Never does: store anything except
//! through `ingest` (one commit per scrape), or serve HTTP (`/api/v1/targets` lives in `api`).

pub mod parse;

/// Everything that makes a scrape fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScrapeError {
    /// The body does not follow its exposition format; `line` is 1-based, 0 for the whole body.
    #[error("parse error at line {line}: {reason}")]
    Parse { line: usize, reason: &'static str },
}
