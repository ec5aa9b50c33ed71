//! Composition root: builds every part from the configuration, owns the task tree and shutdown.
//!
//! Owns: wiring (which options each part gets), the listeners, signal handling, and the order of
//! shutdown (stop accepting, finish in-flight requests, close the store). Never touches: protocol
//! details or storage formats.

use crate::api::{self, ApiState, WriteStats};
use crate::config::{Config, FsyncSetting};
use crate::ingest::{IngestStats, Limits, MetricsIngester, SeriesRejection};
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

async fn serve(cfg: Config) -> anyhow::Result<()> {
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
    let registry = Registry::new();
    let write_stats = Arc::new(WriteStats::default());
    register_metrics(&registry, db.stats(), db.wal_stats(), ingester.stats(), &write_stats);
    let state = Arc::new(ApiState {
        db: Arc::clone(&db),
        ingester,
        registry,
        max_write_body: usize::try_from(cfg.limits.remote_write_max_body.0).unwrap_or(usize::MAX),
        write_stats,
        http_requests: AtomicU64::new(0),
        engine: crate::query::promql::Engine::new(crate::query::promql::EngineOptions {
            lookback_delta_ms: cfg.query.lookback_delta.0.as_millis() as i64,
            max_samples: cfg.query.max_samples,
            timeout: cfg.query.timeout.0,
            delayed_name_removal: cfg.query.delayed_name_removal,
            ..Default::default()
        }),
        query_slots: Arc::new(tokio::sync::Semaphore::new(cfg.query.max_concurrency)),
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
    tracing::info!("Shutting down: finishing in-flight requests.");
    let _ = stop_tx.send(true);
    while let Some(res) = servers.join_next().await {
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "A listener ended with an error."),
            Err(e) => tracing::warn!(error = %e, "A listener task failed."),
        }
    }
    let db2 = Arc::clone(&db);
    tokio::task::spawn_blocking(move || db2.close())
        .await
        .context("closing the metrics store")??;
    tracing::info!("Metrics store closed cleanly.");
    Ok(())
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
