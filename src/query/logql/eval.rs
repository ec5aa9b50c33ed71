//! Query evaluation over a `LogSource`: log queries into streams, metric queries into per-step
//! vectors (range aggregations, vector aggregations, binary operations).
//!
//! Owns: time-window semantics (`(t-range, t]` for range aggregations, `[start, end)` for log
//! queries), limits and direction, series grouping, vector matching. Never touches: HTTP
//! parameters or JSON encoding (see `mod.rs`), or storage internals.

use super::Error;
use super::ast::*;
use super::pipeline::{self, ERROR, LabelsBuilder, Pairs};
use super::source::{EntriesVisitor, EntryRef, FirstPass, LenRef, LensVisitor, LogSource};
use crate::model::Labels;
use crate::model::MatchOp;
use std::collections::HashMap;

/// One output entry of a log query.
#[derive(Debug, Clone)]
pub struct OutEntry {
    pub ts: i64,
    pub line: String,
    pub sm: Pairs,
    pub parsed: Pairs,
}

#[derive(Debug, Clone)]
pub struct OutStream {
    pub labels: Pairs,
    pub entries: Vec<OutEntry>,
}

/// For each parser stage, the simple label filters later in the pipeline: Loki's parser hints
/// test them as soon as the parser extracts their label and drop the line on a mismatch, before
/// later duplicates or `label_format` could change the value.
fn parser_hints(stages: &[Stage]) -> Vec<Option<Vec<&LabelFilter>>> {
    let mut hints = vec![None; stages.len()];
    for (i, st) in stages.iter().enumerate() {
        let is_parser = matches!(
            st,
            Stage::Json(_) | Stage::Logfmt { .. } | Stage::Regexp(_) | Stage::Pattern(_) | Stage::Unpack
        );
        if !is_parser {
            continue;
        }
        let fs: Vec<&LabelFilter> = stages[i + 1..]
            .iter()
            .filter_map(|s| match s {
                Stage::LabelFilter(f) if pipeline::filter_name(f).is_some() => Some(f),
                _ => None,
            })
            .collect();
        if !fs.is_empty() {
            hints[i] = Some(fs);
        }
    }
    hints
}

fn sort_pairs(mut p: Pairs) -> Pairs {
    p.sort_by(|a, b| a.0.cmp(&b.0));
    p
}

pub fn labels_string(p: &Pairs) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in p.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(k);
        s.push('=');
        s.push_str(&super::parser::go_quote(v));
    }
    s.push('}');
    s
}

/// What a log query returns: `[start, end)`, at most `limit` entries, in `forward` or backward
/// order, one entry per `interval` when it is non-zero, with categorized labels or merged ones.
#[derive(Debug, Clone, Copy)]
pub struct LogParams {
    pub start: i64,
    pub end: i64,
    pub limit: usize,
    pub forward: bool,
    pub categorize: bool,
    pub interval: i64,
}

pub fn eval_log(src: &dyn LogSource, e: &LogExpr, p: LogParams) -> Result<Vec<OutStream>, Error> {
    let LogParams {
        start,
        end,
        limit,
        forward,
        categorize,
        interval,
    } = p;
    let hints = parser_hints(&e.stages);
    let lead = pipeline::leading_line_filters(&e.stages);
    let (hints, stages) = (&hints, &e.stages);
    // The store keeps the first `limit` accepted entries in output order and stops reading when
    // no other entry can be among them; it may run the pipeline on a few more.
    // Per pass (thread): the entries it accepted, and one builder and line buffer, reused: most
    // entries of a selective query fail. The pipeline (JSON here) was most of the bench's log
    // query CPU, on one thread.
    let mut founds: Vec<Vec<Option<(Pairs, OutEntry)>>> = (0..WORKERS).map(|_| Vec::new()).collect();
    let first = {
        let mut passes: Vec<Box<FirstPass<'_>>> = founds
            .iter_mut()
            .map(|found| {
                let mut lb = LabelsBuilder::default();
                let mut line = String::new();
                Box::new(move |labels: &Labels, en: &EntryRef<'_>| -> Option<usize> {
                    if !pipeline::prefilter(&stages[..lead], en.line.as_bytes()) {
                        return None;
                    }
                    lb.stream.truncate(labels.len());
                    for (i, l) in labels.iter().enumerate() {
                        match lb.stream.get_mut(i) {
                            Some(p) => {
                                p.0.clone_from(&l.name);
                                p.1.clone_from(&l.value);
                            }
                            None => lb.stream.push((l.name.clone(), l.value.clone())),
                        }
                    }
                    assign_pairs(&mut lb.sm, en.structured_metadata);
                    lb.parsed.clear();
                    line.clear();
                    line.push_str(en.line);
                    if !pipeline::run(&stages[lead..], &hints[lead..], en.ts_ns, &mut line, &mut lb, &[]) {
                        return None;
                    }
                    let key = if categorize {
                        sort_pairs(lb.stream.clone())
                    } else {
                        lb.merged()
                    };
                    found.push(Some((
                        key,
                        OutEntry {
                            ts: en.ts_ns,
                            line: line.clone(),
                            sm: sort_pairs(lb.sm.clone()),
                            parsed: sort_pairs(std::mem::take(&mut lb.parsed)),
                        },
                    )));
                    Some(found.len() - 1)
                }) as Box<FirstPass<'_>>
            })
            .collect();
        let mut refs: Vec<&mut FirstPass<'_>> = passes.iter_mut().map(|p| &mut **p as _).collect();
        src.select_first_split(
            &e.matchers,
            start,
            end,
            &e.required_substrings(),
            forward,
            limit,
            &mut refs,
        )
        .map_err(|x| Error::Internal(x.to_string()))?
    };
    let mut all: Vec<(Pairs, OutEntry)> = first
        .into_iter()
        .filter_map(|(p, i)| founds.get_mut(p)?.get_mut(i)?.take())
        .collect();
    // The store answers at most `limit` entries; Loki applies `interval` to those afterwards, so
    // an interval query returns far fewer than `limit` entries (recorded behaviour).
    all.truncate(limit);
    if interval > 0 {
        // Loki's `readStreams`: one entry per interval across the merged result.
        let mut last: Option<i64> = None;
        all.retain(|(_, e)| {
            let ok = match last {
                None => true,
                Some(l) => {
                    if forward {
                        e.ts >= l + interval
                    } else {
                        e.ts <= l - interval
                    }
                }
            };
            if ok {
                last = Some(e.ts);
            }
            ok
        });
    }
    all.truncate(limit);
    let mut idx: HashMap<Pairs, usize> = HashMap::new();
    let mut out: Vec<OutStream> = Vec::new();
    for (k, e) in all {
        let i = *idx.entry(k.clone()).or_insert_with(|| {
            out.push(OutStream {
                labels: k,
                entries: Vec::new(),
            });
            out.len() - 1
        });
        out[i].entries.push(e);
    }
    out.sort_by_cached_key(|s| labels_string(&s.labels));
    Ok(out)
}

