//! Multi-similarity loss.
//!
//! Wang, Han, Huang, Dong and Scott, "Multi-Similarity Loss with General Pair Weighting for
//! Deep Metric Learning", CVPR 2019, eqs. 11-13, with the constants of the authors' code
//! (`scale_pos = 2`, `scale_neg = 40`, `thresh = 0.5`, `margin = 0.1`).
//!
//! With cosine similarities `S = x xᵀ` (ℓ2-normalised `x`), for each anchor `i`:
//! - mining (eq. 11, 12): keep negatives with `S_in > min_{p} S_ip − ε` and positives with
//!   `S_ip < max_{n} S_in + ε`;
//! - weighting (eq. 13):
//!   `L_i = 1/α log(1 + Σ_{kept p} e^{−α (S_ip − λ)}) + 1/β log(1 + Σ_{kept n} e^{β (S_in − λ)})`.
//!
//! `L = (1/B) Σ_i L_i`; as in the authors' code, an anchor with no kept positive or no kept
//! negative contributes 0 but still counts in `B`.

use burn::prelude::*;

use super::{matrix, values};

/// Hyper-parameters `(α, β, λ, ε)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MsParams {
    /// Positive scale α.
    pub alpha: f32,
    /// Negative scale β.
    pub beta: f32,
    /// Similarity threshold λ.
    pub lambda: f32,
    /// Mining margin ε.
    pub epsilon: f32,
}

impl Default for MsParams {
    fn default() -> Self {
        MsParams { alpha: 2.0, beta: 40.0, lambda: 0.5, epsilon: 0.1 }
    }
}

/// Mined positive and negative masks `[B, B]`.
pub fn mine(sim: &[f32], labels: &[usize], epsilon: f32) -> (Vec<f32>, Vec<f32>) {
    let b = labels.len();
    let mut pos = vec![0.0; b * b];
    let mut neg = vec![0.0; b * b];
    for i in 0..b {
        let row = &sim[i * b..(i + 1) * b];
        let ps: Vec<usize> = (0..b).filter(|&j| j != i && labels[j] == labels[i]).collect();
        let ns: Vec<usize> = (0..b).filter(|&j| labels[j] != labels[i]).collect();
        if ps.is_empty() || ns.is_empty() {
            continue;
        }
        let min_pos = ps.iter().map(|&j| row[j]).fold(f32::INFINITY, f32::min);
        let max_neg = ns.iter().map(|&j| row[j]).fold(f32::NEG_INFINITY, f32::max);
        let kept_n: Vec<usize> = ns.into_iter().filter(|&j| row[j] + epsilon > min_pos).collect();
        let kept_p: Vec<usize> = ps.into_iter().filter(|&j| row[j] - epsilon < max_neg).collect();
        if kept_n.is_empty() || kept_p.is_empty() {
            continue;
        }
        kept_p.iter().for_each(|&j| pos[i * b + j] = 1.0);
        kept_n.iter().for_each(|&j| neg[i * b + j] = 1.0);
    }
    (pos, neg)
}

/// # Shapes
/// `embeddings` `[B, D]` (ℓ2-normalised) to a scalar `[1]`.
pub fn multi_similarity_loss<B: Backend>(embeddings: Tensor<B, 2>, labels: &[usize], p: MsParams) -> Tensor<B, 1> {
    let device = embeddings.device();
    let b = labels.len();
    let sim = embeddings.clone().matmul(embeddings.transpose()); // [B, B]
    let (pos, neg) = mine(&values(&sim), labels, p.epsilon);
    let pos_sum = (sim.clone().sub_scalar(p.lambda).mul_scalar(-p.alpha).exp() * matrix::<B>(pos, b, b, &device)).sum_dim(1); // [B, 1]
    let neg_sum = (sim.sub_scalar(p.lambda).mul_scalar(p.beta).exp() * matrix::<B>(neg, b, b, &device)).sum_dim(1); // [B, 1]
    let per_anchor = pos_sum.log1p() / p.alpha + neg_sum.log1p() / p.beta;
    per_anchor.sum() / b as f32
}
