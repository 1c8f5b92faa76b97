//! The one training engine. Every family trains through [`train`]: Table 4's classifier,
//! Table 2's encodings and losses, Table 5's embedders.
//!
//! A method states three things ([`TrainMethod`]): its loss for a batch, its optimiser steps
//! per batch, and its named parameter groups with learning-rate multipliers. The engine owns
//! the rest:
//!
//! - **data**: a [`BatchSource`] (decoded and augmented images, or the frozen-map cache) loaded
//!   on a producer thread that keeps [`PREFETCH`] batches ahead of the step (decoding inside a
//!   batch runs on rayon's worker pool); batches from a [`Sampler`] (shuffled or class-balanced
//!   P x K), drawn from `(seed, epoch)`;
//! - **optimisation**: SGD (momentum, Nesterov, weight decay) or AdamW ([`OptimizerSpec`]); one
//!   per-iteration schedule ([`LrSchedule`]); one global-norm clipping over every group;
//! - **safety**: a NaN or infinite loss *or gradient norm* stops the run, naming epoch and step,
//!   before the update; the last good checkpoint is kept;
//! - **records**: `metrics.jsonl` (one line per epoch, synced), a checkpoint per epoch written
//!   file by file with `write_atomic` into a staging folder, renamed into place and read back
//!   before the previous one is removed (`save_checkpoint`), exact `resume` from the newest
//!   one, and progress bars;
//! - **run folders**: one writer at a time ([`open_run_dir`] holds the folder's lock), and a
//!   resume only on the data the run started on ([`check_run_data`]).
//!
//! Exact resume: the data order and augmentation derive from `(seed, epoch, index)` and the
//! backend generator is reseeded at every epoch start, so epoch `e + 1` of a resumed run sees
//! what the uninterrupted run saw.

use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer, Sgd, SgdConfig};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use fgia_core::record::{EpochMetrics, read_metrics, sync_dir, write_atomic};
use fgia_core::rng::SplitMix64;
use fgia_core::runlock::RunLock;
use fgia_core::sampler::pk_batches;
use serde::{Deserialize, Serialize};

use crate::clip::{global_grad_norm, scale_gradients};
use crate::error::TrainError;
use crate::parallel::Replicas;

/// Batches loaded ahead of the training step.
pub const PREFETCH: usize = 2;

/// The optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerSpec {
    /// SGD with momentum (PyTorch semantics: no dampening) and L2 weight decay added to the
    /// gradient.
    Sgd {
        /// Momentum.
        momentum: f64,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
        /// L2 weight decay.
        weight_decay: f64,
    },
    /// AdamW (decoupled weight decay), betas (0.9, 0.999), epsilon 1e-8.
    Adamw {
        /// Decoupled weight decay.
        weight_decay: f64,
    },
}

impl OptimizerSpec {
    /// In words, for the record.
    pub fn describe(&self) -> String {
        match *self {
            OptimizerSpec::Sgd { momentum, nesterov, weight_decay } => {
                format!("SGD momentum {momentum}{}, weight decay {weight_decay}", if nesterov { " (Nesterov)" } else { "" })
            }
            OptimizerSpec::Adamw { weight_decay } => format!("AdamW (betas 0.9, 0.999), decoupled weight decay {weight_decay}"),
        }
    }

    fn validate(&self) -> Result<(), String> {
        match *self {
            OptimizerSpec::Sgd { momentum, weight_decay, .. } => {
                if !(0.0..1.0).contains(&momentum) {
                    return Err(format!("momentum {momentum} must be in [0, 1)"));
                }
                if !(weight_decay.is_finite() && weight_decay >= 0.0) {
                    return Err(format!("weight decay {weight_decay} must be finite and >= 0"));
                }
            }
            OptimizerSpec::Adamw { weight_decay } => {
                if !(weight_decay.is_finite() && weight_decay >= 0.0) {
                    return Err(format!("weight decay {weight_decay} must be finite and >= 0"));
                }
            }
        }
        Ok(())
    }
}

/// The decay after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decay {
    /// Constant.
    Constant,
    /// Cosine to 0 at the last iteration.
    Cosine,
    /// Multiply by `gamma` every `step_size` epochs.
    Step,
    /// Multiply by `gamma` at each milestone epoch.
    MultiStep,
}

/// The learning-rate schedule, evaluated per iteration: linear warm-up, then a [`Decay`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    /// The decay after warm-up.
    pub decay: Decay,
    /// Warm-up length in epochs (may be fractional).
    #[serde(default)]
    pub warmup_epochs: f64,
    /// `Step`: epochs between decays.
    #[serde(default)]
    pub step_size: usize,
    /// `MultiStep`: milestone epochs.
    #[serde(default)]
    pub milestones: Vec<usize>,
    /// Factor of the step decays.
    #[serde(default = "tenth")]
    pub gamma: f64,
}

fn tenth() -> f64 {
    0.1
}

impl LrSchedule {
    /// Cosine decay without warm-up.
    pub fn cosine() -> Self {
        LrSchedule { decay: Decay::Cosine, warmup_epochs: 0.0, step_size: 0, milestones: Vec::new(), gamma: 0.1 }
    }

