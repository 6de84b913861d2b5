//! A real Qdrant node, as the Qdrant backend's tests run it: the binary that
//! `scripts/provision-qdrant.sh` provides (built once from ../shared/vendor) starts on free
//! loopback ports with its own storage directory (`quarry::qdrant::node`), becomes ready,
//! stores and finds points over its REST API, stops by pid, and starts again on its storage
//! with its points. Where ../shared is absent the test says so loudly and skips.

mod common;

use serde_json::{json, Value};

use quarry::qdrant::node::QdrantNode;

#[tokio::test]
async fn a_qdrant_node_starts_stores_finds_stops_and_restarts() {
    let Some(bin) = common::qdrant_binary() else {
        return;
    };
    quarry::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut node = tokio::task::spawn_blocking({
        let (bin, dir) = (bin.clone(), dir.path().to_path_buf());
        move || QdrantNode::single(&bin, &dir)
    })
    .await
    .unwrap()
    .expect("qdrant starts");
    let base = format!("http://127.0.0.1:{}", node.http_port);
    let http = reqwest::Client::new();
    let ok = |r: reqwest::Response| async move {
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert!(status.is_success(), "{status}: {body}");
        body
    };
    ok(http
        .put(format!("{base}/collections/t"))
        .json(&json!({"vectors": {"size": 4, "distance": "Cosine"}}))
        .send()
        .await
        .unwrap())
    .await;
    ok(http
        .put(format!("{base}/collections/t/points?wait=true"))
        .json(&json!({"points": [
            {"id": 1, "vector": [1.0, 0.0, 0.0, 0.0], "payload": {"doc": "a"}},
            {"id": 2, "vector": [0.0, 1.0, 0.0, 0.0], "payload": {"doc": "b"}},
        ]}))
        .send()
        .await
        .unwrap())
    .await;
    let query = json!({"query": [0.1, 0.9, 0.0, 0.0], "limit": 1, "with_payload": true});
    let found = ok(http
        .post(format!("{base}/collections/t/points/query"))
        .json(&query)
        .send()
        .await
        .unwrap())
    .await;
    assert_eq!(found["result"]["points"][0]["id"], 2, "{found}");
    assert_eq!(
        found["result"]["points"][0]["payload"]["doc"], "b",
        "{found}"
    );
    // kill -9, then the same storage again: the acknowledged points are there.
    node.kill();
    assert!(http.get(format!("{base}/readyz")).send().await.is_err());
    let node = tokio::task::spawn_blocking(move || {
        node.start()?;
        node.wait_ready(std::time::Duration::from_secs(120))?;
        Ok::<_, quarry::Error>(node)
    })
    .await
    .unwrap()
    .expect("qdrant restarts");
    let found = ok(http
        .post(format!("{base}/collections/t/points/query"))
        .json(&query)
        .send()
        .await
        .unwrap())
    .await;
    assert_eq!(found["result"]["points"][0]["id"], 2, "{found}");
    drop(node);
}
