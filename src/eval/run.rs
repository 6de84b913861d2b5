//! Evaluating a live collection: run every query in every configuration, score the rankings
//! with [`metrics`](super::metrics), and explain misses.
//!
//! Rankings are at document level (`group_by_document`: a document's score is its best chunk's).
//! For every judged-relevant document a run misses in its top 10, the diagnostics give the rank
//! that the lexical and the dense retriever alone gave it, so a user can see which side lost it.

use std::collections::HashMap;
use std::time::Instant;

use super::metrics::{self, QueryMetrics};
use crate::engine::{Cancel, Engine};
use crate::error::{Error, Result};
use crate::retrieve::{Fusion, Mode, SearchParams};

/// A query with its judgments (document id -> grade).
#[derive(Debug, Clone)]
pub struct EvalQuery {
    pub id: String,
    pub text: String,
    pub judgments: HashMap<String, i32>,
}

/// One configuration to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    pub name: String,
    pub mode: Mode,
    pub fusion: Fusion,
    /// BM25 title-field boost (0: none).
    pub title_boost: f32,
    /// Only documents passing this filter are ranked (the single-retriever diagnostics that
    /// explain misses stay unfiltered).
    pub filter: crate::filter::Filter,
}

impl RunSpec {
    /// Parses `lexical`, `dense`, `hybrid` (the default fusion), `hybrid-rrf:K` and
    /// `hybrid-weighted:LEXICAL_WEIGHT:DENSE_WEIGHT`, each optionally followed by `@title=W`.
    pub fn parse(spec: &str) -> Result<RunSpec> {
        let bad = || {
            Error::invalid(format!(
                "unknown run {spec:?}: use lexical, dense, hybrid, hybrid-rrf:K or hybrid-weighted:LW:DW, optionally with @title=W"
            ))
        };
        let num = |s: &str| s.parse::<f32>().map_err(|_| bad());
        let (base, title_boost) = match spec.split_once("@title=") {
            Some((base, w)) => (base, num(w)?),
            None => (spec, 0.0),
        };
        let parts: Vec<&str> = base.split(':').collect();
        let (mode, fusion) = match parts.as_slice() {
            ["lexical"] => (Mode::Lexical, Fusion::default()),
            ["dense"] => (Mode::Dense, Fusion::default()),
            ["hybrid"] => (Mode::Hybrid, Fusion::default()),
            ["hybrid-rrf", k] => (
                Mode::Hybrid,
                Fusion::Rrf {
                    k: num(k)?,
                    lexical_weight: 1.0,
                    dense_weight: 1.0,
                },
            ),
            ["hybrid-weighted", l, d] => (
                Mode::Hybrid,
                Fusion::Weighted {
                    lexical_weight: num(l)?,
                    dense_weight: num(d)?,
                },
            ),
            _ => return Err(bad()),
        };
        Ok(RunSpec {
            name: spec.replace(':', "-").replace("@title=", "-title"),
            mode,
            fusion,
            title_boost,
            filter: crate::filter::Filter::all(),
        })
    }

    pub fn defaults() -> Vec<RunSpec> {
        DEFAULT_RUNS
            .split(',')
            .filter_map(|s| RunSpec::parse(s).ok())
            .collect()
    }
}

