//! Immutable on-disk blocks of the metrics store, after Prometheus TSDB's 2h blocks: a `chunks` file,
//! an `index` (symbols, series, postings) and a `meta.json`. [`BlockWriter`] writes one, [`Block`] reads
//! one, [`compact`] merges several into one, [`cleanup_tmp`] removes what a crash left behind.
//!
//! Owns: the byte layout of `<block>/chunks`, `<block>/index` and `<block>/meta.json`; publishing a
//! block atomically (`<id>.tmp/` → `<id>/`); selecting series of one block by label matchers; merging
//! blocks.
//! Never touches: chunk encoding (chunks are opaque byte strings that come with a [`ChunkMeta`]), the
//! head block and the WAL, retention and deletion of blocks, merging query results across blocks.
//!
//! # Directory
//!
//! ```text
//! <parent>/<ULID>/meta.json  {"ulid","minTime","maxTime","stats":{"numSamples","numSeries","numChunks"},
//!                             "compaction":{"level","sources"},"version":1}; minTime inclusive,
//!                             maxTime exclusive (as Prometheus).
//! <parent>/<ULID>/index      see below
//! <parent>/<ULID>/chunks     see below
//! <parent>/<ULID>.tmp/       a block being written (with a scratch `series.spill`); never opened as a
//!                            block, removed by `cleanup_tmp`.
//! ```
//!
//! Conventions: fixed-width integers are big endian. `uvarint` is unsigned LEB128 (1–10 bytes);
//! `svarint` is zigzag then uvarint. `crc32` is CRC-32/IEEE (crc32fast).
//!
//! # `chunks` file
//!
//! ```text
//! offset 0        4        5          8
//!        ┌────────┬────────┬──────────┐
//!        │ magic  │ version│ reserved │   magic = 0x4D43484B ("MCHK"), version = 1, reserved = 0 0 0
//!        │ u32    │ u8     │ 3 × u8   │
//!        └────────┴────────┴──────────┘
//! offset 8: one record per chunk, back to back, in the order the series were added:
//!        ┌──────────────┬─────────────────┬──────────────────────────────────┐
//!        │ len: uvarint │ data: len bytes │ crc32(len varint ‖ data): u32    │
//!        └──────────────┴─────────────────┴──────────────────────────────────┘
//! ```
//!
//! A [`ChunkRef`] holds the file offset of the record's first byte (the `len` varint) and the data length,
//! so one `pread` of `uvarint_len(len) + len + 4` bytes fetches and verifies a chunk.
//!
//! # `index` file
//!
//! ```text
//! offset 0        4        5          8
//!        ┌────────┬────────┬──────────┐
//!        │ magic  │ version│ reserved │   magic = 0x4D494458 ("MIDX"), version = 1, reserved = 0 0 0
//!        └────────┴────────┴──────────┘
//! then five sections, each laid out as  ┌──────────────────┬──────────────────────┐
//!                                       │ payload          │ crc32(payload): u32  │
//!                                       └──────────────────┴──────────────────────┘
//! in this order:
//!
//! 1. SYMBOLS: every distinct label name and value, sorted bytewise, each once; symbol id = position.
//!        uvarint count, then count × ( uvarint len │ len bytes of UTF-8 )
//!
//! 2. SERIES: one entry per series, sorted by label set; series id = position (0, 1, 2, …).
//!        uvarint entry_len, then entry_len bytes:
//!          uvarint n_labels (≥ 1)
//!          uvarint pair_id of the first label, then (n_labels − 1) × uvarint (pair_id − previous) (≥ 1)
//!          uvarint n_chunks (≥ 1), then per chunk:
//!            svarint min_time − (chunk 0: TOC base_time │ chunk i: max_time of chunk i−1)
//!            uvarint max_time − min_time
//!            uvarint num_samples
//!            uvarint chunk 0: record offset in `chunks` │ chunk i: offset − end of record i−1
//!            uvarint len (data bytes)
//!        A pair_id is the position of a (name, value) pair in the POSTINGS TABLE (sorted by name, then
//!        value), so one small varint names a whole label, and ids grow along a sorted label set.
//!
//! 3. SERIES INDEX: where every stride-th series entry starts.
//!        uvarint num_series, uvarint stride (16),
//!        ceil(num_series / stride) × uvarint (offset of entry k·stride − previous such offset)
//!
//! 4. POSTINGS: one list per (name, value) pair, in POSTINGS TABLE order, back to back:
//!        uvarint count (≥ 1), uvarint first series id, (count − 1) × uvarint (id − previous id) (≥ 1)
//!
//! 5. POSTINGS TABLE: (name, value) → postings list; offsets are implied by the running sum of lengths.
//!        uvarint num_names, then per name (ascending):
//!          uvarint name symbol id, uvarint num_values (≥ 1), then per value (ascending):
//!            uvarint value symbol id (first: absolute, then: − previous, ≥ 1)
//!            uvarint byte length of its postings list
//!
//! TOC, the last 92 bytes (base_time is the block's minTime, the origin of chunk 0's min_time):
//!        ┌─────────────────────────────────────────────────┬────────────┬─────────────────────────┐
//!        │ 5 × ( payload offset: u64 │ payload length: u64 )│ base_time  │ crc32 of the first 88   │
//!        │ in section order 1..5                           │ i64        │ bytes: u32              │
//!        └─────────────────────────────────────────────────┴────────────┴─────────────────────────┘
//! ```
//!
//! # Memory of an open block
//!
//! [`Block::open`] streams the whole index once to verify every CRC, then keeps only the symbol table
//! (one `String` plus a `u32` end offset per symbol), the postings table (8 bytes per (name, value)
//! pair) and every 16th series offset (8 bytes per 16 series). Series entries and postings lists are
//! read on demand with `pread` (through the page cache, which does not count against our RSS).
//! Measured by the `size_report` test (20,000 node-exporter-like series, 8 labels, 2 chunks each;
//! `cargo test size_report -- --nocapture`): 18.7 KB resident per open block (0.93 bytes/series,
//! half of it the sparse series offsets), for an index of 40.4 bytes/series (31.9 series entries,
//! 8.2 postings, 0.3 symbols and tables). A query holds its matching ids (4 bytes each) and a
//! 16 KiB read window while it runs.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::model::{Label, Labels, MatchOp, Matcher};

const CHUNKS_MAGIC: u32 = 0x4D43_484B; // "MCHK"
const INDEX_MAGIC: u32 = 0x4D49_4458; // "MIDX"
const FORMAT_VERSION: u8 = 1;
const META_VERSION: u32 = 1;
const HEADER_LEN: usize = 8;
const CRC_LEN: u64 = 4;
const NUM_SECTIONS: usize = 5;
const TOC_LEN: usize = NUM_SECTIONS * 16 + 8 + 4;
/// Every `SERIES_STRIDE`-th series offset is kept in memory: 0.5 bytes per series, and reaching any
/// series costs skipping at most 15 entries (~480 bytes of an already-read window at the 32 bytes per
/// entry measured by the `size_report` test).
const SERIES_STRIDE: u32 = 16;
/// Window for reading series entries. Big enough that a sequential scan (compaction, wide selects)
/// issues one `pread` per ~500 series (32-byte entries in `size_report`), small enough that looking up
/// one series stays cheap.
const READ_WINDOW: usize = 16 * 1024;
const IO_BUF: usize = 64 * 1024;

const META_FILE: &str = "meta.json";
const INDEX_FILE: &str = "index";
const CHUNKS_FILE: &str = "chunks";
const SPILL_FILE: &str = "series.spill";
const TMP_SUFFIX: &str = ".tmp";

const SEC_SYMBOLS: usize = 0;
const SEC_SERIES: usize = 1;
const SEC_SERIES_INDEX: usize = 2;
const SEC_POSTINGS: usize = 3;
const SEC_TABLE: usize = 4;

/// Why a block could not be written, opened or read.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt block file {}: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    #[error("bad {}: {source}", path.display())]
    Meta {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} has unsupported version {version}", path.display())]
    UnsupportedMetaVersion { version: u32, path: PathBuf },
    #[error("refusing to open {}: an unfinished (.tmp) block", .0.display())]
    Unfinished(PathBuf),
    #[error("invalid block id {0:?}: want 26 Crockford base32 characters")]
    InvalidId(String),
    #[error("invalid block time range [{0}, {1})")]
    InvalidRange(i64, i64),
    #[error("series {labels} added out of order: it must sort after {prev}")]
    OutOfOrder { labels: String, prev: String },
    #[error("invalid series {labels}: {what}")]
    InvalidSeries { labels: String, what: String },
    #[error("block too large: {0}")]
    TooLarge(&'static str),
    #[error("block writer is unusable after an earlier I/O error")]
    WriterFailed,
    #[error("nothing to compact")]
    NothingToCompact,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BlockError + 'a {
    move |source| BlockError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, what: impl Into<String>) -> BlockError {
    BlockError::Corrupt {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// Time range and size of one chunk; the chunk bytes themselves are opaque here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkMeta {
    pub min_time: i64,
    pub max_time: i64,
    pub num_samples: u32,
}

/// Where a chunk lives in its block's `chunks` file: `offset` of the record, `len` of the chunk data.
#[derive(Debug, Clone, Copy)]
pub struct ChunkRef {
    pub meta: ChunkMeta,
    pub offset: u64,
    pub len: u32,
}

/// `meta.json`, with Prometheus's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockMeta {
    pub ulid: String,
    /// Inclusive, milliseconds.
    pub min_time: i64,
    /// Exclusive, milliseconds.
    pub max_time: i64,
    pub stats: BlockStats,
    pub compaction: BlockCompaction,
    pub version: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockStats {
    pub num_samples: u64,
    pub num_series: u64,
    pub num_chunks: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockCompaction {
    pub level: u32,
    pub sources: Vec<String>,
}

// ---------------------------------------------------------------------------------------------------
// Varints and a bounds-checked decoder.

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_svarint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn uvarint_len(mut v: u64) -> u64 {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Bytes a chunk record with `len` data bytes takes in the chunks file.
fn record_len(len: u32) -> u64 {
    uvarint_len(u64::from(len)) + u64::from(len) + CRC_LEN
}

/// A decoding failure; turned into [`BlockError::Corrupt`] with the file's path by the caller.
#[derive(Debug, Clone, Copy)]
struct Bad(&'static str);

struct Dec<'a> {
    b: &'a [u8],
}

impl<'a> Dec<'a> {
    fn new(b: &'a [u8]) -> Self {
        Dec { b }
    }

    fn uvarint(&mut self) -> Result<u64, Bad> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some((&byte, rest)) = self.b.split_first() else {
                return Err(Bad("truncated varint"));
            };
            self.b = rest;
            if i == 9 && byte > 1 {
                return Err(Bad("varint overflows 64 bits"));
            }
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err(Bad("varint longer than 10 bytes"))
    }

    fn u32v(&mut self) -> Result<u32, Bad> {
        u32::try_from(self.uvarint()?).map_err(|_| Bad("value exceeds 32 bits"))
    }

    fn svarint(&mut self) -> Result<i64, Bad> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    fn bytes(&mut self, n: u64) -> Result<&'a [u8], Bad> {
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.b.len())
            .ok_or(Bad("truncated"))?;
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }

    /// A count of items that each take at least one byte: refusing counts above the bytes left keeps
    /// garbage from asking for huge allocations.
    fn count(&mut self) -> Result<usize, Bad> {
        let n = self.uvarint()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.b.len())
            .ok_or(Bad("count exceeds the data"))
    }

    fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn file_header(magic: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&magic.to_be_bytes());
    h[4] = FORMAT_VERSION;
    h
}

fn check_header(b: &[u8], magic: u32) -> Result<(), Bad> {
    if be_u32(b, 0) != Some(magic) {
        return Err(Bad("bad magic number"));
    }
    match b.get(4..HEADER_LEN) {
        Some([FORMAT_VERSION, 0, 0, 0]) => Ok(()),
        Some([FORMAT_VERSION, ..]) => Err(Bad("reserved header bytes are not zero")),
        Some(_) => Err(Bad("unsupported format version")),
        None => Err(Bad("truncated header")),
    }
}

/// Location of one index section's payload (its CRC follows it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Section {
    off: u64,
    len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Toc {
    sections: [Section; NUM_SECTIONS],
    base_time: i64,
}

