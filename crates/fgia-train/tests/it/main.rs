//! Integration tests of fgia-train: a training step lowers the loss, a killed run resumes to the
//! same result, a NaN loss stops the run, and run folders are never overwritten.

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use fgia_core::rng::SplitMix64;
use fgia_nn::{BackboneKind, NetworkConfig};
use fgia_train::{Outcome, Recipe, RunContext, StepRates, TrainError, read_metrics, sgd, train_and_evaluate, train_step};

type A = Autodiff<Flex>;

/// A tiny CUB-format dataset: 4 classes of coloured, noisy 40x40 images, 6 train and 3 test each.
fn tiny_cub(root: &Path) {
    let (mut images, mut labels, mut split, mut classes) = (String::new(), String::new(), String::new(), String::new());
    let mut rng = SplitMix64::new(5);
    let mut id = 0;
    for c in 1..=4u32 {
        classes.push_str(&format!("{c} {c:03}.class{c}\n"));
        for k in 0..9 {
            id += 1;
            let rel = format!("{c:03}.class{c}/img{id}.png");
            let base = [(c * 60) as f32, (255 - c * 50) as f32, ((c * 97) % 255) as f32];
            let img = image::RgbImage::from_fn(40, 40, |x, y| {
                let n = (rng.next_f64() * 60.0) as f32 - 30.0;
                let stripe = if (x / (2 + c) + y) % 2 == 0 { 20.0 } else { -20.0 };
                image::Rgb([0, 1, 2].map(|i| (base[i] + n + stripe).clamp(0.0, 255.0) as u8))
            });
            let p = root.join("images").join(&rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            img.save(&p).expect("save");
            images.push_str(&format!("{id} {rel}\n"));
            labels.push_str(&format!("{id} {c}\n"));
            split.push_str(&format!("{id} {}\n", u8::from(k < 6)));
        }
    }
    for (f, t) in [("images.txt", images), ("image_class_labels.txt", labels), ("train_test_split.txt", split), ("classes.txt", classes)] {
        std::fs::write(root.join(f), t).expect("write");
    }
}

fn recipe(extra_model: &str, epochs: usize, lr: f64) -> Recipe {
    Recipe::parse(&format!(
        r#"
[report]
table = "test"
method = "tiny"
dataset = "toy"

[model]
backbone = "resnet18"
pretrained = false
width_div = 16
{extra_model}

[data]
format = "cub"
resize = 36
crop = 32

[train]
epochs = {epochs}
batch_size = 8
lr = {lr}
head_lr = {lr}
weight_decay = 1e-4
schedule = "cosine"
warmup_epochs = 0.5
clip_grad_norm = 5.0
seed = 3

[eval]
tta = "flip"
batch_size = 16
"#
    ))
    .expect("valid test recipe")
}

fn ctx(run_dir: &Path, data: &Path, resume: bool, stop: Option<usize>) -> RunContext {
    RunContext {
        run_dir: run_dir.to_path_buf(),
        resume,
        data_root: Some(data.to_path_buf()),
        pretrained: None,
        device_name: "cpu".into(),
        git_revision: "test".into(),
        progress: false,
        stop_after_epochs: stop,
    }
}

#[test]
fn a_few_steps_on_a_fixed_batch_lower_its_loss() {
    let device = Default::default();
    let mut net = NetworkConfig::new(BackboneKind::ResNet18).with_num_classes(4).with_width_div(16).init::<A>(&device);
    let r = recipe("", 1, 0.05);
    let mut optim = sgd::<A>(&r.train);
    let loss_fn = burn::nn::loss::CrossEntropyLossConfig::new().init::<A>(&device);
    let x = Tensor::<A, 4>::random([8, 3, 32, 32], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let y = Tensor::<A, 1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3, 0, 1, 2, 3], [8]), &device);
    let rates = StepRates { body: 0.05, head: 0.05, clip_grad_norm: 0.0 };
    let mut losses = Vec::new();
    for _ in 0..5 {
        let logits = net.forward(x.clone());
        let (next, stats) = train_step(net, &mut optim, &loss_fn, logits, y.clone(), rates);
        net = next;
        assert!(stats.grad_norm.is_finite() && stats.grad_norm > 0.0);
        losses.push(stats.loss);
    }
    assert!(losses[4] < losses[0] * 0.8, "loss should fall on a fixed batch: {losses:?}");
}

