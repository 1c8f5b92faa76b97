//! High-order pooling layers (§5.2.1).

pub mod bcnn;
pub mod compact_bilinear;
pub mod grouped_bilinear;
pub mod hbp;
pub mod host_fft;
pub mod isqrt_cov;
pub mod kernel_pooling;
pub mod lrbp;
pub mod mpn_cov;
pub mod tensor_sketch;

use burn::nn::conv::Conv2d;
use burn::prelude::*;

/// `[B, C, h, w]` to `[B, C, M]` with `M = h w` (the descriptors of one image as columns).
pub fn descriptors<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h * w])
}

/// Sample covariance of the descriptors, `Σ = (1/M) X Ī Xᵀ` with `Ī = I − 11ᵀ/M` (the
/// covariance pooling of MPN-COV and iSQRT-COV).
///
/// # Shapes
/// `[B, C, M]` to `[B, C, C]`.
pub fn covariance<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    let m = x.dims()[2];
    let centred = x.clone() - x.mean_dim(2); // [B, C, M]
    fgia_nn::kernels::gram(centred, 1.0 / m as f32)
}

/// The upper triangle (diagonal included, row-major) of each matrix: `C (C + 1) / 2` values.
///
/// # Shapes
/// `[B, C, C]` to `[B, C (C + 1) / 2]`.
pub fn upper_triangle<B: Backend>(a: Tensor<B, 3>) -> Tensor<B, 2> {
    let [b, c, _] = a.dims();
    let idx: Vec<i64> = (0..c).flat_map(|i| (i..c).map(move |j| (i * c + j) as i64)).collect();
    let n = idx.len();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [n]), &a.device());
    a.reshape([b, c * c]).select(1, idx)
}

/// Signed square root `sign(x) √(|x| + ε)` followed by ℓ2 normalisation of each row: the
/// normalisation of bilinear features (Lin et al., ICCV 2015).
pub fn sqrt_l2<B: Backend>(z: Tensor<B, 2>, eps: f64) -> Tensor<B, 2> {
    fgia_nn::kernels::sqrt_l2(z, eps, 1e-12)
}

/// A 1x1 convolution: `conv.forward(x)` for a 1x1, stride-1, unpadded convolution. On the CPU
/// backend it runs `fgia_nn::kernels` (one matrix product per image, forward and backward);
/// elsewhere it is one batched matrix product, `W [C_out, C] x X [C, M]` per image, plus the
/// bias as a per-channel affine map.
///
/// # Panics
/// If `conv` is not a 1x1 convolution without groups.
pub fn pointwise<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let [out, inp, kh, kw] = conv.weight.dims();
    assert!(kh == 1 && kw == 1 && inp == c && conv.groups == 1, "pointwise: a 1x1 convolution from {c} channels, got {:?}", conv.weight.dims());
    if fgia_nn::kernels::routes::<B>() {
        return fgia_nn::kernels::conv2d_module(conv, x);
    }
    let y = conv.weight.val().reshape([1, out, c]).matmul(x.reshape([b, c, h * w])).reshape([b, out, h, w]);
    match &conv.bias {
        Some(bias) => fgia_nn::norm::channel_affine(y, Tensor::ones([out], &bias.device()), bias.val()),
        None => y,
    }
}

/// Identity matrices `[B, C, C]`.
pub(crate) fn eye<B: Backend>(b: usize, c: usize, device: &B::Device) -> Tensor<B, 3> {
    Tensor::<B, 2>::eye(c, device).unsqueeze::<3>().repeat_dim(0, b)
}

/// Trace of each matrix, `[B, 1, 1]`.
pub(crate) fn trace<B: Backend>(a: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, c, _] = a.dims();
    let device = a.device();
    (a * eye::<B>(1, c, &device)).sum_dim(2).sum_dim(1).reshape([b, 1, 1])
}
