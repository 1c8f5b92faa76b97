//! Which samples of a noisy batch each of two networks learns from: Peer-learning and the
//! co-teaching baseline it improves on (§5.3.1).
//!
//! - **Co-teaching** (Han, Yao, Yu, Niu, Xu, Hu, Tsang and Sugiyama, NeurIPS 2018): each network
//!   ranks the batch by its own loss and hands its `(1 − R(t))·N` smallest-loss samples to its
//!   peer, which trains on them.
//! - **Peer-learning** (Sun, Yao, Wei, Chen, Zhang, Tang, Cheng and Shen, "Webly Supervised
//!   Fine-Grained Recognition: Benchmark Datasets and an Approach", ICCV 2021, §4): the batch
//!   splits into the samples on which the two networks' predictions **disagree**, `G_d`, and those
//!   on which they **agree**, `G_s`. Both networks train on all of `G_d` (a disagreement is
//!   informative whichever network is right); on `G_s` each network keeps its
//!   `(1 − R(t))·|G_s|` smallest-loss samples and its peer trains on them.
//!
//! The drop rate rises linearly to `ξ` over the first `T_k` epochs: `R(t) = ξ · min(t / T_k, 1)`
//! ([`drop_rate`]). Ties in the loss keep the earlier sample.
//!
//! **On the engine** ([`NoisyHeads`]): the plain cross-entropy baseline (one network), and
//! co-teaching and Peer-learning (two networks of the same shape, initialised from different
//! seeds), each network trained with the mean cross-entropy over the samples chosen for it:
//!
//! ```text
//! L = mean_{i ∈ S_1} CE(f_1(x_i), ỹ_i) + mean_{i ∈ S_2} CE(f_2(x_i), ỹ_i)
//! ```
//!
//! with `ỹ` the noisy labels and `S_1, S_2` the selection above at the batch's epoch. The
//! prediction at test is the first network's. Recipes: `recipes/table3/cross-entropy.toml`,
//! `recipes/table3/co-teaching.toml`, `recipes/table3/peer-learning.toml`.
//!
//! **Deviations.** The networks are heads (an MLP) on the frozen ImageNet backbone's pooled
//! feature, not fine-tuned B-CNNs (VGG-16) as in the paper; the noise is synthetic, drawn on
//! clean labels by [`crate::noise`], standing in for crawled web images; `ξ` defaults to the
//! noise rate (co-teaching's assumption that it is known); `R(t)` steps per epoch.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::backend::AutodiffBackend;
use fgia_train::engine::{HostBatch, ParamGroup, StepLoss, TrainMethod, single_group};
use fgia_train::sources::MapBatch;

/// `R(t) = ξ min(t / T_k, 1)` at (fractional) epoch `t`.
pub fn drop_rate(xi: f64, t_k: f64, t: f64) -> f64 {
    if t_k <= 0.0 { xi } else { xi * (t / t_k).clamp(0.0, 1.0) }
}

/// Sample indices each network trains on, in increasing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// For the first network.
    pub first: Vec<usize>,
    /// For the second network.
    pub second: Vec<usize>,
}

/// The `keep` smallest of `loss` over `among`, as sample indices in increasing order.
fn smallest(loss: &[f32], among: &[usize], keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = among.to_vec();
    order.sort_by(|&a, &b| loss[a].total_cmp(&loss[b]).then(a.cmp(&b)));
    order.truncate(keep);
    order.sort_unstable();
    order
}

/// How many of `n` samples are kept at drop rate `r` (at least one where there are any).
fn kept(n: usize, r: f64) -> usize {
    if n == 0 { 0 } else { (((1.0 - r) * n as f64).round() as usize).clamp(1, n) }
}

/// Co-teaching: each network trains on its peer's small-loss samples of the whole batch.
pub fn co_teaching(loss1: &[f32], loss2: &[f32], rate: f64) -> Selection {
    let all: Vec<usize> = (0..loss1.len()).collect();
    let k = kept(all.len(), rate);
    Selection { first: smallest(loss2, &all, k), second: smallest(loss1, &all, k) }
}

