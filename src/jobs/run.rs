//! One job's run: read the source in batches, write each batch with the job's progress in the
//! same transaction, then (for `sync`) delete what the source no longer holds.

use std::sync::atomic::Ordering;
use std::sync::Arc;

mod reindex;

use super::record::{seen_key, JobStore};
use super::{now_ms, Control, Job, JobState, Shared};
use crate::engine::{DocumentInput, UpsertOutcome, UpsertStatus};
use crate::error::{quote, Error, Result};
use crate::source::{ReadLimits, Reader};
use crate::store::SideWrites;

/// Items read without a batch to write (all failing, say) before progress is recorded anyway.
const PROGRESS_EVERY: u64 = 256;
/// Documents deleted per operation by `sync`.
const SYNC_BATCH: usize = 256;
/// A job whose backend is unavailable (a Qdrant node restarting, a collection reopening) waits
/// and retries, from this pause doubling up to the next, rather than failing.
const BACKEND_WAIT_FIRST: std::time::Duration = std::time::Duration::from_millis(250);
const BACKEND_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// How a run ended.
enum End {
    Done,
    Cancelled,
    /// The server is stopping: the job stays `running` in sled and resumes at the next start.
    Stopped,
}

/// A write to the job tree (see [`SideWrites`]).
type Write = (Vec<u8>, Option<Vec<u8>>);

/// Documents gathered for the next write (by the engine's one batching rule), each with its
/// location, and the ids of documents that failed, which `sync` must not delete (their
/// source still holds them).
#[derive(Default)]
struct Batch {
    docs: crate::engine::Batch<String>,
    failed_ids: Vec<(String, String)>,
}

impl Batch {
    /// Where this batch first holds `id`.
    fn first(&self, id: &str) -> Option<String> {
        self.docs.holds(id).cloned().or_else(|| {
            self.failed_ids
                .iter()
                .find(|(i, _)| i == id)
                .map(|(_, l)| l.clone())
        })
    }
}

/// Runs `job` until it ends or the server stops. True when it finished (in any state).
pub(super) fn run(shared: &Arc<Shared>, mut job: Job, control: &Arc<Control>) -> bool {
    let mut r = Run { shared, control };
    job.state = JobState::Running;
    if job.started_unix_ms == 0 {
        job.started_unix_ms = now_ms();
    }
    if let Err(e) = r.save(&job, Vec::new()) {
        tracing::error!(job = job.id, error = %e, "cannot record a job's start");
        return false;
    }
    tracing::info!(job = job.id, collection = %quote(&job.spec.collection), "job running");
    let ended = match job.spec.from_collection.clone() {
        Some(from) => r.reindex(&mut job, &from),
        None => r.read(&mut job).and_then(|end| match end {
            End::Done if job.spec.sync => r.sync(&mut job),
            other => Ok(other),
        }),
    };
    job.finished_unix_ms = now_ms();
    match ended {
        Ok(End::Stopped) => return false,
        Ok(End::Done) => job.state = JobState::Succeeded,
        Ok(End::Cancelled) => job.state = JobState::Cancelled,
        Err(e) => {
            tracing::error!(job = job.id, error = %e, "job failed");
            job.state = JobState::Failed;
            job.error = Some(e.to_string());
        }
    }
    let store = &shared.store;
    let saved = r
        .save(&job, Vec::new())
        .and_then(|_| store.clear_seen(job.id));
    if let Err(e) = saved {
        // Left `running` in sled: the next start resumes it, and it ends again.
        tracing::error!(job = job.id, error = %e, "cannot record a job's end");
        return false;
    }
    tracing::info!(
        job = job.id,
        state = job.state.as_str(),
        seen = job.counts.seen,
        created = job.counts.created,
        updated = job.counts.updated,
        unchanged = job.counts.unchanged,
        deleted = job.counts.deleted,
        failed = job.counts.failed,
        "job finished"
    );
    true
}

struct Run<'a> {
    shared: &'a Arc<Shared>,
    control: &'a Arc<Control>,
}

/// Applies a batch's outcomes to a job's counts.
fn count(job: &mut Job, outcomes: &[UpsertOutcome]) {
    for o in outcomes {
        let n = match o.status {
            UpsertStatus::Created => &mut job.counts.created,
            UpsertStatus::Updated => &mut job.counts.updated,
            UpsertStatus::Unchanged => &mut job.counts.unchanged,
        };
        *n += 1;
        if o.status != UpsertStatus::Unchanged {
            job.counts.chunks += o.chunk_count as u64;
        }
    }
}

/// Counts a written batch's outcomes in `quarry_job_documents_total` (once: `count` also runs
/// inside the journal).
fn record_metrics(outcomes: &[UpsertOutcome]) {
    let m = &crate::metrics::global().job_documents;
    for o in outcomes {
        m.inc(&[match o.status {
            UpsertStatus::Created => "created",
            UpsertStatus::Updated => "updated",
            UpsertStatus::Unchanged => "unchanged",
        }]);
    }
}

