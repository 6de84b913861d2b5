//! Scale benchmark: N chunks through the real gRPC API with bring-your-own vectors (prints
//! figures; asserts nothing about speed).
//!
//! `QUARRY_SCALE_N=1000000 cargo bench --bench scale` (default N = 100,000). The data is
//! synthetic but shaped like the real thing, from a fixed seed: 384-d vectors of low intrinsic
//! dimension (24) in N/1000 clusters, plus isotropic noise; text from a Zipfian vocabulary
//! (30,000 pseudo-words, s = 1.07) with 15% of each chunk's words drawn from its cluster's
//! topic words, so lexical and dense agree loosely, as they do on real text; typed metadata
//! (year, lang, score). One chunk per document. The server runs with
//! `index.hnsw_parallel_insert_min = 256`, the bulk-load setting (see README).
//!
//! It prints: ingest chunks/s (index only: no embedding), disk bytes and RSS per chunk next
//! to the raw size of vectors plus text, start-to-ready after a clean stop and after kill -9,
//! the HNSW build time (the graph rebuilt from sled on start after its checkpoint is
//! removed), lexical / dense / hybrid p50 and p99 with supplied query vectors, and dense
//! recall@10 against exact search on 200 sampled queries. With QUARRY_SCALE_HNSWLIB=1 and
//! Python's hnswlib importable it also builds hnswlib (M 16, ef_construction 200, 2 threads)
//! on the same vectors.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use quarry::eval::run::percentile;
use quarry::grpc::pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use tonic::transport::Channel;

const DIM: usize = 384;
const INTRINSIC: usize = 24;
const VOCABULARY: usize = 30_000;
const TOPIC_WORDS: usize = 40;
const QUERIES: usize = 200;
const BATCH: usize = 1000;

/// Standard normal (Box-Muller), so the benchmark needs no distribution crate.
fn normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    quarry::model::normalize(&mut v);
    v
}

/// The synthetic collection's generator (see the module docs).
struct Corpus {
    n: usize,
    basis: Vec<Vec<f32>>,
    centres: Vec<Vec<f32>>,
    words: Vec<String>,
    /// Cumulative Zipf weights over `words`.
    cdf: Vec<f64>,
}

impl Corpus {
    fn new(n: usize) -> Corpus {
        let mut rng = StdRng::seed_from_u64(20261127);
        let basis = (0..INTRINSIC)
            .map(|_| (0..DIM).map(|_| normal(&mut rng)).collect())
            .collect();
        let clusters = (n / 1000).max(16);
        let centres = (0..clusters)
            .map(|_| (0..INTRINSIC).map(|_| normal(&mut rng)).collect())
            .collect();
        let syllables = [
            "ka", "lo", "mi", "ten", "ra", "vu", "sel", "to", "bri", "an", "or", "pe", "zu", "dim",
            "ga", "ne", "sor", "li", "qua", "fe",
        ];
        let words = (0..VOCABULARY)
            .map(|i| {
                let mut w = String::new();
                let mut k = i + 1;
                while k > 0 {
                    w.push_str(syllables[k % syllables.len()]);
                    k /= syllables.len();
                }
                w
            })
            .collect();
        let mut cdf = Vec::with_capacity(VOCABULARY);
        let mut sum = 0.0;
        for r in 1..=VOCABULARY {
            sum += 1.0 / (r as f64).powf(1.07);
            cdf.push(sum);
        }
        Corpus {
            n,
            basis,
            centres,
            words,
            cdf,
        }
    }

    fn cluster(&self, i: usize) -> usize {
        (i.wrapping_mul(2654435761)) % self.centres.len()
    }

    /// The unnormalized vector of document `i`, and of a query near it.
    fn vector(&self, i: usize, rng: &mut StdRng, spread: f32) -> Vec<f32> {
        let c = &self.centres[self.cluster(i)];
        let low: Vec<f32> = c.iter().map(|x| x + spread * normal(rng)).collect();
        let mut v = vec![0f32; DIM];
        for (k, b) in self.basis.iter().enumerate() {
            for (d, x) in v.iter_mut().enumerate() {
                *x += low[k] * b[d];
            }
        }
        for x in &mut v {
            *x += 0.3 * normal(rng);
        }
        v
    }

