//! Shapes of the Loki API surface around the query engine, against the server as a child process:
//! Grafana's "Save & test", buildinfo, format_query, the ruler stand-ins, drilldown-limits, and the
//! `stats` object with the types logcli's strict decoder expects.

mod common;

use common::*;
use serde_json::{Value, json};

const JSON: &[(&str, &str)] = &[("Content-Type", "application/json")];

fn now_ns() -> i64 {
    now_ms() * 1_000_000
}

/// Pushes `lines` to one stream `labels` (a JSON object) at consecutive nanoseconds from `t0`.
fn push(s: &Server, labels: Value, t0: i64, lines: &[&str]) {
    let values: Vec<Value> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| json!([(t0 + i as i64).to_string(), l]))
        .collect();
    let body = json!({"streams": [{"stream": labels, "values": values}]});
    let r = s.post("/loki/api/v1/push", JSON, body.to_string().as_bytes());
    assert_eq!(r.status, 204, "push: {}", r.text());
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The JSON type of `v` as Go's decoder sees it: integers and floats differ for logcli.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::Bool(_) => "bool",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::Null => "null",
    }
}

#[test]
fn grafana_save_and_test() {
    let dir = tempdir();
    let s = Server::start(&dir.path().join("d"), None);
    // Exactly what Grafana ≥ 10.2 sends (API.md §3.3): 10-digit time is seconds.
    let r = request(
        s.addr,
        "GET",
        "/loki/api/v1/query?direction=backward&query=vector(1)%2Bvector(1)&time=4000000000",
        &[("X-Loki-Response-Encoding-Flags", "categorize-labels")],
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "success");
    assert_eq!(v["data"]["resultType"], "vector");
    assert_eq!(
        v["data"]["result"],
        json!([{"metric": {}, "value": [4000000000i64, "2"]}])
    );
}

#[test]
fn fixed_shape_endpoints() {
    let dir = tempdir();
    let s = Server::start(&dir.path().join("d"), None);
    fn check(s: &Server, path: &str, status: u16, want: &[(&str, Value)]) {
        let r = s.get(path);
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert!(
            r.header("content-type").unwrap_or("").starts_with("application/json"),
            "{path}"
        );
        let v = r.json();
        for (ptr, w) in want {
            assert_eq!(v.pointer(ptr), Some(w), "{path} {ptr}: {v}");
        }
    }
    let ver = json!("3.5.0");
    check(
        &s,
        "/loki/api/v1/status/buildinfo",
        200,
        &[("/version", ver.clone()), ("/branch", json!("HEAD"))],
    );
    check(
        &s,
        &format!("/loki/api/v1/format_query?query={}", enc("{app=\"x\"}   |=  `err`")),
        200,
        &[("/status", json!("success")), ("/data", json!("{app=\"x\"} |= `err`"))],
    );
    check(
        &s,
        "/loki/api/v1/format_query?query=%7Bapp%3D",
        400,
        &[("/status", json!("invalid-query"))],
    );
    check(
        &s,
        "/prometheus/api/v1/rules",
        200,
        &[("", json!({"status": "success", "data": {"groups": []}}))],
    );
    check(
        &s,
        "/prometheus/api/v1/alerts",
        200,
        &[("", json!({"status": "success", "data": {"alerts": []}}))],
    );
    check(
        &s,
        "/loki/api/v1/drilldown-limits",
        200,
        &[
            ("/version", ver),
            ("/limits/max_entries_limit_per_query", json!(5000)),
            ("/limits/discover_log_levels", json!(true)),
            ("/limits/volume_enabled", json!(true)),
        ],
    );
    let r = s.post_form("/loki/api/v1/format_query", "query=%7Ba%3D%22b%22%7D");
    assert_eq!(r.json(), json!({"status": "success", "data": "{a=\"b\"}"}));
}

#[test]
fn query_stats_types() {
    let dir = tempdir();
    let s = Server::start(&dir.path().join("d"), None);
    let t0 = now_ns() - 60_000_000_000;
    push(&s, json!({"app": "api"}), t0, &["a", "b", "c"]);
    let (start, end) = (t0 - 1_000_000_000, t0 + 1_000_000_000);
    fn check(s: &Server, path: &str, entries: i64) {
        let r = s.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let v = r.json();
        let data = v["data"].as_object().unwrap();
        // Loki's field order: stats comes after result.
        let keys: Vec<&String> = data.keys().collect();
        assert_eq!(keys.last().map(|k| k.as_str()), Some("stats"), "{path}");
        let st = &data["stats"];
        assert_eq!(st["summary"]["totalEntriesReturned"], json!(entries), "{path}");
        for (ptr, want) in [
            ("/summary/execTime", "float"),
            ("/summary/queueTime", "float"),
            ("/summary/bytesProcessedPerSecond", "int"),
            ("/summary/totalLinesProcessed", "int"),
            ("/summary/splits", "int"),
            ("/summary/shards", "int"),
            ("/summary/totalPostFilterLines", "int"),
            ("/querier/store/totalChunksRef", "int"),
            ("/querier/store/chunksDownloadTime", "int"),
            ("/querier/store/queryReferencedStructuredMetadata", "bool"),
            ("/querier/store/chunk/headChunkBytes", "int"),
            ("/ingester/totalReached", "int"),
            ("/ingester/store/chunk/decompressedLines", "int"),
            ("/cache/chunk/entriesFound", "int"),
            ("/cache/result/downloadTime", "int"),
            ("/cache/instantMetricResult/requests", "int"),
            ("/index/totalChunks", "int"),
            ("/index/usedBloomFilters", "bool"),
        ] {
            let got = st.pointer(ptr).map_or("missing", kind);
            assert_eq!(got, want, "{path} stats{ptr}");
        }
    }
    let q = enc("{app=\"api\"}");
    check(
        &s,
        &format!("/loki/api/v1/query_range?query={q}&start={start}&end={end}"),
        3,
    );
    let q = enc("sum(count_over_time({app=\"api\"}[5m]))");
    check(&s, &format!("/loki/api/v1/query?query={q}&time={end}"), 1);
    // Errors stay plain text, without stats.
    let r = s.get("/loki/api/v1/query?query=%7Bapp%3D");
    assert_eq!(r.status, 400);
    assert!(r.header("content-type").unwrap_or("").starts_with("text/plain"));
}
