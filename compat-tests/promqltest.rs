//! Runs Prometheus's PromQL test scripts (`promql/promqltest/testdata/*.test`, copied unmodified to
//! `../shared/compat/promqltest`) against the engine, implementing the script format the way
//! Prometheus's `promqltest` runner does: `load` with the expanding notation, `clear`,
//! `eval instant|range`, `expect fail|warn|info|no_warn|no_info|ordered|string|range vector`,
//! the legacy `eval_fail`/`eval_warn`/`eval_info`/`eval_ordered` forms, and the runner's extra checks
//! (every instant eval again with `@` on its selectors at other times, and in range mode).
//!
//! An eval is "unsupported" (counted, not failed) when promql-parser cannot parse it or native
//! histograms appear in its input or expected output. Set PROMQLTEST_DIR to run other files,
//! PROMQLTEST_VERBOSE=1 to print each failure.

/// Writes straight to stderr so the counts show in `cargo test` output even when the test passes
/// (libtest captures `println!`/`eprintln!`).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

use monitoring_rs::model::{Labels, stale_nan};
use monitoring_rs::query::promql::ast::{At, Expr};
use monitoring_rs::query::promql::{Engine, EngineOptions, QueryOutput, QueryValue, parse};
use monitoring_rs::storage::metrics::{MetricsDb, MetricsOptions, SeriesKey};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Passing evals reached; only ever raise it.
const PASS_FLOOR: usize = 1105;

fn parse_duration(s: &str) -> Option<i64> {
    // Test scripts also write negative durations (offsets); the shared parser takes the rest.
    let s = s.trim();
    match s.strip_prefix('-') {
        Some(r) => monitoring_rs::model::text::parse_duration_ms(r).ok().map(|v| -v),
        None => monitoring_rs::model::text::parse_duration_ms(s).ok(),
    }
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        "Inf" | "+Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => {
            if let Some(h) = s.strip_prefix("0x") {
                return i64::from_str_radix(h, 16).ok().map(|v| v as f64);
            }
            s.parse().ok()
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Val {
    Omitted,
    Stale,
    F(f64),
}

/// Expands a series value list such as `1+2x3 _ stale 5x2 _x3`. `None` = contains native histograms
/// or does not parse.
fn expand_values(tokens: &[&str]) -> Option<Vec<Val>> {
    let mut out = Vec::new();
    for tok in tokens {
        if tok.contains("{{") {
            return None;
        }
        if *tok == "_" {
            out.push(Val::Omitted);
            continue;
        }
        if *tok == "stale" {
            out.push(Val::Stale);
            continue;
        }
        if let Some(n) = tok.strip_prefix("_x") {
            let n: usize = n.parse().ok()?;
            out.extend(std::iter::repeat_n(Val::Omitted, n));
            continue;
        }
        let (head, times) = match tok.rfind('x') {
            Some(p) if tok[p + 1..].chars().all(|c| c.is_ascii_digit()) && p + 1 < tok.len() => {
                (&tok[..p], Some(tok[p + 1..].parse::<usize>().ok()?))
            }
            _ => (*tok, None),
        };
        let Some(times) = times else {
            out.push(Val::F(parse_float(head)?));
            continue;
        };
        // Split "start+delta" / "start-delta" at a sign not at the start and not after an exponent.
        let hb = head.as_bytes();
        let mut split = None;
        for i in 1..hb.len() {
            if (hb[i] == b'+' || hb[i] == b'-') && !matches!(hb[i - 1], b'e' | b'E') {
                split = Some(i);
            }
        }
        let (start, delta) = match split {
            Some(i) => (parse_float(&head[..i])?, parse_float(&head[i..])?),
            None => (parse_float(head)?, 0.0),
        };
        let mut v = start;
        out.push(Val::F(v));
        for _ in 0..times {
            v += delta;
            out.push(Val::F(v));
        }
    }
    Some(out)
}

/// Splits `metric{a="b"} rest` into the descriptor and the rest, respecting quotes and braces.
fn split_series(line: &str) -> (String, String) {
    let mut depth = 0;
    let mut in_q = false;
    let mut esc = false;
    for (i, c) in line.char_indices() {
        if in_q {
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_q = false;
            }
            continue;
        }
        match c {
            '"' => in_q = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return (line[..=i].to_string(), line[i + 1..].trim().to_string());
                }
            }
            ' ' | '\t' if depth == 0 => return (line[..i].to_string(), line[i..].trim().to_string()),
            _ => {}
        }
    }
    (line.to_string(), String::new())
}

