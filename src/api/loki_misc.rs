//! Loki's small fixed-shape endpoints: `/loki/api/v1/status/buildinfo`, `/loki/api/v1/format_query`,
//! `/loki/api/v1/drilldown-limits`, and the `stats` object attached to query responses
//! (API.md §3.4, §3.5).
//!
//! Owns: these response shapes. Never touches: LogQL semantics (it only asks the parser whether a
//! query is valid) or storage.

use super::params::Form;
use super::{ApiState, LokiQueryLimits};
use crate::query::logql;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

/// The Loki version we answer as: what Grafana and Logs Drilldown gate features on.
pub const LOKI_VERSION: &str = "3.5.0";

#[derive(Debug, thiserror::Error)]
pub enum MiscError {
    #[error("encoding response: {0}")]
    Encode(#[from] serde_json::Error),
}

fn json_with(status: StatusCode, v: &Value) -> Response {
    match serde_json::to_vec(v).map_err(MiscError::from) {
        Ok(b) => {
            let mut r = (status, b).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=UTF-8"),
            );
            r
        }
        Err(e) => super::error::plain_text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Loki's buildinfo is a plain object, without the Prometheus envelope.
pub async fn buildinfo() -> Response {
    json_with(StatusCode::OK, &buildinfo_value())
}

fn buildinfo_value() -> Value {
    json!({
        "version": LOKI_VERSION,
        "revision": format!("monitoring-rs-{}", env!("CARGO_PKG_VERSION")),
        "branch": "HEAD",
        "buildUser": "monitoring-rs",
        "buildDate": "",
        "goVersion": "none",
    })
}

/// `format_query`: the query as Loki would print it, or 400 `invalid-query` with the parse error
/// (Loki's `FormatQueryResponse`, whose empty fields are omitted).
pub async fn format_query(uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let q = match Form::parse(uri.query(), &headers, &body) {
        Ok(f) => f.value("query").to_string(),
        Err(e) => {
            return json_with(
                StatusCode::BAD_REQUEST,
                &json!({"status": "invalid-query", "error": e.message}),
            );
        }
    };
    let (status, v) = format_value(&q);
    json_with(status, &v)
}

fn format_value(q: &str) -> (StatusCode, Value) {
    match logql::parser::parse(q) {
        Ok(e) => (
            StatusCode::OK,
            json!({"status": "success", "data": logql::format::format_query(&e)}),
        ),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            json!({"status": "invalid-query", "error": e.to_string()}),
        ),
    }
}

/// Logs Drilldown's configuration probe: the tenant limits that matter to it, snake_case as in
/// Loki's `limits_config`, durations as Prometheus duration strings.
pub async fn drilldown_limits(State(st): State<Arc<ApiState>>) -> Response {
    json_with(StatusCode::OK, &drilldown_value(&st.loki_limits))
}

fn drilldown_value(l: &LokiQueryLimits) -> Value {
    let dur = |d: std::time::Duration| logql::model_duration_string(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    json!({
        "limits": {
            "discover_log_levels": true,
            "discover_service_name": ["service", "app", "application", "name", "app_kubernetes_io_name",
                "container", "container_name", "component", "workload", "job"],
            "log_level_fields": ["level", "LEVEL", "Level", "severity", "SEVERITY", "Severity", "lvl", "LVL", "Lvl"],
            "max_entries_limit_per_query": l.max_entries,
            "max_line_size_truncate": false,
            "max_query_bytes_read": "0B",
            "max_query_length": dur(l.max_query_length),
            "max_query_lookback": dur(l.max_query_lookback),
            "max_query_range": "0s",
            "max_query_series": l.max_series,
            "metric_aggregation_enabled": false,
            "otlp_config": {},
            "pattern_persistence_enabled": false,
            "query_timeout": dur(l.timeout),
            "retention_period": "0s",
            "retention_stream": [],
            "volume_enabled": true,
            "volume_max_series": 1000,
        },
        "pattern_ingester_enabled": true,
        "version": LOKI_VERSION,
    })
}

/// What we measured for one query; the rest of Loki's `stats.Result` is zeros.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    pub exec_secs: f64,
    pub entries_returned: i64,
}

/// Loki's `stats.Result` as JSON. logcli decodes it into Go structs, so every integer field must be
/// a JSON integer and `execTime`/`queueTime` floats (`pkg/logqlmodel/stats/stats.proto`).
pub fn stats_value(m: Measured) -> Value {
    let chunk = json!({
        "headChunkBytes": 0, "headChunkLines": 0, "decompressedBytes": 0, "decompressedLines": 0,
        "compressedBytes": 0, "totalDuplicates": 0, "postFilterLines": 0,
        "headChunkStructuredMetadataBytes": 0, "decompressedStructuredMetadataBytes": 0,
    });
    let store = json!({
        "totalChunksRef": 0, "totalChunksDownloaded": 0, "chunksDownloadTime": 0,
        "queryReferencedStructuredMetadata": false, "chunk": chunk, "chunkRefsFetchTime": 0,
        "congestionControlLatency": 0, "pipelineWrapperFilteredLines": 0,
    });
    let cache = json!({
        "entriesFound": 0, "entriesRequested": 0, "entriesStored": 0, "bytesReceived": 0,
        "bytesSent": 0, "requests": 0, "downloadTime": 0, "queryLengthServed": 0,
    });
    json!({
        "summary": {
            "bytesProcessedPerSecond": 0, "linesProcessedPerSecond": 0, "totalBytesProcessed": 0,
            "totalLinesProcessed": 0, "execTime": m.exec_secs, "queueTime": 0.0, "subqueries": 0,
            "totalEntriesReturned": m.entries_returned, "splits": 0, "shards": 0,
            "totalPostFilterLines": 0, "totalStructuredMetadataBytesProcessed": 0,
        },
        "querier": {"store": store},
        "ingester": {"totalReached": 0, "totalChunksMatched": 0, "totalBatches": 0, "totalLinesSent": 0, "store": store},
        "cache": {
            "chunk": cache, "index": cache, "result": cache, "statsResult": cache, "volumeResult": cache,
            "seriesResult": cache, "labelResult": cache, "instantMetricResult": cache,
        },
        "index": {"totalChunks": 0, "postFilterChunks": 0, "shardsDuration": 0, "usedBloomFilters": false},
    })
}

/// Adds `data.stats` to a successful query body (after `result`, where Loki puts it).
pub fn attach_stats(body: &mut Value, exec_secs: f64) {
    let Some(data) = body.get_mut("data").and_then(Value::as_object_mut) else {
        return;
    };
    let entries_returned = match (data.get("resultType").and_then(Value::as_str), data.get("result")) {
        (Some("streams"), Some(Value::Array(r))) => r
            .iter()
            .map(|s| s["values"].as_array().map_or(0, Vec::len) as i64)
            .sum(),
        (Some("scalar"), _) => 1,
        (_, Some(Value::Array(r))) => r.len() as i64,
        _ => 0,
    };
    data.insert(
        "stats".into(),
        stats_value(Measured {
            exec_secs,
            entries_returned,
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        fn check(q: &str, status: u16, want: &str) {
            let (s, v) = format_value(q);
            assert_eq!(s.as_u16(), status, "{q}: {v}");
            let got = if status == 200 {
                v["data"].as_str()
            } else {
                v["status"].as_str()
            };
            assert_eq!(got, Some(want), "{q}");
        }
        check("{app=\"x\"}   |=  `a  b`", 200, "{app=\"x\"} |= \"a  b\"");
        check("  sum(rate({a=\"b\"}[1m]))\n", 200, "sum(rate({a=\"b\"}[1m]))");
        check("{app=\"x  \\\" y\"}", 200, "{app=\"x  \\\" y\"}");
        check("{app=", 400, "invalid-query");
    }

    #[test]
    fn stats_counts_entries() {
        fn check(mut body: Value, want: i64) {
            attach_stats(&mut body, 0.5);
            let s = &body["data"]["stats"]["summary"];
            assert_eq!(s["totalEntriesReturned"], json!(want), "{body}");
            assert!(s["execTime"].is_f64());
            assert!(s["splits"].is_i64());
        }
        check(
            json!({"status":"success","data":{"resultType":"streams","result":[{"stream":{},"values":[["1","a"],["2","b"]]}]}}),
            2,
        );
        check(
            json!({"status":"success","data":{"resultType":"vector","result":[{},{},{}]}}),
            3,
        );
        check(
            json!({"status":"success","data":{"resultType":"scalar","result":[1,"2"]}}),
            1,
        );
    }
}
