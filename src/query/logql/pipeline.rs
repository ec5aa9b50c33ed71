//! Per-entry log pipeline: line filters, parsers, label filters, formatting, drop/keep.
//!
//! Owns: the label builder with Loki's three categories (stream, structured metadata, parsed) and
//! the collision rules between them, and every stage's per-line semantics. Never touches:
//! storage, time ranges, aggregation or output encoding.

use super::ast::*;
use super::template::Scope;
use crate::model::Matcher;
use std::borrow::Cow;

pub const ERROR: &str = "__error__";
pub const ERROR_DETAILS: &str = "__error_details__";

pub type Pairs = Vec<(String, String)>;

/// The labels of one entry while it goes through the pipeline.
#[derive(Debug, Clone, Default)]
pub struct LabelsBuilder {
    pub stream: Pairs,
    pub sm: Pairs,
    pub parsed: Pairs,
    /// When set, parsers extract only these labels (Loki's parser hints for metric queries whose
    /// result keeps only some labels); everything else is skipped without allocating.
    pub only: Option<std::sync::Arc<[String]>>,
}

fn find<'a>(v: &'a Pairs, n: &str) -> Option<&'a str> {
    v.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str())
}

fn upsert(v: &mut Pairs, n: &str, val: String) {
    match v.iter_mut().find(|(k, _)| k == n) {
        Some(e) => e.1 = val,
        None => v.push((n.to_string(), val)),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Stream,
    Sm,
    Parsed,
}

impl LabelsBuilder {
    pub fn get(&self, n: &str) -> Option<&str> {
        find(&self.parsed, n)
            .or_else(|| find(&self.sm, n))
            .or_else(|| find(&self.stream, n))
    }
    fn get_cat(&self, n: &str) -> Option<(&str, Category)> {
        if let Some(v) = find(&self.parsed, n) {
            return Some((v, Category::Parsed));
        }
        if let Some(v) = find(&self.sm, n) {
            return Some((v, Category::Sm));
        }
        find(&self.stream, n).map(|v| (v, Category::Stream))
    }
    pub fn has_err(&self) -> bool {
        find(&self.parsed, ERROR).is_some()
    }
    pub fn set_err(&mut self, kind: &str, details: Option<String>) {
        if self.has_err() {
            return;
        }
        upsert(&mut self.parsed, ERROR, kind.to_string());
        if let Some(d) = details {
            upsert(&mut self.parsed, ERROR_DETAILS, d);
        }
    }
    /// Loki's `Set`: parsed beats structured metadata beats stream labels.
    pub fn set(&mut self, cat: Category, n: &str, v: String) {
        match cat {
            Category::Parsed => {
                self.sm.retain(|(k, _)| k != n);
                self.stream.retain(|(k, _)| k != n);
                upsert(&mut self.parsed, n, v);
            }
            Category::Sm => {
                self.stream.retain(|(k, _)| k != n);
                if find(&self.parsed, n).is_none() {
                    upsert(&mut self.sm, n, v);
                }
            }
            Category::Stream => {
                if find(&self.parsed, n).is_none() && find(&self.sm, n).is_none() {
                    upsert(&mut self.stream, n, v);
                }
            }
        }
    }
    pub fn del(&mut self, n: &str) {
        self.stream.retain(|(k, _)| k != n);
        self.sm.retain(|(k, _)| k != n);
        self.parsed.retain(|(k, _)| k != n);
    }
    /// A parser's extracted label: `_extracted` when a stream label has the name; it replaces
    /// structured metadata of the same name. Returns false when a hinted label filter rejects the
    /// value (the line is then dropped).
    fn set_extracted(&mut self, hints: &[&LabelFilter], key: String, v: String) -> bool {
        let key = if find(&self.stream, &key).is_some() {
            format!("{key}_extracted")
        } else {
            key
        };
        if let Some(only) = &self.only
            && !only.contains(&key)
        {
            return true;
        }
        self.sm.retain(|(k, _)| *k != key);
        upsert(&mut self.parsed, &key, v);
        for f in hints {
            if filter_name(f) == Some(key.as_str()) && !label_filter(f, self) {
                return false;
            }
        }
        true
    }
    /// Whether a parser should extract `key`: false when hints leave it out (`set_extracted`
    /// would drop it), so the parser can skip it without allocating.
    fn wants(&self, key: &str) -> bool {
        let Some(only) = &self.only else { return true };
        if find(&self.stream, key).is_some() {
            only.iter()
                .any(|o| o.len() == key.len() + 10 && o.starts_with(key) && o.ends_with("_extracted"))
        } else {
            only.iter().any(|o| o == key)
        }
    }
    /// All labels merged and sorted by name (the non-categorized view).
    pub fn merged(&self) -> Pairs {
        let mut out: Pairs = Vec::with_capacity(self.stream.len() + self.sm.len() + self.parsed.len());
        out.extend(self.stream.iter().cloned());
        out.extend(self.sm.iter().cloned());
        out.extend(self.parsed.iter().cloned());
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }
}

struct EntryScope<'a> {
    lb: &'a LabelsBuilder,
    line: &'a str,
    ts: i64,
}

