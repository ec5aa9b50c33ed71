//! Crash safety with a real child process: kill -9 while a sender writes, corrupt WAL tails, block
//! cuts followed by a crash. The store is then opened with the library to compare every sample.

mod common;

use common::*;
use monitoring_rs::model::{Matcher, STALE_NAN_BITS, stale_nan};
use monitoring_rs::storage::metrics::{MetricsDb, MetricsOptions, MetricsReader};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Opens the store the server left behind and returns every sample by `__name__`+`s` label:
/// name -> (t -> value bits). Panics on duplicated timestamps.
fn read_back(metrics_dir: &Path, block: Duration) -> BTreeMap<String, BTreeMap<i64, u64>> {
    let mut opts = MetricsOptions::new(metrics_dir);
    opts.block_duration = block;
    let db = MetricsDb::open(opts).unwrap();
    let all = db
        .select(
            &[Matcher::new(monitoring_rs::model::MatchOp::Regex, "__name__", ".+").unwrap()],
            i64::MIN,
            i64::MAX,
        )
        .unwrap();
    let mut out = BTreeMap::new();
    for s in all {
        let key = format!("{}/{}", s.labels.get_or_empty("__name__"), s.labels.get_or_empty("s"));
        let mut m = BTreeMap::new();
        let mut last = i64::MIN;
        for smp in s.samples(i64::MIN, i64::MAX) {
            assert!(
                smp.t > last,
                "{key}: timestamps must be strictly increasing (duplicate or disorder at {})",
                smp.t
            );
            last = smp.t;
            m.insert(smp.t, smp.v.to_bits());
        }
        out.insert(key, m);
    }
    db.close().unwrap();
    out
}

fn batch(step: i64, t0: i64, n_series: usize) -> (Vec<u8>, Vec<(String, i64, u64)>) {
    batch_for("", step, t0, n_series)
}

/// One request: `n_series` series `crash_test{s="<prefix><i>"}` with one sample each at
/// `t0 + step × 10 ms` (small steps keep a fast sender far from the future and the head's window).
fn batch_for(prefix: &str, step: i64, t0: i64, n_series: usize) -> (Vec<u8>, Vec<(String, i64, u64)>) {
    let t = t0 + step * 10;
    let mut ts = Vec::new();
    let mut expect = Vec::new();
    for i in 0..n_series {
        let v = (step * 7 + i as i64) as f64 * 0.5;
        let s = format!("{prefix}{i}");
        ts.push(series(&[("__name__", "crash_test"), ("s", &s)], &[(t, v)]));
        expect.push((format!("crash_test/{s}"), t, v.to_bits()));
    }
    (snappy(&prost::Message::encode_to_vec(&write_request(ts))), expect)
}

