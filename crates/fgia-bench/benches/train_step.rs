//! One training step (forward, backward, SGD update) at 224 px, batch 16, on burn-flex:
//! `train_step/efficientnet-lite0/b16_224` and `train_step/resnet50/b16_224`. Throughput is
//! reported in images per second. `python/train_step.py` times PyTorch on the same shapes.

// criterion_group!/criterion_main! generate undocumented items.
#![allow(missing_docs)]

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fgia_nn::{BackboneKind, NetworkConfig};
use fgia_train::{StepRates, train_step};

type A = Autodiff<Flex>;

fn bench(c: &mut Criterion) {
    let device = Default::default();
    let mut group = c.benchmark_group("train_step");
    group.sample_size(10).throughput(Throughput::Elements(16));
    for kind in [BackboneKind::EfficientNetLite0, BackboneKind::ResNet50] {
        let recipe = fgia_train::Recipe::parse(&format!(
            "[report]\ntable=\"b\"\nmethod=\"b\"\ndataset=\"b\"\n[model]\nbackbone=\"{}\"\npretrained=false\n[data]\nformat=\"cub\"\nresize=256\ncrop=224\n[train]\nepochs=1\nbatch_size=16\nlr=0.01\nhead_lr=0.1\nweight_decay=1e-4\nschedule=\"constant\"\n",
            kind.name()
        ))
        .expect("valid recipe");
        let mut net = Some(NetworkConfig::new(kind).with_num_classes(200).init::<A>(&device));
        let mut optim = fgia_train::sgd::<A>(&recipe.train);
        let loss_fn = burn::nn::loss::CrossEntropyLossConfig::new().init::<A>(&device);
        let x = Tensor::<A, 4>::random([16, 3, 224, 224], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let y = Tensor::<A, 1, Int>::from_data(TensorData::new((0..16i64).collect::<Vec<_>>(), [16]), &device);
        let rates = StepRates { body: 0.01, head: 0.1, clip_grad_norm: 0.0 };
        group.bench_function(format!("{}/b16_224", kind.name()), |b| {
            b.iter(|| {
                let n = net.take().expect("network is put back after each step");
                let logits = n.forward(x.clone());
                let (n, stats) = train_step(n, &mut optim, &loss_fn, logits, y.clone(), rates);
                net = Some(n);
                stats.loss
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
