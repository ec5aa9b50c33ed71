//! `POST /api/v1/write`: Prometheus remote write 1.0 and 2.0, answered as Prometheus 3.x does.
//!
//! Content-Type negotiation follows Prometheus's `parseProtoMsg`; the body is read with a size
//! limit, decompressed into a per-thread scratch buffer and decoded without per-sample allocation,
//! all off the async reactor.

use super::ApiState;
use super::error::{WriteError, plain_text};
use crate::ingest::{MetricsIngester, WriteOutcome};
use crate::proto::{self, remote_write::WriteBatch};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

const V1_PROTO: &str = "prometheus.WriteRequest";
const V2_PROTO: &str = "io.prometheus.write.v2.Request";

/// Request counters by outcome, for `/metrics`.
#[derive(Debug, Default)]
pub struct WriteStats {
    pub ok: AtomicU64,
    pub partial: AtomicU64,
    /// By `WriteError::reason` in this order.
    pub failed: [AtomicU64; 5],
    pub body_read_errors: AtomicU64,
}

impl WriteStats {
    pub const REASONS: [&'static str; 5] = [
        "unsupported_media_type",
        "too_large",
        "bad_request",
        "internal",
        "unavailable",
    ];

    fn count(&self, e: &WriteError) {
        if let Some(i) = Self::REASONS.iter().position(|r| *r == e.reason()) {
            self.failed[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A decompression buffer kept per blocking thread; shrunk after an unusually large request so a
/// single 64 MiB body does not pin 64 MiB of RSS forever.
const SCRATCH_KEEP: usize = 8 << 20;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub async fn handle(State(st): State<Arc<ApiState>>, headers: HeaderMap, body: Body) -> Response {
    match serve(&st, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            st.write_stats.count(&e);
            tracing::debug!(error = ?e, "Remote write request refused.");
            e.into_response()
        }
    }
}

async fn serve(st: &Arc<ApiState>, headers: &HeaderMap, body: Body) -> Result<Response, WriteError> {
    let version = negotiate(headers)?;
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        let enc = enc.to_str().unwrap_or("");
        if !enc.is_empty() && enc != "snappy" {
            return Err(WriteError::Unsupported(format!(
                "{enc} encoding (compression) is not accepted by this server; only snappy is acceptable"
            )));
        }
    }
    let limit = st.max_write_body;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(WriteError::TooLarge(format!(
            "request body too large: {len} bytes, limit {limit}"
        )));
    }
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                return Err(WriteError::TooLarge(format!(
                    "request body too large: limit {limit} bytes"
                )));
            }
            // The sender went away mid-body: nothing of it is committed.
            st.write_stats.body_read_errors.fetch_add(1, Ordering::Relaxed);
            return Err(WriteError::BadRequest(format!(
                "unexpected EOF reading request body: {e}"
            )));
        }
    };
    let ingester = Arc::clone(&st.ingester);
    let outcome = tokio::task::spawn_blocking(move || decode_and_write(&ingester, version, &bytes, limit))
        .await
        .map_err(|e| WriteError::Internal(format!("write task failed: {e}")))??;
    let mut resp = if outcome.errors.is_empty() {
        st.write_stats.ok.fetch_add(1, Ordering::Relaxed);
        StatusCode::NO_CONTENT.into_response()
    } else {
        st.write_stats.partial.fetch_add(1, Ordering::Relaxed);
        let mut msg = outcome.errors.join("\n");
        if outcome.more_errors > 0 {
            msg.push_str(&format!("\n(and {} more errors)", outcome.more_errors));
        }
        plain_text(StatusCode::BAD_REQUEST, &msg)
    };
    if version == Version::V2 {
        let h = resp.headers_mut();
        for (name, v) in [
            ("x-prometheus-remote-write-samples-written", outcome.samples_written),
            (
                "x-prometheus-remote-write-histograms-written",
                outcome.histograms_written,
            ),
            ("x-prometheus-remote-write-exemplars-written", outcome.exemplars_written),
        ] {
            h.insert(name, HeaderValue::from(v));
        }
    }
    Ok(resp)
}

/// Prometheus's `parseProtoMsg`: `application/x-protobuf[;proto=<msg>]`; an absent Content-Type is v1.
fn negotiate(headers: &HeaderMap) -> Result<Version, WriteError> {
    let ct = match headers.get(header::CONTENT_TYPE) {
        None => return Ok(Version::V1),
        Some(v) => v.to_str().unwrap_or("").trim().to_string(),
    };
    if ct.is_empty() {
        return Ok(Version::V1);
    }
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or("").trim();
    if media != "application/x-protobuf" {
        return Err(WriteError::Unsupported(format!(
            "expected application/x-protobuf as the first (media) part, got {ct} content-type"
        )));
    }
    for p in parts {
        let Some((k, v)) = p.split_once('=') else {
            return Err(WriteError::Unsupported(format!(
                "as per https://www.rfc-editor.org/rfc/rfc9110#parameter expected parameters to be key-values, got {p} in {ct} content-type"
            )));
        };
        if k.trim() == "proto" {
            return match v.trim() {
                V1_PROTO => Ok(Version::V1),
                V2_PROTO => Ok(Version::V2),
                other => Err(WriteError::Unsupported(format!(
                    "got {ct} content type; unknown remote write protobuf message {other}, supported: {V1_PROTO}, {V2_PROTO}"
                ))),
            };
        }
    }
    Ok(Version::V1)
}

fn decode_and_write(
    ingester: &MetricsIngester,
    version: Version,
    body: &[u8],
    limit: usize,
) -> Result<WriteOutcome, WriteError> {
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let res = decode_into(ingester, version, body, limit, &mut scratch);
        if scratch.capacity() > SCRATCH_KEEP {
            *scratch = Vec::new();
        }
        res
    })
}

fn decode_into(
    ingester: &MetricsIngester,
    version: Version,
    body: &[u8],
    limit: usize,
    scratch: &mut Vec<u8>,
) -> Result<WriteOutcome, WriteError> {
    proto::decompress_snappy(body, limit, scratch).map_err(|e| WriteError::BadRequest(e.to_string()))?;
    let mut batch = WriteBatch::new();
    let decoded = match version {
        Version::V1 => proto::remote_write::decode_v1(scratch, &mut batch),
        Version::V2 => proto::remote_write::decode_v2(scratch, &mut batch),
    };
    decoded.map_err(|e| WriteError::BadRequest(e.to_string()))?;
    Ok(ingester.write(&batch)?)
}
