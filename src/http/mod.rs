//! The HTTP/JSON front door: the same operations as gRPC, for clients without gRPC (curl, a
//! browser, a serverless function, a language without protobuf code generation).
//!
//! - [`routes`]: the table of routes, each one operation of [`crate::service::Service`] at a
//!   resource-style path under `/v1`; the router and the OpenAPI document are built from it.
//! - `call`: one call, in the gRPC request layer's order: authenticate, admit, read the body
//!   within its limit, decode, call, encode; errors as JSON with the HTTP status of their code.
//! - [`console`]: the web console at `/console` (static pages over this API, embedded).
//! - [`openapi`]: the OpenAPI 3.1 document, generated from the route table and the proto
//!   descriptors, served at `/v1/openapi.json`.
//! - [`listen`]: the listener: plaintext or TLS (the server's certificate and client CA, as
//!   the gRPC door), with header read and handshake timeouts.
//!
//! Bodies are the proto's messages in the proto3 JSON mapping ([`crate::api::json`]) with the
//! proto's field names; the path and query set the fields they name. Keys, admission (one
//! [`Admission`] for both doors), limits, request ids and the error model are the gRPC
//! door's. No handler here holds request semantics: they are the service layer's.

mod call;
pub mod console;
pub mod listen;
pub mod openapi;
pub mod routes;

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use tokio::net::TcpListener;

use crate::error::Error;
use crate::service::{Admission, Authenticator, Service};

/// What every call needs: the operations, who may call them, and the shared admission state.
#[derive(Clone)]
pub struct Context {
    pub service: Service,
    pub authn: Authenticator,
    pub admission: Arc<Admission>,
    /// Largest request body (and NDJSON line): `limits.max_message_bytes`, as for gRPC.
    pub max_body: usize,
    /// Longest wait for the next piece of a request body: `limits.stream_idle_secs`.
    pub body_idle: std::time::Duration,
}

/// The router of every route in [`routes::routes`], `/v1/openapi.json`, and JSON replies for
/// unknown paths (404) and verbs (405).
pub fn router(ctx: Context) -> anyhow::Result<axum::Router> {
    let table = routes::routes();
    let document = Arc::new(openapi::document(&table)?);
    let mut router = axum::Router::new();
    for route in table {
        let filter = axum::routing::MethodFilter::try_from(route.verb.clone())
            .map_err(|e| anyhow::anyhow!("route {}: {e}", route.path))?;
        let path = route.path;
        let route = Arc::new(route);
        let handler = move |State(ctx): State<Context>,
                            params: Result<
            Path<Vec<(String, String)>>,
            axum::extract::rejection::PathRejection,
        >,
                            uri: http::Uri,
                            headers: http::HeaderMap,
                            body: Body| {
            let route = route.clone();
            async move {
                let id = crate::service::request_id(&headers);
                let Ok(Path(path)) = params else {
                    return call::error_reply(
                        &Error::invalid("a path parameter is not valid UTF-8"),
                        &id,
                    );
                };
                let query = match axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
                {
                    Ok(q) => q.0,
                    Err(_) => {
                        return call::error_reply(
                            &Error::invalid("the query string does not parse"),
                            &id,
                        )
                    }
                };
                let received = call::Received {
                    headers,
                    path,
                    query,
                    body,
                };
                call::run(ctx, &route, received).await
            }
        };
        router = router.route(path, axum::routing::on(filter, handler));
    }
    let openapi = move || {
        let document = document.clone();
        async move {
            let mut r = Response::new(Body::from(document.as_ref().clone()));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
    };
    Ok(router
        .route(openapi::PATH, axum::routing::get(openapi))
        .merge(console::routes())
        .fallback(|headers: http::HeaderMap| async move {
            let id = crate::service::request_id(&headers);
            call::error_reply(
                &Error::NotFound("no such route on this server (see /v1/openapi.json)".into()),
                &id,
            )
        })
        .method_not_allowed_fallback(|headers: http::HeaderMap| async move {
            let id = crate::service::request_id(&headers);
            let mut r = call::error_reply(
                &Error::invalid("this route does not take that HTTP method (see /v1/openapi.json)"),
                &id,
            );
            *r.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED;
            r
        })
        .with_state(ctx))
}

/// Serves the HTTP API on `listener` until `shutdown` resolves (over TLS when `tls` is
/// given); open calls then get [`crate::service::SHUTDOWN_GRACE`] to finish.
pub async fn serve(
    ctx: Context,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let router = router(ctx)?;
    tracing::info!(http_addr = %listener.local_addr()?, tls = tls.is_some(), "HTTP/JSON API listening");
    listen::serve(router, listener, tls, shutdown).await
}
