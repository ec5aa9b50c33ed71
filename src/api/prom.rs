//! Prometheus metadata endpoints (`/api/v1/series`, `/labels`, `/label/<name>/values`, `/metadata`)
//! and the process endpoints, shaped as Prometheus 3.x answers them.

use super::ApiState;
use super::error::ApiError;
use super::params::{self, Form, MAX_TIME_MS, MIN_TIME_MS};
use crate::model::{Labels, Matcher};
use crate::storage::metrics::MetricsReader;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::ser::SerializeMap;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The success envelope; `warnings` omitted when empty.
#[derive(Serialize)]
struct Envelope<T: Serialize> {
    status: &'static str,
    data: T,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

fn json_ok<T: Serialize>(data: T, warnings: Vec<String>) -> Response {
    match serde_json::to_vec(&Envelope {
        status: "success",
        data,
        warnings,
    }) {
        Ok(body) => {
            let mut r = (StatusCode::OK, body).into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(e) => ApiError::internal(format!("encoding response: {e}")).into_response(),
    }
}

/// A label set as a JSON object in label order.
struct LabelsJson<'a>(&'a Labels);

impl Serialize for LabelsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for l in self.0 {
            m.serialize_entry(&l.name, &l.value)?;
        }
        m.end()
    }
}

const TRUNCATED: &str = "results truncated due to limit";

struct Common {
    start: i64,
    end: i64,
    limit: usize,
    sets: Vec<Vec<Matcher>>,
}

fn common(form: &Form) -> Result<Common, ApiError> {
    let limit = params::limit_param(form)?;
    let start = params::time_param(form, "start", MIN_TIME_MS)?;
    let end = params::time_param(form, "end", MAX_TIME_MS)?;
    let sets = params::matcher_sets(&form.values("match[]"))?;
    Ok(Common {
        start,
        end,
        limit,
        sets,
    })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("query task failed: {e}")))?
}

pub async fn series(State(st): State<Arc<ApiState>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let run = async {
        let form = Form::parse(uri.query(), &headers, &body)?;
        if form.values("match[]").is_empty() {
            return Err(ApiError::bad_data("no match[] parameter provided"));
        }
        let c = common(&form)?;
        let db = Arc::clone(&st.db);
        blocking(move || {
            let mut all: BTreeSet<Labels> = BTreeSet::new();
            for set in &c.sets {
                all.extend(db.series(set, c.start, c.end)?);
            }
            let mut warnings = Vec::new();
            let mut v: Vec<Labels> = all.into_iter().collect();
            if c.limit > 0 && v.len() > c.limit {
                v.truncate(c.limit);
                warnings.push(TRUNCATED.to_string());
            }
            Ok((v, warnings))
        })
        .await
    };
    match run.await {
        Ok((v, w)) => json_ok(v.iter().map(LabelsJson).collect::<Vec<_>>(), w),
        Err(e) => e.into_response(),
    }
}

pub async fn label_names(State(st): State<Arc<ApiState>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let run = async {
        let form = Form::parse(uri.query(), &headers, &body)?;
        let c = common(&form)?;
        let db = Arc::clone(&st.db);
        blocking(move || {
            let mut names: BTreeSet<String> = BTreeSet::new();
            if c.sets.is_empty() {
                names.extend(db.label_names(&[], c.start, c.end)?);
            }
            for set in &c.sets {
                names.extend(db.label_names(set, c.start, c.end)?);
            }
            truncate(names.into_iter().collect(), c.limit)
        })
        .await
    };
    match run.await {
        Ok((v, w)) => json_ok(v, w),
        Err(e) => e.into_response(),
    }
}

pub async fn label_values(
    State(st): State<Arc<ApiState>>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = async {
        let form = Form::parse(uri.query(), &headers, &body)?;
        let name = params::unescape_label_name(&name);
        if name.is_empty() {
            return Err(ApiError::bad_data(format!("invalid label name: {name:?}")));
        }
        let c = common(&form)?;
        let db = Arc::clone(&st.db);
        blocking(move || {
            let mut values: BTreeSet<String> = BTreeSet::new();
            if c.sets.is_empty() {
                values.extend(db.label_values(&name, &[], c.start, c.end)?);
            }
            for set in &c.sets {
                values.extend(db.label_values(&name, set, c.start, c.end)?);
            }
            truncate(values.into_iter().collect(), c.limit)
        })
        .await
    };
    match run.await {
        Ok((v, w)) => json_ok(v, w),
        Err(e) => e.into_response(),
    }
}