impl Toc {
    fn encode(&self) -> [u8; TOC_LEN] {
        let mut b = [0u8; TOC_LEN];
        for (i, s) in self.sections.iter().enumerate() {
            b[i * 16..i * 16 + 8].copy_from_slice(&s.off.to_be_bytes());
            b[i * 16 + 8..i * 16 + 16].copy_from_slice(&s.len.to_be_bytes());
        }
        b[NUM_SECTIONS * 16..NUM_SECTIONS * 16 + 8].copy_from_slice(&self.base_time.to_be_bytes());
        let crc = crc32fast::hash(&b[..TOC_LEN - 4]);
        b[TOC_LEN - 4..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Parses the TOC from the last `TOC_LEN` bytes of an index of `file_len` bytes and checks that
    /// every section lies, in order, between the header and the TOC.
    fn decode(b: &[u8], file_len: u64) -> Result<Toc, Bad> {
        let body = b.get(..TOC_LEN - 4).ok_or(Bad("truncated TOC"))?;
        if be_u32(b, TOC_LEN - 4) != Some(crc32fast::hash(body)) {
            return Err(Bad("TOC checksum mismatch"));
        }
        let mut sections = [Section::default(); NUM_SECTIONS];
        let mut prev_end = HEADER_LEN as u64;
        let toc_start = file_len
            .checked_sub(TOC_LEN as u64)
            .ok_or(Bad("file shorter than TOC"))?;
        for (i, s) in sections.iter_mut().enumerate() {
            let off = be_u64(b, i * 16).ok_or(Bad("truncated TOC"))?;
            let len = be_u64(b, i * 16 + 8).ok_or(Bad("truncated TOC"))?;
            let end = off
                .checked_add(len)
                .and_then(|e| e.checked_add(CRC_LEN))
                .ok_or(Bad("section overflows"))?;
            if off < prev_end || end > toc_start {
                return Err(Bad("section outside the file or out of order"));
            }
            prev_end = end;
            *s = Section { off, len };
        }
        let base_time = be_u64(b, NUM_SECTIONS * 16).ok_or(Bad("truncated TOC"))? as i64;
        Ok(Toc { sections, base_time })
    }
}

// ---------------------------------------------------------------------------------------------------
// Block ids.

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fn encode_ulid(v: u128) -> String {
    (0..26)
        .map(|i| char::from(CROCKFORD[((v >> (125 - 5 * i)) & 31) as usize]))
        .collect()
}

fn valid_id(id: &str) -> bool {
    id.len() == 26 && id.bytes().all(|b| CROCKFORD.contains(&b)) && id.as_bytes()[0] <= b'7'
}

/// A ULID-like id: 48 bits of `ms` (so block directories list in time order) and 80 bits of xorshift
/// output seeded from the wall clock, the pid and a process-wide counter (so two blocks created in the
/// same millisecond by the same process still differ).
fn new_block_id(ms: i64) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, AtomicOrdering::Relaxed);
    let mut s = now ^ (u64::from(std::process::id()) << 32) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        // Several rounds so that seeds differing in one bit give unrelated outputs.
        for _ in 0..4 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
        }
        s = if s == 0 { 0x2545_F491_4F6C_DD1D } else { s };
        s
    };
    let random = ((u128::from(next()) << 16) ^ u128::from(next() >> 48)) & ((1u128 << 80) - 1);
    let time = ms.clamp(0, (1i64 << 48) - 1) as u128;
    encode_ulid((time << 80) | random)
}

// ---------------------------------------------------------------------------------------------------
// Writer.

#[derive(Default)]
struct PostingsBuilder {
    /// First id absolute, then deltas, as uvarints: exactly the on-disk list minus its count.
    bytes: Vec<u8>,
    last: u32,
    count: u32,
}

/// Writes one block. Memory while writing: the distinct (name, value) pairs and their delta-encoded
/// postings (~1–2 bytes per label of each series); series entries go to a spill file and chunk bytes
/// straight to the chunks file.
pub struct BlockWriter {
    id: String,
    parent: PathBuf,
    tmp_dir: PathBuf,
    min_time: i64,
    max_time: i64,
    chunks: BufWriter<File>,
    chunks_path: PathBuf,
    chunks_pos: u64,
    spill: BufWriter<File>,
    spill_path: PathBuf,
    /// Label name → provisional name id (insertion order).
    names: HashMap<String, u32>,
    /// (provisional name id, value) → provisional pair id (insertion order).
    pairs: HashMap<(u32, String), u32>,
    postings: Vec<PostingsBuilder>,
    last: Option<Labels>,
    stats: BlockStats,
    failed: bool,
    key: (u32, String),
    pair_scratch: Vec<u32>,
    rec: Vec<u8>,
}

impl BlockWriter {
    /// Starts writing a block into `<parent>/<id>.tmp/` with a fresh id made from `min_time`.
    pub fn create(parent: &Path, min_time: i64, max_time: i64) -> Result<BlockWriter, BlockError> {
        for _ in 0..16 {
            let id = new_block_id(min_time);
            if !parent.join(&id).exists() && !parent.join(format!("{id}{TMP_SUFFIX}")).exists() {
                return Self::create_with_id(parent, &id, min_time, max_time);
            }
        }
        Err(BlockError::Io {
            op: "pick a free block id in",
            path: parent.to_path_buf(),
            source: io::Error::from(io::ErrorKind::AlreadyExists),
        })
    }

    /// Like [`BlockWriter::create`] with a caller-chosen id (fixtures, tests). A leftover
    /// `<id>.tmp/` is replaced; an existing finished `<id>/` makes [`BlockWriter::finish`] fail.
    pub fn create_with_id(parent: &Path, id: &str, min_time: i64, max_time: i64) -> Result<BlockWriter, BlockError> {
        if !valid_id(id) {
            return Err(BlockError::InvalidId(id.to_string()));
        }
        if min_time >= max_time {
            return Err(BlockError::InvalidRange(min_time, max_time));
        }
        fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
        let tmp_dir = parent.join(format!("{id}{TMP_SUFFIX}"));
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir).map_err(io_err("remove stale", &tmp_dir))?;
        }
        fs::create_dir(&tmp_dir).map_err(io_err("create directory", &tmp_dir))?;
        let chunks_path = tmp_dir.join(CHUNKS_FILE);
        let f = File::create(&chunks_path).map_err(io_err("create", &chunks_path))?;
        let mut chunks = BufWriter::with_capacity(IO_BUF, f);
        chunks
            .write_all(&file_header(CHUNKS_MAGIC))
            .map_err(io_err("write", &chunks_path))?;
        let spill_path = tmp_dir.join(SPILL_FILE);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&spill_path)
            .map_err(io_err("create", &spill_path))?;
        Ok(BlockWriter {
            id: id.to_string(),
            parent: parent.to_path_buf(),
            tmp_dir,
            min_time,
            max_time,
            chunks,
            chunks_path,
            chunks_pos: HEADER_LEN as u64,
            spill: BufWriter::with_capacity(IO_BUF, f),
            spill_path,
            names: HashMap::new(),
            pairs: HashMap::new(),
            postings: Vec::new(),
            last: None,
            stats: BlockStats::default(),
            failed: false,
            key: (0, String::new()),
            pair_scratch: Vec::new(),
            rec: Vec::new(),
        })
    }

    /// The id the block will have once finished.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Adds one series. Series must come in strictly increasing label order; chunks sorted by
    /// `min_time` and inside the block's `[min_time, max_time)`. Chunks written by one series should not
    /// overlap; overlap is tolerated because compacting overlapping blocks cannot re-encode opaque
    /// chunks. A series without chunks carries nothing and is skipped.
    pub fn add_series(&mut self, labels: &Labels, chunks: &[(ChunkMeta, &[u8])]) -> Result<(), BlockError> {
        if self.failed {
            return Err(BlockError::WriterFailed);
        }
        self.validate(labels, chunks)?;
        self.last = Some(labels.clone());
        if chunks.is_empty() {
            return Ok(());
        }
        if self.stats.num_series >= u64::from(u32::MAX) {
            return Err(BlockError::TooLarge("more than 2^32-1 series"));
        }
        self.intern(labels)?;
        let r = self.write_series(chunks);
        if r.is_err() {
            // A partial chunk record or spill record may be on disk: nothing after it can be trusted.
            self.failed = true;
        }
        r
    }

    fn validate(&self, labels: &Labels, chunks: &[(ChunkMeta, &[u8])]) -> Result<(), BlockError> {
        let invalid = |what: String| BlockError::InvalidSeries {
            labels: labels.to_string(),
            what,
        };
        if labels.is_empty() {
            return Err(invalid("empty label set".into()));
        }
        if let Some(prev) = &self.last
            && labels <= prev
        {
            return Err(BlockError::OutOfOrder {
                labels: labels.to_string(),
                prev: prev.to_string(),
            });
        }
        let mut prev_min = i64::MIN;
        for (m, data) in chunks {
            if m.min_time > m.max_time {
                return Err(invalid(format!(
                    "chunk min_time {} > max_time {}",
                    m.min_time, m.max_time
                )));
            }
            if m.min_time < self.min_time || m.max_time >= self.max_time {
                return Err(invalid(format!(
                    "chunk [{}, {}] outside block [{}, {})",
                    m.min_time, m.max_time, self.min_time, self.max_time
                )));
            }
            if m.min_time < prev_min {
                return Err(invalid("chunks not sorted by min_time".into()));
            }
            if u32::try_from(data.len()).is_err() {
                return Err(BlockError::TooLarge("chunk longer than 4 GiB"));
            }
            prev_min = m.min_time;
        }
        Ok(())
    }

    /// Maps each label to a provisional pair id (into `pair_scratch`) and appends the series to the
    /// pairs' postings. No I/O, so it cannot leave a half-written state behind.
    fn intern(&mut self, labels: &Labels) -> Result<(), BlockError> {
        let id = u32::try_from(self.stats.num_series).map_err(|_| BlockError::TooLarge("too many series"))?;
        self.pair_scratch.clear();
        for l in labels {
            let name = match self.names.get(l.name.as_str()) {
                Some(&n) => n,
                None => {
                    let n = u32::try_from(self.names.len()).map_err(|_| BlockError::TooLarge("too many names"))?;
                    self.names.insert(l.name.clone(), n);
                    n
                }
            };
            self.key.0 = name;
            self.key.1.clear();
            self.key.1.push_str(&l.value);
            let pair = match self.pairs.get(&self.key) {
                Some(&p) => p,
                None => {
                    let p = u32::try_from(self.postings.len()).map_err(|_| BlockError::TooLarge("too many pairs"))?;
                    self.pairs.insert(self.key.clone(), p);
                    self.postings.push(PostingsBuilder::default());
                    p
                }
            };
            // `pair` indexes `postings`: both grow together just above.
            let pb = &mut self.postings[pair as usize];
            put_uvarint(&mut pb.bytes, u64::from(if pb.count == 0 { id } else { id - pb.last }));
            pb.last = id;
            pb.count += 1;
            self.pair_scratch.push(pair);
        }
        Ok(())
    }

    fn write_series(&mut self, chunks: &[(ChunkMeta, &[u8])]) -> Result<(), BlockError> {
        self.rec.clear();
        put_uvarint(&mut self.rec, self.pair_scratch.len() as u64);
        for &p in &self.pair_scratch {
            put_uvarint(&mut self.rec, u64::from(p));
        }
        put_uvarint(&mut self.rec, chunks.len() as u64);
        let mut lenbuf = Vec::with_capacity(10);
        for (m, data) in chunks {
            let len = data.len() as u32; // checked in validate()
            lenbuf.clear();
            put_uvarint(&mut lenbuf, u64::from(len));
            let mut crc = crc32fast::Hasher::new();
            crc.update(&lenbuf);
            crc.update(data);
            let w = &mut self.chunks;
            (|| {
                w.write_all(&lenbuf)?;
                w.write_all(data)?;
                w.write_all(&crc.finalize().to_be_bytes())
            })()
            .map_err(io_err("write", &self.chunks_path))?;
            put_svarint(&mut self.rec, m.min_time);
            put_svarint(&mut self.rec, m.max_time);
            put_uvarint(&mut self.rec, u64::from(m.num_samples));
            put_uvarint(&mut self.rec, self.chunks_pos);
            put_uvarint(&mut self.rec, u64::from(len));
            self.chunks_pos += record_len(len);
            self.stats.num_chunks += 1;
            self.stats.num_samples += u64::from(m.num_samples);
        }
        self.spill
            .write_all(&self.rec)
            .map_err(io_err("write", &self.spill_path))?;
        self.stats.num_series += 1;
        Ok(())
    }

    /// Writes the index and meta.json, fsyncs files and directories, renames `<id>.tmp` to `<id>` and
    /// returns the meta. Empty `sources` means "this block is its own source" (as Prometheus records a
    /// freshly cut block).
    pub fn finish(mut self, level: u32, sources: Vec<String>) -> Result<BlockMeta, BlockError> {
        if self.failed {
            return Err(BlockError::WriterFailed);
        }
        self.chunks.flush().map_err(io_err("write", &self.chunks_path))?;
        self.chunks
            .get_ref()
            .sync_all()
            .map_err(io_err("fsync", &self.chunks_path))?;
        self.spill.flush().map_err(io_err("write", &self.spill_path))?;
        let mut spill = self.spill.get_ref();
        spill
            .seek(SeekFrom::Start(0))
            .map_err(io_err("seek", &self.spill_path))?;

        // Final order: names by string; pairs by (name, value). Provisional ids are dense 0..len, so
        // indexing the remap tables with them cannot go out of bounds.
        let mut names: Vec<(String, u32)> = std::mem::take(&mut self.names).into_iter().collect();
        names.sort_unstable();
        let mut name_final = vec![0u32; names.len()];
        for (i, (_, prov)) in names.iter().enumerate() {
            name_final[*prov as usize] = i as u32;
        }
        let mut pairs: Vec<(u32, String, u32)> = std::mem::take(&mut self.pairs)
            .into_iter()
            .map(|((name, value), prov)| (name_final[name as usize], value, prov))
            .collect();
        pairs.sort_unstable();
        let mut pair_final = vec![0u32; pairs.len()];
        for (i, p) in pairs.iter().enumerate() {
            pair_final[p.2 as usize] = i as u32;
        }
        let mut symbols: Vec<&str> = names
            .iter()
            .map(|n| n.0.as_str())
            .chain(pairs.iter().map(|p| p.1.as_str()))
            .collect();
        symbols.sort_unstable();
        symbols.dedup();
        // Every name and value was put into `symbols` just above, so the search always hits.
        let sym = |s: &str| symbols.binary_search(&s).unwrap_or_else(|i| i) as u64;

        let index_path = self.tmp_dir.join(INDEX_FILE);
        let f = File::create(&index_path).map_err(io_err("create", &index_path))?;
        let mut w = SectionWriter::new(f);
        let mut buf = Vec::new();
        let ioe = |e| io_err("write", &index_path)(e);
        let mut toc = Toc {
            sections: [Section::default(); NUM_SECTIONS],
            base_time: self.min_time,
        };
        w.raw(&file_header(INDEX_MAGIC)).map_err(ioe)?;

        put_uvarint(&mut buf, symbols.len() as u64);
        for s in &symbols {
            put_uvarint(&mut buf, s.len() as u64);
            buf.extend_from_slice(s.as_bytes());
            w.flush_if_large(&mut buf).map_err(ioe)?;
        }
        w.put(&buf).map_err(ioe)?;
        toc.sections[SEC_SYMBOLS] = w.end_section().map_err(ioe)?;

        let mut reader = BufReader::with_capacity(IO_BUF, spill);
        let mut sparse = Vec::new();
        let mut entry = Vec::new();
        let mut off = 0u64;
        for id in 0..self.stats.num_series {
            if id % u64::from(SERIES_STRIDE) == 0 {
                sparse.push(off);
            }
            entry.clear();
            encode_series(&mut reader, &pair_final, self.min_time, &mut entry)
                .map_err(io_err("read", &self.spill_path))?;
            buf.clear();
            put_uvarint(&mut buf, entry.len() as u64);
            w.put(&buf).map_err(ioe)?;
            w.put(&entry).map_err(ioe)?;
            off += buf.len() as u64 + entry.len() as u64;
        }
        toc.sections[SEC_SERIES] = w.end_section().map_err(ioe)?;

        buf.clear();
        put_uvarint(&mut buf, self.stats.num_series);
        put_uvarint(&mut buf, u64::from(SERIES_STRIDE));
        let mut prev = 0;
        for o in sparse {
            put_uvarint(&mut buf, o - prev);
            prev = o;
        }
        w.put(&buf).map_err(ioe)?;
        toc.sections[SEC_SERIES_INDEX] = w.end_section().map_err(ioe)?;

        let mut list_lens = Vec::with_capacity(pairs.len());
        for p in &pairs {
            let pb = &self.postings[p.2 as usize];
            buf.clear();
            put_uvarint(&mut buf, u64::from(pb.count));
            w.put(&buf).map_err(ioe)?;
            w.put(&pb.bytes).map_err(ioe)?;
            list_lens.push(buf.len() as u64 + pb.bytes.len() as u64);
        }
        toc.sections[SEC_POSTINGS] = w.end_section().map_err(ioe)?;
        if toc.sections[SEC_POSTINGS].len > u64::from(u32::MAX) {
            return Err(BlockError::TooLarge("postings section over 4 GiB"));
        }

        buf.clear();
        put_uvarint(&mut buf, names.len() as u64);
        let mut i = 0;
        for (n, (name, _)) in names.iter().enumerate() {
            let start = i;
            while i < pairs.len() && pairs[i].0 == n as u32 {
                i += 1;
            }
            put_uvarint(&mut buf, sym(name));
            put_uvarint(&mut buf, (i - start) as u64);
            let mut prev = None;
            for (p, len) in pairs[start..i].iter().zip(&list_lens[start..i]) {
                let s = sym(&p.1);
                put_uvarint(&mut buf, prev.map_or(s, |prev| s - prev));
                put_uvarint(&mut buf, *len);
                prev = Some(s);
            }
            w.flush_if_large(&mut buf).map_err(ioe)?;
        }
        w.put(&buf).map_err(ioe)?;
        toc.sections[SEC_TABLE] = w.end_section().map_err(ioe)?;
        w.raw(&toc.encode()).map_err(ioe)?;
        w.finish().map_err(io_err("fsync", &index_path))?;

        let meta = BlockMeta {
            ulid: self.id.clone(),
            min_time: self.min_time,
            max_time: self.max_time,
            stats: self.stats.clone(),
            compaction: BlockCompaction {
                level,
                sources: if sources.is_empty() {
                    vec![self.id.clone()]
                } else {
                    sources
                },
            },
            version: META_VERSION,
        };
        let meta_path = self.tmp_dir.join(META_FILE);
        let json = serde_json::to_vec_pretty(&meta).map_err(|source| BlockError::Meta {
            path: meta_path.clone(),
            source,
        })?;
        let mut f = File::create(&meta_path).map_err(io_err("create", &meta_path))?;
        f.write_all(&json).map_err(io_err("write", &meta_path))?;
        f.sync_all().map_err(io_err("fsync", &meta_path))?;

        drop(reader);
        fs::remove_file(&self.spill_path).map_err(io_err("remove", &self.spill_path))?;
        sync_dir(&self.tmp_dir)?;
        let final_dir = self.parent.join(&self.id);
        if final_dir.exists() {
            return Err(BlockError::Io {
                op: "publish block as",
                path: final_dir,
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            });
        }
        fs::rename(&self.tmp_dir, &final_dir).map_err(io_err("rename to", &final_dir))?;
        sync_dir(&self.parent)?;
        let (series, chunks) = (meta.stats.num_series, meta.stats.num_chunks);
        tracing::debug!(block = %self.id, series, chunks, "block written");
        Ok(meta)
    }
}

