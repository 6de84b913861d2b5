//! Load and soak benchmark against the real `quarry serve` binary (prints figures; asserts
//! nothing about speed).
//!
//! `cargo bench --bench load` (needs `../shared/datasets/scifact` or QUARRY_SCIFACT). It starts
//! the release binary on loopback ports with its data in QUARRY_BENCH_DATA (default
//! `target/bench-load`, so the SciFact collection is ingested once), then:
//! 1. **Unloaded**: one client, hybrid searches for QUARRY_LOAD_SECS / 2 seconds: p50 / p99.
//! 2. **Capacity**: 8 closed-loop clients of the 90 / 9 / 1 mix (hybrid search, upsert of a
//!    changed document, delete and re-add) for the same time: the sustainable rate R.
//! 3. **Overload**: an open loop offering 2 R of the same mix for QUARRY_LOAD_SECS seconds:
//!    throughput, p50 / p99 per operation over the accepted calls, and status codes (only
//!    RESOURCE_EXHAUSTED may appear among the errors).
//! 4. **Soak**: 0.8 R offered for QUARRY_SOAK_SECS seconds (default 600), sampling the
//!    server's RSS and open file descriptors from /proc every 10 s; growth is measured from
//!    the first sample after a 60 s warm-up.
//!
//! `QUARRY_LOAD_CONFIG=FILE` starts the server with that config file (admission settings);
//! `QUARRY_LOAD_RATE=R` offers phases 3 and 4 multiples of that rate instead of the measured
//! one, to offer two configurations the same load.
//! Every figure is from one run on this machine; the CPU is printed with them.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quarry::eval::beir::Dataset;
use quarry::eval::run::percentile;
use quarry::grpc::pb;
use tonic::transport::Channel;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Op {
    Search,
    Upsert,
    Delete,
}

#[derive(Default)]
struct Tally {
    latencies: BTreeMap<Op, Vec<f64>>,
    codes: BTreeMap<String, u64>,
}

impl Tally {
    fn record(&mut self, op: Op, ms: f64, code: tonic::Code) {
        *self.codes.entry(format!("{code:?}")).or_default() += 1;
        if code == tonic::Code::Ok {
            self.latencies.entry(op).or_default().push(ms);
        }
    }

    fn ok(&self) -> usize {
        self.latencies.values().map(Vec::len).sum()
    }

