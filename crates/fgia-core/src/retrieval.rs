//! Ranking metrics for retrieval, computed with blocked matrix products.
//!
//! - **Recall@K** as the survey defines it (Song et al., CVPR 2016): each item queries all the
//!   others; it scores 1 when at least one item of its class is among its K nearest.
//! - **mAP** over the full ranking of the other items. Queries with no positive have no average
//!   precision; they are left out of the mean and counted.
//! - **acc@K** for sketch-based retrieval: the share of queries whose one true gallery item is
//!   ranked within the top K.
//!
//! Ranking uses cosine similarity or euclidean distance. Equal scores are ordered by gallery
//! index, lower first, so results never depend on thread scheduling.
//!
//! Rows of queries are processed in blocks (so a 100k x 100k score matrix is never held), each
//! block as one matrix product on a [`gemm`] kernel, blocks in parallel on all cores.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How two embeddings are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    /// Cosine similarity (embeddings are ℓ2-normalised first).
    Cosine,
    /// Euclidean distance.
    Euclidean,
}

impl std::str::FromStr for Distance {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cosine" => Ok(Distance::Cosine),
            "euclidean" => Ok(Distance::Euclidean),
            o => Err(format!("unknown distance '{o}' (cosine, euclidean)")),
        }
    }
}

/// A row-major `[n, dim]` matrix of embeddings.
#[derive(Debug, Clone, Copy)]
pub struct Embeddings<'a> {
    /// The values.
    pub data: &'a [f32],
    /// Length of one embedding.
    pub dim: usize,
}

impl<'a> Embeddings<'a> {
    /// Wraps `data`, checking that it holds whole rows.
    pub fn new(data: &'a [f32], dim: usize) -> Self {
        assert!(dim > 0 && data.len().is_multiple_of(dim), "embedding buffer of {} floats is not [n, {dim}]", data.len());
        Embeddings { data, dim }
    }

    /// Number of embeddings.
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// `dst[m, n] = alpha * lhs[m, k] · rhs[n, k]ᵀ`, all row-major, single-threaded.
#[allow(unsafe_code)]
fn matmul_nt(dst: &mut [f32], lhs: &[f32], rhs: &[f32], m: usize, n: usize, k: usize, alpha: f32) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= n * k, "matmul_nt: buffers too small");
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the assertion above guarantees every index the kernel touches, given these strides
    // (dst row stride n, lhs row stride k, rhs read transposed with row stride k), lies inside the
    // three slices; `dst` is uniquely borrowed, so nothing else aliases it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            k as isize,
            1,
            0.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The embeddings prepared for ranking: normalised for cosine, and squared norms for euclidean.
struct Prepared {
    data: Vec<f32>,
    sq_norms: Vec<f32>,
    dim: usize,
}

fn prepare(e: Embeddings<'_>, distance: Distance) -> Prepared {
    let mut data = e.data.to_vec();
    if distance == Distance::Cosine {
        data.par_chunks_mut(e.dim).for_each(|row| {
            let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if n > 0.0 {
                row.iter_mut().for_each(|v| *v /= n);
            }
        });
    }
    let sq_norms = data.par_chunks(e.dim).map(|r| r.iter().map(|v| v * v).sum()).collect();
    Prepared { data, sq_norms, dim: e.dim }
}

