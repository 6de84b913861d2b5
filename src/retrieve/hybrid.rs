//! Hybrid orchestration: from each retriever's candidates to one ranking. Pure functions over
//! plain lists, so every rule is unit-tested without an index.
//!
//! - A single retriever ([`Mode::Lexical`], [`Mode::Dense`]) keeps its own order and raw
//!   scores; hybrid fuses the two lists ([`fuse`]).
//! - With `group_by_document`, each list is first collapsed to its best chunk per document and
//!   fusion runs over *documents*: a document's second chunk must not push other documents down
//!   a retriever's list, and the two retrievers agree on a document even when each prefers
//!   another of its chunks. After fusion each document is mapped back to the chunk chosen by
//!   the retriever that ranked the document higher.
//! - Degradation: when the query cannot be embedded, hybrid search answers lexically with a
//!   warning instead of failing ([`settle_dense`]), as meilisearch's hybrid search does.

use std::collections::{HashMap, HashSet};

use super::{fuse, Aggregation, Fused, Fusion, Mode, RetrieverHit};
use crate::error::{Error, Result};
use crate::store::doc_key;

/// One retriever's candidates: (chunk id, raw score), best first.
pub type Ranked = Vec<(u64, f32)>;

/// Keeps each document's best-ranked chunk, in order.
pub fn best_chunk_per_document(list: Ranked) -> Ranked {
    let mut seen = HashSet::new();
    list.into_iter()
        .filter(|(id, _)| seen.insert(doc_key(*id)))
        .collect()
}

