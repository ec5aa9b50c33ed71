//! LogQL printing for `/loki/api/v1/format_query`: the query as Loki 3.x's `syntax.Prettify`
//! prints it. Two layers, as in Loki: a canonical one-line form of every node (Loki's `String()`
//! methods in `pkg/logql/syntax/ast.go` and `pkg/logql/log/label_filter.go`), and the splitter
//! (`pkg/logql/syntax/prettier.go`) that keeps a node on one line while its one-line form fits in
//! `max` characters (100 in Loki) and otherwise puts its children on their own lines, two spaces
//! deeper per level.
//!
//! Owns: those printing rules, quirks included (one-line binary ops get parentheses, a one-line
//! offset prints as Go's `time.Duration` but a split one as a Prometheus duration, `| decolorize`
//! is never indented). Never touches: parsing, evaluation, HTTP.

use super::ast::*;
use super::parser::go_quote;
use super::template::go_float_g;
use super::{go_duration_string as go_duration, model_duration_string as prom_duration};
use crate::model::{MatchOp, Matcher};
use std::fmt::Write;

/// Loki's `MaxCharsPerLine`.
pub const MAX_CHARS_PER_LINE: usize = 100;

/// `format_query`'s answer for a parsed query.
pub fn format_query(e: &Expr) -> String {
    pretty(e, MAX_CHARS_PER_LINE)
}

/// Prettify with a chosen line width (Loki's tests use 20 to exercise splitting).
pub fn pretty(e: &Expr, max: usize) -> String {
    let p = Printer { max };
    match e {
        Expr::Log(l) => p.log(l, 0),
        Expr::Metric(m) => p.metric(m, 0),
    }
}

struct Printer {
    max: usize,
}

fn indent(level: usize) -> String {
    "  ".repeat(level)
}

impl Printer {
    fn split(&self, one_line: &str) -> bool {
        one_line.len() > self.max
    }

    fn log(&self, l: &LogExpr, level: usize) -> String {
        let one = log_string(l);
        if !self.split(&one) {
            return indent(level) + &one;
        }
        let mut s = indent(level) + &matchers_string(&l.matchers);
        for unit in stage_units(&l.stages) {
            s.push('\n');
            match unit {
                Unit::Filters(fs) => {
                    let one = filters_string(fs);
                    if !self.split(&one) {
                        s += &(indent(level + 1) + &one);
                    } else {
                        // Each filter of the chain on its own line, all at the same depth.
                        let parts = filter_parts(fs);
                        let lines: Vec<String> = parts.iter().map(|p| indent(level + 1) + p).collect();
                        s += &lines.join("\n");
                    }
                }
                // Loki's DecolorizeExpr.Pretty ignores its level.
                Unit::Stage(Stage::Decolorize) => s += "| decolorize",
                Unit::Stage(st) => s += &(indent(level + 1) + &stage_string(st)),
            }
        }
        s
    }

    fn range(&self, r: &RangeAgg, level: usize) -> String {
        let mut s = self.log(&r.log, level);
        if let Some(u) = &r.unwrap {
            s.push('\n');
            s += &indent(level + 1);
            s += "| unwrap ";
            s += &unwrap_ident(u);
            for f in &u.post {
                let _ = write!(s, "\n{}| {}", indent(level + 1), label_filter_string(f));
            }
        }
        let _ = write!(s, " [{}]", prom_duration(r.range_ns));
        if r.offset_ns != 0 {
            let _ = write!(s, " offset {}", prom_duration(r.offset_ns));
        }
        s
    }

    fn metric(&self, m: &MetricExpr, level: usize) -> String {
        let one = metric_string(m);
        if !self.split(&one) || fold(m).is_some() {
            return indent(level) + &one;
        }
        let mut s = indent(level);
        match m {
            MetricExpr::Range(r) => {
                s += range_op_name(r.op);
                s += "(\n";
                if let Some(p) = r.param {
                    let _ = writeln!(s, "{}{},", indent(level + 1), go_float_g(p));
                }
                s += &self.range(r, level + 1);
                s += "\n";
                s += &indent(level);
                s += ")";
                if let Some(g) = &r.grouping {
                    s += &grouping_pretty(g);
                }
            }
            MetricExpr::Vector {
                op,
                param,
                grouping,
                inner,
            } => {
                s += vec_op_name(*op);
                if let Some(g) = grouping {
                    s += &grouping_pretty(g);
                }
                s += "(\n";
                if let Some(p) = vec_param(*op, *param) {
                    let _ = writeln!(s, "{}{p},", indent(level + 1));
                }
                s += &self.metric(inner, level + 1);
                s += "\n";
                s += &indent(level);
                s += ")";
            }
            MetricExpr::Binary {
                op,
                bool_mod,
                matching,
                lhs,
                rhs,
            } => {
                // The left operand brings its own indentation, one level deeper.
                s = self.metric(lhs, level + 1);
                s.push('\n');
                s += &indent(level);
                s += &binop_matching(*op, *bool_mod, matching, true);
                s.push('\n');
                s += &self.metric(rhs, level + 1);
            }
            MetricExpr::Literal(_) | MetricExpr::VectorLit(_) => s += &one,
            MetricExpr::LabelReplace {
                inner,
                dst,
                replacement,
                src,
                re,
            } => {
                s += "label_replace(\n";
                let args = [
                    self.metric(inner, level + 1),
                    indent(level + 1) + &go_quote(dst),
                    indent(level + 1) + &go_quote(replacement),
                    indent(level + 1) + &go_quote(src),
                    indent(level + 1) + &go_quote(label_replace_regex(re)),
                ];
                s += &args.join(",\n");
                s += "\n";
                s += &indent(level);
                s += ")";
            }
        }
        s
    }
}

