//! Runs a §5.1 recipe on the engine, in cached rounds on the frozen trunk.
//!
//! The papers crop and resample pixels and run the backbone again on the crops. With the trunk
//! frozen (the smoke profile) that is done in rounds, each one a complete `engine::train` run in
//! its own folder under the run folder (so each resumes on its own):
//!
//! 1. **the localizer** (attention, navigator, part detector, transformer) trains on the frozen
//!    backbone's last map of the training views, cached once per process ([`Shared`]);
//! 2. **the crops**: the trained localizer names, for every training view and test image, its
//!    boxes or sampling grids on that view's pixels; [`Stage::crops`] resamples the pixels
//!    (`grid_sample`), runs the frozen backbone on them, and keeps their features;
//! 3. **the classifiers** train on the global map and the crops' features with the method's
//!    losses; evaluation runs the same rule on the test images' crops.
//!
//! A method file implements its rounds with [`Stage`]; the registry's `run` dispatches. The
//! record names every cached round in its deviations. `mode = "end-to-end"` (the `--full`
//! profile) goes to [`crate::live`] instead: the same methods trained end to end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fgia_core::datasets::{Dataset, Record};
use fgia_core::imaging::{Transform, ViewGeometry, load_batch};
use fgia_core::record::{FeatureMode, Protocol, ResultRecord};
use fgia_nn::weights::load_network;
use fgia_nn::{Network, NetworkConfig};
use fgia_train::engine::{self, BatchSource, EngineSpec, HostBatch, OptimizerSpec, RunIo, Sampler, TrainMethod, Trained};
use fgia_train::frozen_cache::FrozenCache;
use fgia_train::parallel::{split_items, split_rows};
use fgia_train::{RunContext, TrainError};

use crate::geometry::NormBox;
use crate::looks::Look;
use crate::recipe::LocalizationRecipe;

/// The frozen backbone and its last map of the training views and test images, shared by the
/// recipes of a process with the same backbone, data, sizes, views and seed.
pub struct Shared<B: Backend> {
    entries: Vec<(String, Network<B>, FrozenCache)>,
    /// Training crops that several recipes draw alike (Part-based R-CNN's annotated regions,
    /// whatever its test setting), by key.
    train_crops: std::cell::RefCell<BTreeMap<String, TrainCrops>>,
}

/// The training half of a [`PartFeatures`]: per `(image, view)` crops and one crop's map shape.
type TrainCrops = (Vec<Option<Vec<f32>>>, [usize; 3]);

impl<B: Backend> Default for Shared<B> {
    fn default() -> Self {
        Shared { entries: Vec::new(), train_crops: Default::default() }
    }
}

fn shared_key(r: &LocalizationRecipe, root: &Path) -> String {
    format!("{}|{}|{}|{}|{}|{}", r.model.backbone.name(), root.display(), r.data.resize, r.data.crop, r.train.views, r.train.seed)
}

/// What a method's rounds produced.
pub struct Outcome {
    /// Metrics; `top1` is the table's number.
    pub metrics: BTreeMap<String, f64>,
    /// The layers that trained, in words.
    pub trained_layers: String,
    /// Every loss term with its weight, in words.
    pub loss: String,
    /// The method's deviations beyond the registry's fixed ones.
    pub deviations: Vec<String>,
    /// Test-time augmentation, in words (`none` when a single view).
    pub tta: String,
    /// What the method looked at on 8 test images.
    pub looks: Vec<Look>,
}

/// One training view: image index and cached view.
pub type ViewRef = (usize, usize);

/// Sampling of one crop from a view's pixels: a `size x size` grid (`grid_sample`
/// coordinates, `align_corners = false`) and optionally an erasing mask applied first.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// `[size, size, 2]` coordinates.
    pub grid: Vec<f32>,
    /// Pixels of the view where the bilinearly upsampled `g x g` map is at or above the
    /// threshold are set to zero (WS-DAN's attention drop): `(g, map, threshold)`.
    pub erase: Option<(usize, Vec<f32>, f32)>,
}

