//! The read contract the query layer sees: select series by matchers and a time range, then iterate
//! their samples. Knows nothing of where a chunk came from (head or block).

use super::StorageError;
use super::chunk::ChunkIter;
use crate::model::{Labels, Matcher, Sample};

/// What query engines and the metadata endpoints need from the metrics store.
/// Time ranges are inclusive milliseconds.
pub trait MetricsReader: Send + Sync {
    /// Series matching all `matchers` with at least one sample in `[mint, maxt]`, sorted by labels,
    /// with their chunks loaded.
    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<SelectedSeries>, StorageError>;
    /// Label sets only (no sample data read), sorted and unique.
    fn series(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<Labels>, StorageError>;
    /// Sorted unique label names of the matching series (all series when `matchers` is empty).
    fn label_names(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<String>, StorageError>;
    /// Sorted unique values of `name` among the matching series.
    fn label_values(&self, name: &str, matchers: &[Matcher], mint: i64, maxt: i64)
    -> Result<Vec<String>, StorageError>;
    /// HELP/TYPE/UNIT per metric family, as last received.
    fn metadata(&self) -> Vec<MetricMetadata>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricMetadata {
    pub family: String,
    /// Prometheus's lowercase type name: counter, gauge, histogram, gaugehistogram, summary, info,
    /// stateset or unknown.
    pub kind: &'static str,
    pub help: String,
    pub unit: String,
}

/// One chunk's encoded bytes with its time range.
#[derive(Debug, Clone)]
pub(crate) struct LoadedChunk {
    pub min_t: i64,
    pub max_t: i64,
    pub data: Vec<u8>,
}

/// A selected series: its labels and the encoded chunks overlapping the selected range, in time order.
#[derive(Debug, Clone)]
pub struct SelectedSeries {
    pub labels: Labels,
    pub(crate) chunks: Vec<LoadedChunk>,
}

impl SelectedSeries {
    /// Iterates the samples in `[mint, maxt]` in time order. Can be called any number of times.
    pub fn samples(&self, mint: i64, maxt: i64) -> SampleIter<'_> {
        SampleIter {
            chunks: &self.chunks,
            next: 0,
            cur: None,
            mint,
            maxt,
            last_t: None,
        }
    }

    /// Encoded bytes held for this series (for query memory accounting).
    pub fn encoded_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.data.len()).sum()
    }
}

/// Samples of one series in time order. Chunks that overlap (a block and the head both holding a
/// timestamp after a crash) are deduplicated: a timestamp is yielded once.
pub struct SampleIter<'a> {
    chunks: &'a [LoadedChunk],
    next: usize,
    cur: Option<ChunkIter<'a>>,
    mint: i64,
    maxt: i64,
    last_t: Option<i64>,
}

impl Iterator for SampleIter<'_> {
    type Item = Sample;

    fn next(&mut self) -> Option<Sample> {
        loop {
            if let Some(it) = self.cur.as_mut() {
                for (t, v) in it.by_ref() {
                    if t > self.maxt {
                        self.next = self.chunks.len();
                        break;
                    }
                    if t < self.mint || self.last_t.is_some_and(|l| t <= l) {
                        continue;
                    }
                    self.last_t = Some(t);
                    return Some(Sample { t, v });
                }
                self.cur = None;
            }
            let c = self.chunks.get(self.next)?;
            self.next += 1;
            if c.max_t < self.mint || c.min_t > self.maxt {
                continue;
            }
            // A chunk that fails to decode ends early; the bytes were checksummed where they were read.
            self.cur = ChunkIter::new(&c.data).ok();
        }
    }
}
