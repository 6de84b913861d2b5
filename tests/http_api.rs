//! The HTTP/JSON door against the real binary (real model, real indexes): one scenario table
//! run through gRPC and through HTTP must give identical results (hits, ids, scores,
//! explanations, page tokens, error codes); the OpenAPI document and the router must list the
//! same routes; keys and the error model hold on HTTP as on gRPC.

mod common;

use quarry::api::json;
use quarry::grpc::pb;
use serde_json::{json, Value};
use tonic::transport::Channel;

const COLLECTION: &str = "conf";

/// The outcome of one call, comparable across the doors: the reply as JSON (with the fields
/// that measure time blanked) or the error's code name.
#[derive(Debug, PartialEq)]
enum Outcome {
    Reply(Value),
    Error(String),
}

fn blank_times(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        if o.contains_key("took_micros") {
            o.insert("took_micros".into(), json!(0));
        }
    }
    v
}

fn grpc_outcome<T: prost::Message + prost::Name>(
    r: Result<tonic::Response<T>, tonic::Status>,
) -> Outcome {
    match r {
        Ok(reply) => {
            let bytes = json::encode(reply.get_ref()).expect("encodes");
            Outcome::Reply(blank_times(serde_json::from_slice(&bytes).expect("json")))
        }
        Err(s) => Outcome::Error(quarry::grpc::observe::code_name(s.code()).to_string()),
    }
}

async fn http_outcome(response: reqwest::Response) -> Outcome {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON body");
    if status == 200 {
        Outcome::Reply(blank_times(body))
    } else {
        let code = body["code"].as_str().expect("an error code").to_string();
        let expected = error_status(&code);
        assert_eq!(status, expected, "{code} is HTTP {expected}: {body}");
        Outcome::Error(code)
    }
}

/// The HTTP status each code must have.
fn error_status(code: &str) -> u16 {
    match code {
        "INVALID_ARGUMENT" => 400,
        "UNAUTHENTICATED" => 401,
        "PERMISSION_DENIED" => 403,
        "NOT_FOUND" => 404,
        "ALREADY_EXISTS" => 409,
        "FAILED_PRECONDITION" => 412,
        "RESOURCE_EXHAUSTED" => 429,
        "DEADLINE_EXCEEDED" => 504,
        "UNAVAILABLE" => 503,
        other => panic!("unexpected error code {other}"),
    }
}

