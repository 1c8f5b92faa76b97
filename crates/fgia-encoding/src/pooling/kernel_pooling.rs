//! Kernel pooling: a learned polynomial (Taylor-series) kernel approximated with Tensor Sketches.
//!
//! Cui, Zhou, Wang, Liu, Lin and Belongie, "Kernel Pooling for Convolutional Neural Networks",
//! CVPR 2017, §3. For a local feature `x`, the order-`p` feature map is
//!
//! `φ(x) = [√α₀, √α₁ x, √α₂ TS₂(x), …, √α_p TS_p(x)]`          (eq. 4, 7)
//!
//! where `TS_k(x) = FFT⁻¹(∏_{j ≤ k} FFT(Ψ_j(x)))` is the order-`k` Tensor Sketch with `k`
//! independent count sketches (eq. 5-6), so that `⟨φ(x), φ(y)⟩ ≈ Σ_k α_k ⟨x, y⟩ᵏ`. The features
//! are averaged over locations; the paper then applies the signed square root and ℓ2 (§4.1) and
//! learns `α` end to end, initialised from the Taylor expansion of a Gaussian RBF kernel fitted
//! to the data; the paper's setting is `p = 4`, `d = 4096` per order.
//!
//! Deviations, stated: `α` is initialised to the Taylor coefficients `γᵏ / k!` of `exp(γ⟨x,y⟩)`
//! with `γ` = 1 / (mean ‖x‖²) over the feature maps of up to 64 *training* images (never test
//! images; the paper fits the RBF's `γ` to the data the same way, in spirit); and since burn 0.21's autodiff has no FFT backward, the orders
//! `k ≥ 3` are computed on the detached feature map: `α`, the classifier and everything after
//! the pooling learn, but no gradient flows from those orders into the feature map. Order 2 is
//! exact with gradient (the scatter route of [`super::tensor_sketch`]). On a frozen
//! backbone (the smoke profile) this changes nothing.
//!
//! Recipe: `recipes/table2/kernel-pooling.toml` (`cargo xtask reproduce table2 --smoke --methods kernel-pooling`).

use burn::module::Param;
use burn::prelude::*;

use rayon::prelude::*;

use super::descriptors;
use super::host_fft::{add_convolution_spectrum, inverse_real};
use super::tensor_sketch::{TensorSketch, count_sketch_functions};

/// Location-averaged order-`k` Tensor Sketch (`k = funcs.len()`) of `rows` `[B M, C]`.
pub fn higher_order_pooled(rows: &[f32], b: usize, m: usize, c: usize, d: usize, funcs: &[(Vec<usize>, Vec<f32>)]) -> Vec<f32> {
    (0..b)
        .into_par_iter()
        .flat_map_iter(|img| {
            let (mut sum_re, mut sum_im) = (vec![0f64; d], vec![0f64; d]);
            for loc in 0..m {
                let x = &rows[(img * m + loc) * c..(img * m + loc + 1) * c];
                let sketches: Vec<Vec<f64>> = funcs
                    .iter()
                    .map(|(h, s)| {
                        let mut v = vec![0f64; d];
                        for i in 0..c {
                            v[h[i]] += (s[i] * x[i]) as f64;
                        }
                        v
                    })
                    .collect();
                add_convolution_spectrum(&sketches, &mut sum_re, &mut sum_im);
            }
            inverse_real(sum_re, sum_im).into_iter().map(move |v| (v / m as f64) as f32)
        })
        .collect()
}

/// Paper's order.
pub const ORDER: usize = 4;

/// The kernel pooling layer: learnable `α` over fixed sketches.
#[derive(Module, Debug)]
pub struct KernelPooling<B: Backend> {
    /// `α₀ … α_p`, stored as `log α` so they stay positive.
    pub log_alpha: Param<Tensor<B, 1>>,
    /// Order `p`.
    pub order: usize,
    /// Dimension of each sketched order.
    pub dim: usize,
    /// The exact order-2 sketch.
    #[module(skip)]
    ts2: Option<TensorSketch>,
    /// Hash and sign functions of the order-`k ≥ 3` sketches (`k` of each).
    #[module(skip)]
    higher: Vec<Vec<(Vec<usize>, Vec<f32>)>>,
}

