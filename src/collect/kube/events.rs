//! Kubernetes events as log streams: `{job="kubernetes-events", namespace, kind, name, reason, type}`
//! (`kind`/`name`/`namespace` of the involved object; empty values left out), one line per event
//! occurrence, stored exactly once across watch re-lists and process restarts.
//!
//! The line follows Grafana Alloy's `loki.source.kubernetes_events` logfmt layout
//! (`internal/component/loki/source/kubernetes_events/event_controller.go`, `parseEvent`), so that
//! queries and dashboards written for it work unchanged: `name=… kind=… action=… objectAPIversion=…
//! objectRV=… eventRV=… reportinginstance=… reportingcontroller=… sourcecomponent=… sourcehost=…
//! reason=… type=… count=… msg="…"`, fields left out when empty, `msg` always quoted. Unlike Alloy
//! we quote any other value that holds a space, `"` or `=` (so `| logfmt` always parses it back) and
//! leave no trailing space. Timestamp: `lastTimestamp`, else `series.lastObservedTime`, else
//! `eventTime`, else the object's creation time (an event updated as a series moves only its
//! series time).
//!
//! Dedup: a re-list replays every live event (and after a restart, so does the first list). The
//! state file maps each event's UID to the `(count, timestamp)` last stored; an event is stored when
//! its pair is greater (count+1 or a later time: a new occurrence is a new line), skipped as a
//! duplicate otherwise (also when a stale watch cache, `ListSemantic::Any`, hands back an older
//! version). The state is written after the sink accepted the batch, atomically (temp file, fsync,
//! rename, fsync the directory); a crash between the two re-sends that batch, which the store
//! drops where the entry is its stream's last (Loki's same-timestamp-same-line rule). Entries leave
//! the state once the event is gone from the API (absent from a complete list, or deleted) and its
//! time is [`FORGET_AFTER`] old; a live event stays however old it is (events live an hour by
//! default, `--event-ttl`, but a cluster may keep them for days), and only when no complete list
//! is known does [`MAX_AGE`] bound the state.
//!
//! State file format v1, text, fields separated by one space (`␠`), `\n` line ends:
//!
//! ```text
//! MRSEVT␠1\n                       magic and version
//! E␠<uid>␠<count>␠<ts>\n           one per event, sorted by uid; count and ts (ns) in decimal
//! END␠<n>␠<crc>\n                  n E records; CRC-32 (IEEE), 8 lowercase hex, of every byte before "END"
//! ```
//!
//! A Kubernetes UID never holds a space or newline; a record that does not parse, a wrong count or
//! checksum makes the whole file ignored (logged, counted): the events are then stored again once.
//! Pinned by `compat-tests/fixtures/kube_events_state_v1.txt`.

use super::{KubeStats, Resource};
use crate::collect::logs::{LogSink, SinkStream, checkpoint, label_text};
use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Event;
use kube::runtime::watcher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub const MAGIC: &str = "MRSEVT 1\n";
/// A gone event's entry is kept this long after its time: a stale watch cache (`ListSemantic::Any`)
/// may still list it for a moment.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Without a complete list to tell the live events, every entry goes after this.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Watch items gathered into one push.
const MAX_BATCH: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading the events state file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("events state file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    Write(#[from] checkpoint::CheckpointError),
}

/// One event occurrence, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub uid: String,
    pub count: i64,
    pub ts: i64,
    pub labels: String,
    pub line: String,
}

fn ns_of(t: &k8s_openapi::jiff::Timestamp) -> i64 {
    i64::try_from(t.as_nanosecond()).unwrap_or(0)
}

