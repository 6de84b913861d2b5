//! Tests of the dense index: recall against exact search, tombstones, checkpoints, and
//! searches going on beside rebuilds and checkpoints.
use super::*;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

/// Rescores the default head with `exact`.
fn rescore(exact: &(dyn Fn(u64) -> Result<Option<Vec<f32>>> + Send + Sync)) -> Rescore<'_> {
    Rescore {
        exact,
        head: RESCORE_MIN,
    }
}

/// The exact vectors of `data`, as the engine reads them from sled for rescoring.
fn source(
    data: &[(u64, Vec<f32>)],
) -> impl Fn(u64) -> Result<Option<Vec<f32>>> + Send + Sync + Clone {
    let map: std::sync::Arc<HashMap<u64, Vec<f32>>> =
        std::sync::Arc::new(data.iter().cloned().collect());
    move |id| Ok(map.get(&id).cloned())
}

fn params() -> HnswParams {
    HnswParams {
        m: 16,
        ef_construction: 200,
        ef_search: 128,
        parallel_insert_min: PARALLEL_INSERT_MIN,
    }
}

/// Clustered unit vectors shaped like real embeddings: `clusters` random centres, points
/// varying around them along a shared low-dimensional subspace (sentence embeddings have a
/// low intrinsic dimension) plus small isotropic noise. Uniform random 384-d vectors would
/// be unrealistically hard for any graph index.
fn clustered(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<(u64, Vec<f32>)> {
    const INTRINSIC: usize = 24;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // The subspace and centres depend only on a fixed seed, so queries and data share them.
    let mut shape = rand::rngs::StdRng::seed_from_u64(1234);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..dim).map(|_| shape.random_range(-1.0f32..1.0)).collect())
        .collect();
    let basis: Vec<Vec<f32>> = (0..INTRINSIC)
        .map(|_| (0..dim).map(|_| shape.random_range(-0.5f32..0.5)).collect())
        .collect();
    (0..n)
        .map(|i| {
            let c = &centres[rng.random_range(0..clusters)];
            let z: Vec<f32> = (0..INTRINSIC)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            let mut v: Vec<f32> = (0..dim)
                .map(|d| {
                    c[d] + basis.iter().zip(&z).map(|(b, zj)| b[d] * zj).sum::<f32>()
                        + rng.random_range(-0.05f32..0.05)
                })
                .collect();
            crate::model::normalize(&mut v);
            (i as u64 + 1, v)
        })
        .collect()
}

#[test]
fn hnsw_recall_at_10_against_exact_search() {
    let data = clustered(6000, 384, 60, 7);
    let exact = source(&data);
    let dir = tempfile::tempdir().unwrap();
    let index = DenseIndex::open(dir.path(), 384, params()).unwrap();
    index.apply(1, &data, &[]).unwrap();
    let queries = clustered(200, 384, 60, 8);
    let mut hits = 0;
    for (_, q) in &queries {
        let truth: HashSet<u64> = exact_search(q, data.iter().cloned(), 10)
            .into_iter()
            .map(|h| h.0)
            .collect();
        let approx = index.search(q, 10, None, rescore(&exact)).unwrap();
        hits += approx.iter().filter(|h| truth.contains(&h.0)).count();
    }
    let recall = hits as f64 / (queries.len() * 10) as f64;
    println!("HNSW recall@10 over 6000 clustered 384-d vectors: {recall:.4}");
    assert!(recall >= 0.98, "recall@10 {recall} < 0.98");
}

#[test]
fn tombstones_checkpoint_reload_and_rebuild() {
    let data = clustered(500, 16, 5, 1);
    let exact = source(&data);
    let dir = tempfile::tempdir().unwrap();
    let p = HnswParams {
        m: 8,
        ef_construction: 64,
        ef_search: 64,
        parallel_insert_min: PARALLEL_INSERT_MIN,
    };
    {
        let index = DenseIndex::open(dir.path(), 16, p).unwrap();
        index.apply(1, &data, &[]).unwrap();
        let q = &data[0].1;
        assert_eq!(
            index.search(q, 1, None, rescore(&exact)).unwrap()[0].0,
            data[0].0
        );
        index.apply(2, &[], &[data[0].0]).unwrap();
        let top = index.search(q, 5, None, rescore(&exact)).unwrap();
        assert!(top.iter().all(|h| h.0 != data[0].0));
        assert_eq!(top.len(), 5);
        index.checkpoint().unwrap();
    }
    let index = DenseIndex::open(dir.path(), 16, p).unwrap();
    assert_eq!(index.applied_seq().unwrap(), 2);
    assert_eq!(index.live_points().unwrap(), 499);
    let q = &data[0].1;
    assert!(index
        .search(q, 5, None, rescore(&exact))
        .unwrap()
        .iter()
        .all(|h| h.0 != data[0].0));
    // Filtered search returns only allowed ids.
    let allowed: Vec<u64> = vec![data[3].0, data[7].0];
    let hits = index.search(q, 5, Some(&allowed), rescore(&exact)).unwrap();
    assert!(!hits.is_empty() && hits.iter().all(|h| allowed.contains(&h.0)));
    // Rebuild drops tombstones.
    index.rebuild(data[1..].to_vec()).unwrap();
    assert_eq!(index.tombstone_ratio().unwrap(), 0.0);
    assert_eq!(index.live_points().unwrap(), 499);
    // Wrong dimension is a user error.
    assert!(matches!(
        index.search(&[1.0; 3], 1, None, rescore(&exact)),
        Err(Error::InvalidArgument(_))
    ));
}