/// A per-step evaluation result.
#[derive(Debug, Clone)]
pub enum StepVal {
    Scalar(Vec<f64>),
    /// For each step, the samples: (labels sorted by name, value).
    Vector(Vec<Vec<(Pairs, f64)>>),
}

pub struct Ctx<'a> {
    pub src: &'a dyn LogSource,
    /// Evaluation timestamps in nanoseconds.
    pub steps: Vec<i64>,
}

pub fn eval_metric(ctx: &Ctx, e: &MetricExpr) -> Result<StepVal, Error> {
    eval_hinted(ctx, e, &[])
}

/// `by_hint`: labels an enclosing `by` aggregation needs (Loki's parser hints).
fn eval_hinted(ctx: &Ctx, e: &MetricExpr, by_hint: &[String]) -> Result<StepVal, Error> {
    match e {
        MetricExpr::Literal(v) => Ok(StepVal::Scalar(vec![*v; ctx.steps.len()])),
        MetricExpr::VectorLit(v) => Ok(StepVal::Vector(
            ctx.steps.iter().map(|_| vec![(Vec::new(), *v)]).collect(),
        )),
        MetricExpr::Range(r) => eval_range(ctx, r, by_hint, None),
        MetricExpr::Vector {
            op,
            param,
            grouping,
            inner,
        } => {
            let hint: Vec<String> = match grouping {
                Some(g) if !g.without => g.labels.clone(),
                _ => Vec::new(),
            };
            // A plain `sum(...)` groups by nothing.
            let by_nothing = Grouping {
                without: false,
                labels: Vec::new(),
            };
            let v = match (inner.as_ref(), grouping.as_ref().unwrap_or(&by_nothing)) {
                (MetricExpr::Range(r), g) if can_inject(*op, r) => eval_range(ctx, r, &hint, Some(g))?,
                _ => eval_hinted(ctx, inner, &hint)?,
            };
            let StepVal::Vector(steps) = v else {
                return Err(Error::Parse(super::ParseError::plain(
                    "unexpected scalar in vector aggregation".into(),
                )));
            };
            Ok(StepVal::Vector(
                steps
                    .into_iter()
                    .map(|s| vector_agg(*op, *param, grouping.as_ref(), s))
                    .collect(),
            ))
        }
        MetricExpr::LabelReplace {
            inner,
            dst,
            replacement,
            src,
            re,
        } => {
            let StepVal::Vector(steps) = eval_metric(ctx, inner)? else {
                return Err(Error::Parse(super::ParseError::plain("label_replace on scalar".into())));
            };
            Ok(StepVal::Vector(
                steps
                    .into_iter()
                    .map(|s| {
                        s.into_iter()
                            .map(|(mut l, v)| {
                                let sv = l
                                    .iter()
                                    .find(|(k, _)| k == src)
                                    .map(|(_, v)| v.clone())
                                    .unwrap_or_default();
                                if let Some(c) = re.captures(&sv) {
                                    let mut res = String::new();
                                    c.expand(replacement, &mut res);
                                    l.retain(|(k, _)| k != dst);
                                    if !res.is_empty() {
                                        l.push((dst.clone(), res));
                                    }
                                    l = sort_pairs(l);
                                }
                                (l, v)
                            })
                            .collect()
                    })
                    .collect(),
            ))
        }
        MetricExpr::Binary {
            op,
            bool_mod,
            matching,
            lhs,
            rhs,
        } => {
            let l = eval_metric(ctx, lhs)?;
            let r = eval_metric(ctx, rhs)?;
            binary(*op, *bool_mod, matching, l, r)
        }
    }
}

struct Sample {
    ts: i64,
    v: f64,
}

/// Labels a label filter tests (for the parser's extraction set).
fn filter_names(f: &LabelFilter, out: &mut Vec<String>) {
    match f {
        LabelFilter::And(a, b) | LabelFilter::Or(a, b) => {
            filter_names(a, out);
            filter_names(b, out);
        }
        f => {
            if let Some(n) = pipeline::filter_name(f) {
                out.push(n.to_string());
            }
        }
    }
}

/// Loki's `canInjectVectorGrouping`: a `sum` directly around one of these range aggregations
/// (without a grouping of its own) reduces labels at the source, which sum's linearity allows.
fn can_inject(vec_op: VecOp, r: &RangeAgg) -> bool {
    vec_op == VecOp::Sum
        && r.grouping.is_none()
        && matches!(
            r.op,
            RangeOp::BytesOverTime | RangeOp::BytesRate | RangeOp::SumOverTime | RangeOp::Rate | RangeOp::CountOverTime
        )
}

/// The labels parsers need to extract when the series keep only `g`'s labels; `None` (all
/// labels) when a stage may read any label.
fn required_labels(r: &RangeAgg, g: &Grouping) -> Option<std::sync::Arc<[String]>> {
    if g.without {
        return None;
    }
    let mut names: Vec<String> = g.labels.clone();
    for st in &r.log.stages {
        match st {
            Stage::LineFormat(_) | Stage::LabelFormat(_) | Stage::Drop(_) | Stage::Keep(_) => return None,
            Stage::LabelFilter(f) => filter_names(f, &mut names),
            _ => {}
        }
    }
    if let Some(u) = &r.unwrap {
        names.push(u.label.clone());
        for f in &u.post {
            filter_names(f, &mut names);
        }
    }
    Some(names.into())
}

