//! A real Qdrant node, as the Qdrant backend's tests will run it (issue 24): the binary that
//! `scripts/provision-qdrant.sh` provides (built once from ../shared/vendor) starts on free
//! loopback ports with its own storage directory, becomes ready, stores and finds points
//! over its REST API, and stops by pid. Where ../shared is absent the test says so loudly
//! and skips.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The Qdrant binary, or `None` (said loudly) when it cannot be provisioned here.
fn qdrant() -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/provision-qdrant.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("bash runs");
    match out.status.code() {
        Some(0) => {}
        Some(3) => {
            eprintln!("!!! SKIPPED: no Qdrant on this machine (see above) !!!");
            return None;
        }
        _ => panic!("scripts/provision-qdrant.sh failed"),
    }
    let path = String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()?
        .to_string();
    Some(PathBuf::from(path))
}

/// A Qdrant process, killed when dropped.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test]
async fn a_qdrant_node_starts_stores_finds_and_stops() {
    let Some(bin) = qdrant() else { return };
    quarry::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (http_port, grpc_port) = (free_port(), free_port());
    let child = Command::new(&bin)
        .current_dir(dir.path())
        .env("QDRANT__SERVICE__HOST", "127.0.0.1")
        .env("QDRANT__SERVICE__HTTP_PORT", http_port.to_string())
        .env("QDRANT__SERVICE__GRPC_PORT", grpc_port.to_string())
        .env("QDRANT__STORAGE__STORAGE_PATH", dir.path().join("storage"))
        .env(
            "QDRANT__STORAGE__SNAPSHOTS_PATH",
            dir.path().join("snapshots"),
        )
        .env("QDRANT__TELEMETRY_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qdrant starts");
    let node = Node(child);
    let base = format!("http://127.0.0.1:{http_port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let ready = http.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "qdrant never became ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    let found = ok(http
        .post(format!("{base}/collections/t/points/query"))
        .json(&json!({"query": [0.1, 0.9, 0.0, 0.0], "limit": 1, "with_payload": true}))
        .send()
        .await
        .unwrap())
    .await;
    assert_eq!(found["result"]["points"][0]["id"], 2, "{found}");
    assert_eq!(
        found["result"]["points"][0]["payload"]["doc"], "b",
        "{found}"
    );
    drop(node);
}