    /// Scale factor of the base learning rate at iteration `it` (0-based over the run) of a run
    /// of `epochs` epochs with `per_epoch` iterations each.
    ///
    /// - warm-up: linear from `1/warmup_iters` to 1 over the first `warmup_epochs`;
    /// - cosine: `0.5 (1 + cos(pi t))`, `t` from 0 after warm-up to 1 at the last iteration;
    /// - step / multi-step: `gamma^k`, `k` the number of decay epochs already reached.
    pub fn factor(&self, epochs: usize, per_epoch: usize, it: usize) -> f64 {
        let total = (epochs * per_epoch).max(1);
        let warm = (self.warmup_epochs * per_epoch as f64).round() as usize;
        if it < warm {
            return (it + 1) as f64 / warm as f64;
        }
        let epoch = it / per_epoch.max(1);
        match self.decay {
            Decay::Constant => 1.0,
            Decay::Cosine => {
                let span = (total - warm).max(1) as f64;
                let t = ((it - warm) as f64 / span).min(1.0);
                0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Decay::Step => self.gamma.powi((epoch / self.step_size.max(1)) as i32),
            Decay::MultiStep => self.gamma.powi(self.milestones.iter().filter(|&&m| epoch >= m).count() as i32),
        }
    }

    /// In words, for the record.
    pub fn describe(&self) -> String {
        let warm = if self.warmup_epochs > 0.0 { format!("linear warm-up over {} epochs, then ", self.warmup_epochs) } else { String::new() };
        let decay = match self.decay {
            Decay::Constant => "constant".to_string(),
            Decay::Cosine => "cosine decay per iteration".to_string(),
            Decay::Step => format!("x{} every {} epochs", self.gamma, self.step_size),
            Decay::MultiStep => format!("x{} at epochs {:?}", self.gamma, self.milestones),
        };
        format!("{warm}{decay}")
    }

    fn validate(&self) -> Result<(), String> {
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return Err(format!("warm-up {} epochs must be finite and >= 0", self.warmup_epochs));
        }
        if self.decay == Decay::Step && self.step_size == 0 {
            return Err("a step schedule needs step_size > 0".into());
        }
        if !(self.gamma.is_finite() && self.gamma > 0.0) {
            return Err(format!("gamma {} must be finite and > 0", self.gamma));
        }
        Ok(())
    }
}

/// Checks a schedule (for recipe validation).
pub fn engine_checks(schedule: &LrSchedule) -> Result<(), String> {
    schedule.validate().map_err(|e| format!("train: {e}"))
}

/// How batches are drawn from the training items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampler {
    /// A fresh permutation per epoch cut into batches of `batch_size`; a last batch of fewer
    /// than 2 items is dropped (batch norm needs two).
    Shuffled {
        /// Batch size.
        batch_size: usize,
    },
    /// Class-balanced batches of `p` classes x `k` images, `len / (p k)` per epoch.
    ClassBalanced {
        /// Classes per batch.
        p: usize,
        /// Images per class.
        k: usize,
    },
}

impl Sampler {
    /// The batches of `epoch` over items with `labels`.
    pub fn plan(&self, labels: &[usize], seed: u64, epoch: usize) -> Vec<Vec<usize>> {
        match *self {
            Sampler::Shuffled { batch_size } => {
                let mut order: Vec<usize> = (0..labels.len()).collect();
                SplitMix64::for_item(seed, epoch as u64, u64::MAX).shuffle(&mut order);
                order.chunks(batch_size.max(1)).filter(|c| c.len() >= 2).map(<[usize]>::to_vec).collect()
            }
            Sampler::ClassBalanced { p, k } => pk_batches(labels, p, k, (labels.len() / (p * k).max(1)).max(1), seed, epoch as u64),
        }
    }

    /// The batch size, for the record.
    pub fn batch_size(&self) -> usize {
        match *self {
            Sampler::Shuffled { batch_size } => batch_size,
            Sampler::ClassBalanced { p, k } => p * k,
        }
    }

    /// In words, for the record.
    pub fn describe(&self) -> String {
        match *self {
            Sampler::Shuffled { batch_size } => format!("shuffled batches of {batch_size}"),
            Sampler::ClassBalanced { p, k } => format!("class-balanced batches of {p} classes x {k} images"),
        }
    }
}

/// Everything the engine needs besides the method and its data.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSpec {
    /// Epochs.
    pub epochs: usize,
    /// Base learning rate; each parameter group scales it by its multiplier.
    pub lr: f64,
    /// The optimiser.
    pub optimizer: OptimizerSpec,
    /// The schedule.
    pub schedule: LrSchedule,
    /// Clip the global gradient norm (over every group) to this; 0 disables clipping.
    pub clip_grad_norm: f64,
    /// Seed of data order, augmentation and the backend generator.
    pub seed: u64,
    /// How batches are drawn.
    pub sampler: Sampler,
}

impl EngineSpec {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), String> {
        if self.epochs == 0 {
            return Err("epochs must be > 0".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("learning rate {} must be finite and > 0", self.lr));
        }
        if !(self.clip_grad_norm.is_finite() && self.clip_grad_norm >= 0.0) {
            return Err(format!("clip_grad_norm {} must be finite and >= 0", self.clip_grad_norm));
        }
        match self.sampler {
            Sampler::Shuffled { batch_size } if batch_size < 2 => return Err("batch size must be >= 2".into()),
            Sampler::ClassBalanced { p, k } if p < 2 || k < 2 => return Err("class-balanced batches need >= 2 classes x >= 2 images".into()),
            _ => {}
        }
        self.optimizer.validate()?;
        self.schedule.validate()
    }

    /// Optimiser, schedule, clipping and batches in words, for the record.
    pub fn describe(&self) -> String {
        format!(
            "{}, base lr {}, {}{}; {}",
            self.optimizer.describe(),
            self.lr,
            self.schedule.describe(),
            if self.clip_grad_norm > 0.0 { format!(", global gradient norm clipped at {}", self.clip_grad_norm) } else { String::new() },
            self.sampler.describe()
        )
    }
}

