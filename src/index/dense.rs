//! Approximate nearest-neighbour search over chunk vectors, with hnsw_rs.
//!
//! Vectors are unit length and compared with `DistDot` (SIMD via `simdeez_f`), so the graph's
//! distance is `1 - cosine`. hnsw_rs cannot delete or update points, so deletions are
//! *tombstones*: the ids are filtered out at search time, and the graph is rebuilt from sled's
//! vectors once tombstones exceed a configured share of the points.
//!
//! Reproducibility: batches are inserted in order, one point at a time (up to a size where
//! parallel insertion pays), and hnsw_rs seeds its level generator, so the same operations
//! build the same graph.
//!
//! Persistence: a checkpoint dumps the graph into `dense.tmp/` with a `meta.json` (applied
//! sequence, tombstones) and renames it over `dense/`, so a crash leaves either the old or the
//! new checkpoint, never half of one. Operations logged after the checkpoint are replayed from
//! sled on start-up; replaying an insertion twice is harmless because duplicate ids are
//! dropped from results.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use hnsw_rs::prelude::{AnnT, DistDot, Hnsw, HnswIo};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const BASENAME: &str = "graph";
const MAX_LAYER: usize = 16;
/// Default of [`HnswParams::parallel_insert_min`]. Batches smaller than it are inserted one
/// point at a time, in order: hnsw_rs seeds its level generator, so the graph is then a pure
/// function of the operation sequence and search results are the same from run to run on one
/// machine (the eval gate relies on it). Larger batches (rebuilds of big collections, bulk
/// loads when the setting is lowered) are inserted in parallel, on every core, and their
/// graphs are not bit-reproducible.
pub const PARALLEL_INSERT_MIN: usize = 50_000;

/// Graph parameters.
#[derive(Debug, Clone, Copy)]
pub struct HnswParams {
    pub m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
    /// Batches of at least this many points are inserted in parallel (see
    /// [`PARALLEL_INSERT_MIN`]).
    pub parallel_insert_min: usize,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    applied_seq: u64,
    points: usize,
    dimension: usize,
    tombstones: Vec<u64>,
}

struct State {
    hnsw: Arc<Hnsw<'static, f32, DistDot>>,
    points: usize,
    tombstones: HashSet<u64>,
    applied_seq: u64,
    dirty: bool,
}

pub struct DenseIndex {
    dir: PathBuf,
    dimension: usize,
    params: HnswParams,
    state: RwLock<State>,
}

/// The pool large graph builds run on. Hybrid search runs its dense side on rayon's global
/// pool (`rayon::join`); a rebuild of a big graph on that pool held both of its threads for as
/// long as it ran and every hybrid search waited behind it (a 30 s stall the crash-torture
/// harness met once a collection passed 50,000 chunks). On a pool of its own the rebuild only
/// competes for CPU time, which the OS shares.
fn build_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("quarry-hnsw-build-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// Inserts `batch` into `graph` (see [`PARALLEL_INSERT_MIN`] and [`build_pool`]).
fn insert(graph: &Hnsw<'static, f32, DistDot>, batch: &[(&[f32], usize)], parallel_min: usize) {
    if batch.len() < parallel_min.max(2) {
        for &(v, id) in batch {
            graph.insert_slice((v, id));
        }
    } else {
        let batch = batch.to_vec();
        match build_pool() {
            Some(pool) => pool.install(|| graph.parallel_insert_slice(&batch)),
            None => graph.parallel_insert_slice(&batch),
        }
    }
}

fn new_graph(params: &HnswParams, capacity: usize) -> Hnsw<'static, f32, DistDot> {
    Hnsw::new(
        params.m,
        capacity.max(1024),
        MAX_LAYER,
        params.ef_construction,
        DistDot,
    )
}

