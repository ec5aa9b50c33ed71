//! Loki's exploration endpoints for Grafana's Logs Drilldown and logcli: `/index/volume`,
//! `/index/volume_range`, `/detected_labels`, `/detected_fields`, `/detected_field/<name>/values`
//! and `/patterns` (API.md §3.2 #7–#13, shapes in §3.5).
//!
//! Owns: these summaries, computed by scanning the selected entries through `LogReader` (there is
//! no separate volume index or pattern ingester). Never touches: storage internals or LogQL
//! semantics: `detected_fields` and `patterns` run the query's pipeline through the engine's own
//! log-query evaluation first (as Loki runs the query before detecting fields); volumes and
//! detected labels take only the stream selector, as Loki's index-based answers do.

use super::ApiState;
use super::error::LokiError;
use super::loki::{Req, json_response, req, selector, store_err};
use super::loki_misc::{Measured, stats_value};
use super::loki_query::{Stop, StopReader, run_stoppable};
use crate::model::Labels;
use crate::query::logql::eval::{self, LogParams};
use crate::query::logql::pipeline::Pairs;
use crate::query::logql::{self, StoreSource, ast};
use crate::storage::logs::{Direction, LogReader, SelectRequest};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Loki's default `limit` for volume and detected fields.
const DEFAULT_VOLUME_LIMIT: usize = 100;
const DEFAULT_FIELDS_LIMIT: usize = 1000;
/// Lines scanned for detected fields (Loki's `line_limit` default).
const DEFAULT_LINE_LIMIT: usize = 1000;
/// Lines scanned for patterns: the pattern ingester samples, so a bound keeps this cheap.
const PATTERN_LINES: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum ExploreError {
    #[error("invalid aggregateBy '{0}': must be one of series, labels")]
    AggregateBy(String),
    #[error("invalid {0}: {1}")]
    Number(&'static str, String),
}

impl From<ExploreError> for LokiError {
    fn from(e: ExploreError) -> Self {
        LokiError::BadRequest(e.to_string())
    }
}

fn respond(r: Result<Value, LokiError>) -> Response {
    match r {
        Ok(v) => json_response(&v),
        Err(e) => e.into_response(),
    }
}

fn number(r: &Req, key: &'static str, default: usize) -> Result<usize, ExploreError> {
    match r.form.value(key) {
        "" => Ok(default),
        s => s.parse().map_err(|_| ExploreError::Number(key, s.to_string())),
    }
}

/// Only the stream selector of `query` (`{...}` up to its closing brace); what follows is a pipeline
/// these summaries do not evaluate.
fn stream_selector(q: &str) -> &str {
    let t = q.trim();
    if !t.starts_with('{') {
        return t;
    }
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in t.char_indices() {
        match quote {
            Some(qc) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && qc == '"' {
                    escaped = true;
                } else if c == qc {
                    quote = None;
                }
            }
            None if c == '"' || c == '`' => quote = Some(c),
            None if c == '}' => return &t[..=i],
            None => {}
        }
    }
    t
}

/// Every selected entry as (labels, ts, line, structured metadata), oldest first, at most `max`
/// (0 = all); newest first when `newest` (so a line limit keeps the recent ones).
fn scan(r: &Req, stop: &Stop, max: usize, newest: bool) -> Result<Vec<Scanned>, LokiError> {
    let matchers = selector(stream_selector(r.form.value("query")))?;
    let it = r
        .store
        .select(&SelectRequest {
            tenant: r.tenant.clone(),
            matchers,
            start: r.start,
            end: r.end.saturating_add(1),
            direction: if newest {
                Direction::Backward
            } else {
                Direction::Forward
            },
            limit: max,
            line_contains: Vec::new(),
        })
        .map_err(store_err)?;
    let mut out = Vec::new();
    for (i, e) in it.enumerate() {
        // The deadline check every 1024 entries: a few µs of work between two checks.
        if i % 1024 == 0 && stop.should_stop() {
            break;
        }
        let e = e.map_err(store_err)?;
        out.push((e.labels, e.entry.ts, e.entry.line, e.entry.metadata));
    }
    Ok(out)
}

