//! The read contract the query layer sees: select streams by matchers and a time range, then
//! iterate their entries forward or backward, merged across streams, up to a limit. Blocks are read
//! and decompressed lazily, in the order the merge needs them, so `limit=100` over a day of data
//! reads a few blocks; chunks whose n-gram filter rules out a required substring are not read.
//! `visit_blocks` is the unmerged read: whole blocks lent to a callback (lines and metadata
//! borrowed from the decompressed buffer), with a second thread decompressing ahead.
//! `visit_blocks_split` shares the blocks out among one callback per thread, each thread reading,
//! decompressing and decoding its own: metric queries and log queries that keep their first N
//! entries use it, so their pipelines run on both threads.

use super::LogsError;
use super::block::BlockRef;
use super::block::{self, Entry};
use super::store::LogStore;
use crate::model::{Labels, Matcher};
use crate::storage::wal::RecordReader;
use std::cmp::Ordering as CmpOrdering;
use std::collections::{BTreeSet, BinaryHeap};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// What to select. Times are ns, `start` inclusive, `end` exclusive (Loki's convention).
#[derive(Debug, Clone)]
pub struct SelectRequest {
    pub tenant: String,
    pub matchers: Vec<Matcher>,
    pub start: i64,
    pub end: i64,
    pub direction: Direction,
    /// 0 = unlimited.
    pub limit: usize,
    /// Substrings every returned line must contain (`|= "x"` filters): used to skip chunks and
    /// applied to lines, so the caller need not filter again.
    pub line_contains: Vec<String>,
}

/// `/index/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IndexStats {
    pub streams: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub entries: u64,
}

/// An entry with its stream's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub labels: Arc<Labels>,
    pub entry: Entry,
}

/// What query engines and the metadata endpoints need from the log store.
pub trait LogReader: Send + Sync {
    /// Entries of the matching streams in `direction` order, merged across streams.
    fn select(&self, req: &SelectRequest) -> Result<EntryIter, LogsError>;
    /// Label sets of the matching streams with data in `[start, end]`, sorted.
    fn series(&self, tenant: &str, matchers: &[Matcher], start: i64, end: i64) -> Result<Vec<Labels>, LogsError>;
    /// Sorted label names (of all streams when `matchers` is empty).
    fn label_names(&self, tenant: &str, matchers: &[Matcher], start: i64, end: i64) -> Result<Vec<String>, LogsError>;
    /// Sorted values of `name`.
    fn label_values(
        &self,
        tenant: &str,
        name: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, LogsError>;
    fn index_stats(&self, tenant: &str, matchers: &[Matcher], start: i64, end: i64) -> Result<IndexStats, LogsError>;
    /// Hands every block of the matching streams holding entries in `[req.start, req.end)` to
    /// `f`, unmerged, lending lines and metadata straight from the decompressed block (the limit
    /// is ignored); `f` returns false to stop. With `ordered` false blocks come in no particular
    /// order (the fast read for metric queries); with `ordered` true, head blocks first (where
    /// false skips just that head), then blocks by `bound` in `req.direction` (newest `max_t`
    /// first when backward, oldest `min_t` first when forward), so a caller keeping the first N
    /// entries can stop once a block's bound is past its N-th. With `lines` false the entries'
    /// `line` may be empty (`len` is right).
    fn visit_blocks(
        &self,
        req: &SelectRequest,
        lines: bool,
        ordered: bool,
        f: &mut dyn FnMut(&BlockBatch<'_>) -> bool,
    ) -> Result<(), LogsError>;
    /// [`LogReader::visit_blocks`] with the blocks shared out among the visitors `fs`, each
    /// called on a thread of its own (`fs[0]` on the calling one, which also gets the heads), so
    /// that what the caller does with a block runs in parallel too. Each call is given the
    /// block's place in the visit (heads first, then blocks in the order `ordered` asks; every
    /// place once, increasing for each visitor), so results can be merged in an order that does
    /// not depend on the threads' timing. A visitor returning false on a block takes no more
    /// blocks (on a head: skips just that head); the others go on.
    fn visit_blocks_split(
        &self,
        req: &SelectRequest,
        lines: bool,
        ordered: bool,
        fs: &mut [&mut BlockVisitor<'_>],
    ) -> Result<(), LogsError>;
}

/// What [`LogReader::visit_blocks_split`] calls: (place in the visit, block) -> take more.
pub type BlockVisitor<'a> = dyn FnMut(usize, &BlockBatch<'_>) -> bool + Send + 'a;

/// One entry lent by [`LogReader::visit_blocks`].
#[derive(Debug, Clone, Copy)]
pub struct BlockEntry<'a> {
    pub ts: i64,
    /// The entry's sequence number in its stream (the merge order's tie-break).
    pub seq: u64,
    /// The line's length in bytes.
    pub len: u32,
    /// The line, or empty when the visit did not ask for lines.
    pub line: &'a [u8],
    /// This entry's structured metadata: `BlockBatch::meta[meta.0..meta.1]`.
    pub meta: (u32, u32),
}

/// The entries of one block (or head) of one stream, with `ts` in the visit's range.
#[derive(Debug)]
pub struct BlockBatch<'a> {
    pub labels: &'a Arc<Labels>,
    /// The stream's index in this select (the merge order's tie-break among streams).
    pub stream: usize,
    /// Newest entry time when backward, oldest when forward (of the whole block).
    pub bound: i64,
    pub entries: &'a [BlockEntry<'a>],
    /// (name, value) pairs of the entries: each entry's are one range, and entries may share a
    /// range (those with the same metadata in a column block do: a cache may key on it).
    pub meta: &'a [(&'a [u8], &'a [u8])],
}

