//! Batch normalisation, and convolution followed by batch normalisation and an activation.
//!
//! In training on the CPU backend (`Autodiff<Flex>`), normalisation and activation are one fused
//! kernel ([`crate::kernels::batch_norm_train`]: two passes forward, two backward). Elsewhere the
//! per-channel affine map `y = a_c x + b_c` runs as a depthwise 1x1 convolution with weight `a`
//! and bias `b`: on burn-flex 0.21 an element-wise operation that broadcasts a `[C]` vector over
//! a `[N, C, H, W]` map is about 8x slower than a same-shape one (45 ms against 5 ms on
//! `[16, 96, 56, 56]`), and `burn::nn::BatchNorm` does several of them.
//!
//! Semantics are PyTorch's `BatchNorm2d`:
//! - training (autodiff backend): batch statistics over `N, H, W` (biased variance for
//!   normalising; the running variance is updated with the unbiased estimate), running averages
//!   updated with `momentum`;
//! - inference: running statistics. [`conv_bn`] then folds the normalisation into the
//!   convolution's weights, so the pair costs one convolution.
//!
//! The variance is computed in two passes, `mean((x - m)^2)` with `m` the detached batch mean:
//! numerically stable, and the gradient is unchanged because `d var / d m = 0` at the mean.

use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::prelude::*;

use crate::kernels::{self, Act, ConvGeom, conv2d, conv2d_module, module_geom};

/// `y[:, c] = a[c] * x[:, c] + b[c]`.
///
/// # Shapes
/// `x: [N, C, H, W]`, `a, b: [C]`.
pub fn channel_affine<B: Backend>(x: Tensor<B, 4>, a: Tensor<B, 1>, b: Tensor<B, 1>) -> Tensor<B, 4> {
    let c = x.dims()[1];
    conv2d(x, a.reshape([c, 1, 1, 1]), Some(b), ConvGeom { stride: [1, 1], pad_start: [0, 0], pad_end: [0, 0], dilation: [1, 1], groups: c })
}

/// `(a, b)` with `y = a x + b` from mean and variance.
fn affine_of<B: Backend>(bn: &BatchNorm<B>, mean: Tensor<B, 1>, var: Tensor<B, 1>) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let a = bn.gamma.val() / var.add_scalar(bn.epsilon).sqrt(); // [C]
    let b = bn.beta.val() - mean * a.clone(); // [C]
    (a, b)
}

/// Inference: the affine map of the running statistics.
fn inference_affine<B: Backend>(bn: &BatchNorm<B>, device: &B::Device) -> (Tensor<B, 1>, Tensor<B, 1>) {
    affine_of(bn, bn.running_mean.value().to_device(device), bn.running_var.value().to_device(device))
}

/// Updates the running statistics with a batch's (detached) mean and biased variance over
/// `count` values per channel: PyTorch's rule, the unbiased variance in the running average.
fn update_running<B: Backend>(bn: &BatchNorm<B>, mean: Tensor<B, 1>, var: Tensor<B, 1>, count: f64) {
    let device = mean.device();
    let m = bn.momentum;
    let unbiased = var.mul_scalar(count / (count - 1.0).max(1.0));
    let old_mean = bn.running_mean.value_sync().to_device(&device);
    let old_var = bn.running_var.value_sync().to_device(&device);
    bn.running_mean.update(old_mean.mul_scalar(1.0 - m).add(mean.mul_scalar(m)));
    bn.running_var.update(old_var.mul_scalar(1.0 - m).add(unbiased.mul_scalar(m)));
}

/// Training: the affine map of the batch statistics; updates the running statistics.
fn training_affine<B: Backend>(bn: &BatchNorm<B>, x: &Tensor<B, 4>) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let [n, c, h, w] = x.dims();
    let device = x.device();
    let mean = x.clone().reshape([n, c, h * w]).mean_dim(2).mean_dim(0).reshape([c]); // [C]
    let centred = channel_affine(x.clone(), Tensor::ones([c], &device), mean.clone().detach().neg());
    let var = centred.square().reshape([n, c, h * w]).mean_dim(2).mean_dim(0).reshape([c]); // [C]
    update_running(bn, mean.clone().detach(), var.clone().detach(), (n * h * w) as f64);
    affine_of(bn, mean, var)
}

