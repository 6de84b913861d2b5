//! Evaluating a live collection: run every query in every configuration, score the rankings
//! with [`metrics`](super::metrics), and explain misses.
//!
//! Rankings are at document level (`group_by_document`: a document's score is its best chunk's).
//! For every judged-relevant document a run misses in its top 10, the diagnostics give the rank
//! that the lexical and the dense retriever alone gave it, so a user can see which side lost it.

use std::collections::HashMap;
use std::time::Instant;

use super::compare::{self, Comparison};
use super::metrics::{self, QueryMetrics};
use crate::engine::{Cancel, Engine};
use crate::error::{quote, Error, Result};
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
    /// `None`: the collection's setting.
    pub fusion: Option<Fusion>,
    /// Candidates per retriever: `None` the collection's setting; 0 (here or there) the
    /// evaluation's depth. A run of settings names theirs, 0 included, so a setting of 0
    /// is measured as itself, not as whatever the collection has.
    pub candidates: Option<usize>,
    /// How a document's chunks score it; `None`: the collection's setting.
    pub aggregation: Option<crate::retrieve::Aggregation>,
    /// BM25 title-field boost (0: none).
    pub title_boost: f32,
    /// Only documents passing this filter are ranked (the single-retriever diagnostics that
    /// explain misses stay unfiltered).
    pub filter: crate::filter::Filter,
    /// The collection (or alias) this run searches instead of the evaluation's: two
    /// generations of a collection compared in one evaluation.
    pub collection: Option<String>,
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
            ["lexical"] => (Mode::Lexical, None),
            ["dense"] => (Mode::Dense, None),
            ["hybrid"] => (Mode::Hybrid, None),
            ["hybrid-rrf", k] => (
                Mode::Hybrid,
                Some(Fusion::Rrf {
                    k: num(k)?,
                    lexical_weight: 1.0,
                    dense_weight: 1.0,
                }),
            ),
            ["hybrid-weighted", l, d] => (
                Mode::Hybrid,
                Some(Fusion::Weighted {
                    lexical_weight: num(l)?,
                    dense_weight: num(d)?,
                }),
            ),
            _ => return Err(bad()),
        };
        Ok(RunSpec {
            name: spec.replace(':', "-").replace("@title=", "-title"),
            mode,
            fusion,
            candidates: None,
            aggregation: None,
            title_boost,
            filter: crate::filter::Filter::all(),
            collection: None,
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
    /// The paired comparisons asked for ([`comparison_pairs`]).
    pub comparisons: Vec<Comparison>,
}

/// INVALID_ARGUMENT when `queries` are over the limits of one evaluation (`max_eval_queries`,
/// `max_eval_judgments`); else their number of judgments. An attached split (`sets.rs`) is
/// held to the same limits, since it is run as one evaluation.
pub fn check_size(limits: &crate::engine::Limits, queries: &[EvalQuery]) -> Result<usize> {
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
    Ok(judgments)
}

/// Candidates per retriever for a run: its own (`Some`), else the collection's `adopted`;
/// 0 is the evaluation's `depth`, and no run ranks fewer than `depth`.
pub fn run_candidates(run: Option<usize>, adopted: usize, depth: usize) -> usize {
    match run.unwrap_or(adopted) {
        0 => depth,
        n => n.max(depth),
    }
}

/// Most run configurations in one evaluation.
pub const MAX_RUNS: usize = 16;

/// Most comparisons in one evaluation (each resamples every query 20,000 times).
pub const MAX_COMPARISONS: usize = 16;

/// The comparisons `compare` names (baseline, candidate run names) as indices into `runs`;
/// none named: every run after the first against the first. INVALID_ARGUMENT for a name no
/// run has or two runs share, a run compared with itself, or too many comparisons.
pub fn comparison_pairs(
    runs: &[RunSpec],
    compare: &[(String, String)],
) -> Result<Vec<(usize, usize)>> {
    if compare.is_empty() {
        return Ok((1..runs.len()).map(|i| (0, i)).collect());
    }
    if compare.len() > MAX_COMPARISONS {
        return Err(Error::invalid(format!(
            "{} comparisons, over the limit of {MAX_COMPARISONS}",
            compare.len()
        )));
    }
    let index = |name: &str| -> Result<usize> {
        let mut found = runs.iter().enumerate().filter(|(_, r)| r.name == name);
        match (found.next(), found.next()) {
            (Some((i, _)), None) => Ok(i),
            (None, _) => Err(Error::invalid(format!(
                "a comparison names run {}, which the request does not have",
                quote(name)
            ))),
            (Some(_), Some(_)) => Err(Error::invalid(format!(
                "two runs are named {}: runs that are compared need names of their own",
                quote(name)
            ))),
        }
    };
    compare
        .iter()
        .map(|(a, b)| {
            let pair = (index(a)?, index(b)?);
            if pair.0 == pair.1 {
                return Err(Error::invalid(format!(
                    "a comparison compares run {} with itself",
                    quote(a)
                )));
            }
            Ok(pair)
        })
        .collect()
}

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
    /// Runs `queries` in every configuration of `runs` against `collection` (a run that
    /// names its own collection searches that one), then the comparisons `compare` names
    /// ([`comparison_pairs`]). `progress` is called after each query with (done, total) over
    /// all runs.
    #[allow(clippy::too_many_arguments)]
    pub async fn evaluate(
        &self,
        collection: &str,
        queries: &[EvalQuery],
        runs: &[RunSpec],
        depth: usize,
        compare: &[(String, String)],
        progress: &mut (dyn FnMut(usize, usize) + Send),
        cancel: &Cancel,
    ) -> Result<EvalOutcome> {
        check_size(&self.config().limits, queries)?;
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
        let pairs = comparison_pairs(&runs, compare)?;
        // Every collection resolved once: an alias switched mid-run does not mix two
        // collections' rankings.
        let base = self.collection(collection)?.record().name.clone();
        let run_targets: Vec<String> = runs
            .iter()
            .map(|r| match &r.collection {
                Some(c) => Ok(self.collection(c)?.record().name.clone()),
                None => Ok(base.clone()),
            })
            .collect::<Result<_>>()?;
        let mut targets: Vec<&str> = Vec::new();
        for t in &run_targets {
            if !targets.contains(&t.as_str()) {
                targets.push(t);
            }
        }
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
        // Single-retriever rankings of each collection, for diagnosing misses in every run.
        let total = judged.len() * (runs.len() + 2 * targets.len());
        let mut done = 0;
        let rank_one = |target: &str,
                        mode: Mode,
                        fusion: Option<Fusion>,
                        candidates: usize,
                        aggregation: Option<crate::retrieve::Aggregation>,
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
                candidates,
                aggregation,
                title_boost,
                ..Default::default()
            };
            let target = target.to_string();
            async move {
                // The caller may have gone: stop between queries.
                cancel.check()?;
                let started = Instant::now();
                let outcome = self.search(&target, params).await?;
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
        // Per collection: each query's lexical and dense rankings.
        type Singles = (Vec<Vec<(String, f64)>>, Vec<Vec<(String, f64)>>);
        let mut singles: HashMap<&str, Singles> = HashMap::new();
        for &target in &targets {
            let (mut lexical, mut dense) = (
                Vec::with_capacity(judged.len()),
                Vec::with_capacity(judged.len()),
            );
            for q in &judged {
                let all = crate::filter::Filter::all();
                let one = |mode| rank_one(target, mode, None, depth, None, 0.0, all.clone(), q);
                lexical.push(one(Mode::Lexical).await?.0);
                done += 1;
                progress(done, total);
                dense.push(one(Mode::Dense).await?.0);
                done += 1;
                progress(done, total);
            }
            singles.insert(target, (lexical, dense));
        }
        let mut out = Vec::with_capacity(runs.len());
        for (spec, target) in runs.into_iter().zip(&run_targets) {
            let (lexical, dense) = singles
                .get(target.as_str())
                .ok_or_else(|| Error::internal("no diagnostics for a run's collection"))?;
            let adopted = match spec.candidates {
                None => self.search_settings(target)?.candidates,
                Some(_) => 0,
            };
            let candidates = run_candidates(spec.candidates, adopted, depth);
            let mut queries_out = Vec::with_capacity(judged.len());
            let mut latencies = Vec::with_capacity(judged.len());
            for (i, q) in judged.iter().enumerate() {
                let (ranking, ms) = rank_one(
                    target,
                    spec.mode,
                    spec.fusion,
                    candidates,
                    spec.aggregation,
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
        cancel.check()?;
        // The resamplings are CPU work: off the async threads.
        let (runs, comparisons) = tokio::task::spawn_blocking(move || {
            let comparisons = pairs
                .iter()
                .map(|&(a, b)| compare::compare(&out[a], &out[b]))
                .collect();
            (out, comparisons)
        })
        .await
        .map_err(|e| Error::internal(format!("comparison task failed: {e}")))?;
        Ok(EvalOutcome {
            runs,
            skipped_queries,
            comparisons,
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
            Some(Fusion::Weighted {
                lexical_weight: 0.6,
                dense_weight: 0.4
            })
        );
        let r = RunSpec::parse("hybrid-rrf:20").unwrap();
        assert!(matches!(r.fusion, Some(Fusion::Rrf { k, .. }) if k == 20.0));
        assert_eq!(
            RunSpec::parse("hybrid").unwrap().fusion,
            None,
            "the collection's"
        );
        let t = RunSpec::parse("lexical@title=0.5").unwrap();
        assert_eq!((t.name.as_str(), t.title_boost), ("lexical-title0.5", 0.5));
        assert!(RunSpec::parse("hybrid-magic").is_err());
        assert!(RunSpec::parse("hybrid-rrf:x").is_err());
    }

    #[test]
    fn comparisons_name_runs_of_their_own() {
        let runs: Vec<RunSpec> = ["lexical", "dense", "hybrid"]
            .iter()
            .map(|r| RunSpec::parse(r).unwrap())
            .collect();
        assert_eq!(comparison_pairs(&runs, &[]).unwrap(), vec![(0, 1), (0, 2)]);
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            comparison_pairs(&runs, &[pair("hybrid", "dense")]).unwrap(),
            vec![(2, 1)]
        );
        let e = comparison_pairs(&runs, &[pair("hybrid", "bm42")]).unwrap_err();
        assert!(e.to_string().contains("\"bm42\""), "{e}");
        assert!(comparison_pairs(&runs, &[pair("dense", "dense")]).is_err());
        let twice = vec![runs[0].clone(), runs[0].clone()];
        assert!(comparison_pairs(&twice, &[pair("lexical", "lexical")]).is_err());
        let many = vec![pair("lexical", "dense"); MAX_COMPARISONS + 1];
        assert!(comparison_pairs(&runs, &many).is_err());
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
