//! ResNet-18/50/101 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016) in
//! torchvision's layout ("v1.5": the stride of a bottleneck sits on its 3x3 convolution).
//!
//! Field names mirror torchvision's state-dict keys (`conv1`, `bn1`, `layer1.0.conv1`, ..., `fc`),
//! so weights load with one remap rule: torchvision's `downsample.0`/`downsample.1` become
//! `downsample.conv`/`downsample.bn` (see [`crate::weights::resnet_remaps`]).
//!
//! `base_width` scales every layer; 64 is the real network, small values give tiny networks with
//! the same structure and parameter names for tests.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::kernels::Act;
use crate::norm::{conv_bn, conv_bn_act};
use crate::ops::global_avg_pool;

/// Configuration of a ResNet.
#[derive(Config, Debug)]
pub struct ResNetConfig {
    /// 18, 34, 50, 101 or 152.
    pub depth: usize,
    /// Output classes of the `fc` head.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Channels of the stem; 64 in the paper.
    #[config(default = 64)]
    pub base_width: usize,
}

impl ResNetConfig {
    fn layout(&self) -> (bool, [usize; 4]) {
        match self.depth {
            18 => (false, [2, 2, 2, 2]),
            34 => (false, [3, 4, 6, 3]),
            50 => (true, [3, 4, 6, 3]),
            101 => (true, [3, 4, 23, 3]),
            152 => (true, [3, 8, 36, 3]),
            d => panic!("ResNet depth {d} is not one of 18, 34, 50, 101, 152"),
        }
    }

    /// Channels of the last stage's output (`fc`'s input).
    pub fn feature_dim(&self) -> usize {
        let (bottleneck, _) = self.layout();
        self.base_width * 8 * if bottleneck { 4 } else { 1 }
    }

    /// Builds the network with random weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResNet<B> {
        let (bottleneck, blocks) = self.layout();
        let w = self.base_width;
        let expansion = if bottleneck { 4 } else { 1 };
        let mut in_ch = w;
        let mut layers = Vec::new();
        for (stage, &n) in blocks.iter().enumerate() {
            let width = w << stage;
            let out_ch = width * expansion;
            let mut layer = Vec::new();
            for b in 0..n {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                layer.push(block(in_ch, width, out_ch, stride, bottleneck, device));
                in_ch = out_ch;
            }
            layers.push(layer);
        }
        let mut layers = layers.into_iter();
        let mut next = || layers.next().expect("four stages were built");
        ResNet {
            conv1: Conv2dConfig::new([3, w], [7, 7]).with_stride([2, 2]).with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3)).with_bias(false).init(device),
            bn1: BatchNormConfig::new(w).init(device),
            maxpool: MaxPool2dConfig::new([3, 3]).with_strides([2, 2]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(),
            layer1: next(),
            layer2: next(),
            layer3: next(),
            layer4: next(),
            fc: LinearConfig::new(self.feature_dim(), self.num_classes).init(device),
        }
    }
}

fn conv(in_ch: usize, out_ch: usize, k: usize, stride: usize) -> Conv2dConfig {
    let p = k / 2;
    Conv2dConfig::new([in_ch, out_ch], [k, k]).with_stride([stride, stride]).with_padding(PaddingConfig2d::Explicit(p, p, p, p)).with_bias(false)
}

fn block<B: Backend>(in_ch: usize, width: usize, out_ch: usize, stride: usize, bottleneck: bool, device: &B::Device) -> Block<B> {
    let downsample = (stride != 1 || in_ch != out_ch)
        .then(|| Downsample { conv: conv(in_ch, out_ch, 1, stride).init(device), bn: BatchNormConfig::new(out_ch).init(device) });
    if bottleneck {
        Block {
            conv1: conv(in_ch, width, 1, 1).init(device),
            bn1: BatchNormConfig::new(width).init(device),
            conv2: conv(width, width, 3, stride).init(device),
            bn2: BatchNormConfig::new(width).init(device),
            conv3: Some(conv(width, out_ch, 1, 1).init(device)),
            bn3: Some(BatchNormConfig::new(out_ch).init(device)),
            downsample,
        }
    } else {
        Block {
            conv1: conv(in_ch, width, 3, stride).init(device),
            bn1: BatchNormConfig::new(width).init(device),
            conv2: conv(width, out_ch, 3, 1).init(device),
            bn2: BatchNormConfig::new(out_ch).init(device),
            conv3: None,
            bn3: None,
            downsample,
        }
    }
}

