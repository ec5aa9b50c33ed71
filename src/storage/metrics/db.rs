//! The metrics database: head + WAL under one lock, blocks on disk, and the background work that
//! cuts blocks, compacts them, applies retention and fsyncs the WAL.
//!
//! Durability contract: [`Appender::commit`] returns only after its WAL records were handed to the
//! OS (`write(2)`), so a killed process loses nothing acknowledged; a machine crash loses at most
//! the fsync interval (`wal_fsync`, default 1 s, or nothing with `always`).

use super::block::{self, Block, BlockWriter};
use super::head::{AppendError, ChunkLoc, Head, HeadChunk, LabelKey};
use super::read::{LoadedChunk, MetricMetadata, MetricsReader, SelectedSeries};
use super::walrec::{self, MetaEntry};
use super::{StorageError, io_err};
use crate::model::{Labels, Matcher};
use crate::storage::wal::{SyncPolicy, Wal, WalOptions, WalStats};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Options built by `app` from the configuration.
#[derive(Debug, Clone)]
pub struct MetricsOptions {
    pub dir: PathBuf,
    pub retention: Duration,
    /// 0 = unlimited.
    pub retention_bytes: u64,
    pub block_duration: Duration,
    pub wal_segment_size: u64,
    /// `None` = fsync before every acknowledgement.
    pub fsync_interval: Option<Duration>,
    pub too_far_in_future: Duration,
}

impl MetricsOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        MetricsOptions {
            dir: dir.into(),
            retention: Duration::from_secs(15 * 86_400),
            retention_bytes: 0,
            block_duration: Duration::from_secs(7200),
            wal_segment_size: 64 << 20,
            fsync_interval: Some(Duration::from_secs(1)),
            too_far_in_future: Duration::from_secs(600),
        }
    }
}

/// Why a sample was rejected. `message` is Prometheus's error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    OutOfOrder,
    Duplicate,
    OutOfBounds,
    TooFarInFuture,
}

impl RejectReason {
    pub const ALL: [RejectReason; 4] = [
        RejectReason::OutOfOrder,
        RejectReason::Duplicate,
        RejectReason::OutOfBounds,
        RejectReason::TooFarInFuture,
    ];

    pub fn message(self) -> &'static str {
        match self {
            RejectReason::OutOfOrder => "out of order sample",
            RejectReason::Duplicate => "duplicate sample for timestamp",
            RejectReason::OutOfBounds | RejectReason::TooFarInFuture => "out of bounds",
        }
    }

    /// Label value used in the rejection counter.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::OutOfOrder => "out_of_order",
            RejectReason::Duplicate => "duplicate",
            RejectReason::OutOfBounds => "out_of_bounds",
            RejectReason::TooFarInFuture => "too_far_in_future",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl From<AppendError> for RejectReason {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::OutOfOrder => RejectReason::OutOfOrder,
            AppendError::Duplicate => RejectReason::Duplicate,
            AppendError::OutOfBounds => RejectReason::OutOfBounds,
        }
    }
}

/// Counters read by `/metrics` (through `app`).
#[derive(Debug, Default)]
pub struct DbStats {
    pub samples_appended: AtomicU64,
    pub samples_rejected: [AtomicU64; 4],
    pub series_created: AtomicU64,
    pub series_removed: AtomicU64,
    pub head_series: AtomicU64,
    pub head_chunks_created: AtomicU64,
    pub blocks: AtomicU64,
    pub blocks_bytes: AtomicU64,
    pub head_compactions: AtomicU64,
    pub block_compactions: AtomicU64,
    pub compaction_seconds_total_micros: AtomicU64,
    pub compaction_failures: AtomicU64,
    pub retention_deletions: AtomicU64,
    pub replay_seconds_micros: AtomicU64,
    pub replayed_samples: AtomicU64,
}

impl DbStats {
    pub fn rejected(&self, r: RejectReason) -> u64 {
        self.samples_rejected[r.index()].load(Ordering::Relaxed)
    }
}

/// How a series is named in an append.
pub enum SeriesKey<'a> {
    /// Key bytes `name 0xff value 0xff ...` exactly as received, not validated, with their FNV hash
    /// and the number of pairs. A key equal to a stored series' key (same bytes, same pair count)
    /// names that series; any other goes through the commit's validator.
    Raw { hash: u64, key: &'a [u8], pairs: u32 },
    /// A validated label set.
    Owned(Labels),
}

/// Called by [`Appender::commit_with`] for a raw key the head does not know, with the series index:
/// returns the validated, normalised label set, or `None` to drop the series' samples (the caller
/// counts and reports why).
pub type Validator<'v> = dyn FnMut(usize) -> Option<Labels> + 'v;

