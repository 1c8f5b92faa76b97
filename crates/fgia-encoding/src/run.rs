//! One Table 2 run through the engine ([`fgia_train::engine`]): read the dataset; in frozen
//! mode cache the backbone's maps (shared between the recipes of one process), in end-to-end
//! mode decode and augment pixels every epoch and train the backbone live; build the method's
//! head from the registry, train, evaluate the last epoch on the test split, and write the
//! record with its mode and deviations.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fgia_core::datasets::Dataset;
use fgia_core::record::{EpochMetrics, FeatureMode, Protocol, ResultRecord, write_json_atomic};
use fgia_core::rng::SplitMix64;
use fgia_nn::weights::load_network;
use fgia_nn::{Network, NetworkConfig};
use fgia_train::engine::{self, BatchSource, EngineSpec, HostBatch, OptimizerSpec, ParamGroup, RunIo, Sampler, StepLoss, TrainMethod, open_run_dir};
use fgia_train::eval::{EvalOutput, tta_probabilities};
use fgia_train::frozen_cache::{CacheSpec, FrozenCache};
use fgia_train::parallel::{split_items, split_rows};
use fgia_train::recipe::describe_transform;
use fgia_train::sources::ImageSource;
use fgia_train::{RunContext, TrainError};

use crate::methods::dcl::{destruction_rng, region_permutation};
use crate::methods::pmg::{jigsaw, jigsaw_rng};
use crate::methods::{Head, HeadSpec, HeadVisitor, Inputs, build_head, permute_regions};
use crate::recipe::EncodingRecipe;
use crate::{Edit, Method};

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
        if r.model.mode == FeatureMode::EndToEnd {
            return Ok(());
        }
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
                let edit_fn = move |px: &mut [f32], s: usize, i: usize, view: u64| {
                    if let Some(e) = edit {
                        apply_edit(e, seed, px, s, i, view);
                    }
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

/// Channels and side of every stage's map, from a probe of the network at the recipe's size.
fn stage_shapes<B: Backend>(net: &Network<B>, crop: usize, device: &B::Device) -> Vec<(usize, usize)> {
    let mut x = Tensor::<B, 4>::zeros([1, 3, crop, crop], device);
    let mut out = Vec::new();
    for s in 0..net.num_stages() {
        x = net.forward_stage(s, x);
        out.push((x.dims()[1], x.dims()[2]));
    }
    out
}

/// Checks what only the network's map sizes tell: DCL pools the last map to `N x N` regions,
/// so the map must have at least `N` positions per side.
fn check_map_sizes(r: &EncodingRecipe, shapes: &[(usize, usize)], path: &Path) -> Result<(), TrainError> {
    let f = r.model.feature_stage;
    if r.method.name == Method::Dcl {
        let n = r.params().count("regions");
        let side = shapes[f].1;
        if side < n {
            return Err(TrainError::Recipe {
                path: path.to_path_buf(),
                message: format!(
                    "method.params.regions = {n} needs a feature map of at least {n}x{n} at stage {f}; data.crop {} gives {side}x{side} (raise data.crop or lower regions)",
                    r.data.crop
                ),
            });
        }
    }
    Ok(())
}

/// One training batch before it becomes tensors: cached maps (frozen mode) or pixels
/// (end-to-end mode), with what the methods need beyond labels.
pub struct EncodingBatch {
    /// Cached maps of the unedited view by stage, or `None` in end-to-end mode.
    taps: Option<BTreeMap<usize, Vec<f32>>>,
    /// Cached maps of each edited view by stage (frozen mode).
    edited_taps: Vec<BTreeMap<usize, Vec<f32>>>,
    /// Shapes `[C, h, w]` of the cached maps by stage.
    shapes: BTreeMap<usize, [usize; 3]>,
    /// Pixels `[n, 3, s, s]` of the unedited view (end-to-end mode).
    pixels: Vec<f32>,
    /// Pixels of each edited view (end-to-end mode).
    edited_pixels: Vec<Vec<f32>>,
    /// Crop side of the pixels.
    side: usize,
    labels: Vec<usize>,
    permutations: Vec<Vec<usize>>,
    seed: u64,
    skipped: usize,
}

impl HostBatch for EncodingBatch {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn skipped(&self) -> usize {
        self.skipped
    }
    /// Chunks of the items; each chunk draws its in-batch randomness from the batch seed and
    /// its index.
    fn split(self, sizes: &[usize]) -> Vec<Self> {
        let split_taps = |m: &BTreeMap<usize, Vec<f32>>| -> Vec<BTreeMap<usize, Vec<f32>>> {
            let mut out = vec![BTreeMap::new(); sizes.len()];
            for (s, v) in m {
                let [c, h, w] = self.shapes[s];
                for (o, part) in out.iter_mut().zip(split_rows(v, c * h * w, sizes)) {
                    o.insert(*s, part);
                }
            }
            out
        };
        let per_px = 3 * self.side * self.side;
        let mut taps: Vec<Option<BTreeMap<usize, Vec<f32>>>> = match &self.taps {
            Some(t) => split_taps(t).into_iter().map(Some).collect(),
            None => vec![None; sizes.len()],
        };
        let edited_taps: Vec<Vec<BTreeMap<usize, Vec<f32>>>> = self.edited_taps.iter().map(|m| split_taps(m)).collect();
        let pixels = if self.pixels.is_empty() { vec![Vec::new(); sizes.len()] } else { split_rows(&self.pixels, per_px, sizes) };
        let edited_pixels: Vec<Vec<Vec<f32>>> = self.edited_pixels.iter().map(|v| split_rows(v, per_px, sizes)).collect();
        let labels = split_items(&self.labels, sizes);
        let permutations = split_items(&self.permutations, sizes);
        (0..sizes.len())
            .map(|i| EncodingBatch {
                taps: taps[i].take(),
                edited_taps: edited_taps.iter().map(|e| e[i].clone()).collect(),
                shapes: self.shapes.clone(),
                pixels: pixels[i].clone(),
                edited_pixels: edited_pixels.iter().map(|e| e[i].clone()).collect(),
                side: self.side,
                labels: labels[i].clone(),
                permutations: permutations[i].clone(),
                seed: self.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                skipped: if i == 0 { self.skipped } else { 0 },
            })
            .collect()
    }
}

/// The batch as tensors: cached maps, or pixels the live backbone runs on at every step.
pub enum EncodingInput<B: Backend> {
    /// Frozen mode: the method's inputs as cached.
    Cached(Inputs<B>),
    /// End-to-end mode: pixels of the unedited and edited views.
    Live {
        /// `[B, 3, s, s]`.
        pixels: Tensor<B, 4>,
        /// Edited views, each `[B, 3, s, s]`.
        edited: Vec<Tensor<B, 4>>,
        /// Labels.
        labels: Vec<usize>,
        /// DCL's permutations.
        permutations: Vec<Vec<usize>>,
        /// Seed of the batch's draws.
        seed: u64,
    },
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

fn cached_inputs<B: Backend>(
    taps: BTreeMap<usize, Vec<f32>>,
    edited: Vec<BTreeMap<usize, Vec<f32>>>,
    shapes: &BTreeMap<usize, [usize; 3]>,
    labels: Vec<usize>,
    permutations: Vec<Vec<usize>>,
    seed: u64,
    device: &B::Device,
) -> Inputs<B> {
    let n = labels.len();
    let tensor = |s: &usize, v: Vec<f32>| {
        let [c, h, w] = shapes[s];
        Tensor::<B, 4>::from_data(TensorData::new(v, [n, c, h, w]), device) // [B, C, h, w]
    };
    Inputs {
        labels,
        taps: taps.into_iter().map(|(s, v)| (s, tensor(&s, v))).collect(),
        edited: edited.into_iter().map(|m| m.into_iter().map(|(s, v)| (s, tensor(&s, v))).collect()).collect(),
        permutations,
        seed,
    }
}

/// The stages of `net` in `taps`, run from pixels (up to the largest).
fn live_taps<B: Backend>(net: &Network<B>, pixels: Tensor<B, 4>, taps: &[usize]) -> BTreeMap<usize, Tensor<B, 4>> {
    let last = taps.iter().copied().max().unwrap_or(0);
    let mut out = BTreeMap::new();
    let mut h = pixels;
    for s in 0..=last {
        h = net.forward_stage(s, h);
        if taps.contains(&s) {
            out.insert(s, h.clone());
        }
    }
    out
}

/// Which stages a method reads, of the unedited view and of each edited view.
#[derive(Debug, Clone, Default)]
pub struct TapPlan {
    /// Stages of the unedited view.
    pub taps: Vec<usize>,
    /// Stages of each edited view, in the order of [`crate::Method::edits`].
    pub edited: Vec<Vec<usize>>,
}

/// A §5.2 method as the engine trains it: the method's head, and in end-to-end mode the
/// backbone it reads, trained live from pixels. Parameter groups: the head's own layers at the
/// base learning rate; the backbone (live, or the last stage a head fine-tunes) at
/// `backbone_lr_mult` times it.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend, H> {
    /// The live backbone (end-to-end mode); `None` when the maps come from the cache.
    pub live: Option<Network<B>>,
    /// The method's head.
    pub head: H,
    /// The stages the head reads.
    #[module(skip)]
    pub plan: TapPlan,
    /// Learning rate of backbone layers relative to the head's.
    pub backbone_lr_mult: f64,
}

impl<B: Backend, H: Head<B>> Encoder<B, H> {
    /// The head's inputs for a batch (running the live backbone in end-to-end mode).
    fn inputs(&self, input: &EncodingInput<B>) -> Inputs<B> {
        match input {
            EncodingInput::Cached(x) => x.clone(),
            EncodingInput::Live { pixels, edited, labels, permutations, seed } => {
                let net = self.live.as_ref().expect("end-to-end mode has a live backbone");
                Inputs {
                    labels: labels.clone(),
                    taps: live_taps(net, pixels.clone(), &self.plan.taps),
                    edited: edited.iter().zip(&self.plan.edited).map(|(px, taps)| live_taps(net, px.clone(), taps)).collect(),
                    permutations: permutations.clone(),
                    seed: *seed,
                }
            }
        }
    }
}

impl<B: Backend, H: Head<B>> fgia_nn::Classifier<B> for Encoder<B, H> {
    fn logits(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let n = images.dims()[0];
        let net = self.live.as_ref().expect("images need the live backbone");
        let x = Inputs { labels: vec![0; n], taps: live_taps(net, images, &self.plan.taps), edited: Vec::new(), permutations: Vec::new(), seed: 0 };
        self.head.logits(&x)
    }
}

impl<B, H> TrainMethod<B> for Encoder<B, H>
where
    B: AutodiffBackend,
    H: Head<B> + AutodiffModule<B>,
    H::InnerModule: Head<B::InnerBackend>,
{
    type Batch = EncodingBatch;
    type Input = EncodingInput<B>;

    fn prepare(&self, b: EncodingBatch, device: &B::Device) -> EncodingInput<B> {
        match b.taps {
            Some(taps) => EncodingInput::Cached(cached_inputs(taps, b.edited_taps, &b.shapes, b.labels, b.permutations, b.seed, device)),
            None => {
                let n = b.labels.len();
                let px = |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, [n, 3, b.side, b.side]), device); // [B, 3, s, s]
                EncodingInput::Live {
                    pixels: px(b.pixels),
                    edited: b.edited_pixels.into_iter().map(px).collect(),
                    labels: b.labels,
                    permutations: b.permutations,
                    seed: b.seed,
                }
            }
        }
    }

    fn steps(&self) -> usize {
        self.head.steps()
    }

    fn loss(&self, input: &EncodingInput<B>, step: usize) -> StepLoss<B> {
        let x = self.inputs(input);
        let out = self.head.loss(&x, step);
        let hits = (step + 1 == self.head.steps()).then(|| {
            let classes = out.logits.dims()[1];
            let logits: Vec<f32> = out.logits.into_data().convert::<f32>().to_vec().unwrap_or_default();
            fgia_core::metrics::argmax_rows(&logits, classes).iter().zip(&x.labels).filter(|(p, l)| p == l).count()
        });
        StepLoss { loss: out.loss, hits }
    }

    fn param_groups(&self, mut grads: B::Gradients) -> Vec<ParamGroup> {
        let mut backbone = GradientsParams::new();
        if let Some(net) = &self.live {
            backbone = GradientsParams::from_module(&mut grads, net);
        }
        if let Some(bb) = self.head.backbone() {
            let last = GradientsParams::from_module(&mut grads, bb);
            backbone = merge(backbone, last, bb);
        }
        let head = GradientsParams::from_grads(grads, self);
        vec![ParamGroup { name: "method", lr_mult: 1.0, grads: head }, ParamGroup { name: "backbone", lr_mult: self.backbone_lr_mult, grads: backbone }]
    }
}

