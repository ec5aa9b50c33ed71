//! The log store: stream registry and label index, head blocks, chunk cutting, WAL and data log,
//! background fsync / flush / checkpoint / retention.
//!
//! Durability contract: [`LogStore::append`] returns after its WAL records were handed to the OS
//! with one `write(2)`, so a killed process loses nothing acknowledged; a machine crash loses at
//! most the fsync interval (`wal_fsync`, or nothing with `always`). Entries reach the data log when
//! their head block fills; the WAL is checkpointed (cut down to the head blocks' content) only after
//! the data log was fsynced. Replay skips entries whose sequence number is already in a block.

use super::LogsError;
use super::block::{self, BlockRef, Bloom, Codec, ColumnScratch, EntriesBuf};
use super::index::{self, IndexFile};
use super::read::{BlockSource, Selection};
use crate::model::{Labels, MatchOp, Matcher};
use crate::storage::label_key::LabelKey;
use crate::storage::wal::{RecordPos, SyncPolicy, Wal, WalOptions, WalStats};
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Options built by `app` from the configuration.
#[derive(Debug, Clone)]
pub struct LogsOptions {
    pub dir: PathBuf,
    /// Data older than this (by entry time, relative to the wall clock) is deleted.
    pub retention: Duration,
    /// Bytes of data log + WAL to keep; 0 = unlimited.
    pub retention_bytes: u64,
    pub codec: Codec,
    /// Raw bytes of a head block before it is compressed into the open chunk.
    pub block_size: usize,
    /// Raw bytes at which a chunk is closed.
    pub chunk_target_size: u64,
    /// A chunk open this long is closed.
    pub max_chunk_age: Duration,
    /// A stream that received nothing for this long has its head block and chunk closed.
    pub chunk_idle_period: Duration,
    /// A stream quiet this long gives its head's memory back: a head holding at least an eighth of
    /// `block_size` is written as a block (the chunk stays open), a smaller one is shrunk to fit.
    pub head_idle_period: Duration,
    pub wal_segment_size: u64,
    pub data_segment_size: u64,
    /// `None` = fsync before every acknowledgement.
    pub fsync_interval: Option<Duration>,
    /// The WAL is checkpointed when it grows past this many bytes.
    pub wal_checkpoint_size: u64,
    /// New streams beyond this many active streams per tenant are refused; 0 = unlimited. A stream
    /// is active until its open chunk is closed (`chunk_idle_period` after its last entry), as in
    /// Loki, whose limit counts the streams its ingesters hold and drop once flushed and idle.
    pub max_streams_per_tenant: usize,
    /// Idle streams (nothing hot, quiet for `chunk_idle_period`) are moved out of memory into an
    /// index file (see `index`) when this many have gathered...
    pub spill_streams: usize,
    /// ...or when this long passed since the last spill and any have.
    pub spill_interval: Duration,
}

impl LogsOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LogsOptions {
            dir: dir.into(),
            retention: Duration::from_secs(30 * 86_400),
            retention_bytes: 0,
            codec: Codec::Zstd(3),
            block_size: 40 << 10,
            chunk_target_size: 1536 << 10,
            max_chunk_age: Duration::from_secs(7200),
            chunk_idle_period: Duration::from_secs(1800),
            head_idle_period: Duration::from_secs(60),
            wal_segment_size: 64 << 20,
            data_segment_size: 16 << 20,
            fsync_interval: Some(Duration::from_secs(1)),
            wal_checkpoint_size: 128 << 20,
            max_streams_per_tenant: 5000,
            spill_streams: 4096,
            spill_interval: Duration::from_secs(3600),
        }
    }
}

/// Counters read by `/metrics` (through `app`).
#[derive(Debug, Default)]
pub struct LogsStats {
    pub entries_appended: AtomicU64,
    pub bytes_appended: AtomicU64,
    pub streams: AtomicU64,
    pub streams_created: AtomicU64,
    pub streams_refused_limit: AtomicU64,
    pub blocks_written: AtomicU64,
    pub block_raw_bytes: AtomicU64,
    pub block_compressed_bytes: AtomicU64,
    pub chunks_closed: AtomicU64,
    /// Heads written as a block because their stream went quiet (`head_idle_period`).
    pub quiet_heads_flushed: AtomicU64,
    /// Idle streams moved from memory into index files.
    pub streams_spilled: AtomicU64,
    pub wal_checkpoints: AtomicU64,
    pub retention_segments_deleted: AtomicU64,
    pub replayed_entries: AtomicU64,
    pub replay_micros: AtomicU64,
    pub background_failures: AtomicU64,
}

/// One entry of a push, borrowed from the request. `line` is valid UTF-8 (checked by `ingest`).
#[derive(Debug, Clone, Copy)]
pub struct PushEntry<'a> {
    pub ts: i64,
    pub line: &'a [u8],
    pub meta: &'a [(&'a str, &'a str)],
}

/// How a pushed stream is named: an id from [`LogStore::resolve`], or a new label set with the
/// client's spelling of it (`alias`, e.g. the raw `{a="b"}` string) for the next lookups.
#[derive(Debug)]
pub enum StreamKey<'a> {
    Known(u32),
    New { alias: &'a [u8], labels: Labels },
}

#[derive(Debug)]
pub struct PushStream<'a> {
    pub key: StreamKey<'a>,
    pub entries: &'a [PushEntry<'a>],
}

/// What an append did. Streams refused for the per-tenant stream limit are listed by index, and
/// so are streams named by an id ([`StreamKey::Known`]) that is no longer in memory (spilled to
/// an index file or expired since [`LogStore::resolve`] gave it): nothing of those was stored,
/// and the caller pushes them again by label set.
#[derive(Debug, Default)]
pub struct AppendResult {
    pub entries: u64,
    pub bytes: u64,
    pub refused_streams: Vec<usize>,
    pub gone_streams: Vec<usize>,
}

#[derive(Debug, Default)]
struct OpenChunk {
    blocks: Vec<BlockRef>,
    /// `None` after a restart recovered the chunk's blocks without their filter.
    bloom: Option<Bloom>,
    entries: u64,
    raw_bytes: u64,
    min_t: i64,
    max_t: i64,
    opened: Option<Instant>,
}

impl OpenChunk {
    fn add(&mut self, b: BlockRef) {
        if self.blocks.is_empty() {
            (self.min_t, self.max_t) = (b.min_t, b.max_t);
        } else {
            self.min_t = self.min_t.min(b.min_t);
            self.max_t = self.max_t.max(b.max_t);
        }
        self.blocks.push(b);
        self.entries += u64::from(b.entries);
        self.raw_bytes += u64::from(b.raw_len);
    }
}

/// A closed chunk, as held in memory until retention: its block list stays in its record on disk.
/// (In memory the list cost 48 B per ~40 KiB block: ~0.5 MB an hour in the soak, run C of
/// session 6, for as long as the 30-day retention.)
#[derive(Debug)]
pub(crate) struct ChunkMeta {
    /// Where the chunk record is: it lists the blocks and holds the filter.
    pub at: RecordPos,
    /// Data segment of the chunk's last block: retention of that segment leaves none.
    pub last_segment: u32,
    pub bloom: bool,
    /// The blocks of a chunk whose record predates block lists; empty otherwise.
    pub legacy_blocks: Box<[BlockRef]>,
    pub entries: u64,
    pub raw_bytes: u64,
    pub min_t: i64,
    pub max_t: i64,
}

#[derive(Debug)]
pub(crate) struct Stream {
    pub id: u32,
    pub tenant: Arc<str>,
    /// One allocation, not a `Labels` (a Vec, two Strings per label and an Arc): a stream stays
    /// registered for as long as retention keeps its data, so with pods coming and going this is
    /// memory that grows. heaptrack in the soak (session 8, a pod replaced every 5 s) put ~1.2 KiB
    /// held per new stream, ~0.66 KiB of it the label set (README, soak).
    pub key: LabelKey,
    next_seq: u64,
    /// The head block and open chunk; `None` while both are empty (an idle stream). A stream stays
    /// registered until retention: boxing these and dropping them took what an idle stream holds
    /// from 677 to 484 B (README, session 10 soak notes, for the method).
    hot: Option<Box<Hot>>,
    pub closed: Vec<ChunkMeta>,
    /// Its stream record is in the data log.
    in_data: bool,
    last_append: Instant,
}

/// What a stream holds while it receives entries.
#[derive(Debug, Default)]
struct Hot {
    head: EntriesBuf,
    head_first_seq: u64,
    open: OpenChunk,
    /// Its last block was cut for size: the next head reserves a whole block at once.
    busy: bool,
    /// Its head was flushed or shrunk for quietness since its last append.
    quiet: bool,
}

impl Hot {
    /// Entries not yet in a closed chunk: in the head block or the open chunk.
    fn holds_entries(&self) -> bool {
        !self.head.is_empty() || !self.open.blocks.is_empty()
    }
}

/// What an idle stream's `hot()` reads.
static COLD: Hot = Hot {
    head: EntriesBuf {
        ts: Vec::new(),
        line_lens: Vec::new(),
        meta: Vec::new(),
        lines: Vec::new(),
        min_t: 0,
        max_t: 0,
    },
    head_first_seq: 0,
    open: OpenChunk {
        blocks: Vec::new(),
        bloom: None,
        entries: 0,
        raw_bytes: 0,
        min_t: 0,
        max_t: 0,
        opened: None,
    },
    busy: false,
    quiet: true,
};

