//! Classifier heads around the high-order pooling layers of [`crate::pooling`] (§5.2.1). Each
//! layer's file is its method file (paper, equations, deviations); a head adds only what the
//! paper puts after the layer, a linear classifier trained with cross-entropy on the pooled
//! descriptor of the backbone's last feature map.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

use super::{Head, Inputs, StepOutput, cross_entropy};
use crate::pooling::compact_bilinear::RandomMaclaurin;
use crate::pooling::grouped_bilinear::GroupedBilinear;
use crate::pooling::hbp::HierarchicalBilinear;
use crate::pooling::isqrt_cov::{ITERATIONS, Reduction, isqrt_cov};
use crate::pooling::kernel_pooling::KernelPooling;
use crate::pooling::lrbp::LowRankBilinear;
use crate::pooling::mpn_cov::{ALPHA, mpn_cov};
use crate::pooling::tensor_sketch::TensorSketch;
use crate::pooling::{bcnn, pointwise, sqrt_l2};

macro_rules! ce_head {
    ($t:ident) => {
        impl<B: Backend> Head<B> for $t<B> {
            fn loss(&self, x: &Inputs<B>, _step: usize) -> StepOutput<B> {
                let logits = self.logits(x);
                StepOutput { loss: cross_entropy(logits.clone(), &x.labels), logits }
            }

            fn logits(&self, x: &Inputs<B>) -> Tensor<B, 2> {
                self.scores(x)
            }
        }
    };
}

/// B-CNN: bilinear pooling, signed square root, ℓ2, linear classifier.
#[derive(Module, Debug)]
pub struct BcnnHead<B: Backend> {
    /// Classifier on `C²`.
    pub fc: Linear<B>,
    /// Stage whose map is pooled.
    pub stage: usize,
}

impl<B: Backend> BcnnHead<B> {
    /// For `channels` channels and `classes` classes.
    pub fn new(stage: usize, channels: usize, classes: usize, device: &B::Device) -> Self {
        BcnnHead { fc: LinearConfig::new(channels * channels, classes).init(device), stage }
    }

    fn scores(&self, x: &Inputs<B>) -> Tensor<B, 2> {
        self.fc.forward(bcnn::bilinear_pool(x.tap(self.stage)))
    }
}
ce_head!(BcnnHead);

/// Compact bilinear pooling (Tensor Sketch), signed square root, ℓ2, linear classifier.
#[derive(Module, Debug)]
pub struct TensorSketchHead<B: Backend> {
    /// Classifier on `d`.
    pub fc: Linear<B>,
    /// Stage whose map is pooled.
    pub stage: usize,
    #[module(skip)]
    sketch: TensorSketch,
}

impl<B: Backend> TensorSketchHead<B> {
    /// For `channels` channels, sketch size `dim`, `classes` classes.
    pub fn new(stage: usize, channels: usize, dim: usize, classes: usize, seed: u64, device: &B::Device) -> Self {
        TensorSketchHead { fc: LinearConfig::new(dim, classes).init(device), stage, sketch: TensorSketch::new(channels, dim, seed) }
    }

    fn scores(&self, x: &Inputs<B>) -> Tensor<B, 2> {
        let map = x.tap(self.stage);
        let [_, _, h, w] = map.dims();
        self.fc.forward(sqrt_l2(self.sketch.forward(map) / (h * w) as f32, bcnn::EPS))
    }
}
ce_head!(TensorSketchHead);

/// Compact bilinear pooling (Random Maclaurin), signed square root, ℓ2, linear classifier.
#[derive(Module, Debug)]
pub struct RandomMaclaurinHead<B: Backend> {
    /// Classifier on `d`.
    pub fc: Linear<B>,
    /// Stage whose map is pooled.
    pub stage: usize,
    /// Input channels.
    pub channels: usize,
    /// Projection size.
    pub dim: usize,
    /// Seed of the fixed projections (rebuilt on each call: they are constants).
    pub seed: u64,
}

impl<B: Backend> RandomMaclaurinHead<B> {
    /// For `channels` channels, projection size `dim`, `classes` classes.
    pub fn new(stage: usize, channels: usize, dim: usize, classes: usize, seed: u64, device: &B::Device) -> Self {
        RandomMaclaurinHead { fc: LinearConfig::new(dim, classes).init(device), stage, channels, dim, seed }
    }

    fn scores(&self, x: &Inputs<B>) -> Tensor<B, 2> {
        let map = x.tap(self.stage);
        let [_, _, h, w] = map.dims();
        let rm = RandomMaclaurin::<B>::new(self.channels, self.dim, self.seed, &map.device());
        self.fc.forward(sqrt_l2(rm.forward(map) / (h * w) as f32, bcnn::EPS))
    }
}
ce_head!(RandomMaclaurinHead);

/// LRBP: a learned 1x1 reduction, then the low-rank bilinear classifier.
#[derive(Module, Debug)]
pub struct LrbpHead<B: Backend> {
    /// 1x1 reduction (the paper's 512 → 100).
    pub reduction: Conv2d<B>,
    /// Low-rank bilinear classifier.
    pub classifier: LowRankBilinear<B>,
    /// Stage whose map is pooled.
    pub stage: usize,
}

impl<B: Backend> LrbpHead<B> {
    /// `channels` reduced to `reduced`, rank `rank`.
    pub fn new(stage: usize, channels: usize, reduced: usize, rank: usize, classes: usize, device: &B::Device) -> Self {
        LrbpHead {
            reduction: Conv2dConfig::new([channels, reduced], [1, 1]).init(device),
            classifier: LowRankBilinear::new(reduced, classes, rank, device),
            stage,
        }
    }

