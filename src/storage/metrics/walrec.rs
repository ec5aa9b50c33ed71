//! The metrics store's WAL record payloads (the WAL itself frames, checksums and segments them).
//!
//! ```text
//! every record:   [type u8] [body]
//! type 1 series:  [count uvarint] count × ( [ref uvarint] [nlabels uvarint]
//!                                           nlabels × ([len uvarint][name] [len uvarint][value]) )
//! type 2 samples: [count uvarint] [base_t zigzag-varint]
//!                 count × ( [ref uvarint] [t - base_t zigzag-varint] [value f64 bits, 8 bytes LE] )
//! type 3 metadata:[count uvarint] count × ( [kind u8] [len][family] [len][help] [len][unit] )
//! ```
//! Values are stored as raw bits so staleness markers survive bit-exactly. The format version is the
//! WAL segment header's; a new record type gets a new type byte. Pinned by
//! `compat-tests/fixtures/metrics_wal_records_v1.bin`.

use super::StorageError;
use crate::model::{Label, Labels};

pub const REC_SERIES: u8 = 1;
pub const REC_SAMPLES: u8 = 2;
pub const REC_METADATA: u8 = 3;

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

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uvarint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A cursor over a record body.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn u8(&mut self) -> Result<u8, StorageError> {
        let b = *self.buf.get(self.pos).ok_or(StorageError::BadRecord("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    pub fn uvarint(&mut self) -> Result<u64, StorageError> {
        let mut v: u64 = 0;
        let mut shift = 0;
        loop {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(StorageError::BadRecord("varint overflow"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err(StorageError::BadRecord("varint overflow"));
            }
        }
    }

    pub fn varint(&mut self) -> Result<i64, StorageError> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    pub fn f64(&mut self) -> Result<f64, StorageError> {
        let end = self.pos + 8;
        let b = self
            .buf
            .get(self.pos..end)
            .ok_or(StorageError::BadRecord("truncated"))?;
        self.pos = end;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_bits(u64::from_le_bytes(a)))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], StorageError> {
        let n = self.uvarint()? as usize;
        let end = self
            .pos
            .checked_add(n)
            .ok_or(StorageError::BadRecord("length overflow"))?;
        let b = self
            .buf
            .get(self.pos..end)
            .ok_or(StorageError::BadRecord("truncated"))?;
        self.pos = end;
        Ok(b)
    }

    pub fn str(&mut self) -> Result<&'a str, StorageError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| StorageError::BadRecord("invalid UTF-8"))
    }
}

/// Appends a series record for `series` (ref, labels).
pub fn encode_series<'a>(out: &mut Vec<u8>, series: impl ExactSizeIterator<Item = (u32, &'a Labels)>) {
    encode_series_pairs(
        out,
        series.map(|(r, ls)| (r, ls.len(), ls.iter().map(|l| (l.name.as_str(), l.value.as_str())))),
    );
}

/// Appends a series record from (ref, number of pairs, pairs) without building label sets.
pub fn encode_series_pairs<'a, P>(out: &mut Vec<u8>, series: impl ExactSizeIterator<Item = (u32, usize, P)>)
where
    P: Iterator<Item = (&'a str, &'a str)>,
{
    out.push(REC_SERIES);
    put_uvarint(out, series.len() as u64);
    for (r, n, pairs) in series {
        put_uvarint(out, u64::from(r));
        put_uvarint(out, n as u64);
        for (name, value) in pairs {
            put_bytes(out, name.as_bytes());
            put_bytes(out, value.as_bytes());
        }
    }
}

pub fn decode_series(body: &[u8], mut f: impl FnMut(u32, Labels)) -> Result<(), StorageError> {
    let mut r = Reader::new(body);
    let n = r.uvarint()?;
    for _ in 0..n {
        let id = u32::try_from(r.uvarint()?).map_err(|_| StorageError::BadRecord("series ref overflow"))?;
        let nl = r.uvarint()? as usize;
        let mut v = Vec::with_capacity(nl.min(256));
        for _ in 0..nl {
            let name = r.str()?;
            let value = r.str()?;
            v.push(Label::new(name, value));
        }
        let ls = Labels::from_sorted(v).map_err(|_| StorageError::BadRecord("invalid label set"))?;
        f(id, ls);
    }
    Ok(())
}

/// Appends a samples record. `samples` are (ref, t, v).
pub fn encode_samples(out: &mut Vec<u8>, samples: &[(u32, i64, f64)]) {
    out.push(REC_SAMPLES);
    put_uvarint(out, samples.len() as u64);
    let base = samples.first().map_or(0, |s| s.1);
    put_varint(out, base);
    for &(r, t, v) in samples {
        put_uvarint(out, u64::from(r));
        put_varint(out, t.wrapping_sub(base));
        out.extend_from_slice(&v.to_bits().to_le_bytes());
    }
}

