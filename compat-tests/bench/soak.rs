//! Soak (issue 6's footprint): the real binary at a steady load for an hour, its RSS sampled all
//! along, to show memory stays flat (this project's ancestor leaked linearly; it must never return).
//!
//! `cargo bench --bench soak` runs, for `SOAK_SECS` (default 3600):
//! - the pod-log tailer over 200 CRI files (100 pods × 2 containers) written at `SOAK_LINES_PER_SEC`
//!   (default 1000, ~150-byte messages), each file rotated kubelet-style (rename to
//!   `0.log.<stamp>`, a few late lines to the old handle, new `0.log`, older rotations deleted)
//!   every 2 MiB, and one pod replaced by a new one (new name and uid, old directory removed a
//!   minute later) every `SOAK_CHURN_SECS` (default 60);
//! - 20 scrape targets (300 series each, counters rising) scraped every 15 s;
//! - every 15 s a PromQL range query, a LogQL metric query and a LogQL log query over HTTP
//!   (`SOAK_QUERIES=0` leaves them out, to tell the query path's memory from the collectors';
//!   `SOAK_QUERY_SECS` sets another period, to see in minutes what queries do to memory in hours).
//!
//! `SOAK_PRINT_SECS` (default 300) sets how often a row is printed; `SOAK_BIN` runs another build
//! of the server (to compare two builds side by side), `SOAK_DIR` another work directory,
//! `SOAK_IDLE` the log store's `chunk_idle_period` (default 30m, which a short run never reaches),
//! `SOAK_BLOCK` the metrics `block_duration` (default 2h: a one-hour run crosses one boundary or none).
//!
//! It prints a row every 5 minutes (RSS, RssAnon, CPU ms per second, open descriptors, lines
//! stored) and at the end, for RSS and for RssAnon (the process's own memory, without the binary's
//! file-backed code pages), the value after warm-up (`SOAK_WARMUP_SECS`, by default the first half
//! of the run: the queries look 10 minutes back, so their working set grows for 10 minutes, and a
//! replaced pod's streams keep their open chunks until the log store's 30-minute
//! `chunk_idle_period` closes them, so their number settles after ~32 minutes), its maximum, the
//! last value and the least-squares slope after warm-up in MiB per hour, then the floor of RssAnon
//! (its lowest value in each 5 minutes after warm-up, sampled every 5 s)
//! and that floor's slope, plus lines written vs stored. The same for glibc's own account of its
//! heap (`monitoring_rs_malloc_in_use_bytes` and `_free_bytes`, read from `/metrics` with every
//! sample): a leak raises what is in use; memory glibc holds but cannot return raises only RssAnon.
//! Every sample is written to `samples.tsv` in the work directory.

#[path = "support.rs"]
mod support;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{Proc, Res, cpu_seconds, env_u64, free_port, http_get, status_kib, target_dir, wait_ready};

const BIN: &str = env!("CARGO_BIN_EXE_monitoring-rs");
const PODS: usize = 100;
const CONTAINERS: [&str; 2] = ["app", "sidecar"];
const TARGETS: usize = 20;
const SERIES_PER_TARGET: usize = 300;
const ROTATE_BYTES: u64 = 2 << 20;
/// RSS moves by several MiB within seconds as queries come and go: frequent samples, and a floor
/// per [`FLOOR_WINDOW`] (what is held between queries), tell a leak from that noise.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const FLOOR_WINDOW: f64 = 300.0;