fn sync_dir(dir: &Path) -> Result<(), BlockError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

fn read_uvarint(r: &mut impl Read) -> io::Result<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let mut b = [0u8; 1];
        r.read_exact(&mut b)?;
        v |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] < 0x80 {
            return Ok(v);
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "bad varint in spill file"))
}

/// Re-encodes one spill record (provisional pair ids, absolute times and offsets) as a SERIES entry.
fn encode_series(r: &mut impl Read, pair_final: &[u32], base_time: i64, out: &mut Vec<u8>) -> io::Result<()> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "inconsistent spill file");
    let n = read_uvarint(r)?;
    put_uvarint(out, n);
    let mut prev: Option<u32> = None;
    for _ in 0..n {
        let prov = usize::try_from(read_uvarint(r)?).map_err(|_| bad())?;
        let p = *pair_final.get(prov).ok_or_else(bad)?;
        match prev {
            None => put_uvarint(out, u64::from(p)),
            // Labels are sorted by name and pairs by (name, value), so pair ids strictly increase.
            Some(q) if p > q => put_uvarint(out, u64::from(p - q)),
            Some(_) => return Err(bad()),
        }
        prev = Some(p);
    }
    let nc = read_uvarint(r)?;
    put_uvarint(out, nc);
    let mut prev_max = base_time;
    let mut prev_end: Option<u64> = None;
    for _ in 0..nc {
        let unzig = |u: u64| ((u >> 1) as i64) ^ -((u & 1) as i64);
        let min = unzig(read_uvarint(r)?);
        let max = unzig(read_uvarint(r)?);
        let samples = read_uvarint(r)?;
        let offset = read_uvarint(r)?;
        let len = read_uvarint(r)?;
        put_svarint(out, min.wrapping_sub(prev_max));
        put_uvarint(out, max.wrapping_sub(min) as u64);
        put_uvarint(out, samples);
        put_uvarint(out, offset.checked_sub(prev_end.unwrap_or(0)).ok_or_else(bad)?);
        put_uvarint(out, len);
        prev_max = max;
        prev_end = Some(offset + record_len(u32::try_from(len).map_err(|_| bad())?));
    }
    Ok(())
}

/// Writes sections as `payload ‖ crc32(payload)` and tracks offsets.
struct SectionWriter {
    w: BufWriter<File>,
    pos: u64,
    start: u64,
    crc: crc32fast::Hasher,
}

impl SectionWriter {
    fn new(f: File) -> Self {
        SectionWriter {
            w: BufWriter::with_capacity(IO_BUF, f),
            pos: 0,
            start: 0,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// Bytes outside any section (header, TOC).
    fn raw(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.pos += b.len() as u64;
        self.start = self.pos;
        Ok(())
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.crc.update(b);
        self.pos += b.len() as u64;
        Ok(())
    }

    /// Keeps a scratch buffer from growing with the section.
    fn flush_if_large(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        if buf.len() >= IO_BUF {
            self.put(buf)?;
            buf.clear();
        }
        Ok(())
    }

    fn end_section(&mut self) -> io::Result<Section> {
        let crc = std::mem::take(&mut self.crc).finalize();
        let s = Section {
            off: self.start,
            len: self.pos - self.start,
        };
        self.raw(&crc.to_be_bytes())?;
        Ok(s)
    }

    fn finish(mut self) -> io::Result<()> {
        self.w.flush()?;
        self.w.get_ref().sync_all()
    }
}

// ---------------------------------------------------------------------------------------------------
// Reader.

#[derive(Debug, Clone, Copy)]
struct NameEntry {
    sym: u32,
    /// Index of the name's first pair in `Block::pairs`.
    first_pair: u32,
}

#[derive(Debug, Clone, Copy)]
struct PairEntry {
    value_sym: u32,
    /// Offset of the pair's postings list inside the POSTINGS payload; the list ends where the next
    /// pair's begins (or at the end of the payload).
    postings_off: u32,
}

/// An open block. Immutable and `Send + Sync`: every read is a positioned read on a shared `File`.
pub struct Block {
    dir: PathBuf,
    meta: BlockMeta,
    size_bytes: u64,
    index: File,
    index_path: PathBuf,
    chunks: File,
    chunks_path: PathBuf,
    chunks_len: u64,
    series: Section,
    postings: Section,
    base_time: i64,
    /// All symbols concatenated; symbol i is `symbols[sym_ends[i-1]..sym_ends[i]]`.
    symbols: String,
    sym_ends: Vec<u32>,
    names: Vec<NameEntry>,
    pairs: Vec<PairEntry>,
    /// Offset (inside SERIES) of series `k * stride`.
    sparse: Vec<u64>,
    stride: u32,
    num_series: u32,
}

/// One decoded series entry: pair ids and chunk refs.
#[derive(Default)]
struct RawSeries {
    pairs: Vec<u32>,
    chunks: Vec<ChunkRef>,
}

impl Block {
    /// Opens a finished block directory, checking magic numbers, versions and every index CRC.
    /// Returns an error, never panics, on damaged or foreign files.
    pub fn open(dir: &Path) -> Result<Block, BlockError> {
        if dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(TMP_SUFFIX))
        {
            return Err(BlockError::Unfinished(dir.to_path_buf()));
        }
        let meta_path = dir.join(META_FILE);
        let json = fs::read(&meta_path).map_err(io_err("read", &meta_path))?;
        let meta: BlockMeta = serde_json::from_slice(&json).map_err(|source| BlockError::Meta {
            path: meta_path.clone(),
            source,
        })?;
        if meta.version != META_VERSION {
            return Err(BlockError::UnsupportedMetaVersion {
                version: meta.version,
                path: meta_path,
            });
        }

        let chunks_path = dir.join(CHUNKS_FILE);
        let chunks = File::open(&chunks_path).map_err(io_err("open", &chunks_path))?;
        let chunks_len = chunks.metadata().map_err(io_err("stat", &chunks_path))?.len();
        let mut head = [0u8; HEADER_LEN];
        if chunks_len < HEADER_LEN as u64 {
            return Err(corrupt(&chunks_path, "shorter than its header"));
        }
        chunks
            .read_exact_at(&mut head, 0)
            .map_err(io_err("read", &chunks_path))?;
        check_header(&head, CHUNKS_MAGIC).map_err(|Bad(w)| corrupt(&chunks_path, w))?;

        let index_path = dir.join(INDEX_FILE);
        let index = File::open(&index_path).map_err(io_err("open", &index_path))?;
        let index_len = index.metadata().map_err(io_err("stat", &index_path))?.len();
        let bad = |Bad(w)| corrupt(&index_path, w);
        if index_len < (HEADER_LEN + TOC_LEN) as u64 {
            return Err(corrupt(&index_path, "shorter than header and TOC"));
        }
        index.read_exact_at(&mut head, 0).map_err(io_err("read", &index_path))?;
        check_header(&head, INDEX_MAGIC).map_err(bad)?;
        let mut toc_bytes = [0u8; TOC_LEN];
        index
            .read_exact_at(&mut toc_bytes, index_len - TOC_LEN as u64)
            .map_err(io_err("read", &index_path))?;
        let toc = Toc::decode(&toc_bytes, index_len).map_err(bad)?;

        let sym_bytes = read_section(&index, &index_path, toc.sections[SEC_SYMBOLS])?;
        let (symbols, sym_ends) = parse_symbols(&sym_bytes).map_err(bad)?;
        drop(sym_bytes);
        let postings = toc.sections[SEC_POSTINGS];
        let table = read_section(&index, &index_path, toc.sections[SEC_TABLE])?;
        let (names, pairs) = parse_table(&table, sym_ends.len(), postings.len).map_err(bad)?;
        let series = toc.sections[SEC_SERIES];
        let sidx = read_section(&index, &index_path, toc.sections[SEC_SERIES_INDEX])?;
        let (num_series, stride, sparse) = parse_series_index(&sidx, series.len).map_err(bad)?;
        verify_section(&index, &index_path, series)?;
        verify_section(&index, &index_path, postings)?;
        if u64::from(num_series) != meta.stats.num_series {
            return Err(corrupt(
                &index_path,
                format!(
                    "index has {num_series} series, meta.json says {}",
                    meta.stats.num_series
                ),
            ));
        }
        let size_bytes = json.len() as u64 + index_len + chunks_len;
        Ok(Block {
            dir: dir.to_path_buf(),
            meta,
            size_bytes,
            index,
            index_path,
            chunks,
            chunks_path,
            chunks_len,
            series,
            postings,
            base_time: toc.base_time,
            symbols,
            sym_ends,
            names,
            pairs,
            sparse,
            stride,
            num_series,
        })
    }

    pub fn meta(&self) -> &BlockMeta {
        &self.meta
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Total size of the block's files.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub fn num_series(&self) -> u64 {
        u64::from(self.num_series)
    }

    /// Heap bytes this open block keeps resident (symbol table, postings table, sparse series offsets).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Block>()
            + self.symbols.capacity()
            + self.sym_ends.capacity() * 4
            + self.names.capacity() * std::mem::size_of::<NameEntry>()
            + self.pairs.capacity() * std::mem::size_of::<PairEntry>()
            + self.sparse.capacity() * 8
            + self.dir.as_os_str().len()
            + self.index_path.as_os_str().len()
            + self.chunks_path.as_os_str().len()
            + self
                .meta
                .compaction
                .sources
                .iter()
                .map(|s| s.len() + std::mem::size_of::<String>())
                .sum::<usize>()
    }

