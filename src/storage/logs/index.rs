//! Spilled stream index: immutable files in `<data>/logs/index/` that hold streams gone idle, so
//! that memory does not grow with every stream a node has seen within retention.
//!
//! Owns: the files of `index/` and their layout. Never touches: the data log, the WAL, the live
//! registry (the store decides what to spill, and keeps per file only its [`IndexFile`] summary).
//!
//! Why: a stream stays queryable until retention deletes its data (30 days by default), and an
//! idle one still cost ~484 B in memory (label key, postings, chunk metas; session 10's mallinfo2
//! measurement). A node replacing a pod a minute makes up to ~240 streams an hour: ~80 MiB over
//! 30 days, the linear growth issue 6 forbids. Spilled, an idle stream costs nothing in memory;
//! each file costs one [`IndexFile`] (40 B).
//!
//! A file is written once (to `<seq>.tmp`, fsynced, renamed to `<seq>.idx`, directory fsynced)
//! and deleted when retention has removed every data segment its chunks reach. Layout, version 1
//! (integers little-endian; uvarint/varint/bytes as in [`super::block`]):
//!
//! ```text
//! header  4  magic "MRSI"
//!         1  version (1)
//! body    uvarint  stream count
//!         per stream:
//!           uvarint  stream id
//!           bytes    tenant
//!           uvarint  label count, then per label: bytes name, bytes value (label order)
//!           uvarint  chunk count, then per chunk (a closed chunk of the data log):
//!             uvarint  chunk record: segment, uvarint offset, uvarint length
//!             uvarint  data segment of the chunk's last block
//!             1        1 when the chunk record holds a line filter, else 0
//!             uvarint  entries, uvarint raw bytes
//!             varint   min time (ns), varint max time (ns)
//! footer  8  min time over all chunks (i64)     16 max time (i64 at +8)
//!         4  highest last-block segment (u32)    4 stream count (u32)
//!         4  CRC-32 (IEEE) of every byte before the footer's CRC
//!         4  magic "MRSI"
//! ```
//!
//! Pinned by `compat-tests/fixtures/logs_index_v1.bin`.

use super::LogsError;
use super::block::{Reader, decode_labels, put_bytes, put_uvarint, put_varint};
use super::store::ChunkMeta;
use crate::model::Labels;
use crate::storage::wal::RecordPos;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"MRSI";
const VERSION: u8 = 1;
const FOOTER: usize = 32;

/// What the store keeps in memory per file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexFile {
    pub seq: u32,
    pub min_t: i64,
    pub max_t: i64,
    /// The highest data segment any of its chunks reaches: once retention deleted it, the file
    /// holds nothing.
    pub last_segment: u32,
    pub streams: u32,
}

/// A stream as a file holds it.
#[derive(Debug)]
pub(crate) struct SpilledStream {
    pub id: u32,
    pub tenant: String,
    pub labels: Labels,
    pub chunks: Vec<ChunkMeta>,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LogsError {
    let path = path.to_path_buf();
    move |source| LogsError::Io { op, path, source }
}

pub(crate) fn path_of(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("{seq:08}.idx"))
}

/// Encodes a file's bytes. `streams` yields (id, tenant, label pairs, chunks); every stream must
/// hold at least one chunk. Returns the file's summary.
pub(crate) fn encode<'a, L>(
    out: &mut Vec<u8>,
    seq: u32,
    streams: impl Iterator<Item = (u32, &'a str, L, &'a [ChunkMeta])>,
) -> IndexFile
where
    L: Iterator<Item = (&'a str, &'a str)> + Clone,
{
    out.clear();
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    // The count goes first but is known last: a fixed 5-byte uvarint is patched in.
    let count_at = out.len();
    out.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x00]);
    let mut f = IndexFile {
        seq,
        min_t: i64::MAX,
        max_t: i64::MIN,
        last_segment: 0,
        streams: 0,
    };
    for (id, tenant, labels, chunks) in streams {
        f.streams += 1;
        put_uvarint(out, u64::from(id));
        put_bytes(out, tenant.as_bytes());
        put_uvarint(out, labels.clone().count() as u64);
        for (n, v) in labels {
            put_bytes(out, n.as_bytes());
            put_bytes(out, v.as_bytes());
        }
        put_uvarint(out, chunks.len() as u64);
        for c in chunks {
            put_uvarint(out, u64::from(c.at.segment));
            put_uvarint(out, c.at.offset);
            put_uvarint(out, u64::from(c.at.len));
            put_uvarint(out, u64::from(c.last_segment));
            out.push(u8::from(c.bloom));
            put_uvarint(out, c.entries);
            put_uvarint(out, c.raw_bytes);
            put_varint(out, c.min_t);
            put_varint(out, c.max_t);
            f.min_t = f.min_t.min(c.min_t);
            f.max_t = f.max_t.max(c.max_t);
            f.last_segment = f.last_segment.max(c.last_segment);
        }
    }
    let n = f.streams;
    for (i, b) in out[count_at..count_at + 5].iter_mut().enumerate() {
        let part = ((n >> (7 * i)) & 0x7f) as u8;
        *b = if i < 4 { part | 0x80 } else { part };
    }
    out.extend_from_slice(&f.min_t.to_le_bytes());
    out.extend_from_slice(&f.max_t.to_le_bytes());
    out.extend_from_slice(&f.last_segment.to_le_bytes());
    out.extend_from_slice(&f.streams.to_le_bytes());
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(MAGIC);
    f
}