/// Parses a series descriptor `name{a="b", "c.d"="e"}` (Go-quoted strings).
fn parse_labels(desc: &str) -> Option<Labels> {
    let desc = desc.trim();
    let (name, rest) = match desc.find('{') {
        Some(i) => (&desc[..i], &desc[i..]),
        None => (desc, ""),
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    if !name.is_empty() {
        if !name.chars().all(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            return None;
        }
        pairs.push(("__name__".into(), name.to_string()));
    }
    if !rest.is_empty() {
        let inner = rest.strip_prefix('{')?.strip_suffix('}')?;
        let chars: Vec<char> = inner.chars().collect();
        let mut i = 0;
        let read_str = |i: &mut usize| -> Option<String> {
            let q = chars[*i];
            *i += 1;
            let mut s = String::new();
            while *i < chars.len() && chars[*i] != q {
                if chars[*i] == '\\' && *i + 1 < chars.len() {
                    *i += 1;
                    s.push(match chars[*i] {
                        'n' => '\n',
                        't' => '\t',
                        c => c,
                    });
                } else {
                    s.push(chars[*i]);
                }
                *i += 1;
            }
            *i += 1;
            Some(s)
        };
        loop {
            while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
                i += 1;
            }
            if i >= chars.len() {
                break;
            }
            let key = if chars[i] == '"' {
                read_str(&mut i)?
            } else {
                let st = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                chars[st..i].iter().collect()
            };
            while i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            if i >= chars.len() {
                // A quoted metric name alone: {"some.metric"}.
                pairs.push(("__name__".into(), key));
                break;
            }
            if chars[i] == ',' || chars[i] == '}' {
                pairs.push(("__name__".into(), key));
                continue;
            }
            if chars[i] != '=' {
                return None;
            }
            i += 1;
            while i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            if i >= chars.len() || !(chars[i] == '"' || chars[i] == '\'' || chars[i] == '`') {
                return None;
            }
            let val = read_str(&mut i)?;
            pairs.push((key, val));
        }
    }
    Labels::from_pairs(pairs).ok()
}

#[derive(Debug, Clone)]
enum Matcher {
    Msg(String),
    Regex(String),
}