impl Sample {
    /// The crop of `b` at `size x size`.
    pub fn from_box(b: NormBox, size: usize) -> Sample {
        let t = b.theta();
        let mut grid = Vec::with_capacity(size * size * 2);
        for y in 0..size {
            let v = (2 * y + 1) as f32 / size as f32 - 1.0;
            for x in 0..size {
                let u = (2 * x + 1) as f32 / size as f32 - 1.0;
                grid.extend([t[0] * u + t[1] * v + t[2], t[3] * u + t[4] * v + t[5]]);
            }
        }
        Sample { grid, erase: None }
    }
}

/// The box (unit square of the view) whose [`Sample::from_box`] grid `grid` is: its first and last
/// sample positions, widened by half a step.
pub fn box_of(grid: &[f32]) -> NormBox {
    let n = grid.len() / 2;
    let side = (n as f64).sqrt().round() as usize;
    if side == 0 {
        return NormBox::FULL;
    }
    let (first, last) = ((grid[0], grid[1]), (grid[2 * n - 2], grid[2 * n - 1]));
    // Sample k of `side` sits at x0 + (k + 1/2) (x1 − x0) / side in the unit square.
    let to_unit = |g: f32| (g + 1.0) / 2.0;
    let (fx, fy, lx, ly) = (to_unit(first.0), to_unit(first.1), to_unit(last.0), to_unit(last.1));
    let half = |a: f32, b: f32| if side > 1 { (b - a) / (2.0 * (side - 1) as f32) } else { 0.0 };
    NormBox { x0: fx - half(fx, lx), y0: fy - half(fy, ly), x1: lx + half(fx, lx), y1: ly + half(fy, ly) }
}

/// Pooled (or spatial) backbone features of `k` crops per training view and test image.
#[derive(Debug, Clone)]
pub struct PartFeatures {
    /// Crops per training view.
    pub k: usize,
    /// Crops per test image.
    pub k_test: usize,
    /// Floats per crop (`C`, or `C h w` when spatial).
    pub per: usize,
    /// Shape of one crop's map `[C, h, w]` (`h = w = 1` when pooled).
    pub shape: [usize; 3],
    views: usize,
    train: Vec<Option<Vec<f32>>>,
    test: Vec<Option<Vec<f32>>>,
}

impl PartFeatures {
    /// The crops of training image `i`, view `v`.
    pub fn train(&self, i: usize, v: usize) -> Option<&[f32]> {
        self.train.get(i * self.views + v).and_then(|x| x.as_deref())
    }
    /// The crops of test image `i`.
    pub fn test(&self, i: usize) -> Option<&[f32]> {
        self.test.get(i).and_then(|x| x.as_deref())
    }
}

/// A batch: the global maps of the items and their crops' features.
#[derive(Debug, Clone)]
pub struct LocBatch {
    /// `[n, C, h, w]` global maps.
    pub global: Vec<f32>,
    /// `[C, h, w]` of one global map.
    pub gshape: [usize; 3],
    /// `[n, k, per]` crop features (empty when `k == 0`).
    pub parts: Vec<f32>,
    /// Crops per item.
    pub k: usize,
    /// Floats per crop.
    pub per: usize,
    /// Labels.
    pub labels: Vec<usize>,
    /// Indices into the source's items.
    pub items: Vec<usize>,
    /// `(image, view)` of each item (view 0 for test images).
    pub views: Vec<ViewRef>,
    /// Skipped items.
    pub skipped: usize,
}