fn logfmt_value(out: &mut String, v: &str, always_quote: bool) {
    if !always_quote && !v.is_empty() && !v.contains([' ', '"', '=', '\n', '\t', '\\']) {
        out.push_str(v);
        return;
    }
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The stored form of an event; `None` when it names no involved object (Alloy skips those too).
pub fn event_record(e: &Event) -> Option<EventRecord> {
    let uid = e.metadata.uid.clone().filter(|u| !u.is_empty())?;
    let obj = &e.involved_object;
    let name = obj.name.as_deref().filter(|n| !n.is_empty())?;
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    let count = e
        .count
        .or_else(|| e.series.as_ref().and_then(|s| s.count))
        .map_or(1, i64::from);
    let ts = e
        .last_timestamp
        .as_ref()
        .map(|t| ns_of(&t.0))
        .or_else(|| {
            e.series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref())
                .map(|t| ns_of(&t.0))
        })
        .or_else(|| e.event_time.as_ref().map(|t| ns_of(&t.0)))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| ns_of(&t.0)))
        .unwrap_or(0);
    let mut pairs = vec![("job".to_string(), "kubernetes-events".to_string())];
    for (k, v) in [
        ("namespace", s(&obj.namespace)),
        ("kind", s(&obj.kind)),
        ("name", name.to_string()),
        ("reason", s(&e.reason)),
        ("type", s(&e.type_)),
    ] {
        if !v.is_empty() {
            pairs.push((k.to_string(), v));
        }
    }
    let source = e.source.as_ref();
    let count_text = count.to_string();
    let fields: [(&str, &str); 13] = [
        ("name", name),
        ("kind", obj.kind.as_deref().unwrap_or("")),
        ("action", e.action.as_deref().unwrap_or("")),
        ("objectAPIversion", obj.api_version.as_deref().unwrap_or("")),
        ("objectRV", obj.resource_version.as_deref().unwrap_or("")),
        ("eventRV", e.metadata.resource_version.as_deref().unwrap_or("")),
        ("reportinginstance", e.reporting_instance.as_deref().unwrap_or("")),
        ("reportingcontroller", e.reporting_component.as_deref().unwrap_or("")),
        (
            "sourcecomponent",
            source.and_then(|s| s.component.as_deref()).unwrap_or(""),
        ),
        ("sourcehost", source.and_then(|s| s.host.as_deref()).unwrap_or("")),
        ("reason", e.reason.as_deref().unwrap_or("")),
        ("type", e.type_.as_deref().unwrap_or("")),
        (
            "count",
            if e.count.is_some() || e.series.is_some() {
                count_text.as_str()
            } else {
                ""
            },
        ),
    ];
    let mut line = String::with_capacity(256);
    for (k, v) in fields {
        if !v.is_empty() {
            line.push_str(k);
            line.push('=');
            logfmt_value(&mut line, v, false);
            line.push(' ');
        }
    }
    line.push_str("msg=");
    logfmt_value(&mut line, e.message.as_deref().unwrap_or(""), true);
    Some(EventRecord {
        uid,
        count,
        ts,
        labels: label_text(&mut pairs),
        line,
    })
}

/// What has been stored: event UID -> (count, timestamp ns).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EventState {
    pub path: PathBuf,
    pub seen: HashMap<String, (i64, i64)>,
}

pub fn encode(seen: &HashMap<String, (i64, i64)>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(MAGIC.as_bytes());
    let sorted: BTreeMap<&String, &(i64, i64)> = seen.iter().collect();
    for (uid, (count, ts)) in sorted {
        // Writing into a Vec cannot fail.
        let _ = writeln!(out, "E {uid} {count} {ts}");
    }
    let crc = crc32fast::hash(out);
    let _ = writeln!(out, "END {} {crc:08x}", seen.len());
}

pub fn decode(buf: &[u8], path: &Path) -> Result<HashMap<String, (i64, i64)>, StateError> {
    let corrupt = |reason: &str| StateError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let text = std::str::from_utf8(buf).map_err(|_| corrupt("not text"))?;
    let body = text.strip_prefix(MAGIC).ok_or_else(|| corrupt("no MRSEVT 1 header"))?;
    let end_at = text.rfind("END ").ok_or_else(|| corrupt("no END line"))?;
    let end = &text[end_at..];
    let mut f = end
        .strip_suffix('\n')
        .ok_or_else(|| corrupt("no final newline"))?
        .split(' ')
        .skip(1);
    let n: usize = f
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| corrupt("bad END count"))?;
    let crc = f
        .next()
        .and_then(|c| u32::from_str_radix(c, 16).ok())
        .ok_or_else(|| corrupt("bad END checksum"))?;
    if crc32fast::hash(&buf[..end_at]) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let mut seen = HashMap::with_capacity(n);
    let records = end_at
        .checked_sub(MAGIC.len())
        .and_then(|n| body.get(..n))
        .ok_or_else(|| corrupt("END inside the header"))?;
    for line in records.lines() {
        let mut p = line.split(' ');
        let rec = (p.next(), p.next(), p.next(), p.next(), p.next());
        match rec {
            (Some("E"), Some(uid), Some(c), Some(t), None) if !uid.is_empty() => {
                let c = c.parse().map_err(|_| corrupt("bad count"))?;
                let t = t.parse().map_err(|_| corrupt("bad timestamp"))?;
                seen.insert(uid.to_string(), (c, t));
            }
            _ => return Err(corrupt("bad record")),
        }
    }
    if seen.len() != n {
        return Err(corrupt("record count mismatch"));
    }
    Ok(seen)
}

