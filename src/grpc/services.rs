//! Service implementations: decode, call the engine, encode. No retrieval logic lives here.

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use super::auth::{authorize, principal};
use super::convert;
use super::meta_convert;
use super::pb;
use super::status::to_status;
use crate::engine::{CollectionSettings, DocumentInput, Engine};
use crate::error::clip;
use crate::service::{Touches, COLLECTIONS, DOCUMENTS, SEARCH};

/// Documents a streaming upsert groups into one engine batch (one sled transaction, one
/// tantivy commit); large enough to amortize commits, small enough to acknowledge promptly.
const STREAM_BATCH: usize = 64;
/// Longest error message in a per-document result.
const MAX_RESULT_ERROR_BYTES: usize = 256;

pub struct CollectionsService {
    live: Arc<super::Live>,
}

impl CollectionsService {
    pub fn new(live: Arc<super::Live>) -> Self {
        CollectionsService { live }
    }

    /// The engine being served now, or UNAVAILABLE while the storage is reopened.
    fn engine(&self) -> Result<Arc<Engine>, Status> {
        self.live.engine().map_err(to_status)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("task failed: {e}")))?
        .map_err(to_status)
}

#[tonic::async_trait]
impl pb::collections_server::Collections for CollectionsService {
    async fn create_collection(
        &self,
        request: Request<pb::CreateCollectionRequest>,
    ) -> Result<Response<pb::Collection>, Status> {
        authorize(
            &request,
            COLLECTIONS,
            "CreateCollection",
            Touches::Named(&[&request.get_ref().name]),
        )?;
        let r = request.into_inner();
        let config = r.config.unwrap_or_default();
        let settings = CollectionSettings {
            model: Some(config.embedding_model).filter(|m| !m.is_empty()),
            chunk_tokens: Some(config.chunk_tokens as usize).filter(|&t| t > 0),
            chunk_overlap: config.chunk_overlap.map(|o| o as usize),
            metadata_schema: meta_convert::schema_from_pb(config.metadata_schema)
                .map_err(to_status)?,
            vector_dimension: Some(config.vector_dimension as usize).filter(|&d| d > 0),
        };
        let engine = self.engine()?;
        let info = blocking(move || engine.create_collection(&r.name, settings)).await?;
        Ok(Response::new(convert::collection(info)))
    }

    async fn get_collection(
        &self,
        request: Request<pb::GetCollectionRequest>,
    ) -> Result<Response<pb::Collection>, Status> {
        authorize(
            &request,
            COLLECTIONS,
            "GetCollection",
            Touches::Named(&[&request.get_ref().name]),
        )?;
        let c = self
            .engine()?
            .collection(&request.into_inner().name)
            .map_err(to_status)?;
        Ok(Response::new(convert::collection(c.info())))
    }

    async fn list_collections(
        &self,
        request: Request<pb::ListCollectionsRequest>,
    ) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        authorize(&request, COLLECTIONS, "ListCollections", Touches::Nothing)?;
        // A key scoped to some collections sees only those.
        let who = principal(&request)?;
        let list = self.engine()?.list_collections().map_err(to_status)?;
        Ok(Response::new(pb::ListCollectionsResponse {
            collections: list
                .into_iter()
                .filter(|c| who.may_use(&c.record.name))
                .map(convert::collection)
                .collect(),
        }))
    }

    async fn delete_collection(
        &self,
        request: Request<pb::DeleteCollectionRequest>,
    ) -> Result<Response<pb::DeleteCollectionResponse>, Status> {
        authorize(
            &request,
            COLLECTIONS,
            "DeleteCollection",
            Touches::Named(&[&request.get_ref().name]),
        )?;
        self.engine()?
            .delete_collection(&request.into_inner().name)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::DeleteCollectionResponse {}))
    }
}

pub struct DocumentsService {
    live: Arc<super::Live>,
}

impl DocumentsService {
    pub fn new(live: Arc<super::Live>) -> Self {
        DocumentsService { live }
    }

    /// The engine being served now, or UNAVAILABLE while the storage is reopened.
    fn engine(&self) -> Result<Arc<Engine>, Status> {
        self.live.engine().map_err(to_status)
    }
}

