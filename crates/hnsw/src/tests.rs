//! The graph on its own: codes, kernels, recall against exact search, filters, stale plans,
//! and the file format (round trip, determinism, damage detected).

use super::*;
use crate::code::dot_i8_portable;
use rand::{Rng, SeedableRng};

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// Unit vectors around `clusters` centres, varying along a shared 16-d subspace plus noise:
/// the low intrinsic dimension of real embeddings, which uniform random vectors lack.
fn clustered(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut shape = rand::rngs::StdRng::seed_from_u64(99);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..dim).map(|_| shape.random_range(-1.0f32..1.0)).collect())
        .collect();
    let basis: Vec<Vec<f32>> = (0..16)
        .map(|_| (0..dim).map(|_| shape.random_range(-0.5f32..0.5)).collect())
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let c = &centres[rng.random_range(0..clusters)];
            let z: Vec<f32> = (0..16).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            unit(
                (0..dim)
                    .map(|d| {
                        c[d] + basis.iter().zip(&z).map(|(b, zj)| b[d] * zj).sum::<f32>()
                            + rng.random_range(-0.05f32..0.05)
                    })
                    .collect(),
            )
        })
        .collect()
}

fn shape(dim: usize) -> Shape {
    Shape {
        dim,
        m: 16,
        ef_construction: 100,
    }
}

fn build(data: &[Vec<f32>], dim: usize) -> Graph {
    let mut g = Graph::new(shape(dim));
    for (i, v) in data.iter().enumerate() {
        let plan = g.plan(i as u64 + 1, v);
        g.commit(plan);
    }
    g
}

/// The level-0 in-link counts recounted from the links, to check the ones kept up to date.
fn recount_in0(g: &Graph) -> Vec<u32> {
    let mut counts = vec![0u32; g.len()];
    for node in 0..g.len() as u32 {
        for &x in g.neighbours(node, 0) {
            counts[x as usize] += 1;
        }
    }
    counts
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn exact_top(data: &[Vec<f32>], q: &[f32], k: usize) -> Vec<u64> {
    let mut s: Vec<(u64, f32)> = data
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64 + 1, dot(v, q)))
        .collect();
    s.sort_by(|a, b| b.1.total_cmp(&a.1));
    s.into_iter().take(k).map(|x| x.0).collect()
}

fn recall(g: &Graph, data: &[Vec<f32>], queries: &[Vec<f32>]) -> f64 {
    let mut hits = 0;
    for q in queries {
        let exact = exact_top(data, q, 10);
        let found: Vec<u64> = g
            .search(q, 10, 64, &|_| true)
            .iter()
            .map(|c| g.id(c.node))
            .collect();
        hits += found.iter().filter(|id| exact.contains(id)).count();
    }
    hits as f64 / (10 * queries.len()) as f64
}

#[test]
fn codes_approximate_the_dot_product() {
    let data = clustered(200, 384, 5, 1);
    let mut worst = 0f32;
    for pair in data.windows(2) {
        let (a, b) = (quantize(&pair[0]), quantize(&pair[1]));
        let approx = dot_i8(&a.codes, &b.codes) as f32 * a.scale * b.scale;
        worst = worst.max((approx - dot(&pair[0], &pair[1])).abs());
    }
    assert!(worst < 5e-3, "int8 dot product off by {worst}");
    let zero = quantize(&[0.0; 8]);
    assert_eq!(zero.scale, 0.0);
    assert!(zero.codes.iter().all(|&c| c == 0));
}

#[test]
fn the_simd_kernel_matches_the_portable_one() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for len in [0, 1, 15, 16, 17, 100, 384, 1000] {
        let a: Vec<i8> = (0..len).map(|_| rng.random_range(-127..=127)).collect();
        let b: Vec<i8> = (0..len).map(|_| rng.random_range(-127..=127)).collect();
        let naive: i32 = a.iter().zip(&b).map(|(&x, &y)| x as i32 * y as i32).sum();
        assert_eq!(dot_i8(&a, &b), naive, "length {len}");
        assert_eq!(dot_i8_portable(&a, &b), naive, "length {len}");
    }
}

#[test]
fn recall_at_10_against_exact_search() {
    let data = clustered(5000, 64, 40, 2);
    let g = build(&data, 64);
    let r = recall(&g, &data, &clustered(200, 64, 40, 3));
    println!("recall@10 of the int8 graph alone, 5000 clustered 64-d points: {r:.4}");
    assert!(r >= 0.95, "recall@10 {r}");
    // Every point finds itself first.
    for (i, v) in data.iter().enumerate().step_by(97) {
        assert_eq!(g.id(g.search(v, 1, 64, &|_| true)[0].node), i as u64 + 1);
    }
}