impl EventState {
    /// Reads the state file; none yet is an empty state; a corrupt one is logged and dropped (the
    /// live events are then stored once more, never lost).
    pub fn load(path: &Path) -> Result<EventState, StateError> {
        let seen = match std::fs::read(path) {
            Ok(buf) => decode(&buf, path).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "Ignoring the events state file; live events will be stored again.");
                HashMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Ok(EventState {
            path: path.to_path_buf(),
            seen,
        })
    }

    pub fn save(&self) -> Result<(), StateError> {
        let mut buf = Vec::with_capacity(64 + self.seen.len() * 64);
        encode(&self.seen, &mut buf);
        checkpoint::store(&self.path, &buf)?;
        Ok(())
    }

    /// Is this occurrence newer than anything stored or about to be (`pending`)?
    pub fn is_new(&self, rec: &EventRecord, pending: &[EventRecord]) -> bool {
        let last = pending
            .iter()
            .rev()
            .find(|r| r.uid == rec.uid)
            .map(|r| (r.count, r.ts))
            .or_else(|| self.seen.get(&rec.uid).copied());
        last.is_none_or(|l| (rec.count, rec.ts) > l)
    }

    /// With a complete list (`live`): forgets the events gone from it whose time is
    /// [`FORGET_AFTER`] old, and keeps every live one whatever its age: a live event forgotten
    /// would be stored again by the next re-list (a cluster with a long `--event-ttl` keeps events
    /// for days), and the live set is bounded by what the API server holds. Without one, forgets
    /// every event older than [`MAX_AGE`]. True when anything went.
    pub fn prune(&mut self, live: Option<&HashSet<String>>, now_ns: i64) -> bool {
        let before = self.seen.len();
        let forget = now_ns.saturating_sub(FORGET_AFTER.as_nanos() as i64);
        let max_age = now_ns.saturating_sub(MAX_AGE.as_nanos() as i64);
        self.seen.retain(|uid, (_, ts)| match live {
            Some(l) => l.contains(uid) || *ts >= forget,
            None => *ts >= max_age,
        });
        self.seen.len() != before
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Pushes `records` (grouped by stream, arrival order kept) and, once the sink accepted them,
/// records them in the state and writes it.
fn deliver(sink: &dyn LogSink, state: &mut EventState, records: &[EventRecord], stats: &KubeStats) -> bool {
    let mut groups: BTreeMap<&str, Vec<(i64, &[u8])>> = BTreeMap::new();
    for r in records {
        groups
            .entry(r.labels.as_str())
            .or_default()
            .push((r.ts, r.line.as_bytes()));
    }
    let streams: Vec<SinkStream<'_>> = groups
        .iter()
        .map(|(l, e)| SinkStream { labels: l, entries: e })
        .collect();
    if let Err(e) = sink.push(&streams) {
        stats.events_sink_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, events = records.len(), "The store refused Kubernetes event lines; retrying.");
        return false;
    }
    stats.events_stored.fetch_add(records.len() as u64, Ordering::Relaxed);
    for r in records {
        let slot = state.seen.entry(r.uid.clone()).or_insert((r.count, r.ts));
        *slot = (*slot).max((r.count, r.ts));
    }
    if let Err(e) = state.save() {
        stats.events_state_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "Cannot write the events state; a restart may store these events again.");
    }
    true
}

