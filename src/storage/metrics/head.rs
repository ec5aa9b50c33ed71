//! The head: every series registered once (label hash -> ref), samples appended to the series' open
//! chunk, closed chunks moved out of the heap into `chunks_head/` files read back with `pread`.
//!
//! Chunks never straddle a multiple of the block duration, so cutting a block takes whole chunks.
//! The head is rebuilt from the WAL on start (the `chunks_head/` files are scratch space and are
//! wiped at open), which keeps one source of truth for durability.
//!
//! ```text
//! chunks_head/NNNNNNNN: [magic "MRHC"][version u8 = 1][3 zero bytes] then chunk bytes back to back.
//! A chunk is addressed by (segment, offset, len) held in memory only; files never outlive the process
//! in any meaningful way, so no per-chunk framing is needed.
//! ```

use super::block::ChunkMeta;
use super::chunk::{ChunkAppender, FIRST_CHUNK_BYTES, MAX_SAMPLES, SizeHint};
use super::{StorageError, io_err};
use crate::model::{Labels, Matcher};
pub(crate) use crate::storage::label_key::LabelKey;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A head chunk found under the head lock, read after it is released.
pub(crate) enum ChunkLoc {
    Bytes(Vec<u8>),
    File(Arc<File>, u64, u32),
}

impl ChunkLoc {
    pub fn load(self, dir: &Path) -> Result<Vec<u8>, StorageError> {
        match self {
            ChunkLoc::Bytes(b) => Ok(b),
            ChunkLoc::File(f, off, len) => {
                let mut out = vec![0u8; len as usize];
                f.read_exact_at(&mut out, off).map_err(io_err("read head chunk", dir))?;
                Ok(out)
            }
        }
    }
}

const HEAD_CHUNKS_MAGIC: &[u8; 8] = b"MRHC\x01\x00\x00\x00";
/// Head chunk files roll over at this size; a file is deleted once every chunk in it is truncated away.
const HEAD_CHUNK_FILE_SIZE: u64 = 32 << 20;
/// Closed chunks are buffered and written in batches of up to this size: a cut of 6,000 series'
/// ~300-byte chunks is 7 writes, not 6,000. The buffer is resident once it has been filled, so it is
/// kept small (it was 1 MiB), and it is written out before a chunk would overflow it: filled to the
/// brim and then extended, it doubled once, at the first cut of the head's series, and kept the
/// doubled size (the soak's in-use memory stepped ~1.1 MiB at that cut, session 9's runs A1-A3 and
/// B1; README).
const HEAD_CHUNK_WRITE_BUF: usize = 256 << 10;

/// Closed chunks a series' list is created with. A series scraped every 15 s holds at most 3 closed
/// chunks: the head spans up to 1.5 blocks (3 h) before its oldest block is cut, and a chunk ends at
/// 240 samples (1 h) or a block boundary. Reserved when the series is registered, so the list is
/// never reallocated at a cut. Allocated at the first cut instead, 6,100 series × 160 B (~1 MiB)
/// were taken at once whenever that cut came: a series' memory is now taken when it is created.
/// (The soak's +1.1 MiB step at its series' 240-sample cut, which this was first taken for, was the
/// chunk write buffer doubling: see `HEAD_CHUNK_WRITE_BUF`.)
const CLOSED_CHUNKS_RESERVED: usize = 4;

/// Why one sample was not appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendError {
    OutOfOrder,
    Duplicate,
    OutOfBounds,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadChunk {
    pub meta: ChunkMeta,
    pub file: u32,
    pub offset: u32,
    pub len: u32,
}

/// The head's hash index is keyed by a 64-bit FNV hash already: hashing it again with SipHash only
/// costs time.
#[derive(Default)]
pub(crate) struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type IdHashMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdentityHasher>>;

/// Refs sharing one label hash: almost always exactly one, kept inline.
enum HashRefs {
    One(u32),
    Many(Vec<u32>),
}

impl HashRefs {
    fn as_slice(&self) -> &[u32] {
        match self {
            HashRefs::One(r) => std::slice::from_ref(r),
            HashRefs::Many(v) => v,
        }
    }
}