/// Calls `visit(query_index, scores)` for every query, where `scores[j]` orders gallery item `j`
/// (higher is nearer): the cosine similarity, or `2 q·g - |g|²` (the negated squared euclidean
/// distance up to the query's own constant `|q|²`).
fn for_each_score_row<F>(queries: &Prepared, gallery: &Prepared, distance: Distance, visit: F)
where
    F: Fn(usize, &[f32]) + Sync,
{
    let (nq, ng, d) = (queries.data.len() / queries.dim, gallery.data.len() / gallery.dim, queries.dim);
    // About 32 MiB of scores per block and thread.
    let block = (8 * 1024 * 1024 / ng.max(1)).clamp(1, 256);
    let alpha = if distance == Distance::Cosine { 1.0 } else { 2.0 };
    (0..nq.div_ceil(block)).into_par_iter().for_each_init(Vec::new, |scores: &mut Vec<f32>, b| {
        let start = b * block;
        let rows = block.min(nq - start);
        scores.resize(rows * ng, 0.0);
        matmul_nt(scores, &queries.data[start * d..(start + rows) * d], &gallery.data, rows, ng, d, alpha);
        for r in 0..rows {
            let row = &mut scores[r * ng..(r + 1) * ng];
            if distance == Distance::Euclidean {
                row.iter_mut().zip(&gallery.sq_norms).for_each(|(s, g)| *s -= g);
            }
            visit(start + r, row);
        }
    });
}

/// Bounded lists of the best `(score, index)` per row, higher score first, ties to the lower
/// index. Offers may arrive in any order; the result does not depend on it.
#[derive(Clone)]
struct TopLists {
    k: usize,
    /// `k` slots per row; `len[row]` are filled.
    slots: Vec<(f32, u32)>,
    len: Vec<u32>,
}

impl TopLists {
    fn new(rows: usize, k: usize) -> Self {
        TopLists { k, slots: vec![(f32::NEG_INFINITY, u32::MAX); rows * k], len: vec![0; rows] }
    }

    #[inline]
    fn better(a: (f32, u32), b: (f32, u32)) -> bool {
        a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
    }

    #[inline]
    fn offer(&mut self, row: usize, score: f32, index: u32) {
        let k = self.k;
        let n = self.len[row] as usize;
        let list = &mut self.slots[row * k..row * k + k];
        if n == k && !Self::better((score, index), list[k - 1]) {
            return;
        }
        let pos = list[..n].partition_point(|&e| Self::better(e, (score, index)));
        let end = n.min(k - 1);
        list.copy_within(pos..end, pos + 1);
        list[pos] = (score, index);
        if n < k {
            self.len[row] += 1;
        }
    }

    fn merge(mut self, other: TopLists) -> TopLists {
        for row in 0..self.len.len() {
            for i in 0..other.len[row] as usize {
                let (s, j) = other.slots[row * other.k + i];
                self.offer(row, s, j);
            }
        }
        self
    }

    fn row(&self, row: usize) -> &[(f32, u32)] {
        &self.slots[row * self.k..row * self.k + self.len[row] as usize]
    }
}

/// The `k` best gallery items of every query: tiles of queries x gallery items are multiplied
/// (each tile one matrix product, tiles in parallel), so the gallery is read once per block of
/// 256 queries whatever its size, and each tile's scores are offered to the queries' lists.
/// With `exclude_self`, query `i` skips gallery item `i`.
fn tiled_top_k(q: &Prepared, g: &Prepared, k: usize, distance: Distance, exclude_self: bool) -> TopLists {
    let (nq, ng, d) = (q.data.len() / q.dim, g.data.len() / g.dim, q.dim);
    const QB: usize = 256;
    const GB: usize = 4096;
    let pairs: Vec<(usize, usize)> = (0..nq.div_ceil(QB)).flat_map(|i| (0..ng.div_ceil(GB)).map(move |j| (i, j))).collect();
    let alpha = if distance == Distance::Cosine { 1.0 } else { 2.0 };
    fold_tiles(nq, k, pairs, |top, buf, bi, bj| {
        let (r0, c0) = (bi * QB, bj * GB);
        let (rows, cols) = (QB.min(nq - r0), GB.min(ng - c0));
        buf.resize(rows * cols, 0.0);
        matmul_nt(buf, &q.data[r0 * d..(r0 + rows) * d], &g.data[c0 * d..(c0 + cols) * d], rows, cols, d, alpha);
        for r in 0..rows {
            let i = r0 + r;
            let line = &mut buf[r * cols..(r + 1) * cols];
            if distance == Distance::Euclidean {
                line.iter_mut().zip(&g.sq_norms[c0..c0 + cols]).for_each(|(s, gn)| *s -= gn);
            }
            for (c, &s) in line.iter().enumerate() {
                let j = c0 + c;
                if s.is_nan() || (exclude_self && j == i) {
                    continue;
                }
                top.offer(i, s, j as u32);
            }
        }
    })
}

