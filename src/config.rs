//! Server configuration: one [`Config`], validated at start-up.
//!
//! Precedence, lowest first: built-in defaults < TOML config file < environment (`QUARRY_*`) <
//! command-line flags (applied by `main`). Every limit the server enforces lives in [`Limits`]
//! so it is explicit, documented in README.md, and named in the error a caller gets.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Default gRPC listen address: loopback only, so a fresh install exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Name of the default embedding model (see `model::catalog`).
pub const DEFAULT_MODEL: &str = "all-minilm-l6-v2";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `HOST:PORT` the gRPC server listens on.
    pub listen: String,
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
    pub limits: Limits,
    pub index: IndexSettings,
    /// Grounded answers: inference routers, retries, packing, contract enforcement.
    pub answer: crate::answer::AnswerSettings,
}

/// Explicit limits. A request over a limit fails with INVALID_ARGUMENT naming the limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest gRPC message the server decodes or encodes.
    pub max_message_bytes: usize,
    /// Largest document text, in bytes.
    pub max_document_bytes: usize,
    /// Most documents in one UpsertDocuments request.
    pub max_batch_documents: usize,
    /// Largest document id, in bytes.
    pub max_id_bytes: usize,
    /// Most metadata entries per document.
    pub max_metadata_entries: usize,
    /// Largest query text, in bytes.
    pub max_query_bytes: usize,
    /// Largest `top_k` (and candidate depth) a search may ask for.
    pub max_top_k: usize,
}

/// Index tuning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexSettings {
    /// HNSW links per node (M).
    pub hnsw_m: usize,
    /// HNSW candidate list size while building.
    pub hnsw_ef_construction: usize,
    /// HNSW candidate list size while searching (raised to the requested depth when smaller).
    pub hnsw_ef_search: usize,
    /// Seconds between background checkpoints of the HNSW graph.
    pub checkpoint_interval_secs: u64,
    /// Rebuild the HNSW graph when deleted points exceed this fraction of all points.
    pub rebuild_tombstone_ratio: f32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.to_string(),
            data_dir: PathBuf::from("quarry-data"),
            models_dir: default_models_dir(),
            onnxruntime_library: None,
            default_model: DEFAULT_MODEL.to_string(),
            auto_fetch_model: true,
            embed_workers: 0,
            limits: Limits::default(),
            index: IndexSettings::default(),
            answer: crate::answer::AnswerSettings::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024 * 1024,
            max_document_bytes: 4 * 1024 * 1024,
            max_batch_documents: 1000,
            max_id_bytes: 512,
            max_metadata_entries: 64,
            max_query_bytes: 8 * 1024,
            max_top_k: 1000,
        }
    }
}

impl Default for IndexSettings {
    fn default() -> Self {
        IndexSettings {
            hnsw_m: 16,
            hnsw_ef_construction: 200,
            hnsw_ef_search: 128,
            checkpoint_interval_secs: 30,
            rebuild_tombstone_ratio: 0.2,
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
                "QUARRY_DATA_DIR" => self.data_dir = PathBuf::from(value),
                "QUARRY_MODELS_DIR" => self.models_dir = PathBuf::from(value),
                "QUARRY_ONNXRUNTIME_LIBRARY" => self.onnxruntime_library = Some(value.into()),
                "QUARRY_DEFAULT_MODEL" => self.default_model = value,
                "QUARRY_AUTO_FETCH_MODEL" => self.auto_fetch_model = parse_env(&key, &value)?,
                "QUARRY_EMBED_WORKERS" => self.embed_workers = parse_env(&key, &value)?,
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
        let l = &self.limits;
        if l.max_batch_documents == 0 || l.max_document_bytes == 0 || l.max_top_k == 0 {
            return Err(Error::invalid("limits must be positive"));
        }
        if l.max_document_bytes > l.max_message_bytes {
            return Err(Error::invalid(
                "limits.max_document_bytes cannot exceed limits.max_message_bytes",
            ));
        }
        if self.index.hnsw_m == 0 || self.index.hnsw_m > 255 {
            return Err(Error::invalid("index.hnsw_m must be in 1..=255"));
        }
        Ok(())
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
    }
}
