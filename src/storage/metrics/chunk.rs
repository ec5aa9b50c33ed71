//! Compressed time-series chunks: the sample encoding of the metrics store.
//!
//! **Owns** the byte layout of one chunk (version 1, drawn below), the streaming [`ChunkAppender`] that writes it
//! and the [`ChunkIter`] / [`decode_all`] that read it back. A chunk holds the samples `(timestamp ms: i64,
//! value: f64)` of ONE series in strictly increasing timestamp order, at most `u16::MAX` of them (the head
//! cuts chunks at [`MAX_SAMPLES`]).
//!
//! **Never touches** series identity, labels, locking, files, the WAL or any other chunk: to the rest of the store a
//! chunk is an opaque `&[u8]`, and this module does no I/O (except its own fixture test).
//!
//! Values round-trip bit-exactly, NaN payloads included (the Prometheus staleness marker
//! `0x7ff0000000000002` comes back with the same bits), as do ±Inf and -0.0.
//!
//! # Layout, version 1
//!
//! ```text
//!  byte:   0        1        2        3        4 ...
//!        +--------+--------+--------+--------+-----------------------------------------------+
//!        |  0xC1  |  sample count   |  mode  |  bit stream: samples 0..count, MSB first,     |
//!        | enc/ver|  u16 big-endian |        |  last byte zero-padded                        |
//!        +--------+--------+--------+--------+-----------------------------------------------+
//!
//!  enc/ver  0xC1: high nibble 0xC is this format's magic, low nibble 1 the version. Deliberately
//!           distinct from Prometheus's chunk encodings (1 XOR, 2 histogram, 3 float histogram), so
//!           a container can hold both kinds and tell them apart by this one byte.
//!  count    number of samples, rewritten in place on every append.
//!  mode     value mode: 0..=6  decimal mode with scale e (values are m / 10^e, m an integer)
//!                       7      decimal mode, scale not chosen yet (every value so far is an escape)
//!                       8      XOR mode (Gorilla, as in Prometheus)
//!           The mode byte is rewritten in place when the first finite value picks the scale.
//! ```
//!
//! Every sample is its timestamp code immediately followed by its value code. Bit strings below are written
//! MSB first; "zigzag" maps 0, -1, 1, -2, .. to 0, 1, 2, 3, ..; "varint" is LEB128 (groups of 7 value bits,
//! least significant group first, high bit of each 8-bit group = "more groups follow"), written as 8-bit
//! groups inside the bit stream (not byte-aligned).
//!
//! **Timestamps.** Sample 0: zigzag varint of `t0`. Sample 1: varint of `d1 = t1 - t0`. Sample i >= 2:
//! delta of delta `dod = (t_i - t_{i-1}) - (t_{i-1} - t_{i-2})`, all arithmetic wrapping in 64 bits, coded as
//!
//! ```text
//!   0                          dod == 0
//!   10      + 3 bits           bucket 1: dod in -4..=4 except 0
//!   110     + 4 bits           bucket 2: -12..=-5 and 5..=12
//!   1110    + 7 bits           bucket 3: the rest of |dod| <= 76
//!   11110   + 11 bits          bucket 4: the rest of |dod| <= 1100
//!   111110  + 16 bits          bucket 5: the rest of |dod| <= 33868
//!   1111110 + 24 bits          bucket 6: the rest of |dod| <= 8422476 (2.3 h)
//!   1111111 + 64 bits          dod, two's complement
//! ```
//!
//! A bucket's payload is `zigzag(dod) - start`, `start` being the smallest zigzag value it holds: the buckets
//! sit back to back from zigzag 1 on (bucket 1 holds zigzag 1..=8, bucket 2 9..=24, ...), so no code is
//! spent on a value that a shorter code already covers.
//!
//! The widths were picked by measurement, not copied: scrapes at 15 s with ±3 ms jitter around the schedule
//! give dods in -12..=12 (the sum of three jitters), which cost 5.5 bits/sample here against 7.5 with the
//! Prometheus-like `10`+6 / `110`+13 / `1110`+20 layout, while ±10 ms and ±50 ms jitter still cost 8.3 and 12
//! bits (simulated over 24,000 dods per jitter level).
//!
//! **Values, decimal mode** (`mode` 0..=7). Most samples are integers or short decimals, so a value `v` is
//! stored as the integer `m` with `v == m / 10^e` bit-exactly, `|m| < 2^53`, `e` = the chunk's scale. Before
//! the chunk's first finite value:
//!
//! ```text
//!   0 + zigzag varint of m     the first finite value (sets the base for later deltas)
//!   1 + 64 bits                escape: the raw f64 bits (NaN, stale marker, ±Inf, -0.0)
//! ```
//!
//! then, with `delta = m - m_prev` (m_prev = the last finite value's integer; escapes do not change it):
//!
//! ```text
//!   0                          delta == 0 (same value as the last finite one)
//!   10       + 2 bits          bucket 1: delta in -2..=2 except 0
//!   110      + 5 bits          bucket 2: -18..=-3 and 3..=18
//!   1110     + 8 bits          bucket 3: the rest of |delta| <= 146
//!   11110    + 12 bits         bucket 4: the rest of |delta| <= 2194
//!   111110   + 17 bits         bucket 5: the rest of |delta| <= 67730
//!   1111110  + 22 bits         bucket 6: the rest of |delta| <= 2164882
//!   11111110 + 64 bits         delta, two's complement
//!   11111111 + 64 bits         escape: the raw f64 bits (NaN, stale marker, ±Inf, -0.0)
//! ```
//!
//! with payloads `zigzag(delta) - start` as for the timestamps.
//!
//! Widths measured the same way on counters (increments from {0,0,1,2,5,17,128}: 5.4 bits/value),
//! histogram-bucket counters (5.1), gauges with 2 decimals and sigma 1000 (26) and byte counters with
//! log-normal increments (21); the `10`+7 / `110`+14 / `1110`+24 layout costs 7.9 bits on the first of these.
//!
//! **Values, XOR mode** (`mode` 8), exactly Prometheus's float XOR scheme: sample 0 is the raw 64 bits; then
//! with `x = bits(v) ^ bits(v_prev)`:
//!
//! ```text
//!   0                                          x == 0
//!   10 + (64 - lead - trail) bits              x >> trail, reusing the previous lead/trail window
//!   11 + 5 bits lead + 6 bits sig + sig bits   new window: lead = leading zeros (capped at 31),
//!                                              sig = significant bits (64 written as 0), then x >> trail
//! ```
//!
//! # Choosing and changing the value mode (streaming)
//!
//! The appender never buffers raw samples: its memory is the encoded bytes plus a few words of state.
//! The first finite value picks the smallest scale `e` in 0..=6 that represents it (the chunk stays in mode 7
//! while only NaN/±Inf/-0.0 have arrived; those are escapes). A later value that is NaN/±Inf/-0.0 becomes an
//! escape. A later finite value the scale cannot represent makes the appender decode its own chunk and
//! rewrite it: into decimal mode with the smallest larger scale that represents the new value (so `12.4`
//! followed by `12.45` costs a rewrite, not the whole chunk in XOR mode), or, if no scale up to 6 does or a
//! rescaled integer would reach 2^53, into XOR mode. The scale only grows and XOR mode is final, so a chunk is
//! rewritten at most 7 times (in practice at most once); a value that is not an exact short decimal (like
//! `0.1 + 0.2`) or whose magnitude is 2^53 or more at scale 0 (like `1e300`) puts the chunk in XOR mode.
//!
//! -0.0 is an escape rather than a reason to leave decimal mode: it is numerically zero, rare, and
//! `0 / 10^e` would give +0.0.
//!
//! # Size and speed
//!
//! Measured by `cargo test --release -- --nocapture size_report speed_report` on synthetic 240-sample chunks
//! scraped every 15 s ± a uniform 3 ms around the schedule (a 2-vCPU AMD EPYC VM; Prometheus's size counted
//! by the rules of its `chunkenc/xor.go`):
//!
//! ```text
//!   series kind (share of the benchmark mix)   this format   Prometheus XOR   (bytes/sample)
//!   integer counters, +{0,0,1,2,5,17,128} (59%)    1.43            3.14
//!   histogram bucket counters (35%)                1.38            2.98
//!   gauges, 2 decimals, sigma 1000 (3.4%)          3.97            8.19
//!   constants (2.6%)                               0.87            2.05
//!   benchmark mix                                  1.48            3.23
//!   random floats in [0, 1) (XOR mode)             7.93            9.09
//!
//!   append 17.5 ns/sample, decode_all 9.4 ns/sample, ChunkIter::next 12.7 ns/sample
//!   (medians of 42 rounds of 240,000 samples of the mix)
//! ```

use thiserror::Error;

/// Buffer of a new chunk with no better size known: ~75 typical samples (a 240-sample chunk is
/// ~360 bytes), where a hinted chunk's first growth projects the rest (see [`SizeHint`]).
pub const FIRST_CHUNK_BYTES: usize = 128;

/// Number of samples at which callers cut a chunk. The format itself allows up to [`FORMAT_MAX_SAMPLES`].
pub const MAX_SAMPLES: usize = 240;

/// Largest sample count the format can store (the count field is a u16).
pub const FORMAT_MAX_SAMPLES: usize = u16::MAX as usize;

/// First byte of every version-1 chunk: magic nibble 0xC, version 1.
pub const ENCODING_V1: u8 = 0xC1;

/// Bytes before the bit stream: encoding/version, count (u16 BE), mode.
pub const HEADER_LEN: usize = 4;

/// Bits of the Prometheus staleness marker, a NaN that must survive the round trip bit for bit.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

const MODE_PENDING: u8 = 7;
const MODE_XOR: u8 = 8;
const MAX_SCALE: u8 = 6;
const POW10: [f64; MAX_SCALE as usize + 1] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];
/// 2^53: integers below it convert to f64 exactly, which the decimal mode relies on.
const TWO_POW_53: f64 = 9_007_199_254_740_992.0;
const NEG_ZERO_BITS: u64 = 0x8000_0000_0000_0000;
/// "No XOR window yet", as Prometheus's 0xff leading-zeros sentinel.
const NO_WINDOW: u32 = 0xff;

/// A prefix code for zigzagged integers (see the layout): code k (k = 0..=6) is k ones, a zero and a
/// `width[k]`-bit payload `z - start[k]`, for `z` in `start[k]..start[k + 1]`. Code 0 has no payload and
/// holds only z = 0. Larger `z` (from `start[7]` on) take the caller's raw escape.
struct Codes {
    width: [u32; 7],
    start: [u64; 8],
}

