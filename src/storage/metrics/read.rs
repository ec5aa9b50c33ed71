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

    /// Appends the samples in `[mint, maxt]` to `out`: what `samples` yields, decoded in one go. A
    /// chunk inside the range that starts after everything already appended is copied without the
    /// per-sample range and duplicate checks, and `out` grows once per chunk.
    pub fn decode_into(&self, mint: i64, maxt: i64, out: &mut Vec<Sample>) {
        let mut last_t: Option<i64> = None;
        for (i, c) in self.chunks.iter().enumerate() {
            if c.max_t < mint || c.min_t > maxt {
                continue;
            }
            // A chunk that fails to decode is skipped, as in `SampleIter`.
            let Ok(it) = ChunkIter::new(&c.data) else { continue };
            out.reserve(it.num_samples());
            if c.min_t >= mint && c.max_t <= maxt && last_t.is_none_or(|l| c.min_t > l) {
                let before = out.len();
                out.extend(it.map(|(t, v)| Sample { t, v }));
                if out.len() > before {
                    last_t = out.last().map(|s| s.t);
                }
                continue;
            }
            // The general case: the rest goes through the iterator's checks.
            let mut rest = SampleIter {
                chunks: &self.chunks,
                next: i + 1,
                cur: Some(it),
                mint,
                maxt,
                last_t,
            };
            out.extend(rest.by_ref());
            return;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::metrics::chunk::ChunkAppender;

    fn chunk(ts: &[i64]) -> LoadedChunk {
        let mut a = ChunkAppender::new();
        for &t in ts {
            a.append(t, t as f64 / 3.0);
        }
        LoadedChunk {
            min_t: ts[0],
            max_t: ts[ts.len() - 1],
            data: a.into_bytes(),
        }
    }

    /// `decode_into` must append exactly what `samples` yields.
    fn check(chunks: &[&[i64]], mint: i64, maxt: i64) {
        let s = SelectedSeries {
            labels: Labels::default(),
            chunks: chunks.iter().map(|c| chunk(c)).collect(),
        };
        let want: Vec<Sample> = s.samples(mint, maxt).collect();
        let mut got = vec![Sample { t: -1, v: 0.0 }];
        s.decode_into(mint, maxt, &mut got);
        assert_eq!(&got[1..], &want[..], "{chunks:?} [{mint}, {maxt}]");
    }

    #[test]
    fn decode_into_matches_samples() {
        let a: &[i64] = &[10, 20, 30, 40];
        let b: &[i64] = &[50, 60, 70];
        let overlap: &[i64] = &[35, 40, 45, 55];
        let c: &[i64] = &[80, 90];
        for chunks in [
            vec![a],
            vec![a, b],
            vec![a, overlap, b],
            vec![a, b, c],
            vec![overlap, c],
        ] {
            for (mint, maxt) in [
                (0, 100),
                (10, 90),
                (15, 85),
                (40, 40),
                (41, 49),
                (60, 200),
                (95, 99),
                (0, 9),
            ] {
                check(&chunks, mint, maxt);
            }
        }
    }
}
