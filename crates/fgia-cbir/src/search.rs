//! Search and evaluation on embeddings held in memory: exact k-NN (blocked matrix products,
//! [`fgia_core::retrieval`]), full distance matrices for re-ranking, ranking metrics from a
//! distance matrix, and the exact Recall@K of a random ranking (the chance baseline).

use fgia_core::retrieval::{Distance, Embeddings, knn};
use rayon::prelude::*;

/// The `k` nearest gallery items of each query: `(index, distance)` nearest first, ties to
/// the lower index. `exclude_self` when queries and gallery are the same set.
pub fn exact_knn(queries: &[f32], gallery: &[f32], dim: usize, k: usize, distance: Distance, exclude_self: bool) -> Vec<Vec<(usize, f32)>> {
    knn(Embeddings::new(queries, dim), Embeddings::new(gallery, dim), k, distance, exclude_self)
        .into_iter()
        .map(|n| n.indices.into_iter().zip(n.distances).collect())
        .collect()
}

/// Full `n x n` distances between the rows of `x` (`1 − cos` or euclidean), in parallel.
pub fn distance_matrix(x: &[f32], dim: usize, distance: Distance) -> Vec<f32> {
    distance_matrix_between(x, x, dim, distance)
}

/// `q.len()/dim x g.len()/dim` distances.
pub fn distance_matrix_between(q: &[f32], g: &[f32], dim: usize, distance: Distance) -> Vec<f32> {
    let prep = |x: &[f32]| -> Vec<f32> {
        let mut v = x.to_vec();
        if distance == Distance::Cosine {
            crate::pca::l2_normalise_rows(&mut v, dim);
        }
        v
    };
    let (q, g) = (prep(q), prep(g));
    let ng = g.len() / dim;
    q.par_chunks(dim)
        .flat_map_iter(|a| {
            let g = &g;
            (0..ng).map(move |j| {
                let b = &g[j * dim..(j + 1) * dim];
                match distance {
                    Distance::Cosine => 1.0 - a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>(),
                    Distance::Euclidean => a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt(),
                }
            })
        })
        .collect()
}

/// Recall@K (percent, for each `k`) and mAP (percent, over queries with a positive) from a
/// square distance matrix where every item queries all the others. Ties go to the lower index.
pub fn ranking_metrics(dist: &[f32], labels: &[usize], ks: &[usize]) -> (Vec<f64>, f64) {
    let n = labels.len();
    assert_eq!(dist.len(), n * n, "distance matrix is not n x n");
    let per: Vec<(usize, Option<f64>)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let row = &dist[i * n..(i + 1) * n];
            let mut order: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            order.sort_by(|&a, &b| row[a].total_cmp(&row[b]).then(a.cmp(&b)));
            let first = order.iter().position(|&j| labels[j] == labels[i]).unwrap_or(usize::MAX);
            let mut hits = 0usize;
            let mut sum = 0.0;
            for (r, &j) in order.iter().enumerate() {
                if labels[j] == labels[i] {
                    hits += 1;
                    sum += hits as f64 / (r + 1) as f64;
                }
            }
            (first, (hits > 0).then(|| sum / hits as f64))
        })
        .collect();
    let recall = ks.iter().map(|&k| 100.0 * per.iter().filter(|p| p.0 < k).count() as f64 / n.max(1) as f64).collect();
    let aps: Vec<f64> = per.iter().filter_map(|p| p.1).collect();
    let map = if aps.is_empty() { 0.0 } else { 100.0 * aps.iter().sum::<f64>() / aps.len() as f64 };
    (recall, map)
}

/// Expected Recall@K (percent) of a uniformly random ranking: a query with `P` positives among
/// the `N − 1` others misses all of them in its top `K` with probability
/// `C(N−1−P, K) / C(N−1, K)`.
pub fn random_ranking_recall(labels: &[usize], ks: &[usize]) -> Vec<f64> {
    let n = labels.len();
    let mut count = std::collections::HashMap::new();
    for &l in labels {
        *count.entry(l).or_insert(0usize) += 1;
    }
    ks.iter()
        .map(|&k| {
            let others = n.saturating_sub(1);
            let sum: f64 = labels
                .iter()
                .map(|l| {
                    let p = count[l] - 1;
                    // Π_{t<k} (others − p − t) / (others − t)
                    let mut miss = 1.0f64;
                    for t in 0..k.min(others) {
                        miss *= (others.saturating_sub(p + t)) as f64 / (others - t) as f64;
                    }
                    1.0 - miss
                })
                .sum();
            100.0 * sum / n.max(1) as f64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_from_a_matrix_match_the_core_metrics() {
        let mut g = fgia_core::rng::SplitMix64::new(5);
        let (n, dim) = (60, 8);
        let x: Vec<f32> = (0..n * dim).map(|_| g.next_f64() as f32 - 0.5).collect();
        let labels: Vec<usize> = (0..n).map(|i| i % 7).collect();
        for distance in [Distance::Cosine, Distance::Euclidean] {
            let d = distance_matrix(&x, dim, distance);
            let (r, map) = ranking_metrics(&d, &labels, &[1, 2, 4, 8]);
            let want = fgia_core::retrieval::recall_at_k(Embeddings::new(&x, dim), &labels, &[1, 2, 4, 8], distance);
            let want_map = fgia_core::retrieval::mean_average_precision(Embeddings::new(&x, dim), &labels, distance).map;
            for (a, b) in r.iter().zip(&want) {
                assert!((a - b).abs() < 1e-9, "{distance:?}: {r:?} vs {want:?}");
            }
            assert!((map - want_map).abs() < 1e-6, "{map} vs {want_map}");
        }
    }

    #[test]
    fn random_baseline_by_hand() {
        // Two classes of 2: each query has 1 positive among 3 others: R@1 = 1/3, R@2 = 2/3.
        let r = random_ranking_recall(&[0, 0, 1, 1], &[1, 2, 3]);
        assert!((r[0] - 100.0 / 3.0).abs() < 1e-9 && (r[1] - 200.0 / 3.0).abs() < 1e-9 && (r[2] - 100.0).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn exact_knn_matches_brute_force() {
        let mut g = fgia_core::rng::SplitMix64::new(9);
        let (nq, ng, dim, k) = (17, 300, 12, 10);
        let q: Vec<f32> = (0..nq * dim).map(|_| g.next_f64() as f32).collect();
        let gal: Vec<f32> = (0..ng * dim).map(|_| g.next_f64() as f32).collect();
        for distance in [Distance::Cosine, Distance::Euclidean] {
            let got = exact_knn(&q, &gal, dim, k, distance, false);
            let d = distance_matrix_between(&q, &gal, dim, distance);
            for i in 0..nq {
                let mut order: Vec<usize> = (0..ng).collect();
                order.sort_by(|&a, &b| d[i * ng + a].total_cmp(&d[i * ng + b]).then(a.cmp(&b)));
                let ids: Vec<usize> = got[i].iter().map(|p| p.0).collect();
                assert_eq!(ids, order[..k].to_vec(), "{distance:?} query {i}");
                for (p, &j) in got[i].iter().zip(&order[..k]) {
                    assert!((p.1 - d[i * ng + j]).abs() < 1e-4);
                }
            }
        }
    }
}