pub(crate) struct MemSeries {
    pub key: LabelKey,
    /// Number of label pairs in `key` (a raw key with a 0xff inside a name or value has more
    /// separators than pairs, so it can never equal a stored key with the same pair count).
    pub pairs: u32,
    pub closed: Vec<HeadChunk>,
    pub open: Option<ChunkAppender>,
    /// The open chunk must be closed before a sample at or after this time (next block boundary).
    open_bound: i64,
    pub min_t: i64,
    pub max_t: i64,
    last_v_bits: u64,
}

impl MemSeries {
    fn new(labels: &Labels) -> Self {
        MemSeries {
            key: LabelKey::new(labels),
            pairs: labels.len() as u32,
            closed: Vec::with_capacity(CLOSED_CHUNKS_RESERVED),
            open: None,
            open_bound: i64::MIN,
            min_t: i64::MAX,
            max_t: i64::MIN,
            last_v_bits: 0,
        }
    }

    pub fn has_data(&self) -> bool {
        self.max_t != i64::MIN
    }

    pub fn labels(&self) -> Labels {
        self.key.to_labels()
    }
}

/// Append-only files holding closed head chunks.
struct ChunkFiles {
    dir: PathBuf,
    /// (file number, open file, bytes written incl. header, max chunk time in it)
    /// Shared with readers, who `pread` outside the head lock: a file truncated away meanwhile stays
    /// readable through their handle.
    files: BTreeMap<u32, (Arc<File>, u64, i64)>,
    current: u32,
    buf: Vec<u8>,
    /// Offset in the current file where `buf` starts.
    buf_start: u64,
}

impl ChunkFiles {
    fn open(dir: &Path) -> Result<Self, StorageError> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io_err("remove", dir))?;
        }
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let mut cf = ChunkFiles {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            current: 0,
            buf: Vec::with_capacity(HEAD_CHUNK_WRITE_BUF),
            buf_start: 0,
        };
        cf.new_file()?;
        Ok(cf)
    }

    fn new_file(&mut self) -> Result<(), StorageError> {
        self.flush()?;
        self.current += 1;
        let path = self.dir.join(format!("{:08}", self.current));
        let mut f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        f.write_all(HEAD_CHUNKS_MAGIC).map_err(io_err("write", &path))?;
        self.files
            .insert(self.current, (Arc::new(f), HEAD_CHUNKS_MAGIC.len() as u64, i64::MIN));
        self.buf_start = HEAD_CHUNKS_MAGIC.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Some((f, _, _)) = self.files.get_mut(&self.current) {
            f.write_all_at(&self.buf, self.buf_start)
                .map_err(io_err("write", &self.dir))?;
        }
        self.buf_start += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn write(&mut self, data: &[u8], max_t: i64) -> Result<(u32, u32, u32), StorageError> {
        let size = self.files.get(&self.current).map_or(0, |f| f.1);
        if size + data.len() as u64 > HEAD_CHUNK_FILE_SIZE {
            self.new_file()?;
        }
        if self.buf.len() + data.len() > HEAD_CHUNK_WRITE_BUF {
            self.flush()?;
        }
        let Some(entry) = self.files.get_mut(&self.current) else {
            return Err(StorageError::BadRecord("head chunk file missing"));
        };
        let offset = entry.1;
        entry.1 += data.len() as u64;
        entry.2 = entry.2.max(max_t);
        self.buf.extend_from_slice(data);
        if self.buf.len() >= HEAD_CHUNK_WRITE_BUF {
            self.flush()?;
        }
        Ok((self.current, offset as u32, data.len() as u32))
    }

    /// Where a chunk's bytes are: copied now if still in the write buffer, else a file handle to read
    /// later without the head lock.
    fn locate(&self, c: &HeadChunk) -> Result<ChunkLoc, StorageError> {
        let off = u64::from(c.offset);
        if c.file == self.current && off >= self.buf_start {
            let s = (off - self.buf_start) as usize;
            let data = self
                .buf
                .get(s..s + c.len as usize)
                .ok_or(StorageError::BadRecord("head chunk out of range"))?;
            return Ok(ChunkLoc::Bytes(data.to_vec()));
        }
        let (f, _, _) = self
            .files
            .get(&c.file)
            .ok_or(StorageError::BadRecord("head chunk file gone"))?;
        Ok(ChunkLoc::File(Arc::clone(f), off, c.len))
    }

    fn read(&self, c: &HeadChunk, out: &mut Vec<u8>) -> Result<(), StorageError> {
        out.clear();
        let off = u64::from(c.offset);
        if c.file == self.current && off >= self.buf_start {
            let s = (off - self.buf_start) as usize;
            let data = self
                .buf
                .get(s..s + c.len as usize)
                .ok_or(StorageError::BadRecord("head chunk out of range"))?;
            out.extend_from_slice(data);
            return Ok(());
        }
        let (f, _, _) = self
            .files
            .get(&c.file)
            .ok_or(StorageError::BadRecord("head chunk file gone"))?;
        out.resize(c.len as usize, 0);
        f.read_exact_at(out, off).map_err(io_err("read", &self.dir))?;
        Ok(())
    }

    /// Deletes files whose chunks all end before `mint` (never the current one).
    fn truncate(&mut self, mint: i64) -> Result<(), StorageError> {
        let dead: Vec<u32> = self
            .files
            .iter()
            .filter(|(n, (_, _, max_t))| **n != self.current && *max_t < mint)
            .map(|(n, _)| *n)
            .collect();
        for n in dead {
            self.files.remove(&n);
            let path = self.dir.join(format!("{n:08}"));
            std::fs::remove_file(&path).map_err(io_err("remove", &path))?;
        }
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        self.files.values().map(|f| f.1).sum()
    }
}

