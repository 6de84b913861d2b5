//! A re-index against plain ingestion of the same texts, and searches during a re-index, on
//! SciFact through the real (release) binary. Prints figures; asserts nothing about time (the
//! machine is shared).
//!
//! 1. `quarry ingest`-style streaming of SciFact's corpus into `gen1` (docs/s), then a
//!    re-index job of `gen1` into `gen2` (same settings: the same embedding work) with nothing
//!    else running: docs/s of each and their ratio (target: the re-index at least 0.9x).
//! 2. Hybrid searches of the 300 test queries on `gen1`, one client, idle; then the same
//!    searches in a loop while a re-index of `gen1` into `gen3` runs: p50 / p99 of each and
//!    their ratio (the job takes a bounded share: one job per collection, batches of 64).
//!
//! `cargo bench --bench reindex` (SciFact from `QUARRY_SCIFACT` or `../shared/datasets/scifact`).
//! Data under `target/bench-reindex`, fresh each run.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use quarry::eval::beir::Dataset;
use quarry::eval::run::percentile;
use quarry::grpc::pb;

type Conn = quarry::client::Conn;
/// A re-index running beside the searches.
type JobTask = tokio::task::JoinHandle<anyhow::Result<(pb::Job, f64)>>;

fn main() -> anyhow::Result<()> {
    let dir = support::scifact_or_exit();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(&dir))
}

async fn run(dir: &Path) -> anyhow::Result<()> {
    quarry::tls::install_crypto_provider();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-reindex");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let dataset = Dataset::open(dir)?;
    let docs = quarry::client::load::load_jsonl(&dataset.corpus_path()?)?;
    let queries = support::scifact_test_queries(&dataset)?;
    // The query-vector cache off: every search embeds its query, as a new query would.
    let config = root.join("quarry.toml");
    std::fs::write(&config, "query_cache_entries = 0\n")?;
    let server =
        support::start_server(&root.join("data"), &["--config", &config.to_string_lossy()]);
    let channel = quarry::client::connect(&server.url, &Default::default()).await?;
    for name in ["gen1", "gen2", "gen3"] {
        quarry::client::ensure_collection(channel.clone(), name, &Default::default()).await?;
    }

    let started = Instant::now();
    let report = quarry::client::ingest(channel.clone(), "gen1", docs.clone(), false).await?;
    let ingest_s = started.elapsed().as_secs_f64();
    let n = report.documents as f64;
    let (job, reindex_s) = reindex(&channel, "gen2").await?;
    eprintln!(
        "ingest {:.1} docs/s ({n} in {ingest_s:.1} s); re-index {:.1} docs/s ({} in {reindex_s:.1} s, {})",
        n / ingest_s,
        n / reindex_s,
        job.counts.unwrap_or_default().seen,
        state(&job)
    );

    searches(&channel, &queries, None).await?; // warm-up
    let idle = searches(&channel, &queries, None).await?;
    let during_job = tokio::spawn({
        let channel = channel.clone();
        async move { reindex(&channel, "gen3").await }
    });
    let during = searches(&channel, &queries, Some(&during_job)).await?;
    let (job3, reindex3_s) = during_job.await??;

    println!();
    println!(
        "Re-index on SciFact ({} documents), {} (2 vCPU, shared), release, one run:",
        docs.len(),
        support::cpu_name()
    );
    println!(
        "  plain ingestion (streamed): {:.1} docs/s; re-index of the stored texts: {:.1} docs/s; ratio {:.2}x",
        n / ingest_s,
        n / reindex_s,
        ingest_s / reindex_s
    );
    println!(
        "  hybrid search, 1 client: idle p50/p99 {:.2}/{:.2} ms ({} searches); during a re-index {:.2}/{:.2} ms ({} searches); p50 ratio {:.2}x",
        idle.0,
        idle.1,
        idle.2,
        during.0,
        during.1,
        during.2,
        during.0 / idle.0
    );
    println!(
        "  the re-index under that search load: {:.1} docs/s ({})",
        n / reindex3_s,
        state(&job3)
    );
    Ok(())
}

fn state(job: &pb::Job) -> String {
    pb::JobState::try_from(job.state)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_default()
}

/// Re-indexes `gen1` into `into` and waits for the end: the job and its seconds.
async fn reindex(channel: &Conn, into: &str) -> anyhow::Result<(pb::Job, f64)> {
    let mut jobs = pb::jobs_client::JobsClient::new(channel.clone());
    let started = Instant::now();
    let job = jobs
        .submit_ingest(pb::SubmitIngestRequest {
            collection: into.into(),
            source: Some(pb::IngestSource {
                collection: "gen1".into(),
                ..Default::default()
            }),
            sync: true,
            switch_alias: String::new(),
        })
        .await?
        .into_inner();
    loop {
        let now = jobs
            .get_job(pb::GetJobRequest { id: job.id.clone() })
            .await?
            .into_inner();
        let running = matches!(
            pb::JobState::try_from(now.state),
            Ok(pb::JobState::Queued | pb::JobState::Running)
        );
        if !running {
            return Ok((now, started.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Hybrid searches on `gen1`, one at a time: every query once, or (with `until`) in a loop
/// until that task ends. (p50 ms, p99 ms, searches).
async fn searches(
    channel: &Conn,
    queries: &[String],
    until: Option<&JobTask>,
) -> anyhow::Result<(f64, f64, usize)> {
    let mut client = pb::search_client::SearchClient::new(channel.clone());
    let mut ms = Vec::new();
    for q in queries.iter().cycle() {
        match until {
            None if ms.len() == queries.len() => break,
            Some(task) if task.is_finished() => break,
            _ => {}
        }
        let t = Instant::now();
        client
            .search(pb::SearchRequest {
                collection: "gen1".into(),
                query: q.clone(),
                top_k: 10,
                mode: pb::SearchMode::Hybrid as i32,
                ..Default::default()
            })
            .await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    Ok((percentile(&ms, 0.5), percentile(&ms, 0.99), ms.len()))
}
