//! A hierarchical navigable small-world graph (HNSW; Malkov and Yashunin, 2018) over int8
//! codes of unit vectors, laid out flat.
//!
//! Why our own: hnsw_rs kept every point as its own heap object, with an `Arc` per neighbour
//! and the f32 vector inside: at 10^6 384-d points that was about 3.3 KB per point in memory,
//! 20 s or more to load (one allocation per point and per link), and a second f32 copy of
//! every vector on disk beside sled's. Here a point costs its int8 codes (one byte per
//! dimension, plus a 4-byte scale), one fixed row of level-0 links (`2m` u32) and a few bytes
//! of bookkeeping; the rare upper-level lists (about one point in `m` has any) live apart.
//! Everything is a handful of flat arrays, so a checkpoint is one file that loads in a few
//! large reads.
//!
//! Codes: a vector `v` is stored as `round(v_i * 127 / max|v|)` with the scale `max|v| / 127`,
//! so a similarity between codes is an integer dot product times two scales. Its error is
//! about 1e-3 for unit 384-d vectors: plenty to steer the graph, not enough to rank the final
//! answers, so callers rescore the candidates with the exact f32 vectors, whose durable copy
//! is in sled (see `engine::search`). The vectors are stored once at full precision.
//!
//! Levels come from a hash of the point's id rather than a random generator, so a point's
//! level does not depend on the order of insertion, and inserting the same points one at a
//! time in the same order builds the same graph.
//!
//! Near-duplicates: in a cluster of nearly identical points (boilerplate, many versions of one
//! document) the pruning heuristic drops links out of the cluster at random, because base and
//! kept neighbour are nearly the same point, and a smaller cluster behind it can become
//! unreachable (the crash torture met this). Safeguards, each measured by the stress test at
//! the end of the tests:
//! - searches *and insertions* cross the upper levels with a beam of 8 (`UPPER_EF`) rather than
//!   one greedy path. An insertion that descended greedily could settle in the wrong cluster,
//!   link the new point only there, and leave it unfindable from its own cluster: that was
//!   every remaining miss;
//! - a pruned list keeps its farthest candidate, a way out of its cluster;
//! - level-0 in-links are counted ([`Graph::pruned_links`]): pruning keeps a node whose only
//!   in-link it holds while there is room, and a node that loses its last in-link anyway (a
//!   full list of such nodes, around a "hub" that is everyone's nearest neighbour) is adopted
//!   by the point being inserted (at most four rounds per commit). In the tight isotropic
//!   clusters of the stress test that took unreachable nodes from 45% to 0.2-0.6% (small
//!   closed groups), and to none in the other shapes;
//! - and what is left is repaired, not measured: [`Graph::repair_reachability`] (`reach.rs`)
//!   walks the graph from the entry point and gives every node it cannot reach an in-link
//!   from its nearest reachable node. The owner runs it at each checkpoint and after large
//!   batches; the stress test (which CI runs at a small size) asserts no node is left
//!   unreachable and no version is missed.
//!
//! Concurrency: the graph is a plain value that its owner keeps behind a lock. An insertion is
//! *planned* under shared access ([`Graph::plan`]: the searches that find its neighbours, most
//! of the work) and *committed* under exclusive access ([`Graph::commit`]: its links, the
//! reverse links and their pruning). Searches and the planning of other insertions go on in
//! parallel with planning; a plan made before other points were committed is still valid (its
//! neighbours exist), just made without them, as in any parallel HNSW build.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

mod code;
mod file;
mod links;
mod reach;

use code::dot_i8;
pub use code::{quantize, Code};

/// No node (an empty graph's entry point, a node without upper levels).
const NONE: u32 = u32::MAX;
/// The beam of a search on the levels above 0 (see [`Graph::search`]).
const UPPER_EF: usize = 8;
/// Levels above this are never drawn (with m = 16 the chance of level 16 is 16^-16).
pub const MAX_LEVEL: u8 = 16;

/// A node with its similarity to the query, ordered by similarity (then node, for ties).
#[derive(Debug, Clone, Copy)]
pub struct Cand {
    pub sim: f32,
    pub node: u32,
}

