//! Unit tests for the LogQL engine: data-driven, one `check` helper per feature. The
//! end-to-end proof is `tests/conformance.rs` (the recorded Loki 3.4.6 corpus).

use super::eval::{LogParams, eval_log};
use super::source::MemSource;
use super::template::{Scope, Template};
use super::*;

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Parses `q`; `want` is `Ok(())` or the exact error text Loki answers.
fn check_parse(q: &str, want: Result<(), &str>) {
    let got = parser::parse(q).map(|_| ()).map_err(|e| e.text);
    assert_eq!(got, want.map_err(str::to_string), "query {q}");
}

#[test]
fn parse_errors_match_loki() {
    check_parse(r#"{app="api"} |= "x" | json | level="error""#, Ok(()));
    check_parse(
        r#"sum by (app) (rate({app="a"}[5m])) / on (app) group_left sum(rate({app="a"}[1m]))"#,
        Ok(()),
    );
    check_parse(
        r#"{app="api""#,
        Err("parse error at line 1, col 11: syntax error: unexpected $end, expecting } or ,"),
    );
    check_parse(
        r#"{a=""}"#,
        Err(
            "parse error : queries require at least one regexp or equality matcher that does not have an empty-compatible value. For instance, app=~\".*\" does not meet this requirement, but app=~\".+\" will",
        ),
    );
    check_parse(
        r#"count_over_time({app="web"}[5x])"#,
        Err(r#"parse error at line 0, col 28: unknown unit "x" in duration "5x""#),
    );
    check_parse(
        r#"-rate({app="web"}[5m])"#,
        Err("parse error at line 1, col 2: syntax error: unexpected RATE, expecting NUMBER"),
    );
    check_parse(
        r#"{app="web"} | json foo="#,
        Err("parse error at line 1, col 24: syntax error: unexpected $end, expecting STRING"),
    );
    check_parse(
        r#"sum_over_time({app="a"} | json | unwrap x [5m]) by (pod)"#,
        Err("parse error : grouping not allowed for sum_over_time aggregation"),
    );
    check_parse(
        r#"{app="web"} |~ "(unclosed""#,
        Err("parse error : stage '|~ \"(unclosed\"' : error parsing regexp: missing closing ): `(unclosed`"),
    );
    check_parse(
        "0x10",
        Err(r#"parse error : unable to parse literal as a float: strconv.ParseFloat: parsing "0x10": invalid syntax"#),
    );
}

/// Runs a log query over one stream holding `lines` and returns (line, merged labels) per entry,
/// oldest first.
fn check_log(q: &str, stream: &[(&str, &str)], lines: &[&str], want: &[(&str, &[(&str, &str)])]) {
    let mut src = MemSource::new();
    for (i, l) in lines.iter().enumerate() {
        src.push(&pairs(stream), 1_000 + i as i64, l, Vec::new());
    }
    let ast::Expr::Log(e) = parser::parse(q).unwrap() else {
        panic!("not a log query: {q}")
    };
    let p = LogParams {
        start: 0,
        end: 1_000_000,
        limit: 100,
        forward: true,
        categorize: false,
        interval: 0,
    };
    let mut got: Vec<(i64, String, pipeline::Pairs)> = eval_log(&src, &e, p)
        .unwrap()
        .into_iter()
        .flat_map(|s| s.entries.into_iter().map(move |en| (en.ts, en.line, s.labels.clone())))
        .collect();
    got.sort_by_key(|x| x.0);
    let got: Vec<(String, pipeline::Pairs)> = got.into_iter().map(|(_, l, p)| (l, p)).collect();
    let want: Vec<(String, pipeline::Pairs)> = want
        .iter()
        .map(|(l, p)| {
            let mut v = pairs(p);
            v.sort();
            (l.to_string(), v)
        })
        .collect();
    assert_eq!(got, want, "query {q}");
}

#[test]
fn pipeline_stages() {
    let s = &[("app", "a")];
    // `detected_level` and `service_name` come from the push path.
    let base = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        let mut v = vec![("app", "a"), ("service_name", "a"), ("detected_level", "unknown")];
        v.extend_from_slice(extra);
        v
    };
    check_log(
        r#"{app="a"} |= "b" or "c" != "x""#,
        s,
        &["ab", "ac", "bx", "d"],
        &[("ab", &base(&[])), ("ac", &base(&[]))],
    );
    check_log(
        r#"{app="a"} | logfmt | k > 2"#,
        s,
        &["k=1", "k=3 k2=x"],
        &[("k=3 k2=x", &base(&[("k", "3"), ("k2", "x")]))],
    );
    // Parsed labels colliding with stream labels get `_extracted`.
    check_log(
        r#"{app="a"} | json | line_format "{{.app_extracted}}-{{.n_m}}""#,
        s,
        &[r#"{"app":"x","n":{"m":1}}"#],
        &[("x-1", &base(&[("app_extracted", "x"), ("n_m", "1")]))],
    );
    check_log(
        r#"{app="a"} | pattern "<m> <p>" | drop p"#,
        s,
        &["GET /x"],
        &[("GET /x", &base(&[("m", "GET")]))],
    );
    check_log(
        r#"{app="a"} | regexp "(?P<n>\\d+)" | n >= 10"#,
        s,
        &["a 5", "b 12"],
        &[("b 12", &base(&[("n", "12")]))],
    );
    check_log(
        r#"{app="a"} | decolorize"#,
        s,
        &["\u{1b}[31mred\u{1b}[0m"],
        &[("red", &base(&[]))],
    );
    // A numeric filter on a non-number sets `__error__` and keeps the line.
    check_log(
        r#"{app="a"} | logfmt | k > 1"#,
        s,
        &["k=x"],
        &[(
            "k=x",
            &base(&[
                ("k", "x"),
                ("__error__", "LabelFilterErr"),
                (
                    "__error_details__",
                    r#"strconv.ParseFloat: parsing "x": invalid syntax"#,
                ),
            ]),
        )],
    );
}

struct TestScope(Vec<(String, String)>);

impl Scope for TestScope {
    fn label(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    fn line(&self) -> &str {
        "the line"
    }
    fn ts_ns(&self) -> i64 {
        1_795_168_800_332_000_000
    }
}

fn check_template(t: &str, labels: &[(&str, &str)], want: Result<&str, &str>) {
    let tmpl = Template::parse(t, "line").unwrap();
    let mut out = String::new();
    let got = tmpl.render(&TestScope(pairs(labels)), &mut out).map(|_| out);
    assert_eq!(got, want.map(str::to_string).map_err(str::to_string), "template {t}");
}

#[test]
fn templates() {
    check_template("{{.a | ToUpper}} {{ToLower .b}}", &[("a", "x"), ("b", "Y")], Ok("X y"));
    check_template("[{{ .missing }}]{{ .nope | default \"d\" }}", &[], Ok("[]d"));
    check_template("{{ __timestamp__ }}", &[], Ok("2026-11-20 10:00:00.332 +0000 UTC"));
    check_template(r#"{{ __timestamp__ | date "15:04:05.000" }}"#, &[], Ok("10:00:00.332"));
    check_template(
        "{{ div .s 100 }}xx {{ float64 .s }} {{ bytes .b }}",
        &[("s", "503"), ("b", "2MB")],
        Ok("5xx 503 2e+06"),
    );
    check_template("{{- .a -}} | {{- .a -}}", &[("a", "v")], Ok("v|v"));
    check_template(r#"{{ printf "%q" __line__ }}"#, &[], Ok(r#""the line""#));
    check_template(
        r#"{{ .a | regexReplaceAll "(" "x" }}"#,
        &[("a", "v")],
        Err(
            "template: line:1:8: executing \"line\" at <regexReplaceAll \"(\" \"x\">: error calling regexReplaceAll: error parsing regexp: missing closing ): `(`",
        ),
    );
    assert_eq!(
        Template::parse("{{ nosuch .x }}", "line").err().as_deref(),
        Some("function \"nosuch\" not defined")
    );
}

fn check_pattern(p: &str, line: &str, test: bool, caps: &[(&str, &str)]) {
    let pat = pattern::Pattern::parse(p, false).unwrap();
    assert_eq!(pat.test(line.as_bytes()), test, "test {p} on {line}");
    let mut got = Vec::new();
    pat.captures(line.as_bytes(), |n, v| {
        got.push((n.to_string(), String::from_utf8_lossy(v).into_owned()))
    });
    assert_eq!(got, pairs(caps), "captures {p} on {line}");
}

#[test]
fn patterns() {
    check_pattern("<ip> - <u>", "1.2.3.4 - bob", true, &[("ip", "1.2.3.4"), ("u", "bob")]);
    check_pattern("<a> x <b>", "1 y 2", false, &[("a", "1 y 2")]);
    check_pattern("[<l>] <_>", "[INFO] rest", true, &[("l", "INFO")]);
    assert!(pattern::Pattern::parse("<_>", false).is_err());
    assert!(pattern::Pattern::parse("<a><b>", false).is_err());
}

#[test]
fn parameter_parsing() {
    let check = |s: &str, want: i64| assert_eq!(parse_time(s, "t").unwrap(), want, "{s}");
    check("1795171000", 1_795_171_000_000_000_000);
    check("1795171000.123", 1_795_171_000_123_000_000);
    check("1795168800123456789", 1_795_168_800_123_456_789);
    check("2026-11-20T10:30:00Z", 1_795_170_600_000_000_000);
    let dur = |s: &str, want: i64| assert_eq!(parser::parse_duration(s).unwrap(), want, "{s}");
    dur("1h30m", 5_400_000_000_000);
    dur("250ms", 250_000_000);
    dur("1.5s", 1_500_000_000);
    assert_eq!(parser::duration_seconds(1_844_000_000), 1.8439999999999999);
    assert_eq!(pipeline::go_parse_float("1_000").unwrap(), 1000.0);
    assert_eq!(pipeline::go_parse_float("0x1p-2").unwrap(), 0.25);
    assert!(pipeline::go_parse_float("abc").is_err());
}
