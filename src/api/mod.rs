//! HTTP surface: the Prometheus API family (`/api/v1/...`), remote write, Loki push and metadata
//! (`/loki/api/v1/...`), and the process endpoints
//! (`/metrics`, `/-/ready`, `/-/healthy`). The only user of axum.
//!
//! Owns: routing, parameter parsing, response shapes. Never touches: storage internals (it reads
//! through `MetricsReader` and writes through `ingest`), or status-code policy outside `error.rs`.

pub mod error;
mod loki;
mod loki_explore;
mod loki_misc;
mod loki_query;
mod loki_tail;
pub mod params;
mod prom;
mod query;
mod remote_write;

use crate::ingest::{LokiIngester, MetricsIngester};
use crate::storage::logs::LogStore;
use crate::storage::metrics::MetricsDb;
use crate::telemetry::Registry;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

pub use loki::{DEFAULT_TENANT, PushStats};
pub use loki_query::{LokiQueryLimits, LokiQueryStats};
pub use prom::{TargetView, TargetsSource};
pub use remote_write::WriteStats;

/// Stored batches buffered per tail subscriber before it is told it dropped some.
pub const TAIL_CHANNEL: usize = 1024;

/// Everything the handlers share.
pub struct ApiState {
    pub db: Arc<MetricsDb>,
    pub ingester: Arc<MetricsIngester>,
    pub registry: Registry,
    /// Decompressed and compressed remote-write body limit in bytes.
    pub max_write_body: usize,
    pub write_stats: Arc<WriteStats>,
    pub http_requests: AtomicU64,
    pub logs: Arc<LogStore>,
    pub loki: Arc<LokiIngester>,
    /// Decompressed and compressed Loki push body limit in bytes.
    pub max_push_body: usize,
    pub push_stats: Arc<PushStats>,
    /// Stored log batches for `/loki/api/v1/tail` subscribers.
    pub tail: tokio::sync::broadcast::Sender<Arc<crate::ingest::Appended>>,
    pub engine: crate::query::promql::Engine,
    /// Queries evaluated at once (`query.max_concurrency`); the rest wait for a permit.
    pub query_slots: Arc<tokio::sync::Semaphore>,
    /// Loki read limits (`limits.logs`): entries, series, timeout, query length and lookback.
    pub loki_limits: LokiQueryLimits,
    /// Loki reads stopped by `query_timeout` or a disconnected client.
    pub loki_query_stats: Arc<LokiQueryStats>,
    /// Scrape targets for `/api/v1/targets`; `None` when nothing is scraped.
    pub targets: Option<Arc<dyn TargetsSource>>,
}

/// The router serving both API families on every listener.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/write", post(remote_write::handle))
        .route("/api/v1/push", post(remote_write::handle))
        .route("/api/v1/series", get(prom::series).post(prom::series))
        .route("/api/v1/labels", get(prom::label_names).post(prom::label_names))
        .route("/api/v1/label/{name}/values", get(prom::label_values))
        .route("/api/v1/metadata", get(prom::metadata))
        .route("/api/v1/targets", get(prom::targets))
        .route("/loki/api/v1/push", post(loki::push))
        .route("/api/prom/push", post(loki::push_legacy))
        .route("/loki/api/v1/labels", get(loki::labels).post(loki::labels))
        .route("/loki/api/v1/label", get(loki::labels))
        .route("/loki/api/v1/label/{name}/values", get(loki::label_values))
        .route("/loki/api/v1/series", get(loki::series).post(loki::series))
        .route(
            "/loki/api/v1/index/stats",
            get(loki::index_stats).post(loki::index_stats),
        )
        .route("/ready", get(loki::loki_ready))
        .route("/loki/api/v1/query", get(loki_query::query).post(loki_query::query))
        .route(
            "/loki/api/v1/query_range",
            get(loki_query::query_range).post(loki_query::query_range),
        )
        .route(
            "/loki/api/v1/index/volume",
            get(loki_explore::index_volume).post(loki_explore::index_volume),
        )
        .route(
            "/loki/api/v1/index/volume_range",
            get(loki_explore::index_volume_range).post(loki_explore::index_volume_range),
        )
        .route(
            "/loki/api/v1/detected_labels",
            get(loki_explore::detected_labels_handler),
        )
        .route(
            "/loki/api/v1/detected_fields",
            get(loki_explore::detected_fields_handler),
        )
        .route(
            "/loki/api/v1/detected_field/{name}/values",
            get(loki_explore::detected_field_values_handler),
        )
        .route("/loki/api/v1/patterns", get(loki_explore::patterns_handler))
        .route("/loki/api/v1/tail", get(loki_tail::tail))
        .route("/loki/api/v1/status/buildinfo", get(loki_misc::buildinfo))
        .route(
            "/loki/api/v1/format_query",
            get(loki_misc::format_query).post(loki_misc::format_query),
        )
        .route("/loki/api/v1/drilldown-limits", get(loki_misc::drilldown_limits))
        // Data-source-managed Loki rules: we have no ruler, so Grafana's alert list gets nothing.
        .route("/prometheus/api/v1/rules", get(query::rules))
        .route("/prometheus/api/v1/alerts", get(query::alerts))
        .route("/api/v1/query", get(query::query).post(query::query))
        .route("/api/v1/query_range", get(query::query_range).post(query::query_range))
        .route(
            "/api/v1/format_query",
            get(query::format_query).post(query::format_query),
        )
        .route("/api/v1/parse_query", get(query::parse_query).post(query::parse_query))
        .route("/api/v1/status/buildinfo", get(query::buildinfo))
        .route(
            "/api/v1/query_exemplars",
            get(query::query_exemplars).post(query::query_exemplars),
        )
        .route("/api/v1/rules", get(query::rules))
        .route("/api/v1/alerts", get(query::alerts))
        .route("/metrics", get(prom::self_metrics))
        .route("/-/ready", get(prom::ready))
        .route("/-/healthy", get(prom::healthy))
        // Remote write enforces its own (configurable) limit with Prometheus-shaped errors.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
