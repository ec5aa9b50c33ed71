//! PromQL query benchmark (issue 3): monitoring-rs against Prometheus 2.42 on the very same data set.
//!
//! Owns: generating (once, cached in `target/bench-data/`) the `rwload.py` data sets, running each system as a
//! child process in its own temp dir, one system at a time (the bench machine has 2 cores), and printing: a
//! dashboard-like query set as `query_range` (median of BENCH_RUNS runs, both systems, result series counts side by
//! side), the peak memory of one 3 h range query over every series on a freshly restarted process, and remote-write
//! ingestion rate while a thread loops over the query set against the rate when idle.
//! Must never touch: the project's library code (the server is only driven as a child process over HTTP on
//! loopback), any path outside its temp dirs and `target/bench-data/`, any non-loopback address.
//!
//! Run: `cargo bench --bench promql_vs_prometheus`. It is a benchmark, not a test: it always exits 0 and prints
//! PASS/FAIL per target instead. Without `--bench` on the command line (as under `cargo test --all-targets`) it
//! does nothing, unless `BENCH_FORCE=1`.
//!
//! Environment (defaults in brackets):
//! - `BENCH_SERIES` [20000], `BENCH_STEPS` [720], `BENCH_START_MS` [1795200000000]: the queried data set (15 s
//!   steps); `BENCH_INGEST_STEPS` [120]: each of the two follow-on data sets sent for the ingestion figures.
//! - `BENCH_CONNS` [2]: connections of the replay. `BENCH_RUNS` [3]: runs per query (the median is shown).
//! - `SHARED_DIR` [`<manifest>/../shared`]: where `bench/rwload.py` lives. `BENCH_KEEP=1`: keep the temp dirs.
//! - `BENCH_ONLY=prometheus` or `BENCH_ONLY=monitoring-rs`: run one side only.
//!
//! Needs `python3` with `cramjam` (installed with pip when missing) and, for the reference, `prometheus` on PATH
//! (Debian: `apt-get install prometheus`).

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

#[path = "support.rs"]
mod support;
use support::*;

/// The server under test: cargo builds the package's binary for bench targets and names it here.
const OURS_BIN: &str = env!("CARGO_BIN_EXE_monitoring-rs");

const GEN_TIMEOUT: Duration = Duration::from_secs(3600);
const SEND_TIMEOUT: Duration = Duration::from_secs(3600);
const QUERY_TIMEOUT: Duration = Duration::from_secs(300);
/// After a load, wait (at most IDLE_TIMEOUT) until the server uses under IDLE_CPU CPU-seconds per second.
const IDLE_TIMEOUT: Duration = Duration::from_secs(180);
const IDLE_CPU: f64 = 0.05;

/// Scrape interval of the rwload data sets.
const INTERVAL_S: u64 = 15;

/// The dashboard-like query set. Each runs over the last hour at a 15 s step and over the full 3 h at 60 s.
const QUERIES: &[&str] = &[
    "sum by (job) (rate(http_requests_total[5m]))",
    "sum by (code) (rate(http_requests_total[5m]))",
    "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
    "histogram_quantile(0.9, sum by (le, handler) (rate(http_request_duration_seconds_bucket[5m])))",
    "topk(5, rate(node_network_receive_bytes_total[5m]))",
    // No function around a selector that matches several names: Prometheus 2.42 drops `__name__` and then
    // answers 422 "vector cannot contain metrics with the same labelset".
    "sum by (__name__) ({__name__=~\"node_.*_bytes_total\"})",
    "count by (job) ({job=~\"n.*\"})",
    "max_over_time(rate(node_network_transmit_bytes_total[5m])[30m:1m])",
    "avg by (instance) (rate(node_cpu_seconds_total{mode!=\"mode0\"}[5m]))",
    "count by (job) (up)",
    "avg by (instance) (node_load1)",
    "1 - node_filesystem_avail_bytes / node_filesystem_size_bytes",
    "sum by (handler) (rate(http_request_duration_seconds_count[5m]))",
    "sum by (instance) (increase(http_requests_total{code=~\"code[01]\"}[10m]))",
];

/// The memory probe: a 3 h range query that touches every series.
const MEMORY_QUERY: &str = "sum by (job) ({__name__=~\".+\"})";
const MEMORY_STEP_S: u64 = 60;