/// A relevant document missing from a run's top 10.
#[derive(Debug, Clone, PartialEq)]
pub struct Missed {
    pub doc_id: String,
    pub grade: i32,
    /// 1-based ranks within `depth`; `None` when not retrieved at all.
    pub lexical_rank: Option<u32>,
    pub dense_rank: Option<u32>,
    pub run_rank: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct QueryOutcome {
    pub query_id: String,
    pub metrics: QueryMetrics,
    pub missed: Vec<Missed>,
    /// Best first, in the order the metrics rank them.
    pub ranking: Vec<(String, f64)>,
    pub latency_ms: f64,
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub spec: RunSpec,
    pub mean: QueryMetrics,
    /// p50, p95, p99 in milliseconds.
    pub latency_ms: [f64; 3],
    pub queries: Vec<QueryOutcome>,
}

#[derive(Debug, Clone)]
pub struct EvalOutcome {
    pub runs: Vec<RunOutcome>,
    pub skipped_queries: usize,
}

/// Most run configurations in one evaluation.
pub const MAX_RUNS: usize = 16;

/// The runs evaluated when none are named: each retriever alone, then the default fusion.
pub const DEFAULT_RUNS: &str = "lexical,dense,hybrid";

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn position(ranking: &[(String, f64)], doc: &str) -> Option<u32> {
    ranking
        .iter()
        .position(|(d, _)| d == doc)
        .map(|i| i as u32 + 1)
}

impl Engine {
    /// Runs `queries` in every configuration of `runs` against `collection`. `progress` is
    /// called after each query with (done, total) over all runs.
    pub async fn evaluate(
        &self,
        collection: &str,
        queries: &[EvalQuery],
        runs: &[RunSpec],
        depth: usize,
        progress: &mut (dyn FnMut(usize, usize) + Send),
        cancel: &Cancel,
    ) -> Result<EvalOutcome> {
        self.collection(collection)?;
        let limits = &self.config().limits;
        if queries.len() > limits.max_eval_queries {
            return Err(Error::invalid(format!(
                "{} queries, over the limit max_eval_queries = {}",
                queries.len(),
                limits.max_eval_queries
            )));
        }
        let judgments: usize = queries.iter().map(|q| q.judgments.len()).sum();
        if judgments > limits.max_eval_judgments {
            return Err(Error::invalid(format!(
                "{judgments} judgments, over the limit max_eval_judgments = {}",
                limits.max_eval_judgments
            )));
        }
        if runs.len() > MAX_RUNS {
            return Err(Error::invalid(format!(
                "{} runs, over the limit of {MAX_RUNS}",
                runs.len()
            )));
        }
        let depth = if depth == 0 { 100 } else { depth };
        if depth > self.config().limits.max_top_k {
            return Err(Error::invalid(format!(
                "depth {depth} is over the limit max_top_k = {}",
                self.config().limits.max_top_k
            )));
        }
        let runs: Vec<RunSpec> = if runs.is_empty() {
            RunSpec::defaults()
        } else {
            runs.to_vec()
        };
        let judged: Vec<&EvalQuery> = queries
            .iter()
            .filter(|q| q.judgments.values().any(|g| *g > 0))
            .collect();
        let skipped_queries = queries.len() - judged.len();
        if judged.is_empty() {
            return Err(Error::invalid(
                "no query has a relevant judgment (grade > 0): nothing to evaluate",
            ));
        }
        // Single-retriever rankings, for diagnosing misses in every run.
        let single = [Mode::Lexical, Mode::Dense];
        let total = judged.len() * (runs.len() + single.len());
        let mut done = 0;
        let rank_one = |mode: Mode,
                        fusion: Fusion,
                        title_boost: f32,
                        filter: crate::filter::Filter,
                        q: &EvalQuery| {
            let params = SearchParams {
                filter,
                query: q.text.clone(),
                top_k: depth,
                mode,
                fusion,
                group_by_document: true,
                candidates: depth,
                title_boost,
                ..Default::default()
            };
            async move {
                // The caller may have gone: stop between queries.
                cancel.check()?;
                let started = Instant::now();
                let outcome = self.search(collection, params).await?;
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                let results: Vec<(String, f64)> = outcome
                    .hits
                    .into_iter()
                    .map(|h| (h.doc_id, h.score as f64))
                    .collect();
                let order: Vec<String> = metrics::ranked(&results)
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                let scores: HashMap<&str, f64> =
                    results.iter().map(|(d, s)| (d.as_str(), *s)).collect();
                let ranking: Vec<(String, f64)> = order
                    .iter()
                    .map(|d| (d.clone(), scores.get(d.as_str()).copied().unwrap_or(0.0)))
                    .collect();
                Ok::<_, Error>((ranking, ms))
            }
        };
        let mut lexical = Vec::with_capacity(judged.len());
        let mut dense = Vec::with_capacity(judged.len());
        for q in &judged {
            let all = crate::filter::Filter::all();
            lexical.push(
                rank_one(Mode::Lexical, Fusion::default(), 0.0, all.clone(), q)
                    .await?
                    .0,
            );
            done += 1;
            progress(done, total);
            dense.push(
                rank_one(Mode::Dense, Fusion::default(), 0.0, all, q)
                    .await?
                    .0,
            );
            done += 1;
            progress(done, total);
        }
        let mut out = Vec::with_capacity(runs.len());
        for spec in runs {
            let mut queries_out = Vec::with_capacity(judged.len());
            let mut latencies = Vec::with_capacity(judged.len());
            for (i, q) in judged.iter().enumerate() {
                let (ranking, ms) = rank_one(
                    spec.mode,
                    spec.fusion,
                    spec.title_boost,
                    spec.filter.clone(),
                    q,
                )
                .await?;
                done += 1;
                progress(done, total);
                latencies.push(ms);
                let m = metrics::evaluate(&ranking, &q.judgments).unwrap_or_default();
                let top10: Vec<&str> = ranking.iter().take(10).map(|(d, _)| d.as_str()).collect();
                let mut missed: Vec<Missed> = q
                    .judgments
                    .iter()
                    .filter(|(d, g)| **g > 0 && !top10.contains(&d.as_str()))
                    .map(|(d, g)| Missed {
                        doc_id: d.clone(),
                        grade: *g,
                        lexical_rank: position(&lexical[i], d),
                        dense_rank: position(&dense[i], d),
                        run_rank: position(&ranking, d),
                    })
                    .collect();
                missed.sort_by(|a, b| b.grade.cmp(&a.grade).then(a.doc_id.cmp(&b.doc_id)));
                queries_out.push(QueryOutcome {
                    query_id: q.id.clone(),
                    metrics: m,
                    missed,
                    ranking,
                    latency_ms: ms,
                });
            }
            latencies.sort_by(f64::total_cmp);
            let per: Vec<QueryMetrics> = queries_out.iter().map(|q| q.metrics).collect();
            out.push(RunOutcome {
                mean: metrics::mean(&per),
                latency_ms: [
                    percentile(&latencies, 0.5),
                    percentile(&latencies, 0.95),
                    percentile(&latencies, 0.99),
                ],
                spec,
                queries: queries_out,
            });
        }
        Ok(EvalOutcome {
            runs: out,
            skipped_queries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_specs_parse() {
        assert_eq!(RunSpec::parse("dense").unwrap().mode, Mode::Dense);
        let w = RunSpec::parse("hybrid-weighted:0.6:0.4").unwrap();
        assert_eq!(w.name, "hybrid-weighted-0.6-0.4");
        assert_eq!(
            w.fusion,
            Fusion::Weighted {
                lexical_weight: 0.6,
                dense_weight: 0.4
            }
        );
        let r = RunSpec::parse("hybrid-rrf:20").unwrap();
        assert!(matches!(r.fusion, Fusion::Rrf { k, .. } if k == 20.0));
        let t = RunSpec::parse("lexical@title=0.5").unwrap();
        assert_eq!((t.name.as_str(), t.title_boost), ("lexical-title0.5", 0.5));
        assert!(RunSpec::parse("hybrid-magic").is_err());
        assert!(RunSpec::parse("hybrid-rrf:x").is_err());
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