/// Ref marking a series the validator refused.
const REFUSED: u32 = u32::MAX;

/// Result of a commit: appended count and rejections (the first few kept with their series index).
#[derive(Debug, Default)]
pub struct CommitResult {
    pub appended: u64,
    pub rejected: u64,
    /// (series index in the appender, timestamp, reason), at most [`MAX_REPORTED`] entries.
    pub first_rejections: Vec<(usize, i64, RejectReason)>,
}

/// Rejections reported individually per commit; the rest are only counted.
pub const MAX_REPORTED: usize = 16;

struct Inner {
    head: Head,
    wal: Wal,
    /// WAL segment -> highest sample time written into it (segments without an entry are covered by
    /// the next entry above them).
    seg_max_t: BTreeMap<u32, i64>,
    /// Series created in the head whose WAL record has not been written yet (after a failed write).
    unlogged: Vec<u32>,
    scratch_series: Vec<u8>,
    scratch_samples: Vec<u8>,
    scratch_meta: Vec<u8>,
    refs: Vec<u32>,
    accepted: Vec<(u32, i64, f64)>,
    new_refs: Vec<u32>,
    dirty: bool,
}

pub struct MetricsDb {
    opts: MetricsOptions,
    blocks_dir: PathBuf,
    inner: Mutex<Inner>,
    blocks: RwLock<Vec<Arc<Block>>>,
    metadata: RwLock<HashMap<String, MetaEntry>>,
    stats: Arc<DbStats>,
    wal_stats: Arc<WalStats>,
    /// Serialises head compaction, block compaction and retention.
    maintenance: Mutex<()>,
    wake: (Mutex<bool>, Condvar),
    closed: AtomicBool,
    bg: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl MetricsDb {
    /// Opens the store: loads blocks, replays the WAL into a fresh head, starts the background thread.
    pub fn open(opts: MetricsOptions) -> Result<Arc<MetricsDb>, StorageError> {
        let started = Instant::now();
        let dir = opts.dir.clone();
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let blocks_dir = dir.join("blocks");
        std::fs::create_dir_all(&blocks_dir).map_err(io_err("create", &blocks_dir))?;
        block::cleanup_tmp(&blocks_dir)?;
        let blocks = load_blocks(&blocks_dir)?;
        let block_ms = opts.block_duration.as_millis() as i64;
        let mut head = Head::open(&dir, block_ms)?;
        let blocks_max = blocks.iter().map(|b| b.meta().max_time).max().unwrap_or(i64::MIN);
        head.min_valid_t = blocks_max;
        let mut metadata: HashMap<String, MetaEntry> = HashMap::new();
        let mut replayed: u64 = 0;
        let wal_opts = WalOptions {
            segment_size: opts.wal_segment_size,
            sync: if opts.fsync_interval.is_some() {
                SyncPolicy::Never
            } else {
                SyncPolicy::Always
            },
        };
        let wal_dir = dir.join("wal");
        let (wal, _replay) = Wal::open_and_replay(&wal_dir, wal_opts, |rec: &[u8]| -> Result<(), StorageError> {
            let Some((&ty, body)) = rec.split_first() else {
                return Ok(());
            };
            match ty {
                walrec::REC_SERIES => walrec::decode_series(body, |r, ls| {
                    head.create(r, &ls);
                }),
                walrec::REC_SAMPLES => {
                    let mut res = Ok(());
                    walrec::decode_samples(body, |r, t, v| {
                        head.saw_ref(r);
                        if res.is_err() || head.series(r).is_none() {
                            return;
                        }
                        if let Ok(true) = head.check(r, t, v) {
                            replayed += 1;
                            res = head.append(r, t, v);
                        }
                    })?;
                    res
                }
                walrec::REC_METADATA => walrec::decode_metadata(body, |m| {
                    metadata.insert(m.family.clone(), m);
                }),
                // An unknown record type comes from a newer version: skip it rather than refuse to start.
                _ => Ok(()),
            }
        })?;
        // Series whose every sample was already in a block come back empty from replay: drop them.
        head.truncate(head.min_valid_t)?;
        let stats = Arc::new(DbStats::default());
        stats
            .replay_seconds_micros
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        stats.replayed_samples.store(replayed, Ordering::Relaxed);
        stats.head_series.store(head.live_series as u64, Ordering::Relaxed);
        let mut seg_max_t = BTreeMap::new();
        let wal_stats = wal.stats_handle();
        let cur = wal_stats.current_segment.load(Ordering::Relaxed) as u32;
        if cur > 0 && head.max_t != i64::MIN {
            seg_max_t.insert(cur.saturating_sub(1), head.max_t);
        }
        tracing::info!(
            samples = replayed,
            series = head.live_series,
            blocks = blocks.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Metrics store opened and write-ahead log replayed."
        );
        let db = Arc::new(MetricsDb {
            blocks_dir,
            inner: Mutex::new(Inner {
                head,
                wal,
                seg_max_t,
                unlogged: Vec::new(),
                scratch_series: Vec::new(),
                scratch_samples: Vec::new(),
                scratch_meta: Vec::new(),
                refs: Vec::new(),
                accepted: Vec::new(),
                new_refs: Vec::new(),
                dirty: false,
            }),
            blocks: RwLock::new(blocks.into_iter().map(Arc::new).collect()),
            metadata: RwLock::new(metadata),
            stats,
            wal_stats,
            maintenance: Mutex::new(()),
            wake: (Mutex::new(false), Condvar::new()),
            closed: AtomicBool::new(false),
            bg: Mutex::new(None),
            opts,
        });
        db.update_block_stats();
        let bg_db = Arc::clone(&db);
        let handle = std::thread::Builder::new()
            .name("metrics-maintenance".into())
            .spawn(move || bg_db.background())
            .map_err(io_err("spawn maintenance thread", &dir))?;
        *db.bg.lock() = Some(handle);
        Ok(db)
    }

    pub fn stats(&self) -> &Arc<DbStats> {
        &self.stats
    }

    pub fn wal_stats(&self) -> &Arc<WalStats> {
        &self.wal_stats
    }

    pub fn options(&self) -> &MetricsOptions {
        &self.opts
    }

    pub fn appender(&self) -> Appender<'_> {
        Appender {
            db: self,
            series: Vec::new(),
            samples: Vec::new(),
            metadata: Vec::new(),
        }
    }

