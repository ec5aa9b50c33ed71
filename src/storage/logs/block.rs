//! Entry blocks, their compression, the per-chunk n-gram bloom filter, and the records of the logs
//! data log and WAL. Pure encoding: no I/O.
//!
//! # Entries encoding (an uncompressed block, and the body of a WAL `E` record)
//! ```text
//! [n uvarint]
//! n × [ts - prev_ts zigzag-varint]        prev_ts starts at 0; ns since the epoch
//! n × [line length uvarint]
//! n × ( [pairs uvarint] pairs × ([len uvarint][name] [len uvarint][value]) )   structured metadata
//! the n lines, back to back (UTF-8, no separators)
//! ```
//! Timestamps, lengths and metadata come first and the lines last, so the compressor sees long runs
//! of similar text: on the lokiload corpus the lines alone compressed 4.6 % smaller this way than
//! framed inline with their lengths (zstd level 3, 64 KiB blocks: 24.7 MB vs 25.9 MB of 122.7 MB).
//!
//! Codec choice, measured with `cargo bench --bench loki_push` (1,000,000 lines, 500 streams,
//! 122.7 MB raw, 2-vCPU VM; MB on disk after the shutdown flush / receiver CPU-s):
//! snappy 49.3 MB / 1.45 s; zstd-3 33.1 MB / 1.46 s; zstd-7 32.3 MB / 2.79 s (64 KiB blocks,
//! no detected_level). zstd-3 is the default: a third smaller than snappy for the same CPU, and
//! higher levels buy 2 % for twice the CPU. Blocks of 32 KiB instead of 64 KiB cost 3 % on disk
//! (35.0 vs 33.9 MB) and save 20 MiB of peak RSS (44 vs 64 MiB): 500 head blocks live in memory.
//! That layout (codec 2) is still read; zstd blocks are now written in the column layout below.
//! With the column layout the default block is 40 KiB (same bench, loaded VM, one run each: 32 KiB
//! 21.4-21.5 MB / 42-44 MiB RSS, 40 KiB 20.99 MB / 52.3 MiB, 48 KiB 20.67 MB / 59.8 MiB): margin under
//! the 21.5 MB disk target while staying well under 64 MiB of RSS.
//!
//! # Column blocks (codec byte 3, written for [`Codec::Zstd`])
//! Where the 35.0 MB of codec 2 went (lokiload corpus, zstd-3 per 32 KiB block; shares of each
//! block's compressed size in proportion to its sections compressed alone): lines 27.0 MB,
//! timestamps 4.1, lengths 0.9, metadata 0.75 (22.3 MB raw: `detected_level` on most entries),
//! block headers 0.16, chunk records (4 KiB filters) 2.06, stream records and framing 0.1. The
//! window is not the problem (zstd-3 over whole streams: 24.5 MB of lines against 25.3 in
//! 32 KiB blocks; a trained 32-112 KiB zstd dictionary: -4 %); the content model is. So:
//! ```text
//! payload: 4 sections, each [raw length uvarint] [compressed length uvarint] [zstd frame]
//!   head   (zstd-1)      timestamps: [k u8] [e u8] [k2 u8] [P uvarint] Rice bits (`TsCode`)
//!                        n × [line length uvarint]
//!                        [sets uvarint] sets × (metadata of one entry, as in the entries encoding)
//!                        n × [set index uvarint]
//!   templates (level+3)  [words uvarint] words × ([code u8] [len][word])
//!                        n × (the line's template, then 0x0A)
//!   variables (zstd-1)   the numbers of the templates, in order (see below)
//!   hex (zstd-1)         the bytes of the hex runs, in order
//! ```
//! The header's raw length stays the length of the entries encoding, which [`decompress`] rebuilds,
//! so readers see one layout; [`for_each_ts_len`] and [`decompress_head`] decompress only the
//! head section (`sum by (namespace) (rate({job=~".+"}[1m]))` over the lokiload corpus: 1.09 s
//! to 0.34 s, server CPU 0.60 to 0.28 s per run, `cargo bench --bench logql`).
//!
//! A template is the line with its variable parts replaced (CLP-style):
//! ```text
//! 0x11              a decimal number without leading zero (<= 19 digits): variables += uvarint
//! 0x12 L            a zero-padded decimal of L digits: variables += uvarint
//! 0x13 a L          L digits (6..=19) near digits a.. (a = 0 or 10) of the entry's 19-digit ns
//!                   timestamp (`ts=<ns>`, JSON `"ts": <s>.<frac>`, klog microseconds):
//!                   variables += zigzag varint of the difference (|d| < 64)
//! 0x15 f L          calendar field f of the entry time (UTC; year, month, day, hour, minute,
//!                   second, month*100+day), L (2..=4) digits: nothing in the variables
//! 0x14 n            a lowercase hex run of 2n (16..=510) characters with a letter: hex += n bytes
//! code              a word of 3+ letters from the block's dictionary; codes are bytes that do
//!                   not occur in the block's lines, so no literal needs escaping for them
//! 0x10 b            the literal byte b when it is 0x0A or 0x10..=0x15
//! other bytes       themselves
//! ```
//! Example: the single-entry block of `level=info ts=1795219200000000302 took=42ms` at
//! ts 1795219200000000302 (no word occurs often enough for a code) has the templates
//! `00 | 6C 65 76 65 6C 3D 69 6E 66 6F 20 74 73 3D | 13 00 13 | 20 74 6F 6F 6B 3D | 11 | 6D 73 | 0A`
//! (no words, "level=info ts=", the timestamp slot, " took=", a number, "ms", end) and the
//! variables `00 2A` (difference 0, then 42). Pinned with a whole block by
//! `compat-tests/fixtures/logs_records_columns.bin`.
//!
//! Measured on the lokiload corpus (blocks re-encoded from a codec-2 data dir, 150.4 MB of entries
//! encoding in 5,063 blocks): head 5.06 MB (timestamps 3.5, lengths ~0.9, metadata ~0.1; the Rice
//! code with burst/period classes took timestamps from 4.1 to 3.5 MB, one Rice parameter gave
//! 4.7), templates 7.27 (8.14 at zstd-3, 7.13 at zstd-9), variables 5.53, hex 3.26 (the JSON
//! trace ids: 16 random bytes per line). Calendar fields took the variables from 10.0 to 8.9 MB
//! and splitting off the hex runs to 8.8; word codes took the templates of a 200k-line sample
//! from 2.06 to 1.43 MB. The price is CPU: encoding the corpus's blocks took 2-3× codec 2's time
//! (1.15 s vs 0.52 s on a quiet core for an early version; 3.4 s vs 1.0 s for the final one with
//! the machine loaded) and decoding is ~3× slower (~400 MB/s of entries encoding vs ~1.2 GB/s),
//! which is why [`for_each_ts_len`] exists: `count_over_time` and friends skip the lines.
//!
//! # Records (payloads of the `storage::wal` framing, which adds length and CRC-32)
//! Every record starts with the magic byte `0x4C` ('L'), the format version `0x01` and a type byte.
//! ```text
//! 'S' stream:  [id uvarint] [len][tenant] [n uvarint] n × ([len][name] [len][value])
//! 'B' block:   [codec u8: 0 none, 1 snappy, 2 zstd, 3 columns] [stream id uvarint]
//!              [first seq uvarint] [entries uvarint] [raw length uvarint] [min ts zigzag]
//!              [max ts zigzag] the compressed entries encoding (codecs 0-2) or the column
//!              sections (codec 3), to the end of the record
//! 'C' chunk:   [stream id uvarint] [entries uvarint] [raw bytes uvarint] [min ts zigzag]
//!              [max ts zigzag] [bloom length uvarint] [bloom bytes]     (length 0: no bloom)
//!              [n uvarint] n × block                                    (absent before 2026-12)
//!              closes the stream's open chunk: every 'B' of that stream since its previous 'C',
//!              which the list names, so that a closed chunk's blocks need not stay in memory
//!   block:     [segment - previous block's segment uvarint]
//!              [offset uvarint: minus the previous block's offset when in the same segment]
//!              [record length uvarint] [first seq - (previous first seq + entries) zigzag]
//!              [entries uvarint] [raw length uvarint] [min ts - chunk's min ts zigzag]
//!              [max ts - min ts zigzag]          (the "previous" of the first block: all zero)
//! 'E' entries: [stream id uvarint] [first seq uvarint] the entries encoding       (WAL only)
//! ```
//! Example, the stream record of id 7, tenant "fake", labels {a="b"}:
//! `4C 01 53 | 07 | 04 66 61 6B 65 | 01 | 01 61 01 62`.
//! Pinned by `compat-tests/fixtures/logs_records_v1.bin` (see the test at the end of this file).
//!
//! Sequence numbers: each stream numbers its entries 0, 1, 2, ... in arrival order. A block and a
//! WAL record carry the number of their first entry, so replaying the WAL after a crash skips what
//! already reached a block: nothing is lost and nothing duplicated.
//!
//! # Bloom filter (`BLOOM_BYTES` bytes while open, 2 bits per item)
//! Items are the 4-byte windows ("4-grams") of every line whose 64-bit hash has its top two bits
//! zero: a quarter of them, chosen by content only. A substring needle then contains a gram that
//! was sampled in the line whenever one of its own grams is sampled, so a chunk whose filter lacks
//! any sampled gram of the needle cannot contain the needle (no false negatives). Bits are
//! `h & (m-1)` and `(h >> 32) & (m-1)`. Sampling keeps the filter small: the lokiload streams hold
//! 500-12,300 distinct sampled grams per stream-hour (measured), for which a 4 KiB filter answers
//! a 10-gram needle with a false positive rate under 5 %. A closing chunk's filter is folded in
//! halves while at most half its bits are set ([`Bloom::shrink`]; any power-of-two length is
//! read): the lokiload chunk records went from 2.06 to ~0.7 MB, the JSON streams' filters
//! (fuller than half) stay 4 KiB.

use super::LogsError;
use crate::model::{Label, Labels};
use crate::storage::wal::RecordPos;
use std::collections::HashMap;

/// Where a block record is in the data log, and what its header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockRef {
    pub pos: RecordPos,
    pub first_seq: u64,
    pub entries: u32,
    pub raw_len: u32,
    pub min_t: i64,
    pub max_t: i64,
}

impl BlockRef {
    /// The block record at `pos` with header `h`.
    pub fn new(pos: RecordPos, h: &BlockHeader) -> BlockRef {
        BlockRef {
            pos,
            first_seq: h.first_seq,
            entries: h.entries,
            raw_len: h.raw_len,
            min_t: h.min_t,
            max_t: h.max_t,
        }
    }
}

pub const MAGIC: u8 = 0x4C;
pub const VERSION: u8 = 1;
pub const REC_STREAM: u8 = b'S';
pub const REC_BLOCK: u8 = b'B';
pub const REC_CHUNK: u8 = b'C';
pub const REC_ENTRIES: u8 = b'E';
pub const BLOOM_BYTES: usize = 4096;
/// A closed chunk's filter is folded while at most this fraction (numerator, denominator) of its
/// bits is set.
const FOLD_MAX_FILL: (u64, u64) = (5, 10);

/// Block compression, chosen per block and recorded in it, so any mix can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Snappy,
    /// zstd at the given level.
    Zstd(i32),
}

impl Codec {
    fn byte(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Snappy => 1,
            Codec::Zstd(_) => 2,
        }
    }
}

pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn put_varint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uvarint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A cursor over a record or block.
pub struct Reader<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
}

const TRUNC: LogsError = LogsError::BadRecord("truncated");

// `ok_or(TRUNC)` builds and drops a `LogsError` on every success: that drop was 4.7 % of the
// server's CPU over the logql bench queries (perf), so the hot paths build errors lazily.
fn trunc() -> LogsError {
    TRUNC
}

