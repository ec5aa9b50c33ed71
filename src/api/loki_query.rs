//! Loki's query endpoints: `/loki/api/v1/query` and `/loki/api/v1/query_range` (GET, and POST with a
//! form body), answered by the LogQL engine over the log store.
//!
//! Owns: turning an HTTP request into the engine's parameters and its answer into a reply. Never
//! touches: LogQL semantics (in `query::logql`) or storage internals.

use super::ApiState;
use super::error::plain_text;
use super::loki::tenant;
use super::params::Form;
use crate::query::logql::{self, Body, Endpoint, StoreSource};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Arc;

/// Loki's default `max_query_series`.
const MAX_QUERY_SERIES: usize = 500;

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
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let started = std::time::Instant::now();
    // Evaluation is CPU work and reads chunk files: keep it off the reactor.
    let answer = tokio::task::spawn_blocking(move || {
        let src = StoreSource {
            reader: logs.as_ref(),
            tenant: &tenant,
        };
        logql::handle(&src, kind, &params, &hdrs, now_ns)
    })
    .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => return plain_text(StatusCode::INTERNAL_SERVER_ERROR, &format!("query task failed: {e}")),
    };
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match answer.body {
        Body::Text(t) => plain_text(status, &t),
        Body::Json(mut v) => {
            if status == StatusCode::OK && series_count(&v) > MAX_QUERY_SERIES {
                // Loki's `max_query_series` protection; we check the final result only.
                return plain_text(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "maximum number of series ({MAX_QUERY_SERIES}) reached for a single query; consider reducing query cardinality by adding more specific stream selectors, reducing the time range, or aggregating results with functions like sum(), count() or topk()"
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
