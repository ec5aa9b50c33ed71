use super::*;

/// Renders a parse result one line per sample (`name{l="v"} value [ts]`), then metadata lines
/// (`# family type unit=... help=...`) and the exemplar count, or `error: ...`.
fn render(body: &str, format: Format) -> String {
    let mut p = Parsed::default();
    match parse(body.as_bytes(), format, &mut p) {
        Err(e) => format!("error: {e}"),
        Ok(()) => {
            let mut o = String::new();
            for s in &p.samples {
                o.push_str(s.name);
                let ls = p.sample_labels(s);
                if !ls.is_empty() {
                    o.push('{');
                    for (i, (n, v)) in ls.iter().enumerate() {
                        if i > 0 {
                            o.push(',');
                        }
                        o.push_str(&format!("{n}={v:?}"));
                    }
                    o.push('}');
                }
                let v = if s.value.is_nan() {
                    "NaN".to_string()
                } else if s.value == f64::INFINITY {
                    "+Inf".to_string()
                } else if s.value == f64::NEG_INFINITY {
                    "-Inf".to_string()
                } else {
                    s.value.to_string()
                };
                o.push_str(&format!(" {v}"));
                if let Some(t) = s.timestamp_ms {
                    o.push_str(&format!(" @{t}"));
                }
                o.push('\n');
            }
            for m in &p.metadata {
                o.push_str(&format!(
                    "# {} {} unit={} help={:?}\n",
                    m.family,
                    m.kind.as_str(),
                    m.unit,
                    m.help
                ));
            }
            if p.exemplars > 0 {
                o.push_str(&format!("exemplars {}\n", p.exemplars));
            }
            o
        }
    }
}

fn check(format: Format, body: &str, want: &str) {
    let got = render(body, format);
    let want: String = want.lines().map(|l| format!("{}\n", l.trim())).collect();
    let want = if want.starts_with("error:") {
        want.trim_end().to_string()
    } else {
        want
    };
    assert_eq!(got, want, "body:\n{body}");
}

