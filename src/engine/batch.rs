//! Documents gathered one at a time into engine writes: the one batching rule of every
//! ingestion path that receives documents one by one (a streaming upsert, a server-side job).
//!
//! Each document is checked as it arrives, as the write will check it (limits, shape, and its
//! metadata key types against the collection *and* the documents gathered since the last
//! write, whose new keys are not stored yet), so a bad document is rejected alone instead of
//! failing the batch it would have joined. A batch is written when it holds
//! [`BATCH_DOCUMENTS`] documents or [`BATCH_BYTES`] of text: large enough to amortize a
//! commit, small enough to acknowledge promptly; and never more documents than the server's
//! `max_batch_documents`, so a gathered batch is never one the write would refuse. A unary upsert is already one batch (the
//! caller's) and goes to [`Engine::upsert`](super::Engine::upsert) whole.

use super::{DocumentInput, Engine};
use crate::error::Result;
use crate::meta::Schema;

/// Documents per write.
pub const BATCH_DOCUMENTS: usize = 64;
/// Text bytes per write (titles and texts), beside the count.
pub const BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Documents per write on `engine`: [`BATCH_DOCUMENTS`], never more than its
/// `max_batch_documents` (a re-index pages its source by this too).
pub fn batch_documents(engine: &Engine) -> usize {
    BATCH_DOCUMENTS.min(engine.config().limits.max_batch_documents.max(1))
}

/// Documents waiting for one write, each with the caller's tag (a position in a reply, a
/// location in a source).
pub struct Batch<T> {
    docs: Vec<(T, DocumentInput)>,
    bytes: usize,
    /// Key types fixed by the gathered documents, not yet stored.
    new_keys: Schema,
}

impl<T> Default for Batch<T> {
    fn default() -> Self {
        Batch {
            docs: Vec::new(),
            bytes: 0,
            new_keys: Schema::new(),
        }
    }
}

impl<T> Batch<T> {
    /// Checks `doc` for `collection` as its write will: `Err` rejects this document alone.
    pub fn check(&mut self, engine: &Engine, collection: &str, doc: &DocumentInput) -> Result<()> {
        engine.validate_document(doc)?;
        engine.check_metadata_types(collection, doc, &mut self.new_keys)
    }

    /// The tag of the gathered document with this id. A batch holds each id once: the caller
    /// writes the batch first, so the later version wins, as it would sent one by one.
    pub fn holds(&self, id: &str) -> Option<&T> {
        self.docs.iter().find(|(_, d)| d.id == id).map(|(t, _)| t)
    }

    /// Adds a checked document.
    pub fn push(&mut self, tag: T, doc: DocumentInput) {
        self.bytes += doc.text.len() + doc.title.len();
        self.docs.push((tag, doc));
    }

    /// True when the batch should be written now (to `engine`, whose limits it keeps).
    pub fn is_full(&self, engine: &Engine) -> bool {
        self.docs.len() >= batch_documents(engine) || self.bytes >= BATCH_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// The gathered documents, leaving the batch empty (its pending key types with them:
    /// once written, they are the collection's).
    pub fn take(&mut self) -> Vec<(T, DocumentInput)> {
        self.bytes = 0;
        self.new_keys.clear();
        std::mem::take(&mut self.docs)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::EngineConfig;
    use crate::model::hashed::{HashEmbedder, HashModels};

    #[tokio::test]
    async fn a_gathered_batch_never_exceeds_the_servers_batch_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EngineConfig::new(dir.path(), "hash");
        config.limits.max_batch_documents = 5;
        let embedder = Arc::new(HashEmbedder::new(16).unwrap());
        let engine = Engine::open(config, Arc::new(HashModels(embedder))).unwrap();
        engine.create_collection("c", Default::default()).unwrap();
        let mut batch = Batch::default();
        for i in 0..5 {
            assert!(!batch.is_full(&engine), "full at {i}");
            let doc = DocumentInput {
                id: format!("d{i}"),
                text: "basalt".into(),
                ..Default::default()
            };
            batch.check(&engine, "c", &doc).unwrap();
            batch.push(i, doc);
        }
        assert!(batch.is_full(&engine));
        // The write takes what was gathered: the limit is the engine's own.
        let docs = batch.take().into_iter().map(|(_, d)| d).collect();
        assert_eq!(engine.upsert("c", docs).await.unwrap().len(), 5);
    }
}
