//! Footprint of the node collector (issue 6): throughput tailing 200 files, per CPU-second, and the
//! idle cost of 200 quiet files plus 20 scrape targets.
//!
//! `cargo bench --bench tailer` prints:
//! 1. the tailer alone (the library's `Tailer` with a sink that drops batches) reading 200 CRI files:
//!    MB/s and lines/s per CPU-second of this process;
//! 2. the real binary with `--pod-logs` over the same tree, into its store (WAL, zstd blocks):
//!    MB/s and lines/s per CPU-second of the server process (utime+stime from /proc), and its RSS;
//!    the same server also scrapes 20 targets every 15 s (issue 6's idle setup);
//! 3. that server idle, once its files have been quiet for 75 s (past the log store's 1-minute
//!    `head_idle_period`): the 200 files quiet, the 20 targets scraped every 15 s (Prometheus's
//!    common interval; the targets are threads of this bench process, each serving ~300 series
//!    like a small exporter, so their CPU is not counted): CPU ms per second over 30 s (two scrape
//!    rounds, three 10 s rescans) and RSS, both of the server process only, from /proc;
//! 4. scrape cost: a second server scraping the same 20 targets every 100 ms (no pod logs): CPU µs
//!    per scraped sample, parse to store included.
//!
//! CPU-seconds, not wall time: the machine running this may be shared. `TAILER_BENCH_MB` sets the
//! total size (default 200 MiB); `TAILER_BENCH_BIN` runs another build of the server (for
//! before/after figures).

use monitoring_rs::collect::logs::{LogSink, PathLabels, SinkStream, Tailer, TailerOptions, TailerStats};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_monitoring-rs");
const FILES: usize = 200;

/// Scrape targets: 20 (issue 6), or `TAILER_BENCH_TARGETS` (0 gives the logs-only figure).
fn targets() -> usize {
    std::env::var("TAILER_BENCH_TARGETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn bin() -> String {
    std::env::var("TAILER_BENCH_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// ~300 series like a small exporter: 100 request counters, 10 histograms of 10 series, 50
/// labelled gauges and 50 plain ones, with HELP/TYPE; counters move between scrapes.
fn exposition(n: u64, target: usize) -> String {
    use std::fmt::Write as _;
    let mut b = String::with_capacity(32 * 1024);
    b.push_str("# HELP bench_requests_total Requests served.\n# TYPE bench_requests_total counter\n");
    for i in 0..100u64 {
        let _ = writeln!(
            b,
            "bench_requests_total{{code=\"200\",handler=\"/api/v1/items/{i}\",method=\"GET\"}} {}",
            n * (i + 1) + target as u64
        );
    }
    b.push_str(
        "# HELP bench_request_duration_seconds Request latency.\n# TYPE bench_request_duration_seconds histogram\n",
    );
    for h in 0..10u64 {
        for (k, le) in ["0.005", "0.01", "0.05", "0.1", "0.5", "1", "5", "+Inf"]
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                b,
                "bench_request_duration_seconds_bucket{{handler=\"h{h}\",le=\"{le}\"}} {}",
                n * (k as u64 + 1)
            );
        }
        let _ = writeln!(
            b,
            "bench_request_duration_seconds_sum{{handler=\"h{h}\"}} {}",
            n as f64 * 0.37
        );
        let _ = writeln!(b, "bench_request_duration_seconds_count{{handler=\"h{h}\"}} {}", n * 8);
    }
    b.push_str("# HELP bench_memory_bytes Memory by area.\n# TYPE bench_memory_bytes gauge\n");
    for i in 0..50u64 {
        let _ = writeln!(
            b,
            "bench_memory_bytes{{area=\"a{}\",id=\"{i}\"}} {}",
            i % 5,
            1_000_000 + i * 4096
        );
    }
    for i in 0..50u64 {
        let _ = writeln!(b, "# TYPE bench_gauge_{i} gauge\nbench_gauge_{i} {}", (n + i) % 17);
    }
    b
}

/// Starts the 20 targets (a thread each); returns their addresses and the count of scrapes served.
fn start_targets() -> (Vec<String>, Arc<std::sync::atomic::AtomicU64>) {
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut addrs = Vec::new();
    for t in 0..targets() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        addrs.push(l.local_addr().unwrap().to_string());
        let served = Arc::clone(&served);
        std::thread::spawn(move || {
            let mut n = 0u64;
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                let mut buf = [0u8; 4096];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match std::io::Read::read(&mut c, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => req.extend_from_slice(&buf[..k]),
                    }
                }
                n += 1;
                let body = exposition(n, t);
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    (addrs, served)
}

fn scrape_config(path: &Path, addrs: &[String], interval: &str) {
    let targets: Vec<String> = addrs.iter().map(|a| format!("'{a}'")).collect();
    std::fs::write(
        path,
        format!(
            "scrape_configs:\n  - job_name: bench\n    scrape_interval: {interval}\n    static_configs: [{{targets: [{}]}}]\n",
            targets.join(", ")
        ),
    )
    .unwrap();
}

struct Null;
impl LogSink for Null {
    fn push(&self, _streams: &[SinkStream<'_>]) -> Result<(), String> {
        Ok(())
    }
}

fn self_cpu() -> f64 {
    // SAFETY: getrusage(2) into a zeroed struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn proc_cpu(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf with a constant name.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// CPU time of the process's live threads in ns (schedstat: ns resolution, for the idle figure,
/// which clock ticks of 10 ms would round to 0 or 1 ms per second).
fn proc_cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            total += s.split(' ').next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total
}

fn proc_rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// 200 container files of CRI lines (~150-byte messages, both streams, every 50th line in two
/// partials). Returns (lines, message bytes).
fn write_tree(root: &Path, total: usize) -> (u64, u64) {
    let per_file = total / FILES;
    let t0: i64 = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 3000)
        * 1_000_000_000;
    let (mut lines, mut bytes) = (0u64, 0u64);
    for i in 0..FILES {
        let dir = root.join(format!("ns{}_pod-{i}_uid{i}/ctr", i % 10));
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("0.log")).unwrap());
        let mut written = 0;
        let mut k = 0u64;
        while written < per_file {
            k += 1;
            let ts = t0 + (k as i64) * 1000;
            let secs = ts / 1_000_000_000;
            let ns = ts % 1_000_000_000;
            let whole = monitoring_rs::model::text::format_rfc3339_ns(secs * 1_000_000_000);
            let t = format!("{}.{ns:09}Z", whole.trim_end_matches('Z'));
            let msg = format!(
                "level=info ts={secs} caller=handler.go:{k} msg=\"request served\" method=GET path=/api/v1/items/{k} status=200 bytes={} duration_ms={}",
                k * 7 % 9000,
                k % 97
            );
            let stream = if k.is_multiple_of(5) { "stderr" } else { "stdout" };
            let line = if k.is_multiple_of(50) {
                let (a, b) = msg.split_at(msg.len() / 2);
                format!("{t} {stream} P {a}\n{t} {stream} F {b}\n")
            } else {
                format!("{t} {stream} F {msg}\n")
            };
            f.write_all(line.as_bytes()).unwrap();
            written += line.len();
            lines += 1;
            bytes += msg.len() as u64;
        }
        f.flush().unwrap();
    }
    (lines, bytes)
}

