//! Approximate nearest-neighbour search over chunk vectors: our own HNSW graph over int8
//! codes (`quarry_hnsw`, in `crates/hnsw`), with the final candidates rescored exactly.
//!
//! Vectors are unit length, so similarity is the dot product (cosine). The graph ranks by
//! approximate similarities of int8 codes; [`DenseIndex::search`] then rescores the best
//! candidates with the exact f32 vectors from a source the caller supplies (the engine reads
//! sled, where each vector is stored once at full precision) and returns exact cosines.
//!
//! The graph cannot delete points, so deletions are *tombstones*: their ids are filtered out
//! of the results (the walk still passes through them), and the graph is rebuilt from sled's
//! vectors once tombstones exceed a configured share of the points.
//!
//! Reproducibility: a point's level is a hash of its id, and batches smaller than
//! `parallel_insert_min` are inserted one point at a time in order, so the same operations
//! build the same graph and searches return the same results from run to run (the eval gate
//! relies on it). Larger batches are planned on every core and their graphs are not
//! bit-reproducible.
//!
//! Persistence: a checkpoint writes the graph to `dense.tmp/graph.bin` (checksummed) with a
//! `meta.json` (applied sequence, tombstones) and renames the directory over `dense/`, so a
//! crash leaves either the old or the new checkpoint, never half of one. Operations logged
//! after the checkpoint are replayed from sled on start-up; replaying an insertion twice is
//! harmless because duplicate ids are dropped from results. A checkpoint in an older format
//! (hnsw_rs's) is ignored, and the engine rebuilds the graph from sled.

use std::collections::HashSet;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use quarry_hnsw::{Graph, Plan, Shape};

const GRAPH_FILE: &str = "graph.bin";
/// The checkpoint format this code writes; older ones are rebuilt.
const FORMAT: u32 = 2;
/// Candidates rescored with exact vectors at least (the engine asks for the whole depth of a
/// ranking), so a small `k` is not at the mercy of int8 rounding near its boundary.
pub const RESCORE_MIN: usize = 32;

/// How [`DenseIndex::search`] rescores its best candidates.
#[derive(Clone, Copy)]
pub struct Rescore<'a> {
    /// The exact vector of a chunk (`None`: it is gone).
    pub exact: &'a dyn Fn(u64) -> Result<Option<Vec<f32>>>,
    /// How many of the best candidates to rescore (at least [`RESCORE_MIN`]).
    pub head: usize,
}
/// Default of [`HnswParams::parallel_insert_min`] (see the module docs).
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
    #[serde(default)]
    format: u32,
    applied_seq: u64,
    points: usize,
    dimension: usize,
    tombstones: Vec<u64>,
}

