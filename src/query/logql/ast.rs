//! The LogQL syntax tree: what the parser produces and the engine walks.
//!
//! Owns: plain data types for log and metric expressions, with compiled regexes, templates and
//! patterns so evaluation never re-parses. Never touches: evaluation, HTTP, storage.

use super::pattern::Pattern;
use super::template::Template;
use crate::model::Matcher;
use regex::Regex;

/// A whole query: a log query (returns streams) or a metric query (returns samples).
#[derive(Debug, Clone)]
pub enum Expr {
    Log(LogExpr),
    Metric(MetricExpr),
}

/// `{selector} | stage | stage ...`
#[derive(Debug, Clone)]
pub struct LogExpr {
    pub matchers: Vec<Matcher>,
    pub stages: Vec<Stage>,
}

impl LogExpr {
    /// Substrings every line must contain to survive the pipeline: the plain `|= "x"` filters
    /// that come before any stage rewriting the line. A store uses them to skip chunks.
    pub fn required_substrings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for st in &self.stages {
            match st {
                Stage::LineFormat(_) | Stage::Decolorize => break,
                Stage::LineFilter(LineFilter { negative: false, alts }) if alts.len() == 1 => {
                    if let LineMatch::Contains(f) = &alts[0]
                        && let Ok(n) = std::str::from_utf8(f.needle())
                        && !n.is_empty()
                    {
                        out.push(n.to_string());
                    }
                }
                _ => {}
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
pub enum Stage {
    LineFilter(LineFilter),
    Json(Vec<(String, Vec<PathPart>)>),
    Logfmt {
        strict: bool,
        keep_empty: bool,
        params: Vec<(String, String)>,
    },
    Regexp(Regex),
    Pattern(Pattern),
    Unpack,
    LabelFilter(LabelFilter),
    LineFormat(Template),
    LabelFormat(Vec<LabelFmt>),
    Drop(Vec<NameMatcher>),
    Keep(Vec<NameMatcher>),
    Decolorize,
}

/// One step of a json parameter path: `a.b[0]["c d"]`.
#[derive(Debug, Clone, PartialEq)]
pub enum PathPart {
    Key(String),
    Index(usize),
}

/// `drop a, b="x"`: a bare name, or a name with a matcher on its value.
#[derive(Debug, Clone)]
pub struct NameMatcher {
    pub name: String,
    pub matcher: Option<Matcher>,
}

#[derive(Debug, Clone)]
pub enum LabelFmt {
    Rename { dst: String, src: String },
    Template { dst: String, tmpl: Template },
}

/// A line filter with its `or` alternatives: positive kinds match when any alternative matches;
/// negative kinds match when none does.
#[derive(Debug, Clone)]
pub struct LineFilter {
    pub negative: bool,
    pub alts: Vec<LineMatch>,
}

#[derive(Debug, Clone)]
pub enum LineMatch {
    /// Byte substring search; empty needle matches every line.
    Contains(Box<memchr::memmem::Finder<'static>>),
    Regex(Regex),
    Pattern(Pattern),
    Ip(IpMatcher),
}

#[derive(Debug, Clone)]
pub enum IpMatcher {
    Single(std::net::IpAddr),
    Range(std::net::IpAddr, std::net::IpAddr),
    Cidr(std::net::IpAddr, u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone)]
pub enum LabelFilter {
    And(Box<LabelFilter>, Box<LabelFilter>),
    Or(Box<LabelFilter>, Box<LabelFilter>),
    Matcher(Matcher),
    /// A regex matcher Loki simplifies to a substring test (`x=~"abc.*"`): Loki drops the
    /// anchoring, so this matches `abc` anywhere in the value.
    Contains {
        name: String,
        needle: String,
        negative: bool,
        /// The regex as written, for printing the query back (`format_query`).
        regex: String,
    },
    Number {
        name: String,
        op: CmpOp,
        value: f64,
    },
    Duration {
        name: String,
        op: CmpOp,
        value_s: f64,
    },
    Bytes {
        name: String,
        op: CmpOp,
        value: f64,
    },
    Ip {
        name: String,
        negative: bool,
        ip: IpMatcher,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOp {
    CountOverTime,
    Rate,
    BytesOverTime,
    BytesRate,
    AbsentOverTime,
    SumOverTime,
    AvgOverTime,
    MinOverTime,
    MaxOverTime,
    StdvarOverTime,
    StddevOverTime,
    QuantileOverTime,
    FirstOverTime,
    LastOverTime,
    RateCounter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnwrapConv {
    None,
    Duration,
    Bytes,
}

#[derive(Debug, Clone)]
pub struct Unwrap {
    pub label: String,
    pub conv: UnwrapConv,
    pub post: Vec<LabelFilter>,
}

#[derive(Debug, Clone)]
pub struct Grouping {
    pub without: bool,
    pub labels: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RangeAgg {
    pub op: RangeOp,
    pub param: Option<f64>,
    pub log: LogExpr,
    pub range_ns: i64,
    pub offset_ns: i64,
    pub unwrap: Option<Unwrap>,
    pub grouping: Option<Grouping>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VecOp {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    Stddev,
    Stdvar,
    Topk,
    Bottomk,
    Sort,
    SortDesc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    And,
    Or,
    Unless,
}

impl BinOp {
    /// The operator as LogQL spells it (parse errors and the printer both use it).
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Pow => "^",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::And => "and",
            BinOp::Or => "or",
            BinOp::Unless => "unless",
        }
    }

    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Gt | BinOp::Ge | BinOp::Lt | BinOp::Le
        )
    }
    pub fn is_set(self) -> bool {
        matches!(self, BinOp::And | BinOp::Or | BinOp::Unless)
    }
}

#[derive(Debug, Clone, Default)]
pub struct VectorMatching {
    /// `Some(true)` for `on(...)`, `Some(false)` for `ignoring(...)`.
    pub on: Option<bool>,
    pub labels: Vec<String>,
    /// `Some(true)` group_left, `Some(false)` group_right.
    pub group_left: Option<bool>,
    pub include: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum MetricExpr {
    Range(RangeAgg),
    Vector {
        op: VecOp,
        param: Option<f64>,
        grouping: Option<Grouping>,
        inner: Box<MetricExpr>,
    },
    Binary {
        op: BinOp,
        bool_mod: bool,
        matching: VectorMatching,
        lhs: Box<MetricExpr>,
        rhs: Box<MetricExpr>,
    },
    Literal(f64),
    VectorLit(f64),
    LabelReplace {
        inner: Box<MetricExpr>,
        dst: String,
        replacement: String,
        src: String,
        re: Regex,
    },
}

impl MetricExpr {
    /// True for expressions that evaluate to a scalar (literals and arithmetic on them).
    pub fn is_scalar(&self) -> bool {
        match self {
            MetricExpr::Literal(_) => true,
            MetricExpr::Binary { lhs, rhs, .. } => lhs.is_scalar() && rhs.is_scalar(),
            _ => false,
        }
    }
}
