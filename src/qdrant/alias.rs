//! Aliases on Qdrant: Quarry's aliases are Qdrant's own (`<collection_prefix><alias>` ->
//! `<collection_prefix><collection>`), so every front end on the cluster shares them, and a
//! switch is one alias operation that Qdrant applies atomically through its consensus (it
//! replaces the alias's collection in one step, and refuses an alias named like a collection).
//!
//! A front end resolves names from the aliases it read in the last [`RECHECK_AFTER`] (one
//! `list_aliases` call, read again when older, and at once after its own changes), the same
//! bound as its view of collections created or deleted elsewhere: a switch made through another
//! front end is seen here within that time. The expectation a change names is checked against
//! a fresh read; two front ends switching one alias at the same instant: the last one wins.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use qdrant_client::qdrant::{CreateAlias, DeleteAlias};

use super::collection::RECHECK_AFTER;
use super::{error, Qdrant};
use crate::error::{quote, Error, Result};
use crate::store::{check_expected, Expect};

/// The aliases as last read, and when.
#[derive(Default)]
pub(super) struct Cache(Mutex<Option<(Instant, BTreeMap<String, String>)>>);

impl Qdrant {
    /// Every Quarry alias and its collection, read from Qdrant now (Qdrant's aliases outside
    /// `collection_prefix` are not Quarry's and are left out).
    pub fn aliases(&self) -> Result<BTreeMap<String, String>> {
        let listed = self
            .call(|c| async move { c.list_aliases().await })?
            .map_err(error)?;
        let prefix = self.settings.collection_prefix.as_str();
        let map: BTreeMap<String, String> = listed
            .aliases
            .into_iter()
            .filter_map(|a| {
                Some((
                    a.alias_name.strip_prefix(prefix)?.to_string(),
                    a.collection_name.strip_prefix(prefix)?.to_string(),
                ))
            })
            .collect();
        if let Ok(mut cache) = self.alias_cache.0.lock() {
            *cache = Some((Instant::now(), map.clone()));
        }
        Ok(map)
    }

    /// The collection `alias` points to, from the aliases read in the last
    /// [`RECHECK_AFTER`] (read again when older).
    pub fn alias(&self, alias: &str) -> Result<Option<String>> {
        if let Ok(cache) = self.alias_cache.0.lock() {
            if let Some((read, map)) = cache.as_ref() {
                if read.elapsed() < RECHECK_AFTER {
                    return Ok(map.get(alias).cloned());
                }
            }
        }
        Ok(self.aliases()?.get(alias).cloned())
    }

    /// Points `alias` at `collection` in one Qdrant alias operation, if `expect` holds (read
    /// fresh). Returns the collection it pointed to before.
    pub fn set_alias(
        &self,
        alias: &str,
        collection: &str,
        expect: Expect<'_>,
    ) -> Result<Option<String>> {
        let previous = self.aliases()?.get(alias).cloned();
        check_expected(alias, previous.as_deref(), expect)?;
        let change = CreateAlias {
            collection_name: self.qdrant_name(collection),
            alias_name: self.qdrant_name(alias),
        };
        self.call(move |c| {
            let change = change.clone();
            async move { c.create_alias(change).await }
        })?
        .map_err(error)?;
        self.aliases()?;
        Ok(previous)
    }

    /// Removes `alias`, if `expect` holds (read fresh). Returns its collection.
    pub fn remove_alias(&self, alias: &str, expect: Expect<'_>) -> Result<String> {
        let Some(collection) = self.aliases()?.get(alias).cloned() else {
            return Err(Error::NotFound(format!("alias {} not found", quote(alias))));
        };
        check_expected(alias, Some(&collection), expect)?;
        let change = DeleteAlias {
            alias_name: self.qdrant_name(alias),
        };
        self.call(move |c| {
            let change = change.clone();
            async move { c.delete_alias(change).await }
        })?
        .map_err(error)?;
        self.aliases()?;
        Ok(collection)
    }
}
