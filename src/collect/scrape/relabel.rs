//! Prometheus relabeling (`relabel_configs`, `metric_relabel_configs`) with every action of
//! Prometheus 2.42: replace, keep, drop, keepequal, dropequal, hashmod, labelmap, labeldrop,
//! labelkeep, lowercase, uppercase.
//!
//! Semantics follow `model/relabel/relabel.go` at v2.42.0: regexes are fully anchored, source
//! values are joined with `separator`, a `replace` whose result is empty deletes the target label,
//! and `hashmod` is the last 8 bytes of the MD5 of the joined value, big-endian, modulo `modulus`.

use super::ScrapeError;
use regex::Regex;
use serde::Deserialize;
use std::collections::BTreeMap;

/// A label set under relabeling; a `BTreeMap` keeps it sorted as the store wants it.
pub type LabelMap = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Replace,
    Keep,
    Drop,
    KeepEqual,
    DropEqual,
    HashMod,
    LabelMap,
    LabelDrop,
    LabelKeep,
    Lowercase,
    Uppercase,
}

/// One relabel rule as written in YAML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelabelConfig {
    #[serde(default)]
    pub source_labels: Vec<String>,
    #[serde(default = "default_separator")]
    pub separator: String,
    #[serde(default)]
    pub target_label: String,
    #[serde(default = "default_regex")]
    pub regex: String,
    #[serde(default)]
    pub modulus: u64,
    #[serde(default = "default_replacement")]
    pub replacement: String,
    #[serde(default)]
    pub action: Action,
}

fn default_separator() -> String {
    ";".to_string()
}
fn default_regex() -> String {
    "(.*)".to_string()
}
fn default_replacement() -> String {
    "$1".to_string()
}

/// A rule with its regex compiled (anchored).
#[derive(Debug, Clone)]
pub struct Rule {
    cfg: RelabelConfig,
    re: Regex,
}

impl Rule {
    pub fn new(cfg: RelabelConfig) -> Result<Rule, ScrapeError> {
        let re = Regex::new(&format!("^(?:{})$", cfg.regex)).map_err(|e| ScrapeError::Config(e.to_string()))?;
        let needs_target = matches!(
            cfg.action,
            Action::Replace
                | Action::HashMod
                | Action::Lowercase
                | Action::Uppercase
                | Action::KeepEqual
                | Action::DropEqual
        );
        if needs_target && cfg.target_label.is_empty() {
            return Err(ScrapeError::Config(format!(
                "relabel action {:?} requires target_label",
                cfg.action
            )));
        }
        if cfg.action == Action::HashMod && cfg.modulus == 0 {
            return Err(ScrapeError::Config(
                "relabel action hashmod requires a non-zero modulus".into(),
            ));
        }
        Ok(Rule { cfg, re })
    }
}

fn valid_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Applies `rules` in order; `false` means the target or series is dropped.
pub fn relabel(rules: &[Rule], labels: &mut LabelMap) -> bool {
    let mut val = String::new();
    for r in rules {
        let c = &r.cfg;
        val.clear();
        for (i, s) in c.source_labels.iter().enumerate() {
            if i > 0 {
                val.push_str(&c.separator);
            }
            val.push_str(labels.get(s).map_or("", String::as_str));
        }
        match c.action {
            Action::Drop => {
                if r.re.is_match(&val) {
                    return false;
                }
            }
            Action::Keep => {
                if !r.re.is_match(&val) {
                    return false;
                }
            }
            Action::DropEqual => {
                if labels.get(&c.target_label).map_or("", String::as_str) == val {
                    return false;
                }
            }
            Action::KeepEqual => {
                if labels.get(&c.target_label).map_or("", String::as_str) != val {
                    return false;
                }
            }
            Action::Replace => {
                let Some(caps) = r.re.captures(&val) else {
                    continue;
                };
                let mut target = String::new();
                caps.expand(&c.target_label, &mut target);
                if !valid_label_name(&target) {
                    continue;
                }
                let mut res = String::new();
                caps.expand(&c.replacement, &mut res);
                if res.is_empty() {
                    labels.remove(&target);
                } else {
                    labels.insert(target, res);
                }
            }
            Action::Lowercase => {
                labels.insert(c.target_label.clone(), val.to_lowercase());
            }
            Action::Uppercase => {
                labels.insert(c.target_label.clone(), val.to_uppercase());
            }
            Action::HashMod => {
                let d = md5(val.as_bytes());
                let mut last = [0u8; 8];
                last.copy_from_slice(&d[8..]);
                let m = u64::from_be_bytes(last) % c.modulus;
                labels.insert(c.target_label.clone(), m.to_string());
            }
            Action::LabelMap => {
                let mapped: Vec<(String, String)> = labels
                    .iter()
                    .filter_map(|(n, v)| {
                        let caps = r.re.captures(n)?;
                        let mut name = String::new();
                        caps.expand(&c.replacement, &mut name);
                        Some((name, v.clone()))
                    })
                    .collect();
                labels.extend(mapped);
            }
            Action::LabelDrop => labels.retain(|n, _| !r.re.is_match(n)),
            Action::LabelKeep => labels.retain(|n, _| r.re.is_match(n)),
        }
    }
    true
}