/// A pipeline step as Loki's parser groups them: consecutive line filters form one stage.
enum Unit<'a> {
    Filters(&'a [Stage]),
    Stage(&'a Stage),
}

fn stage_units(stages: &[Stage]) -> Vec<Unit<'_>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < stages.len() {
        if matches!(stages[i], Stage::LineFilter(_)) {
            let n = stages[i..]
                .iter()
                .take_while(|s| matches!(s, Stage::LineFilter(_)))
                .count();
            out.push(Unit::Filters(&stages[i..i + n]));
            i += n;
        } else {
            out.push(Unit::Stage(&stages[i]));
            i += 1;
        }
    }
    out
}

fn matchers_string(ms: &[Matcher]) -> String {
    let parts: Vec<String> = ms.iter().map(matcher_string).collect();
    format!("{{{}}}", parts.join(", "))
}

fn match_op(op: MatchOp) -> &'static str {
    match op {
        MatchOp::Equal => "=",
        MatchOp::NotEqual => "!=",
        MatchOp::Regex => "=~",
        MatchOp::NotRegex => "!~",
    }
}

/// Prometheus `labels.Matcher.String()`.
fn matcher_string(m: &Matcher) -> String {
    format!("{}{}{}", m.name, match_op(m.op), go_quote(&m.value))
}

fn log_string(l: &LogExpr) -> String {
    let mut s = matchers_string(&l.matchers);
    for unit in stage_units(&l.stages) {
        s.push(' ');
        match unit {
            Unit::Filters(fs) => s += &filters_string(fs),
            Unit::Stage(st) => s += &stage_string(st),
        }
    }
    s
}

/// The filters of one chain, one string per filter Loki keeps as its own node: positive `or`
/// alternatives stay together, negative ones become separate filters (`!(a or b)` is `!a !b`).
fn filter_parts(fs: &[Stage]) -> Vec<String> {
    let mut out = Vec::new();
    for st in fs {
        let Stage::LineFilter(f) = st else { continue };
        let Some(first) = f.alts.first() else { continue };
        let op = filter_op(f.negative, first);
        if f.negative {
            for a in &f.alts {
                out.push(format!("{op} {}", line_match_string(a)));
            }
        } else {
            let alts: Vec<String> = f.alts.iter().map(line_match_string).collect();
            out.push(format!("{op} {}", alts.join(" or ")));
        }
    }
    out
}

fn filters_string(fs: &[Stage]) -> String {
    filter_parts(fs).join(" ")
}

fn filter_op(negative: bool, m: &LineMatch) -> &'static str {
    match (m, negative) {
        (LineMatch::Contains(_) | LineMatch::Ip(_), false) => "|=",
        (LineMatch::Contains(_) | LineMatch::Ip(_), true) => "!=",
        (LineMatch::Regex(_), false) => "|~",
        (LineMatch::Regex(_), true) => "!~",
        (LineMatch::Pattern(_), false) => "|>",
        (LineMatch::Pattern(_), true) => "!>",
    }
}

fn line_match_string(m: &LineMatch) -> String {
    match m {
        LineMatch::Contains(f) => go_quote(&String::from_utf8_lossy(f.needle())),
        LineMatch::Regex(r) => go_quote(r.as_str()),
        LineMatch::Pattern(p) => go_quote(p.source()),
        LineMatch::Ip(ip) => format!("ip({})", go_quote(&ip_string(ip))),
    }
}

