//! Quarry: a local-first retrieval service for RAG.
//!
//! Quarry ingests documents, chunks them by tokens of a local embedding model, embeds them with
//! ONNX Runtime, and serves hybrid search (BM25 + dense vectors, fused) over gRPC and
//! HTTP/JSON. Everything runs on one machine, offline.
//!
//! # Layout
//! - [`auth`]: API keys, roles and collection scopes (the policy; [`service`] applies it).
//! - [`config`]: one validated [`config::Config`]; defaults < file < environment < flags. It
//!   hands the engine and the answerer their own slices; nothing below `server` reads it whole.
//! - [`error`]: the core's error type; user errors versus internal faults.
//! - [`model`]: the [`model::Embedder`] trait, the ONNX implementation (a session pool), model
//!   provisioning from pinned PyPI packages, and a deterministic hash embedder for tests.
//! - [`chunk`]: token-aware, markdown-aware chunking with byte offsets.
//! - [`meta`]: typed metadata values and per-collection key types.
//! - [`filter`]: filter expressions (tree and text form), resolved against key types, with a
//!   plain-Rust oracle.
//! - [`store`]: sled, the only source of truth (documents, chunks, vectors, operation log).
//! - [`index`]: derived indexes: tantivy BM25 and our own HNSW graph, plus an exact-search oracle.
//! - [`retrieve`]: search requests and results, fusion (RRF and weighted), and the pure hybrid
//!   orchestration (single-retriever path, per-document grouping, degradation).
//! - [`answer`]: grounded answers through an OpenAI-compatible inference router.
//! - [`engine`]: collections, the ingest pipeline, search, recovery and checkpoints, one
//!   concern per file.
//! - [`source`]: documents out of files, directories and JSONL corpora, read lazily in a
//!   resumable order, bad input failing one document (both ingestion paths read through it).
//! - [`jobs`]: durable server-side ingestion jobs: a queue per collection, progress recorded
//!   atomically with each batch, resumed after a restart; import roots.
//! - [`backend`]: the seam between the engine and where a collection's data lives
//!   (`CollectionStore`): the embedded default (`engine`'s own) or Qdrant.
//! - [`qdrant`]: the Qdrant backend (collections on a Qdrant node or cluster, behind
//!   `backend`), and local Qdrant processes for tests and benchmarks.
//! - [`eval`]: BEIR collections and trec_eval-compatible metrics.
//! - [`metrics`]: process-wide counters and histograms in the Prometheus text format.
//! - [`tls`]: the process's rustls provider and PEM loading (server, CLI, router client).
//! - [`api`]: the API's messages (generated from the proto), their JSON mapping and their
//!   conversions to core types, shared by both front doors.
//! - [`service`]: every operation, transport-neutral: defaults, validation, paging, batching,
//!   authorization, admission; the one place request semantics live.
//! - [`grpc`], [`http`]: the two front doors (decode, call [`service`], encode).
//! - [`server`]: the process: both doors over one service, one admission state, shutdown.
//! - [`client`]: the CLI's client commands (`ingest`, `search`, `ask`, `eval`).
//!
//! The retrieval core (everything below `api` and `service`) knows nothing of any transport.

pub mod answer;
pub mod api;
pub mod auth;
pub mod backend;
pub mod chunk;
pub mod client;
pub mod config;
pub mod engine;
pub mod error;
pub mod eval;
pub mod filter;
pub mod grpc;
pub mod http;
pub mod index;
pub mod jobs;
pub mod meta;
pub mod metrics;
pub mod model;
pub mod qdrant;
pub mod retrieve;
pub mod server;
pub mod service;
pub mod source;
pub mod store;
pub mod tls;

pub use error::{Error, Result};
