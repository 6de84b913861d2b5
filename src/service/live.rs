//! The engine the services call, replaceable while the server runs.
//!
//! Why: sled 0.34 keeps the first error its log writer meets (a full disk, an I/O error) and
//! fails every later write and flush with it until the database is opened again. A server that
//! only turned NOT_SERVING would need an operator to restart it once space was freed. Instead,
//! when the storage has failed, a probe flush still fails and the disk has room again, the
//! server reopens its engine in place: the same start-up path a restart takes (each collection
//! replays its operation log into its indexes), in the same process, on the same port, with the
//! models it had already loaded.
//!
//! How: services hold [`Live`] rather than the engine and take the current engine per call (a
//! read lock and a reference count), so a long stream does not pin an old engine. A reopen
//! 1. stops handing out the engine: new calls get UNAVAILABLE, which clients retry;
//! 2. stops the jobs after their current batch (they stay `running` and resume from their
//!    cursors, as after a restart);
//! 3. waits for the calls that still hold the old engine to end, then drops it, which releases
//!    sled's lock on the data directory;
//! 4. opens the data directory again (retrying with backoff while that fails) and restarts the
//!    jobs.
//!
//! Nothing acknowledged is at risk: an acknowledged write was flushed before its reply, and a
//! reopen is a restart without the process exiting.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::jobs::{JobSettings, Jobs};

/// Free bytes the data directory's file system needs before a reopen is tried (at least; the
/// configured `min_free_disk_bytes` when larger): opening writes a little to sled's log.
pub const REOPEN_MIN_FREE_BYTES: u64 = 4 * 1024 * 1024;

/// How long the storage must have been failing before a reopen is considered (a failure that
/// a later flush clears needs no reopen).
const FAILING_FOR: Duration = Duration::from_secs(1);

/// Longest wait between two attempts to open the data directory again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The engine and the job system on top of it.
#[derive(Clone)]
struct Current {
    engine: Arc<Engine>,
    jobs: Jobs,
}

enum State {
    Serving(Current),
    /// Between dropping a failed engine and opening the next one, or after shutdown.
    Closed(&'static str),
}

/// What the services call: the current engine, and the jobs running on it.
pub struct Live {
    state: RwLock<State>,
    job_settings: JobSettings,
    /// Reopens done since start (tests and logs).
    reopens: std::sync::atomic::AtomicU64,
}

impl Live {
    /// Serves `engine`, starting its job system (jobs a stop or crash interrupted resume).
    pub fn start(engine: Arc<Engine>, job_settings: JobSettings) -> Result<Arc<Live>> {
        if job_settings.roots.is_empty() {
            tracing::info!("no import roots: server-side ingestion jobs will be refused");
        } else {
            for root in job_settings.roots.canonical() {
                tracing::info!(root = %root.display(), "import root");
            }
        }
        let jobs = Jobs::start(engine.clone(), job_settings.clone())?;
        Ok(Arc::new(Live {
            state: RwLock::new(State::Serving(Current { engine, jobs })),
            job_settings,
            reopens: Default::default(),
        }))
    }

    fn current_parts(&self) -> Result<Current> {
        match &*self.state.read().map_err(|_| poisoned())? {
            State::Serving(c) => Ok(c.clone()),
            State::Closed(why) => Err(Error::Unavailable((*why).to_string())),
        }
    }

    /// The engine, or UNAVAILABLE while it is being reopened.
    pub fn engine(&self) -> Result<Arc<Engine>> {
        self.current_parts().map(|c| c.engine)
    }

    /// The job system, or UNAVAILABLE while the engine is being reopened.
    pub fn jobs(&self) -> Result<Jobs> {
        self.current_parts().map(|c| c.jobs)
    }

    /// The engine when there is one (metrics, readiness).
    pub fn current(&self) -> Option<Arc<Engine>> {
        self.engine().ok()
    }

    /// Reopens done since start.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn take(&self, why: &'static str) -> Option<Current> {
        let mut state = self.state.write().ok()?;
        match std::mem::replace(&mut *state, State::Closed(why)) {
            State::Serving(c) => Some(c),
            State::Closed(_) => None,
        }
    }

