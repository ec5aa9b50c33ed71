//! The PromQL engine: evaluates the project's AST (`ast`, converted from `promql-parser`) over the
//! `MetricsReader` read contract, for instant and range queries, with Prometheus 3.x semantics
//! (left-open ranges and lookback windows, staleness markers, delayed `__name__` removal).
//!
//! Owns: selection windows, lookback, functions, aggregations, binary operators and vector matching,
//! subqueries, `@`/`offset`, annotations (warnings/infos), sample limits and timeouts.
//! Never touches: HTTP or JSON (that is `api`), storage internals (only `MetricsReader`), ingest.

pub mod ast;
mod eval;
mod functions;
mod value;

pub use ast::{Expr, ParseError, ValueType, parse};
pub use value::{QueryValue, RangeSeries, format_float};

use crate::storage::metrics::MetricsReader;
use std::time::Duration;

/// Why a query failed. `api/error.rs` maps each kind to Prometheus's error type and status.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The expression does not parse or has the wrong type (`bad_data`).
    #[error("{0}")]
    BadData(String),
    /// Evaluation failed (`execution`).
    #[error("{0}")]
    Execution(String),
    /// The timeout expired (`timeout`).
    #[error("query timed out in {0}")]
    Timeout(&'static str),
    /// `--query.max-samples` exceeded (`execution`, Prometheus's text).
    #[error("query processing would load too many samples into memory in {0}")]
    TooManySamples(&'static str),
    #[error("storage: {0}")]
    Storage(String),
}

/// Engine settings (Prometheus's `--query.*` flags).
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub lookback_delta_ms: i64,
    pub max_samples: usize,
    pub timeout: Duration,
    /// Subquery step when none is given (Prometheus: the global evaluation interval, 1m).
    pub default_subquery_step_ms: i64,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            lookback_delta_ms: 5 * 60 * 1000,
            max_samples: 50_000_000,
            timeout: Duration::from_secs(120),
            default_subquery_step_ms: 60_000,
        }
    }
}

/// A query's answer with its annotations and sample statistics.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    pub value: QueryValue,
    /// Full texts, "PromQL warning: ..." / "PromQL info: ...".
    pub warnings: Vec<String>,
    pub infos: Vec<String>,
    pub total_samples: u64,
    pub peak_samples: u64,
}

/// The engine. Cheap to clone; holds settings only.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    pub opts: EngineOptions,
}

impl Engine {
    pub fn new(opts: EngineOptions) -> Engine {
        Engine { opts }
    }

    /// Evaluates `expr` at `t` (ms).
    pub fn instant(&self, reader: &dyn MetricsReader, expr: &Expr, t: i64) -> Result<QueryOutput, QueryError> {
        eval::run(&self.opts, reader, expr, t, t, 0, true)
    }

    /// Evaluates `expr` at every step from `start` to `end` (ms, inclusive).
    pub fn range(
        &self,
        reader: &dyn MetricsReader,
        expr: &Expr,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<QueryOutput, QueryError> {
        eval::run(&self.opts, reader, expr, start, end, step.max(1), false)
    }
}
