//! Loki push ingestion: stream label parsing and validation, per-entry checks, `service_name` and
//! `detected_level` discovery, and Loki's error texts, between a decoded push and the log store.
//!
//! A stream or entry that fails validation is counted by reason (Loki's `discarded_samples`
//! reasons) and named in the 400 body; the rest of the request is still stored. Work happens in
//! batches of at most [`STREAMS_PER_BATCH`] streams, so a body with a million tiny streams never
//! holds more than one batch decoded, and new streams over the tenant limit are refused (429).
//! Lines and metadata are borrowed from the request body; only invalid UTF-8 is copied (fixed).

use super::IngestError;
use crate::model::text::{format_rfc3339_ns, parse_label_text};
use crate::model::{Label, Labels};
use crate::proto::loki::{StreamAdapter, for_each_stream, json::JsonPush};
use crate::storage::logs::{LogStore, PushEntry, PushStream, StreamKey};
use bytes::Bytes;
use parking_lot::Mutex;
use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Streams decoded and stored at a time.
pub const STREAMS_PER_BATCH: usize = 4096;
/// Error lines listed in a 400 body; the rest are summarised as a count.
const MAX_ERROR_LINES: usize = 10;

pub use crate::model::level::DEFAULT_SERVICE_NAME_LABELS;

/// Per-tenant push limits (from `limits.logs` in the config). 0 disables a numeric limit.
#[derive(Debug, Clone)]
pub struct LokiLimits {
    pub max_label_names_per_series: usize,
    pub max_label_name_length: usize,
    pub max_label_value_length: usize,
    pub max_line_size: usize,
    pub max_line_size_truncate: bool,
    /// `None`: old entries are accepted (Loki's `reject_old_samples: false`).
    pub reject_old_samples_max_age: Option<Duration>,
    pub creation_grace_period: Duration,
    /// Empty: no `service_name` is added.
    pub discover_service_name: Vec<String>,
    pub discover_log_levels: bool,
}

impl Default for LokiLimits {
    fn default() -> Self {
        LokiLimits {
            max_label_names_per_series: 15,
            max_label_name_length: 1024,
            max_label_value_length: 2048,
            max_line_size: 256 * 1024,
            max_line_size_truncate: false,
            reject_old_samples_max_age: None,
            creation_grace_period: Duration::from_secs(600),
            discover_service_name: DEFAULT_SERVICE_NAME_LABELS.iter().map(|s| s.to_string()).collect(),
            discover_log_levels: true,
        }
    }
}

/// Why entries were discarded: Loki's `reason` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    InvalidLabels,
    MissingLabels,
    MaxLabelNames,
    LabelNameTooLong,
    LabelValueTooLong,
    DuplicateLabelNames,
    LineTooLong,
    TooOld,
    TooNew,
    StreamLimit,
}

impl Discard {
    pub const ALL: [Discard; 10] = [
        Discard::InvalidLabels,
        Discard::MissingLabels,
        Discard::MaxLabelNames,
        Discard::LabelNameTooLong,
        Discard::LabelValueTooLong,
        Discard::DuplicateLabelNames,
        Discard::LineTooLong,
        Discard::TooOld,
        Discard::TooNew,
        Discard::StreamLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Discard::InvalidLabels => "invalid_labels",
            Discard::MissingLabels => "missing_labels",
            Discard::MaxLabelNames => "max_label_names_per_series",
            Discard::LabelNameTooLong => "label_name_too_long",
            Discard::LabelValueTooLong => "label_value_too_long",
            Discard::DuplicateLabelNames => "duplicate_label_names",
            Discard::LineTooLong => "line_too_long",
            Discard::TooOld => "greater_than_max_sample_age",
            Discard::TooNew => "too_far_in_future",
            Discard::StreamLimit => "stream_limit",
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct LokiStats {
    pub requests: AtomicU64,
    pub entries_received: AtomicU64,
    pub bytes_received: AtomicU64,
    /// By [`Discard`] (in `ALL` order).
    pub discarded_entries: [AtomicU64; 10],
    pub discarded_bytes: [AtomicU64; 10],
    pub lines_truncated: AtomicU64,
    pub invalid_utf8_replaced: AtomicU64,
    /// Entries equal (timestamp and line) to the entry before them in the same stream: Loki keeps one.
    pub duplicates_dropped: AtomicU64,
}

/// What a push did. `errors` non-empty means a 400 (or 429 when `rate_limited`) with these lines;
/// the valid streams were stored.
#[derive(Debug, Default)]
pub struct PushOutcome {
    pub entries_written: u64,
    pub errors: Vec<String>,
    pub more_errors: u64,
    /// Some stream was refused for the per-tenant stream limit.
    pub stream_limited: bool,
}

impl PushOutcome {
    fn error(&mut self, msg: String) {
        if self.errors.len() < MAX_ERROR_LINES {
            self.errors.push(msg);
        } else {
            self.more_errors += 1;
        }
    }
}

pub struct LokiIngester {
    store: Arc<LogStore>,
    limits: LokiLimits,
    stats: Arc<LokiStats>,
    /// Stream id -> level given by its labels, for `detected_level`; only streams with one.
    label_levels: Mutex<HashMap<u32, &'static str>>,
    /// Live-tail subscribers (the api state owns the channel); `None` in tools and tests.
    tail: Option<tokio::sync::broadcast::Sender<Arc<Appended>>>,
}

/// Entries just stored, for live tailing: one message per stored batch.
#[derive(Debug)]
pub struct Appended {
    pub tenant: String,
    pub streams: Vec<AppendedStream>,
}

#[derive(Debug)]
pub struct AppendedStream {
    pub labels: Labels,
    /// (ts ns, line)
    pub entries: Vec<(i64, String)>,
}

/// A stream handed over in process: label text (`{a="b"}`) and `(ts ns, line)` entries.
pub struct DecodedStream<'a> {
    pub labels: &'a [u8],
    pub entries: &'a [(i64, &'a [u8])],
}