    /// Shutdown: stops the jobs (after their current batch) and hands back the engine for the
    /// final checkpoint. Later calls get UNAVAILABLE.
    pub async fn close(&self) -> Option<Arc<Engine>> {
        let current = self.take("the server is shutting down")?;
        let jobs = current.jobs;
        let _ = tokio::task::spawn_blocking(move || jobs.stop()).await;
        Some(current.engine)
    }

    /// Whether `engine`'s storage has failed for good and the disk has room to reopen it.
    /// Blocking (a probe flush).
    pub fn should_reopen(engine: &Engine, failing_since: Instant) -> bool {
        if engine.storage_healthy() || failing_since.elapsed() < FAILING_FOR {
            return false;
        }
        // A failure that was not sled's sticky error clears with the next flush.
        if engine.probe_storage() {
            return false;
        }
        let needed = engine
            .config()
            .limits
            .min_free_disk_bytes
            .max(REOPEN_MIN_FREE_BYTES);
        crate::engine::free_disk_bytes(&engine.config().data_dir).is_ok_and(|free| free >= needed)
    }

    /// Drops the current engine and opens its data directory again (see the module docs).
    /// Returns when the new engine serves, or when `stop` fires (shutdown), whichever is first.
    pub async fn reopen(&self, stop: &mut tokio::sync::watch::Receiver<bool>) -> Result<()> {
        // Taken before anything is closed: from the first step on, only a new engine ends this.
        let parts = match &*self.state.read().map_err(|_| poisoned())? {
            State::Serving(c) => c.engine.reopen_parts()?,
            State::Closed(_) => return Ok(()),
        };
        let Some(current) =
            self.take("the server is reopening its storage after a failure; retry shortly")
        else {
            return Ok(());
        };
        tracing::warn!("storage failed and the disk has room again: reopening the data directory");
        let started = Instant::now();
        let jobs = current.jobs;
        let _ = tokio::task::spawn_blocking(move || jobs.stop()).await;
        release(current.engine, None).await;
        let mut backoff = Duration::from_millis(250);
        let (engine, jobs) = loop {
            let parts = parts.clone();
            let settings = self.job_settings.clone();
            // The engine and its job system, or neither (a failed start drops the engine again).
            let opened = tokio::task::spawn_blocking(move || {
                let engine = Arc::new(parts.open()?);
                let jobs = Jobs::start(engine.clone(), settings)?;
                Ok::<_, Error>((engine, jobs))
            })
            .await
            .unwrap_or_else(|e| Err(Error::internal(format!("reopen task failed: {e}"))));
            match opened {
                Ok(c) => break c,
                Err(e) => {
                    tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "reopening the data directory failed");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        *self.state.write().map_err(|_| poisoned())? = State::Serving(Current { engine, jobs });
        self.reopens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            "data directory reopened: serving again"
        );
        Ok(())
    }
}

fn poisoned() -> Error {
    Error::internal("live engine lock poisoned")
}

/// Waits until `engine` is referenced only here, then drops it (off the async workers: the
/// drop flushes sled and joins its threads), releasing the data directory. Gives up after
/// `limit` (none: waits as long as it takes, warning every 10 s) and returns whether it was
/// released.
pub async fn release(mut engine: Arc<Engine>, limit: Option<Duration>) -> bool {
    let started = Instant::now();
    let mut warned = Instant::now();
    loop {
        match Arc::try_unwrap(engine) {
            Ok(e) => {
                let _ = tokio::task::spawn_blocking(move || drop(e)).await;
                return true;
            }
            Err(e) => engine = e,
        }
        if limit.is_some_and(|l| started.elapsed() >= l) {
            return false;
        }
        if warned.elapsed() >= Duration::from_secs(10) {
            warned = Instant::now();
            tracing::warn!(
                holders = Arc::strong_count(&engine) - 1,
                "waiting for calls that still hold the engine to end"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
