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

impl SearchRunning {
    pub fn start() -> SearchRunning {
        SEARCHES_RUNNING.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        SearchRunning(())
    }
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