impl Matcher {
    fn parse(rest: &str) -> Option<Matcher> {
        let rest = rest.trim();
        if let Some(m) = rest.strip_prefix("msg:") {
            Some(Matcher::Msg(m.trim().to_string()))
        } else {
            rest.strip_prefix("regex:")
                .map(|r| Matcher::Regex(r.trim().to_string()))
        }
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Msg(m) => m == s,
            Matcher::Regex(r) => regex::Regex::new(r).is_ok_and(|r| r.is_match(s)),
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Expect {
    fail: bool,
    fail_msg: Option<String>,
    fail_regex: Option<String>,
    warn: Option<bool>,
    info: Option<bool>,
    /// `expect warn|info msg: ...` / `regex: ...`: one annotation must match.
    warn_match: Vec<Matcher>,
    info_match: Vec<Matcher>,
    ordered: bool,
    string: Option<String>,
    range_vector: Option<(i64, i64, i64)>,
}

#[derive(Debug)]
struct Eval {
    line: usize,
    expr: String,
    instant: Option<i64>,
    range: Option<(i64, i64, i64)>,
    expect: Expect,
    /// (labels or None for a scalar, values)
    results: Vec<(Option<Labels>, Vec<Val>)>,
    has_histogram: bool,
}

enum Cmd {
    Load {
        interval: i64,
        series: Vec<(Labels, Vec<Val>)>,
        hist_series: Vec<Labels>,
    },
    Clear,
    Eval(Box<Eval>),
}

fn parse_file(text: &str) -> Vec<Cmd> {
    let lines: Vec<&str> = text.lines().collect();
    let mut cmds = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let raw = lines[i];
        let line = raw.trim();
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line == "clear" {
            cmds.push(Cmd::Clear);
            continue;
        }
        if let Some(rest) = line
            .strip_prefix("load_with_nhcb ")
            .or_else(|| line.strip_prefix("load "))
        {
            let nhcb = line.starts_with("load_with_nhcb");
            let interval = parse_duration(rest.trim()).unwrap_or(60_000);
            let mut series = Vec::new();
            let mut hist_series: Vec<Labels> = Vec::new();
            while i < lines.len() && !lines[i].trim().is_empty() {
                let l = lines[i].trim();
                i += 1;
                if l.starts_with('#') {
                    continue;
                }
                let (desc, vals) = split_series(l);
                let Some(labels) = parse_labels(&desc) else {
                    // `series@st` (start timestamps) and other descriptors we do not load: their
                    // evals count as unsupported.
                    if let Some((n, _)) = desc.split_once('@')
                        && let Some(l) = parse_labels(n)
                    {
                        hist_series.push(l);
                    }
                    continue;
                };
                let toks: Vec<&str> = split_tokens(&vals);
                match expand_values(&toks) {
                    Some(v) => {
                        if nhcb
                            && let Some(n) = labels.metric_name()
                            && let Some(b) = n.strip_suffix("_bucket")
                        {
                            let mut l: Vec<(String, String)> = labels
                                .iter()
                                .filter(|x| x.name != "le" && x.name != "__name__")
                                .map(|x| (x.name.clone(), x.value.clone()))
                                .collect();
                            l.push(("__name__".into(), b.to_string()));
                            if let Ok(l) = Labels::from_pairs(l) {
                                hist_series.push(l);
                            }
                        }
                        series.push((labels, v));
                    }
                    None => hist_series.push(labels),
                }
            }
            cmds.push(Cmd::Load {
                interval,
                series,
                hist_series,
            });
            continue;
        }
        let (kw, rest) = line.split_once(' ').unwrap_or((line, ""));
        let mut expect = Expect::default();
        match kw {
            "eval" => {}
            "eval_fail" => expect.fail = true,
            "eval_warn" => expect.warn = Some(true),
            "eval_info" => expect.info = Some(true),
            "eval_ordered" => expect.ordered = true,
            _ => continue,
        }
        let mut ev = Eval {
            line: i,
            expr: String::new(),
            instant: None,
            range: None,
            expect,
            results: Vec::new(),
            has_histogram: false,
        };
        if let Some(r) = rest.strip_prefix("instant at ") {
            let (t, e) = r.trim().split_once(' ').unwrap_or((r, ""));
            ev.instant = parse_duration(t);
            ev.expr = e.trim().to_string();
        } else if let Some(r) = rest.strip_prefix("range from ") {
            // range from <start> to <end> step <step> <expr>
            let parts: Vec<&str> = r.splitn(6, ' ').collect();
            if parts.len() >= 5 && parts[1] == "to" && parts[3] == "step" {
                let (st, rest2) = parts[4].split_once(' ').unwrap_or((parts[4], ""));
                let expr = if parts.len() == 6 {
                    format!("{rest2} {}", parts[5])
                } else {
                    rest2.to_string()
                };
                ev.range = match (parse_duration(parts[0]), parse_duration(parts[2]), parse_duration(st)) {
                    (Some(a), Some(b), Some(c)) => Some((a, b, c)),
                    _ => None,
                };
                ev.expr = expr.trim().to_string();
            }
        }
        while i < lines.len() && !lines[i].trim().is_empty() {
            let l = lines[i].trim();
            i += 1;
            if l.starts_with('#') {
                continue;
            }
            if let Some(x) = l.strip_prefix("expect ") {
                let x = x.trim();
                if let Some(f) = x.strip_prefix("fail") {
                    ev.expect.fail = true;
                    let f = f.trim();
                    if let Some(m) = f.strip_prefix("msg:") {
                        ev.expect.fail_msg = Some(m.trim().to_string());
                    } else if let Some(r) = f.strip_prefix("regex:") {
                        ev.expect.fail_regex = Some(r.trim().to_string());
                    }
                } else if x.starts_with("no_warn") {
                    ev.expect.warn = Some(false);
                } else if x.starts_with("no_info") {
                    ev.expect.info = Some(false);
                } else if let Some(r) = x.strip_prefix("warn") {
                    ev.expect.warn = Some(true);
                    ev.expect.warn_match.extend(Matcher::parse(r));
                } else if let Some(r) = x.strip_prefix("info") {
                    ev.expect.info = Some(true);
                    ev.expect.info_match.extend(Matcher::parse(r));
                } else if x.starts_with("ordered") {
                    ev.expect.ordered = true;
                } else if let Some(s) = x.strip_prefix("string") {
                    let s = s.trim();
                    ev.expect.string = Some(unquote(s));
                } else if let Some(r) = x.strip_prefix("range vector from ") {
                    let p: Vec<&str> = r.split_whitespace().collect();
                    if p.len() == 5
                        && let (Some(a), Some(b), Some(c)) =
                            (parse_duration(p[0]), parse_duration(p[2]), parse_duration(p[4]))
                    {
                        ev.expect.range_vector = Some((a, b, c));
                    }
                }
                continue;
            }
            if l.contains("{{") {
                ev.has_histogram = true;
                continue;
            }
            let (desc, vals) = split_series(l);
            let toks = split_tokens(&vals);
            if toks.is_empty() {
                // A bare scalar result.
                match expand_values(&[desc.as_str()]) {
                    Some(v) => ev.results.push((None, v)),
                    None => ev.has_histogram = true,
                }
                continue;
            }
            match (parse_labels(&desc), expand_values(&toks)) {
                (Some(lbl), Some(v)) => ev.results.push((Some(lbl), v)),
                _ => ev.has_histogram = true,
            }
        }
        cmds.push(Cmd::Eval(Box::new(ev)));
    }
    cmds
}

/// Whitespace tokens, keeping `{{...}}` histogram literals whole.
fn split_tokens(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let st = i;
        if s[i..].starts_with("{{") {
            match s[i..].find("}}") {
                Some(e) => i += e + 2,
                None => i = b.len(),
            }
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += 1;
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += 1;
            }
        }
        out.push(&s[st..i]);
    }
    out
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2 && (s.starts_with('"') && s.ends_with('"') || s.starts_with('`') && s.ends_with('`')) {
        return s[1..s.len() - 1].replace("\\\"", "\"").replace("\\\\", "\\");
    }
    s.to_string()
}

