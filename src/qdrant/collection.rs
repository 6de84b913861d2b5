//! One Quarry collection in Qdrant: the read side of [`CollectionStore`] (its query and
//! chunk-read calls are in `query.rs`, the writes in `write.rs`).
//!
//! Points (see the module docs of `qdrant`): a document point (`k` = "d") holds the document's
//! record (`rec`, the JSON the embedded backend stores), its text (`text`), its id (`d`), its
//! current version (`v`), its source (`src`) and its metadata fields; a chunk point (`k` = "c")
//! holds its document's id and version (`d`, `v`), ordinal and offsets (`o`, `s`, `e`), text
//! (`t`), when it was written (`w`, unix ms) and the document's metadata fields, with the
//! vectors `dense` and `bm25`.
//!
//! Visibility: a chunk is current when its version is its document point's `v`. Candidates
//! and chunks are checked against the document points before they count, so a search never
//! sees the chunks of a version that is not (or no longer) current: no half documents, no
//! two versions of one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use qdrant_client::qdrant::{
    self, point_id::PointIdOptions, Condition, CountPointsBuilder, GetPointsBuilder, PointId,
    ReadConsistencyType, RetrievedPoint, ScrollPointsBuilder,
};

use super::{error, filter, Qdrant, ReadConsistency};
use crate::backend::{ChunksWithDocs, CollectionStore, Scan};
use crate::error::{quote, Error, Result};
use crate::filter::Filter;
use crate::meta::Schema;
use crate::retrieve::hybrid::Ranked;
use crate::retrieve::DensePlan;
use crate::store::{ChunkRecord, CollectionRecord, DocRecord, NewDocument, Op, SideWrites};

/// Points read per scroll call.
pub(super) const SCROLL_PAGE: u32 = 512;

/// The BM25 length statistics new chunks are weighted with (see `bm25`).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct Stats {
    pub chunks: u64,
    pub tokens: u64,
    pub title_tokens: u64,
}

impl Stats {
    /// Average body and title lengths; before any chunk, a typical chunk's.
    pub fn averages(&self) -> (f32, f32) {
        if self.chunks == 0 {
            return (150.0, 1.0);
        }
        let n = self.chunks as f32;
        (
            (self.tokens as f32 / n).max(1.0),
            (self.title_tokens as f32 / n).max(0.1),
        )
    }
}

/// One collection in Qdrant.
pub struct QdrantCollection {
    pub(super) conn: Arc<Qdrant>,
    /// The Qdrant collection's name.
    pub(super) name: String,
    pub(super) record: CollectionRecord,
    /// Length statistics as last read or written by this front end.
    pub(super) stats: Mutex<Stats>,
    /// When this front end last swept the collection (see `write::sweep_if_due`).
    pub(super) swept: Mutex<Option<std::time::Instant>>,
    /// When this front end last checked that the collection is still the one it opened.
    checked: Mutex<std::time::Instant>,
}