impl PartialEq for Cand {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Cand {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sim
            .total_cmp(&other.sim)
            .then(other.node.cmp(&self.node))
    }
}

/// Nodes seen by one search: a stamp per node, so clearing is one increment.
struct Visited {
    marks: Vec<u32>,
    epoch: u32,
}

impl Visited {
    fn reset(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.fill(0);
            self.epoch = 1;
        }
    }

    /// Marks `node`; false when it was already marked.
    fn insert(&mut self, node: u32) -> bool {
        let mark = &mut self.marks[node as usize];
        let fresh = *mark != self.epoch;
        *mark = self.epoch;
        fresh
    }
}

thread_local! {
    static VISITED: RefCell<Visited> = const { RefCell::new(Visited { marks: Vec::new(), epoch: 0 }) };
}

/// Graph parameters fixed at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub dim: usize,
    /// Links per node on the upper levels; level 0 holds twice as many.
    pub m: usize,
    pub ef_construction: usize,
}

/// The neighbours found for a point, ready to be committed (see the module docs).
pub struct Plan {
    id: u64,
    code: Code,
    level: u8,
    /// Chosen neighbours per level, from 0 up to the graph's top level when planned.
    links: Vec<Vec<u32>>,
    /// The pruned reverse links of the chosen neighbours whose lists were full, worked out
    /// while planning (pruning is the costly part of a commit): applied as they are when the
    /// list is still the one seen, else pruned again under the commit's exclusive access.
    pruned: Vec<Pruned>,
}

/// A neighbour's new list on one level; `NONE` in `after` stands for the planned point.
struct Pruned {
    node: u32,
    level: u8,
    before: Vec<u32>,
    after: Vec<u32>,
}

/// The graph (see the module docs). Nodes are numbered in insertion order.
pub struct Graph {
    shape: Shape,
    /// Chunk id per node.
    ids: Vec<u64>,
    scales: Vec<f32>,
    levels: Vec<u8>,
    /// `dim` codes per node.
    codes: Vec<i8>,
    /// Level-0 links: `2m` slots per node, `counts0` of them used.
    links0: Vec<u32>,
    counts0: Vec<u8>,
    /// Level-0 links into each node (not stored: counted when a file is read). Pruning never
    /// drops a node's last in-link while it can keep it (see [`Graph::pruned_links`]).
    in0: Vec<u32>,
    /// Nodes whose last level-0 in-link the current commit dropped (scratch, see
    /// [`Graph::commit`]).
    orphaned: Vec<u32>,
    /// Per node, the index in `upper` of its level-1 list (its level-2 list follows, and so
    /// on), or `NONE` for a node on level 0 only.
    upper_at: Vec<u32>,
    upper: Vec<Vec<u32>>,
    entry: u32,
    top: u8,
}