impl Codes {
    const fn new(buckets: [u32; 6]) -> Codes {
        let mut width = [0u32; 7];
        let mut start = [0u64; 8];
        start[1] = 1;
        let mut k = 1;
        while k < 7 {
            width[k] = buckets[k - 1];
            start[k + 1] = start[k] + (1u64 << width[k]);
            k += 1;
        }
        Codes { width, start }
    }

    /// Bits and bit length of the code of `x`, unless it needs the raw escape.
    #[inline(always)]
    fn code(&self, x: i64) -> Option<(u64, u32)> {
        let z = zigzag(x);
        let k = self.bucket(z);
        (k < 7).then(|| {
            // k ones, a zero, the payload: at most 7 + 24 bits.
            let w = self.width[k];
            let prefix = (1u64 << (k + 1)) - 2;
            ((prefix << w) | (z - self.start[k]), k as u32 + 1 + w)
        })
    }

    /// Index of the code holding `z` (7 = past the last bucket). Branch-free, because which bucket a sample
    /// lands in is random on real data: a compare-and-exit loop made append 19.4 instead of 17.4 ns/sample
    /// (`speed_report`, best round).
    #[inline(always)]
    fn bucket(&self, z: u64) -> usize {
        (1..8).map(|k| usize::from(z >= self.start[k])).sum()
    }
}

/// Timestamp delta-of-delta buckets; the raw 64-bit dod follows a prefix of seven ones.
const DOD: Codes = Codes::new([3, 4, 7, 11, 16, 24]);
const DOD_RAW: (u64, u32) = (0x7f, 7);

/// Decimal delta buckets; after seven ones, a zero introduces the raw 64-bit delta and a one an escape.
const VAL: Codes = Codes::new([2, 5, 8, 12, 17, 22]);
const VAL_RAW: (u64, u32) = (0xfe, 8);
const VAL_ESCAPE: (u64, u32) = (0xff, 8);

/// Zero bytes kept after the stream so every write can store a whole 8-byte word.
const SLACK: usize = 8;

/// Errors of this module: rejected appends and undecodable chunks.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ChunkError {
    #[error("chunk of {len} bytes is shorter than its {HEADER_LEN}-byte header")]
    ShortHeader { len: usize },
    #[error("byte {0:#04x} is not a monitoring-rs chunk encoding (magic nibble 0xC)")]
    BadMagic(u8),
    #[error("chunk version {0} is not supported (this build reads version 1)")]
    UnsupportedVersion(u8),
    #[error("unknown value mode {0}")]
    BadMode(u8),
    #[error("chunk ends inside sample {sample} of {count}")]
    Truncated { sample: usize, count: usize },
    #[error("corrupt sample {sample}: {what}")]
    Corrupt { sample: usize, what: &'static str },
    #[error("chunk already holds the format's maximum of {FORMAT_MAX_SAMPLES} samples")]
    Full,
    #[error("timestamp {t} is not after the chunk's last timestamp {last}")]
    OutOfOrder { t: i64, last: i64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Decimal mode before the first finite value: only escapes so far.
    Pending,
    /// Decimal mode with this scale.
    Decimal(u8),
    Xor,
}

impl Mode {
    fn byte(self) -> u8 {
        match self {
            Mode::Pending => MODE_PENDING,
            Mode::Decimal(e) => e,
            Mode::Xor => MODE_XOR,
        }
    }

    fn from_byte(b: u8) -> Option<Mode> {
        match b {
            0..=MAX_SCALE => Some(Mode::Decimal(b)),
            MODE_PENDING => Some(Mode::Pending),
            MODE_XOR => Some(Mode::Xor),
            _ => None,
        }
    }
}

#[inline]
fn zigzag(x: i64) -> u64 {
    ((x << 1) ^ (x >> 63)) as u64
}

#[inline]
fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// The integer `m` with `m / 10^e == v` bit for bit and `|m| < 2^53`, if there is one. Rejects NaN, ±Inf
/// and -0.0 (`0 / 10^e` is +0.0). Division by an exact power of ten is correctly rounded, so `m / 10^e` is
/// what a text parser makes of the decimal "m × 10^-e": this accepts every value parsed from a decimal with
/// at most `e` fraction digits, except that for `e > 0` and `|m| >= 2^51` the rounding of `v * 10^e` may
/// miss `m` (the bit check then rejects it, which costs compression, never exactness).
#[inline]
fn to_decimal(v: f64, e: u8) -> Option<i64> {
    if e == 0 {
        // Integers are most samples: no division and no rounding needed. `as` saturates and maps NaN to 0,
        // both then fail the bit comparison.
        let m = v as i64;
        return ((m as f64).to_bits() == v.to_bits() && m.unsigned_abs() < 1 << 53).then_some(m);
    }
    let p = POW10[usize::from(e)];
    let x = v * p;
    if x.is_nan() || x.abs() >= TWO_POW_53 {
        return None;
    }
    // Nearest integer without `f64::round` (a libm call on baseline x86-64, 7% of the append profile):
    // `x - trunc(x)` is exact here. Only a representable `v` matters, and its `x` is within a few ulps of an
    // integer, so ties are moot.
    let t = x as i64;
    let frac = x - t as f64;
    let m = t + i64::from(frac >= 0.5) - i64::from(frac <= -0.5);
    ((m as f64 / p).to_bits() == v.to_bits()).then_some(m)
}

/// Smallest scale in `from..=MAX_SCALE` that represents `v`, with its integer.
fn pick_scale(v: f64, from: u8) -> Option<(u8, i64)> {
    (from..=MAX_SCALE).find_map(|e| to_decimal(v, e).map(|m| (e, m)))
}

/// Values the decimal mode stores as raw bits instead of leaving the mode.
#[inline]
fn is_escape(v: f64) -> bool {
    !v.is_finite() || v.to_bits() == NEG_ZERO_BITS
}

/// What one value turns into, decided before anything is written so a rewrite never sees half a sample.
enum ValueCode {
    First(i64),
    Delta(i64),
    Escape,
    Xor,
}

/// Streaming writer of one chunk. Memory: the encoded bytes plus the few words below.
#[derive(Debug, Clone)]
pub struct ChunkAppender {
    /// Header, bit stream and at least [`SLACK`] zero bytes from the stream's last partial byte on.
    buf: Vec<u8>,
    /// Length of the bit stream in bits.
    bitlen: usize,
    /// Copy of the stream's last, partial byte (0 when the stream ends on a byte boundary).
    tail: u8,
    n: usize,
    t_first: i64,
    t_last: i64,
    /// Last timestamp delta (wrapping, as u64).
    delta: u64,
    mode: Mode,
    /// Decimal mode: a finite value was written, so `m` is the base of the next delta.
    have_base: bool,
    /// Decimal mode: integer of the last finite value.
    m: i64,
    /// XOR mode: bits of the previous value and the current lead/trail window.
    prev_bits: u64,
    leading: u32,
    trailing: u32,
    /// Where the caller will cut this chunk, so the buffer grows once to its projected size.
    hint: Option<SizeHint>,
}

/// How long a chunk gets: at most `max_samples` samples, spanning less than `max_span` ms (the
/// block duration: chunks never straddle a block boundary).
///
/// Without it the buffer doubles (128, 256, 512 bytes), so the memory of a store's open chunks rises
/// in steps through the whole chunk period (60 min at 240 samples and 15 s) and falls when the
/// chunks are cut: in the one-hour soak (`cargo bench --bench soak`, 6,100 series) heaptrack put
/// the head's chunk bytes at ~3.8 MB/h of growth. With the hint, the first growth reserves what the
/// samples so far project for a whole chunk of the series (plus an eighth), and the head hands a
/// cut chunk's buffer on to the series' next chunk ([`ChunkAppender::recycle`]). The projection is
/// for a whole chunk even when a block boundary will cut this one early. Session 6's soak stepped
/// +2.2 MiB at a block boundary, where a chunk cut early had reserved for its own samples only and
/// every series' next chunk needed a bigger buffer at the same moment (README, run C); that this was
/// the cause is a reading, not a proof: across the next boundary the step was 20.2 -> 23.4 MiB
/// before this change and 21.0 -> 23.3 MiB with it (one run each, README, session 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeHint {
    pub max_span: i64,
    pub max_samples: usize,
}

impl SizeHint {
    /// Samples in a whole chunk of a series whose samples come `interval` ms apart.
    fn whole(&self, interval: i64) -> usize {
        let by_time = self.max_span.saturating_sub(1) / interval.max(1) + 1;
        self.max_samples.min(usize::try_from(by_time).unwrap_or(usize::MAX))
    }

    /// Buffer size for a chunk of the series whose previous chunk held `n` samples in `len` bytes,
    /// from `min_t` to `max_t`. `None` when that chunk says too little.
    pub fn capacity_from(&self, len: usize, n: usize, min_t: i64, max_t: i64) -> Option<usize> {
        if n < 2 || max_t <= min_t {
            return None;
        }
        let interval = (max_t - min_t) / (n as i64 - 1);
        let bytes = HEADER_LEN + SLACK + projected_bytes(len.saturating_sub(HEADER_LEN), n, self.whole(interval));
        Some(bytes.min(MAX_HINTED_BYTES))
    }
}

/// Bytes `more` samples take at the rate of `stream` bytes per `n` samples, plus an eighth.
fn projected_bytes(stream: usize, n: usize, more: usize) -> usize {
    (stream as f64 / n as f64 * more as f64 * 1.125) as usize
}

/// Upper bound of what a hint reserves ahead (240 samples of 17 bytes, far above any real series).
const MAX_HINTED_BYTES: usize = 4096;

impl Default for ChunkAppender {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkAppender {
    /// An empty chunk (its bytes already decode to zero samples).
    pub fn new() -> Self {
        // Without a hint the Vec doubles from there.
        Self::with_capacity(FIRST_CHUNK_BYTES)
    }

    /// An empty chunk that grows its buffer by `hint` (see [`SizeHint`]), starting with room for `bytes`.
    pub fn with_hint(bytes: usize, hint: SizeHint) -> Self {
        let mut c = Self::with_capacity(bytes);
        c.hint = Some(hint);
        c
    }

    /// An empty chunk whose buffer starts with room for `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> Self {
        Self::in_buffer(Vec::with_capacity(bytes.max(HEADER_LEN + SLACK)))
    }