/// One stream of a batch, borrowed from the decoded request.
struct RawStream<'a> {
    labels: &'a [u8],
    entries: Range<usize>,
}

struct RawEntry<'a> {
    ts: i64,
    line: &'a [u8],
    meta: Range<usize>,
}

#[derive(Default)]
struct Batch<'a> {
    streams: Vec<RawStream<'a>>,
    entries: Vec<RawEntry<'a>>,
    meta: Vec<(&'a [u8], &'a [u8])>,
}

/// Where an accepted string is: in the request, in the fix-up arena, or static.
#[derive(Clone, Copy)]
enum Src<'a> {
    Req(&'a str),
    Fixed(usize),
    Static(&'static str),
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Loki's level normalisation (`detected_level`).
fn normalize_level(v: &str) -> Option<&'static str> {
    let l = v.trim();
    let eq = |s: &str| l.eq_ignore_ascii_case(s);
    Some(
        if eq("info") || eq("inf") || eq("i") || eq("information") || eq("informational") || eq("notice") {
            "info"
        } else if eq("warn") || eq("warning") || eq("wrn") || eq("w") {
            "warn"
        } else if eq("error") || eq("err") || eq("e") || eq("eror") {
            "error"
        } else if eq("debug") || eq("dbg") || eq("d") {
            "debug"
        } else if eq("trace") || eq("trc") || eq("t") {
            "trace"
        } else if eq("critical") || eq("fatal") || eq("crit") || eq("panic") || eq("emerg") || eq("alert") {
            "critical"
        } else {
            return None;
        },
    )
}

const LEVEL_KEYS: &[&str] = &[
    "level", "LEVEL", "Level", "severity", "SEVERITY", "Severity", "lvl", "LVL", "Lvl",
];

fn src_of<'b>(x: &'b [u8], fixed: &mut Vec<String>) -> Src<'b> {
    match std::str::from_utf8(x) {
        Ok(s) => Src::Req(s),
        Err(_) => {
            fixed.push(String::from_utf8_lossy(x).into_owned());
            Src::Fixed(fixed.len() - 1)
        }
    }
}

fn src_str<'x>(s: Src<'x>, fixed: &'x [String]) -> &'x str {
    match s {
        Src::Req(x) => x,
        Src::Fixed(i) => fixed.get(i).map_or("", |f| f.as_str()),
        Src::Static(x) => x,
    }
}