    fn print(&mut self, seconds: f64) {
        println!(
            "  accepted {:.1} calls/s; status codes: {:?}",
            self.ok() as f64 / seconds,
            self.codes
        );
        for (op, lat) in self.latencies.iter_mut() {
            lat.sort_by(f64::total_cmp);
            println!(
                "  {op:?}: {} ok, p50 {:.2} ms, p99 {:.2} ms",
                lat.len(),
                percentile(lat, 0.5),
                percentile(lat, 0.99)
            );
        }
    }
}

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One `kB` line of `/proc/PID/status`, in MiB: RssAnon (heap) and RssFile (mapped files,
/// such as tantivy's segments, which the kernel may reclaim) tell a leak from a cache.
fn status_mib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// (RSS MiB, open file descriptors) of `pid`.
fn usage(pid: u32) -> (f64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

/// The server, with `QUARRY_LOAD_CONFIG` as its config file when set (to measure admission
/// settings, for example `[admission] read = { in_flight = 2, queue = 16,
/// max_queue_delay_ms = 8 }`).
fn start_server(data: &std::path::Path) -> anyhow::Result<(support::Server, String)> {
    let config = std::env::var("QUARRY_LOAD_CONFIG").ok();
    let args: Vec<&str> = match &config {
        Some(path) => vec!["--config", path.as_str()],
        None => Vec::new(),
    };
    let server = support::start_server(data, &args);
    let url = server.url.clone();
    Ok((server, url))
}

struct Work {
    queries: Vec<String>,
    docs: Vec<pb::Document>,
}

/// One call of `op`; `i` picks the query or document.
async fn call(channel: Channel, work: &Work, op: Op, i: usize) -> (f64, tonic::Code) {
    let started = Instant::now();
    let result = match op {
        Op::Search => pb::search_client::SearchClient::new(channel)
            .search(pb::SearchRequest {
                collection: "scifact".into(),
                query: work.queries[i % work.queries.len()].clone(),
                top_k: 10,
                mode: pb::SearchMode::Hybrid as i32,
                group_by_document: true,
                ..Default::default()
            })
            .await
            .map(|_| ()),
        Op::Upsert => {
            // A changed document: its text gains a revision marker, so it is re-embedded.
            let mut d = work.docs[i % work.docs.len()].clone();
            d.text = format!("{} (revision {i})", d.text);
            pb::documents_client::DocumentsClient::new(channel)
                .upsert_documents(pb::UpsertDocumentsRequest {
                    collection: "scifact".into(),
                    documents: vec![d],
                })
                .await
                .map(|_| ())
        }
        Op::Delete => {
            // Delete then put back, so the collection keeps its size.
            let d = work.docs[i % work.docs.len()].clone();
            let mut docs = pb::documents_client::DocumentsClient::new(channel);
            match docs
                .delete_documents(pb::DeleteDocumentsRequest {
                    collection: "scifact".into(),
                    ids: vec![d.id.clone()],
                })
                .await
            {
                Ok(_) => docs
                    .upsert_documents(pb::UpsertDocumentsRequest {
                        collection: "scifact".into(),
                        documents: vec![d],
                    })
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            }
        }
    };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    (ms, result.err().map_or(tonic::Code::Ok, |s| s.code()))
}

fn op_for(i: usize) -> Op {
    match i % 100 {
        0..=89 => Op::Search,
        90..=98 => Op::Upsert,
        _ => Op::Delete,
    }
}

/// Closed loop: `clients` callers back to back for `secs` with the mix (or searches only).
async fn closed_loop(
    channel: &Channel,
    work: &Arc<Work>,
    clients: usize,
    secs: u64,
    mix: bool,
) -> (Tally, f64) {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (channel, work, tally) = (channel.clone(), work.clone(), tally.clone());
            tokio::spawn(async move {
                let mut i = c * 7919;
                while Instant::now() < until {
                    let op = if mix { op_for(i) } else { Op::Search };
                    let (ms, code) = call(channel.clone(), &work, op, i).await;
                    tally.lock().unwrap().record(op, ms, code);
                    i += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    (tally, seconds)
}

/// Open loop: calls started at `rate` per second for `secs`, whatever the server's pace (at
/// most 512 outstanding, counted as refused beyond that). `sample` runs every 10 s.
async fn open_loop(
    channel: &Channel,
    work: &Arc<Work>,
    rate: f64,
    secs: u64,
    mut sample: impl FnMut(f64),
) -> (Tally, f64) {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let outstanding = Arc::new(tokio::sync::Semaphore::new(512));
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    let mut i = 0usize;
    let mut last_sample = Instant::now();
    sample(0.0);
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep_until(next.into()).await;
        next += interval;
        let op = op_for(i);
        match outstanding.clone().try_acquire_owned() {
            Ok(permit) => {
                let (channel, work, tally) = (channel.clone(), work.clone(), tally.clone());
                tokio::spawn(async move {
                    let (ms, code) = call(channel, &work, op, i).await;
                    tally.lock().unwrap().record(op, ms, code);
                    drop(permit);
                });
            }
            Err(_) => tally
                .lock()
                .unwrap()
                .record(op, 0.0, tonic::Code::ResourceExhausted),
        }
        i += 1;
        if last_sample.elapsed() >= Duration::from_secs(10) {
            last_sample = Instant::now();
            sample(started.elapsed().as_secs_f64());
        }
    }
    let _ = outstanding.acquire_many(512).await;
    let seconds = started.elapsed().as_secs_f64();
    // (A finished task may still hold its clone of the Arc for a moment: take the contents.)
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    (tally, seconds)
}

fn main() -> anyhow::Result<()> {
    let dir = support::scifact_or_exit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(dir))
}

async fn run(dir: PathBuf) -> anyhow::Result<()> {
    let load_secs = env_secs("QUARRY_LOAD_SECS", 60);
    let soak_secs = env_secs("QUARRY_SOAK_SECS", 600);
    let data = std::env::var_os("QUARRY_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-load"));
    let (server, url) = start_server(&data)?;
    let pid = server.child.id();
    let channel = quarry::client::connect(&url, &Default::default()).await?;
    let dataset = Dataset::open(&dir)?;
    let docs = quarry::client::load::load_jsonl(&dataset.corpus_path()?)?;
    quarry::client::ensure_collection(channel.clone(), "scifact", &Default::default()).await?;
    let report = quarry::client::ingest(channel.clone(), "scifact", docs.clone(), false).await?;
    eprintln!(
        "collection ready ({} documents, {:.0} s)",
        report.documents, report.seconds
    );
    let queries: Vec<String> = dataset.queries()?.into_values().collect();
    let work = Arc::new(Work { queries, docs });
    let channel = Channel::from_shared(url.clone())?.connect().await?;
    let cpu = support::cpu_name();
    println!("== load and soak: real quarry serve (release), SciFact, CPU: {cpu}, 2 cores ==");

    println!(
        "\n1. unloaded: one client, hybrid searches, {} s",
        load_secs / 2
    );
    let (mut t, secs) = closed_loop(&channel, &work, 1, load_secs / 2, false).await;
    let mut unloaded = t.latencies.get(&Op::Search).cloned().unwrap_or_default();
    unloaded.sort_by(f64::total_cmp);
    let unloaded_p99 = percentile(&unloaded, 0.99);
    t.print(secs);

    println!(
        "\n2. capacity: 8 closed-loop clients, 90% search / 9% upsert / 1% delete, {} s",
        load_secs / 2
    );
    let (mut t, secs) = closed_loop(&channel, &work, 8, load_secs / 2, true).await;
    let measured = t.ok() as f64 / secs;
    t.print(secs);
    // QUARRY_LOAD_RATE fixes R, so two configurations can be offered the same absolute load
    // (a configuration that sheds some of the closed loop's calls measures a lower R).
    let rate = std::env::var("QUARRY_LOAD_RATE")
        .ok()
        .and_then(|r| r.parse::<f64>().ok())
        .unwrap_or(measured);
    println!("  sustainable rate R = {rate:.1} calls/s (measured {measured:.1})");

    println!(
        "\n3. overload: {:.1} calls/s offered (2 R), open loop, {load_secs} s",
        2.0 * rate
    );
    let (mut t, secs) = open_loop(&channel, &work, 2.0 * rate, load_secs, |_| {}).await;
    let mut searches = t.latencies.get(&Op::Search).cloned().unwrap_or_default();
    searches.sort_by(f64::total_cmp);
    t.print(secs);
    let others: u64 = t
        .codes
        .iter()
        .filter(|(c, _)| c.as_str() != "Ok" && c.as_str() != "ResourceExhausted")
        .map(|(_, n)| n)
        .sum();
    println!(
        "  accepted-search p99 {:.2} ms = {:.2} x the unloaded p99 ({unloaded_p99:.2} ms); errors other than RESOURCE_EXHAUSTED: {others}",
        percentile(&searches, 0.99),
        percentile(&searches, 0.99) / unloaded_p99
    );

    println!(
        "\n4. soak: {:.1} calls/s offered (0.8 R), {soak_secs} s; server RSS and fds every 10 s",
        0.8 * rate
    );
    let samples = Arc::new(Mutex::new(Vec::new()));
    let s2 = samples.clone();
    let (mut t, secs) = open_loop(&channel, &work, 0.8 * rate, soak_secs, move |at| {
        let (rss, fds) = usage(pid);
        let (anon, file) = (status_mib(pid, "RssAnon:"), status_mib(pid, "RssFile:"));
        println!("  t={at:>5.0} s  RSS {rss:>7.1} MiB (heap {anon:.1}, mapped files {file:.1})  fds {fds}");
        s2.lock().unwrap().push((at, rss, fds));
    })
    .await;
    t.print(secs);
    let samples = samples.lock().unwrap().clone();
    let warm = samples
        .iter()
        .find(|(at, _, _)| *at >= 60.0)
        .or(samples.first());
    let last = samples.last();
    if let (Some(w), Some(l)) = (warm, last) {
        println!(
            "  after warm-up (t={:.0} s to t={:.0} s): RSS {:.1} -> {:.1} MiB ({:+.1}%), fds {} -> {}",
            w.0,
            l.0,
            w.1,
            l.1,
            100.0 * (l.1 - w.1) / w.1,
            w.2,
            l.2
        );
    }
    drop(server);
    Ok(())
}
