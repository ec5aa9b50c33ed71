//! Remote-write ingestion: checks every series of a decoded [`WriteBatch`] against the limits,
//! hands the valid ones to one [`Appender`], and reports per-series and per-sample problems in
//! Prometheus 3.x's words ("out of order sample for series {...}") without failing good data.
//!
//! The common case allocates per request only: labels are borrowed from the request buffer and a
//! known series is found by the decoder's label hash without building a label set.

use super::IngestError;
use crate::model::{Labels, METRIC_NAME};
use crate::proto::remote_write::WriteBatch;
use crate::storage::metrics::{MetricsDb, SeriesKey};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Per-series limits (from `limits:` in the config). 0 disables a limit.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_label_name_length: usize,
    pub max_label_value_length: usize,
    pub max_labels_per_series: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_label_name_length: 1024,
            max_label_value_length: 2048,
            max_labels_per_series: 64,
        }
    }
}

/// Why a whole series (and its samples) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesRejection {
    EmptyLabelName,
    InvalidUtf8,
    DuplicateLabel,
    MissingMetricName,
    LabelNameTooLong,
    LabelValueTooLong,
    TooManyLabels,
}

impl SeriesRejection {
    pub const ALL: [SeriesRejection; 7] = [
        SeriesRejection::EmptyLabelName,
        SeriesRejection::InvalidUtf8,
        SeriesRejection::DuplicateLabel,
        SeriesRejection::MissingMetricName,
        SeriesRejection::LabelNameTooLong,
        SeriesRejection::LabelValueTooLong,
        SeriesRejection::TooManyLabels,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SeriesRejection::EmptyLabelName => "empty_label_name",
            SeriesRejection::InvalidUtf8 => "invalid_utf8",
            SeriesRejection::DuplicateLabel => "duplicate_label",
            SeriesRejection::MissingMetricName => "missing_metric_name",
            SeriesRejection::LabelNameTooLong => "label_name_too_long",
            SeriesRejection::LabelValueTooLong => "label_value_too_long",
            SeriesRejection::TooManyLabels => "too_many_labels",
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub requests: AtomicU64,
    /// Samples of series refused by validation, by [`SeriesRejection`] (in `ALL` order).
    pub samples_invalid_series: [AtomicU64; 7],
    pub exemplars_not_stored: AtomicU64,
    pub histograms_not_stored: AtomicU64,
    pub metadata_received: AtomicU64,
}

/// What a write did; `errors` non-empty means the sender gets a 400 with these lines (the valid
/// data was still committed).
#[derive(Debug, Default)]
pub struct WriteOutcome {
    pub samples_written: u64,
    pub histograms_written: u64,
    pub exemplars_written: u64,
    pub errors: Vec<String>,
    /// Errors not listed individually.
    pub more_errors: u64,
}

/// Error lines listed in a 400 body; the rest are summarised as a count.
const MAX_ERROR_LINES: usize = 10;

pub struct MetricsIngester {
    db: Arc<MetricsDb>,
    limits: Limits,
    stats: Arc<IngestStats>,
}

impl MetricsIngester {
    pub fn new(db: Arc<MetricsDb>, limits: Limits) -> Self {
        MetricsIngester {
            db,
            limits,
            stats: Arc::new(IngestStats::default()),
        }
    }

    pub fn stats(&self) -> &Arc<IngestStats> {
        &self.stats
    }

    pub fn db(&self) -> &Arc<MetricsDb> {
        &self.db
    }

