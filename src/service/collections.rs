//! Collections: create, get, list, delete; aliases: set (create or switch) and delete.

use crate::api::{convert, meta_convert, pb};
use crate::auth::Principal;
use crate::engine::{CollectionInfo, CollectionSettings, Engine};
use crate::error::Result;
use crate::store::check_expected;

use super::{authorize, blocking, row, Service, Touches, COLLECTIONS};

/// A collection on the wire with the aliases `who` may see that point to it.
fn with_aliases(
    info: CollectionInfo,
    aliases: &[(String, String)],
    who: &Principal,
) -> pb::Collection {
    let mut c = convert::collection(info);
    c.aliases = aliases
        .iter()
        .filter(|(alias, target)| *target == c.name && who.may_use(alias))
        .map(|(alias, _)| alias.clone())
        .collect();
    c
}

impl Service {
    pub async fn create_collection(
        &self,
        who: &Principal,
        r: pb::CreateCollectionRequest,
    ) -> Result<pb::Collection> {
        let op = row(COLLECTIONS, "CreateCollection")?;
        authorize(who, op, Touches::Named(&[&r.name]))?;
        let config = r.config.unwrap_or_default();
        let settings = CollectionSettings {
            model: Some(config.embedding_model).filter(|m| !m.is_empty()),
            chunk_tokens: Some(config.chunk_tokens as usize).filter(|&t| t > 0),
            chunk_overlap: config.chunk_overlap.map(|o| o as usize),
            metadata_schema: meta_convert::schema_from_pb(config.metadata_schema)?,
            vector_dimension: Some(config.vector_dimension as usize).filter(|&d| d > 0),
        };
        let engine = self.engine()?;
        let info = blocking(move || engine.create_collection(&r.name, settings)).await?;
        Ok(convert::collection(info))
    }

    /// A collection by its name or an alias (then `requested_alias` says which).
    pub async fn get_collection(
        &self,
        who: &Principal,
        r: pb::GetCollectionRequest,
    ) -> Result<pb::Collection> {
        authorize(
            who,
            row(COLLECTIONS, "GetCollection")?,
            Touches::Named(&[&r.name]),
        )?;
        let engine = self.engine()?;
        let name = r.name.clone();
        let (info, aliases, gates, settings) = blocking(move || {
            let info = engine.collection(&name)?.info();
            let gates = engine.gate_records(&info.record.name)?;
            let settings = (
                engine.search_settings(&name)?,
                engine.proposed_settings(&name)?,
            );
            Ok((info, engine.aliases()?, gates, settings))
        })
        .await?;
        let mut c = with_aliases(info, &aliases, who);
        // A record names an alias and two collections: shown only if the key may see all three.
        c.search_settings = Some(convert::search_settings_pb(settings.0));
        c.proposed_settings = settings.1.map(convert::search_settings_pb);
        c.gates = gates
            .into_iter()
            .filter(|g| {
                [&g.alias, &g.baseline, &g.candidate]
                    .iter()
                    .all(|n| who.may_use(n))
            })
            .map(convert::gate_record)
            .collect();
        if c.name != r.name {
            c.requested_alias = r.name;
        }
        Ok(c)
    }

    /// The collections and aliases the caller may see (a scoped key sees only its own).
    pub async fn list_collections(
        &self,
        who: &Principal,
        _r: pb::ListCollectionsRequest,
    ) -> Result<pb::ListCollectionsResponse> {
        authorize(who, row(COLLECTIONS, "ListCollections")?, Touches::Nothing)?;
        let engine = self.engine()?;
        let (list, aliases) =
            blocking(move || Ok((engine.list_collections()?, engine.aliases()?))).await?;
        Ok(pb::ListCollectionsResponse {
            collections: list
                .into_iter()
                .filter(|c| who.may_use(&c.record.name))
                .map(|c| with_aliases(c, &aliases, who))
                .collect(),
            aliases: aliases
                .into_iter()
                .filter(|(alias, _)| who.may_use(alias))
                .map(|(alias, collection)| pb::Alias {
                    alias,
                    collection,
                    previous: String::new(),
                })
                .collect(),
        })
    }

    pub async fn delete_collection(
        &self,
        who: &Principal,
        r: pb::DeleteCollectionRequest,
    ) -> Result<pb::DeleteCollectionResponse> {
        authorize(
            who,
            row(COLLECTIONS, "DeleteCollection")?,
            Touches::Named(&[&r.name]),
        )?;
        self.engine()?.delete_collection(&r.name).await?;
        Ok(pb::DeleteCollectionResponse {})
    }

    /// Creates or switches an alias. Authorized against the collection the alias points to
    /// now, and the switch only happens if it still points there (another switch in between
    /// is refused ABORTED), so a key never moves an alias away from a collection it may not use.
    pub async fn set_alias(&self, who: &Principal, r: pb::SetAliasRequest) -> Result<pb::Alias> {
        let op = row(COLLECTIONS, "SetAlias")?;
        let (engine, from) = self.alias_now(&r.alias).await?;
        authorize(
            who,
            op,
            Touches::Alias {
                alias: &r.alias,
                to: Some(&r.collection),
                from: from.as_deref(),
            },
        )?;
        check_expected(&r.alias, from.as_deref(), r.expect_collection.as_deref())?;
        blocking(move || {
            let expect = from.unwrap_or_default();
            engine.set_alias(&r.alias, &r.collection, Some(&expect))?;
            Ok(pb::Alias {
                alias: r.alias,
                collection: r.collection,
                previous: expect,
            })
        })
        .await
    }

    /// Removes an alias (never its collection), authorized like [`Service::set_alias`].
    pub async fn delete_alias(
        &self,
        who: &Principal,
        r: pb::DeleteAliasRequest,
    ) -> Result<pb::DeleteAliasResponse> {
        let op = row(COLLECTIONS, "DeleteAlias")?;
        let (engine, from) = self.alias_now(&r.alias).await?;
        authorize(
            who,
            op,
            Touches::Alias {
                alias: &r.alias,
                to: None,
                from: from.as_deref(),
            },
        )?;
        check_expected(&r.alias, from.as_deref(), r.expect_collection.as_deref())?;
        let collection = blocking(move || {
            // No `from`: the engine answers NOT_FOUND.
            engine.delete_alias(&r.alias, from.as_deref())
        })
        .await?;
        Ok(pb::DeleteAliasResponse { collection })
    }

    /// The engine, and the collection `alias` points to now (if it is an alias).
    pub(super) async fn alias_now(
        &self,
        alias: &str,
    ) -> Result<(std::sync::Arc<Engine>, Option<String>)> {
        let engine = self.engine()?;
        let (e, a) = (engine.clone(), alias.to_string());
        let from = blocking(move || e.alias_target(&a)).await?;
        Ok((engine, from))
    }
}