fn eval_range(ctx: &Ctx, r: &RangeAgg, by_hint: &[String], inject: Option<&Grouping>) -> Result<StepVal, Error> {
    // The grouping applied to each sample's labels before series are formed.
    let grouping = r.grouping.as_ref().or(inject);
    let only = grouping.and_then(|g| required_labels(r, g));
    let (Some(first), Some(last)) = (ctx.steps.first(), ctx.steps.last()) else {
        return Ok(StepVal::Vector(Vec::new()));
    };
    let qs = first - r.offset_ns - r.range_ns;
    let qe = last - r.offset_ns + 1;
    let hints = parser_hints(&r.log.stages);
    let mut first_wins: Vec<String> = by_hint.to_vec();
    if let Some(u) = &r.unwrap {
        first_wins.push(u.label.clone());
    }
    if let Some(g) = r.grouping.as_ref().filter(|g| !g.without) {
        first_wins.extend(g.labels.iter().cloned());
    }
    let lead = pipeline::leading_line_filters(&r.log.stages);
    let mut series = SeriesSet::default();
    if counted(r) {
        series.buckets = Some(Buckets::new(&ctx.steps, r.offset_ns, r.range_ns));
    }
    if lead == r.log.stages.len() && r.unwrap.is_none() {
        collect_simple(ctx, r, grouping, qs, qe, &mut series)?;
    } else {
        let lb0 = LabelsBuilder {
            only: only.clone(),
            ..LabelsBuilder::default()
        };
        // A `by` grouping's names, sorted and unique: the order of the series' labels.
        let mut by_names: Vec<&str> = grouping
            .filter(|g| !g.without)
            .map(|g| g.labels.iter().map(String::as_str).collect())
            .unwrap_or_default();
        by_names.sort_unstable();
        by_names.dedup();
        let (by_names, hints, first_wins) = (&by_names, &hints, &first_wins);
        // One builder, line buffer and series set per visitor, each on its own thread: the
        // pipeline (JSON, logfmt) was most of these queries' CPU, on one thread while two
        // decompressed. Merged below in the order of the visit's places.
        let mut parts: Vec<SeriesSet> = (0..WORKERS).map(|_| series.empty_like()).collect();
        {
            let mut visitors: Vec<Box<EntriesVisitor<'_>>> = parts
                .iter_mut()
                .map(|series| {
                    let mut lb = lb0.clone();
                    let mut line = String::new();
                    Box::new(move |place: usize, labels: &Labels, entries: &[EntryRef<'_>]| {
                        series.place = place;
                        let base: Pairs = labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect();
                        for en in entries {
                            if !pipeline::prefilter(&r.log.stages[..lead], en.line.as_bytes()) {
                                continue;
                            }
                            // One builder and line buffer for the whole query: their strings are reused.
                            assign_pairs(&mut lb.stream, &base);
                            assign_pairs(&mut lb.sm, en.structured_metadata);
                            lb.parsed.clear();
                            line.clear();
                            line.push_str(en.line);
                            if !pipeline::run(
                                &r.log.stages[lead..],
                                &hints[lead..],
                                en.ts_ns,
                                &mut line,
                                &mut lb,
                                first_wins,
                            ) {
                                continue;
                            }
                            let v = match &r.unwrap {
                                None => match r.op {
                                    RangeOp::BytesOverTime | RangeOp::BytesRate => line.len() as f64,
                                    _ => 1.0,
                                },
                                Some(u) => {
                                    // An absent or empty label yields no sample (not an error) in Loki.
                                    let raw = match lb.get(&u.label) {
                                        Some(v) if !v.is_empty() => v.to_string(),
                                        _ => continue,
                                    };
                                    let conv = match u.conv {
                                        UnwrapConv::None => pipeline::go_parse_float(&raw),
                                        UnwrapConv::Duration => super::parser::parse_duration(&raw)
                                            .map(super::parser::duration_seconds)
                                            .map_err(|e| format!("time: {e}")),
                                        UnwrapConv::Bytes => super::parser::parse_bytes(&raw).ok_or_else(|| {
                                            format!("strconv.ParseFloat: parsing {raw:?}: invalid syntax")
                                        }),
                                    };
                                    let mut v = 0.0;
                                    match conv {
                                        Ok(x) => v = x,
                                        Err(e) => {
                                            if !lb.has_err() {
                                                lb.set_err("SampleExtractionErr", Some(e));
                                            }
                                        }
                                    }
                                    let mut keep = true;
                                    for f in &u.post {
                                        if !pipeline::label_filter(f, &mut lb) {
                                            keep = false;
                                            break;
                                        }
                                    }
                                    if !keep {
                                        continue;
                                    }
                                    if !lb.has_err() {
                                        lb.del(&u.label);
                                    }
                                    v
                                }
                            };
                            let slot = series.slot_for(&lb, grouping, by_names);
                            series.add(slot, en.ts_ns, v);
                        }
                    }) as Box<EntriesVisitor<'_>>
                })
                .collect();
            let mut refs: Vec<&mut EntriesVisitor<'_>> = visitors.iter_mut().map(|v| &mut **v as _).collect();
            ctx.src
                .visit_needles_split(&r.log.matchers, qs, qe, &r.log.required_substrings(), &mut refs)
                .map_err(|x| Error::Internal(x.to_string()))?;
        }
        series = SeriesSet::merge(parts);
    }
    if series.buckets.is_some() {
        return Ok(counted_windows(ctx, r, series));
    }
    let SeriesSet { keys, samples, .. } = series;
    let mut samples = samples;
    for s in &mut samples {
        // Batches arrive block by block: a few sorted runs, which the stable sort merges.
        s.sort_by_key(|x| x.ts);
    }
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|a, b| keys[*a].cmp(&keys[*b]));
    let sums = matches!(
        r.op,
        RangeOp::BytesOverTime | RangeOp::BytesRate | RangeOp::SumOverTime | RangeOp::Rate
    );
    let prefix: Vec<Option<Vec<f64>>> = samples
        .iter()
        .map(|s| if sums { exact_prefix_sums(s) } else { None })
        .collect();
    let ascending = ctx.steps.windows(2).all(|w| w[0] <= w[1]);
    // Window bounds per series: with ascending steps both only move forward, so each sample is
    // passed over once per query rather than searched for at every step.
    let mut bounds: Vec<(usize, usize)> = vec![(0, 0); keys.len()];
    let mut out = Vec::with_capacity(ctx.steps.len());
    for &t in &ctx.steps {
        let we = t - r.offset_ns;
        let ws = we - r.range_ns;
        let mut vec: Vec<(Pairs, f64)> = Vec::new();
        let mut any = false;
        for &i in &order {
            let k = &keys[i];
            let ss = &samples[i];
            let (lo, hi) = if ascending {
                let (lo, hi) = &mut bounds[i];
                while *lo < ss.len() && ss[*lo].ts <= ws {
                    *lo += 1;
                }
                *hi = (*hi).max(*lo);
                while *hi < ss.len() && ss[*hi].ts <= we {
                    *hi += 1;
                }
                (*lo, *hi)
            } else {
                (ss.partition_point(|x| x.ts <= ws), ss.partition_point(|x| x.ts <= we))
            };
            if lo >= hi {
                continue;
            }
            let wsum = || match &prefix[i] {
                Some(p) => p[hi] - p[lo],
                None => ss[lo..hi].iter().map(|x| x.v).sum::<f64>(),
            };
            any = true;
            if r.op == RangeOp::AbsentOverTime {
                continue;
            }
            if r.unwrap.is_some()
                && let Some((_, name)) = k.iter().find(|(n, _)| n == ERROR)
            {
                return Err(Error::BadRequest(format!(
                    "pipeline error: '{name}' for series: '{}'.\nUse a label filter to intentionally skip this error. (e.g | __error__!=\"{name}\").\nTo skip all potential errors you can match empty errors.(e.g __error__=\"\")\nThe label filter can also be specified after unwrap. (e.g | unwrap latency | __error__=\"\" )\n",
                    labels_string(k)
                )));
            }
            let w = &ss[lo..hi];
            let secs = r.range_ns as f64 / 1e9;
            let v = match r.op {
                RangeOp::CountOverTime => w.len() as f64,
                RangeOp::Rate => {
                    if r.unwrap.is_some() {
                        wsum() / secs
                    } else {
                        w.len() as f64 / secs
                    }
                }
                RangeOp::BytesOverTime | RangeOp::SumOverTime => wsum(),
                RangeOp::BytesRate => wsum() / secs,
                RangeOp::AvgOverTime => {
                    // Loki's incremental mean (Prometheus's avg_over_time before 2.x kahan).
                    let mut mean = 0.0;
                    let mut n = 0.0;
                    for x in w {
                        n += 1.0;
                        mean += (x.v - mean) / n;
                    }
                    mean
                }
                RangeOp::MinOverTime => w
                    .iter()
                    .map(|x| x.v)
                    .fold(f64::NAN, |a, b| if a.is_nan() || b < a { b } else { a }),
                RangeOp::MaxOverTime => w
                    .iter()
                    .map(|x| x.v)
                    .fold(f64::NAN, |a, b| if a.is_nan() || b > a { b } else { a }),
                RangeOp::StdvarOverTime | RangeOp::StddevOverTime => {
                    let (mut n, mut mean, mut m2) = (0.0, 0.0, 0.0);
                    for x in w {
                        n += 1.0;
                        let d = x.v - mean;
                        mean += d / n;
                        m2 += d * (x.v - mean);
                    }
                    let var = m2 / n;
                    if r.op == RangeOp::StddevOverTime {
                        var.sqrt()
                    } else {
                        var
                    }
                }
                RangeOp::QuantileOverTime => quantile(r.param.unwrap_or(0.0), w.iter().map(|x| x.v).collect()),
                RangeOp::FirstOverTime => w[0].v,
                RangeOp::LastOverTime => w[w.len() - 1].v,
                RangeOp::RateCounter => rate_counter(w, r.range_ns),
                RangeOp::AbsentOverTime => 0.0,
            };
            vec.push((k.clone(), v));
        }
        if r.op == RangeOp::AbsentOverTime && !any {
            {
                let mut l: Pairs = r
                    .log
                    .matchers
                    .iter()
                    .filter(|m| m.op == MatchOp::Equal)
                    .map(|m| (m.name.clone(), m.value.clone()))
                    .collect();
                l = sort_pairs(l);
                l.dedup_by(|a, b| a.0 == b.0);
                vec.push((l, 1.0));
            }
        }
        out.push(vec);
    }
    Ok(StepVal::Vector(out))
}