impl<B: Backend> KernelPooling<B> {
    /// A layer of order `order` on `channels` channels with `dim`-dimensional sketches,
    /// coefficients initialised for `exp(γ ⟨x, y⟩)`.
    pub fn new(channels: usize, dim: usize, order: usize, gamma: f64, seed: u64, device: &B::Device) -> Self {
        let mut fact = 1.0;
        let log_alpha: Vec<f32> = (0..=order)
            .map(|k| {
                if k > 0 {
                    fact *= k as f64;
                }
                (gamma.powi(k as i32) / fact).ln() as f32
            })
            .collect();
        let higher =
            (3..=order).map(|k| (0..k).map(|j| count_sketch_functions(channels, dim, seed ^ ((k * 16 + j) as u64).wrapping_mul(0x9e37))).collect()).collect();
        KernelPooling {
            log_alpha: Param::from_tensor(Tensor::from_data(TensorData::new(log_alpha, [order + 1]), device)),
            order,
            dim,
            ts2: (order >= 2).then(|| TensorSketch::new(channels, dim, seed)),
            higher,
        }
    }

    /// A layer with given sketches (`ts2` for order 2, `higher[k − 3]` the `k` count-sketch
    /// functions of order `k`) and `log α`.
    pub fn from_functions(ts2: TensorSketch, higher: Vec<Vec<(Vec<usize>, Vec<f32>)>>, log_alpha: Vec<f32>, device: &B::Device) -> Self {
        let order = log_alpha.len() - 1;
        assert_eq!(higher.len(), order.saturating_sub(2), "one function set per order >= 3");
        KernelPooling {
            dim: ts2.dim,
            log_alpha: Param::from_tensor(Tensor::from_data(TensorData::new(log_alpha, [order + 1]), device)),
            order,
            ts2: Some(ts2),
            higher,
        }
    }

    /// Output size: `1 + C + (p − 1) d`.
    pub fn output_dim(&self, channels: usize) -> usize {
        1 + channels + self.order.saturating_sub(1) * self.dim
    }

    /// The location-averaged feature `[√α₀, √α₁ x̄, √α₂ TS₂, …]` (before the signed square
    /// root and ℓ2, which the caller applies).
    ///
    /// # Shapes
    /// `[B, C, h, w]` to `[B, 1 + C + (p − 1) d]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let [b, c, h, w] = x.dims();
        let m = (h * w) as f32;
        let device = x.device();
        let sqrt_alpha = (self.log_alpha.val() * 0.5).exp(); // [p + 1]
        let coef = |k: usize| sqrt_alpha.clone().slice(k..k + 1).reshape([1, 1]);
        let mut parts = vec![Tensor::<B, 2>::ones([b, 1], &device) * coef(0)];
        let desc = descriptors(x.clone()); // [B, C, M]
        if self.order >= 1 {
            parts.push(desc.clone().mean_dim(2).reshape([b, c]) * coef(1));
        }
        if let Some(ts) = &self.ts2 {
            parts.push(ts.forward(x.clone()) / m * coef(2));
        }
        if self.order >= 3 {
            // Values on the host (burn's autodiff has no FFT): constants for the graph.
            let rows: Vec<f32> = desc.detach().swap_dims(1, 2).reshape([b * h * w, c]).into_data().convert::<f32>().to_vec().unwrap_or_default();
            for (k, funcs) in (3..=self.order).zip(&self.higher) {
                let pooled = higher_order_pooled(&rows, b, h * w, c, self.dim, funcs);
                let t = Tensor::<B, 2>::from_data(TensorData::new(pooled, [b, self.dim]), &device);
                parts.push(t * coef(k));
            }
        }
        Tensor::cat(parts, 1)
    }
}
