//! Text forms shared by the wire decoders and the API: the Prometheus label-set text
//! `{a="b", c="d"}` that Loki push uses for stream labels, and RFC 3339 timestamps.

/// Parses `{name="value", ...}` (Loki's `syntax.ParseLabels`: only `=` matchers, values in double
/// quotes, single quotes or backticks with Go escapes, a trailing comma allowed). Returns the pairs
/// in the order written; the error follows Loki's `parse error at line 1, col N: ...` form.
pub fn parse_label_text(s: &str) -> Result<Vec<(String, String)>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let err = |i: usize, msg: &str| format!("parse error at line 1, col {}: {msg}", i + 1);
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    if b.get(i) != Some(&b'{') {
        return Err(err(i, "syntax error: unexpected character, expecting {"));
    }
    i += 1;
    let mut out = Vec::new();
    loop {
        skip_ws(&mut i);
        match b.get(i) {
            Some(b'}') => {
                i += 1;
                break;
            }
            None => return Err(err(i, "syntax error: unexpected $end, expecting } or ,")),
            _ => {}
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if start == i || b[start].is_ascii_digit() {
            return Err(err(start, "syntax error: unexpected character, expecting IDENTIFIER"));
        }
        let name = &s[start..i];
        skip_ws(&mut i);
        if b.get(i) != Some(&b'=') || matches!(b.get(i + 1), Some(b'~')) {
            return Err(err(i, "syntax error: unexpected character, expecting ="));
        }
        i += 1;
        skip_ws(&mut i);
        let (value, next) = parse_quoted(s, i).map_err(|(at, m)| err(at, &m))?;
        i = next;
        out.push((name.to_string(), value));
        skip_ws(&mut i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => {}
            None => return Err(err(i, "syntax error: unexpected $end, expecting } or ,")),
            _ => return Err(err(i, "syntax error: unexpected character, expecting } or ,")),
        }
    }
    skip_ws(&mut i);
    if i != b.len() {
        return Err(err(i, "syntax error: unexpected input after }"));
    }
    Ok(out)
}

