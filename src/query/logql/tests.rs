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

/// A deterministic generator (splitmix64) for the data-driven checks below.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const S: i64 = 1_000_000_000;

/// (app, ts, line) of generated entries: three apps, times over 10 minutes (with repeats), lines
/// `v=<value> n=<int>` where the value is an integer when `ints`, else a fraction.
fn gen_entries(seed: u64, ints: bool) -> Vec<(String, i64, String)> {
    let mut g = Gen(seed);
    (0..1500)
        .map(|_| {
            let app = ["a", "b", "c"][g.below(3) as usize].to_string();
            let ts = 1_000 * S + g.below(600) as i64 * S + g.below(3) as i64 * (S / 2);
            let v = if ints {
                g.below(1000).to_string()
            } else {
                format!("{}.{}", g.below(100), g.below(1000))
            };
            (
                app,
                ts,
                format!("v={v} n={} {}", g.below(100), "x".repeat(g.below(40) as usize)),
            )
        })
        .collect()
}

/// Reduces a window's (ts, line) entries to a value.
type Agg<'a> = &'a dyn Fn(&[(i64, &str)]) -> f64;

/// The naive definition of a range aggregation grouped by `app`: for every step `t`, each app's
/// entries with `t - range < ts <= t` that `keep` accepts, reduced by `agg`.
fn naive(
    entries: &[(String, i64, String)],
    steps: &[i64],
    range: i64,
    keep: &dyn Fn(&str) -> bool,
    agg: Agg<'_>,
) -> Vec<Vec<(String, f64)>> {
    steps
        .iter()
        .map(|&t| {
            let mut out = Vec::new();
            for app in ["a", "b", "c"] {
                let mut w: Vec<(i64, &str)> = entries
                    .iter()
                    .filter(|(a, ts, l)| a == app && *ts > t - range && *ts <= t && keep(l))
                    .map(|(_, ts, l)| (*ts, l.as_str()))
                    .collect();
                w.sort_by_key(|x| x.0);
                if !w.is_empty() {
                    out.push((app.to_string(), agg(&w)));
                }
            }
            out
        })
        .collect()
}

