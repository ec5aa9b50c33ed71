//! PromQL functions (Prometheus 3.x `promql/functions.go` semantics, float samples only).
//!
//! Owns: every function's arithmetic and annotations. Never touches: selection (it asks the
//! evaluator for values and windows) or output encoding.

use super::ast::{Expr, VectorSel};
use super::eval::{Evaluator, R, almost_equal, exec_err, go_max, go_min, kahan_inc, quantile, set_label};
use super::value::{Elem, Value, format_float};
use crate::model::{Labels, METRIC_NAME, MatchOp, Sample};
use std::collections::HashMap;
use std::sync::Arc;

/// Strips parentheses (Prometheus unwraps them for `timestamp()` and `absent()`).
fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(x) => unparen(x),
        _ => e,
    }
}

fn map_vec(vec: Vec<Elem>, t: i64, f: impl Fn(f64) -> f64) -> Value {
    Value::Vector(
        vec.into_iter()
            .map(|mut e| {
                e.v = f(e.v);
                e.t = t;
                e.drop_name = true;
                e
            })
            .collect(),
    )
}

/// Labels for `absent()`: the equality matchers of a selector, minus the name and any label
/// named by more than one matcher.
fn absent_labels(e: &Expr) -> Labels {
    let sel: Option<&VectorSel> = match unparen(e) {
        Expr::Vector(s) => Some(s),
        Expr::Matrix { sel, .. } => Some(sel),
        _ => None,
    };
    let Some(sel) = sel else {
        return Labels::default();
    };
    let Some(set) = sel.matcher_sets.first() else {
        return Labels::default();
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut dup: Vec<String> = Vec::new();
    for m in set {
        if m.name == METRIC_NAME {
            continue;
        }
        if set.iter().filter(|x| x.name == m.name).count() > 1 {
            dup.push(m.name.clone());
            continue;
        }
        if m.op == MatchOp::Equal {
            pairs.push((m.name.clone(), m.value.clone()));
        }
    }
    pairs.retain(|(n, _)| !dup.contains(n));
    Labels::from_pairs(pairs).unwrap_or_default()
}

/// The window `(start, end]` a range argument covers at step `t`, in ms.
fn range_bounds(ev: &Evaluator<'_>, e: &Expr, t: i64) -> (i64, i64) {
    match unparen(e) {
        Expr::Matrix { sel, range_ms } => {
            let end = ev.sel_time(sel, t);
            (end - range_ms, end)
        }
        Expr::Subquery {
            range_ms,
            offset_ms,
            at,
            ..
        } => {
            let base = match at {
                None => t,
                Some(super::ast::At::Start) => ev.start,
                Some(super::ast::At::End) => ev.end,
                Some(super::ast::At::Time(x)) => *x,
            };
            (base - offset_ms - range_ms, base - offset_ms)
        }
        _ => (t, t),
    }
}

pub(crate) fn not_counter_info(name: &str) -> String {
    format!("PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: {name:?}")
}

/// The range-vector functions with one value per window and no parameters, which drop the metric
/// name: what `series_agg` can evaluate series by series. `call` uses the same arithmetic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum WindowFn {
    /// `rate` (counter, rate), `increase` (counter), `delta` (neither).
    Rate {
        counter: bool,
        rate: bool,
    },
    /// `irate` (rate) and `idelta`.
    Instant {
        rate: bool,
    },
    Sum,
    Count,
    Min,
    Max,
}

impl WindowFn {
    pub(crate) fn of(func: &str) -> Option<WindowFn> {
        Some(match func {
            "rate" => WindowFn::Rate {
                counter: true,
                rate: true,
            },
            "increase" => WindowFn::Rate {
                counter: true,
                rate: false,
            },
            "delta" => WindowFn::Rate {
                counter: false,
                rate: false,
            },
            "irate" => WindowFn::Instant { rate: true },
            "idelta" => WindowFn::Instant { rate: false },
            "sum_over_time" => WindowFn::Sum,
            "count_over_time" => WindowFn::Count,
            "min_over_time" => WindowFn::Min,
            "max_over_time" => WindowFn::Max,
            _ => return None,
        })
    }

    /// Whether the function annotates series whose name does not look like a counter's.
    pub(crate) fn wants_counter(self) -> bool {
        matches!(self, WindowFn::Rate { counter: true, .. })
    }

    /// The value over the non-empty window `s` of `(range_start, range_end]`.
    pub(crate) fn apply(self, s: &[Sample], range_start: i64, range_end: i64) -> Option<f64> {
        match self {
            WindowFn::Rate { counter, rate } => extrapolated_rate(s, range_start, range_end, counter, rate),
            WindowFn::Instant { rate } => instant_value(s, rate),
            WindowFn::Sum => {
                let (mut sum, mut c) = (0.0, 0.0);
                for x in s {
                    (sum, c) = kahan_inc(x.v, sum, c);
                }
                Some(if sum.is_infinite() { sum } else { sum + c })
            }
            WindowFn::Count => Some(s.len() as f64),
            WindowFn::Min => {
                let mut m = s.first()?.v;
                for x in s {
                    if x.v < m || m.is_nan() {
                        m = x.v;
                    }
                }
                Some(m)
            }
            WindowFn::Max => {
                let mut m = s.first()?.v;
                for x in s {
                    if x.v > m || m.is_nan() {
                        m = x.v;
                    }
                }
                Some(m)
            }
        }
    }
}

