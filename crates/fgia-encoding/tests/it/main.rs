//! Pooling layers against PyTorch (`tests/fixtures/make_pooling_reference.py`, float64) and
//! their mathematical properties.
//!
//! Tolerances: outputs and input gradients within 1e-4 absolute plus 1e-3 relative of the
//! reference (we compute in float32; MPN-COV's eigendecomposition in float64).

mod registry;

use burn::backend::{Autodiff, Flex};
use burn::module::Param;
use burn::prelude::*;
use fgia_encoding::pooling::grouped_bilinear::GroupedBilinear;
use fgia_encoding::pooling::hbp::HierarchicalBilinear;
use fgia_encoding::pooling::kernel_pooling::KernelPooling;
use fgia_encoding::pooling::tensor_sketch::TensorSketch;
use fgia_encoding::pooling::{bcnn, compact_bilinear::RandomMaclaurin, covariance, descriptors, isqrt_cov, lrbp::LowRankBilinear, mpn_cov};
use serde::Deserialize;

type B = Autodiff<Flex>;

#[derive(Deserialize)]
struct Reference {
    x: Vec<f64>,
    shape: [usize; 4],
    layers: std::collections::BTreeMap<String, LayerRef>,
    lrbp_weights: LrbpWeights,
    sketch: SketchRef,
    hbp_weights: ProjRef,
    grouped_weights: GroupedRef,
}

#[derive(Deserialize)]
struct SketchRef {
    dim: usize,
    h1: Vec<usize>,
    s1: Vec<f32>,
    h2: Vec<usize>,
    s2: Vec<f32>,
    higher: Vec<Vec<(Vec<usize>, Vec<f32>)>>,
    log_alpha: Vec<f32>,
}

#[derive(Deserialize)]
struct ProjRef {
    dim: usize,
    w: Vec<Vec<f32>>,
    b: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct GroupedRef {
    groups: usize,
    group_channels: usize,
    w: Vec<f32>,
    b: Vec<f32>,
}

fn set_conv(conv: &mut burn::nn::conv::Conv2d<B>, w: &[f32], b: &[f32], out: usize, inp: usize) {
    let dev = Default::default();
    conv.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w.to_vec(), [out, inp, 1, 1]), &dev));
    conv.bias = Some(Param::from_tensor(Tensor::from_data(TensorData::new(b.to_vec(), [out]), &dev)));
}

fn tensor_sketch_of(r: &Reference) -> TensorSketch {
    let s = &r.sketch;
    TensorSketch::from_functions(s.dim, (s.h1.clone(), s.s1.clone()), (s.h2.clone(), s.s2.clone()))
}

#[test]
fn tensor_sketch_matches_pytorch_fft() {
    let r = reference();
    let ts = tensor_sketch_of(&r);
    check("tensor_sketch", |x| ts.forward(x));
}

#[test]
fn tensor_sketch_scatter_and_fft_routes_agree() {
    // The differentiable scatter of X Xᵀ and burn's rfft/irfft route are two computations of
    // the same sketch.
    let r = reference();
    let ts = tensor_sketch_of(&r);
    let dev = Default::default();
    let x = Tensor::<Flex, 4>::from_data(TensorData::new(r.x.iter().map(|&v| v as f32).collect::<Vec<_>>(), r.shape), &dev);
    let a: Vec<f32> = ts.forward(x.clone()).into_data().to_vec().expect("f32");
    let b: Vec<f32> = ts.forward_fft(x).into_data().to_vec().expect("f32");
    assert!(max_abs_diff(&a, &b) < 1e-4, "scatter {a:?} vs fft {b:?}");
}

#[test]
fn kernel_pooling_matches_pytorch() {
    let r = reference();
    let s = &r.sketch;
    let kp = KernelPooling::<B>::from_functions(tensor_sketch_of(&r), s.higher.clone(), s.log_alpha.clone(), &Default::default());
    check("kernel_pooling", |x| kp.forward(x));
}

#[test]
fn hierarchical_bilinear_matches_pytorch() {
    let r = reference();
    let p = &r.hbp_weights;
    let c = r.shape[1];
    let mut hbp = HierarchicalBilinear::<B>::new(&[c, c, c], p.dim, &Default::default());
    for (i, conv) in hbp.projections.iter_mut().enumerate() {
        set_conv(conv, &p.w[i], &p.b[i], p.dim, c);
    }
    check("hbp", |x| hbp.forward(vec![x.clone(), x.clone() / 2.0 + 1.0, x.powi_scalar(2)]));
}

fn grouped_of(r: &Reference) -> GroupedBilinear<B> {
    let g = &r.grouped_weights;
    let c = r.shape[1];
    let mut gb = GroupedBilinear::<B>::new(c, g.groups, g.group_channels, &Default::default());
    set_conv(&mut gb.grouping, &g.w, &g.b, g.groups * g.group_channels, c);
    gb
}

#[test]
fn grouped_bilinear_and_grouping_loss_match_pytorch() {
    let r = reference();
    let gb = grouped_of(&r);
    check("grouped_bilinear", |x| gb.pool(gb.group(x)));
    check("grouping_loss", |x| gb.grouping_loss(gb.group(x)).reshape([1, 1]));
}