/// What [`load_block`] left in `raw`.
#[derive(Debug, Clone, Copy)]
enum Loaded {
    /// The entries encoding, or with `lines` false possibly only its part before the lines.
    Entries,
    /// A column block's head section alone ([`block::decode_head_columns`]).
    Head(block::BlockHeader),
    /// A column block's head section, and its lines in the second buffer.
    Columns(block::BlockHeader),
}

/// A head (a stream's unflushed entries, copied under the store's lock) as block entries: encoded
/// into `raw` in the entries layout, then decoded like a stored block.
fn decode_head<'a>(
    head: &block::EntriesBuf,
    first_seq: u64,
    lines: bool,
    (start, end): (i64, i64),
    raw: &'a mut Vec<u8>,
    entries: &mut Vec<BlockEntry<'a>>,
    meta: &mut Vec<(&'a [u8], &'a [u8])>,
) -> Result<(), LogsError> {
    raw.clear();
    head.encode_from(0, raw);
    let raw: &'a Vec<u8> = raw;
    decode_batch(raw, &[], Loaded::Entries, first_seq, lines, start, end, entries, meta)
}

/// Decodes what [`load_block`] left in `raw` into borrowed entries in `[start, end)`; with `lines`
/// false every `line` is empty. From a column head, entries with the same metadata set share one
/// `meta` range; `line_buf` holds the lines of [`Loaded::Columns`].
#[allow(clippy::too_many_arguments)]
fn decode_batch<'a>(
    raw: &'a [u8],
    line_buf: &'a [u8],
    loaded: Loaded,
    first_seq: u64,
    lines: bool,
    start: i64,
    end: i64,
    entries: &mut Vec<BlockEntry<'a>>,
    meta: &mut Vec<(&'a [u8], &'a [u8])>,
) -> Result<(), LogsError> {
    if let Loaded::Head(h) | Loaded::Columns(h) = loaded {
        let (mut ts, mut lens, mut sets, mut idx) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        block::decode_head_columns(&h, raw, &mut ts, &mut lens, &mut sets, &mut idx)?;
        let with_lines = matches!(loaded, Loaded::Columns(_));
        if with_lines && lens.iter().map(|&l| l as usize).sum::<usize>() != line_buf.len() {
            return Err(LogsError::BadRecord("line lengths"));
        }
        let mut at = 0usize;
        let mut ranges = Vec::with_capacity(sets.len());
        for set in &sets {
            let a = meta.len() as u32;
            block::for_each_meta_pair(set, |n, v| meta.push((n, v)))?;
            ranges.push((a, meta.len() as u32));
        }
        entries.reserve(ts.len());
        for (i, ((&ts, &len), &k)) in ts.iter().zip(&lens).zip(&idx).enumerate() {
            let from = at;
            at += len as usize;
            if ts < start || ts >= end {
                continue;
            }
            entries.push(BlockEntry {
                ts,
                seq: first_seq + i as u64,
                len,
                // Checked above: the lengths add up to the buffer.
                line: if with_lines {
                    line_buf.get(from..at).unwrap_or(&[])
                } else {
                    &[]
                },
                // `decode_head_columns` checked every index against the sets.
                meta: ranges.get(k as usize).copied().unwrap_or((0, 0)),
            });
        }
        return Ok(());
    }
    let mut seq = first_seq;
    let mut push = |ts: i64, len: u32, line: &'a [u8], m: &mut dyn Iterator<Item = (&'a [u8], &'a [u8])>| {
        seq += 1;
        if ts < start || ts >= end {
            return;
        }
        let a = meta.len() as u32;
        meta.extend(m);
        entries.push(BlockEntry {
            ts,
            seq: seq - 1,
            len,
            line,
            meta: (a, meta.len() as u32),
        });
    };
    if lines {
        block::for_each_entry(raw, |ts, line, m| push(ts, line.len() as u32, line, m))
    } else {
        block::for_each_entry_head(raw, |ts, len, m| push(ts, len, &[], m))
    }
}