/// The ip pattern as written (the parser keeps the parsed addresses; their canonical text is
/// what `ip("...")` accepts back).
fn ip_string(ip: &IpMatcher) -> String {
    match ip {
        IpMatcher::Single(a) => a.to_string(),
        IpMatcher::Range(a, b) => format!("{a}-{b}"),
        IpMatcher::Cidr(a, n) => format!("{a}/{n}"),
    }
}

fn json_path(parts: &[PathPart]) -> String {
    let mut s = String::new();
    for (i, p) in parts.iter().enumerate() {
        match p {
            PathPart::Key(k) if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !k.is_empty() => {
                if i > 0 {
                    s.push('.');
                }
                s += k;
            }
            PathPart::Key(k) => {
                let _ = write!(s, "[{}]", go_quote(k));
            }
            PathPart::Index(n) => {
                let _ = write!(s, "[{n}]");
            }
        }
    }
    s
}

fn stage_string(st: &Stage) -> String {
    match st {
        Stage::LineFilter(_) => filter_parts(std::slice::from_ref(st)).join(" "),
        Stage::Json(params) if params.is_empty() => "| json".into(),
        Stage::Json(params) => {
            let ps: Vec<String> = params
                .iter()
                .map(|(n, p)| format!("{n}={}", go_quote(&json_path(p))))
                .collect();
            format!("| json {}", ps.join(","))
        }
        Stage::Logfmt {
            strict,
            keep_empty,
            params,
        } => {
            let mut s = String::from("| logfmt");
            if params.is_empty() {
                if *strict {
                    s += " --strict";
                }
                if *keep_empty {
                    s += " --keep-empty";
                }
                return s;
            }
            s.push(' ');
            if *strict {
                s += "--strict ";
            }
            if *keep_empty {
                s += "--keep-empty ";
            }
            let ps: Vec<String> = params.iter().map(|(n, e)| format!("{n}={}", go_quote(e))).collect();
            s + &ps.join(",")
        }
        Stage::Regexp(r) => format!("| regexp {}", go_quote(r.as_str())),
        Stage::Pattern(p) => format!("| pattern {}", go_quote(p.source())),
        Stage::Unpack => "| unpack".into(),
        Stage::LabelFilter(f) => format!("| {}", label_filter_string(f)),
        Stage::LineFormat(t) => format!("| line_format {}", go_quote(t.source())),
        Stage::LabelFormat(fs) => {
            let ps: Vec<String> = fs
                .iter()
                .map(|f| match f {
                    LabelFmt::Rename { dst, src } => format!("{dst}={src}"),
                    LabelFmt::Template { dst, tmpl } => format!("{dst}={}", go_quote(tmpl.source())),
                })
                .collect();
            format!("| label_format {}", ps.join(","))
        }
        Stage::Drop(ns) => format!("| drop {}", name_matchers(ns)),
        Stage::Keep(ns) => format!("| keep {}", name_matchers(ns)),
        Stage::Decolorize => "| decolorize".into(),
    }
}

fn name_matchers(ns: &[NameMatcher]) -> String {
    let ps: Vec<String> = ns
        .iter()
        .map(|n| match &n.matcher {
            Some(m) => matcher_string(m),
            None => n.name.clone(),
        })
        .collect();
    ps.join(",")
}

/// Loki's `LabelFilterType.String()`: equality prints as `==` for typed filters.
fn cmp_op(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq => "==",
        CmpOp::Ne => "!=",
        CmpOp::Gt => ">",
        CmpOp::Ge => ">=",
        CmpOp::Lt => "<",
        CmpOp::Le => "<=",
    }
}

fn label_filter_string(f: &LabelFilter) -> String {
    match f {
        LabelFilter::And(a, b) => format!("( {} , {} )", label_filter_string(a), label_filter_string(b)),
        LabelFilter::Or(a, b) => format!("( {} or {} )", label_filter_string(a), label_filter_string(b)),
        LabelFilter::Matcher(m) => match m.op {
            // A regex Loki keeps as a regex prints in backquotes (LineFilterLabelFilter.String);
            // `.*` matches everything and prints as the plain matcher.
            MatchOp::Regex | MatchOp::NotRegex if !loki_simplifies(&m.value) => {
                let v = if m.value.contains('`') {
                    go_quote(&m.value)
                } else {
                    format!("`{}`", m.value)
                };
                format!("{}{}{v}", m.name, match_op(m.op))
            }
            _ => matcher_string(m),
        },
        LabelFilter::Contains {
            name, negative, regex, ..
        } => format!("{name}{}{}", if *negative { "!~" } else { "=~" }, go_quote(regex)),
        LabelFilter::Number { name, op, value } => format!("{name}{}{}", cmp_op(*op), go_float_f(*value)),
        LabelFilter::Duration { name, op, value_s } => {
            format!("{name}{}{}", cmp_op(*op), go_duration((value_s * 1e9).round() as i64))
        }
        LabelFilter::Bytes { name, op, value } => format!("{name}{}{}", cmp_op(*op), humanize_bytes(*value as u64)),
        LabelFilter::Ip { name, negative, ip } => {
            format!(
                "{name}{}ip({})",
                if *negative { "!=" } else { "=" },
                go_quote(&ip_string(ip))
            )
        }
    }
}

