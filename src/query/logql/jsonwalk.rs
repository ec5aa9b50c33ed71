//! The `json` parser's walk when a metric query needs only some labels (Loki's parser hints):
//! serde_json drives a visitor over the line instead of building a `serde_json::Value`, so keys
//! are borrowed and only the wanted scalars are copied. It accepts and rejects exactly what the
//! `Value` parse does (every skipped value is still fully parsed) and gives the wanted labels in
//! the same order; a duplicated key, where the `Value` keeps one position with the last value,
//! is reported so the caller can take the `Value` path.
//!
//! Owns: nothing but the walk. Never touches: the label builder (the caller sets what it returns).

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// Which flattened keys (`a_b` for `{"a":{"b":..}}`) are wanted, and under which prefixes a
/// nested object may hold one.
pub struct Want<'a> {
    pub key: &'a dyn Fn(&str) -> bool,
    pub prefix: &'a dyn Fn(&str) -> bool,
}

pub enum Walked {
    /// Wanted (label, value) pairs, in the order the `Value` walk would set them.
    Ok(Vec<(String, String)>),
    /// Some object repeats a key: use the `Value` path.
    Duplicate,
    /// Not a JSON object.
    Invalid,
}

pub fn walk(line: &str, want: &Want<'_>) -> Walked {
    if !line.trim_start().starts_with('{') {
        return Walked::Invalid;
    }
    let mut st = State {
        key: String::new(),
        want,
        out: Vec::new(),
        dup: false,
    };
    let mut de = serde_json::Deserializer::from_str(line);
    let r = Obj(&mut st).deserialize(&mut de).and_then(|()| de.end());
    match r {
        Err(_) => Walked::Invalid,
        Ok(()) if st.dup => Walked::Duplicate,
        Ok(()) => Walked::Ok(st.out),
    }
}

struct State<'a> {
    /// The flattened, sanitized key of the value being read.
    key: String,
    want: &'a Want<'a>,
    out: Vec<(String, String)>,
    dup: bool,
}

/// `pipeline::sanitize_key`, appended to `out`.
fn sanitize_into(out: &mut String, k: &str, prefix: bool) {
    if prefix && k.as_bytes().first().is_some_and(|c| c.is_ascii_digit()) {
        out.push('_');
    }
    for c in k.chars() {
        out.push(if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' });
    }
}

fn walk_map<'de, M: MapAccess<'de>>(st: &mut State<'_>, mut m: M) -> Result<(), M::Error> {
    let base = st.key.len();
    let mut seen: Vec<Cow<'de, str>> = Vec::new();
    while let Some(Key(k)) = m.next_key::<Key<'de>>()? {
        if seen.contains(&k) {
            st.dup = true;
        }
        st.key.truncate(base);
        // As `walk_json`: an empty prefix (top level, or under a key that sanitizes to "")
        // does not join with '_'.
        if base == 0 {
            sanitize_into(&mut st.key, &k, true);
        } else {
            st.key.push('_');
            sanitize_into(&mut st.key, &k, false);
        }
        seen.push(k);
        m.next_value_seed(Val(st))?;
    }
    st.key.truncate(base);
    Ok(())
}

struct Obj<'s, 'a>(&'s mut State<'a>);

impl<'de> DeserializeSeed<'de> for Obj<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Obj<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<M: MapAccess<'de>>(self, m: M) -> Result<(), M::Error> {
        walk_map(self.0, m)
    }
}

struct Val<'s, 'a>(&'s mut State<'a>);

impl Val<'_, '_> {
    fn scalar(self, v: impl FnOnce() -> String) {
        if (self.0.want.key)(&self.0.key) {
            self.0.out.push((self.0.key.clone(), v()));
        }
    }
}

impl<'de> DeserializeSeed<'de> for Val<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Val<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<(), M::Error> {
        // `walk_json` recurses into every object; one that cannot hold a wanted key is only
        // parsed.
        if self.0.key.is_empty() || (self.0.want.prefix)(&self.0.key) {
            return walk_map(self.0, m);
        }
        while m.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(())
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut s: S) -> Result<(), S::Error> {
        while s.next_element::<Skip>()?.is_some() {}
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.scalar(|| v.to_string());
        Ok(())
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.scalar(|| v.to_string());
        Ok(())
    }
    // Numbers print as `serde_json::Number` does inside a `Value`.
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.scalar(|| serde_json::Number::from(v).to_string());
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.scalar(|| serde_json::Number::from(v).to_string());
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.scalar(|| {
            serde_json::Number::from_f64(v)
                .map(|n| n.to_string())
                .unwrap_or_default()
        });
        Ok(())
    }
    /// `null` sets nothing (as in `walk_json`).
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// A map key, borrowed from the line unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Any value, parsed as strictly as a `Value` would be, and dropped.
struct Skip;

impl<'de> serde::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Skip, M::Error> {
        while m.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut s: S) -> Result<Skip, S::Error> {
        while s.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
}
