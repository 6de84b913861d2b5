//! Shared test support: provisions the real model (the same code as `quarry model fetch`) and
//! runs a real server on a loopback port.
#![allow(dead_code)]

pub mod fake_router;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use quarry::config::Config;
use quarry::engine::Engine;
use quarry::grpc::pb;
use quarry::model::{catalog, fetch};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// Provisions ONNX Runtime and the default model once per test process (cached on disk).
pub fn provision() -> PathBuf {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = quarry::config::default_models_dir();
        let mut say = |m: &str| eprintln!("[provision] {m}");
        fetch::ensure(&catalog::ONNXRUNTIME, &dir, &mut say).expect("provision ONNX Runtime");
        fetch::ensure(&catalog::MODELS[0], &dir, &mut say).expect("provision the default model");
        dir
    })
    .clone()
}

pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: data_dir.to_path_buf(),
        models_dir: provision(),
        embed_workers: 2,
        ..Config::default()
    };
    config.limits.max_document_bytes = 64 * 1024;
    config.limits.max_batch_documents = 40;
    config
}

pub struct TestServer {
    pub url: String,
    pub engine: Arc<Engine>,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let engine = Arc::new(
            tokio::task::spawn_blocking(move || Engine::open(config))
                .await
                .unwrap()
                .expect("engine opens"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(quarry::grpc::serve(engine.clone(), listener, async {
            let _ = rx.await;
        }));
        TestServer {
            url,
            engine,
            stop: Some(tx),
            handle,
        }
    }

    pub async fn channel(&self) -> Channel {
        for _ in 0..50 {
            if let Ok(c) = Channel::from_shared(self.url.clone())
                .unwrap()
                .connect()
                .await
            {
                return c;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("server at {} never accepted a connection", self.url);
    }

    /// Graceful shutdown: in-flight requests finish, state is checkpointed.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.handle.await.unwrap().expect("server exits cleanly");
        // Wait for connection tasks to release the engine, so the data directory is closed
        // (sled holds a lock on it) before a test reopens it.
        let mut engine = self.engine;
        for _ in 0..200 {
            match Arc::try_unwrap(engine) {
                Ok(e) => {
                    drop(e);
                    return;
                }
                Err(e) => engine = e,
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("the engine is still referenced after shutdown");
    }
}

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/mini")
}

pub fn fixture_docs() -> Vec<pb::Document> {
    quarry::client::load::load_jsonl(&fixture_dir().join("corpus.jsonl")).unwrap()
}

/// Creates `name` with default settings and upserts the fixture corpus into it.
pub async fn create_fixture_collection(channel: &Channel, name: &str) {
    pb::collections_client::CollectionsClient::new(channel.clone())
        .create_collection(pb::CreateCollectionRequest {
            name: name.into(),
            config: None,
        })
        .await
        .expect("create the fixture collection");
    pb::documents_client::DocumentsClient::new(channel.clone())
        .upsert_documents(pb::UpsertDocumentsRequest {
            collection: name.into(),
            documents: fixture_docs(),
        })
        .await
        .expect("upsert the fixture corpus");
}

pub fn doc(id: &str, text: &str) -> pb::Document {
    pb::Document {
        id: id.into(),
        text: text.into(),
        ..Default::default()
    }
}
