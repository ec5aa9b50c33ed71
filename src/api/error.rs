//! The one place that decides status codes and error bodies for each protocol.
//!
//! Prometheus query/metadata API: JSON envelope `{"status":"error","errorType":...,"error":...}` with
//! the status of Prometheus's `getDefaultErrorCode`. Remote write: plain text like Go's `http.Error`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Prometheus API error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    BadData,
    Execution,
    Timeout,
    Canceled,
    Internal,
    Unavailable,
    NotFound,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::BadData => "bad_data",
            ErrorType::Execution => "execution",
            ErrorType::Timeout => "timeout",
            ErrorType::Canceled => "canceled",
            ErrorType::Internal => "internal",
            ErrorType::Unavailable => "unavailable",
            ErrorType::NotFound => "not_found",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorType::BadData => StatusCode::BAD_REQUEST,
            ErrorType::Execution => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            // 499 "client closed request", as Prometheus answers.
            ErrorType::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            ErrorType::Internal | ErrorType::Unavailable => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorType::NotFound => StatusCode::NOT_FOUND,
        }
    }
}

/// An error of the Prometheus JSON API.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorType,
    pub message: String,
}

impl ApiError {
    pub fn bad_data(msg: impl Into<String>) -> Self {
        ApiError {
            kind: ErrorType::BadData,
            message: msg.into(),
        }
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        ApiError {
            kind: ErrorType::Internal,
            message: msg.into(),
        }
    }
}

impl From<crate::storage::metrics::StorageError> for ApiError {
    fn from(e: crate::storage::metrics::StorageError) -> Self {
        ApiError::internal(e.to_string())
    }
}

impl From<crate::query::promql::QueryError> for ApiError {
    fn from(e: crate::query::promql::QueryError) -> Self {
        use crate::query::promql::QueryError as Q;
        let kind = match &e {
            Q::BadData(_) => ErrorType::BadData,
            Q::Execution(_) | Q::TooManySamples(_) => ErrorType::Execution,
            Q::Timeout(_) => ErrorType::Timeout,
            Q::Canceled(_) => ErrorType::Canceled,
            Q::Storage(_) => ErrorType::Internal,
        };
        ApiError {
            kind,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Field order as Prometheus writes it: status, errorType, error.
        let body = format!(
            "{{\"status\":\"error\",\"errorType\":\"{}\",\"error\":{}}}",
            self.kind.as_str(),
            serde_json::to_string(&self.message).unwrap_or_else(|_| "\"\"".into())
        );
        let mut r = (self.kind.status(), body).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    }
}

/// Remote-write failures, answered in plain text like Go's `http.Error`.
#[derive(Debug)]
pub enum WriteError {
    /// Content-Type or Content-Encoding not accepted: 415.
    Unsupported(String),
    /// Body over the configured limit: 413.
    TooLarge(String),
    /// Malformed body or rejected data: 400 (senders do not retry).
    BadRequest(String),
    /// Storage failure a retry can fix: 500.
    Internal(String),
    /// Shutting down: 503.
    Unavailable(String),
}

impl WriteError {
    pub fn status(&self) -> StatusCode {
        match self {
            WriteError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            WriteError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            WriteError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WriteError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            WriteError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Label for the failed-requests counter.
    pub fn reason(&self) -> &'static str {
        match self {
            WriteError::Unsupported(_) => "unsupported_media_type",
            WriteError::TooLarge(_) => "too_large",
            WriteError::BadRequest(_) => "bad_request",
            WriteError::Internal(_) => "internal",
            WriteError::Unavailable(_) => "unavailable",
        }
    }
}

impl From<crate::ingest::IngestError> for WriteError {
    fn from(e: crate::ingest::IngestError) -> Self {
        match e {
            crate::ingest::IngestError::Storage(crate::storage::metrics::StorageError::Closed) => {
                WriteError::Unavailable("the metrics store is shutting down".into())
            }
            other => WriteError::Internal(other.to_string()),
        }
    }
}

/// Loki API errors: plain text like Loki's `WriteError` (API.md §3.7).
#[derive(Debug)]
pub enum LokiError {
    /// Parse errors, validation, limits: 400.
    BadRequest(String),
    /// Body over the limit: 413.
    TooLarge(String),
    /// Stream limit (Loki's ingester answers 429 so that clients retry later).
    RateLimited(String),
    /// Storage failure: 500.
    Internal(String),
    /// Shutting down: 503.
    Unavailable(String),
    /// The query ran past `query_timeout`: 504 with Loki's fixed text.
    Timeout,
}

/// Loki 3.4's `server.ErrDeadlineExceeded` (`pkg/util/server/error.go`), answered with 504. Later
/// Loki versions lower-case it and drop the period.
pub const LOKI_DEADLINE_EXCEEDED: &str = "Request timed out, decrease the duration of the request or add more label matchers (prefer exact match over regex match) to reduce the amount of data processed.";

impl LokiError {
    pub fn status(&self) -> StatusCode {
        match self {
            LokiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            LokiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            LokiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            LokiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            LokiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            LokiError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

impl IntoResponse for LokiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match self {
            LokiError::BadRequest(m)
            | LokiError::TooLarge(m)
            | LokiError::RateLimited(m)
            | LokiError::Internal(m)
            | LokiError::Unavailable(m) => plain_text(status, &m),
            // Loki 3.4's `WriteError` prints the text as it is (`fmt.Fprint`, no newline).
            LokiError::Timeout => plain_text_exact(status, LOKI_DEADLINE_EXCEEDED.to_string()),
        }
    }
}

/// Go's `http.Error`: text/plain body with a trailing newline and `nosniff`.
pub fn plain_text(status: StatusCode, msg: &str) -> Response {
    plain_text_exact(status, format!("{msg}\n"))
}

/// `body` as text/plain with `nosniff`, unchanged.
fn plain_text_exact(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    r
}

impl IntoResponse for WriteError {
    fn into_response(self) -> Response {
        let status = self.status();
        let msg = match &self {
            WriteError::Unsupported(m)
            | WriteError::TooLarge(m)
            | WriteError::BadRequest(m)
            | WriteError::Internal(m)
            | WriteError::Unavailable(m) => m.clone(),
        };
        plain_text(status, &msg)
    }
}