/// The in-memory head. Not synchronised itself: the DB wraps it in one mutex with the WAL, so the
/// order of records in the WAL is the order of appends in the head.
pub(crate) struct Head {
    /// Indexed by ref; boxed so that the slots of removed series cost 8 bytes, not a whole series.
    pub series: Vec<Option<Box<MemSeries>>>,
    /// stable label hash -> refs with that hash (almost always one).
    by_hash: IdHashMap<HashRefs>,
    /// label name -> value -> sorted refs.
    postings: HashMap<String, HashMap<String, Vec<u32>>>,
    chunks: ChunkFiles,
    block_ms: i64,
    pub live_series: usize,
    /// Lowest and highest sample time in the head (i64::MAX / MIN when empty).
    pub min_t: i64,
    pub max_t: i64,
    /// Samples before this are in blocks (or were truncated): appends below it are out of bounds.
    pub min_valid_t: i64,
    pub chunks_created: u64,
    /// Refs are never reused (a WAL segment kept after a checkpoint may still name an old ref).
    next_ref: u32,
}

impl Head {
    pub fn open(dir: &Path, block_ms: i64) -> Result<Head, StorageError> {
        Ok(Head {
            series: Vec::new(),
            by_hash: IdHashMap::default(),
            postings: HashMap::new(),
            chunks: ChunkFiles::open(&dir.join("chunks_head"))?,
            block_ms,
            live_series: 0,
            min_t: i64::MAX,
            max_t: i64::MIN,
            min_valid_t: i64::MIN,
            chunks_created: 0,
            next_ref: 0,
        })
    }

    pub fn next_ref(&self) -> u32 {
        self.next_ref
    }

    /// Notes a ref seen in the WAL so that new series never reuse it.
    pub fn saw_ref(&mut self, r: u32) {
        self.next_ref = self.next_ref.max(r.saturating_add(1));
    }

    /// Finds a series by stable hash and a label comparison.
    pub fn lookup(&self, hash: u64, eq: impl Fn(&MemSeries) -> bool) -> Option<u32> {
        self.by_hash
            .get(&hash)?
            .as_slice()
            .iter()
            .copied()
            .find(|r| self.series[*r as usize].as_ref().is_some_and(|s| eq(s)))
    }

