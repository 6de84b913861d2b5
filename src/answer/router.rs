//! Client for OpenAI-compatible inference routers (`POST {base}/chat/completions`): llama.cpp's
//! `llama-server`, Ollama, vLLM, or a router in front of them.
//!
//! - Endpoints are tried in failover order. On one endpoint, connection errors, timeouts, 429
//!   and 5xx are retried with capped exponential backoff and full jitter; a `Retry-After` (in
//!   seconds or as an HTTP date) is honoured as given, beyond the backoff cap, up to the
//!   overall deadline. Other 4xx replies are not retried: the request itself is wrong.
//! - `http://` and `https://` (rustls; an endpoint's `ca_cert` adds a private CA). Streamed
//!   completions ask for usage (`stream_options.include_usage`), so token counts are reported
//!   by vLLM and OpenAI-style routers too.
//! - Structured output has three modes. `json_schema` (`response_format: {type: json_schema}`:
//!   OpenAI, vLLM, Ollama, llama-server), `json_object` with a `schema` field (the
//!   llama-cpp-python server, which rejects `json_schema`), and `instructions` (the schema is
//!   only in the prompt; the reply is validated all the same). In `auto` mode a 400 or 422 that
//!   names the response format, or a 5xx that names `response_format` (llama-cpp-python 0.3.36
//!   answers 500 with a validation error), moves the endpoint to the next mode, and the router
//!   remembers the mode that worked.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use super::retry::RetryPolicy;
use crate::error::{Error, Result};

/// How an endpoint is asked for structured output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StructuredMode {
    /// Try `json_schema`, then `json_object`, then `instructions`; remember what works.
    #[default]
    Auto,
    JsonSchema,
    JsonObject,
    Instructions,
}

impl StructuredMode {
    fn next(self) -> Option<StructuredMode> {
        match self {
            StructuredMode::Auto | StructuredMode::JsonSchema => Some(StructuredMode::JsonObject),
            StructuredMode::JsonObject => Some(StructuredMode::Instructions),
            StructuredMode::Instructions => None,
        }
    }
}

/// One router endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// OpenAI-compatible base URL, for example `http://127.0.0.1:8080/v1`.
    pub url: String,
    #[serde(default)]
    pub api_key: Option<String>,
    /// Model name sent to the router (empty: the router's default).
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub structured_output: StructuredMode,
    /// PEM file of a CA that signs this router's certificate (for `https://` routers with a
    /// private CA; public CAs and the system's roots are trusted already).
    #[serde(default)]
    pub ca_cert: Option<std::path::PathBuf>,
}

impl Endpoint {
    /// An endpoint with defaults: no key, the router's default model, auto-detected structured
    /// output.
    pub fn from_url(url: &str) -> Endpoint {
        Endpoint {
            url: url.trim_end_matches('/').to_string(),
            api_key: None,
            model: String::new(),
            structured_output: StructuredMode::Auto,
            ca_cert: None,
        }
    }
}

