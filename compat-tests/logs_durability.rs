//! Crash safety of the log store with a real child process: kill -9 during a push load, then every
//! entry whose push got 204 is read back (through the library's `LogReader`) exactly once; a torn
//! WAL or data-log tail does not stop the server, which keeps what came before it.

mod common;

use common::*;
use monitoring_rs::model::{MatchOp, Matcher};
use monitoring_rs::storage::logs::{Direction, LogReader, LogStore, LogsOptions, SelectRequest};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Small blocks, chunks and WAL checkpoints so that a short load crosses all of them.
const CONFIG: &str = "storage:\n  logs:\n    block_size: 2KiB\n    chunk_target_size: 8KiB\n    wal_checkpoint_size: 256KiB\n    wal_segment_size: 1MiB\n";

fn opts(data: &Path) -> LogsOptions {
    let mut o = LogsOptions::new(data.join("logs"));
    o.block_size = 2 << 10;
    o.chunk_target_size = 8 << 10;
    o.wal_checkpoint_size = 256 << 10;
    o.wal_segment_size = 1 << 20;
    o
}

/// Every line stored, with how many times it was read back.
fn read_back(data: &Path) -> BTreeMap<String, usize> {
    let store = LogStore::open(opts(data)).unwrap();
    let req = SelectRequest {
        tenant: "fake".into(),
        matchers: vec![Matcher::new(MatchOp::Regex, "s", ".+").unwrap()],
        start: 0,
        end: i64::MAX,
        direction: Direction::Forward,
        limit: 0,
        line_contains: vec![],
    };
    let mut out = BTreeMap::new();
    let mut last = i64::MIN;
    for e in store.select(&req).unwrap() {
        let e = e.unwrap();
        assert!(e.entry.ts >= last, "forward order");
        last = e.entry.ts;
        *out.entry(e.entry.line).or_insert(0) += 1;
    }
    store.close().unwrap();
    out
}

/// A JSON push of `n` lines `<prefix>-<k>-<i>` in streams `{s="<prefix><k % 7>"}`.
fn body(prefix: &str, k: usize, n: usize, t0: i64) -> (Vec<u8>, Vec<String>) {
    let mut lines = Vec::new();
    let mut streams = String::new();
    for st in 0..3 {
        let mut values = Vec::new();
        for i in 0..n {
            let line = format!("{prefix}-{k}-{st}-{i} some payload to fill blocks quickly 0123456789");
            // Out of order within a stream on purpose.
            let ts = t0 + (k * 1000 + i * 7 % n) as i64 * 1_000;
            values.push(format!(r#"["{ts}","{line}"]"#));
            lines.push(line);
        }
        if st > 0 {
            streams.push(',');
        }
        streams.push_str(&format!(
            r#"{{"stream":{{"s":"{prefix}{}"}},"values":[{}]}}"#,
            (k + st) % 7,
            values.join(",")
        ));
    }
    (format!(r#"{{"streams":[{streams}]}}"#).into_bytes(), lines)
}

fn load_then_kill(s: &mut Server, prefix: &'static str, acked: &mut BTreeSet<String>) {
    let t0 = now_ms() * 1_000_000 - 3_600_000_000_000;
    let stop = Arc::new(AtomicBool::new(false));
    let addr = s.addr;
    let senders: Vec<_> = (0..2)
        .map(|w| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut ok = Vec::new();
                let mut k = w;
                while !stop.load(Ordering::Relaxed) {
                    let (b, lines) = body(prefix, k, 20, t0);
                    match try_request(
                        addr,
                        "POST",
                        "/loki/api/v1/push",
                        &[("Content-Type", "application/json")],
                        &b,
                    ) {
                        Ok(r) if r.status == 204 => ok.extend(lines),
                        Ok(r) => panic!("push refused: {} {}", r.status, r.text()),
                        Err(_) => break,
                    }
                    k += 2;
                }
                ok
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    s.kill9();
    stop.store(true, Ordering::Relaxed);
    for h in senders {
        acked.extend(h.join().unwrap());
    }
}

fn check_all(data: &Path, acked: &BTreeSet<String>) {
    let got = read_back(data);
    let dups: Vec<_> = got.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dups.is_empty(), "duplicated entries: {dups:?}");
    let missing: Vec<_> = acked.iter().filter(|l| !got.contains_key(*l)).take(5).collect();
    assert!(
        missing.is_empty(),
        "acknowledged entries lost ({} acked, {} read): {missing:?}",
        acked.len(),
        got.len()
    );
}

#[test]
fn kill9_during_push_load_loses_nothing_acknowledged() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let mut s = Server::start(&data, Some(CONFIG));
    let mut acked = BTreeSet::new();
    load_then_kill(&mut s, "a", &mut acked);
    assert!(acked.len() > 1000, "only {} entries acknowledged", acked.len());
    // Restart the server, push more, kill again: replay must not duplicate what reached blocks.
    s.restart();
    load_then_kill(&mut s, "b", &mut acked);
    check_all(&data, &acked);
}

fn append_garbage(dir: &Path) {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.len() == 8 && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    segs.sort();
    let last = segs.last().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(last).unwrap();
    std::io::Write::write_all(&mut f, &[0x10, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]).unwrap();
}

#[test]
fn torn_wal_and_data_tails_keep_what_is_before_them() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let mut s = Server::start(&data, Some(CONFIG));
    let mut acked = BTreeSet::new();
    let t0 = now_ms() * 1_000_000 - 60_000_000_000;
    for k in 0..40 {
        let (b, lines) = body("t", k, 20, t0);
        let r = s.post("/loki/api/v1/push", &[("Content-Type", "application/json")], &b);
        assert_eq!(r.status, 204, "{}", r.text());
        acked.extend(lines);
    }
    s.kill9();
    append_garbage(&data.join("logs/wal"));
    append_garbage(&data.join("logs/data"));
    s.restart();
    let r = s.get("/loki/api/v1/index/stats?query=%7Bs%3D~%22.%2B%22%7D&start=0");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["entries"].as_u64(), Some(acked.len() as u64), "{}", r.text());
    s.kill9();
    check_all(&data, &acked);
}
