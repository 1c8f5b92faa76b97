//! Contrastive loss.
//!
//! Hadsell, Chopra and LeCun, "Dimensionality Reduction by Learning an Invariant Mapping",
//! CVPR 2006; in the all-pairs mini-batch form of the deep-metric-learning benchmarks
//! (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020).
//!
//! With `d_ij = ‖x_i − x_j‖` on ℓ2-normalised embeddings, over all ordered pairs `i ≠ j` of the
//! batch:
//!
//! `L = mean_{y_i = y_j} d_ij² + mean_{y_i ≠ y_j} [m − d_ij]₊²`
//!
//! Deviation: the two means are taken separately (positives and negatives weigh the same
//! however unbalanced the batch is), where Hadsell et al. sum over pairs with weights ½.

use burn::prelude::*;
use burn::tensor::activation::relu;

use super::{matrix, pair_masks, squared_distances};

/// Default margin `m` (on unit-length embeddings, where distances lie in `[0, 2]`).
pub const MARGIN: f32 = 0.5;

/// # Shapes
/// `embeddings` `[B, D]` (ℓ2-normalised) to a scalar `[1]`.
pub fn contrastive_loss<B: Backend>(embeddings: Tensor<B, 2>, labels: &[usize], margin: f32) -> Tensor<B, 1> {
    let device = embeddings.device();
    let b = labels.len();
    let (pos, neg) = pair_masks(labels);
    let (np, nn) = (pos.iter().sum::<f32>().max(1.0), neg.iter().sum::<f32>().max(1.0));
    let d2 = squared_distances(embeddings); // [B, B]
    let d = d2.clone().clamp_min(1e-12).sqrt();
    let pos_term = (d2 * matrix::<B>(pos, b, b, &device)).sum() / np;
    let neg_term = (relu(d.neg().add_scalar(margin)).powi_scalar(2) * matrix::<B>(neg, b, b, &device)).sum() / nn;
    pos_term + neg_term
}
