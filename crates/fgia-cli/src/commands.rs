//! The commands, generic over the backend.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use fgia_core::datasets::{DatasetKind, ReadOptions, Record};
use fgia_core::imaging::{Transform, load_batch};
use fgia_core::metrics::top_k_indices;
use fgia_nn::flops::{forward_macs, learnable_params};
use fgia_nn::weights::{load_network, pretrained_path};
use fgia_nn::{BackboneKind, Network, NetworkConfig};
use fgia_train::eval::evaluate;
use fgia_train::{Outcome, Recipe, RunContext, load_dataset, load_trained, train_and_evaluate};
use serde::Serialize;

use crate::{Command, EmbedArgs, EvalArgs, InfoArgs, LoaderArgs, Placement, PredictArgs, TrainArgs};
use crate::{encoding, external, localization, retrieval, sbir};

/// Runs one command on backend `B` (training uses `Autodiff<B>`).
pub fn run<B: Backend>(command: Command, device: B::Device, place: Placement) -> Result<()> {
    match command {
        Command::Train(a) => train::<B>(a, device, place),
        Command::Eval(a) => eval::<B>(a, device),
        Command::Predict(a) => predict::<B>(a, device),
        Command::Embed(a) => embed::<B>(a, device),
        Command::Info(a) => info::<B>(a, device),
        Command::Retrieval(a) => retrieval::retrieval::<B>(a, device, place),
        Command::Encoding(a) => encoding::encoding::<B>(a, device, place),
        Command::Sbir(a) => sbir::sbir::<B>(a, device, place),
        Command::External(a) => external::external::<B>(a, device, place),
        Command::Localization(a) => localization::localization::<B>(a, device, place),
        Command::SbirIndex(a) => sbir::sbir_index::<B>(a, device),
        Command::SbirQuery(a) => sbir::sbir_query::<B>(a, device),
        Command::Index(a) => retrieval::index::<B>(a, device),
        Command::Query(a) => retrieval::query::<B>(a, device),
        Command::Loader(a) => loader(a),
        Command::Ask(a) => crate::ask::ask::<B>(a, device),
        Command::CheckDevice(a) => crate::device_check::check_device::<B>(a, device, place.name),
    }
}

/// Times the engine's image batch source alone (the same decoding, augmentation and prefetching
/// as training, with nothing consuming the batches but a counter).
fn loader(a: LoaderArgs) -> Result<()> {
    use fgia_train::engine::{BatchSource, HostBatch, Sampler, with_prefetch};
    let kind: DatasetKind = a.format.parse().map_err(anyhow::Error::msg)?;
    let ds = kind.read(&a.data_root, ReadOptions::default())?;
    let source = fgia_train::sources::ImageSource::new(&ds.train, Transform::train(a.resize, a.crop, fgia_core::imaging::Normalize::Imagenet), 0, false);
    let sampler = Sampler::Shuffled { batch_size: a.batch_size };
    let mut rates = Vec::new();
    for epoch in 0..a.epochs {
        let plan = sampler.plan(source.labels(), 0, epoch);
        let started = std::time::Instant::now();
        let mut images = 0usize;
        with_prefetch(&source, epoch, &plan, |_, b| -> Result<(), fgia_train::TrainError> {
            images += b.len();
            Ok(())
        })?;
        let rate = images as f64 / started.elapsed().as_secs_f64();
        println!("epoch {}: {images} images in {:.2} s: {rate:.1} images/s", epoch + 1, started.elapsed().as_secs_f64());
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "loader ({} cores): median {:.1} images/s at resize {} / crop {}, batch {}",
        std::thread::available_parallelism().map_or(1, usize::from),
        rates[rates.len() / 2],
        a.resize,
        a.crop,
        a.batch_size
    );
    Ok(())
}

pub(crate) fn git_revision() -> String {
    std::env::var("FGIA_GIT_REV").unwrap_or_else(|_| "unknown".into())
}

pub(crate) fn resolve_pretrained(kind: BackboneKind, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    Ok(pretrained_path(kind, &fgia_core::paths::hub_cache_dir(), &fgia_core::paths::weights_dir())?)
}

