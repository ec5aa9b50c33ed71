//! Configuration: serde structs with `deny_unknown_fields`, the embedded defaults, and validation that
//! names the offending key.
//!
//! Owns: the YAML schema and its defaults. Never touches: I/O beyond reading the one config file,
//! storage, HTTP. Other modules receive plain option structs built from here by `app`.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The configuration used when no `--config` is given. Kept as YAML so that `--print-default-config`
/// shows exactly what runs.
pub const DEFAULT_CONFIG_YAML: &str = r#"# monitoring-rs embedded default configuration.
# Both API families are served on every listen address: Prometheus (/api/v1/...) and Loki (/loki/api/v1/...).
listen: ["0.0.0.0:9090", "0.0.0.0:3100"]
data_dir: ./data
log_level: info
storage:
  metrics:
    retention_time: 15d       # blocks older than this (relative to the newest data) are deleted
    retention_size: 0         # bytes of blocks+WAL to keep; 0 = unlimited. Accepts 512MB, 10GiB, ...
    block_duration: 2h        # head data is cut into immutable blocks of this span
    wal_segment_size: 64MiB
    wal_fsync: 1s             # fsync interval; "always" fsyncs before every acknowledgement
    too_far_in_future: 10m    # samples further ahead of the wall clock are rejected ("out of bounds")
  logs:
    retention_time: 30d       # entries older than this (by their timestamp, vs the wall clock) are deleted
    retention_size: 0         # bytes of data+WAL to keep; 0 = unlimited
    compression: zstd         # block codec: zstd, snappy or none (every block records its codec)
    compression_level: 3      # zstd level
    block_size: 40KiB         # raw bytes per compressed block; 500 streams hold 500 head blocks in memory
    chunk_target_size: 1536KiB  # raw bytes at which a stream's chunk is closed
    max_chunk_age: 2h         # a chunk open this long is closed
    chunk_idle_period: 30m    # a stream silent this long has its chunk closed
    head_idle_period: 1m      # a stream silent this long gives its head block's memory back
    wal_segment_size: 64MiB
    wal_fsync: 1s             # fsync interval; "always" fsyncs before every acknowledgement
    wal_checkpoint_size: 128MiB  # the WAL is cut down to the head blocks when it grows past this
limits:
  remote_write_max_body: 64MiB    # decompressed; the compressed body has the same limit
  max_label_name_length: 1024
  max_label_value_length: 2048
  max_labels_per_series: 64
  logs:                           # Loki push limits, with Loki 3.4's defaults
    max_push_body: 64MiB          # decompressed; the compressed body has the same limit
    max_label_names_per_series: 15
    max_label_name_length: 1024
    max_label_value_length: 2048
    max_line_size: 256KB
    max_line_size_truncate: false # true: cut long lines to max_line_size instead of rejecting them
    reject_old_samples: false
    reject_old_samples_max_age: 1w
    creation_grace_period: 10m    # entries further ahead of the wall clock are rejected
    max_streams_per_tenant: 5000  # new streams beyond this many active ones answer 429
    discover_service_name: [service_name, service, app, application, name, app_kubernetes_io_name, container, container_name, k8s_container_name, component, workload, job, k8s_job_name]
    discover_log_levels: true     # add detected_level as structured metadata
    # Loki query limits, with Loki 3.4's names, defaults and error texts:
    max_entries_limit_per_query: 5000  # a log query's (and a tail's) `limit` above this is a 400
    max_query_series: 500         # a metric query answering more series is a 400
    query_timeout: 1m             # a query running longer is stopped and answered 504
    max_query_length: 721h        # a query spanning longer is a 400; 0 = unlimited
    max_query_lookback: 0s        # a query's start is moved up to now minus this; 0 = unlimited
query:
  lookback_delta: 5m        # like --query.lookback-delta: how far back an instant selector looks
  timeout: 2m               # like --query.timeout; a request's `timeout` can only shorten it
  max_samples: 50000000     # like --query.max-samples: samples one query may hold in memory
  delayed_name_removal: false   # like --enable-feature=promql-delayed-name-removal
  max_concurrency: 20       # like --query.max-concurrency: queries evaluated at once; others wait
