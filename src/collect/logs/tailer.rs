//! The tailer's state machine: directories, files, partial joins, the batch, and the run loop.
//!
//! [`Tailer::step`] is the whole algorithm without any waiting (the model test drives it directly);
//! [`Tailer::run`] adds inotify, the rescan timer, partial-line deadlines and the stop signal.

use super::checkpoint::{self, FINGERPRINT_MAX, Position, Probe};
use super::parse::{self, Format, Stream};
use super::{
    ErrorReason, LabelProvider, LogSink, PodRef, SinkStream, TailerError, TailerOptions, TailerStats, label_text,
    sanitize_label_name,
};
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// First size of the shared read buffer; it grows (once, shared by all files) for longer physical
/// lines up to `max_line_size + READ_CHUNK`.
const READ_CHUNK: usize = 64 << 10;

type FileKey = (u64, u64);
/// (ts, start, end in the batch arena)
type ArenaEntry = (i64, usize, usize);
/// (reading order key, identity, path, size) of a directory entry.
type Listed = ((u64, u8, String), FileKey, PathBuf, u64);

/// Wakes [`Tailer::run`] for shutdown (an eventfd the run loop polls next to inotify).
pub struct StopSignal {
    fd: OwnedFd,
    stopped: AtomicBool,
}

impl StopSignal {
    pub fn new() -> std::io::Result<StopSignal> {
        // SAFETY: eventfd(2) with constant flags; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(StopSignal {
            fd,
            stopped: AtomicBool::new(false),
        })
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. A failure (counter overflow) still
        // leaves it readable, which is all the waiter needs.
        unsafe {
            libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

/// A partial line being joined (one per file and stream).
struct Pending {
    ts: i64,
    /// File offset of its first physical line (what the checkpoint records).
    start: u64,
    buf: Vec<u8>,
    cut: bool,
    last: Instant,
}

struct TailFile {
    key: FileKey,
    /// `None` once drained and finished (re-opened by path if it grows again).
    file: Option<File>,
    path: PathBuf,
    dir: PathBuf,
    fp_len: u64,
    fp_crc: u32,
    /// End of the last complete physical line processed.
    offset: u64,
    format: Option<Format>,
    pending: [Option<Pending>; 2],
    /// Resuming inside already-stored lines: before `replay_until`, a line of stream `s` is kept
    /// only from `replay_from[s]` on (see `checkpoint`).
    replay_until: u64,
    replay_from: [Option<u64>; 2],
    /// Inside a physical line longer than the buffer cap: drop bytes up to the next newline.
    skip_line: bool,
    gone: bool,
    rotated: bool,
}

struct ContainerDir {
    labels: [Arc<str>; 2],
    /// Files in reading order: oldest first.
    files: Vec<FileKey>,
    /// The last listing, reused while the directory is unchanged (see [`Listing`]).
    listing: Option<Listing<Vec<Listed>>>,
}

/// A directory's entries as listed when its mtime was `mtime`. A rescan lists a directory again
/// only if its mtime moved, or if the listing began less than [`LISTING_TRUST`] after the mtime
/// (a change in the same coarse clock tick as the listing would leave the mtime as it was). The
/// safety-net rescan of 200 quiet files listed 400 directories and stat'ed each file every 10 s:
/// 3.9 ms CPU per rescan, about half the tailer's idle cost (`cargo bench --bench tailer`).
#[derive(Clone)]
struct Listing<T> {
    mtime: (i64, i64),
    /// Wall-clock seconds and nanoseconds when the directory was stat'ed before listing.
    listed_at: (i64, i64),
    entries: T,
}

/// How long after a directory's mtime a listing must have begun to be trusted: far above the
/// kernel's timestamp granularity (a jiffy, <= 10 ms).
const LISTING_TRUST: i64 = 1_000_000_000;

/// A directory's mtime and the wall-clock time now, as a [`Listing`] records them.
fn dir_stamp(dir: &Path) -> Option<((i64, i64), (i64, i64))> {
    let m = std::fs::metadata(dir).ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some((
        (m.mtime(), m.mtime_nsec()),
        (now.as_secs() as i64, i64::from(now.subsec_nanos())),
    ))
}

impl<T: Clone> Listing<T> {
    /// The entries, if `mtime` (now) is the recorded one and the listing is trusted.
    fn reuse(this: Option<&Self>, mtime: (i64, i64)) -> Option<T> {
        let l = this?;
        let ns = |(s, n): (i64, i64)| s.saturating_mul(1_000_000_000).saturating_add(n);
        (l.mtime == mtime && ns(l.listed_at) - ns(l.mtime) >= LISTING_TRUST).then(|| l.entries.clone())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DirKind {
    Root,
    Pod,
    Container,
}

enum Read {
    More,
    BatchFull,
    Eof,
}

/// Lines gathered for one push: one arena, entries grouped by stream in arrival order.
#[derive(Default)]
struct Batch {
    arena: Vec<u8>,
    streams: Vec<(Arc<str>, Vec<ArenaEntry>)>,
    index: HashMap<Arc<str>, usize>,
    last: Option<(Arc<str>, usize)>,
    entries: usize,
}

impl Batch {
    fn push(&mut self, labels: &Arc<str>, ts: i64, line: &[u8]) {
        let slot = match &self.last {
            Some((l, s)) if Arc::ptr_eq(l, labels) => *s,
            _ => {
                let s = match self.index.get(labels) {
                    Some(s) => *s,
                    None => {
                        self.streams.push((Arc::clone(labels), Vec::new()));
                        self.index.insert(Arc::clone(labels), self.streams.len() - 1);
                        self.streams.len() - 1
                    }
                };
                self.last = Some((Arc::clone(labels), s));
                s
            }
        };
        let start = self.arena.len();
        self.arena.extend_from_slice(line);
        if let Some((_, v)) = self.streams.get_mut(slot) {
            v.push((ts, start, self.arena.len()));
        }
        self.entries += 1;
    }

    fn clear(&mut self) {
        self.arena.clear();
        self.streams.clear();
        self.index.clear();
        self.last = None;
        self.entries = 0;
        if self.arena.capacity() > 64 << 20 {
            self.arena = Vec::new();
        }
    }
}

/// Everything a read needs besides the file itself (split from the file maps for borrowing).
struct Io {
    opts: TailerOptions,
    stats: Arc<TailerStats>,
    buf: Vec<u8>,
    batch: Batch,
    now: Instant,
}

pub struct Tailer {
    io: Io,
    sink: Arc<dyn LogSink>,
    labels: Arc<dyn LabelProvider>,
    files: HashMap<FileKey, TailFile>,
    dirs: BTreeMap<PathBuf, ContainerDir>,
    /// Positions loaded at start, matched to files as they are found (then dropped).
    restored: HashMap<FileKey, Position>,
    relist: BTreeSet<PathBuf>,
    dirty: BTreeSet<PathBuf>,
    /// Pod directories' last listings (their container directories), see [`Listing`].
    pod_listings: HashMap<PathBuf, Listing<Vec<PathBuf>>>,
    positions_changed: bool,
    ckpt_buf: Vec<u8>,
    watcher: Option<Inotify>,
    watches: HashMap<WatchDescriptor, (PathBuf, DirKind)>,
    watched: HashMap<PathBuf, WatchDescriptor>,
    /// The label provider's generation the directories' labels were derived at.
    labels_generation: u64,
    /// New container directories waiting for their pod's labels (`TailerOptions::pod_wait`), and
    /// since when.
    waiting: BTreeMap<PathBuf, Instant>,
    /// Test hook: stop dead between a push and its checkpoint, like a kill -9 there.
    #[cfg(test)]
    pub(crate) crash_after_push: bool,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TailerError + 'a {
    move |source| TailerError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Reading order inside a container directory: by restart number, a rotated `N.log.<suffix>`
/// before the live `N.log`, rotations by suffix (the kubelet's `YYYYMMDD-HHMMSS` sorts by time).
fn order_key(name: &str) -> Option<(u64, u8, String)> {
    if name.ends_with(".gz") || name.ends_with(".tmp") {
        return None;
    }
    let (n, rest) = name.split_once(".log")?;
    let n: u64 = n.parse().unwrap_or(u64::MAX);
    match rest.strip_prefix('.') {
        None if rest.is_empty() => Some((n, 1, String::new())),
        Some(suffix) => Some((n, 0, suffix.to_string())),
        None => None,
    }
}

fn read_full_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn fingerprint(f: &File, len: u64) -> std::io::Result<(u64, u32)> {
    let mut b = [0u8; FINGERPRINT_MAX as usize];
    let want = len.min(FINGERPRINT_MAX) as usize;
    let n = read_full_at(f, &mut b[..want], 0)?;
    Ok((n as u64, crc32fast::hash(&b[..n])))
}

impl Io {
    fn emit_pending(&mut self, labels: &Arc<str>, p: Pending) {
        self.batch.push(labels, p.ts, &p.buf);
    }

    fn append_capped(&self, p: &mut Pending, msg: &[u8]) {
        let cap = self.opts.max_line_size.saturating_add(1);
        let room = cap.saturating_sub(p.buf.len());
        if msg.len() > room {
            p.buf.extend_from_slice(&msg[..room]);
            if !p.cut {
                p.cut = true;
                self.stats.lines_cut.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            p.buf.extend_from_slice(msg);
        }
    }

    fn handle_line(&mut self, f: &mut TailFile, labels: &[Arc<str>; 2], line: &[u8], off: u64) {
        if f.format.is_none() {
            f.format = parse::detect(line);
        }
        let Some(p) = f.format.and_then(|fmt| parse::parse(fmt, line)) else {
            self.stats.error(ErrorReason::Parse);
            return;
        };
        let s = p.stream as usize;
        if off < f.replay_until && f.replay_from[s].is_none_or(|from| off < from) {
            return;
        }
        match (f.pending[s].take(), p.partial) {
            (None, false) => self.batch.push(&labels[s], p.ts, &p.msg),
            (None, true) => {
                let mut pd = Pending {
                    ts: p.ts,
                    start: off,
                    buf: Vec::new(),
                    cut: false,
                    last: self.now,
                };
                self.append_capped(&mut pd, &p.msg);
                f.pending[s] = Some(pd);
            }
            (Some(mut pd), partial) => {
                self.append_capped(&mut pd, &p.msg);
                pd.last = self.now;
                if partial {
                    f.pending[s] = Some(pd);
                } else {
                    self.emit_pending(&labels[s], pd);
                }
            }
        }
    }

    fn flush_pending(&mut self, f: &mut TailFile, labels: &[Arc<str>; 2]) {
        for (slot, l) in f.pending.iter_mut().zip(labels) {
            if let Some(p) = slot.take() {
                self.emit_pending(l, p);
                self.stats.partial_eof.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn restart_at_zero(&mut self, f: &mut TailFile, labels: &[Arc<str>; 2]) {
        self.stats.truncations.fetch_add(1, Ordering::Relaxed);
        self.flush_pending(f, labels);
        f.offset = 0;
        f.fp_len = 0;
        f.fp_crc = crc32fast::hash(&[]);
        f.replay_until = 0;
        f.replay_from = [None, None];
        f.skip_line = false;
    }

    /// Reads one buffer's worth of `f` from its offset.
    fn read_chunk(&mut self, f: &mut TailFile, labels: &[Arc<str>; 2]) -> Result<Read, TailerError> {
        let Some(file) = f.file.as_ref() else {
            return Ok(Read::Eof);
        };
        let meta = file.metadata().map_err(io_err("stat", &f.path))?;
        let size = meta.len();
        // Same inode, new content: shrank below our offset, or its head is not what we saw.
        let (n, crc) = fingerprint(file, f.fp_len).map_err(io_err("read", &f.path))?;
        if size < f.offset || n < f.fp_len || crc != f.fp_crc {
            self.restart_at_zero(f, labels);
        }
        if f.fp_len < FINGERPRINT_MAX && size > f.fp_len {
            let file = f
                .file
                .as_ref()
                .ok_or_else(|| io_err("read", &f.path)(std::io::ErrorKind::NotFound.into()))?;
            let (n, crc) = fingerprint(file, size).map_err(io_err("read", &f.path))?;
            f.fp_len = n;
            f.fp_crc = crc;
        }
        if f.offset >= size {
            if f.replay_until <= f.offset {
                f.replay_from = [None, None];
            }
            return Ok(Read::Eof);
        }
        let want = (size - f.offset).min(self.buf.len() as u64) as usize;
        let file = f
            .file
            .as_ref()
            .ok_or_else(|| io_err("read", &f.path)(std::io::ErrorKind::NotFound.into()))?;
        let mut buf = std::mem::take(&mut self.buf);
        let res = read_full_at(file, &mut buf[..want], f.offset);
        let n = match res {
            Ok(n) => n,
            Err(e) => {
                self.buf = buf;
                return Err(io_err("read", &f.path)(e));
            }
        };
        let mut start = 0;
        if f.skip_line {
            match memchr::memchr(b'\n', &buf[..n]) {
                Some(i) => {
                    start = i + 1;
                    f.skip_line = false;
                }
                None => start = n,
            }
        }
        let mut full = false;
        while let Some(nl) = memchr::memchr(b'\n', &buf[start..n]) {
            let off = f.offset + start as u64;
            self.handle_line(f, labels, &buf[start..start + nl], off);
            start += nl + 1;
            if self.batch.arena.len() >= self.opts.batch_bytes {
                full = true;
                break;
            }
        }
        let mut outcome = if full { Read::BatchFull } else { Read::More };
        if start == 0 {
            if n < buf.len() {
                // An incomplete last line: wait for its newline.
                outcome = Read::Eof;
            } else if buf.len() < self.opts.max_line_size.saturating_add(READ_CHUNK) {
                let grown = (buf.len() * 2).min(self.opts.max_line_size.saturating_add(READ_CHUNK));
                buf.resize(grown, 0);
            } else {
                // Longer than any line we keep: parse its head, drop the rest up to its newline.
                self.stats.error(ErrorReason::Oversize);
                let off = f.offset;
                self.handle_line(f, labels, &buf[..n], off);
                f.skip_line = true;
                start = n;
            }
        }
        f.offset += start as u64;
        if f.offset >= f.replay_until {
            f.replay_from = [None, None];
        }
        self.buf = buf;
        Ok(outcome)
    }
}

impl Tailer {
    pub fn new(
        opts: TailerOptions,
        sink: Arc<dyn LogSink>,
        labels: Arc<dyn LabelProvider>,
        stats: Arc<TailerStats>,
    ) -> Tailer {
        let restored = match Self::load_positions(&opts.positions_file, sink.as_ref(), &stats) {
            Ok(Some(v)) => v.into_iter().map(|p| ((p.dev, p.ino), p)).collect(),
            Ok(None) => HashMap::new(),
            Err(e) => {
                // Starting every file from its beginning duplicates; the alternative is losing.
                tracing::warn!(error = %e, "Ignoring the tailer's positions file: files are read from their start.");
                stats.error(ErrorReason::Checkpoint);
                HashMap::new()
            }
        };
        Tailer {
            io: Io {
                opts,
                stats,
                buf: vec![0; READ_CHUNK],
                batch: Batch::default(),
                now: Instant::now(),
            },
            sink,
            labels,
            files: HashMap::new(),
            dirs: BTreeMap::new(),
            restored,
            relist: BTreeSet::new(),
            dirty: BTreeSet::new(),
            pod_listings: HashMap::new(),
            positions_changed: false,
            ckpt_buf: Vec::new(),
            watcher: None,
            watches: HashMap::new(),
            watched: HashMap::new(),
            labels_generation: 0,
            waiting: BTreeMap::new(),
            #[cfg(test)]
            crash_after_push: false,
        }
    }

    /// The positions to resume from: the pending ones if the sink holds their batch, else the last
    /// committed ones (see `checkpoint`).
    fn load_positions(
        path: &Path,
        sink: &dyn LogSink,
        stats: &TailerStats,
    ) -> Result<Option<Vec<Position>>, checkpoint::CheckpointError> {
        let pending = checkpoint::pending_path(path);
        match checkpoint::load(&pending) {
            Ok(Some((positions, Some(probe)))) => match sink.contains(&probe) {
                Ok(true) => {
                    tracing::info!("The batch in flight at the last stop was stored; resuming after it.");
                    checkpoint::promote(path)?;
                    return Ok(Some(positions));
                }
                Ok(false) => {
                    tracing::info!("The batch in flight at the last stop was not stored; reading it again.");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot ask the store about the batch in flight at the last stop; reading it again.");
                    stats.error(ErrorReason::Sink);
                }
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "Ignoring a damaged pending positions file."),
        }
        // Either way the pending file is settled now.
        let _ = std::fs::remove_file(&pending);
        Ok(checkpoint::load(path)?.map(|(p, _)| p))
    }

    pub fn stats(&self) -> &Arc<TailerStats> {
        &self.io.stats
    }

    fn watch(&mut self, path: &Path, kind: DirKind) {
        let Some(w) = self.watcher.as_mut() else { return };
        if self.watched.contains_key(path) {
            return;
        }
        let mask = match kind {
            DirKind::Container => {
                WatchMask::CREATE
                    | WatchMask::MODIFY
                    | WatchMask::MOVED_FROM
                    | WatchMask::MOVED_TO
                    | WatchMask::DELETE
                    | WatchMask::DELETE_SELF
                    | WatchMask::ONLYDIR
            }
            _ => {
                WatchMask::CREATE
                    | WatchMask::MOVED_TO
                    | WatchMask::MOVED_FROM
                    | WatchMask::DELETE
                    | WatchMask::DELETE_SELF
                    | WatchMask::ONLYDIR
            }
        };
        match w.watches().add(path, mask) {
            Ok(wd) => {
                self.watches.insert(wd.clone(), (path.to_path_buf(), kind));
                self.watched.insert(path.to_path_buf(), wd);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                // ENOSPC (max_user_watches): the periodic rescan still finds this directory's changes.
                tracing::warn!(path = %path.display(), error = %e, "Cannot watch a log directory; relying on the rescan.");
                self.io.stats.error(ErrorReason::Watch);
            }
        }
    }

    fn unwatch(&mut self, path: &Path) {
        if let Some(wd) = self.watched.remove(path) {
            self.watches.remove(&wd);
            if let Some(w) = self.watcher.as_mut() {
                // Fails when the directory is already gone (the kernel dropped the watch): fine.
                let _ = w.watches().remove(wd);
            }
        }
    }

    fn container_labels(&self, pod_dir: &str, container: &str) -> [Arc<str>; 2] {
        let r = pod_ref(pod_dir);
        let (ns, pod) = (r.namespace, r.name);
        let pod_labels = self.labels.pod_labels(&r);
        let mut base = vec![
            ("namespace".to_string(), ns.to_string()),
            ("pod".to_string(), pod.to_string()),
            ("container".to_string(), container.to_string()),
        ];
        if !self.io.opts.node_name.is_empty() {
            base.push(("node".to_string(), self.io.opts.node_name.clone()));
        }
        let app = pod_labels.iter().find(|(k, _)| k == "app").map(|(_, v)| v.as_str());
        base.push(("job".to_string(), format!("{ns}/{}", app.unwrap_or(container))));
        for want in &self.io.opts.pod_labels {
            if let Some((_, v)) = pod_labels.iter().find(|(k, _)| k == want) {
                let name = sanitize_label_name(want);
                if !base.iter().any(|(n, _)| *n == name) && name != "stream" {
                    base.push((name, v.clone()));
                }
            }
        }
        [Stream::Stdout, Stream::Stderr].map(|s| {
            let mut pairs = base.clone();
            pairs.push(("stream".to_string(), s.as_str().to_string()));
            Arc::from(label_text(&mut pairs))
        })
    }

    /// Lists the whole tree: new directories get watches, vanished ones have their files drained.
    fn scan_all(&mut self) {
        let root = self.io.opts.root.clone();
        self.watch(&root, DirKind::Root);
        let mut seen = BTreeSet::new();
        let mut pods_seen = std::collections::HashSet::new();
        if let Ok(pods) = std::fs::read_dir(&root) {
            for pod in pods.flatten() {
                if pod.file_type().is_ok_and(|t| t.is_dir()) {
                    let path = pod.path();
                    self.scan_pod(&path, &mut seen);
                    pods_seen.insert(path);
                }
            }
        }
        self.pod_listings.retain(|pod, _| pods_seen.contains(pod));
        let vanished: Vec<PathBuf> = self.dirs.keys().filter(|d| !seen.contains(*d)).cloned().collect();
        for d in vanished {
            self.relist.insert(d.clone());
            self.dirty.insert(d);
        }
    }

    fn scan_pod(&mut self, pod: &Path, seen: &mut BTreeSet<PathBuf>) {
        self.watch(pod, DirKind::Pod);
        let stat = dir_stamp(pod);
        let ctrs = match stat.and_then(|(m, _)| Listing::reuse(self.pod_listings.get(pod), m)) {
            Some(c) => {
                self.io.stats.dir_listings_reused.fetch_add(1, Ordering::Relaxed);
                c
            }
            None => {
                self.io.stats.dir_listings.fetch_add(1, Ordering::Relaxed);
                let Ok(entries) = std::fs::read_dir(pod) else { return };
                let ctrs: Vec<PathBuf> = entries
                    .flatten()
                    .filter(|c| c.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|c| c.path())
                    .collect();
                if let Some((mtime, listed_at)) = stat {
                    let l = Listing {
                        mtime,
                        listed_at,
                        entries: ctrs.clone(),
                    };
                    self.pod_listings.insert(pod.to_path_buf(), l);
                }
                ctrs
            }
        };
        for path in ctrs {
            self.watch(&path, DirKind::Container);
            seen.insert(path.clone());
            self.relist.insert(path.clone());
            self.dirty.insert(path);
        }
    }

    /// A new container directory whose pod the label provider expects to learn of waits (up to
    /// `pod_wait` from when it was first seen): read now, its first lines would carry the path's
    /// labels only and land in another stream than the rest (another `job` when the pod has an
    /// `app` label). Promtail and Alloy avoid this by tailing only pods discovery has delivered.
    fn awaits_pod(&mut self, dir: &Path) -> bool {
        let since = *self.waiting.entry(dir.to_path_buf()).or_insert(self.io.now);
        if self.io.now.saturating_duration_since(since) < self.io.opts.pod_wait
            && self.labels.pending(&pod_ref(&dir_pod(dir)))
        {
            return true;
        }
        self.waiting.remove(dir);
        false
    }

    /// A container directory's labels, from its path and the label provider.
    fn dir_labels(&self, dir: &Path) -> [Arc<str>; 2] {
        let pod = dir_pod(dir);
        let ctr = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.container_labels(&pod, &ctr)
    }

    /// The provider's answers changed: every directory's labels are derived again (lines already
    /// gathered keep theirs). A node has some hundreds of container directories at most.
    fn relabel(&mut self) {
        let dirs: Vec<PathBuf> = self.dirs.keys().cloned().collect();
        for dir in dirs {
            let labels = self.dir_labels(&dir);
            if let Some(d) = self.dirs.get_mut(&dir) {
                d.labels = labels;
            }
        }
    }

    /// Lists one container directory: tracks new files, follows renames, notices deletions.
    fn scan_container(&mut self, dir: &Path) {
        if !self.dirs.contains_key(dir) {
            if std::fs::metadata(dir).is_err() {
                self.waiting.remove(dir);
                return;
            }
            if self.awaits_pod(dir) {
                return;
            }
            let labels = self.dir_labels(dir);
            self.dirs.insert(
                dir.to_path_buf(),
                ContainerDir {
                    labels,
                    files: Vec::new(),
                    listing: None,
                },
            );
        }
        let stat = dir_stamp(dir);
        let cached = stat.and_then(|(m, _)| Listing::reuse(self.dirs.get(dir).and_then(|d| d.listing.as_ref()), m));
        // Trusted only when every entry is a plain file that was stat'ed and opened: a symlink's
        // target (cri-dockerd's N.log -> the json file) can rotate without touching this directory.
        let mut clean = true;
        // Same entries as listed: only the sizes of files whose handles were closed can matter (a
        // late write to a rotated file reopens it); one of those gone means listing again.
        let cached = cached.and_then(|mut found: Vec<Listed>| {
            for (_, key, path, size) in &mut found {
                if self.files.get(key).is_none_or(|f| f.file.is_none()) {
                    match std::fs::metadata(&*path) {
                        Ok(m) if (m.dev(), m.ino()) == *key => *size = m.len(),
                        _ => return None,
                    }
                }
            }
            Some(found)
        });
        let reused = cached.is_some();
        let found: Vec<Listed> = match cached {
            Some(found) => {
                self.io.stats.dir_listings_reused.fetch_add(1, Ordering::Relaxed);
                found
            }
            None => {
                self.io.stats.dir_listings.fetch_add(1, Ordering::Relaxed);
                let mut found = Vec::new();
                match std::fs::read_dir(dir) {
                    Ok(entries) => {
                        for e in entries.flatten() {
                            let name = e.file_name();
                            let Some(key) = order_key(&name.to_string_lossy()) else {
                                continue;
                            };
                            clean &= e.file_type().is_ok_and(|t| t.is_file());
                            let path = e.path();
                            // Follows a symlink (cri-dockerd's N.log -> the json file): identity is the target's.
                            let Ok(m) = std::fs::metadata(&path) else {
                                clean = false;
                                continue;
                            };
                            if !m.is_file() {
                                continue;
                            }
                            found.push((key, (m.dev(), m.ino()), path, m.len()));
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => clean = false,
                    Err(_) => {
                        self.io.stats.error(ErrorReason::Read);
                        return;
                    }
                }
                found.sort();
                found
            }
        };

        let mut order: Vec<FileKey> = Vec::new();
        for (okey, fkey, path, size) in &found {
            let rotated = okey.1 == 0;
            if let Some(f) = self.files.get_mut(fkey) {
                if rotated && !f.rotated {
                    f.rotated = true;
                    self.io.stats.rotations.fetch_add(1, Ordering::Relaxed);
                }
                f.path = path.clone();
                if f.file.is_none() && *size != f.offset {
                    match File::open(path) {
                        Ok(file) => {
                            f.file = Some(file);
                            self.io.stats.files_open.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => self.io.stats.error(ErrorReason::Open),
                    }
                }
                if f.gone {
                    f.gone = false;
                }
                order.push(*fkey);
                continue;
            }
            // A file not tracked as listed makes the listing untrusted (listed again next time).
            let file = match File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    clean = false;
                    continue;
                }
                Err(_) => {
                    self.io.stats.error(ErrorReason::Open);
                    clean = false;
                    continue;
                }
            };
            // The inode could have changed between the stat and the open (rotation): trust the fd.
            let Ok(m) = file.metadata() else {
                clean = false;
                continue;
            };
            let key = (m.dev(), m.ino());
            clean &= key == *fkey;
            if self.files.contains_key(&key) {
                continue;
            }
            let (fp_len, fp_crc) = fingerprint(&file, m.len()).unwrap_or((0, crc32fast::hash(&[])));
            let mut tf = TailFile {
                key,
                file: Some(file),
                path: path.clone(),
                dir: dir.to_path_buf(),
                fp_len,
                fp_crc,
                offset: 0,
                format: None,
                pending: [None, None],
                replay_until: 0,
                replay_from: [None, None],
                skip_line: false,
                gone: false,
                rotated,
            };
            if let Some(p) = self.restored.remove(&key) {
                // Same inode and the same head bytes as when the position was saved: resume.
                let same = p.fp_len <= fp_len
                    && tf
                        .file
                        .as_ref()
                        .and_then(|f| fingerprint(f, p.fp_len).ok())
                        .is_some_and(|(n, c)| n == p.fp_len && c == p.fp_crc);
                if same {
                    let from = p.pending.iter().flatten().min().copied();
                    tf.offset = from.map_or(p.offset, |m| m.min(p.offset));
                    tf.replay_until = p.offset;
                    tf.replay_from = p.pending;
                }
            }
            self.io.stats.files_open.fetch_add(1, Ordering::Relaxed);
            self.io.stats.files_tracked.fetch_add(1, Ordering::Relaxed);
            self.positions_changed = true;
            self.files.insert(key, tf);
            order.push(key);
        }
        // Files we track that are no longer listed: deleted (or moved out). Drain, then release.
        let Some(d) = self.dirs.get_mut(dir) else { return };
        let mut gone: Vec<FileKey> = d.files.iter().filter(|k| !order.contains(k)).copied().collect();
        for k in &gone {
            if let Some(f) = self.files.get_mut(k)
                && !f.gone
            {
                f.gone = true;
                if f.file.is_some() {
                    self.io.stats.files_deleted_open.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        gone.extend(order);
        d.files = gone;
        if !reused {
            d.listing = match stat {
                Some((mtime, listed_at)) if clean => Some(Listing {
                    mtime,
                    listed_at,
                    entries: found,
                }),
                _ => None,
            };
        }
    }

    /// Reads every file of a container directory in order, pushing batches as they fill.
    fn read_container(&mut self, dir: &Path) -> Result<(), TailerError> {
        let Some(d) = self.dirs.get(dir) else { return Ok(()) };
        let order = d.files.clone();
        let labels = d.labels.clone();
        for (i, key) in order.iter().enumerate() {
            if let Some(f) = self.files.get_mut(key)
                && f.file.is_none()
                && !f.gone
            {
                // Closed once drained; a late write (the runtime's old descriptor after a rename)
                // opens it again.
                if let Ok(m) = std::fs::metadata(&f.path)
                    && (m.dev(), m.ino()) == f.key
                    && m.len() != f.offset
                    && let Ok(file) = File::open(&f.path)
                {
                    f.file = Some(file);
                    self.io.stats.files_open.fetch_add(1, Ordering::Relaxed);
                }
            }
            while let Some(f) = self.files.get_mut(key) {
                let r = match self.io.read_chunk(f, &labels) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "Reading a log file failed.");
                        self.io.stats.error(ErrorReason::Read);
                        Read::Eof
                    }
                };
                match r {
                    Read::More => {}
                    Read::BatchFull => self.commit()?,
                    Read::Eof => break,
                }
            }
            let Some(f) = self.files.get_mut(key) else { continue };
            // A newer file exists (rotation, container restart) or this one is deleted: nothing can
            // continue its partial lines any more.
            let finished = f.gone || i + 1 < order.len();
            if finished {
                self.io.flush_pending(f, &labels);
                if f.file.take().is_some() {
                    self.io.stats.files_open.fetch_sub(1, Ordering::Relaxed);
                    if f.gone {
                        self.io.stats.files_deleted_open.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
            if f.gone {
                self.files.remove(key);
                self.io.stats.files_tracked.fetch_sub(1, Ordering::Relaxed);
                self.positions_changed = true;
                if let Some(d) = self.dirs.get_mut(dir) {
                    d.files.retain(|k| k != key);
                }
            }
        }
        if let Some(d) = self.dirs.get(dir)
            && d.files.is_empty()
            && std::fs::metadata(dir).is_err()
        {
            self.dirs.remove(dir);
            self.unwatch(dir);
        }
        Ok(())
    }

    /// Partial lines idle past the timeout are stored as they are.
    fn flush_timeouts(&mut self) {
        let timeout = self.io.opts.partial_timeout;
        let now = self.io.now;
        for f in self.files.values_mut() {
            for s in 0..2 {
                if f.pending[s]
                    .as_ref()
                    .is_some_and(|p| now.saturating_duration_since(p.last) >= timeout)
                    && let Some(p) = f.pending[s].take()
                    && let Some(d) = self.dirs.get(&f.dir)
                {
                    self.io.emit_pending(&d.labels[s], p);
                    self.io.stats.partial_timeouts.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// When the next partial line times out, or a waiting directory is looked at again: every
    /// 100 ms (the provider's answer can change at any time), at the latest at its `pod_wait`.
    fn next_deadline(&self) -> Option<Instant> {
        let partial = self
            .files
            .values()
            .flat_map(|f| f.pending.iter().flatten())
            .map(|p| p.last + self.io.opts.partial_timeout)
            .min();
        let waiting = self
            .waiting
            .values()
            .map(|since| *since + self.io.opts.pod_wait)
            .min()
            .map(|d| d.min(Instant::now() + Duration::from_millis(100)));
        match (partial, waiting) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Pushes the batch, then checkpoints. On a sink error the batch stays for the next try.
    fn commit(&mut self) -> Result<(), TailerError> {
        let b = &self.io.batch;
        let n = b.entries;
        if n > 0 {
            let mut flat: Vec<(i64, &[u8])> = Vec::with_capacity(n);
            let mut ranges = Vec::with_capacity(b.streams.len());
            for (_, es) in &b.streams {
                let start = flat.len();
                flat.extend(es.iter().map(|&(ts, s, e)| (ts, &b.arena[s..e])));
                ranges.push(start..flat.len());
            }
            let streams: Vec<SinkStream<'_>> = b
                .streams
                .iter()
                .zip(ranges)
                .map(|((l, _), r)| SinkStream {
                    labels: l,
                    entries: &flat[r],
                })
                .collect();
            // The positions after this batch, with its last entry as probe, before the push.
            let probe = streams.last().and_then(|s| {
                s.entries.last().map(|(ts, line)| Probe {
                    ts: *ts,
                    line_crc: crc32fast::hash(String::from_utf8_lossy(line).as_bytes()),
                    labels: s.labels.to_string(),
                })
            });
            let pos = self.positions();
            let mut buf = std::mem::take(&mut self.ckpt_buf);
            checkpoint::encode(&pos, probe.as_ref(), &mut buf);
            let pending = checkpoint::pending_path(&self.io.opts.positions_file);
            let written = checkpoint::store(&pending, &buf);
            self.ckpt_buf = buf;
            if let Err(e) = written {
                self.io.stats.error(ErrorReason::Checkpoint);
                return Err(e.into());
            }
            if let Err(e) = self.sink.push(&streams) {
                self.io.stats.error(ErrorReason::Sink);
                return Err(TailerError::Sink(e));
            }
            #[cfg(test)]
            if self.crash_after_push {
                return Err(TailerError::Sink("simulated crash after the push".into()));
            }
            let bytes: usize = flat.iter().map(|(_, l)| l.len()).sum();
            let st = &self.io.stats;
            st.lines.fetch_add(n as u64, Ordering::Relaxed);
            st.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            st.batches.fetch_add(1, Ordering::Relaxed);
            self.io.batch.clear();
            if let Err(e) = checkpoint::promote(&self.io.opts.positions_file) {
                self.io.stats.error(ErrorReason::Checkpoint);
                self.positions_changed = true;
                return Err(e.into());
            }
            self.positions_changed = false;
            self.io.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        }
        if self.positions_changed {
            self.write_positions()?;
        }
        self.io.stats.lines_committed.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    fn positions(&self) -> Vec<Position> {
        let mut v: Vec<Position> = self
            .files
            .values()
            .map(|f| {
                let mut pending = [None, None];
                for (s, slot) in pending.iter_mut().enumerate() {
                    *slot = match (&f.pending[s], f.replay_from[s]) {
                        (Some(p), _) => Some(p.start),
                        // Still replaying: this stream's lines from here to `replay_until` are unread.
                        (None, Some(from)) if f.offset < f.replay_until => Some(from.max(f.offset)),
                        _ => None,
                    };
                }
                Position {
                    dev: f.key.0,
                    ino: f.key.1,
                    fp_len: f.fp_len,
                    fp_crc: f.fp_crc,
                    offset: f.offset.max(f.replay_until),
                    pending,
                    path: f.path.clone(),
                }
            })
            .collect();
        // Restored positions not matched yet (before the first full scan) are kept as they were.
        v.extend(self.restored.values().cloned());
        v.sort_by(|a, b| a.path.cmp(&b.path).then(a.ino.cmp(&b.ino)));
        v
    }

    fn write_positions(&mut self) -> Result<(), TailerError> {
        let pos = self.positions();
        let mut buf = std::mem::take(&mut self.ckpt_buf);
        checkpoint::encode(&pos, None, &mut buf);
        let res = checkpoint::store(&self.io.opts.positions_file, &buf);
        self.ckpt_buf = buf;
        match res {
            Ok(()) => {
                self.positions_changed = false;
                self.io.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.io.stats.error(ErrorReason::Checkpoint);
                Err(e.into())
            }
        }
    }

    /// One pass without waiting: a full rescan if asked, the directories events marked, partial
    /// timeouts, then a push and checkpoint of whatever was gathered.
    pub fn step(&mut self, now: Instant, full_rescan: bool) -> Result<(), TailerError> {
        self.io.now = now;
        if self.io.batch.entries > 0 {
            // A batch the sink refused last time goes first: nothing new is read meanwhile.
            self.commit()?;
        }
        let generation = self.labels.generation();
        if generation != self.labels_generation {
            self.labels_generation = generation;
            self.relabel();
        }
        if full_rescan {
            self.scan_all();
        }
        // Waiting directories are looked at on every step (a lookup each; there are few).
        self.relist.extend(self.waiting.keys().cloned());
        while let Some(dir) = self.relist.pop_first() {
            self.scan_container(&dir);
        }
        if full_rescan {
            // Positions of files a full scan did not find belong to files deleted meanwhile.
            self.restored.clear();
        }
        while let Some(dir) = self.dirty.first().cloned() {
            self.read_container(&dir)?;
            self.dirty.remove(&dir);
        }
        self.flush_timeouts();
        self.commit()
    }

    /// Writes the final positions (after one last push attempt of a held batch).
    pub fn shutdown(&mut self) {
        if let Err(e) = self.commit() {
            tracing::warn!(error = %e, "The tailer's last batch was not stored; it is read again at the next start.");
            // Positions must not cover the unstored batch: save the ones of the last commit.
            return;
        }
        if let Err(e) = self.write_positions() {
            tracing::warn!(error = %e, "Cannot write the tailer's final positions.");
        }
    }

    fn on_events(&mut self, buf: &mut [u8]) -> bool {
        let mut full = false;
        let Some(w) = self.watcher.as_mut() else { return false };
        let mut marks: Vec<(PathBuf, DirKind, bool)> = Vec::new();
        let mut removed = Vec::new();
        loop {
            let events = match w.read_events(buf) {
                Ok(ev) => ev,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.io.stats.error(ErrorReason::Watch);
                    full = true;
                    break;
                }
            };
            let mut any = false;
            for ev in events {
                any = true;
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    full = true;
                    continue;
                }
                if ev.mask.contains(EventMask::IGNORED) {
                    removed.push(ev.wd.clone());
                    continue;
                }
                let Some((path, kind)) = self.watches.get(&ev.wd) else {
                    continue;
                };
                let list = !ev.mask.contains(EventMask::MODIFY) || ev.mask.contains(EventMask::ISDIR);
                marks.push((path.clone(), *kind, list));
            }
            if !any {
                break;
            }
        }
        for wd in removed {
            if let Some((p, _)) = self.watches.remove(&wd) {
                self.watched.remove(&p);
            }
        }
        for (path, kind, list) in marks {
            match kind {
                DirKind::Root => full = true,
                DirKind::Pod => {
                    let mut seen = BTreeSet::new();
                    self.scan_pod(&path, &mut seen);
                    // A container directory removed from a live pod: drain its files.
                    let gone: Vec<PathBuf> = self
                        .dirs
                        .keys()
                        .filter(|d| d.parent() == Some(path.as_path()) && !seen.contains(*d))
                        .cloned()
                        .collect();
                    for d in gone {
                        self.relist.insert(d.clone());
                        self.dirty.insert(d);
                    }
                }
                DirKind::Container => {
                    if list {
                        self.relist.insert(path.clone());
                    }
                    self.dirty.insert(path);
                }
            }
        }
        full
    }

    /// The loop: inotify events and the rescan timer drive [`Tailer::step`] until `stop`.
    pub fn run(mut self, stop: &StopSignal) {
        match Inotify::init() {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "inotify is unavailable; the tailer polls at the rescan interval.");
                self.io.stats.error(ErrorReason::Watch);
            }
        }
        let mut evbuf = vec![0u8; 64 << 10];
        let mut next_rescan = Instant::now();
        let mut retry_at: Option<Instant> = None;
        let mut full = true;
        while !stop.is_stopped() {
            let now = Instant::now();
            if now >= next_rescan {
                full = true;
            }
            if full {
                next_rescan = now + self.io.opts.rescan_interval;
            }
            if retry_at.is_none_or(|t| now >= t) {
                match self.step(now, full) {
                    Ok(()) => retry_at = None,
                    Err(e) => {
                        tracing::warn!(error = %e, "The tailer could not store or checkpoint a batch; retrying.");
                        retry_at = Some(now + Duration::from_millis(500));
                    }
                }
                full = false;
            }
            let mut wake = next_rescan;
            if let Some(d) = self.next_deadline() {
                wake = wake.min(d);
            }
            if let Some(r) = retry_at {
                wake = wake.min(r);
            }
            let timeout = wake.saturating_duration_since(Instant::now());
            let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
            // Round up so a deadline 0.4 ms away does not spin.
            let ms = if timeout > Duration::from_millis(ms as u64) {
                ms + 1
            } else {
                ms
            };
            let mut fds = [
                libc::pollfd {
                    fd: stop.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.watcher.as_ref().map_or(-1, |w| w.as_raw_fd()),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: poll(2) over two live pollfd structs (a negative fd is ignored by the kernel).
            unsafe {
                libc::poll(fds.as_mut_ptr(), 2, ms);
            }
            if fds[1].revents != 0 {
                full |= self.on_events(&mut evbuf);
            }
        }
        self.shutdown();
    }
}

/// The pod directory name of a container directory (`<namespace>_<pod>_<uid>`).
fn dir_pod(dir: &Path) -> String {
    dir.parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A pod directory name as a [`PodRef`]; a name without two `_` is taken as the pod's.
fn pod_ref(pod_dir: &str) -> PodRef<'_> {
    let mut parts = pod_dir.splitn(3, '_');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(namespace), Some(name), Some(uid)) => PodRef { namespace, name, uid },
        _ => PodRef {
            namespace: "",
            name: pod_dir,
            uid: "",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, Vec<u8>)>>);

    impl LogSink for Collect {
        fn push(&self, streams: &[SinkStream<'_>]) -> Result<(), String> {
            let mut v = self.0.lock();
            for s in streams {
                let stream = if s.labels.contains("stream=\"stderr\"") {
                    "stderr"
                } else {
                    "stdout"
                };
                v.extend(s.entries.iter().map(|(_, l)| (stream.to_string(), l.to_vec())));
            }
            Ok(())
        }
    }

    /// Files (path under the root, content) read in one step with `max_line_size` 1024: the entries
    /// stored as (stream, line), and the error counts by reason.
    fn check(files: &[(&str, Vec<u8>)], want: &[(&str, Vec<u8>)], want_errors: &[(ErrorReason, u64)]) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pods");
        for (p, content) in files {
            let path = root.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        let mut opts = TailerOptions::new(&root, tmp.path().join("positions"));
        opts.max_line_size = 1024;
        let sink = Arc::new(Collect::default());
        let stats = Arc::new(TailerStats::default());
        let mut t = Tailer::new(opts, sink.clone(), Arc::new(super::super::PathLabels), stats.clone());
        t.step(Instant::now(), true).unwrap();
        let got = sink.0.lock().clone();
        let want: Vec<(String, Vec<u8>)> = want.iter().map(|(s, l)| (s.to_string(), l.clone())).collect();
        let show = |v: &[(String, Vec<u8>)]| -> Vec<String> {
            v.iter()
                .map(|(s, l)| {
                    format!(
                        "{s} {} bytes {:?}",
                        l.len(),
                        String::from_utf8_lossy(&l[..l.len().min(40)])
                    )
                })
                .collect()
        };
        assert_eq!(show(&got), show(&want));
        assert_eq!(got, want);
        for r in ErrorReason::ALL {
            let n = want_errors.iter().find(|(w, _)| *w == r).map_or(0, |(_, n)| *n);
            assert_eq!(stats.errors[r as usize].load(Ordering::Relaxed), n, "{}", r.as_str());
        }
    }

    /// The `app` label of pods by name, and whether an unknown pod is `pending`.
    #[derive(Default)]
    struct Pods {
        known: Mutex<Vec<(String, String)>>,
        watching: bool,
        generation: std::sync::atomic::AtomicU64,
    }

    impl LabelProvider for Pods {
        fn pod_labels(&self, pod: &PodRef<'_>) -> Vec<(String, String)> {
            let known = self.known.lock();
            let app = known.iter().find(|(n, _)| n == pod.name);
            app.map(|(_, a)| vec![("app".to_string(), a.clone())])
                .unwrap_or_default()
        }
        fn generation(&self) -> u64 {
            self.generation.load(Ordering::Relaxed)
        }
        fn pending(&self, pod: &PodRef<'_>) -> bool {
            self.watching && !self.known.lock().iter().any(|(n, _)| n == pod.name)
        }
    }

    /// Label texts of the lines a sink got, in order.
    #[derive(Default)]
    struct Labelled(Mutex<Vec<String>>);

    impl LogSink for Labelled {
        fn push(&self, streams: &[SinkStream<'_>]) -> Result<(), String> {
            let mut v = self.0.lock();
            for s in streams {
                v.extend(s.entries.iter().map(|_| s.labels.to_string()));
            }
            Ok(())
        }
    }

    /// A new pod's directory whose pod the provider is waiting for is read once the pod is known
    /// (its first line gets the pod's `app` as `job`), or after `pod_wait` with the path's labels;
    /// a provider that waits for nothing (no watch) has it read at once.
    #[test]
    fn new_pods_wait_for_their_labels() {
        // (watching, pod known after this many ms or never) -> job of each line, and steps
        // (at 0, 50, 100, ... ms) before the first line was read.
        let check = |watching: bool, known_at: Option<u64>, want_job: &str, want_steps: usize| {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().join("pods");
            let mut opts = TailerOptions::new(&root, tmp.path().join("positions"));
            opts.pod_wait = Duration::from_millis(400);
            let sink = Arc::new(Labelled::default());
            let pods = Arc::new(Pods {
                watching,
                ..Pods::default()
            });
            let mut t = Tailer::new(opts, sink.clone(), pods.clone(), Arc::new(TailerStats::default()));
            let t0 = Instant::now();
            t.step(t0, true).unwrap();
            let f = root.join("ns_web-1_uid/c/0.log");
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, cri("stdout", "F", b"first")).unwrap();
            let mut steps = 0;
            for ms in (0..1000).step_by(50) {
                if known_at == Some(ms) {
                    pods.known.lock().push(("web-1".into(), "web".into()));
                    pods.generation.fetch_add(1, Ordering::Relaxed);
                }
                // A full rescan finds the directory (inotify is not running in this test).
                t.step(t0 + Duration::from_millis(ms), true).unwrap();
                if !sink.0.lock().is_empty() {
                    break;
                }
                steps += 1;
            }
            let got = sink.0.lock().clone();
            assert_eq!(got.len(), 1, "{got:?}");
            assert!(got[0].contains(&format!("job=\"{want_job}\"")), "{got:?}");
            assert_eq!(steps, want_steps, "{watching} {known_at:?}");
            assert!(t.waiting.is_empty());
        };
        check(true, Some(150), "ns/web", 3);
        check(true, None, "ns/c", 8);
        check(false, None, "ns/c", 0);
        check(false, Some(150), "ns/c", 0);
    }

    fn cri(stream: &str, tag: &str, msg: &[u8]) -> Vec<u8> {
        let mut v = format!("2026-11-21T08:00:00.5Z {stream} {tag} ").into_bytes();
        v.extend_from_slice(msg);
        v.push(b'\n');
        v
    }

    #[test]
    fn reading_files() {
        let f = "ns_pod_uid/c/0.log";
        let cat = |parts: &[Vec<u8>]| parts.concat();
        // Plain lines; a line that is not CRI is counted and skipped, not fatal for the file.
        check(
            &[(
                f,
                cat(&[
                    cri("stdout", "F", b"one"),
                    b"garbage\n".to_vec(),
                    cri("stderr", "F", b"two"),
                ]),
            )],
            &[("stdout", b"one".to_vec()), ("stderr", b"two".to_vec())],
            &[(ErrorReason::Parse, 1)],
        );
        // A physical line longer than the buffer's cap (max_line_size + 64 KiB): its head is kept,
        // the rest dropped up to its newline, the next line is intact.
        let huge = vec![b'x'; 200_000];
        let head = READ_CHUNK + 1024 - "2026-11-21T08:00:00.5Z stdout F ".len();
        check(
            &[(f, cat(&[cri("stdout", "F", &huge), cri("stdout", "F", b"after")]))],
            &[("stdout", huge[..head].to_vec()), ("stdout", b"after".to_vec())],
            &[(ErrorReason::Oversize, 1)],
        );
        // Partials past max_line_size keep max_line_size + 1 bytes (the ingester then rejects or
        // truncates them like a push); bytes are joined before any UTF-8 decoding.
        check(
            &[(
                f,
                cat(&[
                    cri("stdout", "P", &[b'a'; 800]),
                    cri("stdout", "P", &[b'b'; 800]),
                    cri("stdout", "F", b"c"),
                ]),
            )],
            &[("stdout", [vec![b'a'; 800], vec![b'b'; 225]].concat())],
            &[],
        );
        check(
            &[(
                f,
                cat(&[
                    cri("stdout", "P", &"é".as_bytes()[..1]),
                    cri("stdout", "F", &"é".as_bytes()[1..]),
                ]),
            )],
            &[("stdout", "é".as_bytes().to_vec())],
            &[],
        );
        // An unterminated `P` in a finished file (the container restarted) is stored at its end,
        // before the next file's lines.
        check(
            &[
                ("ns_pod_uid/c/0.log", cri("stdout", "P", b"exit without newline")),
                ("ns_pod_uid/c/1.log", cri("stdout", "F", b"restarted")),
            ],
            &[
                ("stdout", b"exit without newline".to_vec()),
                ("stdout", b"restarted".to_vec()),
            ],
            &[],
        );
        // Rotated files first, `.gz` and `.tmp` ignored.
        check(
            &[
                ("ns_pod_uid/c/0.log", cri("stdout", "F", b"live")),
                ("ns_pod_uid/c/0.log.20261121-080000", cri("stdout", "F", b"rotated")),
                ("ns_pod_uid/c/0.log.20261121-070000.gz", b"\x1f\x8b compressed".to_vec()),
                ("ns_pod_uid/c/0.log.20261121-090000.tmp", cri("stdout", "F", b"tmp")),
            ],
            &[("stdout", b"rotated".to_vec()), ("stdout", b"live".to_vec())],
            &[],
        );
        // Docker json-file.
        check(
            &[(
                f,
                br#"{"log":"half ","stream":"stdout","time":"2026-11-21T08:00:00Z"}
{"log":"whole\n","stream":"stdout","time":"2026-11-21T08:00:00Z"}
"#
                .to_vec(),
            )],
            &[("stdout", b"half whole".to_vec())],
            &[],
        );
    }
}

#[cfg(test)]
mod crash_tests {
    use super::*;
    use crate::collect::logs::{IngestSink, PathLabels};
    use crate::ingest::{LokiIngester, LokiLimits};
    use crate::storage::logs::{LogStore, LogsOptions};

    /// The production sink answers the crash-window question from the store: a batch stored just
    /// before a kill is not stored again, one that was not stored is (invalid UTF-8 included: the
    /// probe is the line as stored).
    #[test]
    fn pending_positions_resolved_by_the_store() {
        let check = |stored_before_crash: bool| {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().join("pods");
            let dir = root.join("ns_pod_uid/c");
            std::fs::create_dir_all(&dir).unwrap();
            let mut content = b"2026-11-21T08:00:00.5Z stdout F one\n".to_vec();
            content.extend_from_slice(b"2026-11-21T08:00:00.6Z stdout F two \xff\n");
            std::fs::write(dir.join("0.log"), &content).unwrap();
            let store = LogStore::open(LogsOptions::new(tmp.path().join("logs"))).unwrap();
            let ingester = Arc::new(LokiIngester::new(Arc::clone(&store), LokiLimits::default()));
            let sink = Arc::new(IngestSink {
                ingester: Arc::clone(&ingester),
                tenant: "fake".into(),
            });
            let opts = TailerOptions::new(&root, tmp.path().join("positions"));
            let new = || {
                Tailer::new(
                    opts.clone(),
                    sink.clone(),
                    Arc::new(PathLabels),
                    Arc::new(TailerStats::default()),
                )
            };
            let mut t = new();
            t.crash_after_push = true;
            if !stored_before_crash {
                // The crash came before the push reached the store: a sink that refuses stands in.
                struct Refuse;
                impl LogSink for Refuse {
                    fn push(&self, _: &[SinkStream<'_>]) -> Result<(), String> {
                        Err("down".into())
                    }
                }
                t.sink = Arc::new(Refuse);
            }
            assert!(t.step(Instant::now(), true).is_err());
            drop(t);
            let mut t = new();
            t.step(Instant::now(), true).unwrap();
            let entries = ingester.stats().entries_received.load(Ordering::Relaxed);
            assert_eq!(
                entries, 2,
                "stored_before_crash={stored_before_crash}: each line pushed once"
            );
            assert!(!checkpoint::pending_path(&opts.positions_file).exists());
        };
        check(true);
        check(false);
    }
}
