//! Loki's live tail, `/loki/api/v1/tail` over a websocket (API.md §3.6): first the recent entries
//! from `start` (up to `limit`), then every newly stored entry that matches, held back `delay_for`
//! seconds, with a ping every second and a clean close when the client closes.
//!
//! Owns: the websocket session, the per-subscriber pipeline run and the dropped-entries account.
//! Never touches: storage internals (history comes through `LogReader`, live entries from the
//! ingester's broadcast in `ApiState`) or LogQL semantics: history and live batches alike go
//! through the engine's log-query evaluation (`eval_log`), so parsers, label filters,
//! `line_format`, `drop`/`keep` apply as in `/query_range`, and streams carry the pipeline's
//! output labels.

use super::ApiState;
use super::error::plain_text;
use super::loki::{parse_loki_time, tenant};
use super::loki_query::{StopReader, run_stoppable};
use super::params::Form;
use crate::ingest::{Appended, AppendedStream};
use crate::model::Matcher;
use crate::query::logql::eval::{self, LogParams};
use crate::query::logql::pipeline::Pairs;
use crate::query::logql::{self, LogSource, SourceEntry, SourceError, SourceStream, StoreSource, ast};
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Loki's bound on `delay_for` (seconds); `limit` is bounded by `max_entries_limit_per_query`.
const MAX_DELAY_SECS: u64 = 5;
const PING_EVERY: Duration = Duration::from_secs(1);
/// How often held-back entries are checked for release.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Messages waiting for a slow reader before further entries are dropped and reported in
/// `dropped_entries` (Loki's tailer: `maxBufferedTailResponses`).
const MAX_QUEUED_MESSAGES: usize = 10;
/// Dropped entries reported in one message (Loki's `maxDroppedEntriesPerTailResponse`); more are
/// dropped without a report.
const MAX_DROPPED_REPORTED: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("{0}")]
    Parse(String),
    #[error("tailing only works with log queries")]
    NotLogQuery,
    #[error("delay_for can't be greater than {MAX_DELAY_SECS}")]
    Delay,
    #[error("max entries limit per query exceeded, limit > max_entries_limit_per_query ({0} > {1})")]
    Limit(usize, usize),
    #[error("invalid {0}: {1}")]
    Param(&'static str, String),
}

/// An entry to send: the pipeline's output labels, ts ns, line.
type Out = (Arc<Pairs>, i64, String);

/// What one subscriber asked for.
struct Tail {
    tenant: String,
    query: ast::LogExpr,
    limit: usize,
    start: i64,
    delay: Duration,
}

/// One stored batch seen as a log source, so the engine's own log-query evaluation runs the
/// subscriber's pipeline over it.
struct BatchSource<'a>(&'a [AppendedStream]);

impl LogSource for BatchSource<'_> {
    fn select(&self, matchers: &[Matcher], start_ns: i64, end_ns: i64) -> Result<Vec<SourceStream>, SourceError> {
        Ok(self
            .0
            .iter()
            .filter(|s| matchers.iter().all(|m| m.matches(s.labels.get(&m.name).unwrap_or(""))))
            .map(|s| SourceStream {
                labels: s.labels.clone(),
                entries: s
                    .entries
                    .iter()
                    .filter(|(ts, _)| (start_ns..end_ns).contains(ts))
                    .map(|(ts, line)| SourceEntry {
                        ts_ns: *ts,
                        line: line.clone(),
                        structured_metadata: Vec::new(),
                    })
                    .collect(),
            })
            .collect())
    }
}

/// The entries of `src` in `[start, end)` that pass `t`'s pipeline, at most `limit`, oldest first
/// (newest `limit` when `newest`).
fn run_pipeline(src: &dyn LogSource, t: &Tail, start: i64, end: i64, limit: usize, newest: bool) -> Vec<Out> {
    let params = LogParams {
        start,
        end,
        limit,
        forward: !newest,
        categorize: false,
        interval: 0,
    };
    let Ok(streams) = eval::eval_log(src, &t.query, params) else {
        return Vec::new();
    };
    let mut out: Vec<Out> = Vec::new();
    for s in streams {
        let labels = Arc::new(s.labels);
        out.extend(s.entries.into_iter().map(|e| (Arc::clone(&labels), e.ts, e.line)));
    }
    // Streams come sorted by labels: back to time order (stable, so a stream keeps its order).
    out.sort_by_key(|(_, ts, _)| *ts);
    out
}