collect:
  logs:
    pod_logs_dir: ""          # the /var/log/pods tree to tail; empty = tailer off (--pod-logs DIR sets it)
    node_name: ""             # `node` label; empty = $NODE_NAME, else the host name
    pod_labels: [app]         # pod labels copied onto streams (sanitised: app.kubernetes.io/name -> app_kubernetes_io_name)
    rescan_interval: 10s      # full directory rescan, the safety net under inotify
    max_line_size: 256KB      # a line joined from P/F partials is held up to this size (then limits.logs decides)
    partial_timeout: 5s       # a partial line with no continuation for this long is stored as it is
    batch_size: 1MiB          # bytes of lines per push (and per positions checkpoint)
  kube:
    enabled: auto             # auto: on in a cluster (KUBERNETES_SERVICE_HOST and a service-account token) or when api_url is set
    api_url: ""               # API server for out-of-cluster use and tests (http:// allowed); empty = in-cluster config
    deleted_pod_grace: 5m     # a deleted pod's labels stay this long for its late log lines
    events: true              # store Kubernetes events as {job="kubernetes-events"} log streams
"#;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: Vec<String>,
    pub data_dir: PathBuf,
    #[serde(default = "default_log_level")]
    pub log_level: String,
    pub storage: StorageConfig,
    pub limits: LimitsConfig,
    pub query: QueryConfig,
    pub collect: CollectConfig,
    /// Prometheus-style `scrape_configs`, kept as YAML here and checked by `collect::scrape` (config
    /// may not import collect).
    #[serde(default)]
    pub scrape_configs: Vec<serde_yaml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectConfig {
    pub logs: CollectLogsConfig,
    pub kube: CollectKubeConfig,
}

/// `collect.kube`: the pod/node metadata watcher and the events source. The node is
/// `collect.logs.node_name`'s (shared: the pods watch and the `node` label name the same node).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectKubeConfig {
    pub enabled: AutoBool,
    pub api_url: String,
    pub deleted_pod_grace: DurationStr,
    pub events: bool,
}

/// `true`, `false` or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AutoBool {
    Bool(bool),
    Word(AutoWord),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoWord {
    Auto,
}

/// The in-cluster service-account token kube-client reads.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

impl CollectKubeConfig {
    /// Whether the Kubernetes watchers run: `auto` means an `api_url` is set or this process runs
    /// in a pod (`KUBERNETES_SERVICE_HOST` set and the service-account token present).
    pub fn active(&self) -> bool {
        match self.enabled {
            AutoBool::Bool(b) => b,
            AutoBool::Word(AutoWord::Auto) => !self.api_url.is_empty() || in_cluster(),
        }
    }
}

/// Running in a pod with a service account (what `kube::Config::incluster` needs).
pub fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty())
        && std::path::Path::new(SERVICE_ACCOUNT_TOKEN).exists()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectLogsConfig {
    pub pod_logs_dir: PathBuf,
    pub node_name: String,
    pub pod_labels: Vec<String>,
    pub rescan_interval: DurationStr,
    pub max_line_size: ByteSize,
    pub partial_timeout: DurationStr,
    pub batch_size: ByteSize,
}

fn default_log_level() -> String {
    "info".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub metrics: MetricsStorageConfig,
    pub logs: LogsStorageConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsStorageConfig {
    pub retention_time: DurationStr,
    pub retention_size: ByteSize,
    pub compression: Compression,
    pub compression_level: i32,
    pub block_size: ByteSize,
    pub chunk_target_size: ByteSize,
    pub max_chunk_age: DurationStr,
    pub chunk_idle_period: DurationStr,
    pub head_idle_period: DurationStr,
    pub wal_segment_size: ByteSize,
    pub wal_fsync: FsyncSetting,
    pub wal_checkpoint_size: ByteSize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
    Snappy,
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsLimitsConfig {
    pub max_push_body: ByteSize,
    pub max_label_names_per_series: usize,
    pub max_label_name_length: usize,
    pub max_label_value_length: usize,
    pub max_line_size: ByteSize,
    pub max_line_size_truncate: bool,
    pub reject_old_samples: bool,
    pub reject_old_samples_max_age: DurationStr,
    pub creation_grace_period: DurationStr,
    pub max_streams_per_tenant: usize,
    pub discover_service_name: Vec<String>,
    pub discover_log_levels: bool,
    pub max_entries_limit_per_query: usize,
    pub max_query_series: usize,
    pub query_timeout: DurationStr,
    pub max_query_length: DurationStr,
    pub max_query_lookback: DurationStr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsStorageConfig {
    pub retention_time: DurationStr,
    pub retention_size: ByteSize,
    pub block_duration: DurationStr,
    pub wal_segment_size: ByteSize,
    pub wal_fsync: FsyncSetting,
    pub too_far_in_future: DurationStr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub remote_write_max_body: ByteSize,
    pub max_label_name_length: usize,
    pub max_label_value_length: usize,
    pub max_labels_per_series: usize,
    pub logs: LogsLimitsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    pub lookback_delta: DurationStr,
    pub timeout: DurationStr,
    pub max_samples: usize,
    pub delayed_name_removal: bool,
    pub max_concurrency: usize,
}

/// A Prometheus-style duration (`15d`, `2h`, `1m30s`, `500ms`) or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationStr(pub Duration);

/// A byte size: a plain integer or with a unit (`KB`, `MB`, `GB`, `TB` are powers of 1000,
/// `KiB`, `MiB`, `GiB`, `TiB` powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// `always`, or an interval between fsyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncSetting {
    Always,
    Interval(Duration),
}

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_yaml::Value::deserialize(d)?;
        let s = match &v {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => format!("{n}s"),
            _ => return Err(serde::de::Error::custom("expected a duration such as 15d, 2h or 30s")),
        };
        parse_duration(&s).map(DurationStr).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_yaml::Value::deserialize(d)?;
        match &v {
            serde_yaml::Value::Number(n) => n
                .as_u64()
                .map(ByteSize)
                .ok_or_else(|| serde::de::Error::custom("expected a non-negative byte count")),
            serde_yaml::Value::String(s) => parse_bytes(s).map(ByteSize).map_err(serde::de::Error::custom),
            _ => Err(serde::de::Error::custom("expected a byte size such as 64MiB")),
        }
    }
}

