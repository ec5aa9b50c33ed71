//! The read contract between the LogQL engine and a log store, plus an in-memory store used by
//! tests and the conformance runner.
//!
//! Owns: `LogSource`, `SourceStream`, `SourceEntry`, and `MemSource` (which replicates what Loki
//! 3.4.6 does on push: `service_name` discovery, `detected_level` structured metadata, dropping
//! exact duplicates). Never touches: HTTP, the real storage engine.

use crate::model::{Label, Labels, Matcher};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("log source: {0}")]
    Store(String),
    #[error("invalid push body: {0}")]
    BadPush(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceEntry {
    pub ts_ns: i64,
    pub line: String,
    pub structured_metadata: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct SourceStream {
    pub labels: Labels,
    pub entries: Vec<SourceEntry>,
}

/// One entry lent to the engine: the store may point into a decompressed chunk buffer.
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    pub ts_ns: i64,
    pub line: &'a str,
    pub structured_metadata: &'a [(String, String)],
}

/// What the log store implements for the query engine.
pub trait LogSource {
    /// Streams matching all matchers, with their entries in `[start_ns, end_ns)`, oldest first.
    /// Streams without entries in the range may be omitted.
    fn select(&self, matchers: &[Matcher], start_ns: i64, end_ns: i64) -> Result<Vec<SourceStream>, SourceError>;

    /// What the engine actually calls: hands over each matching stream's entries in
    /// `[start_ns, end_ns)`, oldest first, in one or more batches per stream. The default copies
    /// through `select`; a store should override it to lend lines straight from its chunk buffers,
    /// so that lines a filter rejects are never copied.
    fn visit(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        f: &mut dyn FnMut(&Labels, &[EntryRef<'_>]),
    ) -> Result<(), SourceError> {
        for s in self.select(matchers, start_ns, end_ns)? {
            let refs: Vec<EntryRef<'_>> = s.entries.iter().map(SourceEntry::as_ref).collect();
            f(&s.labels, &refs);
        }
        Ok(())
    }

    /// As [`LogSource::visit`], knowing that only lines containing every one of `needles` can
    /// survive the pipeline: a store may skip chunks and lines without them (and may still hand
    /// over lines without them; the pipeline filters again).
    fn visit_needles(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        needles: &[String],
        f: &mut dyn FnMut(&Labels, &[EntryRef<'_>]),
    ) -> Result<(), SourceError> {
        let _ = needles;
        self.visit(matchers, start_ns, end_ns, f)
    }

    /// For metric queries that need no line: each entry's timestamp, line length and structured
    /// metadata, in batches per stream. A store may then skip decoding the lines.
    fn visit_lens(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        f: &mut dyn FnMut(&Labels, &[LenRef<'_>]),
    ) -> Result<(), SourceError> {
        self.visit(matchers, start_ns, end_ns, &mut |labels, entries| {
            let refs: Vec<LenRef<'_>> = entries
                .iter()
                .map(|e| LenRef {
                    ts_ns: e.ts_ns,
                    len: e.line.len(),
                    structured_metadata: e.structured_metadata,
                })
                .collect();
            f(labels, &refs);
        })
    }

    /// [`LogSource::visit_needles`] with the batches shared out among the visitors `fs`, which a
    /// store may call on threads of their own. Each batch comes with its place in the visit:
    /// every place once, increasing within one visitor, so that what the visitors gathered can be
    /// merged in place order, the same whichever thread took which batch. The default hands every
    /// batch to `fs[0]`.
    fn visit_needles_split(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        needles: &[String],
        fs: &mut [&mut EntriesVisitor<'_>],
    ) -> Result<(), SourceError> {
        let Some(f) = fs.first_mut() else { return Ok(()) };
        let mut place = 0;
        self.visit_needles(matchers, start_ns, end_ns, needles, &mut |labels, entries| {
            f(place, labels, entries);
            place += 1;
        })
    }

    /// [`LogSource::visit_lens`] shared out among visitors as [`LogSource::visit_needles_split`].
    fn visit_lens_split(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        fs: &mut [&mut LensVisitor<'_>],
    ) -> Result<(), SourceError> {
        let Some(f) = fs.first_mut() else { return Ok(()) };
        let mut place = 0;
        self.visit_lens(matchers, start_ns, end_ns, &mut |labels, entries| {
            f(place, labels, entries);
            place += 1;
        })
    }

    /// [`LogSource::select_first`] with `pass` split among `passes`, which a store may call on
    /// threads of their own (each pass on one thread); answers (which pass, what it answered).
    /// The default runs `passes[0]` alone.
    #[allow(clippy::too_many_arguments)]
    fn select_first_split(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        needles: &[String],
        forward: bool,
        limit: usize,
        passes: &mut [&mut FirstPass<'_>],
    ) -> Result<Vec<(usize, usize)>, SourceError> {
        let Some(pass) = passes.first_mut() else {
            return Ok(Vec::new());
        };
        let first = self.select_first(matchers, start_ns, end_ns, needles, forward, limit, &mut **pass)?;
        Ok(first.into_iter().map(|v| (0, v)).collect())
    }

    /// For log queries: runs `pass` over entries of the matching streams and returns what it
    /// answered (`Some`) for the first `limit` entries it accepted, in output order: oldest first
    /// when `forward`, else newest first; equal timestamps in stream order (reversed when
    /// backward). `pass` may also be called, in any order, on entries that turn out not to be
    /// among them: a store stops reading once nothing left can be, so a `limit=100` query over
    /// a day reads a few blocks when most entries pass, and scans without merging when few do.
    #[allow(clippy::too_many_arguments)]
    fn select_first(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        needles: &[String],
        forward: bool,
        limit: usize,
        pass: &mut dyn FnMut(&Labels, &EntryRef<'_>) -> Option<usize>,
    ) -> Result<Vec<usize>, SourceError> {
        let mut streams: Vec<Labels> = Vec::new();
        let mut all: Vec<(usize, SourceEntry)> = Vec::new();
        self.visit_needles(matchers, start_ns, end_ns, needles, &mut |labels, entries| {
            if streams.last() != Some(labels) {
                streams.push(labels.clone());
            }
            let i = streams.len() - 1;
            all.extend(entries.iter().map(|e| {
                (
                    i,
                    SourceEntry {
                        ts_ns: e.ts_ns,
                        line: e.line.to_string(),
                        structured_metadata: e.structured_metadata.to_vec(),
                    },
                )
            }));
        })?;
        if forward {
            all.sort_by_key(|(_, e)| e.ts_ns);
        } else {
            // Stable sort keeps visit order among equal timestamps; backward reverses it.
            all.reverse();
            all.sort_by_key(|(_, e)| std::cmp::Reverse(e.ts_ns));
        }
        let mut out = Vec::new();
        for (i, e) in &all {
            if out.len() >= limit {
                break;
            }
            if let Some(v) = pass(&streams[*i], &e.as_ref()) {
                out.push(v);
            }
        }
        Ok(out)
    }
}

/// A visitor of [`LogSource::visit_needles_split`]: (place in the visit, labels, entries).
pub type EntriesVisitor<'a> = dyn FnMut(usize, &Labels, &[EntryRef<'_>]) + Send + 'a;
/// A visitor of [`LogSource::visit_lens_split`].
pub type LensVisitor<'a> = dyn FnMut(usize, &Labels, &[LenRef<'_>]) + Send + 'a;
/// A pass of [`LogSource::select_first_split`].
pub type FirstPass<'a> = dyn FnMut(&Labels, &EntryRef<'_>) -> Option<usize> + Send + 'a;

/// What [`LogSource::visit_lens`] lends: an entry without its line.
#[derive(Debug, Clone, Copy)]
pub struct LenRef<'a> {
    pub ts_ns: i64,
    /// The line's length in bytes.
    pub len: usize,
    pub structured_metadata: &'a [(String, String)],
}

impl SourceEntry {
    pub fn as_ref(&self) -> EntryRef<'_> {
        EntryRef {
            ts_ns: self.ts_ns,
            line: &self.line,
            structured_metadata: &self.structured_metadata,
        }
    }
}

/// A whole store in memory: a list of streams with time-sorted entries.
#[derive(Debug, Default)]
pub struct MemSource {
    streams: Vec<SourceStream>,
}

use crate::model::level::DEFAULT_SERVICE_NAME_LABELS as SERVICE_LABELS;

use crate::model::level::LEVEL_FIELDS;

impl MemSource {
    pub fn new() -> Self {
        MemSource::default()
    }

    /// Appends one entry as Loki's distributor would.
    pub fn push(&mut self, labels: &[(String, String)], ts_ns: i64, line: &str, sm: Vec<(String, String)>) {
        let mut pairs: Vec<(String, String)> = labels.to_vec();
        if !pairs.iter().any(|(k, _)| k == "service_name") {
            let svc = SERVICE_LABELS
                .iter()
                .find_map(|n| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()))
                .unwrap_or_else(|| "unknown_service".to_string());
            pairs.push(("service_name".into(), svc));
        }
        let Ok(lbls) = Labels::from_pairs(pairs) else { return };
        let mut sm = sm;
        if !sm.iter().any(|(k, _)| k == "detected_level") && !lbls.iter().any(|l| l.name == "detected_level") {
            let lvl = detect_level(&lbls, &sm, line);
            sm.push(("detected_level".into(), lvl));
        }
        let entry = SourceEntry {
            ts_ns,
            line: line.to_string(),
            structured_metadata: sm,
        };
        let idx = match self.streams.iter().position(|s| s.labels == lbls) {
            Some(i) => i,
            None => {
                self.streams.push(SourceStream {
                    labels: lbls,
                    entries: Vec::new(),
                });
                self.streams.len() - 1
            }
        };
        let es = &mut self.streams[idx].entries;
        // Only entries with the same timestamp can be duplicates; pushes usually append.
        let lo = es.partition_point(|e| e.ts_ns < ts_ns);
        let pos = es.partition_point(|e| e.ts_ns <= ts_ns);
        if es[lo..pos].iter().any(|e| e.line == entry.line) {
            return;
        }
        es.insert(pos, entry);
    }

    /// Loads a Loki JSON push body (`{"streams":[{"stream":{..},"values":[[ts,line,{sm}?]]}]}`).
    pub fn push_json(&mut self, body: &serde_json::Value) -> Result<(), SourceError> {
        let streams = body
            .get("streams")
            .and_then(|s| s.as_array())
            .ok_or_else(|| SourceError::BadPush("missing streams".into()))?;
        for s in streams {
            let labels: Vec<(String, String)> = s
                .get("stream")
                .and_then(|x| x.as_object())
                .ok_or_else(|| SourceError::BadPush("missing stream".into()))?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect();
            for v in s.get("values").and_then(|x| x.as_array()).into_iter().flatten() {
                let ts: i64 = v
                    .get(0)
                    .and_then(|x| x.as_str())
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(|| SourceError::BadPush("bad timestamp".into()))?;
                let line = v.get(1).and_then(|x| x.as_str()).unwrap_or("");
                let sm: Vec<(String, String)> = v
                    .get(2)
                    .and_then(|x| x.as_object())
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                self.push(&labels, ts, line, sm);
            }
        }
        Ok(())
    }
}

impl LogSource for MemSource {
    fn select(&self, matchers: &[Matcher], start_ns: i64, end_ns: i64) -> Result<Vec<SourceStream>, SourceError> {
        let mut out = Vec::new();
        for s in &self.streams {
            if !matchers.iter().all(|m| m.matches(s.labels.get_or_empty(&m.name))) {
                continue;
            }
            let lo = s.entries.partition_point(|e| e.ts_ns < start_ns);
            let hi = s.entries.partition_point(|e| e.ts_ns < end_ns);
            if lo >= hi {
                continue;
            }
            out.push(SourceStream {
                labels: s.labels.clone(),
                entries: s.entries[lo..hi].to_vec(),
            });
        }
        Ok(out)
    }
    /// Lends entries in place: nothing is copied.
    fn visit(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        f: &mut dyn FnMut(&Labels, &[EntryRef<'_>]),
    ) -> Result<(), SourceError> {
        let mut refs: Vec<EntryRef<'_>> = Vec::new();
        for s in &self.streams {
            if !matchers.iter().all(|m| m.matches(s.labels.get_or_empty(&m.name))) {
                continue;
            }
            let lo = s.entries.partition_point(|e| e.ts_ns < start_ns);
            let hi = s.entries.partition_point(|e| e.ts_ns < end_ns);
            if lo >= hi {
                continue;
            }
            refs.clear();
            refs.extend(s.entries[lo..hi].iter().map(SourceEntry::as_ref));
            f(&s.labels, &refs);
        }
        Ok(())
    }
}

fn label_get<'a>(l: &'a Labels, n: &str) -> Option<&'a str> {
    l.iter().find(|x: &&Label| x.name == n).map(|x| x.value.as_str())
}

/// Loki 3.4.6 `FieldDetector.extractLogLevel`.
pub fn detect_level(labels: &Labels, sm: &[(String, String)], line: &str) -> String {
    for f in LEVEL_FIELDS {
        if let Some(v) = label_get(labels, f) {
            return v.to_string();
        }
    }
    for f in LEVEL_FIELDS {
        if let Some((_, v)) = sm.iter().find(|(k, _)| k == f) {
            return v.clone();
        }
    }
    crate::model::level::from_line(line).to_string()
}