/// One entry that passed the query's pipeline: stream labels, ts, line as the pipeline left it,
/// structured metadata and the labels its parsers extracted.
struct Piped {
    stream: Arc<Pairs>,
    ts: i64,
    line: String,
    sm: Pairs,
    parsed: Pairs,
}

/// The newest `max` entries of `query` (a log query, pipeline included) in the request's range.
fn scan_pipeline(r: &Req, stop: &Stop, max: usize) -> Result<Vec<Piped>, LokiError> {
    let q = r.form.value("query");
    let le = match logql::parser::parse(q) {
        Ok(ast::Expr::Log(le)) => le,
        Ok(ast::Expr::Metric(_)) => {
            return Err(LokiError::BadRequest(
                "only log queries are supported here, not metric queries".into(),
            ));
        }
        Err(e) => return Err(LokiError::BadRequest(e.to_string())),
    };
    let reader = StopReader {
        inner: r.store.as_ref(),
        stop,
    };
    let src = StoreSource {
        reader: &reader,
        tenant: &r.tenant,
    };
    let params = LogParams {
        start: r.start,
        end: r.end.saturating_add(1),
        limit: max,
        forward: false,
        categorize: true,
        interval: 0,
    };
    let streams = eval::eval_log(&src, &le, params).map_err(|e| match e.status() {
        400 => LokiError::BadRequest(e.to_string()),
        _ => LokiError::Internal(e.to_string()),
    })?;
    let mut out = Vec::new();
    for s in streams {
        let stream = Arc::new(s.labels);
        out.extend(s.entries.into_iter().map(|e| Piped {
            stream: Arc::clone(&stream),
            ts: e.ts,
            line: e.line,
            sm: e.sm,
            parsed: e.parsed,
        }));
    }
    Ok(out)
}

/// The parser name Loki reports for labels a query's own parser stage extracted.
fn query_parser(q: &str) -> Option<&'static str> {
    let Ok(ast::Expr::Log(le)) = logql::parser::parse(q) else {
        return None;
    };
    le.stages.iter().find_map(|s| match s {
        ast::Stage::Json(_) | ast::Stage::Unpack => Some("json"),
        ast::Stage::Logfmt { .. } => Some("logfmt"),
        ast::Stage::Regexp(_) => Some("regexp"),
        ast::Stage::Pattern(_) => Some("pattern"),
        _ => None,
    })
}

/// One scanned entry: stream labels, ts, line, structured metadata.
type Scanned = (Arc<Labels>, i64, String, Vec<(String, String)>);
/// A volume group's key (label pairs) and its (total bytes, bytes per bucket end).
type Groups = HashMap<Vec<(String, String)>, (u64, BTreeMap<i64, u64>)>;

fn labels_obj(pairs: &[(String, String)]) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert(k.clone(), Value::String(v.clone()));
    }
    Value::Object(m)
}

// ---------------------------------------------------------------------------------------------
// Volume.

struct VolumeParams {
    /// Labels to group by; empty means the names in the selector's matchers.
    targets: Vec<String>,
    by_labels: bool,
    limit: usize,
}