impl HostBatch for LocBatch {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn skipped(&self) -> usize {
        self.skipped
    }
    fn split(self, sizes: &[usize]) -> Vec<Self> {
        let g = split_rows(&self.global, self.gshape.iter().product(), sizes);
        let p = split_rows(&self.parts, self.k * self.per, sizes);
        let (labels, items, views) = (split_items(&self.labels, sizes), split_items(&self.items, sizes), split_items(&self.views, sizes));
        g.into_iter()
            .zip(p)
            .zip(labels)
            .zip(items)
            .zip(views)
            .enumerate()
            .map(|(i, ((((global, parts), labels), items), views))| LocBatch {
                global,
                gshape: self.gshape,
                parts,
                k: self.k,
                per: self.per,
                labels,
                items,
                views,
                skipped: if i == 0 { self.skipped } else { 0 },
            })
            .collect()
    }
}

/// A batch as tensors.
pub struct LocInput<B: Backend> {
    /// `[n, C, h, w]`.
    pub global: Tensor<B, 4>,
    /// `[n, k, per]`, when the batch has crops.
    pub parts: Option<Tensor<B, 3>>,
    /// Labels `[n]`.
    pub labels: Tensor<B, 1, Int>,
    /// Labels on the host.
    pub label_vec: Vec<usize>,
    /// `(image, view)` of each item.
    pub views: Vec<ViewRef>,
}

/// The tensors of a batch.
pub fn prepare<B: Backend>(b: LocBatch, device: &B::Device) -> LocInput<B> {
    let n = b.labels.len();
    let [c, h, w] = b.gshape;
    let global = Tensor::from_data(TensorData::new(b.global, [n, c, h, w]), device);
    let parts = (b.k > 0).then(|| Tensor::from_data(TensorData::new(b.parts, [n, b.k, b.per]), device));
    let labels = Tensor::from_data(TensorData::new(b.labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [n]), device);
    LocInput { global, parts, labels, label_vec: b.labels, views: b.views }
}

/// Training items: one cached view per image and epoch, with its crops.
pub struct LocSource<'a> {
    maps: &'a FrozenCache,
    parts: Option<&'a PartFeatures>,
    labels: Vec<usize>,
    seed: u64,
}

impl BatchSource for LocSource<'_> {
    type Batch = LocBatch;
    fn labels(&self) -> &[usize] {
        &self.labels
    }
    fn load(&self, epoch: usize, _step: usize, items: &[usize]) -> Result<LocBatch, TrainError> {
        let views: Vec<ViewRef> = items.iter().map(|&i| (i, self.maps.view_of(i, self.seed, epoch))).collect();
        Ok(gather(self.maps, self.parts, &views, items, &self.labels, true))
    }
}

fn gather(maps: &FrozenCache, parts: Option<&PartFeatures>, views: &[ViewRef], items: &[usize], labels: &[usize], train: bool) -> LocBatch {
    let (k, per) = parts.map_or((0, 0), |p| (if train { p.k } else { p.k_test }, p.per));
    let mut b =
        LocBatch { global: Vec::new(), gshape: maps.shape, parts: Vec::new(), k, per, labels: Vec::new(), items: Vec::new(), views: Vec::new(), skipped: 0 };
    for (&(i, v), &item) in views.iter().zip(items) {
        let g = if train { maps.train_view(i, v) } else { maps.test_map(i) };
        let p = parts.map(|p| if train { p.train(i, v) } else { p.test(i) });
        match (g, p) {
            (Some(g), None) => b.global.extend_from_slice(g),
            (Some(g), Some(Some(p))) => {
                b.global.extend_from_slice(g);
                b.parts.extend_from_slice(p);
            }
            _ => {
                b.skipped += 1;
                continue;
            }
        }
        b.labels.push(labels[item]);
        b.items.push(item);
        b.views.push((i, v));
    }
    b
}

