//! Re-ranking after the first search.
//!
//! - **Average query expansion** (Chum et al., "Total Recall", ICCV 2007): each query is
//!   replaced by the ℓ2-normalised mean of itself and its top `k` results, and searched again.
//! - **k-reciprocal re-ranking** (Zhong, Zheng, Cao and Li, "Re-ranking Person
//!   Re-identification with k-reciprocal Encoding", CVPR 2017), eqs. 4-13: the k-reciprocal
//!   set of each item, its expansion with the `k1/2`-reciprocal sets of its members, Gaussian
//!   weights `e^{−d}` as a sparse vector, local query expansion over `k2` neighbours, and the
//!   Jaccard distance mixed with the original one: `d* = (1 − λ) d_J + λ d`. Defaults are the
//!   paper's `k1 = 20`, `k2 = 6`, `λ = 0.3`.
//!
//! Both operate where the queries are the gallery (every test image against the others), the
//! retrieval protocol of the survey's Table 5, and return a full distance matrix for
//! [`crate::search::ranking_metrics`].

use fgia_core::retrieval::Distance;
use rayon::prelude::*;

use crate::pca::l2_normalise_rows;
use crate::search::{distance_matrix, distance_matrix_between, exact_knn};

/// Distances after average query expansion with the top `k` (the query itself excluded).
pub fn query_expansion(x: &[f32], dim: usize, k: usize, distance: Distance) -> Vec<f32> {
    let mut base = x.to_vec();
    l2_normalise_rows(&mut base, dim);
    let nn = exact_knn(&base, &base, dim, k, distance, true);
    let mut expanded = base.clone();
    for (i, list) in nn.iter().enumerate() {
        let row = &mut expanded[i * dim..(i + 1) * dim];
        for &(j, _) in list {
            for (r, v) in row.iter_mut().zip(&base[j * dim..(j + 1) * dim]) {
                *r += v;
            }
        }
    }
    l2_normalise_rows(&mut expanded, dim);
    distance_matrix_between(&expanded, &base, dim, distance)
}

/// Parameters of k-reciprocal re-ranking.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KReciprocal {
    /// Size of the k-reciprocal neighbourhoods.
    pub k1: usize,
    /// Neighbours of the local query expansion.
    pub k2: usize,
    /// Weight of the original distance.
    pub lambda: f32,
}

impl Default for KReciprocal {
    fn default() -> Self {
        KReciprocal { k1: 20, k2: 6, lambda: 0.3 }
    }
}

fn k_reciprocal_set(rank: &[Vec<u32>], i: usize, k: usize) -> Vec<u32> {
    rank[i][..(k + 1).min(rank[i].len())].iter().copied().filter(|&j| rank[j as usize][..(k + 1).min(rank[j as usize].len())].contains(&(i as u32))).collect()
}