/// Reads, checks and decompresses one block record into `raw` (`buf` is the record scratch): the
/// whole entries encoding, or with `lines` false a column block's head section alone.
fn load_block(
    rr: &mut RecordReader<'_>,
    b: &BlockSource,
    lines: bool,
    buf: &mut Vec<u8>,
    raw: &mut Vec<u8>,
    line_buf: Option<&mut Vec<u8>>,
) -> Result<Loaded, LogsError> {
    let rec = rr.read(b.block.pos, buf)?;
    let (ty, mut r) = block::open_record(rec)?;
    if ty != block::REC_BLOCK {
        return Err(LogsError::BadRecord("not a block"));
    }
    let (h, data) = block::decode_block_header(&mut r)?;
    if lines {
        if let Some(lb) = line_buf
            && h.codec == block::CODEC_COLUMNS
        {
            block::decompress_columns_parts(&h, data, raw, lb)?;
            return Ok(Loaded::Columns(h));
        }
        block::decompress(&h, data, raw)?;
    } else if h.codec == block::CODEC_COLUMNS {
        block::decompress_head_section(&h, data, raw)?;
        return Ok(Loaded::Head(h));
    } else {
        block::decompress_head(&h, data, raw)?;
    }
    Ok(Loaded::Entries)
}

/// Below this many blocks a visit stays on the calling thread (a thread costs ~50 µs).
const PARALLEL_BLOCKS: usize = 16;

#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockSource {
    pub stream: usize,
    pub block: BlockRef,
}

/// What a select took from the store under its lock.
#[derive(Debug, Default)]
pub(crate) struct Selection {
    pub dir: PathBuf,
    pub labels: Vec<Arc<Labels>>,
    pub blocks: Vec<BlockSource>,
    /// (stream index, first seq, entries) of head blocks: a copy of the buffer, taken under
    /// the store's lock, decoded after (decoding 500 heads into owned entries there was 15 % of
    /// a `rate` query's CPU, perf).
    pub heads: Vec<(usize, u64, block::EntriesBuf)>,
    pub blooms_checked: u64,
    pub chunks_skipped: u64,
}

/// Decoded entries of one block, ordered for popping from the end.
struct Cursor {
    stream: usize,
    /// (ts, seq, entry), sorted so that the next one is last.
    entries: Vec<(i64, u64, Entry)>,
    forward: bool,
}