fn bad_record(what: &'static str) -> LogsError {
    LogsError::BadRecord(what)
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn u8(&mut self) -> Result<u8, LogsError> {
        let b = *self.buf.get(self.pos).ok_or_else(trunc)?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    pub fn uvarint(&mut self) -> Result<u64, LogsError> {
        // Most varints of a block are one byte (lengths, small numbers).
        if let Some(&b) = self.buf.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        let mut v: u64 = 0;
        let mut shift = 0;
        loop {
            let b = self.u8()?;
            if shift >= 64 {
                return Err(LogsError::BadRecord("varint overflow"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
            shift += 7;
        }
    }

    pub fn varint(&mut self) -> Result<i64, LogsError> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], LogsError> {
        let end = self.pos.checked_add(n).ok_or_else(trunc)?;
        let s = self.buf.get(self.pos..end).ok_or_else(trunc)?;
        self.pos = end;
        Ok(s)
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], LogsError> {
        let n = self.uvarint()?;
        self.take(usize::try_from(n).map_err(|_| TRUNC)?)
    }

    pub fn str(&mut self) -> Result<&'a str, LogsError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| LogsError::BadRecord("invalid UTF-8"))
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos.min(self.buf.len())..];
        self.pos = self.buf.len();
        s
    }
}

/// Starts a record of type `ty` in `out` (cleared).
pub fn record_header(out: &mut Vec<u8>, ty: u8) {
    out.clear();
    out.extend_from_slice(&[MAGIC, VERSION, ty]);
}

/// Checks magic and version, returns the type and a reader over the body.
pub fn open_record(rec: &[u8]) -> Result<(u8, Reader<'_>), LogsError> {
    match rec {
        [MAGIC, VERSION, ty, ..] => Ok((*ty, Reader { buf: rec, pos: 3 })),
        [MAGIC, v, ..] => Err(LogsError::UnsupportedVersion(*v)),
        _ => Err(LogsError::BadRecord("bad magic")),
    }
}

pub fn encode_stream<'a>(
    out: &mut Vec<u8>,
    id: u32,
    tenant: &str,
    labels: impl Iterator<Item = (&'a str, &'a str)> + Clone,
) {
    record_header(out, REC_STREAM);
    put_uvarint(out, u64::from(id));
    put_bytes(out, tenant.as_bytes());
    put_uvarint(out, labels.clone().count() as u64);
    for (name, value) in labels {
        put_bytes(out, name.as_bytes());
        put_bytes(out, value.as_bytes());
    }
}

pub fn decode_stream(r: &mut Reader<'_>) -> Result<(u32, String, Labels), LogsError> {
    let id = u32::try_from(r.uvarint()?).map_err(|_| LogsError::BadRecord("stream id"))?;
    let tenant = r.str()?.to_string();
    let labels = decode_labels(r)?;
    Ok((id, tenant, labels))
}

/// A label count, then each label's name and value (`put_bytes`), in label order: the label set
/// of a stream record and of an index file's stream.
pub fn decode_labels(r: &mut Reader<'_>) -> Result<Labels, LogsError> {
    let n = r.uvarint()?;
    let mut v = Vec::with_capacity(n.min(64) as usize);
    for _ in 0..n {
        let name = r.str()?;
        let value = r.str()?;
        v.push(Label::new(name, value));
    }
    Labels::from_sorted(v).map_err(|_| LogsError::BadRecord("stream labels"))
}

/// Header of a block record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    pub codec: u8,
    pub stream: u32,
    pub first_seq: u64,
    pub entries: u32,
    pub raw_len: u32,
    pub min_t: i64,
    pub max_t: i64,
}

/// Writes a block record: header, then `raw` (an entries encoding) compressed with `codec`.
/// `scratch` is a reusable compression buffer.
pub fn encode_block(out: &mut Vec<u8>, h: &BlockHeader, codec: Codec, raw: &[u8]) -> Result<(), LogsError> {
    record_header(out, REC_BLOCK);
    out.push(codec.byte());
    put_uvarint(out, u64::from(h.stream));
    put_uvarint(out, h.first_seq);
    put_uvarint(out, u64::from(h.entries));
    put_uvarint(out, raw.len() as u64);
    put_varint(out, h.min_t);
    put_varint(out, h.max_t);
    match codec {
        Codec::None => out.extend_from_slice(raw),
        Codec::Snappy => {
            let start = out.len();
            out.resize(start + snap::raw::max_compress_len(raw.len()), 0);
            let n = snap::raw::Encoder::new()
                .compress(raw, &mut out[start..])
                .map_err(|e| LogsError::Codec(e.to_string()))?;
            out.truncate(start + n);
        }
        Codec::Zstd(level) => {
            let start = out.len();
            out.resize(start + zstd::zstd_safe::compress_bound(raw.len()), 0);
            let n = zstd::bulk::compress_to_buffer(raw, &mut out[start..], level)
                .map_err(|e| LogsError::Codec(e.to_string()))?;
            out.truncate(start + n);
        }
    }
    Ok(())
}

/// Parses a block record body (after the type byte); returns the header and the compressed bytes.
pub fn decode_block_header<'a>(r: &mut Reader<'a>) -> Result<(BlockHeader, &'a [u8]), LogsError> {
    let codec = r.u8()?;
    let stream = u32::try_from(r.uvarint()?).map_err(|_| LogsError::BadRecord("stream id"))?;
    let first_seq = r.uvarint()?;
    let entries = u32::try_from(r.uvarint()?).map_err(|_| LogsError::BadRecord("entries"))?;
    let raw_len = u32::try_from(r.uvarint()?).map_err(|_| LogsError::BadRecord("raw length"))?;
    let min_t = r.varint()?;
    let max_t = r.varint()?;
    let h = BlockHeader {
        codec,
        stream,
        first_seq,
        entries,
        raw_len,
        min_t,
        max_t,
    };
    Ok((h, r.rest()))
}

/// Decompresses a block's payload into `out` (cleared).
pub fn decompress(h: &BlockHeader, data: &[u8], out: &mut Vec<u8>) -> Result<(), LogsError> {
    out.clear();
    let raw_len = h.raw_len as usize;
    match h.codec {
        0 => out.extend_from_slice(data),
        1 => {
            out.resize(raw_len, 0);
            let n = snap::raw::Decoder::new()
                .decompress(data, out)
                .map_err(|e| LogsError::Codec(e.to_string()))?;
            out.truncate(n);
        }
        CODEC_COLUMNS => return decompress_columns(h, data, out),
        2 => {
            out.resize(raw_len, 0);
            let n = zstd_into(data, out.as_mut_slice())?;
            out.truncate(n);
        }
        other => return Err(LogsError::UnknownCodec(other)),
    }
    if out.len() != raw_len {
        return Err(LogsError::BadRecord("block length mismatch"));
    }
    Ok(())
}

/// One decoded entry: timestamp (ns), line, structured metadata.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub ts: i64,
    pub line: String,
    pub metadata: Vec<(String, String)>,
}

/// Entries being collected in the entries encoding's column order, so that encoding a block or a
/// WAL record is three copies. Also the head block of a stream.
#[derive(Debug, Default, Clone)]
pub struct EntriesBuf {
    pub ts: Vec<i64>,
    pub line_lens: Vec<u32>,
    /// Per entry: `[pairs uvarint] pairs × ([len][name] [len][value])`, back to back.
    pub meta: Vec<u8>,
    pub lines: Vec<u8>,
    pub min_t: i64,
    pub max_t: i64,
}

impl EntriesBuf {
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// Gives back spare capacity (a quiet stream's head, see `LogsOptions::head_idle_period`).
    pub fn shrink_to_fit(&mut self) {
        self.ts.shrink_to_fit();
        self.line_lens.shrink_to_fit();
        self.meta.shrink_to_fit();
        self.lines.shrink_to_fit();
    }

    pub fn clear(&mut self) {
        self.ts.clear();
        self.line_lens.clear();
        self.meta.clear();
        self.lines.clear();
    }

    /// Raw bytes held (lines + metadata + 12 bytes per entry), for size decisions.
    pub fn bytes(&self) -> usize {
        self.lines.len() + self.meta.len() + self.ts.len() * 12
    }

    pub fn push(&mut self, ts: i64, line: &[u8], meta: &[(&str, &str)]) {
        if self.ts.is_empty() {
            self.min_t = ts;
            self.max_t = ts;
        } else {
            self.min_t = self.min_t.min(ts);
            self.max_t = self.max_t.max(ts);
        }
        self.ts.push(ts);
        self.line_lens.push(line.len() as u32);
        self.lines.extend_from_slice(line);
        put_uvarint(&mut self.meta, meta.len() as u64);
        for (n, v) in meta {
            put_bytes(&mut self.meta, n.as_bytes());
            put_bytes(&mut self.meta, v.as_bytes());
        }
    }

    /// Appends the entries encoding of entries `[from, len)` to `out`.
    pub fn encode_from(&self, from: usize, out: &mut Vec<u8>) {
        let n = self.ts.len() - from;
        put_uvarint(out, n as u64);
        let mut prev = 0i64;
        for &t in &self.ts[from..] {
            put_varint(out, t.wrapping_sub(prev));
            prev = t;
        }
        for &l in &self.line_lens[from..] {
            put_uvarint(out, u64::from(l));
        }
        if from == 0 {
            out.extend_from_slice(&self.meta);
            out.extend_from_slice(&self.lines);
        } else {
            let (meta_off, line_off) = self.offsets(from);
            out.extend_from_slice(&self.meta[meta_off..]);
            out.extend_from_slice(&self.lines[line_off..]);
        }
    }

    /// Byte offsets in `meta` and `lines` where entry `i` starts.
    fn offsets(&self, i: usize) -> (usize, usize) {
        let line_off: usize = self.line_lens[..i].iter().map(|&l| l as usize).sum();
        let mut r = Reader::new(&self.meta);
        for _ in 0..i {
            let pairs = r.uvarint().unwrap_or(0);
            for _ in 0..pairs * 2 {
                let _ = r.bytes();
            }
        }
        (r.pos, line_off)
    }

    /// Decodes entries `[from, len)` into owned entries.
    pub fn decode_from(&self, from: usize, out: &mut Vec<Entry>) -> Result<(), LogsError> {
        let mut raw = Vec::new();
        self.encode_from(from, &mut raw);
        decode_entries(&raw, out)
    }
}

/// Calls `f(ts, line, metadata pairs)` for every entry of an entries encoding, borrowing from `raw`.
pub fn for_each_entry<'a>(
    raw: &'a [u8],
    mut f: impl FnMut(i64, &'a [u8], &mut dyn Iterator<Item = (&'a [u8], &'a [u8])>),
) -> Result<(), LogsError> {
    walk_entries(raw, true, |ts, _, line, meta| f(ts, line, meta))
}

/// [`for_each_entry`] without the lines, for what [`decompress_head`] wrote (or any entries
/// encoding): calls `f(ts, line length, metadata pairs)`.
pub fn for_each_entry_head<'a>(
    raw: &'a [u8],
    mut f: impl FnMut(i64, u32, &mut dyn Iterator<Item = (&'a [u8], &'a [u8])>),
) -> Result<(), LogsError> {
    walk_entries(raw, false, |ts, len, _, meta| f(ts, len, meta))
}

/// Skips `n` varints from `pos`; returns the position after them.
fn skip_varints(buf: &[u8], mut pos: usize, n: usize) -> Result<usize, LogsError> {
    for _ in 0..n {
        loop {
            let b = *buf.get(pos).ok_or_else(trunc)?;
            pos += 1;
            if b < 0x80 {
                break;
            }
        }
    }
    Ok(pos)
}