impl Stream {
    fn hot(&self) -> &Hot {
        self.hot.as_deref().unwrap_or(&COLD)
    }

    fn hot_mut(&mut self) -> &mut Hot {
        self.hot.get_or_insert_with(Box::default)
    }

    /// Drops the head and open chunk's memory when both are empty.
    fn cool(&mut self) {
        if self.hot.as_ref().is_some_and(|h| !h.holds_entries()) {
            self.hot = None;
        }
    }

    fn has_data(&self) -> bool {
        self.hot().holds_entries() || !self.closed.is_empty()
    }

    /// (min, max) entry time over everything held, if anything.
    pub fn time_range(&self) -> Option<(i64, i64)> {
        let mut r: Option<(i64, i64)> = None;
        let mut add = |a: i64, b: i64| {
            r = Some(r.map_or((a, b), |(x, y)| (x.min(a), y.max(b))));
        };
        let h = self.hot();
        if !h.head.is_empty() {
            add(h.head.min_t, h.head.max_t);
        }
        if !h.open.blocks.is_empty() {
            add(h.open.min_t, h.open.max_t);
        }
        for c in &self.closed {
            add(c.min_t, c.max_t);
        }
        r
    }
}

#[derive(Debug, Default)]
struct Tenant {
    streams: usize,
    /// name -> value -> stream ids (ascending).
    postings: BTreeMap<String, BTreeMap<String, Vec<u32>>>,
}

/// A stream's chunks as replay of the data log rebuilds them.
#[derive(Default)]
struct Replayed {
    open: OpenChunk,
    closed: Vec<ChunkMeta>,
    next_seq: u64,
}

impl Replayed {
    fn block(&mut self, b: BlockRef) {
        self.next_seq = self.next_seq.max(b.first_seq + u64::from(b.entries));
        if self.open.blocks.is_empty() {
            self.open.opened = Some(Instant::now());
        }
        self.open.add(b);
    }

    /// The chunk record at `at` closes the open chunk. A chunk none of whose blocks is left
    /// (retention deleted their segments) is gone.
    fn close(&mut self, c: &block::ChunkRecord, at: RecordPos) {
        let o = std::mem::take(&mut self.open);
        let Some(last) = o.blocks.last() else { return };
        self.closed.push(ChunkMeta {
            at,
            last_segment: last.pos.segment,
            bloom: c.bloom.is_some(),
            legacy_blocks: if c.blocks.is_some() {
                Box::default()
            } else {
                o.blocks.into_boxed_slice()
            },
            entries: c.entries,
            raw_bytes: c.raw_bytes,
            min_t: c.min_t,
            max_t: c.max_t,
        });
    }
}

struct Inner {
    /// `None` only while the WAL itself is being replayed.
    wal: Option<Wal>,
    data: Wal,
    /// By id: only the streams in memory (spilled ones are in `index`), so a map, not a vector
    /// indexed by id, which kept 8 B per stream ever seen.
    streams: HashMap<u32, Box<Stream>>,
    /// The id the next new stream gets: ids are not reused while any data of theirs is left.
    next_id: u32,
    /// Index files of spilled streams, in sequence order.
    index: Vec<IndexFile>,
    next_index_seq: u32,
    last_spill: Instant,
    tenants: HashMap<Arc<str>, Tenant>,
    /// tenant bytes, 0xff, client spelling of the labels -> stream id.
    aliases: HashMap<Vec<u8>, u32>,
    /// Data segment -> (newest entry time in its blocks, bytes).
    segments: BTreeMap<u32, (i64, u64)>,
    /// Data segments below this were deleted by retention: a chunk record may still list blocks
    /// in them.
    live_from: u32,
    rec: Vec<u8>,
    raw: Vec<u8>,
    cols: ColumnScratch,
    alt: Vec<u8>,
    wal_batch: Vec<u8>,
    wal_ends: Vec<usize>,
    alias_key: Vec<u8>,
    dirty: bool,
}

pub struct LogStore {
    opts: LogsOptions,
    data_dir: PathBuf,
    index_dir: PathBuf,
    inner: Mutex<Inner>,
    stats: Arc<LogsStats>,
    wal_stats: Arc<WalStats>,
    data_stats: Arc<WalStats>,
    wake: (Mutex<bool>, Condvar),
    closed: AtomicBool,
    bg: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn alias_key(out: &mut Vec<u8>, tenant: &str, alias: &[u8]) {
    out.clear();
    out.extend_from_slice(tenant.as_bytes());
    out.push(0xff);
    out.extend_from_slice(alias);
}

impl Inner {
    fn stream(&mut self, id: u32) -> Option<&mut Stream> {
        self.streams.get_mut(&id).map(|s| &mut **s)
    }

    /// Adds a stream to the registry and index (no-op when the id is known).
    fn register(&mut self, id: u32, tenant: &str, labels: Labels, stats: &LogsStats) -> u32 {
        if self.stream(id).is_some() {
            return id;
        }
        self.next_id = self.next_id.max(id.saturating_add(1));
        let tenant: Arc<str> = match self.tenants.get_key_value(tenant) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(tenant),
        };
        let t = self.tenants.entry(Arc::clone(&tenant)).or_default();
        t.streams += 1;
        for l in &labels {
            let ids = t
                .postings
                .entry(l.name.clone())
                .or_default()
                .entry(l.value.clone())
                .or_default();
            if let Err(at) = ids.binary_search(&id) {
                ids.insert(at, id);
            }
        }
        self.streams.insert(
            id,
            Box::new(Stream {
                id,
                tenant,
                key: LabelKey::new(&labels),
                next_seq: 0,
                hot: None,
                closed: Vec::new(),
                in_data: false,
                last_append: Instant::now(),
            }),
        );
        stats.streams.fetch_add(1, Ordering::Relaxed);
        id
    }

