//! Maximum-entropy fine-grained classification (MaxEnt).
//!
//! Dubey, Gupta, Raskar and Naik, "Maximum-Entropy Fine-Grained Classification", NeurIPS 2018,
//! §3: fine-grained classes are close, so the model should not be over-confident; the training
//! objective subtracts the entropy of the predicted distribution from the cross-entropy,
//!
//! `L = CE(p, y) − γ H(p)`, `H(p) = −Σ_k p_k log p_k`   (eq. 5)
//!
//! with `p` the softmax of the logits. Here the classifier is a linear layer on the globally
//! average-pooled last feature map; `γ` is a recipe parameter (the paper tunes it per dataset,
//! the recipes use 0.1).
//!
//! Recipe: `recipes/table2/maxent.toml` (`cargo xtask reproduce table2 --smoke --methods maxent`).

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use super::{Head, Inputs, StepOutput, cross_entropy, gap};

/// Mean entropy of the softmax of logits `[B, K]`.
pub fn entropy<B: Backend>(logits: Tensor<B, 2>) -> Tensor<B, 1> {
    let logp = log_softmax(logits, 1);
    (logp.clone().exp() * logp).sum_dim(1).mean().neg()
}

/// `CE − γ H`.
pub fn maxent_loss<B: Backend>(logits: Tensor<B, 2>, labels: &[usize], gamma: f64) -> Tensor<B, 1> {
    cross_entropy(logits.clone(), labels) - entropy(logits) * gamma
}

/// Linear classifier on the pooled map, trained with the MaxEnt objective.
#[derive(Module, Debug)]
pub struct MaxEntHead<B: Backend> {
    /// Classifier.
    pub fc: Linear<B>,
    /// Stage whose map is pooled.
    pub stage: usize,
    /// `γ`.
    pub gamma: f64,
}

impl<B: Backend> MaxEntHead<B> {
    /// For `channels` channels and `classes` classes.
    pub fn new(stage: usize, channels: usize, classes: usize, gamma: f64, device: &B::Device) -> Self {
        MaxEntHead { fc: LinearConfig::new(channels, classes).init(device), stage, gamma }
    }
}

impl<B: Backend> Head<B> for MaxEntHead<B> {
    fn loss(&self, x: &Inputs<B>, _step: usize) -> StepOutput<B> {
        let logits = self.logits(x);
        StepOutput { loss: maxent_loss(logits.clone(), &x.labels, self.gamma), logits }
    }

    fn logits(&self, x: &Inputs<B>) -> Tensor<B, 2> {
        self.fc.forward(gap(x.tap(self.stage)))
    }
}