/// One entry per document, its best chunk standing for it, scored by `aggregation`: the best
/// chunk's score ([`Aggregation::Max`]), or the sum of its chunks' scores in this list, the
/// i-th best weighted by `decay^i` ([`Aggregation::Sum`]; a document that matches in several
/// places ranks above one that matches once as well). Best first; equal scores keep the
/// list's order.
pub fn per_document(list: Ranked, aggregation: Aggregation) -> Ranked {
    let decay = match aggregation {
        Aggregation::Max => return best_chunk_per_document(list),
        Aggregation::Sum { decay } => decay,
    };
    // document key -> (position in the output, weight of its next chunk)
    let mut at: HashMap<u64, (usize, f32)> = HashMap::new();
    let mut out: Ranked = Vec::new();
    for (chunk, score) in list {
        match at.get_mut(&doc_key(chunk)) {
            Some((i, w)) => {
                out[*i].1 += *w * score;
                *w *= decay;
            }
            None => {
                at.insert(doc_key(chunk), (out.len(), decay));
                out.push((chunk, score));
            }
        }
    }
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// Decides what the dense side contributes. In hybrid mode an embedding failure degrades the
/// search to lexical: the mode becomes [`Mode::Lexical`] and the warning says why. Any other
/// error, or an embedding failure in dense mode, fails the search.
pub fn settle_dense(mode: Mode, dense: Result<Ranked>) -> Result<(Mode, Ranked, Option<String>)> {
    match dense {
        Ok(list) => Ok((mode, list, None)),
        Err(Error::Embedding(e)) if mode == Mode::Hybrid => {
            tracing::warn!(error = %e, "query embedding failed; answering lexically");
            let warning =
                format!("the query could not be embedded ({e}); results are lexical only");
            Ok((Mode::Lexical, Vec::new(), Some(warning)))
        }
        Err(e) => Err(e),
    }
}

/// A single retriever's list as results: its own order, its raw scores.
fn single(list: &[(u64, f32)], is_lexical: bool) -> Vec<Fused> {
    let mut seen = HashSet::new();
    list.iter()
        .enumerate()
        .filter(|(_, (id, _))| seen.insert(*id))
        .map(|(i, &(chunk_id, score))| {
            let hit = Some(RetrieverHit {
                rank: i as u32 + 1,
                score,
            });
            Fused {
                chunk_id,
                score,
                lexical: if is_lexical { hit } else { None },
                dense: if is_lexical { None } else { hit },
            }
        })
        .collect()
}

/// Combines the candidates of the retrievers that `mode` uses into one ranking, best first.
/// Grouped by document (`group` names how a document's chunks score it: [`per_document`]),
/// there is at most one entry per document.
pub fn combine(
    mode: Mode,
    lexical: Ranked,
    dense: Ranked,
    fusion: Fusion,
    group: Option<Aggregation>,
) -> Vec<Fused> {
    let Some(aggregation) = group else {
        return rank(mode, &lexical, &dense, fusion);
    };
    let lexical = per_document(lexical, aggregation);
    let dense = per_document(dense, aggregation);
    // document key -> (chunk chosen by lexical, chunk chosen by dense)
    let mut chosen: HashMap<u64, (Option<u64>, Option<u64>)> = HashMap::new();
    for (c, _) in &lexical {
        chosen.entry(doc_key(*c)).or_default().0 = Some(*c);
    }
    for (c, _) in &dense {
        chosen.entry(doc_key(*c)).or_default().1 = Some(*c);
    }
    let by_doc = |list: &Ranked| -> Ranked { list.iter().map(|&(c, s)| (doc_key(c), s)).collect() };
    let mut fused = rank(mode, &by_doc(&lexical), &by_doc(&dense), fusion);
    for f in &mut fused {
        let Some(&(lex_chunk, dense_chunk)) = chosen.get(&f.chunk_id) else {
            continue;
        };
        let dense_better = match (f.lexical, f.dense) {
            (Some(l), Some(d)) => d.rank < l.rank,
            (None, Some(_)) => true,
            _ => false,
        };
        let pick = if dense_better {
            dense_chunk.or(lex_chunk)
        } else {
            lex_chunk.or(dense_chunk)
        };
        if let Some(chunk) = pick {
            f.chunk_id = chunk;
        }
    }
    fused
}

fn rank(mode: Mode, lexical: &[(u64, f32)], dense: &[(u64, f32)], fusion: Fusion) -> Vec<Fused> {
    match mode {
        Mode::Hybrid => fuse(lexical, dense, fusion),
        Mode::Lexical => single(lexical, true),
        Mode::Dense => single(dense, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::chunk_id;

    /// Chunk `ordinal` of document `doc`.
    fn c(doc: u64, ordinal: u32) -> u64 {
        chunk_id(doc, ordinal)
    }

    #[test]
    fn single_retriever_keeps_its_order_and_raw_scores() {
        let lexical = vec![(c(1, 0), 9.0), (c(2, 0), 7.5), (c(3, 0), 1.0)];
        let out = combine(
            Mode::Lexical,
            lexical.clone(),
            vec![(c(4, 0), 0.9)],
            Fusion::default(),
            None,
        );
        let got: Vec<(u64, f32)> = out.iter().map(|f| (f.chunk_id, f.score)).collect();
        assert_eq!(got, lexical, "dense candidates are ignored in lexical mode");
        assert!(out.iter().all(|f| f.dense.is_none()));
        assert_eq!(out[1].lexical.unwrap().rank, 2);

        let dense = vec![(c(5, 1), 0.8), (c(6, 0), 0.7)];
        let out = combine(Mode::Dense, Vec::new(), dense, Fusion::rrf(60.0), None);
        assert_eq!(out[0].score, 0.8);
        assert_eq!(out[0].dense.unwrap().rank, 1);
        assert!(out[0].lexical.is_none());
    }

    #[test]
    fn hybrid_fuses_and_explains_both_sides() {
        let lexical = vec![(c(1, 0), 10.0), (c(2, 0), 5.0)];
        let dense = vec![(c(2, 0), 0.9), (c(3, 0), 0.8)];
        let out = combine(Mode::Hybrid, lexical, dense, Fusion::rrf(60.0), None);
        assert_eq!(out[0].chunk_id, c(2, 0));
        assert_eq!(out[0].lexical.unwrap().rank, 2);
        assert_eq!(out[0].dense.unwrap().rank, 1);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn grouping_fuses_documents_and_maps_back_to_the_better_retrievers_chunk() {
        // Lexical likes chunk 0 of document 1, dense likes chunk 3 of the same document and
        // ranks it higher; document 2 has two chunks in the lexical list.
        let lexical = vec![(c(2, 0), 8.0), (c(2, 1), 7.0), (c(1, 0), 6.0)];
        let dense = vec![(c(1, 3), 0.9), (c(3, 0), 0.5)];
        let out = combine(
            Mode::Hybrid,
            lexical,
            dense,
            Fusion::rrf(60.0),
            Some(Aggregation::Max),
        );
        let docs: Vec<u64> = out.iter().map(|f| doc_key(f.chunk_id)).collect();
        assert_eq!(docs.len(), 3, "one entry per document: {docs:?}");
        let one = out.iter().find(|f| doc_key(f.chunk_id) == 1).unwrap();
        assert_eq!(one.chunk_id, c(1, 3), "dense ranked document 1 higher");
        // Document 2's second chunk did not take a lexical rank: document 1 is lexical rank 2.
        assert_eq!(one.lexical.unwrap().rank, 2);
        let two = out.iter().find(|f| doc_key(f.chunk_id) == 2).unwrap();
        assert_eq!(two.chunk_id, c(2, 0));
    }

    #[test]
    fn grouping_in_single_mode_keeps_best_chunk_per_document() {
        let dense = vec![(c(1, 2), 0.9), (c(1, 0), 0.8), (c(2, 0), 0.7)];
        let out = combine(
            Mode::Dense,
            Vec::new(),
            dense,
            Fusion::default(),
            Some(Aggregation::Max),
        );
        let got: Vec<(u64, u32)> = out
            .iter()
            .map(|f| (f.chunk_id, f.dense.unwrap().rank))
            .collect();
        assert_eq!(got, vec![(c(1, 2), 1), (c(2, 0), 2)]);
    }

    #[test]
    fn a_sum_ranks_a_document_that_matches_in_several_places_higher() {
        // Document 1 matches twice, a little below document 2's one match.
        let list = vec![
            (c(2, 0), 1.0),
            (c(1, 0), 0.9),
            (c(1, 4), 0.8),
            (c(3, 0), 0.1),
        ];
        let max = per_document(list.clone(), Aggregation::Max);
        assert_eq!(max, vec![(c(2, 0), 1.0), (c(1, 0), 0.9), (c(3, 0), 0.1)]);
        let sum = per_document(list, Aggregation::Sum { decay: 0.5 });
        assert_eq!(sum, vec![(c(1, 0), 1.3), (c(2, 0), 1.0), (c(3, 0), 0.1)]);
    }

    #[test]
    fn embedding_failure_degrades_hybrid_only() {
        let failed = || Err(Error::Embedding("model down".into()));
        let (mode, list, warning) = settle_dense(Mode::Hybrid, failed()).unwrap();
        assert_eq!(mode, Mode::Lexical);
        assert!(list.is_empty());
        assert!(warning.unwrap().contains("model down"));
        assert!(matches!(
            settle_dense(Mode::Dense, failed()),
            Err(Error::Embedding(_))
        ));
        assert!(matches!(
            settle_dense(Mode::Hybrid, Err(Error::internal("disk"))),
            Err(Error::Internal(_))
        ));
        let (mode, list, warning) = settle_dense(Mode::Hybrid, Ok(vec![(1, 0.5)])).unwrap();
        assert_eq!((mode, list.len(), warning), (Mode::Hybrid, 1, None));
    }
}
