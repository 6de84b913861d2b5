//! Records the server keeps about collections and aliases, beside their data: the eval sets
//! attached to a name and the gate decisions recorded with a collection (`eval/sets.rs`,
//! `eval/gate.rs`). Every front end that sees the collections must see them, so they live
//! where the collections live: a sled tree on the embedded backend (`store/records.rs`), a
//! collection of payload-only points on Qdrant (`qdrant/meta.rs`).
//!
//! A record is (owner, group, item) -> UTF-8 value, where the owner is the collection or
//! alias the record belongs to, so all of a name's records go with it: when the collection or
//! alias is deleted, and again when a name is created (what a crash between a delete and its
//! clean-up left is never inherited by a new collection of the same name). The engine knows
//! nothing of what the records mean.

use std::sync::Arc;

use super::Engine;
use crate::error::{quote, Error, Result};

impl Engine {
    /// Writes one record, durably. Blocking.
    pub fn record_put(&self, owner: &str, group: &str, item: &str, value: &str) -> Result<()> {
        match &self.remote {
            Some(remote) => remote.record_put(owner, group, item, value),
            None => self.store.record_put(owner, group, item, value),
        }
    }

    /// One record. Blocking.
    pub fn record_get(&self, owner: &str, group: &str, item: &str) -> Result<Option<String>> {
        match &self.remote {
            Some(remote) => remote.record_get(owner, group, item),
            None => self.store.record_get(owner, group, item),
        }
    }

    /// Every record of `owner`'s `group`, in item order. Blocking.
    pub fn record_list(&self, owner: &str, group: &str) -> Result<Vec<(String, String)>> {
        match &self.remote {
            Some(remote) => remote.record_list(owner, group),
            None => self.store.record_list(owner, group),
        }
    }

    /// Removes these records, durably. Blocking.
    pub fn record_delete(&self, owner: &str, group: &str, items: &[String]) -> Result<()> {
        match &self.remote {
            Some(remote) => remote.record_delete(owner, group, items),
            None => self.store.record_delete(owner, group, items),
        }
    }

    /// Removes every record of `owner`, durably. Blocking.
    pub fn forget_records_blocking(&self, owner: &str) -> Result<()> {
        match &self.remote {
            Some(remote) => remote.record_forget(owner),
            None => self.store.record_forget(owner),
        }
    }

    /// Every record of `owner` on the embedded backend (what a snapshot carries).
    #[cfg(test)]
    pub(crate) fn local_records(&self, owner: &str) -> Result<Vec<crate::store::OwnedRecord>> {
        self.store.record_all(owner)
    }

    /// [`Engine::forget_records_blocking`] after a collection was deleted: a failure is
    /// logged (the records are removed again if the name is created anew).
    pub(super) async fn forget_records(self: &Arc<Self>, name: &str) {
        let (engine, n) = (self.clone(), name.to_string());
        let done = tokio::task::spawn_blocking(move || engine.forget_records_blocking(&n)).await;
        let done = done
            .map_err(|e| Error::internal(e.to_string()))
            .and_then(|r| r);
        if let Err(e) = done {
            tracing::warn!(error = %e, collection = %quote(name), "could not remove the collection's records");
        }
    }
}