fn volume_params(r: &Req) -> Result<VolumeParams, LokiError> {
    let by_labels = match r.form.value("aggregateBy") {
        "" | "series" => false,
        "labels" => true,
        other => return Err(ExploreError::AggregateBy(other.to_string()).into()),
    };
    let mut targets: Vec<String> = r
        .form
        .value("targetLabels")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if targets.is_empty() {
        let ms = selector(stream_selector(r.form.value("query")))?;
        targets = ms
            .iter()
            .map(|m| m.name.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
    }
    Ok(VolumeParams {
        targets,
        by_labels,
        limit: number(r, "limit", DEFAULT_VOLUME_LIMIT)?,
    })
}

/// The group keys an entry of a stream with `labels` counts toward.
fn volume_keys(p: &VolumeParams, labels: &Labels) -> Vec<Vec<(String, String)>> {
    if p.by_labels {
        return labels
            .iter()
            .filter(|l| p.targets.is_empty() || p.targets.contains(&l.name))
            .map(|l| vec![(l.name.clone(), String::new())])
            .collect();
    }
    let key: Vec<(String, String)> = if p.targets.is_empty() {
        labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect()
    } else {
        labels
            .iter()
            .filter(|l| p.targets.contains(&l.name))
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect()
    };
    if key.is_empty() { Vec::new() } else { vec![key] }
}

/// Line bytes, as the store's ingestion accounting counts them (metadata such as the synthesized
/// `detected_level` would make a stream's volume depend on level detection).
fn entry_bytes(line: &str) -> u64 {
    line.len() as u64
}

/// Seconds as Prometheus prints a sample time.
fn secs(ns: i64) -> Value {
    let ms = ns.div_euclid(1_000_000);
    if ms % 1000 == 0 {
        json!(ms / 1000)
    } else {
        json!(ms as f64 / 1000.0)
    }
}

/// Byte volume per group for `/index/volume` (one vector at `end`) or `/index/volume_range`
/// (`step` buckets). Groups are ranked by total bytes, largest first, and cut to `limit`.
fn volume(r: &Req, stop: &Stop, range: bool) -> Result<Value, LokiError> {
    let started = std::time::Instant::now();
    let p = volume_params(r)?;
    let step = if range {
        match r.form.value("step") {
            "" => ((r.end - r.start) / 250).max(1_000_000_000),
            s => match s.parse::<f64>() {
                Ok(f) if f > 0.0 => (f * 1e9) as i64,
                _ => crate::model::text::parse_go_duration_ns(s)
                    .filter(|d| *d > 0)
                    .ok_or_else(|| ExploreError::Number("step", s.to_string()))?,
            },
        }
    } else {
        0
    };
    let mut totals: Groups = HashMap::new();
    for (labels, ts, line, _) in scan(r, stop, 0, false)? {
        let b = entry_bytes(&line);
        for k in volume_keys(&p, &labels) {
            let e = totals.entry(k).or_default();
            e.0 += b;
            if range {
                // A bucket is named by its end, as Loki's volume aggregation does.
                let bucket = r.start + ((ts - r.start).div_euclid(step) + 1) * step;
                *e.1.entry(bucket.min(r.end)).or_default() += b;
            }
        }
    }
    let mut groups: Vec<_> = totals.into_iter().collect();
    groups.sort_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(&b.0)));
    groups.truncate(p.limit.max(1));
    let result: Vec<Value> = groups
        .into_iter()
        .map(|(k, (total, buckets))| {
            if range {
                let values: Vec<Value> = buckets.iter().map(|(t, b)| json!([secs(*t), b.to_string()])).collect();
                json!({"metric": labels_obj(&k), "values": values})
            } else {
                json!({"metric": labels_obj(&k), "value": [secs(r.end), total.to_string()]})
            }
        })
        .collect();
    let n = result.len() as i64;
    Ok(json!({"status": "success", "data": {
        "resultType": if range { "matrix" } else { "vector" },
        "result": result,
        "stats": stats_value(Measured { exec_secs: started.elapsed().as_secs_f64(), entries_returned: n }),
    }}))
}

pub async fn index_volume(State(st): State<Arc<ApiState>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    run(&st, &uri, &headers, &body, |r, stop| volume(&r, stop, false)).await
}

pub async fn index_volume_range(
    State(st): State<Arc<ApiState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run(&st, &uri, &headers, &body, |r, stop| volume(&r, stop, true)).await
}