    fn unregister(&mut self, id: u32, stats: &LogsStats) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        if let Some(t) = self.tenants.get_mut(&s.tenant) {
            t.streams = t.streams.saturating_sub(1);
            for (name, value) in s.key.pairs() {
                if let Some(vals) = t.postings.get_mut(name) {
                    if let Some(ids) = vals.get_mut(value) {
                        ids.retain(|x| *x != id);
                        if ids.is_empty() {
                            vals.remove(value);
                        }
                    }
                    if vals.is_empty() {
                        t.postings.remove(name);
                    }
                }
            }
        }
        stats.streams.fetch_sub(1, Ordering::Relaxed);
    }

    fn note_segment(&mut self, pos: RecordPos, max_t: i64) {
        let e = self.segments.entry(pos.segment).or_insert((i64::MIN, 0));
        e.0 = e.0.max(max_t);
        e.1 += u64::from(pos.len) + 8;
    }

    /// Compresses the stream's head block into a block record of its open chunk.
    fn flush_head(&mut self, id: u32, opts: &LogsOptions, stats: &LogsStats) -> Result<(), LogsError> {
        let Inner {
            streams,
            data,
            rec,
            raw,
            cols,
            alt,
            ..
        } = self;
        let Some(s) = streams.get_mut(&id).map(|s| &mut **s) else {
            return Ok(());
        };
        let Some(hot) = s.hot.as_deref_mut().filter(|h| !h.head.is_empty()) else {
            return Ok(());
        };
        let mut new_positions = Vec::with_capacity(2);
        if !s.in_data {
            block::encode_stream(rec, id, &s.tenant, s.key.pairs());
            new_positions.push((data.append_positioned(rec)?, i64::MIN));
            s.in_data = true;
        }
        raw.clear();
        hot.head.encode_from(0, raw);
        let h = block::BlockHeader {
            codec: 0,
            stream: id,
            first_seq: hot.head_first_seq,
            entries: hot.head.len() as u32,
            raw_len: raw.len() as u32,
            min_t: hot.head.min_t,
            max_t: hot.head.max_t,
        };
        match opts.codec {
            // zstd blocks are written in the column layout (see `block`'s module docs).
            Codec::Zstd(level) => {
                block::encode_block_columns(rec, &h, level, &hot.head, cols)?;
                // A small block (an idle stream's flush) pays the layout's four frames (~60
                // bytes): below 4 KiB, the plain zstd block is kept when it is smaller.
                if raw.len() < 4096 {
                    block::encode_block(alt, &h, opts.codec, raw)?;
                    if alt.len() < rec.len() {
                        std::mem::swap(rec, alt);
                    }
                }
            }
            other => block::encode_block(rec, &h, other, raw)?,
        }
        let pos = data.append_positioned(rec)?;
        new_positions.push((pos, h.max_t));
        stats.blocks_written.fetch_add(1, Ordering::Relaxed);
        stats.block_raw_bytes.fetch_add(raw.len() as u64, Ordering::Relaxed);
        stats
            .block_compressed_bytes
            .fetch_add(rec.len() as u64, Ordering::Relaxed);
        hot.open.add(BlockRef::new(pos, &h));
        hot.head.clear();
        hot.head_first_seq = s.next_seq;
        // A huge line grew the buffers: give the memory back.
        if hot.head.lines.capacity() > opts.block_size * 2 {
            hot.head.lines = Vec::new();
            hot.head.meta = Vec::new();
        }
        let close = hot.open.raw_bytes >= opts.chunk_target_size;
        for (p, t) in new_positions {
            self.note_segment(p, t);
        }
        if close {
            self.close_chunk(id, stats)?;
        }
        Ok(())
    }

    /// Writes the chunk record that closes the stream's open chunk.
    fn close_chunk(&mut self, id: u32, stats: &LogsStats) -> Result<(), LogsError> {
        let Inner { streams, data, rec, .. } = self;
        let Some(s) = streams.get_mut(&id) else {
            return Ok(());
        };
        let Some(hot) = s.hot.as_deref_mut().filter(|h| !h.open.blocks.is_empty()) else {
            return Ok(());
        };
        let mut o = std::mem::take(&mut hot.open);
        if let Some(b) = o.bloom.as_mut() {
            b.shrink();
        }
        block::encode_chunk(
            rec,
            id,
            o.entries,
            o.raw_bytes,
            o.min_t,
            o.max_t,
            o.bloom.as_ref(),
            &o.blocks,
        );
        let pos = data.append_positioned(rec)?;
        s.closed.push(ChunkMeta {
            at: pos,
            last_segment: o.blocks.last().map_or(pos.segment, |b| b.pos.segment),
            bloom: o.bloom.is_some(),
            legacy_blocks: Box::default(),
            entries: o.entries,
            raw_bytes: o.raw_bytes,
            min_t: o.min_t,
            max_t: o.max_t,
        });
        stats.chunks_closed.fetch_add(1, Ordering::Relaxed);
        self.note_segment(pos, i64::MIN);
        Ok(())
    }

    /// Appends one entry (already in the WAL) to its stream's head block.
    fn apply(
        &mut self,
        id: u32,
        ts: i64,
        line: &[u8],
        meta: &[(&str, &str)],
        opts: &LogsOptions,
        stats: &LogsStats,
    ) -> Result<(), LogsError> {
        // Only line bytes count: a column block stores the timestamps and lengths in ~4 bytes per
        // entry and the metadata as a per-block dictionary, so counting their 12 + ~22 raw bytes
        // per entry (detected_level) cut blocks 20 % short of the lines they could hold.
        let full = self
            .stream(id)
            .is_some_and(|s| !s.hot().head.is_empty() && s.hot().head.lines.len() + line.len() > opts.block_size);
        if full {
            self.flush_head(id, opts, stats)?;
            if let Some(h) = self.stream(id).and_then(|s| s.hot.as_deref_mut()) {
                if !h.busy {
                    // Grown by doubling (to 64 KiB for a 40 KiB block): the next head reserves a
                    // block exactly instead.
                    h.head.lines = Vec::new();
                }
                h.busy = true;
            }
        }
        let Some(s) = self.stream(id) else { return Ok(()) };
        let next_seq = s.next_seq;
        s.next_seq += 1;
        s.last_append = Instant::now();
        let h = s.hot_mut();
        if h.head.is_empty() {
            h.head_first_seq = next_seq;
            if h.busy && h.head.lines.capacity() == 0 {
                // A busy stream gets the whole block at once: doubling from 4 KiB ends at 2× a
                // 48 KiB block. A slow one grows as it fills, so that a line a minute does not hold
                // a block's capacity.
                h.head.lines.reserve_exact(opts.block_size.max(line.len()));
            }
        }
        h.head.push(ts, line, meta);
        h.quiet = false;
        if h.open.blocks.is_empty() && h.open.opened.is_none() {
            h.open.opened = Some(Instant::now());
            h.open.bloom = Some(Bloom::default());
        }
        if let Some(b) = h.open.bloom.as_mut() {
            b.add_line(line);
        }
        Ok(())
    }
}

impl LogStore {
    /// Opens the store: replays the data log (stream registry, blocks, chunks), then the WAL into
    /// head blocks, and starts the background thread.
    pub fn open(opts: LogsOptions) -> Result<Arc<LogStore>, LogsError> {
        let started = Instant::now();
        let dir = opts.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| LogsError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        let stats = Arc::new(LogsStats::default());
        let sync = if opts.fsync_interval.is_some() {
            SyncPolicy::Never
        } else {
            SyncPolicy::Always
        };
        let data_dir = dir.join("data");
        // Pass 0: the index files. Their streams stay out of memory; the data log's stream records
        // of theirs are skipped below.
        let index_dir = dir.join("index");
        let mut spilled_ids = HashSet::new();
        let mut index_files = Vec::new();
        for (f, streams) in index::load_all(&index_dir)? {
            spilled_ids.extend(streams.iter().map(|s| s.id));
            index_files.push(f);
        }
        // Pass 1: the data log. Registrations are collected, then applied (the Wal is not open yet).
        let mut streams_seen: Vec<(u32, String, Labels)> = Vec::new();
        // Per stream: its open chunk and closed chunks, built record by record (a closed chunk's
        // blocks are dropped at its record unless that record predates block lists).
        let mut replayed: HashMap<u32, Replayed> = HashMap::new();
        let mut segments: BTreeMap<u32, (i64, u64)> = BTreeMap::new();
        let (data, _) = Wal::open_and_replay_positioned(
            &data_dir,
            WalOptions {
                segment_size: opts.data_segment_size,
                sync,
            },
            |rec: &[u8], pos: Option<RecordPos>| -> Result<(), LogsError> {
                let (ty, mut r) = block::open_record(rec)?;
                let mut seg_t = i64::MIN;
                match ty {
                    block::REC_STREAM => streams_seen.push(block::decode_stream(&mut r)?),
                    block::REC_BLOCK => {
                        let (h, _) = block::decode_block_header(&mut r)?;
                        if let Some(pos) = pos {
                            seg_t = h.max_t;
                            replayed.entry(h.stream).or_default().block(BlockRef::new(pos, &h));
                        }
                    }
                    block::REC_CHUNK => {
                        if let Some(pos) = pos {
                            let c = block::decode_chunk(&mut r)?;
                            replayed.entry(c.stream).or_default().close(&c, pos);
                        }
                    }
                    _ => {}
                }
                if let Some(pos) = pos {
                    let e = segments.entry(pos.segment).or_insert((i64::MIN, 0));
                    e.0 = e.0.max(seg_t);
                    e.1 += u64::from(pos.len) + 8;
                }
                Ok(())
            },
        )?;
        let wal_dir = dir.join("wal");
        let mut inner = Inner {
            wal: None,
            data,
            streams: HashMap::new(),
            next_id: spilled_ids.iter().max().map_or(0, |m| m.saturating_add(1)),
            next_index_seq: index_files.last().map_or(0, |f| f.seq.saturating_add(1)),
            index: index_files,
            last_spill: Instant::now(),
            tenants: HashMap::new(),
            aliases: HashMap::new(),
            // Every segment from the first one replay found is still there.
            live_from: segments.keys().next().copied().unwrap_or(0),
            segments,
            rec: Vec::new(),
            raw: Vec::new(),
            cols: ColumnScratch::default(),
            alt: Vec::new(),
            wal_batch: Vec::new(),
            wal_ends: Vec::new(),
            alias_key: Vec::new(),
            dirty: false,
        };
        for (id, tenant, labels) in streams_seen {
            if spilled_ids.contains(&id) {
                continue;
            }
            inner.register(id, &tenant, labels, &stats);
            if let Some(s) = inner.stream(id) {
                s.in_data = true;
            }
        }
        for (id, r) in replayed {
            let Some(s) = inner.stream(id) else { continue };
            s.next_seq = s.next_seq.max(r.next_seq);
            if !r.open.blocks.is_empty() {
                s.hot_mut().open = r.open;
            }
            s.closed = r.closed;
        }
        // Pass 2: the WAL, into head blocks (which may fill and go to the data log).
        let mut replayed = 0u64;
        let (wal, _) = {
            let inner_ref = &mut inner;
            let stats_ref = &stats;
            let opts_ref = &opts;
            Wal::open_and_replay(
                &wal_dir,
                WalOptions {
                    segment_size: opts.wal_segment_size,
                    sync,
                },
                |rec: &[u8]| -> Result<(), LogsError> {
                    let (ty, mut r) = block::open_record(rec)?;
                    match ty {
                        block::REC_STREAM => {
                            let (id, tenant, labels) = block::decode_stream(&mut r)?;
                            // A spilled stream was idle with everything in closed chunks: the
                            // WAL holds nothing of it that its chunks lack.
                            if !spilled_ids.contains(&id) {
                                inner_ref.register(id, &tenant, labels, stats_ref);
                            }
                        }
                        block::REC_ENTRIES => {
                            let (id, first_seq, raw) = block::decode_entries_record(&mut r)?;
                            let next = match inner_ref.stream(id) {
                                Some(s) => s.next_seq,
                                None => return Ok(()),
                            };
                            let mut seq = first_seq;
                            let mut metas: Vec<(&str, &str)> = Vec::new();
                            let mut res = Ok(());
                            block::for_each_entry(raw, |ts, line, meta| {
                                let this = seq;
                                seq += 1;
                                if this < next || res.is_err() {
                                    return;
                                }
                                metas.clear();
                                for (n, v) in meta {
                                    if let (Ok(n), Ok(v)) = (std::str::from_utf8(n), std::str::from_utf8(v)) {
                                        metas.push((n, v));
                                    }
                                }
                                if let Some(s) = inner_ref.stream(id) {
                                    s.next_seq = this;
                                }
                                replayed += 1;
                                res = inner_ref.apply(id, ts, line, &metas, opts_ref, stats_ref);
                            })?;
                            res?;
                        }
                        _ => {}
                    }
                    Ok(())
                },
            )?
        };
        let wal_stats = wal.stats_handle();
        inner.wal = Some(wal);
        // Streams whose data all expired while the process was down stay registered only if they
        // hold something.
        let empty: Vec<u32> = inner.streams.values().filter(|s| !s.has_data()).map(|s| s.id).collect();
        for id in empty {
            inner.unregister(id, &stats);
        }
        drop_dead_index_files(&mut inner, &index_dir)?;
        stats.replayed_entries.store(replayed, Ordering::Relaxed);
        stats
            .replay_micros
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        tracing::info!(
            streams = stats.streams.load(Ordering::Relaxed),
            replayed_entries = replayed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Log store opened and write-ahead log replayed."
        );
        let data_stats = inner.data.stats_handle();
        let store = Arc::new(LogStore {
            opts,
            data_dir,
            index_dir,
            inner: Mutex::new(inner),
            stats,
            wal_stats,
            data_stats,
            wake: (Mutex::new(false), Condvar::new()),
            closed: AtomicBool::new(false),
            bg: Mutex::new(None),
        });
        let bg = Arc::clone(&store);
        let handle = std::thread::Builder::new()
            .name("logs-maintenance".into())
            .spawn(move || bg.background())
            .map_err(|source| LogsError::Io {
                op: "spawn maintenance thread",
                path: dir,
                source,
            })?;
        *store.bg.lock() = Some(handle);
        Ok(store)
    }