/// Walks the three per-entry columns of an entries encoding side by side (one reader each, so
/// nothing is collected per block), and the lines when `lines` (else `line` is empty).
fn walk_entries<'a>(
    raw: &'a [u8],
    lines: bool,
    mut f: impl FnMut(i64, u32, &'a [u8], &mut dyn Iterator<Item = (&'a [u8], &'a [u8])>),
) -> Result<(), LogsError> {
    let mut tr = Reader::new(raw);
    let n = usize::try_from(tr.uvarint()?).map_err(|_| TRUNC)?;
    if n > raw.len() {
        return Err(LogsError::BadRecord("entry count"));
    }
    let lens_at = skip_varints(raw, tr.pos, n)?;
    let meta_at = skip_varints(raw, lens_at, n)?;
    let mut lr = Reader { buf: raw, pos: lens_at };
    let mut meta = Reader { buf: raw, pos: meta_at };
    let mut line_r = Reader::new(&[]);
    if lines {
        // Skip the metadata section to find the lines.
        for _ in 0..n {
            let pairs = meta.uvarint()?;
            for _ in 0..pairs * 2 {
                meta.bytes()?;
            }
        }
        line_r = Reader::new(&raw[meta.pos..]);
        meta.pos = meta_at;
    }
    let mut ts = 0i64;
    for _ in 0..n {
        ts = ts.wrapping_add(tr.varint()?);
        let len = lr.uvarint()?;
        let line = if lines {
            line_r.take(usize::try_from(len).map_err(|_| TRUNC)?)?
        } else {
            &[]
        };
        let len = u32::try_from(len).map_err(|_| TRUNC)?;
        let pairs = meta.uvarint()?;
        let mut err = false;
        let mut it = (0..pairs).map_while(|_| match (meta.bytes(), meta.bytes()) {
            (Ok(n), Ok(v)) => Some((n, v)),
            _ => {
                err = true;
                None
            }
        });
        f(ts, len, line, &mut it);
        // The callback may skip the metadata; the reader must still pass over it.
        for _ in it.by_ref() {}
        drop(it);
        if err {
            return Err(TRUNC);
        }
    }
    Ok(())
}

