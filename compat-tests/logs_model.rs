//! Model-based test of the log store: random appends (out of order, several tenants, metadata,
//! empty lines), flushes and clean restarts, checked after every step against a `BTreeMap` model
//! through the `LogReader` contract: forward and backward order, limits, time ranges, line filters
//! (which use the chunk filters), label endpoints and index stats. Plus retention by time and by size.
//! Each also with idle streams spilled to index files at every maintenance pass (and coming back
//! as new streams of the same label set).

use monitoring_rs::model::{Labels, MatchOp, Matcher};
use monitoring_rs::storage::logs::{
    Codec, Direction, LogReader, LogStore, LogsOptions, PushEntry, PushStream, SelectRequest, StreamKey,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// (ts, line, metadata) of an entry to push.
type ModelEntry = (i64, String, Vec<(String, String)>);

/// (tenant, stream) -> [(ts, seq, line, metadata)] in arrival order.
type Model = BTreeMap<(String, String), Vec<(i64, u64, String, Vec<(String, String)>)>>;

fn opts(dir: &Path, codec: Codec) -> LogsOptions {
    opts_spill(dir, codec, false)
}

/// With `spill`, every `maintain` closes every chunk and moves every stream out of memory.
fn opts_spill(dir: &Path, codec: Codec, spill: bool) -> LogsOptions {
    let mut o = LogsOptions::new(dir);
    if spill {
        o.chunk_idle_period = Duration::ZERO;
        o.spill_streams = 1;
    }
    o.block_size = 512;
    o.chunk_target_size = 2048;
    o.wal_checkpoint_size = 64 << 10;
    o.data_segment_size = 16 << 10;
    o.wal_segment_size = 32 << 10;
    o.codec = codec;
    o
}

fn labels(s: &str) -> Labels {
    Labels::from_pairs([("app", s), ("env", if s.ends_with('1') { "prod" } else { "dev" })]).unwrap()
}

/// Expected entries of a select, from the model.
fn expect(model: &Model, req: &SelectRequest, stream_ok: impl Fn(&str) -> bool) -> Vec<(i64, String)> {
    let mut all: Vec<(i64, String, u64, String)> = Vec::new();
    for ((tenant, stream), entries) in model {
        if *tenant != req.tenant || !stream_ok(stream) {
            continue;
        }
        for (ts, seq, line, _) in entries {
            if *ts >= req.start && *ts < req.end && req.line_contains.iter().all(|n| line.contains(n.as_str())) {
                all.push((*ts, stream.clone(), *seq, line.clone()));
            }
        }
    }
    all.sort();
    if req.direction == Direction::Backward {
        all.reverse();
    }
    let mut v: Vec<(i64, String)> = all.into_iter().map(|(t, _, _, l)| (t, l)).collect();
    if req.limit > 0 {
        v.truncate(req.limit);
    }
    v
}

fn check_select(store: &LogStore, model: &Model, req: SelectRequest, stream_ok: impl Fn(&str) -> bool, step: usize) {
    let want = expect(model, &req, stream_ok);
    let got: Vec<(i64, String)> = store
        .select(&req)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.entry.ts, e.entry.line)
        })
        .collect();
    // Ties at equal timestamps may come in any stream order: compare timestamps exactly and the
    // multiset of lines per timestamp.
    let norm = |v: &[(i64, String)]| {
        let mut m: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for (t, l) in v {
            m.entry(*t).or_default().push(l.clone());
        }
        for x in m.values_mut() {
            x.sort();
        }
        (v.iter().map(|(t, _)| *t).collect::<Vec<_>>(), m)
    };
    if req.limit == 0 {
        assert_eq!(norm(&got), norm(&want), "step {step}: {req:?}");
    } else {
        assert_eq!(got.len(), want.len(), "step {step}: {req:?}");
        assert_eq!(norm(&got).0, norm(&want).0, "step {step}: {req:?}");
    }
}

