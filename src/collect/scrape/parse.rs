//! Exposition parser: Prometheus text format 0.0.4 and OpenMetrics 1.0 text, borrowed from the
//! scrape body.
//!
//! Specs: <https://github.com/prometheus/docs/blob/4e52ee6/content/docs/instrumenting/exposition_formats.md>
//! (0.0.4) and <https://github.com/OpenObservability/OpenMetrics/blob/v1.0.0/specification/OpenMetrics.md>.
//! Names, unescaped label values and HELP texts borrow from the body; only a value or HELP that
//! contains an escape is copied. All samples of a body go into one [`Parsed`]: a scrape allocates
//! per body, not per sample.
//!
//! Like Prometheus, a syntax error fails the whole scrape (the target shows `up == 0` and the
//! error); partial bodies are never stored, because a truncated OpenMetrics body (no `# EOF`)
//! would otherwise look like vanished series and write staleness markers.

use super::ScrapeError;
use crate::proto::remote_write::MetricType;
use std::borrow::Cow;
use std::ops::Range;

/// Which grammar a body is parsed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4` (also what `version=1.0.0` of the text format means for us).
    Text,
    /// `application/openmetrics-text; version=1.0.0` (and 0.0.1).
    OpenMetrics,
}

/// The `Accept` header Prometheus 2.42 sends (`scrape/scrape.go` `scrapeAcceptHeader`).
pub const ACCEPT_HEADER: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Picks the grammar from a response's Content-Type. A missing, malformed or unknown media type
/// gives `fallback` (Prometheus 2 always fell back to 0.0.4; Prometheus 3 fails the scrape unless
/// `fallback_scrape_protocol` is set, and many exporters send no or a wrong Content-Type).
pub fn format_for(content_type: Option<&str>, fallback: Format) -> Format {
    let Some(ct) = content_type else {
        return fallback;
    };
    let media = ct.split([';', ',']).next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("application/openmetrics-text") {
        Format::OpenMetrics
    } else if media.eq_ignore_ascii_case("text/plain") {
        Format::Text
    } else {
        fallback
    }
}

/// One sample line.
#[derive(Debug, Clone)]
pub struct Sample<'a> {
    pub name: &'a str,
    /// The series as written (name and label block): the scrape cache's key, so a series seen
    /// before is recognised without building its labels again.
    pub series: &'a str,
    /// Range into [`Parsed::labels`].
    pub labels: Range<u32>,
    pub value: f64,
    /// Milliseconds; OpenMetrics' float seconds are converted.
    pub timestamp_ms: Option<i64>,
}

/// HELP/TYPE/UNIT of one family, as the metadata API reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta<'a> {
    pub family: &'a str,
    pub kind: MetricType,
    pub help: Cow<'a, str>,
    pub unit: &'a str,
}

/// One parsed body.
#[derive(Debug, Default)]
pub struct Parsed<'a> {
    pub samples: Vec<Sample<'a>>,
    /// All samples' labels, flattened, in line order (not sorted, no `__name__`).
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    pub metadata: Vec<Meta<'a>>,
    /// Exemplars seen (OpenMetrics); they are skipped, not stored.
    pub exemplars: u64,
}

impl<'a> Parsed<'a> {
    pub fn sample_labels(&self, s: &Sample<'_>) -> &[(&'a str, Cow<'a, str>)] {
        self.labels
            .get(s.labels.start as usize..s.labels.end as usize)
            .unwrap_or(&[])
    }
}

fn err(line: usize, reason: &'static str) -> ScrapeError {
    ScrapeError::Parse { line, reason }
}