async fn run(
    st: &ApiState,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    f: impl FnOnce(Req, &Stop) -> Result<Value, LokiError> + Send + 'static,
) -> Response {
    let r = match req(st, uri, headers, body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    // Scans read chunk files and decode entries: off the reactor, on a query thread that stops
    // at `query_timeout` or when the client leaves, like `/query_range`.
    respond(run_stoppable(st, move |stop| f(r, stop)).await.and_then(|r| r))
}

// ---------------------------------------------------------------------------------------------
// Detected labels.

fn detected_labels(r: &Req) -> Result<Value, LokiError> {
    let matchers = selector(stream_selector(r.form.value("query")))?;
    let series = r
        .store
        .series(&r.tenant, &matchers, r.start, r.end)
        .map_err(store_err)?;
    let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in &series {
        for l in s.iter() {
            // Internal labels are not for users to filter on.
            if !l.name.starts_with("__") {
                values.entry(l.name.clone()).or_default().insert(l.value.clone());
            }
        }
    }
    let out: Vec<Value> = values
        .into_iter()
        .map(|(k, v)| json!({"label": k, "cardinality": v.len()}))
        .collect();
    Ok(json!({"detectedLabels": out}))
}

pub async fn detected_labels_handler(
    State(st): State<Arc<ApiState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run(&st, &uri, &headers, &body, |r, _| detected_labels(&r)).await
}

// ---------------------------------------------------------------------------------------------
// Detected fields.

/// Fields of one line: (name, value, parser, json path).
fn line_fields(line: &str) -> Vec<(String, String, &'static str, Vec<String>)> {
    let t = line.trim_start();
    if t.starts_with('{')
        && let Ok(Value::Object(m)) = serde_json::from_str::<Value>(t)
    {
        let mut out = Vec::new();
        flatten_json(&m, &mut Vec::new(), &mut out);
        return out;
    }
    logfmt_pairs(line)
        .into_iter()
        .map(|(k, v)| (k, v, "logfmt", Vec::new()))
        .collect()
}

fn flatten_json(
    m: &Map<String, Value>,
    path: &mut Vec<String>,
    out: &mut Vec<(String, String, &'static str, Vec<String>)>,
) {
    for (k, v) in m {
        path.push(k.clone());
        match v {
            Value::Object(inner) => flatten_json(inner, path, out),
            Value::Array(_) | Value::Null => {}
            other => {
                let s = match other {
                    Value::String(s) => s.clone(),
                    o => o.to_string(),
                };
                let name = crate::query::logql::pipeline::sanitize_key(&path.join("_"), false);
                out.push((name, s, "json", path.clone()));
            }
        }
        path.pop();
    }
}

/// `key=value` and `key="quoted value"` pairs, as Loki's logfmt parser finds them.
fn logfmt_pairs(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' && b[i] != b' ' {
            i += 1;
        }
        let key = &line[ks..i];
        if i >= b.len() || b[i] != b'=' {
            continue;
        }
        i += 1;
        let value = if i < b.len() && b[i] == b'"' {
            i += 1;
            let vs = i;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            let v = line.get(vs..i.min(b.len())).unwrap_or("").replace("\\\"", "\"");
            i += 1;
            v
        } else {
            let vs = i;
            while i < b.len() && b[i] != b' ' {
                i += 1;
            }
            line[vs..i].to_string()
        };
        if !key.is_empty() {
            out.push((crate::query::logql::pipeline::sanitize_key(key, false), value));
        }
    }
    out
}

/// Loki's detected field types, narrowest first.
fn field_type(v: &str) -> &'static str {
    if v.parse::<i64>().is_ok() {
        "int"
    } else if v.parse::<f64>().is_ok() {
        "float"
    } else if v == "true" || v == "false" {
        "boolean"
    } else if crate::model::text::parse_go_duration_ns(v).is_some() {
        "duration"
    } else if is_bytes(v) {
        "bytes"
    } else {
        "string"
    }
}

fn is_bytes(v: &str) -> bool {
    let num_end = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len());
    let unit = v[num_end..].trim().to_ascii_uppercase();
    num_end > 0 && ["B", "KB", "MB", "GB", "TB", "KIB", "MIB", "GIB", "TIB", "K", "M", "G"].contains(&unit.as_str())
}

