//! The Prometheus-compatible metrics scraper: exposition parser (`parse`), relabeling (`relabel`),
//! a minimal HTTP client (`http`) and the scrape pools and loops (`pool`).
//!
//! Owns: targets, their scrape loops, synthetic series and staleness. Never does: store anything
//! except through `ingest` (one commit per scrape), or serve HTTP (`/api/v1/targets` lives in
//! `api`); Kubernetes discovery plugs in through [`TargetProvider`], not here.

mod http;
pub mod parse;
mod pool;
pub mod relabel;

pub use pool::{
    ScrapeConfig, ScrapeState, Scraper, StaticConfig, StaticProvider, TargetGroup, TargetProvider, TargetStatus,
};

/// Everything that makes a scrape or a scrape config fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScrapeError {
    /// The body does not follow its exposition format; `line` is 1-based, 0 for the whole body.
    #[error("parse error at line {line}: {reason}")]
    Parse { line: usize, reason: &'static str },
    #[error("invalid scrape config: {0}")]
    Config(String),
    #[error("{0}")]
    Http(String),
    #[error("sample limit exceeded (limit {0})")]
    SampleLimit(usize),
}
