//! The gRPC transport: the only layer that knows the wire protocol.
//!
//! - [`pb`]: the API's messages ([`crate::api::pb`]) and tonic's stubs generated with them.
//! - `services` (Collections, Access, Documents, Search) and `streaming` (Jobs, Admin, Eval,
//!   Answers): decode, call [`crate::service::Service`], encode. No request semantics.
//! - `status`: core errors as `tonic::Status` (the decision is [`crate::Error::public`]).
//! - [`codec`]: prost's codec, with undecodable requests reported as INVALID_ARGUMENT.
//! - [`auth`]: the caller of a request, as the request layer authenticated it.
//! - [`observe`]: the layer in front of every service: request ids, admission, request metrics.
//! - [`live`]: the engine the services call, reopened in place after a storage failure (sled
//!   fails for good after one failed write until reopened).
//! - [`serve`]: wires Quarry's services, `grpc.health.v1` and server reflection (v1 and
//!   v1alpha) onto a listener, with keys, TLS, keepalive and the observe layer, and runs until
//!   the shutdown future resolves, then finishes in-flight requests and checkpoints the engine.
//!   It receives the [`Live`] engine and [`ServeOptions`] (service, keys, TLS, admission): nothing below
//!   this layer sees the whole server configuration.

pub mod auth;
pub mod codec;
pub mod observe;
mod services;
mod status;
mod streaming;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::convert;
pub use crate::api::pb;
pub use crate::service::{live, Live};

pub use convert::{
    document_for_upsert, eval_outcome, fusion as fusion_from_pb, fusion_to_pb, gate_comparison,
    mode as mode_from_pb, mode_to_pb, search_settings,
};
pub use status::to_status;

/// Mirrors the storage's health (the process layer's watch) into `grpc.health.v1`: when a
/// write or flush fails in the storage, the server and its Quarry services turn NOT_SERVING
/// until the process layer has reopened it.
fn spawn_health_mirror(
    mut healthy: tokio::sync::watch::Receiver<bool>,
    reporter: tonic_health::server::HealthReporter,
) -> tokio::task::JoinHandle<()> {
    use tonic::server::NamedService;
    let services = [
        "",
        <pb::collections_server::CollectionsServer<services::Adapter>>::NAME,
        <pb::access_server::AccessServer<services::Adapter>>::NAME,
        <pb::documents_server::DocumentsServer<services::Adapter>>::NAME,
        <pb::jobs_server::JobsServer<services::Adapter>>::NAME,
        <pb::admin_server::AdminServer<services::Adapter>>::NAME,
        <pb::search_server::SearchServer<services::Adapter>>::NAME,
        <pb::eval_server::EvalServer<services::Adapter>>::NAME,
        <pb::answers_server::AnswersServer<services::Adapter>>::NAME,
    ];
    tokio::spawn(async move {
        // Ends when the process layer drops its side (shutdown).
        while healthy.changed().await.is_ok() {
            let status = match *healthy.borrow_and_update() {
                true => tonic_health::ServingStatus::Serving,
                false => tonic_health::ServingStatus::NotServing,
            };
            for name in services {
                reporter.set_service_status(name, status).await;
            }
        }
    })
}

use crate::service::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};
pub use crate::service::{MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_BYTES};
pub use crate::tls::TLS_HANDSHAKE_TIMEOUT;

use crate::service::SHUTDOWN_GRACE;

/// The `grpc.health.v1` service name under which a collection that could not be opened at
/// start-up reports NOT_SERVING.
pub fn collection_health_name(collection: &str) -> String {
    format!("quarry.v1.Collection/{collection}")
}

/// What the gRPC door runs with besides the engine (the process layer, [`crate::server`],
/// builds it).
pub struct ServeOptions {
    /// Every operation (shared with the HTTP door).
    pub service: crate::service::Service,
    /// Who is calling (shared with the HTTP door).
    pub authn: crate::service::Authenticator,
    /// Server TLS (see [`server_tls`]); none: plaintext.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Calls in flight and queued per class, shared with the HTTP door.
    pub admission: Arc<crate::service::Admission>,
    /// The storage's health, as the process layer watches it (`grpc.health.v1` mirrors it).
    pub storage_healthy: tokio::sync::watch::Receiver<bool>,
}

