//! The production [`ModelSource`]: embedding models by name from the models directory.
//!
//! A model name is a directory name under `models_dir` (`[A-Za-z0-9._-]`, no separators, not
//! `.` or `..`), or an absolute path, accepted only inside one of the configured
//! `model_roots` (after resolving symlinks and `..`). Names come from clients, so nothing
//! else is accepted, and a refusal says the same whether or not the path exists. When the
//! directory is missing and the name is in the [`catalog`], the model is provisioned with pip
//! first (if `auto_fetch` allows it); ONNX Runtime itself is provisioned the same way. Loaded
//! models are cached by canonical directory: two names for one directory share one model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{catalog, fetch, init_runtime, Embedder, ModelSource, OnnxEmbedder};
use crate::error::{quote, Error, Result};

/// Where models live and how they are loaded.
#[derive(Default)]
pub struct LocalModels {
    /// Cache of provisioned models and the ONNX Runtime library.
    pub models_dir: PathBuf,
    /// Explicit `libonnxruntime.so`; `None`: the provisioned one in `models_dir`.
    pub onnxruntime_library: Option<PathBuf>,
    /// Provision catalog models and ONNX Runtime on demand.
    pub auto_fetch: bool,
    /// Single-threaded ingestion sessions per model (at least one).
    pub workers: usize,
    /// Directories under which a model may be named by absolute path (empty: none).
    pub model_roots: Vec<PathBuf>,
    /// Loaded models by canonical directory.
    loaded: Mutex<HashMap<PathBuf, Arc<dyn Embedder>>>,
}

/// Longest model name.
const MAX_MODEL_NAME: usize = 128;

impl LocalModels {
    pub fn new(
        models_dir: PathBuf,
        onnxruntime_library: Option<PathBuf>,
        auto_fetch: bool,
        workers: usize,
        model_roots: Vec<PathBuf>,
    ) -> LocalModels {
        LocalModels {
            models_dir,
            onnxruntime_library,
            auto_fetch,
            workers,
            model_roots,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// The directory a model name stands for, or INVALID_ARGUMENT (see the module docs).
    pub fn resolve(&self, name: &str) -> Result<PathBuf> {
        let path = Path::new(name);
        if path.is_absolute() {
            let refused = || {
                Error::invalid(format!(
                    "model path {} is not a directory inside the server's model_roots",
                    quote(name)
                ))
            };
            let canonical = path.canonicalize().map_err(|_| refused())?;
            let inside = self
                .model_roots
                .iter()
                .filter_map(|root| root.canonicalize().ok())
                .any(|root| canonical.starts_with(root));
            return if inside {
                Ok(canonical)
            } else {
                Err(refused())
            };
        }
        let plain = !name.is_empty()
            && name.len() <= MAX_MODEL_NAME
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !plain {
            return Err(Error::invalid(format!(
                "invalid model name {}: use a known model or a directory name of 1-{MAX_MODEL_NAME} characters of [A-Za-z0-9._-]",
                quote(name)
            )));
        }
        Ok(self.models_dir.join(name))
    }

    fn runtime(&self) -> Result<ort::environment::Environment> {
        let library = match &self.onnxruntime_library {
            Some(path) => path.clone(),
            None => {
                let path = fetch::onnxruntime_path(&self.models_dir);
                if !path.exists() && self.auto_fetch {
                    fetch::ensure(&catalog::ONNXRUNTIME, &self.models_dir, &mut |msg| {
                        tracing::info!("{msg}")
                    })?;
                }
                path
            }
        };
        init_runtime(&library)
    }

    /// Makes sure the model directory for `name` exists, provisioning a catalog model if
    /// allowed.
    fn ensure_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.resolve(name)?;
        if dir.exists() {
            return Ok(dir);
        }
        match catalog::find_model(name) {
            Some(item) if self.auto_fetch => {
                fetch::ensure(item, &self.models_dir, &mut |msg| tracing::info!("{msg}"))?;
                Ok(dir)
            }
            Some(_) => Err(Error::FailedPrecondition(format!(
                "model {} is not provisioned: run `quarry model fetch {name}`",
                quote(name)
            ))),
            None => Err(Error::FailedPrecondition(format!(
                "unknown embedding model {}: not a provisioned model and not a known one ({})",
                quote(name),
                catalog::MODELS
                    .iter()
                    .map(|m| m.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

impl ModelSource for LocalModels {
    fn load(&self, name: &str) -> Result<Arc<dyn Embedder>> {
        let dir = self.ensure_dir(name)?.canonicalize()?;
        let cached = self
            .loaded
            .lock()
            .map_err(|_| Error::internal("model cache poisoned"))?
            .get(&dir)
            .cloned();
        if let Some(e) = cached {
            return Ok(e);
        }
        // Loaded without holding the cache's lock; a concurrent load of the same directory
        // keeps whichever finished first.
        let env = self.runtime()?;
        let embedder: Arc<dyn Embedder> =
            Arc::new(OnnxEmbedder::load(&dir, env, self.workers.max(1))?);
        tracing::info!(
            model = %quote(name),
            dimension = embedder.dimension(),
            "embedding model loaded"
        );
        Ok(self
            .loaded
            .lock()
            .map_err(|_| Error::internal("model cache poisoned"))?
            .entry(dir)
            .or_insert(embedder)
            .clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_cannot_be_paths_outside_the_roots() {
        let models = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("m")).unwrap();
        let local = LocalModels::new(
            models.path().to_path_buf(),
            None,
            false,
            1,
            vec![root.path().to_path_buf()],
        );
        for bad in [
            "../../../../etc",
            "./all-minilm-l6-v2/.",
            "a/b",
            ".",
            "..",
            "",
            "x\ny",
        ] {
            let e = local.resolve(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e}");
        }
        assert_eq!(
            local.resolve("bge-small-en-v1.5").unwrap(),
            models.path().join("bge-small-en-v1.5")
        );
        let inside = root.path().join("m");
        assert_eq!(
            local.resolve(inside.to_str().unwrap()).unwrap(),
            inside.canonicalize().unwrap()
        );
        // Outside the roots, existing or not, the refusal is the same.
        let a = local.resolve("/etc").unwrap_err().to_string();
        let b = local.resolve("/no/such/dir").unwrap_err().to_string();
        assert_eq!(a.replace("/etc", "X"), b.replace("/no/such/dir", "X"));
        let escape = format!("{}/m/../../etc", root.path().display());
        assert!(local.resolve(&escape).is_err());
    }
}
