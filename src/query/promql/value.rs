//! Evaluation values: what each node yields at one step, and what a query returns.
//!
//! Owns: the value types and Go's float formatting. Never touches: evaluation or HTTP.

use crate::model::{Labels, Sample};
use std::sync::Arc;

/// One element of an instant vector. `drop_name` implements Prometheus 3.x's delayed `__name__`
/// removal: operations mark the element and the name is removed when the query result is built.
#[derive(Debug, Clone)]
pub(crate) struct Elem {
    /// Shared with the selected series (and across steps): cloning is a reference-count increment.
    pub labels: Arc<Labels>,
    pub v: f64,
    /// The sample's own timestamp (only `timestamp()` reads it).
    pub t: i64,
    pub drop_name: bool,
}

/// One series of a range vector (or of a range query's result).
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSeries {
    pub labels: Labels,
    pub samples: Vec<Sample>,
    pub(crate) drop_name: bool,
}

impl RangeSeries {
    pub fn new(labels: Labels, samples: Vec<Sample>) -> RangeSeries {
        RangeSeries {
            labels,
            samples,
            drop_name: false,
        }
    }
}

/// A node's value at one evaluation step.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Scalar(f64),
    String(String),
    Vector(Vec<Elem>),
    Matrix(Vec<RangeSeries>),
}

/// A query's result, in the API's four shapes. Times are ms.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryValue {
    Scalar {
        t: i64,
        v: f64,
    },
    String {
        t: i64,
        s: String,
    },
    /// (labels, t, v) in evaluation order.
    Vector(Vec<(Labels, i64, f64)>),
    /// Sorted by labels.
    Matrix(Vec<RangeSeries>),
}

impl QueryValue {
    pub fn type_name(&self) -> &'static str {
        match self {
            QueryValue::Scalar { .. } => "scalar",
            QueryValue::String { .. } => "string",
            QueryValue::Vector(_) => "vector",
            QueryValue::Matrix(_) => "matrix",
        }
    }
}

/// Formats like Prometheus's JSON encoder: Go's `strconv.FormatFloat(f, 'f' or 'e', -1, 64)` with the
/// exponent form when |f| < 1e-6 or |f| >= 1e21, and "NaN", "+Inf", "-Inf".
pub fn format_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-6..1e21).contains(&a) {
        go_exp(f)
    } else {
        format!("{f}")
    }
}

/// Go's `FormatFloat(f, 'f', -1, 64)` (used for `count_values` labels): never an exponent.
pub(crate) fn format_float_f(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    format!("{f}")
}

/// Go's 'e' format with shortest digits: `1e-07`, `1.5e+21`.
fn go_exp(f: f64) -> String {
    let s = format!("{f:e}");
    let Some((mant, exp)) = s.split_once('e') else {
        return s;
    };
    let (sign, digits) = match exp.strip_prefix('-') {
        Some(d) => ('-', d),
        None => ('+', exp),
    };
    if digits.len() < 2 {
        format!("{mant}e{sign}0{digits}")
    } else {
        format!("{mant}e{sign}{digits}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(f: f64, want: &str) {
        assert_eq!(format_float(f), want, "{f}");
    }

    #[test]
    fn floats() {
        check(1.0, "1");
        check(0.5, "0.5");
        check(1e-7, "1e-07");
        check(1.5e21, "1.5e+21");
        check(1e20, "100000000000000000000");
        check(-2.5e-10, "-2.5e-10");
        check(f64::NAN, "NaN");
        check(f64::INFINITY, "+Inf");
        check(f64::NEG_INFINITY, "-Inf");
        check(0.000001, "0.000001");
        check(1e100, "1e+100");
    }
}
