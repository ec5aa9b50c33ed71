//! The Prometheus query endpoints: `/api/v1/query`, `/api/v1/query_range`, `format_query`,
//! `parse_query`, and the stubs Grafana probes (`buildinfo`, `query_exemplars`, `rules`, `alerts`).
//!
//! Owns: query parameter parsing (Prometheus's texts), running the engine off the async reactor, and
//! the result JSON (Go float formatting, second timestamps with ms fractions, `resultType` first).
//! Never touches: evaluation semantics (that is `query::promql`) or status-code policy (`error.rs`).

use super::ApiState;
use super::error::ApiError;
use super::params::{self, Form};
use crate::model::Labels;
use crate::query::promql::{self, QueryOutput, QueryValue, format_float};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Prometheus refuses range queries with more points per series than this.
const MAX_POINTS: i64 = 11_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn json_response(body: String) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Prometheus's `parseDuration`: float seconds or a duration string such as `1m30s`.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    crate::model::text::parse_duration_ms(s)
}

/// A timestamp in seconds with the millisecond fraction and no trailing zeros.
fn push_ts(out: &mut String, t: i64) {
    if t < 0 {
        out.push('-');
    }
    let a = t.unsigned_abs();
    let _ = write!(out, "{}", a / 1000);
    let ms = a % 1000;
    if ms != 0 {
        let frac = format!("{ms:03}");
        let _ = write!(out, ".{}", frac.trim_end_matches('0'));
    }
}

fn push_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

fn push_labels(out: &mut String, l: &Labels) {
    out.push('{');
    for (i, x) in l.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(out, &x.name);
        out.push(':');
        push_str(out, &x.value);
    }
    out.push('}');
}

fn push_point(out: &mut String, t: i64, v: f64) {
    out.push('[');
    push_ts(out, t);
    out.push_str(",\"");
    out.push_str(&format_float(v));
    out.push_str("\"]");
}

/// `data.result` and its type, encoded the way Prometheus's JSON codec does.
pub fn encode_value(out: &mut String, v: &QueryValue) {
    out.push_str("\"resultType\":\"");
    out.push_str(v.type_name());
    out.push_str("\",\"result\":");
    match v {
        QueryValue::Scalar { t, v } => push_point(out, *t, *v),
        QueryValue::String { t, s } => {
            out.push('[');
            push_ts(out, *t);
            out.push(',');
            push_str(out, s);
            out.push(']');
        }
        QueryValue::Vector(vec) => {
            out.push('[');
            for (i, (l, t, v)) in vec.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                push_labels(out, l);
                out.push_str(",\"value\":");
                push_point(out, *t, *v);
                out.push('}');
            }
            out.push(']');
        }
        QueryValue::Matrix(m) => {
            out.push('[');
            for (i, s) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                push_labels(out, &s.labels);
                out.push_str(",\"values\":[");
                for (k, p) in s.samples.iter().enumerate() {
                    if k > 0 {
                        out.push(',');
                    }
                    push_point(out, p.t, p.v);
                }
                out.push_str("]}");
            }
            out.push(']');
        }
    }
}

fn encode_output(o: &QueryOutput, stats: bool, elapsed: f64) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"status\":\"success\",\"data\":{");
    encode_value(&mut out, &o.value);
    if stats {
        let _ = write!(
            out,
            ",\"stats\":{{\"timings\":{{\"evalTotalTime\":{elapsed},\"resultSortTime\":0,\"queryPreparationTime\":0,\"innerEvalTime\":{elapsed},\"execQueueTime\":0,\"execTotalTime\":{elapsed}}},\"samples\":{{\"totalQueryableSamples\":{},\"peakSamples\":{}}}}}",
            o.total_samples, o.peak_samples
        );
    }
    out.push('}');
    for (key, list) in [("warnings", &o.warnings), ("infos", &o.infos)] {
        if list.is_empty() {
            continue;
        }
        let _ = write!(out, ",\"{key}\":[");
        for (i, w) in list.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_str(&mut out, w);
        }
        out.push(']');
    }
    out.push('}');
    out
}

