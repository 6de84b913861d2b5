//! Promotion and rollback of an alias, gated by the eval, with every decision recorded.
//!
//! `promote(alias, candidate)` runs the split of the eval set attached to the alias (or to
//! the collection it points to: `sets.rs`) on the generation the alias points to now (the
//! baseline) and on the candidate, in one evaluation (same queries, same run settings), and
//! compares them query by query ([`super::compare`]). The alias switches only if the gate
//! holds: no primary metric worse beyond its noise. The switch names the baseline it expects,
//! so a switch made by someone else during the evaluation is refused ABORTED rather than
//! overwritten.
//!
//! A candidate is usually a re-index that finished a while ago, and the baseline has taken
//! writes since. So the candidate is first brought up to date (`engine/generations.rs`), then
//! measured, and if the gate holds it is caught up once more under the baseline's write lock
//! and switched to before the lock is released, exactly as a re-index switches: no write the
//! baseline acknowledged is missing behind the alias afterwards. Either way the decision and its figures are recorded with the candidate
//! (GetCollection shows a collection's records, newest first).
//!
//! `rollback(alias)` switches the alias back to the generation the last promotion through it
//! replaced (found in the records of the generation it points to now) and records that too.
//! It needs no eval: it restores what served before, which the promotion had measured.
//!
//! Each collection keeps its last [`MAX_RECORDS`] records.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::compare::{Comparison, Gate, MetricDelta, QueryDelta};
use super::run::RunSpec;
use crate::engine::{Cancel, Engine};
use crate::error::{quote, Error, Result};

/// The group of a collection's gate records (items: time of the decision, then a random tag).
pub(super) const GATES: &str = "gates";

/// Records kept per collection (older ones are removed).
pub const MAX_RECORDS: usize = 20;

/// Queries listed as the biggest wins and the biggest losses in a record.
pub const CHANGED_LISTED: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Promote,
    Rollback,
    /// Search settings adopted (or refused) by the gate (`tune.rs`).
    Adopt,
    /// A tuning's check of its best setting on another split (`tune.rs`).
    Tune,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::Rollback => "rollback",
            Action::Adopt => "adopt",
            Action::Tune => "tune",
        }
    }
}

/// A gate decision (or a rollback), as recorded with the collection it was about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateRecord {
    pub action: Action,
    pub alias: String,
    /// What the alias pointed to before.
    pub baseline: String,
    /// What the call asked it to point to (for a rollback: the generation returned to).
    pub candidate: String,
    /// Whether the alias was switched.
    pub switched: bool,
    /// Documents written to or deleted from the candidate to bring it up to date with the
    /// baseline (writes the baseline took after the candidate was built).
    #[serde(default)]
    pub caught_up: u64,
    /// The split measured and the name it is attached to (empty for a rollback).
    pub split: String,
    pub split_owner: String,
    /// The run settings both generations were searched with.
    pub run: String,
    /// Queries paired (with at least one relevant judgment).
    pub queries: usize,
    pub primary: Vec<String>,
    pub alpha: f64,
    pub holds: bool,
    /// The primary metrics worse beyond their noise.
    pub worse: Vec<String>,
    pub metrics: Vec<MetricDelta>,
    /// Biggest nDCG@10 wins and losses of the candidate, at most [`CHANGED_LISTED`] each.
    pub wins: Vec<QueryDelta>,
    pub losses: Vec<QueryDelta>,
    pub decided_unix_ms: u64,
}

/// What `promote` is asked.
#[derive(Debug, Clone)]
pub struct Promotion {
    pub alias: String,
    /// What the caller saw the alias point to (and was authorized for): the promotion is
    /// refused ABORTED if it points elsewhere when it starts or when it switches.
    pub baseline: String,
    pub candidate: String,
    pub split: String,
    pub run: RunSpec,
    pub gate: Gate,
    /// Documents ranked per query (0: the evaluation's default).
    pub depth: usize,
}

/// The biggest nDCG@10 wins and losses of a comparison (`changed` runs from the biggest win
/// to the biggest loss).
pub(super) fn biggest(c: &Comparison) -> (Vec<QueryDelta>, Vec<QueryDelta>) {
    let wins = c.changed.iter().filter(|d| d.b > d.a);
    let losses = c.changed.iter().rev().filter(|d| d.b < d.a);
    (
        wins.take(CHANGED_LISTED).cloned().collect(),
        losses.take(CHANGED_LISTED).cloned().collect(),
    )
}

