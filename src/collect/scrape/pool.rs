//! Scrape pools and loops: targets from [`TargetProvider`]s (static and Kubernetes), one task per
//! target, one store commit per scrape through [`MetricsIngester::write`] (the remote-write path,
//! so limits and validation are the same for pushed and scraped series).
//!
//! A manager task owns the loops: it re-derives the targets when the cluster view's generation
//! changes, starts new targets, stops removed ones (which write their staleness markers) and
//! leaves unchanged ones running, as Prometheus's scrape pool `sync` does.

use super::ScrapeError;
use super::http::{Authorization, BasicAuth, Client, TlsConfig};
use super::kubernetes::{KubernetesProvider, KubernetesSdConfig};
use super::parse::{self, Format, Meta, Parsed};
use super::relabel::{self, LabelMap, RelabelConfig, Rule};
use crate::collect::meta::ClusterView;
use crate::ingest::MetricsIngester;
use crate::model::stale_nan;
use crate::proto::remote_write::{MetadataView, RawSample, SeriesView, WriteBatch, label_hash};
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One `scrape_configs` entry (the subset of Prometheus's listed in the README).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeConfig {
    pub job_name: String,
    #[serde(default)]
    pub static_configs: Vec<StaticConfig>,
    #[serde(default)]
    pub kubernetes_sd_configs: Vec<KubernetesSdConfig>,
    #[serde(default)]
    pub tls_config: Option<TlsConfig>,
    #[serde(default)]
    pub authorization: Option<Authorization>,
    #[serde(default)]
    pub bearer_token: Option<String>,
    #[serde(default)]
    pub bearer_token_file: Option<String>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    /// Largest uncompressed body accepted (`0` = no limit), Prometheus's base-2 units: `10MB` is
    /// 10 MiB.
    #[serde(default)]
    pub body_size_limit: Option<String>,
    #[serde(default)]
    pub label_limit: usize,
    #[serde(default)]
    pub label_name_length_limit: usize,
    #[serde(default)]
    pub label_value_length_limit: usize,
    #[serde(default)]
    pub target_limit: usize,
    #[serde(default = "default_interval")]
    pub scrape_interval: String,
    #[serde(default = "default_timeout")]
    pub scrape_timeout: String,
    #[serde(default = "default_path")]
    pub metrics_path: String,
    #[serde(default = "default_scheme")]
    pub scheme: String,
    #[serde(default)]
    pub params: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub honor_labels: bool,
    #[serde(default = "default_true")]
    pub honor_timestamps: bool,
    /// Series with explicit timestamps get staleness markers too (Prometheus 2.48+; off by
    /// default, as there).
    #[serde(default)]
    pub track_timestamps_staleness: bool,
    #[serde(default)]
    pub sample_limit: usize,
    #[serde(default)]
    pub relabel_configs: Vec<RelabelConfig>,
    #[serde(default)]
    pub metric_relabel_configs: Vec<RelabelConfig>,
    /// Format used when the Content-Type is missing or unknown: `PrometheusText0.0.4` (default)
    /// or `OpenMetricsText1.0.0`.
    #[serde(default)]
    pub fallback_scrape_protocol: Option<String>,
}

