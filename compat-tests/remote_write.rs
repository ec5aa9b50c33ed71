//! Remote write and the metadata API against the real binary: status codes, bodies and counters as
//! Prometheus 3.x gives them, for good and bad input.

mod common;

use common::*;
use monitoring_rs::proto::remote_write::{v1, v2};
use prost::Message;
use std::io::Write;

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempdir();
    let s = Server::start(&dir.path().join("data"), None);
    (dir, s)
}

fn t0() -> i64 {
    // Recent enough to be inside the head's window, old enough to never be "in the future".
    (now_ms() / 1000 - 3600) * 1000
}

fn series_names(s: &Server, selector: &str) -> Vec<String> {
    let r = s.get(&format!("/api/v1/series?match[]={}", urlencode(selector)));
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    j["data"].as_array().unwrap().iter().map(|m| m.to_string()).collect()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn write_v1_then_read_metadata_api() {
    let (_d, s) = start();
    let t = t0();
    let mut req = write_request(vec![
        series(
            &[("__name__", "up"), ("instance", "a:9100"), ("job", "node")],
            &[(t, 1.0), (t + 15_000, 1.0)],
        ),
        series(
            &[("__name__", "up"), ("instance", "b:9100"), ("job", "node")],
            &[(t, 0.0)],
        ),
        series(
            &[("__name__", "http_requests_total"), ("code", "200"), ("job", "api")],
            &[(t, 5.0)],
        ),
    ]);
    req.metadata.push(v1::MetricMetadata {
        r#type: 1,
        metric_family_name: "http_requests_total".into(),
        help: "Total requests.".into(),
        unit: String::new(),
    });
    let r = s.write_v1(&req);
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    assert!(
        r.header("x-prometheus-remote-write-samples-written").is_none(),
        "v1 has no written headers"
    );

    assert_eq!(
        series_names(&s, "up"),
        vec![
            r#"{"__name__":"up","instance":"a:9100","job":"node"}"#,
            r#"{"__name__":"up","instance":"b:9100","job":"node"}"#
        ]
    );
    let check = |path: &str, want: serde_json::Value| {
        let r = s.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        assert_eq!(r.json(), want, "{path}");
    };
    check(
        "/api/v1/labels",
        serde_json::json!({"status":"success","data":["__name__","code","instance","job"]}),
    );
    check(
        "/api/v1/label/job/values",
        serde_json::json!({"status":"success","data":["api","node"]}),
    );
    check(
        "/api/v1/label/__name__/values?match[]=%7Bjob%3D%22node%22%7D",
        serde_json::json!({"status":"success","data":["up"]}),
    );
    check(
        "/api/v1/label/job/values?limit=1",
        serde_json::json!({"status":"success","data":["api"],"warnings":["results truncated due to limit"]}),
    );
    check(
        "/api/v1/label/nope/values",
        serde_json::json!({"status":"success","data":[]}),
    );
    check(
        "/api/v1/metadata",
        serde_json::json!({"status":"success","data":{"http_requests_total":[{"type":"counter","help":"Total requests.","unit":""}]}}),
    );
    // A time range before the data selects nothing.
    check(
        &format!("/api/v1/series?match[]=up&start=1&end={}", t / 1000 - 600),
        serde_json::json!({"status":"success","data":[]}),
    );
    // POST form with URL+body merge: body's match[] and URL's limit both apply.
    let r = s.post(
        "/api/v1/series?limit=1",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"match%5B%5D=up",
    );
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 1, "{}", r.text());
    assert_eq!(r.json()["warnings"][0], "results truncated due to limit");
    let r = s.post_form("/api/v1/labels", "match%5B%5D=http_requests_total");
    assert_eq!(r.json()["data"], serde_json::json!(["__name__", "code", "job"]));
    assert_eq!(s.metric("monitoring_rs_metrics_samples_appended_total"), 4.0);
}

