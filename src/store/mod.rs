//! sled: the durable source of truth.
//!
//! Everything needed to rebuild the indexes lives here: collection settings, documents (metadata
//! and text), chunks (text and offsets), chunk vectors, and a per-collection operation log. The
//! tantivy and HNSW indexes are derived data: each records the last operation sequence it has
//! applied, and on start-up the log after that point is replayed into it. A write is acknowledged
//! only after its sled transaction is flushed.
//!
//! Layout (one sled `Db`):
//! - tree `collections`: name -> [`CollectionRecord`] (JSON)
//! - per collection `c{id}/docs`: doc id -> [`DocRecord`] (JSON, without text)
//! - `c{id}/texts`: doc id -> document text (UTF-8)
//! - `c{id}/chunks`: chunk id (u64 BE) -> [`ChunkRecord`] (JSON)
//! - `c{id}/vectors`: chunk id (u64 BE) -> f32 little-endian
//! - `c{id}/oplog`: sequence (u64 BE) -> [`Op`] (JSON); trimmed once every index has it
//! - `c{id}/schema`: metadata key -> its [`ValueType`] (JSON), written with the first document
//!   that uses the key, in the same transaction
//! - `aliases`: alias -> the collection it points to (`aliases.rs`)

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::meta::{Metadata, Schema, ValueType};

/// Chunk ids are `document-version key << CHUNK_BITS | ordinal`. The key is a fresh id
/// ([`Store::next_id`]) for every stored version of a document, so chunk ids are never reused
/// (HNSW tombstones can never hide a live chunk), and a chunk's document is known from its id
/// alone, which lets search collapse candidates per document without a lookup.
pub const CHUNK_BITS: u32 = 20;
/// Most chunks one document may have.
pub const MAX_CHUNKS_PER_DOCUMENT: u64 = 1 << CHUNK_BITS;

/// The id of chunk `ordinal` of the document version `key`.
pub fn chunk_id(key: u64, ordinal: u32) -> u64 {
    key << CHUNK_BITS | u64::from(ordinal)
}

/// The document-version key of a chunk id.
pub fn doc_key(chunk_id: u64) -> u64 {
    chunk_id >> CHUNK_BITS
}

/// The position of a chunk in its document (0: the first chunk).
pub fn ordinal(chunk_id: u64) -> u64 {
    chunk_id & (MAX_CHUNKS_PER_DOCUMENT - 1)
}

/// Settings and identity of a collection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CollectionRecord {
    pub name: String,
    /// Internal numeric id: names tree prefixes and index directories, so a collection deleted
    /// and re-created under the same name never sees the old one's files.
    pub id: u64,
    pub model: String,
    pub dimension: usize,
    pub chunk_tokens: usize,
    pub chunk_overlap: usize,
    pub created_unix_ms: u64,
}

/// A stored document, without its text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DocRecord {
    pub id: String,
    pub title: String,
    pub metadata: Metadata,
    pub markdown: bool,
    /// SHA-256 over title, text, metadata and format: equal hashes mean nothing to re-index.
    pub content_hash: String,
    pub chunk_ids: Vec<u64>,
    /// The server-side source (an ingestion job's canonical path) the document came from, so
    /// a `sync` job can delete what its source no longer holds. None for client writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Writes to another tree of the same database that join a commit's transaction: an ingestion
