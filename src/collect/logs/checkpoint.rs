//! The positions file: how far each tailed file has been stored, so a restart resumes with no loss
//! and no duplicates.
//!
//! Written only after the sink accepted every line up to the recorded offsets, and atomically:
//! write `<name>.tmp`, fsync it, rename it over `<name>`, fsync the directory (a torn or NUL-filled
//! positions file is how grafana/loki#6268 and #1457 crash-looped). A file that fails its checksum is
//! ignored as a whole: the caller then starts every file from its beginning and counts the error.
//!
//! Format v1, text, one record per line, fields separated by one space (`␠`), `\n` line ends:
//!
//! ```text
//! MRSPOS␠1\n                                    magic and version
//! F␠<dev>␠<ino>␠<fplen>␠<fpcrc>␠<offset>␠<pout>␠<perr>␠<path>\n   one per tailed file
//! B␠<ts>␠<linecrc>␠<labels>\n                   optional, only in the `.pending` file (below)
//! END␠<count>␠<crc>\n                           F records above, CRC-32 (IEEE) of every byte before "END"
//! ```
//!
//! Closing the crash window between a push and its checkpoint: before pushing a batch, the positions
//! *after* it are written (same steps) to `<name>.pending` with a `B` record naming the batch's last
//! entry: `ts` (decimal ns), `linecrc` (8 hex digits, CRC-32 of the line as the store keeps it, i.e.
//! after lossy UTF-8 decoding) and the stream's label text (escaped like `path`). Once the sink
//! accepted the batch, `<name>.pending` is renamed over `<name>` (and the directory fsynced). At start,
//! a leftover `.pending` means a crash in between: if the sink holds the `B` entry (a store writes a
//! batch's records with one `write(2)`, in order, so its last entry stands for the whole batch), the
//! pending positions are used, else the old ones; either way nothing is lost or stored twice.
//!
//! * `dev`, `ino`: decimal `st_dev`, `st_ino`: the file's identity.
//! * `fplen`, `fpcrc`: decimal byte count and 8 lowercase hex digits: CRC-32 of the file's first
//!   `fplen` bytes (at most [`FINGERPRINT_MAX`]), so a reused inode or a file truncated and rewritten
//!   while we were down is not taken for the old one.
//! * `offset`: decimal, the end of the last complete physical line read (every line before it was
//!   stored, or is a partial counted in `pout`/`perr`).
//! * `pout`, `perr`: decimal offset of the first physical line of a partial (`P`) line still being
//!   joined for stdout / stderr, or `-`. On resume, lines in `[min(pout, perr), offset)` are read
//!   again, and a line is kept only if its stream has a partial that starts at or before it: the
//!   other stream's lines there were stored already.
//! * `path`: where the file was last seen, for people reading the file; `\` and newline escaped as
//!   `\\` and `\n`. Never used to identify a file.
//!
//! Pinned by `compat-tests/fixtures/tailer_positions_v1.txt`.

use std::io::Write;
use std::path::{Path, PathBuf};

pub const MAGIC: &str = "MRSPOS 1\n";
/// Bytes of a file's head that identify it with its inode.
pub const FINGERPRINT_MAX: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("writing the positions file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("reading the positions file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("positions file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// A batch's last entry, to ask the sink after a crash whether the batch was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub ts: i64,
    pub line_crc: u32,
    pub labels: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub dev: u64,
    pub ino: u64,
    pub fp_len: u64,
    pub fp_crc: u32,
    pub offset: u64,
    /// Start offsets of the partial lines being joined, stdout and stderr.
    pub pending: [Option<u64>; 2],
    pub path: PathBuf,
}

fn escape_into(out: &mut Vec<u8>, raw: &[u8]) {
    for &c in raw {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            c => out.push(c),
        }
    }
}

fn unescape(raw: &[u8]) -> Option<Vec<u8>> {
    let mut p = Vec::with_capacity(raw.len());
    let mut it = raw.iter();
    while let Some(&c) = it.next() {
        if c == b'\\' {
            match it.next() {
                Some(b'n') => p.push(b'\n'),
                Some(&o) => p.push(o),
                None => return None,
            }
        } else {
            p.push(c);
        }
    }
    Some(p)
}

pub fn encode(positions: &[Position], probe: Option<&Probe>, out: &mut Vec<u8>) {
    use std::os::unix::ffi::OsStrExt;
    out.clear();
    out.extend_from_slice(MAGIC.as_bytes());
    for p in positions {
        let pend = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |o| o.to_string());
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "F {} {} {} {:08x} {} {} {} ",
            p.dev,
            p.ino,
            p.fp_len,
            p.fp_crc,
            p.offset,
            pend(p.pending[0]),
            pend(p.pending[1])
        );
        escape_into(out, p.path.as_os_str().as_bytes());
        out.push(b'\n');
    }
    if let Some(b) = probe {
        let _ = write!(out, "B {} {:08x} ", b.ts, b.line_crc);
        escape_into(out, b.labels.as_bytes());
        out.push(b'\n');
    }
    let crc = crc32fast::hash(out);
    let _ = writeln!(out, "END {} {crc:08x}", positions.len());
}