/// Adds `@ ts` to every selector and subquery not under a subquery that has `@` (Prometheus's
/// `atModifierTestCases`). `None` when the expression uses an @-unsafe function.
fn with_at(e: &Expr, ts: i64) -> Option<Expr> {
    const UNSAFE: &[&str] = &[
        "days_in_month",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "hour",
        "minute",
        "month",
        "year",
        "predict_linear",
        "time",
        "timestamp",
        "start",
        "end",
        "step",
        "range",
    ];
    fn walk(e: &mut Expr, ts: i64, unsafe_fn: &mut bool) {
        match e {
            Expr::Vector(sel) | Expr::Matrix { sel, .. } => {
                if sel.at.is_none() {
                    sel.at = Some(At::Time(ts));
                }
            }
            Expr::Subquery { expr, at, .. } => {
                if at.is_none() {
                    *at = Some(At::Time(ts));
                }
                check_unsafe(expr, unsafe_fn);
            }
            Expr::Call { func, args } => {
                if UNSAFE.contains(&func.as_str()) {
                    *unsafe_fn = true;
                }
                for a in args {
                    walk(a, ts, unsafe_fn);
                }
            }
            Expr::Aggregate { expr, param, .. } => {
                walk(expr, ts, unsafe_fn);
                if let Some(p) = param {
                    walk(p, ts, unsafe_fn);
                }
            }
            Expr::Binary { lhs, rhs, .. } => {
                walk(lhs, ts, unsafe_fn);
                walk(rhs, ts, unsafe_fn);
            }
            Expr::Neg(x) | Expr::Paren(x) => walk(x, ts, unsafe_fn),
            Expr::Number(_) | Expr::String(_) => {}
        }
    }
    fn check_unsafe(e: &Expr, unsafe_fn: &mut bool) {
        match e {
            Expr::Call { func, args } => {
                if UNSAFE.contains(&func.as_str()) {
                    *unsafe_fn = true;
                }
                args.iter().for_each(|a| check_unsafe(a, unsafe_fn));
            }
            Expr::Subquery { expr, .. } | Expr::Neg(expr) | Expr::Paren(expr) => check_unsafe(expr, unsafe_fn),
            Expr::Aggregate { expr, param, .. } => {
                check_unsafe(expr, unsafe_fn);
                if let Some(p) = param {
                    check_unsafe(p, unsafe_fn);
                }
            }
            Expr::Binary { lhs, rhs, .. } => {
                check_unsafe(lhs, unsafe_fn);
                check_unsafe(rhs, unsafe_fn);
            }
            _ => {}
        }
    }
    let mut e = e.clone();
    let mut u = false;
    walk(&mut e, ts, &mut u);
    if u { None } else { Some(e) }
}