fn truncate(mut v: Vec<String>, limit: usize) -> Result<(Vec<String>, Vec<String>), ApiError> {
    let mut w = Vec::new();
    if limit > 0 && v.len() > limit {
        v.truncate(limit);
        w.push(TRUNCATED.to_string());
    }
    Ok((v, w))
}

#[derive(Serialize)]
struct MetaJson {
    #[serde(rename = "type")]
    kind: &'static str,
    help: String,
    unit: String,
}

pub async fn metadata(State(st): State<Arc<ApiState>>, uri: Uri, headers: HeaderMap) -> Response {
    let form = match Form::parse(uri.query(), &headers, &[]) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let parse_num = |key: &str, msg: &str| -> Result<i64, ApiError> {
        let s = form.value(key);
        if s.is_empty() {
            Ok(-1)
        } else {
            s.parse::<i64>().map_err(|_| ApiError::bad_data(msg.to_string()))
        }
    };
    let limit = match parse_num("limit", "limit must be a number") {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = parse_num("limit_per_metric", "limit_per_metric must be a number") {
        return e.into_response();
    }
    let metric = form.value("metric");
    let mut out: std::collections::BTreeMap<String, Vec<MetaJson>> = std::collections::BTreeMap::new();
    for m in st.db.metadata() {
        if !metric.is_empty() && m.family != metric {
            continue;
        }
        if limit >= 0 && out.len() as i64 >= limit {
            break;
        }
        out.entry(m.family).or_default().push(MetaJson {
            kind: m.kind,
            help: m.help,
            unit: m.unit,
        });
    }
    json_ok(out, Vec::new())
}

pub async fn self_metrics(State(st): State<Arc<ApiState>>) -> Response {
    let mut r = (StatusCode::OK, st.registry.render()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// Same bodies as Prometheus, which scripts sometimes match on.
pub async fn ready() -> Response {
    (StatusCode::OK, "Prometheus Server is Ready.\n").into_response()
}

pub async fn healthy() -> Response {
    (StatusCode::OK, "Prometheus Server is Healthy.\n").into_response()
}

/// One scrape target as `/api/v1/targets` shows it (filled by `app` from the scraper's state).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetView {
    pub discovered_labels: std::collections::BTreeMap<String, String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub scrape_pool: String,
    pub scrape_url: String,
    pub global_url: String,
    pub last_error: String,
    /// RFC 3339; `0001-01-01T00:00:00Z` before the first scrape, as Prometheus shows it.
    pub last_scrape: String,
    pub last_scrape_duration: f64,
    pub health: &'static str,
    pub scrape_interval: String,
    pub scrape_timeout: String,
}

/// Where `/api/v1/targets` reads targets from: active ones and the discovered labels of dropped ones.
pub trait TargetsSource: Send + Sync {
    fn active(&self) -> Vec<TargetView>;
    fn dropped(&self) -> Vec<std::collections::BTreeMap<String, String>>;
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DroppedJson {
    discovered_labels: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TargetsJson {
    active_targets: Vec<TargetView>,
    dropped_targets: Vec<DroppedJson>,
}

/// `GET /api/v1/targets?state=active|dropped|any`.
pub async fn targets(State(st): State<Arc<ApiState>>, uri: Uri, headers: HeaderMap) -> Response {
    let form = match Form::parse(uri.query(), &headers, &[]) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let which = form.value("state").to_ascii_lowercase();
    let (want_active, want_dropped) = match which.as_str() {
        "" | "any" => (true, true),
        "active" => (true, false),
        "dropped" => (false, true),
        _ => (true, true),
    };
    let mut out = TargetsJson {
        active_targets: Vec::new(),
        dropped_targets: Vec::new(),
    };
    if let Some(src) = &st.targets {
        if want_active {
            out.active_targets = src.active();
        }
        if want_dropped {
            out.dropped_targets = src
                .dropped()
                .into_iter()
                .map(|discovered_labels| DroppedJson { discovered_labels })
                .collect();
        }
    }
    axum::Json(serde_json::json!({"status": "success", "data": out})).into_response()
}
