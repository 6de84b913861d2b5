//! The retrieval engine: collections, the ingest pipeline and search, independent of any
//! transport. Everything here speaks core types ([`DocumentInput`], [`SearchParams`],
//! [`SearchOutcome`]); the gRPC layer converts at the edge.
//!
//! One concern per file, each an `impl` block on [`Engine`] or [`Collection`]:
//! - `mod.rs` (this file): opening the data directory, the model cache, the collection
//!   registry (create, list, delete).
//! - `collection.rs`: one open collection: record, model, key types, write lock, and where its
//!   data lives (`Backing`, reached through `backend::CollectionStore`).
//! - `embedded.rs`: the embedded backend (sled, tantivy, HNSW), "commit durably, then apply";
//!   `remote.rs`: the registry when collections live in Qdrant (`crate::qdrant`).
//! - `ingest.rs`: the write path, and `Collection::commit`, the one place a write becomes
//!   acknowledged; `validate.rs`: the checks a document passes before any work.
//! - `search.rs`: the read path; fusion and grouping rules live in `retrieve::hybrid`.
//! - `recovery.rs`: applying logged operations to the indexes, replay at start-up, checkpoints.
//! - `snapshot.rs`: consistent online snapshots of collections, and restoring them.
//! - `settings.rs`: [`EngineConfig`], [`Limits`], [`IndexSettings`].
//!
//! Invariants: a write is acknowledged only once its backend made it durable (the embedded
//! backend: sled is the only source of truth, its transaction flushed, the indexes derived and
//! repaired from its operation log; Qdrant: `qdrant::write`); writes to one collection are
//! serialized by its write lock (in this process), and searches never take it.
//!
//! [`SearchParams`]: crate::retrieve::SearchParams
//! [`SearchOutcome`]: crate::retrieve::SearchOutcome

mod alias;
#[cfg(test)]
mod alias_tests;
#[cfg(test)]
pub(crate) mod backends_tests;
pub mod batch;
mod cancel;
mod collection;
mod documents;
mod embedded;
#[cfg(test)]
mod external_tests;
#[cfg(test)]
mod filter_tests;
pub mod generations;
mod ingest;
#[cfg(test)]
mod listing_tests;
#[cfg(test)]
mod qdrant_tests;
pub mod records;
mod recovery;
mod remote;
mod restore;
pub use restore::RecordsCheck;
mod restore_check;
mod search;
pub mod search_settings;
mod settings;
mod snapshot;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::chunk::ChunkSettings;
use crate::error::{quote, Error, Result};
use crate::index::{DenseIndex, HnswParams, LexicalIndex};
use crate::model::external;
use crate::model::query::CachedEmbedder;
use crate::model::{Embedder, ModelSource};
use crate::store::{CollectionRecord, Store};

pub use alias::Resolved;
pub use batch::{batch_documents, Batch, BATCH_BYTES, BATCH_DOCUMENTS};
pub use cancel::{Cancel, CancelOnDrop};
use collection::Backing;
use embedded::Embedded;

pub use collection::{
    Collection, CollectionInfo, CollectionSettings, CollectionStats, DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_TOKENS,
};
pub use documents::{
    DocumentPage, FilterDeleteOptions, FilterDeletion, HashPage, ListedDocument, MAX_PAGE,
    SCAN_BUDGET,
};
pub use ingest::{
    content_hash, ChunkInput, DocumentInput, StoredDocument, UpsertOutcome, UpsertStatus,
    CHUNK_JOINER,
};
pub use recovery::spawn_checkpointer;
pub use settings::{EngineConfig, IndexSettings, Limits, DEFAULT_QUERY_CACHE_ENTRIES};
pub use snapshot::{SnapshotCollection, SnapshotManifest, SNAPSHOT_FORMAT};
pub use validate::free_disk_bytes;
pub use validate::valid_collection_name;