    /// Series whose labels satisfy all `matchers` and that have a chunk overlapping `[mint, maxt]`
    /// (inclusive), with only the overlapping chunks; sorted by labels.
    pub fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<(Labels, Vec<ChunkRef>)>, BlockError> {
        let mut out = Vec::new();
        if maxt < self.meta.min_time || mint >= self.meta.max_time {
            return Ok(out); // the writer keeps every chunk inside [minTime, maxTime)
        }
        let ids = self.postings_for_matchers(matchers)?;
        let mut rd = SeriesReader::new(self);
        let mut raw = RawSeries::default();
        for id in ids {
            rd.read(id, &mut raw)?;
            let chunks: Vec<ChunkRef> = raw
                .chunks
                .iter()
                .filter(|c| c.meta.min_time <= maxt && c.meta.max_time >= mint)
                .copied()
                .collect();
            if !chunks.is_empty() {
                out.push((self.labels_of(&raw.pairs)?, chunks));
            }
        }
        Ok(out)
    }

    /// Reads one chunk's bytes into `buf` (replacing its content) and verifies the record's CRC.
    pub fn read_chunk(&self, r: &ChunkRef, buf: &mut Vec<u8>) -> Result<(), BlockError> {
        let total = record_len(r.len);
        if r.offset < HEADER_LEN as u64 || r.offset.checked_add(total).is_none_or(|end| end > self.chunks_len) {
            return Err(corrupt(
                &self.chunks_path,
                format!("chunk at {} (+{total}) outside the file", r.offset),
            ));
        }
        let hdr = uvarint_len(u64::from(r.len)) as usize;
        // `total` is at most the file length, which the check above bounds.
        buf.clear();
        buf.resize(total as usize, 0);
        self.chunks
            .read_exact_at(buf, r.offset)
            .map_err(io_err("read", &self.chunks_path))?;
        let data_end = buf.len() - CRC_LEN as usize;
        let stored_len = Dec::new(&buf[..hdr]).uvarint().ok();
        let stored_crc = be_u32(buf, data_end);
        if stored_len != Some(u64::from(r.len)) || stored_crc != Some(crc32fast::hash(&buf[..data_end])) {
            return Err(corrupt(
                &self.chunks_path,
                format!("chunk at {}: length or checksum mismatch", r.offset),
            ));
        }
        buf.truncate(data_end);
        buf.drain(..hdr);
        Ok(())
    }

    /// Sorted, unique label names of the series matching `matchers` (all names when empty).
    pub fn label_names(&self, matchers: &[Matcher]) -> Result<Vec<String>, BlockError> {
        if matchers.is_empty() {
            return Ok(self.names.iter().map(|n| self.symbol(n.sym).to_string()).collect());
        }
        let mut seen = vec![false; self.names.len()];
        let mut rd = SeriesReader::new(self);
        let mut raw = RawSeries::default();
        for id in self.postings_for_matchers(matchers)? {
            rd.read(id, &mut raw)?;
            for &p in &raw.pairs {
                seen[self.name_of_pair(p)?] = true;
            }
        }
        Ok(self
            .names
            .iter()
            .zip(seen)
            .filter(|(_, s)| *s)
            .map(|(n, _)| self.symbol(n.sym).to_string())
            .collect())
    }

    /// Sorted, unique values of label `name` among the series matching `matchers`.
    pub fn label_values(&self, name: &str, matchers: &[Matcher]) -> Result<Vec<String>, BlockError> {
        let Some(k) = self.find_name(name) else {
            return Ok(Vec::new());
        };
        let range = self.pair_range(k);
        let values = |seen: &mut dyn Iterator<Item = (usize, bool)>| -> Vec<String> {
            seen.filter(|(_, s)| *s)
                .map(|(p, _)| self.symbol(self.pairs[p].value_sym).to_string())
                .collect()
        };
        if matchers.is_empty() {
            return Ok(values(&mut range.clone().map(|p| (p, true))));
        }
        let mut seen = vec![false; range.len()];
        let mut rd = SeriesReader::new(self);
        let mut raw = RawSeries::default();
        for id in self.postings_for_matchers(matchers)? {
            rd.read(id, &mut raw)?;
            if let Some(&p) = raw.pairs.iter().find(|&&p| range.contains(&(p as usize))) {
                seen[p as usize - range.start] = true;
            }
        }
        Ok(values(&mut range.zip(seen)))
    }

    // --- symbols and tables -------------------------------------------------------------------------

    /// Symbol ids in the tables were checked against the symbol count at open.
    fn symbol(&self, i: u32) -> &str {
        let i = i as usize;
        let start = if i == 0 {
            0
        } else {
            self.sym_ends.get(i - 1).copied().unwrap_or(0) as usize
        };
        let end = self.sym_ends.get(i).copied().unwrap_or(0) as usize;
        self.symbols.get(start..end).unwrap_or("")
    }

    fn find_name(&self, name: &str) -> Option<usize> {
        self.names.binary_search_by(|n| self.symbol(n.sym).cmp(name)).ok()
    }

    fn pair_range(&self, k: usize) -> std::ops::Range<usize> {
        let start = self.names[k].first_pair as usize;
        let end = self
            .names
            .get(k + 1)
            .map_or(self.pairs.len(), |n| n.first_pair as usize);
        start..end
    }

    fn name_of_pair(&self, p: u32) -> Result<usize, BlockError> {
        // names[0].first_pair == 0 (checked at open), so the partition point is ≥ 1 for any pair id.
        self.names
            .partition_point(|n| n.first_pair <= p)
            .checked_sub(1)
            .ok_or_else(|| corrupt(&self.index_path, "pair id before the first name"))
    }

    fn postings_end(&self, p: usize) -> u64 {
        self.pairs
            .get(p + 1)
            .map_or(self.postings.len, |n| u64::from(n.postings_off))
    }

    fn labels_of(&self, pairs: &[u32]) -> Result<Labels, BlockError> {
        let mut v = Vec::with_capacity(pairs.len());
        for &p in pairs {
            let name = self.names[self.name_of_pair(p)?].sym;
            v.push(Label::new(
                self.symbol(name),
                self.symbol(self.pairs[p as usize].value_sym),
            ));
        }
        Labels::from_sorted(v).map_err(|e| corrupt(&self.index_path, format!("series labels: {e}")))
    }

    // --- postings ---------------------------------------------------------------------------------

    /// Sorted ids of the series satisfying all matchers.
    fn postings_for_matchers(&self, matchers: &[Matcher]) -> Result<Vec<u32>, BlockError> {
        let mut acc: Option<Vec<u32>> = None;
        let mut minus: Vec<Vec<u32>> = Vec::new();
        for m in matchers {
            // A matcher that rejects "" selects the series having a matching value: union of those
            // values' postings. One that accepts "" selects everything except the series having a
            // rejected value. Either way the interesting values are those with matches(v) == positive.
            let positive = !m.matches_empty();
            let selected = self.pairs_where(m, positive);
            let ids = self.union_postings(&selected)?;
            if positive {
                let next = match acc {
                    None => ids,
                    Some(a) => intersect(&a, &ids),
                };
                if next.is_empty() {
                    return Ok(next);
                }
                acc = Some(next);
            } else if !ids.is_empty() {
                minus.push(ids);
            }
        }
        let mut res = acc.unwrap_or_else(|| (0..self.num_series).collect());
        for s in &minus {
            subtract(&mut res, s);
        }
        Ok(res)
    }

    /// Pair ids of `m.name` whose value v has `m.matches(v) == want`.
    fn pairs_where(&self, m: &Matcher, want: bool) -> Vec<usize> {
        let Some(k) = self.find_name(&m.name) else {
            return Vec::new();
        };
        let range = self.pair_range(k);
        match m.op {
            // Only the value itself differs from "" here: binary search instead of a scan.
            MatchOp::Equal | MatchOp::NotEqual if !m.value.is_empty() => {
                let slice = &self.pairs[range.clone()];
                match slice.binary_search_by(|p| self.symbol(p.value_sym).cmp(&m.value)) {
                    Ok(i) => vec![range.start + i],
                    Err(_) => Vec::new(),
                }
            }
            _ => range
                .filter(|&p| m.matches(self.symbol(self.pairs[p].value_sym)) == want)
                .collect(),
        }
    }

    /// Union of the postings of `pairs` (ascending). Lists of consecutive pairs are adjacent on disk,
    /// so each run of consecutive ids is fetched with one `pread`.
    fn union_postings(&self, pairs: &[usize]) -> Result<Vec<u32>, BlockError> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut i = 0;
        let mut lists = 0;
        while i < pairs.len() {
            let mut j = i + 1;
            while j < pairs.len() && pairs[j] == pairs[j - 1] + 1 {
                j += 1;
            }
            let start = u64::from(self.pairs[pairs[i]].postings_off);
            let end = self.postings_end(pairs[j - 1]);
            self.pread_index(self.postings.off + start, end - start, &mut buf)?;
            for &p in &pairs[i..j] {
                let a = (u64::from(self.pairs[p].postings_off) - start) as usize;
                let b = (self.postings_end(p) - start) as usize;
                self.decode_postings(&buf[a..b], &mut out)
                    .map_err(|Bad(w)| corrupt(&self.index_path, w))?;
                lists += 1;
            }
            i = j;
        }
        if lists > 1 {
            // Lists of one name are disjoint (a series has one value per name), but sort+dedup keeps
            // this right even for garbage that passed the CRC.
            out.sort_unstable();
            out.dedup();
        }
        Ok(out)
    }

    fn decode_postings(&self, b: &[u8], out: &mut Vec<u32>) -> Result<(), Bad> {
        let mut d = Dec::new(b);
        let n = d.count()?;
        let mut prev: Option<u32> = None;
        for _ in 0..n {
            let v = d.u32v()?;
            let id = match prev {
                None => v,
                Some(p) if v > 0 => p.checked_add(v).ok_or(Bad("postings overflow"))?,
                Some(_) => return Err(Bad("postings not strictly increasing")),
            };
            if id >= self.num_series {
                return Err(Bad("postings refer to a missing series"));
            }
            out.push(id);
            prev = Some(id);
        }
        if n == 0 || !d.is_empty() {
            return Err(Bad("postings list length mismatch"));
        }
        Ok(())
    }

    fn pread_index(&self, off: u64, len: u64, buf: &mut Vec<u8>) -> Result<(), BlockError> {
        let len = usize::try_from(len).map_err(|_| corrupt(&self.index_path, "read too large"))?;
        buf.clear();
        buf.resize(len, 0);
        self.index
            .read_exact_at(buf, off)
            .map_err(io_err("read", &self.index_path))
    }

    // --- series entries -----------------------------------------------------------------------------

    fn decode_series(&self, b: &[u8], out: &mut RawSeries) -> Result<(), Bad> {
        let mut d = Dec::new(b);
        out.pairs.clear();
        out.chunks.clear();
        let n = d.count()?;
        let mut p = 0u32;
        for i in 0..n {
            let v = d.u32v()?;
            p = if i == 0 {
                v
            } else if v > 0 {
                p.checked_add(v).ok_or(Bad("pair id overflow"))?
            } else {
                return Err(Bad("pair ids not increasing"));
            };
            if p as usize >= self.pairs.len() {
                return Err(Bad("unknown pair id"));
            }
            out.pairs.push(p);
        }
        let nc = d.count()?;
        if n == 0 || nc == 0 {
            return Err(Bad("series without labels or chunks"));
        }
        let mut prev_max = self.base_time;
        let mut prev_end: Option<u64> = None;
        for _ in 0..nc {
            let min_time = prev_max.wrapping_add(d.svarint()?);
            let span = d.uvarint()?;
            let max_time = i64::try_from(i128::from(min_time) + i128::from(span)).map_err(|_| Bad("time overflow"))?;
            let num_samples = d.u32v()?;
            let v = d.uvarint()?;
            let offset = match prev_end {
                None => v,
                Some(e) => e.checked_add(v).ok_or(Bad("offset overflow"))?,
            };
            let len = d.u32v()?;
            prev_end = Some(offset.checked_add(record_len(len)).ok_or(Bad("offset overflow"))?);
            prev_max = max_time;
            out.chunks.push(ChunkRef {
                meta: ChunkMeta {
                    min_time,
                    max_time,
                    num_samples,
                },
                offset,
                len,
            });
        }
        if !d.is_empty() {
            return Err(Bad("trailing bytes in series entry"));
        }
        Ok(())
    }
}

