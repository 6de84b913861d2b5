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

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{poisoned, valid_collection_name, Collection, Engine};
use crate::error::{quote, Error, Result};
use crate::store::Expect;

impl Engine {
    /// An open collection by its name or by an alias of it; NOT_FOUND, or FAILED_PRECONDITION
    /// with the reason when it exists but could not be opened.
    pub fn collection(&self, name: &str) -> Result<Arc<Collection>> {
        match self.alias_target(name)? {
            Some(target) => self.physical(&target),
            None => self.physical(name),
        }
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
