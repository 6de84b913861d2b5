//! Quarry's two backends side by side on SciFact, in one run: the embedded default, Qdrant on
//! one node, and Qdrant on a three-node cluster on loopback (3 shards, replication factor 2).
//! For each: a real `quarry serve` (release) ingests the corpus through gRPC (docs/s), the
//! Eval RPC scores the test split per mode (nDCG@10, recall@10), and hybrid searches of the
//! 300 test queries run from 1 client and from 8 concurrent clients (p50 / p99 latency and
//! searches/s). The query-vector cache is off, so every search embeds its query. Prints the
//! figures; asserts nothing about speed.
//!
//! `cargo bench --bench backends` (needs `../shared/datasets/scifact` or QUARRY_SCIFACT, and
//! the Qdrant binary of `scripts/provision-qdrant.sh`; without it only the embedded backend
//! runs, said loudly). Data under `target/bench-backends`, fresh each run.
//! `QUARRY_BACKENDS` (default `embedded,qdrant-1,qdrant-3`) picks the backends.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use quarry::eval::beir::Dataset;
use quarry::eval::run::percentile;
use quarry::grpc::pb;
use quarry::qdrant::node::{QdrantCluster, QdrantNode};

fn main() -> anyhow::Result<()> {
    let dir = support::scifact_or_exit();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(dir))
}

/// What keeps a backend's Qdrant processes alive (they stop when it drops).
#[allow(dead_code)]
enum Qdrant {
    None,
    Node(QdrantNode),
    Cluster(QdrantCluster),
}

#[derive(Default)]
struct Figures {
    docs_per_s: f64,
    ndcg: Vec<(String, f64, f64)>,
    one: (f64, f64, f64),
    eight: (f64, f64, f64),
}

async fn run(dir: PathBuf) -> anyhow::Result<()> {
    quarry::tls::install_crypto_provider();
    let project = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = project.join("target/bench-backends");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let wanted =
        std::env::var("QUARRY_BACKENDS").unwrap_or_else(|_| "embedded,qdrant-1,qdrant-3".into());
    let bin = quarry::qdrant::node::provisioned_binary(project)?;
    let dataset = Dataset::open(&dir)?;
    let docs = quarry::client::load::load_jsonl(&dataset.corpus_path()?)?;
    let queries = support::scifact_test_queries(&dataset)?;
    let eval = eval_request(&dataset)?;
    let mut results = Vec::new();
    for name in wanted.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let base = root.join(name);
        std::fs::create_dir_all(&base)?;
        let (qdrant, backend) = match (name, &bin) {
            ("embedded", _) => (Qdrant::None, String::new()),
            (_, None) => {
                eprintln!("!!! SKIPPED {name}: no Qdrant binary !!!");
                continue;
            }
            ("qdrant-1", Some(bin)) => {
                let (bin, d) = (bin.clone(), base.join("qdrant"));
                let node =
                    tokio::task::spawn_blocking(move || QdrantNode::single(&bin, &d)).await??;
                let url = node.url();
                (
                    Qdrant::Node(node),
                    format!("kind = \"qdrant\"\nurl = \"{url}\"\n"),
                )
            }
            ("qdrant-3", Some(bin)) => {
                let (bin, d) = (bin.clone(), base.join("qdrant"));
                let cluster =
                    tokio::task::spawn_blocking(move || QdrantCluster::start(&bin, &d, 3))
                        .await??;
                let url = cluster.urls()[0].clone();
                (
                    Qdrant::Cluster(cluster),
                    format!(
                        "kind = \"qdrant\"\nurl = \"{url}\"\nshard_number = 3\nreplication_factor = 2\n"
                    ),
                )
            }
            (other, _) => anyhow::bail!("unknown backend {other:?}"),
        };
        let config = base.join("quarry.toml");
        // Eight clients wait in the read queue rather than being refused (every backend alike).
        let mut toml =
            "query_cache_entries = 0\n[admission]\nread = { in_flight = 8, queue = 32 }\n"
                .to_string();
        if !backend.is_empty() {
            toml.push_str(&format!("[backend]\n{backend}"));
        }
        std::fs::write(&config, toml)?;
        let server =
            support::start_server(&base.join("data"), &["--config", &config.to_string_lossy()]);
        let f = measure(&server, &docs, &queries, eval.clone()).await?;
        // Each backend's figures as soon as they are measured (a later failure keeps them).
        eprintln!(
            "{name}: ingest {:.1} docs/s; hybrid p50/p99 {:.2}/{:.2} ms, {:.1}/s (1 client), {:.2}/{:.2} ms, {:.1}/s (8); nDCG@10/recall@10 {:?}",
            f.docs_per_s, f.one.0, f.one.1, f.one.2, f.eight.0, f.eight.1, f.eight.2, f.ndcg
        );
        results.push((name.to_string(), f));
        drop(server);
        drop(qdrant);
    }
    report(&results);
    Ok(())
}