/// Whether Loki turns a label-filter regex into plain substring tests (then it prints the
/// matcher with double quotes, otherwise the regex in backquotes): `.*`, literals, literals
/// wrapped in `.*`, `(?i)` literals and top-level alternations of those.
fn loki_simplifies(re: &str) -> bool {
    let re = re.strip_prefix("(?i)").unwrap_or(re);
    re.split('|').all(|alt| {
        let a = alt.strip_prefix(".*").unwrap_or(alt);
        let a = a.strip_suffix(".*").unwrap_or(a);
        !a.chars().any(|c| "\\.+*?()[]{}^$".contains(c))
    })
}

/// Loki's parser folds a binary operation on two literals into one literal (`reduceBinOp`).
fn fold(m: &MetricExpr) -> Option<f64> {
    match m {
        MetricExpr::Literal(v) => Some(*v),
        MetricExpr::Binary { op, lhs, rhs, .. } => {
            let (l, r) = (fold(lhs)?, fold(rhs)?);
            let b = |c: bool| if c { 1.0 } else { 0.0 };
            Some(match op {
                BinOp::Add => l + r,
                BinOp::Sub => l - r,
                BinOp::Mul => l * r,
                BinOp::Div if r == 0.0 => f64::NAN,
                BinOp::Div => l / r,
                BinOp::Mod if r == 0.0 => f64::NAN,
                BinOp::Mod => l % r,
                BinOp::Pow => l.powf(r),
                BinOp::Eq => b(l == r),
                BinOp::Ne => b(l != r),
                BinOp::Gt => b(l > r),
                BinOp::Ge => b(l >= r),
                BinOp::Lt => b(l < r),
                BinOp::Le => b(l <= r),
                BinOp::And | BinOp::Or | BinOp::Unless => return None,
            })
        }
        _ => None,
    }
}

/// Go `strconv.FormatFloat(v, 'f', -1, 64)`: shortest digits, never an exponent.
fn go_float_f(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    // Rust's Display for f64 is the shortest round-trip digits without exponent.
    format!("{v}")
}

/// go-humanize `Bytes` (SI units) with the space removed, as Loki's BytesLabelFilter prints.
fn humanize_bytes(b: u64) -> String {
    if b < 10 {
        return format!("{b}B");
    }
    const SIZES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let f = b as f64;
    let e = (f.ln() / 1000f64.ln()).floor();
    let suffix = SIZES.get(e as usize).copied().unwrap_or("EB");
    let val = (f / 1000f64.powf(e) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1}{suffix}")
    } else {
        format!("{val:.0}{suffix}")
    }
}

fn unwrap_ident(u: &Unwrap) -> String {
    match u.conv {
        UnwrapConv::None => u.label.clone(),
        UnwrapConv::Duration => format!("duration({})", u.label),
        UnwrapConv::Bytes => format!("bytes({})", u.label),
    }
}

fn range_string(r: &RangeAgg) -> String {
    let mut s = log_string(&r.log);
    if let Some(u) = &r.unwrap {
        let _ = write!(s, " | unwrap {}", unwrap_ident(u));
        for f in &u.post {
            let _ = write!(s, " | {}", label_filter_string(f));
        }
    }
    let _ = write!(s, "[{}]", prom_duration(r.range_ns));
    if r.offset_ns != 0 {
        // Loki's OffsetExpr.String uses time.Duration, unlike its Pretty.
        let _ = write!(s, " offset {}", go_duration(r.offset_ns));
    }
    s
}

pub fn range_op_name(op: RangeOp) -> &'static str {
    match op {
        RangeOp::CountOverTime => "count_over_time",
        RangeOp::Rate => "rate",
        RangeOp::BytesOverTime => "bytes_over_time",
        RangeOp::BytesRate => "bytes_rate",
        RangeOp::AbsentOverTime => "absent_over_time",
        RangeOp::SumOverTime => "sum_over_time",
        RangeOp::AvgOverTime => "avg_over_time",
        RangeOp::MinOverTime => "min_over_time",
        RangeOp::MaxOverTime => "max_over_time",
        RangeOp::StdvarOverTime => "stdvar_over_time",
        RangeOp::StddevOverTime => "stddev_over_time",
        RangeOp::QuantileOverTime => "quantile_over_time",
        RangeOp::FirstOverTime => "first_over_time",
        RangeOp::LastOverTime => "last_over_time",
        RangeOp::RateCounter => "rate_counter",
    }
}

