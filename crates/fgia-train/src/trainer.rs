//! The fine-tuning loop: SGD with momentum and weight decay, separate learning rates for the
//! pretrained layers and the new head, warm-up and cosine or step schedules, global-norm
//! clipping, a checkpoint every epoch with exact resume, and a stop on a NaN or infinite loss.
//!
//! All randomness derives from the recipe's seed and the epoch: data order, augmentation
//! ([`fgia_core::rng::SplitMix64::for_item`]) and the backend's generator (reseeded at every
//! epoch start). So a run resumed from the checkpoint of epoch `e` continues exactly as the
//! uninterrupted run would have.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use fgia_core::datasets::{Dataset, DatasetKind, ReadOptions};
use fgia_core::imaging::load_batch;
use fgia_core::record::{EpochMetrics, Protocol, RECORD_SCHEMA, ResultRecord, now_utc_rfc3339, write_atomic, write_json_atomic};
use fgia_core::rng::SplitMix64;
use fgia_nn::weights::load_network;
use fgia_nn::{Network, NetworkConfig};
use serde::{Deserialize, Serialize};

use crate::clip::{global_grad_norm, scale_gradients};
use crate::error::TrainError;
use crate::eval::{EvalOutput, TailClassifier, evaluate, evaluate_maps};
use crate::frozen_cache::FrozenCache;
use crate::recipe::{Recipe, describe_transform};
use crate::schedule::lr_factor;

/// The burn version this toolkit is pinned to (checked against `Cargo.lock` by a test).
pub const BURN_VERSION: &str = "0.21.0";

/// Everything about a run that is not in the recipe.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The run folder (created; never overwritten).
    pub run_dir: PathBuf,
    /// Continue the run in `run_dir` from its last checkpoint.
    pub resume: bool,
    /// Dataset root (overrides the recipe's).
    pub data_root: Option<PathBuf>,
    /// Pretrained weights file, when the recipe asks for pretrained weights.
    pub pretrained: Option<PathBuf>,
    /// Device, in words, for the record.
    pub device_name: String,
    /// Code revision, for the record.
    pub git_revision: String,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// Stop (as if killed) after this many epochs of this session; for tests of resume.
    pub stop_after_epochs: Option<usize>,
}

/// State saved with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    epoch: usize,
    wall_time_s: f64,
}

/// What [`train_and_evaluate`] returns.
#[derive(Debug)]
pub enum Outcome {
    /// Training finished and the result was written.
    Finished(Box<ResultRecord>),
    /// Stopped early by [`RunContext::stop_after_epochs`].
    Stopped {
        /// Epochs completed so far.
        epochs_done: usize,
    },
}

/// Reads the dataset a recipe names.
pub fn load_dataset(recipe: &Recipe, root_override: Option<&Path>) -> Result<Dataset, TrainError> {
    let kind: DatasetKind = recipe.data.format.parse().map_err(|m: String| TrainError::Recipe { path: PathBuf::from("<recipe>"), message: m })?;
    let root = root_override
        .map(Path::to_path_buf)
        .or_else(|| recipe.data.root.clone())
        .ok_or_else(|| TrainError::Recipe { path: PathBuf::from("<recipe>"), message: "no dataset root (set data.root or pass --data-root)".into() })?;
    Ok(kind.read(&root, ReadOptions { skip_bad: recipe.data.skip_bad })?)
}

/// Builds the network of a recipe: ImageNet weights when asked for, then a new head.
pub fn build_network<B: Backend>(recipe: &Recipe, num_classes: usize, pretrained: Option<&Path>, device: &B::Device) -> Result<Network<B>, TrainError> {
    let m = &recipe.model;
    B::seed(device, recipe.train.seed);
    if !m.pretrained {
        return Ok(NetworkConfig::new(m.backbone).with_num_classes(num_classes).with_width_div(m.width_div).init(device));
    }
    let path = pretrained
        .ok_or_else(|| TrainError::Recipe { path: PathBuf::from("<recipe>"), message: "model.pretrained is set but no weights file was given".into() })?;
    let net = NetworkConfig::new(m.backbone).with_width_div(m.width_div).init(device);
    let (net, _) = load_network(net, m.backbone, path)?;
    Ok(net.reset_classifier(num_classes, device))
}

