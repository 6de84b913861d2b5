//! One open collection: its sled trees, its two derived indexes, its embedding model, and the
//! lock that makes it single-writer.
//!
//! The behaviour lives next door, each file an `impl Collection` block for one concern:
//! `ingest.rs` (writes), `search.rs` (reads), `recovery.rs` (applying logged operations to the
//! indexes, replay, checkpoints).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::chunk::ChunkSettings;
use crate::error::Result;
use crate::index::{DenseIndex, LexicalIndex};
use crate::model::Embedder;
use crate::store::{CollectionRecord, CollectionTrees, Op};

/// Default chunk size: 254 tokens leaves room for the two special tokens in a 256-token model
/// window.
pub const DEFAULT_CHUNK_TOKENS: usize = 254;
pub const DEFAULT_CHUNK_OVERLAP: usize = 32;

/// Settings given when creating a collection; `None` means the server default.
#[derive(Debug, Clone, Default)]
pub struct CollectionSettings {
    pub model: Option<String>,
    pub chunk_tokens: Option<usize>,
    pub chunk_overlap: Option<usize>,
    /// Metadata key types declared up front (other keys take the type of their first value).
    pub metadata_schema: crate::meta::Schema,
    /// Bring your own vectors of this dimension instead of a model (`model::external`).
    pub vector_dimension: Option<usize>,
}

/// A collection as reported to callers.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionInfo {
    pub record: CollectionRecord,
    pub document_count: u64,
    pub chunk_count: u64,
    /// Metadata key types.
    pub schema: crate::meta::Schema,
}

/// Sizes of one collection's data and indexes (for metrics).
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionStats {
    pub name: String,
    pub documents: u64,
    pub chunks: u64,
    pub hnsw_points: usize,
    pub hnsw_tombstones: usize,
    /// The indexes are behind the log (an index update failed after a commit).
    pub stale: bool,
}

/// One open collection.
pub struct Collection {
    pub(super) record: CollectionRecord,
    pub(super) trees: CollectionTrees,
    pub(super) embedder: Arc<dyn Embedder>,
    pub(super) lexical: LexicalIndex,
    pub(super) dense: DenseIndex,
    /// Serializes writes (and checkpoints) to this collection; searches never take it. The
    /// guard is moved into the blocking task that does the work, so a write whose caller goes
    /// away still holds the lock until it has finished (see [`Collection::write_guard`]).
    pub(super) write_lock: Arc<tokio::sync::Mutex<()>>,
    /// Set when an index update failed after its operation was committed to sled: the
    /// operation is kept in the log (checkpoints never trim past an index's applied sequence)
    /// and the indexes catch up from the log before the next write applies anything.
    pub(super) stale: AtomicBool,
    /// Set once the collection is deleted: work still holding it reports NOT_FOUND.
    pub(super) deleted: AtomicBool,
    /// `collections/<id>/`: the index files.
    pub(super) dir: PathBuf,
    /// Document and chunk counts, maintained by every commit: sled's `len()` walks the whole
    /// tree, too slow for every GetCollection on a large collection.
    documents: AtomicU64,
    pub(super) chunks: AtomicU64,
    /// Metadata key types (see [`crate::meta`]): loaded at open, extended by each commit
    /// that introduces keys (under the write lock), read by searches to resolve filters.
    pub(super) schema: std::sync::RwLock<crate::meta::Schema>,
}

fn add_signed(counter: &AtomicU64, delta: i64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        Some(n.saturating_add_signed(delta))
    });
}

impl Collection {
    /// Wraps opened parts; counts the documents and chunks once.
    pub(super) fn new(
        record: CollectionRecord,
        trees: CollectionTrees,
        embedder: Arc<dyn Embedder>,
        lexical: LexicalIndex,
        dense: DenseIndex,
        dir: PathBuf,
        schema: crate::meta::Schema,
    ) -> Result<Collection> {
        let (documents, chunks) = trees.counts()?;
        let documents = AtomicU64::new(documents);
        let chunks = AtomicU64::new(chunks);
        Ok(Collection {
            record,
            trees,
            embedder,
            lexical,
            dense,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            stale: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            dir,
            documents,
            chunks,
            schema: std::sync::RwLock::new(schema),
        })
    }

    pub fn stats(&self) -> CollectionStats {
        CollectionStats {
            name: self.record.name.clone(),
            documents: self.documents.load(Ordering::Relaxed),
            chunks: self.chunks.load(Ordering::Relaxed),
            hnsw_points: self.dense.graph_points().unwrap_or(0),
            hnsw_tombstones: self.dense.tombstones().unwrap_or(0),
            stale: self.stale.load(Ordering::Relaxed),
        }
    }

    /// A copy of the metadata key types.
    pub fn schema(&self) -> crate::meta::Schema {
        self.schema.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits for this collection's write lock. The guard is owned: move it into the task
    /// that does the write, so the lock is released when the work ends, not when the request
    /// does.
    pub(super) async fn write_guard(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.write_lock.clone().lock_owned().await
    }

    /// Runs blocking `work` as this collection's one writer. The write lock's guard moves into
    /// the blocking task with the work, so if the caller goes away the lock is still held
    /// until the work has ended; a collection deleted meanwhile answers NOT_FOUND.
    pub(super) async fn run_write<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Collection) -> crate::error::Result<T> + Send + 'static,
    ) -> crate::error::Result<T> {
        let guard = self.write_guard().await;
        let c = self.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            c.ensure_live()?;
            work(&c)
        })
        .await
        .map_err(|e| crate::error::Error::internal(format!("write task failed: {e}")))?
    }

    /// NOT_FOUND once the collection has been deleted (for work that still holds it).
    pub(super) fn ensure_live(&self) -> crate::error::Result<()> {
        if self.deleted.load(Ordering::Acquire) {
            return Err(crate::error::Error::CollectionNotFound(
                self.record.name.clone(),
            ));
        }
        Ok(())
    }

    pub fn record(&self) -> &CollectionRecord {
        &self.record
    }

    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    pub fn info(&self) -> CollectionInfo {
        CollectionInfo {
            record: self.record.clone(),
            document_count: self.documents.load(Ordering::Relaxed),
            chunk_count: self.chunks.load(Ordering::Relaxed),
            schema: self.schema(),
        }
    }

    pub(super) fn chunk_settings(&self) -> ChunkSettings {
        ChunkSettings {
            max_tokens: self.record.chunk_tokens,
            overlap: self.record.chunk_overlap,
        }
    }

    /// Updates the maintained counts after a committed operation that changed the number of
    /// documents by `documents`.
    pub(super) fn count(&self, documents: i64, op: &Op) {
        add_signed(&self.documents, documents);
        add_signed(&self.chunks, op.add.len() as i64 - op.remove.len() as i64);
    }
}
