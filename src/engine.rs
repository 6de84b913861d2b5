//! The retrieval engine: collections, the ingest pipeline and search, independent of any
//! transport.
//!
//! Write path (one batch): validate -> skip documents whose content hash is unchanged -> chunk
//! -> embed (the embedder's session pool) -> one sled transaction that stores documents, chunks
//! and vectors and logs the operation -> flush (only now is the batch acknowledged) -> apply the
//! operation to tantivy (commit) and HNSW. Writes to one collection are serialized by its write
//! lock; searches never take it.
//!
//! Start-up: every collection's indexes report the last operation they applied; later logged
//! operations are replayed from sled (or the index is rebuilt from sled when it is missing).
//! Checkpoints (periodic and at shutdown) persist the HNSW graph and trim the log.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::chunk::{self, ChunkSettings};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::index::{exact_search, DenseIndex, HnswParams, LexicalDoc, LexicalIndex};
use crate::model::{self, catalog, fetch, Embedder};
use crate::retrieve::{fuse, Hit, Mode, SearchOutcome, SearchParams};
use crate::store::{
    ChunkRecord, CollectionRecord, CollectionTrees, DocRecord, NewDocument, Op, Store,
};

/// Default chunk size: 254 tokens leaves room for the two special tokens in a 256-token model
/// window.
pub const DEFAULT_CHUNK_TOKENS: usize = 254;
pub const DEFAULT_CHUNK_OVERLAP: usize = 32;
/// Chunk ids are `document version key << CHUNK_BITS | ordinal`: the key is a fresh id per
/// stored version of a document, so chunk ids are never reused, and a chunk's document is known
/// from its id alone (which lets search collapse candidates per document without a lookup).
pub const CHUNK_BITS: u32 = 20;
pub const MAX_CHUNKS_PER_DOCUMENT: u64 = 1 << CHUNK_BITS;

/// The document-version key of a chunk id.
pub fn doc_key(chunk_id: u64) -> u64 {
    chunk_id >> CHUNK_BITS
}

/// Keeps each document's best-ranked chunk, in order.
fn best_chunk_per_document(list: Vec<(u64, f32)>) -> Vec<(u64, f32)> {
    let mut seen = HashSet::new();
    list.into_iter()
        .filter(|(id, _)| seen.insert(doc_key(*id)))
        .collect()
}

/// Filtered dense searches that allow at most this many chunks are answered exactly.
const EXACT_FILTER_LIMIT: usize = 4096;

/// Settings given when creating a collection; `None` means the server default.
#[derive(Debug, Clone, Default)]
pub struct CollectionSettings {
    pub model: Option<String>,
    pub chunk_tokens: Option<usize>,
    pub chunk_overlap: Option<usize>,
}

/// A collection as reported to callers.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionInfo {
    pub record: CollectionRecord,
    pub document_count: u64,
    pub chunk_count: u64,
}

/// A document to upsert.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocumentInput {
    pub id: String,
    pub text: String,
    pub title: String,
    pub metadata: BTreeMap<String, String>,
    pub markdown: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertStatus {
    Created,
    Updated,
    Unchanged,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpsertOutcome {
    pub id: String,
    pub status: UpsertStatus,
    pub chunk_count: usize,
}

/// A stored document with, optionally, its chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDocument {
    pub input: DocumentInput,
    pub content_hash: String,
    pub chunk_ids: Vec<u64>,
    pub chunks: Vec<(u64, ChunkRecord)>,
}

/// Which indexes an operation is applied to.
#[derive(Debug, Clone, Copy)]
struct Targets {
    lexical: bool,
    dense: bool,
}

impl Targets {
    const BOTH: Targets = Targets {
        lexical: true,
        dense: true,
    };
    const LEXICAL: Targets = Targets {
        lexical: true,
        dense: false,
    };
}

/// One open collection: its trees, indexes and model.
pub struct Collection {
    record: CollectionRecord,
    trees: CollectionTrees,
    embedder: Arc<Embedder>,
    lexical: LexicalIndex,
    dense: DenseIndex,
    /// Serializes writes (and checkpoints) to this collection.
    write_lock: tokio::sync::Mutex<()>,
    dir: PathBuf,
}

pub struct Engine {
    config: Config,
    store: Store,
    models: Mutex<HashMap<String, Arc<Embedder>>>,
    collections: RwLock<HashMap<String, Arc<Collection>>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn valid_collection_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Error::invalid(format!(
            "invalid collection name {name:?}: use 1-64 characters of [A-Za-z0-9_-]"
        )));
    }
    Ok(())
}