/// Everything a method's rounds need.
pub struct Stage<'a, B: AutodiffBackend> {
    /// The recipe.
    pub r: &'a LocalizationRecipe,
    /// The run.
    pub ctx: &'a RunContext,
    /// The dataset.
    pub ds: &'a Dataset,
    /// The dataset root.
    pub root: PathBuf,
    /// The frozen backbone (inference mode).
    pub net: &'a Network<B::InnerBackend>,
    /// Its last map of the training views and test images.
    pub maps: &'a FrozenCache,
    /// The device.
    pub device: &'a B::Device,
    /// Classes.
    pub classes: usize,
    /// Training transform (the cached views).
    pub train_tf: Transform,
    /// Test transform.
    pub eval_tf: Transform,
    /// Training crops shared between the recipes of the process ([`Stage::crops_sharing_train`]).
    pub train_crops: &'a std::cell::RefCell<BTreeMap<String, TrainCrops>>,
    /// The key of the backbone, data and views of the cached maps.
    pub maps_key: String,
}

/// The engine's settings of a recipe's training (each round, or the end-to-end run).
pub fn engine_spec(r: &LocalizationRecipe, balanced: bool) -> EngineSpec {
    let t = &r.train;
    EngineSpec {
        epochs: t.epochs,
        lr: t.lr,
        optimizer: OptimizerSpec::Sgd { momentum: t.momentum, nesterov: false, weight_decay: t.weight_decay },
        schedule: t.lr_schedule.clone(),
        clip_grad_norm: 0.0,
        seed: t.seed,
        sampler: if balanced {
            Sampler::ClassBalanced { p: t.classes_per_batch, k: t.images_per_class }
        } else {
            Sampler::Shuffled { batch_size: t.batch_size }
        },
    }
}

/// The 8 test images whose looks are drawn: spread evenly over the test split.
pub fn look_images(n: usize) -> Vec<usize> {
    let k = n.min(8);
    (0..k).map(|j| j * n / k.max(1)).collect()
}