/// Decodes an entries encoding into owned entries (appended to `out`).
pub fn decode_entries(raw: &[u8], out: &mut Vec<Entry>) -> Result<(), LogsError> {
    for_each_entry(raw, |ts, line, meta| {
        out.push(Entry {
            ts,
            line: String::from_utf8_lossy(line).into_owned(),
            metadata: meta
                .map(|(n, v)| {
                    (
                        String::from_utf8_lossy(n).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect(),
        })
    })
}

/// A decoded chunk record.
#[derive(Debug, Clone)]
pub struct ChunkRecord {
    pub stream: u32,
    pub entries: u64,
    pub raw_bytes: u64,
    pub min_t: i64,
    pub max_t: i64,
    pub bloom: Option<Bloom>,
    /// `None` in a record written before chunk records listed their blocks.
    pub(crate) blocks: Option<Vec<BlockRef>>,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_chunk(
    out: &mut Vec<u8>,
    stream: u32,
    entries: u64,
    raw_bytes: u64,
    min_t: i64,
    max_t: i64,
    bloom: Option<&Bloom>,
    blocks: &[BlockRef],
) {
    record_header(out, REC_CHUNK);
    put_uvarint(out, u64::from(stream));
    put_uvarint(out, entries);
    put_uvarint(out, raw_bytes);
    put_varint(out, min_t);
    put_varint(out, max_t);
    put_bytes(out, bloom.map_or(&[][..], |b| &b.0[..]));
    put_uvarint(out, blocks.len() as u64);
    let (mut segment, mut offset, mut next_seq) = (0u32, 0u64, 0u64);
    for b in blocks {
        put_uvarint(out, u64::from(b.pos.segment.wrapping_sub(segment)));
        put_uvarint(
            out,
            if b.pos.segment == segment {
                b.pos.offset.wrapping_sub(offset)
            } else {
                b.pos.offset
            },
        );
        put_uvarint(out, u64::from(b.pos.len));
        put_varint(out, b.first_seq.wrapping_sub(next_seq) as i64);
        put_uvarint(out, u64::from(b.entries));
        put_uvarint(out, u64::from(b.raw_len));
        put_varint(out, b.min_t.wrapping_sub(min_t));
        put_varint(out, b.max_t.wrapping_sub(b.min_t));
        (segment, offset, next_seq) = (
            b.pos.segment,
            b.pos.offset,
            b.first_seq.wrapping_add(u64::from(b.entries)),
        );
    }
}

pub fn decode_chunk(r: &mut Reader<'_>) -> Result<ChunkRecord, LogsError> {
    let stream = u32::try_from(r.uvarint()?).map_err(|_| LogsError::BadRecord("stream id"))?;
    let entries = r.uvarint()?;
    let raw_bytes = r.uvarint()?;
    let min_t = r.varint()?;
    let max_t = r.varint()?;
    let bloom = r.bytes()?;
    let blocks = if r.pos < r.buf.len() {
        Some(decode_chunk_blocks(r, min_t)?)
    } else {
        None
    };
    Ok(ChunkRecord {
        stream,
        entries,
        raw_bytes,
        min_t,
        max_t,
        bloom: (!bloom.is_empty()).then(|| Bloom(bloom.to_vec().into_boxed_slice())),
        blocks,
    })
}

fn decode_chunk_blocks(r: &mut Reader<'_>, min_t: i64) -> Result<Vec<BlockRef>, LogsError> {
    let u32_of = |v: u64, what| u32::try_from(v).map_err(|_| LogsError::BadRecord(what));
    let n = r.uvarint()?;
    // Every block takes at least 8 bytes: a count beyond that is corrupt (and no allocation for it).
    if n > (r.buf.len() - r.pos) as u64 / 8 {
        return Err(bad_record("chunk block count"));
    }
    let mut out = Vec::with_capacity(n as usize);
    let (mut segment, mut offset, mut next_seq) = (0u32, 0u64, 0u64);
    for _ in 0..n {
        let seg = segment.wrapping_add(u32_of(r.uvarint()?, "block segment")?);
        let off = r.uvarint()?;
        let off = if seg == segment { offset.wrapping_add(off) } else { off };
        let len = u32_of(r.uvarint()?, "block length")?;
        let first_seq = next_seq.wrapping_add(r.varint()? as u64);
        let entries = u32_of(r.uvarint()?, "block entries")?;
        let raw_len = u32_of(r.uvarint()?, "block raw length")?;
        let b_min = min_t.wrapping_add(r.varint()?);
        let b_max = b_min.wrapping_add(r.varint()?);
        (segment, offset, next_seq) = (seg, off, first_seq.wrapping_add(u64::from(entries)));
        out.push(BlockRef {
            pos: RecordPos {
                segment: seg,
                offset: off,
                len,
            },
            first_seq,
            entries,
            raw_len,
            min_t: b_min,
            max_t: b_max,
        });
    }
    Ok(out)
}

/// A WAL entries record for entries `[from, len)` of `buf`, the first of which has number `first_seq`.
pub fn encode_entries(out: &mut Vec<u8>, stream: u32, first_seq: u64, buf: &EntriesBuf, from: usize) {
    record_header(out, REC_ENTRIES);
    put_uvarint(out, u64::from(stream));
    put_uvarint(out, first_seq);
    buf.encode_from(from, out);
}

/// Parses an entries record body: stream id, first sequence number, the entries encoding.
pub fn decode_entries_record<'a>(r: &mut Reader<'a>) -> Result<(u32, u64, &'a [u8]), LogsError> {
    let stream = u32::try_from(r.uvarint()?).map_err(|_| LogsError::BadRecord("stream id"))?;
    let first_seq = r.uvarint()?;
    Ok((stream, first_seq, r.rest()))
}

#[inline]
fn gram_hash(g: u32) -> u64 {
    // A multiplicative hash is enough for 4-byte keys and costs ~1 ns: measured 0.4 s of the 3 s
    // receiver CPU for 122.7 MB would be far too much for SipHash.
    (u64::from(g) ^ 0x9E37_79B9).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[inline]
fn sampled(h: u64) -> bool {
    h >> 62 == 0
}

/// Calls `f` with the hash of every sampled 4-gram of `s`.
#[inline]
pub fn for_each_sampled_gram(s: &[u8], mut f: impl FnMut(u64)) {
    for w in s.windows(4) {
        let h = gram_hash(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        if sampled(h) {
            f(h);
        }
    }
}

/// A fixed-size bloom filter over sampled 4-grams (see the module docs).
#[derive(Clone)]
pub struct Bloom(pub Box<[u8]>);

impl std::fmt::Debug for Bloom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bloom({} bytes)", self.0.len())
    }
}

impl Default for Bloom {
    fn default() -> Self {
        Bloom(vec![0u8; BLOOM_BYTES].into_boxed_slice())
    }
}

impl Bloom {
    #[inline]
    fn bits(&self, h: u64) -> (usize, usize) {
        let mask = self.0.len() * 8 - 1;
        ((h as usize) & mask, ((h >> 32) as usize) & mask)
    }

    pub fn add_line(&mut self, line: &[u8]) {
        let bytes = &mut self.0;
        let mask = bytes.len() * 8 - 1;
        for_each_sampled_gram(line, |h| {
            let (a, b) = ((h as usize) & mask, ((h >> 32) as usize) & mask);
            bytes[a >> 3] |= 1 << (a & 7);
            bytes[b >> 3] |= 1 << (b & 7);
        });
    }

    /// Folds the filter in halves (OR of the two halves: bit `a` moves to `a mod m/2`, which is
    /// where a filter of half the size puts it) while the result stays at most `FOLD_MAX_FILL`
    /// set, so a closed chunk's filter is sized to what it holds.
    pub fn shrink(&mut self) {
        while self.0.len() > 64 && self.0.len().is_power_of_two() {
            let half = self.0.len() / 2;
            let (a, b) = self.0.split_at(half);
            let ones: u64 = a.iter().zip(b).map(|(x, y)| u64::from((x | y).count_ones())).sum();
            if ones * FOLD_MAX_FILL.1 > (half as u64 * 8) * FOLD_MAX_FILL.0 {
                break;
            }
            let folded: Vec<u8> = a.iter().zip(b).map(|(x, y)| x | y).collect();
            self.0 = folded.into_boxed_slice();
        }
    }

    /// False only when `needle` cannot occur in any line added.
    pub fn may_contain(&self, needle: &[u8]) -> bool {
        if self.0.is_empty() || !self.0.len().is_power_of_two() {
            return true;
        }
        let mut ok = true;
        for_each_sampled_gram(needle, |h| {
            let (a, b) = self.bits(h);
            ok &= self.0[a >> 3] & (1 << (a & 7)) != 0 && self.0[b >> 3] & (1 << (b & 7)) != 0;
        });
        ok
    }
}

// ---------------------------------------------------------------------------------------------
// Column layout (codec byte 3): see "Column blocks" in the module docs.

/// Codec byte of a block in the column layout (written for [`Codec::Zstd`]).
pub const CODEC_COLUMNS: u8 = 3;

/// Template bytes with a meaning; a literal one is written after `T_ESC`.
const T_END: u8 = b'\n';
const T_ESC: u8 = 0x10;
const T_NUM: u8 = 0x11;
const T_PADNUM: u8 = 0x12;
const T_TSNUM: u8 = 0x13;
const T_HEX: u8 = 0x14;
const T_CAL: u8 = 0x15;
/// Rice quotients from this many ones on are an escape followed by the raw 64-bit value.
const RICE_ESCAPE: u64 = 32;

#[inline]
fn reserved(b: u8) -> bool {
    b == T_END || (T_ESC..=T_CAL).contains(&b)
}

/// Calendar fields of an entry time (UTC) that `T_CAL` slots name: year, month, day, hour,
/// minute, second, month × 100 + day (klog's `I1121`).
#[derive(Clone, Copy)]
struct Calendar {
    secs: i64,
    f: [u64; 7],
}

impl Calendar {
    const NONE: Calendar = Calendar {
        secs: i64::MIN,
        f: [u64::MAX; 7],
    };

    /// The fields of `ts` (ns), reusing `self` when it is the same second.
    #[inline]
    fn of(&mut self, ts: i64) -> &[u64; 7] {
        let secs = ts.div_euclid(1_000_000_000);
        if secs != self.secs {
            let (y, m, d) = crate::model::text::civil_from_days(secs.div_euclid(86_400));
            let (m, d) = (u64::from(m), u64::from(d));
            let sod = secs.rem_euclid(86_400) as u64;
            *self = Calendar {
                secs,
                f: [y.max(0) as u64, m, d, sod / 3600, sod / 60 % 60, sod % 60, m * 100 + d],
            };
        }
        &self.f
    }
}

const POW10: [u64; 20] = {
    let mut p = [1u64; 20];
    let mut i = 1;
    while i < 20 {
        p[i] = p[i - 1] * 10;
        i += 1;
    }
    p
};

/// The number a `T_TSNUM` slot predicts: `L` decimal digits of the entry's 19-digit timestamp,
/// from digit `a` (0: the prefix, e.g. `ts=<ns>`, 10: just after the seconds, e.g. the fraction
/// of `"ts": 1795219200.0000002` or klog's microseconds).
#[inline]
fn ts_digits(ts: i64, a: usize, l: usize) -> Option<u64> {
    let k = 19usize.checked_sub(a + l)?;
    if ts < 0 || l == 0 || l > 19 {
        return None;
    }
    Some((ts as u64) / POW10[k] % POW10[l])
}

/// "00" to "99", for writing two digits per division.
const DIGIT_PAIRS: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// Writes `v` in decimal, left-padded with zeros to `width` digits. Two digits per division: the
/// line decoder writes a number every ~15 bytes of output.
#[inline]
fn put_decimal(out: &mut Vec<u8>, mut v: u64, width: usize) {
    if v < 10 && width <= 1 {
        out.push(b'0' + v as u8);
        return;
    }
    let mut buf = [b'0'; 20];
    let mut i = 20;
    while v >= 100 {
        let d = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[d..d + 2]);
    }
    if v >= 10 {
        let d = v as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[d..d + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + v as u8;
    }
    out.extend_from_slice(&buf[i.min(20 - width.min(20))..]);
}

struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter<'_> {
    #[inline]
    fn put(&mut self, v: u64, bits: u32) {
        // bits <= 32 per call keeps acc from overflowing (n < 8 after flushing).
        self.acc |= (v & ((1u64 << bits) - 1)) << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    fn finish(self) {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
    }
}

struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    /// The next 57+ bits (zeros past the end), LSB first.
    #[inline]
    fn peek(&self) -> u64 {
        let byte = self.pos >> 3;
        let mut w = [0u8; 8];
        if let Some(s) = self.data.get(byte..) {
            let n = s.len().min(8);
            w[..n].copy_from_slice(&s[..n]);
        }
        u64::from_le_bytes(w) >> (self.pos & 7)
    }

    #[inline]
    fn get(&mut self, bits: u32) -> Result<u64, LogsError> {
        if self.pos + bits as usize > self.data.len() * 8 {
            return Err(TRUNC);
        }
        let v = if bits == 0 {
            0
        } else {
            self.peek() & (u64::MAX >> (64 - bits))
        };
        self.pos += bits as usize;
        Ok(v)
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// How a block's timestamp deltas are coded. A delta `d` with `u = zigzag(d)` and `u >> k < e` is
/// "small": `u >> k` ones, a zero, the `k` low bits of `u`. Any other is "large": `e` ones, then,
/// with `P` the block's period (see [`period`]) and `M` the multiple of it nearest to `d`, `M - 1`
/// ones and a zero, then `zigzag(d - M·P)` Rice-coded with `k2`; `M` outside 1..=30 is 30 ones
/// and the 64 bits of `u`. Two classes and a period because arrival is bursty and periodic: the lokiload streams get
/// ~2 entries per 3.6 s push step, ~0.3 ms apart within a step and 3.6 s (or a multiple) apart
/// across; one Rice code spent 96 bits on each step-crossing delta, this ~24.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TsCode {
    k: u32,
    e: u64,
    k2: u32,
    p: u64,
}

/// Largest multiple of the period a large delta is coded as; 30 ones escape.
const LARGE_MAX: u64 = 30;

/// Coded bits of `u` under a Rice code with parameter `k` and the raw escape.
#[inline]
fn rice_bits(u: u64, k: u32) -> u64 {
    let q = u >> k;
    if q >= RICE_ESCAPE {
        RICE_ESCAPE + 64
    } else {
        q + 1 + u64::from(k)
    }
}

fn best_k(vals: impl Iterator<Item = u64> + Clone) -> (u32, u64) {
    let (n, sum) = vals
        .clone()
        .fold((0u128, 0u128), |(n, s), v| (n + 1, s + u128::from(v)));
    let guess = 64 - ((sum / n.max(1)) as u64).leading_zeros();
    (guess.saturating_sub(2)..=(guess + 1).min(62))
        .map(|k| (k, vals.clone().map(|v| rice_bits(v, k)).sum::<u64>()))
        .min_by_key(|&(_, c)| c)
        .unwrap_or((0, 0))
}

/// `(M, zigzag(d - M·P))` of a large delta, with `M` the nearest multiple; `None` for the escape.
#[inline]
fn period_split(d: i64, p: u64) -> Option<(u64, u64)> {
    let du = u64::try_from(d).ok()?;
    if p == 0 {
        return None;
    }
    let m = du / p + u64::from(du % p >= p - p / 2);
    (1..=LARGE_MAX)
        .contains(&m)
        .then(|| (m, zigzag(d.wrapping_sub((m * p) as i64))))
}

/// The period of a block's large deltas: the median of those within 1.5× the smallest, so
/// multiples of it land within the arrival jitter (the smallest alone is biased low by the
/// jitter, which a multiple of 10 turned into 10 ms residuals).
fn period(large: impl Iterator<Item = i64> + Clone) -> u64 {
    let Some(min) = large.clone().filter(|&d| d > 0).min() else {
        return 0;
    };
    let mut near: Vec<i64> = large.filter(|&d| d >= min && d - min <= min / 2).collect();
    near.sort_unstable();
    near.get(near.len() / 2).map_or(0, |&d| d as u64)
}

fn ts_code(deltas: &[i64]) -> TsCode {
    let mut sorted: Vec<u64> = deltas.iter().map(|&d| zigzag(d)).collect();
    sorted.sort_unstable();
    // k from the lower quartile (the bursts), then the cheapest of a few (k, e) pairs.
    let low = sorted.get(sorted.len() / 4).copied().unwrap_or(0);
    let guess = 64 - low.leading_zeros();
    let mut best = (
        u64::MAX,
        TsCode {
            k: 0,
            e: RICE_ESCAPE,
            k2: 0,
            p: 0,
        },
    );
    // The period from the deltas well above the bursts, and each delta's split by it, once: the
    // (k, e) search below then only sums. The best k was 1-2 above the quartile's bit length on
    // the lokiload blocks.
    let p = period(
        deltas
            .iter()
            .copied()
            .filter(|&d| zigzag(d) >= low.saturating_mul(16).max(1)),
    );
    let split: Vec<(u64, Option<(u64, u64)>)> = deltas.iter().map(|&d| (zigzag(d), period_split(d, p))).collect();
    for k in guess..=(guess + 2).min(62) {
        for e in [1u64, 2, 4, 8] {
            let small: u64 = sorted
                .iter()
                .filter(|&&u| u >> k < e)
                .map(|&u| (u >> k) + 1 + u64::from(k))
                .sum();
            let large = split.iter().filter(|(u, _)| u >> k >= e);
            let (k2, rbits) = best_k(large.clone().filter_map(|(_, x)| x.map(|x| x.1)));
            let mbits: u64 = large.map(|(_, x)| e + x.map_or(LARGE_MAX + 64, |(m, _)| m)).sum();
            let cost = small + rbits + mbits;
            if cost < best.0 {
                best = (cost, TsCode { k, e, k2, p });
            }
        }
    }
    best.1
}

impl BitWriter<'_> {
    fn ones(&mut self, mut q: u64) {
        while q > 0 {
            let c = q.min(31) as u32;
            self.put((1u64 << c) - 1, c);
            q -= u64::from(c);
        }
    }

    fn rice(&mut self, u: u64, k: u32) {
        let q = u >> k;
        if q >= RICE_ESCAPE {
            self.ones(RICE_ESCAPE);
            self.put(u, 32);
            self.put(u >> 32, 32);
            return;
        }
        self.ones(q);
        self.put(0, 1);
        if k > 32 {
            self.put(u, 32);
            self.put(u >> 32, k - 32);
        } else {
            self.put(u, k);
        }
    }
}

impl BitReader<'_> {
    /// Counts ones up to `max`, consuming them and, below `max`, the terminating zero.
    #[inline]
    fn unary(&mut self, max: u64) -> Result<u64, LogsError> {
        let mut q = 0u64;
        loop {
            let t = u64::from(self.peek().trailing_ones()).min(max - q).min(56);
            q += t;
            self.get(t as u32)?;
            if q == max {
                return Ok(q);
            }
            if t < 56 {
                self.get(1)?;
                return Ok(q);
            }
        }
    }

    #[inline]
    fn low(&mut self, k: u32) -> Result<u64, LogsError> {
        if k > 32 {
            Ok(self.get(32)? | (self.get(k - 32)? << 32))
        } else {
            self.get(k)
        }
    }

    fn rice(&mut self, k: u32) -> Result<u64, LogsError> {
        let q = self.unary(RICE_ESCAPE)?;
        if q == RICE_ESCAPE {
            return Ok(self.get(32)? | (self.get(32)? << 32));
        }
        Ok((q << k) | self.low(k)?)
    }
}

/// `[k u8] [e u8] [k2 u8] [P uvarint]` then the bits of every delta (see [`TsCode`]), padded to
/// a byte.
fn put_ts(out: &mut Vec<u8>, deltas: &[i64]) {
    let c = ts_code(deltas);
    out.extend_from_slice(&[c.k as u8, c.e as u8, c.k2 as u8]);
    put_uvarint(out, c.p);
    let mut w = BitWriter { out, acc: 0, n: 0 };
    for &d in deltas {
        let u = zigzag(d);
        if u >> c.k < c.e {
            w.ones(u >> c.k);
            w.put(0, 1);
            if c.k > 32 {
                w.put(u, 32);
                w.put(u >> 32, c.k - 32);
            } else {
                w.put(u, c.k);
            }
            continue;
        }
        w.ones(c.e);
        match period_split(d, c.p) {
            Some((m, r)) => {
                w.ones(m - 1);
                w.put(0, 1);
                w.rice(r, c.k2);
            }
            None => {
                w.ones(LARGE_MAX);
                w.put(u, 32);
                w.put(u >> 32, 32);
            }
        }
    }
    w.finish();
}

/// Reusable buffers and compression context of the column encoder (one per store).
#[derive(Default)]
pub struct ColumnScratch {
    head: Vec<u8>,
    tmpl: Vec<u8>,
    /// The templates without their words, and where each word goes (see `encode_lines`).
    pre: Vec<u8>,
    patches: Vec<(u32, u32)>,
    vars: Vec<u8>,
    hex: Vec<u8>,
    zbuf: Vec<u8>,
    deltas: Vec<i64>,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl std::fmt::Debug for ColumnScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ColumnScratch")
    }
}

