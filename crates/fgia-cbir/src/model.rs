//! The trainable part of a retrieval model on top of a frozen backbone: pooling of the feature
//! map, a linear embedding, and the class weights that proxy- and classifier-based losses
//! learn.
//!
//! Two poolings:
//! - [`Pooling::AvgMax`]: global average and global max pooling, concatenated (the usual
//!   fine-grained retrieval head, also DGCRL's);
//! - [`Pooling::Localized`]: the same, restricted to the object region found from the
//!   activations themselves (SCDA's mask: the largest connected component of the positions
//!   whose channel sum is above the mean). This is CRL-WSL's weakly supervised localization,
//!   applied on the feature map instead of re-cropping the image (a recorded deviation).

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use fgia_nn::ops::l2_normalize;
use serde::{Deserialize, Serialize};

use crate::scda::{Activations, selection_mask};

/// How the feature map is pooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// `[avg, max]` over all positions.
    AvgMax,
    /// `[avg, max]` over the SCDA-selected object region.
    Localized,
}

/// The head: `[B, C, h, w]` maps to `[B, D]` unit-length embeddings.
#[derive(Module, Debug)]
pub struct EmbeddingHead<B: Backend> {
    /// `2C -> D`.
    pub embed: Linear<B>,
    /// Class weights `[classes, D]` (proxies, centres or classifier rows), when the loss uses
    /// them.
    pub class_weights: Option<Param<Tensor<B, 2>>>,
}

/// Configuration of an [`EmbeddingHead`].
#[derive(Config, Debug)]
pub struct EmbeddingHeadConfig {
    /// Channels of the feature map.
    pub channels: usize,
    /// Embedding size.
    pub dim: usize,
    /// Training classes, when the loss learns class weights (0 = none).
    #[config(default = 0)]
    pub classes: usize,
}

impl EmbeddingHeadConfig {
    /// A freshly initialised head (uses the backend's seeded generator).
    pub fn init<B: Backend>(&self, device: &B::Device) -> EmbeddingHead<B> {
        let class_weights = (self.classes > 0).then(|| {
            let w = Tensor::<B, 2>::random([self.classes, self.dim], burn::tensor::Distribution::Normal(0.0, 1.0), device);
            Param::from_tensor(w)
        });
        EmbeddingHead { embed: LinearConfig::new(2 * self.channels, self.dim).init(device), class_weights }
    }
}

/// The SCDA object masks of a batch of maps, as a `[B, 1, h, w]` 0/1 tensor (computed on the
/// values, no gradient).
pub fn object_masks<B: Backend>(maps: &Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = maps.dims();
    let values: Vec<f32> = maps.clone().into_data().convert::<f32>().to_vec().unwrap_or_default();
    let mut out = Vec::with_capacity(b * h * w);
    for i in 0..b {
        let mask = Activations::new(&values[i * c * h * w..(i + 1) * c * h * w], c, h, w).map(|a| selection_mask(&a)).unwrap_or_default();
        let any = mask.iter().any(|&m| m);
        out.extend(mask.iter().map(|&m| if m || !any { 1.0f32 } else { 0.0 }));
    }
    Tensor::from_data(TensorData::new(out, [b, 1, h, w]), &maps.device())
}

/// `[avg, max]` pooling of `[B, C, h, w]` maps, optionally inside a `[B, 1, h, w]` mask.
/// Maps are expected non-negative (post-ReLU) for the masked maximum.
pub fn avg_max_pool<B: Backend>(maps: Tensor<B, 4>, mask: Option<Tensor<B, 4>>) -> Tensor<B, 2> {
    let [b, c, h, w] = maps.dims();
    let (avg, max) = match mask {
        None => {
            let flat = maps.reshape([b, c, h * w]);
            (flat.clone().mean_dim(2).reshape([b, c]), flat.max_dim(2).reshape([b, c]))
        }
        Some(m) => {
            let count = m.clone().reshape([b, h * w]).sum_dim(1).clamp_min(1.0); // [B, 1]
            let masked = (maps * m).reshape([b, c, h * w]);
            (masked.clone().sum_dim(2).reshape([b, c]) / count, masked.max_dim(2).reshape([b, c]))
        }
    };
    Tensor::cat(vec![avg, max], 1) // [B, 2C]
}

impl<B: Backend> EmbeddingHead<B> {
    /// # Shapes
    /// `[B, C, h, w]` to `[B, D]`, unit length.
    pub fn forward(&self, maps: Tensor<B, 4>, pooling: Pooling) -> Tensor<B, 2> {
        let mask = match pooling {
            Pooling::AvgMax => None,
            Pooling::Localized => Some(object_masks(&maps)),
        };
        l2_normalize(self.embed.forward(avg_max_pool(maps, mask)), 1e-12)
    }

    /// The class weights, if any.
    pub fn weights(&self) -> Option<Tensor<B, 2>> {
        self.class_weights.as_ref().map(|p| p.val())
    }
}
