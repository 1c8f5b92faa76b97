//! Training objectives for retrieval embeddings: the survey's methods (CRL-WSL, DGCRL,
//! piecewise cross-entropy) and the deep-metric-learning baselines they are compared with
//! (contrastive, triplet with semi-hard mining, multi-similarity, proxy-anchor).
//!
//! Every loss takes a mini-batch of embeddings `[B, D]` and its labels (class indices in
//! `0..num_classes`); proxy- and classifier-based ones also take their class weights
//! `[num_classes, D]`. Mining decisions (which pairs count) are made on the values, without
//! gradient, as in the reference implementations; the loss itself is differentiable.

pub mod contrastive;
pub mod crl;
pub mod dgcrl;
pub mod multi_similarity;
pub mod piecewise_ce;
pub mod proxy_anchor;
pub mod triplet;

use burn::prelude::*;

/// A `[rows, cols]` float tensor from values.
pub(crate) fn matrix<B: Backend>(values: Vec<f32>, rows: usize, cols: usize, device: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

/// Positive-pair and negative-pair masks `[B, B]` (1.0 where the pair counts), the diagonal
/// excluded from both.
pub(crate) fn pair_masks(labels: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let b = labels.len();
    let mut pos = vec![0.0; b * b];
    let mut neg = vec![0.0; b * b];
    for i in 0..b {
        for j in 0..b {
            if i != j {
                if labels[i] == labels[j] {
                    pos[i * b + j] = 1.0;
                } else {
                    neg[i * b + j] = 1.0;
                }
            }
        }
    }
    (pos, neg)
}

/// Squared euclidean distances `[B, B]` between rows, clamped at 0.
pub(crate) fn squared_distances<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let sq = x.clone().powi_scalar(2).sum_dim(1); // [B, 1]
    let gram = x.clone().matmul(x.transpose()); // [B, B]
    (sq.clone() + sq.transpose() - gram * 2.0).clamp_min(0.0)
}

/// One-hot `[B, C]` labels.
pub(crate) fn one_hot(labels: &[usize], classes: usize) -> Vec<f32> {
    let mut v = vec![0.0; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        v[i * classes + l] = 1.0;
    }
    v
}

/// The values of a 2-D tensor (for mining), row-major.
pub(crate) fn values<B: Backend>(t: &Tensor<B, 2>) -> Vec<f32> {
    t.clone().into_data().convert::<f32>().to_vec().unwrap_or_default()
}
