//! LogQL parser: recursive descent over `lexer` tokens into `ast`, with Loki's error texts.
//!
//! Owns: grammar, precedence, semantic checks Loki makes at parse time (selector must have a
//! non-empty matcher, grouping rules, parameters). Never touches: evaluation or data.

use super::ParseError;
use super::ast::*;
use super::lexer::{Tok, Token, lex};
use super::pattern::Pattern;
use super::template::Template;
use crate::model::{MatchOp, Matcher};

pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let toks = lex(src)?;
    let mut p = Parser { src, toks, i: 0 };
    let e = p.parse_top()?;
    Ok(e)
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Token>,
    i: usize,
}

const RANGE_OPS: &[(&str, RangeOp)] = &[
    ("count_over_time", RangeOp::CountOverTime),
    ("rate", RangeOp::Rate),
    ("bytes_over_time", RangeOp::BytesOverTime),
    ("bytes_rate", RangeOp::BytesRate),
    ("absent_over_time", RangeOp::AbsentOverTime),
    ("sum_over_time", RangeOp::SumOverTime),
    ("avg_over_time", RangeOp::AvgOverTime),
    ("min_over_time", RangeOp::MinOverTime),
    ("max_over_time", RangeOp::MaxOverTime),
    ("stdvar_over_time", RangeOp::StdvarOverTime),
    ("stddev_over_time", RangeOp::StddevOverTime),
    ("quantile_over_time", RangeOp::QuantileOverTime),
    ("first_over_time", RangeOp::FirstOverTime),
    ("last_over_time", RangeOp::LastOverTime),
    ("rate_counter", RangeOp::RateCounter),
];

const VEC_OPS: &[(&str, VecOp)] = &[
    ("sum", VecOp::Sum),
    ("avg", VecOp::Avg),
    ("min", VecOp::Min),
    ("max", VecOp::Max),
    ("count", VecOp::Count),
    ("stddev", VecOp::Stddev),
    ("stdvar", VecOp::Stdvar),
    ("topk", VecOp::Topk),
    ("bottomk", VecOp::Bottomk),
    ("sort", VecOp::Sort),
    ("sort_desc", VecOp::SortDesc),
];

/// Keywords the Loki lexer has its own token for; a syntax error names them in upper case.
const KEYWORDS: &[&str] = &[
    "json",
    "logfmt",
    "regexp",
    "pattern",
    "unpack",
    "line_format",
    "label_format",
    "drop",
    "keep",
    "decolorize",
    "unwrap",
    "vector",
    "label_replace",
    "offset",
    "ip",
    "approx_topk",
];

fn tok_name(t: &Tok) -> String {
    match t {
        Tok::Str(_) => "STRING".into(),
        Tok::Num(_) => "NUMBER".into(),
        Tok::Eof => "$end".into(),
        Tok::Ident(s) => {
            if matches!(
                s.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right" | "bool"
            ) {
                s.clone()
            } else if RANGE_OPS.iter().any(|(n, _)| n == s)
                || VEC_OPS.iter().any(|(n, _)| n == s)
                || KEYWORDS.contains(&s.as_str())
            {
                s.to_uppercase()
            } else {
                "IDENTIFIER".into()
            }
        }
        Tok::LBrace => "{".into(),
        Tok::RBrace => "}".into(),
        Tok::LParen => "(".into(),
        Tok::RParen => ")".into(),
        Tok::LBrack => "[".into(),
        Tok::RBrack => "]".into(),
        Tok::Comma => ",".into(),
        Tok::Dot => ".".into(),
        Tok::Eq => "=".into(),
        Tok::EqEq => "==".into(),
        Tok::Neq => "!=".into(),
        Tok::Re => "=~".into(),
        Tok::Nre => "!~".into(),
        Tok::PipeEq => "|=".into(),
        Tok::PipeRe => "|~".into(),
        Tok::PipeGt => "|>".into(),
        Tok::NotGt => "!>".into(),
        Tok::Pipe => "|".into(),
        Tok::Gt => ">".into(),
        Tok::Ge => ">=".into(),
        Tok::Lt => "<".into(),
        Tok::Le => "<=".into(),
        Tok::Add => "+".into(),
        Tok::Sub => "-".into(),
        Tok::Mul => "*".into(),
        Tok::Div => "/".into(),
        Tok::Mod => "%".into(),
        Tok::Pow => "^".into(),
        Tok::Flag(f) => format!("--{f}"),
    }
}

fn binop_of(t: &Tok) -> Option<(BinOp, u8)> {
    Some(match t {
        Tok::Ident(s) if s == "or" => (BinOp::Or, 1),
        Tok::Ident(s) if s == "and" => (BinOp::And, 2),
        Tok::Ident(s) if s == "unless" => (BinOp::Unless, 2),
        Tok::EqEq => (BinOp::Eq, 3),
        Tok::Neq => (BinOp::Ne, 3),
        Tok::Gt => (BinOp::Gt, 3),
        Tok::Ge => (BinOp::Ge, 3),
        Tok::Lt => (BinOp::Lt, 3),
        Tok::Le => (BinOp::Le, 3),
        Tok::Add => (BinOp::Add, 4),
        Tok::Sub => (BinOp::Sub, 4),
        Tok::Mul => (BinOp::Mul, 5),
        Tok::Div => (BinOp::Div, 5),
        Tok::Mod => (BinOp::Mod, 5),
        Tok::Pow => (BinOp::Pow, 6),
        _ => return None,
    })
}

