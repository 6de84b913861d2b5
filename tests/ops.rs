//! Operating the server: /metrics, /healthz and /readyz from the real binary, request ids,
//! admission control shedding load with RESOURCE_EXHAUSTED, and server work stopping at the
//! client's deadline.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{doc, TestServer};
use quarry::engine::{Engine, EngineConfig};
use quarry::grpc::observe::{AdmissionSettings, ClassLimit};
use quarry::grpc::pb;
use quarry::model::hashed::{HashEmbedder, HashModels};
use quarry::model::Embedder;
use quarry::server::{LocalServer, ServeOptions};
use tonic::Code;

/// GET `path` on `addr`: (status code, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

/// The value of the sample `line_prefix` (a metric name with its labels) in `metrics`.
fn sample(metrics: &str, line_prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line_prefix} missing from:\n{metrics}"))
}

#[test]
fn the_binary_serves_metrics_health_and_readiness() {
    let bin = env!("CARGO_BIN_EXE_quarry");
    let data = tempfile::tempdir().unwrap();
    let models = common::provision();
    // Killed on drop, so a failed assertion never leaves a server holding the test's pipes.
    let mut server = common::cli::Server(
        Command::new(bin)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(["--log-format", "json", "--data-dir"])
            .arg(data.path())
            .arg("--models-dir")
            .arg(&models)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = server.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // JSON logs: one object per line.
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
            for key in ["metrics_addr", "addr"] {
                if let Some(a) = v["fields"][key].as_str() {
                    let _ = tx.send((key, a.to_string()));
                }
            }
        }
    });
    let mut metrics_addr = None;
    let mut grpc_addr = None;
    while metrics_addr.is_none() || grpc_addr.is_none() {
        let (key, addr) = rx.recv_timeout(Duration::from_secs(120)).unwrap();
        match key {
            "metrics_addr" => {
                // Up before it is ready: live now, ready once the server listens.
                assert_eq!(get(&addr, "/healthz").0, 200);
                metrics_addr = Some(addr);
            }
            _ => grpc_addr = Some(addr),
        }
    }
    let (metrics_addr, grpc_addr) = (metrics_addr.unwrap(), grpc_addr.unwrap());
    let url = format!("http://{grpc_addr}");
    assert_eq!(get(&metrics_addr, "/readyz"), (200, "ready\n".to_string()));
    assert_eq!(get(&metrics_addr, "/nope").0, 404);
    let ingest = Command::new(bin)
        .args([
            "ingest",
            "--quiet",
            "--server",
            &url,
            "--collection",
            "mini",
        ])
        .arg(common::fixture_dir().join("corpus.jsonl"))
        .output()
        .unwrap();
    assert!(ingest.status.success());
    for _ in 0..3 {
        let search = Command::new(bin)
            .args(["search", "--server", &url, "--collection", "mini", "ATP"])
            .output()
            .unwrap();
        assert!(search.status.success());
    }
    let (code, m) = get(&metrics_addr, "/metrics");
    assert_eq!(code, 200);
    assert!(sample(&m, "quarry_grpc_requests_total{service=\"quarry.v1.Search\",method=\"Search\",code=\"OK\"}") >= 3.0);
    assert!(sample(&m, "quarry_grpc_request_duration_seconds_count{service=\"quarry.v1.Search\",method=\"Search\"}") >= 3.0);
    assert!(
        sample(
            &m,
            "quarry_ingest_documents_total{collection=\"mini\",outcome=\"created\"}"
        ) > 0.0
    );
    assert!(sample(&m, "quarry_ingest_chunks_total{collection=\"mini\"}") > 0.0);
    // The same query three times: embedded once, then answered by the query cache.
    assert!(
        sample(
            &m,
            "quarry_embed_batch_duration_seconds_count{kind=\"query\"}"
        ) >= 1.0
    );
    assert!(sample(&m, "quarry_query_cache_requests_total{result=\"miss\"}") >= 1.0);
    assert!(sample(&m, "quarry_query_cache_requests_total{result=\"hit\"}") >= 2.0);
    assert!(sample(&m, "quarry_query_embeddings_total{session=\"wide\"}") >= 1.0);
    assert!(sample(&m, "quarry_search_candidates_total{retriever=\"lexical\"}") > 0.0);
    let docs = sample(&m, "quarry_collection_documents{collection=\"mini\"}");
    assert!(docs > 0.0);
    assert_eq!(
        sample(&m, "quarry_hnsw_tombstones{collection=\"mini\"}"),
        0.0
    );
    assert_eq!(sample(&m, "quarry_ready "), 1.0);
    assert_eq!(sample(&m, "quarry_storage_healthy "), 1.0);
    assert!(m.contains("# TYPE quarry_grpc_request_duration_seconds histogram"));
    let _ = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status();
    let _ = server.0.wait();
}

