//! The log store seen as a [`LogSource`]: what connects the LogQL engine to `storage::logs`.
//!
//! Owns: translating a source selection into one `LogReader::select` for a tenant and grouping the
//! merged entries back into streams. Never touches: storage internals beyond the `LogReader` trait.

use super::source::{EntryRef, LogSource, SourceEntry, SourceError, SourceStream};
use crate::model::{Labels, Matcher};
use crate::storage::logs::{Direction, EntryIter, LogReader, SelectRequest};
use std::collections::HashMap;
use std::sync::Arc;

/// One tenant's view of a log store.
pub struct StoreSource<'a> {
    pub reader: &'a dyn LogReader,
    pub tenant: &'a str,
}

impl StoreSource<'_> {
    fn entries(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        needles: &[String],
    ) -> Result<EntryIter, SourceError> {
        let req = SelectRequest {
            tenant: self.tenant.to_string(),
            matchers: matchers.to_vec(),
            start: start_ns,
            end: end_ns,
            direction: Direction::Forward,
            limit: 0,
            line_contains: needles.to_vec(),
        };
        self.reader.select(&req).map_err(|e| SourceError::Store(e.to_string()))
    }
}

impl LogSource for StoreSource<'_> {
    fn visit(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        f: &mut dyn FnMut(&Labels, &[EntryRef<'_>]),
    ) -> Result<(), SourceError> {
        self.visit_needles(matchers, start_ns, end_ns, &[], f)
    }

    /// Streams entries one at a time (no per-stream buffering), letting the store skip chunks whose
    /// filters rule the needles out: a needle query then reads a few chunks, not the corpus.
    fn visit_needles(
        &self,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
        needles: &[String],
        f: &mut dyn FnMut(&Labels, &[EntryRef<'_>]),
    ) -> Result<(), SourceError> {
        for item in self.entries(matchers, start_ns, end_ns, needles)? {
            let se = item.map_err(|e| SourceError::Store(e.to_string()))?;
            let e = EntryRef {
                ts_ns: se.entry.ts,
                line: &se.entry.line,
                structured_metadata: &se.entry.metadata,
            };
            f(&se.labels, std::slice::from_ref(&e));
        }
        Ok(())
    }

    fn select(&self, matchers: &[Matcher], start_ns: i64, end_ns: i64) -> Result<Vec<SourceStream>, SourceError> {
        let iter = self.entries(matchers, start_ns, end_ns, &[])?;
        // Entries arrive merged across streams in time order; streams are keyed by their shared
        // label set (one `Arc` per stream), so grouping costs a pointer hash per entry.
        let mut index: HashMap<*const Labels, usize> = HashMap::new();
        let mut out: Vec<SourceStream> = Vec::new();
        let mut keep: Vec<Arc<Labels>> = Vec::new();
        for item in iter {
            let se = item.map_err(|e| SourceError::Store(e.to_string()))?;
            let key = Arc::as_ptr(&se.labels);
            let i = *index.entry(key).or_insert_with(|| {
                out.push(SourceStream {
                    labels: (*se.labels).clone(),
                    entries: Vec::new(),
                });
                keep.push(Arc::clone(&se.labels));
                out.len() - 1
            });
            out[i].entries.push(SourceEntry {
                ts_ns: se.entry.ts,
                line: se.entry.line,
                structured_metadata: se.entry.metadata,
            });
        }
        Ok(out)
    }
}
