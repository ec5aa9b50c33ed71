//! Wire decoding of pushed data. Loki push (`logproto.PushRequest`) is in [`loki`]. Remote-write decoding: the snappy block layer and the protobuf messages of Prometheus remote write
//! 1.0 (`prometheus.WriteRequest`) and 2.0 (`io.prometheus.write.v2.Request`), as specified in API.md §4.2/§4.3.
//!
//! Owns: the prost structs clients and tests use to *encode* requests ([`v1`], [`v2`]), the hand-written
//! zero-copy decoder used on the ingest hot path ([`decode_v1`], [`decode_v2`] into a reusable [`WriteBatch`]),
//! snappy decompression with a size limit checked before allocating ([`decompress_snappy`]), and [`ProtoError`].
//!
//! Never touches: HTTP (status codes, headers, content negotiation), label validation (UTF-8, names, sorting,
//! duplicates), storage, or any global state. The decoder hands out raw bytes borrowed from the request body;
//! deciding what is a valid series is the caller's job, done per series so one bad series can be rejected
//! without failing the whole request.

pub mod loki;
pub mod remote_write;

pub use remote_write::{
    MetadataView, MetricType, RawSample, SeriesView, WriteBatch, decode_v1, decode_v2, label_hash, v1, v2,
};

/// Why a remote-write body could not be decoded. The texts follow Prometheus's receiver (Go `snappy` and
/// gogo-protobuf messages) so that senders' logs read the same as against Prometheus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The snappy block is malformed (bad header varint, bad copy offset, length mismatch, empty body...).
    #[error("snappy: corrupt input")]
    SnappyCorrupt(#[source] snap::Error),
    /// The decompressed length declared by a snappy header is over the configured limit (or, for the decoders, a
    /// body is 4 GiB or more).
    #[error("decoded body too large: {len} bytes, limit {max}")]
    TooLarge { len: usize, max: usize },
    /// A varint, fixed-size value or length-delimited field runs past the end of its message.
    #[error("proto: unexpected EOF")]
    UnexpectedEof,
    /// A varint longer than 10 bytes, or a 10th byte carrying bits beyond 64.
    #[error("proto: integer overflow")]
    VarintOverflow,
    /// Wire types 6 and 7 do not exist.
    #[error("proto: illegal wireType {0}")]
    IllegalWireType(u8),
    /// Field number 0, or a key that does not fit in 32 bits.
    #[error("proto: illegal tag {0}")]
    IllegalTag(u64),
    /// An end-group marker without a matching start-group.
    #[error("proto: unexpected end of group")]
    UnexpectedEndGroup,
    /// A known field arrived with a wire type its declared type cannot have.
    #[error("proto: wrong wireType = {wire_type} for field {message}.{field}")]
    WrongWireType {
        message: &'static str,
        field: u32,
        wire_type: u8,
    },
    /// A 2.0 reference (label, help or unit) past the end of the symbols table.
    #[error("proto: invalid symbol reference {0}")]
    InvalidSymbolRef(u32),
    /// A 2.0 symbols table whose first entry is not the empty string.
    #[error("proto: symbols[0] must be the empty string")]
    FirstSymbolNotEmpty,
    /// A 2.0 `labels_refs` list that is not made of (name, value) pairs.
    #[error("proto: odd number of labels_refs ({0})")]
    OddLabelRefs(usize),
    /// A Loki push message prost could not decode (its own error text).
    #[error("{0}")]
    Loki(String),
}