/// With a queue-delay budget, a call whose predicted wait (calls ahead times the class's
/// recent service time) is over the budget is refused at once, though the queue has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_predicted_wait_over_the_budget_is_refused_at_once() {
    let admission = AdmissionSettings {
        read: ClassLimit {
            in_flight: 1,
            queue: 8,
            max_queue_delay_ms: 150,
        },
        ..Default::default()
    };
    let (server, _data) = slow_server(admission, Duration::from_millis(300)).await;
    let channel = server.channel().await.unwrap();
    let search = |query: String| {
        let mut client = pb::search_client::SearchClient::new(channel.clone());
        async move {
            let started = Instant::now();
            let r = client
                .search(pb::SearchRequest {
                    collection: "c".into(),
                    query,
                    mode: pb::SearchMode::Dense as i32,
                    ..Default::default()
                })
                .await;
            (
                r.map(|_| ())
                    .map_err(|s| (s.code(), s.message().to_string())),
                started.elapsed(),
            )
        }
    };
    // Alone: no wait, and the class learns a search takes about 300 ms.
    assert!(search("basalt one".into()).await.0.is_ok());
    let calls: Vec<_> = (0..4)
        .map(|i| tokio::spawn(search(format!("basalt {i}"))))
        .collect();
    let (mut ok, mut shed) = (0, 0);
    for c in calls {
        match c.await.unwrap() {
            (Ok(()), _) => ok += 1,
            (Err((Code::ResourceExhausted, message)), took) => {
                shed += 1;
                assert!(took < Duration::from_millis(150), "refusal waited {took:?}");
                assert!(message.contains("max_queue_delay_ms"), "{message}");
            }
            (Err(e), _) => panic!("unexpected {e:?}"),
        }
    }
    // One runs; each other would wait at least 300 ms > 150 ms: refused, queue or not.
    assert_eq!((ok, shed), (1, 3));
    server.stop().await.unwrap();
}