fn default_interval() -> String {
    "1m".into()
}
fn default_timeout() -> String {
    "10s".into()
}
fn default_path() -> String {
    "/metrics".into()
}
fn default_scheme() -> String {
    "http".into()
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A group of discovered targets: each a label set with at least `__address__`, plus labels common
/// to the group. This is the seam for `kubernetes_sd_configs`: a provider yields groups.
#[derive(Debug, Clone, Default)]
pub struct TargetGroup {
    pub targets: Vec<LabelMap>,
    pub labels: LabelMap,
}

/// Where targets come from: [`StaticProvider`] and [`KubernetesProvider`].
pub trait TargetProvider: Send + Sync {
    fn groups(&self, job: &ScrapeConfig) -> Vec<TargetGroup>;
}

/// Targets listed in `static_configs`.
pub struct StaticProvider;

impl TargetProvider for StaticProvider {
    fn groups(&self, job: &ScrapeConfig) -> Vec<TargetGroup> {
        job.static_configs
            .iter()
            .map(|sc| TargetGroup {
                targets: sc
                    .targets
                    .iter()
                    .map(|a| LabelMap::from([("__address__".to_string(), a.clone())]))
                    .collect(),
                labels: sc.labels.clone().into_iter().collect(),
            })
            .collect()
    }
}

/// A job with its durations, rules, limits and client checked.
struct Job {
    cfg: ScrapeConfig,
    interval: Duration,
    timeout: Duration,
    relabel: Vec<Rule>,
    metric_relabel: Vec<Rule>,
    fallback: Format,
    client: Client,
    /// Decoded body bound; Prometheus's `body_size_limit`, or 256 MiB when unset so a runaway
    /// exporter still cannot grow memory without bound.
    max_body: usize,
    body_limited: bool,
}

fn duration(s: &str) -> Result<Duration, ScrapeError> {
    let ms = crate::model::text::parse_duration_ms(s).map_err(ScrapeError::Config)?;
    if ms <= 0 {
        return Err(ScrapeError::Config(format!("duration {s:?} must be positive")));
    }
    Ok(Duration::from_millis(ms as u64))
}

/// Prometheus's `units.Base2Bytes` (`body_size_limit`): `KB`, `MB`, `GB` and `KiB`, `MiB`, `GiB`
/// are all powers of 1024; a bare number is bytes.
fn base2_bytes(s: &str) -> Result<usize, ScrapeError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| ScrapeError::Config(format!("invalid body_size_limit {s:?}")))?;
    let shift = match unit {
        "" | "B" => 0,
        "KB" | "KiB" => 10,
        "MB" | "MiB" => 20,
        "GB" | "GiB" => 30,
        _ => return Err(ScrapeError::Config(format!("invalid body_size_limit {s:?}"))),
    };
    n.checked_shl(shift)
        .filter(|v| v >> shift == n)
        .ok_or_else(|| ScrapeError::Config(format!("body_size_limit {s:?} is too large")))
}

impl Job {
    fn new(cfg: ScrapeConfig) -> Result<Job, ScrapeError> {
        let interval = duration(&cfg.scrape_interval)?;
        let timeout = duration(&cfg.scrape_timeout)?.min(interval);
        let rules = |v: &[RelabelConfig]| v.iter().cloned().map(Rule::new).collect::<Result<Vec<_>, _>>();
        let fallback = match cfg.fallback_scrape_protocol.as_deref() {
            None | Some("PrometheusText0.0.4") | Some("PrometheusText1.0.0") => Format::Text,
            Some("OpenMetricsText1.0.0") | Some("OpenMetricsText0.0.1") => Format::OpenMetrics,
            Some(other) => {
                return Err(ScrapeError::Config(format!(
                    "unknown fallback_scrape_protocol {other:?}"
                )));
            }
        };
        let https = match cfg.scheme.as_str() {
            "http" => false,
            "https" => true,
            other => {
                return Err(ScrapeError::Config(format!(
                    "job {}: scheme {other:?} is not supported (http or https)",
                    cfg.job_name
                )));
            }
        };
        for sd in &cfg.kubernetes_sd_configs {
            sd.check(&cfg.job_name)?;
        }
        let client = Client::new(
            &cfg.job_name,
            https,
            cfg.tls_config.as_ref(),
            cfg.authorization.as_ref(),
            cfg.bearer_token.as_deref(),
            cfg.bearer_token_file.as_deref(),
            cfg.basic_auth.as_ref(),
        )?;
        let limit = match cfg.body_size_limit.as_deref() {
            None => 0,
            Some(s) => base2_bytes(s)?,
        };
        Ok(Job {
            relabel: rules(&cfg.relabel_configs)?,
            metric_relabel: rules(&cfg.metric_relabel_configs)?,
            interval,
            timeout,
            fallback,
            client,
            max_body: if limit == 0 { 256 << 20 } else { limit },
            body_limited: limit > 0,
            cfg,
        })
    }
}

/// What `/api/v1/targets` shows of one target.
#[derive(Debug, Clone)]
pub struct TargetStatus {
    pub scrape_pool: String,
    pub discovered_labels: LabelMap,
    pub labels: LabelMap,
    pub scrape_url: String,
    /// `unknown` before the first scrape, then `up` or `down`.
    pub health: &'static str,
    pub last_error: String,
    /// Unix milliseconds of the last scrape's start, 0 before the first.
    pub last_scrape_ms: i64,
    pub last_scrape_duration: Duration,
    pub scrape_interval: Duration,
    pub scrape_timeout: Duration,
}

