//! The geo prior against PyTorch, and trained on synthetic presence data with known ranges.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use fgia_core::rng::SplitMix64;
use fgia_external::geo_prior::{GeoMethod, GeoPriorConfig, Presence, PresenceSource, encode, presence_only_loss};
use fgia_train::engine::{EngineSpec, LrSchedule, OptimizerSpec, RunIo, Sampler, Trained, train};

type A = Autodiff<Flex>;

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

#[test]
fn the_presence_only_loss_and_its_gradient_match_pytorch() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/geo_prior_reference.json")).expect("fixture");
    let r: serde_json::Value = serde_json::from_str(&text).expect("json");
    let (n, c) = (r["n"].as_u64().expect("n") as usize, r["c"].as_u64().expect("c") as usize);
    let labels: Vec<usize> = r["labels"].as_array().expect("labels").iter().map(|x| x.as_u64().expect("label") as usize).collect();
    let device = Default::default();
    for case in r["cases"].as_array().expect("cases") {
        let obs = Tensor::<A, 2>::from_data(TensorData::new(floats(&r["obs"]), [n, c]), &device).require_grad();
        let bg = Tensor::<A, 2>::from_data(TensorData::new(floats(&r["bg"]), [n, c]), &device).require_grad();
        let w = case["pos_weight"].as_f64().expect("weight");
        let loss = presence_only_loss(obs.clone(), bg.clone(), &labels, w);
        let value: f64 = loss.clone().into_scalar().elem();
        let want = case["loss"].as_f64().expect("loss");
        assert!((value - want).abs() <= 1e-5 * want.abs().max(1.0), "pos_weight {w}: {value} vs {want}");
        let grads = loss.backward();
        for (t, key) in [(&obs, "grad_obs"), (&bg, "grad_bg")] {
            let got: Vec<f32> = t.grad(&grads).expect("grad").into_data().to_vec().expect("f32");
            let want = floats(&case[key]);
            let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-4 * scale, "{key} (pos_weight {w}): {a} vs {b}");
            }
        }
    }
}

/// Three species with rectangular ranges (longitude, latitude in degrees).
const RANGES: [[f32; 4]; 3] = [[-120.0, -80.0, 30.0, 50.0], [0.0, 40.0, 40.0, 60.0], [100.0, 140.0, -40.0, -10.0]];

fn inside(r: &[f32; 4], lon: f32, lat: f32) -> bool {
    (r[0]..=r[1]).contains(&lon) && (r[2]..=r[3]).contains(&lat)
}

#[test]
fn the_geo_prior_recovers_known_ranges_from_presence_only_data() {
    let mut g = SplitMix64::new(17);
    let (mut features, mut labels) = (Vec::new(), Vec::new());
    for (c, r) in RANGES.iter().enumerate() {
        for _ in 0..200 {
            let lon = r[0] + (r[1] - r[0]) * g.next_f64() as f32;
            let lat = r[2] + (r[3] - r[2]) * g.next_f64() as f32;
            features.extend(encode(lon, lat, None));
            labels.push(c);
        }
    }
    let data = Presence { features, labels, dim: 4 };
    let device = Default::default();
    let config = GeoPriorConfig::new(3).with_hidden(64).with_blocks(2).with_dropout(0.0);
    let method = GeoMethod::<A> { net: config.init(&device), pos_weight: 3.0 };
    let spec = EngineSpec {
        epochs: 40,
        lr: 3e-3,
        optimizer: OptimizerSpec::Adamw { weight_decay: 0.0 },
        schedule: LrSchedule::cosine(),
        clip_grad_norm: 0.0,
        seed: 1,
        sampler: Sampler::Shuffled { batch_size: 64 },
    };
    let dir = tempfile::tempdir().expect("tmp");
    let io = RunIo { run_dir: dir.path().to_path_buf(), resume: false, progress: false, label: "geo".into(), stop_after_epochs: None, replicas: Vec::new() };
    let Trained::Finished { method, .. } = train::<A, _, _>(&spec, &io, method, &PresenceSource { data: &data, seed: 1 }, None, &device).expect("trains") else {
        panic!("not stopped");
    };
    // Every 5 degrees over the globe: inside a range the prior must say present, outside absent.
    let mut grid = Vec::new();
    for lat in (-85..=85).step_by(5) {
        for lon in (-180..180).step_by(5) {
            grid.push((lon as f32, lat as f32));
        }
    }
    let x = Tensor::<Flex, 2>::from_data(TensorData::new(grid.iter().flat_map(|&(lo, la)| encode(lo, la, None)).collect::<Vec<_>>(), [grid.len(), 4]), &device);
    let net = burn::module::AutodiffModule::valid(&method.net);
    let p: Vec<f32> = burn::tensor::activation::sigmoid(net.forward(x)).into_data().to_vec().expect("f32");
    for (c, r) in RANGES.iter().enumerate() {
        let (mut tp, mut pos, mut tn, mut neg) = (0, 0, 0, 0);
        for (k, &(lon, lat)) in grid.iter().enumerate() {
            let present = p[k * 3 + c] > 0.5;
            if inside(r, lon, lat) {
                pos += 1;
                tp += usize::from(present);
            } else {
                neg += 1;
                tn += usize::from(!present);
            }
        }
        let (recall, specificity) = (tp as f64 / pos as f64, tn as f64 / neg as f64);
        eprintln!("species {c}: {tp}/{pos} grid points inside its range found, {tn}/{neg} outside rejected");
        assert!(recall >= 0.8 && specificity >= 0.97, "species {c}: recall {recall:.2}, specificity {specificity:.3}");
    }
}
