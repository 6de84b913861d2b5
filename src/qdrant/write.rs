//! Writes to a collection in Qdrant: versioned documents, deletes, and the sweep of what a
//! crash left behind.
//!
//! A batch is written in this order, each step acknowledged by Qdrant (`wait`, with the
//! configured write ordering) before the next:
//! 1. the metadata keys the batch introduces (types in the collection's metadata, one entry per
//!    key so concurrent front ends merge; a payload index each);
//! 2. the new versions' chunk points (not visible yet: no document point names their version);
//! 3. the document points, each naming its new version: the one step that makes a document's
//!    new version current, atomically per document;
//! 4. deleted documents' points (each document disappears in one step);
//! 5. the chunks of replaced and deleted versions;
//! 6. the ingestion job's journal (local sled), flushed.
//!
//! A crash between steps leaves chunks no document point names: invisible to searches (every
//! candidate is checked against its document's version) and removed by [`QdrantCollection::sweep`],
//! which leaves young chunks alone (a write in progress on another front end). A batch retried
//! after a failure is idempotent: unchanged documents are detected by content hash, and
//! changed ones get a fresh version again. What is acknowledged was acknowledged by Qdrant
//! with `wait`: durable in its write-ahead log on `write_consistency_factor` replicas.

use std::collections::HashMap;
use std::time::Duration;

use qdrant_client::qdrant::{
    self, Condition, DeletePointsBuilder, PointId, PointStruct, PointsIdsList,
    UpdateCollectionBuilder, UpsertPointsBuilder, Vector, WriteOrdering, WriteOrderingType,
};
use rand::Rng;

use super::collection::{
    doc_point, get_int, get_str, num_id, QdrantCollection, Stats, SCROLL_PAGE,
};
use super::{bm25, error, filter, schema_key, META_STATS};
use crate::error::{Error, Result};
use crate::meta::Schema;
use crate::store::{chunk_id, ordinal, NewDocument, Op, SideWrites, CHUNK_BITS};

/// Points per upsert request (a chunk point carries a 384-d vector and its text: about 4 KB).
const UPSERT_BATCH: usize = 256;
/// Chunks younger than this are never swept: they may belong to a write still in progress on
/// another front end.
pub const SWEEP_GRACE: Duration = Duration::from_secs(600);
/// How often a front end sweeps each collection (at its checkpoints).
pub const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// The statistics stop being updated past this many chunks: the averages have settled, and
/// each update is a cluster-wide metadata change.
const STATS_SETTLED: u64 = 50_000;

