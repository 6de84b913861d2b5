//! The operations HTTP listener (`--metrics-listen`, loopback by default): `/metrics`
//! (Prometheus text format), `/healthz` (the process is up) and `/readyz` (it can serve:
//! start-up finished, with recovery and model loading, and storage has not failed).
//!
//! It starts before the engine opens, so an orchestrator sees a live but unready process
//! during recovery. A deliberately small HTTP/1.1 responder (one request per connection,
//! bounded request size, a read timeout, a cap on connections) rather than a web framework:
//! three GET endpoints do not need one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::Live;
use crate::metrics;

/// What `/readyz` reports.
#[derive(Default)]
pub struct Readiness {
    live: OnceLock<Arc<Live>>,
    stopping: AtomicBool,
}

impl Readiness {
    pub fn new() -> Arc<Readiness> {
        Arc::new(Readiness::default())
    }

    /// Start-up is over: the engine is open (recovered) and its default model loaded.
    pub fn set_ready(&self, live: Arc<Live>) {
        let _ = self.live.set(live);
    }

    /// Shutdown began: not ready any more.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// `Ok` when ready, else why not.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.stopping.load(Ordering::Acquire) {
            return Err("shutting down");
        }
        let Some(live) = self.live.get() else {
            return Err("starting: recovering collections and loading models");
        };
        let Some(engine) = live.current() else {
            return Err("reopening the storage after a failure");
        };
        if !engine.storage_healthy() {
            return Err("storage failed: writes cannot be made durable");
        }
        Ok(())
    }
}

/// `/metrics`: the recorded families plus state read from the engine now.
fn render(readiness: &Readiness) -> String {
    let mut out = metrics::render();
    let ready = f64::from(u8::from(readiness.check().is_ok()));
    metrics::gauge(
        &mut out,
        "quarry_ready",
        "1 when /readyz says ready.",
        &[(vec![], ready)],
    );
    let Some(live) = readiness.live.get() else {
        return out;
    };
    metrics::gauge(
        &mut out,
        "quarry_storage_reopens",
        "Times the data directory was reopened in place after a storage failure.",
        &[(vec![], live.reopens() as f64)],
    );
    let Some(engine) = live.current() else {
        return out;
    };
    metrics::gauge(
        &mut out,
        "quarry_storage_healthy",
        "0 after a write failed in the storage (a full disk, an I/O error).",
        &[(vec![], f64::from(u8::from(engine.storage_healthy())))],
    );
    let stats = engine.collection_stats();
    type Sample = (Vec<(&'static str, String)>, f64);
    let series = |f: &dyn Fn(&crate::engine::CollectionStats) -> f64| -> Vec<Sample> {
        stats
            .iter()
            .map(|s| (vec![("collection", s.name.clone())], f(s)))
            .collect()
    };
    metrics::gauge(
        &mut out,
        "quarry_collection_documents",
        "Documents per collection.",
        &series(&|s| s.documents as f64),
    );
    metrics::gauge(
        &mut out,
        "quarry_collection_chunks",
        "Chunks per collection.",
        &series(&|s| s.chunks as f64),
    );
    metrics::gauge(
        &mut out,
        "quarry_hnsw_points",
        "Points in each collection's HNSW graph, deleted ones included.",
        &series(&|s| s.hnsw_points as f64),
    );
    metrics::gauge(
        &mut out,
        "quarry_hnsw_tombstones",
        "Deleted points still in each collection's HNSW graph (until a rebuild).",
        &series(&|s| s.hnsw_tombstones as f64),
    );
    metrics::gauge(
        &mut out,
        "quarry_collection_stale",
        "1 while a collection's indexes are behind its log (after an index failure).",
        &series(&|s| f64::from(u8::from(s.stale))),
    );
    out
}

async fn respond(
    socket: &mut tokio::net::TcpStream,
    readiness: &Arc<Readiness>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    // The request line and headers, within 8 KiB and 5 s.
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = socket.read(&mut buf[len..]).await?;
            len += n;
            if n == 0 || buf[..len].windows(4).any(|w| w == b"\r\n\r\n") || len == buf.len() {
                return Ok::<_, std::io::Error>(());
            }
        }
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut words = head.split_whitespace();
    let (verb, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (code, kind, body) = match (verb, path) {
        ("GET", "/metrics") => {
            // Off the async workers: reading collection state takes locks a rebuild may hold.
            let r = readiness.clone();
            let body = tokio::task::spawn_blocking(move || render(&r))
                .await
                .unwrap_or_default();
            (200, "text/plain; version=0.0.4", body)
        }
        ("GET", "/healthz") => (200, "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") => match readiness.check() {
            Ok(()) => (200, "text/plain", "ready\n".to_string()),
            Err(why) => (503, "text/plain", format!("not ready: {why}\n")),
        },
        ("GET", _) => (
            404,
            "text/plain",
            "not found: /metrics, /healthz, /readyz\n".into(),
        ),
        _ => (405, "text/plain", "only GET\n".to_string()),
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await
}

/// Serves the operations endpoints on `listener` until `stop` turns true.
pub async fn serve_ops(
    listener: TcpListener,
    readiness: Arc<Readiness>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let Ok((mut socket, _)) = accepted else {
            continue;
        };
        // Past 64 open connections, new ones are closed at once.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let _ = respond(&mut socket, &readiness).await;
            drop(permit);
        });
    }
}