fn activate<B: Backend>(x: Tensor<B, 4>, act: Act) -> Tensor<B, 4> {
    match act {
        Act::Identity => x,
        Act::Relu => burn::tensor::activation::relu(x),
        Act::Relu6 => x.clamp(0.0, 6.0),
    }
}

/// Batch normalisation of a `[N, C, H, W]` map with a `burn::nn::BatchNorm`'s parameters and
/// running statistics.
pub fn batch_norm<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    batch_norm_act(bn, x, Act::Identity)
}

/// `act(batch_norm(x))`. In training on the CPU backend the pair is one fused kernel
/// ([`crate::kernels::batch_norm_train`]).
pub fn batch_norm_act<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>, act: Act) -> Tensor<B, 4> {
    let training = B::ad_enabled(&x.device());
    if training && kernels::routes::<B>() {
        let [n, _, h, w] = x.dims();
        let (y, mean, var) = kernels::batch_norm_train(x, bn.gamma.val(), bn.beta.val(), bn.epsilon, act);
        update_running(bn, mean, var, (n * h * w) as f64);
        return y;
    }
    let (a, b) = if training { training_affine(bn, &x) } else { inference_affine(bn, &x.device()) };
    activate(channel_affine(x, a, b), act)
}

/// `bn(conv(x))`. In inference mode the normalisation is folded into the convolution
/// (`w' = a w`, `b' = a b_conv + b`), so the pair costs one convolution; in training mode the
/// convolution runs first, then [`batch_norm`].
pub fn conv_bn<B: Backend>(conv: &Conv2d<B>, bn: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    conv_bn_act(conv, bn, x, Act::Identity)
}

