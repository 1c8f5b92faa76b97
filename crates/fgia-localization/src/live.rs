//! The end-to-end path (`model.mode = "end-to-end"`, the `--full` profile): pixels through a
//! live backbone inside every step, with the crops resampled from the batch's pixels and run
//! through the same backbone in the same step, so the losses reach the backbone through the
//! global map and through every crop, and a localizer whose crop is differentiable in its box
//! (RA-CNN's APNs, STN's transformers) learns through the crop and the backbone.
//!
//! - [`LiveStage`] holds the ImageNet-initialised backbone, trains a method on decoded and
//!   augmented training images ([`fgia_train::sources::ImageSource`], a fresh view every epoch)
//!   in `<run>/end-to-end`, and evaluates the last epoch on the test images;
//! - [`Live`] trains a method that reads only the last map (DFL-CNN, OSME + MAMC) on the live
//!   backbone: the same method module as the cached round, behind the [`Trunk`] trait that
//!   both stages implement;
//! - a method whose crops are its own (RA-CNN, STN) builds its own module with a `net` field and
//!   uses [`trunk`] and [`box_crops`].
//!
//! Parameter groups: the method's layers at the recipe's rate, the backbone at
//! `train.backbone_lr_mult` times it. Checkpoint: the last epoch.

use std::cell::RefCell;

use burn::module::{AutodiffModule, ModuleDisplay};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fgia_core::datasets::{Dataset, Record};
use fgia_core::imaging::{Transform, ViewGeometry, load_batch};
use fgia_nn::Network;
use fgia_train::engine::{self, ParamGroup, RunIo, StepLoss, TrainMethod, Trained};
use fgia_train::sources::{ImageSource, MapBatch};
use fgia_train::{RunContext, TrainError};

use crate::geometry::box_zoom;
use crate::nn::gap;
use crate::recipe::LocalizationRecipe;
use crate::run::{LocBatch, LocInput, Sample, Stage, engine_spec};

/// A batch of pixels as tensors.
pub struct LiveInput<B: Backend> {
    /// `[n, 3, s, s]` normalised pixels.
    pub pixels: Tensor<B, 4>,
    /// Labels `[n]`.
    pub labels: Tensor<B, 1, Int>,
    /// Labels on the host.
    pub label_vec: Vec<usize>,
    /// Indices of the images (into the split's records).
    pub items: Vec<usize>,
    /// Where each view lies in its image.
    pub geometry: Vec<ViewGeometry>,
}

/// The tensors of a pixel batch.
pub fn prepare_live<B: Backend>(b: MapBatch, device: &B::Device) -> LiveInput<B> {
    let n = b.labels.len();
    let labels = Tensor::from_data(TensorData::new(b.labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [n]), device);
    LiveInput { pixels: Tensor::from_data(TensorData::new(b.data, b.shape), device), labels, label_vec: b.labels, items: b.items, geometry: b.geometry }
}

/// The backbone's last map of pixels: `[n, 3, s, s]` to `[n, C, h, w]`.
pub fn trunk<B: Backend>(net: &Network<B>, pixels: Tensor<B, 4>) -> Tensor<B, 4> {
    net.features(pixels)
}

/// The `k` crops of each item's pixels `[n, 3, s, s]` at the boxes `(x0, y0, x1, y1)` (unit
/// square of the view, `[n k]` each, item-major), RoI-aligned to `size x size` by separable
/// bilinear weights ([`box_zoom`]: `grid_sample`'s values, differentiable in the boxes), run
/// through `net` and pooled: `[n, k, C]`.
pub fn box_crops<B: Backend>(net: &Network<B>, pixels: Tensor<B, 4>, boxes: [Tensor<B, 1>; 4], k: usize, size: usize) -> Tensor<B, 3> {
    let [n, ch, s, _] = pixels.dims();
    let rep = pixels.reshape([n, 1, ch, s, s]).repeat_dim(1, k).reshape([n * k, ch, s, s]);
    let [x0, y0, x1, y1] = boxes;
    let crops = box_zoom(rep, x0, y0, x1, y1, size, size);
    let f = gap(trunk(net, crops));
    let [_, c] = f.dims();
    f.reshape([n, k, c])
}

/// The cached-round input of a live map: what a method that reads only the last map trains on.
pub fn as_loc<B: Backend>(x: &LiveInput<B>, map: Tensor<B, 4>) -> LocInput<B> {
    LocInput { global: map, parts: None, labels: x.labels.clone(), label_vec: x.label_vec.clone(), views: x.items.iter().map(|&i| (i, 0)).collect() }
}