/// Writes `bytes` as file `seq` of `dir`: to a temporary name, fsynced, renamed, directory fsynced.
pub(crate) fn write(dir: &Path, seq: u32, bytes: &[u8]) -> Result<(), LogsError> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let tmp = dir.join(format!("{seq:08}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    drop(f);
    let path = path_of(dir, seq);
    std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

/// Decodes a file's bytes (checked end to end by its CRC).
pub(crate) fn decode(seq: u32, buf: &[u8]) -> Result<(IndexFile, Vec<SpilledStream>), LogsError> {
    if buf.len() < MAGIC.len() + 1 + FOOTER || &buf[..4] != MAGIC || &buf[buf.len() - 4..] != MAGIC {
        return Err(LogsError::BadRecord("index file: bad magic or truncated"));
    }
    if buf[4] != VERSION {
        return Err(LogsError::UnsupportedVersion(buf[4]));
    }
    let foot = &buf[buf.len() - FOOTER..];
    let le8 = |b: &[u8]| i64::from_le_bytes(b.try_into().unwrap_or_default());
    let le4 = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or_default());
    if crc32fast::hash(&buf[..buf.len() - 8]) != le4(&foot[24..28]) {
        return Err(LogsError::BadRecord("index file: CRC mismatch"));
    }
    let file = IndexFile {
        seq,
        min_t: le8(&foot[0..8]),
        max_t: le8(&foot[8..16]),
        last_segment: le4(&foot[16..20]),
        streams: le4(&foot[20..24]),
    };
    let mut r = Reader::new(&buf[5..buf.len() - FOOTER]);
    let n = r.uvarint()?;
    if n != u64::from(file.streams) {
        return Err(LogsError::BadRecord("index file: stream count"));
    }
    let u32_of = |v: u64, what: &'static str| u32::try_from(v).map_err(|_| LogsError::BadRecord(what));
    let mut out = Vec::with_capacity(n.min(1 << 16) as usize);
    for _ in 0..n {
        let id = u32_of(r.uvarint()?, "index file: stream id")?;
        let tenant = r.str()?.to_string();
        let labels = decode_labels(&mut r)?;
        let nc = r.uvarint()?;
        let mut chunks = Vec::with_capacity(nc.min(1 << 16) as usize);
        for _ in 0..nc {
            let at = RecordPos {
                segment: u32_of(r.uvarint()?, "index file: segment")?,
                offset: r.uvarint()?,
                len: u32_of(r.uvarint()?, "index file: record length")?,
            };
            chunks.push(ChunkMeta {
                at,
                last_segment: u32_of(r.uvarint()?, "index file: segment")?,
                bloom: r.u8()? != 0,
                legacy_blocks: Box::default(),
                entries: r.uvarint()?,
                raw_bytes: r.uvarint()?,
                min_t: r.varint()?,
                max_t: r.varint()?,
            });
        }
        out.push(SpilledStream {
            id,
            tenant,
            labels,
            chunks,
        });
    }
    if r.pos != r.buf.len() {
        return Err(LogsError::BadRecord("index file: trailing bytes"));
    }
    Ok((file, out))
}

/// Reads file `seq` of `dir`. `Ok(None)` when it is gone (retention deleted it meanwhile).
pub(crate) fn read(dir: &Path, seq: u32) -> Result<Option<Vec<SpilledStream>>, LogsError> {
    let path = path_of(dir, seq);
    match std::fs::read(&path) {
        Ok(buf) => Ok(Some(decode(seq, &buf)?.1)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", &path)(e)),
    }
}

/// Every file of `dir` in sequence order, decoded; leftover temporary files are removed.
pub(crate) fn load_all(dir: &Path) -> Result<Vec<(IndexFile, Vec<SpilledStream>)>, LogsError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("read directory", dir)(e)),
    };
    let mut seqs = Vec::new();
    for e in rd {
        let e = e.map_err(io("read directory", dir))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".tmp") {
            if stem.parse::<u32>().is_ok() {
                let _ = std::fs::remove_file(e.path());
            }
        } else if let Some(seq) = name.strip_suffix(".idx").and_then(|s| s.parse::<u32>().ok()) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    let mut out = Vec::with_capacity(seqs.len());
    for seq in seqs {
        let path = path_of(dir, seq);
        let buf = std::fs::read(&path).map_err(io("read", &path))?;
        out.push(decode(seq, &buf)?);
    }
    Ok(out)
}