/// Go's `%f` of a float, as Loki's error texts use it.
fn go_f(v: f64) -> String {
    format!("{v:.6}")
}

/// Go `%q`-like quoting for re-rendering a stage in an error text.
pub fn go_quote(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            '\r' => o.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => o.push_str(&format!("\\x{:02x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Go `time.ParseDuration`, extended with Prometheus's `d`, `w`, `y`. Returns nanoseconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let orig = s;
    let (neg, mut s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(format!("invalid duration {}", go_quote(orig)));
    }
    let mut total: f64 = 0.0;
    while !s.is_empty() {
        let n = s.bytes().take_while(|c| c.is_ascii_digit() || *c == b'.').count();
        if n == 0 {
            return Err(format!("invalid duration {}", go_quote(orig)));
        }
        let num: f64 = s[..n]
            .parse()
            .map_err(|_| format!("invalid duration {}", go_quote(orig)))?;
        s = &s[n..];
        let u = s.bytes().take_while(|c| !(c.is_ascii_digit() || *c == b'.')).count();
        if u == 0 {
            return Err(format!("missing unit in duration {}", go_quote(orig)));
        }
        let unit = &s[..u];
        let mult: f64 = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" => 86400e9,
            "w" => 7.0 * 86400e9,
            "y" => 365.0 * 86400e9,
            _ => {
                return Err(format!(
                    "unknown unit {} in duration {}",
                    go_quote(unit),
                    go_quote(orig)
                ));
            }
        };
        total += num * mult;
        s = &s[u..];
    }
    let v = total.round() as i64;
    Ok(if neg { -v } else { v })
}

/// Go's `Duration.Seconds()`: whole seconds plus the remainder, which rounds differently from
/// `ns / 1e9` (1844ms is 1.8439999999999999).
pub fn duration_seconds(ns: i64) -> f64 {
    (ns / 1_000_000_000) as f64 + (ns % 1_000_000_000) as f64 / 1e9
}

/// humanize.ParseBytes as Loki uses it for bytes() and byte label filters.
pub fn parse_bytes(s: &str) -> Option<f64> {
    let t = s.trim();
    let n = t.bytes().take_while(|c| c.is_ascii_digit() || *c == b'.').count();
    if n == 0 {
        return None;
    }
    let num: f64 = t[..n].parse().ok()?;
    let unit = t[n..].trim().to_ascii_lowercase();
    let m: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "ki" | "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mi" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gi" | "gib" => 1024f64.powi(3),
        "t" | "tb" => 1e12,
        "ti" | "tib" => 1024f64.powi(4),
        "p" | "pb" => 1e15,
        "pi" | "pib" => 1024f64.powi(5),
        "e" | "eb" => 1e18,
        "ei" | "eib" => 1024f64.powi(6),
        _ => return None,
    };
    Some(num * m)
}

/// Translates a Go-syntax regex failure into Go's message where Rust's differs.
pub fn compile_regex(src: &str) -> Result<regex::Regex, String> {
    // Go refuses repeat counts above 1000; Rust accepts them.
    if let Some(bad) = go_bad_repeat(src) {
        return Err(format!("error parsing regexp: invalid repeat count: `{bad}`"));
    }
    regex::Regex::new(src).map_err(|e| {
        let opens = src.matches('(').count() - src.matches("\\(").count();
        let closes = src.matches(')').count() - src.matches("\\)").count();
        if opens > closes {
            format!("error parsing regexp: missing closing ): `{src}`")
        } else if closes > opens {
            format!("error parsing regexp: unexpected ): `{src}`")
        } else {
            format!("error parsing regexp: {e}")
        }
    })
}

fn go_bad_repeat(src: &str) -> Option<String> {
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == b'{'
            && let Some(end) = src[i..].find('}')
        {
            let inner = &src[i + 1..i + end];
            let ok = !inner.is_empty() && inner.bytes().all(|c| c.is_ascii_digit() || c == b',');
            if ok
                && inner
                    .split(',')
                    .any(|n| n.parse::<u64>().map(|v| v > 1000).unwrap_or(false))
            {
                return Some(src[i..=i + end].to_string());
            }
        }
        i += 1;
    }
    None
}

