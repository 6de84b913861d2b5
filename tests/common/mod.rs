//! Shared test support: provisions the real model (the same code as `quarry model fetch`) and
//! runs a real server on a loopback port.
#![allow(dead_code)]

pub mod cli;
pub mod fake_router;
#[allow(dead_code)]
pub mod generations;
#[allow(dead_code)]
pub mod llama;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use quarry::answer::Answerer;
use quarry::config::Config;
use quarry::engine::Engine;
use quarry::grpc::pb;
use quarry::jobs::JobSettings;
use quarry::model::{catalog, fetch};
use quarry::server::{LocalServer, ServeOptions};
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

/// The library's in-process server ([`LocalServer`]) with test-friendly signatures: starting
/// and stopping panic on failure.
pub struct TestServer {
    pub url: String,
    /// The HTTP/JSON door of the same server.
    #[allow(dead_code)]
    pub http_url: String,
    inner: LocalServer,
}

impl TestServer {
    /// Opens the engine `config` describes and serves it, with the Answers service when
    /// `config.answer` names routers.
    pub async fn start(config: Config) -> TestServer {
        let answerer = Answerer::configured(config.answer.clone()).expect("answer settings");
        let keys = config.keys().expect("auth settings");
        let tls = quarry::grpc::server_tls(&config.tls).expect("TLS settings");
        let http_tls = quarry::tls::server_config(&config.tls).expect("TLS settings");
        let admission = config.admission.clone();
        let jobs = config.jobs().expect("job settings");
        let engine = tokio::task::spawn_blocking(move || config.open_engine())
            .await
            .unwrap()
            .expect("engine opens");
        Self::serve_with(
            engine,
            ServeOptions {
                answerer,
                keys,
                tls,
                http_tls,
                admission,
                readiness: None,
            },
            jobs,
        )
        .await
    }

    /// Serves an engine opened by the test (for example over the hash embedder).
    pub async fn serve(engine: Engine) -> TestServer {
        Self::serve_with(engine, ServeOptions::default(), Default::default()).await
    }

    async fn serve_with(engine: Engine, options: ServeOptions, jobs: JobSettings) -> TestServer {
        let inner = LocalServer::start(Arc::new(engine), options, jobs)
            .await
            .expect("server starts");
        TestServer {
            url: inner.url.clone(),
            http_url: inner.http_url.clone(),
            inner,
        }
    }

    /// The engine being served now (it changes when the storage is reopened).
    pub fn engine(&self) -> Arc<Engine> {
        self.inner.engine().expect("an engine is being served")
    }

    /// Times the server reopened its data directory after a storage failure.
    pub fn reopens(&self) -> u64 {
        self.inner.live.reopens()
    }

    /// Creates `name` with default settings (panics on failure).
    pub async fn create_collection(&self, name: &str) {
        pb::collections_client::CollectionsClient::new(self.channel().await)
            .create_collection(pb::CreateCollectionRequest {
                name: name.into(),
                config: None,
            })
            .await
            .expect("create collection");
    }

    /// One search over a fresh client.
    pub async fn search(&self, r: pb::SearchRequest) -> Result<pb::SearchResponse, tonic::Status> {
        pb::search_client::SearchClient::new(self.channel().await)
            .search(r)
            .await
            .map(|r| r.into_inner())
    }

    pub async fn channel(&self) -> Channel {
        self.inner
            .channel()
            .await
            .expect("server accepts connections")
    }

    /// Graceful shutdown: in-flight requests finish, state is checkpointed, and the data
    /// directory is released before this returns.
    pub async fn stop(self) {
        self.inner.stop().await.expect("server exits cleanly");
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

/// Starts the real `quarry serve` on free loopback ports (gRPC and operations) over `data`,
/// with `extra` arguments, and waits until it listens. Returns the child and its gRPC URL; the
/// server's log goes to the test's stderr, prefixed.
pub fn start_binary(data: &Path, extra: &[&str]) -> (std::process::Child, String) {
    let (child, url, _) = start_binary_doors(data, extra);
    (child, url)
}

/// [`start_binary`], returning the HTTP/JSON door's URL too (empty when the server turned it
/// off: with TLS).
pub fn start_binary_doors(data: &Path, extra: &[&str]) -> (std::process::Child, String, String) {
    let (child, grpc, http, _) = start_binary_all(data, extra);
    (child, grpc, http)
}

/// [`start_binary_doors`], returning the operations listener's address (`/readyz`) too.
pub fn start_binary_all(
    data: &Path,
    extra: &[&str],
) -> (std::process::Child, String, String, String) {
    use std::io::{BufRead, BufReader};
    let models = provision();
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .arg("--models-dir")
        .arg(&models)
        .env("QUARRY_EMBED_WORKERS", "2")
        .env_remove("QUARRY_API_KEY")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start quarry serve");
    // The server logs its bound addresses; port 0 lets the OS pick free ones.
    let stderr = server.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[server] {line}");
            if line.contains("HTTP/JSON API is OFF") {
                let _ = tx.send(("http", String::new()));
            }
            for (door, key) in [
                ("grpc", " addr="),
                ("http", " http_addr="),
                ("ops", " metrics_addr="),
            ] {
                if let Some(rest) = line.split(key).nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send((door, addr));
                }
            }
        }
    });
    let (mut grpc, mut http, mut ops) = (None, None, None);
    while grpc.is_none() || http.is_none() || ops.is_none() {
        let (door, addr) = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("server announced its addresses");
        let url = Some(if addr.is_empty() {
            String::new()
        } else {
            format!("http://{addr}")
        });
        match door {
            "grpc" => grpc = url,
            "http" => http = url,
            _ => ops = Some(addr),
        }
    }
    (server, grpc.unwrap(), http.unwrap(), ops.unwrap())
}

