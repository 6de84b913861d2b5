//! Aliases: a name that stands for a collection, so that applications keep one name while the
//! collection behind it is replaced (a new generation built with other settings, promoted
//! when the eval says so, rolled back the same way).
//!
//! Every call that takes a collection name accepts an alias: [`Engine::collection`] resolves
//! it, once per call, and the call then acts on that collection. Aliases and collections share
//! one namespace (a name is one or the other), an alias points to a collection, never to
//! another alias, and a collection an alias points to cannot be deleted until no alias does.
//! Where aliases are kept is the backend's: on the embedded backend one sled key each
//! (`store/aliases.rs`), on Qdrant Qdrant's own aliases (`qdrant/alias.rs`); either way a
//! switch is one atomic, durable step. Changes take the engine's naming lock, so within one
//! server a switch never races a create, a delete or another switch; a change may name what it
//! expects to find ([`Expect`]) and is refused ABORTED when another caller changed it first.
//! Writes go through [`Engine::write_via`]: one that resolved an alias and got the write lock
//! only after the alias moved is refused ABORTED rather than written to the generation the
//! alias left (what makes a re-index's switch lose nothing).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{poisoned, valid_collection_name, Collection, Engine};
use crate::error::{quote, Error, Result};
use crate::store::Expect;

/// A collection as a call resolved it: the name the caller gave (perhaps an alias) and the
/// collection that name stood for then. A call that writes more than once (a stream's
/// batches) resolves once and writes through this, so its writes are fenced alike (see
/// [`Engine::write_via`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub requested: String,
    pub collection: String,
}

impl Engine {
    /// An open collection by its name or by an alias of it; NOT_FOUND, or FAILED_PRECONDITION
    /// with the reason when it exists but could not be opened.
    pub fn collection(&self, name: &str) -> Result<Arc<Collection>> {
        match self.alias_target(name)? {
            Some(target) => self.physical(&target),
            None => self.physical(name),
        }
    }

    /// `name` resolved now (see [`Resolved`]).
    pub fn resolve(&self, name: &str) -> Result<Resolved> {
        Ok(Resolved {
            requested: name.to_string(),
            collection: self.collection(name)?.record().name.clone(),
        })
    }

    /// Runs blocking `work` as the one writer of the collection `to` resolved to. A write that
    /// came through an alias and gets the write lock only after the alias moved away is
    /// refused ABORTED instead of landing in a generation the alias no longer names: a
    /// re-index switches an alias while it holds the old generation's write lock, after its
    /// last catch-up pass, so every write the old generation took is in the new one and every
    /// later one goes there (the caller's retry resolves the alias again).
    pub(super) async fn write_via<T: Send + 'static>(
        &self,
        to: &Resolved,
        work: impl FnOnce(&Collection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let c = self.physical(&to.collection)?;
        let guard = c.write_guard().await;
        if to.requested != to.collection
            && self.alias_target(&to.requested)?.as_deref() != Some(to.collection.as_str())
        {
            return Err(Error::Aborted(format!(
                "alias {} was switched to another collection while this write waited; nothing was written: retry it",
                quote(&to.requested)
            )));
        }
        c.run_locked(guard, work).await
    }

    /// Holds the writes of collection `name` (on this server) until the guard is dropped.
    pub async fn write_fence(&self, name: &str) -> Result<tokio::sync::OwnedMutexGuard<()>> {
        Ok(self.physical(name)?.write_guard().await)
    }

    /// The collection `name` points to, if it is an alias.
    pub fn alias_target(&self, name: &str) -> Result<Option<String>> {
        match &self.remote {
            Some(remote) => remote.alias(name),
            None => self.store.alias(name),
        }
    }

    /// Every alias and the collection it points to, sorted by alias.
    pub fn aliases(&self) -> Result<Vec<(String, String)>> {
        match &self.remote {
            Some(remote) => Ok(remote.aliases()?.into_iter().collect()),
            None => self.store.aliases(),
        }
    }