/// How far a write got (for fault injection; a real write always runs to `Done`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The new versions' chunk points are written, no document point names them.
    Chunks,
    /// The document points are switched (and deleted ones removed); old chunks remain.
    Documents,
    Done,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn ordering(t: WriteOrderingType) -> WriteOrdering {
    WriteOrdering { r#type: t as i32 }
}

impl QdrantCollection {
    /// `n` random version keys whose first chunk id no point has.
    pub(super) fn fresh_keys(&self, n: usize) -> Result<Vec<u64>> {
        let max_key = (1u64 << (64 - CHUNK_BITS)) - 1;
        let mut rng = rand::rng();
        let mut keys = Vec::with_capacity(n);
        while keys.len() < n {
            let want = n - keys.len();
            let candidates: Vec<u64> = (0..want).map(|_| rng.random_range(1..=max_key)).collect();
            let taken: std::collections::HashSet<u64> = self
                .get(
                    candidates
                        .iter()
                        .map(|k| PointId::from(chunk_id(*k, 0)))
                        .collect(),
                    &["v"],
                )?
                .iter()
                .filter_map(|p| num_id(&p.id))
                .collect();
            for k in candidates {
                if !taken.contains(&chunk_id(k, 0)) && !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        Ok(keys)
    }

    fn upsert(&self, points: Vec<PointStruct>) -> Result<()> {
        for batch in points.chunks(UPSERT_BATCH) {
            self.ordered(|ordering| {
                let req = UpsertPointsBuilder::new(&self.name, batch.to_vec())
                    .wait(true)
                    .ordering(ordering)
                    .build();
                self.conn.call(move |c| {
                    let r = req.clone();
                    async move { c.upsert_points(r).await }
                })
            })?;
        }
        Ok(())
    }

    fn delete_points(&self, ids: Vec<PointId>) -> Result<()> {
        for batch in ids.chunks(1024) {
            self.ordered(|ordering| {
                let req = DeletePointsBuilder::new(&self.name)
                    .points(PointsIdsList {
                        ids: batch.to_vec(),
                    })
                    .wait(true)
                    .ordering(ordering)
                    .build();
                self.conn.call(move |c| {
                    let r = req.clone();
                    async move { c.delete_points(r).await }
                })
            })?;
        }
        Ok(())
    }

    /// Sends a write with strong ordering (through each shard's permanent leader). While that
    /// leader is down and not yet marked dead, Qdrant refuses strong writes; the write then
    /// goes with medium ordering (a leader chosen among the live replicas), which also lets
    /// Qdrant mark the lost replica dead, after which strong ordering works again.
    fn ordered<T>(
        &self,
        send: impl Fn(WriteOrdering) -> Result<std::result::Result<T, qdrant_client::QdrantError>>,
    ) -> Result<T> {
        match send(ordering(WriteOrderingType::Strong))? {
            Ok(t) => Ok(t),
            Err(e) if e.to_string().contains("Strong ordering") => {
                tracing::warn!(collection = %self.record.name, "a shard's leader is unreachable: writing with medium ordering");
                send(ordering(WriteOrderingType::Medium))?.map_err(|e| self.gone(error(e)))
            }
            Err(e) => Err(self.gone(error(e))),
        }
    }

    /// Records new metadata keys: their types, one metadata entry each, and payload indexes.
    fn declare(&self, keys: &Schema) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut metadata: HashMap<String, serde_json::Value> = HashMap::new();
        for (k, t) in keys {
            let t = serde_json::to_value(t).map_err(|e| Error::internal(e.to_string()))?;
            metadata.insert(schema_key(k), t);
        }
        self.update_metadata(metadata)?;
        self.conn.index_fields(
            &self.record.name,
            keys.iter()
                .map(|(k, t)| (filter::field(k), filter::index_type(*t)))
                .collect(),
        )
    }

    fn update_metadata(&self, metadata: HashMap<String, serde_json::Value>) -> Result<()> {
        let req = UpdateCollectionBuilder::new(&self.name).metadata(metadata);
        self.conn
            .call(move |c| {
                let r = req.clone();
                async move { c.update_collection(r).await }
            })?
            .map_err(|e| self.gone(error(e)))?;
        Ok(())
    }

    /// The statistics to weight this batch with: the stored ones plus the batch's own lengths.
    fn stats_with(&self, docs: &[NewDocument]) -> Result<(Stats, Stats)> {
        let before = *self
            .stats
            .lock()
            .map_err(|_| Error::internal("stats lock poisoned"))?;
        let mut after = before;
        for d in docs {
            for (id, c, _) in &d.chunks {
                let title = if ordinal(*id) == 0 {
                    d.record.title.as_str()
                } else {
                    ""
                };
                after.chunks += 1;
                after.tokens += bm25::analyze(&crate::chunk::titled(title, &c.text))?.len() as u64;
                if !title.is_empty() {
                    after.title_tokens += bm25::analyze(title)?.len() as u64;
                }
            }
        }
        Ok((before, after))
    }

    fn points(
        &self,
        docs: &[NewDocument],
        stats: Stats,
    ) -> Result<(Vec<PointStruct>, Vec<PointStruct>)> {
        let (avgdl, title_avgdl) = stats.averages();
        let written = now_ms();
        let mut chunks = Vec::new();
        let mut doc_points = Vec::with_capacity(docs.len());
        for d in docs {
            let meta = filter::payload(&d.record.metadata);
            let version = d
                .chunks
                .first()
                .map_or(0, |(id, _, _)| (id >> CHUNK_BITS) as i64);
            for (id, c, vector) in &d.chunks {
                let title = if ordinal(*id) == 0 {
                    d.record.title.as_str()
                } else {
                    ""
                };
                let ((indices, values), _) =
                    bm25::chunk_vector(title, &c.text, avgdl, title_avgdl)?;
                let mut payload = meta.clone();
                payload.insert("k".into(), "c".into());
                payload.insert("d".into(), d.record.id.clone().into());
                payload.insert("v".into(), version.into());
                payload.insert("o".into(), i64::from(c.ordinal).into());
                payload.insert("s".into(), (c.start as i64).into());
                payload.insert("e".into(), (c.end as i64).into());
                payload.insert("t".into(), c.text.clone().into());
                payload.insert("w".into(), written.into());
                let mut vectors: HashMap<String, Vector> = HashMap::new();
                vectors.insert("dense".into(), Vector::new_dense(vector.clone()));
                vectors.insert("bm25".into(), Vector::new_sparse(indices, values));
                chunks.push(PointStruct {
                    id: Some(PointId::from(*id)),
                    payload,
                    vectors: Some(vectors.into()),
                });
            }
            let mut payload = meta;
            payload.insert("k".into(), "d".into());
            payload.insert("d".into(), d.record.id.clone().into());
            payload.insert("v".into(), version.into());
            payload.insert("w".into(), written.into());
            if let Some(src) = &d.record.source {
                payload.insert("src".into(), src.clone().into());
            }
            let rec =
                serde_json::to_string(&d.record).map_err(|e| Error::internal(e.to_string()))?;
            payload.insert("rec".into(), rec.into());
            payload.insert("text".into(), d.text.clone().into());
            doc_points.push(PointStruct {
                id: Some(doc_point(&d.record.id)),
                payload,
                vectors: Some(HashMap::<String, Vector>::new().into()),
            });
        }
        Ok((chunks, doc_points))
    }

    /// The write of [`crate::backend::CollectionStore::commit`] (see the module docs).
    pub(super) fn write(
        &self,
        upserts: &[NewDocument],
        deletes: &[String],
        new_keys: &Schema,
        side: Option<&SideWrites>,
    ) -> Result<Op> {
        self.write_steps(upserts, deletes, new_keys, side, Step::Done)
    }

    /// Fault injection: the write of `upserts` and `deletes` as a crash after `last` leaves it.
    #[cfg(test)]
    pub(crate) fn write_interrupted(
        &self,
        upserts: &[NewDocument],
        deletes: &[String],
        last: Step,
    ) -> Result<()> {
        self.write_steps(upserts, deletes, &Schema::new(), None, last)
            .map(|_| ())
    }

    fn write_steps(
        &self,
        upserts: &[NewDocument],
        deletes: &[String],
        new_keys: &Schema,
        side: Option<&SideWrites>,
        last: Step,
    ) -> Result<Op> {
        self.declare(new_keys)?;
        let touched: Vec<String> = upserts
            .iter()
            .map(|d| d.record.id.clone())
            .chain(deletes.iter().cloned())
            .collect();
        let old = crate::backend::CollectionStore::docs(self, &touched)?;
        let mut op = Op::default();
        for rec in old.iter().flatten() {
            op.remove.extend(rec.chunk_ids.iter().copied());
        }
        let (before, after) = self.stats_with(upserts)?;
        let (chunk_points, doc_points) = self.points(upserts, after)?;
        op.add = chunk_points.iter().filter_map(|p| num_id(&p.id)).collect();
        self.upsert(chunk_points)?;
        if last == Step::Chunks {
            return Ok(op);
        }
        self.upsert(doc_points)?;
        let present: Vec<PointId> = deletes
            .iter()
            .zip(old.iter().skip(upserts.len()))
            .filter(|(_, rec)| rec.is_some())
            .map(|(id, _)| doc_point(id))
            .collect();
        self.delete_points(present)?;
        if last == Step::Documents {
            return Ok(op);
        }
        self.delete_points(op.remove.iter().map(|id| PointId::from(*id)).collect())?;
        if after != before && before.chunks < STATS_SETTLED {
            self.save_stats(after);
        }
        if let Some(side) = side {
            side.apply()?;
            side.tree.flush()?;
        }
        Ok(op)
    }

    /// Stores the length statistics (best effort: a failure only leaves older averages).
    fn save_stats(&self, stats: Stats) {
        let Ok(json) = serde_json::to_string(&stats) else {
            return;
        };
        let mut metadata = HashMap::new();
        metadata.insert(META_STATS.to_string(), serde_json::Value::String(json));
        match self.update_metadata(metadata) {
            Ok(()) => {
                if let Ok(mut s) = self.stats.lock() {
                    *s = stats;
                }
            }
            Err(e) => {
                tracing::warn!(collection = %self.record.name, error = %e, "cannot store BM25 statistics")
            }
        }
    }

    /// [`QdrantCollection::sweep`] with [`SWEEP_GRACE`], when this front end has not swept the
    /// collection for [`SWEEP_EVERY`] (the first time: at once).
    pub fn sweep_if_due(&self) -> Result<usize> {
        {
            let mut last = self
                .swept
                .lock()
                .map_err(|_| Error::internal("sweep lock poisoned"))?;
            if last.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
                return Ok(0);
            }
            *last = Some(std::time::Instant::now());
        }
        self.sweep(SWEEP_GRACE)
    }

    /// Removes chunk points older than `grace` that no document point names (left by a write
    /// or delete that did not complete). Returns how many it removed.
    pub fn sweep(&self, grace: Duration) -> Result<usize> {
        let mut versions: HashMap<String, i64> = HashMap::new();
        let docs = qdrant::Filter::must([Condition::matches("k", "d".to_string())]);
        let mut offset = None;
        loop {
            let (points, next) =
                self.scroll(Some(docs.clone()), offset, SCROLL_PAGE, &["d", "v"])?;
            for p in points {
                if let (Some(d), Some(v)) = (get_str(&p.payload, "d"), get_int(&p.payload, "v")) {
                    versions.insert(d, v);
                }
            }
            match next {
                Some(n) => offset = Some(n),
                None => break,
            }
        }
        let cutoff = now_ms() - grace.as_millis() as i64;
        let old_chunks = qdrant::Filter::must([
            Condition::matches("k", "c".to_string()),
            Condition::range(
                "w",
                qdrant::Range {
                    lt: Some(cutoff as f64),
                    ..Default::default()
                },
            ),
        ]);
        let mut garbage = Vec::new();
        let mut offset = None;
        loop {
            let (points, next) =
                self.scroll(Some(old_chunks.clone()), offset, SCROLL_PAGE, &["d", "v"])?;
            for p in points {
                let current = match (get_str(&p.payload, "d"), get_int(&p.payload, "v")) {
                    (Some(d), Some(v)) => versions.get(&d) == Some(&v),
                    _ => false,
                };
                if !current {
                    if let Some(id) = num_id(&p.id) {
                        garbage.push(PointId::from(id));
                    }
                }
            }
            match next {
                Some(n) => offset = Some(n),
                None => break,
            }
        }
        let n = garbage.len();
        self.delete_points(garbage)?;
        if n > 0 {
            tracing::info!(collection = %self.record.name, chunks = n, "swept chunks no document names");
        }
        Ok(n)
    }
}