impl<B: AutodiffBackend> Stage<'_, B> {
    /// Training labels.
    pub fn labels(&self) -> Vec<usize> {
        self.ds.train.iter().map(|x| x.label).collect()
    }

    /// The training source (with `parts`, when the round reads crops).
    pub fn source<'s>(&'s self, parts: Option<&'s PartFeatures>) -> LocSource<'s> {
        LocSource { maps: self.maps, parts, labels: self.labels(), seed: self.r.train.seed }
    }

    /// Trains `method` for one round in `<run>/<round>`; `None` when the run stopped early.
    pub fn round<M>(&self, round: &str, method: M, parts: Option<&PartFeatures>, balanced: bool) -> Result<Option<M>, TrainError>
    where
        M: TrainMethod<B, Batch = LocBatch>,
    {
        let spec = engine_spec(self.r, balanced);
        let dir = self.ctx.run_dir.join(round);
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        let io = RunIo { run_dir: dir, ..self.ctx.io(&format!("{} ({round})", self.r.report.method)) };
        match engine::train(&spec, &io, method, &self.source(parts), None, self.device)? {
            Trained::Finished { method, .. } => Ok(Some(method)),
            Trained::Stopped { .. } => Ok(None),
        }
    }

    /// Every training view `(image, view)` whose map is cached.
    pub fn train_views(&self) -> Vec<ViewRef> {
        (0..self.ds.train.len()).flat_map(|i| (0..self.maps.views).map(move |v| (i, v))).filter(|&(i, v)| self.maps.train_view(i, v).is_some()).collect()
    }

    /// Runs `f` on the global maps of `views` (training views, or test images with `train ==
    /// false`), in chunks of 64, as tensors of the inner backend.
    pub fn on_maps(&self, views: &[ViewRef], train: bool, mut f: impl FnMut(&[ViewRef], Tensor<B::InnerBackend, 4>)) {
        let [c, h, w] = self.maps.shape;
        for chunk in views.chunks(64) {
            let mut data = Vec::with_capacity(chunk.len() * c * h * w);
            let mut kept = Vec::with_capacity(chunk.len());
            for &(i, v) in chunk {
                if let Some(m) = if train { self.maps.train_view(i, v) } else { self.maps.test_map(i) } {
                    data.extend_from_slice(m);
                    kept.push((i, v));
                }
            }
            if kept.is_empty() {
                continue;
            }
            f(&kept, Tensor::from_data(TensorData::new(data, [kept.len(), c, h, w]), self.device));
        }
    }

    /// Test images with a cached map, as `(image, 0)`.
    pub fn test_views(&self) -> Vec<ViewRef> {
        (0..self.ds.test.len()).filter(|&i| self.maps.test_map(i).is_some()).map(|i| (i, 0)).collect()
    }

    /// Test batches (of up to 64 images) with their crops.
    pub fn test_batches(&self, parts: Option<&PartFeatures>) -> Vec<LocBatch> {
        let labels: Vec<usize> = self.ds.test.iter().map(|x| x.label).collect();
        let all: Vec<ViewRef> = (0..self.ds.test.len()).map(|i| (i, 0)).collect();
        all.chunks(64)
            .map(|c| {
                let items: Vec<usize> = c.iter().map(|v| v.0).collect();
                gather(self.maps, parts, c, &items, &labels, false)
            })
            .collect()
    }

    /// Resamples `k` crops per training view and test image from their pixels (the same
    /// pixels the cached maps came from), runs the frozen backbone on each `size x size` crop,
    /// and keeps its pooled last map (or the whole map with `spatial`). `train_samples` gives the
    /// crops of a training view (image, view, where the view lies in the image), `test_samples`
    /// those of a test image; a view without samples (or an undecodable image) has no crops and
    /// is skipped by the rounds that need them.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    pub fn crops(
        &self,
        what: &str,
        k: usize,
        k_test: usize,
        size: usize,
        spatial: bool,
        train_samples: &(dyn Fn(usize, usize, &ViewGeometry) -> Option<Vec<Sample>> + Sync),
        test_samples: &(dyn Fn(usize, &ViewGeometry) -> Option<Vec<Sample>> + Sync),
    ) -> Result<PartFeatures, TrainError> {
        self.crops_sharing_train(None, what, k, k_test, size, spatial, train_samples, test_samples)
    }

    /// [`Stage::crops`], where recipes of the process whose training crops are alike (same
    /// `train_key`, which must name everything `train_samples` depends on besides the cached
    /// maps) draw them once.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    pub fn crops_sharing_train(
        &self,
        train_key: Option<&str>,
        what: &str,
        k: usize,
        k_test: usize,
        size: usize,
        spatial: bool,
        train_samples: &(dyn Fn(usize, usize, &ViewGeometry) -> Option<Vec<Sample>> + Sync),
        test_samples: &(dyn Fn(usize, &ViewGeometry) -> Option<Vec<Sample>> + Sync),
    ) -> Result<PartFeatures, TrainError> {
        let views = self.maps.views;
        let (train, test) = (&self.ds.train, &self.ds.test);
        let key = train_key.map(|t| format!("{}|{t}|{k}|{size}|{spatial}", self.maps_key));
        let reused = key.as_ref().and_then(|key| self.train_crops.borrow().get(key).cloned());
        let total = (if reused.is_some() { 0 } else { train.len() * views } + test.len()) as u64;
        let bar = engine::progress_bar(self.ctx.progress, total, &format!("{what}: crops through the frozen backbone"));
        let mut shape = [0usize; 3];
        let mut train_out = vec![None; train.len() * views];
        let draw_train = reused.is_none();
        if let Some((out, s)) = reused {
            (train_out, shape) = (out, s);
        }
        for v in (0..views).filter(|_| draw_train) {
            let out = crop_pass(
                self.net,
                train,
                &self.train_tf,
                self.r.train.seed,
                v as u64,
                self.r.data.skip_bad,
                k,
                size,
                spatial,
                &|i, g| train_samples(i, v, g),
                self.device,
                &bar,
                &mut shape,
            )?;
            for (i, x) in out.into_iter().enumerate() {
                train_out[i * views + v] = x;
            }
        }
        if let Some(key) = key {
            self.train_crops.borrow_mut().insert(key, (train_out.clone(), shape));
        }
        let test_out =
            crop_pass(self.net, test, &self.eval_tf, 0, 0, self.r.data.skip_bad, k_test, size, spatial, test_samples, self.device, &bar, &mut shape)?;
        bar.finish_and_clear();
        let per = if spatial { shape.iter().product() } else { shape[0] };
        if !spatial {
            shape = [shape[0], 1, 1];
        }
        Ok(PartFeatures { k, k_test, per, shape, views, train: train_out, test: test_out })
    }

    /// Runs `f` on every test batch (with the crops of `parts`) and returns the top-1 accuracy of
    /// the scores it returns (`[n, classes]` row-major), with the images it scored.
    pub fn evaluate(&self, parts: Option<&PartFeatures>, mut f: impl FnMut(LocInput<B::InnerBackend>) -> Vec<f32>) -> (f64, usize) {
        let (mut hits, mut n) = (0usize, 0usize);
        for b in self.test_batches(parts) {
            if b.is_empty() {
                continue;
            }
            let labels = b.labels.clone();
            let scores = f(prepare(b, self.device));
            for (p, l) in fgia_core::metrics::argmax_rows(&scores, self.classes).iter().zip(&labels) {
                hits += usize::from(p == l);
            }
            n += labels.len();
        }
        (100.0 * hits as f64 / n.max(1) as f64, n)
    }
}