/// Searches running on rayon's workers (as hybrid search runs its dense side) while
/// rebuilds swap the graph: the old graph, freed with rayon, must not be freed under the
/// lock those searches wait for. This hung for good before the fix.
#[test]
fn rebuilds_never_deadlock_with_searches_on_rayon_workers() {
    let data = clustered(1500, 32, 10, 5);
    let exact = source(&data);
    let dir = tempfile::tempdir().unwrap();
    let index = std::sync::Arc::new(DenseIndex::open(dir.path(), 32, params()).unwrap());
    index.apply(1, &data, &[]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let searchers: Vec<_> = (0..4)
        .map(|t| {
            let (index, stop, q) = (index.clone(), stop.clone(), data[t].1.clone());
            let exact = exact.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    rayon::join(
                        || index.search(&q, 10, None, rescore(&exact)).unwrap(),
                        || index.search(&q, 10, None, rescore(&exact)).unwrap(),
                    );
                }
            })
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let (i2, d2) = (index.clone(), data.clone());
    std::thread::spawn(move || {
        for _ in 0..8 {
            i2.rebuild(d2.clone()).unwrap();
        }
        let _ = tx.send(());
    });
    let finished = rx.recv_timeout(std::time::Duration::from_secs(60));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(finished.is_ok(), "rebuilds deadlocked with searches");
    for s in searchers {
        s.join().unwrap();
    }
}