/// job's progress is recorded atomically with the batch it describes, so a crash can never
/// leave a batch written but not counted (or counted but not written).
#[derive(Debug, Clone)]
pub struct SideWrites {
    pub tree: sled::Tree,
    /// Key -> value to insert, or None to remove.
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl SideWrites {
    /// Applies the writes on their own, atomically (not yet flushed).
    pub fn apply(&self) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (k, v) in &self.writes {
            match v {
                Some(v) => batch.insert(k.as_slice(), v.as_slice()),
                None => batch.remove(k.as_slice()),
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}

/// A stored chunk. Its vector is in the `vectors` tree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChunkRecord {
    pub doc_id: String,
    pub ordinal: u32,
    pub start: usize,
    pub end: usize,
    pub text: String,
}

/// One logged change: chunks that appeared and chunks that disappeared.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Op {
    pub add: Vec<u64>,
    pub remove: Vec<u64>,
}

/// A document ready to be written: record, text, and its chunks with vectors.
#[derive(Debug, Clone)]
pub struct NewDocument {
    pub record: DocRecord,
    pub text: String,
    pub chunks: Vec<(u64, ChunkRecord, Vec<f32>)>,
}

/// The sled database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    collections: sled::Tree,
    /// Set when a write or flush failed in the storage itself (a full disk, an I/O error):
    /// sled 0.34 then keeps failing until it is reopened (the server does so in place once the
    /// disk has room: `grpc::live`), so health reports NOT_SERVING meanwhile.
    /// Cleared by a later successful flush.
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Added to sled's id generator (tree `meta`, key `id-floor`): raised when a snapshot
    /// brings in ids another database generated, so new ids never collide with them.
    id_floor: std::sync::Arc<std::sync::atomic::AtomicU64>,
    meta: sled::Tree,
}

const ID_FLOOR: &[u8] = b"id-floor";

/// Handles on one collection's trees.
#[derive(Clone)]
pub struct CollectionTrees {
    pub docs: sled::Tree,
    pub texts: sled::Tree,
    pub chunks: sled::Tree,
    pub vectors: sled::Tree,
    pub oplog: sled::Tree,
    pub schema: sled::Tree,
}

fn be(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

pub fn vector_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn vector_from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::internal(format!("corrupt {what}: {e}")))
}