fn run(seed: u64, codec: Codec, spill: bool) {
    let dir = tempfile::tempdir().unwrap();
    let opts = |dir: &Path, codec| opts_spill(dir, codec, spill);
    let mut store = LogStore::open(opts(dir.path(), codec)).unwrap();
    let mut model: Model = BTreeMap::new();
    let mut next_seq: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut rng = Rng(seed);
    let base = 1_700_000_000_000_000_000i64;
    let tenants = ["fake", "t2"];
    for step in 0..200 {
        match rng.below(20) {
            0 => store.flush().unwrap(),
            // Retention's clock at the data's time: nothing expires.
            2 if spill => store.maintain(base + 20_000_000_000).unwrap(),
            1 => {
                store.close().unwrap();
                drop(store);
                store = LogStore::open(opts(dir.path(), codec)).unwrap();
            }
            _ => {
                let tenant = tenants[rng.below(2) as usize];
                let n_streams = 1 + rng.below(3) as usize;
                let mut owned: Vec<(String, Vec<ModelEntry>)> = Vec::new();
                for _ in 0..n_streams {
                    let s = format!("s{}", rng.below(5));
                    let mut es = Vec::new();
                    for _ in 0..rng.below(30) {
                        let ts = base + rng.below(10_000) as i64 * 1_000_000;
                        let line = match rng.below(4) {
                            0 => String::new(),
                            1 => format!("needle-{} x", rng.below(50)),
                            _ => format!(
                                "level=info msg=\"{}\" id={}",
                                "word ".repeat(rng.below(20) as usize),
                                rng.next()
                            ),
                        };
                        let meta = if rng.below(3) == 0 {
                            vec![("trace_id".to_string(), format!("{}", rng.below(99)))]
                        } else {
                            vec![]
                        };
                        es.push((ts, line, meta));
                    }
                    owned.push((s, es));
                }
                let metas: Vec<Vec<(&str, &str)>> = owned
                    .iter()
                    .flat_map(|(_, es)| {
                        es.iter()
                            .map(|(_, _, m)| m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect())
                    })
                    .collect();
                let mut mi = 0;
                let mut entries: Vec<Vec<PushEntry<'_>>> = Vec::new();
                for (_, es) in &owned {
                    let mut v = Vec::new();
                    for (ts, line, _) in es {
                        v.push(PushEntry {
                            ts: *ts,
                            line: line.as_bytes(),
                            meta: &metas[mi],
                        });
                        mi += 1;
                    }
                    entries.push(v);
                }
                let push: Vec<PushStream<'_>> = owned
                    .iter()
                    .zip(&entries)
                    .map(|((s, _), es)| PushStream {
                        key: StreamKey::New {
                            alias: s.as_bytes(),
                            labels: labels(s),
                        },
                        entries: es,
                    })
                    .collect();
                let res = store.append(tenant, &push).unwrap();
                assert!(res.refused_streams.is_empty());
                for (s, es) in owned {
                    let key = (tenant.to_string(), s);
                    let seq = next_seq.entry(key.clone()).or_insert(0);
                    for (ts, line, meta) in es {
                        model.entry(key.clone()).or_default().push((ts, *seq, line, meta));
                        *seq += 1;
                    }
                }
            }
        }
        let tenant = tenants[rng.below(2) as usize].to_string();
        let (a, b) = (rng.below(10_000) as i64, rng.below(10_000) as i64);
        let (start, end) = (base + a.min(b) * 1_000_000, base + (a.max(b) + 1) * 1_000_000);
        let full = SelectRequest {
            tenant: tenant.clone(),
            matchers: vec![Matcher::new(MatchOp::Regex, "app", ".+").unwrap()],
            start: 0,
            end: i64::MAX,
            direction: Direction::Forward,
            limit: 0,
            line_contains: vec![],
        };
        check_select(&store, &model, full.clone(), |_| true, step);
        check_select(
            &store,
            &model,
            SelectRequest {
                direction: Direction::Backward,
                limit: 7,
                start,
                end,
                ..full.clone()
            },
            |_| true,
            step,
        );
        check_select(
            &store,
            &model,
            SelectRequest {
                direction: Direction::Forward,
                limit: 5,
                start,
                end,
                ..full.clone()
            },
            |_| true,
            step,
        );
        check_select(
            &store,
            &model,
            SelectRequest {
                matchers: vec![Matcher::eq("env", "prod")],
                line_contains: vec![format!("needle-{} ", rng.below(50))],
                ..full.clone()
            },
            |s| s.ends_with('1'),
            step,
        );
        // Label endpoints and stats agree with the model.
        let streams_in: Vec<&String> = model.keys().filter(|(t, _)| *t == tenant).map(|(_, s)| s).collect();
        let series = store.series(&tenant, &[], i64::MIN, i64::MAX).unwrap();
        assert_eq!(series.len(), streams_in.len(), "step {step}");
        let vals = store.label_values(&tenant, "app", &[], i64::MIN, i64::MAX).unwrap();
        assert_eq!(vals.iter().collect::<Vec<_>>(), streams_in, "step {step}");
        let st = store.index_stats(&tenant, &[], i64::MIN, i64::MAX).unwrap();
        let n: usize = model
            .iter()
            .filter(|((t, _), _)| *t == tenant)
            .map(|(_, v)| v.len())
            .sum();
        assert_eq!(st.entries as usize, n, "step {step}");
    }
    if spill {
        // (The spill counter restarts with the store: the files tell.)
        let files = index_files(dir.path()).len();
        assert!(files > 3, "the run wrote {files} index files");
    }
    store.close().unwrap();
}

#[test]
fn store_matches_model_zstd() {
    for seed in [1, 2, 3] {
        run(seed * 0x9E37_79B9_7F4A_7C15, Codec::Zstd(3), false);
    }
}

