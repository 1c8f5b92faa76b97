//! One Table 2 run: read the dataset, cache the frozen backbone's maps (shared between the
//! recipes of one process), build the method's head from the registry, train it with SGD,
//! evaluate the last epoch on the test split, and write the result record.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig, decay::WeightDecayConfig};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use fgia_core::datasets::Dataset;
use fgia_core::record::{EpochMetrics, Protocol, RECORD_SCHEMA, ResultRecord, now_utc_rfc3339, write_json_atomic};
use fgia_core::rng::SplitMix64;
use fgia_core::sampler::pk_batches;
use fgia_nn::weights::load_network;
use fgia_nn::{Network, NetworkConfig};
use fgia_train::eval::EvalOutput;
use fgia_train::frozen_cache::{CacheSpec, FrozenCache};
use fgia_train::recipe::describe_transform;
use fgia_train::{BURN_VERSION, TrainError};

use crate::methods::dcl::{destruction_rng, region_permutation};
use crate::methods::pmg::{jigsaw, jigsaw_rng};
use crate::methods::{Head, HeadSpec, HeadVisitor, Inputs, build_head, permute_regions};
use crate::recipe::EncodingRecipe;
use crate::{Edit, Method};

/// Where and how a run happens.
#[derive(Debug, Clone)]
pub struct EncodingContext {
    /// Run folder (must not exist).
    pub run_dir: PathBuf,
    /// Dataset root override.
    pub data_root: Option<PathBuf>,
    /// Pretrained backbone weights.
    pub pretrained: PathBuf,
    /// Device, in words.
    pub device_name: String,
    /// Code revision.
    pub git_revision: String,
    /// Progress bars.
    pub progress: bool,
}

/// Cached maps shared by the recipes of one process. [`Caches::plan`] every recipe first so
/// that one backbone pass per image and view records the stages all of them read.
#[derive(Default)]
pub struct Caches {
    wanted: BTreeMap<String, BTreeSet<usize>>,
    built: Vec<(String, FrozenCache)>,
}

fn base_key(r: &EncodingRecipe, root: &Path) -> String {
    let t = &r.train;
    format!("{}|{}|{}|{}|{}|{}|{}", r.model.backbone.name(), root.display(), r.data.resize, r.data.crop, t.views, t.seed, r.eval.flip)
}

fn edit_key(r: &EncodingRecipe, root: &Path, edit: Edit) -> String {
    format!("{}|{edit:?}|{}", base_key(r, root), r.train.edited_views)
}