pub fn vec_op_name(op: VecOp) -> &'static str {
    match op {
        VecOp::Sum => "sum",
        VecOp::Avg => "avg",
        VecOp::Min => "min",
        VecOp::Max => "max",
        VecOp::Count => "count",
        VecOp::Stddev => "stddev",
        VecOp::Stdvar => "stdvar",
        VecOp::Topk => "topk",
        VecOp::Bottomk => "bottomk",
        VecOp::Sort => "sort",
        VecOp::SortDesc => "sort_desc",
    }
}

/// Loki keeps a vector aggregation's parameter as an int and always prints topk/bottomk's.
fn vec_param(op: VecOp, p: Option<f64>) -> Option<i64> {
    let v = p.map(|v| v as i64).unwrap_or(0);
    match op {
        VecOp::Topk | VecOp::Bottomk => Some(v),
        _ if v != 0 => Some(v),
        _ => None,
    }
}

/// The operator with its `bool` and vector matching, in Loki's two spellings: `BinOpExpr.String()`
/// (`pretty` false: label lists joined by `,`, `on () ` printed even when empty, keeping its trailing
/// space without a group modifier) and prettier.go's `formatBinaryOp` (`pretty`: lists joined by
/// `, `, the `on`/`ignoring` part only when it lists labels).
fn binop_matching(op: BinOp, bool_mod: bool, m: &VectorMatching, pretty: bool) -> String {
    let sep = if pretty { ", " } else { "," };
    let mut s = op.symbol().to_string();
    if bool_mod {
        s += " bool";
    }
    if let Some(on) = m.on {
        let mut group = match m.group_left {
            Some(true) => "group_left".to_string(),
            Some(false) => "group_right".to_string(),
            None => String::new(),
        };
        if !m.include.is_empty() {
            group = format!("{group} ({})", m.include.join(sep));
        }
        if !pretty || !m.labels.is_empty() {
            let kw = if on { "on" } else { "ignoring" };
            s = format!("{s} {kw} ({}) {group}", m.labels.join(sep));
        }
    }
    s
}

/// `Grouping.String()`: ` by (a,b)` / ` without (a,b)`.
fn grouping_string(g: &Grouping) -> String {
    format!(" {} ({})", if g.without { "without" } else { "by" }, g.labels.join(","))
}

/// `Grouping.Pretty()`: ` by (a, b)`, ` without (a, b)`, ` without`, or nothing for `by ()`.
fn grouping_pretty(g: &Grouping) -> String {
    let mut s = String::new();
    if g.without {
        s += " without";
    } else if !g.labels.is_empty() {
        s += " by";
    }
    if !g.labels.is_empty() {
        let _ = write!(s, " ({})", g.labels.join(", "));
    }
    s
}

/// The parser anchors label_replace's regex as `^(?s:...)$`; Loki prints the regex as written.
fn label_replace_regex(re: &regex::Regex) -> &str {
    let s = re.as_str();
    s.strip_prefix("^(?s:").and_then(|r| r.strip_suffix(")$")).unwrap_or(s)
}