pub(crate) fn remove(dir: &Path, seq: u32) -> Result<(), LogsError> {
    let path = path_of(dir, seq);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", &path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/compat-tests/fixtures/logs_index_v1.bin");

    fn chunk(seg: u32, off: u64, min_t: i64, max_t: i64) -> ChunkMeta {
        ChunkMeta {
            at: RecordPos {
                segment: seg,
                offset: off,
                len: 90,
            },
            last_segment: seg,
            bloom: seg.is_multiple_of(2),
            legacy_blocks: Box::default(),
            entries: 12,
            raw_bytes: 3_400,
            min_t,
            max_t,
        }
    }

    /// Two streams of two tenants, three chunks.
    fn fixture() -> (Vec<u8>, IndexFile) {
        let a = [chunk(3, 16, 1_000, 2_000), chunk(4, 0, 2_500, 9_000)];
        let b = [chunk(2, 4_096, -5, 1_500)];
        let la = Labels::from_pairs([("job", "ns/app"), ("pod", "p-1")]).unwrap();
        let lb = Labels::from_pairs([("job", "kubernetes-events")]).unwrap();
        let (pa, pb): (Vec<_>, Vec<_>) = (la.pairs().collect(), lb.pairs().collect());
        let mut out = Vec::new();
        let f = encode(
            &mut out,
            7,
            [
                (1u32, "fake", pa.iter().copied(), &a[..]),
                (300u32, "t2", pb.iter().copied(), &b[..]),
            ]
            .into_iter(),
        );
        (out, f)
    }

    fn check(bytes: &[u8], want: IndexFile) {
        let (f, s) = decode(7, bytes).unwrap();
        assert_eq!(f, want);
        assert_eq!(
            f,
            IndexFile {
                seq: 7,
                min_t: -5,
                max_t: 9_000,
                last_segment: 4,
                streams: 2
            }
        );
        assert_eq!(s.iter().map(|s| s.id).collect::<Vec<_>>(), [1, 300]);
        assert_eq!(s[0].tenant, "fake");
        assert_eq!(s[0].labels.to_string(), r#"{job="ns/app", pod="p-1"}"#);
        assert_eq!(s[1].labels.to_string(), r#"{job="kubernetes-events"}"#);
        let c = &s[0].chunks[1];
        assert_eq!(
            (c.at, c.last_segment, c.bloom, c.entries, c.raw_bytes, c.min_t, c.max_t),
            (
                RecordPos {
                    segment: 4,
                    offset: 0,
                    len: 90
                },
                4,
                true,
                12,
                3_400,
                2_500,
                9_000
            )
        );
        assert_eq!(s[1].chunks[0].min_t, -5);
        assert!(s[1].chunks[0].bloom);
        assert!(!s[0].chunks[0].bloom, "segment 3's chunk has no filter");
    }

    #[test]
    fn round_trip_and_pinned_layout() {
        let (bytes, f) = fixture();
        check(&bytes, f);
        if std::env::var_os("UPDATE_FIXTURES").is_some() {
            std::fs::write(FIXTURE, &bytes).unwrap();
        }
        let pinned = std::fs::read(FIXTURE).expect("fixture missing: run with UPDATE_FIXTURES=1 to write it");
        assert_eq!(pinned, bytes, "the index file layout changed: version it");
        check(&pinned, f);
    }

    #[test]
    fn damaged_files_are_refused() {
        let (bytes, _) = fixture();
        for at in [0, 4, 9, bytes.len() / 2, bytes.len() - 20, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[at] ^= 0x01;
            assert!(decode(7, &b).is_err(), "flipped byte {at}");
        }
        for len in [0, 5, 30, bytes.len() - 1] {
            assert!(decode(7, &bytes[..len]).is_err(), "cut at {len}");
        }
    }

    #[test]
    fn written_files_load_in_order_and_temporaries_go() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _) = fixture();
        write(dir.path(), 12, &bytes).unwrap();
        write(dir.path(), 3, &bytes).unwrap();
        std::fs::write(dir.path().join("00000013.tmp"), b"torn").unwrap();
        let all = load_all(dir.path()).unwrap();
        assert_eq!(all.iter().map(|f| f.0.seq).collect::<Vec<_>>(), [3, 12]);
        assert!(!dir.path().join("00000013.tmp").exists());
        assert_eq!(read(dir.path(), 12).unwrap().map(|s| s.len()), Some(2));
        remove(dir.path(), 12).unwrap();
        assert!(read(dir.path(), 12).unwrap().is_none());
        assert!(load_all(&dir.path().join("absent")).unwrap().is_empty());
    }
}