fn eval_request(dataset: &Dataset) -> anyhow::Result<pb::EvalRequest> {
    let texts = dataset.queries()?;
    let mut queries: Vec<pb::EvalQuery> = dataset
        .qrels("test")?
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
    Ok(pb::EvalRequest {
        collection: "scifact".into(),
        queries,
        runs: vec![],
        depth: 100,
        compare: vec![],
        split: String::new(),
    })
}

async fn measure(
    server: &support::Server,
    docs: &[pb::Document],
    queries: &[String],
    eval: pb::EvalRequest,
) -> anyhow::Result<Figures> {
    let channel = quarry::client::connect(&server.url, &Default::default()).await?;
    quarry::client::ensure_collection(channel.clone(), "scifact", &Default::default()).await?;
    let started = Instant::now();
    let report = quarry::client::ingest(channel.clone(), "scifact", docs.to_vec(), false).await?;
    let docs_per_s = report.documents as f64 / started.elapsed().as_secs_f64();
    let mut f = Figures {
        docs_per_s,
        ..Default::default()
    };
    let mut stream = pb::eval_client::EvalClient::new(channel.clone())
        .evaluate(eval)
        .await?
        .into_inner();
    while let Some(m) = stream.message().await? {
        if let Some(r) = m.result {
            for run in r.runs {
                let m = run.metrics.unwrap_or_default();
                f.ndcg.push((run.name, m.ndcg_at_10, m.recall_at_10));
            }
        }
    }
    // Warm-up: every query once.
    searches(&channel, queries, 1).await?;
    f.one = searches(&channel, queries, 1).await?;
    f.eight = searches(&channel, queries, 8).await?;
    Ok(f)
}

/// Hybrid searches of every query, spread over `clients` concurrent clients: (p50 ms, p99 ms,
/// searches/s).
async fn searches(
    channel: &quarry::client::Conn,
    queries: &[String],
    clients: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let queries = Arc::new(queries.to_vec());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (queries, channel) = (queries.clone(), channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = pb::search_client::SearchClient::new(channel);
            let mut ms = Vec::new();
            for q in queries.iter().skip(c).step_by(clients) {
                let t = Instant::now();
                // As a well-behaved client: back off and retry what the server says to retry
                // (each retry is counted and printed; its wait counts in the latency).
                for attempt in 0.. {
                    let r = client
                        .search(pb::SearchRequest {
                            collection: "scifact".into(),
                            query: q.clone(),
                            top_k: 10,
                            ..Default::default()
                        })
                        .await;
                    match r {
                        Ok(_) => break,
                        Err(s)
                            if attempt < 5
                                && matches!(
                                    s.code(),
                                    tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                                ) =>
                        {
                            eprintln!("retrying a search: {}", s.message());
                            tokio::time::sleep(std::time::Duration::from_millis(50 << attempt))
                                .await;
                        }
                        Err(s) => return Err(s.into()),
                    }
                }
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(ms)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok((percentile(&all, 0.5), percentile(&all, 0.99), rate))
}

fn report(results: &[(String, Figures)]) {
    println!();
    println!(
        "SciFact ({} CPU, 2 cores), query cache off",
        support::cpu_name()
    );
    println!("| backend | ingest docs/s | hybrid p50 / p99 (1 client) | searches/s (1) | p50 / p99 (8 clients) | searches/s (8) |");
    println!("|---|---|---|---|---|---|");
    for (name, f) in results {
        println!(
            "| {name} | {:.1} | {:.2} / {:.2} ms | {:.1} | {:.2} / {:.2} ms | {:.1} |",
            f.docs_per_s, f.one.0, f.one.1, f.one.2, f.eight.0, f.eight.1, f.eight.2
        );
    }
    println!();
    println!("| backend | mode | nDCG@10 | recall@10 |");
    println!("|---|---|---|---|");
    for (name, f) in results {
        for (mode, ndcg, recall) in &f.ndcg {
            println!("| {name} | {mode} | {ndcg:.4} | {recall:.4} |");
        }
    }
    if let Some((_, base)) = results.iter().find(|(n, _)| n == "embedded") {
        for (name, f) in results.iter().filter(|(n, _)| n != "embedded") {
            for ((mode, ndcg, _), (_, e, _)) in f.ndcg.iter().zip(&base.ndcg) {
                println!("{name} {mode}: nDCG@10 {:+.4} against embedded", ndcg - e);
            }
        }
    }
}
