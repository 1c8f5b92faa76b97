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
    let Trained::Finished { method, .. } = train::<A, _, _>(&spec, &io, method, &PresenceSource { data: &data, seed: 1 }, None, &device).expect("trains")
    else {
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

/// Pooled features held in memory, served as `[n, D, 1, 1]` map batches.
struct Features {
    data: Vec<f32>,
    labels: Vec<usize>,
    dim: usize,
}

impl fgia_train::engine::BatchSource for Features {
    type Batch = fgia_train::sources::MapBatch;
    fn labels(&self) -> &[usize] {
        &self.labels
    }
    fn load(&self, _: usize, _: usize, items: &[usize]) -> Result<Self::Batch, fgia_train::TrainError> {
        let data = items.iter().flat_map(|&i| self.data[i * self.dim..(i + 1) * self.dim].iter().copied()).collect();
        Ok(fgia_train::sources::MapBatch {
            data,
            shape: [items.len(), self.dim, 1, 1],
            labels: items.iter().map(|&i| self.labels[i]).collect(),
            items: items.to_vec(),
            skipped: 0,
            geometry: Vec::new(),
        })
    }
}

#[test]
fn the_attribute_embedding_recognises_unseen_classes_from_their_attributes() {
    use fgia_external::attribute_embedding::{AttributeEmbedding, SjeMethod, attribute_vectors, predict};
    // 16 classes with 24 attributes each (percentages); images are a fixed linear map of their
    // class's attributes plus noise. Classes 0..12 are seen, 12..16 unseen.
    let (classes, attrs, dim, seen) = (16, 24, 20, 12);
    let mut g = SplitMix64::new(5);
    let percent: Vec<Vec<f32>> =
        (0..classes).map(|_| (0..attrs).map(|_| if g.coin() { 80.0 + 20.0 * g.next_f64() as f32 } else { 10.0 * g.next_f64() as f32 }).collect()).collect();
    let phi = attribute_vectors(&percent);
    let map: Vec<f32> = (0..dim * attrs).map(|_| g.next_f64() as f32 - 0.5).collect();
    let image = |c: usize, g: &mut SplitMix64| -> Vec<f32> {
        (0..dim).map(|d| (0..attrs).map(|a| map[d * attrs + a] * phi[c * attrs + a]).sum::<f32>() + 0.05 * (g.next_f64() as f32 - 0.5)).collect()
    };
    let (mut train_x, mut train_labels) = (Vec::new(), Vec::new());
    for i in 0..seen * 20 {
        train_x.extend(image(i % seen, &mut g));
        train_labels.push(i % seen);
    }
    let (mut test, mut test_labels) = (Vec::new(), Vec::new());
    for i in 0..(classes - seen) * 20 {
        test.extend(image(seen + i % (classes - seen), &mut g));
        test_labels.push(i % (classes - seen));
    }
    let device = Default::default();
    let method = SjeMethod::<A> { model: AttributeEmbedding::new(dim, attrs, 1, &device), phi: phi[..seen * attrs].to_vec(), classes: seen };
    let spec = EngineSpec {
        epochs: 30,
        lr: 0.05,
        optimizer: OptimizerSpec::Sgd { momentum: 0.9, nesterov: false, weight_decay: 1e-4 },
        schedule: LrSchedule::cosine(),
        clip_grad_norm: 0.0,
        seed: 2,
        sampler: Sampler::Shuffled { batch_size: 32 },
    };
    let dir = tempfile::tempdir().expect("tmp");
    let io = RunIo { run_dir: dir.path().to_path_buf(), resume: false, progress: false, label: "sje".into(), stop_after_epochs: None, replicas: Vec::new() };
    let source = Features { data: train_x, labels: train_labels, dim };
    let Trained::Finished { method, epochs, .. } = train::<A, _, _>(&spec, &io, method, &source, None, &device).expect("trains") else {
        panic!("not stopped");
    };
    let w = burn::module::AutodiffModule::valid(&method.model);
    let zero_shot = predict(&w, test, dim, phi[seen * attrs..].to_vec(), classes - seen);
    let acc = 100.0 * zero_shot.iter().zip(&test_labels).filter(|(p, l)| p == l).count() as f64 / test_labels.len() as f64;
    eprintln!(
        "attribute embedding: train top-1 {:.1} % (last epoch), zero-shot top-1 on 4 unseen classes {acc:.1} % (chance 25 %)",
        epochs.last().map_or(0.0, |e| e.train_top1)
    );
    assert!(acc >= 60.0, "zero-shot {acc} % (chance 25 %)");
}