/// Everything the scraper exposes: active and dropped targets.
#[derive(Debug, Default)]
pub struct ScrapeState {
    pub active: Vec<Arc<Mutex<TargetStatus>>>,
    /// Discovered labels of targets relabeling dropped.
    pub dropped: Vec<LabelMap>,
}

/// How often the manager looks at the cluster view's generation. Prometheus's discovery manager
/// forwards updates at most every 5 s; one look per second costs an atomic load.
const SYNC_PERIOD: Duration = Duration::from_secs(1);

/// The running scraper: a manager task owning one task per target; [`Scraper::shutdown`] waits
/// for all of them.
pub struct Scraper {
    state: Arc<Mutex<ScrapeState>>,
    stop: tokio::sync::watch::Sender<bool>,
    manager: tokio::task::JoinHandle<()>,
}

impl Scraper {
    /// Checks the jobs, resolves their targets and starts scraping them (must be called inside
    /// a tokio runtime). `cluster` feeds `kubernetes_sd_configs`; without it those jobs have no
    /// targets.
    pub fn start(
        configs: Vec<ScrapeConfig>,
        cluster: Option<Arc<dyn ClusterView>>,
        ingester: Arc<MetricsIngester>,
    ) -> Result<Scraper, ScrapeError> {
        let jobs = configs
            .into_iter()
            .map(|c| Job::new(c).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        if cluster.is_none() && jobs.iter().any(|j| !j.cfg.kubernetes_sd_configs.is_empty()) {
            tracing::warn!("kubernetes_sd_configs jobs have no targets: no cluster view (not running in a cluster).");
        }
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let state = Arc::new(Mutex::new(ScrapeState::default()));
        let mut m = Manager {
            jobs,
            cluster,
            ingester,
            state: Arc::clone(&state),
            running: Vec::new(),
            generation: None,
        };
        m.sync();
        let manager = tokio::spawn(m.run(stop_rx));
        Ok(Scraper { state, stop, manager })
    }

    pub fn state(&self) -> Arc<Mutex<ScrapeState>> {
        Arc::clone(&self.state)
    }

    /// Stops every loop; each writes staleness markers for its series before it ends.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.manager.await {
            tracing::warn!(error = %e, "The scrape manager ended abnormally.");
        }
    }
}

/// A target's identity: Prometheus keys targets by labels and URL, per pool.
type TargetKey = (usize, LabelMap, String);

