//! Series-at-a-time evaluation of the aggregations dashboards run most: `agg by (..) (selector)` and
//! `agg by (..) (f(selector[range]))` with `f` a one-value-per-window function (`rate`, `increase`,
//! `*_over_time`, ...; see `WindowFn`) and `agg` an O(1)-state operator (sum, avg, count, min, max,
//! group, stddev, stdvar).
//!
//! The step-wise evaluator builds, at every step, one element per series (an `Arc` clone, a hash of
//! its group labels, a name-removal lookup) and throws it away again. Here every series is decoded
//! once, into one reused buffer, walked over all steps, and folded into a `groups x steps` table of
//! accumulators; the group of a series is found once per query. Peak memory is then the series'
//! encoded chunks plus one decoded series plus the table, instead of every series decoded at once.
//! The result is stored per step and handed out when the step-wise evaluation reaches the node, so
//! everything around it (`histogram_quantile`, binary operators, the range assembly) is unchanged.
//!
//! Exactness: the accumulators are `eval::Acc`, fed with the series of each (group, step) in the
//! same order as the step-wise path feeds them, and each step's groups are listed in the order the
//! step-wise path would create them (by their first series present at that step). Cases whose
//! step-wise answer depends on more than that fall back to the step-wise path: name removal that
//! makes two series' labels equal (an error there, at the steps where both are present), and delayed
//! name removal under `by (__name__)`.
//!
//! Owns: recognising the shape, the per-series fold. Never touches: function semantics (it calls
//! `WindowFn::apply`), storage beyond decoding the `SelectedSeries` the evaluator selected, HTTP.

use super::ast::{AggOp, Expr, Grouping, VectorSel};
use super::eval::{Acc, Evaluator, R, U64Map, drop_name, group_hash, group_labels};
use super::functions::{WindowFn, counter_resets, has_counter_suffix, not_counter_info, rate_with_resets};
use super::value::Elem;
use crate::model::{Labels, METRIC_NAME, Sample, is_stale_nan};
use std::cell::Cell;
use std::sync::Arc;

/// Above this many (group, step) cells the table would cost more memory than the step-wise path's
/// per-step vectors: fall back. 48 bytes a cell; 2 M cells = 96 MiB.
const MAX_CELLS: usize = 2_000_000;

/// What the aggregated series contribute at a step.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Inner {
    /// The instant selector's value (lookback, staleness).
    Instant,
    /// A window function over `(t - range, t]`.
    Window { f: WindowFn, range_ms: i64 },
}

/// One aggregation node this module evaluates.
pub(crate) struct Plan<'e> {
    /// The `Expr::Aggregate` node: its address keys the stored result.
    pub node: &'e Expr,
    pub op: AggOp,
    pub grouping: &'e Option<Grouping>,
    pub sel: &'e VectorSel,
    pub inner: Inner,
}

fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(x) => unparen(x),
        _ => e,
    }
}