/// Series of a range aggregation in order of appearance, with their samples. Looked up by a
/// hash of their label pairs, so that a borrowed key can be tried without building an owned one.
#[derive(Default)]
struct SeriesSet {
    hasher: std::collections::hash_map::RandomState,
    index: HashMap<u64, Vec<usize>>,
    keys: Vec<Pairs>,
    samples: Vec<Vec<Sample>>,
    /// Set for counting aggregations: samples are then counted into `runs`, not kept.
    buckets: Option<Buckets>,
    runs: Vec<Vec<Run>>,
    /// The bucket of the last sample added: a block's entries come in time order.
    hint: usize,
    /// The place in the visit of the batch being read, and per series where each place's samples
    /// start: (place, index in `samples`), so that [`SeriesSet::merge`] can order them.
    place: usize,
    segs: Vec<Vec<(usize, usize)>>,
}

/// Visitors a range aggregation's read is shared out among: the two cores of the machine this is
/// measured on (the read used two threads before: one decompressing, one running the pipeline).
const WORKERS: usize = 2;

/// The window bounds of every step (`ws` and `we`), sorted and unique. Bucket `b` holds the
/// timestamps `t` with `b` bounds below `t`, so the window `(bounds[a], bounds[b]]` is buckets
/// `a+1 ..= b`: a count or byte sum over a window is a difference of two prefix sums over buckets.
#[derive(Clone)]
struct Buckets {
    bounds: Vec<i64>,
}

/// Consecutive samples of one series in one bucket: how many and their summed values (lengths
/// or ones, exact in integers).
#[derive(Debug, Clone, Copy)]
struct Run {
    bucket: u32,
    count: u64,
    sum: u64,
}

impl Buckets {
    fn new(steps: &[i64], offset: i64, range: i64) -> Self {
        let mut bounds: Vec<i64> = steps.iter().flat_map(|&t| [t - offset - range, t - offset]).collect();
        bounds.sort_unstable();
        bounds.dedup();
        Buckets { bounds }
    }

    fn of(&self, ts: i64, hint: usize) -> usize {
        let b = &self.bounds;
        if hint <= b.len() && (hint == 0 || b[hint - 1] < ts) && (hint == b.len() || ts <= b[hint]) {
            return hint;
        }
        b.partition_point(|&x| x < ts)
    }

    /// The index of a bound (every step's bounds are in the list).
    fn index(&self, t: i64) -> usize {
        self.bounds.partition_point(|&x| x < t)
    }
}

/// Range aggregations whose windows need only a count or an integer sum of their samples.
fn counted(r: &RangeAgg) -> bool {
    r.unwrap.is_none()
        && matches!(
            r.op,
            RangeOp::CountOverTime | RangeOp::Rate | RangeOp::BytesOverTime | RangeOp::BytesRate
        )
}

