//! One engine per backend for behaviour tests that run from one body on both: the embedded
//! backend always, and Qdrant when a Qdrant binary can be had here (one node per test process,
//! each engine with a collection prefix of its own). Where it cannot, the tests say so loudly
//! and run on the embedded backend alone.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::{Engine, EngineConfig};
use crate::model::hashed::{HashEmbedder, HashModels};
use crate::qdrant::node::QdrantNode;
use crate::qdrant::BackendKind;

static NODE_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

extern "C" fn kill_node() {
    let pid = NODE_PID.load(Ordering::Relaxed);
    if pid != 0 {
        // SAFETY: kill(2) on the pid of the node this process started.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// This process's Qdrant node.
pub(crate) fn node() -> Option<&'static QdrantNode> {
    static NODE: OnceLock<Option<(tempfile::TempDir, QdrantNode)>> = OnceLock::new();
    let found = NODE.get_or_init(|| {
        let project = Path::new(env!("CARGO_MANIFEST_DIR"));
        let Some(bin) = crate::qdrant::node::provisioned_binary(project).expect("provisioning runs")
        else {
            eprintln!("!!! SKIPPED on Qdrant: no Qdrant binary on this machine; the embedded backend alone was tested !!!");
            return None;
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let node = QdrantNode::single(&bin, dir.path()).expect("Qdrant starts");
        // A static is never dropped: the node is killed when the test process exits.
        NODE_PID.store(node.pid().unwrap_or(0), Ordering::Relaxed);
        // SAFETY: registers a plain function that only reads an atomic and sends a signal.
        unsafe {
            libc::atexit(kill_node);
        }
        Some((dir, node))
    });
    found.as_ref().map(|(_, n)| n)
}

/// The backends to run on: `(name, config)`, each over its own data directory under `dir`.
pub(crate) fn configs(dir: &Path) -> Vec<(&'static str, EngineConfig)> {
    static PREFIX: AtomicUsize = AtomicUsize::new(0);
    let mut out = vec![("embedded", EngineConfig::new(dir.join("embedded"), "hash"))];
    if let Some(node) = node() {
        let mut config = EngineConfig::new(dir.join("qdrant"), "hash");
        config.backend.kind = BackendKind::Qdrant;
        config.backend.url = node.url();
        config.backend.collection_prefix = format!(
            "t{}-{}-",
            std::process::id(),
            PREFIX.fetch_add(1, Ordering::Relaxed)
        );
        out.push(("qdrant", config));
    }
    out
}

/// One engine per backend, on the hash embedder.
pub(crate) fn engines(dir: &Path, embedder: &Arc<HashEmbedder>) -> Vec<(&'static str, Engine)> {
    configs(dir)
        .into_iter()
        .map(|(name, config)| {
            let engine =
                Engine::open(config, Arc::new(HashModels(embedder.clone()))).expect("engine opens");
            (name, engine)
        })
        .collect()
}