fn metric_string(m: &MetricExpr) -> String {
    if let Some(v) = fold(m) {
        return go_float_g(v);
    }
    match m {
        MetricExpr::Range(r) => {
            let mut s = format!("{}(", range_op_name(r.op));
            if let Some(p) = r.param {
                s += &go_float_f(p);
                s.push(',');
            }
            s += &range_string(r);
            s.push(')');
            if let Some(g) = &r.grouping {
                s += &grouping_string(g);
            }
            s
        }
        MetricExpr::Vector {
            op,
            param,
            grouping,
            inner,
        } => {
            let mut s = vec_op_name(*op).to_string();
            // `by ()` groups everything into one series, the same as no grouping.
            if let Some(g) = grouping
                && (g.without || !g.labels.is_empty())
            {
                s += &grouping_string(g);
            }
            s.push('(');
            if let Some(p) = vec_param(*op, *param) {
                let _ = write!(s, "{p},");
            }
            s += &metric_string(inner);
            s.push(')');
            s
        }
        MetricExpr::Binary {
            op,
            bool_mod,
            matching,
            lhs,
            rhs,
        } => format!(
            "({} {} {})",
            metric_string(lhs),
            binop_matching(*op, *bool_mod, matching, false),
            metric_string(rhs)
        ),
        MetricExpr::Literal(v) => go_float_g(*v),
        MetricExpr::VectorLit(v) => format!("vector({v:.6})"),
        MetricExpr::LabelReplace {
            inner,
            dst,
            replacement,
            src,
            re,
        } => format!(
            "label_replace({},{},{},{},{})",
            metric_string(inner),
            go_quote(dst),
            go_quote(replacement),
            go_quote(src),
            go_quote(label_replace_regex(re))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::logql::parser::parse;

    /// Parses `input` and prettifies it at `max` characters per line.
    fn check(max: usize, input: &str, want: &str) {
        let e = match parse(input) {
            Ok(e) => e,
            Err(err) => panic!("parse {input:?}: {err}"),
        };
        assert_eq!(pretty(&e, max), want, "input: {input}");
    }

    /// Loki's `prettier_test.go` tables (all run with `MaxCharsPerLine = 20`).
    const LOKI_CASES: &[(&str, &str)] = &[
        (
            r#"{job="loki", instance="localhost"}"#,
            r#"{job="loki", instance="localhost"}"#,
        ),
        (
            r#"{job="loki", instance="localhost"}|logfmt|level="error" "#,
            "{job=\"loki\", instance=\"localhost\"}\n  | logfmt\n  | level=\"error\"",
        ),
        (
            r#"{job="loki", instance="localhost"}|= "error" != "memcached" |= ip("192.168.0.1") |logfmt"#,
            "{job=\"loki\", instance=\"localhost\"}\n  |= \"error\"\n  != \"memcached\"\n  |= ip(\"192.168.0.1\")\n  | logfmt",
        ),
        (
            r#"{job="loki", instance="localhost"}|logfmt|line_format "{{.error}}""#,
            "{job=\"loki\", instance=\"localhost\"}\n  | logfmt\n  | line_format \"{{.error}}\"",
        ),
        (
            r#"{job="loki", instance="localhost"}|logfmt|label_format dst="{{.src}}""#,
            "{job=\"loki\", instance=\"localhost\"}\n  | logfmt\n  | label_format dst=\"{{.src}}\"",
        ),
        (
            r#"count_over_time({job="loki", instance="localhost"}|logfmt[1m])"#,
            "count_over_time(\n  {job=\"loki\", instance=\"localhost\"}\n    | logfmt [1m]\n)",
        ),
        (
            r#"count_over_time({job="loki", instance="localhost"}|= "error"[5m] offset 20m)"#,
            "count_over_time(\n  {job=\"loki\", instance=\"localhost\"}\n    |= \"error\" [5m] offset 20m\n)",
        ),
        (
            r#"quantile_over_time(0.99,{container="ingress-nginx",service="hosted-grafana"}| json| unwrap response_latency_seconds| __error__=""[1m]) by (cluster)"#,
            "quantile_over_time(\n  0.99,\n  {container=\"ingress-nginx\", service=\"hosted-grafana\"}\n    | json\n    | unwrap response_latency_seconds\n    | __error__=\"\" [1m]\n) by (cluster)",
        ),
        (
            r#"count_over_time({job="loki", instance="localhost"}|= "error" != "memcached" |= ip("192.168.0.1") |logfmt[1m])"#,
            "count_over_time(\n  {job=\"loki\", instance=\"localhost\"}\n    |= \"error\"\n    != \"memcached\"\n    |= ip(\"192.168.0.1\")\n    | logfmt [1m]\n)",
        ),
        (
            r#"{job="loki", namespace="loki-prod", container="nginx-ingress"}| json first_server="servers[0]", ua="request.headers[\"User-Agent\"]" | level="error""#,
            "{job=\"loki\", namespace=\"loki-prod\", container=\"nginx-ingress\"}\n  | json first_server=\"servers[0]\",ua=\"request.headers[\\\"User-Agent\\\"]\"\n  | level=\"error\"",
        ),
        (
            r#"sum(count_over_time({foo="bar",namespace="loki",instance="localhost"}[5m])) by (container)"#,
            "sum by (container)(\n  count_over_time(\n    {foo=\"bar\", namespace=\"loki\", instance=\"localhost\"} [5m]\n  )\n)",
        ),
        (
            r#"topk(5, count_over_time({foo="bar",namespace="loki",instance="localhost"}[5m])) by (container)"#,
            "topk by (container)(\n  5,\n  count_over_time(\n    {foo=\"bar\", namespace=\"loki\", instance=\"localhost\"} [5m]\n  )\n)",
        ),
        (
            r#"label_replace(rate({job="api-server",service="a:c"}|= "err" [5m]), "foo", "$1", "service", "(.*):.*")"#,
            "label_replace(\n  rate(\n    {job=\"api-server\", service=\"a:c\"}\n      |= \"err\" [5m]\n  ),\n  \"foo\",\n  \"$1\",\n  \"service\",\n  \"(.*):.*\"\n)",
        ),
        (
            r#"label_replace(label_replace(rate({job="api-server",service="a:c"}|= "err" [5m]), "foo", "$1", "service", "(.*):.*"), "foo", "$1", "service", "(.*):.*")"#,
            "label_replace(\n  label_replace(\n    rate(\n      {job=\"api-server\", service=\"a:c\"}\n        |= \"err\" [5m]\n    ),\n    \"foo\",\n    \"$1\",\n    \"service\",\n    \"(.*):.*\"\n  ),\n  \"foo\",\n  \"$1\",\n  \"service\",\n  \"(.*):.*\"\n)",
        ),
        (
            r#"sum(rate({job="loki", namespace="loki-prod", instance="localhost"}[5m]))/sum(count_over_time({job="loki", namespace="loki-prod", instance="localhost"}[5m]))"#,
            "  sum(\n    rate(\n      {job=\"loki\", namespace=\"loki-prod\", instance=\"localhost\"} [5m]\n    )\n  )\n/\n  sum(\n    count_over_time(\n      {job=\"loki\", namespace=\"loki-prod\", instance=\"localhost\"} [5m]\n    )\n  )",
        ),
        (
            r#"sum(rate({job="loki"}[5m])) + sum(rate({job="loki-dev"}[5m])) / sum(rate({job="loki-prod"}[5m]))"#,
            "  sum(\n    rate(\n      {job=\"loki\"} [5m]\n    )\n  )\n+\n    sum(\n      rate(\n        {job=\"loki-dev\"} [5m]\n      )\n    )\n  /\n    sum(\n      rate(\n        {job=\"loki-prod\"} [5m]\n      )\n    )",
        ),
        (
            r#"sum(rate({job="loki"}[5m])) / sum(rate({job="loki-dev"}[5m])) + sum(rate({job="loki-prod"}[5m]))"#,
            "    sum(\n      rate(\n        {job=\"loki\"} [5m]\n      )\n    )\n  /\n    sum(\n      rate(\n        {job=\"loki-dev\"} [5m]\n      )\n    )\n+\n  sum(\n    rate(\n      {job=\"loki-prod\"} [5m]\n    )\n  )",
        ),
        (
            r#"sum(rate({job="loki"}[5m])) - sum(rate({job="loki-stage"}[5m])) / sum(rate({job="loki-dev"}[5m])) + sum(rate({job="loki-prod"}[5m]))"#,
            "    sum(\n      rate(\n        {job=\"loki\"} [5m]\n      )\n    )\n  -\n      sum(\n        rate(\n          {job=\"loki-stage\"} [5m]\n        )\n      )\n    /\n      sum(\n        rate(\n          {job=\"loki-dev\"} [5m]\n        )\n      )\n+\n  sum(\n    rate(\n      {job=\"loki-prod\"} [5m]\n    )\n  )",
        ),
        (
            r#"sum(rate({job="loki"}[5m])) - sum(rate({job="loki-stage"}[5m])) % sum(rate({job="loki-dev"}[5m])) + sum(rate({job="loki-prod"}[5m]))"#,
            "    sum(\n      rate(\n        {job=\"loki\"} [5m]\n      )\n    )\n  -\n      sum(\n        rate(\n          {job=\"loki-stage\"} [5m]\n        )\n      )\n    %\n      sum(\n        rate(\n          {job=\"loki-dev\"} [5m]\n        )\n      )\n+\n  sum(\n    rate(\n      {job=\"loki-prod\"} [5m]\n    )\n  )",
        ),
        (
            r#"sum(rate({job="loki"}[5m])) / sum(rate({job="loki-stage"}[5m])) % sum(rate({job="loki-dev"}[5m])) + sum(rate({job="loki-prod"}[5m]))"#,
            "      sum(\n        rate(\n          {job=\"loki\"} [5m]\n        )\n      )\n    /\n      sum(\n        rate(\n          {job=\"loki-stage\"} [5m]\n        )\n      )\n  %\n    sum(\n      rate(\n        {job=\"loki-dev\"} [5m]\n      )\n    )\n+\n  sum(\n    rate(\n      {job=\"loki-prod\"} [5m]\n    )\n  )",
        ),
        (
            r#"sum(rate({job="loki"}[5m])) / sum(rate({job="loki-stage"}[5m])) % sum(rate({job="loki-dev"}[5m])) * sum(rate({job="loki-prod"}[5m]))"#,
            "      sum(\n        rate(\n          {job=\"loki\"} [5m]\n        )\n      )\n    /\n      sum(\n        rate(\n          {job=\"loki-stage\"} [5m]\n        )\n      )\n  %\n    sum(\n      rate(\n        {job=\"loki-dev\"} [5m]\n      )\n    )\n*\n  sum(\n    rate(\n      {job=\"loki-prod\"} [5m]\n    )\n  )",
        ),
        (
            r#"sum(rate({job="loki"}[5m])) * on(instance, job) group_left (node) sum(rate({job="loki-prod"}[5m]))"#,
            "  sum(\n    rate(\n      {job=\"loki\"} [5m]\n    )\n  )\n* on (instance, job) group_left (node)\n  sum(\n    rate(\n      {job=\"loki-prod\"} [5m]\n    )\n  )",
        ),
    ];

    #[test]
    fn loki_prettier_cases() {
        for (input, want) in LOKI_CASES {
            check(20, input, want);
        }
    }

    /// One-line canonical forms at Loki's default width (from ast.go's `String()` rules).
    const ONE_LINE: &[(&str, &str)] = &[
        (r#"{app="x"}   |=   `err`"#, r#"{app="x"} |= "err""#),
        (
            r#"sum by(job,instance)(rate({app="x"}[1h]))"#,
            r#"sum by (job,instance)(rate({app="x"}[1h]))"#,
        ),
        (r#"rate({app="x"}[90s])"#, r#"rate({app="x"}[1m30s])"#),
        (
            r#"count_over_time({app="x"}[2h] offset 1h)"#,
            r#"count_over_time({app="x"}[2h] offset 1h0m0s)"#,
        ),
        (r#"rate({app="x"}[5m]) > 2"#, r#"(rate({app="x"}[5m]) > 2)"#),
        (
            r#"{app="x"} | logfmt --strict | status >= 500"#,
            r#"{app="x"} | logfmt --strict | status>=500"#,
        ),
        (r#"{app="x"} | latency > 250ms"#, r#"{app="x"} | latency>250ms"#),
        (r#"{app="x"} | size > 1KB"#, r#"{app="x"} | size>1.0kB"#),
        (r#"{app="x"} | a="1", b!="2""#, r#"{app="x"} | ( a="1" , b!="2" )"#),
        (
            r#"{app="x"} |~ "a.b" | decolorize"#,
            r#"{app="x"} |~ "a.b" | decolorize"#,
        ),
        (
            r#"{app="x"} |= "a" or "b" != "c" or "d""#,
            r#"{app="x"} |= "a" or "b" != "c" != "d""#,
        ),
        (
            r#"{app="x"} | pattern "<ip> <_>" | drop a, b="c""#,
            r#"{app="x"} | pattern "<ip> <_>" | drop a,b="c""#,
        ),
        (r#"vector(1)"#, r#"vector(1.000000)"#),
        (r#"2 * 3 + 1"#, r#"7"#),
        (r#"rate({app="x"}[5m]) * (2 + 1)"#, r#"(rate({app="x"}[5m]) * 3)"#),
        (
            r#"{app="x"} | a=~"foo.*" | b=~"a|b" | c!~"x+" | d=ip("10.0.0.0/8")"#,
            r#"{app="x"} | a=~"foo.*" | b=~"a|b" | c!~`x+` | d=ip("10.0.0.0/8")"#,
        ),
        (
            r#"sum without (a) (rate({app="x"}[5m]))"#,
            r#"sum without (a)(rate({app="x"}[5m]))"#,
        ),
        (
            r#"max_over_time({app="x"} | unwrap bytes(size) [5m]) by (a)"#,
            r#"max_over_time({app="x"} | unwrap bytes(size)[5m]) by (a)"#,
        ),
    ];

    /// Splitting at Loki's default width: the pipeline splits, `| decolorize` keeps no indent.
    const SPLIT_100: &[(&str, &str)] = &[(
        r#"{namespace="prod", app="checkout"} |= "error" | logfmt | status >= 500 | line_format "{{.method}} {{.path}}" | decolorize"#,
        "{namespace=\"prod\", app=\"checkout\"}\n  |= \"error\"\n  | logfmt\n  | status>=500\n  | line_format \"{{.method}} {{.path}}\"\n| decolorize",
    )];

    #[test]
    fn split_at_default_width() {
        for (input, want) in SPLIT_100 {
            check(MAX_CHARS_PER_LINE, input, want);
        }
    }

    #[test]
    fn one_line_forms() {
        for (input, want) in ONE_LINE {
            check(MAX_CHARS_PER_LINE, input, want);
        }
    }
}