impl Scope for EntryScope<'_> {
    fn label(&self, name: &str) -> Option<&str> {
        self.lb.get(name)
    }
    fn line(&self) -> &str {
        self.line
    }
    fn ts_ns(&self) -> i64 {
        self.ts
    }
}

/// Loki's `sanitizeLabelKey`: non-alphanumerics become `_`; a leading digit gets a `_` prefix.
pub fn sanitize_key(k: &str, prefix: bool) -> String {
    let mut o = String::with_capacity(k.len() + 1);
    if prefix && k.as_bytes().first().is_some_and(|c| c.is_ascii_digit()) {
        o.push('_');
    }
    for c in k.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            o.push(c)
        } else {
            o.push('_')
        }
    }
    o
}

pub fn line_filter_matches(f: &LineFilter, line: &[u8]) -> bool {
    let any = f.alts.iter().any(|m| match m {
        LineMatch::Contains(fi) => fi.needle().is_empty() || fi.find(line).is_some(),
        LineMatch::Regex(re) => match std::str::from_utf8(line) {
            Ok(s) => re.is_match(s),
            Err(_) => re.is_match(&String::from_utf8_lossy(line)),
        },
        LineMatch::Pattern(p) => p.test(line),
        LineMatch::Ip(ip) => line_has_ip(line, ip),
    });
    if f.negative { !any } else { any }
}

fn ip_in(ip: &std::net::IpAddr, m: &IpMatcher) -> bool {
    use std::net::IpAddr;
    fn bits(ip: &IpAddr) -> (u128, u8) {
        match ip {
            IpAddr::V4(a) => (u128::from(u32::from(*a)), 32),
            IpAddr::V6(a) => (u128::from(*a), 128),
        }
    }
    match m {
        IpMatcher::Single(a) => a == ip,
        IpMatcher::Range(a, b) => a.is_ipv4() == ip.is_ipv4() && bits(a).0 <= bits(ip).0 && bits(ip).0 <= bits(b).0,
        IpMatcher::Cidr(net, n) => {
            if net.is_ipv4() != ip.is_ipv4() {
                return false;
            }
            let (nb, w) = bits(net);
            let (ib, _) = bits(ip);
            let n = u32::from(*n).min(u32::from(w));
            if n == 0 {
                return true;
            }
            let shift = u32::from(w) - n;
            (nb >> shift) == (ib >> shift)
        }
    }
}

fn line_has_ip(line: &[u8], m: &IpMatcher) -> bool {
    let is_ipc = |c: u8| c.is_ascii_hexdigit() || c == b'.' || c == b':';
    let mut i = 0;
    while i < line.len() {
        if !is_ipc(line[i]) {
            i += 1;
            continue;
        }
        let st = i;
        while i < line.len() && is_ipc(line[i]) {
            i += 1;
        }
        let tok = std::str::from_utf8(&line[st..i]).unwrap_or("");
        let tok = tok.trim_matches(|c| c == '.' || c == ':');
        if let Ok(ip) = tok.parse::<std::net::IpAddr>()
            && ip_in(&ip, m)
        {
            return true;
        }
        // `10.0.0.1:8080` style: try without a trailing port.
        if let Some((h, _)) = tok.rsplit_once(':')
            && let Ok(ip) = h.parse::<std::net::IpAddr>()
            && ip_in(&ip, m)
        {
            return true;
        }
    }
    false
}

