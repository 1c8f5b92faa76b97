//! DSSA, deep spatial-semantic attention (Song, Yu, Song, Xiang and Hospedales, "Deep
//! Spatial-Semantic Attention for Fine-Grained Sketch-Based Image Retrieval", ICCV 2017), over
//! the same shared trunk as triplet Sketch-a-Net (`triplet_sketch_a_net.rs`).
//!
//! With `f` the conv5 map `[C, h, w]` of a sketch or photo:
//! - **attention** (§3.2): `a = softmax_hw(conv_1x1(relu(conv_1x1(f))))`, a `[1, h, w]` mask
//!   (256 hidden channels, one output, a softmax over the `h * w` positions);
//! - **residual connection**: `f_att = f + f ⊙ a`, so the attention re-weights but never
//!   removes the map;
//! - **coarse-fine fusion** (§3.3): the coarse feature `c = ℓ2(fc7(relu(fc6(vec(f_att)))))`
//!   (512 and 256 units, as in triplet Sketch-a-Net) and the fine feature
//!   `g = ℓ2(Σ_hw f_att)`, concatenated: `e = [c, g]`, `256 + C` dimensions;
//! - **loss**: the triplet loss on squared Euclidean distances of `e` (margin 0.3), or, as a
//!   recipe option (`loss = "holef"`), on the higher-order learnable energy function (§3.4)
//!   `D_W(s, p) = Σ_i Σ_j W_ij (e_i(s) − e_j(p))²`, the squared differences of every pair of
//!   dimensions (the "outer subtraction"), weighted by a learned `W`. With `W = I` it is the
//!   squared Euclidean distance. `W = I + V` with `V` starting at zero; the optimizer's weight
//!   decay on `V` is the ridge penalty `λ/2 ‖W − I‖²` that keeps `W` near the identity.
//!   Expanded, `D_W = (s∘s)ᵀ W 1 + 1ᵀ W (p∘p) − 2 sᵀ W p`, which costs two matrix products
//!   instead of a `d × d` difference tensor per pair.
//!
//! What differs from the paper (also in every record, `Method::deviations`):
//! - the trunk is the frozen ImageNet network of triplet Sketch-a-Net (its conv5 stand-in is
//!   `views::conv5_stage`, EfficientNet-Lite0's 320-channel 8 x 8 map), not a Sketch-a-Net with
//!   the staged pretraining, which is not available; the attention, `fc6`, `fc7` and `W` train;
//! - the authors' release (`Deep_SBIR_tf`) trains with the plain triplet loss and has no HOLEF;
//!   the paper's text gives `D_W` but not the regulariser's form or weight, so `‖W − I‖²` through
//!   the weight decay is our choice. `W` is linear in the weights (not `W ∘ W`): with `W = I` at
//!   the start, a squared parametrisation would give the off-diagonal entries no gradient;
//! - the mask uses the released code's softmax variant (it also has a sigmoid one).
//!
//! Recipes: `recipes/table6/dssa-{shoes,chairs}.toml` (plain triplet loss, as released) and
//! `recipes/table6/dssa-holef-{shoes,chairs}.toml`.

use burn::module::Param;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use fgia_nn::ops::l2_normalize;

/// Attention, fusion and the fc layers over conv5 maps: `[n, C * h * w]` to `[n, 256 + C]`.
#[derive(Module, Debug)]
pub struct DssaHead<B: Backend> {
    /// First attention convolution, `C → 256`, 1 x 1 (a linear map applied at every position).
    pub att1: Linear<B>,
    /// Second attention convolution, `256 → 1`, 1 x 1 (the mask's logits).
    pub att2: Linear<B>,
    /// `C * h * w → 512`.
    pub fc6: Linear<B>,
    /// `512 → 256` (the coarse feature).
    pub fc7: Linear<B>,
    relu: Relu,
    channels: usize,
    height: usize,
    width: usize,
}

/// Configuration of a [`DssaHead`].
#[derive(Config, Debug)]
pub struct DssaHeadConfig {
    /// Shape `[C, h, w]` of the conv5 map.
    pub map: [usize; 3],
    /// Hidden channels of the attention (256 in the release).
    #[config(default = 256)]
    pub attention: usize,
    /// `fc6` units.
    #[config(default = 512)]
    pub fc6: usize,
    /// `fc7` units (the coarse feature).
    #[config(default = 256)]
    pub fc7: usize,
}

impl DssaHeadConfig {
    /// A fresh head (the backend's seeded generator).
    pub fn init<B: Backend>(&self, device: &B::Device) -> DssaHead<B> {
        let [c, h, w] = self.map;
        DssaHead {
            att1: LinearConfig::new(c, self.attention).init(device),
            att2: LinearConfig::new(self.attention, 1).init(device),
            fc6: LinearConfig::new(c * h * w, self.fc6).init(device),
            fc7: LinearConfig::new(self.fc6, self.fc7).init(device),
            relu: Relu::new(),
            channels: c,
            height: h,
            width: w,
        }
    }

    /// Size of the fused embedding.
    pub fn embedding(&self) -> usize {
        self.fc7 + self.map[0]
    }
}

