//! Loki push benchmark: the `lokiload.py` corpus (1,000,000 lines in 500 streams, 122.7 MB raw by
//! default) pushed as protobuf to monitoring-rs, with the figures of Loki 3.4.6 measured on this
//! machine printed alongside (no Loki binary can be installed here, so the reference column is
//! the recorded numbers, not a live run).
//!
//! Owns: generating the corpus once (cached in `target/bench-data/`), running the server as a child
//! process in a temp dir, and printing one table: receiver CPU-seconds for the corpus, MB of raw log
//! per CPU-second (the shutdown flush included), peak RSS, bytes on disk after the flush of a clean
//! shutdown, restart to ready.
//! Must never touch: the library (the server is driven over loopback HTTP only), paths outside its
//! temp dir and `target/bench-data/`.
//!
//! Run: `cargo bench --bench loki_push`. Without `--bench` on the command line (as under
//! `cargo test --all-targets`) it does nothing unless `BENCH_FORCE=1`. Environment: `BENCH_LINES`
//! [1000000], `BENCH_STREAMS` [500], `BENCH_CONNS` [2], `SHARED_DIR` [`<manifest>/../shared`],
//! `BENCH_KEEP=1` keeps the temp dir, `BENCH_CONFIG` extra YAML for the server (e.g. to compare codecs).
//! Needs `python3` with `cramjam` (`pip install cramjam`).

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const OURS_BIN: &str = env!("CARGO_BIN_EXE_monitoring-rs");

type Res<T> = Result<T, String>;

/// Loki 3.4.6 on this machine, same corpus (from the issue).
const REF_CPU_S: f64 = 20.2;
const REF_MB_PER_CPU_S: f64 = 6.1;
const REF_RSS_MIB: f64 = 686.0;
const REF_DISK_MB: f64 = 35.9;
const REF_RESTART_S: f64 = 20.0;

