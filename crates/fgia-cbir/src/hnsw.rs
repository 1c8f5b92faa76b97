//! Approximate nearest-neighbour search: a hierarchical navigable small-world graph.
//!
//! Malkov and Yashunin, "Efficient and robust approximate nearest neighbor search using
//! Hierarchical Navigable Small World graphs", IEEE TPAMI 2020: algorithms 1 (insert),
//! 2 (search layer), 4 (neighbour selection heuristic) and 5 (k-NN search), with `M` links per
//! node on the upper layers, `2M` on layer 0, and level multiplier `1/ln M`. A new node keeps
//! `M` neighbours on every level (as hnswlib does; its lists may later grow to `2M` on layer 0
//! through reverse links).
//!
//! Why our own rather than a crate: the index must be persisted in our own checksummed file
//! and validated on load (a corrupt file must be an error, never a panic or an out-of-bounds
//! walk), and the build must be deterministic. Both are simplest with the graph as plain
//! arrays. The build is parallel and still deterministic: after the first 1024 points,
//! points are inserted in batches whose neighbour searches run in parallel against the graph
//! as it was before the batch, and whose links are then applied in order. A point does not
//! see the other points of its own batch during its search (batches are at most 1/8 of the
//! graph), which costs little recall and makes the result independent of the thread count.
//! Distance loops are compiled for the CPU's widest vector unit at run time (`pulp`'s dispatch).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use fgia_core::retrieval::Distance;
use fgia_core::rng::SplitMix64;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Build and search parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswParams {
    /// Links per node on the upper layers (`2M` on layer 0).
    pub m: usize,
    /// Candidate list size while building.
    pub ef_construction: usize,
    /// Candidate list size while searching (at least `k`).
    pub ef_search: usize,
    /// Seed of the level assignment.
    pub seed: u64,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams { m: 16, ef_construction: 200, ef_search: 128, seed: 0 }
    }
}

/// An HNSW graph over `n` vectors of `dim` floats.
#[derive(Debug, Clone, PartialEq)]
pub struct Hnsw {
    /// Parameters it was built with (`ef_search` may be changed before searching).
    pub params: HnswParams,
    /// Vector length.
    pub dim: usize,
    /// Cosine (vectors stored unit-length, distance `1 − dot`) or euclidean (squared).
    pub distance: Distance,
    /// The vectors, row-major.
    pub data: Vec<f32>,
    /// `links[node][level]`: neighbour ids.
    pub links: Vec<Vec<Vec<u32>>>,
    /// Entry point (a node of the top level).
    pub entry: u32,
}

#[derive(Clone, Copy, PartialEq)]
struct Cand(f32, u32);

impl Eq for Cand {}

impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Cand {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// Visited marks reused across searches (a generation counter avoids clearing).
struct Visited {
    marks: Vec<u32>,
    stamp: u32,
}

impl Visited {
    fn new(n: usize) -> Self {
        Visited { marks: vec![0; n], stamp: 0 }
    }

    fn reset(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.stamp = 1;
        }
    }

    /// Marks `i`; returns whether it was already marked.
    fn visit(&mut self, i: u32) -> bool {
        let m = &mut self.marks[i as usize];
        let seen = *m == self.stamp;
        *m = self.stamp;
        seen
    }
}

thread_local! {
    /// One visited buffer per thread, reused by all its searches (allocating one per search
    /// would dominate the cost on large graphs); it grows to the largest graph searched.
    static VISITED: std::cell::RefCell<Visited> = std::cell::RefCell::new(Visited::new(0));
}

fn with_visited<R>(f: impl FnOnce(&mut Visited) -> R) -> R {
    VISITED.with(|v| f(&mut v.borrow_mut()))
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators so the loop vectorises.
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

#[inline(always)]
fn sq_l2(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            let d = x[k] - y[k];
            acc[k] += d * d;
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| (x - y) * (x - y)).sum::<f32>()
}

/// The neighbour lists one insertion adds, per level `0..=min(level, top)`.
struct Plan {
    node: u32,
    levels: Vec<Vec<u32>>,
}

impl Hnsw {
    #[inline(always)]
    fn vector(&self, i: u32) -> &[f32] {
        &self.data[i as usize * self.dim..(i as usize + 1) * self.dim]
    }

    #[inline(always)]
    fn dist(&self, q: &[f32], i: u32) -> f32 {
        match self.distance {
            Distance::Cosine => 1.0 - dot(q, self.vector(i)),
            Distance::Euclidean => sq_l2(q, self.vector(i)),
        }
    }