fn close(a: f64, b: f64) -> bool {
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < 1e-6 * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < 1e-6
}

struct Ctx {
    engine: Engine,
    db: Arc<MetricsDb>,
    _dir: tempfile::TempDir,
    hist_series: Vec<Labels>,
}

fn new_db() -> (Arc<MetricsDb>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut o = MetricsOptions::new(dir.path());
    o.block_duration = Duration::from_secs(100_000 * 86_400);
    o.too_far_in_future = Duration::from_secs(100_000 * 86_400);
    o.fsync_interval = Some(Duration::from_secs(3600));
    (MetricsDb::open(o).unwrap(), dir)
}

fn compare(ev: &Eval, out: &QueryOutput, ordered: bool, at: i64) -> Result<(), String> {
    match &out.value {
        QueryValue::String { s, .. } => match &ev.expect.string {
            Some(w) if w == s => Ok(()),
            w => Err(format!("string {s:?}, want {w:?}")),
        },
        QueryValue::Scalar { v, .. } => {
            if ev.results.len() != 1 || ev.results[0].0.is_some() {
                return Err(format!("got scalar {v}, want {} results", ev.results.len()));
            }
            match ev.results[0].1.first() {
                Some(Val::F(w)) if close(*w, *v) => Ok(()),
                w => Err(format!("scalar {v}, want {w:?}")),
            }
        }
        QueryValue::Vector(vec) => {
            if vec.len() != ev.results.len() {
                return Err(format!(
                    "got {} series, want {}: {:?}",
                    vec.len(),
                    ev.results.len(),
                    vec.iter().map(|x| format!("{} {}", x.0, x.2)).collect::<Vec<_>>()
                ));
            }
            for (i, (l, _, v)) in vec.iter().enumerate() {
                let pos = ev.results.iter().position(|r| r.0.as_ref() == Some(l));
                let Some(p) = pos else {
                    return Err(format!("unexpected series {l} {v}"));
                };
                if ordered && p != i {
                    return Err(format!("series {l} at position {i}, want {p}"));
                }
                match ev.results[p].1.first() {
                    Some(Val::F(w)) if close(*w, *v) => {}
                    w => return Err(format!("series {l}: got {v}, want {w:?}")),
                }
            }
            Ok(())
        }
        QueryValue::Matrix(m) => {
            let (from, to, step) = match (ev.range, ev.expect.range_vector) {
                (Some(r), _) => r,
                (None, Some(r)) => r,
                _ => (at, at, 1),
            };
            let mut n_want = 0;
            for (l, vals) in &ev.results {
                let mut want = Vec::new();
                for (k, v) in vals.iter().enumerate() {
                    if let Val::F(f) = v {
                        want.push((from + k as i64 * step, *f));
                    }
                }
                if want.is_empty() {
                    continue;
                }
                n_want += 1;
                let Some(s) = m
                    .iter()
                    .find(|s| Some(&s.labels) == l.as_ref() || (l.is_none() && s.labels.is_empty()))
                else {
                    return Err(format!("missing series {l:?}"));
                };
                let got: Vec<(i64, f64)> = s.samples.iter().map(|x| (x.t, x.v)).collect();
                if got.len() != want.len() || got.iter().zip(&want).any(|(g, w)| g.0 != w.0 || !close(g.1, w.1)) {
                    return Err(format!("series {}: got {got:?}, want {want:?}", s.labels));
                }
            }
            let _ = to;
            if m.len() != n_want {
                return Err(format!(
                    "got {} series, want {n_want}: {:?}",
                    m.len(),
                    m.iter().map(|s| s.labels.to_string()).collect::<Vec<_>>()
                ));
            }
            Ok(())
        }
    }
}

