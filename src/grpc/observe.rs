//! One tower layer in front of every gRPC service: request ids, admission control and
//! request metrics.
//!
//! - **Authentication first**: the call's row in the operations table
//!   ([`crate::service::OPERATIONS`]) says whether it needs a key and which right; a call
//!   without a valid key, or without that right, or on a path the table does not know, is
//!   answered at once, before admission, and costs O(1) with no per-path state. The caller's
//!   [`crate::auth::Principal`] rides in the request's extensions to the handler, which
//!   checks the collections the call touches.
//! - **Request id**: taken from the request's `x-request-id` (if it is a short token) or made
//!   up, put on the request's tracing span and returned in the response's `x-request-id`.
//! - **Admission**: each call falls in a class (read, write, eval, answer) with a bounded number
//!   in flight and a bounded queue. A call that finds both full is refused at once with
//!   RESOURCE_EXHAUSTED, so overload sheds load instead of growing latency without bound; a
//!   queued call waits at most `queue_wait_ms` (or its own deadline). The permit is held until
//!   the response body ends, so a stream counts for as long as it runs. Health checks and
//!   reflection are never queued.
//! - **Metrics**: requests by service, method (from the table: unknown paths are counted as
//!   `unknown`, so label values come from a closed set) and status code (taken from the trailers, or from
//!   the headers of a trailers-only error), latency to the end of the body, in-flight and
//!   refused requests per class. A body dropped before its end (the client went away) counts as
//!   CANCELLED.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::Frame;
use tonic::Status;
use tracing::Instrument;

use super::status::to_status;
use crate::metrics;

pub use crate::service::admission::{Admission, AdmissionSettings, ClassLimit, Slot};
use crate::service::{Authenticator, Class};

/// The deadline of a request, from its `grpc-timeout`.
pub fn request_deadline<T>(r: &tonic::Request<T>) -> Option<Instant> {
    client_deadline(&r.metadata().clone().into_headers())
}

/// The deadline a client set with `grpc-timeout` (for example `250m`: 250 ms).
pub fn client_deadline(headers: &http::HeaderMap) -> Option<Instant> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(d)
}

/// The layer; see the module docs.
#[derive(Clone)]
pub struct ObserveLayer {
    admission: Arc<Admission>,
    authn: Authenticator,
    /// Longest wait for the next piece of a request body (`limits.stream_idle_secs`).
    idle: Duration,
}

impl ObserveLayer {
    /// The layer over the process's one admission state and authenticator (shared with the
    /// HTTP door).
    pub fn new(admission: Arc<Admission>, authn: Authenticator, idle: Duration) -> ObserveLayer {
        ObserveLayer {
            admission,
            authn,
            idle,
        }
    }
}

impl<S> tower_layer::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            admission: self.admission.clone(),
            authn: self.authn.clone(),
            idle: self.idle,
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    admission: Arc<Admission>,
    authn: Authenticator,
    idle: Duration,
}

/// The label a path outside the operations table is counted under: metrics label values come
/// from closed sets only, so unknown paths cannot add series.
const UNKNOWN: &str = "unknown";

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Observe<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        // A client that stops sending its request midway, its connection kept alive, would
        // hold its admission slot: each piece of a request body must come within
        // `limits.stream_idle_secs`, as on the HTTP door.
        let idle = self.idle;
        let mut req = req.map(|b| tonic::body::Body::new(IdleBody::new(b, idle)));
        // The clone serves this call; the ready one stays for the next (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let admission = self.admission.clone();
        let path = req.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let op = crate::service::operation(service, method);
        let (service, method) = op.map_or((UNKNOWN, UNKNOWN), |o| (o.service, o.method));
        let id = crate::service::request_id(req.headers());
        if let Ok(v) = http::HeaderValue::from_str(&id) {
            req.headers_mut().insert("x-request-id", v);
        }
        // Who is calling, before anything else: a call without a valid key (or without the
        // right its operation needs) is refused here, in O(1), before it can take an
        // admission slot or reach a handler. Unknown paths are refused the same way.
        let checked = match op {
            None => Err(Status::unimplemented("no such method on this server")),
            Some(op) => self
                .authn
                .check(req.headers(), op)
                .map(|principal| {
                    if let Some(p) = principal {
                        req.extensions_mut().insert(p);
                    }
                })
                .map_err(to_status),
        };
        if let Err(status) = checked {
            let code = status.code();
            let mut response = status.into_http::<tonic::body::Body>();
            tag(&mut response, &id);
            metrics::global()
                .grpc_requests
                .inc(&[service, method, code_name(code)]);
            return Box::pin(async move { Ok(response) });
        }
        let class = op.map_or(Class::Free, |o| o.class);
        let deadline = client_deadline(req.headers());
        let span =
            tracing::info_span!("request", id = %id, method = %format_args!("{service}/{method}"));
        Box::pin(
            async move {
                let started = Instant::now();
                let permit = match admission.admit(class, deadline).await.map_err(to_status) {
                    Ok(p) => p,
                    Err(status) => {
                        // Debug, not warn: under overload a line per refusal would flood the
                        // log; quarry_grpc_requests_rejected_total counts them.
                        tracing::debug!(class = class.name(), "refused: {}", status.message());
                        let mut response = status.into_http::<tonic::body::Body>();
                        tag(&mut response, &id);
                        metrics::global().grpc_requests.inc(&[
                            service,
                            method,
                            code_name(tonic::Code::ResourceExhausted),
                        ]);
                        return Ok(response);
                    }
                };
                let in_flight = InFlight::new(class);
                let response = inner.call(req).await?;
                let (mut parts, body) = response.into_parts();
                if let Ok(v) = http::HeaderValue::from_str(&id) {
                    parts.headers.insert("x-request-id", v);
                }
                // A trailers-only response (an error before any message) has its status in
                // the headers.
                let early = status_in(&parts.headers);
                let body = Watched {
                    inner: body,
                    record: Some(Record {
                        service,
                        method,
                        started,
                        _permit: permit,
                        _in_flight: in_flight,
                    }),
                    early,
                };
                Ok(http::Response::from_parts(
                    parts,
                    tonic::body::Body::new(body),
                ))
            }
            .instrument(span),
        )
    }
}

