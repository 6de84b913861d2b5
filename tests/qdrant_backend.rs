//! Quarry on Qdrant, end to end: two real `quarry serve` processes (the real embedding model)
//! configured with `[backend] kind = "qdrant"` on one real Qdrant node. A collection created
//! through one front end is served by the other; a write acknowledged by one is visible to a
//! search on the other at once, over gRPC and HTTP alike; the two rank identically; the
//! fixture's eval gives the embedded backend's figures within a small margin; a delete on one is
//! gone on the other. While the Qdrant node is down the front end is unready (`/readyz` 503,
//! gRPC health NOT_SERVING, `quarry_backend_reachable 0`) and searches fail with UNAVAILABLE;
//! once it is back, ready again. Skipped loudly where no Qdrant binary can be had.

mod common;

use std::path::Path;

use quarry::api::pb;
use quarry::qdrant::node::QdrantNode;
use tonic::transport::Channel;

struct FrontEnd {
    child: std::process::Child,
    url: String,
    grpc: Channel,
    http: String,
    /// The operations listener (`/readyz`, `/metrics`).
    ops: String,
}

impl Drop for FrontEnd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn front_end(data: &Path, config: Option<&Path>) -> FrontEnd {
    let mut extra: Vec<&str> = Vec::new();
    let config_arg;
    if let Some(c) = config {
        config_arg = c.to_string_lossy().to_string();
        extra.extend(["--config", config_arg.as_str()]);
    }
    let (child, url, http, ops) = common::start_binary_all(data, &extra);
    let grpc = Channel::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    FrontEnd {
        child,
        url,
        grpc,
        http,
        ops: format!("http://{ops}"),
    }
}

