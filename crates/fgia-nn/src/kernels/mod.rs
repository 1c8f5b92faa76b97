//! Our own CPU kernels where burn-flex's are slow, reached through burn's backend-extension
//! pattern, and the entry points model code calls.
//!
//! [`KernelOps`] extends `Backend` with the operations:
//! - `Flex` implements them with the kernels of [`conv`] and [`gram`] (contiguous `f32` NCHW
//!   slices, matrix products by the `gemm` crate, rayon over the batch);
//! - `Autodiff<B: KernelOps>` implements them as one tracked operation whose backward calls `B`'s
//!   backward kernels. burn's own `conv2d` backward goes through a transposed convolution and a
//!   weight-gradient convolution that cost several times the forward on the CPU; a matrix
//!   product `X Xᵀ` differentiates as two general products where one suffices.
//!
//! Model code stays generic over `B: Backend` and calls [`conv2d`], [`conv2d_module`] or
//! [`gram`]. Where `B` is `Flex` or `Autodiff<Flex>` (and the tensors are `f32`), they route to
//! [`KernelOps`] by comparing `TypeId`s and moving the tensor primitives across with a checked
//! `Any` downcast: no bound changes anywhere, no `unsafe`. Every other backend, CUDA included,
//! runs burn's own composition, unchanged.
//!
//! `FGIA_KERNELS=burn` turns the routing off (burn's composition everywhere): the switch the
//! benchmarks use for before-and-after figures in one process, and a fallback should a kernel
//! ever be suspected.

pub mod conv;
pub mod gemm;
pub mod gram;
pub mod norm;
pub mod rows;

use std::any::{Any, TypeId};
use std::sync::OnceLock;

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{FloatTensor, PaddedConvOptions};
use burn::tensor::{DType, TensorMetadata, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};

pub use conv::{ConvGeom, ConvKind, Needs};
pub use norm::Act;

/// Whether model code routes to [`KernelOps`] (`FGIA_KERNELS` is not `burn`).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("FGIA_KERNELS").map(|v| v != "burn").unwrap_or(true))
}

/// A backend with this crate's kernels: convolution and the Gram product, forward and backward.
///
/// Implementations must give the values of burn's composition ([`composed_conv2d`],
/// `x.matmul(x.swap_dims(1, 2))`) to float rounding; the tests check `Flex` and
/// `Autodiff<Flex>` against it to 1e-4 relative.
pub trait KernelOps: Backend {
    /// 2-D convolution. `x: [N, C_in, H, W]`, `w: [C_out, C_in / groups, k_h, k_w]`, `bias:
    /// [C_out]`.
    fn fgia_conv2d(x: FloatTensor<Self>, w: FloatTensor<Self>, bias: Option<FloatTensor<Self>>, geom: ConvGeom) -> FloatTensor<Self>;

    /// The gradients `(dx, dw, dbias)` of [`Self::fgia_conv2d`] for `dy`, those `needs` asks for.
    fn fgia_conv2d_backward(x: FloatTensor<Self>, w: FloatTensor<Self>, dy: FloatTensor<Self>, geom: ConvGeom, needs: Needs) -> [Option<FloatTensor<Self>>; 3];

    /// `scale X Xᵀ` of `x: [B, C, M]`, `[B, C, C]`.
    fn fgia_gram(x: FloatTensor<Self>, scale: f32) -> FloatTensor<Self>;

    /// The gradient of [`Self::fgia_gram`]: `scale (dG + dGᵀ) X`.
    fn fgia_gram_backward(x: FloatTensor<Self>, dg: FloatTensor<Self>, scale: f32) -> FloatTensor<Self>;

    /// Batch normalisation with batch statistics, then `act`: `[y, mean, var]` with the batch's
    /// per-channel mean and biased variance (`[C]`, not tracked). `x: [N, C, H, W]`.
    fn fgia_batch_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, eps: f32, act: Act) -> [FloatTensor<Self>; 3];

    /// Per row of `z: [B, D]`, `s = sign(z) √(|z| + eps)` then `s / max(‖s‖, delta)`.
    fn fgia_sqrt_l2(z: FloatTensor<Self>, eps: f32, delta: f32) -> FloatTensor<Self>;

    /// The gradient of [`Self::fgia_sqrt_l2`] for `dy`.
    fn fgia_sqrt_l2_backward(z: FloatTensor<Self>, eps: f32, delta: f32, dy: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The gradients `[dx, dγ, dβ]` of [`Self::fgia_batch_norm`]'s `y` for `dy`.
    #[allow(clippy::too_many_arguments)]
    fn fgia_batch_norm_backward(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, mean: FloatTensor<Self>, var: FloatTensor<Self>, eps: f32, act: Act, dy: FloatTensor<Self>) -> [FloatTensor<Self>; 3];
}

// ---------------------------------------------------------------------------------------------
// burn's composition, the reference and the fallback.

fn wrap<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// burn's own convolution for `geom` (padding the input first where the padding is uneven).
pub fn composed_conv2d<B: Backend>(x: Tensor<B, 4>, w: Tensor<B, 4>, bias: Option<Tensor<B, 1>>, geom: ConvGeom) -> Tensor<B, 4> {
    burn::tensor::module::conv2d(x, w, bias, PaddedConvOptions::asymmetric(geom.stride, geom.pad_start, geom.pad_end, geom.dilation, geom.groups))
}

/// burn's own `scale X Xᵀ`.
pub fn composed_gram<B: Backend>(x: Tensor<B, 3>, scale: f32) -> Tensor<B, 3> {
    x.clone().matmul(x.swap_dims(1, 2)).mul_scalar(scale)
}

