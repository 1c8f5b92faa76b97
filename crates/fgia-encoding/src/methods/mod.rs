//! The Table 2 methods of §5.2: one file each, headed by the paper, its equations and the
//! deviations. Every method is a [`Head`]: the layers it trains on top of a backbone's cached
//! feature maps (and, for the methods whose idea needs the backbone in the loop, the backbone's
//! last stage), its training loss and its test-time scores.

pub mod api_net;
pub mod cin;
pub mod dcl;
pub mod gb_loss;
pub mod maxent;
pub mod mc_loss;
pub mod pairwise_confusion;
pub mod pmg;
pub mod pooling_heads;

use std::collections::BTreeMap;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use fgia_core::rng::SplitMix64;
use fgia_nn::Network;

use crate::Method;
use crate::recipe::Params;
use pooling_heads::{BcnnHead, CovarianceHead, GroupedBilinearHead, HbpHead, KernelPoolingHead, LrbpHead, RandomMaclaurinHead, TensorSketchHead};

/// One batch as a head sees it.
#[derive(Debug, Clone)]
pub struct Inputs<B: Backend> {
    /// Class labels (`0..K`).
    pub labels: Vec<usize>,
    /// Maps of the unedited view, by stage index.
    pub taps: BTreeMap<usize, Tensor<B, 4>>,
    /// Maps of edited views (DCL's destructed image, PMG's jigsaws), in the order of
    /// [`crate::Method::edits`], by stage index.
    pub edited: Vec<BTreeMap<usize, Tensor<B, 4>>>,
    /// DCL: the region permutation of each item's destructed view (`perm[p]` = original region
    /// at position `p`).
    pub permutations: Vec<Vec<usize>>,
    /// Seed of this batch's random draws (masks, suppression), from `(seed, epoch, batch)`.
    pub seed: u64,
}

impl<B: Backend> Inputs<B> {
    /// The map of stage `s` of the unedited view.
    ///
    /// # Panics
    /// If the stage was not cached (a method asked for taps it did not declare).
    pub fn tap(&self, s: usize) -> Tensor<B, 4> {
        self.taps.get(&s).unwrap_or_else(|| panic!("stage {s} was not cached (declared taps: {:?})", self.taps.keys())).clone()
    }

    /// The map of stage `s` of edited view `e`.
    pub fn edited_tap(&self, e: usize, s: usize) -> Tensor<B, 4> {
        self.edited[e].get(&s).unwrap_or_else(|| panic!("edited view {e} has no stage {s}")).clone()
    }

    /// A generator for this batch's draws, separate per purpose.
    pub fn rng(&self, purpose: u64) -> SplitMix64 {
        SplitMix64::for_item(self.seed, purpose, 0)
    }

    /// Batch size.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// What one training step gives back.
pub struct StepOutput<B: Backend> {
    /// The scalar loss to minimise.
    pub loss: Tensor<B, 1>,
    /// Class scores of the unedited view (for the training accuracy).
    pub logits: Tensor<B, 2>,
}

/// A method's trainable part.
pub trait Head<B: Backend>: Module<B> + burn::module::ModuleDisplay {
    /// Optimiser steps per batch (PMG's progressive steps; 1 for the others).
    fn steps(&self) -> usize {
        1
    }

    /// The loss of training step `step` on a batch.
    fn loss(&self, x: &Inputs<B>, step: usize) -> StepOutput<B>;

    /// Test-time class scores `[B, K]` of the unedited view.
    fn logits(&self, x: &Inputs<B>) -> Tensor<B, 2>;

    /// The backbone whose last stage this method fine-tunes (at a lower learning rate), if any.
    fn backbone(&self) -> Option<&Network<B>> {
        None
    }
}

/// The trainable last stage of a backbone: runs stage `stage` of `net` on the cached map of the
/// stage before it. The rest of `net` is never run, so it gets no gradient and stays as loaded.
#[derive(Module, Debug)]
pub struct LastStage<B: Backend> {
    /// The whole network (only stage `stage` is used).
    pub net: Network<B>,
    /// The stage that is fine-tuned.
    pub stage: usize,
}

impl<B: Backend> LastStage<B> {
    /// Runs the stage on the map of stage `stage − 1`.
    pub fn forward(&self, previous: Tensor<B, 4>) -> Tensor<B, 4> {
        self.net.forward_stage(self.stage, previous)
    }

    /// The stage's output for view `x` (unedited): `x.tap(stage − 1)` through the stage.
    pub fn of(&self, x: &Inputs<B>) -> Tensor<B, 4> {
        self.forward(x.tap(self.stage - 1))
    }
}

/// Moves the `n x n` square regions of an image `[3, s, s]` (regions of `⌊s/n⌋` pixels; a border
/// left by a side not divisible by `n` stays in place): position `p` (row-major) receives the
/// region `perm[p]` of the original. DCL's destruction and PMG's jigsaw both use it.
pub fn permute_regions(pixels: &mut [f32], s: usize, n: usize, perm: &[usize]) {
    let r = s / n;
    let src = pixels.to_vec();
    for ch in 0..3 {
        let plane = ch * s * s;
        for (p, &o) in perm.iter().enumerate() {
            let (pi, pj, oi, oj) = (p / n, p % n, o / n, o % n);
            for y in 0..r {
                let dst = plane + (pi * r + y) * s + pj * r;
                let from = plane + (oi * r + y) * s + oj * r;
                pixels[dst..dst + r].copy_from_slice(&src[from..from + r]);
            }
        }
    }
}

/// Exponential linear unit.
pub fn elu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone().clamp_min(0.0) + x.clamp_max(0.0).exp().sub_scalar(1.0)
}

