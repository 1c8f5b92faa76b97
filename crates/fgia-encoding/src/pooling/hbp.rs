//! HBP: hierarchical bilinear pooling across layers.
//!
//! Yu, Zhao, Zheng, Zhang and You, "Hierarchical Bilinear Pooling for Fine-Grained Visual
//! Recognition", ECCV 2018, §3. Each of three same-resolution layers `x, y, z` is projected to
//! `d` dimensions by a 1x1 convolution (`Uᵀx`, `Vᵀy`, `Sᵀz`); each cross-layer pair gives a
//! factorised bilinear feature, the Hadamard product of the projections summed over locations,
//! `z_xy = Σ_m Uᵀx_m ∘ Vᵀy_m` (eq. 4-5). Each is signed-square-rooted and ℓ2-normalised, the three
//! are concatenated (eq. 8), and a linear classifier follows. The paper uses `relu5_1`, `relu5_2`,
//! `relu5_3` of VGG-16 and `d = 8192`; here the layers are the caller's and `d` is a parameter.
//! Layers of different resolutions (whole backbone stages, as our stage granularity gives) are
//! average-pooled to the smallest one after projection: a deviation where they differ.
//!
//! Recipe: `recipes/table2/hbp.toml` (`cargo xtask reproduce table2 --smoke --methods hbp`).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::module::avg_pool2d;

use super::{pointwise, sqrt_l2};

/// The projections of HBP.
#[derive(Module, Debug)]
pub struct HierarchicalBilinear<B: Backend> {
    /// One 1x1 projection per layer.
    pub projections: Vec<Conv2d<B>>,
}

impl<B: Backend> HierarchicalBilinear<B> {
    /// Projections of layers with `channels[i]` channels to `dim`.
    pub fn new(channels: &[usize], dim: usize, device: &B::Device) -> Self {
        HierarchicalBilinear { projections: channels.iter().map(|&c| Conv2dConfig::new([c, dim], [1, 1]).init(device)).collect() }
    }

    /// Output size: one `d` block per pair of layers.
    pub fn output_dim(&self) -> usize {
        let n = self.projections.len();
        let d = self.projections.first().map_or(0, |p| p.weight.dims()[0]);
        n * (n - 1) / 2 * d
    }

    /// # Shapes
    /// Maps `[B, C_i, h, w]` (same `h, w`) to `[B, pairs d]`.
    pub fn forward(&self, layers: Vec<Tensor<B, 4>>) -> Tensor<B, 2> {
        assert_eq!(layers.len(), self.projections.len(), "HBP: one map per projection");
        let proj: Vec<Tensor<B, 4>> = layers.into_iter().zip(&self.projections).map(|(x, p)| pointwise(p, x)).collect();
        let side = proj.iter().map(|p| p.dims()[2]).min().unwrap_or(1);
        let proj: Vec<Tensor<B, 4>> = proj
            .into_iter()
            .map(|p| {
                let h = p.dims()[2];
                if h == side { p } else { avg_pool2d(p, [h / side, h / side], [h / side, h / side], [0, 0], true, false) }
            })
            .collect();
        let mut parts = Vec::new();
        for i in 0..proj.len() {
            for j in i + 1..proj.len() {
                let [b, d, _, _] = proj[i].dims();
                let z = (proj[i].clone() * proj[j].clone()).sum_dim(3).sum_dim(2).reshape([b, d]);
                parts.push(sqrt_l2(z, super::bcnn::EPS));
            }
        }
        Tensor::cat(parts, 1)
    }
}
