//! CIN: channel interaction network.
//!
//! Gao, Han, Wang and Gao, "Channel Interaction Networks for Fine-Grained Image
//! Categorization", AAAI 2020, §3.
//! - Self-channel interaction (SCI, eq. 1-3): with the map `X ∈ R^{C×M}`, the channel similarity
//!   `W = X Xᵀ` is turned into interaction weights `W' = softmax(max(W) − W)` (row-wise maximum,
//!   row-wise softmax: a channel draws on the channels *least* similar to it), `Y = W' X`, and
//!   the output `Z = φ(Y) + X` with `φ` a 3x3 convolution; the classifier reads `GAP(Z)`.
//! - Contrastive channel interaction (CCI, eq. 4-6): for a pair of images, `W_ij = |W'_i − W'_j|`
//!   re-weights both maps, `Y'_i = W_ij X_i`, `Y'_j = W_ij X_j`; their pooled, projected
//!   (`FC → 512`, ℓ2) features get a contrastive loss, `‖f_i − f_j‖²` for the same class and
//!   `max(0, β − ‖f_i − f_j‖)²` otherwise.
//!
//! `L = CE + λ L_cont`. Pairs: each image with one random other image of its class and one of
//! another class in a class-balanced batch (the paper samples pairs within the batch; it does
//! not fix the scheme). `λ` and `β` are recipe parameters (the recipes use 1 and 0.5). CCI is a
//! training-time loss only, as in the paper.
//!
//! Recipe: `recipes/table2/cin.toml` (`cargo xtask reproduce table2 --smoke --methods cin`).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::softmax;

use super::{Head, Inputs, StepOutput, cross_entropy, gap};
use crate::pooling::descriptors;

/// SCI interaction weights `W' = softmax(max(W) − W)` of maps `[B, C, M]`: `[B, C, C]`.
pub fn sci_weights<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    let w = x.clone().matmul(x.swap_dims(1, 2)); // [B, C, C]
    let mx = w.clone().max_dim(2); // [B, C, 1]
    softmax(mx - w, 2)
}

/// SCI module, classifier and CCI projection.
#[derive(Module, Debug)]
pub struct CinHead<B: Backend> {
    /// `φ`, 3x3.
    pub phi: Conv2d<B>,
    /// Classifier.
    pub fc: Linear<B>,
    /// CCI projection to 512.
    pub proj: Linear<B>,
    /// Stage whose map is used.
    pub stage: usize,
    /// `λ`.
    pub lambda: f64,
    /// `β`.
    pub beta: f64,
}

impl<B: Backend> CinHead<B> {
    /// For `channels` channels and `classes` classes.
    pub fn new(stage: usize, channels: usize, classes: usize, lambda: f64, beta: f64, device: &B::Device) -> Self {
        CinHead {
            phi: Conv2dConfig::new([channels, channels], [3, 3]).with_padding(PaddingConfig2d::Same).init(device),
            fc: LinearConfig::new(channels, classes).init(device),
            proj: LinearConfig::new(channels, 512).init(device),
            stage,
            lambda,
            beta,
        }
    }

    fn sci(&self, map: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 3>) {
        let [b, c, h, w] = map.dims();
        let x = descriptors(map.clone());
        let wts = sci_weights(x.clone());
        let y = wts.clone().matmul(x).reshape([b, c, h, w]);
        (self.phi.forward(y) + map, wts)
    }
}

impl<B: Backend> Head<B> for CinHead<B> {
    fn loss(&self, x: &Inputs<B>, _step: usize) -> StepOutput<B> {
        let map = x.tap(self.stage);
        let [n, c, h, w] = map.dims();
        let device = map.device();
        let (z, wts) = self.sci(map.clone());
        let logits = self.fc.forward(gap(z));
        let ce = cross_entropy(logits.clone(), &x.labels);
        // CCI pairs.
        let mut rng = x.rng(2);
        let (mut a, mut bb, mut same) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            for want_same in [true, false] {
                let cands: Vec<usize> = (0..n).filter(|&j| j != i && (x.labels[j] == x.labels[i]) == want_same).collect();
                if !cands.is_empty() {
                    a.push(i as i64);
                    bb.push(cands[rng.below(cands.len() as u64) as usize] as i64);
                    same.push(if want_same { 1.0f32 } else { 0.0 });
                }
            }
        }
        if a.is_empty() {
            return StepOutput { loss: ce, logits };
        }
        let p = a.len();
        let ia = Tensor::<B, 1, Int>::from_data(TensorData::new(a, [p]), &device);
        let ib = Tensor::<B, 1, Int>::from_data(TensorData::new(bb, [p]), &device);
        let xd = descriptors(map); // [B, C, M]
        let wij = (wts.clone().select(0, ia.clone()) - wts.select(0, ib.clone())).abs(); // [P, C, C]
        let yi = wij.clone().matmul(xd.clone().select(0, ia)).reshape([p, c, h, w]);
        let yj = wij.matmul(xd.select(0, ib)).reshape([p, c, h, w]);
        let f = |y: Tensor<B, 4>| fgia_nn::ops::l2_normalize(self.proj.forward(gap(y)), 1e-12);
        let d2 = (f(yi) - f(yj)).powi_scalar(2).sum_dim(1).reshape([p]); // [P]
        let same = Tensor::<B, 1>::from_data(TensorData::new(same, [p]), &device);
        let dist = d2.clone().add_scalar(1e-12).sqrt();
        let neg = dist.neg().add_scalar(self.beta).clamp_min(0.0).powi_scalar(2);
        let cont = (same.clone() * d2 + same.neg().add_scalar(1.0) * neg).mean();
        StepOutput { loss: ce + cont * self.lambda, logits }
    }

    fn logits(&self, x: &Inputs<B>) -> Tensor<B, 2> {
        self.fc.forward(gap(self.sci(x.tap(self.stage)).0))
    }
}