#[test]
fn text_format() {
    use Format::Text;
    check(
        Text,
        "# HELP http_requests_total The total number\\nof \\\\ requests.\n# TYPE http_requests_total counter\nhttp_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\nhttp_requests_total{method=\"post\",code=\"400\"}    3 1395066363000\n",
        "http_requests_total{method=\"post\",code=\"200\"} 1027 @1395066363000
         http_requests_total{method=\"post\",code=\"400\"} 3 @1395066363000
         # http_requests_total counter unit= help=\"The total number\\nof \\\\ requests.\"",
    );
    // Escapes in label values, blanks around labels, a trailing comma, comments, blank lines.
    check(
        Text,
        "\n# just a comment\nmsdos_file_access_time_seconds{path=\"C:\\\\DIR\\\\FILE.TXT\",error=\"Cannot find file:\\n\\\"FILE.TXT\\\"\"} 1.458255915e9\n\n  metric_without_timestamp_and_labels 12.47  \nx { a = \"1\" , } -3\n",
        "msdos_file_access_time_seconds{path=\"C:\\\\DIR\\\\FILE.TXT\",error=\"Cannot find file:\\n\\\"FILE.TXT\\\"\"} 1458255915
         metric_without_timestamp_and_labels 12.47
         x{a=\"1\"} -3",
    );
    check(
        Text,
        "a NaN\nb +Inf\nc -Inf\nd 1e-3\ne -0\nf{} 7 -5\n",
        "a NaN
         b +Inf
         c -Inf
         d 0.001
         e -0
         f 7 @-5",
    );
    check(
        Text,
        "# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 2\ns_count 3\n# TYPE u untyped\nu 1",
        "s{quantile=\"0.5\"} 1
         s_sum 2
         s_count 3
         u 1
         # s summary unit= help=\"\"
         # u unknown unit= help=\"\"",
    );
    check(Text, "1abc 1\n", "error: parse error at line 1: invalid metric name");
    check(
        Text,
        "a{b=\"c} 1\n",
        "error: parse error at line 1: unterminated label value",
    );
    check(
        Text,
        "a{b=c} 1\n",
        "error: parse error at line 1: expected '\"' to open label value",
    );
    check(
        Text,
        "a{0b=\"c\"} 1\n",
        "error: parse error at line 1: invalid label name",
    );
    check(Text, "ok 1\na one\n", "error: parse error at line 2: invalid value");
    check(Text, "a 1 2.5\n", "error: parse error at line 1: invalid timestamp");
    check(
        Text,
        "a 1 2 3\n",
        "error: parse error at line 1: unexpected text after timestamp",
    );
    check(Text, "a\n", "error: parse error at line 1: invalid value");
    check(
        Text,
        "# TYPE a bogus\n",
        "error: parse error at line 1: invalid metric type",
    );
    check(Text, "a 1\n# EOF\n", "a 1");
    check(Text, "a \u{e9}\n", "error: parse error at line 1: invalid value");
}

#[test]
fn openmetrics_format() {
    use Format::OpenMetrics;
    check(
        OpenMetrics,
        "# TYPE foo_seconds counter\n# UNIT foo_seconds seconds\n# HELP foo_seconds Time \\\"spent\\\" \\\\ here\nfoo_seconds_total{a=\"x\\ny\"} 17.5 1520879607.789 # {trace_id=\"oHg5SJYRHA0\"} 9.8 1520879607.789\nfoo_seconds_created 1520430000.123\n# EOF\n",
        "foo_seconds_total{a=\"x\\ny\"} 17.5 @1520879607789
         foo_seconds_created 1520430000.123
         # foo_seconds counter unit=seconds help=\"Time \\\"spent\\\" \\\\ here\"
         exemplars 1",
    );
    check(
        OpenMetrics,
        "# TYPE h histogram\nh_bucket{le=\"1\"} 0 # {id=\"a\"} 0.5\nh_bucket{le=\"+Inf\"} 3\nh_count 3\nh_sum NaN\n# TYPE i info\ni_info{v=\"1\"} 1\n# TYPE g gaugehistogram\ng_gcount -Inf\n# EOF",
        "h_bucket{le=\"1\"} 0
         h_bucket{le=\"+Inf\"} 3
         h_count 3
         h_sum NaN
         i_info{v=\"1\"} 1
         g_gcount -Inf
         # h histogram unit= help=\"\"
         # i info unit= help=\"\"
         # g gaugehistogram unit= help=\"\"
         exemplars 1",
    );
    check(
        OpenMetrics,
        "a 1\n",
        "error: parse error at line 0: OpenMetrics body without # EOF (truncated scrape)",
    );
    check(
        OpenMetrics,
        "a 1\n# EOF\nb 2\n",
        "error: parse error at line 3: content after # EOF",
    );
    check(
        OpenMetrics,
        "a 1\n\n# EOF\n",
        "error: parse error at line 2: empty line",
    );
    check(
        OpenMetrics,
        "# random comment\n# EOF\n",
        "error: parse error at line 1: invalid comment",
    );
    check(
        OpenMetrics,
        "a  1\n# EOF\n",
        "error: parse error at line 1: invalid value",
    );
    check(
        OpenMetrics,
        "a 1 # {x=\"y\"}\n# EOF\n",
        "error: parse error at line 1: invalid exemplar",
    );
    check(
        OpenMetrics,
        "a 1 abc\n# EOF\n",
        "error: parse error at line 1: invalid timestamp",
    );
    check(
        OpenMetrics,
        "# TYPE a untyped\n# EOF\n",
        "error: parse error at line 1: invalid metric type",
    );
}

#[test]
fn content_type_negotiation() {
    use Format::*;
    let cases: &[(Option<&str>, Format, Format)] = &[
        (Some("text/plain; version=0.0.4; charset=utf-8"), OpenMetrics, Text),
        (
            Some("text/plain; version=1.0.0; escaping=underscores"),
            OpenMetrics,
            Text,
        ),
        (
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            Text,
            OpenMetrics,
        ),
        (Some("Application/OpenMetrics-Text;version=0.0.1"), Text, OpenMetrics),
        (Some("application/openmetrics-text,text/plain"), Text, OpenMetrics),
        (None, Text, Text),
        (None, OpenMetrics, OpenMetrics),
        (Some(""), Text, Text),
        (Some("application/json"), Text, Text),
        (Some(";;;"), OpenMetrics, OpenMetrics),
    ];
    for (ct, fallback, want) in cases {
        assert_eq!(format_for(*ct, *fallback), *want, "{ct:?} fallback {fallback:?}");
    }
    assert!(ACCEPT_HEADER.starts_with("application/openmetrics-text;version=1.0.0,"));
}

/// Mangled versions of valid bodies never panic, and whatever parses has consistent ranges.
#[test]
fn garbage_never_panics() {
    let seeds: &[&str] = &[
        "# HELP a x\\ny\n# TYPE a counter\na_total{b=\"c\\\"d\",e=\"\u{e9}\"} 1 2\n",
        "# TYPE f counter\n# UNIT f s\nf_total{a=\"b\"} 1.5 1.25 # {t=\"x\"} 1 2\n# EOF\n",
        "x { a = \"1\" , } NaN\ny +Inf -1\n",
    ];
    let interesting = b"{}=\",# \\\n\t.eE+-0123456789NaInf\xc3\xa9\xff";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut parsed_ok = 0;
    for round in 0..20_000 {
        let mut body = seeds[round % seeds.len()].as_bytes().to_vec();
        for _ in 0..(1 + next() % 4) {
            let at = (next() as usize) % (body.len() + 1);
            match next() % 4 {
                0 if at < body.len() => {
                    body.remove(at);
                }
                1 => body.insert(at, interesting[(next() as usize) % interesting.len()]),
                2 => body.truncate(at),
                _ => {
                    let end = (at + (next() as usize) % 8).min(body.len());
                    let span = body[at..end].to_vec();
                    body.splice(at..at, span);
                }
            }
        }
        for format in [Format::Text, Format::OpenMetrics] {
            let mut p = Parsed::default();
            if parse(&body, format, &mut p).is_ok() {
                parsed_ok += 1;
                for s in &p.samples {
                    assert!(!s.name.is_empty());
                    assert_eq!(p.sample_labels(s).len(), (s.labels.end - s.labels.start) as usize);
                }
            }
        }
    }
    // The mangling must leave some bodies valid, or the loop would only test the error paths.
    assert!(parsed_ok > 1000, "only {parsed_ok} mangled bodies parsed");
}