fn cmp(op: CmpOp, a: f64, b: f64) -> bool {
    match op {
        CmpOp::Eq => a == b,
        CmpOp::Ne => a != b,
        CmpOp::Gt => a > b,
        CmpOp::Ge => a >= b,
        CmpOp::Lt => a < b,
        CmpOp::Le => a <= b,
    }
}

/// Go `strconv.ParseFloat` accepting what Go accepts: `1_000`, hex floats, `Inf`, `NaN`.
pub fn go_parse_float(s: &str) -> Result<f64, String> {
    let err = || {
        format!(
            "strconv.ParseFloat: parsing {}: invalid syntax",
            super::parser::go_quote(s)
        )
    };
    let t = s;
    let (neg, body) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let lower = body.to_ascii_lowercase();
    let v = if lower == "inf" || lower == "infinity" {
        f64::INFINITY
    } else if lower == "nan" {
        f64::NAN
    } else if let Some(hex) = lower.strip_prefix("0x") {
        parse_hex_float(hex).ok_or_else(err)?
    } else {
        if body.is_empty() || !body.bytes().all(|c| c.is_ascii_digit() || b"._eE+-".contains(&c)) {
            return Err(err());
        }
        // Underscores are allowed only between digits (Go's base-prefix-free rule is stricter,
        // but the corpus only has `1_000`).
        let clean: String = if body.contains('_') {
            let b = body.as_bytes();
            for (i, c) in b.iter().enumerate() {
                if *c == b'_'
                    && (i == 0 || i + 1 == b.len() || !b[i - 1].is_ascii_digit() || !b[i + 1].is_ascii_digit())
                {
                    return Err(err());
                }
            }
            body.replace('_', "")
        } else {
            body.to_string()
        };
        clean.parse::<f64>().map_err(|_| err())?
    };
    Ok(if neg { -v } else { v })
}

fn parse_hex_float(s: &str) -> Option<f64> {
    let (mant, exp) = match s.split_once('p') {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (s, 0),
    };
    let (ip, fp) = mant.split_once('.').unwrap_or((mant, ""));
    let mut v = 0f64;
    for c in ip.chars() {
        v = v * 16.0 + f64::from(c.to_digit(16)?);
    }
    let mut scale = 1.0 / 16.0;
    for c in fp.chars() {
        v += f64::from(c.to_digit(16)?) * scale;
        scale /= 16.0;
    }
    Some(v * 2f64.powi(exp))
}

/// The label a single (non-binary) label filter tests.
pub fn filter_name(f: &LabelFilter) -> Option<&str> {
    match f {
        LabelFilter::And(..) | LabelFilter::Or(..) => None,
        LabelFilter::Matcher(m) => Some(&m.name),
        LabelFilter::Contains { name, .. }
        | LabelFilter::Number { name, .. }
        | LabelFilter::Duration { name, .. }
        | LabelFilter::Bytes { name, .. }
        | LabelFilter::Ip { name, .. } => Some(name),
    }
}

/// Result of a label filter on one entry.
pub fn label_filter(f: &LabelFilter, lb: &mut LabelsBuilder) -> bool {
    match f {
        LabelFilter::And(a, b) => label_filter(a, lb) && label_filter(b, lb),
        LabelFilter::Or(a, b) => label_filter(a, lb) || label_filter(b, lb),
        LabelFilter::Matcher(m) => m.matches(lb.get(&m.name).unwrap_or("")),
        LabelFilter::Contains {
            name, needle, negative, ..
        } => lb.get(name).unwrap_or("").contains(needle.as_str()) != *negative,
        LabelFilter::Number { name, op, value } => {
            let Some(v) = lb.get(name) else { return false };
            if lb.has_err() {
                return true;
            }
            match go_parse_float(v) {
                Ok(x) => cmp(*op, x, *value),
                Err(e) => {
                    lb.set_err("LabelFilterErr", Some(e));
                    true
                }
            }
        }
        LabelFilter::Duration { name, op, value_s } => {
            let Some(v) = lb.get(name) else { return false };
            if lb.has_err() {
                return true;
            }
            match super::parser::parse_duration(v) {
                Ok(x) => cmp(*op, x as f64 / 1e9, *value_s),
                Err(e) => {
                    lb.set_err("LabelFilterErr", Some(format!("time: {e}")));
                    true
                }
            }
        }
        LabelFilter::Bytes { name, op, value } => {
            let Some(v) = lb.get(name) else { return false };
            if lb.has_err() {
                return true;
            }
            match super::parser::parse_bytes(v) {
                Some(x) => cmp(*op, x, *value),
                None => {
                    lb.set_err(
                        "LabelFilterErr",
                        Some(format!("strconv.ParseFloat: parsing {v:?}: invalid syntax")),
                    );
                    true
                }
            }
        }
        LabelFilter::Ip { name, negative, ip } => {
            // A missing label never matches, whichever the operator.
            let Some(v) = lb.get(name) else { return false };
            let ok = v.parse::<std::net::IpAddr>().ok().is_some_and(|a| ip_in(&a, ip));
            if *negative { !ok } else { ok }
        }
    }
}

