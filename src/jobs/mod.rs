//! Server-side ingestion jobs: submit a source, watch it, cancel it, find it finished after a
//! restart, and re-run it cheaply.
//!
//! Why it is built this way:
//! - **Durable in sled, progress atomic with data.** A job's record (state, counts, failures,
//!   resume cursor) lives in the engine's database ([`record`]), and each batch's record is
//!   written in the same transaction as the batch's documents ([`crate::store::SideWrites`]).
//!   A crash therefore leaves either the batch and its progress, or neither: a resumed job
//!   starts exactly after the last committed batch and its counts stay exact.
//! - **Resumed, not restarted.** A job that was running when the server stopped (or crashed)
//!   is queued again at start-up and goes on from its cursor; documents committed before are
//!   not read again, let alone re-embedded.
//! - **One at a time per collection, in submission order.** Jobs of different collections run
//!   side by side, each on its own thread; searches keep serving (a batch holds the
//!   collection's write lock only while it commits, and ingestion leaves the model's cores to
//!   searches).
//! - **A bad document fails itself, not the job.** Unreadable files, bad JSONL lines, ids seen
//!   twice, documents over a limit or with metadata of the wrong type are recorded as failures
//!   (location and reason, the first [`MAX_FAILURES`] kept in full) and the job goes on; only
//!   an unreadable source or a storage fault fails the job.
//! - **`sync`.** Documents record the source they came from; after reading, a sync job deletes
//!   the documents of its source that it did not see (the ids it saw are kept in sled while it
//!   runs, so this too survives a restart).
//! - **Sources are read by the server**, so only under the operator's [`ImportRoots`].
//! - **A re-index is a job too** ([`Jobs::submit_reindex`]): its source is another collection
//!   of this server, read from what Quarry stores, and it ends by catching up with the writes
//!   that collection took meanwhile and, if asked, switching an alias (`run/reindex.rs`).
//!
//! `record.rs` holds the stored form, `roots.rs` the path policy, `run.rs` one job's run.

mod record;
mod roots;
mod run;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::engine::Engine;
use crate::error::{quote, Error, Result};
use crate::source::SourceSpec;

pub use record::{Failure, Job, JobCounts, JobSpec, JobState, JobStore, MAX_FAILURES};
pub use roots::ImportRoots;

/// Limits of the job system.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub roots: ImportRoots,
    /// Jobs queued or running at once; a submission past this is RESOURCE_EXHAUSTED.
    pub max_pending: usize,
    /// Finished jobs kept (the oldest are forgotten first).
    pub retained: usize,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            roots: ImportRoots::default(),
            max_pending: 1000,
            retained: 1000,
        }
    }
}

/// Largest ListJobs page.
pub const MAX_JOB_PAGE: usize = 1000;

/// The job system of one server.
#[derive(Clone)]
pub struct Jobs {
    shared: Arc<Shared>,
}

struct Shared {
    engine: Arc<Engine>,
    store: JobStore,
    settings: JobSettings,
    sched: Mutex<Sched>,
    /// Bumped after every change to any job: watchers wait on it.
    changes: tokio::sync::watch::Sender<u64>,
    stopping: AtomicBool,
    runtime: tokio::runtime::Handle,
}

#[derive(Default)]
struct Sched {
    /// Collection -> the job running on it.
    running: HashMap<String, u64>,
    controls: HashMap<u64, Arc<Control>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Flags a running job checks between documents.
/// How long [`Jobs::stop`] waits for running jobs to reach a stopping point.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Default)]
struct Control {
    cancel: AtomicBool,
    stop: AtomicBool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Parses a job id as shown to users.
pub fn parse_id(id: &str) -> Result<u64> {
    id.trim()
        .parse()
        .map_err(|_| Error::NotFound(format!("job {} not found", quote(id))))
}

const NEXT_ID: &[u8] = b"next-id";

impl Jobs {
    /// Opens the job tree, queues again the jobs a stop or crash interrupted, and starts what
    /// can run. Must be called inside a tokio runtime (jobs call the engine through it).
    pub fn start(engine: Arc<Engine>, settings: JobSettings) -> Result<Jobs> {
        let store = JobStore {
            tree: engine.named_tree("jobs")?,
        };
        for mut job in store.all()? {
            if job.state == JobState::Running {
                job.state = JobState::Queued;
                job.resumed += 1;
                tracing::info!(job = job.id, collection = %quote(&job.spec.collection), "resuming an interrupted job");
                store.put(&job, Vec::new())?;
            }
        }
        engine.flush_blocking()?;
        let jobs = Jobs {
            shared: Arc::new(Shared {
                engine,
                store,
                settings,
                sched: Mutex::new(Sched::default()),
                changes: tokio::sync::watch::channel(0).0,
                stopping: AtomicBool::new(false),
                runtime: tokio::runtime::Handle::current(),
            }),
        };
        jobs.shared.schedule();
        jobs.shared.refresh_gauge();
        Ok(jobs)
    }