/// The gradients of `net`'s parameters as the `backbone` group (at `mult` times the rate), the
/// rest of `whole`'s as the `method` group.
pub fn backbone_groups<B: AutodiffBackend, M: AutodiffModule<B>>(net: &Network<B>, whole: &M, mut grads: B::Gradients, mult: f64) -> Vec<ParamGroup> {
    let backbone = GradientsParams::from_module(&mut grads, net);
    let method = GradientsParams::from_grads(grads, whole);
    vec![ParamGroup { name: "method", lr_mult: 1.0, grads: method }, ParamGroup { name: "backbone", lr_mult: mult, grads: backbone }]
}

/// A method that reads only the last map, on the live backbone.
#[derive(Module, Debug)]
pub struct Live<B: Backend, M> {
    /// The backbone, trained with the method.
    pub net: Network<B>,
    /// The method's module (the same as its cached round's).
    pub m: M,
    /// Learning rate of the backbone relative to the method's.
    pub backbone_lr_mult: f64,
}

impl<B, M> TrainMethod<B> for Live<B, M>
where
    B: AutodiffBackend,
    M: TrainMethod<B, Batch = LocBatch, Input = LocInput<B>> + ModuleDisplay,
    M::InnerModule: ModuleDisplay,
{
    type Batch = MapBatch;
    type Input = LiveInput<B>;

    fn prepare(&self, b: MapBatch, device: &B::Device) -> LiveInput<B> {
        prepare_live(b, device)
    }

    fn steps(&self) -> usize {
        self.m.steps()
    }

    fn loss(&self, x: &LiveInput<B>, step: usize) -> StepLoss<B> {
        self.m.loss(&as_loc(x, trunk(&self.net, x.pixels.clone())), step)
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        backbone_groups(&self.net, self, grads, self.backbone_lr_mult)
    }
}

/// Everything an end-to-end run needs.
pub struct LiveStage<'a, B: AutodiffBackend> {
    /// The recipe.
    pub r: &'a LocalizationRecipe,
    /// The run.
    pub ctx: &'a RunContext,
    /// The dataset.
    pub ds: &'a Dataset,
    /// The device.
    pub device: &'a B::Device,
    /// Classes.
    pub classes: usize,
    /// Training transform (decoded and augmented every epoch).
    pub train_tf: Transform,
    /// Test transform.
    pub eval_tf: Transform,
    /// The ImageNet-initialised backbone.
    pub net: Network<B>,
    /// `[C, h, w]` of its last map at the recipe's crop.
    pub shape: [usize; 3],
    /// The backbone [`Trunk::train_round`] trained, for [`Trunk::evaluate_maps`].
    trained: RefCell<Option<Network<B::InnerBackend>>>,
}

impl<'a, B: AutodiffBackend> LiveStage<'a, B> {
    /// A stage over `net` (ImageNet-initialised).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        r: &'a LocalizationRecipe,
        ctx: &'a RunContext,
        ds: &'a Dataset,
        device: &'a B::Device,
        net: Network<B>,
        train_tf: Transform,
        eval_tf: Transform,
    ) -> Self {
        let crop = eval_tf.crop as usize;
        let probe = trunk(&net.valid(), Tensor::zeros([1, 3, crop, crop], device));
        let [_, c, h, w] = probe.dims();
        LiveStage { r, ctx, ds, device, classes: ds.num_classes(), train_tf, eval_tf, net, shape: [c, h, w], trained: RefCell::new(None) }
    }

    /// Trains `method` on the training images in `<run>/end-to-end`; `None` when the run stopped
    /// early.
    pub fn train<M>(&self, method: M, balanced: bool) -> Result<Option<M>, TrainError>
    where
        M: TrainMethod<B, Batch = MapBatch>,
    {
        let dir = self.ctx.run_dir.join("end-to-end");
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        let io = RunIo { run_dir: dir, ..self.ctx.io(&format!("{} (end-to-end)", self.r.report.method)) };
        let source = ImageSource::new(&self.ds.train, self.train_tf.clone(), self.r.train.seed, self.r.data.skip_bad);
        match engine::train(&engine_spec(self.r, balanced), &io, method, &source, None, self.device)? {
            Trained::Finished { method, .. } => Ok(Some(method)),
            Trained::Stopped { .. } => Ok(None),
        }
    }

    /// Runs `f` on every batch of (up to 16) test images and returns the top-1 accuracy of the
    /// scores it returns (`[n, classes]` row-major), with the images it scored.
    pub fn evaluate(&self, mut f: impl FnMut(LiveInput<B::InnerBackend>) -> Vec<f32>) -> Result<(f64, usize), TrainError> {
        let (mut hits, mut n) = (0usize, 0usize);
        let idx: Vec<usize> = (0..self.ds.test.len()).collect();
        let bar = engine::progress_bar(self.ctx.progress, idx.len() as u64, &format!("{}: test images", self.r.report.method));
        for chunk in idx.chunks(16) {
            let b = load_batch(&self.ds.test, chunk, &self.eval_tf, 0, 0, self.r.data.skip_bad)?;
            bar.inc(chunk.len() as u64);
            if b.labels.is_empty() {
                continue;
            }
            let len = b.labels.len();
            let c = self.eval_tf.crop as usize;
            let batch = MapBatch { data: b.pixels, shape: [len, 3, c, c], labels: b.labels, items: b.indices, skipped: b.skipped.len(), geometry: b.geometry };
            let labels = batch.labels.clone();
            let scores = f(prepare_live(batch, self.device));
            for (p, l) in fgia_core::metrics::argmax_rows(&scores, self.classes).iter().zip(&labels) {
                hits += usize::from(p == l);
            }
            n += len;
        }
        bar.finish_and_clear();
        Ok((100.0 * hits as f64 / n.max(1) as f64, n))
    }
}