/// The events watcher's loop: gathers what the watch has ready (up to [`MAX_BATCH`] items), keeps
/// the new occurrences, delivers them off the reactor, then waits for more.
pub(super) async fn run<S>(
    stream: S,
    mut state: EventState,
    sink: Arc<dyn LogSink>,
    stats: Arc<KubeStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    S: futures_util::Stream<Item = Result<watcher::Event<Event>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream);
    let i = Resource::Events as usize;
    let mut relist: Option<HashSet<String>> = None;
    let mut listed = false;
    let mut pending: Vec<EventRecord> = Vec::new();
    'outer: loop {
        let first = tokio::select! {
            _ = stop.changed() => break,
            ev = stream.next() => ev,
        };
        let mut item = first;
        let mut n = 0;
        let mut pruned = false;
        while let Some(it) = item.take() {
            match it {
                Ok(ev) => {
                    match ev {
                        watcher::Event::Init => relist = Some(HashSet::new()),
                        watcher::Event::Apply(e) | watcher::Event::InitApply(e) => {
                            stats.objects[i].fetch_add(1, Ordering::Relaxed);
                            if let (Some(l), Some(uid)) = (relist.as_mut(), e.metadata.uid.as_ref()) {
                                l.insert(uid.clone());
                            }
                            match event_record(&e) {
                                None => {
                                    stats.events_invalid.fetch_add(1, Ordering::Relaxed);
                                }
                                Some(r) if state.is_new(&r, &pending) => pending.push(r),
                                Some(_) => {
                                    stats.events_duplicate.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        watcher::Event::Delete(_) => {
                            stats.objects[i].fetch_add(1, Ordering::Relaxed);
                        }
                        watcher::Event::InitDone => {
                            listed = true;
                            stats.lists[i].fetch_add(1, Ordering::Relaxed);
                            let live = relist.take();
                            pruned |= state.prune(live.as_ref(), now_ns());
                        }
                    }
                    if listed {
                        stats.synced[i].store(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    stats.error(Resource::Events);
                    tracing::warn!(resource = "events", error = %e, "Kubernetes watch failed; retrying with backoff.");
                }
            }
            n += 1;
            if n >= MAX_BATCH {
                break;
            }
            item = stream.next().now_or_never().flatten();
        }
        if pending.is_empty() && !pruned {
            continue;
        }
        // Deliver (blocking: the store's write path and two fsyncs) until the sink takes it; an
        // event not delivered is not in the state, so even a stop here loses nothing: the next
        // start lists it again.
        loop {
            let sink2 = Arc::clone(&sink);
            let stats2 = Arc::clone(&stats);
            let records = std::mem::take(&mut pending);
            let mut st = std::mem::take(&mut state);
            let job = tokio::task::spawn_blocking(move || {
                let ok = records.is_empty() || deliver(sink2.as_ref(), &mut st, &records, &stats2);
                if records.is_empty()
                    && let Err(e) = st.save()
                {
                    stats2.events_state_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "Cannot write the events state.");
                }
                (ok, st, records)
            });
            match job.await {
                Ok((ok, st, records)) => {
                    state = st;
                    if ok {
                        break;
                    }
                    pending = records;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "The events delivery task failed.");
                    break 'outer;
                }
            }
            tokio::select! {
                _ = stop.changed() => break 'outer,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(json: serde_json::Value) -> Event {
        serde_json::from_value(json).unwrap()
    }

    fn check(e: serde_json::Value, want: Option<(&str, i64, i64, &str)>) {
        let got = event_record(&ev(e));
        match (got, want) {
            (None, None) => {}
            (Some(r), Some((labels, count, ts, line))) => {
                assert_eq!(
                    (r.labels.as_str(), r.count, r.ts, r.line.as_str()),
                    (labels, count, ts, line)
                );
            }
            (g, w) => panic!("got {g:?}, want {w:?}"),
        }
    }

    #[test]
    fn event_lines() {
        check(
            serde_json::json!({
                "metadata": {"name": "web-0.1", "namespace": "default", "uid": "u1", "resourceVersion": "77",
                             "creationTimestamp": "2026-11-21T10:00:00Z"},
                "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web-0", "apiVersion": "v1",
                                   "resourceVersion": "12", "fieldPath": "spec.containers{app}"},
                "reason": "Pulled", "type": "Normal", "count": 3,
                "message": "Container image \"nginx:1.27\" already present on machine",
                "source": {"component": "kubelet", "host": "node-a"},
                "firstTimestamp": "2026-11-21T10:00:00Z", "lastTimestamp": "2026-11-21T10:05:00Z"
            }),
            Some((
                "{job=\"kubernetes-events\", kind=\"Pod\", name=\"web-0\", namespace=\"default\", reason=\"Pulled\", type=\"Normal\"}",
                3,
                1_795_255_500_000_000_000,
                "name=web-0 kind=Pod objectAPIversion=v1 objectRV=12 eventRV=77 sourcecomponent=kubelet sourcehost=node-a reason=Pulled type=Normal count=3 msg=\"Container image \\\"nginx:1.27\\\" already present on machine\"",
            )),
        );
        // events.k8s.io style: eventTime and a series; a Node has no namespace label.
        check(
            serde_json::json!({
                "metadata": {"name": "n.1", "namespace": "default", "uid": "u2", "resourceVersion": "78"},
                "involvedObject": {"kind": "Node", "name": "node-a"},
                "reason": "NodeNotReady", "type": "Warning", "action": "Check",
                "reportingComponent": "node-controller", "reportingInstance": "cp 1",
                "message": "line1\nline2",
                "eventTime": "2026-11-21T10:00:00.000001Z",
                "series": {"count": 5, "lastObservedTime": "2026-11-21T10:09:00.5Z"}
            }),
            Some((
                "{job=\"kubernetes-events\", kind=\"Node\", name=\"node-a\", reason=\"NodeNotReady\", type=\"Warning\"}",
                5,
                1_795_255_740_500_000_000,
                "name=node-a kind=Node action=Check eventRV=78 reportinginstance=\"cp 1\" reportingcontroller=node-controller reason=NodeNotReady type=Warning count=5 msg=\"line1\\nline2\"",
            )),
        );
        check(
            serde_json::json!({"metadata": {"uid": "u3"}, "involvedObject": {}, "message": "x"}),
            None,
        );
    }

    fn sample() -> HashMap<String, (i64, i64)> {
        [
            (
                "0b4c6d2e-1f00-4a3b-9c8d-7e6f5a4b3c2d".to_string(),
                (1, 1_795_255_500_000_000_000),
            ),
            (
                "f1e2d3c4-b5a6-4978-8695-a4b3c2d1e0f9".to_string(),
                (17, 1_795_255_740_500_000_000),
            ),
        ]
        .into()
    }

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/compat-tests/fixtures/kube_events_state_v1.txt"
    );

    /// The fixture pins the format; `UPDATE_FIXTURES=1` rewrites it (only when the version changes).
    #[test]
    fn state_fixture_round_trip() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf);
        if std::env::var_os("UPDATE_FIXTURES").is_some() {
            std::fs::write(FIXTURE, &buf).unwrap();
        }
        let pinned = std::fs::read(FIXTURE).unwrap();
        assert_eq!(String::from_utf8_lossy(&buf), String::from_utf8_lossy(&pinned));
        assert_eq!(decode(&pinned, Path::new("f")).unwrap(), sample());
        for bad in [
            &pinned[..pinned.len() - 1],
            &pinned[..pinned.len() / 2],
            b"",
            &vec![0u8; pinned.len()][..],
        ] {
            assert!(decode(bad, Path::new("f")).is_err());
        }
        let mut flipped = pinned.clone();
        flipped[15] ^= 1;
        assert!(decode(&flipped, Path::new("f")).is_err());
    }

    #[test]
    fn dedup_and_prune() {
        let rec = |uid: &str, count, ts| EventRecord {
            uid: uid.into(),
            count,
            ts,
            labels: String::new(),
            line: String::new(),
        };
        let mut st = EventState::default();
        st.seen.insert("a".into(), (2, 100));
        let cases = [
            (rec("a", 2, 100), false), // replayed by a re-list
            (rec("a", 1, 50), false),  // an older version from a stale cache
            (rec("a", 3, 200), true),  // occurred again
            (rec("a", 2, 150), true),  // same count, later series time
            (rec("b", 1, 10), true),
        ];
        for (r, want) in cases {
            assert_eq!(st.is_new(&r, &[]), want, "{r:?}");
        }
        assert!(
            !st.is_new(&rec("b", 1, 10), &[rec("b", 1, 10)]),
            "pending counts as stored"
        );
        let now = 100 * 3_600_000_000_000i64;
        let min = 60_000_000_000i64;
        st.seen = [
            ("live-old".to_string(), (1, now - 30 * min)),
            ("gone-old".to_string(), (1, now - 30 * min)),
            ("gone-new".to_string(), (1, now - min)),
            ("live-ancient".to_string(), (1, now - 25 * 60 * min)),
        ]
        .into();
        let live: HashSet<String> = ["live-old".to_string(), "live-ancient".to_string()].into();
        assert!(st.prune(Some(&live), now));
        let mut left: Vec<_> = st.seen.keys().cloned().collect();
        left.sort();
        assert_eq!(left, ["gone-new", "live-ancient", "live-old"]);
        assert!(st.prune(None, now), "without a list, MAX_AGE applies to all");
        let mut left: Vec<_> = st.seen.keys().cloned().collect();
        left.sort();
        assert_eq!(left, ["gone-new", "live-old"]);
    }
}
