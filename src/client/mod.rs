//! The command-line client: `quarry ingest`, `search`, `ask` and `eval` talk to a server over
//! gRPC, like any application backend would.
//!
//! - [`commands`]: each command's arguments and body (the binary only parses and dispatches).
//! - this module: connecting, creating collections, streaming ingestion, printing results.
//! - [`load`]: the caller's files, directories and JSONL corpora as wire documents, streamed.
//! - [`jobs`]: `quarry jobs` (server-side ingestion jobs).
//! - [`alias`]: `quarry alias set|delete|list` (names that stand for a collection).
//! - [`export`]: `quarry export` (a collection back out as corpus.jsonl).
//! - [`snapshot`]: `quarry snapshot create|restore` (backups without re-embedding).
//! - [`eval`]: `quarry eval` (ingest a BEIR collection, run the Eval RPC, write reports).

pub mod alias;
pub mod commands;
pub mod eval;
pub mod export;
pub mod gate;
pub mod jobs;
pub mod load;
pub mod settings;
pub mod snapshot;

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{anyhow, Context};
use indicatif::{ProgressBar, ProgressStyle};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

use crate::grpc::pb;

/// Default server URL for client commands.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// How a client proves who it is to the server.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Access {
    /// API key sent with every call (`authorization: Bearer KEY`).
    #[arg(long, env = "QUARRY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// PEM CA that signs an `https://` server's certificate (besides the system's roots).
    #[arg(long, env = "QUARRY_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// PEM client certificate, for servers that require one (mutual TLS; with --client-key).
    #[arg(long, env = "QUARRY_CLIENT_CERT")]
    pub client_cert: Option<std::path::PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, env = "QUARRY_CLIENT_KEY")]
    pub client_key: Option<std::path::PathBuf>,
}

/// Adds the API key to every call.
#[derive(Clone, Default)]
pub struct KeyHeader(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for KeyHeader {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

/// TLS for an `https://` server: the system's roots, plus `--ca-cert`, plus a client
/// certificate when given.
fn client_tls(access: &Access) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    crate::tls::install_crypto_provider();
    let mut tls = ClientTlsConfig::new().with_native_roots();
    if let Some(ca) = &access.ca_cert {
        tls = tls.ca_certificate(Certificate::from_pem(crate::tls::read_pem(
            ca,
            "CA certificate",
        )?));
    }
    match (&access.client_cert, &access.client_key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                crate::tls::read_pem(cert, "client certificate")?,
                crate::tls::read_pem(key, "client key")?,
            ))
        }
        (None, None) => {}
        _ => anyhow::bail!("--client-cert and --client-key go together"),
    }
    Ok(tls)
}

/// A connection to a Quarry server: a channel that sends the caller's API key.
pub type Conn = InterceptedService<Channel, KeyHeader>;

pub async fn connect(server: &str, access: &Access) -> anyhow::Result<Conn> {
    let header = match &access.api_key {
        Some(k) => Some(
            format!("Bearer {k}")
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| anyhow!("the API key must be printable ASCII"))?,
        ),
        None => None,
    };
    let mut endpoint = Channel::from_shared(server.to_string())
        .with_context(|| format!("invalid server URL {server:?}"))?;
    if server.starts_with("https://") {
        endpoint = endpoint.tls_config(client_tls(access)?)?;
    } else if access.ca_cert.is_some() || access.client_cert.is_some() {
        anyhow::bail!("--ca-cert and --client-cert need an https:// server URL");
    }
    let channel = endpoint.connect().await.with_context(|| {
        format!("cannot connect to Quarry at {server} (is `quarry serve` running?)")
    })?;
    Ok(InterceptedService::new(channel, KeyHeader(header)))
}

/// Settings for a collection a client command creates (when it does not exist yet).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NewCollection {
    /// Embedding model of a collection created by this command (default: the server's).
    #[arg(long)]
    pub model: Option<String>,
    /// Chunk size in tokens of a collection created by this command.
    #[arg(long)]
    pub chunk_tokens: Option<u32>,
    /// Chunk overlap in tokens of a collection created by this command.
    #[arg(long)]
    pub chunk_overlap: Option<u32>,
}