/// Parses `body` into `out` (cleared first).
pub fn parse<'a>(body: &'a [u8], format: Format, out: &mut Parsed<'a>) -> Result<(), ScrapeError> {
    out.samples.clear();
    out.labels.clear();
    out.metadata.clear();
    out.exemplars = 0;
    let body = std::str::from_utf8(body).map_err(|_| err(0, "body is not valid UTF-8"))?;
    let om = format == Format::OpenMetrics;
    let mut eof = false;
    let mut lines = body.split('\n').enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let n = i + 1;
        let last = lines.peek().is_none();
        if eof {
            if last && line.is_empty() {
                break;
            }
            return Err(err(n, "content after # EOF"));
        }
        if om {
            if line.is_empty() {
                if last {
                    break;
                }
                return Err(err(n, "empty line"));
            }
            if let Some(rest) = line.strip_prefix('#') {
                if rest == " EOF" {
                    eof = true;
                    continue;
                }
                om_meta(rest, n, out)?;
                continue;
            }
            sample(line, n, true, out)?;
        } else {
            let line = line.trim_matches([' ', '\t']);
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('#') {
                text_meta(rest, n, out)?;
                continue;
            }
            sample(line, n, false, out)?;
        }
    }
    if om && !eof {
        return Err(err(0, "OpenMetrics body without # EOF (truncated scrape)"));
    }
    Ok(())
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':'
}
fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}
fn is_label_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}
fn is_label_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Splits a leading metric name off `s`; every delimiter is ASCII so the split is a char boundary.
fn metric_name(s: &str) -> Option<(&str, &str)> {
    let b = s.as_bytes();
    if !b.first().is_some_and(|c| is_name_start(*c)) {
        return None;
    }
    let end = b.iter().position(|c| !is_name_char(*c)).unwrap_or(b.len());
    Some(s.split_at(end))
}

fn label_name(s: &str) -> Option<(&str, &str)> {
    let b = s.as_bytes();
    if !b.first().is_some_and(|c| is_label_start(*c)) {
        return None;
    }
    let end = b.iter().position(|c| !is_label_char(*c)).unwrap_or(b.len());
    Some(s.split_at(end))
}

fn skip_blanks(s: &str) -> &str {
    s.trim_start_matches([' ', '\t'])
}

/// `# HELP`/`# TYPE` in 0.0.4; any other comment is ignored.
fn text_meta<'a>(rest: &'a str, n: usize, out: &mut Parsed<'a>) -> Result<(), ScrapeError> {
    let rest = skip_blanks(rest);
    let (kw, rest) = rest.split_at(rest.find([' ', '\t']).unwrap_or(rest.len()));
    if kw != "HELP" && kw != "TYPE" {
        return Ok(());
    }
    let rest = skip_blanks(rest);
    let Some((name, rest)) = metric_name(rest) else {
        return Err(err(n, "invalid metric name in HELP or TYPE"));
    };
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return Err(err(n, "invalid metric name in HELP or TYPE"));
    }
    let rest = skip_blanks(rest);
    if kw == "HELP" {
        let help = unescape(rest, false);
        meta_entry(out, name).help = help;
    } else {
        let kind = match rest {
            "counter" => MetricType::Counter,
            "gauge" => MetricType::Gauge,
            "histogram" => MetricType::Histogram,
            "summary" => MetricType::Summary,
            "untyped" => MetricType::Unknown,
            _ => return Err(err(n, "invalid metric type")),
        };
        meta_entry(out, name).kind = kind;
    }
    Ok(())
}