pub fn decode_samples(body: &[u8], mut f: impl FnMut(u32, i64, f64)) -> Result<(), StorageError> {
    let mut r = Reader::new(body);
    let n = r.uvarint()?;
    let base = r.varint()?;
    for _ in 0..n {
        let id = u32::try_from(r.uvarint()?).map_err(|_| StorageError::BadRecord("series ref overflow"))?;
        let t = base.wrapping_add(r.varint()?);
        let v = r.f64()?;
        f(id, t, v);
    }
    Ok(())
}

/// Metadata entry as kept for `/api/v1/metadata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaEntry {
    pub family: String,
    pub kind: u8,
    pub help: String,
    pub unit: String,
}

pub fn encode_metadata<'a>(out: &mut Vec<u8>, entries: impl ExactSizeIterator<Item = &'a MetaEntry>) {
    out.push(REC_METADATA);
    put_uvarint(out, entries.len() as u64);
    for e in entries {
        out.push(e.kind);
        put_bytes(out, e.family.as_bytes());
        put_bytes(out, e.help.as_bytes());
        put_bytes(out, e.unit.as_bytes());
    }
}

pub fn decode_metadata(body: &[u8], mut f: impl FnMut(MetaEntry)) -> Result<(), StorageError> {
    let mut r = Reader::new(body);
    let n = r.uvarint()?;
    for _ in 0..n {
        let kind = r.u8()?;
        let family = r.str()?.to_string();
        let help = r.str()?.to_string();
        let unit = r.str()?.to_string();
        f(MetaEntry {
            family,
            kind,
            help,
            unit,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::stale_nan;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/compat-tests/fixtures/metrics_wal_records_v1.bin"
    );

    fn sample_records() -> Vec<Vec<u8>> {
        let ls = Labels::from_pairs([("__name__", "up"), ("job", "node")]).unwrap();
        let mut a = Vec::new();
        encode_series(&mut a, [(7u32, &ls)].into_iter());
        let mut b = Vec::new();
        encode_samples(
            &mut b,
            &[(7, 1_700_000_000_000, 1.0), (7, 1_700_000_015_003, stale_nan())],
        );
        let mut c = Vec::new();
        let m = MetaEntry {
            family: "up".into(),
            kind: 2,
            help: "Up.".into(),
            unit: String::new(),
        };
        encode_metadata(&mut c, [&m].into_iter());
        vec![a, b, c]
    }

    fn check(recs: &[Vec<u8>]) {
        let mut series = Vec::new();
        decode_series(&recs[0][1..], |r, l| series.push((r, l.to_string()))).unwrap();
        assert_eq!(series, vec![(7, r#"{__name__="up", job="node"}"#.to_string())]);
        let mut samples = Vec::new();
        decode_samples(&recs[1][1..], |r, t, v| samples.push((r, t, v.to_bits()))).unwrap();
        assert_eq!(
            samples,
            vec![
                (7, 1_700_000_000_000, 1f64.to_bits()),
                (7, 1_700_000_015_003, crate::model::STALE_NAN_BITS)
            ]
        );
        let mut meta = Vec::new();
        decode_metadata(&recs[2][1..], |m| meta.push(m)).unwrap();
        assert_eq!(meta[0].family, "up");
        assert_eq!(meta[0].help, "Up.");
    }

    #[test]
    fn round_trip() {
        check(&sample_records());
    }

    /// The fixture holds the three records, each prefixed by a u32 LE length.
    #[test]
    fn fixture() {
        let recs = sample_records();
        if std::env::var("UPDATE_FIXTURES").is_ok() {
            let mut f = Vec::new();
            for r in &recs {
                f.extend_from_slice(&(r.len() as u32).to_le_bytes());
                f.extend_from_slice(r);
            }
            std::fs::write(FIXTURE, f).unwrap();
        }
        let data = std::fs::read(FIXTURE).unwrap();
        let mut out = Vec::new();
        let mut p = 0;
        while p < data.len() {
            let n = u32::from_le_bytes(data[p..p + 4].try_into().unwrap()) as usize;
            out.push(data[p + 4..p + 4 + n].to_vec());
            p += 4 + n;
        }
        check(&out);
    }

    #[test]
    fn garbage_never_panics() {
        let recs = sample_records();
        for r in &recs {
            for cut in 0..r.len() {
                let body = &r[1..cut.max(1)];
                let _ = decode_series(body, |_, _| {});
                let _ = decode_samples(body, |_, _, _| {});
                let _ = decode_metadata(body, |_| {});
            }
        }
    }
}
