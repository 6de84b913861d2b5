//! Retrieval evaluation: BEIR-format collections and trec_eval-compatible metrics.
//!
//! - [`metrics`]: the scoring core (trec_eval definitions, documented tie-breaking).
//! - [`beir`]: reads collections (corpus, queries, qrels).
//! - [`run`]: evaluates a live collection in several configurations, with miss diagnostics.
//! - [`compare`]: two runs query by query: deltas, paired bootstrap intervals, randomization
//!   p-values, wins and losses, and the gate that refuses a change worse beyond its noise.
//! - [`sets`]: eval sets attached to a collection or alias, in named splits.
//! - [`gate`]: promotion of a generation behind an alias when the gate holds, rollback, and
//!   the record of every decision.
//! - [`tune`]: search settings proposed, measured and adopted through the same gate, and the
//!   grid search that proposes them.
//! - [`report`]: summary.json, TREC run files, per_query.jsonl, report.md and report.html.

pub mod beir;
pub mod compare;
pub mod gate;
pub mod metrics;
pub mod report;
pub mod restored;
pub mod run;
pub mod sets;
pub mod tune;
