//! The production embedder: fastembed sessions on ONNX Runtime, loaded dynamically.
//!
//! fastembed's `embed` takes `&mut self`, so one session cannot serve two callers at once.
//! [`OnnxEmbedder`] therefore owns a *pool* of single-threaded sessions for ingestion (one per
//! core by default; a batch is spread over them) and separate sessions reserved for queries
//! ([`super::query::QueryPool`]: all cores for a lone query, one core each for concurrent
//! ones), so a long ingest never makes a search wait for a free session.
//!
//! A model directory holds the ONNX file, the Hugging Face tokenizer files and an optional
//! `quarry-model.json` ([`ModelSpec`]) giving pooling, dimension, maximum length and prefixes.
//! Any local directory with those files works as a model.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use fastembed::{
    InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel,
};
use serde::{Deserialize, Serialize};

use super::query::QueryPool;
use super::{normalize, Embedder};

/// Whether the wide query session's threads spin between operators: see
/// `benches/query.rs` for the measured difference.
const WIDE_SPINNING: bool = true;
use crate::error::{Error, Result};

/// How a model directory is to be run. Stored as `quarry-model.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ModelSpec {
    /// ONNX file, relative to the model directory.
    pub onnx_file: String,
    /// Output dimension.
    pub dimension: usize,
    /// `mean` or `cls`.
    pub pooling: String,
    /// Longest input in tokens; longer inputs are truncated by the model's tokenizer.
    pub max_length: usize,
    /// Prepended to queries (for example `query: ` for E5 models).
    pub query_prefix: String,
    /// Prepended to documents.
    pub document_prefix: String,
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec {
            onnx_file: String::new(),
            dimension: 0,
            pooling: "mean".into(),
            max_length: 512,
            query_prefix: String::new(),
            document_prefix: String::new(),
        }
    }
}

impl ModelSpec {
    /// Reads `quarry-model.json`, or infers a spec from a Hugging Face style directory
    /// (`config.json`'s `hidden_size`, the first ONNX file found, mean pooling).
    pub fn load(dir: &Path) -> Result<ModelSpec> {
        let spec_path = dir.join("quarry-model.json");
        let mut spec = if spec_path.exists() {
            serde_json::from_slice::<ModelSpec>(&std::fs::read(&spec_path)?).map_err(|e| {
                Error::FailedPrecondition(format!("invalid {}: {e}", spec_path.display()))
            })?
        } else {
            ModelSpec::default()
        };
        if spec.onnx_file.is_empty() {
            let candidates = [
                "model.onnx",
                "onnx/model.onnx",
                "model_quantized.onnx",
                "onnx/model_quantized.onnx",
            ];
            spec.onnx_file = candidates
                .iter()
                .find(|c| dir.join(c).exists())
                .map(|c| c.to_string())
                .ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "no ONNX model file in {} (looked for {})",
                        dir.display(),
                        candidates.join(", ")
                    ))
                })?;
        }
        if spec.dimension == 0 {
            let config: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
            spec.dimension = config["hidden_size"].as_u64().unwrap_or(0) as usize;
        }
        if spec.dimension == 0 {
            return Err(Error::FailedPrecondition(format!(
                "cannot tell the dimension of the model in {}: set `dimension` in quarry-model.json",
                dir.display()
            )));
        }
        if spec.pooling != "mean" && spec.pooling != "cls" {
            return Err(Error::FailedPrecondition(format!(
                "unknown pooling {:?} in {} (expected mean or cls)",
                spec.pooling,
                dir.display()
            )));
        }
        Ok(spec)
    }
}

static RUNTIME: OnceLock<std::result::Result<ort::environment::Environment, String>> =
    OnceLock::new();

/// Loads ONNX Runtime from `library` once per process. Later calls return the first outcome.
pub fn init_runtime(library: &Path) -> Result<ort::environment::Environment> {
    RUNTIME
        .get_or_init(|| {
            if !library.exists() {
                return Err(format!(
                    "ONNX Runtime library {} does not exist (run `quarry model fetch`)",
                    library.display()
                ));
            }
            ort::init_from(library)
                .map_err(|e| format!("cannot load {}: {e}", library.display()))?
                .with_name("quarry")
                .with_telemetry(false)
                .build()
                .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
        })
        .clone()
        .map_err(Error::FailedPrecondition)
}

/// The files of a model directory, read once.
pub struct ModelFiles {
    pub spec: ModelSpec,
    dir: PathBuf,
    onnx: Vec<u8>,
    tokenizer: TokenizerFiles,
}

