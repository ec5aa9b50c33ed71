//! The pod-log tailer: container log files under `/var/log/pods` (or any root of that layout) into
//! the single write path, exactly once.
//!
//! Owns: discovery of `<root>/<namespace>_<pod>_<uid>/<container>/<N>.log[.<rotation>]` by inotify
//! with a periodic rescan as safety net; file identity (device + inode + a CRC of the first bytes,
//! never the path); the CRI and Docker parsers ([`parse`]); joining `P`/`F` partials per (file,
//! stream); rotation (a renamed file is drained through its open descriptor before the file that
//! replaced it), copytruncate detection, and releasing descriptors of deleted files once drained;
//! the positions file ([`checkpoint`]), written only after the sink accepted the lines it covers.
//! Never touches: the config file (plain [`TailerOptions`] from `app`), HTTP, storage internals (lines
//! go through [`LogSink`], in production the Loki ingester's `push_decoded`), the Kubernetes API (pod
//! labels come from a [`LabelProvider`]: path-derived now, the kube pod cache later).
//!
//! Delivery: the positions after a batch are written to `<positions>.pending` (with the batch's
//! last entry as a probe), the batch is pushed, then the pending file becomes the positions file. A
//! restart resumes from the positions file, or from the pending one if the sink holds the probe
//! entry, so a kill -9 anywhere stores nothing twice and loses nothing (see [`checkpoint`]; the one
//! gap is a push torn inside the store's single `write(2)`). Backpressure: the tailer blocks on a
//! slow sink holding one batch, so memory stays bounded by the batch size, the read buffer and the
//! per-stream partial caps.

pub mod checkpoint;
pub mod parse;
mod tailer;

pub use tailer::{StopSignal, Tailer};

use crate::ingest::{DecodedStream, LokiIngester};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TailerError {
    #[error("the sink refused a batch: {0}")]
    Sink(String),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct TailerOptions {
    /// The `/var/log/pods` tree.
    pub root: PathBuf,
    /// The positions file (in the data directory).
    pub positions_file: PathBuf,
    /// Value of the `node` label; empty: no such label.
    pub node_name: String,
    /// Pod label keys copied onto streams (sanitised to Loki label names).
    pub pod_labels: Vec<String>,
    pub rescan_interval: Duration,
    /// A line joined from partials keeps at most this many bytes plus one (so the ingester still sees
    /// it as too long and applies the push path's rule: reject or truncate).
    pub max_line_size: usize,
    /// A partial line with no continuation for this long is stored as it is.
    pub partial_timeout: Duration,
    /// Bytes of lines gathered before a push.
    pub batch_bytes: usize,
    /// A new container directory of a pod the label provider expects to learn of
    /// ([`LabelProvider::pending`]) is read only once it has, or after this long: its first lines
    /// get the pod's labels (`job` from `app`, the selected labels), not the path's alone.
    pub pod_wait: Duration,
}

impl TailerOptions {
    pub fn new(root: impl Into<PathBuf>, positions_file: impl Into<PathBuf>) -> Self {
        TailerOptions {
            root: root.into(),
            positions_file: positions_file.into(),
            node_name: String::new(),
            pod_labels: vec!["app".to_string()],
            rescan_interval: Duration::from_secs(10),
            max_line_size: 256 * 1024,
            partial_timeout: Duration::from_secs(5),
            batch_bytes: 1 << 20,
            pod_wait: Duration::from_secs(5),
        }
    }
}

/// Why something went wrong, for `monitoring_rs_tailer_errors_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReason {
    /// A line that is neither CRI nor Docker JSON (skipped).
    Parse,
    /// A physical line longer than the read buffer's cap: its end was dropped.
    Oversize,
    Open,
    Read,
    /// inotify could not be set up or a watch not added (the rescan still finds changes).
    Watch,
    /// The sink failed; the batch is retried.
    Sink,
    Checkpoint,
}

