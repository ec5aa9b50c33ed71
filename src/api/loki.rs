//! Loki endpoints: push (`/loki/api/v1/push`, legacy `/api/prom/push`) and the metadata endpoints
//! (`/loki/api/v1/labels`, `/label/<name>/values`, `/series`, `/index/stats`), shaped as Loki 3.4
//! answers them (API.md §3.5, §4.1). Errors are Loki's plain text (see `error.rs`).

use super::ApiState;
use super::error::{LokiError, plain_text};
use super::params::{Form, parse_selector};
use crate::ingest::{IngestError, LokiIngester, PushOutcome};
use crate::model::{Labels, Matcher};
use crate::proto::{self, loki::json};
use crate::storage::logs::{LogReader, LogStore};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::Serialize;
use serde::ser::SerializeMap;
use std::collections::BTreeSet;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The tenant when `X-Scope-OrgID` is absent (Loki with `auth_enabled: false`).
pub const DEFAULT_TENANT: &str = "fake";

/// Push request counters by outcome, for `/metrics`.
#[derive(Debug, Default)]
pub struct PushStats {
    pub ok: AtomicU64,
    pub partial: AtomicU64,
    pub bad_request: AtomicU64,
    pub too_large: AtomicU64,
    pub rate_limited: AtomicU64,
    pub failed: AtomicU64,
}

pub(crate) fn tenant(headers: &HeaderMap) -> String {
    // HeaderMap lookups are case-insensitive: logcli sends `X-Scope-Orgid`.
    headers
        .get("x-scope-orgid")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .unwrap_or(DEFAULT_TENANT)
        .to_string()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Json,
    Proto,
}

pub async fn push(State(st): State<Arc<ApiState>>, headers: HeaderMap, body: Body) -> Response {
    push_inner(st, headers, body, false).await
}

pub async fn push_legacy(State(st): State<Arc<ApiState>>, headers: HeaderMap, body: Body) -> Response {
    push_inner(st, headers, body, true).await
}

async fn push_inner(st: Arc<ApiState>, headers: HeaderMap, body: Body, legacy: bool) -> Response {
    match serve_push(&st, &headers, body, legacy).await {
        Ok(out) if out.errors.is_empty() => {
            st.push_stats.ok.fetch_add(1, Ordering::Relaxed);
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(out) => {
            let mut msg = out.errors.join("\n");
            if out.more_errors > 0 {
                msg.push_str(&format!("\n(and {} more errors)", out.more_errors));
            }
            let e = if out.stream_limited {
                LokiError::RateLimited(msg)
            } else {
                LokiError::BadRequest(msg)
            };
            st.push_stats.partial.fetch_add(1, Ordering::Relaxed);
            e.into_response()
        }
        Err(e) => {
            let c = match &e {
                LokiError::BadRequest(_) => &st.push_stats.bad_request,
                LokiError::TooLarge(_) => &st.push_stats.too_large,
                LokiError::RateLimited(_) => &st.push_stats.rate_limited,
                _ => &st.push_stats.failed,
            };
            c.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = ?e, "Loki push refused.");
            e.into_response()
        }
    }
}

async fn serve_push(
    st: &Arc<ApiState>,
    headers: &HeaderMap,
    body: Body,
    legacy: bool,
) -> Result<PushOutcome, LokiError> {
    let tenant = tenant(headers);
    let kind = match headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("")) {
        None => return Err(LokiError::BadRequest("mime: no media type".into())),
        Some(ct) => {
            let media = ct.split(';').next().unwrap_or("").trim();
            if media.is_empty() {
                return Err(LokiError::BadRequest("mime: no media type".into()));
            }
            if media.eq_ignore_ascii_case("application/json") {
                Kind::Json
            } else {
                Kind::Proto
            }
        }
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .unwrap_or_default();
    if !matches!(encoding.as_str(), "" | "snappy" | "gzip" | "deflate") {
        return Err(LokiError::BadRequest(format!(
            "Content-Encoding {encoding:?} not supported"
        )));
    }
    let limit = st.max_push_body;
    let too_large = || LokiError::TooLarge(format!("request body too large: limit {limit} bytes"));
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large());
    }
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return Err(too_large()),
        Err(e) => {
            return Err(LokiError::BadRequest(format!(
                "unexpected EOF reading request body: {e}"
            )));
        }
    };
    let ingester = Arc::clone(&st.loki);
    tokio::task::spawn_blocking(move || decode_and_push(&ingester, &tenant, kind, &encoding, bytes, limit, legacy))
        .await
        .map_err(|e| LokiError::Internal(format!("push task failed: {e}")))?
}