impl ModelFiles {
    pub fn read(dir: &Path) -> Result<ModelFiles> {
        let spec = ModelSpec::load(dir)?;
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| {
                Error::FailedPrecondition(format!(
                    "cannot read {} of model {}: {e}",
                    name,
                    dir.display()
                ))
            })
        };
        Ok(ModelFiles {
            tokenizer: TokenizerFiles {
                tokenizer_file: read("tokenizer.json")?,
                config_file: read("config.json")?,
                special_tokens_map_file: read("special_tokens_map.json")?,
                tokenizer_config_file: read("tokenizer_config.json")?,
            },
            onnx: read(&spec.onnx_file)?,
            dir: dir.to_path_buf(),
            spec,
        })
    }

    /// A plain fastembed session. `intra_threads: None` lets ONNX Runtime use every core
    /// (what the benchmark calls raw fastembed throughput).
    pub fn session(
        &self,
        env: ort::environment::Environment,
        intra_threads: Option<usize>,
    ) -> Result<TextEmbedding> {
        self.session_with(env, intra_threads, true)
    }

    /// [`ModelFiles::session`], choosing whether ONNX Runtime's pool threads spin between
    /// operators (lower latency, but they burn the cores other work could use while idle).
    pub fn session_with(
        &self,
        env: ort::environment::Environment,
        intra_threads: Option<usize>,
        spinning: bool,
    ) -> Result<TextEmbedding> {
        let pooling = if self.spec.pooling == "cls" {
            Pooling::Cls
        } else {
            Pooling::Mean
        };
        let model = UserDefinedEmbeddingModel::new(self.onnx.clone(), self.tokenizer.clone())
            .with_pooling(pooling);
        let mut options = InitOptionsUserDefined::new()
            .with_environment(env)
            .with_max_length(self.spec.max_length);
        if let Some(n) = intra_threads {
            options = options.with_intra_threads(n);
        }
        if spinning {
            // Spin between the operators of one run (they are tiny), but not after it: the
            // other core is then the lexical and HNSW search's (often its SMT sibling).
            options = options.with_session_config("session.force_spinning_stop", "1");
        } else {
            options = options.with_session_config("session.intra_op.allow_spinning", "0");
        }
        TextEmbedding::try_new_from_user_defined(model, options).map_err(|e| {
            Error::FailedPrecondition(format!("cannot load model {}: {e}", self.dir.display()))
        })
    }
}

/// A loaded ONNX embedding model with its session pool and tokenizer.
pub struct OnnxEmbedder {
    spec: ModelSpec,
    /// Single-threaded sessions for document batches; a batch is spread over all of them.
    workers: Vec<Mutex<TextEmbedding>>,
    /// Reserved for queries so searches never queue behind ingestion.
    query: QueryPool,
    /// Queries embedded since load.
    queries_embedded: AtomicU64,
    /// The model's tokenizer with truncation and padding off: the chunker's token counter.
    tokenizer: tokenizers::Tokenizer,
    /// Document texts embedded since load (lets tests prove a restart re-embeds nothing).
    documents_embedded: AtomicU64,
    /// Where the model's files are, and their checksum once computed (on first use: hashing
    /// the weights costs a few hundred milliseconds that most starts never need).
    dir: std::path::PathBuf,
    fingerprint: std::sync::OnceLock<String>,
}

impl std::fmt::Debug for OnnxEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxEmbedder")
            .field("spec", &self.spec)
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl OnnxEmbedder {
    /// Loads the model in `dir` with `workers` ingestion sessions (at least one) and query
    /// sessions for as many cores (see [`QueryPool`]).
    pub fn load(dir: &Path, env: ort::environment::Environment, workers: usize) -> Result<Self> {
        let files = ModelFiles::read(dir)?;
        let spec = files.spec.clone();
        let workers = workers.max(1);
        let narrow = (0..workers)
            .map(|_| files.session(env.clone(), Some(1)))
            .collect::<Result<Vec<_>>>()?;
        let wide = files.session_with(env.clone(), Some(workers), WIDE_SPINNING)?;
        let query = QueryPool::new(wide, narrow);
        let workers = (0..workers)
            .map(|_| files.session(env.clone(), Some(1)).map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        let mut tokenizer = tokenizers::Tokenizer::from_bytes(&files.tokenizer.tokenizer_file)
            .map_err(|e| Error::FailedPrecondition(format!("invalid tokenizer.json: {e}")))?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::internal(format!("tokenizer: {e}")))?;
        tokenizer.with_padding(None);
        let embedder = OnnxEmbedder {
            spec,
            workers,
            query,
            queries_embedded: AtomicU64::new(0),
            tokenizer,
            documents_embedded: AtomicU64::new(0),
            dir: dir.to_path_buf(),
            fingerprint: std::sync::OnceLock::new(),
        };
        let probe = embedder.embed_query("dimension probe")?;
        if probe.len() != embedder.spec.dimension {
            return Err(Error::FailedPrecondition(format!(
                "model {} produces {}-d vectors but its spec says {}",
                dir.display(),
                probe.len(),
                embedder.spec.dimension
            )));
        }
        Ok(embedder)
    }
}