/// Polls `/readyz` of `f` until it answers `code` (20 s at most); returns its body.
async fn readiness(f: &FrontEnd, code: u16) -> String {
    let started = std::time::Instant::now();
    loop {
        let r = reqwest::get(format!("{}/readyz", f.ops)).await.unwrap();
        let (status, body) = (r.status().as_u16(), r.text().await.unwrap());
        if status == code {
            return body;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "/readyz stayed {status} {body:?}, not {code}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn grpc_health(f: &FrontEnd) -> i32 {
    tonic_health::pb::health_client::HealthClient::new(f.grpc.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status
}

/// gRPC health of `f` once `/readyz` has changed: `/readyz` reads the backend's flag when
/// asked, health is pushed by the storage watch, which looks every 250 ms (and the moment its
/// own probe ends), so health may follow up to one tick later; never more than a second.
async fn health_follows(f: &FrontEnd, want: i32) {
    let started = std::time::Instant::now();
    loop {
        let got = grpc_health(f).await;
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "gRPC health stayed {got} a second after /readyz changed, not {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

async fn hybrid(channel: &Channel, collection: &str, query: &str) -> Vec<(String, f32)> {
    let r = pb::search_client::SearchClient::new(channel.clone())
        .search(pb::SearchRequest {
            collection: collection.into(),
            query: query.into(),
            top_k: 5,
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner();
    r.hits
        .into_iter()
        .map(|h| (h.document_id, h.score))
        .collect()
}

/// The collection `alias` resolves to on front end `f` now (GetCollection through it).
async fn alias_seen_by(f: &FrontEnd, alias: &str) -> Option<String> {
    let got = pb::collections_client::CollectionsClient::new(f.grpc.clone())
        .get_collection(pb::GetCollectionRequest { name: alias.into() })
        .await;
    match got {
        Ok(c) => {
            let c = c.into_inner();
            assert_eq!(c.requested_alias, alias);
            Some(c.name)
        }
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => panic!("{s:?}"),
    }
}

/// Waits until `f` resolves `alias` to `want`: within RECHECK_AFTER of a change made through
/// another front end (twice that at most, for a loaded machine).
async fn wait_for_alias(f: &FrontEnd, alias: &str, want: Option<&str>) {
    let started = std::time::Instant::now();
    let bound = quarry::qdrant::RECHECK_AFTER * 2;
    loop {
        let seen = alias_seen_by(f, alias).await;
        if seen.as_deref() == want {
            eprintln!(
                "alias change seen by the other front end after {:?}",
                started.elapsed()
            );
            return;
        }
        assert!(
            started.elapsed() < bound,
            "{alias} still resolves to {seen:?}, not {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// B's hybrid hits on `docs` by its own name (what the alias must give).
async fn from_b_after_write(b: &FrontEnd, query: &str) -> Vec<(String, f32)> {
    hybrid(&b.grpc, "docs", query).await
}

#[tokio::test]
async fn two_front_ends_on_one_qdrant_serve_the_same_collections() {
    let Some(bin) = common::qdrant_binary() else {
        return;
    };
    quarry::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let node = tokio::task::spawn_blocking({
        let dir = dir.path().join("qdrant");
        move || QdrantNode::single(&bin, &dir)
    })
    .await
    .unwrap()
    .expect("qdrant starts");
    let config = dir.path().join("quarry.toml");
    std::fs::write(
        &config,
        format!(
            "[backend]\nkind = \"qdrant\"\nurl = \"{}\"\ncollection_prefix = \"it-\"\n",
            node.url()
        ),
    )
    .unwrap();
    let a = front_end(&dir.path().join("a"), Some(&config)).await;
    let b = front_end(&dir.path().join("b"), Some(&config)).await;
    let embedded = front_end(&dir.path().join("embedded"), None).await;
    common::create_fixture_collection(&a.grpc, "docs").await;
    common::create_fixture_collection(&embedded.grpc, "docs").await;

    // B serves what A wrote, ranked as A ranks it.
    let query = "how do plants turn light into energy";
    let from_a = hybrid(&a.grpc, "docs", query).await;
    let from_b = hybrid(&b.grpc, "docs", query).await;
    assert_eq!(from_a, from_b);
    assert_eq!(from_a[0].0, "bio-photosynthesis", "{from_a:?}");
    let listed = pb::collections_client::CollectionsClient::new(b.grpc.clone())
        .list_collections(pb::ListCollectionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let docs = listed
        .collections
        .iter()
        .find(|c| c.name == "docs")
        .unwrap();
    assert_eq!(docs.document_count, common::fixture_docs().len() as u64);

    // A write acknowledged by B is visible to A's next search, over HTTP too.
    pb::documents_client::DocumentsClient::new(b.grpc.clone())
        .upsert_documents(pb::UpsertDocumentsRequest {
            collection: "docs".into(),
            documents: vec![common::doc(
                "new-basalt",
                "Basalt columns form when thick lava flows cool and contract into hexagonal pillars.",
            )],
        })
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let found: serde_json::Value = http
        .post(format!("{}/v1/collections/docs/search", a.http))
        .json(&serde_json::json!({"query": "hexagonal basalt pillars from lava", "top_k": 3}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["hits"][0]["document_id"], "new-basalt", "{found}");

    // Aliases are Qdrant's own: one set through A resolves through B; a switch through A is
    // seen by B within RECHECK_AFTER; the collection an alias points to cannot be deleted.
    let mut admin_a = pb::collections_client::CollectionsClient::new(a.grpc.clone());
    admin_a
        .create_collection(pb::CreateCollectionRequest {
            name: "docs2".into(),
            config: None,
        })
        .await
        .unwrap();
    let set = |collection: &str, expect: &str| pb::SetAliasRequest {
        alias: "live".into(),
        collection: collection.into(),
        expect_collection: Some(expect.into()),
    };
    admin_a.set_alias(set("docs", "")).await.unwrap();
    assert_eq!(alias_seen_by(&b, "live").await, Some("docs".to_string()));
    assert_eq!(
        hybrid(&b.grpc, "live", query).await,
        from_b_after_write(&b, query).await
    );
    let switched = admin_a
        .set_alias(set("docs2", "docs"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(switched.previous, "docs");
    let stale = admin_a.set_alias(set("docs", "docs")).await.unwrap_err();
    assert_eq!(stale.code(), tonic::Code::Aborted, "{stale:?}");
    wait_for_alias(&b, "live", Some("docs2")).await;
    let refused = admin_a
        .delete_collection(pb::DeleteCollectionRequest {
            name: "docs2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    admin_a
        .delete_alias(pb::DeleteAliasRequest {
            alias: "live".into(),
            expect_collection: Some("docs2".into()),
        })
        .await
        .unwrap();
    wait_for_alias(&b, "live", None).await;
    admin_a
        .delete_collection(pb::DeleteCollectionRequest {
            name: "docs2".into(),
        })
        .await
        .unwrap();

    // The fixture's eval: Qdrant's figures beside the embedded backend's.
    let on_qdrant = common::test_split_ndcg(&a.grpc, &common::fixture_dir(), "docs", vec![]).await;
    let on_embedded =
        common::test_split_ndcg(&embedded.grpc, &common::fixture_dir(), "docs", vec![]).await;
    eprintln!("fixture nDCG@10 embedded {on_embedded:?}");
    eprintln!("fixture nDCG@10 qdrant   {on_qdrant:?}");
    assert_eq!(on_qdrant.len(), on_embedded.len());
    for ((name, q), (_, e)) in on_qdrant.iter().zip(&on_embedded) {
        // The fixture has one extra document on Qdrant (new-basalt), unrelated to its queries.
        assert!((q - e).abs() <= 0.05, "{name}: qdrant {q} vs embedded {e}");
    }

    // An export through B reads back through A unchanged: same content hashes.
    let grpc_url = |f: &FrontEnd| f.url.clone();
    let export = dir.path().join("docs.jsonl");
    let cli = |url: &str, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
            .args(args)
            .args(["--server", url])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        text
    };
    let export_arg = export.to_string_lossy().to_string();
    cli(
        &grpc_url(&b),
        &["export", "--collection", "docs", "--out", &export_arg],
    );
    let lines = std::fs::read_to_string(&export).unwrap().lines().count();
    assert_eq!(lines, common::fixture_docs().len() + 1);
    let again = cli(
        &grpc_url(&a),
        &["ingest", "--collection", "docs", &export_arg],
    );
    assert!(
        again.contains(" 0 created, 0 updated, "),
        "an export re-ingested changes nothing: {again}"
    );

    // A delete through A is gone for B.
    pb::documents_client::DocumentsClient::new(a.grpc.clone())
        .delete_documents(pb::DeleteDocumentsRequest {
            collection: "docs".into(),
            ids: vec!["new-basalt".into()],
        })
        .await
        .unwrap();
    let after = hybrid(&b.grpc, "docs", "hexagonal basalt pillars from lava").await;
    assert!(after.iter().all(|(id, _)| id != "new-basalt"), "{after:?}");

    // Readiness follows Qdrant: no node answering means unready, not a silent failure.
    use tonic_health::pb::health_check_response::ServingStatus;
    readiness(&a, 200).await;
    assert_eq!(grpc_health(&a).await, ServingStatus::Serving as i32);
    let mut node = node;
    node.kill();
    let why = readiness(&a, 503).await;
    assert!(why.contains("Qdrant"), "{why}");
    health_follows(&a, ServingStatus::NotServing as i32).await;
    let metrics = reqwest::get(format!("{}/metrics", a.ops))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("\nquarry_backend_reachable 0\n"),
        "{metrics}"
    );
    let refused = pb::search_client::SearchClient::new(a.grpc.clone())
        .search(pb::SearchRequest {
            collection: "docs".into(),
            query: "basalt".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let node = tokio::task::spawn_blocking(move || {
        node.start()?;
        node.wait_ready(std::time::Duration::from_secs(120))?;
        Ok::<_, quarry::Error>(node)
    })
    .await
    .unwrap()
    .expect("qdrant restarts");
    readiness(&a, 200).await;
    health_follows(&a, ServingStatus::Serving as i32).await;
    let back = hybrid(&a.grpc, "docs", "how do plants turn light into energy").await;
    assert_eq!(back[0].0, "bio-photosynthesis", "{back:?}");
    drop(node);
}