impl<B: Backend> DssaHead<B> {
    /// The attention mask of flattened maps: `[n, C * h * w]` to `[n, h * w]`, each row summing
    /// to one.
    pub fn attention(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let n = x.dims()[0];
        let (c, h, w) = (self.channels, self.height, self.width);
        // A 1 x 1 convolution is a linear map of each position's channels: [n * hw, C].
        let positions = x.reshape([n, c, h * w]).swap_dims(1, 2).reshape([n * h * w, c]);
        let logits = self.att2.forward(self.relu.forward(self.att1.forward(positions))); // [n * hw, 1]
        softmax(logits.reshape([n, h * w]), 1)
    }

    /// The fused embedding `[c, g]` of flattened conv5 maps: `[n, C * h * w]` to `[n, 256 + C]`,
    /// each half of unit length.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let n = x.dims()[0];
        let (c, hw) = (self.channels, self.height * self.width);
        let a = self.attention(x.clone()).reshape([n, 1, hw]);
        let f = x.reshape([n, c, hw]);
        let attended = f.clone() + f * a; // [n, C, hw]
        let fine = l2_normalize(attended.clone().sum_dim(2).reshape([n, c]), 1e-12);
        let coarse = l2_normalize(self.fc7.forward(self.relu.forward(self.fc6.forward(attended.reshape([n, c * hw])))), 1e-12);
        Tensor::cat(vec![coarse, fine], 1)
    }
}

/// The higher-order learnable energy function `D_W(s, p) = Σ_ij W_ij (s_i − p_j)²`, with
/// `W = I + V` and `V` learned from zero.
#[derive(Module, Debug)]
pub struct Holef<B: Backend> {
    /// `W − I`, `[d, d]`.
    pub v: Param<Tensor<B, 2>>,
}

impl<B: Backend> Holef<B> {
    /// `W = I` for embeddings of `dim` dimensions.
    pub fn new(dim: usize, device: &B::Device) -> Self {
        Holef { v: Param::from_tensor(Tensor::zeros([dim, dim], device)) }
    }

    /// `W`, `[d, d]`.
    pub fn w(&self) -> Tensor<B, 2> {
        let v = self.v.val();
        let d = v.dims()[0];
        v + Tensor::eye(d, &self.v.device())
    }

    /// `D_W` of matching rows: `[n, d]`, `[n, d]` → `[n]`.
    pub fn pair_distances(&self, s: Tensor<B, 2>, p: Tensor<B, 2>) -> Tensor<B, 1> {
        crate::loss::pair_energy(s, p, Some(self.w()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    use crate::loss::{all_energies, pair_energy};

    type B = Flex;

    fn t(v: &[f32], shape: [usize; 2]) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
    }

    fn host<const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
        x.into_data().to_vec().expect("f32")
    }

    #[test]
    fn the_energy_is_the_weighted_outer_subtraction_and_euclidean_at_identity() {
        let (s, p) = ([0.5f32, -1.0, 2.0], [1.0f32, 0.25, -0.5]);
        let w = [0.9f32, -0.2, 0.1, 0.3, 1.1, 0.0, -0.4, 0.05, 0.7];
        // Σ_ij W_ij (s_i − p_j)², by the definition.
        let mut direct = 0.0;
        for i in 0..3 {
            for j in 0..3 {
                direct += w[i * 3 + j] * (s[i] - p[j]).powi(2);
            }
        }
        let got = host(pair_energy(t(&s, [1, 3]), t(&p, [1, 3]), Some(t(&w, [3, 3]))))[0];
        assert!((got - direct).abs() < 1e-5, "{got} vs {direct}");
        let all = host(all_energies(t(&[s, p].concat(), [2, 3]), t(&p, [1, 3]), Some(t(&w, [3, 3]))));
        assert!((all[0] - direct).abs() < 1e-5, "{all:?}");
        let euclid: f32 = s.iter().zip(&p).map(|(a, b)| (a - b).powi(2)).sum();
        let at_identity = host(Holef::<B>::new(3, &Default::default()).pair_distances(t(&s, [1, 3]), t(&p, [1, 3])))[0];
        assert!((at_identity - euclid).abs() < 1e-5 && (host(pair_energy(t(&s, [1, 3]), t(&p, [1, 3]), None))[0] - euclid).abs() < 1e-5);
        let self_energy = host(pair_energy(t(&p, [1, 3]), t(&p, [1, 3]), Some(t(&w, [3, 3]))))[0];
        assert!((all[1] - self_energy).abs() < 1e-5, "{all:?} vs {self_energy}");
    }

    #[test]
    fn the_fused_embedding_has_two_unit_halves_and_the_mask_sums_to_one() {
        let device = Default::default();
        let cfg = DssaHeadConfig::new([6, 3, 3]).with_attention(4).with_fc6(8).with_fc7(5);
        let head = cfg.init::<B>(&device);
        let x = Tensor::<B, 2>::random([4, 54], Distribution::Normal(0.0, 1.0), &device);
        let e = head.forward(x.clone());
        assert_eq!(e.dims(), [4, cfg.embedding()]);
        let sq = |t: Tensor<B, 2>| host(t.powi_scalar(2).sum_dim(1));
        for n in sq(e.clone().slice([0..4, 0..5])).into_iter().chain(sq(e.slice([0..4, 5..11]))) {
            assert!((n - 1.0).abs() < 1e-4, "{n}");
        }
        let a = host(head.attention(x).sum_dim(1));
        assert!(a.iter().all(|s| (s - 1.0).abs() < 1e-5), "{a:?}");
    }
}
