//! Server configuration: one [`Config`], validated at start-up.
//!
//! Precedence, lowest first: built-in defaults < TOML config file < environment (`QUARRY_*`) <
//! command-line flags (applied by `main`). Every limit the server enforces lives in [`Limits`]
//! so it is explicit, documented in README.md, and named in the error a caller gets.
//!
//! The libraries never see the whole of it: [`Config::engine`] is the engine's slice,
//! [`Config::models`] says where embedding models come from, and `answer` goes to the
//! [`crate::answer::Answerer`]. Only the binary (and tests standing in for it) hold a `Config`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::answer::AnswerSettings;
use crate::auth::{AuthSettings, Keys};
use crate::engine::EngineConfig;
use crate::error::{Error, Result};
use crate::model::LocalModels;

pub use crate::engine::{IndexSettings, Limits};

/// Default gRPC listen address: loopback only, so a fresh install exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default HTTP/JSON API listen address: loopback only, like gRPC.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7080";
/// Name of the default embedding model (see `model::catalog`).
pub const DEFAULT_MODEL: &str = "all-minilm-l6-v2";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `HOST:PORT` the gRPC server listens on.
    pub listen: String,
    /// `HOST:PORT` the HTTP/JSON API listens on; empty: none. Off loopback it needs keys (or
    /// client certificates) exactly as `listen` does.
    pub http_listen: String,
    /// Where sled, tantivy and HNSW files live.
    pub data_dir: PathBuf,
    /// Cache of provisioned models and the ONNX Runtime library.
    pub models_dir: PathBuf,
    /// Explicit path to `libonnxruntime.so`; empty: the provisioned one in `models_dir`.
    pub onnxruntime_library: Option<PathBuf>,
    /// Model used by collections that do not name one.
    pub default_model: String,
    /// Provision the default model and ONNX Runtime at start-up when they are missing.
    pub auto_fetch_model: bool,
    /// Embedding sessions used for ingestion (each single-threaded). 0: one per core.
    pub embed_workers: usize,
    /// Query vectors cached per model (LRU keyed by the whitespace-normalized query); 0: off.
    pub query_cache_entries: usize,
    /// Bytes of the storage engine's (sled's) page cache.
    pub storage_cache_bytes: u64,
    /// Directories under which a collection may name its model by absolute path. Empty:
    /// models are only names under `models_dir` (catalog models included).
    pub model_roots: Vec<PathBuf>,
    pub limits: Limits,
    pub index: IndexSettings,
    /// Grounded answers: inference routers, retries, packing, contract enforcement.
    pub answer: AnswerSettings,
    /// API keys (`[auth]`); none configured: auth is off.
    pub auth: AuthSettings,
    /// Server TLS (`[tls]`); none configured: plaintext.
    pub tls: crate::tls::TlsSettings,
    /// `HOST:PORT` of the operations HTTP listener (`/metrics`, `/healthz`, `/readyz`);
    /// empty: none.
    pub metrics_listen: String,
    /// Let `metrics_listen` be a non-loopback address. The operations endpoint has no keys
    /// and its `/metrics` names every collection with its counts, so it is refused off
    /// loopback unless this says so (env `QUARRY_METRICS_ALLOW_REMOTE`, flag
    /// `--metrics-allow-remote`).
    pub metrics_allow_remote: bool,
    /// Calls in flight and queued per class (`[admission]`).
    pub admission: crate::service::admission::AdmissionSettings,
    /// `text` or `json` (one JSON object per line).
    pub log_format: LogFormat,
    /// Directories server-side ingestion jobs may read (`--import-root`, repeatable). Empty:
    /// server-side sources are off (SubmitIngest is FAILED_PRECONDITION).
    pub import_roots: Vec<PathBuf>,
    /// Where collections live (`[backend]`): the data directory (`embedded`, the default) or
    /// a Qdrant node or cluster (`qdrant`; env `QUARRY_BACKEND`, `QUARRY_QDRANT_URL`,
    /// `QUARRY_QDRANT_API_KEY`).
    pub backend: crate::qdrant::BackendSettings,
}

