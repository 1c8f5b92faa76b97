//! Table 4's backbone classifier on the engine ([`crate::engine`]): SGD with momentum and
//! weight decay, separate learning rates for the pretrained body and the new head (two
//! parameter groups), the recipe's schedule and clipping, pixels or cached frozen-stage maps as
//! the batch source, evaluation of the last epoch with optional flip TTA, and the record.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fgia_core::datasets::{Dataset, DatasetKind, ReadOptions};
use fgia_core::record::{FeatureMode, Protocol, RECORD_SCHEMA, ResultRecord, now_utc_rfc3339, write_json_atomic};
use fgia_nn::weights::load_network;
use fgia_nn::{Network, NetworkConfig};

use crate::engine::{
    self, EngineSpec, OptimizerSpec, ParamGroup, RunData, RunIo, Sampler, StepLoss, TrainMethod, check_run_data, load_checkpoint_module, open_run_dir,
};
use crate::error::TrainError;
use crate::eval::{EvalOutput, TailClassifier, evaluate, evaluate_maps};
use crate::frozen_cache::FrozenCache;
use crate::recipe::{Recipe, describe_transform};
use crate::sources::{CachedSource, ImageSource, MapBatch};

/// The burn version this toolkit is pinned to (checked against `Cargo.lock` by a test).
pub const BURN_VERSION: &str = "0.21.0";

/// Everything about a run that is not in the recipe; one for every family.
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
    /// Data parallelism: one replica per device; fewer than two train on the main device alone.
    pub replicas: Vec<crate::parallel::ReplicaDevice>,
}

impl RunContext {
    /// How the engine drives this run (progress bars labelled `label`).
    pub fn io(&self, label: &str) -> RunIo {
        RunIo {
            run_dir: self.run_dir.clone(),
            resume: self.resume,
            progress: self.progress,
            label: label.to_string(),
            stop_after_epochs: self.stop_after_epochs,
            replicas: self.replicas.iter().map(|r| r.index).collect(),
        }
    }

    /// The protocol's data-parallel line, or `None` on one device.
    pub fn data_parallel(&self) -> Option<String> {
        crate::parallel::describe(&self.replicas.iter().map(|r| r.name.clone()).collect::<Vec<_>>())
    }

    /// The pretrained weights file, required by the families that start from ImageNet weights.
    pub fn pretrained_weights(&self) -> Result<&Path, TrainError> {
        self.pretrained
            .as_deref()
            .ok_or_else(|| TrainError::Recipe { path: self.run_dir.join("recipe.toml"), message: "no pretrained weights file was given".into() })
    }

    /// A record with this run's provenance filled in (code revision, burn version, device, run
    /// folder, time) and `wall_time_s`; every family completes it with its own fields
    /// (`ResultRecord { table, method, .., ..ctx.record(wall) }`).
    pub fn record(&self, wall_time_s: f64) -> ResultRecord {
        ResultRecord {
            schema: RECORD_SCHEMA,
            table: String::new(),
            method: String::new(),
            dataset: String::new(),
            data: String::new(),
            backbone: String::new(),
            resolution: 0,
            paper_resolution: None,
            paper_backbone: None,
            section: None,
            protocol: Protocol::default(),
            seed: 0,
            metrics: Default::default(),
            deviations: Vec::new(),
            git_revision: self.git_revision.clone(),
            burn_version: BURN_VERSION.into(),
            device: self.device_name.clone(),
            wall_time_s,
            created_utc: now_utc_rfc3339(),
            run_dir: self.run_dir.display().to_string(),
        }
    }
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

/// A backbone classifier as a [`TrainMethod`]: cross-entropy (with optional label smoothing)
/// on the logits; two parameter groups, the pretrained body and the new head.
///
/// The batch is either pixels (`input_stage = 0`; the first `frozen` stages then run in
/// inference mode without a graph) or cached maps of stage `input_stage - 1`.
#[derive(Module, Debug)]
pub struct Classifier<B: Backend> {
    /// The network.
    pub net: Network<B>,
    /// Leading stages kept frozen.
    pub frozen: usize,
    /// The stage the batch enters at (0: pixels; `frozen`: cached maps).
    pub input_stage: usize,
    /// Learning rate of the body relative to the base (0 or 1).
    pub body_lr_mult: f64,
    /// Learning rate of the head relative to the base.
    pub head_lr_mult: f64,
    /// Label smoothing.
    pub label_smoothing: f64,
}

impl<B: AutodiffBackend> TrainMethod<B> for Classifier<B> {
    type Batch = MapBatch;
    type Input = (Tensor<B, 4>, Tensor<B, 1, Int>);