#[test]
fn plans_made_on_a_stale_graph_still_build_a_good_one() {
    // Plan batches of 50 on the same graph, then commit them: what a parallel build does when
    // points are planned while others commit.
    let data = clustered(3000, 32, 30, 4);
    let mut g = Graph::new(shape(32));
    for (b, batch) in data.chunks(50).enumerate() {
        let plans: Vec<Plan> = batch
            .iter()
            .enumerate()
            .map(|(i, v)| g.plan((b * 50 + i) as u64 + 1, v))
            .collect();
        for p in plans {
            g.commit(p);
        }
    }
    assert_eq!(g.len(), 3000);
    g.validate().unwrap();
    assert_eq!(
        g.in0,
        recount_in0(&g),
        "in-link counts drifted from the links"
    );
    assert_eq!(g.unreachable(), 0);
    let r = recall(&g, &data, &clustered(100, 32, 30, 5));
    assert!(r >= 0.93, "recall@10 {r}");
}

#[test]
fn a_filter_admits_only_accepted_nodes() {
    let data = clustered(2000, 32, 10, 6);
    let g = build(&data, 32);
    let even = |node: u32| g.id(node).is_multiple_of(2);
    let found = g.search(&data[0], 20, 64, &even);
    assert_eq!(found.len(), 20);
    assert!(found.iter().all(|c| g.id(c.node).is_multiple_of(2)));
    assert!(found.windows(2).all(|w| w[0].sim >= w[1].sim));
    // A filter nothing passes returns nothing, after walking the whole graph.
    assert!(g.search(&data[0], 5, 64, &|_| false).is_empty());
    assert!(Graph::new(shape(32))
        .search(&data[0], 5, 64, &|_| true)
        .is_empty());
}

#[test]
fn the_file_round_trips_and_the_same_inserts_write_the_same_bytes() {
    let data = clustered(1500, 48, 12, 7);
    let g = build(&data, 48);
    let mut bytes = Vec::new();
    g.write_to(&mut bytes).unwrap();
    let mut again = Vec::new();
    build(&data, 48).write_to(&mut again).unwrap();
    assert!(bytes == again, "the same inserts built different graphs");
    let loaded = Graph::read_from(&bytes, 100).unwrap();
    assert_eq!(loaded.len(), g.len());
    assert_eq!(loaded.in0, g.in0, "in-link counts are recounted on load");
    for q in data.iter().step_by(50) {
        let a: Vec<(u32, f32)> = g
            .search(q, 10, 64, &|_| true)
            .iter()
            .map(|c| (c.node, c.sim))
            .collect();
        let b: Vec<(u32, f32)> = loaded
            .search(q, 10, 64, &|_| true)
            .iter()
            .map(|c| (c.node, c.sim))
            .collect();
        assert_eq!(a, b);
    }
    // A loaded graph takes more points.
    let mut loaded = loaded;
    let plan = loaded.plan(99_999, &data[3]);
    loaded.commit(plan);
    assert_eq!(loaded.len(), 1501);
    let empty = Graph::new(shape(48));
    let mut e = Vec::new();
    empty.write_to(&mut e).unwrap();
    assert_eq!(Graph::read_from(&e, 100).unwrap().len(), 0);
}

#[test]
fn damaged_files_are_refused() {
    let data = clustered(300, 16, 4, 8);
    let mut bytes = Vec::new();
    build(&data, 16).write_to(&mut bytes).unwrap();
    for at in [0, 9, 100, bytes.len() / 2, bytes.len() - 5] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x40;
        assert!(Graph::read_from(&bad, 100).is_err(), "flipped byte {at}");
    }
    for len in [0, 3, 8, 60, bytes.len() - 1] {
        assert!(
            Graph::read_from(&bytes[..len], 100).is_err(),
            "cut at {len}"
        );
    }
    // Past the checksum, links are still checked: a link out of range is refused.
    let mut g = build(&data, 16);
    g.links0[0] = 10_000;
    let mut bad = Vec::new();
    g.write_to(&mut bad).unwrap();
    let err = Graph::read_from(&bad, 100).err().unwrap();
    assert!(err.contains("outside"), "{err}");
    // Header counts that claim more than the file holds (with a valid checksum) are refused
    // before anything is allocated from them; so is an entry point past the nodes.
    for (field, value) in [(3, u64::MAX / 2), (4, 1 << 60), (0, 1 << 40), (5, 1 << 20)] {
        let mut bad = bytes.clone();
        let at = 8 + field * 8;
        bad[at..at + 8].copy_from_slice(&value.to_le_bytes());
        let n = bad.len() - 4;
        let crc = crc32fast::hash(&bad[..n]);
        bad[n..].copy_from_slice(&crc.to_le_bytes());
        let err = Graph::read_from(&bad, 100).err().unwrap();
        assert!(err.contains("inconsistent"), "header field {field}: {err}");
    }
}

