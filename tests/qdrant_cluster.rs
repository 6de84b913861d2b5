//! Quarry on a three-node Qdrant cluster on loopback (3 shards, replication factor 2), through
//! the real binary and the real model: SciFact is ingested through Quarry, then one Qdrant
//! node is killed with SIGKILL (the first one `url` names, so Quarry must move to another)
//! while clients keep writing and searching. Every call succeeds or fails cleanly with
//! UNAVAILABLE; after the node returns, nothing acknowledged is lost (each acknowledged write is
//! there with its text and found by its unique token) and SciFact's eval is what it was.
//!
//! Needs the Qdrant binary (`scripts/provision-qdrant.sh`) and SciFact (`../shared/datasets/
//! scifact` or QUARRY_SCIFACT); skipped loudly without them. `QUARRY_CLUSTER_OUTAGE_SECS`
//! (default 20) sets how long the node stays down.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quarry::api::pb;
use quarry::qdrant::node::QdrantCluster;
use tonic::transport::Channel;
use tonic::Code;

/// Hybrid nDCG@10 of SciFact's test split.
async fn hybrid_ndcg(channel: &Channel, dir: &std::path::Path) -> f64 {
    let hybrid = pb::EvalRunSpec {
        name: "hybrid".into(),
        mode: pb::SearchMode::Hybrid as i32,
        ..Default::default()
    };
    common::test_split_ndcg(channel, dir, "scifact", vec![hybrid]).await[0].1
}

fn kill_doc(n: usize) -> pb::Document {
    common::doc(
        &format!("kill-{n}"),
        &format!("zk{n}q written while a qdrant node was down, number {n}"),
    )
}

/// Calls that may fail during the outage must fail with UNAVAILABLE (or a deadline).
fn clean(status: &tonic::Status, what: &str) {
    assert!(
        matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{what} failed uncleanly: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_qdrant_node_loses_nothing_acknowledged() {
    let (Some(bin), Some(scifact)) = (common::qdrant_binary(), common::scifact()) else {
        return;
    };
    quarry::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let cluster = tokio::task::spawn_blocking({
        let d = dir.path().join("qdrant");
        move || QdrantCluster::start(&bin, &d, 3)
    })
    .await
    .unwrap()
    .expect("a three-node cluster starts");
    let config = dir.path().join("quarry.toml");
    std::fs::write(
        &config,
        format!(
            "[backend]\nkind = \"qdrant\"\nurl = \"{}\"\nshard_number = 3\nreplication_factor = 2\ntimeout_secs = 10\n",
            cluster.urls().join(",")
        ),
    )
    .unwrap();
    let config_arg = config.to_string_lossy().to_string();
    let (server, url, _) =
        common::start_binary_doors(&dir.path().join("data"), &["--config", &config_arg]);
    let server = Killed(server);
    let channel = Channel::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let dataset = quarry::eval::beir::Dataset::open(&scifact).unwrap();
    let docs = quarry::client::load::load_jsonl(&dataset.corpus_path().unwrap()).unwrap();
    let corpus = docs.len();
    let conn = quarry::client::connect(&url, &Default::default())
        .await
        .unwrap();
    quarry::client::ensure_collection(conn.clone(), "scifact", &Default::default())
        .await
        .unwrap();
    let started = Instant::now();
    quarry::client::ingest(conn, "scifact", docs, false)
        .await
        .unwrap();
    eprintln!(
        "ingested {corpus} SciFact documents in {:?}",
        started.elapsed()
    );
    let before = hybrid_ndcg(&channel, &scifact).await;
    eprintln!("hybrid nDCG@10 before the kill: {before:.4}");

    // Node 0 (the first `url` names) dies; writers and searchers go on.
    let mut cluster = cluster;
    cluster.nodes[0].kill();
    let outage = Duration::from_secs(
        std::env::var("QUARRY_CLUSTER_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    let acked = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now() + outage;
    let writer = {
        let (channel, acked) = (channel.clone(), acked.clone());
        tokio::spawn(async move {
            let mut docs = pb::documents_client::DocumentsClient::new(channel);
            let (mut n, mut failed) = (0, 0);
            while Instant::now() < until {
                let batch: Vec<pb::Document> = (n..n + 4).map(kill_doc).collect();
                match docs
                    .upsert_documents(pb::UpsertDocumentsRequest {
                        collection: "scifact".into(),
                        documents: batch,
                    })
                    .await
                {
                    Ok(_) => acked.lock().unwrap().extend(n..n + 4),
                    Err(s) => {
                        clean(&s, "an upsert");
                        if failed == 0 {
                            eprintln!("first refused upsert: {s:?}");
                        }
                        failed += 1;
                    }
                }
                n += 4;
            }
            failed
        })
    };
    let searcher = {
        let channel = channel.clone();
        tokio::spawn(async move {
            let mut search = pb::search_client::SearchClient::new(channel);
            let (mut ok, mut failed) = (0, 0);
            while Instant::now() < until {
                let r = search
                    .search(pb::SearchRequest {
                        collection: "scifact".into(),
                        query: "vitamin D deficiency and bone density".into(),
                        top_k: 10,
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(r) => {
                        assert!(!r.into_inner().hits.is_empty());
                        ok += 1;
                    }
                    Err(s) => {
                        clean(&s, "a search");
                        if failed == 0 {
                            eprintln!("first refused search: {s:?}");
                        }
                        failed += 1;
                    }
                }
            }
            (ok, failed)
        })
    };
    let failed_writes = writer.await.unwrap();
    let (searches, failed_searches) = searcher.await.unwrap();
    let acked: Vec<usize> = acked.lock().unwrap().clone();
    eprintln!(
        "during the outage: {} writes acknowledged, {failed_writes} refused; {searches} searches served, {failed_searches} refused",
        acked.len() / 4
    );
    assert!(!acked.is_empty(), "no write succeeded with a node down");
    assert!(searches > 0, "no search succeeded with a node down");

    // The node returns on its storage; the cluster heals.
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.nodes[0].start()?;
        cluster.nodes[0].wait_ready(Duration::from_secs(120))?;
        cluster.wait_peers(3, Duration::from_secs(60))?;
        Ok::<_, quarry::Error>(cluster)
    })
    .await
    .unwrap()
    .expect("the node rejoins");

    // Nothing acknowledged is lost: each write is there, and found by its unique token.
    let ids: Vec<String> = acked.iter().map(|n| format!("kill-{n}")).collect();
    let mut documents = pb::documents_client::DocumentsClient::new(channel.clone());
    for chunk in ids.chunks(500) {
        let got = documents
            .get_documents(pb::GetDocumentsRequest {
                collection: "scifact".into(),
                ids: chunk.to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(got.missing.is_empty(), "lost: {:?}", got.missing);
    }
    let mut search = pb::search_client::SearchClient::new(channel.clone());
    for n in acked.iter().step_by(7) {
        let hits = search
            .search(pb::SearchRequest {
                collection: "scifact".into(),
                query: format!("zk{n}q"),
                mode: pb::SearchMode::Lexical as i32,
                top_k: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .hits;
        assert_eq!(hits[0].document_id, format!("kill-{n}"));
    }
    let after = hybrid_ndcg(&channel, &scifact).await;
    eprintln!("hybrid nDCG@10 after the node returned: {after:.4}");
    assert!((after - before).abs() < 0.005, "{before} -> {after}");
    drop(server);
    drop(cluster);
}

/// A child process killed when dropped (also when the test fails).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
