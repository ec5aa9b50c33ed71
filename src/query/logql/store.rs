//! The log store seen as a [`LogSource`]: what connects the LogQL engine to `storage::logs`.
//!
//! Owns: translating a source selection into one `LogReader::select` for a tenant and grouping the
//! merged entries back into streams. Never touches: storage internals beyond the `LogReader` trait.

use super::source::{
    EntriesVisitor, EntryRef, FirstPass, LenRef, LensVisitor, LogSource, SourceEntry, SourceError, SourceStream,
};
use crate::model::{Labels, Matcher};
use crate::storage::logs::{BlockBatch, BlockVisitor, Direction, EntryIter, LogReader, SelectRequest};
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

/// One tenant's view of a log store.
pub struct StoreSource<'a> {
    pub reader: &'a dyn LogReader,
    pub tenant: &'a str,
}

impl StoreSource<'_> {
    fn request(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        needles: &[String],
        forward: bool,
    ) -> SelectRequest {
        SelectRequest {
            tenant: self.tenant.to_string(),
            matchers: matchers.to_vec(),
            start: start_ns,
            end: end_ns,
            direction: if forward {
                Direction::Forward
            } else {
                Direction::Backward
            },
            limit: 0,
            line_contains: needles.to_vec(),
        }
    }

    fn entries(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        needles: &[String],
    ) -> Result<EntryIter, SourceError> {
        let req = self.request(matchers, start_ns, end_ns, needles, true);
        self.reader.select(&req).map_err(|e| SourceError::Store(e.to_string()))
    }
}

/// Turns borrowed byte metadata into the `(String, String)` pairs `EntryRef` lends, reusing the
/// strings of earlier batches so that steady state allocates nothing.
#[derive(Default)]
struct MetaArena {
    pairs: Vec<(String, String)>,
}

fn set_str(dst: &mut String, b: &[u8]) {
    // Metadata repeats from batch to batch (`detected_level`): comparing is cheaper than
    // validating and copying (from_utf8 + set_str were 7 % of a `rate` query's CPU, perf).
    if dst.as_bytes() == b {
        return;
    }
    dst.clear();
    match std::str::from_utf8(b) {
        Ok(s) => dst.push_str(s),
        Err(_) => dst.push_str(&String::from_utf8_lossy(b)),
    }
}

impl MetaArena {
    fn fill(&mut self, b: &BlockBatch<'_>) {
        for (i, (n, v)) in b.meta.iter().enumerate() {
            if i == self.pairs.len() {
                self.pairs.push((String::new(), String::new()));
            }
            set_str(&mut self.pairs[i].0, n);
            set_str(&mut self.pairs[i].1, v);
        }
    }
    fn get(&self, r: (u32, u32)) -> &[(String, String)] {
        self.pairs.get(r.0 as usize..r.1 as usize).unwrap_or(&[])
    }
}

/// One visitor's scratch for lending a block's entries as `EntryRef`s or `LenRef`s.
#[derive(Default)]
struct Lender {
    arena: MetaArena,
    fixed: Vec<String>,
}

impl Lender {
    fn lend(&mut self, b: &BlockBatch<'_>, f: &mut dyn FnMut(&Labels, &[EntryRef<'_>])) {
        let Lender { arena, fixed } = self;
        arena.fill(b);
        // Each line is validated once (twice was 4 % of the bench's server CPU): the invalid
        // ones are copied first, then lent by index.
        fixed.clear();
        let valid: Vec<Option<&str>> = b.entries.iter().map(|e| std::str::from_utf8(e.line).ok()).collect();
        fixed.extend(
            b.entries
                .iter()
                .zip(&valid)
                .filter(|(_, v)| v.is_none())
                .map(|(e, _)| String::from_utf8_lossy(e.line).into_owned()),
        );
        let mut k = 0;
        let refs: Vec<EntryRef<'_>> = b
            .entries
            .iter()
            .zip(valid)
            .map(|(e, v)| {
                let line = match v {
                    Some(s) => s,
                    None => {
                        k += 1;
                        fixed.get(k - 1).map_or("", String::as_str)
                    }
                };
                EntryRef {
                    ts_ns: e.ts,
                    line,
                    structured_metadata: arena.get(e.meta),
                }
            })
            .collect();
        f(b.labels, &refs);
    }

    fn lend_lens(&mut self, b: &BlockBatch<'_>, f: &mut dyn FnMut(&Labels, &[LenRef<'_>])) {
        self.arena.fill(b);
        let refs: Vec<LenRef<'_>> = b
            .entries
            .iter()
            .map(|e| LenRef {
                ts_ns: e.ts,
                len: e.len as usize,
                structured_metadata: self.arena.get(e.meta),
            })
            .collect();
        f(b.labels, &refs);
    }
}