struct State {
    graph: Graph,
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

/// Relinks every point a walk from the entry point cannot reach (see
/// `quarry_hnsw::Graph::repair_reachability`): a point no search can reach is a chunk dense
/// search never returns. Returns how many were relinked (counted in
/// `quarry_hnsw_repaired_total`).
fn repair(graph: &mut Graph) -> usize {
    let relinked = graph.repair_reachability();
    if relinked > 0 {
        tracing::info!(
            relinked,
            points = graph.len(),
            "HNSW: relinked points no search could reach"
        );
        crate::metrics::global()
            .hnsw_repaired
            .add(&[], relinked as f64);
    }
    relinked
}

/// Inserts `batch` into the graph behind `lock`: each point is planned under a read lock and
/// committed under a write lock (see `quarry_hnsw`), one at a time in order for small batches, on
/// every core of [`build_pool`] for large ones.
fn insert<T: Send + Sync>(
    lock: &RwLock<T>,
    graph: impl Fn(&T) -> &Graph + Sync,
    graph_mut: impl Fn(&mut T) -> &mut Graph + Sync,
    batch: &[(u64, Vec<f32>)],
    parallel_min: usize,
) -> Result<()> {
    let poisoned = || Error::internal("dense index lock poisoned");
    graph_mut(&mut *lock.write().map_err(|_| poisoned())?).reserve(batch.len());
    let one = |(id, v): &(u64, Vec<f32>)| -> Result<()> {
        let plan: Plan = graph(&*lock.read().map_err(|_| poisoned())?).plan(*id, v);
        graph_mut(&mut *lock.write().map_err(|_| poisoned())?).commit(plan);
        Ok(())
    };
    if batch.len() < parallel_min.max(2) {
        batch.iter().try_for_each(one)
    } else {
        let all = || batch.par_iter().with_min_len(16).try_for_each(one);
        match build_pool() {
            Some(pool) => pool.install(all),
            None => all(),
        }
    }
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
        let shape = Shape {
            dim: dimension,
            m: params.m,
            ef_construction: params.ef_construction,
        };
        let empty = || State {
            graph: Graph::new(shape),
            tombstones: HashSet::new(),
            applied_seq: 0,
            dirty: false,
        };
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
            if meta.format != FORMAT {
                tracing::info!(dir = %live.display(), "dense checkpoint is in an older format; the graph will be rebuilt from sled");
                empty()
            } else {
                let graph = if meta.points > 0 {
                    let bytes = std::fs::read(live.join(GRAPH_FILE))?;
                    Graph::read_from(&bytes, params.ef_construction).map_err(|e| {
                        Error::internal(format!("cannot load HNSW from {}: {e}", live.display()))
                    })?
                } else {
                    Graph::new(shape)
                };
                if graph.len() != meta.points || graph.dim() != dimension {
                    return Err(Error::internal(format!(
                        "dense checkpoint in {} holds {} points of dimension {}, its meta says {} of {dimension}",
                        live.display(),
                        graph.len(),
                        graph.dim(),
                        meta.points
                    )));
                }
                let mut state = State {
                    graph,
                    tombstones: meta.tombstones.into_iter().collect(),
                    applied_seq: meta.applied_seq,
                    dirty: false,
                };
                // A checkpoint of an older version, or one from a restored archive, was
                // written without the repair: the invariant holds from the load on.
                if repair(&mut state.graph) > 0 {
                    state.dirty = true;
                }
                state
            }
        } else {
            empty()
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
        Ok(s.graph.len().saturating_sub(s.tombstones.len()))
    }

    /// Points in the graph, tombstoned or not.
    pub fn graph_points(&self) -> Result<usize> {
        Ok(self.read()?.graph.len())
    }

    /// Bytes of memory the graph holds.
    pub fn graph_bytes(&self) -> Result<usize> {
        Ok(self.read()?.graph.heap_bytes())
    }

    /// Deleted points still in the graph.
    pub fn tombstones(&self) -> Result<usize> {
        Ok(self.read()?.tombstones.len())
    }

    /// Share of graph points that are tombstones.
    pub fn tombstone_ratio(&self) -> Result<f32> {
        let s = self.read()?;
        Ok(if s.graph.is_empty() {
            0.0
        } else {
            s.tombstones.len() as f32 / s.graph.len() as f32
        })
    }

