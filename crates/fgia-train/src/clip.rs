//! Clipping of the global gradient norm (as `torch.nn.utils.clip_grad_norm_`).
//!
//! burn's built-in clipping works per parameter tensor; fine-tuning recipes clip the norm of all
//! gradients together, so this module visits every parameter of a module to sum the squared
//! norms, then scales each gradient by `max_norm / norm` when the norm is larger.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

struct SquaredNorms<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorms<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s = g.powi_scalar(2).sum().reshape([1]);
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

struct Scale<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    factor: f64,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// The global ℓ2 norm of the gradients of `module`'s parameters.
pub fn global_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, grads: &GradientsParams) -> f64 {
    let mut v = SquaredNorms::<B> { grads, total: None };
    module.visit(&mut v);
    v.total.map(|t| t.into_scalar().elem::<f64>().sqrt()).unwrap_or(0.0)
}

/// Multiplies the gradients of `module`'s parameters by `factor`.
pub fn scale_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, grads: &mut GradientsParams, factor: f64) {
    let mut s = Scale::<B> { grads, factor, _b: std::marker::PhantomData };
    module.visit(&mut s);
}

/// Scales the gradients so their global norm is at most `max_norm`; returns the norm before
/// clipping.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let norm = global_grad_norm::<B, M>(module, grads);
    if max_norm > 0.0 && norm.is_finite() && norm > max_norm {
        scale_gradients::<B, M>(module, grads, max_norm / (norm + 1e-6));
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::{Linear, LinearConfig};

    type B = Autodiff<Flex>;

    #[test]
    fn clips_to_the_global_norm() {
        let device = Default::default();
        let layer: Linear<B> = LinearConfig::new(2, 1).with_bias(true).init(&device);
        // Loss = sum(W x + b) with x = [3, 4]: dW = [3, 4], db = [1]; global norm sqrt(26).
        let x = Tensor::<B, 2>::from_data([[3.0f32, 4.0]], &device);
        let grads = layer.forward(x).sum().backward();
        let mut grads = GradientsParams::from_grads(grads, &layer);
        let before = clip_global_norm::<B, _>(&layer, &mut grads, 1.0);
        assert!((before - 26f64.sqrt()).abs() < 1e-5);
        let after = global_grad_norm::<B, _>(&layer, &grads);
        assert!((after - 1.0).abs() < 1e-4, "{after}");
        // Below the threshold nothing changes.
        let again = clip_global_norm::<B, _>(&layer, &mut grads, 10.0);
        assert!((again - after).abs() < 1e-9);
    }
}