fn value_of(line: &str) -> f64 {
    line.split(' ')
        .find_map(|f| f.strip_prefix("v="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Evaluates `q` (grouped by `app`) over the generated entries at `steps` and compares it with
/// the naive definition, exactly or, for sums of fractions, to 1e-9 relative.
fn check_windows(
    q: &str,
    entries: &[(String, i64, String)],
    steps: &[i64],
    range: i64,
    keep: &dyn Fn(&str) -> bool,
    agg: Agg<'_>,
    exact: bool,
) {
    let mut src = MemSource::new();
    for (i, (app, ts, line)) in entries.iter().enumerate() {
        let level = if i % 3 == 0 { "error" } else { "info" };
        src.push(
            &pairs(&[("app", app), ("pod", &format!("p{}", i % 2))]),
            *ts,
            line,
            pairs(&[("detected_level", level)]),
        );
    }
    let ast::Expr::Metric(e) = parser::parse(q).unwrap() else {
        panic!("not a metric query: {q}")
    };
    let ctx = eval::Ctx {
        src: &src,
        steps: steps.to_vec(),
    };
    let eval::StepVal::Vector(got) = eval::eval_metric(&ctx, &e).unwrap() else {
        panic!("scalar from {q}")
    };
    let want = naive(entries, steps, range, keep, agg);
    assert_eq!(got.len(), want.len(), "{q}");
    for ((t, g), w) in steps.iter().zip(got).zip(want) {
        let mut g: Vec<(String, f64)> = g
            .into_iter()
            .map(|(l, v)| {
                (
                    l.iter()
                        .find(|(k, _)| k == "app")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default(),
                    v,
                )
            })
            .collect();
        g.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(g.len(), w.len(), "{q} at {t}: {g:?} vs {w:?}");
        for ((ga, gv), (wa, wv)) in g.iter().zip(&w) {
            assert_eq!(ga, wa, "{q} at {t}");
            if exact {
                assert_eq!(gv.to_bits(), wv.to_bits(), "{q} at {t} app {ga}: {gv} vs {wv}");
            } else {
                assert!(
                    (gv - wv).abs() <= 1e-9 * wv.abs().max(1.0),
                    "{q} at {t} app {ga}: {gv} vs {wv}"
                );
            }
        }
    }
}

#[test]
fn range_windows_match_the_naive_definition() {
    let all: &dyn Fn(&str) -> bool = &|_| true;
    let count: Agg<'_> = &|w| w.len() as f64;
    let bytes: Agg<'_> = &|w| w.iter().map(|x| x.1.len() as f64).sum();
    let sum: Agg<'_> = &|w| w.iter().map(|x| value_of(x.1)).sum();
    let max: Agg<'_> = &|w| w.iter().map(|x| value_of(x.1)).fold(f64::MIN, f64::max);
    let q90: Agg<'_> = &|w| {
        let mut v: Vec<f64> = w.iter().map(|x| value_of(x.1)).collect();
        v.sort_by(f64::total_cmp);
        let rank = 0.9 * (v.len() - 1) as f64;
        let (lo, hi) = (rank.floor() as usize, (rank.floor() as usize + 1).min(v.len() - 1));
        v[lo] * (1.0 - (rank - rank.floor())) + v[hi] * (rank - rank.floor())
    };
    let seven: &dyn Fn(&str) -> bool = &|l| l.contains('7');
    // (range s, step s): windows overlapping many steps, a range that is no multiple of the step,
    // and steps longer than the range (gaps).
    for (range, step) in [(300, 14), (50, 7), (5, 13), (60, 60)] {
        let steps: Vec<i64> = (0..(700 / step)).map(|i| 1_000 * S + i * step * S).collect();
        let r = range * S;
        for ints in [true, false] {
            let es = gen_entries(range as u64 * 31 + u64::from(ints), ints);
            let exact_sum = ints;
            check_windows(
                &format!(r#"sum by (app) (count_over_time({{app=~".+"}}[{range}s]))"#),
                &es,
                &steps,
                r,
                all,
                count,
                true,
            );
            let rate: Agg<'_> = &|w| w.len() as f64 / range as f64;
            check_windows(
                &format!(r#"sum by (app) (rate({{app=~".+"}}[{range}s]))"#),
                &es,
                &steps,
                r,
                all,
                rate,
                true,
            );
            check_windows(
                &format!(r#"sum by (app) (bytes_over_time({{app=~".+"}} |= "7" [{range}s]))"#),
                &es,
                &steps,
                r,
                seven,
                bytes,
                true,
            );
            // Grouped at the range aggregation: one series per app, summed in time order.
            check_windows(
                &format!(
                    r#"sum by (app) (sum_over_time({{app=~".+"}} | logfmt | unwrap v | __error__="" [{range}s]))"#
                ),
                &es,
                &steps,
                r,
                all,
                sum,
                exact_sum,
            );
            check_windows(
                &format!(r#"max_over_time({{app=~".+"}} | logfmt | unwrap v [{range}s]) by (app)"#),
                &es,
                &steps,
                r,
                all,
                max,
                true,
            );
            check_windows(
                &format!(r#"quantile_over_time(0.9, {{app=~".+"}} | logfmt | unwrap v [{range}s]) by (app)"#),
                &es,
                &steps,
                r,
                all,
                q90,
                true,
            );
        }
    }
}

/// The store's answers through the merging iterator, one entry at a time in merge order: what
/// `StoreSource` did before it read blocks unmerged, and what the trait's default `select_first`
/// and `visit_lens` then compute.
struct Merged<'a>(StoreSource<'a>);

impl LogSource for Merged<'_> {
    fn select(&self, m: &[crate::model::Matcher], s: i64, e: i64) -> Result<Vec<SourceStream>, SourceError> {
        self.0.select(m, s, e)
    }
    fn visit_needles(
        &self,
        m: &[crate::model::Matcher],
        s: i64,
        e: i64,
        needles: &[String],
        f: &mut dyn FnMut(&crate::model::Labels, &[EntryRef<'_>]),
    ) -> Result<(), SourceError> {
        let req = crate::storage::logs::SelectRequest {
            tenant: self.0.tenant.to_string(),
            matchers: m.to_vec(),
            start: s,
            end: e,
            direction: crate::storage::logs::Direction::Forward,
            limit: 0,
            line_contains: needles.to_vec(),
        };
        for it in self
            .0
            .reader
            .select(&req)
            .map_err(|e| SourceError::Store(e.to_string()))?
        {
            let se = it.map_err(|e| SourceError::Store(e.to_string()))?;
            let en = EntryRef {
                ts_ns: se.entry.ts,
                line: &se.entry.line,
                structured_metadata: &se.entry.metadata,
            };
            f(&se.labels, std::slice::from_ref(&en));
        }
        Ok(())
    }
}

fn flat(streams: Vec<eval::OutStream>) -> Vec<(pipeline::Pairs, i64, String)> {
    streams
        .into_iter()
        .flat_map(|s| s.entries.into_iter().map(move |e| (s.labels.clone(), e.ts, e.line)))
        .collect()
}

/// A metric query's vectors at 60 steps 10 s apart from `start`, each sorted by labels.
fn metric_steps(src: &dyn LogSource, e: &ast::MetricExpr, start: i64) -> Vec<Vec<(pipeline::Pairs, f64)>> {
    let ctx = eval::Ctx {
        src,
        steps: (0..60).map(|i| start + i * 10 * S).collect(),
    };
    match eval::eval_metric(&ctx, e).unwrap() {
        eval::StepVal::Vector(v) => v
            .into_iter()
            .map(|mut x| {
                x.sort_by(|a, b| a.0.cmp(&b.0));
                x
            })
            .collect(),
        eval::StepVal::Scalar(_) => panic!("scalar"),
    }
}

/// A log query and a metric query over a real store (small blocks, many of them, heads left in
/// memory, timestamps shared across streams) give through `StoreSource`'s block reads exactly
/// what the merging iterator gives.
fn check_store_source(src: &StoreSource<'_>, q: &str, start: i64, end: i64) {
    let merged = Merged(StoreSource {
        reader: src.reader,
        tenant: src.tenant,
    });
    match parser::parse(q).unwrap() {
        ast::Expr::Log(e) => {
            for forward in [true, false] {
                for limit in [1, 7, 100, 5000] {
                    let p = LogParams {
                        start,
                        end,
                        limit,
                        forward,
                        categorize: false,
                        interval: 0,
                    };
                    let got = flat(eval_log(src, &e, p).unwrap());
                    let want = flat(eval_log(&merged, &e, p).unwrap());
                    assert_eq!(got, want, "{q} forward={forward} limit={limit}");
                }
            }
        }
        ast::Expr::Metric(e) => {
            assert_eq!(metric_steps(src, &e, start), metric_steps(&merged, &e, start), "{q}");
        }
    }
}

/// Pushes round `round` of the store tests: 8 entries to each of `apps`, at whole seconds from
/// `base` (so streams share timestamps, the merge order's tie-break), random levels and numbers.
fn push_round(store: &crate::storage::logs::LogStore, apps: &[&str], round: i64, base: i64, g: &mut Gen) {
    use crate::storage::logs::{PushEntry, PushStream, StreamKey};
    for app in apps {
        let lines: Vec<String> = (0..8)
            .map(|i| {
                format!(
                    "level={} n={} round={round} i={i}",
                    ["info", "error"][g.below(2) as usize],
                    g.below(100)
                )
            })
            .collect();
        let metas: Vec<[(&str, &str); 1]> = (0..8)
            .map(|i| [("detected_level", if i % 3 == 0 { "error" } else { "info" })])
            .collect();
        let entries: Vec<PushEntry<'_>> = (0..8)
            .map(|i| PushEntry {
                ts: base + (round * 8 + i as i64 / 2) * S,
                line: lines[i].as_bytes(),
                meta: &metas[i],
            })
            .collect();
        let labels = crate::model::Labels::from_pairs([("app", *app), ("service_name", *app)]).unwrap();
        let alias = format!("{{app=\"{app}\"}}");
        store
            .append(
                "fake",
                &[PushStream {
                    key: StreamKey::New {
                        alias: alias.as_bytes(),
                        labels,
                    },
                    entries: &entries,
                }],
            )
            .unwrap();
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// Queries of the store tests, log and metric.
const STORE_QUERIES: [&str; 11] = [
    r#"{app=~".+"}"#,
    r#"{app=~"a|c"} |= "n=1""#,
    r#"{app=~".+"} | logfmt | n > 90"#,
    r#"{app=~".+"} | logfmt | level="nothing""#,
    r#"sum by (app) (count_over_time({app=~".+"}[30s]))"#,
    r#"bytes_over_time({app=~".+"}[45s])"#,
    r#"count_over_time({app=~".+"} |= "error" [1m])"#,
    r#"sum by (level) (count_over_time({app=~".+"} | logfmt [1m]))"#,
    r#"sum by (app) (rate({app=~".+"} | logfmt | n > 50 [2m]))"#,
    r#"sum by (app) (sum_over_time({app=~".+"} | logfmt | unwrap n [1m]))"#,
    r#"quantile_over_time(0.5, {app=~".+"} | logfmt | unwrap n [1m]) by (level)"#,
];

#[test]
fn store_source_matches_the_merged_iterator() {
    use crate::storage::logs::{LogStore, LogsOptions};
    let dir = tempfile::tempdir().unwrap();
    let mut opts = LogsOptions::new(dir.path());
    opts.block_size = 600;
    let store = LogStore::open(opts).unwrap();
    let base = now_ns() / S * S - 3600 * S;
    let mut g = Gen(7);
    for round in 0..40 {
        push_round(&store, &["a", "b", "c", "d"], round, base, &mut g);
    }
    let src = StoreSource {
        reader: store.as_ref(),
        tenant: "fake",
    };
    let (start, end) = (base, base + 400 * S);
    for q in STORE_QUERIES {
        check_store_source(&src, q, start, end);
    }
    store.close().unwrap();
}

/// A store that moves idle streams to index files (every 10 rounds here) answers every query as
/// one that keeps them: a stream that comes back after it was spilled is a second stream of the
/// same label set, and log and metric results merge the two (one output stream or series).
#[test]
fn spilled_streams_answer_like_held_ones() {
    use crate::storage::logs::{LogStore, LogsOptions};
    let open = |dir: &std::path::Path, spill: bool| {
        let mut opts = LogsOptions::new(dir);
        opts.block_size = 600;
        opts.chunk_idle_period = std::time::Duration::ZERO;
        opts.spill_streams = if spill { 1 } else { usize::MAX };
        opts.spill_interval = std::time::Duration::from_secs(if spill { 0 } else { 1 << 40 });
        LogStore::open(opts).unwrap()
    };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (held, spilled) = (open(d1.path(), false), open(d2.path(), true));
    let base = now_ns() / S * S - 3600 * S;
    for store in [&held, &spilled] {
        let mut g = Gen(11);
        for round in 0..40 {
            // d stops at round 15: it stays in its file.
            let apps: &[&str] = if round < 15 {
                &["a", "b", "c", "d"]
            } else {
                &["a", "b", "c"]
            };
            push_round(store, apps, round, base, &mut g);
            if round % 10 == 9 {
                store.maintain(now_ns()).unwrap();
            }
        }
    }
    let n = |s: &LogStore| s.stats().streams_spilled.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!((n(&held), n(&spilled)), (0, 14), "a, b, c spilled 4 times, d twice");
    let (a, b) = (
        StoreSource {
            reader: held.as_ref(),
            tenant: "fake",
        },
        StoreSource {
            reader: spilled.as_ref(),
            tenant: "fake",
        },
    );
    let (start, end) = (base, base + 400 * S);
    let mut log_streams = 0;
    for q in STORE_QUERIES {
        match parser::parse(q).unwrap() {
            ast::Expr::Log(e) => {
                for (forward, limit) in [(true, 7), (false, 100), (true, 5000)] {
                    let p = LogParams {
                        start,
                        end,
                        limit,
                        forward,
                        categorize: false,
                        interval: 0,
                    };
                    let out = |s: &StoreSource<'_>| {
                        eval_log(s, &e, p)
                            .unwrap()
                            .into_iter()
                            .map(|s| {
                                (
                                    s.labels,
                                    s.entries.into_iter().map(|e| (e.ts, e.line)).collect::<Vec<_>>(),
                                )
                            })
                            .collect::<Vec<_>>()
                    };
                    let want = out(&a);
                    log_streams += want.len();
                    assert_eq!(out(&b), want, "{q} forward={forward} limit={limit}");
                }
            }
            ast::Expr::Metric(e) => {
                assert_eq!(metric_steps(&b, &e, start), metric_steps(&a, &e, start), "{q}");
            }
        }
    }
    assert!(log_streams > 12, "the log queries returned {log_streams} streams");
    held.close().unwrap();
    spilled.close().unwrap();
}
