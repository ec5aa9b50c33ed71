//! Composition root: builds every part from the configuration, owns the task tree and shutdown.
//!
//! Owns: wiring (which options each part gets), the listeners, signal handling, and the order of
//! shutdown (stop accepting, finish in-flight requests, close the store). Never touches: protocol
//! details or storage formats.

use crate::api::{self, ApiState, PushStats, WriteStats};
use crate::collect::kube::{KubeHandle, KubeOptions, KubeStats, Resource as KubeResource};
use crate::collect::logs::{
    ErrorReason, IngestSink, LabelProvider, PathLabels, StopSignal, Tailer, TailerOptions, TailerStats,
};
use crate::collect::meta::ClusterView;
use crate::collect::scrape::{ScrapeConfig, ScrapeState, Scraper};
use crate::config::{Compression, Config, FsyncSetting};
use crate::ingest::{
    Discard, IngestStats, Limits, LokiIngester, LokiLimits, LokiStats, MetricsIngester, SeriesRejection,
};
use crate::storage::logs::{Codec, LogStore, LogsOptions, LogsStats};
use crate::storage::metrics::{DbStats, MetricsDb, MetricsOptions, RejectReason};
use crate::storage::wal::WalStats;
use crate::telemetry::Registry;
use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Runs the server until SIGTERM or SIGINT.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("monitoring-rs")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(cfg))
}

/// Every 30 s, hands memory that glibc keeps free inside its heaps back to the kernel
/// (malloc_trim(3)): after a burst (catching up on logs, a large query) RSS returns to the working
/// set instead of staying at the burst's peak. `cargo bench --bench tailer`, idle figure: RSS 47.0
/// vs 49.8 MiB without it (one run each). With it, `cargo bench --bench logql` ran the set in
/// 0.749-0.771 s (three runs), as before it.
async fn trim_malloc_arenas() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim(3) takes the allocator's own locks; no memory of ours is touched.
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
    }
}

pub fn metrics_options(cfg: &Config) -> MetricsOptions {
    let m = &cfg.storage.metrics;
    MetricsOptions {
        dir: cfg.data_dir.join("metrics"),
        retention: m.retention_time.0,
        retention_bytes: m.retention_size.0,
        block_duration: m.block_duration.0,
        wal_segment_size: m.wal_segment_size.0,
        fsync_interval: match m.wal_fsync {
            FsyncSetting::Always => None,
            FsyncSetting::Interval(d) => Some(d),
        },
        too_far_in_future: m.too_far_in_future.0,
    }
}

pub fn logs_options(cfg: &Config) -> LogsOptions {
    let l = &cfg.storage.logs;
    LogsOptions {
        dir: cfg.data_dir.join("logs"),
        retention: l.retention_time.0,
        retention_bytes: l.retention_size.0,
        codec: match l.compression {
            Compression::Zstd => Codec::Zstd(l.compression_level),
            Compression::Snappy => Codec::Snappy,
            Compression::None => Codec::None,
        },
        block_size: usize::try_from(l.block_size.0).unwrap_or(32 << 10),
        chunk_target_size: l.chunk_target_size.0,
        max_chunk_age: l.max_chunk_age.0,
        chunk_idle_period: l.chunk_idle_period.0,
        head_idle_period: l.head_idle_period.0,
        wal_segment_size: l.wal_segment_size.0,
        data_segment_size: 16 << 20,
        fsync_interval: match l.wal_fsync {
            FsyncSetting::Always => None,
            FsyncSetting::Interval(d) => Some(d),
        },
        wal_checkpoint_size: l.wal_checkpoint_size.0,
        max_streams_per_tenant: cfg.limits.logs.max_streams_per_tenant,
        // Spilling idle streams to index files is not configurable: the defaults.
        ..LogsOptions::new(cfg.data_dir.join("logs"))
    }
}

