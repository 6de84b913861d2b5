//! The process layer: one server, two front doors. It builds what both doors share (the
//! [`Service`], the [`Authenticator`], the one [`Admission`] state, so limits hold over both)
//! and runs the gRPC door and, when it has a listener, the HTTP/JSON door until shutdown.
//!
//! It owns the lifecycle: periodic checkpoints, the storage watch that reopens the data
//! directory after a storage failure (`storage`), the operations endpoint ([`ops`]), and
//! shutdown (both doors stop accepting and finish their calls within [`SHUTDOWN_GRACE`], then
//! the jobs stop, a bounded final checkpoint runs and the engine is released).

pub mod ops;
mod storage;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::answer::Answerer;
use crate::auth::Keys;
use crate::engine::{spawn_checkpointer, Engine};
use crate::service::{Admission, AdmissionSettings, Authenticator, Live, Service};

/// What a server runs with besides the engine.
#[derive(Default)]
pub struct ServeOptions {
    /// Grounded answers; without one (no router configured) answers are refused with
    /// FAILED_PRECONDITION.
    pub answerer: Option<Arc<Answerer>>,
    /// API keys; none: auth is off.
    pub keys: Keys,
    /// Server TLS for the gRPC door (see [`crate::grpc::server_tls`]); none: plaintext.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// The same certificate for the HTTP door (see [`crate::tls::server_config`]). With
    /// `tls` set and this not, the HTTP door stays off: never plaintext beside TLS.
    pub http_tls: Option<Arc<rustls::ServerConfig>>,
    /// Calls in flight and queued per class (over both doors).
    pub admission: AdmissionSettings,
    /// Told when shutdown begins (the operations endpoint's `/readyz`).
    pub readiness: Option<Arc<ops::Readiness>>,
}

/// Runs the gRPC door on `grpc` and the HTTP door on `http` (if any) until `shutdown`
/// resolves; then both stop accepting, finish their calls within their grace, and the
/// engine is checkpointed and released.
pub async fn serve(
    live: Arc<Live>,
    options: ServeOptions,
    grpc: TcpListener,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let ServeOptions {
        answerer,
        keys,
        tls,
        http_tls,
        admission,
        readiness,
    } = options;
    if keys.is_empty() {
        tracing::info!("no API keys configured: every caller may do everything");
    }
    let authn = Authenticator::new(keys);
    match &answerer {
        None => tracing::info!("no inference router configured: answers will be refused"),
        Some(a) => {
            for e in a.settings().routers.iter() {
                tracing::info!(router = %e.url, "inference router");
            }
        }
    }
    let service = Service::new(live.clone(), answerer);
    let admission = Arc::new(Admission::new(&admission));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(async move {
        shutdown.await;
        // Not ready from the first moment of shutdown (the operations endpoint's /readyz).
        if let Some(r) = &readiness {
            r.set_stopping();
        }
        let _ = stop_tx.send(true);
    });
    let http_task = match http {
        None => None,
        Some(_) if tls.is_some() && http_tls.is_none() => {
            tracing::warn!("the HTTP/JSON API is OFF: TLS is on for gRPC but no HTTP TLS configuration was given, and it never serves plaintext beside TLS");
            None
        }
        Some(listener) => {
            let limits = live.engine()?.config().limits.clone();
            let ctx = crate::http::Context {
                service: service.clone(),
                authn: authn.clone(),
                admission: admission.clone(),
                max_body: limits.max_message_bytes,
                body_idle: std::time::Duration::from_secs(limits.stream_idle_secs),
            };
            Some(tokio::spawn(crate::http::serve(
                ctx,
                listener,
                http_tls,
                stopped(),
            )))
        }
    };
    // Background work until both doors have stopped: periodic checkpoints and the storage
    // watch (which reopens the data directory after a storage failure).
    let (bg_stop_tx, bg_stop_rx) = tokio::sync::watch::channel(false);
    let (healthy_tx, healthy_rx) = tokio::sync::watch::channel(true);
    let every =
        std::time::Duration::from_secs(live.engine()?.config().index.checkpoint_interval_secs);
    let current = live.clone();
    let checkpointer = spawn_checkpointer(every, move || current.current(), bg_stop_rx.clone());
    let storage_watch = storage::spawn_watch(live.clone(), healthy_tx, bg_stop_rx);
    let options = crate::grpc::ServeOptions {
        service,
        authn,
        tls,
        admission,
        storage_healthy: healthy_rx,
    };
    let served = crate::grpc::serve(live.clone(), options, grpc, stopped()).await;
    if let Some(task) = http_task {
        match task.await {
            Ok(Err(e)) => tracing::error!(error = %e, "the HTTP API failed"),
            Err(e) => tracing::error!(error = %e, "the HTTP API task failed"),
            Ok(Ok(())) => {}
        }
    }
    let _ = bg_stop_tx.send(true);
    let _ = checkpointer.await;
    let _ = storage_watch.await;
    close(live).await;
    served
}

