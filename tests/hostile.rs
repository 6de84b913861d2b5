//! What a hostile or careless client sends, through the real server and model: each gets a
//! clear status with the right code, never INTERNAL, never a non-finite score, never a reply
//! or message that grows with the abuse.

mod common;

use std::collections::HashMap;

use common::{doc, test_config, TestServer};
use quarry::grpc::pb;
use tonic::Code;

use pb::collections_client::CollectionsClient;
use pb::documents_client::DocumentsClient;
use pb::search_client::SearchClient;

async fn server_with_docs() -> (TestServer, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(data.path())).await;
    server.create_collection("c").await;
    let mut tagged = doc("b", "volcanoes erupt lava and ash");
    tagged.metadata.insert("kind".into(), "geo".into());
    DocumentsClient::new(server.channel().await)
        .upsert_documents(pb::UpsertDocumentsRequest {
            collection: "c".into(),
            documents: vec![doc("a", "kangaroos are marsupials"), tagged],
        })
        .await
        .unwrap();
    (server, data)
}

fn search_request(query: &str) -> pb::SearchRequest {
    pb::SearchRequest {
        collection: "c".into(),
        query: query.into(),
        top_k: 5,
        mode: pb::SearchMode::Hybrid as i32,
        explain: true,
        ..Default::default()
    }
}

fn assert_invalid(r: Result<impl std::fmt::Debug, tonic::Status>, needle: &str) {
    let s = r.expect_err("must be rejected");
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert!(
        s.message().contains(needle),
        "{:?} lacks {needle:?}",
        s.message()
    );
    assert!(
        s.message().len() < 400,
        "message too long: {}",
        s.message().len()
    );
}