/// How the server writes its log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Default operations listener: loopback, the port Prometheus exporters commonly use next.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.to_string(),
            http_listen: DEFAULT_HTTP_LISTEN.to_string(),
            data_dir: PathBuf::from("quarry-data"),
            models_dir: default_models_dir(),
            onnxruntime_library: None,
            default_model: DEFAULT_MODEL.to_string(),
            auto_fetch_model: true,
            embed_workers: 0,
            query_cache_entries: crate::engine::DEFAULT_QUERY_CACHE_ENTRIES,
            storage_cache_bytes: crate::store::DEFAULT_CACHE_BYTES,
            model_roots: Vec::new(),
            limits: Limits::default(),
            index: IndexSettings::default(),
            answer: AnswerSettings::default(),
            auth: AuthSettings::default(),
            tls: Default::default(),
            metrics_listen: DEFAULT_METRICS_LISTEN.to_string(),
            metrics_allow_remote: false,
            admission: Default::default(),
            log_format: LogFormat::Text,
            import_roots: Vec::new(),
            backend: Default::default(),
        }
    }
}

/// `$QUARRY_MODELS_DIR`, else `$XDG_CACHE_HOME/quarry/models`, else `~/.cache/quarry/models`.
pub fn default_models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("QUARRY_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("quarry").join("models")
}