/// How many stages at the front are line filters: the engine runs those on the borrowed line
/// before it allocates anything for the entry, so rejected lines cost no allocation.
pub fn leading_line_filters(stages: &[Stage]) -> usize {
    stages.iter().take_while(|s| matches!(s, Stage::LineFilter(_))).count()
}

/// True when every one of `stages` (all line filters) accepts the line.
pub fn prefilter(stages: &[Stage], line: &[u8]) -> bool {
    stages.iter().all(|s| match s {
        Stage::LineFilter(f) => line_filter_matches(f, line),
        _ => true,
    })
}

/// Runs all stages over one entry; `false` when the entry is filtered out.
pub fn run(
    stages: &[Stage],
    hints: &[Option<Vec<&LabelFilter>>],
    ts: i64,
    line: &mut String,
    lb: &mut LabelsBuilder,
    first_wins: &[String],
) -> bool {
    for (i, st) in stages.iter().enumerate() {
        let h: &[&LabelFilter] = match hints.get(i) {
            Some(Some(v)) => v,
            _ => &[],
        };
        let ok = match st {
            Stage::LineFilter(f) => line_filter_matches(f, line.as_bytes()),
            Stage::Decolorize => {
                if let Some(re) = decolor_re()
                    && re.is_match(line)
                {
                    *line = re.replace_all(line, "").into_owned();
                }
                true
            }
            Stage::Json(params) => json_stage(params, h, line, lb),
            Stage::Logfmt {
                strict,
                keep_empty,
                params,
            } => logfmt_stage(*strict, *keep_empty, params, h, first_wins, line, lb),
            Stage::Regexp(re) => {
                let mut ok = true;
                if let Some(c) = re.captures(line) {
                    for (k, name) in re.capture_names().enumerate() {
                        let Some(name) = name else { continue };
                        let v = c.get(k).map(|m| m.as_str()).unwrap_or("");
                        if !lb.set_extracted(h, sanitize_key(name, true), v.to_string()) {
                            ok = false;
                            break;
                        }
                    }
                }
                ok
            }
            Stage::Pattern(p) => {
                let mut caps: Vec<(&str, &[u8])> = Vec::new();
                p.captures(line.as_bytes(), |n, v| caps.push((n, v)));
                let owned: Vec<(String, String)> = caps
                    .into_iter()
                    .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v).into_owned()))
                    .collect();
                owned.into_iter().all(|(n, v)| lb.set_extracted(h, n, v))
            }
            Stage::Unpack => unpack_stage(h, line, lb),
            Stage::LabelFilter(f) => label_filter(f, lb),
            Stage::LineFormat(t) => {
                let mut out = String::new();
                let r = t.render(&EntryScope { lb, line, ts }, &mut out);
                match r {
                    Ok(()) => *line = out,
                    Err(e) => lb.set_err("TemplateFormatErr", Some(e)),
                }
                true
            }
            Stage::LabelFormat(fs) => {
                let snapshot = lb.clone();
                for f in fs {
                    match f {
                        LabelFmt::Rename { dst, src } => {
                            if let Some((v, _)) = lb.get_cat(src) {
                                let v = v.to_string();
                                lb.del(src);
                                lb.set(Category::Parsed, dst, v);
                            }
                        }
                        LabelFmt::Template { dst, tmpl } => {
                            let mut out = String::new();
                            match tmpl.render(
                                &EntryScope {
                                    lb: &snapshot,
                                    line,
                                    ts,
                                },
                                &mut out,
                            ) {
                                Ok(()) => lb.set(Category::Parsed, dst, out),
                                Err(e) => lb.set_err("TemplateFormatErr", Some(e)),
                            }
                        }
                    }
                }
                true
            }
            Stage::Drop(ms) => {
                for m in ms {
                    drop_one(lb, m);
                }
                true
            }
            Stage::Keep(ms) => {
                keep(lb, ms);
                true
            }
        };
        if !ok {
            return false;
        }
    }
    true
}