impl Cursor {
    fn key(&self) -> Option<(i64, usize, u64)> {
        self.entries.last().map(|(t, s, _)| {
            if self.forward {
                (*t, self.stream, *s)
            } else {
                // Reverse order by negating; seq reversed too so a stream's ties come newest first.
                (t.saturating_neg(), usize::MAX - self.stream, u64::MAX - *s)
            }
        })
    }
}

impl PartialEq for Cursor {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}
impl Eq for Cursor {}
impl PartialOrd for Cursor {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cursor {
    /// Reversed: `BinaryHeap` is a max-heap and the smallest key must come out first.
    fn cmp(&self, o: &Self) -> CmpOrdering {
        o.key().cmp(&self.key())
    }
}

/// Entries of a select, lazily merged. Yields errors for blocks that cannot be read.
pub struct EntryIter {
    dir: PathBuf,
    labels: Vec<Arc<Labels>>,
    /// Blocks not opened yet, sorted so that the next to open is last.
    pending: Vec<BlockSource>,
    heap: BinaryHeap<Cursor>,
    forward: bool,
    start: i64,
    end: i64,
    remaining: usize,
    needles: Vec<String>,
    buf: Vec<u8>,
    raw: Vec<u8>,
    /// Blocks read from disk so far (for tests and query statistics).
    pub blocks_read: u64,
    /// Chunks whose filter ruled them out.
    pub chunks_skipped: u64,
}

impl EntryIter {
    fn start_key(&self, b: &BlockSource) -> i64 {
        if self.forward {
            b.block.min_t
        } else {
            b.block.max_t.saturating_neg()
        }
    }

    fn keep(&self, ts: i64, line: &str) -> bool {
        ts >= self.start && ts < self.end && self.needles.iter().all(|n| line.contains(n.as_str()))
    }

    fn push_cursor(&mut self, stream: usize, mut entries: Vec<(i64, u64, Entry)>) {
        if self.forward {
            entries.sort_by_key(|e| std::cmp::Reverse((e.0, e.1)));
        } else {
            entries.sort_by_key(|e| (e.0, e.1));
        }
        if !entries.is_empty() {
            self.heap.push(Cursor {
                stream,
                entries,
                forward: self.forward,
            });
        }
    }

    fn open(&mut self, b: BlockSource) -> Result<(), LogsError> {
        crate::storage::wal::read_record_at(&self.dir, b.block.pos, &mut self.buf)?;
        self.blocks_read += 1;
        let (ty, mut r) = block::open_record(&self.buf)?;
        if ty != block::REC_BLOCK {
            return Err(LogsError::BadRecord("not a block"));
        }
        let (h, data) = block::decode_block_header(&mut r)?;
        block::decompress(&h, data, &mut self.raw)?;
        let mut out = Vec::with_capacity(h.entries as usize);
        let mut seq = h.first_seq;
        let raw = std::mem::take(&mut self.raw);
        let res = block::for_each_entry(&raw, |ts, line, meta| {
            let s = seq;
            seq += 1;
            let line = String::from_utf8_lossy(line);
            if self.keep(ts, &line) {
                out.push((
                    ts,
                    s,
                    Entry {
                        ts,
                        line: line.into_owned(),
                        metadata: meta
                            .map(|(n, v)| {
                                (
                                    String::from_utf8_lossy(n).into_owned(),
                                    String::from_utf8_lossy(v).into_owned(),
                                )
                            })
                            .collect(),
                    },
                ));
            }
        });
        self.raw = raw;
        res?;
        self.push_cursor(b.stream, out);
        Ok(())
    }
}

impl Iterator for EntryIter {
    type Item = Result<StreamEntry, LogsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        loop {
            // Open every block that could hold an entry before the current best.
            let next_block = self.pending.last().map(|b| self.start_key(b));
            let top = self.heap.peek().and_then(|c| c.key()).map(|k| k.0);
            match (next_block, top) {
                (Some(nb), Some(t)) if nb > t => break,
                (Some(_), _) => {
                    let Some(b) = self.pending.pop() else { break };
                    if let Err(e) = self.open(b) {
                        return Some(Err(e));
                    }
                }
                (None, _) => break,
            }
        }
        let mut cur = self.heap.pop()?;
        let (_, _, entry) = cur.entries.pop()?;
        let labels = Arc::clone(&self.labels[cur.stream]);
        if !cur.entries.is_empty() {
            self.heap.push(cur);
        }
        self.remaining -= 1;
        Some(Ok(StreamEntry { labels, entry }))
    }
}