/// Peer-learning: both networks train on the disagreement samples; on the agreement samples each
/// trains on its peer's small-loss ones. `pred1` / `pred2` are the networks' predicted classes.
pub fn peer_learning(pred1: &[usize], pred2: &[usize], loss1: &[f32], loss2: &[f32], rate: f64) -> Selection {
    let (agree, disagree): (Vec<usize>, Vec<usize>) = (0..pred1.len()).partition(|&i| pred1[i] == pred2[i]);
    let k = kept(agree.len(), rate);
    let with = |mut chosen: Vec<usize>| {
        chosen.extend(&disagree);
        chosen.sort_unstable();
        chosen
    };
    Selection { first: with(smallest(loss2, &agree, k)), second: with(smallest(loss1, &agree, k)) }
}

/// A classifier head on a pooled feature: linear, or one hidden ReLU layer.
#[derive(Module, Debug)]
pub struct Head<B: Backend> {
    hidden: Option<Linear<B>>,
    out: Linear<B>,
}

impl<B: Backend> Head<B> {
    /// A head from `dim` features to `classes` logits with `hidden` units (0: linear), drawn from
    /// the backend's generator.
    pub fn new(dim: usize, hidden: usize, classes: usize, device: &B::Device) -> Self {
        let (hidden, width) = if hidden == 0 { (None, dim) } else { (Some(LinearConfig::new(dim, hidden).init(device)), hidden) };
        Head { hidden, out: LinearConfig::new(width, classes).init(device) }
    }

    /// Logits.
    ///
    /// # Shapes
    /// `[N, D]` to `[N, C]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = match &self.hidden {
            Some(h) => relu(h.forward(x)),
            None => x,
        };
        self.out.forward(x)
    }
}

/// How the heads pick their samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// One network, every sample (the cross-entropy baseline).
    All,
    /// Co-teaching.
    CoTeaching,
    /// Peer-learning.
    PeerLearning,
}

/// A batch of pooled features and the epoch it belongs to (the drop rate's clock).
#[derive(Debug, Clone)]
pub struct EpochBatch {
    /// Features `[n, D, 1, 1]` and (noisy) labels.
    pub maps: MapBatch,
    /// The epoch (0-based).
    pub epoch: usize,
}

impl HostBatch for EpochBatch {
    fn len(&self) -> usize {
        self.maps.len()
    }
    fn skipped(&self) -> usize {
        self.maps.skipped()
    }
    fn split(self, sizes: &[usize]) -> Vec<Self> {
        let epoch = self.epoch;
        self.maps.split(sizes).into_iter().map(|maps| EpochBatch { maps, epoch }).collect()
    }
}

/// Cross-entropy, co-teaching or Peer-learning heads as the engine's method.
#[derive(Module, Debug)]
pub struct NoisyHeads<B: Backend> {
    /// The first network (the one evaluated).
    pub first: Head<B>,
    /// The peer, for co-teaching and Peer-learning.
    pub second: Option<Head<B>>,
    /// The selection rule.
    #[module(skip)]
    pub rule: Rule,
    /// `ξ`.
    pub xi: f64,
    /// `T_k` in epochs.
    pub t_k: f64,
}

/// Per-sample cross-entropy `[N]` and arg-max predictions.
fn per_sample<B: Backend>(logits: Tensor<B, 2>, labels: &Tensor<B, 2, Int>) -> (Tensor<B, 1>, Vec<usize>) {
    let [_, c] = logits.dims();
    let s: Vec<f32> = logits.clone().into_data().convert::<f32>().to_vec().unwrap_or_default();
    let pred = fgia_core::metrics::argmax_rows(&s, c);
    let ce = log_softmax(logits, 1).gather(1, labels.clone()).neg().squeeze_dim::<1>(1);
    (ce, pred)
}

/// The mean of `ce` over `chosen` (0 where nothing is chosen).
fn mean_over<B: Backend>(ce: Tensor<B, 1>, chosen: &[usize], n: usize) -> Tensor<B, 1> {
    let mut mask = vec![0.0f32; n];
    for &i in chosen {
        mask[i] = 1.0;
    }
    let m = Tensor::<B, 1>::from_data(TensorData::new(mask, [n]), &ce.device());
    (ce * m).sum().div_scalar(chosen.len().max(1) as f32)
}

