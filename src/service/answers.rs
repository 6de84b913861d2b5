//! Grounded answers through the inference router ([`crate::answer::Answerer`]), whole or as
//! a stream of events (stages, tokens, discards, then the result).

use std::time::Instant;

use futures::StreamExt;

use super::{authorize, row, Events, Service, Touches, ANSWERS};
use crate::answer::{AnswerRequest, Answerer, Progress};
use crate::api::{convert, meta_convert, pb};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::retrieve::SearchParams;

/// A request message as the answerer's request.
fn core_request(r: pb::AnswerRequest) -> Result<AnswerRequest> {
    if r.schema_json.len() > crate::answer::MAX_SCHEMA_BYTES {
        return Err(Error::invalid(format!(
            "schema_json is {} bytes, over the limit of {}",
            r.schema_json.len(),
            crate::answer::MAX_SCHEMA_BYTES
        )));
    }
    let schema = match r.schema_json.trim() {
        "" => None,
        text => Some(
            serde_json::from_str(text)
                .map_err(|e| Error::invalid(format!("schema_json is not valid JSON: {e}")))?,
        ),
    };
    let search = SearchParams {
        top_k: r.top_k as usize,
        mode: convert::mode(r.mode)?,
        fusion: convert::fusion(r.fusion)?,
        filter: meta_convert::request_filter(r.filter, r.r#where, &r.where_text)?,
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

/// A progress report as its event.
fn event(p: Progress) -> pb::answer_event::Event {
    use pb::answer_event::Event;
    let stage = |stage: &str| pb::AnswerStage {
        stage: stage.into(),
        ..Default::default()
    };
    match p {
        Progress::Retrieved { hits, ms } => Event::Stage(pb::AnswerStage {
            hits: hits as u32,
            retrieve_ms: ms,
            ..stage("retrieved")
        }),
        Progress::Packed { sources, left_out } => Event::Stage(pb::AnswerStage {
            sources: sources as u32,
            left_out: left_out as u32,
            ..stage("packed")
        }),
        Progress::Generating { attempt } => Event::Stage(pb::AnswerStage {
            attempt,
            ..stage("generating")
        }),
        Progress::Token(t) => Event::Token(t),
        Progress::Discard(why) => Event::Discard(why),
    }
}

impl Service {
    fn answerer(&self) -> Result<&std::sync::Arc<Answerer>> {
        self.answerer.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(
                "no inference router is configured: start the server with --router URL (or QUARRY_ROUTER, or [answer] routers in the config file)".into(),
            )
        })
    }

    pub async fn answer(
        &self,
        who: &Principal,
        r: pb::AnswerRequest,
    ) -> Result<pb::AnswerResponse> {
        let answerer = self.answerer()?;
        authorize(
            who,
            row(ANSWERS, "Answer")?,
            Touches::Named(&[&r.collection]),
        )?;
        let outcome = answerer.answer(&*self.engine()?, core_request(r)?).await?;
        Ok(convert::answer_response(outcome))
    }

    /// The answer as events, the result last. The work stops when the caller stops reading
    /// (dropping the router call in flight) or at `deadline`.
    pub async fn answer_stream(
        &self,
        who: &Principal,
        r: pb::AnswerRequest,
        deadline: Option<Instant>,
    ) -> Result<Events<pb::AnswerEvent>> {
        let answerer = self.answerer()?.clone();
        authorize(
            who,
            row(ANSWERS, "AnswerStream")?,
            Touches::Named(&[&r.collection]),
        )?;
        let req = core_request(r)?;
        let engine = self.engine()?;
        // Unbounded: tokens come from a synchronous callback and must not be dropped; their
        // number is bounded by max_tokens.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let events = tx.clone();
            let sink = move |p: Progress| {
                let _ = events.send(Ok(pb::AnswerEvent {
                    event: Some(event(p)),
                }));
            };
            let expired = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let outcome = tokio::select! {
                o = answerer.answer_with(&engine, req, Some(&sink)) => o,
                _ = tx.closed() => return,
                _ = expired => Err(Error::DeadlineExceeded("the request's deadline passed".into())),
            };
            let last = outcome.map(|o| pb::AnswerEvent {
                event: Some(pb::answer_event::Event::Result(convert::answer_response(o))),
            });
            let _ = tx.send(last);
        });
        Ok(tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed())
    }
}
