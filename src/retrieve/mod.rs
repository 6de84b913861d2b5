//! Search requests and results, and how lexical and dense candidates become one ranking.
//!
//! The engine (`crate::engine`) gathers candidates from each retriever; this module defines the
//! request and result types, the fusion rules ([`fusion`]) and how candidates become one
//! ranking ([`hybrid`]: single-retriever path, per-document grouping, degradation). Everything here is plain data:
//! the gRPC layer converts to and from it at the edge.

pub mod fusion;
pub mod hybrid;

use std::time::Duration;

pub use fusion::{fuse, Fused, Fusion, RetrieverHit};

/// Which retrievers a search uses. Its names (`lexical`, `dense`, `hybrid`) are the ones the
/// CLI accepts and prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// BM25 only.
    Lexical,
    /// Vector similarity only.
    Dense,
    /// Both, fused.
    #[default]
    Hybrid,
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Lexical => "lexical",
            Mode::Dense => "dense",
            Mode::Hybrid => "hybrid",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A search, as the core sees it.
#[derive(Debug, Clone, Default)]
pub struct SearchParams {
    pub query: String,
    /// 0 means the default (10).
    pub top_k: usize,
    pub mode: Mode,
    /// `None`: the collection's setting ([`SearchSettings`]).
    pub fusion: Option<Fusion>,
    /// Which documents may be returned (unresolved; [`crate::filter::Filter::all`] for any).
    pub filter: crate::filter::Filter,
    /// Hits to skip before the first returned (pagination).
    pub offset: usize,
    pub group_by_document: bool,
    /// Caller-computed query vector; embedded from `query` when absent.
    pub query_vector: Option<Vec<f32>>,
    /// Candidates per retriever; 0 means the collection's setting, and where that is 0 too,
    /// max(100, 2 * top_k).
    pub candidates: usize,
    /// How a document's chunks score it when grouped; `None`: the collection's setting.
    pub aggregation: Option<Aggregation>,
    /// Weight of title matches relative to body matches in BM25.
    pub title_boost: f32,
    /// How a filtered dense search finds its candidates (benchmarks and diagnostics; the
    /// wire always leaves it to the planner).
    pub dense_plan: DensePlan,
}

/// A collection's search settings: what a search that does not say otherwise uses. Adopted
/// per collection only through the eval gate (`eval/tune.rs`); the defaults are the settings
/// chosen on SciFact's train split.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchSettings {
    pub fusion: Fusion,
    /// Candidates per retriever (0: max(100, 2 * top_k)).
    pub candidates: usize,
    /// How a document's chunks score it in a ranking of documents.
    pub aggregation: Aggregation,
}

impl SearchSettings {
    /// A short name: `weighted:0.6:0.4 candidates=200 sum:0.5`.
    pub fn label(&self) -> String {
        let mut out = self.fusion.label();
        if self.candidates > 0 {
            out.push_str(&format!(" candidates={}", self.candidates));
        }
        if let Aggregation::Sum { decay } = self.aggregation {
            out.push_str(&format!(" sum:{decay}"));
        }
        out
    }
}

/// How a document's chunks score it when results are grouped by document (each retriever's
/// list first, then fusion over documents: `hybrid::per_document`).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Aggregation {
    /// The best chunk's score.
    #[default]
    Max,
    /// The sum of its chunks' scores, the i-th best weighted by `decay^i` (0 < decay <= 1).
    Sum { decay: f32 },
}

impl Aggregation {
    /// From the wire's `sum_decay`: 0 is [`Aggregation::Max`], anything else a sum (checked
    /// by [`Aggregation::check`] where it is used).
    pub fn from_sum_decay(decay: f32) -> Self {
        if decay == 0.0 {
            Aggregation::Max
        } else {
            Aggregation::Sum { decay }
        }
    }

    /// The wire's `sum_decay`: 0 for [`Aggregation::Max`].
    pub fn sum_decay(&self) -> f32 {
        match *self {
            Aggregation::Max => 0.0,
            Aggregation::Sum { decay } => decay,
        }
    }

    /// INVALID_ARGUMENT unless a search can run with it: a sum's decay in (0, 1].
    pub fn check(&self) -> crate::error::Result<()> {
        match *self {
            Aggregation::Sum { decay } if !(decay > 0.0 && decay <= 1.0) => {
                Err(crate::error::Error::invalid(format!(
                    "a sum's decay (sum_decay) must be in (0, 1], not {decay} (0: a document scores as its best chunk)"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// How a filtered dense search finds its candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DensePlan {
    /// Exact scoring of the allowed chunks when there are at most
    /// `index.exact_filter_limit` of them, HNSW with the filter otherwise.
    #[default]
    Auto,
    /// Always score the allowed chunks exactly.
    Exact,
    /// Always search HNSW with the filter.
    Graph,
}

/// One result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub doc_id: String,
    pub chunk_id: u64,
    pub ordinal: u32,
    pub text: String,
    pub start: usize,
    pub end: usize,
    /// Fused score (hybrid) or the retriever's raw score (single mode).
    pub score: f32,
    pub title: String,
    pub metadata: crate::meta::Metadata,
    pub lexical: Option<RetrieverHit>,
    pub dense: Option<RetrieverHit>,
}

#[derive(Debug, Clone)]
pub struct SearchOutcome {
    pub hits: Vec<Hit>,
    /// The mode actually used.
    pub mode: Mode,
    /// Set when hybrid fell back to lexical; says why.
    pub warning: Option<String>,
    pub took: Duration,
    /// Candidates the ranking was drawn from (after fusion, before grouping and paging).
    pub total_candidates: usize,
    /// Where the next page starts, when hits follow this page within the ranking's depth
    /// (`offset` + the effective `top_k`, the default applied).
    pub next_offset: Option<usize>,
}
