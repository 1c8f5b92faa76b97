//! Compact bilinear pooling with Random Maclaurin features (the Tensor Sketch variant is
//! [`super::tensor_sketch`]).
//!
//! Gao, Beijbom, Zhang and Darrell, "Compact Bilinear Pooling", CVPR 2016, §3.2, Algorithm 1
//! (RM): with two fixed random matrices `W₁, W₂ ∈ {−1, +1}^{d×C}` (Rademacher),
//! `φ(x) = (1/√d) (W₁ x) ∘ (W₂ x)`, so that `E⟨φ(x), φ(y)⟩ = ⟨x, y⟩²`; the descriptor is the sum
//! of `φ` over locations, followed (as for B-CNN) by the signed square root and ℓ2.
//!
//! The projections are fixed (not learned), as in the paper's reported setting.
//!
//! Recipe: `recipes/table2/cbp-rm.toml` (`cargo xtask reproduce table2 --smoke --methods cbp-rm`).

use burn::prelude::*;
use fgia_core::rng::SplitMix64;

use super::descriptors;

/// The fixed random projections of an RM layer (constants, not parameters).
#[derive(Debug, Clone)]
pub struct RandomMaclaurin<B: Backend> {
    /// `[d, C]`.
    w1: Tensor<B, 2>,
    /// `[d, C]`.
    w2: Tensor<B, 2>,
}

fn rademacher(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut g = SplitMix64::new(seed);
    (0..rows * cols).map(|_| if g.coin() { 1.0 } else { -1.0 }).collect()
}

impl<B: Backend> RandomMaclaurin<B> {
    /// Projections from `c` channels to `d` dimensions, drawn from `seed`.
    pub fn new(c: usize, d: usize, seed: u64, device: &B::Device) -> Self {
        let w1 = Tensor::from_data(TensorData::new(rademacher(d, c, seed), [d, c]), device);
        let w2 = Tensor::from_data(TensorData::new(rademacher(d, c, seed ^ 0x5151_5151), [d, c]), device);
        RandomMaclaurin { w1, w2 }
    }

    /// The RM feature of single vectors (for the kernel-approximation property).
    ///
    /// # Shapes
    /// `[N, C]` to `[N, d]`.
    pub fn features(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let d = self.w1.dims()[0];
        x.clone().matmul(self.w1.clone().transpose()) * x.matmul(self.w2.clone().transpose()) / (d as f32).sqrt()
    }

    /// Sum over locations of the RM features (before normalisation).
    ///
    /// # Shapes
    /// `[B, C, h, w]` to `[B, d]`.
    ///
    /// Computed as `y_k = w₁ₖᵀ G w₂ₖ / √d` with the Gram matrix `G = Σ_m x_m x_mᵀ` (the same
    /// value as `Σ_m (w₁ₖ · x_m)(w₂ₖ · x_m) / √d`, regrouped): `d C²` multiply-adds per image
    /// after the Gram product instead of `2 d C M` for the two projections of every location,
    /// a third of the work at the paper's `M = 784`, forward and backward.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let d = self.w1.dims()[0];
        let x = descriptors(x); // [B, C, M]
        let [b, c, _] = x.dims();
        let g = fgia_nn::kernels::gram(x, 1.0); // [B, C, C], symmetric
        // W₁ [G_1 … G_B]: one product for the whole batch.
        let t = self.w1.clone().matmul(g.swap_dims(0, 1).reshape([c, b * c])).reshape([d, b, c]); // [d, B, C]
        // y[k, b] = Σ_c T[k, b, c] W₂[k, c]: d small products, no broadcast copy.
        let y = t.matmul(self.w2.clone().reshape([d, c, 1])).reshape([d, b]); // [d, B]
        y.transpose() / (d as f32).sqrt()
    }
}
