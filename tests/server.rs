//! End-to-end tests: a real server on a loopback port, a real tonic client, the real embedding
//! model, real tantivy, HNSW and sled.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{doc, fixture_docs, test_config, TestServer};
use quarry::grpc::pb;
use tonic::Code;

use pb::collections_client::CollectionsClient;
use pb::documents_client::DocumentsClient;

async fn create(server: &TestServer, name: &str) -> pb::Collection {
    CollectionsClient::new(server.channel().await)
        .create_collection(pb::CreateCollectionRequest {
            name: name.into(),
            config: None,
        })
        .await
        .expect("create collection")
        .into_inner()
}

async fn stream_upsert(
    server: &TestServer,
    collection: &str,
    docs: Vec<pb::Document>,
) -> Vec<pb::DocumentResult> {
    let name = collection.to_string();
    let requests = futures::stream::iter(docs.into_iter().map(move |d| pb::StreamUpsertRequest {
        collection: name.clone(),
        document: Some(d),
    }));
    DocumentsClient::new(server.channel().await)
        .stream_upsert_documents(requests)
        .await
        .expect("stream upsert")
        .into_inner()
        .results
}

fn request(collection: &str, query: &str, mode: pb::SearchMode) -> pb::SearchRequest {
    pb::SearchRequest {
        collection: collection.into(),
        query: query.into(),
        top_k: 5,
        mode: mode as i32,
        explain: true,
        ..Default::default()
    }
}

async fn search(
    server: &TestServer,
    r: pb::SearchRequest,
) -> Result<pb::SearchResponse, tonic::Status> {
    server.search(r).await
}

/// (query, mode, expected top document)
const EXPECTED: &[(&str, pb::SearchMode, &str)] = &[
    (
        "Gutenberg printing press movable type",
        pb::SearchMode::Lexical,
        "hist-printing-press",
    ),
    ("wild yeast starter", pb::SearchMode::Lexical, "cook-bread"),
    (
        "leader election log replication",
        pb::SearchMode::Lexical,
        "cs-raft",
    ),
    (
        "how do plants turn sunlight into chemical energy",
        pb::SearchMode::Dense,
        "bio-photosynthesis",
    ),
    (
        "first humans to walk on the moon",
        pb::SearchMode::Dense,
        "hist-moon-landing",
    ),
    (
        "why does seared meat turn brown",
        pb::SearchMode::Dense,
        "cook-maillard",
    ),
    (
        "organelle that makes ATP",
        pb::SearchMode::Hybrid,
        "bio-mitochondria",
    ),
    (
        "what causes spring tides",
        pb::SearchMode::Hybrid,
        "earth-tides",
    ),
    (
        "single owner and a borrow checker",
        pb::SearchMode::Hybrid,
        "cs-rust-ownership",
    ),
];