/// A loaded batch, before it becomes tensors.
pub trait HostBatch: Send {
    /// Items in the batch (after skips).
    fn len(&self) -> usize;
    /// Whether the batch is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Items of the planned batch that were skipped (undecodable images).
    fn skipped(&self) -> usize;
    /// Splits the batch into contiguous chunks of `sizes` items (summing to [`Self::len`]), in
    /// order, for data parallelism ([`crate::parallel`]); the skip count goes to the first.
    fn split(self, sizes: &[usize]) -> Vec<Self>
    where
        Self: Sized;
}

/// Where training batches come from: decoded images, cached maps, pairs.
pub trait BatchSource: Sync {
    /// What one batch holds.
    type Batch: HostBatch;
    /// Labels of the training items (the sampler balances on them).
    fn labels(&self) -> &[usize];
    /// Loads batch `step` of `epoch`, the items `items` (indices into [`Self::labels`]).
    fn load(&self, epoch: usize, step: usize, items: &[usize]) -> Result<Self::Batch, TrainError>;
}

/// What one optimiser step of a method computed.
pub struct StepLoss<B: Backend> {
    /// The scalar loss to minimise.
    pub loss: Tensor<B, 1>,
    /// Items counted as right for the training accuracy (arg-max = label for classifiers,
    /// nearest batch neighbour of the same class for embedders); `None` when the step does not
    /// measure it (the earlier steps of a multi-step method).
    pub hits: Option<usize>,
}

/// The gradients of one named parameter group, and its learning-rate multiplier.
pub struct ParamGroup {
    /// Name (`backbone`, `head`, `proxies`, ...).
    pub name: &'static str,
    /// Multiplier of the base learning rate.
    pub lr_mult: f64,
    /// The group's gradients.
    pub grads: GradientsParams,
}

/// A trainable method: its loss for a batch, its steps per batch, its parameter groups.
pub trait TrainMethod<B: AutodiffBackend>: AutodiffModule<B> {
    /// The host batch it trains on.
    type Batch: HostBatch;
    /// The batch as tensors (built once per batch, shared by the steps).
    type Input;

    /// Turns a host batch into tensors.
    fn prepare(&self, batch: Self::Batch, device: &B::Device) -> Self::Input;

    /// Optimiser steps per batch (PMG's progressive steps, alternating schemes); 1 by default.
    fn steps(&self) -> usize {
        1
    }

    /// The loss of step `step` on a batch.
    fn loss(&self, input: &Self::Input, step: usize) -> StepLoss<B>;

    /// Splits the gradients into named groups, each with its learning-rate multiplier.
    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup>;
}

/// One group holding every parameter of `module` (learning-rate multiplier 1).
pub fn single_group<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, grads: B::Gradients) -> Vec<ParamGroup> {
    vec![ParamGroup { name: "all", lr_mult: 1.0, grads: GradientsParams::from_grads(grads, module) }]
}

/// The optimiser of a run, over a method of type `M`.
enum EngineOptim<M: AutodiffModule<B>, B: AutodiffBackend> {
    Sgd(OptimizerAdaptor<Sgd<B::InnerBackend>, M, B>),
    AdamW(OptimizerAdaptor<AdamW, M, B>),
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> EngineOptim<M, B> {
    fn new(spec: &OptimizerSpec) -> Self {
        match *spec {
            OptimizerSpec::Sgd { momentum, nesterov, weight_decay } => EngineOptim::Sgd(
                SgdConfig::new()
                    .with_momentum((momentum > 0.0).then(|| MomentumConfig::new().with_momentum(momentum).with_dampening(0.0).with_nesterov(nesterov)))
                    .with_weight_decay((weight_decay > 0.0).then(|| WeightDecayConfig::new(weight_decay as f32)))
                    .init::<B, M>(),
            ),
            OptimizerSpec::Adamw { weight_decay } => EngineOptim::AdamW(AdamWConfig::new().with_weight_decay(weight_decay as f32).init::<B, M>()),
        }
    }

    fn step(&mut self, lr: f64, module: M, grads: GradientsParams) -> M {
        match self {
            EngineOptim::Sgd(o) => o.step(lr, module, grads),
            EngineOptim::AdamW(o) => o.step(lr, module, grads),
        }
    }

    fn to_bytes(&self) -> Result<Vec<u8>, burn::record::RecorderError> {
        match self {
            EngineOptim::Sgd(o) => Recorder::<B>::record(&recorder(), o.to_record(), ()),
            EngineOptim::AdamW(o) => Recorder::<B>::record(&recorder(), o.to_record(), ()),
        }
    }

    fn load_bytes(self, bytes: Vec<u8>, device: &B::Device) -> Result<Self, burn::record::RecorderError> {
        Ok(match self {
            EngineOptim::Sgd(o) => EngineOptim::Sgd(o.load_record(recorder().load(bytes, device)?)),
            EngineOptim::AdamW(o) => EngineOptim::AdamW(o.load_record(recorder().load(bytes, device)?)),
        })
    }
}

/// Checkpoints are named MessagePack (`model.mpk`, `optim.mpk`), serialised in memory and
/// written by [`write_atomic`].
pub(crate) fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
}