/// What a method that reads only the last map needs from its trunk: the cached maps of the
/// frozen backbone ([`Stage`]) or the live backbone trained with it ([`LiveStage`]).
pub trait Trunk<B: AutodiffBackend> {
    /// The recipe.
    fn recipe(&self) -> &LocalizationRecipe;
    /// The run.
    fn context(&self) -> &RunContext;
    /// The dataset.
    fn dataset(&self) -> &Dataset;
    /// The device.
    fn dev(&self) -> &B::Device;
    /// `[C, h, w]` of the last map.
    fn map_shape(&self) -> [usize; 3];
    /// Calls `f(image, map)` with the last map of a view of every training image (before
    /// training; DFL-CNN's initialisation).
    fn each_train_map(&self, f: &mut dyn FnMut(usize, &[f32])) -> Result<(), TrainError>;
    /// Trains `m` on the last map (cached round, or end to end with the backbone).
    fn train_round<M>(&self, round: &str, m: M, balanced: bool) -> Result<Option<M>, TrainError>
    where
        M: TrainMethod<B, Batch = LocBatch, Input = LocInput<B>> + ModuleDisplay,
        M::InnerModule: ModuleDisplay;
    /// Top-1 and images scored of `f`'s scores on the test images' last maps (of the backbone
    /// [`Trunk::train_round`] trained, in end-to-end mode).
    fn evaluate_maps(&self, f: &mut dyn FnMut(LocInput<B::InnerBackend>) -> Vec<f32>) -> Result<(f64, usize), TrainError>;
    /// What trained besides the method's layers, in words.
    fn trunk_words(&self) -> &'static str;
}

impl<B: AutodiffBackend> Trunk<B> for Stage<'_, B> {
    fn recipe(&self) -> &LocalizationRecipe {
        self.r
    }
    fn context(&self) -> &RunContext {
        self.ctx
    }
    fn dataset(&self) -> &Dataset {
        self.ds
    }
    fn dev(&self) -> &B::Device {
        self.device
    }
    fn map_shape(&self) -> [usize; 3] {
        self.maps.shape
    }
    fn each_train_map(&self, f: &mut dyn FnMut(usize, &[f32])) -> Result<(), TrainError> {
        for i in 0..self.ds.train.len() {
            if let Some(m) = self.maps.train_view(i, 0) {
                f(i, m);
            }
        }
        Ok(())
    }
    fn train_round<M>(&self, round: &str, m: M, balanced: bool) -> Result<Option<M>, TrainError>
    where
        M: TrainMethod<B, Batch = LocBatch, Input = LocInput<B>> + ModuleDisplay,
        M::InnerModule: ModuleDisplay,
    {
        self.round(round, m, None, balanced)
    }
    fn evaluate_maps(&self, f: &mut dyn FnMut(LocInput<B::InnerBackend>) -> Vec<f32>) -> Result<(f64, usize), TrainError> {
        Ok(self.evaluate(None, f))
    }
    fn trunk_words(&self) -> &'static str {
        "backbone frozen"
    }
}

