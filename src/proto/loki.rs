//! Loki push messages (`logproto.PushRequest`, API.md §4.1): hand-written prost structs, no protoc.
//!
//! Owns: the wire shapes and the streaming decode of a push body. Never touches: label parsing or
//! validation (that is `ingest`), HTTP, storage.
//!
//! Strings that carry log data (`labels`, `line`, structured metadata) are `bytes::Bytes` on the
//! decode side: prost then slices them out of the request buffer without copying (`Bytes::slice`),
//! so a push of 1,000 lines allocates the per-stream entry vectors and nothing per line. Protobuf
//! `string` and `bytes` share the wire type, so the same structs encode what Loki's clients send.
//! Invalid UTF-8 is not an error here (Go's gogo-protobuf does not check it either); `ingest`
//! replaces it.
//!
//! The top-level `PushRequest` is not decoded in one go: [`for_each_stream`] walks its repeated
//! `streams` field and decodes one `StreamAdapter` at a time, so a body with a million tiny streams
//! holds one decoded stream at once and the caller can stop at its stream limit.

use super::ProtoError;
use bytes::{Buf, Bytes};
use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
    /// "loki" or "otlp"; internal to Loki, ignored.
    #[prost(string, tag = "2")]
    pub format: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct StreamAdapter {
    /// Prometheus text form, e.g. `{app="api", env="prod"}`.
    #[prost(bytes = "bytes", tag = "1")]
    pub labels: Bytes,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
    /// Internal to Loki, not sent by clients; ignored.
    #[prost(uint64, tag = "3")]
    pub hash: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    #[prost(bytes = "bytes", tag = "2")]
    pub line: Bytes,
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
    /// Only in query responses; ignored on push.
    #[prost(message, repeated, tag = "4")]
    pub parsed: Vec<LabelPairAdapter>,
}

#[derive(Clone, PartialEq, Message)]
pub struct LabelPairAdapter {
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    /// Nanoseconds since the epoch, saturating.
    pub fn unix_nanos(&self) -> i64 {
        self.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(self.nanos))
    }

    pub fn from_nanos(ns: i64) -> Timestamp {
        Timestamp {
            seconds: ns.div_euclid(1_000_000_000),
            nanos: ns.rem_euclid(1_000_000_000) as i32,
        }
    }
}

fn proto_err(e: prost::DecodeError) -> ProtoError {
    ProtoError::Loki(e.to_string())
}

/// Decodes the `PushRequest` in `body` one stream at a time, handing each to `on_stream`; fields other
/// than `streams` are skipped. `on_stream` returns `false` to stop early. The `StreamAdapter`s borrow
/// from `body` (a `Bytes`), so nothing is copied.
pub fn for_each_stream(mut body: Bytes, mut on_stream: impl FnMut(StreamAdapter) -> bool) -> Result<(), ProtoError> {
    while body.has_remaining() {
        let key = prost::encoding::decode_varint(&mut body).map_err(proto_err)?;
        let (tag, wire) = (key >> 3, (key & 7) as u8);
        if tag == 0 || tag > u64::from(u32::MAX) {
            return Err(ProtoError::IllegalTag(key));
        }
        match (tag, wire) {
            (1, 2) => {
                let len = prost::encoding::decode_varint(&mut body).map_err(proto_err)?;
                if len > body.remaining() as u64 {
                    return Err(ProtoError::UnexpectedEof);
                }
                let msg = body.split_to(len as usize);
                let stream = StreamAdapter::decode(msg).map_err(proto_err)?;
                if !on_stream(stream) {
                    return Ok(());
                }
            }
            (1, w) => {
                return Err(ProtoError::WrongWireType {
                    message: "PushRequest",
                    field: 1,
                    wire_type: w,
                });
            }
            (_, w) => {
                let wt = prost::encoding::WireType::try_from(u64::from(w)).map_err(proto_err)?;
                prost::encoding::skip_field(wt, tag as u32, &mut body, prost::encoding::DecodeContext::default())
                    .map_err(proto_err)?;
            }
        }
    }
    Ok(())
}