#[allow(clippy::too_many_arguments)]
fn crop_pass<B: Backend>(
    net: &Network<B>,
    records: &[Record],
    tf: &Transform,
    seed: u64,
    epoch: u64,
    skip_bad: bool,
    k: usize,
    size: usize,
    spatial: bool,
    samples: &(dyn Fn(usize, &ViewGeometry) -> Option<Vec<Sample>> + Sync),
    device: &B::Device,
    bar: &indicatif::ProgressBar,
    shape: &mut [usize; 3],
) -> Result<Vec<Option<Vec<f32>>>, TrainError> {
    let c = tf.crop as usize;
    let mut out = vec![None; records.len()];
    let idx: Vec<usize> = (0..records.len()).collect();
    for chunk in idx.chunks(16) {
        let batch = load_batch(records, chunk, tf, seed, epoch, skip_bad)?;
        let mut pixels = Vec::new();
        let mut grids = Vec::new();
        let mut owners = Vec::new();
        for (j, &i) in batch.indices.iter().enumerate() {
            let Some(s) = samples(i, &batch.geometry[j]).filter(|s| s.len() == k) else { continue };
            let view = &batch.pixels[j * 3 * c * c..(j + 1) * 3 * c * c];
            for smp in s {
                let mut px = view.to_vec();
                if let Some((g, map, threshold)) = &smp.erase {
                    for y in 0..c {
                        for x in 0..c {
                            if crate::geometry::map_at(map, *g, (x as f32 + 0.5) / c as f32, (y as f32 + 0.5) / c as f32) >= *threshold {
                                for ch in 0..3 {
                                    px[ch * c * c + y * c + x] = 0.0;
                                }
                            }
                        }
                    }
                }
                pixels.extend(px);
                grids.extend(smp.grid);
            }
            owners.push(i);
        }
        bar.inc(chunk.len() as u64);
        if owners.is_empty() {
            continue;
        }
        let n = owners.len() * k;
        let input = Tensor::<B, 4>::from_data(TensorData::new(pixels, [n, 3, c, c]), device);
        let grid = Tensor::<B, 4>::from_data(TensorData::new(grids, [n, size, size, 2]), device);
        let crops = crate::geometry::sample(input, grid);
        let mut h = crops;
        for s in 0..net.num_stages() {
            h = net.forward_stage(s, h);
        }
        let [_, ch, hh, ww] = h.dims();
        *shape = [ch, hh, ww];
        let feats = if spatial { h } else { h.mean_dim(3).mean_dim(2) };
        let flat: Vec<f32> =
            feats.into_data().convert::<f32>().to_vec().map_err(|e| TrainError::Checkpoint { path: "<crop features>".into(), message: format!("{e:?}") })?;
        let per = flat.len() / n;
        for (j, &i) in owners.iter().enumerate() {
            out[i] = Some(flat[j * k * per..(j + 1) * k * per].to_vec());
        }
    }
    Ok(out)
}

