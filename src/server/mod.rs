//! The process layer: one server, two front doors. It builds what both doors share (the
//! [`Service`], the [`Authenticator`], the one [`Admission`] state, so limits hold over both)
//! and runs the gRPC door and, when it has a listener, the HTTP/JSON door until shutdown.
//!
//! The gRPC door still owns the rest of the lifecycle it had before the HTTP door existed
//! (checkpoints, the storage watch and reopen, the final checkpoint): moving those here is
//! part of issue 23's next step.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::answer::Answerer;
use crate::auth::Keys;
use crate::engine::Engine;
use crate::service::{Admission, AdmissionSettings, Authenticator, Live, Service};

/// What a server runs with besides the engine.
#[derive(Default)]
pub struct ServeOptions {
    /// Grounded answers; without one (no router configured) answers are refused with
    /// FAILED_PRECONDITION.
    pub answerer: Option<Arc<Answerer>>,
    /// API keys; none: auth is off.
    pub keys: Keys,
    /// Server TLS (see [`crate::grpc::server_tls`]); none: plaintext.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Calls in flight and queued per class (over both doors).
    pub admission: AdmissionSettings,
    /// Told when shutdown begins (the operations endpoint's `/readyz`).
    pub readiness: Option<Arc<crate::grpc::ops::Readiness>>,
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
        let _ = stop_tx.send(true);
    });
    let http_task = match http {
        None => None,
        Some(_) if tls.is_some() => {
            tracing::warn!("the HTTP/JSON API is OFF: it does not serve TLS yet, and never serves plaintext beside TLS");
            None
        }
        Some(listener) => {
            let max_body = live.engine()?.config().limits.max_message_bytes;
            let ctx = crate::http::Context {
                service: service.clone(),
                authn: authn.clone(),
                admission: admission.clone(),
                max_body,
            };
            Some(tokio::spawn(crate::http::serve(ctx, listener, stopped())))
        }
    };
    let options = crate::grpc::ServeOptions {
        service,
        authn,
        tls,
        admission,
        readiness,
    };
    let served = crate::grpc::serve(live, options, grpc, stopped()).await;
    if let Some(task) = http_task {
        match task.await {
            Ok(Err(e)) => tracing::error!(error = %e, "the HTTP API failed"),
            Err(e) => tracing::error!(error = %e, "the HTTP API task failed"),
            Ok(Ok(())) => {}
        }
    }
    served
}

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
