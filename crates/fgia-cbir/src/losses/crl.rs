//! Centralized ranking loss (CRL-WSL).
//!
//! Zheng, Ji, Sun, Wu, Huang and Yang, "Centralized Ranking Loss with Weakly Supervised
//! Localization for Fine-Grained Object Retrieval", IJCAI 2018.
//!
//! The paper ranks each sample against class *centres* instead of against other samples
//! (triplets), which is what makes it much cheaper than the triplet loss. Our form: with
//! ℓ2-normalised embeddings `f_i` and the centres `μ_c` of the classes present in the
//! mini-batch (means of their embeddings, differentiable),
//!
//! `L = 1/B Σ_i 1/(K−1) Σ_{c ≠ y_i} [m + ‖f_i − μ_{y_i}‖² − ‖f_i − μ_c‖²]₊`, `m = 0.5`,
//!
//! where `K` is the number of classes in the batch. The weakly supervised localization (the
//! second half of the name) is in [`crate::model`]: features are pooled inside the object
//! region found from the activations themselves, SCDA-style.
//!
//! **Provenance of the equation:** reconstructed from the paper's abstract and the survey's
//! description (ranking against class centres, localization inspired by SCDA); the paper's
//! exact normalisation of the sum and its margin are not reproduced from its text. The
//! report marks the method accordingly.

use burn::prelude::*;
use burn::tensor::activation::relu;

use super::matrix;

/// Margin `m`.
pub const MARGIN: f32 = 0.5;

/// # Shapes
/// `embeddings` `[B, D]` (ℓ2-normalised) to a scalar `[1]`.
pub fn centralized_ranking_loss<B: Backend>(embeddings: Tensor<B, 2>, labels: &[usize], margin: f32) -> Tensor<B, 1> {
    let device = embeddings.device();
    let b = labels.len();
    let mut classes: Vec<usize> = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let k = classes.len();
    if k < 2 {
        return embeddings.sum() * 0.0;
    }
    // Averaging matrix [K, B]: row c holds 1/n_c at the batch positions of class c.
    let mut avg = vec![0.0f32; k * b];
    let mut own = vec![0.0f32; b * k];
    for (c, &cls) in classes.iter().enumerate() {
        let members: Vec<usize> = (0..b).filter(|&i| labels[i] == cls).collect();
        for &i in &members {
            avg[c * b + i] = 1.0 / members.len() as f32;
            own[i * k + c] = 1.0;
        }
    }
    let centres = matrix::<B>(avg, k, b, &device).matmul(embeddings.clone()); // [K, D]
    let sq_f = embeddings.clone().powi_scalar(2).sum_dim(1); // [B, 1]
    let sq_c = centres.clone().powi_scalar(2).sum_dim(1).transpose(); // [1, K]
    let dist = (sq_f + sq_c - embeddings.matmul(centres.transpose()) * 2.0).clamp_min(0.0); // [B, K]
    let own = matrix::<B>(own, b, k, &device);
    let to_own = (dist.clone() * own.clone()).sum_dim(1); // [B, 1]
    let hinge = relu((to_own - dist).add_scalar(margin)) * own.neg().add_scalar(1.0); // [B, K], own class masked
    hinge.sum() / (b * (k - 1)) as f32
}