fn train<B: Backend>(a: TrainArgs, device: B::Device, place: Placement) -> Result<()> {
    let recipe = if a.resume {
        Recipe::load(&a.run_dir.join("recipe.toml")).with_context(|| format!("resuming {}", a.run_dir.display()))?
    } else {
        let path = a.recipe.as_deref().context("--recipe is required for a new run")?;
        Recipe::load(path)?
    };
    let pretrained = if recipe.model.pretrained { Some(resolve_pretrained(recipe.model.backbone, a.weights.as_deref())?) } else { None };
    let ctx = RunContext {
        run_dir: a.run_dir.clone(),
        resume: a.resume,
        data_root: a.data_root.clone(),
        pretrained,
        device_name: place.name,
        git_revision: git_revision(),
        progress: !a.quiet,
        stop_after_epochs: None,
        replicas: place.replicas,
    };
    match train_and_evaluate::<Autodiff<B>>(&recipe, &ctx, &device)? {
        Outcome::Finished(record) => {
            if let Some(path) = &a.result {
                record.write(path)?;
            }
            println!(
                "{} on {} at {} px: top-1 {:.2}%, top-5 {:.2}% ({} epochs, {:.0} s) -> {}",
                record.method,
                record.data,
                record.resolution,
                record.metrics["top1"],
                record.metrics["top5"],
                record.protocol.epochs,
                record.wall_time_s,
                a.run_dir.join("result.json").display()
            );
            Ok(())
        }
        Outcome::Stopped { epochs_done } => {
            println!("stopped after epoch {epochs_done}; continue with --resume");
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct EvalReport {
    epoch: usize,
    tta: String,
    top1: f64,
    top5: f64,
    mean_per_class: f64,
    images: usize,
}

fn eval<B: Backend>(a: EvalArgs, device: B::Device) -> Result<()> {
    let trained = load_trained::<B>(&a.run_dir, &device)?;
    let recipe = &trained.recipe;
    let dataset = load_dataset(recipe, a.data_root.as_deref())?;
    let tta = a.tta.unwrap_or_else(|| recipe.eval.tta.clone());
    let out = evaluate::<B>(
        &trained.network,
        &dataset.test,
        &recipe.eval_transform(),
        recipe.eval.batch_size,
        tta == "flip",
        dataset.num_classes(),
        recipe.data.skip_bad,
        &device,
        true,
    )?;
    let report = EvalReport { epoch: trained.epoch, tta, top1: out.top1, top5: out.top5, mean_per_class: out.mean_per_class, images: out.labels.len() };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// A network ready for inference, with its class names and input transform.
pub(crate) struct Loaded<B: Backend> {
    pub(crate) network: Network<B>,
    pub(crate) classes: Vec<String>,
    pub(crate) transform: Transform,
}

pub(crate) fn load_for_inference<B: Backend>(run_dir: Option<&Path>, backbone: Option<&str>, resolution: Option<u32>, device: &B::Device) -> Result<Loaded<B>> {
    match (run_dir, backbone) {
        (Some(dir), _) => {
            let t = load_trained::<B>(dir, device)?;
            let mut transform = t.recipe.eval_transform();
            if let Some(r) = resolution {
                transform.crop = r;
                transform.resize = r * 8 / 7;
            }
            Ok(Loaded { network: t.network, classes: t.classes, transform })
        }
        (None, Some(name)) => {
            let kind: BackboneKind = name.parse().map_err(anyhow::Error::msg)?;
            let path = resolve_pretrained(kind, None)?;
            let net = NetworkConfig::new(kind).init::<B>(device);
            let (network, _) = load_network(net, kind, &path)?;
            let r = resolution.unwrap_or(224);
            let names = fgia_nn::imagenet::class_names();
            let classes = (0..network.num_classes()).map(|i| names.get(i).map_or_else(|| format!("class {i}"), |n| n.to_string())).collect();
            Ok(Loaded { network, classes, transform: Transform::eval(r * 8 / 7, r, kind.normalize()) })
        }
        (None, None) => bail!("give --run-dir or --backbone"),
    }
}

fn predict<B: Backend>(a: PredictArgs, device: B::Device) -> Result<()> {
    let m = load_for_inference::<B>(a.run_dir.as_deref(), a.backbone.as_deref(), a.resolution, &device)?;
    let records: Vec<Record> = fgia_cbir::extract::records_for(&a.images);
    let c = m.transform.crop as usize;
    for (i, rec) in records.iter().enumerate() {
        let x = if a.native_size {
            // The image as it is: no resize-then-crop, which changes the probabilities.
            let img = fgia_core::imaging::load_rgb(&rec.path)?;
            let (px, (h, w)) = fgia_core::imaging::normalized_chw(&img, m.transform.normalize);
            Tensor::<B, 4>::from_data(TensorData::new(px, [1, 3, h, w]), &device)
        } else {
            let batch = load_batch(&records, &[i], &m.transform, 0, 0, false)?;
            Tensor::<B, 4>::from_data(TensorData::new(batch.pixels, [1, 3, c, c]), &device)
        };
        let p: Vec<f32> = softmax(m.network.forward(x), 1).into_data().to_vec().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        println!("{}", rec.path.display());
        for k in top_k_indices(&p, a.top) {
            println!("  {:>6.2}%  {:>4}  {}", 100.0 * p[k], k, m.classes[k]);
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct EmbeddingIndex {
    backbone: String,
    resolution: u32,
    dim: usize,
    classes: Vec<String>,
    paths: Vec<String>,
    labels: Vec<usize>,
}

fn embed<B: Backend>(a: EmbedArgs, device: B::Device) -> Result<()> {
    let m = load_for_inference::<B>(a.run_dir.as_deref(), a.backbone.as_deref(), Some(a.resolution), &device)?;
    let kind: DatasetKind = a.format.parse().map_err(anyhow::Error::msg)?;
    let ds = kind.read(&a.data_root, ReadOptions::default())?;
    let records: Vec<Record> = match a.split.as_str() {
        "train" => ds.train.clone(),
        "test" => ds.test.clone(),
        _ => ds.train.iter().chain(&ds.test).cloned().collect(),
    };
    let c = m.transform.crop as usize;
    let mut data = Vec::new();
    let mut dim = 0;
    let idx: Vec<usize> = (0..records.len()).collect();
    for chunk in idx.chunks(32) {
        let batch = load_batch(&records, chunk, &m.transform, 0, 0, false)?;
        let x = Tensor::<B, 4>::from_data(TensorData::new(batch.pixels, [chunk.len(), 3, c, c]), &device);
        let e = m.network.embed(x); // [B, D]
        dim = e.dims()[1];
        data.extend(e.into_data().to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?);
    }
    crate::npy::write_npy(&a.out, &data, records.len(), dim)?;
    let index = EmbeddingIndex {
        backbone: a.run_dir.as_ref().map(|p| format!("run {}", p.display())).or(a.backbone.clone()).unwrap_or_default(),
        resolution: a.resolution,
        dim,
        classes: ds.classes.names.clone(),
        paths: records.iter().map(|r| r.path.display().to_string()).collect(),
        labels: records.iter().map(|r| r.label).collect(),
    };
    fgia_core::record::write_json_atomic(&a.out.with_extension("json"), &index)?;
    println!("wrote {} embeddings of dimension {dim} to {}", records.len(), a.out.display());
    Ok(())
}

fn info<B: Backend>(a: InfoArgs, device: B::Device) -> Result<()> {
    let kind: BackboneKind = a.backbone.parse().map_err(anyhow::Error::msg)?;
    let net = NetworkConfig::new(kind).with_num_classes(a.num_classes).init::<B>(&device);
    let params = learnable_params(&net);
    let macs = forward_macs(&net, a.resolution);
    println!("{} at {}x{}, {} classes", kind.display_name(), a.resolution, a.resolution, a.num_classes);
    println!("  parameters: {params} ({:.2} M)", params as f64 / 1e6);
    println!("  multiply-accumulates: {macs} ({:.3} GMACs, about {:.3} GFLOPs)", macs as f64 / 1e9, 2.0 * macs as f64 / 1e9);
    println!("  feature map: {} channels", net.feature_dim());
    Ok(())
}