    /// Inserts `add`, tombstones `remove`, and records `seq` as applied (in memory; durable at
    /// the next checkpoint). Searches go on meanwhile (see `quarry_hnsw`).
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
        if !add.is_empty() {
            insert(
                &self.state,
                |s| &s.graph,
                |s| &mut s.graph,
                add,
                self.params.parallel_insert_min,
            )?;
        }
        let mut s = self.write()?;
        s.tombstones.extend(remove.iter().copied());
        s.applied_seq = s.applied_seq.max(seq);
        s.dirty = true;
        // A batch of at least 1% of the graph pays for a walk of it at once (cheap next to
        // its insertions); smaller ones are repaired at the next checkpoint.
        if add.len().saturating_mul(100) >= s.graph.len() {
            repair(&mut s.graph);
        }
        Ok(())
    }

    /// Nearest `k` live chunks to `query` as (chunk id, cosine similarity), best first.
    /// `allowed`, when given, is a sorted list of the only chunk ids that may be returned.
    /// The graph's best `rescore.head` candidates (at least [`RESCORE_MIN`]) are rescored
    /// with the exact vectors `rescore.exact` returns (`None`: the chunk is gone, and so is
    /// the candidate) and ranked by them; the rest follow with their int8 similarities (within
    /// about 1e-3 of the exact ones). Each exact vector is a read from sled, about 30 us at
    /// 10^6 chunks once they are out of its cache. The engine asks for the whole depth, so a
    /// ranking does not depend on the page (see `engine::search`).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        allowed: Option<&[u64]>,
        rescore: Rescore<'_>,
    ) -> Result<Vec<(u64, f32)>> {
        if query.len() != self.dimension {
            return Err(Error::invalid(format!(
                "query vector has dimension {}, the collection's model produces {}",
                query.len(),
                self.dimension
            )));
        }
        if k == 0 {
            return Ok(Vec::new());
        }
        let head = rescore.head.max(RESCORE_MIN);
        let want = k.max(head);
        let candidates: Vec<(u64, f32)> = {
            let s = self.read()?;
            let ef = self.params.ef_search.max(want);
            let g = &s.graph;
            let found = if s.tombstones.is_empty() && allowed.is_none() {
                g.search(query, ef, ef, &|_| true)
            } else {
                let accept = |node: u32| {
                    let id = g.id(node);
                    !s.tombstones.contains(&id)
                        && allowed.is_none_or(|a| a.binary_search(&id).is_ok())
                };
                g.search(query, ef, ef, &accept)
            };
            let mut seen = HashSet::new();
            found
                .into_iter()
                .map(|c| (g.id(c.node), c.sim))
                .filter(|(id, _)| seen.insert(*id))
                .take(want)
                .collect()
        };
        let split = head.min(candidates.len());
        let mut hits = Vec::with_capacity(candidates.len());
        for &(id, _) in &candidates[..split] {
            if let Some(v) = (rescore.exact)(id)? {
                hits.push((id, dot(&v, query)));
            }
        }
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        hits.extend_from_slice(&candidates[split..]);
        hits.truncate(k);
        Ok(hits)
    }

    /// Whether there are changes since the last checkpoint.
    pub fn is_dirty(&self) -> Result<bool> {
        Ok(self.read()?.dirty)
    }

    /// Writes the graph and its metadata durably (see the module docs).
    ///
    /// The graph is written under the state's read lock, so searches go on while it writes;
    /// the caller holds the collection's write lock, so no insertion or rebuild waits on it.
    pub fn checkpoint(&self) -> Result<()> {
        // Every point reachable before the graph is written: checked under the read lock (one
        // walk), repaired under the write lock only when something is stranded.
        let stranded = {
            let s = self.read()?;
            s.dirty && s.graph.unreachable() > 0
        };
        if stranded {
            repair(&mut self.write()?.graph);
        }
        let tmp = self.dir.join("dense.tmp");
        let live = self.dir.join("dense");
        let old = self.dir.join("dense.old");
        let meta = {
            let s = self.read()?;
            if !s.dirty {
                return Ok(());
            }
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp)?;
            if !s.graph.is_empty() {
                let file = std::fs::File::create(tmp.join(GRAPH_FILE))?;
                s.graph.write_to(BufWriter::with_capacity(1 << 20, &file))?;
                file.sync_all()?;
            }
            Meta {
                format: FORMAT,
                applied_seq: s.applied_seq,
                points: s.graph.len(),
                dimension: self.dimension,
                tombstones: s.tombstones.iter().copied().collect(),
            }
        };
        std::fs::write(tmp.join("meta.json"), serde_json::to_vec(&meta)?)?;
        std::fs::File::open(tmp.join("meta.json"))?.sync_all()?;
        std::fs::File::open(&tmp)?.sync_all()?;
        let _ = std::fs::remove_dir_all(&old);
        if live.exists() {
            std::fs::rename(&live, &old)?;
        }
        std::fs::rename(&tmp, &live)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        let _ = std::fs::remove_dir_all(&old);
        let mut s = self.write()?;
        if s.applied_seq == meta.applied_seq && s.graph.len() == meta.points {
            s.dirty = false;
        }
        Ok(())
    }

    /// Replaces the graph with one built from `vectors` (the live chunks), dropping tombstones.
    /// The new graph is built aside; searches use the old one until the swap.
    pub fn rebuild(&self, vectors: Vec<(u64, Vec<f32>)>) -> Result<()> {
        let shape = Shape {
            dim: self.dimension,
            m: self.params.m,
            ef_construction: self.params.ef_construction,
        };
        let fresh = RwLock::new(Graph::new(shape));
        insert(
            &fresh,
            |g| g,
            |g| g,
            &vectors,
            self.params.parallel_insert_min,
        )?;
        let mut graph = fresh
            .into_inner()
            .map_err(|_| Error::internal("dense index lock poisoned"))?;
        repair(&mut graph);
        let mut s = self.write()?;
        let old = std::mem::replace(&mut s.graph, graph);
        s.tombstones.clear();
        s.dirty = true;
        drop(s);
        // Freed after the lock is released: freeing a large graph takes a while.
        drop(old);
        Ok(())
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
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
#[path = "dense_tests.rs"]
mod tests;
