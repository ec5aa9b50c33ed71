//! Black-box test of the scraper: a test target served by this test (a tiny HTTP server thread
//! whose series change between scrapes), scraped every 100 ms into a real store; checks `up`, the
//! stored samples and labels, target and metric relabeling, staleness markers when a series
//! vanishes, when the target fails and when the scraper stops, and HELP/TYPE metadata.

use monitoring_rs::collect::scrape::{ScrapeConfig, Scraper};
use monitoring_rs::ingest::{Limits, MetricsIngester};
use monitoring_rs::model::{MatchOp, Matcher, is_stale_nan};
use monitoring_rs::storage::metrics::{MetricsDb, MetricsOptions, MetricsReader};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the test target serves: `None` answers 500.
type Body = Arc<Mutex<Option<(String, &'static str)>>>;

fn serve(body: Body) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 4096];
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let resp = match &*body.lock().unwrap() {
                Some((b, ct)) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                ),
                None => "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nbusy".to_string(),
            };
            let _ = c.write_all(resp.as_bytes());
        }
    });
    port
}

type Series = Vec<(String, Vec<(i64, f64)>)>;

/// All stored series of metric `name`, labels rendered `{a="b", ...}` without `__name__`.
fn series(db: &MetricsDb, name: &str) -> Series {
    let m = [Matcher::new(MatchOp::Equal, "__name__", name).unwrap()];
    db.select(&m, i64::MIN, i64::MAX)
        .unwrap()
        .into_iter()
        .map(|s| {
            let ls: Vec<String> = s
                .labels
                .iter()
                .filter(|l| l.name != "__name__")
                .map(|l| format!("{}={:?}", l.name, l.value))
                .collect();
            let v = s.samples(i64::MIN, i64::MAX).map(|x| (x.t, x.v)).collect();
            (format!("{{{}}}", ls.join(", ")), v)
        })
        .collect()
}

/// Waits until `up` of the live target has `n` samples (each scrape writes one).
/// `up` samples stored so far for the live target.
fn live_scrapes(db: &MetricsDb) -> usize {
    series(db, "up")
        .iter()
        .find(|(l, _)| l.contains("live"))
        .map_or(0, |(_, v)| v.len())
}

/// Waits until `more` scrapes of the live target were stored after the ones already there.
fn wait_more_scrapes(db: &MetricsDb, more: usize) {
    wait_scrapes(db, live_scrapes(db) + more);
}

