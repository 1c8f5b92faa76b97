//! B-CNN: bilinear pooling.
//!
//! Lin, RoyChowdhury and Maji, "Bilinear CNN Models for Fine-grained Visual Recognition",
//! ICCV 2015, §3: the outer products of the descriptors averaged over locations,
//! `G = (1/M) Σ_m x_m x_mᵀ = X Xᵀ / M`, vectorised, then the signed square root
//! `y = sign(z) √|z|` and ℓ2 normalisation (§3.1). This is the symmetric B-CNN (both streams the
//! same network, "VGG-D + VGG-D"); `ε = 1e-10` inside the square root keeps its gradient finite
//! at zero.
//!
//! Recipe: `recipes/table2/bcnn.toml` (`cargo xtask reproduce table2 --smoke --methods bcnn`).

use burn::prelude::*;

use super::{descriptors, sqrt_l2};

/// ε of the signed square root.
pub const EPS: f64 = 1e-10;

/// # Shapes
/// `[B, C, h, w]` to `[B, C²]`, unit length.
pub fn bilinear_pool<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [b, c, h, w] = x.dims();
    let x = descriptors(x); // [B, C, M]
    let g = fgia_nn::kernels::gram(x, 1.0 / (h * w) as f32); // [B, C, C]
    sqrt_l2(g.reshape([b, c * c]), EPS)
}
