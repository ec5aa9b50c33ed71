//! Loki 3.4.6's `detected_level` discovery from a log line (`FieldDetector.extractLogLevel`):
//! a JSON object's or a logfmt line's level field, normalised, else keywords in the text.
//! Shared by the push path (which stores it as structured metadata) and the LogQL test source.
//!
//! Never touches: I/O. Pure functions over a line.

/// Loki 3.4's `log_level_fields` default, in lookup order.
pub const LEVEL_FIELDS: &[&str] = &[
    "level", "LEVEL", "Level", "severity", "SEVERITY", "Severity", "lvl", "LVL", "Lvl",
];

/// Loki 3.4's `discover_service_name` default label list, in priority order: the first present
/// label's value becomes `service_name`.
pub const DEFAULT_SERVICE_NAME_LABELS: &[&str] = &[
    "service_name",
    "service",
    "app",
    "application",
    "name",
    "app_kubernetes_io_name",
    "container",
    "container_name",
    "k8s_container_name",
    "component",
    "workload",
    "job",
    "k8s_job_name",
];

/// The level Loki detects in `line` when neither labels nor structured metadata name one.
pub fn from_line(line: &str) -> &'static str {
    let t = line.trim();
    let v: Option<String> = if t.starts_with('{') && t.ends_with('}') {
        serde_json::from_str::<serde_json::Value>(line).ok().and_then(|j| {
            LEVEL_FIELDS.iter().find_map(|f| {
                j.get(*f)
                    .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
            })
        })
    } else if line.contains('=') {
        logfmt_level(line)
    } else {
        return level_from_words(line);
    };
    match v.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("trace" | "trc") => "trace",
        Some("debug" | "dbg") => "debug",
        Some("info" | "inf") => "info",
        Some("warn" | "wrn" | "warning") => "warn",
        Some("error" | "err") => "error",
        Some("critical") => "critical",
        Some("fatal") => "fatal",
        _ => level_from_words(line),
    }
}

fn logfmt_level(line: &str) -> Option<String> {
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i] <= b' ' {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] > b' ' && b[i] != b'=' && b[i] != b'"' {
            i += 1;
        }
        let key = &line[ks..i];
        if i < b.len() && b[i] == b'"' {
            // go-logfmt stops at a syntax error.
            return None;
        }
        let mut val = "";
        if i < b.len() && b[i] == b'=' {
            i += 1;
            if i < b.len() && b[i] == b'"' {
                let st = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                val = &line[st..i.min(b.len())];
                i += 1;
            } else {
                let st = i;
                while i < b.len() && b[i] > b' ' {
                    i += 1;
                }
                val = &line[st..i];
            }
        }
        if LEVEL_FIELDS.contains(&key) {
            return Some(val.to_string());
        }
        if ks == i {
            i += 1;
        }
    }
    None
}

fn level_from_words(line: &str) -> &'static str {
    let has = |s: &str| line.contains(s);
    if has("info:") || has("INFO:") || has("info") || has("INFO") {
        "info"
    } else if has("err:") || has("ERR:") || has("error") || has("ERROR") {
        "error"
    } else if has("warn:") || has("WARN:") || has("warning") || has("WARNING") {
        "warn"
    } else if has("CRITICAL:") || has("critical:") {
        "critical"
    } else if has("debug:") || has("DEBUG:") {
        "debug"
    } else {
        "unknown"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, want: &str) {
        assert_eq!(from_line(line), want, "{line:?}");
    }

    #[test]
    fn levels_like_loki() {
        check(r#"{"level":"WARN","msg":"x"}"#, "warn");
        check(r#"{"severity":"fatal"}"#, "fatal");
        check("time=1 lvl=ERROR msg=x", "error");
        check("plain text with an error in it", "error");
        check("[INFO] started", "info");
        check("nothing to see", "unknown");
        check(r#"{"level": 3}"#, "unknown");
    }
}
