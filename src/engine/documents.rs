//! Documents by filter: listing in id order with keyset paging, and deleting by filter.
//!
//! Both walk sled's document tree in id order and test each document with the resolved
//! filter's plain-Rust evaluation ([`Filter::matches`]), the same semantics the indexes
//! implement (the filter property test holds them equal). Paging is by key: a page token is the
//! last id returned, so concurrent writes never make a page repeat or skip a document that
//! existed throughout. Each request examines a bounded number of documents
//! ([`SCAN_BUDGET`]); a selective filter over a large collection may return a short page with
//! a token to continue.

use super::{Collection, Engine};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::meta::Metadata;
use crate::store::DocRecord;

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
        let mut documents = Vec::new();
        let mut examined = 0;
        for entry in c.docs_after(after) {
            let (id, rec) = entry?;
            examined += 1;
            if filter.matches(&rec.metadata) {
                documents.push(ListedDocument {
                    id: id.clone(),
                    title: rec.title,
                    chunk_count: rec.chunk_ids.len(),
                    metadata: if with_metadata {
                        rec.metadata
                    } else {
                        Metadata::new()
                    },
                });
            }
            if documents.len() >= page_size || examined >= SCAN_BUDGET {
                // More may follow: continue after this id (the next page may be empty).
                let more = c.docs_after(Some(&id)).next().is_some();
                return Ok(DocumentPage {
                    documents,
                    next_after: more.then_some(id),
                });
            }
        }
        Ok(DocumentPage {
            documents,
            next_after: None,
        })
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
        let c = self.collection(collection)?;
        self.check_filter(&filter)?;
        if !filter.restricts() && !all {
            return Err(Error::invalid(
                "delete by filter needs a filter that restricts: this one matches every document; set `all` to delete them all",
            ));
        }
        let store = self.store.clone();
        c.run_write(move |c| {
            let filter = c.resolve(&filter)?;
            let mut matching = Vec::new();
            for entry in c.docs_after(None) {
                let (id, rec) = entry?;
                if filter.matches(&rec.metadata) {
                    matching.push(id);
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
                deleted += c.delete_present(&store, batch.to_vec(), None)?;
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
        let schema = self
            .schema
            .read()
            .map_err(|_| Error::internal("schema lock poisoned"))?;
        filter.resolve(&schema)
    }

    /// Documents in id order, strictly after `after`.
    fn docs_after(
        &self,
        after: Option<&str>,
    ) -> impl Iterator<Item = Result<(String, DocRecord)>> + '_ {
        let range = match after {
            Some(a) => self.trees.docs.range::<&[u8], _>((
                std::ops::Bound::Excluded(a.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.trees.docs.iter(),
        };
        range.map(|kv| {
            let (k, v) = kv?;
            let rec: DocRecord = serde_json::from_slice(&v)
                .map_err(|e| Error::internal(format!("corrupt document record: {e}")))?;
            Ok((String::from_utf8_lossy(&k).into_owned(), rec))
        })
    }
}

impl Engine {
    /// Ids of the documents an ingestion job wrote from `source` (in id order), for `sync`.
    pub fn documents_from_source(&self, collection: &str, source: &str) -> Result<Vec<String>> {
        let c = self.collection(collection)?;
        let mut ids = Vec::new();
        for kv in c.trees.docs.iter() {
            let (_, v) = kv?;
            let rec: DocRecord = serde_json::from_slice(&v)
                .map_err(|e| Error::internal(format!("corrupt document record: {e}")))?;
            if rec.source.as_deref() == Some(source) {
                ids.push(rec.id);
            }
        }
        Ok(ids)
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