/// How long a front end trusts its registry entry before asking Qdrant again whether the
/// collection still exists as it opened it (another front end may delete or re-create it).
pub const RECHECK_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// The point id of document `id`: a UUID from its SHA-256, so every front end finds it.
pub(super) fn doc_point(id: &str) -> PointId {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(id.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    // Version 8 (custom) and the RFC 4122 variant: a well-formed UUID.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    PointId::from(uuid)
}

pub(super) fn num_id(p: &Option<PointId>) -> Option<u64> {
    match p.as_ref()?.point_id_options.as_ref()? {
        PointIdOptions::Num(n) => Some(*n),
        PointIdOptions::Uuid(_) => None,
    }
}

fn uuid_of(p: &Option<PointId>) -> Option<String> {
    match p.as_ref()?.point_id_options.as_ref()? {
        PointIdOptions::Uuid(u) => Some(u.clone()),
        PointIdOptions::Num(_) => None,
    }
}

pub(super) fn get_str(payload: &HashMap<String, qdrant::Value>, key: &str) -> Option<String> {
    payload.get(key).and_then(|v| v.as_str().cloned())
}

pub(super) fn get_int(payload: &HashMap<String, qdrant::Value>, key: &str) -> Option<i64> {
    payload.get(key).and_then(|v| v.as_integer())
}

pub(super) fn corrupt(what: &str) -> Error {
    Error::internal(format!("corrupt {what} in Qdrant"))
}

impl QdrantCollection {
    pub(super) fn new(
        conn: Arc<Qdrant>,
        name: String,
        record: CollectionRecord,
    ) -> Result<QdrantCollection> {
        let c = QdrantCollection {
            conn,
            name,
            record,
            stats: Mutex::new(Stats::default()),
            swept: Mutex::new(None),
            checked: Mutex::new(std::time::Instant::now()),
        };
        let stats = c.load_stats()?;
        *c.stats
            .lock()
            .map_err(|_| Error::internal("stats lock poisoned"))? = stats;
        Ok(c)
    }

    /// True (and the clock restarted) when [`RECHECK_AFTER`] has passed since the last check.
    pub fn due_for_check(&self) -> bool {
        let Ok(mut checked) = self.checked.lock() else {
            return true;
        };
        if checked.elapsed() < RECHECK_AFTER {
            return false;
        }
        *checked = std::time::Instant::now();
        true
    }

    pub(super) fn read_consistency(&self) -> qdrant::read_consistency::Value {
        let t = match self.conn.settings.read_consistency {
            ReadConsistency::One => return qdrant::read_consistency::Value::Factor(1),
            ReadConsistency::All => ReadConsistencyType::All,
            ReadConsistency::Majority => ReadConsistencyType::Majority,
            ReadConsistency::Quorum => ReadConsistencyType::Quorum,
        };
        qdrant::read_consistency::Value::Type(t as i32)
    }

    /// A collection deleted in Qdrant (by another front end) answers NOT_FOUND by name.
    pub(super) fn gone(&self, e: Error) -> Error {
        match e {
            Error::NotFound(_) => Error::CollectionNotFound(self.record.name.clone()),
            e => e,
        }
    }

    /// Points by id, with the payload fields `fields` (all when empty).
    pub(super) fn get(&self, ids: Vec<PointId>, fields: &[&str]) -> Result<Vec<RetrievedPoint>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut req =
            GetPointsBuilder::new(&self.name, ids).read_consistency(self.read_consistency());
        req = if fields.is_empty() {
            req.with_payload(true)
        } else {
            req.with_payload(qdrant::PayloadIncludeSelector {
                fields: fields.iter().map(|f| f.to_string()).collect(),
            })
        };
        let got = self
            .conn
            .call(move |c| {
                let r = req.clone();
                async move { c.get_points(r).await }
            })?
            .map_err(|e| self.gone(error(e)))?;
        Ok(got.result)
    }

    /// Reads the collection's metadata (key types and BM25 statistics).
    pub(super) fn metadata(&self) -> Result<HashMap<String, qdrant::Value>> {
        let name = self.name.clone();
        let info = self
            .conn
            .call(move |c| {
                let name = name.clone();
                async move { c.collection_info(name).await }
            })?
            .map_err(|e| self.gone(error(e)))?;
        Ok(info
            .result
            .and_then(|r| r.config)
            .map(|c| c.metadata)
            .unwrap_or_default())
    }

    pub(super) fn load_stats(&self) -> Result<Stats> {
        Ok(self
            .metadata()?
            .get(super::META_STATS)
            .and_then(|v| v.as_str().cloned())
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default())
    }

    fn count(&self, kind: &str) -> Result<u64> {
        let req = CountPointsBuilder::new(&self.name)
            .filter(qdrant::Filter::must([Condition::matches(
                "k",
                kind.to_string(),
            )]))
            .exact(true);
        let got = self
            .conn
            .call(move |c| {
                let r = req.clone();
                async move { c.count(r).await }
            })?
            .map_err(|e| self.gone(error(e)))?;
        Ok(got.result.map_or(0, |r| r.count))
    }

    /// Scrolls points passing `filter`, from `offset`, with payload `fields`.
    pub(super) fn scroll(
        &self,
        filter: Option<qdrant::Filter>,
        offset: Option<PointId>,
        limit: u32,
        fields: &[&str],
    ) -> Result<(Vec<RetrievedPoint>, Option<PointId>)> {
        let mut req = ScrollPointsBuilder::new(&self.name)
            .limit(limit)
            .with_payload(qdrant::PayloadIncludeSelector {
                fields: fields.iter().map(|f| f.to_string()).collect(),
            })
            .read_consistency(self.read_consistency());
        if let Some(f) = filter {
            req = req.filter(f);
        }
        if let Some(o) = offset {
            req = req.offset(o);
        }
        let got = self
            .conn
            .call(move |c| {
                let r = req.clone();
                async move { c.scroll(r).await }
            })?
            .map_err(|e| self.gone(error(e)))?;
        Ok((got.result, got.next_page_offset))
    }
}

fn doc_record(p: &RetrievedPoint) -> Result<DocRecord> {
    let rec = get_str(&p.payload, "rec").ok_or_else(|| corrupt("document point"))?;
    serde_json::from_str(&rec).map_err(|_| corrupt("document record"))
}

fn is_doc() -> Condition {
    Condition::matches("k", "d".to_string())
}

impl CollectionStore for QdrantCollection {
    fn docs(&self, ids: &[String]) -> Result<Vec<Option<DocRecord>>> {
        let points = self.get(ids.iter().map(|d| doc_point(d)).collect(), &["rec"])?;
        let mut by_id = HashMap::new();
        for p in &points {
            let rec = doc_record(p)?;
            by_id.insert(rec.id.clone(), rec);
        }
        Ok(ids.iter().map(|id| by_id.get(id).cloned()).collect())
    }

