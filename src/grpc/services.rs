//! The Collections, Access, Documents and Search services (the others are in `streaming`): decode,
//! call [`Service`], encode. Every request semantic (defaults, paging, batching,
//! authorization) is the service layer's.

use tonic::{Request, Response, Status, Streaming};

use super::auth::principal;
use super::pb;
use super::status::{from_status, to_status};
use crate::auth::Principal;
use crate::service::Service;

/// The caller and the message of a unary request.
pub(super) fn parts<T>(request: Request<T>) -> Result<(Principal, T), Status> {
    let who = principal(&request)?.clone();
    Ok((who, request.into_inner()))
}

/// A service reply as a gRPC one.
pub(super) fn reply<T>(result: crate::Result<T>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(to_status)
}

/// Every Quarry service over one [`Service`].
#[derive(Clone)]
pub struct Adapter {
    pub service: Service,
}

#[tonic::async_trait]
impl pb::collections_server::Collections for Adapter {
    async fn create_collection(
        &self,
        request: Request<pb::CreateCollectionRequest>,
    ) -> Result<Response<pb::Collection>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.create_collection(&who, r).await)
    }

    async fn get_collection(
        &self,
        request: Request<pb::GetCollectionRequest>,
    ) -> Result<Response<pb::Collection>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.get_collection(&who, r).await)
    }

    async fn list_collections(
        &self,
        request: Request<pb::ListCollectionsRequest>,
    ) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.list_collections(&who, r).await)
    }

    async fn delete_collection(
        &self,
        request: Request<pb::DeleteCollectionRequest>,
    ) -> Result<Response<pb::DeleteCollectionResponse>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.delete_collection(&who, r).await)
    }

    async fn set_alias(
        &self,
        request: Request<pb::SetAliasRequest>,
    ) -> Result<Response<pb::Alias>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.set_alias(&who, r).await)
    }

    async fn delete_alias(
        &self,
        request: Request<pb::DeleteAliasRequest>,
    ) -> Result<Response<pb::DeleteAliasResponse>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.delete_alias(&who, r).await)
    }
}

#[tonic::async_trait]
impl pb::access_server::Access for Adapter {
    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.who_am_i(&who, r).await)
    }
}

#[tonic::async_trait]
impl pb::documents_server::Documents for Adapter {
    async fn upsert_documents(
        &self,
        request: Request<pb::UpsertDocumentsRequest>,
    ) -> Result<Response<pb::UpsertDocumentsResponse>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.upsert_documents(&who, r).await)
    }

    async fn stream_upsert_documents(
        &self,
        request: Request<Streaming<pb::StreamUpsertRequest>>,
    ) -> Result<Response<pb::UpsertDocumentsResponse>, Status> {
        let (who, stream) = parts(request)?;
        let messages = futures::StreamExt::map(stream, |m| m.map_err(from_status));
        reply(self.service.upsert_stream(&who, messages).await)
    }

    async fn get_documents(
        &self,
        request: Request<pb::GetDocumentsRequest>,
    ) -> Result<Response<pb::GetDocumentsResponse>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.get_documents(&who, r).await)
    }

    async fn delete_documents(
        &self,
        request: Request<pb::DeleteDocumentsRequest>,
    ) -> Result<Response<pb::DeleteDocumentsResponse>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.delete_documents(&who, r).await)
    }

    async fn list_documents(
        &self,
        request: Request<pb::ListDocumentsRequest>,
    ) -> Result<Response<pb::ListDocumentsResponse>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.list_documents(&who, r).await)
    }

    async fn delete_by_filter(
        &self,
        request: Request<pb::DeleteByFilterRequest>,
    ) -> Result<Response<pb::DeleteByFilterResponse>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.delete_by_filter(&who, r).await)
    }
}

#[tonic::async_trait]
impl pb::search_server::Search for Adapter {
    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let (who, r) = parts(request)?;
        reply(self.service.search(&who, r).await)
    }
}
