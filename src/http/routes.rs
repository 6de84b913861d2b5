//! The table of HTTP routes: each one an operation of the service layer (its row in
//! [`crate::service::OPERATIONS`]) at a resource-style path under `/v1`. The router and the
//! OpenAPI document are both built from this table, so they cannot disagree; a test checks
//! the served document against the router too.

use futures::future::BoxFuture;

use futures::StreamExt;

use super::call::{Input, Reply};
use crate::api::{json, pb};
use crate::auth::Principal;
use crate::error::{quote, Error, Result};
use crate::service::{
    Events, Service, ACCESS, ADMIN, ANSWERS, COLLECTIONS, DOCUMENTS, EVAL, JOBS, SEARCH,
};

/// How a route takes its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body: path and query only.
    None,
    /// One JSON object: the request message.
    Json,
    /// Newline-delimited JSON: one request message per line (a streaming call).
    Ndjson,
    /// Raw bytes (a snapshot archive), with the request's fields from the query.
    Tar,
}

/// How a route replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// One JSON object: the reply message.
    Json,
    /// Server-sent events, each a reply message as JSON; an error ends the stream with an
    /// `event: error` carrying the JSON error body.
    Sse,
    /// A tar archive.
    Tar,
}

/// A route's work once its caller is known and admitted: the reply as JSON.
pub type Call =
    Box<dyn Fn(Service, Principal, Input) -> BoxFuture<'static, Result<Reply>> + Send + Sync>;

pub struct Route {
    pub verb: http::Method,
    /// In axum's syntax: `/v1/collections/{collection}`.
    pub path: &'static str,
    /// The operation's row in the operations table.
    pub service: &'static str,
    pub method: &'static str,
    pub summary: &'static str,
    /// Request fields the path's parameters set, in the path's order.
    pub path_fields: &'static [&'static str],
    /// Request fields a query string may set.
    pub query_fields: &'static [&'static str],
    pub body: BodyKind,
    pub reply: ReplyKind,
    /// Proto names of the request and reply messages.
    pub request: String,
    pub response: String,
    pub call: Call,
}

