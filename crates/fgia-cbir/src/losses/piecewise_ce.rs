//! Piecewise cross-entropy.
//!
//! Zeng, Zhang, Wang, Chen, Li and Yang, "Fine-Grained Image Retrieval via Piecewise Cross
//! Entropy Loss", Image and Vision Computing 93, 2020.
//!
//! A cross-entropy that stops raising the confidence of samples that are already classified
//! confidently, to keep a fine-grained embedding from over-fitting the training classes (the
//! survey: "reducing the confidence of the fine-grained model"). On normalize-scale logits
//! `z_c = s cos(f_i, w_c)`, with `p_i = softmax(z)_{y_i}`:
//!
//! `L_i = −log p_i` if `p_i < β`, else `−log β` (constant: no gradient),
//! `L = mean_i L_i`, `s = 16`, `β = 0.8`.
//!
//! **Provenance of the equation:** reconstructed from the abstract and the survey's one-line
//! description; the paper's exact second piece and its threshold are not reproduced from its
//! text. The report marks the method accordingly.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use super::{matrix, one_hot, values};
use fgia_nn::ops::l2_normalize;

/// Scale `s` and threshold `β`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PceParams {
    /// Scale of the cosine logits.
    pub scale: f32,
    /// Confidence above which the loss is flat.
    pub beta: f32,
}

impl Default for PceParams {
    fn default() -> Self {
        PceParams { scale: 16.0, beta: 0.8 }
    }
}

/// # Shapes
/// `embeddings` `[B, D]`, `weights` `[C, D]` to a scalar `[1]`.
pub fn piecewise_ce_loss<B: Backend>(embeddings: Tensor<B, 2>, weights: Tensor<B, 2>, labels: &[usize], p: PceParams) -> Tensor<B, 1> {
    let device = embeddings.device();
    let (b, c) = (labels.len(), weights.dims()[0]);
    let logits = l2_normalize(embeddings, 1e-12).matmul(l2_normalize(weights, 1e-12).transpose()).mul_scalar(p.scale); // [B, C]
    let onehot = matrix::<B>(one_hot(labels, c), b, c, &device);
    let logp = (log_softmax(logits, 1) * onehot).sum_dim(1); // [B, 1]
    let lp = values(&logp);
    let active: Vec<f32> = lp.iter().map(|&l| if l.exp() < p.beta { 1.0 } else { 0.0 }).collect();
    let flat_count = active.iter().filter(|&&a| a == 0.0).count() as f32;
    let active = matrix::<B>(active, b, 1, &device);
    (-(logp * active).sum() + flat_count * -(p.beta.ln())) / b as f32
}
