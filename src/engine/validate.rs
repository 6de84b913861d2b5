//! Checking documents before any work is done on them: the limits (id, size, metadata entries,
//! keys and values), metadata types against the collection's, and a batch's shape. Streaming
//! ingest and ingestion jobs call the per-document checks so a bad document fails alone.

use std::collections::HashSet;

use super::ingest::CHUNK_JOINER;
use super::{Collection, DocumentInput, Engine};
use crate::error::{quote, Error, Result};
use crate::meta::{self, Schema, Value};
use crate::model::external::{parse_external, MAX_EXTERNAL_DIMENSION};
use crate::store::MAX_CHUNKS_PER_DOCUMENT;

/// Bytes free for unprivileged writers on the file system holding `path`.
#[cfg(unix)]
pub fn free_disk_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `statvfs` writes only into the struct we hand it, and `c` is a valid C string
    // for the duration of the call.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}

#[cfg(not(unix))]
pub fn free_disk_bytes(_: &std::path::Path) -> std::io::Result<u64> {
    Ok(u64::MAX)
}

/// Checks a pre-chunked document (`DocumentInput::chunks`) on its own; returns the size of
/// the text it will store.
fn check_chunks(doc: &DocumentInput) -> Result<usize> {
    let id = quote(&doc.id);
    if !doc.text.is_empty() {
        return Err(Error::invalid(format!(
            "document {id} has both text and chunks: send one (a pre-chunked document's text is its chunks joined)"
        )));
    }
    if doc.chunks.len() as u64 >= MAX_CHUNKS_PER_DOCUMENT {
        return Err(Error::invalid(format!(
            "document {id} has {} chunks, over the limit of {MAX_CHUNKS_PER_DOCUMENT}",
            doc.chunks.len()
        )));
    }
    for (i, c) in doc.chunks.iter().enumerate() {
        if c.text.trim().is_empty() {
            return Err(Error::invalid(format!(
                "document {id}: chunk {i} has empty text"
            )));
        }
        if c.vector.is_empty() || c.vector.len() > MAX_EXTERNAL_DIMENSION {
            return Err(Error::invalid(format!(
                "document {id}: chunk {i} has a vector of {} components (1..={MAX_EXTERNAL_DIMENSION} allowed)",
                c.vector.len()
            )));
        }
        if let Some(j) = c.vector.iter().position(|x| !x.is_finite()) {
            return Err(Error::invalid(format!(
                "document {id}: chunk {i} vector[{j}] is {}: every component must be finite",
                c.vector[j]
            )));
        }
        if c.vector.iter().all(|x| *x == 0.0) {
            return Err(Error::invalid(format!(
                "document {id}: chunk {i} has an all-zero vector (it has no direction to search by)"
            )));
        }
    }
    Ok(doc.chunks.iter().map(|c| c.text.len()).sum::<usize>()
        + CHUNK_JOINER.len() * (doc.chunks.len() - 1))
}

impl Collection {
    /// Whether this collection's vectors come from its callers (`model::external`).
    pub fn external_dimension(&self) -> Option<usize> {
        parse_external(&self.record.model).ok().flatten()
    }

    /// A document's shape against the collection: text for one with a model, chunks with
    /// vectors of the collection's dimension for one with external vectors.
    pub(super) fn check_shape(&self, doc: &DocumentInput) -> Result<()> {
        let name = quote(&self.record.name);
        match self.external_dimension() {
            Some(_) if doc.chunks.is_empty() => Err(Error::invalid(format!(
                "document {}: collection {name} uses external vectors: send the document as chunks, each with its vector",
                quote(&doc.id)
            ))),
            Some(d) => match doc.chunks.iter().position(|c| c.vector.len() != d) {
                Some(i) => Err(Error::invalid(format!(
                    "document {}: chunk {i} has a {}-d vector, collection {name} uses {d}",
                    quote(&doc.id),
                    doc.chunks[i].vector.len()
                ))),
                None => Ok(()),
            },
            None if !doc.chunks.is_empty() => Err(Error::invalid(format!(
                "document {}: collection {name} embeds with its model {}: send text, not chunks with vectors",
                quote(&doc.id),
                quote(&self.record.model)
            ))),
            None => Ok(()),
        }
    }
}