impl<B: AutodiffBackend> Trunk<B> for LiveStage<'_, B> {
    fn recipe(&self) -> &LocalizationRecipe {
        self.r
    }
    fn context(&self) -> &RunContext {
        self.ctx
    }
    fn dataset(&self) -> &Dataset {
        self.ds
    }
    fn dev(&self) -> &B::Device {
        self.device
    }
    fn map_shape(&self) -> [usize; 3] {
        self.shape
    }
    fn each_train_map(&self, f: &mut dyn FnMut(usize, &[f32])) -> Result<(), TrainError> {
        let net = self.net.valid();
        let idx: Vec<usize> = (0..self.ds.train.len()).collect();
        let per: usize = self.shape.iter().product();
        for chunk in idx.chunks(16) {
            let b = load_batch(&self.ds.train, chunk, &self.train_tf, self.r.train.seed, 0, self.r.data.skip_bad)?;
            if b.labels.is_empty() {
                continue;
            }
            let c = self.train_tf.crop as usize;
            let px = Tensor::<B::InnerBackend, 4>::from_data(TensorData::new(b.pixels, [b.labels.len(), 3, c, c]), self.device);
            let maps = crate::nn::host(trunk(&net, px));
            for (j, &i) in b.indices.iter().enumerate() {
                f(i, &maps[j * per..(j + 1) * per]);
            }
        }
        Ok(())
    }
    fn train_round<M>(&self, _round: &str, m: M, balanced: bool) -> Result<Option<M>, TrainError>
    where
        M: TrainMethod<B, Batch = LocBatch, Input = LocInput<B>> + ModuleDisplay,
        M::InnerModule: ModuleDisplay,
    {
        let live = Live { net: self.net.clone(), m, backbone_lr_mult: self.r.train.backbone_lr_mult };
        let Some(live) = self.train(live, balanced)? else { return Ok(None) };
        *self.trained.borrow_mut() = Some(live.net.valid());
        Ok(Some(live.m))
    }
    fn evaluate_maps(&self, f: &mut dyn FnMut(LocInput<B::InnerBackend>) -> Vec<f32>) -> Result<(f64, usize), TrainError> {
        let net = self.trained.borrow().clone().unwrap_or_else(|| self.net.valid());
        self.evaluate(|x| {
            let map = trunk(&net, x.pixels.clone());
            f(as_loc(&x, map))
        })
    }
    fn trunk_words(&self) -> &'static str {
        "backbone trained end to end"
    }
}

/// A method whose crops are drawn on the host from its current map: the step draws them from
/// the live (detached) last map, resamples them from the pixels and runs them through the live
/// backbone ([`LiveCrops`]). The same module type serves its cached round.
pub trait HostCrops<B: Backend> {
    /// Crops per item (training or test), their side, and whether the method reads the crops'
    /// whole last map (else pooled).
    fn crop_spec(&self, train: bool) -> (usize, usize, bool);
    /// The crops of every item of a batch: `map` is the batch's last map (detached), `records`
    /// the split's records (the items index them), `geometry` where each view lies in its image,
    /// `draw` the batch's random stream. Each item gets exactly [`HostCrops::crop_spec`]'s count.
    fn samples(&self, map: Tensor<B, 4>, records: &[Record], items: &[usize], geometry: &[ViewGeometry], train: bool, draw: u64) -> Vec<Vec<Sample>>;
}

/// `[n, k, per]` features of `k` crops per item sampled from `pixels` `[n, 3, s, s]` (erasing
/// first where a sample says so), through `net`: pooled (`per = C`) or whole maps
/// (`per = C h w`).
pub fn sampled_crops<B: Backend>(net: &Network<B>, pixels: Tensor<B, 4>, samples: &[Vec<Sample>], k: usize, size: usize, spatial: bool) -> Tensor<B, 3> {
    let [n, ch, s, _] = pixels.dims();
    let device = pixels.device();
    let rep = pixels.reshape([n, 1, ch, s, s]).repeat_dim(1, k).reshape([n * k, ch, s, s]);
    let mut keep = Vec::with_capacity(n * k * s * s);
    let mut grid = Vec::with_capacity(n * k * size * size * 2);
    let mut erases = false;
    for smp in samples.iter().flatten() {
        match &smp.erase {
            Some((g, map, t)) => {
                erases = true;
                for y in 0..s {
                    for x in 0..s {
                        let v = crate::geometry::map_at(map, *g, (x as f32 + 0.5) / s as f32, (y as f32 + 0.5) / s as f32);
                        keep.push(if v >= *t { 0.0f32 } else { 1.0 });
                    }
                }
            }
            None => keep.extend(std::iter::repeat_n(1.0f32, s * s)),
        }
        grid.extend_from_slice(&smp.grid);
    }
    let rep = if erases { rep * Tensor::<B, 4>::from_data(TensorData::new(keep, [n * k, 1, s, s]), &device).repeat_dim(1, ch) } else { rep };
    let grid = Tensor::<B, 4>::from_data(TensorData::new(grid, [n * k, size, size, 2]), &device);
    let maps = trunk(net, crate::geometry::sample(rep, grid));
    let [_, c, h, w] = maps.dims();
    if spatial { maps.reshape([n, k, c * h * w]) } else { gap(maps).reshape([n, k, c]) }
}

