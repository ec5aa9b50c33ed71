//! The Prometheus query API as clients see it (server as a child process): Grafana's "Save & test",
//! GET and form POST with URL+body merge, time and step formats, the error envelope and its status
//! codes, limits, stats, annotations, and the stub endpoints Grafana probes.

mod common;

use common::*;

/// One request and what must come back: status code and a JSON body (exact) or a substring.
fn check(server: &Server, method: &str, path: &str, form: &str, status: u16, want: &str) {
    let r = if method == "GET" {
        server.get(path)
    } else {
        server.post_form(path, form)
    };
    let body = r.text();
    assert_eq!(r.status, status, "{method} {path} {form}: {body}");
    if want.starts_with('{') && want.ends_with('}') {
        assert_eq!(body, want, "{method} {path} {form}");
    } else {
        assert!(body.contains(want), "{method} {path} {form}: {body} lacks {want}");
    }
}

#[test]
fn query_api() {
    let dir = tempdir();
    let mut server = Server::start(&dir.path().join("data"), None);
    server.wait_ready();
    let now = now_ms() / 1000 * 1000;
    let t0 = now - 600_000;
    let samples: Vec<(i64, f64)> = (0..=40).map(|i| (t0 + i * 15_000, i as f64)).collect();
    let r = server.write_v1(&write_request(vec![
        series(&[("__name__", "c_total"), ("job", "a")], &samples),
        series(&[("__name__", "c_total"), ("job", "b")], &samples),
        series(&[("__name__", "gauge"), ("job", "a")], &samples),
    ]));
    assert!(r.status < 300, "{}", r.text());
    let t = now / 1000;
    let ok_scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[4,"2"]}}"#;
    // Grafana's health check, both methods.
    check(&server, "POST", "/api/v1/query", "query=1%2B1&time=4", 200, ok_scalar);
    check(&server, "GET", "/api/v1/query?query=1%2B1&time=4", "", 200, ok_scalar);
    // Body values win over URL values; RFC3339 times.
    check(
        &server,
        "POST",
        "/api/v1/query?query=3&time=4",
        "query=1%2B1",
        200,
        ok_scalar,
    );
    check(
        &server,
        "GET",
        "/api/v1/query?query=1%2B1&time=1970-01-01T00:00:04Z",
        "",
        200,
        ok_scalar,
    );
    check(
        &server,
        "GET",
        "/api/v1/query?query=%22hi%22&time=4.5",
        "",
        200,
        r#"{"status":"success","data":{"resultType":"string","result":[4.5,"hi"]}}"#,
    );
    // Vector and matrix shapes.
    let p = format!("/api/v1/query?query=gauge&time={t}");
    check(
        &server,
        "GET",
        &p,
        "",
        200,
        &format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{"__name__":"gauge","job":"a"}},"value":[{t},"40"]}}]}}}}"#
        ),
    );
    let p = format!("/api/v1/query_range?query=gauge&start={}&end={}&step=15s", t - 30, t);
    check(
        &server,
        "GET",
        &p,
        "",
        200,
        &format!(
            r#"{{"status":"success","data":{{"resultType":"matrix","result":[{{"metric":{{"__name__":"gauge","job":"a"}},"values":[[{},"38"],[{},"39"],[{t},"40"]]}}]}}}}"#,
            t - 30,
            t - 15
        ),
    );
    check(
        &server,
        "POST",
        "/api/v1/query_range",
        &format!("query=gauge&start={}&end={t}&step=0.5", t - 1),
        200,
        "\"values\":[[",
    );
    // A per-query lookback: 2 s after the newest sample, a 1 s lookback finds nothing.
    check(
        &server,
        "GET",
        &format!("/api/v1/query?query=gauge&time={}&lookback_delta=1s", t + 2),
        "",
        200,
        r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
    );
    // Infos and stats.
    check(
        &server,
        "GET",
        &format!("/api/v1/query?query=rate(gauge[5m])&time={t}"),
        "",
        200,
        r#""infos":["PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: \"gauge\""]"#,
    );
    check(
        &server,
        "GET",
        &format!("/api/v1/query?query=c_total&time={t}&stats=all"),
        "",
        200,
        r#""totalQueryableSamples":"#,
    );
    // Errors: 400 bad_data, 422 execution, 503 timeout.
    check(
        &server,
        "GET",
        "/api/v1/query?query=foo{",
        "",
        400,
        r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": "#,
    );
    check(
        &server,
        "GET",
        "/api/v1/query?query=up&time=yesterday",
        "",
        400,
        r#"invalid parameter \"time\""#,
    );
    check(
        &server,
        "GET",
        "/api/v1/query_range?query=up&start=10&end=5&step=1",
        "",
        400,
        "end timestamp must not be before start time",
    );
    check(
        &server,
        "GET",
        "/api/v1/query_range?query=up&start=0&end=5&step=0",
        "",
        400,
        "zero or negative query resolution step widths are not accepted",
    );
    check(
        &server,
        "GET",
        "/api/v1/query_range?query=up&start=0&end=11001&step=1",
        "",
        400,
        "exceeded maximum resolution of 11,000 points per timeseries",
    );
    check(
        &server,
        "GET",
        "/api/v1/query_range?query=up&start=0&end=11000&step=1",
        "",
        200,
        "\"resultType\":\"matrix\"",
    );
    check(
        &server,
        "GET",
        "/api/v1/query_range?query=up&end=5&step=1",
        "",
        400,
        "invalid parameter \\\"start\\\"",
    );
    check(
        &server,
        "GET",
        "/api/v1/query_range?query=up&start=0&end=5&step=x",
        "",
        400,
        "invalid parameter \\\"step\\\"",
    );
    check(
        &server,
        "GET",
        &format!("/api/v1/query?query=c_total%2Bon()c_total&time={t}"),
        "",
        422,
        r#"{"status":"error","errorType":"execution","error":"found duplicate series for the match group {} on the right hand-side of the operation"#,
    );
    check(
        &server,
        "GET",
        &format!("/api/v1/query?query=c_total&time={t}&timeout=0.0000001"),
        "",
        503,
        r#"{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}"#,
    );
    // Format and parse.
    check(
        &server,
        "GET",
        "/api/v1/format_query?query=sum(x)by(job)",
        "",
        200,
        r#"{"status":"success","data":"sum by (job) (x)"}"#,
    );
    check(
        &server,
        "POST",
        "/api/v1/parse_query",
        "query=up",
        200,
        r#""type":"vectorSelector""#,
    );
    // Probes and stubs.
    check(
        &server,
        "GET",
        "/api/v1/status/buildinfo",
        "",
        200,
        r#"{"status":"success","data":{"version":"#,
    );
    check(
        &server,
        "POST",
        "/api/v1/query_exemplars",
        "query=test&start=1&end=2",
        200,
        r#"{"status":"success","data":[]}"#,
    );
    check(
        &server,
        "GET",
        "/api/v1/rules",
        "",
        200,
        r#"{"status":"success","data":{"groups":[]}}"#,
    );
    check(
        &server,
        "GET",
        "/api/v1/alerts",
        "",
        200,
        r#"{"status":"success","data":{"alerts":[]}}"#,
    );
    for p in ["/rules/test/test", "/config/v1/rules/test", "/api/prom/rules/test"] {
        assert_eq!(server.get(p).status, 404, "{p}");
    }
    let body = server.get("/api/v1/status/buildinfo").text();
    assert!(!body.contains("features"), "{body}");
}