impl ColumnScratch {
    /// Appends `[raw length uvarint][compressed length uvarint][zstd frame of src]` to `out`.
    fn section(&mut self, out: &mut Vec<u8>, which: u8, level: i32) -> Result<(), LogsError> {
        let src = match which {
            0 => &self.head,
            1 => &self.tmpl,
            2 => &self.vars,
            _ => &self.hex,
        };
        let z = match self.zstd.as_mut() {
            Some(z) => z,
            None => self
                .zstd
                .insert(zstd::bulk::Compressor::new(level).map_err(|e| LogsError::Codec(e.to_string()))?),
        };
        z.set_compression_level(level)
            .map_err(|e| LogsError::Codec(e.to_string()))?;
        self.zbuf.clear();
        self.zbuf.reserve(zstd::zstd_safe::compress_bound(src.len()));
        z.compress_to_buffer(src.as_slice(), &mut self.zbuf)
            .map_err(|e| LogsError::Codec(e.to_string()))?;
        put_uvarint(out, src.len() as u64);
        put_bytes(out, &self.zbuf);
        Ok(())
    }
}

/// Writes a block record in the column layout for the entries of `e` (the whole buffer), whose
/// entries encoding is `raw_len` bytes long (recorded, so readers size their buffer). The lines
/// section is compressed at `level`, the smaller sections at `level.min(3)`.
pub fn encode_block_columns(
    out: &mut Vec<u8>,
    h: &BlockHeader,
    level: i32,
    e: &EntriesBuf,
    sc: &mut ColumnScratch,
) -> Result<(), LogsError> {
    record_header(out, REC_BLOCK);
    out.push(CODEC_COLUMNS);
    put_uvarint(out, u64::from(h.stream));
    put_uvarint(out, h.first_seq);
    put_uvarint(out, e.len() as u64);
    put_uvarint(out, u64::from(h.raw_len));
    put_varint(out, h.min_t);
    put_varint(out, h.max_t);
    encode_head(e, h.min_t, sc);
    encode_lines(e, sc);
    // The other sections are small (17 MB of the corpus's 92 MB of sections): zstd-1 on them
    // saved no measurable CPU and cost 0.5 % (21.39 vs 21.27 MB of blocks).
    let small = level;
    sc.section(out, 0, small)?;
    sc.section(out, 1, template_level(level))?;
    sc.section(out, 2, small)?;
    sc.section(out, 3, small)?;
    Ok(())
}

/// The templates section's zstd level for a configured `level`: 3 levels higher (6 at the
/// default 3). On the lokiload corpus the templates took 8.14 MB at zstd-3, 7.27 at 6, 7.19 at 7,
/// 7.14 at 8; 6 cost ~0.25 CPU-s more than 3, each level above ~0.1-0.3 s more.
fn template_level(level: i32) -> i32 {
    (level + 3).min(zstd::zstd_safe::max_c_level())
}

/// Head section: Rice-coded timestamp deltas, line lengths, the metadata sets and one set index
/// per entry.
fn encode_head(e: &EntriesBuf, min_t: i64, sc: &mut ColumnScratch) {
    let head = &mut sc.head;
    head.clear();
    sc.deltas.clear();
    let mut prev = min_t;
    for &t in &e.ts {
        sc.deltas.push(t.wrapping_sub(prev));
        prev = t;
    }
    put_ts(head, &sc.deltas);
    for &l in &e.line_lens {
        put_uvarint(head, u64::from(l));
    }
    // Metadata: distinct per-entry encodings, in order of first use; then an index per entry.
    // The lokiload corpus has one or two distinct sets per block (`detected_level`).
    let mut sets: Vec<&[u8]> = Vec::new();
    let mut idx: Vec<u32> = Vec::with_capacity(e.len());
    let mut r = Reader::new(&e.meta);
    for _ in 0..e.len() {
        let start = r.pos;
        let pairs = r.uvarint().unwrap_or(0);
        for _ in 0..pairs * 2 {
            let _ = r.bytes();
        }
        let enc = &e.meta[start..r.pos];
        let i = match sets.iter().position(|s| *s == enc) {
            Some(i) => i,
            None => {
                sets.push(enc);
                sets.len() - 1
            }
        };
        idx.push(i as u32);
    }
    put_uvarint(head, sets.len() as u64);
    for s in &sets {
        head.extend_from_slice(s);
    }
    for i in idx {
        put_uvarint(head, u64::from(i));
    }
}

/// FxHash (rustc's): the word map of a block sees ~7,000 lookups, and SipHash made it 7 % of
/// encoding.
#[derive(Default)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut c = bytes.chunks_exact(8);
        for w in c.by_ref() {
            self.add(u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]));
        }
        let mut tail = [0u8; 8];
        let r = c.remainder();
        tail[..r.len()].copy_from_slice(r);
        self.add(u64::from_le_bytes(tail) ^ (r.len() as u64));
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type FxMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FxHasher>>;

/// A word as a map key hashed by its bytes alone: `FxHasher::write` already mixes the length
/// into the last word, so the slice's own length prefix (one more multiply per lookup) is not
/// needed.
#[derive(PartialEq, Eq, Clone, Copy)]
struct Word<'a>(&'a [u8]);

impl std::hash::Hash for Word<'_> {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

#[inline]
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

#[inline]
fn is_hex_lower(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// Templates and variables section (see the module docs).
///
/// One tokenizing pass: each word of 3+ letters is interned (one hash lookup per occurrence) and
/// left out of the provisional templates in `sc.pre`, with a patch recording where it goes; once
/// the block's counts are known, the dictionary is chosen and the final templates are the
/// provisional ones with each patch filled by the word's code or the word itself. Counting words
/// in a pass of their own and looking each up again while templating cost two lookups per word
/// and two scans of the lines: 45 % of the tailer's store path (perf, `cargo bench --bench
/// tailer`).
fn encode_lines(e: &EntriesBuf, sc: &mut ColumnScratch) {
    let lines = &e.lines;
    // Bytes that never occur in the block's lines can stand for whole words.
    let mut seen = [false; 256];
    for &b in lines.iter() {
        seen[b as usize] = true;
    }
    let free: Vec<u8> = (0..=255u8).filter(|&b| !seen[b as usize] && !reserved(b)).collect();
    // Interned words: id by word, and (word, count) by id.
    let mut ids: FxMap<Word<'_>, u32> = FxMap::default();
    let mut words: Vec<(&[u8], u32)> = Vec::new();
    let patches = &mut sc.patches;
    patches.clear();
    let t = &mut sc.pre;
    t.clear();
    let v = &mut sc.vars;
    v.clear();
    let hx = &mut sc.hex;
    hx.clear();
    let mut cal = Calendar::NONE;
    let mut off = 0usize;
    for (n, &len) in e.line_lens.iter().enumerate() {
        let line = &lines[off..off + len as usize];
        off += len as usize;
        let ts = e.ts[n];
        let mut i = 0;
        while i < line.len() {
            let b = line[i];
            if is_hex_lower(b) {
                let mut j = i;
                let mut letter = false;
                while j < line.len() && is_hex_lower(line[j]) {
                    letter |= line[j] >= b'a';
                    j += 1;
                }
                let run = j - i;
                if letter && run >= 16 && run % 2 == 0 && run <= 510 {
                    t.push(T_HEX);
                    t.push((run / 2) as u8);
                    for p in line[i..j].chunks_exact(2) {
                        hx.push((hex_val(p[0]) << 4) | hex_val(p[1]));
                    }
                    i = j;
                    continue;
                }
            }
            if b.is_ascii_digit() {
                let mut j = i;
                while j < line.len() && line[j].is_ascii_digit() {
                    j += 1;
                }
                let l = j - i;
                if l > 19 {
                    t.extend_from_slice(&line[i..j]);
                    i = j;
                    continue;
                }
                let val = line[i..j].iter().fold(0u64, |a, &d| a * 10 + u64::from(d - b'0'));
                i = j;
                if l >= 6 {
                    let hit = [0usize, 10].into_iter().find_map(|a| {
                        let p = ts_digits(ts, a, l)?;
                        let r = i128::from(val) - i128::from(p);
                        (r.abs() < 64).then_some((a, r as i64))
                    });
                    if let Some((a, r)) = hit {
                        t.extend_from_slice(&[T_TSNUM, a as u8, l as u8]);
                        put_varint(v, r);
                        continue;
                    }
                }
                if (2..=4).contains(&l)
                    && ts >= 0
                    && let Some(f) = cal.of(ts).iter().position(|&c| c == val)
                {
                    t.extend_from_slice(&[T_CAL, f as u8, l as u8]);
                    continue;
                }
                if l == 1 || line[i - l] != b'0' {
                    t.push(T_NUM);
                } else {
                    t.extend_from_slice(&[T_PADNUM, l as u8]);
                }
                put_uvarint(v, val);
                continue;
            }
            if is_word_byte(b) {
                let mut j = i;
                while j < line.len() && is_word_byte(line[j]) {
                    j += 1;
                }
                let w = &line[i..j];
                if w.len() >= 3 && w.len() < 256 {
                    let id = *ids.entry(Word(w)).or_insert_with(|| {
                        words.push((w, 0));
                        (words.len() - 1) as u32
                    });
                    words[id as usize].1 += 1;
                    patches.push((t.len() as u32, id));
                } else {
                    t.extend_from_slice(w);
                }
                i = j;
                continue;
            }
            if reserved(b) {
                t.push(T_ESC);
                t.push(b);
                i += 1;
                continue;
            }
            let j = i;
            i += 1;
            while i < line.len() && PLAIN[line[i] as usize] {
                i += 1;
            }
            t.extend_from_slice(&line[j..i]);
        }
        t.push(T_END);
    }
    // A code saves len-1 bytes per use and costs len+2 in the dictionary.
    let mut chosen: Vec<u32> = (0..words.len() as u32)
        .filter(|&id| {
            let (w, c) = words[id as usize];
            (c as usize) * (w.len() - 1) > w.len() + 2
        })
        .collect();
    chosen.sort_unstable_by(|&a, &b| {
        let (wa, ca) = words[a as usize];
        let (wb, cb) = words[b as usize];
        cb.cmp(&ca).then(wa.cmp(wb))
    });
    chosen.truncate(free.len());
    // The code of each interned word; `None` for words left as they are.
    let mut code: Vec<Option<u8>> = vec![None; words.len()];
    let out = &mut sc.tmpl;
    out.clear();
    out.reserve(t.len() + patches.len() * 4 + 16);
    put_uvarint(out, chosen.len() as u64);
    for (k, &id) in chosen.iter().enumerate() {
        let w = words[id as usize].0;
        out.push(free[k]);
        put_bytes(out, w);
        code[id as usize] = Some(free[k]);
    }
    let mut from = 0usize;
    for &(at, id) in patches.iter() {
        out.extend_from_slice(&t[from..at as usize]);
        from = at as usize;
        match code[id as usize] {
            Some(c) => out.push(c),
            None => out.extend_from_slice(words[id as usize].0),
        }
    }
    out.extend_from_slice(&t[from..]);
}

/// Bytes copied to the template as they are: not a digit, letter, `_` or reserved byte.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = !(c.is_ascii_alphanumeric() || c == b'_' || c == T_END || (c >= T_ESC && c <= T_CAL));
        b += 1;
    }
    t
};