#[test]
fn a_killed_run_resumes_to_the_same_result() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    tiny_cub(&data);
    let r = recipe("", 3, 0.05);
    let device = Default::default();
    let Outcome::Finished(whole) = train_and_evaluate::<A>(&r, &ctx(&dir.path().join("whole"), &data, false, None), &device).expect("trains") else {
        panic!("uninterrupted run must finish");
    };
    let split = dir.path().join("split");
    let out = train_and_evaluate::<A>(&r, &ctx(&split, &data, false, Some(1)), &device).expect("first part");
    assert!(matches!(out, Outcome::Stopped { epochs_done: 1 }));
    assert!(!split.join("result.json").exists());
    let Outcome::Finished(resumed) = train_and_evaluate::<A>(&r, &ctx(&split, &data, true, None), &device).expect("resumes") else {
        panic!("resumed run must finish");
    };
    let (a, b) = (read_metrics(&dir.path().join("whole")).expect("metrics"), read_metrics(&split).expect("metrics"));
    assert_eq!(a.len(), 3);
    assert_eq!(b.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.train_loss, y.train_loss, "epoch {} loss", x.epoch);
        assert_eq!(x.train_top1, y.train_top1, "epoch {} accuracy", x.epoch);
    }
    assert_eq!(whole.metrics, resumed.metrics, "final test metrics");
    assert_eq!(whole.protocol.checkpoint, "last epoch");
    assert_eq!(whole.protocol.tta, "flip");
}

#[test]
fn cached_frozen_stages_train_and_resume_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    tiny_cub(&data);
    let r = recipe("freeze_stages = 3\ncache_views = 2", 2, 0.05);
    let device = Default::default();
    let Outcome::Finished(whole) = train_and_evaluate::<A>(&r, &ctx(&dir.path().join("whole"), &data, false, None), &device).expect("trains") else {
        panic!("must finish");
    };
    let split = dir.path().join("split");
    train_and_evaluate::<A>(&r, &ctx(&split, &data, false, Some(1)), &device).expect("first part");
    let Outcome::Finished(resumed) = train_and_evaluate::<A>(&r, &ctx(&split, &data, true, None), &device).expect("resumes") else {
        panic!("must finish");
    };
    assert_eq!(whole.metrics, resumed.metrics);
    assert!(whole.protocol.trained_layers.contains("cached for 2 augmented views"));
    assert_eq!(whole.metrics["test_images"], 12.0);
}

#[test]
fn a_nan_loss_stops_the_run_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    tiny_cub(&data);
    let mut r = recipe("", 2, 1e30);
    r.train.clip_grad_norm = 0.0;
    r.train.warmup_epochs = 0.0;
    let err = train_and_evaluate::<A>(&r, &ctx(&dir.path().join("run"), &data, false, None), &Default::default()).expect_err("diverges");
    assert!(matches!(err, TrainError::NonFinite { .. }), "{err}");
    assert!(err.to_string().contains("loss is"), "{err}");
}

#[test]
fn a_run_folder_is_never_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    tiny_cub(&data);
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).expect("mkdir");
    std::fs::write(run.join("precious.txt"), "keep").expect("write");
    let err = train_and_evaluate::<A>(&recipe("", 1, 0.05), &ctx(&run, &data, false, None), &Default::default()).expect_err("exists");
    assert!(matches!(err, TrainError::RunExists(_)), "{err}");
    assert_eq!(std::fs::read_to_string(run.join("precious.txt")).expect("kept"), "keep");
}

#[test]
fn the_pinned_burn_version_is_the_locked_one() {
    let lock = std::fs::read_to_string(fgia_core::testing::workspace_root(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock")).expect("Cargo.lock");
    let needle = format!("name = \"burn\"\nversion = \"{}\"", fgia_train::BURN_VERSION);
    assert!(lock.contains(&needle), "Cargo.lock does not pin burn {}", fgia_train::BURN_VERSION);
}
