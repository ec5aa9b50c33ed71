//! Node collection: what this process gathers by itself (as opposed to what is pushed to it).
//!
//! Owns: the metrics scraper (`scrape`). Never does: HTTP serving (that is `api`), storage
//! internals (everything it collects goes through `ingest`'s single write path).

pub mod scrape;