/// A method with host-drawn crops ([`HostCrops`]) on the live backbone: the step draws the crops
/// from the live map, resamples them from the pixels, runs them through the backbone, and gives
/// the method the map and the crops' features as its cached round would.
#[derive(Module, Debug)]
pub struct LiveCrops<B: Backend, M> {
    /// The backbone, trained with the method.
    pub net: Network<B>,
    /// The method's module.
    pub m: M,
    /// Learning rate of the backbone relative to the method's.
    pub backbone_lr_mult: f64,
    /// The training records (the crops of some methods come from their annotations).
    #[module(skip)]
    pub records: std::sync::Arc<Vec<Record>>,
    /// Seed of the crops' random draws.
    #[module(skip)]
    pub seed: u64,
    /// Steps taken (the random stream of each step's draws; process state).
    #[module(skip)]
    pub steps: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<B: Backend, M: HostCrops<B>> LiveCrops<B, M> {
    /// The live map and the cached-round input (map and crops) of a batch.
    pub fn input(&self, x: &LiveInput<B>, records: &[Record], train: bool, draw: u64) -> (LocInput<B>, Vec<Vec<Sample>>) {
        let map = trunk(&self.net, x.pixels.clone());
        let samples = self.m.samples(map.clone().detach(), records, &x.items, &x.geometry, train, draw);
        let (k, size, spatial) = self.m.crop_spec(train);
        let parts = sampled_crops(&self.net, x.pixels.clone(), &samples, k, size, spatial);
        (LocInput { parts: Some(parts), ..as_loc(x, map) }, samples)
    }
}

impl<B, M> TrainMethod<B> for LiveCrops<B, M>
where
    B: AutodiffBackend,
    M: TrainMethod<B, Batch = LocBatch, Input = LocInput<B>> + HostCrops<B> + ModuleDisplay,
    M::InnerModule: ModuleDisplay,
{
    type Batch = MapBatch;
    type Input = LiveInput<B>;

    fn prepare(&self, b: MapBatch, device: &B::Device) -> LiveInput<B> {
        prepare_live(b, device)
    }

    fn steps(&self) -> usize {
        self.m.steps()
    }

    fn loss(&self, x: &LiveInput<B>, step: usize) -> StepLoss<B> {
        let draw = self.seed ^ self.steps.fetch_add(1, std::sync::atomic::Ordering::Relaxed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let (input, _) = self.input(x, &self.records, true, draw);
        self.m.loss(&input, step)
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        backbone_groups(&self.net, self, grads, self.backbone_lr_mult)
    }
}

impl<B: AutodiffBackend> LiveStage<'_, B> {
    /// Trains `m` with host-drawn crops on the live backbone; `None` when the run stopped early.
    pub fn train_crops<M>(&self, m: M, balanced: bool) -> Result<Option<LiveCrops<B, M>>, TrainError>
    where
        M: TrainMethod<B, Batch = LocBatch, Input = LocInput<B>> + HostCrops<B> + ModuleDisplay,
        M::InnerModule: ModuleDisplay,
    {
        let live = LiveCrops {
            net: self.net.clone(),
            m,
            backbone_lr_mult: self.r.train.backbone_lr_mult,
            records: std::sync::Arc::new(self.ds.train.clone()),
            seed: self.r.train.seed,
            steps: Default::default(),
        };
        self.train(live, balanced)
    }

    /// [`LiveStage::evaluate`] of a trained [`LiveCrops`]: `f` gets each test batch as the
    /// method's cached round would (map and crops), with its crops' samples.
    pub fn evaluate_crops<M>(
        &self,
        live: &LiveCrops<B::InnerBackend, M>,
        mut f: impl FnMut(LocInput<B::InnerBackend>, &[Vec<Sample>]) -> Vec<f32>,
    ) -> Result<(f64, usize), TrainError>
    where
        M: HostCrops<B::InnerBackend>,
    {
        self.evaluate(|x| {
            let (input, samples) = live.input(&x, &self.ds.test, false, 0);
            f(input, &samples)
        })
    }
}