/// A Go string literal at `i`: "..." with escapes, '...' or `...`. Returns the value and the index
/// after the closing quote.
fn parse_quoted(s: &str, i: usize) -> Result<(String, usize), (usize, String)> {
    let b = s.as_bytes();
    let q = *b
        .get(i)
        .ok_or((i, "syntax error: unexpected $end, expecting STRING".to_string()))?;
    if q != b'"' && q != b'\'' && q != b'`' {
        return Err((i, "syntax error: unexpected IDENTIFIER, expecting STRING".to_string()));
    }
    let mut out = String::new();
    let mut chars = s[i + 1..].char_indices();
    while let Some((off, c)) = chars.next() {
        if c as u32 == u32::from(q) {
            return Ok((out, i + 1 + off + 1));
        }
        if c == '\\' && q != b'`' {
            let (_, e) = chars.next().ok_or((i, "literal not terminated".to_string()))?;
            match e {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                '\'' => out.push('\''),
                'a' => out.push('\u{7}'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'v' => out.push('\u{b}'),
                'x' | 'u' | 'U' => {
                    let n = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let mut v = 0u32;
                    for _ in 0..n {
                        let (_, h) = chars.next().ok_or((i, "invalid escape".to_string()))?;
                        v = v * 16 + h.to_digit(16).ok_or((i, "invalid escape".to_string()))?;
                    }
                    out.push(char::from_u32(v).ok_or((i, "invalid escape".to_string()))?);
                }
                _ => return Err((i, format!("unknown escape sequence \\{e}"))),
            }
            continue;
        }
        if c == '\n' && q != b'`' {
            return Err((i, "literal not terminated".to_string()));
        }
        out.push(c);
    }
    Err((i, "literal not terminated".to_string()))
}

/// RFC 3339 with an optional fraction (up to ns) and `Z` or `±HH:MM`; returns unix ns.
pub fn parse_rfc3339_ns(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    // Folds the digits in place: `str::parse` per field was 2.6 % of the tailer's path into the
    // store (perf, `cargo bench --bench tailer`), one call per CRI line.
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b.get(r)?
            .iter()
            .try_fold(0i64, |a, &c| c.is_ascii_digit().then(|| a * 10 + i64::from(c - b'0')))
    };
    if b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        for (k, c) in s[start..i].bytes().take(9).enumerate() {
            nanos += i64::from(c - b'0') * 10i64.pow(8 - k as u32);
        }
    }
    let offset_min: i64 = match b.get(i) {
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(c @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let sign = if *c == b'+' { 1 } else { -1 };
            sign * (oh * 60 + om)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// A Go/Prometheus duration (`1h`, `30m`, `1h30m`, `500ms`, `10s`) in ns.
pub fn parse_go_duration_ns(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    if b.is_empty() {
        return None;
    }
    while i < b.len() {
        let start = i;
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
            i += 1;
        }
        let n: f64 = s.get(start..i)?.parse().ok()?;
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let mult: f64 = match &s[ustart..i] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" => 86_400e9,
            "w" => 604_800e9,
            "y" => 31_536_000e9,
            _ => return None,
        };
        total = total.checked_add((n * mult) as i64)?;
    }
    Some(total)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a day count since 1970-01-01, proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`); the inverse of [`days_from_civil`].
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Formats unix ns as RFC 3339 in UTC with the fraction Go's `time.Time.String` would need
/// (`2024-05-01T10:00:00.123Z`), for error messages.
pub fn format_rfc3339_ns(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    if frac != 0 {
        let f = format!("{frac:09}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Prometheus's duration syntax (`model.ParseDuration` plus the API's float seconds): a float number
/// of seconds, or `<int><unit>` pairs with units y, w, d, h, m, s, ms in decreasing order. Returns
/// milliseconds; the error is Prometheus's API text. One parser for the config file, the query API
/// and the promqltest runner.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let bad = || format!("cannot parse {s:?} to a valid duration");
    if let Ok(f) = s.parse::<f64>() {
        let ms = f * 1000.0;
        if !ms.is_finite() || ms > i64::MAX as f64 || ms < i64::MIN as f64 {
            return Err(format!("cannot parse {s:?} to a valid duration. It overflows int64"));
        }
        return Ok(ms.round() as i64);
    }
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(bad());
    }
    let (mut i, mut total, mut last_rank) = (0, 0i64, None::<usize>);
    while i < b.len() {
        let st = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if st == i {
            return Err(bad());
        }
        let n: i64 = s[st..i].parse().map_err(|_| bad())?;
        let us = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        // Rank = position in Prometheus's required order.
        let (rank, mult) = match &s[us..i] {
            "y" => (0, 31_536_000_000),
            "w" => (1, 604_800_000),
            "d" => (2, 86_400_000),
            "h" => (3, 3_600_000),
            "m" => (4, 60_000),
            "s" => (5, 1000),
            "ms" => (6, 1),
            _ => return Err(bad()),
        };
        if last_rank.is_some_and(|l| rank <= l) {
            return Err(bad());
        }
        last_rank = Some(rank);
        total = total.saturating_add(n.saturating_mul(mult));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, want: Result<&[(&str, &str)], &str>) {
        let got = parse_label_text(input);
        match (got, want) {
            (Ok(g), Ok(w)) => {
                let w: Vec<(String, String)> = w.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
                assert_eq!(g, w, "{input}");
            }
            (Err(e), Err(w)) => assert!(e.contains(w), "{input}: {e} lacks {w}"),
            (g, w) => panic!("{input}: got {g:?}, want {w:?}"),
        }
    }

    #[test]
    fn label_text() {
        check(r#"{a="b", c="d"}"#, Ok(&[("a", "b"), ("c", "d")]));
        check(r#"  {app="x",}"#, Ok(&[("app", "x")]));
        check(r#"{}"#, Ok(&[]));
        check(
            r#"{a="q\"uo\ted", b=`raw\n`, c='s'}"#,
            Ok(&[("a", "q\"uo\ted"), ("b", "raw\\n"), ("c", "s")]),
        );
        check(r#"{a="\u00e9"}"#, Ok(&[("a", "é")]));
        check(
            r#"{a=b}"#,
            Err("col 4: syntax error: unexpected IDENTIFIER, expecting STRING"),
        );
        check(r#"{a="b""#, Err("unexpected $end"));
        check(r#"a="b""#, Err("col 1"));
        check(r#"{a=~"b"}"#, Err("expecting ="));
        check(r#"{1a="b"}"#, Err("IDENTIFIER"));
        check(r#"{a="b"} x"#, Err("after }"));
        check(r#"{a="unterminated}"#, Err("not terminated"));
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        assert_eq!(
            parse_rfc3339_ns("2023-11-14T22:13:20.123456789+01:00"),
            Some(1_699_996_400_123_456_789)
        );
        assert_eq!(parse_rfc3339_ns("2023-11-14 22:13:20Z"), None);
        assert_eq!(
            format_rfc3339_ns(1_699_996_400_123_456_789),
            "2023-11-14T21:13:20.123456789Z"
        );
        assert_eq!(format_rfc3339_ns(0), "1970-01-01T00:00:00Z");
    }

    /// `civil_from_days` inverts `days_from_civil` across leap days, centuries and before 1970.
    #[test]
    fn civil_round_trip() {
        for days in (-800_000..800_000).step_by(97).chain(-1..=1) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, i64::from(m), i64::from(d)), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