    /// Validates and stores one decoded remote-write request.
    ///
    /// Series are named to the store by their raw key bytes (`name 0xff value 0xff ...` exactly as
    /// received). A series the head already holds matches byte for byte and needs no validation:
    /// its key was validated when the series was created. Only unknown keys reach
    /// [`MetricsIngester::validate_series`], through the commit's validator callback. Measured on
    /// the rwload benchmark, validating every series on every request cost ~30% of ingest CPU.
    pub fn write(&self, batch: &WriteBatch<'_>) -> Result<WriteOutcome, IngestError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut out = WriteOutcome::default();
        let mut keybuf: Vec<u8> = Vec::with_capacity(batch.labels.len() * 24 + batch.series.len() * 16);
        let mut ranges: Vec<Range<usize>> = Vec::with_capacity(batch.series.len());
        for s in &batch.series {
            self.stats
                .exemplars_not_stored
                .fetch_add(u64::from(s.exemplars), Ordering::Relaxed);
            self.stats
                .histograms_not_stored
                .fetch_add(u64::from(s.histograms), Ordering::Relaxed);
            let start = keybuf.len();
            for (n, v) in batch.series_labels(s) {
                keybuf.extend_from_slice(n);
                keybuf.push(0xff);
                keybuf.extend_from_slice(v);
                keybuf.push(0xff);
            }
            ranges.push(start..keybuf.len());
        }
        self.stats
            .metadata_received
            .fetch_add(batch.metadata.len() as u64, Ordering::Relaxed);
        let mut app = self.db.appender();
        app.reserve(batch.series.len(), batch.samples.len());
        for (s, r) in batch.series.iter().zip(&ranges) {
            let idx = app.add_series(SeriesKey::Raw {
                hash: s.label_hash,
                key: &keybuf[r.clone()],
                pairs: s.labels.len() as u32,
            });
            for smp in batch.series_samples(s) {
                app.add_sample(idx, smp.t, smp.v);
            }
        }
        for m in &batch.metadata {
            if let (Ok(family), Ok(help), Ok(unit)) = (
                std::str::from_utf8(m.metric_family_name),
                std::str::from_utf8(m.help),
                std::str::from_utf8(m.unit),
            ) && !family.is_empty()
            {
                app.add_metadata(family, m.kind as u8, help, unit);
            }
        }
        let res = app.commit_with(
            &mut |idx| match self.validate_series(batch.series_labels(&batch.series[idx])) {
                Ok(ls) => Some(ls),
                Err(reason) => {
                    self.reject_series(&mut out, batch, idx, reason);
                    None
                }
            },
        )?;
        out.samples_written = res.appended;
        for (idx, _t, reason) in &res.first_rejections {
            let labels = format_raw(batch.series_labels(&batch.series[*idx]));
            push_error(&mut out, format!("{} for series {labels}", reason.message()));
        }
        out.more_errors += res.rejected - res.first_rejections.len() as u64;
        Ok(out)
    }

    /// Full validation of a series the store does not know yet; returns its normalised label set
    /// (sorted, empty values dropped, as Prometheus does).
    fn validate_series(&self, pairs: &[(&[u8], &[u8])]) -> Result<Labels, SeriesRejection> {
        let mut strs: Vec<(&str, &str)> = Vec::with_capacity(pairs.len());
        self.validate(pairs, &mut strs)?;
        match Labels::from_pairs(strs.iter().map(|(n, v)| (*n, *v))) {
            Ok(ls) if ls.metric_name().is_some() => Ok(ls),
            Ok(_) => Err(SeriesRejection::MissingMetricName),
            Err(_) => Err(SeriesRejection::DuplicateLabel),
        }
    }

