//! Gradient-boosting loss with the diversification block (Sun et al.).
//!
//! Sun, Yuan, Zhou and Ding, "Fine-Grained Recognition: Accounting for Subtle Differences
//! between Similar Classes", AAAI 2020, §3.
//! - Diversification block (DB, §3.1): the classifier is a 1x1 convolution giving one
//!   activation map `A_c` per class; class scores are the global average of the maps. During
//!   training each map is multiplied by a suppression mask: *peak suppression* zeroes the
//!   location of the map's maximum with probability `p_peak`, and *patch suppression* splits the
//!   map into a `G x G` grid and zeroes each patch not containing the peak with probability
//!   `p_patch`, so the network has to find more than the single most discriminative region. No
//!   suppression at test time.
//! - Gradient-boosting loss (§3.2, eq. 6): the softmax is restricted to the true class and the
//!   `k` highest-scoring negative classes,
//!   `L_gb = −log( e^{s_y} / (e^{s_y} + Σ_{j ∈ J_k} e^{s_j}) )`,
//!   so the gradient concentrates on the confusing classes.
//!
//! `p_peak`, `p_patch`, `G` and `k` are recipe parameters (the recipes use 0.5, 0.5, 3 and 15;
//! the paper tunes them). The block acts on the backbone's last feature map.
//!
//! Recipe: `recipes/table2/gb-loss.toml` (`cargo xtask reproduce table2 --smoke --methods gb-loss`).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use fgia_core::rng::SplitMix64;

use super::{Head, Inputs, StepOutput, gap};
use crate::pooling::pointwise;

/// The gradient-boosting loss of scores `[B, K]` with the `k` hardest negatives.
pub fn gb_loss<B: Backend>(scores: Tensor<B, 2>, labels: &[usize], k: usize) -> Tensor<B, 1> {
    let [b, classes] = scores.dims();
    let device = scores.device();
    let values: Vec<f32> = scores.clone().into_data().convert::<f32>().to_vec().unwrap_or_default();
    // Mask of the classes kept per row: the true one and the k largest others.
    let k = k.min(classes - 1);
    let mut keep = vec![0f32; b * classes];
    for (i, &y) in labels.iter().enumerate() {
        let row = &values[i * classes..(i + 1) * classes];
        let mut neg: Vec<usize> = (0..classes).filter(|&j| j != y).collect();
        neg.sort_by(|&p, &q| row[q].total_cmp(&row[p]).then(p.cmp(&q)));
        keep[i * classes + y] = 1.0;
        for &j in neg.iter().take(k) {
            keep[i * classes + j] = 1.0;
        }
    }
    let keep = Tensor::<B, 2>::from_data(TensorData::new(keep, [b, classes]), &device);
    // Masked log-sum-exp, stabilised by the row maximum.
    let mx = scores.clone().detach().max_dim(1); // [B, 1]
    let shifted = scores - mx;
    let lse = (shifted.clone().exp() * keep).sum_dim(1).log(); // [B, 1]
    let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [b, 1]), &device);
    (lse - shifted.gather(1, idx)).mean()
}

/// The DB suppression masks `[B, K, h, w]` for activation maps of that shape (values of the maps
/// decide the peaks).
pub fn suppression_mask(maps: &[f32], shape: [usize; 4], p_peak: f64, p_patch: f64, grid: usize, rng: &mut SplitMix64) -> Vec<f32> {
    let [b, k, h, w] = shape;
    let m = h * w;
    let mut mask = vec![1f32; b * k * m];
    for map in 0..b * k {
        let a = &maps[map * m..(map + 1) * m];
        let peak = (0..m).max_by(|&p, &q| a[p].total_cmp(&a[q]).then(q.cmp(&p))).unwrap_or(0);
        let out = &mut mask[map * m..(map + 1) * m];
        if rng.next_f64() < p_peak {
            out[peak] = 0.0;
        }
        let g = grid.max(1);
        let cell = |y: usize, x: usize| (y * g / h, x * g / w);
        let peak_cell = cell(peak / w, peak % w);
        for gy in 0..g {
            for gx in 0..g {
                if (gy, gx) == peak_cell || rng.next_f64() >= p_patch {
                    continue;
                }
                for y in 0..h {
                    for x in 0..w {
                        if cell(y, x) == (gy, gx) {
                            out[y * w + x] = 0.0;
                        }
                    }
                }
            }
        }
    }
    mask
}

/// Class activation maps with the diversification block, trained with the GB loss.
#[derive(Module, Debug)]
pub struct GbLossHead<B: Backend> {
    /// 1x1 convolution to one map per class.
    pub cam: Conv2d<B>,
    /// Stage whose map is used.
    pub stage: usize,
    /// Hardest negatives kept.
    pub k: usize,
    /// Peak suppression probability.
    pub p_peak: f64,
    /// Patch suppression probability.
    pub p_patch: f64,
    /// Patch grid side.
    pub grid: usize,
}

impl<B: Backend> GbLossHead<B> {
    /// For `channels` channels and `classes` classes.
    #[allow(clippy::too_many_arguments)]
    pub fn new(stage: usize, channels: usize, classes: usize, k: usize, p_peak: f64, p_patch: f64, grid: usize, device: &B::Device) -> Self {
        GbLossHead { cam: Conv2dConfig::new([channels, classes], [1, 1]).init(device), stage, k, p_peak, p_patch, grid }
    }
}

impl<B: Backend> Head<B> for GbLossHead<B> {
    fn loss(&self, x: &Inputs<B>, _step: usize) -> StepOutput<B> {
        let maps = pointwise(&self.cam, x.tap(self.stage)); // [B, K, h, w]
        let shape = maps.dims();
        let values: Vec<f32> = maps.clone().detach().into_data().convert::<f32>().to_vec().unwrap_or_default();
        let mask = suppression_mask(&values, shape, self.p_peak, self.p_patch, self.grid, &mut x.rng(3));
        let mask = Tensor::<B, 4>::from_data(TensorData::new(mask, shape), &maps.device());
        let scores = gap(maps.clone() * mask);
        StepOutput { loss: gb_loss(scores, &x.labels, self.k), logits: gap(maps) }
    }

    fn logits(&self, x: &Inputs<B>) -> Tensor<B, 2> {
        gap(pointwise(&self.cam, x.tap(self.stage)))
    }
}