pub fn decode(buf: &[u8], path: &Path) -> Result<Loaded, CheckpointError> {
    use std::os::unix::ffi::OsStringExt;
    let corrupt = |reason: &str| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if !buf.starts_with(MAGIC.as_bytes()) {
        return Err(corrupt("no MRSPOS 1 header"));
    }
    let end_at = memchr::memmem::rfind(buf, b"END ").ok_or_else(|| corrupt("no END line"))?;
    let end_line = std::str::from_utf8(&buf[end_at..]).map_err(|_| corrupt("END line is not text"))?;
    let mut f = end_line.trim_end_matches('\n').split(' ').skip(1);
    let count: usize = f
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| corrupt("bad END count"))?;
    let crc = f
        .next()
        .and_then(|c| u32::from_str_radix(c, 16).ok())
        .ok_or_else(|| corrupt("bad END checksum"))?;
    if !end_line.ends_with('\n') || crc32fast::hash(&buf[..end_at]) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let mut out = Vec::with_capacity(count);
    let mut probe = None;
    for line in buf[MAGIC.len()..end_at].split(|&c| c == b'\n') {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix(b"B ") {
            let mut parts = rest.splitn(3, |&c| c == b' ');
            let mut field = || parts.next().and_then(|p| std::str::from_utf8(p).ok());
            let ts = field().and_then(|t| t.parse::<i64>().ok());
            let crc = field().and_then(|c| u32::from_str_radix(c, 16).ok());
            let labels = parts.next().and_then(unescape).and_then(|l| String::from_utf8(l).ok());
            match (ts, crc, labels) {
                (Some(ts), Some(line_crc), Some(labels)) => {
                    probe = Some(Probe { ts, line_crc, labels });
                    continue;
                }
                _ => return Err(corrupt("bad batch record")),
            }
        }
        let mut parts = line.splitn(9, |&c| c == b' ');
        let mut field = || -> Result<&str, CheckpointError> {
            parts
                .next()
                .and_then(|p| std::str::from_utf8(p).ok())
                .ok_or_else(|| corrupt("short record"))
        };
        if field()? != "F" {
            return Err(corrupt("unknown record"));
        }
        let num = |s: &str| s.parse::<u64>().map_err(|_| corrupt("bad number"));
        let pend = |s: &str| if s == "-" { Ok(None) } else { num(s).map(Some) };
        let dev = num(field()?)?;
        let ino = num(field()?)?;
        let fp_len = num(field()?)?;
        let fp_crc = u32::from_str_radix(field()?, 16).map_err(|_| corrupt("bad fingerprint"))?;
        let offset = num(field()?)?;
        let pending = [pend(field()?)?, pend(field()?)?];
        let raw = parts.next().ok_or_else(|| corrupt("short record"))?;
        let p = unescape(raw).ok_or_else(|| corrupt("bad escape"))?;
        out.push(Position {
            dev,
            ino,
            fp_len,
            fp_crc,
            offset,
            pending,
            path: PathBuf::from(std::ffi::OsString::from_vec(p)),
        });
    }
    if out.len() != count {
        return Err(corrupt("record count mismatch"));
    }
    Ok((out, probe))
}

/// Where the positions after an in-flight batch wait for the sink's answer.
pub fn pending_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".pending");
    path.with_file_name(name)
}

/// Makes the pending positions the current ones: rename, fsync the directory.
pub fn promote(path: &Path) -> Result<(), CheckpointError> {
    let err = |source| CheckpointError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::rename(pending_path(path), path).map_err(err)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

/// A positions file's content: the files, and the probe of a pending one.
pub type Loaded = (Vec<Position>, Option<Probe>);

/// Reads a positions file; `Ok(None)` when there is none.
pub fn load(path: &Path) -> Result<Option<Loaded>, CheckpointError> {
    match std::fs::read(path) {
        Ok(buf) => decode(&buf, path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CheckpointError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Write, fsync, rename, fsync the directory.
pub fn store(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let err = |source| CheckpointError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Position> {
        vec![
            Position {
                dev: 2049,
                ino: 131_077,
                fp_len: 256,
                fp_crc: 0x1a2b_3c4d,
                offset: 1_048_576,
                pending: [None, None],
                path: PathBuf::from("/var/log/pods/default_web-0_7f3e/app/0.log"),
            },
            Position {
                dev: 2049,
                ino: 131_090,
                fp_len: 120,
                fp_crc: 0x0000_00ff,
                offset: 5000,
                pending: [Some(4000), None],
                path: PathBuf::from("/odd\\dir\nname/0.log.20261121-081500"),
            },
        ]
    }

    fn probe() -> Probe {
        Probe {
            ts: 1_795_248_000_123_456_789,
            line_crc: 0xdead_beef,
            labels: "{container=\"app\", namespace=\"default\", stream=\"stdout\"}".to_string(),
        }
    }

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/compat-tests/fixtures/tailer_positions_v1.txt"
    );

    /// The fixture pins the format: this build must decode it and re-encode it byte for byte.
    /// `UPDATE_FIXTURES=1` rewrites it (only when the format version changes).
    #[test]
    fn fixture_round_trip() {
        let mut buf = Vec::new();
        encode(&sample(), Some(&probe()), &mut buf);
        if std::env::var_os("UPDATE_FIXTURES").is_some() {
            std::fs::write(FIXTURE, &buf).unwrap();
        }
        let pinned = std::fs::read(FIXTURE).unwrap();
        assert_eq!(String::from_utf8_lossy(&buf), String::from_utf8_lossy(&pinned));
        assert_eq!(decode(&pinned, Path::new("f")).unwrap(), (sample(), Some(probe())));
    }

    /// Every damaged variant is refused as a whole, never half-read.
    #[test]
    fn corruption_is_refused() {
        let mut good = Vec::new();
        encode(&sample(), None, &mut good);
        let check = |bytes: &[u8], what: &str| {
            assert!(decode(bytes, Path::new("f")).is_err(), "{what} accepted");
        };
        check(&good[..good.len() - 1], "missing final newline");
        check(&good[..good.len() / 2], "truncated");
        check(&vec![0u8; good.len()], "all NULs");
        let mut flipped = good.clone();
        flipped[20] ^= 1;
        check(&flipped, "one bit flipped");
        check(b"", "empty");
        assert_eq!(decode(&good, Path::new("f")).unwrap().0.len(), 2);
    }
}