    /// Stops background work, fsyncs the WAL. Idempotent. Appends after this fail with `Closed`.
    pub fn close(&self) -> Result<(), StorageError> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        {
            let (m, cv) = &self.wake;
            *m.lock() = true;
            cv.notify_all();
        }
        if let Some(h) = self.bg.lock().take() {
            let _ = h.join();
        }
        let mut inner = self.inner.lock();
        inner.wal.sync()?;
        Ok(())
    }

    fn notify(&self) {
        let (m, cv) = &self.wake;
        *m.lock() = true;
        cv.notify_one();
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
            if self.opts.fsync_interval.is_some() {
                // The fsync itself runs outside the head lock: with ~1 s of appends behind it, it can take tens of
                // milliseconds that ingestion should not wait for.
                let handle = {
                    let mut inner = self.inner.lock();
                    if inner.dirty {
                        inner.dirty = false;
                        Some(inner.wal.sync_handle())
                    } else {
                        None
                    }
                };
                if let Some(Err(e)) = handle.map(|h| h.and_then(|h| h.sync())) {
                    tracing::error!(error = %e, "Write-ahead log fsync failed.");
                    let _ = self.inner.lock().wal.sync();
                }
            }
            if self.head_needs_compaction() || last_maintenance.elapsed() > Duration::from_secs(60) {
                last_maintenance = Instant::now();
                if let Err(e) = self.maintain() {
                    self.stats.compaction_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "Metrics maintenance (compaction/retention) failed; will retry.");
                }
            }
        }
    }

    fn head_needs_compaction(&self) -> bool {
        let inner = self.inner.lock();
        let h = &inner.head;
        let bd = self.opts.block_duration.as_millis() as i64;
        h.min_t != i64::MAX && h.max_t.saturating_sub(h.min_t) > bd / 2 * 3
    }

    /// Cuts blocks out of the head while it spans more than 1.5 block durations, compacts blocks,
    /// applies retention. Also callable directly (tests, shutdown tooling).
    pub fn maintain(&self) -> Result<(), StorageError> {
        let _guard = self.maintenance.lock();
        while self.head_needs_compaction() {
            if self.closed.load(Ordering::SeqCst) {
                return Ok(());
            }
            self.compact_head()?;
        }
        while self.compact_blocks()? {}
        self.apply_retention()?;
        Ok(())
    }

    fn compact_head(&self) -> Result<(), StorageError> {
        let started = Instant::now();
        let bd = self.opts.block_duration.as_millis() as i64;
        let (cut_start, cut_end, mut snapshot) = {
            let mut inner = self.inner.lock();
            let cut_start = inner.head.min_t.div_euclid(bd) * bd;
            let cut_end = cut_start + bd;
            inner.head.min_valid_t = inner.head.min_valid_t.max(cut_end);
            inner.head.close_chunks_before(cut_end)?;
            // Compact keys (~150 B per series), not label sets (~900 B): this snapshot covers every
            // series and used to dominate peak RSS during a cut.
            let mut snap: Vec<(LabelKey, Vec<HeadChunk>)> = Vec::new();
            for s in inner.head.series.iter().flatten() {
                let chunks: Vec<HeadChunk> = s.closed.iter().filter(|c| c.meta.max_time < cut_end).copied().collect();
                if !chunks.is_empty() {
                    snap.push((s.key.clone(), chunks));
                }
            }
            // Start a new segment so that older segments can be dropped once this range is in a block.
            inner.wal.cut_segment()?;
            (cut_start, cut_end, snap)
        };
        snapshot.sort_by(|a, b| a.0.cmp_labels(&b.0));
        let mut meta = None;
        if !snapshot.is_empty() {
            let mut w = BlockWriter::create(&self.blocks_dir, cut_start, cut_end)?;
            let mut bufs: Vec<Vec<u8>> = Vec::new();
            for batch in snapshot.chunks(256) {
                for (key, chunks) in batch {
                    {
                        let mut inner = self.inner.lock();
                        bufs.resize_with(chunks.len(), Vec::new);
                        for (c, buf) in chunks.iter().zip(bufs.iter_mut()) {
                            inner.head.read_chunk(c, buf)?;
                        }
                    }
                    let list: Vec<(block::ChunkMeta, &[u8])> = chunks
                        .iter()
                        .zip(bufs.iter())
                        .map(|(c, b)| (c.meta, b.as_slice()))
                        .collect();
                    w.add_series(&key.to_labels(), &list)?;
                }
            }
            let m = w.finish(1, Vec::new())?;
            meta = Some((Block::open(&self.blocks_dir.join(&m.ulid))?, m));
        }
        let meta = {
            // Publishing the block and truncating the head happen under the head lock, which readers
            // also hold while they take their snapshot of the block list: a reader sees the range
            // either in the head or in the block, never in neither.
            let mut inner = self.inner.lock();
            let meta = meta.map(|(b, m)| {
                self.blocks.write().push(Arc::new(b));
                m
            });
            let removed = inner.head.truncate(cut_end)?;
            self.stats.series_removed.fetch_add(removed as u64, Ordering::Relaxed);
            self.stats
                .head_series
                .store(inner.head.live_series as u64, Ordering::Relaxed);
            self.checkpoint_wal(&mut inner, cut_end)?;
            meta
        };
        self.update_block_stats();
        self.stats.head_compactions.fetch_add(1, Ordering::Relaxed);
        self.stats
            .compaction_seconds_total_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        tracing::info!(
            min_time = cut_start,
            max_time = cut_end,
            series = meta.as_ref().map_or(0, |m| m.stats.num_series),
            samples = meta.as_ref().map_or(0, |m| m.stats.num_samples),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Head cut into a block."
        );
        Ok(())
    }

    /// Drops WAL segments whose samples are all before `mint`, keeping a checkpoint of the series and
    /// metadata still alive.
    fn checkpoint_wal(&self, inner: &mut Inner, mint: i64) -> Result<(), StorageError> {
        let current = self.wal_stats.current_segment.load(Ordering::Relaxed) as u32;
        let mut upto = None;
        for (&seg, &max_t) in &inner.seg_max_t {
            if seg >= current || max_t >= mint {
                break;
            }
            upto = Some(seg);
        }
        let Some(upto) = upto else { return Ok(()) };
        let mut recs: Vec<Vec<u8>> = Vec::new();
        let live: Vec<(u32, &super::head::MemSeries)> = inner
            .head
            .series
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_deref().map(|s| (i as u32, s)))
            .collect();
        for part in live.chunks(4096) {
            let mut r = Vec::new();
            walrec::encode_series_pairs(&mut r, part.iter().map(|(i, s)| (*i, s.pairs as usize, s.key.pairs())));
            recs.push(r);
        }
        {
            let md = self.metadata.read();
            if !md.is_empty() {
                let mut r = Vec::new();
                walrec::encode_metadata(&mut r, md.values());
                recs.push(r);
            }
        }
        match inner.wal.checkpoint(upto, recs.iter()) {
            Ok(()) => {}
            // After a repair that dropped the segments following a checkpoint, `upto` can be at or
            // below the existing checkpoint: nothing to drop then.
            Err(crate::storage::wal::WalError::InvalidCheckpoint { reason, .. }) => {
                tracing::debug!(upto, reason, "WAL checkpoint skipped.");
            }
            Err(e) => return Err(e.into()),
        }
        inner.seg_max_t.retain(|s, _| *s > upto);
        Ok(())
    }

    /// Merges blocks that together fill an aligned window of 3^k block durations. Returns whether it
    /// did anything.
    fn compact_blocks(&self) -> Result<bool, StorageError> {
        let bd = self.opts.block_duration.as_millis() as i64;
        let max_range = (self.opts.retention.as_millis() as i64 / 10).min(31 * 86_400_000);
        let blocks = self.blocks.read().clone();
        let newest = blocks.iter().map(|b| b.meta().max_time).max().unwrap_or(i64::MIN);
        let mut range = bd * 3;
        while range <= max_range {
            let mut groups: BTreeMap<i64, Vec<Arc<Block>>> = BTreeMap::new();
            for b in &blocks {
                let m = b.meta();
                let w = m.min_time.div_euclid(range);
                if m.max_time <= (w + 1) * range {
                    groups.entry(w).or_default().push(Arc::clone(b));
                }
            }
            for (w, group) in groups {
                let window_end = (w + 1) * range;
                let whole = group.iter().all(|b| b.meta().max_time - b.meta().min_time < range);
                if group.len() >= 2 && whole && window_end <= newest {
                    let started = Instant::now();
                    let refs: Vec<&Block> = group.iter().map(|b| b.as_ref()).collect();
                    let m = block::compact(&refs, &self.blocks_dir)?;
                    let nb = Arc::new(Block::open(&self.blocks_dir.join(&m.ulid))?);
                    {
                        let mut list = self.blocks.write();
                        list.retain(|b| !group.iter().any(|g| Arc::ptr_eq(b, g)));
                        list.push(nb);
                        list.sort_by_key(|b| b.meta().min_time);
                    }
                    for g in &group {
                        remove_block_dir(g.dir());
                    }
                    self.stats.block_compactions.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .compaction_seconds_total_micros
                        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    tracing::info!(blocks = group.len(), into = %m.ulid, "Blocks compacted.");
                    self.update_block_stats();
                    return Ok(true);
                }
            }
            range *= 3;
        }
        Ok(false)
    }

    fn apply_retention(&self) -> Result<(), StorageError> {
        let (head_max, head_chunk_bytes) = {
            let inner = self.inner.lock();
            (inner.head.max_t, inner.head.chunk_file_bytes())
        };
        let mut list = self.blocks.write();
        list.sort_by_key(|b| b.meta().min_time);
        let newest = list
            .iter()
            .map(|b| b.meta().max_time)
            .max()
            .unwrap_or(i64::MIN)
            .max(head_max);
        let cutoff = newest.saturating_sub(self.opts.retention.as_millis() as i64);
        let mut doomed: Vec<Arc<Block>> = Vec::new();
        list.retain(|b| {
            let keep = b.meta().max_time > cutoff;
            if !keep {
                doomed.push(Arc::clone(b));
            }
            keep
        });
        if self.opts.retention_bytes > 0 {
            let other = self.wal_stats.bytes_on_disk() + head_chunk_bytes;
            let mut total: u64 = list.iter().map(|b| b.size_bytes()).sum::<u64>() + other;
            while total > self.opts.retention_bytes && !list.is_empty() {
                let b = list.remove(0);
                total = total.saturating_sub(b.size_bytes());
                doomed.push(b);
            }
        }
        drop(list);
        for b in &doomed {
            tracing::info!(block = %b.meta().ulid, max_time = b.meta().max_time, "Block deleted by retention.");
            remove_block_dir(b.dir());
            self.stats.retention_deletions.fetch_add(1, Ordering::Relaxed);
        }
        if !doomed.is_empty() {
            self.update_block_stats();
        }
        Ok(())
    }

    fn update_block_stats(&self) {
        let list = self.blocks.read();
        self.stats.blocks.store(list.len() as u64, Ordering::Relaxed);
        self.stats
            .blocks_bytes
            .store(list.iter().map(|b| b.size_bytes()).sum(), Ordering::Relaxed);
    }

    /// Blocks currently open (oldest first).
    pub fn blocks(&self) -> Vec<Arc<Block>> {
        self.blocks.read().clone()
    }

    /// (min, max) sample time in the head, if it holds data.
    pub fn head_range(&self) -> Option<(i64, i64)> {
        let inner = self.inner.lock();
        (inner.head.min_t != i64::MAX).then_some((inner.head.min_t, inner.head.max_t))
    }

    pub fn head_memory_bytes(&self) -> usize {
        self.inner.lock().head.open_chunk_bytes()
    }

    fn commit(&self, app: &mut Appender<'_>, validate: &mut Validator<'_>) -> Result<CommitResult, StorageError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StorageError::Closed);
        }
        let now = now_ms();
        let future_limit = now.saturating_add(self.opts.too_far_in_future.as_millis() as i64);
        let half_block = self.opts.block_duration.as_millis() as i64 / 2;
        let mut res = CommitResult::default();
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        // 1. Resolve every series to a ref, creating new ones.
        let mut new_labels: Vec<(u32, Labels)> = Vec::new();
        inner.refs.clear();
        inner.new_refs.clear();
        for (idx, key) in app.series.iter().enumerate() {
            let found = match key {
                SeriesKey::Raw { hash, key, pairs } => inner
                    .head
                    .lookup(*hash, |s| s.key.as_bytes() == *key && s.pairs == *pairs),
                SeriesKey::Owned(ls) => inner.head.lookup(ls.stable_hash(), |s| s.key.eq_labels(ls)),
            };
            let r = match found {
                Some(r) => r,
                None => {
                    let ls = match key {
                        SeriesKey::Raw { .. } => match validate(idx) {
                            Some(ls) => ls,
                            None => {
                                inner.refs.push(REFUSED);
                                continue;
                            }
                        },
                        SeriesKey::Owned(ls) => ls.clone(),
                    };
                    // A raw key can miss only because it was unsorted or had empty values: the
                    // normalised set may still be known.
                    match inner.head.lookup(ls.stable_hash(), |s| s.key.eq_labels(&ls)) {
                        Some(r) => r,
                        None => {
                            let r = inner.head.next_ref();
                            inner.head.create(r, &ls);
                            inner.new_refs.push(r);
                            new_labels.push((r, ls));
                            r
                        }
                    }
                }
            };
            inner.refs.push(r);
        }
        // 2. Validate and append samples to the head in request order.
        inner.accepted.clear();
        let min_valid = inner.head.min_valid_t.max(inner.head.max_t.saturating_sub(half_block));
        let mut batch_max = i64::MIN;
        for &(si, t, v) in &app.samples {
            let r = inner.refs[si];
            if r == REFUSED {
                continue;
            }
            let outcome = if t > future_limit {
                Err(RejectReason::TooFarInFuture)
            } else if t < min_valid {
                Err(RejectReason::OutOfBounds)
            } else {
                inner.head.check(r, t, v).map_err(RejectReason::from)
            };
            match outcome {
                Ok(true) => {
                    inner.head.append(r, t, v)?;
                    inner.accepted.push((r, t, v));
                    batch_max = batch_max.max(t);
                }
                Ok(false) => {}
                Err(reason) => {
                    res.rejected += 1;
                    self.stats.samples_rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
                    if res.first_rejections.len() < MAX_REPORTED {
                        res.first_rejections.push((si, t, reason));
                    }
                }
            }
        }
        // 3. Metadata that changed.
        let changed_meta: Vec<MetaEntry> = {
            let md = self.metadata.read();
            app.metadata
                .iter()
                .filter(|m| md.get(&m.family) != Some(*m))
                .cloned()
                .collect()
        };
        // 4. WAL: series first (including any left unlogged by an earlier failed write), then samples.
        inner.scratch_series.clear();
        inner.scratch_samples.clear();
        inner.scratch_meta.clear();
        let mut pending: Vec<u32> = std::mem::take(&mut inner.unlogged);
        pending.extend_from_slice(&inner.new_refs);
        if !pending.is_empty() {
            // Series left unlogged by an earlier failed write are rebuilt from the head (rare).
            for r in &pending[..pending.len() - new_labels.len()] {
                if let Some(s) = inner.head.series(*r) {
                    new_labels.push((*r, s.labels()));
                }
            }
            walrec::encode_series(&mut inner.scratch_series, new_labels.iter().map(|(r, l)| (*r, l)));
        }
        if !inner.accepted.is_empty() {
            walrec::encode_samples(&mut inner.scratch_samples, &inner.accepted);
        }
        if !changed_meta.is_empty() {
            walrec::encode_metadata(&mut inner.scratch_meta, changed_meta.iter());
        }
        let recs: Vec<&[u8]> = [&inner.scratch_series, &inner.scratch_samples, &inner.scratch_meta]
            .into_iter()
            .filter(|r| !r.is_empty())
            .map(|r| r.as_slice())
            .collect();
        if !recs.is_empty() {
            if let Err(e) = inner.wal.append_batch(&recs) {
                inner.unlogged = pending;
                return Err(e.into());
            }
            inner.dirty = true;
            if batch_max != i64::MIN {
                let seg = self.wal_stats.current_segment.load(Ordering::Relaxed) as u32;
                let e = inner.seg_max_t.entry(seg).or_insert(i64::MIN);
                *e = (*e).max(batch_max);
            }
        }
        res.appended = inner.accepted.len() as u64;
        self.stats.samples_appended.fetch_add(res.appended, Ordering::Relaxed);
        self.stats
            .series_created
            .fetch_add(inner.new_refs.len() as u64, Ordering::Relaxed);
        self.stats
            .head_series
            .store(inner.head.live_series as u64, Ordering::Relaxed);
        self.stats
            .head_chunks_created
            .store(inner.head.chunks_created, Ordering::Relaxed);
        let needs_cut =
            inner.head.min_t != i64::MAX && inner.head.max_t.saturating_sub(inner.head.min_t) > half_block * 3;
        drop(guard);
        if !changed_meta.is_empty() {
            let mut md = self.metadata.write();
            for m in changed_meta {
                md.insert(m.family.clone(), m);
            }
        }
        if needs_cut {
            self.notify();
        }
        Ok(res)
    }

    /// Head series matching, with chunk data, and the blocks overlapping the range, taken together.
    #[allow(clippy::type_complexity)]
    fn select_head(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        with_data: bool,
    ) -> Result<(Vec<SelectedSeries>, Vec<Arc<Block>>), StorageError> {
        // Under the lock only find what to read; chunk files are read after it is released, so a large
        // query does not hold up ingestion.
        let mut found: Vec<(Labels, Vec<(i64, i64, ChunkLoc)>)> = Vec::new();
        let (blocks, dir) = {
            let inner = self.inner.lock();
            let blocks: Vec<Arc<Block>> = self
                .blocks
                .read()
                .iter()
                .filter(|b| b.meta().max_time > mint && b.meta().min_time <= maxt)
                .cloned()
                .collect();
            for r in inner.head.matching(matchers) {
                let Some(s) = inner.head.series(r) else { continue };
                if !s.has_data() || s.max_t < mint || s.min_t > maxt {
                    continue;
                }
                let mut locs = Vec::new();
                if with_data {
                    inner.head.locate_chunks(r, mint, maxt, &mut locs)?;
                }
                found.push((s.labels(), locs));
            }
            (blocks, inner.head.chunk_dir().to_path_buf())
        };
        let mut out = Vec::with_capacity(found.len());
        for (labels, locs) in found {
            let mut chunks = Vec::with_capacity(locs.len());
            for (min_t, max_t, loc) in locs {
                chunks.push(LoadedChunk {
                    min_t,
                    max_t,
                    data: loc.load(&dir)?,
                });
            }
            out.push(SelectedSeries { labels, chunks });
        }
        Ok((out, blocks))
    }

    fn select_all(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        with_data: bool,
    ) -> Result<Vec<SelectedSeries>, StorageError> {
        // Head first, blocks snapshotted under the same head lock (see `compact_head`).
        let (head, blocks) = self.select_head(matchers, mint, maxt, with_data)?;
        let mut merged: BTreeMap<Labels, Vec<LoadedChunk>> = BTreeMap::new();
        let mut buf = Vec::new();
        for b in &blocks {
            for (labels, refs) in b.select(matchers, mint, maxt)? {
                let entry = merged.entry(labels).or_default();
                if with_data {
                    for r in refs {
                        b.read_chunk(&r, &mut buf)?;
                        entry.push(LoadedChunk {
                            min_t: r.meta.min_time,
                            max_t: r.meta.max_time,
                            data: buf.clone(),
                        });
                    }
                }
            }
        }
        for s in head {
            merged.entry(s.labels).or_default().extend(s.chunks);
        }
        Ok(merged
            .into_iter()
            .map(|(labels, mut chunks)| {
                chunks.sort_by_key(|c| c.min_t);
                SelectedSeries { labels, chunks }
            })
            .collect())
    }
}