fn matches_nm(m: &Option<Matcher>, v: &str) -> bool {
    m.as_ref().is_none_or(|m| m.matches(v))
}

fn drop_one(lb: &mut LabelsBuilder, m: &NameMatcher) {
    let Some(v) = lb.get(&m.name) else { return };
    if matches_nm(&m.matcher, v) {
        lb.del(&m.name);
    }
}

fn keep(lb: &mut LabelsBuilder, ms: &[NameMatcher]) {
    let keep_it = |k: &str, v: &str| ms.iter().any(|m| m.name == k && matches_nm(&m.matcher, v));
    lb.stream.retain(|(k, v)| keep_it(k, v));
    lb.sm.retain(|(k, v)| keep_it(k, v));
    lb.parsed
        .retain(|(k, v)| keep_it(k, v) || k == ERROR || k == ERROR_DETAILS);
}

fn decolor_re() -> Option<&'static regex::Regex> {
    static RE: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        // acarl005/stripansi, the expression Loki's decolorize stage uses.
        regex::Regex::new(
            "[\u{001B}\u{009B}][\\[\\]()#;?]*(?:(?:(?:[a-zA-Z\\d]*(?:;[a-zA-Z\\d]*)*)?\u{0007})|(?:(?:\\d{1,4}(?:;\\d{0,4})*)?[\\dA-PRZcf-ntqry=><~]))",
        )
        .ok()
    })
    .as_ref()
}

fn json_scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Null => Some(String::new()),
        _ => None,
    }
}

fn json_stage(params: &[(String, Vec<PathPart>)], h: &[&LabelFilter], line: &str, lb: &mut LabelsBuilder) -> bool {
    if params.is_empty() {
        // Walk without building a `Value` (the `sum by (level) (count_over_time({container=
        // "json"} | json [5m]))` bench query spent most of its time in `Value`), copying only
        // the labels the hints leave in.
        let only = lb.only.clone();
        let key = |k: &str| lb.wants(k);
        let prefix = |p: &str| {
            only.as_ref().is_none_or(|only| {
                only.iter()
                    .any(|o| o.len() > p.len() && o.starts_with(p) && o.as_bytes()[p.len()] == b'_')
            })
        };
        match super::jsonwalk::walk(
            line,
            &super::jsonwalk::Want {
                key: &key,
                prefix: &prefix,
            },
        ) {
            super::jsonwalk::Walked::Ok(pairs) => {
                return pairs.into_iter().all(|(k, v)| lb.set_extracted(h, k, v));
            }
            super::jsonwalk::Walked::Invalid => {
                lb.set_err(
                    "JSONParserErr",
                    Some("Value looks like object, but can't find closing '}' symbol".into()),
                );
                return true;
            }
            super::jsonwalk::Walked::Duplicate => {}
        }
    }
    json_stage_value(params, h, line, lb)
}

/// The `json` stage through a whole `serde_json::Value`: for parameters and duplicated keys.
fn json_stage_value(
    params: &[(String, Vec<PathPart>)],
    h: &[&LabelFilter],
    line: &str,
    lb: &mut LabelsBuilder,
) -> bool {
    let parsed: serde_json::Value = match parse_json_object(line) {
        Ok(v) => v,
        Err(e) => {
            if params.is_empty() {
                lb.set_err("JSONParserErr", Some(e));
            } else {
                lb.set_err("JSONParserErr", None);
            }
            return true;
        }
    };
    if params.is_empty() {
        if let serde_json::Value::Object(m) = &parsed {
            return walk_json(m, "", h, lb);
        }
        return true;
    }
    for (name, path) in params {
        let mut cur = Some(&parsed);
        for p in path {
            cur = match (cur, p) {
                (Some(serde_json::Value::Object(m)), PathPart::Key(k)) => m.get(k),
                (Some(serde_json::Value::Array(a)), PathPart::Index(i)) => a.get(*i),
                _ => None,
            };
        }
        let v = match cur {
            Some(v @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) => {
                raw_json_of(line, path).unwrap_or_else(|| v.to_string())
            }
            Some(v) => json_scalar(v).unwrap_or_default(),
            // A missing path gives "", but does not shadow structured metadata of that name.
            None if find(&lb.sm, name).is_some() => continue,
            None => String::new(),
        };
        if !lb.set_extracted(h, sanitize_key(name, true), v) {
            return false;
        }
    }
    true
}