impl Route {
    /// The request fields set by this call's path and query parameters.
    pub fn bind(
        &self,
        path: Vec<(String, String)>,
        query: Vec<(String, String)>,
    ) -> Result<Vec<(&'static str, String)>> {
        let mut params: Vec<(&'static str, String)> = self
            .path_fields
            .iter()
            .copied()
            .zip(path.into_iter().map(|(_, v)| v))
            .collect();
        for (key, value) in query {
            let field = self
                .query_fields
                .iter()
                .find(|f| **f == key)
                .ok_or_else(|| {
                    Error::invalid(format!("unknown query parameter {}", quote(&key)))
                })?;
            if params.iter().any(|(f, _)| f == field) {
                return Err(Error::invalid(format!(
                    "query parameter {} given twice",
                    quote(&key)
                )));
            }
            params.push((field, value));
        }
        Ok(params)
    }
}

/// A unary route: `$method` of [`Service`] with `$req` decoded from the body and parameters.
macro_rules! unary {
    ($verb:ident $path:literal, $service:expr, $op:literal, $summary:literal, $method:ident,
     $req:ty => $resp:ty, path: [$($pf:literal),*], query: [$($qf:literal),*], $body:ident) => {
        Route {
            verb: http::Method::$verb,
            path: $path,
            service: $service,
            method: $op,
            summary: $summary,
            path_fields: &[$($pf),*],
            query_fields: &[$($qf),*],
            body: BodyKind::$body,
            reply: ReplyKind::Json,
            request: <$req as prost::Name>::full_name(),
            response: <$resp as prost::Name>::full_name(),
            call: Box::new(|s: Service, who: Principal, input: Input| {
                Box::pin(async move {
                    let request = input.message::<$req>().await?;
                    let reply: $resp = s.$method(&who, request).await?;
                    Ok(Reply::Json(json::encode(&reply)?))
                })
            }),
        }
    };
}

/// Every route of the HTTP API.
pub fn routes() -> Vec<Route> {
    vec![
        unary!(POST "/v1/collections", COLLECTIONS, "CreateCollection",
            "Create a collection", create_collection,
            pb::CreateCollectionRequest => pb::Collection, path: [], query: [], Json),
        unary!(GET "/v1/collections", COLLECTIONS, "ListCollections",
            "List the collections the key may see", list_collections,
            pb::ListCollectionsRequest => pb::ListCollectionsResponse, path: [], query: [], None),
        unary!(GET "/v1/collections/{collection}", COLLECTIONS, "GetCollection",
            "Get a collection", get_collection,
            pb::GetCollectionRequest => pb::Collection, path: ["name"], query: [], None),
        unary!(DELETE "/v1/collections/{collection}", COLLECTIONS, "DeleteCollection",
            "Delete a collection and everything in it", delete_collection,
            pb::DeleteCollectionRequest => pb::DeleteCollectionResponse, path: ["name"], query: [], None),
        unary!(GET "/v1/whoami", ACCESS, "WhoAmI",
            "What the caller's key may do: its name, right and collections", who_am_i,
            pb::WhoAmIRequest => pb::WhoAmIResponse, path: [], query: [], None),
        unary!(PUT "/v1/aliases/{alias}", COLLECTIONS, "SetAlias",
            "Point an alias at a collection (create it, or switch it in one atomic step)", set_alias,
            pb::SetAliasRequest => pb::Alias, path: ["alias"], query: [], Json),
        unary!(DELETE "/v1/aliases/{alias}", COLLECTIONS, "DeleteAlias",
            "Remove an alias (never its collection)", delete_alias,
            pb::DeleteAliasRequest => pb::DeleteAliasResponse, path: ["alias"], query: ["expect_collection"], None),
        unary!(POST "/v1/collections/{collection}/documents", DOCUMENTS, "UpsertDocuments",
            "Upsert a batch of documents (all or nothing)", upsert_documents,
            pb::UpsertDocumentsRequest => pb::UpsertDocumentsResponse, path: ["collection"], query: [], Json),
        Route {
            verb: http::Method::POST,
            path: "/v1/collections/{collection}/documents:stream",
            service: DOCUMENTS,
            method: "StreamUpsertDocuments",
            summary:
                "Upsert documents as NDJSON, one StreamUpsertRequest per line, written in batches",
            path_fields: &["collection"],
            query_fields: &[],
            body: BodyKind::Ndjson,
            reply: ReplyKind::Json,
            request: <pb::StreamUpsertRequest as prost::Name>::full_name(),
            response: <pb::UpsertDocumentsResponse as prost::Name>::full_name(),
            call: Box::new(|s: Service, who: Principal, input: Input| {
                Box::pin(async move {
                    let messages = input.messages::<pb::StreamUpsertRequest>();
                    Ok(Reply::Json(json::encode(&s.upsert_stream(&who, messages).await?)?))
                })
            }),
        },
        unary!(GET "/v1/collections/{collection}/documents", DOCUMENTS, "ListDocuments",
            "List documents by id, a page at a time", list_documents,
            pb::ListDocumentsRequest => pb::ListDocumentsResponse, path: ["collection"],
            query: ["page_size", "page_token", "where_text", "include_metadata"], None),
        unary!(POST "/v1/collections/{collection}/documents:list", DOCUMENTS, "ListDocuments",
            "List documents (with a filter tree in the body)", list_documents,
            pb::ListDocumentsRequest => pb::ListDocumentsResponse, path: ["collection"], query: [], Json),
        unary!(POST "/v1/collections/{collection}/documents:get", DOCUMENTS, "GetDocuments",
            "Get documents by id", get_documents,
            pb::GetDocumentsRequest => pb::GetDocumentsResponse, path: ["collection"], query: [], Json),
        unary!(POST "/v1/collections/{collection}/documents:delete", DOCUMENTS, "DeleteDocuments",
            "Delete documents by id", delete_documents,
            pb::DeleteDocumentsRequest => pb::DeleteDocumentsResponse, path: ["collection"], query: [], Json),
        unary!(POST "/v1/collections/{collection}/documents:deleteByFilter", DOCUMENTS, "DeleteByFilter",
            "Delete the documents a filter matches", delete_by_filter,
            pb::DeleteByFilterRequest => pb::DeleteByFilterResponse, path: ["collection"], query: [], Json),
        unary!(POST "/v1/collections/{collection}/search", SEARCH, "Search",
            "Search a collection (lexical, dense or hybrid), a page at a time", search,
            pb::SearchRequest => pb::SearchResponse, path: ["collection"], query: [], Json),
        unary!(POST "/v1/collections/{collection}/answer", ANSWERS, "Answer",
            "A grounded answer from the inference router, every citation checked", answer,
            pb::AnswerRequest => pb::AnswerResponse, path: ["collection"], query: [], Json),
        streaming(Streaming {
            verb: http::Method::POST,
            path: "/v1/collections/{collection}/answer:stream",
            service: ANSWERS,
            method: "AnswerStream",
            summary: "The answer as server-sent events: stages, tokens, discards, then the result",
            path_fields: &["collection"],
            query_fields: &[],
            body: BodyKind::Json,
            request: <pb::AnswerRequest as prost::Name>::full_name(),
            response: <pb::AnswerEvent as prost::Name>::full_name(),
        }, |s, who, input| Box::pin(async move {
            let deadline = input.deadline;
            let r = input.message::<pb::AnswerRequest>().await?;
            Ok(events(s.answer_stream(&who, r, deadline).await?))
        })),
        streaming(Streaming {
            verb: http::Method::POST,
            path: "/v1/collections/{collection}/eval",
            service: EVAL,
            method: "Evaluate",
            summary: "Evaluate the collection against judgments: progress, then the results, as server-sent events",
            path_fields: &["collection"],
            query_fields: &[],
            body: BodyKind::Json,
            request: <pb::EvalRequest as prost::Name>::full_name(),
            response: <pb::EvalProgress as prost::Name>::full_name(),
        }, |s, who, input| Box::pin(async move {
            let deadline = input.deadline;
            let r = input.message::<pb::EvalRequest>().await?;
            Ok(events(s.evaluate(&who, r, deadline).await?))
        })),
        unary!(PUT "/v1/collections/{collection}/eval-sets/{split}", EVAL, "PutEvalSplit",
            "Attach a split of queries with judgments to a collection or alias (replacing it)", put_eval_split,
            pb::PutEvalSplitRequest => pb::EvalSplit, path: ["collection", "split"], query: [], Json),
        unary!(GET "/v1/collections/{collection}/eval-sets", EVAL, "ListEvalSplits",
            "The eval splits attached to a collection or alias", list_eval_splits,
            pb::ListEvalSplitsRequest => pb::ListEvalSplitsResponse, path: ["collection"], query: [], None),
        unary!(DELETE "/v1/collections/{collection}/eval-sets/{split}", EVAL, "DeleteEvalSplit",
            "Remove an eval split", delete_eval_split,
            pb::DeleteEvalSplitRequest => pb::DeleteEvalSplitResponse, path: ["collection", "split"], query: [], None),
        unary!(POST "/v1/aliases/{alias}/promote", EVAL, "Promote",
            "Switch an alias to a candidate collection only if the eval gate holds; the decision is recorded", promote,
            pb::PromoteRequest => pb::PromoteResponse, path: ["alias"], query: [], Json),
        unary!(POST "/v1/aliases/{alias}/rollback", EVAL, "Rollback",
            "Switch an alias back to the collection its last promotion replaced", rollback,
            pb::RollbackRequest => pb::PromoteResponse, path: ["alias"], query: [], Json),
        unary!(POST "/v1/collections/{collection}/settings:propose", EVAL, "ProposeSettings",
            "Propose search settings for a collection (adopted only through the gate)", propose_settings,
            pb::ProposeSettingsRequest => pb::Collection, path: ["collection"], query: [], Json),
        unary!(POST "/v1/collections/{collection}/settings:adopt", EVAL, "AdoptSettings",
            "Adopt the proposed search settings only if the eval gate holds; the decision is recorded", adopt_settings,
            pb::AdoptSettingsRequest => pb::PromoteResponse, path: ["collection"], query: [], Json),
        unary!(POST "/v1/collections/{collection}/tune", EVAL, "Tune",
            "Search a grid of settings on one split; propose the best only if it holds on another", tune,
            pb::TuneRequest => pb::TuneResponse, path: ["collection"], query: [], Json),
        unary!(POST "/v1/collections/{collection}/jobs", JOBS, "SubmitIngest",
            "Submit a server-side ingestion job", submit_ingest,
            pb::SubmitIngestRequest => pb::Job, path: ["collection"], query: [], Json),
        unary!(GET "/v1/jobs", JOBS, "ListJobs",
            "List jobs, newest first", list_jobs,
            pb::ListJobsRequest => pb::ListJobsResponse, path: [],
            query: ["collection", "state", "page_size", "page_token"], None),
        unary!(GET "/v1/jobs/{job}", JOBS, "GetJob",
            "Get a job", get_job,
            pb::GetJobRequest => pb::Job, path: ["id"], query: [], None),
        unary!(POST "/v1/jobs/{job}/cancel", JOBS, "CancelJob",
            "Cancel a job", cancel_job,
            pb::CancelJobRequest => pb::Job, path: ["id"], query: [], None),
        streaming(Streaming {
            verb: http::Method::GET,
            path: "/v1/jobs/{job}/watch",
            service: JOBS,
            method: "WatchJob",
            summary: "The job now and after each change, as server-sent events, until it finishes",
            path_fields: &["id"],
            query_fields: &[],
            body: BodyKind::None,
            request: <pb::WatchJobRequest as prost::Name>::full_name(),
            response: <pb::Job as prost::Name>::full_name(),
        }, |s, who, input| Box::pin(async move {
            let r = input.message::<pb::WatchJobRequest>().await?;
            Ok(events(s.watch_job(&who, r).await?))
        })),
        snapshot_create(),
        snapshot_restore(),
    ]
}

/// A streaming route's table entry, before its call.
struct Streaming {
    verb: http::Method,
    path: &'static str,
    service: &'static str,
    method: &'static str,
    summary: &'static str,
    path_fields: &'static [&'static str],
    query_fields: &'static [&'static str],
    body: BodyKind,
    request: String,
    response: String,
}