    /// An empty hinted chunk in the buffer of the series' previous chunk (from
    /// [`ChunkAppender::into_buffer`]), grown to `bytes` if it is smaller. No allocation when it is
    /// not: the head's chunk memory then stays put across cuts instead of being freed and taken again
    /// at another size (see [`SizeHint`]).
    pub fn recycle(mut buf: Vec<u8>, bytes: usize, hint: SizeHint) -> Self {
        buf.clear();
        // Within the projection's own margin (an eighth) the buffer is kept as it is: projections
        // from chunks of different lengths differ by a few bytes, and each would otherwise move it.
        let bytes = bytes.max(HEADER_LEN + SLACK);
        if buf.capacity() < bytes - bytes / 9 {
            buf.reserve_exact(bytes);
        }
        let mut c = Self::in_buffer(buf);
        c.hint = Some(hint);
        c
    }

    /// An empty chunk in `buf` (empty, with room for the header).
    fn in_buffer(mut buf: Vec<u8>) -> Self {
        buf.extend_from_slice(&[ENCODING_V1, 0, 0, Mode::Pending.byte()]);
        buf.resize(HEADER_LEN + SLACK, 0);
        ChunkAppender {
            buf,
            bitlen: 0,
            tail: 0,
            n: 0,
            t_first: 0,
            t_last: 0,
            delta: 0,
            mode: Mode::Pending,
            have_base: false,
            m: 0,
            prev_bits: 0,
            leading: NO_WINDOW,
            trailing: 0,
            hint: None,
        }
    }

    /// Appends a sample.
    ///
    /// # Panics
    /// If `t` is not after the last timestamp or the chunk already holds [`FORMAT_MAX_SAMPLES`] samples: both
    /// are caller bugs (callers cut chunks at [`MAX_SAMPLES`] and drop out-of-order samples before
    /// appending). Use [`ChunkAppender::try_append`] where they are not ruled out.
    pub fn append(&mut self, t: i64, v: f64) {
        if let Err(e) = self.try_append(t, v) {
            panic!("ChunkAppender::append: {e}");
        }
    }

    /// Appends a sample, or explains why it cannot (the chunk is then unchanged).
    pub fn try_append(&mut self, t: i64, v: f64) -> Result<(), ChunkError> {
        if self.n >= FORMAT_MAX_SAMPLES {
            return Err(ChunkError::Full);
        }
        if self.n > 0 && t <= self.t_last {
            return Err(ChunkError::OutOfOrder { t, last: self.t_last });
        }
        if let Err(target) = self.push(t, v) {
            self.rewrite(target, t, v);
        }
        Ok(())
    }

    pub fn num_samples(&self) -> usize {
        self.n
    }

    /// The complete chunk as it stands: decodable at any moment.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len()]
    }

    /// The buffer, whole capacity kept, for [`ChunkAppender::recycle`].
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// The finished chunk, without spare capacity.
    pub fn into_bytes(mut self) -> Vec<u8> {
        self.buf.truncate(self.len());
        self.buf.shrink_to_fit();
        self.buf
    }

    pub fn first_time(&self) -> Option<i64> {
        (self.n > 0).then_some(self.t_first)
    }

    pub fn last_time(&self) -> Option<i64> {
        (self.n > 0).then_some(self.t_last)
    }

    /// Length of the chunk in bytes.
    fn len(&self) -> usize {
        HEADER_LEN + self.bitlen.div_ceil(8)
    }

    /// Heap memory held, for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// Writes one sample in the current mode, or returns the mode the chunk must be rewritten into first
    /// (then nothing was written).
    #[inline]
    fn push(&mut self, t: i64, v: f64) -> Result<(), Mode> {
        let code = match self.mode {
            Mode::Xor => ValueCode::Xor,
            Mode::Decimal(e) => match to_decimal(v, e) {
                Some(m) if self.have_base => ValueCode::Delta(m),
                Some(m) => ValueCode::First(m),
                None if is_escape(v) => ValueCode::Escape,
                None => {
                    return Err(match pick_scale(v, e + 1) {
                        Some((e2, _)) => Mode::Decimal(e2),
                        None => Mode::Xor,
                    });
                }
            },
            Mode::Pending => {
                if is_escape(v) {
                    ValueCode::Escape
                } else if let Some((e, m)) = pick_scale(v, 0) {
                    self.set_mode(Mode::Decimal(e));
                    ValueCode::First(m)
                } else {
                    return Err(Mode::Xor);
                }
            }
        };
        if let ValueCode::Delta(m) = code
            && self.n >= 2
        {
            // The common sample: both codes bucketed and, together, short enough for a single write.
            let d = t.wrapping_sub(self.t_last) as u64;
            let dod = d.wrapping_sub(self.delta) as i64;
            if let (Some((tb, tn)), Some((vb, vn))) = (DOD.code(dod), VAL.code(m.wrapping_sub(self.m)))
                && tn + vn <= 56
            {
                self.put_bits((tb << vn) | vb, tn + vn);
                self.delta = d;
                self.t_last = t;
                self.m = m;
                self.n += 1;
                let count = (self.n as u16).to_be_bytes();
                self.buf[1..3].copy_from_slice(&count);
                return Ok(());
            }
        }
        self.put_time(t);
        self.put_value(code, v);
        self.n += 1;
        // `n <= FORMAT_MAX_SAMPLES` is checked by `try_append` and by construction in `rewrite`.
        let count = (self.n as u16).to_be_bytes();
        self.buf[1..3].copy_from_slice(&count);
        Ok(())
    }

    fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
        self.buf[3] = mode.byte();
    }

    /// Re-encodes the chunk in `target` mode and appends `(t, v)`. Rare (see the module docs): it copies
    /// the stream out, then rewrites the chunk in its own buffer, which the chunk keeps (see
    /// [`ChunkAppender::recycle`]).
    #[cold]
    fn rewrite(&mut self, target: Mode, t: i64, v: f64) {
        let stream = self.buf.get(HEADER_LEN..self.len()).unwrap_or_default().to_vec();
        let (n, mode, hint) = (self.n, self.mode, self.hint);
        let mut target = target;
        loop {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            *self = ChunkAppender::in_buffer(buf);
            self.hint = hint;
            self.set_mode(target);
            let mut it = ChunkIter::from_parts(&stream, n, mode);
            let fits = it.by_ref().all(|(ot, ov)| self.push(ot, ov).is_ok()) && self.push(t, v).is_ok();
            // The stream was written by this appender, so it decodes completely: an error would be a bug here.
            debug_assert!(it.err().is_none(), "appender output failed to decode: {:?}", it.err());
            match (fits, target) {
                // XOR mode takes every value, so `fits` is always true there.
                (true, _) | (false, Mode::Xor) => return,
                // A rescaled older value reached 2^53: give up on decimal mode.
                (false, _) => target = Mode::Xor,
            }
        }
    }

    #[inline]
    fn put_time(&mut self, t: i64) {
        match self.n {
            0 => {
                self.put_varint(zigzag(t));
                self.t_first = t;
            }
            1 => {
                let d = t.wrapping_sub(self.t_last) as u64;
                self.put_varint(d);
                self.delta = d;
            }
            _ => {
                let d = t.wrapping_sub(self.t_last) as u64;
                let dod = d.wrapping_sub(self.delta) as i64;
                self.put_code(dod, &DOD, DOD_RAW);
                self.delta = d;
            }
        }
        self.t_last = t;
    }

    #[inline]
    fn put_value(&mut self, code: ValueCode, v: f64) {
        match code {
            ValueCode::Delta(m) => {
                self.put_code(m.wrapping_sub(self.m), &VAL, VAL_RAW);
                self.m = m;
            }
            ValueCode::First(m) => {
                self.put_bits(0, 1);
                self.put_varint(zigzag(m));
                self.m = m;
                self.have_base = true;
            }
            ValueCode::Escape => {
                if self.have_base {
                    self.put_bits(VAL_ESCAPE.0, VAL_ESCAPE.1);
                } else {
                    self.put_bits(1, 1);
                }
                self.put_bits64(v.to_bits(), 64);
            }
            ValueCode::Xor => self.put_xor(v.to_bits()),
        }
    }

    #[inline]
    fn put_xor(&mut self, bits: u64) {
        let prev = std::mem::replace(&mut self.prev_bits, bits);
        if self.n == 0 {
            self.put_bits64(bits, 64);
            return;
        }
        let x = bits ^ prev;
        if x == 0 {
            self.put_bits(0, 1);
            return;
        }
        let lead = x.leading_zeros().min(31);
        let trail = x.trailing_zeros();
        if self.leading != NO_WINDOW && lead >= self.leading && trail >= self.trailing {
            self.put_bits(0b10, 2);
            self.put_bits64(x >> self.trailing, 64 - self.leading - self.trailing);
        } else {
            self.leading = lead;
            self.trailing = trail;
            let sig = 64 - lead - trail;
            self.put_bits((0b11 << 11) | (u64::from(lead) << 6) | u64::from(sig & 63), 13);
            self.put_bits64(x >> trail, sig);
        }
    }

    /// Writes `x` with `codes`, or as `raw` + 64 bits past the last bucket.
    #[inline(always)]
    fn put_code(&mut self, x: i64, codes: &Codes, raw: (u64, u32)) {
        if let Some((bits, n)) = codes.code(x) {
            self.put_bits(bits, n);
        } else {
            self.put_bits(raw.0, raw.1);
            self.put_bits64(x as u64, 64);
        }
    }

    fn put_varint(&mut self, mut x: u64) {
        while x >= 0x80 {
            self.put_bits((x & 0x7f) | 0x80, 8);
            x >>= 7;
        }
        self.put_bits(x, 8);
    }

    /// Appends `x`, which has at most `n` bits (1 <= n <= 56), MSB first. The byte holding the next free
    /// bit and the 7 after it always exist (zero past the stream), so this stores one big-endian word: the
    /// partial last byte, from `tail`, and `x` after it. No per-bit or per-byte loop, no branch on how the
    /// bits straddle bytes, and no load from `buf`. Reading the word back instead (load, OR, store at an
    /// address overlapping the previous store) made `speed_report`'s append rounds bimodal, 17 or 34
    /// ns/sample with a median of 34; with `tail` the median is 18.
    #[inline(always)]
    fn put_bits(&mut self, x: u64, n: u32) {
        debug_assert!((1..=56).contains(&n) && x >> n == 0, "put_bits({x:#x}, {n})");
        let at = HEADER_LEN + (self.bitlen >> 3);
        let used = (self.bitlen & 7) as u32;
        let word = (u64::from(self.tail) << 56) | (x << (64 - used - n));
        if let Some(dst) = self.buf.get_mut(at..).and_then(|b| b.first_chunk_mut::<8>()) {
            *dst = word.to_be_bytes();
        } else {
            debug_assert!(false, "slack invariant broken"); // `buf.len() >= at + SLACK`, kept below
        }
        // used + n <= 63, so the new partial byte is one of the 8 just written.
        self.tail = (word << ((used + n) & !7)).to_be_bytes()[0];
        self.bitlen += n as usize;
        let need = HEADER_LEN + (self.bitlen >> 3) + SLACK;
        if self.buf.len() < need {
            if need > self.buf.capacity() {
                self.grow(need);
            }
            self.buf.resize(need, 0);
        }
    }

    /// Reserves room for the rest of the chunk as the hint projects it (at least a quarter more than
    /// `need`, so growth stays geometric when the projection falls short); without a hint, `resize`
    /// doubles.
    #[cold]
    fn grow(&mut self, need: usize) {
        // Two samples give the interval; before them a projection would rest on the first sample's
        // full-width encoding alone.
        let Some(h) = self.hint.filter(|_| self.n >= 2) else {
            return;
        };
        // `need` already counts the sample being written: n + 1 samples so far.
        let n = self.n + 1;
        let interval = (self.t_last - self.t_first) / (self.n as i64 - 1);
        let remaining = h.whole(interval).saturating_sub(n);
        let stream = need.saturating_sub(HEADER_LEN + SLACK);
        let projected = need + projected_bytes(stream, n, remaining);
        let target = projected.min(need.max(MAX_HINTED_BYTES)).max(need + need / 4);
        self.buf.reserve_exact(target - self.buf.len());
    }

    /// [`Self::put_bits`] for up to 64 bits.
    #[inline]
    fn put_bits64(&mut self, x: u64, n: u32) {
        if n > 32 {
            self.put_bits(x >> 32, n - 32);
            self.put_bits(x & 0xffff_ffff, 32);
        } else {
            self.put_bits(x, n);
        }
    }
}