impl SeriesSet {
    fn hash<'a>(&self, pairs: impl Iterator<Item = (&'a str, &'a str)>) -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = self.hasher.build_hasher();
        for (k, v) in pairs {
            k.hash(&mut h);
            v.hash(&mut h);
        }
        h.finish()
    }

    fn find(&self, h: u64, key: &[(&str, &str)]) -> Option<usize> {
        self.index.get(&h)?.iter().copied().find(|&i| {
            let k = &self.keys[i];
            k.len() == key.len() && k.iter().zip(key).all(|(a, b)| a.0 == b.0 && a.1 == b.1)
        })
    }

    fn insert(&mut self, h: u64, key: Pairs) -> usize {
        let i = self.keys.len();
        self.index.entry(h).or_default().push(i);
        self.keys.push(key);
        self.samples.push(Vec::new());
        self.runs.push(Vec::new());
        self.segs.push(Vec::new());
        i
    }

    /// An empty set counting (or not) as this one does.
    fn empty_like(&self) -> SeriesSet {
        SeriesSet {
            buckets: self.buckets.clone(),
            ..SeriesSet::default()
        }
    }

    /// One set of the series of `parts`: runs appended (their sums do not depend on order),
    /// samples concatenated in the order of the places they were read at, which is the order one
    /// visitor reading every batch would have added them in, whichever visitor read which.
    fn merge(parts: Vec<SeriesSet>) -> SeriesSet {
        let mut parts = parts.into_iter();
        let Some(mut out) = parts.next() else {
            return SeriesSet::default();
        };
        let rest: Vec<SeriesSet> = parts.collect();
        if rest.is_empty() {
            return out;
        }
        // Per series of `out`: (place, part, series in part, range in its samples).
        type Piece = (usize, usize, usize, std::ops::Range<usize>);
        let pieces_of = |p: &SeriesSet, part: usize, j: usize, v: &mut Vec<Piece>| {
            let segs = &p.segs[j];
            for (k, &(place, at)) in segs.iter().enumerate() {
                let to = segs.get(k + 1).map_or(p.samples[j].len(), |s| s.1);
                v.push((place, part, j, at..to));
            }
        };
        let mut pieces: Vec<Vec<Piece>> = Vec::with_capacity(out.keys.len());
        for j in 0..out.keys.len() {
            let mut v = Vec::new();
            pieces_of(&out, 0, j, &mut v);
            pieces.push(v);
        }
        for (pi, p) in rest.iter().enumerate() {
            for (j, key) in p.keys.iter().enumerate() {
                let i = out.slot(key.clone());
                if i == pieces.len() {
                    pieces.push(Vec::new());
                }
                out.runs[i].extend_from_slice(&p.runs[j]);
                pieces_of(p, pi + 1, j, &mut pieces[i]);
            }
        }
        if out.buckets.is_some() {
            return out;
        }
        for (i, mut ps) in pieces.into_iter().enumerate() {
            // Every place was read by one visitor: the sort is total.
            ps.sort_unstable_by_key(|p| p.0);
            let mut merged = Vec::with_capacity(ps.iter().map(|p| p.3.len()).sum());
            for (_, part, j, range) in ps {
                let src = if part == 0 {
                    &out.samples[j]
                } else {
                    &rest[part - 1].samples[j]
                };
                merged.extend(src[range].iter().map(|x| Sample { ts: x.ts, v: x.v }));
            }
            out.samples[i] = merged;
        }
        out
    }

    /// Adds a sample to series `i`; counted, `v` is a non-negative integer (one, or a length).
    fn add(&mut self, i: usize, ts: i64, v: f64) {
        let Some(b) = &self.buckets else {
            if self.segs[i].last().is_none_or(|s| s.0 != self.place) {
                self.segs[i].push((self.place, self.samples[i].len()));
            }
            self.samples[i].push(Sample { ts, v });
            return;
        };
        let bucket = b.of(ts, self.hint);
        self.hint = bucket;
        let runs = &mut self.runs[i];
        match runs.last_mut() {
            Some(r) if r.bucket as usize == bucket => {
                r.count += 1;
                r.sum += v as u64;
            }
            _ => runs.push(Run {
                bucket: bucket as u32,
                count: 1,
                sum: v as u64,
            }),
        }
    }

    fn slot(&mut self, key: Pairs) -> usize {
        let refs: Vec<(&str, &str)> = key.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let h = self.hash(refs.iter().copied());
        if let Some(i) = self.find(h, &refs) {
            return i;
        }
        self.insert(h, key)
    }

    /// The series of an entry: `group_labels(&lb.merged(), g)`. For a `by` grouping (`by_names`
    /// sorted and unique) the key is looked up borrowed, and copied only for a new series.
    fn slot_for(&mut self, lb: &LabelsBuilder, g: Option<&Grouping>, by_names: &[&str]) -> usize {
        match g {
            Some(g) if !g.without => {
                // `merged` keeps a name's first value among stream, metadata, parsed.
                let key: Vec<(&str, &str)> = by_names
                    .iter()
                    .filter_map(|n| {
                        [&lb.stream, &lb.sm, &lb.parsed]
                            .into_iter()
                            .find_map(|p| p.iter().find(|(k, _)| k == n))
                            .map(|(k, v)| (k.as_str(), v.as_str()))
                    })
                    .collect();
                let h = self.hash(key.iter().copied());
                if let Some(i) = self.find(h, &key) {
                    return i;
                }
                let owned = key.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                self.insert(h, owned)
            }
            _ => {
                let mut labels = lb.merged();
                if let Some(g) = g {
                    labels = group_labels(&labels, g);
                }
                self.slot(labels)
            }
        }
    }
}

/// `dst = src`, reusing `dst`'s strings.
fn assign_pairs(dst: &mut Pairs, src: &[(String, String)]) {
    dst.truncate(src.len());
    for (d, s) in dst.iter_mut().zip(src) {
        d.0.clone_from(&s.0);
        d.1.clone_from(&s.1);
    }
    let n = dst.len();
    dst.extend(src[n..].iter().cloned());
}

/// Prefix sums of a series' values when they give every window's sum exactly: non-negative
/// integers (line lengths, counts) whose total stays below 2^53. Otherwise `None` and windows
/// are summed one by one, in order, as the naive definition does.
fn exact_prefix_sums(s: &[Sample]) -> Option<Vec<f64>> {
    let mut p = Vec::with_capacity(s.len() + 1);
    let mut acc = 0.0f64;
    p.push(acc);
    for x in s {
        if !(x.v >= 0.0 && x.v.fract() == 0.0 && x.v.is_sign_positive()) {
            return None;
        }
        acc += x.v;
        p.push(acc);
    }
    if acc >= 9_007_199_254_740_992.0 {
        return None;
    }
    Some(p)
}