/// Decompresses a snappy *block* (not framed) body into `scratch`, refusing before any allocation when the
/// length declared in the block header is over `max_len`.
///
/// `scratch` is cleared and resized to the decompressed length; its allocation is kept between calls, so a
/// handler that keeps one `Vec` per worker allocates only when a body is larger than any before it. On error
/// `scratch` is left empty. An empty body is corrupt, as in Go's `snappy.Decode`.
pub fn decompress_snappy(body: &[u8], max_len: usize, scratch: &mut Vec<u8>) -> Result<(), ProtoError> {
    scratch.clear();
    let len = match snap::raw::decompress_len(body) {
        Ok(len) => len,
        // The header declares more than snappy's own 4 GiB limit: still a size refusal, not corruption.
        Err(snap::Error::TooBig { given, .. }) => {
            return Err(ProtoError::TooLarge {
                len: usize::try_from(given).unwrap_or(usize::MAX),
                max: max_len,
            });
        }
        Err(e) => return Err(ProtoError::SnappyCorrupt(e)),
    };
    if len > max_len {
        return Err(ProtoError::TooLarge { len, max: max_len });
    }
    scratch.resize(len, 0);
    match snap::raw::Decoder::new().decompress(body, scratch) {
        Ok(n) => {
            scratch.truncate(n);
            Ok(())
        }
        Err(e) => {
            scratch.clear();
            Err(ProtoError::SnappyCorrupt(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decompresses `body` with limit `max` into a scratch buffer that starts with `initial_cap` bytes of
    /// capacity, and checks the result and the scratch capacity afterwards.
    fn check(body: &[u8], max: usize, initial_cap: usize, want: Result<&[u8], ProtoError>, want_cap: usize) {
        let mut scratch = Vec::with_capacity(initial_cap);
        let got = decompress_snappy(body, max, &mut scratch).map(|()| scratch.clone());
        assert_eq!(got, want.map(<[u8]>::to_vec), "body {body:02x?} max {max}");
        if got.is_err() {
            assert!(scratch.is_empty(), "scratch must be left empty on error");
        }
        assert_eq!(scratch.capacity(), want_cap, "capacity after body {body:02x?}");
    }

    fn compress(data: &[u8]) -> Vec<u8> {
        snap::raw::Encoder::new().compress_vec(data).unwrap()
    }

    #[test]
    fn snappy() {
        let text: Vec<u8> = (0..10_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let body = compress(&text);
        // Valid, into a buffer big enough: no reallocation.
        check(&body, text.len(), 64 << 10, Ok(&text), 64 << 10);
        // Valid, limit exactly the length.
        check(&body, text.len(), 0, Ok(&text), text.len());
        // One byte over the limit: refused, and nothing allocated.
        check(
            &body,
            text.len() - 1,
            0,
            Err(ProtoError::TooLarge {
                len: text.len(),
                max: text.len() - 1,
            }),
            0,
        );
        // An empty payload compresses to a 1-byte header and decompresses to nothing.
        check(&compress(b""), 0, 0, Ok(b""), 0);
        // Empty body: corrupt, as in Go.
        check(b"", 100, 0, Err(ProtoError::SnappyCorrupt(snap::Error::Empty)), 0);
        // A header varint longer than 5 bytes.
        check(
            &[0xff; 6],
            100,
            0,
            Err(ProtoError::SnappyCorrupt(snap::Error::Header)),
            0,
        );
    }

    #[test]
    fn snappy_corrupt_body() {
        let text = b"hello hello hello hello hello hello".repeat(20);
        let body = compress(&text);
        // Declared length one more than the real content: the decoder runs out of input.
        let mut longer = body.clone();
        longer[0] += 1;
        let mut scratch = Vec::new();
        assert!(matches!(
            decompress_snappy(&longer, 1 << 20, &mut scratch),
            Err(ProtoError::SnappyCorrupt(_))
        ));
        // Truncated at every offset: never a panic, never the original text, never a non-snappy error.
        for cut in 0..body.len() {
            match decompress_snappy(&body[..cut], 1 << 20, &mut scratch) {
                Ok(()) => assert_ne!(scratch, text, "cut {cut}"),
                Err(e) => assert!(matches!(e, ProtoError::SnappyCorrupt(_)), "cut {cut}: {e}"),
            }
        }
        assert_eq!(
            ProtoError::SnappyCorrupt(snap::Error::Empty).to_string(),
            "snappy: corrupt input"
        );
    }

    #[test]
    fn snappy_huge_declared_length_is_refused_before_allocating() {
        // Header declares 0xffff_fff0 bytes (just under snappy's own 4 GiB limit) with no content at all.
        let body = [0xf0, 0xff, 0xff, 0xff, 0x0f];
        check(
            &body,
            32 << 20,
            0,
            Err(ProtoError::TooLarge {
                len: 0xffff_fff0,
                max: 32 << 20,
            }),
            0,
        );
        // Over snappy's own u32 limit (2^35 - 1): still a size refusal.
        let body = [0xff, 0xff, 0xff, 0xff, 0x7f];
        check(
            &body,
            32 << 20,
            0,
            Err(ProtoError::TooLarge {
                len: (1 << 35) - 1,
                max: 32 << 20,
            }),
            0,
        );
    }
}
