//! Scrape pools and loops: targets from a [`TargetProvider`], one task per target, one store commit
//! per scrape through [`MetricsIngester::write`] (the remote-write path, so limits and validation
//! are the same for pushed and scraped series).

use super::ScrapeError;
use super::http;
use super::parse::{self, Format, Parsed};
use super::relabel::{self, LabelMap, RelabelConfig, Rule};
use crate::ingest::MetricsIngester;
use crate::model::stale_nan;
use crate::proto::remote_write::{MetadataView, MetricType, RawSample, SeriesView, WriteBatch, label_hash};
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One `scrape_configs` entry (the static subset of Prometheus's).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeConfig {
    pub job_name: String,
    #[serde(default)]
    pub static_configs: Vec<StaticConfig>,
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

/// Where targets come from. `static_configs` today; Kubernetes discovery implements this later.
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

/// A job with its durations and rules checked.
struct Job {
    cfg: ScrapeConfig,
    interval: Duration,
    timeout: Duration,
    relabel: Vec<Rule>,
    metric_relabel: Vec<Rule>,
    fallback: Format,
}

fn duration(s: &str) -> Result<Duration, ScrapeError> {
    let ms = crate::model::text::parse_duration_ms(s).map_err(ScrapeError::Config)?;
    if ms <= 0 {
        return Err(ScrapeError::Config(format!("duration {s:?} must be positive")));
    }
    Ok(Duration::from_millis(ms as u64))
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
        if cfg.scheme != "http" {
            return Err(ScrapeError::Config(format!(
                "job {}: scheme {:?} is not supported yet (plain http only)",
                cfg.job_name, cfg.scheme
            )));
        }
        Ok(Job {
            relabel: rules(&cfg.relabel_configs)?,
            metric_relabel: rules(&cfg.metric_relabel_configs)?,
            interval,
            timeout,
            fallback,
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

/// The running scraper: owns one task per target and waits for them on [`Scraper::shutdown`].
pub struct Scraper {
    state: Arc<Mutex<ScrapeState>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Scraper {
    /// Resolves targets and starts scraping them (must be called inside a tokio runtime).
    pub fn start(
        configs: Vec<ScrapeConfig>,
        provider: &dyn TargetProvider,
        ingester: Arc<MetricsIngester>,
    ) -> Result<Scraper, ScrapeError> {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut state = ScrapeState::default();
        let mut tasks = Vec::new();
        let mut seen = HashSet::new();
        for cfg in configs {
            let job = Arc::new(Job::new(cfg)?);
            for g in provider.groups(&job.cfg) {
                for t in &g.targets {
                    let mut discovered = g.labels.clone();
                    discovered.extend(t.clone());
                    discovered.insert("job".into(), job.cfg.job_name.clone());
                    discovered.entry("__scheme__".into()).or_insert(job.cfg.scheme.clone());
                    discovered
                        .entry("__metrics_path__".into())
                        .or_insert(job.cfg.metrics_path.clone());
                    discovered
                        .entry("__scrape_interval__".into())
                        .or_insert(job.cfg.scrape_interval.clone());
                    discovered
                        .entry("__scrape_timeout__".into())
                        .or_insert(job.cfg.scrape_timeout.clone());
                    for (k, v) in &job.cfg.params {
                        if let Some(first) = v.first() {
                            discovered.entry(format!("__param_{k}")).or_insert(first.clone());
                        }
                    }
                    let Some(target) = resolve(&job, &discovered) else {
                        state.dropped.push(discovered);
                        continue;
                    };
                    // Prometheus keys targets by labels and URL: identical ones are scraped once.
                    if !seen.insert((target.labels.clone(), target.url.clone())) {
                        continue;
                    }
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
                    state.active.push(Arc::clone(&status));
                    let lp = Loop {
                        job: Arc::clone(&job),
                        target,
                        status,
                        ingester: Arc::clone(&ingester),
                        prev: HashMap::new(),
                    };
                    tasks.push(tokio::spawn(lp.run(stop_rx.clone())));
                }
            }
        }
        Ok(Scraper {
            state: Arc::new(Mutex::new(state)),
            stop,
            tasks,
        })
    }

    pub fn state(&self) -> Arc<Mutex<ScrapeState>> {
        Arc::clone(&self.state)
    }

    /// Stops every loop; each writes staleness markers for its series before it ends.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            if let Err(e) = t.await {
                tracing::warn!(error = %e, "A scrape loop ended abnormally.");
            }
        }
    }
}

struct Target {
    /// Final labels (no `__` labels), with `instance` and `job`.
    labels: LabelMap,
    address: String,
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

struct Loop {
    job: Arc<Job>,
    target: Target,
    status: Arc<Mutex<TargetStatus>>,
    ingester: Arc<MetricsIngester>,
    /// Series of the previous scrape (sorted labels with `__name__`), by label hash, for staleness.
    prev: HashMap<u64, Pairs>,
}

/// A series' sorted labels, `__name__` included.
type Pairs = Vec<(String, String)>;

/// One scrape's series, ready for the store.
#[derive(Default)]
struct Batch {
    series: Vec<(Pairs, i64, f64)>,
    metadata: Vec<(String, MetricType, String, String)>,
}

impl Loop {
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
        // The target goes away: every series it had ends now.
        let mut b = Batch::default();
        self.stale_all(now_ms(), &mut b);
        self.commit(&b);
    }

    fn stale_all(&mut self, t: i64, b: &mut Batch) {
        for (_, ls) in self.prev.drain() {
            b.series.push((ls, t, stale_nan()));
        }
    }

    async fn scrape_once(&mut self) {
        let start_ms = now_ms();
        let started = Instant::now();
        let timeout_s = format!("{}", self.job.timeout.as_secs_f64());
        let headers = [
            ("Accept", parse::ACCEPT_HEADER),
            ("X-Prometheus-Scrape-Timeout-Seconds", timeout_s.as_str()),
        ];
        let resp = tokio::time::timeout(
            self.job.timeout,
            http::get(&self.target.address, &self.target.path_and_query, &headers, 256 << 20),
        )
        .await
        .unwrap_or_else(|_| Err(ScrapeError::Http("context deadline exceeded".into())));
        let mut b = Batch::default();
        let result = resp.and_then(|r| {
            if r.status != 200 {
                return Err(ScrapeError::Http(format!("server returned HTTP status {}", r.status)));
            }
            let format = parse::format_for(r.content_type.as_deref(), self.job.fallback);
            self.process(&r.body, format, start_ms, &mut b)
        });
        let elapsed = started.elapsed();
        let (up, scraped, post, added) = match &result {
            Ok(counts) => (1.0, counts.0, counts.1, counts.2),
            Err(_) => {
                // A failed scrape ends every series of the previous one (Prometheus does the same).
                b.series.clear();
                b.metadata.clear();
                self.stale_all(start_ms, &mut b);
                (0.0, 0, 0, 0)
            }
        };
        for (name, v) in [
            ("up", up),
            ("scrape_duration_seconds", elapsed.as_secs_f64()),
            ("scrape_samples_scraped", scraped as f64),
            ("scrape_samples_post_metric_relabeling", post as f64),
            ("scrape_series_added", added as f64),
        ] {
            let mut ls: Vec<(String, String)> =
                self.target.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            ls.push(("__name__".into(), name.into()));
            ls.sort();
            b.series.push((ls, start_ms, v));
        }
        self.commit(&b);
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

    /// Parses a body into `b`, applying labels, metric relabeling, the sample limit and staleness.
    /// Returns (scraped, post-relabel, series added).
    fn process(&mut self, body: &[u8], format: Format, t: i64, b: &mut Batch) -> Result<(u64, u64, u64), ScrapeError> {
        let mut p = Parsed::default();
        parse::parse(body, format, &mut p)?;
        let job = &self.job;
        let mut current: HashMap<u64, Pairs> = HashMap::with_capacity(p.samples.len());
        let mut added = 0u64;
        for s in &p.samples {
            let mut ls: LabelMap = LabelMap::new();
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
            if !job.metric_relabel.is_empty() && !relabel::relabel(&job.metric_relabel, &mut ls) {
                continue;
            }
            if ls.get("__name__").is_none_or(|n| n.is_empty()) {
                continue;
            }
            let pairs: Vec<(String, String)> = ls.into_iter().collect();
            let ts = match s.timestamp_ms {
                Some(ts) if job.cfg.honor_timestamps => ts,
                _ => t,
            };
            // Series with explicit timestamps get no staleness markers (Prometheus's default).
            if s.timestamp_ms.is_none() || !job.cfg.honor_timestamps {
                let refs: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect();
                let h = label_hash(&refs);
                if !self.prev.contains_key(&h) && !current.contains_key(&h) {
                    added += 1;
                }
                current.insert(h, pairs.clone());
            }
            b.series.push((pairs, ts, s.value));
        }
        let post = b.series.len() as u64;
        if job.cfg.sample_limit > 0 && post as usize > job.cfg.sample_limit {
            return Err(ScrapeError::SampleLimit(job.cfg.sample_limit));
        }
        for m in &p.metadata {
            b.metadata
                .push((m.family.to_string(), m.kind, m.help.to_string(), m.unit.to_string()));
        }
        for (h, ls) in self.prev.drain() {
            if !current.contains_key(&h) {
                b.series.push((ls, t, stale_nan()));
            }
        }
        self.prev = current;
        Ok((p.samples.len() as u64, post, added))
    }

    /// One commit for the whole scrape, through the remote-write ingester.
    fn commit(&self, b: &Batch) {
        let mut wb = WriteBatch::new();
        for (ls, t, v) in &b.series {
            let start = wb.labels.len() as u32;
            let s0 = wb.samples.len() as u32;
            wb.labels.extend(ls.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
            wb.samples.push(RawSample { t: *t, v: *v });
            let labels = start..wb.labels.len() as u32;
            let h = label_hash(&wb.labels[start as usize..]);
            wb.series.push(SeriesView {
                labels,
                samples: s0..wb.samples.len() as u32,
                exemplars: 0,
                histograms: 0,
                label_hash: h,
            });
        }
        for (family, kind, help, unit) in &b.metadata {
            wb.metadata.push(MetadataView {
                metric_family_name: family.as_bytes(),
                kind: *kind,
                help: help.as_bytes(),
                unit: unit.as_bytes(),
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