    pub fn stats(&self) -> &Arc<LogsStats> {
        &self.stats
    }

    pub fn wal_stats(&self) -> &Arc<WalStats> {
        &self.wal_stats
    }

    pub fn data_stats(&self) -> &Arc<WalStats> {
        &self.data_stats
    }

    pub fn options(&self) -> &LogsOptions {
        &self.opts
    }

    /// Looks up streams by the client's spelling of their labels; `out[i]` is the id or `None`.
    pub fn resolve(&self, tenant: &str, aliases: &[&[u8]], out: &mut Vec<Option<u32>>) {
        out.clear();
        let mut inner = self.inner.lock();
        let mut key = std::mem::take(&mut inner.alias_key);
        for a in aliases {
            alias_key(&mut key, tenant, a);
            out.push(inner.aliases.get(&key).copied());
        }
        inner.alias_key = key;
    }

    /// Appends the streams' entries: new streams are created (or refused over the tenant's stream
    /// limit), the WAL records are written with one `write(2)`, then the head blocks take the entries.
    pub fn append(&self, tenant: &str, streams: &[PushStream<'_>]) -> Result<AppendResult, LogsError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(LogsError::Closed);
        }
        let mut res = AppendResult::default();
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        // 1. Ids: known, found by label set, or new (reserved now, registered after the WAL write).
        let mut ids: Vec<Option<(u32, bool)>> = Vec::with_capacity(streams.len());
        let mut next_id = inner.next_id;
        let mut new_in_tenant = 0usize;
        let mut new_labels: HashMap<&Labels, u32> = HashMap::new();
        let mut tenant_streams = inner.tenants.get(tenant).map_or(0, |t| t.streams);
        let limit = self.opts.max_streams_per_tenant;
        // The limit is on active streams, as Loki's is on the streams its ingesters hold. Every
        // stream stays registered until retention, so at the limit the active ones are counted.
        let mut counted_active = false;
        for (i, ps) in streams.iter().enumerate() {
            let id = match &ps.key {
                StreamKey::Known(id) if inner.stream(*id).is_some() => Some((*id, false)),
                StreamKey::Known(_) => {
                    res.gone_streams.push(i);
                    None
                }
                StreamKey::New { labels, .. } => {
                    if let Some(id) = find_by_labels(inner, tenant, labels) {
                        Some((id, false))
                    } else if let Some(&id) = new_labels.get(labels) {
                        Some((id, false))
                    } else if limit > 0 && tenant_streams + new_in_tenant >= limit && {
                        if !counted_active {
                            tenant_streams = active_streams(inner, tenant);
                            counted_active = true;
                        }
                        tenant_streams + new_in_tenant >= limit
                    } {
                        res.refused_streams.push(i);
                        self.stats.streams_refused_limit.fetch_add(1, Ordering::Relaxed);
                        None
                    } else {
                        let id = next_id;
                        next_id += 1;
                        new_in_tenant += 1;
                        new_labels.insert(labels, id);
                        Some((id, true))
                    }
                }
            };
            ids.push(id);
        }
        // 2. WAL records: stream records for new streams, one entries record per pushed stream.
        let mut batch = std::mem::take(&mut inner.wal_batch);
        let mut ends = std::mem::take(&mut inner.wal_ends);
        let mut rec = std::mem::take(&mut inner.raw);
        batch.clear();
        ends.clear();
        for (ps, id) in streams.iter().zip(&ids) {
            if let (Some((id, true)), StreamKey::New { labels, .. }) = (*id, &ps.key)
                && !ps.entries.is_empty()
            {
                block::encode_stream(&mut rec, id, tenant, labels.pairs());
                batch.extend_from_slice(&rec);
                ends.push(batch.len());
            }
        }
        for (ps, id) in streams.iter().zip(&ids) {
            let Some((id, _)) = *id else { continue };
            if ps.entries.is_empty() {
                continue;
            }
            // The stream's next number, plus earlier parts of this request for the same stream.
            let first_seq = seq_after(inner, id, streams, &ids, ps);
            block::record_header(&mut rec, block::REC_ENTRIES);
            block::put_uvarint(&mut rec, u64::from(id));
            block::put_uvarint(&mut rec, first_seq);
            encode_push_entries(&mut rec, ps.entries);
            batch.extend_from_slice(&rec);
            ends.push(batch.len());
        }
        let written = if ends.is_empty() {
            Ok(())
        } else {
            let mut slices: Vec<&[u8]> = Vec::with_capacity(ends.len());
            let mut start = 0;
            for &end in &ends {
                slices.push(&batch[start..end]);
                start = end;
            }
            match inner.wal.as_mut() {
                Some(w) => w.append_batch(&slices).map_err(LogsError::from),
                None => Err(LogsError::Closed),
            }
        };
        if batch.capacity() > 8 << 20 {
            batch = Vec::new();
        }
        if rec.capacity() > 8 << 20 {
            rec = Vec::new();
        }
        inner.wal_batch = batch;
        inner.wal_ends = ends;
        inner.raw = rec;
        written?;
        inner.dirty = true;
        // 3. Registry and head blocks.
        for (ps, id) in streams.iter().zip(&ids) {
            let Some((id, new)) = *id else { continue };
            if new && let StreamKey::New { labels, .. } = &ps.key {
                inner.register(id, tenant, labels.clone(), &self.stats);
                self.stats.streams_created.fetch_add(1, Ordering::Relaxed);
            }
            if let StreamKey::New { alias, .. } = &ps.key {
                let mut key = std::mem::take(&mut inner.alias_key);
                alias_key(&mut key, tenant, alias);
                if inner.aliases.len() > 1_000_000 {
                    inner.aliases.clear();
                }
                inner.aliases.insert(key.clone(), id);
                inner.alias_key = key;
            }
            for e in ps.entries {
                inner.apply(id, e.ts, e.line, e.meta, &self.opts, &self.stats)?;
                res.entries += 1;
                res.bytes += e.line.len() as u64;
            }
        }
        self.stats.entries_appended.fetch_add(res.entries, Ordering::Relaxed);
        self.stats.bytes_appended.fetch_add(res.bytes, Ordering::Relaxed);
        let checkpoint = self.wal_stats.bytes_on_disk() > self.opts.wal_checkpoint_size;
        drop(guard);
        if checkpoint {
            self.notify();
        }
        Ok(res)
    }

    fn notify(&self) {
        let (m, cv) = &self.wake;
        *m.lock() = true;
        cv.notify_one();
    }

    /// Flushes every head block and closes every chunk, fsyncs, and checkpoints the WAL down to
    /// nothing (so the next start replays nothing). Also what a clean shutdown does.
    pub fn flush(&self) -> Result<(), LogsError> {
        let mut inner = self.inner.lock();
        let ids: Vec<u32> = inner.streams.values().map(|s| s.id).collect();
        for id in ids {
            inner.flush_head(id, &self.opts, &self.stats)?;
            inner.close_chunk(id, &self.stats)?;
        }
        self.checkpoint_wal(&mut inner)
    }

    /// Data log fsynced, then the WAL cut down to the head blocks' content.
    fn checkpoint_wal(&self, inner: &mut Inner) -> Result<(), LogsError> {
        inner.data.sync()?;
        let Inner { wal, streams, .. } = inner;
        let Some(wal) = wal.as_mut() else {
            return Err(LogsError::Closed);
        };
        let upto = wal.cut_segment()?;
        let recs = streams.values().filter(|s| !s.hot().head.is_empty()).flat_map(|s| {
            let mut a = Vec::new();
            block::encode_stream(&mut a, s.id, &s.tenant, s.key.pairs());
            let mut b = Vec::new();
            block::encode_entries(&mut b, s.id, s.hot().head_first_seq, &s.hot().head, 0);
            [a, b]
        });
        match wal.checkpoint(upto, recs) {
            Ok(()) => {}
            Err(crate::storage::wal::WalError::InvalidCheckpoint { reason, .. }) => {
                tracing::debug!(upto, reason, "Logs WAL checkpoint skipped.");
            }
            Err(e) => return Err(e.into()),
        }
        inner.dirty = false;
        self.stats.wal_checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Stops background work, flushes everything to the data log and checkpoints the WAL.
    /// Idempotent. Appends after this fail with `Closed`.
    pub fn close(&self) -> Result<(), LogsError> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.notify();
        if let Some(h) = self.bg.lock().take() {
            let _ = h.join();
        }
        self.flush()
    }