/// Largest index `<= max` on a char boundary of `s`.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    let mut i = max.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl LokiIngester {
    pub fn new(store: Arc<LogStore>, limits: LokiLimits) -> Self {
        LokiIngester {
            store,
            limits,
            stats: Arc::new(LokiStats::default()),
            label_levels: Mutex::new(HashMap::new()),
            tail: None,
        }
    }

    /// Announces every stored batch on `tx` while it has receivers.
    pub fn with_tail(mut self, tx: tokio::sync::broadcast::Sender<Arc<Appended>>) -> Self {
        self.tail = Some(tx);
        self
    }

    pub fn stats(&self) -> &Arc<LokiStats> {
        &self.stats
    }

    pub fn store(&self) -> &Arc<LogStore> {
        &self.store
    }

    /// A `logproto.PushRequest` (already snappy-decoded), stored [`STREAMS_PER_BATCH`] streams at a time.
    pub fn push_proto(&self, tenant: &str, body: Bytes) -> Result<PushOutcome, IngestError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut out = PushOutcome::default();
        let mut pending: Vec<StreamAdapter> = Vec::new();
        let mut failure: Option<IngestError> = None;
        let decoded = for_each_stream(body, |s| {
            pending.push(s);
            if pending.len() >= STREAMS_PER_BATCH {
                if let Err(e) = self.store_adapters(tenant, &pending, &mut out) {
                    failure = Some(e);
                    return false;
                }
                pending.clear();
            }
            true
        });
        if let Some(e) = failure {
            return Err(e);
        }
        // Loki decodes the whole body before storing anything; a body that is garbage at its end
        // is refused here after at most the batches before it were stored.
        decoded?;
        self.store_adapters(tenant, &pending, &mut out)?;
        Ok(out)
    }

    fn store_adapters(
        &self,
        tenant: &str,
        streams: &[StreamAdapter],
        out: &mut PushOutcome,
    ) -> Result<(), IngestError> {
        let mut b = Batch::default();
        for s in streams {
            let start = b.entries.len();
            for e in &s.entries {
                let ms = b.meta.len();
                for p in &e.structured_metadata {
                    b.meta.push((&p.name, &p.value));
                }
                b.entries.push(RawEntry {
                    ts: e.timestamp.map_or(0, |t| t.unix_nanos()),
                    line: &e.line,
                    meta: ms..b.meta.len(),
                });
            }
            b.streams.push(RawStream {
                labels: &s.labels,
                entries: start..b.entries.len(),
            });
        }
        self.store_batch(tenant, &b, out)
    }

    /// A decoded JSON push (v1 or legacy).
    pub fn push_json(&self, tenant: &str, push: &JsonPush<'_>) -> Result<PushOutcome, IngestError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut out = PushOutcome::default();
        for part in push.streams.chunks(STREAMS_PER_BATCH) {
            let mut b = Batch::default();
            for s in part {
                let start = b.entries.len();
                for e in &s.entries {
                    let ms = b.meta.len();
                    for (n, v) in &e.metadata {
                        b.meta.push((n.as_bytes(), v.as_bytes()));
                    }
                    b.entries.push(RawEntry {
                        ts: e.ts,
                        line: match &e.line {
                            Cow::Borrowed(s) => s.as_bytes(),
                            Cow::Owned(s) => s.as_bytes(),
                        },
                        meta: ms..b.meta.len(),
                    });
                }
                b.streams.push(RawStream {
                    labels: s.labels.as_bytes(),
                    entries: start..b.entries.len(),
                });
            }
            self.store_batch(tenant, &b, &mut out)?;
        }
        Ok(out)
    }

    /// Streams already decoded by an in-process collector (the pod-log tailer): label text and
    /// `(ts ns, line)` entries, borrowed, through the same validation as a push. One call per batch.
    pub fn push_decoded(&self, tenant: &str, streams: &[DecodedStream<'_>]) -> Result<PushOutcome, IngestError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut out = PushOutcome::default();
        for part in streams.chunks(STREAMS_PER_BATCH) {
            let mut b = Batch::default();
            for s in part {
                let start = b.entries.len();
                b.entries
                    .extend(s.entries.iter().map(|&(ts, line)| RawEntry { ts, line, meta: 0..0 }));
                b.streams.push(RawStream {
                    labels: s.labels,
                    entries: start..b.entries.len(),
                });
            }
            self.store_batch(tenant, &b, &mut out)?;
        }
        Ok(out)
    }

    fn discard(&self, reason: Discard, entries: u64, bytes: u64) {
        let i = reason as usize;
        self.stats.discarded_entries[i].fetch_add(entries, Ordering::Relaxed);
        self.stats.discarded_bytes[i].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Parses and validates a stream's label text; `Err` is (reason, Loki's message).
    /// Copies the stored entries for tail subscribers; only runs while someone is tailing.
    fn announce(
        &self,
        tx: &tokio::sync::broadcast::Sender<Arc<Appended>>,
        tenant: &str,
        b: &Batch<'_>,
        push: &[PushStream<'_>],
        slots: &[usize],
        refused: &[usize],
    ) {
        let mut streams = Vec::new();
        for (pi, ps) in push.iter().enumerate() {
            if ps.entries.is_empty() || refused.contains(&pi) {
                continue;
            }
            let labels = match &ps.key {
                StreamKey::New { labels, .. } => labels.clone(),
                StreamKey::Known(_) => match slots.get(pi).and_then(|si| b.streams.get(*si)) {
                    Some(s) => match self.stream_labels(s.labels) {
                        Ok(l) => l,
                        Err(_) => continue,
                    },
                    None => continue,
                },
            };
            let entries = ps
                .entries
                .iter()
                .map(|e| (e.ts, String::from_utf8_lossy(e.line).into_owned()))
                .collect();
            streams.push(AppendedStream { labels, entries });
        }
        if !streams.is_empty() {
            // An error only means every subscriber left meanwhile: nothing to deliver.
            let _ = tx.send(Arc::new(Appended {
                tenant: tenant.to_string(),
                streams,
            }));
        }
    }

    fn stream_labels(&self, text: &[u8]) -> Result<Labels, (Discard, String)> {
        let shown = String::from_utf8_lossy(text);
        let Ok(s) = std::str::from_utf8(text) else {
            return Err((
                Discard::InvalidLabels,
                format!("error parsing labels '{shown}' with error: invalid UTF-8"),
            ));
        };
        let pairs = parse_label_text(s).map_err(|e| {
            (
                Discard::InvalidLabels,
                format!("error parsing labels '{s}' with error: {e}"),
            )
        })?;
        let l = &self.limits;
        let pairs: Vec<(String, String)> = pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        if pairs.is_empty() {
            return Err((
                Discard::MissingLabels,
                "error at least one label pair is required per stream".to_string(),
            ));
        }
        if l.max_label_names_per_series > 0 && pairs.len() > l.max_label_names_per_series {
            return Err((
                Discard::MaxLabelNames,
                format!(
                    "entry for stream '{s}' has {} label names; limit {}",
                    pairs.len(),
                    l.max_label_names_per_series
                ),
            ));
        }
        for (n, v) in &pairs {
            if l.max_label_name_length > 0 && n.len() > l.max_label_name_length {
                return Err((
                    Discard::LabelNameTooLong,
                    format!("stream '{s}' has label name too long: '{n}'"),
                ));
            }
            if l.max_label_value_length > 0 && v.len() > l.max_label_value_length {
                return Err((
                    Discard::LabelValueTooLong,
                    format!("stream '{s}' has label value too long: '{v}'"),
                ));
            }
        }
        let mut labels = match Labels::from_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))) {
            Ok(ls) => ls,
            Err(crate::model::LabelsError::Duplicate(n)) => {
                return Err((
                    Discard::DuplicateLabelNames,
                    format!("stream '{s}' has duplicate label name: '{n}'"),
                ));
            }
            Err(e) => {
                return Err((
                    Discard::InvalidLabels,
                    format!("error parsing labels '{s}' with error: {e}"),
                ));
            }
        };
        if !l.discover_service_name.is_empty() && labels.get("service_name").is_none() {
            let value = l
                .discover_service_name
                .iter()
                .find_map(|k| labels.get(k))
                .unwrap_or("unknown_service")
                .to_string();
            let mut v = labels.into_vec();
            v.push(Label::new("service_name", value));
            v.sort();
            labels = Labels::from_sorted(v).map_err(|e| (Discard::InvalidLabels, e.to_string()))?;
        }
        Ok(labels)
    }

    fn store_batch<'b>(&self, tenant: &str, b: &Batch<'b>, out: &mut PushOutcome) -> Result<(), IngestError> {
        let now = now_ns();
        let l = &self.limits;
        let too_new = now.saturating_add(l.creation_grace_period.as_nanos() as i64);
        let too_old = l
            .reject_old_samples_max_age
            .map(|d| now.saturating_sub(d.as_nanos() as i64));
        let aliases: Vec<&[u8]> = b.streams.iter().map(|s| s.labels).collect();
        let mut ids = Vec::with_capacity(aliases.len());
        self.store.resolve(tenant, &aliases, &mut ids);
        // Pass 1: keys and accepted entries, strings located but not yet borrowed.
        let mut fixed: Vec<String> = Vec::new();
        let mut keys: Vec<(usize, StreamKey<'_>)> = Vec::with_capacity(b.streams.len());
        // (stream slot, ts, line, [(name, value)] range in `metas`)
        let mut accepted: Vec<(usize, i64, Src<'b>, Range<usize>)> = Vec::with_capacity(b.entries.len());
        let mut metas: Vec<(Src<'b>, Src<'b>)> = Vec::new();
        let levels = self.label_levels.lock();
        for (si, s) in b.streams.iter().enumerate() {
            let entries = &b.entries[s.entries.clone()];
            let n = entries.len() as u64;
            let bytes: u64 = entries.iter().map(|e| e.line.len() as u64).sum();
            self.stats.entries_received.fetch_add(n, Ordering::Relaxed);
            self.stats.bytes_received.fetch_add(bytes, Ordering::Relaxed);
            if entries.is_empty() {
                continue;
            }
            let (key, label_level) = match ids[si] {
                Some(id) => (StreamKey::Known(id), levels.get(&id).copied()),
                None => match self.stream_labels(s.labels) {
                    Ok(labels) => {
                        let lv = LEVEL_KEYS.iter().find_map(|k| labels.get(k)).and_then(normalize_level);
                        (
                            StreamKey::New {
                                alias: s.labels,
                                labels,
                            },
                            lv,
                        )
                    }
                    Err((reason, msg)) => {
                        self.discard(reason, n, bytes);
                        out.error(msg);
                        continue;
                    }
                },
            };
            let slot = keys.len();
            let shown = || String::from_utf8_lossy(s.labels).into_owned();
            let mut prev: Option<(i64, &[u8])> = None;
            for e in entries {
                // Loki's head block drops an entry identical to the one before it (same timestamp
                // and line); a client retrying part of a batch must not double a line.
                if prev == Some((e.ts, e.line)) {
                    self.stats.duplicates_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                prev = Some((e.ts, e.line));
                if e.ts > too_new {
                    self.discard(Discard::TooNew, 1, e.line.len() as u64);
                    out.error(format!(
                        "entry for stream '{}' has timestamp too new: {}",
                        shown(),
                        format_rfc3339_ns(e.ts)
                    ));
                    continue;
                }
                if let Some(old) = too_old
                    && e.ts < old
                {
                    self.discard(Discard::TooOld, 1, e.line.len() as u64);
                    out.error(format!(
                        "entry for stream '{}' has timestamp too old: {}, oldest acceptable timestamp is: {}",
                        shown(),
                        format_rfc3339_ns(e.ts),
                        format_rfc3339_ns(old)
                    ));
                    continue;
                }
                let mut line = match std::str::from_utf8(e.line) {
                    Ok(s) => Src::Req(s),
                    Err(_) => {
                        self.stats.invalid_utf8_replaced.fetch_add(1, Ordering::Relaxed);
                        fixed.push(String::from_utf8_lossy(e.line).into_owned());
                        Src::Fixed(fixed.len() - 1)
                    }
                };
                if l.max_line_size > 0 && e.line.len() > l.max_line_size {
                    if !l.max_line_size_truncate {
                        self.discard(Discard::LineTooLong, 1, e.line.len() as u64);
                        out.error(format!(
                            "Max entry size '{}' bytes exceeded for stream '{}' while adding an entry with length '{}' bytes",
                            l.max_line_size,
                            shown(),
                            e.line.len()
                        ));
                        continue;
                    }
                    self.stats.lines_truncated.fetch_add(1, Ordering::Relaxed);
                    line = match line {
                        Src::Req(s) => Src::Req(&s[..floor_char_boundary(s, l.max_line_size)]),
                        Src::Fixed(i) => {
                            let cut = floor_char_boundary(&fixed[i], l.max_line_size);
                            fixed[i].truncate(cut);
                            Src::Fixed(i)
                        }
                        other => other,
                    };
                }
                let m0 = metas.len();
                let mut has_level = false;
                let mut meta_level = None;
                for (n, v) in &b.meta[e.meta.clone()] {
                    let (ns, vs) = (src_of(n, &mut fixed), src_of(v, &mut fixed));
                    if *n == b"detected_level" {
                        has_level = true;
                    } else if meta_level.is_none() && LEVEL_KEYS.iter().any(|k| k.as_bytes() == *n) {
                        meta_level = std::str::from_utf8(v).ok().and_then(normalize_level);
                    }
                    metas.push((ns, vs));
                }
                if l.discover_log_levels && !has_level {
                    let lv = label_level
                        .or(meta_level)
                        .unwrap_or_else(|| match std::str::from_utf8(e.line) {
                            Ok(text) => crate::model::level::from_line(text),
                            Err(_) => crate::model::level::from_line(&String::from_utf8_lossy(e.line)),
                        });
                    metas.push((Src::Static("detected_level"), Src::Static(lv)));
                }
                accepted.push((slot, e.ts, line, m0..metas.len()));
            }
            keys.push((si, key));
        }
        // Pass 2: borrow everything.
        let fixed = &fixed;
        let get = |s: Src<'b>| -> &str { src_str(s, fixed) };
        let meta_strs: Vec<(&str, &str)> = metas.iter().map(|(n, v)| (get(*n), get(*v))).collect();
        let entries: Vec<PushEntry<'_>> = accepted
            .iter()
            .map(|(_, ts, line, m)| PushEntry {
                ts: *ts,
                line: get(*line).as_bytes(),
                meta: &meta_strs[m.clone()],
            })
            .collect();
        let mut ranges = vec![0..0; keys.len()];
        let mut i = 0;
        while i < accepted.len() {
            let slot = accepted[i].0;
            let start = i;
            while i < accepted.len() && accepted[i].0 == slot {
                i += 1;
            }
            ranges[slot] = start..i;
        }
        let mut label_levels_new = Vec::new();
        let slots: Vec<usize> = keys.iter().map(|(si, _)| *si).collect();
        let push: Vec<PushStream<'_>> = keys
            .into_iter()
            .zip(ranges)
            .map(|((si, key), r)| {
                // Only streams whose labels give a level are remembered: a stream missing from
                // `label_levels` has none, so the common stream (no level label) costs nothing here.
                if let StreamKey::New { labels, .. } = &key
                    && let Some(lv) = LEVEL_KEYS.iter().find_map(|k| labels.get(k)).and_then(normalize_level)
                {
                    label_levels_new.push((si, lv));
                }
                PushStream {
                    key,
                    entries: &entries[r],
                }
            })
            .collect();
        drop(levels);
        let mut res = self.store.append(tenant, &push)?;
        if !res.gone_streams.is_empty() {
            // Streams resolved above that left memory before the append (spilled to an index file
            // by the store's maintenance, or expired): pushed again by their labels, which parsed
            // when each stream was created.
            let gone = std::mem::take(&mut res.gone_streams);
            let mut again = Vec::with_capacity(gone.len());
            let mut at = Vec::with_capacity(gone.len());
            for i in gone {
                let s = &b.streams[slots[i]];
                if let Ok(labels) = self.stream_labels(s.labels) {
                    again.push(PushStream {
                        key: StreamKey::New {
                            alias: s.labels,
                            labels,
                        },
                        entries: push[i].entries,
                    });
                    at.push(i);
                }
            }
            let r = self.store.append(tenant, &again)?;
            res.entries += r.entries;
            res.bytes += r.bytes;
            res.refused_streams.extend(r.refused_streams.iter().map(|j| at[*j]));
        }
        out.entries_written += res.entries;
        for i in &res.refused_streams {
            let ps = &push[*i];
            let n = ps.entries.len() as u64;
            let bytes = ps.entries.iter().map(|e| e.line.len() as u64).sum();
            self.discard(Discard::StreamLimit, n, bytes);
            out.stream_limited = true;
            out.error(format!(
                "Maximum active stream limit exceeded, reduce the number of active streams (reduce labels or reduce label values), or contact your Loki administrator to see if the limit can be increased, user: '{tenant}'"
            ));
        }
        if let Some(tx) = &self.tail
            && tx.receiver_count() > 0
        {
            self.announce(tx, tenant, b, &push, &slots, &res.refused_streams);
        }
        if self.limits.discover_log_levels && !label_levels_new.is_empty() {
            let mut ids2 = Vec::new();
            let aliases: Vec<&[u8]> = label_levels_new.iter().map(|(si, _)| b.streams[*si].labels).collect();
            self.store.resolve(tenant, &aliases, &mut ids2);
            let mut levels = self.label_levels.lock();
            if levels.len() > 1_000_000 {
                levels.clear();
            }
            for ((_, lv), id) in label_levels_new.iter().zip(ids2) {
                if let Some(id) = id {
                    levels.insert(id, *lv);
                }
            }
        }
        Ok(())
    }
}
