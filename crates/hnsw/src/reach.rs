//! Reachability kept, not measured: every node can be reached from the entry point.
//!
//! Pruning among near-duplicates can strand a node or a small closed group of them (see the
//! crate docs): in-link counting and adoption make that rare, but rare is not never, and a
//! node no search can reach is a document dense search never returns. So the graph's owner
//! calls [`Graph::repair_reachability`] at its checkpoints (and after large batches): a walk
//! from the entry point over every level finds what it cannot reach, and each stranded node
//! gets a level-0 in-link from its most similar reachable node, found by an ordinary search
//! (which only ever visits reachable nodes). A node with room takes the link as an extra; a
//! full one gives up the link whose target has the most other in-links. Then the walk goes
//! on from the relinked node, which brings its whole group back. A replaced link can strand
//! its old target only if every other in-link of that target came from stranded nodes, so
//! the repair runs again until a walk finds nothing (in practice one pass).

use crate::{Cand, Code, Graph, NONE};

/// Passes of find-and-relink before giving up (each pass can only strand a node whose other
/// in-links all come from stranded nodes; none of the stress shapes needed a second).
const MAX_PASSES: usize = 8;
/// The search beam used to find a stranded node's nearest reachable nodes.
const REPAIR_EF: usize = 64;

impl Graph {
    /// Which nodes a walk from the entry point over every level reaches.
    pub(crate) fn reached(&self) -> Vec<bool> {
        let mut seen = vec![false; self.len()];
        if self.entry != NONE {
            self.walk_from(self.entry, &mut seen);
        }
        seen
    }

    /// Marks `start` and every node reachable from it (over every level) in `seen`; returns
    /// how many were newly marked.
    fn walk_from(&self, start: u32, seen: &mut [bool]) -> usize {
        if seen[start as usize] {
            return 0;
        }
        seen[start as usize] = true;
        let mut marked = 1;
        let mut stack = vec![start];
        while let Some(node) = stack.pop() {
            for level in 0..=self.levels[node as usize] {
                for &nb in self.neighbours(node, level) {
                    if !seen[nb as usize] {
                        seen[nb as usize] = true;
                        marked += 1;
                        stack.push(nb);
                    }
                }
            }
        }
        marked
    }

    /// Nodes that no search can reach: not linked, through any level, from the entry point.
    /// After [`Graph::repair_reachability`] there are none.
    pub fn unreachable(&self) -> usize {
        self.reached().iter().filter(|r| !**r).count()
    }

    /// Links every node a walk from the entry point cannot reach back into the graph (see the
    /// module docs); returns how many nodes were given a new in-link. Needs exclusive access;
    /// costs one walk over the graph when nothing is stranded.
    pub fn repair_reachability(&mut self) -> usize {
        let mut relinked = 0;
        for _ in 0..MAX_PASSES {
            let mut seen = self.reached();
            let stranded: Vec<u32> = (0..self.len() as u32)
                .filter(|&n| !seen[n as usize])
                .collect();
            if stranded.is_empty() {
                break;
            }
            for node in stranded {
                if seen[node as usize] {
                    continue; // Brought back with an earlier node of its group.
                }
                if self.link_from_reachable(node, &seen) {
                    relinked += 1;
                    self.walk_from(node, &mut seen);
                }
            }
        }
        relinked
    }

    /// Gives `node` a level-0 in-link from a reachable node: appended to the most similar
    /// reachable node with room (among its search neighbourhood, else among all), which
    /// strands nothing; only when every reachable node is full, in place of a link whose
    /// target has other in-links. False only when no reachable node has either.
    fn link_from_reachable(&mut self, node: u32, seen: &[bool]) -> bool {
        let code = Code {
            codes: self.code(node).to_vec(),
            scale: self.scales[node as usize],
        };
        let entries = self.descend(&code, 0);
        let near: Vec<u32> = self
            .search_layer(&code, &entries, REPAIR_EF, 0, &|n| {
                n != node && seen[n as usize]
            })
            .iter()
            .map(|c| c.node)
            .collect();
        let m0 = self.m0();
        let has_room = |g: &Graph, n: u32| (g.counts0[n as usize] as usize) < m0;
        let with_room = near
            .iter()
            .copied()
            .find(|&n| has_room(self, n))
            .or_else(|| {
                // Hubs in a tight cluster are all full: the most similar reachable node with
                // room anywhere (an exact scan; stranded nodes are few).
                (0..self.len() as u32)
                    .filter(|&n| n != node && seen[n as usize] && has_room(self, n))
                    .map(|n| Cand {
                        sim: self.sim(&code, n),
                        node: n,
                    })
                    .max()
                    .map(|c| c.node)
            });
        if let Some(from) = with_room {
            return self.append_link(from, node);
        }
        let everyone = (0..self.len() as u32).filter(|&n| n != node && seen[n as usize]);
        for from in near.iter().copied().chain(everyone) {
            if self.replace_link(from, node) {
                return true;
            }
        }
        false
    }

    /// Adds `from -> to` on level 0, where `from` has room.
    fn append_link(&mut self, from: u32, to: u32) -> bool {
        let at = from as usize * self.m0();
        let count = self.counts0[from as usize] as usize;
        if self.links0[at..at + count].contains(&to) {
            return false;
        }
        self.links0[at + count] = to;
        self.counts0[from as usize] += 1;
        self.in0[to as usize] += 1;
        true
    }

    /// Puts `from -> to` on level 0 in place of the link whose target has the most other
    /// in-links (at least one more).
    fn replace_link(&mut self, from: u32, to: u32) -> bool {
        let at = from as usize * self.m0();
        let count = self.counts0[from as usize] as usize;
        if self.links0[at..at + count].contains(&to) {
            return false;
        }
        let spare = (0..count)
            .filter(|&i| self.in0[self.links0[at + i] as usize] >= 2)
            .max_by_key(|&i| self.in0[self.links0[at + i] as usize]);
        let Some(i) = spare else {
            return false;
        };
        let old = self.links0[at + i];
        self.in0[old as usize] -= 1;
        self.links0[at + i] = to;
        self.in0[to as usize] += 1;
        true
    }
}
