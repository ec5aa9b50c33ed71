//! Loki's query endpoints: `/loki/api/v1/query` and `/loki/api/v1/query_range` (GET, and POST with a
//! form body), answered by the LogQL engine over the log store; and the query protection every
//! Loki read endpoint shares: the tenant limits (`limits.logs` in the config) and `query_timeout`,
//! enforced on a query thread of its own that stops when the deadline passes or the client leaves.
//!
//! Owns: turning an HTTP request into the engine's parameters and its answer into a reply, and the
//! stop signal (`Stop`) seen by the store reads. Never touches: LogQL semantics (in
//! `query::logql`) or storage internals (reads go through `LogReader`).

use super::ApiState;
use super::error::{LokiError, plain_text};
use super::loki::tenant;
use super::params::Form;
use super::query::{CancelOnDrop, lower_thread_priority};
use crate::model::{Labels, Matcher};
use crate::query::logql::{self, Body, Endpoint, StoreSource};
use crate::storage::logs::{BlockBatch, BlockVisitor, EntryIter, IndexStats, LogReader, LogsError, SelectRequest};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A tenant's Loki query limits (`limits.logs` in the config), with Loki's names and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LokiQueryLimits {
    /// `max_entries_limit_per_query`.
    pub max_entries: usize,
    /// `max_query_series`: series in a metric query's result.
    pub max_series: usize,
    /// `query_timeout`.
    pub timeout: Duration,
    /// `max_query_length`; zero = unlimited.
    pub max_query_length: Duration,
    /// `max_query_lookback`; zero = unlimited.
    pub max_query_lookback: Duration,
}

impl Default for LokiQueryLimits {
    fn default() -> Self {
        LokiQueryLimits {
            max_entries: 5000,
            max_series: 500,
            timeout: Duration::from_secs(60),
            max_query_length: Duration::from_secs(721 * 3600),
            max_query_lookback: Duration::ZERO,
        }
    }
}

impl LokiQueryLimits {
    fn engine(&self) -> logql::Limits {
        let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        logql::Limits {
            max_entries: i64::try_from(self.max_entries).unwrap_or(i64::MAX),
            max_query_length_ns: ns(self.max_query_length),
            max_query_lookback_ns: ns(self.max_query_lookback),
        }
    }
}

/// Loki read requests stopped early, for `/metrics`.
#[derive(Debug, Default)]
pub struct LokiQueryStats {
    /// Answered 504 after `query_timeout`.
    pub timed_out: AtomicU64,
    /// Abandoned because the client disconnected.
    pub canceled: AtomicU64,
}

/// What a query thread polls between blocks: true once the deadline has passed or the client has
/// gone (the handler's `CancelOnDrop` sets `cancel`). The cost is one clock read per block of
/// ~40 KiB raw: 30-45 ns (a 10M-read loop on the 2-core dev machine under load), against ≥ 40 µs
/// for the block itself even at the 1 GB/s of a needle scan, so under 0.1 %.
pub(super) struct Stop {
    deadline: Instant,
    cancel: Arc<AtomicBool>,
    /// Set the first time `should_stop` answered true: the result is then partial.
    fired: AtomicBool,
}

impl Stop {
    pub(super) fn should_stop(&self) -> bool {
        if self.fired.load(Ordering::Relaxed) {
            return true;
        }
        let stop = self.cancel.load(Ordering::Relaxed) || Instant::now() >= self.deadline;
        if stop {
            self.fired.store(true, Ordering::Relaxed);
        }
        stop
    }
}

/// Runs `f` on a query thread of its own at a lower CPU priority, as the PromQL handler does
/// (`query.rs`): it waits for one of the shared query slots, gets `query_timeout` counted from the
/// request's arrival (waiting included), and is answered 504 with Loki's text at the deadline even
/// if `f` has not returned yet; `f` sees the deadline and the client's disconnection through its
/// `Stop`, and a partial result it returns after stopping is never sent.
pub(super) async fn run_stoppable<T: Send + 'static>(
    st: &ApiState,
    f: impl FnOnce(&Stop) -> T + Send + 'static,
) -> Result<T, LokiError> {
    let deadline = tokio::time::Instant::now() + st.loki_limits.timeout;
    let timed_out = || {
        st.loki_query_stats.timed_out.fetch_add(1, Ordering::Relaxed);
        LokiError::Timeout
    };
    let permit = tokio::time::timeout_at(deadline, Arc::clone(&st.query_slots).acquire_owned())
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| LokiError::Internal(format!("query queue closed: {e}")))?;
    // Dropped with this future when the client disconnects: the thread then stops at its next
    // block instead of reading to the end for nobody.
    let cancel = CancelOnDrop(Arc::default());
    let stop = Stop {
        deadline: deadline.into_std(),
        cancel: Arc::clone(&cancel.0),
        fired: AtomicBool::new(false),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("logql".into())
        .spawn(move || {
            lower_thread_priority();
            let _permit = permit;
            let out = f(&stop);
            let _ = tx.send((out, stop.fired.load(Ordering::Relaxed)));
        })
        .map_err(|e| LokiError::Internal(format!("starting a query thread: {e}")))?;
    // Counts the request as canceled if this future is dropped (the client left) before the
    // thread answers or the deadline passes.
    let mut abandoned = CountOnDrop(Some(&st.loki_query_stats.canceled));
    let answer = tokio::time::timeout_at(deadline, rx).await;
    abandoned.0 = None;
    // Answered, or past the deadline: either way the thread has nothing more to do.
    drop(cancel);
    match answer {
        Ok(Ok((out, false))) => Ok(out),
        // Stopped early: the deadline passed (a client that left reads nothing).
        Ok(Ok((_, true))) | Err(_) => Err(timed_out()),
        Ok(Err(_)) => Err(LokiError::Internal("query thread ended without an answer".into())),
    }
}