/// Inflates a gzip or deflate body with the size limit enforced while reading.
fn inflate(encoding: &str, body: &[u8], limit: usize) -> Result<Vec<u8>, LokiError> {
    let mut out = Vec::new();
    let res = match encoding {
        "gzip" => flate2::read::MultiGzDecoder::new(body)
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        _ => flate2::read::ZlibDecoder::new(body)
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .or_else(|_| {
                // Some clients send raw deflate (no zlib header) as "deflate".
                out.clear();
                flate2::read::DeflateDecoder::new(body)
                    .take(limit as u64 + 1)
                    .read_to_end(&mut out)
            }),
    };
    res.map_err(|e| LokiError::BadRequest(format!("{encoding}: {e}")))?;
    if out.len() > limit {
        return Err(LokiError::TooLarge(format!(
            "decompressed request body too large: limit {limit} bytes"
        )));
    }
    Ok(out)
}

fn decode_and_push(
    ingester: &LokiIngester,
    tenant: &str,
    kind: Kind,
    encoding: &str,
    body: Bytes,
    limit: usize,
    legacy: bool,
) -> Result<PushOutcome, LokiError> {
    let body = if encoding == "gzip" || encoding == "deflate" {
        Bytes::from(inflate(encoding, &body, limit)?)
    } else {
        body
    };
    let out = match kind {
        Kind::Json => {
            let push = if legacy {
                json::decode_legacy(&body)
            } else {
                json::decode_v1(&body)
            }
            .map_err(|e| LokiError::BadRequest(e.to_string()))?;
            ingester.push_json(tenant, &push)
        }
        Kind::Proto => {
            let mut raw = Vec::new();
            proto::decompress_snappy(&body, limit, &mut raw).map_err(|e| match e {
                proto::ProtoError::TooLarge { .. } => LokiError::TooLarge(e.to_string()),
                e => LokiError::BadRequest(e.to_string()),
            })?;
            ingester.push_proto(tenant, Bytes::from(raw))
        }
    };
    out.map_err(|e| match e {
        IngestError::Decode(d) => LokiError::BadRequest(d.to_string()),
        IngestError::Logs(crate::storage::logs::LogsError::Closed) => {
            LokiError::Unavailable("the log store is shutting down".into())
        }
        other => LokiError::Internal(other.to_string()),
    })
}

// ---------------------------------------------------------------------------------------------
// Metadata endpoints.

/// Loki's `parseTimestamp`: a float with `.` is seconds, an integer of up to 10 digits is seconds,
/// a longer one nanoseconds, anything else RFC 3339. Returns ns.
pub fn parse_loki_time(s: &str) -> Option<i64> {
    if s.contains('.') {
        if let Ok(f) = s.parse::<f64>() {
            return f.is_finite().then_some((f * 1e9) as i64);
        }
    } else if let Ok(n) = s.parse::<i64>() {
        let digits = s.trim_start_matches('-').len();
        return Some(if digits <= 10 {
            n.saturating_mul(1_000_000_000)
        } else {
            n
        });
    }
    crate::model::text::parse_rfc3339_ns(s)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// `start`/`end` (default `end`=now, `start`=end-`since`, since=1h).
fn time_range(form: &Form) -> Result<(i64, i64), LokiError> {
    let parse = |k: &str| -> Result<Option<i64>, LokiError> {
        let v = form.value(k);
        if v.is_empty() {
            return Ok(None);
        }
        parse_loki_time(v)
            .map(Some)
            .ok_or_else(|| LokiError::BadRequest(format!("cannot parse \"{v}\" to a valid timestamp")))
    };
    let end = parse("end")?.unwrap_or_else(now_ns);
    let since = match form.value("since") {
        "" => 3_600_000_000_000,
        s => crate::model::text::parse_go_duration_ns(s)
            .ok_or_else(|| LokiError::BadRequest(format!("time: invalid duration \"{s}\"")))?,
    };
    let start = parse("start")?.unwrap_or(end.saturating_sub(since));
    if end < start {
        return Err(LokiError::BadRequest(
            "end timestamp must not be before or equal to start time".into(),
        ));
    }
    Ok((start, end))
}

pub(super) fn selector(s: &str) -> Result<Vec<Matcher>, LokiError> {
    let t = s.trim();
    if t == "{}" || t.is_empty() {
        return Ok(Vec::new());
    }
    parse_selector(t).map_err(|e| LokiError::BadRequest(e.message))
}

pub(super) fn json_response<T: Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => {
            let mut r = (StatusCode::OK, body).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=UTF-8"),
            );
            r
        }
        Err(e) => LokiError::Internal(format!("encoding response: {e}")).into_response(),
    }
}