fn check_annotations(ev: &Eval, out: &QueryOutput) -> Result<(), String> {
    match ev.expect.warn {
        Some(true) if out.warnings.is_empty() => return Err("expected a warning".into()),
        Some(false) if !out.warnings.is_empty() => return Err(format!("unexpected warnings {:?}", out.warnings)),
        _ => {}
    }
    match ev.expect.info {
        Some(true) if out.infos.is_empty() => return Err("expected an info".into()),
        Some(false) if !out.infos.is_empty() => return Err(format!("unexpected infos {:?}", out.infos)),
        _ => {}
    }
    for (want, got) in [
        (&ev.expect.warn_match, &out.warnings),
        (&ev.expect.info_match, &out.infos),
    ] {
        for m in want {
            if !got.iter().any(|g| m.matches(g)) {
                return Err(format!("no annotation matches {m:?}: {got:?}"));
            }
        }
    }
    Ok(())
}

fn run_eval(ctx: &Ctx, ev: &Eval) -> Result<(), String> {
    let expr = parse(&ev.expr).map_err(|e| format!("parse: {e}"))?;
    if let Some((s, e, st)) = ev.range {
        let r = ctx.engine.range(ctx.db.as_ref(), &expr, s, e, st);
        return finish(ev, r, false, s);
    }
    let t = ev.instant.ok_or("bad eval line")?;
    let r = ctx.engine.instant(ctx.db.as_ref(), &expr, t);
    let matrix_or_string = matches!(
        r.as_ref().map(|o| &o.value),
        Ok(QueryValue::Matrix(_)) | Ok(QueryValue::String { .. })
    );
    finish(ev, r, ev.expect.ordered, t)?;
    if ev.expect.fail {
        return Ok(());
    }
    // Prometheus's extra checks: @ on every selector at other evaluation times, and range mode.
    let mut cases = vec![(expr.clone(), t)];
    if let Some(e2) = with_at(&expr, t) {
        let times: Vec<i64> = if t == 0 {
            vec![-1000, 0, 1000]
        } else {
            vec![-10 * t, 0, t / 5, t, 10 * t]
        };
        for et in times {
            cases.push((e2.clone(), et));
        }
    }
    for (k, (e, et)) in cases.iter().enumerate() {
        if k > 0 {
            let r = ctx.engine.instant(ctx.db.as_ref(), e, *et);
            let r = r.map_err(|e| format!("@ variant at {et}: {e}"))?;
            compare(ev, &r, ev.expect.ordered, *et).map_err(|m| format!("@ variant at {et}: {m}"))?;
        }
        // Functions of the query's own range differ between instant and range mode by design.
        let range_dependent = ["step()", "range()", "start()", "end()"]
            .iter()
            .any(|f| ev.expr.contains(f));
        if matrix_or_string || ev.expect.ordered || range_dependent {
            continue;
        }
        let rr = ctx
            .engine
            .range(ctx.db.as_ref(), e, et - 60_000, et + 60_000, 60_000)
            .map_err(|e| format!("range mode: {e}"))?;
        let QueryValue::Matrix(m) = &rr.value else {
            return Err("range mode: not a matrix".into());
        };
        let mut vec = Vec::new();
        for s in m {
            if let Some(p) = s.samples.iter().find(|p| p.t == *et) {
                vec.push((s.labels.clone(), *et, p.v));
            }
        }
        let is_scalar = ev.results.len() == 1 && ev.results[0].0.is_none();
        let value = if is_scalar && vec.len() == 1 {
            QueryValue::Scalar { t: *et, v: vec[0].2 }
        } else {
            QueryValue::Vector(vec)
        };
        let synthetic = QueryOutput {
            value,
            warnings: Vec::new(),
            infos: Vec::new(),
            total_samples: 0,
            peak_samples: 0,
        };
        compare(ev, &synthetic, false, *et).map_err(|m| format!("range mode at {et}: {m}"))?;
    }
    Ok(())
}