fn corrupt(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("corrupt gate record: {e}"))
}

impl Engine {
    /// The records kept with `collection`, newest first. Blocking.
    pub fn gate_records(&self, collection: &str) -> Result<Vec<GateRecord>> {
        let mut out: Vec<GateRecord> = self
            .record_list(collection, GATES)?
            .into_iter()
            .map(|(_, v)| serde_json::from_str(&v).map_err(corrupt))
            .collect::<Result<_>>()?;
        out.reverse();
        Ok(out)
    }

    /// Records `r` with `collection`, keeping the last [`MAX_RECORDS`]. Blocking.
    pub(crate) fn record_gate(&self, collection: &str, r: &GateRecord) -> Result<()> {
        let item = format!("{:016}-{:08x}", r.decided_unix_ms, rand::random::<u32>());
        let value = serde_json::to_string(r).map_err(corrupt)?;
        self.record_put(collection, GATES, &item, &value)?;
        let items: Vec<String> = self
            .record_list(collection, GATES)?
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        if items.len() > MAX_RECORDS {
            self.record_delete(collection, GATES, &items[..items.len() - MAX_RECORDS])?;
        }
        let outcome = match (r.action, r.switched) {
            (Action::Rollback, _) => "rolled_back",
            (Action::Promote, true) => "promoted",
            (Action::Promote, false) | (Action::Adopt, false) => "refused",
            (Action::Adopt, true) => "adopted",
            (Action::Tune, _) if r.holds => "tune_held",
            (Action::Tune, _) => "tune_refused",
        };
        crate::metrics::global().gate_decisions.inc(&[outcome]);
        Ok(())
    }

    /// Evaluates `p.candidate` against what `p.alias` points to and switches the alias if
    /// the gate holds (see the module docs). The record says what was decided and why.
    pub async fn promote(self: &Arc<Self>, p: Promotion, cancel: &Cancel) -> Result<GateRecord> {
        let now = self.alias_target(&p.alias)?.ok_or_else(|| {
            Error::NotFound(format!(
                "alias {} not found: a promotion switches an existing alias (create it with SetAlias)",
                quote(&p.alias)
            ))
        })?;
        crate::store::check_expected(&p.alias, Some(&now), Some(&p.baseline))?;
        let baseline = now;
        if self.alias_target(&p.candidate)?.is_some() {
            return Err(Error::invalid(format!(
                "{} is an alias: promote a collection",
                quote(&p.candidate)
            )));
        }
        let candidate = self.collection(&p.candidate)?.record().name.clone();
        if candidate == baseline {
            return Err(Error::FailedPrecondition(format!(
                "alias {} already points to {}",
                quote(&p.alias),
                quote(&candidate)
            )));
        }
        let (engine, alias, split) = (self.clone(), p.alias.clone(), p.split.clone());
        let (info, queries) =
            crate::engine::blocking(move || engine.eval_split(&alias, &split)).await?;
        // A candidate built earlier lacks what the baseline took since: measured on the same
        // documents, and switched to only with all of them.
        let mut caught_up = self.catch_up_candidate(&baseline, &candidate).await?;
        let runs = [
            RunSpec {
                name: "baseline".into(),
                collection: Some(baseline.clone()),
                ..p.run.clone()
            },
            RunSpec {
                name: "candidate".into(),
                collection: Some(candidate.clone()),
                ..p.run.clone()
            },
        ];
        let pair = [("baseline".to_string(), "candidate".to_string())];
        let outcome = self
            .evaluate(
                &p.alias,
                &queries,
                &runs,
                p.depth,
                &pair,
                &mut |_, _| {},
                cancel,
            )
            .await?;
        let comparison = outcome
            .comparisons
            .first()
            .ok_or_else(|| Error::internal("the evaluation returned no comparison"))?;
        let verdict = p.gate.judge(comparison);
        let (wins, losses) = biggest(comparison);
        let mut record = GateRecord {
            action: Action::Promote,
            alias: p.alias.clone(),
            baseline: baseline.clone(),
            candidate: candidate.clone(),
            switched: false,
            caught_up: 0,
            split: info.split,
            split_owner: info.owner,
            run: p.run.name.clone(),
            queries: comparison.queries,
            primary: p.gate.primary.iter().map(|m| m.to_string()).collect(),
            alpha: p.gate.alpha,
            holds: verdict.holds,
            worse: verdict.worse.iter().map(|m| m.to_string()).collect(),
            metrics: comparison.metrics.clone(),
            wins,
            losses,
            decided_unix_ms: crate::engine::now_ms(),
        };
        // The switch, as a re-index makes it: under the baseline's write lock, after a last
        // catch-up, so every write the baseline acknowledged is in the candidate, and a write
        // that waited for the lock through the alias is refused ABORTED (`write_via`).
        let _fence = match record.holds {
            true => {
                let fence = self.write_fence(&baseline).await?;
                caught_up += self.catch_up_candidate(&baseline, &candidate).await?;
                Some(fence)
            }
            false => None,
        };
        record.caught_up = caught_up;
        let engine = self.clone();
        crate::engine::blocking(move || {
            if record.holds {
                engine.set_alias(&record.alias, &record.candidate, Some(&record.baseline))?;
                record.switched = true;
            }
            engine.record_gate(&record.candidate, &record)?;
            Ok(record)
        })
        .await
    }