impl Graph {
    pub fn new(shape: Shape) -> Graph {
        Graph {
            shape: Shape {
                m: shape.m.clamp(2, 127),
                ..shape
            },
            ids: Vec::new(),
            scales: Vec::new(),
            levels: Vec::new(),
            codes: Vec::new(),
            links0: Vec::new(),
            counts0: Vec::new(),
            in0: Vec::new(),
            orphaned: Vec::new(),
            upper_at: Vec::new(),
            upper: Vec::new(),
            entry: NONE,
            top: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.shape.dim
    }

    /// The chunk id of `node`.
    pub fn id(&self, node: u32) -> u64 {
        self.ids[node as usize]
    }

    fn m0(&self) -> usize {
        2 * self.shape.m
    }

    /// Room for `more` nodes without reallocating during their commits.
    pub fn reserve(&mut self, more: usize) {
        let m0 = self.m0();
        self.ids.reserve(more);
        self.scales.reserve(more);
        self.levels.reserve(more);
        self.codes.reserve(more * self.shape.dim);
        self.links0.reserve(more * m0);
        self.counts0.reserve(more);
        self.in0.reserve(more);
        self.upper_at.reserve(more);
    }

    /// Bytes held by the graph's arrays (their capacity).
    pub fn heap_bytes(&self) -> usize {
        self.ids.capacity() * 8
            + self.scales.capacity() * 4
            + self.levels.capacity()
            + self.codes.capacity()
            + self.links0.capacity() * 4
            + self.counts0.capacity()
            + self.in0.capacity() * 4
            + self.upper_at.capacity() * 4
            + self.upper.capacity() * 24
            + self.upper.iter().map(|l| l.capacity() * 4).sum::<usize>()
    }

    fn code(&self, node: u32) -> &[i8] {
        let d = self.shape.dim;
        &self.codes[node as usize * d..(node as usize + 1) * d]
    }

    fn sim(&self, q: &Code, node: u32) -> f32 {
        dot_i8(&q.codes, self.code(node)) as f32 * q.scale * self.scales[node as usize]
    }

    fn sim_nodes(&self, a: u32, b: u32) -> f32 {
        dot_i8(self.code(a), self.code(b)) as f32
            * self.scales[a as usize]
            * self.scales[b as usize]
    }

    fn neighbours(&self, node: u32, level: u8) -> &[u32] {
        let n = node as usize;
        if level == 0 {
            let m0 = self.m0();
            &self.links0[n * m0..n * m0 + self.counts0[n] as usize]
        } else {
            &self.upper[self.upper_at[n] as usize + level as usize - 1]
        }
    }

    /// The level of a point: geometric with ratio 1/m, drawn from a hash of its id.
    fn level_for(&self, id: u64) -> u8 {
        // splitmix64: a well-mixed hash of the id.
        let mut z = id.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // Uniform in (0, 1].
        let u = ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let level = -u.ln() / (self.shape.m as f64).ln();
        level.min(MAX_LEVEL as f64) as u8
    }

    /// The entry points for the search on `to_level`: the most similar nodes found on the
    /// levels above it, each level searched with a beam of `UPPER_EF` from the level above's
    /// results. A beam rather than one greedy path: among clusters of near-duplicates a single
    /// path can settle where no link leads on, and then a search, or an insertion's choice of
    /// neighbours, never reaches the cluster it belongs to.
    fn descend(&self, q: &Code, to_level: u8) -> Vec<Cand> {
        let mut entries = vec![Cand {
            sim: self.sim(q, self.entry),
            node: self.entry,
        }];
        let mut level = self.top;
        while level > to_level {
            entries = self.search_layer(q, &entries, UPPER_EF, level, &|_| true);
            level -= 1;
        }
        entries
    }

    /// The `ef` most similar nodes on `level` reachable from `entries` that `accept` admits,
    /// best first. The walk goes through every node; only the results are filtered.
    fn search_layer(
        &self,
        q: &Code,
        entries: &[Cand],
        ef: usize,
        level: u8,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<Cand> {
        VISITED.with(|cell| {
            let mut visited = cell.borrow_mut();
            visited.reset(self.len());
            let mut frontier: BinaryHeap<Cand> = BinaryHeap::with_capacity(ef * 2);
            let mut results: BinaryHeap<Reverse<Cand>> = BinaryHeap::with_capacity(ef + 1);
            for &e in entries {
                if visited.insert(e.node) {
                    frontier.push(e);
                    if accept(e.node) {
                        results.push(Reverse(e));
                    }
                }
            }
            while results.len() > ef {
                results.pop();
            }
            while let Some(c) = frontier.pop() {
                if results.len() >= ef && results.peek().is_some_and(|w| c.sim < w.0.sim) {
                    break;
                }
                for &nb in self.neighbours(c.node, level) {
                    if !visited.insert(nb) {
                        continue;
                    }
                    let sim = self.sim(q, nb);
                    let full = results.len() >= ef;
                    if full && results.peek().is_some_and(|w| sim <= w.0.sim) {
                        continue;
                    }
                    let cand = Cand { sim, node: nb };
                    frontier.push(cand);
                    if accept(nb) {
                        results.push(Reverse(cand));
                        if results.len() > ef {
                            results.pop();
                        }
                    }
                }
            }
            let mut out: Vec<Cand> = results.into_iter().map(|r| r.0).collect();
            out.sort_by(|a, b| b.cmp(a));
            out
        })
    }

    /// Up to `k` accepted nodes most similar to `query`, best first, with their approximate
    /// similarities (a search list of `ef`, at least `k`).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<Cand> {
        if self.entry == NONE || k == 0 {
            return Vec::new();
        }
        let q = quantize(query);
        let entries = self.descend(&q, 0);
        let mut found = self.search_layer(&q, &entries, ef.max(k), 0, accept);
        found.truncate(k);
        found
    }

    /// Finds the neighbours of a new point (shared access; see the module docs).
    pub fn plan(&self, id: u64, vector: &[f32]) -> Plan {
        let code = quantize(vector);
        let level = self.level_for(id);
        let mut links = Vec::new();
        if self.entry != NONE {
            let mut entries = self.descend(&code, level);
            let mut l = level.min(self.top);
            loop {
                let found =
                    self.search_layer(&code, &entries, self.shape.ef_construction, l, &|_| true);
                links.push(self.select(&found, self.shape.m, None));
                entries = found;
                if l == 0 {
                    break;
                }
                l -= 1;
            }
            links.reverse();
        }
        let mut pruned = Vec::new();
        for (level, chosen) in links.iter().enumerate() {
            for &node in chosen {
                let level = level as u8;
                if let Some(after) = self.pruned_links(node, level, NONE, Some(&code)) {
                    let before = self.neighbours(node, level).to_vec();
                    pruned.push(Pruned {
                        node,
                        level,
                        before,
                        after,
                    });
                }
            }
        }
        Plan {
            id,
            code,
            level,
            links,
            pruned,
        }
    }

    /// Adds a planned point with its links and the reverse links (exclusive access).
    pub fn commit(&mut self, plan: Plan) {
        // Planned on an empty graph that another commit has filled since: plan again.
        let plan = if plan.links.is_empty() && self.entry != NONE {
            let v: Vec<f32> = plan.code.codes.iter().map(|&c| c as f32).collect();
            let mut again = self.plan(plan.id, &v);
            again.code = plan.code;
            again
        } else {
            plan
        };
        let node = self.ids.len() as u32;
        let m0 = self.m0();
        self.ids.push(plan.id);
        self.scales.push(plan.code.scale);
        self.levels.push(plan.level);
        self.codes.extend_from_slice(&plan.code.codes);
        self.counts0.push(0);
        self.in0.push(0);
        self.links0.resize(self.links0.len() + m0, NONE);
        if plan.level > 0 {
            self.upper_at.push(self.upper.len() as u32);
            for _ in 0..plan.level {
                self.upper.push(Vec::new());
            }
        } else {
            self.upper_at.push(NONE);
        }
        let mut pruned = plan.pruned.into_iter().peekable();
        for (level, chosen) in plan.links.iter().enumerate() {
            let level = level as u8;
            self.set_links(node, level, chosen.clone());
            for &nb in chosen {
                let ready = pruned.next_if(|p| p.node == nb && p.level == level);
                match ready {
                    Some(p) if self.still_applies(&p) => {
                        let after = p.after.iter().map(|&x| if x == NONE { node } else { x });
                        self.set_links(nb, level, after.collect());
                    }
                    _ => self.link(nb, node, level),
                }
            }
        }
        // Every pruned list dropped the new point: its nearest neighbour takes it after all.
        if self.in0[node as usize] == 0 {
            if let Some(&nb) = plan.links.first().and_then(|l| l.first()) {
                self.adopt(nb, node);
            }
        }
        // Nodes whose last in-link a full list had to drop (the in-link protection of
        // `pruned_links` ran out of room) are adopted by the new point: they were two hops
        // from it. Adopting can displace another node's last in-link in turn; a few rounds
        // settle that (each round's displaced nodes are adopted by the new point too).
        for _ in 0..4 {
            let orphaned = std::mem::take(&mut self.orphaned);
            if orphaned.is_empty() {
                break;
            }
            for o in orphaned {
                if o != node && self.in0[o as usize] == 0 {
                    self.adopt(node, o);
                }
            }
        }
        self.orphaned.clear();
        if self.entry == NONE || plan.level > self.top {
            self.entry = node;
            self.top = plan.level;
        }
    }
}

#[cfg(test)]
mod tests;