fn checkpoint_dir(run_dir: &Path, epoch: usize) -> PathBuf {
    run_dir.join("checkpoints").join(format!("epoch-{epoch:04}"))
}

/// The newest complete checkpoint of a run folder (its `state.json` is written last).
fn latest_checkpoint(run_dir: &Path) -> Option<(usize, PathBuf)> {
    let dir = run_dir.join("checkpoints");
    std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let epoch: usize = name.strip_prefix("epoch-")?.parse().ok()?;
            e.path().join("state.json").is_file().then_some((epoch, e.path()))
        })
        .max_by_key(|(e, _)| *e)
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
}

fn to_images<B: Backend>(pixels: Vec<f32>, n: usize, crop: u32, device: &B::Device) -> Tensor<B, 4> {
    let c = crop as usize;
    Tensor::from_data(TensorData::new(pixels, [n, 3, c, c]), device) // [B, 3, H, W]
}

fn to_labels<B: Backend>(labels: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    Tensor::from_data(TensorData::new(v, [labels.len()]), device)
}

/// Forward pass of a training step: frozen leading stages run on the inner backend in
/// inference mode (no graph, batch norm with running statistics), the rest with autodiff.
fn forward_train<B: AutodiffBackend>(net: &Network<B>, frozen: usize, images: Tensor<B, 4>) -> Tensor<B, 2> {
    let x = if frozen > 0 {
        let inner = net.valid();
        let mut h = images.inner();
        for i in 0..frozen.min(inner.num_stages()) {
            h = inner.forward_stage(i, h);
        }
        Tensor::from_inner(h)
    } else {
        images
    };
    net.head_from_features(net.forward_stages_from(frozen, x))
}

/// Learning rates and clipping of one step.
#[derive(Debug, Clone, Copy)]
pub struct StepRates {
    /// Learning rate of every parameter but the head's.
    pub body: f64,
    /// Learning rate of the head.
    pub head: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub clip_grad_norm: f64,
}

/// What one step measured.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// Loss before the update.
    pub loss: f32,
    /// Correct arg-max predictions in the batch.
    pub hits: usize,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// One optimisation step from `logits` (computed by `net` on the batch): cross-entropy,
/// backward, global-norm clipping, then SGD with the body's and the head's learning rates.
/// A non-finite loss returns the network unchanged; the caller stops the run.
pub fn train_step<B: AutodiffBackend, O: Optimizer<Network<B>, B>>(
    mut net: Network<B>,
    optim: &mut O,
    loss_fn: &burn::nn::loss::CrossEntropyLoss<B>,
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    rates: StepRates,
) -> (Network<B>, StepStats) {
    let n = targets.dims()[0];
    let loss = loss_fn.forward(logits.clone(), targets.clone());
    let value: f32 = loss.clone().into_scalar().elem();
    if !value.is_finite() {
        return (net, StepStats { loss: value, hits: 0, grad_norm: f64::NAN });
    }
    let hits: i64 = logits.inner().argmax(1).reshape([n]).equal(targets.inner()).int().sum().into_scalar().elem();
    let mut grads = loss.backward();
    let mut head_grads = GradientsParams::from_module(&mut grads, net.head_layer());
    let mut body_grads = GradientsParams::from_grads(grads, &net);
    // One global norm over both groups, as torch's clip_grad_norm_ over all parameters.
    let norm = global_grad_norm::<B, _>(&net, &body_grads).hypot(global_grad_norm::<B, _>(&net, &head_grads));
    if rates.clip_grad_norm > 0.0 && norm > rates.clip_grad_norm {
        let f = rates.clip_grad_norm / (norm + 1e-6);
        scale_gradients::<B, _>(&net, &mut body_grads, f);
        scale_gradients::<B, _>(&net, &mut head_grads, f);
    }
    if rates.body > 0.0 {
        net = optim.step(rates.body, net, body_grads);
    }
    net = optim.step(rates.head, net, head_grads);
    (net, StepStats { loss: value, hits: hits as usize, grad_norm: norm })
}