fn main() {
    let forced = std::env::var_os("BENCH_FORCE").is_some();
    if !forced && !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if let Err(e) = run() {
        println!("loki_push bench FAILED: {e}");
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn run() -> Res<()> {
    let lines = env_u64("BENCH_LINES", 1_000_000);
    let streams = env_u64("BENCH_STREAMS", 500);
    let conns = env_u64("BENCH_CONNS", 2);
    let shared = std::env::var("SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let script = shared.join("bench/lokiload.py");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    fs::create_dir_all(&target).map_err(|e| e.to_string())?;
    // The corpus starts at a day boundary at least 2 h in the past, so it is stable for a day (cached)
    // and never "too far in the future".
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let start_s = (now - 7200) / 86_400 * 86_400;
    let corpus = target.join(format!("loki-{lines}-{streams}-{start_s}.bin"));
    if !corpus.exists() {
        println!("generating {} ...", corpus.display());
        let st = Command::new("python3")
            .arg(&script)
            .args(["gen", "--lines", &lines.to_string(), "--streams", &streams.to_string()])
            .args(["--start-ns", &format!("{}", start_s as u128 * 1_000_000_000)])
            .arg("--out")
            .arg(&corpus)
            .status()
            .map_err(|e| format!("python3: {e}"))?;
        if !st.success() {
            return Err(format!(
                "lokiload.py gen failed ({st}); is cramjam installed (pip install cramjam)?"
            ));
        }
    }
    let header = read_header(&corpus)?;
    let raw_mb = header
        .split_whitespace()
        .find_map(|w| w.strip_prefix("raw_bytes="))
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or("corpus header lacks raw_bytes")?
        / 1e6;
    let tmp = tempdir()?;
    let data = tmp.join("data");
    let cfg = tmp.join("config.yaml");
    fs::write(&cfg, std::env::var("BENCH_CONFIG").unwrap_or_default()).map_err(|e| e.to_string())?;
    let port = free_port()?;
    let mut srv = spawn(&data, &cfg, port, &tmp.join("server.log"))?;
    let ready = wait_ready(&mut srv, port)?;
    let pid = srv.id();
    let cpu0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    let out = Command::new("python3")
        .arg(&script)
        .args(["send", "--file"])
        .arg(&corpus)
        .args(["--url", &format!("http://127.0.0.1:{port}/loki/api/v1/push")])
        .args(["--conns", &conns.to_string()])
        .output()
        .map_err(|e| format!("python3 send: {e}"))?;
    let wall = t0.elapsed();
    let send_out = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{send_out}");
    let cpu_push = cpu_seconds(pid)? - cpu0;
    let hwm_mib = vm_hwm_kib(pid)? as f64 / 1024.0;
    // Clean shutdown flushes head blocks and closes chunks; its CPU counts (it is part of storing):
    // the child's total CPU comes from wait4(2) once it exited.
    let cpu_before_stop = cpu_seconds(pid)?;
    let stop_t = Instant::now();
    let cpu_total = terminate(&mut srv)?;
    let stop_s = stop_t.elapsed().as_secs_f64();
    let cpu_flush = (cpu_total - cpu_before_stop).max(0.0);
    let disk_mb = dir_size(&data.join("logs")) as f64 / 1e6;
    let mut srv2 = spawn(&data, &cfg, port, &tmp.join("server2.log"))?;
    let restart = wait_ready(&mut srv2, port)?;
    let (status, body) = http_get(
        port,
        "/loki/api/v1/index/stats?query=%7Bstream%3D%22stdout%22%7D&start=0",
    )?;
    println!(
        "after restart: /index/stats -> {status} {}",
        String::from_utf8_lossy(&body)
    );
    let _ = terminate(&mut srv2)?;
    let failed = send_out.contains("failed=0");
    println!();
    println!(
        "corpus: {} ({raw_mb:.1} MB raw), first start ready in {:.2} s, push wall {:.1} s, shutdown flush {stop_s:.2} s",
        header.trim(),
        ready.as_secs_f64(),
        wall.as_secs_f64()
    );
    println!("| figure | monitoring-rs | Loki 3.4.6 (issue) | target | verdict |");
    println!("| --- | --- | --- | --- | --- |");
    let row = |name: &str, ours: f64, reference: f64, target: &str, ok: bool| {
        println!(
            "| {name} | {ours:.2} | {reference:.1} | {target} | {} |",
            if ok { "PASS" } else { "FAIL" }
        );
    };
    row("receiver CPU-s for the corpus", cpu_push, REF_CPU_S, "-", true);
    row("+ CPU-s of the shutdown flush", cpu_flush, 0.0, "-", true);
    let mbps = raw_mb / (cpu_push + cpu_flush).max(1e-9);
    row("MB raw log per CPU-s", mbps, REF_MB_PER_CPU_S, ">= 30", mbps >= 30.0);
    row("peak RSS MiB", hwm_mib, REF_RSS_MIB, "<= 64", hwm_mib <= 64.0);
    row(
        "MB on disk after flush",
        disk_mb,
        REF_DISK_MB,
        "<= 21.5",
        disk_mb <= 21.5,
    );
    let rs = restart.as_secs_f64();
    row("restart to ready, s", rs, REF_RESTART_S, "<= 1", rs <= 1.0);
    if !failed {
        println!("WARNING: some pushes failed (see the send output above)");
    }
    if std::env::var_os("BENCH_KEEP").is_none() {
        let _ = fs::remove_dir_all(&tmp);
    } else {
        println!("kept {}", tmp.display());
    }
    Ok(())
}

fn read_header(path: &Path) -> Res<String> {
    let mut f = fs::File::open(path).map_err(|e| e.to_string())?;
    let mut len = [0u8; 4];
    f.read_exact(&mut len).map_err(|e| e.to_string())?;
    let mut h = vec![0u8; u32::from_le_bytes(len) as usize];
    f.read_exact(&mut h).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&h).into_owned())
}

fn tempdir() -> Res<PathBuf> {
    let p = std::env::temp_dir().join(format!("loki-bench-{}", std::process::id()));
    let _ = fs::remove_dir_all(&p);
    fs::create_dir_all(&p).map_err(|e| e.to_string())?;
    Ok(p)
}

fn spawn(data: &Path, cfg: &Path, port: u16, log: &Path) -> Res<Child> {
    let log = fs::File::create(log).map_err(|e| e.to_string())?;
    Command::new(OURS_BIN)
        .arg("--config")
        .arg(cfg)
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawning {OURS_BIN}: {e}"))
}

fn wait_ready(srv: &mut Child, port: u16) -> Res<Duration> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(120) {
        if let Ok(Some(s)) = srv.try_wait() {
            return Err(format!("server exited early ({s})"));
        }
        if matches!(http_get(port, "/-/ready"), Ok((200, _))) {
            return Ok(t.elapsed());
        }
        sleep(Duration::from_millis(5));
    }
    Err("server not ready in 120 s".into())
}

/// Stops the server with SIGTERM and returns the CPU-seconds it used over its whole life.
fn terminate(srv: &mut Child) -> Res<f64> {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(srv.id() as i32, libc::SIGTERM);
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(120) {
        let mut status = 0;
        // SAFETY: wait4(2) on our own child, writing into locals.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(srv.id() as i32, &mut status, libc::WNOHANG, &mut ru) };
        if r == srv.id() as i32 {
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            return Ok(tv(ru.ru_utime) + tv(ru.ru_stime));
        }
        if r < 0 {
            return Err(format!("wait4: {}", std::io::Error::last_os_error()));
        }
        sleep(Duration::from_millis(10));
    }
    let _ = srv.kill();
    Err("server did not stop in 120 s".into())
}

fn free_port() -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn http_get(port: u16, target: &str) -> Res<(u16, Vec<u8>)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let req = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("truncated response")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    Ok((status, raw[end + 4..].to_vec()))
}

fn cpu_seconds(pid: u32) -> Res<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let rest = stat.rfind(')').map(|i| &stat[i + 1..]).ok_or("bad stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf(3) only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / if hz > 0 { hz as f64 } else { 100.0 })
}

fn vm_hwm_kib(pid: u32) -> Res<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no VmHWM".to_string())
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += dir_size(&p);
            } else if let Ok(m) = e.metadata() {
                total += m.len();
            }
        }
    }
    total
}
