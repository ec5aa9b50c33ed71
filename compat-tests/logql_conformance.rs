//! LogQL conformance through the real HTTP API: the recorded Loki 3.4.6 corpus
//! (`../shared/compat/logql`, override with `LOGQL_DIR`) is pushed to the server with
//! `/loki/api/v1/push`, then every case is replayed against `/loki/api/v1/query[_range]` and compared
//! by the corpus README's rules. Prints `logql: N passed, M failed` and the failures by area.
//! Under `CI=true` a missing corpus is a failure, never a silent skip.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;

/// Counts are printed straight to stderr, which the test harness does not capture, so every run
/// shows them.
macro_rules! say {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// Cases passing today through the HTTP API; it only ever rises.
const FLOOR: usize = 862;

fn corpus_dir() -> Option<std::path::PathBuf> {
    let dir = std::env::var("LOGQL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/compat/logql"));
    if dir.join("cases.jsonl").exists() {
        Some(dir)
    } else if std::env::var("CI").as_deref() == Ok("true") {
        panic!("LogQL corpus missing at {} (CI=true)", dir.display());
    } else {
        eprintln!("logql_conformance: skipped, no corpus at {}", dir.display());
        None
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn num_eq(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let p = |s: &str| match s {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse::<f64>().ok(),
    };
    match (p(a), p(b)) {
        (Some(x), Some(y)) => {
            if x.is_nan() && y.is_nan() {
                true
            } else if x.is_infinite() || y.is_infinite() {
                x == y
            } else {
                let d = (x - y).abs();
                d <= 1e-9 * x.abs().max(y.abs()) || d == 0.0
            }
        }
        _ => false,
    }
}

fn key(v: &Value) -> String {
    // Label objects: canonical string with sorted keys.
    let m: BTreeMap<String, String> = v
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    format!("{m:?}")
}

fn cmp_entries(want: &[Value], got: &[Value]) -> Result<(), String> {
    if want.len() != got.len() {
        return Err(format!("entry count want {} got {}", want.len(), got.len()));
    }
    // Entries sharing a timestamp may come in any order: compare groups of equal timestamps.
    let mut i = 0;
    while i < want.len() {
        let ts = &want[i][0];
        let mut j = i;
        while j < want.len() && &want[j][0] == ts {
            j += 1;
        }
        let mut w: Vec<String> = want[i..j].iter().map(|x| x.to_string()).collect();
        let mut g: Vec<String> = got[i..j].iter().map(|x| x.to_string()).collect();
        w.sort();
        g.sort();
        if w != g {
            return Err(format!("entry {i}: want {} got {}", w.join(","), g.join(",")));
        }
        i = j;
    }
    Ok(())
}

fn cmp_data(q: &str, want: &Value, got: &Value) -> Result<(), String> {
    let rt = want["resultType"].as_str().unwrap_or("");
    if got["resultType"].as_str() != Some(rt) {
        return Err(format!("resultType want {rt} got {}", got["resultType"]));
    }
    if want.get("encodingFlags") != got.get("encodingFlags") {
        return Err(format!(
            "encodingFlags want {:?} got {:?}",
            want.get("encodingFlags"),
            got.get("encodingFlags")
        ));
    }
    let empty = vec![];
    match rt {
        "streams" => {
            let w = want["result"].as_array().unwrap_or(&empty);
            let g = got["result"].as_array().unwrap_or(&empty);
            let gm: HashMap<String, &Value> = g.iter().map(|s| (key(&s["stream"]), s)).collect();
            if w.len() != g.len() {
                let wk: Vec<String> = w.iter().map(|s| key(&s["stream"])).collect();
                let missing: Vec<&String> = wk.iter().filter(|k| !gm.contains_key(*k)).take(2).collect();
                let extra: Vec<String> = g
                    .iter()
                    .map(|s| key(&s["stream"]))
                    .filter(|k| !wk.contains(k))
                    .take(2)
                    .collect();
                return Err(format!(
                    "stream count want {} got {}; missing {missing:?} extra {extra:?}",
                    w.len(),
                    g.len()
                ));
            }
            for s in w {
                let k = key(&s["stream"]);
                let Some(gs) = gm.get(&k) else {
                    return Err(format!("missing stream {k}"));
                };
                cmp_entries(
                    s["values"].as_array().unwrap_or(&empty),
                    gs["values"].as_array().unwrap_or(&empty),
                )
                .map_err(|e| format!("stream {k}: {e}"))?;
            }
            Ok(())
        }
        "matrix" | "vector" => {
            let w = want["result"].as_array().unwrap_or(&empty);
            let g = got["result"].as_array().unwrap_or(&empty);
            if w.len() != g.len() {
                return Err(format!(
                    "series count want {} got {}; first want {:?} first got {:?}",
                    w.len(),
                    g.len(),
                    w.first().map(|x| x["metric"].to_string()),
                    g.first().map(|x| x["metric"].to_string())
                ));
            }
            let sorted =
                rt == "vector" && (q.trim_start().starts_with("sort(") || q.trim_start().starts_with("sort_desc("));
            if sorted {
                for (a, b) in w.iter().zip(g) {
                    if !num_eq(
                        a["value"][1].as_str().unwrap_or(""),
                        b["value"][1].as_str().unwrap_or(""),
                    ) {
                        return Err(format!("sort order: want {a} got {b}"));
                    }
                }
            }
            let gm: HashMap<String, &Value> = g.iter().map(|s| (key(&s["metric"]), s)).collect();
            for s in w {
                let k = key(&s["metric"]);
                let Some(gs) = gm.get(&k) else {
                    return Err(format!("missing series {k}"));
                };
                let (wv, gv): (Vec<Value>, Vec<Value>) = if rt == "vector" {
                    (vec![s["value"].clone()], vec![gs["value"].clone()])
                } else {
                    (
                        s["values"].as_array().cloned().unwrap_or_default(),
                        gs["values"].as_array().cloned().unwrap_or_default(),
                    )
                };
                if wv.len() != gv.len() {
                    return Err(format!(
                        "series {k}: {} points want, {} got; want first {:?} got first {:?}",
                        wv.len(),
                        gv.len(),
                        wv.first(),
                        gv.first()
                    ));
                }
                for (a, b) in wv.iter().zip(&gv) {
                    let ta = a[0].as_f64().unwrap_or(-1.0);
                    let tb = b[0].as_f64().unwrap_or(-2.0);
                    if (ta - tb).abs() > 1e-6 || !num_eq(a[1].as_str().unwrap_or(""), b[1].as_str().unwrap_or("")) {
                        return Err(format!("series {k}: want {a} got {b}"));
                    }
                }
            }
            Ok(())
        }
        "scalar" => {
            let (a, b) = (&want["result"], &got["result"]);
            if a[0] != b[0] || !num_eq(a[1].as_str().unwrap_or(""), b[1].as_str().unwrap_or("")) {
                return Err(format!("scalar want {a} got {b}"));
            }
            Ok(())
        }
        _ => Err(format!("unknown resultType {rt}")),
    }
}

fn error_eq(want: &str, got: &str) -> bool {
    if want == got {
        return true;
    }
    // The series named in a SampleExtractionErr varies between runs.
    let strip = |s: &str| -> String {
        match (s.find("for series: '"), s.find("'.\n")) {
            (Some(a), Some(b)) if b > a => format!("{}{}", &s[..a], &s[b..]),
            _ => s.to_string(),
        }
    };
    want.contains("SampleExtractionErr") && strip(want) == strip(got)
}

#[test]
fn logql_conformance_over_http() {
    let Some(dir) = corpus_dir() else { return };
    let tmp = tempdir();
    let server = Server::start(&tmp.path().join("data"), None);
    let input: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("input.json")).unwrap()).unwrap();
    for (i, body) in input["pushes"].as_array().unwrap().iter().enumerate() {
        let r = server.post(
            "/loki/api/v1/push",
            &[("Content-Type", "application/json")],
            serde_json::to_string(body).unwrap().as_bytes(),
        );
        assert_eq!(r.status, 204, "push {i}: {}", r.text());
    }
    let text = std::fs::read_to_string(dir.join("cases.jsonl")).unwrap();
    let (mut pass, mut fail) = (0usize, 0usize);
    let mut by_area: BTreeMap<String, (usize, usize, Vec<String>)> = BTreeMap::new();
    let only = std::env::var("LOGQL_CASE").ok();
    for line in text.lines() {
        let c: Value = serde_json::from_str(line).unwrap();
        let id = c["id"].as_str().unwrap_or("");
        if only.as_ref().is_some_and(|o| !id.contains(o.as_str())) {
            continue;
        }
        let area = c["area"].as_str().unwrap_or("").to_string();
        let q = c["query"].as_str().unwrap_or("");
        let path = if c["kind"] == "range" {
            "/loki/api/v1/query_range"
        } else {
            "/loki/api/v1/query"
        };
        let mut url = format!("{path}?query={}", urlencode(q));
        if let Some(o) = c["params"].as_object() {
            for (k, v) in o {
                url.push_str(&format!("&{}={}", urlencode(k), urlencode(v.as_str().unwrap_or(""))));
            }
        }
        let headers: Vec<(String, String)> = c["headers"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let hdr_refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let r = request(server.addr, "GET", &url, &hdr_refs, &[]);
        let want_status = c["status"].as_u64().unwrap_or(0) as u16;
        let want_ct = c["content_type"].as_str().unwrap_or("");
        let res: Result<(), String> = (|| {
            if r.status != want_status {
                return Err(format!(
                    "status want {want_status} got {} ({})",
                    r.status,
                    r.text().chars().take(200).collect::<String>()
                ));
            }
            let media = |s: &str| s.split(';').next().unwrap_or("").trim().to_string();
            let got_ct = r.header("content-type").unwrap_or("");
            if media(got_ct) != media(want_ct) {
                return Err(format!("content type want {want_ct} got {got_ct}"));
            }
            if media(want_ct) == "text/plain" {
                let w = c["response"]["error_text"].as_str().unwrap_or("");
                let t = r.text();
                let t = t.strip_suffix('\n').unwrap_or(&t);
                if error_eq(w, t) {
                    Ok(())
                } else {
                    Err(format!("error text want {w:?} got {t:?}"))
                }
            } else {
                cmp_data(q, &c["response"]["data"], &r.json()["data"])
            }
        })();
        let e = by_area.entry(area).or_default();
        match res {
            Ok(()) => {
                pass += 1;
                e.0 += 1;
            }
            Err(msg) => {
                fail += 1;
                e.1 += 1;
                e.2.push(format!("{id} `{q}`: {}", msg.chars().take(600).collect::<String>()));
            }
        }
    }
    say!("logql: {pass} passed, {fail} failed");
    for (area, (p, f, fails)) in &by_area {
        say!("  {area}: {p} passed, {f} failed");
        let verbose = std::env::var("LOGQL_VERBOSE").is_ok();
        for x in fails.iter().take(if verbose { 1000 } else { 3 }) {
            say!("    {x}");
        }
    }
    assert!(
        pass >= FLOOR,
        "LogQL conformance fell below the floor: {pass} < {FLOOR}"
    );
}

/// The parser never panics: every corpus query cut at every character boundary, and with odd
/// characters spliced in, parses or fails cleanly.
#[test]
fn logql_parser_never_panics() {
    let Some(dir) = corpus_dir() else { return };
    let text = std::fs::read_to_string(dir.join("cases.jsonl")).unwrap();
    let mut seen = std::collections::HashSet::new();
    for line in text.lines() {
        let c: Value = serde_json::from_str(line).unwrap();
        let q = c["query"].as_str().unwrap_or("").to_string();
        if !seen.insert(q.clone()) {
            continue;
        }
        for (i, _) in q.char_indices() {
            let _ = monitoring_rs::query::logql::parser::parse(&q[..i]);
            for ins in ["\"", "`", "{", "(", "|", "é", "[", "\\", "-", "0", "<"] {
                let _ = monitoring_rs::query::logql::parser::parse(&format!("{}{ins}{}", &q[..i], &q[i..]));
            }
        }
    }
}