#[test]
fn store_matches_model_snappy_and_none() {
    run(77, Codec::Snappy, false);
    run(78, Codec::None, false);
}

/// The same model with idle streams moved to index files at every `maintain` step (one in 20):
/// answers are the same whether a stream is in memory, in a file, or both (it came back).
#[test]
fn store_matches_model_with_spilled_streams() {
    for seed in [4, 5, 6] {
        run(seed * 0x9E37_79B9_7F4A_7C15, Codec::Zstd(3), true);
    }
}

#[test]
fn retention_by_time_drops_old_segments() {
    retention_by_time(false);
}

/// As above with each stream spilled to its own index file before the next is pushed: the old
/// stream's file goes with its data.
#[test]
fn retention_by_time_drops_spilled_streams_and_their_files() {
    retention_by_time(true);
}

/// Index files of `dir`'s log store.
fn index_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("index"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn retention_by_time(spill: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts_spill(dir.path(), Codec::Zstd(3), spill);
    o.retention = Duration::from_secs(3600);
    let store: Arc<LogStore> = LogStore::open(o.clone()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let line = "x".repeat(200);
    let mk = |ts0: i64| -> Vec<PushEntry<'_>> {
        (0..400)
            .map(|i| PushEntry {
                ts: ts0 + i,
                line: line.as_bytes(),
                meta: &[],
            })
            .collect()
    };
    let old = mk(now - 3 * 3_600_000_000_000);
    store
        .append(
            "fake",
            &[PushStream {
                key: StreamKey::New {
                    alias: b"old",
                    labels: labels("old"),
                },
                entries: &old,
            }],
        )
        .unwrap();
    store.flush().unwrap();
    // Retention's clock at the old data's time: nothing expires, the idle stream is spilled.
    store.maintain(now - 3 * 3_600_000_000_000).unwrap();
    assert_eq!(index_files(dir.path()).len(), usize::from(spill));
    // A reopened store appends to a new data segment, so the old entries own their segments
    // whatever their encoded size (the 4 KiB filters of closed chunks used to pad them apart).
    store.close().unwrap();
    drop(store);
    let store: Arc<LogStore> = LogStore::open(o).unwrap();
    let new = mk(now - 60_000_000_000);
    store
        .append(
            "fake",
            &[PushStream {
                key: StreamKey::New {
                    alias: b"new",
                    labels: labels("new"),
                },
                entries: &new,
            }],
        )
        .unwrap();
    store.flush().unwrap();
    store.maintain(now).unwrap();
    let apps = store.label_values("fake", "app", &[], i64::MIN, i64::MAX).unwrap();
    assert_eq!(apps, vec!["new".to_string()]);
    // With spilling: the old stream's file is gone, the new stream's (spilled by this pass) left.
    let files = index_files(dir.path());
    assert_eq!(
        files,
        if spill {
            vec!["00000001.idx".to_string()]
        } else {
            vec![]
        }
    );
    assert!(
        store
            .stats()
            .retention_segments_deleted
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    store.close().unwrap();
    drop(store);
    // And after a restart the old stream stays gone, the new one complete.
    let store = LogStore::open(opts_spill(dir.path(), Codec::Zstd(3), spill)).unwrap();
    let st = store.index_stats("fake", &[], i64::MIN, i64::MAX).unwrap();
    assert_eq!((st.streams, st.entries), (1, 400));
    let m = [Matcher::new(MatchOp::Equal, "app", "new").unwrap()];
    assert_eq!(store.series("fake", &m, i64::MIN, i64::MAX).unwrap().len(), 1);
    store.close().unwrap();
}

/// Bytes on disk of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = e.metadata().unwrap();
        total += if md.is_dir() { dir_bytes(&e.path()) } else { md.len() };
    }
    total
}