#[inline]
fn hex_val(c: u8) -> u8 {
    if c >= b'a' { c - b'a' + 10 } else { c - b'0' }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// A parsed column block payload.
struct Sections<'a> {
    head: (usize, &'a [u8]),
    tmpl: (usize, &'a [u8]),
    vars: (usize, &'a [u8]),
    hex: (usize, &'a [u8]),
}

fn sections(data: &[u8]) -> Result<Sections<'_>, LogsError> {
    let mut r = Reader::new(data);
    let mut sec = || -> Result<(usize, &[u8]), LogsError> {
        let raw = usize::try_from(r.uvarint()?).map_err(|_| TRUNC)?;
        Ok((raw, r.bytes()?))
    };
    Ok(Sections {
        head: sec()?,
        tmpl: sec()?,
        vars: sec()?,
        hex: sec()?,
    })
}

thread_local! {
    /// One decompression context per thread: creating one per call cost 10 % of decoding a block.
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// zstd-decompresses `src` into `out` (sized to the expected length); returns the length written.
fn zstd_into(src: &[u8], out: &mut [u8]) -> Result<usize, LogsError> {
    DCTX.with(|c| {
        let mut c = c.borrow_mut();
        let d = match c.as_mut() {
            Some(d) => d,
            None => c.insert(zstd::bulk::Decompressor::new().map_err(|e| LogsError::Codec(e.to_string()))?),
        };
        d.decompress_to_buffer(src, out)
            .map_err(|e| LogsError::Codec(e.to_string()))
    })
}

fn unzstd(sec: (usize, &[u8]), out: &mut Vec<u8>) -> Result<(), LogsError> {
    // A section can never expand past the block's declared size; a corrupt length must not
    // allocate gigabytes.
    if sec.0 > (1 << 30) {
        return Err(LogsError::BadRecord("section length"));
    }
    // Only grow with zeros: re-zeroing a warm buffer every section was wasted memset.
    if out.len() < sec.0 {
        out.resize(sec.0, 0);
    }
    out.truncate(sec.0);
    if zstd_into(sec.1, out.as_mut_slice())? != sec.0 {
        return Err(LogsError::BadRecord("section length mismatch"));
    }
    Ok(())
}

/// The decoded head section: timestamps and line lengths, plus where the metadata starts.
fn decode_head(h: &BlockHeader, head: &[u8], ts: &mut Vec<i64>, lens: &mut Vec<u32>) -> Result<usize, LogsError> {
    let n = h.entries as usize;
    if n > head.len() * 8 + 1 {
        return Err(LogsError::BadRecord("entry count"));
    }
    let mut r = Reader::new(head);
    let (k, e, k2) = (u32::from(r.u8()?), u64::from(r.u8()?), u32::from(r.u8()?));
    let p = r.uvarint()?;
    if k > 62 || k2 > 62 || e == 0 || e > RICE_ESCAPE {
        return Err(LogsError::BadRecord("timestamp code"));
    }
    let bits_at = r.pos;
    let mut br = BitReader {
        data: &head[bits_at..],
        pos: 0,
    };
    ts.clear();
    let mut prev = h.min_t;
    for _ in 0..n {
        let q = br.unary(e)?;
        let d = if q < e {
            unzigzag((q << k) | br.low(k)?)
        } else {
            let m1 = br.unary(LARGE_MAX)?;
            if m1 == LARGE_MAX {
                unzigzag(br.get(32)? | (br.get(32)? << 32))
            } else {
                ((m1 + 1).wrapping_mul(p) as i64).wrapping_add(unzigzag(br.rice(k2)?))
            }
        };
        prev = prev.wrapping_add(d);
        ts.push(prev);
    }
    r.pos = bits_at + br.pos.div_ceil(8);
    lens.clear();
    for _ in 0..n {
        lens.push(u32::try_from(r.uvarint()?).map_err(|_| TRUNC)?);
    }
    Ok(r.pos)
}

/// Calls `f(ts, line length)` for every entry of a block, decompressing only what it needs: the
/// head section of a column block (a few KB per 32 KiB block), the whole payload of older codecs.
/// `scratch` is reused between calls.
pub fn for_each_ts_len(
    h: &BlockHeader,
    data: &[u8],
    scratch: &mut Vec<u8>,
    mut f: impl FnMut(i64, u32),
) -> Result<(), LogsError> {
    if h.codec != CODEC_COLUMNS {
        decompress(h, data, scratch)?;
        let mut r = Reader::new(scratch);
        let n = usize::try_from(r.uvarint()?).map_err(|_| TRUNC)?;
        let ts_at = r.pos;
        for _ in 0..n {
            r.uvarint()?;
        }
        let mut tr = Reader {
            buf: scratch,
            pos: ts_at,
        };
        let mut prev = 0i64;
        for _ in 0..n {
            prev = prev.wrapping_add(tr.varint()?);
            let l = u32::try_from(r.uvarint()?).map_err(|_| TRUNC)?;
            f(prev, l);
        }
        return Ok(());
    }
    let s = sections(data)?;
    unzstd(s.head, scratch)?;
    let mut ts = Vec::new();
    let mut lens = Vec::new();
    decode_head(h, scratch, &mut ts, &mut lens)?;
    for (t, l) in ts.into_iter().zip(lens) {
        f(t, l);
    }
    Ok(())
}

/// Decodes a column block into the entries encoding (`out`, cleared), so every reader of blocks
/// sees one layout.
fn decompress_columns(h: &BlockHeader, data: &[u8], out: &mut Vec<u8>) -> Result<(), LogsError> {
    DECODE.with(|d| decompress_columns_with(h, data, out, &mut d.borrow_mut()))
}

/// Per-thread buffers of the column decoder, so decoding a block allocates nothing once warm.
#[derive(Default)]
struct DecodeScratch {
    head: Vec<u8>,
    tmpl: Vec<u8>,
    vars: Vec<u8>,
    hex: Vec<u8>,
    ts: Vec<i64>,
    lens: Vec<u32>,
}

thread_local! {
    static DECODE: std::cell::RefCell<DecodeScratch> = std::cell::RefCell::new(DecodeScratch::default());
}

/// Like [`decompress`], but a column block's lines are left out: `out` (cleared) gets the entries
/// encoding's count, timestamps, lengths and metadata only, for [`for_each_entry_head`]; only the
/// head section is decompressed. Older codecs decompress whole (their lines just trail).
pub fn decompress_head(h: &BlockHeader, data: &[u8], out: &mut Vec<u8>) -> Result<(), LogsError> {
    if h.codec != CODEC_COLUMNS {
        return decompress(h, data, out);
    }
    let s = sections(data)?;
    DECODE.with(|d| head_entries(h, s.head, out, &mut d.borrow_mut()))
}

/// Decompresses only a column block's head section into `out` (resized); for
/// [`decode_head_columns`]. Other codecs have no head section.
pub fn decompress_head_section(h: &BlockHeader, data: &[u8], out: &mut Vec<u8>) -> Result<(), LogsError> {
    if h.codec != CODEC_COLUMNS {
        return Err(LogsError::BadRecord("not a column block"));
    }
    unzstd(sections(data)?.head, out)
}

/// A column block decompressed without rebuilding the entries encoding: the head section into
/// `head` (for [`decode_head_columns`]) and the lines, back to back, into `lines` (cleared).
/// Rebuilding the encoding and walking it again was ~10 % of a JSON query's decode (perf).
pub fn decompress_columns_parts(
    h: &BlockHeader,
    data: &[u8],
    head: &mut Vec<u8>,
    lines: &mut Vec<u8>,
) -> Result<(), LogsError> {
    if h.codec != CODEC_COLUMNS {
        return Err(LogsError::BadRecord("not a column block"));
    }
    let s = sections(data)?;
    unzstd(s.head, head)?;
    DECODE.with(|d| {
        let sc = &mut *d.borrow_mut();
        let DecodeScratch {
            tmpl,
            vars,
            hex,
            ts,
            lens,
            ..
        } = sc;
        decode_head(h, head, ts, lens)?;
        unzstd(s.tmpl, tmpl)?;
        unzstd(s.vars, vars)?;
        unzstd(s.hex, hex)?;
        lines.clear();
        decode_lines(tmpl, vars, hex, ts, lens, lines)
    })
}

/// A decompressed head section (see [`decompress_head_section`]) decoded as it is laid out, with
/// no re-encoding: timestamps, line lengths, the distinct metadata sets (each in the entries
/// encoding's per-entry form, borrowed from `head`) and each entry's set index, checked against
/// `sets`. Re-encoding the head into the entries layout and walking that was ~17 % of a `rate`
/// query's CPU (perf, `cargo bench --bench logql`).
pub fn decode_head_columns<'a>(
    h: &BlockHeader,
    head: &'a [u8],
    ts: &mut Vec<i64>,
    lens: &mut Vec<u32>,
    sets: &mut Vec<&'a [u8]>,
    idx: &mut Vec<u32>,
) -> Result<(), LogsError> {
    let meta_at = decode_head(h, head, ts, lens)?;
    let mut r = Reader {
        buf: head,
        pos: meta_at,
    };
    let nsets = usize::try_from(r.uvarint()?).map_err(|_| TRUNC)?;
    if nsets > head.len() {
        return Err(LogsError::BadRecord("metadata sets"));
    }
    sets.clear();
    for _ in 0..nsets {
        let start = r.pos;
        let pairs = r.uvarint()?;
        for _ in 0..pairs * 2 {
            r.bytes()?;
        }
        sets.push(&head[start..r.pos]);
    }
    idx.clear();
    for _ in 0..ts.len() {
        let i = u32::try_from(r.uvarint()?).map_err(|_| TRUNC)?;
        if i as usize >= nsets {
            return Err(LogsError::BadRecord("metadata index"));
        }
        idx.push(i);
    }
    Ok(())
}

/// Calls `f(name, value)` for each pair of one entry's metadata in the entries encoding's form
/// (`[pairs uvarint] pairs × ([len][name] [len][value])`, as [`decode_head_columns`] lends).
pub fn for_each_meta_pair<'a>(set: &'a [u8], mut f: impl FnMut(&'a [u8], &'a [u8])) -> Result<(), LogsError> {
    let mut r = Reader::new(set);
    let pairs = r.uvarint()?;
    for _ in 0..pairs {
        let n = r.bytes()?;
        f(n, r.bytes()?);
    }
    Ok(())
}

/// Decompresses the head section into `sc` and writes the entries encoding up to the lines into
/// `out` (cleared).
fn head_entries(
    h: &BlockHeader,
    head_sec: (usize, &[u8]),
    out: &mut Vec<u8>,
    sc: &mut DecodeScratch,
) -> Result<(), LogsError> {
    let DecodeScratch { head, ts, lens, .. } = sc;
    unzstd(head_sec, head)?;
    let meta_at = decode_head(h, head, ts, lens)?;
    let n = ts.len();
    out.clear();
    out.reserve(h.raw_len as usize);
    put_uvarint(out, n as u64);
    let mut prev = 0i64;
    for &t in ts.iter() {
        put_varint(out, t.wrapping_sub(prev));
        prev = t;
    }
    for &l in lens.iter() {
        put_uvarint(out, u64::from(l));
    }
    // Metadata sets, then one index per entry.
    let mut r = Reader {
        buf: head,
        pos: meta_at,
    };
    let nsets = usize::try_from(r.uvarint()?).map_err(|_| TRUNC)?;
    if nsets > head.len() {
        return Err(LogsError::BadRecord("metadata sets"));
    }
    let mut sets: Vec<&[u8]> = Vec::with_capacity(nsets);
    for _ in 0..nsets {
        let start = r.pos;
        let pairs = r.uvarint()?;
        for _ in 0..pairs * 2 {
            r.bytes()?;
        }
        sets.push(&head[start..r.pos]);
    }
    for _ in 0..n {
        let i = usize::try_from(r.uvarint()?).map_err(|_| TRUNC)?;
        out.extend_from_slice(sets.get(i).ok_or_else(|| bad_record("metadata index"))?);
    }
    Ok(())
}

fn decompress_columns_with(
    h: &BlockHeader,
    data: &[u8],
    out: &mut Vec<u8>,
    sc: &mut DecodeScratch,
) -> Result<(), LogsError> {
    let s = sections(data)?;
    head_entries(h, s.head, out, sc)?;
    let DecodeScratch {
        tmpl,
        vars,
        hex,
        ts,
        lens,
        ..
    } = sc;
    unzstd(s.tmpl, tmpl)?;
    unzstd(s.vars, vars)?;
    unzstd(s.hex, hex)?;
    decode_lines(tmpl, vars, hex, ts, lens, out)?;
    if out.len() != h.raw_len as usize {
        return Err(LogsError::BadRecord("block length mismatch"));
    }
    Ok(())
}

fn decode_lines(
    tmpl: &[u8],
    vars: &[u8],
    hex: &[u8],
    ts: &[i64],
    lens: &[u32],
    out: &mut Vec<u8>,
) -> Result<(), LogsError> {
    let mut hr = Reader::new(hex);
    let mut r = Reader::new(tmpl);
    let nwords = r.uvarint()?;
    // class: 0 literal, 1 special, 2 word code
    let mut class = [0u8; 256];
    class[T_END as usize] = 1;
    for b in T_ESC..=T_CAL {
        class[b as usize] = 1;
    }
    let mut words: [&[u8]; 256] = [&[]; 256];
    for _ in 0..nwords {
        let c = r.u8()?;
        if reserved(c) {
            return Err(LogsError::BadRecord("word code"));
        }
        words[c as usize] = r.bytes()?;
        class[c as usize] = 2;
    }
    let t = tmpl;
    let mut i = r.pos;
    let mut vr = Reader::new(vars);
    let mut cal = Calendar::NONE;
    for (n, &len) in lens.iter().enumerate() {
        let start = out.len();
        loop {
            let j = i;
            while i < t.len() && class[t[i] as usize] == 0 {
                i += 1;
            }
            out.extend_from_slice(&t[j..i]);
            let b = *t.get(i).ok_or_else(trunc)?;
            i += 1;
            match b {
                T_END => break,
                T_ESC => {
                    out.push(*t.get(i).ok_or_else(trunc)?);
                    i += 1;
                }
                T_NUM => put_decimal(out, vr.uvarint()?, 1),
                T_PADNUM => {
                    let l = *t.get(i).ok_or_else(trunc)? as usize;
                    i += 1;
                    let v = vr.uvarint()?;
                    if l > 19 || v >= POW10[l] {
                        return Err(LogsError::BadRecord("number width"));
                    }
                    put_decimal(out, v, l);
                }
                T_TSNUM => {
                    let (a, l) = (
                        *t.get(i).ok_or_else(trunc)? as usize,
                        *t.get(i + 1).ok_or_else(trunc)? as usize,
                    );
                    i += 2;
                    let p = ts_digits(ts[n], a, l).ok_or_else(|| bad_record("timestamp digits"))?;
                    let v = i128::from(p) + i128::from(vr.varint()?);
                    if v < 0 || v >= i128::from(POW10[l]) {
                        return Err(LogsError::BadRecord("timestamp digits"));
                    }
                    put_decimal(out, v as u64, l);
                }
                T_CAL => {
                    let (f, l) = (
                        *t.get(i).ok_or_else(trunc)? as usize,
                        *t.get(i + 1).ok_or_else(trunc)? as usize,
                    );
                    i += 2;
                    let v = *cal.of(ts[n]).get(f).ok_or_else(|| bad_record("calendar field"))?;
                    if l > 19 || v >= POW10[l] {
                        return Err(LogsError::BadRecord("calendar field"));
                    }
                    put_decimal(out, v, l);
                }
                T_HEX => {
                    let l = *t.get(i).ok_or_else(trunc)? as usize;
                    i += 1;
                    let src = hr.take(l)?;
                    let at = out.len();
                    out.resize(at + 2 * l, 0);
                    for (o, &x) in out[at..].chunks_exact_mut(2).zip(src) {
                        o[0] = HEX_DIGITS[(x >> 4) as usize];
                        o[1] = HEX_DIGITS[(x & 15) as usize];
                    }
                }
                c => out.extend_from_slice(words[c as usize]),
            }
        }
        if out.len() - start != len as usize {
            return Err(LogsError::BadRecord("line length mismatch"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/compat-tests/fixtures/logs_records_v1.bin");

    fn sample_entries() -> EntriesBuf {
        let mut b = EntriesBuf::default();
        b.push(1_700_000_000_000_000_001, b"GET /index.html 200", &[]);
        b.push(
            1_700_000_000_000_000_000,
            b"out of order, \xc3\xa9",
            &[("trace_id", "abc")],
        );
        b.push(-5, b"", &[("detected_level", "info"), ("user", "u1")]);
        b
    }

    fn records() -> Vec<Vec<u8>> {
        let labels = Labels::from_pairs([("a", "b")]).unwrap();
        let mut out = Vec::new();
        let mut r = Vec::new();
        encode_stream(&mut r, 7, "fake", labels.pairs());
        out.push(r.clone());
        let e = sample_entries();
        let mut raw = Vec::new();
        e.encode_from(0, &mut raw);
        for codec in [Codec::None, Codec::Snappy, Codec::Zstd(3)] {
            let h = BlockHeader {
                codec: codec.byte(),
                stream: 7,
                first_seq: 40,
                entries: 3,
                raw_len: raw.len() as u32,
                min_t: e.min_t,
                max_t: e.max_t,
            };
            encode_block(&mut r, &h, codec, &raw).unwrap();
            out.push(r.clone());
        }
        let mut bloom = Bloom(vec![0u8; 16].into_boxed_slice());
        bloom.add_line(b"needle-7f3a9c");
        let blocks = chunk_blocks(e.min_t);
        encode_chunk(&mut r, 7, 3, raw.len() as u64, e.min_t, e.max_t, Some(&bloom), &blocks);
        let listed = r.clone();
        // A chunk record as written before block lists: the same bytes without the list.
        let mut legacy = listed.clone();
        legacy.truncate(legacy.len() - listed_len(&listed));
        out.push(legacy);
        encode_entries(&mut r, 7, 40, &e, 1);
        out.push(r);
        out.push(listed);
        out
    }

    /// Blocks of one chunk across a segment change, with a gap in the sequence numbers.
    fn chunk_blocks(min_t: i64) -> Vec<BlockRef> {
        let b = |segment, offset, len, first_seq, entries, min_t, max_t| BlockRef {
            pos: RecordPos { segment, offset, len },
            first_seq,
            entries,
            raw_len: entries * 100,
            min_t,
            max_t,
        };
        vec![
            b(3, 16_000_000, 9_000, 40, 300, min_t, min_t + 5),
            b(3, 16_050_000, 8_000, 340, 280, min_t + 5, min_t + 9),
            b(4, 8, 7_000, 700, 1, -5, 1_700_000_000_000_000_001),
        ]
    }

    /// Length of the block list at the end of a chunk record (after the bloom filter).
    fn listed_len(rec: &[u8]) -> usize {
        let (_, mut r) = open_record(rec).unwrap();
        for _ in 0..5 {
            r.uvarint().unwrap();
        }
        r.bytes().unwrap();
        rec.len() - r.pos
    }

    /// A chunk record lists its blocks; one written before lists decodes without them.
    #[test]
    fn chunk_records_list_their_blocks() {
        let recs = records();
        let (ty, mut r) = open_record(&recs[6]).unwrap();
        assert_eq!(ty, REC_CHUNK);
        let c = decode_chunk(&mut r).unwrap();
        assert_eq!(c.blocks, Some(chunk_blocks(c.min_t)));
        assert!(c.bloom.is_some_and(|b| b.may_contain(b"needle-7f3a9c")));
        let (_, mut r) = open_record(&recs[4]).unwrap();
        let legacy = decode_chunk(&mut r).unwrap();
        assert_eq!(
            (legacy.blocks, legacy.entries, legacy.min_t),
            (None, c.entries, c.min_t)
        );
        assert!(legacy.bloom.is_some());
    }

    fn check_entries(buf: &EntriesBuf, from: usize) {
        let mut raw = Vec::new();
        buf.encode_from(from, &mut raw);
        let mut got = Vec::new();
        decode_entries(&raw, &mut got).unwrap();
        let mut all = Vec::new();
        buf.decode_from(0, &mut all).unwrap();
        assert_eq!(got, all[from..].to_vec());
    }

    /// A caller that ignores the metadata of some entries still gets the right later entries.
    #[test]
    fn skipping_metadata_keeps_the_reader_in_step() {
        let e = sample_entries();
        let mut raw = Vec::new();
        e.encode_from(0, &mut raw);
        let mut seen = Vec::new();
        for_each_entry(&raw, |ts, _line, meta| {
            if ts > 0 {
                seen.push(meta.count());
            }
        })
        .unwrap();
        assert_eq!(seen, vec![0, 1]);
    }

    #[test]
    fn entries_round_trip() {
        let e = sample_entries();
        for from in 0..=3 {
            check_entries(&e, from);
        }
        let mut all = Vec::new();
        e.decode_from(0, &mut all).unwrap();
        assert_eq!(all[1].line, "out of order, é");
        assert_eq!(all[2].metadata[1], ("user".to_string(), "u1".to_string()));
        assert_eq!((e.min_t, e.max_t), (-5, 1_700_000_000_000_000_001));
    }

    #[test]
    fn blocks_decode_with_every_codec() {
        let recs = records();
        for rec in &recs[1..4] {
            let (ty, mut r) = open_record(rec).unwrap();
            assert_eq!(ty, REC_BLOCK);
            let (h, data) = decode_block_header(&mut r).unwrap();
            let mut raw = Vec::new();
            decompress(&h, data, &mut raw).unwrap();
            let mut got = Vec::new();
            decode_entries(&raw, &mut got).unwrap();
            assert_eq!(got.len(), 3);
            assert_eq!(h.first_seq, 40);
        }
        let (_, mut r) = open_record(&recs[0]).unwrap();
        let (id, tenant, labels) = decode_stream(&mut r).unwrap();
        assert_eq!(
            (id, tenant.as_str(), labels.to_string()),
            (7, "fake", "{a=\"b\"}".into())
        );
        assert_eq!(
            &recs[0],
            &[
                0x4C, 0x01, 0x53, 0x07, 0x04, b'f', b'a', b'k', b'e', 0x01, 0x01, b'a', 0x01, b'b'
            ]
        );
        assert!(matches!(
            open_record(&[0x4C, 0x02, b'S']),
            Err(LogsError::UnsupportedVersion(2))
        ));
    }

    /// Every truncation of every record is an error or a shorter decode, never a panic.
    #[test]
    fn truncated_records_never_panic() {
        for rec in records() {
            for cut in 0..rec.len() {
                let Ok((ty, mut r)) = open_record(&rec[..cut]) else {
                    continue;
                };
                match ty {
                    REC_STREAM => drop(decode_stream(&mut r)),
                    REC_CHUNK => drop(decode_chunk(&mut r)),
                    REC_BLOCK => {
                        if let Ok((h, d)) = decode_block_header(&mut r) {
                            let mut raw = Vec::new();
                            if decompress(&h, d, &mut raw).is_ok() {
                                let _ = decode_entries(&raw, &mut Vec::new());
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The records, length-prefixed (u32 LE) back to back, must equal the pinned file at `path`;
    /// `UPDATE_FIXTURES=1` rewrites it first. Returns the pinned bytes.
    fn check_fixture(path: &str, records: Vec<Vec<u8>>, changed: &str) -> Vec<u8> {
        let mut file = Vec::new();
        for r in records {
            file.extend_from_slice(&(r.len() as u32).to_le_bytes());
            file.extend_from_slice(&r);
        }
        if std::env::var_os("UPDATE_FIXTURES").is_some() {
            std::fs::write(path, &file).unwrap();
        }
        let pinned = std::fs::read(path).expect("fixture missing: run with UPDATE_FIXTURES=1");
        assert_eq!(pinned, file, "{changed}");
        pinned
    }

    /// Pinned format: `UPDATE_FIXTURES=1 cargo test --release --lib logs_records_fixture` rewrites it.
    #[test]
    fn logs_records_fixture() {
        check_fixture(
            FIXTURE,
            records(),
            "the logs record format changed: bump VERSION or fix the encoder",
        );
    }

    /// Lines that exercise every template element: numbers (plain, zero-padded, too long, equal
    /// to or near the entry's timestamp), hex runs, coded words, reserved bytes, non-ASCII.
    fn column_entries() -> EntriesBuf {
        let mut b = EntriesBuf::default();
        let t0 = 1_795_219_200_000_000_302i64;
        let lines: Vec<String> = vec![
            format!("level=info ts={t0} caller=server.go:97 msg=\"request payment miss\" duration=343ms"),
            "{\"ts\": 1795219200.0000002, \"level\": \"info\", \"trace_id\": \"69dd649317788b9503b96d91aba018ea\"}"
                .into(),
            "I1121 00:00:00.000000       1 controller.go:42] \"alpha beta\" pod=\"ns1/pod-07\"".into(),
            "007 0 00 12345678901234567890123 99999999999999999999 18446744073709551615".into(),
            "deadbeefdeadbeef DEADBEEFDEADBEEF deadbeefdeadbee 0123456789abcdef0 cafe".into(),
            "ctl \n \u{10} \u{11}\u{12}\u{13}\u{14} \u{0} é 日本 \u{7f}".into(),
            String::new(),
            "request request request request handler handler handler handler".into(),
            format!("level=warn ts={} msg=\"request payment miss\"", t0 + 9),
        ];
        for (i, l) in lines.iter().enumerate() {
            let ts = if i == 6 {
                -5
            } else {
                t0 + i as i64 * 1_000_003 - if i == 4 { 10_000_000_000 } else { 0 }
            };
            let meta: &[(&str, &str)] = match i % 3 {
                0 => &[("detected_level", "info")],
                1 => &[],
                _ => &[("detected_level", "info"), ("user", "u1")],
            };
            b.push(ts, l.as_bytes(), meta);
        }
        b
    }

    fn check_columns(e: &EntriesBuf, level: i32) {
        let mut raw = Vec::new();
        e.encode_from(0, &mut raw);
        let h = BlockHeader {
            codec: CODEC_COLUMNS,
            stream: 7,
            first_seq: 40,
            entries: e.len() as u32,
            raw_len: raw.len() as u32,
            min_t: e.min_t,
            max_t: e.max_t,
        };
        let mut rec = Vec::new();
        encode_block_columns(&mut rec, &h, level, e, &mut ColumnScratch::default()).unwrap();
        let (ty, mut r) = open_record(&rec).unwrap();
        assert_eq!(ty, REC_BLOCK);
        let (got_h, data) = decode_block_header(&mut r).unwrap();
        assert_eq!(got_h, h);
        let mut out = Vec::new();
        decompress(&got_h, data, &mut out).unwrap();
        assert_eq!(out, raw, "column block must decode to the entries encoding");
        let mut seen = Vec::new();
        for_each_ts_len(&got_h, data, &mut Vec::new(), |t, l| seen.push((t, l))).unwrap();
        let want: Vec<(i64, u32)> = e.ts.iter().copied().zip(e.line_lens.iter().copied()).collect();
        assert_eq!(seen, want);
        // The head-only decode yields what the full one does, minus the lines.
        type Seen = Vec<(i64, u32, Vec<(Vec<u8>, Vec<u8>)>)>;
        let owned = |m: &mut dyn Iterator<Item = (&[u8], &[u8])>| m.map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
        let mut full: Seen = Vec::new();
        for_each_entry(&raw, |t, l, m| full.push((t, l.len() as u32, owned(m)))).unwrap();
        let mut head = Vec::new();
        decompress_head(&got_h, data, &mut head).unwrap();
        let mut got: Seen = Vec::new();
        for_each_entry_head(&head, |t, l, m| got.push((t, l, owned(m)))).unwrap();
        assert_eq!(got, full);
        // So does the head section decoded in place, with each entry's metadata set by index.
        let mut sec = Vec::new();
        decompress_head_section(&got_h, data, &mut sec).unwrap();
        let (mut ts, mut lens, mut sets, mut idx) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        decode_head_columns(&got_h, &sec, &mut ts, &mut lens, &mut sets, &mut idx).unwrap();
        let mut cols: Seen = Vec::new();
        for i in 0..ts.len() {
            let mut m = Vec::new();
            for_each_meta_pair(sets[idx[i] as usize], |n, v| m.push((n.to_vec(), v.to_vec()))).unwrap();
            cols.push((ts[i], lens[i], m));
        }
        assert_eq!(cols, full);
        let mut lines = Vec::new();
        decompress_columns_parts(&got_h, data, &mut Vec::new(), &mut lines).unwrap();
        assert_eq!(lines, e.lines, "the lines, back to back");
        assert!(sets.len() <= e.len().max(1), "sets are distinct metadata");
        // Every truncation is an error, never a panic or a wrong decode.
        for cut in 0..rec.len() {
            let Ok((_, mut r)) = open_record(&rec[..cut]) else {
                continue;
            };
            if let Ok((h2, d)) = decode_block_header(&mut r) {
                assert!(decompress(&h2, d, &mut out).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn column_blocks_round_trip() {
        check_columns(&column_entries(), 3);
        check_columns(&column_entries(), 9);
        check_columns(&sample_entries(), 3);
        // Timestamps far apart use the Rice escape.
        let mut e = EntriesBuf::default();
        for (i, t) in [i64::MIN, 0, i64::MAX, -1, 1 << 40, 5].into_iter().enumerate() {
            e.push(t, format!("n={i} ts={t}").as_bytes(), &[]);
        }
        check_columns(&e, 3);
        // A block that uses every byte value leaves no byte free for word codes.
        let mut e = EntriesBuf::default();
        let all: Vec<u8> = (0..=255u8).collect();
        let all = String::from_utf8_lossy(&all).into_owned();
        for i in 0..50 {
            e.push(i, format!("{all} words words words {i}").as_bytes(), &[]);
        }
        check_columns(&e, 3);
    }

    const FIXTURE_COLUMNS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/compat-tests/fixtures/logs_records_columns.bin"
    );

    /// A stream record, a column block and a chunk record with a folded filter.
    fn column_records() -> Vec<Vec<u8>> {
        let labels = Labels::from_pairs([("a", "b")]).unwrap();
        let mut out = Vec::new();
        let mut r = Vec::new();
        encode_stream(&mut r, 7, "fake", labels.pairs());
        out.push(r.clone());
        let e = column_entries();
        let mut raw = Vec::new();
        e.encode_from(0, &mut raw);
        let h = BlockHeader {
            codec: CODEC_COLUMNS,
            stream: 7,
            first_seq: 40,
            entries: e.len() as u32,
            raw_len: raw.len() as u32,
            min_t: e.min_t,
            max_t: e.max_t,
        };
        encode_block_columns(&mut r, &h, 3, &e, &mut ColumnScratch::default()).unwrap();
        out.push(r.clone());
        let mut bloom = Bloom::default();
        bloom.add_line(b"needle-7f3a9c");
        bloom.shrink();
        encode_chunk(
            &mut r,
            7,
            e.len() as u64,
            raw.len() as u64,
            e.min_t,
            e.max_t,
            Some(&bloom),
            &[],
        );
        // Pinned as written before chunk records listed their blocks.
        r.truncate(r.len() - listed_len(&r));
        out.push(r);
        out
    }

    /// Pinned format: `UPDATE_FIXTURES=1 cargo test --release --lib logs_columns_fixture` rewrites
    /// it. The pinned block must also decode to the entries it was made from.
    #[test]
    fn logs_columns_fixture() {
        let pinned = check_fixture(
            FIXTURE_COLUMNS,
            column_records(),
            "the logs column format changed: add a codec or fix the encoder",
        );
        let n = u32::from_le_bytes(pinned[..4].try_into().unwrap()) as usize;
        let m = u32::from_le_bytes(pinned[4 + n..8 + n].try_into().unwrap()) as usize;
        let (_, mut r) = open_record(&pinned[8 + n..8 + n + m]).unwrap();
        let (h, data) = decode_block_header(&mut r).unwrap();
        let mut raw = Vec::new();
        decompress(&h, data, &mut raw).unwrap();
        let (mut got, mut want) = (Vec::new(), Vec::new());
        decode_entries(&raw, &mut got).unwrap();
        column_entries().decode_from(0, &mut want).unwrap();
        assert_eq!(got, want);
    }

    /// The example drawn in the module docs.
    #[test]
    fn template_example_from_the_docs() {
        let mut e = EntriesBuf::default();
        e.push(
            1_795_219_200_000_000_302,
            b"level=info ts=1795219200000000302 took=42ms",
            &[],
        );
        let mut sc = ColumnScratch::default();
        encode_lines(&e, &mut sc);
        let mut want = vec![0x00];
        want.extend_from_slice(b"level=info ts=");
        want.extend_from_slice(&[0x13, 0x00, 0x13]);
        want.extend_from_slice(b" took=");
        want.push(0x11);
        want.extend_from_slice(b"ms\n");
        assert_eq!(sc.tmpl, want);
        assert_eq!(sc.vars, [0x00, 0x2A]);
        assert!(sc.hex.is_empty());
    }

    #[test]
    fn folded_bloom_keeps_every_gram() {
        let lines: Vec<String> = (0..200)
            .map(|i| format!("GET /api/v1/users/{i} 200 user-{}", i * 7))
            .collect();
        let mut b = Bloom::default();
        for l in &lines {
            b.add_line(l.as_bytes());
        }
        b.shrink();
        assert!(b.0.len() < BLOOM_BYTES, "{} bytes", b.0.len());
        for l in &lines {
            assert!(b.may_contain(l.as_bytes()), "{l}");
        }
        let full = Bloom::default();
        let mut f = full.clone();
        f.shrink();
        assert_eq!(f.0.len(), 64);
    }

    fn check_bloom(lines: &[&str], needle: &str, want: bool) {
        let mut b = Bloom::default();
        for l in lines {
            b.add_line(l.as_bytes());
        }
        assert_eq!(b.may_contain(needle.as_bytes()), want, "{needle:?} in {lines:?}");
    }

    #[test]
    fn bloom_has_no_false_negatives() {
        let lines = ["level=info msg=\"cache miss\" xneedle-7f3a9cz", "GET /api/v1/users 200"];
        for l in lines {
            for i in 0..l.len() {
                for j in i..=l.len() {
                    check_bloom(&lines, &l[i..j], true);
                }
            }
        }
        // A needle with a sampled gram absent from every line is skipped.
        let absent = (0..1000)
            .map(|i| format!("zq{i}xw-{i}"))
            .filter(|n| !Bloom::default().may_contain(n.as_bytes()))
            .count();
        assert!(absent > 900, "only {absent} of 1000 absent needles were excluded");
    }
}