/// The projection shortcut of a block that changes resolution or width.
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    /// 1x1 convolution (torchvision `downsample.0`).
    pub conv: Conv2d<B>,
    /// Batch norm (torchvision `downsample.1`).
    pub bn: BatchNorm<B>,
}

/// A basic block (two 3x3 convolutions) or, with `conv3`, a bottleneck (1x1, 3x3, 1x1).
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// First convolution.
    pub conv1: Conv2d<B>,
    /// First batch norm.
    pub bn1: BatchNorm<B>,
    /// Second convolution (carries the stride).
    pub conv2: Conv2d<B>,
    /// Second batch norm.
    pub bn2: BatchNorm<B>,
    /// Third convolution (bottleneck only).
    pub conv3: Option<Conv2d<B>>,
    /// Third batch norm (bottleneck only).
    pub bn3: Option<BatchNorm<B>>,
    /// Projection shortcut, when shapes change.
    pub downsample: Option<Downsample<B>>,
}

impl<B: Backend> Block<B> {
    /// # Shapes
    /// `[B, C_in, H, W]` to `[B, C_out, H / stride, W / stride]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let identity = match &self.downsample {
            Some(d) => conv_bn(&d.conv, &d.bn, x.clone()),
            None => x.clone(),
        };
        let mut y = conv_bn_act(&self.conv1, &self.bn1, x, Act::Relu);
        if let (Some(c3), Some(b3)) = (&self.conv3, &self.bn3) {
            y = conv_bn(c3, b3, conv_bn_act(&self.conv2, &self.bn2, y, Act::Relu));
        } else {
            y = conv_bn(&self.conv2, &self.bn2, y);
        }
        relu(y + identity)
    }
}

/// A torchvision-layout ResNet.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    /// 7x7 stem convolution, stride 2.
    pub conv1: Conv2d<B>,
    /// Stem batch norm.
    pub bn1: BatchNorm<B>,
    /// 3x3 max pool, stride 2.
    pub maxpool: MaxPool2d,
    /// Stage 1 (stride 4 overall).
    pub layer1: Vec<Block<B>>,
    /// Stage 2 (stride 8).
    pub layer2: Vec<Block<B>>,
    /// Stage 3 (stride 16).
    pub layer3: Vec<Block<B>>,
    /// Stage 4 (stride 32).
    pub layer4: Vec<Block<B>>,
    /// Classifier head on the pooled features.
    pub fc: Linear<B>,
}

/// Stages of `forward_stage`.
pub const STAGES: usize = 5;

impl<B: Backend> ResNet<B> {
    /// Stages for partial freezing: the stem, then the four layers.
    pub const STAGES: usize = STAGES;

    /// Runs stage `i` of [`Self::STAGES`].
    pub fn forward_stage(&self, i: usize, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let run = |layer: &[Block<B>], x: Tensor<B, 4>| layer.iter().fold(x, |x, b| b.forward(x));
        match i {
            0 => self.maxpool.forward(conv_bn_act(&self.conv1, &self.bn1, x, Act::Relu)),
            1 => run(&self.layer1, x),
            2 => run(&self.layer2, x),
            3 => run(&self.layer3, x),
            4 => run(&self.layer4, x),
            _ => panic!("ResNet has {} stages, asked for {i}", Self::STAGES),
        }
    }

    /// # Shapes
    /// `[B, 3, H, W]` to the last stage's map `[B, C, H/32, W/32]`.
    pub fn features(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        (0..Self::STAGES).fold(x, |x, i| self.forward_stage(i, x))
    }

    /// # Shapes
    /// `[B, 3, H, W]` to logits `[B, num_classes]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.fc.forward(global_avg_pool(self.features(x)))
    }
}
