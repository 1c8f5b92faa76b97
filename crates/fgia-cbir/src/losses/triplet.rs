//! Triplet loss with semi-hard negative mining.
//!
//! Schroff, Kalenichenko and Philbin, "FaceNet: A Unified Embedding for Face Recognition and
//! Clustering", CVPR 2015, §3.2; mining as in TensorFlow Addons' `triplet_semihard_loss`.
//!
//! For every anchor-positive pair `(a, p)` of the batch (`a ≠ p`, same class), with squared
//! euclidean distances `D` on ℓ2-normalised embeddings, the negative is the *semi-hard* one:
//! the closest `n` with `D_an > D_ap`; when no negative is farther than the positive, the
//! farthest negative. Then
//!
//! `L = mean_{(a,p)} [D_ap − D_an + α]₊`, `α = 0.2` (the paper's margin).
//!
//! Pairs whose anchor has no negative in the batch are skipped. Ties between equally distant
//! negatives go to the lower batch index.

use burn::prelude::*;
use burn::tensor::activation::relu;

use super::{squared_distances, values};

/// The paper's margin.
pub const MARGIN: f32 = 0.2;

/// The mined `(anchor * B + positive, anchor * B + negative)` flat indices.
pub fn mine_semi_hard(distances: &[f32], labels: &[usize]) -> (Vec<i64>, Vec<i64>) {
    let b = labels.len();
    let (mut ap, mut an) = (Vec::new(), Vec::new());
    for a in 0..b {
        let negs: Vec<usize> = (0..b).filter(|&n| labels[n] != labels[a]).collect();
        if negs.is_empty() {
            continue;
        }
        for p in (0..b).filter(|&p| p != a && labels[p] == labels[a]) {
            let dap = distances[a * b + p];
            let semi = negs
                .iter()
                .copied()
                .filter(|&n| distances[a * b + n] > dap)
                .min_by(|&x, &y| distances[a * b + x].total_cmp(&distances[a * b + y]).then(x.cmp(&y)));
            let n = semi.unwrap_or_else(|| {
                negs.iter().copied().max_by(|&x, &y| distances[a * b + x].total_cmp(&distances[a * b + y]).then(y.cmp(&x))).expect("non-empty")
            });
            ap.push((a * b + p) as i64);
            an.push((a * b + n) as i64);
        }
    }
    (ap, an)
}

/// # Shapes
/// `embeddings` `[B, D]` (ℓ2-normalised) to a scalar `[1]`.
pub fn triplet_semi_hard_loss<B: Backend>(embeddings: Tensor<B, 2>, labels: &[usize], margin: f32) -> Tensor<B, 1> {
    let device = embeddings.device();
    let b = labels.len();
    let d = squared_distances(embeddings); // [B, B]
    let (ap, an) = mine_semi_hard(&values(&d), labels);
    if ap.is_empty() {
        return d.sum() * 0.0;
    }
    let n = ap.len();
    let flat = d.reshape([b * b]);
    let ap = Tensor::<B, 1, Int>::from_data(TensorData::new(ap, [n]), &device);
    let an = Tensor::<B, 1, Int>::from_data(TensorData::new(an, [n]), &device);
    relu(flat.clone().select(0, ap) - flat.select(0, an) + margin).mean()
}