fn main() {
    let by_cargo_bench = std::env::args().any(|a| a == "--bench");
    if !by_cargo_bench && std::env::var("BENCH_FORCE").as_deref() != Ok("1") {
        println!(
            "promql_vs_prometheus: skipped (run it with `cargo bench --bench promql_vs_prometheus`, or set BENCH_FORCE=1)"
        );
        return;
    }
    if let Err(e) = run() {
        println!("promql_vs_prometheus: error: {e}");
    }
}

struct Params {
    series: u64,
    steps: u64,
    start_ms: u64,
    ingest_steps: u64,
    conns: u64,
    runs: usize,
    shared: PathBuf,
    keep: bool,
    only: Option<System>,
}

impl Params {
    fn from_env() -> Res<Params> {
        let only = System::only_from_env()?;
        let shared = match std::env::var_os("SHARED_DIR") {
            Some(d) => PathBuf::from(d),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
        };
        Ok(Params {
            series: env_u64("BENCH_SERIES", 20_000)?,
            steps: env_u64("BENCH_STEPS", 720)?,
            start_ms: env_u64("BENCH_START_MS", 1_795_200_000_000)?,
            ingest_steps: env_u64("BENCH_INGEST_STEPS", 120)?,
            conns: env_u64("BENCH_CONNS", 2)?,
            runs: usize::try_from(env_u64("BENCH_RUNS", 3)?.max(1)).map_err(|e| format!("BENCH_RUNS: {e}"))?,
            shared,
            keep: std::env::var("BENCH_KEEP").as_deref() == Ok("1"),
            only,
        })
    }

    fn rwload(&self) -> PathBuf {
        self.shared.join("bench/rwload.py")
    }
}

impl System {
    /// Writes the system's config file into `root` (outside its data dir, so the data dir holds data only).
    /// Both keep their default 2 h blocks.
    fn write_config(self, root: &Path) -> Res<PathBuf> {
        let (file, text) = match self {
            System::Prometheus => ("prometheus.yml", "global: {}\n"),
            System::Ours => ("monitoring-rs.yml", "storage:\n  metrics:\n    retention_time: 3650d\n"),
        };
        let path = root.join(file);
        fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(path)
    }

    fn command(self, bin: &Path, config: &Path, data: &Path, port: u16) -> Command {
        let mut cmd = Command::new(bin);
        match self {
            System::Prometheus => {
                cmd.arg(format!("--config.file={}", config.display()))
                    .arg("--web.enable-remote-write-receiver")
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    .arg(format!("--storage.tsdb.path={}", data.display()))
                    .arg("--storage.tsdb.retention.time=3650d");
            }
            System::Ours => {
                cmd.arg("--config")
                    .arg(config)
                    .arg("--data-dir")
                    .arg(data)
                    .arg("--listen")
                    .arg(format!("127.0.0.1:{port}"));
            }
        }
        cmd
    }
}

/// One query_range call of the set: the query, a label for its range, and its parameters in seconds.
#[derive(Clone)]
struct Combo {
    query: &'static str,
    range: &'static str,
    start: u64,
    end: u64,
    step: u64,
}

impl Combo {
    fn target(&self) -> Res<String> {
        let qs = serde_urlencoded::to_string([
            ("query", self.query.to_string()),
            ("start", self.start.to_string()),
            ("end", self.end.to_string()),
            ("step", self.step.to_string()),
        ])
        .map_err(|e| format!("encoding a query: {e}"))?;
        Ok(format!("/api/v1/query_range?{qs}"))
    }
}

fn combos(p: &Params, start_ms: u64) -> Vec<Combo> {
    let first = start_ms.div_ceil(1000);
    // The last scrape is at start + (steps - 1) * 15 s (± 3 ms of jitter): end on it.
    let end = (start_ms + (p.steps.saturating_sub(1)) * INTERVAL_S * 1000) / 1000;
    let hour_ago = end.saturating_sub(3600).max(first);
    let mut out = Vec::new();
    for q in QUERIES {
        out.push(Combo {
            query: q,
            range: "1h@15s",
            start: hour_ago,
            end,
            step: 15,
        });
        out.push(Combo {
            query: q,
            range: "3h@60s",
            start: first,
            end,
            step: 60,
        });
    }
    out
}