impl Caches {
    /// Registers the stages a recipe will read.
    pub fn plan(&mut self, r: &EncodingRecipe, root_override: Option<&Path>) -> Result<(), TrainError> {
        let root = r.data.root(root_override)?;
        self.wanted.entry(base_key(r, &root)).or_default().extend(r.taps());
        for (edit, taps) in r.method.name.edits(r.model.feature_stage, &r.params()) {
            self.wanted.entry(edit_key(r, &root, edit)).or_default().extend(taps);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn get<B: Backend>(
        &mut self,
        key: String,
        need: &[usize],
        edit: Option<Edit>,
        r: &EncodingRecipe,
        ds: &Dataset,
        net: &Network<B>,
        device: &B::Device,
        progress: bool,
    ) -> Result<&FrozenCache, TrainError> {
        let have = self.built.iter().position(|(k, c)| *k == key && need.iter().all(|s| c.taps.contains(s)));
        let at = match have {
            Some(i) => i,
            None => {
                let mut taps: BTreeSet<usize> = self.wanted.get(&key).cloned().unwrap_or_default();
                taps.extend(need);
                let taps: Vec<usize> = taps.into_iter().collect();
                let seed = r.train.seed;
                let edit_fn = move |px: &mut [f32], s: usize, i: usize, view: u64| match edit {
                    Some(Edit::Destruct { regions, k }) => {
                        permute_regions(px, s, regions, &region_permutation(regions, k, &mut destruction_rng(seed, i, view)))
                    }
                    Some(Edit::Jigsaw(n)) => jigsaw(px, s, n, &mut jigsaw_rng(seed, n, i, view)),
                    None => {}
                };
                let spec = CacheSpec {
                    taps: &taps,
                    views: if edit.is_some() { r.train.edited_views } else { r.train.views },
                    test: edit.is_none(),
                    flip: edit.is_none() && r.eval.flip,
                    edit: edit.is_some().then_some(&edit_fn as &(dyn Fn(&mut [f32], usize, usize, u64) + Sync)),
                };
                let cache = FrozenCache::build_with(
                    net,
                    spec,
                    &ds.train,
                    &r.train_transform(),
                    &ds.test,
                    &r.eval_transform(),
                    seed,
                    r.data.skip_bad,
                    device,
                    progress,
                )?;
                self.built.retain(|(k, _)| *k != key);
                self.built.push((key, cache));
                self.built.len() - 1
            }
        };
        Ok(&self.built[at].1)
    }
}

/// Reads a recipe's dataset (its official train/test split).
pub fn dataset(r: &EncodingRecipe, root_override: Option<&Path>) -> Result<Dataset, TrainError> {
    r.data.read(root_override)
}

/// Channels of the maps of `stages`, from a probe of the network at the recipe's size.
fn stage_channels<B: Backend>(net: &Network<B>, crop: usize, device: &B::Device) -> Vec<usize> {
    let mut x = Tensor::<B, 4>::zeros([1, 3, crop, crop], device);
    let mut out = Vec::new();
    for s in 0..net.num_stages() {
        x = net.forward_stage(s, x);
        out.push(x.dims()[1]);
    }
    out
}

/// The cached data of one training batch, as tensors.
struct BatchMaps {
    inputs_taps: BTreeMap<usize, Vec<f32>>,
    edited: Vec<BTreeMap<usize, Vec<f32>>>,
    shapes: BTreeMap<usize, [usize; 3]>,
    labels: Vec<usize>,
    permutations: Vec<Vec<usize>>,
}

fn tap_map(cache: &FrozenCache, data: &[f32], n: usize) -> (BTreeMap<usize, Vec<f32>>, BTreeMap<usize, [usize; 3]>) {
    let parts = cache.split_taps(data, n);
    let mut m = BTreeMap::new();
    let mut shapes = BTreeMap::new();
    for ((s, shape), p) in cache.taps.iter().zip(&cache.tap_shapes).zip(parts) {
        m.insert(*s, p);
        shapes.insert(*s, *shape);
    }
    (m, shapes)
}

fn to_inputs<B: Backend>(b: BatchMaps, seed: u64, device: &B::Device) -> Inputs<B> {
    let n = b.labels.len();
    let tensor = |s: &usize, v: Vec<f32>| {
        let [c, h, w] = b.shapes[s];
        Tensor::<B, 4>::from_data(TensorData::new(v, [n, c, h, w]), device)
    };
    Inputs {
        labels: b.labels,
        taps: b.inputs_taps.into_iter().map(|(s, v)| (s, tensor(&s, v))).collect(),
        edited: b.edited.into_iter().map(|m| m.into_iter().map(|(s, v)| (s, tensor(&s, v))).collect()).collect(),
        permutations: b.permutations,
        seed,
    }
}

struct Trained {
    eval: EvalOutput,
    epochs: Vec<EpochMetrics>,
}

/// Trains whatever head the registry builds.
struct Trainer<'a, B: Backend> {
    r: &'a EncodingRecipe,
    base: &'a FrozenCache,
    edited: &'a [(Edit, &'a FrozenCache)],
    train_labels: &'a [usize],
    test_labels: &'a [usize],
    classes: usize,
    run_dir: &'a Path,
    progress: bool,
    device: &'a B::Device,
}