/// After both doors stopped: stop the jobs, checkpoint (bounded) and release the engine.
async fn close(live: Arc<Live>) {
    tracing::info!("in-flight requests finished; checkpointing");
    // Running jobs stop after their current batch and resume at the next start.
    let Some(engine) = live.close().await else {
        tracing::warn!("no engine open at shutdown (a storage reopen had not finished)");
        return;
    };
    // Everything acknowledged is already durable; a final checkpoint that fails (a full disk)
    // only means the indexes replay the log at the next start. Bounded too: it waits for each
    // collection's write lock, which an abandoned job's batch may hold; without it, the next
    // start replays the log (nothing is lost).
    match tokio::time::timeout(SHUTDOWN_GRACE, engine.checkpoint()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(
            error = %e,
            "final checkpoint failed; the next start will replay the log"
        ),
        Err(_) => tracing::warn!(
            "final checkpoint still waiting after {} s; skipped (the next start replays the log)",
            SHUTDOWN_GRACE.as_secs()
        ),
    }
    // Released here (sled's lock on the data directory with it), so the same directory can be
    // opened again at once; a call still running after the grace period may hold it longer.
    if !crate::service::live::release(engine, Some(SHUTDOWN_GRACE)).await {
        tracing::warn!("the engine is still referenced after shutdown");
    }
    tracing::info!("state flushed; bye");
}

pub use crate::service::SHUTDOWN_GRACE;

/// A server on loopback ports chosen by the OS (gRPC and HTTP), run inside this process
/// (used by `quarry eval` without `--server`, benchmarks and tests).
pub struct LocalServer {
    /// The gRPC door.
    pub url: String,
    /// The HTTP/JSON door.
    pub http_url: String,
    pub live: Arc<Live>,
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl LocalServer {
    /// Serves `engine`, with its job system set up by `jobs`.
    pub async fn start(
        engine: Arc<Engine>,
        options: ServeOptions,
        jobs: crate::jobs::JobSettings,
    ) -> anyhow::Result<LocalServer> {
        let live = Live::start(engine, jobs)?;
        let grpc = TcpListener::bind("127.0.0.1:0").await?;
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", grpc.local_addr()?);
        let http_url = format!("http://{}", http.local_addr()?);
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(serve(live.clone(), options, grpc, Some(http), async {
            let _ = rx.await;
        }));
        Ok(LocalServer {
            url,
            http_url,
            live,
            stop,
            handle,
        })
    }

    /// The engine being served now (it changes when the storage is reopened).
    pub fn engine(&self) -> anyhow::Result<Arc<Engine>> {
        Ok(self.live.engine()?)
    }

    /// A channel to the server (it may take a moment to accept the first connection).
    pub async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        let mut last = None;
        for _ in 0..50 {
            match tonic::transport::Channel::from_shared(self.url.clone())?
                .connect()
                .await
            {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Err(anyhow::anyhow!(
            "server at {} never accepted a connection: {last:?}",
            self.url
        ))
    }

    /// Graceful shutdown: in-flight requests finish, state is checkpointed, and this returns
    /// once the engine is released (sled's lock on the data directory with it), so the same
    /// directory can be opened again at once.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.handle.await??;
        Ok(())
    }
}
