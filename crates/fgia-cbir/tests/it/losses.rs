//! Each loss's value and gradients against values computed once with PyTorch
//! (`tests/fixtures/make_loss_reference.py`, float64). Tolerance: 1e-4 relative on the value
//! and 1e-4 absolute (plus 1e-3 relative) on each gradient entry; we compute in float32.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use fgia_cbir::losses::{contrastive, crl, dgcrl, multi_similarity, piecewise_ce, proxy_anchor, triplet};
use fgia_nn::ops::l2_normalize;
use serde::Deserialize;

type B = Autodiff<Flex>;

#[derive(Deserialize)]
struct Reference {
    labels: Vec<usize>,
    x: Vec<Vec<f64>>,
    w: Vec<Vec<f64>>,
    losses: std::collections::BTreeMap<String, LossRef>,
}

#[derive(Deserialize)]
struct LossRef {
    value: f64,
    grad_x: Vec<Vec<f64>>,
    grad_w: Vec<Vec<f64>>,
}

fn reference() -> Reference {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/loss_reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("valid fixture")
}

fn tensor(v: &[Vec<f64>]) -> Tensor<B, 2> {
    let (r, c) = (v.len(), v[0].len());
    let flat: Vec<f32> = v.iter().flatten().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(flat, [r, c]), &Default::default())
}

fn close(name: &str, what: &str, got: &[f32], want: &[Vec<f64>]) {
    let want: Vec<f64> = want.iter().flatten().copied().collect();
    assert_eq!(got.len(), want.len(), "{name} {what}: size");
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert!(((g as f64) - w).abs() <= 1e-4 + 1e-3 * w.abs(), "{name} {what}[{i}]: {g} vs PyTorch {w}");
    }
}

fn check(name: &str, f: impl Fn(Tensor<B, 2>, Tensor<B, 2>, &[usize]) -> Tensor<B, 1>) {
    let r = reference();
    let want = &r.losses[name];
    let x = tensor(&r.x).require_grad();
    let w = tensor(&r.w).require_grad();
    let loss = f(l2_normalize(x.clone(), 1e-12), w.clone(), &r.labels);
    let value: f32 = loss.clone().into_scalar().elem();
    assert!(((value as f64) - want.value).abs() <= 1e-4 * want.value.abs().max(1.0), "{name}: loss {value} vs PyTorch {}", want.value);
    let grads = loss.backward();
    let gx: Vec<f32> = x.grad(&grads).expect("gradient reaches the embeddings").into_data().to_vec().expect("f32");
    close(name, "grad x", &gx, &want.grad_x);
    let gw: Vec<f32> = w.grad(&grads).map(|g| g.into_data().to_vec().expect("f32")).unwrap_or_else(|| vec![0.0; r.w.len() * r.w[0].len()]);
    close(name, "grad w", &gw, &want.grad_w);
}

#[test]
fn contrastive_matches_pytorch() {
    check("contrastive", |x, _, l| contrastive::contrastive_loss(x, l, contrastive::MARGIN));
}

#[test]
fn triplet_semi_hard_matches_pytorch() {
    check("triplet", |x, _, l| triplet::triplet_semi_hard_loss(x, l, triplet::MARGIN));
}

#[test]
fn multi_similarity_matches_pytorch() {
    check("multi_similarity", |x, _, l| multi_similarity::multi_similarity_loss(x, l, Default::default()));
}

#[test]
fn proxy_anchor_matches_pytorch() {
    check("proxy_anchor", |x, w, l| proxy_anchor::proxy_anchor_loss(x, w, l, proxy_anchor::ALPHA, proxy_anchor::DELTA));
}

#[test]
fn centralized_ranking_matches_pytorch() {
    check("crl", |x, _, l| crl::centralized_ranking_loss(x, l, crl::MARGIN));
}

#[test]
fn dgcrl_matches_pytorch() {
    check("dgcrl", |x, w, l| dgcrl::dgcrl_loss(x, w, l, Default::default()));
}

#[test]
fn piecewise_ce_matches_pytorch() {
    check("piecewise_ce", |x, w, l| piecewise_ce::piecewise_ce_loss(x, w, l, Default::default()));
}

/// Semi-hard mining by hand: points on a line.
#[test]
fn semi_hard_mining_by_hand() {
    // Anchor 0 at 0, positive 1 at 1 (D = 1); negatives at 0.5 (D = .25, easier than the
    // positive: not semi-hard), 2 (D = 4) and 3 (D = 9): the semi-hard one is at 2.
    let xs = [0.0f32, 1.0, 0.5, 2.0, 3.0];
    let labels = [0, 0, 1, 1, 1];
    let n = xs.len();
    let d: Vec<f32> = (0..n * n).map(|k| (xs[k / n] - xs[k % n]).powi(2)).collect();
    let (ap, an) = triplet::mine_semi_hard(&d, &labels);
    let pair = ap.iter().position(|&v| v == 1).expect("anchor 0, positive 1");
    assert_eq!(an[pair], 3, "negative at x = 2");
    // Anchor 1 (x = 1), positive 0 (D = 1): negatives at D .25, 1, 4: the only farther one
    // than the positive is x = 3 (D = 4); x = 2 ties with the positive and is not farther.
    let pair = ap.iter().position(|&v| v == n as i64).expect("anchor 1, positive 0");
    assert_eq!(an[pair], (n + 4) as i64);
}