/// `# HELP`/`# TYPE`/`# UNIT` in OpenMetrics (single spaces; other comments are invalid).
fn om_meta<'a>(rest: &'a str, n: usize, out: &mut Parsed<'a>) -> Result<(), ScrapeError> {
    let Some(rest) = rest.strip_prefix(' ') else {
        return Err(err(n, "invalid comment"));
    };
    let (kw, rest) = rest.split_at(rest.find(' ').unwrap_or(rest.len()));
    if !matches!(kw, "HELP" | "TYPE" | "UNIT") {
        return Err(err(n, "invalid comment"));
    }
    let rest = rest.strip_prefix(' ').ok_or(err(n, "invalid comment"))?;
    let Some((name, rest)) = metric_name(rest) else {
        return Err(err(n, "invalid metric name in metadata"));
    };
    let text = match rest.strip_prefix(' ') {
        Some(t) => t,
        None if rest.is_empty() && kw != "TYPE" => "",
        None => return Err(err(n, "invalid metadata line")),
    };
    match kw {
        "HELP" => meta_entry(out, name).help = unescape(text, true),
        "UNIT" => meta_entry(out, name).unit = text,
        "TYPE" => {
            let kind = match text {
                "counter" => MetricType::Counter,
                "gauge" => MetricType::Gauge,
                "histogram" => MetricType::Histogram,
                "gaugehistogram" => MetricType::GaugeHistogram,
                "stateset" => MetricType::StateSet,
                "info" => MetricType::Info,
                "summary" => MetricType::Summary,
                "unknown" => MetricType::Unknown,
                _ => return Err(err(n, "invalid metric type")),
            };
            meta_entry(out, name).kind = kind;
        }
        _ => return Err(err(n, "invalid comment")),
    }
    Ok(())
}

/// The metadata entry of `family`: families' HELP/TYPE/UNIT lines are adjacent, so only the last
/// entry is compared.
fn meta_entry<'a, 'p>(out: &'p mut Parsed<'a>, family: &'a str) -> &'p mut Meta<'a> {
    if out.metadata.last().is_none_or(|m| m.family != family) {
        out.metadata.push(Meta {
            family,
            kind: MetricType::Unknown,
            help: Cow::Borrowed(""),
            unit: "",
        });
    }
    let i = out.metadata.len() - 1;
    &mut out.metadata[i]
}

/// HELP text escapes: `\\` and `\n` (0.0.4), plus `\"` (OpenMetrics). Unknown escapes are kept
/// verbatim, as Prometheus does.
fn unescape(s: &str, quote: bool) -> Cow<'_, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let mut o = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            o.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => o.push('\\'),
            Some('n') => o.push('\n'),
            Some('"') if quote => o.push('"'),
            Some(other) => {
                o.push('\\');
                o.push(other);
            }
            None => o.push('\\'),
        }
    }
    Cow::Owned(o)
}

/// Parses a `{...}` label block starting at `s` (which begins with `{`); returns the rest after `}`.
fn label_block<'a>(
    s: &'a str,
    n: usize,
    om: bool,
    out: &mut Vec<(&'a str, Cow<'a, str>)>,
) -> Result<&'a str, ScrapeError> {
    let mut s = &s[1..];
    loop {
        if !om {
            s = skip_blanks(s);
        }
        if let Some(r) = s.strip_prefix('}') {
            return Ok(r);
        }
        let Some((name, r)) = label_name(s) else {
            return Err(err(n, "invalid label name"));
        };
        s = r;
        if !om {
            s = skip_blanks(s);
        }
        s = s.strip_prefix('=').ok_or(err(n, "expected '=' after label name"))?;
        if !om {
            s = skip_blanks(s);
        }
        s = s.strip_prefix('"').ok_or(err(n, "expected '\"' to open label value"))?;
        let (value, r) = label_value(s).ok_or(err(n, "unterminated label value"))?;
        out.push((name, value));
        s = r;
        if !om {
            s = skip_blanks(s);
        }
        if let Some(r) = s.strip_prefix(',') {
            s = r;
        } else if !s.starts_with('}') {
            return Err(err(n, "expected ',' or '}' after label value"));
        }
    }
}

/// A label value up to its closing quote (escapes `\\`, `\"`, `\n`); returns the rest after it.
fn label_value(s: &str) -> Option<(Cow<'_, str>, &str)> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut escaped = false;
    while i < b.len() {
        match b[i] {
            b'"' => break,
            b'\\' => {
                escaped = true;
                i += 2;
            }
            b'\n' => return None,
            _ => i += 1,
        }
    }
    if i >= b.len() {
        return None;
    }
    let raw = &s[..i];
    let v = if escaped {
        unescape(raw, true)
    } else {
        Cow::Borrowed(raw)
    };
    Some((v, &s[i + 1..]))
}