/// The steps of a counted range aggregation ([`counted`]) from its series' runs: per series, runs
/// sorted by bucket and prefix-summed, so a window is two lookups. This replaced keeping every
/// sample, a stable sort of them and a prefix sum in floats; the integer sums are the same values
/// (the float prefix sums were exact: counts and lengths, below 2^53).
fn counted_windows(ctx: &Ctx, r: &RangeAgg, series: SeriesSet) -> StepVal {
    let SeriesSet {
        keys, runs, buckets, ..
    } = series;
    let Some(buckets) = buckets else {
        return StepVal::Vector(Vec::new());
    };
    // Per series: (bucket, prefix count, prefix sum) after each distinct bucket, from (0, 0, 0).
    let prefix: Vec<Vec<(usize, u64, u64)>> = runs
        .into_iter()
        .map(|mut rs| {
            // Integer sums: the order of equal buckets does not matter.
            rs.sort_unstable_by_key(|x| x.bucket);
            let mut p: Vec<(usize, u64, u64)> = Vec::with_capacity(rs.len() + 1);
            p.push((0, 0, 0));
            for x in rs {
                let (b, c, s) = p[p.len() - 1];
                if p.len() > 1 && b == x.bucket as usize {
                    let last = p.len() - 1;
                    p[last] = (b, c + x.count, s + x.sum);
                } else {
                    p.push((x.bucket as usize, c + x.count, s + x.sum));
                }
            }
            p
        })
        .collect();
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|a, b| keys[*a].cmp(&keys[*b]));
    let ascending = ctx.steps.windows(2).all(|w| w[0] <= w[1]);
    // Window bounds per series as positions in its prefix list (entries 1.. are buckets).
    let mut pos: Vec<(usize, usize)> = vec![(1, 1); keys.len()];
    let secs = r.range_ns as f64 / 1e9;
    let mut out = Vec::with_capacity(ctx.steps.len());
    for &t in &ctx.steps {
        let we = t - r.offset_ns;
        let ws = we - r.range_ns;
        // Buckets a+1 ..= b.
        let (a, b) = (buckets.index(ws), buckets.index(we));
        let mut vec: Vec<(Pairs, f64)> = Vec::new();
        for &i in &order {
            let p = &prefix[i];
            // lo: first bucket > a; hi: first bucket > b (positions in `p`, >= 1).
            let (lo, hi) = if ascending {
                let (lo, hi) = &mut pos[i];
                while *lo < p.len() && p[*lo].0 <= a {
                    *lo += 1;
                }
                *hi = (*hi).max(*lo);
                while *hi < p.len() && p[*hi].0 <= b {
                    *hi += 1;
                }
                (*lo, *hi)
            } else {
                let q = &p[1..];
                (1 + q.partition_point(|x| x.0 <= a), 1 + q.partition_point(|x| x.0 <= b))
            };
            if lo >= hi {
                continue;
            }
            let count = p[hi - 1].1 - p[lo - 1].1;
            let sum = p[hi - 1].2 - p[lo - 1].2;
            let v = match r.op {
                RangeOp::Rate => count as f64 / secs,
                RangeOp::BytesOverTime => sum as f64,
                RangeOp::BytesRate => sum as f64 / secs,
                _ => count as f64,
            };
            vec.push((keys[i].clone(), v));
        }
        out.push(vec);
    }
    StepVal::Vector(out)
}

/// Range aggregations whose pipeline is only line filters and that unwrap nothing: a sample's
/// labels then depend only on its stream and its structured metadata, so they are worked out once
/// per (block, metadata) rather than per entry, and without any filter the lines are not read.
fn collect_simple(
    ctx: &Ctx,
    r: &RangeAgg,
    grouping: Option<&Grouping>,
    qs: i64,
    qe: i64,
    series: &mut SeriesSet,
) -> Result<(), Error> {
    let bytes = matches!(r.op, RangeOp::BytesOverTime | RangeOp::BytesRate);
    // The same labels the general path gives an entry that went through no label stage.
    let key_of = |labels: &Labels, sm: &[(String, String)]| -> Pairs {
        let lb = LabelsBuilder {
            stream: labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect(),
            sm: sm.to_vec(),
            parsed: Vec::new(),
            only: None,
        };
        let l = lb.merged();
        match grouping {
            Some(g) => group_labels(&l, g),
            None => l,
        }
    };
    // Per batch (one stream): metadata seen → series. Bounded, so that metadata unique per entry
    // (a trace id) degrades to a key per entry instead of a quadratic search.
    const CACHE: usize = 8;
    // The lent slice's address first (valid within a batch, when the cache is cleared): a store
    // lends entries with the same metadata one slice (column blocks do), then no string compares.
    type Cached = (usize, usize, Pairs, usize);
    let slot_of = |cache: &mut Vec<Cached>, series: &mut SeriesSet, labels: &Labels, sm: &[(String, String)]| {
        let at = (sm.as_ptr() as usize, sm.len());
        if let Some(c) = cache.iter().find(|c| (c.0, c.1) == at) {
            return c.3;
        }
        if let Some(c) = cache.iter().find(|c| c.2.as_slice() == sm) {
            return c.3;
        }
        let i = series.slot(key_of(labels, sm));
        if cache.len() < CACHE {
            cache.push((at.0, at.1, sm.to_vec(), i));
        }
        i
    };
    let slot_of = &slot_of;
    // One series set and cache per visitor (thread), merged after.
    let mut parts: Vec<(SeriesSet, Vec<Cached>)> = (0..WORKERS)
        .map(|_| (series.empty_like(), Vec::with_capacity(CACHE)))
        .collect();
    let res = if r.log.stages.is_empty() {
        let mut visitors: Vec<Box<LensVisitor<'_>>> = parts
            .iter_mut()
            .map(|(series, cache)| {
                Box::new(move |place: usize, labels: &Labels, entries: &[LenRef<'_>]| {
                    series.place = place;
                    cache.clear();
                    for en in entries {
                        let i = slot_of(cache, series, labels, en.structured_metadata);
                        let v = if bytes { en.len as f64 } else { 1.0 };
                        series.add(i, en.ts_ns, v);
                    }
                }) as Box<LensVisitor<'_>>
            })
            .collect();
        let mut refs: Vec<&mut LensVisitor<'_>> = visitors.iter_mut().map(|v| &mut **v as _).collect();
        ctx.src.visit_lens_split(&r.log.matchers, qs, qe, &mut refs)
    } else {
        let mut visitors: Vec<Box<EntriesVisitor<'_>>> = parts
            .iter_mut()
            .map(|(series, cache)| {
                Box::new(move |place: usize, labels: &Labels, entries: &[EntryRef<'_>]| {
                    series.place = place;
                    cache.clear();
                    for en in entries {
                        if !pipeline::prefilter(&r.log.stages, en.line.as_bytes()) {
                            continue;
                        }
                        let i = slot_of(cache, series, labels, en.structured_metadata);
                        let v = if bytes { en.line.len() as f64 } else { 1.0 };
                        series.add(i, en.ts_ns, v);
                    }
                }) as Box<EntriesVisitor<'_>>
            })
            .collect();
        let mut refs: Vec<&mut EntriesVisitor<'_>> = visitors.iter_mut().map(|v| &mut **v as _).collect();
        ctx.src
            .visit_needles_split(&r.log.matchers, qs, qe, &r.log.required_substrings(), &mut refs)
    };
    res.map_err(|x| Error::Internal(x.to_string()))?;
    *series = SeriesSet::merge(parts.into_iter().map(|(s, _)| s).collect());
    Ok(())
}

