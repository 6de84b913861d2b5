//! One open collection: its record, its embedding model, its metadata key types, the lock that
//! makes it single-writer, and its backing store (the seam of `backend.rs`).
//!
//! The behaviour lives next door, each file an `impl Collection` block for one concern:
//! `ingest.rs` (writes), `search.rs` (reads), `documents.rs` (listing and deleting by filter);
//! the embedded backend's own upkeep is in `embedded.rs` and `recovery.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::embedded::Embedded;
use crate::backend::CollectionStore;
use crate::chunk::ChunkSettings;
use crate::model::Embedder;
use crate::store::CollectionRecord;

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

/// One open collection: what every backend shares (its record, model, key types and single
/// writer) and where its data lives ([`Backing`], read and written through
/// [`CollectionStore`]).
pub struct Collection {
    pub(super) record: CollectionRecord,
    pub(super) embedder: Arc<dyn Embedder>,
    /// Serializes writes (and checkpoints) to this collection; searches never take it. The
    /// guard is moved into the blocking task that does the work, so a write whose caller goes
    /// away still holds the lock until it has finished (see [`Collection::write_guard`]).
    pub(super) write_lock: Arc<tokio::sync::Mutex<()>>,
    /// Set once the collection is deleted: work still holding it reports NOT_FOUND.
    pub(super) deleted: AtomicBool,
    /// Metadata key types (see [`crate::meta`]): loaded at open, extended by each commit
    /// that introduces keys (under the write lock), read by searches to resolve filters.
    pub(super) schema: std::sync::RwLock<crate::meta::Schema>,
    pub(super) backing: Backing,
}

/// Where a collection's data lives.
pub(super) enum Backing {
    /// Boxed: its indexes make it several times the size of the other.
    Embedded(Box<Embedded>),
    Qdrant(crate::qdrant::QdrantCollection),
}

impl Collection {
    /// Wraps opened parts.
    pub(super) fn new(
        record: CollectionRecord,
        embedder: Arc<dyn Embedder>,
        backing: Backing,
        schema: crate::meta::Schema,
    ) -> Collection {
        Collection {
            record,
            embedder,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            deleted: AtomicBool::new(false),
            schema: std::sync::RwLock::new(schema),
            backing,
        }
    }

    /// The backend seam: every read and write of shared engine code goes through it.
    pub(super) fn store(&self) -> &dyn CollectionStore {
        match &self.backing {
            Backing::Embedded(e) => e.as_ref(),
            Backing::Qdrant(q) => q,
        }
    }

    /// The embedded backend's parts (recovery, checkpoints, snapshots), if this collection is
    /// on it.
    pub(super) fn local(&self) -> Option<&Embedded> {
        match &self.backing {
            Backing::Embedded(e) => Some(e.as_ref()),
            Backing::Qdrant(_) => None,
        }
    }

    /// [`Collection::local`], or FAILED_PRECONDITION naming what needs the embedded backend.
    pub(super) fn require_local(&self, what: &str) -> crate::error::Result<&Embedded> {
        self.local().ok_or_else(|| {
            crate::error::Error::FailedPrecondition(format!(
                "{what} works on the embedded backend; collection {} is on Qdrant (use Qdrant's own snapshots and tools there)",
                crate::error::quote(&self.record.name)
            ))
        })
    }

    pub fn stats(&self) -> CollectionStats {
        let (documents, chunks) = self.counts();
        let local = self.local();
        CollectionStats {
            name: self.record.name.clone(),
            documents,
            chunks,
            hnsw_points: local.map_or(0, |e| e.dense.graph_points().unwrap_or(0)),
            hnsw_tombstones: local.map_or(0, |e| e.dense.tombstones().unwrap_or(0)),
            stale: local.is_some_and(|e| e.stale.load(Ordering::Relaxed)),
        }
    }

    /// Documents and chunks (zero when the backend cannot say: the error is logged).
    fn counts(&self) -> (u64, u64) {
        self.store().counts().unwrap_or_else(|e| {
            tracing::warn!(collection = %self.record.name, error = %e, "cannot count documents");
            (0, 0)
        })
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

    /// Runs blocking `work` as this collection's one writer, with its write lock `guard` (see
    /// [`Engine::write_via`](super::Engine::write_via)). The guard moves into the blocking
    /// task with the work, so if the caller goes away the lock is still held until the work
    /// has ended; a collection deleted meanwhile answers NOT_FOUND.
    pub(super) async fn run_locked<T: Send + 'static>(
        self: &Arc<Self>,
        guard: tokio::sync::OwnedMutexGuard<()>,
        work: impl FnOnce(&Collection) -> crate::error::Result<T> + Send + 'static,
    ) -> crate::error::Result<T> {
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
        let (document_count, chunk_count) = self.counts();
        CollectionInfo {
            record: self.record.clone(),
            document_count,
            chunk_count,
            schema: self.schema(),
        }
    }

    pub(super) fn chunk_settings(&self) -> ChunkSettings {
        ChunkSettings {
            max_tokens: self.record.chunk_tokens,
            overlap: self.record.chunk_overlap,
        }
    }
}