impl Run<'_> {
    /// Runs `op` until it returns anything but [`Error::Unavailable`]: a job outlives an
    /// outage of its backend (each retry of a write that was partly applied finds those
    /// documents unchanged: still counted once). None when a stop or cancel came first.
    ///
    /// A write refused ABORTED because the job's collection is an alias that was switched
    /// while the write waited (nothing was written) is retried at once: the retry resolves
    /// the alias again, as every batch of a job does.
    fn patiently<T>(&self, mut op: impl FnMut() -> Result<T>) -> Result<Option<T>> {
        let mut pause = BACKEND_WAIT_FIRST;
        loop {
            match op() {
                Err(Error::Aborted(_)) => {
                    if self.interrupted().is_some() {
                        return Ok(None);
                    }
                }
                Err(e @ Error::Unavailable(_)) => {
                    if pause == BACKEND_WAIT_FIRST {
                        tracing::warn!(error = %e, "a job waits for its backend");
                    }
                    let until = std::time::Instant::now() + pause;
                    while std::time::Instant::now() < until {
                        if self.interrupted().is_some() {
                            return Ok(None);
                        }
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    pause = (pause * 2).min(BACKEND_WAIT_MAX);
                }
                other => return other.map(Some),
            }
        }
    }

    fn interrupted(&self) -> Option<End> {
        if self.control.stop.load(Ordering::Acquire) {
            Some(End::Stopped)
        } else if self.control.cancel.load(Ordering::Acquire) {
            Some(End::Cancelled)
        } else {
            None
        }
    }

    /// Writes `job`'s record (and `more`) on its own, durably, and tells watchers.
    fn save(&mut self, job: &Job, more: Vec<Write>) -> Result<()> {
        self.shared.store.put(job, more)?;
        self.shared.engine.flush_blocking()?;
        self.shared.changed();
        Ok(())
    }

    fn read(&mut self, job: &mut Job) -> Result<End> {
        if job.read_done {
            return Ok(End::Done);
        }
        let engine = &self.shared.engine;
        let limits = ReadLimits::for_documents(engine.config().limits.max_document_bytes);
        let roots = self.shared.settings.roots.clone();
        let access = Arc::new(move |p: &std::path::Path| roots.allows(p));
        // Checked again now (and at every open), not only at submission: the source may have
        // changed while the job was queued or the server was down.
        let mut reader = Reader::open(&job.spec.source, &job.cursor, limits, access)?;
        let control = Arc::clone(self.control);
        reader.set_interrupt(Arc::new(move || {
            control.stop.load(Ordering::Acquire) || control.cancel.load(Ordering::Acquire)
        }));
        job.items_total = reader.total_items().unwrap_or(0);
        (job.bytes_done, job.bytes_total) = reader.progress();
        let source = job.spec.source.path.to_string_lossy().to_string();
        let collection = job.spec.collection.clone();
        // The job as it will be once the batch being gathered is written.
        let mut next = job.clone();
        let mut batch = Batch::default();
        loop {
            if let Some(end) = self.interrupted() {
                return Ok(end);
            }
            let Some(item) = reader.next() else { break };
            let item = match item {
                Ok(item) => item,
                Err(e) => {
                    if let Some(end) = self.interrupted() {
                        // A long read stopped by a cancel or a stop: the cursor is before it.
                        return Ok(end);
                    }
                    // The source broke mid-read (a corrupt stream): keep what was read.
                    self.write(job, &mut next, &mut batch, &collection)?;
                    return Err(e);
                }
            };
            next.counts.seen += 1;
            next.cursor = item.cursor;
            match item.doc {
                Err(reason) => next.fail(&item.location, "", &reason),
                Ok(mut doc) => {
                    doc.source = Some(source.clone());
                    let checked = batch.docs.check(engine, &collection, &doc);
                    let first = match batch.first(&doc.id) {
                        Some(l) => Some(l),
                        None => self.shared.store.seen(job.id, &doc.id)?,
                    };
                    match (checked, first) {
                        // A redo after a crash finds its own location: not a duplicate.
                        (_, Some(first)) if first != item.location => next.fail(
                            &item.location,
                            &doc.id,
                            &format!("duplicate id: the source holds it first at {first}"),
                        ),
                        (Err(e), _) => {
                            next.fail(&item.location, &doc.id, &e.to_string());
                            batch.failed_ids.push((doc.id, item.location));
                        }
                        (Ok(()), _) => batch.docs.push(item.location, doc),
                    }
                }
            }
            (next.bytes_done, next.bytes_total) = reader.progress();
            if batch.docs.is_full(engine) || next.counts.seen - job.counts.seen >= PROGRESS_EVERY {
                self.write(job, &mut next, &mut batch, &collection)?;
            }
        }
        self.write(job, &mut next, &mut batch, &collection)?;
        if let Some(end) = self.interrupted() {
            return Ok(end);
        }
        next.read_done = true;
        self.save(&next, Vec::new())?;
        *job = next;
        Ok(End::Done)
    }

    /// Writes the gathered batch with `next` (the job once it is written) in one transaction;
    /// then `job` becomes `next`. A batch the engine refuses as a whole for its content fails
    /// its documents, not the job.
    fn write(
        &mut self,
        job: &mut Job,
        next: &mut Job,
        batch: &mut Batch,
        collection: &str,
    ) -> Result<()> {
        let docs = batch.docs.take();
        let failed_ids = std::mem::take(&mut batch.failed_ids);
        let mut seen: Vec<Write> = failed_ids
            .iter()
            .map(|(id, l)| (seen_key(next.id, id), Some(l.clone().into_bytes())))
            .collect();
        if docs.is_empty() {
            if next != job {
                self.save(next, seen)?;
                *job = next.clone();
            }
            return Ok(());
        }
        let (locations, docs): (Vec<String>, Vec<DocumentInput>) = docs.into_iter().unzip();
        seen.extend(
            docs.iter()
                .zip(&locations)
                .map(|(d, l)| (seen_key(next.id, &d.id), Some(l.clone().into_bytes()))),
        );
        let seen_again = seen.clone();
        let journal = || {
            let (tree, seen) = (self.shared.store.tree.clone(), seen.clone());
            let mut recorded = next.clone();
            Box::new(move |outcomes: &[UpsertOutcome]| -> Result<SideWrites> {
                count(&mut recorded, outcomes);
                let mut writes = vec![JobStore::record_write(&recorded)?];
                writes.extend(seen);
                Ok(SideWrites { tree, writes })
            })
        };
        let engine = &self.shared.engine;
        // A disk under the free-space watermark pauses the job (it retries every second)
        // rather than failing its documents or the job; a stop or cancel still ends it.
        // (Unwritten, and `job` not advanced: the caller sees the interruption next, and a
        // resumed job reads this batch again.)
        while let Err(Error::Exhausted(_)) = engine.check_free_disk() {
            if self.interrupted().is_some() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        let written = self.patiently(|| {
            self.shared.runtime.block_on(engine.upsert_journaled(
                collection,
                docs.clone(),
                Some(journal()),
            ))
        });
        let written = match written {
            Ok(None) => return Ok(()),
            Ok(Some(outcomes)) => Ok(outcomes),
            Err(e) => Err(e),
        };
        match written {
            Ok(outcomes) => {
                count(next, &outcomes);
                record_metrics(&outcomes);
                self.shared.changed();
            }
            Err(e)
                if e.is_user_error()
                    && !matches!(e, Error::CollectionNotFound(_) | Error::Exhausted(_)) =>
            {
                let reason = e.to_string();
                for (doc, location) in docs.iter().zip(&locations) {
                    next.fail(location, &doc.id, &reason);
                }

                self.save(next, seen_again)?;
            }
            Err(e) => return Err(e),
        }
        *job = next.clone();
        Ok(())
    }

    /// Deletes the documents of this job's source that it did not see.
    fn sync(&mut self, job: &mut Job) -> Result<End> {
        let engine = &self.shared.engine;
        let source = job.spec.source.path.to_string_lossy().to_string();
        let collection = job.spec.collection.clone();
        let mut stale = Vec::new();
        let Some(ids) = self.patiently(|| engine.documents_from_source(&collection, &source))?
        else {
            return Ok(self.interrupted().unwrap_or(End::Stopped));
        };
        for id in ids {
            if self.shared.store.seen(job.id, &id)?.is_none() {
                stale.push(id);
            }
        }
        for ids in stale.chunks(SYNC_BATCH) {
            if let Some(end) = self.interrupted() {
                return Ok(end);
            }
            if !self.delete(job, &collection, ids)? {
                return Ok(self.interrupted().unwrap_or(End::Stopped));
            }
        }
        Ok(End::Done)
    }

    /// Deletes `ids` from `collection`, counted in `job` atomically with the delete. False
    /// when a stop or cancel came first.
    fn delete(&mut self, job: &mut Job, collection: &str, ids: &[String]) -> Result<bool> {
        let engine = &self.shared.engine;
        {
            let journal = || {
                let tree = self.shared.store.tree.clone();
                let mut recorded = job.clone();
                Box::new(move |deleted: usize| -> Result<SideWrites> {
                    recorded.counts.deleted += deleted as u64;
                    Ok(SideWrites {
                        tree,
                        writes: vec![JobStore::record_write(&recorded)?],
                    })
                })
            };
            let deleted = self.patiently(|| {
                self.shared.runtime.block_on(engine.delete_journaled(
                    collection,
                    ids.to_vec(),
                    journal(),
                ))
            })?;
            let Some(deleted) = deleted else {
                return Ok(false);
            };
            job.counts.deleted += deleted as u64;
            crate::metrics::global()
                .job_documents
                .add(&["deleted"], deleted as f64);
            self.shared.changed();
        }
        Ok(true)
    }
}
