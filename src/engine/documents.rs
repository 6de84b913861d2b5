//! Documents by filter: listing with keyset paging, and deleting by filter.
//!
//! Both go through the backend's [`CollectionStore::scan`](crate::backend::CollectionStore):
//! the embedded backend walks sled's document tree in id order and tests each document with the
//! resolved filter's plain-Rust evaluation ([`Filter::matches`]), the same semantics the indexes
//! implement (the filter property test holds them equal); Qdrant scrolls its document points
//! with the translated filter, in its point order. Paging is by position: a page token is where
//! the last page ended, so concurrent writes never make a page repeat or skip a document that
//! existed throughout. Each request does a bounded amount of work ([`SCAN_BUDGET`] documents
//! examined on the embedded backend); a selective filter over a large collection may return a
//! short page with a token to continue.

use super::{Collection, Engine};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::meta::Metadata;

/// Documents one ListDocuments call examines at most.
pub const SCAN_BUDGET: usize = 100_000;
/// Documents removed per committed operation by DeleteByFilter.
const DELETE_BATCH: usize = 1000;
/// Largest ListDocuments page.
pub const MAX_PAGE: usize = 1000;

/// One listed document.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedDocument {
    pub id: String,
    pub title: String,
    pub chunk_count: usize,
    /// Empty unless asked for.
    pub metadata: Metadata,
}

/// A page of `(id, content hash)` pairs and where the next page starts.
pub type HashPage = (Vec<(String, String)>, Option<String>);

/// A page of ListDocuments.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentPage {
    pub documents: Vec<ListedDocument>,
    /// The id to continue after, when the walk did not reach the end.
    pub next_after: Option<String>,
}

/// How DeleteByFilter runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilterDeleteOptions {
    /// Count the matches, delete nothing.
    pub dry_run: bool,
    /// The caller asks for every document: required when the filter restricts nothing.
    pub all: bool,
}

/// What DeleteByFilter did (or, for a dry run, would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterDeletion {
    pub matched: usize,
    pub deleted: usize,
}

impl Engine {
    /// Up to `page_size` documents passing `filter`, in id order, after `after`.
    pub fn list_documents(
        &self,
        collection: &str,
        filter: &Filter,
        after: Option<&str>,
        page_size: usize,
        with_metadata: bool,
    ) -> Result<DocumentPage> {
        let c = self.collection(collection)?;
        self.check_filter(filter)?;
        if page_size == 0 || page_size > MAX_PAGE {
            return Err(Error::invalid(format!(
                "page_size must be in 1..={MAX_PAGE}"
            )));
        }
        let filter = c.resolve(filter)?;
        let scan = c.store().scan(&filter, after, page_size)?;
        let documents = scan
            .docs
            .into_iter()
            .map(|rec| ListedDocument {
                id: rec.id,
                title: rec.title,
                chunk_count: rec.chunk_ids.len(),
                metadata: if with_metadata {
                    rec.metadata
                } else {
                    Metadata::new()
                },
            })
            .collect();
        Ok(DocumentPage {
            documents,
            next_after: scan.next,
        })
    }

    /// A page of the collection's documents as `(id, content hash)`, in its listing order,
    /// and where the next page starts: what a re-index compares two generations by.
    pub fn document_hashes(
        &self,
        collection: &str,
        after: Option<&str>,
        page_size: usize,
    ) -> Result<HashPage> {
        let c = self.collection(collection)?;
        let scan = c
            .store()
            .scan(&Filter::all(), after, page_size.clamp(1, MAX_PAGE))?;
        let docs = scan
            .docs
            .into_iter()
            .map(|rec| (rec.id, rec.content_hash))
            .collect();
        Ok((docs, scan.next))
    }

    /// Deletes every document passing `filter` (or, with `dry_run`, counts them). The filter
    /// must not be empty. Runs as the collection's writer, to completion whatever the caller
    /// does; large deletions commit in batches of [`DELETE_BATCH`], each durable before the
    /// next, so a crash part-way leaves whole batches deleted and the same call finishes it.
    pub async fn delete_by_filter(
        &self,
        collection: &str,
        filter: Filter,
        options: FilterDeleteOptions,
    ) -> Result<FilterDeletion> {
        let FilterDeleteOptions { dry_run, all } = options;
        let to = self.resolve(collection)?;
        self.check_filter(&filter)?;
        if !filter.restricts() && !all {
            return Err(Error::invalid(
                "delete by filter needs a filter that restricts: this one matches every document; set `all` to delete them all",
            ));
        }
        self.write_via(&to, move |c| {
            let filter = c.resolve(&filter)?;
            let mut matching = Vec::new();
            let mut after = None;
            loop {
                let scan = c.store().scan(&filter, after.as_deref(), MAX_PAGE)?;
                matching.extend(scan.docs.into_iter().map(|d| d.id));
                match scan.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            let matched = matching.len();
            if dry_run {
                return Ok(FilterDeletion {
                    matched,
                    deleted: 0,
                });
            }
            let mut deleted = 0;
            for batch in matching.chunks(DELETE_BATCH) {
                deleted += c.delete_present(batch.to_vec(), None)?;
            }
            Ok(FilterDeletion { matched, deleted })
        })
        .await
    }

    /// A filter's shape and keys against the limits.
    pub(super) fn check_filter(&self, filter: &Filter) -> Result<()> {
        filter.check_limits(self.config.limits.filter())?;
        for key in filter.keys() {
            self.check_metadata_key(key)
                .map_err(|e| Error::invalid(format!("filter: {e}")))?;
        }
        Ok(())
    }
}

impl Collection {
    /// `filter` resolved against this collection's key types.
    pub(super) fn resolve(&self, filter: &Filter) -> Result<Filter> {
        self.learn_keys(&filter.keys())?;
        let schema = self
            .schema
            .read()
            .map_err(|_| Error::internal("schema lock poisoned"))?;
        filter.resolve(&schema)
    }

    /// When some of `keys` are not known here and the backend is shared, reloads the key
    /// types another front end may have added.
    pub(super) fn learn_keys(&self, keys: &[&str]) -> Result<()> {
        let unknown = {
            let schema = self
                .schema
                .read()
                .map_err(|_| Error::internal("schema lock poisoned"))?;
            keys.iter().any(|k| !schema.contains_key(*k))
        };
        if unknown {
            if let Some(shared) = self.store().shared_schema()? {
                let mut schema = self
                    .schema
                    .write()
                    .map_err(|_| Error::internal("schema lock poisoned"))?;
                schema.extend(shared);
            }
        }
        Ok(())
    }
}

impl Engine {
    /// Ids of the documents an ingestion job wrote from `source` (in id order), for `sync`.
    pub fn documents_from_source(&self, collection: &str, source: &str) -> Result<Vec<String>> {
        self.collection(collection)?.store().ids_from_source(source)
    }

    /// A sled tree outside every collection (ingestion jobs keep their records there), in the
    /// same database, so its writes can join a collection's commit.
    pub fn named_tree(&self, name: &str) -> Result<sled::Tree> {
        self.store.named_tree(name)
    }

    /// Flushes the store (after writes to a [`Engine::named_tree`]).
    pub fn flush_blocking(&self) -> Result<()> {
        self.store.flush_blocking()
    }
}