/// Loki's `extrapolatedRate(..., isCounter=true, isRate=true)`, with its range start taken from
/// the first sample (as Loki does), in milliseconds.
fn rate_counter(w: &[Sample], range_ns: i64) -> f64 {
    if w.len() < 2 {
        return 0.0;
    }
    let ms = |ns: i64| ns / 1_000_000;
    let first = &w[0];
    let last = &w[w.len() - 1];
    let range_ms = range_ns / 1_000_000;
    let range_start = ms(first.ts) - range_ms;
    let range_end = ms(last.ts);
    let mut result = last.v - first.v;
    let mut last_v = 0.0;
    for s in w {
        if s.v < last_v {
            result += last_v;
        }
        last_v = s.v;
    }
    let mut dur_start = (ms(first.ts) - range_start) as f64 / 1000.0;
    let dur_end = (range_end - ms(last.ts)) as f64 / 1000.0;
    let sampled = (ms(last.ts) - ms(first.ts)) as f64 / 1000.0;
    let avg = sampled / (w.len() - 1) as f64;
    if result > 0.0 && first.v >= 0.0 {
        let to_zero = sampled * (first.v / result);
        if to_zero < dur_start {
            dur_start = to_zero;
        }
    }
    let thr = avg * 1.1;
    let mut ext = sampled;
    ext += if dur_start < thr { dur_start } else { avg / 2.0 };
    ext += if dur_end < thr { dur_end } else { avg / 2.0 };
    result *= ext / sampled;
    result / (range_ns as f64 / 1e9)
}

/// Prometheus `quantile` with linear interpolation.
fn quantile(q: f64, mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    let n = v.len() as f64;
    let rank = q * (n - 1.0);
    let lo = rank.floor().max(0.0);
    let hi = (lo + 1.0).min(n - 1.0);
    let w = rank - lo;
    if !v.iter().any(|x| x.is_nan() || (*x == 0.0 && x.is_sign_negative())) {
        // Without NaN and -0, values that compare equal are the same bits, so the sorted order is
        // unique and selecting the two ranks gives what sorting does, in linear time (sorting
        // every 5m window was a fifth of the bench's `quantile_over_time` query).
        let (_, a, rest) = v.select_nth_unstable_by(lo as usize, f64::total_cmp);
        let a = *a;
        let b = if hi > lo {
            rest.iter().copied().min_by(f64::total_cmp).unwrap_or(a)
        } else {
            a
        };
        return a * (1.0 - w) + b * w;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[lo as usize] * (1.0 - w) + v[hi as usize] * w
}

fn group_labels(l: &Pairs, g: &Grouping) -> Pairs {
    if g.without {
        l.iter().filter(|(k, _)| !g.labels.contains(k)).cloned().collect()
    } else {
        l.iter().filter(|(k, _)| g.labels.contains(k)).cloned().collect()
    }
}

fn vector_agg(op: VecOp, param: Option<f64>, g: Option<&Grouping>, s: Vec<(Pairs, f64)>) -> Vec<(Pairs, f64)> {
    match op {
        VecOp::Sort | VecOp::SortDesc => {
            let mut s = s;
            s.sort_by(|a, b| {
                let o = a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal);
                if op == VecOp::Sort { o } else { o.reverse() }
            });
            return s;
        }
        VecOp::Topk | VecOp::Bottomk => {
            let k = param.unwrap_or(1.0) as usize;
            let mut groups: Vec<(Pairs, Vec<(Pairs, f64)>)> = Vec::new();
            for (l, v) in s {
                let key = match g {
                    Some(g) => group_labels(&l, g),
                    None => Vec::new(),
                };
                match groups.iter_mut().find(|(k2, _)| *k2 == key) {
                    Some((_, m)) => m.push((l, v)),
                    None => groups.push((key, vec![(l, v)])),
                }
            }
            let mut out = Vec::new();
            for (_, mut m) in groups {
                m.sort_by(|a, b| {
                    let o = b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal);
                    if op == VecOp::Topk { o } else { o.reverse() }
                });
                m.truncate(k);
                out.extend(m);
            }
            return out;
        }
        _ => {}
    }
    let mut groups: Vec<(Pairs, Vec<f64>)> = Vec::new();
    let mut index: HashMap<Pairs, usize> = HashMap::new();
    for (l, v) in s {
        let key = match g {
            Some(g) => group_labels(&l, g),
            None => Vec::new(),
        };
        match index.get(&key) {
            Some(&i) => groups[i].1.push(v),
            None => {
                index.insert(key.clone(), groups.len());
                groups.push((key, vec![v]));
            }
        }
    }
    groups
        .into_iter()
        .map(|(k, vs)| {
            let n = vs.len() as f64;
            let v = match op {
                VecOp::Sum => vs.iter().sum(),
                VecOp::Avg => {
                    let mut mean = 0.0;
                    for (i, x) in vs.iter().enumerate() {
                        mean += (x - mean) / (i as f64 + 1.0);
                    }
                    mean
                }
                VecOp::Min => vs
                    .iter()
                    .copied()
                    .fold(f64::NAN, |a, b| if a.is_nan() || b < a { b } else { a }),
                VecOp::Max => vs
                    .iter()
                    .copied()
                    .fold(f64::NAN, |a, b| if a.is_nan() || b > a { b } else { a }),
                VecOp::Count => n,
                VecOp::Stddev | VecOp::Stdvar => {
                    let (mut c, mut mean, mut m2) = (0.0, 0.0, 0.0);
                    for x in &vs {
                        c += 1.0;
                        let d = x - mean;
                        mean += d / c;
                        m2 += d * (x - mean);
                    }
                    if op == VecOp::Stddev { (m2 / c).sqrt() } else { m2 / c }
                }
                _ => 0.0,
            };
            (k, v)
        })
        .collect()
}