impl Engine {
    /// RESOURCE_EXHAUSTED while the data directory's disk has less free space than
    /// `limits.min_free_disk_bytes`: a write is refused before it can fill the disk (sled,
    /// once it meets a full disk, fails until it is reopened). Deletes are not checked: they
    /// are how space is freed.
    pub fn check_free_disk(&self) -> Result<()> {
        let min = self.config.limits.min_free_disk_bytes;
        if min == 0 {
            return Ok(());
        }
        let free = free_disk_bytes(&self.config.data_dir)?;
        if free < min {
            return Err(Error::Exhausted(format!(
                "the disk holding the data directory has {free} bytes free, under min_free_disk_bytes = {min}: writes are refused until space is freed (nothing was written; searches go on)"
            )));
        }
        Ok(())
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
        let text_bytes = if doc.chunks.is_empty() {
            if doc.text.trim().is_empty() {
                return Err(Error::invalid(format!(
                    "document {} has empty text",
                    quote(&doc.id)
                )));
            }
            doc.text.len()
        } else {
            check_chunks(doc)?
        };
        let size = text_bytes
            + doc.title.len()
            + doc
                .metadata
                .iter()
                .map(|(k, v)| k.len() + v.size())
                .sum::<usize>();
        if size > limits.max_document_bytes {
            return Err(Error::invalid(format!(
                "document {} is {size} bytes (text, title and metadata), over the limit max_document_bytes = {}",
                quote(&doc.id),
                limits.max_document_bytes
            )));
        }
        if doc.metadata.len() > limits.max_metadata_entries {
            return Err(Error::invalid(format!(
                "document {} has {} metadata entries, over the limit max_metadata_entries = {}",
                quote(&doc.id),
                doc.metadata.len(),
                limits.max_metadata_entries
            )));
        }
        for (k, v) in &doc.metadata {
            self.check_metadata_key(k)
                .map_err(|e| Error::invalid(format!("document {}: {e}", quote(&doc.id))))?;
            let longest = match v {
                Value::Str(s) => s.len(),
                Value::List(l) => l.iter().map(String::len).max().unwrap_or(0),
                _ => 0,
            };
            if longest > limits.max_metadata_value_bytes {
                return Err(Error::invalid(format!(
                    "document {}: metadata {} has a value of {longest} bytes, over the limit max_metadata_value_bytes = {}",
                    quote(&doc.id),
                    quote(k),
                    limits.max_metadata_value_bytes
                )));
            }
        }
        meta::check_values(&doc.id, &doc.metadata, limits.max_metadata_list_items)
    }

    /// A metadata key (in a document or a declared schema): not empty, no U+001F, bounded.
    pub fn check_metadata_key(&self, key: &str) -> Result<()> {
        if key.is_empty() || key.contains('\u{1f}') {
            return Err(Error::invalid(
                "a metadata key must not be empty or contain U+001F",
            ));
        }
        let max = self.config.limits.max_metadata_key_bytes;
        if key.len() > max {
            return Err(Error::invalid(format!(
                "metadata key {} is {} bytes, over the limit max_metadata_key_bytes = {max}",
                quote(key),
                key.len()
            )));
        }
        Ok(())
    }

    /// Checks a document against its collection: its shape (text for a collection with a
    /// model, chunks with vectors of the right dimension for one with external vectors), and
    /// its metadata types against the collection's and against `pending` (types fixed by
    /// documents not yet written), recording new keys in `pending`. Streaming ingest and jobs
    /// use it to reject one document rather than fail its batch.
    pub fn check_metadata_types(
        &self,
        collection: &str,
        doc: &DocumentInput,
        pending: &mut Schema,
    ) -> Result<()> {
        let c = self.collection(collection)?;
        c.check_shape(doc)?;
        let schema = c
            .schema
            .read()
            .map_err(|_| Error::internal("schema lock poisoned"))?;
        let mut metadata = doc.metadata.clone();
        meta::coerce_to_schema(&doc.id, &mut metadata, &schema)?;
        let mut mine = pending.clone();
        meta::check_types(&doc.id, &metadata, &schema, &mut mine)?;
        c.check_key_count(
            schema.len() + mine.len(),
            self.config.limits.max_metadata_keys,
        )?;
        *pending = mine;
        Ok(())
    }

    pub(super) fn validate_batch(&self, docs: &[DocumentInput]) -> Result<()> {
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
                    "document id {} appears twice in the batch",
                    quote(&doc.id)
                )));
            }
        }
        Ok(())
    }
}

/// A collection or alias name: 1-64 characters of `[A-Za-z0-9_-]` (`COLLECTION_NAME_PATTERN`).
pub fn valid_collection_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Error::invalid(format!(
            "invalid collection name {}: use 1-64 characters of [A-Za-z0-9_-]",
            quote(name)
        )));
    }
    Ok(())
}
