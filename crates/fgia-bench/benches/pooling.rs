//! High-order pooling operators of `fgia-encoding`, forward and forward+backward, at the
//! papers' shapes. Compare with `python/pooling_torch.py` (same shapes, PyTorch CPU) on the
//! same machine.
//!
//! - `vgg16-448`: batch 32, C = 512, 28x28 (VGG-16 conv5 at 448 px): B-CNN, compact bilinear
//!   (Tensor Sketch and Random Maclaurin, d = 8192), HBP (three layers; d = 2048 here, the
//!   paper's 8192 takes minutes per iteration on a CPU);
//! - `vgg16-224`: batch 32, C = 512, 14x14 (the papers' 224 px input): kernel pooling (order 4,
//!   d = 4096), LRBP (reduction to 100, rank 8, 200 classes);
//! - `resnet50-448`: batch 32, C = 2048, 14x14: iSQRT-COV and MPN-COV after the 1x1 reduction
//!   to 256 (conv + BN + ReLU, included), grouped bilinear (16 groups of 32);
//! - `small`: batch 8, C = 64, 7x7, every operator.

// criterion_group!/criterion_main! generate undocumented items.
#![allow(missing_docs)]

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use criterion::{Criterion, criterion_group, criterion_main};
use fgia_encoding::pooling::compact_bilinear::RandomMaclaurin;
use fgia_encoding::pooling::grouped_bilinear::GroupedBilinear;
use fgia_encoding::pooling::hbp::HierarchicalBilinear;
use fgia_encoding::pooling::isqrt_cov::{ITERATIONS, Reduction, isqrt_cov};
use fgia_encoding::pooling::kernel_pooling::KernelPooling;
use fgia_encoding::pooling::lrbp::LowRankBilinear;
use fgia_encoding::pooling::tensor_sketch::TensorSketch;
use fgia_encoding::pooling::{bcnn::bilinear_pool, mpn_cov::mpn_cov};

type A = Autodiff<Flex>;

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Bcnn,
    Ts,
    Rm,
    Hbp,
    Kp,
    Lrbp,
    Isqrt,
    Mpn,
    Grouped,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Bcnn => "bcnn",
            Op::Ts => "compact-bilinear-ts",
            Op::Rm => "compact-bilinear-rm",
            Op::Hbp => "hbp",
            Op::Kp => "kernel-pooling",
            Op::Lrbp => "lrbp",
            Op::Isqrt => "isqrt-cov",
            Op::Mpn => "mpn-cov",
            Op::Grouped => "grouped-bilinear",
        }
    }

    /// Whether the 1x1 reduction to 256 channels comes first (the covariance poolings).
    fn reduced(self) -> bool {
        matches!(self, Op::Isqrt | Op::Mpn)
    }
}

fn input<Bk: Backend>(shape: [usize; 4]) -> Tensor<Bk, 4> {
    let (data, _) = fgia_bench::random_embeddings(shape.iter().product(), 1, 1, 3);
    Tensor::from_data(TensorData::new(data.into_iter().map(f32::abs).collect::<Vec<_>>(), shape), &Default::default())
}

/// The layers of one shape, for one backend.
struct Layers<Bk: Backend> {
    reduce: Option<Reduction<Bk>>,
    rm: RandomMaclaurin<Bk>,
    ts: TensorSketch,
    hbp: HierarchicalBilinear<Bk>,
    kp: KernelPooling<Bk>,
    lrbp: (Reduction<Bk>, LowRankBilinear<Bk>),
    grouped: GroupedBilinear<Bk>,
}

impl<Bk: Backend> Layers<Bk> {
    fn new(c: usize, reduce_to: Option<usize>) -> Self {
        let dev = Default::default();
        Layers {
            reduce: reduce_to.map(|o| Reduction::new(c, o, &dev)),
            rm: RandomMaclaurin::new(c, 8192, 1, &dev),
            ts: TensorSketch::new(c, 8192, 1),
            hbp: HierarchicalBilinear::new(&[c, c, c], 2048, &dev),
            kp: KernelPooling::new(c, 4096, 4, 1e-3, 1, &dev),
            lrbp: (Reduction::new(c, 100, &dev), LowRankBilinear::new(100, 200, 8, &dev)),
            grouped: GroupedBilinear::new(c, 16, 32, &dev),
        }
    }

    fn run(&self, op: Op, x: Tensor<Bk, 4>) -> Tensor<Bk, 2> {
        match op {
            Op::Bcnn => bilinear_pool(x),
            Op::Ts => self.ts.forward(x),
            Op::Rm => self.rm.forward(x),
            Op::Hbp => self.hbp.forward(vec![x.clone(), x.clone(), x]),
            Op::Kp => self.kp.forward(x),
            Op::Lrbp => self.lrbp.1.forward(self.lrbp.0.forward(x)),
            Op::Isqrt => isqrt_cov(self.reduce.as_ref().expect("reduction").forward(x), ITERATIONS),
            Op::Mpn => mpn_cov(self.reduce.as_ref().expect("reduction").forward(x), 0.5),
            Op::Grouped => self.grouped.pool(self.grouped.group(x)),
        }
    }
}

fn bench(c: &mut Criterion) {
    type Setting = (&'static str, [usize; 4], &'static [Op]);
    let all = &[Op::Bcnn, Op::Ts, Op::Rm, Op::Hbp, Op::Kp, Op::Lrbp, Op::Isqrt, Op::Mpn, Op::Grouped];
    let settings: [Setting; 4] = [
        ("vgg16-448", [32, 512, 28, 28], &[Op::Bcnn, Op::Ts, Op::Rm, Op::Hbp]),
        ("vgg16-224", [32, 512, 14, 14], &[Op::Kp, Op::Lrbp]),
        ("resnet50-448", [32, 2048, 14, 14], &[Op::Isqrt, Op::Mpn, Op::Grouped]),
        ("small", [8, 64, 7, 7], all),
    ];
    for (shape_name, shape, ops) in settings {
        let mut group = c.benchmark_group(format!("pooling/{shape_name}"));
        group.sample_size(10);
        let reduce_to = ops.iter().any(|o| o.reduced()).then_some(256.min(shape[1]));
        let li = Layers::<Flex>::new(shape[1], reduce_to);
        let la = Layers::<A>::new(shape[1], reduce_to);
        let x_i = input::<Flex>(shape);
        let x_a = input::<A>(shape);
        for &op in ops {
            group.bench_function(format!("{}/forward", op.name()), |b| b.iter(|| li.run(op, x_i.clone()).into_data()));
            group.bench_function(format!("{}/forward-backward", op.name()), |b| {
                b.iter(|| {
                    let x = x_a.clone().require_grad();
                    let y = la.run(op, x.clone());
                    let grads = y.sum().backward();
                    x.grad(&grads).expect("gradient").into_data()
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