/// Summary of an ingest run.
#[derive(Debug, Clone, Default)]
pub struct IngestReport {
    /// Documents read (sent, or failed before sending).
    pub documents: usize,
    pub chunks: usize,
    /// Documents by outcome: created, updated, unchanged, rejected (by the server) and failed
    /// (could not be read).
    pub by_status: HashMap<String, usize>,
    /// Documents the server rejected or that could not be read: id or location, reason.
    pub rejected: Vec<(String, String)>,
    pub seconds: f64,
}

impl IngestReport {
    /// One line, the same as a finished job's.
    pub fn summary(&self) -> String {
        let n = |k: &str| self.by_status.get(k).copied().unwrap_or(0) as u64;
        counts_summary(
            &pb::JobCounts {
                seen: self.documents as u64,
                created: n("created"),
                updated: n("updated"),
                unchanged: n("unchanged"),
                deleted: 0,
                failed: n("rejected") + n("failed"),
                chunks: self.chunks as u64,
            },
            self.seconds,
        )
    }
}

/// How `quarry ingest` and `quarry jobs` report what an ingestion did.
pub fn counts_summary(c: &pb::JobCounts, seconds: f64) -> String {
    format!(
        "{} documents: {} created, {} updated, {} unchanged, {} deleted, {} failed; {} chunks; {:.1} s, {:.1} docs/s",
        c.seen,
        c.created,
        c.updated,
        c.unchanged,
        c.deleted,
        c.failed,
        c.chunks,
        seconds,
        c.seen as f64 / seconds.max(1e-9),
    )
}

/// Documents one StreamUpsertDocuments call carries, well under the server's
/// `max_stream_documents`: a larger ingest is several calls, one after the other.
const STREAM_DOCUMENTS: usize = 10_000;

/// The bar `quarry ingest` shows.
fn ingest_bar(show: bool) -> anyhow::Result<ProgressBar> {
    if !show {
        return Ok(ProgressBar::hidden());
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} ingesting [{bar:40}] {percent}% {msg} eta {eta}")
            .map_err(|e| anyhow!("progress template: {e}"))?
            .progress_chars("=> "),
    );
    Ok(bar)
}

/// Streams `docs` into `collection` with a progress bar.
pub async fn ingest(
    channel: Conn,
    collection: &str,
    docs: Vec<pb::Document>,
    show_progress: bool,
) -> anyhow::Result<IngestReport> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let total = docs.len() as u64;
    tokio::spawn(async move {
        for (i, d) in docs.into_iter().enumerate() {
            if tx.send(Ok(load::Read::Document(d))).await.is_err()
                || tx
                    .send(Ok(load::Read::Progress(i as u64 + 1, total)))
                    .await
                    .is_err()
            {
                return;
            }
        }
    });
    ingest_reads(channel, collection, rx, show_progress).await
}