/// A chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Message {
        Message {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// Generation settings.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Overrides the endpoint's model when set.
    pub model: Option<String>,
    pub max_tokens: u32,
    pub temperature: f32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A router's reply.
#[derive(Debug, Clone)]
pub struct Completion {
    pub content: String,
    /// The model id the router reports.
    pub model: String,
    pub usage: Usage,
    /// Which endpoint answered, and in which structured-output mode.
    pub endpoint: usize,
    pub mode: StructuredMode,
    /// HTTP requests made, retries and failovers included.
    pub requests: u32,
}

/// What a streaming completion reports as it goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StreamEvent<'a> {
    /// A piece of the reply.
    Token(&'a str),
    /// The pieces reported so far belong to an attempt that failed and will be retried:
    /// discard them.
    Discard(&'a str),
}

/// Receives [`StreamEvent`]s.
pub type StreamSink<'a> = &'a (dyn Fn(StreamEvent<'_>) + Send + Sync);

pub struct Router {
    endpoints: Vec<Endpoint>,
    policy: RetryPolicy,
    http: reqwest::Client,
    /// Structured-output mode that worked per endpoint (auto mode's memory).
    learned: Mutex<HashMap<usize, StructuredMode>>,
}

enum Attempt {
    Done(Completion),
    /// Worth retrying (after the given delay, if the server named one).
    Retry(String, Option<Duration>),
    /// The endpoint rejected the response format: try the next mode.
    Unsupported(String),
    Fatal(Error),
}

impl Router {
    pub fn new(endpoints: Vec<Endpoint>, policy: RetryPolicy) -> Result<Router> {
        if endpoints.is_empty() {
            return Err(Error::FailedPrecondition(
                "no inference router is configured (quarry serve --router URL, or [answer] routers in the config file)".into(),
            ));
        }
        crate::tls::install_crypto_provider();
        let mut builder =
            reqwest::Client::builder().timeout(Duration::from_millis(policy.request_timeout_ms));
        for e in &endpoints {
            if !e.url.starts_with("http://") && !e.url.starts_with("https://") {
                return Err(Error::invalid(format!(
                    "router URL {:?} must start with http:// or https://",
                    e.url
                )));
            }
            if let Some(path) = &e.ca_cert {
                let pem = crate::tls::read_pem(path, "router CA certificate")?;
                let cert = reqwest::Certificate::from_pem(&pem).map_err(|err| {
                    Error::invalid(format!("router CA certificate {}: {err}", path.display()))
                })?;
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| Error::internal(format!("HTTP client: {e}")))?;
        Ok(Router {
            endpoints,
            policy,
            http,
            learned: Mutex::new(HashMap::new()),
        })
    }

    /// Sends a chat completion with a structured-output contract for `schema`. With `sink`, the
    /// reply is streamed (`stream: true`) and its pieces are reported as they arrive; a stream
    /// cut midway is retried like any other transient failure.
    pub async fn complete(
        &self,
        messages: &[Message],
        schema: &Value,
        gen: &Generation,
        sink: Option<StreamSink<'_>>,
    ) -> Result<Completion> {
        let deadline = Instant::now() + Duration::from_millis(self.policy.deadline_ms);
        let mut requests = 0;
        let mut failures: Vec<String> = Vec::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let mut mode = self
                .learned
                .lock()
                .map_err(|_| Error::internal("router state poisoned"))?
                .get(&i)
                .copied()
                .unwrap_or(match endpoint.structured_output {
                    StructuredMode::Auto => StructuredMode::JsonSchema,
                    m => m,
                });
            let auto = endpoint.structured_output == StructuredMode::Auto;
            let mut retry = 0;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return Err(Error::DeadlineExceeded(format!(
                        "inference router deadline of {} ms passed after {requests} requests ({})",
                        self.policy.deadline_ms,
                        failures.join("; ")
                    )));
                }
                requests += 1;
                let remaining = deadline - now;
                let attempt = tokio::time::timeout(
                    remaining,
                    self.attempt(i, endpoint, mode, messages, schema, gen, sink),
                )
                .await
                .unwrap_or_else(|_| Attempt::Retry("overall deadline reached".into(), None));
                let outcome = match &attempt {
                    Attempt::Done(_) => "ok",
                    Attempt::Retry(..) => "retry",
                    Attempt::Unsupported(_) => "rejected",
                    Attempt::Fatal(_) => "error",
                };
                crate::metrics::global()
                    .router_requests
                    .inc(&[&endpoint.url, outcome]);
                match attempt {
                    Attempt::Done(mut c) => {
                        c.requests = requests;
                        if auto {
                            if let Ok(mut l) = self.learned.lock() {
                                l.insert(i, mode);
                            }
                        }
                        return Ok(c);
                    }
                    Attempt::Unsupported(why) if auto => match mode.next() {
                        Some(next) => {
                            tracing::info!(endpoint = %endpoint.url, ?mode, ?next, "router rejected the response format; falling back");
                            failures.push(format!("{}: {why}", endpoint.url));
                            mode = next;
                        }
                        None => {
                            failures.push(format!("{}: {why}", endpoint.url));
                            break;
                        }
                    },
                    Attempt::Unsupported(why) => {
                        return Err(Error::Upstream(format!(
                            "router {} rejected the request: {why}",
                            endpoint.url
                        )))
                    }
                    Attempt::Fatal(e) => return Err(e),
                    Attempt::Retry(why, hint) => {
                        failures.push(format!("{}: {why}", endpoint.url));
                        if retry >= self.policy.max_retries {
                            break; // fail over to the next endpoint
                        }
                        let wait = super::retry::backoff(&self.policy, retry, hint);
                        retry += 1;
                        if Instant::now() + wait >= deadline {
                            tokio::time::sleep_until(deadline.into()).await;
                        } else {
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
            }
        }
        Err(Error::Upstream(format!(
            "every inference router failed after {requests} requests: {}",
            failures.join("; ")
        )))
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        index: usize,
        endpoint: &Endpoint,
        mode: StructuredMode,
        messages: &[Message],
        schema: &Value,
        gen: &Generation,
        sink: Option<StreamSink<'_>>,
    ) -> Attempt {
        let model = gen
            .model
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| endpoint.model.clone());
        let mut body = json!({
            "messages": messages,
            "max_tokens": gen.max_tokens,
            "temperature": gen.temperature,
            "stream": sink.is_some(),
        });
        if sink.is_some() {
            // vLLM and OpenAI report token counts in a stream only when asked.
            body["stream_options"] = json!({"include_usage": true});
        }
        if !model.is_empty() {
            body["model"] = json!(model);
        }
        match mode {
            StructuredMode::JsonSchema | StructuredMode::Auto => {
                body["response_format"] = json!({
                    "type": "json_schema",
                    "json_schema": {"name": "answer", "strict": true, "schema": schema},
                });
            }
            StructuredMode::JsonObject => {
                body["response_format"] = json!({"type": "json_object", "schema": schema});
            }
            StructuredMode::Instructions => {}
        }
        let url = format!("{}/chat/completions", endpoint.url.trim_end_matches('/'));
        let mut request = self.http.post(&url).json(&body);
        if let Some(key) = &endpoint.api_key {
            request = request.bearer_auth(key);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Attempt::Retry(format!("timed out: {e}"), None),
            Err(e) => return Attempt::Retry(format!("cannot reach router: {e}"), None),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(super::retry::retry_after);
        if status.is_success() {
            if let Some(sink) = sink {
                return read_stream(response, sink, index, mode, &model).await;
            }
        }
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) if e.is_timeout() => return Attempt::Retry(format!("timed out: {e}"), None),
            Err(e) => return Attempt::Retry(format!("reply cut off: {e}"), None),
        };
        if status.as_u16() == 429 {
            return Attempt::Retry("429 Too Many Requests".into(), retry_after);
        }
        // A rejected response format: a 400/422 naming it, or, as llama-cpp-python 0.3.36's
        // server does, a 500 carrying a request-validation error on `response_format`.
        let rejects_format = mode != StructuredMode::Instructions
            && ((matches!(status.as_u16(), 400 | 422)
                && (text.contains("response_format") || text.contains("json_schema")))
                || (status.is_server_error() && text.contains("response_format")));
        if rejects_format {
            return Attempt::Unsupported(format!("{status}: {}", snippet(&text)));
        }
        if status.is_server_error() {
            return Attempt::Retry(format!("{status}: {}", snippet(&text)), None);
        }
        if status.is_client_error() {
            return Attempt::Fatal(Error::Upstream(format!(
                "router {} refused the request ({status}): {}",
                endpoint.url,
                snippet(&text)
            )));
        }
        let value: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => return Attempt::Retry(format!("router reply is not JSON ({e})"), None),
        };
        let Some(content) = value["choices"][0]["message"]["content"].as_str() else {
            return Attempt::Retry(
                format!(
                    "router reply has no choices[0].message.content: {}",
                    snippet(&text)
                ),
                None,
            );
        };
        Attempt::Done(Completion {
            content: content.to_string(),
            model: value["model"].as_str().unwrap_or(&model).to_string(),
            usage: Usage {
                prompt_tokens: value["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
                completion_tokens: value["usage"]["completion_tokens"].as_u64().unwrap_or(0),
            },
            endpoint: index,
            mode,
            requests: 0,
        })
    }
}

/// Reads a server-sent-events chat completion stream (`data: {...}` lines, `data: [DONE]`).
async fn read_stream(
    response: reqwest::Response,
    sink: StreamSink<'_>,
    index: usize,
    mode: StructuredMode,
    requested_model: &str,
) -> Attempt {
    use futures::StreamExt;
    let mut stream = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut content = String::new();
    let mut model = requested_model.to_string();
    let mut usage = Usage::default();
    let mut done = false;
    let fail = |content: &str, why: String| {
        if !content.is_empty() {
            sink(StreamEvent::Discard(&why));
        }
        Attempt::Retry(why, None)
    };
    while !done {
        let chunk = match stream.next().await {
            Some(Ok(c)) => c,
            Some(Err(e)) => return fail(&content, format!("stream cut midway: {e}")),
            None => break,
        };
        buffer.extend_from_slice(&chunk);
        while let Some(pos) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                done = true;
                break;
            }
            let Ok(event) = serde_json::from_str::<Value>(data) else {
                return fail(
                    &content,
                    format!("malformed stream event: {}", snippet(data)),
                );
            };
            if let Some(m) = event["model"].as_str() {
                model = m.to_string();
            }
            if let Some(u) = event.get("usage").filter(|u| u.is_object()) {
                usage.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0);
                usage.completion_tokens = u["completion_tokens"].as_u64().unwrap_or(0);
            }
            if let Some(piece) = event["choices"][0]["delta"]["content"].as_str() {
                if !piece.is_empty() {
                    content.push_str(piece);
                    sink(StreamEvent::Token(piece));
                }
            }
        }
    }
    if !done {
        return fail(&content, "stream cut midway: no [DONE]".to_string());
    }
    Attempt::Done(Completion {
        content,
        model,
        usage,
        endpoint: index,
        mode,
        requests: 0,
    })
}

fn snippet(s: &str) -> String {
    let s: String = s.chars().take(300).collect();
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_urls_are_checked() {
        let policy = RetryPolicy::default();
        assert!(Router::new(vec![], policy.clone()).is_err());
        assert!(Router::new(
            vec![Endpoint::from_url("https://api.example/v1")],
            policy.clone(),
        )
        .is_ok());
        let mut missing_ca = Endpoint::from_url("https://api.example/v1");
        missing_ca.ca_cert = Some("/nonexistent/ca.pem".into());
        let err = Router::new(vec![missing_ca], policy.clone()).err().unwrap();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        assert!(Router::new(vec![Endpoint::from_url("ftp://x")], policy.clone()).is_err());
        assert!(Router::new(vec![Endpoint::from_url("http://127.0.0.1:1/v1")], policy).is_ok());
    }
}