    fn text(&self, id: &str) -> Result<Option<String>> {
        let points = self.get(vec![doc_point(id)], &["text"])?;
        Ok(points.first().and_then(|p| get_str(&p.payload, "text")))
    }

    fn chunks(&self, ids: &[u64]) -> Result<Vec<Option<ChunkRecord>>> {
        Ok(self.read_chunks(ids, &["d", "v"])?.0)
    }

    fn chunks_with_docs(&self, ids: &[u64]) -> Result<ChunksWithDocs> {
        let (chunks, doc_points) = self.read_chunks(ids, &["d", "v", "rec"])?;
        let mut docs = HashMap::new();
        for p in &doc_points {
            let rec = doc_record(p)?;
            docs.insert(rec.id.clone(), rec);
        }
        Ok((chunks, docs))
    }

    fn version_keys(&self, n: usize) -> Result<Vec<u64>> {
        self.fresh_keys(n)
    }

    fn commit(
        &self,
        upserts: &[NewDocument],
        deletes: &[String],
        _documents: i64,
        new_keys: &Schema,
        side: Option<&SideWrites>,
    ) -> Result<Op> {
        self.write(upserts, deletes, new_keys, side)
    }

    fn lexical(
        &self,
        query: &str,
        depth: usize,
        filter: &Filter,
        title_boost: f32,
    ) -> Result<Ranked> {
        match self.lexical_request(query, title_boost, depth, filter)? {
            Some(lexical) if depth > 0 => Ok(self.query(vec![lexical])?.remove(0)),
            _ => Ok(Vec::new()),
        }
    }

    fn dense(
        &self,
        q: &[f32],
        depth: usize,
        filter: &Filter,
        plan: DensePlan,
        _exact_limit: usize,
    ) -> Result<Ranked> {
        if depth == 0 {
            return Ok(Vec::new());
        }
        let dense = self.dense_request(q, depth, filter, plan);
        Ok(self.query(vec![dense])?.remove(0))
    }

    /// Both lists as two concurrent queries, one visibility check.
    fn hybrid(
        &self,
        query: &str,
        title_boost: f32,
        q: &[f32],
        depth: usize,
        filter: &Filter,
        plan: DensePlan,
    ) -> Option<Result<(Ranked, Ranked)>> {
        let both = || -> Result<(Ranked, Ranked)> {
            if depth == 0 {
                return Ok((Vec::new(), Vec::new()));
            }
            let dense = self.dense_request(q, depth, filter, plan);
            let Some(lexical) = self.lexical_request(query, title_boost, depth, filter)? else {
                return Ok((Vec::new(), self.query(vec![dense])?.remove(0)));
            };
            let mut lists = self.query(vec![lexical, dense])?;
            let dense = lists.pop().unwrap_or_default();
            Ok((lists.pop().unwrap_or_default(), dense))
        };
        Some(both())
    }

    /// Scrolls the document points in Qdrant's point order; a page token is the point id the
    /// next page starts at.
    fn scan(&self, filter: &Filter, after: Option<&str>, limit: usize) -> Result<Scan> {
        let offset = match after {
            None => None,
            Some(a) => {
                let ok = a.len() == 36 && a.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
                if !ok {
                    return Err(Error::invalid(format!(
                        "page token position {} is not one of this collection's (Qdrant backend)",
                        quote(a)
                    )));
                }
                Some(PointId::from(a.to_string()))
            }
        };
        let limit = limit.clamp(1, u32::MAX as usize) as u32;
        let (points, next) = self.scroll(
            filter::translate(filter, vec![is_doc()]),
            offset,
            limit,
            &["rec"],
        )?;
        let docs = points.iter().map(doc_record).collect::<Result<_>>()?;
        Ok(Scan {
            docs,
            next: uuid_of(&next),
        })
    }

    fn ids_from_source(&self, source: &str) -> Result<Vec<String>> {
        let filter =
            qdrant::Filter::must([is_doc(), Condition::matches("src", source.to_string())]);
        let mut out = Vec::new();
        let mut offset = None;
        loop {
            let (points, next) = self.scroll(Some(filter.clone()), offset, SCROLL_PAGE, &["d"])?;
            out.extend(points.iter().filter_map(|p| get_str(&p.payload, "d")));
            match next {
                Some(n) => offset = Some(n),
                None => break,
            }
        }
        out.sort();
        Ok(out)
    }

    fn counts(&self) -> Result<(u64, u64)> {
        Ok((self.count("d")?, self.count("c")?))
    }

    fn shared_schema(&self) -> Result<Option<Schema>> {
        Ok(Some(super::schema_of(&self.metadata()?)))
    }
}
