//! Shared test support: the server as a child process on a free loopback port, a minimal HTTP/1.1
//! client over `std::net` (no client crate), and remote-write request builders.

#![allow(dead_code)]

use monitoring_rs::proto::remote_write::v1;
use prost::Message;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_monitoring-rs");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running server; killed (SIGKILL) on drop unless stopped first.
pub struct Server {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub config: Option<PathBuf>,
    pub log: PathBuf,
}

impl Server {
    /// Starts the server on a free port with `data_dir` and an optional YAML config text.
    pub fn start(data_dir: &Path, config_yaml: Option<&str>) -> Server {
        let config = config_yaml.map(|y| {
            let p = data_dir.with_extension("yaml");
            std::fs::write(&p, y).unwrap();
            p
        });
        let mut s = Server {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            data_dir: data_dir.to_path_buf(),
            config,
            log: data_dir.with_extension("log"),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.addr.to_string());
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().unwrap());
        self.wait_ready();
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("server exited early with {status}; log:\n{}", self.log_text());
            }
            if let Ok(r) = try_request(self.addr, "GET", "/-/ready", &[], &[])
                && r.status == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server not ready in 60 s; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(st)) = c.try_wait() {
                    assert!(st.success(), "server exited with {st}; log:\n{}", self.log_text());
                    return;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    panic!("server did not stop in 30 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        self.spawn();
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, &[], &[])
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        request(self.addr, "POST", path, headers, body)
    }

    pub fn post_form(&self, path: &str, form: &str) -> Response {
        request(
            self.addr,
            "POST",
            path,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            form.as_bytes(),
        )
    }

    /// Remote write 1.0 of `req`.
    pub fn write_v1(&self, req: &v1::WriteRequest) -> Response {
        self.post("/api/v1/write", RW1_HEADERS, &snappy(&req.encode_to_vec()))
    }

    /// The value of a sample line in `/metrics` (exact name with labels), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub const RW1_HEADERS: &[(&str, &str)] = &[
    ("Content-Type", "application/x-protobuf"),
    ("Content-Encoding", "snappy"),
    ("X-Prometheus-Remote-Write-Version", "0.1.0"),
];

pub const RW2_HEADERS: &[(&str, &str)] = &[
    (
        "Content-Type",
        "application/x-protobuf;proto=io.prometheus.write.v2.Request",
    ),
    ("Content-Encoding", "snappy"),
    ("X-Prometheus-Remote-Write-Version", "2.0.0"),
];

pub fn snappy(b: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(b).unwrap()
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    try_request(addr, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// One request on a fresh connection with `Connection: close`; the body is read to EOF.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut p = 0;
        loop {
            let le = body[p..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("chunk size"))?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&body[p..p + le]).trim(), 16)
                .map_err(|_| bad("chunk size"))?;
            p += le + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(&body[p..p + size]);
            p += size + 2;
        }
        body = out;
    }
    Ok(Response { status, headers, body })
}

/// A v1 series from `name{k="v",...}` pairs and (t, v) samples.
pub fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> v1::TimeSeries {
    v1::TimeSeries {
        labels: labels
            .iter()
            .map(|(n, v)| v1::Label {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
        samples: samples
            .iter()
            .map(|(t, v)| v1::Sample {
                value: *v,
                timestamp: *t,
            })
            .collect(),
        ..Default::default()
    }
}

pub fn write_request(ts: Vec<v1::TimeSeries>) -> v1::WriteRequest {
    v1::WriteRequest {
        timeseries: ts,
        ..Default::default()
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A temp dir for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("mrs-test").tempdir().unwrap()
}

/// The real Prometheus binary (`PROMETHEUS_BIN`, default `prometheus` on PATH), or `None` with a
/// message naming `test`. Under `CI=true` a missing binary is a failure, never a silent skip.
pub fn prometheus_binary(test: &str) -> Option<String> {
    let p = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".to_string());
    let ok = Command::new(&p)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some(p)
    } else if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prometheus not found (CI=true): .ci/run installs Debian's prometheus package");
    } else {
        eprintln!("{test}: skipped, no `prometheus` binary (apt-get install prometheus)");
        None
    }
}

/// A child process killed (and reaped) when dropped.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