/// burn's composition of [`KernelOps::fgia_batch_norm`]: `[y, mean, var]`.
pub fn composed_batch_norm<B: Backend>(x: Tensor<B, 4>, gamma: Tensor<B, 1>, beta: Tensor<B, 1>, eps: f32, act: Act) -> [Tensor<B, 4>; 2]
where
    B: Backend,
{
    let [n, c, h, w] = x.dims();
    let mean = x.clone().swap_dims(0, 1).reshape([c, n * h * w]).mean_dim(1).reshape([1, c, 1, 1]);
    let centred = x - mean.clone();
    let var = centred.clone().square().swap_dims(0, 1).reshape([c, n * h * w]).mean_dim(1).reshape([1, c, 1, 1]);
    let z = centred / var.clone().add_scalar(eps).sqrt() * gamma.reshape([1, c, 1, 1]) + beta.reshape([1, c, 1, 1]);
    let y = match act {
        Act::Identity => z,
        Act::Relu => z.clamp_min(0.0),
        Act::Relu6 => z.clamp(0.0, 6.0),
    };
    [y, Tensor::cat(vec![mean, var], 0)]
}

/// burn's composition of [`KernelOps::fgia_sqrt_l2`].
pub fn composed_sqrt_l2<B: Backend>(z: Tensor<B, 2>, eps: f32, delta: f32) -> Tensor<B, 2> {
    crate::ops::l2_normalize(crate::ops::signed_sqrt(z, eps as f64), delta as f64)
}

/// burn's gradients of its convolution: its own autodiff, run on `B`'s values.
fn composed_conv2d_backward<B: Backend>(x: FloatTensor<B>, w: FloatTensor<B>, dy: FloatTensor<B>, geom: ConvGeom, needs: Needs) -> [Option<FloatTensor<B>>; 3] {
    type Ad<B> = Autodiff<B>;
    let x = Tensor::<Ad<B>, 4>::from_inner(wrap(x)).require_grad();
    let w = Tensor::<Ad<B>, 4>::from_inner(wrap(w)).require_grad();
    let dy = Tensor::<Ad<B>, 4>::from_inner(wrap(dy));
    let bias = needs.bias.then(|| Tensor::<Ad<B>, 1>::zeros([w.dims()[0]], &w.device()).require_grad());
    let grads = (composed_conv2d(x.clone(), w.clone(), bias.clone(), geom) * dy).sum().backward();
    let grad = |t: Option<Tensor<Ad<B>, 4>>| t.and_then(|t| t.grad(&grads)).map(|g| g.into_primitive().tensor());
    let db = bias.and_then(|b| b.grad(&grads)).map(|g| g.into_primitive().tensor());
    [grad(needs.x.then_some(x)), grad(needs.w.then_some(w)), db]
}

// ---------------------------------------------------------------------------------------------
// Flex: our kernels.

/// The `f32` values of a Flex tensor in row-major order, and its shape.
fn host<const D: usize>(t: &FlexTensor) -> (std::borrow::Cow<'_, [f32]>, [usize; D]) {
    let shape = t.shape().dims::<D>();
    match t.as_slice::<f32>() {
        Some(s) => (std::borrow::Cow::Borrowed(s), shape),
        None => (std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().expect("contiguous f32").to_vec()), shape),
    }
}