/// The SGD optimiser of a recipe: momentum (PyTorch semantics: no dampening) and L2 weight
/// decay added to the gradient.
pub fn sgd<B: AutodiffBackend>(t: &crate::recipe::TrainSection) -> impl Optimizer<Network<B>, B> {
    SgdConfig::new()
        .with_momentum(Some(MomentumConfig::new().with_momentum(t.momentum).with_dampening(0.0).with_nesterov(false)))
        .with_weight_decay((t.weight_decay > 0.0).then(|| WeightDecayConfig::new(t.weight_decay as f32)))
        .init::<B, Network<B>>()
}

fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::for_item(seed, epoch as u64, u64::MAX).shuffle(&mut order);
    order
}

/// Trains a recipe in a run folder and evaluates the last epoch on the test split.
pub fn train_and_evaluate<B: AutodiffBackend>(recipe: &Recipe, ctx: &RunContext, device: &B::Device) -> Result<Outcome, TrainError> {
    let run_dir = &ctx.run_dir;
    let recipe = if ctx.resume {
        // The run folder's own recipe rules; a resumed run cannot change its settings.
        Recipe::load(&run_dir.join("recipe.toml"))?
    } else {
        if run_dir.exists() {
            return Err(TrainError::RunExists(run_dir.clone()));
        }
        std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
        write_atomic(&run_dir.join("recipe.toml"), recipe.to_toml().as_bytes())?;
        recipe.clone()
    };
    let dataset = load_dataset(&recipe, ctx.data_root.as_deref())?;
    let num_classes = dataset.num_classes();
    if !ctx.resume {
        write_json_atomic(&run_dir.join("classes.json"), &dataset.classes.names)?;
    }
    let mut net: Network<B> = build_network(&recipe, num_classes, ctx.pretrained.as_deref(), device)?;
    let t = &recipe.train;
    let mut optim = sgd::<B>(t);

    let mut start_epoch = 0;
    let mut wall_before = 0.0;
    if ctx.resume {
        if let Some((epoch, dir)) = latest_checkpoint(run_dir) {
            let rec = recorder();
            let ck = |e: burn::record::RecorderError| TrainError::Checkpoint { path: dir.clone(), message: e.to_string() };
            net = net.load_record(rec.load(dir.join("model"), device).map_err(ck)?);
            optim = optim.load_record(rec.load(dir.join("optim"), device).map_err(ck)?);
            let state: CheckpointState =
                serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).map_err(|e| TrainError::io(dir.join("state.json"), e))?)
                    .map_err(|e| TrainError::Checkpoint { path: dir.clone(), message: e.to_string() })?;
            start_epoch = epoch;
            wall_before = state.wall_time_s;
        }
        // Drop metric lines of epochs after the checkpoint (a kill can leave one).
        truncate_metrics(&run_dir.join("metrics.jsonl"), start_epoch)?;
    }

    let train = &dataset.train;
    let transform = recipe.train_transform();
    let loss_fn = CrossEntropyLossConfig::new().with_smoothing((t.label_smoothing > 0.0).then_some(t.label_smoothing)).init::<B>(device);
    let bs = t.batch_size;
    // A last batch of one image would break batch norm; it is dropped (and so is any batch
    // of fewer than 2).
    let iters = train.len() / bs + usize::from(train.len() % bs >= 2);
    let frozen = recipe.model.freeze_stages;
    let started = Instant::now();
    // Frozen stages never change: with cache_views, compute their outputs once (this is
    // deterministic, so a resumed run rebuilds the same cache).
    let cache = if recipe.model.cache_views > 0 && start_epoch < t.epochs {
        let inner = net.valid();
        Some(FrozenCache::build(
            &inner,
            frozen,
            recipe.model.cache_views,
            train,
            &transform,
            &dataset.test,
            &recipe.eval_transform(),
            recipe.eval.tta == "flip",
            t.seed,
            recipe.data.skip_bad,
            device,
            ctx.progress,
        )?)
    } else {
        None
    };
    let mut epochs_this_session = 0;
    for epoch in start_epoch..t.epochs {
        let epoch_start = Instant::now();
        B::seed(device, t.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
        let order = epoch_order(train.len(), t.seed, epoch);
        let bar = progress_bar(ctx.progress, iters as u64, &format!("epoch {}/{}", epoch + 1, t.epochs));
        let (mut loss_sum, mut seen, mut correct, mut norm_sum, mut skipped) = (0.0f64, 0usize, 0usize, 0.0f64, 0usize);
        let mut lr_now = 0.0;
        for step in 0..iters {
            let idx = &order[step * bs..((step + 1) * bs).min(order.len())];
            let (logits, labels) = match &cache {
                Some(cache) => {
                    let (maps, kept) = cache.train_batch(idx, t.seed, epoch);
                    skipped += idx.len() - kept.len();
                    let [c, h, w] = cache.shape;
                    let x = Tensor::<B, 4>::from_data(TensorData::new(maps, [kept.len(), c, h, w]), device); // [B, C, h, w]
                    let labels: Vec<usize> = kept.iter().map(|&k| train[idx[k]].label).collect();
                    (net.head_from_features(net.forward_stages_from(frozen, x)), labels)
                }
                None => {
                    let batch = load_batch(train, idx, &transform, t.seed, epoch as u64, recipe.data.skip_bad)?;
                    skipped += batch.skipped.len();
                    let images = to_images::<B>(batch.pixels, batch.labels.len(), transform.crop, device);
                    (forward_train(&net, frozen, images), batch.labels)
                }
            };
            let n = labels.len();
            if n < 2 {
                continue;
            }
            let factor = lr_factor(t, iters, epoch * iters + step);
            lr_now = t.lr * factor;
            let targets = to_labels::<B>(&labels, device);
            let lrs = StepRates { body: t.lr * factor, head: t.head_lr * factor, clip_grad_norm: t.clip_grad_norm };
            let (next, stats) = train_step(net, &mut optim, &loss_fn, logits, targets, lrs);
            net = next;
            let (value, hits, norm) = (stats.loss, stats.hits, stats.grad_norm);
            if !value.is_finite() {
                bar.abandon();
                return Err(TrainError::NonFinite { epoch: epoch + 1, step, value });
            }
            norm_sum += norm;
            loss_sum += value as f64 * n as f64;
            seen += n;
            correct += hits;
            bar.set_message(format!("loss {:.3}", loss_sum / seen as f64));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let test_top1 = if recipe.eval.every > 0 && (epoch + 1) % recipe.eval.every == 0 && epoch + 1 < t.epochs {
            Some(evaluate_test(&net, &recipe, &dataset, cache.as_ref(), device, ctx.progress)?.top1)
        } else {
            None
        };
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_top1: 100.0 * correct as f64 / seen.max(1) as f64,
            lr: lr_now,
            grad_norm: norm_sum / iters.max(1) as f64,
            test_top1,
            seconds: epoch_start.elapsed().as_secs_f64(),
            skipped_images: skipped,
        };
        save_checkpoint(&net, &optim, run_dir, epoch + 1, wall_before + started.elapsed().as_secs_f64())?;
        append_metrics(&run_dir.join("metrics.jsonl"), &metrics)?;
        if ctx.progress {
            eprintln!(
                "epoch {}/{}: loss {:.4}, train top-1 {:.1}%, lr {:.2e}, {:.0}s",
                epoch + 1,
                t.epochs,
                metrics.train_loss,
                metrics.train_top1,
                metrics.lr,
                metrics.seconds
            );
        }
        epochs_this_session += 1;
        if ctx.stop_after_epochs == Some(epochs_this_session) && epoch + 1 < t.epochs {
            return Ok(Outcome::Stopped { epochs_done: epoch + 1 });
        }
    }

    let eval = evaluate_test(&net, &recipe, &dataset, cache.as_ref(), device, ctx.progress)?;
    let wall = wall_before + started.elapsed().as_secs_f64();
    let record = result_record(&recipe, &dataset, &eval, ctx, wall);
    record.write(&run_dir.join("result.json"))?;
    Ok(Outcome::Finished(Box::new(record)))
}