#[test]
fn tensor_sketch_approximates_the_squared_inner_product() {
    // E⟨TS(x), TS(y)⟩ = ⟨x, y⟩² over the draw of the hash and sign functions.
    let dev = Default::default();
    let c = 16;
    let mut g = fgia_core::rng::SplitMix64::new(11);
    let mut vec = || -> Vec<f32> { (0..c).map(|_| g.next_f64() as f32 - 0.3).collect() };
    let (x, y) = (vec(), vec());
    let exact: f64 = x.iter().zip(&y).map(|(a, b)| (a * b) as f64).sum::<f64>().powi(2);
    let xy = Tensor::<Flex, 2>::from_data(TensorData::new([x, y].concat(), [2, c]), &dev);
    let sketches = 400;
    let mut mean = 0.0;
    for seed in 0..sketches {
        let f: Vec<f32> = TensorSketch::new(c, 64, seed).features_fft(xy.clone()).into_data().to_vec().expect("f32");
        mean += f[..64].iter().zip(&f[64..]).map(|(a, b)| (a * b) as f64).sum::<f64>() / sketches as f64;
    }
    assert!((mean - exact).abs() < 0.1 * exact.abs() + 1e-3, "mean over sketches {mean} vs <x,y>^2 = {exact}");
}

#[derive(Deserialize)]
struct LrbpWeights {
    u: Vec<f64>,
    v: Vec<f64>,
    b: Vec<f64>,
    classes: usize,
    rank: usize,
}

#[derive(Deserialize)]
struct LayerRef {
    y: Vec<f64>,
    y_shape: [usize; 2],
    r: Vec<f64>,
    grad_x: Vec<f64>,
}

fn reference() -> Reference {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pooling_reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("fixture")).expect("valid fixture")
}

fn close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: size");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(((g as f64) - w).abs() <= 1e-4 + 1e-3 * w.abs(), "{what}[{i}]: {g} vs PyTorch {w}");
    }
}

fn check(name: &str, f: impl Fn(Tensor<B, 4>) -> Tensor<B, 2>) {
    let r = reference();
    let l = &r.layers[name];
    let dev = Default::default();
    let x = Tensor::<B, 4>::from_data(TensorData::new(r.x.iter().map(|&v| v as f32).collect::<Vec<_>>(), r.shape), &dev).require_grad();
    let y = f(x.clone());
    assert_eq!(y.dims(), l.y_shape, "{name}: output shape");
    let yv: Vec<f32> = y.clone().into_data().to_vec().expect("f32");
    close(&format!("{name} output"), &yv, &l.y);
    let rt = Tensor::<B, 2>::from_data(TensorData::new(l.r.iter().map(|&v| v as f32).collect::<Vec<_>>(), l.y_shape), &dev);
    let grads = (y * rt).sum().backward();
    let gx: Vec<f32> = x.grad(&grads).expect("gradient reaches the input").into_data().to_vec().expect("f32");
    close(&format!("{name} grad x"), &gx, &l.grad_x);
}

#[test]
fn bilinear_pooling_matches_pytorch() {
    check("bcnn", bcnn::bilinear_pool);
}

#[test]
fn isqrt_cov_matches_pytorch() {
    check("isqrt_cov", |x| isqrt_cov::isqrt_cov(x, isqrt_cov::ITERATIONS));
}

#[test]
fn mpn_cov_matches_pytorch_eigh() {
    check("mpn_cov", |x| mpn_cov::mpn_cov(x, mpn_cov::ALPHA));
}

#[test]
fn low_rank_bilinear_matches_pytorch() {
    let r = reference();
    let w = &r.lrbp_weights;
    let c = r.shape[1];
    let dev = Default::default();
    let t = |v: &[f64], shape: [usize; 2]| Tensor::<B, 2>::from_data(TensorData::new(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), shape), &dev);
    let layer = LowRankBilinear::from_weights(
        t(&w.u, [w.classes * w.rank, c]),
        t(&w.v, [w.classes * w.rank, c]),
        Tensor::<B, 1>::from_data(TensorData::new(w.b.iter().map(|&x| x as f32).collect::<Vec<_>>(), [w.classes]), &dev),
        w.rank,
    );
    check("lrbp", |x| layer.forward(x));
    // Gradients also reach the low-rank factors.
    let x = Tensor::<B, 4>::from_data(TensorData::new(r.x.iter().map(|&v| v as f32).collect::<Vec<_>>(), r.shape), &dev);
    let grads = layer.forward(x).sum().backward();
    assert!(layer.u.grad(&grads).is_some() && layer.v.grad(&grads).is_some() && layer.bias.grad(&grads).is_some());
}