    fn prepare(&self, b: MapBatch, device: &B::Device) -> Self::Input {
        let x = Tensor::<B, 4>::from_data(TensorData::new(b.data, b.shape), device); // [B, C, H, W]
        let skip = self.frozen.saturating_sub(self.input_stage);
        let x = if skip > 0 {
            let inner = self.net.valid();
            let mut h = x.inner();
            for i in self.input_stage..self.frozen.min(inner.num_stages()) {
                h = inner.forward_stage(i, h);
            }
            Tensor::from_inner(h)
        } else {
            x
        };
        (x, to_labels(&b.labels, device))
    }

    fn loss(&self, (x, targets): &Self::Input, _step: usize) -> StepLoss<B> {
        let from = self.frozen.max(self.input_stage);
        let logits = self.net.head_from_features(self.net.forward_stages_from(from, x.clone())); // [B, K]
        let n = targets.dims()[0];
        let smoothing = (self.label_smoothing > 0.0).then_some(self.label_smoothing as f32);
        let loss = CrossEntropyLossConfig::new().with_smoothing(smoothing).init::<B>(&logits.device()).forward(logits.clone(), targets.clone());
        let hits: i64 = logits.inner().argmax(1).reshape([n]).equal(targets.clone().inner()).int().sum().into_scalar().elem();
        StepLoss { loss, hits: Some(hits as usize) }
    }