struct Running {
    key: TargetKey,
    status: Arc<Mutex<TargetStatus>>,
    /// `target_limit` exceeded: the loop reports this instead of scraping.
    forced: Arc<Mutex<Option<String>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

struct Manager {
    jobs: Vec<Arc<Job>>,
    cluster: Option<Arc<dyn ClusterView>>,
    ingester: Arc<MetricsIngester>,
    state: Arc<Mutex<ScrapeState>>,
    running: Vec<Running>,
    generation: Option<u64>,
}

impl Manager {
    async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(SYNC_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick(), if self.cluster.is_some() => {
                    if self.cluster.as_ref().map(|c| c.generation()) != self.generation {
                        let removed = self.sync();
                        join(removed).await;
                    }
                }
                _ = stop.changed() => break,
            }
        }
        for r in &self.running {
            let _ = r.stop.send(true);
        }
        join(self.running).await;
    }

    /// Re-derives every job's targets: starts new ones, keeps unchanged ones running (their
    /// discovered labels refreshed), returns the removed ones after telling them to stop.
    fn sync(&mut self) -> Vec<Running> {
        self.generation = self.cluster.as_ref().map(|c| c.generation());
        let kube = self.cluster.clone().map(KubernetesProvider);
        let mut old: HashMap<TargetKey, Running> = self.running.drain(..).map(|r| (r.key.clone(), r)).collect();
        let mut dropped = Vec::new();
        let mut next = Vec::new();
        for (ji, job) in self.jobs.iter().enumerate() {
            let mut groups = StaticProvider.groups(&job.cfg);
            if let Some(k) = &kube {
                groups.extend(k.groups(&job.cfg));
            }
            let mut seen = HashSet::new();
            let mut pool = Vec::new();
            for g in groups {
                for t in &g.targets {
                    let discovered = discovered_labels(job, &g.labels, t);
                    let Some(target) = resolve(job, &discovered) else {
                        dropped.push(discovered);
                        continue;
                    };
                    let key = (ji, target.labels.clone(), target.url.clone());
                    if !seen.insert(key.clone()) {
                        continue;
                    }
                    pool.push((key, discovered, target));
                }
            }
            // Prometheus's refreshTargetLimitErr: too many targets fail all of them.
            let forced = (job.cfg.target_limit > 0 && pool.len() > job.cfg.target_limit).then(|| {
                format!(
                    "target_limit exceeded (number of targets: {}, limit: {})",
                    pool.len(),
                    job.cfg.target_limit
                )
            });
            for (key, discovered, target) in pool {
                let r = match old.remove(&key) {
                    Some(r) => {
                        r.status.lock().discovered_labels = discovered;
                        r
                    }
                    None => self.spawn(job, key, discovered, target),
                };
                *r.forced.lock() = forced.clone();
                next.push(r);
            }
        }
        self.running = next;
        let mut st = self.state.lock();
        st.active = self.running.iter().map(|r| Arc::clone(&r.status)).collect();
        st.dropped = dropped;
        drop(st);
        let removed: Vec<Running> = old.into_values().collect();
        for r in &removed {
            let _ = r.stop.send(true);
        }
        removed
    }

    fn spawn(&self, job: &Arc<Job>, key: TargetKey, discovered: LabelMap, target: Target) -> Running {
        let status = Arc::new(Mutex::new(TargetStatus {
            scrape_pool: job.cfg.job_name.clone(),
            discovered_labels: discovered,
            labels: target.labels.clone(),
            scrape_url: target.url.clone(),
            health: "unknown",
            last_error: String::new(),
            last_scrape_ms: 0,
            last_scrape_duration: Duration::ZERO,
            scrape_interval: job.interval,
            scrape_timeout: job.timeout,
        }));
        let forced = Arc::new(Mutex::new(None));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let lp = Loop::new(
            Arc::clone(job),
            target,
            Arc::clone(&status),
            Arc::clone(&forced),
            Arc::clone(&self.ingester),
        );
        Running {
            key,
            status,
            forced,
            stop,
            task: tokio::spawn(lp.run(stop_rx)),
        }
    }
}

async fn join(rs: Vec<Running>) {
    for r in rs {
        if let Err(e) = r.task.await {
            tracing::warn!(error = %e, "A scrape loop ended abnormally.");
        }
    }
}

/// A discovered target's labels before relabeling: group labels, target labels, then the job's
/// defaults for what discovery did not set.
fn discovered_labels(job: &Job, group: &LabelMap, t: &LabelMap) -> LabelMap {
    let mut d = group.clone();
    d.extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
    d.insert("job".into(), job.cfg.job_name.clone());
    d.entry("__scheme__".into()).or_insert(job.cfg.scheme.clone());
    d.entry("__metrics_path__".into())
        .or_insert(job.cfg.metrics_path.clone());
    d.entry("__scrape_interval__".into())
        .or_insert(job.cfg.scrape_interval.clone());
    d.entry("__scrape_timeout__".into())
        .or_insert(job.cfg.scrape_timeout.clone());
    for (k, v) in &job.cfg.params {
        if let Some(first) = v.first() {
            d.entry(format!("__param_{k}")).or_insert(first.clone());
        }
    }
    d
}

struct Target {
    /// Final labels (no `__` labels), with `instance` and `job`.
    labels: LabelMap,
    address: String,
    https: bool,
    path_and_query: String,
    url: String,
}

/// Target relabeling, then Prometheus's post-processing: `instance` defaults to `__address__`,
/// `__param_*` become the query, `__`-labels are removed.
fn resolve(job: &Job, discovered: &LabelMap) -> Option<Target> {
    let mut ls = discovered.clone();
    if !relabel::relabel(&job.relabel, &mut ls) {
        return None;
    }
    let address = ls.get("__address__").filter(|a| !a.is_empty())?.clone();
    let scheme = ls.get("__scheme__").cloned().unwrap_or_else(|| "http".into());
    let path = ls.get("__metrics_path__").cloned().unwrap_or_else(|| "/metrics".into());
    let mut query = Vec::new();
    for (k, v) in &ls {
        if let Some(p) = k.strip_prefix("__param_") {
            query.push(format!("{}={}", urlencode(p), urlencode(v)));
        }
    }
    let path_and_query = if query.is_empty() {
        path
    } else {
        format!("{path}?{}", query.join("&"))
    };
    ls.entry("instance".into()).or_insert(address.clone());
    ls.retain(|k, _| !k.starts_with("__"));
    Some(Target {
        url: format!("{scheme}://{address}{path_and_query}"),
        https: scheme == "https",
        labels: ls,
        address,
        path_and_query,
    })
}

