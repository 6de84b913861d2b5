//! The embedded backend, Quarry's default: one collection's sled trees (the truth), its
//! tantivy BM25 index and its HNSW graph (both derived from sled's operation log), all in the
//! data directory of one machine. `recovery.rs` keeps the indexes in step with the log;
//! `snapshot.rs` and `restore.rs` archive and restore these files.
//!
//! "Commit durably, then apply" ([`Embedded::commit`]) is the one place a write becomes
//! acknowledged here: one sled transaction stores documents, chunks and vectors and logs the
//! operation; the flush makes it durable; only then are tantivy and HNSW updated, and a failure
//! there is repaired from the log (at the next write, or at the next start-up).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::SCAN_BUDGET;
use crate::backend::{CollectionStore, Scan};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::index::{exact_search, DenseIndex, LexicalIndex, Rescore};
use crate::meta::Schema;
use crate::retrieve::hybrid::Ranked;
use crate::retrieve::DensePlan;
use crate::store::{
    ChunkRecord, CollectionRecord, CollectionTrees, DocRecord, NewDocument, Op, SideWrites, Store,
};

/// One collection on the embedded backend.
pub struct Embedded {
    pub(super) record: CollectionRecord,
    pub(super) store: Store,
    pub(super) trees: CollectionTrees,
    pub(super) lexical: LexicalIndex,
    pub(super) dense: DenseIndex,
    /// Set when an index update failed after its operation was committed to sled: the
    /// operation is kept in the log (checkpoints never trim past an index's applied sequence)
    /// and the indexes catch up from the log before the next write applies anything.
    pub(super) stale: AtomicBool,
    /// `collections/<id>/`: the index files.
    pub(super) dir: PathBuf,
    /// Document and chunk counts, maintained by every commit: sled's `len()` walks the whole
    /// tree, too slow for every GetCollection on a large collection.
    pub(super) documents: AtomicU64,
    pub(super) chunks: AtomicU64,
}

fn add_signed(counter: &AtomicU64, delta: i64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        Some(n.saturating_add_signed(delta))
    });
}