impl Config {
    /// Defaults, then the file (if any), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::invalid(format!("cannot read config file {}: {e}", path.display()))
                })?;
                toml::from_str(&text).map_err(|e| {
                    Error::invalid(format!("invalid config file {}: {e}", path.display()))
                })?
            }
            None => Config::default(),
        };
        config.apply_env(std::env::vars())?;
        Ok(config)
    }

    /// Applies `QUARRY_*` variables from `vars` (injected for tests).
    pub fn apply_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<()> {
        for (key, value) in vars {
            match key.as_str() {
                "QUARRY_LISTEN" => self.listen = value,
                "QUARRY_HTTP_LISTEN" => self.http_listen = value,
                "QUARRY_DATA_DIR" => self.data_dir = PathBuf::from(value),
                "QUARRY_MODELS_DIR" => self.models_dir = PathBuf::from(value),
                "QUARRY_ONNXRUNTIME_LIBRARY" => self.onnxruntime_library = Some(value.into()),
                "QUARRY_DEFAULT_MODEL" => self.default_model = value,
                "QUARRY_AUTO_FETCH_MODEL" => self.auto_fetch_model = parse_env(&key, &value)?,
                "QUARRY_EMBED_WORKERS" => self.embed_workers = parse_env(&key, &value)?,
                "QUARRY_QUERY_CACHE_ENTRIES" => self.query_cache_entries = parse_env(&key, &value)?,
                "QUARRY_API_KEY" => self.auth.api_key = Some(value),
                "QUARRY_READ_ONLY_API_KEY" => self.auth.read_only_api_key = Some(value),
                "QUARRY_METRICS_LISTEN" => self.metrics_listen = value,
                "QUARRY_METRICS_ALLOW_REMOTE" => {
                    self.metrics_allow_remote = parse_env(&key, &value)?
                }
                "QUARRY_BACKEND" => {
                    self.backend.kind = serde_json::from_value(serde_json::Value::String(
                        value.clone(),
                    ))
                    .map_err(|_| {
                        Error::invalid(format!(
                            "QUARRY_BACKEND is {}: use embedded or qdrant",
                            crate::error::quote(&value)
                        ))
                    })?
                }
                "QUARRY_QDRANT_URL" => self.backend.url = value,
                "QUARRY_QDRANT_API_KEY" => self.backend.api_key = Some(value),
                "QUARRY_TLS_CERT" => self.tls.cert = Some(value.into()),
                "QUARRY_TLS_KEY" => self.tls.key = Some(value.into()),
                "QUARRY_TLS_CLIENT_CA" => self.tls.client_ca = Some(value.into()),
                // Colon-separated directories.
                "QUARRY_MODEL_ROOTS" => self.model_roots = std::env::split_paths(&value).collect(),
                "QUARRY_IMPORT_ROOTS" => {
                    self.import_roots = std::env::split_paths(&value).collect()
                }
                // Comma-separated router base URLs, in failover order.
                "QUARRY_ROUTER" => {
                    self.answer.routers = value
                        .split(',')
                        .map(str::trim)
                        .filter(|u| !u.is_empty())
                        .map(crate::answer::router::Endpoint::from_url)
                        .collect()
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks values that would otherwise fail later, less clearly.
    pub fn validate(&self) -> Result<()> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(Error::invalid(format!(
                "listen address {:?} is not HOST:PORT (an IP address and a port)",
                self.listen
            )));
        }
        self.keys()?;
        self.tls.enabled()?;
        self.backend.validate()?;
        if !self.http_listen.is_empty() && self.http_listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(Error::invalid(format!(
                "http_listen {} is not HOST:PORT (an IP address and a port; or empty for none)",
                crate::error::quote(&self.http_listen)
            )));
        }
        if !self.metrics_listen.is_empty() {
            let Ok(addr) = self.metrics_listen.parse::<std::net::SocketAddr>() else {
                return Err(Error::invalid(format!(
                    "metrics_listen {:?} is not HOST:PORT (or empty for none)",
                    self.metrics_listen
                )));
            };
            if !addr.ip().is_loopback() && !self.metrics_allow_remote {
                return Err(Error::invalid(format!(
                    "refusing metrics_listen {}: the operations endpoint has no keys and its \
                     /metrics names every collection with its counts; listen on loopback and \
                     scrape through a proxy, or set metrics_allow_remote \
                     (--metrics-allow-remote, QUARRY_METRICS_ALLOW_REMOTE=true) to accept that",
                    addr
                )));
            }
        }
        let a = &self.admission;
        if [a.read, a.write, a.eval, a.answer]
            .iter()
            .any(|c| c.in_flight == 0)
        {
            return Err(Error::invalid(
                "admission: in_flight must be at least 1 per class",
            ));
        }

        self.engine().validate()
    }

    /// The job system's settings: the import roots, each checked to be a directory.
    pub fn jobs(&self) -> Result<crate::jobs::JobSettings> {
        Ok(crate::jobs::JobSettings {
            roots: crate::jobs::ImportRoots::new(&self.import_roots)?,
            ..Default::default()
        })
    }

    /// The configured API keys, as digests.
    pub fn keys(&self) -> Result<Keys> {
        Keys::from_settings(&self.auth)
    }

    /// The engine's slice of the configuration.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            data_dir: self.data_dir.clone(),
            default_model: self.default_model.clone(),
            limits: self.limits.clone(),
            index: self.index.clone(),
            query_cache_entries: self.query_cache_entries,
            storage_cache_bytes: self.storage_cache_bytes,
            backend: self.backend.clone(),
        }
    }

    /// Where the engine's embedding models come from.
    pub fn models(&self) -> LocalModels {
        LocalModels::new(
            self.models_dir.clone(),
            self.onnxruntime_library.clone(),
            self.auto_fetch_model,
            self.effective_embed_workers(),
            self.model_roots.clone(),
        )
    }

    /// Opens the engine this configuration describes. Blocking.
    pub fn open_engine(&self) -> Result<crate::engine::Engine> {
        self.validate()?;
        crate::engine::Engine::open(self.engine(), std::sync::Arc::new(self.models()))
    }

    /// Number of ingestion embedding sessions.
    pub fn effective_embed_workers(&self) -> usize {
        if self.embed_workers > 0 {
            self.embed_workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

fn parse_env<T: std::str::FromStr>(key: &str, value: &str) -> Result<T> {
    value
        .parse()
        .map_err(|_| Error::invalid(format!("environment variable {key}={value:?} is invalid")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quarry.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nembed_workers = 3\n[limits]\nmax_top_k = 50\n",
        )
        .unwrap();
        let mut config: Config = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9000");
        assert_eq!(config.limits.max_top_k, 50);
        assert_eq!(
            config.limits.max_batch_documents, 1000,
            "unset keys keep defaults"
        );
        config
            .apply_env([("QUARRY_LISTEN".to_string(), "127.0.0.1:9001".to_string())])
            .unwrap();
        assert_eq!(config.listen, "127.0.0.1:9001");
        assert_eq!(config.embed_workers, 3);
        config.validate().unwrap();
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
        let mut config = Config::default();
        let err = config
            .apply_env([("QUARRY_EMBED_WORKERS".to_string(), "many".to_string())])
            .unwrap_err();
        assert!(err.to_string().contains("QUARRY_EMBED_WORKERS"));
        config.listen = "localhost".into();
        assert!(config.validate().is_err());
        // The graph's link rows bound m (a one-byte count of 2m links).
        for (m, ok) in [(1, false), (2, true), (127, true), (128, false)] {
            let mut config = Config::default();
            config.index.hnsw_m = m;
            assert_eq!(config.validate().is_ok(), ok, "hnsw_m = {m}");
        }
    }
}