/// Reads a checkpoint file.
fn read_checkpoint_file(path: &Path) -> Result<Vec<u8>, TrainError> {
    std::fs::read(path).map_err(|e| TrainError::io(path, e))
}

/// Loads a module record from `dir/model.mpk` into `module`, checking that the checkpoint has
/// the module's shapes: a different number of parameters (another class count, another
/// backbone) is an error rather than a silently mismatched model.
fn load_module_from<B: Backend, M: Module<B>>(module: M, dir: &Path, device: &B::Device) -> Result<M, TrainError> {
    let path = dir.join("model.mpk");
    let bytes = read_checkpoint_file(&path)?;
    let record = recorder().load(bytes, device).map_err(|e| TrainError::Checkpoint { path: path.clone(), message: e.to_string() })?;
    let expected = module.num_params();
    let loaded = module.load_record(record);
    let got = loaded.num_params();
    if got != expected {
        return Err(TrainError::Checkpoint {
            path,
            message: format!("holds {got} parameters where this run's model has {expected} (another class list or architecture?)"),
        });
    }
    Ok(loaded)
}

/// What one optimiser step measured.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// Loss before the update.
    pub loss: f64,
    /// Training hits of the step ([`StepLoss::hits`]).
    pub hits: Option<usize>,
    /// Global gradient norm over every group, before clipping.
    pub grad_norm: f64,
}

/// One optimiser step at a time: loss, backward, global-norm clipping over every parameter
/// group, then an update of each group at its learning rate. [`train`] drives it; benchmarks
/// and tests call it directly.
pub struct Stepper<M: AutodiffModule<B>, B: AutodiffBackend> {
    optim: EngineOptim<M, B>,
    clip_grad_norm: f64,
}

impl<M: TrainMethod<B>, B: AutodiffBackend> Stepper<M, B> {
    /// A fresh optimiser.
    pub fn new(optimizer: &OptimizerSpec, clip_grad_norm: f64) -> Self {
        Stepper { optim: EngineOptim::new(optimizer), clip_grad_norm }
    }

    /// Step `k` of a batch at base learning rate `lr`. A non-finite loss or gradient norm
    /// returns what it was and its value, with no update.
    pub fn step(&mut self, method: M, input: &M::Input, k: usize, lr: f64) -> Result<(M, StepReport), (&'static str, f64)> {
        let out = method.loss(input, k);
        let value: f64 = out.loss.clone().into_scalar().elem();
        if !value.is_finite() {
            return Err(("loss", value));
        }
        let groups = method.param_groups(out.loss.backward());
        self.apply(method, groups, value, out.hits, lr)
    }

    /// The update of one step from its gradient groups (one device's, or the replicas' sum):
    /// a non-finite global norm returns it with no update; else clipping, then each group at
    /// its learning rate.
    pub fn apply(
        &mut self,
        mut method: M,
        mut groups: Vec<ParamGroup>,
        value: f64,
        hits: Option<usize>,
        lr: f64,
    ) -> Result<(M, StepReport), (&'static str, f64)> {
        let norm = groups.iter().map(|g| global_grad_norm::<B, M>(&method, &g.grads)).fold(0.0f64, f64::hypot);
        if !norm.is_finite() {
            return Err(("gradient norm", norm));
        }
        if self.clip_grad_norm > 0.0 && norm > self.clip_grad_norm {
            let f = self.clip_grad_norm / (norm + 1e-6);
            for g in &mut groups {
                scale_gradients::<B, M>(&method, &mut g.grads, f);
            }
        }
        for g in groups {
            let rate = lr * g.lr_mult;
            if rate > 0.0 {
                method = self.optim.step(rate, method, g.grads);
            }
        }
        Ok((method, StepReport { loss: value, hits, grad_norm: norm }))
    }
}

/// Where a run is written and how it is driven.
#[derive(Debug, Clone)]
pub struct RunIo {
    /// The run folder (exists; holds `recipe.toml`).
    pub run_dir: PathBuf,
    /// Continue from the newest checkpoint of `run_dir`.
    pub resume: bool,
    /// Progress bars on stderr.
    pub progress: bool,
    /// Label of the progress bar (the method).
    pub label: String,
    /// Stop (as if killed) after this many epochs of this session; for tests of resume.
    pub stop_after_epochs: Option<usize>,
    /// Data parallelism: indices of the devices (of the main device's kind) holding one replica
    /// each; fewer than two train on the main device alone ([`crate::parallel`]).
    pub replicas: Vec<u16>,
}

/// State saved with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    epoch: usize,
    wall_time_s: f64,
}

/// What [`train`] returns.
pub enum Trained<M> {
    /// Training finished.
    Finished {
        /// The method after the last epoch.
        method: M,
        /// Metrics of every epoch (this session's and, on resume, the earlier ones).
        epochs: Vec<EpochMetrics>,
        /// Training wall time over all sessions, seconds.
        wall_time_s: f64,
    },
    /// Stopped by [`RunIo::stop_after_epochs`].
    Stopped {
        /// Epochs completed so far.
        epochs_done: usize,
    },
}

/// An optional per-epoch test evaluation (Table 4's curves): called after epoch `e` (1-based).
pub type EpochEval<'a, M> = &'a mut dyn FnMut(&M, usize) -> Result<Option<f64>, TrainError>;