/// Adds one to its counter when dropped.
struct CountOnDrop<'a>(Option<&'a AtomicU64>);

impl Drop for CountOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A `LogReader` whose block visits end once `stop` says so: the engine reads every log through
/// `visit_blocks`, so this is its deadline check without a line of engine code.
pub(super) struct StopReader<'a> {
    pub inner: &'a dyn LogReader,
    pub stop: &'a Stop,
}

impl LogReader for StopReader<'_> {
    fn select(&self, req: &SelectRequest) -> Result<EntryIter, LogsError> {
        self.inner.select(req)
    }
    fn series(&self, tenant: &str, matchers: &[Matcher], start: i64, end: i64) -> Result<Vec<Labels>, LogsError> {
        self.inner.series(tenant, matchers, start, end)
    }
    fn label_names(&self, tenant: &str, matchers: &[Matcher], start: i64, end: i64) -> Result<Vec<String>, LogsError> {
        self.inner.label_names(tenant, matchers, start, end)
    }
    fn label_values(
        &self,
        tenant: &str,
        name: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, LogsError> {
        self.inner.label_values(tenant, name, matchers, start, end)
    }
    fn index_stats(&self, tenant: &str, matchers: &[Matcher], start: i64, end: i64) -> Result<IndexStats, LogsError> {
        self.inner.index_stats(tenant, matchers, start, end)
    }
    fn visit_blocks(
        &self,
        req: &SelectRequest,
        lines: bool,
        ordered: bool,
        f: &mut dyn FnMut(&BlockBatch<'_>) -> bool,
    ) -> Result<(), LogsError> {
        // In an ordered visit `false` on a head skips only that head; every later call answers
        // `false` too, so the visit still ends within a block.
        self.inner
            .visit_blocks(req, lines, ordered, &mut |b| !self.stop.should_stop() && f(b))
    }
    fn visit_blocks_split(
        &self,
        req: &SelectRequest,
        lines: bool,
        ordered: bool,
        fs: &mut [&mut BlockVisitor<'_>],
    ) -> Result<(), LogsError> {
        // Each visitor stops taking blocks once the deadline passes; the visit ends when all have.
        let stop = self.stop;
        let mut wrapped: Vec<Box<BlockVisitor<'_>>> = fs
            .iter_mut()
            .map(|f| Box::new(move |i: usize, b: &BlockBatch<'_>| !stop.should_stop() && f(i, b)) as Box<BlockVisitor<'_>>)
            .collect();
        let mut refs: Vec<&mut BlockVisitor<'_>> = wrapped.iter_mut().map(|b| &mut **b).collect();
        self.inner.visit_blocks_split(req, lines, ordered, &mut refs)
    }
}

/// Series in a metric result (log results are bounded by `limit` instead).
fn series_count(v: &serde_json::Value) -> usize {
    match v["data"]["resultType"].as_str() {
        Some("matrix" | "vector") => v["data"]["result"].as_array().map_or(0, Vec::len),
        _ => 0,
    }
}

pub async fn query(State(st): State<Arc<ApiState>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    run(st, Endpoint::Instant, uri, headers, body).await
}

pub async fn query_range(State(st): State<Arc<ApiState>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    run(st, Endpoint::Range, uri, headers, body).await
}

async fn run(st: Arc<ApiState>, kind: Endpoint, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let params = match Form::parse(uri.query(), &headers, &body) {
        Ok(f) => f.first_values(),
        Err(e) => return plain_text(StatusCode::BAD_REQUEST, &e.message),
    };
    let hdrs: HashMap<String, String> = headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_ascii_lowercase(), v.to_string()))
        })
        .collect();
    let tenant = tenant(&headers);
    let logs = Arc::clone(&st.logs);
    let limits = st.loki_limits;
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let started = std::time::Instant::now();
    let answer = run_stoppable(&st, move |stop| {
        let reader = StopReader {
            inner: logs.as_ref(),
            stop,
        };
        let src = StoreSource {
            reader: &reader,
            tenant: &tenant,
        };
        logql::handle_limited(&src, kind, &params, &hdrs, now_ns, &limits.engine())
    })
    .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match answer.body {
        Body::Text(t) => plain_text(status, &t),
        Body::Json(mut v) => {
            if status == StatusCode::OK && series_count(&v) > limits.max_series {
                // Loki's `max_query_series` protection; we check the final result only.
                return plain_text(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "maximum number of series ({}) reached for a single query; consider reducing query cardinality by adding more specific stream selectors, reducing the time range, or aggregating results with functions like sum(), count() or topk()",
                        limits.max_series
                    ),
                );
            }
            if status == StatusCode::OK {
                super::loki_misc::attach_stats(&mut v, started.elapsed().as_secs_f64());
            }
            match serde_json::to_vec(&v) {
                Ok(bytes) => {
                    let mut r = (status, bytes).into_response();
                    // What Loki 3.4.6 sends (notes/loki-observed.md).
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json; charset=UTF-8"),
                    );
                    r
                }
                Err(e) => plain_text(StatusCode::INTERNAL_SERVER_ERROR, &format!("encoding response: {e}")),
            }
        }
    }
}