/// Moves the gradients of `module`'s parameters from `from` into `into`.
fn merge<B: AutodiffBackend, M: AutodiffModule<B>>(mut into: GradientsParams, mut from: GradientsParams, module: &M) -> GradientsParams {
    struct Move<'a, B: AutodiffBackend> {
        from: &'a mut GradientsParams,
        into: &'a mut GradientsParams,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for Move<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            if let Some(g) = self.from.remove::<B::InnerBackend, D>(param.id) {
                self.into.register::<B::InnerBackend, D>(param.id, g);
            }
        }
    }
    module.visit(&mut Move::<B> { from: &mut from, into: &mut into, _b: std::marker::PhantomData });
    into
}

/// Batches of cached maps: one view per image and epoch, of the unedited and the edited caches.
struct CachedBatches<'a> {
    base: &'a FrozenCache,
    edited: &'a [(Edit, &'a FrozenCache)],
    labels: Vec<usize>,
    seed: u64,
}

/// Batches of pixels, decoded and augmented afresh every epoch; the edited views (DCL's
/// destruction, PMG's jigsaws) drawn from `(seed, epoch, index)`.
struct LiveBatches<'a> {
    images: ImageSource<'a>,
    edits: Vec<Edit>,
    seed: u64,
}

fn batch_seed(seed: u64, epoch: usize, step: usize) -> u64 {
    SplitMix64::for_item(seed ^ 0xba7c, epoch as u64, step as u64).next_u64()
}