#[derive(Default)]
struct Field {
    values: BTreeSet<String>,
    types: BTreeSet<&'static str>,
    parsers: BTreeSet<&'static str>,
    json_path: Vec<String>,
}

fn collect_fields(r: &Req, stop: &Stop) -> Result<BTreeMap<String, Field>, LokiError> {
    let line_limit = number(r, "line_limit", DEFAULT_LINE_LIMIT)?;
    let own_parser = query_parser(r.form.value("query"));
    let mut fields: BTreeMap<String, Field> = BTreeMap::new();
    for e in scan_pipeline(r, stop, line_limit)? {
        let is_stream_label = |k: &str| e.stream.iter().any(|(n, _)| n == k);
        // Labels the query's own parser extracted, then what the (possibly rewritten) line
        // parses to: a key seen in both counts once, as the query's.
        for (k, v) in &e.parsed {
            if is_stream_label(k) || k.starts_with("__") {
                continue;
            }
            let f = fields.entry(k.clone()).or_default();
            f.types.insert(field_type(v));
            if let Some(p) = own_parser {
                f.parsers.insert(p);
            }
            f.values.insert(v.clone());
        }
        for (k, v, parser, path) in line_fields(&e.line) {
            // A parsed key that is also a stream label is not a new field.
            if is_stream_label(&k) || e.parsed.iter().any(|(n, _)| *n == k) {
                continue;
            }
            let f = fields.entry(k).or_default();
            f.types.insert(field_type(&v));
            f.parsers.insert(parser);
            if f.json_path.is_empty() {
                f.json_path = path;
            }
            f.values.insert(v);
        }
        for (k, v) in e.sm {
            let f = fields.entry(k).or_default();
            f.types.insert(field_type(&v));
            f.values.insert(v);
        }
    }
    Ok(fields)
}

fn detected_fields(r: &Req, stop: &Stop) -> Result<Value, LokiError> {
    let limit = number(r, "limit", DEFAULT_FIELDS_LIMIT)?;
    let fields = collect_fields(r, stop)?;
    let out: Vec<Value> = fields
        .into_iter()
        .take(limit)
        .map(|(k, f)| {
            // Mixed types fall back to string, as Loki's field detection does.
            let ty = if f.types.len() == 1 {
                f.types.iter().next().copied().unwrap_or("string")
            } else {
                "string"
            };
            let parsers: Value = if f.parsers.is_empty() {
                Value::Null
            } else {
                json!(f.parsers.iter().collect::<Vec<_>>())
            };
            let mut o = json!({"label": k, "type": ty, "cardinality": f.values.len(), "parsers": parsers});
            if !f.json_path.is_empty()
                && let Some(m) = o.as_object_mut()
            {
                m.insert("jsonPath".into(), json!(f.json_path));
            }
            o
        })
        .collect();
    Ok(json!({"fields": out, "limit": limit}))
}

fn detected_field_values(r: &Req, stop: &Stop, name: &str) -> Result<Value, LokiError> {
    let limit = number(r, "limit", DEFAULT_FIELDS_LIMIT)?;
    let fields = collect_fields(r, stop)?;
    let values: Vec<String> = fields
        .get(name)
        .map(|f| f.values.iter().take(limit).cloned().collect())
        .unwrap_or_default();
    Ok(json!({"values": values, "limit": limit}))
}

pub async fn detected_fields_handler(
    State(st): State<Arc<ApiState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run(&st, &uri, &headers, &body, |r, stop| detected_fields(&r, stop)).await
}