pub fn loki_limits(cfg: &Config) -> LokiLimits {
    let l = &cfg.limits.logs;
    LokiLimits {
        max_label_names_per_series: l.max_label_names_per_series,
        max_label_name_length: l.max_label_name_length,
        max_label_value_length: l.max_label_value_length,
        max_line_size: usize::try_from(l.max_line_size.0).unwrap_or(usize::MAX),
        max_line_size_truncate: l.max_line_size_truncate,
        reject_old_samples_max_age: l.reject_old_samples.then_some(l.reject_old_samples_max_age.0),
        creation_grace_period: l.creation_grace_period.0,
        discover_service_name: l.discover_service_name.clone(),
        discover_log_levels: l.discover_log_levels,
    }
}

pub fn loki_query_limits(cfg: &Config) -> api::LokiQueryLimits {
    let l = &cfg.limits.logs;
    api::LokiQueryLimits {
        max_entries: l.max_entries_limit_per_query,
        max_series: l.max_query_series,
        timeout: l.query_timeout.0,
        max_query_length: l.max_query_length.0,
        max_query_lookback: l.max_query_lookback.0,
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let trimmer = tokio::spawn(trim_malloc_arenas());
    let opts = metrics_options(&cfg);
    let dir = opts.dir.clone();
    let db = tokio::task::spawn_blocking(move || MetricsDb::open(opts))
        .await
        .context("opening the metrics store")?
        .with_context(|| format!("opening the metrics store in {}", dir.display()))?;
    let limits = Limits {
        max_label_name_length: cfg.limits.max_label_name_length,
        max_label_value_length: cfg.limits.max_label_value_length,
        max_labels_per_series: cfg.limits.max_labels_per_series,
    };
    let ingester = Arc::new(MetricsIngester::new(Arc::clone(&db), limits));
    let lopts = logs_options(&cfg);
    let ldir = lopts.dir.clone();
    let logs = tokio::task::spawn_blocking(move || LogStore::open(lopts))
        .await
        .context("opening the log store")?
        .with_context(|| format!("opening the log store in {}", ldir.display()))?;
    // Live tail: the api state owns the channel, the ingester announces stored batches on it.
    let (tail, _) = tokio::sync::broadcast::channel(crate::api::TAIL_CHANNEL);
    let loki = Arc::new(LokiIngester::new(Arc::clone(&logs), loki_limits(&cfg)).with_tail(tail.clone()));
    let push_stats = Arc::new(PushStats::default());
    let registry = Registry::new();
    let kube = start_kube(&cfg, &loki, &registry)?;
    let labels: Arc<dyn LabelProvider> = match &kube {
        Some(k) => {
            // Files found before the first pod list would keep path labels only: give the list a
            // moment (a healthy API answers in milliseconds); an API that is down only delays this.
            if !k.wait_synced(std::time::Duration::from_secs(5)).await {
                tracing::warn!(
                    "No pod list from the Kubernetes API yet; log streams carry path labels until it answers."
                );
            }
            k.cache()
        }
        None => Arc::new(PathLabels),
    };
    let tailer = start_tailer(&cfg, &loki, &registry, labels)?;
    // `kubernetes_sd_configs` discovers from this node's pods and the node itself, live (None
    // without Kubernetes: such jobs then have no targets).
    let cluster: Option<Arc<dyn ClusterView>> = kube.as_ref().map(|k| k.cluster_view());
    let scraper = start_scraper(&cfg, &ingester, cluster)?;
    let write_stats = Arc::new(WriteStats::default());
    register_metrics(&registry, db.stats(), db.wal_stats(), ingester.stats(), &write_stats);
    register_log_metrics(&registry, &logs, loki.stats(), &push_stats);
    let loki_query_stats = Arc::new(api::LokiQueryStats::default());
    register_loki_query_metrics(&registry, &loki_query_stats);
    let state = Arc::new(ApiState {
        db: Arc::clone(&db),
        ingester,
        registry,
        max_write_body: usize::try_from(cfg.limits.remote_write_max_body.0).unwrap_or(usize::MAX),
        write_stats,
        http_requests: AtomicU64::new(0),
        logs: Arc::clone(&logs),
        loki,
        max_push_body: usize::try_from(cfg.limits.logs.max_push_body.0).unwrap_or(usize::MAX),
        push_stats,
        tail,
        engine: crate::query::promql::Engine::new(crate::query::promql::EngineOptions {
            lookback_delta_ms: cfg.query.lookback_delta.0.as_millis() as i64,
            max_samples: cfg.query.max_samples,
            timeout: cfg.query.timeout.0,
            delayed_name_removal: cfg.query.delayed_name_removal,
            ..Default::default()
        }),
        query_slots: Arc::new(tokio::sync::Semaphore::new(cfg.query.max_concurrency)),
        loki_limits: loki_query_limits(&cfg),
        loki_query_stats,
        targets: scraper
            .as_ref()
            .map(|s| Arc::new(ScrapeTargets(s.state())) as Arc<dyn api::TargetsSource>),
    });
    let router = api::router(state);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    for addr in cfg.listen_addrs() {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        tracing::info!(%addr, "Serving the Prometheus and Loki APIs.");
        let router = router.clone();
        let mut rx = stop_rx.clone();
        servers.spawn(api::serve(listener, router, async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
    }
    shutdown_signal().await;
    if let Some((stop, handle)) = tailer {
        // First, while the store is open: the tailer pushes what it holds and writes its positions.
        stop.stop();
        match tokio::task::spawn_blocking(move || handle.join()).await {
            Ok(Ok(())) => tracing::info!("Pod-log tailer stopped; positions written."),
            _ => tracing::warn!("The pod-log tailer thread panicked."),
        }
    }
    if let Some(k) = kube {
        // Also while the store is open: the events watcher finishes the batch it is writing.
        k.shutdown().await;
        tracing::info!("Kubernetes watchers stopped.");
    }
    tracing::info!("Shutting down: finishing in-flight requests.");
    let _ = stop_tx.send(true);
    while let Some(res) = servers.join_next().await {
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "A listener ended with an error."),
            Err(e) => tracing::warn!(error = %e, "A listener task failed."),
        }
    }
    if let Some(s) = scraper {
        // Before the store closes: each loop writes staleness markers for its series.
        s.shutdown().await;
    }
    let db2 = Arc::clone(&db);
    tokio::task::spawn_blocking(move || db2.close())
        .await
        .context("closing the metrics store")??;
    tracing::info!("Metrics store closed cleanly.");
    let logs2 = Arc::clone(&logs);
    tokio::task::spawn_blocking(move || logs2.close())
        .await
        .context("closing the log store")??;
    tracing::info!("Log store flushed and closed cleanly.");
    trimmer.abort();
    Ok(())
}

/// The tailer's options from `collect.logs`; `None` when no pod-logs tree is configured.
/// In a cluster (the kube watchers on with the in-cluster configuration) an empty `pod_logs_dir`
/// means the node's `/var/log/pods`.
pub fn tailer_options(cfg: &Config) -> Option<TailerOptions> {
    let c = &cfg.collect.logs;
    let in_cluster = cfg.collect.kube.active() && cfg.collect.kube.api_url.is_empty();
    let root = if !c.pod_logs_dir.as_os_str().is_empty() {
        c.pod_logs_dir.clone()
    } else if in_cluster {
        std::path::PathBuf::from("/var/log/pods")
    } else {
        return None;
    };
    let mut o = TailerOptions::new(root, cfg.data_dir.join("tailer-positions"));
    o.node_name = node_name(cfg);
    o.pod_labels = c.pod_labels.clone();
    o.rescan_interval = c.rescan_interval.0;
    o.max_line_size = usize::try_from(c.max_line_size.0).unwrap_or(usize::MAX);
    o.partial_timeout = c.partial_timeout.0;
    o.batch_bytes = usize::try_from(c.batch_size.0).unwrap_or(1 << 20);
    Some(o)
}

/// This node's name: `collect.logs.node_name`, else `$NODE_NAME` (the downward API), else the host
/// name. Shared by the tailer's `node` label and the kube pods watch.
pub fn node_name(cfg: &Config) -> String {
    let c = &cfg.collect.logs;
    if !c.node_name.is_empty() {
        c.node_name.clone()
    } else if let Ok(n) = std::env::var("NODE_NAME") {
        n
    } else {
        host_name()
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

type TailerHandle = (Arc<StopSignal>, std::thread::JoinHandle<()>);

/// The tailer runs on its own thread (blocking reads, fsyncs and pushes: backpressure is the thread
/// waiting); the app owns it and stops it before the store closes.
fn start_tailer(
    cfg: &Config,
    loki: &Arc<LokiIngester>,
    registry: &Registry,
    labels: Arc<dyn LabelProvider>,
) -> anyhow::Result<Option<TailerHandle>> {
    let Some(opts) = tailer_options(cfg) else {
        return Ok(None);
    };
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let stats = Arc::new(TailerStats::default());
    register_tailer_metrics(registry, &stats);
    let sink = Arc::new(IngestSink {
        ingester: Arc::clone(loki),
        tenant: crate::api::DEFAULT_TENANT.to_string(),
    });
    tracing::info!(root = %opts.root.display(), node = %opts.node_name, "Tailing pod logs.");
    let tailer = Tailer::new(opts, sink, labels, stats);
    let stop = Arc::new(StopSignal::new().context("creating the tailer's stop signal")?);
    let stop2 = Arc::clone(&stop);
    let handle = std::thread::Builder::new()
        .name("pod-log-tailer".to_string())
        .spawn(move || tailer.run(&stop2))
        .context("starting the pod-log tailer")?;
    Ok(Some((stop, handle)))
}

/// The Kubernetes watchers, when `collect.kube` is active; their tasks stop in `KubeHandle::shutdown`.
fn start_kube(cfg: &Config, loki: &Arc<LokiIngester>, registry: &Registry) -> anyhow::Result<Option<KubeHandle>> {
    let k = &cfg.collect.kube;
    if !k.active() {
        return Ok(None);
    }
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let opts = KubeOptions {
        api_url: k.api_url.clone(),
        node_name: node_name(cfg),
        deleted_pod_grace: k.deleted_pod_grace.0,
        events: k.events,
        events_state: cfg.data_dir.join("kube-events-state"),
    };
    let sink = Arc::new(IngestSink {
        ingester: Arc::clone(loki),
        tenant: crate::api::DEFAULT_TENANT.to_string(),
    });
    let stats = Arc::new(KubeStats::default());
    register_kube_metrics(registry, &stats);
    tracing::info!(
        api = if opts.api_url.is_empty() { "in-cluster" } else { opts.api_url.as_str() },
        node = %opts.node_name,
        events = opts.events,
        "Watching Kubernetes for this node's pods."
    );
    let h = crate::collect::kube::start(opts, sink, stats).context("config section `collect.kube`")?;
    Ok(Some(h))
}

fn register_kube_metrics(reg: &Registry, st: &Arc<KubeStats>) {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    let st = Arc::clone(st);
    reg.register(move |w| {
        let per_resource: [(&str, &str, &str, &[AtomicU64; 3]); 4] = [
            (
                "monitoring_rs_kube_watch_errors_total",
                "counter",
                "Errors of the Kubernetes watchers (list or watch failed, 410 Gone, API unreachable), by resource.",
                &st.watch_errors,
            ),
            (
                "monitoring_rs_kube_cache_synced",
                "gauge",
                "1 when the watcher holds a complete list and its last answer was good, by resource.",
                &st.synced,
            ),
            (
                "monitoring_rs_kube_objects_total",
                "counter",
                "Objects received by the Kubernetes watchers (list items and changes), by resource.",
                &st.objects,
            ),
            (
                "monitoring_rs_kube_lists_total",
                "counter",
                "Complete lists (first list and re-lists) by the Kubernetes watchers, by resource.",
                &st.lists,
            ),
        ];
        for (name, kind, help, v) in per_resource {
            w.header(name, kind, help);
            for r in KubeResource::ALL {
                w.sample(name, &[("resource", r.as_str())], g(&v[r as usize]));
            }
        }
        let counters: [(&str, &str, &AtomicU64); 5] = [
            (
                "monitoring_rs_kube_events_stored_total",
                "Kubernetes event occurrences stored as log lines.",
                &st.events_stored,
            ),
            (
                "monitoring_rs_kube_events_duplicate_total",
                "Kubernetes events seen again unchanged (re-lists, restarts) and not stored twice.",
                &st.events_duplicate,
            ),
            (
                "monitoring_rs_kube_events_invalid_total",
                "Kubernetes events without an involved object, not stored.",
                &st.events_invalid,
            ),
            (
                "monitoring_rs_kube_events_sink_errors_total",
                "Batches of event lines the store refused (retried).",
                &st.events_sink_errors,
            ),
            (
                "monitoring_rs_kube_events_state_errors_total",
                "Failed writes of the events dedup state file.",
                &st.events_state_errors,
            ),
        ];
        for (name, help, v) in counters {
            w.single(name, "counter", help, g(v));
        }
    });
}

fn register_tailer_metrics(reg: &Registry, st: &Arc<TailerStats>) {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    let st = Arc::clone(st);
    reg.register(move |w| {
        let counters: [(&str, &str, &AtomicU64); 11] = [
            (
                "monitoring_rs_tailer_lines_total",
                "Log lines the tailer stored.",
                &st.lines,
            ),
            (
                "monitoring_rs_tailer_bytes_total",
                "Bytes of log lines the tailer stored.",
                &st.bytes,
            ),
            (
                "monitoring_rs_tailer_lines_committed_total",
                "Stored lines whose positions checkpoint is durable.",
                &st.lines_committed,
            ),
            (
                "monitoring_rs_tailer_checkpoints_total",
                "Positions files written.",
                &st.checkpoints,
            ),
            (
                "monitoring_rs_tailer_rotations_total",
                "Files seen renamed to a rotated name.",
                &st.rotations,
            ),
            (
                "monitoring_rs_tailer_truncations_total",
                "Files that shrank or changed their head under the same inode (copytruncate).",
                &st.truncations,
            ),
            (
                "monitoring_rs_tailer_partial_timeouts_total",
                "Partial lines stored without their end after the partial timeout.",
                &st.partial_timeouts,
            ),
            (
                "monitoring_rs_tailer_partial_eof_total",
                "Partial lines stored without their end because their file was finished or deleted.",
                &st.partial_eof,
            ),
            (
                "monitoring_rs_tailer_lines_cut_total",
                "Joined lines cut at collect.logs.max_line_size.",
                &st.lines_cut,
            ),
            (
                "monitoring_rs_tailer_dir_listings_total",
                "Directories listed by a rescan.",
                &st.dir_listings,
            ),
            (
                "monitoring_rs_tailer_dir_listings_reused_total",
                "Rescanned directories not listed again because their mtime had not moved.",
                &st.dir_listings_reused,
            ),
        ];
        for (name, help, v) in counters {
            w.single(name, "counter", help, g(v));
        }
        w.single(
            "monitoring_rs_tailer_files_open",
            "gauge",
            "Log files held open.",
            g(&st.files_open),
        );
        w.single(
            "monitoring_rs_tailer_files_deleted_open",
            "gauge",
            "Deleted log files still held open to be drained.",
            g(&st.files_deleted_open),
        );
        w.single(
            "monitoring_rs_tailer_files",
            "gauge",
            "Log files tracked.",
            g(&st.files_tracked),
        );
        w.header(
            "monitoring_rs_tailer_errors_total",
            "counter",
            "Tailer errors by reason.",
        );
        for r in ErrorReason::ALL {
            w.sample(
                "monitoring_rs_tailer_errors_total",
                &[("reason", r.as_str())],
                g(&st.errors[r as usize]),
            );
        }
    });
}

/// Starts the scraper when `scrape_configs` lists any job, or, in a cluster (kube watchers on with
/// the in-cluster configuration) without `scrape_configs`, with the embedded in-cluster jobs
/// (annotated pods, the kubelet and its cAdvisor).
fn start_scraper(
    cfg: &Config,
    ingester: &Arc<MetricsIngester>,
    cluster: Option<Arc<dyn ClusterView>>,
) -> anyhow::Result<Option<Scraper>> {
    let in_cluster = cfg.collect.kube.active() && cfg.collect.kube.api_url.is_empty();
    let jobs: Vec<ScrapeConfig> = if !cfg.scrape_configs.is_empty() {
        cfg.scrape_configs
            .iter()
            .map(|v| serde_yaml::from_value(v.clone()))
            .collect::<Result<_, _>>()
            .context("config key `scrape_configs`")?
    } else if in_cluster && cluster.is_some() {
        crate::collect::scrape::in_cluster_defaults().context("the embedded in-cluster scrape jobs")?
    } else {
        return Ok(None);
    };
    let n = jobs.len();
    let s = Scraper::start(jobs, cluster, Arc::clone(ingester)).context("config key `scrape_configs`")?;
    tracing::info!(jobs = n, "Scraping.");
    Ok(Some(s))
}

/// The scraper's state as `/api/v1/targets` wants it.
struct ScrapeTargets(Arc<parking_lot::Mutex<ScrapeState>>);

/// Prometheus's duration text for whole units (`100ms`, `15s`, `1m`, `1h`).
fn prom_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 || !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

impl api::TargetsSource for ScrapeTargets {
    fn active(&self) -> Vec<api::TargetView> {
        let st = self.0.lock();
        st.active
            .iter()
            .map(|t| {
                let t = t.lock();
                api::TargetView {
                    discovered_labels: t.discovered_labels.clone(),
                    labels: t.labels.clone(),
                    scrape_pool: t.scrape_pool.clone(),
                    scrape_url: t.scrape_url.clone(),
                    global_url: t.scrape_url.clone(),
                    last_error: t.last_error.clone(),
                    last_scrape: if t.last_scrape_ms == 0 {
                        "0001-01-01T00:00:00Z".to_string()
                    } else {
                        crate::model::text::format_rfc3339_ns(t.last_scrape_ms.saturating_mul(1_000_000))
                    },
                    last_scrape_duration: t.last_scrape_duration.as_secs_f64(),
                    health: t.health,
                    scrape_interval: prom_duration(t.scrape_interval),
                    scrape_timeout: prom_duration(t.scrape_timeout),
                }
            })
            .collect()
    }

    fn dropped(&self) -> Vec<std::collections::BTreeMap<String, String>> {
        self.0.lock().dropped.clone()
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {},
                _ = i.recv() => {},
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn register_loki_query_metrics(reg: &Registry, st: &Arc<api::LokiQueryStats>) {
    let st = Arc::clone(st);
    reg.register(move |w| {
        w.single(
            "monitoring_rs_loki_queries_timed_out_total",
            "counter",
            "Loki read requests stopped and answered 504 after limits.logs.query_timeout.",
            st.timed_out.load(Ordering::Relaxed) as f64,
        );
        w.single(
            "monitoring_rs_loki_queries_canceled_total",
            "counter",
            "Loki read requests stopped because the client disconnected.",
            st.canceled.load(Ordering::Relaxed) as f64,
        );
    });
}

fn register_log_metrics(reg: &Registry, logs: &Arc<LogStore>, loki: &Arc<LokiStats>, push: &Arc<PushStats>) {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    let st: Arc<LogsStats> = Arc::clone(logs.stats());
    let (wal, data) = (Arc::clone(logs.wal_stats()), Arc::clone(logs.data_stats()));
    let (loki, push) = (Arc::clone(loki), Arc::clone(push));
    reg.register(move |w| {
        let counters: [(&str, &str, &AtomicU64); 11] = [
            (
                "monitoring_rs_logs_entries_appended_total",
                "Log entries stored.",
                &st.entries_appended,
            ),
            (
                "monitoring_rs_logs_bytes_appended_total",
                "Bytes of log lines stored.",
                &st.bytes_appended,
            ),
            (
                "monitoring_rs_logs_streams_created_total",
                "Log streams created.",
                &st.streams_created,
            ),
            (
                "monitoring_rs_logs_blocks_written_total",
                "Compressed blocks written to the data log.",
                &st.blocks_written,
            ),
            (
                "monitoring_rs_logs_block_raw_bytes_total",
                "Raw bytes of the blocks written.",
                &st.block_raw_bytes,
            ),
            (
                "monitoring_rs_logs_block_compressed_bytes_total",
                "Compressed bytes of the blocks written.",
                &st.block_compressed_bytes,
            ),
            (
                "monitoring_rs_logs_chunks_closed_total",
                "Chunks closed.",
                &st.chunks_closed,
            ),
            (
                "monitoring_rs_logs_quiet_heads_flushed_total",
                "Head blocks written early because their stream went quiet (head_idle_period).",
                &st.quiet_heads_flushed,
            ),
            (
                "monitoring_rs_logs_streams_spilled_total",
                "Idle log streams moved from memory into index files.",
                &st.streams_spilled,
            ),
            (
                "monitoring_rs_logs_wal_checkpoints_total",
                "Log WAL checkpoints.",
                &st.wal_checkpoints,
            ),
            (
                "monitoring_rs_logs_retention_segments_deleted_total",
                "Data log segments deleted by retention.",
                &st.retention_segments_deleted,
            ),
        ];
        for (name, help, v) in counters {
            w.single(name, "counter", help, g(v));
        }
        w.single(
            "monitoring_rs_logs_streams",
            "gauge",
            "Log streams held in memory (idle ones are moved to index files).",
            g(&st.streams),
        );
        w.single(
            "monitoring_rs_logs_wal_bytes",
            "gauge",
            "Bytes of the log WAL on disk.",
            wal.bytes_on_disk() as f64,
        );
        w.single(
            "monitoring_rs_logs_data_bytes",
            "gauge",
            "Bytes of the log data log on disk.",
            data.bytes_on_disk() as f64,
        );
        w.single(
            "monitoring_rs_logs_replay_seconds",
            "gauge",
            "Time the last start spent opening the log store.",
            g(&st.replay_micros) / 1e6,
        );
        w.header(
            "monitoring_rs_loki_discarded_samples_total",
            "counter",
            "Pushed log entries discarded, by Loki's reason.",
        );
        for r in Discard::ALL {
            w.sample(
                "monitoring_rs_loki_discarded_samples_total",
                &[("reason", r.as_str())],
                g(&loki.discarded_entries[r as usize]),
            );
        }
        w.header(
            "monitoring_rs_loki_discarded_bytes_total",
            "counter",
            "Bytes of pushed log lines discarded, by Loki's reason.",
        );
        for r in Discard::ALL {
            w.sample(
                "monitoring_rs_loki_discarded_bytes_total",
                &[("reason", r.as_str())],
                g(&loki.discarded_bytes[r as usize]),
            );
        }
        w.single(
            "monitoring_rs_loki_lines_truncated_total",
            "counter",
            "Log lines cut to max_line_size.",
            g(&loki.lines_truncated),
        );
        w.single(
            "monitoring_rs_loki_invalid_utf8_replaced_total",
            "counter",
            "Log lines whose invalid UTF-8 was replaced with U+FFFD.",
            g(&loki.invalid_utf8_replaced),
        );
        w.single(
            "monitoring_rs_loki_duplicate_entries_dropped_total",
            "counter",
            "Pushed entries identical (timestamp and line) to the one before them in their stream, kept once like Loki.",
            g(&loki.duplicates_dropped),
        );
        w.header(
            "monitoring_rs_loki_push_requests_total",
            "counter",
            "Loki push requests by result.",
        );
        for (r, v) in [
            ("ok", &push.ok),
            ("partial", &push.partial),
            ("bad_request", &push.bad_request),
            ("too_large", &push.too_large),
            ("rate_limited", &push.rate_limited),
            ("failed", &push.failed),
        ] {
            w.sample("monitoring_rs_loki_push_requests_total", &[("result", r)], g(v));
        }
    });
}

fn register_metrics(
    reg: &Registry,
    db: &Arc<DbStats>,
    wal: &Arc<WalStats>,
    ingest: &Arc<IngestStats>,
    write: &Arc<WriteStats>,
) {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    let (db, wal, ingest, write) = (Arc::clone(db), Arc::clone(wal), Arc::clone(ingest), Arc::clone(write));
    reg.register(move |w| {
        w.single(
            "monitoring_rs_metrics_samples_appended_total",
            "counter",
            "Samples appended to the metrics store.",
            g(&db.samples_appended),
        );
        w.header(
            "monitoring_rs_metrics_samples_rejected_total",
            "counter",
            "Samples rejected by the metrics store, by reason.",
        );
        for r in RejectReason::ALL {
            w.sample(
                "monitoring_rs_metrics_samples_rejected_total",
                &[("reason", r.as_str())],
                db.rejected(r) as f64,
            );
        }
        w.header(
            "monitoring_rs_remote_write_invalid_series_samples_total",
            "counter",
            "Samples dropped because their series failed validation, by reason.",
        );
        for (i, r) in SeriesRejection::ALL.iter().enumerate() {
            w.sample(
                "monitoring_rs_remote_write_invalid_series_samples_total",
                &[("reason", r.as_str())],
                g(&ingest.samples_invalid_series[i]),
            );
        }
        w.single(
            "monitoring_rs_remote_write_exemplars_not_stored_total",
            "counter",
            "Exemplars received by remote write and not stored (not supported yet).",
            g(&ingest.exemplars_not_stored),
        );
        w.single(
            "monitoring_rs_remote_write_histograms_not_stored_total",
            "counter",
            "Native histogram samples received by remote write and not stored (not supported yet).",
            g(&ingest.histograms_not_stored),
        );
        w.single(
            "monitoring_rs_remote_write_metadata_received_total",
            "counter",
            "Metric metadata entries received by remote write.",
            g(&ingest.metadata_received),
        );
        w.header(
            "monitoring_rs_remote_write_requests_total",
            "counter",
            "Remote-write requests by result.",
        );
        w.sample(
            "monitoring_rs_remote_write_requests_total",
            &[("result", "ok")],
            g(&write.ok),
        );
        w.sample(
            "monitoring_rs_remote_write_requests_total",
            &[("result", "partial")],
            g(&write.partial),
        );
        for (i, r) in WriteStats::REASONS.iter().enumerate() {
            w.sample(
                "monitoring_rs_remote_write_requests_total",
                &[("result", r)],
                g(&write.failed[i]),
            );
        }
        w.single(
            "monitoring_rs_remote_write_body_read_errors_total",
            "counter",
            "Remote-write requests whose body could not be read (sender disconnected).",
            g(&write.body_read_errors),
        );
        w.single(
            "monitoring_rs_metrics_head_series",
            "gauge",
            "Series in the head.",
            g(&db.head_series),
        );
        w.single(
            "monitoring_rs_metrics_series_created_total",
            "counter",
            "Series created in the head.",
            g(&db.series_created),
        );
        w.single(
            "monitoring_rs_metrics_series_removed_total",
            "counter",
            "Series removed from the head after their data moved to blocks.",
            g(&db.series_removed),
        );
        w.single(
            "monitoring_rs_metrics_blocks",
            "gauge",
            "Blocks on disk.",
            g(&db.blocks),
        );
        w.single(
            "monitoring_rs_metrics_blocks_bytes",
            "gauge",
            "Bytes of blocks on disk.",
            g(&db.blocks_bytes),
        );
        w.single(
            "monitoring_rs_metrics_head_compactions_total",
            "counter",
            "Blocks cut from the head.",
            g(&db.head_compactions),
        );
        w.single(
            "monitoring_rs_metrics_block_compactions_total",
            "counter",
            "Block merges.",
            g(&db.block_compactions),
        );
        w.single(
            "monitoring_rs_metrics_compaction_seconds_total",
            "counter",
            "Time spent cutting and merging blocks.",
            g(&db.compaction_seconds_total_micros) / 1e6,
        );
        w.single(
            "monitoring_rs_metrics_compaction_failures_total",
            "counter",
            "Failed compaction or retention runs.",
            g(&db.compaction_failures),
        );
        w.single(
            "monitoring_rs_metrics_retention_deletions_total",
            "counter",
            "Blocks deleted by retention.",
            g(&db.retention_deletions),
        );
        w.single(
            "monitoring_rs_metrics_wal_replay_seconds",
            "gauge",
            "Time the last start spent opening the store and replaying the WAL.",
            g(&db.replay_seconds_micros) / 1e6,
        );
        w.single(
            "monitoring_rs_wal_bytes_written_total",
            "counter",
            "Bytes written to the write-ahead log.",
            g(&wal.bytes_written),
        );
        w.single(
            "monitoring_rs_wal_fsyncs_total",
            "counter",
            "Write-ahead log fsyncs.",
            g(&wal.fsyncs),
        );
        w.single(
            "monitoring_rs_wal_segments_created_total",
            "counter",
            "Write-ahead log segments created.",
            g(&wal.segments_created),
        );
    });
}
