//! The storage watch: when a write or flush fails in the storage (a full disk, an I/O error)
//! the server reports it (both doors' health; `/readyz`), and since sled keeps such an error
//! until reopened, once the disk has room again this task reopens the data directory in
//! place ([`Live::reopen`]) and the server serves again, without a restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::service::Live;

/// Watches the storage every 250 ms until `stop` turns true; `healthy` tells the doors.
pub fn spawn_watch(
    live: Arc<Live>,
    healthy_tx: tokio::sync::watch::Sender<bool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut healthy = true;
        let mut failing_since = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let Some(engine) = live.current() else {
                continue;
            };
            let now = engine.storage_healthy();
            if now != healthy {
                healthy = now;
                if healthy {
                    tracing::info!("storage healthy again: SERVING");
                } else {
                    failing_since = Instant::now();
                    tracing::error!(
                        "storage failed: NOT_SERVING until it recovers (reopened once the disk has room)"
                    );
                }
                let _ = healthy_tx.send(healthy);
            }
            if healthy {
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
