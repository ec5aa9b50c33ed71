//! Query engines. Each reads storage only through its read contract (`MetricsReader`).
//!
//! Owns: parsing and evaluating query languages. Never touches: HTTP (that is `api`), ingest, or
//! storage internals beyond the read traits.

pub mod promql;
