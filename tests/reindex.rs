//! Re-index through the real server and the real models: a new generation with another model
//! (`all-minilm-l6-v2-w8`, provisioned like the default) and another chunking is built by
//! `quarry jobs reindex` (the real binary) from the texts the server
//! stores, while an application keeps writing through the alias over gRPC; the alias is
//! switched at the end. Everything the application was acknowledged, before, during and after
//! the job, is what the alias serves afterwards. The same submission over HTTP, and the
//! refusals: bad requests and keys without the rights on both generations and the alias.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::generations::{served, Writer};
use common::{cli, doc, keyed, test_config, TestServer};
use quarry::auth::{AuthSettings, Role, ScopedKey};
use quarry::grpc::pb;
use tonic::Code;

use pb::collections_client::CollectionsClient;
use pb::documents_client::DocumentsClient;
use pb::jobs_client::JobsClient;
use pb::search_client::SearchClient;

const ADMIN: &str = "admin-0123456789abcdef";
/// Writes to the new generation only.
const NARROW: &str = "narrow-0123456789abcdef";
const DOCS: usize = 120;
/// The new generation's model: the same architecture with other int8 weights.
const OTHER_MODEL: &str = "all-minilm-l6-v2-w8";

fn text(i: usize, version: u32) -> String {
    const WORDS: [&str; 12] = [
        "granite", "basalt", "slate", "marble", "quarry", "chisel", "column", "mortar", "lintel",
        "gneiss", "schist", "quartz",
    ];
    let words: Vec<&str> = (0..60).map(|k| WORDS[(i * 5 + k * k) % 12]).collect();
    format!("Version {version} of note {i}: {}.", words.join(" "))
}

