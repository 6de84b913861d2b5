//! The Eval service: evaluates a live collection against the caller's judgments, streaming
//! progress and then the results.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert;
use super::pb;
use super::status::to_status;
use crate::engine::{Cancel, Engine};
use crate::error::Error;
use crate::eval::run::{EvalQuery, RunSpec};

pub struct EvalService {
    live: Arc<super::Live>,
}

impl EvalService {
    pub fn new(live: Arc<super::Live>) -> Self {
        EvalService { live }
    }

    /// The engine being served now, or UNAVAILABLE while the storage is reopened.
    fn engine(&self) -> Result<Arc<Engine>, Status> {
        self.live.engine().map_err(to_status)
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::EvalProgress, Status>> + Send>>;

#[tonic::async_trait]
impl pb::eval_server::Eval for EvalService {
    type EvaluateStream = ProgressStream;

    async fn evaluate(
        &self,
        request: Request<pb::EvalRequest>,
    ) -> Result<Response<Self::EvaluateStream>, Status> {
        super::auth::authorize(
            &request,
            crate::service::EVAL,
            "Evaluate",
            crate::service::Touches::Named(&[&request.get_ref().collection]),
        )?;
        // Server work stops at the client's deadline as well as when it goes away.
        let deadline = super::observe::request_deadline(&request);
        let r = request.into_inner();
        self.engine()?
            .collection(&r.collection)
            .map_err(to_status)?;
        if r.queries.is_empty() {
            return Err(to_status(Error::invalid("the request has no queries")));
        }
        let queries: Vec<EvalQuery> = r
            .queries
            .into_iter()
            .map(|q| EvalQuery {
                id: q.id,
                text: q.text,
                judgments: q.judgments.into_iter().collect(),
            })
            .collect();
        let runs: Vec<RunSpec> = r
            .runs
            .into_iter()
            .map(|s| {
                Ok(RunSpec {
                    mode: convert::mode(s.mode)?,
                    fusion: convert::fusion(s.fusion)?,
                    title_boost: s.title_boost.unwrap_or(0.0).max(0.0),
                    filter: super::meta_convert::request_filter(
                        Default::default(),
                        None,
                        &s.where_text,
                    )?,
                    name: s.name,
                })
            })
            .collect::<crate::Result<_>>()
            .map_err(to_status)?;
        let (tx, rx) = mpsc::channel(16);
        let engine = self.engine()?;
        // When the client goes away the stream's receiver is dropped: the progress callback
        // (after every query) notices and the evaluation stops before its next query.
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
                if progress_tx.is_closed() {
                    client_gone.cancel();
                    return;
                }
                // Report about every 1% so the stream stays small.
                if done == total || done >= last + (total / 100).max(1) {
                    last = done;
                    let _ = progress_tx.try_send(Ok(pb::EvalProgress {
                        done: done as u32,
                        total: total as u32,
                        result: None,
                    }));
                }
            };
            let outcome = engine
                .evaluate(
                    &r.collection,
                    &queries,
                    &runs,
                    r.depth as usize,
                    &mut progress,
                    &cancel,
                )
                .await;
            let message = match outcome {
                Ok(o) => Ok(pb::EvalProgress {
                    done: 0,
                    total: 0,
                    result: Some(convert::eval_result(o)),
                }),
                Err(e) => Err(to_status(e)),
            };
            let _ = tx.send(message).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