impl Embedder for OnnxEmbedder {
    fn dimension(&self) -> usize {
        self.spec.dimension
    }

    fn fingerprint(&self) -> Result<String> {
        if let Some(f) = self.fingerprint.get() {
            return Ok(f.clone());
        }
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&self.spec)?);
        for name in [self.spec.onnx_file.as_str(), "tokenizer.json"] {
            let mut file = std::fs::File::open(self.dir.join(name))?;
            std::io::copy(&mut file, &mut h)?;
        }
        let f = format!("sha256:{}", super::fetch::hex(&h.finalize()));
        Ok(self.fingerprint.get_or_init(|| f).clone())
    }

    fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    fn documents_embedded(&self) -> u64 {
        self.documents_embedded.load(Ordering::Relaxed)
    }

    fn queries_embedded(&self) -> u64 {
        self.queries_embedded.load(Ordering::Relaxed)
    }

    /// Embeds one query on a query session (see [`QueryPool`]). Blocking.
    fn embed_query(&self, text: &str) -> Result<Vec<f32>> {
        let input = format!("{}{}", self.spec.query_prefix, text);
        let (mut out, served) = self.query.with_session(&self.workers, |session| {
            let started = std::time::Instant::now();
            let out = session
                .embed([input], Some(1))
                .map_err(|e| Error::Embedding(e.to_string()));
            crate::metrics::global()
                .embed_batch_duration
                .observe_duration(&["query"], started.elapsed());
            out
        })?;
        crate::metrics::global()
            .query_sessions
            .inc(&[served.as_str()]);
        self.queries_embedded.fetch_add(1, Ordering::Relaxed);
        let mut v = out
            .pop()
            .ok_or_else(|| Error::Embedding("model returned no vector".into()))?;
        normalize(&mut v);
        Ok(v)
    }

    /// Embeds document texts, spreading them over the ingestion sessions, one text per call
    /// (batch 1 is as fast as larger batches here and keeps each vector independent of what
    /// else was in the batch). Blocking: call it off the async runtime.
    fn embed_documents(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        // Workers take the next text from a shared counter and keep their own results, so a
        // slow text never leaves a session idle.
        let next = AtomicUsize::new(0);
        let threads = self.workers.len().min(texts.len()).max(1);
        let per_worker: Vec<Vec<(usize, Vec<f32>)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self.workers[..threads]
                .iter()
                .enumerate()
                .map(|(w, worker)| {
                    let next = &next;
                    scope.spawn(move || -> Result<Vec<(usize, Vec<f32>)>> {
                        let mut session = worker
                            .lock()
                            .map_err(|_| Error::internal("embedding session poisoned"))?;
                        let mut done = Vec::new();
                        loop {
                            // A reserved share for search: while searches run, only the first
                            // session keeps embedding; the others wait, so ingestion keeps one
                            // core and queries get the rest.
                            if w > 0 {
                                while super::searches_running() > 0
                                    && next.load(Ordering::Relaxed) < texts.len()
                                {
                                    std::thread::sleep(std::time::Duration::from_micros(500));
                                }
                            }
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= texts.len() {
                                return Ok(done);
                            }
                            let input = format!("{}{}", self.spec.document_prefix, texts[i]);
                            let started = std::time::Instant::now();
                            let mut out = session
                                .embed([input], Some(1))
                                .map_err(|e| Error::Embedding(e.to_string()))?;
                            crate::metrics::global()
                                .embed_batch_duration
                                .observe_duration(&["documents"], started.elapsed());
                            let mut v = out.pop().ok_or_else(|| {
                                Error::Embedding("model returned no vector".into())
                            })?;
                            normalize(&mut v);
                            done.push((i, v));
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| Error::internal("embedding thread panicked"))?
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let mut results: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for (i, v) in per_worker.into_iter().flatten() {
            results[i] = Some(v);
        }
        self.documents_embedded
            .fetch_add(texts.len() as u64, Ordering::Relaxed);
        results
            .into_iter()
            .map(|v| v.ok_or_else(|| Error::Embedding("a text was not embedded".into())))
            .collect()
    }
}