impl<'a> Parser<'a> {
    fn peek(&self) -> &Tok {
        &self.toks[self.i.min(self.toks.len() - 1)].tok
    }
    fn peek_at(&self, k: usize) -> &Tok {
        let j = (self.i + k).min(self.toks.len() - 1);
        &self.toks[j].tok
    }
    fn pos(&self) -> usize {
        self.toks[self.i.min(self.toks.len() - 1)].pos
    }
    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        // Always advance (even past the end) so that a caller can step back exactly one token.
        self.i += 1;
        t
    }
    fn is_ident(&self, s: &str) -> bool {
        matches!(self.peek(), Tok::Ident(x) if x == s)
    }
    fn unexpected(&self, expecting: &str) -> ParseError {
        let name = tok_name(self.peek());
        let msg = if expecting.is_empty() {
            format!("syntax error: unexpected {name}")
        } else {
            format!("syntax error: unexpected {name}, expecting {expecting}")
        };
        ParseError::at(self.src, self.pos(), msg)
    }
    fn expect(&mut self, t: Tok, expecting: &str) -> Result<(), ParseError> {
        if *self.peek() == t {
            self.next();
            Ok(())
        } else {
            Err(self.unexpected(expecting))
        }
    }
    fn semantic(msg: impl Into<String>) -> ParseError {
        ParseError::plain(msg.into())
    }

    fn parse_top(&mut self) -> Result<Expr, ParseError> {
        if *self.peek() == Tok::LBrace {
            let log = self.parse_log_expr(false)?.0;
            if let Some((op, _)) = binop_of(self.peek()) {
                return Err(Self::semantic(format!(
                    "unexpected type for left leg of binary operation ({}): *syntax.PipelineExpr",
                    op.symbol()
                )));
            }
            if *self.peek() != Tok::Eof {
                return Err(self.unexpected(""));
            }
            return Ok(Expr::Log(log));
        }
        let e = self.parse_binary(0)?;
        if *self.peek() != Tok::Eof {
            return Err(self.unexpected(""));
        }
        Ok(Expr::Metric(e))
    }

    fn parse_binary(&mut self, min_prec: u8) -> Result<MetricExpr, ParseError> {
        let mut lhs = self.parse_unary()?;
        while let Some((op, prec)) = binop_of(self.peek()) {
            if prec <= min_prec {
                break;
            }
            self.next();
            let mut bool_mod = false;
            if self.is_ident("bool") {
                self.next();
                bool_mod = true;
            }
            let mut matching = VectorMatching::default();
            if self.is_ident("on") || self.is_ident("ignoring") {
                matching.on = Some(self.is_ident("on"));
                self.next();
                matching.labels = self.parse_label_list()?;
                if self.is_ident("group_left") || self.is_ident("group_right") {
                    matching.group_left = Some(self.is_ident("group_left"));
                    self.next();
                    if *self.peek() == Tok::LParen {
                        matching.include = self.parse_label_list()?;
                    }
                }
            }
            // `^` is right associative: parse its right side at one level lower.
            let rhs = if op == BinOp::Pow {
                self.parse_binary(prec - 1)?
            } else {
                self.parse_binary(prec)?
            };
            if op.is_set() {
                if let MetricExpr::Literal(v) = rhs {
                    return Err(Self::semantic(format!(
                        "unexpected literal for right leg of logical/set binary operation ({}): {}",
                        op.symbol(),
                        go_f(v)
                    )));
                }
                if let MetricExpr::Literal(v) = lhs {
                    return Err(Self::semantic(format!(
                        "unexpected literal for left leg of logical/set binary operation ({}): {}",
                        op.symbol(),
                        go_f(v)
                    )));
                }
            }
            lhs = MetricExpr::Binary {
                op,
                bool_mod,
                matching,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
            };
        }
        Ok(lhs)
    }

    fn parse_unary(&mut self) -> Result<MetricExpr, ParseError> {
        if matches!(self.peek(), Tok::Sub | Tok::Add) {
            let neg = *self.peek() == Tok::Sub;
            self.next();
            if let Tok::Num(_) = self.peek() {
                let v = self.parse_number_lit()?;
                return Ok(MetricExpr::Literal(if neg { -v } else { v }));
            }
            return Err(self.unexpected("NUMBER"));
        }
        self.parse_primary()
    }

    fn parse_number_lit(&mut self) -> Result<f64, ParseError> {
        let Tok::Num(s) = self.next() else {
            return Err(self.unexpected("NUMBER"));
        };
        parse_go_float(&s).ok_or_else(|| {
            Self::semantic(format!(
                "unable to parse literal as a float: strconv.ParseFloat: parsing {}: invalid syntax",
                go_quote(&s)
            ))
        })
    }

    fn parse_primary(&mut self) -> Result<MetricExpr, ParseError> {
        match self.peek().clone() {
            Tok::Num(_) => Ok(MetricExpr::Literal(self.parse_number_lit()?)),
            Tok::LParen => {
                self.next();
                let e = self.parse_binary(0)?;
                self.expect(Tok::RParen, ")")?;
                Ok(e)
            }
            Tok::Ident(name) => {
                if let Some((_, op)) = RANGE_OPS.iter().find(|(n, _)| *n == name) {
                    return self.parse_range_agg(&name, *op);
                }
                if let Some((_, op)) = VEC_OPS.iter().find(|(n, _)| *n == name) {
                    return self.parse_vector_agg(&name, *op);
                }
                match name.as_str() {
                    "approx_topk" => {
                        let _ = self.parse_vector_agg("topk", VecOp::Topk)?;
                        Err(ParseError::internal(
                            "approx_topk is not enabled. See -limits.shard_aggregations",
                        ))
                    }
                    "vector" => {
                        self.next();
                        self.expect(Tok::LParen, "(")?;
                        if !matches!(self.peek(), Tok::Num(_)) {
                            return Err(self.unexpected("NUMBER"));
                        }
                        let v = self.parse_number_lit()?;
                        self.expect(Tok::RParen, ")")?;
                        Ok(MetricExpr::VectorLit(v))
                    }
                    "label_replace" => {
                        self.next();
                        self.expect(Tok::LParen, "(")?;
                        let inner = self.parse_binary(0)?;
                        let mut args = Vec::new();
                        for _ in 0..4 {
                            self.expect(Tok::Comma, ",")?;
                            match self.next() {
                                Tok::Str(s) => args.push(s),
                                _ => {
                                    self.i -= 1;
                                    return Err(self.unexpected("STRING"));
                                }
                            }
                        }
                        self.expect(Tok::RParen, ")")?;
                        let re = compile_regex(&format!("^(?s:{})$", args[3])).map_err(Self::semantic)?;
                        Ok(MetricExpr::LabelReplace {
                            inner: Box::new(inner),
                            dst: args[0].clone(),
                            replacement: args[1].clone(),
                            src: args[2].clone(),
                            re,
                        })
                    }
                    _ => Err(self.unexpected("")),
                }
            }
            _ => Err(self.unexpected("")),
        }
    }

    fn parse_label_list(&mut self) -> Result<Vec<String>, ParseError> {
        self.expect(Tok::LParen, "(")?;
        let mut out = Vec::new();
        loop {
            match self.peek().clone() {
                Tok::RParen => {
                    self.next();
                    return Ok(out);
                }
                Tok::Ident(s) => {
                    self.next();
                    out.push(s);
                    if *self.peek() == Tok::Comma {
                        self.next();
                    }
                }
                _ => return Err(self.unexpected("IDENTIFIER or )")),
            }
        }
    }

    fn parse_grouping(&mut self) -> Result<Option<Grouping>, ParseError> {
        if self.is_ident("by") || self.is_ident("without") {
            let without = self.is_ident("without");
            self.next();
            let labels = self.parse_label_list()?;
            return Ok(Some(Grouping { without, labels }));
        }
        Ok(None)
    }

    fn parse_vector_agg(&mut self, name: &str, op: VecOp) -> Result<MetricExpr, ParseError> {
        self.next();
        let mut grouping = self.parse_grouping()?;
        self.expect(Tok::LParen, "(")?;
        let mut param = None;
        if matches!(op, VecOp::Topk | VecOp::Bottomk) {
            if let Tok::Num(_) = self.peek() {
                let v = self.parse_number_lit()?;
                self.expect(Tok::Comma, ",")?;
                if v < 1.0 {
                    return Err(Self::semantic(format!(
                        "invalid parameter (must be greater than 0) {name}({}",
                        v as i64
                    )));
                }
                param = Some(v);
            } else {
                return Err(Self::semantic(format!("parameter required for operation {name}")));
            }
        }
        let inner = self.parse_binary(0)?;
        self.expect(Tok::RParen, ")")?;
        if grouping.is_none() {
            grouping = self.parse_grouping()?;
        } else if self.is_ident("by") || self.is_ident("without") {
            return Err(self.unexpected(""));
        }
        if self.is_ident("by") || self.is_ident("without") {
            return Err(self.unexpected(""));
        }
        Ok(MetricExpr::Vector {
            op,
            param,
            grouping,
            inner: Box::new(inner),
        })
    }

    fn parse_range_agg(&mut self, name: &str, op: RangeOp) -> Result<MetricExpr, ParseError> {
        self.next();
        self.expect(Tok::LParen, "(")?;
        let mut param = None;
        if op == RangeOp::QuantileOverTime {
            match self.peek() {
                Tok::Num(_) => {
                    param = Some(self.parse_number_lit()?);
                    self.expect(Tok::Comma, ",")?;
                }
                Tok::LBrace | Tok::LParen => {
                    return Err(Self::semantic(format!("parameter required for operation {name}")));
                }
                _ => return Err(self.unexpected("NUMBER or { or (")),
            }
        }
        let (log, range_ns, offset_ns, unwrap) = if *self.peek() == Tok::LParen {
            self.next();
            let (log, unwrap) = self.parse_log_expr(true)?;
            self.expect(Tok::RParen, ")")?;
            let (r, o) = self.parse_range()?;
            (log, r, o, unwrap)
        } else if *self.peek() == Tok::LBrace {
            let (mut log, mut unwrap) = self.parse_log_expr(true)?;
            let (r, o) = self.parse_range()?;
            // Stages may also follow the range: `{app="x"}[5m] |= "y"`.
            let (more, un2) = self.parse_stages(true)?;
            log.stages.extend(more);
            if un2.is_some() {
                unwrap = un2;
            }
            (log, r, o, unwrap)
        } else {
            return Err(self.unexpected("{ or ("));
        };
        self.expect(Tok::RParen, ")")?;
        let grouping = self.parse_grouping()?;
        if grouping.is_some()
            && matches!(
                op,
                RangeOp::SumOverTime | RangeOp::Rate | RangeOp::RateCounter | RangeOp::CountOverTime
            )
        {
            return Err(Self::semantic(format!("grouping not allowed for {name} aggregation")));
        }
        let needs_unwrap = !matches!(
            op,
            RangeOp::CountOverTime
                | RangeOp::Rate
                | RangeOp::BytesOverTime
                | RangeOp::BytesRate
                | RangeOp::AbsentOverTime
        );
        if needs_unwrap && unwrap.is_none() {
            return Err(Self::semantic(format!("invalid aggregation {name} without unwrap")));
        }
        if !needs_unwrap && unwrap.is_some() && op != RangeOp::Rate {
            return Err(Self::semantic(format!("invalid aggregation {name} with unwrap")));
        }
        Ok(MetricExpr::Range(RangeAgg {
            op,
            param,
            log,
            range_ns,
            offset_ns,
            unwrap,
            grouping,
        }))
    }

    fn parse_range(&mut self) -> Result<(i64, i64), ParseError> {
        self.expect(Tok::LBrack, "[")?;
        let pos = self.pos();
        let Tok::Num(d) = self.next() else {
            self.i -= 1;
            return Err(self.unexpected("DURATION"));
        };
        let range = parse_duration(&d).map_err(|m| ParseError::at_line0(self.src, pos, m))?;
        self.expect(Tok::RBrack, "]")?;
        let mut offset = 0;
        if self.is_ident("offset") {
            self.next();
            let neg = *self.peek() == Tok::Sub;
            if neg {
                self.next();
            }
            let pos = self.pos();
            let Tok::Num(d) = self.next() else {
                self.i -= 1;
                return Err(self.unexpected("DURATION"));
            };
            offset = parse_duration(&d).map_err(|m| ParseError::at_line0(self.src, pos, m))?;
            if neg {
                offset = -offset;
            }
        }
        Ok((range, offset))
    }

    /// `{selector} stages...`; in metric context an `unwrap` stage (and the label filters after
    /// it) is returned separately.
    fn parse_log_expr(&mut self, metric: bool) -> Result<(LogExpr, Option<Unwrap>), ParseError> {
        let matchers = self.parse_selector()?;
        let (stages, unwrap) = self.parse_stages(metric)?;
        Ok((LogExpr { matchers, stages }, unwrap))
    }

    fn parse_selector(&mut self) -> Result<Vec<Matcher>, ParseError> {
        self.expect(Tok::LBrace, "{")?;
        let mut ms = Vec::new();
        loop {
            match self.peek().clone() {
                Tok::RBrace => {
                    self.next();
                    break;
                }
                Tok::Ident(name) => {
                    self.next();
                    let op = match self.next() {
                        Tok::Eq => MatchOp::Equal,
                        Tok::Neq => MatchOp::NotEqual,
                        Tok::Re => MatchOp::Regex,
                        Tok::Nre => MatchOp::NotRegex,
                        _ => {
                            self.i -= 1;
                            return Err(self.unexpected("=, !=, =~ or !~"));
                        }
                    };
                    let Tok::Str(v) = self.next() else {
                        self.i -= 1;
                        return Err(self.unexpected("STRING"));
                    };
                    let m = Matcher::new(op, name, v.clone()).map_err(|_| {
                        let e = compile_regex(&v).err().unwrap_or_default();
                        Self::semantic(e)
                    })?;
                    ms.push(m);
                    match self.peek() {
                        Tok::Comma => {
                            self.next();
                        }
                        Tok::RBrace => {}
                        _ => return Err(self.unexpected("} or ,")),
                    }
                }
                _ => return Err(self.unexpected("IDENTIFIER")),
            }
        }
        if !ms.iter().any(|m| !m.matches_empty()) {
            return Err(Self::semantic(
                "queries require at least one regexp or equality matcher that does not have an empty-compatible value. For instance, app=~\".*\" does not meet this requirement, but app=~\".+\" will",
            ));
        }
        Ok(ms)
    }

    fn parse_stages(&mut self, metric: bool) -> Result<(Vec<Stage>, Option<Unwrap>), ParseError> {
        let mut stages = Vec::new();
        let mut unwrap: Option<Unwrap> = None;
        loop {
            let t = self.peek().clone();
            match t {
                Tok::PipeEq | Tok::Neq | Tok::PipeRe | Tok::Nre | Tok::PipeGt | Tok::NotGt => {
                    self.next();
                    stages.push(Stage::LineFilter(self.parse_line_filter(&t)?));
                }
                Tok::Pipe => {
                    self.next();
                    if metric && self.is_ident("unwrap") {
                        self.next();
                        unwrap = Some(self.parse_unwrap()?);
                        continue;
                    }
                    let st = self.parse_pipe_stage()?;
                    if let Some(u) = unwrap.as_mut() {
                        match st {
                            Stage::LabelFilter(f) => u.post.push(f),
                            _ => return Err(Self::semantic("unexpected stage after unwrap")),
                        }
                    } else {
                        stages.push(st);
                    }
                }
                _ => break,
            }
        }
        Ok((stages, unwrap))
    }

    fn parse_unwrap(&mut self) -> Result<Unwrap, ParseError> {
        let Tok::Ident(name) = self.next() else {
            self.i -= 1;
            return Err(self.unexpected("IDENTIFIER"));
        };
        let conv = match name.as_str() {
            "duration" | "duration_seconds" if *self.peek() == Tok::LParen => UnwrapConv::Duration,
            "bytes" if *self.peek() == Tok::LParen => UnwrapConv::Bytes,
            _ => {
                return Ok(Unwrap {
                    label: name,
                    conv: UnwrapConv::None,
                    post: Vec::new(),
                });
            }
        };
        self.next();
        let Tok::Ident(label) = self.next() else {
            self.i -= 1;
            return Err(self.unexpected("IDENTIFIER"));
        };
        self.expect(Tok::RParen, ")")?;
        Ok(Unwrap {
            label,
            conv,
            post: Vec::new(),
        })
    }

    fn parse_line_filter(&mut self, op: &Tok) -> Result<LineFilter, ParseError> {
        let negative = matches!(op, Tok::Neq | Tok::Nre | Tok::NotGt);
        let mut alts = Vec::new();
        let opstr = tok_name(op);
        loop {
            let (raw, is_ip) = match self.next() {
                Tok::Str(s) => (s, false),
                Tok::Ident(f) if f == "ip" && matches!(op, Tok::PipeEq | Tok::Neq) => {
                    self.expect(Tok::LParen, "(")?;
                    let Tok::Str(s) = self.next() else {
                        self.i -= 1;
                        return Err(self.unexpected("STRING"));
                    };
                    self.expect(Tok::RParen, ")")?;
                    (s, true)
                }
                _ => {
                    self.i -= 1;
                    return Err(self.unexpected("STRING or IP"));
                }
            };
            let stage_err = |m: String| {
                let shown = if is_ip {
                    format!("ip({})", go_quote(&raw))
                } else {
                    go_quote(&raw)
                };
                Self::semantic(format!("stage '{opstr} {shown}' : {m}"))
            };
            let m = if is_ip {
                LineMatch::Ip(parse_ip_matcher(&raw).map_err(stage_err)?)
            } else {
                match op {
                    Tok::PipeEq | Tok::Neq => {
                        LineMatch::Contains(Box::new(memchr::memmem::Finder::new(raw.as_bytes()).into_owned()))
                    }
                    Tok::PipeRe | Tok::Nre => LineMatch::Regex(compile_regex(&raw).map_err(stage_err)?),
                    _ => LineMatch::Pattern(Pattern::parse(&raw, true).map_err(stage_err)?),
                }
            };
            alts.push(m);
            if self.is_ident("or") && matches!(self.peek_at(1), Tok::Str(_) | Tok::Ident(_)) {
                // `or` inside a line filter chains alternatives; `or` between metric
                // expressions never follows a log selector directly.
                if matches!(self.peek_at(1), Tok::Ident(x) if x != "ip") {
                    break;
                }
                self.next();
                continue;
            }
            break;
        }
        Ok(LineFilter { negative, alts })
    }

    fn parse_pipe_stage(&mut self) -> Result<Stage, ParseError> {
        let Tok::Ident(name) = self.peek().clone() else {
            if *self.peek() == Tok::LParen {
                return Ok(Stage::LabelFilter(self.parse_label_filter()?));
            }
            return Err(self.unexpected(""));
        };
        // A keyword followed by a comparison operator is a label named like the keyword.
        let is_filter = matches!(
            self.peek_at(1),
            Tok::Eq | Tok::Neq | Tok::Re | Tok::Nre | Tok::EqEq | Tok::Gt | Tok::Ge | Tok::Lt | Tok::Le
        );
        if is_filter {
            return Ok(Stage::LabelFilter(self.parse_label_filter()?));
        }
        self.next();
        match name.as_str() {
            "json" => {
                let params = self.parse_extract_params()?;
                let mut out = Vec::new();
                for (n, path) in params {
                    let parts =
                        parse_json_path(&path).ok_or_else(|| Self::semantic(format!("invalid json path {path}")))?;
                    out.push((n, parts));
                }
                Ok(Stage::Json(out))
            }
            "logfmt" => {
                let mut strict = false;
                let mut keep_empty = false;
                while let Tok::Flag(f) = self.peek().clone() {
                    match f.as_str() {
                        "strict" => strict = true,
                        "keep-empty" => keep_empty = true,
                        _ => return Err(self.unexpected("")),
                    }
                    self.next();
                }
                let params = self.parse_extract_params()?;
                Ok(Stage::Logfmt {
                    strict,
                    keep_empty,
                    params,
                })
            }
            "regexp" => {
                let Tok::Str(s) = self.next() else {
                    self.i -= 1;
                    return Err(self.unexpected("STRING"));
                };
                let re = compile_regex(&s).map_err(|m| Self::semantic(format!("invalid regexp {m}")))?;
                if !re.capture_names().any(|n| n.is_some()) {
                    return Err(Self::semantic("at least one named capture must be supplied"));
                }
                Ok(Stage::Regexp(re))
            }
            "pattern" => {
                let Tok::Str(s) = self.next() else {
                    self.i -= 1;
                    return Err(self.unexpected("STRING"));
                };
                let p =
                    Pattern::parse(&s, false).map_err(|m| Self::semantic(format!("invalid pattern parser: {m}")))?;
                Ok(Stage::Pattern(p))
            }
            "unpack" => Ok(Stage::Unpack),
            "decolorize" => Ok(Stage::Decolorize),
            "line_format" => {
                let Tok::Str(s) = self.next() else {
                    self.i -= 1;
                    return Err(self.unexpected("STRING"));
                };
                let t = Template::parse(&s, "line").map_err(|m| {
                    Self::semantic(format!(
                        "stage '| line_format {}' : invalid line template: template: line:1: {m}",
                        go_quote(&s)
                    ))
                })?;
                Ok(Stage::LineFormat(t))
            }
            "label_format" => {
                let mut out = Vec::new();
                loop {
                    let Tok::Ident(dst) = self.next() else {
                        self.i -= 1;
                        return Err(self.unexpected("IDENTIFIER"));
                    };
                    self.expect(Tok::Eq, "=")?;
                    match self.next() {
                        Tok::Ident(src) => out.push(LabelFmt::Rename { dst, src }),
                        Tok::Str(s) => {
                            let tmpl = Template::parse(&s, "label").map_err(|m| {
                                Self::semantic(format!("invalid label template: template: label:1: {m}"))
                            })?;
                            out.push(LabelFmt::Template { dst, tmpl })
                        }
                        _ => {
                            self.i -= 1;
                            return Err(self.unexpected("STRING or IDENTIFIER"));
                        }
                    }
                    if *self.peek() == Tok::Comma {
                        self.next();
                        continue;
                    }
                    break;
                }
                Ok(Stage::LabelFormat(out))
            }
            "drop" | "keep" => {
                let mut out = Vec::new();
                loop {
                    let Tok::Ident(n) = self.next() else {
                        self.i -= 1;
                        return Err(self.unexpected("IDENTIFIER"));
                    };
                    let op = match self.peek() {
                        Tok::Eq => Some(MatchOp::Equal),
                        Tok::Neq => Some(MatchOp::NotEqual),
                        Tok::Re => Some(MatchOp::Regex),
                        Tok::Nre => Some(MatchOp::NotRegex),
                        _ => None,
                    };
                    let matcher = match op {
                        Some(op) => {
                            self.next();
                            let Tok::Str(v) = self.next() else {
                                self.i -= 1;
                                return Err(self.unexpected("STRING"));
                            };
                            Some(Matcher::new(op, n.clone(), v).map_err(|e| Self::semantic(e.to_string()))?)
                        }
                        None => None,
                    };
                    out.push(NameMatcher { name: n, matcher });
                    if *self.peek() == Tok::Comma {
                        self.next();
                        continue;
                    }
                    break;
                }
                Ok(if name == "drop" {
                    Stage::Drop(out)
                } else {
                    Stage::Keep(out)
                })
            }
            _ => {
                self.i -= 1;
                Ok(Stage::LabelFilter(self.parse_label_filter()?))
            }
        }
    }

    /// `a, b="x.y"` parameters of json and logfmt.
    fn parse_extract_params(&mut self) -> Result<Vec<(String, String)>, ParseError> {
        let mut out = Vec::new();
        loop {
            match self.peek().clone() {
                Tok::Ident(n) => {
                    self.next();
                    if *self.peek() == Tok::Eq {
                        self.next();
                        let Tok::Str(p) = self.next() else {
                            self.i -= 1;
                            return Err(self.unexpected("STRING"));
                        };
                        out.push((n, p));
                    } else {
                        out.push((n.clone(), n));
                    }
                    if *self.peek() == Tok::Comma {
                        self.next();
                        continue;
                    }
                    return Ok(out);
                }
                Tok::Str(_) => return Err(self.unexpected("")),
                _ => return Ok(out),
            }
        }
    }

    fn parse_label_filter(&mut self) -> Result<LabelFilter, ParseError> {
        let mut lhs = self.parse_label_filter_and()?;
        while self.is_ident("or") {
            self.next();
            let rhs = self.parse_label_filter_and()?;
            lhs = LabelFilter::Or(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn parse_label_filter_and(&mut self) -> Result<LabelFilter, ParseError> {
        let mut lhs = self.parse_label_filter_primary()?;
        loop {
            if self.is_ident("and") || *self.peek() == Tok::Comma {
                self.next();
            } else if matches!(self.peek(), Tok::Ident(x) if x != "or" && x != "offset") || *self.peek() == Tok::LParen
            {
                // Juxtaposed filters are an implicit `and`.
            } else {
                break;
            }
            let rhs = self.parse_label_filter_primary()?;
            lhs = LabelFilter::And(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn parse_label_filter_primary(&mut self) -> Result<LabelFilter, ParseError> {
        if *self.peek() == Tok::LParen {
            self.next();
            let f = self.parse_label_filter()?;
            self.expect(Tok::RParen, ")")?;
            return Ok(f);
        }
        let Tok::Ident(name) = self.next() else {
            self.i -= 1;
            return Err(self.unexpected("IDENTIFIER"));
        };
        let optok = self.next();
        let op = match optok {
            Tok::Eq => CmpOp::Eq,
            Tok::EqEq => CmpOp::Eq,
            Tok::Neq => CmpOp::Ne,
            Tok::Gt => CmpOp::Gt,
            Tok::Ge => CmpOp::Ge,
            Tok::Lt => CmpOp::Lt,
            Tok::Le => CmpOp::Le,
            Tok::Re | Tok::Nre => {
                let Tok::Str(v) = self.next() else {
                    self.i -= 1;
                    return Err(self.unexpected("STRING"));
                };
                let mop = if optok == Tok::Re {
                    MatchOp::Regex
                } else {
                    MatchOp::NotRegex
                };
                if let Some(needle) = simplified_contains(&v) {
                    return Ok(LabelFilter::Contains {
                        name,
                        needle,
                        negative: optok == Tok::Nre,
                        regex: v,
                    });
                }
                let m = Matcher::new(mop, name, v.clone())
                    .map_err(|_| Self::semantic(compile_regex(&v).err().unwrap_or_default()))?;
                return Ok(LabelFilter::Matcher(m));
            }
            _ => {
                self.i -= 1;
                return Err(self.unexpected(""));
            }
        };
        match self.peek().clone() {
            Tok::Str(v) if matches!(optok, Tok::Eq | Tok::Neq) => {
                self.next();
                let mop = if op == CmpOp::Eq {
                    MatchOp::Equal
                } else {
                    MatchOp::NotEqual
                };
                Ok(LabelFilter::Matcher(
                    Matcher::new(mop, name, v).map_err(|e| Self::semantic(e.to_string()))?,
                ))
            }
            Tok::Ident(f) if f == "ip" && matches!(optok, Tok::Eq | Tok::Neq) => {
                self.next();
                self.expect(Tok::LParen, "(")?;
                let Tok::Str(s) = self.next() else {
                    self.i -= 1;
                    return Err(self.unexpected("STRING"));
                };
                self.expect(Tok::RParen, ")")?;
                let ip = parse_ip_matcher(&s).map_err(Self::semantic)?;
                Ok(LabelFilter::Ip {
                    name,
                    negative: op == CmpOp::Ne,
                    ip,
                })
            }
            Tok::Num(n) => {
                self.next();
                if let Some(v) = parse_go_float(&n) {
                    return Ok(LabelFilter::Number { name, op, value: v });
                }
                if let Ok(d) = parse_duration(&n) {
                    return Ok(LabelFilter::Duration {
                        name,
                        op,
                        value_s: d as f64 / 1e9,
                    });
                }
                if let Some(b) = parse_bytes(&n) {
                    return Ok(LabelFilter::Bytes { name, op, value: b });
                }
                // Loki's lexer gives up on such a token and reports the end of input.
                Err(ParseError::at(
                    self.src,
                    self.src.len(),
                    "syntax error: unexpected $end".into(),
                ))
            }
            _ => Err(self.unexpected("")),
        }
    }
}

/// Loki rewrites `lit.*`, `.*lit` and `.*lit.*` label regexes into an unanchored substring test.
fn simplified_contains(re: &str) -> Option<String> {
    let (had_pre, s) = match re.strip_prefix(".*") {
        Some(r) => (true, r),
        None => (false, re),
    };
    let (had_suf, s) = match s.strip_suffix(".*") {
        Some(r) => (true, r),
        None => (false, s),
    };
    if !(had_pre || had_suf) || s.is_empty() {
        return None;
    }
    if s.chars().any(|c| "\\.+*?()|[]{}^$".contains(c)) {
        return None;
    }
    Some(s.to_string())
}

/// Go `strconv.ParseFloat` syntax for literals: decimal, exponent, `_` separators are not allowed
/// in LogQL literals (the lexer rejects hex), `NaN`/`Inf` handled by callers.
pub fn parse_go_float(s: &str) -> Option<f64> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    s.parse::<f64>().ok()
}

/// `a.b[0]["c d"]` (json parameter path) into parts.
pub fn parse_json_path(p: &str) -> Option<Vec<PathPart>> {
    let mut out = Vec::new();
    let b = p.as_bytes();
    let mut i = 0;
    let mut cur = String::new();
    while i < b.len() {
        match b[i] {
            b'.' => {
                if !cur.is_empty() {
                    out.push(PathPart::Key(std::mem::take(&mut cur)));
                }
                i += 1;
            }
            b'[' => {
                if !cur.is_empty() {
                    out.push(PathPart::Key(std::mem::take(&mut cur)));
                }
                let end = p[i..].find(']')? + i;
                let inner = p[i + 1..end].trim();
                if let Some(q) = inner.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
                    out.push(PathPart::Key(q.to_string()));
                } else if let Some(q) = inner.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
                    out.push(PathPart::Key(q.to_string()));
                } else {
                    out.push(PathPart::Index(inner.parse().ok()?));
                }
                i = end + 1;
            }
            _ => {
                let ch = p[i..].chars().next()?;
                cur.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    if !cur.is_empty() {
        out.push(PathPart::Key(cur));
    }
    Some(out)
}

pub fn parse_ip_matcher(s: &str) -> Result<IpMatcher, String> {
    use std::net::IpAddr;
    let bad = || format!("ip: invalid pattern: {}", go_quote(s));
    let t = s.trim();
    if let Some((a, m)) = t.split_once('/') {
        let ip: IpAddr = a.parse().map_err(|_| bad())?;
        let bits: u8 = m.parse().map_err(|_| bad())?;
        return Ok(IpMatcher::Cidr(ip, bits));
    }
    if let Some((a, b)) = t.split_once('-') {
        let a: IpAddr = a.trim().parse().map_err(|_| bad())?;
        let b: IpAddr = b.trim().parse().map_err(|_| bad())?;
        return Ok(IpMatcher::Range(a, b));
    }
    Ok(IpMatcher::Single(t.parse().map_err(|_| bad())?))
}