#[test]
fn levels_are_geometric_in_m() {
    let g = Graph::new(shape(8));
    let n = 100_000u64;
    let upper = (0..n).filter(|&id| g.level_for(id) > 0).count() as f64 / n as f64;
    // P(level > 0) = 1/m.
    assert!(
        (upper - 1.0 / 16.0).abs() < 0.005,
        "share above level 0: {upper}"
    );
    assert!((0..n).all(|id| g.level_for(id) <= MAX_LEVEL));
}

/// Data made of near-duplicates, as RAG corpora are (boilerplate, versions of one document):
/// a small cluster inserted first and a large one after it, every point a small variation of
/// its cluster's centre. Every point of the small cluster must still be reachable from the
/// large one, where the entry point ends up. (The crash torture's harder shape, many versions
/// of a small cluster among waves of near-duplicates, is the next test.)
#[test]
fn near_duplicate_clusters_stay_reachable() {
    let dim = 64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let centre = |rng: &mut rand::rngs::StdRng| -> Vec<f32> {
        unit((0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect())
    };
    let (a, b) = (centre(&mut rng), centre(&mut rng));
    let near = |c: &[f32], rng: &mut rand::rngs::StdRng| -> Vec<f32> {
        unit(
            c.iter()
                .map(|x| x + rng.random_range(-0.02f32..0.02))
                .collect(),
        )
    };
    let mut data: Vec<Vec<f32>> = (0..600).map(|_| near(&a, &mut rng)).collect();
    data.extend((0..8000).map(|_| near(&b, &mut rng)));
    let g = build(&data, dim);
    let mut missed = 0;
    for v in data.iter().take(600) {
        let found = g.search(v, 5, 64, &|_| true);
        if found.iter().all(|c| g.id(c.node) > 600) {
            missed += 1;
        }
    }
    assert_eq!(
        missed, 0,
        "{missed} of 600 points of the small cluster found only the large one"
    );
}

/// The crash torture's data shape, which stranded a small cluster: 240 diffuse points
/// (spread 0.1), then 15 rounds of 1,200 near-identical points of another cluster (spread
/// 0.02) and 150 new versions of the small cluster's points. Searching for each current version
/// by its own vector missed 8 of 240: pruning the lists of near-duplicate nodes dropped the
/// links out of their cluster (the heuristic's test is a coin flip when base and kept
/// neighbour are nearly the same point), and the walk stayed in the big cluster at similarity
/// ~0. Keeping each list's farthest candidate brought it to 1 miss, a beam through the upper
/// levels to 0.
/// The versioned-cluster data shape (see the next test): `rounds` waves of `wave` near-identical
/// points (spread `tight`) around one centre, each followed by `versions` new versions of the
/// small cluster's 240 points (spread 0.1). Returns the graph and each small point's current
/// version.
fn versions_among_near_duplicates(
    seed: u64,
    rounds: usize,
    wave: usize,
    versions: usize,
    tight: f32,
) -> (Graph, Vec<(u64, Vec<f32>)>) {
    let dim = 384;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let centre = |rng: &mut rand::rngs::StdRng| -> Vec<f32> {
        unit((0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect())
    };
    let (big, small) = (centre(&mut rng), centre(&mut rng));
    let near = |c: &[f32], spread: f32, rng: &mut rand::rngs::StdRng| -> Vec<f32> {
        unit(
            c.iter()
                .map(|x| x + spread * rng.random_range(-1.0f32..1.0))
                .collect(),
        )
    };
    let mut g = Graph::new(Shape {
        dim,
        m: 16,
        ef_construction: 200,
    });
    let mut next = 1u64;
    let mut add = |g: &mut Graph, v: &[f32]| -> u64 {
        let plan = g.plan(next, v);
        g.commit(plan);
        next += 1;
        next - 1
    };
    let mut current: Vec<(u64, Vec<f32>)> = (0..240)
        .map(|_| {
            let v = near(&small, 0.1, &mut rng);
            (add(&mut g, &v), v)
        })
        .collect();
    for _ in 0..rounds {
        for _ in 0..wave {
            let v = near(&big, tight, &mut rng);
            add(&mut g, &v);
        }
        for _ in 0..versions {
            let v = near(&small, 0.1, &mut rng);
            let n = rng.random_range(0..current.len());
            current[n] = (add(&mut g, &v), v);
        }
    }
    (g, current)
}

/// Current versions that a search for their own vector does not return in its top 5.
fn missed_by_own_vector(g: &Graph, current: &[(u64, Vec<f32>)]) -> usize {
    current
        .iter()
        .filter(|(id, v)| {
            let found = g.search(v, 5, 128, &|_| true);
            let hit = found.iter().any(|c| g.id(c.node) == *id);
            if !hit {
                let sims: Vec<f32> = found.iter().map(|c| c.sim).collect();
                println!("not found; the search ended at similarities {sims:?}");
            }
            !hit
        })
        .count()
}

#[test]
fn a_small_cluster_behind_near_duplicates_stays_reachable() {
    let (g, current) = versions_among_near_duplicates(5, 15, 1200, 150, 0.02);
    let stranded = g.unreachable();
    println!(
        "{stranded} of {} nodes unreachable from the entry point",
        g.len()
    );
    let missed = missed_by_own_vector(&g, &current);
    assert_eq!(
        missed,
        0,
        "{missed} of {} current points not found by their own vector",
        current.len()
    );
    assert_eq!(stranded, 0, "nodes no search can reach");
    assert_eq!(
        g.in0,
        recount_in0(&g),
        "in-link counts drifted from the links"
    );
}

/// The three near-duplicate shapes (spread, wave, versions), from diffuse to the tightest:
/// isotropic noise of 0.005 in 384-d, where central points are everyone's nearest neighbour
/// ("hubs") and small closed groups of the rest form (0.2-0.6% of nodes before the repair).
const SHAPES: [(f32, usize, usize); 3] = [(0.02, 1200, 150), (0.005, 2000, 60), (0.05, 600, 300)];

/// Builds each shape for `seeds` seeds and `rounds` rounds, repairing reachability as the
/// owner does at a checkpoint, and returns the cases with a node left unreachable or a current
/// version missed. Prints, per case, what the repair found and relinked.
fn stress(seeds: u64, rounds: usize) -> Vec<(u64, f32, usize, usize)> {
    let mut bad = Vec::new();
    for seed in 0..seeds {
        for (tight, wave, versions) in SHAPES {
            let (mut g, current) =
                versions_among_near_duplicates(seed, rounds, wave, versions, tight);
            let before = g.unreachable();
            let relinked = g.repair_reachability();
            let (stranded, missed) = (g.unreachable(), missed_by_own_vector(&g, &current));
            println!(
                "seed {seed} spread {tight} wave {wave} versions {versions} rounds {rounds}: \
                 {before} of {} unreachable before the repair, {relinked} relinked, \
                 {stranded} after; {missed} missed",
                g.len()
            );
            assert_eq!(
                g.in0,
                recount_in0(&g),
                "in-link counts drifted in the repair"
            );
            if stranded > 0 || missed > 0 {
                bad.push((seed, tight, stranded, missed));
            }
        }
    }
    bad
}

/// Every shape, small enough for CI: after the repair no node is unreachable and every
/// current version is found by its own vector.
#[test]
fn stress_small_every_node_reachable_after_repair() {
    let bad = stress(2, 4);
    assert!(
        bad.is_empty(),
        "cases with stranded or missed points: {bad:?}"
    );
}

/// The same over many seeds and the full size (slow: `cargo test -p quarry-hnsw --release --
/// --ignored stress_full`; `QUARRY_HNSW_STRESS_SEEDS`, default 8), kept as a benchmark of
/// how much the repair has to do.
#[test]
#[ignore = "slow stress run of the near-duplicate shapes; run by hand"]
fn stress_full_versions_among_near_duplicates() {
    let seeds: u64 = std::env::var("QUARRY_HNSW_STRESS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let bad = stress(seeds, 15);
    assert!(
        bad.is_empty(),
        "cases with stranded or missed points: {bad:?}"
    );
}
