//! Request parameters the way Prometheus reads them: Go's `r.Form` (form body values first, then the
//! URL query), times as float seconds or RFC3339, `match[]` selectors, `limit`.

use super::error::ApiError;
use crate::model::Matcher;
use axum::http::{HeaderMap, header};

/// Timestamps Prometheus uses for an absent `start` / `end` (its MinTime/MaxTime, in ms).
pub const MIN_TIME_MS: i64 = -9_223_309_901_257_974;
pub const MAX_TIME_MS: i64 = 9_223_309_901_257_974;

/// Merged form values in Go's order: body values before URL values for each key.
#[derive(Debug, Default)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    pub fn parse(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Result<Form, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim_start().starts_with("application/x-www-form-urlencoded"));
        if is_form && !body.is_empty() {
            let b: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
                .map_err(|e| ApiError::bad_data(format!("error parsing form values: {e}")))?;
            pairs.extend(b);
        }
        if let Some(q) = query {
            let u: Vec<(String, String)> = serde_urlencoded::from_str(q)
                .map_err(|e| ApiError::bad_data(format!("error parsing form values: {e}")))?;
            pairs.extend(u);
        }
        // Stable sort by key keeps body-before-URL order within a key, like url.Values merging.
        let mut keyed: Vec<(usize, (String, String))> = pairs.into_iter().enumerate().collect();
        keyed.sort_by(|a, b| a.1.0.cmp(&b.1.0).then(a.0.cmp(&b.0)));
        Ok(Form {
            pairs: keyed.into_iter().map(|(_, p)| p).collect(),
        })
    }

    /// The first value of every key (Go's `FormValue` for each key present).
    pub fn first_values(&self) -> std::collections::HashMap<String, String> {
        let mut m = std::collections::HashMap::new();
        for (k, v) in &self.pairs {
            m.entry(k.clone()).or_insert_with(|| v.clone());
        }
        m
    }

    /// First value of `key`, or "" (Go's `FormValue`).
    pub fn value(&self, key: &str) -> &str {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }

    pub fn values(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// `parseTimeParam`: absent means `default`.
pub fn time_param(form: &Form, name: &str, default: i64) -> Result<i64, ApiError> {
    let v = form.value(name);
    if v.is_empty() {
        return Ok(default);
    }
    parse_time(v).map_err(|e| {
        ApiError::bad_data(format!(
            "invalid parameter {name:?}: Invalid time value for '{name}': {e}"
        ))
    })
}

/// Prometheus's `parseTime`: float unix seconds (rounded to ms) or RFC3339Nano; returns ms.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>()
        && f.is_finite()
    {
        let secs = f.trunc();
        let frac = ((f - secs) * 1000.0).round();
        return Ok((secs as i64).saturating_mul(1000).saturating_add(frac as i64));
    }
    if let Some(ms) = parse_rfc3339(s) {
        return Ok(ms);
    }
    match s {
        "-292273086-05-16T16:47:06Z" => Ok(MIN_TIME_MS),
        "292277025-08-18T07:12:54.999999999Z" => Ok(MAX_TIME_MS),
        _ => Err(format!("cannot parse {s:?} to a valid timestamp")),
    }
}

/// RFC3339 with optional fraction and `Z` or `±HH:MM`; returns unix ms (truncated).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    crate::model::text::parse_rfc3339_ns(s).map(|ns| ns.div_euclid(1_000_000))
}

/// `parseLimitParam`: "" = 0 (no limit).
pub fn limit_param(form: &Form) -> Result<usize, ApiError> {
    let s = form.value("limit");
    if s.is_empty() {
        return Ok(0);
    }
    let n: i64 = s.parse().map_err(|_| {
        ApiError::bad_data(format!(
            "invalid parameter \"limit\": strconv.Atoi: parsing {s:?}: invalid syntax"
        ))
    })?;
    if n < 0 {
        return Err(ApiError::bad_data(
            "invalid parameter \"limit\": limit must be non-negative",
        ));
    }
    Ok(n as usize)
}