fn finish(
    ev: &Eval,
    r: Result<QueryOutput, monitoring_rs::query::promql::QueryError>,
    ordered: bool,
    at: i64,
) -> Result<(), String> {
    match r {
        Err(e) => {
            if !ev.expect.fail {
                return Err(format!("error: {e}"));
            }
            let msg = e.to_string();
            if let Some(m) = &ev.expect.fail_msg
                && &msg != m
            {
                return Err(format!("error {msg:?}, want {m:?}"));
            }
            if let Some(re) = &ev.expect.fail_regex
                && !regex::Regex::new(re).map(|r| r.is_match(&msg)).unwrap_or(false)
            {
                return Err(format!("error {msg:?}, want match of {re:?}"));
            }
            Ok(())
        }
        Ok(out) => {
            if ev.expect.fail {
                return Err("expected an error".into());
            }
            check_annotations(ev, &out)?;
            compare(ev, &out, ordered, at)
        }
    }
}

fn load(ctx: &mut Ctx, interval: i64, series: &[(Labels, Vec<Val>)]) {
    // A series named twice in one load: the later line wins at equal timestamps, as in Prometheus.
    let mut merged: BTreeMap<Labels, BTreeMap<i64, Val>> = BTreeMap::new();
    for (l, vals) in series {
        let m = merged.entry(l.clone()).or_default();
        for (i, v) in vals.iter().enumerate() {
            if !matches!(v, Val::Omitted) {
                m.insert(i as i64 * interval, *v);
            }
        }
    }
    let mut app = ctx.db.appender();
    for (l, vals) in merged {
        let idx = app.add_series(SeriesKey::Owned(l));
        for (t, v) in vals {
            match v {
                Val::Omitted => {}
                Val::Stale => app.add_sample(idx, t, stale_nan()),
                Val::F(f) => app.add_sample(idx, t, f),
            }
        }
    }
    app.commit().unwrap();
}

