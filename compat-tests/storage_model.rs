//! Model-based test of the metrics store against a `BTreeMap` model: random appends (in order, out of
//! order, duplicates), block cuts, compactions and reopenings; every read must equal the model.

use monitoring_rs::model::{Labels, MatchOp, Matcher};
use monitoring_rs::storage::metrics::{MetricsDb, MetricsOptions, MetricsReader, RejectReason, SeriesKey};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type Model = BTreeMap<Labels, BTreeMap<i64, u64>>;

fn labels(i: u64) -> Labels {
    Labels::from_pairs([
        ("__name__".to_string(), format!("m{}", i % 3)),
        ("s".to_string(), format!("{i}")),
        (
            "job".to_string(),
            if i.is_multiple_of(2) {
                "even".to_string()
            } else {
                "odd".to_string()
            },
        ),
    ])
    .unwrap()
}

fn open(dir: &std::path::Path) -> Arc<MetricsDb> {
    let mut o = MetricsOptions::new(dir);
    o.block_duration = Duration::from_secs(60);
    o.retention = Duration::from_secs(365 * 86_400);
    o.wal_segment_size = 1 << 20;
    MetricsDb::open(o).unwrap()
}

fn check(db: &MetricsDb, model: &Model, rng: &mut Rng, round: usize) {
    let matchers: Vec<Matcher> = match rng.below(4) {
        0 => vec![Matcher::new(MatchOp::Regex, "__name__", "m.*").unwrap()],
        1 => vec![Matcher::new(MatchOp::Equal, "job", "odd").unwrap()],
        2 => vec![
            Matcher::new(MatchOp::Equal, "__name__", "m1").unwrap(),
            Matcher::new(MatchOp::NotRegex, "s", "1|4").unwrap(),
        ],
        _ => vec![Matcher::new(MatchOp::NotEqual, "__name__", "m2").unwrap()],
    };
    let (mint, maxt) = if rng.below(2) == 0 {
        (i64::MIN, i64::MAX)
    } else {
        let a = 1_000_000 + rng.below(3_000_000) as i64;
        (a, a + rng.below(2_000_000) as i64)
    };
    let got: Vec<(Labels, Vec<(i64, u64)>)> = db
        .select(&matchers, mint, maxt)
        .unwrap()
        .into_iter()
        .map(|s| {
            let v = s.samples(mint, maxt).map(|x| (x.t, x.v.to_bits())).collect();
            (s.labels, v)
        })
        .collect();
    let want: Vec<(Labels, Vec<(i64, u64)>)> = model
        .iter()
        .filter(|(ls, _)| matchers.iter().all(|m| m.matches(ls.get_or_empty(&m.name))))
        .map(|(ls, m)| {
            (
                ls.clone(),
                m.range(mint..=maxt).map(|(t, v)| (*t, *v)).collect::<Vec<_>>(),
            )
        })
        .filter(|(_, v)| !v.is_empty())
        .collect();
    if got != want {
        for ((gl, gv), (wl, wv)) in got.iter().zip(want.iter()) {
            if gv != wv {
                let g: std::collections::BTreeSet<i64> = gv.iter().map(|x| x.0).collect();
                let w: std::collections::BTreeSet<i64> = wv.iter().map(|x| x.0).collect();
                eprintln!(
                    "{gl:?} vs {wl:?}: missing {:?} extra {:?}",
                    w.difference(&g).collect::<Vec<_>>(),
                    g.difference(&w).collect::<Vec<_>>()
                );
                break;
            }
        }
        eprintln!(
            "failures {:?} head {:?}",
            db.stats().compaction_failures,
            db.head_range()
        );
    }
    assert!(got == want, "round {round}: select {matchers:?} [{mint}, {maxt}]");
    let names = db.label_values("s", &matchers, mint, maxt).unwrap();
    let mut want_names: Vec<String> = want.iter().map(|(l, _)| l.get_or_empty("s").to_string()).collect();
    want_names.sort();
    assert_eq!(names, want_names, "round {round}: label_values");
}