/// Why a read of the bit stream failed, before it is tied to a sample index.
enum Fault {
    Truncated,
    Corrupt(&'static str),
}

/// MSB-first reader over a byte slice with a 64-bit buffer.
struct BitReader<'a> {
    data: &'a [u8],
    /// Next byte of `data` not yet counted in `nbits`.
    pos: usize,
    /// Unread bits, left-aligned. Bits below the top `nbits` are either zero or the true following bits of
    /// `data` (a whole-word refill loads more than it counts), so OR-ing the next refill in is exact.
    acc: u64,
    nbits: u32,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        BitReader {
            data,
            pos: 0,
            acc: 0,
            nbits: 0,
        }
    }

    /// Tops `acc` up to at least 57 bits, or to all that is left of `data`. Requires `nbits <= 56`.
    #[inline]
    fn refill(&mut self) {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        if let Some(word) = rest.first_chunk::<8>() {
            self.acc |= u64::from_be_bytes(*word) >> self.nbits;
            let k = (64 - self.nbits) >> 3;
            self.pos += k as usize;
            self.nbits += k * 8;
        } else {
            for &b in rest {
                if self.nbits > 56 {
                    break;
                }
                self.acc |= u64::from(b) << (56 - self.nbits);
                self.pos += 1;
                self.nbits += 8;
            }
        }
    }

    /// Reads `n` bits, 1 <= n <= 56.
    #[inline]
    fn bits(&mut self, n: u32) -> Result<u64, Fault> {
        debug_assert!((1..=56).contains(&n));
        if self.nbits < n {
            self.refill();
            if self.nbits < n {
                return Err(Fault::Truncated);
            }
        }
        let v = self.acc >> (64 - n);
        self.acc <<= n;
        self.nbits -= n;
        Ok(v)
    }

    /// Reads `n` bits, 1 <= n <= 64.
    #[inline]
    fn bits64(&mut self, n: u32) -> Result<u64, Fault> {
        if n <= 56 {
            self.bits(n)
        } else {
            let hi = self.bits(n - 32)?;
            Ok((hi << 32) | self.bits(32)?)
        }
    }

    /// Counts ones up to `max` (<= 8), consuming the terminating zero when fewer than `max`.
    #[inline]
    fn unary(&mut self, max: u32) -> Result<u32, Fault> {
        if self.nbits < max {
            self.refill();
        }
        let ones = self.acc.leading_ones().min(max);
        let used = if ones < max { ones + 1 } else { max };
        if used > self.nbits {
            // Past the end of `data` the buffer holds zeros, so `ones` was not inflated by garbage.
            return Err(Fault::Truncated);
        }
        self.acc <<= used;
        self.nbits -= used;
        Ok(ones)
    }

    fn varint(&mut self) -> Result<u64, Fault> {
        let mut x = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.bits(8)?;
            x |= (b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(x);
            }
        }
        Err(Fault::Corrupt("varint longer than 10 groups"))
    }

    /// Reads a code of `codes` and returns its zigzagged integer, or `None` after a prefix of seven ones
    /// (whatever follows is the caller's).
    #[inline(always)]
    fn code(&mut self, codes: &Codes) -> Result<Option<u64>, Fault> {
        if self.nbits < 32 {
            self.refill();
        }
        // Past the end of `data` the buffer holds zeros, so garbage never adds ones.
        let k = self.acc.leading_ones() as usize;
        if k >= 7 {
            if self.nbits < 7 {
                return Err(Fault::Truncated);
            }
            self.acc <<= 7;
            self.nbits -= 7;
            return Ok(None);
        }
        let w = codes.width[k];
        let len = k as u32 + 1 + w;
        if len > self.nbits {
            return Err(Fault::Truncated);
        }
        let payload = (self.acc >> (64 - len)) & ((1u64 << w) - 1);
        self.acc <<= len;
        self.nbits -= len;
        Ok(Some(codes.start[k] + payload))
    }
}

/// `ChunkIter::decode_as` kinds: decimal mode at scale 0 (or no scale yet), at a larger scale, XOR mode.
const UNSCALED: u8 = 0;
const SCALED: u8 = 1;
const XOR: u8 = 2;

/// Decoder of one chunk. A corrupt or truncated chunk ends the iteration early; [`ChunkIter::err`] says why.
pub struct ChunkIter<'a> {
    r: BitReader<'a>,
    count: usize,
    /// Samples decoded so far.
    i: usize,
    mode: Mode,
    /// `10^scale` in decimal mode.
    pow: f64,
    t: i64,
    delta: u64,
    have_base: bool,
    m: i64,
    prev_bits: u64,
    leading: u32,
    trailing: u32,
    /// A sample decoded by `seek` and not yet returned by `next`.
    peeked: Option<(i64, f64)>,
    err: Option<ChunkError>,
}

impl<'a> ChunkIter<'a> {
    /// Validates the header; the bit stream is checked as it is decoded.
    pub fn new(chunk: &'a [u8]) -> Result<Self, ChunkError> {
        let &[enc, c0, c1, mode, ..] = chunk else {
            return Err(ChunkError::ShortHeader { len: chunk.len() });
        };
        if enc >> 4 != ENCODING_V1 >> 4 {
            return Err(ChunkError::BadMagic(enc));
        }
        if enc != ENCODING_V1 {
            return Err(ChunkError::UnsupportedVersion(enc & 0x0f));
        }
        let mode = Mode::from_byte(mode).ok_or(ChunkError::BadMode(mode))?;
        let count = usize::from(u16::from_be_bytes([c0, c1]));
        Ok(Self::from_parts(&chunk[HEADER_LEN..], count, mode))
    }

    /// A decoder of `count` samples of a bit stream in `mode` (the header's content, already known).
    fn from_parts(stream: &'a [u8], count: usize, mode: Mode) -> Self {
        let pow = match mode {
            Mode::Decimal(e) => POW10[usize::from(e)],
            _ => 1.0,
        };
        ChunkIter {
            r: BitReader::new(stream),
            count,
            i: 0,
            mode,
            pow,
            t: 0,
            delta: 0,
            have_base: false,
            m: 0,
            prev_bits: 0,
            leading: NO_WINDOW,
            trailing: 0,
            peeked: None,
            err: None,
        }
    }

    /// Samples in the chunk according to its header (not the number left).
    pub fn num_samples(&self) -> usize {
        self.count
    }

    /// Why the iteration ended early, if it did.
    pub fn err(&self) -> Option<&ChunkError> {
        self.err.as_ref()
    }

    /// Skips every sample with a timestamp before `t` and returns the first one at or after it without
    /// consuming it: the next call to `next` yields it again. `None` at the end of the chunk (or on error).
    pub fn seek(&mut self, t: i64) -> Option<(i64, f64)> {
        loop {
            let s = match self.peeked {
                Some(s) => s,
                None => self.decode()?,
            };
            if s.0 >= t {
                self.peeked = Some(s);
                return Some(s);
            }
            self.peeked = None;
        }
    }

    /// Which `decode_as` specialisation fits this chunk.
    fn kind(&self) -> u8 {
        match self.mode {
            Mode::Xor => XOR,
            Mode::Decimal(e) if e > 0 => SCALED,
            _ => UNSCALED,
        }
    }

    fn decode(&mut self) -> Option<(i64, f64)> {
        match self.kind() {
            UNSCALED => self.decode_as::<UNSCALED>(),
            SCALED => self.decode_as::<SCALED>(),
            _ => self.decode_as::<XOR>(),
        }
    }

    /// Decodes the rest of the chunk into `out` with one specialised loop.
    fn decode_rest_into(&mut self, out: &mut Vec<(i64, f64)>) {
        fn run<const KIND: u8>(it: &mut ChunkIter<'_>, out: &mut Vec<(i64, f64)>) {
            while let Some(s) = it.decode_as::<KIND>() {
                out.push(s);
            }
        }
        out.extend(self.peeked.take());
        match self.kind() {
            UNSCALED => run::<UNSCALED>(self, out),
            SCALED => run::<SCALED>(self, out),
            _ => run::<XOR>(self, out),
        }
    }

    /// Decodes one sample of a chunk of kind `KIND`. The kind is a constant so that each loop is compiled
    /// for one kind: decided per sample, the compiler merged the scale-0 and scaled paths into a division by
    /// a selected divisor (`x / 1.0 == x`), and that division was a third of the decode profile; together
    /// with keeping the loop's state in registers this took `decode_all` from 11.5 to 9.5 ns/sample
    /// (`speed_report`, best round).
    #[inline(always)]
    fn decode_as<const KIND: u8>(&mut self) -> Option<(i64, f64)> {
        if self.i >= self.count || self.err.is_some() {
            return None;
        }
        match self.sample::<KIND>() {
            Ok(s) => {
                self.i += 1;
                Some(s)
            }
            Err(f) => {
                let (sample, count) = (self.i, self.count);
                self.err = Some(match f {
                    Fault::Truncated => ChunkError::Truncated { sample, count },
                    Fault::Corrupt(what) => ChunkError::Corrupt { sample, what },
                });
                None
            }
        }
    }