    /// Registers `labels` under `r` (a ref from the WAL or `next_ref`). Idempotent for a live ref.
    pub fn create(&mut self, r: u32, labels: &Labels) -> u32 {
        let idx = r as usize;
        self.saw_ref(r);
        if idx < self.series.len() && self.series[idx].is_some() {
            return r;
        }
        if idx >= self.series.len() {
            self.series.resize_with(idx + 1, || None);
        }
        let hash = labels.stable_hash();
        match self.by_hash.get_mut(&hash) {
            None => {
                self.by_hash.insert(hash, HashRefs::One(r));
            }
            Some(HashRefs::One(other)) => {
                let other = *other;
                self.by_hash.insert(hash, HashRefs::Many(vec![other, r]));
            }
            Some(HashRefs::Many(v)) => v.push(r),
        }
        for l in labels {
            let list = self
                .postings
                .entry(l.name.clone())
                .or_default()
                .entry(l.value.clone())
                .or_default();
            // Refs are mostly created in increasing order; keep the list sorted regardless.
            match list.last() {
                Some(last) if *last > r => {
                    let pos = list.partition_point(|x| *x < r);
                    list.insert(pos, r);
                }
                _ => list.push(r),
            }
        }
        self.series[idx] = Some(Box::new(MemSeries::new(labels)));
        self.live_series += 1;
        r
    }

    /// Checks whether `(t, v)` may be appended to series `r` without changing anything.
    /// `Ok(false)` means an exact duplicate that is silently dropped, as Prometheus does.
    pub fn check(&self, r: u32, t: i64, v: f64) -> Result<bool, AppendError> {
        if t < self.min_valid_t {
            return Err(AppendError::OutOfBounds);
        }
        let Some(s) = self.series.get(r as usize).and_then(|s| s.as_ref()) else {
            return Ok(true);
        };
        if s.has_data() {
            if t < s.max_t {
                return Err(AppendError::OutOfOrder);
            }
            if t == s.max_t {
                return if v.to_bits() == s.last_v_bits {
                    Ok(false)
                } else {
                    Err(AppendError::Duplicate)
                };
            }
        }
        Ok(true)
    }

    /// Appends a sample already accepted by [`Head::check`].
    pub fn append(&mut self, r: u32, t: i64, v: f64) -> Result<(), StorageError> {
        let block_ms = self.block_ms;
        let Some(s) = self.series.get_mut(r as usize).and_then(|s| s.as_mut()) else {
            return Err(StorageError::BadRecord("sample for unknown series"));
        };
        let must_cut = match &s.open {
            Some(c) => c.num_samples() >= MAX_SAMPLES || t >= s.open_bound,
            None => false,
        };
        let spare = if must_cut {
            close_open(s, &mut self.chunks)?
        } else {
            None
        };
        if s.open.is_none() {
            s.open_bound = (t.div_euclid(block_ms) + 1).saturating_mul(block_ms);
            let hint = SizeHint {
                max_span: block_ms,
                max_samples: MAX_SAMPLES,
            };
            // The series' previous chunk tells this one's size (see `SizeHint`), and its buffer is
            // reused: a series' chunk memory is taken once, not again at every cut.
            let bytes = s
                .closed
                .last()
                .and_then(|c| {
                    let m = &c.meta;
                    hint.capacity_from(c.len as usize, m.num_samples as usize, m.min_time, m.max_time)
                })
                .unwrap_or(FIRST_CHUNK_BYTES);
            s.open = Some(match spare {
                Some(buf) => ChunkAppender::recycle(buf, bytes, hint),
                None => ChunkAppender::with_hint(bytes, hint),
            });
            self.chunks_created += 1;
        }
        if let Some(c) = s.open.as_mut() {
            c.append(t, v);
        }
        s.min_t = s.min_t.min(t);
        s.max_t = t;
        s.last_v_bits = v.to_bits();
        self.min_t = self.min_t.min(t);
        self.max_t = self.max_t.max(t);
        Ok(())
    }

