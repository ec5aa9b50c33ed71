//! Remote-write benchmark: monitoring-rs against Prometheus 2.42 on the very same load.
//!
//! Owns: generating (once, cached in `target/bench-data/`) the `rwload.py` data set, running each receiver as a
//! child process in its own temp dir, one system at a time (the bench machine has 2 cores), and printing one table:
//! receiver CPU per million samples, peak RSS, bytes per sample in cut blocks, clean and `kill -9` restart times.
//! Must never touch: the project's library code (the crate is a binary: the server is only driven as a child process
//! over HTTP on loopback), any path outside its temp dirs and `target/bench-data/`, any non-loopback address.
//!
//! Run: `cargo bench --bench remote_write`. It is a benchmark, not a test: it always exits 0 and prints PASS/FAIL
//! per row instead. Without `--bench` on the command line (as under `cargo test --all-targets`) it does nothing,
//! unless `BENCH_FORCE=1`.
//!
//! Environment (defaults in brackets):
//! - `BENCH_SERIES` [20000], `BENCH_STEPS` [720], `BENCH_START_MS` [1795200000000]: the data set (15 s steps).
//! - `BENCH_CONNS` [2]: connections of the replay. `BENCH_BLOCK` [30m]: block duration given to both systems, short
//!   enough that blocks get cut within the 3 h data set.
//! - `SHARED_DIR` [`<manifest>/../shared`]: where `bench/rwload.py` lives. `BENCH_KEEP=1`: keep the temp dirs.
//! - `BENCH_ONLY=prometheus` or `BENCH_ONLY=monitoring-rs`: run one side only.
//!
//! Needs `python3` with `cramjam` (installed with pip when missing) and, for the reference, `prometheus` on PATH
//! (Debian: `apt-get install prometheus`).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

#[path = "support.rs"]
mod support;
use support::*;

/// The server under test: cargo builds the package's binary for bench targets and names it here.
const OURS_BIN: &str = env!("CARGO_BIN_EXE_monitoring-rs");

const BLOCKS_TIMEOUT: Duration = Duration::from_secs(120);
const BLOCKS_STABLE: Duration = Duration::from_secs(5);
const BLOCKS_POLL: Duration = Duration::from_millis(500);
const GEN_TIMEOUT: Duration = Duration::from_secs(3600);
const SEND_TIMEOUT: Duration = Duration::from_secs(3600);
const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    let by_cargo_bench = std::env::args().any(|a| a == "--bench");
    if !by_cargo_bench && std::env::var("BENCH_FORCE").as_deref() != Ok("1") {
        println!("remote_write: skipped (run it with `cargo bench --bench remote_write`, or set BENCH_FORCE=1)");
        return;
    }
    if let Err(e) = run() {
        println!("remote_write: error: {e}");
    }
}

struct Params {
    series: u64,
    steps: u64,
    start_ms: u64,
    conns: u64,
    block: String,
    shared: PathBuf,
    keep: bool,
    only: Option<System>,
}