    fn scores(&self, x: &Inputs<B>) -> Tensor<B, 2> {
        self.classifier.forward(pointwise(&self.reduction, x.tap(self.stage)))
    }
}
ce_head!(LrbpHead);

/// HBP: projections of three same-resolution layers, cross-layer products, linear classifier.
#[derive(Module, Debug)]
pub struct HbpHead<B: Backend> {
    /// The projections.
    pub hbp: HierarchicalBilinear<B>,
    /// Classifier on the concatenation.
    pub fc: Linear<B>,
    /// The layers' stages.
    pub stages: Vec<usize>,
}

impl<B: Backend> HbpHead<B> {
    /// Layers `stages` with `channels`, projection size `dim`.
    pub fn new(stages: Vec<usize>, channels: &[usize], dim: usize, classes: usize, device: &B::Device) -> Self {
        let hbp = HierarchicalBilinear::new(channels, dim, device);
        let fc = LinearConfig::new(hbp.output_dim(), classes).init(device);
        HbpHead { hbp, fc, stages }
    }

    fn scores(&self, x: &Inputs<B>) -> Tensor<B, 2> {
        self.fc.forward(self.hbp.forward(self.stages.iter().map(|&s| x.tap(s)).collect()))
    }
}
ce_head!(HbpHead);

/// Kernel pooling, signed square root, ℓ2, linear classifier.
#[derive(Module, Debug)]
pub struct KernelPoolingHead<B: Backend> {
    /// The layer (learnable `α`).
    pub kp: KernelPooling<B>,
    /// Classifier.
    pub fc: Linear<B>,
    /// Stage whose map is pooled.
    pub stage: usize,
}

impl<B: Backend> KernelPoolingHead<B> {
    /// Order `order`, sketches of `dim`, RBF scale `gamma`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(stage: usize, channels: usize, dim: usize, order: usize, gamma: f64, classes: usize, seed: u64, device: &B::Device) -> Self {
        let kp = KernelPooling::new(channels, dim, order, gamma, seed, device);
        let fc = LinearConfig::new(kp.output_dim(channels), classes).init(device);
        KernelPoolingHead { kp, fc, stage }
    }

    fn scores(&self, x: &Inputs<B>) -> Tensor<B, 2> {
        self.fc.forward(sqrt_l2(self.kp.forward(x.tap(self.stage)), bcnn::EPS))
    }
}
ce_head!(KernelPoolingHead);

/// MPN-COV or iSQRT-COV: 1x1 reduction (conv, BN, ReLU), covariance, matrix square root,
/// upper triangle, linear classifier.
#[derive(Module, Debug)]
pub struct CovarianceHead<B: Backend> {
    /// The reduction to `r` channels.
    pub reduction: Reduction<B>,
    /// Classifier on `r (r + 1) / 2`.
    pub fc: Linear<B>,
    /// Stage whose map is pooled.
    pub stage: usize,
    /// `true`: iSQRT-COV (Newton-Schulz); `false`: MPN-COV (eigendecomposition).
    pub iterative: bool,
}

impl<B: Backend> CovarianceHead<B> {
    /// `channels` reduced to `reduced`.
    pub fn new(stage: usize, channels: usize, reduced: usize, classes: usize, iterative: bool, device: &B::Device) -> Self {
        CovarianceHead {
            reduction: Reduction::new(channels, reduced, device),
            fc: LinearConfig::new(reduced * (reduced + 1) / 2, classes).init(device),
            stage,
            iterative,
        }
    }

    fn scores(&self, x: &Inputs<B>) -> Tensor<B, 2> {
        let r = self.reduction.forward(x.tap(self.stage));
        let z = if self.iterative { isqrt_cov(r, ITERATIONS) } else { mpn_cov(r, ALPHA) };
        self.fc.forward(z)
    }
}
ce_head!(CovarianceHead);

/// Grouped bilinear pooling with the semantic grouping loss.
#[derive(Module, Debug)]
pub struct GroupedBilinearHead<B: Backend> {
    /// Grouping and pooling.
    pub gb: GroupedBilinear<B>,
    /// Classifier on `c²`.
    pub fc: Linear<B>,
    /// Stage whose map is pooled.
    pub stage: usize,
    /// Weight of the grouping loss.
    pub lambda: f64,
}

impl<B: Backend> GroupedBilinearHead<B> {
    /// `groups` groups of `group_channels`, grouping-loss weight `lambda`.
    pub fn new(stage: usize, channels: usize, groups: usize, group_channels: usize, lambda: f64, classes: usize, device: &B::Device) -> Self {
        let gb = GroupedBilinear::new(channels, groups, group_channels, device);
        let fc = LinearConfig::new(gb.output_dim(), classes).init(device);
        GroupedBilinearHead { gb, fc, stage, lambda }
    }
}

impl<B: Backend> Head<B> for GroupedBilinearHead<B> {
    fn loss(&self, x: &Inputs<B>, _step: usize) -> StepOutput<B> {
        let grouped = self.gb.group(x.tap(self.stage));
        let logits = self.fc.forward(self.gb.pool(grouped.clone()));
        let loss = cross_entropy(logits.clone(), &x.labels) + self.gb.grouping_loss(grouped) * self.lambda;
        StepOutput { loss, logits }
    }

    fn logits(&self, x: &Inputs<B>) -> Tensor<B, 2> {
        self.fc.forward(self.gb.pool(self.gb.group(x.tap(self.stage))))
    }
}
