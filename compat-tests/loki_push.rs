//! Loki push against the server as a child process: the wire formats (protobuf + snappy, JSON v1,
//! legacy v0, gzip and deflate), Loki's status codes and texts for bad input, per-stream
//! validation that keeps the good streams, tenants, the metadata endpoints, and the stream limit
//! under a million tiny streams.

mod common;

use common::*;
use monitoring_rs::proto::loki::{EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter, Timestamp};
use prost::Message;
use std::io::Write;

const JSON: &[(&str, &str)] = &[("Content-Type", "application/json")];
const PROTO: &[(&str, &str)] = &[("Content-Type", "application/x-protobuf")];

/// (labels text, [(ts, line)]) per stream.
type Streams<'a> = [(&'a str, Vec<(i64, &'a [u8])>)];

fn now_ns() -> i64 {
    now_ms() * 1_000_000
}

fn proto_body(streams: &Streams<'_>) -> Vec<u8> {
    let req = PushRequest {
        streams: streams
            .iter()
            .map(|(labels, entries)| StreamAdapter {
                labels: labels.as_bytes().to_vec().into(),
                entries: entries
                    .iter()
                    .map(|(t, l)| EntryAdapter {
                        timestamp: Some(Timestamp::from_nanos(*t)),
                        line: l.to_vec().into(),
                        structured_metadata: vec![LabelPairAdapter {
                            name: "trace_id".as_bytes().to_vec().into(),
                            value: "t1".as_bytes().to_vec().into(),
                        }],
                        parsed: vec![],
                    })
                    .collect(),
                hash: 0,
            })
            .collect(),
        format: String::new(),
    };
    snappy(&req.encode_to_vec())
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn zlib(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// One push: status and a fragment the body must contain ("" for any).
fn check(s: &Server, path: &str, headers: &[(&str, &str)], body: &[u8], want_status: u16, want_text: &str) {
    let r = s.post(path, headers, body);
    assert_eq!(r.status, want_status, "{path} {headers:?}: body {}", r.text());
    assert!(
        r.text().contains(want_text),
        "{path}: {:?} lacks {want_text:?}",
        r.text()
    );
    if want_status != 204 {
        assert!(
            r.header("content-type").is_some_and(|c| c.starts_with("text/plain")),
            "Loki errors are plain text"
        );
    }
}

fn stats(s: &Server, tenant: &str, query: &str) -> serde_json::Value {
    let q = query
        .replace('{', "%7B")
        .replace('}', "%7D")
        .replace('"', "%22")
        .replace('=', "%3D")
        .replace('+', "%2B");
    let r = request(
        s.addr,
        "GET",
        &format!("/loki/api/v1/index/stats?query={q}&start=0"),
        &[("X-Scope-OrgID", tenant)],
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn push_formats_and_bad_input() {
    let dir = tempdir();
    let s = Server::start(&dir.path().join("data"), None);
    let t = now_ns();
    let line = format!(
        r#"{{"streams":[{{"stream":{{"job":"j1"}},"values":[["{t}","json line"],["{}","with meta",{{"user":"u1"}}]]}}]}}"#,
        t + 1
    );
    // Formats: JSON, protobuf, gzip and deflate around each, legacy v0.
    check(&s, "/loki/api/v1/push", JSON, line.as_bytes(), 204, "");
    check(
        &s,
        "/loki/api/v1/push",
        &[("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
        &gzip(line.as_bytes()),
        204,
        "",
    );
    check(
        &s,
        "/loki/api/v1/push",
        &[
            ("Content-Type", "application/json; charset=utf-8"),
            ("Content-Encoding", "deflate"),
        ],
        &zlib(line.as_bytes()),
        204,
        "",
    );
    let pb = proto_body(&[(
        r#"{job="j2", level="warn"}"#,
        vec![(t, b"proto line"), (t - 5, b"out of order")],
    )]);
    check(&s, "/loki/api/v1/push", PROTO, &pb, 204, "");
    check(
        &s,
        "/loki/api/v1/push",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
        ],
        &pb,
        204,
        "",
    );
    check(
        &s,
        "/loki/api/v1/push",
        &[("Content-Type", "application/x-protobuf"), ("Content-Encoding", "gzip")],
        &gzip(&pb),
        204,
        "",
    );
    let legacy =
        r#"{"streams":[{"labels":"{job=\"legacy\"}","entries":[{"ts":"2030-01-01T00:00:00Z","line":"too new"}]}]}"#;
    check(
        &s,
        "/api/prom/push",
        JSON,
        legacy.as_bytes(),
        400,
        "has timestamp too new: 2030-01-01T00:00:00Z",
    );
    let legacy = legacy.replace("2030-01-01T00:00:00Z", "2024-01-01T00:00:00.5Z");
    check(&s, "/api/prom/push", JSON, legacy.as_bytes(), 204, "");
    // Bad input, each with Loki's status.
    check(
        &s,
        "/loki/api/v1/push",
        PROTO,
        &snappy(b"\x0a\x05garbage-not-proto"),
        400,
        "",
    );
    check(&s, "/loki/api/v1/push", PROTO, b"not snappy at all", 400, "snappy");
    check(&s, "/loki/api/v1/push", JSON, b"{\"streams\":[", 400, "");
    check(
        &s,
        "/loki/api/v1/push",
        JSON,
        format!(r#"{{"streams":[{{"stream":{{"a":"b"}},"values":[[{t},"x"]]}}]}}"#).as_bytes(),
        400,
        "not a number",
    );
    check(
        &s,
        "/loki/api/v1/push",
        &[],
        line.as_bytes(),
        400,
        "mime: no media type",
    );
    check(
        &s,
        "/loki/api/v1/push",
        &[("Content-Type", "application/json"), ("Content-Encoding", "br")],
        line.as_bytes(),
        400,
        "Content-Encoding \"br\" not supported",
    );
    check(&s, "/loki/api/v1/push", JSON, br#"{"streams":[]}"#, 204, "");
    check(
        &s,
        "/loki/api/v1/push",
        JSON,
        br#"{"streams":[{"stream":{"a":"b"},"values":[]}]}"#,
        204,
        "",
    );
    // A stream whose labels do not parse is refused with Loki's text; the good stream is kept.
    let mixed = proto_body(&[
        (r#"{job=unquoted}"#, vec![(t, b"bad")]),
        (r#"{job="good"}"#, vec![(t, b"kept")]),
        ("{}", vec![(t, b"x")]),
    ]);
    check(
        &s,
        "/loki/api/v1/push",
        PROTO,
        &mixed,
        400,
        "error parsing labels '{job=unquoted}' with error: parse error at line 1, col 6",
    );
    check(
        &s,
        "/loki/api/v1/push",
        PROTO,
        &mixed,
        400,
        "error at least one label pair is required per stream",
    );
    assert_eq!(stats(&s, "fake", r#"{job="good"}"#)["entries"], 2);
    // Limits: a 20 MB line (over max_line_size), too many labels, a long label value.
    let big = vec![b'a'; 20 << 20];
    check(
        &s,
        "/loki/api/v1/push",
        PROTO,
        &proto_body(&[(r#"{job="big"}"#, vec![(t, &big)])]),
        400,
        "Max entry size '256000' bytes exceeded for stream '{job=\"big\"}' while adding an entry with length '20971520' bytes",
    );
    let many: String = format!(
        "{{{}}}",
        (0..16).map(|i| format!("l{i}=\"v\"")).collect::<Vec<_>>().join(", ")
    );
    check(
        &s,
        "/loki/api/v1/push",
        PROTO,
        &proto_body(&[(&many, vec![(t, b"x")])]),
        400,
        "has 16 label names; limit 15",
    );
    let long = format!("{{job=\"{}\"}}", "v".repeat(3000));
    check(
        &s,
        "/loki/api/v1/push",
        PROTO,
        &proto_body(&[(&long, vec![(t, b"x")])]),
        400,
        "has label value too long",
    );
    // Invalid UTF-8 is replaced, not refused.
    check(
        &s,
        "/loki/api/v1/push",
        PROTO,
        &proto_body(&[(r#"{job="utf8"}"#, vec![(t, b"bad \xff byte")])]),
        204,
        "",
    );
    assert_eq!(s.metric("monitoring_rs_loki_invalid_utf8_replaced_total"), 1.0);
    assert_eq!(
        s.metric(r#"monitoring_rs_loki_discarded_samples_total{reason="line_too_long"}"#),
        1.0
    );
    assert_eq!(
        s.metric(r#"monitoring_rs_loki_discarded_samples_total{reason="invalid_labels"}"#),
        2.0
    );
    assert_eq!(
        s.metric(r#"monitoring_rs_loki_discarded_samples_total{reason="max_label_names_per_series"}"#),
        1.0
    );
    assert_eq!(
        s.metric(r#"monitoring_rs_loki_discarded_samples_total{reason="too_far_in_future"}"#),
        1.0
    );

    // Tenants: X-Scope-OrgID in any case; "fake" when absent.
    check(
        &s,
        "/loki/api/v1/push",
        &[("Content-Type", "application/json"), ("x-scope-orgid", "team-a")],
        line.as_bytes(),
        204,
        "",
    );
    assert_eq!(stats(&s, "team-a", r#"{job="j1"}"#)["entries"], 2);
    assert_eq!(stats(&s, "Team-B", r#"{job="j1"}"#)["streams"], 0);
    assert_eq!(stats(&s, "fake", r#"{job="j1"}"#)["entries"], 6);

    // Metadata endpoints (API.md §3.5); service_name discovered from job, like Loki 3.4.
    let labels = s.get("/loki/api/v1/labels?start=0").json();
    assert_eq!(labels["status"], "success");
    let names: Vec<&str> = labels["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"job") && names.contains(&"service_name") && names.contains(&"level"),
        "{names:?}"
    );
    assert!(!names.contains(&"trace_id"), "structured metadata is not a label");
    let vals = s.get("/loki/api/v1/label/service_name/values?start=0").json();
    assert!(vals["data"].as_array().unwrap().iter().any(|v| v == "j2"), "{vals}");
    for q in ["match%5B%5D=%7Bjob%3D%22j2%22%7D", "match=%7Bjob%3D%22j2%22%7D"] {
        let series = s.get(&format!("/loki/api/v1/series?{q}&start=0")).json();
        assert_eq!(
            series["data"],
            serde_json::json!([{"job": "j2", "level": "warn", "service_name": "j2"}]),
            "{q}"
        );
    }
    let st = stats(&s, "fake", r#"{job="j2"}"#);
    assert_eq!(
        (st["streams"].as_u64(), st["entries"].as_u64()),
        (Some(1), Some(6)),
        "{st}"
    );
    let bad = s.get("/loki/api/v1/series?match=%7Bjob%3D%7D");
    assert_eq!(bad.status, 400, "{}", bad.text());
}

#[test]
fn body_over_the_limit_is_413() {
    let dir = tempdir();
    let s = Server::start(
        &dir.path().join("data"),
        Some("limits:\n  logs:\n    max_push_body: 64KiB\n"),
    );
    let t = now_ns();
    let big = vec![b'x'; 100 << 10];
    check(
        &s,
        "/loki/api/v1/push",
        PROTO,
        &proto_body(&[(r#"{a="b"}"#, vec![(t, &big)])]),
        413,
        "too large",
    );
    // Compressed under the limit, inflated over it.
    let json = format!(
        r#"{{"streams":[{{"stream":{{"a":"b"}},"values":[["{t}","{}"]]}}]}}"#,
        "y".repeat(200 << 10)
    );
    check(
        &s,
        "/loki/api/v1/push",
        &[("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
        &gzip(json.as_bytes()),
        413,
        "too large",
    );
    check(
        &s,
        "/loki/api/v1/push",
        JSON,
        format!(r#"{{"streams":[{{"stream":{{"a":"b"}},"values":[["{t}","ok"]]}}]}}"#).as_bytes(),
        204,
        "",
    );
}

#[test]
fn a_million_tiny_streams_hit_the_stream_limit() {
    let dir = tempdir();
    let s = Server::start(&dir.path().join("data"), None);
    let t = now_ns();
    let labels: Vec<String> = (0..1_000_000).map(|i| format!("{{s=\"{i}\"}}")).collect();
    let streams: Vec<_> = labels.iter().map(|l| (l.as_str(), vec![(t, &b"x"[..])])).collect();
    let body = proto_body(&streams);
    let r = s.post("/loki/api/v1/push", PROTO, &body);
    assert_eq!(r.status, 429, "{}", &r.text()[..r.text().len().min(500)]);
    assert!(
        r.text().contains("Maximum active stream limit exceeded"),
        "{}",
        &r.text()[..300]
    );
    assert_eq!(stats(&s, "fake", r#"{s=~".+"}"#)["streams"], 5000);
    // Memory stayed bounded: streams beyond the limit were refused batch by batch.
    let pid = s.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(hwm_kib < 400 << 10, "peak RSS {hwm_kib} KiB");
    // Another tenant is not affected, and the server still takes pushes.
    check(
        &s,
        "/loki/api/v1/push",
        &[("Content-Type", "application/json"), ("X-Scope-OrgID", "other")],
        format!(r#"{{"streams":[{{"stream":{{"a":"b"}},"values":[["{t}","ok"]]}}]}}"#).as_bytes(),
        204,
        "",
    );
}

/// `detected_level` from the stream's own labels, on the push that creates the stream and on later
/// pushes that find it by its spelling (the ingester remembers the level only for streams whose
/// labels give one); a stream without one falls back to the line.
#[test]
fn detected_level_from_stream_labels() {
    let dir = tempdir();
    let s = Server::start(&dir.path().join("d"), None);
    let t0 = now_ns() - 60_000_000_000;
    let push = |stream: &str, i: i64, line: &str| {
        let body = format!(
            r#"{{"streams":[{{"stream":{stream},"values":[["{}","{line}"]]}}]}}"#,
            t0 + i
        );
        check(&s, "/loki/api/v1/push", JSON, body.as_bytes(), 204, "");
    };
    for i in 0..3 {
        push(r#"{"job":"lv","level":"WARN"}"#, i, "plain text");
        push(r#"{"job":"lv2","severity":"err"}"#, i, "plain text");
        push(r#"{"job":"nolv"}"#, i, "an error line");
    }
    let check_levels = |query: &str, want: &[(&str, &str, &str)]| {
        let q: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let r = s.get(&format!("/loki/api/v1/query?query={q}&time={}", now_ns()));
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let mut got: Vec<(String, String, String)> = v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let m = &e["metric"];
                let s = |k: &str| m[k].as_str().unwrap_or("").to_string();
                (
                    s("job"),
                    s("detected_level"),
                    e["value"][1].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        got.sort();
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        assert_eq!(got, want, "{query}");
    };
    check_levels(
        r#"sum by (job, detected_level) (count_over_time({job=~"lv|lv2|nolv"}[1h]))"#,
        &[("lv", "warn", "3"), ("lv2", "error", "3"), ("nolv", "error", "3")],
    );
}