fn checkpoint_dir(run_dir: &Path, epoch: usize) -> PathBuf {
    run_dir.join("checkpoints").join(format!("epoch-{epoch:04}"))
}

/// The newest complete checkpoint of a run folder (its `state.json` is written last, and the
/// folder is renamed into place only when complete).
pub fn latest_checkpoint(run_dir: &Path) -> Option<(usize, PathBuf)> {
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

/// Loads the module of the newest checkpoint of `run_dir` into `module`.
pub fn load_checkpoint_module<B: Backend, M: Module<B>>(module: M, run_dir: &Path, device: &B::Device) -> Result<(M, usize), TrainError> {
    let (epoch, dir) =
        latest_checkpoint(run_dir).ok_or_else(|| TrainError::Checkpoint { path: run_dir.join("checkpoints"), message: "no complete checkpoint".into() })?;
    Ok((load_module_from(module, &dir, device)?, epoch))
}

/// Writes checkpoint `epoch`: each file through [`write_atomic`] into a partial folder, the folder
/// renamed into place and its parent synced, then every file read back and compared. Only then
/// is the previous checkpoint removed, so a crash at any point leaves a complete checkpoint.
fn save_checkpoint<B: AutodiffBackend, M: AutodiffModule<B>>(
    method: &M,
    optim: &EngineOptim<M, B>,
    run_dir: &Path,
    epoch: usize,
    wall: f64,
) -> Result<(), TrainError> {
    let parent = run_dir.join("checkpoints");
    let final_dir = checkpoint_dir(run_dir, epoch);
    let tmp = parent.join(format!(".epoch-{epoch:04}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let ck = |e: burn::record::RecorderError| TrainError::Checkpoint { path: tmp.clone(), message: e.to_string() };
    let model = Recorder::<B>::record(&recorder(), method.clone().into_record(), ()).map_err(ck)?;
    let optim = optim.to_bytes().map_err(ck)?;
    let mut state = serde_json::to_vec_pretty(&CheckpointState { epoch, wall_time_s: wall })
        .map_err(|e| TrainError::Checkpoint { path: tmp.clone(), message: e.to_string() })?;
    state.push(b'\n');
    // `state.json` last: a folder is a checkpoint only with it (see `latest_checkpoint`).
    let files: [(&str, &[u8]); 3] = [("model.mpk", &model), ("optim.mpk", &optim), ("state.json", &state)];
    for (name, bytes) in files {
        write_atomic(&tmp.join(name), bytes)?;
    }
    if final_dir.exists() {
        discard_checkpoint(&final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    sync_dir(&parent)?;
    for (name, bytes) in files {
        let path = final_dir.join(name);
        if read_checkpoint_file(&path)? != bytes {
            return Err(TrainError::Checkpoint { path, message: "reads back different from what was written".into() });
        }
    }
    // Only the newest checkpoint is kept, once it has been read back.
    for e in 1..epoch {
        let old = checkpoint_dir(run_dir, e);
        if old.exists() {
            discard_checkpoint(&old)?;
        }
    }
    Ok(())
}

/// Removes a checkpoint folder without ever leaving a half-deleted `epoch-N` behind: it is first
/// renamed to `.epoch-N.removing` (atomic), then deleted; a kill in between leaves that folder,
/// which the next holder of the run folder sweeps away.
fn discard_checkpoint(dir: &Path) -> Result<(), TrainError> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let trash = dir.with_file_name(format!(".{name}.removing"));
    if trash.exists() {
        std::fs::remove_dir_all(&trash).map_err(|e| TrainError::io(&trash, e))?;
    }
    std::fs::rename(dir, &trash).map_err(|e| TrainError::io(dir, e))?;
    std::fs::remove_dir_all(&trash).map_err(|e| TrainError::io(&trash, e))
}

/// Keeps the metric lines of epochs `1..=last`; rewrites the file atomically.
fn truncate_metrics(path: &Path, last: usize) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text.lines().filter(|l| serde_json::from_str::<EpochMetrics>(l).is_ok_and(|m| m.epoch <= last)).map(|l| format!("{l}\n")).collect();
    Ok(write_atomic(path, kept.as_bytes())?)
}

/// Appends one epoch's metrics as a JSON line to `path` (`metrics.jsonl`) and syncs it.
pub fn append_metrics(path: &Path, m: &EpochMetrics) -> Result<(), TrainError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| TrainError::io(path, e))?;
    let line = serde_json::to_string(m).expect("metrics serialise");
    writeln!(f, "{line}").map_err(|e| TrainError::io(path, e))?;
    f.sync_all().map_err(|e| TrainError::io(path, e))
}

/// A progress bar on stderr (hidden when `show` is false).
pub fn progress_bar(show: bool, len: u64, prefix: &str) -> indicatif::ProgressBar {
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

/// Runs `f` on the batches of `plan`, loaded by `source` on a producer thread that stays
/// [`PREFETCH`] batches ahead. The producer stops when `f` fails.
pub fn with_prefetch<S: BatchSource, T>(source: &S, epoch: usize, plan: &[Vec<usize>], mut f: impl FnMut(usize, S::Batch) -> Result<(), T>) -> Result<(), T>
where
    T: From<TrainError>,
{
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Result<S::Batch, TrainError>>(PREFETCH);
        scope.spawn(move || {
            for (step, items) in plan.iter().enumerate() {
                let b = source.load(epoch, step, items);
                let failed = b.is_err();
                if tx.send(b).is_err() || failed {
                    return;
                }
            }
        });
        for step in 0..plan.len() {
            let batch = rx.recv().map_err(|_| TrainError::Checkpoint { path: "<batch loader>".into(), message: "the loader thread stopped".into() })??;
            f(step, batch)?;
        }
        Ok(())
    })
}