/// Re-ranked distances from the rows of `x`.
pub fn k_reciprocal(x: &[f32], dim: usize, distance: Distance, p: KReciprocal) -> Vec<f32> {
    let n = x.len() / dim;
    // Squared euclidean distances on unit vectors (2 − 2 cos), as in the reference code.
    let d0 = distance_matrix(x, dim, distance);
    let mut orig: Vec<f32> = d0.iter().map(|&d| if distance == Distance::Cosine { 2.0 * d } else { d * d }).collect();
    // Normalise each column by its maximum, then transpose (the reference code's convention).
    let col_max: Vec<f32> = (0..n).map(|j| (0..n).map(|i| orig[i * n + j]).fold(0.0f32, f32::max).max(f32::MIN_POSITIVE)).collect();
    let mut t = vec![0.0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            t[j * n + i] = orig[i * n + j] / col_max[j];
        }
    }
    orig = t;
    let keep = (p.k1 + 1).max(p.k2).min(n);
    let rank: Vec<Vec<u32>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let row = &orig[i * n..(i + 1) * n];
            let mut order: Vec<u32> = (0..n as u32).collect();
            order.sort_by(|&a, &b| row[a as usize].total_cmp(&row[b as usize]).then(a.cmp(&b)));
            order.truncate(keep);
            order
        })
        .collect();
    let half = ((p.k1 as f64) / 2.0).round() as usize;
    // Sparse rows of V: (column, weight).
    let v: Vec<Vec<(u32, f32)>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let recip = k_reciprocal_set(&rank, i, p.k1);
            let mut expansion = recip.clone();
            for &c in &recip {
                let cand = k_reciprocal_set(&rank, c as usize, half);
                let common = cand.iter().filter(|j| recip.contains(j)).count();
                if common as f64 > 2.0 / 3.0 * cand.len() as f64 {
                    expansion.extend(cand);
                }
            }
            expansion.sort_unstable();
            expansion.dedup();
            let w: Vec<f32> = expansion.iter().map(|&j| (-orig[i * n + j as usize]).exp()).collect();
            let s: f32 = w.iter().sum::<f32>().max(f32::MIN_POSITIVE);
            expansion.into_iter().zip(w).map(|(j, w)| (j, w / s)).collect()
        })
        .collect();
    // Local query expansion: V_i <- mean of V over the k2 nearest of i.
    let v: Vec<Vec<(u32, f32)>> = if p.k2 > 1 {
        (0..n)
            .into_par_iter()
            .map(|i| {
                let mut dense = std::collections::BTreeMap::<u32, f32>::new();
                let nb = &rank[i][..p.k2.min(rank[i].len())];
                for &j in nb {
                    for &(c, w) in &v[j as usize] {
                        *dense.entry(c).or_default() += w / nb.len() as f32;
                    }
                }
                dense.into_iter().filter(|&(_, w)| w != 0.0).collect()
            })
            .collect()
    } else {
        v
    };
    // Inverted index: column -> rows with a non-zero entry.
    let mut inv: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n];
    for (i, row) in v.iter().enumerate() {
        for &(c, w) in row {
            inv[c as usize].push((i as u32, w));
        }
    }
    let lambda = p.lambda;
    (0..n)
        .into_par_iter()
        .flat_map_iter(|i| {
            let mut min_sum = vec![0.0f32; n];
            for &(c, w) in &v[i] {
                for &(r, w2) in &inv[c as usize] {
                    min_sum[r as usize] += w.min(w2);
                }
            }
            let orig = &orig;
            (0..n).map(move |j| {
                let jac = 1.0 - min_sum[j] / (2.0 - min_sum[j]);
                (1.0 - lambda) * jac + lambda * orig[i * n + j]
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::ranking_metrics;

    /// Clusters along a ring with one noisy "bridge" point per cluster: both re-rankings keep
    /// the metrics well-defined, and on clean clusters they do not hurt Recall@1.
    #[test]
    fn re_ranking_keeps_clean_clusters_perfect() {
        let mut g = fgia_core::rng::SplitMix64::new(1);
        let (classes, per, dim) = (6, 8, 16);
        let mut x = Vec::new();
        let mut labels = Vec::new();
        for c in 0..classes {
            let centre: Vec<f32> = (0..dim).map(|_| g.next_f64() as f32 - 0.5).collect();
            for _ in 0..per {
                x.extend(centre.iter().map(|v| v + 0.05 * (g.next_f64() as f32 - 0.5)));
                labels.push(c);
            }
        }
        let base = ranking_metrics(&distance_matrix(&x, dim, Distance::Cosine), &labels, &[1]);
        let qe = ranking_metrics(&query_expansion(&x, dim, 3, Distance::Cosine), &labels, &[1]);
        let kr = ranking_metrics(&k_reciprocal(&x, dim, Distance::Cosine, KReciprocal { k1: 6, k2: 3, lambda: 0.3 }), &labels, &[1]);
        assert_eq!(base.0[0], 100.0);
        assert_eq!(qe.0[0], 100.0);
        assert_eq!(kr.0[0], 100.0);
        assert!(kr.1 >= base.1 - 1e-9, "k-reciprocal mAP {} below the original {}", kr.1, base.1);
    }

    /// The Jaccard part is 0 between an item and itself and the mix is bounded.
    #[test]
    fn k_reciprocal_distances_are_bounded() {
        let mut g = fgia_core::rng::SplitMix64::new(2);
        let (n, dim) = (40, 6);
        let x: Vec<f32> = (0..n * dim).map(|_| g.next_f64() as f32 - 0.5).collect();
        let d = k_reciprocal(&x, dim, Distance::Euclidean, KReciprocal::default());
        assert_eq!(d.len(), n * n);
        assert!(d.iter().all(|v| v.is_finite() && *v >= -1e-6 && *v <= 1.0 + 1e-6));
        for i in 0..n {
            assert!(d[i * n + i] <= d[i * n..(i + 1) * n].iter().copied().fold(f32::INFINITY, f32::min) + 1e-6);
        }
    }
}
