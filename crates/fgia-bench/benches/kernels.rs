//! The matrix-product-bound kernels of `fgia_nn::kernels` against this machine's f32 matrix
//! product peak, all in floating-point operations per second (criterion's "elem/s" here counts
//! flops):
//!
//! - `kernels/gemm-peak/2048`: a 2048³ product through the same `gemm` crate call, on every
//!   thread: the peak the others are measured against;
//! - `kernels/pointwise/...`: a 1x1 convolution (ResNet-50 `layer1`, batch 16), forward, and the
//!   input and weight gradients;
//! - `kernels/dense3x3/...`: a 3x3 convolution (ResNet-50 `layer1`, batch 16), forward and backward;
//! - `kernels/gram/...`: `X Xᵀ` of B-CNN at 448 px (batch 32, C = 512, M = 784), counting the
//!   `C² M` multiply-adds a full product would do.

// criterion_group!/criterion_main! generate undocumented items.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fgia_nn::kernels::conv::{self, ConvGeom, Needs};
use fgia_nn::kernels::gemm::{Threads, View, gemm};
use fgia_nn::kernels::gram;

fn values(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7919) % 211) as f32 / 105.0 - 1.0).collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("kernels");
    group.sample_size(10);

    let n = 2048;
    let (a, b) = (values(n * n), values(n * n));
    let mut out = vec![0.0f32; n * n];
    group.throughput(Throughput::Elements(2 * (n * n * n) as u64));
    group.bench_function("gemm-peak/2048", |bch| {
        bch.iter(|| gemm(&mut out, View::rows(n, n), false, &a, View::rows(n, n), &b, View::rows(n, n), 1.0, Threads::All))
    });

    let unpadded = ConvGeom { stride: [1, 1], pad_start: [0, 0], pad_end: [0, 0], dilation: [1, 1], groups: 1 };
    let padded = ConvGeom { pad_start: [1, 1], pad_end: [1, 1], ..unpadded };
    for (name, xs, ws, geom) in [("pointwise/b16-256-56x56-to-64", [16, 256, 56, 56], [64, 256, 1, 1], unpadded), ("dense3x3/b16-64-56x56", [16, 64, 56, 56], [64, 64, 3, 3], padded)] {
        let (x, w) = (values(xs.iter().product()), values(ws.iter().product()));
        let flops = 2 * xs[0] * ws[0] * ws[1] * ws[2] * ws[3] * xs[2] * xs[3];
        let (y, _) = conv::forward(&x, xs, &w, ws, None, &geom);
        group.throughput(Throughput::Elements(flops as u64));
        group.bench_function(format!("{name}/forward"), |bch| bch.iter(|| conv::forward(&x, xs, &w, ws, None, &geom)));
        group.throughput(Throughput::Elements(2 * flops as u64));
        group.bench_function(format!("{name}/backward"), |bch| bch.iter(|| conv::backward(&x, xs, &w, ws, &y, &geom, Needs { x: true, w: true, bias: false })));
    }

    let shape = [32, 512, 784];
    let x = values(shape.iter().product());
    group.throughput(Throughput::Elements(2 * (shape[0] * shape[1] * shape[1] * shape[2]) as u64));
    group.bench_function("gram/b32-512x784/forward", |bch| bch.iter(|| gram::forward(&x, shape, 1.0)));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