/// Default of sled's page cache, in bytes. sled's own default (1 GiB) dominated the memory of
/// a large collection (`benches/scale.rs`); the operating system's page cache holds what the
/// smaller one drops, and the hot path (hits' chunk and document records) stays well inside it.
pub const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        Store::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// [`Store::open`] with sled's page cache bounded to `cache_bytes`.
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Store> {
        // sled releases its file lock from its flusher thread, up to one flush interval after
        // the last handle is dropped: a reopen in the same process (a restarted in-process
        // server, a test) may find the lock still held for a moment. Another process holding it
        // keeps failing, after the wait.
        let mut waited = std::time::Duration::ZERO;
        let db = loop {
            match sled::Config::new()
                .path(path)
                .cache_capacity(cache_bytes)
                .flush_every_ms(Some(500))
                .open()
            {
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && waited < std::time::Duration::from_secs(3) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    waited += std::time::Duration::from_millis(50);
                }
                other => break other?,
            }
        };
        let collections = db.open_tree("collections")?;
        let meta = db.open_tree("meta")?;
        let floor = match meta.get(ID_FLOOR)? {
            Some(v) => u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| Error::internal("corrupt id floor"))?,
            ),
            None => 0,
        };
        Ok(Store {
            db,
            collections,
            failed: Default::default(),
            id_floor: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(floor)),
            meta,
        })
    }

    /// A tree outside any collection (ingestion jobs keep theirs here). Names starting with
    /// `c` and a digit are collections' and refused.
    pub fn named_tree(&self, name: &str) -> Result<sled::Tree> {
        if name.starts_with('c') && name[1..].starts_with(|c: char| c.is_ascii_digit()) {
            return Err(Error::internal(format!("tree name {name} is reserved")));
        }
        Ok(self.db.open_tree(name)?)
    }

    /// A fresh, never reused id (sequences, chunk ids, collection ids).
    pub fn next_id(&self) -> Result<u64> {
        // +1: 0 means "nothing applied yet" in the indexes.
        let generated = self.db.generate_id()? + 1;
        Ok(generated + self.id_floor.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Makes every id handed out from now on greater than `max` (a restored snapshot's
    /// sequences and chunk keys came from another database's generator). Durable on return.
    pub fn raise_ids_above(&self, max: u64) -> Result<()> {
        let next = self.next_id()?;
        if next > max {
            return Ok(());
        }
        let floor = self.id_floor.load(std::sync::atomic::Ordering::Acquire) + (max - next) + 1;
        self.meta.insert(ID_FLOOR, &floor.to_be_bytes())?;
        self.flush_blocking()?;
        self.id_floor
            .store(floor, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }

    pub fn flush_blocking(&self) -> Result<()> {
        match self.db.flush() {
            Ok(_) => {
                self.failed
                    .store(false, std::sync::atomic::Ordering::Release);
                Ok(())
            }
            Err(e) => {
                self.mark_failed();
                Err(e.into())
            }
        }
    }

    /// Records that the storage failed (see `failed`).
    pub fn mark_failed(&self) {
        self.failed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// False once a write or flush failed in the storage and none has succeeded since.
    pub fn healthy(&self) -> bool {
        !self.failed.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn list_collections(&self) -> Result<Vec<CollectionRecord>> {
        self.collections
            .iter()
            .values()
            .map(|v| decode(&v?, "collection record"))
            .collect()
    }

    /// Inserts a collection record unless the name is taken.
    pub fn create_collection(&self, record: &CollectionRecord) -> Result<()> {
        let value = serde_json::to_vec(record)?;
        match self.collections.compare_and_swap(
            record.name.as_bytes(),
            None as Option<&[u8]>,
            Some(value),
        )? {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::CollectionExists(record.name.clone())),
        }
    }

    /// Removes the record, then the trees. Index files are the caller's to delete.
    pub fn delete_collection(&self, record: &CollectionRecord) -> Result<()> {
        self.collections.remove(record.name.as_bytes())?;
        self.db.flush()?;
        for tree in Self::tree_names(record.id) {
            self.db.drop_tree(tree)?;
        }
        Ok(())
    }

    fn tree_names(id: u64) -> [String; 6] {
        ["docs", "texts", "chunks", "vectors", "oplog", "schema"].map(|t| format!("c{id}/{t}"))
    }

    /// Drops trees of collections that no longer exist (left by an interrupted delete).
    pub fn drop_orphan_trees(&self) -> Result<()> {
        let live: Vec<u64> = self.list_collections()?.iter().map(|c| c.id).collect();
        for name in self.db.tree_names() {
            let name = String::from_utf8_lossy(&name).to_string();
            if let Some(rest) = name.strip_prefix('c') {
                if let Some((id, _)) = rest.split_once('/') {
                    if let Ok(id) = id.parse::<u64>() {
                        if !live.contains(&id) {
                            self.db.drop_tree(name.as_bytes())?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub fn trees(&self, record: &CollectionRecord) -> Result<CollectionTrees> {
        let [docs, texts, chunks, vectors, oplog, schema] = Self::tree_names(record.id);
        Ok(CollectionTrees {
            schema: self.db.open_tree(schema)?,
            docs: self.db.open_tree(docs)?,
            texts: self.db.open_tree(texts)?,
            chunks: self.db.open_tree(chunks)?,
            vectors: self.db.open_tree(vectors)?,
            oplog: self.db.open_tree(oplog)?,
        })
    }
}

impl CollectionTrees {
    pub fn get_doc(&self, id: &str) -> Result<Option<DocRecord>> {
        self.docs
            .get(id.as_bytes())?
            .map(|v| decode(&v, "document record"))
            .transpose()
    }

    pub fn get_text(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .texts
            .get(id.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).to_string()))
    }

    pub fn get_chunk(&self, id: u64) -> Result<Option<ChunkRecord>> {
        self.chunks
            .get(be(id))?
            .map(|v| decode(&v, "chunk record"))
            .transpose()
    }

    pub fn get_vector(&self, id: u64) -> Result<Option<Vec<f32>>> {
        Ok(self.vectors.get(be(id))?.map(|v| vector_from_bytes(&v)))
    }

    pub fn doc_count(&self) -> usize {
        self.docs.len()
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// All live chunk ids with their vectors (for rebuilding the dense index).
    pub fn all_vectors(&self) -> impl Iterator<Item = Result<(u64, Vec<f32>)>> + '_ {
        self.vectors.iter().map(|kv| {
            let (k, v) = kv?;
            let id = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| Error::internal("corrupt vector key"))?,
            );
            Ok((id, vector_from_bytes(&v)))
        })
    }

    /// Logged operations with sequence greater than `after`.
    pub fn ops_after(&self, after: u64) -> impl Iterator<Item = Result<(u64, Op)>> + '_ {
        self.oplog.range(be(after.saturating_add(1))..).map(|kv| {
            let (k, v) = kv?;
            let seq = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| Error::internal("corrupt oplog key"))?,
            );
            Ok((seq, decode(&v, "oplog entry")?))
        })
    }

    /// Last logged sequence (0 when the log is empty).
    pub fn last_seq(&self) -> Result<u64> {
        Ok(match self.oplog.last()? {
            Some((k, _)) => u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| Error::internal("corrupt oplog key"))?,
            ),
            None => 0,
        })
    }

    /// Drops log entries up to and including `upto` (every index has applied them).
    pub fn trim_oplog(&self, upto: u64) -> Result<()> {
        for key in self.oplog.range(..=be(upto)).keys() {
            self.oplog.remove(key?)?;
        }
        Ok(())
    }

    /// The number of documents and chunks. Counting a tree walks all of it (sled's `len`),
    /// which took seconds at 10^6 chunks on every start, so the counts are kept in the schema
    /// tree under [`COUNTS`] and updated in each commit's transaction. A collection written
    /// before that (or restored from an older snapshot) is counted once here and recorded.
    pub fn counts(&self) -> Result<(u64, u64)> {
        if let Some(v) = self.schema.get(COUNTS)? {
            if let Some(counts) = decode_counts(&v) {
                return Ok(counts);
            }
        }
        let counts = (self.doc_count() as u64, self.chunk_count() as u64);
        self.schema.insert(COUNTS, encode_counts(counts).to_vec())?;
        Ok(counts)
    }

    /// Drops the recorded counts, so the next [`CollectionTrees::counts`] counts the trees
    /// (after a restore wrote them from an archive, whose counts are not trusted).
    pub fn forget_counts(&self) -> Result<()> {
        self.schema.remove(COUNTS)?;
        Ok(())
    }

    /// The collection's metadata key types. A collection written before types existed has no
    /// schema tree yet: its keys (all strings then) are recorded on first load.
    pub fn load_schema(&self) -> Result<Schema> {
        const SCANNED: &[u8] = b"\0scanned";
        if self.schema.get(SCANNED)?.is_none() {
            let mut found = Schema::new();
            for v in self.docs.iter().values() {
                let d: DocRecord = decode(&v?, "document record")?;
                for (k, v) in &d.metadata {
                    found.entry(k.clone()).or_insert(v.value_type());
                }
            }
            for (k, t) in &found {
                self.schema.insert(k.as_bytes(), serde_json::to_vec(t)?)?;
            }
            self.schema.insert(SCANNED, b"true".to_vec())?;
        }
        let mut schema = Schema::new();
        for kv in self.schema.iter() {
            let (k, v) = kv?;
            if k.as_ref() == SCANNED || k.as_ref() == COUNTS {
                continue;
            }
            schema.insert(
                String::from_utf8_lossy(&k).into_owned(),
                decode::<ValueType>(&v, "schema entry")?,
            );
        }
        Ok(schema)
    }

    /// Records key types declared up front (at creation).
    pub fn declare(&self, keys: &Schema) -> Result<()> {
        for (k, t) in keys {
            self.schema.insert(k.as_bytes(), serde_json::to_vec(t)?)?;
        }
        Ok(())
    }
}

mod aliases;
mod commit;
mod records;
pub use aliases::{check_expected, Expect};
use commit::{decode_counts, encode_counts, COUNTS};
pub use records::OwnedRecord;

#[cfg(test)]
mod tests;