fn parse_expr(form: &Form) -> Result<promql::Expr, ApiError> {
    promql::parse(form.value("query")).map_err(|e| ApiError::bad_data(format!("invalid parameter \"query\": {e}")))
}

fn timeout(form: &Form, engine_default: Duration) -> Result<Duration, ApiError> {
    let s = form.value("timeout");
    if s.is_empty() {
        return Ok(engine_default);
    }
    let ms = parse_duration(s).map_err(|e| ApiError::bad_data(format!("invalid parameter \"timeout\": {e}")))?;
    Ok(Duration::from_millis(ms.max(0) as u64).min(engine_default))
}

async fn run_query(
    st: Arc<ApiState>,
    form: Form,
    range: Option<(i64, i64, i64)>,
    time: i64,
) -> Result<String, ApiError> {
    let expr = parse_expr(&form)?;
    let mut engine = st.engine.clone();
    engine.opts.timeout = timeout(&form, engine.opts.timeout)?;
    // Prometheus 3.x: `lookback_delta` overrides the lookback period for this query only.
    let lb = form.value("lookback_delta");
    if !lb.is_empty() {
        let ms = parse_duration(lb)
            .map_err(|e| ApiError::bad_data(format!("error parsing lookback delta duration: {e}")))?;
        if ms > 0 {
            engine.opts.lookback_delta_ms = ms;
        }
    }
    let stats = !form.value("stats").is_empty();
    let db = Arc::clone(&st.db);
    // Waiting for a slot counts against the query's timeout, as in Prometheus's queue.
    let queued = Instant::now();
    let permit = tokio::time::timeout(engine.opts.timeout, Arc::clone(&st.query_slots).acquire_owned())
        .await
        .map_err(|_| ApiError::from(promql::QueryError::Timeout("query queue")))?
        .map_err(|e| ApiError::internal(format!("query queue closed: {e}")))?;
    engine.opts.timeout = engine.opts.timeout.saturating_sub(queued.elapsed());
    // Each query runs on a thread of its own at a lower CPU priority: on a small machine a query
    // loop must not starve ingestion. promql_vs_prometheus, 2 cores: remote-write busy/idle 0.72
    // with queries at the same priority, see the README for the figure with this in place.
    // A client that disconnects drops this handler's future (hyper drops it with the connection):
    // the guard then sets the engine's cancel flag, and the query thread stops at its next deadline
    // check instead of evaluating to the end for nobody.
    let cancel = CancelOnDrop(Arc::default());
    engine.opts.cancel = Some(Arc::clone(&cancel.0));
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("promql".into())
        .spawn(move || {
            lower_thread_priority();
            let _permit = permit;
            let began = Instant::now();
            let res = match range {
                Some((s, e, step)) => engine.range(db.as_ref(), &expr, s, e, step),
                None => engine.instant(db.as_ref(), &expr, time),
            }
            .map_err(ApiError::from)
            .map(|out| encode_output(&out, stats, began.elapsed().as_secs_f64()));
            let _ = tx.send(res);
        })
        .map_err(|e| ApiError::internal(format!("starting a query thread: {e}")))?;
    let answer = rx.await;
    // Answered (the thread has sent and is ending): setting the flag now cancels nothing.
    drop(cancel);
    answer.map_err(|_| ApiError::internal("query thread ended without an answer"))?
}

/// Sets its flag when dropped: see `CancelOnDrop` in the query handler (the Loki handlers in
/// `loki_query.rs` use it the same way).
pub(super) struct CancelOnDrop(pub(super) Arc<std::sync::atomic::AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Nice value of query threads (0 is the default, 19 the lowest priority).
const QUERY_NICE: libc::c_int = 10;

/// Lowers the calling thread's priority (on Linux `setpriority` with a thread id applies to that
/// thread only). Best effort: a failure leaves the default priority.
pub(super) fn lower_thread_priority() {
    // SAFETY: plain syscalls on the calling thread; no memory is passed.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, QUERY_NICE);
    }
}