/// Streams what `reads` yields into `collection` (back-pressure: the reader waits while the
/// server works), a call per [`STREAM_DOCUMENTS`], with a progress bar.
pub async fn ingest_reads(
    channel: Conn,
    collection: &str,
    mut reads: tokio::sync::mpsc::Receiver<anyhow::Result<load::Read>>,
    show_progress: bool,
) -> anyhow::Result<IngestReport> {
    let bar = ingest_bar(show_progress)?;
    let started = Instant::now();
    let mut report = IngestReport::default();
    let client = pb::documents_client::DocumentsClient::new(channel)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    let mut finished = false;
    while !finished {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::StreamUpsertRequest>(64);
        // The call starts with its first document (no empty calls).
        let mut rx = Some(rx);
        let mut call = None;
        let mut sent = 0;
        while sent < STREAM_DOCUMENTS {
            let Some(read) = reads.recv().await else {
                finished = true;
                break;
            };
            match read? {
                load::Read::Progress(done, total) => {
                    bar.set_length(total);
                    bar.set_position(done);
                    let secs = started.elapsed().as_secs_f64().max(1e-9);
                    bar.set_message(format!(
                        "{} docs, {:.1} docs/s",
                        report.documents,
                        report.documents as f64 / secs
                    ));
                }
                load::Read::Failed(location, reason) => {
                    report.documents += 1;
                    *report.by_status.entry("failed".into()).or_default() += 1;
                    report.rejected.push((location, reason));
                }
                load::Read::Document(d) => {
                    report.documents += 1;
                    if let Some(rx) = rx.take() {
                        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
                        let mut c = client.clone();
                        call = Some(tokio::spawn(async move {
                            c.stream_upsert_documents(stream).await
                        }));
                    }
                    let request = pb::StreamUpsertRequest {
                        collection: if sent == 0 {
                            collection.to_string()
                        } else {
                            String::new()
                        },
                        document: Some(d),
                    };
                    if tx.send(request).await.is_err() {
                        // The call ended early: its status says why.
                        break;
                    }
                    sent += 1;
                }
            }
        }
        drop(tx);
        let Some(call) = call else { continue };
        let response = call
            .await
            .map_err(|e| anyhow!("ingest task failed: {e}"))?
            .map_err(|s| anyhow!("ingest failed ({:?}): {}", s.code(), s.message()))?
            .into_inner();
        for r in response.results {
            let status = pb::UpsertStatus::try_from(r.status)
                .map(|s| {
                    s.as_str_name()
                        .trim_start_matches("UPSERT_STATUS_")
                        .to_lowercase()
                })
                .unwrap_or_else(|_| "unknown".into());
            *report.by_status.entry(status).or_default() += 1;
            if r.status == pb::UpsertStatus::Rejected as i32 {
                report.rejected.push((r.id, r.error));
            } else if r.status != pb::UpsertStatus::Unchanged as i32 {
                report.chunks += r.chunk_count as usize;
            }
        }
    }
    bar.finish_and_clear();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Creates `collection` unless it exists.
pub async fn ensure_collection(
    channel: Conn,
    collection: &str,
    settings: &NewCollection,
) -> anyhow::Result<()> {
    let mut client = pb::collections_client::CollectionsClient::new(channel);
    match client
        .get_collection(pb::GetCollectionRequest {
            name: collection.to_string(),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::NotFound => {
            client
                .create_collection(pb::CreateCollectionRequest {
                    name: collection.to_string(),
                    config: Some(pb::CollectionConfig {
                        embedding_model: settings.model.clone().unwrap_or_default(),
                        chunk_tokens: settings.chunk_tokens.unwrap_or(0),
                        chunk_overlap: settings.chunk_overlap,
                        metadata_schema: Default::default(),
                        vector_dimension: 0,
                    }),
                })
                .await
                .map_err(|s| anyhow!("cannot create collection {collection:?}: {}", s.message()))?;
            eprintln!("created collection {collection:?}");
            Ok(())
        }
        Err(s) => Err(anyhow!(
            "cannot read collection {collection:?}: {}",
            s.message()
        )),
    }
}

/// Runs one search.
pub async fn search(
    channel: Conn,
    request: pb::SearchRequest,
) -> anyhow::Result<pb::SearchResponse> {
    let mut client = pb::search_client::SearchClient::new(channel);
    Ok(client
        .search(request)
        .await
        .map_err(|s| anyhow!("search failed ({:?}): {}", s.code(), s.message()))?
        .into_inner())
}

/// `lexical`, `dense` or `hybrid` (the core mode's name).
fn mode_name(mode: i32) -> String {
    crate::grpc::mode_from_pb(mode).map_or_else(|_| "unknown".into(), |m| m.as_str().to_string())
}

/// A search response as JSON (for `quarry search --json`).
pub fn response_json(r: &pb::SearchResponse) -> serde_json::Value {
    let hit = |h: &pb::Hit| {
        let rh = |x: &Option<pb::RetrieverHit>| {
            x.as_ref()
                .map(|x| serde_json::json!({"rank": x.rank, "score": x.score}))
        };
        serde_json::json!({
            "document_id": h.document_id,
            "chunk_id": h.chunk_id,
            "ordinal": h.ordinal,
            "score": h.score,
            "title": h.title,
            "text": h.text,
            "start_byte": h.start_byte,
            "end_byte": h.end_byte,
            "metadata": h.metadata,
            "explanation": h.explanation.as_ref().map(|e| serde_json::json!({
                "lexical": rh(&e.lexical), "dense": rh(&e.dense)
            })),
        })
    };
    serde_json::json!({
        "mode": mode_name(r.mode),
        "degraded": r.degraded,
        "warning": r.warning,
        "took_micros": r.took_micros,
        "hits": r.hits.iter().map(hit).collect::<Vec<_>>(),
    })
}

/// A search response as a human-readable table.
pub fn print_response(r: &pb::SearchResponse, explain: bool) {
    if r.degraded {
        eprintln!("warning: {}", r.warning);
    }
    for (i, h) in r.hits.iter().enumerate() {
        let snippet: String = h
            .text
            .chars()
            .take(100)
            .collect::<String>()
            .replace('\n', " ");
        println!(
            "{:>3}. {:.4}  {} #{}  {}",
            i + 1,
            h.score,
            h.document_id,
            h.ordinal,
            if h.title.is_empty() { "" } else { &h.title }
        );
        println!("      {snippet}");
        if explain {
            if let Some(e) = &h.explanation {
                let fmt = |x: &Option<pb::RetrieverHit>| {
                    x.as_ref()
                        .map(|x| format!("rank {} score {:.4}", x.rank, x.score))
                        .unwrap_or_else(|| "-".into())
                };
                println!(
                    "      lexical: {}   dense: {}",
                    fmt(&e.lexical),
                    fmt(&e.dense)
                );
            }
        }
    }
    eprintln!(
        "{} hits in {:.2} ms ({})",
        r.hits.len(),
        r.took_micros as f64 / 1000.0,
        mode_name(r.mode)
    );
}

/// Asks for a grounded answer.
pub async fn ask(channel: Conn, request: pb::AnswerRequest) -> anyhow::Result<pb::AnswerResponse> {
    let mut client = pb::answers_client::AnswersClient::new(channel);
    Ok(client
        .answer(request)
        .await
        .map_err(|s| anyhow!("answer failed ({:?}): {}", s.code(), s.message()))?
        .into_inner())
}

/// `quarry ask --json`: the validated answer exactly as the schema describes it, and each
/// citation resolved to its source number, document, chunk and text.
pub fn answer_json(r: &pb::AnswerResponse) -> anyhow::Result<serde_json::Value> {
    let answer: serde_json::Value = if r.answer_json.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&r.answer_json)
            .map_err(|e| anyhow!("server sent invalid answer JSON: {e}"))?
    };
    Ok(serde_json::json!({
        "answer": answer,
        "grounded": r.grounded,
        "no_answer_reason": r.no_answer_reason,
        "citations": r.citations.iter().map(|c| serde_json::json!({
            "source": c.source,
            "document_id": c.document_id,
            "chunk_id": c.chunk_id,
            "start_byte": c.start_byte,
            "end_byte": c.end_byte,
            "text": c.text,
        })).collect::<Vec<_>>(),
        "invalid_citations": r.invalid_citations,
        "sources": r.sources.iter().map(|s| serde_json::json!({
            "number": s.number,
            "document_id": s.hit.as_ref().map(|h| h.document_id.clone()),
            "chunk_id": s.hit.as_ref().map(|h| h.chunk_id),
            "tokens": s.tokens,
        })).collect::<Vec<_>>(),
        "left_out": r.left_out.iter().map(|l| serde_json::json!({
            "chunk_id": l.chunk_id, "document_id": l.document_id, "reason": l.reason,
        })).collect::<Vec<_>>(),
        "usage": {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens},
        "latency_ms": {"retrieve": r.retrieve_ms, "generate": r.generate_ms},
        "attempts": r.attempts,
        "requests": r.requests,
        "model": r.model,
    }))
}

/// A human-readable answer.
pub fn print_answer(r: &pb::AnswerResponse) {
    if !r.grounded {
        println!("No grounded answer: {}", r.no_answer_reason);
        return;
    }
    let answer: serde_json::Value = serde_json::from_str(&r.answer_json).unwrap_or_default();
    match answer.get("answer").and_then(|a| a.as_str()) {
        Some(text) => println!("{text}"),
        None => println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        ),
    }
    for c in &r.citations {
        let snippet: String = c
            .text
            .chars()
            .take(100)
            .collect::<String>()
            .replace('\n', " ");
        println!(
            "  [{}] {} #{}: {snippet}",
            c.source, c.document_id, c.chunk_id
        );
    }
    if !r.invalid_citations.is_empty() {
        eprintln!(
            "warning: the answer cites sources that were not supplied: {:?}",
            r.invalid_citations
        );
    }
    eprintln!(
        "{} ({} attempt(s), {} request(s)); retrieve {:.1} ms, generate {:.1} ms; {} + {} tokens",
        r.model,
        r.attempts,
        r.requests,
        r.retrieve_ms,
        r.generate_ms,
        r.prompt_tokens,
        r.completion_tokens
    );
}
