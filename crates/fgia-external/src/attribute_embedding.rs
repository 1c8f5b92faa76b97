//! Attribute embedding: a compatibility between images and classes' attribute vectors, trained
//! with the symmetric structured joint-embedding loss, usable as a classifier and zero-shot
//! (§5.3.2, multi-modal: attributes).
//!
//! Akata, Reed, Walter, Lee and Schiele, "Evaluation of Output Embeddings for Fine-Grained Image
//! Classification" (SJE), CVPR 2015; Reed, Akata, Lee and Schiele, "Learning Deep Representations
//! of Fine-Grained Visual Descriptions", CVPR 2016, §3 (the symmetric loss, DS-SJE).
//!
//! **Compatibility.** `F(x, y) = θ(x)ᵀ W φ(y)`: `θ(x)` the image's pooled feature (`D`), `φ(y)` the
//! class's attribute vector (`A`; CUB's 312 class-level percentages, ℓ2-normalised), `W` learned
//! (`D × A`). A class is predicted as `argmax_y F(x, y)` over the classes whose `φ` is given,
//! which need not be the training classes: that is zero-shot recognition.
//!
//! **Loss** (Reed et al. eq. 3, with `Δ` the 0-1 loss): over a batch of images `x_n` of classes
//! `y_n`,
//!
//! ```text
//! ℓ_v(n) = max_{y ≠ y_n} [1 + F(x_n, y) − F(x_n, y_n)]₊                   (image side)
//! ℓ_t(n) = max_{y ≠ y_n, y in the batch} [1 + mean_{m: y_m = y} F(x_m, y_n) − F(x_n, y_n)]₊
//! L = mean_n (ℓ_v(n) + ℓ_t(n))
//! ```
//!
//! The text side asks every class's attribute vector to score its own images above the images of
//! other classes; the expectation over images of class `y` is taken over the batch's images of
//! that class (the paper's minibatch estimate).
//!
//! **Deviations.** Attributes stand for the paper's sentences (a class has one attribute vector,
//! so the image side's expectation over a class's texts is that vector); `θ` is the frozen
//! ImageNet backbone's pooled feature, not a trained image encoder.
//!
//! Recipes: `recipes/table3/sje.toml` (a classifier over every class) and
//! `recipes/table3/sje-zero-shot.toml` (a fixed quarter of the classes unseen in training).

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fgia_train::engine::{ParamGroup, StepLoss, TrainMethod, single_group};
use fgia_train::sources::MapBatch;

/// `W`, initialised small.
#[derive(Module, Debug)]
pub struct AttributeEmbedding<B: Backend> {
    /// `[D, A]`.
    pub w: Param<Tensor<B, 2>>,
}

impl<B: Backend> AttributeEmbedding<B> {
    /// `W` from `N(0, 0.01²)`-like uniform values drawn from `seed`.
    pub fn new(dim: usize, attributes: usize, seed: u64, device: &B::Device) -> Self {
        let mut g = fgia_core::rng::SplitMix64::new(seed);
        let v: Vec<f32> = (0..dim * attributes).map(|_| (g.next_f64() as f32 - 0.5) * 0.02).collect();
        AttributeEmbedding { w: Param::from_tensor(Tensor::from_data(TensorData::new(v, [dim, attributes]), device)) }
    }

    /// `F(x, y)` for every image and class.
    ///
    /// # Shapes
    /// `x: [N, D]`, `phi: [C, A]` to `[N, C]`.
    pub fn scores(&self, x: Tensor<B, 2>, phi: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(self.w.val()).matmul(phi.transpose())
    }
}

/// ℓ2-normalised rows of class attribute percentages `[C][A]`, flattened.
pub fn attribute_vectors(percent: &[Vec<f32>]) -> Vec<f32> {
    percent
        .iter()
        .flat_map(|row| {
            let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.iter().map(move |v| v / n)
        })
        .collect()
}

/// The symmetric loss above from the scores `[N, C]` and the labels: `(ℓ_v, ℓ_t)` batch means.
pub fn symmetric_sje_loss<B: Backend>(scores: Tensor<B, 2>, labels: &[usize]) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let [n, c] = scores.dims();
    let device = scores.device();
    let mut onehot = vec![0.0f32; n * c];
    let mut counts = vec![0.0f32; c];
    for (i, &y) in labels.iter().enumerate() {
        onehot[i * c + y] = 1.0;
        counts[y] += 1.0;
    }
    let onehot = Tensor::<B, 2>::from_data(TensorData::new(onehot.clone(), [n, c]), &device); // [N, C]
    let other = onehot.clone().neg().add_scalar(1.0); // 1 where y != y_n
    let true_score = (scores.clone() * onehot.clone()).sum_dim(1); // [N, 1]
    // Image side: the hinge over every other class.
    let lv = (scores.clone() - true_score.clone()).add_scalar(1.0).clamp_min(0.0) * other.clone();
    let lv = lv.max_dim(1).mean();
    // Text side: T[y, c] = mean over the batch's images m of class y of F(x_m, c).
    let inv: Vec<f32> = counts.iter().map(|&k| if k > 0.0 { 1.0 / k } else { 0.0 }).collect();
    let class_mean = onehot.clone().transpose() * Tensor::<B, 1>::from_data(TensorData::new(inv, [c]), &device).reshape([c, 1]); // [C, N]
    let t = class_mean.matmul(scores); // [C(y), C(c)]
    // R[n, y] = T[y, y_n].
    let r = onehot.matmul(t.transpose()); // [N, C(y)]
    let present = Tensor::<B, 1>::from_data(TensorData::new(counts.iter().map(|&k| f32::from(k > 0.0)).collect::<Vec<_>>(), [c]), &device).reshape([1, c]);
    let lt = (r - true_score).add_scalar(1.0).clamp_min(0.0) * other * present;
    (lv, lt.max_dim(1).mean())
}

