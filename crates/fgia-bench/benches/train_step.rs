//! One training step (forward, backward, SGD update) at 224 px, batch 16, on burn-flex:
//! `train_step/efficientnet-lite0/b16_224` and `train_step/resnet50/b16_224`; and inference
//! (forward in evaluation mode, batch norm folded) at batch 1 and 32: `infer/<net>/b1_224`,
//! `infer/<net>/b32_224`. Throughput is reported in images per second. `python/train_step.py`
//! times PyTorch on the same shapes. `FGIA_KERNELS=burn` runs burn's own operations instead of
//! `fgia_nn::kernels` (the before/after switch).

// criterion_group!/criterion_main! generate undocumented items.
#![allow(missing_docs)]

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fgia_nn::{BackboneKind, NetworkConfig};
use fgia_train::Classifier;
use fgia_train::engine::{OptimizerSpec, Stepper, TrainMethod};
use fgia_train::sources::MapBatch;

type A = Autodiff<Flex>;

fn bench(c: &mut Criterion) {
    let device = Default::default();
    let mut group = c.benchmark_group("train_step");
    group.sample_size(10).throughput(Throughput::Elements(16));
    for kind in [BackboneKind::EfficientNetLite0, BackboneKind::ResNet50] {
        // Built on first use, so a filtered-out network costs neither time nor memory (the peak
        // resident set of one network's steps is measured from this binary).
        let mut state = None;
        let mut stepper = Stepper::new(&OptimizerSpec::Sgd { momentum: 0.9, nesterov: false, weight_decay: 1e-4 }, 0.0);
        group.bench_function(format!("{}/b16_224", kind.name()), |b| {
            let (method, input) = state.get_or_insert_with(|| {
                let net = NetworkConfig::new(kind).with_num_classes(200).init::<A>(&device);
                let method = Classifier { net, frozen: 0, input_stage: 0, body_lr_mult: 1.0, head_lr_mult: 10.0, label_smoothing: 0.0 };
                let pixels: Vec<f32> = (0..16 * 3 * 224 * 224).map(|i| ((i * 7919) % 211) as f32 / 105.0 - 1.0).collect();
                let batch = MapBatch { data: pixels, shape: [16, 3, 224, 224], labels: (0..16).collect(), items: (0..16).collect(), skipped: 0, geometry: Vec::new() };
                let input = method.prepare(batch, &device);
                (Some(method), input)
            });
            b.iter(|| {
                let m = method.take().expect("method is put back after each step");
                let (m, report) = stepper.step(m, input, 0, 0.01).expect("finite loss");
                *method = Some(m);
                report.loss
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("infer");
    group.sample_size(10);
    for kind in [BackboneKind::EfficientNetLite0, BackboneKind::ResNet50] {
        let mut net = None;
        for batch in [1usize, 32] {
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(format!("{}/b{batch}_224", kind.name()), |b| {
                let net = net.get_or_insert_with(|| NetworkConfig::new(kind).with_num_classes(200).init::<Flex>(&device));
                let pixels: Vec<f32> = (0..batch * 3 * 224 * 224).map(|i| ((i * 7919) % 211) as f32 / 105.0 - 1.0).collect();
                let x = Tensor::<Flex, 4>::from_data(TensorData::new(pixels, [batch, 3, 224, 224]), &device);
                b.iter(|| net.forward(x.clone()).into_data())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