    fn zipf_word(&self, rng: &mut StdRng) -> &str {
        let total = *self.cdf.last().unwrap_or(&1.0);
        let u = rng.random::<f64>() * total;
        let i = self.cdf.partition_point(|&c| c < u);
        &self.words[i.min(VOCABULARY - 1)]
    }

    fn topic_word(&self, cluster: usize, rng: &mut StdRng) -> &str {
        // Mid-frequency words, a different slice per cluster.
        let k = rng.random_range(0..TOPIC_WORDS);
        &self.words[(500 + cluster * TOPIC_WORDS + k) % VOCABULARY]
    }

    fn text(&self, i: usize, rng: &mut StdRng) -> String {
        let len = rng.random_range(40..120);
        let cluster = self.cluster(i);
        let mut out = Vec::with_capacity(len);
        for _ in 0..len {
            if rng.random::<f32>() < 0.15 {
                out.push(self.topic_word(cluster, rng).to_string());
            } else {
                out.push(self.zipf_word(rng).to_string());
            }
        }
        out.join(" ")
    }

    /// Document `i`: its wire form and its unit vector.
    fn document(&self, i: usize) -> (pb::Document, Vec<f32>) {
        let mut rng = StdRng::seed_from_u64(i as u64);
        let v = unit(self.vector(i, &mut rng, 0.6));
        let text = self.text(i, &mut rng);
        let langs = ["en", "en", "en", "de", "fr", "es", "ja"];
        let typed = |k: &str, v: pb::metadata_value::Kind| {
            (k.to_string(), pb::MetadataValue { kind: Some(v) })
        };
        use pb::metadata_value::Kind;
        let doc = pb::Document {
            id: format!("d{i}"),
            typed_metadata: [
                typed("year", Kind::IntValue(rng.random_range(1990..2026))),
                typed(
                    "lang",
                    Kind::StringValue(langs[rng.random_range(0..langs.len())].into()),
                ),
                typed("score", Kind::FloatValue(rng.random::<f64>())),
            ]
            .into(),
            chunks: vec![pb::DocumentChunk {
                text,
                vector: v.clone(),
            }],
            ..Default::default()
        };
        (doc, v)
    }