#[tonic::async_trait]
impl pb::documents_server::Documents for DocumentsService {
    async fn upsert_documents(
        &self,
        request: Request<pb::UpsertDocumentsRequest>,
    ) -> Result<Response<pb::UpsertDocumentsResponse>, Status> {
        authorize(
            &request,
            DOCUMENTS,
            "UpsertDocuments",
            Touches::Named(&[&request.get_ref().collection]),
        )?;
        let r = request.into_inner();
        let docs = r
            .documents
            .into_iter()
            .map(convert::document)
            .collect::<crate::Result<_>>()
            .map_err(to_status)?;
        let outcomes = self
            .engine()?
            .upsert(&r.collection, docs)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::UpsertDocumentsResponse {
            results: outcomes.into_iter().map(convert::outcome).collect(),
        }))
    }

    async fn stream_upsert_documents(
        &self,
        request: Request<Streaming<pb::StreamUpsertRequest>>,
    ) -> Result<Response<pb::UpsertDocumentsResponse>, Status> {
        // The collection arrives with the first message: the right was checked before
        // admission, the collection is checked when it is named.
        let who = principal(&request)?.clone();
        let op = crate::service::row(DOCUMENTS, "StreamUpsertDocuments").map_err(to_status)?;
        let mut stream = request.into_inner();
        let mut collection: Option<String> = None;
        let mut results: Vec<Option<pb::DocumentResult>> = Vec::new();
        // Pending documents with their positions in `results`.
        let mut pending: Vec<(usize, DocumentInput)> = Vec::new();
        // Metadata key types fixed by documents of this stream not yet written.
        let mut new_keys = crate::meta::Schema::new();

        async fn flush(
            engine: &Engine,
            collection: &str,
            pending: &mut Vec<(usize, DocumentInput)>,
            results: &mut [Option<pb::DocumentResult>],
        ) -> Result<(), Status> {
            if pending.is_empty() {
                return Ok(());
            }
            let (positions, docs): (Vec<usize>, Vec<DocumentInput>) =
                std::mem::take(pending).into_iter().unzip();
            let outcomes = engine.upsert(collection, docs).await.map_err(to_status)?;
            for (pos, o) in positions.into_iter().zip(outcomes) {
                results[pos] = Some(convert::outcome(o));
            }
            Ok(())
        }

        let idle = std::time::Duration::from_secs(self.engine()?.config().limits.stream_idle_secs);
        loop {
            let next = tokio::time::timeout(idle, stream.message())
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!(
                        "the stream sent nothing for {} s (limits.stream_idle_secs); batches \
                     already written are stored",
                        idle.as_secs()
                    ))
                })?;
            let Some(message) = next? else {
                break;
            };
            match (&collection, message.collection.as_str()) {
                (None, "") => {
                    return Err(Status::invalid_argument(
                        "the first message of the stream must name the collection",
                    ))
                }
                (None, name) => {
                    crate::service::authorize(&who, op, Touches::Named(&[name]))
                        .map_err(to_status)?;
                    self.engine()?.collection(name).map_err(to_status)?;
                    collection = Some(name.to_string());
                }
                (Some(_), "") => {}
                (Some(c), name) if c == name => {}
                (Some(c), name) => {
                    return Err(Status::invalid_argument(format!(
                        "a stream writes to one collection: got {} after {}",
                        crate::error::quote(name),
                        crate::error::quote(c)
                    )))
                }
            }
            let name = collection.clone().unwrap_or_default();
            let Some(doc) = message.document else {
                continue;
            };
            let pos = results.len();
            // Taken per message, not held for the stream (the storage may be reopened).
            let engine = self.engine()?;
            let limits = &engine.config().limits;
            if pos >= limits.max_stream_documents {
                return Err(Status::invalid_argument(format!(
                    "the stream has more than max_stream_documents = {} documents; batches \
                     already written are stored (sending them again is cheap: unchanged \
                     documents are skipped)",
                    limits.max_stream_documents
                )));
            }
            let id = doc.id.clone();
            let checked = convert::document(doc).and_then(|doc| {
                engine.validate_document(&doc)?;
                engine.check_metadata_types(&name, &doc, &mut new_keys)?;
                Ok(doc)
            });
            match checked {
                Err(e) => {
                    // Both are bounded, so the reply stays within max_message_bytes.
                    results.push(Some(pb::DocumentResult {
                        id: clip(&id, limits.max_id_bytes).to_string(),
                        status: pb::UpsertStatus::Rejected as i32,
                        chunk_count: 0,
                        error: clip(&e.to_string(), MAX_RESULT_ERROR_BYTES).to_string(),
                    }));
                }
                Ok(doc) => {
                    // A batch holds each id once: a repeated id starts a new batch so the
                    // later version wins, as it would sent one by one.
                    if pending.iter().any(|(_, d)| d.id == doc.id) {
                        flush(&engine, &name, &mut pending, &mut results).await?;
                    }
                    results.push(None);
                    pending.push((pos, doc));
                    if pending.len() >= STREAM_BATCH {
                        flush(&engine, &name, &mut pending, &mut results).await?;
                    }
                }
            }
        }
        if let Some(name) = &collection {
            flush(&*self.engine()?, name, &mut pending, &mut results).await?;
        }
        Ok(Response::new(pb::UpsertDocumentsResponse {
            results: results.into_iter().flatten().collect(),
        }))
    }

    async fn get_documents(
        &self,
        request: Request<pb::GetDocumentsRequest>,
    ) -> Result<Response<pb::GetDocumentsResponse>, Status> {
        authorize(
            &request,
            DOCUMENTS,
            "GetDocuments",
            Touches::Named(&[&request.get_ref().collection]),
        )?;
        let r = request.into_inner();
        let engine = self.engine()?;
        let (found, missing) =
            blocking(move || engine.get_documents(&r.collection, &r.ids, r.include_chunks)).await?;
        Ok(Response::new(pb::GetDocumentsResponse {
            documents: found.into_iter().map(convert::stored_document).collect(),
            missing,
        }))
    }

    async fn delete_documents(
        &self,
        request: Request<pb::DeleteDocumentsRequest>,
    ) -> Result<Response<pb::DeleteDocumentsResponse>, Status> {
        authorize(
            &request,
            DOCUMENTS,
            "DeleteDocuments",
            Touches::Named(&[&request.get_ref().collection]),
        )?;
        let r = request.into_inner();
        let (deleted, missing) = self
            .engine()?
            .delete_documents(&r.collection, r.ids)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::DeleteDocumentsResponse {
            deleted: deleted as u32,
            missing,
        }))
    }

    async fn list_documents(
        &self,
        request: Request<pb::ListDocumentsRequest>,
    ) -> Result<Response<pb::ListDocumentsResponse>, Status> {
        authorize(
            &request,
            DOCUMENTS,
            "ListDocuments",
            Touches::Named(&[&request.get_ref().collection]),
        )?;
        let r = request.into_inner();
        let filter = meta_convert::request_filter(Default::default(), r.r#where, &r.where_text)
            .map_err(to_status)?;
        let after = meta_convert::list_after(&r.page_token).map_err(to_status)?;
        let page_size = if r.page_size == 0 {
            100
        } else {
            r.page_size as usize
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
        Ok(Response::new(pb::ListDocumentsResponse {
            next_page_token: page
                .next_after
                .map(|id| meta_convert::list_token(&id))
                .unwrap_or_default(),
            documents: page
                .documents
                .into_iter()
                .map(|d| {
                    let (metadata, typed_metadata) = meta_convert::metadata_to_pb(d.metadata);
                    pb::ListedDocument {
                        id: d.id,
                        title: d.title,
                        chunk_count: d.chunk_count as u32,
                        metadata,
                        typed_metadata,
                    }
                })
                .collect(),
        }))
    }

    async fn delete_by_filter(
        &self,
        request: Request<pb::DeleteByFilterRequest>,
    ) -> Result<Response<pb::DeleteByFilterResponse>, Status> {
        authorize(
            &request,
            DOCUMENTS,
            "DeleteByFilter",
            Touches::Named(&[&request.get_ref().collection]),
        )?;
        let r = request.into_inner();
        let filter = meta_convert::request_filter(Default::default(), r.r#where, &r.where_text)
            .map_err(to_status)?;
        let out = self
            .engine()?
            .delete_by_filter(
                &r.collection,
                filter,
                crate::engine::FilterDeleteOptions {
                    dry_run: r.dry_run,
                    all: r.all,
                },
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::DeleteByFilterResponse {
            matched: out.matched as u64,
            deleted: out.deleted as u64,
        }))
    }
}

pub struct SearchService {
    live: Arc<super::Live>,
}

impl SearchService {
    pub fn new(live: Arc<super::Live>) -> Self {
        SearchService { live }
    }

    /// The engine being served now, or UNAVAILABLE while the storage is reopened.
    fn engine(&self) -> Result<Arc<Engine>, Status> {
        self.live.engine().map_err(to_status)
    }
}

#[tonic::async_trait]
impl pb::search_server::Search for SearchService {
    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        authorize(
            &request,
            SEARCH,
            "Search",
            Touches::Named(&[&request.get_ref().collection]),
        )?;
        let r = request.into_inner();
        let explain = r.explain;
        let params = convert::search_params(r.clone()).map_err(to_status)?;
        let outcome = self
            .engine()?
            .search(&r.collection, params)
            .await
            .map_err(to_status)?;
        let next = outcome
            .next_offset
            .map(|n| meta_convert::page_token(&r, n))
            .unwrap_or_default();
        Ok(Response::new(convert::search_response(
            outcome, explain, next,
        )))
    }
}
