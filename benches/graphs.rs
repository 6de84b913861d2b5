//! Quarry's own HNSW graph (`crates/hnsw`) beside hnsw_rs, the library it replaced, in one
//! run on the same vectors (prints figures; asserts nothing about speed).
//!
//! `cargo bench --bench graphs`. Two data sets:
//! 1. **SciFact**: the corpus (5,183 abstracts) embedded with the default model (title and
//!    text, as one passage), and its 300 test queries; cached in
//!    `QUARRY_BENCH_DATA` (default `target/bench-graphs`). Skipped, loudly, without
//!    `../shared/datasets/scifact` (or `QUARRY_SCIFACT`).
//! 2. **Synthetic**: `QUARRY_GRAPHS_N` (default 100,000) 384-d unit vectors of low intrinsic
//!    dimension (24) in clusters, from a fixed seed, and 200 queries near random points.
//!
//! Both graphs get the same parameters (m 16, ef_construction 200, both cores) and searches
//! the same beam (ef 128, k 10). Per graph: build time, memory per point (the process's RSS
//! before and after the build, over the points), recall@10 against exact search, the p50 of
//! one search on one thread, and the points no walk from the entry point reaches (hnsw_rs
//! keeps its entry point private: its walk starts from every point of its top layer, which
//! can only reach more). Quarry's graph holds int8 codes and is searched as the engine does
//! before rescoring, so its recall is the graph's own; its points are reachable after
//! `repair_reachability`, which the build here runs as the engine does at a checkpoint (the
//! count before the repair is printed too). hnsw_rs holds an f32 copy of every vector; Quarry
//! keeps that copy in sled, outside the graph.

mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::Instant;

use hnsw_rs::prelude::{DistDot, Hnsw};
use quarry::model::ModelSource;
use quarry_hnsw::{Graph, Shape};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

const M: usize = 16;
const EF_CONSTRUCTION: usize = 200;
const EF_SEARCH: usize = 128;
const K: usize = 10;
const DIM: usize = 384;

/// Points and queries.
type Vectors = (Vec<Vec<f32>>, Vec<Vec<f32>>);

struct Figures {
    build_s: f64,
    bytes_per_point: f64,
    recall: f64,
    p50_us: f64,
    unreachable: usize,
    note: String,
}

/// The process's resident set, from /proc.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Exact top-K by dot product (unit vectors: cosine), the truth recall is measured against.
fn exact(vectors: &[Vec<f32>], queries: &[Vec<f32>]) -> Vec<Vec<usize>> {
    queries
        .par_iter()
        .map(|q| {
            let mut scored: Vec<(f32, usize)> = vectors
                .iter()
                .enumerate()
                .map(|(i, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), i))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            scored.iter().take(K).map(|(_, i)| *i).collect()
        })
        .collect()
}

