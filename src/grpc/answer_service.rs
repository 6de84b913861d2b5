//! The Answers service: a thin adapter over [`crate::answer::Answerer`].

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::pb;
use super::status::to_status;
use crate::answer::{AnswerRequest, Answerer, Progress};
use crate::engine::Engine;
use crate::error::Error;
use crate::retrieve::SearchParams;

pub struct AnswerService {
    live: Arc<super::Live>,
    /// `None` when no router is configured.
    answerer: Option<Arc<Answerer>>,
}

impl AnswerService {
    pub fn new(live: Arc<super::Live>, answerer: Option<Arc<Answerer>>) -> Self {
        AnswerService { live, answerer }
    }

    /// The engine being served now, or UNAVAILABLE while the storage is reopened.
    fn engine(&self) -> Result<Arc<Engine>, Status> {
        self.live.engine().map_err(to_status)
    }
}

#[tonic::async_trait]
impl pb::answers_server::Answers for AnswerService {
    type AnswerStreamStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::AnswerEvent, Status>> + Send>>;

    async fn answer(
        &self,
        request: Request<pb::AnswerRequest>,
    ) -> Result<Response<pb::AnswerResponse>, Status> {
        let answerer = self.answerer()?;
        super::auth::authorize(
            &request,
            crate::service::ANSWERS,
            "Answer",
            crate::service::Touches::Named(&[&request.get_ref().collection]),
        )?;
        let req = core_request(request.into_inner())?;
        let outcome = answerer
            .answer(&*self.engine()?, req)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::answer_response(outcome)))
    }

    async fn answer_stream(
        &self,
        request: Request<pb::AnswerRequest>,
    ) -> Result<Response<Self::AnswerStreamStream>, Status> {
        let answerer = self.answerer()?.clone();
        super::auth::authorize(
            &request,
            crate::service::ANSWERS,
            "AnswerStream",
            crate::service::Touches::Named(&[&request.get_ref().collection]),
        )?;
        let deadline = super::observe::request_deadline(&request);
        let req = core_request(request.into_inner())?;
        // Unbounded: tokens come from a synchronous callback and must not be dropped; their
        // number is bounded by max_tokens.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let engine = self.engine()?;
        tokio::spawn(async move {
            let events = tx.clone();
            let sink = move |p: Progress| {
                let event = match p {
                    Progress::Retrieved { hits, ms } => {
                        pb::answer_event::Event::Stage(pb::AnswerStage {
                            stage: "retrieved".into(),
                            hits: hits as u32,
                            retrieve_ms: ms,
                            ..Default::default()
                        })
                    }
                    Progress::Packed { sources, left_out } => {
                        pb::answer_event::Event::Stage(pb::AnswerStage {
                            stage: "packed".into(),
                            sources: sources as u32,
                            left_out: left_out as u32,
                            ..Default::default()
                        })
                    }
                    Progress::Generating { attempt } => {
                        pb::answer_event::Event::Stage(pb::AnswerStage {
                            stage: "generating".into(),
                            attempt,
                            ..Default::default()
                        })
                    }
                    Progress::Token(t) => pb::answer_event::Event::Token(t),
                    Progress::Discard(why) => pb::answer_event::Event::Discard(why),
                };
                let _ = events.send(Ok(pb::AnswerEvent { event: Some(event) }));
            };
            // When the client goes away the stream's receiver is dropped: stop, dropping the
            // answer future and with it any router call in flight.
            let expired = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let outcome = tokio::select! {
                o = answerer.answer_with(&engine, req, Some(&sink)) => o,
                _ = tx.closed() => return,
                _ = expired => {
                    let _ = tx.send(Err(Status::deadline_exceeded("the request's deadline passed")));
                    return;
                }
            };
            let last = match outcome {
                Ok(o) => Ok(pb::AnswerEvent {
                    event: Some(pb::answer_event::Event::Result(convert::answer_response(o))),
                }),
                Err(e) => Err(to_status(e)),
            };
            let _ = tx.send(last);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }
}

impl AnswerService {
    fn answerer(&self) -> Result<&Arc<Answerer>, Status> {
        self.answerer.as_ref().ok_or_else(|| {
            to_status(Error::FailedPrecondition(
                "no inference router is configured: start the server with --router URL (or QUARRY_ROUTER, or [answer] routers in the config file)".into(),
            ))
        })
    }
}

/// Wire request -> core request.
fn core_request(r: pb::AnswerRequest) -> Result<AnswerRequest, Status> {
    if r.schema_json.len() > crate::answer::MAX_SCHEMA_BYTES {
        return Err(to_status(Error::invalid(format!(
            "schema_json is {} bytes, over the limit of {}",
            r.schema_json.len(),
            crate::answer::MAX_SCHEMA_BYTES
        ))));
    }
    let schema = if r.schema_json.trim().is_empty() {
        None
    } else {
        Some(serde_json::from_str(&r.schema_json).map_err(|e| {
            to_status(Error::invalid(format!(
                "schema_json is not valid JSON: {e}"
            )))
        })?)
    };
    let search = SearchParams {
        top_k: r.top_k as usize,
        mode: convert::mode(r.mode).map_err(to_status)?,
        fusion: convert::fusion(r.fusion).map_err(to_status)?,
        filter: super::meta_convert::request_filter(r.filter, r.r#where, &r.where_text)
            .map_err(to_status)?,
        ..Default::default()
    };
    Ok(AnswerRequest {
        collection: r.collection,
        question: r.question,
        search,
        schema,
        model: Some(r.model).filter(|m| !m.is_empty()),
        max_tokens: Some(r.max_tokens).filter(|&m| m > 0),
        temperature: r.temperature,
        strict_citations: r.strict_citations,
    })
}