/// Reads series entries through a window of the SERIES section, so that ascending ids (the only order
/// anyone asks for) cost one `pread` per window rather than one per series.
struct SeriesReader<'b> {
    block: &'b Block,
    buf: Vec<u8>,
    /// Offset inside SERIES of `buf[0]`.
    buf_start: u64,
    /// Id and offset of the entry after the last one read.
    next_id: u32,
    next_off: u64,
}

impl<'b> SeriesReader<'b> {
    fn new(block: &'b Block) -> Self {
        SeriesReader {
            block,
            buf: Vec::new(),
            buf_start: 0,
            next_id: 0,
            next_off: 0,
        }
    }

    fn read(&mut self, id: u32, out: &mut RawSeries) -> Result<(), BlockError> {
        let block = self.block;
        let bad = |Bad(w)| corrupt(&block.index_path, w);
        if id >= block.num_series {
            return Err(bad(Bad("series id out of range")));
        }
        let group = id / block.stride;
        if !(self.next_id <= id && self.next_id >= group * block.stride) {
            self.next_id = group * block.stride;
            self.next_off = *block
                .sparse
                .get(group as usize)
                .ok_or(Bad("missing sparse offset"))
                .map_err(bad)?;
        }
        while self.next_id < id {
            let (hdr, len) = self.entry_header(self.next_off)?;
            self.next_off = self.next_off.saturating_add(hdr).saturating_add(len);
            self.next_id += 1;
        }
        let (hdr, len) = self.entry_header(self.next_off)?;
        let start = self.next_off + hdr;
        let bytes = self.window(start, len)?;
        block.decode_series(bytes, out).map_err(bad)?;
        self.next_off = start + len;
        self.next_id += 1;
        Ok(())
    }

    /// Length of the varint and value of an entry's length prefix at `off`.
    fn entry_header(&mut self, off: u64) -> Result<(u64, u64), BlockError> {
        let block = self.block;
        let avail = block.series.len.saturating_sub(off).min(10);
        let b = self.window(off, avail)?;
        let mut d = Dec::new(b);
        let len = d.uvarint().map_err(|Bad(w)| corrupt(&block.index_path, w))?;
        Ok((avail - d.b.len() as u64, len))
    }

    /// `len` bytes at `off` of the SERIES payload, reading a new window when they are not buffered.
    fn window(&mut self, off: u64, len: u64) -> Result<&[u8], BlockError> {
        let sec = self.block.series;
        let end = off.checked_add(len).filter(|&e| e <= sec.len);
        let Some(end) = end else {
            return Err(corrupt(&self.block.index_path, "series entry beyond its section"));
        };
        if off < self.buf_start || end > self.buf_start + self.buf.len() as u64 {
            let want = len.max(READ_WINDOW as u64).min(sec.len - off);
            self.block.pread_index(sec.off + off, want, &mut self.buf)?;
            self.buf_start = off;
        }
        let a = (off - self.buf_start) as usize;
        Ok(&self.buf[a..a + len as usize])
    }
}

fn read_section(f: &File, path: &Path, s: Section) -> Result<Vec<u8>, BlockError> {
    let len = usize::try_from(s.len).map_err(|_| corrupt(path, "section too large"))?;
    let mut buf = vec![0u8; len + CRC_LEN as usize];
    f.read_exact_at(&mut buf, s.off).map_err(io_err("read", path))?;
    let stored = be_u32(&buf, len);
    buf.truncate(len);
    if stored != Some(crc32fast::hash(&buf)) {
        return Err(corrupt(path, format!("section at {} fails its checksum", s.off)));
    }
    Ok(buf)
}

/// Checks a section's CRC without keeping it in memory.
fn verify_section(f: &File, path: &Path, s: Section) -> Result<(), BlockError> {
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; IO_BUF];
    let mut pos = 0u64;
    while pos < s.len {
        let n = (s.len - pos).min(IO_BUF as u64) as usize;
        f.read_exact_at(&mut buf[..n], s.off + pos)
            .map_err(io_err("read", path))?;
        crc.update(&buf[..n]);
        pos += n as u64;
    }
    let mut stored = [0u8; 4];
    f.read_exact_at(&mut stored, s.off + s.len)
        .map_err(io_err("read", path))?;
    if u32::from_be_bytes(stored) != crc.finalize() {
        return Err(corrupt(path, format!("section at {} fails its checksum", s.off)));
    }
    Ok(())
}

fn parse_symbols(b: &[u8]) -> Result<(String, Vec<u32>), Bad> {
    let mut d = Dec::new(b);
    let n = d.count()?;
    let mut symbols = String::with_capacity(b.len());
    let mut ends = Vec::with_capacity(n);
    let mut prev: Option<std::ops::Range<usize>> = None;
    for _ in 0..n {
        let len = d.uvarint()?;
        let s = std::str::from_utf8(d.bytes(len)?).map_err(|_| Bad("symbol is not UTF-8"))?;
        if let Some(r) = &prev
            && symbols.get(r.clone()).is_none_or(|p| p >= s)
        {
            return Err(Bad("symbols not sorted and unique"));
        }
        let start = symbols.len();
        symbols.push_str(s);
        ends.push(u32::try_from(symbols.len()).map_err(|_| Bad("symbol table over 4 GiB"))?);
        prev = Some(start..symbols.len());
    }
    if !d.is_empty() {
        return Err(Bad("trailing bytes after symbols"));
    }
    symbols.shrink_to_fit();
    Ok((symbols, ends))
}

fn parse_table(b: &[u8], num_symbols: usize, postings_len: u64) -> Result<(Vec<NameEntry>, Vec<PairEntry>), Bad> {
    let mut d = Dec::new(b);
    let n = d.count()?;
    let mut names = Vec::with_capacity(n);
    let mut pairs = Vec::new();
    let mut off = 0u64;
    let check_sym = |s: u32| {
        if (s as usize) < num_symbols {
            Ok(s)
        } else {
            Err(Bad("unknown symbol id"))
        }
    };
    for _ in 0..n {
        let sym = check_sym(d.u32v()?)?;
        if names.last().is_some_and(|p: &NameEntry| p.sym >= sym) {
            return Err(Bad("label names not sorted"));
        }
        let first_pair = u32::try_from(pairs.len()).map_err(|_| Bad("too many pairs"))?;
        names.push(NameEntry { sym, first_pair });
        let nv = d.count()?;
        if nv == 0 {
            return Err(Bad("label name without values"));
        }
        let mut value_sym = 0u32;
        for i in 0..nv {
            let v = d.u32v()?;
            value_sym = if i == 0 {
                v
            } else if v > 0 {
                value_sym.checked_add(v).ok_or(Bad("symbol id overflow"))?
            } else {
                return Err(Bad("label values not sorted"));
            };
            check_sym(value_sym)?;
            let postings_off = u32::try_from(off).map_err(|_| Bad("postings offset over 4 GiB"))?;
            pairs.push(PairEntry {
                value_sym,
                postings_off,
            });
            let len = d.uvarint()?;
            if len == 0 {
                return Err(Bad("empty postings list"));
            }
            off = off.checked_add(len).ok_or(Bad("postings length overflow"))?;
        }
    }
    if !d.is_empty() || off != postings_len {
        return Err(Bad("postings table does not cover the postings section"));
    }
    Ok((names, pairs))
}

fn parse_series_index(b: &[u8], series_len: u64) -> Result<(u32, u32, Vec<u64>), Bad> {
    let mut d = Dec::new(b);
    let num_series = d.u32v()?;
    let stride = d.u32v()?;
    if stride == 0 {
        return Err(Bad("zero series stride"));
    }
    let groups = num_series.div_ceil(stride) as usize;
    if groups > b.len() {
        return Err(Bad("series index shorter than its series count"));
    }
    let mut sparse = Vec::with_capacity(groups);
    let mut off = 0u64;
    for i in 0..groups {
        let v = d.uvarint()?;
        if (i == 0 && v != 0) || (i > 0 && v == 0) {
            return Err(Bad("series offsets not increasing"));
        }
        off = off.checked_add(v).ok_or(Bad("series offset overflow"))?;
        if off >= series_len {
            return Err(Bad("series offset beyond the series section"));
        }
        sparse.push(off);
    }
    if !d.is_empty() || (num_series == 0 && series_len != 0) {
        return Err(Bad("series index does not match the series section"));
    }
    Ok((num_series, stride, sparse))
}

fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            Ordering::Less => i += 1,
            Ordering::Greater => j += 1,
            Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// Removes from sorted `a` every element of sorted `b`.
fn subtract(a: &mut Vec<u32>, b: &[u32]) {
    let mut j = 0;
    a.retain(|&x| {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        !(j < b.len() && b[j] == x)
    });
}

// ---------------------------------------------------------------------------------------------------
// Compaction and cleanup.

/// One input of a compaction: the current series of a block, read in id (= label) order.
struct MergeCursor<'b> {
    block: &'b Block,
    reader: SeriesReader<'b>,
    next: u32,
    labels: Option<Labels>,
    raw: RawSeries,
}

impl<'b> MergeCursor<'b> {
    fn advance(&mut self) -> Result<(), BlockError> {
        if self.next >= self.block.num_series {
            self.labels = None;
            return Ok(());
        }
        self.reader.read(self.next, &mut self.raw)?;
        self.labels = Some(self.block.labels_of(&self.raw.pairs)?);
        self.next += 1;
        Ok(())
    }
}

/// Merges blocks into one new block under `parent` with level `max(level) + 1` and the union of the
/// sources. Time ranges may touch or overlap; a series' chunks are kept in time order and a chunk
/// identical (meta and bytes) to one already kept is dropped. Streams series in label order through a
/// k-way merge, holding one series' chunks at a time.
pub fn compact(blocks: &[&Block], parent: &Path) -> Result<BlockMeta, BlockError> {
    let (Some(min_time), Some(max_time), Some(level)) = (
        blocks.iter().map(|b| b.meta.min_time).min(),
        blocks.iter().map(|b| b.meta.max_time).max(),
        blocks.iter().map(|b| b.meta.compaction.level).max(),
    ) else {
        return Err(BlockError::NothingToCompact);
    };
    let mut sources = BTreeSet::new();
    for b in blocks {
        if b.meta.compaction.sources.is_empty() {
            sources.insert(b.meta.ulid.clone());
        }
        sources.extend(b.meta.compaction.sources.iter().cloned());
    }
    let mut w = BlockWriter::create(parent, min_time, max_time)?;
    let tmp_dir = w.tmp_dir.clone();
    let meta = match merge_series(blocks, &mut w)
        .and_then(|()| w.finish(level.saturating_add(1), sources.into_iter().collect()))
    {
        Ok(m) => m,
        Err(e) => {
            // Unlike a crash, a failed merge can clean up after itself right away.
            if let Err(rm) = fs::remove_dir_all(&tmp_dir) {
                tracing::warn!(dir = %tmp_dir.display(), error = %rm, "could not remove unfinished block");
            }
            return Err(e);
        }
    };
    tracing::info!(
        block = %meta.ulid,
        inputs = blocks.len(),
        series = meta.stats.num_series,
        level = meta.compaction.level,
        "compacted blocks"
    );
    Ok(meta)
}

/// The k-way merge of [`compact`]: adds every series of `blocks`, in label order, to `w`.
fn merge_series(blocks: &[&Block], w: &mut BlockWriter) -> Result<(), BlockError> {
    let mut cursors = Vec::with_capacity(blocks.len());
    for b in blocks {
        let mut c = MergeCursor {
            block: b,
            reader: SeriesReader::new(b),
            next: 0,
            labels: None,
            raw: RawSeries::default(),
        };
        c.advance()?;
        cursors.push(c);
    }
    // (meta, cursor, ref) of the current series' chunks, and one data buffer per chunk, reused.
    let mut cand: Vec<(ChunkMeta, usize, ChunkRef)> = Vec::new();
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    let mut kept: Vec<(ChunkMeta, usize)> = Vec::new();
    while let Some(min) = cursors.iter().filter_map(|c| c.labels.as_ref()).min().cloned() {
        cand.clear();
        for (ci, c) in cursors.iter_mut().enumerate() {
            if c.labels.as_ref() == Some(&min) {
                cand.extend(c.raw.chunks.iter().map(|r| (r.meta, ci, *r)));
                c.advance()?;
            }
        }
        cand.sort_by_key(|c| (c.0.min_time, c.0.max_time)); // stable: ties keep block order
        kept.clear();
        for (i, (meta, ci, r)) in cand.iter().enumerate() {
            if bufs.len() <= i {
                bufs.push(Vec::new());
            }
            blocks[*ci].read_chunk(r, &mut bufs[i])?;
            if !kept.iter().any(|&(m, j)| m == *meta && bufs[j] == bufs[i]) {
                kept.push((*meta, i));
            }
        }
        let refs: Vec<(ChunkMeta, &[u8])> = kept.iter().map(|&(m, j)| (m, bufs[j].as_slice())).collect();
        w.add_series(&min, &refs)?;
    }
    Ok(())
}