    fn param_groups(&self, mut grads: B::Gradients) -> Vec<ParamGroup> {
        let head = GradientsParams::from_module(&mut grads, self.net.head_layer());
        let body = GradientsParams::from_grads(grads, self);
        vec![ParamGroup { name: "body", lr_mult: self.body_lr_mult, grads: body }, ParamGroup { name: "head", lr_mult: self.head_lr_mult, grads: head }]
    }
}

fn to_labels<B: Backend>(labels: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    Tensor::from_data(TensorData::new(v, [labels.len()]), device)
}

/// The base learning rate of a Table 4 recipe and the multipliers of the body and the head:
/// the body's rate is the base (the head's a multiple of it), unless the body is not trained.
fn lr_groups(t: &crate::recipe::TrainSection) -> (f64, f64, f64) {
    if t.lr > 0.0 { (t.lr, 1.0, t.head_lr / t.lr) } else { (t.head_lr, 0.0, 1.0) }
}

/// The engine settings of a Table 4 recipe: SGD, the recipe's schedule and clipping, shuffled
/// batches.
pub fn engine_spec(recipe: &Recipe) -> EngineSpec {
    let t = &recipe.train;
    EngineSpec {
        epochs: t.epochs,
        lr: lr_groups(t).0,
        optimizer: OptimizerSpec::Sgd { momentum: t.momentum, nesterov: t.nesterov, weight_decay: t.weight_decay },
        schedule: t.lr_schedule(),
        clip_grad_norm: t.clip_grad_norm,
        seed: t.seed,
        sampler: Sampler::Shuffled { batch_size: t.batch_size },
    }
}

/// Trains a recipe in a run folder and evaluates the last epoch on the test split.
pub fn train_and_evaluate<B: AutodiffBackend>(recipe: &Recipe, ctx: &RunContext, device: &B::Device) -> Result<Outcome, TrainError> {
    let run_dir = &ctx.run_dir;
    // On resume the run folder's own recipe rules; a resumed run cannot change its settings.
    let opened = open_run_dir(run_dir, ctx.resume, &recipe.to_toml())?;
    let recipe = Recipe::parse(&opened.recipe).map_err(|message| TrainError::Recipe { path: run_dir.join("recipe.toml"), message })?;
    let dataset = load_dataset(&recipe, ctx.data_root.as_deref())?;
    let num_classes = dataset.num_classes();
    check_run_data(run_dir, ctx.resume, &RunData::new(&dataset.root, &dataset.classes.names))?;
    if !ctx.resume {
        write_json_atomic(&run_dir.join("classes.json"), &dataset.classes.names)?;
    }
    let net: Network<B> = build_network(&recipe, num_classes, ctx.pretrained.as_deref(), device)?;
    let t = &recipe.train;
    let transform = recipe.train_transform();
    let frozen = recipe.model.freeze_stages;
    // Frozen stages never change: with cache_views, compute their outputs once (this is
    // deterministic, so a resumed run rebuilds the same cache).
    let cache = if recipe.model.cache_views > 0 {
        let inner = net.valid();
        Some(FrozenCache::build(
            &inner,
            frozen,
            recipe.model.cache_views,
            &dataset.train,
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
    let method = Classifier {
        net,
        frozen,
        input_stage: if cache.is_some() { frozen } else { 0 },
        body_lr_mult: lr_groups(t).1,
        head_lr_mult: lr_groups(t).2,
        label_smoothing: t.label_smoothing as f64,
    };
    let spec = engine_spec(&recipe);
    let io = ctx.io("train");
    let every = recipe.eval.every;
    let mut eval_hook = |m: &Classifier<B>, epoch: usize| -> Result<Option<f64>, TrainError> {
        if every > 0 && epoch.is_multiple_of(every) {
            Ok(Some(evaluate_test(&m.net, &recipe, &dataset, cache.as_ref(), device, false)?.top1))
        } else {
            Ok(None)
        }
    };
    let trained = match &cache {
        Some(cache) => {
            let source = CachedSource { cache, labels: dataset.train.iter().map(|r| r.label).collect(), seed: t.seed };
            engine::train(&spec, &io, method, &source, Some(&mut eval_hook), device)?
        }
        None => {
            let source = ImageSource::new(&dataset.train, transform.clone(), t.seed, recipe.data.skip_bad);
            engine::train(&spec, &io, method, &source, Some(&mut eval_hook), device)?
        }
    };
    let (method, wall) = match trained {
        engine::Trained::Finished { method, wall_time_s, .. } => (method, wall_time_s),
        engine::Trained::Stopped { epochs_done } => return Ok(Outcome::Stopped { epochs_done }),
    };
    let eval_started = Instant::now();
    let eval = evaluate_test(&method.net, &recipe, &dataset, cache.as_ref(), device, ctx.progress)?;
    let record = result_record(&recipe, &dataset, &eval, ctx, wall + eval_started.elapsed().as_secs_f64());
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
        paper_backbone: recipe.report.paper_backbone.clone(),
        section: None,
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
                "{}; lr {} (backbone) / {} (head){}",
                engine_spec(recipe).describe(),
                t.lr,
                t.head_lr,
                if t.label_smoothing > 0.0 { format!(", label smoothing {}", t.label_smoothing) } else { String::new() },
            ),
            trained_layers: trained,
            mode: if recipe.model.freeze_stages == 0 { FeatureMode::EndToEnd } else { FeatureMode::Partial },
            trained_from_stage: (recipe.model.freeze_stages > 0).then_some(recipe.model.freeze_stages),
            loss: None,
            data_parallel: ctx.data_parallel(),
        },
        seed: t.seed,
        metrics,
        deviations: recipe.report.deviations.clone(),
        ..ctx.record(wall)
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
    let m = &recipe.model;
    let net: Network<B> = NetworkConfig::new(m.backbone).with_num_classes(classes.len()).with_width_div(m.width_div).init(device);
    let shell = Classifier { net, frozen: 0, input_stage: 0, body_lr_mult: 1.0, head_lr_mult: 1.0, label_smoothing: 0.0 };
    let (loaded, epoch) = load_checkpoint_module(shell, run_dir, device)?;
    Ok(Trained { network: loaded.net, recipe, classes, epoch })
}
