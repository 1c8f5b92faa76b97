//! MC-Loss: the mutual-channel loss.
//!
//! Chang, Liang, Ma, Xie, Zhang, Song and Guo, "The Devil is in the Channels: Mutual-Channel Loss
//! for Fine-Grained Image Classification", TIP 2020, §III. The last feature map has `ξ` channels
//! per class (`K ξ` in all). Two terms act on each class's group of channels:
//! - discriminality `L_dis` (eq. 4-6): a random channel mask keeps `⌈ξ/2⌉` channels of each group
//!   (channel-wise attention, training only), cross-channel max pooling (CCMP) takes the maximum
//!   over the group at each location, global average pooling gives one score per class, and the
//!   scores get the cross-entropy;
//! - diversity `L_div` (eq. 7-8): each channel's map is softmax-normalised over locations, CCMP
//!   takes the maximum over the group, the sum over locations measures how spread the group's
//!   peaks are, averaged over classes and divided by `ξ`; the loss uses `1 − that` as in the
//!   authors' code, so minimising it makes the channels of a class look at different places.
//!
//! `L = CE(classifier) + μ L_dis + λ (1 − L_div)` with `ξ = 3`, `μ = 2` and `λ = 20`, the defaults
//! of the authors' CUB-200-2011 script, which also draws one channel mask per batch (shared by
//! its images), as here.
//!
//! Deviations: the `K ξ`-channel map is a new 1x1 convolution with ReLU on the backbone's last
//! stage (the authors widen VGG-16's last convolutions to 600 channels), and the classifier is a
//! linear layer on the globally average-pooled map (theirs: 2x2 max pooling, flattening, and a
//! BN-Linear-BN-ELU-Linear head).
//!
//! Recipe: `recipes/table2/mc-loss.toml` (`cargo xtask reproduce table2 --smoke --methods mc-loss`).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, softmax};
use fgia_nn::Network;

use super::{Head, Inputs, LastStage, StepOutput, cross_entropy, gap};
use crate::pooling::pointwise;

/// The two MC terms `(L_dis, 1 − L_div)` of a `[B, K ξ, h, w]` map (`mask`: 0/1 per channel,
/// `[1, K ξ]` shared by the batch or `[B, K ξ]`; `None` at full attention).
pub fn mc_terms<B: Backend>(features: Tensor<B, 4>, labels: &[usize], xi: usize, mask: Option<Tensor<B, 2>>) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let [b, kx, h, w] = features.dims();
    let k = kx / xi;
    let m = h * w;
    // Diversity: softmax over locations, CCMP, sum over locations.
    let spread = softmax(features.clone().reshape([b, kx, m]), 2).reshape([b, k, xi, m]).max_dim(2).reshape([b, k, m]).sum_dim(2); // [B, K, 1]
    let div = spread.mean().div_scalar(xi as f32).neg().add_scalar(1.0);
    // Discriminality: mask, CCMP, GAP, cross-entropy.
    let masked = match mask {
        Some(mk) => {
            let rows = mk.dims()[0];
            features * mk.reshape([rows, kx, 1, 1])
        }
        None => features,
    };
    let scores = masked.reshape([b, k, xi, m]).max_dim(2).reshape([b, k, m]).mean_dim(2).reshape([b, k]);
    (cross_entropy(scores, labels), div)
}

/// The random channel mask: per class, `⌈ξ/2⌉` of the `ξ` channels kept.
pub fn channel_mask(classes: usize, xi: usize, rng: &mut fgia_core::rng::SplitMix64) -> Vec<f32> {
    let keep = xi.div_ceil(2);
    let mut out = Vec::with_capacity(classes * xi);
    for _ in 0..classes {
        let mut group: Vec<f32> = (0..xi).map(|j| if j < keep { 1.0 } else { 0.0 }).collect();
        rng.shuffle(&mut group);
        out.extend(group);
    }
    out
}

/// Fine-tuned last stage, `K ξ` map, classifier.
#[derive(Module, Debug)]
pub struct McLossHead<B: Backend> {
    /// The backbone's last stage.
    pub last: LastStage<B>,
    /// 1x1 convolution to `K ξ` channels.
    pub channels: Conv2d<B>,
    /// Classifier on the pooled `K ξ` map.
    pub fc: Linear<B>,
    /// Channels per class.
    pub xi: usize,
    /// Weight of `L_dis`.
    pub mu: f64,
    /// Weight of the diversity term.
    pub lambda: f64,
}

impl<B: Backend> McLossHead<B> {
    /// On the last stage `stage` of `net` (output `channels` channels).
    #[allow(clippy::too_many_arguments)]
    pub fn new(net: Network<B>, stage: usize, channels: usize, classes: usize, xi: usize, mu: f64, lambda: f64, device: &B::Device) -> Self {
        McLossHead {
            last: LastStage { net, stage },
            channels: Conv2dConfig::new([channels, classes * xi], [1, 1]).init(device),
            fc: LinearConfig::new(classes * xi, classes).init(device),
            xi,
            mu,
            lambda,
        }
    }

    fn features(&self, x: &Inputs<B>) -> Tensor<B, 4> {
        relu(pointwise(&self.channels, self.last.of(x)))
    }
}

impl<B: Backend> Head<B> for McLossHead<B> {
    fn loss(&self, x: &Inputs<B>, _step: usize) -> StepOutput<B> {
        let f = self.features(x);
        let kx = f.dims()[1];
        let mask = channel_mask(kx / self.xi, self.xi, &mut x.rng(1));
        let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [1, kx]), &f.device());
        let logits = self.fc.forward(gap(f.clone()));
        let (dis, div) = mc_terms(f, &x.labels, self.xi, Some(mask));
        let loss = cross_entropy(logits.clone(), &x.labels) + dis * self.mu + div * self.lambda;
        StepOutput { loss, logits }
    }

    fn logits(&self, x: &Inputs<B>) -> Tensor<B, 2> {
        self.fc.forward(gap(self.features(x)))
    }

    fn backbone(&self) -> Option<&Network<B>> {
        Some(&self.last.net)
    }
}