/// MD5 (RFC 1321), for `hashmod` only: it must give the same shard as Prometheus, which uses MD5.
pub fn md5(data: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14,
        20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6,
        10, 15, 21,
    ];
    let k: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_le_bytes());
    let (mut a0, mut b0, mut c0, mut d0) = (0x6745_2301u32, 0xefcd_ab89u32, 0x98ba_dcfeu32, 0x1032_5476u32);
    for chunk in msg.chunks_exact(64) {
        let mut m = [0u32; 16];
        for (i, w) in chunk.chunks_exact(4).enumerate() {
            m[i] = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        }
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f2 = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f2.rotate_left(S[i]));
        }
        a0 = a0.wrapping_add(a);
        b0 = b0.wrapping_add(b);
        c0 = c0.wrapping_add(c);
        d0 = d0.wrapping_add(d);
    }
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a0.to_le_bytes());
    out[4..8].copy_from_slice(&b0.to_le_bytes());
    out[8..12].copy_from_slice(&c0.to_le_bytes());
    out[12..].copy_from_slice(&d0.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &str) -> LabelMap {
        s.split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (n, v) = p.split_once('=').unwrap();
                (n.to_string(), v.to_string())
            })
            .collect()
    }

    /// Applies the YAML rules to `input` (`a=1,b=2`) and compares with `want` (`drop` or a set).
    fn check(rules_yaml: &str, input: &str, want: &str) {
        let cfgs: Vec<RelabelConfig> = serde_yaml::from_str(rules_yaml).unwrap();
        let rules: Vec<Rule> = cfgs.into_iter().map(|c| Rule::new(c).unwrap()).collect();
        let mut ls = labels(input);
        let kept = relabel(&rules, &mut ls);
        let got = if kept {
            ls.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(",")
        } else {
            "drop".to_string()
        };
        assert_eq!(got, want, "rules {rules_yaml} on {input}");
    }

    #[test]
    fn every_action() {
        let r = "[{source_labels: [a, b], regex: '(.*);(.*)', target_label: c, replacement: '${2}-$1'}]";
        check(r, "a=x,b=y", "a=x,b=y,c=y-x");
        check("[{source_labels: [a], regex: 'z', target_label: c}]", "a=x", "a=x");
        check(
            "[{source_labels: [a], target_label: b, replacement: ''}]",
            "a=x,b=y",
            "a=x",
        );
        check(
            "[{source_labels: [a], target_label: '${1}', regex: '(.*)'}]",
            "a=1x",
            "a=1x",
        );
        check("[{source_labels: [a], target_label: 'l_$1'}]", "a=v", "a=v,l_v=v");
        check("[{source_labels: [a], regex: 'x.*', action: keep}]", "a=xy", "a=xy");
        check("[{source_labels: [a], regex: 'x', action: keep}]", "a=xy", "drop");
        check("[{source_labels: [a], regex: 'x.*', action: drop}]", "a=xy", "drop");
        check("[{source_labels: [missing], regex: '', action: drop}]", "a=1", "drop");
        check(
            "[{source_labels: [a], target_label: b, action: keepequal}]",
            "a=1,b=1",
            "a=1,b=1",
        );
        check(
            "[{source_labels: [a], target_label: b, action: keepequal}]",
            "a=1,b=2",
            "drop",
        );
        check(
            "[{source_labels: [a], target_label: b, action: dropequal}]",
            "a=1,b=1",
            "drop",
        );
        check(
            "[{source_labels: [a], target_label: b, action: dropequal}]",
            "a=1,b=2",
            "a=1,b=2",
        );
        check(
            "[{regex: '__meta_(.+)', action: labelmap}]",
            "__meta_pod=p,__meta_ns=n,x=1",
            "__meta_ns=n,__meta_pod=p,ns=n,pod=p,x=1",
        );
        check("[{regex: '__meta_.*', action: labeldrop}]", "__meta_pod=p,x=1", "x=1");
        check(
            "[{regex: 'x|__name__', action: labelkeep}]",
            "__meta_pod=p,x=1,y=2",
            "x=1",
        );
        check(
            "[{source_labels: [a], target_label: b, action: lowercase}]",
            "a=AbC",
            "a=AbC,b=abc",
        );
        check(
            "[{source_labels: [a], target_label: b, action: uppercase}]",
            "a=AbC",
            "a=AbC,b=ABC",
        );
        // Prometheus's own case (model/relabel/relabel_test.go): "baz" % 1000 -> 976.
        check(
            "[{source_labels: [c], target_label: d, modulus: 1000, action: hashmod}]",
            "c=baz",
            "c=baz,d=976",
        );
    }

    #[test]
    fn md5_vectors() {
        let hex = |d: [u8; 16]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        for (input, want) in [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            (
                "The quick brown fox jumps over the lazy dog",
                "9e107d9d372bb6826bd81d3542a419d6",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ] {
            assert_eq!(hex(md5(input.as_bytes())), want, "{input:?}");
        }
    }

    #[test]
    fn bad_rules_refused() {
        for yaml in [
            "{regex: '(', action: keep}",
            "{source_labels: [a], action: replace}",
            "{source_labels: [a], target_label: b, action: hashmod}",
        ] {
            let c: RelabelConfig = serde_yaml::from_str(yaml).unwrap();
            assert!(Rule::new(c).is_err(), "{yaml}");
        }
    }
}
