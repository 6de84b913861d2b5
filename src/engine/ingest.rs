//! The write path: validate -> skip documents whose content hash is unchanged -> chunk -> embed
//! -> commit durably -> apply to the indexes. Deletes share the last two steps.
//!
//! [`Collection::commit`] is the one place a write becomes acknowledged: it hands the chunked,
//! embedded documents to the backend (`backend::CollectionStore::commit`), which returns once
//! the write is durable (the embedded backend: "commit to sled, flush, then apply to the
//! indexes", `embedded.rs`; Qdrant: versioned writes, `qdrant::write`).

use std::collections::HashSet;

use sha2::{Digest, Sha256};

use super::{Cancel, Collection, Engine, Resolved};
use crate::chunk::{self, titled};
use crate::error::{quote, Error, Result};
use crate::meta::{self, Metadata, Schema, Value};
use crate::model::{self, fetch};
use crate::store::{
    chunk_id, ChunkRecord, DocRecord, NewDocument, Op, SideWrites, Store, MAX_CHUNKS_PER_DOCUMENT,
};

/// Writes a journal on its own (the batch it describes changed nothing), atomically, durably.
fn write_side(store: &Store, side: &SideWrites) -> Result<()> {
    side.apply()?;
    store.flush_blocking()
}

/// Chunk texts embedded between two checks for cancellation: small enough that a cancelled
/// upsert frees the embedding sessions within a fraction of a second, large enough to keep
/// every session of the pool busy.
const EMBED_SLICE: usize = 32;

/// A document to upsert.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocumentInput {
    pub id: String,
    pub text: String,
    pub title: String,
    pub metadata: Metadata,
    pub markdown: bool,
    /// Where a server-side ingestion job read the document (its canonical source path); part
    /// of the content hash when set, so a document that moves to another source is rewritten
    /// and a `sync` of the old source no longer claims it.
    pub source: Option<String>,
    /// Pre-chunked content with the caller's vectors, for collections with external vectors
    /// (`model::external`). Empty: the engine chunks `text` and embeds with the model. When
    /// set, `text` is empty and the stored text is the chunks joined by a blank line.
    pub chunks: Vec<ChunkInput>,
}

/// One caller-made chunk: its text and its vector (checked and normalized on the way in).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChunkInput {
    pub text: String,
    pub vector: Vec<f32>,
}

/// What joins pre-chunked texts into a document's stored text.
pub const CHUNK_JOINER: &str = "\n\n";

/// What an ingestion job records with a batch of upserts: built from the batch's outcomes
/// just before the commit, and written in the commit's own transaction (or, when nothing in
/// the batch changed, in one atomic batch of its own), so progress and data never disagree.
pub type UpsertJournal = Box<dyn FnOnce(&[UpsertOutcome]) -> Result<SideWrites> + Send>;

/// The same for a delete: built from how many documents it removes.
pub type DeleteJournal = Box<dyn FnOnce(usize) -> Result<SideWrites> + Send>;

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
        match v {
            // As before typed metadata, so string-only documents keep their hashes.
            Value::Str(s) => field(s.as_bytes()),
            other => field(serde_json::to_string(other).unwrap_or_default().as_bytes()),
        }
    }
    // Only when present, so documents embedded by the model keep their hashes. The chunk
    // boundaries and the vectors' exact bits are content: new vectors mean an update.
    if !doc.chunks.is_empty() {
        field(b"\0chunks");
        for c in &doc.chunks {
            field(c.text.as_bytes());
            let bits: Vec<u8> = c
                .vector
                .iter()
                .flat_map(|x| x.to_bits().to_le_bytes())
                .collect();
            field(&bits);
        }
    }
    // Only when set, so documents written without a source keep their hashes.
    if let Some(source) = &doc.source {
        field(b"\0source");
        field(source.as_bytes());
    }
    fetch::hex(&h.finalize())
}

impl Engine {
    /// Upserts a batch atomically. Returns one outcome per input document, in order.
    pub async fn upsert(
        &self,
        collection: &str,
        docs: Vec<DocumentInput>,
    ) -> Result<Vec<UpsertOutcome>> {
        self.upsert_journaled(collection, docs, None).await
    }

    /// [`Engine::upsert`], recording `journal`'s writes atomically with the batch.
    pub async fn upsert_journaled(
        &self,
        collection: &str,
        docs: Vec<DocumentInput>,
        journal: Option<UpsertJournal>,
    ) -> Result<Vec<UpsertOutcome>> {
        let to = self.resolve(collection)?;
        self.upsert_resolved(&to, docs, journal).await
    }

