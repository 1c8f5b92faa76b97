//! High-order pooling operators of `fgia-encoding`, forward and forward+backward, at the
//! papers' shapes. Compare with `python/pooling_torch.py` (same shapes, PyTorch CPU) on the
//! same machine.
//!
//! - `vgg16-448`: batch 32, C = 512, 28x28 (VGG-16 conv5 at 448 px): B-CNN, compact bilinear
//!   (Random Maclaurin, d = 8192);
//! - `resnet50-448`: batch 32, C = 2048 reduced to 256 by 1x1 conv + BN + ReLU, 14x14: iSQRT-COV
//!   (5 iterations) and MPN-COV (eigendecomposition), the reduction included;
//! - `small`: batch 8, C = 64, 7x7, every operator.

// criterion_group!/criterion_main! generate undocumented items.
#![allow(missing_docs)]

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use criterion::{Criterion, criterion_group, criterion_main};
use fgia_encoding::pooling::compact_bilinear::RandomMaclaurin;
use fgia_encoding::pooling::isqrt_cov::{ITERATIONS, Reduction, isqrt_cov};
use fgia_encoding::pooling::{bcnn::bilinear_pool, mpn_cov::mpn_cov};

type A = Autodiff<Flex>;

#[derive(Clone, Copy)]
enum Op {
    Bcnn,
    Rm,
    Isqrt,
    Mpn,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Bcnn => "bcnn",
            Op::Rm => "compact-bilinear-rm",
            Op::Isqrt => "isqrt-cov",
            Op::Mpn => "mpn-cov",
        }
    }
}

fn input<Bk: Backend>(shape: [usize; 4]) -> Tensor<Bk, 4> {
    let (data, _) = fgia_bench::random_embeddings(shape.iter().product(), 1, 1, 3);
    Tensor::from_data(TensorData::new(data.into_iter().map(f32::abs).collect::<Vec<_>>(), shape), &Default::default())
}

fn run<Bk: Backend>(op: Op, x: Tensor<Bk, 4>, reduce: Option<&Reduction<Bk>>, rm: Option<&RandomMaclaurin<Bk>>) -> Tensor<Bk, 2> {
    let x = match reduce {
        Some(r) => r.forward(x),
        None => x,
    };
    match op {
        Op::Bcnn => bilinear_pool(x),
        Op::Rm => rm.expect("rm layer").forward(x),
        Op::Isqrt => isqrt_cov(x, ITERATIONS),
        Op::Mpn => mpn_cov(x, 0.5),
    }
}

fn bench(c: &mut Criterion) {
    type Setting = (&'static str, [usize; 4], Option<usize>, &'static [Op]);
    let settings: [Setting; 3] = [
        ("vgg16-448", [32, 512, 28, 28], None, &[Op::Bcnn, Op::Rm]),
        ("resnet50-448", [32, 2048, 14, 14], Some(256), &[Op::Isqrt, Op::Mpn]),
        ("small", [8, 64, 7, 7], None, &[Op::Bcnn, Op::Rm, Op::Isqrt, Op::Mpn]),
    ];
    for (shape_name, shape, reduce_to, ops) in settings {
        let mut group = c.benchmark_group(format!("pooling/{shape_name}"));
        group.sample_size(10);
        let dev = Default::default();
        let red_i = reduce_to.map(|o| Reduction::<Flex>::new(shape[1], o, &dev));
        let red_a = reduce_to.map(|o| Reduction::<A>::new(shape[1], o, &dev));
        let ch = reduce_to.unwrap_or(shape[1]);
        let rm_i = RandomMaclaurin::<Flex>::new(ch, 8192, 1, &dev);
        let rm_a = RandomMaclaurin::<A>::new(ch, 8192, 1, &dev);
        let x_i = input::<Flex>(shape);
        let x_a = input::<A>(shape);
        for &op in ops {
            group.bench_function(format!("{}/forward", op.name()), |b| {
                b.iter(|| {
                    let y = run(op, x_i.clone(), red_i.as_ref(), Some(&rm_i));
                    y.into_data()
                })
            });
            group.bench_function(format!("{}/forward-backward", op.name()), |b| {
                b.iter(|| {
                    let x = x_a.clone().require_grad();
                    let y = run(op, x.clone(), red_a.as_ref(), Some(&rm_a));
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