async fn slow_server(
    admission: AdmissionSettings,
    query_delay: Duration,
) -> (LocalServer, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(32).unwrap().with_query_delay(query_delay));
    let engine = Engine::open(
        EngineConfig::new(data.path(), "hash"),
        Arc::new(HashModels(embedder)),
    )
    .unwrap();
    engine.create_collection("c", Default::default()).unwrap();
    engine
        .upsert(
            "c",
            vec![quarry::engine::DocumentInput {
                id: "a".into(),
                text: "basalt columns".into(),
                ..Default::default()
            }],
        )
        .await
        .unwrap();
    let options = ServeOptions {
        admission,
        ..Default::default()
    };
    let server = LocalServer::start(Arc::new(engine), options, Default::default())
        .await
        .unwrap();
    (server, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_with_resource_exhausted_at_once() {
    let admission = AdmissionSettings {
        read: ClassLimit {
            in_flight: 1,
            queue: 1,
            max_queue_delay_ms: 0,
        },
        ..Default::default()
    };
    let (server, _data) = slow_server(admission, Duration::from_millis(400)).await;
    let channel = server.channel().await.unwrap();
    let before = quarry::metrics::global().grpc_rejected.get(&["read"]);
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let mut client = pb::search_client::SearchClient::new(channel.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let r = client
                    .search(pb::SearchRequest {
                        collection: "c".into(),
                        query: "basalt".into(),
                        mode: pb::SearchMode::Dense as i32,
                        ..Default::default()
                    })
                    .await;
                (r.map(|_| ()).map_err(|s| s.code()), started.elapsed())
            })
        })
        .collect();
    let mut ok = 0;
    let mut shed = 0;
    for c in calls {
        match c.await.unwrap() {
            (Ok(()), _) => ok += 1,
            (Err(Code::ResourceExhausted), took) => {
                shed += 1;
                assert!(
                    took < Duration::from_millis(350),
                    "shedding waited {took:?}"
                );
            }
            (Err(code), _) => panic!("unexpected {code:?}"),
        }
    }
    // One runs, one waits, the rest are refused at once.
    assert!(
        ok >= 2 && shed >= 1 && ok + shed == 6,
        "ok {ok}, shed {shed}"
    );
    assert!(quarry::metrics::global().grpc_rejected.get(&["read"]) - before >= shed as f64);
    // Health checks are never queued behind the load.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_or_made_up() {
    let (server, _data) = slow_server(AdmissionSettings::default(), Duration::ZERO).await;
    let channel = server.channel().await.unwrap();
    let mut client = pb::collections_client::CollectionsClient::new(channel);
    let mut r = tonic::Request::new(pb::ListCollectionsRequest {});
    r.metadata_mut()
        .insert("x-request-id", "job-42.a".parse().unwrap());
    let reply = client.list_collections(r).await.unwrap();
    assert_eq!(reply.metadata().get("x-request-id").unwrap(), "job-42.a");
    // None, or one that is not a short token: a fresh id.
    for given in [None, Some("bad id with spaces")] {
        let mut r = tonic::Request::new(pb::ListCollectionsRequest {});
        if let Some(g) = given {
            r.metadata_mut().insert("x-request-id", g.parse().unwrap());
        }
        let reply = client.list_collections(r).await.unwrap();
        let id = reply
            .metadata()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(id.len(), 16, "{id}");
    }
    // Errors carry it too.
    let e = client
        .get_collection(pb::GetCollectionRequest {
            name: "missing".into(),
        })
        .await
        .unwrap_err();
    assert!(e.metadata().get("x-request-id").is_some());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_work_stops_at_the_client_deadline() {
    let data = tempfile::tempdir().unwrap();
    let embedder = Arc::new(
        HashEmbedder::new(32)
            .unwrap()
            .with_delay(Duration::from_millis(20)),
    );
    let engine = Engine::open(
        EngineConfig::new(data.path(), "hash"),
        Arc::new(HashModels(embedder.clone())),
    )
    .unwrap();
    engine.create_collection("c", Default::default()).unwrap();
    let server = TestServer::serve(engine).await;
    let mut docs = pb::documents_client::DocumentsClient::new(server.channel().await);
    // 200 documents take ~4 s to embed; the client allows 300 ms.
    let batch: Vec<pb::Document> = (0..200)
        .map(|i| doc(&format!("d{i}"), "granite quarry stone"))
        .collect();
    let mut r = tonic::Request::new(pb::UpsertDocumentsRequest {
        collection: "c".into(),
        documents: batch,
    });
    r.set_timeout(Duration::from_millis(300));
    let e = docs.upsert_documents(r).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    // The embedding stops within a slice of work (32 texts) and nothing is committed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let embedded = embedder.documents_embedded();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(embedder.documents_embedded(), embedded, "embedding went on");
    assert!(embedded < 200, "all {embedded} documents were embedded");
    let info = pb::collections_client::CollectionsClient::new(server.channel().await)
        .get_collection(pb::GetCollectionRequest { name: "c".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.document_count, 0);
    server.stop().await;
}

/// The operations endpoint has no keys and names every collection: the binary refuses to put
/// it on a non-loopback address unless told to.
#[test]
fn metrics_off_loopback_need_an_explicit_yes() {
    let bin = env!("CARGO_BIN_EXE_quarry");
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "0.0.0.0:0",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("QUARRY_METRICS_ALLOW_REMOTE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("metrics_allow_remote"), "{err}");
    // The config check says yes once told.
    let mut config = quarry::config::Config {
        metrics_listen: "0.0.0.0:9464".into(),
        ..Default::default()
    };
    assert!(config.validate().is_err());
    config.metrics_allow_remote = true;
    config.validate().unwrap();
}