impl LogReader for LogStore {
    fn select(&self, req: &SelectRequest) -> Result<EntryIter, LogsError> {
        let sel = self.snapshot(
            &req.tenant,
            &req.matchers,
            req.start,
            req.end.saturating_sub(1),
            &req.line_contains,
        )?;
        let forward = req.direction == Direction::Forward;
        let mut it = EntryIter {
            dir: sel.dir,
            labels: sel.labels,
            pending: sel.blocks,
            heap: BinaryHeap::new(),
            forward,
            start: req.start,
            end: req.end,
            remaining: if req.limit == 0 { usize::MAX } else { req.limit },
            needles: req.line_contains.clone(),
            buf: Vec::new(),
            raw: Vec::new(),
            blocks_read: 0,
            chunks_skipped: sel.chunks_skipped,
        };
        // Next to open last: forward by descending min_t, backward by ascending max_t.
        let key = |b: &BlockSource| {
            if forward {
                b.block.min_t.saturating_neg()
            } else {
                b.block.max_t
            }
        };
        it.pending.sort_by_key(key);
        for (stream, first_seq, head) in sel.heads {
            let mut entries = Vec::new();
            head.decode_from(0, &mut entries)?;
            let v: Vec<(i64, u64, Entry)> = entries
                .into_iter()
                .enumerate()
                .filter(|(_, e)| it.keep(e.ts, &e.line))
                .map(|(i, e)| (e.ts, first_seq + i as u64, e))
                .collect();
            it.push_cursor(stream, v);
        }
        Ok(it)
    }

    fn series(&self, tenant: &str, matchers: &[Matcher], start: i64, end: i64) -> Result<Vec<Labels>, LogsError> {
        let mut v: Vec<Labels> = self.with_matching(tenant, matchers, start, end, |s| {
            s.iter().map(|s| s.key.to_labels()).collect()
        })?;
        v.sort();
        v.dedup();
        Ok(v)
    }

    fn label_names(&self, tenant: &str, matchers: &[Matcher], start: i64, end: i64) -> Result<Vec<String>, LogsError> {
        if matchers.is_empty() && start == i64::MIN && end == i64::MAX {
            return self.tenant_label_names(tenant);
        }
        let names: BTreeSet<String> = self.with_matching(tenant, matchers, start, end, |s| {
            let mut n = BTreeSet::new();
            for st in s {
                for (name, _) in st.key.pairs() {
                    if !n.contains(name) {
                        n.insert(name.to_string());
                    }
                }
            }
            n
        })?;
        Ok(names.into_iter().collect())
    }

