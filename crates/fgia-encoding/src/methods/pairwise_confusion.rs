//! Pairwise confusion (PC).
//!
//! Dubey, Gupta, Guo, Farrell, Raskar and Naik, "Pairwise Confusion for Fine-Grained Visual
//! Classification", ECCV 2018, §3: the Euclidean confusion between the predicted distributions
//! of pairs of images, `D_EC(x₁, x₂) = ‖p(x₁) − p(x₂)‖₂²`, is added to the cross-entropy with a
//! weight `λ` (eq. 4), pulling the predictions of pairs together to keep the network from
//! over-fitting sample-specific artefacts.
//!
//! Variant: the authors' released implementation (`PairwiseConfusion` in their repository), not
//! the paper's equation: the batch is split in halves, the first half paired with the second
//! by position regardless of the labels, and the loss is the *sum of the (unsquared) Euclidean
//! norms* of the paired softmax differences divided by the batch size,
//! `L_PC = (1/B) Σ_{i < B/2} ‖p_i − p_{i + B/2}‖₂` for an even batch. The paper's conditioning on pairs of
//! different classes is not applied by that implementation and not here either. An odd batch
//! drops its last image from the pairing and from the divisor, `2 ⌊B/2⌋` (the authors' function
//! refuses odd batches). `λ` follows the
//! authors' README, which puts the useful range at 0.1 N to 0.2 N for N classes: the recipe
//! parameter `lambda_per_class` (default 0.1) times the number of classes.
//!
//! Recipe: `recipes/table2/pairwise-confusion.toml` (`cargo xtask reproduce table2 --smoke --methods pairwise-confusion`).

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;

use super::{Head, Inputs, StepOutput, cross_entropy, gap};

/// The official PC term on class probabilities `[B, K]`.
pub fn pairwise_confusion<B: Backend>(probabilities: Tensor<B, 2>) -> Tensor<B, 1> {
    let [b, k] = probabilities.dims();
    let half = b / 2;
    let device = probabilities.device();
    if half == 0 {
        return Tensor::zeros([1], &device);
    }
    let left = probabilities.clone().slice([0..half, 0..k]);
    let right = probabilities.slice([half..2 * half, 0..k]);
    // Divided by the images actually paired (`2 ⌊B/2⌋`): an odd batch's last image is left out
    // of both the pairs and the count.
    (left - right).powi_scalar(2).sum_dim(1).add_scalar(1e-12).sqrt().sum() / (2 * half) as f32
}

/// Linear classifier on the pooled map, trained with cross-entropy plus `λ` PC.
#[derive(Module, Debug)]
pub struct PairwiseConfusionHead<B: Backend> {
    /// Classifier.
    pub fc: Linear<B>,
    /// Stage whose map is pooled.
    pub stage: usize,
    /// `λ` (already multiplied by the number of classes).
    pub lambda: f64,
}

impl<B: Backend> PairwiseConfusionHead<B> {
    /// For `channels` channels and `classes` classes.
    pub fn new(stage: usize, channels: usize, classes: usize, lambda: f64, device: &B::Device) -> Self {
        PairwiseConfusionHead { fc: LinearConfig::new(channels, classes).init(device), stage, lambda }
    }
}

impl<B: Backend> Head<B> for PairwiseConfusionHead<B> {
    fn loss(&self, x: &Inputs<B>, _step: usize) -> StepOutput<B> {
        let logits = self.logits(x);
        let loss = cross_entropy(logits.clone(), &x.labels) + pairwise_confusion(softmax(logits.clone(), 1)) * self.lambda;
        StepOutput { loss, logits }
    }

    fn logits(&self, x: &Inputs<B>) -> Tensor<B, 2> {
        self.fc.forward(gap(x.tap(self.stage)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn an_odd_batch_divides_by_the_images_paired() {
        let device = Default::default();
        // Rows 0 and 1 are paired; row 2 is left out of the pairs and of the divisor.
        let p = Tensor::<Flex, 2>::from_data([[1.0f32, 0.0], [0.0, 1.0], [0.5, 0.5]], &device);
        let v: f32 = pairwise_confusion(p).into_scalar();
        let want = 2f32.sqrt() / 2.0;
        assert!((v - want).abs() < 1e-5, "{v} vs {want}");
    }
}
