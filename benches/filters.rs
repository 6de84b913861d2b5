//! Filtered search on SciFact: how the dense planner's threshold was measured (prints figures;
//! asserts nothing about speed).
//!
//! `cargo bench --bench filters` (needs `../shared/datasets/scifact` or QUARRY_SCIFACT; keeps
//! its collection in QUARRY_BENCH_DATA, default `target/bench-filters`, so later runs skip the
//! ingest). Every document gets an integer `bucket` in 0..1000 from a hash of its id; the
//! filters `bucket < 500 / 100 / 10 / 1` allow about 50%, 10%, 1% and 0.1% of the chunks. For
//! each, the 300 test queries run (top 10, query vectors embedded once beforehand, so the
//! figures are retrieval only) three ways, each twice over all queries in the order A B C C B
//! A so that drift on this shared machine falls on all three alike: exact scoring of the allowed chunks, HNSW's filtered
//! search, and the planner (`index.exact_filter_limit`); the first row is unfiltered. Hybrid adds BM25 with the same filter. The planner should be within 20%
//! of the faster way at every point.

mod support;

use std::path::PathBuf;
use std::time::Instant;

use quarry::config::Config;
use quarry::engine::DocumentInput;
use quarry::eval::beir::Dataset;
use quarry::eval::run::percentile;
use quarry::filter::{Filter, Range, Test};
use quarry::meta::Value;
use quarry::model::{catalog, fetch};
use quarry::retrieve::{DensePlan, Mode, SearchParams};

const COLLECTION: &str = "scifact-buckets";

fn bucket(id: &str) -> i64 {
    // FNV-1a: stable across runs and platforms.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    (h % 1000) as i64
}

fn below(n: i64) -> Filter {
    Filter::cond(
        "bucket",
        Test::Range(Range {
            lt: Some(Value::Int(n)),
            ..Default::default()
        }),
    )
}

