//! Evaluation of a live collection against the caller's judgments: progress about every 1%
//! of the queries, then the results and the paired comparisons between runs (two
//! generations of a collection are two runs, each naming its collection).

use std::time::Instant;

use futures::StreamExt;

use super::{authorize, blocking, row, Events, Service, Touches, EVAL};
use crate::api::{convert, meta_convert, pb};
use crate::auth::Principal;
use crate::engine::Cancel;
use crate::error::{Error, Result};
use crate::eval::run::{EvalQuery, RunSpec};

pub(super) fn run_spec(s: pb::EvalRunSpec) -> Result<RunSpec> {
    Ok(RunSpec {
        mode: convert::mode(s.mode)?,
        fusion: convert::fusion(s.fusion)?,
        candidates: s.candidates.map(|n| n as usize),
        // Checked by the search each run makes, as any search's.
        aggregation: s
            .sum_decay
            .map(crate::retrieve::Aggregation::from_sum_decay),
        title_boost: s.title_boost.unwrap_or(0.0).max(0.0),
        filter: meta_convert::request_filter(Default::default(), None, &s.where_text)?,
        collection: Some(s.collection).filter(|c| !c.is_empty()),
        name: s.name,
    })
}

impl Service {
    /// Runs the evaluation; it stops before its next query when the caller stops reading or
    /// at `deadline`.
    pub async fn evaluate(
        &self,
        who: &Principal,
        r: pb::EvalRequest,
        deadline: Option<Instant>,
    ) -> Result<Events<pb::EvalProgress>> {
        // The request's collection and every collection a run names.
        let mut named: Vec<&str> = vec![&r.collection];
        named.extend(
            r.runs
                .iter()
                .map(|s| s.collection.as_str())
                .filter(|c| !c.is_empty()),
        );
        authorize(who, row(EVAL, "Evaluate")?, Touches::Named(&named))?;
        let engine = self.engine()?;
        engine.collection(&r.collection)?;
        let queries: Vec<EvalQuery> = match (r.split.is_empty(), r.queries.is_empty()) {
            (true, true) => return Err(Error::invalid("the request has no queries and no split")),
            (true, false) => super::gates::eval_queries(r.queries),
            (false, true) => {
                let (e, c, split) = (engine.clone(), r.collection.clone(), r.split.clone());
                blocking(move || e.eval_split(&c, &split)).await?.1
            }
            (false, false) => {
                return Err(Error::invalid(
                    "give queries or a split of the attached eval set, not both",
                ))
            }
        };
        let runs: Vec<RunSpec> = r.runs.into_iter().map(run_spec).collect::<Result<_>>()?;
        let compare: Vec<(String, String)> = r
            .compare
            .into_iter()
            .map(|p| (p.baseline, p.candidate))
            .collect();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let cancel = Cancel::new();
        let client_gone = cancel.clone();
        if let Some(d) = deadline {
            let expire = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(d.into()).await;
                expire.cancel();
            });
        }
        tokio::spawn(async move {
            let progress_tx = tx.clone();
            let mut last = 0;
            let mut progress = move |done: usize, total: usize| {
                // The caller went away: stop before the next query.
                if progress_tx.is_closed() {
                    client_gone.cancel();
                    return;
                }
                if done == total || done >= last + (total / 100).max(1) {
                    last = done;
                    let _ = progress_tx.try_send(Ok(pb::EvalProgress {
                        done: done as u32,
                        total: total as u32,
                        result: None,
                    }));
                }
            };
            let depth = r.depth as usize;
            let outcome = engine
                .evaluate(
                    &r.collection,
                    &queries,
                    &runs,
                    depth,
                    &compare,
                    &mut progress,
                    &cancel,
                )
                .await;
            let message = outcome.map(|o| pb::EvalProgress {
                done: 0,
                total: 0,
                result: Some(convert::eval_result(o)),
            });
            let _ = tx.send(message).await;
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }
}