/// Trains `method` on `source` for `spec.epochs` epochs in the run folder `io.run_dir`:
/// checkpoints every epoch, resumes from the newest one with `io.resume`, stops on a
/// non-finite loss or gradient norm.
pub fn train<B, M, S>(
    spec: &EngineSpec,
    io: &RunIo,
    mut method: M,
    source: &S,
    epoch_eval: Option<EpochEval<'_, M>>,
    device: &B::Device,
) -> Result<Trained<M>, TrainError>
where
    B: AutodiffBackend,
    M: TrainMethod<B, Batch = S::Batch>,
    S: BatchSource,
{
    spec.validate().map_err(|message| TrainError::Recipe { path: io.run_dir.join("recipe.toml"), message })?;
    let run_dir = &io.run_dir;
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut optim = EngineOptim::<M, B>::new(&spec.optimizer);
    let (mut start_epoch, mut wall_before) = (0, 0.0);
    if io.resume {
        if let Some((epoch, dir)) = latest_checkpoint(run_dir) {
            method = load_module_from(method, &dir, device)?;
            let optim_path = dir.join("optim.mpk");
            optim = optim
                .load_bytes(read_checkpoint_file(&optim_path)?, device)
                .map_err(|e| TrainError::Checkpoint { path: optim_path.clone(), message: e.to_string() })?;
            let state_path = dir.join("state.json");
            let state: CheckpointState = serde_json::from_str(&std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?)
                .map_err(|e| TrainError::Checkpoint { path: state_path.clone(), message: e.to_string() })?;
            start_epoch = epoch;
            wall_before = state.wall_time_s;
        }
        // Drop metric lines of epochs after the checkpoint (a kill can leave one).
        truncate_metrics(&metrics_path, start_epoch)?;
    }
    let stepper = Stepper { optim, clip_grad_norm: spec.clip_grad_norm };
    let devices = crate::parallel::replica_devices::<B>(device, &io.replicas);
    // Lazily initialised parameters are drawn now, on this thread, from the run's seed: burn
    // draws a parameter at its first use, and every clone or fork of an unused one draws its own
    // values (the replicas would each train different weights).
    B::seed(device, spec.seed);
    materialize::<B, M>(&method);
    std::thread::scope(|scope| {
        let replicas = (devices.len() > 1).then(|| Replicas::spawn::<B>(scope, &devices, device));
        train_epochs(spec, io, method, source, epoch_eval, device, stepper, replicas, start_epoch, wall_before)
    })
}

/// Draws every lazily initialised parameter of `module` now, in the module's order.
pub fn materialize<B: Backend, M: Module<B>>(module: &M) {
    struct Touch;
    impl<B: Backend> ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
        fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
            let _ = param.val();
        }
        fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<B, D, Bool>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
}

/// A batch ready for its steps: one device's input, or the replicas that take the batch at
/// its first step.
enum Prepared<'r, I, M, H> {
    One(I),
    Split(&'r mut Replicas<M, H>, Option<H>),
}

