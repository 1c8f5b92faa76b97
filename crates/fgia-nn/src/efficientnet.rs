//! EfficientNet-Lite0 (Tan and Le, "EfficientNet: Rethinking Model Scaling for Convolutional
//! Neural Networks", ICML 2019; the "Lite" variants of the TensorFlow TPU repository): MBConv
//! blocks without squeeze-and-excitation, ReLU6 activations, and a stem and head that are not
//! rescaled.
//!
//! Layout and names follow lukemelas' EfficientNet-PyTorch (`_conv_stem`, `_bn0`,
//! `_blocks.<i>._expand_conv`, `._depthwise_conv`, `._project_conv`, `._bn0/1/2`,
//! `_conv_head`, `_bn1`, `_fc`). Burn fields drop the leading underscore; the loader maps the
//! names with one rule (see [`crate::weights::efficientnet_remaps`]).
//!
//! Details that matter for the pretrained weights:
//! - every convolution uses TensorFlow's "SAME" padding: `ceil(in/stride)` outputs, the total
//!   padding split with the extra pixel at the bottom/right (burn's `PaddingConfig2d::Same`
//!   computes exactly this, also for stride 2);
//! - batch norm epsilon 1e-3 and momentum 0.01 (TensorFlow's 0.99 decay);
//! - inputs are `(x - 127) / 128`, not ImageNet mean/std;
//! - drop-connect (stochastic depth) on the residual blocks with rate `0.2 * i / 16` during
//!   training, dropout 0.2 before `_fc`.
//!
//! `width_div` divides every width (1 for the real network), for tiny test networks.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::kernels::Act;
use crate::norm::{conv_bn, conv_bn_act};
use crate::ops::global_avg_pool;

/// `(kernel, stride, expand ratio, output channels, repeats)` of the seven stages of Lite0.
pub const LITE0_STAGES: [(usize, usize, usize, usize, usize); 7] =
    [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)];

/// Configuration of EfficientNet-Lite0.
#[derive(Config, Debug)]
pub struct EfficientNetLiteConfig {
    /// Classes of `_fc`.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Divides every width (1 for the real network).
    #[config(default = 1)]
    pub width_div: usize,
    /// Dropout before the head.
    #[config(default = 0.2)]
    pub dropout: f64,
    /// Drop-connect rate of the last block (scaled linearly from 0 at the first).
    #[config(default = 0.2)]
    pub drop_connect: f64,
}

fn bn<B: Backend>(c: usize, device: &B::Device) -> BatchNorm<B> {
    BatchNormConfig::new(c).with_epsilon(1e-3).with_momentum(0.01).init(device)
}

fn conv<B: Backend>(i: usize, o: usize, k: usize, stride: usize, groups: usize, device: &B::Device) -> Conv2d<B> {
    Conv2dConfig::new([i, o], [k, k]).with_stride([stride, stride]).with_groups(groups).with_padding(PaddingConfig2d::Same).with_bias(false).init(device)
}

impl EfficientNetLiteConfig {
    /// Channels of the head convolution's output (`_fc`'s input).
    pub fn feature_dim(&self) -> usize {
        1280 / self.width_div
    }

    /// Builds the network with random weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> EfficientNetLite<B> {
        let d = self.width_div;
        let stem = 32 / d;
        let total: usize = LITE0_STAGES.iter().map(|s| s.4).sum();
        let mut blocks = Vec::new();
        let mut stage_ends = Vec::new();
        let mut in_ch = stem;
        for &(k, s, e, out, repeats) in &LITE0_STAGES {
            let out = out / d;
            for r in 0..repeats {
                let stride = if r == 0 { s } else { 1 };
                let mid = in_ch * e;
                let idx = blocks.len();
                blocks.push(MbConv {
                    expand_conv: (e != 1).then(|| conv(in_ch, mid, 1, 1, 1, device)),
                    bn0: (e != 1).then(|| bn(mid, device)),
                    depthwise_conv: conv(mid, mid, k, stride, mid, device),
                    bn1: bn(mid, device),
                    project_conv: conv(mid, out, 1, 1, 1, device),
                    bn2: bn(out, device),
                    residual: stride == 1 && in_ch == out,
                    drop_connect: self.drop_connect * idx as f64 / total as f64,
                });
                in_ch = out;
            }
            stage_ends.push(blocks.len());
        }
        EfficientNetLite {
            conv_stem: conv(3, stem, 3, 2, 1, device),
            bn0: bn(stem, device),
            blocks,
            stage_ends,
            conv_head: conv(in_ch, self.feature_dim(), 1, 1, 1, device),
            bn1: bn(self.feature_dim(), device),
            dropout: DropoutConfig::new(self.dropout).init(),
            fc: LinearConfig::new(self.feature_dim(), self.num_classes).init(device),
        }
    }
}