#[test]
fn kill9_while_writing_loses_nothing_acknowledged() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let mut s = Server::start(&data, None);
    let t0 = now_ms() - 3_600_000;
    let addr = s.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    // Two senders on their own series sets, like rwload's two connections.
    let prefixes = ["a", "b"];
    let senders: Vec<_> = (0..2)
        .map(|k| {
            let stop = Arc::clone(&stop2);
            std::thread::spawn(move || {
                let mut acked: Vec<(String, i64, u64)> = Vec::new();
                let mut step = 0i64;
                while !stop.load(Ordering::Relaxed) && step < 100_000 {
                    let (body, mut expect) = batch_for(prefixes[k], step, t0, 50);
                    match try_request(addr, "POST", "/api/v1/write", RW1_HEADERS, &body) {
                        Ok(r) if r.status == 204 => acked.append(&mut expect),
                        Ok(r) => panic!("unexpected status {} {}", r.status, r.text()),
                        Err(_) => break, // the server was killed
                    }
                    step += 1;
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    s.kill9();
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<(String, i64, u64)> = senders.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert!(
        acked.len() > 1000,
        "the sender should have written a fair amount, got {}",
        acked.len()
    );
    let got = read_back(&data.join("metrics"), Duration::from_secs(7200));
    let mut missing = 0;
    for (key, t, bits) in &acked {
        if got.get(key).and_then(|m| m.get(t)) != Some(bits) {
            missing += 1;
        }
    }
    assert_eq!(missing, 0, "{missing} of {} acknowledged samples lost", acked.len());
    // And the server starts again on the same data.
    s.restart();
    let r = s.get("/api/v1/series?match[]=crash_test");
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 100);
}

fn last_segment(wal: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && std::fs::metadata(p).unwrap().len() > 8)
        .collect();
    segs.sort();
    segs.pop().expect("a WAL segment with data")
}

fn check_corrupt_tail(name: &str, corrupt: impl Fn(&Path)) {
    let dir = tempdir();
    let data = dir.path().join("data");
    let mut s = Server::start(&data, None);
    let t0 = now_ms() - 3_600_000;
    let mut expect = Vec::new();
    for step in 0..20 {
        let (body, mut e) = batch(step, t0, 10);
        assert_eq!(s.post("/api/v1/write", RW1_HEADERS, &body).status, 204);
        expect.append(&mut e);
    }
    s.stop();
    corrupt(&last_segment(&data.join("metrics/wal")));
    // The server must start anyway.
    s.restart();
    s.stop();
    let got = read_back(&data.join("metrics"), Duration::from_secs(7200));
    let kept = expect
        .iter()
        .filter(|(k, t, b)| got.get(k).and_then(|m| m.get(t)) == Some(b))
        .count();
    // Everything before the damage survives: all but at most the last batch (10 samples).
    assert!(kept >= expect.len() - 10, "{name}: kept {kept} of {}", expect.len());
    // Nothing invented.
    let total: usize = got.values().map(|m| m.len()).sum();
    assert!(
        total <= expect.len(),
        "{name}: {total} samples read back, only {} written",
        expect.len()
    );
}

#[test]
fn wal_with_garbage_appended_still_starts() {
    check_corrupt_tail("garbage", |seg| {
        let mut f = std::fs::OpenOptions::new().append(true).open(seg).unwrap();
        std::io::Write::write_all(&mut f, &[0x17; 333]).unwrap();
    });
}

#[test]
fn wal_with_torn_last_record_still_starts() {
    check_corrupt_tail("torn", |seg| {
        let len = std::fs::metadata(seg).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(seg).unwrap();
        f.set_len(len - 7).unwrap();
    });
}

#[test]
fn staleness_markers_survive_bit_exact() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let mut s = Server::start(&data, None);
    let t = now_ms() - 600_000;
    let req = write_request(vec![series(
        &[("__name__", "stale_test"), ("s", "a")],
        &[(t, 1.0), (t + 15_000, stale_nan()), (t + 30_000, f64::NAN)],
    )]);
    assert_eq!(s.write_v1(&req).status, 204);
    s.kill9();
    let got = read_back(&data.join("metrics"), Duration::from_secs(7200));
    let m = &got["stale_test/a"];
    assert_eq!(m[&(t + 15_000)], STALE_NAN_BITS);
    assert_ne!(
        m[&(t + 30_000)],
        STALE_NAN_BITS,
        "an ordinary NaN is not a staleness marker"
    );
    assert!(f64::from_bits(m[&(t + 30_000)]).is_nan());
}

#[test]
fn blocks_are_cut_and_survive_a_crash() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let mut s = Server::start(&data, Some("storage:\n  metrics:\n    block_duration: 1m\n"));
    // 10 minutes of 5 s data, two hours ago: the head keeps ~1.5 min, the rest becomes 1 min blocks.
    let t0 = (now_ms() - 7_200_000) / 60_000 * 60_000;
    let mut expect = Vec::new();
    for step in 0..120 {
        let (body, mut e) = batch(step * 500, t0, 20);
        let r = s.post("/api/v1/write", RW1_HEADERS, &body);
        assert_eq!(r.status, 204, "{}", r.text());
        expect.append(&mut e);
    }
    // Wait for the background cut.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while s.metric("monitoring_rs_metrics_head_compactions_total") < 5.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no blocks cut; log:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let blocks_before: BTreeSet<String> = std::fs::read_dir(data.join("metrics/blocks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!blocks_before.is_empty());
    s.kill9();
    let got = read_back(&data.join("metrics"), Duration::from_secs(60));
    let missing: Vec<_> = expect
        .iter()
        .filter(|(k, t, b)| got.get(k).and_then(|m| m.get(t)) != Some(b))
        .collect();
    assert!(
        missing.is_empty(),
        "{} samples lost after block cuts and a crash, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
    let total: usize = got.values().map(|m| m.len()).sum();
    assert_eq!(total, expect.len(), "no duplicates or extra samples");
    // Old WAL segments were dropped once their data was in blocks.
    s.restart();
    assert_eq!(
        s.get("/api/v1/series?match[]=crash_test").json()["data"]
            .as_array()
            .unwrap()
            .len(),
        20
    );
}
