//! Proxy-anchor loss.
//!
//! Kim, Kim, Cho and Kwak, "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020, eq. 4,
//! with the paper's `α = 32`, `δ = 0.1`.
//!
//! With one learnable proxy `p_c` per training class and cosine similarity `s(x, p)`:
//!
//! `L = 1/|P⁺| Σ_{p∈P⁺} log(1 + Σ_{x∈X_p⁺} e^{−α (s(x,p) − δ)})
//!    + 1/|P|  Σ_{p∈P}  log(1 + Σ_{x∈X_p⁻} e^{α (s(x,p) + δ)})`
//!
//! `P⁺`: the proxies with at least one positive in the batch; `X_p⁺`/`X_p⁻`: the batch's
//! embeddings of / not of `p`'s class.

use burn::prelude::*;

use super::{matrix, one_hot};
use fgia_nn::ops::l2_normalize;

/// `(α, δ)` of the paper.
pub const ALPHA: f32 = 32.0;
/// Margin δ.
pub const DELTA: f32 = 0.1;

/// # Shapes
/// `embeddings` `[B, D]`, `proxies` `[C, D]` to a scalar `[1]`.
pub fn proxy_anchor_loss<B: Backend>(embeddings: Tensor<B, 2>, proxies: Tensor<B, 2>, labels: &[usize], alpha: f32, delta: f32) -> Tensor<B, 1> {
    let device = embeddings.device();
    let (b, c) = (labels.len(), proxies.dims()[0]);
    let cos = l2_normalize(embeddings, 1e-12).matmul(l2_normalize(proxies, 1e-12).transpose()); // [B, C]
    let pos = one_hot(labels, c);
    let neg: Vec<f32> = pos.iter().map(|v| 1.0 - v).collect();
    let with_pos = (0..c).filter(|&k| labels.contains(&k)).count().max(1) as f32;
    let pos_sum = (cos.clone().sub_scalar(delta).mul_scalar(-alpha).exp() * matrix::<B>(pos, b, c, &device)).sum_dim(0); // [1, C]
    let neg_sum = (cos.add_scalar(delta).mul_scalar(alpha).exp() * matrix::<B>(neg, b, c, &device)).sum_dim(0); // [1, C]
    // Proxies without positives have pos_sum = 0 and add log(1) = 0.
    pos_sum.log1p().sum() / with_pos + neg_sum.log1p().sum() / c as f32
}