fn urlencode(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// FNV-1a of the target's labels and URL: a stable per-target offset inside the interval, so
/// targets spread over it (Prometheus uses `hash(target) % interval` the same way).
fn offset(t: &Target, interval: Duration) -> Duration {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in t
        .url
        .bytes()
        .chain(t.labels.iter().flat_map(|(k, v)| k.bytes().chain(v.bytes())))
    {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let iv = interval.as_nanos().max(1) as u64;
    Duration::from_nanos(h % iv)
}

/// A series as the store gets it: sorted labels with `__name__`, and their hash. The names and
/// values live in one buffer (two allocations per series instead of two per label: with ~6
/// labels this is ~180 bytes instead of ~670, which for 20 targets of 300 series is ~3 MiB of
/// the idle footprint).
struct Series {
    text: Box<str>,
    /// End offsets in `text`: name, value, name, value, ...
    ends: Box<[u32]>,
    hash: u64,
}

impl Series {
    fn new<'a>(labels: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Series {
        let mut text = String::new();
        let mut ends = Vec::new();
        for (k, v) in labels.clone() {
            text.push_str(k);
            ends.push(text.len() as u32);
            text.push_str(v);
            ends.push(text.len() as u32);
        }
        let refs: Vec<(&[u8], &[u8])> = labels.map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect();
        Series {
            hash: label_hash(&refs),
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }

    fn labels(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let b = self.text.as_bytes();
        let mut start = 0usize;
        self.ends.chunks_exact(2).map(move |c| {
            let (n, v) = (c[0] as usize, c[1] as usize);
            let pair = (b.get(start..n).unwrap_or(&[]), b.get(n..v).unwrap_or(&[]));
            start = v;
            pair
        })
    }
}

/// One scrape-cache entry: what a series text turned into, like Prometheus's scrape cache
/// (`scrape/scrape.go` `scrapeCache`): line text → labels after target labels and metric
/// relabeling (or "dropped"), reused while the series keeps appearing.
struct Entry {
    /// `None`: metric relabeling dropped it (or left no name).
    series: Option<Series>,
    /// Scrape number in which it was last seen without an explicit timestamp (staleness).
    seen: u64,
    /// Scrape number in which it last appeared at all (eviction).
    used: u64,
}

/// Entries unused for this many scrapes are evicted (Prometheus keeps dropped-series entries for
/// 10 scrapes too), so a churning exporter cannot grow the cache without bound.
const CACHE_KEEP: u64 = 10;

/// Which series a batch item refers to.
#[derive(Clone, Copy)]
enum SeriesRef {
    Cached(u32),
    /// The five synthetic series, in [`SYNTHETIC`] order.
    Synthetic(usize),
}

const SYNTHETIC: [&str; 5] = [
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

struct Loop {
    job: Arc<Job>,
    target: Target,
    status: Arc<Mutex<TargetStatus>>,
    forced: Arc<Mutex<Option<String>>>,
    ingester: Arc<MetricsIngester>,
    /// Series text → slot in `entries`.
    index: HashMap<Box<str>, u32>,
    entries: Vec<Entry>,
    free: Vec<u32>,
    synthetic: Vec<Series>,
    /// Scrape number, from 1.
    iter: u64,
    /// The last scrape whose body was processed: Prometheus's scrape cache forgets the series
    /// such a scrape did not see, so a series not in it is "added" (`scrape_series_added`) when
    /// it appears, while a failed scrape in between forgets nothing.
    last_ok: u64,
    /// This scrape's samples (`tracked`: no explicit timestamp), kept for their capacity.
    batch: Vec<(SeriesRef, i64, f64, bool)>,
    /// Scratch label map for cache misses.
    scratch: LabelMap,
}

/// Scraped, post-relabel and added counts of one successful scrape.
struct Counts(u64, u64, u64);

impl Loop {
    fn new(
        job: Arc<Job>,
        target: Target,
        status: Arc<Mutex<TargetStatus>>,
        forced: Arc<Mutex<Option<String>>>,
        ingester: Arc<MetricsIngester>,
    ) -> Loop {
        let synthetic = SYNTHETIC
            .iter()
            .map(|name| {
                let mut ls: Vec<(&str, &str)> = target.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                ls.push(("__name__", name));
                ls.sort();
                Series::new(ls.into_iter())
            })
            .collect();
        Loop {
            job,
            target,
            status,
            forced,
            ingester,
            index: HashMap::new(),
            entries: Vec::new(),
            free: Vec::new(),
            synthetic,
            iter: 0,
            last_ok: 0,
            batch: Vec::new(),
            scratch: LabelMap::new(),
        }
    }

    async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let iv = self.job.interval;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let phase = Duration::from_nanos((now.as_nanos() % iv.as_nanos().max(1)) as u64);
        let off = offset(&self.target, iv);
        let first = if off >= phase { off - phase } else { iv - (phase - off) };
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + first, iv);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.scrape_once().await,
                _ = stop.changed() => break,
            }
        }
        // The target goes away: every series it had ends now, after its last samples even when
        // that scrape began in this same millisecond (a marker at their timestamp is a duplicate
        // the store drops: `compat-tests/scrape.rs` then saw the last value, not the marker).
        self.batch.clear();
        self.iter += 1;
        let last_ms = self.status.lock().last_scrape_ms;
        self.stale_previous(now_ms().max(last_ms.saturating_add(1)));
        self.commit(&[]);
    }

    /// Staleness markers at `t` for every series the previous scrape had and this one has not.
    fn stale_previous(&mut self, t: i64) {
        let (iter, entries, batch) = (self.iter, &mut self.entries, &mut self.batch);
        let free = &mut self.free;
        self.index.retain(|_, slot| {
            let Some(e) = entries.get_mut(*slot as usize) else {
                return false;
            };
            if e.series.is_some() && iter > 1 && e.seen == iter - 1 {
                batch.push((SeriesRef::Cached(*slot), t, stale_nan(), false));
            }
            if e.used + CACHE_KEEP < iter {
                e.series = None;
                free.push(*slot);
                return false;
            }
            true
        });
    }

    async fn scrape_once(&mut self) {
        self.iter += 1;
        self.batch.clear();
        let start_ms = now_ms();
        let started = Instant::now();
        let forced = self.forced.lock().clone();
        let resp = match forced {
            Some(e) => Err(ScrapeError::Limit(e)),
            None => {
                let timeout_s = format!("{}", self.job.timeout.as_secs_f64());
                let headers = [
                    ("Accept", parse::ACCEPT_HEADER),
                    ("X-Prometheus-Scrape-Timeout-Seconds", timeout_s.as_str()),
                ];
                let t = &self.target;
                let get = self
                    .job
                    .client
                    .get(t.https, &t.address, &t.path_and_query, &headers, self.job.max_body);
                tokio::time::timeout(self.job.timeout, get)
                    .await
                    .unwrap_or_else(|_| Err(ScrapeError::Http("context deadline exceeded".into())))
            }
        };
        let resp = resp.map_err(|e| match e {
            ScrapeError::BodySizeLimit if !self.job.body_limited => {
                ScrapeError::Http(format!("body larger than {} bytes", self.job.max_body))
            }
            e => e,
        });
        let body = match resp {
            Ok(r) if r.status != 200 => Err(ScrapeError::Http(format!(
                "server returned HTTP status {}",
                r.status_text
            ))),
            Ok(r) => Ok(r),
            Err(e) => Err(e),
        };
        let mut parsed = Parsed::default();
        let result = match &body {
            Ok(r) => {
                let format = parse::format_for(r.content_type.as_deref(), self.job.fallback);
                parse::parse(&r.body, format, &mut parsed).and_then(|()| self.process(&parsed, start_ms))
            }
            Err(e) => Err(e.clone()),
        };
        let elapsed = started.elapsed();
        let (up, scraped, post, added) = match &result {
            Ok(Counts(s, p, a)) => (1.0, *s, *p, *a),
            Err(_) => {
                // A failed scrape ends every series of the previous one (Prometheus does the same).
                self.batch.clear();
                self.stale_previous(start_ms);
                (0.0, 0, 0, 0)
            }
        };
        for (i, v) in [up, elapsed.as_secs_f64(), scraped as f64, post as f64, added as f64]
            .into_iter()
            .enumerate()
        {
            self.batch.push((SeriesRef::Synthetic(i), start_ms, v, false));
        }
        let meta: &[Meta<'_>] = if result.is_ok() { &parsed.metadata } else { &[] };
        self.commit(meta);
        let mut st = self.status.lock();
        st.last_scrape_ms = start_ms;
        st.last_scrape_duration = elapsed;
        match result {
            Ok(_) => {
                st.health = "up";
                st.last_error.clear();
            }
            Err(e) => {
                st.health = "down";
                st.last_error = e.to_string();
            }
        }
    }

    /// Turns a parsed body into batch items through the scrape cache, applying labels, metric
    /// relabeling, the label and sample limits and staleness. A steady scrape (the same series
    /// as before) allocates nothing per sample here.
    fn process(&mut self, p: &Parsed<'_>, t: i64) -> Result<Counts, ScrapeError> {
        let honor_ts = self.job.cfg.honor_timestamps;
        let track_ts = self.job.cfg.track_timestamps_staleness;
        let mut added = 0u64;
        for s in &p.samples {
            let slot = match self.index.get(s.series) {
                Some(slot) => *slot,
                None => {
                    let series = self.build(p, s)?;
                    let e = Entry {
                        series,
                        seen: 0,
                        used: 0,
                    };
                    let slot = match self.free.pop() {
                        Some(i) => {
                            self.entries[i as usize] = e;
                            i
                        }
                        None => {
                            self.entries.push(e);
                            (self.entries.len() - 1) as u32
                        }
                    };
                    self.index.insert(s.series.into(), slot);
                    slot
                }
            };
            let Some(e) = self.entries.get_mut(slot as usize) else {
                continue;
            };
            let prev = e.used;
            e.used = self.iter;
            if e.series.is_none() {
                continue;
            }
            // New to the cache as Prometheus keeps it, explicit timestamp or not (seen in no
            // scrape yet, or not in the last processed one); once per scrape.
            if prev != self.iter && prev < self.last_ok.max(1) {
                added += 1;
            }
            let ts = match s.timestamp_ms {
                Some(ts) if honor_ts => ts,
                _ => t,
            };
            // Series with explicit timestamps get no staleness markers (Prometheus's default).
            let tracked = s.timestamp_ms.is_none() || !honor_ts || track_ts;
            self.batch.push((SeriesRef::Cached(slot), ts, s.value, tracked));
        }
        let post = self.batch.len() as u64;
        if self.job.cfg.sample_limit > 0 && post as usize > self.job.cfg.sample_limit {
            return Err(ScrapeError::SampleLimit);
        }
        // Only now, with the scrape accepted, does it count as "seen" for staleness.
        for (r, _, _, tracked) in &self.batch {
            if let (SeriesRef::Cached(slot), true) = (r, tracked)
                && let Some(e) = self.entries.get_mut(*slot as usize)
            {
                e.seen = self.iter;
            }
        }
        self.last_ok = self.iter;
        self.stale_previous(t);
        Ok(Counts(p.samples.len() as u64, post, added))
    }

    /// A cache miss: the sample's final labels (target labels, `honor_labels`, metric
    /// relabeling), checked against the label limits; `None` when relabeling drops it.
    fn build(&mut self, p: &Parsed<'_>, s: &parse::Sample<'_>) -> Result<Option<Series>, ScrapeError> {
        let job = &self.job;
        let ls = &mut self.scratch;
        ls.clear();
        for (n, v) in p.sample_labels(s) {
            if !v.is_empty() {
                ls.insert((*n).to_string(), v.to_string());
            }
        }
        // Target labels vs scraped ones: honor_labels keeps the scraped value; otherwise the
        // scraped one is renamed `exported_<name>` (Prometheus's mutateSampleLabels).
        for (k, v) in &self.target.labels {
            if job.cfg.honor_labels {
                ls.entry(k.clone()).or_insert(v.clone());
            } else {
                if let Some(old) = ls.remove(k) {
                    let mut name = format!("exported_{k}");
                    while ls.contains_key(&name) {
                        name = format!("exported_{name}");
                    }
                    ls.insert(name, old);
                }
                ls.insert(k.clone(), v.clone());
            }
        }
        ls.insert("__name__".into(), s.name.to_string());
        if !job.metric_relabel.is_empty() && !relabel::relabel(&job.metric_relabel, ls) {
            return Ok(None);
        }
        if ls.get("__name__").is_none_or(|n| n.is_empty()) {
            return Ok(None);
        }
        check_label_limits(&job.cfg, ls)?;
        Ok(Some(Series::new(ls.iter().map(|(k, v)| (k.as_str(), v.as_str())))))
    }

    /// One commit for the whole scrape (this batch and `meta`), through the remote-write ingester.
    fn commit(&mut self, meta: &[Meta<'_>]) {
        // A fresh batch per commit, not a recycled one: holding 20 targets' vectors between
        // scrapes costs ~1 MiB of idle RSS, allocating them is a few µs per scrape.
        let mut wb = WriteBatch::new();
        wb.labels.reserve(self.batch.len() * 6);
        wb.samples.reserve(self.batch.len());
        wb.series.reserve(self.batch.len());
        for (r, t, v, _) in &self.batch {
            let series = match r {
                SeriesRef::Cached(slot) => self.entries.get(*slot as usize).and_then(|e| e.series.as_ref()),
                SeriesRef::Synthetic(i) => self.synthetic.get(*i),
            };
            let Some(series) = series else { continue };
            let start = wb.labels.len() as u32;
            let s0 = wb.samples.len() as u32;
            wb.labels.extend(series.labels());
            wb.samples.push(RawSample { t: *t, v: *v });
            wb.series.push(SeriesView {
                labels: start..wb.labels.len() as u32,
                samples: s0..wb.samples.len() as u32,
                exemplars: 0,
                histograms: 0,
                label_hash: series.hash,
            });
        }
        for m in meta {
            wb.metadata.push(MetadataView {
                metric_family_name: m.family.as_bytes(),
                kind: m.kind,
                help: m.help.as_bytes(),
                unit: m.unit.as_bytes(),
            });
        }
        match self.ingester.write(&wb) {
            Ok(out) if !out.errors.is_empty() => {
                tracing::debug!(target = %self.target.url, errors = ?out.errors, "Some scraped samples were refused.");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(target = %self.target.url, error = %e, "Storing a scrape failed."),
        }
    }
}

/// Go's `%.50s`: at most 50 characters.
fn trunc50(s: &str) -> &str {
    s.char_indices().nth(50).map_or(s, |(i, _)| &s[..i])
}

/// Prometheus's `verifyLabelLimits` (`scrape/scrape.go`), with its error texts.
fn check_label_limits(cfg: &ScrapeConfig, ls: &LabelMap) -> Result<(), ScrapeError> {
    let met = trunc50(ls.get("__name__").map_or("", String::as_str));
    if cfg.label_limit > 0 && ls.len() > cfg.label_limit {
        return Err(ScrapeError::Limit(format!(
            "label_limit exceeded (metric: {met}, number of labels: {}, limit: {})",
            ls.len(),
            cfg.label_limit
        )));
    }
    for (n, v) in ls {
        if cfg.label_name_length_limit > 0 && n.len() > cfg.label_name_length_limit {
            return Err(ScrapeError::Limit(format!(
                "label_name_length_limit exceeded (metric: {met}, label name: {}, length: {}, limit: {})",
                trunc50(n),
                n.len(),
                cfg.label_name_length_limit
            )));
        }
        if cfg.label_value_length_limit > 0 && v.len() > cfg.label_value_length_limit {
            return Err(ScrapeError::Limit(format!(
                "label_value_length_limit exceeded (metric: {met}, label name: {}, value: {:?}, length: {}, limit: {})",
                trunc50(n),
                trunc50(v),
                v.len(),
                cfg.label_value_length_limit
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str, want: Result<usize, ()>) {
        assert_eq!(base2_bytes(s).map_err(|_| ()), want, "{s:?}");
    }

    #[test]
    fn body_size_limits() {
        check("0", Ok(0));
        check("512", Ok(512));
        check("10KB", Ok(10 << 10));
        check("10MB", Ok(10 << 20));
        check("1GiB", Ok(1 << 30));
        check("1TB", Err(()));
        check("ten", Err(()));
    }
}