fn apply_edit(edit: Edit, seed: u64, px: &mut [f32], s: usize, i: usize, view: u64) {
    match edit {
        Edit::Destruct { regions, k } => permute_regions(px, s, regions, &region_permutation(regions, k, &mut destruction_rng(seed, i, view))),
        Edit::Jigsaw(n) => jigsaw(px, s, n, &mut jigsaw_rng(seed, n, i, view)),
    }
}

fn permutations_of(edits: &[Edit], seed: u64, items: &[usize], view_of: impl Fn(usize) -> u64) -> Vec<Vec<usize>> {
    match edits.first() {
        Some(Edit::Destruct { regions, k }) => items.iter().map(|&i| region_permutation(*regions, *k, &mut destruction_rng(seed, i, view_of(i)))).collect(),
        _ => Vec::new(),
    }
}

impl BatchSource for CachedBatches<'_> {
    type Batch = EncodingBatch;

    fn labels(&self) -> &[usize] {
        &self.labels
    }

    fn load(&self, epoch: usize, step: usize, batch: &[usize]) -> Result<EncodingBatch, TrainError> {
        let (data, kept) = self.base.train_batch(batch, self.seed, epoch);
        let items: Vec<usize> = kept.iter().map(|&p| batch[p]).collect();
        let (taps, mut shapes) = tap_map(self.base, &data, items.len());
        let mut edited_taps = Vec::new();
        for (_, cache) in self.edited {
            let (d, kept_e) = cache.train_batch(&items, self.seed, epoch);
            if kept_e.len() != items.len() {
                return Err(TrainError::Recipe { path: "<edited cache>".into(), message: "an edited view is missing for a decodable image".into() });
            }
            let (m, s) = tap_map(cache, &d, items.len());
            shapes.extend(s);
            edited_taps.push(m);
        }
        let edits: Vec<Edit> = self.edited.iter().map(|(e, _)| *e).collect();
        let permutations = match self.edited.first() {
            Some((_, views)) => permutations_of(&edits, self.seed, &items, |i| views.view_of(i, self.seed, epoch) as u64),
            None => Vec::new(),
        };
        Ok(EncodingBatch {
            taps: Some(taps),
            edited_taps,
            shapes,
            pixels: Vec::new(),
            edited_pixels: Vec::new(),
            side: 0,
            labels: items.iter().map(|&i| self.labels[i]).collect(),
            permutations,
            seed: batch_seed(self.seed, epoch, step),
            skipped: batch.len() - items.len(),
        })
    }
}

