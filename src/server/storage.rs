//! The storage watch: when a write or flush fails in the storage (a full disk, an I/O error)
//! the server reports it (both doors' health; `/readyz`), and since sled keeps such an error
//! until reopened, once the disk has room again this task reopens the data directory in
//! place ([`Live::reopen`]) and the server serves again, without a restart.
//!
//! On the Qdrant backend it also asks Qdrant every [`BACKEND_PROBE_EVERY`] whether a node
//! answers: while none does, both doors' health says NOT_SERVING and `/readyz` 503, so an
//! orchestrator stops sending traffic that could only fail with UNAVAILABLE.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::service::Live;

/// How often the watch asks the backend (Qdrant) whether it answers.
pub const BACKEND_PROBE_EVERY: Duration = Duration::from_secs(2);

/// Watches the storage every 250 ms until `stop` turns true; `healthy` tells the doors.
pub fn spawn_watch(
    live: Arc<Live>,
    healthy_tx: tokio::sync::watch::Sender<bool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (mut storage_was, mut backend_was) = (true, true);
        let mut failing_since = Instant::now();
        let mut probed = Instant::now();
        // The probe runs beside the watch (a node that does not answer can take a connect
        // timeout), and the watch wakes the moment it ends, so the doors' health follows the
        // flag the probe set at once, as `/readyz` does, not a tick later.
        let mut probe: Option<tokio::task::JoinHandle<bool>> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            let probe_done = async {
                match probe.as_mut() {
                    Some(handle) => handle.await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => {}
                _ = probe_done => probe = None,
                _ = stop.changed() => return,
            }
            let Some(engine) = live.current() else {
                continue;
            };
            if probe.is_none() && probed.elapsed() >= BACKEND_PROBE_EVERY {
                probed = Instant::now();
                let prober = engine.clone();
                probe = Some(tokio::task::spawn_blocking(move || prober.probe_backend()));
            }
            let (storage, backend) = (engine.storage_healthy(), engine.backend_reachable());
            if (storage, backend) != (storage_was, backend_was) {
                if storage_was && !storage {
                    failing_since = Instant::now();
                    tracing::error!(
                        "storage failed: NOT_SERVING until it recovers (reopened once the disk has room)"
                    );
                }
                if backend_was && !backend {
                    tracing::error!("the backend cannot be reached: NOT_SERVING until it answers");
                }
                if storage && backend {
                    tracing::info!("storage and backend healthy: SERVING");
                }
                (storage_was, backend_was) = (storage, backend);
                let _ = healthy_tx.send(storage && backend);
            }
            if storage {
                continue;
            }
            let check = engine.clone();
            let reopen =
                tokio::task::spawn_blocking(move || Live::should_reopen(&check, failing_since))
                    .await
                    .unwrap_or(false);
            drop(engine);
            if reopen {
                if let Err(e) = live.reopen(&mut stop).await {
                    tracing::error!(error = %e, "reopening the storage failed");
                }
                failing_since = Instant::now();
            }
        }
    })
}