#[derive(Serialize)]
struct Envelope<T: Serialize> {
    status: &'static str,
    data: T,
}

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

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LokiError> + Send + 'static,
) -> Result<T, LokiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LokiError::Internal(format!("query task failed: {e}")))?
}

pub(super) fn store_err(e: crate::storage::logs::LogsError) -> LokiError {
    LokiError::Internal(e.to_string())
}

pub(super) struct Req {
    pub store: Arc<LogStore>,
    pub tenant: String,
    pub start: i64,
    pub end: i64,
    pub form: Form,
}

pub(super) fn req(st: &ApiState, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Result<Req, LokiError> {
    let form = Form::parse(uri.query(), headers, body).map_err(|e| LokiError::BadRequest(e.message))?;
    let (start, end) = time_range(&form)?;
    Ok(Req {
        store: Arc::clone(&st.logs),
        tenant: tenant(headers),
        start,
        end,
        form,
    })
}

pub async fn labels(State(st): State<Arc<ApiState>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let run = async {
        let r = req(&st, &uri, &headers, &body)?;
        let m = selector(r.form.value("query"))?;
        blocking(move || r.store.label_names(&r.tenant, &m, r.start, r.end).map_err(store_err)).await
    };
    match run.await {
        Ok(v) => json_response(&Envelope {
            status: "success",
            data: v,
        }),
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
        let r = req(&st, &uri, &headers, &body)?;
        let m = selector(r.form.value("query"))?;
        blocking(move || {
            r.store
                .label_values(&r.tenant, &name, &m, r.start, r.end)
                .map_err(store_err)
        })
        .await
    };
    match run.await {
        Ok(v) => json_response(&Envelope {
            status: "success",
            data: v,
        }),
        Err(e) => e.into_response(),
    }
}

pub async fn series(State(st): State<Arc<ApiState>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let run = async {
        let r = req(&st, &uri, &headers, &body)?;
        let mut sel: Vec<&str> = r.form.values("match[]");
        sel.extend(r.form.values("match"));
        let sets = if sel.is_empty() {
            vec![Vec::new()]
        } else {
            sel.iter().map(|s| selector(s)).collect::<Result<Vec<_>, _>>()?
        };
        blocking(move || {
            let mut all: BTreeSet<Labels> = BTreeSet::new();
            for m in &sets {
                all.extend(r.store.series(&r.tenant, m, r.start, r.end).map_err(store_err)?);
            }
            Ok(all)
        })
        .await
    };
    match run.await {
        Ok(all) => json_response(&Envelope {
            status: "success",
            data: all.iter().map(LabelsJson).collect::<Vec<_>>(),
        }),
        Err(e) => e.into_response(),
    }
}

pub async fn index_stats(State(st): State<Arc<ApiState>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let run = async {
        let r = req(&st, &uri, &headers, &body)?;
        let m = selector(r.form.value("query"))?;
        blocking(move || r.store.index_stats(&r.tenant, &m, r.start, r.end).map_err(store_err)).await
    };
    match run.await {
        Ok(s) => json_response(&s),
        Err(e) => e.into_response(),
    }
}

/// Loki's `/ready` body.
pub async fn loki_ready() -> Response {
    plain_text(StatusCode::OK, "ready")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loki_times() {
        assert_eq!(parse_loki_time("1700000000"), Some(1_700_000_000_000_000_000));
        assert_eq!(parse_loki_time("1700000000123456789"), Some(1_700_000_000_123_456_789));
        assert_eq!(parse_loki_time("1700000000.5"), Some(1_700_000_000_500_000_000));
        assert_eq!(parse_loki_time("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        assert_eq!(parse_loki_time("yesterday"), None);
    }
}
