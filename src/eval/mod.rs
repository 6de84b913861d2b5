//! Retrieval evaluation: BEIR-format collections and trec_eval-compatible metrics.
//!
//! [`metrics`] is the scoring core; [`beir`] reads collections (corpus, queries, qrels).

pub mod beir;
pub mod metrics;