/// Does any selector in `e` select one of the native-histogram series `hist`?
fn touches(e: &Expr, hist: &[Labels]) -> bool {
    let sel_hits = |sel: &monitoring_rs::query::promql::ast::VectorSel| {
        sel.matcher_sets.iter().any(|set| {
            hist.iter()
                .any(|l| set.iter().all(|m| m.matches(l.get_or_empty(&m.name))))
        })
    };
    match e {
        Expr::Vector(sel) | Expr::Matrix { sel, .. } => sel_hits(sel),
        Expr::Subquery { expr, .. } | Expr::Neg(expr) | Expr::Paren(expr) => touches(expr, hist),
        Expr::Call { args, .. } => args.iter().any(|a| touches(a, hist)),
        Expr::Aggregate { expr, param, .. } => touches(expr, hist) || param.as_ref().is_some_and(|p| touches(p, hist)),
        Expr::Binary { lhs, rhs, .. } => touches(lhs, hist) || touches(rhs, hist),
        Expr::Number(_) | Expr::String(_) => false,
    }
}

#[test]
fn promqltest() {
    let dir = std::env::var("PROMQLTEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/compat/promqltest")));
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !dir.is_dir() {
        assert!(!ci, "promqltest directory {} is missing (CI=true)", dir.display());
        eprintln!("promqltest: {} missing, skipped", dir.display());
        return;
    }
    let verbose = std::env::var("PROMQLTEST_VERBOSE").is_ok();
    let only = std::env::var("PROMQLTEST_FILE").ok();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .filter(|p| {
            only.as_ref()
                .is_none_or(|o| p.file_name().is_some_and(|f| f.to_string_lossy().contains(o.as_str())))
        })
        .collect();
    files.sort();
    let mut table: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    // Prometheus's test engine runs with delayed name removal on.
    let opts = EngineOptions {
        timeout: Duration::from_secs(60),
        delayed_name_removal: true,
        ..EngineOptions::default()
    };
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(f).unwrap();
        let (db, d) = new_db();
        let mut ctx = Ctx {
            engine: Engine::new(opts.clone()),
            db,
            _dir: d,
            hist_series: Vec::new(),
        };
        let row = table.entry(name.clone()).or_default();
        for cmd in parse_file(&text) {
            match cmd {
                Cmd::Clear => {
                    let (db, d) = new_db();
                    ctx.db = db;
                    ctx._dir = d;
                    ctx.hist_series.clear();
                }
                Cmd::Load {
                    interval,
                    series,
                    hist_series,
                } => {
                    ctx.hist_series.extend(hist_series);
                    load(&mut ctx, interval, &series);
                }
                Cmd::Eval(ev) => {
                    let unsupported = ev.has_histogram
                        || promql_parser::parser::parse(&ev.expr).is_err()
                        || parse(&ev.expr).is_ok_and(|e| touches(&e, &ctx.hist_series));
                    if unsupported {
                        row.2 += 1;
                        if std::env::var("PROMQLTEST_UNSUPPORTED").is_ok() {
                            let why = if ev.has_histogram {
                                "histogram in expected output"
                            } else if promql_parser::parser::parse(&ev.expr).is_err() {
                                "promql-parser cannot parse"
                            } else {
                                "selects native-histogram series"
                            };
                            eprintln!("UNSUPPORTED {name}:{} ({why}) {}", ev.line, ev.expr);
                        }
                        continue;
                    }
                    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_eval(&ctx, &ev)))
                        .unwrap_or_else(|_| Err("panic".into()));
                    match res {
                        Ok(()) => row.0 += 1,
                        Err(m) => {
                            row.1 += 1;
                            if verbose {
                                eprintln!("FAIL {name}:{} {}\n    {m}", ev.line, ev.expr);
                            }
                        }
                    }
                }
            }
        }
    }
    let (mut p, mut fl, mut u) = (0, 0, 0);
    say!("{:<28} {:>6} {:>6} {:>11}", "file", "passed", "failed", "unsupported");
    for (f, (a, b, c)) in &table {
        say!("{f:<28} {a:>6} {b:>6} {c:>11}");
        p += a;
        fl += b;
        u += c;
    }
    say!("promqltest: {p} passed, {fl} failed, {u} unsupported");
    if only.is_none() {
        assert!(p >= PASS_FLOOR, "promqltest passes fell to {p} (floor {PASS_FLOOR})");
    }
}
