//! Search settings changed the way generations are: proposed, measured and adopted only when
//! the eval gate holds; and found by a small grid search that never reports the split it
//! tuned on.
//!
//! - `adopt_settings(collection, split)` runs the split on the collection with its adopted
//!   settings and with the proposed ones (`engine/search_settings.rs`), compares them query by
//!   query ([`super::compare`]) and adopts the proposal only if no primary metric is worse
//!   beyond its noise. The decision is recorded with the collection, as a promotion's is.
//! - `tune(collection, tune_split, check_split)` evaluates every setting of a grid
//!   ([`default_grid`]: fusion method, weights or RRF k, candidate depth) on `tune_split`, takes
//!   the best by nDCG@10, and proposes it only if it is not the adopted setting, scored higher
//!   on `tune_split`, and holds against the adopted one on `check_split` (which must be another
//!   split). The check is recorded. Adopting the proposal is then a separate, gated step.

use std::sync::Arc;

use super::compare::{Comparison, Gate};
use super::gate::{Action, GateRecord};
use super::run::{EvalQuery, RunSpec};
use crate::engine::{Cancel, Engine};
use crate::error::{quote, Error, Result};
use crate::retrieve::{Fusion, Mode, SearchSettings};

/// Most settings one tuning evaluates.
pub const MAX_GRID: usize = 64;

/// The grid `quarry tune` searches: weighted fusion with the lexical weight from 0.3 to 0.8
/// (dense weight the rest), RRF with k in {10, 30, 60, 100}, each at 100, 200 and 400
/// candidates per retriever: 30 settings.
pub fn default_grid() -> Vec<SearchSettings> {
    let mut fusions: Vec<Fusion> = (3..=8)
        .map(|l| Fusion::Weighted {
            lexical_weight: l as f32 / 10.0,
            dense_weight: (10 - l) as f32 / 10.0,
        })
        .collect();
    fusions.extend([10.0, 30.0, 60.0, 100.0].map(Fusion::rrf));
    let mut out = Vec::new();
    for candidates in [100, 200, 400] {
        out.extend(fusions.iter().map(|&fusion| SearchSettings {
            fusion,
            candidates,
            ..Default::default()
        }));
    }
    out
}

/// What a tuning found.
#[derive(Debug, Clone)]
pub struct TuneOutcome {
    /// Every setting with its nDCG@10 on the tuning split, best first.
    pub grid: Vec<(SearchSettings, f64)>,
    pub adopted: SearchSettings,
    /// The adopted setting's nDCG@10 on the tuning split.
    pub adopted_score: f64,
    pub best: SearchSettings,
    /// The best against the adopted setting on the check split (recorded).
    pub check: GateRecord,
    /// Whether the best was stored as the collection's proposal.
    pub proposed: bool,
}

/// A hybrid run with settings `s` (named by them), or with the collection's (`None`).
fn run(name: String, s: Option<SearchSettings>) -> RunSpec {
    RunSpec {
        name,
        mode: Mode::Hybrid,
        fusion: s.map(|s| s.fusion),
        candidates: s.map(|s| s.candidates),
        aggregation: s.map(|s| s.aggregation),
        title_boost: 0.0,
        filter: crate::filter::Filter::all(),
        collection: None,
    }
}

fn record(
    action: Action,
    collection: &str,
    split: (&str, &str),
    settings: (SearchSettings, SearchSettings),
    gate: &Gate,
    c: &Comparison,
) -> GateRecord {
    let verdict = gate.judge(c);
    let (wins, losses) = super::gate::biggest(c);
    GateRecord {
        action,
        alias: String::new(),
        baseline: collection.to_string(),
        candidate: collection.to_string(),
        switched: false,
        caught_up: 0,
        split: split.0.to_string(),
        split_owner: split.1.to_string(),
        run: format!("{} -> {}", settings.0.label(), settings.1.label()),
        queries: c.queries,
        primary: gate.primary.iter().map(|m| m.to_string()).collect(),
        alpha: gate.alpha,
        holds: verdict.holds,
        worse: verdict.worse.iter().map(|m| m.to_string()).collect(),
        metrics: c.metrics.clone(),
        wins,
        losses,
        decided_unix_ms: crate::engine::now_ms(),
    }
}

impl Engine {
    /// The split's queries (attached to `collection` or to what it is an alias of) and the
    /// collection's name and adopted settings. Blocking.
    fn tuning_inputs(&self, name: &str, split: &str) -> Result<(String, String, Vec<EvalQuery>)> {
        let collection = self.collection(name)?.record().name.clone();
        let (info, queries) = self.eval_split(name, split)?;
        Ok((collection, info.owner, queries))
    }