fn streaming(
    s: Streaming,
    call: fn(Service, Principal, Input) -> BoxFuture<'static, Result<Reply>>,
) -> Route {
    Route {
        verb: s.verb,
        path: s.path,
        service: s.service,
        method: s.method,
        summary: s.summary,
        path_fields: s.path_fields,
        query_fields: s.query_fields,
        body: s.body,
        reply: ReplyKind::Sse,
        request: s.request,
        response: s.response,
        call: Box::new(call),
    }
}

/// A service's events as JSON events.
fn events<T: prost::Message + prost::Name + Send + 'static>(e: Events<T>) -> Reply {
    Reply::Events(e.map(|item| item.and_then(|m| json::encode(&m))).boxed())
}

/// `POST /v1/snapshots`: the archive itself as the body (`application/x-tar`).
fn snapshot_create() -> Route {
    let mut route = streaming(
        Streaming {
            verb: http::Method::POST,
            path: "/v1/snapshots",
            service: ADMIN,
            method: "CreateSnapshot",
            summary: "A consistent snapshot of the named collections (none: all), as a tar archive",
            path_fields: &[],
            query_fields: &[],
            body: BodyKind::Json,
            request: <pb::CreateSnapshotRequest as prost::Name>::full_name(),
            response: <pb::SnapshotChunk as prost::Name>::full_name(),
        },
        |s, who, input| {
            Box::pin(async move {
                let r = input.message::<pb::CreateSnapshotRequest>().await?;
                let chunks = s.create_snapshot(&who, r).await?;
                let bytes = chunks.map(|c| c.map(|c| c.data)).boxed();
                Ok(Reply::Bytes("application/x-tar", bytes))
            })
        },
    );
    route.reply = ReplyKind::Tar;
    route
}