    pub fn roots(&self) -> &ImportRoots {
        &self.shared.settings.roots
    }

    /// Queues an ingestion of `source` into `collection`.
    pub fn submit(&self, collection: &str, mut source: SourceSpec, sync: bool) -> Result<Job> {
        let s = &self.shared;
        if s.engine
            .collection(collection)?
            .external_dimension()
            .is_some()
        {
            return Err(Error::FailedPrecondition(format!(
                "collection {} uses external vectors: jobs read text files, which carry no vectors; upsert its documents as chunks with vectors",
                quote(collection)
            )));
        }
        source.path = s.settings.roots.resolve(&source.path)?;
        crate::source::check(&source)?;
        self.enqueue(JobSpec {
            collection: collection.to_string(),
            source,
            sync,
            from_collection: None,
            switch_alias: None,
        })
    }

    /// Submits a re-index: `collection` (a new generation, created with its settings) gets
    /// every document of `from` (a collection, or an alias: resolved now) from what Quarry
    /// stores, then catches up with the writes `from` took meanwhile; when `switch_alias` is
    /// given (an alias that points to `from` now), the job switches it to `collection` as its
    /// last step. See `reindex.rs`.
    pub fn submit_reindex(
        &self,
        collection: &str,
        from: &str,
        switch_alias: Option<&str>,
    ) -> Result<Job> {
        let s = &self.shared;
        let target = s.engine.collection(collection)?;
        let source = s.engine.collection(from)?;
        let (target_name, from) = (target.record().name.clone(), source.record().name.clone());
        if target_name != collection {
            return Err(Error::invalid(format!(
                "{} is an alias: a re-index writes into a collection (the new generation)",
                quote(collection)
            )));
        }
        if target_name == from {
            return Err(Error::invalid(format!(
                "a re-index needs another collection to write into: {} is the one it reads",
                quote(collection)
            )));
        }
        if source.external_dimension().is_some() || target.external_dimension().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "a re-index embeds texts again: {} or {} holds vectors given by the client, which only the client can give again",
                quote(&from),
                quote(collection)
            )));
        }
        if let Some(alias) = switch_alias {
            if s.engine.alias_target(alias)?.as_deref() != Some(from.as_str()) {
                return Err(Error::FailedPrecondition(format!(
                    "alias {} does not point to {}: a re-index switches an alias from the collection it reads",
                    quote(alias),
                    quote(&from)
                )));
            }
        }
        self.enqueue(JobSpec {
            collection: collection.to_string(),
            source: SourceSpec::default(),
            sync: true,
            from_collection: Some(from),
            switch_alias: switch_alias.map(str::to_string),
        })
    }

    /// Records a new job and starts it when its collection's turn comes.
    fn enqueue(&self, spec: JobSpec) -> Result<Job> {
        let s = &self.shared;
        let mut sched = s.lock()?;
        let pending = s
            .store
            .all()?
            .iter()
            .filter(|j| !j.state.is_finished())
            .count();
        if pending >= s.settings.max_pending {
            return Err(Error::Exhausted(format!(
                "{pending} jobs are queued or running, the limit (max_pending = {}); retry when some have finished",
                s.settings.max_pending
            )));
        }
        let id = match s.store.tree.get(NEXT_ID)? {
            Some(v) => u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| Error::internal("corrupt job id counter"))?,
            ),
            None => 1,
        };
        let job = Job::new(id, spec, now_ms());
        s.store.put(
            &job,
            vec![(NEXT_ID.to_vec(), Some((id + 1).to_be_bytes().to_vec()))],
        )?;
        s.engine.flush_blocking()?;
        let spec = &job.spec;
        let from = spec.from_collection.as_deref().unwrap_or("");
        tracing::info!(job = id, collection = %quote(&spec.collection), source = %quote(&spec.source.path.to_string_lossy()), from = %quote(from), sync = spec.sync, "job submitted");
        s.start_ready(&mut sched);
        drop(sched);
        s.changed();
        Ok(job)
    }

    pub fn get(&self, id: u64) -> Result<Job> {
        self.shared
            .store
            .get(id)?
            .ok_or_else(|| Error::NotFound(format!("job {id} not found")))
    }

    /// Jobs newest first, older than `before`, passing `keep`; and whether there are more.
    pub fn list(
        &self,
        before: Option<u64>,
        limit: usize,
        keep: impl Fn(&Job) -> bool,
    ) -> Result<(Vec<Job>, bool)> {
        self.shared
            .store
            .page(before, limit.clamp(1, MAX_JOB_PAGE), keep)
    }

    /// Cancels a job: a queued one at once; a running one stops after the batch it is
    /// writing (which completes). A finished job is returned as it is.
    pub fn cancel(&self, id: u64) -> Result<Job> {
        let s = &self.shared;
        let sched = s.lock()?;
        let mut job = self.get(id)?;
        match job.state {
            JobState::Queued => {
                job.state = JobState::Cancelled;
                job.finished_unix_ms = now_ms();
                s.store.put(&job, Vec::new())?;
                s.store.clear_seen(id)?;
                s.engine.flush_blocking()?;
                drop(sched);
                s.changed();
                s.refresh_gauge();
            }
            JobState::Running => {
                if let Some(c) = sched.controls.get(&id) {
                    c.cancel.store(true, Ordering::Release);
                }
            }
            _ => {}
        }
        Ok(job)
    }

    /// A receiver that changes whenever any job does.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Stops the running jobs after their current batch (they stay `running` in sled and
    /// resume at the next start) and waits for their threads, but at most [`STOP_GRACE`]:
    /// a job still busy then (a slow batch, a read the kernel holds) is abandoned, not waited
    /// for, so shutdown always ends; its record still says `running`, so the next start
    /// resumes it from its last committed batch. Blocking. False when a job was abandoned.
    pub fn stop(&self) -> bool {
        let s = &self.shared;
        s.stopping.store(true, Ordering::Release);
        let threads = match s.sched.lock() {
            Ok(mut sched) => {
                for c in sched.controls.values() {
                    c.stop.store(true, Ordering::Release);
                }
                std::mem::take(&mut sched.threads)
            }
            Err(_) => Vec::new(),
        };
        let deadline = std::time::Instant::now() + STOP_GRACE;
        let mut pending = threads;
        while !pending.is_empty() && std::time::Instant::now() < deadline {
            let (done, busy): (Vec<_>, Vec<_>) = pending.into_iter().partition(|t| t.is_finished());
            for t in done {
                let _ = t.join();
            }
            pending = busy;
            if !pending.is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        if !pending.is_empty() {
            tracing::warn!(
                jobs = pending.len(),
                "jobs still busy {} s after the stop: abandoned; they resume at the next start",
                STOP_GRACE.as_secs()
            );
            return false;
        }
        true
    }
}

