//! DCL: destruction and construction learning.
//!
//! Chen, Bai, Zhang and Mei, "Destruction and Construction Learning for Fine-grained Image
//! Recognition", CVPR 2019, §3.
//! - Destruction (§3.1): the image is split into `N x N` regions and shuffled locally: in each
//!   row the regions move by `q_j = j + r`, `r ~ U(−k, k)`, `σ = argsort(q)`, then the same in
//!   each column, so a region stays within about `k` of its place. The classifier sees both the
//!   original and the destructed image with the same label (eq. 2), and an adversarial branch
//!   learns to tell them apart (a two-way classifier on the pooled feature, eq. 3), so the
//!   noise patterns of shuffling are not rewarded.
//! - Construction (§3.2): a region-alignment branch, a 1x1 convolution to one channel on the
//!   last map, average pooled to `N x N` and `tanh`, regresses each region's original position,
//!   normalised as `(index − ⌊N²/2⌋) / N²` (as the authors' code does), with an ℓ1 loss (eq. 5).
//!
//! `L = L_cls + α L_adv + β L_loc` with `α = β = 1`. Shuffling follows the paper's §3.1 formula
//! (the authors' code shuffles with a sliding window instead); `k` and `N` are recipe
//! parameters (the recipes use `N = 7` and `k = 2`). The shuffled view of each cached training
//! image is drawn once per view from `(seed, image, view)`; the backbone's last stage is
//! fine-tuned on the original and destructed maps.
//!
//! Recipe: `recipes/table2/dcl.toml` (`cargo xtask reproduce table2 --smoke --methods dcl`).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::module::avg_pool2d;
use fgia_core::rng::SplitMix64;
use fgia_nn::Network;

use super::{Head, Inputs, LastStage, StepOutput, cross_entropy, gap};
use crate::pooling::pointwise;

fn local_order(n: usize, k: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let q: Vec<f64> = (0..n).map(|j| j as f64 + (rng.next_f64() * 2.0 - 1.0) * k as f64).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| q[a].total_cmp(&q[b]).then(a.cmp(&b)));
    order
}

/// The region permutation of an `n x n` grid: `perm[p]` is the original index of the region
/// shown at position `p` (row-major). Deterministic in the generator.
pub fn region_permutation(n: usize, k: usize, rng: &mut SplitMix64) -> Vec<usize> {
    // Rows first: position (i, j) takes (i, π_i[j]).
    let rows: Vec<Vec<usize>> = (0..n).map(|_| local_order(n, k, rng)).collect();
    // Then columns: position (i, j) takes what was at (ρ_j[i], j).
    let cols: Vec<Vec<usize>> = (0..n).map(|_| local_order(n, k, rng)).collect();
    let mut perm = vec![0; n * n];
    for i in 0..n {
        for j in 0..n {
            let src_row = cols[j][i];
            perm[i * n + j] = src_row * n + rows[src_row][j];
        }
    }
    perm
}

/// The generator of image `index`'s destruction in view `view`.
pub fn destruction_rng(seed: u64, index: usize, view: u64) -> SplitMix64 {
    SplitMix64::for_item(seed ^ 0xdc1_de57, view, index as u64)
}

/// Normalised original positions of the regions, `(perm[p] − ⌊n²/2⌋) / n²`.
pub fn location_law(perm: &[usize]) -> Vec<f32> {
    let nn = perm.len();
    perm.iter().map(|&o| (o as f32 - (nn / 2) as f32) / nn as f32).collect()
}

/// Fine-tuned last stage with the classification, adversarial and alignment branches.
#[derive(Module, Debug)]
pub struct DclHead<B: Backend> {
    /// The backbone's last stage.
    pub last: LastStage<B>,
    /// Classifier.
    pub cls: Linear<B>,
    /// Original-versus-destructed classifier.
    pub adv: Linear<B>,
    /// Region-alignment 1x1 convolution.
    pub align: Conv2d<B>,
    /// Regions per side.
    pub regions: usize,
}

impl<B: Backend> DclHead<B> {
    /// On the last stage `stage` of `net` (output `channels` channels), `regions` per side.
    pub fn new(net: Network<B>, stage: usize, channels: usize, classes: usize, regions: usize, device: &B::Device) -> Self {
        DclHead {
            last: LastStage { net, stage },
            cls: LinearConfig::new(channels, classes).init(device),
            adv: LinearConfig::new(channels, 2).init(device),
            align: Conv2dConfig::new([channels, 1], [1, 1]).init(device),
            regions,
        }
    }

    fn alignment(&self, f: Tensor<B, 4>) -> Tensor<B, 2> {
        let a = pointwise(&self.align, f); // [B, 1, h, w]
        let [b, _, h, _] = a.dims();
        let n = self.regions;
        let a = if h == n { a } else { avg_pool2d(a, [h / n, h / n], [h / n, h / n], [0, 0], true, false) };
        a.reshape([b, n * n]).tanh()
    }
}

impl<B: Backend> Head<B> for DclHead<B> {
    fn loss(&self, x: &Inputs<B>, _step: usize) -> StepOutput<B> {
        let n = x.len();
        let device = x.tap(self.last.stage - 1).device();
        let f_o = self.last.of(x);
        let f_d = self.last.forward(x.edited_tap(0, self.last.stage - 1));
        let (p_o, p_d) = (gap(f_o.clone()), gap(f_d.clone()));
        let logits = self.cls.forward(p_o.clone());
        let cls = cross_entropy(logits.clone(), &x.labels) + cross_entropy(self.cls.forward(p_d.clone()), &x.labels);
        let adv_labels: Vec<usize> = (0..2 * n).map(|i| usize::from(i >= n)).collect();
        let adv = cross_entropy(self.adv.forward(Tensor::cat(vec![p_o, p_d], 0)), &adv_labels);
        let nn = self.regions * self.regions;
        let identity: Vec<usize> = (0..nn).collect();
        let mut law = Vec::with_capacity(2 * n * nn);
        for _ in 0..n {
            law.extend(location_law(&identity));
        }
        for perm in &x.permutations {
            law.extend(location_law(perm));
        }
        let law = Tensor::<B, 2>::from_data(TensorData::new(law, [2 * n, nn]), &device);
        let pred = Tensor::cat(vec![self.alignment(f_o), self.alignment(f_d)], 0);
        let loc = (pred - law).abs().mean();
        StepOutput { loss: cls + adv + loc, logits }
    }

    fn logits(&self, x: &Inputs<B>) -> Tensor<B, 2> {
        self.cls.forward(gap(self.last.of(x)))
    }

    fn backbone(&self) -> Option<&Network<B>> {
        Some(&self.last.net)
    }
}
