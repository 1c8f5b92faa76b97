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