/// The server TLS configuration `settings` describe (reading the PEM files now, so a bad file
/// stops start-up with its name), or none when TLS is off.
pub fn server_tls(
    settings: &crate::tls::TlsSettings,
) -> crate::Result<Option<tonic::transport::ServerTlsConfig>> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    if !settings.enabled()? {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&settings.cert, &settings.key) else {
        return Ok(None);
    };
    crate::tls::install_crypto_provider();
    let identity = Identity::from_pem(
        crate::tls::read_pem(cert, "TLS certificate")?,
        crate::tls::read_pem(key, "TLS key")?,
    );
    let mut config = ServerTlsConfig::new()
        .identity(identity)
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    if let Some(ca) = &settings.client_ca {
        config = config.client_ca_root(Certificate::from_pem(crate::tls::read_pem(
            ca,
            "TLS client CA",
        )?));
    }
    Ok(Some(config))
}

/// Runs the gRPC door on `listener` until `shutdown` resolves and its calls have finished
/// (or the grace has passed). What comes after (checkpoints, closing the engine) is the
/// process layer's.
pub async fn serve(
    live: Arc<Live>,
    options: ServeOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let ServeOptions {
        service,
        authn,
        tls,
        admission,
        storage_healthy,
    } = options;
    let engine = live.engine()?;
    let max = engine.config().limits.max_message_bytes;
    let idle = std::time::Duration::from_secs(engine.config().limits.stream_idle_secs);
    let unavailable = engine.unavailable_collections().unwrap_or_default();
    drop(engine);
    let adapter = services::Adapter { service };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // Reflection in both versions: grpcurl speaks v1, grpcio-reflection and older tools
    // v1alpha. It needs a key when auth is on (it lists every method).
    fn reflection() -> tonic_reflection::server::Builder<'static> {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    }
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let collections = pb::collections_server::CollectionsServer::new(adapter.clone())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let access = pb::access_server::AccessServer::new(adapter.clone())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let documents = pb::documents_server::DocumentsServer::new(adapter.clone())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let jobs_server = pb::jobs_server::JobsServer::new(adapter.clone())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let admin = pb::admin_server::AdminServer::new(adapter.clone())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let search = pb::search_server::SearchServer::new(adapter.clone())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let eval = pb::eval_server::EvalServer::new(adapter.clone())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let answers = pb::answers_server::AnswersServer::new(adapter)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    health_reporter
        .set_serving::<pb::collections_server::CollectionsServer<services::Adapter>>()
        .await;
    health_reporter
        .set_serving::<pb::access_server::AccessServer<services::Adapter>>()
        .await;
    health_reporter
        .set_serving::<pb::documents_server::DocumentsServer<services::Adapter>>()
        .await;
    health_reporter
        .set_serving::<pb::search_server::SearchServer<services::Adapter>>()
        .await;
    health_reporter
        .set_serving::<pb::jobs_server::JobsServer<services::Adapter>>()
        .await;
    health_reporter
        .set_serving::<pb::admin_server::AdminServer<services::Adapter>>()
        .await;
    health_reporter
        .set_serving::<pb::eval_server::EvalServer<services::Adapter>>()
        .await;
    health_reporter
        .set_serving::<pb::answers_server::AnswersServer<services::Adapter>>()
        .await;
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    // A collection that could not be opened is NOT_SERVING under its own health name; the
    // server and the other collections serve.
    for (name, why) in unavailable {
        tracing::warn!(collection = %crate::error::quote(&name), reason = %why, "collection unavailable");
        health_reporter
            .set_service_status(
                collection_health_name(&name),
                tonic_health::ServingStatus::NotServing,
            )
            .await;
    }

    let health_mirror = spawn_health_mirror(storage_healthy, health_reporter.clone());
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "quarry listening");
    // Shutdown: stop accepting, let in-flight requests finish, but not forever: a client that
    // holds a stream open and idle would otherwise block the exit. Work cut off here is safe:
    // a write that is committing finishes in its own task and holds the write lock, which the
    // final checkpoint below waits for.
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    };
    // Keepalive: a peer that vanished without closing its connection (a crashed client, a
    // cut network) is noticed within ~40 s and its calls end, so it pins nothing.
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(std::time::Duration::from_secs(60)))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_max_pending_accept_reset_streams(Some(64));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
        tracing::info!("TLS on");
    }
    let server = builder
        .layer(observe::ObserveLayer::new(admission, authn, idle))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(collections)
        .add_service(access)
        .add_service(documents)
        .add_service(jobs_server)
        .add_service(admin)
        .add_service(search)
        .add_service(eval)
        .add_service(answers)
        // TCP_NODELAY: without it, small replies wait for delayed ACKs (~40 ms per request).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            signal,
        );
    let grace_over = async move {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = server => served?,
        _ = grace_over => tracing::warn!(
            "requests still open {} s after shutdown began; closing their connections",
            SHUTDOWN_GRACE.as_secs()
        ),
    }
    health_mirror.abort();
    Ok(())
}
