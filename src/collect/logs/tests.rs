//! Tests of the tailer module: the model-based property test (below) and label text.
//!
//! Model-based property test of the tailer: random sequences of writes (CRI and Docker, full lines
//! and partials that span steps), kubelet-style rotations with late writes through the old
//! descriptor, copytruncate, container restarts (`N.log` -> `N+1.log`, with an unterminated `P` at
//! exit), deletion of rotated files and of whole pods, sink failures, and collector restarts (crash
//! or clean). The model is the list of logical lines each stream must hold; at the end every stream
//! must hold exactly those lines, in order, once, under the right labels.
//!
//! Seeded xorshift, no new crate. Runs in `/dev/shm` when present: fsync there is free, and the
//! test checks the protocol, not the disk.

use super::parse::Stream;
use super::*;
use crate::model::text::{format_rfc3339_ns, parse_label_text};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

/// (namespace, pod, container, stream)
type Key = (String, String, String, &'static str);
/// Entries per stream: (ts, line).
type Streams = BTreeMap<Key, Vec<(i64, Vec<u8>)>>;

#[derive(Default)]
struct MemSink {
    got: Mutex<Streams>,
    fail: AtomicBool,
}

const NODE: &str = "node-a";

impl LogSink for MemSink {
    fn contains(&self, probe: &checkpoint::Probe) -> Result<bool, String> {
        let pairs: BTreeMap<String, String> = parse_label_text(&probe.labels)?.into_iter().collect();
        let got = self.got.lock();
        Ok(got.iter().any(|((ns, pod, ctr, stream), v)| {
            pairs.get("namespace") == Some(ns)
                && pairs.get("pod") == Some(pod)
                && pairs.get("container") == Some(ctr)
                && pairs.get("stream").map(|s| s.as_str()) == Some(*stream)
                && v.iter().any(|(t, l)| {
                    *t == probe.ts
                        && crc32fast::hash(&String::from_utf8_lossy(l).into_owned().into_bytes()) == probe.line_crc
                })
        }))
    }

    fn push(&self, streams: &[SinkStream<'_>]) -> Result<(), String> {
        if self.fail.load(Ordering::SeqCst) {
            return Err("injected failure".into());
        }
        let mut got = self.got.lock();
        for s in streams {
            let pairs: BTreeMap<String, String> = parse_label_text(s.labels)
                .map_err(|e| format!("bad label text {}: {e}", s.labels))?
                .into_iter()
                .collect();
            let names: Vec<&str> = pairs.keys().map(|k| k.as_str()).collect();
            assert_eq!(
                names,
                ["container", "job", "namespace", "node", "pod", "stream"],
                "{}",
                s.labels
            );
            assert_eq!(pairs["node"], NODE);
            assert_eq!(pairs["job"], format!("{}/{}", pairs["namespace"], pairs["container"]));
            let stream = match pairs["stream"].as_str() {
                "stdout" => "stdout",
                "stderr" => "stderr",
                other => panic!("stream {other}"),
            };
            let key = (
                pairs["namespace"].clone(),
                pairs["pod"].clone(),
                pairs["container"].clone(),
                stream,
            );
            let v = got.entry(key).or_default();
            v.extend(s.entries.iter().map(|(t, l)| (*t, l.to_vec())));
        }
        Ok(())
    }
}

struct Ctr {
    name: String,
    dir: PathBuf,
    docker: bool,
    n: u64,
    rotations: u32,
    cur: File,
    /// Partial line in progress per stream: (ts of its first chunk, bytes so far).
    pend: [Option<(i64, Vec<u8>)>; 2],
    /// Bytes written since the last successful step (a truncation would lose them).
    unread: bool,
    /// Rotated file names still on disk, oldest first.
    rotated: Vec<String>,
}

struct Pod {
    ns: String,
    name: String,
    dir: PathBuf,
    ctrs: Vec<Ctr>,
}

struct World {
    rng: Rng,
    root: PathBuf,
    pods: Vec<Pod>,
    next_pod: usize,
    ts: i64,
    seq: u64,
    expected: Streams,
    /// Files were deleted since the last successful step: a collector crash now would lose the
    /// undrained part (that is what a crash does), so the model steps first.
    needs_step: bool,
    /// Files created since the last successful step are unknown to the tailer: deleting them
    /// before it saw them is a loss the model does not allow.
    unseen: bool,
    /// Directories aged so far (each gets its own mtime).
    aged: u64,
}

fn append(f: &mut File, line: &[u8]) {
    f.write_all(line).unwrap();
}

impl World {
    fn key(&self, p: usize, c: usize, s: Stream) -> Key {
        let pod = &self.pods[p];
        (pod.ns.clone(), pod.name.clone(), pod.ctrs[c].name.clone(), s.as_str())
    }

    fn physical(&mut self, p: usize, c: usize, s: Stream, ts: i64, msg: &[u8], partial: bool) {
        let ctr = &mut self.pods[p].ctrs[c];
        let mut line = Vec::new();
        if ctr.docker {
            // Docker JSON: only the last piece of a line ends in "\n". Messages are ASCII here.
            let mut log = String::from_utf8(msg.to_vec()).unwrap();
            if !partial {
                log.push('\n');
            }
            let obj = serde_json::json!({"log": log, "stream": s.as_str(), "time": format_rfc3339_ns(ts)});
            line.extend_from_slice(obj.to_string().as_bytes());
        } else {
            line.extend_from_slice(
                format!(
                    "{} {} {} ",
                    format_rfc3339_ns(ts),
                    s.as_str(),
                    if partial { "P" } else { "F" }
                )
                .as_bytes(),
            );
            line.extend_from_slice(msg);
        }
        line.push(b'\n');
        append(&mut ctr.cur, &line);
        ctr.unread = true;
    }

    fn message(&mut self, p: usize, c: usize) -> Vec<u8> {
        self.seq += 1;
        let fill = self.rng.below(60) as usize;
        let mut m = format!("{}-{}-{} ", self.pods[p].name, self.pods[p].ctrs[c].name, self.seq).into_bytes();
        m.extend(std::iter::repeat_n(b'x', fill));
        if !self.pods[p].ctrs[c].docker && self.rng.chance(20) {
            // A multi-byte character that a split may cut in two.
            m.extend_from_slice("é€".as_bytes());
        }
        m
    }

    fn tick(&mut self) -> i64 {
        self.ts += 1_000_000 + self.rng.below(1000) as i64;
        self.ts
    }

    fn add_pod(&mut self) {
        let i = self.next_pod;
        self.next_pod += 1;
        let ns = if i.is_multiple_of(2) { "default" } else { "kube-system" };
        let name = format!("pod{i}");
        let dir = self.root.join(format!("{ns}_{name}_uid-{i}"));
        let docker = self.rng.chance(25);
        let mut ctrs = Vec::new();
        for c in 0..1 + self.rng.below(2) {
            let name = format!("c{c}");
            let d = dir.join(&name);
            std::fs::create_dir_all(&d).unwrap();
            let cur = OpenOptions::new()
                .create(true)
                .append(true)
                .open(d.join("0.log"))
                .unwrap();
            ctrs.push(Ctr {
                name,
                dir: d,
                docker,
                n: 0,
                rotations: 0,
                cur,
                pend: [None, None],
                unread: false,
                rotated: Vec::new(),
            });
        }
        self.pods.push(Pod {
            ns: ns.into(),
            name,
            dir,
            ctrs,
        });
        self.unseen = true;
    }

    fn stream(&mut self) -> Stream {
        if self.rng.chance(70) {
            Stream::Stdout
        } else {
            Stream::Stderr
        }
    }

    fn write_full(&mut self, p: usize, c: usize) {
        let s = self.stream();
        if self.pods[p].ctrs[c].pend[s as usize].is_some() {
            return self.continue_partial(p, c, s, true);
        }
        let ts = self.tick();
        let msg = self.message(p, c);
        self.physical(p, c, s, ts, &msg, false);
        let k = self.key(p, c, s);
        self.expected.entry(k).or_default().push((ts, msg));
    }

    /// Starts or continues a partial line; `end` writes its final piece.
    fn continue_partial(&mut self, p: usize, c: usize, s: Stream, end: bool) {
        let ts = self.tick();
        let msg = self.message(p, c);
        let (first_ts, mut so_far) = self.pods[p].ctrs[c].pend[s as usize].take().unwrap_or((ts, Vec::new()));
        // Split at any byte, possibly inside a multi-byte character (CRI splits bytes).
        let cut = if self.pods[p].ctrs[c].docker {
            msg.len()
        } else {
            1 + self.rng.below(msg.len() as u64) as usize
        };
        let (a, b) = msg.split_at(cut);
        self.physical(p, c, s, ts, a, true);
        so_far.extend_from_slice(a);
        if end {
            self.physical(p, c, s, ts, b, false);
            so_far.extend_from_slice(b);
            let k = self.key(p, c, s);
            self.expected.entry(k).or_default().push((first_ts, so_far));
        } else {
            if !b.is_empty() {
                self.physical(p, c, s, ts, b, true);
                so_far.extend_from_slice(b);
            }
            self.pods[p].ctrs[c].pend[s as usize] = Some((first_ts, so_far));
        }
    }

    /// The container's partial lines end here without an `F` (exit, rotation): the tailer stores
    /// them as they are once the file is finished.
    fn abandon_partials(&mut self, p: usize, c: usize) {
        for s in [Stream::Stdout, Stream::Stderr] {
            if let Some((ts, so_far)) = self.pods[p].ctrs[c].pend[s as usize].take() {
                let k = self.key(p, c, s);
                self.expected.entry(k).or_default().push((ts, so_far));
            }
        }
    }

    /// Kubelet rotation: rename N.log away, a few late lines through the runtime's old descriptor,
    /// then the runtime's new N.log.
    fn rotate(&mut self, p: usize, c: usize) {
        let ctr = &mut self.pods[p].ctrs[c];
        ctr.rotations += 1;
        let rot = format!("{}.log.20261121-{:06}", ctr.n, ctr.rotations);
        std::fs::rename(ctr.dir.join(format!("{}.log", ctr.n)), ctr.dir.join(&rot)).unwrap();
        ctr.rotated.push(rot);
        for _ in 0..self.rng.below(3) {
            self.write_full(p, c);
        }
        // A line still open in the old file is cut there: its rest (if any) starts the new file.
        self.abandon_partials(p, c);
        let ctr = &mut self.pods[p].ctrs[c];
        ctr.cur = OpenOptions::new()
            .create(true)
            .append(true)
            .open(ctr.dir.join(format!("{}.log", ctr.n)))
            .unwrap();
        self.unseen = true;
    }

    fn restart_container(&mut self, p: usize, c: usize) {
        if self.rng.chance(50) {
            // Output without a final newline at exit: containerd writes it as `P`, no `F` follows.
            let s = self.stream();
            if self.pods[p].ctrs[c].pend[s as usize].is_none() {
                self.continue_partial(p, c, s, false);
            }
        }
        self.abandon_partials(p, c);
        let ctr = &mut self.pods[p].ctrs[c];
        ctr.n += 1;
        ctr.cur = OpenOptions::new()
            .create(true)
            .append(true)
            .open(ctr.dir.join(format!("{}.log", ctr.n)))
            .unwrap();
        self.unseen = true;
    }

    fn copytruncate(&mut self, p: usize, c: usize) {
        let ctr = &mut self.pods[p].ctrs[c];
        if ctr.unread || ctr.pend.iter().any(|x| x.is_some()) {
            return;
        }
        ctr.cur.set_len(0).unwrap();
    }

    fn gc_rotated(&mut self, p: usize, c: usize) {
        if self.unseen {
            return;
        }
        let ctr = &mut self.pods[p].ctrs[c];
        if !ctr.rotated.is_empty() {
            let name = ctr.rotated.remove(0);
            std::fs::remove_file(ctr.dir.join(name)).unwrap();
            self.needs_step = true;
        }
    }

    fn delete_pod(&mut self, p: usize) {
        if self.unseen {
            return;
        }
        for c in 0..self.pods[p].ctrs.len() {
            self.abandon_partials(p, c);
        }
        let pod = self.pods.remove(p);
        std::fs::remove_dir_all(&pod.dir).unwrap();
        self.needs_step = true;
    }

    /// Sets every directory's mtime to a distinct moment at least 1000 s ago (distinct, so that
    /// ageing a directory changed since its last listing never restores the listed mtime).
    fn age_dirs(&mut self) {
        let mut dirs = vec![self.root.clone()];
        for p in &self.pods {
            dirs.push(p.dir.clone());
            for c in &p.ctrs {
                dirs.push(c.dir.clone());
            }
        }
        for d in dirs {
            self.aged += 1;
            let t = std::time::SystemTime::now() - Duration::from_secs(1000) + Duration::from_nanos(self.aged);
            File::open(&d).unwrap().set_modified(t).unwrap();
        }
    }

    fn stepped(&mut self) {
        self.needs_step = false;
        self.unseen = false;
        for p in &mut self.pods {
            for c in &mut p.ctrs {
                c.unread = false;
            }
        }
    }
}

fn shm_tempdir() -> tempfile::TempDir {
    if Path::new("/dev/shm").is_dir()
        && let Ok(d) = tempfile::tempdir_in("/dev/shm")
    {
        return d;
    }
    tempfile::tempdir().unwrap()
}

/// Returns the rescan's directory listings reused (the directory unchanged) and made.
fn run_seed(seed: u64, ops: usize) -> (u64, u64) {
    let tmp = shm_tempdir();
    let root = tmp.path().join("pods");
    std::fs::create_dir_all(&root).unwrap();
    let mut opts = TailerOptions::new(&root, tmp.path().join("positions"));
    opts.node_name = NODE.into();
    // Small batches: pushes and checkpoints happen in the middle of files.
    opts.batch_bytes = 100 + (seed % 5) as usize * 200;
    opts.partial_timeout = Duration::from_secs(3600);
    let sink = Arc::new(MemSink::default());
    let stats = Arc::new(TailerStats::default());
    let new_tailer = |sink: &Arc<MemSink>| {
        Tailer::new(
            opts.clone(),
            Arc::clone(sink) as Arc<dyn LogSink>,
            Arc::new(PathLabels),
            Arc::clone(&stats),
        )
    };
    let mut w = World {
        rng: Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
        root: root.clone(),
        pods: Vec::new(),
        next_pod: 0,
        ts: 1_795_248_000_000_000_000,
        seq: 0,
        expected: BTreeMap::new(),
        needs_step: false,
        unseen: false,
        aged: 0,
    };
    w.add_pod();
    let mut tailer = new_tailer(&sink);
    let t0 = Instant::now();
    let mut log = Vec::new();
    for i in 0..ops {
        let now = t0 + Duration::from_millis(i as u64);
        let op = w.rng.below(100);
        if w.pods.is_empty() {
            w.add_pod();
        }
        let p = w.rng.below(w.pods.len() as u64) as usize;
        let c = w.rng.below(w.pods[p].ctrs.len() as u64) as usize;
        let name = match op {
            0..=34 => {
                for _ in 0..1 + w.rng.below(4) {
                    w.write_full(p, c);
                }
                "write"
            }
            35..=42 => {
                let s = w.stream();
                let end = w.rng.chance(50);
                w.continue_partial(p, c, s, end);
                "partial"
            }
            43..=47 => {
                w.rotate(p, c);
                "rotate"
            }
            48..=50 => {
                w.restart_container(p, c);
                "restart container"
            }
            51..=53 => {
                w.copytruncate(p, c);
                "copytruncate"
            }
            54..=56 => {
                w.gc_rotated(p, c);
                "gc rotated"
            }
            57..=58 => {
                w.delete_pod(p);
                "delete pod"
            }
            59..=61 => {
                w.add_pod();
                "add pod"
            }
            62..=66 => {
                sink.fail.store(true, Ordering::SeqCst);
                let _ = tailer.step(now, true);
                sink.fail.store(false, Ordering::SeqCst);
                "step with failing sink"
            }
            75..=78 if !w.needs_step => {
                // kill -9 between a push and its checkpoint: the pending positions must be resolved
                // by asking the sink, or the batch is stored twice.
                tailer.crash_after_push = true;
                let _ = tailer.step(now, true);
                tailer = new_tailer(&sink);
                w.unseen = true;
                "crash after push"
            }
            79..=84 => {
                // Time passes: every directory's mtime moves a distinct amount into the past, so
                // the next rescans may reuse their listings until something changes one.
                w.age_dirs();
                "age directories"
            }
            67..=74 if !w.needs_step => {
                // Crash: no shutdown; whatever the last checkpoint says is where the next one starts.
                if w.rng.chance(50) {
                    tailer.shutdown();
                }
                tailer = new_tailer(&sink);
                // The new process holds no descriptors until its first scan.
                w.unseen = true;
                "collector restart"
            }
            _ => {
                let full = w.rng.chance(80);
                if tailer.step(now, full).is_ok() && full {
                    w.stepped();
                }
                "step"
            }
        };
        log.push(name);
    }
    // Drain: steps until nothing changes, then far in the future so partial lines time out.
    tailer.step(t0 + Duration::from_millis(ops as u64), true).unwrap();
    tailer.step(t0 + Duration::from_secs(7200), true).unwrap();
    for p in 0..w.pods.len() {
        for c in 0..w.pods[p].ctrs.len() {
            w.abandon_partials(p, c);
        }
    }
    let got = sink.got.lock();
    for (k, want) in &w.expected {
        let have = got.get(k).cloned().unwrap_or_default();
        if have != *want {
            let show = |v: &[(i64, Vec<u8>)]| -> Vec<String> {
                v.iter()
                    .map(|(t, l)| format!("{t} {}", String::from_utf8_lossy(l)))
                    .collect()
            };
            panic!(
                "seed {seed}: stream {k:?}\nwant {:#?}\nhave {:#?}\nops {log:?}",
                show(want),
                show(&have)
            );
        }
    }
    for k in got.keys() {
        assert!(w.expected.contains_key(k), "seed {seed}: unexpected stream {k:?}");
    }
    (
        stats.dir_listings_reused.load(Ordering::Relaxed),
        stats.dir_listings.load(Ordering::Relaxed),
    )
}

#[test]
fn tailer_matches_model() {
    let seeds: u64 = std::env::var("TAILER_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let ops: usize = std::env::var("TAILER_MODEL_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(160);
    let first: u64 = std::env::var("TAILER_MODEL_FIRST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let (mut reused, mut listed) = (0, 0);
    for seed in first..first + seeds {
        let (r, l) = run_seed(seed, ops);
        reused += r;
        listed += l;
    }
    // The unchanged-directory shortcut must have been taken, or the test says nothing about it.
    assert!(reused > 0, "no rescan reused a listing ({listed} listings made)");
    eprintln!("tailer model: {reused} listings reused, {listed} made");
}

#[test]
fn label_names_and_text() {
    for (raw, want) in [
        ("app", "app"),
        ("app.kubernetes.io/name", "app_kubernetes_io_name"),
        ("9lives", "_9lives"),
        ("", "_"),
    ] {
        assert_eq!(sanitize_label_name(raw), want);
    }
    let mut pairs = vec![
        ("pod".to_string(), "p\"q".to_string()),
        ("app".to_string(), "a\\b".to_string()),
    ];
    let text = label_text(&mut pairs);
    assert_eq!(text, r#"{app="a\\b", pod="p\"q"}"#);
    let back = crate::model::text::parse_label_text(&text).unwrap();
    assert_eq!(back, vec![("app".into(), "a\\b".into()), ("pod".into(), "p\"q".into())]);
}