async fn run_expected(server: &TestServer, collection: &str) -> Vec<Vec<(String, u64, f32)>> {
    let mut all = Vec::new();
    for (query, mode, top) in EXPECTED {
        let r = search(server, request(collection, query, *mode))
            .await
            .unwrap();
        assert!(!r.degraded);
        assert_eq!(r.mode, *mode as i32);
        assert!(!r.hits.is_empty(), "{query}: no hits");
        assert_eq!(
            &r.hits[0].document_id, top,
            "{query} ({mode:?}): {:?}",
            r.hits
        );
        for h in &r.hits {
            let e = h.explanation.as_ref().expect("explain was asked for");
            match mode {
                pb::SearchMode::Lexical => assert!(e.lexical.is_some() && e.dense.is_none()),
                pb::SearchMode::Dense => assert!(e.dense.is_some() && e.lexical.is_none()),
                _ => assert!(e.lexical.is_some() || e.dense.is_some()),
            }
        }
        // Scores are non-increasing.
        assert!(r.hits.windows(2).all(|w| w[0].score >= w[1].score));
        all.push(
            r.hits
                .iter()
                .map(|h| (h.document_id.clone(), h.chunk_id, h.score))
                .collect(),
        );
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_search_end_to_end_survives_restart() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(data.path())).await;
    let info = create(&server, "mini").await;
    assert_eq!(info.dimension, 384);
    assert_eq!(info.config.as_ref().unwrap().chunk_tokens, 254);

    let docs = fixture_docs();
    let n = docs.len();
    let results = stream_upsert(&server, "mini", docs.clone()).await;
    assert_eq!(results.len(), n);
    assert!(results
        .iter()
        .all(|r| r.status == pb::UpsertStatus::Created as i32 && r.chunk_count >= 1));

    let before = run_expected(&server, "mini").await;
    let embedded = server
        .engine()
        .collection("mini")
        .unwrap()
        .embedder()
        .documents_embedded();
    assert!(embedded >= n as u64);

    // Re-sending the same documents is a no-op.
    let again = stream_upsert(&server, "mini", docs).await;
    assert!(again
        .iter()
        .all(|r| r.status == pb::UpsertStatus::Unchanged as i32));
    let c = server.engine().collection("mini").unwrap();
    assert_eq!(
        c.embedder().documents_embedded(),
        embedded,
        "unchanged documents are not re-embedded"
    );
    drop(c);

    // Markdown is chunked with offsets that map back into the text.
    let got = DocumentsClient::new(server.channel().await)
        .get_documents(pb::GetDocumentsRequest {
            collection: "mini".into(),
            ids: vec!["md-guide".into(), "nope".into()],
            include_chunks: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.missing, vec!["nope".to_string()]);
    let stored = &got.documents[0];
    let text = &stored.document.as_ref().unwrap().text;
    for c in &stored.chunks {
        assert_eq!(&text[c.start_byte as usize..c.end_byte as usize], c.text);
    }
    server.stop().await;

    // Restart on the same data directory: identical results, nothing re-embedded.
    let server = TestServer::start(test_config(data.path())).await;
    let after = run_expected(&server, "mini").await;
    assert_eq!(before, after);
    let c = server.engine().collection("mini").unwrap();
    assert_eq!(
        c.embedder().documents_embedded(),
        0,
        "restart re-embedded documents"
    );
    drop(c);
    let listed = CollectionsClient::new(server.channel().await)
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.collections.len(), 1);
    assert_eq!(listed.collections[0].document_count, n as u64);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_replace_delete_filter_group_and_fusion() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(data.path())).await;
    create(&server, "docs").await;
    let mut docs = DocumentsClient::new(server.channel().await);

    let mut a = doc(
        "a",
        "Penguins are flightless birds living in the southern hemisphere.",
    );
    a.metadata.insert("kind".into(), "animal".into());
    let mut b = doc(
        "b",
        "Volcanoes erupt molten rock called lava from magma chambers.",
    );
    b.metadata.insert("kind".into(), "geology".into());
    let r = docs
        .upsert_documents(pb::UpsertDocumentsRequest {
            collection: "docs".into(),
            documents: vec![a.clone(), b],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 2);

    // Filters: all-of exact matches, in every mode.
    for mode in [
        pb::SearchMode::Lexical,
        pb::SearchMode::Dense,
        pb::SearchMode::Hybrid,
    ] {
        let mut req = request("docs", "penguins birds lava", mode);
        req.filter = HashMap::from([("kind".to_string(), "geology".to_string())]);
        let hits = search(&server, req).await.unwrap().hits;
        assert!(!hits.is_empty(), "{mode:?}");
        assert!(
            hits.iter().all(|h| h.document_id == "b"),
            "{mode:?}: {hits:?}"
        );
    }

    // Replacing a document replaces its chunks.
    a.text = "Kangaroos are marsupials that hop across Australia.".into();
    let r = docs
        .upsert_documents(pb::UpsertDocumentsRequest {
            collection: "docs".into(),
            documents: vec![a],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results[0].status, pb::UpsertStatus::Updated as i32);
    let hits = search(
        &server,
        request("docs", "penguins", pb::SearchMode::Lexical),
    )
    .await
    .unwrap()
    .hits;
    assert!(hits.is_empty(), "old chunks still indexed: {hits:?}");
    let hits = search(
        &server,
        request("docs", "kangaroo", pb::SearchMode::Lexical),
    )
    .await
    .unwrap()
    .hits;
    assert_eq!(hits[0].document_id, "a");

    // Weighted fusion and grouping.
    let mut req = request("docs", "marsupials hopping", pb::SearchMode::Hybrid);
    req.fusion = Some(pb::Fusion {
        method: Some(pb::fusion::Method::Weighted(pb::WeightedFusion {
            lexical_weight: Some(0.5),
            dense_weight: Some(0.5),
        })),
    });
    req.group_by_document = true;
    let hits = search(&server, req).await.unwrap().hits;
    assert_eq!(hits[0].document_id, "a");
    assert!(hits[0].score <= 1.0 + 1e-6);

    // Deletes take effect immediately, in both retrievers.
    let d = docs
        .delete_documents(pb::DeleteDocumentsRequest {
            collection: "docs".into(),
            ids: vec!["a".into(), "ghost".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.deleted, d.missing), (1, vec!["ghost".to_string()]));
    for mode in [pb::SearchMode::Lexical, pb::SearchMode::Dense] {
        let hits = search(&server, request("docs", "kangaroo marsupial", mode))
            .await
            .unwrap()
            .hits;
        assert!(
            hits.iter().all(|h| h.document_id != "a"),
            "{mode:?}: {hits:?}"
        );
    }

    // Deleting the collection.
    CollectionsClient::new(server.channel().await)
        .delete_collection(pb::DeleteCollectionRequest {
            name: "docs".into(),
        })
        .await
        .unwrap();
    let err = search(&server, request("docs", "lava", pb::SearchMode::Hybrid))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(data.path())).await;
    create(&server, "c").await;
    let mut collections = CollectionsClient::new(server.channel().await);
    let mut docs = DocumentsClient::new(server.channel().await);

    let err = collections
        .create_collection(pb::CreateCollectionRequest {
            name: "c".into(),
            config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = collections
        .create_collection(pb::CreateCollectionRequest {
            name: "bad name!".into(),
            config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = collections
        .create_collection(pb::CreateCollectionRequest {
            name: "x".into(),
            config: Some(pb::CollectionConfig {
                chunk_tokens: 16,
                chunk_overlap: Some(16),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("chunk_overlap"), "{}", err.message());
    let err = collections
        .create_collection(pb::CreateCollectionRequest {
            name: "y".into(),
            config: Some(pb::CollectionConfig {
                embedding_model: "no-such-model".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = collections
        .get_collection(pb::GetCollectionRequest {
            name: "missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let upsert = |collection: &str, documents: Vec<pb::Document>| pb::UpsertDocumentsRequest {
        collection: collection.into(),
        documents,
    };
    let err = docs
        .upsert_documents(upsert("missing", vec![doc("a", "x")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = docs
        .upsert_documents(upsert("c", vec![doc("a", "   ")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("empty text"), "{}", err.message());
    let err = docs
        .upsert_documents(upsert("c", vec![doc("", "x")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let big = "word ".repeat(20_000);
    let err = docs
        .upsert_documents(upsert("c", vec![doc("big", &big)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max_document_bytes = 65536"),
        "{}",
        err.message()
    );
    let many: Vec<pb::Document> = (0..41).map(|i| doc(&format!("d{i}"), "text")).collect();
    let err = docs.upsert_documents(upsert("c", many)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max_batch_documents = 40"),
        "{}",
        err.message()
    );
    let err = docs
        .upsert_documents(upsert("c", vec![doc("dup", "one"), doc("dup", "two")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A rejected batch stored nothing.
    let got = docs
        .get_documents(pb::GetDocumentsRequest {
            collection: "c".into(),
            ids: vec!["dup".into(), "d0".into()],
            include_chunks: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.missing.len(), 2);

    // Streams reject bad documents individually and keep going.
    let results = stream_upsert(
        &server,
        "c",
        vec![
            doc("ok1", "fine text"),
            doc("bad", ""),
            doc("ok2", "more text"),
        ],
    )
    .await;
    let statuses: Vec<i32> = results.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![
            pb::UpsertStatus::Created as i32,
            pb::UpsertStatus::Rejected as i32,
            pb::UpsertStatus::Created as i32
        ]
    );
    assert!(results[1].error.contains("empty text"));

    // Search input.
    let err = search(&server, request("missing", "q", pb::SearchMode::Hybrid))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = search(&server, request("c", "  ", pb::SearchMode::Hybrid))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut req = request("c", "q", pb::SearchMode::Hybrid);
    req.filter = HashMap::from([(String::new(), "v".to_string())]);
    let err = search(&server, req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("filter"), "{}", err.message());
    let mut req = request("c", "q", pb::SearchMode::Dense);
    req.query_vector = vec![0.1; 10];
    let err = search(&server, req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("dimension"), "{}", err.message());
    let mut req = request("c", "q", pb::SearchMode::Hybrid);
    req.top_k = 100_000;
    let err = search(&server, req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("max_top_k"), "{}", err.message());
    let mut req = request("c", "q", pb::SearchMode::Hybrid);
    req.mode = 42;
    let err = search(&server, req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut req = request("c", "q", pb::SearchMode::Hybrid);
    req.fusion = Some(pb::Fusion {
        method: Some(pb::fusion::Method::Rrf(pb::RrfFusion {
            k: Some(-1.0),
            ..Default::default()
        })),
    });
    let err = search(&server, req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A caller-supplied vector of the right dimension works without query text.
    let mut req = request("c", "", pb::SearchMode::Dense);
    req.query_vector = vec![0.05; 384];
    assert!(!search(&server, req).await.unwrap().hits.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_work_for_standard_tools() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(data.path())).await;
    let channel = server.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "quarry.v1.Search".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "quarry.v1.Collections",
        "quarry.v1.Documents",
        "quarry.v1.Search",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.contains(&expected.to_string()),
            "{expected} missing from {names:?}"
        );
    }
    server.stop().await;
}

/// When the query cannot be embedded, hybrid search degrades to lexical and says so on the
/// wire; dense search fails with UNAVAILABLE. The model failure is injected through the hash
/// embedder (a broken ONNX session cannot be produced on demand).
#[tokio::test]
async fn hybrid_degrades_to_lexical_over_grpc_when_the_model_fails() {
    use quarry::model::hashed::{HashEmbedder, HashModels};
    let data = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(64).unwrap());
    let config = quarry::engine::EngineConfig::new(data.path(), "hash");
    let engine =
        quarry::engine::Engine::open(config, Arc::new(HashModels(embedder.clone()))).unwrap();
    let server = TestServer::serve(engine).await;
    create(&server, "docs").await;
    DocumentsClient::new(server.channel().await)
        .upsert_documents(pb::UpsertDocumentsRequest {
            collection: "docs".into(),
            documents: vec![
                doc("a", "kangaroos are marsupials"),
                doc("b", "volcano lava flows"),
            ],
        })
        .await
        .unwrap();
    embedder.fail_queries(true);
    let r = search(
        &server,
        request("docs", "volcano lava", pb::SearchMode::Hybrid),
    )
    .await
    .unwrap();
    assert!(r.degraded);
    assert_eq!(r.mode, pb::SearchMode::Lexical as i32);
    assert!(r.warning.contains("lexical"), "{}", r.warning);
    assert_eq!(r.hits[0].document_id, "b");
    let err = search(&server, request("docs", "volcano", pb::SearchMode::Dense))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    embedder.fail_queries(false);
    let r = search(&server, request("docs", "volcano", pb::SearchMode::Hybrid))
        .await
        .unwrap();
    assert!(!r.degraded);
    server.stop().await;
}

/// A long title must not push a chunk's own text out of the model's window: the text is
/// embedded first and the title gets at most a quarter of the budget. (Before, the title was
/// prepended whole and the model truncated the text away, so the chunk's vector was the
/// title's alone: exactly what document "t" below, the title as its text, gets.)
#[tokio::test]
async fn a_long_title_does_not_hide_the_text_from_dense_search() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(data.path())).await;
    create(&server, "docs").await;
    let title =
        "Annual report of the standing committee on maritime shipping regulations. ".repeat(30);
    let mut titled = doc(
        "a",
        "Mitochondria produce most of the cell's ATP through oxidative phosphorylation.",
    );
    titled.title = title.clone();
    DocumentsClient::new(server.channel().await)
        .upsert_documents(pb::UpsertDocumentsRequest {
            collection: "docs".into(),
            documents: vec![
                titled,
                doc("t", &title),
                doc("b", "Volcanoes erupt lava and ash."),
            ],
        })
        .await
        .unwrap();
    let r = search(
        &server,
        request(
            "docs",
            "how do mitochondria make ATP",
            pb::SearchMode::Dense,
        ),
    )
    .await
    .unwrap();
    let score = |id: &str| {
        r.hits
            .iter()
            .find(|h| h.document_id == id)
            .and_then(|h| h.explanation.as_ref()?.dense)
            .map_or(0.0, |d| d.score)
    };
    eprintln!(
        "cosine: text with title {}, title alone {}",
        score("a"),
        score("t")
    );
    assert_eq!(r.hits[0].document_id, "a");
    assert!(
        score("a") > score("t") + 0.1,
        "the text was not embedded: cosine {} against {} for the title alone",
        score("a"),
        score("t")
    );
    server.stop().await;
}
