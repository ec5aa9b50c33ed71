//! The Prometheus-compatible metrics scraper: exposition parser (`parse`), relabeling (`relabel`),
//! a minimal HTTP/HTTPS client (`http`), `kubernetes_sd_configs` (`kubernetes`), the embedded
//! in-cluster jobs (`defaults`) and the scrape pools and loops (`pool`).
//!
//! Owns: targets, their scrape loops, synthetic series and staleness. Never does: store anything
//! except through `ingest` (one commit per scrape), or serve HTTP (`/api/v1/targets` lives in
//! `api`), or talk to the Kubernetes API: `kubernetes_sd_configs` reads the shared
//! [`crate::collect::meta::ClusterView`] through [`KubernetesProvider`].

mod defaults;
mod http;
pub mod kubernetes;
pub mod parse;
mod pool;
pub mod relabel;

pub use defaults::{IN_CLUSTER_DEFAULTS, in_cluster_defaults};
pub use http::{Authorization, BasicAuth, TlsConfig};
pub use kubernetes::{KubernetesProvider, KubernetesSdConfig};
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
    /// Prometheus's `errSampleLimit` text (what `/api/v1/targets` shows as `lastError`).
    #[error("sample limit exceeded")]
    SampleLimit,
    /// Prometheus's `errBodySizeLimit` text.
    #[error("body size limit exceeded")]
    BodySizeLimit,
    /// `label_limit`, `label_name_length_limit`, `label_value_length_limit` or `target_limit`,
    /// with Prometheus's text.
    #[error("{0}")]
    Limit(String),
}
