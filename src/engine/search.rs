//! The read path: validate, fetch candidates from the retrievers the mode needs, combine them
//! (`retrieve::hybrid`, pure), and turn the ranking into hits with text and metadata from sled.
//!
//! In hybrid mode a lone search embeds its query on every core, then runs the two retrievers
//! side by side. Under concurrent load each search keeps to one thread instead
//! (`model::lone_search`). The candidates come from the backend (`backend::CollectionStore`):
//! the embedded one plans dense candidates by filter selectivity, Qdrant plans its own.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::{Collection, Engine, Limits};
use crate::error::{Error, Result};
use crate::model;
use crate::retrieve::hybrid::{self, Ranked};
use crate::retrieve::{Fused, Fusion, Hit, Mode, SearchOutcome, SearchParams};
use crate::store::{doc_key, DocRecord};

impl Engine {
    /// Runs a search.
    pub async fn search(&self, collection: &str, params: SearchParams) -> Result<SearchOutcome> {
        let c = self.collection(collection)?;
        let params = self.with_settings(&c, params)?;
        self.validate_search(&params)?;
        self.searches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let limits = self.config.limits.clone();
        let exact_limit = self.config.index.exact_filter_limit;
        tokio::task::spawn_blocking(move || {
            let _running = model::SearchRunning::start();
            // A collection deleted under a running search: NOT_FOUND, not a storage error.
            c.search_blocking(params, &limits, exact_limit)
                .map_err(|e| c.ensure_live().err().unwrap_or(e))
        })
        .await
        .map_err(|e| Error::internal(format!("search task failed: {e}")))?
    }

    fn validate_search(&self, p: &SearchParams) -> Result<()> {
        let limits = &self.config.limits;
        if p.query.len() > limits.max_query_bytes {
            return Err(Error::invalid(format!(
                "query is {} bytes, over the limit max_query_bytes = {}",
                p.query.len(),
                limits.max_query_bytes
            )));
        }
        if p.query.trim().is_empty() && (p.query_vector.is_none() || p.mode != Mode::Dense) {
            return Err(Error::invalid(
                "query must not be empty (only a dense search with query_vector may omit it)",
            ));
        }
        if p.top_k > limits.max_top_k || p.candidates > limits.max_top_k {
            return Err(Error::invalid(format!(
                "top_k and candidates must be at most max_top_k = {}",
                limits.max_top_k
            )));
        }
        self.check_filter(&p.filter)?;
        if p.offset >= limits.max_top_k {
            return Err(Error::invalid(format!(
                "offset must be below max_top_k = {} (page deeper with a narrower filter)",
                limits.max_top_k
            )));
        }
        if let Some(v) = &p.query_vector {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::invalid(format!(
                    "query_vector[{i}] is {}: every component must be finite",
                    v[i]
                )));
            }
            if v.iter().all(|x| *x == 0.0) {
                return Err(Error::invalid("query_vector must not be all zeros"));
            }
        }
        if let Some(Fusion::Rrf { k, .. }) = p.fusion {
            if !(k >= 0.0 && k.is_finite()) {
                return Err(Error::invalid("RRF k must be a finite number >= 0"));
            }
        }
        if let Some(a) = p.aggregation {
            a.check()?;
        }
        Ok(())
    }
}