fn flex<const D: usize>(v: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

fn is_f32(ts: &[&FlexTensor]) -> bool {
    ts.iter().all(|t| t.dtype() == DType::F32)
}

impl KernelOps for Flex {
    fn fgia_conv2d(x: FlexTensor, w: FlexTensor, bias: Option<FlexTensor>, geom: ConvGeom) -> FlexTensor {
        let supported = is_f32(&[&x, &w]) && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32) && geom.kind(x.shape().dims(), w.shape().dims()).is_some();
        if !supported {
            return composed_conv2d(wrap::<Flex, 4>(x), wrap(w), bias.map(wrap), geom).into_primitive().tensor();
        }
        let (xv, xs) = host::<4>(&x);
        let (wv, ws) = host::<4>(&w);
        let bv = bias.as_ref().map(host::<1>);
        let (y, ys) = conv::forward(&xv, xs, &wv, ws, bv.as_ref().map(|(b, _)| &b[..]), &geom);
        flex(y, ys)
    }

    fn fgia_conv2d_backward(x: FlexTensor, w: FlexTensor, dy: FlexTensor, geom: ConvGeom, needs: Needs) -> [Option<FlexTensor>; 3] {
        if !is_f32(&[&x, &w, &dy]) || geom.kind(x.shape().dims(), w.shape().dims()).is_none() {
            return composed_conv2d_backward::<Flex>(x, w, dy, geom, needs);
        }
        let (xv, xs) = host::<4>(&x);
        let (wv, ws) = host::<4>(&w);
        let (dyv, _) = host::<4>(&dy);
        let (dx, dw, db) = conv::backward(&xv, xs, &wv, ws, &dyv, &geom, needs);
        [dx.map(|v| flex(v, xs)), dw.map(|v| flex(v, ws)), db.map(|v| flex(v, [ws[0]]))]
    }

    fn fgia_gram(x: FlexTensor, scale: f32) -> FlexTensor {
        if !is_f32(&[&x]) {
            return composed_gram(wrap::<Flex, 3>(x), scale).into_primitive().tensor();
        }
        let (xv, [b, c, m]) = host::<3>(&x);
        flex(gram::forward(&xv, [b, c, m], scale), [b, c, c])
    }

    fn fgia_gram_backward(x: FlexTensor, dg: FlexTensor, scale: f32) -> FlexTensor {
        if !is_f32(&[&x, &dg]) {
            let (x, dg) = (wrap::<Flex, 3>(x), wrap::<Flex, 3>(dg));
            return (dg.clone() + dg.swap_dims(1, 2)).matmul(x).mul_scalar(scale).into_primitive().tensor();
        }
        let (xv, shape) = host::<3>(&x);
        let (dgv, _) = host::<3>(&dg);
        flex(gram::backward(&xv, shape, &dgv, scale), shape)
    }

    fn fgia_sqrt_l2(z: FlexTensor, eps: f32, delta: f32) -> FlexTensor {
        if !is_f32(&[&z]) {
            return composed_sqrt_l2(wrap::<Flex, 2>(z), eps, delta).into_primitive().tensor();
        }
        let (zv, shape) = host::<2>(&z);
        flex(rows::forward(&zv, shape[1], eps, delta), shape)
    }

    fn fgia_sqrt_l2_backward(z: FlexTensor, eps: f32, delta: f32, dy: FlexTensor) -> FlexTensor {
        if !is_f32(&[&z, &dy]) {
            let z = Tensor::<Autodiff<Flex>, 2>::from_inner(wrap(z)).require_grad();
            let grads = (composed_sqrt_l2(z.clone(), eps, delta) * Tensor::from_inner(wrap::<Flex, 2>(dy))).sum().backward();
            return z.grad(&grads).unwrap_or_else(|| z.clone().inner().zeros_like()).into_primitive().tensor();
        }
        let (zv, shape) = host::<2>(&z);
        let (dyv, _) = host::<2>(&dy);
        flex(rows::backward(&zv, shape[1], eps, delta, &dyv), shape)
    }

    fn fgia_batch_norm(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, eps: f32, act: Act) -> [FlexTensor; 3] {
        if !is_f32(&[&x, &gamma, &beta]) {
            let [y, stats] = composed_batch_norm(wrap::<Flex, 4>(x), wrap(gamma), wrap(beta), eps, act);
            let c = stats.dims()[1];
            let stats = stats.reshape([2, c]);
            let (mean, var) = (stats.clone().slice([0..1, 0..c]).reshape([c]), stats.slice([1..2, 0..c]).reshape([c]));
            return [y.into_primitive().tensor(), mean.into_primitive().tensor(), var.into_primitive().tensor()];
        }
        let (xv, [n, c, h, w]) = host::<4>(&x);
        let (g, _) = host::<1>(&gamma);
        let (b, _) = host::<1>(&beta);
        let (y, stats) = norm::forward(&xv, [n, c, h * w], &g, &b, eps, act);
        [flex(y, [n, c, h, w]), flex(stats.mean, [c]), flex(stats.var, [c])]
    }

    fn fgia_batch_norm_backward(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, mean: FlexTensor, var: FlexTensor, eps: f32, act: Act, dy: FlexTensor) -> [FlexTensor; 3] {
        if !is_f32(&[&x, &gamma, &beta, &mean, &var, &dy]) {
            // burn's autodiff on the composition (which recomputes the statistics from `x`).
            let _ = (mean, var);
            let x = Tensor::<Autodiff<Flex>, 4>::from_inner(wrap(x)).require_grad();
            let gamma = Tensor::<Autodiff<Flex>, 1>::from_inner(wrap(gamma)).require_grad();
            let beta = Tensor::<Autodiff<Flex>, 1>::from_inner(wrap(beta)).require_grad();
            let [y, _] = composed_batch_norm(x.clone(), gamma.clone(), beta.clone(), eps, act);
            let grads = (y * Tensor::from_inner(wrap::<Flex, 4>(dy))).sum().backward();
            let zero = |t: &Tensor<Autodiff<Flex>, 1>| t.grad(&grads).unwrap_or_else(|| t.clone().inner().zeros_like());
            let dx = x.grad(&grads).unwrap_or_else(|| x.clone().inner().zeros_like());
            return [dx.into_primitive().tensor(), zero(&gamma).into_primitive().tensor(), zero(&beta).into_primitive().tensor()];
        }
        let (xv, [n, c, h, w]) = host::<4>(&x);
        let (g, _) = host::<1>(&gamma);
        let (b, _) = host::<1>(&beta);
        let stats = norm::Stats { mean: host::<1>(&mean).0.into_owned(), var: host::<1>(&var).0.into_owned() };
        let (dyv, _) = host::<4>(&dy);
        let (dx, dg, db) = norm::backward(&xv, [n, c, h * w], &g, &b, &stats, eps, act, &dyv);
        [flex(dx, [n, c, h, w]), flex(dg, [c]), flex(db, [c])]
    }
}

// ---------------------------------------------------------------------------------------------
// Autodiff: one tracked operation, backward by the inner backend's kernels.

#[derive(Debug)]
struct ConvBackward;

impl<B: KernelOps, const N: usize> Backward<B, N> for ConvBackward {
    type State = (NodeId, NodeId, ConvGeom);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, w_state, geom) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
        let w = checkpointer.retrieve_node_output::<FloatTensor<B>>(w_state);
        let parent = |i: usize| ops.parents.get(i).and_then(|p| p.clone());
        let (px, pw, pb) = (parent(0), parent(1), parent(2));
        let needs = Needs { x: px.is_some(), w: pw.is_some(), bias: pb.is_some() };
        let [dx, dw, db] = B::fgia_conv2d_backward(x, w, grad, geom, needs);
        for (node, g) in [(px, dx), (pw, dw), (pb, db)] {
            if let (Some(node), Some(g)) = (node, g) {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

#[derive(Debug)]
struct GramBackward;

impl<B: KernelOps> Backward<B, 1> for GramBackward {
    type State = (NodeId, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, scale) = ops.state;
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
            grads.register::<B>(node.id, B::fgia_gram_backward(x, grad, scale));
        }
    }
}

