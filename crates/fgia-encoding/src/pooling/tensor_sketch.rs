//! Compact bilinear pooling with Tensor Sketch.
//!
//! Gao, Beijbom, Zhang and Darrell, "Compact Bilinear Pooling", CVPR 2016, §3.2, Algorithm 2
//! (TS). Two count sketches `Ψ_k(x)[h_k(i)] += s_k(i) x_i` (`h_k` uniform in `0..d`, `s_k`
//! Rademacher) and their circular convolution
//!
//! `φ(x) = Ψ₁(x) ⊛ Ψ₂(x) = FFT⁻¹(FFT(Ψ₁(x)) ∘ FFT(Ψ₂(x)))`,
//!
//! summed over locations, so that `E⟨φ(x), φ(y)⟩ = ⟨x, y⟩²`. The descriptor is followed by the
//! signed square root and ℓ2 (as for B-CNN).
//!
//! Two exact computations are provided:
//! - [`TensorSketch::forward_fft`]: the paper's FFT route with burn's `rfft`/`irfft` (power-of-two
//!   `d`). burn 0.21's autodiff has no FFT backward, so it serves inference and tests.
//! - [`TensorSketch::forward`]: the same value with gradients. Expanding the convolution,
//!   `φ(x)[m] = Σ_{i,j: h₁(i)+h₂(j) ≡ m (mod d)} s₁(i) s₂(j) x_i x_j`: the sketch of a location is
//!   a fixed signed scatter of its outer product `x xᵀ` into `d` bins, and summed over locations
//!   it is the same scatter of the bilinear matrix `X Xᵀ`. That is one `[C, C]` product per image
//!   and `C²` additions, both differentiable in burn, instead of `3 M` FFTs of length `d`.
//!   The tests check both routes agree and the kernel property.
//!
//! Recipe: `recipes/table2/cbp-ts.toml` (`cargo xtask reproduce table2 --smoke --methods cbp-ts`).

use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;
use burn::tensor::signal::{irfft, rfft};
use fgia_core::rng::SplitMix64;

use super::descriptors;

/// A Tensor Sketch projection from `C` channels to `d` dimensions (constants, not parameters).
#[derive(Debug, Clone)]
pub struct TensorSketch {
    /// Output dimension `d` (a power of two).
    pub dim: usize,
    /// Input channels `C`.
    pub channels: usize,
    /// `h₁`, `h₂`.
    hashes: [Vec<usize>; 2],
    /// `s₁`, `s₂`.
    signs: [Vec<f32>; 2],
    /// Bin of each entry of the flattened outer product, `[C²]`.
    bins: Vec<i64>,
    /// Sign of each entry of the flattened outer product, `[C²]`.
    pair_signs: Vec<f32>,
}

/// Draws a count sketch's hash and sign functions for `c` inputs into `d` bins.
pub(crate) fn count_sketch_functions(c: usize, d: usize, seed: u64) -> (Vec<usize>, Vec<f32>) {
    let mut g = SplitMix64::new(seed);
    let h = (0..c).map(|_| g.below(d as u64) as usize).collect();
    let s = (0..c).map(|_| if g.coin() { 1.0 } else { -1.0 }).collect();
    (h, s)
}

/// The count sketch `[N, d]` of rows `[N, C]` (differentiable: a scatter-add).
pub(crate) fn count_sketch<B: Backend>(x: Tensor<B, 2>, h: &[usize], s: &[f32], d: usize) -> Tensor<B, 2> {
    let [n, c] = x.dims();
    let device = x.device();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(h.iter().map(|&v| v as i64).collect::<Vec<_>>(), [c]), &device);
    let signs = Tensor::<B, 1>::from_data(TensorData::new(s.to_vec(), [c]), &device);
    Tensor::zeros([n, d], &device).select_assign(1, idx, x * signs.unsqueeze::<2>(), IndexingUpdateOp::Add)
}

