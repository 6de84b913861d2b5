//! What the engine is configured with: its own slice of the server configuration.
//!
//! The engine never sees the whole server [`crate::config::Config`] (listen address, answer
//! routers): `Config::engine` hands it an [`EngineConfig`], and the models come separately as
//! a [`crate::model::ModelSource`]. That keeps the dependency graph one-way
//! (`config -> engine`, `answer -> engine`) and lets tests build an engine from plain data.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The engine's configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where sled, tantivy and HNSW files live.
    pub data_dir: PathBuf,
    /// Model used by collections that do not name one.
    pub default_model: String,
    pub limits: Limits,
    pub index: IndexSettings,
    /// Query vectors kept per model (LRU; 0: no cache). See `model::query`.
    pub query_cache_entries: usize,
    /// Bytes of sled's page cache (see `store::DEFAULT_CACHE_BYTES`).
    pub storage_cache_bytes: u64,
    /// Where collections live (`[backend]`): the data directory (default) or Qdrant.
    pub backend: crate::qdrant::BackendSettings,
}

/// Default size of each model's query-vector cache: about 7 MiB for a 384-d model at most.
pub const DEFAULT_QUERY_CACHE_ENTRIES: usize = 4096;

/// Explicit limits. A request over a limit fails with INVALID_ARGUMENT naming the limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest gRPC message the server decodes or encodes.
    pub max_message_bytes: usize,
    /// Largest document text, in bytes.
    pub max_document_bytes: usize,
    /// Most documents in one UpsertDocuments request.
    pub max_batch_documents: usize,
    /// Largest document id, in bytes.
    pub max_id_bytes: usize,
    /// Most metadata entries per document.
    pub max_metadata_entries: usize,
    /// Longest metadata key, and longest string value or list item, in bytes.
    pub max_metadata_key_bytes: usize,
    pub max_metadata_value_bytes: usize,
    /// Most items in a string-list metadata value.
    pub max_metadata_list_items: usize,
    /// Most distinct metadata keys per collection (declared or used): every search resolves
    /// its filter against them and GetCollection lists them.
    pub max_metadata_keys: usize,
    /// Deepest nesting of and / or / not in a filter.
    pub max_filter_depth: usize,
    /// Most conditions plus listed values in a filter.
    pub max_filter_terms: usize,
    /// Largest query text, in bytes.
    pub max_query_bytes: usize,
    /// Largest `top_k` (and candidate depth) a search may ask for.
    pub max_top_k: usize,
    /// Most documents in one StreamUpsertDocuments call (its reply has a result for each).
    pub max_stream_documents: usize,
    /// Most queries in one Eval request (its reply carries a ranking per query and run).
    pub max_eval_queries: usize,
    /// Most relevance judgments in one Eval request.
    pub max_eval_judgments: usize,
    /// Seconds a client stream (StreamUpsertDocuments) may stay silent before the server ends
    /// it (what was written stays written).
    pub stream_idle_secs: u64,
    /// Largest snapshot a client may upload to RestoreSnapshot (it is spooled to disk).
    pub max_snapshot_upload_bytes: u64,
    /// Writes are refused (RESOURCE_EXHAUSTED) while the data directory's file system has
    /// less free space than this, so sled never meets a full disk (after which it stays failed
    /// until reopened); they resume by themselves once space is freed. 0: no check.
    pub min_free_disk_bytes: u64,
}

/// Index tuning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexSettings {
    /// HNSW links per node (M).
    pub hnsw_m: usize,
    /// HNSW candidate list size while building.
    pub hnsw_ef_construction: usize,
    /// HNSW candidate list size while searching (raised to the requested depth when smaller).
    pub hnsw_ef_search: usize,
    /// Write batches (and rebuilds) of at least this many chunks are inserted into the HNSW
    /// graph in parallel on every core; smaller ones one at a time, in order, so the graph
    /// (and dense results) are reproducible. Lower it for bulk loads of large collections.
    pub hnsw_parallel_insert_min: usize,
    /// Seconds between background checkpoints of the HNSW graph.
    pub checkpoint_interval_secs: u64,
    /// Rebuild the HNSW graph when deleted points exceed this fraction of all points.
    pub rebuild_tombstone_ratio: f32,
    /// Filtered dense searches whose filter allows at most this many chunks score those
    /// chunks exactly; above it, HNSW searches with the filter. Measured by
    /// `benches/filters.rs` on SciFact: exact scoring costs about 1.2 us per allowed chunk,
    /// HNSW with a filter 3 ms at 50% selectivity and 6 ms at 10%; they cross near 3000.
    pub exact_filter_limit: usize,
    /// A collection's BM25 index writer (and its threads) is closed at the next checkpoint
    /// once nothing was written for this long.
    pub writer_idle_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024 * 1024,
            max_document_bytes: 4 * 1024 * 1024,
            max_batch_documents: 1000,
            max_id_bytes: 512,
            max_metadata_entries: 64,
            max_metadata_key_bytes: 256,
            max_metadata_value_bytes: 8 * 1024,
            max_metadata_list_items: 256,
            max_metadata_keys: 1024,
            max_filter_depth: 16,
            max_filter_terms: 1024,
            max_query_bytes: 8 * 1024,
            max_top_k: 1000,
            max_stream_documents: 50_000,
            max_eval_queries: 2000,
            max_eval_judgments: 200_000,
            stream_idle_secs: 120,
            max_snapshot_upload_bytes: 64 * 1024 * 1024 * 1024,
            min_free_disk_bytes: 256 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// The limits on a filter's shape.
    pub fn filter(&self) -> crate::filter::FilterLimits {
        crate::filter::FilterLimits {
            max_depth: self.max_filter_depth,
            max_terms: self.max_filter_terms,
        }
    }
}

impl Default for IndexSettings {
    fn default() -> Self {
        IndexSettings {
            hnsw_m: 16,
            hnsw_ef_construction: 200,
            hnsw_ef_search: 128,
            hnsw_parallel_insert_min: crate::index::dense::PARALLEL_INSERT_MIN,
            checkpoint_interval_secs: 30,
            rebuild_tombstone_ratio: 0.2,
            exact_filter_limit: 3000,
            writer_idle_secs: 60,
        }
    }
}

impl EngineConfig {
    /// An engine over `data_dir` with default limits and index settings.
    pub fn new(data_dir: impl Into<PathBuf>, default_model: impl Into<String>) -> EngineConfig {
        EngineConfig {
            data_dir: data_dir.into(),
            default_model: default_model.into(),
            limits: Limits::default(),
            index: IndexSettings::default(),
            query_cache_entries: DEFAULT_QUERY_CACHE_ENTRIES,
            storage_cache_bytes: crate::store::DEFAULT_CACHE_BYTES,
            backend: Default::default(),
        }
    }

    /// Checks values that would otherwise fail later, less clearly.
    pub fn validate(&self) -> Result<()> {
        let l = &self.limits;
        if l.max_batch_documents == 0 || l.max_document_bytes == 0 || l.max_top_k == 0 {
            return Err(Error::invalid("limits must be positive"));
        }
        if l.max_document_bytes > l.max_message_bytes {
            return Err(Error::invalid(
                "limits.max_document_bytes cannot exceed limits.max_message_bytes",
            ));
        }
        if l.max_filter_depth == 0 || l.max_filter_terms == 0 {
            return Err(Error::invalid("filter limits must be positive"));
        }
        // The graph keeps a level-0 row of 2m links with a one-byte count (crates/hnsw).
        if !(2..=127).contains(&self.index.hnsw_m) {
            return Err(Error::invalid("index.hnsw_m must be in 2..=127"));
        }
        Ok(())
    }
}