/// Retention by size: with `retention_bytes` set, maintenance deletes the oldest data segments
/// until data log + WAL fit (the current segment always stays), drops the streams left without
/// data, and the newest streams stay complete, also after a restart.
#[test]
fn retention_by_size_drops_oldest_segments() {
    const STREAMS: usize = 24;
    const LIMIT: u64 = 96 << 10;
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path(), Codec::Zstd(3));
    o.retention_bytes = LIMIT;
    let store: Arc<LogStore> = LogStore::open(o.clone()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    // Lines that barely compress (an LCG's hex digits), so every stream fills about one 16 KiB segment.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let lines: Vec<Vec<String>> = (0..STREAMS)
        .map(|_| {
            (0..80)
                .map(|_| {
                    (0..12)
                        .map(|_| {
                            x = x
                                .wrapping_mul(6_364_136_223_846_793_005)
                                .wrapping_add(1_442_695_040_888_963_407);
                            format!("{:016x}", x >> 1)
                        })
                        .collect::<String>()
                })
                .collect()
        })
        .collect();
    let names: Vec<String> = (0..STREAMS).map(|i| format!("s{i:02}")).collect();
    for (i, name) in names.iter().enumerate() {
        let entries: Vec<PushEntry<'_>> = lines[i]
            .iter()
            .enumerate()
            .map(|(j, l)| PushEntry {
                ts: now - 600_000_000_000 + (i * 1000 + j) as i64,
                line: l.as_bytes(),
                meta: &[],
            })
            .collect();
        store
            .append(
                "fake",
                &[PushStream {
                    key: StreamKey::New {
                        alias: name.as_bytes(),
                        labels: labels(name),
                    },
                    entries: &entries,
                }],
            )
            .unwrap();
        store.flush().unwrap();
    }
    let before = dir_bytes(dir.path());
    assert!(before > 2 * LIMIT, "the test must overflow the limit: {before} bytes");
    store.maintain(now).unwrap();
    let after = dir_bytes(dir.path());
    // Whole segments go, and the current one stays: allow one segment plus the index files over.
    assert!(
        after <= LIMIT + (48 << 10),
        "{after} bytes left of {before}, limit {LIMIT}"
    );
    let kept = store.label_values("fake", "app", &[], i64::MIN, i64::MAX).unwrap();
    assert!(!kept.is_empty() && kept.len() < STREAMS, "kept {kept:?}");
    // What is kept is the newest streams: a suffix of the push order, the newest complete.
    assert_eq!(kept, names[STREAMS - kept.len()..].to_vec());
    let check_newest = |store: &LogStore| {
        for name in &names[STREAMS - 2..] {
            let m = vec![Matcher::new(MatchOp::Equal, "app", name).unwrap()];
            let st = store.index_stats("fake", &m, i64::MIN, i64::MAX).unwrap();
            assert_eq!(st.entries, 80, "{name}");
        }
    };
    check_newest(&store);
    assert!(
        store
            .stats()
            .retention_segments_deleted
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    store.close().unwrap();
    drop(store);
    let store = LogStore::open(o).unwrap();
    let again = store.label_values("fake", "app", &[], i64::MIN, i64::MAX).unwrap();
    assert_eq!(again, kept);
    check_newest(&store);
    store.close().unwrap();
}

/// A needle query reads little: chunks whose n-gram filter lacks the needle are skipped.
#[test]
fn needle_queries_skip_chunks_by_their_filter() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path(), Codec::Zstd(3));
    o.block_size = 32 << 10;
    o.chunk_target_size = 256 << 10;
    let store = LogStore::open(o).unwrap();
    let mut rng = Rng(5);
    let words = [
        "alpha", "beta", "gamma", "delta", "request", "handler", "cache", "miss", "upstream", "timeout",
    ];
    let mut lines = Vec::new();
    for i in 0..20_000 {
        let mut l = format!(
            "10.0.{}.{} GET /api/v1/users?id={} ",
            rng.below(255),
            rng.below(255),
            rng.below(99_999)
        );
        for _ in 0..6 {
            l.push_str(words[rng.below(10) as usize]);
            l.push(' ');
        }
        if i == 12_345 {
            l.push_str("needle-7f3a9c");
        }
        lines.push(l);
    }
    let names: Vec<String> = (0..50).map(|i| format!("app{i}")).collect();
    for (si, name) in names.iter().enumerate() {
        let es: Vec<PushEntry<'_>> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 50 == si)
            .map(|(i, l)| PushEntry {
                ts: 1_000 + i as i64,
                line: l.as_bytes(),
                meta: &[],
            })
            .collect();
        store
            .append(
                "fake",
                &[PushStream {
                    key: StreamKey::New {
                        alias: name.as_bytes(),
                        labels: labels(name),
                    },
                    entries: &es,
                }],
            )
            .unwrap();
    }
    store.flush().unwrap();
    let req = SelectRequest {
        tenant: "fake".into(),
        matchers: vec![Matcher::new(MatchOp::Regex, "app", ".+").unwrap()],
        start: 0,
        end: i64::MAX,
        direction: Direction::Backward,
        limit: 100,
        line_contains: vec!["needle-7f3a9c".into()],
    };
    let mut it = store.select(&req).unwrap();
    let got: Vec<_> = it.by_ref().map(|e| e.unwrap().entry.line).collect();
    assert_eq!(got.len(), 1);
    println!(
        "needle: {} of 50 chunks skipped, {} blocks read",
        it.chunks_skipped, it.blocks_read
    );
    assert!(
        it.chunks_skipped >= 45,
        "only {} of 50 chunks skipped",
        it.chunks_skipped
    );
    assert!(it.blocks_read <= 10, "{} blocks read", it.blocks_read);
    store.close().unwrap();
}
