//! A real Prometheus (Debian's 2.42 package) scraping itself and remote-writing to this server:
//! samples, staleness-free series and metadata arrive unchanged. Under `CI=true` a missing
//! `prometheus` binary is a failure, never a silent skip.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn prometheus_remote_write_arrives_unchanged() {
    let Some(bin) = prometheus_binary("real_prometheus") else {
        return;
    };
    let dir = tempdir();
    let server = Server::start(&dir.path().join("data"), None);
    let prom_port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  external_labels: {{replica: r1}}\n\
             scrape_configs:\n  - job_name: self\n    static_configs:\n      - targets: ['127.0.0.1:{prom_port}']\n\
             remote_write:\n  - url: http://{}/api/v1/write\n    queue_config: {{batch_send_deadline: 1s, min_backoff: 100ms}}\n    metadata_config: {{send_interval: 1s}}\n",
            server.addr
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prom = Kill(
        Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("prom").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let want_up = r#"{"__name__":"up","instance":"127.0.0.1:PORT","job":"self","replica":"r1"}"#
        .replace("PORT", &prom_port.to_string());
    let want_value: serde_json::Value = serde_json::from_str(&want_up).unwrap();
    loop {
        let series = server.get("/api/v1/series?match[]=up").json();
        let meta = server.get("/api/v1/metadata?metric=prometheus_build_info").json();
        let got_series = series["data"].as_array().is_some_and(|a| a.contains(&want_value));
        let got_meta = meta["data"]["prometheus_build_info"][0]["type"] == "gauge";
        if got_series && got_meta {
            break;
        }
        if Instant::now() > deadline {
            let plog = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
            let metrics = server.get("/metrics").text();
            panic!(
                "no data from Prometheus in 60 s (series {got_series}, metadata {got_meta});\nwant {want_up}\nup series: {series}\nour metrics:\n{metrics}\nour log:\n{}\nprometheus log:\n{plog}",
                server.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Hundreds of Prometheus's own series arrive, none refused.
    let names = server.get("/api/v1/label/__name__/values").json();
    assert!(names["data"].as_array().unwrap().len() > 100, "{names}");
    assert_eq!(
        server.metric("monitoring_rs_remote_write_requests_total{result=\"bad_request\"}"),
        0.0
    );
    assert_eq!(
        server.metric("monitoring_rs_remote_write_requests_total{result=\"partial\"}"),
        0.0
    );
}
