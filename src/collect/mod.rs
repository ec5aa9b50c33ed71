//! Node collection: what this process gathers by itself on the node it runs on (as opposed to what
//! is pushed to it).
//!
//! Owns: `logs` (the pod-log tailer over `/var/log/pods`) and `scrape` (the metrics scraper).
//! Planned next to them: `kube` (the pod cache feeding the tailer's [`logs::LabelProvider`] and the
//! scraper's targets, Kubernetes events). Never touches: HTTP serving (that is `api`), the config
//! file (options come from `app`), storage internals: everything collected enters through
//! `ingest`'s single write path.

pub mod logs;
pub mod scrape;
