use burn::backend::{Autodiff, Flex};
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::prelude::*;
use fgia_nn::{BackboneKind, NetworkConfig};
use std::time::Instant;

type B = Autodiff<Flex>;

fn infer(kind: BackboneKind, res: usize, bs: usize) {
    let device = Default::default();
    let net = NetworkConfig::new(kind).with_num_classes(40).init::<Flex>(&device);
    let x = Tensor::<Flex, 4>::random([bs, 3, res, res], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    for i in 0..3 {
        let t = Instant::now();
        let mut h = x.clone();
        let mut per = vec![];
        for s in 0..net.num_stages() { let t0 = Instant::now(); h = net.forward_stage(s, h); let _ = h.clone().sum().into_scalar(); per.push(format!("{:.2}", t0.elapsed().as_secs_f64())); }
        let dt = t.elapsed().as_secs_f64();
        if i > 0 { eprintln!("INFER {kind:?} res {res} bs {bs}: {:.3}s, {:.1} img/s stages {:?}", dt, bs as f64 / dt, per); }
    }
}

fn time(kind: BackboneKind, res: usize, bs: usize, frozen: usize) {
    let device = Default::default();
    let mut net = NetworkConfig::new(kind).with_num_classes(40).init::<B>(&device);
    let mut optim = SgdConfig::new().init::<B, fgia_nn::Network<B>>();
    let x = Tensor::<B, 4>::random([bs, 3, res, res], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let y = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![1i64; bs], [bs]), &device);
    let loss_fn = burn::nn::loss::CrossEntropyLossConfig::new().init::<B>(&device);
    for i in 0..3 {
        let t = Instant::now();
        let xx = if frozen > 0 {
            use burn::module::AutodiffModule;
            let inner = net.valid();
            let mut h = x.clone().inner();
            for s in 0..frozen { h = inner.forward_stage(s, h); }
            Tensor::from_inner(h)
        } else { x.clone() };
        let logits = net.head_from_features(net.forward_stages_from(frozen, xx));
        let loss = loss_fn.forward(logits, y.clone());
        let t1 = t.elapsed().as_secs_f64();
        let g = GradientsParams::from_grads(loss.backward(), &net);
        let t2 = t.elapsed().as_secs_f64();
        net = optim.step(0.01, net, g);
        let dt = t.elapsed().as_secs_f64();
        if i > 0 { eprintln!("TRAIN {kind:?} res {res} bs {bs} frozen {frozen}: fwd {t1:.2} bwd {:.2} total {:.3}s/step, {:.1} img/s", t2-t1, dt, bs as f64 / dt); }
    }
}

#[test]
fn scratch_timing() {
    infer(BackboneKind::ResNet50, 224, 16);
    time(BackboneKind::ResNet50, 160, 16, 0);
}
