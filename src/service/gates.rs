//! Eval sets attached to a collection (put, list, delete) and the gated changes built on
//! them: an alias's (promote, rollback) and a collection's search settings (propose, adopt,
//! tune). See `eval/sets.rs`, `eval/gate.rs` and `eval/tune.rs` for what they do.

use super::eval::run_spec;
use super::{authorize, blocking, row, Service, Touches, EVAL};
use crate::api::{convert, pb};
use crate::auth::Principal;
use crate::engine::Cancel;
use crate::error::{Error, Result};
use crate::eval::compare::{metric_named, Gate, METRICS};
use crate::eval::gate::Promotion;
use crate::eval::run::{EvalQuery, RunSpec};

/// The split a promotion (or an adoption of settings, or a tuning's check) measures when the
/// request names none.
pub const DEFAULT_PROMOTE_SPLIT: &str = "test";

/// The split a tuning searches its grid on when the request names none.
pub const DEFAULT_TUNE_SPLIT: &str = "train";

/// The gate a request asks for: its primary metrics and level, or the defaults.
fn gate(primary: Vec<String>, alpha: Option<f64>) -> Result<Gate> {
    let mut g = Gate::default();
    if !primary.is_empty() {
        g.primary = primary
            .iter()
            .map(|m| {
                metric_named(m).ok_or_else(|| {
                    let known: Vec<&str> = METRICS.iter().map(|(n, _)| *n).collect();
                    Error::invalid(format!(
                        "unknown metric {}: use {}",
                        crate::error::quote(m),
                        known.join(", ")
                    ))
                })
            })
            .collect::<Result<_>>()?;
    }
    if let Some(a) = alpha {
        if !(a > 0.0 && a <= 0.5) {
            return Err(Error::invalid(format!(
                "alpha {a} is out of range: use 0 < alpha <= 0.5"
            )));
        }
        g.alpha = a;
    }
    Ok(g)
}

/// A gate's decision as the reply: `promoted` says whether it changed anything.
fn decision(record: crate::eval::gate::GateRecord) -> pb::PromoteResponse {
    pb::PromoteResponse {
        promoted: record.switched,
        record: Some(convert::gate_record(record)),
    }
}

/// Queries on the wire as the eval takes them.
pub(super) fn eval_queries(queries: Vec<pb::EvalQuery>) -> Vec<EvalQuery> {
    queries
        .into_iter()
        .map(|q| EvalQuery {
            id: q.id,
            text: q.text,
            judgments: q.judgments.into_iter().collect(),
        })
        .collect()
}

impl Service {
    pub async fn put_eval_split(
        &self,
        who: &Principal,
        r: pb::PutEvalSplitRequest,
    ) -> Result<pb::EvalSplit> {
        let op = row(EVAL, "PutEvalSplit")?;
        authorize(who, op, Touches::Named(&[&r.collection]))?;
        let engine = self.engine()?;
        let queries = eval_queries(r.queries);
        let info =
            blocking(move || engine.put_eval_split(&r.collection, &r.split, queries)).await?;
        Ok(convert::eval_split(info))
    }

    pub async fn list_eval_splits(
        &self,
        who: &Principal,
        r: pb::ListEvalSplitsRequest,
    ) -> Result<pb::ListEvalSplitsResponse> {
        let op = row(EVAL, "ListEvalSplits")?;
        authorize(who, op, Touches::Named(&[&r.collection]))?;
        let engine = self.engine()?;
        let splits = blocking(move || engine.eval_splits(&r.collection)).await?;
        Ok(pb::ListEvalSplitsResponse {
            splits: splits.into_iter().map(convert::eval_split).collect(),
        })
    }

    pub async fn delete_eval_split(
        &self,
        who: &Principal,
        r: pb::DeleteEvalSplitRequest,
    ) -> Result<pb::DeleteEvalSplitResponse> {
        let op = row(EVAL, "DeleteEvalSplit")?;
        authorize(who, op, Touches::Named(&[&r.collection]))?;
        let engine = self.engine()?;
        blocking(move || engine.delete_eval_split(&r.collection, &r.split)).await?;
        Ok(pb::DeleteEvalSplitResponse {})
    }

