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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_test_target() {
    let dir = tempfile::tempdir().unwrap();
    let db = MetricsDb::open(MetricsOptions::new(dir.path())).unwrap();
    let ingester = Arc::new(MetricsIngester::new(Arc::clone(&db), Limits::default()));
    let ts_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 60_000;
    let body: Body = Arc::new(Mutex::new(Some((v1(ts_ms), "text/plain; version=0.0.4"))));
    let port = serve(Arc::clone(&body));
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
    let added = series(&db, "scrape_series_added");
    let added_live: Vec<f64> = added
        .iter()
        .find(|(l, _)| l.contains("live"))
        .unwrap()
        .1
        .iter()
        .map(|x| x.1)
        .collect();
    assert_eq!(
        &added_live[..2],
        &[2.0, 0.0],
        "a_total and b are new once (ts_series has a timestamp)"
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
    scraper.shutdown().await;
    check(&db, "a_total", &[(&format!("{{{live}, x=\"1\"}}"), "stale")]);
}