/// A sample value as Go's `strconv.ParseFloat` reads the usual forms: decimals, exponents,
/// `NaN`, `+Inf`, `-Inf` (any case).
fn float(s: &str) -> Option<f64> {
    if s.is_empty() || s.contains('_') {
        return None;
    }
    s.parse::<f64>().ok()
}

fn sample<'a>(line: &'a str, n: usize, om: bool, out: &mut Parsed<'a>) -> Result<(), ScrapeError> {
    let Some((name, mut s)) = metric_name(line) else {
        return Err(err(n, "invalid metric name"));
    };
    let start = out.labels.len() as u32;
    if !om {
        s = skip_blanks(s);
    }
    if s.starts_with('{') {
        s = label_block(s, n, om, &mut out.labels)?;
    }
    let series = &line[..line.len() - s.len()];
    // Value.
    s = if om {
        s.strip_prefix(' ').ok_or(err(n, "expected a space before the value"))?
    } else {
        skip_blanks(s)
    };
    let end = s.find([' ', '\t']).unwrap_or(s.len());
    let value = float(&s[..end]).ok_or(err(n, "invalid value"))?;
    s = &s[end..];
    let mut timestamp_ms = None;
    if om {
        if let Some(r) = s.strip_prefix(' ') {
            s = r;
            if !s.starts_with('#') {
                let end = s.find(' ').unwrap_or(s.len());
                let ts = float(&s[..end])
                    .filter(|t| t.is_finite())
                    .ok_or(err(n, "invalid timestamp"))?;
                timestamp_ms = Some((ts * 1000.0).round() as i64);
                s = &s[end..];
                s = match s.strip_prefix(' ') {
                    Some(r) if r.starts_with('#') => r,
                    Some(_) => return Err(err(n, "unexpected text after timestamp")),
                    None if s.is_empty() => s,
                    None => return Err(err(n, "unexpected text after timestamp")),
                };
            }
            if !s.is_empty() {
                exemplar(s, n)?;
                out.exemplars += 1;
            }
        } else if !s.is_empty() {
            return Err(err(n, "unexpected text after value"));
        }
    } else {
        s = skip_blanks(s);
        if !s.is_empty() {
            let end = s.find([' ', '\t']).unwrap_or(s.len());
            let ts = s[..end].parse::<i64>().map_err(|_| err(n, "invalid timestamp"))?;
            timestamp_ms = Some(ts);
            if !skip_blanks(&s[end..]).is_empty() {
                return Err(err(n, "unexpected text after timestamp"));
            }
        }
    }
    out.samples.push(Sample {
        name,
        series,
        labels: start..out.labels.len() as u32,
        value,
        timestamp_ms,
    });
    Ok(())
}

/// Checks an exemplar (`# {labels} value [timestamp]`) for syntax only: it is counted, not stored.
fn exemplar(s: &str, n: usize) -> Result<(), ScrapeError> {
    let s = s.strip_prefix("# ").ok_or(err(n, "invalid exemplar"))?;
    if !s.starts_with('{') {
        return Err(err(n, "invalid exemplar"));
    }
    let mut scratch = Vec::new();
    let s = label_block(s, n, true, &mut scratch)?;
    let s = s.strip_prefix(' ').ok_or(err(n, "invalid exemplar"))?;
    let mut parts = s.split(' ');
    float(parts.next().unwrap_or("")).ok_or(err(n, "invalid exemplar value"))?;
    if let Some(ts) = parts.next() {
        float(ts).ok_or(err(n, "invalid exemplar timestamp"))?;
    }
    if parts.next().is_some() {
        return Err(err(n, "unexpected text after exemplar"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
