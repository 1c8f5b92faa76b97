//! iSQRT-COV: covariance pooling with the matrix square root by Newton-Schulz iterations.
//!
//! Li, Xie, Wang and Gao, "Towards Faster Training of Global Covariance Pooling Networks by
//! Iterative Matrix Square Root Normalization", CVPR 2018, §3, as in the authors' code
//! (fast-MPN-COV `Sqrtm`):
//!
//! 1. covariance pooling `Σ = (1/M) X Ī Xᵀ` (after a 1x1 convolution to 256 channels with batch
//!    norm and ReLU, [`Reduction`]);
//! 2. pre-normalisation by the trace, `A = Σ / tr(Σ)` (eq. 5);
//! 3. coupled Newton-Schulz iterations (eq. 4), `Y₀ = A`, `Z₀ = I`,
//!    `T_k = ½ (3I − Z_{k−1} Y_{k−1})`, `Y_k = Y_{k−1} T_k`, `Z_k = T_k Z_{k−1}`, `N = 5`; the last
//!    one updates `Y` only;
//! 4. post-compensation `C = √tr(Σ) · Y_N` (eq. 6);
//! 5. the upper triangle, `C(C+1)/2` values (32,896 for 256 channels).
//!
//! Gradients come from burn's autodiff through these same operations (the paper derives the
//! same backward by hand).
//!
//! Recipe: `recipes/table2/isqrt-cov.toml` (`cargo xtask reproduce table2 --smoke --methods isqrt-cov`).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::prelude::*;

use super::{covariance, descriptors, eye, trace, upper_triangle};

/// Newton-Schulz iterations of the paper.
pub const ITERATIONS: usize = 5;

/// Matrix square root of symmetric positive semi-definite matrices (`A / tr A` has its
/// eigenvalues in `[0, 1]`, where the iteration converges), scaled back by `√tr A`.
///
/// # Shapes
/// `[B, C, C]` to `[B, C, C]`.
pub fn newton_schulz_sqrt<B: Backend>(sigma: Tensor<B, 3>, iterations: usize) -> Tensor<B, 3> {
    let [b, c, _] = sigma.dims();
    let device = sigma.device();
    let tr = trace(sigma.clone()).clamp_min(1e-12); // [B, 1, 1]
    let a = sigma / tr.clone();
    let i3 = eye::<B>(b, c, &device) * 3.0;
    let iterations = iterations.max(2);
    let zy = (i3.clone() - a.clone()) * 0.5;
    let mut y = a.matmul(zy.clone());
    let mut z = zy;
    for _ in 1..iterations - 1 {
        let t = (i3.clone() - z.clone().matmul(y.clone())) * 0.5;
        y = y.matmul(t.clone());
        z = t.matmul(z);
    }
    let y = y.clone().matmul(i3 - z.matmul(y)) * 0.5;
    y * tr.sqrt()
}

/// The iSQRT-COV descriptor of a (reduced) feature map.
///
/// # Shapes
/// `[B, C, h, w]` to `[B, C (C + 1) / 2]`.
pub fn isqrt_cov<B: Backend>(x: Tensor<B, 4>, iterations: usize) -> Tensor<B, 2> {
    upper_triangle(newton_schulz_sqrt(covariance(descriptors(x)), iterations))
}

/// The 1x1 convolution, batch norm and ReLU that reduce a backbone's channels (2048 for
/// ResNet-50) to 256 before covariance pooling.
#[derive(Module, Debug)]
pub struct Reduction<B: Backend> {
    conv: Conv2d<B>,
    bn: BatchNorm<B>,
}

impl<B: Backend> Reduction<B> {
    /// A reduction from `input` to `output` channels.
    pub fn new(input: usize, output: usize, device: &B::Device) -> Self {
        Reduction { conv: Conv2dConfig::new([input, output], [1, 1]).with_bias(false).init(device), bn: BatchNormConfig::new(output).init(device) }
    }

    /// # Shapes
    /// `[B, C_in, h, w]` to `[B, C_out, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        fgia_nn::norm::batch_norm_act(&self.bn, super::pointwise(&self.conv, x), fgia_nn::kernels::Act::Relu)
    }
}