fn metric(addr: SocketAddr, name: &str) -> f64 {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return -1.0;
    };
    let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut body);
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0)
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let mb: usize = std::env::var("TAILER_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let (lines, bytes) = write_tree(&root, mb << 20);
    let file_bytes: u64 = walk_size(&root);
    println!(
        "tree: {FILES} files, {:.1} MiB on disk, {lines} lines, {:.1} MiB of messages",
        file_bytes as f64 / 1048576.0,
        bytes as f64 / 1048576.0
    );

    // 1. The tailer alone.
    let mut opts = TailerOptions::new(&root, tmp.path().join("bench-positions"));
    opts.node_name = "bench".into();
    let stats = Arc::new(TailerStats::default());
    let mut t = Tailer::new(opts, Arc::new(Null), Arc::new(PathLabels), Arc::clone(&stats));
    let c0 = self_cpu();
    let w0 = Instant::now();
    t.step(Instant::now(), true).unwrap();
    let cpu = self_cpu() - c0;
    let got = stats.lines.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(got, lines, "the tailer read every line");
    println!(
        "tailer alone (null sink): {:.0} MB/s of file per CPU-second, {:.0} lines/s per CPU-second ({cpu:.2} CPU-s, {:.2} s wall)",
        file_bytes as f64 / 1e6 / cpu,
        lines as f64 / cpu,
        w0.elapsed().as_secs_f64()
    );
    // The safety-net rescan (every 10 s) over the same tree, now quiet: the tailer's idle cost. A
    // listing is trusted once it began 1 s after its directory last changed; quiet files are.
    std::thread::sleep(Duration::from_millis(1100));
    t.step(Instant::now(), true).unwrap();
    let c0 = self_cpu();
    for _ in 0..50 {
        t.step(Instant::now(), true).unwrap();
    }
    println!(
        "full rescan of the quiet tree ({FILES} files): {:.2} ms CPU each",
        (self_cpu() - c0) * 1000.0 / 50.0
    );
    drop(t);

    // 2. The real binary into its store, scraping 20 targets every 15 s as well.
    let (addrs, served) = start_targets();
    let samples_per_scrape = exposition(1, 0).lines().filter(|l| !l.starts_with('#')).count() as u64;
    let idle_cfg = tmp.path().join("idle.yaml");
    scrape_config(&idle_cfg, &addrs, "15s");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let data = tmp.path().join("data");
    let child = Command::new(bin())
        .arg("--config")
        .arg(&idle_cfg)
        .arg("--data-dir")
        .arg(&data)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--pod-logs")
        .arg(&root)
        .env("NODE_NAME", "bench")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _kill = Kill(child);
    let w0 = Instant::now();
    let mut peak_rss: f64 = 0.0;
    loop {
        peak_rss = peak_rss.max(proc_rss_mib(pid));
        if metric(addr, "monitoring_rs_tailer_lines_committed_total") >= lines as f64 {
            break;
        }
        assert!(w0.elapsed() < Duration::from_secs(600), "server did not catch up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let cpu = proc_cpu(pid);
    println!(
        "server into the store: {:.0} MB/s of file per CPU-second, {:.0} lines/s per CPU-second ({cpu:.2} CPU-s incl. start-up, {:.2} s wall, peak RSS {peak_rss:.1} MiB)",
        file_bytes as f64 / 1e6 / cpu,
        lines as f64 / cpu,
        w0.elapsed().as_secs_f64()
    );

    // 3. Idle: the same 200 files, quiet; the 20 targets scraped every 15 s. Steady state: the
    // first round (every series new to the store and the scrape caches) is over first.
    while served.load(std::sync::atomic::Ordering::Relaxed) < targets() as u64 {
        assert!(w0.elapsed() < Duration::from_secs(600), "targets not scraped");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Quiet files are quiet for a while: the store gives a quiet stream's head memory back after
    // `head_idle_period` (1m) at its next 10 s maintenance, and malloc_trim runs every 30 s.
    let burst_rss = proc_rss_mib(pid);
    std::thread::sleep(Duration::from_secs(75));
    println!(
        "after the burst: RSS {burst_rss:.1} MiB; 75 s later (quiet heads written as blocks: {}) {:.1} MiB",
        metric(addr, "monitoring_rs_logs_quiet_heads_flushed_total"),
        proc_rss_mib(pid)
    );
    let c0 = proc_cpu_ns(pid);
    let s0 = served.load(std::sync::atomic::Ordering::Relaxed);
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    let cpu = (proc_cpu_ns(pid) - c0) as f64 / 1e9;
    let scrapes = served.load(std::sync::atomic::Ordering::Relaxed) - s0;
    println!(
        "idle with {FILES} quiet files and {} targets of {samples_per_scrape} series every 15 s: {:.3} ms CPU per second (over {:.0} s, {scrapes} scrapes), RSS {:.1} MiB",
        targets(),
        cpu * 1000.0 / w0.elapsed().as_secs_f64(),
        w0.elapsed().as_secs_f64(),
        proc_rss_mib(pid)
    );
    drop(_kill);
    if targets() == 0 {
        return;
    }

    // 4. Scrape cost: the 20 targets every 100 ms, nothing else.
    let busy_cfg = tmp.path().join("busy.yaml");
    scrape_config(&busy_cfg, &addrs, "100ms");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(bin())
        .arg("--config")
        .arg(&busy_cfg)
        .arg("--data-dir")
        .arg(tmp.path().join("data-busy"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _kill = Kill(child);
    // Warm-up: every series in the store and the scrape caches.
    std::thread::sleep(Duration::from_secs(3));
    let c0 = proc_cpu_ns(pid);
    let s0 = served.load(std::sync::atomic::Ordering::Relaxed);
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let cpu = (proc_cpu_ns(pid) - c0) as f64 / 1e9;
    let scrapes = served.load(std::sync::atomic::Ordering::Relaxed) - s0;
    let samples = scrapes * samples_per_scrape;
    println!(
        "scraping {} targets every 100 ms: {:.2} µs CPU per scraped sample ({samples} samples in {scrapes} scrapes, {cpu:.2} CPU-s over {:.0} s), RSS {:.1} MiB",
        targets(),
        cpu * 1e6 / samples.max(1) as f64,
        w0.elapsed().as_secs_f64(),
        proc_rss_mib(pid)
    );
}

fn walk_size(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let m = e.metadata().unwrap();
        n += if m.is_dir() { walk_size(&e.path()) } else { m.len() };
    }
    n
}
