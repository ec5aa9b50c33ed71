//! Node collection: what this process gathers by itself on the node it runs on.
//!
//! Owns: `logs` (the pod-log tailer over `/var/log/pods`). Planned next to it: `kube` (the pod
//! cache feeding the tailer's [`logs::LabelProvider`] and the scraper, Kubernetes events) and
//! `scrape`. Never touches: HTTP serving, the config file (options come from `app`), storage
//! internals: everything collected enters through `ingest`'s single write path.

pub mod logs;