impl BatchSource for LiveBatches<'_> {
    type Batch = EncodingBatch;

    fn labels(&self) -> &[usize] {
        &self.images.labels
    }

    fn load(&self, epoch: usize, step: usize, batch: &[usize]) -> Result<EncodingBatch, TrainError> {
        let b = self.images.load_edited(epoch, batch, None)?;
        let side = b.shape[2];
        let per = 3 * side * side;
        let edited_pixels = self
            .edits
            .iter()
            .map(|&edit| {
                let mut px = b.data.clone();
                for (k, &i) in b.items.iter().enumerate() {
                    apply_edit(edit, self.seed, &mut px[k * per..(k + 1) * per], side, i, epoch as u64);
                }
                px
            })
            .collect();
        Ok(EncodingBatch {
            taps: None,
            edited_taps: Vec::new(),
            shapes: BTreeMap::new(),
            permutations: permutations_of(&self.edits, self.seed, &b.items, |_| epoch as u64),
            pixels: b.data,
            edited_pixels,
            side,
            labels: b.labels,
            seed: batch_seed(self.seed, epoch, step),
            skipped: b.skipped,
        })
    }
}

/// The engine settings of an encoding recipe: SGD with momentum, the recipe's per-iteration
/// schedule, one global-norm clipping, shuffled or class-balanced batches.
pub fn engine_spec(r: &EncodingRecipe) -> EngineSpec {
    let t = &r.train;
    EngineSpec {
        epochs: t.epochs,
        lr: t.lr,
        optimizer: OptimizerSpec::Sgd { momentum: t.momentum, nesterov: t.nesterov, weight_decay: t.weight_decay },
        schedule: t.lr_schedule.clone(),
        clip_grad_norm: t.clip_grad_norm,
        seed: t.seed,
        sampler: if r.method.name.class_balanced_batches() {
            Sampler::ClassBalanced { p: t.classes_per_batch, k: t.images_per_class }
        } else {
            Sampler::Shuffled { batch_size: t.batch_size }
        },
    }
}