/// The `k` best other items of every item of one set, using the symmetry of the score matrix:
/// only blocks on or above the diagonal are multiplied, and each score is offered to both its
/// row and its column (half the arithmetic of a full product). Scores are `x_i . x_j` (cosine)
/// or `-|x_i - x_j|^2` (euclidean).
fn self_top_k(p: &Prepared, k: usize, distance: Distance) -> TopLists {
    let n = p.data.len() / p.dim;
    let d = p.dim;
    const B: usize = 1024;
    let blocks = n.div_ceil(B);
    let pairs: Vec<(usize, usize)> = (0..blocks).flat_map(|i| (i..blocks).map(move |j| (i, j))).collect();
    let alpha = if distance == Distance::Cosine { 1.0 } else { 2.0 };
    fold_tiles(n, k, pairs, |top, buf, bi, bj| {
        let (r0, c0) = (bi * B, bj * B);
        let (rows, cols) = (B.min(n - r0), B.min(n - c0));
        buf.resize(rows * cols, 0.0);
        matmul_nt(buf, &p.data[r0 * d..(r0 + rows) * d], &p.data[c0 * d..(c0 + cols) * d], rows, cols, d, alpha);
        for r in 0..rows {
            let i = r0 + r;
            let line = &mut buf[r * cols..(r + 1) * cols];
            if distance == Distance::Euclidean {
                let qi = p.sq_norms[i];
                line.iter_mut().zip(&p.sq_norms[c0..c0 + cols]).for_each(|(s, g)| *s -= qi + g);
            }
            // On a diagonal block only the upper triangle is used, so every pair has one score.
            let start = if bi == bj { r + 1 } else { 0 };
            for (c, &s) in line.iter().enumerate().skip(start) {
                if s.is_nan() {
                    continue;
                }
                let j = c0 + c;
                top.offer(i, s, j as u32);
                top.offer(j, s, i as u32);
            }
        }
    })
}

/// Runs `tile(top, scratch, bi, bj)` for every tile pair in parallel, each worker with its own
/// lists and scratch buffer, then merges the lists (the merge does not depend on the order).
fn fold_tiles<F>(rows: usize, k: usize, pairs: Vec<(usize, usize)>, tile: F) -> TopLists
where
    F: Fn(&mut TopLists, &mut Vec<f32>, usize, usize) + Sync + Send,
{
    pairs
        .into_par_iter()
        .fold(
            || (TopLists::new(rows, k), Vec::<f32>::new()),
            |(mut top, mut buf), (bi, bj)| {
                tile(&mut top, &mut buf, bi, bj);
                (top, buf)
            },
        )
        .map(|(top, _)| top)
        .reduce(|| TopLists::new(rows, k), TopLists::merge)
}

/// A query's nearest gallery items.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    /// Gallery indices, nearest first.
    pub indices: Vec<usize>,
    /// Their distances: `1 - cosine` or the euclidean distance.
    pub distances: Vec<f32>,
}

