//! Retrieval evaluation: BEIR-format collections and trec_eval-compatible metrics.
//!
//! - [`metrics`]: the scoring core (trec_eval definitions, documented tie-breaking).
//! - [`beir`]: reads collections (corpus, queries, qrels).
//! - [`run`]: evaluates a live collection in several configurations, with miss diagnostics.
//! - [`report`]: summary.json, TREC run files, per_query.jsonl, report.md and report.html.

pub mod beir;
pub mod metrics;
pub mod report;
pub mod run;