/// The embedding as the engine's method, over pooled features in `MapBatch`es (`[n, D, 1, 1]`)
/// and the attribute vectors of the training classes.
#[derive(Module, Debug)]
pub struct SjeMethod<B: Backend> {
    /// `W`.
    pub model: AttributeEmbedding<B>,
    /// `φ` of the training classes, `[C, A]` row-major.
    pub phi: Vec<f32>,
    /// Training classes.
    pub classes: usize,
}

impl<B: AutodiffBackend> TrainMethod<B> for SjeMethod<B> {
    type Batch = MapBatch;
    type Input = (Tensor<B, 2>, Vec<usize>);

    fn prepare(&self, b: MapBatch, device: &B::Device) -> Self::Input {
        let [n, d, h, w] = b.shape;
        (Tensor::from_data(TensorData::new(b.data, [n, d * h * w]), device), b.labels)
    }

    fn loss(&self, (x, labels): &Self::Input, _: usize) -> StepLoss<B> {
        let a = self.phi.len() / self.classes.max(1);
        let phi = Tensor::<B, 2>::from_data(TensorData::new(self.phi.clone(), [self.classes, a]), &x.device());
        let scores = self.model.scores(x.clone(), phi);
        let s: Vec<f32> = scores.clone().into_data().convert::<f32>().to_vec().unwrap_or_default();
        let hits = fgia_core::metrics::argmax_rows(&s, self.classes).iter().zip(labels).filter(|(p, l)| p == l).count();
        let (lv, lt) = symmetric_sje_loss(scores, labels);
        StepLoss { loss: lv + lt, hits: Some(hits) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

/// Zero-shot or classifier predictions: `argmax_y F(x, y)` over the classes of `phi` (`[C, A]`).
pub fn predict<B: Backend>(model: &AttributeEmbedding<B>, features: Vec<f32>, dim: usize, phi: Vec<f32>, classes: usize) -> Vec<usize> {
    let device = model.w.val().device();
    let n = features.len() / dim.max(1);
    let a = phi.len() / classes.max(1);
    let x = Tensor::<B, 2>::from_data(TensorData::new(features, [n, dim]), &device);
    let p = Tensor::<B, 2>::from_data(TensorData::new(phi, [classes, a]), &device);
    let s: Vec<f32> = model.scores(x, p).into_data().convert::<f32>().to_vec().unwrap_or_default();
    fgia_core::metrics::argmax_rows(&s, classes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    type A = Autodiff<Flex>;

    #[test]
    fn the_symmetric_loss_on_a_hand_made_batch() {
        let device = Default::default();
        // Three images of classes 0, 0, 1 among three classes; scores by hand.
        let s = [[2.0f32, 1.5, 0.0], [1.0, 0.5, 3.0], [0.2, 1.0, 0.9]];
        let scores = Tensor::<A, 2>::from_data(TensorData::new(s.concat(), [3, 3]), &device);
        let (lv, lt) = symmetric_sje_loss(scores, &[0, 0, 1]);
        // Image side: n0: max(1+1.5-2, 1+0-2)+ = 0.5; n1: max(1+0.5-1, 1+3-1) = 3; n2: max(1+0.2-1, 1+0.9-1) = 0.9.
        let lv: f32 = lv.into_scalar();
        assert!((lv - (0.5 + 3.0 + 0.9) / 3.0).abs() < 1e-6, "{lv}");
        // Text side, over the classes in the batch (0 and 1) other than y_n:
        // n0 (class 0): class 1's images score class 0 at 0.2: [1 + 0.2 - 2]+ = 0;
        // n1 (class 0): [1 + 0.2 - 1]+ = 0.2;
        // n2 (class 1): class 0's images score class 1 at mean(1.5, 0.5) = 1: [1 + 1 - 1]+ = 1.
        let lt: f32 = lt.into_scalar();
        assert!((lt - (0.0 + 0.2 + 1.0) / 3.0).abs() < 1e-6, "{lt}");
    }
}