    /// [`Engine::upsert_journaled`] to a collection the call resolved before (a stream's
    /// batches), fenced as [`Engine::write_via`] says.
    pub async fn upsert_resolved(
        &self,
        to: &Resolved,
        docs: Vec<DocumentInput>,
        journal: Option<UpsertJournal>,
    ) -> Result<Vec<UpsertOutcome>> {
        self.validate_batch(&docs)?;
        self.check_free_disk()?;
        // If this future is dropped (the caller went away), `_stop` raises the flag and the
        // work stops before it commits; once committing, it runs to completion, still holding
        // the write lock it was given.
        let cancel = Cancel::new();
        let _stop = cancel.on_drop();
        let max_keys = self.config.limits.max_metadata_keys;
        let store = self.store.clone();
        self.write_via(to, move |c| {
            c.upsert_blocking(&store, docs, &cancel, max_keys, journal)
        })
        .await
    }

    /// Reads documents by id; returns them and the ids that do not exist.
    pub fn get_documents(
        &self,
        collection: &str,
        ids: &[String],
        include_chunks: bool,
    ) -> Result<(Vec<StoredDocument>, Vec<String>)> {
        let c = self.collection(collection)?;
        let max = self.config.limits.max_batch_documents;
        if ids.len() > max {
            return Err(Error::invalid(format!(
                "{} ids, over the limit max_batch_documents = {max}",
                ids.len()
            )));
        }
        let mut found = Vec::new();
        let mut missing = Vec::new();
        let mut seen = HashSet::new();
        // Each id once: repeating an id must not multiply the reply.
        let unique: Vec<String> = ids
            .iter()
            .filter(|id| seen.insert(id.as_str()))
            .cloned()
            .collect();
        let store = c.store();
        for (id, rec) in unique.iter().zip(store.docs(&unique)?) {
            let (Some(rec), Some(text)) = (rec, store.text(id)?) else {
                missing.push(id.clone());
                continue;
            };
            let chunks = if include_chunks {
                let got = store.chunks(&rec.chunk_ids)?;
                rec.chunk_ids
                    .iter()
                    .zip(got)
                    .filter_map(|(cid, r)| r.map(|r| (*cid, r)))
                    .collect()
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
                    source: rec.source,
                    chunks: Vec::new(),
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
        let to = self.resolve(collection)?;
        if ids.len() > self.config.limits.max_batch_documents {
            return Err(Error::invalid(format!(
                "{} ids, over the limit max_batch_documents = {}",
                ids.len(),
                self.config.limits.max_batch_documents
            )));
        }
        let store = self.store.clone();
        self.write_via(&to, move |c| c.delete_blocking(&store, ids, None))
            .await
    }

    /// Deletes documents by id, recording `journal`'s writes atomically with the delete (also
    /// when none of them exists any more). Returns how many existed.
    pub async fn delete_journaled(
        &self,
        collection: &str,
        ids: Vec<String>,
        journal: DeleteJournal,
    ) -> Result<usize> {
        let to = self.resolve(collection)?;
        let store = self.store.clone();
        let (deleted, _) = self
            .write_via(&to, move |c| c.delete_blocking(&store, ids, Some(journal)))
            .await?;
        Ok(deleted)
    }
}

/// The spans of pre-chunked texts joined by [`CHUNK_JOINER`].
fn given_spans(chunks: &[ChunkInput]) -> Vec<chunk::Span> {
    let mut start = 0;
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let span = chunk::Span {
                ordinal: i as u32,
                start,
                end: start + c.text.len(),
            };
            start = span.end + CHUNK_JOINER.len();
            span
        })
        .collect()
}

impl Collection {
    /// Commits one operation through the backend, durably (from here on it is acknowledged
    /// and survives any crash), recording the metadata keys it introduces (the caller checked
    /// their types under the write lock). `documents` is the change in the number of documents.
    pub(super) fn commit(
        &self,
        upserts: &[NewDocument],
        deletes: &[String],
        documents: i64,
        side: Option<&SideWrites>,
    ) -> Result<Op> {
        let mut new_keys = Schema::new();
        {
            let schema = self
                .schema
                .read()
                .map_err(|_| Error::internal("schema lock poisoned"))?;
            for d in upserts {
                for (k, v) in &d.record.metadata {
                    if !schema.contains_key(k) {
                        new_keys.entry(k.clone()).or_insert(v.value_type());
                    }
                }
            }
        }
        let op = self
            .store()
            .commit(upserts, deletes, documents, &new_keys, side)?;
        if !new_keys.is_empty() {
            if let Ok(mut schema) = self.schema.write() {
                schema.extend(new_keys);
            }
        }
        Ok(op)
    }