    /// Refs of live series matching every matcher (unsorted order not guaranteed: sorted by ref).
    pub fn matching(&self, matchers: &[Matcher]) -> Vec<u32> {
        let mut candidates: Option<Vec<u32>> = None;
        for m in matchers.iter().filter(|m| !m.matches_empty()) {
            let mut ids: Vec<u32> = Vec::new();
            if let Some(values) = self.postings.get(&m.name) {
                if m.op == crate::model::MatchOp::Equal {
                    if let Some(l) = values.get(&m.value) {
                        ids.extend_from_slice(l);
                    }
                } else {
                    for (v, l) in values {
                        if m.matches(v) {
                            ids.extend_from_slice(l);
                        }
                    }
                    ids.sort_unstable();
                    ids.dedup();
                }
            }
            candidates = Some(match candidates {
                None => ids,
                Some(prev) => intersect(&prev, &ids),
            });
            if candidates.as_ref().is_some_and(|c| c.is_empty()) {
                return Vec::new();
            }
        }
        let all = || {
            self.series
                .iter()
                .enumerate()
                .filter(|(_, s)| s.is_some())
                .map(|(i, _)| i as u32)
                .collect()
        };
        let cand: Vec<u32> = candidates.unwrap_or_else(all);
        cand.into_iter()
            .filter(|r| {
                self.series[*r as usize]
                    .as_ref()
                    .is_some_and(|s| matchers.iter().all(|m| m.matches(s.key.get(&m.name).unwrap_or(""))))
            })
            .collect()
    }

    pub fn series(&self, r: u32) -> Option<&MemSeries> {
        self.series.get(r as usize).and_then(|s| s.as_deref())
    }

    /// Locates the chunks of `r` overlapping `[mint, maxt]`: (min_t, max_t, where). The open chunk and
    /// buffered chunks are copied; flushed ones are read later, outside the head lock.
    pub fn locate_chunks(
        &self,
        r: u32,
        mint: i64,
        maxt: i64,
        out: &mut Vec<(i64, i64, ChunkLoc)>,
    ) -> Result<(), StorageError> {
        let Some(s) = self.series.get(r as usize).and_then(|s| s.as_ref()) else {
            return Ok(());
        };
        for c in &s.closed {
            if c.meta.max_time < mint || c.meta.min_time > maxt {
                continue;
            }
            out.push((c.meta.min_time, c.meta.max_time, self.chunks.locate(c)?));
        }
        if let Some(o) = &s.open
            && let (Some(a), Some(b)) = (o.first_time(), o.last_time())
            && b >= mint
            && a <= maxt
        {
            out.push((a, b, ChunkLoc::Bytes(o.bytes().to_vec())));
        }
        Ok(())
    }

    pub fn chunk_dir(&self) -> &Path {
        &self.chunks.dir
    }

    /// Reads a closed head chunk's bytes.
    pub fn read_chunk(&mut self, c: &HeadChunk, out: &mut Vec<u8>) -> Result<(), StorageError> {
        self.chunks.read(c, out)
    }

    /// Closes every open chunk that ends before `before` (series that stopped receiving samples), so
    /// that all data below `before` is in closed chunks.
    pub fn close_chunks_before(&mut self, before: i64) -> Result<(), StorageError> {
        for s in self.series.iter_mut().flatten() {
            if s.open.as_ref().and_then(|o| o.last_time()).is_some_and(|t| t < before) {
                // The series went quiet: its buffer is given back.
                close_open(s, &mut self.chunks)?;
            }
        }
        self.chunks.flush()
    }