/// Removes `<parent>/*.tmp` leftovers of writes interrupted by a crash. A missing `parent` is fine.
pub fn cleanup_tmp(parent: &Path) -> Result<(), BlockError> {
    let entries = match fs::read_dir(parent) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list", parent)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("list", parent))?;
        if !entry.file_name().to_str().is_some_and(|n| n.ends_with(TMP_SUFFIX)) {
            continue;
        }
        let path = entry.path();
        let is_dir = entry.file_type().map_err(io_err("stat", &path))?.is_dir();
        if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        }
        .map_err(io_err("remove", &path))?;
        tracing::info!(path = %path.display(), "removed unfinished block");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// xorshift64: deterministic, dependency-free test randomness.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Rng {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
        fn pick<'a, T>(&mut self, s: &'a [T]) -> &'a T {
            &s[self.below(s.len() as u64) as usize]
        }
        fn bytes(&mut self, max_len: u64) -> Vec<u8> {
            (0..self.below(max_len + 1)).map(|_| self.next() as u8).collect()
        }
    }

    #[derive(Debug, Clone, PartialEq)]
    struct Series {
        labels: Labels,
        chunks: Vec<(ChunkMeta, Vec<u8>)>,
    }

    /// What a select returns, with chunk bytes read back: comparable with the model.
    type Selected = Vec<(Labels, Vec<(ChunkMeta, Vec<u8>)>)>;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied()).unwrap()
    }

    fn meta(min_time: i64, max_time: i64, num_samples: u32) -> ChunkMeta {
        ChunkMeta {
            min_time,
            max_time,
            num_samples,
        }
    }

    fn add(w: &mut BlockWriter, s: &Series) -> Result<(), BlockError> {
        let refs: Vec<(ChunkMeta, &[u8])> = s.chunks.iter().map(|(m, b)| (*m, b.as_slice())).collect();
        w.add_series(&s.labels, &refs)
    }

    fn write_block(parent: &Path, range: (i64, i64), series: &[Series], level: u32, sources: Vec<String>) -> Block {
        let mut w = BlockWriter::create(parent, range.0, range.1).unwrap();
        for s in series {
            add(&mut w, s).unwrap();
        }
        let meta = w.finish(level, sources).unwrap();
        Block::open(&parent.join(&meta.ulid)).unwrap()
    }

    fn block_select(b: &Block, ms: &[Matcher], mint: i64, maxt: i64) -> Selected {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for (l, refs) in b.select(ms, mint, maxt).unwrap() {
            let mut chunks = Vec::new();
            for r in refs {
                b.read_chunk(&r, &mut buf).unwrap();
                chunks.push((r.meta, buf.clone()));
            }
            out.push((l, chunks));
        }
        out
    }

    fn model_matching<'a>(model: &'a [Series], ms: &'a [Matcher]) -> impl Iterator<Item = &'a Series> + 'a {
        model
            .iter()
            .filter(move |s| ms.iter().all(|m| m.matches(s.labels.get_or_empty(&m.name))))
    }

    fn model_select(model: &[Series], ms: &[Matcher], mint: i64, maxt: i64) -> Selected {
        model_matching(model, ms)
            .map(|s| {
                let chunks: Vec<_> = s
                    .chunks
                    .iter()
                    .filter(|(m, _)| m.min_time <= maxt && m.max_time >= mint)
                    .cloned()
                    .collect();
                (s.labels.clone(), chunks)
            })
            .filter(|(_, c)| !c.is_empty())
            .collect()
    }

    fn model_names(model: &[Series], ms: &[Matcher]) -> Vec<String> {
        let set: BTreeSet<String> = model_matching(model, ms)
            .flat_map(|s| s.labels.iter().map(|l| l.name.clone()))
            .collect();
        set.into_iter().collect()
    }

    fn model_values(model: &[Series], name: &str, ms: &[Matcher]) -> Vec<String> {
        let set: BTreeSet<String> = model_matching(model, ms)
            .filter_map(|s| s.labels.get(name).map(String::from))
            .collect();
        set.into_iter().collect()
    }

    /// Compares select, label_names and label_values of `b` with the in-memory model.
    fn check_model(b: &Block, model: &[Series], ms: &[Matcher], range: (i64, i64), value_name: &str) {
        let (mint, maxt) = range;
        assert_eq!(
            block_select(b, ms, mint, maxt),
            model_select(model, ms, mint, maxt),
            "select {ms:?} [{mint}, {maxt}]"
        );
        assert_eq!(b.label_names(ms).unwrap(), model_names(model, ms), "label_names {ms:?}");
        assert_eq!(
            b.label_values(value_name, ms).unwrap(),
            model_values(model, value_name, ms),
            "label_values({value_name}) {ms:?}"
        );
    }

    const VOCAB: &[(&str, &[&str], u64)] = &[
        (
            "__name__",
            &["up", "http_requests_total", "node_cpu_seconds_total", "go_goroutines"],
            100,
        ),
        ("env", &["prod", "dev", "prod-eu"], 50),
        ("instance", &["h0", "h1", "h2", "h3", "h4", "h5", "h6", "h7"], 90),
        ("job", &["api", "db", "web"], 80),
        ("le", &["0.1", "1", "+Inf"], 30),
    ];
    const MATCH_NAMES: &[&str] = &["__name__", "env", "instance", "job", "le", "absent"];
    const PATTERNS: &[&str] = &[
        "",
        ".*",
        ".+",
        "h[0-3]",
        "api|db",
        "prod.*",
        "dev|",
        "x?",
        "(?i)UP",
        "h1",
        "up",
        "zzz",
        r"0\.1|\+Inf",
    ];
    const OPS: &[MatchOp] = &[MatchOp::Equal, MatchOp::NotEqual, MatchOp::Regex, MatchOp::NotRegex];

    fn gen_labels(rng: &mut Rng) -> Labels {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for (n, vals, percent) in VOCAB {
            if rng.chance(*percent) {
                pairs.push((*n, *rng.pick(vals)));
            }
        }
        labels(&pairs)
    }

    fn gen_label_sets(rng: &mut Rng, n: usize) -> Vec<Labels> {
        let mut set = BTreeSet::new();
        while set.len() < n {
            set.insert(gen_labels(rng));
        }
        set.into_iter().collect()
    }

    /// 1–5 chunks in time order inside [min, max).
    fn gen_chunks(rng: &mut Rng, min: i64, max: i64) -> Vec<(ChunkMeta, Vec<u8>)> {
        let span = (max - min) as u64;
        let mut t = min + rng.below(span / 4) as i64;
        let mut out = Vec::new();
        for _ in 0..1 + rng.below(5) {
            let end = t + rng.below(span / 8) as i64;
            if end >= max {
                break;
            }
            out.push((meta(t, end, 1 + rng.below(200) as u32), rng.bytes(48)));
            t = end + 1 + rng.below(span / 16) as i64;
        }
        if out.is_empty() {
            out.push((meta(min, min, 1), rng.bytes(48)));
        }
        out
    }

    fn gen_matcher(rng: &mut Rng) -> Matcher {
        let name = *rng.pick(MATCH_NAMES);
        let op = *rng.pick(OPS);
        let value = if rng.chance(50) {
            let vals = VOCAB.iter().find(|v| v.0 == name).map_or(&["x"][..], |v| v.1);
            let v = *rng.pick(vals);
            if matches!(op, MatchOp::Regex | MatchOp::NotRegex) {
                regex::escape(v)
            } else {
                v.to_string()
            }
        } else {
            rng.pick(PATTERNS).to_string()
        };
        Matcher::new(op, name, value).unwrap()
    }

    fn gen_range(rng: &mut Rng, min: i64, max: i64) -> (i64, i64) {
        if rng.chance(20) {
            return (i64::MIN, i64::MAX);
        }
        let span = (max - min) as u64;
        let mint = min - 500 + rng.below(span + 1000) as i64;
        (mint, mint - 200 + rng.below(span / 2) as i64)
    }

    #[test]
    fn select_matches_model() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(1);
        let range = (0, 10_000);
        let model: Vec<Series> = gen_label_sets(&mut rng, 200)
            .into_iter()
            .map(|labels| Series {
                labels,
                chunks: gen_chunks(&mut rng, range.0, range.1),
            })
            .collect();
        let b = write_block(dir.path(), range, &model, 1, vec![]);
        assert_eq!(b.num_series(), 200);
        assert_eq!(
            b.meta().stats.num_chunks,
            model.iter().map(|s| s.chunks.len() as u64).sum::<u64>()
        );
        for _ in 0..300 {
            let ms: Vec<Matcher> = (0..rng.below(4)).map(|_| gen_matcher(&mut rng)).collect();
            let r = gen_range(&mut rng, range.0, range.1);
            let value_name = *rng.pick(MATCH_NAMES);
            check_model(&b, &model, &ms, r, value_name);
        }
    }

    /// A hand-made block for table tests; series in label order.
    fn tiny_model() -> Vec<Series> {
        let s = |l: &[(&str, &str)], c: &[(i64, i64)]| Series {
            labels: labels(l),
            chunks: c
                .iter()
                .map(|&(a, b)| (meta(a, b, 10), format!("{a}-{b}").into_bytes()))
                .collect(),
        };
        vec![
            s(
                &[("__name__", "cpu"), ("job", "api"), ("mode", "idle")],
                &[(0, 99), (100, 199), (200, 299)],
            ),
            s(&[("__name__", "cpu"), ("mode", "user")], &[(50, 150)]),
            s(&[("__name__", "up"), ("instance", "a"), ("job", "api")], &[(150, 250)]),
            s(&[("__name__", "up"), ("job", "db")], &[(300, 399)]),
        ]
    }

    fn matchers(ms: &[(&str, MatchOp, &str)]) -> Vec<Matcher> {
        ms.iter().map(|(n, op, v)| Matcher::new(*op, *n, *v).unwrap()).collect()
    }

    fn check_select(b: &Block, ms: &[(&str, MatchOp, &str)], want: &[&str]) {
        let ms = matchers(ms);
        let got: Vec<String> = b
            .select(&ms, i64::MIN, i64::MAX)
            .unwrap()
            .iter()
            .map(|(l, _)| l.to_string())
            .collect();
        assert_eq!(got, want, "{ms:?}");
    }

    #[test]
    fn select_by_matcher_type() {
        use MatchOp::*;
        let dir = tempfile::tempdir().unwrap();
        let b = write_block(dir.path(), (0, 1000), &tiny_model(), 1, vec![]);
        let cpu_api = r#"{__name__="cpu", job="api", mode="idle"}"#;
        let cpu_user = r#"{__name__="cpu", mode="user"}"#;
        let up_a = r#"{__name__="up", instance="a", job="api"}"#;
        let up_db = r#"{__name__="up", job="db"}"#;
        check_select(&b, &[], &[cpu_api, cpu_user, up_a, up_db]);
        check_select(&b, &[("job", Equal, "api")], &[cpu_api, up_a]);
        check_select(&b, &[("job", NotEqual, "api")], &[cpu_user, up_db]);
        check_select(&b, &[("job", Regex, "a.*|d.*")], &[cpu_api, up_a, up_db]);
        check_select(&b, &[("job", NotRegex, "api")], &[cpu_user, up_db]);
        check_select(&b, &[("job", Regex, "api|")], &[cpu_api, cpu_user, up_a]);
        check_select(&b, &[("mode", Equal, "")], &[up_a, up_db]);
        check_select(&b, &[("mode", NotEqual, "")], &[cpu_api, cpu_user]);
        check_select(&b, &[("mode", Regex, ".+")], &[cpu_api, cpu_user]);
        check_select(&b, &[("nope", Equal, "")], &[cpu_api, cpu_user, up_a, up_db]);
        check_select(&b, &[("nope", Equal, "x")], &[]);
        check_select(&b, &[("nope", NotRegex, ".+")], &[cpu_api, cpu_user, up_a, up_db]);
        check_select(&b, &[("__name__", Equal, "up"), ("job", NotRegex, "d.*")], &[up_a]);
        check_select(
            &b,
            &[("__name__", Regex, ".+"), ("instance", Regex, "")],
            &[cpu_api, cpu_user, up_db],
        );
        check_select(&b, &[("job", Regex, "api"), ("mode", Regex, "idle|user")], &[cpu_api]);
        check_select(&b, &[("job", Equal, "zzz")], &[]);
    }

    fn check_times(b: &Block, mint: i64, maxt: i64, want: &[(&str, &[i64])]) {
        let got: Vec<(String, Vec<i64>)> = b
            .select(&[], mint, maxt)
            .unwrap()
            .iter()
            .map(|(l, c)| (l.to_string(), c.iter().map(|r| r.meta.min_time).collect()))
            .collect();
        let want: Vec<(String, Vec<i64>)> = want.iter().map(|(l, t)| (l.to_string(), t.to_vec())).collect();
        assert_eq!(got, want, "[{mint}, {maxt}]");
    }

    #[test]
    fn select_filters_chunks_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let b = write_block(dir.path(), (0, 1000), &tiny_model(), 1, vec![]);
        let cpu_api = r#"{__name__="cpu", job="api", mode="idle"}"#;
        let cpu_user = r#"{__name__="cpu", mode="user"}"#;
        let up_a = r#"{__name__="up", instance="a", job="api"}"#;
        let up_db = r#"{__name__="up", job="db"}"#;
        check_times(&b, 0, 0, &[(cpu_api, &[0])]);
        check_times(&b, 99, 100, &[(cpu_api, &[0, 100]), (cpu_user, &[50])]);
        check_times(&b, 151, 199, &[(cpu_api, &[100]), (up_a, &[150])]);
        check_times(&b, 260, 300, &[(cpu_api, &[200]), (up_db, &[300])]);
        check_times(&b, 400, 999, &[]);
        check_times(&b, 1000, 2000, &[]);
        check_times(&b, -10, -1, &[]);
    }

    fn check_labels(b: &Block, name: Option<&str>, ms: &[(&str, MatchOp, &str)], want: &[&str]) {
        let ms = matchers(ms);
        let got = match name {
            None => b.label_names(&ms).unwrap(),
            Some(n) => b.label_values(n, &ms).unwrap(),
        };
        assert_eq!(got, want, "{name:?} {ms:?}");
    }

    #[test]
    fn label_names_and_values() {
        use MatchOp::*;
        let dir = tempfile::tempdir().unwrap();
        let b = write_block(dir.path(), (0, 1000), &tiny_model(), 1, vec![]);
        check_labels(&b, None, &[], &["__name__", "instance", "job", "mode"]);
        check_labels(&b, None, &[("job", Equal, "db")], &["__name__", "job"]);
        check_labels(&b, None, &[("job", Equal, "zzz")], &[]);
        check_labels(&b, Some("job"), &[], &["api", "db"]);
        check_labels(&b, Some("job"), &[("__name__", Equal, "cpu")], &["api"]);
        check_labels(
            &b,
            Some("mode"),
            &[("__name__", Equal, "cpu"), ("job", Equal, "")],
            &["user"],
        );
        check_labels(&b, Some("nope"), &[], &[]);
        check_labels(&b, Some("__name__"), &[("mode", Regex, ".*")], &["cpu", "up"]);
    }

    fn check_add(prev: Option<&[(&str, &str)]>, l: &[(&str, &str)], chunks: &[(i64, i64)], want: Result<(), &str>) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlockWriter::create(dir.path(), 0, 1000).unwrap();
        if let Some(p) = prev {
            w.add_series(&labels(p), &[(meta(0, 1, 1), b"p".as_slice())]).unwrap();
        }
        let lbl = Labels::from_pairs(l.iter().copied()).unwrap();
        let refs: Vec<(ChunkMeta, &[u8])> = chunks.iter().map(|&(a, b)| (meta(a, b, 1), b"x".as_slice())).collect();
        let got = w.add_series(&lbl, &refs).map_err(|e| format!("{e:?}"));
        match (got, want) {
            (Ok(()), Ok(())) => {}
            (Err(g), Err(w)) if g.starts_with(w) => {}
            (g, w) => panic!("{l:?} {chunks:?} after {prev:?}: got {g:?}, want {w:?}"),
        }
    }

    #[test]
    fn add_series_validation() {
        let a: &[(&str, &str)] = &[("__name__", "a")];
        let b: &[(&str, &str)] = &[("__name__", "b")];
        check_add(None, a, &[(0, 10), (11, 20)], Ok(()));
        check_add(Some(a), b, &[(0, 10)], Ok(()));
        check_add(Some(b), a, &[(0, 10)], Err("OutOfOrder"));
        check_add(Some(a), a, &[(0, 10)], Err("OutOfOrder"));
        check_add(None, &[], &[(0, 10)], Err("InvalidSeries"));
        check_add(None, a, &[(10, 9)], Err("InvalidSeries"));
        check_add(None, a, &[(-1, 9)], Err("InvalidSeries"));
        check_add(None, a, &[(0, 1000)], Err("InvalidSeries"));
        check_add(None, a, &[(0, 999)], Ok(()));
        check_add(None, a, &[(20, 30), (10, 15)], Err("InvalidSeries"));
        check_add(None, a, &[(10, 30), (10, 15)], Ok(())); // overlap is tolerated, order by min_time is not
        check_add(None, a, &[], Ok(()));
    }

    #[test]
    fn series_without_chunks_and_empty_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlockWriter::create(dir.path(), 0, 100).unwrap();
        w.add_series(&labels(&[("a", "1")]), &[]).unwrap();
        let m = w.finish(1, vec![]).unwrap();
        assert_eq!(m.stats, BlockStats::default());
        let b = Block::open(&dir.path().join(&m.ulid)).unwrap();
        assert_eq!(b.num_series(), 0);
        assert!(b.select(&[], i64::MIN, i64::MAX).unwrap().is_empty());
        assert!(b.label_names(&[]).unwrap().is_empty());
        assert!(b.label_values("a", &[Matcher::eq("a", "1")]).unwrap().is_empty());
    }

    #[test]
    fn compact_matches_model() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(7);
        let pool = gen_label_sets(&mut rng, 80);
        let ranges = [(0, 1000), (1000, 2000), (1500, 2500)];
        let mut inputs: Vec<Vec<Series>> = Vec::new();
        for &(min, max) in &ranges {
            let mut series = Vec::new();
            for l in &pool {
                if rng.chance(60) {
                    series.push(Series {
                        labels: l.clone(),
                        chunks: gen_chunks(&mut rng, min, max),
                    });
                }
            }
            inputs.push(series);
        }
        // Copy some chunks of the second block that fall inside the third block's range into it, and
        // add chunks starting at the same time but ending earlier (they must sort first).
        let (mut dups, mut ties) = (0, 0);
        let (first_two, third) = inputs.split_at_mut(2);
        for s in third[0].iter_mut() {
            if let Some(src) = first_two[1].iter().find(|b| b.labels == s.labels)
                && let Some(c) = src.chunks.iter().find(|(m, _)| m.min_time >= 1500)
            {
                if rng.chance(70) {
                    s.chunks.push(c.clone());
                    dups += 1;
                }
                if c.0.max_time > c.0.min_time && rng.chance(50) {
                    s.chunks.push((meta(c.0.min_time, c.0.min_time, 1), b"tie".to_vec()));
                    ties += 1;
                }
                s.chunks.sort_by_key(|(m, _)| m.min_time);
            }
        }
        assert!(
            dups > 0 && ties > 0,
            "the test data must contain duplicate and same-start chunks"
        );
        let s1 = "01ARZ3NDEKTSV4RRFFQ69G5FAV".to_string();
        let s2 = "01BX5ZZKBKACTAV9WEVGEMMVRZ".to_string();
        let a = write_block(dir.path(), ranges[0], &inputs[0], 1, vec![]);
        let b = write_block(dir.path(), ranges[1], &inputs[1], 2, vec![s1.clone(), s2.clone()]);
        let c = write_block(dir.path(), ranges[2], &inputs[2], 1, vec![]);

        let mut merged: BTreeMap<Labels, Vec<(ChunkMeta, Vec<u8>)>> = BTreeMap::new();
        for s in inputs.iter().flatten() {
            merged
                .entry(s.labels.clone())
                .or_default()
                .extend(s.chunks.iter().cloned());
        }
        let model: Vec<Series> = merged
            .into_iter()
            .map(|(labels, mut all)| {
                all.sort_by_key(|(m, _)| (m.min_time, m.max_time));
                let mut chunks: Vec<(ChunkMeta, Vec<u8>)> = Vec::new();
                for ch in all {
                    if !chunks.contains(&ch) {
                        chunks.push(ch);
                    }
                }
                Series { labels, chunks }
            })
            .collect();

        let out = dir.path().join("out");
        let m = compact(&[&a, &b, &c], &out).unwrap();
        let want_sources: BTreeSet<String> = [a.meta().ulid.clone(), s1, s2, c.meta().ulid.clone()].into();
        assert_eq!(m.compaction.level, 3);
        assert_eq!(m.compaction.sources, want_sources.into_iter().collect::<Vec<_>>());
        assert_eq!((m.min_time, m.max_time), (0, 2500));
        let in_chunks: u64 = [&a, &b, &c].iter().map(|b| b.meta().stats.num_chunks).sum();
        assert_eq!(m.stats.num_chunks, in_chunks - dups);
        assert_eq!(m.stats.num_series, model.len() as u64);
        assert_eq!(
            m.stats.num_samples,
            model
                .iter()
                .flat_map(|s| &s.chunks)
                .map(|c| u64::from(c.0.num_samples))
                .sum::<u64>()
        );

        let merged_block = Block::open(&out.join(&m.ulid)).unwrap();
        assert_eq!(merged_block.meta(), &m);
        check_model(&merged_block, &model, &[], (i64::MIN, i64::MAX), "job");
        for _ in 0..50 {
            let ms: Vec<Matcher> = (0..rng.below(3)).map(|_| gen_matcher(&mut rng)).collect();
            let r = gen_range(&mut rng, 0, 2500);
            let value_name = *rng.pick(MATCH_NAMES);
            check_model(&merged_block, &model, &ms, r, value_name);
        }
        assert!(matches!(compact(&[], &out), Err(BlockError::NothingToCompact)));
    }

    /// A small block for the corruption tests; returns its directory.
    fn small_block(parent: &Path) -> PathBuf {
        let mut rng = Rng::new(3);
        let model: Vec<Series> = gen_label_sets(&mut rng, 5)
            .into_iter()
            .map(|labels| Series {
                labels,
                chunks: gen_chunks(&mut rng, 0, 1000),
            })
            .collect();
        write_block(parent, (0, 1000), &model, 1, vec![]).dir().to_path_buf()
    }

    /// Copies `src` block to `<parent>/<same name>` with `file` replaced by `content`, and opens it.
    fn open_modified(src: &Path, parent: &Path, file: &str, content: &[u8]) -> Result<Block, BlockError> {
        let dst = parent.join(src.file_name().unwrap());
        fs::create_dir_all(&dst).unwrap();
        for f in [META_FILE, INDEX_FILE, CHUNKS_FILE] {
            fs::copy(src.join(f), dst.join(f)).unwrap();
        }
        fs::write(dst.join(file), content).unwrap();
        Block::open(&dst)
    }

    /// Reads every chunk of every series; true when all reads succeed.
    fn all_chunks_readable(b: &Block) -> bool {
        let mut buf = Vec::new();
        match b.select(&[], i64::MIN, i64::MAX) {
            Ok(all) => all
                .iter()
                .flat_map(|(_, refs)| refs)
                .all(|r| b.read_chunk(r, &mut buf).is_ok()),
            Err(_) => false,
        }
    }

    #[test]
    fn corrupt_index_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let src = small_block(&dir.path().join("src"));
        let scratch = dir.path().join("scratch");
        let index = fs::read(src.join(INDEX_FILE)).unwrap();
        assert!(open_modified(&src, &scratch, INDEX_FILE, &index).is_ok());
        for len in 0..index.len() {
            assert!(
                open_modified(&src, &scratch, INDEX_FILE, &index[..len]).is_err(),
                "truncated to {len}"
            );
        }
        for off in 0..index.len() {
            let mut c = index.clone();
            c[off] ^= if off % 2 == 0 { 0x01 } else { 0x80 };
            assert!(
                open_modified(&src, &scratch, INDEX_FILE, &c).is_err(),
                "flipped byte {off}"
            );
        }
        let mut rng = Rng::new(11);
        for len in [0, 7, 8, 100, TOC_LEN + HEADER_LEN, 4096] {
            let garbage = rng.bytes(len as u64);
            assert!(open_modified(&src, &scratch, INDEX_FILE, &garbage).is_err());
        }
        for meta in [&b""[..], b"{", b"{\"ulid\":1}", b"[]"] {
            assert!(open_modified(&src, &scratch, META_FILE, meta).is_err());
        }
        let json = fs::read_to_string(src.join(META_FILE))
            .unwrap()
            .replace("\"version\": 1", "\"version\": 2");
        assert!(matches!(
            open_modified(&src, &scratch, META_FILE, json.as_bytes()),
            Err(BlockError::UnsupportedMetaVersion { version: 2, .. })
        ));
    }

    #[test]
    fn corrupt_chunks_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let src = small_block(&dir.path().join("src"));
        let scratch = dir.path().join("scratch");
        let chunks = fs::read(src.join(CHUNKS_FILE)).unwrap();
        assert!(all_chunks_readable(
            &open_modified(&src, &scratch, CHUNKS_FILE, &chunks).unwrap()
        ));
        for off in 0..chunks.len() {
            let mut c = chunks.clone();
            c[off] ^= if off % 2 == 0 { 0x01 } else { 0x80 };
            match open_modified(&src, &scratch, CHUNKS_FILE, &c) {
                Err(_) => assert!(off < HEADER_LEN, "flipped byte {off} rejected at open"),
                Ok(b) => assert!(!all_chunks_readable(&b), "flipped byte {off} not detected"),
            }
        }
        for len in 0..chunks.len() {
            match open_modified(&src, &scratch, CHUNKS_FILE, &chunks[..len]) {
                Err(_) => assert!(len < HEADER_LEN, "truncated to {len} rejected at open"),
                Ok(b) => assert!(!all_chunks_readable(&b), "truncated to {len} not detected"),
            }
        }
    }

    #[test]
    fn failed_compaction_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let src = small_block(&dir.path().join("src"));
        let mut chunks = fs::read(src.join(CHUNKS_FILE)).unwrap();
        let last = chunks.len() - 1;
        chunks[last] ^= 0xff; // the last chunk's CRC: found only when compaction reads it
        let damaged = open_modified(&src, &dir.path().join("damaged"), CHUNKS_FILE, &chunks).unwrap();
        let out = dir.path().join("out");
        assert!(matches!(compact(&[&damaged], &out), Err(BlockError::Corrupt { .. })));
        assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
    }

    /// Runs every read path; only panics matter here.
    fn exercise(b: &Block) {
        let mut buf = Vec::new();
        if let Ok(all) = b.select(&[], i64::MIN, i64::MAX) {
            for r in all.iter().flat_map(|(_, refs)| refs) {
                let _ = b.read_chunk(r, &mut buf);
            }
        }
        let names = b.label_names(&[]).unwrap_or_default();
        let ms = [
            Matcher::new(MatchOp::Regex, "job", "a.*|").unwrap(),
            Matcher::new(MatchOp::NotEqual, "env", "dev").unwrap(),
        ];
        let _ = b.select(&ms, 0, 500);
        let _ = b.label_names(&ms);
        for n in &names {
            let _ = b.label_values(n, &[]);
            let _ = b.label_values(n, &ms[..1]);
            let _ = b.select(
                &[Matcher::new(MatchOp::Regex, n.as_str(), ".+").unwrap()],
                i64::MIN,
                i64::MAX,
            );
        }
    }

    #[test]
    fn garbage_with_valid_checksums_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let src = small_block(&dir.path().join("src"));
        let scratch = dir.path().join("scratch");
        let index = fs::read(src.join(INDEX_FILE)).unwrap();
        let toc = Toc::decode(&index[index.len() - TOC_LEN..], index.len() as u64).unwrap();
        let mut opened = 0;
        for s in toc.sections {
            let (a, b) = (s.off as usize, (s.off + s.len) as usize);
            for off in a..b {
                for x in [0x01, 0x80, 0xff] {
                    let mut c = index.clone();
                    c[off] ^= x;
                    let crc = crc32fast::hash(&c[a..b]);
                    c[b..b + 4].copy_from_slice(&crc.to_be_bytes());
                    if let Ok(blk) = open_modified(&src, &scratch, INDEX_FILE, &c) {
                        opened += 1;
                        exercise(&blk);
                    }
                }
            }
        }
        // Some mutations (e.g. a chunk length or a time) are undetectable by design; they must still
        // have been exercised, or this test checks nothing.
        assert!(opened > 0);
    }

    #[test]
    fn cleanup_tmp_removes_unfinished_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path();
        let done = small_block(parent);
        let mut w = BlockWriter::create(parent, 0, 1000).unwrap();
        w.add_series(&labels(&[("a", "1")]), &[(meta(0, 1, 1), b"x".as_slice())])
            .unwrap();
        let unfinished = parent.join(format!("{}{TMP_SUFFIX}", w.id()));
        drop(w); // as if the process died here
        assert!(unfinished.is_dir());
        assert!(matches!(Block::open(&unfinished), Err(BlockError::Unfinished(_))));
        // Even a complete block is never opened under a .tmp name.
        let copied = parent.join(format!("{}{TMP_SUFFIX}", done.file_name().unwrap().to_str().unwrap()));
        fs::create_dir(&copied).unwrap();
        for f in [META_FILE, INDEX_FILE, CHUNKS_FILE] {
            fs::copy(done.join(f), copied.join(f)).unwrap();
        }
        assert!(matches!(Block::open(&copied), Err(BlockError::Unfinished(_))));
        fs::write(parent.join("stray.tmp"), b"x").unwrap();

        cleanup_tmp(parent).unwrap();
        let mut left: Vec<String> = fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec![done.file_name().unwrap().to_str().unwrap().to_string()]);
        assert!(Block::open(&done).is_ok());
        cleanup_tmp(&parent.join("missing")).unwrap();
    }

    #[test]
    fn block_ids() {
        // The ULID spec's example: time 1469918176385 encodes as 01ARYZ6S41.
        let id = new_block_id(1_469_918_176_385);
        assert!(valid_id(&id), "{id}");
        assert_eq!(&id[..10], "01ARYZ6S41");
        let ids: BTreeSet<String> = (0..100).map(|_| new_block_id(5)).collect();
        assert_eq!(ids.len(), 100);
        assert!(ids.iter().all(|i| i.starts_with("000000000") && valid_id(i)));
        assert_eq!(encode_ulid(u128::MAX), "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
        for bad in [
            "",
            "01ARYZ6S41",
            "81ARYZ6S41TSV4RRFFQ69G5FAV",
            "01ARYZ6S41TSV4RRFFQ69G5FAI",
            "01ARYZ6S41TSV4RRFFQ69G5FA/",
        ] {
            assert!(matches!(
                BlockWriter::create_with_id(Path::new("/nonexistent"), bad, 0, 1),
                Err(BlockError::InvalidId(_))
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            BlockWriter::create(dir.path(), 5, 5),
            Err(BlockError::InvalidRange(5, 5))
        ));
    }

    const FIXTURE_ID: &str = "01J5FXTR000000000000000000";

    fn fixture_series() -> Vec<Series> {
        vec![
            Series {
                labels: labels(&[("__name__", "http_requests_total"), ("code", "200"), ("job", "api")]),
                chunks: vec![
                    (meta(1_000, 60_000, 60), b"chunk-a1".to_vec()),
                    (meta(61_000, 120_000, 60), b"chunk-a2".to_vec()),
                ],
            },
            Series {
                labels: labels(&[("__name__", "http_requests_total"), ("code", "500"), ("job", "api")]),
                chunks: vec![(meta(5_000, 7_000, 3), vec![0, 1, 2, 0xff])],
            },
            Series {
                labels: labels(&[("__name__", "up"), ("instance", "10.0.0.1:9100"), ("job", "node")]),
                chunks: vec![(meta(0, 7_199_999, 480), b"up".repeat(100))],
            },
        ]
    }

    fn write_fixture(parent: &Path) -> BlockMeta {
        let mut w = BlockWriter::create_with_id(parent, FIXTURE_ID, 0, 7_200_000).unwrap();
        for s in fixture_series() {
            add(&mut w, &s).unwrap();
        }
        w.finish(1, vec![]).unwrap()
    }

    #[test]
    fn fixture_v1() {
        let parent = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/compat-tests/fixtures/metrics_block_v1"
        ));
        let dir = parent.join(FIXTURE_ID);
        if std::env::var("UPDATE_FIXTURES").is_ok_and(|v| v == "1") {
            if dir.exists() {
                fs::remove_dir_all(&dir).unwrap();
            }
            write_fixture(parent);
        }
        let b = Block::open(&dir).unwrap();
        let want = fixture_series();
        let m = b.meta();
        assert_eq!(
            (m.ulid.as_str(), m.min_time, m.max_time, m.version),
            (FIXTURE_ID, 0, 7_200_000, 1)
        );
        assert_eq!(
            m.compaction,
            BlockCompaction {
                level: 1,
                sources: vec![FIXTURE_ID.to_string()]
            }
        );
        assert_eq!(
            m.stats,
            BlockStats {
                num_samples: 603,
                num_series: 3,
                num_chunks: 4
            }
        );
        let want_sel: Selected = want.iter().map(|s| (s.labels.clone(), s.chunks.clone())).collect();
        assert_eq!(block_select(&b, &[], i64::MIN, i64::MAX), want_sel);
        assert_eq!(b.label_values("code", &[]).unwrap(), ["200", "500"]);

        // The writer still produces these exact bytes: the format is pinned, not just readable.
        let tmp = tempfile::tempdir().unwrap();
        write_fixture(tmp.path());
        for f in [META_FILE, INDEX_FILE, CHUNKS_FILE] {
            let fresh = fs::read(tmp.path().join(FIXTURE_ID).join(f)).unwrap();
            assert_eq!(fresh, fs::read(dir.join(f)).unwrap(), "{f} differs from the fixture");
        }
    }

    /// Prints on-disk and in-memory size figures for a node-exporter-like 1h block:
    /// `cargo test size_report -- --nocapture`.
    #[test]
    fn size_report() {
        const INSTANCES: usize = 100;
        type Dim = (&'static str, &'static [&'static str]);
        let families: &[(&str, Dim, Dim)] = &[
            (
                "node_cpu_seconds_total",
                ("cpu", &["0", "1", "2", "3", "4", "5", "6", "7"]),
                (
                    "mode",
                    &["idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user"],
                ),
            ),
            (
                "http_request_duration_seconds_bucket",
                (
                    "handler",
                    &[
                        "/api/v1/query",
                        "/api/v1/query_range",
                        "/api/v1/series",
                        "/api/v1/labels",
                        "/metrics",
                        "/-/ready",
                    ],
                ),
                (
                    "le",
                    &[
                        "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
                    ],
                ),
            ),
            (
                "node_filesystem_avail_bytes",
                (
                    "device",
                    &["sda1", "sda2", "sdb1", "nvme0n1p1", "tmpfs", "overlay", "shm", "run"],
                ),
                ("fstype", &["ext4", "xfs"]),
            ),
            (
                "node_network_receive_bytes_total",
                (
                    "device",
                    &[
                        "eth0",
                        "eth1",
                        "eth2",
                        "eth3",
                        "lo",
                        "docker0",
                        "veth1",
                        "veth2",
                        "veth3",
                        "veth4",
                        "cni0",
                        "flannel.1",
                    ],
                ),
                ("duplex", &["full", "half"]),
            ),
            (
                "node_network_transmit_bytes_total",
                (
                    "device",
                    &[
                        "eth0",
                        "eth1",
                        "eth2",
                        "eth3",
                        "lo",
                        "docker0",
                        "veth1",
                        "veth2",
                        "veth3",
                        "veth4",
                        "cni0",
                        "flannel.1",
                    ],
                ),
                ("duplex", &["full", "half"]),
            ),
        ];
        let mut all = Vec::new();
        for i in 0..INSTANCES {
            let instance = format!("10.0.{}.{}:9100", i / 50, i % 50 + 1);
            let node = format!("worker-{i}");
            for (name, (l1, v1), (l2, v2)) in families {
                for a in *v1 {
                    for b in *v2 {
                        all.push(labels(&[
                            ("__name__", name),
                            ("cluster", "prod-eu-1"),
                            ("instance", &instance),
                            ("job", "node-exporter"),
                            ("namespace", "monitoring"),
                            ("node", &node),
                            (l1, a),
                            (l2, b),
                        ]));
                    }
                }
            }
        }
        all.sort();
        assert_eq!(all.len(), 20_000);
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(5);
        let data: Vec<u8> = (0..300).map(|_| rng.next() as u8).collect();
        let mut w = BlockWriter::create(dir.path(), 0, 3_600_000).unwrap();
        let chunks = [
            (meta(0, 1_785_000, 120), data.as_slice()),
            (meta(1_800_000, 3_585_000, 120), data.as_slice()),
        ];
        for l in &all {
            w.add_series(l, &chunks).unwrap();
        }
        let m = w.finish(1, vec![]).unwrap();
        let b = Block::open(&dir.path().join(&m.ulid)).unwrap();
        assert_eq!(b.num_series(), 20_000);
        let one = b
            .select(&[Matcher::eq("instance", "10.0.1.1:9100")], i64::MIN, i64::MAX)
            .unwrap();
        assert_eq!(one.len(), 200);

        let index = fs::metadata(b.dir().join(INDEX_FILE)).unwrap().len();
        let chunks_len = fs::metadata(b.dir().join(CHUNKS_FILE)).unwrap().len();
        let samples = m.stats.num_samples as f64;
        let series = b.num_series() as f64;
        let framing = (chunks_len - HEADER_LEN as u64 - m.stats.num_chunks * 300) as f64;
        // The same index and framing with chunks at the 1.3 bytes/sample target instead of 300 bytes.
        let projected = index as f64 + framing + 1.3 * samples;
        println!("series {series}, samples {samples}, chunks {}", m.stats.num_chunks);
        println!(
            "index: {index} bytes = {:.1} bytes/series = {:.3} bytes/sample",
            index as f64 / series,
            index as f64 / samples
        );
        let raw_index = fs::read(b.dir().join(INDEX_FILE)).unwrap();
        let toc = Toc::decode(&raw_index[raw_index.len() - TOC_LEN..], index).unwrap();
        for (name, s) in ["symbols", "series", "series index", "postings", "postings table"]
            .iter()
            .zip(toc.sections)
        {
            println!("  {name}: {} bytes = {:.2} bytes/series", s.len, s.len as f64 / series);
        }
        println!("chunk framing: {:.1} bytes/chunk", framing / m.stats.num_chunks as f64);
        println!(
            "total with 300-byte chunks: {} bytes = {:.3} bytes/sample",
            b.size_bytes(),
            b.size_bytes() as f64 / samples
        );
        println!(
            "projected total with 1.3 B/sample chunks: {:.3} bytes/sample",
            projected / samples
        );
        println!(
            "resident when open: {} bytes = {:.2} bytes/series",
            b.memory_bytes(),
            b.memory_bytes() as f64 / series
        );
    }

    #[test]
    fn block_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Block>();
        // And usable from several threads at once.
        let dir = tempfile::tempdir().unwrap();
        let b = write_block(dir.path(), (0, 1000), &tiny_model(), 1, vec![]);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| assert_eq!(block_select(&b, &[], 0, 999), model_select(&tiny_model(), &[], 0, 999)));
            }
        });
    }
}