/// (time, stream, sequence), negated when backward: smaller is first.
type MergeKey = (i64, usize, u64);

/// The best `limit` entries `pass` accepted, by the merge order (time, stream, sequence), as
/// blocks come in the visit's direction.
struct FirstN {
    forward: bool,
    limit: usize,
    /// (key, what `pass` answered); the worst kept on top.
    kept: BinaryHeap<((i64, usize, u64), usize)>,
    arena: MetaArena,
    lossy: String,
}

impl FirstN {
    fn new(forward: bool, limit: usize) -> Self {
        FirstN {
            forward,
            limit,
            kept: BinaryHeap::new(),
            arena: MetaArena::default(),
            lossy: String::new(),
        }
    }

    /// Smaller is better; backward negates every component, as the merging iterator does.
    fn key(&self, ts: i64, stream: usize, seq: u64) -> (i64, usize, u64) {
        if self.forward {
            (ts, stream, seq)
        } else {
            (ts.saturating_neg(), usize::MAX - stream, u64::MAX - seq)
        }
    }

    /// Runs `pass` on the entries of `b` that could be kept; false when none of the block could.
    fn block(&mut self, b: &BlockBatch<'_>, pass: &mut dyn FnMut(&Labels, &EntryRef<'_>) -> Option<usize>) -> bool {
        let limit = self.limit;
        if self.kept.len() >= limit
            && let Some(((worst, _, _), _)) = self.kept.peek()
            && self.key(b.bound, 0, 0).0 > *worst
        {
            return false;
        }
        self.arena.fill(b);
        for e in b.entries {
            let k = self.key(e.ts, b.stream, e.seq);
            if self.kept.len() >= limit && self.kept.peek().is_some_and(|(w, _)| k >= *w) {
                continue;
            }
            let line = match std::str::from_utf8(e.line) {
                Ok(s) => s,
                Err(_) => {
                    self.lossy = String::from_utf8_lossy(e.line).into_owned();
                    self.lossy.as_str()
                }
            };
            let en = EntryRef {
                ts_ns: e.ts,
                line,
                structured_metadata: self.arena.get(e.meta),
            };
            if let Some(v) = pass(b.labels, &en) {
                self.kept.push((k, v));
                if self.kept.len() > limit {
                    self.kept.pop();
                }
            }
        }
        true
    }
}