#[test]
fn write_v2_sets_written_headers() {
    let (_d, s) = start();
    let t = t0();
    let req = v2::Request {
        symbols: vec![
            "".into(),
            "__name__".into(),
            "node_load1".into(),
            "job".into(),
            "node".into(),
            "Load.".into(),
        ],
        timeseries: vec![v2::TimeSeries {
            labels_refs: vec![1, 2, 3, 4],
            samples: vec![v2::Sample {
                value: 0.5,
                timestamp: t,
                ..Default::default()
            }],
            metadata: Some(v2::Metadata {
                r#type: 2,
                help_ref: 5,
                unit_ref: 0,
            }),
            ..Default::default()
        }],
    };
    let r = s.post("/api/v1/write", RW2_HEADERS, &snappy(&req.encode_to_vec()));
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("x-prometheus-remote-write-samples-written"), Some("1"));
    assert_eq!(r.header("x-prometheus-remote-write-histograms-written"), Some("0"));
    assert_eq!(r.header("x-prometheus-remote-write-exemplars-written"), Some("0"));
    assert_eq!(
        series_names(&s, "node_load1"),
        vec![r#"{"__name__":"node_load1","job":"node"}"#]
    );
    let md = s.get("/api/v1/metadata?metric=node_load1").json();
    assert_eq!(md["data"]["node_load1"][0]["type"], "gauge");
    assert_eq!(md["data"]["node_load1"][0]["help"], "Load.");
}

/// One bad-input case: the request, the status, a substring of the body, and the series (by
/// `__name__`) of the same request that must still have been stored.
struct Case {
    name: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: Vec<u8>,
    status: u16,
    body_contains: &'static str,
    stored: &'static [&'static str],
    counter: Option<&'static str>,
}

fn good(name: &str, t: i64) -> v1::TimeSeries {
    series(&[("__name__", name), ("job", "j")], &[(t, 1.0)])
}

fn rw1(ts: Vec<v1::TimeSeries>) -> Vec<u8> {
    snappy(&write_request(ts).encode_to_vec())
}