impl ErrorReason {
    pub const ALL: [ErrorReason; 7] = [
        ErrorReason::Parse,
        ErrorReason::Oversize,
        ErrorReason::Open,
        ErrorReason::Read,
        ErrorReason::Watch,
        ErrorReason::Sink,
        ErrorReason::Checkpoint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::Parse => "parse",
            ErrorReason::Oversize => "oversize_line",
            ErrorReason::Open => "open",
            ErrorReason::Read => "read",
            ErrorReason::Watch => "watch",
            ErrorReason::Sink => "sink",
            ErrorReason::Checkpoint => "checkpoint",
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct TailerStats {
    /// Entries accepted by the sink, and their bytes.
    pub lines: AtomicU64,
    pub bytes: AtomicU64,
    /// Entries whose position checkpoint is durable (a test's "safe to kill" signal).
    pub lines_committed: AtomicU64,
    pub batches: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Gauges: descriptors held, and of those, files already deleted (being drained).
    pub files_open: AtomicU64,
    pub files_deleted_open: AtomicU64,
    pub files_tracked: AtomicU64,
    /// Files seen under a rotated name (renamed away from `N.log`).
    pub rotations: AtomicU64,
    /// Files that shrank or whose head changed under the same inode (copytruncate).
    pub truncations: AtomicU64,
    /// Partial lines flushed without their `F`: timeout, end of a finished file.
    pub partial_timeouts: AtomicU64,
    pub partial_eof: AtomicU64,
    /// Joined lines cut at `max_line_size`.
    pub lines_cut: AtomicU64,
    /// Directory listings by a rescan, and listings reused because the directory's mtime had not
    /// moved (see `tailer::Listing`).
    pub dir_listings: AtomicU64,
    pub dir_listings_reused: AtomicU64,
    pub errors: [AtomicU64; 7],
}

impl TailerStats {
    pub fn error(&self, r: ErrorReason) {
        self.errors[r as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A pod as the path names it: `<namespace>_<pod>_<uid>` (the uid is a static pod's config hash).
#[derive(Debug, Clone, Copy)]
pub struct PodRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
}

/// Where pod labels come from. The kube pod cache will implement this; without a cluster,
/// [`PathLabels`] knows none and streams carry the path-derived labels only.
pub trait LabelProvider: Send + Sync {
    /// The pod's labels (unsanitised keys), empty when the pod is unknown.
    fn pod_labels(&self, pod: &PodRef<'_>) -> Vec<(String, String)>;

    /// Rises whenever what [`LabelProvider::pod_labels`] answers may have changed (the pod cache
    /// filled after the API came back): the tailer then derives its directories' labels again, so
    /// a file found while the API was unreachable does not keep path labels for ever.
    fn generation(&self) -> u64 {
        0
    }

    /// The pod is unknown now but should be known soon: the provider's source is up and will
    /// tell of it (a new pod's log directory can appear before the watch delivers the pod).
    fn pending(&self, _pod: &PodRef<'_>) -> bool {
        false
    }
}

/// Labels from the path alone.
#[derive(Debug, Default, Clone, Copy)]
pub struct PathLabels;

impl LabelProvider for PathLabels {
    fn pod_labels(&self, _pod: &PodRef<'_>) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// One stream of a batch: the label text (`{a="b", ...}`) and its entries in file order.
pub struct SinkStream<'a> {
    pub labels: &'a str,
    pub entries: &'a [(i64, &'a [u8])],
}

/// Where batches go: the store through the ingester now, a forward queue later. `Ok` means every
/// line is durable as far as the sink's contract goes (lines refused by its validation are counted
/// there and count as delivered here).
pub trait LogSink: Send + Sync {
    fn push(&self, streams: &[SinkStream<'_>]) -> Result<(), String>;

    /// After a crash between a push and its checkpoint: does the stream hold an entry at `ts` whose
    /// stored line has CRC-32 `line_crc`? `Ok(false)` (the default, for sinks that cannot tell)
    /// makes the tailer send that batch again.
    fn contains(&self, _probe: &checkpoint::Probe) -> Result<bool, String> {
        Ok(false)
    }
}

/// The production sink: the Loki ingester's single write path, one call per batch.
pub struct IngestSink {
    pub ingester: Arc<LokiIngester>,
    pub tenant: String,
}

impl LogSink for IngestSink {
    fn push(&self, streams: &[SinkStream<'_>]) -> Result<(), String> {
        let decoded: Vec<DecodedStream<'_>> = streams
            .iter()
            .map(|s| DecodedStream {
                labels: s.labels.as_bytes(),
                entries: s.entries,
            })
            .collect();
        self.ingester
            .push_decoded(&self.tenant, &decoded)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn contains(&self, probe: &checkpoint::Probe) -> Result<bool, String> {
        use crate::model::Matcher;
        use crate::storage::logs::{Direction, LogReader, SelectRequest};
        let pairs = crate::model::text::parse_label_text(&probe.labels)?;
        let req = SelectRequest {
            tenant: self.tenant.clone(),
            matchers: pairs.into_iter().map(|(n, v)| Matcher::eq(n, v)).collect(),
            start: probe.ts,
            end: probe.ts.saturating_add(1),
            direction: Direction::Forward,
            limit: 0,
            line_contains: Vec::new(),
        };
        for e in self.ingester.store().select(&req).map_err(|e| e.to_string())? {
            let e = e.map_err(|e| e.to_string())?;
            if crc32fast::hash(e.entry.line.as_bytes()) == probe.line_crc {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Loki label name rules: `[a-zA-Z_][a-zA-Z0-9_]*`; anything else becomes `_` (`app.kubernetes.io/name`
/// -> `app_kubernetes_io_name`, as Prometheus' kubernetes_sd does).
pub fn sanitize_label_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect();
    if out.is_empty() || out.as_bytes()[0].is_ascii_digit() {
        out.insert(0, '_');
    }
    out
}

/// `{a="b", c="d"}` from pairs (sorted here, values escaped).
pub fn label_text(pairs: &mut [(String, String)]) -> String {
    pairs.sort();
    let mut out = String::from("{");
    for (i, (n, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(n);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests;