/// `act(bn(conv(x)))`, as [`conv_bn`] (the activation fused into the normalisation in training
/// on the CPU backend).
pub fn conv_bn_act<B: Backend>(conv: &Conv2d<B>, bn: &BatchNorm<B>, x: Tensor<B, 4>, act: Act) -> Tensor<B, 4> {
    if B::ad_enabled(&x.device()) {
        return batch_norm_act(bn, conv2d_module(conv, x), act);
    }
    let [_, _, h, w] = x.dims();
    let out = conv.weight.dims()[0];
    let (a, b) = inference_affine(bn, &x.device());
    let weight = if kernels::routes::<B>() {
        // `w[o] * a[o]` as a per-channel affine map of the weight viewed as one `[1, out, in,
        // k²]` image: burn-flex's broadcast multiply walks strided indices, and at batch 1 it
        // took most of the forward.
        let [o, i, kh, kw] = conv.weight.dims();
        let w = conv.weight.val().reshape([1, o, i, kh * kw]);
        channel_affine(w, a.clone(), Tensor::zeros([o], &a.device())).reshape([o, i, kh, kw])
    } else {
        conv.weight.val() * a.clone().reshape([out, 1, 1, 1])
    };
    let bias = match &conv.bias {
        Some(cb) => cb.val() * a + b,
        None => b,
    };
    activate(conv2d(x, weight, Some(bias), module_geom(conv, h, w)), act)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::{BatchNormConfig, PaddingConfig2d};
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Distribution, Tolerance};

    fn randomised_bn<B: Backend>(c: usize, device: &B::Device) -> BatchNorm<B> {
        let mut bn = BatchNormConfig::new(c).with_epsilon(1e-3).with_momentum(0.1).init::<B>(device);
        bn.gamma = bn.gamma.map(|_| Tensor::random([c], Distribution::Uniform(0.5, 1.5), device).require_grad());
        bn.beta = bn.beta.map(|_| Tensor::random([c], Distribution::Uniform(-0.5, 0.5), device).require_grad());
        bn.running_mean.update(Tensor::random([c], Distribution::Uniform(-0.5, 0.5), device));
        bn.running_var.update(Tensor::random([c], Distribution::Uniform(0.5, 2.0), device));
        bn
    }

    #[test]
    fn inference_matches_burn_batch_norm() {
        let device = Default::default();
        let bn = randomised_bn::<Flex>(5, &device);
        let x = Tensor::<Flex, 4>::random([3, 5, 7, 6], Distribution::Normal(1.0, 2.0), &device);
        batch_norm(&bn, x.clone()).into_data().assert_approx_eq::<f32>(&bn.forward(x).into_data(), Tolerance::absolute(1e-5));
    }

    #[test]
    fn training_matches_burn_batch_norm_values_gradients_and_running_mean() {
        type A = Autodiff<Flex>;
        let device = Default::default();
        let bn = randomised_bn::<A>(4, &device);
        let x = Tensor::<A, 4>::random([3, 4, 5, 5], Distribution::Normal(3.0, 2.0), &device).require_grad();
        let w = Tensor::<A, 4>::random([3, 4, 5, 5], Distribution::Normal(0.0, 1.0), &device);
        let ours = batch_norm(&bn, x.clone());
        let theirs = bn.forward(x.clone());
        ours.clone().into_data().assert_approx_eq::<f32>(&theirs.clone().into_data(), Tolerance::absolute(1e-4));
        let g1 = (ours * w.clone()).sum().backward();
        let g2 = (theirs * w).sum().backward();
        let (gx1, gx2) = (x.grad(&g1).expect("grad"), x.grad(&g2).expect("grad"));
        gx1.into_data().assert_approx_eq::<f32>(&gx2.into_data(), Tolerance::absolute(1e-4));
        let (gg1, gg2) = (bn.gamma.val().grad(&g1).expect("grad"), bn.gamma.val().grad(&g2).expect("grad"));
        gg1.into_data().assert_approx_eq::<f32>(&gg2.into_data(), Tolerance::absolute(1e-3));
    }

    #[test]
    fn training_updates_running_statistics_like_pytorch() {
        type A = Autodiff<Flex>;
        let device = Default::default();
        let bn = BatchNormConfig::new(2).with_momentum(0.1).init::<A>(&device);
        // Channel 0 holds 1..=4, channel 1 holds 10 (constant).
        let x = Tensor::<A, 4>::from_data([[[[1.0f32, 2.0], [3.0, 4.0]], [[10.0, 10.0], [10.0, 10.0]]]], &device);
        let _ = batch_norm(&bn, x);
        let mean: Vec<f32> = bn.running_mean.value_sync().into_data().to_vec().expect("f32");
        let var: Vec<f32> = bn.running_var.value_sync().into_data().to_vec().expect("f32");
        // mean 2.5 -> 0.25; unbiased var 5/3 -> 0.9 + 0.1 * 5/3.
        assert!((mean[0] - 0.25).abs() < 1e-6 && (mean[1] - 1.0).abs() < 1e-6, "{mean:?}");
        assert!((var[0] - (0.9 + 0.5 / 3.0)).abs() < 1e-5 && (var[1] - 0.9).abs() < 1e-6, "{var:?}");
    }

    #[test]
    fn folded_conv_bn_matches_separate_ops_for_every_padding() {
        let device = Default::default();
        for (k, s, pad, groups) in [
            (3, 2, PaddingConfig2d::Same, 6),
            (3, 1, PaddingConfig2d::Explicit(1, 1, 1, 1), 1),
            (1, 1, PaddingConfig2d::Valid, 1),
            (5, 2, PaddingConfig2d::Same, 1),
        ] {
            let conv = Conv2dConfig::new([6, 6], [k, k]).with_stride([s, s]).with_padding(pad).with_groups(groups).with_bias(groups == 1).init::<Flex>(&device);
            let bn = randomised_bn::<Flex>(6, &device);
            let x = Tensor::<Flex, 4>::random([2, 6, 9, 8], Distribution::Normal(0.0, 1.0), &device);
            let want = bn.forward(conv.forward(x.clone()));
            conv_bn(&conv, &bn, x).into_data().assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-4));
        }
    }
}