/// The frozen backbone, its maps and the shared training crops.
type SharedRefs<'a, B> = (&'a Network<B>, &'a FrozenCache, &'a std::cell::RefCell<BTreeMap<String, TrainCrops>>);

/// The frozen backbone and its maps for `r` (built once per process and key).
fn shared_maps<'a, B: Backend>(
    r: &LocalizationRecipe,
    ds: &Dataset,
    root: &Path,
    ctx: &RunContext,
    shared: &'a mut Shared<B>,
    device: &B::Device,
) -> Result<SharedRefs<'a, B>, TrainError> {
    let key = shared_key(r, root);
    if let Some(i) = shared.entries.iter().position(|(k, _, _)| *k == key) {
        let e = &shared.entries[i];
        return Ok((&e.1, &e.2, &shared.train_crops));
    }
    let kind = r.model.backbone;
    let net = load_network(NetworkConfig::new(kind).init::<B>(device), kind, ctx.pretrained_weights()?)?.0;
    let norm = kind.normalize();
    let maps = FrozenCache::build(
        &net,
        net.num_stages(),
        r.train.views,
        &ds.train,
        &r.data.train_transform(norm),
        &ds.test,
        &r.data.eval_transform(norm),
        false,
        r.train.seed,
        r.data.skip_bad,
        device,
        ctx.progress,
    )?;
    shared.entries.push((key, net, maps));
    let e = shared.entries.last().expect("pushed");
    Ok((&e.1, &e.2, &shared.train_crops))
}