    /// Authorized like SetAlias against what the alias points to now; the promotion is
    /// refused ABORTED if the alias moves before it switches. A caller that leaves stops the
    /// evaluation (the future is dropped) and nothing is switched.
    pub async fn promote(
        &self,
        who: &Principal,
        r: pb::PromoteRequest,
    ) -> Result<pb::PromoteResponse> {
        let op = row(EVAL, "Promote")?;
        let (engine, from) = self.alias_now(&r.alias).await?;
        let to = Some(r.candidate.as_str());
        authorize(
            who,
            op,
            Touches::Alias {
                alias: &r.alias,
                to,
                from: from.as_deref(),
            },
        )?;
        let run = match r.run {
            Some(s) if !s.collection.is_empty() => {
                return Err(Error::invalid(
                    "run.collection must be empty: a promotion runs on the alias's collection and the candidate",
                ))
            }
            Some(s) => run_spec(s)?,
            None => RunSpec::parse("hybrid")?,
        };
        let split = Some(r.split).filter(|s| !s.is_empty());
        let promotion = Promotion {
            baseline: from.unwrap_or_default(),
            alias: r.alias,
            candidate: r.candidate,
            split: split.unwrap_or_else(|| DEFAULT_PROMOTE_SPLIT.to_string()),
            run,
            gate: gate(r.primary, r.alpha)?,
            depth: r.depth as usize,
        };
        Ok(decision(engine.promote(promotion, &Cancel::new()).await?))
    }

    /// Authorized like SetAlias, on the collection the alias points to now and the one it
    /// returns to (server state, so a refusal names neither).
    pub async fn rollback(
        &self,
        who: &Principal,
        r: pb::RollbackRequest,
    ) -> Result<pb::PromoteResponse> {
        let op = row(EVAL, "Rollback")?;
        let (engine, from) = self.alias_now(&r.alias).await?;
        let alias = r.alias.as_str();
        authorize(
            who,
            op,
            Touches::Alias {
                alias,
                to: None,
                from: from.as_deref(),
            },
        )?;
        let (e, a) = (engine.clone(), r.alias.clone());
        let (current, target) = blocking(move || e.rollback_target(&a)).await?;
        let alias = r.alias.as_str();
        authorize(
            who,
            op,
            Touches::Alias {
                alias,
                to: None,
                from: Some(&target),
            },
        )?;
        if from.as_deref() != Some(current.as_str()) {
            return Err(Error::Aborted(format!(
                "alias {} was switched while the rollback started; nothing changed: retry it",
                crate::error::quote(&r.alias)
            )));
        }
        crate::store::check_expected(&r.alias, Some(&current), r.expect_collection.as_deref())?;
        Ok(decision(
            engine.rollback(&r.alias, &current, &target).await?,
        ))
    }

    /// Stores a proposal; the collection as GetCollection shows it.
    pub async fn propose_settings(
        &self,
        who: &Principal,
        r: pb::ProposeSettingsRequest,
    ) -> Result<pb::Collection> {
        let op = row(EVAL, "ProposeSettings")?;
        authorize(who, op, Touches::Named(&[&r.collection]))?;
        let settings = convert::search_settings(r.settings.unwrap_or_default())?;
        let engine = self.engine()?;
        let name = r.collection.clone();
        blocking(move || engine.propose_settings(&name, settings)).await?;
        let get = pb::GetCollectionRequest { name: r.collection };
        self.get_collection(who, get).await
    }

    /// The proposal measured against the adopted settings, adopted if the gate holds.
    pub async fn adopt_settings(
        &self,
        who: &Principal,
        r: pb::AdoptSettingsRequest,
    ) -> Result<pb::PromoteResponse> {
        let op = row(EVAL, "AdoptSettings")?;
        authorize(who, op, Touches::Named(&[&r.collection]))?;
        let gate = gate(r.primary, r.alpha)?;
        let split = Some(r.split).filter(|s| !s.is_empty());
        let split = split.unwrap_or_else(|| DEFAULT_PROMOTE_SPLIT.to_string());
        let engine = self.engine()?;
        let cancel = Cancel::new();
        Ok(decision(
            engine
                .adopt_settings(&r.collection, &split, &gate, &cancel)
                .await?,
        ))
    }

    /// A grid search on one split, checked on another; proposes the best if it holds.
    pub async fn tune(&self, who: &Principal, r: pb::TuneRequest) -> Result<pb::TuneResponse> {
        let op = row(EVAL, "Tune")?;
        authorize(who, op, Touches::Named(&[&r.collection]))?;
        let gate = gate(r.primary, r.alpha)?;
        let or = |s: String, d: &str| if s.is_empty() { d.to_string() } else { s };
        let tune_split = or(r.tune_split, DEFAULT_TUNE_SPLIT);
        let check_split = or(r.check_split, DEFAULT_PROMOTE_SPLIT);
        let grid = match r.grid.is_empty() {
            true => crate::eval::tune::default_grid(),
            false => r
                .grid
                .into_iter()
                .map(convert::search_settings)
                .collect::<Result<_>>()?,
        };
        let engine = self.engine()?;
        let splits = (tune_split.as_str(), check_split.as_str());
        let outcome = engine
            .tune(&r.collection, splits, grid, &gate, &Cancel::new())
            .await?;
        Ok(convert::tune_outcome(outcome))
    }
}