impl Params {
    fn from_env() -> Res<Params> {
        let only = System::only_from_env()?;
        let block = std::env::var("BENCH_BLOCK").unwrap_or_else(|_| "30m".to_string());
        if block.is_empty() || !block.chars().all(|c| c.is_ascii_digit() || "smhdwy".contains(c)) {
            return Err(format!("BENCH_BLOCK={block}: expected a duration such as 30m or 2h"));
        }
        let shared = match std::env::var_os("SHARED_DIR") {
            Some(d) => PathBuf::from(d),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
        };
        Ok(Params {
            series: env_u64("BENCH_SERIES", 20_000)?,
            steps: env_u64("BENCH_STEPS", 720)?,
            start_ms: env_u64("BENCH_START_MS", 1_795_200_000_000)?,
            conns: env_u64("BENCH_CONNS", 2)?,
            block,
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
    fn write_config(self, root: &Path, p: &Params) -> Res<PathBuf> {
        let (file, text) = match self {
            System::Prometheus => ("prometheus.yml", "global: {}\n".to_string()),
            System::Ours => (
                "monitoring-rs.yml",
                format!(
                    "storage:\n  metrics:\n    block_duration: {}\n    retention_time: 3650d\n",
                    p.block
                ),
            ),
        };
        let path = root.join(file);
        fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(path)
    }

    fn command(self, bin: &Path, config: &Path, data: &Path, port: u16, p: &Params) -> Command {
        let mut cmd = Command::new(bin);
        match self {
            System::Prometheus => {
                cmd.arg(format!("--config.file={}", config.display()))
                    .arg("--web.enable-remote-write-receiver")
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    .arg(format!("--storage.tsdb.path={}", data.display()))
                    .arg("--storage.tsdb.retention.time=3650d")
                    // Hidden flags: cut blocks of BENCH_BLOCK instead of 2 h, so the 3 h data set yields blocks.
                    .arg(format!("--storage.tsdb.min-block-duration={}", p.block))
                    .arg(format!("--storage.tsdb.max-block-duration={}", p.block));
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

/// What one system measured; `None` where the run failed before getting there.
#[derive(Default)]
struct SysResult {
    ran: bool,
    send_samples_per_s: Option<f64>,
    send_failed: Option<f64>,
    cpu_per_m: Option<f64>,
    cpu_per_m_with_compaction: Option<f64>,
    rss_mib: Option<f64>,
    bytes_per_sample: Option<f64>,
    blocks: Option<f64>,
    block_samples: Option<f64>,
    data_mib: Option<f64>,
    cold_start_s: Option<f64>,
    clean_restart_s: Option<f64>,
    kill_restart_s: Option<f64>,
    up_after_clean: Option<f64>,
    up_after_kill: Option<f64>,
}

fn run() -> Res<()> {
    let p = Params::from_env()?;
    println!(
        "remote_write bench: series={} steps={} start_ms={} conns={} block={}",
        p.series, p.steps, p.start_ms, p.conns, p.block
    );
    if !p.rwload().is_file() {
        return Err(format!("{} not found (set SHARED_DIR)", p.rwload().display()));
    }
    let tools = tempfile::Builder::new()
        .prefix("rw-bench-tools-")
        .tempdir()
        .map_err(|e| format!("creating a temp dir: {e}"))?;
    ensure_cramjam(tools.path())?;
    let data = prepare_data(&p, tools.path())?;
    println!("data set: {} ({} samples)", data.path.display(), data.samples);

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
        if let Err(e) = bench_system(*system, bin, &p, &data, r) {
            println!("[{}] ERROR: {e}", system.name());
        }
    }
    print_table(&prom, &ours);
    Ok(())
}

struct DataSet {
    path: PathBuf,
    samples: u64,
}

fn prepare_data(p: &Params, tools: &Path) -> Res<DataSet> {
    let dir = target_dir().join("bench-data");
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(format!("rw-{}-{}-{}.bin", p.series, p.steps, p.start_ms));
    if path.is_file() {
        println!("data set: cached");
    } else {
        println!(
            "data set: generating {} (one-off; minutes at the default size)",
            path.display()
        );
        // Written under another name and renamed, so an interrupted run never leaves a truncated cache entry.
        let partial = dir.join(format!(
            "rw-{}-{}-{}.bin.partial-{}",
            p.series,
            p.steps,
            p.start_ms,
            std::process::id()
        ));
        let mut cmd = Command::new("python3");
        cmd.arg(p.rwload())
            .arg("gen")
            .args(["--series", &p.series.to_string(), "--steps", &p.steps.to_string()])
            .args(["--start-ms", &p.start_ms.to_string(), "--out"])
            .arg(&partial);
        let t0 = Instant::now();
        let out = run_to_end(cmd, "rwload gen", tools, GEN_TIMEOUT);
        if let Err(e) = out {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
        fs::rename(&partial, &path).map_err(|e| format!("renaming {}: {e}", partial.display()))?;
        println!("data set: generated in {:.1} s", t0.elapsed().as_secs_f64());
    }
    Ok(DataSet {
        samples: header_samples(&path)?,
        path,
    })
}

/// `samples=` from the file header: u32 LE length, then `rwload series=.. samples=..\n`.
fn header_samples(path: &Path) -> Res<u64> {
    let mut f = fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mut len = [0u8; 4];
    f.read_exact(&mut len)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut header = vec![0u8; u32::from_le_bytes(len).min(4096) as usize];
    f.read_exact(&mut header)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    let header = String::from_utf8_lossy(&header);
    parse_kv(&header)
        .get("samples")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no samples= in the header of {}: {header:?}", path.display()))
}

fn bench_system(system: System, bin: &Path, p: &Params, data: &DataSet, r: &mut SysResult) -> Res<()> {
    let root = tempfile::Builder::new()
        .prefix(&format!("rw-bench-{}-", system.name()))
        .tempdir()
        .map_err(|e| format!("creating a temp dir: {e}"))?;
    // The servers are owned by `bench_in` and so are stopped before the temp dir is removed.
    let res = bench_in(system, bin, p, data, root.path(), r);
    if p.keep {
        println!("[{}] kept {}", system.name(), root.keep().display());
    }
    res
}

fn bench_in(system: System, bin: &Path, p: &Params, data: &DataSet, root: &Path, r: &mut SysResult) -> Res<()> {
    let name = system.name();
    let data_dir = root.join("data");
    fs::create_dir(&data_dir).map_err(|e| format!("creating {}: {e}", data_dir.display()))?;
    let config = system.write_config(root, p)?;
    let start = |n: u32| -> Res<(Proc, u16)> {
        let port = free_port()?;
        let cmd = system.command(bin, &config, &data_dir, port, p);
        let log = root.join(format!("{name}-{n}.log"));
        Ok((Proc::spawn(cmd, format!("{name} (start {n})"), None, &log)?, port))
    };

    // 1. Ingest.
    let (mut srv, port) = start(1)?;
    let cold = wait_ready(&mut srv, port)?;
    r.cold_start_s = Some(cold.as_secs_f64());
    println!(
        "[{name}] ready on 127.0.0.1:{port} after {:.2} s (pid {})",
        cold.as_secs_f64(),
        srv.pid()
    );
    let cpu0 = cpu_seconds(srv.pid())?;
    let mut send = Command::new("python3");
    send.arg(p.rwload())
        .arg("send")
        .arg("--file")
        .arg(&data.path)
        .args(["--url", &format!("http://127.0.0.1:{port}/api/v1/write")])
        .args(["--conns", &p.conns.to_string()]);
    let out = run_to_end(send, "rwload send", root, SEND_TIMEOUT)?;
    let cpu1 = cpu_seconds(srv.pid())?;
    for line in out.lines() {
        println!("[{name}] send: {line}");
    }
    let kv = parse_kv(&out);
    let get = |k: &str| kv.get(k).and_then(|v| v.parse::<f64>().ok());
    let samples = get("samples").unwrap_or(data.samples as f64);
    r.send_samples_per_s = get("samples_per_s");
    r.send_failed = get("failed");
    if r.send_failed.is_some_and(|n| n > 0.0) {
        println!("[{name}] WARNING: requests failed; the figures below count samples sent, not samples accepted");
    }
    r.cpu_per_m = Some((cpu1 - cpu0) / (samples / 1e6));

    // 2. Blocks, memory, disk.
    let t0 = Instant::now();
    let scan = wait_blocks(&mut srv, &data_dir)?;
    let cpu2 = cpu_seconds(srv.pid())?;
    r.cpu_per_m_with_compaction = Some((cpu2 - cpu0) / (samples / 1e6));
    r.blocks = Some(scan.blocks as f64);
    r.block_samples = Some(scan.samples as f64);
    if scan.samples > 0 {
        r.bytes_per_sample = Some(scan.bytes as f64 / scan.samples as f64);
    }
    r.rss_mib = Some(vm_hwm_kib(srv.pid())? as f64 / 1024.0);
    r.data_mib = Some(dir_size(&data_dir) as f64 / MIB);
    println!(
        "[{name}] {} blocks after {:.1} s: {} samples, {} bytes{}; data dir {:.1} MiB; VmHWM {:.1} MiB",
        scan.blocks,
        t0.elapsed().as_secs_f64(),
        scan.samples,
        scan.bytes,
        if scan.bad_meta > 0 {
            format!(" ({} unreadable meta.json)", scan.bad_meta)
        } else {
            String::new()
        },
        r.data_mib.unwrap_or(0.0),
        r.rss_mib.unwrap_or(0.0),
    );
    if !scan.stable {
        println!(
            "[{name}] block count still changing (or zero) after {} s",
            BLOCKS_TIMEOUT.as_secs()
        );
    }

    // 3. Clean restart.
    let status = srv.terminate()?;
    println!("[{name}] stopped by SIGTERM: {status}");
    let (mut srv, port) = start(2)?;
    let clean = wait_ready(&mut srv, port)?;
    r.clean_restart_s = Some(clean.as_secs_f64());
    println!("[{name}] clean restart: ready after {:.3} s", clean.as_secs_f64());
    r.up_after_clean = check_series(name, port, "clean restart");

    // 4. Crash restart.
    srv.kill9()?;
    let (mut srv, port) = start(3)?;
    let crash = wait_ready(&mut srv, port)?;
    r.kill_restart_s = Some(crash.as_secs_f64());
    println!("[{name}] kill -9 restart: ready after {:.3} s", crash.as_secs_f64());
    r.up_after_kill = check_series(name, port, "kill -9 restart");
    srv.terminate()?;
    Ok(())
}

/// Number of `up` series the server lists over all time, printed; `None` if the query failed.
fn check_series(name: &str, port: u16, after: &str) -> Option<f64> {
    let target = "/api/v1/series?match%5B%5D=up&start=0&end=9999999999";
    let res = http_get(port, target, HTTP_TIMEOUT).and_then(|(status, body)| {
        let text = String::from_utf8_lossy(&body);
        if status != 200 {
            return Err(format!("HTTP {status}: {}", text.chars().take(300).collect::<String>()));
        }
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("bad JSON ({e}): {text:.300}"))?;
        v.get("data")
            .and_then(|d| d.as_array())
            .map(|a| a.len())
            .ok_or_else(|| format!("no data array: {text:.300}"))
    });
    match res {
        Ok(n) => {
            let verdict = if n > 0 { "data survived" } else { "EMPTY: data lost" };
            println!("[{name}] after {after}: /api/v1/series match[]=up -> {n} series ({verdict})");
            Some(n as f64)
        }
        Err(e) => {
            println!("[{name}] after {after}: /api/v1/series failed: {e}");
            None
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct BlockScan {
    blocks: usize,
    bytes: u64,
    samples: u64,
    bad_meta: usize,
    stable: bool,
}

/// Polls until the set of blocks (directories holding a `meta.json`) is non-empty and has not changed for
/// BLOCKS_STABLE, or BLOCKS_TIMEOUT passes (then `stable` is false).
fn wait_blocks(srv: &mut Proc, data: &Path) -> Res<BlockScan> {
    let start = Instant::now();
    let mut last = scan_blocks(data);
    let mut since = Instant::now();
    loop {
        sleep(BLOCKS_POLL);
        if let Some(s) = srv.exited() {
            return Err(format!("{} exited ({s}) while cutting blocks{}", srv.label, srv.tail()));
        }
        let now = scan_blocks(data);
        if (now.blocks, now.samples) != (last.blocks, last.samples) {
            last = now;
            since = Instant::now();
        } else if now.blocks > 0 && since.elapsed() >= BLOCKS_STABLE {
            return Ok(BlockScan { stable: true, ..now });
        }
        if start.elapsed() >= BLOCKS_TIMEOUT {
            return Ok(now);
        }
    }
}

fn scan_blocks(dir: &Path) -> BlockScan {
    let mut scan = BlockScan {
        blocks: 0,
        bytes: 0,
        samples: 0,
        bad_meta: 0,
        stable: false,
    };
    scan_blocks_in(dir, &mut scan);
    scan
}

/// Directories vanish under our feet while a system compacts: unreadable entries are skipped, not errors.
fn scan_blocks_in(dir: &Path, scan: &mut BlockScan) {
    let meta = dir.join("meta.json");
    if meta.is_file() {
        let samples = fs::read(&meta)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.pointer("/stats/numSamples").and_then(|n| n.as_u64()));
        match samples {
            Some(n) => scan.samples += n,
            None => scan.bad_meta += 1,
        }
        scan.blocks += 1;
        scan.bytes += dir_size(dir);
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        // Blocks being written or deleted: ours end in `.tmp`, Prometheus's in `.tmp-for-creation|deletion`.
        if name.ends_with(".tmp") || name.contains(".tmp-") {
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            scan_blocks_in(&e.path(), scan);
        }
    }
}

/// Sum of the sizes of all files under `dir` (apparent sizes, symlinks not followed).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    let mut total = 0;
    for e in entries.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => total += dir_size(&e.path()),
            Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => {}
        }
    }
    total
}

struct Row {
    metric: &'static str,
    prom: Option<f64>,
    ours: Option<f64>,
    decimals: usize,
    /// Highest passing ratio ours/reference; `None` for rows shown for information.
    target: Option<f64>,
}

fn print_table(prom: &SysResult, ours: &SysResult) {
    let row = |metric, f: fn(&SysResult) -> Option<f64>, decimals, target| Row {
        metric,
        prom: f(prom),
        ours: f(ours),
        decimals,
        target,
    };
    let rows = [
        row("CPU-s per 1M samples (ingest)", |r| r.cpu_per_m, 3, Some(0.2)),
        row("peak RSS MiB (VmHWM)", |r| r.rss_mib, 1, Some(0.33)),
        row("bytes/sample in blocks", |r| r.bytes_per_sample, 3, Some(0.55)),
        row("clean restart s", |r| r.clean_restart_s, 3, Some(0.5)),
        row("kill -9 restart s", |r| r.kill_restart_s, 3, Some(0.5)),
        row("send samples/s", |r| r.send_samples_per_s, 0, None),
        row("send requests failed", |r| r.send_failed, 0, None),
        row(
            "CPU-s per 1M incl. block cutting",
            |r| r.cpu_per_m_with_compaction,
            3,
            None,
        ),
        row("data dir MiB", |r| r.data_mib, 1, None),
        row("block count", |r| r.blocks, 0, None),
        row("samples in blocks", |r| r.block_samples, 0, None),
        row("cold start s", |r| r.cold_start_s, 3, None),
        row("`up` series after clean restart", |r| r.up_after_clean, 0, None),
        row("`up` series after kill -9 restart", |r| r.up_after_kill, 0, None),
    ];
    let fmt = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |v| format!("{v:.d$}"));
    println!();
    println!(
        "{:<34} | {:>12} | {:>13} | {:>17} | {:>7} | result",
        "metric", "prometheus", "monitoring-rs", "ratio (ours/ref)", "target"
    );
    println!("{}", "-".repeat(34 + 12 + 13 + 17 + 7 + 6 + 5 * 3));
    for r in &rows {
        let ratio = match (r.ours, r.prom) {
            (Some(o), Some(p)) if p > 0.0 => Some(o / p),
            _ => None,
        };
        let result = match r.target {
            None => "",
            Some(_) if !ours.ran || !prom.ran => "n/a",
            Some(t) => match ratio {
                Some(x) if x <= t => "PASS",
                Some(_) => "FAIL",
                None if r.ours.is_none() => "FAIL",
                None => "n/a",
            },
        };
        let target = r.target.map_or(String::new(), |t| format!("<= {t:.2}"));
        println!(
            "{:<34} | {:>12} | {:>13} | {:>17} | {:>7} | {result}",
            r.metric,
            fmt(r.prom, r.decimals),
            fmt(r.ours, r.decimals),
            fmt(ratio, 3),
            target
        );
    }
    if ours.ran {
        let survived = ours.up_after_kill.is_some_and(|n| n > 0.0);
        println!(
            "monitoring-rs data survived kill -9: {}",
            if survived { "PASS" } else { "FAIL" }
        );
    }
    println!("(ratio = monitoring-rs / prometheus, lower is better; a row passes when ratio <= target)");
}
