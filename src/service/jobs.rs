//! Server-side ingestion jobs. A job's collection decides what a key may do with it:
//! submitting and cancelling need the write right on it, reading and watching the read
//! right; a listing leaves out the jobs of collections the key may not read, and a job of a
//! collection the key may not use is "not found", word for word like a job that does not
//! exist. A re-index's collections are both its own and its source.

use std::time::Duration;

use futures::StreamExt;

use super::{authorize, blocking, row, Events, Service, Touches, COLLECTIONS, JOBS};
use crate::api::jobs::{job_to_pb, source_from_pb, state_from_pb};
use crate::api::pb;
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::jobs::{parse_id, Job};

/// Jobs a ListJobs page holds when the request leaves the size unset.
pub const DEFAULT_JOBS_PAGE: usize = 50;
/// Job watches open at once (they are outside admission control, which would let a long
/// watch hold a search's slot).
pub const MAX_WATCHERS: usize = 256;

impl Service {
    /// The job `id`, if the caller may run `method` on it.
    fn job_for(&self, who: &Principal, id: &str, method: &str) -> Result<Job> {
        let job = parse_id(id).and_then(|id| self.live.jobs()?.get(id))?;
        let not_found = format!("job {} not found", job.id);
        // A re-index touches its source too: a key that may not use it does not see the job
        // (which would name the source).
        for collection in job.spec.collections() {
            let touches = Touches::Owner {
                collection,
                not_found: &not_found,
            };
            authorize(who, row(JOBS, method)?, touches)?;
        }
        Ok(job)
    }

    pub async fn submit_ingest(
        &self,
        who: &Principal,
        r: pb::SubmitIngestRequest,
    ) -> Result<pb::Job> {
        let source = r
            .source
            .ok_or_else(|| Error::invalid("the request has no source"))?;
        if !source.collection.is_empty() {
            return self
                .submit_reindex(who, r.collection, source, r.switch_alias)
                .await;
        }
        authorize(
            who,
            row(JOBS, "SubmitIngest")?,
            Touches::Named(&[&r.collection]),
        )?;
        if !r.switch_alias.is_empty() {
            return Err(Error::invalid(
                "switch_alias is for a re-index (a source that names a collection)",
            ));
        }
        let source = source_from_pb(source);
        let jobs = self.live.jobs()?;
        let job = blocking(move || jobs.submit(&r.collection, source, r.sync)).await?;
        Ok(job_to_pb(job))
    }

    /// A re-index: the write right on both collections, and when it switches an alias, what
    /// switching that alias needs (the admin right on the alias and both collections).
    async fn submit_reindex(
        &self,
        who: &Principal,
        collection: String,
        source: pb::IngestSource,
        switch_alias: String,
    ) -> Result<pb::Job> {
        let from = source.collection;
        authorize(
            who,
            row(JOBS, "SubmitIngest")?,
            Touches::Named(&[&collection, &from]),
        )?;
        if !source.path.is_empty() {
            return Err(Error::invalid(
                "a source names a path or a collection, not both",
            ));
        }
        let alias = (!switch_alias.is_empty()).then_some(switch_alias);
        if let Some(alias) = &alias {
            let now = self.engine()?.alias_target(alias)?;
            let touches = Touches::Alias {
                alias,
                to: Some(&collection),
                from: now.as_deref(),
            };
            authorize(who, row(COLLECTIONS, "SetAlias")?, touches)?;
        }
        let jobs = self.live.jobs()?;
        let job =
            blocking(move || jobs.submit_reindex(&collection, &from, alias.as_deref())).await?;
        Ok(job_to_pb(job))
    }

    pub async fn get_job(&self, who: &Principal, r: pb::GetJobRequest) -> Result<pb::Job> {
        Ok(job_to_pb(self.job_for(who, &r.id, "GetJob")?))
    }

    pub async fn list_jobs(
        &self,
        who: &Principal,
        r: pb::ListJobsRequest,
    ) -> Result<pb::ListJobsResponse> {
        let named = [r.collection.as_str()];
        let touches = match r.collection.is_empty() {
            true => Touches::Nothing,
            false => Touches::Named(&named),
        };
        authorize(who, row(JOBS, "ListJobs")?, touches)?;
        let before = match r.page_token.as_str() {
            "" => None,
            t => Some(
                t.parse::<u64>()
                    .map_err(|_| Error::invalid("page_token is not one this server issued"))?,
            ),
        };
        let state = state_from_pb(r.state());
        let size = match r.page_size {
            0 => DEFAULT_JOBS_PAGE,
            n => n as usize,
        };
        let (jobs, more) = self.live.jobs()?.list(before, size, |j| {
            (r.collection.is_empty() || j.spec.collection == r.collection)
                && state.is_none_or(|s| j.state == s)
                && j.spec.collections().all(|c| who.may_use(c))
        })?;
        let next_page_token = match (more, jobs.last()) {
            (true, Some(last)) => last.id.to_string(),
            _ => String::new(),
        };
        Ok(pb::ListJobsResponse {
            jobs: jobs.into_iter().map(job_to_pb).collect(),
            next_page_token,
        })
    }

    pub async fn cancel_job(&self, who: &Principal, r: pb::CancelJobRequest) -> Result<pb::Job> {
        let job = self.job_for(who, &r.id, "CancelJob")?;
        let jobs = self.live.jobs()?;
        Ok(job_to_pb(blocking(move || jobs.cancel(job.id)).await?))
    }

    /// The job now and after each change, until it finishes or the watcher leaves.
    pub async fn watch_job(
        &self,
        who: &Principal,
        r: pb::WatchJobRequest,
    ) -> Result<Events<pb::Job>> {
        let job = self.job_for(who, &r.id, "WatchJob")?;
        let permit = self.watchers.clone().try_acquire_owned().map_err(|_| {
            Error::Exhausted(format!(
                "{MAX_WATCHERS} jobs are being watched, the limit; poll GetJob instead"
            ))
        })?;
        let live = self.live.clone();
        let mut changes = self.live.jobs()?.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _permit = permit;
            let mut last: Option<Job> = None;
            loop {
                // The job system is taken afresh each round (not held: the storage may be
                // reopened under a long watch, which starts a new one).
                let now = match live.jobs().and_then(|jobs| jobs.get(job.id)) {
                    Ok(j) => j,
                    Err(Error::Unavailable(_)) if !tx.is_closed() => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
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
                            // That job system stopped (shutdown, or a storage reopen):
                            // follow the next one, if any.
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            if let Ok(jobs) = live.jobs() {
                                changes = jobs.subscribe();
                            }
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }
}