impl<B: AutodiffBackend> HeadVisitor<B> for Trainer<'_, B> {
    type Output = Result<Trained, TrainError>;

    fn visit<M>(self, head: M) -> Self::Output
    where
        M: Head<B> + AutodiffModule<B>,
        M::InnerModule: Head<B::InnerBackend>,
    {
        train_head::<B, M>(head, self.r, self.base, self.edited, self.train_labels, self.test_labels, self.classes, self.run_dir, self.progress, self.device)
    }
}

#[allow(clippy::too_many_arguments)]
fn train_head<B, M>(
    mut head: M,
    r: &EncodingRecipe,
    base: &FrozenCache,
    edited: &[(Edit, &FrozenCache)],
    train_labels: &[usize],
    test_labels: &[usize],
    classes: usize,
    run_dir: &Path,
    progress: bool,
    device: &B::Device,
) -> Result<Trained, TrainError>
where
    B: AutodiffBackend,
    M: Head<B> + AutodiffModule<B>,
    M::InnerModule: Head<B::InnerBackend>,
{
    let t = &r.train;
    let method = r.method.name;
    let mut optim = SgdConfig::new()
        .with_momentum(Some(MomentumConfig::new().with_momentum(t.momentum).with_dampening(0.0).with_nesterov(false)))
        .with_weight_decay((t.weight_decay > 0.0).then(|| WeightDecayConfig::new(t.weight_decay as f32)))
        .init::<B, M>();
    let n = train_labels.len();
    let batches_of = |epoch: usize| -> Vec<Vec<usize>> {
        if method.class_balanced_batches() {
            let bs = t.classes_per_batch * t.images_per_class;
            pk_batches(train_labels, t.classes_per_batch, t.images_per_class, (n / bs).max(1), t.seed, epoch as u64)
        } else {
            let mut order: Vec<usize> = (0..n).collect();
            SplitMix64::for_item(t.seed, epoch as u64, u64::MAX).shuffle(&mut order);
            order.chunks(t.batch_size).filter(|c| c.len() >= 2).map(<[usize]>::to_vec).collect()
        }
    };
    let total: usize = (0..t.epochs).map(|e| batches_of(e).len()).sum();
    let bar = if progress { indicatif::ProgressBar::new(total as u64).with_prefix(method.name()) } else { indicatif::ProgressBar::hidden() };
    let (regions, k) = match method.edits(r.model.feature_stage, &r.params()).first() {
        Some((Edit::Destruct { regions, k }, _)) => (*regions, *k),
        _ => (0, 0),
    };
    let mut epochs = Vec::new();
    for epoch in 0..t.epochs {
        let started = Instant::now();
        let lr = t.lr * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / t.epochs as f64).cos());
        let (mut loss_sum, mut correct, mut seen, mut gn_sum, mut steps) = (0.0f64, 0usize, 0usize, 0.0f64, 0usize);
        for (bi, batch) in batches_of(epoch).into_iter().enumerate() {
            let (data, kept) = base.train_batch(&batch, t.seed, epoch);
            let items: Vec<usize> = kept.iter().map(|&p| batch[p]).collect();
            if items.len() < 2 {
                continue;
            }
            let (inputs_taps, mut shapes) = tap_map(base, &data, items.len());
            let mut edited_maps = Vec::new();
            for (edit, cache) in edited {
                let (d, kept_e) = cache.train_batch(&items, t.seed, epoch);
                if kept_e.len() != items.len() {
                    return Err(TrainError::Recipe { path: run_dir.to_path_buf(), message: "an edited view is missing for a decodable image".into() });
                }
                let (m, s) = tap_map(cache, &d, items.len());
                shapes.extend(s);
                edited_maps.push(m);
                let _ = edit;
            }
            let permutations = if regions > 0 {
                let views = edited[0].1;
                items.iter().map(|&i| region_permutation(regions, k, &mut destruction_rng(t.seed, i, views.view_of(i, t.seed, epoch) as u64))).collect()
            } else {
                Vec::new()
            };
            let labels: Vec<usize> = items.iter().map(|&i| train_labels[i]).collect();
            let seed = SplitMix64::for_item(t.seed ^ 0xba7c, epoch as u64, bi as u64).next_u64();
            let inputs = to_inputs::<B>(BatchMaps { inputs_taps, edited: edited_maps, shapes, labels: labels.clone(), permutations }, seed, device);
            for step in 0..head.steps() {
                let out = head.loss(&inputs, step);
                let value: f32 = out.loss.clone().into_scalar().elem();
                if !value.is_finite() {
                    return Err(TrainError::NonFinite { epoch: epoch + 1, step: bi, value });
                }
                let mut raw = out.loss.backward();
                let mut g_backbone = head.backbone().map(|bb| GradientsParams::from_module(&mut raw, bb));
                let mut grads = GradientsParams::from_grads(raw, &head);
                gn_sum += fgia_train::clip::global_grad_norm(&head, &grads);
                if t.clip_grad_norm > 0.0 {
                    fgia_train::clip::clip_global_norm(&head, &mut grads, t.clip_grad_norm);
                    if let Some(g) = g_backbone.as_mut() {
                        fgia_train::clip::clip_global_norm(&head, g, t.clip_grad_norm);
                    }
                }
                head = optim.step(lr, head, grads);
                if let Some(g) = g_backbone {
                    head = optim.step(lr * t.backbone_lr_mult, head, g);
                }
                if step + 1 == head.steps() {
                    let logits: Vec<f32> = out.logits.into_data().convert::<f32>().to_vec().unwrap_or_default();
                    let pred = fgia_core::metrics::argmax_rows(&logits, classes);
                    correct += pred.iter().zip(&labels).filter(|(p, l)| p == l).count();
                    seen += labels.len();
                    loss_sum += value as f64;
                    steps += 1;
                }
            }
            bar.inc(1);
        }
        let m = EpochMetrics {
            epoch: epoch + 1,
            train_loss: loss_sum / steps.max(1) as f64,
            train_top1: 100.0 * correct as f64 / seen.max(1) as f64,
            lr,
            grad_norm: gn_sum / (steps * head.steps()).max(1) as f64,
            test_top1: None,
            seconds: started.elapsed().as_secs_f64(),
            skipped_images: 0,
        };
        fgia_train::append_metrics(&run_dir.join("metrics.jsonl"), &m)?;
        epochs.push(m);
    }
    bar.finish_and_clear();
    fgia_train::save_module(head.clone(), run_dir, "head")?;

    // Last epoch on the test split.
    let inner = head.valid();
    let mut probs = Vec::new();
    let mut labels = Vec::new();
    let idx: Vec<usize> = (0..test_labels.len()).collect();
    for chunk in idx.chunks(32) {
        let (data, kept) = base.test_batch(chunk, false);
        if kept.is_empty() {
            continue;
        }
        let nk = kept.len();
        let scores = |data: &[f32]| -> Vec<f32> {
            let (taps, shapes) = tap_map(base, data, nk);
            let x = to_inputs::<B::InnerBackend>(
                BatchMaps { inputs_taps: taps, edited: Vec::new(), shapes, labels: vec![0; nk], permutations: Vec::new() },
                0,
                device,
            );
            // Log-probabilities: a softmax in f32 underflows to ties at 0 when the scores are far
            // apart, which would corrupt top-5.
            log_softmax(inner.logits(&x), 1).into_data().convert::<f32>().to_vec().unwrap_or_default()
        };
        let mut p = scores(&data);
        if r.eval.flip && base.has_flipped_test() {
            let (data_f, _) = base.test_batch(chunk, true);
            // Mean of the two probabilities, in the log domain.
            for (a, b) in p.iter_mut().zip(scores(&data_f)) {
                let m = a.max(b);
                *a = m + (0.5 * ((*a - m).exp() + (b - m).exp())).ln();
            }
        }
        probs.extend(p);
        labels.extend(kept.iter().map(|&k| test_labels[chunk[k]]));
    }
    let skipped = test_labels.len() - labels.len();
    Ok(Trained { eval: EvalOutput::from_probabilities(probs, labels, classes, skipped), epochs })
}