fn arith(op: BinOp, a: f64, b: f64) -> f64 {
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        // Loki answers NaN for division or modulo by zero.
        BinOp::Div => {
            if b == 0.0 {
                f64::NAN
            } else {
                a / b
            }
        }
        BinOp::Mod => {
            if b == 0.0 {
                f64::NAN
            } else {
                a % b
            }
        }
        BinOp::Pow => a.powf(b),
        BinOp::Eq => f64::from(u8::from(a == b)),
        BinOp::Ne => f64::from(u8::from(a != b)),
        BinOp::Gt => f64::from(u8::from(a > b)),
        BinOp::Ge => f64::from(u8::from(a >= b)),
        BinOp::Lt => f64::from(u8::from(a < b)),
        BinOp::Le => f64::from(u8::from(a <= b)),
        _ => f64::NAN,
    }
}

fn signature(l: &Pairs, m: &VectorMatching) -> Pairs {
    match m.on {
        Some(true) => l.iter().filter(|(k, _)| m.labels.contains(k)).cloned().collect(),
        Some(false) => l.iter().filter(|(k, _)| !m.labels.contains(k)).cloned().collect(),
        None => l.clone(),
    }
}

fn binary(op: BinOp, bool_mod: bool, m: &VectorMatching, l: StepVal, r: StepVal) -> Result<StepVal, Error> {
    match (l, r) {
        (StepVal::Scalar(a), StepVal::Scalar(b)) => Ok(StepVal::Scalar(
            a.iter().zip(b.iter()).map(|(x, y)| arith(op, *x, *y)).collect(),
        )),
        (StepVal::Vector(a), StepVal::Scalar(b)) => Ok(StepVal::Vector(
            a.into_iter()
                .zip(b)
                .map(|(vs, y)| {
                    vs.into_iter()
                        .filter_map(|(l, x)| {
                            let v = arith(op, x, y);
                            if op.is_comparison() && !bool_mod {
                                if v == 1.0 { Some((l, x)) } else { None }
                            } else {
                                Some((l, v))
                            }
                        })
                        .collect()
                })
                .collect(),
        )),
        (StepVal::Scalar(a), StepVal::Vector(b)) => Ok(StepVal::Vector(
            b.into_iter()
                .zip(a)
                .map(|(vs, x)| {
                    vs.into_iter()
                        .filter_map(|(l, y)| {
                            let v = arith(op, x, y);
                            if op.is_comparison() && !bool_mod {
                                if v == 1.0 { Some((l, y)) } else { None }
                            } else {
                                Some((l, v))
                            }
                        })
                        .collect()
                })
                .collect(),
        )),
        (StepVal::Vector(a), StepVal::Vector(b)) => {
            let mut out = Vec::with_capacity(a.len());
            for (ls, rs) in a.into_iter().zip(b) {
                out.push(vector_binary(op, bool_mod, m, ls, rs)?);
            }
            Ok(StepVal::Vector(out))
        }
    }
}

fn vector_binary(
    op: BinOp,
    bool_mod: bool,
    m: &VectorMatching,
    ls: Vec<(Pairs, f64)>,
    rs: Vec<(Pairs, f64)>,
) -> Result<Vec<(Pairs, f64)>, Error> {
    match op {
        BinOp::And => {
            let sigs: Vec<Pairs> = rs.iter().map(|(l, _)| signature(l, m)).collect();
            return Ok(ls
                .into_iter()
                .filter(|(l, _)| sigs.contains(&signature(l, m)))
                .collect());
        }
        BinOp::Unless => {
            let sigs: Vec<Pairs> = rs.iter().map(|(l, _)| signature(l, m)).collect();
            return Ok(ls
                .into_iter()
                .filter(|(l, _)| !sigs.contains(&signature(l, m)))
                .collect());
        }
        BinOp::Or => {
            let sigs: Vec<Pairs> = ls.iter().map(|(l, _)| signature(l, m)).collect();
            let mut out = ls;
            out.extend(rs.into_iter().filter(|(l, _)| !sigs.contains(&signature(l, m))));
            return Ok(out);
        }
        _ => {}
    }
    // group_right swaps the roles: the "many" side is the right one.
    let swap = m.group_left == Some(false);
    let (many, one) = if swap { (rs, ls) } else { (ls, rs) };
    let mut one_idx: HashMap<Pairs, usize> = HashMap::new();
    for (i, (l, _)) in one.iter().enumerate() {
        let s = signature(l, m);
        if one_idx.insert(s, i).is_some() {
            let side = if swap { "left" } else { "right" };
            return Err(Error::Internal(format!(
                "found duplicate series on the {side} hand-side;many-to-many matching not allowed: matching labels must be unique on one side"
            )));
        }
    }
    let mut out = Vec::new();
    let mut seen: HashMap<Pairs, ()> = HashMap::new();
    for (l, v) in many {
        let s = signature(&l, m);
        let Some(&j) = one_idx.get(&s) else { continue };
        let (ol, ov) = &one[j];
        let (x, y) = if swap { (*ov, v) } else { (v, *ov) };
        let res = arith(op, x, y);
        let keep_val = if op.is_comparison() && !bool_mod {
            if res != 1.0 {
                continue;
            }
            x
        } else {
            res
        };
        let labels = if m.group_left.is_some() {
            let mut nl = l.clone();
            for inc in &m.include {
                nl.retain(|(k, _)| k != inc);
                if let Some(p) = ol.iter().find(|(k, _)| k == inc) {
                    nl.push(p.clone());
                }
            }
            sort_pairs(nl)
        } else if op.is_comparison() && !bool_mod {
            l.clone()
        } else {
            match m.on {
                Some(true) => s.clone(),
                _ => signature(&l, m),
            }
        };
        if m.group_left.is_none() && seen.insert(labels.clone(), ()).is_some() {
            return Err(Error::Internal(
                "found duplicate series on the left hand-side;many-to-many matching not allowed: matching labels must be unique on one side".into(),
            ));
        }
        out.push((labels, keep_val));
    }
    Ok(out)
}