pub async fn detected_field_values_handler(
    State(st): State<Arc<ApiState>>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run(&st, &uri, &headers, &body, move |r, stop| {
        detected_field_values(&r, stop, &name)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Patterns.

/// A line's template: whitespace-separated tokens, with every token (or `key=` value) that carries
/// a digit replaced by `<_>`, so lines differing only in numbers, ids and times group together.
pub fn template(line: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for tok in line.split_whitespace() {
        let t = match tok.split_once('=') {
            Some((k, v)) if !k.is_empty() && v.bytes().any(|b| b.is_ascii_digit()) => format!("{k}=<_>"),
            _ if tok.bytes().any(|b| b.is_ascii_digit()) => "<_>".to_string(),
            _ => tok.to_string(),
        };
        // Runs of variable tokens collapse into one, as Loki's drain templates do.
        if t == "<_>" && out.last().is_some_and(|l| l == "<_>") {
            continue;
        }
        out.push(t);
    }
    out.join(" ")
}

fn level_of(e: &Piped) -> String {
    for n in ["detected_level", "level"] {
        for set in [&e.sm, &*e.stream, &e.parsed] {
            if let Some((_, v)) = set.iter().find(|(k, _)| k == n) {
                return v.clone();
            }
        }
    }
    let line = &e.line;
    for (k, v) in logfmt_pairs(line) {
        if k == "level" || k == "lvl" || k == "severity" {
            return v.to_ascii_lowercase();
        }
    }
    "unknown".to_string()
}

fn patterns(r: &Req, stop: &Stop) -> Result<Value, LokiError> {
    let step = match r.form.value("step") {
        "" => 10_000_000_000,
        s => match s.parse::<f64>() {
            Ok(f) if f > 0.0 => (f * 1e9) as i64,
            _ => crate::model::text::parse_go_duration_ns(s)
                .filter(|d| *d > 0)
                .ok_or_else(|| ExploreError::Number("step", s.to_string()))?,
        },
    };
    let mut groups: HashMap<(String, String), BTreeMap<i64, u64>> = HashMap::new();
    for e in scan_pipeline(r, stop, PATTERN_LINES)? {
        let key = (template(&e.line), level_of(&e));
        *groups
            .entry(key)
            .or_default()
            .entry(e.ts.div_euclid(step) * step)
            .or_default() += 1;
    }
    let mut list: Vec<_> = groups.into_iter().collect();
    list.sort_by(|a, b| {
        let total = |m: &BTreeMap<i64, u64>| m.values().sum::<u64>();
        total(&b.1).cmp(&total(&a.1)).then_with(|| a.0.cmp(&b.0))
    });
    let data: Vec<Value> = list
        .into_iter()
        .map(|((pattern, level), buckets)| {
            let samples: Vec<Value> = buckets
                .iter()
                .map(|(t, n)| json!([t.div_euclid(1_000_000_000), n]))
                .collect();
            json!({"pattern": pattern, "level": level, "samples": samples})
        })
        .collect();
    Ok(json!({"status": "success", "data": data}))
}

pub async fn patterns_handler(State(st): State<Arc<ApiState>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    run(&st, &uri, &headers, &body, |r, stop| patterns(&r, stop)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        fn check(line: &str, want: &str) {
            assert_eq!(template(line), want, "{line}");
        }
        check("GET /api/users/42 200 12ms", "GET <_>");
        check("level=info msg=started port=8080", "level=info msg=started port=<_>");
        check("user alice logged in", "user alice logged in");
        check("took 1.5s at 2024-01-01T00:00:00Z", "took <_> at <_>");
    }

    #[test]
    fn selectors_and_fields() {
        fn check(q: &str, want: &str) {
            assert_eq!(stream_selector(q), want, "{q}");
        }
        check("{app=\"a}b\"} |= `x`", "{app=\"a}b\"}");
        check("  {app=\"x\"}", "{app=\"x\"}");
        check("{}", "{}");
        for (v, want) in [
            ("42", "int"),
            ("1.5", "float"),
            ("true", "boolean"),
            ("150ms", "duration"),
            ("10KB", "bytes"),
            ("hello", "string"),
        ] {
            assert_eq!(field_type(v), want, "{v}");
        }
        assert_eq!(
            logfmt_pairs("level=info msg=\"a b\" n=3 junk"),
            vec![
                ("level".to_string(), "info".to_string()),
                ("msg".to_string(), "a b".to_string()),
                ("n".to_string(), "3".to_string())
            ]
        );
    }
}