/// Loki returns nested values as their raw JSON text; re-serializing loses the original spacing,
/// so the raw bytes are located in the line.
fn raw_json_of(line: &str, path: &[PathPart]) -> Option<String> {
    let mut s = line.trim_start();
    for p in path {
        s = s.trim_start();
        match p {
            PathPart::Key(k) => {
                let body = s.strip_prefix('{')?;
                let mut rest = body;
                loop {
                    rest = rest.trim_start();
                    let (key, after) = read_json_string(rest)?;
                    let after = after.trim_start().strip_prefix(':')?.trim_start();
                    if key == *k {
                        s = after;
                        break;
                    }
                    let end = skip_json_value(after)?;
                    rest = after[end..].trim_start().strip_prefix(',')?;
                }
            }
            PathPart::Index(i) => {
                let mut rest = s.strip_prefix('[')?;
                for _ in 0..*i {
                    rest = rest.trim_start();
                    let end = skip_json_value(rest)?;
                    rest = rest[end..].trim_start().strip_prefix(',')?;
                }
                s = rest.trim_start();
            }
        }
    }
    let end = skip_json_value(s)?;
    Some(s[..end].to_string())
}

fn read_json_string(s: &str) -> Option<(String, &str)> {
    let end = skip_json_value(s)?;
    let v: String = serde_json::from_str(&s[..end]).ok()?;
    Some((v, &s[end..]))
}

fn skip_json_value(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0i32;
    let mut i = 0;
    let mut in_str = false;
    while i < b.len() {
        let c = b[i];
        if in_str {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                in_str = false;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
        } else {
            match c {
                b'"' => in_str = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                    if depth < 0 {
                        return Some(i);
                    }
                }
                b',' if depth == 0 => return Some(i),
                _ => {}
            }
        }
        i += 1;
    }
    if depth == 0 { Some(b.len()) } else { None }
}

/// The line must be a JSON object; errors use jsonparser's texts as Loki reports them.
fn parse_json_object(line: &str) -> Result<serde_json::Value, String> {
    let t = line.trim_start();
    if !t.starts_with('{') {
        return Err("Value looks like object, but can't find closing '}' symbol".into());
    }
    serde_json::from_str::<serde_json::Value>(line)
        .map_err(|_| "Value looks like object, but can't find closing '}' symbol".to_string())
}

fn walk_json(
    m: &serde_json::Map<String, serde_json::Value>,
    prefix: &str,
    h: &[&LabelFilter],
    lb: &mut LabelsBuilder,
) -> bool {
    for (k, v) in m {
        let key = if prefix.is_empty() {
            sanitize_key(k, true)
        } else {
            format!("{prefix}_{}", sanitize_key(k, false))
        };
        match v {
            serde_json::Value::Object(inner) => {
                if !walk_json(inner, &key, h, lb) {
                    return false;
                }
            }
            serde_json::Value::Array(_) | serde_json::Value::Null => {}
            v => {
                if let Some(s) = json_scalar(v)
                    && !lb.set_extracted(h, key, s)
                {
                    return false;
                }
            }
        }
    }
    true
}

fn unpack_stage(h: &[&LabelFilter], line: &mut String, lb: &mut LabelsBuilder) -> bool {
    let parsed: serde_json::Value = match parse_json_object(line) {
        Ok(v) => v,
        Err(e) => {
            lb.set_err("JSONParserErr", Some(e));
            return true;
        }
    };
    let serde_json::Value::Object(m) = parsed else {
        return true;
    };
    // Loki only unpacks lines that carry a packed `_entry`; other JSON lines are left alone.
    let Some(serde_json::Value::String(entry)) = m.get("_entry") else {
        return true;
    };
    let entry = entry.clone();
    for (k, v) in &m {
        if let serde_json::Value::String(s) = v
            && k != "_entry"
            && !lb.set_extracted(h, k.clone(), s.clone())
        {
            return false;
        }
    }
    *line = entry;
    true
}