impl<B: AutodiffBackend> TrainMethod<B> for NoisyHeads<B> {
    type Batch = EpochBatch;
    type Input = (Tensor<B, 2>, Tensor<B, 2, Int>, Vec<usize>, usize);

    fn prepare(&self, b: EpochBatch, device: &B::Device) -> Self::Input {
        let [n, d, h, w] = b.maps.shape;
        let x = Tensor::from_data(TensorData::new(b.maps.data, [n, d * h * w]), device);
        let y = Tensor::from_data(TensorData::new(b.maps.labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [n, 1]), device);
        (x, y, b.maps.labels, b.epoch)
    }

    fn loss(&self, (x, y, labels, epoch): &Self::Input, _: usize) -> StepLoss<B> {
        let n = labels.len();
        let (ce1, pred1) = per_sample(self.first.forward(x.clone()), y);
        let hits = pred1.iter().zip(labels).filter(|(p, l)| p == l).count();
        let loss = match (&self.second, self.rule) {
            (Some(second), Rule::CoTeaching | Rule::PeerLearning) => {
                let (ce2, pred2) = per_sample(second.forward(x.clone()), y);
                let host = |t: &Tensor<B, 1>| -> Vec<f32> { t.clone().into_data().convert::<f32>().to_vec().unwrap_or_default() };
                let (l1, l2) = (host(&ce1), host(&ce2));
                let rate = drop_rate(self.xi, self.t_k, *epoch as f64);
                let s = if self.rule == Rule::CoTeaching { co_teaching(&l1, &l2, rate) } else { peer_learning(&pred1, &pred2, &l1, &l2, rate) };
                mean_over(ce1, &s.first, n) + mean_over(ce2, &s.second, n)
            }
            _ => ce1.mean(),
        };
        StepLoss { loss, hits: Some(hits) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_selection_rule_on_a_hand_made_batch() {
        // Six samples. The networks agree on 0, 1, 2, 3 and disagree on 4 and 5.
        let pred1 = [3, 1, 4, 1, 5, 9];
        let pred2 = [3, 1, 4, 1, 2, 6];
        let loss1 = [0.9f32, 0.1, 0.5, 2.0, 0.3, 3.0];
        let loss2 = [0.2f32, 1.5, 0.4, 0.1, 4.0, 0.2];
        // Drop half of the agreement set: keep 2 of 4.
        let s = peer_learning(&pred1, &pred2, &loss1, &loss2, 0.5);
        // The first network learns from the second's two smallest agreeing losses (3: 0.1,
        // 0: 0.2) and both disagreements; the second from the first's (1: 0.1, 2: 0.5).
        assert_eq!(s.first, vec![0, 3, 4, 5]);
        assert_eq!(s.second, vec![1, 2, 4, 5]);
        // No drop: everything; co-teaching ignores agreement and keeps 3 of 6 by the peer's loss.
        assert_eq!(peer_learning(&pred1, &pred2, &loss1, &loss2, 0.0).first, vec![0, 1, 2, 3, 4, 5]);
        let c = co_teaching(&loss1, &loss2, 0.5);
        assert_eq!(c.first, vec![0, 3, 5]);
        assert_eq!(c.second, vec![1, 2, 4]);
        // A tie keeps the earlier sample.
        assert_eq!(co_teaching(&[1.0, 1.0, 1.0], &[1.0, 1.0, 1.0], 0.5).first, vec![0, 1]);
    }

    #[test]
    fn the_drop_rate_rises_linearly_to_xi() {
        assert_eq!(drop_rate(0.4, 10.0, 0.0), 0.0);
        assert!((drop_rate(0.4, 10.0, 5.0) - 0.2).abs() < 1e-12);
        assert_eq!(drop_rate(0.4, 10.0, 25.0), 0.4);
        assert_eq!(drop_rate(0.4, 0.0, 0.0), 0.4);
    }
}
