//! LRBP: low-rank bilinear pooling (a bilinear classifier with low-rank class weights).
//!
//! Kong and Fowlkes, "Low-rank Bilinear Pooling for Fine-Grained Classification", CVPR 2017,
//! §3-4. A linear classifier on the bilinear feature `X Xᵀ / M` has one `C x C` weight matrix
//! per class; LRBP writes it as `W_k = U_k U_kᵀ − V_k V_kᵀ` with `U_k, V_k ∈ R^{C x r}` and
//! scores without ever forming `X Xᵀ`:
//!
//! `y_k = tr(W_kᵀ X Xᵀ) / M = (‖U_kᵀ X‖²_F − ‖V_kᵀ X‖²_F) / M`   (eq. 6-8)
//!
//! The paper first reduces the channels with a learned 1x1 projection (512 → 100) shared by the
//! classes and uses rank `r = 8`; the projection is the caller's [`super::isqrt_cov::Reduction`]
//! or any 1x1 convolution. A per-class bias is added. `U` and `V` are initialised from
//! `N(0, 0.01)` here (the paper initialises them from the eigenvectors of a trained full
//! bilinear classifier, which needs that classifier first: a recorded deviation).
//!
//! Recipe: `recipes/table2/lrbp.toml` (`cargo xtask reproduce table2 --smoke --methods lrbp`).

use burn::module::Param;
use burn::prelude::*;

use super::descriptors;

/// The low-rank bilinear classifier.
#[derive(Module, Debug)]
pub struct LowRankBilinear<B: Backend> {
    /// `U` of all classes, `[K r, C]` (rows `k r .. (k + 1) r` belong to class `k`).
    pub u: Param<Tensor<B, 2>>,
    /// `V` of all classes, `[K r, C]`.
    pub v: Param<Tensor<B, 2>>,
    /// Per-class bias `[K]`.
    pub bias: Param<Tensor<B, 1>>,
    /// Classes.
    pub classes: usize,
    /// Rank.
    pub rank: usize,
}

impl<B: Backend> LowRankBilinear<B> {
    /// A classifier for `classes` classes on `channels` channels with rank `rank`.
    pub fn new(channels: usize, classes: usize, rank: usize, device: &B::Device) -> Self {
        let init = || Param::from_tensor(Tensor::random([classes * rank, channels], burn::tensor::Distribution::Normal(0.0, 0.01), device));
        LowRankBilinear { u: init(), v: init(), bias: Param::from_tensor(Tensor::zeros([classes], device)), classes, rank }
    }

    /// A classifier with given weights (`u`, `v`: `[K r, C]`).
    pub fn from_weights(u: Tensor<B, 2>, v: Tensor<B, 2>, bias: Tensor<B, 1>, rank: usize) -> Self {
        let classes = bias.dims()[0];
        LowRankBilinear { u: Param::from_tensor(u), v: Param::from_tensor(v), bias: Param::from_tensor(bias), classes, rank }
    }

    /// Class scores.
    ///
    /// # Shapes
    /// `[B, C, h, w]` to `[B, K]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let [b, c, h, w] = x.dims();
        let m = h * w;
        let cols = descriptors(x).swap_dims(0, 1).reshape([c, b * m]); // [C, B M]
        let energy = |p: &Param<Tensor<B, 2>>| -> Tensor<B, 2> {
            let z = p.val().matmul(cols.clone()); // [K r, B M]
            z.powi_scalar(2).reshape([self.classes, self.rank, b, m]).sum_dim(3).sum_dim(1).reshape([self.classes, b]) // [K, B]
        };
        ((energy(&self.u) - energy(&self.v)) / m as f32).transpose() + self.bias.val().unsqueeze::<2>()
    }
}