    fn label_values(
        &self,
        tenant: &str,
        name: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, LogsError> {
        let vals: BTreeSet<String> = self.with_matching(tenant, matchers, start, end, |s| {
            let mut n = BTreeSet::new();
            for st in s {
                if let Some(v) = st.key.get(name)
                    && !n.contains(v)
                {
                    n.insert(v.to_string());
                }
            }
            n
        })?;
        Ok(vals.into_iter().collect())
    }

    fn index_stats(&self, tenant: &str, matchers: &[Matcher], start: i64, end: i64) -> Result<IndexStats, LogsError> {
        self.stats_over(tenant, matchers, start, end)
    }

    /// Decompression is most of a scan's cost, so with enough blocks a second thread reads and
    /// decompresses blocks and hands the buffers over a bounded channel, while this thread runs `f`
    /// (which need not be `Send`): unordered, the two threads take every other block; ordered, the
    /// second thread reads ahead in order.
    fn visit_blocks(
        &self,
        req: &SelectRequest,
        lines: bool,
        ordered: bool,
        f: &mut dyn FnMut(&BlockBatch<'_>) -> bool,
    ) -> Result<(), LogsError> {
        let mut sel = self.snapshot(
            &req.tenant,
            &req.matchers,
            req.start,
            req.end.saturating_sub(1),
            &req.line_contains,
        )?;
        let (start, end) = (req.start, req.end);
        let forward = req.direction == Direction::Forward;
        let bound_of = |min_t: i64, max_t: i64| if forward { min_t } else { max_t };
        let mut raw = Vec::new();
        for (stream, first_seq, head) in &sel.heads {
            let mut entries: Vec<BlockEntry<'_>> = Vec::new();
            let mut meta: Vec<(&[u8], &[u8])> = Vec::new();
            decode_head(head, *first_seq, lines, (start, end), &mut raw, &mut entries, &mut meta)?;
            // Heads come unsorted: when ordered, a refusal skips only that head.
            if !entries.is_empty()
                && !f(&BlockBatch {
                    labels: &sel.labels[*stream],
                    stream: *stream,
                    bound: bound_of(head.min_t, head.max_t),
                    entries: &entries,
                    meta: &meta,
                })
                && !ordered
            {
                return Ok(());
            }
        }
        if ordered {
            if forward {
                sel.blocks.sort_by_key(|b| b.block.min_t);
            } else {
                sel.blocks.sort_by_key(|b| std::cmp::Reverse(b.block.max_t));
            }
        }
        let labels = &sel.labels;
        // Ok(false): `f` asked to stop.
        let mut run = |b: &BlockSource, raw: &[u8], loaded: Loaded| -> Result<bool, LogsError> {
            let mut entries = Vec::new();
            let mut meta = Vec::new();
            decode_batch(
                raw,
                &[],
                loaded,
                b.block.first_seq,
                lines,
                start,
                end,
                &mut entries,
                &mut meta,
            )?;
            if entries.is_empty() {
                return Ok(true);
            }
            Ok(f(&BlockBatch {
                labels: &labels[b.stream],
                stream: b.stream,
                bound: bound_of(b.block.min_t, b.block.max_t),
                entries: &entries,
                meta: &meta,
            }))
        };
        let dir = sel.dir.as_path();
        let (mut buf, mut raw) = (Vec::new(), Vec::new());
        let mut rr = RecordReader::new(dir);
        if sel.blocks.len() < PARALLEL_BLOCKS {
            for b in &sel.blocks {
                let loaded = load_block(&mut rr, b, lines, &mut buf, &mut raw, None)?;
                if !run(b, &raw, loaded)? {
                    break;
                }
            }
            return Ok(());
        }
        std::thread::scope(|sc| -> Result<(), LogsError> {
            // Created inside the scope: an early return drops `rx`, which ends the worker before
            // the scope joins it.
            type Sent = Result<(usize, Vec<u8>, Loaded), LogsError>;
            let (tx, rx) = std::sync::mpsc::sync_channel::<Sent>(4);
            let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
            let blocks = &sel.blocks;
            // Ordered: the worker reads every block ahead of this thread; unordered: the odd ones.
            let (step, first) = if ordered { (1, 0) } else { (2, 1) };
            sc.spawn(move || {
                let mut buf = Vec::new();
                let mut rr = RecordReader::new(dir);
                for (i, b) in blocks.iter().enumerate().skip(first).step_by(step) {
                    let mut raw = back_rx.try_recv().unwrap_or_default();
                    let r = load_block(&mut rr, b, lines, &mut buf, &mut raw, None).map(|l| (i, raw, l));
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            });
            if !ordered {
                for b in blocks.iter().step_by(2) {
                    let loaded = load_block(&mut rr, b, lines, &mut buf, &mut raw, None)?;
                    if !run(b, &raw, loaded)? {
                        return Ok(());
                    }
                    while let Ok(m) = rx.try_recv() {
                        let (i, r, l) = m?;
                        if !run(&blocks[i], &r, l)? {
                            return Ok(());
                        }
                        let _ = back_tx.send(r);
                    }
                }
            }
            for m in rx.iter() {
                let (i, r, l) = m?;
                if !run(&blocks[i], &r, l)? {
                    return Ok(());
                }
                let _ = back_tx.send(r);
            }
            Ok(())
        })
    }

    /// Each thread reads, decompresses and decodes the blocks it takes (the next unvisited one,
    /// from a shared counter), then runs its visitor: no hand-over between threads.
    fn visit_blocks_split(
        &self,
        req: &SelectRequest,
        lines: bool,
        ordered: bool,
        fs: &mut [&mut BlockVisitor<'_>],
    ) -> Result<(), LogsError> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let mut sel = self.snapshot(
            &req.tenant,
            &req.matchers,
            req.start,
            req.end.saturating_sub(1),
            &req.line_contains,
        )?;
        let Some((first, rest)) = fs.split_first_mut() else {
            return Ok(());
        };
        let (start, end) = (req.start, req.end);
        let forward = req.direction == Direction::Forward;
        let bound_of = |min_t: i64, max_t: i64| if forward { min_t } else { max_t };
        let labels = &sel.labels;
        let mut raw = Vec::new();
        for (place, (stream, first_seq, head)) in sel.heads.iter().enumerate() {
            let mut entries: Vec<BlockEntry<'_>> = Vec::new();
            let mut meta: Vec<(&[u8], &[u8])> = Vec::new();
            decode_head(head, *first_seq, lines, (start, end), &mut raw, &mut entries, &mut meta)?;
            // A refusal skips just that head.
            if !entries.is_empty() {
                let _ = first(
                    place,
                    &BlockBatch {
                        labels: &labels[*stream],
                        stream: *stream,
                        bound: bound_of(head.min_t, head.max_t),
                        entries: &entries,
                        meta: &meta,
                    },
                );
            }
        }
        if ordered {
            if forward {
                sel.blocks.sort_by_key(|b| b.block.min_t);
            } else {
                sel.blocks.sort_by_key(|b| std::cmp::Reverse(b.block.max_t));
            }
        }
        let heads = sel.heads.len();
        let dir = sel.dir.as_path();
        let blocks = &sel.blocks;
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        // Takes blocks until none is left (or another thread failed).
        let work = |f: &mut BlockVisitor<'_>| -> Result<(), LogsError> {
            let (mut buf, mut raw, mut line_buf) = (Vec::new(), Vec::new(), Vec::new());
            let mut rr = RecordReader::new(dir);
            while !failed.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(b) = blocks.get(i) else { break };
                let r = load_block(&mut rr, b, lines, &mut buf, &mut raw, Some(&mut line_buf)).and_then(|loaded| {
                    let mut entries = Vec::new();
                    let mut meta = Vec::new();
                    decode_batch(
                        &raw,
                        &line_buf,
                        loaded,
                        b.block.first_seq,
                        lines,
                        start,
                        end,
                        &mut entries,
                        &mut meta,
                    )?;
                    Ok(entries.is_empty()
                        || f(
                            heads + i,
                            &BlockBatch {
                                labels: &labels[b.stream],
                                stream: b.stream,
                                bound: bound_of(b.block.min_t, b.block.max_t),
                                entries: &entries,
                                meta: &meta,
                            },
                        ))
                });
                match r {
                    Ok(true) => {}
                    Ok(false) => return Ok(()),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            Ok(())
        };
        if blocks.len() < PARALLEL_BLOCKS || rest.is_empty() {
            return work(&mut **first);
        }
        std::thread::scope(|sc| {
            let work = &work;
            let handles: Vec<_> = rest.iter_mut().map(|f| sc.spawn(move || work(&mut **f))).collect();
            let mine = work(&mut **first);
            // The first error in visitor order; a panicked thread re-raises its panic.
            let mut res = mine;
            for h in handles {
                let r = match h.join() {
                    Ok(r) => r,
                    Err(p) => std::panic::resume_unwind(p),
                };
                if res.is_ok() {
                    res = r;
                }
            }
            res
        })
    }
}