fn tag(response: &mut http::Response<tonic::body::Body>, id: &str) {
    if let Ok(v) = http::HeaderValue::from_str(id) {
        response.headers_mut().insert("x-request-id", v);
    }
}

fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// The canonical upper-case name of a code (as grpc-go and grpcurl print them).
pub fn code_name(c: tonic::Code) -> &'static str {
    super::status::core_code(c).name()
}

/// Counts a class's in-flight calls while alive.
struct InFlight(Class);

impl InFlight {
    fn new(class: Class) -> InFlight {
        metrics::global().grpc_in_flight.add(&[class.name()], 1.0);
        InFlight(class)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::global().grpc_in_flight.add(&[self.0.name()], -1.0);
    }
}

struct Record {
    service: &'static str,
    method: &'static str,
    started: Instant,
    _permit: Option<Slot>,
    _in_flight: InFlight,
}

impl Record {
    fn finish(self, code: tonic::Code) {
        let m = metrics::global();
        m.grpc_requests
            .inc(&[self.service, self.method, code_name(code)]);
        m.grpc_duration
            .observe_duration(&[self.service, self.method], self.started.elapsed());
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the call when it ends (or is dropped unfinished).
    struct Watched<B> {
        #[pin]
        inner: B,
        record: Option<Record>,
        early: Option<tonic::Code>,
    }

    impl<B> PinnedDrop for Watched<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(r) = this.record.take() {
                r.finish(this.early.unwrap_or(tonic::Code::Cancelled));
            }
        }
    }
}

impl<B> http_body::Body for Watched<B>
where
    B: http_body::Body<Data = bytes::Bytes>,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_in) {
                    if let Some(r) = this.record.take() {
                        r.finish(code);
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(r) = this.record.take() {
                    r.finish(this.early.unwrap_or(tonic::Code::Ok));
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(r) = this.record.take() {
                    r.finish(tonic::Code::Internal);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A request body whose next piece must come within `idle` once it is waited for; past
    /// that it ends with DEADLINE_EXCEEDED (a `Status`, which tonic reports as it is).
    struct IdleBody<B> {
        #[pin]
        inner: B,
        #[pin]
        timer: Option<tokio::time::Sleep>,
        idle: Duration,
    }
}

impl<B> IdleBody<B> {
    fn new(inner: B, idle: Duration) -> Self {
        IdleBody {
            inner,
            timer: None,
            idle,
        }
    }
}

impl<B> http_body::Body for IdleBody<B>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                // The wait is over: the next one starts when it is needed.
                this.timer.set(None);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if this.timer.is_none() {
                    this.timer.set(Some(tokio::time::sleep(*this.idle)));
                }
                match this
                    .timer
                    .as_pin_mut()
                    .map(|t| std::future::Future::poll(t, cx))
                {
                    Some(Poll::Ready(())) => {
                        Poll::Ready(Some(Err(Box::new(Status::deadline_exceeded(format!(
                            "the request stalled for {} s (limits.stream_idle_secs)",
                            this.idle.as_secs()
                        ))))))
                    }
                    _ => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