/// Hash of everything that determines a document's chunks and index entries.
pub fn content_hash(doc: &DocumentInput) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(&[doc.markdown as u8]);
    field(doc.title.as_bytes());
    field(doc.text.as_bytes());
    for (k, v) in &doc.metadata {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    fetch::hex(&h.finalize())
}

/// The text the model embeds for a chunk: the document title gives short chunks context.
pub fn embedding_text(title: &str, chunk: &str) -> String {
    if title.is_empty() {
        chunk.to_string()
    } else {
        format!("{title}\n{chunk}")
    }
}

impl Engine {
    /// Opens the data directory, every collection in it, and their models. Blocking.
    pub fn open(config: Config) -> Result<Engine> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)?;
        let store = Store::open(&config.data_dir.join("sled"))?;
        store.drop_orphan_trees()?;
        let engine = Engine {
            config,
            store,
            models: Mutex::new(HashMap::new()),
            collections: RwLock::new(HashMap::new()),
        };
        let records = engine.store.list_collections()?;
        let live: HashSet<String> = records.iter().map(|r| r.id.to_string()).collect();
        let root = engine.collections_dir();
        if root.exists() {
            for entry in std::fs::read_dir(&root)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().to_string();
                if !live.contains(&name) {
                    tracing::info!(dir = %entry.path().display(), "removing files of a deleted collection");
                    std::fs::remove_dir_all(entry.path())?;
                }
            }
        }
        for record in records {
            let collection = engine.open_collection(record)?;
            engine
                .collections
                .write()
                .map_err(|_| Error::internal("collection map poisoned"))?
                .insert(collection.record.name.clone(), Arc::new(collection));
        }
        Ok(engine)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn collections_dir(&self) -> PathBuf {
        self.config.data_dir.join("collections")
    }

    /// Loads (and caches) an embedding model by name, provisioning the runtime and catalog
    /// models first when allowed. Blocking.
    pub fn embedder(&self, name: &str) -> Result<Arc<Embedder>> {
        let mut models = self
            .models
            .lock()
            .map_err(|_| Error::internal("model cache poisoned"))?;
        if let Some(e) = models.get(name) {
            return Ok(e.clone());
        }
        let env = self.runtime()?;
        let dir = model::model_dir(&self.config.models_dir, name);
        if !dir.exists() {
            match catalog::find_model(name) {
                Some(item) if self.config.auto_fetch_model => {
                    fetch::ensure(item, &self.config.models_dir, &mut |msg| {
                        tracing::info!("{msg}")
                    })?;
                }
                Some(_) => {
                    return Err(Error::FailedPrecondition(format!(
                        "model {name:?} is not provisioned in {}: run `quarry model fetch {name}`",
                        self.config.models_dir.display()
                    )))
                }
                None => {
                    return Err(Error::FailedPrecondition(format!(
                        "unknown embedding model {name:?}: not in {} and not a known model ({})",
                        self.config.models_dir.display(),
                        catalog::MODELS
                            .iter()
                            .map(|m| m.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            }
        }
        let embedder = Arc::new(Embedder::load(
            &dir,
            env,
            self.config.effective_embed_workers(),
        )?);
        tracing::info!(
            model = name,
            dimension = embedder.dimension(),
            "embedding model loaded"
        );
        models.insert(name.to_string(), embedder.clone());
        Ok(embedder)
    }

    fn runtime(&self) -> Result<ort::environment::Environment> {
        let library = match &self.config.onnxruntime_library {
            Some(path) => path.clone(),
            None => {
                let path = fetch::onnxruntime_path(&self.config.models_dir);
                if !path.exists() && self.config.auto_fetch_model {
                    fetch::ensure(&catalog::ONNXRUNTIME, &self.config.models_dir, &mut |msg| {
                        tracing::info!("{msg}")
                    })?;
                }
                path
            }
        };
        model::init_runtime(&library)
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
        let dense = DenseIndex::open(
            &dir,
            record.dimension,
            HnswParams {
                m: ix.hnsw_m,
                ef_construction: ix.hnsw_ef_construction,
                ef_search: ix.hnsw_ef_search,
            },
        )?;
        let collection = Collection {
            record,
            trees,
            embedder,
            lexical,
            dense,
            write_lock: tokio::sync::Mutex::new(()),
            dir,
        };
        collection.recover()?;
        Ok(collection)
    }

    /// An open collection, or NOT_FOUND.
    pub fn collection(&self, name: &str) -> Result<Arc<Collection>> {
        self.collections
            .read()
            .map_err(|_| Error::internal("collection map poisoned"))?
            .get(name)
            .cloned()
            .ok_or_else(|| Error::CollectionNotFound(name.to_string()))
    }

    /// Creates a collection. Blocking (may load a model).
    pub fn create_collection(
        &self,
        name: &str,
        settings: CollectionSettings,
    ) -> Result<CollectionInfo> {
        valid_collection_name(name)?;
        if self.collection(name).is_ok() {
            return Err(Error::CollectionExists(name.to_string()));
        }
        let model = settings
            .model
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| self.config.default_model.clone());
        let chunking = ChunkSettings {
            max_tokens: settings.chunk_tokens.unwrap_or(DEFAULT_CHUNK_TOKENS),
            overlap: settings.chunk_overlap.unwrap_or(DEFAULT_CHUNK_OVERLAP),
        };
        chunking.validate()?;
        let embedder = self.embedder(&model)?;
        let record = CollectionRecord {
            name: name.to_string(),
            id: self.store.next_id()?,
            model,
            dimension: embedder.dimension(),
            chunk_tokens: chunking.max_tokens,
            chunk_overlap: chunking.overlap,
            created_unix_ms: now_ms(),
        };
        self.store.create_collection(&record)?;
        self.store.flush_blocking()?;
        let collection = Arc::new(self.open_collection(record)?);
        let info = collection.info();
        self.collections
            .write()
            .map_err(|_| Error::internal("collection map poisoned"))?
            .insert(name.to_string(), collection);
        Ok(info)
    }

    pub fn list_collections(&self) -> Result<Vec<CollectionInfo>> {
        let map = self
            .collections
            .read()
            .map_err(|_| Error::internal("collection map poisoned"))?;
        let mut out: Vec<CollectionInfo> = map.values().map(|c| c.info()).collect();
        out.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        Ok(out)
    }

    /// Deletes a collection and its files.
    pub async fn delete_collection(&self, name: &str) -> Result<()> {
        let collection = self
            .collections
            .write()
            .map_err(|_| Error::internal("collection map poisoned"))?
            .remove(name)
            .ok_or_else(|| Error::CollectionNotFound(name.to_string()))?;
        let _guard = collection.write_lock.lock().await;
        self.store.delete_collection(&collection.record)?;
        if let Err(e) = std::fs::remove_dir_all(&collection.dir) {
            // Removed again at the next start-up.
            tracing::warn!(error = %e, "could not remove collection files");
        }
        Ok(())
    }

    /// Upserts a batch atomically. Returns one outcome per input document, in order.
    pub async fn upsert(
        &self,
        collection: &str,
        docs: Vec<DocumentInput>,
    ) -> Result<Vec<UpsertOutcome>> {
        let collection = self.collection(collection)?;
        self.validate_batch(&docs)?;
        let _guard = collection.write_lock.lock().await;
        let store = self.store.clone();
        let c = collection.clone();
        tokio::task::spawn_blocking(move || c.upsert_blocking(&store, docs))
            .await
            .map_err(|e| Error::internal(format!("ingest task failed: {e}")))?
    }

    /// Checks one document against the limits (also used per document by streaming ingest).
    pub fn validate_document(&self, doc: &DocumentInput) -> Result<()> {
        let limits = &self.config.limits;
        if doc.id.is_empty() {
            return Err(Error::invalid("document id must not be empty"));
        }
        if doc.id.len() > limits.max_id_bytes {
            return Err(Error::invalid(format!(
                "document id is {} bytes, over the limit max_id_bytes = {}",
                doc.id.len(),
                limits.max_id_bytes
            )));
        }
        if doc.text.trim().is_empty() {
            return Err(Error::invalid(format!(
                "document {:?} has empty text",
                doc.id
            )));
        }
        let size = doc.text.len() + doc.title.len();
        if size > limits.max_document_bytes {
            return Err(Error::invalid(format!(
                "document {:?} is {size} bytes, over the limit max_document_bytes = {}",
                doc.id, limits.max_document_bytes
            )));
        }
        if doc.metadata.len() > limits.max_metadata_entries {
            return Err(Error::invalid(format!(
                "document {:?} has {} metadata entries, over the limit max_metadata_entries = {}",
                doc.id,
                doc.metadata.len(),
                limits.max_metadata_entries
            )));
        }
        if doc
            .metadata
            .keys()
            .any(|k| k.is_empty() || k.contains('\u{1f}'))
        {
            return Err(Error::invalid(format!(
                "document {:?} has an empty metadata key or one containing U+001F",
                doc.id
            )));
        }
        Ok(())
    }

    fn validate_batch(&self, docs: &[DocumentInput]) -> Result<()> {
        let limits = &self.config.limits;
        if docs.is_empty() {
            return Err(Error::invalid("the batch has no documents"));
        }
        if docs.len() > limits.max_batch_documents {
            return Err(Error::invalid(format!(
                "the batch has {} documents, over the limit max_batch_documents = {}",
                docs.len(),
                limits.max_batch_documents
            )));
        }
        let mut seen = HashSet::new();
        for doc in docs {
            self.validate_document(doc)?;
            if !seen.insert(doc.id.as_str()) {
                return Err(Error::invalid(format!(
                    "document id {:?} appears twice in the batch",
                    doc.id
                )));
            }
        }
        Ok(())
    }

    /// Reads documents by id; returns them and the ids that do not exist.
    pub fn get_documents(
        &self,
        collection: &str,
        ids: &[String],
        include_chunks: bool,
    ) -> Result<(Vec<StoredDocument>, Vec<String>)> {
        let c = self.collection(collection)?;
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for id in ids {
            let (Some(rec), Some(text)) = (c.trees.get_doc(id)?, c.trees.get_text(id)?) else {
                missing.push(id.clone());
                continue;
            };
            let chunks = if include_chunks {
                rec.chunk_ids
                    .iter()
                    .filter_map(|cid| {
                        c.trees
                            .get_chunk(*cid)
                            .transpose()
                            .map(|r| r.map(|r| (*cid, r)))
                    })
                    .collect::<Result<Vec<_>>>()?
            } else {
                Vec::new()
            };
            found.push(StoredDocument {
                input: DocumentInput {
                    id: rec.id,
                    text,
                    title: rec.title,
                    metadata: rec.metadata,
                    markdown: rec.markdown,
                },
                content_hash: rec.content_hash,
                chunk_ids: rec.chunk_ids,
                chunks,
            });
        }
        Ok((found, missing))
    }

    /// Deletes documents by id; returns how many existed and which did not.
    pub async fn delete_documents(
        &self,
        collection: &str,
        ids: Vec<String>,
    ) -> Result<(usize, Vec<String>)> {
        let c = self.collection(collection)?;
        if ids.len() > self.config.limits.max_batch_documents {
            return Err(Error::invalid(format!(
                "{} ids, over the limit max_batch_documents = {}",
                ids.len(),
                self.config.limits.max_batch_documents
            )));
        }
        let _guard = c.write_lock.lock().await;
        let store = self.store.clone();
        let c2 = c.clone();
        tokio::task::spawn_blocking(move || {
            let mut present = Vec::new();
            let mut missing = Vec::new();
            for id in ids {
                if c2.trees.get_doc(&id)?.is_some() {
                    present.push(id);
                } else {
                    missing.push(id);
                }
            }
            if present.is_empty() {
                return Ok((0, missing));
            }
            let seq = store.next_id()?;
            let op = c2.trees.commit(seq, &[], &present)?;
            store.flush_blocking()?;
            c2.apply(seq, &op)?;
            Ok((present.len(), missing))
        })
        .await
        .map_err(|e| Error::internal(format!("delete task failed: {e}")))?
    }

    /// Runs a search.
    pub async fn search(&self, collection: &str, params: SearchParams) -> Result<SearchOutcome> {
        let c = self.collection(collection)?;
        self.validate_search(&params)?;
        let limits = self.config.limits.clone();
        tokio::task::spawn_blocking(move || c.search_blocking(params, &limits))
            .await
            .map_err(|e| Error::internal(format!("search task failed: {e}")))?
    }

    fn validate_search(&self, p: &SearchParams) -> Result<()> {
        let limits = &self.config.limits;
        if p.query.len() > limits.max_query_bytes {
            return Err(Error::invalid(format!(
                "query is {} bytes, over the limit max_query_bytes = {}",
                p.query.len(),
                limits.max_query_bytes
            )));
        }
        if p.query.trim().is_empty() && (p.query_vector.is_none() || p.mode != Mode::Dense) {
            return Err(Error::invalid(
                "query must not be empty (only a dense search with query_vector may omit it)",
            ));
        }
        if p.top_k > limits.max_top_k || p.candidates > limits.max_top_k {
            return Err(Error::invalid(format!(
                "top_k and candidates must be at most max_top_k = {}",
                limits.max_top_k
            )));
        }
        if p.filter.keys().any(|k| k.is_empty()) {
            return Err(Error::invalid("filter keys must not be empty"));
        }
        if let crate::retrieve::Fusion::Rrf { k, .. } = p.fusion {
            if !(k >= 0.0 && k.is_finite()) {
                return Err(Error::invalid("RRF k must be a finite number >= 0"));
            }
        }
        Ok(())
    }

    /// Persists every collection's HNSW graph, rebuilding graphs with too many tombstones, and
    /// trims the operation logs.
    pub async fn checkpoint(&self) -> Result<()> {
        let collections: Vec<Arc<Collection>> = self
            .collections
            .read()
            .map_err(|_| Error::internal("collection map poisoned"))?
            .values()
            .cloned()
            .collect();
        for c in collections {
            let _guard = c.write_lock.lock().await;
            let ratio = self.config.index.rebuild_tombstone_ratio;
            let store = self.store.clone();
            let c2 = c.clone();
            tokio::task::spawn_blocking(move || c2.checkpoint_blocking(&store, ratio))
                .await
                .map_err(|e| Error::internal(format!("checkpoint task failed: {e}")))??;
        }
        self.store.flush().await
    }
}

impl Collection {
    pub fn record(&self) -> &CollectionRecord {
        &self.record
    }

    pub fn embedder(&self) -> &Arc<Embedder> {
        &self.embedder
    }

    pub fn info(&self) -> CollectionInfo {
        CollectionInfo {
            record: self.record.clone(),
            document_count: self.trees.doc_count() as u64,
            chunk_count: self.trees.chunk_count() as u64,
        }
    }

    fn chunk_settings(&self) -> ChunkSettings {
        ChunkSettings {
            max_tokens: self.record.chunk_tokens,
            overlap: self.record.chunk_overlap,
        }
    }

    fn upsert_blocking(
        &self,
        store: &Store,
        docs: Vec<DocumentInput>,
    ) -> Result<Vec<UpsertOutcome>> {
        let mut outcomes = Vec::with_capacity(docs.len());
        let mut changed: Vec<(usize, DocumentInput, String)> = Vec::new();
        for doc in docs {
            let hash = content_hash(&doc);
            let existing = self.trees.get_doc(&doc.id)?;
            let status = match &existing {
                Some(old) if old.content_hash == hash => UpsertStatus::Unchanged,
                Some(_) => UpsertStatus::Updated,
                None => UpsertStatus::Created,
            };
            outcomes.push(UpsertOutcome {
                id: doc.id.clone(),
                status,
                chunk_count: existing.map_or(0, |e| e.chunk_ids.len()),
            });
            if status != UpsertStatus::Unchanged {
                changed.push((outcomes.len() - 1, doc, hash));
            }
        }
        if changed.is_empty() {
            return Ok(outcomes);
        }
        // Chunk every changed document, then embed all chunks in one pass over the pool.
        let settings = self.chunk_settings();
        let tokenizer = self.embedder.tokenizer();
        let spans: Vec<Vec<chunk::Span>> = changed
            .iter()
            .map(|(_, doc, _)| chunk::chunk(&doc.text, doc.markdown, settings, tokenizer))
            .collect::<Result<_>>()?;
        for ((_, doc, _), s) in changed.iter().zip(&spans) {
            if s.len() as u64 >= MAX_CHUNKS_PER_DOCUMENT {
                return Err(Error::invalid(format!(
                    "document {:?} splits into {} chunks, over the limit of {MAX_CHUNKS_PER_DOCUMENT}: raise chunk_tokens or split the document",
                    doc.id,
                    s.len()
                )));
            }
        }
        let texts: Vec<String> = changed
            .iter()
            .zip(&spans)
            .flat_map(|((_, doc, _), spans)| {
                spans
                    .iter()
                    .map(|s| embedding_text(&doc.title, &doc.text[s.start..s.end]))
            })
            .collect();
        let mut vectors = self.embedder.embed_documents(&texts)?.into_iter();
        let mut new_docs = Vec::with_capacity(changed.len());
        for ((pos, doc, hash), spans) in changed.into_iter().zip(spans) {
            // All chunks of one document version share a key (see `doc_key`).
            let base = store.next_id()? << CHUNK_BITS;
            let mut chunks = Vec::with_capacity(spans.len());
            for s in &spans {
                let vector = vectors
                    .next()
                    .ok_or_else(|| Error::internal("fewer vectors than chunks"))?;
                chunks.push((
                    base | s.ordinal as u64,
                    ChunkRecord {
                        doc_id: doc.id.clone(),
                        ordinal: s.ordinal,
                        start: s.start,
                        end: s.end,
                        text: doc.text[s.start..s.end].to_string(),
                    },
                    vector,
                ));
            }
            outcomes[pos].chunk_count = chunks.len();
            new_docs.push(NewDocument {
                record: DocRecord {
                    id: doc.id,
                    title: doc.title,
                    metadata: doc.metadata,
                    markdown: doc.markdown,
                    content_hash: hash,
                    chunk_ids: chunks.iter().map(|c| c.0).collect(),
                },
                text: doc.text,
                chunks,
            });
        }
        let seq = store.next_id()?;
        let op = self.trees.commit(seq, &new_docs, &[])?;
        store.flush_blocking()?;
        // Durable from here on: a failure below is repaired by replay at the next start-up.
        self.apply_with(seq, &op, &new_docs)?;
        Ok(outcomes)
    }

    /// Applies a logged operation to both indexes, reading what it needs from sled.
    fn apply(&self, seq: u64, op: &Op) -> Result<()> {
        self.index_op(seq, op, &[], Targets::BOTH)
    }

    /// Like [`Self::apply`], using `fresh` (just-written documents) instead of re-reading them.
    fn apply_with(&self, seq: u64, op: &Op, fresh: &[NewDocument]) -> Result<()> {
        self.index_op(seq, op, fresh, Targets::BOTH)
    }

    /// Applies `op` to the `targets` indexes that have not applied `seq` yet. Chunks come from
    /// `fresh` when they are there, else from sled; chunks already gone were removed by a later
    /// operation and are skipped.
    fn index_op(&self, seq: u64, op: &Op, fresh: &[NewDocument], targets: Targets) -> Result<()> {
        let lexical_due = targets.lexical && seq > self.lexical.applied_seq()?;
        let dense_due = targets.dense && seq > self.dense.applied_seq()?;
        if !lexical_due && !dense_due {
            return Ok(());
        }
        let mut docs: HashMap<String, DocRecord> = fresh
            .iter()
            .map(|d| (d.record.id.clone(), d.record.clone()))
            .collect();
        let mut chunk_records: Vec<(u64, ChunkRecord)> = Vec::new();
        let mut vectors: Vec<(u64, Vec<f32>)> = Vec::new();
        let fresh_chunks: HashMap<u64, (&ChunkRecord, &Vec<f32>)> = fresh
            .iter()
            .flat_map(|d| d.chunks.iter().map(|(id, c, v)| (*id, (c, v))))
            .collect();
        for id in &op.add {
            if let Some((c, v)) = fresh_chunks.get(id) {
                chunk_records.push((*id, (*c).clone()));
                if dense_due {
                    vectors.push((*id, (*v).clone()));
                }
                continue;
            }
            let Some(c) = self.trees.get_chunk(*id)? else {
                continue;
            };
            if dense_due {
                let Some(v) = self.trees.get_vector(*id)? else {
                    continue;
                };
                vectors.push((*id, v));
            }
            if !docs.contains_key(&c.doc_id) {
                if let Some(d) = self.trees.get_doc(&c.doc_id)? {
                    docs.insert(c.doc_id.clone(), d);
                }
            }
            chunk_records.push((*id, c));
        }
        let empty = BTreeMap::new();
        let lex_docs: Vec<LexicalDoc<'_>> = chunk_records
            .iter()
            .map(|(id, c)| {
                let d = docs.get(&c.doc_id);
                LexicalDoc {
                    chunk_id: *id,
                    title: d.map_or("", |d| d.title.as_str()),
                    body: &c.text,
                    metadata: d.map_or(&empty, |d| &d.metadata),
                }
            })
            .collect();
        if lexical_due {
            self.lexical.apply(seq, &lex_docs, &op.remove)?;
        }
        if dense_due {
            self.dense.apply(seq, &vectors, &op.remove)?;
        }
        Ok(())
    }

    /// Brings both indexes up to date with sled (see the module docs).
    fn recover(&self) -> Result<()> {
        let last = self.trees.last_seq()?;
        let chunks = self.trees.chunk_count();
        let lex = self.lexical.applied_seq()?;
        let dense = self.dense.applied_seq()?;
        let started = Instant::now();
        // An index that has never applied anything while sled has chunks was lost or never
        // written: rebuild it from sled rather than trusting a possibly trimmed log.
        if chunks > 0 && (lex == 0 || dense == 0) {
            let all: Vec<u64> = self
                .trees
                .chunks
                .iter()
                .keys()
                .map(|k| {
                    let k = k?;
                    Ok(u64::from_be_bytes(
                        k.as_ref()
                            .try_into()
                            .map_err(|_| Error::internal("corrupt chunk key"))?,
                    ))
                })
                .collect::<Result<_>>()?;
            let op = Op {
                add: all,
                remove: Vec::new(),
            };
            let seq = last.max(1);
            if lex == 0 {
                self.index_op(seq, &op, &[], Targets::LEXICAL)?;
            }
            if dense == 0 {
                let vectors = self.trees.all_vectors().collect::<Result<Vec<_>>>()?;
                self.dense.rebuild(vectors)?;
                self.dense.apply(seq, &[], &[])?;
            }
            tracing::info!(collection = %self.record.name, chunks, "rebuilt indexes from sled in {:?}", started.elapsed());
        }
        // Replay logged operations the indexes have not applied, merged into one.
        let from = self.lexical.applied_seq()?.min(self.dense.applied_seq()?);
        let mut merged = Op::default();
        let mut upto = 0;
        let mut removed = HashSet::new();
        for entry in self.trees.ops_after(from) {
            let (seq, op) = entry?;
            merged.add.extend(op.add);
            removed.extend(op.remove.iter().copied());
            merged.remove.extend(op.remove);
            upto = seq;
        }
        if upto > 0 {
            merged.add.retain(|id| !removed.contains(id));
            self.apply(upto, &merged)?;
            tracing::info!(collection = %self.record.name, upto, "replayed logged operations in {:?}", started.elapsed());
        }
        Ok(())
    }

    fn checkpoint_blocking(&self, store: &Store, rebuild_ratio: f32) -> Result<()> {
        if self.dense.tombstone_ratio()? > rebuild_ratio {
            let vectors = self.trees.all_vectors().collect::<Result<Vec<_>>>()?;
            tracing::info!(collection = %self.record.name, points = vectors.len(), "rebuilding HNSW graph to drop deleted points");
            self.dense.rebuild(vectors)?;
        }
        if self.dense.is_dirty()? {
            self.dense.checkpoint()?;
        }
        // Keep the newest entry so an index can always tell how far it is behind.
        let upto = self.lexical.applied_seq()?.min(self.dense.applied_seq()?);
        if upto > 0 {
            self.trees.trim_oplog(upto.saturating_sub(1))?;
        }
        store.flush_blocking()
    }

    fn search_blocking(
        &self,
        p: SearchParams,
        limits: &crate::config::Limits,
    ) -> Result<SearchOutcome> {
        let started = Instant::now();
        let top_k = if p.top_k == 0 { 10 } else { p.top_k };
        let depth = if p.candidates > 0 {
            p.candidates.max(top_k)
        } else {
            (2 * top_k).max(100).min(limits.max_top_k.max(top_k))
        };
        let mut mode = p.mode;
        let mut warning = None;

        let lexical_side = || -> Result<Vec<(u64, f32)>> {
            if mode == Mode::Dense {
                return Ok(Vec::new());
            }
            self.lexical
                .search(&p.query, depth, &p.filter, p.title_boost)
        };
        let dense_side = || -> Result<Vec<(u64, f32)>> {
            if mode == Mode::Lexical {
                return Ok(Vec::new());
            }
            let q = match &p.query_vector {
                Some(v) => {
                    if v.len() != self.record.dimension {
                        return Err(Error::invalid(format!(
                            "query_vector has dimension {}, collection {:?} uses {}",
                            v.len(),
                            self.record.name,
                            self.record.dimension
                        )));
                    }
                    let mut v = v.clone();
                    model::normalize(&mut v);
                    v
                }
                None => self.embedder.embed_query(&p.query)?,
            };
            self.dense_candidates(&q, depth, &p.filter)
        };
        // In hybrid mode the lexical retriever runs while the query is embedded: the two are
        // independent and embedding dominates the latency.
        let (lexical, dense) = if mode == Mode::Hybrid {
            rayon::join(lexical_side, dense_side)
        } else {
            (lexical_side(), dense_side())
        };
        let mut lexical = lexical?;
        let mut dense = match dense {
            Ok(d) => d,
            Err(Error::Embedding(e)) if mode == Mode::Hybrid => {
                tracing::warn!(error = %e, "query embedding failed; answering lexically");
                warning = Some(format!(
                    "the query could not be embedded ({e}); results are lexical only"
                ));
                mode = Mode::Lexical;
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        // With grouping, fuse document rankings rather than chunk rankings: a document's
        // second chunk must not push other documents down a retriever's list, and the two
        // retrievers agree on a document even when each prefers another of its chunks.
        // Entries are keyed by document until fusion is done, then mapped back to the chunk
        // that the retriever ranking the document higher chose.
        let mut chosen: HashMap<u64, (u64, u64)> = HashMap::new();
        if p.group_by_document {
            lexical = best_chunk_per_document(lexical);
            dense = best_chunk_per_document(dense);
            for (c, _) in &lexical {
                chosen.entry(doc_key(*c)).or_insert((*c, *c)).0 = *c;
            }
            for (c, _) in &dense {
                chosen.entry(doc_key(*c)).or_insert((*c, *c)).1 = *c;
            }
            for (c, _) in lexical.iter_mut().chain(dense.iter_mut()) {
                *c = doc_key(*c);
            }
        }
        let mut fused = match mode {
            Mode::Hybrid => fuse(&lexical, &dense, p.fusion),
            Mode::Lexical | Mode::Dense => {
                let list = if mode == Mode::Lexical {
                    &lexical
                } else {
                    &dense
                };
                let mut f = fuse(
                    if mode == Mode::Lexical { list } else { &[] },
                    if mode == Mode::Dense { list } else { &[] },
                    p.fusion,
                );
                // A single retriever keeps its own order and raw scores.
                for x in &mut f {
                    x.score = x.lexical.or(x.dense).map_or(0.0, |h| h.score);
                }
                f.sort_by_key(|x| x.lexical.or(x.dense).map_or(u32::MAX, |h| h.rank));
                f
            }
        };

        if p.group_by_document {
            for f in &mut fused {
                if let Some(&(lex_chunk, dense_chunk)) = chosen.get(&f.chunk_id) {
                    let dense_better = match (f.lexical, f.dense) {
                        (Some(l), Some(d)) => d.rank < l.rank,
                        (None, Some(_)) => true,
                        _ => false,
                    };
                    f.chunk_id = if dense_better { dense_chunk } else { lex_chunk };
                }
            }
        }
        let mut hits = Vec::with_capacity(top_k);
        let mut docs: HashMap<String, Option<DocRecord>> = HashMap::new();
        let mut seen_docs = HashSet::new();
        for f in fused {
            if hits.len() >= top_k {
                break;
            }
            let Some(chunk) = self.trees.get_chunk(f.chunk_id)? else {
                continue; // deleted since it was indexed
            };
            if p.group_by_document && !seen_docs.insert(chunk.doc_id.clone()) {
                continue;
            }
            if !docs.contains_key(&chunk.doc_id) {
                docs.insert(chunk.doc_id.clone(), self.trees.get_doc(&chunk.doc_id)?);
            }
            let (title, metadata) = match docs.get(&chunk.doc_id).and_then(|d| d.as_ref()) {
                Some(d) => (d.title.clone(), d.metadata.clone()),
                None => continue,
            };
            hits.push(Hit {
                doc_id: chunk.doc_id,
                chunk_id: f.chunk_id,
                ordinal: chunk.ordinal,
                text: chunk.text,
                start: chunk.start,
                end: chunk.end,
                score: f.score,
                title,
                metadata,
                lexical: f.lexical,
                dense: f.dense,
            });
        }
        Ok(SearchOutcome {
            hits,
            mode,
            warning,
            took: started.elapsed(),
        })
    }

    /// Dense candidates, planned by filter selectivity: HNSW when unfiltered or when the
    /// filter allows many chunks, exact scoring of the allowed chunks when it allows few
    /// (HNSW's filtered search loses its early termination and gets slow there).
    fn dense_candidates(
        &self,
        q: &[f32],
        depth: usize,
        filter: &BTreeMap<String, String>,
    ) -> Result<Vec<(u64, f32)>> {
        if filter.is_empty() {
            return self.dense.search(q, depth, None);
        }
        let allowed = self.lexical.matching_chunks(filter)?;
        if allowed.len() <= EXACT_FILTER_LIMIT {
            let mut vectors = Vec::with_capacity(allowed.len());
            for id in &allowed {
                if let Some(v) = self.trees.get_vector(*id)? {
                    vectors.push((*id, v));
                }
            }
            Ok(exact_search(q, vectors.into_iter(), depth))
        } else {
            self.dense.search(q, depth, Some(&allowed))
        }
    }
}

/// Spawns the periodic checkpoint task; it stops when `shutdown` resolves.
pub fn spawn_checkpointer(
    engine: Arc<Engine>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let every = Duration::from_secs(engine.config().index.checkpoint_interval_secs.max(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = engine.checkpoint().await {
                        tracing::error!(error = %e, "checkpoint failed");
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    })
}