    /// Query `q`: near a sampled document, with four of its words.
    fn query(&self, q: usize) -> (String, Vec<f32>) {
        let mut rng = StdRng::seed_from_u64(1_000_000_007 + q as u64);
        let i = rng.random_range(0..self.n);
        let v = unit(self.vector(i, &mut rng, 0.6));
        let (doc, _) = self.document(i);
        let words: Vec<&str> = doc.chunks[0].text.split(' ').collect();
        let text = (0..4)
            .map(|_| words[rng.random_range(0..words.len())])
            .collect::<Vec<_>>()
            .join(" ");
        (text, v)
    }
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += disk_bytes(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Polls `/readyz` until it answers 200.
fn wait_ready(ops: &str) {
    while support::http_get(ops, "/readyz").map(|(code, _)| code) != Some(200) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the server and returns it with the seconds until it was ready.
fn start(data: &Path, config: &Path) -> (support::Server, f64) {
    let t = Instant::now();
    let server = support::start_server(data, &["--config", &config.to_string_lossy()]);
    wait_ready(&server.ops);
    (server, t.elapsed().as_secs_f64())
}

fn stop(server: support::Server) {
    drop(server); // SIGTERM, then wait: a clean stop checkpoints
}

fn kill9(mut server: support::Server) {
    let _ = server.child.kill();
    let _ = server.child.wait();
    std::mem::forget(server);
}

fn request(text: &str, vector: &[f32], mode: pb::SearchMode) -> pb::SearchRequest {
    pb::SearchRequest {
        collection: "scale".into(),
        query: text.into(),
        query_vector: if mode == pb::SearchMode::Lexical {
            Vec::new()
        } else {
            vector.to_vec()
        },
        top_k: 10,
        mode: mode as i32,
        ..Default::default()
    }
}

async fn ingest(channel: &Channel, corpus: &Corpus, from: usize, to: usize) -> anyhow::Result<()> {
    // Two writers, so the next batch is built and encoded while the server indexes one.
    let corpus_ref = corpus;
    let batches: Vec<(usize, usize)> = (from..to)
        .step_by(BATCH)
        .map(|s| (s, (s + BATCH).min(to)))
        .collect();
    let mut lanes = [Vec::new(), Vec::new()];
    for (k, b) in batches.into_iter().enumerate() {
        lanes[k % 2].push(b);
    }
    let run = |lane: Vec<(usize, usize)>| {
        let channel = channel.clone();
        async move {
            let mut docs = pb::documents_client::DocumentsClient::new(channel)
                .max_encoding_message_size(256 << 20);
            for (s, e) in lane {
                let batch: Vec<pb::Document> = (s..e)
                    .into_par_iter()
                    .map(|i| corpus_ref.document(i).0)
                    .collect();
                docs.upsert_documents(pb::UpsertDocumentsRequest {
                    collection: "scale".into(),
                    documents: batch,
                })
                .await?;
                if e % 100_000 == 0 {
                    eprintln!("  ingested {e}");
                }
            }
            anyhow::Ok(())
        }
    };
    let [a, b] = lanes;
    let (ra, rb) = tokio::join!(run(a), run(b));
    ra?;
    rb
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let n: usize = std::env::var("QUARRY_SCALE_N")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(100_000);
    let data = std::env::var_os("QUARRY_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/bench-scale-{n}"))
        });
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    let config = data.with_extension("toml");
    std::fs::write(&config, "[index]\nhnsw_parallel_insert_min = 256\n")?;
    let cpu = support::cpu_name();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "== scale: N = {n} chunks, {DIM}-d, bring-your-own vectors, CPU: {cpu}, {cores} cores =="
    );

    let corpus = Corpus::new(n);
    let (server, _) = start(&data, &config);
    let channel = Channel::from_shared(server.url.clone())?.connect().await?;
    pb::collections_client::CollectionsClient::new(channel.clone())
        .create_collection(pb::CreateCollectionRequest {
            name: "scale".into(),
            config: Some(pb::CollectionConfig {
                vector_dimension: DIM as u32,
                ..Default::default()
            }),
        })
        .await?;
    let rss_empty = rss_bytes(server.child.id());
    let t = Instant::now();
    ingest(&channel, &corpus, 0, n).await?;
    let ingest_secs = t.elapsed().as_secs_f64();
    println!(
        "\ningest: {n} chunks in {ingest_secs:.0} s = {:.0} chunks/s (index only; batches of {BATCH}, two writers)",
        n as f64 / ingest_secs
    );
    let rss_ingested = rss_bytes(server.child.id());

    // Raw size: vectors as f32 plus text bytes.
    let text_bytes: usize = (0..n)
        .into_par_iter()
        .map(|i| corpus.document(i).0.chunks[0].text.len())
        .sum();
    let raw = (n * DIM * 4 + text_bytes) as f64;
    stop(server);
    let disk = disk_bytes(&data) as f64;

    let (server, clean_ready) = start(&data, &config);
    let channel = Channel::from_shared(server.url.clone())?.connect().await?;
    let queries: Vec<(String, Vec<f32>)> = (0..QUERIES).map(|q| corpus.query(q)).collect();
    let mut search = pb::search_client::SearchClient::new(channel.clone());
    let mut lines = Vec::new();
    let mut dense_hits: Vec<Vec<usize>> = Vec::new();
    for mode in [
        pb::SearchMode::Lexical,
        pb::SearchMode::Dense,
        pb::SearchMode::Hybrid,
    ] {
        let mut lat = Vec::new();
        for pass in 0..3 {
            for (text, v) in &queries {
                let t = Instant::now();
                let r = search.search(request(text, v, mode)).await?.into_inner();
                if pass > 0 {
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                } else if mode == pb::SearchMode::Dense {
                    dense_hits.push(
                        r.hits
                            .iter()
                            .filter_map(|h| h.document_id[1..].parse().ok())
                            .collect(),
                    );
                }
            }
        }
        lat.sort_by(f64::total_cmp);
        lines.push(format!(
            "  {:8} p50 {:6.2} ms  p99 {:6.2} ms",
            format!("{mode:?}").to_lowercase(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        ));
    }
    let rss_serving = rss_bytes(server.child.id());

    // Exact top 10 of each query over every vector.
    let vectors: Vec<Vec<f32>> = (0..n)
        .into_par_iter()
        .map(|i| corpus.document(i).1)
        .collect();
    let recall: f64 = queries
        .par_iter()
        .zip(&dense_hits)
        .map(|((_, q), got)| {
            let mut scored: Vec<(f32, usize)> = vectors
                .iter()
                .enumerate()
                .map(|(i, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>(), i))
                .collect();
            let k = 10.min(scored.len());
            scored.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
            let exact: std::collections::HashSet<usize> =
                scored[..k].iter().map(|(_, i)| *i).collect();
            got.iter().take(10).filter(|i| exact.contains(i)).count() as f64 / k as f64
        })
        .sum::<f64>()
        / QUERIES as f64;
    drop(vectors);

    // A few writes after the checkpoint, then kill -9: start-up replays them.
    ingest(&channel, &corpus, n, n + 2 * BATCH).await?;
    kill9(server);
    let (server, killed_ready) = start(&data, &config);
    stop(server);

    // The graph from scratch: remove the dense checkpoint, start, wait until ready.
    let mut removed = 0;
    if let Ok(collections) = std::fs::read_dir(data.join("collections")) {
        for c in collections.flatten() {
            let dense = c.path().join("dense");
            if dense.exists() {
                std::fs::remove_dir_all(&dense)?;
                removed += 1;
            }
        }
    }
    let (server, rebuild_ready) = start(&data, &config);
    stop(server);

    let per = |b: f64| b / n as f64;
    println!(
        "\nsize (raw = {DIM} x 4 bytes of vector + text, {:.0} bytes per chunk):",
        per(raw)
    );
    println!(
        "  disk after a clean stop {:.0} bytes/chunk ({:.2}x raw)",
        per(disk),
        disk / raw
    );
    println!(
        "  RSS after ingest {:.0} bytes/chunk ({:.2}x raw); serving after restart {:.0} bytes/chunk ({:.2}x raw; target <= 1.5x); empty server {:.0} MiB",
        per(rss_ingested as f64),
        rss_ingested as f64 / raw,
        per(rss_serving as f64),
        rss_serving as f64 / raw,
        rss_empty as f64 / (1 << 20) as f64
    );
    println!("\nstart to ready: clean stop {clean_ready:.2} s (target <= 5 s), kill -9 {killed_ready:.2} s");
    println!(
        "HNSW build from scratch (checkpoint removed: {removed}; rebuilt from sled on start, parallel): {rebuild_ready:.0} s = {:.0} chunks/s",
        (n + 2 * BATCH) as f64 / rebuild_ready
    );
    println!("\nsearch, one client, top 10, supplied query vectors, {QUERIES} queries x 2 passes:");
    for l in lines {
        println!("{l}");
    }
    println!("  dense recall@10 against exact search: {recall:.4} (target >= 0.95)");

    if std::env::var("QUARRY_SCALE_HNSWLIB").as_deref() == Ok("1") {
        hnswlib(&corpus, &data)?;
    }
    Ok(())
}