#[test]
fn store_matches_model_through_cuts_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics");
    let mut db = open(&path);
    let mut model: Model = BTreeMap::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Per-series next timestamp; time starts at 1,000,000 ms (1970), far from "the future".
    let mut next_t: Vec<i64> = vec![1_000_000; 12];
    let mut rejected = 0u64;
    // A shared clock keeps every series within the head's append window (head max - block/2), so
    // the only rejections are the ones the model predicts (out of order, duplicate).
    let mut clock: i64 = 1_000_000;
    for round in 0..400 {
        clock += rng.below(20_000) as i64;
        let op = rng.below(20);
        if std::env::var("MODEL_TRACE").is_ok() {
            eprintln!(
                "round {round} op {op} clock {clock} blocks {:?}",
                db.blocks()
                    .iter()
                    .map(|b| (b.meta().min_time, b.meta().max_time, b.meta().compaction.level))
                    .collect::<Vec<_>>()
            );
        }
        match op {
            0 => {
                db.close().unwrap();
                drop(db);
                db = open(&path);
                if std::env::var("MODEL_TRACE").is_ok() {
                    eprintln!(
                        "reopened: head {:?} blocks {:?}",
                        db.head_range(),
                        db.blocks()
                            .iter()
                            .map(|b| (b.meta().min_time, b.meta().max_time))
                            .collect::<Vec<_>>()
                    );
                }
            }
            1 => db.maintain().unwrap(),
            _ => {
                let mut app = db.appender();
                let mut expected: Vec<(Labels, i64, u64)> = Vec::new();
                for _ in 0..1 + rng.below(6) {
                    let i = rng.below(12);
                    let ls = labels(i);
                    let idx = app.add_series(SeriesKey::Owned(ls.clone()));
                    for _ in 0..1 + rng.below(5) {
                        let has_data = model.get(&ls).is_some_and(|m| !m.is_empty());
                        let kind = if has_data { rng.below(10) } else { 1 };
                        let t = match kind {
                            0 => next_t[i as usize] - 1 - rng.below(5000) as i64, // out of order
                            _ => next_t[i as usize].max(clock) + rng.below(1000) as i64,
                        };
                        let v = match rng.below(5) {
                            0 => f64::from_bits(0x7ff0_0000_0000_0002),
                            1 => (rng.below(1000) as f64) / 8.0,
                            _ => rng.below(100) as f64,
                        };
                        app.add_sample(idx, t, v);
                        let last = model.get(&ls).and_then(|m| m.keys().next_back().copied());
                        let accepted = last.is_none_or(|l| t > l);
                        if accepted {
                            model.entry(ls.clone()).or_default().insert(t, v.to_bits());
                            expected.push((ls.clone(), t, v.to_bits()));
                            next_t[i as usize] = t + 1;
                        }
                    }
                }
                let res = app.commit().unwrap();
                rejected += res.rejected;
                // The model and the store must agree on what was accepted, sample by sample.
                assert_eq!(
                    res.appended as usize,
                    expected.len(),
                    "round {round}: {:?}",
                    res.first_rejections
                );
                for (_, _, reason) in &res.first_rejections {
                    assert!(
                        matches!(
                            reason,
                            RejectReason::OutOfOrder | RejectReason::OutOfBounds | RejectReason::Duplicate
                        ),
                        "{reason:?}"
                    );
                }
            }
        }
        check(&db, &model, &mut rng, round);
    }
    db.maintain().unwrap();
    check(&db, &model, &mut rng, 10_000);
    assert!(rejected > 0, "the test must exercise rejections");
    assert!(!db.blocks().is_empty(), "the test must exercise blocks");
    db.close().unwrap();
}

/// Appends `minutes` of 5 s samples for 3 series starting at `t0`.
fn fill(db: &MetricsDb, t0: i64, minutes: i64) {
    for step in 0..minutes * 12 {
        let mut app = db.appender();
        for i in 0..3 {
            let idx = app.add_series(SeriesKey::Owned(labels(i)));
            app.add_sample(idx, t0 + step * 5000, step as f64);
        }
        let res = app.commit().unwrap();
        assert_eq!(res.rejected, 0);
    }
}

fn check_retention(name: &str, retention: Duration, retention_bytes: u64, want: impl Fn(&[(i64, i64)], i64) -> bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut o = MetricsOptions::new(dir.path());
    o.block_duration = Duration::from_secs(60);
    o.retention = retention;
    o.retention_bytes = retention_bytes;
    let db = MetricsDb::open(o).unwrap();
    let t0 = 600_000;
    fill(&db, t0, 20);
    db.maintain().unwrap();
    let ranges: Vec<(i64, i64)> = db
        .blocks()
        .iter()
        .map(|b| (b.meta().min_time, b.meta().max_time))
        .collect();
    let newest = db.head_range().unwrap().1;
    assert!(
        want(&ranges, newest),
        "{name}: blocks {ranges:?}, newest sample {newest}"
    );
    assert!(
        db.stats()
            .retention_deletions
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "{name}: nothing deleted"
    );
    // Reads agree: nothing older than the oldest block remains.
    let oldest = ranges
        .iter()
        .map(|r| r.0)
        .min()
        .unwrap_or(i64::MAX)
        .min(db.head_range().unwrap().0);
    let all = db
        .select(
            &[Matcher::new(MatchOp::Regex, "__name__", ".+").unwrap()],
            i64::MIN,
            i64::MAX,
        )
        .unwrap();
    for s in all {
        assert!(
            s.samples(i64::MIN, i64::MAX).all(|x| x.t >= oldest),
            "{name}: sample older than retention kept"
        );
    }
    db.close().unwrap();
}

#[test]
fn retention_by_time_and_size() {
    // 20 minutes of data, 1 minute blocks, keep 5 minutes: every block ends within 5 min of the newest sample.
    check_retention("time", Duration::from_secs(300), 0, |r, newest| {
        !r.is_empty() && r.iter().all(|(_, max)| *max > newest - 300_000)
    });
    // A size limit far below the data: blocks are deleted oldest first until it fits (the head stays).
    check_retention("size", Duration::from_secs(365 * 86_400), 1, |r, _| r.is_empty());
}