impl<'de> Deserialize<'de> for FsyncSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_yaml::Value::deserialize(d)?;
        match &v {
            serde_yaml::Value::String(s) if s == "always" => Ok(FsyncSetting::Always),
            serde_yaml::Value::String(s) => parse_duration(s)
                .map(FsyncSetting::Interval)
                .map_err(|e| serde::de::Error::custom(format!("expected \"always\" or a duration: {e}"))),
            _ => Err(serde::de::Error::custom("expected \"always\" or a duration such as 1s")),
        }
    }
}

/// Parses Prometheus's duration syntax: one or more `<int><unit>` with units y, w, d, h, m, s, ms
/// in decreasing order, or a plain (float) number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    match crate::model::text::parse_duration_ms(s.trim()) {
        Ok(ms) if ms >= 0 => Ok(Duration::from_millis(ms as u64)),
        Ok(_) => Err(format!("invalid duration {s:?}: negative")),
        Err(e) => Err(e),
    }
}

/// Parses `64MiB`, `512MB`, `1024`, `10GiB`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid byte size {s:?}"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => return Err(format!("invalid byte size {s:?}: unknown unit {other:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("byte size {s:?} is too large"))
}

impl Config {
    /// Parses YAML over the embedded defaults: every key present in `text` replaces the default, keys
    /// absent keep it (maps are merged key by key).
    pub fn from_yaml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut base: serde_yaml::Value =
            serde_yaml::from_str(DEFAULT_CONFIG_YAML).map_err(|e| ConfigError::Parse {
                path: "<embedded default>".to_string(),
                message: e.to_string(),
            })?;
        let user: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        if !user.is_null() {
            if !user.is_mapping() {
                return Err(ConfigError::Parse {
                    path: origin.to_string(),
                    message: "the top level must be a mapping of keys".to_string(),
                });
            }
            merge(&mut base, user);
        }
        // serde_path_to_error names the key (`storage.metrics.block_duration: ...`), not just the problem.
        let cfg: Config = serde_path_to_error::deserialize(base).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: format!("key `{}`: {}", e.path(), e.inner()),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::from_yaml("", "<embedded default>")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::Invalid {
                key: "listen",
                message: "at least one address is needed".to_string(),
            });
        }
        for a in &self.listen {
            a.parse::<SocketAddr>().map_err(|e| ConfigError::Invalid {
                key: "listen",
                message: format!("{a:?} is not an ADDR:PORT socket address: {e}"),
            })?;
        }
        let q = &self.query;
        for (key, d) in [
            ("query.lookback_delta", q.lookback_delta.0),
            ("query.timeout", q.timeout.0),
        ] {
            if d < Duration::from_millis(1) {
                return Err(ConfigError::Invalid {
                    key,
                    message: "must be at least 1ms".to_string(),
                });
            }
        }
        if q.max_samples == 0 {
            return Err(ConfigError::Invalid {
                key: "query.max_samples",
                message: "must be positive".to_string(),
            });
        }
        if q.max_concurrency == 0 {
            return Err(ConfigError::Invalid {
                key: "query.max_concurrency",
                message: "must be positive".to_string(),
            });
        }
        let m = &self.storage.metrics;
        let bd = m.block_duration.0;
        if bd < Duration::from_secs(60) || !bd.as_millis().is_multiple_of(60_000) {
            return Err(ConfigError::Invalid {
                key: "storage.metrics.block_duration",
                message: format!("must be a whole number of minutes, at least 1m (got {bd:?})"),
            });
        }
        if m.wal_segment_size.0 < 1 << 20 {
            return Err(ConfigError::Invalid {
                key: "storage.metrics.wal_segment_size",
                message: "must be at least 1MiB".to_string(),
            });
        }
        if m.retention_time.0 < bd {
            return Err(ConfigError::Invalid {
                key: "storage.metrics.retention_time",
                message: format!("must be at least storage.metrics.block_duration ({bd:?})"),
            });
        }
        if self.limits.remote_write_max_body.0 < 1024 {
            return Err(ConfigError::Invalid {
                key: "limits.remote_write_max_body",
                message: "must be at least 1KiB".to_string(),
            });
        }
        let lg = &self.storage.logs;
        if lg.block_size.0 < 1024 || lg.block_size.0 > 16 << 20 {
            return Err(ConfigError::Invalid {
                key: "storage.logs.block_size",
                message: "must be between 1KiB and 16MiB".to_string(),
            });
        }
        if lg.chunk_target_size.0 < lg.block_size.0 {
            return Err(ConfigError::Invalid {
                key: "storage.logs.chunk_target_size",
                message: "must be at least storage.logs.block_size".to_string(),
            });
        }
        if lg.wal_segment_size.0 < 1 << 20 {
            return Err(ConfigError::Invalid {
                key: "storage.logs.wal_segment_size",
                message: "must be at least 1MiB".to_string(),
            });
        }
        if !(-7..=22).contains(&lg.compression_level) {
            return Err(ConfigError::Invalid {
                key: "storage.logs.compression_level",
                message: "zstd levels run from -7 to 22".to_string(),
            });
        }
        if self.limits.logs.max_push_body.0 < 1024 {
            return Err(ConfigError::Invalid {
                key: "limits.logs.max_push_body",
                message: "must be at least 1KiB".to_string(),
            });
        }
        let ll = &self.limits.logs;
        if ll.max_entries_limit_per_query == 0 || ll.max_query_series == 0 {
            return Err(ConfigError::Invalid {
                key: "limits.logs.max_entries_limit_per_query",
                message: "max_entries_limit_per_query and max_query_series must be positive".to_string(),
            });
        }
        if ll.query_timeout.0 < Duration::from_millis(1) {
            return Err(ConfigError::Invalid {
                key: "limits.logs.query_timeout",
                message: "must be at least 1ms".to_string(),
            });
        }
        let cl = &self.collect.logs;
        if cl.rescan_interval.0 < Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                key: "collect.logs.rescan_interval",
                message: "must be at least 100ms".to_string(),
            });
        }
        if cl.max_line_size.0 < 1024 || cl.batch_size.0 < 4096 {
            return Err(ConfigError::Invalid {
                key: "collect.logs.max_line_size",
                message: "max_line_size must be at least 1KiB and batch_size at least 4KiB".to_string(),
            });
        }
        let ck = &self.collect.kube;
        let url_ok = ck.api_url.is_empty() || ck.api_url.starts_with("http://") || ck.api_url.starts_with("https://");
        if !url_ok {
            return Err(ConfigError::Invalid {
                key: "collect.kube.api_url",
                message: format!("{:?} is not an http:// or https:// URL", ck.api_url),
            });
        }
        if ck.deleted_pod_grace.0 < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                key: "collect.kube.deleted_pod_grace",
                message: "must be at least 1s".to_string(),
            });
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return Err(ConfigError::Invalid {
                key: "log_level",
                message: format!("{:?} is not a level (error, warn, info, debug, trace)", self.log_level),
            });
        }
        Ok(())
    }

    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        // Validated in `validate`.
        self.listen.iter().filter_map(|a| a.parse().ok()).collect()
    }
}

