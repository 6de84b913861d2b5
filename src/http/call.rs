//! One HTTP call, the same steps as the gRPC request layer and in the same order:
//! authenticate (O(1), before anything is read or queued), take an admission slot, read the
//! body within its limit, decode, call the service, encode. Every reply carries the call's
//! `x-request-id`; every error is a JSON body `{"code", "message", "request_id"}` with the
//! HTTP status of its code ([`crate::error::Code::http_status`]) and, for
//! RESOURCE_EXHAUSTED, `Retry-After`.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use futures::{Stream, StreamExt};
use tracing::Instrument;

use super::routes::Route;
use super::Context;
use crate::error::{Code, Error, Result};
use crate::metrics;

/// Longest `x-timeout-ms` a client may set (a day): longer is no deadline at all.
const MAX_TIMEOUT_MS: u64 = 86_400_000;

/// What a route's call receives: the body, unread, and the fields its path and query set.
pub struct Input {
    pub body: Body,
    pub params: Vec<(&'static str, String)>,
    /// The caller's deadline (`x-timeout-ms`), for calls that stream their replies.
    pub deadline: Option<Instant>,
    /// Largest body (or NDJSON line), `limits.max_message_bytes`.
    pub limit: usize,
    /// Longest wait for the next piece of a body, `limits.stream_idle_secs`.
    pub idle: Duration,
}

impl Input {
    /// The request message: the JSON body with the path and query fields set.
    pub async fn message<T: prost::Message + prost::Name + Default>(self) -> Result<T> {
        let body = read_body(self.body, self.limit, self.idle).await?;
        let params: Vec<(&str, &str)> = self.params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        crate::api::json::decode(&body, &params)
    }

    /// The body's bytes as they arrive; a broken body ends the stream with CANCELLED.
    pub fn chunks(self) -> impl Stream<Item = Result<bytes::Bytes>> + Send {
        self.body
            .into_data_stream()
            .map(|c| c.map_err(|_| Error::Cancelled))
    }

    /// Request messages, one per line of an NDJSON body (blank lines skipped), each with the
    /// path and query fields set. A line over the limit, or a broken body, ends the stream
    /// with an error.
    pub fn messages<T: prost::Message + prost::Name + Default + Send + 'static>(
        self,
    ) -> impl Stream<Item = Result<T>> + Send {
        let params: Vec<(&'static str, String)> = self.params;
        let limit = self.limit;
        let lines = Lines {
            data: self.body.into_data_stream(),
            buf: Vec::new(),
            scanned: 0,
            limit,
        };
        futures::stream::unfold(Some(lines), move |lines| {
            let params = params.clone();
            async move {
                let mut lines = lines?;
                let line = match lines.next().await {
                    Ok(Some(line)) => line,
                    Ok(None) => return None,
                    Err(e) => return Some((Err(e), None)),
                };
                let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
                Some((crate::api::json::decode::<T>(&line, &p), Some(lines)))
            }
        })
    }
}

/// The non-blank lines of a body, each at most `limit` bytes.
struct Lines {
    data: axum::body::BodyDataStream,
    buf: Vec<u8>,
    /// How many bytes of `buf` are known to hold no newline.
    scanned: usize,
    limit: usize,
}

impl Lines {
    fn too_long(&self) -> Error {
        Error::invalid(format!(
            "an NDJSON line is over limits.max_message_bytes = {}",
            self.limit
        ))
    }

    async fn next(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=self.scanned + end).collect();
                self.scanned = 0;
                if line.len() > self.limit {
                    return Err(self.too_long());
                }
                if !blank(&line) {
                    return Ok(Some(line));
                }
                continue;
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.limit {
                return Err(self.too_long());
            }
            match self.data.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                // A body that breaks midway: the client went away.
                Some(Err(_)) => return Err(Error::Cancelled),
                None if blank(&self.buf) => return Ok(None),
                None => {
                    self.scanned = 0;
                    return Ok(Some(std::mem::take(&mut self.buf)));
                }
            }
        }
    }
}

