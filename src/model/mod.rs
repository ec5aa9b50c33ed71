//! Pure data shared by every layer: label sets, matchers, samples and time ranges.
//!
//! Owns: the in-memory representation of labels (sorted, validated), Prometheus matcher semantics,
//! the sample type and the staleness-marker bit pattern.
//! Never touches: I/O, HTTP, storage formats, configuration. Everything here is plain values.

mod labels;
pub mod level;
mod matcher;
pub mod text;

pub use labels::{Label, Labels, LabelsError, METRIC_NAME};
pub use matcher::{MatchOp, Matcher, MatcherError};

/// A float sample: timestamp in milliseconds since the epoch, value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub t: i64,
    pub v: f64,
}

/// Prometheus's staleness marker: a NaN with this exact bit pattern (`value.StaleNaN`).
/// It must be stored and returned bit-exact; an ordinary NaN is a normal value.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// True when `v` is the staleness marker (compared by bits, never by value).
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// The staleness marker as an `f64`.
pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}
