//! CAL: "Counterfactual Attention Learning for Fine-Grained Visual Categorization and
//! Re-identification", Rao, Chen, Lu and Zhou, ICCV 2021. Not in the survey's table; the report
//! marks it so. Recipe: `recipes/table2/cal.toml`. Built on WS-DAN (`ws_dan.rs`), which runs it
//! with the counterfactual branch on.
//!
//! **Counterfactual intervention.** The feature map `F` is pooled once more with a fake
//! attention `Ā` of the same shape, `Ā ~ U(0, 2)` element-wise during training (fresh every
//! forward; the authors chose the range because trained attention values mostly stay below 2),
//! through the same bilinear attention pooling, and classified by the same layer:
//! `Y_effect = W(100 P(A)) − W(100 P(Ā))`.
//!
//! **Loss.** WS-DAN's loss plus `λ CE(Y_effect, y)` with `λ = 1`, over the raw, crop and drop
//! views alike (the authors' code applies it to all three, a third each). Gradients flow through
//! both terms. The effect is only a training signal: prediction is WS-DAN's.
//!
//! End to end (`mode = "end-to-end"`): WS-DAN's end-to-end module with the branch on
//! ([`LIVE_DEVIATIONS`]).
//!
//! **Deviations** (also in [`DEVIATIONS`]): those of WS-DAN's cached rounds; the test rule is
//! WS-DAN's raw image plus one attention crop, not the authors' `infer.py` with three crops and
//! their mirrors.

use burn::prelude::*;
use burn::tensor::Distribution;

use crate::nn::cross_entropy;
use crate::ws_dan::{WsDan, WsDanOut, bap};

/// The deviations of every CAL run.
pub const DEVIATIONS: &[&str] = &[
    "crops and drops drawn once per cached training view from the round-1 attention (cached rounds), not redrawn every step",
    "attention: a new 1x1 convolution with ReLU on the last map, without batch norm",
    "test: the raw image and one attention crop (WS-DAN's rule), not infer.py's three crops and their mirrors",
    "the class centres are process state, not checkpointed: a resumed round restarts them at zero",
    "not in the survey's Table 2",
];

/// The deviations of every end-to-end CAL run.
pub const LIVE_DEVIATIONS: &[&str] = &[
    "attention: a new 1x1 convolution with ReLU on the last map, without batch norm",
    "test: the raw image and one attention crop (WS-DAN's rule), not infer.py's three crops and their mirrors",
    "the class centres and the augmentation's random stream are process state, not checkpointed: a resumed run restarts them",
    "not in the survey's Table 2",
];

/// The counterfactual attention: `U(0, 2)` element-wise, the shape of `attention`.
pub fn random_attention<B: Backend>(attention: &Tensor<B, 4>) -> Tensor<B, 4> {
    Tensor::random(attention.dims(), Distribution::Uniform(0.0, 2.0), &attention.device())
}

/// `Y_effect = W(s P(A)) − W(s P(Ā))` for the output `o` of `model`.
pub fn effect<B: Backend>(model: &WsDan<B>, o: &WsDanOut<B>, scale: f32) -> Tensor<B, 2> {
    let fake = bap(random_attention(&o.attention), o.map.clone());
    o.logits.clone() - model.fc.forward(fake.mul_scalar(scale))
}

/// `CE(Y_effect, y)`.
pub fn effect_loss<B: Backend>(model: &WsDan<B>, o: &WsDanOut<B>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    cross_entropy(effect(model, o, model.logit_scale()), labels)
}
