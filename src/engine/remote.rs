//! The engine's registry on a shared backend (Qdrant): collections live in Qdrant, so this
//! front end opens what it finds there, notices what other front ends created or deleted, and
//! leaves the sweep of interrupted writes to `qdrant::write`.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Backing, Collection, Engine};
use crate::error::{quote, Error, Result};

impl Engine {
    /// At start-up on Qdrant: opens what Qdrant has (when it answers; else each collection
    /// opens when first used), and says so when the data directory holds embedded collections
    /// this server will not serve.
    pub(super) fn start_remote(&self) -> Result<()> {
        let local = self.store.list_collections()?;
        if !local.is_empty() {
            tracing::warn!(
                collections = local.len(),
                "the data directory holds embedded collections, not served while [backend] kind = \"qdrant\""
            );
        }
        if let Err(e) = self.refresh_remote() {
            tracing::warn!(error = %e, "Qdrant did not list its collections at start-up; they open when first used");
        }
        Ok(())
    }

    /// False while the backend cannot be reached (no Qdrant node answered the last call or
    /// health check); always true on the embedded backend.
    pub fn backend_reachable(&self) -> bool {
        self.remote.as_ref().is_none_or(|r| r.reachable())
    }

    /// Asks the backend whether it answers now (Qdrant's health check), updating
    /// [`Engine::backend_reachable`]. Blocking.
    pub fn probe_backend(&self) -> bool {
        self.remote.as_ref().is_none_or(|r| r.healthy())
    }

    /// Opens a collection found in Qdrant (its model must give its vectors' dimension) and
    /// registers it.
    pub(super) fn open_remote(&self, found: crate::qdrant::Found) -> Result<Arc<Collection>> {
        let Some(remote) = &self.remote else {
            return Err(Error::internal("no Qdrant backend"));
        };
        let record = found.record.clone();
        let embedder = self.embedder(&record.model)?;
        if embedder.dimension() != record.dimension {
            return Err(Error::FailedPrecondition(format!(
                "collection {} was built with {}-d vectors but model {} now produces {}",
                quote(&record.name),
                record.dimension,
                quote(&record.model),
                embedder.dimension()
            )));
        }
        let (qc, schema) = remote.open(found)?;
        let c = Arc::new(Collection::new(
            record.clone(),
            embedder,
            Backing::Qdrant(qc),
            schema,
        ));
        let mut map = self.open_map_mut()?;
        // Another call may have opened it meanwhile: keep the first.
        Ok(map.entry(record.name).or_insert(c).clone())
    }

    /// Brings the registry in step with Qdrant: collections other front ends created open
    /// here, collections they deleted (or re-created: another record id) close.
    pub(super) fn refresh_remote(&self) -> Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let found = remote.list()?;
        let live: HashMap<String, u64> = found
            .iter()
            .map(|f| (f.record.name.clone(), f.record.id))
            .collect();
        self.open_map_mut()?
            .retain(|name, c| live.get(name) == Some(&c.record.id));
        for f in found {
            if self.open_map()?.contains_key(&f.record.name) {
                continue;
            }
            let name = f.record.name.clone();
            match self.open_remote(f) {
                Ok(_) => {}
                // A node down or restarting: the collection opens when first used.
                Err(e @ Error::Unavailable(_)) => {
                    tracing::warn!(collection = %quote(&name), error = %e, "collection in Qdrant cannot be opened now; it opens when first used")
                }
                Err(e) => {
                    tracing::error!(collection = %quote(&name), error = %e, "collection in Qdrant cannot be opened")
                }
            }
        }
        Ok(())
    }

    /// Removes what interrupted writes left in a Qdrant collection (chunks no document names,
    /// older than `grace`); nothing to do on the embedded backend, whose writes are atomic.
    pub fn sweep(&self, collection: &str, grace: std::time::Duration) -> Result<usize> {
        match &self.collection(collection)?.backing {
            Backing::Qdrant(q) => q.sweep(grace),
            Backing::Embedded(_) => Ok(0),
        }
    }

    /// Which backend this engine keeps its collections on.
    pub fn backend_kind(&self) -> crate::qdrant::BackendKind {
        self.config.backend.kind
    }
}
