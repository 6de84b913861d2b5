//! The graph's links: choosing a point's neighbours (the HNSW heuristic), pruning full lists,
//! and the in-link bookkeeping that keeps every node within some search's reach (see the
//! crate docs on near-duplicates).

use crate::{Cand, Code, Graph, Pruned, NONE};

impl Graph {
    /// Chooses up to `max` of `cands` (best first, similarities to one base point) by the
    /// HNSW heuristic: a candidate is kept when it is more similar to the base than to every
    /// one already kept, which spreads the links in different directions.
    /// `planned` is the code of a point being planned, which `NONE` stands for in `cands`.
    pub(crate) fn select(&self, cands: &[Cand], max: usize, planned: Option<&Code>) -> Vec<u32> {
        let sim = |a: u32, b: u32| match planned {
            Some(q) if a == NONE => self.sim(q, b),
            Some(q) if b == NONE => self.sim(q, a),
            _ => self.sim_nodes(a, b),
        };
        let mut kept: Vec<u32> = Vec::with_capacity(max);
        for c in cands {
            if kept.len() >= max {
                break;
            }
            if kept.iter().all(|&s| sim(c.node, s) < c.sim) {
                kept.push(c.node);
            }
        }
        kept
    }

    /// The links of `node` on `level` once `new` joins them, pruned by the heuristic when
    /// full; `None` when there is room (the link is simply appended). `new` may be `NONE`
    /// for the point whose code is `planned`.
    ///
    /// On level 0 a candidate the heuristic drops stays if this list holds its only in-link
    /// (and so does `new` when nothing links to it yet), while there is room: a node without
    /// in-links is out of every search's reach. Among near-duplicates, and in any data of high
    /// intrinsic dimension, many nodes are nobody's nearest neighbour (the "hubness" of
    /// k-nearest-neighbour graphs), and the heuristic alone stranded up to 45% of a tight
    /// cluster (`stress_versions_among_near_duplicates` in `tests.rs`).
    pub(crate) fn pruned_links(
        &self,
        node: u32,
        level: u8,
        new: u32,
        planned: Option<&Code>,
    ) -> Option<Vec<u32>> {
        let max = if level == 0 { self.m0() } else { self.shape.m };
        let current = self.neighbours(node, level);
        if current.len() < max {
            return None;
        }
        let mut cands: Vec<Cand> = current
            .iter()
            .map(|&nb| Cand {
                sim: self.sim_nodes(node, nb),
                node: nb,
            })
            .collect();
        cands.push(Cand {
            sim: match planned {
                Some(q) if new == NONE => self.sim(q, node),
                _ => self.sim_nodes(node, new),
            },
            node: new,
        });
        cands.sort_by(|a, b| b.cmp(a));
        let mut kept = self.select(&cands, max, planned);
        // The farthest candidate stays, in place of the last one kept: in a cluster of
        // near-duplicates the heuristic drops links out of the cluster at random (base and
        // kept neighbour are nearly the same point), and a cluster can lose its last way out.
        if let Some(far) = cands.last() {
            if !kept.contains(&far.node) {
                if kept.len() >= max {
                    kept.pop();
                }
                kept.push(far.node);
            }
        }
        if level == 0 {
            for c in &cands {
                if kept.len() >= max {
                    break;
                }
                if !kept.contains(&c.node) && self.only_link_here(c.node, new) {
                    kept.push(c.node);
                }
            }
        }
        Some(kept)
    }

    /// Whether a level-0 list that holds `c` (or, for `new`, is about to) is the only one
    /// linking to it. `NONE` (a point being planned) is settled at commit instead.
    pub(crate) fn only_link_here(&self, c: u32, new: u32) -> bool {
        if c == NONE {
            false
        } else if c == new {
            self.in0[c as usize] == 0
        } else {
            self.in0[c as usize] <= 1
        }
    }

    /// Whether a list pruned while planning can be applied as it is: the list is still the
    /// one seen, and every node it drops is still linked from elsewhere.
    pub(crate) fn still_applies(&self, p: &Pruned) -> bool {
        self.neighbours(p.node, p.level) == p.before.as_slice()
            && (p.level > 0
                || p.before
                    .iter()
                    .all(|x| p.after.contains(x) || self.in0[*x as usize] >= 2))
    }

    pub(crate) fn set_links(&mut self, node: u32, level: u8, links: Vec<u32>) {
        let n = node as usize;
        if level == 0 {
            let m0 = self.m0();
            let count = links.len().min(m0);
            for &old in &self.links0[n * m0..n * m0 + self.counts0[n] as usize] {
                self.in0[old as usize] -= 1;
                if self.in0[old as usize] == 0 && !links.contains(&old) {
                    self.orphaned.push(old);
                }
            }
            for &new in &links[..count] {
                self.in0[new as usize] += 1;
            }
            self.links0[n * m0..n * m0 + count].copy_from_slice(&links[..count]);
            self.counts0[n] = count as u8;
        } else {
            let at = self.upper_at[n] as usize + level as usize - 1;
            self.upper[at] = links;
        }
    }

    /// Links `node` to `orphan` on level 0 whatever the heuristic says: by pruning when that
    /// keeps it, else in place of the link whose target has the most other in-links.
    pub(crate) fn adopt(&mut self, node: u32, orphan: u32) {
        self.link(node, orphan, 0);
        if self.in0[orphan as usize] > 0 {
            return;
        }
        let mut links = self.neighbours(node, 0).to_vec();
        if let Some(slot) = (0..links.len()).max_by_key(|&i| self.in0[links[i] as usize]) {
            links[slot] = orphan;
        } else {
            links.push(orphan);
        }
        self.set_links(node, 0, links);
    }

    /// Adds `new` to the links of `node` on `level`, pruning them by the heuristic when full.
    pub(crate) fn link(&mut self, node: u32, new: u32, level: u8) {
        if self.neighbours(node, level).contains(&new) {
            return;
        }
        let links = match self.pruned_links(node, level, new, None) {
            Some(kept) => kept,
            None => {
                let mut links = self.neighbours(node, level).to_vec();
                links.push(new);
                links
            }
        };
        self.set_links(node, level, links);
    }
}