fn main() {
    if let Err(e) = run() {
        eprintln!("soak: {e}");
        std::process::exit(1);
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// containerd's timestamp style: RFC 3339 with nanoseconds, `Z`.
fn cri_time(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = monitoring_rs::model::text::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

struct Pod {
    dir: PathBuf,
}

/// The node's log tree and its writer: round-robin lines, rotation, pod churn.
struct Node {
    root: PathBuf,
    pods: Vec<Pod>,
    next_pod: usize,
    /// The file (pod index × containers + container) the next write starts at.
    next_file: usize,
    seq: u64,
    /// Pods no longer written to, with when they stopped: their directories go a minute later,
    /// as kubelet removes a deleted pod's logs (lines written before are all still read).
    retired: Vec<(Instant, PathBuf)>,
}

impl Node {
    fn new(root: &Path) -> Res<Node> {
        let mut n = Node {
            root: root.to_path_buf(),
            pods: Vec::new(),
            next_pod: 0,
            next_file: 0,
            seq: 0,
            retired: Vec::new(),
        };
        for _ in 0..PODS {
            let p = n.new_pod()?;
            n.pods.push(p);
        }
        Ok(n)
    }

    fn new_pod(&mut self) -> Res<Pod> {
        let i = self.next_pod;
        self.next_pod += 1;
        let dir = self.root.join(format!(
            "ns{}_web-{i}_{:08x}-0000-4000-8000-{:012x}",
            i % 7,
            i * 7919,
            i
        ));
        for c in CONTAINERS {
            std::fs::create_dir_all(dir.join(c)).map_err(|e| format!("mkdir: {e}"))?;
            std::fs::File::create(dir.join(c).join("0.log")).map_err(|e| format!("create: {e}"))?;
        }
        Ok(Pod { dir })
    }

    /// Writes `n` lines round-robin over every file, from where the last call stopped; returns
    /// lines written. (Until session 10 each call began at the first file: at 100 lines a tick
    /// only the 100 files of the 50 oldest pods were ever written, and a new pod's files stayed
    /// silent until it became one of them.)
    fn write(&mut self, n: u64) -> Res<u64> {
        let files = self.pods.len() * CONTAINERS.len();
        let per_file = n.div_ceil(files as u64);
        let mut written = 0;
        let ts = cri_time(now_ns());
        let mut buf = String::new();
        let start = self.next_file;
        for k in 0..files {
            if written >= n {
                break;
            }
            let at = (start + k) % files;
            self.next_file = (at + 1) % files;
            let (p, c) = (&self.pods[at / CONTAINERS.len()], CONTAINERS[at % CONTAINERS.len()]);
            let path = p.dir.join(c).join("0.log");
            buf.clear();
            for _ in 0..per_file.min(n - written) {
                self.seq += 1;
                let s = self.seq;
                let _ = writeln!(
                    buf,
                    "{ts} stdout F level=info msg=\"handled request\" method=GET path=/api/v1/items/{} status={} duration_ms={} trace_id={:016x}",
                    s % 977,
                    [200, 200, 200, 404, 500][(s % 5) as usize],
                    s % 250,
                    s.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                );
                written += 1;
            }
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| format!("open {}: {e}", path.display()))?;
            f.write_all(buf.as_bytes()).map_err(|e| format!("write: {e}"))?;
            if f.metadata().map(|m| m.len()).unwrap_or(0) >= ROTATE_BYTES {
                rotate(&path, &mut f, &ts)?;
                written += 2;
                self.seq += 2;
            }
        }
        Ok(written)
    }

    /// Replaces the oldest pod with a new one (kubelet removes the directory of a deleted pod).
    fn churn(&mut self) -> Res<()> {
        let old = self.pods.remove(0);
        self.retired.push((Instant::now(), old.dir));
        while self
            .retired
            .first()
            .is_some_and(|r| r.0.elapsed() >= Duration::from_secs(60))
        {
            let (_, dir) = self.retired.remove(0);
            let _ = std::fs::remove_dir_all(&dir);
        }
        let p = self.new_pod()?;
        self.pods.push(p);
        Ok(())
    }
}

/// Kubelet's rotation: older rotations deleted, `0.log` renamed, two late lines to the renamed file
/// through the writer's handle, then a new `0.log`.
fn rotate(path: &Path, f: &mut std::fs::File, ts: &str) -> Res<()> {
    let dir = path.parent().ok_or("no parent")?;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("0.log.") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let rotated = dir.join(format!("0.log.{}", now_ns()));
    std::fs::rename(path, &rotated).map_err(|e| format!("rename: {e}"))?;
    let late = format!("{ts} stdout F late line one\n{ts} stderr F late line two\n");
    f.write_all(late.as_bytes()).map_err(|e| format!("late write: {e}"))?;
    std::fs::File::create(path).map_err(|e| format!("create: {e}"))?;
    Ok(())
}

/// A scrape target: 300 series, counters rising with every scrape.
fn serve_target(l: TcpListener, id: usize, stop: Arc<AtomicBool>) {
    let mut scrapes: u64 = 0;
    l.set_nonblocking(true).ok();
    let mut body = String::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut s, _)) = l.accept() else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        s.set_nonblocking(false).ok();
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut req = [0u8; 4096];
        let _ = s.read(&mut req);
        scrapes += 1;
        body.clear();
        body.push_str("# HELP soak_requests_total Requests handled.\n# TYPE soak_requests_total counter\n");
        for k in 0..SERIES_PER_TARGET - 1 {
            let _ = writeln!(
                body,
                "soak_requests_total{{handler=\"/h{}\",code=\"{}\"}} {}",
                k / 3,
                [200, 404, 500][k % 3],
                scrapes * (k as u64 + 1) + id as u64
            );
        }
        body.push_str("# TYPE soak_up_seconds gauge\n");
        let _ = writeln!(body, "soak_up_seconds {}", scrapes * 15);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(body.as_bytes());
    }
}

fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Least-squares slope of (seconds, MiB), in MiB per hour.
fn slope_per_hour(pts: &[(f64, f64)]) -> f64 {
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return 0.0;
    }
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx * 3600.0 }
}

fn urlenc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

/// The `storage` section: `SOAK_IDLE` as the log store's `chunk_idle_period`, `SOAK_BLOCK` as the
/// metrics `block_duration` (shorter blocks put more block boundaries, where every series cuts its
/// chunk at once, into one run).
fn storage_config() -> String {
    let mut out = String::new();
    if let Ok(d) = std::env::var("SOAK_IDLE") {
        let _ = write!(out, "  logs:\n    chunk_idle_period: {d}\n");
    }
    if let Ok(d) = std::env::var("SOAK_BLOCK") {
        let _ = write!(out, "  metrics:\n    block_duration: {d}\n");
    }
    if out.is_empty() {
        out
    } else {
        format!("storage:\n{out}")
    }
}

/// One sample of the server's memory (MiB) at `t` seconds.
struct Sample {
    t: f64,
    rss: f64,
    anon: f64,
    heap: f64,
    free: f64,
}

/// (middle of the window, lowest value) of each [`FLOOR_WINDOW`] of `pts`.
fn floors(pts: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    let Some(&(t0, _)) = pts.first() else { return out };
    for &(t, v) in pts {
        let mid = t0 + (((t - t0) / FLOOR_WINDOW).floor() + 0.5) * FLOOR_WINDOW;
        match out.last_mut() {
            Some(f) if f.0 == mid => f.1 = f.1.min(v),
            _ => out.push((mid, v)),
        }
    }
    out
}

