//! LogQL: parser, pipeline and engine, answering Loki's `/loki/api/v1/query` and `query_range`
//! with the exact `data` objects (and error texts) Loki 3.4.6 produces.
//!
//! Owns: request parameter parsing for the two query endpoints, LogQL parsing and evaluation,
//! and the JSON encoding of results. Never touches: HTTP (the api layer turns a `Response` into
//! a reply) or storage internals: logs are seen only through the `LogSource` trait.

pub mod ast;
pub mod eval;
pub mod format;
mod jsonwalk;
mod lexer;
pub mod parser;
pub mod pattern;
pub mod pipeline;
pub mod source;
mod store;
pub mod template;

pub use source::{EntryRef, LenRef, LogSource, MemSource, SourceEntry, SourceError, SourceStream};
pub use store::StoreSource;

use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// A parse error with Loki's text: `parse error at line 1, col 5: ...` or `parse error : ...`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{text}")]
pub struct ParseError {
    pub text: String,
    /// Some errors found while parsing are not 400s (e.g. `approx_topk` disabled: 500).
    pub internal: bool,
}

impl ParseError {
    /// At a byte offset of `src` (column counted in characters, 1-based).
    pub fn at(src: &str, pos: usize, msg: String) -> Self {
        let col = src.get(..pos).map(|p| p.chars().count()).unwrap_or(pos) + 1;
        ParseError {
            text: format!("parse error at line 1, col {col}: {msg}"),
            internal: false,
        }
    }
    /// Loki reports duration errors from its lexer with line 0 and a 0-based column.
    pub fn at_line0(src: &str, pos: usize, msg: String) -> Self {
        let col = src.get(..pos).map(|p| p.chars().count()).unwrap_or(pos);
        ParseError {
            text: format!("parse error at line 0, col {col}: {msg}"),
            internal: false,
        }
    }
    pub fn plain(msg: String) -> Self {
        ParseError {
            text: format!("parse error : {msg}"),
            internal: false,
        }
    }
    pub fn internal(msg: &str) -> Self {
        ParseError {
            text: msg.to_string(),
            internal: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Parse(ParseError),
    /// A user error answered with 400 (bad parameter, pipeline error).
    #[error("{0}")]
    BadRequest(String),
    /// Answered with 500.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn status(&self) -> u16 {
        match self {
            Error::Parse(p) if p.internal => 500,
            Error::Parse(_) | Error::BadRequest(_) => 400,
            Error::Internal(_) => 500,
        }
    }
}

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/loki/api/v1/query`
    Instant,
    /// `/loki/api/v1/query_range`
    Range,
}

/// What the HTTP layer sends back.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Json(Value),
    Text(String),
}

/// A tenant's query limits, with Loki's names (`limits_config`) and 3.4 defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `max_entries_limit_per_query`: a log query's `limit` above this is refused.
    pub max_entries: i64,
    /// `max_query_length` in ns; 0 = unlimited.
    pub max_query_length_ns: i64,
    /// `max_query_lookback` in ns: the start is moved up to `now` minus this; 0 = unlimited.
    pub max_query_lookback_ns: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 5000,
            max_query_length_ns: 721 * 3600 * 1_000_000_000,
            max_query_lookback_ns: 0,
        }
    }
}

/// Go's `time.Duration.String()` (`722h0m0s`, `1m30.5s`, `0s`), as Loki prints a query's length.
pub fn go_duration_string(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let u = ns.unsigned_abs();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if u < 1_000_000_000 {
        // Sub-second: the largest unit that keeps an integer part.
        let (div, unit) = if u < 1_000 {
            (1, "ns")
        } else if u < 1_000_000 {
            (1_000, "µs")
        } else {
            (1_000_000, "ms")
        };
        out.push_str(&frac(u, div));
        out.push_str(unit);
        return out;
    }
    let (h, rest) = (u / 3_600_000_000_000, u % 3_600_000_000_000);
    let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    if h > 0 {
        out.push_str(&format!("{h}h{m}m"));
    } else if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&frac(rest, 1_000_000_000));
    out.push('s');
    out
}

/// `v / div` with the fraction's trailing zeros dropped.
fn frac(v: u64, div: u64) -> String {
    let (i, f) = (v / div, v % div);
    if f == 0 {
        return i.to_string();
    }
    let width = div.to_string().len() - 1;
    let fs = format!("{f:0width$}");
    format!("{i}.{}", fs.trim_end_matches('0'))
}

/// Prometheus's `model.Duration.String()` (`30d1h`, `1m`, `0s`), as Loki prints a limit.
pub fn model_duration_string(ns: i64) -> String {
    let mut ms = ns.max(0) / 1_000_000;
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    // Years and weeks only when they divide exactly ("90d", not "12w6d"), as Prometheus prints.
    for (unit, size, exact) in [
        ("y", 365 * 86_400_000i64, true),
        ("w", 7 * 86_400_000, true),
        ("d", 86_400_000, false),
        ("h", 3_600_000, false),
        ("m", 60_000, false),
        ("s", 1000, false),
        ("ms", 1, false),
    ] {
        if exact && ms % size != 0 {
            continue;
        }
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}
const INSTANT_LOG: &str =
    "log queries are not supported as an instant query type, please change your query to a range query type";

/// Answers one query request. `params` are the query-string parameters, `headers` the request
/// headers (names matched case-insensitively).
pub fn handle(
    src: &dyn LogSource,
    kind: Endpoint,
    params: &HashMap<String, String>,
    headers: &HashMap<String, String>,
    now_ns: i64,
) -> Response {
    handle_limited(src, kind, params, headers, now_ns, &Limits::default())
}

/// [`handle`] with a tenant's limits.
pub fn handle_limited(
    src: &dyn LogSource,
    kind: Endpoint,
    params: &HashMap<String, String>,
    headers: &HashMap<String, String>,
    now_ns: i64,
    limits: &Limits,
) -> Response {
    match execute_limited(src, kind, params, headers, now_ns, limits) {
        Ok(v) => Response {
            status: 200,
            content_type: "application/json",
            body: Body::Json(v),
        },
        Err(e) => Response {
            status: e.status(),
            content_type: "text/plain; charset=utf-8",
            body: Body::Text(e.to_string()),
        },
    }
}

/// Loki's `parseTimestamp`: float seconds, integer seconds (≤10 digits), integer ns, RFC3339.
pub fn parse_time(s: &str, name: &str) -> Result<i64, Error> {
    if s.contains('.') && s.parse::<f64>().is_ok() {
        // Split on the dot rather than going through f64, which loses nanoseconds.
        let (i, f) = s.split_once('.').unwrap_or((s, ""));
        let neg = i.starts_with('-');
        let secs: i64 = if i.is_empty() || i == "-" {
            0
        } else {
            i.parse().unwrap_or(0)
        };
        let mut frac = format!("{f:0<9}");
        frac.truncate(9);
        let frac: i64 = frac.parse().unwrap_or(0);
        return Ok(secs * 1_000_000_000 + if neg { -frac } else { frac });
    }
    if let Ok(i) = s.parse::<i64>() {
        let digits = s.trim_start_matches('-').len();
        return Ok(if digits <= 10 { i * 1_000_000_000 } else { i });
    }
    crate::model::text::parse_rfc3339_ns(s).ok_or_else(|| {
        Error::BadRequest(format!(
            "could not parse '{name}' parameter: strconv.ParseInt: parsing {}: invalid syntax",
            parser::go_quote(s)
        ))
    })
}

/// Loki's step parsing: float seconds, or a duration.
fn parse_step(s: &str) -> Result<i64, Error> {
    if let Ok(f) = s.parse::<f64>() {
        return Ok((f * 1e9).round() as i64);
    }
    match parser::parse_duration(s) {
        Ok(d) if d >= 0 => Ok(d),
        _ => Err(Error::BadRequest(format!(
            "cannot parse {} to a valid duration",
            parser::go_quote(s)
        ))),
    }
}

fn header(headers: &HashMap<String, String>, name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

/// Like `handle`, for an api layer that maps errors itself (`Error::status` gives Loki's code):
/// the whole JSON body (`{"status":"success","data":{...}}`) or the error.
pub fn execute(
    src: &dyn LogSource,
    kind: Endpoint,
    params: &HashMap<String, String>,
    headers: &HashMap<String, String>,
    now_ns: i64,
) -> Result<Value, Error> {
    execute_limited(src, kind, params, headers, now_ns, &Limits::default())
}

/// [`execute`] with a tenant's limits.
pub fn execute_limited(
    src: &dyn LogSource,
    kind: Endpoint,
    params: &HashMap<String, String>,
    headers: &HashMap<String, String>,
    now_ns: i64,
    limits: &Limits,
) -> Result<Value, Error> {
    let p = |k: &str| params.get(k).map(String::as_str);
    let (mut start, end) = match kind {
        Endpoint::Range => {
            let end = match p("end") {
                Some(s) => parse_time(s, "end")?,
                None => now_ns,
            };
            let start = match p("start") {
                Some(s) => parse_time(s, "start")?,
                None => end - 3600 * 1_000_000_000,
            };
            (start, end)
        }
        Endpoint::Instant => {
            let t = match p("time") {
                Some(s) => parse_time(s, "time")?,
                None => now_ns,
            };
            (t, t)
        }
    };
    let limit: i64 = match p("limit") {
        Some(s) => s
            .parse()
            .map_err(|_| Error::BadRequest(format!("strconv.Atoi: parsing {}: invalid syntax", parser::go_quote(s))))?,
        None => 100,
    };
    if limit <= 0 {
        return Err(Error::BadRequest("limit must be a positive value".into()));
    }
    let forward = match p("direction").map(str::to_ascii_lowercase).as_deref() {
        None | Some("backward") => false,
        Some("forward") => true,
        Some(_) => {
            return Err(Error::BadRequest(format!(
                "invalid direction '{}'",
                p("direction").unwrap_or("")
            )));
        }
    };
    if kind == Endpoint::Range && end < start {
        return Err(Error::BadRequest(
            "end timestamp must not be before or equal to start time".into(),
        ));
    }
    // Loki's `ValidateQueryTimeRangeLimits`: the lookback clamps the start, then the length is
    // checked. An instant query has no length.
    if kind == Endpoint::Range {
        if limits.max_query_lookback_ns > 0 {
            // A range wholly before the lookback becomes empty (Loki answers an empty result).
            start = start.max(now_ns.saturating_sub(limits.max_query_lookback_ns)).min(end);
        }
        if limits.max_query_length_ns > 0 && end.saturating_sub(start) > limits.max_query_length_ns {
            return Err(Error::BadRequest(format!(
                "the query time range exceeds the limit (query length: {}, limit: {})",
                go_duration_string(end.saturating_sub(start)),
                model_duration_string(limits.max_query_length_ns)
            )));
        }
    }
    let step = match (kind, p("step")) {
        (Endpoint::Range, Some(s)) => {
            let st = parse_step(s)?;
            if st <= 0 {
                return Err(Error::BadRequest(
                    "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
                ));
            }
            st
        }
        (Endpoint::Range, None) => (((end - start) / 1_000_000_000 / 250).max(1)) * 1_000_000_000,
        _ => 0,
    };
    // Loki's (and Prometheus's) cap on points per series; it also bounds this engine's memory.
    if kind == Endpoint::Range && (end - start) / step > 11_000 {
        return Err(Error::BadRequest(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
                .into(),
        ));
    }
    let interval = match p("interval") {
        Some(s) => parse_step(s)?,
        None => 0,
    };
    let q = p("query").unwrap_or("");
    let expr = match parser::parse(q) {
        Ok(e) => e,
        // Loki builds a log pipeline's stages (regexes, templates, ip ranges) after checking
        // that a log query did not come to the instant endpoint.
        Err(e)
            if kind == Endpoint::Instant
                && e.text.starts_with("parse error : stage '")
                && q.trim_start().starts_with('{') =>
        {
            return Err(Error::BadRequest(INSTANT_LOG.into()));
        }
        Err(e) => return Err(Error::Parse(e)),
    };
    let categorize = header(headers, "X-Loki-Response-Encoding-Flags")
        .is_some_and(|v| v.split(',').any(|f| f.trim() == "categorize-labels"));
    match expr {
        ast::Expr::Log(le) => {
            if kind == Endpoint::Instant {
                return Err(Error::BadRequest(INSTANT_LOG.into()));
            }
            if limit > limits.max_entries {
                return Err(Error::BadRequest(format!(
                    "max entries limit per query exceeded, limit > max_entries_limit_per_query ({limit} > {})",
                    limits.max_entries
                )));
            }
            let streams = eval::eval_log(
                src,
                &le,
                eval::LogParams {
                    start,
                    end,
                    limit: limit as usize,
                    forward,
                    categorize,
                    interval,
                },
            )?;
            Ok(encode_streams(&streams, categorize))
        }
        ast::Expr::Metric(me) => {
            let steps: Vec<i64> = if kind == Endpoint::Instant {
                vec![start]
            } else {
                // The query frontend aligns start down and end up to a multiple of the step.
                let s = start.div_euclid(step) * step;
                let e = if end.rem_euclid(step) == 0 {
                    end
                } else {
                    (end.div_euclid(step) + 1) * step
                };
                let mut v = Vec::new();
                let mut t = s;
                while t <= e {
                    v.push(t);
                    t += step;
                }
                v
            };
            let ctx = eval::Ctx {
                src,
                steps: steps.clone(),
            };
            let res = eval::eval_metric(&ctx, &me)?;
            Ok(encode_metric(kind, &me, &steps, res))
        }
    }
}

/// Go `strconv.FormatFloat(v, 'f', -1, 64)` plus Prometheus's special values.
pub fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

/// Seconds with up to three decimals, as `model.Time` marshals.
fn fmt_ts(ns: i64) -> Value {
    let ms = ns.div_euclid(1_000_000);
    if ms % 1000 == 0 {
        json!(ms / 1000)
    } else {
        let v: f64 = format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
            .parse()
            .unwrap_or(0.0);
        json!(v)
    }
}

fn pairs_obj(p: &[(String, String)]) -> Value {
    let mut m = Map::new();
    let mut v: Vec<&(String, String)> = p.iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, val) in v {
        m.insert(k.clone(), Value::String(val.clone()));
    }
    Value::Object(m)
}

fn encode_streams(streams: &[eval::OutStream], categorize: bool) -> Value {
    let result: Vec<Value> = streams
        .iter()
        .map(|s| {
            let values: Vec<Value> = s
                .entries
                .iter()
                .map(|e| {
                    if categorize {
                        let mut meta = Map::new();
                        if !e.sm.is_empty() {
                            meta.insert("structuredMetadata".into(), pairs_obj(&e.sm));
                        }
                        if !e.parsed.is_empty() {
                            meta.insert("parsed".into(), pairs_obj(&e.parsed));
                        }
                        json!([e.ts.to_string(), e.line, Value::Object(meta)])
                    } else {
                        json!([e.ts.to_string(), e.line])
                    }
                })
                .collect();
            json!({"stream": pairs_obj(&s.labels), "values": values})
        })
        .collect();
    let mut data = Map::new();
    data.insert("resultType".into(), json!("streams"));
    if categorize {
        data.insert("encodingFlags".into(), json!(["categorize-labels"]));
    }
    data.insert("result".into(), Value::Array(result));
    json!({"status": "success", "data": Value::Object(data)})
}

fn outer_is_sort(e: &ast::MetricExpr) -> bool {
    matches!(
        e,
        ast::MetricExpr::Vector {
            op: ast::VecOp::Sort | ast::VecOp::SortDesc,
            ..
        }
    )
}

fn encode_metric(kind: Endpoint, e: &ast::MetricExpr, steps: &[i64], res: eval::StepVal) -> Value {
    let data = match (kind, res) {
        (Endpoint::Instant, eval::StepVal::Scalar(v)) => {
            let t = steps.first().copied().unwrap_or(0);
            // Loki's scalar timestamp overflows: trunc(int64(t_ns * 1000) / 1e6).
            let weird = t.wrapping_mul(1000) / 1_000_000;
            json!({"resultType": "scalar", "result": [weird, fmt_value(v.first().copied().unwrap_or(0.0))]})
        }
        (Endpoint::Instant, eval::StepVal::Vector(v)) => {
            let t = steps.first().copied().unwrap_or(0);
            let mut samples = v.into_iter().next().unwrap_or_default();
            if !outer_is_sort(e) {
                samples.sort_by(|a, b| a.0.cmp(&b.0));
            }
            let result: Vec<Value> = samples
                .iter()
                .map(|(l, v)| json!({"metric": pairs_obj(l), "value": [fmt_ts(t), fmt_value(*v)]}))
                .collect();
            json!({"resultType": "vector", "result": result})
        }
        (Endpoint::Range, eval::StepVal::Scalar(v)) => {
            let values: Vec<Value> = steps
                .iter()
                .zip(v)
                .map(|(t, v)| json!([fmt_ts(*t), fmt_value(v)]))
                .collect();
            json!({"resultType": "matrix", "result": [{"metric": {}, "values": values}]})
        }
        (Endpoint::Range, eval::StepVal::Vector(v)) => {
            let mut series: HashMap<Vec<(String, String)>, Vec<Value>> = HashMap::new();
            for (t, samples) in steps.iter().zip(v) {
                for (l, val) in samples {
                    series.entry(l).or_default().push(json!([fmt_ts(*t), fmt_value(val)]));
                }
            }
            let mut keys: Vec<_> = series.into_iter().collect();
            keys.sort_by(|a, b| a.0.cmp(&b.0));
            let result: Vec<Value> = keys
                .into_iter()
                .map(|(l, vals)| json!({"metric": pairs_obj(&l), "values": vals}))
                .collect();
            json!({"resultType": "matrix", "result": result})
        }
    };
    json!({"status": "success", "data": data})
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod limit_texts {
    #[test]
    fn durations_print_as_go_and_prometheus_do() {
        fn check(ns: i64, go: &str, model: &str) {
            assert_eq!(super::go_duration_string(ns), go, "{ns}");
            assert_eq!(super::model_duration_string(ns), model, "{ns}");
        }
        const S: i64 = 1_000_000_000;
        check(0, "0s", "0s");
        check(1_500_000, "1.5ms", "1ms");
        check(90 * S, "1m30s", "1m30s");
        check(3600 * S, "1h0m0s", "1h");
        check(721 * 3600 * S, "721h0m0s", "30d1h");
        check(3661 * S + 500_000_000, "1h1m1.5s", "1h1m1s500ms");
        check(8 * 86_400 * S, "192h0m0s", "8d");
        check(14 * 86_400 * S, "336h0m0s", "2w");
    }
}
