//! LogQL query benchmark: the `lokiload.py` corpus (1,000,000 lines, 500 streams, 1 h, ~123 MB raw)
//! pushed to monitoring-rs, then every query of `../shared/bench/logql-queries.txt` run as a range
//! query over the hour (median of 3), with Loki 3.4.6's figures measured on this machine printed
//! alongside (no Loki binary can be installed here: the reference column is the recorded
//! numbers) and a `grep -c` of the needle over the raw corpus as the physical reference.
//!
//! Owns: its temp dir and the cached corpus in `target/bench-data/`. Never touches: the library
//! (the server is driven over loopback HTTP).
//!
//! Run: `cargo bench --bench logql`. Without `--bench` on the command line it does nothing unless
//! `BENCH_FORCE=1`. Environment: `BENCH_LINES` [1000000], `BENCH_STREAMS` [500],
//! `SHARED_DIR` [`<manifest>/../shared`], `BENCH_DUMP` [unset: a directory to write each query's
//! `data.result` to, as `q<N>.json`, to compare two builds byte for byte], `BENCH_CHUNK_TARGET`
//! [unset: the default 1536KiB, which the corpus's ~245 KB streams never fill, so every chunk stays
//! open; e.g. `64KiB` closes ~4 per stream, to time the closed-chunk path]. Needs `python3` with
//! `cramjam`.

#[path = "../common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Loki 3.4.6 on this machine, same corpus and query set (from the issue), seconds.
const REF_NEEDLE_S: f64 = 0.77;
const REF_RATE_S: f64 = 3.2;
const REF_TOTAL_S: f64 = 10.3;
const NEEDLE: &str = "needle-7f3a9c";

fn main() {
    let forced = std::env::var_os("BENCH_FORCE").is_some();
    if !forced && !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if let Err(e) = run() {
        println!("logql bench FAILED: {e}");
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// User+system CPU seconds of process `pid` so far (`/proc/<pid>/stat`, 100 ticks/s); 0 if unreadable.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn run() -> Result<(), String> {
    let lines = env_u64("BENCH_LINES", 1_000_000);
    let streams = env_u64("BENCH_STREAMS", 500);
    let shared = std::env::var("SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let script = shared.join("bench/lokiload.py");
    let queries: Vec<String> = std::fs::read_to_string(shared.join("bench/logql-queries.txt"))
        .map_err(|e| format!("query set: {e}"))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
    // A day boundary at least 2 h in the past: stable for a day (cached), never in the future.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let start_s = (now - 7200) / 86_400 * 86_400;
    let corpus = target.join(format!("logql-{lines}-{streams}-{start_s}.bin"));
    let raw = target.join(format!("logql-{lines}-{streams}-{start_s}.raw"));
    if !corpus.exists() || !raw.exists() {
        println!("generating {} ...", corpus.display());
        let st = Command::new("python3")
            .arg(&script)
            .args(["gen", "--lines", &lines.to_string(), "--streams", &streams.to_string()])
            .args(["--start-ns", &format!("{}", u128::from(start_s) * 1_000_000_000)])
            .arg("--out")
            .arg(&corpus)
            .arg("--raw")
            .arg(&raw)
            .status()
            .map_err(|e| format!("python3: {e}"))?;
        if !st.success() {
            return Err(format!("lokiload.py gen failed ({st}); is cramjam installed?"));
        }
    }
    let raw_mb = std::fs::metadata(&raw).map_err(|e| e.to_string())?.len() as f64 / 1e6;
    let tmp = common::tempdir();
    let config = std::env::var("BENCH_CHUNK_TARGET")
        .ok()
        .map(|v| format!("storage:\n  logs:\n    chunk_target_size: {v}\n"));
    let server = common::Server::start(&tmp.path().join("data"), config.as_deref());
    let out = Command::new("python3")
        .arg(&script)
        .args(["send", "--file"])
        .arg(&corpus)
        .args(["--url", &format!("http://{}/loki/api/v1/push", server.addr)])
        .output()
        .map_err(|e| format!("python3 send: {e}"))?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let start_ns = u128::from(start_s) * 1_000_000_000;
    let end_ns = start_ns + 3_600_000_000_000;
    println!();
    let dump = std::env::var_os("BENCH_DUMP").map(PathBuf::from);
    let pid = server.child.as_ref().map_or(0, std::process::Child::id);
    println!("| query | median s (3 runs) | server CPU s (3 runs) | result |");
    println!("| --- | --- | --- | --- |");
    let mut cpu_total = 0.0;
    let mut total = 0.0;
    let mut needle_s = 0.0;
    let mut rate_s = 0.0;
    for (qi, q) in queries.iter().enumerate() {
        let url = format!(
            "/loki/api/v1/query_range?query={}&start={start_ns}&end={end_ns}&limit=100",
            urlencode(q)
        );
        let mut times = Vec::new();
        let mut summary = String::new();
        let cpu0 = cpu_s(pid);
        for _ in 0..3 {
            let t = Instant::now();
            let r = common::request(server.addr, "GET", &url, &[], &[]);
            times.push(t.elapsed().as_secs_f64());
            summary = if r.status == 200 {
                let j = r.json();
                let n = j["data"]["result"].as_array().map_or(0, Vec::len);
                if let Some(d) = &dump {
                    std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
                    std::fs::write(d.join(format!("q{qi}.json")), j["data"]["result"].to_string())
                        .map_err(|e| e.to_string())?;
                }
                format!("200, {} {n}", j["data"]["resultType"].as_str().unwrap_or("?"))
            } else {
                format!("{} {}", r.status, r.text().chars().take(80).collect::<String>())
            };
        }
        let cpu = cpu_s(pid) - cpu0;
        cpu_total += cpu;
        times.sort_by(f64::total_cmp);
        let med = times[1];
        total += med;
        if q == &format!("{{job=~\".+\"}} |= \"{NEEDLE}\"") {
            needle_s = med;
        }
        if q.starts_with("sum by (namespace) (rate(") {
            rate_s = med;
        }
        println!("| `{q}` | {med:.3} | {cpu:.3} | {summary} |");
    }
    println!();
    println!("server CPU for the set (3 runs each, user+sys): {cpu_total:.3} s");
    let t = Instant::now();
    let grep = Command::new("grep")
        .args(["-c", NEEDLE])
        .arg(&raw)
        .output()
        .map_err(|e| format!("grep: {e}"))?;
    let grep_s = t.elapsed().as_secs_f64();
    println!();
    println!(
        "grep -c {NEEDLE} over the raw corpus ({raw_mb:.1} MB): {} matches in {grep_s:.3} s ({:.0} MB/s)",
        String::from_utf8_lossy(&grep.stdout).trim(),
        raw_mb / grep_s.max(1e-9)
    );
    println!();
    println!("| figure | monitoring-rs | Loki 3.4.6 (issue) | ratio | target |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| needle `{{job=~\".+\"}} |= \"{NEEDLE}\"` s | {needle_s:.3} | {REF_NEEDLE_S} | {:.3} | scan >= 1 GB/s/core or skip chunks ({:.0} MB/s here) |",
        needle_s / REF_NEEDLE_S,
        raw_mb / needle_s.max(1e-9)
    );
    println!(
        "| `sum by (namespace) (rate(...[1m]))` s | {rate_s:.3} | {REF_RATE_S} | {:.3} | |",
        rate_s / REF_RATE_S
    );
    println!(
        "| whole set s | {total:.3} | {REF_TOTAL_S} | {:.3} | <= 0.1 |",
        total / REF_TOTAL_S
    );
    Ok(())
}