pub(crate) fn has_counter_suffix(name: &str) -> bool {
    ["_total", "_sum", "_count", "_bucket"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// Prometheus's `extrapolatedRate`.
fn extrapolated_rate(s: &[Sample], range_start: i64, range_end: i64, is_counter: bool, is_rate: bool) -> Option<f64> {
    if s.len() < 2 {
        return None;
    }
    let mut result = s[s.len() - 1].v - s[0].v;
    if is_counter {
        let mut prev = 0.0;
        for x in s {
            if x.v < prev {
                result += prev;
            }
            prev = x.v;
        }
    }
    extrapolate(s, result, range_start, range_end, is_counter, is_rate)
}

/// Indexes `i >= 1` of `s` where a counter resets (`s[i].v < s[i-1].v`): with them,
/// `rate_with_resets` walks only a window's resets instead of all its samples.
pub(crate) fn counter_resets(s: &[Sample], out: &mut Vec<u32>) {
    out.clear();
    for (i, w) in s.windows(2).enumerate() {
        if w[1].v < w[0].v {
            out.push(i as u32 + 1);
        }
    }
}

/// `extrapolated_rate` of the counter window `s[a..b]` given the resets of all of `s`: the very
/// same additions in the same order (the first sample is compared with 0, as there).
pub(crate) fn rate_with_resets(
    s: &[Sample],
    a: usize,
    b: usize,
    resets: &[u32],
    range_start: i64,
    range_end: i64,
    is_rate: bool,
) -> Option<f64> {
    let w = &s[a..b];
    if w.len() < 2 {
        return None;
    }
    let mut result = w[w.len() - 1].v - w[0].v;
    if w[0].v < 0.0 {
        result += 0.0;
    }
    let from = resets.partition_point(|&i| (i as usize) <= a);
    for &i in &resets[from..] {
        let i = i as usize;
        if i >= b {
            break;
        }
        result += s[i - 1].v;
    }
    extrapolate(w, result, range_start, range_end, true, is_rate)
}

fn extrapolate(
    s: &[Sample],
    result: f64,
    range_start: i64,
    range_end: i64,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    let first = s[0];
    let last = s[s.len() - 1];
    let mut to_start = (first.t - range_start) as f64 / 1000.0;
    let mut to_end = (range_end - last.t) as f64 / 1000.0;
    let sampled = (last.t - first.t) as f64 / 1000.0;
    let avg = sampled / (s.len() - 1) as f64;
    let threshold = avg * 1.1;
    if to_start >= threshold {
        to_start = avg / 2.0;
    }
    if is_counter {
        let mut to_zero = to_start;
        if result > 0.0 && first.v >= 0.0 {
            to_zero = sampled * (first.v / result);
        }
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    if to_end >= threshold {
        to_end = avg / 2.0;
    }
    let mut factor = (sampled + to_start + to_end) / sampled;
    if is_rate {
        factor /= (range_end - range_start) as f64 / 1000.0;
    }
    Some(result * factor)
}

fn instant_value(s: &[Sample], is_rate: bool) -> Option<f64> {
    if s.len() < 2 {
        return None;
    }
    let last = s[s.len() - 1];
    let prev = s[s.len() - 2];
    let mut r = if is_rate && last.v < prev.v {
        last.v
    } else {
        last.v - prev.v
    };
    let interval = last.t - prev.t;
    if interval == 0 {
        return None;
    }
    if is_rate {
        r /= interval as f64 / 1000.0;
    }
    Some(r)
}

/// Prometheus's `linearRegression` (Kahan-compensated sums, x relative to `intercept_t`).
fn linear_regression(s: &[Sample], intercept_t: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy, mut sxy, mut cxy, mut sx2, mut cx2) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let init_y = s[0].v;
    let mut const_y = true;
    for (i, p) in s.iter().enumerate() {
        if const_y && i > 0 && p.v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (p.t - intercept_t) as f64 / 1e3;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(p.v, sy, cy);
        (sxy, cxy) = kahan_inc(x * p.v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    sx += cx;
    sy += cy;
    sxy += cxy;
    sx2 += cx2;
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

fn avg_of(s: &[f64]) -> f64 {
    let mut sum = s[0];
    let mut count = 1.0;
    let (mut mean, mut c) = (0.0, 0.0);
    let mut incremental = false;
    for (i, v) in s[1..].iter().enumerate() {
        count = (i + 2) as f64;
        if !incremental {
            let (ns, nc) = kahan_inc(*v, sum, c);
            if !ns.is_infinite() {
                sum = ns;
                c = nc;
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            c /= count - 1.0;
        }
        let q = (count - 1.0) / count;
        (mean, c) = kahan_inc(v / count, q * mean, q * c);
    }
    if incremental { mean + c } else { sum / count + c / count }
}

fn variance_of(s: &[Sample]) -> f64 {
    let (mut count, mut mean, mut cmean, mut aux, mut caux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for p in s {
        count += 1.0;
        let delta = p.v - (mean + cmean);
        (mean, cmean) = kahan_inc(delta / count, mean, cmean);
        (aux, caux) = kahan_inc(delta * (p.v - (mean + cmean)), aux, caux);
    }
    (aux + caux) / count
}

/// Go's natural-order comparison used by `sort_by_label` (runs of digits compare numerically).
fn natural_less(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < ab.len() && j < bb.len() {
        if ab[i].is_ascii_digit() && bb[j].is_ascii_digit() {
            let si = i;
            while i < ab.len() && ab[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < bb.len() && bb[j].is_ascii_digit() {
                j += 1;
            }
            let na = a[si..i].trim_start_matches('0');
            let nb = b[sj..j].trim_start_matches('0');
            let o = na.len().cmp(&nb.len()).then(na.cmp(nb));
            if o != Ordering::Equal {
                return o;
            }
        } else {
            let o = ab[i].cmp(&bb[j]);
            if o != Ordering::Equal {
                return o;
            }
            i += 1;
            j += 1;
        }
    }
    (ab.len() - i).cmp(&(bb.len() - j))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn date_part(func: &str, v: f64) -> f64 {
    if v.is_nan() || v.is_infinite() {
        return f64::NAN;
    }
    let secs = v as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = crate::model::text::civil_from_days(days);
    match func {
        "minute" => ((sod / 60) % 60) as f64,
        "hour" => (sod / 3600) as f64,
        "day_of_month" => f64::from(d),
        "day_of_week" => ((days + 4).rem_euclid(7)) as f64,
        "day_of_year" => {
            let jan1 = days - (1..m).map(|mm| i64::from(days_in_month(y, mm))).sum::<i64>() - i64::from(d - 1);
            (days - jan1 + 1) as f64
        }
        "days_in_month" => f64::from(days_in_month(y, m)),
        "month" => f64::from(m),
        "year" => y as f64,
        _ => f64::NAN,
    }
}

/// Classic-histogram quantile (Prometheus's `BucketQuantile`): (value, forced_monotonic).
fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> (f64, bool) {
    if q.is_nan() {
        return (f64::NAN, false);
    }
    if q < 0.0 {
        return (f64::NEG_INFINITY, false);
    }
    if q > 1.0 {
        return (f64::INFINITY, false);
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if !buckets.last().is_some_and(|b| b.0 == f64::INFINITY) {
        return (f64::NAN, false);
    }
    // Coalesce buckets with the same upper bound.
    let mut co: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for b in buckets.iter() {
        match co.last_mut() {
            Some(l) if l.0 == b.0 => l.1 += b.1,
            _ => co.push(*b),
        }
    }
    let mut forced = false;
    let mut prev = co[0].1;
    for b in co.iter_mut().skip(1) {
        let cur = b.1;
        if cur == prev {
            continue;
        }
        if almost_equal(prev, cur, 1e-12) {
            b.1 = prev;
            continue;
        }
        if cur < prev {
            b.1 = prev;
            forced = true;
            continue;
        }
        prev = cur;
    }
    if co.len() < 2 {
        return (f64::NAN, forced);
    }
    let obs = co[co.len() - 1].1;
    if obs == 0.0 {
        return (f64::NAN, forced);
    }
    let mut rank = q * obs;
    let n = co.len() - 1;
    let b = co[..n].partition_point(|x| x.1 < rank);
    if b == n {
        return (co[n - 1].0, forced);
    }
    if b == 0 && co[0].0 <= 0.0 {
        return (co[0].0, forced);
    }
    let mut start = 0.0;
    let end = co[b].0;
    let mut count = co[b].1;
    if b > 0 {
        start = co[b - 1].0;
        count -= co[b - 1].1;
        rank -= co[b - 1].1;
    }
    (start + (end - start) * (rank / count), forced)
}

/// One classic histogram: its labels without `le`, its (upper bound, count) buckets, its name.
type BucketGroup = (Labels, Vec<(f64, f64)>, String);

/// Classic-histogram fraction of observations in `[lower, upper]` (Prometheus's `BucketFraction`):
/// linear interpolation inside finite buckets, the first bucket starting at 0 when its upper bound
/// is positive, no interpolation inside infinitely wide buckets.
fn bucket_fraction(lower: f64, upper: f64, buckets: &mut [(f64, f64)]) -> f64 {
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if !buckets.last().is_some_and(|b| b.0 == f64::INFINITY) {
        return f64::NAN;
    }
    let mut co: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for b in buckets.iter() {
        match co.last_mut() {
            Some(l) if l.0 == b.0 => l.1 += b.1,
            _ => co.push(*b),
        }
    }
    let count = co[co.len() - 1].1;
    if count == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    let (mut rank, mut lower_rank, mut upper_rank) = (0.0, 0.0, 0.0);
    let (mut lower_set, mut upper_set) = (false, false);
    for (i, b) in co.iter().enumerate() {
        let lb = if i > 0 {
            co[i - 1].0
        } else if b.0 > 0.0 {
            0.0
        } else {
            f64::NEG_INFINITY
        };
        let ub = b.0;
        let interp = |v: f64| {
            if lb == f64::NEG_INFINITY {
                b.1
            } else if ub == f64::INFINITY {
                rank
            } else {
                rank + (b.1 - rank) * (v - lb) / (ub - lb)
            }
        };
        if !lower_set && lb >= lower {
            lower_rank = rank;
            lower_set = true;
        }
        if !upper_set && lb >= upper {
            upper_rank = rank;
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        if !lower_set && lb < lower && ub > lower {
            lower_rank = interp(lower);
            lower_set = true;
        }
        if !upper_set && lb < upper && ub > upper {
            upper_rank = interp(upper);
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        rank = b.1;
    }
    if !lower_set || lower_rank > count {
        lower_rank = count;
    }
    if !upper_set || upper_rank > count {
        upper_rank = count;
    }
    (upper_rank - lower_rank) / count
}

impl Evaluator<'_> {
    /// `info(v, {data selector})`: adds the data labels of info series (default `target_info`)
    /// that share the identifying labels `instance` and `job`.
    fn info(&mut self, args: &[Expr], t: i64) -> R<Value> {
        const IDENTIFYING: [&str; 2] = ["instance", "job"];
        let base = match args.first() {
            Some(a) => self.eval_vector(a, t)?,
            None => return Err(exec_err("info() needs an argument")),
        };
        let Some(Expr::Vector(sel)) = args.get(1) else {
            return Err(exec_err("info(): the second argument must be a vector selector"));
        };
        let matchers = sel.matcher_sets.first().cloned().unwrap_or_default();
        let (name_m, data_m): (Vec<_>, Vec<_>) = matchers.into_iter().partition(|m| m.name == METRIC_NAME);
        let infos = self.select_instant(sel, t, true);
        let needs_match = data_m.iter().any(|m| !m.matches_empty());
        let mut out = Vec::with_capacity(base.len());
        for mut e in base {
            // A base series that is itself one of the selected info metrics passes unchanged; a
            // selector with only negative name matchers names no info metric.
            let is_info = name_m.iter().any(|m| matches!(m.op, MatchOp::Equal | MatchOp::Regex))
                && name_m.iter().all(|m| m.matches(e.labels.get_or_empty(METRIC_NAME)));
            if is_info {
                out.push(e);
                continue;
            }
            // The newest matching info series per info metric name.
            let mut best: Vec<&Elem> = Vec::new();
            for i in &infos {
                if !IDENTIFYING
                    .iter()
                    .all(|l| i.labels.get_or_empty(l) == e.labels.get_or_empty(l))
                {
                    continue;
                }
                let name = i.labels.get_or_empty(METRIC_NAME);
                match best.iter_mut().find(|b| b.labels.get_or_empty(METRIC_NAME) == name) {
                    Some(b) if i.t > b.t => *b = i,
                    Some(_) => {}
                    None => best.push(i),
                }
            }
            if best.is_empty() {
                if !needs_match {
                    out.push(e);
                }
                continue;
            }
            for i in best {
                for l in i.labels.iter() {
                    if l.name == METRIC_NAME || IDENTIFYING.contains(&l.name.as_str()) {
                        continue;
                    }
                    if !data_m.is_empty() && !data_m.iter().any(|m| m.name == l.name) {
                        continue;
                    }
                    if e.labels.get(&l.name).is_none() {
                        e.labels = Arc::new(set_label(&e.labels, &l.name, &l.value));
                    }
                }
            }
            e.t = t;
            out.push(e);
        }
        Ok(Value::Vector(out))
    }

    fn sort_warning(&mut self) {
        if self.is_range {
            self.annotate(
                "PromQL warning: sort is ineffective for range queries since results are always ordered by labels"
                    .into(),
            );
        }
    }

    fn str_arg(&mut self, e: &Expr, t: i64) -> R<String> {
        match self.eval(e, t)? {
            Value::String(s) => Ok(s),
            _ => Err(exec_err("expected string argument")),
        }
    }

    /// Applies `f` to each series of the range argument; series without output are skipped.
    /// Applies `f` to each series of the range argument; series without output are skipped. A
    /// plain range selector is evaluated in place over the preloaded buffers: no per-step copy.
    fn over_time(
        &mut self,
        arg: &Expr,
        t: i64,
        keep_name: bool,
        mut f: impl FnMut(&Labels, &[Sample]) -> Option<f64>,
    ) -> R<Value> {
        if let Expr::Matrix { sel, range_ms } = unparen(arg) {
            let rt = self.sel_time(sel, t);
            let lo = rt.saturating_sub(*range_ms);
            let mut out = Vec::new();
            for s in self.data.get(sel.id).map(Vec::as_slice).unwrap_or_default() {
                let a = super::eval::seek(&s.samples, &s.cur_lo, lo);
                let b = super::eval::seek(&s.samples, &s.cur_hi, rt);
                if a >= b {
                    continue;
                }
                if let Some(v) = f(&s.labels, &s.samples[a..b]) {
                    out.push(Elem {
                        labels: s.labels.clone(),
                        v,
                        t,
                        drop_name: !keep_name,
                    });
                }
            }
            return Ok(Value::Vector(out));
        }
        if let Some(key) = self.subquery_series(unparen(arg))? {
            let (lo, rt) = range_bounds(self, arg, t);
            let mut window: Vec<(i64, u32, usize, usize, usize)> = Vec::new();
            let mut points = 0;
            for (i, s) in self
                .sub_series
                .get(&key)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let a = super::eval::seek(&s.samples, &s.cur_lo, lo);
                let b = super::eval::seek(&s.samples, &s.cur_hi, rt);
                if a < b {
                    window.push((s.samples[a].t, s.pos[a], i, a, b));
                    points += b - a;
                }
            }
            self.check_subquery_window(unparen(arg), t, points)?;
            // The series in the order a per-window assembly would have met them.
            window.sort_unstable();
            let series = self.sub_series.get(&key).map(Vec::as_slice).unwrap_or_default();
            let mut out = Vec::with_capacity(window.len());
            for (_, _, i, a, b) in window {
                let s = &series[i];
                if let Some(v) = f(&s.labels, &s.samples[a..b]) {
                    out.push(Elem {
                        labels: Arc::clone(&s.labels),
                        v,
                        t,
                        drop_name: !keep_name || s.drop_name,
                    });
                }
            }
            return Ok(Value::Vector(out));
        }
        let m = self.eval_matrix(arg, t)?;
        let mut out = Vec::with_capacity(m.len());
        for s in m {
            if s.samples.is_empty() {
                continue;
            }
            if let Some(v) = f(&s.labels, &s.samples) {
                out.push(Elem {
                    labels: Arc::new(s.labels),
                    v,
                    t,
                    drop_name: !keep_name || s.drop_name,
                });
            }
        }
        Ok(Value::Vector(out))
    }

    pub(crate) fn call(&mut self, func: &str, args: &[Expr], t: i64) -> R<Value> {
        let arg = |i: usize| -> R<&Expr> {
            args.get(i)
                .ok_or_else(|| exec_err(format!("missing argument to {func}")))
        };
        match func {
            "time" => Ok(Value::Scalar(t as f64 / 1000.0)),
            "step" => Ok(Value::Scalar(if self.is_range {
                self.interval as f64 / 1000.0
            } else {
                0.0
            })),
            "range" => Ok(Value::Scalar((self.end - self.start) as f64 / 1000.0)),
            "start" => Ok(Value::Scalar(self.start as f64 / 1000.0)),
            "end" => Ok(Value::Scalar(self.end as f64 / 1000.0)),
            "min_of" | "max_of" => {
                let mut acc: Option<f64> = None;
                for a in args {
                    let v = self.eval_scalar(a, t)?;
                    acc = Some(match acc {
                        None => v,
                        Some(x) if func == "min_of" => go_min(x, v),
                        Some(x) => go_max(x, v),
                    });
                }
                Ok(Value::Scalar(acc.unwrap_or(f64::NAN)))
            }
            "pi" => Ok(Value::Scalar(std::f64::consts::PI)),
            "vector" => {
                let v = self.eval_scalar(arg(0)?, t)?;
                Ok(Value::Vector(vec![Elem {
                    labels: Arc::new(Labels::default()),
                    v,
                    t,
                    drop_name: false,
                }]))
            }
            "scalar" => {
                let v = self.eval_vector(arg(0)?, t)?;
                Ok(Value::Scalar(if v.len() == 1 { v[0].v } else { f64::NAN }))
            }
            "abs" | "ceil" | "floor" | "exp" | "sqrt" | "ln" | "log2" | "log10" | "sgn" | "sin" | "cos" | "tan"
            | "asin" | "acos" | "atan" | "sinh" | "cosh" | "tanh" | "asinh" | "acosh" | "atanh" | "deg" | "rad" => {
                let v = self.eval_vector(arg(0)?, t)?;
                let f: fn(f64) -> f64 = match func {
                    "abs" => f64::abs,
                    "ceil" => f64::ceil,
                    "floor" => f64::floor,
                    "exp" => f64::exp,
                    "sqrt" => f64::sqrt,
                    "ln" => f64::ln,
                    "log2" => f64::log2,
                    "log10" => f64::log10,
                    "sgn" => |x: f64| {
                        if x > 0.0 {
                            1.0
                        } else if x < 0.0 {
                            -1.0
                        } else {
                            x
                        }
                    },
                    "sin" => f64::sin,
                    "cos" => f64::cos,
                    "tan" => f64::tan,
                    "asin" => f64::asin,
                    "acos" => f64::acos,
                    "atan" => f64::atan,
                    "sinh" => f64::sinh,
                    "cosh" => f64::cosh,
                    "tanh" => f64::tanh,
                    "asinh" => f64::asinh,
                    "acosh" => f64::acosh,
                    "atanh" => f64::atanh,
                    "deg" => |x: f64| x * 180.0 / std::f64::consts::PI,
                    _ => |x: f64| x * std::f64::consts::PI / 180.0,
                };
                Ok(map_vec(v, t, f))
            }
            "round" => {
                let v = self.eval_vector(arg(0)?, t)?;
                let to = match args.get(1) {
                    Some(a) => self.eval_scalar(a, t)?,
                    None => 1.0,
                };
                let inv = 1.0 / to;
                Ok(map_vec(v, t, |x| (x * inv + 0.5).floor() / inv))
            }
            "clamp" => {
                let v = self.eval_vector(arg(0)?, t)?;
                let lo = self.eval_scalar(arg(1)?, t)?;
                let hi = self.eval_scalar(arg(2)?, t)?;
                if hi < lo {
                    return Ok(Value::Vector(Vec::new()));
                }
                Ok(map_vec(v, t, |x| go_max(lo, go_min(hi, x))))
            }
            "clamp_min" => {
                let v = self.eval_vector(arg(0)?, t)?;
                let lo = self.eval_scalar(arg(1)?, t)?;
                Ok(map_vec(v, t, |x| go_max(lo, x)))
            }
            "clamp_max" => {
                let v = self.eval_vector(arg(0)?, t)?;
                let hi = self.eval_scalar(arg(1)?, t)?;
                Ok(map_vec(v, t, |x| go_min(hi, x)))
            }
            "timestamp" => {
                let v = match unparen(arg(0)?) {
                    Expr::Vector(sel) => self.select_instant(sel, t, true),
                    other => self.eval_vector(other, t)?,
                };
                Ok(Value::Vector(
                    v.into_iter()
                        .map(|mut e| {
                            e.v = e.t as f64 / 1000.0;
                            e.t = t;
                            e.drop_name = true;
                            e
                        })
                        .collect(),
                ))
            }
            "minute" | "hour" | "day_of_month" | "day_of_week" | "day_of_year" | "days_in_month" | "month" | "year" => {
                if args.is_empty() {
                    return Ok(Value::Vector(vec![Elem {
                        labels: Arc::new(Labels::default()),
                        v: date_part(func, t as f64 / 1000.0),
                        t,
                        drop_name: false,
                    }]));
                }
                let v = self.eval_vector(arg(0)?, t)?;
                Ok(map_vec(v, t, |x| date_part(func, x)))
            }
            "absent" => {
                let v = self.eval_vector(arg(0)?, t)?;
                if !v.is_empty() {
                    return Ok(Value::Vector(Vec::new()));
                }
                Ok(Value::Vector(vec![Elem {
                    labels: Arc::new(absent_labels(arg(0)?)),
                    v: 1.0,
                    t,
                    drop_name: false,
                }]))
            }
            "absent_over_time" => {
                let m = self.eval_matrix(arg(0)?, t)?;
                if m.iter().any(|s| !s.samples.is_empty()) {
                    return Ok(Value::Vector(Vec::new()));
                }
                Ok(Value::Vector(vec![Elem {
                    labels: Arc::new(absent_labels(arg(0)?)),
                    v: 1.0,
                    t,
                    drop_name: false,
                }]))
            }
            "sort" | "sort_desc" => {
                self.sort_warning();
                let mut v = self.eval_vector(arg(0)?, t)?;
                let desc = func == "sort_desc";
                v.sort_by(|a, b| match (a.v.is_nan(), b.v.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ if desc => b.v.total_cmp(&a.v),
                    _ => a.v.total_cmp(&b.v),
                });
                Ok(Value::Vector(v))
            }
            "sort_by_label" | "sort_by_label_desc" => {
                self.sort_warning();
                let mut v = self.eval_vector(arg(0)?, t)?;
                let mut names = Vec::new();
                for a in &args[1..] {
                    names.push(self.str_arg(a, t)?);
                }
                let desc = func == "sort_by_label_desc";
                v.sort_by(|a, b| {
                    for n in &names {
                        let (x, y) = (a.labels.get_or_empty(n), b.labels.get_or_empty(n));
                        if x == y {
                            continue;
                        }
                        let o = natural_less(x, y);
                        return if desc { o.reverse() } else { o };
                    }
                    let o = a.labels.cmp(&b.labels);
                    if desc { o.reverse() } else { o }
                });
                Ok(Value::Vector(v))
            }
            "label_replace" => {
                let v = self.eval_vector(arg(0)?, t)?;
                let dst = self.str_arg(arg(1)?, t)?;
                let repl = self.str_arg(arg(2)?, t)?;
                let src = self.str_arg(arg(3)?, t)?;
                let re = self.str_arg(arg(4)?, t)?;
                let regex = regex::Regex::new(&format!("^(?s:{re})$"))
                    .map_err(|e| exec_err(format!("invalid regular expression in label_replace(): {re}: {e}")))?;
                if dst.is_empty() {
                    return Err(exec_err(format!(
                        "invalid destination label name in label_replace(): {dst}"
                    )));
                }
                let mut out = Vec::with_capacity(v.len());
                for mut e in v {
                    if let Some(caps) = regex.captures(e.labels.get_or_empty(&src)) {
                        let mut res = String::new();
                        caps.expand(&repl, &mut res);
                        e.labels = Arc::new(set_label(&e.labels, &dst, &res));
                        if dst == METRIC_NAME {
                            e.drop_name = false;
                        }
                    }
                    e.t = t;
                    out.push(e);
                }
                check_unique(&out)?;
                Ok(Value::Vector(out))
            }
            "label_join" => {
                let v = self.eval_vector(arg(0)?, t)?;
                let dst = self.str_arg(arg(1)?, t)?;
                let sep = self.str_arg(arg(2)?, t)?;
                let mut srcs = Vec::new();
                for a in &args[3..] {
                    srcs.push(self.str_arg(a, t)?);
                }
                if dst.is_empty() {
                    return Err(exec_err(format!(
                        "invalid destination label name in label_join(): {dst}"
                    )));
                }
                let mut out = Vec::with_capacity(v.len());
                for mut e in v {
                    let joined: Vec<&str> = srcs.iter().map(|s| e.labels.get_or_empty(s)).collect();
                    let joined = joined.join(&sep);
                    e.labels = Arc::new(set_label(&e.labels, &dst, &joined));
                    if dst == METRIC_NAME {
                        e.drop_name = false;
                    }
                    e.t = t;
                    out.push(e);
                }
                check_unique(&out)?;
                Ok(Value::Vector(out))
            }
            "rate" | "increase" | "delta" => {
                let a = arg(0)?;
                let (rs, re) = range_bounds(self, a, t);
                let is_counter = func != "delta";
                let is_rate = func == "rate";
                let mut not_counters: Vec<String> = Vec::new();
                let v = self.over_time(a, t, false, |l, s| {
                    if is_counter
                        && let Some(n) = l.metric_name()
                        && !has_counter_suffix(n)
                        && !not_counters.iter().any(|x| x == n)
                    {
                        not_counters.push(n.to_string());
                    }
                    WindowFn::Rate {
                        counter: is_counter,
                        rate: is_rate,
                    }
                    .apply(s, rs, re)
                })?;
                for n in not_counters {
                    self.annotate(not_counter_info(&n));
                }
                Ok(v)
            }
            "irate" => self.over_time(arg(0)?, t, false, |_, s| {
                WindowFn::Instant { rate: true }.apply(s, 0, 0)
            }),
            "idelta" => self.over_time(arg(0)?, t, false, |_, s| {
                WindowFn::Instant { rate: false }.apply(s, 0, 0)
            }),
            "avg_over_time" => self.over_time(arg(0)?, t, false, |_, s| {
                let v: Vec<f64> = s.iter().map(|x| x.v).collect();
                Some(avg_of(&v))
            }),
            "sum_over_time" => self.over_time(arg(0)?, t, false, |_, s| WindowFn::Sum.apply(s, 0, 0)),
            "count_over_time" => self.over_time(arg(0)?, t, false, |_, s| WindowFn::Count.apply(s, 0, 0)),
            "min_over_time" => self.over_time(arg(0)?, t, false, |_, s| WindowFn::Min.apply(s, 0, 0)),
            "max_over_time" => self.over_time(arg(0)?, t, false, |_, s| WindowFn::Max.apply(s, 0, 0)),
            "last_over_time" => self.over_time(arg(0)?, t, true, |_, s| s.last().map(|x| x.v)),
            "first_over_time" => self.over_time(arg(0)?, t, true, |_, s| s.first().map(|x| x.v)),
            "ts_of_last_over_time" => self.over_time(arg(0)?, t, false, |_, s| s.last().map(|x| x.t as f64 / 1000.0)),
            "ts_of_first_over_time" => self.over_time(arg(0)?, t, false, |_, s| s.first().map(|x| x.t as f64 / 1000.0)),
            "ts_of_max_over_time" | "ts_of_min_over_time" => {
                let max = func == "ts_of_max_over_time";
                self.over_time(arg(0)?, t, false, |_, s| {
                    let mut best = s[0];
                    for x in s {
                        let better = if max { x.v >= best.v } else { x.v <= best.v };
                        if better || best.v.is_nan() {
                            best = *x;
                        }
                    }
                    Some(best.t as f64 / 1000.0)
                })
            }
            "present_over_time" => self.over_time(arg(0)?, t, false, |_, _| Some(1.0)),
            "stddev_over_time" => self.over_time(arg(0)?, t, false, |_, s| Some(variance_of(s).sqrt())),
            "stdvar_over_time" => self.over_time(arg(0)?, t, false, |_, s| Some(variance_of(s))),
            "mad_over_time" => self.over_time(arg(0)?, t, false, |_, s| {
                if s.iter().any(|x| x.v.is_nan()) {
                    return Some(f64::NAN);
                }
                let mut v: Vec<f64> = s.iter().map(|x| x.v).collect();
                let med = quantile(0.5, &mut v);
                let mut d: Vec<f64> = s.iter().map(|x| (x.v - med).abs()).collect();
                Some(quantile(0.5, &mut d))
            }),
            "quantile_over_time" => {
                let q = self.eval_scalar(arg(0)?, t)?;
                if !(0.0..=1.0).contains(&q) {
                    self.annotate(format!(
                        "PromQL warning: quantile value should be between 0 and 1, got {}",
                        format_float(q)
                    ));
                }
                self.over_time(arg(1)?, t, false, |_, s| {
                    let mut v: Vec<f64> = s.iter().map(|x| x.v).collect();
                    Some(quantile(q, &mut v))
                })
            }
            "changes" => self.over_time(arg(0)?, t, false, |_, s| {
                let mut n = 0.0;
                for w in s.windows(2) {
                    if w[1].v != w[0].v && !(w[1].v.is_nan() && w[0].v.is_nan()) {
                        n += 1.0;
                    }
                }
                Some(n)
            }),
            "resets" => self.over_time(arg(0)?, t, false, |_, s| {
                Some(s.windows(2).filter(|w| w[1].v < w[0].v).count() as f64)
            }),
            "deriv" => self.over_time(arg(0)?, t, false, |_, s| {
                if s.len() < 2 {
                    return None;
                }
                Some(linear_regression(s, s[0].t).0)
            }),
            "predict_linear" => {
                let d = self.eval_scalar(arg(1)?, t)?;
                // The intercept is taken at the evaluation time (Prometheus uses the step time even
                // under `@`, which is why predict_linear is @-unsafe in its test runner).
                self.over_time(arg(0)?, t, false, |_, s| {
                    if s.len() < 2 {
                        return None;
                    }
                    let (slope, icpt) = linear_regression(s, t);
                    Some(slope * d + icpt)
                })
            }
            "double_exponential_smoothing" | "holt_winters" => {
                let sf = self.eval_scalar(arg(1)?, t)?;
                let tf = self.eval_scalar(arg(2)?, t)?;
                if sf <= 0.0 || sf >= 1.0 {
                    return Err(exec_err(format!(
                        "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:.6}"
                    )));
                }
                if tf <= 0.0 || tf >= 1.0 {
                    return Err(exec_err(format!(
                        "invalid trend factor. Expected: 0 < tf < 1, got: {tf:.6}"
                    )));
                }
                self.over_time(arg(0)?, t, false, |_, s| {
                    if s.len() < 2 {
                        return None;
                    }
                    let (mut s0, mut s1) = (0.0, s[0].v);
                    let mut b = s[1].v - s[0].v;
                    for (i, p) in s.iter().enumerate().skip(1) {
                        let x = sf * p.v;
                        if i > 1 {
                            b = tf * (s1 - s0) + (1.0 - tf) * b;
                        }
                        let y = (1.0 - sf) * (s1 + b);
                        s0 = s1;
                        s1 = x + y;
                    }
                    Some(s1)
                })
            }
            "histogram_quantile" | "histogram_quantiles" | "histogram_fraction" => {
                let (qs, vec_arg, qlabel) = match func {
                    "histogram_quantile" => (vec![self.eval_scalar(arg(0)?, t)?], arg(1)?, None),
                    "histogram_fraction" => {
                        let lo = self.eval_scalar(arg(0)?, t)?;
                        let hi = self.eval_scalar(arg(1)?, t)?;
                        (vec![lo, hi], arg(2)?, None)
                    }
                    _ => {
                        let l = self.str_arg(arg(1)?, t)?;
                        let mut qs = Vec::new();
                        for a in &args[2..] {
                            qs.push(self.eval_scalar(a, t)?);
                        }
                        (qs, arg(0)?, Some(l))
                    }
                };
                let v = self.eval_vector(vec_arg, t)?;
                if func != "histogram_fraction" {
                    for q in &qs {
                        if !(0.0..=1.0).contains(q) {
                            self.annotate(format!(
                                "PromQL warning: quantile value should be between 0 and 1, got {}",
                                format_float(*q)
                            ));
                        }
                    }
                }
                let mut index: HashMap<Labels, usize> = HashMap::new();
                let mut groups: Vec<BucketGroup> = Vec::new();
                for e in v {
                    let name = e.labels.metric_name().unwrap_or("").to_string();
                    let le = e.labels.get_or_empty("le");
                    let Some(ub) = parse_go_float(le) else {
                        self.annotate(format!(
                            "PromQL warning: bucket label \"le\" is missing or has a malformed value of {le:?} for metric name {name:?}"
                        ));
                        continue;
                    };
                    let key = super::eval::drop_label(&e.labels, "le");
                    match index.get(&key) {
                        Some(i) => groups[*i].1.push((ub, e.v)),
                        None => {
                            index.insert(key.clone(), groups.len());
                            groups.push((key, vec![(ub, e.v)], name));
                        }
                    }
                }
                let mut out = Vec::with_capacity(groups.len() * qs.len());
                for (labels, mut b, name) in groups {
                    if func == "histogram_fraction" {
                        out.push(Elem {
                            labels: Arc::new(labels),
                            v: bucket_fraction(qs[0], qs[1], &mut b),
                            t,
                            drop_name: true,
                        });
                        continue;
                    }
                    for q in &qs {
                        let (v, forced) = bucket_quantile(*q, &mut b);
                        if forced {
                            self.annotate(format!("PromQL info: input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile) for metric name {name:?}"));
                        }
                        let labels = match &qlabel {
                            Some(l) => {
                                let mut f = super::value::format_float_f(*q);
                                if !f.contains(['.', 'e', 'I', 'N']) {
                                    f.push_str(".0");
                                }
                                set_label(&labels, l, &f)
                            }
                            None => labels.clone(),
                        };
                        out.push(Elem {
                            labels: Arc::new(labels),
                            v,
                            t,
                            drop_name: true,
                        });
                    }
                }
                Ok(Value::Vector(out))
            }
            "info" => self.info(args, t),
            other => Err(exec_err(format!("function {other:?} is not supported"))),
        }
    }
}

fn check_unique(v: &[Elem]) -> R<()> {
    let mut seen = std::collections::HashSet::with_capacity(v.len());
    for e in v {
        if !seen.insert(&e.labels) {
            return Err(exec_err("vector cannot contain metrics with the same labelset"));
        }
    }
    Ok(())
}

/// Go's `strconv.ParseFloat` for the values `le` labels carry.
fn parse_go_float(s: &str) -> Option<f64> {
    match s {
        "" => None,
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// XXH64 with seed 0 (Prometheus hashes label sets with `cespare/xxhash`; `limit_ratio` depends on
/// the exact value).
pub(crate) fn xxhash64(b: &[u8]) -> u64 {
    const P1: u64 = 11_400_714_785_074_694_791;
    const P2: u64 = 14_029_467_366_897_019_727;
    const P3: u64 = 1_609_587_929_392_839_161;
    const P4: u64 = 9_650_029_242_287_828_579;
    const P5: u64 = 2_870_177_450_012_600_261;
    fn round(acc: u64, input: u64) -> u64 {
        acc.wrapping_add(input.wrapping_mul(P2))
            .rotate_left(31)
            .wrapping_mul(P1)
    }
    fn merge(acc: u64, val: u64) -> u64 {
        (acc ^ round(0, val)).wrapping_mul(P1).wrapping_add(P4)
    }
    let rd64 = |p: &[u8]| u64::from_le_bytes([p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]]);
    let n = b.len();
    let mut p = b;
    let mut h: u64;
    if n >= 32 {
        let (mut v1, mut v2, mut v3, mut v4) = (P1.wrapping_add(P2), P2, 0u64, 0u64.wrapping_sub(P1));
        while p.len() >= 32 {
            v1 = round(v1, rd64(&p[0..]));
            v2 = round(v2, rd64(&p[8..]));
            v3 = round(v3, rd64(&p[16..]));
            v4 = round(v4, rd64(&p[24..]));
            p = &p[32..];
        }
        h = v1
            .rotate_left(1)
            .wrapping_add(v2.rotate_left(7))
            .wrapping_add(v3.rotate_left(12))
            .wrapping_add(v4.rotate_left(18));
        h = merge(h, v1);
        h = merge(h, v2);
        h = merge(h, v3);
        h = merge(h, v4);
    } else {
        h = P5;
    }
    h = h.wrapping_add(n as u64);
    while p.len() >= 8 {
        h ^= round(0, rd64(p));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        p = &p[8..];
    }
    if p.len() >= 4 {
        h ^= u64::from(u32::from_le_bytes([p[0], p[1], p[2], p[3]])).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        p = &p[4..];
    }
    for &x in p {
        h ^= u64::from(x).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^= h >> 32;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxhash_known_values() {
        assert_eq!(xxhash64(b""), 0xef46_db37_51d8_e999);
        assert_eq!(xxhash64(b"a"), 0xd24e_c4f1_a98c_6e5b);
        assert_eq!(
            xxhash64(b"Nobody inspects the spammish repetition"),
            0xfbce_a83c_8a37_8bf1
        );
    }

    #[test]
    fn dates() {
        for (f, v, want) in [
            ("year", 0.0, 1970.0),
            ("month", 0.0, 1.0),
            ("day_of_week", 0.0, 4.0),
            ("day_of_year", 86_400.0 * 59.0, 60.0),
            ("days_in_month", 86_400.0 * 40.0, 28.0),
            ("hour", 3600.0 * 5.0 + 59.0, 5.0),
        ] {
            assert_eq!(date_part(f, v), want, "{f}({v})");
        }
    }
}