    fn background(self: Arc<Self>) {
        let tick = self
            .opts
            .fsync_interval
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        let mut last_maintenance = Instant::now();
        loop {
            {
                let (m, cv) = &self.wake;
                let mut woken = m.lock();
                if !*woken {
                    cv.wait_for(&mut woken, tick);
                }
                *woken = false;
            }
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let res = (|| -> Result<(), LogsError> {
                // As in the metrics store: take a sync handle under the lock, fsync after releasing
                // it, so that pushes do not wait for the disk.
                let handle = {
                    let mut inner = self.inner.lock();
                    if self.opts.fsync_interval.is_some() && inner.dirty {
                        inner.dirty = false;
                        inner.wal.as_ref().map(|w| w.sync_handle())
                    } else {
                        None
                    }
                };
                if let Some(Err(e)) = handle.map(|h| h.and_then(|h| h.sync())) {
                    tracing::error!(error = %e, "Log write-ahead log fsync failed.");
                    if let Some(w) = self.inner.lock().wal.as_mut() {
                        w.sync()?;
                    }
                }
                let mut inner = self.inner.lock();
                if self.wal_stats.bytes_on_disk() > self.opts.wal_checkpoint_size {
                    self.checkpoint_wal(&mut inner)?;
                }
                drop(inner);
                if last_maintenance.elapsed() >= Duration::from_secs(10) {
                    last_maintenance = Instant::now();
                    self.maintain(now_ns())?;
                }
                Ok(())
            })();
            if let Err(e) = res {
                self.stats.background_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "Log store maintenance failed; will retry.");
            }
        }
    }

    /// Closes idle and old chunks, then applies retention as of `now` (ns). Called every 10 s by
    /// the background thread; callable directly (tests).
    pub fn maintain(&self, now: i64) -> Result<(), LogsError> {
        let mut inner = self.inner.lock();
        let due: Vec<(u32, bool)> = inner
            .streams
            .values()
            .filter_map(|s| {
                let idle = s.last_append.elapsed() >= self.opts.chunk_idle_period;
                let h = s.hot();
                let old = h.open.opened.is_some_and(|o| o.elapsed() >= self.opts.max_chunk_age);
                ((idle || old) && h.holds_entries()).then_some((s.id, idle))
            })
            .collect();
        let quiet_flushed = self.release_quiet_heads(&mut inner, &due)?;
        for &(id, idle) in &due {
            inner.flush_head(id, &self.opts, &self.stats)?;
            inner.close_chunk(id, &self.stats)?;
            // An idle stream gives its head buffers back: they keep a block's capacity (~45 KiB at
            // the default 40 KiB block) after a flush, and a node whose pods come and go leaves
            // such streams behind at its churn rate (the soak bench measured RSS rising ~25 MiB/h
            // with one pod replaced a minute before this).
            if idle && let Some(s) = inner.streams.get_mut(&id) {
                s.cool();
                // It stays registered until retention: its closed list loses its growth slack
                // (a one-chunk stream held 4 slots, 288 B for 72), see `forget_idle_aliases`.
                s.closed.shrink_to_fit();
            }
        }
        forget_idle_aliases(&mut inner, &due);
        if !due.is_empty() {
            self.checkpoint_wal(&mut inner)?;
        }
        self.spill_idle(&mut inner)?;
        if quiet_flushed > 0 {
            self.stats
                .quiet_heads_flushed
                .fetch_add(quiet_flushed, Ordering::Relaxed);
        }
        self.apply_retention(&mut inner, now)
    }

    /// Gives back the head memory of streams quiet for `head_idle_period` (and not about to be
    /// closed, in `due`): 400 streams that went quiet with their heads part-full held ~19 MiB
    /// (a 40 KiB block's buffers, ~48 KiB with the timestamps and lengths, each), half the idle
    /// footprint issue 6 allows. A head worth a block (an eighth of `block_size` or more) is
    /// written as one, so a quiet stream costs a smaller block, not its memory; a smaller head is
    /// shrunk to its size, so that a stream writing a line a minute never makes tiny blocks.
    /// Returns the number of heads written.
    fn release_quiet_heads(&self, inner: &mut Inner, due: &[(u32, bool)]) -> Result<u64, LogsError> {
        let quiet: Vec<(u32, bool)> = inner
            .streams
            .values()
            .filter(|s| !s.hot().quiet && s.last_append.elapsed() >= self.opts.head_idle_period)
            .filter(|s| !due.iter().any(|d| d.0 == s.id))
            .map(|s| (s.id, s.hot().head.lines.len() >= self.opts.block_size / 8))
            .collect();
        let mut flushed = 0;
        for (id, worth_a_block) in quiet {
            if worth_a_block {
                inner.flush_head(id, &self.opts, &self.stats)?;
                flushed += 1;
            }
            if let Some(s) = inner.streams.get_mut(&id)
                && let Some(h) = s.hot.as_deref_mut()
            {
                if h.head.is_empty() {
                    h.head = EntriesBuf::default();
                } else {
                    h.head.shrink_to_fit();
                }
                h.busy = false;
                h.quiet = true;
                s.cool();
            }
        }
        Ok(flushed)
    }

    /// Moves idle streams out of memory into a new index file (see `index`'s docs for why), when
    /// `spill_streams` of them gathered or `spill_interval` passed since the last spill. Idle:
    /// nothing in a head or open chunk, nothing appended for `chunk_idle_period`, and no chunk that predates
    /// block lists (those keep their blocks in memory). A spilled stream that receives entries
    /// again comes back as a new stream with a new id: readers merge the two by label set.
    fn spill_idle(&self, inner: &mut Inner) -> Result<(), LogsError> {
        let mut ids: Vec<u32> = inner
            .streams
            .values()
            .filter(|s| {
                !s.hot().holds_entries()
                    && !s.closed.is_empty()
                    && s.closed.iter().all(|c| c.legacy_blocks.is_empty())
                    && s.last_append.elapsed() >= self.opts.chunk_idle_period
            })
            .map(|s| s.id)
            .collect();
        if ids.is_empty()
            || (ids.len() < self.opts.spill_streams && inner.last_spill.elapsed() < self.opts.spill_interval)
        {
            return Ok(());
        }
        ids.sort_unstable();
        // The file points at chunk records: they must be on disk before it is.
        inner.data.sync()?;
        let seq = inner.next_index_seq;
        let mut buf = Vec::new();
        let streams = ids
            .iter()
            .filter_map(|id| inner.streams.get(id))
            .map(|s| (s.id, &*s.tenant, s.key.pairs(), &s.closed[..]));
        let file = index::encode(&mut buf, seq, streams);
        index::write(&self.index_dir, seq, &buf)?;
        inner.next_index_seq = seq.saturating_add(1);
        inner.index.push(file);
        inner.last_spill = Instant::now();
        for &id in &ids {
            inner.unregister(id, &self.stats);
        }
        inner.aliases.retain(|_, id| ids.binary_search(id).is_err());
        // The tenant map, postings and slots shrink with the streams gone.
        inner.streams.shrink_to_fit();
        self.stats
            .streams_spilled
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        tracing::debug!(seq, streams = ids.len(), "Idle log streams spilled to an index file.");
        Ok(())
    }

    fn apply_retention(&self, inner: &mut Inner, now: i64) -> Result<(), LogsError> {
        let cutoff = now.saturating_sub(self.opts.retention.as_nanos() as i64);
        let current = self.data_stats.current_segment.load(Ordering::Relaxed) as u32;
        let mut upto = None;
        for (&seg, &(max_t, _)) in &inner.segments {
            if seg >= current || max_t >= cutoff {
                break;
            }
            upto = Some(seg);
        }
        if self.opts.retention_bytes > 0 {
            let mut total = self.data_stats.bytes_on_disk() + self.wal_stats.bytes_on_disk();
            for (&seg, &(_, bytes)) in &inner.segments {
                if total <= self.opts.retention_bytes || seg >= current {
                    break;
                }
                total = total.saturating_sub(bytes);
                upto = Some(upto.map_or(seg, |u: u32| u.max(seg)));
            }
        }
        let Some(upto) = upto else { return Ok(()) };
        // Drop the blocks in those segments from the index, and streams left with nothing.
        let mut gone = Vec::new();
        for s in inner.streams.values_mut() {
            if let Some(h) = s.hot.as_deref_mut() {
                h.open.blocks.retain(|b| b.pos.segment > upto);
                if h.open.blocks.is_empty() {
                    h.open = OpenChunk::default();
                }
                s.cool();
            }
            s.closed.retain_mut(|c| {
                if c.legacy_blocks.is_empty() {
                    return c.last_segment > upto;
                }
                c.legacy_blocks = c
                    .legacy_blocks
                    .iter()
                    .filter(|b| b.pos.segment > upto)
                    .copied()
                    .collect();
                !c.legacy_blocks.is_empty()
            });
            if !s.has_data() {
                gone.push(s.id);
            }
        }
        for id in gone {
            inner.unregister(id, &self.stats);
        }
        inner.aliases.clear();
        let Inner { data, streams, .. } = inner;
        let recs = streams.values().filter(|s| s.in_data).map(|s| {
            let mut a = Vec::new();
            block::encode_stream(&mut a, s.id, &s.tenant, s.key.pairs());
            a
        });
        data.checkpoint(upto, recs)?;
        let n = inner.segments.range(..=upto).count() as u64;
        inner.segments.retain(|s, _| *s > upto);
        inner.live_from = inner.live_from.max(upto + 1);
        drop_dead_index_files(inner, &self.index_dir)?;
        self.stats.retention_segments_deleted.fetch_add(n, Ordering::Relaxed);
        tracing::info!(upto, segments = n, "Log retention deleted data segments.");
        Ok(())
    }

    /// Streams of `tenant` matching all `matchers` (all streams when empty), with data in
    /// `[start, end]` (ns), under the lock.
    fn matching<'a>(inner: &'a Inner, tenant: &str, matchers: &[Matcher], start: i64, end: i64) -> Vec<&'a Stream> {
        let Some(t) = inner.tenants.get(tenant) else {
            return Vec::new();
        };
        // The most selective equality matcher gives the candidates; every matcher then filters.
        let mut cands: Option<&Vec<u32>> = None;
        for m in matchers {
            if m.op == MatchOp::Equal && !m.value.is_empty() {
                match t.postings.get(&m.name).and_then(|v| v.get(&m.value)) {
                    Some(ids) => {
                        if cands.is_none_or(|c| ids.len() < c.len()) {
                            cands = Some(ids);
                        }
                    }
                    None => return Vec::new(),
                }
            }
        }
        let keep = |s: &&Stream| {
            &*s.tenant == tenant
                && matchers.iter().all(|m| m.matches(s.key.get(&m.name).unwrap_or("")))
                && s.time_range().is_some_and(|(a, b)| a <= end && b >= start)
        };
        match cands {
            Some(ids) => ids
                .iter()
                .filter_map(|id| inner.streams.get(id).map(|s| &**s))
                .filter(keep)
                .collect(),
            None => {
                let mut v: Vec<&Stream> = inner.streams.values().map(|s| &**s).filter(keep).collect();
                v.sort_unstable_by_key(|s| s.id);
                v
            }
        }
    }

    /// Streams of the index files overlapping `[start, end]` that match, read without the lock.
    fn read_spilled(
        &self,
        files: &[IndexFile],
        tenant: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<Stream>, LogsError> {
        let mut out = Vec::new();
        for f in files.iter().filter(|f| f.min_t <= end && f.max_t >= start) {
            let Some(streams) = index::read(&self.index_dir, f.seq)? else {
                continue;
            };
            for s in streams {
                if s.tenant != tenant || !matchers.iter().all(|m| m.matches(s.labels.get_or_empty(&m.name))) {
                    continue;
                }
                out.push(Stream {
                    id: s.id,
                    tenant: Arc::from(s.tenant),
                    key: LabelKey::new(&s.labels),
                    next_seq: 0,
                    hot: None,
                    closed: s.chunks,
                    in_data: true,
                    last_append: Instant::now(),
                });
            }
        }
        Ok(out)
    }

    /// The lock, and the spilled streams of `tenant` that match with data in `[start, end]`. The
    /// files are read before the lock is taken (they never change), except any written meanwhile.
    fn lock_with_spilled(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<(parking_lot::MutexGuard<'_, Inner>, Vec<Stream>), LogsError> {
        let (files, seen) = {
            let inner = self.inner.lock();
            let files: Vec<IndexFile> = inner
                .index
                .iter()
                .filter(|f| f.min_t <= end && f.max_t >= start)
                .copied()
                .collect();
            (files, inner.next_index_seq)
        };
        let mut spilled = self.read_spilled(&files, tenant, matchers, start, end)?;
        let inner = self.inner.lock();
        if inner.next_index_seq != seen {
            let newer: Vec<IndexFile> = inner.index.iter().filter(|f| f.seq >= seen).copied().collect();
            spilled.extend(self.read_spilled(&newer, tenant, matchers, start, end)?);
        }
        let live_from = inner.live_from;
        for s in &mut spilled {
            s.closed.retain(|c| c.last_segment >= live_from);
        }
        spilled.retain(|s| s.time_range().is_some_and(|(a, b)| a <= end && b >= start));
        Ok((inner, spilled))
    }

    pub(crate) fn with_matching<R>(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        f: impl FnOnce(&[&Stream]) -> R,
    ) -> Result<R, LogsError> {
        let (inner, spilled) = self.lock_with_spilled(tenant, matchers, start, end)?;
        let mut v = Self::matching(&inner, tenant, matchers, start, end);
        v.extend(spilled.iter());
        Ok(f(&v))
    }

    /// Label names of `tenant`'s streams (all of them, regardless of time), for `/labels` without a
    /// query: read from the postings of the streams in memory, and from the spilled ones.
    pub(crate) fn tenant_label_names(&self, tenant: &str) -> Result<Vec<String>, LogsError> {
        let (inner, spilled) = self.lock_with_spilled(tenant, &[], i64::MIN, i64::MAX)?;
        let mut names: std::collections::BTreeSet<String> = inner
            .tenants
            .get(tenant)
            .map(|t| t.postings.keys().cloned().collect())
            .unwrap_or_default();
        for s in &spilled {
            for (n, _) in s.key.pairs() {
                if !names.contains(n) {
                    names.insert(n.to_string());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Snapshot for a select: block sources and head entries of the matching streams. Closed
    /// chunks' block lists are read from their records after the lock is released.
    pub(crate) fn snapshot(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        needles: &[String],
    ) -> Result<Selection, LogsError> {
        /// What goes into `Selection::blocks`, in order: a block, or a closed chunk's blocks.
        enum Item {
            Block(BlockSource),
            Chunk {
                stream: usize,
                at: RecordPos,
                bloom: bool,
                legacy: Option<Box<[BlockRef]>>,
            },
        }
        let overlaps = |a: i64, b: i64| a <= end && b >= start;
        let mut sel = Selection {
            dir: self.data_dir.clone(),
            ..Default::default()
        };
        let mut items = Vec::new();
        // Label sets are built after the lock is released (one clone of each key under it).
        let mut keys = Vec::new();
        let live_from = {
            let (inner, spilled) = self.lock_with_spilled(tenant, matchers, start, end)?;
            let mut matched = Self::matching(&inner, tenant, matchers, start, end);
            matched.extend(spilled.iter());
            for (si, s) in matched.iter().enumerate() {
                keys.push(s.key.clone());
                for c in s.closed.iter().filter(|c| overlaps(c.min_t, c.max_t)) {
                    items.push(Item::Chunk {
                        stream: si,
                        at: c.at,
                        bloom: c.bloom,
                        legacy: (!c.legacy_blocks.is_empty()).then(|| c.legacy_blocks.clone()),
                    });
                }
                let h = s.hot();
                let open_ok = needles.is_empty()
                    || h.open
                        .bloom
                        .as_ref()
                        .is_none_or(|bl| needles.iter().all(|n| bl.may_contain(n.as_bytes())));
                if open_ok {
                    let open = h.open.blocks.iter().filter(|b| overlaps(b.min_t, b.max_t));
                    items.extend(open.map(|b| Item::Block(BlockSource { stream: si, block: *b })));
                    if !h.head.is_empty() && overlaps(h.head.min_t, h.head.max_t) {
                        sel.heads.push((si, h.head_first_seq, h.head.clone()));
                    }
                } else {
                    sel.chunks_skipped += 1;
                }
            }
            inner.live_from
        };
        sel.labels = keys.iter().map(|k| Arc::new(k.to_labels())).collect();
        let mut buf = Vec::new();
        for item in items {
            let (stream, at, bloom, legacy) = match item {
                Item::Block(b) => {
                    sel.blocks.push(b);
                    continue;
                }
                Item::Chunk {
                    stream,
                    at,
                    bloom,
                    legacy,
                } => (stream, at, bloom && !needles.is_empty(), legacy),
            };
            if legacy.is_some() && !bloom {
                let blocks = legacy.iter().flatten().filter(|b| overlaps(b.min_t, b.max_t));
                sel.blocks.extend(blocks.map(|b| BlockSource { stream, block: *b }));
                continue;
            }
            crate::storage::wal::read_record_at(&self.data_dir, at, &mut buf)?;
            let (ty, mut r) = block::open_record(&buf)?;
            if ty != block::REC_CHUNK {
                return Err(LogsError::BadRecord("not a chunk record"));
            }
            let c = block::decode_chunk(&mut r)?;
            if bloom {
                sel.blooms_checked += 1;
                if let Some(f) = &c.bloom
                    && !needles.iter().all(|n| f.may_contain(n.as_bytes()))
                {
                    sel.chunks_skipped += 1;
                    continue;
                }
            }
            let blocks = c.blocks.iter().flatten().chain(legacy.iter().flatten());
            let blocks = blocks.filter(|b| b.pos.segment >= live_from && overlaps(b.min_t, b.max_t));
            sel.blocks.extend(blocks.map(|b| BlockSource { stream, block: *b }));
        }
        Ok(sel)
    }

    /// Index statistics over matching streams: chunks overlapping the range count whole (like
    /// Loki); the open chunk and head block count as one chunk.
    pub(crate) fn stats_over(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<super::IndexStats, LogsError> {
        let (inner, spilled) = self.lock_with_spilled(tenant, matchers, start, end)?;
        let mut st = super::IndexStats::default();
        let mut matched = Self::matching(&inner, tenant, matchers, start, end);
        matched.extend(spilled.iter());
        // A stream that came back after it was spilled has two ids: it counts once, as in Loki.
        let mut keys = HashSet::with_capacity(matched.len());
        for s in matched {
            if keys.insert(s.key.as_bytes()) {
                st.streams += 1;
            }
            for c in &s.closed {
                if c.min_t <= end && c.max_t >= start {
                    st.chunks += 1;
                    st.entries += c.entries;
                    st.bytes += c.raw_bytes;
                }
            }
            let h = s.hot();
            let open_in = !h.open.blocks.is_empty() && h.open.min_t <= end && h.open.max_t >= start;
            let head_in = !h.head.is_empty() && h.head.min_t <= end && h.head.max_t >= start;
            if open_in || head_in {
                st.chunks += 1;
            }
            if open_in {
                st.entries += h.open.entries;
                st.bytes += h.open.raw_bytes;
            }
            if head_in {
                st.entries += h.head.len() as u64;
                st.bytes += h.head.lines.len() as u64;
            }
        }
        Ok(st)
    }
}

/// Deletes the index files all of whose chunks lie in data segments retention removed.
fn drop_dead_index_files(inner: &mut Inner, dir: &std::path::Path) -> Result<(), LogsError> {
    let live_from = inner.live_from;
    let dead: Vec<u32> = inner
        .index
        .iter()
        .filter(|f| f.last_segment < live_from)
        .map(|f| f.seq)
        .collect();
    for seq in dead {
        index::remove(dir, seq)?;
        inner.index.retain(|f| f.seq != seq);
    }
    Ok(())
}

/// Drops the client spellings of streams that just went idle (`due` entries marked idle): a
/// node whose pods come and go would otherwise keep one per stream until retention (~160 B each,
/// heaptrack, soak with a pod replaced every 5 s: 288 new streams in 12 minutes). A stream that
/// comes back is found again by its label set, and its spelling is learnt again.
fn forget_idle_aliases(inner: &mut Inner, due: &[(u32, bool)]) {
    let mut idle: Vec<u32> = due.iter().filter(|d| d.1).map(|d| d.0).collect();
    if idle.is_empty() {
        return;
    }
    idle.sort_unstable();
    inner.aliases.retain(|_, id| idle.binary_search(id).is_err());
}

/// Streams of `tenant` holding entries not yet in a closed chunk (a stream's open chunk is closed
/// `chunk_idle_period` after its last entry).
fn active_streams(inner: &Inner, tenant: &str) -> usize {
    inner
        .streams
        .values()
        .filter(|s| &*s.tenant == tenant && s.hot().holds_entries())
        .count()
}

fn find_by_labels(inner: &Inner, tenant: &str, labels: &Labels) -> Option<u32> {
    let t = inner.tenants.get(tenant)?;
    let first = labels.iter().next()?;
    let ids = t.postings.get(&first.name)?.get(&first.value)?;
    ids.iter()
        .copied()
        .find(|id| inner.streams.get(id).is_some_and(|s| s.key.eq_labels(labels)))
}

/// The sequence number the entries of `ps` start at: the stream's next number plus the entries of
/// earlier parts of the same request for the same stream.
fn seq_after(
    inner: &Inner,
    id: u32,
    streams: &[PushStream<'_>],
    ids: &[Option<(u32, bool)>],
    ps: &PushStream<'_>,
) -> u64 {
    let base = inner.streams.get(&id).map_or(0, |s| s.next_seq);
    let mut before = 0u64;
    for (other, oid) in streams.iter().zip(ids) {
        if std::ptr::eq(other, ps) {
            break;
        }
        if oid.map(|(i, _)| i) == Some(id) {
            before += other.entries.len() as u64;
        }
    }
    base + before
}

/// The entries encoding (see `block`) of pushed entries.
fn encode_push_entries(out: &mut Vec<u8>, entries: &[PushEntry<'_>]) {
    block::put_uvarint(out, entries.len() as u64);
    let mut prev = 0i64;
    for e in entries {
        block::put_varint(out, e.ts.wrapping_sub(prev));
        prev = e.ts;
    }
    for e in entries {
        block::put_uvarint(out, e.line.len() as u64);
    }
    for e in entries {
        block::put_uvarint(out, e.meta.len() as u64);
        for (n, v) in e.meta {
            block::put_bytes(out, n.as_bytes());
            block::put_bytes(out, v.as_bytes());
        }
    }
    for e in entries {
        out.extend_from_slice(e.line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Labels;

    /// The stream limit counts active streams, as Loki's does: streams whose chunks were closed
    /// for idleness no longer count, so a tenant whose pods come and go is not refused for good
    /// once it has seen `limit` streams within retention.
    /// A store whose chunks close at the first `maintain` (chunk idle period 0), with a stream
    /// limit.
    fn idle_store(max_streams: usize) -> (tempfile::TempDir, Arc<LogStore>) {
        idle_store_spilling(max_streams, LogsOptions::new("").spill_streams)
    }

    fn idle_store_spilling(max_streams: usize, spill_streams: usize) -> (tempfile::TempDir, Arc<LogStore>) {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = LogsOptions::new(dir.path());
        opts.max_streams_per_tenant = max_streams;
        opts.chunk_idle_period = Duration::ZERO;
        opts.spill_streams = spill_streams;
        let store = LogStore::open(opts).unwrap();
        (dir, store)
    }

    fn job_alias(job: &str) -> String {
        format!("{{job=\"{job}\"}}")
    }

    /// Pushes one 10-byte entry at t=1000 to `{job="<job>"}`, spelled as [`job_alias`] spells it.
    fn push_job(store: &LogStore, job: &str) -> AppendResult {
        let line = [b'x'; 10];
        let e = [PushEntry {
            ts: 1_000,
            line: &line,
            meta: &[],
        }];
        let alias = job_alias(job);
        let streams = [PushStream {
            key: StreamKey::New {
                alias: alias.as_bytes(),
                labels: Labels::from_pairs([("job", job)]).unwrap(),
            },
            entries: &e,
        }];
        store.append("t", &streams).unwrap()
    }

    #[test]
    fn stream_limit_counts_active_streams() {
        let (_dir, store) = idle_store(2);
        // Refused streams of one push of a new stream named `job`.
        let push = |job: &str| push_job(&store, job).refused_streams.len();
        assert_eq!([push("a"), push("b"), push("c")], [0, 0, 1], "a and b active");
        store.maintain(2_000).unwrap();
        assert_eq!(
            [push("c"), push("d"), push("e")],
            [0, 0, 1],
            "a and b idle, c and d active"
        );
    }

    /// A stream that goes idle keeps no client spelling and no slack in its closed-chunk list,
    /// and is still found, by its labels, when it comes back.
    /// Idle streams leave memory for an index file once `spill_streams` gathered, or once
    /// `spill_interval` passed: nothing of them is left in the registry, postings or aliases; one
    /// that comes back is a new stream.
    #[test]
    fn idle_streams_leave_memory_for_an_index_file() {
        // (streams in memory, postings entries, aliases, index files, spilled) after a maintain
        let state = |store: &LogStore| {
            store.maintain(2_000).unwrap();
            let inner = store.inner.lock();
            let postings: usize = inner
                .tenants
                .values()
                .flat_map(|t| t.postings.values())
                .map(|v| v.len())
                .sum();
            (
                inner.streams.len(),
                postings,
                inner.aliases.len(),
                inner.index.len(),
                store.stats.streams_spilled.load(Ordering::Relaxed),
            )
        };
        let (_dir, store) = idle_store(5000);
        for job in ["a", "b"] {
            push_job(&store, job);
        }
        assert_eq!(
            state(&store),
            (2, 2, 0, 0, 0),
            "2 idle streams: fewer than spill_streams, within the interval"
        );
        push_job(&store, "b");
        let alias = job_alias("b");
        let mut ids = Vec::new();
        store.resolve("t", &[alias.as_bytes()], &mut ids);
        assert_eq!(ids, [Some(1)]);
        store.inner.lock().last_spill -= store.opts.spill_interval;
        assert_eq!(state(&store), (0, 0, 0, 1, 2), "the interval passed");
        // A push by the id resolved before the spill stores nothing and says so.
        let e = [PushEntry {
            ts: 3_000,
            line: b"late",
            meta: &[],
        }];
        let res = store
            .append(
                "t",
                &[PushStream {
                    key: StreamKey::Known(1),
                    entries: &e,
                }],
            )
            .unwrap();
        assert_eq!((res.entries, res.gone_streams), (0, vec![0]));
        push_job(&store, "a");
        assert_eq!(
            store.inner.lock().streams.keys().copied().collect::<Vec<_>>(),
            [2],
            "a new id"
        );
        assert_eq!(state(&store), (1, 1, 0, 1, 2), "idle again, the interval restarted");
        let (_dir, store) = idle_store_spilling(5000, 3);
        for job in ["a", "b"] {
            push_job(&store, job);
        }
        assert_eq!(state(&store), (2, 2, 0, 0, 0));
        push_job(&store, "c");
        assert_eq!(state(&store), (0, 0, 0, 1, 3), "spill_streams gathered");
    }

    #[test]
    fn idle_streams_keep_only_what_queries_need() {
        let (_dir, store) = idle_store(5000);
        let jobs = ["a", "b", "c"];
        let aliases: Vec<String> = jobs.iter().map(|j| job_alias(j)).collect();
        let push = |i: usize| {
            push_job(&store, jobs[i]);
        };
        let resolved = || {
            let spelled: Vec<&[u8]> = aliases.iter().map(|a| a.as_bytes()).collect();
            let mut out = Vec::new();
            store.resolve("t", &spelled, &mut out);
            out
        };
        // (closed chunks, the list's capacity, holds a head or open chunk)
        let closed = |id: u32| {
            let inner = store.inner.lock();
            let s = inner.streams.get(&id);
            s.map(|s| (s.closed.len(), s.closed.capacity(), s.hot.is_some()))
        };
        (0..3).for_each(push);
        let ids = resolved();
        assert_eq!(ids, [Some(0), Some(1), Some(2)]);
        store.maintain(2_000).unwrap();
        assert_eq!(resolved(), [None, None, None], "idle streams forget their spelling");
        assert_eq!(
            closed(0),
            Some((1, 1, false)),
            "one closed chunk, no slack, nothing hot"
        );
        push(1);
        assert_eq!(closed(1), Some((1, 1, true)), "b is hot again");
        assert_eq!(
            resolved(),
            [None, Some(1), None],
            "the same stream, found by its labels"
        );
        assert_eq!(store.stats.streams_created.load(Ordering::Relaxed), 3);
        let entries = store
            .with_matching("t", &[], 0, i64::MAX, |v| {
                v.iter()
                    .map(|s| (s.id, s.closed.iter().map(|c| c.entries).sum::<u64>()))
                    .collect::<Vec<_>>()
            })
            .unwrap();
        assert_eq!(
            entries,
            [(0, 1), (1, 1), (2, 1)],
            "closed chunks kept (b's new entry is in its head)"
        );
    }

    /// What a stream's head holds after `maintain`: `lines` entries of 200 bytes, then one
    /// maintenance pass with the given idle periods. Wants: entries left in the head, the head's
    /// buffer capacity in bytes within `held`, blocks in the open chunk, chunks closed.
    fn check_head_memory(
        name: &str,
        (chunk_idle, head_idle): (Duration, Duration),
        lines: i64,
        (entries, held, open_blocks, closed): (usize, std::ops::RangeInclusive<usize>, usize, usize),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = LogsOptions::new(dir.path());
        opts.chunk_idle_period = chunk_idle;
        opts.head_idle_period = head_idle;
        let store = LogStore::open(opts).unwrap();
        let line = [b'x'; 200];
        let batch: Vec<PushEntry<'_>> = (0..lines)
            .map(|i| PushEntry {
                ts: 1_000 + i,
                line: &line,
                meta: &[],
            })
            .collect();
        let labels = Labels::from_pairs([("job", "a")]).unwrap();
        let streams = [PushStream {
            key: StreamKey::New {
                alias: b"{job=\"a\"}",
                labels,
            },
            entries: &batch,
        }];
        store.append("t", &streams).unwrap();
        store.maintain(2_000).unwrap();
        let inner = store.inner.lock();
        let s = inner.streams.values().next().unwrap();
        let h = &s.hot().head;
        let cap = h.lines.capacity() + h.ts.capacity() * 8 + h.line_lens.capacity() * 4 + h.meta.capacity();
        let got = (h.len(), s.hot().open.blocks.len(), s.closed.len());
        assert_eq!(
            got,
            (entries, open_blocks, closed),
            "{name}: (head entries, open blocks, closed chunks)"
        );
        assert!(held.contains(&cap), "{name}: head holds {cap} bytes, want {held:?}");
    }

    #[test]
    fn quiet_and_idle_streams_give_their_head_memory_back() {
        let hour = Duration::from_secs(3600);
        let zero = Duration::ZERO;
        // 50 lines = 10,000 bytes (a quarter block), 10 lines = 2,000 (under an eighth), 300 lines
        // = one 40 KiB block cut for size plus 19,200 bytes in a head that reserved a whole block.
        check_head_memory("chunk idle", (zero, hour), 50, (0, 0..=0, 0, 1));
        check_head_memory("active", (hour, hour), 50, (50, 10_000..=20_000, 0, 0));
        check_head_memory("quiet, worth a block", (hour, zero), 50, (0, 0..=0, 1, 0));
        check_head_memory("quiet, small: shrunk", (hour, zero), 10, (10, 2_000..=2_200, 0, 0));
        check_head_memory("busy: a block reserved", (hour, hour), 300, (96, 40_960..=48_000, 1, 0));
        check_head_memory("busy, then quiet", (hour, zero), 300, (0, 0..=0, 2, 0));
        check_head_memory("slow: grows as it fills", (hour, hour), 10, (10, 2_000..=4_500, 0, 0));
    }

    /// Every line of stream `{job=...}` of tenant "t", oldest first.
    fn lines_of(store: &LogStore, job: &str) -> Vec<String> {
        use crate::storage::logs::{Direction, LogReader, SelectRequest};
        let req = SelectRequest {
            tenant: "t".into(),
            matchers: vec![Matcher::new(MatchOp::Equal, "job", job).unwrap()],
            start: 0,
            end: i64::MAX,
            direction: Direction::Forward,
            limit: 0,
            line_contains: vec![],
        };
        store.select(&req).unwrap().map(|e| e.unwrap().entry.line).collect()
    }

    /// A data log written before chunk records listed their blocks still reads (such a chunk keeps
    /// its blocks in memory), and a chunk closed now keeps none in memory but reads the same,
    /// before and after a restart.
    #[test]
    fn closed_chunks_read_their_blocks_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogsOptions::new(dir.path());
        let expect: Vec<String> = (0..30).map(|i| format!("old line {i}")).collect();
        {
            let wal_opts = WalOptions {
                segment_size: opts.data_segment_size,
                sync: SyncPolicy::Never,
            };
            let mut data = Wal::open(&dir.path().join("data"), wal_opts).unwrap();
            let mut r = Vec::new();
            block::encode_stream(&mut r, 0, "t", Labels::from_pairs([("job", "old")]).unwrap().pairs());
            data.append(&r).unwrap();
            for (k, part) in expect.chunks(10).enumerate() {
                let mut e = EntriesBuf::default();
                for (i, l) in part.iter().enumerate() {
                    e.push(1_000 + (k * 10 + i) as i64, l.as_bytes(), &[]);
                }
                let mut raw = Vec::new();
                e.encode_from(0, &mut raw);
                let h = block::BlockHeader {
                    codec: 0,
                    stream: 0,
                    first_seq: k as u64 * 10,
                    entries: 10,
                    raw_len: raw.len() as u32,
                    min_t: e.min_t,
                    max_t: e.max_t,
                };
                block::encode_block(&mut r, &h, Codec::None, &raw).unwrap();
                data.append(&r).unwrap();
            }
            // The chunk record as it was: without the list (an empty list is one zero byte).
            block::encode_chunk(&mut r, 0, 30, 0, 1_000, 1_029, None, &[]);
            assert_eq!(r.pop(), Some(0));
            data.append(&r).unwrap();
            data.sync().unwrap();
        }
        let store = LogStore::open(opts.clone()).unwrap();
        assert_eq!(lines_of(&store, "old"), expect);
        let held = |store: &LogStore, job: &str| {
            let inner = store.inner.lock();
            let s = inner.streams.values().find(|s| s.key.get("job") == Some(job)).unwrap();
            s.closed.iter().map(|c| c.legacy_blocks.len()).collect::<Vec<_>>()
        };
        assert_eq!(held(&store, "old"), vec![3]);
        // New data: 300 lines of 200 bytes, cut into blocks for size, then the chunk closed.
        let line = [b'y'; 200];
        let batch: Vec<PushEntry<'_>> = (0..300)
            .map(|i| PushEntry {
                ts: 5_000 + i,
                line: &line,
                meta: &[],
            })
            .collect();
        let streams = [PushStream {
            key: StreamKey::New {
                alias: b"{job=\"new\"}",
                labels: Labels::from_pairs([("job", "new")]).unwrap(),
            },
            entries: &batch,
        }];
        store.append("t", &streams).unwrap();
        store.flush().unwrap();
        {
            let mut inner = store.inner.lock();
            let id = inner
                .streams
                .values()
                .find(|s| s.key.get("job") == Some("new"))
                .unwrap()
                .id;
            let st = Arc::clone(&store.stats);
            inner.close_chunk(id, &st).unwrap();
        }
        assert_eq!(held(&store, "new"), vec![0]);
        let new_lines = lines_of(&store, "new");
        assert_eq!(new_lines.len(), 300);
        store.close().unwrap();
        drop(store);
        let store = LogStore::open(opts).unwrap();
        assert_eq!(held(&store, "new"), vec![0]);
        assert_eq!(held(&store, "old"), vec![3]);
        assert_eq!(lines_of(&store, "new"), new_lines);
        assert_eq!(lines_of(&store, "old"), expect);
        store.close().unwrap();
    }
}
