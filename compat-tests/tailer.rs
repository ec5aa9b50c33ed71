//! The pod-log tailer end to end: the real binary with `--pod-logs` over a temp `/var/log/pods`
//! tree that the test writes and rotates the way containerd, the kubelet and Docker do; every line
//! must come back from `/loki/api/v1/query_range` exactly once, with its labels, across rotations,
//! a pod deletion and a kill -9 restart.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn spawn(s: &mut Server, pods: &Path) {
    let log = OpenOptions::new().create(true).append(true).open(&s.log).unwrap();
    s.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(BIN)
        .arg("--data-dir")
        .arg(&s.data_dir)
        .arg("--listen")
        .arg(s.addr.to_string())
        .arg("--pod-logs")
        .arg(pods)
        .arg("--config")
        .arg(s.config.as_ref().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    s.child = Some(child);
    s.wait_ready();
}

fn start(tmp: &Path, pods: &Path) -> Server {
    start_with(tmp, pods, "")
}

fn start_with(tmp: &Path, pods: &Path, extra: &str) -> Server {
    let data = tmp.join("data");
    let config = tmp.join("config.yaml");
    // A node name so the label is deterministic; the default rescan stays (inotify must do the work).
    std::fs::write(
        &config,
        format!("collect:\n  logs:\n    node_name: node-a\n    partial_timeout: 1s\n{extra}"),
    )
    .unwrap();
    let mut s = Server {
        child: None,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data.clone(),
        config: Some(config),
        log: tmp.join("server.log"),
    };
    spawn(&mut s, pods);
    s
}

