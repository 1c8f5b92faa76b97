//! The trained layers of triplet Sketch-a-Net (Yu et al., CVPR 2016, §4): `fc6` with 512 units
//! and ReLU, `fc7` with 256, and ℓ2 normalisation; one set of weights for sketches and photo
//! edge maps (the branches share their weights in the paper's shoe and chair models).
//!
//! The loss (eq. 1) is the triplet ranking loss on squared Euclidean distances,
//! `max(0, Δ + D(s, p⁺)² − D(s, p⁻)²)` with margin `Δ` (0.3 in the authors' release), in
//! `loss.rs`, shared with DSSA (`dssa.rs`).
//!
//! Deviations (also in every record, `Method::deviations`): the trunk is an ImageNet network,
//! frozen, standing in for Sketch-a-Net's staged pretraining, which is not available; its pooled
//! features feed `fc6`; dropout of the original fc layers is left out.
//!
//! Recipes: `recipes/table6/triplet-sketch-a-net-shoes.toml`, `…-chairs.toml`.

use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;
use fgia_nn::ops::l2_normalize;

/// `fc6 → ReLU → fc7 → ℓ2`: `[n, D]` trunk features to `[n, 256]` unit embeddings.
#[derive(Module, Debug)]
pub struct TripletHead<B: Backend> {
    /// `D → 512`.
    pub fc6: Linear<B>,
    /// `512 → 256`.
    pub fc7: Linear<B>,
    relu: Relu,
}

/// Configuration of a [`TripletHead`].
#[derive(Config, Debug)]
pub struct TripletHeadConfig {
    /// Trunk feature size.
    pub input: usize,
    /// `fc6` units.
    #[config(default = 512)]
    pub fc6: usize,
    /// `fc7` units (the embedding).
    #[config(default = 256)]
    pub fc7: usize,
}

impl TripletHeadConfig {
    /// A fresh head (the backend's seeded generator).
    pub fn init<B: Backend>(&self, device: &B::Device) -> TripletHead<B> {
        TripletHead { fc6: LinearConfig::new(self.input, self.fc6).init(device), fc7: LinearConfig::new(self.fc6, self.fc7).init(device), relu: Relu::new() }
    }
}

impl<B: Backend> TripletHead<B> {
    /// `[n, D]` → `[n, 256]`, unit length.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        l2_normalize(self.fc7.forward(self.relu.forward(self.fc6.forward(x))), 1e-12)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn embeddings_have_unit_length() {
        let device = Default::default();
        let head = TripletHeadConfig::new(8).init::<Flex>(&device);
        let x = Tensor::<Flex, 2>::random([5, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let e = head.forward(x);
        assert_eq!(e.dims(), [5, 256]);
        let norms: Vec<f32> = e.powi_scalar(2).sum_dim(1).into_data().to_vec().expect("f32");
        assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-4), "{norms:?}");
    }
}
