//! Collections: create, get, list, delete.

use crate::api::{convert, meta_convert, pb};
use crate::auth::Principal;
use crate::engine::CollectionSettings;
use crate::error::Result;

use super::{authorize, blocking, row, Service, Touches, COLLECTIONS};

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
        let c = self.engine()?.collection(&r.name)?;
        Ok(convert::collection(c.info()))
    }

    /// The collections the caller may see (a scoped key sees only its own).
    pub async fn list_collections(
        &self,
        who: &Principal,
        _r: pb::ListCollectionsRequest,
    ) -> Result<pb::ListCollectionsResponse> {
        authorize(who, row(COLLECTIONS, "ListCollections")?, Touches::Nothing)?;
        let list = self.engine()?.list_collections()?;
        Ok(pb::ListCollectionsResponse {
            collections: list
                .into_iter()
                .filter(|c| who.may_use(&c.record.name))
                .map(convert::collection)
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
}