/// The epochs of [`train`] from `start_epoch`, on one device or over `replicas`.
#[allow(clippy::too_many_arguments)]
fn train_epochs<B, M, S>(
    spec: &EngineSpec,
    io: &RunIo,
    mut method: M,
    source: &S,
    mut epoch_eval: Option<EpochEval<'_, M>>,
    device: &B::Device,
    mut stepper: Stepper<M, B>,
    mut replicas: Option<Replicas<M, S::Batch>>,
    start_epoch: usize,
    wall_before: f64,
) -> Result<Trained<M>, TrainError>
where
    B: AutodiffBackend,
    M: TrainMethod<B, Batch = S::Batch>,
    S: BatchSource,
{
    let run_dir = &io.run_dir;
    let metrics_path = run_dir.join("metrics.jsonl");
    let labels = source.labels();
    let per_epoch = spec.sampler.plan(labels, spec.seed, 0).len().max(1);
    let started = Instant::now();
    let mut this_session = 0;
    for epoch in start_epoch..spec.epochs {
        let epoch_start = Instant::now();
        let epoch_seed = spec.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64);
        B::seed(device, epoch_seed);
        let plan = spec.sampler.plan(labels, spec.seed, epoch);
        let bar = progress_bar(io.progress, plan.len() as u64, &format!("{} {}/{}", io.label, epoch + 1, spec.epochs));
        let (mut loss_sum, mut loss_n, mut hits, mut seen, mut norm_sum, mut norm_n, mut skipped) = (0.0f64, 0usize, 0usize, 0usize, 0.0f64, 0usize, 0usize);
        let mut images = 0usize;
        let mut lr_now = spec.lr;
        let result = with_prefetch(source, epoch, &plan, |step, batch| -> Result<(), TrainError> {
            skipped += batch.skipped();
            let n = batch.len();
            if n < 2 {
                bar.inc(1);
                return Ok(());
            }
            let factor = spec.schedule.factor(spec.epochs, per_epoch, epoch * per_epoch + step.min(per_epoch - 1));
            lr_now = spec.lr * factor;
            images += n;
            let mut prepared = match replicas.as_mut() {
                None => Prepared::One(method.prepare(batch, device)),
                Some(r) => Prepared::Split(r, Some(batch)),
            };
            for k in 0..method.steps() {
                let stepped = match &mut prepared {
                    Prepared::One(input) => stepper.step(method.clone(), input, k, lr_now),
                    Prepared::Split(r, batch) => r
                        .step::<B>(&method, batch.take(), k, epoch_seed.wrapping_mul(0x100_0193).wrapping_add((step * 64 + k) as u64))
                        .and_then(|(groups, loss, hits)| stepper.apply(method.clone(), groups, loss, hits, lr_now)),
                };
                let (next, report) = stepped.map_err(|(what, value)| TrainError::NonFinite { epoch: epoch + 1, step, what, value })?;
                method = next;
                norm_sum += report.grad_norm;
                norm_n += 1;
                if let Some(h) = report.hits {
                    hits += h;
                    seen += n;
                    loss_sum += report.loss * n as f64;
                    loss_n += n;
                }
            }
            bar.set_message(format!("loss {:.3}", loss_sum / loss_n.max(1) as f64));
            bar.inc(1);
            Ok(())
        });
        if let Err(e) = result {
            bar.abandon();
            return Err(e);
        }
        bar.finish_and_clear();
        let test_top1 = match epoch_eval.as_mut() {
            Some(f) if epoch + 1 < spec.epochs => f(&method, epoch + 1)?,
            _ => None,
        };
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            train_loss: loss_sum / loss_n.max(1) as f64,
            train_top1: 100.0 * hits as f64 / seen.max(1) as f64,
            lr: lr_now,
            grad_norm: norm_sum / norm_n.max(1) as f64,
            test_top1,
            seconds: epoch_start.elapsed().as_secs_f64(),
            skipped_images: skipped,
        };
        // The metrics line first: a kill between the two leaves a line past the newest
        // checkpoint, which resume drops; the other order would lose the line.
        append_metrics(&metrics_path, &metrics)?;
        save_checkpoint(&method, &stepper.optim, run_dir, epoch + 1, wall_before + started.elapsed().as_secs_f64())?;
        if io.progress {
            eprintln!(
                "{} epoch {}/{}: loss {:.4}, train top-1 {:.1}%, lr {:.2e}, {:.0}s ({:.1} images/s)",
                io.label,
                epoch + 1,
                spec.epochs,
                metrics.train_loss,
                metrics.train_top1,
                metrics.lr,
                metrics.seconds,
                images as f64 / metrics.seconds.max(1e-9)
            );
        }
        this_session += 1;
        if io.stop_after_epochs == Some(this_session) && epoch + 1 < spec.epochs {
            return Ok(Trained::Stopped { epochs_done: epoch + 1 });
        }
    }
    let epochs = read_metrics(run_dir)?;
    Ok(Trained::Finished { method, epochs, wall_time_s: wall_before + started.elapsed().as_secs_f64() })
}

/// A run folder held by this process, and the recipe it runs.
#[derive(Debug)]
pub struct OpenedRun {
    /// The recipe text the run must use (on resume: the run folder's own).
    pub recipe: String,
    /// The hold on the folder; keep it until the run ends.
    pub lock: RunLock,
}

/// Claims a new run folder and writes its recipe, or, with `resume`, locks the existing one and
/// reads its recipe. A folder that exists without `resume` is [`TrainError::RunExists`]; one
/// that another process holds is an error naming it.
pub fn open_run_dir(run_dir: &Path, resume: bool, recipe_toml: &str) -> Result<OpenedRun, TrainError> {
    let path = run_dir.join("recipe.toml");
    if resume {
        let lock = RunLock::open(run_dir)?;
        let recipe = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        return Ok(OpenedRun { recipe, lock });
    }
    let lock = RunLock::create(run_dir).map_err(|e| match e {
        fgia_core::DataError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => TrainError::RunExists(run_dir.to_path_buf()),
        other => other.into(),
    })?;
    write_atomic(&path, recipe_toml.as_bytes())?;
    Ok(OpenedRun { recipe: recipe_toml.to_string(), lock })
}

/// The data a run was started on, kept in its folder as `data.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunData {
    /// Dataset root folder, canonical where it exists.
    pub root: String,
    /// Class names, in label order.
    pub classes: Vec<String>,
}

impl RunData {
    /// The data of a run on `root` with `classes`.
    pub fn new(root: &Path, classes: &[String]) -> Self {
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        RunData { root: root.display().to_string(), classes: classes.to_vec() }
    }
}

