//! The PromQL engine: evaluates the project's AST (`ast`, converted from `promql-parser`) over the
//! `MetricsReader` read contract, for instant and range queries, with Prometheus 3.x semantics
//! (left-open ranges and lookback windows, staleness markers, optional delayed `__name__` removal).
//!
//! Owns: selection windows, lookback, functions, aggregations, binary operators and vector matching,
//! subqueries, `@`/`offset`, annotations (warnings/infos), sample limits and timeouts.
//! Never touches: HTTP or JSON (that is `api`), storage internals (only `MetricsReader`), ingest.

pub mod ast;
mod eval;
mod functions;
mod series_agg;
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
    /// `EngineOptions::cancel` was set (`canceled`, Prometheus's text).
    #[error("query was canceled in {0}")]
    Canceled(&'static str),
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
    /// Prometheus 3.x's `promql-delayed-name-removal` feature: `__name__` is removed at the end of
    /// evaluation instead of by each operation. Off by default, as in Prometheus; its test scripts
    /// run with it on.
    pub delayed_name_removal: bool,
    /// Set by the caller to stop the evaluation (the HTTP client went away); checked wherever the
    /// deadline is.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            lookback_delta_ms: 5 * 60 * 1000,
            max_samples: 50_000_000,
            timeout: Duration::from_secs(120),
            default_subquery_step_ms: 60_000,
            delayed_name_removal: false,
            cancel: None,
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
        eval::run(&self.opts, reader, expr, t, t, 0, true, true)
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
        eval::run(&self.opts, reader, expr, start, end, step.max(1), false, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Labels, stale_nan};
    use crate::storage::metrics::{MetricsDb, MetricsOptions, SeriesKey};
    use std::sync::Arc;

    /// `a{i="1"}`: 0,1,2,... every 10s up to 100s, then a staleness marker at 110s.
    /// `b{i="1"}`: 5 at 0s only. `c{i="2"}`: 1 at 0s and 60s.
    fn db() -> (Arc<MetricsDb>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut o = MetricsOptions::new(dir.path());
        o.block_duration = Duration::from_secs(100_000 * 86_400);
        o.too_far_in_future = Duration::from_secs(100_000 * 86_400);
        let db = MetricsDb::open(o).unwrap();
        let mut app = db.appender();
        let l = |n: &str, i: &str| Labels::from_pairs([("__name__", n), ("i", i)]).unwrap();
        let a = app.add_series(SeriesKey::Owned(l("a", "1")));
        for k in 0..=10 {
            app.add_sample(a, k * 10_000, k as f64);
        }
        app.add_sample(a, 110_000, stale_nan());
        let b = app.add_series(SeriesKey::Owned(l("b", "1")));
        app.add_sample(b, 0, 5.0);
        let c = app.add_series(SeriesKey::Owned(l("c", "2")));
        app.add_sample(c, 0, 1.0);
        app.add_sample(c, 60_000, 1.0);
        app.commit().unwrap();
        (db, dir)
    }

    fn render(v: &QueryValue) -> String {
        match v {
            QueryValue::Scalar { v, .. } => format_float(*v),
            QueryValue::String { s, .. } => s.clone(),
            QueryValue::Vector(vec) => {
                let mut s: Vec<String> = vec
                    .iter()
                    .map(|(l, _, v)| format!("{l} {}", format_float(*v)))
                    .collect();
                s.sort();
                s.join("; ")
            }
            QueryValue::Matrix(m) => m
                .iter()
                .map(|s| {
                    let pts: Vec<String> = s
                        .samples
                        .iter()
                        .map(|p| format!("{}@{}", format_float(p.v), p.t / 1000))
                        .collect();
                    format!("{} [{}]", s.labels, pts.join(" "))
                })
                .collect::<Vec<_>>()
                .join("; "),
        }
    }

    /// Evaluates `q` at `t_s` seconds and compares the rendered result (or error text).
    fn check(db: &MetricsDb, q: &str, t_s: i64, want: &str) {
        let e = parse(q).unwrap();
        let got = match Engine::default().instant(db, &e, t_s * 1000) {
            Ok(o) => render(&o.value),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, want, "{q} at {t_s}s");
    }

    #[test]
    fn semantics() {
        let (db, _d) = db();
        let db = db.as_ref();
        // Lookback: newest sample in (t-5m, t]; the staleness marker ends the series at once.
        check(db, "a", 105, r#"{__name__="a", i="1"} 10"#);
        check(db, "a", 115, "");
        check(db, "b", 299, r#"{__name__="b", i="1"} 5"#);
        check(db, "b", 300, "");
        // Range windows are left-open: (t-range, t].
        check(db, "count_over_time(a[30s])", 50, r#"{i="1"} 3"#);
        check(db, "last_over_time(a[30s])", 50, r#"{__name__="a", i="1"} 5"#);
        check(db, "a[20s]", 50, r#"{__name__="a", i="1"} [4@40 5@50]"#);
        // offset and @.
        check(db, "a offset 20s", 50, r#"{__name__="a", i="1"} 3"#);
        check(db, "a @ 30", 100, r#"{__name__="a", i="1"} 3"#);
        // Subquery steps are aligned to multiples of the step and exclude the left boundary.
        check(db, "a[30s:10s]", 50, r#"{__name__="a", i="1"} [3@30 4@40 5@50]"#);
        // rate with Prometheus's extrapolation: 1 per 10s, exactly.
        check(db, "rate(a[1m])", 100, r#"{i="1"} 0.1"#);
        check(db, "increase(a[1m])", 100, r#"{i="1"} 6"#);
        // Names dropped by arithmetic, kept by comparisons.
        check(db, "a * 2", 10, r#"{i="1"} 2"#);
        check(db, "a > 0", 10, r#"{__name__="a", i="1"} 1"#);
        check(db, "a == bool 1", 10, r#"{i="1"} 1"#);
        // Vector matching.
        check(db, "a + on(i) b", 10, r#"{i="1"} 6"#);
        check(db, "a + c", 10, "");
        check(
            db,
            "{i=~\".*\", __name__=~\"a|b\"} + on() c",
            10,
            r#"error: multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"#,
        );
        check(
            db,
            "c + on() {__name__=~\"a|b\"}",
            10,
            r#"error: found duplicate series for the match group {} on the right hand-side of the operation: [{__name__="a", i="1"}, {__name__="b", i="1"}];many-to-many matching not allowed: matching labels must be unique on one side"#,
        );
        check(db, "a or c", 10, r#"{__name__="a", i="1"} 1; {__name__="c", i="2"} 1"#);
        check(db, "a unless on(i) b", 10, "");
        // Aggregations and functions.
        check(db, "sum by (i) ({__name__=~\"a|b|c\"})", 10, r#"{i="1"} 6; {i="2"} 1"#);
        check(db, "topk(1, {__name__=~\"a|b\"})", 10, r#"{__name__="b", i="1"} 5"#);
        check(db, "count_values(\"v\", {__name__=~\"a|c\"})", 10, r#"{v="1"} 2"#);
        check(db, "absent(nope{x=\"y\"})", 10, r#"{x="y"} 1"#);
        check(
            db,
            "label_replace(a, \"j\", \"$1-x\", \"i\", \"(.*)\")",
            10,
            r#"{__name__="a", i="1", j="1-x"} 1"#,
        );
        check(
            db,
            "-{__name__=~\"a|b\"}",
            10,
            "error: vector cannot contain metrics with the same labelset",
        );
        check(db, "scalar(b) + 1", 10, "6");
        check(db, "time()", 42, "42");
        check(db, "\"s\"", 1, "s");
    }

    #[test]
    fn limits() {
        let (db, _d) = db();
        let engine = Engine::new(EngineOptions {
            max_samples: 100,
            ..EngineOptions::default()
        });
        let run = |q: &str| match engine.instant(db.as_ref(), &parse(q).unwrap(), 100_000) {
            Ok(o) => render(&o.value),
            Err(e) => e.to_string(),
        };
        let too_many = "query processing would load too many samples into memory in query execution";
        // Empty inner steps count too: memory, not just samples, is what the limit protects.
        assert_eq!(run("count_over_time(nope[1h:1s])"), too_many);
        assert_eq!(run("count_over_time(vector(1)[99s:1s])"), "{} 99");
        let r = engine.range(db.as_ref(), &parse("vector(1)").unwrap(), 0, 1_000_000, 1000);
        assert_eq!(r.map(|o| render(&o.value)).unwrap_or_else(|e| e.to_string()), too_many);
        let slow = Engine::new(EngineOptions {
            timeout: Duration::ZERO,
            ..EngineOptions::default()
        });
        let r = slow.instant(db.as_ref(), &parse("a").unwrap(), 0);
        assert_eq!(
            r.map(|o| render(&o.value)).unwrap_or_else(|e| e.to_string()),
            "query timed out in expression evaluation"
        );
    }
}