impl Embedded {
    /// Wraps opened parts; counts the documents and chunks once.
    pub(super) fn new(
        record: CollectionRecord,
        store: Store,
        trees: CollectionTrees,
        lexical: LexicalIndex,
        dense: DenseIndex,
        dir: PathBuf,
    ) -> Result<Embedded> {
        let (documents, chunks) = trees.counts()?;
        Ok(Embedded {
            record,
            store,
            trees,
            lexical,
            dense,
            stale: AtomicBool::new(false),
            dir,
            documents: AtomicU64::new(documents),
            chunks: AtomicU64::new(chunks),
        })
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

impl CollectionStore for Embedded {
    fn docs(&self, ids: &[String]) -> Result<Vec<Option<DocRecord>>> {
        ids.iter().map(|id| self.trees.get_doc(id)).collect()
    }

    fn text(&self, id: &str) -> Result<Option<String>> {
        self.trees.get_text(id)
    }

    fn chunks(&self, ids: &[u64]) -> Result<Vec<Option<ChunkRecord>>> {
        ids.iter().map(|id| self.trees.get_chunk(*id)).collect()
    }

    fn version_keys(&self, n: usize) -> Result<Vec<u64>> {
        (0..n).map(|_| self.store.next_id()).collect()
    }

    /// Commits one operation to sled and flushes it (from here on it is acknowledged and
    /// survives any crash), updates the counts, then applies it to both indexes.
    ///
    /// An index update that fails after the commit does not fail the write (it is durable):
    /// the collection is marked stale, the operation stays in the log, and the indexes catch up
    /// from the log before the next write applies anything, so no operation is ever skipped.
    fn commit(
        &self,
        upserts: &[NewDocument],
        deletes: &[String],
        documents: i64,
        new_keys: &Schema,
        side: Option<&SideWrites>,
    ) -> Result<Op> {
        self.catch_up_if_stale();
        let store = &self.store;
        let committed = store.next_id().and_then(|seq| {
            Ok((
                seq,
                self.trees.commit(seq, upserts, deletes, new_keys, side)?,
            ))
        });
        let (seq, op) = committed.inspect_err(|e| {
            if e.is_storage_failure() {
                store.mark_failed();
            }
        })?;
        store.flush_blocking()?;
        add_signed(&self.documents, documents);
        add_signed(&self.chunks, op.add.len() as i64 - op.remove.len() as i64);
        if self.stale.load(Ordering::Acquire) {
            // Earlier operations are still unapplied: this one waits in the log with them.
            return Ok(op);
        }
        if let Err(e) = self.apply_with(seq, &op, upserts) {
            tracing::error!(
                collection = %self.record.name,
                seq,
                error = %e,
                "index update failed after a durable commit; kept in the log for replay"
            );
            self.stale.store(true, Ordering::Release);
        }
        Ok(op)
    }

    fn lexical(
        &self,
        query: &str,
        depth: usize,
        filter: &Filter,
        title_boost: f32,
    ) -> Result<Ranked> {
        self.lexical.search(query, depth, filter, title_boost)
    }

    /// Dense candidates, planned by filter selectivity: HNSW when unfiltered or when the
    /// filter allows many chunks, exact scoring of the allowed chunks when it allows few
    /// (HNSW's filtered search loses its early termination and gets slow there).
    ///
    /// Every one of the graph's `depth` candidates is rescored with sled's exact vector (see
    /// `DenseIndex::search`): how a candidate is scored must depend on the ranking's depth
    /// alone, never on the page asked for, or the pages of one query would be cut from
    /// different rankings (a head rescored for page one, a longer one for page five, and
    /// min-max fusion normalizing over both), and repeat or skip hits.
    fn dense(
        &self,
        q: &[f32],
        depth: usize,
        filter: &Filter,
        plan: DensePlan,
        exact_limit: usize,
    ) -> Result<Ranked> {
        let exact_limit = match plan {
            DensePlan::Auto => exact_limit.min(graph_walk_limit(
                depth,
                self.dense.graph_points().unwrap_or(0),
            )),
            DensePlan::Exact => usize::MAX,
            DensePlan::Graph => 0,
        };
        let exact = |id: u64| self.trees.get_vector(id);
        let rescore = Rescore {
            exact: &exact,
            head: depth,
        };
        if filter.is_all() {
            return self.dense.search(q, depth, None, rescore);
        }
        let allowed = self.lexical.matching_chunks(filter)?;
        if allowed.len() <= exact_limit {
            let mut vectors = Vec::with_capacity(allowed.len());
            for id in &allowed {
                if let Some(v) = self.trees.get_vector(*id)? {
                    vectors.push((*id, v));
                }
            }
            Ok(exact_search(q, vectors.into_iter(), depth))
        } else {
            self.dense.search(q, depth, Some(&allowed), rescore)
        }
    }

    /// Walks sled's document tree in id order and tests each document with the filter's
    /// plain-Rust evaluation ([`Filter::matches`]), the semantics the indexes implement (the
    /// filter property test holds them equal). At most [`SCAN_BUDGET`] documents per call.
    fn scan(&self, filter: &Filter, after: Option<&str>, limit: usize) -> Result<Scan> {
        let mut docs = Vec::new();
        let mut examined = 0;
        for entry in self.docs_after(after) {
            let (id, rec) = entry?;
            examined += 1;
            if filter.matches(&rec.metadata) {
                docs.push(rec);
            }
            if docs.len() >= limit || examined >= SCAN_BUDGET {
                // More may follow: continue after this id (the next page may be empty).
                let more = self.docs_after(Some(&id)).next().is_some();
                return Ok(Scan {
                    docs,
                    next: more.then_some(id),
                });
            }
        }
        Ok(Scan { docs, next: None })
    }

    fn ids_from_source(&self, source: &str) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in self.docs_after(None) {
            let (_, rec) = entry?;
            if rec.source.as_deref() == Some(source) {
                ids.push(rec.id);
            }
        }
        Ok(ids)
    }

    fn counts(&self) -> Result<(u64, u64)> {
        Ok((
            self.documents.load(Ordering::Relaxed),
            self.chunks.load(Ordering::Relaxed),
        ))
    }

    fn shared_schema(&self) -> Result<Option<Schema>> {
        Ok(None)
    }
}

/// The number of allowed chunks up to which exact scoring beats the graph's filtered walk, from
/// a cost model fitted on SciFact (`cargo bench --bench filters`): exact scoring costs about
/// 0.8 us per allowed chunk, and the walk about 0.6 us per node it visits, which is about
/// `depth / (allowed share)` nodes, `depth * points / allowed`. They cross where
/// `allowed^2 = 0.7 * depth * points`: about 800 chunks at SciFact's 9,142, 8,400 at 10^6 (where
/// `index.exact_filter_limit` caps it).
fn graph_walk_limit(depth: usize, points: usize) -> usize {
    (0.7 * depth as f64 * points as f64).sqrt() as usize
}
