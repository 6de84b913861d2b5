//! The Jobs, Admin, Eval and Answers services: decode, call [`crate::service::Service`],
//! encode; server streams map each event, client streams each message.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::observe::request_deadline;
use super::pb;
use super::services::{parts, reply, Adapter};
use super::status::{from_status, to_status};
use crate::service::Events;

type Replies<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A service's event stream as a gRPC server stream.
fn stream<T: Send + 'static>(
    events: crate::Result<Events<T>>,
) -> Result<Response<Replies<T>>, Status> {
    let events = events.map_err(to_status)?;
    Ok(Response::new(Box::pin(
        events.map(|e| e.map_err(to_status)),
    )))
}

#[tonic::async_trait]
impl pb::jobs_server::Jobs for Adapter {
    async fn submit_ingest(
        &self,
        request: Request<pb::SubmitIngestRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.submit_ingest(&who, r).await)
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.get_job(&who, r).await)
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.list_jobs(&who, r).await)
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.cancel_job(&who, r).await)
    }

    type WatchJobStream = Replies<pb::Job>;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let (who, r) = parts(request)?;
        stream(self.service.watch_job(&who, r).await)
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Adapter {
    type CreateSnapshotStream = Replies<pb::SnapshotChunk>;

    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<Self::CreateSnapshotStream>, Status> {
        let (who, r) = parts(request)?;
        stream(self.service.create_snapshot(&who, r).await)
    }

    async fn restore_snapshot(
        &self,
        request: Request<Streaming<pb::RestoreSnapshotRequest>>,
    ) -> Result<Response<pb::RestoreSnapshotResponse>, Status> {
        let (who, messages) = parts(request)?;
        let messages = messages.map(|m| m.map_err(from_status));
        reply(self.service.restore_snapshot(&who, messages).await)
    }
}

#[tonic::async_trait]
impl pb::eval_server::Eval for Adapter {
    type EvaluateStream = Replies<pb::EvalProgress>;

    async fn evaluate(
        &self,
        request: Request<pb::EvalRequest>,
    ) -> Result<Response<Self::EvaluateStream>, Status> {
        let deadline = request_deadline(&request);
        let (who, r) = parts(request)?;
        stream(self.service.evaluate(&who, r, deadline).await)
    }

    async fn put_eval_split(
        &self,
        request: Request<pb::PutEvalSplitRequest>,
    ) -> Result<Response<pb::EvalSplit>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.put_eval_split(&who, r).await)
    }

    async fn list_eval_splits(
        &self,
        request: Request<pb::ListEvalSplitsRequest>,
    ) -> Result<Response<pb::ListEvalSplitsResponse>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.list_eval_splits(&who, r).await)
    }

    async fn delete_eval_split(
        &self,
        request: Request<pb::DeleteEvalSplitRequest>,
    ) -> Result<Response<pb::DeleteEvalSplitResponse>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.delete_eval_split(&who, r).await)
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::PromoteResponse>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.promote(&who, r).await)
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::PromoteResponse>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.rollback(&who, r).await)
    }

    async fn propose_settings(
        &self,
        request: Request<pb::ProposeSettingsRequest>,
    ) -> Result<Response<pb::Collection>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.propose_settings(&who, r).await)
    }

    async fn adopt_settings(
        &self,
        request: Request<pb::AdoptSettingsRequest>,
    ) -> Result<Response<pb::PromoteResponse>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.adopt_settings(&who, r).await)
    }

    async fn tune(
        &self,
        request: Request<pb::TuneRequest>,
    ) -> Result<Response<pb::TuneResponse>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.tune(&who, r).await)
    }
}

#[tonic::async_trait]
impl pb::answers_server::Answers for Adapter {
    async fn answer(
        &self,
        request: Request<pb::AnswerRequest>,
    ) -> Result<Response<pb::AnswerResponse>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.answer(&who, r).await)
    }

    type AnswerStreamStream = Replies<pb::AnswerEvent>;

    async fn answer_stream(
        &self,
        request: Request<pb::AnswerRequest>,
    ) -> Result<Response<Self::AnswerStreamStream>, Status> {
        let deadline = request_deadline(&request);
        let (who, r) = parts(request)?;
        stream(self.service.answer_stream(&who, r, deadline).await)
    }
}
