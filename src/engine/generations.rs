//! Two generations of one collection kept alike: what a re-index's catch-up passes and a
//! promotion's last step share. Both compare the generations by `(id, content hash)` (equal
//! contents hash equally under any settings), write to the copy what differs and delete from
//! it what the source no longer holds. Comparing states rather than replaying a log works on
//! every backend (Qdrant keeps no operation log) and is idempotent.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{batch_documents, Engine};
use crate::error::Result;

/// Document hashes read per listing call while comparing generations.
pub const HASH_PAGE: usize = 1000;

/// What a copy must change to hold what its source holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDiff {
    /// Documents missing from the copy or different there: written from the source.
    pub differ: Vec<String>,
    /// Documents the source no longer has: deleted from the copy.
    pub gone: Vec<String>,
}

impl GenerationDiff {
    pub fn len(&self) -> usize {
        self.differ.len() + self.gone.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Compares a source's and a copy's `id -> content hash` maps.
pub fn generation_diff(
    source: &BTreeMap<String, String>,
    copy: &BTreeMap<String, String>,
) -> GenerationDiff {
    GenerationDiff {
        differ: source
            .iter()
            .filter(|(id, hash)| copy.get(*id) != Some(*hash))
            .map(|(id, _)| id.clone())
            .collect(),
        gone: copy
            .keys()
            .filter(|id| !source.contains_key(*id))
            .cloned()
            .collect(),
    }
}

impl Engine {
    /// Every document of `collection` as id -> content hash. Blocking.
    pub fn all_document_hashes(&self, collection: &str) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let (page, more) = self.document_hashes(collection, after.as_deref(), HASH_PAGE)?;
            out.extend(page);
            match more {
                Some(m) => after = Some(m),
                None => return Ok(out),
            }
        }
    }

    /// Makes collection `to` hold what `from` holds (one comparison, then the writes, in
    /// batches; `to` embeds with its own settings). Returns the documents written or deleted.
    /// Called under `from`'s write fence, nothing can change `from` meanwhile.
    pub async fn catch_up(self: &Arc<Self>, from: &str, to: &str) -> Result<u64> {
        let (engine, f, t) = (self.clone(), from.to_string(), to.to_string());
        let diff = super::blocking(move || {
            Ok(generation_diff(
                &engine.all_document_hashes(&f)?,
                &engine.all_document_hashes(&t)?,
            ))
        })
        .await?;
        let page = batch_documents(self);
        for ids in diff.differ.chunks(page) {
            let (engine, f, ids) = (self.clone(), from.to_string(), ids.to_vec());
            let (docs, _gone) =
                super::blocking(move || engine.get_documents(&f, &ids, false)).await?;
            let docs = docs.into_iter().map(|d| d.input).collect();
            self.upsert(to, docs).await?;
        }
        for ids in diff.gone.chunks(page) {
            self.delete_documents(to, ids.to_vec()).await?;
        }
        Ok(diff.len() as u64)
    }
}
