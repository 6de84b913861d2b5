//! The read calls behind a Qdrant collection's searches and hits: candidate queries (alone,
//! or both lists of a hybrid search as two concurrent calls: a `query_batch` measured slower,
//! Qdrant searching its queries one after the other) and chunk reads, each with the
//! visibility check that keeps only chunks of their document's current version (see
//! `collection.rs`): one lookup of the document points per call, whatever the number of lists.

use std::collections::{HashMap, HashSet};

use qdrant_client::qdrant::{
    self, PointId, QueryPoints, QueryPointsBuilder, RetrievedPoint, ScoredPoint, VectorInput,
};

use super::collection::{corrupt, doc_point, get_int, get_str, num_id, QdrantCollection};
use super::{bm25, error, filter};
use crate::error::Result;
use crate::filter::Filter;
use crate::retrieve::hybrid::Ranked;
use crate::retrieve::DensePlan;
use crate::store::ChunkRecord;

impl QdrantCollection {
    /// The current version of each of these documents (absent: not there).
    pub(super) fn versions(&self, doc_ids: &[String]) -> Result<HashMap<String, i64>> {
        let ids = doc_ids.iter().map(|d| doc_point(d)).collect();
        let mut out = HashMap::new();
        for p in self.get(ids, &["d", "v"])? {
            if let (Some(d), Some(v)) = (get_str(&p.payload, "d"), get_int(&p.payload, "v")) {
                out.insert(d, v);
            }
        }
        Ok(out)
    }

    /// Keeps the candidates whose chunk is its document's current version, in each list
    /// (one lookup of the documents of all of them).
    pub(super) fn current(&self, lists: Vec<Vec<ScoredPoint>>) -> Result<Vec<Ranked>> {
        let docs: Vec<String> = lists
            .iter()
            .flatten()
            .filter_map(|p| get_str(&p.payload, "d"))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let versions = self.versions(&docs)?;
        let keep = |p: ScoredPoint| {
            let id = num_id(&p.id)?;
            let d = get_str(&p.payload, "d")?;
            let v = get_int(&p.payload, "v")?;
            (versions.get(&d) == Some(&v)).then_some((id, p.score))
        };
        Ok(lists
            .into_iter()
            .map(|list| list.into_iter().filter_map(keep).collect())
            .collect())
    }

    /// One nearest-neighbour request on the vector `using`, with the fields `current` needs.
    fn request(
        &self,
        input: VectorInput,
        using: &str,
        depth: usize,
        filter: &Filter,
        exact: bool,
    ) -> QueryPoints {
        let mut req = QueryPointsBuilder::new(&self.name)
            .query(qdrant::Query::new_nearest(input))
            .using(using)
            .limit(depth as u64)
            .with_payload(qdrant::PayloadIncludeSelector {
                fields: vec!["d".into(), "v".into()],
            })
            .read_consistency(self.read_consistency());
        if let Some(f) = filter::translate(filter, Vec::new()) {
            req = req.filter(f);
        }
        if exact {
            req = req.params(qdrant::SearchParamsBuilder::default().exact(true));
        }
        req.build()
    }

    /// The BM25 request for `query` (None when it has no term the index could match).
    pub(super) fn lexical_request(
        &self,
        query: &str,
        title_boost: f32,
        depth: usize,
        filter: &Filter,
    ) -> Result<Option<QueryPoints>> {
        let (indices, values) = bm25::query_vector(query, title_boost)?;
        if indices.is_empty() {
            return Ok(None);
        }
        let input = VectorInput::new_sparse(indices, values);
        Ok(Some(self.request(input, "bm25", depth, filter, false)))
    }

    /// The dense request for the unit vector `q`. Qdrant plans filtered searches by its own
    /// cardinality estimates; `Exact` asks for exact scoring, `Graph` and `Auto` leave it to
    /// Qdrant.
    pub(super) fn dense_request(
        &self,
        q: &[f32],
        depth: usize,
        filter: &Filter,
        plan: DensePlan,
    ) -> QueryPoints {
        let input = VectorInput::new_dense(q.to_vec());
        self.request(input, "dense", depth, filter, plan == DensePlan::Exact)
    }

    /// Runs `requests` side by side, each its own Qdrant query (so Qdrant searches them in
    /// parallel), and keeps their current candidates with one visibility check for all.
    pub(super) fn query(&self, requests: Vec<QueryPoints>) -> Result<Vec<Ranked>> {
        let found = self
            .conn
            .call(move |c| {
                let requests = requests.clone();
                async move {
                    let calls = requests.into_iter().map(|r| {
                        let c = c.clone();
                        async move { c.query(r).await.map(|found| found.result) }
                    });
                    futures::future::try_join_all(calls).await
                }
            })?
            .map_err(|e| self.gone(error(e)))?;
        self.current(found)
    }

    /// Reads chunk points and their documents' points (with `doc_fields`, which include `d`
    /// and `v`): the chunks of current versions (`None` for the others), and the documents.
    pub(super) fn read_chunks(
        &self,
        ids: &[u64],
        doc_fields: &[&str],
    ) -> Result<(Vec<Option<ChunkRecord>>, Vec<RetrievedPoint>)> {
        let points = self.get(
            ids.iter().map(|i| PointId::from(*i)).collect(),
            &["d", "v", "o", "s", "e", "t"],
        )?;
        let docs: Vec<PointId> = points
            .iter()
            .filter_map(|p| get_str(&p.payload, "d"))
            .collect::<HashSet<_>>()
            .into_iter()
            .map(|d| doc_point(&d))
            .collect();
        let doc_points = self.get(docs, doc_fields)?;
        let versions: HashMap<String, i64> = doc_points
            .iter()
            .filter_map(|p| Some((get_str(&p.payload, "d")?, get_int(&p.payload, "v")?)))
            .collect();
        let mut by_id = HashMap::new();
        for p in points {
            let (Some(id), Some(d), Some(v)) = (
                num_id(&p.id),
                get_str(&p.payload, "d"),
                get_int(&p.payload, "v"),
            ) else {
                continue;
            };
            if versions.get(&d) != Some(&v) {
                continue;
            }
            let int = |k: &str| get_int(&p.payload, k).ok_or_else(|| corrupt("chunk point"));
            by_id.insert(
                id,
                ChunkRecord {
                    doc_id: d,
                    ordinal: int("o")? as u32,
                    start: int("s")? as usize,
                    end: int("e")? as usize,
                    text: get_str(&p.payload, "t").unwrap_or_default(),
                },
            );
        }
        Ok((ids.iter().map(|i| by_id.remove(i)).collect(), doc_points))
    }
}