#[derive(Debug)]
struct SqrtL2Backward;

impl<B: KernelOps> Backward<B, 1> for SqrtL2Backward {
    type State = (NodeId, f32, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (z_state, eps, delta) = ops.state;
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let z = checkpointer.retrieve_node_output::<FloatTensor<B>>(z_state);
            grads.register::<B>(node.id, B::fgia_sqrt_l2_backward(z, eps, delta, grad));
        }
    }
}

#[derive(Debug)]
struct BatchNormBackward;

impl<B: KernelOps> Backward<B, 3> for BatchNormBackward {
    /// `x`, `γ`, `β` (checkpointed), the batch mean and variance, `ε`, the activation.
    type State = (NodeId, NodeId, NodeId, FloatTensor<B>, FloatTensor<B>, f32, Act);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, gamma_state, beta_state, mean, var, eps, act) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
        let gamma = checkpointer.retrieve_node_output::<FloatTensor<B>>(gamma_state);
        let beta = checkpointer.retrieve_node_output::<FloatTensor<B>>(beta_state);
        let [dx, dg, db] = B::fgia_batch_norm_backward(x, gamma, beta, mean, var, eps, act, grad);
        let [px, pg, pb] = ops.parents;
        for (node, g) in [(px, dx), (pg, dg), (pb, db)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

impl<B: KernelOps, C: CheckpointStrategy> KernelOps for Autodiff<B, C> {
    fn fgia_conv2d(x: FloatTensor<Self>, w: FloatTensor<Self>, bias: Option<FloatTensor<Self>>, geom: ConvGeom) -> FloatTensor<Self> {
        match bias {
            Some(bias) => match ConvBackward.prepare::<C>([x.node.clone(), w.node.clone(), bias.node.clone()]).compute_bound().stateful() {
                OpsKind::Tracked(mut prep) => {
                    let state = (prep.checkpoint(&x), prep.checkpoint(&w), geom);
                    prep.finish(state, B::fgia_conv2d(x.primitive, w.primitive, Some(bias.primitive), geom))
                }
                OpsKind::UnTracked(prep) => prep.finish(B::fgia_conv2d(x.primitive, w.primitive, Some(bias.primitive), geom)),
            },
            None => match ConvBackward.prepare::<C>([x.node.clone(), w.node.clone()]).compute_bound().stateful() {
                OpsKind::Tracked(mut prep) => {
                    let state = (prep.checkpoint(&x), prep.checkpoint(&w), geom);
                    prep.finish(state, B::fgia_conv2d(x.primitive, w.primitive, None, geom))
                }
                OpsKind::UnTracked(prep) => prep.finish(B::fgia_conv2d(x.primitive, w.primitive, None, geom)),
            },
        }
    }

    fn fgia_conv2d_backward(x: FloatTensor<Self>, w: FloatTensor<Self>, dy: FloatTensor<Self>, geom: ConvGeom, needs: Needs) -> [Option<FloatTensor<Self>>; 3] {
        // Not differentiated again: the values, untracked.
        B::fgia_conv2d_backward(Self::inner(x), Self::inner(w), Self::inner(dy), geom, needs).map(|g| g.map(Self::from_inner))
    }

    fn fgia_gram(x: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        match GramBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), scale);
                prep.finish(state, B::fgia_gram(x.primitive, scale))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fgia_gram(x.primitive, scale)),
        }
    }

    fn fgia_gram_backward(x: FloatTensor<Self>, dg: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        Self::from_inner(B::fgia_gram_backward(Self::inner(x), Self::inner(dg), scale))
    }

    fn fgia_sqrt_l2(z: FloatTensor<Self>, eps: f32, delta: f32) -> FloatTensor<Self> {
        match SqrtL2Backward.prepare::<C>([z.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&z), eps, delta);
                prep.finish(state, B::fgia_sqrt_l2(z.primitive, eps, delta))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fgia_sqrt_l2(z.primitive, eps, delta)),
        }
    }

    fn fgia_sqrt_l2_backward(z: FloatTensor<Self>, eps: f32, delta: f32, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::fgia_sqrt_l2_backward(Self::inner(z), eps, delta, Self::inner(dy)))
    }

    fn fgia_batch_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, eps: f32, act: Act) -> [FloatTensor<Self>; 3] {
        let nodes = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
        match BatchNormBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let (xs, gs, bs) = (prep.checkpoint(&x), prep.checkpoint(&gamma), prep.checkpoint(&beta));
                let [y, mean, var] = B::fgia_batch_norm(x.primitive, gamma.primitive, beta.primitive, eps, act);
                let state = (xs, gs, bs, mean.clone(), var.clone(), eps, act);
                [prep.finish(state, y), Self::from_inner(mean), Self::from_inner(var)]
            }
            OpsKind::UnTracked(prep) => {
                let [y, mean, var] = B::fgia_batch_norm(x.primitive, gamma.primitive, beta.primitive, eps, act);
                [prep.finish(y), Self::from_inner(mean), Self::from_inner(var)]
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fgia_batch_norm_backward(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, mean: FloatTensor<Self>, var: FloatTensor<Self>, eps: f32, act: Act, dy: FloatTensor<Self>) -> [FloatTensor<Self>; 3] {
        B::fgia_batch_norm_backward(Self::inner(x), Self::inner(gamma), Self::inner(beta), Self::inner(mean), Self::inner(var), eps, act, Self::inner(dy)).map(Self::from_inner)
    }
}

// ---------------------------------------------------------------------------------------------
// Routing from generic model code.