pub async fn query(State(st): State<Arc<ApiState>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let run = async {
        let form = Form::parse(uri.query(), &headers, &body)?;
        let t = params::time_param(&form, "time", now_ms())?;
        run_query(st, form, None, t).await
    };
    match run.await {
        Ok(b) => json_response(b),
        Err(e) => e.into_response(),
    }
}

fn required_time(form: &Form, name: &str) -> Result<i64, ApiError> {
    params::parse_time(form.value(name)).map_err(|e| ApiError::bad_data(format!("invalid parameter {name:?}: {e}")))
}

pub async fn query_range(State(st): State<Arc<ApiState>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let run = async {
        let form = Form::parse(uri.query(), &headers, &body)?;
        let start = required_time(&form, "start")?;
        let end = required_time(&form, "end")?;
        if end < start {
            return Err(ApiError::bad_data(
                "invalid parameter \"end\": end timestamp must not be before start time",
            ));
        }
        let step = parse_duration(form.value("step"))
            .map_err(|e| ApiError::bad_data(format!("invalid parameter \"step\": {e}")))?;
        if step <= 0 {
            return Err(ApiError::bad_data(
                "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        if end.saturating_sub(start) / step > MAX_POINTS {
            return Err(ApiError::bad_data(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
            ));
        }
        run_query(st, form, Some((start, end, step)), start).await
    };
    match run.await {
        Ok(b) => json_response(b),
        Err(e) => e.into_response(),
    }
}

pub async fn format_query(uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let run = || -> Result<String, ApiError> {
        let form = Form::parse(uri.query(), &headers, &body)?;
        let s = promql::ast::format(form.value("query"))
            .map_err(|e| ApiError::bad_data(format!("invalid parameter \"query\": {e}")))?;
        let mut out = String::from("{\"status\":\"success\",\"data\":");
        push_str(&mut out, &s);
        out.push('}');
        Ok(out)
    };
    match run() {
        Ok(b) => json_response(b),
        Err(e) => e.into_response(),
    }
}

pub async fn parse_query(uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let run = || -> Result<String, ApiError> {
        let form = Form::parse(uri.query(), &headers, &body)?;
        let e = parse_expr(&form)?;
        let v = promql::ast::to_json(&e);
        Ok(format!("{{\"status\":\"success\",\"data\":{v}}}"))
    };
    match run() {
        Ok(b) => json_response(b),
        Err(e) => e.into_response(),
    }
}

/// Prometheus's shape without `features`, so Grafana classifies the source as plain Prometheus.
pub async fn buildinfo() -> Response {
    json_response(format!(
        concat!(
            r#"{{"status":"success","data":{{"version":"3.5.0","revision":"monitoring-rs-{}","#,
            r#""branch":"HEAD","buildUser":"monitoring-rs","buildDate":"","goVersion":"none"}}}}"#
        ),
        env!("CARGO_PKG_VERSION")
    ))
}

pub async fn query_exemplars() -> Response {
    json_response(r#"{"status":"success","data":[]}"#.to_string())
}

pub async fn rules() -> Response {
    json_response(r#"{"status":"success","data":{"groups":[]}}"#.to_string())
}

pub async fn alerts() -> Response {
    json_response(r#"{"status":"success","data":{"alerts":[]}}"#.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        for (t, want) in [
            (4000, "4"),
            (1500, "1.5"),
            (1_700_000_000_123, "1700000000.123"),
            (10, "0.01"),
            (-1500, "-1.5"),
        ] {
            let mut s = String::new();
            push_ts(&mut s, t);
            assert_eq!(s, want);
        }
    }

    #[test]
    fn durations() {
        for (s, want) in [
            ("15", Some(15_000)),
            ("0.5", Some(500)),
            ("1m30s", Some(90_000)),
            ("5m", Some(300_000)),
            ("x", None),
        ] {
            assert_eq!(parse_duration(s).ok(), want, "{s}");
        }
    }
}