/// An inverted-residual block without squeeze-and-excitation.
#[derive(Module, Debug)]
pub struct MbConv<B: Backend> {
    /// 1x1 expansion (absent when the expand ratio is 1).
    pub expand_conv: Option<Conv2d<B>>,
    /// Batch norm after the expansion.
    pub bn0: Option<BatchNorm<B>>,
    /// Depthwise kxk convolution (carries the stride).
    pub depthwise_conv: Conv2d<B>,
    /// Batch norm after the depthwise convolution.
    pub bn1: BatchNorm<B>,
    /// 1x1 linear projection.
    pub project_conv: Conv2d<B>,
    /// Batch norm after the projection.
    pub bn2: BatchNorm<B>,
    /// Whether the input is added back (stride 1, same width).
    pub residual: bool,
    /// Drop-connect probability during training.
    pub drop_connect: f64,
}

impl<B: Backend> MbConv<B> {
    /// # Shapes
    /// `[B, C_in, H, W]` to `[B, C_out, ceil(H / stride), ceil(W / stride)]`.
    pub fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = input.clone();
        if let (Some(c), Some(b)) = (&self.expand_conv, &self.bn0) {
            x = conv_bn_act(c, b, x, Act::Relu6);
        }
        x = conv_bn_act(&self.depthwise_conv, &self.bn1, x, Act::Relu6);
        x = conv_bn(&self.project_conv, &self.bn2, x);
        if !self.residual {
            return x;
        }
        // Drop-connect only while training, i.e. on an autodiff backend.
        if B::ad_enabled(&x.device()) && self.drop_connect > 0.0 {
            let keep = 1.0 - self.drop_connect;
            let [n, _, _, _] = x.dims();
            let mask = Tensor::<B, 4>::random([n, 1, 1, 1], Distribution::Bernoulli(keep), &x.device());
            x = x * mask / keep;
        }
        x + input
    }
}

/// EfficientNet-Lite0.
#[derive(Module, Debug)]
pub struct EfficientNetLite<B: Backend> {
    /// 3x3 stride-2 stem convolution.
    pub conv_stem: Conv2d<B>,
    /// Stem batch norm.
    pub bn0: BatchNorm<B>,
    /// The 16 MBConv blocks.
    pub blocks: Vec<MbConv<B>>,
    /// One past the last block of each of the seven stages.
    pub stage_ends: Vec<usize>,
    /// 1x1 head convolution to 1280 channels.
    pub conv_head: Conv2d<B>,
    /// Head batch norm.
    pub bn1: BatchNorm<B>,
    /// Dropout before the classifier.
    pub dropout: Dropout,
    /// Classifier.
    pub fc: Linear<B>,
}

/// Stages of `forward_stage`.
pub const STAGES: usize = 9;

impl<B: Backend> EfficientNetLite<B> {
    /// Stages for partial freezing: the stem, the seven block stages, and the head convolution.
    pub const STAGES: usize = STAGES;

    /// Runs stage `i` of [`Self::STAGES`].
    pub fn forward_stage(&self, i: usize, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match i {
            0 => conv_bn_act(&self.conv_stem, &self.bn0, x, Act::Relu6),
            1..=7 => {
                let start = if i == 1 { 0 } else { self.stage_ends[i - 2] };
                self.blocks[start..self.stage_ends[i - 1]].iter().fold(x, |x, b| b.forward(x))
            }
            8 => conv_bn_act(&self.conv_head, &self.bn1, x, Act::Relu6),
            _ => panic!("EfficientNet-Lite has {} stages, asked for {i}", Self::STAGES),
        }
    }

    /// # Shapes
    /// `[B, 3, H, W]` to the head convolution's map `[B, 1280, H/32, W/32]` (rounded up).
    pub fn features(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        (0..Self::STAGES).fold(x, |x, i| self.forward_stage(i, x))
    }

    /// # Shapes
    /// `[B, 3, H, W]` to logits `[B, num_classes]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.fc.forward(self.dropout.forward(global_avg_pool(self.features(x))))
    }
}