/// The `k` nearest gallery items of every query. With `exclude_self`, queries and gallery are the
/// same set and item `i` is not its own neighbour.
pub fn knn(queries: Embeddings<'_>, gallery: Embeddings<'_>, k: usize, distance: Distance, exclude_self: bool) -> Vec<Neighbours> {
    assert_eq!(queries.dim, gallery.dim, "queries and gallery differ in dimension");
    let q = prepare(queries, distance);
    // Self-retrieval scores are `-|x_i - x_j|²` (euclidean); query/gallery scores leave out the
    // query's own `|q|²`, which the conversion adds back.
    let (top, own_sq_norm) = if exclude_self && std::ptr::eq(queries.data, gallery.data) {
        (self_top_k(&q, k, distance), false)
    } else {
        (tiled_top_k(&q, &prepare(gallery, distance), k, distance, exclude_self), true)
    };
    (0..queries.len())
        .map(|i| {
            let offset = if own_sq_norm { q.sq_norms[i] } else { 0.0 };
            Neighbours {
                indices: top.row(i).iter().map(|&(_, j)| j as usize).collect(),
                distances: top
                    .row(i)
                    .iter()
                    .map(|&(s, _)| match distance {
                        Distance::Cosine => 1.0 - s,
                        Distance::Euclidean => (offset - s).max(0.0).sqrt(),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Recall@K for each `k` in `ks`, in percent: every item queries all the others.
pub fn recall_at_k(embeddings: Embeddings<'_>, labels: &[usize], ks: &[usize], distance: Distance) -> Vec<f64> {
    assert_eq!(embeddings.len(), labels.len(), "one label per embedding");
    let kmax = ks.iter().copied().max().unwrap_or(0);
    if labels.is_empty() || kmax == 0 {
        return vec![0.0; ks.len()];
    }
    let p = prepare(embeddings, distance);
    let top = self_top_k(&p, kmax, distance);
    // Rank (0-based) of the first same-class item, or usize::MAX.
    let ranks: Vec<usize> = (0..labels.len()).map(|i| top.row(i).iter().position(|&(_, j)| labels[j as usize] == labels[i]).unwrap_or(usize::MAX)).collect();
    ks.iter().map(|&k| 100.0 * ranks.iter().filter(|&&r| r < k).count() as f64 / labels.len() as f64).collect()
}

/// Mean average precision over the full ranking.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanAp {
    /// mAP in percent over the queries that have at least one positive.
    pub map: f64,
    /// Queries that had no other item of their class (left out of the mean).
    pub queries_without_positive: usize,
}

/// Average precision of one ranked row given the positives' scores.
fn average_precision(row: &[f32], labels: &[usize], query: usize) -> Option<f64> {
    let label = labels[query];
    // Positives sorted best first (score desc, index asc).
    let mut pos: Vec<(f32, usize)> = row.iter().enumerate().filter(|&(j, _)| j != query && labels[j] == label).map(|(j, &s)| (s, j)).collect();
    if pos.is_empty() {
        return None;
    }
    pos.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    // better_negatives[t] = negatives ranked before positive t (and after positive t-1).
    let mut before = vec![0usize; pos.len() + 1];
    for (j, &s) in row.iter().enumerate() {
        if j == query || labels[j] == label {
            continue;
        }
        // Number of positives that rank before this negative.
        let t = pos.partition_point(|&(ps, pj)| ps > s || (ps == s && pj < j));
        before[t] += 1;
    }
    let mut negatives_so_far = 0usize;
    let mut sum = 0.0;
    for (t, _) in pos.iter().enumerate() {
        negatives_so_far += before[t];
        let rank = t + 1 + negatives_so_far;
        sum += (t + 1) as f64 / rank as f64;
    }
    Some(sum / pos.len() as f64)
}

/// mAP where every item queries all the others.
pub fn mean_average_precision(embeddings: Embeddings<'_>, labels: &[usize], distance: Distance) -> MeanAp {
    assert_eq!(embeddings.len(), labels.len(), "one label per embedding");
    let p = prepare(embeddings, distance);
    let aps: Vec<std::sync::Mutex<Option<f64>>> = (0..labels.len()).map(|_| std::sync::Mutex::new(None)).collect();
    for_each_score_row(&p, &p, distance, |i, row| {
        *aps[i].lock().expect("lock not poisoned") = average_precision(row, labels, i);
    });
    let aps: Vec<Option<f64>> = aps.into_iter().map(|m| m.into_inner().expect("lock not poisoned")).collect();
    let valid: Vec<f64> = aps.iter().flatten().copied().collect();
    MeanAp {
        map: if valid.is_empty() { 0.0 } else { 100.0 * valid.iter().sum::<f64>() / valid.len() as f64 },
        queries_without_positive: aps.len() - valid.len(),
    }
}

/// acc@K for each `k` in `ks`, in percent: query `i`'s true match is gallery item
/// `true_match[i]`; it counts when that item is ranked within the top `k`.
pub fn acc_at_k(queries: Embeddings<'_>, gallery: Embeddings<'_>, true_match: &[usize], ks: &[usize], distance: Distance) -> Vec<f64> {
    assert_eq!(queries.len(), true_match.len(), "one true match per query");
    assert_eq!(queries.dim, gallery.dim, "queries and gallery differ in dimension");
    let q = prepare(queries, distance);
    let g = prepare(gallery, distance);
    let ranks: Vec<std::sync::atomic::AtomicUsize> = (0..true_match.len()).map(|_| std::sync::atomic::AtomicUsize::new(0)).collect();
    for_each_score_row(&q, &g, distance, |i, row| {
        let t = true_match[i];
        let st = row[t];
        // Rank = items strictly better, plus equal ones with a lower index.
        let rank = row.iter().enumerate().filter(|&(j, &s)| s > st || (s == st && j < t)).count();
        ranks[i].store(rank, std::sync::atomic::Ordering::Relaxed);
    });
    let ranks: Vec<usize> = ranks.into_iter().map(|a| a.into_inner()).collect();
    ks.iter().map(|&k| 100.0 * ranks.iter().filter(|&&r| r < k).count() as f64 / true_match.len().max(1) as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points on a line (1-D embeddings padded to 2-D): euclidean order is obvious by hand.
    fn line(xs: &[f32]) -> Vec<f32> {
        xs.iter().flat_map(|&x| [x, 0.0]).collect()
    }

    #[test]
    fn recall_by_hand_with_a_query_without_positive() {
        // Positions 0, 1, 3, 10, 11; labels a a b b c.
        let e = line(&[0.0, 1.0, 3.0, 10.0, 11.0]);
        let labels = [0, 0, 1, 1, 2];
        let r = recall_at_k(Embeddings::new(&e, 2), &labels, &[1, 2, 4], Distance::Euclidean);
        // q0: nn 1(a) hit@1. q1: nn 0(a) hit@1. q2 (x=3): order 1,0,10,11 -> b at rank 3: hit@4 only.
        // q3 (x=10): nn 11(c), then 3(b) -> hit@2. q4: no positive -> never.
        assert_eq!(r, vec![40.0, 60.0, 80.0]);
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        // Query 0 at origin; items 1 and 2 at equal distance with different labels.
        let e = line(&[0.0, 1.0, -1.0]);
        let n = knn(Embeddings::new(&e, 2), Embeddings::new(&e, 2), 2, Distance::Euclidean, true);
        assert_eq!(n[0].indices, vec![1, 2]);
        assert!((n[0].distances[0] - 1.0).abs() < 1e-6);
        let r = recall_at_k(Embeddings::new(&e, 2), &[0, 1, 0], &[1], Distance::Euclidean);
        // q0's tie resolves to item 1 (label 1): miss. q1: nn is 0 (label 0): miss. q2: nn 0: hit.
        assert!((r[0] - 100.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn cosine_ignores_scale() {
        let e = vec![1.0, 0.0, 100.0, 1.0, 0.0, 1.0, 0.0, 5.0];
        let n = knn(Embeddings::new(&e, 2), Embeddings::new(&e, 2), 3, Distance::Cosine, true);
        assert_eq!(n[0].indices, vec![1, 2, 3]);
        assert_eq!(n[2].indices[0], 3);
        assert!(n[2].distances[0].abs() < 1e-6);
    }

    #[test]
    fn map_by_hand() {
        // x: 0,1,2,3 labels a,b,a,a. Query 0 ranks 1(b),2(a),3(a): AP = (1/2 + 2/3)/2.
        let e = line(&[0.0, 1.0, 2.0, 3.0]);
        let labels = [0, 1, 0, 0];
        let m = mean_average_precision(Embeddings::new(&e, 2), &labels, Distance::Euclidean);
        // q2 (x=2): ties 1(b) and 3(a) at distance 1 -> 1 first, then 3, then 0: AP=(1/2 + 2/3)/2.
        // q3 (x=3): 2(a), 1(b), 0(a): AP = (1 + 2/3)/2. q1 has no positive.
        let want = ((0.5 + 2.0 / 3.0) / 2.0 + (0.5 + 2.0 / 3.0) / 2.0 + (1.0 + 2.0 / 3.0) / 2.0) / 3.0 * 100.0;
        assert!((m.map - want).abs() < 1e-9, "{} vs {want}", m.map);
        assert_eq!(m.queries_without_positive, 1);
    }

    #[test]
    fn acc_at_k_by_hand() {
        let q = line(&[0.0, 5.0]);
        let g = line(&[1.0, 4.0, 6.0, 0.5]);
        // q0 true = 0 (x=1): ranked after 3 (x=0.5) -> rank 1. q1 true = 2 (x=6): tie with 1 (x=4),
        // lower index 1 wins -> rank 1.
        let a = acc_at_k(Embeddings::new(&q, 2), Embeddings::new(&g, 2), &[0, 2], &[1, 2], Distance::Euclidean);
        assert_eq!(a, vec![0.0, 100.0]);
    }

    #[test]
    fn symmetric_and_row_paths_agree_across_block_edges() {
        let mut g = crate::rng::SplitMix64::new(3);
        let (n, d) = (2500, 4);
        // Entries of +-1 in 4-d: norms are exactly 2 and every score is exact, and with only 16
        // distinct vectors ties are everywhere; they must break the same way on both paths.
        let e: Vec<f32> = (0..n * d).map(|_| (g.below(2) as f32) * 2.0 - 1.0).collect();
        let copy = e.clone();
        // k = 300: lists longer than a byte can count.
        for (dist, k) in [(Distance::Cosine, 7), (Distance::Euclidean, 7), (Distance::Euclidean, 300)] {
            let sym = knn(Embeddings::new(&e, d), Embeddings::new(&e, d), k, dist, true);
            let rows = knn(Embeddings::new(&e, d), Embeddings::new(&copy, d), k, dist, true);
            assert_eq!(sym, rows, "{dist:?} k={k}");
            assert!(sym.iter().all(|nb| nb.indices.len() == k));
        }
    }

    #[test]
    fn blocked_computation_matches_brute_force() {
        let mut g = crate::rng::SplitMix64::new(11);
        let (n, d) = (700, 7);
        let e: Vec<f32> = (0..n * d).map(|_| g.next_f64() as f32 - 0.5).collect();
        let labels: Vec<usize> = (0..n).map(|i| i % 13).collect();
        for dist in [Distance::Cosine, Distance::Euclidean] {
            let got = knn(Embeddings::new(&e, d), Embeddings::new(&e, d), 5, dist, true);
            for i in (0..n).step_by(37) {
                let key = |j: usize| -> f64 {
                    let (a, b) = (&e[i * d..(i + 1) * d], &e[j * d..(j + 1) * d]);
                    match dist {
                        Distance::Euclidean => a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum(),
                        Distance::Cosine => {
                            let dot: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
                            let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                            let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                            1.0 - dot / (na * nb)
                        }
                    }
                };
                let mut all: Vec<usize> = (0..n).filter(|&j| j != i).collect();
                all.sort_by(|&a, &b| key(a).total_cmp(&key(b)).then(a.cmp(&b)));
                assert_eq!(got[i].indices, all[..5].to_vec(), "query {i} {dist:?}");
            }
            let r = recall_at_k(Embeddings::new(&e, d), &labels, &[1], dist);
            let brute = (0..n).filter(|&i| labels[got[i].indices[0]] == labels[i]).count() as f64 * 100.0 / n as f64;
            assert!((r[0] - brute).abs() < 1e-9);
        }
    }
}
