//! The two front doors side by side: the same SciFact searches through gRPC and through the
//! HTTP/JSON API of one real `quarry serve` (release), one client, interleaved query by query
//! (the door that goes first alternates) so both see the same machine noise and the same
//! query cache. Prints p50 / p99 per door and their ratio; asserts nothing about speed.
//!
//! `cargo bench --bench doors` (needs `../shared/datasets/scifact` or QUARRY_SCIFACT; data in
//! QUARRY_BENCH_DATA, default `target/bench-doors`, so the collection is ingested once).
//! `QUARRY_DOORS_ROUNDS` (default 5) rounds over the 300 test queries after one warm-up round.

mod support;

use std::path::PathBuf;
use std::time::Instant;

use quarry::eval::beir::Dataset;
use quarry::eval::run::percentile;
use quarry::grpc::pb;

fn main() -> anyhow::Result<()> {
    let dir = support::scifact_or_exit();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(dir))
}

async fn run(dir: PathBuf) -> anyhow::Result<()> {
    quarry::tls::install_crypto_provider();
    let rounds: usize = std::env::var("QUARRY_DOORS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let data = std::env::var_os("QUARRY_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-doors"));
    let server = support::start_server(&data, &[]);
    let channel = quarry::client::connect(&server.url, &Default::default()).await?;
    let dataset = Dataset::open(&dir)?;
    quarry::client::ensure_collection(channel.clone(), "scifact", &Default::default()).await?;
    let docs = quarry::client::load::load_jsonl(&dataset.corpus_path()?)?;
    quarry::client::ingest(channel.clone(), "scifact", docs, false).await?;
    let queries = support::scifact_test_queries(&dataset)?;
    let http = reqwest::Client::new();
    let mut search = pb::search_client::SearchClient::new(channel);
    let url = format!("{}/v1/collections/scifact/search", server.http);
    let (mut grpc_ms, mut http_ms) = (Vec::new(), Vec::new());
    for round in 0..=rounds {
        for (i, q) in queries.iter().enumerate() {
            let mut one = async |door: usize| -> anyhow::Result<f64> {
                let started = Instant::now();
                if door == 0 {
                    let r = pb::SearchRequest {
                        collection: "scifact".into(),
                        query: q.clone(),
                        top_k: 10,
                        ..Default::default()
                    };
                    search.search(r).await?;
                } else {
                    let body = serde_json::json!({"query": q, "top_k": 10});
                    let r = http.post(&url).json(&body).send().await?;
                    anyhow::ensure!(r.status().is_success(), "HTTP {}", r.status());
                    r.bytes().await?;
                }
                Ok(started.elapsed().as_secs_f64() * 1000.0)
            };
            let first = (i + round) % 2;
            for door in [first, 1 - first] {
                let ms = one(door).await?;
                // Round 0 warms the query cache for both doors.
                if round > 0 {
                    [&mut grpc_ms, &mut http_ms][door].push(ms);
                }
            }
        }
    }
    grpc_ms.sort_by(f64::total_cmp);
    http_ms.sort_by(f64::total_cmp);
    let (g50, h50) = (percentile(&grpc_ms, 0.5), percentile(&http_ms, 0.5));
    println!(
        "== front doors: hybrid search top_k 10, SciFact test queries, one client, {rounds} rounds after a warm-up; CPU: {}, 2 cores ==",
        support::cpu_name()
    );
    println!(
        "  gRPC: {} searches, p50 {g50:.3} ms, p99 {:.3} ms",
        grpc_ms.len(),
        percentile(&grpc_ms, 0.99)
    );
    println!(
        "  HTTP/JSON: {} searches, p50 {h50:.3} ms, p99 {:.3} ms",
        http_ms.len(),
        percentile(&http_ms, 0.99)
    );
    println!("  HTTP p50 / gRPC p50 = {:.3}", h50 / g50);
    Ok(())
}
