//! The Answers service: a thin adapter over [`crate::answer::Answerer`].

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::pb;
use super::status::to_status;
use crate::answer::{AnswerRequest, Answerer};
use crate::engine::Engine;
use crate::error::Error;
use crate::retrieve::SearchParams;

pub struct AnswerService {
    engine: Arc<Engine>,
    /// `None` when no router is configured.
    answerer: Option<Arc<Answerer>>,
}

impl AnswerService {
    pub fn new(engine: Arc<Engine>, answerer: Option<Arc<Answerer>>) -> Self {
        AnswerService { engine, answerer }
    }
}

#[tonic::async_trait]
impl pb::answers_server::Answers for AnswerService {
    async fn answer(
        &self,
        request: Request<pb::AnswerRequest>,
    ) -> Result<Response<pb::AnswerResponse>, Status> {
        let Some(answerer) = &self.answerer else {
            return Err(to_status(Error::FailedPrecondition(
                "no inference router is configured: start the server with --router URL (or QUARRY_ROUTER, or [answer] routers in the config file)".into(),
            )));
        };
        let r = request.into_inner();
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
            filter: r.filter.into_iter().collect(),
            ..Default::default()
        };
        let outcome = answerer
            .answer(
                &self.engine,
                AnswerRequest {
                    collection: r.collection,
                    question: r.question,
                    search,
                    schema,
                    model: Some(r.model).filter(|m| !m.is_empty()),
                    max_tokens: Some(r.max_tokens).filter(|&m| m > 0),
                    temperature: r.temperature,
                    strict_citations: r.strict_citations,
                },
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::answer_response(outcome)))
    }
}
