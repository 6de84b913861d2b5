//! The operations HTTP listener (`--metrics-listen`, loopback by default): `/metrics`
//! (Prometheus text format), `/healthz` (the process is up) and `/readyz` (it can serve:
//! start-up finished, with recovery and model loading, storage has not failed, and on the
//! Qdrant backend a Qdrant node answers).
//!
//! It starts before the engine opens, so an orchestrator sees a live but unready process
//! during recovery. Served by axum on the HTTP door's listener (header read timeout,
//! keepalive), which the process already has; it has no keys, so it stays on loopback
//! unless `metrics_allow_remote`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;

use crate::metrics;
use crate::service::Live;

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
        if !engine.backend_reachable() {
            return Err("no Qdrant node in [backend] url can be reached");
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
    metrics::gauge(
        &mut out,
        "quarry_backend_reachable",
        "0 while no node of the Qdrant backend answers (always 1 on the embedded backend).",
        &[(vec![], f64::from(u8::from(engine.backend_reachable())))],
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

/// The operations router: `/metrics`, `/healthz`, `/readyz`; anything else 404.
pub fn router(readiness: Arc<Readiness>) -> axum::Router {
    use axum::routing::get;
    let text = |code: u16, kind: &'static str, body: String| {
        let mut r = axum::response::Response::new(axum::body::Body::from(body));
        *r.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK);
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(kind),
        );
        r
    };
    let metrics = {
        let readiness = readiness.clone();
        move || async move {
            // Off the async workers: reading collection state takes locks a rebuild may hold.
            let body = tokio::task::spawn_blocking(move || render(&readiness))
                .await
                .unwrap_or_default();
            text(200, "text/plain; version=0.0.4", body)
        }
    };
    let ready = move || async move {
        match readiness.check() {
            Ok(()) => text(200, "text/plain", "ready\n".into()),
            Err(why) => text(503, "text/plain", format!("not ready: {why}\n")),
        }
    };
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(move || async move { text(200, "text/plain", "ok\n".into()) }),
        )
        .route("/readyz", get(ready))
        .fallback(move || async move {
            text(
                404,
                "text/plain",
                "not found: /metrics, /healthz, /readyz\n".into(),
            )
        })
}

/// Serves the operations endpoints on `listener` until `stop` turns true, with the HTTP
/// door's listener (header read timeout, keepalive).
pub async fn serve_ops(
    listener: TcpListener,
    readiness: Arc<Readiness>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = crate::http::listen::serve(router(readiness), listener, None, stopped).await {
        tracing::error!(error = %e, "the operations endpoint failed");
    }
}