/// A query whose client disconnects stops evaluating: with a single query slot, the next query gets
/// the slot at once instead of after the abandoned one would have finished.
#[test]
fn disconnected_client_cancels_its_query() {
    use std::io::Write as _;
    use std::time::{Duration, Instant};
    let dir = tempdir();
    let server = Server::start(&dir.path().join("data"), Some("query:\n  max_concurrency: 1\n"));
    // 2000 steps of a 7200-point subquery: seconds of CPU, little memory.
    let end = now_ms() / 1000;
    let slow = format!(
        "/api/v1/query_range?query=max_over_time%28vector%281%29%5B2h%3A1s%5D%29&start={}&end={end}&step=60",
        end - 2000 * 60
    );
    let began = Instant::now();
    let r = server.get(&slow);
    let full = began.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(full >= Duration::from_millis(500), "the slow query took only {full:?}");

    let mut conn = std::net::TcpStream::connect(server.addr).unwrap();
    write!(conn, "GET {slow} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    // The server has to be evaluating it before the client goes: no event to wait for from out here.
    std::thread::sleep(full / 10);
    drop(conn);
    let began = Instant::now();
    let r = server.get("/api/v1/query?query=1%2B1");
    let waited = began.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        waited < full / 3,
        "the next query waited {waited:?} for the slot; the abandoned query takes {full:?}"
    );
}