impl LogSource for StoreSource<'_> {
    fn visit(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        f: &mut dyn FnMut(&Labels, &[EntryRef<'_>]),
    ) -> Result<(), SourceError> {
        self.visit_needles(matchers, start_ns, end_ns, &[], f)
    }

    /// Streams entries one at a time (no per-stream buffering), letting the store skip chunks whose
    /// filters rule the needles out: a needle query then reads a few chunks, not the corpus.
    ///
    /// Block by block, unmerged: lines are lent from the decompressed block (a line that is not
    /// UTF-8 is copied, lossily), so a metric query allocates per block, not per entry.
    fn visit_needles(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        needles: &[String],
        f: &mut dyn FnMut(&Labels, &[EntryRef<'_>]),
    ) -> Result<(), SourceError> {
        let req = self.request(matchers, start_ns, end_ns, needles, true);
        let mut lender = Lender::default();
        self.reader
            .visit_blocks(&req, true, false, &mut |b| {
                lender.lend(b, &mut *f);
                true
            })
            .map_err(|e| SourceError::Store(e.to_string()))
    }

    fn visit_lens(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        f: &mut dyn FnMut(&Labels, &[LenRef<'_>]),
    ) -> Result<(), SourceError> {
        let req = self.request(matchers, start_ns, end_ns, &[], true);
        let mut lender = Lender::default();
        self.reader
            .visit_blocks(&req, false, false, &mut |b| {
                lender.lend_lens(b, &mut *f);
                true
            })
            .map_err(|e| SourceError::Store(e.to_string()))
    }

    fn visit_needles_split(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        needles: &[String],
        fs: &mut [&mut EntriesVisitor<'_>],
    ) -> Result<(), SourceError> {
        let req = self.request(matchers, start_ns, end_ns, needles, true);
        let mut wrapped: Vec<Box<BlockVisitor<'_>>> = fs
            .iter_mut()
            .map(|f| {
                let mut lender = Lender::default();
                Box::new(move |place: usize, b: &BlockBatch<'_>| {
                    lender.lend(b, &mut |labels, entries| f(place, labels, entries));
                    true
                }) as Box<BlockVisitor<'_>>
            })
            .collect();
        let mut refs: Vec<&mut BlockVisitor<'_>> = wrapped.iter_mut().map(|w| &mut **w as _).collect();
        self.reader
            .visit_blocks_split(&req, true, false, &mut refs)
            .map_err(|e| SourceError::Store(e.to_string()))
    }

    fn visit_lens_split(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        fs: &mut [&mut LensVisitor<'_>],
    ) -> Result<(), SourceError> {
        let req = self.request(matchers, start_ns, end_ns, &[], true);
        let mut wrapped: Vec<Box<BlockVisitor<'_>>> = fs
            .iter_mut()
            .map(|f| {
                let mut lender = Lender::default();
                Box::new(move |place: usize, b: &BlockBatch<'_>| {
                    lender.lend_lens(b, &mut |labels, entries| f(place, labels, entries));
                    true
                }) as Box<BlockVisitor<'_>>
            })
            .collect();
        let mut refs: Vec<&mut BlockVisitor<'_>> = wrapped.iter_mut().map(|w| &mut **w as _).collect();
        self.reader
            .visit_blocks_split(&req, false, false, &mut refs)
            .map_err(|e| SourceError::Store(e.to_string()))
    }

    /// Blocks in the asked direction, unmerged, keeping the best `limit` accepted entries by the
    /// merge order (time, stream, sequence): an entry that cannot beat the worst kept one is not
    /// even run through `pass`, and the visit stops at the first block whose bound cannot.
    #[allow(clippy::too_many_arguments)]
    fn select_first(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        needles: &[String],
        forward: bool,
        limit: usize,
        pass: &mut dyn FnMut(&Labels, &EntryRef<'_>) -> Option<usize>,
    ) -> Result<Vec<usize>, SourceError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let req = self.request(matchers, start_ns, end_ns, needles, forward);
        let mut first = FirstN::new(forward, limit);
        self.reader
            .visit_blocks(&req, true, true, &mut |b| first.block(b, &mut *pass))
            .map_err(|e| SourceError::Store(e.to_string()))?;
        Ok(first.kept.into_sorted_vec().into_iter().map(|(_, v)| v).collect())
    }

    /// As `select_first`, each visitor on its thread keeping its own best `limit` (a block or
    /// entry that cannot beat a visitor's worst kept one cannot be among the best of all either),
    /// merged by the merge order's key, which is unique: the answer does not depend on which
    /// thread read which block.
    #[allow(clippy::too_many_arguments)]
    fn select_first_split(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        needles: &[String],
        forward: bool,
        limit: usize,
        passes: &mut [&mut FirstPass<'_>],
    ) -> Result<Vec<(usize, usize)>, SourceError> {
        if limit == 0 || passes.is_empty() {
            return Ok(Vec::new());
        }
        let req = self.request(matchers, start_ns, end_ns, needles, forward);
        let mut firsts: Vec<FirstN> = passes.iter().map(|_| FirstN::new(forward, limit)).collect();
        {
            let mut wrapped: Vec<Box<BlockVisitor<'_>>> = firsts
                .iter_mut()
                .zip(passes.iter_mut())
                .map(|(first, pass)| {
                    Box::new(move |_: usize, b: &BlockBatch<'_>| first.block(b, &mut **pass)) as Box<BlockVisitor<'_>>
                })
                .collect();
            let mut refs: Vec<&mut BlockVisitor<'_>> = wrapped.iter_mut().map(|w| &mut **w as _).collect();
            self.reader
                .visit_blocks_split(&req, true, true, &mut refs)
                .map_err(|e| SourceError::Store(e.to_string()))?;
        }
        let mut all: Vec<(MergeKey, (usize, usize))> = firsts
            .into_iter()
            .enumerate()
            .flat_map(|(i, f)| f.kept.into_iter().map(move |(k, v)| (k, (i, v))))
            .collect();
        all.sort_unstable_by_key(|x| x.0);
        all.truncate(limit);
        Ok(all.into_iter().map(|(_, v)| v).collect())
    }

    fn select(&self, matchers: &[Matcher], start_ns: i64, end_ns: i64) -> Result<Vec<SourceStream>, SourceError> {
        let iter = self.entries(matchers, start_ns, end_ns, &[])?;
        // Entries arrive merged across streams in time order; streams are keyed by their shared
        // label set (one `Arc` per stream), so grouping costs a pointer hash per entry.
        let mut index: HashMap<*const Labels, usize> = HashMap::new();
        let mut out: Vec<SourceStream> = Vec::new();
        let mut keep: Vec<Arc<Labels>> = Vec::new();
        for item in iter {
            let se = item.map_err(|e| SourceError::Store(e.to_string()))?;
            let key = Arc::as_ptr(&se.labels);
            let i = *index.entry(key).or_insert_with(|| {
                out.push(SourceStream {
                    labels: (*se.labels).clone(),
                    entries: Vec::new(),
                });
                keep.push(Arc::clone(&se.labels));
                out.len() - 1
            });
            out[i].entries.push(SourceEntry {
                ts_ns: se.entry.ts,
                line: se.entry.line,
                structured_metadata: se.entry.metadata,
            });
        }
        Ok(out)
    }
}