/// What one system measured; `None` where the run failed before getting there.
#[derive(Default)]
struct SysResult {
    ran: bool,
    /// Per combo: median seconds and the result series count, or the error.
    queries: Vec<Res<(f64, usize)>>,
    load_samples_per_s: Option<f64>,
    mem_query_s: Option<f64>,
    mem_rss_before_mib: Option<f64>,
    mem_hwm_before_mib: Option<f64>,
    mem_hwm_after_mib: Option<f64>,
    ingest_idle: Option<f64>,
    ingest_busy: Option<f64>,
    queries_during_ingest: Option<u64>,
}

struct DataSet {
    path: PathBuf,
    samples: u64,
    start_ms: u64,
}

fn run() -> Res<()> {
    let p = Params::from_env()?;
    println!(
        "promql_vs_prometheus bench: series={} steps={} start_ms={} ingest_steps={} conns={} runs={}",
        p.series, p.steps, p.start_ms, p.ingest_steps, p.conns, p.runs
    );
    if !p.rwload().is_file() {
        return Err(format!("{} not found (set SHARED_DIR)", p.rwload().display()));
    }
    let tools = tempfile::Builder::new()
        .prefix("qbench-tools-")
        .tempdir()
        .map_err(|e| format!("creating a temp dir: {e}"))?;
    ensure_cramjam(tools.path())?;
    let main_set = prepare_data(&p, p.steps, p.start_ms, tools.path())?;
    let idle_start = main_set.start_ms + p.steps * INTERVAL_S * 1000;
    let idle_set = prepare_data(&p, p.ingest_steps, idle_start, tools.path())?;
    let busy_set = prepare_data(
        &p,
        p.ingest_steps,
        idle_start + p.ingest_steps * INTERVAL_S * 1000,
        tools.path(),
    )?;
    let sets = [&main_set, &idle_set, &busy_set];
    for d in sets {
        println!(
            "data set: {} ({} samples from {} ms)",
            d.path.display(),
            d.samples,
            d.start_ms
        );
    }
    let combos = combos(&p, main_set.start_ms);

    let targets = bench_targets(p.only, tools.path(), OURS_BIN);

    let mut prom = SysResult::default();
    let mut ours = SysResult::default();
    for (system, bin) in &targets {
        let r = if *system == System::Prometheus {
            &mut prom
        } else {
            &mut ours
        };
        r.ran = true;
        println!("\n== {} ({})", system.name(), bin.display());
        let root = tempfile::Builder::new()
            .prefix(&format!("qbench-{}-", system.name()))
            .tempdir()
            .map_err(|e| format!("creating a temp dir: {e}"))?;
        // The servers are owned by `bench_in` and so are stopped before the temp dir is removed.
        if let Err(e) = bench_in(*system, bin, &p, sets, &combos, root.path(), r) {
            println!("[{}] ERROR: {e}", system.name());
        }
        if p.keep {
            println!("[{}] kept {}", system.name(), root.keep().display());
        }
    }
    print_report(&combos, &prom, &ours);
    Ok(())
}