fn blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// The whole body, refused past `limit` bytes (read as it arrives: a body over the limit is
/// never held whole).
async fn read_body(body: Body, limit: usize, idle: Duration) -> Result<Vec<u8>> {
    let mut data = body.into_data_stream();
    let mut out = Vec::new();
    // A client that stops sending midway would hold its admission slot: each piece must come
    // within `limits.stream_idle_secs`, as a stream's messages must.
    let stalled = || {
        Error::DeadlineExceeded(format!(
            "the request body stalled for {} s (limits.stream_idle_secs)",
            idle.as_secs()
        ))
    };
    while let Some(chunk) = tokio::time::timeout(idle, data.next())
        .await
        .map_err(|_| stalled())?
    {
        // A body that breaks midway: the client went away.
        let chunk = chunk.map_err(|_| Error::Cancelled)?;
        if out.len() + chunk.len() > limit {
            return Err(Error::invalid(format!(
                "the request body is over limits.max_message_bytes = {limit}"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The deadline a client set with `x-timeout-ms` (milliseconds from now).
fn deadline(headers: &http::HeaderMap) -> Result<Option<Instant>> {
    let Some(v) = headers.get("x-timeout-ms") else {
        return Ok(None);
    };
    let ms: u64 = v
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Error::invalid("x-timeout-ms is not a number of milliseconds"))?;
    Ok((ms <= MAX_TIMEOUT_MS).then(|| Instant::now() + Duration::from_millis(ms)))
}

/// A request as the door received it.
pub struct Received {
    pub headers: http::HeaderMap,
    pub path: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    pub body: Body,
}

/// Runs one call of `route` and builds its reply, recording it in the metrics.
pub async fn run(ctx: Context, route: &Route, received: Received) -> Response {
    let id = crate::service::request_id(&received.headers);
    let span = tracing::info_span!("request", id = %id, method = %format_args!("{}/{}", route.service, route.method));
    let started = Instant::now();
    // A panic in a call (a bug) is an INTERNAL reply for that call, not a dropped connection
    // that takes the client's other calls with it.
    let call = std::panic::AssertUnwindSafe(serve(ctx, route, received).instrument(span));
    let result = futures::FutureExt::catch_unwind(call)
        .await
        .unwrap_or_else(|_| Err(Error::internal("the call panicked")));
    let (code, response) = match result {
        Ok(Reply::Json(json)) => (Code::Ok, reply(200, json, &id)),
        Ok(Reply::Events(events)) => (Code::Ok, sse(events, id)),
        Ok(Reply::Bytes(ct, bytes)) => (Code::Ok, streamed(ct, bytes, &id)),
        Err(e) => error_response(&e, &id),
    };
    let m = metrics::global();
    m.http_requests
        .inc(&[route.service, route.method, code.name()]);
    m.http_duration
        .observe_duration(&[route.service, route.method], started.elapsed());
    response
}

/// Authenticates, admits, decodes and calls: the steps of the gRPC request layer, in its
/// order.
async fn serve(ctx: Context, route: &Route, r: Received) -> Result<Reply> {
    let op = crate::service::row(route.service, route.method)?;
    let who = ctx
        .authn
        .check(&r.headers, op)?
        .ok_or_else(|| Error::internal("an API operation without a right"))?;
    let deadline = deadline(&r.headers)?;
    let slot = ctx.admission.admit(op.class, deadline).await?;
    let params = route.bind(r.path, r.query)?;
    let input = Input {
        body: r.body,
        deadline,
        params,
        limit: ctx.max_body,
        idle: ctx.body_idle,
    };
    let call = (route.call)(ctx.service.clone(), who, input);
    let reply = match deadline {
        None => call.await,
        Some(d) => tokio::time::timeout_at(d.into(), call)
            .await
            .map_err(|_| Error::DeadlineExceeded("the call's x-timeout-ms passed".into()))?,
    }?;
    // A streamed reply holds its admission slot until it ends, as over gRPC. Its first item
    // is awaited before the status is sent, so a call that fails at once (bad input found by
    // the work itself) gets its error status, not a 200 and an error event.
    Ok(match reply {
        Reply::Json(json) => Reply::Json(json),
        Reply::Events(events) => Reply::Events(keep(first_or_error(events).await?, slot)),
        Reply::Bytes(ct, bytes) => Reply::Bytes(ct, keep(first_or_error(bytes).await?, slot)),
    })
}

/// The stream, its first item already awaited: an error there is the call's error.
async fn first_or_error<T: Send + 'static>(mut s: Stream2<T>) -> Result<Stream2<T>> {
    match s.next().await {
        None => Ok(s),
        Some(Err(e)) => Err(e),
        Some(Ok(first)) => Ok(futures::stream::once(async move { Ok(first) })
            .chain(s)
            .boxed()),
    }
}

/// A stream that holds `slot` until it is dropped.
fn keep<T: Send + 'static>(
    s: Stream2<T>,
    slot: Option<crate::service::admission::Slot>,
) -> Stream2<T> {
    s.map(move |item| {
        let _held = &slot;
        item
    })
    .boxed()
}

type Stream2<T> = futures::stream::BoxStream<'static, Result<T>>;

/// Server-sent events: `data: JSON` per event; an error ends the stream with an
/// `event: error` whose data is the JSON error body.
fn sse(events: Stream2<Vec<u8>>, id: String) -> Response {
    // The service's event streams end after an error, so an error frame is the last.
    let id_for_errors = id.clone();
    let frames = events.map(move |item| {
            let frame = match item {
                Ok(json) => {
                    let mut f = b"data: ".to_vec();
                    f.extend_from_slice(&json);
                    f.extend_from_slice(b"\n\n");
                    f
                }
                Err(e) => {
                    let (code, message) = e.public();
                    let body = serde_json::json!({"code": code.name(), "message": message, "request_id": id_for_errors});
                    format!("event: error\ndata: {body}\n\n").into_bytes()
                }
            };
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(frame))
        });
    let mut r = Response::new(Body::from_stream(frames));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&id) {
        h.insert("x-request-id", v);
    }
    r
}

/// A streamed body of raw bytes (a snapshot archive). An error midway cuts the body short,
/// which the client sees as a broken transfer (the archive's own checksums catch the rest).
fn streamed(content_type: &'static str, bytes: Stream2<Vec<u8>>, id: &str) -> Response {
    let body = bytes.map(|b| {
        b.map(bytes::Bytes::from)
            .map_err(|e| std::io::Error::other(e.to_string()))
    });
    let mut r = Response::new(Body::from_stream(body));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    if let Ok(v) = http::HeaderValue::from_str(id) {
        h.insert("x-request-id", v);
    }
    r
}

/// What a route's call returns.
pub enum Reply {
    /// One JSON reply.
    Json(Vec<u8>),
    /// JSON events, sent as server-sent events.
    Events(Stream2<Vec<u8>>),
    /// Raw bytes of the given content type.
    Bytes(&'static str, Stream2<Vec<u8>>),
}

fn reply(status: u16, json: Vec<u8>, id: &str) -> Response {
    let mut r = Response::new(Body::from(json));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = http::HeaderValue::from_str(id) {
        h.insert("x-request-id", v);
    }
    r
}

/// The JSON error reply of `e`.
pub fn error_reply(e: &Error, id: &str) -> Response {
    error_response(e, id).1
}

/// The JSON error reply of `e`, with its code (decided once: [`Error::public`] logs
/// internal faults).
fn error_response(e: &Error, id: &str) -> (Code, Response) {
    let (code, message) = e.public();
    let body = serde_json::json!({"code": code.name(), "message": message, "request_id": id});
    let mut r = reply(code.http_status(), body.to_string().into_bytes(), id);
    if code == Code::ResourceExhausted {
        r.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
    }
    (code, r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::pb;

    fn input(body: &'static str, limit: usize) -> Input {
        Input {
            body: Body::from(body),
            params: vec![("collection", "c".to_string())],
            deadline: None,
            limit,
            idle: Duration::from_secs(5),
        }
    }

    async fn ids(body: &'static str, limit: usize) -> Vec<Result<String>> {
        input(body, limit)
            .messages::<pb::StreamUpsertRequest>()
            .map(|m| m.map(|m| m.document.map(|d| d.id).unwrap_or_default()))
            .collect()
            .await
    }

    #[tokio::test]
    async fn ndjson_lines_with_and_without_a_last_newline() {
        let one = r#"{"document": {"id": "a"}}"#;
        for body in [
            "{\"document\": {\"id\": \"a\"}}\n\n{\"document\": {\"id\": \"b\"}}",
            "{\"document\": {\"id\": \"a\"}}\n{\"document\": {\"id\": \"b\"}}\n\n",
        ] {
            let got: Vec<String> = ids(body, 1024)
                .await
                .into_iter()
                .map(|r| r.unwrap())
                .collect();
            assert_eq!(got, ["a", "b"], "{body:?}");
        }
        assert!(ids("", 1024).await.is_empty());
        assert!(ids(" \n \n", 1024).await.is_empty());
        // One line without a newline, the fuzzer's case.
        assert_eq!(ids(r#"{"document": {"id": "x"}}"#, 1024).await.len(), 1);
        // A line over the limit ends the stream with INVALID_ARGUMENT.
        let over = ids(one, 8).await;
        assert!(
            matches!(over.last(), Some(Err(Error::InvalidArgument(_)))),
            "{over:?}"
        );
        // The same when the long line and its newline arrive in one piece.
        let over = ids("{\"document\": {\"id\": \"a\"}}\n", 8).await;
        assert!(
            matches!(over.first(), Some(Err(Error::InvalidArgument(_)))),
            "{over:?}"
        );
        // A line that is not a message is INVALID_ARGUMENT, naming the message.
        let bad = ids("[1, 2]\n", 1024).await;
        assert!(matches!(bad.first(), Some(Err(Error::InvalidArgument(_)))));
    }
}