    fn delete_blocking(
        &self,
        store: &Store,
        ids: Vec<String>,
        journal: Option<DeleteJournal>,
    ) -> Result<(usize, Vec<String>)> {
        let mut present = Vec::new();
        let mut missing = Vec::new();
        let mut seen = HashSet::new();
        let unique: Vec<String> = ids
            .into_iter()
            .filter(|id| seen.insert(id.clone()))
            .collect();
        let found = self.store().docs(&unique)?;
        for (id, doc) in unique.into_iter().zip(found) {
            match doc {
                Some(_) => present.push(id),
                None => missing.push(id),
            }
        }
        let side = journal.map(|j| j(present.len())).transpose()?;
        if present.is_empty() {
            if let Some(side) = &side {
                write_side(store, side)?;
            }
            return Ok((0, missing));
        }
        Ok((self.delete_present(present, side.as_ref())?, missing))
    }

    /// Deletes documents known to exist (the caller holds the write lock) as one operation.
    pub(super) fn delete_present(
        &self,
        ids: Vec<String>,
        side: Option<&SideWrites>,
    ) -> Result<usize> {
        if !ids.is_empty() {
            self.commit(&[], &ids, -(ids.len() as i64), side)?;
            crate::metrics::global()
                .ingest_documents
                .add(&[&self.record.name, "deleted"], ids.len() as f64);
        }
        Ok(ids.len())
    }

    pub(super) fn upsert_blocking(
        &self,
        store: &Store,
        docs: Vec<DocumentInput>,
        cancel: &Cancel,
        max_keys: usize,
        journal: Option<UpsertJournal>,
    ) -> Result<Vec<UpsertOutcome>> {
        let mut docs = docs;
        for d in &docs {
            self.check_shape(d)?;
        }
        {
            let keys: HashSet<&str> = docs
                .iter()
                .flat_map(|d| d.metadata.keys().map(String::as_str))
                .collect();
            self.learn_keys(&keys.into_iter().collect::<Vec<_>>())?;
        }
        {
            let schema = self
                .schema
                .read()
                .map_err(|_| Error::internal("schema lock poisoned"))?;
            for d in &mut docs {
                meta::coerce_to_schema(&d.id, &mut d.metadata, &schema)?;
            }
        }
        let (mut outcomes, changed) = self.classify(docs)?;
        if changed.is_empty() {
            if let Some(journal) = journal {
                write_side(store, &journal(&outcomes)?)?;
            }
            self.record_outcomes(&outcomes, 0);
            return Ok(outcomes);
        }
        // Metadata types, before any embedding work: the batch fails as a whole, naming the
        // first document whose value conflicts with its key's type.
        {
            let schema = self
                .schema
                .read()
                .map_err(|_| Error::internal("schema lock poisoned"))?;
            let mut pending = Schema::new();
            for (_, doc, _) in &changed {
                meta::check_types(&doc.id, &doc.metadata, &schema, &mut pending)?;
            }
            self.check_key_count(schema.len() + pending.len(), max_keys)?;
        }
        let created = outcomes
            .iter()
            .filter(|o| o.status == UpsertStatus::Created)
            .count() as i64;
        let new_docs = self.prepare(changed, &mut outcomes, cancel)?;
        // Past this point the write runs to completion, whatever the caller does.
        cancel.check()?;
        let side = journal.map(|j| j(&outcomes)).transpose()?;
        self.commit(&new_docs, &[], created, side.as_ref())?;
        let chunks: usize = new_docs.iter().map(|d| d.chunks.len()).sum();
        self.record_outcomes(&outcomes, chunks);
        Ok(outcomes)
    }

    pub(super) fn check_key_count(&self, keys: usize, max: usize) -> Result<()> {
        if keys > max {
            return Err(Error::invalid(format!(
                "collection {} would have {keys} distinct metadata keys, over the limit max_metadata_keys = {max}",
                quote(&self.record.name)
            )));
        }
        Ok(())
    }

    fn record_outcomes(&self, outcomes: &[UpsertOutcome], chunks: usize) {
        let m = crate::metrics::global();
        let name = self.record.name.as_str();
        for o in outcomes {
            let outcome = match o.status {
                UpsertStatus::Created => "created",
                UpsertStatus::Updated => "updated",
                UpsertStatus::Unchanged => "unchanged",
            };
            m.ingest_documents.inc(&[name, outcome]);
        }
        m.ingest_chunks.add(&[name], chunks as f64);
    }