impl Collection {
    pub(super) fn search_blocking(
        &self,
        p: SearchParams,
        limits: &Limits,
        exact_limit: usize,
    ) -> Result<SearchOutcome> {
        let started = Instant::now();
        let top_k = if p.top_k == 0 { 10 } else { p.top_k };
        // Pages come from one ranking: the candidate depth depends on top_k and candidates,
        // never on the offset, so the pages of a query on an unchanged collection follow each
        // other without gaps or repeats. Paging stops at the depth.
        let depth = if p.candidates > 0 {
            p.candidates.max(top_k)
        } else {
            (2 * top_k).max(100).min(limits.max_top_k.max(top_k))
        };
        // The last page may be short: it ends at the depth.
        if p.offset > 0 && p.offset >= depth {
            return Err(Error::invalid(format!(
                "offset {} is past the {depth} candidates this search ranks: \
                 set candidates (up to max_top_k = {}) to page deeper",
                p.offset, limits.max_top_k
            )));
        }
        let wanted = (p.offset + top_k).min(depth);
        let filter = self.resolve(&p.filter)?;
        let store = self.store();
        let lexical_side =
            || -> Result<Ranked> { store.lexical(&p.query, depth, &filter, p.title_boost) };
        let dense_from = |q: Result<Vec<f32>>| -> Result<Ranked> {
            store.dense(&q?, depth, &filter, p.dense_plan, exact_limit)
        };
        // A lone hybrid search embeds its query first, on every core (the wide session), then
        // runs the two retrievers side by side. Overlapping the lexical search with the
        // embedding instead had three busy threads on two cores. Under concurrent load each
        // search keeps to one thread: the other core is busy with another search, and the
        // hand-off to rayon's pool costs more than it saves (see `model::lone_search`).
        // A backend that answers both lists in one call (Qdrant) gets them asked together.
        let (lexical, dense) = match p.mode {
            Mode::Lexical => (lexical_side(), Ok(Vec::new())),
            Mode::Dense => (Ok(Vec::new()), dense_from(self.query_vector(&p))),
            Mode::Hybrid => {
                let q = self.query_vector(&p);
                let both = q.as_ref().ok().and_then(|q| {
                    store.hybrid(&p.query, p.title_boost, q, depth, &filter, p.dense_plan)
                });
                match both {
                    Some(both) => {
                        let (lexical, dense) = both?;
                        (Ok(lexical), Ok(dense))
                    }
                    None if model::lone_search() => rayon::join(lexical_side, || dense_from(q)),
                    None => (lexical_side(), dense_from(q)),
                }
            }
        };
        let lexical = lexical?;
        let m = crate::metrics::global();
        m.search_candidates.add(&["lexical"], lexical.len() as f64);
        if let Ok(d) = &dense {
            m.search_candidates.add(&["dense"], d.len() as f64);
        }
        let (mode, dense, warning) = hybrid::settle_dense(p.mode, dense)?;
        let fusion = p.fusion.unwrap_or_default();
        let group = p
            .group_by_document
            .then(|| p.aggregation.unwrap_or_default());
        let fused = hybrid::combine(mode, lexical, dense, fusion, group);
        let total_candidates = fused.len();
        let mut hits = self.hits(fused, wanted + 1, p.group_by_document)?;
        // The next page starts where this one ends, as long as the ranking goes on: the one
        // place that knows the effective top_k and the depth decides it.
        let next_offset = (hits.len() > wanted && wanted < depth).then_some(wanted);
        hits.truncate(wanted);
        let hits = hits.split_off(p.offset.min(hits.len()));
        Ok(SearchOutcome {
            hits,
            mode,
            warning,
            took: started.elapsed(),
            total_candidates,
            next_offset,
        })
    }

    /// The caller's vector (checked and normalized) or the embedded query.
    fn query_vector(&self, p: &SearchParams) -> Result<Vec<f32>> {
        match &p.query_vector {
            Some(v) => {
                if v.len() != self.record.dimension {
                    return Err(Error::invalid(format!(
                        "query_vector has dimension {}, collection {:?} uses {}",
                        v.len(),
                        self.record.name,
                        self.record.dimension
                    )));
                }
                let mut v = v.clone();
                model::normalize(&mut v);
                Ok(v)
            }
            None => self.embedder.embed_query(&p.query),
        }
    }

    /// The first `top_k` entries of a ranking as hits, with text and metadata from the
    /// backend. Chunks deleted or replaced since they were ranked are skipped. Reads in rounds
    /// of about the entries still wanted (one round when nothing changed meanwhile).
    fn hits(&self, fused: Vec<Fused>, top_k: usize, one_per_document: bool) -> Result<Vec<Hit>> {
        let store = self.store();
        let mut hits = Vec::with_capacity(top_k);
        let mut docs: HashMap<String, DocRecord> = HashMap::new();
        let mut seen_docs = HashSet::new();
        let mut rest = fused.into_iter().peekable();
        while hits.len() < top_k && rest.peek().is_some() {
            let want = (top_k - hits.len()).max(1);
            let mut round = Vec::with_capacity(want);
            let mut round_docs = HashSet::new();
            // One chunk per document is taken when grouping, so a round takes only entries
            // of documents not seen yet.
            while round.len() < want {
                let Some(f) = rest.next() else { break };
                if one_per_document && seen_docs.contains(&doc_key(f.chunk_id)) {
                    continue;
                }
                if one_per_document && !round_docs.insert(doc_key(f.chunk_id)) {
                    continue;
                }
                round.push(f);
            }
            let ids: Vec<u64> = round.iter().map(|f| f.chunk_id).collect();
            let (chunks, found) = store.chunks_with_docs(&ids)?;
            docs.extend(found);
            for (f, chunk) in round.into_iter().zip(chunks) {
                if hits.len() >= top_k {
                    break;
                }
                let Some(chunk) = chunk else { continue };
                if one_per_document && !seen_docs.insert(doc_key(f.chunk_id)) {
                    continue;
                }
                let Some(d) = docs.get(&chunk.doc_id) else {
                    continue;
                };
                hits.push(Hit {
                    title: d.title.clone(),
                    metadata: d.metadata.clone(),
                    doc_id: chunk.doc_id,
                    chunk_id: f.chunk_id,
                    ordinal: chunk.ordinal,
                    text: chunk.text,
                    start: chunk.start,
                    end: chunk.end,
                    score: f.score,
                    lexical: f.lexical,
                    dense: f.dense,
                });
            }
        }
        Ok(hits)
    }
}