/// hnswlib's build time on the same vectors, if Python has it.
fn hnswlib(corpus: &Corpus, data: &Path) -> anyhow::Result<()> {
    let file = data.join("vectors.f32");
    let bytes: Vec<u8> = (0..corpus.n)
        .into_par_iter()
        .flat_map_iter(|i| {
            corpus
                .document(i)
                .1
                .into_iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<_>>()
        })
        .collect();
    std::fs::write(&file, bytes)?;
    let script = format!(
        "import hnswlib, numpy as np, time\n\
         v = np.fromfile('{}', dtype=np.float32).reshape(-1, {DIM})\n\
         i = hnswlib.Index(space='ip', dim={DIM})\n\
         i.init_index(max_elements=len(v), M=16, ef_construction=200)\n\
         i.set_num_threads(2)\n\
         t = time.time(); i.add_items(v); print(f'{{time.time() - t:.0f}}')\n",
        file.display()
    );
    let out = Command::new("python3").args(["-c", &script]).output()?;
    let _ = std::fs::remove_file(&file);
    if out.status.success() {
        let secs: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(f64::NAN);
        println!(
            "hnswlib on the same vectors (M 16, ef_construction 200, 2 threads): {secs:.0} s = {:.0} chunks/s",
            corpus.n as f64 / secs
        );
    } else {
        println!(
            "hnswlib not available (pip install hnswlib numpy): {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    Ok(())
}