struct Trained {
    eval: EvalOutput,
    epochs: Vec<EpochMetrics>,
}

/// Where a head's batches come from.
enum Feed<'a> {
    /// Cached maps (frozen mode).
    Cached { base: &'a FrozenCache, edited: &'a [(Edit, &'a FrozenCache)] },
    /// Pixels through a live backbone (end-to-end mode), which the closure builds.
    Live(&'a Dataset),
}

/// Trains whatever head the registry builds, through the engine.
struct HeadTrainer<'a, B: AutodiffBackend, L: FnOnce() -> Network<B>> {
    r: &'a EncodingRecipe,
    feed: Feed<'a>,
    live: Option<L>,
    ds: &'a Dataset,
    io: RunIo,
    device: &'a B::Device,
}

impl<B: AutodiffBackend, L: FnOnce() -> Network<B>> HeadVisitor<B> for HeadTrainer<'_, B, L> {
    type Output = Result<Option<Trained>, TrainError>;

    fn visit<M>(self, head: M) -> Self::Output
    where
        M: Head<B> + AutodiffModule<B>,
        M::InnerModule: Head<B::InnerBackend>,
    {
        let r = self.r;
        let method = r.method.name;
        let f = r.model.feature_stage;
        let plan = TapPlan { taps: r.taps(), edited: method.edits(f, &r.params()).into_iter().map(|(_, t)| t).collect() };
        let model = Encoder { live: self.live.map(|build| build()), head, plan, backbone_lr_mult: r.train.backbone_lr_mult };
        let spec = engine_spec(r);
        let labels: Vec<usize> = self.ds.train.iter().map(|x| x.label).collect();
        let trained = match self.feed {
            Feed::Cached { base, edited } => {
                let source = CachedBatches { base, edited, labels, seed: r.train.seed };
                engine::train(&spec, &self.io, model, &source, None, self.device)?
            }
            Feed::Live(ds) => {
                let images = ImageSource::new(&ds.train, r.train_transform(), r.train.seed, r.data.skip_bad);
                let edits = method.edits(f, &r.params()).into_iter().map(|(e, _)| e).collect();
                let source = LiveBatches { images, edits, seed: r.train.seed };
                engine::train(&spec, &self.io, model, &source, None, self.device)?
            }
        };
        let (model, epochs) = match trained {
            engine::Trained::Finished { method, epochs, .. } => (method, epochs),
            engine::Trained::Stopped { .. } => return Ok(None),
        };
        let inner = model.valid();
        let classes = self.ds.num_classes();
        let eval = match self.feed {
            Feed::Cached { base, .. } => evaluate_cached(&inner.head, base, &self.ds.test, r.eval.flip, classes, self.device),
            Feed::Live(ds) => {
                fgia_train::eval::evaluate(&inner, &ds.test, &r.eval_transform(), 32, r.eval.flip, classes, r.data.skip_bad, self.device, self.io.progress)?
            }
        };
        Ok(Some(Trained { eval, epochs }))
    }
}

/// Test-split scores of a head on cached maps; with `flip`, the mean of the probabilities of
/// the centre crop and its mirror (as [`fgia_train::eval::evaluate`] does on images).
fn evaluate_cached<B: Backend, H: Head<B>>(
    head: &H,
    base: &FrozenCache,
    test: &[fgia_core::datasets::Record],
    flip: bool,
    classes: usize,
    device: &B::Device,
) -> EvalOutput {
    let mut probs = Vec::new();
    let mut labels = Vec::new();
    let idx: Vec<usize> = (0..test.len()).collect();
    for chunk in idx.chunks(32) {
        let (data, kept) = base.test_batch(chunk, false);
        if kept.is_empty() {
            continue;
        }
        let nk = kept.len();
        let scores = |data: &[f32]| -> Tensor<B, 2> {
            let (taps, shapes) = tap_map(base, data, nk);
            head.logits(&cached_inputs::<B>(taps, Vec::new(), &shapes, vec![0; nk], Vec::new(), 0, device)) // [B, K]
        };
        let p = tta_probabilities(|mirror| if mirror { scores(&base.test_batch(chunk, true).0) } else { scores(&data) }, flip && base.has_flipped_test());
        probs.extend(p.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default());
        labels.extend(kept.iter().map(|&k| test[chunk[k]].label));
    }
    let skipped = test.len() - labels.len();
    EvalOutput::from_probabilities(probs, labels, classes, skipped)
}

/// Initial RBF scale of kernel pooling: `1 / mean ‖x‖²` over the feature maps (stage `stage`)
/// of up to 64 training images (centre crops; never test images).
fn rbf_gamma<B: Backend>(net: &Network<B>, r: &EncodingRecipe, train: &[fgia_core::datasets::Record], device: &B::Device) -> Result<f64, TrainError> {
    let idx: Vec<usize> = (0..train.len().min(64)).collect();
    let batch = fgia_core::imaging::load_batch(train, &idx, &r.eval_transform(), 0, 0, true)?;
    let n = batch.labels.len();
    if n == 0 {
        return Ok(1.0);
    }
    let s = r.data.crop as usize;
    let x = Tensor::<B, 4>::from_data(TensorData::new(batch.pixels, [n, 3, s, s]), device);
    let map = live_taps(net, x, &[r.model.feature_stage]).remove(&r.model.feature_stage).expect("tapped"); // [B, C, h, w]
    let mean_sq: f64 = map.powi_scalar(2).sum_dim(1).mean().into_scalar().elem::<f64>(); // mean over images and locations
    Ok(if mean_sq > 0.0 { 1.0 / mean_sq } else { 1.0 })
}

/// Runs a recipe (after [`Caches::plan`] of every recipe of the process). Returns `None`
/// when the run stopped early ([`RunContext::stop_after_epochs`]).
pub fn run_recipe<B: AutodiffBackend>(
    r: &EncodingRecipe,
    ctx: &RunContext,
    caches: &mut Caches,
    device: &B::Device,
) -> Result<Option<ResultRecord>, TrainError> {
    let started = Instant::now();
    let run_dir = &ctx.run_dir;
    // On resume the run folder's own recipe rules.
    let opened = open_run_dir(run_dir, ctx.resume, &r.to_toml())?;
    let r = &EncodingRecipe::parse(&opened.recipe).map_err(|message| TrainError::Recipe { path: run_dir.join("recipe.toml"), message })?;
    let ds = dataset(r, ctx.data_root.as_deref())?;
    let root = r.data.root(ctx.data_root.as_deref())?;
    engine::check_run_data(run_dir, ctx.resume, &engine::RunData::new(&root, &ds.classes.names))?;
    let classes = ds.num_classes();
    B::seed(device, r.train.seed);
    let net_inner: Network<B::InnerBackend> = {
        let net = NetworkConfig::new(r.model.backbone).init::<B::InnerBackend>(device);
        load_network(net, r.model.backbone, ctx.pretrained_weights()?)?.0
    };
    let method = r.method.name;
    let f = r.model.feature_stage;
    let params = r.params();
    let shapes = stage_shapes(&net_inner, r.data.crop as usize, device);
    check_map_sizes(r, &shapes, &run_dir.join("recipe.toml"))?;
    let channels: Vec<usize> = shapes.iter().map(|s| s.0).collect();
    let edits = method.edits(f, &params);
    let end_to_end = r.model.mode == FeatureMode::EndToEnd;
    let mut edited: Vec<(Edit, &FrozenCache)> = Vec::new();
    let base = if end_to_end {
        None
    } else {
        caches.get(base_key(r, &root), &r.taps(), None, r, &ds, &net_inner, device, ctx.progress)?;
        for (edit, need) in &edits {
            caches.get(edit_key(r, &root, *edit), need, Some(*edit), r, &ds, &net_inner, device, ctx.progress)?;
        }
        let find = |key: &str| caches.built.iter().find(|(k, _)| k == key).map(|(_, c)| c).expect("built above");
        edited = edits.iter().map(|(e, _)| (*e, find(&edit_key(r, &root, *e)))).collect();
        Some(find(&base_key(r, &root)))
    };
    let gamma = if method == Method::KernelPooling { rbf_gamma(&net_inner, r, &ds.train, device)? } else { 1.0 };
    let hbp_stages = r.hbp_stages();
    let spec = HeadSpec { feature_stage: f, channels: &channels, classes, params: &params, hbp_stages: &hbp_stages, seed: r.train.seed, rbf_gamma: gamma };
    let weights = ctx.pretrained_weights()?;
    let pretrained = || -> Network<B> {
        let net = NetworkConfig::new(r.model.backbone).init::<B>(device);
        load_network(net, r.model.backbone, weights).expect("loaded once above").0
    };
    let io = ctx.io(method.name());
    let feed = match base {
        Some(base) => Feed::Cached { base, edited: &edited },
        None => Feed::Live(&ds),
    };
    let trainer = HeadTrainer { r, feed, live: end_to_end.then_some(pretrained), ds: &ds, io, device };
    let Some(trained) = build_head(method, &spec, pretrained, device, trainer)? else {
        return Ok(None);
    };
    let t = &r.train;
    let mut deviations = r.report.deviations.clone();
    deviations.extend(method.deviations().iter().map(|d| d.to_string()));
    if end_to_end {
        if f + 1 < r.model.backbone.num_stages() {
            deviations.push(format!("the backbone's stages after stage {f} are not used: the method reads the map of stage {f}"));
        }
    } else {
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
        paper_backbone: Some(r.report.paper_backbone.clone().unwrap_or_else(|| r.model.backbone.name().to_string())),
        section: Some(method.family().section().to_string()),
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
                "{}; backbone layers at {}x lr; method parameters: {}",
                engine_spec(r).describe(),
                t.backbone_lr_mult,
                if params.describe().is_empty() { "none".into() } else { params.describe() }
            ),
            trained_layers: match (end_to_end, method.fine_tunes_last_stage()) {
                (true, _) => format!("every layer: backbone stages 0..={f} and the method's layers"),
                (false, true) => format!("method layers + backbone stage {f}"),
                (false, false) => "method layers only (backbone frozen)".into(),
            },
            mode: if end_to_end {
                FeatureMode::EndToEnd
            } else if method.fine_tunes_last_stage() {
                FeatureMode::Partial
            } else {
                FeatureMode::Frozen
            },
            trained_from_stage: (!end_to_end && method.fine_tunes_last_stage()).then_some(f),
            loss: None,
            data_parallel: ctx.data_parallel(),
        },
        seed: t.seed,
        metrics,
        deviations,
        ..ctx.record(started.elapsed().as_secs_f64())
    };
    write_json_atomic(&run_dir.join("result.json"), &record)?;
    Ok(Some(record))
}
