//! Kubernetes: the metadata cache of this node's pods and of the node itself, and Kubernetes events
//! as log streams. The only user of the `kube` and `k8s-openapi` crates (tidy enforces it).
//!
//! Owns: the API client (in-cluster service account, or a plain `api_url` for tests and out-of-cluster
//! use); three `kube::runtime::watcher`s (pods with `spec.nodeName=<node>`, the node with
//! `metadata.name=<node>`, events cluster-wide), each served from the API server's watch cache
//! (`ListSemantic::Any`: a DaemonSet re-listing on every node must not turn into quorum reads of
//! etcd, fluent/fluent-bit#6676) with bookmarks and kube's default backoff; the [`PodCache`], which
//! strips every object to [`PodMeta`]/[`NodeMeta`] as it arrives (no `managedFields`, no spec beyond
//! the ports) and implements both [`ClusterView`] and the tailer's [`LabelProvider`]; the events
//! source ([`events`]) and its dedup state file. Every task it spawns is held by the
//! [`KubeHandle`] that `app` stops on shutdown.
//!
//! Never touches: the config file (plain [`KubeOptions`] from `app`), HTTP serving, storage
//! internals: event lines enter the store through a [`LogSink`] (in production the Loki ingester's
//! write path, like the tailer's).
//!
//! Failure: the API unreachable or answering errors never stops a task: the watcher retries with
//! backoff (0.8 s doubling to 30 s), each error counts in
//! `monitoring_rs_kube_watch_errors_total{resource}` and clears
//! `monitoring_rs_kube_cache_synced{resource}` until the next good answer. Meanwhile the tailer's
//! streams carry the labels from the path alone.

pub mod events;
mod pods;

pub use pods::{PodCache, node_meta, pod_meta};

use crate::collect::logs::LogSink;
use crate::collect::meta::ClusterView;
#[cfg(doc)]
use crate::collect::{
    logs::LabelProvider,
    meta::{NodeMeta, PodMeta},
};
use futures_util::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubernetes API url {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("kubernetes client configuration: {0}")]
    Client(String),
    #[error(transparent)]
    State(#[from] events::StateError),
}

#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// The API server; empty: the in-cluster configuration (service account token and CA,
    /// `KUBERNETES_SERVICE_HOST`). Plain `http://` is accepted (tests, `kubectl proxy`).
    pub api_url: String,
    /// This node: the pods watch selects `spec.nodeName=<node>`.
    pub node_name: String,
    /// How long a deleted pod's metadata stays for its late log lines.
    pub deleted_pod_grace: Duration,
    /// Watch events and store them as `{job="kubernetes-events"}` streams.
    pub events: bool,
    /// The events dedup state file (in the data directory).
    pub events_state: PathBuf,
}

/// What each watcher watches, for the per-resource metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Pods,
    Nodes,
    Events,
}

impl Resource {
    pub const ALL: [Resource; 3] = [Resource::Pods, Resource::Nodes, Resource::Events];

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Nodes => "nodes",
            Resource::Events => "events",
        }
    }
}

/// Counters and gauges for `/metrics`.
#[derive(Debug, Default)]
pub struct KubeStats {
    /// Errors the watchers yielded (list or watch failed, 410 Gone, bad answers), by [`Resource`].
    pub watch_errors: [AtomicU64; 3],
    /// 1 when the watcher's last answer was good and a full list has been seen, else 0.
    pub synced: [AtomicU64; 3],
    /// Objects received (list items and watch changes), by [`Resource`].
    pub objects: [AtomicU64; 3],
    /// Full lists completed (the first one and every re-list).
    pub lists: [AtomicU64; 3],
    /// Event lines stored, and events seen again unchanged (re-lists, restarts) and so skipped.
    pub events_stored: AtomicU64,
    pub events_duplicate: AtomicU64,
    /// Events without an involved object (not stored).
    pub events_invalid: AtomicU64,
    /// Pushes of event lines the sink refused (retried), and state file writes that failed.
    pub events_sink_errors: AtomicU64,
    pub events_state_errors: AtomicU64,
}

impl KubeStats {
    fn error(&self, r: Resource) {
        self.watch_errors[r as usize].fetch_add(1, Ordering::Relaxed);
        self.synced[r as usize].store(0, Ordering::Relaxed);
    }
}

/// The running watchers; [`KubeHandle::shutdown`] stops and awaits every one.
pub struct KubeHandle {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
    cache: Arc<PodCache>,
}

impl KubeHandle {
    /// The pod and node cache: the tailer's `LabelProvider`, the scraper's `ClusterView`.
    pub fn cache(&self) -> Arc<PodCache> {
        Arc::clone(&self.cache)
    }

    pub fn cluster_view(&self) -> Arc<dyn ClusterView> {
        self.cache.clone()
    }