fn params(text: &str, vector: &[f32], mode: Mode, filter: Filter, plan: DensePlan) -> SearchParams {
    SearchParams {
        query: text.to_string(),
        query_vector: Some(vector.to_vec()),
        mode,
        top_k: 10,
        filter,
        dense_plan: plan,
        ..Default::default()
    }
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
    fetch::ensure(&catalog::MODELS[0], &models_dir, &mut say)?;
    let data_dir = std::env::var_os("QUARRY_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-filters"));
    let config = Config {
        data_dir,
        models_dir,
        ..Config::default()
    };
    let planner_limit = config.index.exact_filter_limit;
    let dataset = Dataset::open(&dir)?;

    // Ingest once (kept across runs).
    let engine = config.open_engine()?;
    if engine.collection(COLLECTION).is_err() {
        engine.create_collection(COLLECTION, Default::default())?;
        let docs = quarry::client::load::load_jsonl(&dataset.corpus_path()?)?;
        eprintln!("ingesting {} documents with a bucket each ...", docs.len());
        let started = Instant::now();
        for batch in docs.chunks(64) {
            let batch: Vec<DocumentInput> = batch
                .iter()
                .map(|d| DocumentInput {
                    id: d.id.clone(),
                    title: d.title.clone(),
                    text: d.text.clone(),
                    metadata: [("bucket".to_string(), Value::Int(bucket(&d.id)))].into(),
                    markdown: false,
                    source: None,
                    chunks: Vec::new(),
                })
                .collect();
            engine.upsert(COLLECTION, batch).await?;
        }
        engine.checkpoint().await?;
        eprintln!("ingested in {:.1} s", started.elapsed().as_secs_f64());
    }
    let collection = engine.collection(COLLECTION)?;
    let chunks = collection.info().chunk_count;
    let queries = dataset.queries()?;
    let qrels = dataset.qrels("test")?;
    let mut ids: Vec<&String> = qrels.keys().collect();
    ids.sort();
    let texts: Vec<String> = ids
        .iter()
        .filter_map(|id| queries.get(*id).cloned())
        .collect();
    let vectors: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| collection.embedder().embed_query(t))
        .collect::<quarry::Result<_>>()?;
    // Chunks each filter allows.
    let docs = quarry::client::load::load_jsonl(&dataset.corpus_path()?)?;
    let doc_ids: Vec<String> = docs.iter().map(|d| d.id.clone()).collect();
    let mut per_doc = Vec::new();
    for part in doc_ids.chunks(1000) {
        let (found, _) = engine.get_documents(COLLECTION, part, false)?;
        per_doc.extend(
            found
                .into_iter()
                .map(|d| (bucket(&d.input.id), d.chunk_ids.len())),
        );
    }
    drop(collection);

    let cpu = support::cpu_name();
    println!(
        "== filtered search on SciFact: {chunks} chunks, {} test queries, top 10, CPU: {cpu} ==",
        texts.len()
    );
    println!(
        "p50 / p95 in ms, query vectors precomputed, each way twice over all queries in the order A B C C B A; \
         planner = exact scoring when the filter allows <= min({planner_limit}, sqrt(0.7 x depth x chunks)) chunks"
    );
    let points: [(&str, Option<i64>); 5] = [
        ("none", None),
        ("50%", Some(500)),
        ("10%", Some(100)),
        ("1%", Some(10)),
        ("0.1%", Some(1)),
    ];
    let plans = [DensePlan::Exact, DensePlan::Graph, DensePlan::Auto];
    // Warm-up: every query once, unfiltered, in both modes.
    for (t, v) in texts.iter().zip(&vectors) {
        for mode in [Mode::Dense, Mode::Hybrid] {
            engine
                .search(
                    COLLECTION,
                    params(t, v, mode, Filter::all(), DensePlan::Auto),
                )
                .await?;
        }
    }
    for mode in [Mode::Dense, Mode::Hybrid] {
        println!(
            "\n-- {} --",
            match mode {
                Mode::Dense => "dense",
                _ => "hybrid (BM25 + dense, same filter)",
            }
        );
        println!(
            "{:<6} {:>8} {:>16} {:>16} {:>16} {:>13}",
            "allows", "chunks", "exact", "hnsw+filter", "planner", "planner/best"
        );
        for (name, cut) in points {
            let filter = cut.map_or_else(Filter::all, below);
            let mut ms: Vec<Vec<f64>> = vec![Vec::with_capacity(2 * texts.len()); plans.len()];
            // Blocks of all queries per way, in the order A B C C B A: each way runs with
            // its own caches warm, and drift over the run falls on all three alike.
            for i in [0, 1, 2, 2, 1, 0] {
                for (t, v) in texts.iter().zip(&vectors) {
                    let started = Instant::now();
                    engine
                        .search(COLLECTION, params(t, v, mode, filter.clone(), plans[i]))
                        .await?;
                    ms[i].push(started.elapsed().as_secs_f64() * 1000.0);
                }
            }
            let stats: Vec<(f64, f64)> = ms
                .iter_mut()
                .map(|m| {
                    m.sort_by(f64::total_cmp);
                    (percentile(m, 0.5), percentile(m, 0.95))
                })
                .collect();
            let allowed: usize = per_doc
                .iter()
                .filter(|(b, _)| cut.is_none_or(|c| *b < c))
                .map(|(_, n)| n)
                .sum();
            let [exact, hnsw, planner] = [stats[0], stats[1], stats[2]];
            println!(
                "{name:<6} {allowed:>8} {:>7.2} / {:>6.2} {:>7.2} / {:>6.2} {:>7.2} / {:>6.2} {:>13.2}",
                exact.0,
                exact.1,
                hnsw.0,
                hnsw.1,
                planner.0,
                planner.1,
                planner.0 / exact.0.min(hnsw.0)
            );
        }
    }
    Ok(())
}