fn recall(found: &[Vec<usize>], truth: &[Vec<usize>]) -> f64 {
    let hits: usize = found
        .iter()
        .zip(truth)
        .map(|(f, t)| f.iter().filter(|i| t.contains(i)).count())
        .sum();
    hits as f64 / (truth.len() * K) as f64
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Returns freed memory to the system, so the next build's RSS growth is its own.
fn trim() {
    // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn ours(vectors: &[Vec<f32>], queries: &[Vec<f32>], truth: &[Vec<usize>]) -> Figures {
    trim();
    let before = rss();
    let started = Instant::now();
    let graph = RwLock::new(Graph::new(Shape {
        dim: DIM,
        m: M,
        ef_construction: EF_CONSTRUCTION,
    }));
    graph.write().unwrap().reserve(vectors.len());
    // As the engine builds: plan under shared access on every core, commit under exclusive.
    vectors
        .par_iter()
        .enumerate()
        .with_min_len(16)
        .for_each(|(i, v)| {
            let plan = graph.read().unwrap().plan(i as u64, v);
            graph.write().unwrap().commit(plan);
        });
    let mut graph = graph.into_inner().unwrap();
    let stranded = graph.unreachable();
    let relinked = graph.repair_reachability();
    let build_s = started.elapsed().as_secs_f64();
    let bytes = rss().saturating_sub(before) as f64;
    let mut times = Vec::with_capacity(queries.len());
    let found: Vec<Vec<usize>> = queries
        .iter()
        .map(|q| {
            let t = Instant::now();
            let hits = graph.search(q, K, EF_SEARCH, &|_| true);
            times.push(t.elapsed().as_secs_f64() * 1e6);
            hits.iter().map(|c| graph.id(c.node) as usize).collect()
        })
        .collect();
    Figures {
        build_s,
        bytes_per_point: bytes / vectors.len() as f64,
        recall: recall(&found, truth),
        p50_us: p50(times),
        unreachable: graph.unreachable(),
        note: format!(
            "{stranded} unreachable before the repair, {relinked} relinked; heap {:.0} B/point",
            graph.heap_bytes() as f64 / vectors.len() as f64
        ),
    }
}

fn theirs(vectors: &[Vec<f32>], queries: &[Vec<f32>], truth: &[Vec<usize>]) -> Figures {
    trim();
    let before = rss();
    let started = Instant::now();
    let hnsw = Hnsw::<f32, DistDot>::new(M, vectors.len(), 16, EF_CONSTRUCTION, DistDot);
    let data: Vec<(&Vec<f32>, usize)> = vectors.iter().enumerate().map(|(i, v)| (v, i)).collect();
    hnsw.parallel_insert(&data);
    let build_s = started.elapsed().as_secs_f64();
    let bytes = rss().saturating_sub(before) as f64;
    let mut times = Vec::with_capacity(queries.len());
    let found: Vec<Vec<usize>> = queries
        .iter()
        .map(|q| {
            let t = Instant::now();
            let hits = hnsw.search(q, K, EF_SEARCH);
            times.push(t.elapsed().as_secs_f64() * 1e6);
            hits.iter().map(|n| n.d_id).collect()
        })
        .collect();
    // Reachability: a walk over every layer's links from every point of the top layer.
    let points = hnsw.get_point_indexation();
    let mut links = vec![Vec::new(); vectors.len()];
    let mut top = Vec::new();
    let top_layer = hnsw.get_max_level_observed() as usize;
    for p in points {
        let id = p.get_origin_id();
        if p.get_point_id().0 as usize == top_layer {
            top.push(id);
        }
        for layer in p.get_neighborhood_id() {
            links[id].extend(layer.iter().map(|n| n.d_id));
        }
    }
    let mut seen: HashSet<usize> = top.iter().copied().collect();
    let mut stack = top;
    while let Some(n) = stack.pop() {
        for &m in &links[n] {
            if seen.insert(m) {
                stack.push(m);
            }
        }
    }
    Figures {
        build_s,
        bytes_per_point: bytes / vectors.len() as f64,
        recall: recall(&found, truth),
        p50_us: p50(times),
        unreachable: vectors.len() - seen.len(),
        note: "f32 vectors held inside".into(),
    }
}

fn compare(name: &str, vectors: &[Vec<f32>], queries: &[Vec<f32>]) {
    println!(
        "\n{name}: {} points, {} queries, m {M}, ef_construction {EF_CONSTRUCTION}, ef {EF_SEARCH}, k {K}",
        vectors.len(),
        queries.len()
    );
    let truth = exact(vectors, queries);
    let raw = (DIM * 4) as f64;
    // Ours first, then theirs: each measures its own RSS growth.
    let first = ours(vectors, queries, &truth);
    let second = theirs(vectors, queries, &truth);
    for (graph, f) in [("quarry-hnsw", first), ("hnsw_rs 0.3.5", second)] {
        println!(
            "  {graph:14} build {:7.1} s ({:6.0} points/s)  memory {:6.0} B/point ({:.2}x the raw f32 vector)  recall@10 {:.4}  p50 {:6.0} us  unreachable {}  ({})",
            f.build_s,
            vectors.len() as f64 / f.build_s,
            f.bytes_per_point,
            f.bytes_per_point / raw,
            f.recall,
            f.p50_us,
            f.unreachable,
            f.note
        );
    }
}

/// Unit vectors of intrinsic dimension 24 in clusters, and queries near random points.
fn synthetic(n: usize) -> Vectors {
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261203);
    let gauss = move |rng: &mut rand::rngs::StdRng| -> f32 {
        let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    };
    let basis: Vec<Vec<f32>> = (0..24)
        .map(|_| (0..DIM).map(|_| gauss(&mut rng)).collect())
        .collect();
    let centres: Vec<Vec<f32>> = (0..(n / 1000).max(16))
        .map(|_| (0..24).map(|_| gauss(&mut rng)).collect())
        .collect();
    let point = |rng: &mut rand::rngs::StdRng, c: &[f32], spread: f32| -> Vec<f32> {
        let low: Vec<f32> = c.iter().map(|x| x + spread * gauss(rng)).collect();
        let mut v = vec![0f32; DIM];
        for (k, b) in basis.iter().enumerate() {
            for (x, y) in v.iter_mut().zip(b) {
                *x += low[k] * y;
            }
        }
        v.iter_mut().for_each(|x| *x += 0.3 * gauss(rng));
        quarry::model::normalize(&mut v);
        v
    };
    let vectors: Vec<Vec<f32>> = (0..n)
        .map(|i| {
            let c = centres[i.wrapping_mul(2654435761) % centres.len()].clone();
            point(&mut rng, &c, 0.5)
        })
        .collect();
    let queries = (0..200)
        .map(|_| {
            let i = rng.random_range(0..n);
            let c = centres[i.wrapping_mul(2654435761) % centres.len()].clone();
            point(&mut rng, &c, 0.5)
        })
        .collect();
    (vectors, queries)
}