fn merge(base: &mut serde_yaml::Value, over: serde_yaml::Value) {
    match (base, over) {
        (serde_yaml::Value::Mapping(b), serde_yaml::Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_mapping() && v.is_mapping() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_duration(s: &str, want: Option<u64>) {
        assert_eq!(parse_duration(s).ok().map(|d| d.as_millis() as u64), want, "{s}");
    }

    #[test]
    fn durations() {
        check_duration("15d", Some(15 * 86_400_000));
        check_duration("1m30s", Some(90_000));
        check_duration("100ms", Some(100));
        check_duration("1h30m", Some(5_400_000));
        check_duration("1.5", Some(1500));
        check_duration("30s1m", None);
        check_duration("5x", None);
        check_duration("", None);
    }

    fn check_config(yaml: &str, want_err: Option<&str>) {
        match (Config::from_yaml(yaml, "test.yaml"), want_err) {
            (Ok(_), None) => {}
            (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{yaml:?}: error {e} lacks {w:?}"),
            (Ok(_), Some(w)) => panic!("{yaml:?}: accepted, wanted error with {w:?}"),
            (Err(e), None) => panic!("{yaml:?}: {e}"),
        }
    }

    #[test]
    fn config_validation_names_the_key() {
        check_config("", None);
        check_config("storage:\n  metrics:\n    block_duration: 30m\n", None);
        check_config(
            "storage:\n  metrics:\n    block_duration: 10s\n",
            Some("storage.metrics.block_duration"),
        );
        check_config("listen: [\"nope\"]\n", Some("listen"));
        check_config("bogus: 1\n", Some("bogus"));
        check_config("storage:\n  metrics:\n    retention_tme: 1d\n", Some("retention_tme"));
        check_config(
            "limits:\n  remote_write_max_body: 12QB\n",
            Some("remote_write_max_body"),
        );
        check_config("log_level: [1]\n", Some("log_level"));
        check_config("query:\n  max_samples: 0\n", Some("query.max_samples"));
        check_config("query:\n  lookback_delta: 0s\n", Some("query.lookback_delta"));
        check_config("- a\n", Some("mapping"));
        check_config(
            "storage:\n  logs:\n    compression: lz4\n",
            Some("storage.logs.compression"),
        );
        check_config(
            "storage:\n  logs:\n    block_size: 10\n",
            Some("storage.logs.block_size"),
        );
        check_config(
            "limits:\n  logs:\n    max_line_size: 1MB\n    max_line_size_truncate: true\n",
            None,
        );
        check_config("limits:\n  logs:\n    max_line_sise: 1MB\n", Some("max_line_sise"));
        check_config("collect:\n  logs:\n    pod_logs_dir: /var/log/pods\n", None);
        check_config(
            "collect:\n  logs:\n    rescan_interval: 1ms\n",
            Some("collect.logs.rescan_interval"),
        );
        check_config("collect:\n  logs:\n    pod_label: [app]\n", Some("pod_label"));
        check_config("collect:\n  kube:\n    enabled: false\n    events: false\n", None);
        check_config("collect:\n  kube:\n    enabled: maybe\n", Some("enabled"));
        check_config(
            "collect:\n  kube:\n    api_url: 127.0.0.1:6443\n",
            Some("collect.kube.api_url"),
        );
        check_config(
            "collect:\n  kube:\n    deleted_pod_grace: 10ms\n",
            Some("collect.kube.deleted_pod_grace"),
        );
        check_config(
            "limits:\n  logs:\n    query_timeout: 2s\n    max_query_length: 0\n",
            None,
        );
        check_config(
            "limits:\n  logs:\n    query_timeout: 0s\n",
            Some("limits.logs.query_timeout"),
        );
        check_config(
            "limits:\n  logs:\n    max_query_series: 0\n",
            Some("limits.logs.max_entries_limit_per_query"),
        );
    }

    #[test]
    fn defaults() {
        let c = Config::embedded_default().unwrap();
        assert_eq!(c.storage.metrics.retention_time.0, Duration::from_secs(15 * 86_400));
        assert_eq!(c.limits.remote_write_max_body.0, 64 << 20);
        assert_eq!(c.listen_addrs().len(), 2);
        // Loki 3.4's query limits.
        let l = &c.limits.logs;
        assert_eq!((l.max_entries_limit_per_query, l.max_query_series), (5000, 500));
        assert_eq!(l.query_timeout.0, Duration::from_secs(60));
        assert_eq!(l.max_query_length.0, Duration::from_secs(721 * 3600));
        assert_eq!(l.max_query_lookback.0, Duration::ZERO);
    }
}
