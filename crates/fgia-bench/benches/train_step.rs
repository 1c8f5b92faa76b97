//! One training step (forward, backward, SGD update) at 224 px, batch 16, on burn-flex:
//! `train_step/efficientnet-lite0/b16_224` and `train_step/resnet50/b16_224`. Throughput is
//! reported in images per second. `python/train_step.py` times PyTorch on the same shapes.

// criterion_group!/criterion_main! generate undocumented items.
#![allow(missing_docs)]

use burn::backend::{Autodiff, Flex};
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
        let net = NetworkConfig::new(kind).with_num_classes(200).init::<A>(&device);
        let mut method = Some(Classifier { net, frozen: 0, input_stage: 0, body_lr_mult: 1.0, head_lr_mult: 10.0, label_smoothing: 0.0 });
        let mut stepper = Stepper::new(&OptimizerSpec::Sgd { momentum: 0.9, nesterov: false, weight_decay: 1e-4 }, 0.0);
        let pixels: Vec<f32> = (0..16 * 3 * 224 * 224).map(|i| ((i * 7919) % 211) as f32 / 105.0 - 1.0).collect();
        let batch = MapBatch { data: pixels, shape: [16, 3, 224, 224], labels: (0..16).collect(), items: (0..16).collect(), skipped: 0, geometry: Vec::new() };
        let input = method.as_ref().expect("built").prepare(batch, &device);
        group.bench_function(format!("{}/b16_224", kind.name()), |b| {
            b.iter(|| {
                let m = method.take().expect("method is put back after each step");
                let (m, report) = stepper.step(m, &input, 0, 0.01).expect("finite loss");
                method = Some(m);
                report.loss
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