    /// Drops all data before `mint` (now in a block), garbage-collects series left empty, and deletes
    /// head chunk files no longer referenced. Returns the number of series removed.
    pub fn truncate(&mut self, mint: i64) -> Result<usize, StorageError> {
        self.min_valid_t = self.min_valid_t.max(mint);
        let mut removed: Vec<u32> = Vec::new();
        let mut new_min = i64::MAX;
        for (i, slot) in self.series.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            s.closed.retain(|c| c.meta.max_time >= mint);
            let open_alive = s.open.as_ref().and_then(|o| o.last_time()).is_some_and(|t| t >= mint);
            if !open_alive {
                s.open = None;
            }
            let first = s
                .closed
                .first()
                .map(|c| c.meta.min_time)
                .or_else(|| s.open.as_ref().and_then(|o| o.first_time()));
            match first {
                Some(f) => {
                    s.min_t = f;
                    new_min = new_min.min(f);
                }
                None => {
                    removed.push(i as u32);
                    *slot = None;
                }
            }
        }
        if !removed.is_empty() {
            self.live_series -= removed.len();
            let dead: std::collections::HashSet<u32> = removed.iter().copied().collect();
            self.by_hash.retain(|_, refs| match refs {
                HashRefs::One(r) => !dead.contains(r),
                HashRefs::Many(v) => {
                    v.retain(|r| !dead.contains(r));
                    !v.is_empty()
                }
            });
            self.postings.retain(|_, values| {
                values.retain(|_, refs| {
                    refs.retain(|r| !dead.contains(r));
                    !refs.is_empty()
                });
                !values.is_empty()
            });
        }
        self.min_t = new_min;
        if new_min == i64::MAX {
            self.max_t = i64::MIN;
        }
        self.chunks.truncate(mint)?;
        Ok(removed.len())
    }

    pub fn chunk_file_bytes(&self) -> u64 {
        self.chunks.disk_bytes()
    }

    /// Bytes of open chunks held in memory.
    pub fn open_chunk_bytes(&self) -> usize {
        self.series
            .iter()
            .flatten()
            .filter_map(|s| s.open.as_ref())
            .map(|o| o.heap_bytes())
            .sum()
    }
}

/// Moves the open chunk of `s` to the chunk files; returns its buffer for the series' next chunk.
fn close_open(s: &mut MemSeries, files: &mut ChunkFiles) -> Result<Option<Vec<u8>>, StorageError> {
    let Some(o) = s.open.take() else { return Ok(None) };
    let (Some(min_time), Some(max_time)) = (o.first_time(), o.last_time()) else {
        return Ok(Some(o.into_buffer()));
    };
    let num_samples = o.num_samples() as u32;
    let (file, offset, len) = files.write(o.bytes(), max_time)?;
    s.closed.push(HeadChunk {
        meta: ChunkMeta {
            min_time,
            max_time,
            num_samples,
        },
        file,
        offset,
        len,
    });
    Ok(Some(o.into_buffer()))
}