/// Mean cross-entropy of logits `[B, K]` against labels.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: &[usize]) -> Tensor<B, 1> {
    let [b, _] = logits.dims();
    let device = logits.device();
    let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [b, 1]), &device);
    let picked = log_softmax(logits, 1).gather(1, idx); // [B, 1]
    picked.mean().neg()
}

/// Global average pooling `[B, C, h, w]` to `[B, C]`.
pub fn gap<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    fgia_nn::ops::global_avg_pool(x)
}

/// Global max pooling `[B, C, h, w]` to `[B, C]`.
pub fn gmp<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h * w]).max_dim(2).reshape([b, c])
}

/// What a head is built for.
#[derive(Debug, Clone)]
pub struct HeadSpec<'a> {
    /// The stage whose output is the last feature map.
    pub feature_stage: usize,
    /// Channels of every stage's output.
    pub channels: &'a [usize],
    /// Classes.
    pub classes: usize,
    /// The method's parameters.
    pub params: &'a Params,
    /// HBP's layers.
    pub hbp_stages: &'a [usize],
    /// Seed of fixed random projections.
    pub seed: u64,
    /// Kernel pooling's initial RBF scale.
    pub rbf_gamma: f64,
}

/// Receives the head [`build_head`] made (a head's type differs per method).
pub trait HeadVisitor<B: AutodiffBackend> {
    /// What the visit gives back.
    type Output;

    /// Uses the head.
    fn visit<M>(self, head: M) -> Self::Output
    where
        M: Head<B> + AutodiffModule<B>,
        M::InnerModule: Head<B::InnerBackend>;
}

/// The registry: builds `method`'s head for `spec` and hands it to `visitor`. `backbone` gives
/// the (pretrained) network for the methods that fine-tune its last stage.
pub fn build_head<B: AutodiffBackend, V: HeadVisitor<B>>(
    method: Method,
    spec: &HeadSpec<'_>,
    backbone: impl FnOnce() -> Network<B>,
    device: &B::Device,
    visitor: V,
) -> V::Output {
    let f = spec.feature_stage;
    let c = spec.channels[f];
    let k = spec.classes;
    let p = spec.params;
    match method {
        Method::Bcnn => visitor.visit(BcnnHead::new(f, c, k, device)),
        Method::CbpTs => visitor.visit(TensorSketchHead::new(f, c, p.count("dim"), k, spec.seed, device)),
        Method::CbpRm => visitor.visit(RandomMaclaurinHead::new(f, c, p.count("dim"), k, spec.seed, device)),
        Method::Lrbp => visitor.visit(LrbpHead::new(f, c, p.count("reduced"), p.count("rank"), k, device)),
        Method::Hbp => {
            let ch: Vec<usize> = spec.hbp_stages.iter().map(|&s| spec.channels[s]).collect();
            visitor.visit(HbpHead::new(spec.hbp_stages.to_vec(), &ch, p.count("dim"), k, device))
        }
        Method::KernelPooling => visitor.visit(KernelPoolingHead::new(f, c, p.count("dim"), p.count("order"), spec.rbf_gamma, k, spec.seed, device)),
        Method::MpnCov => visitor.visit(CovarianceHead::new(f, c, p.count("reduced"), k, false, device)),
        Method::IsqrtCov => visitor.visit(CovarianceHead::new(f, c, p.count("reduced"), k, true, device)),
        Method::GroupedBilinear => visitor.visit(GroupedBilinearHead::new(f, c, p.count("groups"), p.count("group_channels"), p.get("lambda"), k, device)),
        Method::Maxent => visitor.visit(maxent::MaxEntHead::new(f, c, k, p.get("gamma"), device)),
        Method::PairwiseConfusion => visitor.visit(pairwise_confusion::PairwiseConfusionHead::new(f, c, k, p.get("lambda_per_class") * k as f64, device)),
        Method::Cin => visitor.visit(cin::CinHead::new(f, c, k, p.get("lambda"), p.get("beta"), device)),
        Method::GbLoss => visitor.visit(gb_loss::GbLossHead::new(f, c, k, p.count("k"), p.get("p_peak"), p.get("p_patch"), p.count("grid"), device)),
        Method::McLoss => visitor.visit(mc_loss::McLossHead::new(backbone(), f, c, k, p.count("xi"), p.get("mu"), p.get("lambda"), device)),
        Method::ApiNet => visitor.visit(api_net::ApiNetHead::new(backbone(), f, c, k, device)),
        Method::Dcl => visitor.visit(dcl::DclHead::new(backbone(), f, c, k, p.count("regions"), device)),
        Method::Pmg => visitor.visit(pmg::PmgHead::new(backbone(), f, [spec.channels[f - 2], spec.channels[f - 1], c], p.count("width"), k, device)),
    }
}
