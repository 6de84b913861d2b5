//! The HTTP door's listener: connections accepted here (TLS handshakes first, when TLS is on)
//! and served by hyper-util, HTTP/1.1 or HTTP/2 (by ALPN over TLS, by preface in plaintext),
//! with the limits a hostile peer needs: request headers must arrive within
//! [`HEADER_READ_TIMEOUT`] (a slow-loris peer pins nothing), a TLS handshake within
//! [`TLS_HANDSHAKE_TIMEOUT`], HTTP/2 keepalive notices vanished peers, and the gRPC door's
//! stream and header-size limits apply. On shutdown every connection is told to finish and
//! gets [`SHUTDOWN_GRACE`].
//!
//! Why not `axum::serve`: it sets no timer, so it has no header read timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};

use crate::service::{
    KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_BYTES,
    SHUTDOWN_GRACE,
};
use crate::tls::TLS_HANDSHAKE_TIMEOUT;

/// How long a client has to send a request's headers (HTTP/1.1).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

fn builder() -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // hyper's read buffer, which bounds the request head; its floor is 8 KiB.
        .max_buf_size((MAX_HEADER_LIST_BYTES as usize).max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(KEEPALIVE_INTERVAL))
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .max_pending_accept_reset_streams(Some(64));
    b
}

/// Serves `router` on `listener` until `shutdown` resolves (over TLS with `tls`).
pub async fn serve(
    router: axum::Router,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // TCP_NODELAY, as for gRPC: small replies must not wait for delayed ACKs.
            let _ = tcp.set_nodelay(true);
            match acceptor {
                None => {
                    let b = builder();
                    let conn = b.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                Some(acceptor) => {
                    let Some(stream) = handshake(&acceptor, tcp).await else {
                        return; // A failed or stalled handshake: nothing was served.
                    };
                    let b = builder();
                    let conn = b.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
            }
        });
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP calls still open after the shutdown grace; closing them");
    }
    Ok(())
}

async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .ok()?
        .ok()
}