impl<'e> Plan<'e> {
    /// The plan for `e` if it has one of the supported shapes.
    pub(crate) fn of(e: &'e Expr, delayed_name_removal: bool) -> Option<Plan<'e>> {
        let Expr::Aggregate {
            op,
            expr,
            param: None,
            grouping,
        } = e
        else {
            return None;
        };
        if !matches!(
            op,
            AggOp::Sum
                | AggOp::Avg
                | AggOp::Count
                | AggOp::Min
                | AggOp::Max
                | AggOp::Group
                | AggOp::Stddev
                | AggOp::Stdvar
        ) {
            return None;
        }
        let (sel, inner) = match unparen(expr) {
            Expr::Vector(sel) => (sel, Inner::Instant),
            Expr::Call { func, args } if args.len() == 1 => {
                let f = WindowFn::of(func)?;
                let Expr::Matrix { sel, range_ms } = unparen(&args[0]) else {
                    return None;
                };
                (sel, Inner::Window { f, range_ms: *range_ms })
            }
            _ => return None,
        };
        // Under delayed name removal a `by (__name__)` group of name-dropping elements keeps the
        // name until the end and merges there: the step-wise path knows how.
        if delayed_name_removal
            && matches!(inner, Inner::Window { .. })
            && matches!(grouping, Some(Grouping::By(names)) if names.iter().any(|n| n == METRIC_NAME))
        {
            return None;
        }
        Some(Plan {
            node: e,
            op: *op,
            grouping,
            sel,
            inner,
        })
    }

    /// Every plan in `e` that is evaluated at the query's own steps only (not under a subquery).
    pub(crate) fn find(e: &'e Expr, delayed_name_removal: bool, out: &mut Vec<Plan<'e>>) {
        if let Some(p) = Plan::of(e, delayed_name_removal) {
            out.push(p);
            return;
        }
        match e {
            Expr::Paren(x) | Expr::Neg(x) => Plan::find(x, delayed_name_removal, out),
            Expr::Call { args, .. } => {
                for a in args {
                    Plan::find(a, delayed_name_removal, out);
                }
            }
            Expr::Aggregate { expr, param, .. } => {
                Plan::find(expr, delayed_name_removal, out);
                if let Some(p) = param {
                    Plan::find(p, delayed_name_removal, out);
                }
            }
            Expr::Binary { lhs, rhs, .. } => {
                Plan::find(lhs, delayed_name_removal, out);
                Plan::find(rhs, delayed_name_removal, out);
            }
            Expr::Subquery { .. } | Expr::Vector(_) | Expr::Matrix { .. } | Expr::Number(_) | Expr::String(_) => {}
        }
    }

    fn drops_name(&self) -> bool {
        matches!(self.inner, Inner::Window { .. })
    }
}

fn is_name_label(n: &str) -> bool {
    n == METRIC_NAME || n == "__type__" || n == "__unit__"
}

/// FNV-1a of the labels `drop_name` would leave, without building them.
fn hash_without_name(l: &Labels) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in l.iter().filter(|x| !is_name_label(&x.name)) {
        for b in x.name.bytes().chain([0xff]).chain(x.value.bytes()).chain([0xff]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The evaluation times of the query's steps.
pub(crate) fn step_times(start: i64, end: i64, interval: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let mut t = start;
    while t <= end {
        out.push(t);
        if interval <= 0 {
            break;
        }
        match t.checked_add(interval) {
            Some(n) => t = n,
            None => break,
        }
    }
    out
}

/// The encoded series of one selector, kept undecoded for a plan (see `Evaluator::precompute`).
pub(crate) struct Encoded {
    pub mint: i64,
    pub maxt: i64,
    pub is_range: bool,
    pub series: Vec<crate::storage::metrics::SelectedSeries>,
}

/// The result of a plan: one vector per step, `None` when the plan has to fall back.
pub(crate) fn evaluate(
    ev: &mut Evaluator<'_>,
    plan: &Plan<'_>,
    enc: &Encoded,
    times: &[i64],
) -> R<Option<Vec<Vec<Elem>>>> {
    let delayed = ev.opts.delayed_name_removal;
    let drops = plan.drops_name();
    // 1. Each series' group, from labels only.
    let mut group_of: Vec<usize> = Vec::with_capacity(enc.series.len());
    let mut index: U64Map<usize> = U64Map::default();
    let mut group_lbls: Vec<Labels> = Vec::new();
    let mut seen: U64Map<usize> = U64Map::default();
    let remove_name = drops && !delayed;
    // `by` without any of the name labels gives the same groups with or without them.
    let by_plain = matches!(plan.grouping, Some(Grouping::By(names)) if !names.iter().any(|n| is_name_label(n)));
    let mut dropped = Labels::default();
    for (si, s) in enc.series.iter().enumerate() {
        let mut elem_labels = &s.labels;
        if remove_name {
            // The step-wise path removes the name right after the function; two series left with
            // equal labels are an error there, at the steps where both have a value.
            let h = hash_without_name(&s.labels);
            if let Some(&j) = seen.get(&h)
                && drop_name(&enc.series[j].labels) == drop_name(&s.labels)
            {
                return Ok(None);
            }
            seen.insert(h, si);
            if !by_plain && plan.grouping.is_some() {
                dropped = drop_name(&s.labels);
                elem_labels = &dropped;
            }
        }
        let h = group_hash(elem_labels, plan.grouping);
        let g = *index.entry(h).or_insert_with(|| {
            group_lbls.push(group_labels(elem_labels, plan.grouping));
            group_lbls.len() - 1
        });
        group_of.push(g);
    }
    drop(dropped);
    let n = times.len();
    if group_lbls.len().saturating_mul(n) > MAX_CELLS {
        return Ok(None);
    }
    // 2. Fold every series over all steps. `first` holds the index of the first series that
    // reached a cell (u32::MAX: none yet).
    let mut acc: Vec<Acc> = vec![Acc::default(); group_lbls.len() * n];
    let mut first: Vec<u32> = vec![u32::MAX; group_lbls.len() * n];
    let mut buf: Vec<Sample> = Vec::new();
    let mut resets: Vec<u32> = Vec::new();
    let mut not_counters: Vec<String> = Vec::new();
    let lookback = ev.opts.lookback_delta_ms;
    for (si, s) in enc.series.iter().enumerate() {
        if si % 64 == 0 {
            ev.check_deadline()?;
        }
        buf.clear();
        s.decode_into(enc.mint, enc.maxt, &mut buf);
        if enc.is_range {
            buf.retain(|x| !is_stale_nan(x.v));
        }
        ev.count_samples(buf.len())?;
        if buf.is_empty() {
            continue;
        }
        let base = group_of[si] * n;
        let (cur_lo, cur_hi) = (Cell::new(0), Cell::new(0));
        let mut counter_checked = false;
        // Counter windows of `rate`/`increase` overlap many steps: find the resets once.
        let counter_rate = match plan.inner {
            Inner::Window {
                f: WindowFn::Rate { counter: true, rate },
                ..
            } => {
                counter_resets(&buf, &mut resets);
                Some(rate)
            }
            _ => None,
        };
        for (k, &t) in times.iter().enumerate() {
            let rt = ev.sel_time(plan.sel, t);
            let v = match plan.inner {
                Inner::Instant => {
                    let i = super::eval::seek(&buf, &cur_hi, rt);
                    if i == 0 {
                        continue;
                    }
                    let smp = buf[i - 1];
                    if smp.t <= rt.saturating_sub(lookback) || is_stale_nan(smp.v) {
                        continue;
                    }
                    smp.v
                }
                Inner::Window { f, range_ms } => {
                    let lo = rt.saturating_sub(range_ms);
                    let a = super::eval::seek(&buf, &cur_lo, lo);
                    let b = super::eval::seek(&buf, &cur_hi, rt);
                    if a >= b {
                        continue;
                    }
                    if !counter_checked && f.wants_counter() {
                        counter_checked = true;
                        if let Some(name) = s.labels.metric_name()
                            && !has_counter_suffix(name)
                            && !not_counters.iter().any(|x| x == name)
                        {
                            not_counters.push(name.to_string());
                        }
                    }
                    let v = match counter_rate {
                        Some(rate) => rate_with_resets(&buf, a, b, &resets, lo, rt, rate),
                        None => f.apply(&buf[a..b], lo, rt),
                    };
                    match v {
                        Some(v) => v,
                        None => continue,
                    }
                }
            };
            let c = base + k;
            if first[c] == u32::MAX {
                first[c] = si as u32;
                acc[c] = Acc::new(plan.op, v);
            } else {
                acc[c].add(plan.op, v);
            }
        }
    }
    for name in not_counters {
        ev.annotate(not_counter_info(&name));
    }
    // 3. One vector per step, groups in the order of their first series at that step.
    let labels: Vec<Arc<Labels>> = group_lbls.into_iter().map(Arc::new).collect();
    let mut out = Vec::with_capacity(n);
    let mut order: Vec<(u32, usize)> = Vec::new();
    for (k, &t) in times.iter().enumerate() {
        order.clear();
        for g in 0..labels.len() {
            let f = first[g * n + k];
            if f != u32::MAX {
                order.push((f, g));
            }
        }
        order.sort_unstable();
        out.push(
            order
                .iter()
                .map(|&(_, g)| Elem {
                    labels: Arc::clone(&labels[g]),
                    v: acc[g * n + k].finish(plan.op),
                    t,
                    drop_name: false,
                })
                .collect(),
        );
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::super::eval::run;
    use super::super::{EngineOptions, QueryOutput, QueryValue, parse};
    use super::Plan;
    use crate::model::{Labels, stale_nan};
    use crate::storage::metrics::{MetricsDb, MetricsOptions, SeriesKey};
    use std::sync::Arc;
    use std::time::Duration;

    /// A small xorshift generator: the data is random-looking but the same on every run.
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

    /// Counters (`a_total`, with resets), gauges (`b`, with NaN), two names that collide once the
    /// name is dropped (`x_total`, `y_total`), over 10 minutes with jittered scrapes, gaps and
    /// staleness markers.
    fn db() -> (Arc<MetricsDb>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut o = MetricsOptions::new(dir.path());
        o.block_duration = Duration::from_secs(100_000 * 86_400);
        o.too_far_in_future = Duration::from_secs(100_000 * 86_400);
        let db = MetricsDb::open(o).unwrap();
        let mut app = db.appender();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut series: Vec<(Labels, bool)> = Vec::new();
        for job in ["j1", "j2", "j3"] {
            for inst in ["i1", "i2", "i3", "i4"] {
                series.push((
                    Labels::from_pairs([("__name__", "a_total"), ("job", job), ("inst", inst)]).unwrap(),
                    true,
                ));
                series.push((
                    Labels::from_pairs([("__name__", "b"), ("job", job), ("inst", inst)]).unwrap(),
                    false,
                ));
            }
        }
        for name in ["x_total", "y_total"] {
            series.push((Labels::from_pairs([("__name__", name), ("job", "j1")]).unwrap(), true));
        }
        for (labels, counter) in series {
            let r = app.add_series(SeriesKey::Owned(labels));
            let (mut t, mut v) = (rng.below(15_000) as i64, 0.0);
            while t < 600_000 {
                match rng.below(40) {
                    0 => app.add_sample(r, t, stale_nan()),
                    1 => {} // a missed scrape
                    2 if !counter => app.add_sample(r, t, f64::NAN),
                    3 if counter => {
                        v = rng.below(5) as f64; // a reset
                        app.add_sample(r, t, v);
                    }
                    _ => {
                        v = if counter {
                            v + rng.below(1000) as f64 / 7.0
                        } else {
                            rng.below(2000) as f64 / 3.0 - 300.0
                        };
                        app.add_sample(r, t, v);
                    }
                }
                t += 10_000 + rng.below(10_000) as i64;
            }
        }
        app.commit().unwrap();
        (db, dir)
    }

    /// Everything a query answers, floats by their bits.
    fn render(r: Result<QueryOutput, super::super::QueryError>) -> String {
        let o = match r {
            Ok(o) => o,
            Err(e) => return format!("error: {e}"),
        };
        let f = |v: f64| format!("{:x}", v.to_bits());
        let body = match &o.value {
            QueryValue::Scalar { t, v } => format!("{t} {}", f(*v)),
            QueryValue::String { s, .. } => s.clone(),
            QueryValue::Vector(vec) => vec
                .iter()
                .map(|(l, t, v)| format!("{l} {t} {}", f(*v)))
                .collect::<Vec<_>>()
                .join("; "),
            QueryValue::Matrix(m) => m
                .iter()
                .map(|s| {
                    let pts: Vec<String> = s.samples.iter().map(|p| format!("{}@{}", f(p.v), p.t)).collect();
                    format!("{} [{}]", s.labels, pts.join(" "))
                })
                .collect::<Vec<_>>()
                .join("; "),
        };
        format!(
            "{body} | warnings {:?} | infos {:?} | samples {}",
            o.warnings, o.infos, o.total_samples
        )
    }

    /// Runs `q` with and without the fast paths, as an instant query at `t` (range =
    /// None) or a range query, and requires identical answers. Returns whether a plan applied.
    fn check(db: &MetricsDb, q: &str, delayed: bool, t: i64, range: Option<(i64, i64)>) -> bool {
        let opts = EngineOptions {
            delayed_name_removal: delayed,
            ..EngineOptions::default()
        };
        let e = parse(q).unwrap();
        let (end, step, instant) = match range {
            Some((end, step)) => (end, step, false),
            None => (t, 0, true),
        };
        let fast = render(run(&opts, db, &e, t, end, step, instant, true));
        let slow = render(run(&opts, db, &e, t, end, step, instant, false));
        assert_eq!(fast, slow, "{q} (delayed {delayed}, t {t}, range {range:?})");
        assert!(!slow.starts_with(" |"), "{q}: empty answer tests nothing");
        let mut plans = Vec::new();
        Plan::find(&e, delayed, &mut plans);
        !plans.is_empty()
    }

    #[test]
    fn fast_paths_answer_like_step_wise() {
        let (db, _d) = db();
        let db = db.as_ref();
        let inners = [
            "a_total",
            "b",
            "{__name__=~\"a_total|b\"}",
            "b offset 1m",
            "b @ 300",
            "rate(a_total[1m])",
            "increase(a_total[2m])",
            "delta(b[1m])",
            "irate(a_total[1m])",
            "idelta(b[45s])",
            "sum_over_time(b[1m])",
            "count_over_time({__name__=~\"a_total|b\"}[1m])",
            "min_over_time(b[30s])",
            "max_over_time((b[1m] offset 30s))",
            "rate(a_total[1m] @ 300)",
            "{__name__=~\"x_total|y_total\"}",
            "rate({__name__=~\"x_total|y_total\"}[1m])",
            "rate(b[1m])",
        ];
        let aggs = ["sum", "avg", "count", "min", "max", "group", "stddev", "stdvar"];
        let groupings = [
            "",
            " by (job)",
            " without (inst)",
            " by (__name__)",
            " by (job, __name__)",
        ];
        let mut planned = 0;
        for inner in inners {
            for agg in aggs {
                for g in groupings {
                    let q = format!("{agg}{g} ({inner})");
                    for delayed in [false, true] {
                        for (t, range) in [
                            (0, Some((600_000, 15_000))),
                            (7_000, Some((590_000, 7_000))),
                            (300_000, None),
                            (599_000, None),
                        ] {
                            planned += usize::from(check(db, &q, delayed, t, range));
                        }
                    }
                }
            }
        }
        // Around other operators, and left alone under a subquery.
        for q in [
            "clamp_max(sum by (inst) (rate(a_total[1m])), 1)",
            "sum by (job) (rate(a_total[1m])) / on (job) count by (job) (b)",
            "-sum(b) + 1",
            "max_over_time(sum by (job) (b)[2m:30s])",
            "topk(2, sum by (inst) (b))",
        ] {
            for delayed in [false, true] {
                check(db, q, delayed, 0, Some((600_000, 15_000)));
                check(db, q, delayed, 300_000, None);
            }
        }
        // Subqueries under range queries (`Evaluator::subquery_series`): steps shorter and longer
        // than the windows, offsets, `@`, nesting, and aggregations that see the series order.
        for q in [
            "max_over_time(rate(a_total[1m])[3m:30s])",
            "rate(b[2m:20s])",
            "sum_over_time(sum by (job) (b)[1m:15s])",
            "count_over_time((a_total > 100)[2m:10s] offset 30s)",
            "max_over_time(b[1m:7s] @ 300)",
            "sum(max_over_time(rate(a_total[1m])[2m:30s]))",
            "sum by (job) (last_over_time({__name__=~\"a_total|b\"}[1m:20s]))",
            "avg_over_time(b[30s:1m])",
            "quantile_over_time(0.5, b[2m:30s])",
            "rate({__name__=~\"x_total|y_total\"}[1m:15s])",
            "max_over_time(max_over_time(b[1m:10s])[2m:30s])",
            "count_over_time(vector(1)[1m:10s])",
            // `limitk` keeps the first series: it sees the order.
            "limitk(3, max_over_time(b[1m:20s]))",
            "limitk(5, sum_over_time({__name__=~\"a_total|b\"}[1m:20s]))",
        ] {
            for delayed in [false, true] {
                for (t, range) in [
                    (0, Some((600_000, 15_000))),
                    (7_000, Some((590_000, 7_000))),
                    (60_000, Some((600_000, 60_000))),
                    (300_000, None),
                ] {
                    check(db, q, delayed, t, range);
                }
            }
        }
        // The shapes above are what the plan is for: nearly all of them must take it.
        assert!(
            planned > 2000,
            "only {planned} evaluations took the series-at-a-time path"
        );
    }
}