#[test]
fn bad_input_gets_the_right_status_and_keeps_good_data() {
    let dir = tempdir();
    let s = Server::start(
        &dir.path().join("data"),
        Some("limits:\n  remote_write_max_body: 64KiB\n  max_label_value_length: 64\n"),
    );
    let t = t0();
    let far_future = now_ms() + 3_600_000;
    let valid = rw1(vec![good("ok_metric", t)]);
    let cases = vec![
        Case {
            name: "not snappy",
            headers: RW1_HEADERS,
            body: b"this is not snappy at all".to_vec(),
            status: 400,
            body_contains: "snappy",
            stored: &[],
            counter: Some("monitoring_rs_remote_write_requests_total{result=\"bad_request\"}"),
        },
        Case {
            name: "truncated snappy",
            headers: RW1_HEADERS,
            body: valid[..valid.len() / 2].to_vec(),
            status: 400,
            body_contains: "",
            stored: &[],
            counter: None,
        },
        Case {
            name: "garbage protobuf",
            headers: RW1_HEADERS,
            body: snappy(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x01, 0x02]),
            status: 400,
            body_contains: "proto",
            stored: &[],
            counter: None,
        },
        Case {
            name: "compressed body over the limit",
            headers: RW1_HEADERS,
            body: vec![0u8; 70 * 1024],
            status: 413,
            body_contains: "too large",
            stored: &[],
            counter: Some("monitoring_rs_remote_write_requests_total{result=\"too_large\"}"),
        },
        Case {
            name: "decompressed body over the limit",
            headers: RW1_HEADERS,
            body: snappy(
                &write_request(vec![
                    series(&[("__name__", "x"), ("pad", &"p".repeat(63))], &[(t, 1.0)]);
                    2000
                ])
                .encode_to_vec(),
            ),
            status: 400,
            body_contains: "",
            stored: &[],
            counter: None,
        },
        Case {
            name: "wrong content type",
            headers: &[("Content-Type", "application/json"), ("Content-Encoding", "snappy")],
            body: valid.clone(),
            status: 415,
            body_contains: "expected application/x-protobuf",
            stored: &[],
            counter: Some("monitoring_rs_remote_write_requests_total{result=\"unsupported_media_type\"}"),
        },
        Case {
            name: "unknown proto message",
            headers: &[
                ("Content-Type", "application/x-protobuf;proto=foo.Bar"),
                ("Content-Encoding", "snappy"),
            ],
            body: valid.clone(),
            status: 415,
            body_contains: "foo.Bar",
            stored: &[],
            counter: None,
        },
        Case {
            name: "gzip encoding",
            headers: &[("Content-Type", "application/x-protobuf"), ("Content-Encoding", "gzip")],
            body: valid.clone(),
            status: 415,
            body_contains: "gzip encoding",
            stored: &[],
            counter: None,
        },
        Case {
            name: "unsorted labels are sorted, as Prometheus does",
            headers: RW1_HEADERS,
            body: rw1(vec![series(&[("job", "j"), ("__name__", "unsorted_ok")], &[(t, 1.0)])]),
            status: 204,
            body_contains: "",
            stored: &["unsorted_ok"],
            counter: None,
        },
        Case {
            name: "duplicate label names",
            headers: RW1_HEADERS,
            body: rw1(vec![
                series(&[("__name__", "dup"), ("a", "1"), ("a", "2")], &[(t, 1.0)]),
                good("good_beside_dup", t),
            ]),
            status: 400,
            body_contains: "duplicated label a",
            stored: &["good_beside_dup"],
            counter: Some("monitoring_rs_remote_write_invalid_series_samples_total{reason=\"duplicate_label\"}"),
        },
        Case {
            name: "empty label name",
            headers: RW1_HEADERS,
            body: rw1(vec![
                series(&[("", "x"), ("__name__", "empty_name")], &[(t, 1.0)]),
                good("good_beside_empty", t),
            ]),
            status: 400,
            body_contains: "invalid metric name or labels",
            stored: &["good_beside_empty"],
            counter: Some("monitoring_rs_remote_write_invalid_series_samples_total{reason=\"empty_label_name\"}"),
        },
        Case {
            name: "invalid UTF-8 in a label value",
            headers: RW1_HEADERS,
            body: {
                let mut ts = good("bad_utf8", t);
                // Encoded by hand below: prost's String cannot hold invalid UTF-8.
                ts.labels[1].value = "\u{1}PLACEHOLDER".into();
                let mut raw = write_request(vec![ts, good("good_beside_utf8", t)]).encode_to_vec();
                let pos = raw
                    .windows(12)
                    .position(|w| w == "\u{1}PLACEHOLDER".as_bytes())
                    .unwrap();
                raw[pos] = 0xff;
                snappy(&raw)
            },
            status: 400,
            body_contains: "invalid UTF-8",
            stored: &["good_beside_utf8"],
            counter: Some("monitoring_rs_remote_write_invalid_series_samples_total{reason=\"invalid_utf8\"}"),
        },
        Case {
            name: "missing __name__",
            headers: RW1_HEADERS,
            body: rw1(vec![
                series(&[("job", "nameless")], &[(t, 1.0)]),
                good("good_beside_nameless", t),
            ]),
            status: 400,
            body_contains: "__name__",
            stored: &["good_beside_nameless"],
            counter: Some("monitoring_rs_remote_write_invalid_series_samples_total{reason=\"missing_metric_name\"}"),
        },
        Case {
            name: "label value over the length limit",
            headers: RW1_HEADERS,
            body: rw1(vec![
                series(&[("__name__", "long_value"), ("v", &"x".repeat(65))], &[(t, 1.0)]),
                good("good_beside_long", t),
            ]),
            status: 400,
            body_contains: "label value too long",
            stored: &["good_beside_long"],
            counter: Some("monitoring_rs_remote_write_invalid_series_samples_total{reason=\"label_value_too_long\"}"),
        },
        Case {
            name: "far-future timestamp",
            headers: RW1_HEADERS,
            body: rw1(vec![good("future", far_future), good("good_beside_future", t)]),
            status: 400,
            body_contains: "out of bounds for series {__name__=\"future\", job=\"j\"}",
            stored: &["good_beside_future"],
            counter: Some("monitoring_rs_metrics_samples_rejected_total{reason=\"too_far_in_future\"}"),
        },
        Case {
            name: "NaN and infinities are valid values",
            headers: RW1_HEADERS,
            body: rw1(vec![
                series(&[("__name__", "nan_ok")], &[(t, f64::NAN)]),
                series(
                    &[("__name__", "inf_ok")],
                    &[(t, f64::INFINITY), (t + 1, f64::NEG_INFINITY)],
                ),
            ]),
            status: 204,
            body_contains: "",
            stored: &["nan_ok", "inf_ok"],
            counter: None,
        },
        Case {
            name: "out of order within a series",
            headers: RW1_HEADERS,
            body: rw1(vec![series(&[("__name__", "ooo")], &[(t + 10, 1.0), (t, 2.0)])]),
            status: 400,
            body_contains: "out of order sample for series {__name__=\"ooo\"}",
            stored: &["ooo"],
            counter: Some("monitoring_rs_metrics_samples_rejected_total{reason=\"out_of_order\"}"),
        },
        Case {
            name: "duplicate timestamp with another value",
            headers: RW1_HEADERS,
            body: rw1(vec![series(&[("__name__", "dupts")], &[(t, 1.0), (t, 2.0), (t, 1.0)])]),
            status: 400,
            body_contains: "duplicate sample for timestamp",
            stored: &["dupts"],
            counter: Some("monitoring_rs_metrics_samples_rejected_total{reason=\"duplicate\"}"),
        },
    ];
    let mut failures = Vec::new();
    for c in &cases {
        let before = c.counter.map(|m| s.metric(m));
        let r = s.post("/api/v1/write", c.headers, &c.body);
        if r.status != c.status || !r.text().contains(c.body_contains) {
            failures.push(format!(
                "{}: got {} {:?}, want {} containing {:?}",
                c.name,
                r.status,
                r.text(),
                c.status,
                c.body_contains
            ));
            continue;
        }
        if c.status >= 400 && c.status != 413 {
            assert_eq!(
                r.header("content-type"),
                Some("text/plain; charset=utf-8"),
                "{}",
                c.name
            );
        }
        for name in c.stored {
            if series_names(&s, name).is_empty() {
                failures.push(format!(
                    "{}: good series {name} of the same request was not stored",
                    c.name
                ));
            }
        }
        if let (Some(m), Some(b)) = (c.counter, before)
            && s.metric(m) <= b
        {
            failures.push(format!("{}: counter {m} did not increase", c.name));
        }
        // The server keeps serving good data after every bad request.
        let ok = s.post(
            "/api/v1/write",
            RW1_HEADERS,
            &rw1(vec![good("after_each", t + failures.len() as i64 + 100)]),
        );
        assert!(
            ok.status == 204 || ok.status == 400,
            "{}: server unhealthy after: {}",
            c.name,
            ok.status
        );
    }
    assert!(failures.is_empty(), "bad-input failures:\n{}", failures.join("\n"));
}

