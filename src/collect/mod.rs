//! Node collection: what this process gathers by itself on the node it runs on (as opposed to what
//! is pushed to it).
//!
//! Owns: `logs` (the pod-log tailer over `/var/log/pods`), `scrape` (the metrics scraper), `meta`
//! (the plain pod/node descriptions both consume through [`meta::ClusterView`]) and `kube` (the
//! watcher cache implementing `ClusterView` and the tailer's labels, Kubernetes events as log
//! streams; the only user of the `kube` crates). Never touches: HTTP serving (that is `api`), the config
//! file (options come from `app`), storage internals: everything collected enters through
//! `ingest`'s single write path.

pub mod kube;
pub mod logs;
pub mod meta;
pub mod scrape;
