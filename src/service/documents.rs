//! Documents: upsert (one batch), get, list (paged by id), delete, delete by filter. The
//! streaming upsert is [`super::stream`].

use crate::api::{convert, meta_convert, pb};
use crate::auth::Principal;
use crate::engine::FilterDeleteOptions;
use crate::error::Result;

use super::{authorize, blocking, row, Service, Touches, DOCUMENTS};

/// Documents a ListDocuments page holds when the request does not say.
pub const DEFAULT_LIST_PAGE: usize = 100;

impl Service {
    /// One batch, written all or nothing (one sled transaction, one index commit).
    pub async fn upsert_documents(
        &self,
        who: &Principal,
        r: pb::UpsertDocumentsRequest,
    ) -> Result<pb::UpsertDocumentsResponse> {
        let op = row(DOCUMENTS, "UpsertDocuments")?;
        authorize(who, op, Touches::Named(&[&r.collection]))?;
        let docs = r
            .documents
            .into_iter()
            .map(convert::document)
            .collect::<Result<_>>()?;
        let outcomes = self.engine()?.upsert(&r.collection, docs).await?;
        Ok(pb::UpsertDocumentsResponse {
            results: outcomes.into_iter().map(convert::outcome).collect(),
        })
    }

    pub async fn get_documents(
        &self,
        who: &Principal,
        r: pb::GetDocumentsRequest,
    ) -> Result<pb::GetDocumentsResponse> {
        let op = row(DOCUMENTS, "GetDocuments")?;
        authorize(who, op, Touches::Named(&[&r.collection]))?;
        let engine = self.engine()?;
        let (found, missing) =
            blocking(move || engine.get_documents(&r.collection, &r.ids, r.include_chunks)).await?;
        Ok(pb::GetDocumentsResponse {
            documents: found.into_iter().map(convert::stored_document).collect(),
            missing,
        })
    }

    pub async fn delete_documents(
        &self,
        who: &Principal,
        r: pb::DeleteDocumentsRequest,
    ) -> Result<pb::DeleteDocumentsResponse> {
        let op = row(DOCUMENTS, "DeleteDocuments")?;
        authorize(who, op, Touches::Named(&[&r.collection]))?;
        let (deleted, missing) = self
            .engine()?
            .delete_documents(&r.collection, r.ids)
            .await?;
        Ok(pb::DeleteDocumentsResponse {
            deleted: deleted as u32,
            missing,
        })
    }

    pub async fn list_documents(
        &self,
        who: &Principal,
        r: pb::ListDocumentsRequest,
    ) -> Result<pb::ListDocumentsResponse> {
        let op = row(DOCUMENTS, "ListDocuments")?;
        authorize(who, op, Touches::Named(&[&r.collection]))?;
        let filter = meta_convert::request_filter(Default::default(), r.r#where, &r.where_text)?;
        let after = meta_convert::list_after(&r.page_token)?;
        let page_size = match r.page_size {
            0 => DEFAULT_LIST_PAGE,
            n => n as usize,
        };
        let engine = self.engine()?;
        let page = blocking(move || {
            engine.list_documents(
                &r.collection,
                &filter,
                after.as_deref(),
                page_size,
                r.include_metadata,
            )
        })
        .await?;
        Ok(pb::ListDocumentsResponse {
            next_page_token: page
                .next_after
                .map(|id| meta_convert::list_token(&id))
                .unwrap_or_default(),
            documents: page.documents.into_iter().map(convert::listed).collect(),
        })
    }

    pub async fn delete_by_filter(
        &self,
        who: &Principal,
        r: pb::DeleteByFilterRequest,
    ) -> Result<pb::DeleteByFilterResponse> {
        let op = row(DOCUMENTS, "DeleteByFilter")?;
        authorize(who, op, Touches::Named(&[&r.collection]))?;
        let filter = meta_convert::request_filter(Default::default(), r.r#where, &r.where_text)?;
        let options = FilterDeleteOptions {
            dry_run: r.dry_run,
            all: r.all,
        };
        let out = self
            .engine()?
            .delete_by_filter(&r.collection, filter, options)
            .await?;
        Ok(pb::DeleteByFilterResponse {
            matched: out.matched as u64,
            deleted: out.deleted as u64,
        })
    }
}