impl Shared {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Sched>> {
        self.sched
            .lock()
            .map_err(|_| Error::internal("job scheduler lock poisoned"))
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    fn schedule(self: &Arc<Self>) {
        if let Ok(mut sched) = self.sched.lock() {
            self.start_ready(&mut sched);
        }
    }

    /// Starts every queued job whose collection has none running, oldest first.
    fn start_ready(self: &Arc<Self>, sched: &mut Sched) {
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        let queued = match self.store.all() {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the job records");
                return;
            }
        };
        sched.threads.retain(|t| !t.is_finished());
        for job in queued.into_iter().filter(|j| j.state == JobState::Queued) {
            if sched.running.contains_key(&job.spec.collection) {
                continue;
            }
            let control = Arc::new(Control::default());
            sched.running.insert(job.spec.collection.clone(), job.id);
            sched.controls.insert(job.id, control.clone());
            let shared = self.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("quarry-job-{}", job.id))
                .spawn(move || shared.run_and_release(job, control));
            match spawned {
                Ok(t) => sched.threads.push(t),
                Err(e) => tracing::error!(error = %e, "cannot start a job thread"),
            }
        }
    }

    fn run_and_release(self: Arc<Self>, job: Job, control: Arc<Control>) {
        let (id, collection) = (job.id, job.spec.collection.clone());
        let finished = run::run(&self, job, &control);
        if let Ok(mut sched) = self.sched.lock() {
            sched.running.remove(&collection);
            sched.controls.remove(&id);
            if finished {
                self.prune();
                self.start_ready(&mut sched);
            }
        }
        self.changed();
        self.refresh_gauge();
    }

    /// Forgets the oldest finished jobs past `retained`.
    fn prune(&self) {
        let Ok(all) = self.store.all() else { return };
        let finished: Vec<u64> = all
            .iter()
            .filter(|j| j.state.is_finished())
            .map(|j| j.id)
            .collect();
        let excess = finished.len().saturating_sub(self.settings.retained);
        for id in &finished[..excess] {
            if let Err(e) = self.store.remove(*id) {
                tracing::warn!(job = id, error = %e, "cannot forget an old job");
            }
        }
    }

    /// The `quarry_jobs` gauge, by state.
    fn refresh_gauge(&self) {
        let Ok(all) = self.store.all() else { return };
        let m = &crate::metrics::global().jobs;
        for state in JobState::ALL {
            let n = all.iter().filter(|j| j.state == state).count();
            m.set(&[state.as_str()], n as f64);
        }
    }
}

#[cfg(test)]
mod reindex_tests;
#[cfg(test)]
mod tests;