/// Circular convolution of rows along dimension 1 through the FFT (forward only).
pub(crate) fn circular_convolution<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    let d = a.dims()[1];
    let (ar, ai) = rfft(a, 1, None);
    let (br, bi) = rfft(b, 1, None);
    let re = ar.clone() * br.clone() - ai.clone() * bi.clone();
    let im = ar * bi + ai * br;
    irfft(re, im, 1, Some(d))
}

impl TensorSketch {
    /// A sketch from `channels` to `dim` (a power of two) dimensions, drawn from `seed`.
    ///
    /// # Panics
    /// If `dim` is not a power of two.
    pub fn new(channels: usize, dim: usize, seed: u64) -> Self {
        let (h1, s1) = count_sketch_functions(channels, dim, seed);
        let (h2, s2) = count_sketch_functions(channels, dim, seed ^ 0x7e75_0a5c_e7c4_0001);
        Self::from_functions(dim, (h1, s1), (h2, s2))
    }

    /// A sketch with given hash and sign functions (`h_k(i) < dim`, `s_k(i) = ±1`).
    ///
    /// # Panics
    /// If `dim` is not a power of two or the functions differ in length.
    pub fn from_functions(dim: usize, (h1, s1): (Vec<usize>, Vec<f32>), (h2, s2): (Vec<usize>, Vec<f32>)) -> Self {
        assert!(dim.is_power_of_two(), "Tensor Sketch dimension must be a power of two (burn's rfft), got {dim}");
        let channels = h1.len();
        assert!(s1.len() == channels && h2.len() == channels && s2.len() == channels, "hash and sign functions of one length");
        let mut bins = Vec::with_capacity(channels * channels);
        let mut ps = Vec::with_capacity(channels * channels);
        for i in 0..channels {
            for j in 0..channels {
                bins.push(((h1[i] + h2[j]) % dim) as i64);
                ps.push(s1[i] * s2[j]);
            }
        }
        TensorSketch { dim, channels, bins, pair_signs: ps, hashes: [h1, h2], signs: [s1, s2] }
    }

    /// `φ` of single vectors through the FFT (for the kernel property).
    ///
    /// # Shapes
    /// `[N, C]` to `[N, d]`.
    pub fn features_fft<B: Backend>(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let a = count_sketch(x.clone(), &self.hashes[0], &self.signs[0], self.dim);
        let b = count_sketch(x, &self.hashes[1], &self.signs[1], self.dim);
        circular_convolution(a, b)
    }

    /// Sum over locations of `φ`, through the FFT (no gradient under autodiff).
    ///
    /// # Shapes
    /// `[B, C, h, w]` to `[B, d]`.
    pub fn forward_fft<B: Backend>(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let [b, c, h, w] = x.dims();
        let rows = descriptors(x).swap_dims(1, 2).reshape([b * h * w, c]); // [B M, C]
        self.features_fft(rows).reshape([b, h * w, self.dim]).sum_dim(1).reshape([b, self.dim])
    }

    /// Sum over locations of `φ`, as a signed scatter of `X Xᵀ` (exact, differentiable).
    ///
    /// # Shapes
    /// `[B, C, h, w]` to `[B, d]`.
    pub fn forward<B: Backend>(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let [b, c, _, _] = x.dims();
        let device = x.device();
        let x = descriptors(x); // [B, C, M]
        let g = x.clone().matmul(x.swap_dims(1, 2)).reshape([b, c * c]); // [B, C²]
        let n = c * c;
        let signs = Tensor::<B, 1>::from_data(TensorData::new(self.pair_signs.clone(), [n]), &device);
        let bins = Tensor::<B, 1, Int>::from_data(TensorData::new(self.bins.clone(), [n]), &device);
        Tensor::zeros([b, self.dim], &device).select_assign(1, bins, g * signs.unsqueeze::<2>(), IndexingUpdateOp::Add)
    }
}
