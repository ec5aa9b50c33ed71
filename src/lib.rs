//! monitoring-rs: a small cluster's whole monitoring stack in one process.
//!
//! The library holds every module so that the black-box suites in `compat-tests/` can drive the
//! store directly (crash-recovery checks, model-based tests); `main.rs` is the binary's thin shell.
//! Module layering is described in README.md and enforced by `compat-tests/tidy.rs`.

pub mod api;
pub mod app;
pub mod collect;
pub mod config;
pub mod ingest;
pub mod model;
pub mod proto;
pub mod query;
pub mod storage;
pub mod telemetry;