/// POSTs `body` as JSON with `key` as its bearer token and returns the reply's JSON,
/// whatever its status (the caller asserts on it).
#[allow(dead_code)]
pub async fn post_json(url: &str, key: &str, body: serde_json::Value) -> serde_json::Value {
    quarry::tls::install_crypto_provider();
    reqwest::Client::new()
        .post(url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `message` with `authorization: Bearer KEY` when a key is given.
pub fn keyed<T>(message: T, key: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(k) = key {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    r
}

/// A Python virtualenv named `name` with `packages` (pinned requirement strings) installed
/// from PyPI, created once and cached next to the models; its directory. Reinstalled when the
/// pins change.
#[allow(dead_code)]
pub fn python_venv(name: &str, packages: &[&str]) -> PathBuf {
    use std::process::Command;
    let venv = quarry::config::default_models_dir()
        .parent()
        .map(|p| p.join(name))
        .unwrap_or_else(|| PathBuf::from("target").join(name));
    let ready = venv.join(".ready");
    let pins = packages.join(" ");
    if std::fs::read_to_string(&ready).unwrap_or_default() != pins {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 is needed for this test")
            .success();
        assert!(ok, "python3 -m venv failed");
        let ok = Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages)
            .status()
            .unwrap()
            .success();
        assert!(ok, "pip install {pins} failed");
        std::fs::write(&ready, pins).unwrap();
    }
    venv
}

/// The Qdrant binary `scripts/provision-qdrant.sh` provides (built once per machine from
/// ../shared/vendor), or `None`, said loudly, where it cannot be had.
#[allow(dead_code)]
pub fn qdrant_binary() -> Option<PathBuf> {
    quarry::qdrant::node::provisioned_binary(Path::new(env!("CARGO_MANIFEST_DIR")))
        .expect("scripts/provision-qdrant.sh runs")
}

/// nDCG@10 per run of a BEIR collection's test split (`dir`) evaluated on `collection`
/// through the Eval RPC (`runs` empty: lexical, dense and hybrid).
#[allow(dead_code)]
pub async fn test_split_ndcg(
    channel: &Channel,
    dir: &Path,
    collection: &str,
    runs: Vec<pb::EvalRunSpec>,
) -> Vec<(String, f64)> {
    let set = quarry::eval::beir::Dataset::open(dir).unwrap();
    let texts = set.queries().unwrap();
    let mut queries: Vec<pb::EvalQuery> = set
        .qrels("test")
        .unwrap()
        .into_iter()
        .filter_map(|(id, judgments)| {
            Some(pb::EvalQuery {
                text: texts.get(&id)?.clone(),
                id,
                judgments,
            })
        })
        .collect();
    queries.sort_by(|a, b| a.id.cmp(&b.id));
    let request = pb::EvalRequest {
        collection: collection.into(),
        queries,
        runs,
        depth: 100,
        compare: vec![],
        split: String::new(),
    };
    let mut stream = pb::eval_client::EvalClient::new(channel.clone())
        .evaluate(request)
        .await
        .expect("eval")
        .into_inner();
    let mut result = None;
    while let Some(m) = stream.message().await.unwrap() {
        if m.result.is_some() {
            result = m.result;
        }
    }
    result
        .expect("a final result")
        .runs
        .into_iter()
        .map(|run| (run.name, run.metrics.map_or(0.0, |m| m.ndcg_at_10)))
        .collect()
}

/// SciFact's directory (`QUARRY_SCIFACT`, else `../shared/datasets/scifact`), or `None`, said
/// loudly.
#[allow(dead_code)]
pub fn scifact() -> Option<PathBuf> {
    let dir = std::env::var_os("QUARRY_SCIFACT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/scifact")
        });
    if !dir.join("corpus.jsonl.gz").exists() {
        eprintln!(
            "!!! SKIPPED: SciFact not found (QUARRY_SCIFACT or ../shared/datasets/scifact) !!!"
        );
        return None;
    }
    Some(dir)
}
