//! Retrieval metrics with trec_eval's definitions (what pytrec_eval, BEIR and ranx report).
//!
//! - Ranking: a query's results are ordered by score, highest first; **ties are broken by
//!   document id in descending (reverse lexicographic) order**, as trec_eval does. The order in
//!   which results were produced does not matter, only their scores.
//! - nDCG@k: linear gain (the qrels grade), discount `log2(rank + 1)`; the ideal ranking sorts
//!   every judged grade of the query (positive grades only) in descending order.
//! - Recall@k: relevant (grade > 0) documents in the top k over all relevant documents.
//! - MRR@k: reciprocal rank of the first relevant document within the top k, else 0.
//! - MAP@k: sum of precision at each relevant document's rank within the top k, divided by the
//!   number of relevant documents.
//!
//! Queries without any relevant judgment are skipped (trec_eval cannot score them either).

use std::collections::HashMap;

/// query id -> document id -> grade.
pub type Qrels = HashMap<String, HashMap<String, i32>>;

/// One query's results: (document id, score), in any order.
pub type Results = [(String, f64)];

/// Orders results by score descending, ties by document id descending.
///
/// ```
/// let results = [("a".to_string(), 1.0), ("b".to_string(), 1.0), ("c".to_string(), 2.0)];
/// assert_eq!(quarry::eval::metrics::ranked(&results), vec!["c", "b", "a"]);
/// ```
pub fn ranked(results: &Results) -> Vec<&str> {
    let mut v: Vec<&(String, f64)> = results.iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    v.into_iter().map(|(d, _)| d.as_str()).collect()
}

/// Per-query metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueryMetrics {
    pub ndcg_10: f64,
    pub recall_10: f64,
    pub recall_100: f64,
    pub mrr_10: f64,
    pub map_100: f64,
}

pub fn ndcg_at(ranking: &[&str], rels: &HashMap<String, i32>, k: usize) -> f64 {
    let dcg: f64 = ranking
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, d)| {
            let g = rels.get(*d).copied().unwrap_or(0).max(0) as f64;
            g / ((i + 2) as f64).log2()
        })
        .sum();
    let mut ideal: Vec<i32> = rels.values().copied().filter(|g| *g > 0).collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, g)| *g as f64 / ((i + 2) as f64).log2())
        .sum();
    if idcg > 0.0 {
        dcg / idcg
    } else {
        0.0
    }
}

fn relevant(rels: &HashMap<String, i32>) -> usize {
    rels.values().filter(|g| **g > 0).count()
}

fn is_rel(rels: &HashMap<String, i32>, d: &str) -> bool {
    rels.get(d).is_some_and(|g| *g > 0)
}

pub fn recall_at(ranking: &[&str], rels: &HashMap<String, i32>, k: usize) -> f64 {
    let n = relevant(rels);
    if n == 0 {
        return 0.0;
    }
    ranking.iter().take(k).filter(|d| is_rel(rels, d)).count() as f64 / n as f64
}

pub fn mrr_at(ranking: &[&str], rels: &HashMap<String, i32>, k: usize) -> f64 {
    ranking
        .iter()
        .take(k)
        .position(|d| is_rel(rels, d))
        .map_or(0.0, |i| 1.0 / (i + 1) as f64)
}

pub fn map_at(ranking: &[&str], rels: &HashMap<String, i32>, k: usize) -> f64 {
    let n = relevant(rels);
    if n == 0 {
        return 0.0;
    }
    let mut hits = 0;
    let mut sum = 0.0;
    for (i, d) in ranking.iter().take(k).enumerate() {
        if is_rel(rels, d) {
            hits += 1;
            sum += hits as f64 / (i + 1) as f64;
        }
    }
    sum / n as f64
}

/// All metrics for one query, or `None` when the query has no relevant judgment.
pub fn evaluate(results: &Results, rels: &HashMap<String, i32>) -> Option<QueryMetrics> {
    if relevant(rels) == 0 {
        return None;
    }
    let r = ranked(results);
    Some(QueryMetrics {
        ndcg_10: ndcg_at(&r, rels, 10),
        recall_10: recall_at(&r, rels, 10),
        recall_100: recall_at(&r, rels, 100),
        mrr_10: mrr_at(&r, rels, 10),
        map_100: map_at(&r, rels, 100),
    })
}

/// Mean of each metric over queries.
pub fn mean(per_query: &[QueryMetrics]) -> QueryMetrics {
    let n = per_query.len().max(1) as f64;
    let mut m = QueryMetrics::default();
    for q in per_query {
        m.ndcg_10 += q.ndcg_10 / n;
        m.recall_10 += q.recall_10 / n;
        m.recall_100 += q.recall_100 / n;
        m.mrr_10 += q.mrr_10 / n;
        m.map_100 += q.map_100 / n;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rels(pairs: &[(&str, i32)]) -> HashMap<String, i32> {
        pairs.iter().map(|(d, g)| (d.to_string(), *g)).collect()
    }

    fn results(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(d, s)| (d.to_string(), *s)).collect()
    }

    #[test]
    fn hand_computed_graded_example() {
        let q = rels(&[("a", 2), ("b", 1), ("c", 0), ("z", 1)]);
        let r = results(&[("c", 0.9), ("a", 0.8), ("x", 0.7), ("b", 0.6)]);
        let m = evaluate(&r, &q).unwrap();
        // DCG = 0/log2(2) + 2/log2(3) + 0 + 1/log2(5); IDCG = 2/1 + 1/log2(3) + 1/log2(4).
        let dcg = 2.0 / 3f64.log2() + 1.0 / 5f64.log2();
        let idcg = 2.0 + 1.0 / 3f64.log2() + 0.5;
        assert!((m.ndcg_10 - dcg / idcg).abs() < 1e-12);
        assert!((m.recall_10 - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.mrr_10 - 0.5).abs() < 1e-12);
        assert!((m.map_100 - (1.0 / 2.0 + 2.0 / 4.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn ties_break_by_descending_doc_id() {
        let r = results(&[("a", 1.0), ("b", 1.0), ("c", 2.0)]);
        assert_eq!(ranked(&r), vec!["c", "b", "a"]);
        let q = rels(&[("a", 1)]);
        assert!((evaluate(&r, &q).unwrap().mrr_10 - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn queries_without_relevant_documents_are_skipped() {
        assert!(evaluate(&results(&[("a", 1.0)]), &rels(&[("a", 0)])).is_none());
    }
}
