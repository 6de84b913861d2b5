//! An in-process fake OpenAI-compatible router for fault injection: a raw HTTP/1.1 server on a
//! loopback port that answers each request with the next scripted behaviour (so it can also
//! stall, cut a reply midway, or send garbage) and records every request body.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub enum Behaviour {
    /// HTTP status, extra headers, body.
    Reply(u16, Vec<(String, String)>, String),
    /// Wait, then behave.
    Delay(Duration, Box<Behaviour>),
    /// Announce a body, send part of it, close the connection.
    Cut,
}

/// A chat completion whose message content is `content`.
pub fn chat(content: &str) -> Behaviour {
    let body = serde_json::json!({
        "id": "x", "object": "chat.completion", "model": "fake-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10}
    });
    Behaviour::Reply(200, vec![], body.to_string())
}

/// An SSE chat-completion stream of `content` in 5-character pieces, closed with [DONE] or not.
fn sse(content: &str, complete: bool) -> Vec<u8> {
    let mut out = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
    );
    let chars: Vec<char> = content.chars().collect();
    for piece in chars.chunks(5) {
        let piece: String = piece.iter().collect();
        let event = serde_json::json!({
            "model": "fake-model",
            "choices": [{"index": 0, "delta": {"content": piece}}]
        });
        out.push_str(&format!("data: {event}\n\n"));
    }
    if complete {
        out.push_str("data: {\"model\": \"fake-model\", \"choices\": [{\"index\": 0, \"delta\": {}, \"finish_reason\": \"stop\"}], \"usage\": {\"prompt_tokens\": 100, \"completion_tokens\": 10}}\n\n");
        out.push_str("data: [DONE]\n\n");
    }
    out.into_bytes()
}

/// Answers one request on `socket` with the next scripted behaviour.
async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    mut socket: S,
    r: Arc<Mutex<Vec<serde_json::Value>>>,
    s: Arc<Mutex<VecDeque<Behaviour>>>,
    fallback: Behaviour,
) {
    // One request per connection is enough (we answer Connection: close).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_end, content_length) = loop {
        let n = socket.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (pos + 4, len);
        }
    };
    while buf.len() < head_end + content_length {
        let n = socket.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: serde_json::Value =
        serde_json::from_slice(&buf[head_end..]).unwrap_or(serde_json::Value::Null);
    let streaming = body["stream"] == serde_json::json!(true);
    r.lock().unwrap().push(body);
    let mut behaviour = s.lock().unwrap().pop_front().unwrap_or(fallback);
    loop {
        match behaviour {
            // Streamed requests get server-sent events: the content in pieces,
            // then [DONE] (or, for Cut, two pieces and a closed connection).
            Behaviour::Reply(200, _, ref body) if streaming => {
                let content = serde_json::from_str::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| {
                        v["choices"][0]["message"]["content"]
                            .as_str()
                            .map(str::to_string)
                    })
                    .unwrap_or_default();
                let _ = socket.write_all(&sse(&content, true)).await;
                let _ = socket.shutdown().await;
                return;
            }
            Behaviour::Cut if streaming => {
                let _ = socket
                    .write_all(&sse("{\"answer\": \"partial", false))
                    .await;
                let _ = socket.shutdown().await;
                return;
            }
            Behaviour::Delay(d, next) => {
                tokio::time::sleep(d).await;
                behaviour = *next;
            }
            Behaviour::Cut => {
                let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"choices\": [{\"mess")
                        .await;
                let _ = socket.shutdown().await;
                return;
            }
            Behaviour::Reply(code, headers, body) => {
                let mut out = format!(
                        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                        body.len()
                    );
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                out.push_str(&body);
                let _ = socket.write_all(out.as_bytes()).await;
                let _ = socket.shutdown().await;
                return;
            }
        }
    }
}

pub fn status(code: u16, body: &str) -> Behaviour {
    Behaviour::Reply(code, vec![], body.to_string())
}

pub struct FakeRouter {
    pub url: String,
    pub requests: Arc<Mutex<Vec<serde_json::Value>>>,
    script: Arc<Mutex<VecDeque<Behaviour>>>,
}

impl FakeRouter {
    /// Starts a router that plays `script`, then answers `fallback` forever.
    pub async fn start(script: Vec<Behaviour>, fallback: Behaviour) -> FakeRouter {
        Self::start_with(script, fallback, None).await
    }

    /// The same over HTTPS with `tls` (the url says `https://localhost:PORT`).
    pub async fn start_tls(
        script: Vec<Behaviour>,
        fallback: Behaviour,
        tls: Arc<rustls::ServerConfig>,
    ) -> FakeRouter {
        Self::start_with(script, fallback, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(
        script: Vec<Behaviour>,
        fallback: Behaviour,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> FakeRouter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = match tls {
            Some(_) => format!("https://localhost:{port}/v1"),
            None => format!("http://127.0.0.1:{port}/v1"),
        };
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let (r, s) = (requests.clone(), script.clone());
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let (r, s, fallback) = (r.clone(), s.clone(), fallback.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(socket).await {
                                serve_one(stream, r, s, fallback).await;
                            }
                        }
                        None => serve_one(socket, r, s, fallback).await,
                    }
                });
            }
        });
        FakeRouter {
            url,
            requests,
            script,
        }
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn request(&self, i: usize) -> serde_json::Value {
        self.requests.lock().unwrap()[i].clone()
    }

    pub fn remaining_script(&self) -> usize {
        self.script.lock().unwrap().len()
    }
}