fn prepare_data(p: &Params, steps: u64, start_ms: u64, tools: &Path) -> Res<DataSet> {
    let dir = target_dir().join("bench-data");
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    // The same name as the remote_write bench's cache, so both share the 20,000 × 720 set.
    let name = format!("rw-{}-{}-{}.bin", p.series, steps, start_ms);
    let path = dir.join(&name);
    if !path.is_file() {
        println!(
            "data set: generating {} (one-off; minutes at the default size)",
            path.display()
        );
        // Written under another name and renamed, so an interrupted run never leaves a truncated cache entry.
        let partial = dir.join(format!("{name}.partial-{}", std::process::id()));
        let mut cmd = Command::new("python3");
        cmd.arg(p.rwload())
            .arg("gen")
            .args(["--series", &p.series.to_string(), "--steps", &steps.to_string()])
            .args(["--start-ms", &start_ms.to_string(), "--out"])
            .arg(&partial);
        let t0 = Instant::now();
        if let Err(e) = run_to_end(cmd, "rwload gen", tools, GEN_TIMEOUT) {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
        fs::rename(&partial, &path).map_err(|e| format!("renaming {}: {e}", partial.display()))?;
        println!("data set: generated in {:.1} s", t0.elapsed().as_secs_f64());
    }
    let header = read_header(&path)?;
    let field = |k: &str| {
        header
            .get(k)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no {k}= in the header of {}", path.display()))
    };
    Ok(DataSet {
        samples: field("samples")?,
        start_ms: field("start_ms")?,
        path,
    })
}

/// The file header: u32 LE length, then `rwload series=.. steps=.. start_ms=.. samples=..\n`.
fn read_header(path: &Path) -> Res<HashMap<String, String>> {
    let mut f = fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mut len = [0u8; 4];
    f.read_exact(&mut len)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut header = vec![0u8; u32::from_le_bytes(len).min(4096) as usize];
    f.read_exact(&mut header)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(parse_kv(&String::from_utf8_lossy(&header)))
}

/// Replays a data set; samples/s as rwload reports it.
fn send(p: &Params, data: &DataSet, port: u16, dir: &Path, name: &str) -> Res<f64> {
    let mut cmd = Command::new("python3");
    cmd.arg(p.rwload())
        .arg("send")
        .arg("--file")
        .arg(&data.path)
        .args(["--url", &format!("http://127.0.0.1:{port}/api/v1/write")])
        .args(["--conns", &p.conns.to_string()]);
    let out = run_to_end(cmd, "rwload send", dir, SEND_TIMEOUT)?;
    for line in out.lines() {
        println!("[{name}] send: {line}");
    }
    let kv = parse_kv(&out);
    if kv.get("failed").is_some_and(|f| f != "0") {
        println!("[{name}] WARNING: requests failed; samples/s counts samples sent, not samples accepted");
    }
    kv.get("samples_per_s")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no samples_per_s in rwload's output: {out:.300}"))
}

/// Waits until the server is idle (bounded): compaction or WAL work after a load must not land in a timing.
fn wait_idle(srv: &mut Proc, name: &str) -> Res<()> {
    let t0 = Instant::now();
    let mut last = cpu_seconds(srv.pid())?;
    loop {
        sleep(Duration::from_secs(1));
        if let Some(s) = srv.exited() {
            return Err(format!("{} exited ({s}){}", srv.label, srv.tail()));
        }
        let now = cpu_seconds(srv.pid())?;
        if now - last < IDLE_CPU {
            println!("[{name}] idle after {:.1} s", t0.elapsed().as_secs_f64());
            return Ok(());
        }
        last = now;
        if t0.elapsed() >= IDLE_TIMEOUT {
            println!("[{name}] still busy after {} s; going on", IDLE_TIMEOUT.as_secs());
            return Ok(());
        }
    }
}

/// One query_range: wall seconds and the number of result series; an error unless HTTP 200 and `success`.
fn query(port: u16, c: &Combo) -> Res<(f64, usize)> {
    let target = c.target()?;
    let t0 = Instant::now();
    let (status, body) = http_get(port, &target, QUERY_TIMEOUT)?;
    let secs = t0.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&body);
    if status != 200 {
        return Err(format!("HTTP {status}: {}", text.chars().take(200).collect::<String>()));
    }
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("bad JSON ({e}): {text:.200}"))?;
    let n = v
        .pointer("/data/result")
        .and_then(|r| r.as_array())
        .map(|a| a.len())
        .ok_or_else(|| format!("no data.result array: {text:.200}"))?;
    Ok((secs, n))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn status_kib(pid: u32, key: &str) -> Res<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no {key} in {path}"))
}

fn mib(pid: u32, key: &str) -> Res<f64> {
    Ok(status_kib(pid, key)? as f64 / 1024.0)
}