fn run() -> Res<()> {
    let secs = env_u64("SOAK_SECS", 3600)?;
    let warmup = env_u64("SOAK_WARMUP_SECS", secs / 2)?.min(secs);
    let rate = env_u64("SOAK_LINES_PER_SEC", 1000)?;
    let churn = Duration::from_secs(env_u64("SOAK_CHURN_SECS", 60)?);
    let queries = env_u64("SOAK_QUERIES", 1)? != 0;
    let query_every = Duration::from_secs(env_u64("SOAK_QUERY_SECS", 15)?.max(1));
    let print_every = Duration::from_secs(env_u64("SOAK_PRINT_SECS", 300)?);
    let work = std::env::var_os("SOAK_DIR").map_or_else(|| target_dir().join("soak"), PathBuf::from);
    let bin = std::env::var_os("SOAK_BIN").map_or_else(|| PathBuf::from(BIN), PathBuf::from);
    let _ = std::fs::remove_dir_all(&work);
    let root = work.join("pods");
    std::fs::create_dir_all(&root).map_err(|e| format!("mkdir: {e}"))?;
    let mut node = Node::new(&root)?;

    let stop = Arc::new(AtomicBool::new(false));
    let mut targets = Vec::new();
    let mut addrs = Vec::new();
    for id in 0..TARGETS {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        addrs.push(format!("\"{}\"", l.local_addr().map_err(|e| e.to_string())?));
        let st = Arc::clone(&stop);
        targets.push(std::thread::spawn(move || serve_target(l, id, st)));
    }
    let cfg = work.join("soak.yaml");
    std::fs::write(
        &cfg,
        format!(
            "{idle}scrape_configs:\n  - job_name: soak\n    scrape_interval: 15s\n    scrape_timeout: 10s\n    static_configs:\n      - targets: [{}]\n",
            addrs.join(", "),
            idle = storage_config()
        ),
    )
    .map_err(|e| format!("write config: {e}"))?;

    let port = free_port()?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(work.join("data"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--pod-logs")
        .arg(&root)
        .env("NODE_NAME", "soak");
    let mut srv = Proc::spawn(cmd, "monitoring-rs".into(), None, &work.join("server.log"))?;
    wait_ready(&mut srv, port)?;
    let pid = srv.pid();
    println!(
        "soak: {secs} s, {rate} lines/s over {} files, a pod replaced every {} s, {TARGETS} targets × {SERIES_PER_TARGET} series @ 15 s, {}",
        PODS * CONTAINERS.len(),
        churn.as_secs(),
        if queries {
            format!("3 queries / {} s", query_every.as_secs())
        } else {
            "no queries".to_string()
        }
    );
    println!(
        "{:>6} {:>9} {:>9} {:>9} {:>9} {:>10} {:>5} {:>12} {:>12}",
        "min", "RSS MiB", "anon MiB", "heap MiB", "free MiB", "CPU ms/s", "fds", "written", "stored"
    );

    let written = Arc::new(AtomicU64::new(0));
    let queries_failed = Arc::new(AtomicU64::new(0));
    let qstop = Arc::clone(&stop);
    let qfail = Arc::clone(&queries_failed);
    let querier = std::thread::spawn(move || {
        while queries && !qstop.load(Ordering::Relaxed) {
            let end = now_ns() / 1_000_000_000;
            let start = end - 600;
            let qs = [
                format!(
                    "/api/v1/query_range?query={}&start={start}&end={end}&step=15",
                    urlenc("sum by (code) (rate(soak_requests_total[1m]))")
                ),
                format!(
                    "/loki/api/v1/query_range?query={}&start={start}000000000&end={end}000000000&step=15",
                    urlenc("sum by (container) (count_over_time({node=\"soak\"} |= \"status=500\" [1m]))")
                ),
                format!(
                    "/loki/api/v1/query_range?query={}&start={start}000000000&end={end}000000000&limit=100",
                    urlenc("{container=\"app\"} | logfmt | status >= 500")
                ),
            ];
            for q in &qs {
                if !matches!(http_get(port, q, Duration::from_secs(30)), Ok((200, _))) {
                    qfail.fetch_add(1, Ordering::Relaxed);
                }
            }
            let t = Instant::now();
            while t.elapsed() < query_every && !qstop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    });

    let t0 = Instant::now();
    let cpu0 = cpu_seconds(pid)?;
    // (seconds, VmRSS MiB, RssAnon MiB, malloc in use MiB, malloc free MiB): RssAnon is the
    // process's own memory; VmRSS adds the file-backed pages it maps (the binary's code: 12.0 MiB of
    // it in a warm soak), which depend on which code has run and on the page cache, not on what the
    // process holds. In use is what the program holds (a leak raises it); free is what glibc keeps
    // in its heaps (RssAnon holds the resident part of it).
    let mut samples: Vec<Sample> = Vec::new();
    let (mut last_sample, mut last_print, mut last_churn) = (t0, t0, t0);
    let (mut last_cpu, mut last_cpu_t) = (cpu0, t0);
    let mut tick = t0;
    let mut stored = 0.0;
    while t0.elapsed() < Duration::from_secs(secs) {
        tick += Duration::from_millis(100);
        let w = node.write(rate / 10)?;
        written.fetch_add(w, Ordering::Relaxed);
        if last_churn.elapsed() >= churn {
            node.churn()?;
            last_churn = Instant::now();
        }
        if last_sample.elapsed() >= SAMPLE_EVERY {
            last_sample = Instant::now();
            let rss = status_kib(pid, "VmRSS")? as f64 / 1024.0;
            let anon = status_kib(pid, "RssAnon")? as f64 / 1024.0;
            let (heap, free) = match http_get(port, "/metrics", Duration::from_secs(10)) {
                Ok((200, m)) => {
                    let m = String::from_utf8_lossy(&m);
                    let mib = |name| metric_value(&m, name) / (1 << 20) as f64;
                    (
                        mib("monitoring_rs_malloc_in_use_bytes"),
                        mib("monitoring_rs_malloc_free_bytes"),
                    )
                }
                _ => (f64::NAN, f64::NAN),
            };
            samples.push(Sample {
                t: t0.elapsed().as_secs_f64(),
                rss,
                anon,
                heap,
                free,
            });
            if last_print.elapsed() >= print_every {
                last_print = Instant::now();
                let cpu = cpu_seconds(pid)?;
                let ms = (cpu - last_cpu) * 1000.0 / last_cpu_t.elapsed().as_secs_f64();
                (last_cpu, last_cpu_t) = (cpu, Instant::now());
                if let Ok((200, m)) = http_get(port, "/metrics", Duration::from_secs(10)) {
                    stored = metric_value(&String::from_utf8_lossy(&m), "monitoring_rs_tailer_lines_total");
                }
                println!(
                    "{:>6.1} {rss:>9.1} {anon:>9.1} {heap:>9.1} {free:>9.1} {ms:>10.1} {:>5} {:>12} {stored:>12}",
                    t0.elapsed().as_secs_f64() / 60.0,
                    open_fds(pid),
                    written.load(Ordering::Relaxed)
                );
            }
        }
        if let Some(s) = srv.exited() {
            return Err(format!("server exited during the soak ({s}){}", srv.tail()));
        }
        let now = Instant::now();
        if tick > now {
            std::thread::sleep(tick - now);
        } else {
            tick = now;
        }
    }
    let cpu = cpu_seconds(pid)? - cpu0;
    // Let the tailer catch up before counting what it stored.
    std::thread::sleep(Duration::from_secs(15));
    if let Ok((200, m)) = http_get(port, "/metrics", Duration::from_secs(10)) {
        stored = metric_value(&String::from_utf8_lossy(&m), "monitoring_rs_tailer_lines_total");
    }
    stop.store(true, Ordering::Relaxed);
    let _ = querier.join();
    for t in targets {
        let _ = t.join();
    }
    let mut tsv = String::from("seconds\trss_mib\tanon_mib\theap_mib\tfree_mib\n");
    for p in &samples {
        let _ = writeln!(
            tsv,
            "{:.0}\t{:.2}\t{:.2}\t{:.2}\t{:.2}",
            p.t, p.rss, p.anon, p.heap, p.free
        );
    }
    std::fs::write(work.join("samples.tsv"), tsv).map_err(|e| format!("write samples: {e}"))?;
    let warm = samples.partition_point(|p| p.t < warmup as f64);
    let rest = &samples[warm..];
    let minutes = |p: Option<&Sample>| p.map_or(0.0, |p| p.t / 60.0);
    let series = |f: fn(&Sample) -> f64| -> Vec<(f64, f64)> { rest.iter().map(|p| (p.t, f(p))).collect() };
    let (rss, anon) = (series(|p| p.rss), series(|p| p.anon));
    let (heap, free) = (series(|p| p.heap), series(|p| p.free));
    let all = [
        ("RSS", &rss),
        ("RssAnon", &anon),
        ("malloc in use", &heap),
        ("malloc free", &free),
    ];
    for (name, pts) in all {
        let at_warm = pts.first().map_or(f64::NAN, |p| p.1);
        let max = pts.iter().map(|p| p.1).fold(f64::NAN, f64::max);
        let last = pts.last().map_or(f64::NAN, |p| p.1);
        println!(
            "{name} after warm-up ({:.0} min) {at_warm:.1} MiB, max {max:.1} MiB, last {last:.1} MiB, slope {:+.2} MiB/h over the last {:.0} min",
            minutes(rest.first()),
            slope_per_hour(pts),
            minutes(rest.last()) - minutes(rest.first())
        );
    }
    // The floor: the lowest value of each 5-minute window after warm-up, and its slope.
    for (name, pts) in [("RssAnon", &anon), ("malloc in use", &heap)] {
        let floors = floors(pts);
        let shown: Vec<String> = floors.iter().map(|f| format!("{:.1}", f.1)).collect();
        println!(
            "{name} floor per 5 min after warm-up: {} MiB, slope {:+.2} MiB/h",
            shown.join(" "),
            slope_per_hour(&floors)
        );
    }
    println!(
        "CPU {:.1} ms/s on average; lines written {}, stored {stored}; queries failed {}",
        cpu * 1000.0 / secs as f64,
        written.load(Ordering::Relaxed),
        queries_failed.load(Ordering::Relaxed)
    );
    Ok(())
}
