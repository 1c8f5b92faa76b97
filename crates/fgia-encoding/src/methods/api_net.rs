//! API-Net: attentive pairwise interaction.
//!
//! Zhuang, Wang and Qiao, "Learning Attentive Pairwise Interaction for Fine-Grained
//! Classification", AAAI 2020, §3. For each image `i` of a class-balanced batch, its *intra*
//! partner is the most similar image of its class and its *inter* partner the most similar image
//! of another class (Euclidean distance of the pooled features). For a pair `(x₁, x₂)`:
//! - mutual vector `x_m = f_m([x₁, x₂])` (an MLP, eq. 1);
//! - gates `g_i = σ(x_m ∘ x_i)` (eq. 2);
//! - attentive features `x₁^self = x₁ + x₁ ∘ g₁`, `x₁^other = x₁ + x₁ ∘ g₂`, and the same for `x₂`
//!   (eq. 3);
//! - loss: cross-entropy of all four through the classifier, plus the score-ranking
//!   regularisation `Σ max(0, p_i^other(c_i) − p_i^self(c_i) + ε)` with `ε = 0.05` (eq. 5-6).
//!
//! At test time only the pooled feature and the classifier are used. The batches come from the
//! class-balanced sampler (`P` classes x `K` images, [`fgia_core::sampler::pk_batches`]); the
//! backbone's last stage is fine-tuned. The mutual-vector MLP is two linear layers `2C → 512 → C`
//! with no activation between them, as in the authors' code (its dropout omitted: recorded).
//!
//! Recipe: `recipes/table2/api-net.toml` (`cargo xtask reproduce table2 --smoke --methods api-net`).

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softmax};
use fgia_nn::Network;

use super::{Head, Inputs, LastStage, StepOutput, cross_entropy, gap};

/// The score-ranking margin `ε`.
pub const MARGIN: f32 = 0.05;

/// Intra- and inter-class partners of each item from pairwise squared distances of `feats`
/// (`[n, d]`, row-major); an item without a same-class (other-class) partner gets itself.
pub fn partners(feats: &[f32], d: usize, labels: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let n = labels.len();
    let dist = |a: usize, b: usize| -> f32 { feats[a * d..(a + 1) * d].iter().zip(&feats[b * d..(b + 1) * d]).map(|(x, y)| (x - y) * (x - y)).sum() };
    let mut intra = Vec::with_capacity(n);
    let mut inter = Vec::with_capacity(n);
    for i in 0..n {
        let best = |same: bool| {
            (0..n).filter(|&j| j != i && (labels[j] == labels[i]) == same).min_by(|&a, &b| dist(i, a).total_cmp(&dist(i, b)).then(a.cmp(&b))).unwrap_or(i)
        };
        intra.push(best(true));
        inter.push(best(false));
    }
    (intra, inter)
}

/// Fine-tuned last stage, pooled feature, the mutual-vector MLP and the classifier.
#[derive(Module, Debug)]
pub struct ApiNetHead<B: Backend> {
    /// The backbone's last stage.
    pub last: LastStage<B>,
    /// `2C → 512`.
    pub map1: Linear<B>,
    /// `512 → C`.
    pub map2: Linear<B>,
    /// Classifier.
    pub fc: Linear<B>,
}

impl<B: Backend> ApiNetHead<B> {
    /// On the last stage `stage` of `net` (output `channels` channels).
    pub fn new(net: Network<B>, stage: usize, channels: usize, classes: usize, device: &B::Device) -> Self {
        ApiNetHead {
            last: LastStage { net, stage },
            map1: LinearConfig::new(2 * channels, 512).init(device),
            map2: LinearConfig::new(512, channels).init(device),
            fc: LinearConfig::new(channels, classes).init(device),
        }
    }
}

impl<B: Backend> ApiNetHead<B> {
    /// The mutual vector `x_m = f_m([x₁, x₂])` (eq. 1): two linear layers with no activation
    /// between them, as in the authors' code.
    ///
    /// # Shapes
    /// `[P, C]`, `[P, C]` to `[P, C]`.
    pub fn mutual(&self, x1: Tensor<B, 2>, x2: Tensor<B, 2>) -> Tensor<B, 2> {
        self.map2.forward(self.map1.forward(Tensor::cat(vec![x1, x2], 1)))
    }
}