    /// The adopted settings against `other` on the queries: (baseline run, candidate run)
    /// compared.
    async fn settings_comparison(
        &self,
        collection: &str,
        queries: &[EvalQuery],
        other: SearchSettings,
        cancel: &Cancel,
    ) -> Result<Comparison> {
        let runs = [
            run("adopted".into(), None),
            run("candidate".into(), Some(other)),
        ];
        let pair = [("adopted".to_string(), "candidate".to_string())];
        let outcome = self
            .evaluate(collection, queries, &runs, 0, &pair, &mut |_, _| {}, cancel)
            .await?;
        outcome
            .comparisons
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("the evaluation returned no comparison"))
    }

    /// Measures the proposal against the adopted settings on `split` and adopts it if the
    /// gate holds; the decision is recorded with the collection either way.
    pub async fn adopt_settings(
        self: &Arc<Self>,
        name: &str,
        split: &str,
        gate: &Gate,
        cancel: &Cancel,
    ) -> Result<GateRecord> {
        let (engine, n, sp) = (self.clone(), name.to_string(), split.to_string());
        let (collection, owner, queries, adopted, proposed) = crate::engine::blocking(move || {
            let (c, owner, queries) = engine.tuning_inputs(&n, &sp)?;
            let adopted = engine.search_settings(&c)?;
            let proposed = engine.proposed_settings(&c)?;
            Ok((c, owner, queries, adopted, proposed))
        })
        .await?;
        let proposed = proposed.ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "{} has no proposed search settings: propose some first (or run a tuning)",
                quote(&collection)
            ))
        })?;
        let c = self
            .settings_comparison(&collection, &queries, proposed, cancel)
            .await?;
        let mut r = record(
            Action::Adopt,
            &collection,
            (split, &owner),
            (adopted, proposed),
            gate,
            &c,
        );
        let engine = self.clone();
        crate::engine::blocking(move || {
            if r.holds {
                engine.adopt_settings_now(&r.candidate, proposed)?;
                r.switched = true;
            }
            engine.record_gate(&r.candidate, &r)?;
            Ok(r)
        })
        .await
    }

    /// A grid search on `tune_split`, checked on `check_split` (see the module docs).
    pub async fn tune(
        self: &Arc<Self>,
        name: &str,
        (tune_split, check_split): (&str, &str),
        grid: Vec<SearchSettings>,
        gate: &Gate,
        cancel: &Cancel,
    ) -> Result<TuneOutcome> {
        if tune_split == check_split {
            return Err(Error::invalid(
                "the check split must not be the split tuned on: nothing is reported on the split it was tuned on",
            ));
        }
        if grid.is_empty() || grid.len() > MAX_GRID {
            return Err(Error::invalid(format!(
                "a grid of {} settings: use 1-{MAX_GRID}",
                grid.len()
            )));
        }
        for s in &grid {
            self.check_settings(s)?;
        }
        let (engine, n) = (self.clone(), name.to_string());
        let (tune_q, check_q) = (tune_split.to_string(), check_split.to_string());
        let (collection, owner, tuning, checking, adopted) = crate::engine::blocking(move || {
            let (c, _, tuning) = engine.tuning_inputs(&n, &tune_q)?;
            let (_, owner, checking) = engine.tuning_inputs(&n, &check_q)?;
            let adopted = engine.search_settings(&c)?;
            Ok((c, owner, tuning, checking, adopted))
        })
        .await?;
        // The adopted setting first, then the grid, in evaluations of at most 16 runs.
        let mut candidates = vec![adopted];
        candidates.extend(grid.into_iter().filter(|s| *s != adopted));
        let mut scored: Vec<(SearchSettings, f64)> = Vec::with_capacity(candidates.len());
        for part in candidates.chunks(super::run::MAX_RUNS) {
            let runs: Vec<RunSpec> = part
                .iter()
                .enumerate()
                .map(|(i, s)| run(format!("s{}", scored.len() + i), Some(*s)))
                .collect();
            let pairs: Vec<(String, String)> = Vec::new();
            let outcome = self
                .evaluate(
                    &collection,
                    &tuning,
                    &runs,
                    0,
                    &pairs,
                    &mut |_, _| {},
                    cancel,
                )
                .await?;
            scored.extend(
                part.iter()
                    .zip(&outcome.runs)
                    .map(|(s, r)| (*s, r.mean.ndcg_10)),
            );
        }
        let adopted_score = scored[0].1;
        // Best first; ties keep the earlier (the adopted setting first).
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        let (best, best_score) = scored[0];
        let c = self
            .settings_comparison(&collection, &checking, best, cancel)
            .await?;
        let check = record(
            Action::Tune,
            &collection,
            (check_split, &owner),
            (adopted, best),
            gate,
            &c,
        );
        let proposed = best != adopted && best_score > adopted_score && check.holds;
        let engine = self.clone();
        let check = crate::engine::blocking(move || {
            if proposed {
                engine.propose_settings(&check.candidate, best)?;
            }
            engine.record_gate(&check.candidate, &check)?;
            Ok(check)
        })
        .await?;
        Ok(TuneOutcome {
            grid: scored,
            adopted,
            adopted_score,
            best,
            check,
            proposed,
        })
    }
}

#[cfg(test)]
#[path = "tune_tests.rs"]
pub(super) mod tests;