    #[inline(always)]
    fn sample<const KIND: u8>(&mut self) -> Result<(i64, f64), Fault> {
        let t = self.time()?;
        let v = match KIND {
            XOR => self.xor()?,
            _ => self.decimal::<KIND>()?,
        };
        Ok((t, v))
    }

    #[inline(always)]
    fn time(&mut self) -> Result<i64, Fault> {
        let t = match self.i {
            0 => unzigzag(self.r.varint()?),
            1 => {
                self.delta = self.r.varint()?;
                self.t.wrapping_add(self.delta as i64)
            }
            _ => {
                let dod = match self.r.code(&DOD)? {
                    Some(z) => unzigzag(z),
                    None => self.r.bits64(64)? as i64,
                };
                self.delta = self.delta.wrapping_add(dod as u64);
                self.t.wrapping_add(self.delta as i64)
            }
        };
        if self.i > 0 && t <= self.t {
            return Err(Fault::Corrupt("timestamps not increasing"));
        }
        self.t = t;
        Ok(t)
    }

    #[inline(always)]
    fn decimal<const KIND: u8>(&mut self) -> Result<f64, Fault> {
        if !self.have_base {
            if self.r.bits(1)? == 1 {
                return Ok(f64::from_bits(self.r.bits64(64)?));
            }
            if self.mode == Mode::Pending {
                return Err(Fault::Corrupt("finite value in a chunk without a decimal scale"));
            }
            self.m = unzigzag(self.r.varint()?);
            self.have_base = true;
        } else {
            let delta = match self.r.code(&VAL)? {
                Some(z) => unzigzag(z),
                None if self.r.bits(1)? == 0 => self.r.bits64(64)? as i64,
                None => return Ok(f64::from_bits(self.r.bits64(64)?)),
            };
            self.m = self.m.wrapping_add(delta);
        }
        if self.m.unsigned_abs() >= 1 << 53 {
            return Err(Fault::Corrupt("decimal integer beyond 2^53"));
        }
        Ok(if KIND == SCALED {
            self.m as f64 / self.pow
        } else {
            self.m as f64
        })
    }

    #[inline]
    fn xor(&mut self) -> Result<f64, Fault> {
        if self.i == 0 {
            self.prev_bits = self.r.bits64(64)?;
            return Ok(f64::from_bits(self.prev_bits));
        }
        match self.r.unary(2)? {
            0 => {}
            1 => {
                if self.leading == NO_WINDOW {
                    return Err(Fault::Corrupt("XOR window reused before one was set"));
                }
                let x = self.r.bits64(64 - self.leading - self.trailing)?;
                self.prev_bits ^= x << self.trailing;
            }
            _ => {
                let head = self.r.bits(11)? as u32;
                let lead = head >> 6;
                let sig = match head & 63 {
                    0 => 64,
                    s => s,
                };
                if lead + sig > 64 {
                    return Err(Fault::Corrupt("XOR window wider than 64 bits"));
                }
                self.leading = lead;
                self.trailing = 64 - lead - sig;
                let x = self.r.bits64(sig)?;
                self.prev_bits ^= x << self.trailing;
            }
        }
        Ok(f64::from_bits(self.prev_bits))
    }
}