impl DenseIndex {
    /// Opens the checkpoint in `dir` (`dir/dense`), or starts empty.
    pub fn open(dir: &Path, dimension: usize, params: HnswParams) -> Result<DenseIndex> {
        let live = dir.join("dense");
        let old = dir.join("dense.old");
        // A crash between the two renames of a checkpoint leaves only `dense.old`.
        if !live.exists() && old.exists() {
            std::fs::rename(&old, &live)?;
        }
        let _ = std::fs::remove_dir_all(dir.join("dense.tmp"));
        let meta_path = live.join("meta.json");
        let state = if meta_path.exists() {
            let meta: Meta = serde_json::from_slice(&std::fs::read(&meta_path)?)?;
            if meta.dimension != dimension {
                return Err(Error::internal(format!(
                    "dense checkpoint in {} has dimension {}, collection has {dimension}",
                    live.display(),
                    meta.dimension
                )));
            }
            let hnsw = if meta.points > 0 {
                // hnsw_rs ties a loaded graph's lifetime to its `HnswIo`. The loader is small
                // (paths and options; the graph's data is copied out of it), so it is leaked
                // once per load to give the graph a 'static lifetime.
                let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(&live, BASENAME)));
                io.load_hnsw::<f32, DistDot>().map_err(|e| {
                    Error::internal(format!("cannot load HNSW from {}: {e}", live.display()))
                })?
            } else {
                new_graph(&params, 0)
            };
            State {
                hnsw: Arc::new(hnsw),
                points: meta.points,
                tombstones: meta.tombstones.into_iter().collect(),
                applied_seq: meta.applied_seq,
                dirty: false,
            }
        } else {
            State {
                hnsw: Arc::new(new_graph(&params, 0)),
                points: 0,
                tombstones: HashSet::new(),
                applied_seq: 0,
                dirty: false,
            }
        };
        Ok(DenseIndex {
            dir: dir.to_path_buf(),
            dimension,
            params,
            state: RwLock::new(state),
        })
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, State>> {
        self.state
            .read()
            .map_err(|_| Error::internal("dense index lock poisoned"))
    }

    fn write(&self) -> Result<std::sync::RwLockWriteGuard<'_, State>> {
        self.state
            .write()
            .map_err(|_| Error::internal("dense index lock poisoned"))
    }

    pub fn applied_seq(&self) -> Result<u64> {
        Ok(self.read()?.applied_seq)
    }

    /// Points in the graph that are not tombstoned.
    #[cfg(test)]
    pub fn live_points(&self) -> Result<usize> {
        let s = self.read()?;
        Ok(s.points.saturating_sub(s.tombstones.len()))
    }

    /// Points in the graph, tombstoned or not.
    pub fn graph_points(&self) -> Result<usize> {
        Ok(self.read()?.points)
    }

    /// Deleted points still in the graph.
    pub fn tombstones(&self) -> Result<usize> {
        Ok(self.read()?.tombstones.len())
    }

    /// Share of graph points that are tombstones.
    pub fn tombstone_ratio(&self) -> Result<f32> {
        let s = self.read()?;
        Ok(if s.points == 0 {
            0.0
        } else {
            s.tombstones.len() as f32 / s.points as f32
        })
    }

    /// Inserts `add`, tombstones `remove`, and records `seq` as applied (in memory; durable at
    /// the next checkpoint).
    pub fn apply(&self, seq: u64, add: &[(u64, Vec<f32>)], remove: &[u64]) -> Result<()> {
        for (_, v) in add {
            if v.len() != self.dimension {
                return Err(Error::internal(format!(
                    "vector of dimension {} in a {}-d index",
                    v.len(),
                    self.dimension
                )));
            }
        }
        let hnsw = self.read()?.hnsw.clone();
        if !add.is_empty() {
            let batch: Vec<(&[f32], usize)> = add
                .iter()
                .map(|(id, v)| (v.as_slice(), *id as usize))
                .collect();
            insert(&hnsw, &batch, self.params.parallel_insert_min);
        }
        let mut s = self.write()?;
        s.points += add.len();
        s.tombstones.extend(remove.iter().copied());
        s.applied_seq = s.applied_seq.max(seq);
        s.dirty = true;
        Ok(())
    }

    /// Nearest `k` live chunks to `query` as (chunk id, cosine similarity), best first.
    /// `allowed`, when given, is a sorted list of the only chunk ids that may be returned.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        allowed: Option<&[u64]>,
    ) -> Result<Vec<(u64, f32)>> {
        if query.len() != self.dimension {
            return Err(Error::invalid(format!(
                "query vector has dimension {}, the collection's model produces {}",
                query.len(),
                self.dimension
            )));
        }
        let s = self.read()?;
        if k == 0 || s.points == 0 {
            return Ok(Vec::new());
        }
        let mut ask = k + s.tombstones.len().min(k);
        loop {
            let ef = self.params.ef_search.max(ask);
            let found = match allowed {
                None => s.hnsw.search(query, ask, ef),
                Some(ids) => {
                    let filter = |id: &usize| ids.binary_search(&(*id as u64)).is_ok();
                    s.hnsw.search_filter(query, ask, ef, Some(&filter))
                }
            };
            let exhausted = found.len() < ask || ask >= s.points;
            let mut seen = HashSet::new();
            let hits: Vec<(u64, f32)> = found
                .into_iter()
                .map(|n| (n.d_id as u64, 1.0 - n.distance))
                .filter(|(id, _)| !s.tombstones.contains(id) && seen.insert(*id))
                .take(k)
                .collect();
            if hits.len() >= k || exhausted {
                return Ok(hits);
            }
            ask = (ask * 2).min(s.points);
        }
    }

    /// Whether there are changes since the last checkpoint.
    pub fn is_dirty(&self) -> Result<bool> {
        Ok(self.read()?.dirty)
    }

    /// Writes the graph and its metadata durably (see the module docs).
    ///
    /// The dump runs on a snapshot of the state taken under a short read lock, so searches go
    /// on while it writes: the caller holds the collection's write lock, so no insertion or
    /// rebuild can change the graph meanwhile.
    pub fn checkpoint(&self) -> Result<()> {
        let (hnsw, meta) = {
            let s = self.read()?;
            if !s.dirty {
                return Ok(());
            }
            let meta = Meta {
                applied_seq: s.applied_seq,
                points: s.points,
                dimension: self.dimension,
                tombstones: s.tombstones.iter().copied().collect(),
            };
            (s.hnsw.clone(), meta)
        };
        let tmp = self.dir.join("dense.tmp");
        let live = self.dir.join("dense");
        let old = self.dir.join("dense.old");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        if meta.points > 0 {
            let name = hnsw
                .file_dump(&tmp, BASENAME)
                .map_err(|e| Error::internal(format!("HNSW dump failed: {e}")))?;
            if name != BASENAME {
                return Err(Error::internal(format!(
                    "HNSW dump used basename {name}, expected {BASENAME}"
                )));
            }
        }
        std::fs::write(tmp.join("meta.json"), serde_json::to_vec(&meta)?)?;
        for entry in std::fs::read_dir(&tmp)? {
            std::fs::File::open(entry?.path())?.sync_all()?;
        }
        let _ = std::fs::remove_dir_all(&old);
        if live.exists() {
            std::fs::rename(&live, &old)?;
        }
        std::fs::rename(&tmp, &live)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        let _ = std::fs::remove_dir_all(&old);
        let mut s = self.write()?;
        if s.applied_seq == meta.applied_seq && s.points == meta.points {
            s.dirty = false;
        }
        Ok(())
    }

    /// Replaces the graph with one built from `vectors` (the live chunks), dropping tombstones.
    pub fn rebuild(&self, vectors: Vec<(u64, Vec<f32>)>) -> Result<()> {
        let graph = new_graph(&self.params, vectors.len());
        let batch: Vec<(&[f32], usize)> = vectors
            .iter()
            .map(|(id, v)| (v.as_slice(), *id as usize))
            .collect();
        insert(&graph, &batch, self.params.parallel_insert_min);
        let mut s = self.write()?;
        let old = std::mem::replace(&mut s.hnsw, Arc::new(graph));
        s.points = vectors.len();
        s.tombstones.clear();
        s.dirty = true;
        drop(s);
        // Dropped after the lock is released: hnsw_rs frees a graph with rayon, and searches
        // waiting for this lock may occupy every rayon worker (hybrid search runs its dense
        // side inside rayon::join), which deadlocked the process under load.
        drop(old);
        Ok(())
    }
}

