//! PromQL engine micro-benchmark: range queries over an in-process store (no HTTP), to watch the
//! evaluator's cost per series-step. `BENCH_SERIES` (default 1000) series of `BENCH_STEPS` (default
//! 2880, 12 h at 15 s) samples; each query runs over the whole span at a 15 s step.

use monitoring_rs::model::Labels;
use monitoring_rs::query::promql::{Engine, parse};
use monitoring_rs::storage::metrics::{MetricsDb, MetricsOptions, SeriesKey};
use std::time::{Duration, Instant};

fn env(name: &str, default: i64) -> i64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let series = env("BENCH_SERIES", 1000);
    let steps = env("BENCH_STEPS", 2880);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = MetricsOptions::new(dir.path());
    o.block_duration = Duration::from_secs(100_000 * 86_400);
    o.too_far_in_future = Duration::from_secs(100_000 * 86_400);
    let db = MetricsDb::open(o).expect("open");
    let mut app = db.appender();
    for s in 0..series {
        let l = Labels::from_pairs([
            ("__name__", "http_requests_total".to_string()),
            ("job", format!("job{}", s % 10)),
            ("instance", format!("i{s}")),
        ])
        .expect("labels");
        let idx = app.add_series(SeriesKey::Owned(l));
        for i in 0..steps {
            app.add_sample(idx, i * 15_000, (i * (s % 7 + 1)) as f64);
        }
    }
    app.commit().expect("commit");
    let engine = Engine::default();
    let end = (steps - 1) * 15_000;
    for q in [
        "http_requests_total",
        "rate(http_requests_total[5m])",
        "sum by (job) (rate(http_requests_total[5m]))",
        "http_requests_total / on(instance) group_left sum by (instance) (http_requests_total)",
        "max_over_time(http_requests_total[10m:1m])",
    ] {
        let e = parse(q).expect("parse");
        let began = Instant::now();
        let out = engine.range(db.as_ref(), &e, 0, end, 15_000).expect("query");
        let el = began.elapsed();
        let points = (series * steps) as f64;
        println!(
            "{q:<90} {:>8.1} ms  {:>7.1} ns/series-step  ({} samples decoded)",
            el.as_secs_f64() * 1e3,
            el.as_secs_f64() * 1e9 / points,
            out.total_samples
        );
    }
}