/// Initial RBF scale of kernel pooling: `1 / mean ‖x‖²` over the cached maps of a few images.
fn rbf_gamma(cache: &FrozenCache, stage: usize, n: usize) -> f64 {
    let idx: Vec<usize> = (0..n.min(64)).collect();
    let (data, kept) = cache.test_batch(&idx, false);
    let (taps, shapes) = tap_map(cache, &data, kept.len());
    let [c, h, w] = shapes[&stage];
    let v = &taps[&stage];
    let m = h * w;
    let mut total = 0.0f64;
    let mut count = 0usize;
    for item in 0..kept.len() {
        for loc in 0..m {
            let sq: f64 = (0..c).map(|ch| (v[item * c * m + ch * m + loc] as f64).powi(2)).sum();
            total += sq;
            count += 1;
        }
    }
    if total > 0.0 { count as f64 / total } else { 1.0 }
}

/// Runs a recipe (after [`Caches::plan`] of every recipe of the process).
pub fn run_recipe<B: AutodiffBackend>(r: &EncodingRecipe, ctx: &EncodingContext, caches: &mut Caches, device: &B::Device) -> Result<ResultRecord, TrainError> {
    let started = Instant::now();
    let run_dir = &ctx.run_dir;
    if run_dir.exists() {
        return Err(TrainError::RunExists(run_dir.clone()));
    }
    std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
    fgia_core::record::write_atomic(&run_dir.join("recipe.toml"), r.to_toml().as_bytes())?;
    let ds = dataset(r, ctx.data_root.as_deref())?;
    let root = r.data.root(ctx.data_root.as_deref())?;
    let classes = ds.num_classes();
    B::seed(device, r.train.seed);
    let net_inner: Network<B::InnerBackend> = {
        let net = NetworkConfig::new(r.model.backbone).init::<B::InnerBackend>(device);
        load_network(net, r.model.backbone, &ctx.pretrained)?.0
    };
    let method = r.method.name;
    let f = r.model.feature_stage;
    let params = r.params();
    let channels = stage_channels(&net_inner, r.data.crop as usize, device);
    let taps = r.taps();
    caches.get(base_key(r, &root), &taps, None, r, &ds, &net_inner, device, ctx.progress)?;
    let edits = method.edits(f, &params);
    for (edit, need) in &edits {
        caches.get(edit_key(r, &root, *edit), need, Some(*edit), r, &ds, &net_inner, device, ctx.progress)?;
    }
    let find = |key: &str| caches.built.iter().find(|(k, _)| k == key).map(|(_, c)| c).expect("built above");
    let base = find(&base_key(r, &root));
    let edited: Vec<(Edit, &FrozenCache)> = edits.iter().map(|(e, _)| (*e, find(&edit_key(r, &root, *e)))).collect();
    let train_labels: Vec<usize> = ds.train.iter().map(|x| x.label).collect();
    let test_labels: Vec<usize> = ds.test.iter().map(|x| x.label).collect();
    let gamma = if method == Method::KernelPooling { rbf_gamma(base, f, test_labels.len()) } else { 1.0 };
    let hbp_stages = r.hbp_stages();
    let spec = HeadSpec { feature_stage: f, channels: &channels, classes, params: &params, hbp_stages: &hbp_stages, seed: r.train.seed, rbf_gamma: gamma };
    let trainable = || -> Network<B> {
        let net = NetworkConfig::new(r.model.backbone).init::<B>(device);
        load_network(net, r.model.backbone, &ctx.pretrained).expect("loaded once above").0
    };
    let trainer =
        Trainer { r, base, edited: &edited, train_labels: &train_labels, test_labels: &test_labels, classes, run_dir, progress: ctx.progress, device };
    let trained = build_head(method, &spec, trainable, device, trainer)?;
    let t = &r.train;
    let mut deviations = r.report.deviations.clone();
    let what = if method.fine_tunes_last_stage() {
        format!(
            "backbone frozen up to stage {} (maps cached); its last used stage ({f}) is fine-tuned at {}x the learning rate, with the method's layers",
            f - 1,
            t.backbone_lr_mult
        )
    } else {
        format!("backbone frozen at its ImageNet weights (maps of stage {f} cached): only the method's own layers are trained")
    };
    deviations.push(format!("{what}; training images are cached as {} augmented views", t.views));
    if !edits.is_empty() {
        deviations.push(format!(
            "edited training images (destruction / jigsaw) are cached as {} fixed views per image instead of a fresh draw per epoch",
            t.edited_views
        ));
    }
    let mut metrics = BTreeMap::new();
    metrics.insert("top1".into(), trained.eval.top1);
    metrics.insert("top5".into(), trained.eval.top5);
    metrics.insert("mean_per_class".into(), trained.eval.mean_per_class);
    metrics.insert("chance".into(), 100.0 / classes as f64);
    metrics.insert("test_images".into(), trained.eval.labels.len() as f64);
    metrics.insert("skipped_images".into(), trained.eval.skipped as f64);
    if let Some(last) = trained.epochs.last() {
        metrics.insert("train_top1".into(), last.train_top1);
        metrics.insert("train_loss".into(), last.train_loss);
    }
    let batch = if method.class_balanced_batches() { t.classes_per_batch * t.images_per_class } else { t.batch_size };
    let record = ResultRecord {
        schema: RECORD_SCHEMA,
        table: r.report.table.clone(),
        method: r.report.method.clone(),
        dataset: r.report.dataset.clone(),
        data: r
            .data
            .description
            .clone()
            .unwrap_or_else(|| format!("{} ({classes} classes, {} train / {} test images)", ds.name, ds.train.len(), ds.test.len())),
        backbone: r.report.reported_backbone.clone().unwrap_or_else(|| r.model.backbone.display_name().to_string()),
        resolution: r.data.crop,
        paper_resolution: r.report.paper_resolution,
        protocol: Protocol {
            split: ds.split_note.clone(),
            train_transform: describe_transform(&r.train_transform()),
            eval_transform: describe_transform(&r.eval_transform()),
            tta: if r.eval.flip { "flip (softmax of the image and its mirror averaged)".into() } else { "none".into() },
            checkpoint: "last epoch (no model selection on the test split)".into(),
            seeds: vec![t.seed],
            epochs: trained.epochs.len(),
            batch_size: batch,
            optimizer: format!(
                "SGD momentum {}, lr {} (cosine), weight decay {}{}{}; method parameters: {}",
                t.momentum,
                t.lr,
                t.weight_decay,
                if t.clip_grad_norm > 0.0 { format!(", gradient norm clipped at {}", t.clip_grad_norm) } else { String::new() },
                if method.class_balanced_batches() {
                    format!(", batches of {} classes x {} images", t.classes_per_batch, t.images_per_class)
                } else {
                    String::new()
                },
                if params.describe().is_empty() { "none".into() } else { params.describe() }
            ),
            trained_layers: if method.fine_tunes_last_stage() {
                format!("method layers + backbone stage {f}")
            } else {
                "method layers only (backbone frozen)".into()
            },
        },
        seed: t.seed,
        metrics,
        deviations,
        git_revision: ctx.git_revision.clone(),
        burn_version: BURN_VERSION.into(),
        device: ctx.device_name.clone(),
        wall_time_s: started.elapsed().as_secs_f64(),
        created_utc: now_utc_rfc3339(),
        run_dir: run_dir.display().to_string(),
    };
    write_json_atomic(&run_dir.join("result.json"), &record)?;
    Ok(record)
}