/// Waits (polling `/metrics`, the only view a black box has) until `n` lines are stored and their
/// positions checkpointed.
fn wait_committed(s: &Server, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = s.metric("monitoring_rs_tailer_lines_committed_total") as u64;
        if got >= n {
            assert_eq!(got, n, "more lines stored than written");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {got} of {n} lines committed; log:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Writer {
    f: File,
    path: PathBuf,
    ts: i64,
}

impl Writer {
    fn open(path: PathBuf, ts: i64) -> Writer {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let f = OpenOptions::new().create(true).append(true).open(&path).unwrap();
        Writer { f, path, ts }
    }

    fn raw(&mut self, s: &str) {
        self.f.write_all(s.as_bytes()).unwrap();
    }

    fn cri_bytes(&mut self, stream: &str, tag: &str, msg: &[u8]) {
        let t = self.ts();
        self.raw(&format!("{t} {stream} {tag} "));
        self.f.write_all(msg).unwrap();
        self.raw("\n");
    }

    fn ts(&mut self) -> String {
        self.ts += 1_000_000;
        // containerd's trimmed fraction, in UTC.
        monitoring_rs::model::text::format_rfc3339_ns(self.ts)
    }

    fn cri(&mut self, stream: &str, tag: &str, msg: &str) {
        let t = self.ts();
        self.raw(&format!("{t} {stream} {tag} {msg}\n"));
    }

    fn docker(&mut self, stream: &str, log: &str) {
        let t = self.ts();
        let line = serde_json::json!({"log": log, "stream": stream, "time": t}).to_string();
        self.raw(&format!("{line}\n"));
    }

    /// The kubelet's rotation: rename, late writes through the old descriptor, then the new file.
    fn rotate(&mut self, suffix: &str, late: &[&str]) {
        let rotated = PathBuf::from(format!("{}.{suffix}", self.path.display()));
        std::fs::rename(&self.path, &rotated).unwrap();
        for l in late {
            self.cri("stdout", "F", l);
        }
        self.f = OpenOptions::new().create(true).append(true).open(&self.path).unwrap();
    }
}

/// Every stored line of the tree with its labels (minus the ingester's own `service_name`) and how
/// many times it was stored.
fn stored(s: &Server, t0: i64) -> BTreeMap<String, (BTreeMap<String, String>, usize)> {
    let q = format!(
        "/loki/api/v1/query_range?query=%7Bnode%3D%22node-a%22%7D&start={}&end={}&limit=5000&direction=forward",
        t0 - 1,
        t0 + 3_600_000_000_000
    );
    let r = s.get(&q);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut out: BTreeMap<String, (BTreeMap<String, String>, usize)> = BTreeMap::new();
    for st in r.json()["data"]["result"].as_array().unwrap() {
        let mut labels: BTreeMap<String, String> = st["stream"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        labels.remove("service_name");
        labels.remove("detected_level");
        for v in st["values"].as_array().unwrap() {
            let line = v[1].as_str().unwrap().to_string();
            let e = out.entry(line).or_insert_with(|| (labels.clone(), 0));
            e.1 += 1;
        }
    }
    out
}

/// `want`: line -> (namespace, pod, container, stream). Each exactly once, with exactly those
/// labels plus `node` and `job`.
fn check(s: &Server, t0: i64, want: &BTreeMap<String, (&str, &str, &str, &str)>) {
    let got = stored(s, t0);
    for (line, (ns, pod, ctr, stream)) in want {
        let Some((labels, n)) = got.get(line) else {
            panic!("line {line:?} not stored; have {:#?}", got.keys().collect::<Vec<_>>())
        };
        assert_eq!(*n, 1, "line {line:?} stored {n} times");
        let expect: BTreeMap<String, String> = [
            ("namespace", *ns),
            ("pod", *pod),
            ("container", *ctr),
            ("stream", *stream),
            ("node", "node-a"),
            ("job", &format!("{ns}/{ctr}")),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(*labels, expect, "labels of {line:?}");
    }
    assert_eq!(got.len(), want.len(), "unexpected lines stored");
}

#[test]
fn tailer_end_to_end() {
    let tmp = tempdir();
    let pods = tmp.path().join("pods");
    std::fs::create_dir_all(&pods).unwrap();
    let t0 = now_ms() * 1_000_000 - 60_000_000_000;
    let mut want: BTreeMap<String, (&str, &str, &str, &str)> = BTreeMap::new();
    let web = ("default", "web-0", "app");
    let mut a = Writer::open(pods.join("default_web-0_1111/app/0.log"), t0);
    // Lines written before the collector starts are read from the start.
    a.cri("stdout", "F", "a-1 before start");
    a.cri("stderr", "P", "a-2 joined ");
    a.cri("stdout", "F", "a-3 between partials");
    a.cri("stderr", "F:future", "from two parts");
    want.insert("a-1 before start".into(), (web.0, web.1, web.2, "stdout"));
    want.insert("a-2 joined from two parts".into(), (web.0, web.1, web.2, "stderr"));
    want.insert("a-3 between partials".into(), (web.0, web.1, web.2, "stdout"));
    // Invalid UTF-8 (containerd copies bytes) is replaced like a push's; a 300 KB line that
    // containerd split in 16 KiB pieces is joined, cut at collect.logs.max_line_size and then
    // refused by limits.logs.max_line_size (256KB, no truncation) exactly like a pushed one.
    a.cri_bytes("stdout", "F", b"a-bad \xff\xfe utf8");
    want.insert("a-bad \u{FFFD}\u{FFFD} utf8".into(), (web.0, web.1, web.2, "stdout"));
    let huge = "h".repeat(300_000);
    for (i, piece) in huge.as_bytes().chunks(16384).enumerate() {
        let tag = if (i + 1) * 16384 >= huge.len() { "F" } else { "P" };
        a.cri_bytes("stderr", tag, piece);
    }
    let mut s = start(tmp.path(), &pods);
    wait_committed(&s, 5);
    assert_eq!(s.metric("monitoring_rs_tailer_lines_cut_total"), 1.0);
    assert_eq!(
        s.metric("monitoring_rs_loki_discarded_samples_total{reason=\"line_too_long\"}"),
        1.0
    );

    // A Docker json-file pod appears while running (found by inotify, not the 10 s rescan).
    let dk = ("kube-system", "dns-1", "coredns");
    let mut d = Writer::open(pods.join("kube-system_dns-1_2222/coredns/0.log"), t0 + 500_000_000);
    d.docker("stdout", "d-1 split by docker at 16 KiB ");
    d.docker("stdout", "and joined\n");
    d.docker("stderr", "d-2 err\n");
    want.insert(
        "d-1 split by docker at 16 KiB and joined".into(),
        (dk.0, dk.1, dk.2, "stdout"),
    );
    want.insert("d-2 err".into(), (dk.0, dk.1, dk.2, "stderr"));
    // Rotation with late writes through the old descriptor, then the new file.
    a.cri("stdout", "F", "a-4 before rotation");
    a.rotate("20261121-080000", &["a-5 late write after rename"]);
    a.cri("stdout", "F", "a-6 in the new file");
    for l in [
        "a-4 before rotation",
        "a-5 late write after rename",
        "a-6 in the new file",
    ] {
        want.insert(l.into(), (web.0, web.1, web.2, "stdout"));
    }
    wait_committed(&s, 10);
    check(&s, t0, &want);
    assert_eq!(s.metric("monitoring_rs_tailer_rotations_total"), 1.0);

    // kill -9, then rotation, a container restart and more lines while it is down.
    s.kill9();
    a.cri("stdout", "F", "a-7 while down");
    a.rotate("20261121-080100", &["a-8 late while down"]);
    a.cri("stdout", "F", "a-9 new file while down");
    let mut a1 = Writer::open(pods.join("default_web-0_1111/app/1.log"), t0 + 900_000_000);
    a1.cri("stdout", "F", "a-10 restarted container");
    for l in [
        "a-7 while down",
        "a-8 late while down",
        "a-9 new file while down",
        "a-10 restarted container",
    ] {
        want.insert(l.into(), (web.0, web.1, web.2, "stdout"));
    }
    spawn(&mut s, &pods);
    wait_committed(&s, 4);
    check(&s, t0, &want);

    // Copytruncate: the file shrinks and is written again from offset 0.
    a1.f.set_len(0).unwrap();
    a1.cri("stdout", "F", "a-11 after truncate");
    want.insert("a-11 after truncate".into(), (web.0, web.1, web.2, "stdout"));
    wait_committed(&s, 5);
    // A partial line with no end (the container exited): stored after the partial timeout.
    d.docker("stdout", "d-3 no newline at exit");
    want.insert("d-3 no newline at exit".into(), (dk.0, dk.1, dk.2, "stdout"));
    wait_committed(&s, 6);
    check(&s, t0, &want);

    // Pod deletion: its descriptors are released.
    let open_before = s.metric("monitoring_rs_tailer_files_open");
    std::fs::remove_dir_all(pods.join("kube-system_dns-1_2222")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.metric("monitoring_rs_tailer_files_open") >= open_before {
        assert!(Instant::now() < deadline, "descriptors of a deleted pod still held");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.metric("monitoring_rs_tailer_files_deleted_open"), 0.0);
    assert_eq!(s.metric("monitoring_rs_tailer_errors_total{reason=\"parse\"}"), 0.0);

    // A clean stop and start stores nothing twice.
    s.stop();
    spawn(&mut s, &pods);
    a1.cri("stdout", "F", "a-12 after clean restart");
    want.insert("a-12 after clean restart".into(), (web.0, web.1, web.2, "stdout"));
    wait_committed(&s, 1);
    check(&s, t0, &want);
}

/// kill -9 while batches are flowing (4 KiB batches, killed after the first few hundred lines, twice):
/// after the restart every line is stored exactly once, whatever moment the kill hit (the pending
/// positions and the store's answer cover the push-to-checkpoint window).
#[test]
fn kill9_while_lines_flow() {
    let tmp = tempdir();
    let pods = tmp.path().join("pods");
    let t0 = now_ms() * 1_000_000 - 60_000_000_000;
    let mut w = Writer::open(pods.join("default_flow-0_3333/app/0.log"), t0);
    let mut want: BTreeMap<String, (&str, &str, &str, &str)> = BTreeMap::new();
    let mut line = |w: &mut Writer, i: usize| {
        let l = format!("flow-{i:05} {}", "p".repeat(i % 90));
        w.cri("stdout", "F", &l);
        want.insert(l, ("default", "flow-0", "app", "stdout"));
    };
    for i in 0..3000 {
        line(&mut w, i);
    }
    let mut s = start_with(tmp.path(), &pods, "    batch_size: 4KiB\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.metric("monitoring_rs_tailer_lines_total") < 300.0 {
        assert!(Instant::now() < deadline, "no progress; log:\n{}", s.log_text());
    }
    s.kill9();
    // Twice: the second run starts from the first one's positions with a backlog of its own (4500
    // lines in all: under the 5000 entries a query may return).
    for i in 3000..4500 {
        line(&mut w, i);
    }
    spawn(&mut s, &pods);
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.metric("monitoring_rs_tailer_lines_total") < 300.0 {
        assert!(Instant::now() < deadline, "no progress; log:\n{}", s.log_text());
    }
    s.kill9();
    spawn(&mut s, &pods);
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored(&s, t0).len() < want.len() {
        assert!(
            Instant::now() < deadline,
            "lines missing after the restart; log:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    check(&s, t0, &want);
}
