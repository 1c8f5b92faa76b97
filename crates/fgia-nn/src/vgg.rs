//! VGG-16 (Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
//! Recognition", ICLR 2015), configuration D, without batch norm, as in torchvision.
//!
//! Fine-grained methods use VGG-16 as a feature extractor: B-CNN and SCDA take the conv5_3
//! activations (after ReLU, before the last max pool). So this network keeps the 13
//! convolutions, and its head is a linear layer on the globally pooled conv5_3 map.
//!
//! Deviation from torchvision: the ImageNet classifier (fc6, fc7, fc8 on the 7x7 pooled map) is
//! not built; the loader ignores those keys by an explicit rule. torchvision's `features.<i>`
//! indices (which count ReLU and pooling layers too) map to `convs.<n>`.
//! `width_div` divides every width, for tiny test networks with the same names.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::kernels::conv2d_module;
use crate::ops::global_avg_pool;

/// Output channels of the 13 convolutions; a max pool follows the last one of each stage.
pub const VGG16_CHANNELS: [usize; 13] = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512];
/// Index of each convolution in torchvision's `features` sequence.
pub const VGG16_TORCHVISION_INDEX: [usize; 13] = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28];
/// Number of convolutions in each of the five stages.
const STAGE_CONVS: [usize; 5] = [2, 2, 3, 3, 3];

/// Configuration of a VGG-16 feature extractor with a linear head.
#[derive(Config, Debug)]
pub struct Vgg16Config {
    /// Classes of the head.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Divides every width (1 for the real network).
    #[config(default = 1)]
    pub width_div: usize,
}

impl Vgg16Config {
    /// Channels of conv5_3.
    pub fn feature_dim(&self) -> usize {
        512 / self.width_div
    }

    /// Builds the network with random weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Vgg16<B> {
        let mut in_ch = 3;
        let convs = VGG16_CHANNELS
            .iter()
            .map(|&c| {
                let out = c / self.width_div;
                let conv = Conv2dConfig::new([in_ch, out], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(device);
                in_ch = out;
                conv
            })
            .collect();
        Vgg16 { convs, pool: MaxPool2dConfig::new([2, 2]).init(), head: LinearConfig::new(self.feature_dim(), self.num_classes).init(device) }
    }
}

/// VGG-16's convolutions and a linear head.
#[derive(Module, Debug)]
pub struct Vgg16<B: Backend> {
    /// conv1_1 ... conv5_3.
    pub convs: Vec<Conv2d<B>>,
    /// 2x2 max pool between stages.
    pub pool: MaxPool2d,
    /// Linear head on the pooled conv5_3 map.
    pub head: Linear<B>,
}

/// Stages of `forward_stage`.
pub const STAGES: usize = 5;

impl<B: Backend> Vgg16<B> {
    /// Five stages; each but the last ends with a max pool.
    pub const STAGES: usize = STAGES;

    /// Runs stage `i`.
    pub fn forward_stage(&self, i: usize, mut x: Tensor<B, 4>) -> Tensor<B, 4> {
        assert!(i < Self::STAGES, "VGG-16 has {} stages, asked for {i}", Self::STAGES);
        let first: usize = STAGE_CONVS[..i].iter().sum();
        for conv in &self.convs[first..first + STAGE_CONVS[i]] {
            x = relu(conv2d_module(conv, x));
        }
        if i + 1 < Self::STAGES { self.pool.forward(x) } else { x }
    }

    /// SCDA+'s two layers (Wei et al. 2017, §4.3): `pool5`, the max-pooled conv5_3 map, and
    /// `relu5_2`.
    ///
    /// # Shapes
    /// `[B, 3, H, W]` to (`[B, 512, H/32, W/32]`, `[B, 512, H/16, W/16]`).
    pub fn scda_layers(&self, x: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let x = (0..Self::STAGES - 1).fold(x, |x, i| self.forward_stage(i, x));
        let first: usize = STAGE_CONVS[..Self::STAGES - 1].iter().sum();
        let relu5_1 = relu(conv2d_module(&self.convs[first], x));
        let relu5_2 = relu(conv2d_module(&self.convs[first + 1], relu5_1));
        let relu5_3 = relu(conv2d_module(&self.convs[first + 2], relu5_2.clone()));
        (self.pool.forward(relu5_3), relu5_2) // pool5 [B, 512, h/2, w/2], relu5_2 [B, 512, h, w]
    }

    /// # Shapes
    /// `[B, 3, H, W]` to conv5_3 after ReLU, `[B, 512, H/16, W/16]`.
    pub fn features(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        (0..Self::STAGES).fold(x, |x, i| self.forward_stage(i, x))
    }

    /// # Shapes
    /// `[B, 3, H, W]` to logits `[B, num_classes]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.head.forward(global_avg_pool(self.features(x)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn scda_layers_are_pool5_and_relu5_2() {
        let device = Default::default();
        let net: Vgg16<Flex> = Vgg16Config::new().with_width_div(16).init(&device);
        let x = Tensor::<Flex, 4>::random([1, 3, 224, 224], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let (pool5, relu5_2) = net.scda_layers(x.clone());
        // The paper's sizes at 224 px: pool5 7x7, relu5_2 14x14.
        assert_eq!(pool5.dims(), [1, 32, 7, 7]);
        assert_eq!(relu5_2.dims(), [1, 32, 14, 14]);
        // pool5 is the max pool of conv5_3 (the last stage's output).
        let want = net.pool.forward(net.features(x));
        let d: f32 = (pool5 - want).abs().max().into_scalar();
        assert!(d < 1e-5, "{d}");
    }
}