/// `POST /v1/snapshots:restore`: the archive as the body, what to restore in the query.
fn snapshot_restore() -> Route {
    let mut route = streaming(
        Streaming {
            verb: http::Method::POST,
            path: "/v1/snapshots:restore",
            service: ADMIN,
            method: "RestoreSnapshot",
            summary: "Restore a snapshot uploaded as a tar archive (collection and new_name in the query)",
            path_fields: &[],
            query_fields: &["collection", "new_name"],
            body: BodyKind::Tar,
            request: <pb::RestoreSnapshotRequest as prost::Name>::full_name(),
            response: <pb::RestoreSnapshotResponse as prost::Name>::full_name(),
        },
        |s, who, input| {
            Box::pin(async move {
                let p: Vec<(&str, &str)> =
                    input.params.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let first: pb::RestoreSnapshotRequest = json::decode(b"", &p)?;
                let mut first = Some(first);
                let messages = input.chunks().map(move |c| {
                    let mut m = first.take().unwrap_or_default();
                    m.data = c?.to_vec();
                    Ok(m)
                });
                Ok(Reply::Json(json::encode(&s.restore_snapshot(&who, messages).await?)?))
            })
        },
    );
    route.reply = ReplyKind::Json;
    route
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both doors serve the same operations: every Quarry operation of the table has an HTTP
    /// route, and every route is an operation of the table.
    #[test]
    fn every_operation_has_a_route_and_every_route_an_operation() {
        let table = routes();
        for route in &table {
            assert!(
                crate::service::row(route.service, route.method).is_ok(),
                "{} {} is not an operation",
                route.verb,
                route.path
            );
        }
        for op in crate::service::OPERATIONS
            .iter()
            .filter(|o| o.service.starts_with("quarry.v1."))
        {
            assert!(
                table
                    .iter()
                    .any(|r| r.service == op.service && r.method == op.method),
                "{}/{} has no HTTP route",
                op.service,
                op.method
            );
        }
    }
}