/// Exact cosine search over `candidates` (unit vectors): the oracle HNSW is tested against, and
/// the plan for filters that allow few chunks.
pub fn exact_search(
    query: &[f32],
    candidates: impl Iterator<Item = (u64, Vec<f32>)>,
    k: usize,
) -> Vec<(u64, f32)> {
    let mut scored: Vec<(u64, f32)> = candidates
        .map(|(id, v)| (id, v.iter().zip(query).map(|(a, b)| a * b).sum::<f32>()))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(k);
    scored
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

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
        let dir = tempfile::tempdir().unwrap();
        let index = DenseIndex::open(dir.path(), 384, params()).unwrap();
        index.apply(1, &data, &[]).unwrap();
        let queries = clustered(200, 384, 60, 8);
        let mut hits = 0;
        for (_, q) in &queries {
            let exact: HashSet<u64> = exact_search(q, data.iter().cloned(), 10)
                .into_iter()
                .map(|h| h.0)
                .collect();
            let approx = index.search(q, 10, None).unwrap();
            hits += approx.iter().filter(|h| exact.contains(&h.0)).count();
        }
        let recall = hits as f64 / (queries.len() * 10) as f64;
        println!("HNSW recall@10 over 6000 clustered 384-d vectors: {recall:.4}");
        assert!(recall >= 0.98, "recall@10 {recall} < 0.98");
    }

    #[test]
    fn tombstones_checkpoint_reload_and_rebuild() {
        let data = clustered(500, 16, 5, 1);
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
            assert_eq!(index.search(q, 1, None).unwrap()[0].0, data[0].0);
            index.apply(2, &[], &[data[0].0]).unwrap();
            let top = index.search(q, 5, None).unwrap();
            assert!(top.iter().all(|h| h.0 != data[0].0));
            assert_eq!(top.len(), 5);
            index.checkpoint().unwrap();
        }
        let index = DenseIndex::open(dir.path(), 16, p).unwrap();
        assert_eq!(index.applied_seq().unwrap(), 2);
        assert_eq!(index.live_points().unwrap(), 499);
        let q = &data[0].1;
        assert!(index
            .search(q, 5, None)
            .unwrap()
            .iter()
            .all(|h| h.0 != data[0].0));
        // Filtered search returns only allowed ids.
        let allowed: Vec<u64> = vec![data[3].0, data[7].0];
        let hits = index.search(q, 5, Some(&allowed)).unwrap();
        assert!(!hits.is_empty() && hits.iter().all(|h| allowed.contains(&h.0)));
        // Rebuild drops tombstones.
        index.rebuild(data[1..].to_vec()).unwrap();
        assert_eq!(index.tombstone_ratio().unwrap(), 0.0);
        assert_eq!(index.live_points().unwrap(), 499);
        // Wrong dimension is a user error.
        assert!(matches!(
            index.search(&[1.0; 3], 1, None),
            Err(Error::InvalidArgument(_))
        ));
    }

    /// Searches running on rayon's workers (as hybrid search runs its dense side) while
    /// rebuilds swap the graph: the old graph, freed with rayon, must not be freed under the
    /// lock those searches wait for. This hung for good before the fix.
    #[test]
    fn rebuilds_never_deadlock_with_searches_on_rayon_workers() {
        let data = clustered(1500, 32, 10, 5);
        let dir = tempfile::tempdir().unwrap();
        let index = std::sync::Arc::new(DenseIndex::open(dir.path(), 32, params()).unwrap());
        index.apply(1, &data, &[]).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let searchers: Vec<_> = (0..4)
            .map(|t| {
                let (index, stop, q) = (index.clone(), stop.clone(), data[t].1.clone());
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        rayon::join(
                            || index.search(&q, 10, None).unwrap(),
                            || index.search(&q, 10, None).unwrap(),
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
            || index.search(&q, 10, None).unwrap(),
            || index.search(&q, 10, None).unwrap(),
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
            index.search(q, 10, None).unwrap();
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
}
