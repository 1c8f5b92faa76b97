//! Grouped bilinear pooling (the deep bilinear transformation of DBTNet).
//!
//! Zheng, Fu, Zha and Luo, "Learning Deep Bilinear Transformation for Fine-grained Image
//! Representation", NeurIPS 2019, §3. A 1x1 "semantic grouping" layer maps the `C` channels to
//! `G` groups of `c` channels; within each group the bilinear feature of a location is the outer
//! product `x_g x_gᵀ` (eq. 3), and the inter-group aggregation sums the groups (eq. 4), giving `c²`
//! values per location instead of `C²`. The semantic grouping constraint (eq. 2) makes channels
//! of one group correlate and channels of different groups not:
//!
//! `L_g = Σ_g [ −Σ_{i,j ∈ g} d_ij + Σ_{i ∈ g, j ∉ g} d_ij ]` with `d_ij` the cosine correlation of
//! channels `i` and `j` over locations (normalised here by the pair counts so that the two terms
//! are on one scale). Deviation, recorded: the authors' released loss is different, a squared
//! error between the uncentred cosine similarity of the channels (after ReLU) and a
//! block-diagonal target (1 within a group, 0 across); this file implements the paper's eq. 2
//! form above.
//!
//! DBTNet inserts the transformation in every block of a ResNet and pools the last one; here it
//! is a pooling layer on the given map (sum over locations, signed square root, ℓ2), the form
//! the survey groups with the other high-order poolings: a recorded deviation.
//!
//! Recipe: `recipes/table2/grouped-bilinear.toml` (`cargo xtask reproduce table2 --smoke --methods grouped-bilinear`).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;

use super::{descriptors, pointwise, sqrt_l2};

/// The grouping layer and sizes.
#[derive(Module, Debug)]
pub struct GroupedBilinear<B: Backend> {
    /// Semantic grouping 1x1 convolution `C → G c`.
    pub grouping: Conv2d<B>,
    /// Groups `G`.
    pub groups: usize,
    /// Channels per group `c`.
    pub group_channels: usize,
}

impl<B: Backend> GroupedBilinear<B> {
    /// `channels` in, `groups` groups of `group_channels`.
    pub fn new(channels: usize, groups: usize, group_channels: usize, device: &B::Device) -> Self {
        GroupedBilinear { grouping: Conv2dConfig::new([channels, groups * group_channels], [1, 1]).init(device), groups, group_channels }
    }

    /// Output size `c²`.
    pub fn output_dim(&self) -> usize {
        self.group_channels * self.group_channels
    }

    /// The grouped map `[B, G c, h, w]`.
    pub fn group(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        pointwise(&self.grouping, x)
    }

    /// Pooled descriptor of a grouped map.
    ///
    /// # Shapes
    /// `[B, G c, h, w]` to `[B, c²]`.
    pub fn pool(&self, grouped: Tensor<B, 4>) -> Tensor<B, 2> {
        let [b, _, h, w] = grouped.dims();
        let (g, c) = (self.groups, self.group_channels);
        let x = grouped.reshape([b * g, c, h * w]); // [B G, c, M]
        let outer = fgia_nn::kernels::gram(x, 1.0 / (h * w) as f32); // [B G, c, c]
        let summed = outer.reshape([b, g, c * c]).sum_dim(1).reshape([b, c * c]);
        sqrt_l2(summed, super::bcnn::EPS)
    }

    /// The semantic grouping loss of a grouped map (a scalar).
    pub fn grouping_loss(&self, grouped: Tensor<B, 4>) -> Tensor<B, 1> {
        let [b, gc, _, _] = grouped.dims();
        let (g, c) = (self.groups, self.group_channels);
        let x = descriptors(grouped); // [B, G c, M]
        let x = x.clone() - x.mean_dim(2);
        let norm = x.clone().powi_scalar(2).sum_dim(2).add_scalar(1e-8).sqrt(); // [B, G c, 1]
        let x = x / norm;
        let corr = x.clone().matmul(x.swap_dims(1, 2)); // [B, G c, G c]
        let mut same = vec![0f32; gc * gc];
        for i in 0..gc {
            for j in 0..gc {
                if i != j && i / c == j / c {
                    same[i * gc + j] = 1.0;
                }
            }
        }
        let device = corr.device();
        let same = Tensor::<B, 2>::from_data(TensorData::new(same, [gc, gc]), &device).unsqueeze::<3>();
        let eye = Tensor::<B, 2>::eye(gc, &device).unsqueeze::<3>();
        let diff = Tensor::<B, 3>::ones([1, gc, gc], &device) - same.clone() - eye;
        let n_same = (g * c * (c - 1)).max(1) as f32;
        let n_diff = (gc * gc - g * c * c).max(1) as f32;
        let within = (corr.clone() * same).sum() / (n_same * b as f32);
        let across = (corr * diff).sum() / (n_diff * b as f32);
        across - within
    }
}