/// Writes `data.json` in a new run, or, on resume, checks that the run continues on the data it
/// started on: another root or another class list is an error, not silent training of the old
/// head on new labels.
pub fn check_run_data(run_dir: &Path, resume: bool, data: &RunData) -> Result<(), TrainError> {
    let path = run_dir.join("data.json");
    let recorded: Option<RunData> = match std::fs::read_to_string(&path) {
        Ok(text) => Some(serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint { path: path.clone(), message: e.to_string() })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(TrainError::io(&path, e)),
    };
    match recorded {
        Some(was) if resume => {
            if was.root != data.root {
                return Err(TrainError::Recipe {
                    path,
                    message: format!("the run was started on the data at {} and is resumed with {}; resume it with the same data root", was.root, data.root),
                });
            }
            if was.classes != data.classes {
                let first = was.classes.iter().zip(&data.classes).position(|(a, b)| a != b).unwrap_or(was.classes.len().min(data.classes.len()));
                return Err(TrainError::Recipe {
                    path,
                    message: format!(
                        "the run was started with {} classes and the data now has {} (first difference at label {first}); its checkpoints do not fit",
                        was.classes.len(),
                        data.classes.len()
                    ),
                });
            }
            Ok(())
        }
        _ => Ok(fgia_core::record::write_json_atomic(&path, data)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::Param;

    type A = Autodiff<Flex>;

    /// One weight vector; the loss is `sum(sqrt(|w|))`, finite at `w = 0` where its gradient
    /// is not.
    #[derive(Module, Debug)]
    struct Probe<B: Backend> {
        w: Param<Tensor<B, 1>>,
    }

    struct Empty;
    impl HostBatch for Empty {
        fn len(&self) -> usize {
            2
        }
        fn skipped(&self) -> usize {
            0
        }
        fn split(self, sizes: &[usize]) -> Vec<Self> {
            sizes.iter().map(|_| Empty).collect()
        }
    }

    impl TrainMethod<A> for Probe<A> {
        type Batch = Empty;
        type Input = ();
        fn prepare(&self, _: Empty, _: &burn_flex::FlexDevice) {}
        fn loss(&self, _: &(), _: usize) -> StepLoss<A> {
            StepLoss { loss: self.w.val().abs().sqrt().sum(), hits: None }
        }
        fn param_groups(&self, grads: <A as AutodiffBackend>::Gradients) -> Vec<ParamGroup> {
            single_group(self, grads)
        }
    }

    #[test]
    fn a_non_finite_gradient_norm_stops_before_the_update() {
        let device = Default::default();
        let probe = Probe::<A> { w: Param::from_tensor(Tensor::zeros([3], &device)) };
        let mut stepper = Stepper::new(&OptimizerSpec::Sgd { momentum: 0.9, nesterov: true, weight_decay: 0.0 }, 1.0);
        let err = stepper.step(probe, &(), 0, 0.1).expect_err("the gradient of sqrt(|w|) at 0 is not finite");
        assert_eq!(err.0, "gradient norm");
        let e = TrainError::NonFinite { epoch: 2, step: 5, what: err.0, value: err.1 };
        assert!(e.to_string().contains("gradient norm is") && e.to_string().contains("epoch 2, step 5"), "{e}");
        // A finite one updates.
        let probe = Probe::<A> { w: Param::from_tensor(Tensor::from_data([1.0f32, 4.0, 9.0], &device)) };
        let (after, report) = stepper.step(probe, &(), 0, 0.1).expect("finite");
        assert!((report.loss - 6.0).abs() < 1e-6 && report.grad_norm > 0.0);
        let w: Vec<f32> = after.w.val().into_data().to_vec().expect("f32");
        assert!(w[0] < 1.0, "{w:?}");
    }

    #[test]
    fn warmup_then_cosine() {
        let s = LrSchedule { warmup_epochs: 1.0, ..LrSchedule::cosine() };
        // 4 epochs of 10 iterations: warm-up over 10, cosine over 30.
        assert!((s.factor(4, 10, 0) - 0.1).abs() < 1e-12);
        assert!((s.factor(4, 10, 9) - 1.0).abs() < 1e-12);
        assert!((s.factor(4, 10, 10) - 1.0).abs() < 1e-12);
        assert!((s.factor(4, 10, 25) - 0.5).abs() < 1e-12);
        assert!(s.factor(4, 10, 39) < 0.01);
    }

    #[test]
    fn step_and_multistep() {
        let multi = LrSchedule { decay: Decay::MultiStep, milestones: vec![2, 3], ..LrSchedule::cosine() };
        assert_eq!(multi.factor(4, 10, 19), 1.0);
        assert!((multi.factor(4, 10, 20) - 0.1).abs() < 1e-12);
        assert!((multi.factor(4, 10, 35) - 0.01).abs() < 1e-12);
        let step = LrSchedule { decay: Decay::Step, step_size: 2, gamma: 0.5, ..LrSchedule::cosine() };
        assert_eq!(step.factor(6, 10, 19), 1.0);
        assert_eq!(step.factor(6, 10, 20), 0.5);
        assert_eq!(step.factor(6, 10, 45), 0.25);
        assert!(LrSchedule { decay: Decay::Step, ..LrSchedule::cosine() }.validate().is_err());
    }

    #[test]
    fn samplers_cover_the_items() {
        let labels: Vec<usize> = (0..21).map(|i| i % 3).collect();
        let plan = Sampler::Shuffled { batch_size: 4 }.plan(&labels, 7, 0);
        // 5 batches of 4 and a last batch of 1, which is dropped.
        assert_eq!(plan.len(), 5);
        let mut seen: Vec<usize> = plan.concat();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 20);
        assert_ne!(plan, Sampler::Shuffled { batch_size: 4 }.plan(&labels, 7, 1), "each epoch draws a new order");
        let pk = Sampler::ClassBalanced { p: 2, k: 3 }.plan(&labels, 7, 0);
        for b in &pk {
            let mut classes: Vec<usize> = b.iter().map(|&i| labels[i]).collect();
            classes.dedup();
            assert_eq!(b.len(), 6);
        }
    }
}