/// `t` as a tensor of backend `K`, where `B` is `K` (same `TypeId`) and `t` holds floats.
fn recast<B: Backend, K: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<K, D> {
    match t.into_primitive() {
        TensorPrimitive::Float(p) => {
            let any: Box<dyn Any> = Box::new(p);
            wrap(*any.downcast::<FloatTensor<K>>().expect("recast only between one backend's own types"))
        }
        TensorPrimitive::QFloat(_) => panic!("recast of a quantized tensor (callers check the dtype)"),
    }
}

/// The backends [`KernelOps`] is routed to from generic code.
#[derive(Clone, Copy)]
enum Route {
    Flex,
    AutodiffFlex,
}

/// Whether `f32` tensors of `B` run on [`KernelOps`] (`Flex` and `Autodiff<Flex>`, unless
/// `FGIA_KERNELS=burn`).
pub fn routes<B: Backend>() -> bool {
    route::<B>(&[DType::F32]).is_some()
}

fn route<B: Backend>(dtypes: &[DType]) -> Option<Route> {
    if !enabled() || dtypes.iter().any(|d| *d != DType::F32) {
        return None;
    }
    let id = TypeId::of::<B>();
    if id == TypeId::of::<Flex>() {
        Some(Route::Flex)
    } else if id == TypeId::of::<Autodiff<Flex>>() {
        Some(Route::AutodiffFlex)
    } else {
        None
    }
}

fn conv_on<B: Backend, K: KernelOps>(x: Tensor<B, 4>, w: Tensor<B, 4>, bias: Option<Tensor<B, 1>>, geom: ConvGeom) -> Tensor<B, 4> {
    let p = |t: Tensor<K, 4>| t.into_primitive().tensor();
    let out = K::fgia_conv2d(p(recast(x)), p(recast(w)), bias.map(|b| recast::<B, K, 1>(b).into_primitive().tensor()), geom);
    recast(wrap::<K, 4>(out))
}

/// 2-D convolution with per-side padding: our kernels on `Flex` and `Autodiff<Flex>`, burn's
/// composition elsewhere.
///
/// # Shapes
/// `x: [N, C_in, H, W]`, `w: [C_out, C_in / groups, k_h, k_w]`, `bias: [C_out]` to
/// `[N, C_out, H_out, W_out]`.
pub fn conv2d<B: Backend>(x: Tensor<B, 4>, w: Tensor<B, 4>, bias: Option<Tensor<B, 1>>, geom: ConvGeom) -> Tensor<B, 4> {
    let mut dtypes = vec![x.dtype(), w.dtype()];
    dtypes.extend(bias.as_ref().map(|b| b.dtype()));
    let ours = geom.kind(x.dims(), w.dims()).is_some();
    match route::<B>(&dtypes).filter(|_| ours) {
        Some(Route::Flex) => conv_on::<B, Flex>(x, w, bias, geom),
        Some(Route::AutodiffFlex) => conv_on::<B, Autodiff<Flex>>(x, w, bias, geom),
        None => composed_conv2d(x, w, bias, geom),
    }
}

/// The geometry of a `burn::nn::conv::Conv2d` on an input of `h x w`.
pub fn module_geom<B: Backend>(conv: &Conv2d<B>, h: usize, w: usize) -> ConvGeom {
    let (pad_start, pad_end) = match &conv.padding {
        PaddingConfig2d::Valid => ([0, 0], [0, 0]),
        PaddingConfig2d::Explicit(top, left, bottom, right) => ([*top, *left], [*bottom, *right]),
        PaddingConfig2d::Same => {
            // TensorFlow "SAME": ceil(in / stride) outputs, the extra pixel at the end.
            let same = |size: usize, k: usize, s: usize, d: usize| {
                let out = size.div_ceil(s);
                let eff = (k - 1) * d + 1;
                let total = ((out - 1) * s + eff).saturating_sub(size);
                (total / 2, total - total / 2)
            };
            let (t, b) = same(h, conv.kernel_size[0], conv.stride[0], conv.dilation[0]);
            let (l, r) = same(w, conv.kernel_size[1], conv.stride[1], conv.dilation[1]);
            ([t, l], [b, r])
        }
    };
    ConvGeom { stride: conv.stride, pad_start, pad_end, dilation: conv.dilation, groups: conv.groups }
}

/// `conv.forward(x)` through [`conv2d`].
pub fn conv2d_module<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    let geom = module_geom(conv, h, w);
    conv2d(x, conv.weight.val(), conv.bias.as_ref().map(|b| b.val()), geom)
}

/// Training-mode batch normalisation with the batch's statistics, then `act`: our fused kernel
/// on `Flex` and `Autodiff<Flex>`, burn's composition elsewhere. Returns `y` and the batch's
/// per-channel mean and biased variance (`[C]`, detached).
///
/// # Shapes
/// `x: [N, C, H, W]`, `gamma, beta: [C]`.
pub fn batch_norm_train<B: Backend>(x: Tensor<B, 4>, gamma: Tensor<B, 1>, beta: Tensor<B, 1>, eps: f64, act: Act) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>) {
    fn on<B: Backend, K: KernelOps>(x: Tensor<B, 4>, gamma: Tensor<B, 1>, beta: Tensor<B, 1>, eps: f32, act: Act) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>) {
        let p = |t: Tensor<K, 1>| t.into_primitive().tensor();
        let [y, mean, var] = K::fgia_batch_norm(recast::<B, K, 4>(x).into_primitive().tensor(), p(recast(gamma)), p(recast(beta)), eps, act);
        (recast(wrap::<K, 4>(y)), recast(wrap::<K, 1>(mean)), recast(wrap::<K, 1>(var)))
    }
    match route::<B>(&[x.dtype(), gamma.dtype(), beta.dtype()]) {
        Some(Route::Flex) => on::<B, Flex>(x, gamma, beta, eps as f32, act),
        Some(Route::AutodiffFlex) => on::<B, Autodiff<Flex>>(x, gamma, beta, eps as f32, act),
        None => {
            let c = x.dims()[1];
            let [y, stats] = composed_batch_norm(x, gamma, beta, eps as f32, act);
            let stats = stats.detach().reshape([2, c]);
            (y, stats.clone().slice([0..1, 0..c]).reshape([c]), stats.slice([1..2, 0..c]).reshape([c]))
        }
    }
}