    /// Points `alias` at `collection`, creating the alias or switching it in one atomic,
    /// durable step, if `expect` holds. Returns the collection it pointed to before. Blocking.
    pub fn set_alias(
        &self,
        alias: &str,
        collection: &str,
        expect: Expect<'_>,
    ) -> Result<Option<String>> {
        valid_collection_name(alias)?;
        valid_collection_name(collection)?;
        let _naming = self.naming.lock().map_err(|_| poisoned())?;
        if self.is_collection(alias)? {
            return Err(Error::AlreadyExists(format!(
                "{} is a collection; an alias cannot take its name",
                quote(alias)
            )));
        }
        if self.alias_target(collection)?.is_some() {
            return Err(Error::invalid(format!(
                "{} is an alias: point an alias at a collection, not at another alias",
                quote(collection)
            )));
        }
        let target = self.physical(collection)?;
        target.ensure_live()?;
        if target.record.name != collection {
            // Qdrant answered for an alias it has and this server had not seen yet.
            return Err(Error::invalid(format!(
                "{} is an alias: point an alias at a collection, not at another alias",
                quote(collection)
            )));
        }
        let previous = match &self.remote {
            Some(remote) => remote.set_alias(alias, collection, expect)?,
            None => self.store.set_alias(alias, collection, expect)?,
        };
        tracing::info!(alias = %quote(alias), collection = %quote(collection), previous = ?previous, "alias set");
        if previous.is_none() {
            // A new alias: records a crash left under its name are not its own.
            if let Err(e) = self.forget_records_blocking(alias) {
                tracing::warn!(error = %e, alias = %quote(alias), "could not clear old records under the alias's name");
            }
        }
        Ok(previous)
    }

    /// Removes `alias` (never its collection), if `expect` holds. Returns the collection it
    /// pointed to. Blocking.
    pub fn delete_alias(&self, alias: &str, expect: Expect<'_>) -> Result<String> {
        let _naming = self.naming.lock().map_err(|_| poisoned())?;
        let collection = match &self.remote {
            Some(remote) => remote.remove_alias(alias, expect)?,
            None => self.store.remove_alias(alias, expect)?,
        };
        if let Err(e) = self.forget_records_blocking(alias) {
            tracing::warn!(error = %e, alias = %quote(alias), "could not remove the alias's eval sets");
        }
        tracing::info!(alias = %quote(alias), collection = %quote(&collection), "alias deleted");
        Ok(collection)
    }

    /// Whether `name` is a collection here (open or not), not an alias.
    fn is_collection(&self, name: &str) -> Result<bool> {
        if self.unavailable(name)?.is_some() {
            return Ok(true);
        }
        match self.physical(name) {
            // Qdrant answers a collection's info for its aliases too: compare the names.
            Ok(c) => Ok(c.record.name == name),
            Err(Error::CollectionNotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// ALREADY_EXISTS when `name` is an alias (for a collection about to be created under it).
    /// Called under the naming lock.
    pub(super) fn refuse_alias_name(&self, name: &str) -> Result<()> {
        match self.alias_target(name)? {
            Some(target) => Err(Error::AlreadyExists(format!(
                "{} is an alias of collection {}; a collection cannot take its name",
                quote(name),
                quote(&target)
            ))),
            None => Ok(()),
        }
    }

    /// Marks `collection` deleted (work still holding it reports NOT_FOUND from here on),
    /// unless another delete got there first or an alias points to it. Under the naming lock,
    /// so no alias can be pointed at it meanwhile.
    pub(super) async fn mark_deleted(self: &Arc<Self>, collection: &Arc<Collection>) -> Result<()> {
        let (engine, c) = (self.clone(), collection.clone());
        tokio::task::spawn_blocking(move || engine.mark_deleted_blocking(&c))
            .await
            .map_err(|e| Error::internal(format!("delete task failed: {e}")))?
    }

    fn mark_deleted_blocking(&self, collection: &Collection) -> Result<()> {
        let _naming = self.naming.lock().map_err(|_| poisoned())?;
        let name = &collection.record.name;
        if collection.deleted.load(Ordering::Acquire) {
            return Err(Error::CollectionNotFound(name.clone()));
        }
        let pointing: Vec<String> = self
            .aliases()?
            .into_iter()
            .filter(|(_, target)| target == name)
            .map(|(alias, _)| quote(&alias))
            .collect();
        if !pointing.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "collection {} is what alias {} points to: switch or delete the alias first",
                quote(name),
                pointing.join(", ")
            )));
        }
        collection.deleted.store(true, Ordering::Release);
        Ok(())
    }

    /// FAILED_PRECONDITION when `name` is an alias: deleting a collection takes its own name
    /// (an alias is removed with [`Engine::delete_alias`]).
    pub(super) fn refuse_delete_through_alias(&self, name: &str) -> Result<()> {
        match self.alias_target(name)? {
            Some(target) => Err(Error::FailedPrecondition(format!(
                "{} is an alias of collection {}: delete the alias with DeleteAlias, or the collection by its own name",
                quote(name),
                quote(&target)
            ))),
            None => Ok(()),
        }
    }
}