fn parse(uri: &Uri, headers: &HeaderMap, max_entries: usize) -> Result<Tail, TailError> {
    let form = Form::parse(uri.query(), headers, &[]).map_err(|e| TailError::Parse(e.message))?;
    let expr = logql::parser::parse(form.value("query")).map_err(|e| TailError::Parse(e.to_string()))?;
    let ast::Expr::Log(le) = expr else {
        return Err(TailError::NotLogQuery);
    };
    let limit = match form.value("limit") {
        "" => 100,
        s => s.parse().map_err(|_| TailError::Param("limit", s.to_string()))?,
    };
    if limit > max_entries {
        return Err(TailError::Limit(limit, max_entries));
    }
    let delay = match form.value("delay_for") {
        "" => 0,
        s => s.parse().map_err(|_| TailError::Param("delay_for", s.to_string()))?,
    };
    if delay > MAX_DELAY_SECS {
        return Err(TailError::Delay);
    }
    let now = now_ns();
    let start = match form.value("start") {
        "" => now - 3_600_000_000_000,
        s => parse_loki_time(s).ok_or_else(|| TailError::Param("start", s.to_string()))?,
    };
    Ok(Tail {
        tenant: tenant(headers),
        query: le,
        limit,
        start,
        delay: Duration::from_secs(delay),
    })
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

pub async fn tail(State(st): State<Arc<ApiState>>, ws: WebSocketUpgrade, uri: Uri, headers: HeaderMap) -> Response {
    let t = match parse(&uri, &headers, st.loki_limits.max_entries) {
        Ok(t) => t,
        Err(e) => return plain_text(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    // Subscribe before reading history, so that nothing stored in between is missed.
    let rx = st.tail.subscribe();
    ws.on_upgrade(move |socket| session(st, socket, t, rx))
}

/// One message: entries grouped by stream in arrival order, and the entries dropped since the
/// last message as Loki's tailer reports them (`{"labels":{...},"timestamp":"<ns>"}`).
fn message(entries: &[Out], dropped: &[(Arc<Pairs>, i64)]) -> String {
    let obj = |l: &Pairs| {
        let mut m = Map::new();
        for (k, v) in l {
            m.insert(k.clone(), Value::String(v.clone()));
        }
        Value::Object(m)
    };
    let mut streams: Vec<(Arc<Pairs>, Vec<Value>)> = Vec::new();
    for (l, ts, line) in entries {
        let v = json!([ts.to_string(), line]);
        match streams.iter_mut().find(|(sl, _)| sl == l) {
            Some((_, vals)) => vals.push(v),
            None => streams.push((Arc::clone(l), vec![v])),
        }
    }
    let out: Vec<Value> = streams
        .into_iter()
        .map(|(l, values)| json!({"stream": obj(&l), "values": values}))
        .collect();
    let mut m = Map::new();
    m.insert("streams".into(), Value::Array(out));
    if !dropped.is_empty() {
        let d: Vec<Value> = dropped
            .iter()
            .map(|(l, ts)| json!({"labels": obj(l), "timestamp": ts.to_string()}))
            .collect();
        m.insert("dropped_entries".into(), Value::Array(d));
    }
    Value::Object(m).to_string()
}

/// The most recent `limit` matching entries since `start`, oldest first, read like a backward
/// `/query_range` (on a query thread, within `query_timeout`; a history that times out is empty).
async fn history(st: &ApiState, t: &Arc<Tail>) -> Vec<Out> {
    let (logs, t) = (Arc::clone(&st.logs), Arc::clone(t));
    run_stoppable(st, move |stop| {
        let reader = StopReader {
            inner: logs.as_ref(),
            stop,
        };
        let src = StoreSource {
            reader: &reader,
            tenant: &t.tenant,
        };
        run_pipeline(&src, &t, t.start, now_ns().saturating_add(1), t.limit, true)
    })
    .await
    .unwrap_or_default()
}

/// The live side of a session: entries waiting out `delay_for`, messages waiting for the socket,
/// and what was dropped because the reader is too slow.
struct Outbox {
    /// (release at, entry).
    held: VecDeque<(Instant, Out)>,
    queued: VecDeque<String>,
    dropped: Vec<(Arc<Pairs>, i64)>,
    limit: usize,
}

impl Outbox {
    fn take_batch(&mut self, t: &Tail, batch: &Appended) {
        if batch.tenant != t.tenant {
            return;
        }
        let at = Instant::now() + t.delay;
        let src = BatchSource(&batch.streams);
        for e in run_pipeline(&src, t, i64::MIN, i64::MAX, usize::MAX, false) {
            self.held.push_back((at, e));
        }
    }

    /// Moves released entries into messages; with `MAX_QUEUED_MESSAGES` already waiting, they
    /// are dropped and listed in the next message that goes out, as Loki's tailer does.
    fn flush(&mut self) {
        let now = Instant::now();
        while self.held.front().is_some_and(|(at, _)| *at <= now) {
            let mut ready = Vec::new();
            while ready.len() < self.limit
                && let Some((_, e)) = self.held.pop_front_if(|(at, _)| *at <= now)
            {
                ready.push(e);
            }
            if self.queued.len() >= MAX_QUEUED_MESSAGES {
                let room = MAX_DROPPED_REPORTED.saturating_sub(self.dropped.len());
                self.dropped
                    .extend(ready.into_iter().take(room).map(|(l, ts, _)| (l, ts)));
                continue;
            }
            self.queued.push_back(message(&ready, &self.dropped));
            self.dropped.clear();
        }
    }
}

async fn session(st: Arc<ApiState>, mut socket: WebSocket, t: Tail, mut rx: broadcast::Receiver<Arc<Appended>>) {
    let t = Arc::new(t);
    let hist = history(&st, &t).await;
    if !hist.is_empty() && socket.send(Message::Text(message(&hist, &[]).into())).await.is_err() {
        return;
    }
    let mut ob = Outbox {
        held: VecDeque::new(),
        queued: VecDeque::new(),
        dropped: Vec::new(),
        limit: t.limit.max(1),
    };
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    loop {
        // A message is going out: keep taking batches (and dropping what does not fit) while the
        // socket waits for a slow reader, so the ingester's broadcast never lags behind us.
        if let Some(m) = ob.queued.pop_front() {
            let send = socket.send(Message::Text(m.into()));
            tokio::pin!(send);
            loop {
                tokio::select! {
                    r = &mut send => {
                        if r.is_err() {
                            return;
                        }
                        break;
                    }
                    _ = flush.tick() => ob.flush(),
                    got = rx.recv() => match got {
                        Ok(batch) => ob.take_batch(&t, &batch),
                        // Batches this subscriber never saw: their labels are unknown here.
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
            continue;
        }
        tokio::select! {
            _ = ping.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
            _ = flush.tick() => ob.flush(),
            got = rx.recv() => match got {
                Ok(batch) => ob.take_batch(&t, &batch),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) => {
                    // The close reply is queued by the protocol layer and written by the next
                    // read, which then reports the end of the connection.
                    while let Some(Ok(_)) = socket.recv().await {}
                    return;
                }
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