/// go-logfmt's scanner, as Loki's logfmt parser drives it.
fn logfmt_stage(
    strict: bool,
    keep_empty: bool,
    params: &[(String, String)],
    h: &[&LabelFilter],
    first_wins: &[String],
    line: &str,
    lb: &mut LabelsBuilder,
) -> bool {
    // Keys and unescaped values borrow from the line; only extracted labels are copied.
    let mut pairs: Vec<(&str, Option<Cow<'_, str>>)> = Vec::new();
    let b = line.as_bytes();
    let mut i = 0;
    let mut err: Option<String> = None;
    while i < b.len() {
        while i < b.len() && b[i] <= b' ' {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let ks = i;
        while i < b.len() && b[i] > b' ' && b[i] != b'=' && b[i] != b'"' {
            i += 1;
        }
        if i < b.len() && b[i] == b'"' {
            err = Some(format!("logfmt syntax error at pos {} : unexpected '\"'", i + 1));
            // skip to next whitespace
            while i < b.len() && b[i] > b' ' {
                i += 1;
            }
            if strict {
                break;
            }
            continue;
        }
        let key = &line[ks..i];
        if key.is_empty() {
            // '=' with no key
            err = Some(format!("logfmt syntax error at pos {} : unexpected '='", i + 1));
            while i < b.len() && b[i] > b' ' {
                i += 1;
            }
            if strict {
                break;
            }
            continue;
        }
        if i >= b.len() || b[i] != b'=' {
            pairs.push((key, None));
            continue;
        }
        i += 1;
        if i < b.len() && b[i] == b'"' {
            let st = i;
            i += 1;
            let mut esc = false;
            while i < b.len() {
                if b[i] == b'\\' {
                    esc = true;
                    i += 2;
                    continue;
                }
                if b[i] == b'"' {
                    break;
                }
                i += 1;
            }
            if i >= b.len() {
                err = Some(format!(
                    "logfmt syntax error at pos {} : unterminated quoted value",
                    i + 1
                ));
                if strict {
                    break;
                }
                continue;
            }
            i += 1;
            let raw = &line[st..i];
            let v = if esc {
                Cow::Owned(unquote_go(raw).unwrap_or_else(|| raw[1..raw.len() - 1].to_string()))
            } else {
                Cow::Borrowed(&raw[1..raw.len() - 1])
            };
            pairs.push((key, Some(v)));
        } else {
            let vs = i;
            while i < b.len() && b[i] > b' ' && b[i] != b'"' && b[i] != b'=' {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'=') {
                err = Some(format!(
                    "logfmt syntax error at pos {} : unexpected '{}'",
                    i + 1,
                    b[i] as char
                ));
                while i < b.len() && b[i] > b' ' {
                    i += 1;
                }
                if strict {
                    break;
                }
                continue;
            }
            pairs.push((key, Some(Cow::Borrowed(&line[vs..i]))));
        }
    }
    if strict && let Some(e) = err {
        lb.set_err("LogfmtParserErr", Some(e));
        return true;
    }
    if params.is_empty() {
        // A duplicated key is set again: the last value wins unless a hint dropped the line.
        // Metric queries know the labels they need and stop at their first occurrence.
        let mut seen: Vec<String> = Vec::new();
        for (k, v) in pairs {
            let v = v.unwrap_or_default();
            if v.is_empty() && !keep_empty {
                continue;
            }
            // A key that needs no sanitizing is checked against the hints before any copy.
            let clean = !k.as_bytes().first().is_some_and(u8::is_ascii_digit)
                && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
            if clean && !lb.wants(k) {
                continue;
            }
            let key = sanitize_key(k, true);
            if key.is_empty() {
                continue;
            }
            if first_wins.contains(&key) {
                if seen.contains(&key) {
                    continue;
                }
                seen.push(key.clone());
            }
            if !lb.set_extracted(h, key, v.into_owned()) {
                return false;
            }
        }
    } else {
        // A key matches a parameter by its path or by the label name itself. The last occurrence
        // wins, except for a name that collides with a stream label (it becomes `_extracted`),
        // where Loki keeps the first. A key never seen gives "".
        let mut values: Vec<Option<String>> = vec![None; params.len()];
        for (k, v) in &pairs {
            for (i, (name, path)) in params.iter().enumerate() {
                if k == path || k == name {
                    if values[i].is_some() && find(&lb.stream, &sanitize_key(name, true)).is_some() {
                        continue;
                    }
                    values[i] = Some(v.as_deref().unwrap_or("").to_string());
                }
            }
        }
        for ((name, _), v) in params.iter().zip(values) {
            if !lb.set_extracted(h, sanitize_key(name, true), v.unwrap_or_default()) {
                return false;
            }
        }
    }
    true
}

fn unquote_go(raw: &str) -> Option<String> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut it = inner.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next()? {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            '\\' => out.push('\\'),
            '"' => out.push('"'),
            '/' => out.push('/'),
            'u' => {
                let h: String = it.by_ref().take(4).collect();
                out.push(char::from_u32(u32::from_str_radix(&h, 16).ok()?)?);
            }
            o => {
                out.push('\\');
                out.push(o);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod json_walk_tests {
    use super::*;

    /// The `json` stage's walk and its `Value` path give the same labels, errors and verdict,
    /// with all labels wanted and with hints (`only`), on a stream with an `app` label.
    fn check(line: &str, only: Option<&[&str]>, filter: Option<&str>) {
        let hint = filter.map(
            |f| match crate::query::logql::parser::parse(&format!("{{a=\"b\"}} | {f}")) {
                Ok(Expr::Log(e)) => match e.stages.into_iter().next() {
                    Some(Stage::LabelFilter(lf)) => lf,
                    _ => panic!("not a label filter: {f}"),
                },
                _ => panic!("bad filter {f}"),
            },
        );
        let h: Vec<&LabelFilter> = hint.iter().collect();
        let new_lb = || LabelsBuilder {
            stream: vec![("app".into(), "x".into())],
            sm: vec![("level".into(), "sm".into())],
            parsed: Vec::new(),
            only: only.map(|o| o.iter().map(|s| s.to_string()).collect()),
        };
        let (mut fast, mut slow) = (new_lb(), new_lb());
        let a = json_stage(&[], &h, line, &mut fast);
        let b = json_stage_value(&[], &h, line, &mut slow);
        assert_eq!(
            (a, &fast.stream, &fast.sm, &fast.parsed),
            (b, &slow.stream, &slow.sm, &slow.parsed),
            "line {line:?} only {only:?} filter {filter:?}"
        );
    }

    #[test]
    fn walk_matches_value_path() {
        let lines = [
            r#"{"level":"error","latency_ms":12.5,"user_id":42,"ok":true,"none":null}"#,
            r#"{"app":"shadow","level":"warn","nested":{"a":1,"b":{"c":"deep"},"arr":[1,{"x":2}]}}"#,
            r#"  {"k.with-dots":"v","1digit":"d","a b":-3,"big":1e300,"neg":-0.0,"u":18446744073709551615}"#,
            r#"{"esc\"aped":"v\u00e9\n","s":"\ud83d\ude00","":{"inner":"under empty key"}}"#,
            r#"{"dup":1,"dup":2}"#,
            r#"{"o":{"x":1,"x":{"y":2}},"level":"info"}"#,
            r#"{"level":"error"} trailing"#,
            r#"{"level":"error""#,
            r#"["not","an","object"]"#,
            r#""string""#,
            r#"{"bad":"\ud800"}"#,
            r#"{"bad":01}"#,
            r#"{"ctl":"a	b"}"#,
            "not json at all",
            "",
            r#"{}"#,
            r#"{"a":{"b":{"c":{"d":"four"}}},"a_b_c_d":"flat"}"#,
        ];
        let onlys: [Option<&[&str]>; 5] = [
            None,
            Some(&["level"]),
            Some(&["app_extracted", "nested_b_c"]),
            Some(&["a_b_c_d", "inner", "k_with_dots", "_1digit"]),
            Some(&["o_x", "o_x_y", "dup", "big", "neg", "u", "s", "esc_aped"]),
        ];
        for l in lines {
            for o in onlys {
                for f in [None, Some(r#"level="error""#), Some("latency_ms > 100")] {
                    check(l, o, f);
                }
            }
        }
    }
}
