//! Flags, config load, telemetry init, `app::run`; nothing else.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

use monitoring_rs::{app, config, telemetry};

/// A small cluster's whole monitoring stack in one process: Prometheus remote write and query APIs,
/// Loki push and query APIs, local compressed storage.
#[derive(Parser, Debug)]
#[command(name = "monitoring-rs", version, about)]
struct Flags {
    /// YAML configuration file; keys it sets override the embedded defaults (see --print-default-config).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to serve both API families on, ADDR:PORT; repeat for several (overrides `listen`).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<String>,
    /// Tail the container logs of this `/var/log/pods`-style tree (labels from the paths, no cluster
    /// needed; overrides `collect.logs.pod_logs_dir`).
    #[arg(long, value_name = "DIR")]
    pod_logs: Option<PathBuf>,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
}

fn main() -> ExitCode {
    cap_malloc_arenas();
    let flags = Flags::parse();
    if flags.print_default_config {
        print!("{}", config::DEFAULT_CONFIG_YAML);
        return ExitCode::SUCCESS;
    }
    let cfg = match load_config(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("monitoring-rs: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_tracing(&cfg.log_level);
    match app::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "monitoring-rs stopped with an error.");
            eprintln!("monitoring-rs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Caps glibc's malloc at 2 arenas (its default is 8 per core). Each query runs on a thread of its
/// own, and a thread that finds no arena free of other threads gets a new one, up to that cap:
/// memory freed in one arena is not reused by another, so RSS rose with the query rate. The soak
/// with a query every second (`SOAK_SECS=900 SOAK_QUERY_SECS=1 cargo bench --bench soak`) ended at
/// RssAnon 39.3 MiB with glibc's default and 29.5 MiB with `MALLOC_ARENA_MAX=2` (one run each); at
/// the default query rate, and in the tailer and logql benches, the cap moved nothing beyond the
/// runs' spread (README). A `MALLOC_ARENA_MAX` set in the environment is left to rule.
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt(3) only sets an allocator parameter; no thread has started yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn load_config(flags: &Flags) -> Result<config::Config, config::ConfigError> {
    let mut cfg = match &flags.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| config::ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            config::Config::from_yaml(&text, &path.display().to_string())?
        }
        None => config::Config::embedded_default()?,
    };
    if let Some(d) = &flags.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(d) = &flags.pod_logs {
        cfg.collect.logs.pod_logs_dir = d.clone();
    }
    if !flags.listen.is_empty() {
        cfg.listen = flags.listen.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}