fn bench_in(
    system: System,
    bin: &Path,
    p: &Params,
    [main_set, idle_set, busy_set]: [&DataSet; 3],
    combos: &[Combo],
    root: &Path,
    r: &mut SysResult,
) -> Res<()> {
    let name = system.name();
    let data_dir = root.join("data");
    fs::create_dir(&data_dir).map_err(|e| format!("creating {}: {e}", data_dir.display()))?;
    let config = system.write_config(root)?;
    let start = |n: u32| -> Res<(Proc, u16)> {
        let port = free_port()?;
        let cmd = system.command(bin, &config, &data_dir, port);
        let log = root.join(format!("{name}-{n}.log"));
        Ok((Proc::spawn(cmd, format!("{name} (start {n})"), None, &log)?, port))
    };

    // 1. Load the queried data set, then the query set.
    let (mut srv, port) = start(1)?;
    let ready = wait_ready(&mut srv, port)?;
    println!(
        "[{name}] ready on 127.0.0.1:{port} after {:.2} s (pid {})",
        ready.as_secs_f64(),
        srv.pid()
    );
    r.load_samples_per_s = Some(send(p, main_set, port, root, name)?);
    wait_idle(&mut srv, name)?;
    let t0 = Instant::now();
    for c in combos {
        let mut times = Vec::new();
        let mut res = Ok((0.0, 0));
        for _ in 0..p.runs {
            match query(port, c) {
                Ok((s, n)) => {
                    times.push(s);
                    res = Ok((s, n));
                }
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
        }
        let res = res.map(|(_, n)| (median(times), n));
        match &res {
            Ok((s, n)) => println!("[{name}] {:.4} s  {n:>5} series  [{}] {}", s, c.range, c.query),
            Err(e) => println!("[{name}] FAILED [{}] {}: {e}", c.range, c.query),
        }
        r.queries.push(res);
    }
    println!("[{name}] query set done in {:.1} s", t0.elapsed().as_secs_f64());

    // 2. Ingestion idle, then while a thread loops over the query set.
    wait_idle(&mut srv, name)?;
    r.ingest_idle = Some(send(p, idle_set, port, root, name)?);
    wait_idle(&mut srv, name)?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let looper = {
        let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
        let combos = combos.to_vec();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for c in &combos {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let _ = query(port, c);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let busy = send(p, busy_set, port, root, name);
    stop.store(true, Ordering::Relaxed);
    // Bounded: each query in the loop is bounded by QUERY_TIMEOUT.
    let _ = looper.join();
    r.ingest_busy = Some(busy?);
    r.queries_during_ingest = Some(done.load(Ordering::Relaxed));

    // 3. Peak memory of one big query on a fresh process.
    wait_idle(&mut srv, name)?;
    let status = srv.terminate()?;
    println!("[{name}] stopped by SIGTERM: {status}");
    let (mut srv, port) = start(2)?;
    let ready = wait_ready(&mut srv, port)?;
    println!("[{name}] restarted: ready after {:.2} s", ready.as_secs_f64());
    wait_idle(&mut srv, name)?;
    let pid = srv.pid();
    r.mem_rss_before_mib = Some(mib(pid, "VmRSS:")?);
    r.mem_hwm_before_mib = Some(mib(pid, "VmHWM:")?);
    let mem = Combo {
        query: MEMORY_QUERY,
        range: "3h",
        start: combos.last().map_or(0, |c| c.start),
        end: combos.last().map_or(0, |c| c.end),
        step: MEMORY_STEP_S,
    };
    match query(port, &mem) {
        Ok((s, n)) => {
            r.mem_query_s = Some(s);
            println!("[{name}] memory query: {s:.3} s, {n} series");
        }
        Err(e) => println!("[{name}] memory query FAILED: {e}"),
    }
    r.mem_hwm_after_mib = Some(mib(pid, "VmHWM:")?);
    srv.terminate()?;
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

/// A report row: label, how to read it off a result, decimals.
type Figure = (&'static str, fn(&SysResult) -> Option<f64>, usize);

fn print_report(combos: &[Combo], prom: &SysResult, ours: &SysResult) {
    let fmt = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |v| format!("{v:.d$}"));
    println!("\n1. Query set (query_range, median of the runs; series = result series, prometheus / ours)");
    println!(
        "{:<96} | {:>6} | {:>10} | {:>10} | {:>7} | series",
        "query", "range", "prom s", "ours s", "ratio"
    );
    println!("{}", "-".repeat(96 + 6 + 10 + 10 + 7 + 10 + 5 * 3));
    let (mut tp, mut to, mut all_ok, mut same) = (0.0, 0.0, true, 0);
    for (i, c) in combos.iter().enumerate() {
        let pr = prom.queries.get(i).and_then(|r| r.as_ref().ok());
        let or = ours.queries.get(i).and_then(|r| r.as_ref().ok());
        let ratio = match (pr, or) {
            (Some((p, _)), Some((o, _))) if *p > 0.0 => Some(o / p),
            _ => None,
        };
        if let (Some((p, pn)), Some((o, on))) = (pr, or) {
            tp += p;
            to += o;
            all_ok &= *pn > 0 && *on > 0;
            same += usize::from(pn == on);
        } else {
            all_ok = false;
        }
        let series = match (pr, or) {
            (Some((_, pn)), Some((_, on))) if pn == on => format!("{pn} ="),
            _ => format!(
                "{} / {}",
                pr.map_or("-".to_string(), |r| r.1.to_string()),
                or.map_or("-".to_string(), |r| r.1.to_string())
            ),
        };
        println!(
            "{:<96} | {:>6} | {:>10} | {:>10} | {:>7} | {series}",
            c.query,
            c.range,
            fmt(pr.map(|r| r.0), 4),
            fmt(or.map(|r| r.0), 4),
            fmt(ratio, 3)
        );
    }
    let both = prom.ran && ours.ran;
    println!(
        "{:<96} | {:>6} | {:>10.3} | {:>10.3} | {:>7} |",
        "TOTAL",
        "",
        tp,
        to,
        if tp > 0.0 {
            format!("{:.3}", to / tp)
        } else {
            "-".into()
        }
    );
    if both {
        println!(
            "query total ours/prometheus {:.3} (target <= 0.5): {}",
            if tp > 0.0 { to / tp } else { f64::NAN },
            verdict(all_ok && tp > 0.0 && to <= 0.5 * tp)
        );
        println!(
            "all answered 200 with non-empty results on both: {}; equal series counts: {same}/{}",
            verdict(all_ok),
            combos.len()
        );
    }

    println!("\n2. Peak memory of `{MEMORY_QUERY}` over 3 h at {MEMORY_STEP_S} s, on a freshly restarted process");
    println!("{:<34} | {:>12} | {:>13}", "figure", "prometheus", "monitoring-rs");
    let rows: [Figure; 5] = [
        ("query s", |r| r.mem_query_s, 3),
        ("VmRSS before MiB", |r| r.mem_rss_before_mib, 1),
        ("VmHWM before MiB", |r| r.mem_hwm_before_mib, 1),
        ("VmHWM after MiB", |r| r.mem_hwm_after_mib, 1),
        (
            "growth MiB (HWM after - RSS before)",
            |r| Some(r.mem_hwm_after_mib? - r.mem_rss_before_mib?),
            1,
        ),
    ];
    for (label, f, d) in rows {
        println!("{label:<34} | {:>12} | {:>13}", fmt(f(prom), d), fmt(f(ours), d));
    }
    if both {
        let ok = matches!((ours.mem_hwm_after_mib, prom.mem_hwm_after_mib), (Some(o), Some(p)) if o <= p);
        println!("peak memory ours <= prometheus (VmHWM after): {}", verdict(ok));
    }

    println!("\n3. Remote-write ingestion (samples/s as rwload send reports it)");
    println!("{:<34} | {:>12} | {:>13}", "figure", "prometheus", "monitoring-rs");
    let rows: [Figure; 5] = [
        ("load of the queried set", |r| r.load_samples_per_s, 0),
        ("idle", |r| r.ingest_idle, 0),
        ("while looping over queries", |r| r.ingest_busy, 0),
        ("ratio busy/idle", |r| Some(r.ingest_busy? / r.ingest_idle?), 3),
        (
            "queries done during the send",
            |r| r.queries_during_ingest.map(|n| n as f64),
            0,
        ),
    ];
    for (label, f, d) in rows {
        println!("{label:<34} | {:>12} | {:>13}", fmt(f(prom), d), fmt(f(ours), d));
    }
    for (name, r) in [("prometheus", prom), ("monitoring-rs", ours)] {
        if r.ran {
            let ratio = r.ingest_busy.zip(r.ingest_idle).map(|(b, i)| b / i);
            println!(
                "{name} ingestion busy/idle {} (target >= 0.8): {}",
                fmt(ratio, 3),
                verdict(ratio.is_some_and(|x| x >= 0.8))
            );
        }
    }
    println!("(ratio = monitoring-rs / prometheus unless stated; timings are wall clock on a shared machine)");
}