    /// Waits until the pod list has arrived once, or `timeout` passed (the API may be down: the
    /// caller goes on with labels from the path).
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.cache.listed() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r {
                tracing::warn!(error = %e, "A Kubernetes watcher task failed.");
            }
        }
    }
}

/// Lists served from the API server's watch cache (`resourceVersion=0`), unpaged: kube-core drops
/// `resourceVersion=0` from a list that has a `limit` (`ListParams::populate_qp`), and the API
/// server ignores `limit` for cached lists anyway, so the default page size of 500 would silently
/// turn every (re-)list into a quorum read of etcd. Vector's `use_apiserver_cache` drops the page
/// size for the same reason.
fn cached(mut c: watcher::Config) -> watcher::Config {
    c = c.any_semantic();
    c.page_size = None;
    c
}

fn client(opts: &KubeOptions) -> Result<kube::Client, KubeError> {
    let config = if opts.api_url.is_empty() {
        kube::Config::incluster().map_err(|e| KubeError::Client(e.to_string()))?
    } else {
        let url = opts
            .api_url
            .parse()
            .map_err(|e: http::uri::InvalidUri| KubeError::Url {
                url: opts.api_url.clone(),
                message: e.to_string(),
            })?;
        kube::Config::new(url)
    };
    kube::Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))
}

/// Starts the pod and node watchers (and the events watcher when `opts.events`); must run inside
/// the tokio runtime. Returns at once: the cache fills in the background.
pub fn start(opts: KubeOptions, sink: Arc<dyn LogSink>, stats: Arc<KubeStats>) -> Result<KubeHandle, KubeError> {
    let client = client(&opts)?;
    let cache = Arc::new(PodCache::new(opts.deleted_pod_grace).watched_by(Arc::clone(&stats)));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let node = &opts.node_name;

    let pods = watcher(
        kube::Api::<k8s_openapi::api::core::v1::Pod>::all(client.clone()),
        cached(watcher::Config::default().fields(&format!("spec.nodeName={node}"))),
    )
    .default_backoff();
    let c = Arc::clone(&cache);
    // Deleted pods leave the cache after their grace; a tick a tenth of the grace keeps the excess
    // stay under 10 % without waking more than once a second.
    let prune_every = (opts.deleted_pod_grace / 10).max(Duration::from_secs(1));
    tasks.spawn(run_watch(
        pods,
        Resource::Pods,
        Arc::clone(&stats),
        stop_rx.clone(),
        prune_every,
        move |ev| c.on_pod_event(ev),
        {
            let c = Arc::clone(&cache);
            move || c.prune(std::time::Instant::now())
        },
    ));

    let nodes = watcher(
        kube::Api::<k8s_openapi::api::core::v1::Node>::all(client.clone()),
        cached(watcher::Config::default().fields(&format!("metadata.name={node}"))),
    )
    .default_backoff();
    let c = Arc::clone(&cache);
    tasks.spawn(run_watch(
        nodes,
        Resource::Nodes,
        Arc::clone(&stats),
        stop_rx.clone(),
        Duration::from_secs(3600),
        move |ev| c.on_node_event(ev),
        || {},
    ));

    if opts.events {
        let state = events::EventState::load(&opts.events_state)?;
        let evs = watcher(
            kube::Api::<k8s_openapi::api::core::v1::Event>::all(client),
            cached(watcher::Config::default()),
        )
        .default_backoff();
        tasks.spawn(events::run(evs, state, sink, Arc::clone(&stats), stop_rx));
    }
    Ok(KubeHandle { stop, tasks, cache })
}

/// One watcher's loop: every change goes to `on_event` (synchronous, no lock held across an await),
/// errors are counted and the watcher, backing off, recovers by itself.
async fn run_watch<K, S>(
    stream: S,
    resource: Resource,
    stats: Arc<KubeStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    tick_every: Duration,
    mut on_event: impl FnMut(watcher::Event<K>) + Send,
    mut on_tick: impl FnMut() + Send,
) where
    S: futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    K: Send,
{
    let mut stream = std::pin::pin!(stream);
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listed = false;
    let i = resource as usize;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => on_tick(),
            ev = stream.next() => match ev {
                None => break,
                Some(Ok(ev)) => {
                    match &ev {
                        watcher::Event::InitDone => {
                            listed = true;
                            stats.lists[i].fetch_add(1, Ordering::Relaxed);
                        }
                        watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitApply(_) => {
                            stats.objects[i].fetch_add(1, Ordering::Relaxed);
                        }
                        watcher::Event::Init => {}
                    }
                    on_event(ev);
                    if listed {
                        stats.synced[i].store(1, Ordering::Relaxed);
                    }
                }
                Some(Err(e)) => {
                    stats.error(resource);
                    tracing::warn!(resource = resource.as_str(), error = %e, "Kubernetes watch failed; retrying with backoff.");
                }
            }
        }
    }
}