fn wait_scrapes(db: &MetricsDb, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = live_scrapes(db);
        if got >= n {
            return;
        }
        assert!(Instant::now() < deadline, "only {got} scrapes after 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `want`: the label sets of metric `name` with what their last sample must be ("stale" or a
/// number), in label order.
fn check(db: &MetricsDb, name: &str, want: &[(&str, &str)]) {
    let got: Vec<(String, String)> = series(db, name)
        .into_iter()
        .map(|(l, v)| {
            let last = v.last().map_or("none".to_string(), |(_, x)| {
                if is_stale_nan(*x) {
                    "stale".to_string()
                } else {
                    x.to_string()
                }
            });
            (l, last)
        })
        .collect();
    let mut got = got;
    got.sort();
    let mut want: Vec<(String, String)> = want.iter().map(|(l, v)| (l.to_string(), v.to_string())).collect();
    want.sort();
    assert_eq!(got, want, "{name}");
}

fn v1(ts: i64) -> String {
    format!(
        "# HELP a_total Things done.\n# TYPE a_total counter\na_total{{x=\"1\"}} 1\nb{{instance=\"scraped\"}} 2\ndrop_me 3\nts_series 4 {ts}\n"
    )
}
const V2: &str = "# TYPE a_total counter\n# HELP a_total Things done.\na_total{x=\"1\"} 5\n# EOF\n";

/// A store and ingester in `dir`, and the test target serving `v1` (its `ts_series` a minute old).
struct TestTarget {
    db: Arc<MetricsDb>,
    ingester: Arc<MetricsIngester>,
    ts_ms: i64,
    body: Body,
    port: u16,
}

fn test_target(dir: &std::path::Path) -> TestTarget {
    let db = MetricsDb::open(MetricsOptions::new(dir)).unwrap();
    let ingester = Arc::new(MetricsIngester::new(Arc::clone(&db), Limits::default()));
    let ts_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 60_000;
    let body: Body = Arc::new(Mutex::new(Some((v1(ts_ms), "text/plain; version=0.0.4"))));
    let port = serve(Arc::clone(&body));
    TestTarget {
        db,
        ingester,
        ts_ms,
        body,
        port,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_test_target() {
    let dir = tempfile::tempdir().unwrap();
    let TestTarget {
        db,
        ingester,
        ts_ms,
        body,
        port,
    } = test_target(dir.path());
    let yaml = format!(
        "- job_name: t
  scrape_interval: 100ms
  static_configs:
    - targets: ['127.0.0.1:{port}']
      labels: {{role: live}}
    - targets: ['127.0.0.1:1']
      labels: {{role: refused}}
    - targets: ['127.0.0.1:2']
      labels: {{skip: 'yes'}}
  relabel_configs:
    - {{source_labels: [skip], regex: 'yes', action: drop}}
    - {{source_labels: [__address__], regex: '(.*):.*', target_label: host}}
  metric_relabel_configs:
    - {{source_labels: [__name__], regex: 'drop_me', action: drop}}
"
    );
    let cfgs: Vec<ScrapeConfig> = serde_yaml::from_str(&yaml).unwrap();
    let scraper = Scraper::start(cfgs, None, Arc::clone(&ingester)).unwrap();
    let live = format!("host=\"127.0.0.1\", instance=\"127.0.0.1:{port}\", job=\"t\", role=\"live\"");
    let refused = "host=\"127.0.0.1\", instance=\"127.0.0.1:1\", job=\"t\", role=\"refused\"".to_string();

    wait_scrapes(&db, 2);
    {
        let state = scraper.state();
        let st = state.lock();
        assert_eq!(st.active.len(), 2);
        assert_eq!(st.dropped.len(), 1);
        let healths: Vec<&str> = st.active.iter().map(|t| t.lock().health).collect();
        assert!(healths.contains(&"up") && healths.contains(&"down"), "{healths:?}");
    }
    check(
        &db,
        "up",
        &[(&format!("{{{live}}}"), "1"), (&format!("{{{refused}}}"), "0")],
    );
    check(&db, "a_total", &[(&format!("{{{live}, x=\"1\"}}"), "1")]);
    // honor_labels false: the scraped `instance` becomes `exported_instance`.
    check(
        &db,
        "b",
        &[(&format!("{{exported_instance=\"scraped\", {live}}}"), "2")],
    );
    check(&db, "drop_me", &[]);
    check(
        &db,
        "scrape_samples_scraped",
        &[(&format!("{{{live}}}"), "4"), (&format!("{{{refused}}}"), "0")],
    );
    check(
        &db,
        "scrape_samples_post_metric_relabeling",
        &[(&format!("{{{live}}}"), "3"), (&format!("{{{refused}}}"), "0")],
    );
    let ts = series(&db, "ts_series");
    assert_eq!(ts[0].1, vec![(ts_ms, 4.0)], "explicit timestamps are honoured");
    let added_live: Vec<f64> = live_values(&db, "scrape_series_added").iter().map(|x| x.1).collect();
    assert_eq!(
        &added_live[..2],
        &[3.0, 0.0],
        "a_total, b and ts_series are new once (Prometheus counts series with timestamps too)"
    );
    let meta = db.metadata();
    assert!(
        meta.iter()
            .any(|m| m.family == "a_total" && m.kind == "counter" && m.help == "Things done."),
        "{meta:?}"
    );

    // `b` vanishes (and the body becomes OpenMetrics): `b` gets a staleness marker.
    *body.lock().unwrap() = Some((V2.to_string(), "application/openmetrics-text; version=1.0.0"));
    wait_more_scrapes(&db, 2);
    check(&db, "a_total", &[(&format!("{{{live}, x=\"1\"}}"), "5")]);
    check(
        &db,
        "b",
        &[(&format!("{{exported_instance=\"scraped\", {live}}}"), "stale")],
    );
    check(&db, "ts_series", &[(&format!("{{{live}}}"), "4")]);

    // The target fails: everything it had goes stale, `up` is 0.
    *body.lock().unwrap() = None;
    wait_more_scrapes(&db, 2);
    check(&db, "a_total", &[(&format!("{{{live}, x=\"1\"}}"), "stale")]);
    check(
        &db,
        "up",
        &[(&format!("{{{live}}}"), "0"), (&format!("{{{refused}}}"), "0")],
    );

    // Back up, then the scraper stops (the target goes away): its series end with a marker.
    *body.lock().unwrap() = Some((V2.to_string(), "bogus/type"));
    wait_more_scrapes(&db, 2);
    check(
        &db,
        "up",
        &[(&format!("{{{live}}}"), "1"), (&format!("{{{refused}}}"), "0")],
    );
    // Prometheus's scrape cache outlives a failed scrape: a_total, seen in the last good scrape,
    // is not added again at the first scrape after the failure.
    let up = live_values(&db, "up");
    let back = up
        .windows(2)
        .find(|w| w[0].1 == 0.0 && w[1].1 == 1.0)
        .expect("down, then up")[1]
        .0;
    let added_back = live_values(&db, "scrape_series_added")
        .into_iter()
        .find(|x| x.0 == back);
    assert_eq!(added_back.map(|x| x.1), Some(0.0));
    scraper.shutdown().await;
    check(&db, "a_total", &[(&format!("{{{live}, x=\"1\"}}"), "stale")]);
}

/// The live target's samples of synthetic series `name`.
fn live_values(db: &MetricsDb, name: &str) -> Vec<(i64, f64)> {
    series(db, name)
        .into_iter()
        .find(|(l, _)| l.contains("live"))
        .map(|x| x.1)
        .unwrap_or_default()
}

/// `track_timestamps_staleness: true`: a series with an explicit timestamp that disappears gets
/// a staleness marker (without it, it keeps its last sample: the test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_timestamps_staleness() {
    let dir = tempfile::tempdir().unwrap();
    let TestTarget {
        db,
        ingester,
        ts_ms: _,
        body,
        port,
    } = test_target(dir.path());
    let yaml = format!(
        "- job_name: t\n  scrape_interval: 100ms\n  track_timestamps_staleness: true\n  static_configs: [{{targets: ['127.0.0.1:{port}'], labels: {{role: live}}}}]\n"
    );
    let scraper = Scraper::start(serde_yaml::from_str(&yaml).unwrap(), None, Arc::clone(&ingester)).unwrap();
    let live = format!("instance=\"127.0.0.1:{port}\", job=\"t\", role=\"live\"");
    wait_scrapes(&db, 2);
    check(&db, "ts_series", &[(&format!("{{{live}}}"), "4")]);
    *body.lock().unwrap() = Some((V2.to_string(), "application/openmetrics-text; version=1.0.0"));
    wait_more_scrapes(&db, 2);
    check(&db, "ts_series", &[(&format!("{{{live}}}"), "stale")]);
    scraper.shutdown().await;
}

/// How the async test server answers: TLS or not, client certificates required or not, and the
/// bearer token it wants (`None`: no authentication).
struct Srv {
    port: u16,
    token: Option<Arc<Mutex<String>>>,
}

fn fixture(name: &str) -> String {
    format!("{}/compat-tests/fixtures/scrape-tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn tls_acceptor(mtls: bool) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(fixture("server.crt"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
    let b = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = if mtls {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(fixture("ca.crt")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        b.with_client_cert_verifier(v)
    } else {
        b.with_no_client_auth()
    };
    tokio_rustls::TlsAcceptor::from(Arc::new(b.with_single_cert(certs, key).unwrap()))
}

fn gzip(b: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b.as_bytes()).unwrap();
    e.finish().unwrap()
}

/// The response for a path: (extra headers, body, delay before the body).
fn route(path: &str) -> (&'static str, Vec<u8>, Duration) {
    let plain = |b: String| ("", b.into_bytes(), Duration::ZERO);
    match path {
        "/gzip" => ("Content-Encoding: gzip\r\n", gzip("g{a=\"1\"} 7\n"), Duration::ZERO),
        "/gzip-big" => (
            "Content-Encoding: gzip\r\n",
            gzip(&format!("# {}\ng 1\n", "x".repeat(4000))),
            Duration::ZERO,
        ),
        "/big" => plain(format!("# {}\ng 1\n", "x".repeat(2000))),
        "/labels" => plain("l{a=\"1\",b=\"2\",c=\"3\"} 1\n".into()),
        "/long-name" => plain("l{a_very_long_label_name=\"1\"} 1\n".into()),
        "/long-value" => plain(format!("l{{a=\"{}\"}} 1\n", "v".repeat(32))),
        "/many" => plain("m{i=\"1\"} 1\nm{i=\"2\"} 1\nm{i=\"3\"} 1\nm{i=\"4\"} 1\n".into()),
        "/slow" => ("", b"g 1\n".to_vec(), Duration::from_secs(2)),
        _ => plain("g 1\n".into()),
    }
}

async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut c: S, token: Option<Arc<Mutex<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&req).to_string();
    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
    let auth = head
        .lines()
        .find_map(|l| l.strip_prefix("Authorization: "))
        .map(str::to_string);
    let want = token.map(|t| format!("Bearer {}", t.lock().unwrap()));
    let denied = match (&want, &auth) {
        (None, _) => None,
        (Some(_), None) => Some("401 Unauthorized"),
        (Some(w), Some(a)) if w != a => Some("403 Forbidden"),
        _ => None,
    };
    if let Some(status) = denied {
        let _ = c
            .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
            .await;
        let _ = c.shutdown().await;
        return;
    }
    let (headers, body, delay) = route(&path);
    let _ = c
        .write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n{headers}Content-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await;
    tokio::time::sleep(delay).await;
    let _ = c.write_all(&body).await;
    let _ = c.shutdown().await;
}

/// Starts the async test server; `tls`: `Some(mtls)`.
async fn serve_async(tls: Option<bool>, token: Option<&str>) -> Srv {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let token = token.map(|t| Arc::new(Mutex::new(t.to_string())));
    let tok = token.clone();
    let acceptor = tls.map(tls_acceptor);
    tokio::spawn(async move {
        loop {
            let Ok((c, _)) = l.accept().await else { return };
            let (acceptor, tok) = (acceptor.clone(), tok.clone());
            tokio::spawn(async move {
                match acceptor {
                    None => answer(c, tok).await,
                    Some(a) => {
                        if let Ok(s) = a.accept(c).await {
                            answer(s, tok).await;
                        }
                    }
                }
            });
        }
    });
    Srv { port, token }
}

/// Scrapes `path` of `srv` with the job settings `extra` (YAML lines at job level) until the
/// target's first result, then checks its `lastError` (`""`: up; a trailing `*`: prefix) and the
/// stored `up`; `extra_targets` are more static targets (for `target_limit`).
async fn check_target(srv: &Srv, extra: &str, path: &str, extra_targets: &[&str], want_error: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = MetricsDb::open(MetricsOptions::new(dir.path())).unwrap();
    let ingester = Arc::new(MetricsIngester::new(Arc::clone(&db), Limits::default()));
    let mut targets = vec![format!("'127.0.0.1:{}'", srv.port)];
    targets.extend(extra_targets.iter().map(|t| format!("'{t}'")));
    let yaml = format!(
        "- job_name: t\n  scrape_interval: 200ms\n  metrics_path: {path}\n  static_configs: [{{targets: [{}]}}]\n{extra}",
        targets.join(", ")
    );
    let cfgs: Vec<ScrapeConfig> = serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
    let scraper = Scraper::start(cfgs, None, Arc::clone(&ingester)).unwrap_or_else(|e| panic!("{yaml}: {e}"));
    let state = scraper.state();
    let me = format!("127.0.0.1:{}", srv.port);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (health, err) = loop {
        let found = state
            .lock()
            .active
            .iter()
            .map(|t| t.lock().clone())
            .find(|t| t.labels.get("instance") == Some(&me) && t.health != "unknown");
        if let Some(t) = found {
            break (t.health, t.last_error);
        }
        assert!(Instant::now() < deadline, "{yaml}: no scrape after 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    scraper.shutdown().await;
    let matches = match want_error.strip_suffix('*') {
        Some(prefix) => err.starts_with(prefix),
        None => err == want_error,
    };
    assert!(matches, "{yaml}: lastError {err:?}, want {want_error:?}");
    assert_eq!(health, if want_error.is_empty() { "up" } else { "down" }, "{yaml}");
    let up: Vec<f64> = series(&db, "up")
        .into_iter()
        .find(|(l, _)| l.contains(&me))
        .map(|(_, v)| v.iter().map(|x| x.1).collect())
        .unwrap_or_default();
    assert_eq!(
        up.first(),
        Some(&if want_error.is_empty() { 1.0 } else { 0.0 }),
        "{yaml}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_limits_and_encodings() {
    let srv = serve_async(None, None).await;
    check_target(&srv, "", "/gzip", &[], "").await;
    check_target(&srv, "  body_size_limit: 1KB\n", "/gzip", &[], "").await;
    check_target(
        &srv,
        "  body_size_limit: 1KB\n",
        "/big",
        &[],
        "body size limit exceeded",
    )
    .await;
    // The limit is on the decoded body: 4 KB that compresses to a few dozen bytes still fails.
    check_target(
        &srv,
        "  body_size_limit: 1KB\n",
        "/gzip-big",
        &[],
        "body size limit exceeded",
    )
    .await;
    check_target(
        &srv,
        "  label_limit: 5\n",
        "/labels",
        &[],
        "label_limit exceeded (metric: l, number of labels: 6, limit: 5)",
    )
    .await;
    check_target(&srv, "  label_limit: 6\n", "/labels", &[], "").await;
    check_target(
        &srv,
        "  label_name_length_limit: 10\n",
        "/long-name",
        &[],
        "label_name_length_limit exceeded (metric: l, label name: a_very_long_label_name, length: 22, limit: 10)",
    )
    .await;
    check_target(
        &srv,
        "  label_value_length_limit: 20\n",
        "/long-value",
        &[],
        "label_value_length_limit exceeded (metric: l, label name: a, value: \"vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\", length: 32, limit: 20)",
    )
    .await;
    check_target(&srv, "  sample_limit: 3\n", "/many", &[], "sample limit exceeded").await;
    check_target(&srv, "  sample_limit: 4\n", "/many", &[], "").await;
    check_target(
        &srv,
        "  scrape_timeout: 100ms\n",
        "/slow",
        &[],
        "context deadline exceeded",
    )
    .await;
    check_target(
        &srv,
        "  target_limit: 2\n",
        "/",
        &["127.0.0.1:1", "127.0.0.1:2"],
        "target_limit exceeded (number of targets: 3, limit: 2)",
    )
    .await;
    check_target(&srv, "  target_limit: 3\n", "/", &["127.0.0.1:1", "127.0.0.1:2"], "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_https_and_auth() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "good\n").unwrap();
    let tf = token_file.display();
    let ca = fixture("ca.crt");
    let tls = serve_async(Some(false), Some("good")).await;
    let https = format!("  scheme: https\n  tls_config: {{ca_file: {ca}}}\n");
    check_target(&tls, &format!("{https}  bearer_token_file: {tf}\n"), "/", &[], "").await;
    check_target(&tls, &format!("{https}  bearer_token: good\n"), "/", &[], "").await;
    check_target(
        &tls,
        &format!("{https}  authorization: {{type: Bearer, credentials_file: {tf}}}\n"),
        "/",
        &[],
        "",
    )
    .await;
    check_target(&tls, &https, "/", &[], "server returned HTTP status 401 Unauthorized").await;
    check_target(
        &tls,
        &format!("{https}  bearer_token: bad\n"),
        "/",
        &[],
        "server returned HTTP status 403 Forbidden",
    )
    .await;
    check_target(
        &tls,
        "  scheme: https\n  bearer_token: good\n",
        "/",
        &[],
        "tls: invalid peer certificate*",
    )
    .await;
    check_target(
        &tls,
        "  scheme: https\n  bearer_token: good\n  tls_config: {insecure_skip_verify: true}\n",
        "/",
        &[],
        "",
    )
    .await;
    check_target(
        &tls,
        &format!("  scheme: https\n  bearer_token: good\n  tls_config: {{ca_file: {ca}, server_name: target.test}}\n"),
        "/",
        &[],
        "",
    )
    .await;
    check_target(
        &tls,
        &format!("  scheme: https\n  bearer_token: good\n  tls_config: {{ca_file: {ca}, server_name: other.test}}\n"),
        "/",
        &[],
        "tls: invalid peer certificate*",
    )
    .await;
    // Plain http against the TLS port fails the scrape, it does not hang.
    check_target(&tls, "  bearer_token: good\n", "/", &[], "malformed response*").await;

    let mtls = serve_async(Some(true), None).await;
    check_target(
        &mtls,
        &format!("  scheme: https\n  tls_config: {{ca_file: {ca}}}\n"),
        "/",
        &[],
        "*",
    )
    .await;
    let (cert, key) = (fixture("client.crt"), fixture("client.key"));
    check_target(
        &mtls,
        &format!("  scheme: https\n  tls_config: {{ca_file: {ca}, cert_file: {cert}, key_file: {key}}}\n"),
        "/",
        &[],
        "",
    )
    .await;
}

/// Waits until the single target's `lastError` is `want` (a prefix when it ends in `*`).
async fn wait_last_error(scraper: &Scraper, want: &str) {
    let state = scraper.state();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let err = state.lock().active[0].lock().last_error.clone();
        let ok = match want.strip_suffix('*') {
            Some(prefix) => err.starts_with(prefix),
            None => err == want,
        };
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "lastError {err:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One https job scraping `port` every 100 ms, with `auth_and_tls` (YAML lines of the job).
fn start_https_job(dir: &std::path::Path, port: u16, auth_and_tls: &str) -> Scraper {
    let db = MetricsDb::open(MetricsOptions::new(dir)).unwrap();
    let ingester = Arc::new(MetricsIngester::new(Arc::clone(&db), Limits::default()));
    let yaml = format!(
        "- job_name: t\n  scrape_interval: 100ms\n  scheme: https\n{auth_and_tls}  static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
    );
    Scraper::start(serde_yaml::from_str(&yaml).unwrap(), None, ingester).unwrap()
}

/// A rotated token file is picked up without a restart: 403 with the old token, up with the new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "old").unwrap();
    let srv = serve_async(Some(false), Some("new")).await;
    let tls = format!(
        "  bearer_token_file: {}\n  tls_config: {{ca_file: {}}}\n",
        token_file.display(),
        fixture("ca.crt")
    );
    let scraper = start_https_job(dir.path(), srv.port, &tls);
    wait_last_error(&scraper, "server returned HTTP status 403 Forbidden").await;
    // The server rotates first (old token refused), then the file catches up.
    std::fs::write(&token_file, "new").unwrap();
    wait_last_error(&scraper, "").await;
    assert_eq!(scraper.state().lock().active[0].lock().health, "up");
    *srv.token.as_ref().unwrap().lock().unwrap() = "newer".into();
    wait_last_error(&scraper, "server returned HTTP status 403 Forbidden").await;
    std::fs::write(&token_file, "newer\n").unwrap();
    wait_last_error(&scraper, "").await;
    scraper.shutdown().await;
}

/// A rotated CA file is used without a restart (as Prometheus, which compares the TLS files on
/// every request): the server's certificate fails against the old CA file and verifies once the
/// file holds its CA. The same holds for cert_file and key_file (one mechanism).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    // A certificate, but not the server's issuer.
    std::fs::copy(fixture("client.crt"), &ca_file).unwrap();
    let srv = serve_async(Some(false), None).await;
    let tls = format!("  tls_config: {{ca_file: {}}}\n", ca_file.display());
    let scraper = start_https_job(dir.path(), srv.port, &tls);
    wait_last_error(&scraper, "tls: invalid peer certificate*").await;
    std::fs::copy(fixture("ca.crt"), &ca_file).unwrap();
    wait_last_error(&scraper, "").await;
    assert_eq!(scraper.state().lock().active[0].lock().health, "up");
    scraper.shutdown().await;
}