pub struct Engine {
    config: EngineConfig,
    store: Store,
    /// Where models come from (the models directory in production, a hash embedder in tests).
    source: Arc<dyn ModelSource>,
    /// Loaded models by name: one per name, shared by every collection that uses it.
    models: Mutex<HashMap<String, Arc<dyn Embedder>>>,
    collections: RwLock<HashMap<String, Arc<Collection>>>,
    /// Collections whose files could not be opened at start-up, with the reason: the server
    /// serves the others, and these answer FAILED_PRECONDITION until deleted or repaired.
    unavailable: RwLock<Unavailable>,
    /// Searches started since the engine opened (lets tests see that abandoned work stopped).
    searches: std::sync::atomic::AtomicU64,
    /// Held while a collection name is checked and taken (create, restore), so two calls for
    /// one name cannot both succeed.
    naming: Mutex<()>,
    /// The Qdrant backend, when `[backend] kind = "qdrant"`: collections live there (sled
    /// still keeps this server's own state: ingestion jobs).
    remote: Option<Arc<crate::qdrant::Qdrant>>,
    /// Each collection's search settings as last read (`search_settings.rs`).
    settings_cache: search_settings::Cache,
}

/// An engine's configuration, model source and loaded models: enough to open its data
/// directory again once the engine itself is dropped ([`Engine::reopen_parts`]).
#[derive(Clone)]
pub struct EngineParts {
    config: EngineConfig,
    source: Arc<dyn ModelSource>,
    models: HashMap<String, Arc<dyn Embedder>>,
}

impl EngineParts {
    /// Opens the data directory (blocking), as [`Engine::open`] does, reusing the models.
    pub fn open(self) -> Result<Engine> {
        Engine::open_with_models(self.config, self.source, self.models)
    }
}

/// Collections that could not be opened: name -> (record, reason).
type Unavailable = HashMap<String, (CollectionRecord, String)>;

fn poisoned() -> Error {
    Error::internal("collection map poisoned")
}

/// Runs blocking engine work (sled reads, index lookups, Qdrant calls) off the async runtime.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("task failed: {e}")))?
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a collection name may be, as a regular expression (for API documents); the check is
/// [`valid_collection_name`].
pub const COLLECTION_NAME_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

impl Engine {
    /// Opens the data directory, every collection in it, and their models. Blocking.
    pub fn open(config: EngineConfig, source: Arc<dyn ModelSource>) -> Result<Engine> {
        Engine::open_with_models(config, source, HashMap::new())
    }

