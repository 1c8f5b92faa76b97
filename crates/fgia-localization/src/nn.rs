//! Small pieces the methods share: cross-entropy (plain, label-smoothed, soft targets), hits,
//! global pooling, host copies.

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};

/// Mean cross-entropy of `logits` `[n, C]` against `labels` `[n]`.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    let lp = log_softmax(logits, 1);
    lp.gather(1, labels.reshape([n, 1])).neg().mean()
}

/// Per-item cross-entropy `[n]`.
pub fn cross_entropy_each<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    log_softmax(logits, 1).gather(1, labels.reshape([n, 1])).neg().reshape([n])
}

/// Cross-entropy with the target `keep` on the label and `(1 - keep) / (C - 1)` elsewhere (S3N's
/// smoothed loss with `keep = 0.85`).
pub fn smoothed_cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>, keep: f32) -> Tensor<B, 1> {
    let [n, c] = logits.dims();
    let lp = log_softmax(logits, 1);
    let on = lp.clone().gather(1, labels.reshape([n, 1])).reshape([n]);
    let all = lp.sum_dim(1).reshape([n]);
    let off = (1.0 - keep) / (c.max(2) - 1) as f32;
    (on.clone().mul_scalar(keep) + (all - on).mul_scalar(off)).neg().mean()
}

/// Cross-entropy against soft targets `p` `[n, C]` (rows summing to one): `-Σ p log softmax(z)`.
pub fn soft_cross_entropy<B: Backend>(logits: Tensor<B, 2>, p: Tensor<B, 2>) -> Tensor<B, 1> {
    (p * log_softmax(logits, 1)).sum_dim(1).neg().mean()
}

/// Softmax probabilities.
pub fn probs<B: Backend>(logits: Tensor<B, 2>) -> Tensor<B, 2> {
    softmax(logits, 1)
}

/// Items whose arg-max is their label.
pub fn hits<B: Backend>(logits: &Tensor<B, 2>, labels: &[usize]) -> usize {
    let [_, c] = logits.dims();
    let pred = fgia_core::metrics::argmax_rows(&host(logits.clone()), c);
    pred.iter().zip(labels).filter(|(p, l)| p == l).count()
}

/// Global average pooling `[n, C, h, w] -> [n, C]`.
pub fn gap<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [n, c, _, _] = x.dims();
    x.mean_dim(3).mean_dim(2).reshape([n, c])
}

/// Global max pooling `[n, C, h, w] -> [n, C]`.
pub fn gmp<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [n, c, _, _] = x.dims();
    x.max_dim(3).max_dim(2).reshape([n, c])
}

/// The values of a tensor on the host.
pub fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap_or_default()
}

/// Row `k` of the `[n, k, per]` crops as `[n, per]`.
pub fn crop<B: Backend>(parts: &Tensor<B, 3>, k: usize) -> Tensor<B, 2> {
    let [n, _, per] = parts.dims();
    parts.clone().slice([0..n, k..k + 1, 0..per]).reshape([n, per])
}

/// The `[n, k, C h w]` spatial crops' row `k` as maps `[n, C, h, w]`.
pub fn crop_map<B: Backend>(parts: &Tensor<B, 3>, k: usize, shape: [usize; 3]) -> Tensor<B, 4> {
    let [n, _, _] = parts.dims();
    crop(parts, k).reshape([n, shape[0], shape[1], shape[2]])
}

/// A 64-bit seed for draws of item `(i, v)` of round `round`.
pub fn item_rng(seed: u64, round: u64, i: usize, v: usize) -> fgia_core::rng::SplitMix64 {
    fgia_core::rng::SplitMix64::for_item(seed ^ (0x10ca_11ce_u64.wrapping_mul(round + 1)), v as u64, i as u64)
}

/// `p` with the value `f` gives it, still a trainable parameter. ([`burn::module::Param::map`]
/// takes the require-grad flag of the new tensor, and a tensor built from data or `zeros_like`
/// has none: a layer initialised that way would silently never train.)
pub fn trainable<B: Backend, const D: usize>(
    p: burn::module::Param<Tensor<B, D>>,
    f: impl FnOnce(Tensor<B, D>) -> Tensor<B, D>,
) -> burn::module::Param<Tensor<B, D>> {
    p.map(|t| f(t).require_grad())
}
