//! Integration tests of fgia-train: a training step lowers the loss, a killed run resumes to the
//! same result, a NaN loss stops the run, and run folders are never overwritten.

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use fgia_nn::{BackboneKind, NetworkConfig};
use fgia_train::engine::{Stepper, TrainMethod};
use fgia_train::sources::MapBatch;
use fgia_train::{Classifier, Outcome, Recipe, RunContext, TrainError, engine_spec, read_metrics, train_and_evaluate};

type A = Autodiff<Flex>;

/// burn's random generator is global to the process: tests that seed it and then initialise or
/// train must not interleave, or they draw each other's numbers.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// 4 classes of 40x40 images, 6 train and 3 test each.
fn tiny_cub(root: &Path) {
    fgia_core::testing::write_tiny_cub(root, 4, 6, 3, 40);
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
lr = {lr:e}
head_lr = {lr:e}
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
        replicas: Vec::new(),
    }
}

#[test]
fn a_few_steps_on_a_fixed_batch_lower_its_loss() {
    let _guard = serial();
    let device = Default::default();
    // Seeded initialisations, so the test is the same on every run; several, so it does not
    // rest on one lucky draw.
    for seed in 0..3 {
        <A as burn::tensor::backend::Backend>::seed(&device, seed);
        let net = NetworkConfig::new(BackboneKind::ResNet18).with_num_classes(4).with_width_div(16).init::<A>(&device);
        let r = recipe("", 1, 0.02);
        let mut method = Classifier { net, frozen: 0, input_stage: 0, body_lr_mult: 1.0, head_lr_mult: 1.0, label_smoothing: 0.0 };
        let mut stepper = Stepper::new(&engine_spec(&r).optimizer, 0.0);
        let pixels: Vec<f32> = (0..8 * 3 * 32 * 32).map(|i| ((i * 7919) % 211) as f32 / 105.0 - 1.0).collect();
        let batch =
            MapBatch { data: pixels, shape: [8, 3, 32, 32], labels: vec![0, 1, 2, 3, 0, 1, 2, 3], items: (0..8).collect(), skipped: 0, geometry: Vec::new() };
        let input = method.prepare(batch, &device);
        let mut losses = Vec::new();
        for _ in 0..10 {
            let (next, report) = stepper.step(method, &input, 0, 0.02).expect("finite");
            method = next;
            assert!(report.grad_norm.is_finite() && report.grad_norm > 0.0);
            losses.push(report.loss);
        }
        assert!(losses[9] < losses[0] * 0.8, "seed {seed}: loss should fall on a fixed batch: {losses:?}");
    }
}

#[test]
fn a_killed_run_resumes_to_the_same_result() {
    let _guard = serial();
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
    let _guard = serial();
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
    let _guard = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    tiny_cub(&data);
    let mut r = recipe("", 2, 1e30);
    r.train.clip_grad_norm = 0.0;
    r.train.warmup_epochs = 0.0;
    let err = train_and_evaluate::<A>(&r, &ctx(&dir.path().join("run"), &data, false, None), &Default::default()).expect_err("diverges");
    assert!(matches!(err, TrainError::NonFinite { .. }), "{err}");
    assert!(err.to_string().contains("loss is") || err.to_string().contains("gradient norm is"), "{err}");
    assert!(err.to_string().contains("epoch 1"), "names the epoch: {err}");
}

#[test]
fn a_run_folder_is_never_overwritten() {
    let _guard = serial();
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

/// `--resume` continues a run only on the data it started on: another data root, or the same
/// root with another class list, is an error naming `data.json`, before any training.
#[test]
fn a_resume_on_other_data_is_refused() {
    let _guard = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    tiny_cub(&data);
    let r = recipe("", 3, 0.05);
    let device = Default::default();
    let run = dir.path().join("run");
    let out = train_and_evaluate::<A>(&r, &ctx(&run, &data, false, Some(1)), &device).expect("first part");
    assert!(matches!(out, Outcome::Stopped { epochs_done: 1 }));
    let other = dir.path().join("other");
    tiny_cub(&other);
    let e = train_and_evaluate::<A>(&r, &ctx(&run, &other, true, None), &device).err().expect("other root");
    assert!(e.to_string().contains("data.json") && e.to_string().contains("same data root"), "{e}");
    fgia_core::testing::write_tiny_cub(&data, 5, 6, 3, 40);
    let e = train_and_evaluate::<A>(&r, &ctx(&run, &data, true, None), &device).err().expect("other classes");
    assert!(e.to_string().contains("4 classes and the data now has 5"), "{e}");
    assert_eq!(read_metrics(&run).expect("metrics").len(), 1, "nothing was trained");
}
