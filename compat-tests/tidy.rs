//! Keeps the layering of DESIGN.md visible: a module may only import the modules below it, the
//! named crates stay with their one owner, and non-test code has no `unwrap()`/`expect()`.

use std::path::{Path, PathBuf};

/// (module, crate-internal modules it may import). `app` and `main` may import everything.
const ALLOWED: &[(&str, &[&str])] = &[
    ("model", &[]),
    // `model` is the bottom layer: pure values and parsers any module may use.
    ("config", &["model"]),
    ("telemetry", &[]),
    ("storage", &["model"]),
    ("proto", &["model"]),
    ("ingest", &["storage", "proto", "model"]),
    ("query", &["storage", "model"]),
    ("collect", &["ingest", "proto", "storage", "model"]),
    ("forward", &["proto", "model"]),
    ("api", &["query", "ingest", "proto", "storage", "model", "telemetry"]),
];

const MODULES: &[&str] = &[
    "model",
    "config",
    "telemetry",
    "storage",
    "proto",
    "ingest",
    "query",
    "collect",
    "forward",
    "api",
    "app",
];

/// External crates that only one module may use.
const OWNERS: &[(&str, &str)] = &[("axum", "api"), ("kube", "collect"), ("inotify", "collect")];

/// External crates that only files under one path may use (narrower than a module):
/// (crate, path prefix under `src/`).
const PATH_OWNERS: &[(&str, &str)] = &[("kube", "collect/kube"), ("k8s_openapi", "collect/kube")];

/// A non-comment line naming `krate::` as a path root (not `x::krate::` or `my_krate::`).
fn uses_crate(text: &str, krate: &str) -> bool {
    let needle = format!("{krate}::");
    text.lines().any(|l| {
        let l = l.trim_start();
        !l.starts_with("//")
            && l.match_indices(&needle)
                .any(|(i, _)| i == 0 || !l[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':'))
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .to_string();
    first.trim_end_matches(".rs").to_string()
}

/// Code before the first `#[cfg(test)]`: tests live at the end of each file by convention.
fn non_test_code(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// A module's `tests.rs` is compiled only under `#[cfg(test)] mod tests;` in its parent.
fn is_test_file(file: &Path) -> bool {
    file.file_name().is_some_and(|n| n == "tests.rs")
}

fn check(violations: &mut Vec<String>, file: &Path, module: &str, text: &str) {
    let code = non_test_code(text);
    if let Some((_, allowed)) = ALLOWED.iter().find(|(m, _)| *m == module) {
        for m in MODULES {
            if *m == module || allowed.contains(m) {
                continue;
            }
            let needle = format!("crate::{m}");
            for (n, line) in text.lines().enumerate() {
                let code_line = line.split("//").next().unwrap_or("");
                if code_line.contains(&needle)
                    && !code_line[code_line.find(&needle).unwrap() + needle.len()..]
                        .starts_with(|c: char| c.is_alphanumeric() || c == '_')
                {
                    violations.push(format!(
                        "{}:{}: `{module}` must not import `{m}`",
                        file.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    for (krate, owner) in OWNERS {
        if module != *owner && (text.contains(&format!("use {krate}::")) || text.contains(&format!("{krate}::"))) {
            let uses = text.lines().any(|l| {
                let l = l.trim_start();
                !l.starts_with("//") && (l.contains(&format!("use {krate}::")) || l.contains(&format!(" {krate}::")))
            });
            if uses {
                violations.push(format!(
                    "{}: only `{owner}` may use the `{krate}` crate",
                    file.display()
                ));
            }
        }
    }
    let rel = file.to_string_lossy().replace('\\', "/");
    for (krate, prefix) in PATH_OWNERS {
        let owned = rel.contains(&format!("src/{prefix}/")) || rel.ends_with(&format!("src/{prefix}.rs"));
        if !owned && uses_crate(text, krate) {
            violations.push(format!(
                "{}: only src/{prefix}* may use the `{krate}` crate",
                file.display()
            ));
        }
    }
    let code = if is_test_file(file) { "" } else { code };
    for (n, line) in code.lines().enumerate() {
        let l = line.trim_start();
        if l.starts_with("//") {
            continue;
        }
        // `.expect("` and not `.expect(`: parsers have their own `expect(token)` methods.
        if l.contains(".unwrap()") || l.contains(".expect(\"") {
            violations.push(format!("{}:{}: unwrap/expect outside tests", file.display(), n + 1));
        }
    }
}

#[test]
fn layering_and_style() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 10, "expected the source tree under {}", src.display());
    let mut violations = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let module = module_of(&src, f);
        check(&mut violations, f, &module, &text);
        let rel = f.strip_prefix(&src).unwrap();
        let is_mod_root = rel.components().count() == 1 || rel.file_name().is_some_and(|n| n == "mod.rs");
        if is_mod_root && module != "main" && !text.trim_start().starts_with("//!") {
            violations.push(format!(
                "{}: a module opens with `//!` saying what it owns",
                f.display()
            ));
        }
    }
    assert!(violations.is_empty(), "tidy violations:\n{}", violations.join("\n"));
}

/// The checker itself must catch what it claims to catch.
#[test]
fn tidy_catches_violations() {
    let mut v = Vec::new();
    check(
        &mut v,
        Path::new("src/storage/x.rs"),
        "storage",
        "use crate::api::router;\n",
    );
    check(
        &mut v,
        Path::new("src/storage/y.rs"),
        "storage",
        "fn f() { let x = a.unwrap(); }\n",
    );
    check(&mut v, Path::new("src/ingest/z.rs"), "ingest", "use axum::Router;\n");
    check(
        &mut v,
        Path::new("src/ingest/ok.rs"),
        "ingest",
        "use crate::storage::metrics;\n#[cfg(test)]\nfn t(){ a.unwrap(); }\n",
    );
    check(
        &mut v,
        Path::new("src/collect/logs/q.rs"),
        "collect",
        "use k8s_openapi::api::core::v1::Pod;\n",
    );
    check(
        &mut v,
        Path::new("src/collect/kube/ok.rs"),
        "collect",
        "use kube::runtime::watcher;\nuse crate::collect::kube::PodCache;\n",
    );
    check(
        &mut v,
        Path::new("src/app.rs"),
        "app",
        "use crate::collect::kube::KubeStats;\nlet x = kube::Client::new();\n",
    );
    assert_eq!(v.len(), 6, "{v:#?}");
}