/// A symmetric positive definite `[1, c, c]` matrix with eigenvalues in `[1, 3]`.
fn spd(c: usize, seed: u64) -> Vec<f32> {
    let mut g = fgia_core::rng::SplitMix64::new(seed);
    // Random orthogonal basis by Gram-Schmidt.
    let mut q: Vec<Vec<f64>> = Vec::new();
    while q.len() < c {
        let mut v: Vec<f64> = (0..c).map(|_| g.next_f64() - 0.5).collect();
        for u in &q {
            let d: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= d * b);
        }
        let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if n > 1e-6 {
            q.push(v.into_iter().map(|a| a / n).collect());
        }
    }
    let lam: Vec<f64> = (0..c).map(|i| 1.0 + 2.0 * i as f64 / (c - 1) as f64).collect();
    (0..c * c).map(|k| (0..c).map(|i| lam[i] * q[i][k / c] * q[i][k % c]).sum::<f64>() as f32).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Newton-Schulz square root squared gives the input back on well-conditioned inputs, and
/// MPN-COV's eigendecomposition square root does too.
#[test]
fn matrix_square_roots_square_to_the_input() {
    let dev = Default::default();
    let c = 8;
    let a = spd(c, 3);
    let t = Tensor::<Flex, 3>::from_data(TensorData::new(a.clone(), [1, c, c]), &dev);
    let y = isqrt_cov::newton_schulz_sqrt(t.clone(), 20);
    let y2: Vec<f32> = y.clone().matmul(y).into_data().to_vec().expect("f32");
    assert!(max_abs_diff(&y2, &a) < 1e-3, "Newton-Schulz: |Y² − A| = {}", max_abs_diff(&y2, &a));
    let q = mpn_cov::matrix_power(t, 0.5);
    let q2: Vec<f32> = q.clone().matmul(q).into_data().to_vec().expect("f32");
    assert!(max_abs_diff(&q2, &a) < 1e-4, "eigendecomposition: |Q² − A| = {}", max_abs_diff(&q2, &a));
    // Five iterations (the paper's setting) already give a close square root.
    let t5 = Tensor::<Flex, 3>::from_data(TensorData::new(a.clone(), [1, c, c]), &dev);
    let y = isqrt_cov::newton_schulz_sqrt(t5, isqrt_cov::ITERATIONS);
    let y2: Vec<f32> = y.clone().matmul(y).into_data().to_vec().expect("f32");
    assert!(max_abs_diff(&y2, &a) < 0.1, "5 iterations: |Y² − A| = {}", max_abs_diff(&y2, &a));
}

/// B-CNN's output has unit ℓ2 norm.
#[test]
fn bilinear_output_is_unit_length() {
    let dev = Default::default();
    let x = Tensor::<Flex, 4>::random([3, 5, 4, 4], burn::tensor::Distribution::Uniform(0.0, 1.0), &dev);
    let y = bcnn::bilinear_pool(x);
    let norms: Vec<f32> = y.powi_scalar(2).sum_dim(1).sqrt().into_data().to_vec().expect("f32");
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
}

/// Random Maclaurin features approximate the second-order polynomial kernel:
/// averaged over independent projections, ⟨φ(x), φ(y)⟩ ≈ ⟨x, y⟩².
#[test]
fn random_maclaurin_approximates_the_squared_inner_product() {
    let dev = Default::default();
    let x = Tensor::<Flex, 2>::from_data([[0.3f32, -0.2, 0.5, 0.1, 0.4, -0.3]], &dev);
    let y = Tensor::<Flex, 2>::from_data([[0.2f32, -0.1, 0.4, 0.2, 0.3, -0.2]], &dev);
    let exact: f32 = (x.clone() * y.clone()).sum().into_scalar();
    let exact = exact * exact;
    let trials = 300;
    let mut mean = 0.0f64;
    for seed in 0..trials {
        let rm = RandomMaclaurin::<Flex>::new(6, 64, seed, &dev);
        let v: f32 = (rm.features(x.clone()) * rm.features(y.clone())).sum().into_scalar();
        mean += v as f64 / trials as f64;
    }
    assert!((mean - exact as f64).abs() < 0.1 * exact as f64 + 1e-3, "mean {mean} vs exact {exact}");
    // The pooled layer is the sum of the per-location features.
    let rm = RandomMaclaurin::<Flex>::new(6, 16, 1, &dev);
    let map = Tensor::<Flex, 4>::random([2, 6, 2, 3], burn::tensor::Distribution::Uniform(0.0, 1.0), &dev);
    let pooled: Vec<f32> = rm.forward(map.clone()).into_data().to_vec().expect("f32");
    let cols = descriptors(map).swap_dims(1, 2).reshape([12, 6]); // [B*M, C]
    let per: Vec<f32> = rm.features(cols).reshape([2, 6, 16]).sum_dim(1).reshape([2, 16]).into_data().to_vec().expect("f32");
    assert!(max_abs_diff(&pooled, &per) < 1e-4);
}

/// Covariance pooling by hand: two descriptors (1, 0) and (3, 2): mean (2, 1), Σ = [[1, 1], [1, 1]].
#[test]
fn covariance_by_hand() {
    let dev = Default::default();
    let x = Tensor::<Flex, 3>::from_data(TensorData::new(vec![1.0f32, 3.0, 0.0, 2.0], [1, 2, 2]), &dev);
    let s: Vec<f32> = covariance(x).into_data().to_vec().expect("f32");
    assert_eq!(s, vec![1.0, 1.0, 1.0, 1.0]);
}
