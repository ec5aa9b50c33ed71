//! The project's own PromQL syntax tree. `promql-parser`'s AST is converted here once, so the engine
//! never sees the parser crate and the parser can be replaced without touching evaluation.
//!
//! Owns: the AST types, the conversion, `format_query`/`parse_query` renderings. Never touches:
//! evaluation or storage; it is the only file that imports `promql_parser`'s AST.

use crate::model::{METRIC_NAME, MatchOp, Matcher};
use promql_parser::parser as pp;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The four PromQL value types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    Scalar,
    String,
    Vector,
    Matrix,
}

impl ValueType {
    pub fn name(self) -> &'static str {
        match self {
            ValueType::Scalar => "scalar",
            ValueType::String => "string",
            ValueType::Vector => "vector",
            ValueType::Matrix => "matrix",
        }
    }
}

/// `@` modifier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum At {
    Start,
    End,
    /// Milliseconds since the epoch.
    Time(i64),
}

#[derive(Debug, Clone)]
pub struct VectorSel {
    /// Index into the engine's table of preloaded series; unique per selector in one query.
    pub id: usize,
    pub name: Option<String>,
    /// Alternatives (`{a="1" or b="2"}`); usually one set.
    pub matcher_sets: Vec<Vec<Matcher>>,
    pub offset_ms: i64,
    pub at: Option<At>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    And,
    Or,
    Unless,
}

