//! The Jobs service: server-side ingestion jobs over the wire, and their wire form.
//!
//! A job's collection decides what a key may do with it: submitting and cancelling need the
//! write right on it, reading and watching the read right; a listing leaves out the jobs of
//! collections the key may not read.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::auth::{authorize, principal};
use super::pb;
use super::status::to_status;
use crate::jobs::{parse_id, Job, JobState, Jobs};
use crate::service::{Touches, JOBS};
use crate::source::{FieldMapping, Format, SourceSpec};

/// Jobs a ListJobs page holds when the request leaves the size unset.
const DEFAULT_PAGE: usize = 50;
/// WatchJob streams open at once (they are outside admission control, which would let a long
/// watch hold a search's slot).
pub const MAX_WATCHERS: usize = 256;

pub struct JobsService {
    live: std::sync::Arc<super::Live>,
    watchers: std::sync::Arc<tokio::sync::Semaphore>,
}

impl JobsService {
    pub fn new(live: std::sync::Arc<super::Live>) -> Self {
        JobsService {
            live,
            watchers: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_WATCHERS)),
        }
    }

    /// The job system now, or UNAVAILABLE while the storage is reopened.
    fn jobs(&self) -> Result<Jobs, Status> {
        self.live.jobs().map_err(to_status)
    }

    /// The job `id`, if the caller may run `method` on it. A job of a collection the key may
    /// not use is "not found", word for word like a job that does not exist.
    fn job_for<T>(&self, request: &Request<T>, id: &str, method: &str) -> Result<Job, Status> {
        let job = parse_id(id)
            .and_then(|id| self.live.jobs()?.get(id))
            .map_err(to_status)?;
        let not_found = format!("job {} not found", job.id);
        authorize(
            request,
            JOBS,
            method,
            Touches::Owner {
                collection: &job.spec.collection,
                not_found: &not_found,
            },
        )?;
        Ok(job)
    }
}

