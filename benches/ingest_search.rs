//! Ingest and search benchmark on SciFact (prints figures; asserts nothing about speed).
//!
//! `cargo bench --bench ingest_search` (needs `../shared/datasets/scifact` or QUARRY_SCIFACT):
//! 1. Ingests the 5,183-document corpus through a real gRPC stream into a real server and
//!    prints docs/s and chunks/s, next to raw fastembed throughput on the same chunk texts
//!    measured in the same run (one session using every core, batch 1).
//! 2. Runs the 300 test queries per mode through one persistent gRPC client and prints
//!    p50/p95/p99 latency (top 10, query embedding included), plus nDCG@10 and recall@100
//!    at document level as a sanity check.
//! 3. Prints peak RSS.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use quarry::chunk::titled;
use quarry::chunk::{self, ChunkSettings};
use quarry::config::Config;
use quarry::eval::run::percentile;
use quarry::eval::{beir::Dataset, metrics};
use quarry::grpc::pb;
use quarry::model::{catalog, fetch, init_runtime, ModelFiles};

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let dir = support::scifact_or_exit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(dir))
}

async fn run(dir: PathBuf) -> anyhow::Result<()> {
    let models_dir = quarry::config::default_models_dir();
    let mut say = |m: &str| eprintln!("{m}");
    fetch::ensure(&catalog::ONNXRUNTIME, &models_dir, &mut say)?;
    let model_dir = fetch::ensure(&catalog::MODELS[0], &models_dir, &mut say)?;
    let data = tempfile::tempdir()?;
    let config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: data.path().to_path_buf(),
        models_dir: models_dir.clone(),
        // Every mode's pass embeds its queries: the query cache would serve the later modes
        // the vectors the earlier ones computed.
        query_cache_entries: 0,
        ..Config::default()
    };
    let cores = config.effective_embed_workers();
    let engine = Arc::new(tokio::task::spawn_blocking(move || config.open_engine()).await??);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let live = quarry::service::Live::start(engine.clone(), Default::default())?;
    let server = tokio::spawn(quarry::server::serve(
        live,
        Default::default(),
        listener,
        None,
        async {
            let _ = stop_rx.await;
        },
    ));
    let channel = quarry::client::connect(&url, &Default::default()).await?;

    let dataset = Dataset::open(&dir)?;
    let docs = quarry::client::load::load_jsonl(&dataset.corpus_path()?)?;
    let n_docs = docs.len();
    quarry::client::ensure_collection(channel.clone(), "scifact", &Default::default()).await?;
    println!("== ingest: SciFact corpus, {n_docs} documents, {cores} cores ==");
    let report = quarry::client::ingest(channel.clone(), "scifact", docs.clone(), false).await?;
    let info = engine.collection("scifact")?.info();
    let chunks = info.chunk_count as usize;
    let pipe_docs = n_docs as f64 / report.seconds;
    let pipe_chunks = chunks as f64 / report.seconds;
    println!(
        "pipeline (gRPC stream -> chunk -> embed -> sled -> tantivy + HNSW): {:.1} s, {pipe_docs:.1} docs/s, {pipe_chunks:.1} chunks/s ({chunks} chunks)",
        report.seconds
    );

    // Raw fastembed on the same chunk texts: one session, every core, batch 1.
    let collection = engine.collection("scifact")?;
    let tokenizer = collection.embedder().tokenizer().clone();
    let record = collection.record().clone();
    let settings = ChunkSettings {
        max_tokens: record.chunk_tokens,
        overlap: record.chunk_overlap,
    };
    let mut texts = Vec::new();
    for d in &docs {
        for s in chunk::chunk(&d.text, false, settings, &tokenizer)? {
            texts.push(titled(&d.title, &d.text[s.start..s.end]));
        }
    }
    let env = init_runtime(&fetch::onnxruntime_path(&models_dir))?;
    let raw_secs = tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let mut session = ModelFiles::read(&model_dir)?.session(env, None)?;
        let started = Instant::now();
        for t in &texts {
            session.embed([t.as_str()], Some(1))?;
        }
        Ok(started.elapsed().as_secs_f64())
    })
    .await??;
    let raw_chunks = chunks as f64 / raw_secs;
    println!(
        "raw fastembed (same {chunks} chunk texts, 1 session x {cores} threads, batch 1): {raw_secs:.1} s, {:.1} docs/s, {raw_chunks:.1} chunks/s",
        n_docs as f64 / raw_secs
    );
    println!("pipeline / raw = {:.3}", pipe_chunks / raw_chunks);

    // Queries.
    let queries = dataset.queries()?;
    let qrels = dataset.qrels("test")?;
    let mut ids: Vec<&String> = qrels.keys().collect();
    ids.sort();
    let mut client = pb::search_client::SearchClient::new(channel.clone());
    println!(
        "\n== search: {} test queries per mode, one persistent gRPC client, top 10 ==",
        ids.len()
    );
    println!(
        "{:<8} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "mode", "p50 ms", "p95 ms", "p99 ms", "nDCG@10", "recall@100"
    );
    for (name, mode) in [
        ("lexical", pb::SearchMode::Lexical),
        ("dense", pb::SearchMode::Dense),
        ("hybrid", pb::SearchMode::Hybrid),
    ] {
        let request = |q: &str, top_k: u32| pb::SearchRequest {
            collection: "scifact".into(),
            query: q.to_string(),
            top_k,
            mode: mode as i32,
            group_by_document: true,
            ..Default::default()
        };
        for id in ids.iter().take(10) {
            client.search(request(&queries[*id], 10)).await?;
        }
        let mut lat = Vec::with_capacity(ids.len());
        for id in &ids {
            let started = Instant::now();
            client.search(request(&queries[*id], 10)).await?;
            lat.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        lat.sort_by(f64::total_cmp);
        let mut per_query = Vec::new();
        for id in &ids {
            let r = client
                .search(request(&queries[*id], 100))
                .await?
                .into_inner();
            let results: Vec<(String, f64)> = r
                .hits
                .into_iter()
                .map(|h| (h.document_id, h.score as f64))
                .collect();
            if let Some(m) = metrics::evaluate(&results, &qrels[*id]) {
                per_query.push(m);
            }
        }
        let m = metrics::mean(&per_query);
        println!(
            "{name:<8} {:>9.2} {:>9.2} {:>9.2} {:>9.4} {:>12.4}",
            percentile(&lat, 0.5),
            percentile(&lat, 0.95),
            percentile(&lat, 0.99),
            m.ndcg_10,
            m.recall_100
        );
    }
    println!("\npeak RSS: {:.0} MiB", peak_rss_mib());
    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}