impl BinOp {
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Gt | BinOp::Lt | BinOp::Ge | BinOp::Le
        )
    }
    pub fn is_set(self) -> bool {
        matches!(self, BinOp::And | BinOp::Or | BinOp::Unless)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggOp {
    Sum,
    Avg,
    Count,
    Min,
    Max,
    Group,
    Stddev,
    Stdvar,
    TopK,
    BottomK,
    CountValues,
    Quantile,
    LimitK,
    LimitRatio,
}

/// `by`/`without` (aggregations) or `on`/`ignoring` (binary operators).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grouping {
    By(Vec<String>),
    Without(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Card {
    OneToOne,
    ManyToOne(Vec<String>),
    OneToMany(Vec<String>),
    ManyToMany,
}

#[derive(Debug, Clone)]
pub struct VectorMatching {
    pub card: Card,
    /// `None`: match on all labels except the name.
    pub matching: Option<Grouping>,
    pub fill_lhs: Option<f64>,
    pub fill_rhs: Option<f64>,
}

#[derive(Debug, Clone)]
pub enum Expr {
    Number(f64),
    String(String),
    Vector(VectorSel),
    Matrix {
        sel: VectorSel,
        range_ms: i64,
    },
    Subquery {
        expr: Box<Expr>,
        range_ms: i64,
        /// 0 = the default evaluation interval.
        step_ms: i64,
        offset_ms: i64,
        at: Option<At>,
    },
    Call {
        func: String,
        args: Vec<Expr>,
    },
    Aggregate {
        op: AggOp,
        expr: Box<Expr>,
        param: Option<Box<Expr>>,
        grouping: Option<Grouping>,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
        matching: Option<VectorMatching>,
        return_bool: bool,
    },
    Neg(Box<Expr>),
    Paren(Box<Expr>),
}

impl Expr {
    pub fn value_type(&self) -> ValueType {
        match self {
            Expr::Number(_) => ValueType::Scalar,
            Expr::String(_) => ValueType::String,
            Expr::Vector(_) | Expr::Aggregate { .. } => ValueType::Vector,
            Expr::Matrix { .. } | Expr::Subquery { .. } => ValueType::Matrix,
            Expr::Call { func, .. } => match func.as_str() {
                "time" | "scalar" | "pi" | "step" | "range" | "start" | "end" | "min_of" | "max_of" => {
                    ValueType::Scalar
                }
                _ => ValueType::Vector,
            },
            Expr::Binary { lhs, rhs, .. } => {
                if lhs.value_type() == ValueType::Scalar && rhs.value_type() == ValueType::Scalar {
                    ValueType::Scalar
                } else {
                    ValueType::Vector
                }
            }
            Expr::Neg(e) | Expr::Paren(e) => e.value_type(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("{0}")]
    Syntax(String),
    #[error("unsupported expression: {0}")]
    Unsupported(String),
}

/// Parses a PromQL expression into the project's AST.
pub fn parse(input: &str) -> Result<Expr, ParseError> {
    let e = pp::parse(input).map_err(|m| ParseError::Syntax(prometheus_message(input, &m)))?;
    let mut next_id = 0;
    convert(&e, &mut next_id)
}

/// Pretty-prints like Prometheus's `format_query` (delegates to the parser crate).
pub fn format(input: &str) -> Result<String, ParseError> {
    let e = pp::parse(input).map_err(|m| ParseError::Syntax(prometheus_message(input, &m)))?;
    Ok(e.prettify())
}

/// promql-parser's error message in Prometheus's words, with Prometheus's `line:col: parse error: `
/// prefix where the position follows from the message alone. promql-parser reports no positions
/// (its `parse` returns a bare `String`, and a grammar error only "invalid promql query"), so only
/// errors at a place the text pins down get one: those at the end of the input (pos = its length)
/// and an unmatched `)` (the byte after it, as Prometheus's lexer reports it). Prometheus's column is
/// the byte offset from the last line break, 1-based (`ParseErr.Error` in promql/parser/parse.go).
/// The differences that remain are listed with the test that compares both servers' answers:
/// `compat-tests/promql_diff.rs`, `PARSE_ERROR_DIFFERENCES`.
fn prometheus_message(query: &str, msg: &str) -> String {
    let msg = reword(msg);
    let pos = if msg.starts_with("unexpected end of input") || msg.starts_with("unclosed left ") {
        Some(query.len())
    } else if msg.starts_with("unexpected right parenthesis") {
        unmatched_paren(query).map(|i| i + 1)
    } else {
        None
    };
    match pos {
        Some(pos) => {
            let before = &query.as_bytes()[..pos.min(query.len())];
            let line = 1 + before.iter().filter(|b| **b == b'\n').count();
            let col = pos - before.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1) + 1;
            format!("{line}:{col}: parse error: {msg}")
        }
        None => msg,
    }
}

/// Rewords promql-parser's messages as Prometheus 2.42 words them: names in `"..."` (Go's `%q`)
/// rather than `'...'`, value types as `range vector`/`instant vector` rather than
/// `matrix`/`vector`, an aggregation's parameter called a parameter.
fn reword(msg: &str) -> String {
    let fixed: &[(&str, &str)] = &[("unexpected end of input inside brackets", "unclosed left bracket")];
    if let Some((_, to)) = fixed.iter().find(|(from, _)| *from == msg) {
        return (*to).to_string();
    }
    let mut m = requote(msg);
    if let Some(rest) = m.strip_prefix("unary expression only allowed on expressions of type scalar or vector, got: ") {
        m = format!(
            "unary expression only allowed on expressions of type scalar or instant vector, got {:?}",
            rest
        );
    }
    if m.starts_with("expected type ") {
        let param = m.starts_with("expected type scalar in aggregation expression")
            || m.starts_with("expected type string in aggregation expression");
        let words: Vec<&str> = m.split(' ').collect();
        let mut out: Vec<&str> = Vec::with_capacity(words.len());
        for (i, w) in words.iter().enumerate() {
            let after_type = i > 0 && (words[i - 1] == "type" || words[i - 1] == "got");
            out.push(match (*w, after_type) {
                ("matrix", true) => "range vector",
                ("vector", true) => "instant vector",
                ("expression,", _) if param => "parameter,",
                _ => w,
            });
        }
        m = out.join(" ");
    }
    m
}

/// `'name'` -> `"name"` where the quoted text is a metric, label, function or operator name.
fn requote(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(open) = rest.find('\'') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('\'') {
            Some(close)
                if close > 0
                    && after[..close]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') =>
            {
                out.push('"');
                out.push_str(&after[..close]);
                out.push('"');
                rest = &after[close + 1..];
            }
            _ => {
                out.push('\'');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Byte offset of the first `)` that closes nothing, outside string literals.
fn unmatched_paren(query: &str) -> Option<usize> {
    let mut depth = 0i64;
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    for (i, b) in query.bytes().enumerate() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if b == b'\\' && q != b'`' {
                escaped = true;
            } else if b == q {
                quote = None;
            }
            continue;
        }
        match b {
            b'"' | b'\'' | b'`' => quote = Some(b),
            b'(' => depth += 1,
            b')' if depth == 0 => return Some(i),
            b')' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn dur_ms(d: &Duration) -> i64 {
    d.as_millis() as i64
}

fn time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

fn offset_ms(o: &Option<pp::Offset>) -> i64 {
    match o {
        None => 0,
        Some(pp::Offset::Pos(d)) => dur_ms(d),
        Some(pp::Offset::Neg(d)) => -dur_ms(d),
    }
}

fn at(a: &Option<pp::AtModifier>) -> Option<At> {
    a.as_ref().map(|a| match a {
        pp::AtModifier::Start => At::Start,
        pp::AtModifier::End => At::End,
        pp::AtModifier::At(t) => At::Time(time_ms(t)),
    })
}

fn matcher(m: &promql_parser::label::Matcher) -> Result<Matcher, ParseError> {
    use promql_parser::label::MatchOp as P;
    let op = match m.op {
        P::Equal => MatchOp::Equal,
        P::NotEqual => MatchOp::NotEqual,
        P::Re(_) => MatchOp::Regex,
        P::NotRe(_) => MatchOp::NotRegex,
    };
    Matcher::new(op, m.name.clone(), m.value.clone()).map_err(|e| ParseError::Syntax(e.to_string()))
}

fn vector_sel(vs: &pp::VectorSelector, next_id: &mut usize) -> Result<VectorSel, ParseError> {
    let mut base = Vec::new();
    for m in &vs.matchers.matchers {
        base.push(matcher(m)?);
    }
    let mut sets = Vec::new();
    if vs.matchers.or_matchers.is_empty() {
        sets.push(base);
    } else {
        for alt in &vs.matchers.or_matchers {
            let mut set = base.clone();
            for m in alt {
                set.push(matcher(m)?);
            }
            sets.push(set);
        }
    }
    if let Some(name) = &vs.name {
        for set in &mut sets {
            if !set
                .iter()
                .any(|m| m.name == METRIC_NAME && m.op == MatchOp::Equal && &m.value == name)
            {
                set.insert(0, Matcher::eq(METRIC_NAME, name.clone()));
            }
        }
    }
    let id = *next_id;
    *next_id += 1;
    Ok(VectorSel {
        id,
        name: vs.name.clone(),
        matcher_sets: sets,
        offset_ms: offset_ms(&vs.offset),
        at: at(&vs.at),
    })
}

fn names(l: &promql_parser::label::Labels) -> Vec<String> {
    l.labels.to_vec()
}

fn grouping(m: &Option<pp::LabelModifier>) -> Option<Grouping> {
    m.as_ref().map(|m| match m {
        pp::LabelModifier::Include(l) => Grouping::By(names(l)),
        pp::LabelModifier::Exclude(l) => Grouping::Without(names(l)),
    })
}

fn convert(e: &pp::Expr, next_id: &mut usize) -> Result<Expr, ParseError> {
    let b = |e: &pp::Expr, n: &mut usize| convert(e, n).map(Box::new);
    Ok(match e {
        pp::Expr::NumberLiteral(n) => Expr::Number(n.val),
        pp::Expr::StringLiteral(s) => Expr::String(s.val.clone()),
        pp::Expr::VectorSelector(vs) => Expr::Vector(vector_sel(vs, next_id)?),
        pp::Expr::MatrixSelector(ms) => Expr::Matrix {
            sel: vector_sel(&ms.vs, next_id)?,
            range_ms: dur_ms(&ms.range),
        },
        pp::Expr::Subquery(sq) => Expr::Subquery {
            expr: b(&sq.expr, next_id)?,
            range_ms: dur_ms(&sq.range),
            step_ms: sq.step.as_ref().map_or(0, dur_ms),
            offset_ms: offset_ms(&sq.offset),
            at: at(&sq.at),
        },
        pp::Expr::Paren(p) => Expr::Paren(b(&p.expr, next_id)?),
        pp::Expr::Unary(u) => Expr::Neg(b(&u.expr, next_id)?),
        pp::Expr::Call(c) => {
            let mut args = Vec::with_capacity(c.args.args.len());
            for a in &c.args.args {
                args.push(convert(a, next_id)?);
            }
            if c.func.name == "info" {
                // info()'s info-series selector defaults to (and without a name matcher gets)
                // `__name__="target_info"`.
                if args.len() < 2 {
                    let id = *next_id;
                    *next_id += 1;
                    args.push(Expr::Vector(VectorSel {
                        id,
                        name: None,
                        matcher_sets: vec![Vec::new()],
                        offset_ms: 0,
                        at: None,
                    }));
                }
                if let Some(Expr::Vector(sel)) = args.get_mut(1) {
                    for set in &mut sel.matcher_sets {
                        if !set.iter().any(|m| m.name == METRIC_NAME) {
                            set.push(Matcher::eq(METRIC_NAME, "target_info"));
                        } else if !set
                            .iter()
                            .any(|m| m.name == METRIC_NAME && matches!(m.op, MatchOp::Equal | MatchOp::Regex))
                        {
                            // Only negative name matchers: info metrics are still `*_info` series.
                            set.push(
                                Matcher::new(MatchOp::Regex, METRIC_NAME, ".+_info")
                                    .map_err(|e| ParseError::Syntax(e.to_string()))?,
                            );
                        }
                    }
                }
            }
            Expr::Call {
                func: c.func.name.to_string(),
                args,
            }
        }
        pp::Expr::Aggregate(a) => {
            let name = a.op.to_string();
            let op = match name.to_lowercase().as_str() {
                "sum" => AggOp::Sum,
                "avg" => AggOp::Avg,
                "count" => AggOp::Count,
                "min" => AggOp::Min,
                "max" => AggOp::Max,
                "group" => AggOp::Group,
                "stddev" => AggOp::Stddev,
                "stdvar" => AggOp::Stdvar,
                "topk" => AggOp::TopK,
                "bottomk" => AggOp::BottomK,
                "count_values" => AggOp::CountValues,
                "quantile" => AggOp::Quantile,
                "limitk" => AggOp::LimitK,
                "limit_ratio" => AggOp::LimitRatio,
                other => return Err(ParseError::Unsupported(format!("aggregation {other}"))),
            };
            Expr::Aggregate {
                op,
                expr: b(&a.expr, next_id)?,
                param: match &a.param {
                    Some(p) => Some(b(p, next_id)?),
                    None => None,
                },
                grouping: grouping(&a.modifier),
            }
        }
        pp::Expr::Binary(be) => {
            let name = be.op.to_string();
            let op = match name.to_lowercase().as_str() {
                "+" => BinOp::Add,
                "-" => BinOp::Sub,
                "*" => BinOp::Mul,
                "/" => BinOp::Div,
                "%" => BinOp::Mod,
                "^" => BinOp::Pow,
                "atan2" => BinOp::Atan2,
                "==" => BinOp::Eq,
                "!=" => BinOp::Ne,
                ">" => BinOp::Gt,
                "<" => BinOp::Lt,
                ">=" => BinOp::Ge,
                "<=" => BinOp::Le,
                "and" => BinOp::And,
                "or" => BinOp::Or,
                "unless" => BinOp::Unless,
                other => return Err(ParseError::Unsupported(format!("operator {other}"))),
            };
            let lhs = b(&be.lhs, next_id)?;
            let rhs = b(&be.rhs, next_id)?;
            let both_vec = lhs.value_type() == ValueType::Vector && rhs.value_type() == ValueType::Vector;
            let (matching, return_bool) = match &be.modifier {
                None => (
                    both_vec.then(|| VectorMatching {
                        card: if op.is_set() { Card::ManyToMany } else { Card::OneToOne },
                        matching: None,
                        fill_lhs: None,
                        fill_rhs: None,
                    }),
                    false,
                ),
                Some(m) => {
                    let card = match &m.card {
                        pp::VectorMatchCardinality::OneToOne => Card::OneToOne,
                        pp::VectorMatchCardinality::ManyToOne(l) => Card::ManyToOne(names(l)),
                        pp::VectorMatchCardinality::OneToMany(l) => Card::OneToMany(names(l)),
                        pp::VectorMatchCardinality::ManyToMany => Card::ManyToMany,
                    };
                    let card = if op.is_set() { Card::ManyToMany } else { card };
                    (
                        both_vec.then(|| VectorMatching {
                            card,
                            matching: grouping(&m.matching),
                            fill_lhs: m.fill_values.lhs,
                            fill_rhs: m.fill_values.rhs,
                        }),
                        m.return_bool,
                    )
                }
            };
            Expr::Binary {
                op,
                lhs,
                rhs,
                matching,
                return_bool,
            }
        }
        pp::Expr::Extension(_) => return Err(ParseError::Unsupported("extension".into())),
    })
}

fn matchers_json(sel: &VectorSel) -> serde_json::Value {
    let set = sel.matcher_sets.first().cloned().unwrap_or_default();
    serde_json::Value::Array(
        set.iter()
            .map(|m| {
                let op = match m.op {
                    MatchOp::Equal => "=",
                    MatchOp::NotEqual => "!=",
                    MatchOp::Regex => "=~",
                    MatchOp::NotRegex => "!~",
                };
                serde_json::json!({"type": op, "name": m.name, "value": m.value})
            })
            .collect(),
    )
}

fn at_json(at: &Option<At>) -> (serde_json::Value, serde_json::Value) {
    match at {
        None => (serde_json::Value::Null, serde_json::Value::Null),
        Some(At::Start) => ("start".into(), serde_json::Value::Null),
        Some(At::End) => ("end".into(), serde_json::Value::Null),
        Some(At::Time(t)) => (serde_json::Value::Null, (*t).into()),
    }
}

/// The AST as `/api/v1/parse_query` returns it (Prometheus's `translateAST` shape).
pub fn to_json(e: &Expr) -> serde_json::Value {
    use serde_json::json;
    match e {
        Expr::Number(v) => json!({"type": "numberLiteral", "val": super::value::format_float(*v)}),
        Expr::String(s) => json!({"type": "stringLiteral", "val": s}),
        Expr::Vector(sel) => {
            let (soe, ts) = at_json(&sel.at);
            json!({"type": "vectorSelector", "name": sel.name.clone().unwrap_or_default(),
                "matchers": matchers_json(sel), "offset": sel.offset_ms, "startOrEnd": soe, "timestamp": ts})
        }
        Expr::Matrix { sel, range_ms } => {
            let (soe, ts) = at_json(&sel.at);
            json!({"type": "matrixSelector", "name": sel.name.clone().unwrap_or_default(), "range": range_ms,
                "matchers": matchers_json(sel), "offset": sel.offset_ms, "startOrEnd": soe, "timestamp": ts})
        }
        Expr::Subquery {
            expr,
            range_ms,
            step_ms,
            offset_ms,
            at,
        } => {
            let (soe, ts) = at_json(at);
            json!({"type": "subquery", "expr": to_json(expr), "range": range_ms, "offset": offset_ms,
                "step": step_ms, "startOrEnd": soe, "timestamp": ts})
        }
        Expr::Paren(x) => json!({"type": "parenExpr", "expr": to_json(x)}),
        Expr::Neg(x) => json!({"type": "unaryExpr", "op": "-", "expr": to_json(x)}),
        Expr::Call { func, args } => json!({"type": "call", "func": {"name": func,
            "returnType": e.value_type().name()}, "args": args.iter().map(to_json).collect::<Vec<_>>()}),
        Expr::Aggregate {
            op,
            expr,
            param,
            grouping,
        } => {
            let (g, without) = match grouping {
                None => (Vec::new(), false),
                Some(Grouping::By(l)) => (l.clone(), false),
                Some(Grouping::Without(l)) => (l.clone(), true),
            };
            json!({"type": "aggregation", "op": format!("{op:?}").to_lowercase(), "expr": to_json(expr),
                "param": param.as_ref().map(|p| to_json(p)), "grouping": g, "without": without})
        }
        Expr::Binary {
            op,
            lhs,
            rhs,
            matching,
            return_bool,
        } => {
            let op_s = match op {
                BinOp::Add => "+",
                BinOp::Sub => "-",
                BinOp::Mul => "*",
                BinOp::Div => "/",
                BinOp::Mod => "%",
                BinOp::Pow => "^",
                BinOp::Atan2 => "atan2",
                BinOp::Eq => "==",
                BinOp::Ne => "!=",
                BinOp::Gt => ">",
                BinOp::Lt => "<",
                BinOp::Ge => ">=",
                BinOp::Le => "<=",
                BinOp::And => "and",
                BinOp::Or => "or",
                BinOp::Unless => "unless",
            };
            let m = matching.as_ref().map(|m| {
                let (card, include) = match &m.card {
                    Card::OneToOne => ("one-to-one", Vec::new()),
                    Card::ManyToOne(l) => ("many-to-one", l.clone()),
                    Card::OneToMany(l) => ("one-to-many", l.clone()),
                    Card::ManyToMany => ("many-to-many", Vec::new()),
                };
                let (labels, on) = match &m.matching {
                    None => (Vec::new(), false),
                    Some(Grouping::By(l)) => (l.clone(), true),
                    Some(Grouping::Without(l)) => (l.clone(), false),
                };
                json!({"card": card, "labels": labels, "on": on, "include": include})
            });
            json!({"type": "binaryExpr", "op": op_s, "lhs": to_json(lhs), "rhs": to_json(rhs),
                "matching": m, "bool": return_bool})
        }
    }
}