impl<B: Backend> Head<B> for ApiNetHead<B> {
    fn loss(&self, x: &Inputs<B>, _step: usize) -> StepOutput<B> {
        let feats = gap(self.last.of(x)); // [B, C]
        let [n, d] = feats.dims();
        let device = feats.device();
        let values: Vec<f32> = feats.clone().into_data().convert::<f32>().to_vec().unwrap_or_default();
        let (intra, inter) = partners(&values, d, &x.labels);
        // Pairs: (i, intra_i) for all i, then (i, inter_i).
        let first: Vec<i64> = (0..n).chain(0..n).map(|i| i as i64).collect();
        let second: Vec<i64> = intra.iter().chain(&inter).map(|&j| j as i64).collect();
        let idx = |v: Vec<i64>| Tensor::<B, 1, Int>::from_data(TensorData::new(v, [2 * n]), &device);
        let x1 = feats.clone().select(0, idx(first.clone())); // [2B, C]
        let x2 = feats.clone().select(0, idx(second.clone()));
        let mutual = self.mutual(x1.clone(), x2.clone()); // [2B, C]
        let g1 = sigmoid(mutual.clone() * x1.clone());
        let g2 = sigmoid(mutual * x2.clone());
        let x1_self = x1.clone() + x1.clone() * g1.clone();
        let x1_other = x1.clone() + x1 * g2.clone();
        let x2_self = x2.clone() + x2.clone() * g2;
        let x2_other = x2.clone() + x2 * g1;
        let l1: Vec<usize> = first.iter().map(|&i| x.labels[i as usize]).collect();
        let l2: Vec<usize> = second.iter().map(|&j| x.labels[j as usize]).collect();
        let logits4 = self.fc.forward(Tensor::cat(vec![x1_self, x2_self, x1_other, x2_other], 0)); // [8B, K]
        let labels4: Vec<usize> = l1.iter().chain(&l2).chain(&l1).chain(&l2).copied().collect();
        let ce = cross_entropy(logits4.clone(), &labels4);
        // Score ranking: probability of the true class, self versus other.
        let probs = softmax(logits4, 1);
        let pick = Tensor::<B, 2, Int>::from_data(TensorData::new(labels4.iter().map(|&l| l as i64).collect::<Vec<_>>(), [8 * n, 1]), &device);
        let p = probs.gather(1, pick).reshape([4, 2 * n]);
        let p_self = p.clone().slice([0..2, 0..2 * n]);
        let p_other = p.slice([2..4, 0..2 * n]);
        let rank = (p_other - p_self).add_scalar(MARGIN).clamp_min(0.0).mean();
        let logits = self.fc.forward(feats);
        StepOutput { loss: ce + rank, logits }
    }

    fn logits(&self, x: &Inputs<B>) -> Tensor<B, 2> {
        self.fc.forward(gap(self.last.of(x)))
    }

    fn backbone(&self) -> Option<&Network<B>> {
        Some(&self.last.net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use fgia_nn::{BackboneKind, NetworkConfig};

    #[test]
    fn the_mutual_vector_is_affine_as_in_the_authors_code() {
        let device = Default::default();
        let net = NetworkConfig::new(BackboneKind::ResNet18).with_width_div(16).init::<Flex>(&device);
        let head = ApiNetHead::new(net, 4, 8, 3, &device);
        let r = |s: u64| Tensor::<Flex, 2>::random([4, 8], burn::tensor::Distribution::Normal(s as f64, 1.0), &device);
        let (a1, a2, b1, b2) = (r(0), r(1), r(2), r(3));
        // f((a + b) / 2) = (f(a) + f(b)) / 2 holds for an affine map and fails with a ReLU inside.
        let mid = head.mutual((a1.clone() + b1.clone()) / 2.0, (a2.clone() + b2.clone()) / 2.0);
        let avg = (head.mutual(a1, a2) + head.mutual(b1, b2)) / 2.0;
        let d: f32 = (mid - avg).abs().max().into_scalar();
        assert!(d < 1e-4, "{d}");
    }
}
