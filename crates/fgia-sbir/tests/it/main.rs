//! DSSA's HOLEF triplet loss and its gradients against values computed once with PyTorch from the
//! literal outer-subtraction definition (`tests/fixtures/make_holef_reference.py`, float64).
//! Tolerance: 1e-4 relative on the value and 1e-4 absolute (plus 1e-3 relative) on each gradient
//! entry; we compute in float32 with the expanded form.

use burn::backend::{Autodiff, Flex};
use burn::module::Param;
use burn::prelude::*;
use fgia_sbir::dssa::Holef;
use fgia_sbir::loss::energy_triplet_loss;
use serde::Deserialize;

type B = Autodiff<Flex>;

#[derive(Deserialize)]
struct Reference {
    margin: f64,
    anchor: Vec<Vec<f64>>,
    pos: Vec<Vec<f64>>,
    neg: Vec<Vec<f64>>,
    w: Vec<Vec<f64>>,
    loss: f64,
    active: usize,
    grad_anchor: Vec<Vec<f64>>,
    grad_pos: Vec<Vec<f64>>,
    grad_neg: Vec<Vec<f64>>,
    grad_w: Vec<Vec<f64>>,
}

fn tensor(v: &[Vec<f64>]) -> Tensor<B, 2> {
    let (r, c) = (v.len(), v[0].len());
    let flat: Vec<f32> = v.iter().flatten().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(flat, [r, c]), &Default::default())
}

fn close(what: &str, got: Tensor<Flex, 2>, want: &[Vec<f64>]) {
    let got: Vec<f32> = got.into_data().to_vec().expect("f32");
    let want: Vec<f64> = want.iter().flatten().copied().collect();
    assert_eq!(got.len(), want.len(), "{what}: size");
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert!(((g as f64) - w).abs() <= 1e-4 + 1e-3 * w.abs(), "{what}[{i}]: {g} vs PyTorch {w}");
    }
}

#[test]
fn the_holef_loss_and_its_gradients_match_pytorch() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/holef_reference.json");
    let r: Reference = serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("valid fixture");
    let device = Default::default();
    let (a, p, n) = (tensor(&r.anchor).require_grad(), tensor(&r.pos).require_grad(), tensor(&r.neg).require_grad());
    let d = r.w.len();
    // W = I + V: the learned part is V, so its gradient is W's.
    let holef = Holef::<B> { v: Param::from_tensor(tensor(&r.w) - Tensor::eye(d, &device)) };
    let (loss, diff) = energy_triplet_loss(a.clone(), p.clone(), n.clone(), Some(holef.w()), r.margin);
    let value: f32 = loss.clone().into_scalar().elem();
    assert!(((value as f64) - r.loss).abs() <= 1e-4 * r.loss.abs().max(1.0), "loss {value} vs PyTorch {}", r.loss);
    let active = diff.inner().add_scalar(r.margin).greater_elem(0.0).int().sum().into_scalar().elem::<i64>();
    assert_eq!(active as usize, r.active, "triplets inside the margin");
    let grads = loss.backward();
    close("grad anchor", a.grad(&grads).expect("anchor gradient"), &r.grad_anchor);
    close("grad pos", p.grad(&grads).expect("positive gradient"), &r.grad_pos);
    close("grad neg", n.grad(&grads).expect("negative gradient"), &r.grad_neg);
    close("grad W", holef.v.val().grad(&grads).expect("W gradient"), &r.grad_w);
}