fn state_to_pb(s: JobState) -> pb::JobState {
    match s {
        JobState::Queued => pb::JobState::Queued,
        JobState::Running => pb::JobState::Running,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

fn state_from_pb(s: pb::JobState) -> Option<JobState> {
    Some(match s {
        pb::JobState::Unspecified => return None,
        pb::JobState::Queued => JobState::Queued,
        pb::JobState::Running => JobState::Running,
        pb::JobState::Succeeded => JobState::Succeeded,
        pb::JobState::Failed => JobState::Failed,
        pb::JobState::Cancelled => JobState::Cancelled,
    })
}

pub fn source_from_pb(s: pb::IngestSource) -> SourceSpec {
    let format = match s.format() {
        pb::SourceFormat::Auto => Format::Auto,
        pb::SourceFormat::Files => Format::Files,
        pb::SourceFormat::Jsonl => Format::Jsonl,
    };
    let fields = s.fields.unwrap_or_default();
    SourceSpec {
        path: s.path.into(),
        format,
        include: s.include,
        exclude: s.exclude,
        fields: FieldMapping::with(&fields.id, &fields.title, &fields.text, &fields.metadata),
    }
}

pub fn job_to_pb(j: Job) -> pb::Job {
    let source = j.spec.source;
    pb::Job {
        id: j.id.to_string(),
        collection: j.spec.collection,
        state: state_to_pb(j.state) as i32,
        source: Some(pb::IngestSource {
            path: source.path.to_string_lossy().to_string(),
            format: match source.format {
                Format::Auto => pb::SourceFormat::Auto,
                Format::Files => pb::SourceFormat::Files,
                Format::Jsonl => pb::SourceFormat::Jsonl,
            } as i32,
            include: source.include,
            exclude: source.exclude,
            fields: Some(pb::FieldMapping {
                id: source.fields.id,
                title: source.fields.title,
                text: source.fields.text,
                metadata: source.fields.metadata,
            }),
        }),
        sync: j.spec.sync,
        counts: Some(pb::JobCounts {
            seen: j.counts.seen,
            created: j.counts.created,
            updated: j.counts.updated,
            unchanged: j.counts.unchanged,
            deleted: j.counts.deleted,
            failed: j.counts.failed,
            chunks: j.counts.chunks,
        }),
        failures: j
            .failures
            .into_iter()
            .map(|f| pb::JobFailure {
                location: f.location,
                document_id: f.document_id,
                reason: f.reason,
            })
            .collect(),
        failures_omitted: j.failures_omitted,
        error: j.error.unwrap_or_default(),
        submitted_unix_ms: j.submitted_unix_ms,
        started_unix_ms: j.started_unix_ms,
        finished_unix_ms: j.finished_unix_ms,
        bytes_done: j.bytes_done,
        bytes_total: j.bytes_total,
        items_total: j.items_total,
        resumed: j.resumed,
    }
}

type JobStream = Pin<Box<dyn Stream<Item = Result<pb::Job, Status>> + Send>>;

#[tonic::async_trait]
impl pb::jobs_server::Jobs for JobsService {
    async fn submit_ingest(
        &self,
        request: Request<pb::SubmitIngestRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        authorize(
            &request,
            JOBS,
            "SubmitIngest",
            Touches::Named(&[&request.get_ref().collection]),
        )?;
        let r = request.into_inner();
        let source = r
            .source
            .ok_or_else(|| Status::invalid_argument("the request has no source"))?;
        let source = source_from_pb(source);
        let jobs = self.jobs()?;
        let job = tokio::task::spawn_blocking(move || jobs.submit(&r.collection, source, r.sync))
            .await
            .map_err(|e| Status::internal(format!("task failed: {e}")))?
            .map_err(to_status)?;
        Ok(Response::new(job_to_pb(job)))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let job = self.job_for(&request, &request.get_ref().id, "GetJob")?;
        Ok(Response::new(job_to_pb(job)))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let who = principal(&request)?.clone();
        let r = request.get_ref();
        let named = [r.collection.as_str()];
        let touches = match r.collection.is_empty() {
            true => Touches::Nothing,
            false => Touches::Named(&named),
        };
        authorize(&request, JOBS, "ListJobs", touches)?;
        let before = match r.page_token.as_str() {
            "" => None,
            t => Some(t.parse::<u64>().map_err(|_| {
                Status::invalid_argument("page_token is not one this server issued")
            })?),
        };
        let state = state_from_pb(r.state());
        let collection = r.collection.clone();
        let size = match r.page_size {
            0 => DEFAULT_PAGE,
            n => n as usize,
        };
        let (jobs, more) = self
            .jobs()?
            .list(before, size, |j| {
                (collection.is_empty() || j.spec.collection == collection)
                    && state.is_none_or(|s| j.state == s)
                    && who.may_use(&j.spec.collection)
            })
            .map_err(to_status)?;
        let next_page_token = match (more, jobs.last()) {
            (true, Some(last)) => last.id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.into_iter().map(job_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let job = self.job_for(&request, &request.get_ref().id, "CancelJob")?;
        let jobs = self.jobs()?;
        let job = tokio::task::spawn_blocking(move || jobs.cancel(job.id))
            .await
            .map_err(|e| Status::internal(format!("task failed: {e}")))?
            .map_err(to_status)?;
        Ok(Response::new(job_to_pb(job)))
    }

    type WatchJobStream = JobStream;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let job = self.job_for(&request, &request.get_ref().id, "WatchJob")?;
        let permit = self.watchers.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{MAX_WATCHERS} jobs are being watched, the limit; poll GetJob instead"
            ))
        })?;
        // The job system is taken afresh each round (not held: the storage may be reopened
        // under a long watch, which starts a new one).
        let live = self.live.clone();
        let mut changes = self.jobs()?.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _permit = permit;
            let mut last: Option<Job> = None;
            loop {
                let now = match live.jobs().and_then(|jobs| jobs.get(job.id)) {
                    Ok(j) => j,
                    Err(crate::Error::Unavailable(_)) if !tx.is_closed() => {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(to_status(e))).await;
                        return;
                    }
                };
                let finished = now.state.is_finished();
                if last.as_ref() != Some(&now) {
                    last = Some(now.clone());
                    if tx.send(Ok(job_to_pb(now))).await.is_err() {
                        return; // The watcher went away.
                    }
                }
                if finished {
                    return;
                }
                // Woken by any job's change; the timeout also notices a watcher that left.
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            // That job system stopped (shutdown, or a storage reopen): follow
                            // the next one, if any.
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            if let Ok(jobs) = live.jobs() {
                                changes = jobs.subscribe();
                            }
                        }
                    }
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