    fn max_links(&self, level: usize) -> usize {
        if level == 0 { 2 * self.params.m } else { self.params.m }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether the graph is empty.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    #[inline(always)]
    fn top_level(&self) -> usize {
        self.links.get(self.entry as usize).map_or(0, |l| l.len().saturating_sub(1))
    }

    /// Algorithm 2: the `ef` nearest found from `entry` on `level`, nearest first. Nodes at or
    /// beyond `limit` (not yet inserted) are ignored.
    #[inline(always)]
    fn search_layer(&self, q: &[f32], entry: &[Cand], ef: usize, level: usize, visited: &mut Visited, limit: usize) -> Vec<Cand> {
        visited.reset(self.links.len());
        let mut candidates: BinaryHeap<std::cmp::Reverse<Cand>> = BinaryHeap::new();
        let mut found: BinaryHeap<Cand> = BinaryHeap::new();
        for &e in entry {
            visited.visit(e.1);
            candidates.push(std::cmp::Reverse(e));
            found.push(e);
        }
        while found.len() > ef {
            found.pop();
        }
        while let Some(std::cmp::Reverse(c)) = candidates.pop() {
            if found.peek().is_some_and(|worst| c.0 > worst.0) && found.len() >= ef {
                break;
            }
            let Some(neigh) = self.links[c.1 as usize].get(level) else { continue };
            for &nb in neigh {
                if nb as usize >= limit || visited.visit(nb) {
                    continue;
                }
                let d = self.dist(q, nb);
                let admit = found.len() < ef || found.peek().is_some_and(|w| Cand(d, nb) < *w);
                if admit {
                    candidates.push(std::cmp::Reverse(Cand(d, nb)));
                    found.push(Cand(d, nb));
                    if found.len() > ef {
                        found.pop();
                    }
                }
            }
        }
        let mut v = found.into_vec();
        v.sort();
        v
    }

    /// Algorithm 4 (without extending candidates or keeping pruned ones): keep a candidate
    /// only if it is closer to the base than to every neighbour already kept.
    #[inline(always)]
    fn select(&self, candidates: &[Cand], m: usize) -> Vec<u32> {
        let mut kept: Vec<u32> = Vec::with_capacity(m);
        for &Cand(d, c) in candidates {
            if kept.len() >= m {
                break;
            }
            let v = self.vector(c);
            if kept.iter().all(|&r| self.dist(v, r) > d) {
                kept.push(c);
            }
        }
        kept
    }

    /// Greedy descent from the entry to `level + 1`, then the plan for levels `level..=0`.
    #[inline(always)]
    fn plan(&self, node: u32, level: usize, limit: usize, visited: &mut Visited) -> Plan {
        let q = self.vector(node);
        let top = self.top_level();
        let mut ep = vec![Cand(self.dist(q, self.entry), self.entry)];
        for l in (level + 1..=top).rev() {
            ep = self.search_layer(q, &ep, 1, l, visited, limit);
        }
        let mut levels = vec![Vec::new(); level.min(top) + 1];
        for l in (0..=level.min(top)).rev() {
            let w = self.search_layer(q, &ep, self.params.ef_construction, l, visited, limit);
            let w: Vec<Cand> = w.into_iter().filter(|c| c.1 != node).collect();
            levels[l] = self.select(&w, self.params.m);
            ep = w;
        }
        Plan { node, levels }
    }

    fn apply(&mut self, plan: Plan) {
        let node = plan.node;
        for (l, neigh) in plan.levels.into_iter().enumerate() {
            for &e in &neigh {
                let max = self.max_links(l);
                let list = &mut self.links[e as usize][l];
                list.push(node);
                if list.len() > max {
                    let base = self.vector(e).to_vec();
                    let mut cands: Vec<Cand> = self.links[e as usize][l].iter().map(|&j| Cand(self.dist(&base, j), j)).collect();
                    cands.sort();
                    let kept = self.select(&cands, max);
                    self.links[e as usize][l] = kept;
                }
            }
            self.links[node as usize][l] = neigh;
        }
        if self.links[node as usize].len() > self.links[self.entry as usize].len() {
            self.entry = node;
        }
    }

    /// Builds the graph over `data` (`n x dim`, row-major). Cosine vectors are normalised.
    pub fn build(mut data: Vec<f32>, dim: usize, distance: Distance, params: HnswParams) -> Self {
        if distance == Distance::Cosine {
            crate::pca::l2_normalise_rows(&mut data, dim);
        }
        let n = data.len() / dim;
        let ml = 1.0 / (params.m.max(2) as f64).ln();
        let levels: Vec<usize> = (0..n)
            .map(|i| {
                let u = SplitMix64::for_item(params.seed, 0, i as u64).next_f64();
                ((-(1.0 - u).ln() * ml).floor() as usize).min(16)
            })
            .collect();
        let links = levels.iter().map(|&l| vec![Vec::new(); l + 1]).collect();
        let mut g = Hnsw { params, dim, distance, data, links, entry: 0 };
        if n == 0 {
            return g;
        }
        let mut visited = Visited::new(n);
        let sequential = n.min(1024);
        let arch = pulp::Arch::new();
        for (i, &level) in levels.iter().enumerate().take(sequential).skip(1) {
            let p = arch.dispatch(|| g.plan(i as u32, level, i, &mut visited));
            g.apply(p);
        }
        let mut done = sequential;
        while done < n {
            let batch = (done / 8).clamp(1, 4096).min(n - done);
            let plans: Vec<Plan> =
                (done..done + batch).into_par_iter().map(|i| with_visited(|vis| arch.dispatch(|| g.plan(i as u32, levels[i], done, vis)))).collect();
            for p in plans {
                g.apply(p);
            }
            done += batch;
        }
        g
    }

    /// Algorithm 5: the `k` nearest of `q` as `(index, distance)`, nearest first. Distances are
    /// `1 − cos` or euclidean, as in exact search.
    pub fn search(&self, q: &[f32], k: usize) -> Vec<(usize, f32)> {
        with_visited(|vis| self.search_with(q, k, vis))
    }

    fn search_with(&self, q: &[f32], k: usize, visited: &mut Visited) -> Vec<(usize, f32)> {
        // Compiled for the CPU's widest vector unit (AVX2/AVX-512 where present).
        pulp::Arch::new().dispatch(|| self.search_inner(q, k, visited))
    }

    #[inline(always)]
    fn search_inner(&self, q: &[f32], k: usize, visited: &mut Visited) -> Vec<(usize, f32)> {
        if self.is_empty() || k == 0 {
            return Vec::new();
        }
        let mut q = q.to_vec();
        if self.distance == Distance::Cosine {
            crate::pca::l2_normalise_rows(&mut q, self.dim);
        }
        let mut ep = vec![Cand(self.dist(&q, self.entry), self.entry)];
        for l in (1..=self.top_level()).rev() {
            ep = self.search_layer(&q, &ep, 1, l, visited, self.len());
        }
        let found = self.search_layer(&q, &ep, self.params.ef_search.max(k), 0, visited, self.len());
        found
            .into_iter()
            .take(k)
            .map(|Cand(d, i)| {
                let d = match self.distance {
                    Distance::Cosine => d,
                    Distance::Euclidean => d.max(0.0).sqrt(),
                };
                (i as usize, d)
            })
            .collect()
    }

    /// Searches many queries in parallel.
    pub fn search_many(&self, queries: &[f32], k: usize) -> Vec<Vec<(usize, f32)>> {
        queries.par_chunks(self.dim).map(|q| with_visited(|vis| self.search_with(q, k, vis))).collect()
    }

    /// The graph as bytes: per node, its level count, then per level a count and the ids
    /// (little-endian `u32`).
    pub fn graph_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.entry.to_le_bytes());
        for node in &self.links {
            out.extend_from_slice(&(node.len() as u32).to_le_bytes());
            for l in node {
                out.extend_from_slice(&(l.len() as u32).to_le_bytes());
                for &j in l {
                    out.extend_from_slice(&j.to_le_bytes());
                }
            }
        }
        out
    }

    /// Rebuilds a graph from [`Hnsw::graph_bytes`], validating every count and id.
    pub fn from_parts(data: Vec<f32>, dim: usize, distance: Distance, params: HnswParams, graph: &[u8]) -> Result<Self, String> {
        let n = data.len() / dim.max(1);
        let mut pos = 0usize;
        let next = |pos: &mut usize| -> Result<u32, String> {
            let b = graph.get(*pos..*pos + 4).ok_or_else(|| format!("graph ends early at byte {pos}"))?;
            *pos += 4;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let entry = next(&mut pos)?;
        if n > 0 && entry as usize >= n {
            return Err(format!("entry point {entry} is not one of the {n} vectors"));
        }
        let mut links = Vec::with_capacity(n);
        for node in 0..n {
            let levels = next(&mut pos)? as usize;
            if levels == 0 || levels > 17 {
                return Err(format!("node {node} has {levels} levels"));
            }
            let mut node_links = Vec::with_capacity(levels);
            for l in 0..levels {
                let count = next(&mut pos)? as usize;
                let max = if l == 0 { params.m.saturating_mul(2) } else { params.m };
                if count > max {
                    return Err(format!("node {node} has {count} links on level {l} (at most {max})"));
                }
                // Each link is 4 bytes: a count beyond the bytes left is refused before allocating.
                let left = graph.len().saturating_sub(pos);
                if count.saturating_mul(4) > left {
                    return Err(format!("node {node} claims {count} links on level {l}, but only {left} bytes remain"));
                }
                let mut ids = Vec::with_capacity(count);
                for _ in 0..count {
                    let j = next(&mut pos)?;
                    if j as usize >= n {
                        return Err(format!("node {node} links to {j}, beyond the {n} vectors"));
                    }
                    ids.push(j);
                }
                node_links.push(ids);
            }
            links.push(node_links);
        }
        if pos != graph.len() {
            return Err(format!("{} bytes after the graph", graph.len() - pos));
        }
        // Every link on level l must point to a node that has level l.
        for (node, nl) in links.iter().enumerate() {
            for (l, ids) in nl.iter().enumerate() {
                if let Some(&bad) = ids.iter().find(|&&j| links[j as usize].len() <= l) {
                    return Err(format!("node {node} links to {bad} on level {l}, which that node does not have"));
                }
            }
        }
        Ok(Hnsw { params, dim, distance, data, links, entry })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::exact_knn;

    fn random(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut g = SplitMix64::new(seed);
        (0..n * dim).map(|_| g.next_f64() as f32 - 0.5).collect()
    }

    /// Recall@10 against exact search on random data, at the default settings.
    #[test]
    fn recall_against_exact_search_at_default_settings() {
        let (n, dim, k, nq) = (20_000, 32, 10, 200);
        let data = random(n, dim, 1);
        let queries = random(nq, dim, 2);
        for distance in [Distance::Cosine, Distance::Euclidean] {
            let g = Hnsw::build(data.clone(), dim, distance, HnswParams::default());
            let exact = exact_knn(&queries, &data, dim, k, distance, false);
            let approx = g.search_many(&queries, k);
            let hits: usize = exact.iter().zip(&approx).map(|(e, a)| a.iter().filter(|x| e.iter().any(|y| y.0 == x.0)).count()).sum();
            let recall = hits as f64 / (nq * k) as f64;
            assert!(recall >= 0.95, "{distance:?}: recall@{k} {recall:.3} < 0.95");
            // Same distances as exact search for the ids found.
            for (e, a) in exact.iter().zip(&approx) {
                for x in a {
                    if let Some(y) = e.iter().find(|y| y.0 == x.0) {
                        assert!((x.1 - y.1).abs() < 1e-4, "{distance:?}: distance {} vs {}", x.1, y.1);
                    }
                }
            }
        }
    }

    #[test]
    fn build_is_deterministic_and_round_trips() {
        let data = random(3000, 8, 3);
        let a = Hnsw::build(data.clone(), 8, Distance::Euclidean, HnswParams::default());
        let b = Hnsw::build(data, 8, Distance::Euclidean, HnswParams::default());
        assert_eq!(a, b);
        let c = Hnsw::from_parts(a.data.clone(), 8, a.distance, a.params, &a.graph_bytes()).expect("valid graph");
        assert_eq!(a, c);
        let mut bad = a.graph_bytes();
        let last = bad.len() - 1;
        bad[last] = 0xff; // an id beyond n
        assert!(Hnsw::from_parts(a.data.clone(), 8, a.distance, a.params, &bad).is_err());
        assert!(Hnsw::from_parts(a.data.clone(), 8, a.distance, a.params, &a.graph_bytes()[..100]).is_err());
    }

    #[test]
    fn a_link_count_beyond_the_remaining_bytes_is_refused_before_allocating() {
        let data = random(4, 2, 1);
        let params = HnswParams { m: 512, ..HnswParams::default() };
        // Entry 0; node 0 has one level with 1000 links, then 8 bytes.
        let mut g = Vec::new();
        for v in [0u32, 1, 1000, 1, 2] {
            g.extend_from_slice(&v.to_le_bytes());
        }
        let e = Hnsw::from_parts(data.clone(), 2, Distance::Euclidean, params, &g).expect_err("count");
        assert!(e.contains("1000 links") && e.contains("only 8 bytes remain"), "{e}");
    }
}