    /// [`Engine::open`] with models already loaded (by name), as when the server reopens its
    /// data directory after a storage failure: nothing is loaded twice.
    pub fn open_with_models(
        config: EngineConfig,
        source: Arc<dyn ModelSource>,
        models: HashMap<String, Arc<dyn Embedder>>,
    ) -> Result<Engine> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)?;
        let store =
            Store::open_with_cache(&config.data_dir.join("sled"), config.storage_cache_bytes)?;
        store.drop_orphan_trees()?;
        let remote = match config.backend.kind {
            crate::qdrant::BackendKind::Embedded => None,
            crate::qdrant::BackendKind::Qdrant => {
                Some(crate::qdrant::Qdrant::connect(&config.backend)?)
            }
        };
        let engine = Engine {
            config,
            store,
            source,
            models: Mutex::new(models),
            collections: RwLock::new(HashMap::new()),
            unavailable: RwLock::new(HashMap::new()),
            searches: std::sync::atomic::AtomicU64::new(0),
            naming: Mutex::new(()),
            remote,
            settings_cache: Default::default(),
        };
        if engine.remote.is_some() {
            engine.start_remote()?;
            return Ok(engine);
        }
        let records = engine.store.list_collections()?;
        engine.remove_orphan_files(&records)?;
        for record in records {
            let name = record.name.clone();
            match engine.open_collection(record.clone()) {
                Ok(collection) => {
                    engine.open_map_mut()?.insert(name, Arc::new(collection));
                }
                Err(e) => {
                    tracing::error!(collection = %quote(&name), error = %e, "collection cannot be opened; serving the others");
                    engine
                        .unavailable_map_mut()?
                        .insert(name, (record, e.to_string()));
                }
            }
        }
        Ok(engine)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// False once the storage failed (a full disk, an I/O error) and has not recovered.
    pub fn storage_healthy(&self) -> bool {
        self.store.healthy()
    }

    /// Flushes the store once: true when that works (a failure that was not sled's sticky
    /// error has cleared). Blocking.
    pub fn probe_storage(&self) -> bool {
        self.store.flush_blocking().is_ok()
    }

    /// What opening this engine's data directory again takes: its configuration, its model
    /// source and the models it has loaded (which hold no storage, so they carry over).
    pub fn reopen_parts(&self) -> Result<EngineParts> {
        let models = self
            .models
            .lock()
            .map_err(|_| Error::internal("model cache poisoned"))?
            .clone();
        Ok(EngineParts {
            config: self.config.clone(),
            source: self.source.clone(),
            models,
        })
    }

    /// Searches started since the engine opened.
    pub fn searches(&self) -> u64 {
        self.searches.load(Ordering::Relaxed)
    }

    pub(super) fn open_map(&self) -> Result<RwLockReadGuard<'_, HashMap<String, Arc<Collection>>>> {
        self.collections.read().map_err(|_| poisoned())
    }

    fn open_map_mut(&self) -> Result<RwLockWriteGuard<'_, HashMap<String, Arc<Collection>>>> {
        self.collections.write().map_err(|_| poisoned())
    }

    fn unavailable_map(&self) -> Result<RwLockReadGuard<'_, Unavailable>> {
        self.unavailable.read().map_err(|_| poisoned())
    }

    fn unavailable_map_mut(&self) -> Result<RwLockWriteGuard<'_, Unavailable>> {
        self.unavailable.write().map_err(|_| poisoned())
    }

    fn collections_dir(&self) -> PathBuf {
        self.config.data_dir.join("collections")
    }

    /// Loads (and caches) an embedding model by name. Blocking. The cache's lock is not held
    /// while a model loads (or is provisioned with pip), so one slow model never stalls the
    /// others.
    pub fn embedder(&self, name: &str) -> Result<Arc<dyn Embedder>> {
        let cached = self
            .models
            .lock()
            .map_err(|_| Error::internal("model cache poisoned"))?
            .get(name)
            .cloned();
        if let Some(e) = cached {
            return Ok(e);
        }
        // External collections embed nothing, so they get no query cache.
        let embedder: Arc<dyn Embedder> = match external::parse_external(name)? {
            Some(dimension) => Arc::new(external::ExternalVectors::new(dimension)?),
            None if self.config.query_cache_entries > 0 => Arc::new(CachedEmbedder::new(
                self.source.load(name)?,
                self.config.query_cache_entries,
            )),
            None => self.source.load(name)?,
        };
        Ok(self
            .models
            .lock()
            .map_err(|_| Error::internal("model cache poisoned"))?
            .entry(name.to_string())
            .or_insert(embedder)
            .clone())
    }

    fn open_collection(&self, record: CollectionRecord) -> Result<Collection> {
        let embedder = self.embedder(&record.model)?;
        if embedder.dimension() != record.dimension {
            return Err(Error::FailedPrecondition(format!(
                "collection {:?} was built with {}-d vectors but model {:?} now produces {}",
                record.name,
                record.dimension,
                record.model,
                embedder.dimension()
            )));
        }
        let dir = self.collections_dir().join(record.id.to_string());
        std::fs::create_dir_all(&dir)?;
        let trees = self.store.trees(&record)?;
        let lexical = LexicalIndex::open(&dir.join("lexical"))?;
        let ix = &self.config.index;
        let params = HnswParams {
            m: ix.hnsw_m,
            ef_construction: ix.hnsw_ef_construction,
            ef_search: ix.hnsw_ef_search,
            parallel_insert_min: ix.hnsw_parallel_insert_min,
        };
        let dense = DenseIndex::open(&dir, record.dimension, params)?;
        let schema = trees.load_schema()?;
        let local = Embedded::new(
            record.clone(),
            self.store.clone(),
            trees,
            lexical,
            dense,
            dir,
        )?;
        local.recover()?;
        Ok(Collection::new(
            record,
            embedder,
            Backing::Embedded(Box::new(local)),
            schema,
        ))
    }

    /// An open collection by its own name (not an alias: [`Engine::collection`]); NOT_FOUND,
    /// or FAILED_PRECONDITION with the reason when it exists but could not be opened.
    pub(super) fn physical(&self, name: &str) -> Result<Arc<Collection>> {
        let open = self.open_map()?.get(name).cloned();
        if let Some(c) = open {
            match &c.backing {
                Backing::Qdrant(q) if q.due_for_check() => {}
                _ => return Ok(c),
            }
            // Another front end may have deleted or re-created it: look again, now and then.
            match self
                .remote
                .as_ref()
                .map(|r| r.find(name))
                .transpose()?
                .flatten()
            {
                Some(found) if found.record.id == c.record.id => return Ok(c),
                found => {
                    self.open_map_mut()?.remove(name);
                    match found {
                        Some(found) => return self.open_remote(found),
                        None => return Err(Error::CollectionNotFound(name.to_string())),
                    }
                }
            }
        }
        if let Some(remote) = &self.remote {
            valid_collection_name(name)?;
            if let Some(found) = remote.find(name)? {
                return self.open_remote(found);
            }
        }
        match self.unavailable(name)? {
            Some(reason) => Err(Error::FailedPrecondition(format!(
                "collection {} could not be opened at start-up ({reason}); delete it, or repair its files and restart",
                quote(name)
            ))),
            None => Err(Error::CollectionNotFound(name.to_string())),
        }
    }

    /// Why `name` could not be opened, if it is one of the collections that could not.
    fn unavailable(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .unavailable_map()?
            .get(name)
            .map(|(_, reason)| reason.clone()))
    }

    /// Names of the collections that could not be opened, with the reason.
    pub fn unavailable_collections(&self) -> Result<Vec<(String, String)>> {
        let map = self.unavailable_map()?;
        let mut out: Vec<_> = map
            .iter()
            .map(|(n, (_, why))| (n.clone(), why.clone()))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Creates a collection. Blocking (may load a model).
    pub fn create_collection(
        &self,
        name: &str,
        settings: CollectionSettings,
    ) -> Result<CollectionInfo> {
        valid_collection_name(name)?;
        let _naming = self.naming.lock().map_err(|_| poisoned())?;
        self.refuse_alias_name(name)?;
        if let Some(remote) = &self.remote {
            // Qdrant decides (another front end may have created or deleted it).
            if remote.find(name)?.is_some() {
                return Err(Error::CollectionExists(name.to_string()));
            }
            self.open_map_mut()?.remove(name);
        } else if self.collection(name).is_ok() || self.unavailable(name)?.is_some() {
            return Err(Error::CollectionExists(name.to_string()));
        }
        self.check_free_disk()?;
        // Records a crash left under this name (a deleted collection's) are not the new one's.
        self.forget_records_blocking(name)?;
        let model = settings.model.filter(|m| !m.is_empty());
        let model = match (settings.vector_dimension, model) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "give embedding_model or vector_dimension, not both: a collection with external vectors has no model",
                ))
            }
            (Some(d), None) => {
                let name = external::external_model_name(d);
                external::parse_external(&name)?;
                name
            }
            (None, Some(m)) => m,
            (None, None) => self.config.default_model.clone(),
        };
        let chunking = ChunkSettings {
            max_tokens: settings.chunk_tokens.unwrap_or(DEFAULT_CHUNK_TOKENS),
            overlap: settings.chunk_overlap.unwrap_or(DEFAULT_CHUNK_OVERLAP),
        };
        chunking.validate()?;
        for key in settings.metadata_schema.keys() {
            self.check_metadata_key(key)?;
        }
        let max_keys = self.config.limits.max_metadata_keys;
        if settings.metadata_schema.len() > max_keys {
            return Err(Error::invalid(format!(
                "metadata_schema declares {} keys, over the limit max_metadata_keys = {max_keys}",
                settings.metadata_schema.len()
            )));
        }
        let embedder = self.embedder(&model)?;
        let id = match self.remote {
            // Only names local files on the embedded backend; unique enough to tell apart a
            // collection re-created under the same name.
            Some(_) => rand::random::<u64>() >> 1,
            None => self.store.next_id()?,
        };
        let record = CollectionRecord {
            name: name.to_string(),
            id,
            model,
            dimension: embedder.dimension(),
            chunk_tokens: chunking.max_tokens,
            chunk_overlap: chunking.overlap,
            created_unix_ms: now_ms(),
        };
        if let Some(remote) = &self.remote {
            remote.create(&record, &settings.metadata_schema)?;
            let c = self.open_remote(crate::qdrant::Found {
                record,
                schema: settings.metadata_schema,
            })?;
            return Ok(c.info());
        }
        // Declared types first: a crash before the record leaves orphan trees, dropped at start.
        self.store
            .trees(&record)?
            .declare(&settings.metadata_schema)?;
        self.store.create_collection(&record)?;
        self.store.flush_blocking()?;
        let collection = Arc::new(self.open_collection(record)?);
        let info = collection.info();
        self.open_map_mut()?.insert(name.to_string(), collection);
        Ok(info)
    }

    /// Sizes of every open collection (for metrics).
    pub fn collection_stats(&self) -> Vec<CollectionStats> {
        let Ok(map) = self.open_map() else {
            return Vec::new();
        };
        let mut out: Vec<CollectionStats> = map.values().map(|c| c.stats()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn list_collections(&self) -> Result<Vec<CollectionInfo>> {
        if self.remote.is_some() {
            self.refresh_remote()?;
        }
        let map = self.open_map()?;
        let mut out: Vec<CollectionInfo> = map.values().map(|c| c.info()).collect();
        out.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        Ok(out)
    }

    /// Deletes a collection and its files. Runs to completion once started, whatever the
    /// caller does: the deletion is a task of its own, holding the collection's write lock (so
    /// it waits for a write in progress and no write starts after it), and the name disappears
    /// from the registry only together with its durable record.
    pub async fn delete_collection(self: &Arc<Self>, name: &str) -> Result<()> {
        if self.unavailable(name)?.is_some() {
            return self.delete_unavailable(name).await;
        }
        self.refuse_delete_through_alias(name)?;
        let collection = self.physical(name)?;
        let engine = self.clone();
        tokio::spawn(async move {
            let _guard = collection.write_guard().await;
            engine.mark_deleted(&collection).await?;
            let (store, c, remote) = (
                engine.store.clone(),
                collection.clone(),
                engine.remote.clone(),
            );
            let dropped = tokio::task::spawn_blocking(move || match remote {
                Some(remote) => remote.delete(&c.record.name),
                None => store.delete_collection(&c.record),
            })
            .await
            .map_err(|e| Error::internal(format!("delete task failed: {e}")))
            .and_then(|r| r);
            if let Err(e) = dropped {
                collection.deleted.store(false, Ordering::Release);
                return Err(e);
            }
            engine.open_map_mut()?.remove(&collection.record.name);
            crate::metrics::forget_collection(&collection.record.name);
            engine.forget_records(&collection.record.name).await;
            let Some(local) = collection.local() else {
                return Ok(());
            };
            if let Err(e) = std::fs::remove_dir_all(&local.dir) {
                // Removed again at the next start-up.
                tracing::warn!(error = %e, "could not remove collection files");
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::internal(format!("delete task failed: {e}")))?
    }

    /// Deletes a collection that could not be opened: its record, trees and files.
    async fn delete_unavailable(&self, name: &str) -> Result<()> {
        let record = self
            .unavailable_map()?
            .get(name)
            .map(|(r, _)| r.clone())
            .ok_or_else(|| Error::CollectionNotFound(name.to_string()))?;
        let store = self.store.clone();
        let r = record.clone();
        tokio::task::spawn_blocking(move || store.delete_collection(&r))
            .await
            .map_err(|e| Error::internal(format!("delete task failed: {e}")))??;
        self.unavailable_map_mut()?.remove(name);
        let dir = self.collections_dir().join(record.id.to_string());
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(error = %e, "could not remove collection files");
        }
        Ok(())
    }
}