    /// One outcome per document, and the documents whose content changed (with their position
    /// in the outcomes and their content hash).
    #[allow(clippy::type_complexity)]
    fn classify(
        &self,
        docs: Vec<DocumentInput>,
    ) -> Result<(Vec<UpsertOutcome>, Vec<(usize, DocumentInput, String)>)> {
        let mut outcomes = Vec::with_capacity(docs.len());
        let mut changed = Vec::new();
        let ids: Vec<String> = docs.iter().map(|d| d.id.clone()).collect();
        let stored = self.store().docs(&ids)?;
        for (doc, existing) in docs.into_iter().zip(stored) {
            let hash = content_hash(&doc);
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
        Ok((outcomes, changed))
    }

    /// Chunks the changed documents, embeds all their chunks in one pass over the pool, and
    /// assembles what to commit (recording each document's chunk count in `outcomes`).
    fn prepare(
        &self,
        changed: Vec<(usize, DocumentInput, String)>,
        outcomes: &mut [UpsertOutcome],
        cancel: &Cancel,
    ) -> Result<Vec<NewDocument>> {
        let settings = self.chunk_settings();
        let tokenizer = self.embedder.tokenizer();
        // Pre-chunked documents (external vectors) get their text here: the chunks joined.
        let mut changed = changed;
        for (_, doc, _) in &mut changed {
            if !doc.chunks.is_empty() {
                doc.text = doc
                    .chunks
                    .iter()
                    .map(|c| c.text.as_str())
                    .collect::<Vec<_>>()
                    .join(CHUNK_JOINER);
            }
        }
        let spans: Vec<Vec<chunk::Span>> = changed
            .iter()
            .map(|(_, doc, _)| {
                if doc.chunks.is_empty() {
                    chunk::chunk(&doc.text, doc.markdown, settings, tokenizer)
                } else {
                    Ok(given_spans(&doc.chunks))
                }
            })
            .collect::<Result<_>>()?;
        for ((_, doc, _), s) in changed.iter().zip(&spans) {
            if s.len() as u64 >= MAX_CHUNKS_PER_DOCUMENT {
                return Err(Error::invalid(format!(
                    "document {} splits into {} chunks, over the limit of {MAX_CHUNKS_PER_DOCUMENT}: raise chunk_tokens or split the document",
                    quote(&doc.id),
                    s.len()
                )));
            }
        }
        // What the model embeds: each chunk with as much of its title as fits beside it.
        let mut texts: Vec<String> = Vec::new();
        for ((_, doc, _), spans) in changed.iter().zip(&spans) {
            if !doc.chunks.is_empty() {
                continue;
            }
            let fit = chunk::TitleFit::new(&doc.title, tokenizer)?;
            for s in spans {
                let piece = &doc.text[s.start..s.end];
                texts.push(titled(
                    fit.for_chunk(piece, settings.max_tokens, tokenizer)?,
                    piece,
                ));
            }
        }
        let mut vectors = Vec::with_capacity(texts.len());
        for slice in texts.chunks(EMBED_SLICE) {
            cancel.check()?;
            vectors.extend(self.embedder.embed_documents(slice)?);
        }
        let mut vectors = vectors.into_iter();
        let mut new_docs = Vec::with_capacity(changed.len());
        // All chunks of one document version share a key (see `store::chunk_id`).
        let keys = self.store().version_keys(changed.len())?;
        for (((pos, mut doc, hash), spans), key) in changed.into_iter().zip(spans).zip(keys) {
            let mut chunks = Vec::with_capacity(spans.len());
            let mut given = std::mem::take(&mut doc.chunks).into_iter();
            for s in &spans {
                let vector = match given.next() {
                    Some(c) => {
                        let mut v = c.vector;
                        model::normalize(&mut v);
                        v
                    }
                    None => vectors
                        .next()
                        .ok_or_else(|| Error::internal("fewer vectors than chunks"))?,
                };
                let record = ChunkRecord {
                    doc_id: doc.id.clone(),
                    ordinal: s.ordinal,
                    start: s.start,
                    end: s.end,
                    text: doc.text[s.start..s.end].to_string(),
                };
                chunks.push((chunk_id(key, s.ordinal), record, vector));
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
                    source: doc.source,
                },
                text: doc.text,
                chunks,
            });
        }
        Ok(new_docs)
    }
}