    /// Checks one series' raw labels, pushing them as `&str` into `strs`. `Ok(true)`: sorted, unique,
    /// no empty values (the borrowed fast path). `Ok(false)`: valid but needs normalising.
    fn validate<'a>(
        &self,
        pairs: &[(&'a [u8], &'a [u8])],
        strs: &mut Vec<(&'a str, &'a str)>,
    ) -> Result<bool, SeriesRejection> {
        let l = &self.limits;
        if l.max_labels_per_series > 0 && pairs.len() > l.max_labels_per_series {
            return Err(SeriesRejection::TooManyLabels);
        }
        let mut sorted = true;
        let mut has_name = false;
        for (i, (n, v)) in pairs.iter().enumerate() {
            if n.is_empty() {
                return Err(SeriesRejection::EmptyLabelName);
            }
            let name = std::str::from_utf8(n).map_err(|_| SeriesRejection::InvalidUtf8)?;
            let value = std::str::from_utf8(v).map_err(|_| SeriesRejection::InvalidUtf8)?;
            if l.max_label_name_length > 0 && name.len() > l.max_label_name_length {
                return Err(SeriesRejection::LabelNameTooLong);
            }
            if l.max_label_value_length > 0 && value.len() > l.max_label_value_length {
                return Err(SeriesRejection::LabelValueTooLong);
            }
            if value.is_empty() {
                sorted = false;
            }
            if name == METRIC_NAME && !value.is_empty() {
                has_name = true;
            }
            if i > 0 {
                let prev = pairs[i - 1].0;
                if *n == prev {
                    return Err(SeriesRejection::DuplicateLabel);
                }
                if *n < prev {
                    sorted = false;
                }
            }
            strs.push((name, value));
        }
        if !has_name {
            return Err(SeriesRejection::MissingMetricName);
        }
        Ok(sorted)
    }

    fn reject_series(&self, out: &mut WriteOutcome, batch: &WriteBatch<'_>, si: usize, reason: SeriesRejection) {
        let s = &batch.series[si];
        let n = batch.series_samples(s).len() as u64;
        let idx = SeriesRejection::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.stats.samples_invalid_series[idx].fetch_add(n.max(1), Ordering::Relaxed);
        let pairs = batch.series_labels(s);
        let text = format_raw(pairs);
        let msg = match reason {
            SeriesRejection::DuplicateLabel => {
                let dup = pairs
                    .windows(2)
                    .find(|w| w[0].0 == w[1].0)
                    .map(|w| String::from_utf8_lossy(w[0].0).into_owned())
                    .or_else(|| duplicate_unsorted(pairs))
                    .unwrap_or_default();
                format!("invalid labels for series, labels {text}, duplicated label {dup}")
            }
            SeriesRejection::MissingMetricName => {
                format!("invalid metric name or labels, got {text}: missing __name__")
            }
            SeriesRejection::EmptyLabelName => format!("invalid metric name or labels, got {text}: empty label name"),
            SeriesRejection::InvalidUtf8 => format!("invalid metric name or labels, got {text}: invalid UTF-8"),
            SeriesRejection::LabelNameTooLong => format!(
                "label name too long (limit {}) for series {text}",
                self.limits.max_label_name_length
            ),
            SeriesRejection::LabelValueTooLong => format!(
                "label value too long (limit {}) for series {text}",
                self.limits.max_label_value_length
            ),
            SeriesRejection::TooManyLabels => format!(
                "too many labels ({}, limit {}) for series {text}",
                pairs.len(),
                self.limits.max_labels_per_series
            ),
        };
        push_error(out, msg);
    }
}

fn duplicate_unsorted(pairs: &[(&[u8], &[u8])]) -> Option<String> {
    let mut names: Vec<&[u8]> = pairs.iter().map(|p| p.0).collect();
    names.sort_unstable();
    names
        .windows(2)
        .find(|w| w[0] == w[1])
        .map(|w| String::from_utf8_lossy(w[0]).into_owned())
}

fn push_error(out: &mut WriteOutcome, msg: String) {
    if out.errors.len() < MAX_ERROR_LINES {
        out.errors.push(msg);
    } else {
        out.more_errors += 1;
    }
}

/// Prometheus's `{name="value", ...}` text for labels that may not be valid UTF-8.
fn format_raw(pairs: &[(&[u8], &[u8])]) -> String {
    let mut s = String::from("{");
    for (i, (n, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&format!(
            "{}={:?}",
            String::from_utf8_lossy(n),
            String::from_utf8_lossy(v)
        ));
    }
    s.push('}');
    s
}
