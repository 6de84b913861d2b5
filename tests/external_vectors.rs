//! Bring your own vectors through gRPC, with the real server: a collection created with a
//! vector dimension takes pre-chunked documents with the caller's vectors and answers all
//! three modes with a query vector *exactly* like a collection that embedded the same chunks
//! itself (here the caller's vectors come from the same model, run client-side); bad shapes
//! get INVALID_ARGUMENT, and jobs (files carry no vectors) FAILED_PRECONDITION.

mod common;

use std::collections::HashMap;

use common::{create_fixture_collection, fixture_docs, test_config, TestServer};
use quarry::grpc::pb;
use tonic::Code;

use pb::collections_client::CollectionsClient;
use pb::documents_client::DocumentsClient;

fn request(
    collection: &str,
    query: &str,
    vector: Option<Vec<f32>>,
    mode: pb::SearchMode,
) -> pb::SearchRequest {
    pb::SearchRequest {
        collection: collection.into(),
        query: query.into(),
        query_vector: vector.unwrap_or_default(),
        top_k: 10,
        mode: mode as i32,
        ..Default::default()
    }
}

/// (document id, chunk ordinal, score) per hit.
fn ranking(r: &pb::SearchResponse) -> Vec<(String, u32, f32)> {
    r.hits
        .iter()
        .map(|h| (h.document_id.clone(), h.ordinal, h.score))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_vectors_answer_every_mode_like_the_model_collection() {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.import_roots = vec![data.path().to_path_buf()];
    let server = TestServer::start(config).await;
    let channel = server.channel().await;
    create_fixture_collection(&channel, "model").await;
    let model = server.engine().embedder("all-minilm-l6-v2").unwrap();

    let created = CollectionsClient::new(channel.clone())
        .create_collection(pb::CreateCollectionRequest {
            name: "own".into(),
            config: Some(pb::CollectionConfig {
                vector_dimension: 384,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let config = created.config.unwrap();
    assert_eq!(config.embedding_model, "external:384");
    assert_eq!(config.vector_dimension, 384);
    assert_eq!(created.dimension, 384);

    // The model collection's own chunks, embedded client-side the way the server embeds
    // them (title, then chunk), sent as pre-chunked documents.
    let ids: Vec<String> = fixture_docs().into_iter().map(|d| d.id).collect();
    let stored = DocumentsClient::new(channel.clone())
        .get_documents(pb::GetDocumentsRequest {
            collection: "model".into(),
            ids: ids.clone(),
            include_chunks: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut docs = Vec::new();
    for s in stored.documents {
        let d = s.document.unwrap();
        let texts: Vec<String> = s
            .chunks
            .iter()
            .map(|c| quarry::chunk::titled(&d.title, &c.text))
            .collect();
        let vectors = model.embed_documents(&texts).unwrap();
        docs.push(pb::Document {
            id: d.id,
            title: d.title,
            typed_metadata: d.typed_metadata,
            chunks: s
                .chunks
                .iter()
                .zip(vectors)
                .map(|(c, v)| pb::DocumentChunk {
                    text: c.text.clone(),
                    // Unnormalized on purpose: the server normalizes.
                    vector: v.iter().map(|x| x * 3.0).collect(),
                })
                .collect(),
            ..Default::default()
        });
    }
    let out = DocumentsClient::new(channel.clone())
        .upsert_documents(pb::UpsertDocumentsRequest {
            collection: "own".into(),
            documents: docs.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.results.len(), ids.len());

    let queries = quarry::eval::beir::Dataset::open(&common::fixture_dir())
        .unwrap()
        .queries()
        .unwrap();
    let mut compared = 0;
    for q in queries.values() {
        let qv = model.embed_query(q).unwrap();
        for mode in [
            pb::SearchMode::Lexical,
            pb::SearchMode::Dense,
            pb::SearchMode::Hybrid,
        ] {
            let theirs = server
                .search(request("model", q, None, mode))
                .await
                .unwrap();
            let vector = (mode != pb::SearchMode::Lexical).then(|| qv.clone());
            let mine = server
                .search(request("own", q, vector, mode))
                .await
                .unwrap();
            let (a, b) = (ranking(&theirs), ranking(&mine));
            assert_eq!(a.len(), b.len(), "{q} {mode:?}");
            for (x, y) in a.iter().zip(&b) {
                assert_eq!((&x.0, x.1), (&y.0, y.1), "{q} {mode:?}: {a:?} vs {b:?}");
                assert!((x.2 - y.2).abs() < 1e-4, "{q} {mode:?}: {a:?} vs {b:?}");
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 3 * queries.len());

    // Dense and hybrid without a vector: INVALID_ARGUMENT naming query_vector.
    for mode in [pb::SearchMode::Dense, pb::SearchMode::Hybrid] {
        let e = server
            .search(request("own", "atp", None, mode))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("query_vector"), "{}", e.message());
    }

    // Bad shapes, each refused with INVALID_ARGUMENT and nothing stored.
    let mut wrong_dim = docs[0].clone();
    wrong_dim.id = "wrong-dim".into();
    wrong_dim.chunks[0].vector.pop();
    let mut nan = docs[0].clone();
    nan.id = "nan".into();
    nan.chunks[0].vector[7] = f32::NAN;
    let mut text_too = docs[0].clone();
    text_too.id = "text-too".into();
    text_too.text = "and text".into();
    let plain = common::doc("plain", "a document with text only");
    let mut documents = DocumentsClient::new(channel.clone());
    for (collection, bad) in [
        ("own", wrong_dim),
        ("own", nan),
        ("own", text_too),
        ("own", plain),
        ("model", docs[0].clone()),
    ] {
        let e = documents
            .upsert_documents(pb::UpsertDocumentsRequest {
                collection: collection.into(),
                documents: vec![bad.clone()],
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Code::InvalidArgument,
            "{}: {}",
            bad.id,
            e.message()
        );
    }
    // Streaming: the bad document alone is rejected, the good one stored.
    let mut good = docs[1].clone();
    good.id = "streamed".into();
    let mut bad = docs[1].clone();
    bad.id = "streamed-bad".into();
    bad.chunks[0].vector = vec![0.0; 384];
    let stream = futures::stream::iter(
        [good, bad]
            .into_iter()
            .map(|d| pb::StreamUpsertRequest {
                collection: "own".into(),
                document: Some(d),
            })
            .collect::<Vec<_>>(),
    );
    let results = documents
        .stream_upsert_documents(stream)
        .await
        .unwrap()
        .into_inner()
        .results;
    let by_id: HashMap<_, _> = results.iter().map(|r| (r.id.as_str(), r.status)).collect();
    assert_eq!(by_id["streamed"], pb::UpsertStatus::Created as i32);
    assert_eq!(by_id["streamed-bad"], pb::UpsertStatus::Rejected as i32);

    // Jobs read files, which carry no vectors.
    let e = pb::jobs_client::JobsClient::new(channel.clone())
        .submit_ingest(pb::SubmitIngestRequest {
            collection: "own".into(),
            source: Some(pb::IngestSource {
                path: data.path().to_string_lossy().into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("external vectors"), "{}", e.message());
    server.stop().await;
}