/// Loki's JSON push bodies: v1 (`{"streams":[{"stream":{..},"values":[["<ns>","line",{..}]]}]}`)
/// and the legacy v0 of `/api/prom/push` (`{"streams":[{"labels":"{..}","entries":[{"ts":..,"line":..}]}]}`).
/// Lines without escapes are borrowed from the body. The stream's labels come out in the text form
/// `{a="b"}` so that the protobuf and JSON paths validate labels the same way.
pub mod json {
    use super::ProtoError;
    use serde::Deserialize;
    use serde::de::{self, SeqAccess, Visitor};
    use std::borrow::Cow;
    use std::collections::BTreeMap;
    use std::fmt;

    #[derive(Debug, Default)]
    pub struct JsonPush<'a> {
        pub streams: Vec<JsonStream<'a>>,
    }

    #[derive(Debug)]
    pub struct JsonStream<'a> {
        /// Label text, e.g. `{app="api", env="prod"}`.
        pub labels: String,
        pub entries: Vec<JsonEntry<'a>>,
    }

    #[derive(Debug)]
    pub struct JsonEntry<'a> {
        pub ts: i64,
        pub line: Cow<'a, str>,
        pub metadata: Vec<(String, String)>,
    }

    struct CowStr<'a>(Cow<'a, str>);

    impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                type Value = CowStr<'a>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string")
                }
                fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                    Ok(CowStr(Cow::Borrowed(v)))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                    Ok(CowStr(Cow::Owned(v.to_string())))
                }
                fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                    Ok(CowStr(Cow::Owned(v)))
                }
            }
            d.deserialize_str(V(std::marker::PhantomData))
        }
    }

    /// A ns timestamp that must be a JSON string.
    struct NsString(i64);

    impl<'de> Deserialize<'de> for NsString {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = NsString;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a timestamp in nanoseconds as a string")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                    v.parse::<i64>()
                        .map(NsString)
                        .map_err(|_| E::custom(format!("strconv.ParseInt: parsing {v:?}: invalid syntax")))
                }
                fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                    Err(E::custom("timestamp must be a string of nanoseconds, not a number"))
                }
                fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                    Err(E::custom("timestamp must be a string of nanoseconds, not a number"))
                }
                fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                    Err(E::custom("timestamp must be a string of nanoseconds, not a number"))
                }
            }
            d.deserialize_any(V)
        }
    }

    /// The optional third element: flat string (or number) values, or the query-response form
    /// `{"structuredMetadata":{..},"parsed":{..}}`.
    struct Meta(Vec<(String, String)>);

    fn scalar(v: &serde_json::Value) -> Option<String> {
        match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    impl<'de> Deserialize<'de> for Meta {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let m: BTreeMap<String, serde_json::Value> = BTreeMap::deserialize(d)?;
            let mut out = Vec::with_capacity(m.len());
            for (k, v) in m {
                match (k.as_str(), &v) {
                    ("structuredMetadata", serde_json::Value::Object(o)) => {
                        for (k2, v2) in o {
                            let v2 = scalar(v2)
                                .ok_or_else(|| de::Error::custom("structured metadata values must be strings"))?;
                            out.push((k2.clone(), v2));
                        }
                    }
                    ("parsed", serde_json::Value::Object(_)) => {}
                    _ => {
                        let v = scalar(&v)
                            .ok_or_else(|| de::Error::custom("structured metadata values must be strings"))?;
                        out.push((k, v));
                    }
                }
            }
            Ok(Meta(out))
        }
    }

    struct V1Entry<'a>(JsonEntry<'a>);

    impl<'de: 'a, 'a> Deserialize<'de> for V1Entry<'a> {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                type Value = V1Entry<'a>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an array [\"<ns>\", \"<line>\"] or [\"<ns>\", \"<line>\", {metadata}]")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                    let NsString(ts) = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
                    let CowStr(line) = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
                    let meta: Option<Meta> = seq.next_element()?;
                    if seq.next_element::<de::IgnoredAny>()?.is_some() {
                        return Err(de::Error::invalid_length(4, &self));
                    }
                    Ok(V1Entry(JsonEntry {
                        ts,
                        line,
                        metadata: meta.map(|m| m.0).unwrap_or_default(),
                    }))
                }
            }
            d.deserialize_seq(V(std::marker::PhantomData))
        }
    }

    #[derive(Deserialize)]
    struct V1<'a> {
        #[serde(borrow, default)]
        streams: Option<Vec<V1Stream<'a>>>,
    }

    #[derive(Deserialize)]
    struct V1Stream<'a> {
        #[serde(default)]
        stream: Option<BTreeMap<String, String>>,
        #[serde(borrow, default)]
        values: Option<Vec<V1Entry<'a>>>,
    }

    /// Go-quotes `v` into `out` (the `%q` of Loki's label strings).
    fn quote_into(out: &mut String, v: &str) {
        out.push('"');
        for c in v.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }

    /// Label text `{a="b", c="d"}` for a label map (sorted by name, as Loki prints it).
    pub fn labels_text(m: &BTreeMap<String, String>) -> String {
        let mut s = String::from("{");
        for (i, (k, v)) in m.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            s.push_str(k);
            s.push('=');
            quote_into(&mut s, v);
        }
        s.push('}');
        s
    }

    fn json_err(e: serde_json::Error) -> ProtoError {
        ProtoError::Loki(format!("loghttp.PushRequest.Streams: {e}"))
    }

    pub fn decode_v1(body: &[u8]) -> Result<JsonPush<'_>, ProtoError> {
        let v: V1<'_> = serde_json::from_slice(body).map_err(json_err)?;
        Ok(JsonPush {
            streams: v
                .streams
                .unwrap_or_default()
                .into_iter()
                .map(|s| JsonStream {
                    labels: labels_text(&s.stream.unwrap_or_default()),
                    entries: s.values.unwrap_or_default().into_iter().map(|e| e.0).collect(),
                })
                .collect(),
        })
    }

    #[derive(Deserialize)]
    struct V0<'a> {
        #[serde(borrow, default)]
        streams: Option<Vec<V0Stream<'a>>>,
    }

    #[derive(Deserialize)]
    struct V0Stream<'a> {
        #[serde(default)]
        labels: String,
        #[serde(borrow, default)]
        entries: Option<Vec<V0Entry<'a>>>,
    }

    #[derive(Deserialize)]
    struct V0Entry<'a> {
        ts: String,
        #[serde(borrow)]
        line: CowStr<'a>,
    }

    /// The legacy v0 body of `/api/prom/push`: RFC 3339 timestamps, labels as text.
    pub fn decode_legacy(body: &[u8]) -> Result<JsonPush<'_>, ProtoError> {
        let v: V0<'_> = serde_json::from_slice(body).map_err(json_err)?;
        let mut out = JsonPush::default();
        for s in v.streams.unwrap_or_default() {
            let mut entries = Vec::new();
            for e in s.entries.unwrap_or_default() {
                let ts = crate::model::text::parse_rfc3339_ns(&e.ts)
                    .ok_or_else(|| ProtoError::Loki(format!("parsing time {:?}: cannot parse as RFC3339", e.ts)))?;
                entries.push(JsonEntry {
                    ts,
                    line: e.line.0,
                    metadata: Vec::new(),
                });
            }
            out.streams.push(JsonStream {
                labels: s.labels,
                entries,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(labels: &str, lines: &[(i64, &str)]) -> StreamAdapter {
        StreamAdapter {
            labels: Bytes::copy_from_slice(labels.as_bytes()),
            entries: lines
                .iter()
                .map(|(t, l)| EntryAdapter {
                    timestamp: Some(Timestamp::from_nanos(*t)),
                    line: Bytes::copy_from_slice(l.as_bytes()),
                    structured_metadata: vec![LabelPairAdapter {
                        name: Bytes::from_static(b"trace_id"),
                        value: Bytes::from_static(b"abc"),
                    }],
                    parsed: vec![],
                })
                .collect(),
            hash: 0,
        }
    }

    /// Decodes `body` and returns (labels, line count) per stream, or the error text.
    fn check(body: &[u8], want: Result<Vec<(&str, usize)>, &str>) {
        let mut got = Vec::new();
        let res = for_each_stream(Bytes::copy_from_slice(body), |s| {
            got.push((String::from_utf8_lossy(&s.labels).into_owned(), s.entries.len()));
            true
        });
        match (res, want) {
            (Ok(()), Ok(w)) => {
                let w: Vec<(String, usize)> = w.into_iter().map(|(l, n)| (l.to_string(), n)).collect();
                assert_eq!(got, w);
            }
            (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{e} lacks {w}"),
            (r, w) => panic!("got {r:?} / {got:?}, want {w:?}"),
        }
    }

    #[test]
    fn push_request() {
        let req = PushRequest {
            streams: vec![
                stream("{a=\"1\"}", &[(1, "x"), (2, "y")]),
                stream("{b=\"2\"}", &[(-5, "z")]),
            ],
            format: "loki".into(),
        };
        let body = req.encode_to_vec();
        check(&body, Ok(vec![("{a=\"1\"}", 2), ("{b=\"2\"}", 1)]));
        // Round trip through prost's whole-message decoder too, timestamps included.
        let back = PushRequest::decode(body.as_slice()).unwrap();
        assert_eq!(back, req);
        assert_eq!(back.streams[1].entries[0].timestamp.unwrap().unix_nanos(), -5);
        check(&[], Ok(vec![]));
        // Garbage: a length past the end, a bad wire type, an illegal tag.
        check(&body[..body.len() - 3], Err("underflow"));
        check(&[0x0b], Err("wireType"));
        check(&[0x00], Err("illegal tag"));
        check(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", Err("varint"));
    }

    type Want<'a> = Vec<(&'a str, Vec<(i64, &'a str, Vec<(&'a str, &'a str)>)>)>;
    type Got = Vec<(String, Vec<(i64, String, Vec<(String, String)>)>)>;

    /// Decodes a v1 JSON body into (labels, [(ts, line, metadata)]) or the error text.
    fn check_json(body: &str, want: Result<Want<'_>, &str>) {
        match (json::decode_v1(body.as_bytes()), want) {
            (Ok(p), Ok(w)) => {
                let got: Got = p
                    .streams
                    .into_iter()
                    .map(|s| {
                        (
                            s.labels,
                            s.entries
                                .into_iter()
                                .map(|e| (e.ts, e.line.into_owned(), e.metadata))
                                .collect(),
                        )
                    })
                    .collect();
                let w: Got = w
                    .into_iter()
                    .map(|(l, es)| {
                        (
                            l.to_string(),
                            es.into_iter()
                                .map(|(t, line, m)| {
                                    (
                                        t,
                                        line.to_string(),
                                        m.into_iter().map(|(a, b)| (a.into(), b.into())).collect(),
                                    )
                                })
                                .collect(),
                        )
                    })
                    .collect();
                assert_eq!(got, w, "{body}");
            }
            (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{body}: {e} lacks {w}"),
            (Ok(p), Err(w)) => panic!("{body}: accepted {p:?}, wanted error {w}"),
            (Err(e), Ok(_)) => panic!("{body}: {e}"),
        }
    }

    #[test]
    fn json_push() {
        check_json(
            r#"{"streams":[{"stream":{"b":"2","a":"x\"y"},"values":[["10","l1"],["11","l\n2",{"trace_id":"t","n":5}]]}]}"#,
            Ok(vec![(
                r#"{a="x\"y", b="2"}"#,
                vec![(10, "l1", vec![]), (11, "l\n2", vec![("n", "5"), ("trace_id", "t")])],
            )]),
        );
        check_json(
            r#"{"streams":[{"stream":{"a":"1"},"values":[["1","x",{"structuredMetadata":{"k":"v"},"parsed":{"p":"q"}}]]}]}"#,
            Ok(vec![(r#"{a="1"}"#, vec![(1, "x", vec![("k", "v")])])]),
        );
        check_json(r#"{"streams":[]}"#, Ok(vec![]));
        check_json(r#"{}"#, Ok(vec![]));
        check_json(
            r#"{"streams":[{"stream":{"a":"1"},"values":[[1700000000,"x"]]}]}"#,
            Err("not a number"),
        );
        check_json(
            r#"{"streams":[{"stream":{"a":"1"},"values":[["abc","x"]]}]}"#,
            Err("ParseInt"),
        );
        check_json(
            r#"{"streams":[{"stream":{"a":"1"},"values":[["1"]]}]}"#,
            Err("invalid length"),
        );
        check_json(r#"{"streams":"#, Err("EOF"));
        let legacy = json::decode_legacy(
            br#"{"streams":[{"labels":"{a=\"b\"}","entries":[{"ts":"1970-01-01T00:00:01.000000002Z","line":"l"}]}]}"#,
        )
        .unwrap();
        assert_eq!(legacy.streams[0].labels, r#"{a="b"}"#);
        assert_eq!(legacy.streams[0].entries[0].ts, 1_000_000_002);
    }
}