/// Parses a series selector such as `up{job="x"}` into matchers (through the query layer's AST, so
/// the parser crate stays behind `query::promql::ast`).
pub fn parse_selector(s: &str) -> Result<Vec<Matcher>, ApiError> {
    use crate::query::promql::Expr;
    let expr = crate::query::promql::parse(s).map_err(|e| {
        let e = e.to_string();
        // Prometheus's ParseMetricSelector does not run this check; its API then reports it in its
        // own words (parseMatchersParam), which is what clients see.
        if e.contains("at least one non-empty matcher") {
            ApiError::bad_data("match[] must contain at least one non-empty matcher")
        } else {
            ApiError::bad_data(e)
        }
    })?;
    let Expr::Vector(vs) = expr else {
        return Err(ApiError::bad_data(format!(
            "1:1: parse error: expected a series selector, got {s:?}"
        )));
    };
    if vs.matcher_sets.len() > 1 {
        return Err(ApiError::bad_data(
            "1:1: parse error: `or` in a series selector is not supported",
        ));
    }
    Ok(vs.matcher_sets.into_iter().next().unwrap_or_default())
}

/// `parseMatchersParam`: every set must have a matcher that does not match the empty string.
pub fn matcher_sets(values: &[&str]) -> Result<Vec<Vec<Matcher>>, ApiError> {
    let mut sets = Vec::with_capacity(values.len());
    for v in values {
        sets.push(parse_selector(v)?);
    }
    for set in &sets {
        if !set.iter().any(|m| !m.matches_empty()) {
            return Err(ApiError::bad_data(
                "match[] must contain at least one non-empty matcher",
            ));
        }
    }
    Ok(sets)
}

/// Undoes Prometheus's `U__` value-encoding escaping of label names in URL paths
/// (`U__http_2e_status` -> `http.status`, `__` -> `_`). Invalid escapes return the input unchanged.
pub fn unescape_label_name(name: &str) -> String {
    let Some(rest) = name.strip_prefix("U__") else {
        return name.to_string();
    };
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '_' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'_') {
            chars.next();
            out.push('_');
            continue;
        }
        let mut hex = String::new();
        loop {
            match chars.next() {
                Some('_') => break,
                Some(h) if h.is_ascii_hexdigit() => hex.push(h),
                _ => return name.to_string(),
            }
        }
        match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
            Some(ch) => out.push(ch),
            None => return name.to_string(),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_time(s: &str, want: Option<i64>) {
        assert_eq!(parse_time(s).ok(), want, "{s}");
    }

    #[test]
    fn times() {
        check_time("1700000000", Some(1_700_000_000_000));
        check_time("1700000000.123", Some(1_700_000_000_123));
        check_time("1.5", Some(1500));
        check_time("2023-11-14T22:13:20Z", Some(1_700_000_000_000));
        check_time("2023-11-14T22:13:20.5Z", Some(1_700_000_000_500));
        check_time("2023-11-14T23:13:20+01:00", Some(1_700_000_000_000));
        check_time("yesterday", None);
        check_time("2023-13-14T22:13:20Z", None);
    }

    #[test]
    fn unescape() {
        for (i, o) in [
            ("U__http_2e_status", "http.status"),
            ("U__a__b", "a_b"),
            ("plain", "plain"),
            ("U__bad_zz_", "U__bad_zz_"),
        ] {
            assert_eq!(unescape_label_name(i), o);
        }
    }

    #[test]
    fn selectors() {
        let m = parse_selector(r#"up{job=~"a|b",x!="1"}"#).unwrap();
        assert_eq!(format!("{m:?}"), r#"[__name__="up", job=~"a|b", x!="1"]"#);
        assert!(parse_selector("up{").is_err());
        assert!(parse_selector("1+1").is_err());
        assert!(matcher_sets(&[r#"{job=~".*"}"#]).is_err());
    }

    #[test]
    fn form_merge_body_first() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let f = Form::parse(Some("a=url&b=2"), &h, b"a=body").unwrap();
        assert_eq!(f.value("a"), "body");
        assert_eq!(f.values("a"), vec!["body", "url"]);
        assert_eq!(f.value("b"), "2");
        assert_eq!(f.value("c"), "");
    }
}