impl Iterator for ChunkIter<'_> {
    type Item = (i64, f64);

    #[inline]
    fn next(&mut self) -> Option<(i64, f64)> {
        match self.peeked.take() {
            Some(s) => Some(s),
            None => self.decode(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let peeked = usize::from(self.peeked.is_some());
        let left = if self.err.is_some() {
            0
        } else {
            self.count.saturating_sub(self.i)
        };
        (peeked, Some(peeked + left))
    }
}

impl std::iter::FusedIterator for ChunkIter<'_> {}

/// Appends every sample of `chunk` to `out` (which is not cleared, so callers can reuse one buffer). On
/// error `out` keeps the samples decoded before the damage.
pub fn decode_all(chunk: &[u8], out: &mut Vec<(i64, f64)>) -> Result<(), ChunkError> {
    let mut it = ChunkIter::new(chunk)?;
    out.reserve(it.num_samples());
    it.decode_rest_into(out);
    match it.err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// xorshift64*: deterministic and dependency-free.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n
        }
        /// Uniform in `lo..=hi`.
        fn range(&mut self, lo: i64, hi: i64) -> i64 {
            lo + self.below((hi - lo) as u64 + 1) as i64
        }
        /// Uniform in [0, 1).
        fn unit(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn chance(&mut self, p: f64) -> bool {
            self.unit() < p
        }
        /// Standard normal (Box-Muller).
        fn gauss(&mut self) -> f64 {
            let u1 = 1.0 - self.unit();
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
        }
        fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
            xs[self.below(xs.len() as u64) as usize]
        }
    }

    type Samples = Vec<(i64, f64)>;

    const T0: i64 = 1_700_000_000_000;
    const STALE: f64 = f64::from_bits(STALE_NAN_BITS);

    // ---- generators -------------------------------------------------------------------------------------

    /// `n` scrape timestamps on a `step` grid, each off by a uniform jitter in `-jitter..=jitter`.
    fn grid_times(rng: &mut Rng, n: usize, start: i64, step: i64, jitter: i64) -> Vec<i64> {
        (0..n as i64)
            .map(|i| start + step * i + rng.range(-jitter, jitter))
            .collect()
    }

    fn scrape_times(rng: &mut Rng, n: usize) -> Vec<i64> {
        let start = T0 + rng.range(0, 15_000);
        grid_times(rng, n, start, 15_000, 3)
    }

    fn with_values(ts: Vec<i64>, mut f: impl FnMut(usize) -> f64) -> Vec<(i64, f64)> {
        ts.into_iter().enumerate().map(|(i, t)| (t, f(i))).collect()
    }

    /// Counter starting anywhere below 1e6, growing by increments drawn from `incs`.
    fn counter(rng: &mut Rng, n: usize, incs: &[u64]) -> Vec<(i64, f64)> {
        let ts = scrape_times(rng, n);
        let mut c = rng.below(1_000_000);
        with_values(ts, |_| {
            c += rng.pick(incs);
            c as f64
        })
    }

    /// Histogram bucket counter: increments from {0,3,10,40} scaled by the bucket's share, truncated.
    fn bucket_counter(rng: &mut Rng, n: usize) -> Vec<(i64, f64)> {
        let ts = scrape_times(rng, n);
        let share = rng.unit();
        let mut c = rng.below(100_000);
        with_values(ts, |_| {
            c += (rng.pick(&[0.0, 3.0, 10.0, 40.0]) * share) as u64;
            c as f64
        })
    }

    /// Random walk around 1e6 with gaussian steps of `sigma`, rounded to `decimals` decimals.
    fn gauge(rng: &mut Rng, n: usize, sigma: f64, decimals: i32) -> Vec<(i64, f64)> {
        let ts = scrape_times(rng, n);
        let p = 10f64.powi(decimals);
        let mut x = 1e6 + rng.gauss() * 1e5;
        with_values(ts, |_| {
            x += rng.gauss() * sigma;
            (x * p).round() / p
        })
    }

    fn constant(rng: &mut Rng, n: usize) -> Vec<(i64, f64)> {
        let ts = scrape_times(rng, n);
        let v = rng.pick(&[0.0, 1.0, 42.0, 0.5, 1e9]);
        with_values(ts, |_| v)
    }

    fn random_floats(rng: &mut Rng, n: usize) -> Vec<(i64, f64)> {
        let ts = scrape_times(rng, n);
        with_values(ts, |_| rng.unit())
    }

    const COUNTER_INCS: [u64; 7] = [0, 0, 1, 2, 5, 17, 128];

    // ---- helpers ----------------------------------------------------------------------------------------

    fn encode(samples: &[(i64, f64)]) -> ChunkAppender {
        let mut app = ChunkAppender::new();
        for &(t, v) in samples {
            app.append(t, v);
        }
        app
    }

    fn decode(chunk: &[u8]) -> Result<Vec<(i64, f64)>, ChunkError> {
        let mut out = Vec::new();
        decode_all(chunk, &mut out).map(|()| out)
    }

    /// Panics unless `got` and `want` hold the same timestamps and bit-identical values.
    fn assert_same(got: &[(i64, f64)], want: &[(i64, f64)], what: &str) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                g.0 == w.0 && g.1.to_bits() == w.1.to_bits(),
                "{what}: sample {i}: got ({}, {} = {:#018x}), want ({}, {} = {:#018x})",
                g.0,
                g.1,
                g.1.to_bits(),
                w.0,
                w.1,
                w.1.to_bits()
            );
        }
        assert_eq!(got.len(), want.len(), "{what}: sample count");
    }

    fn same_sample(a: Option<(i64, f64)>, b: Option<(i64, f64)>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => a.0 == b.0 && a.1.to_bits() == b.1.to_bits(),
            (a, b) => a.is_none() && b.is_none(),
        }
    }

    /// Round trip: encodes `samples`, checks the decode is exact, that the appender's accessors and `seek`
    /// agree with the input, and that the chunk costs at most `want_max_bytes_per_sample` (per sample, or in
    /// total for an empty chunk). Returns the bytes per sample.
    fn check(samples: &[(i64, f64)], want_max_bytes_per_sample: f64) -> f64 {
        let app = encode(samples);
        assert_eq!(app.num_samples(), samples.len());
        assert_eq!(app.first_time(), samples.first().map(|s| s.0));
        assert_eq!(app.last_time(), samples.last().map(|s| s.0));
        assert!(app.heap_bytes() >= app.bytes().len());
        let got = decode(app.bytes()).unwrap_or_else(|e| panic!("decode failed: {e}"));
        assert_same(&got, samples, "round trip");
        let mut it = ChunkIter::new(app.bytes()).unwrap();
        assert_eq!(it.size_hint(), (0, Some(samples.len())));
        assert_same(&it.by_ref().collect::<Vec<_>>(), samples, "round trip through next()");
        assert_eq!(it.err(), None);
        let mut appended = vec![(7, 7.0)];
        decode_all(app.bytes(), &mut appended).unwrap();
        assert_same(&appended[1..], samples, "decode_all appends");

        let it = ChunkIter::new(app.bytes()).unwrap();
        assert_eq!(it.num_samples(), samples.len());
        let mut targets = vec![i64::MIN, i64::MAX];
        for s in samples.iter().step_by(37).take(8) {
            targets.extend([s.0, s.0.saturating_add(1), s.0.saturating_sub(1)]);
        }
        for target in targets {
            let want = samples.iter().copied().find(|s| s.0 >= target);
            let mut it = ChunkIter::new(app.bytes()).unwrap();
            assert!(same_sample(it.seek(target), want), "seek({target})");
            assert!(same_sample(it.seek(target), want), "second seek({target})");
            assert!(same_sample(it.next(), want), "next after seek({target})");
        }

        let bytes = app.bytes().to_vec();
        let owned = app.into_bytes();
        assert_eq!(owned, bytes);
        assert_eq!(owned.capacity(), owned.len());
        let per_sample = bytes.len() as f64 / samples.len().max(1) as f64;
        assert!(
            per_sample <= want_max_bytes_per_sample,
            "{} bytes for {} samples = {per_sample:.3} B/sample, want <= {want_max_bytes_per_sample}",
            bytes.len(),
            samples.len()
        );
        per_sample
    }

    fn mode_of(samples: &[(i64, f64)]) -> u8 {
        encode(samples).bytes()[3]
    }

    // ---- cases ------------------------------------------------------------------------------------------

    #[test]
    fn round_trips() {
        let mut rng = Rng::new(1);
        let r = &mut rng;
        let specials = [
            f64::NAN,
            STALE,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            f64::from_bits(0xfff8_0000_0000_0001),
        ];
        let special_mix = {
            let ts = scrape_times(r, 240);
            with_values(ts, |i| {
                if i % 3 == 1 {
                    specials[(i / 3) % specials.len()]
                } else {
                    (i * 7) as f64
                }
            })
        };
        let specials_first = with_values(
            scrape_times(r, 60),
            |i| if i < 6 { specials[i] } else { i as f64 / 4.0 },
        );
        let specials_then_float = with_values(scrape_times(r, 60), |i| {
            if i < 6 { specials[i] } else { 1.0 / 3.0 + i as f64 }
        });
        let gaps = {
            let mut t = T0;
            (0..240)
                .map(|i| {
                    t += if i % 10 == 0 {
                        r.range(1, 48) * 3_600_000 + r.range(-999, 999)
                    } else {
                        15_000
                    };
                    (t, (i / 4) as f64)
                })
                .collect::<Vec<_>>()
        };
        let jumps = {
            // Hour-scale dods together with million-scale value steps: the longest codes of both tables.
            let mut t = T0;
            let mut v = 0.0;
            (0..240)
                .map(|i| {
                    t += 3_600_000 * (1 + i % 2) + r.range(-5, 5);
                    v += if i % 3 == 0 { 2e6 } else { -1e6 } + r.range(0, 1000) as f64;
                    (t, v)
                })
                .collect::<Vec<_>>()
        };
        let negative = with_values(grid_times(r, 240, -1_800_000, 15_000, 3), |i| i as f64 - 100.0);
        let extreme_times = vec![
            (i64::MIN, 1.0),
            (i64::MIN + 1, 2.0),
            (-1, 3.0),
            (0, 4.0),
            (1, 4.0),
            (i64::MAX - 1, 5.0),
            (i64::MAX, 6.0),
        ];
        let huge = with_values(scrape_times(r, 240), |i| match i % 4 {
            0 => 1e300 * i as f64,
            1 => -1e300,
            2 => f64::MAX,
            _ => f64::from_bits(1 + i as u64), // subnormal
        });
        let int_then_float = with_values(scrape_times(r, 240), |i| {
            if i < 100 { (i * 3) as f64 } else { 0.1 + 0.2 * i as f64 }
        });
        let int_then_decimals = with_values(scrape_times(r, 240), |i| match i {
            0..100 => (i * 3) as f64,
            100..150 => 300.5 + i as f64,
            _ => 450.25 + i as f64,
        });
        let near_2_53 = with_values(scrape_times(r, 50), |i| ((1u64 << 53) - 50 + i as u64) as f64);
        let past_2_53_after_rescale = with_values(scrape_times(r, 50), |i| {
            if i < 40 {
                ((1u64 << 52) + i as u64) as f64
            } else {
                0.5 + i as f64
            }
        });
        let micro = with_values(scrape_times(r, 240), |i| (i as f64 * 7.0 + 1.0) / 1e6);

        #[rustfmt::skip]
        let cases: Vec<(&str, Samples, f64)> = vec![
            ("empty", vec![], HEADER_LEN as f64),
            ("single sample", vec![(T0, 42.0)], 16.0),
            ("single stale marker", vec![(T0, STALE)], 20.0),
            ("constant, exact 15 s", with_values((0..240).map(|i| T0 + 15_000 * i).collect(), |_| 3.0), 0.35),
            ("constant, jittered", constant(r, 240), 0.95),
            ("integer counter", counter(r, 240, &COUNTER_INCS), 1.6),
            ("histogram bucket counter", bucket_counter(r, 240), 1.6),
            ("gauge, 2 decimals", gauge(r, 240, 1000.0, 2), 4.5),
            ("random floats (XOR)", random_floats(r, 240), 8.5),
            ("NaN, stale, ±Inf, -0.0 mixed in", special_mix, 4.5),
            ("specials first, then decimals", specials_first, 4.0),
            ("specials first, then floats", specials_then_float, 9.0),
            ("hour gaps", gaps, 2.5),
            ("hour gaps and million steps", jumps, 8.0),
            ("negative timestamps", negative, 1.5),
            ("extreme timestamps", extreme_times, 12.0),
            ("huge and subnormal values", huge, 9.5),
            ("integers then non-decimal floats", int_then_float, 6.5),
            ("integers then 1 and 2 decimals", int_then_decimals, 2.8),
            ("integers just below 2^53", near_2_53, 2.0),
            ("2^52 integers then halves", past_2_53_after_rescale, 8.0),
            ("micro decimals (scale 6)", micro, 2.0),
            ("240 counter samples", counter(r, MAX_SAMPLES, &COUNTER_INCS), 1.6),
            ("65535 counter samples", counter(r, FORMAT_MAX_SAMPLES, &COUNTER_INCS), 1.6),
        ];
        for (name, samples, max) in cases {
            let bps = check(&samples, max);
            println!("{name:40} {:6} samples {bps:7.3} B/sample", samples.len());
        }
    }

    #[test]
    fn value_mode_choice() {
        let mut rng = Rng::new(2);
        let r = &mut rng;
        let ints = |n: usize| (0..n).map(|i| i as f64);
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<f64>, u8)> = vec![
            ("empty", vec![], MODE_PENDING),
            ("integers", ints(10).collect(), 0),
            ("two decimals", vec![12.34, 12.3, 12.35], 2),
            ("integers then a half (rescale)", ints(10).chain([9.5]).collect(), 1),
            ("scale 6", vec![0.000001, 1.5], 6),
            ("seven decimals", vec![1e-7], MODE_XOR),
            ("integers then 1/3", ints(10).chain([1.0 / 3.0]).collect(), MODE_XOR),
            ("stale only", vec![STALE, STALE], MODE_PENDING),
            ("-0.0 first", vec![-0.0, 5.0, -0.0], 0),
            ("NaN then 0.25", vec![f64::NAN, 0.25], 2),
            ("NaN then pi", vec![f64::NAN, std::f64::consts::PI], MODE_XOR),
            ("2^53", vec![(1u64 << 53) as f64], MODE_XOR),
            ("2^52 then a half: rescale overflows", vec![(1u64 << 52) as f64, 0.5], MODE_XOR),
            ("1e300", vec![1e300], MODE_XOR),
            ("random floats", (0..5).map(|_| r.unit()).collect(), MODE_XOR),
        ];
        for (name, values, want) in cases {
            let samples = with_values((0..values.len() as i64).map(|i| T0 + i * 1000).collect(), |i| values[i]);
            assert_eq!(mode_of(&samples), want, "{name}");
            check(&samples, 40.0);
        }
    }

    #[test]
    fn append_preconditions() {
        let mut app = ChunkAppender::new();
        app.append(10, 1.0);
        let before = app.bytes().to_vec();
        assert_eq!(app.try_append(10, 2.0), Err(ChunkError::OutOfOrder { t: 10, last: 10 }));
        assert_eq!(app.try_append(9, 2.0), Err(ChunkError::OutOfOrder { t: 9, last: 10 }));
        assert_eq!(app.bytes(), before);

        let mut full = ChunkAppender::new();
        for i in 0..FORMAT_MAX_SAMPLES as i64 {
            full.append(i, 1.0);
        }
        let before = full.bytes().to_vec();
        assert_eq!(full.try_append(1 << 40, 1.0), Err(ChunkError::Full));
        assert_eq!(full.bytes(), before);
        assert_eq!(ChunkIter::new(&before).unwrap().count(), FORMAT_MAX_SAMPLES);
    }

    #[test]
    fn header_errors() {
        let good = encode(&[(1, 1.0)]).into_bytes();
        let with_byte = |i: usize, b: u8| {
            let mut c = good.clone();
            c[i] = b;
            c
        };
        let cases: Vec<(Vec<u8>, ChunkError)> = vec![
            (vec![], ChunkError::ShortHeader { len: 0 }),
            (good[..3].to_vec(), ChunkError::ShortHeader { len: 3 }),
            (with_byte(0, 0x01), ChunkError::BadMagic(0x01)),
            (with_byte(0, 0xC2), ChunkError::UnsupportedVersion(2)),
            (with_byte(3, 9), ChunkError::BadMode(9)),
            (with_byte(3, 0xff), ChunkError::BadMode(0xff)),
        ];
        for (chunk, want) in cases {
            assert_eq!(ChunkIter::new(&chunk).err(), Some(want.clone()));
            assert_eq!(decode(&chunk), Err(want));
        }
    }

    /// One random sequence for the model test: timestamps and values of mixed kinds, with regime switches.
    fn random_sequence(rng: &mut Rng) -> Vec<(i64, f64)> {
        let n = match rng.below(10) {
            0 => rng.below(4) as usize,
            1 => rng.range(300, 2000) as usize,
            _ => rng.range(1, 300) as usize,
        };
        let mut t = match rng.below(5) {
            0 => i64::MIN + rng.range(0, 1000),
            1 => -rng.range(0, 1 << 40),
            2 => i64::MAX - rng.range(1 << 20, 1 << 30),
            _ => T0 + rng.range(-1 << 30, 1 << 30),
        };
        let step = rng.pick(&[1, 10, 1000, 15_000, 60_000, 3_600_000]);
        let jitter = rng.pick(&[0, 0, 3, 50, 5000]);
        let gap_chance = rng.pick(&[0.0, 0.01, 0.2]);
        let mix = rng.pick(&[0.0, 0.0, 0.02, 0.3]);
        let primary = rng.below(8);
        let scale = rng.range(0, 8) as i32;
        let mut level = rng.range(-1_000_000, 1_000_000) as f64;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push((t, 0.0));
            let dt = if rng.chance(gap_chance) {
                // Log-uniform up to ~35 years, so that every dod bucket and the raw dod occur.
                let bits = rng.range(1, 40);
                rng.range(1, 1 << bits)
            } else {
                (step + rng.range(-jitter, jitter)).max(1)
            };
            let Some(next) = t.checked_add(dt) else { break };
            t = next;
        }
        for s in out.iter_mut() {
            let kind = if rng.chance(mix) { rng.below(8) } else { primary };
            s.1 = match kind {
                0 => {
                    level += rng.pick(&COUNTER_INCS) as f64;
                    level
                }
                1 => {
                    level += rng.gauss() * 1000.0;
                    let p = 10f64.powi(scale);
                    (level * p).round() / p
                }
                2 => rng.unit() * 1e3,
                3 => rng.pick(&[f64::NAN, STALE, f64::INFINITY, f64::NEG_INFINITY, -0.0, 0.0]),
                4 => f64::from_bits(rng.next_u64()),
                5 => rng.pick(&[
                    1e300,
                    -1e-300,
                    9_007_199_254_740_991.0,
                    -9_007_199_254_740_993.0,
                    0.1 + 0.2,
                ]),
                6 => {
                    // Log-uniform jumps, so that every value bucket and the raw delta occur.
                    let jump = (1u64 << rng.range(0, 34)) + rng.below(1 << 20);
                    level += if rng.chance(0.5) { jump as f64 } else { -(jump as f64) };
                    level
                }
                _ => level,
            };
        }
        out
    }

    /// Model test: the model is the list of samples appended so far. After appends chosen at random (and
    /// always the last) `bytes()` must decode to exactly that list, and the accessors must agree with it.
    #[test]
    fn model_prefixes_decode() {
        let mut rng = Rng::new(3);
        let mut got = Vec::new();
        let mut checks = 0;
        for seq in 0..2000 {
            let samples = random_sequence(&mut rng);
            let every = rng.range(1, 24) as usize;
            let mut app = ChunkAppender::new();
            for (i, &(t, v)) in samples.iter().enumerate() {
                if i > 0 && rng.chance(0.05) {
                    let before = app.bytes().to_vec();
                    let bad_t = t.min(samples[i - 1].0) - rng.range(0, 2);
                    assert!(
                        app.try_append(bad_t, v).is_err(),
                        "seq {seq}: out-of-order append accepted"
                    );
                    assert_eq!(app.bytes(), before, "seq {seq}: rejected append changed the chunk");
                }
                app.append(t, v);
                if (i + 1) % every == 0 || i + 1 == samples.len() {
                    got.clear();
                    decode_all(app.bytes(), &mut got).unwrap_or_else(|e| panic!("seq {seq} prefix {}: {e}", i + 1));
                    assert_same(&got, &samples[..=i], &format!("seq {seq} prefix {}", i + 1));
                    if i + 1 == samples.len() {
                        let via_next: Vec<_> = ChunkIter::new(app.bytes()).unwrap().collect();
                        assert_same(&via_next, &samples, &format!("seq {seq} through next()"));
                    }
                    assert_eq!(app.num_samples(), i + 1);
                    assert_eq!(app.first_time(), Some(samples[0].0));
                    assert_eq!(app.last_time(), Some(t));
                    checks += 1;
                }
            }
        }
        assert!(checks > 4000, "only {checks} prefixes checked");
    }

    /// Valid chunks of every kind, for the corruption tests.
    fn corpus(rng: &mut Rng) -> Vec<(Samples, Vec<u8>)> {
        (0..200)
            .map(|_| {
                let s = random_sequence(rng);
                let s = s[..s.len().min(300)].to_vec();
                let bytes = encode(&s).into_bytes();
                (s, bytes)
            })
            .collect()
    }

    /// Decodes possibly damaged bytes; checks the iterator's promises and returns what it yielded.
    fn decode_damaged(chunk: &[u8]) -> Option<(Samples, Option<ChunkError>)> {
        let mut it = ChunkIter::new(chunk).ok()?;
        let count = it.num_samples();
        let got: Vec<_> = it.by_ref().collect();
        assert!(got.len() <= count);
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "yielded timestamps not increasing"
        );
        assert_eq!(got.len() < count, it.err().is_some(), "error iff the chunk ended early");
        assert!(it.next().is_none(), "iterator not fused");
        Some((got, it.err().cloned()))
    }

    #[test]
    fn truncated_chunks_end_early_with_an_error() {
        let mut rng = Rng::new(4);
        for (samples, bytes) in corpus(&mut rng) {
            for len in 0..bytes.len() {
                let Some((got, err)) = decode_damaged(&bytes[..len]) else {
                    assert!(len < HEADER_LEN, "valid header rejected at length {len}");
                    continue;
                };
                assert!(
                    matches!(err, Some(ChunkError::Truncated { .. })),
                    "{len} of {} bytes: want a truncation error, got {err:?}",
                    bytes.len()
                );
                assert_same(&got, &samples[..got.len()], "truncated prefix");
            }
        }
    }

    #[test]
    fn corrupt_chunks_never_panic() {
        let mut rng = Rng::new(5);
        let mut errors = 0;
        for (_, bytes) in corpus(&mut rng) {
            for _ in 0..100 {
                let mut bad = bytes.clone();
                for _ in 0..rng.range(1, 3) {
                    let bit = rng.below(bad.len() as u64 * 8) as usize;
                    bad[bit / 8] ^= 1 << (bit % 8);
                }
                if let Some((_, err)) = decode_damaged(&bad) {
                    errors += usize::from(err.is_some());
                }
            }
            // Random garbage behind a valid header.
            let mut garbage: Vec<u8> = bytes[..HEADER_LEN].to_vec();
            garbage.extend((0..rng.below(64)).map(|_| rng.next_u64() as u8));
            decode_damaged(&garbage);
        }
        assert!(
            errors > 1000,
            "only {errors} of 20000 damaged chunks were reported as damaged"
        );
    }

    // ---- fixture ----------------------------------------------------------------------------------------

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/compat-tests/fixtures/metrics_chunk_v1.bin"
    );

    /// 30 samples that between them use every code of the decimal mode, so the fixture pins all of it: an
    /// integer counter with a stale marker and a restart, then decimals that force the rescale to 2
    /// decimals, ±Inf/NaN/-0.0 escapes and jumps. The timestamps start at T0 with a 15 s step, then the
    /// listed dods walk through every dod bucket and the raw dod. Comments name the dod code and the value
    /// code at the final scale (deltas in hundredths).
    fn fixture_samples() -> Vec<(i64, f64)> {
        #[rustfmt::skip]
        const SAMPLES: [(i64, f64); 30] = [
            (0, 1000.0),                    // t0 varint; first value varint
            (0, 1000.0),                    // d1 varint; same value
            (0, 1001.0),                    // dod 0; +100: bucket 3
            (3, 1003.0),                    // bucket 1; +200: bucket 4
            (-2, 1008.0),                   // bucket 1; +500: bucket 4
            (10, 1025.0),                   // bucket 2; +1700: bucket 4
            (-12, 1153.0),                  // bucket 2; +12800: bucket 5
            (60, STALE),                    // bucket 3; escape
            (-76, 1153.0),                  // bucket 3 (its last code); same as the last finite value
            (1000, 0.0),                    // bucket 4; counter reset, -115300: bucket 6
            (-1100, 1.0),                   // bucket 4; +100: bucket 3
            (30_000, 3.25),                 // bucket 5; rescale to 2 decimals; +225: bucket 4
            (-33_000, 3.26),                // bucket 5; +1: bucket 1
            (3_000_000, 3.28),              // bucket 6; +2: bucket 1
            (-3_000_000, 3.35),             // bucket 6; +7: bucket 2
            (10_000_000, 3.53),             // raw dod; +18: bucket 2 (its last code)
            (-10_000_000, f64::INFINITY),   // raw dod; escape
            (0, 3.53),                      // dod 0; same
            (1, -0.0),                      // bucket 1; escape
            (-1, 100_000.0),                // bucket 1; +9999647: raw delta
            (0, 50_000.0),                  // dod 0; -5000000: raw delta
            (0, 50_000.01),                 // +1: bucket 1
            (2, 50_001.0),                  // +99: bucket 3
            (-2, 60_000.0),                 // +999900: bucket 6
            (0, f64::NEG_INFINITY),         // escape
            (4, f64::NAN),                  // escape
            (-4, 60_000.0),                 // same
            (5, 60_017.0),                  // +1700: bucket 4
            (-5, 60_145.0),                 // +12800: bucket 5
            (0, 0.5),                       // -6014450: raw delta
        ];
        let (mut t, mut delta) = (T0, 15_000);
        SAMPLES
            .iter()
            .enumerate()
            .map(|(i, &(dod, v))| {
                if i > 0 {
                    delta += dod;
                    t += delta;
                }
                (t, v)
            })
            .collect()
    }

    #[test]
    fn fixture_v1() {
        let samples = fixture_samples();
        let encoded = encode(&samples).into_bytes();
        if std::env::var("UPDATE_FIXTURES").as_deref() == Ok("1") {
            let path = std::path::Path::new(FIXTURE);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, &encoded).unwrap();
            println!("wrote {} bytes to {FIXTURE}", encoded.len());
        }
        let fixture = std::fs::read(FIXTURE).unwrap_or_else(|e| panic!("{FIXTURE}: {e} (UPDATE_FIXTURES=1 writes it)"));
        assert_eq!(
            fixture[..HEADER_LEN],
            [ENCODING_V1, 0, 30, 2],
            "header: v1, 30 samples, decimal scale 2"
        );
        assert_same(&decode(&fixture).unwrap(), &samples, "fixture decode");
        assert_eq!(encoded, fixture, "the encoder no longer writes the v1 fixture's bytes");
    }

    // ---- size and speed ---------------------------------------------------------------------------------

    /// Bytes of a Prometheus XOR chunk holding `samples` (2-byte count + bit stream), counted from the
    /// rules of prometheus/tsdb/chunkenc/xor.go, for comparison.
    fn prometheus_xor_bytes(samples: &[(i64, f64)]) -> usize {
        let varint_bits = |u: u64| 8 * (64 - u.leading_zeros()).div_ceil(7).max(1) as usize;
        let bit_range = |x: i64, n: u32| -((1i64 << (n - 1)) - 1) <= x && x <= 1 << (n - 1);
        let mut bits = 16;
        let (mut delta, mut leading, mut trailing) = (0i64, NO_WINDOW, 0);
        for (i, &(t, v)) in samples.iter().enumerate() {
            match i {
                0 => bits += varint_bits(zigzag(t)) + 64,
                _ => {
                    let d = t - samples[i - 1].0;
                    bits += match (i, d - delta) {
                        (1, _) => varint_bits(d as u64),
                        (_, 0) => 1,
                        (_, dod) if bit_range(dod, 14) => 16,
                        (_, dod) if bit_range(dod, 17) => 20,
                        (_, dod) if bit_range(dod, 20) => 24,
                        _ => 68,
                    };
                    delta = d;
                    let x = v.to_bits() ^ samples[i - 1].1.to_bits();
                    if x == 0 {
                        bits += 1;
                        continue;
                    }
                    let (lead, trail) = (x.leading_zeros().min(31), x.trailing_zeros());
                    if leading != NO_WINDOW && lead >= leading && trail >= trailing {
                        bits += 2 + (64 - leading - trailing) as usize;
                    } else {
                        (leading, trailing) = (lead, trail);
                        bits += 13 + (64 - lead - trail) as usize;
                    }
                }
            }
        }
        bits.div_ceil(8)
    }

    type Generator = fn(&mut Rng, usize) -> Vec<(i64, f64)>;

    /// The benchmark mix: share of series, name, generator of one 240-sample chunk.
    const MIX: [(f64, &str, Generator); 4] = [
        (0.59, "integer counters", |r, n| counter(r, n, &COUNTER_INCS)),
        (0.35, "histogram bucket counters", bucket_counter),
        (0.034, "gauges, 2 decimals, sigma 1000", |r, n| gauge(r, n, 1000.0, 2)),
        (0.026, "constants", constant),
    ];

    /// Bytes/sample of our chunks and of Prometheus XOR chunks over `chunks` chunks of `gen`.
    fn measure(rng: &mut Rng, chunks: usize, generator: Generator) -> (f64, f64) {
        let (mut ours, mut prom, mut n) = (0, 0, 0);
        for _ in 0..chunks {
            let s = generator(rng, MAX_SAMPLES);
            let bytes = encode(&s).into_bytes();
            assert_same(&decode(&bytes).unwrap(), &s, "size corpus");
            ours += bytes.len();
            prom += prometheus_xor_bytes(&s);
            n += s.len();
        }
        (ours as f64 / n as f64, prom as f64 / n as f64)
    }

    /// Prints bytes/sample per kind and for the weighted mix (240-sample chunks, 15 s ± 3 ms).
    #[test]
    fn size_report() {
        let mut rng = Rng::new(6);
        let (mut mix, mut mix_prom) = (0.0, 0.0);
        for (share, name, generator) in MIX {
            let (ours, prom) = measure(&mut rng, 300, generator);
            println!("{name:32} share {share:5.3}: {ours:6.3} B/sample (Prometheus XOR {prom:6.3})");
            mix += share * ours;
            mix_prom += share * prom;
        }
        println!(
            "{:32} {:11} {mix:6.3} B/sample (Prometheus XOR {mix_prom:6.3})",
            "benchmark mix", ""
        );
        let (floats, floats_prom) = measure(&mut rng, 100, random_floats);
        println!(
            "{:32} {:11} {floats:6.3} B/sample (Prometheus XOR {floats_prom:6.3})",
            "random floats [0,1)", ""
        );
        assert!(mix <= 1.6, "benchmark mix costs {mix:.3} B/sample");
        assert!(
            mix < mix_prom / 2.0,
            "mix {mix:.3} B/sample is not well below Prometheus's {mix_prom:.3}"
        );
        assert!(floats <= 8.5, "random floats cost {floats:.3} B/sample");
    }

    /// Prints append and decode ns/sample over the benchmark mix: 42 rounds of 1000 chunks (10M samples) in
    /// release builds, one round in debug builds (where the figures mean little). Shared machines are noisy,
    /// so it prints the median and the best round. Timing is reported, never asserted.
    #[test]
    fn speed_report() {
        let mut rng = Rng::new(7);
        let corpus: Vec<Vec<(i64, f64)>> = (0..1000)
            .map(|i| {
                let pick = (i as f64 + 0.5) / 1000.0;
                let mut acc = 0.0;
                let generator = MIX.iter().find(|m| {
                    acc += m.0;
                    pick < acc
                });
                generator.map_or(MIX[0].2, |m| m.2)(&mut rng, MAX_SAMPLES)
            })
            .collect();
        let per_round = (corpus.len() * MAX_SAMPLES) as f64;
        let rounds = if cfg!(debug_assertions) { 1 } else { 42 };
        let summary = |mut ns: Vec<f64>| {
            ns.sort_by(f64::total_cmp);
            format!("median {:.1}, best {:.1} ns/sample", ns[ns.len() / 2], ns[0])
        };

        let mut encoded = Vec::with_capacity(corpus.len());
        let mut append_ns = Vec::with_capacity(rounds);
        for round in 0..rounds {
            let start = Instant::now();
            for s in &corpus {
                let mut app = ChunkAppender::new();
                for &(t, v) in s {
                    app.append(t, v);
                }
                if round == 0 {
                    encoded.push(app.into_bytes());
                } else {
                    std::hint::black_box(&app);
                }
            }
            append_ns.push(start.elapsed().as_nanos() as f64 / per_round);
        }

        let mut out = Vec::with_capacity(MAX_SAMPLES);
        let mut decode_ns = Vec::with_capacity(rounds);
        let mut iter_ns = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let start = Instant::now();
            for chunk in &encoded {
                out.clear();
                decode_all(std::hint::black_box(chunk), &mut out).unwrap();
                std::hint::black_box(&out);
            }
            decode_ns.push(start.elapsed().as_nanos() as f64 / per_round);
            let start = Instant::now();
            for chunk in &encoded {
                let sum = ChunkIter::new(std::hint::black_box(chunk))
                    .unwrap()
                    .fold(0.0, |acc, s| acc + s.1);
                std::hint::black_box(sum);
            }
            iter_ns.push(start.elapsed().as_nanos() as f64 / per_round);
        }
        for (s, chunk) in corpus.iter().zip(&encoded) {
            assert_same(&decode(chunk).unwrap(), s, "speed corpus");
        }
        let bytes: usize = encoded.iter().map(Vec::len).sum();
        println!(
            "{} samples ({:.3} B/sample){}: append {}; decode_all {}; ChunkIter::next {}",
            rounds as f64 * per_round,
            bytes as f64 / per_round,
            if cfg!(debug_assertions) { ", debug build" } else { "" },
            summary(append_ns),
            summary(decode_ns),
            summary(iter_ns),
        );
    }

    /// Appends `samples` to `a`; returns how often its buffer grew, its final capacity over the
    /// chunk's length, and the chunk.
    fn grow_count(mut a: ChunkAppender, samples: &[(i64, f64)]) -> (usize, f64, ChunkAppender) {
        let mut cap = a.heap_bytes();
        let mut grew = 0;
        for &(t, v) in samples {
            a.append(t, v);
            if a.heap_bytes() != cap {
                grew += 1;
                cap = a.heap_bytes();
            }
        }
        assert_eq!(decode(a.bytes()).unwrap(), samples, "hinted growth changed the chunk");
        let spare = cap as f64 / a.bytes().len() as f64;
        (grew, spare, a)
    }

    /// The head's chunks with a hint: one growth at most from 128 bytes, none when opened at the size
    /// the series' previous chunk projects, and little room left over; a chunk cut early by a block
    /// boundary hands on a buffer the next whole chunk fits in, without growing.
    #[test]
    fn size_hint_grows_once() {
        let r = &mut Rng::new(61);
        // 15 s samples in 2 h blocks: 240-sample chunks.
        let full = SizeHint {
            max_span: 7_200_000,
            max_samples: MAX_SAMPLES,
        };
        let gens: [(&str, Generator); 5] = [
            ("integer counter", |r, n| counter(r, n, &COUNTER_INCS)),
            ("histogram bucket counter", bucket_counter),
            ("gauge, 2 decimals", |r, n| gauge(r, n, 1000.0, 2)),
            ("constant", constant),
            ("random floats (XOR)", random_floats),
        ];
        for (name, g) in gens {
            // Three chunks of one series; the generators space samples 15 s apart.
            let series = g(r, 3 * MAX_SAMPLES);
            assert!(
                (series[1].0 - series[0].0 - 15_000).abs() <= 6,
                "{name}: generator interval"
            );
            let (prev, rest) = series.split_at(MAX_SAMPLES);
            let (grew, spare, a) = grow_count(ChunkAppender::with_hint(128, full), prev);
            assert!(
                grew <= 1 && spare <= 1.35,
                "{name}, first chunk: grew {grew}×, capacity {spare:.2}× its length"
            );
            let (unhinted, _, _) = grow_count(ChunkAppender::with_capacity(128), prev);
            println!("{name:26} first chunk: grew {grew}× (without the hint {unhinted}×), capacity {spare:.2}× length");
            // The next chunk, opened the way the head opens it: in the previous chunk's buffer.
            let (first, last) = (prev[0].0, prev[MAX_SAMPLES - 1].0);
            let bytes = full.capacity_from(a.bytes().len(), MAX_SAMPLES, first, last);
            let bytes = bytes.unwrap_or_else(|| panic!("{name}: no capacity from a full chunk"));
            let (next, last_chunk) = rest.split_at(MAX_SAMPLES);
            let (grew, spare, a) = grow_count(ChunkAppender::recycle(a.into_buffer(), bytes, full), next);
            assert!(
                grew == 0 && spare <= 1.35,
                "{name}, next chunk: grew {grew}×, capacity {spare:.2}× its length"
            );
            // A block boundary 60 samples into the next chunk, then a whole chunk in the same buffer.
            let ptr = a.bytes().as_ptr();
            let (grew, _, cut) = grow_count(ChunkAppender::recycle(a.into_buffer(), bytes, full), &last_chunk[..60]);
            assert_eq!(grew, 0, "{name}, cut early");
            let (grew, _, whole) = grow_count(ChunkAppender::recycle(cut.into_buffer(), bytes, full), last_chunk);
            assert_eq!(grew, 0, "{name}, whole chunk after an early cut");
            assert_eq!(whole.bytes().as_ptr(), ptr, "{name}: the buffer moved");
        }
        // Too little to project from: a one-sample or zero-length chunk gives no size.
        assert_eq!(full.capacity_from(20, 1, 0, 0), None);
        assert_eq!(full.capacity_from(20, 2, 5, 5), None);
        // A series scraped every minute fills 120 samples of a 2 h block, not 240.
        let per_min = full.capacity_from(HEADER_LEN + 100, 100, 0, 99 * 60_000);
        let per_15s = full.capacity_from(HEADER_LEN + 100, 100, 0, 99 * 15_000);
        assert_eq!(per_min, Some(HEADER_LEN + SLACK + 135));
        assert_eq!(per_15s, Some(HEADER_LEN + SLACK + 270));
    }
}
