//! Keeping the derived indexes in step with sled: applying logged operations, start-up
//! recovery, and checkpoints.
//!
//! Every committed operation carries a sequence number. Each index records the last sequence
//! it applied (tantivy in its commit payload, HNSW in its checkpoint's `meta.json`), and
//! [`Embedded::index_op`] applies an operation only to the indexes that have not seen it.
//! At start-up ([`Embedded::recover`]) logged operations after an index's sequence are
//! replayed; an index that is missing is rebuilt from sled. Nothing is re-embedded: vectors
//! live in sled. Checkpoints (periodic and at shutdown) persist the HNSW graph, rebuild it when
//! tombstones pile up, and trim the log up to what every index has applied.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::embedded::Embedded;
use super::{Backing, Collection, Engine};
use crate::error::{Error, Result};
use crate::index::LexicalDoc;
use crate::store::{ChunkRecord, CollectionRecord, DocRecord, NewDocument, Op, Store};

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
    const DENSE: Targets = Targets {
        lexical: false,
        dense: true,
    };
}

impl Engine {
    /// Persists every collection's HNSW graph, rebuilding graphs with too many tombstones, and
    /// trims the operation logs.
    pub async fn checkpoint(&self) -> Result<()> {
        let started = std::time::Instant::now();
        let collections: Vec<Arc<Collection>> = self.open_map()?.values().cloned().collect();
        for c in collections {
            let guard = c.write_guard().await;
            let ratio = self.config.index.rebuild_tombstone_ratio;
            let idle = Duration::from_secs(self.config.index.writer_idle_secs);
            let store = self.store.clone();
            let c2 = c.clone();
            tokio::task::spawn_blocking(move || {
                let _guard = guard;
                if c2.deleted.load(Ordering::Acquire) {
                    return Ok(());
                }
                match &c2.backing {
                    Backing::Embedded(e) => e.checkpoint_blocking(&store, ratio, idle),
                    // Qdrant persists by itself; what is left to do is sweeping what
                    // interrupted writes left behind, now and then.
                    Backing::Qdrant(q) => q.sweep_if_due().map(|_| ()),
                }
            })
            .await
            .map_err(|e| Error::internal(format!("checkpoint task failed: {e}")))??;
        }
        self.store.flush().await?;
        crate::metrics::global()
            .checkpoint_duration
            .observe_duration(&[], started.elapsed());
        Ok(())
    }
}

impl Embedded {
    /// Applies a just-committed operation to both indexes, taking its documents from `fresh`
    /// instead of re-reading them from sled.
    pub(super) fn apply_with(&self, seq: u64, op: &Op, fresh: &[NewDocument]) -> Result<()> {
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
                // The title is indexed once per document, with its first chunk: repeated
                // in every chunk it would count a long document's title once per chunk and
                // fill lexical results with that document's chunks.
                let title = match d {
                    Some(d) if crate::store::ordinal(*id) == 0 => d.title.as_str(),
                    _ => "",
                };
                LexicalDoc {
                    chunk_id: *id,
                    title,
                    body: &c.text,
                    metadata: d.map_or(&empty, |d| &d.metadata),
                }
            })
            .collect();
        // Each index applies on its own: one that fails does not hold the other back.
        let lexical = match lexical_due {
            true => self.lexical.apply(seq, &lex_docs, &op.remove),
            false => Ok(()),
        };
        if dense_due {
            self.dense.apply(seq, &vectors, &op.remove)?;
        }
        lexical
    }

    /// Brings both indexes up to date with sled (see the module docs).
    pub(super) fn recover(&self) -> Result<()> {
        let last = self.trees.last_seq()?;
        let chunks = self.chunks.load(Ordering::Acquire);
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
        self.catch_up()?;
        if self.trees.last_seq()? > 0 {
            tracing::info!(collection = %self.record.name, "indexes up to date in {:?}", started.elapsed());
        }
        Ok(())
    }

    /// Applies to each index the logged operations after the last one it applied, merged into
    /// one operation (a later removal cancels an earlier addition). Per index, so an index that
    /// is ahead of the other never applies an operation twice, and one that fails does not hold
    /// the other back.
    pub(super) fn catch_up(&self) -> Result<()> {
        let lexical = self.catch_up_one(Targets::LEXICAL, self.lexical.applied_seq()?);
        self.catch_up_one(Targets::DENSE, self.dense.applied_seq()?)?;
        lexical
    }

    fn catch_up_one(&self, targets: Targets, from: u64) -> Result<()> {
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
            self.index_op(upto, &merged, &[], targets)?;
        }
        Ok(())
    }

    /// After an index update failed (see [`Embedded::commit`]): tries to bring the indexes up to
    /// date from the log; the collection stays stale, and writes keep their operations in the
    /// log, until that succeeds.
    pub(super) fn catch_up_if_stale(&self) {
        if !self.stale.load(Ordering::Acquire) {
            return;
        }
        match self.catch_up() {
            Ok(()) => {
                self.stale.store(false, Ordering::Release);
                tracing::info!(collection = %self.record.name, "indexes caught up with the log");
            }
            Err(e) => {
                tracing::error!(collection = %self.record.name, error = %e, "indexes are still behind the log")
            }
        }
    }

    pub(super) fn checkpoint_blocking(
        &self,
        store: &Store,
        rebuild_ratio: f32,
        writer_idle: Duration,
    ) -> Result<()> {
        self.catch_up_if_stale();
        self.lexical.close_idle_writer(writer_idle)?;
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
}

/// Spawns the periodic checkpoint task, every `every`, on whatever engine `current` gives at
/// each tick (none: skipped; the server may be reopening its storage); it stops when
/// `shutdown` changes.
pub fn spawn_checkpointer(
    every: Duration,
    current: impl Fn() -> Option<Arc<Engine>> + Send + 'static,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let every = every.max(Duration::from_secs(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let Some(engine) = current() else { continue };
                    if let Err(e) = engine.checkpoint().await {
                        tracing::error!(error = %e, "checkpoint failed");
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    })
}

impl Engine {
    /// Removes index directories of collections that no longer exist (a delete that crashed
    /// before removing its files).
    pub(super) fn remove_orphan_files(&self, records: &[CollectionRecord]) -> Result<()> {
        let live: HashSet<String> = records.iter().map(|r| r.id.to_string()).collect();
        let root = self.collections_dir();
        if !root.exists() {
            return Ok(());
        }
        for entry in std::fs::read_dir(&root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !live.contains(&name) {
                tracing::info!(dir = %entry.path().display(), "removing files of a deleted collection");
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(())
    }
}
