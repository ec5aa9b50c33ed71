//! A real `prometheus-node-exporter` scraped by this server and by a real Prometheus 2.42 at the
//! same time: both stores must hold the same series (names and label sets; values differ in time),
//! and `/api/v1/targets` shows the target as Prometheus shapes it.
//! Under `CI=true` a missing binary is a failure, never a silent skip.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn node_exporter_binary() -> Option<String> {
    let p = "prometheus-node-exporter".to_string();
    if Command::new(&p)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        Some(p)
    } else if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prometheus-node-exporter not found (CI=true): .ci/run installs it");
    } else {
        eprintln!("scrape_node_exporter: skipped, no `prometheus-node-exporter` binary");
        None
    }
}

/// Label sets of `{job="node"}` series as `name{a="b",...}` strings, from a `/api/v1/series` body.
fn series_set(v: &serde_json::Value) -> BTreeSet<String> {
    v["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_object())
                .map(|o| {
                    let mut ls: Vec<String> = o
                        .iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect();
                    ls.sort();
                    ls.join(",")
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn node_exporter_series_agree_with_prometheus() {
    let Some(prom) = prometheus_binary("scrape_node_exporter") else {
        return;
    };
    let Some(ne) = node_exporter_binary() else {
        return;
    };
    let dir = tempdir();
    let ne_port = free_port();
    // A fixed, small collector set: the comparison is about our scraper, not about which
    // collectors a host happens to have.
    let _ne = Kill(
        Command::new(ne)
            .arg(format!("--web.listen-address=127.0.0.1:{ne_port}"))
            .args([
                "--collector.disable-defaults",
                "--collector.cpu",
                "--collector.meminfo",
                "--collector.loadavg",
                "--collector.uname",
                "--collector.time",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let job = format!(
        "scrape_configs:\n  - job_name: node\n    scrape_interval: 500ms\n    scrape_timeout: 500ms\n    static_configs:\n      - targets: ['127.0.0.1:{ne_port}']\n"
    );
    let server = Server::start(&dir.path().join("data"), Some(&job));
    let prom_port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 500ms\n  scrape_timeout: 500ms\n{job}"),
    )
    .unwrap();
    let _prom = Kill(
        Command::new(prom)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("prom").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom_addr: std::net::SocketAddr = format!("127.0.0.1:{prom_port}").parse().unwrap();
    let path = "/api/v1/series?match[]=%7Bjob%3D%22node%22%7D";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ours = series_set(&server.get(path).json());
        let theirs = try_request(prom_addr, "GET", path, &[], b"")
            .map(|r| series_set(&r.json()))
            .unwrap_or_default();
        if ours.len() > 50 && ours == theirs {
            // Both hold the synthetic series too.
            assert!(ours.iter().any(|s| s.starts_with("__name__=up,")), "{ours:?}");
            assert!(ours.iter().any(|s| s.starts_with("__name__=scrape_series_added,")));
            eprintln!("scrape_node_exporter: {} series agree with Prometheus", ours.len());
            // `/api/v1/targets` shows the target the way Prometheus does.
            let t = server.get("/api/v1/targets").json();
            let a = &t["data"]["activeTargets"][0];
            let want_url = format!("http://127.0.0.1:{ne_port}/metrics");
            assert_eq!(
                (a["health"].as_str(), a["scrapeUrl"].as_str(), a["scrapePool"].as_str()),
                (Some("up"), Some(want_url.as_str()), Some("node")),
                "{t}"
            );
            assert_eq!(a["labels"]["job"], "node", "{t}");
            assert_eq!(
                a["discoveredLabels"]["__address__"],
                format!("127.0.0.1:{ne_port}"),
                "{t}"
            );
            assert_eq!(
                (a["scrapeInterval"].as_str(), a["lastError"].as_str()),
                (Some("500ms"), Some("")),
                "{t}"
            );
            assert!(a["lastScrapeDuration"].as_f64().is_some_and(|d| d > 0.0), "{t}");
            assert_eq!(t["data"]["droppedTargets"], serde_json::json!([]), "{t}");
            break;
        }
        if Instant::now() > deadline {
            let only_ours: Vec<_> = ours.difference(&theirs).collect();
            let only_theirs: Vec<_> = theirs.difference(&ours).collect();
            panic!(
                "series differ after 30 s ({} ours, {} Prometheus's)\nonly ours: {only_ours:#?}\nonly Prometheus: {only_theirs:#?}\nour log:\n{}",
                ours.len(),
                theirs.len(),
                server.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