#[tokio::test]
async fn non_finite_numbers_are_rejected_and_scores_stay_finite() {
    let (server, _data) = server_with_docs().await;
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for filtered in [false, true] {
            let mut r = search_request("");
            r.mode = pb::SearchMode::Dense as i32;
            r.query_vector = vec![0.1; 384];
            r.query_vector[7] = bad;
            if filtered {
                r.filter.insert("kind".into(), "geo".into());
            }
            assert_invalid(server.search(r).await, "query_vector[7]");
        }
    }
    let mut r = search_request("");
    r.mode = pb::SearchMode::Dense as i32;
    r.query_vector = vec![0.0; 384];
    assert_invalid(server.search(r).await, "all zeros");

    let mut r = search_request("lava");
    r.title_boost = Some(3.4e38);
    assert_invalid(server.search(r).await, "title_boost");
    let mut r = search_request("lava");
    r.fusion = Some(pb::Fusion {
        method: Some(pb::fusion::Method::Weighted(pb::WeightedFusion {
            lexical_weight: Some(3.4e38),
            dense_weight: Some(3.4e38),
        })),
    });
    assert_invalid(server.search(r).await, "lexical_weight");
    // The largest allowed values still give finite scores, in both fusions.
    for method in [
        pb::fusion::Method::Weighted(pb::WeightedFusion {
            lexical_weight: Some(1000.0),
            dense_weight: Some(1000.0),
        }),
        pb::fusion::Method::Rrf(pb::RrfFusion {
            k: Some(0.0),
            lexical_weight: Some(1000.0),
            dense_weight: Some(1000.0),
        }),
    ] {
        let mut r = search_request("lava volcanoes");
        r.title_boost = Some(1000.0);
        r.fusion = Some(pb::Fusion {
            method: Some(method),
        });
        let out = server.search(r).await.unwrap();
        assert!(!out.hits.is_empty());
        for h in &out.hits {
            assert!(h.score.is_finite(), "{h:?}");
            let e = h.explanation.as_ref().unwrap();
            for rh in [&e.lexical, &e.dense].into_iter().flatten() {
                assert!(rh.score.is_finite(), "{h:?}");
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn repeated_and_excess_ids_do_not_multiply_work() {
    let (server, _data) = server_with_docs().await;
    let mut docs = DocumentsClient::new(server.channel().await);
    let r = docs
        .get_documents(pb::GetDocumentsRequest {
            collection: "c".into(),
            ids: vec!["a".to_string(); 40],
            include_chunks: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.documents.len(), 1, "each id answered once");
    let over = docs
        .get_documents(pb::GetDocumentsRequest {
            collection: "c".into(),
            ids: (0..41).map(|i| format!("x{i}")).collect(),
            include_chunks: false,
        })
        .await;
    assert_invalid(over, "max_batch_documents");
    let d = docs
        .delete_documents(pb::DeleteDocumentsRequest {
            collection: "c".into(),
            ids: vec!["a".into(), "a".into(), "a".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (d.deleted, d.missing.len()),
        (1, 0),
        "a repeated id counts once"
    );
    server.stop().await;
}

#[tokio::test]
async fn metadata_counts_against_the_document_size_limit() {
    let (server, _data) = server_with_docs().await;
    // test_config sets max_document_bytes to 64 KiB.
    let mut big = doc("m", "a short text of twenty-four");
    big.metadata.insert("blob".into(), "x".repeat(70 * 1024));
    let r = DocumentsClient::new(server.channel().await)
        .upsert_documents(pb::UpsertDocumentsRequest {
            collection: "c".into(),
            documents: vec![big],
        })
        .await;
    assert_invalid(r, "max_document_bytes");
    server.stop().await;
}

#[tokio::test]
async fn oversized_names_and_bad_filter_keys_get_short_clear_errors() {
    let (server, _data) = server_with_docs().await;
    let long = "n".repeat(20_000);
    let mut collections = CollectionsClient::new(server.channel().await);
    let created = collections
        .create_collection(pb::CreateCollectionRequest {
            name: long.clone(),
            config: None,
        })
        .await;
    assert_invalid(created, "invalid collection name");
    let got = collections
        .get_collection(pb::GetCollectionRequest { name: long.clone() })
        .await
        .unwrap_err();
    assert_eq!(got.code(), Code::NotFound);
    assert!(got.message().len() < 400, "{}", got.message().len());
    let mut r = search_request("lava");
    r.collection = format!("{long}\nforged log line");
    let s = server.search(r).await.unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    assert!(!s.message().contains('\n') && s.message().len() < 400);

    // U+001F separates key and value in the index: a key containing it must not match
    // another entry ("kind" = "geo" is stored; "kind\u{1f}geo" = "" must not find it).
    let mut r = search_request("lava");
    r.filter = HashMap::from([("kind\u{1f}geo".to_string(), String::new())]);
    assert_invalid(server.search(r).await, "U+001F");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_collection_under_load_leaves_no_ghost() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(data.path())).await;
    let mut collections = CollectionsClient::new(server.channel().await);
    for round in 0..3 {
        server.create_collection("c").await;
        // A long write holds the collection's write lock while the delete arrives.
        let channel = server.channel().await;
        let documents: Vec<pb::Document> = common::fixture_docs()
            .into_iter()
            .map(|mut d| {
                d.text = vec![d.text; 16].join("\n\n");
                d
            })
            .collect();
        let long_write = tokio::spawn(async move {
            DocumentsClient::new(channel)
                .upsert_documents(pb::UpsertDocumentsRequest {
                    collection: "c".into(),
                    documents,
                })
                .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // Searches race the delete: each succeeds or says NOT_FOUND, never INTERNAL.
        let channel = server.channel().await;
        let searches = tokio::spawn(async move {
            for _ in 0..20 {
                let r = SearchClient::new(channel.clone())
                    .search(search_request("mitochondria"))
                    .await;
                if let Err(s) = r {
                    assert_eq!(s.code(), Code::NotFound, "{}", s.message());
                }
            }
        });
        // The caller of the delete gives up while it waits for the lock; the delete still
        // completes once the write is done.
        let delete =
            collections.delete_collection(pb::DeleteCollectionRequest { name: "c".into() });
        let abandoned = tokio::time::timeout(std::time::Duration::from_millis(50), delete).await;
        assert!(
            abandoned.is_err(),
            "round {round}: the delete waited for the write"
        );
        let written = long_write.await.unwrap();
        assert!(written.is_ok(), "the write that held the lock completes");
        searches.await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let got = collections
            .get_collection(pb::GetCollectionRequest { name: "c".into() })
            .await
            .unwrap_err();
        assert_eq!(got.code(), Code::NotFound, "round {round}");
        // The next round creates "c" again: no half-deleted collection holds the name.
    }
    server.stop().await;
    // Nothing comes back after a restart: the last round's deletion was durable.
    let server = TestServer::start(test_config(data.path())).await;
    let listed = CollectionsClient::new(server.channel().await)
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.collections.is_empty(), "{:?}", listed.collections);
    server.stop().await;
}

/// One collection whose files are corrupt does not stop the server: the others serve, and the
/// broken one says why (FAILED_PRECONDITION, health NOT_SERVING) until it is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_that_cannot_open_does_not_stop_the_server() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(data.path())).await;
    for name in ["broken", "fine"] {
        server.create_collection(name).await;
        DocumentsClient::new(server.channel().await)
            .upsert_documents(pb::UpsertDocumentsRequest {
                collection: name.into(),
                documents: vec![doc("a", "kangaroos are marsupials")],
            })
            .await
            .unwrap();
    }
    server.stop().await;
    // "broken" was created first, so it has the smaller numeric id on disk.
    let mut dirs: Vec<u64> = std::fs::read_dir(data.path().join("collections"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    dirs.sort();
    let meta = data
        .path()
        .join("collections")
        .join(dirs[0].to_string())
        .join("dense/meta.json");
    std::fs::write(&meta, b"{ not json").unwrap();

    let server = TestServer::start(test_config(data.path())).await;
    let mut r = search_request("kangaroo");
    r.collection = "fine".into();
    assert_eq!(server.search(r).await.unwrap().hits[0].document_id, "a");
    let mut collections = CollectionsClient::new(server.channel().await);
    let s = collections
        .get_collection(pb::GetCollectionRequest {
            name: "broken".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    assert!(
        s.message().contains("could not be opened"),
        "{}",
        s.message()
    );
    let health = HealthClient::new(server.channel().await)
        .check(HealthCheckRequest {
            service: quarry::grpc::collection_health_name("broken"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::NotServing as i32);
    // Deleting it frees the name.
    collections
        .delete_collection(pb::DeleteCollectionRequest {
            name: "broken".into(),
        })
        .await
        .unwrap();
    server.create_collection("broken").await;
    server.stop().await;
}

/// A request shaped to break SearchRequest's decoding: `collection` (field 1) as raw bytes,
/// `top_k` (field 3, a varint) as a string.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbled {
    #[prost(bytes = "vec", tag = "1")]
    collection: Vec<u8>,
    #[prost(string, optional, tag = "3")]
    top_k: Option<String>,
}

/// Malformed protobuf and invalid UTF-8 are the caller's fault: INVALID_ARGUMENT, not INTERNAL.
#[tokio::test]
async fn undecodable_requests_are_invalid_arguments() {
    let (server, _data) = server_with_docs().await;
    let cases = [
        Garbled {
            collection: vec![b'c', 0xff, 0xfe],
            top_k: None,
        },
        Garbled {
            collection: b"c".to_vec(),
            top_k: Some("ten".into()),
        },
    ];
    for garbled in cases {
        let mut grpc = tonic::client::Grpc::new(server.channel().await);
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<Garbled, pb::SearchResponse>::default();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/quarry.v1.Search/Search");
        let s = grpc
            .unary(tonic::Request::new(garbled.clone()), path, codec)
            .await
            .unwrap_err();
        assert_eq!(
            s.code(),
            Code::InvalidArgument,
            "{garbled:?}: {}",
            s.message()
        );
    }
    server.stop().await;
}

/// Model names come from clients: no paths out of the models directory, no second copy of a
/// loaded model through another spelling, and no server path in the error.
#[tokio::test]
async fn model_names_cannot_be_paths() {
    let (server, _data) = server_with_docs().await;
    let models_dir = common::provision();
    let mut collections = CollectionsClient::new(server.channel().await);
    for bad in [
        "../../../../etc".to_string(),
        "./all-minilm-l6-v2/.".to_string(),
        models_dir.join("all-minilm-l6-v2").display().to_string(),
        "/etc".to_string(),
    ] {
        let s = collections
            .create_collection(pb::CreateCollectionRequest {
                name: "m".into(),
                config: Some(pb::CollectionConfig {
                    embedding_model: bad.clone(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{bad}: {}", s.message());
        assert!(
            !s.message().contains(&models_dir.display().to_string()) || bad.starts_with('/'),
            "{bad}: the models directory leaked: {}",
            s.message()
        );
    }
    server.stop().await;
}

/// A stream of rejected documents is bounded: past max_stream_documents the stream is refused,
/// and each rejection's id and message are cut, so the reply cannot outgrow the message limit.
#[tokio::test]
async fn a_stream_of_rejected_documents_is_bounded() {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.limits.max_stream_documents = 100;
    let server = TestServer::start(config).await;
    server.create_collection("c").await;
    let stream = |n: usize, id: String| {
        futures::stream::iter((0..n).map(move |i| pb::StreamUpsertRequest {
            collection: "c".into(),
            // Empty text: every document is rejected.
            document: Some(doc(&format!("{id}{i}"), "")),
        }))
    };
    let long_id = "i".repeat(100_000);
    let mut docs = DocumentsClient::new(server.channel().await);
    let within = docs
        .stream_upsert_documents(stream(100, long_id.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(within.results.len(), 100);
    for r in &within.results {
        assert_eq!(r.status, pb::UpsertStatus::Rejected as i32);
        assert!(
            r.id.len() <= 512 && r.error.len() <= 256,
            "{} {}",
            r.id.len(),
            r.error.len()
        );
    }
    let over = docs.stream_upsert_documents(stream(101, "d".into())).await;
    assert_invalid(over, "max_stream_documents");
    server.stop().await;
}

/// Number of threads of this process.
fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// Collections cost no threads while idle: each BM25 writer's threads are released at the
/// next checkpoint once it has been idle (here at once), so thousands of collections cannot
/// exhaust the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_collections_hold_no_writer_threads() {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.index.writer_idle_secs = 0;
    let server = TestServer::start(config).await;
    let mut docs = DocumentsClient::new(server.channel().await);
    let before = threads();
    const N: usize = 20;
    for i in 0..N {
        let name = format!("c{i}");
        server.create_collection(&name).await;
        docs.upsert_documents(pb::UpsertDocumentsRequest {
            collection: name,
            documents: vec![doc("a", "kangaroos are marsupials")],
        })
        .await
        .unwrap();
    }
    let writing = threads();
    server.engine().checkpoint().await.unwrap();
    let idle = threads();
    eprintln!("threads: {before} before, {writing} with {N} writers, {idle} after closing them");
    assert!(writing >= before + 2 * N, "each open writer has threads");
    assert!(
        idle + 2 * N <= writing,
        "closing idle writers released their threads"
    );
    // A closed writer reopens on the next write.
    docs.upsert_documents(pb::UpsertDocumentsRequest {
        collection: "c0".into(),
        documents: vec![doc("b", "wombats dig burrows")],
    })
    .await
    .unwrap();
    let mut r = search_request("wombats");
    r.collection = "c0".into();
    assert_eq!(server.search(r).await.unwrap().hits[0].document_id, "b");
    server.stop().await;
}