/// A collection's name, model, chunk size and chunk count.
async fn chunk_tokens(server: &TestServer, name: &str) -> (String, String, u32, u64) {
    let c = CollectionsClient::new(server.channel().await)
        .get_collection(keyed(
            pb::GetCollectionRequest { name: name.into() },
            Some(ADMIN),
        ))
        .await
        .unwrap()
        .into_inner();
    let config = c.config.unwrap();
    (
        c.name,
        config.embedding_model,
        config.chunk_tokens,
        c.chunk_count,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reindex_under_writes_switches_the_alias_and_loses_nothing() {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.auth = AuthSettings {
        api_key: Some(ADMIN.into()),
        read_only_api_key: None,
        keys: vec![ScopedKey {
            key: NARROW.into(),
            role: Role::Admin,
            collections: vec!["gen2".into(), "kb".into()],
            name: "narrow".into(),
        }],
    };
    let models = common::provision();
    let other = quarry::model::catalog::MODELS
        .iter()
        .find(|m| m.name == OTHER_MODEL)
        .expect("the catalog has the other model");
    quarry::model::fetch::ensure(other, &models, &mut |m: &str| eprintln!("[provision] {m}"))
        .expect("provision the other model");
    let server = TestServer::start(config).await;
    let mut collections = CollectionsClient::new(server.channel().await);
    let mut documents = DocumentsClient::new(server.channel().await);
    let mut jobs = JobsClient::new(server.channel().await);
    for name in ["gen1", "gen2"] {
        let chunking = (name == "gen2").then(|| pb::CollectionConfig {
            embedding_model: OTHER_MODEL.into(),
            chunk_tokens: 48,
            chunk_overlap: Some(8),
            ..Default::default()
        });
        collections
            .create_collection(keyed(
                pb::CreateCollectionRequest {
                    name: name.into(),
                    config: chunking,
                },
                Some(ADMIN),
            ))
            .await
            .unwrap();
    }
    let initial: Vec<pb::Document> = (0..DOCS)
        .map(|i| doc(&format!("n{i:03}"), &text(i, 1)))
        .collect();
    for part in initial.chunks(40) {
        documents
            .upsert_documents(keyed(
                pb::UpsertDocumentsRequest {
                    collection: "gen1".into(),
                    documents: part.to_vec(),
                },
                Some(ADMIN),
            ))
            .await
            .unwrap();
    }
    collections
        .set_alias(keyed(
            pb::SetAliasRequest {
                alias: "kb".into(),
                collection: "gen1".into(),
                expect_collection: Some(String::new()),
            },
            Some(ADMIN),
        ))
        .await
        .unwrap();

    // Refusals, before anything runs.
    let reindex = |to: &str, from: &str, alias: &str| pb::SubmitIngestRequest {
        collection: to.into(),
        source: Some(pb::IngestSource {
            collection: from.into(),
            ..Default::default()
        }),
        sync: true,
        switch_alias: alias.into(),
    };
    for (request, key, code) in [
        // The narrow key may not read the old generation by its name.
        (reindex("gen2", "gen1", ""), NARROW, Code::PermissionDenied),
        // Nor switch an alias away from a collection it may not use.
        (reindex("gen2", "kb", "kb"), NARROW, Code::PermissionDenied),
        (reindex("gen1", "kb", ""), ADMIN, Code::InvalidArgument),
        (reindex("kb", "gen1", ""), ADMIN, Code::InvalidArgument),
        (reindex("gen2", "nosuch", ""), ADMIN, Code::NotFound),
        (
            reindex("gen2", "gen1", "gen1"),
            ADMIN,
            Code::FailedPrecondition,
        ),
    ] {
        let got = jobs.submit_ingest(keyed(request.clone(), Some(key))).await;
        let e = got.expect_err(&format!("{request:?} was accepted"));
        assert_eq!(e.code(), code, "{request:?}: {e:?}");
    }
    let mut path_and_collection = reindex("gen2", "gen1", "");
    path_and_collection.source.as_mut().unwrap().path = "/tmp".into();
    let e = jobs
        .submit_ingest(keyed(path_and_collection, Some(ADMIN)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // The application writes through the alias all along (it knows no generation).
    let writer = Writer::start(server.channel().await, "kb", ADMIN, ("n", DOCS + 30), text);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The CLI submits the re-index and follows it to its end.
    let url = server.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        cli::quarry(
            &url,
            &[
                "jobs",
                "reindex",
                "--from",
                "kb",
                "--collection",
                "gen2",
                "--switch-alias",
                "kb",
                "--wait",
                "--json",
                "--quiet",
                "--api-key",
                ADMIN,
            ],
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", cli::text(&out));
    let job = cli::json(&out);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["source"], "collection:gen1", "{job}");
    assert_eq!(job["switch_alias"], "kb", "{job}");
    // A key that may not use the source does not see the job (it would name the source).
    let hidden = jobs
        .get_job(keyed(
            pb::GetJobRequest {
                id: job["id"].as_str().unwrap().to_string(),
            },
            Some(NARROW),
        ))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound, "{hidden:?}");
    let listed = jobs
        .list_jobs(keyed(pb::ListJobsRequest::default(), Some(NARROW)))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.jobs.is_empty(), "{:?}", listed.jobs);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = writer.stop().await;
    eprintln!(
        "{} writes through the alias, {} refused at the switch; job counts {}",
        written.steps, written.aborted, job["counts"]
    );

    // The alias names the new generation, chunked by its own settings, and serves the
    // initial documents with every acknowledged write applied.
    let (name, new_model, tokens, chunks_new) = chunk_tokens(&server, "kb").await;
    assert_eq!(
        (name.as_str(), new_model.as_str(), tokens),
        ("gen2", OTHER_MODEL, 48)
    );
    let (_, model_old, _, chunks_old) = chunk_tokens(&server, "gen1").await;
    assert_ne!(model_old, OTHER_MODEL);
    assert!(
        chunks_new > chunks_old,
        "{chunks_new} chunks against {chunks_old}"
    );
    let initial: BTreeMap<String, String> = initial
        .iter()
        .map(|d| (d.id.clone(), d.text.clone()))
        .collect();
    let expected = written.applied_to(&initial);
    let now = served(server.channel().await, "kb", ADMIN).await;
    assert_eq!(now.len(), expected.len());
    assert!(
        now == expected,
        "the new generation differs from what was acknowledged"
    );
    // A document written during the job is found by the new generation's indexes.
    let (id, body) = expected.iter().next_back().unwrap();
    let hits = SearchClient::new(server.channel().await)
        .search(keyed(
            pb::SearchRequest {
                collection: "kb".into(),
                query: body.clone(),
                top_k: 3,
                mode: pb::SearchMode::Hybrid as i32,
                ..Default::default()
            },
            Some(ADMIN),
        ))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert!(hits.iter().any(|h| &h.document_id == id), "{id}: {hits:?}");

    // Over HTTP: the same submission (into a third generation), followed to its end.
    collections
        .create_collection(keyed(
            pb::CreateCollectionRequest {
                name: "gen3".into(),
                config: None,
            },
            Some(ADMIN),
        ))
        .await
        .unwrap();
    quarry::tls::install_crypto_provider();
    let http = reqwest::Client::new();
    let submitted: serde_json::Value = http
        .post(format!("{}/v1/collections/gen3/jobs", server.http_url))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"source": {"collection": "kb"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(submitted["source"]["collection"], "gen2", "{submitted}");
    let id = submitted["id"].as_str().unwrap().to_string();
    let mut state = String::new();
    for _ in 0..600 {
        let job: serde_json::Value = http
            .get(format!("{}/v1/jobs/{id}", server.http_url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        state = job["state"].as_str().unwrap_or_default().to_string();
        if state.ends_with("SUCCEEDED") || state.ends_with("FAILED") || state.ends_with("CANCELLED")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(state.ends_with("SUCCEEDED"), "{state}");
    assert!(served(server.channel().await, "gen3", ADMIN).await == expected);
    server.stop().await;
}