/// One search through both doors.
async fn both_search(
    channel: &Channel,
    http: &reqwest::Client,
    base: &str,
    body: Value,
) -> (Outcome, Outcome) {
    let mut request: pb::SearchRequest =
        json::decode(body.to_string().as_bytes(), &[]).expect("the scenario is a SearchRequest");
    let collection = std::mem::take(&mut request.collection);
    request.collection = collection.clone();
    let g = grpc_outcome(
        pb::search_client::SearchClient::new(channel.clone())
            .search(request)
            .await,
    );
    let mut body = body;
    if let Some(o) = body.as_object_mut() {
        o.remove("collection");
    }
    let h = http_outcome(
        http.post(format!("{base}/v1/collections/{collection}/search"))
            .json(&body)
            .send()
            .await
            .expect("HTTP search"),
    )
    .await;
    (g, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_scenario_table_gives_identical_results_through_grpc_and_http() {
    let data = tempfile::tempdir().unwrap();
    let (server, url, base) = common::start_binary_doors(data.path(), &[]);
    let _server = common::cli::Server(server);
    quarry::tls::install_crypto_provider();
    let http = reqwest::Client::new();
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();

    // Written through HTTP: the collection, then the corpus as NDJSON (a streaming upsert).
    let created = http
        .post(format!("{base}/v1/collections"))
        .json(&json!({"name": COLLECTION}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let mut ndjson = String::new();
    for doc in common::fixture_docs() {
        let line = json::encode(&pb::StreamUpsertRequest {
            collection: String::new(),
            document: Some(doc),
        })
        .unwrap();
        ndjson.push_str(&String::from_utf8(line).unwrap());
        ndjson.push('\n');
    }
    let streamed: Value = http
        .post(format!(
            "{base}/v1/collections/{COLLECTION}/documents:stream"
        ))
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let results = streamed["results"].as_array().expect("results");
    assert_eq!(results.len(), common::fixture_docs().len());
    assert!(
        results
            .iter()
            .all(|r| r["status"] == "UPSERT_STATUS_CREATED"),
        "{streamed}"
    );

    // Searches: every mode, default and explicit top_k, explanations, filters, paging.
    let searches = [
        json!({"collection": COLLECTION, "query": "volcanic rock"}),
        json!({"collection": COLLECTION, "query": "volcanic rock", "top_k": 3, "explain": true}),
        json!({"collection": COLLECTION, "query": "volcanic rock", "mode": "SEARCH_MODE_LEXICAL", "top_k": 2, "explain": true}),
        json!({"collection": COLLECTION, "query": "volcanic rock", "mode": "SEARCH_MODE_DENSE", "top_k": 2, "explain": true}),
        json!({"collection": COLLECTION, "query": "glaciers", "top_k": 1, "group_by_document": true}),
        json!({"collection": COLLECTION, "query": "rock", "where_text": "title != \"\"", "top_k": 2}),
        json!({"collection": COLLECTION, "query": "rock", "page_token": "garbage"}),
        json!({"collection": COLLECTION, "query": "rock", "top_k": 100000}),
        json!({"collection": COLLECTION, "query": "rock", "where_text": "(((("}),
        json!({"collection": "no-such-collection", "query": "rock"}),
    ];
    for body in searches {
        let (g, h) = both_search(&channel, &http, &base, body.clone()).await;
        assert_eq!(g, h, "search {body}");
    }
    // Paging: the second page through each door from the token each door gave.
    let first = json!({"collection": COLLECTION, "query": "rock", "top_k": 2});
    let (g, h) = both_search(&channel, &http, &base, first.clone()).await;
    let Outcome::Reply(page) = &g else {
        panic!("{g:?}")
    };
    assert_eq!(g, h);
    let token = page["next_page_token"]
        .as_str()
        .expect("a token")
        .to_string();
    assert!(!token.is_empty(), "{page}");
    let mut second = first.clone();
    second["page_token"] = json!(token);
    let (g2, h2) = both_search(&channel, &http, &base, second).await;
    assert_eq!(g2, h2);
    assert_ne!(g2, g, "the second page differs from the first");

    // Reads of collections and documents.
    let ids: Vec<String> = common::fixture_docs()
        .iter()
        .take(2)
        .map(|d| d.id.clone())
        .collect();
    let collections = pb::collections_client::CollectionsClient::new(channel.clone());
    let documents = pb::documents_client::DocumentsClient::new(channel.clone());
    let cases: Vec<(Outcome, reqwest::RequestBuilder)> = vec![
        (
            grpc_outcome(
                collections
                    .clone()
                    .get_collection(pb::GetCollectionRequest {
                        name: COLLECTION.into(),
                    })
                    .await,
            ),
            http.get(format!("{base}/v1/collections/{COLLECTION}")),
        ),
        (
            grpc_outcome(
                collections
                    .clone()
                    .list_collections(pb::ListCollectionsRequest {})
                    .await,
            ),
            http.get(format!("{base}/v1/collections")),
        ),
        (
            grpc_outcome(
                collections
                    .clone()
                    .get_collection(pb::GetCollectionRequest {
                        name: "nope".into(),
                    })
                    .await,
            ),
            http.get(format!("{base}/v1/collections/nope")),
        ),
        (
            grpc_outcome(
                documents
                    .clone()
                    .get_documents(pb::GetDocumentsRequest {
                        collection: COLLECTION.into(),
                        ids: vec![ids[0].clone(), "missing-id".into()],
                        include_chunks: true,
                    })
                    .await,
            ),
            http.post(format!("{base}/v1/collections/{COLLECTION}/documents:get"))
                .json(&json!({"ids": [ids[0], "missing-id"], "include_chunks": true})),
        ),
        (
            grpc_outcome(
                documents
                    .clone()
                    .list_documents(pb::ListDocumentsRequest {
                        collection: COLLECTION.into(),
                        page_size: 2,
                        include_metadata: true,
                        ..Default::default()
                    })
                    .await,
            ),
            http.get(format!(
                "{base}/v1/collections/{COLLECTION}/documents?page_size=2&include_metadata=true"
            )),
        ),
        (
            grpc_outcome(
                documents
                    .clone()
                    .upsert_documents(pb::UpsertDocumentsRequest {
                        collection: COLLECTION.into(),
                        documents: common::fixture_docs().into_iter().take(1).collect(),
                    })
                    .await,
            ),
            http.post(format!("{base}/v1/collections/{COLLECTION}/documents"))
                .body(
                    String::from_utf8(
                        json::encode(&pb::UpsertDocumentsRequest {
                            collection: String::new(),
                            documents: common::fixture_docs().into_iter().take(1).collect(),
                        })
                        .unwrap(),
                    )
                    .unwrap(),
                ),
        ),
        (
            grpc_outcome(
                documents
                    .clone()
                    .delete_by_filter(pb::DeleteByFilterRequest {
                        collection: COLLECTION.into(),
                        where_text: "title = \"none such\"".into(),
                        dry_run: true,
                        ..Default::default()
                    })
                    .await,
            ),
            http.post(format!(
                "{base}/v1/collections/{COLLECTION}/documents:deleteByFilter"
            ))
            .json(&json!({"where_text": "title = \"none such\"", "dry_run": true})),
        ),
    ];
    for (i, (g, request)) in cases.into_iter().enumerate() {
        let h = http_outcome(request.send().await.unwrap()).await;
        assert_eq!(g, h, "case {i}");
    }
    // The same unchanged document written through both doors was skipped by both.
    let listed = http
        .get(format!(
            "{base}/v1/collections/{COLLECTION}/documents/{}",
            ids[1]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.status(),
        404,
        "no such route: documents are read with :get"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_and_the_router_agree_and_errors_are_json() {
    let data = tempfile::tempdir().unwrap();
    let (server, _url, base) = common::start_binary_doors(
        data.path(),
        &[
            "--api-key",
            "admin-key-0123456789",
            "--read-only-api-key",
            "reader-key-0123456789",
        ],
    );
    let _server = common::cli::Server(server);
    quarry::tls::install_crypto_provider();
    let http = reqwest::Client::new();
    let doc: Value = http
        .get(format!("{base}/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    // Every route of the table is documented, with its verb.
    let table = quarry::http::routes::routes();
    for route in &table {
        let verb = route.verb.as_str().to_lowercase();
        assert!(
            paths.get(route.path).and_then(|p| p.get(&verb)).is_some(),
            "{} {} is not in the document",
            route.verb,
            route.path
        );
    }
    // Every documented route exists on the server: without a key it is refused by
    // authentication (401), never "no such route" (404) or "wrong method" (405).
    let mut documented = 0;
    for (path, item) in paths {
        for verb in item.as_object().unwrap().keys() {
            documented += 1;
            let url = format!("{base}{}", path.replace("{collection}", "c"));
            let method = reqwest::Method::from_bytes(verb.to_uppercase().as_bytes()).unwrap();
            let status = http
                .request(method, &url)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            let expected = if path.ends_with("openapi.json") {
                200
            } else {
                401
            };
            assert_eq!(status, expected, "{verb} {path}");
        }
    }
    assert_eq!(
        documented,
        table.len() + 1,
        "the table's routes and the document itself"
    );
    // Unknown routes and verbs: JSON errors.
    let r = http.get(format!("{base}/v2/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "NOT_FOUND");
    let r = http
        .put(format!("{base}/v1/collections"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // Keys: Bearer and x-api-key; a read-only key cannot write (403); bad input is 400.
    let admin = "admin-key-0123456789";
    let reader = "reader-key-0123456789";
    let r = http
        .post(format!("{base}/v1/collections"))
        .bearer_auth(admin)
        .json(&json!({"name": "keyed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = http
        .get(format!("{base}/v1/collections/keyed"))
        .header("x-api-key", reader)
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-42");
    let r = http
        .post(format!("{base}/v1/collections/keyed/documents"))
        .bearer_auth(reader)
        .json(&json!({"documents": [{"id": "a", "text": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "PERMISSION_DENIED"
    );
    for (body, why) in [
        ("{", "malformed JSON"),
        (r#"{"query": "x", "top_kk": 1}"#, "an unknown field"),
        (r#"{"query": "x", "top_k": -1}"#, "a negative unsigned"),
        (
            r#"{"query": "x", "collection": "other"}"#,
            "a body naming another collection",
        ),
    ] {
        let r = http
            .post(format!("{base}/v1/collections/keyed/search"))
            .bearer_auth(reader)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{why}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["code"], "INVALID_ARGUMENT", "{why}: {e}");
    }
    let huge = format!(r#"{{"query": "{}"}}"#, "x".repeat(80 << 20));
    let r = http
        .post(format!("{base}/v1/collections/keyed/search"))
        .bearer_auth(reader)
        .body(huge)
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 400, "a body over max_message_bytes");
    }
}

/// Overload, deadlines and slow clients over HTTP: refusals are 429 with Retry-After and the
/// JSON error body, a passed deadline is 504, and a client that never finishes its request
/// headers is disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_deadlines_and_slow_clients_over_http() {
    quarry::tls::install_crypto_provider();
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("quarry.toml");
    std::fs::write(
        &config,
        "[admission]\nread = { in_flight = 1, queue = 0 }\n[limits]\nstream_idle_secs = 2\n",
    )
    .unwrap();
    let (server, _url, base) = common::start_binary_doors(
        &data.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let _server = common::cli::Server(server);
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| http.post(format!("{base}{path}")).json(&body).send();
    assert_eq!(
        post("/v1/collections", json!({"name": "o"}))
            .await
            .unwrap()
            .status(),
        200
    );
    let docs: Vec<Value> = (0..20)
        .map(|i| json!({"id": format!("d{i}"), "text": format!("basalt and granite number {i}")}))
        .collect();
    let r = post("/v1/collections/o/documents", json!({"documents": docs}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Sixteen searches at once against one slot and no queue: some are refused at once.
    let searches = (0..16).map(|i| {
        let http = http.clone();
        let url = format!("{base}/v1/collections/o/search");
        async move {
            let body =
                json!({"query": format!("basalt {i}"), "top_k": 5, "mode": "SEARCH_MODE_HYBRID"});
            http.post(url).json(&body).send().await.unwrap()
        }
    });
    let replies = futures::future::join_all(searches).await;
    let mut refused = 0;
    for r in replies {
        match r.status().as_u16() {
            200 => {}
            429 => {
                refused += 1;
                assert_eq!(r.headers()["retry-after"], "1");
                let e: Value = r.json().await.unwrap();
                assert_eq!(e["code"], "RESOURCE_EXHAUSTED", "{e}");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        refused > 0,
        "sixteen searches against one slot and no queue were all admitted"
    );

    // A deadline that has passed: 504; a malformed one: 400.
    let r = http
        .post(format!("{base}/v1/collections/o/search"))
        .header("x-timeout-ms", "0")
        .json(&json!({"query": "granite"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "DEADLINE_EXCEEDED"
    );
    let r = http
        .post(format!("{base}/v1/collections/o/search"))
        .header("x-timeout-ms", "soon")
        .json(&json!({"query": "granite"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A client that starts its headers and never finishes them is disconnected (the header
    // read timeout is 10 s; the bound here only keeps a broken server from hanging the test).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /v1/collections HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tcp.read_to_end(&mut buf),
    )
    .await;
    assert!(
        read.is_ok(),
        "a half-sent request held its connection for a minute"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");

    // A body that stops midway does not hold its admission slot: after
    // limits.stream_idle_secs (2 s here) the call ends with 504.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"POST /v1/collections/o/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"query\"",
    )
    .await
    .unwrap();
    let mut reply = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(60), tcp.read(&mut reply))
        .await
        .expect("a stalled body held its call for a minute")
        .unwrap();
    let text = String::from_utf8_lossy(&reply[..n]);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(text.contains("DEADLINE_EXCEEDED"), "{text}");
}