fn evaluate_test<B: AutodiffBackend>(
    net: &Network<B>,
    recipe: &Recipe,
    dataset: &Dataset,
    cache: Option<&FrozenCache>,
    device: &B::Device,
    progress: bool,
) -> Result<EvalOutput, TrainError> {
    let inner = net.valid();
    if let Some(cache) = cache {
        let tail = TailClassifier { net: &inner, from: recipe.model.freeze_stages };
        return evaluate_maps::<B::InnerBackend>(&tail, cache, &dataset.test, recipe.eval.batch_size, recipe.eval.tta == "flip", dataset.num_classes(), device);
    }
    evaluate::<B::InnerBackend>(
        &inner,
        &dataset.test,
        &recipe.eval_transform(),
        recipe.eval.batch_size,
        recipe.eval.tta == "flip",
        dataset.num_classes(),
        recipe.data.skip_bad,
        device,
        progress,
    )
}

fn save_checkpoint<B: AutodiffBackend, O: Optimizer<Network<B>, B>>(
    net: &Network<B>,
    optim: &O,
    run_dir: &Path,
    epoch: usize,
    wall: f64,
) -> Result<(), TrainError> {
    let final_dir = checkpoint_dir(run_dir, epoch);
    let tmp = run_dir.join("checkpoints").join(format!(".epoch-{epoch:04}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let ck = |e: burn::record::RecorderError| TrainError::Checkpoint { path: tmp.clone(), message: e.to_string() };
    let rec = recorder();
    rec.record(net.clone().into_record(), tmp.join("model")).map_err(ck)?;
    rec.record(optim.to_record(), tmp.join("optim")).map_err(ck)?;
    write_json_atomic(&tmp.join("state.json"), &CheckpointState { epoch, wall_time_s: wall })?;
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    // Only the newest checkpoint is kept.
    for e in 1..epoch {
        let old = checkpoint_dir(run_dir, e);
        if old.exists() {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(())
}

/// Writes a module's parameters to `run_dir/<name>.mpk` atomically (a staging file, then a
/// rename).
pub fn save_module<B: Backend, M: Module<B>>(module: M, run_dir: &Path, name: &str) -> Result<(), TrainError> {
    let staging = run_dir.join(format!("{name}.staging"));
    recorder().record(module.into_record(), staging.clone()).map_err(|e| TrainError::Checkpoint { path: staging.clone(), message: e.to_string() })?;
    let target = run_dir.join(format!("{name}.mpk"));
    std::fs::rename(staging.with_extension("mpk"), &target).map_err(|e| TrainError::io(target, e))
}

/// Appends one epoch's metrics as a JSON line to `path` (`metrics.jsonl`) and syncs it.
pub fn append_metrics(path: &Path, m: &EpochMetrics) -> Result<(), TrainError> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| TrainError::io(path, e))?;
    let line = serde_json::to_string(m).expect("metrics serialise");
    writeln!(f, "{line}").map_err(|e| TrainError::io(path, e))?;
    f.sync_all().map_err(|e| TrainError::io(path, e))
}

/// Keeps the metric lines of epochs `1..=last`; rewrites the file atomically.
fn truncate_metrics(path: &Path, last: usize) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text.lines().filter(|l| serde_json::from_str::<EpochMetrics>(l).is_ok_and(|m| m.epoch <= last)).map(|l| format!("{l}\n")).collect();
    Ok(write_atomic(path, kept.as_bytes())?)
}

fn progress_bar(show: bool, len: u64, prefix: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
            .expect("static template is valid")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}

fn result_record(recipe: &Recipe, dataset: &Dataset, eval: &EvalOutput, ctx: &RunContext, wall: f64) -> ResultRecord {
    let t = &recipe.train;
    let trained = match (recipe.model.freeze_stages, recipe.model.cache_views) {
        (0, _) => "all layers".to_string(),
        (k, 0) => format!("all but the first {k} stages (frozen, batch norm in inference mode)"),
        (k, v) => format!("all but the first {k} stages (frozen; their outputs cached for {v} augmented views per training image)"),
    };
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".to_string(), eval.top1);
    metrics.insert("top5".to_string(), eval.top5);
    metrics.insert("mean_per_class".to_string(), eval.mean_per_class);
    metrics.insert("test_images".to_string(), eval.labels.len() as f64);
    ResultRecord {
        schema: RECORD_SCHEMA,
        table: recipe.report.table.clone(),
        method: recipe.report.method.clone(),
        dataset: recipe.report.dataset.clone(),
        data: recipe
            .data
            .description
            .clone()
            .unwrap_or_else(|| format!("{} ({} classes, {} train / {} test)", dataset.name, dataset.num_classes(), dataset.train.len(), dataset.test.len())),
        backbone: recipe.model.backbone.display_name().to_string(),
        resolution: recipe.data.crop,
        paper_resolution: recipe.report.paper_resolution,
        protocol: Protocol {
            split: dataset.split_note.clone(),
            train_transform: describe_transform(&recipe.train_transform()),
            eval_transform: describe_transform(&recipe.eval_transform()),
            tta: recipe.eval.tta.clone(),
            checkpoint: "last epoch".into(),
            seeds: vec![t.seed],
            epochs: t.epochs,
            batch_size: t.batch_size,
            optimizer: format!(
                "SGD momentum {} weight decay {}, lr {} (backbone) / {} (head), {:?} schedule, warm-up {} epochs{}{}",
                t.momentum,
                t.weight_decay,
                t.lr,
                t.head_lr,
                t.schedule,
                t.warmup_epochs,
                if t.clip_grad_norm > 0.0 { format!(", clip grad norm {}", t.clip_grad_norm) } else { String::new() },
                if t.label_smoothing > 0.0 { format!(", label smoothing {}", t.label_smoothing) } else { String::new() },
            ),
            trained_layers: trained,
        },
        seed: t.seed,
        metrics,
        deviations: recipe.report.deviations.clone(),
        git_revision: ctx.git_revision.clone(),
        burn_version: BURN_VERSION.into(),
        device: ctx.device_name.clone(),
        wall_time_s: wall,
        created_utc: now_utc_rfc3339(),
        run_dir: ctx.run_dir.display().to_string(),
    }
}

/// A trained network read back from its run folder.
#[derive(Debug)]
pub struct Trained<B: Backend> {
    /// The run's recipe.
    pub recipe: Recipe,
    /// The network with the newest checkpoint's weights.
    pub network: Network<B>,
    /// Class names, index = label.
    pub classes: Vec<String>,
    /// Epoch of the checkpoint.
    pub epoch: usize,
}

/// Loads the newest checkpoint of a run folder (for evaluation, prediction and embedding).
pub fn load_trained<B: Backend>(run_dir: &Path, device: &B::Device) -> Result<Trained<B>, TrainError> {
    let recipe = Recipe::load(&run_dir.join("recipe.toml"))?;
    let classes_path = run_dir.join("classes.json");
    let classes: Vec<String> = serde_json::from_str(&std::fs::read_to_string(&classes_path).map_err(|e| TrainError::io(&classes_path, e))?)
        .map_err(|e| TrainError::Checkpoint { path: classes_path.clone(), message: e.to_string() })?;
    let (epoch, dir) =
        latest_checkpoint(run_dir).ok_or_else(|| TrainError::Checkpoint { path: run_dir.join("checkpoints"), message: "no complete checkpoint".into() })?;
    let m = &recipe.model;
    let net: Network<B> = NetworkConfig::new(m.backbone).with_num_classes(classes.len()).with_width_div(m.width_div).init(device);
    let record = recorder().load(dir.join("model"), device).map_err(|e| TrainError::Checkpoint { path: dir.clone(), message: e.to_string() })?;
    Ok(Trained { network: net.load_record(record), recipe, classes, epoch })
}