/// Trains and evaluates one recipe; `None` when stopped early (`RunContext::stop_after_epochs`).
pub fn run_recipe<B: AutodiffBackend>(
    recipe: &LocalizationRecipe,
    ctx: &RunContext,
    shared: &mut Shared<B::InnerBackend>,
    device: &B::Device,
) -> Result<Option<ResultRecord>, TrainError> {
    let started = Instant::now();
    let run_dir = &ctx.run_dir;
    let opened = engine::open_run_dir(run_dir, ctx.resume, &recipe.to_toml())?;
    let r = &LocalizationRecipe::parse(&opened.recipe).map_err(|message| TrainError::Recipe { path: run_dir.join("recipe.toml"), message })?;
    let end_to_end = r.model.mode == "end-to-end";
    let method = r.method.name;
    let ds = r.data.read(ctx.data_root.as_deref())?;
    let root = r.data.root(ctx.data_root.as_deref())?;
    engine::check_run_data(run_dir, ctx.resume, &engine::RunData::new(&root, &ds.classes.names))?;
    method.check_data(&ds).map_err(|message| TrainError::Recipe { path: root.clone(), message })?;
    let norm = r.model.backbone.normalize();
    let (train_tf, eval_tf) = (r.data.train_transform(norm), r.data.eval_transform(norm));
    let out = if end_to_end {
        let kind = r.model.backbone;
        B::seed(device, r.train.seed);
        let net = load_network(NetworkConfig::new(kind).init::<B>(device), kind, ctx.pretrained_weights()?)?.0;
        let stage = crate::live::LiveStage::new(r, ctx, &ds, device, net, train_tf.clone(), eval_tf.clone());
        method.run_live(&stage)?
    } else {
        let (net, maps, train_crops) = shared_maps::<B::InnerBackend>(r, &ds, &root, ctx, shared, device)?;
        let stage = Stage::<B> {
            r,
            ctx,
            ds: &ds,
            root: root.clone(),
            net,
            maps,
            device,
            classes: ds.num_classes(),
            train_tf: train_tf.clone(),
            eval_tf: eval_tf.clone(),
            train_crops,
            maps_key: shared_key(r, &root),
        };
        method.run(&stage)?
    };
    let Some(out) = out else { return Ok(None) };
    let looks_written =
        crate::looks::write_looks(&run_dir.join("looks.svg"), &ds.test, &eval_tf, &out.looks).map_err(|e| TrainError::io(run_dir.join("looks.svg"), e))?;
    let mut metrics = out.metrics;
    metrics.insert("chance".into(), 100.0 / ds.num_classes() as f64);
    metrics.insert("looks_drawn".into(), looks_written as f64);
    // Test images without a score (undecodable with skip_bad, or no crops): counted, never silent.
    let scored = metrics.get("test_images").copied().unwrap_or(0.0);
    metrics.insert("test_images_skipped".into(), ds.test.len() as f64 - scored);
    let fixed = if end_to_end { method.live_deviations() } else { method.deviations() };
    let mut deviations: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
    deviations.extend(out.deviations);
    if !end_to_end {
        deviations.push(format!(
            "{} ImageNet backbone frozen: the localizer trains on its cached last map ({} views per training image), then the crops are resampled from those views' pixels and run through the frozen backbone once (cached rounds), instead of end-to-end training through the crops",
            r.model.backbone.display_name(),
            r.train.views
        ));
    }
    deviations.extend(r.report.deviations.iter().cloned());
    let (t, c) = (&r.train, r.data.crop);
    let classes = ds.num_classes();
    let data =
        r.data.description.clone().unwrap_or_else(|| format!("{} ({classes} classes, {} train / {} test images)", ds.name, ds.train.len(), ds.test.len()));
    let record = ResultRecord {
        table: r.report.table.clone(),
        method: r.report.method.clone(),
        dataset: r.report.dataset.clone(),
        data,
        backbone: r.model.backbone.name().into(),
        resolution: c,
        paper_resolution: r.report.paper_resolution,
        paper_backbone: r.report.paper_backbone.clone(),
        section: Some(method.section().into()),
        protocol: Protocol {
            split: "the official train / test split".into(),
            train_transform: if end_to_end {
                format!("decoded every epoch: resize {}, random {c}x{c} crop, random flip; crops resampled from the view inside the step", r.data.resize)
            } else {
                format!("{} cached views: resize {}, random {c}x{c} crop, random flip; crops resampled from each view", t.views, r.data.resize)
            },
            eval_transform: format!("resize {}, centre {c}x{c} crop; crops resampled from it", r.data.resize),
            tta: out.tta,
            checkpoint: if end_to_end { "last epoch" } else { "last epoch of every round" }.into(),
            seeds: vec![t.seed],
            epochs: t.epochs,
            batch_size: t.batch_size,
            optimizer: format!(
                "SGD momentum {} lr {} weight decay {}, {}{}",
                t.momentum,
                t.lr,
                t.weight_decay,
                t.lr_schedule.describe(),
                if end_to_end { format!("; backbone at {} times the rate", t.backbone_lr_mult) } else { " (each round)".into() }
            ),
            trained_layers: out.trained_layers,
            mode: if end_to_end { FeatureMode::EndToEnd } else { FeatureMode::Frozen },
            trained_from_stage: None,
            loss: Some(out.loss),
            data_parallel: ctx.data_parallel(),
        },
        seed: t.seed,
        metrics,
        deviations,
        ..ctx.record(started.elapsed().as_secs_f64())
    };
    Ok(Some(record))
}