#[test]
fn sender_disconnecting_mid_body_does_not_hurt() {
    let (_d, s) = start();
    let t = t0();
    let body = rw1(vec![good("never_complete", t)]);
    for _ in 0..20 {
        let mut c = std::net::TcpStream::connect(s.addr).unwrap();
        let head = format!(
            "POST /api/v1/write HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\nContent-Length: {}\r\n\r\n",
            body.len() + 1000
        );
        c.write_all(head.as_bytes()).unwrap();
        c.write_all(&body[..body.len() / 2]).unwrap();
        drop(c);
    }
    let r = s.write_v1(&write_request(vec![good("after_disconnects", t)]));
    assert_eq!(r.status, 204);
    assert!(
        series_names(&s, "never_complete").is_empty(),
        "a partial body must not be committed"
    );
    assert_eq!(series_names(&s, "after_disconnects").len(), 1);
    // The body-read errors are counted (the server notices them asynchronously).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while s.metric("monitoring_rs_remote_write_body_read_errors_total") < 20.0 {
        assert!(std::time::Instant::now() < deadline, "body read errors not counted");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn api_parameter_errors_use_the_prometheus_envelope() {
    let (_d, s) = start();
    for (path, status, want) in [
        ("/api/v1/series", 400, "no match[] parameter provided"),
        ("/api/v1/series?match[]=up%7B", 400, ""),
        (
            "/api/v1/series?match[]=%7Bjob%3D~%22.*%22%7D",
            400,
            "match[] must contain at least one non-empty matcher",
        ),
        ("/api/v1/labels?start=yesterday", 400, "invalid parameter \"start\""),
        ("/api/v1/labels?limit=-1", 400, "limit must be non-negative"),
        ("/api/v1/label/job/values?end=x", 400, "invalid parameter \"end\""),
        ("/api/v1/metadata?limit=x", 400, "limit must be a number"),
    ] {
        let r = s.get(path);
        assert_eq!(r.status, status, "{path}: {}", r.text());
        let j = r.json();
        assert_eq!(j["status"], "error", "{path}");
        assert_eq!(j["errorType"], "bad_data", "{path}");
        assert!(j["error"].as_str().unwrap().contains(want), "{path}: {j}");
    }
    // U__ escaped label names in the path are unescaped.
    let t = t0();
    s.write_v1(&write_request(vec![series(
        &[("__name__", "m"), ("http.status", "200")],
        &[(t, 1.0)],
    )]));
    let r = s.get("/api/v1/label/U__http_2e_status/values");
    assert_eq!(r.json()["data"], serde_json::json!(["200"]));
}

#[test]
fn self_metrics_and_health() {
    let (_d, s) = start();
    let r = s.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text();
    for name in [
        "monitoring_rs_metrics_samples_appended_total",
        "monitoring_rs_metrics_samples_rejected_total{reason=\"out_of_order\"}",
        "monitoring_rs_metrics_head_series",
        "monitoring_rs_wal_bytes_written_total",
        "monitoring_rs_wal_fsyncs_total",
        "monitoring_rs_metrics_blocks",
        "monitoring_rs_metrics_compaction_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "missing {name} in:\n{text}");
    }
    assert_eq!(s.get("/-/ready").status, 200);
    assert_eq!(s.get("/-/healthy").status, 200);
}

#[test]
fn bad_config_names_the_key_and_exits_2() {
    let dir = tempdir();
    for (yaml, key) in [
        (
            "storage:\n  metrics:\n    block_duration: 5s\n",
            "storage.metrics.block_duration",
        ),
        ("storage:\n  metrics:\n    retention_tim: 1d\n", "retention_tim"),
        (
            "limits:\n  max_label_value_length: -3\n",
            "limits.max_label_value_length",
        ),
    ] {
        let p = dir.path().join("bad.yaml");
        std::fs::write(&p, yaml).unwrap();
        let out = std::process::Command::new(BIN)
            .arg("--config")
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{yaml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{yaml}: stderr {err:?} does not name {key}");
    }
    let out = std::process::Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--config", "--data-dir", "--listen"] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

/// Known series are found by their raw key bytes without re-validation: an unsorted copy of a known
/// series must land in the same series, and raw bytes that only look like a known key (a value
/// holding the 0xff separators) must be refused, not appended to it.
#[test]
fn raw_key_fast_path_is_exact() {
    let (_d, s) = start();
    let t = t0();
    let appended = |s: &Server| s.metric("monitoring_rs_metrics_samples_appended_total");
    assert_eq!(
        s.write_v1(&write_request(vec![series(
            &[("__name__", "m"), ("a", "1")],
            &[(t, 1.0)]
        )]))
        .status,
        204
    );
    let unsorted = write_request(vec![series(&[("a", "1"), ("__name__", "m")], &[(t + 1000, 2.0)])]);
    assert_eq!(s.write_v1(&unsorted).status, 204);
    assert_eq!(series_names(&s, "m"), vec![r#"{"__name__":"m","a":"1"}"#]);
    assert_eq!(appended(&s), 2.0);
    // One pair whose value is "m\xffa\xff1": its raw key bytes equal the key of {__name__="m", a="1"}.
    let mut raw = write_request(vec![series(&[("__name__", "m\u{1}a\u{1}1")], &[(t + 2000, 3.0)])]).encode_to_vec();
    for b in raw.iter_mut() {
        if *b == 1 {
            *b = 0xff;
        }
    }
    let r = s.post("/api/v1/write", RW1_HEADERS, &snappy(&raw));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("invalid UTF-8"), "{}", r.text());
    assert_eq!(
        appended(&s),
        2.0,
        "the look-alike must not be appended to the known series"
    );
}
