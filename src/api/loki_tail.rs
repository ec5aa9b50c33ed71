//! Loki's live tail, `/loki/api/v1/tail` over a websocket (API.md §3.6): first the recent entries
//! from `start` (up to `limit`), then every newly stored entry that matches, held back `delay_for`
//! seconds, with a ping every second and a clean close when the client closes.
//!
//! Owns: the websocket session and the per-subscriber filtering. Never touches: storage internals
//! (history comes through `LogReader`, live entries from the ingester's broadcast in `ApiState`).
//! Of a query's pipeline only line filters apply; other stages are not evaluated here.

use super::ApiState;
use super::error::plain_text;
use super::loki::{parse_loki_time, tenant};
use super::params::Form;
use crate::ingest::Appended;
use crate::model::{Labels, Matcher};
use crate::query::logql::{self, ast};
use crate::storage::logs::{Direction, LogReader, SelectRequest};
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

/// An entry to send: stream labels, ts ns, line.
type Out = (Arc<Labels>, i64, String);

/// What one subscriber asked for.
struct Tail {
    tenant: String,
    matchers: Vec<Matcher>,
    filters: Vec<ast::LineFilter>,
    limit: usize,
    start: i64,
    delay: Duration,
}

impl Tail {
    fn wants(&self, labels: &Labels, line: &str) -> bool {
        self.matchers
            .iter()
            .all(|m| m.matches(labels.get(&m.name).unwrap_or("")))
            && self
                .filters
                .iter()
                .all(|f| logql::pipeline::line_filter_matches(f, line.as_bytes()))
    }
}

fn parse(uri: &Uri, headers: &HeaderMap, max_entries: usize) -> Result<Tail, TailError> {
    let form = Form::parse(uri.query(), headers, &[]).map_err(|e| TailError::Parse(e.message))?;
    let expr = logql::parser::parse(form.value("query")).map_err(|e| TailError::Parse(e.to_string()))?;
    let ast::Expr::Log(le) = expr else {
        return Err(TailError::NotLogQuery);
    };
    let filters = le
        .stages
        .iter()
        .filter_map(|s| match s {
            ast::Stage::LineFilter(f) => Some(f.clone()),
            _ => None,
        })
        .collect();
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
        matchers: le.matchers,
        filters,
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

/// One message of entries, grouped by stream in arrival order.
fn message(entries: &[Out]) -> String {
    let mut streams: Vec<(Arc<Labels>, Vec<Value>)> = Vec::new();
    for (l, ts, line) in entries {
        let v = json!([ts.to_string(), line]);
        match streams.iter_mut().find(|(sl, _)| sl == l) {
            Some((_, vals)) => vals.push(v),
            None => streams.push((Arc::clone(l), vec![v])),
        }
    }
    let out: Vec<Value> = streams
        .into_iter()
        .map(|(l, values)| {
            let mut m = Map::new();
            for lb in l.iter() {
                m.insert(lb.name.clone(), Value::String(lb.value.clone()));
            }
            json!({"stream": Value::Object(m), "values": values})
        })
        .collect();
    json!({"streams": out}).to_string()
}

/// The most recent `limit` matching entries since `start`, oldest first.
fn history(st: &ApiState, t: &Tail) -> Vec<Out> {
    let filtered = !t.filters.is_empty();
    let Ok(it) = st.logs.select(&SelectRequest {
        tenant: t.tenant.clone(),
        matchers: t.matchers.clone(),
        start: t.start,
        end: now_ns().saturating_add(1),
        direction: Direction::Backward,
        limit: if filtered { 0 } else { t.limit },
        line_contains: Vec::new(),
    }) else {
        return Vec::new();
    };
    let mut out: Vec<Out> = it
        .filter_map(Result::ok)
        .filter(|e| t.wants(&e.labels, &e.entry.line))
        .take(t.limit)
        .map(|e| (e.labels, e.entry.ts, e.entry.line))
        .collect();
    out.reverse();
    out
}

async fn session(st: Arc<ApiState>, mut socket: WebSocket, t: Tail, mut rx: broadcast::Receiver<Arc<Appended>>) {
    let t = Arc::new(t);
    let hist = {
        let (st, t) = (Arc::clone(&st), Arc::clone(&t));
        tokio::task::spawn_blocking(move || history(&st, &t))
            .await
            .unwrap_or_default()
    };
    if !hist.is_empty() && socket.send(Message::Text(message(&hist).into())).await.is_err() {
        return;
    }
    // Entries waiting out `delay_for`: (release at, entry).
    let mut held: VecDeque<(Instant, Out)> = VecDeque::new();
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            _ = ping.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
            _ = flush.tick() => {
                let now = Instant::now();
                let mut ready = Vec::new();
                while held.front().is_some_and(|(at, _)| *at <= now) && ready.len() < t.limit {
                    if let Some((_, e)) = held.pop_front() {
                        ready.push(e);
                    }
                }
                if !ready.is_empty() && socket.send(Message::Text(message(&ready).into())).await.is_err() {
                    return;
                }
            }
            got = rx.recv() => match got {
                Ok(batch) if batch.tenant == t.tenant => {
                    let at = Instant::now() + t.delay;
                    for s in &batch.streams {
                        let labels = Arc::new(s.labels.clone());
                        for (ts, line) in &s.entries {
                            if t.wants(&labels, line) {
                                held.push_back((at, (Arc::clone(&labels), *ts, line.clone())));
                            }
                        }
                    }
                }
                Ok(_) => {}
                // A slow reader missed batches; Loki would list them as dropped_entries, whose
                // labels we no longer have. Keep going with what comes next.
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