/// A parallel rebuild (over PARALLEL_INSERT_MIN points) must leave rayon's global pool
/// to searches: a join there answers long before the rebuild ends.
#[test]
fn searches_on_the_global_pool_go_on_while_a_big_graph_rebuilds() {
    let data = clustered(PARALLEL_INSERT_MIN + 10_000, 32, 20, 9);
    let exact = source(&data);
    let dir = tempfile::tempdir().unwrap();
    // A cheap graph: the test is about the pool, not the graph's quality.
    let cheap = HnswParams {
        m: 8,
        ef_construction: 16,
        ef_search: 32,
        parallel_insert_min: PARALLEL_INSERT_MIN,
    };
    let index = std::sync::Arc::new(DenseIndex::open(dir.path(), 32, cheap).unwrap());
    index.apply(1, &data[..2000], &[]).unwrap();
    let q = data[0].1.clone();
    let (i2, started) = (index.clone(), std::time::Instant::now());
    let rebuild = std::thread::spawn(move || {
        i2.rebuild(data).unwrap();
        started.elapsed()
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let asked = std::time::Instant::now();
    rayon::join(
        || index.search(&q, 10, None, rescore(&exact)).unwrap(),
        || index.search(&q, 10, None, rescore(&exact)).unwrap(),
    );
    let waited = asked.elapsed();
    let took = rebuild.join().unwrap();
    assert!(
        waited * 4 < took,
        "a search on the global pool waited {waited:?} for a rebuild of {took:?}"
    );
}

#[test]
fn searches_go_on_while_a_checkpoint_writes() {
    let data = clustered(5000, 384, 40, 3);
    let exact = source(&data);
    let dir = tempfile::tempdir().unwrap();
    let index = std::sync::Arc::new(DenseIndex::open(dir.path(), 384, params()).unwrap());
    index.apply(1, &data, &[]).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (i2, d2) = (index.clone(), done.clone());
    let writer = std::thread::spawn(move || {
        i2.checkpoint().unwrap();
        d2.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    // Searches complete while the dump is still being written.
    let mut during = 0;
    let q = &data[0].1;
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        index.search(q, 10, None, rescore(&exact)).unwrap();
        if !done.load(std::sync::atomic::Ordering::SeqCst) {
            during += 1;
        }
    }
    writer.join().unwrap();
    // (Holding the state's write lock through the dump let at most a search or two through.)
    assert!(
        during >= 3,
        "only {during} searches completed during the checkpoint"
    );
    assert!(!index.is_dirty().unwrap());
    let reopened = DenseIndex::open(dir.path(), 384, params()).unwrap();
    assert_eq!(reopened.applied_seq().unwrap(), 1);
}

/// A checkpoint written by the hnsw_rs graph (no `format` in its meta) is not read: the
/// index opens empty at sequence 0, which makes the engine rebuild it from sled.
#[test]
fn a_checkpoint_in_the_old_format_is_left_for_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("dense");
    std::fs::create_dir_all(&live).unwrap();
    std::fs::write(
        live.join("meta.json"),
        r#"{"applied_seq": 7, "points": 3, "dimension": 16, "tombstones": [2]}"#,
    )
    .unwrap();
    std::fs::write(live.join("graph.hnsw.graph"), b"old").unwrap();
    let index = DenseIndex::open(dir.path(), 16, params()).unwrap();
    assert_eq!(index.applied_seq().unwrap(), 0);
    assert_eq!(index.graph_points().unwrap(), 0);
    // A damaged graph file in the current format is an error, not an empty index.
    let data = clustered(50, 16, 2, 4);
    index.apply(8, &data, &[]).unwrap();
    index.checkpoint().unwrap();
    let graph = live.join(GRAPH_FILE);
    let mut bytes = std::fs::read(&graph).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&graph, bytes).unwrap();
    let err = DenseIndex::open(dir.path(), 16, params()).err().unwrap();
    assert!(err.to_string().contains("checksum"), "{err}");
}

/// Insertions are committed a point at a time: searches running meanwhile see a consistent
/// graph and are not held up for the whole batch.
#[test]
fn searches_go_on_while_a_batch_is_inserted() {
    let data = clustered(4000, 384, 40, 11);
    let exact = source(&data);
    let dir = tempfile::tempdir().unwrap();
    let index = std::sync::Arc::new(DenseIndex::open(dir.path(), 384, params()).unwrap());
    index.apply(1, &data[..100], &[]).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (i2, d2, rest) = (index.clone(), done.clone(), data[100..].to_vec());
    let writer = std::thread::spawn(move || {
        i2.apply(2, &rest, &[]).unwrap();
        d2.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let mut during = 0;
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        let hits = index.search(&data[5].1, 10, None, rescore(&exact)).unwrap();
        assert_eq!(hits[0].0, data[5].0);
        during += 1;
    }
    writer.join().unwrap();
    assert!(
        during >= 10,
        "only {during} searches ran during the insertion"
    );
    assert_eq!(index.graph_points().unwrap(), 4000);
}

/// The head of the results carries exact cosines in exact order; deeper candidates keep int8
/// similarities close to theirs; a candidate whose vector is gone is dropped.
#[test]
fn the_head_is_rescored_exactly_and_the_rest_is_close() {
    let data = clustered(3000, 384, 30, 12);
    let exact = source(&data);
    let dir = tempfile::tempdir().unwrap();
    let index = DenseIndex::open(dir.path(), 384, params()).unwrap();
    index.apply(1, &data, &[]).unwrap();
    let vectors: HashMap<u64, Vec<f32>> = data.iter().cloned().collect();
    let q = &data[17].1;
    let head = 40;
    let hits = index
        .search(
            q,
            100,
            None,
            Rescore {
                exact: &exact,
                head,
            },
        )
        .unwrap();
    assert_eq!(hits.len(), 100);
    for (i, (id, score)) in hits.iter().enumerate() {
        let truth: f32 = vectors[id].iter().zip(q).map(|(a, b)| a * b).sum();
        let tolerance = if i < head { 1e-6 } else { 5e-3 };
        assert!(
            (score - truth).abs() <= tolerance,
            "hit {i}: {score} vs {truth}"
        );
    }
    assert!(hits[..head].windows(2).all(|w| w[0].1 >= w[1].1));
    let gone = hits[0].0;
    let without = |id: u64| if id == gone { Ok(None) } else { exact(id) };
    let hits = index
        .search(
            q,
            10,
            None,
            Rescore {
                exact: &without,
                head,
            },
        )
        .unwrap();
    assert!(hits.iter().all(|h| h.0 != gone) && hits.len() == 10);
}