pub(crate) fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Series at 15 s through five hours of 2 h blocks, starting mid-block: their chunks are cut at
    /// 240 samples and at block boundaries, and after the first chunk's one growth every chunk of a
    /// series lives in the same buffer (a cut that freed it and took another, of another size, is
    /// what stepped the soak's memory at a block boundary, we think: README, soak).
    #[test]
    fn chunk_buffer_taken_once() {
        let dir = tempfile::TempDir::new().unwrap();
        let block_ms = 7_200_000;
        let mut head = Head::open(dir.path(), block_ms).unwrap();
        type Kind = (&'static str, fn(i64) -> f64);
        let kinds: [Kind; 3] = [
            ("counter", |i| (i * 7 + i % 5) as f64),
            ("gauge", |i| ((i * 7919) % 1000) as f64 / 100.0),
            ("random", |i| {
                ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as f64 / (1u64 << 53) as f64
            }),
        ];
        let refs: Vec<u32> = kinds
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let ls = Labels::from_pairs([("__name__", "m"), ("kind", name)]).unwrap();
                head.create(i as u32, &ls)
            })
            .collect();
        let start = 5 * block_ms + block_ms / 3;
        // (buffer address, capacity) of each series' open chunk, and how often it changed.
        let mut bufs: Vec<((*const u8, usize), usize)> = vec![((std::ptr::null(), 0), 0); refs.len()];
        for i in 0..(5 * 3600 / 15) {
            let t = start + i * 15_000;
            for (r, f) in refs.iter().zip(&kinds) {
                head.append(*r, t, f.1(i)).unwrap();
                let open = head.series(*r).and_then(|s| s.open.as_ref()).unwrap();
                let now = (open.bytes().as_ptr(), open.heap_bytes());
                let (buf, changes) = &mut bufs[*r as usize];
                if *buf != now {
                    *buf = now;
                    *changes += 1;
                }
            }
        }
        for ((name, _), (_, changes)) in kinds.iter().zip(&bufs) {
            // The first buffer, then the first chunk's growth.
            assert!(*changes <= 2, "{name}: the chunk buffer changed {changes} times");
        }
        let cuts = head.series(refs[0]).unwrap().closed.len();
        // Cut at 240 samples, at the boundary 320 samples in, at 560, at the boundary at 800, at
        // 1040; 160 samples left open.
        assert_eq!(cuts, 5, "chunks cut");
    }

    /// Series at 15 s and at 5 s through ten hours of 2 h blocks, with the head truncated as the DB
    /// cuts blocks (oldest block once the head spans 1.5 blocks): the 15 s series' list of closed
    /// chunks is the one it was created with (taken at its first cut instead, it moved once), and
    /// the 5 s series' (~10 chunks per 3 h) grows twice, then stays through the later cuts.
    #[test]
    fn closed_list_taken_once() {
        let dir = tempfile::TempDir::new().unwrap();
        let block_ms = 7_200_000;
        let mut head = Head::open(dir.path(), block_ms).unwrap();
        let cases: [(&str, i64, usize); 2] = [("15s", 15_000, 0), ("5s", 5_000, 2)];
        let refs: Vec<u32> = cases
            .iter()
            .enumerate()
            .map(|(i, (name, _, _))| {
                let ls = Labels::from_pairs([("__name__", "m"), ("every", name)]).unwrap();
                head.create(i as u32, &ls)
            })
            .collect();
        let list = |head: &Head, r: u32| {
            let c = &head.series(r).unwrap().closed;
            (c.as_ptr(), c.capacity())
        };
        let mut seen: Vec<((*const HeadChunk, usize), usize)> = refs.iter().map(|r| (list(&head, *r), 0)).collect();
        let (start, end) = (
            5 * block_ms + block_ms / 3,
            5 * block_ms + block_ms / 3 + 10 * 3_600_000,
        );
        let mut cuts = 0;
        for t in (start..end).step_by(5_000) {
            for (r, (_, every, _)) in refs.iter().zip(&cases) {
                if (t - start) % every == 0 {
                    head.append(*r, t, (t / 1000) as f64).unwrap();
                }
            }
            if head.max_t - head.min_t > block_ms / 2 * 3 {
                let cut_end = head.min_t.div_euclid(block_ms) * block_ms + block_ms;
                head.close_chunks_before(cut_end).unwrap();
                head.truncate(cut_end).unwrap();
                cuts += 1;
            }
            for (r, (now, changes)) in refs.iter().zip(seen.iter_mut()) {
                let l = list(&head, *r);
                if *now != l {
                    *now = l;
                    *changes += 1;
                }
            }
        }
        assert!(cuts >= 4, "{cuts} block cuts");
        for ((name, _, max), (_, changes)) in cases.iter().zip(&seen) {
            assert!(changes <= max, "{name}: the closed list moved {changes} times");
        }
    }

    /// Closed chunks of every size up to the largest a chunk can be, written through the buffer:
    /// what is read back is what was written, and the buffer never grows past its size.
    #[test]
    fn chunk_write_buffer_keeps_its_size() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut files = ChunkFiles::open(dir.path()).unwrap();
        let cap = files.buf.capacity();
        assert_eq!(cap, HEAD_CHUNK_WRITE_BUF);
        let mut written = Vec::new();
        for i in 0..5_000u32 {
            let len = (i * 7919 % 4096 + 1) as usize;
            let data: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j) as u8).collect();
            let (file, offset, len) = files.write(&data, i64::from(i)).unwrap();
            let c = HeadChunk {
                meta: ChunkMeta {
                    min_time: 0,
                    max_time: i64::from(i),
                    num_samples: 1,
                },
                file,
                offset,
                len,
            };
            written.push((c, data));
            assert_eq!(files.buf.capacity(), cap, "after {} chunks", i + 1);
        }
        let mut out = Vec::new();
        for (c, data) in &written {
            files.read(c, &mut out).unwrap();
            assert_eq!(&out, data);
        }
    }
}
