//! The backend seam: where one collection's documents, chunks, vectors and indexes live.
//!
//! Everything that decides what a request means stays above this trait and is shared by every
//! backend: validation, unchanged detection by content hash, chunking, embedding, the schema of
//! metadata key types, filter resolution, fusion, grouping, paging, explanations, and (above the
//! engine) the service layer, jobs, eval, answers, keys and admission. A backend only stores and
//! retrieves:
//! - [`super::embedded::Embedded`] (the default): sled is the truth, tantivy and Quarry's HNSW are
//!   derived from its operation log, all in the data directory of one machine.
//! - [`crate::qdrant::QdrantCollection`]: a Qdrant collection holds everything (documents,
//!   chunks, a dense and a BM25 sparse vector per chunk, typed payload), so several Quarry front
//!   ends can serve one Qdrant cluster and Qdrant owns durability, sharding and replication.
//!
//! The methods are blocking: the engine calls them from blocking tasks (as it always called
//! sled, tantivy and HNSW).

use std::collections::{HashMap, HashSet};

use crate::error::Result;
use crate::filter::Filter;
use crate::meta::Schema;
use crate::retrieve::hybrid::Ranked;
use crate::retrieve::DensePlan;
use crate::store::{ChunkRecord, DocRecord, NewDocument, Op, SideWrites};

/// Chunks (`None` where not current) and the records of their documents, by id.
pub type ChunksWithDocs = (Vec<Option<ChunkRecord>>, HashMap<String, DocRecord>);

/// One call of [`CollectionStore::scan`]: documents passing a filter, and where to go on.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub docs: Vec<DocRecord>,
    /// Where the next call starts (an opaque position: a document id on the embedded backend),
    /// when the walk did not reach the end.
    pub next: Option<String>,
}

/// One collection's storage and retrieval (see the module docs).
pub trait CollectionStore: Send + Sync {
    /// The documents with these ids (`None` where absent), in order.
    fn docs(&self, ids: &[String]) -> Result<Vec<Option<DocRecord>>>;

    /// A document's full text.
    fn text(&self, id: &str) -> Result<Option<String>>;

    /// The chunks with these ids that belong to their document's current version (`None` for
    /// the others: deleted, replaced, or left by a write that never completed), in order.
    fn chunks(&self, ids: &[u64]) -> Result<Vec<Option<ChunkRecord>>>;

    /// `n` fresh document-version keys (see `store::chunk_id`), never used before in this
    /// collection, also when several front ends write it.
    fn version_keys(&self, n: usize) -> Result<Vec<u64>>;

    /// Writes new document versions and deletes documents, durably: when this returns, the
    /// write is acknowledged and survives any crash; `side` (an ingestion job's journal) is
    /// durable with it or after it. No search ever sees half a document or two versions of
    /// one. `documents` is the change in the number of documents; `new_keys` the metadata keys
    /// these documents introduce, with their types. Returns the chunks added and removed.
    fn commit(
        &self,
        upserts: &[NewDocument],
        deletes: &[String],
        documents: i64,
        new_keys: &Schema,
        side: Option<&SideWrites>,
    ) -> Result<Op>;

    /// BM25 candidates: the best `depth` current chunks for `query` passing the (resolved)
    /// `filter`, best first. `title_boost` > 0 adds title matches with that weight.
    fn lexical(
        &self,
        query: &str,
        depth: usize,
        filter: &Filter,
        title_boost: f32,
    ) -> Result<Ranked>;

    /// Dense candidates: the best `depth` current chunks by cosine similarity to the unit
    /// vector `q`, passing `filter`. `exact_limit` bounds exact scoring of filtered searches
    /// where the backend plans it itself.
    fn dense(
        &self,
        q: &[f32],
        depth: usize,
        filter: &Filter,
        plan: DensePlan,
        exact_limit: usize,
    ) -> Result<Ranked>;

    /// Both candidate lists of a hybrid search (what [`lexical`](Self::lexical) and
    /// [`dense`](Self::dense) return) when this backend answers them together: Qdrant, as two
    /// concurrent queries with one visibility check. `None` (the default): the engine runs the
    /// two itself, side by side when it runs alone.
    fn hybrid(
        &self,
        _query: &str,
        _title_boost: f32,
        _q: &[f32],
        _depth: usize,
        _filter: &Filter,
        _plan: DensePlan,
    ) -> Option<Result<(Ranked, Ranked)>> {
        None
    }

    /// [`chunks`](Self::chunks), with the records of their documents (a search's hits need
    /// both): a remote backend reads them with the visibility check it makes anyway.
    fn chunks_with_docs(&self, ids: &[u64]) -> Result<ChunksWithDocs> {
        let chunks = self.chunks(ids)?;
        let wanted: Vec<String> = chunks
            .iter()
            .flatten()
            .map(|c| c.doc_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let docs = self.docs(&wanted)?;
        let docs = wanted
            .into_iter()
            .zip(docs)
            .filter_map(|(id, d)| Some((id, d?)))
            .collect();
        Ok((chunks, docs))
    }

    /// Documents passing the (resolved) `filter`, from `after` on, at most `limit`, in the
    /// backend's document order (id order on the embedded backend); a bounded amount of work
    /// per call, so a page may be short and still have a `next`.
    fn scan(&self, filter: &Filter, after: Option<&str>, limit: usize) -> Result<Scan>;

    /// Ids of the documents an ingestion job wrote from `source`.
    fn ids_from_source(&self, source: &str) -> Result<Vec<String>>;

    /// Documents and chunks.
    fn counts(&self) -> Result<(u64, u64)>;

    /// The metadata key types as stored by the backend, when other processes may extend them
    /// (a shared backend); `None` when this process is the only writer.
    fn shared_schema(&self) -> Result<Option<Schema>>;
}
