//! The database: metrics (Prometheus TSDB model) and logs (Loki model), on local disk.
//!
//! Owns: every byte under the data directory. Never touches: HTTP, PromQL/LogQL, Kubernetes,
//! inotify or configuration files; it is configured through plain option structs and read through
//! the small traits in `metrics` and `logs` (select by matchers and time range, iterate samples).

pub(crate) mod label_key;
pub mod logs;
pub mod metrics;
pub mod wal;