/// The normalisation of bilinear features, per row: `sign(z) √(|z| + eps)`, then divided by
/// `max(‖·‖, delta)`. Our fused kernel on `Flex` and `Autodiff<Flex>`, burn's composition
/// ([`crate::ops::signed_sqrt`], [`crate::ops::l2_normalize`]) elsewhere.
///
/// # Shapes
/// `[B, D]` to `[B, D]`.
pub fn sqrt_l2<B: Backend>(z: Tensor<B, 2>, eps: f64, delta: f64) -> Tensor<B, 2> {
    fn on<B: Backend, K: KernelOps>(z: Tensor<B, 2>, eps: f32, delta: f32) -> Tensor<B, 2> {
        recast(wrap::<K, 2>(K::fgia_sqrt_l2(recast::<B, K, 2>(z).into_primitive().tensor(), eps, delta)))
    }
    match route::<B>(&[z.dtype()]) {
        Some(Route::Flex) => on::<B, Flex>(z, eps as f32, delta as f32),
        Some(Route::AutodiffFlex) => on::<B, Autodiff<Flex>>(z, eps as f32, delta as f32),
        None => crate::ops::l2_normalize(crate::ops::signed_sqrt(z, eps), delta),
    }
}

/// `scale X Xᵀ` per batch item: our kernel on `Flex` and `Autodiff<Flex>`, burn's matmul
/// elsewhere.
///
/// # Shapes
/// `[B, C, M]` to `[B, C, C]`.
pub fn gram<B: Backend>(x: Tensor<B, 3>, scale: f32) -> Tensor<B, 3> {
    fn on<B: Backend, K: KernelOps>(x: Tensor<B, 3>, scale: f32) -> Tensor<B, 3> {
        recast(wrap::<K, 3>(K::fgia_gram(recast::<B, K, 3>(x).into_primitive().tensor(), scale)))
    }
    match route::<B>(&[x.dtype()]) {
        Some(Route::Flex) => on::<B, Flex>(x, scale),
        Some(Route::AutodiffFlex) => on::<B, Autodiff<Flex>>(x, scale),
        None => composed_gram(x, scale),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    type A = Autodiff<Flex>;

    /// `|a - b| <= rel * max(|b|)` everywhere (relative to the tensor's scale: a convolution's
    /// outputs are sums, so single entries near zero say nothing about relative error).
    fn assert_close<B: Backend, const D: usize>(what: &str, a: Tensor<B, D>, b: Tensor<B, D>, rel: f32) {
        assert_eq!(a.dims(), b.dims(), "{what}: shapes");
        let a: Vec<f32> = a.into_data().convert::<f32>().to_vec().expect("f32");
        let b: Vec<f32> = b.into_data().convert::<f32>().to_vec().expect("f32");
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
        let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        assert!(worst <= rel * scale, "{what}: max |diff| {worst} against scale {scale}");
    }

    fn random<B: Backend, const D: usize>(shape: [usize; D], device: &B::Device) -> Tensor<B, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }

    fn geom(stride: usize, pad_start: [usize; 2], pad_end: [usize; 2], dilation: usize, groups: usize) -> ConvGeom {
        ConvGeom { stride: [stride, stride], pad_start, pad_end, dilation: [dilation, dilation], groups }
    }

    /// The backbones' convolutions, at small sizes, with odd sizes, batch 1, every stride,
    /// padding and dilation they use.
    fn cases() -> Vec<([usize; 4], [usize; 4], ConvGeom, bool)> {
        vec![
            ([2, 6, 9, 7], [5, 6, 1, 1], geom(1, [0, 0], [0, 0], 1, 1), true),   // pointwise
            ([1, 6, 8, 8], [8, 6, 1, 1], geom(2, [0, 0], [0, 0], 1, 1), false),  // ResNet's strided 1x1
            ([2, 3, 15, 16], [8, 3, 3, 3], geom(2, [0, 0], [1, 1], 1, 1), false), // Lite0 stem, SAME
            ([2, 3, 17, 13], [4, 3, 7, 7], geom(2, [3, 3], [3, 3], 1, 1), true),  // ResNet stem
            ([3, 5, 9, 11], [4, 5, 3, 3], geom(1, [1, 1], [1, 1], 1, 1), true),   // 3x3 stride 1
            ([2, 4, 10, 9], [6, 4, 3, 3], geom(2, [1, 1], [1, 1], 1, 1), false),  // 3x3 stride 2
            ([2, 4, 9, 9], [3, 4, 3, 3], geom(1, [2, 2], [2, 2], 2, 1), true),    // dilation 2
            ([2, 8, 11, 10], [8, 1, 3, 3], geom(1, [1, 1], [1, 1], 1, 8), false), // depthwise 3x3
            ([2, 8, 12, 12], [8, 1, 3, 3], geom(2, [0, 0], [1, 1], 1, 8), true),  // depthwise 3x3 /2 SAME
            ([1, 6, 13, 14], [6, 1, 5, 5], geom(2, [1, 1], [2, 2], 1, 6), false), // depthwise 5x5 /2 SAME
            ([2, 6, 7, 9], [6, 1, 5, 5], geom(1, [2, 2], [2, 2], 1, 6), true),    // depthwise 5x5
            ([2, 5, 6, 6], [5, 1, 1, 1], geom(1, [0, 0], [0, 0], 1, 5), true),    // batch norm's affine
        ]
    }

    #[test]
    fn flex_forward_matches_burns_convolution() {
        let dev = Default::default();
        for (xs, ws, g, bias) in cases() {
            let x = random::<Flex, 4>(xs, &dev);
            let w = random::<Flex, 4>(ws, &dev);
            let b = bias.then(|| random::<Flex, 1>([ws[0]], &dev));
            assert!(g.kind(xs, ws).is_some(), "{xs:?} {ws:?} runs on our kernels");
            let ours = wrap::<Flex, 4>(Flex::fgia_conv2d(x.clone().into_primitive().tensor(), w.clone().into_primitive().tensor(), b.clone().map(|b| b.into_primitive().tensor()), g));
            assert_close(&format!("{xs:?} {ws:?} {g:?}"), ours, composed_conv2d(x, w, b, g), 1e-4);
        }
    }

    #[test]
    fn autodiff_values_and_gradients_match_burns_convolution() {
        let dev = Default::default();
        for (xs, ws, g, bias) in cases() {
            let x = random::<A, 4>(xs, &dev);
            let w = random::<A, 4>(ws, &dev);
            let b = bias.then(|| random::<A, 1>([ws[0]], &dev));
            let run = |ours: bool| {
                let (x, w, b) = (x.clone().require_grad(), w.clone().require_grad(), b.clone().map(|b| b.require_grad()));
                let y = if ours { wrap::<A, 4>(A::fgia_conv2d(x.clone().into_primitive().tensor(), w.clone().into_primitive().tensor(), b.clone().map(|b| b.into_primitive().tensor()), g)) } else { composed_conv2d(x.clone(), w.clone(), b.clone(), g) };
                let r = Tensor::<A, 4>::from_data(TensorData::new((0..y.dims().iter().product::<usize>()).map(|i| ((i as f32) * 0.37).sin()).collect::<Vec<_>>(), y.dims()), &dev);
                let grads = (y.clone() * r).sum().backward();
                (y.inner(), x.grad(&grads).expect("dx"), w.grad(&grads).expect("dw"), b.map(|b| b.grad(&grads).expect("db")))
            };
            let (y1, dx1, dw1, db1) = run(true);
            let (y2, dx2, dw2, db2) = run(false);
            let case = format!("{xs:?} {ws:?} {g:?}");
            assert_close(&format!("{case} y"), y1, y2, 1e-4);
            assert_close(&format!("{case} dx"), dx1, dx2, 1e-4);
            assert_close(&format!("{case} dw"), dw1, dw2, 1e-4);
            if let (Some(a), Some(b)) = (db1, db2) {
                assert_close(&format!("{case} db"), a, b, 1e-4);
            }
        }
    }

    #[test]
    fn non_contiguous_inputs_and_the_routed_entry_point() {
        let dev = Default::default();
        // A permuted view: [N, H, W, C] read as [N, C, H, W].
        let nhwc = random::<A, 4>([2, 7, 6, 5], &dev);
        let x = nhwc.permute([0, 3, 1, 2]).require_grad();
        let w = random::<A, 4>([4, 5, 3, 3], &dev).require_grad();
        let g = geom(1, [1, 1], [1, 1], 1, 1);
        let r = random::<A, 4>([2, 4, 7, 6], &dev);
        let routed = conv2d(x.clone(), w.clone(), None, g);
        let grads = (routed.clone() * r.clone()).sum().backward();
        let (dx1, dw1) = (x.grad(&grads).expect("dx"), w.grad(&grads).expect("dw"));
        let reference = composed_conv2d(x.clone(), w.clone(), None, g);
        let grads = (reference.clone() * r).sum().backward();
        assert_close("permuted y", routed.inner(), reference.inner(), 1e-4);
        assert_close("permuted dx", dx1, x.grad(&grads).expect("dx"), 1e-4);
        assert_close("permuted dw", dw1, w.grad(&grads).expect("dw"), 1e-4);
        assert!(route::<A>(&[DType::F32]).is_some() && route::<Flex>(&[DType::F32]).is_some() || !enabled());
        assert!(route::<A>(&[DType::F64]).is_none(), "other dtypes keep burn's composition");
    }

    #[test]
    fn gram_matches_burns_product_forward_and_backward() {
        let dev = Default::default();
        for shape in [[2, 5, 7], [1, 70, 12], [3, 130, 9]] {
            let x = random::<A, 3>(shape, &dev);
            let r = random::<A, 3>([shape[0], shape[1], shape[1]], &dev);
            let run = |ours: bool| {
                let x = x.clone().require_grad();
                let g = if ours { wrap::<A, 3>(A::fgia_gram(x.clone().into_primitive().tensor(), 0.25)) } else { composed_gram(x.clone(), 0.25) };
                let grads = (g.clone() * r.clone()).sum().backward();
                (g.inner(), x.grad(&grads).expect("dx"))
            };
            let ((g1, dx1), (g2, dx2)) = (run(true), run(false));
            assert_close(&format!("gram {shape:?}"), g1, g2, 1e-4);
            assert_close(&format!("gram dx {shape:?}"), dx1, dx2, 1e-4);
        }
        // A transposed (non-contiguous) input on Flex.
        let t = random::<Flex, 3>([2, 9, 6], &dev).swap_dims(1, 2);
        assert_close("gram of a view", wrap::<Flex, 3>(Flex::fgia_gram(t.clone().into_primitive().tensor(), 1.0)), composed_gram(t, 1.0), 1e-4);
    }

    #[test]
    fn flex_fallback_gradients_are_burns() {
        // The trait's fallback for shapes the kernels leave to burn (a grouped convolution).
        let dev = Default::default();
        let g = geom(1, [1, 1], [1, 1], 1, 2);
        let (x, w, dy) = (random::<Flex, 4>([2, 4, 5, 5], &dev), random::<Flex, 4>([4, 2, 3, 3], &dev), random::<Flex, 4>([2, 4, 5, 5], &dev));
        assert_eq!(g.kind(x.dims(), w.dims()), None);
        let [dx, dw, db] = Flex::fgia_conv2d_backward(x.clone().into_primitive().tensor(), w.clone().into_primitive().tensor(), dy.clone().into_primitive().tensor(), g, Needs { x: true, w: true, bias: true });
        let (xa, wa) = (Tensor::<A, 4>::from_inner(x).require_grad(), Tensor::<A, 4>::from_inner(w).require_grad());
        let grads = (composed_conv2d(xa.clone(), wa.clone(), None, g) * Tensor::from_inner(dy.clone())).sum().backward();
        assert_close("fallback dx", wrap::<Flex, 4>(dx.expect("dx")), xa.grad(&grads).expect("dx"), 1e-5);
        assert_close("fallback dw", wrap::<Flex, 4>(dw.expect("dw")), wa.grad(&grads).expect("dw"), 1e-5);
        assert_close("fallback db", wrap::<Flex, 1>(db.expect("db")), dy.sum_dim(3).sum_dim(2).sum_dim(0).flatten::<1>(0, 3), 1e-5);
    }
    #[test]
    fn fused_batch_norm_and_activation_match_burns_composition() {
        let dev = Default::default();
        for (shape, act) in [([4, 3, 5, 6], Act::Identity), ([2, 5, 7, 7], Act::Relu), ([3, 4, 6, 5], Act::Relu6), ([1, 6, 3, 3], Act::Relu6)] {
            // Scaled so that ReLU6 clips at both ends.
            let x = random::<A, 4>(shape, &dev).mul_scalar(4.0).add_scalar(1.0);
            let c = shape[1];
            let gamma = Tensor::<A, 1>::random([c], Distribution::Uniform(0.5, 2.5), &dev);
            let beta = Tensor::<A, 1>::random([c], Distribution::Uniform(-1.0, 3.0), &dev);
            let r = random::<A, 4>(shape, &dev);
            let run = |ours: bool| {
                let (x, g, b) = (x.clone().require_grad(), gamma.clone().require_grad(), beta.clone().require_grad());
                let (y, mean, var) = if ours {
                    let [y, m, v] = A::fgia_batch_norm(x.clone().into_primitive().tensor(), g.clone().into_primitive().tensor(), b.clone().into_primitive().tensor(), 1e-3, act);
                    (wrap::<A, 4>(y), wrap::<A, 1>(m), wrap::<A, 1>(v))
                } else {
                    let [y, stats] = composed_batch_norm(x.clone(), g.clone(), b.clone(), 1e-3, act);
                    let stats = stats.reshape([2, c]);
                    (y, stats.clone().slice([0..1, 0..c]).reshape([c]), stats.slice([1..2, 0..c]).reshape([c]))
                };
                let grads = (y.clone() * r.clone()).sum().backward();
                (y.inner(), mean.inner(), var.inner(), x.grad(&grads).expect("dx"), g.grad(&grads).expect("dgamma"), b.grad(&grads).expect("dbeta"))
            };
            let ours = run(true);
            let theirs = run(false);
            let case = format!("{shape:?} {act:?}");
            assert_close(&format!("{case} y"), ours.0, theirs.0, 1e-4);
            assert_close(&format!("{case} mean"), ours.1, theirs.1, 1e-4);
            assert_close(&format!("{case} var"), ours.2, theirs.2, 1e-4);
            assert_close(&format!("{case} dx"), ours.3, theirs.3, 1e-4);
            assert_close(&format!("{case} dgamma"), ours.4, theirs.4, 1e-4);
            assert_close(&format!("{case} dbeta"), ours.5, theirs.5, 1e-4);
        }
    }
    #[test]
    fn fused_signed_sqrt_and_l2_match_burns_composition() {
        let dev = Default::default();
        // Zeros (no slope), a row of zeros (norm below delta), and ordinary rows.
        let mut data: Vec<f32> = (0..4 * 9).map(|i| ((i as f32) * 0.71).sin() * 3.0).collect();
        data[3] = 0.0;
        data[9..18].iter_mut().for_each(|v| *v = 0.0);
        let z = Tensor::<A, 2>::from_data(TensorData::new(data, [4, 9]), &dev);
        let r = random::<A, 2>([4, 9], &dev);
        let run = |ours: bool| {
            let z = z.clone().require_grad();
            let y = if ours { wrap::<A, 2>(A::fgia_sqrt_l2(z.clone().into_primitive().tensor(), 1e-10, 1e-12)) } else { composed_sqrt_l2(z.clone(), 1e-10, 1e-12) };
            let grads = (y.clone() * r.clone()).sum().backward();
            (y.inner(), z.grad(&grads).expect("dz"))
        };
        let ((y1, d1), (y2, d2)) = (run(true), run(false));
        assert_close("sqrt_l2 y", y1, y2, 1e-4);
        assert_close("sqrt_l2 dz", d1, d2, 1e-4);
    }
}