/// SciFact's corpus and test queries embedded with the default model (cached).
fn scifact() -> anyhow::Result<Option<Vectors>> {
    let Some(dir) = support::scifact() else {
        return Ok(None);
    };
    let cache = std::env::var_os("QUARRY_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-graphs"));
    std::fs::create_dir_all(&cache)?;
    let file = cache.join("scifact-vectors.json");
    if let Ok(bytes) = std::fs::read(&file) {
        if let Ok(v) = serde_json::from_slice(&bytes) {
            return Ok(Some(v));
        }
    }
    let dataset = quarry::eval::beir::Dataset::open(&dir)?;
    let docs = quarry::client::load::load_jsonl(&dataset.corpus_path()?)?;
    let qrels = dataset.qrels("test")?;
    let queries = dataset.queries()?;
    let model = quarry::config::Config::default()
        .models()
        .load(quarry::config::DEFAULT_MODEL)?;
    let started = Instant::now();
    let texts: Vec<String> = docs
        .iter()
        .map(|d| quarry::chunk::titled(&d.title, &d.text))
        .collect();
    let mut vectors = Vec::with_capacity(texts.len());
    for batch in texts.chunks(64) {
        vectors.extend(model.embed_documents(batch)?);
    }
    let mut ids: Vec<&String> = qrels.keys().collect();
    ids.sort();
    let query_vectors = ids
        .iter()
        .filter_map(|id| queries.get(*id))
        .map(|q| model.embed_query(q))
        .collect::<quarry::Result<Vec<_>>>()?;
    println!(
        "(embedded SciFact's {} documents and {} test queries in {:.0} s; cached in {})",
        vectors.len(),
        query_vectors.len(),
        started.elapsed().as_secs_f64(),
        file.display()
    );
    let both = (vectors, query_vectors);
    std::fs::write(&file, serde_json::to_vec(&both)?)?;
    Ok(Some(both))
}

fn main() -> anyhow::Result<()> {
    println!(
        "graphs: quarry-hnsw against hnsw_rs, one run; CPU: {}, {} cores",
        support::cpu_name(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if let Some((vectors, queries)) = scifact()? {
        compare("SciFact (all-minilm-l6-v2)", &vectors, &queries);
    }
    let n = std::env::var("QUARRY_GRAPHS_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let (vectors, queries) = synthetic(n);
    compare("synthetic", &vectors, &queries);
    Ok(())
}