impl MetricsReader for MetricsDb {
    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<SelectedSeries>, StorageError> {
        self.select_all(matchers, mint, maxt, true)
    }

    fn series(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<Labels>, StorageError> {
        Ok(self
            .select_all(matchers, mint, maxt, false)?
            .into_iter()
            .map(|s| s.labels)
            .collect())
    }

    fn label_names(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<String>, StorageError> {
        let mut names = std::collections::BTreeSet::new();
        for ls in self.series(matchers, mint, maxt)? {
            for l in &ls {
                if !names.contains(&l.name) {
                    names.insert(l.name.clone());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, StorageError> {
        let mut values = std::collections::BTreeSet::new();
        for ls in self.series(matchers, mint, maxt)? {
            if let Some(v) = ls.get(name)
                && !values.contains(v)
            {
                values.insert(v.to_string());
            }
        }
        Ok(values.into_iter().collect())
    }

    fn metadata(&self) -> Vec<MetricMetadata> {
        let md = self.metadata.read();
        let mut v: Vec<MetricMetadata> = md
            .values()
            .map(|m| MetricMetadata {
                family: m.family.clone(),
                kind: metric_type_name(m.kind),
                help: m.help.clone(),
                unit: m.unit.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.family.cmp(&b.family));
        v
    }
}

/// Prometheus's lowercase names for the remote-write metric type enum.
pub fn metric_type_name(kind: u8) -> &'static str {
    match kind {
        1 => "counter",
        2 => "gauge",
        3 => "histogram",
        4 => "gaugehistogram",
        5 => "summary",
        6 => "info",
        7 => "stateset",
        _ => "unknown",
    }
}

fn load_blocks(dir: &Path) -> Result<Vec<Block>, StorageError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err("read", dir))? {
        let e = e.map_err(io_err("read", dir))?;
        let p = e.path();
        if !p.is_dir() || p.extension().is_some_and(|x| x == "tmp") {
            continue;
        }
        match Block::open(&p) {
            Ok(b) => out.push(b),
            // A damaged block must not stop the server: it is moved aside and reported.
            Err(e) => {
                tracing::error!(block = %p.display(), error = %e, "Cannot open block; moving it aside as .corrupt.");
                let _ = std::fs::rename(&p, p.with_extension("corrupt"));
            }
        }
    }
    // Blocks fully covered by a compacted block (a crash between compaction and deletion) are dropped.
    out.sort_by_key(|b| (b.meta().min_time, std::cmp::Reverse(b.meta().max_time)));
    let mut kept: Vec<Block> = Vec::new();
    for b in out {
        let covered = kept.iter().any(|k| {
            k.meta().min_time <= b.meta().min_time
                && k.meta().max_time >= b.meta().max_time
                && k.meta().compaction.level > b.meta().compaction.level
        });
        if covered {
            tracing::info!(block = %b.dir().display(), "Removing block already merged into a compacted block.");
            remove_block_dir(b.dir());
        } else {
            kept.push(b);
        }
    }
    Ok(kept)
}

fn remove_block_dir(dir: &Path) {
    // Rename first so that a crash mid-delete never leaves a half-deleted block that looks valid.
    let tmp = dir.with_extension("tmp");
    let target = if std::fs::rename(dir, &tmp).is_ok() {
        tmp
    } else {
        dir.to_path_buf()
    };
    if let Err(e) = std::fs::remove_dir_all(&target) {
        tracing::warn!(dir = %target.display(), error = %e, "Could not delete block directory.");
    }
}

/// Collects one request's series and samples; nothing is visible until [`Appender::commit`].
pub struct Appender<'a> {
    db: &'a MetricsDb,
    series: Vec<SeriesKey<'a>>,
    samples: Vec<(usize, i64, f64)>,
    metadata: Vec<MetaEntry>,
}

impl<'a> Appender<'a> {
    /// Adds a series and returns its index for [`Appender::add_sample`].
    pub fn add_series(&mut self, key: SeriesKey<'a>) -> usize {
        self.series.push(key);
        self.series.len() - 1
    }

    pub fn add_sample(&mut self, series: usize, t: i64, v: f64) {
        self.samples.push((series, t, v));
    }

    pub fn reserve(&mut self, series: usize, samples: usize) {
        self.series.reserve(series);
        self.samples.reserve(samples);
    }

    /// Metadata for a metric family; `kind` is the remote-write enum value.
    pub fn add_metadata(&mut self, family: &str, kind: u8, help: &str, unit: &str) {
        self.metadata.push(MetaEntry {
            family: family.to_string(),
            kind,
            help: help.to_string(),
            unit: unit.to_string(),
        });
    }

    pub fn num_samples(&self) -> usize {
        self.samples.len()
    }

    /// Validates and appends everything, writes the WAL, and returns what was appended and rejected.
    /// Rejected samples never fail the others. Raw keys the head does not know are refused (use
    /// [`Appender::commit_with`] to validate them).
    pub fn commit(self) -> Result<CommitResult, StorageError> {
        self.commit_with(&mut |_| None)
    }

    /// As [`Appender::commit`], calling `validate` for each raw key the head does not know.
    pub fn commit_with(mut self, validate: &mut Validator<'_>) -> Result<CommitResult, StorageError> {
        let db = self.db;
        db.commit(&mut self, validate)
    }

    /// Discards everything collected.
    pub fn rollback(self) {}
}