    /// [`Engine::catch_up`] of a candidate, FAILED_PRECONDITION when it cannot be (a
    /// collection of client-given vectors has no model to embed the baseline's texts with).
    async fn catch_up_candidate(self: &Arc<Self>, baseline: &str, candidate: &str) -> Result<u64> {
        self.catch_up(baseline, candidate)
            .await
            .map_err(|e| match e {
                Error::InvalidArgument(m) => Error::FailedPrecondition(format!(
                    "{} cannot be brought up to date with {}: {m}",
                    quote(candidate),
                    quote(baseline)
                )),
                e => e,
            })
    }

    /// Where a rollback of `alias` goes: (what it points to now, the generation the last
    /// promotion through it replaced). Blocking.
    pub fn rollback_target(&self, alias: &str) -> Result<(String, String)> {
        let current = self
            .alias_target(alias)?
            .ok_or_else(|| Error::NotFound(format!("alias {} not found", quote(alias))))?;
        let promoted = self
            .gate_records(&current)?
            .into_iter()
            // A record about this very collection: one restored from a snapshot under another
            // name tells of a promotion of that other collection, not of this one.
            .find(|r| {
                r.action == Action::Promote
                    && r.switched
                    && r.alias == alias
                    && r.candidate == current
            })
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "alias {} points to {}, which no recorded promotion through it put there: nothing to roll back to (switch it with SetAlias)",
                    quote(alias),
                    quote(&current)
                ))
            })?;
        Ok((current, promoted.baseline))
    }

    /// Switches `alias` from `current` back to `target` ([`Engine::rollback_target`]), if it
    /// still points to `current` (else ABORTED), and records it with `target`. Like a
    /// promotion, under `current`'s write lock and after catching `target` up with the
    /// writes `current` took since it was promoted, so the rollback loses none of them.
    pub async fn rollback(
        self: &Arc<Self>,
        alias: &str,
        current: &str,
        target: &str,
    ) -> Result<GateRecord> {
        let _fence = self.write_fence(current).await?;
        let caught_up = self.catch_up_candidate(current, target).await?;
        let record = GateRecord {
            action: Action::Rollback,
            alias: alias.to_string(),
            baseline: current.to_string(),
            candidate: target.to_string(),
            switched: true,
            caught_up,
            split: String::new(),
            split_owner: String::new(),
            run: String::new(),
            queries: 0,
            primary: Vec::new(),
            alpha: 0.0,
            holds: true,
            worse: Vec::new(),
            metrics: Vec::new(),
            wins: Vec::new(),
            losses: Vec::new(),
            decided_unix_ms: crate::engine::now_ms(),
        };
        let (engine, alias, current) = (self.clone(), alias.to_string(), current.to_string());
        crate::engine::blocking(move || {
            engine.set_alias(&alias, &record.candidate, Some(&current))?;
            engine.record_gate(&record.candidate, &record)?;
            Ok(record)
        })
        .await
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
