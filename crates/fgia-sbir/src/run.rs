//! One sketch-based retrieval run: the views through the frozen trunk (shared by the recipes of
//! one process), triplet training of the method's layers on the one engine, the ten-view
//! evaluation, and the result record.
//!
//! Protocol (Yu et al. 2016, §5.1): at test, the ten views of every sketch and photo are
//! embedded, the sketch × photo energies of matching views (squared Euclidean, or HOLEF's
//! `D_W`) are summed over the views, and acc@K is the share of sketches whose own photo ranks in
//! the top K (`fgia_core::metrics::acc_at_k`, ties to the lower index), recorded for K = 1..20.
//! The centre view alone is recorded beside it (`*_1view`), so the report can show what the
//! ten views add. `triplets_correct` is the CVPR paper's %corr: the share of the test split's
//! human triplets `(s, a, b)` ("a is more like s than b") that the summed energies order the
//! same way, `D(s, a) < D(s, b)` (a tie counts as wrong).

use std::path::PathBuf;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use fgia_core::datasets::{TripletSampler, read_qmul};
use fgia_core::imaging::ten_view_offsets;
use fgia_core::metrics::acc_at_k;
use fgia_core::record::{FeatureMode, Protocol, ResultRecord};
use fgia_core::rng::SplitMix64;
use fgia_nn::NetworkConfig;
use fgia_nn::weights::load_network;
use fgia_train::engine::{self, Decay, EngineSpec, HostBatch, LrSchedule, OptimizerSpec, ParamGroup, Sampler, StepLoss, TrainMethod, Trained};
use fgia_train::parallel::split_rows;
use fgia_train::{RunContext, TrainError};

use crate::dssa::{DssaHead, DssaHeadConfig, Holef};
use crate::loss::{all_energies, energy_triplet_loss};
use crate::recipe::SbirRecipe;
use crate::triplet_sketch_a_net::{TripletHead, TripletHeadConfig};
use crate::views::{SharedViews, ViewFeatures, Views, compute, conv5_stage, train_view};
use crate::{Loss, Method};

/// acc@K is recorded for K = 1..=`MAX_K` (the report draws the curve).
pub const MAX_K: usize = 20;
/// The centre view, unmirrored, among the ten.
const CENTRE: usize = 4;

/// A batch of triplets: anchor sketch, positive and negative photo, each `[n, dim]` cached
/// features, or with `crop` pixels `[n, 3, crop, crop]` (end to end).
#[derive(Debug)]
pub struct TripletBatch {
    anchors: Vec<f32>,
    pos: Vec<f32>,
    neg: Vec<f32>,
    n: usize,
    dim: usize,
    crop: Option<usize>,
}

impl HostBatch for TripletBatch {
    fn len(&self) -> usize {
        self.n
    }
    fn skipped(&self) -> usize {
        0
    }
    fn split(self, sizes: &[usize]) -> Vec<Self> {
        let per = self.crop.map_or(self.dim, |c| 3 * c * c);
        let (a, p, n) = (split_rows(&self.anchors, per, sizes), split_rows(&self.pos, per, sizes), split_rows(&self.neg, per, sizes));
        a.into_iter()
            .zip(p)
            .zip(n)
            .zip(sizes)
            .map(|(((anchors, pos), neg), &n)| TripletBatch { anchors, pos, neg, n, dim: self.dim, crop: self.crop })
            .collect()
    }
}

/// Triplets of cached training features: each item is an anchor sketch, its positive and
/// negative drawn by the authors' sampler, each at a random one of its cached views, all from
/// `(seed, epoch, anchor)`.
struct TripletSource<'a> {
    sampler: TripletSampler,
    sketches: &'a ViewFeatures,
    photos: &'a ViewFeatures,
    anchors: Vec<usize>,
    seed: u64,
}

impl engine::BatchSource for TripletSource<'_> {
    type Batch = TripletBatch;

    fn labels(&self) -> &[usize] {
        &self.anchors
    }

    fn load(&self, epoch: usize, _step: usize, items: &[usize]) -> Result<TripletBatch, TrainError> {
        let dim = self.sketches.dim;
        let (mut anchors, mut pos, mut neg) = (Vec::with_capacity(items.len() * dim), Vec::new(), Vec::new());
        let views = self.sketches.views as u64;
        for &i in items {
            let mut rng = SplitMix64::for_item(self.seed ^ 0x7219_0b3d, epoch as u64, i as u64);
            let (p, n, _) = self.sampler.sample(i, &mut rng);
            anchors.extend_from_slice(self.sketches.get(i, rng.below(views) as usize));
            pos.extend_from_slice(self.photos.get(p, rng.below(views) as usize));
            neg.extend_from_slice(self.photos.get(n, rng.below(views) as usize));
        }
        Ok(TripletBatch { anchors, pos, neg, n: items.len(), dim, crop: None })
    }
}

/// Triplets of pixels, for end-to-end training: the same sampler, and a fresh random window and
/// flip of each image every epoch, all from `(seed, epoch, anchor)`.
struct TripletPixelSource<'a> {
    sampler: TripletSampler,
    sketches: &'a [PathBuf],
    photos: &'a [PathBuf],
    anchors: Vec<usize>,
    side: u32,
    crop: u32,
    normalize: fgia_core::imaging::Normalize,
    seed: u64,
}

impl engine::BatchSource for TripletPixelSource<'_> {
    type Batch = TripletBatch;

    fn labels(&self) -> &[usize] {
        &self.anchors
    }

    fn load(&self, epoch: usize, _step: usize, items: &[usize]) -> Result<TripletBatch, TrainError> {
        use rayon::prelude::*;
        let m = self.side.saturating_sub(self.crop) as u64 + 1;
        let triplets: Vec<[Vec<f32>; 3]> = items
            .par_iter()
            .map(|&i| {
                let mut rng = SplitMix64::for_item(self.seed ^ 0x7219_0b3d, epoch as u64, i as u64);
                let (p, n, _) = self.sampler.sample(i, &mut rng);
                let mut view = |path: &PathBuf| -> Result<Vec<f32>, TrainError> {
                    let img = fgia_core::imaging::load_rgb(path)?;
                    let v = (rng.below(m) as u32, rng.below(m) as u32, rng.coin());
                    Ok(crate::views::view_pixels(&img, self.side, self.crop, v, self.normalize))
                };
                Ok([view(&self.sketches[i])?, view(&self.photos[p])?, view(&self.photos[n])?])
            })
            .collect::<Result<_, TrainError>>()?;
        let c = self.crop as usize;
        let (mut anchors, mut pos, mut neg) = (Vec::new(), Vec::new(), Vec::new());
        for [a, p, n] in triplets {
            anchors.extend(a);
            pos.extend(p);
            neg.extend(n);
        }
        Ok(TripletBatch { anchors, pos, neg, n: items.len(), dim: 3 * c * c, crop: Some(c) })
    }
}

/// The trained layers of one method, and HOLEF's `W` when the loss uses it.
#[derive(Module, Debug)]
pub struct SbirModel<B: Backend> {
    /// Triplet Sketch-a-Net's `fc6`, `fc7`.
    pub triplet: Option<TripletHead<B>>,
    /// DSSA's attention, `fc6`, `fc7`.
    pub dssa: Option<DssaHead<B>>,
    /// HOLEF's `W`.
    pub holef: Option<Holef<B>>,
}

impl<B: Backend> SbirModel<B> {
    /// A fresh model of `method` over features of `dim` (pooled) or maps of `map` shape.
    pub fn new(method: Method, loss: Loss, dim: usize, map: [usize; 3], device: &B::Device) -> Self {
        let (triplet, dssa, embedding) = match method {
            Method::TripletSketchANet => {
                let c = TripletHeadConfig::new(dim);
                let e = c.fc7;
                (Some(c.init(device)), None, e)
            }
            Method::Dssa => {
                let c = DssaHeadConfig::new(map);
                (None, Some(c.init(device)), c.embedding())
            }
        };
        let holef = match loss {
            Loss::Triplet => None,
            Loss::Holef => Some(Holef::new(embedding, device)),
        };
        SbirModel { triplet, dssa, holef }
    }

    /// Embeddings of flattened inputs: `[n, dim]` to `[n, e]`.
    pub fn embed(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match (&self.triplet, &self.dssa) {
            (Some(h), _) => h.forward(x),
            (None, Some(h)) => h.forward(x),
            (None, None) => unreachable!("SbirModel::new sets one head"),
        }
    }

    /// HOLEF's `W`; `None` for the squared Euclidean distance.
    pub fn energy(&self) -> Option<Tensor<B, 2>> {
        self.holef.as_ref().map(Holef::w)
    }
}

/// The trained layers and the margin, as the engine's method; end to end, the trunk too.
#[derive(Module, Debug)]
pub struct TripletMethod<B: Backend> {
    /// What trains over the trunk.
    pub model: SbirModel<B>,
    /// The trunk, when it trains (end to end).
    pub trunk: Option<fgia_nn::Network<B>>,
    /// The trunk stage the method reads ([`conv5_stage`]).
    pub conv5: usize,
    /// Whether the method reads the conv5 map (else the pooled last map).
    pub reads_maps: bool,
    /// The trunk's learning-rate multiplier.
    pub backbone_lr_mult: f64,
    /// Triplet margin.
    pub margin: f64,
}

/// A prepared batch: cached features `[n, dim]`, or pixels `[n, 3, c, c]`, for anchors,
/// positives and negatives.
#[derive(Debug, Clone)]
pub enum TripletInput<B: Backend> {
    /// Cached trunk features.
    Features([Tensor<B, 2>; 3]),
    /// Pixels for the live trunk.
    Pixels([Tensor<B, 4>; 3]),
}

/// What the method reads from the trunk for pixels `[n, 3, c, c]`: the flattened conv5 map, or
/// the pooled last map.
fn trunk_features<B: Backend>(net: &fgia_nn::Network<B>, conv5: usize, reads_maps: bool, x: Tensor<B, 4>) -> Tensor<B, 2> {
    let map = (0..=conv5).fold(x, |x, i| net.forward_stage(i, x));
    if reads_maps {
        let [n, c, h, w] = map.dims();
        map.reshape([n, c * h * w])
    } else {
        fgia_nn::ops::global_avg_pool(net.forward_stages_from(conv5 + 1, map))
    }
}

impl<B: AutodiffBackend> TrainMethod<B> for TripletMethod<B> {
    type Batch = TripletBatch;
    type Input = TripletInput<B>;

    fn prepare(&self, b: TripletBatch, device: &B::Device) -> Self::Input {
        match b.crop {
            None => {
                let t = |v: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v, [b.n, b.dim]), device);
                TripletInput::Features([t(b.anchors), t(b.pos), t(b.neg)])
            }
            Some(c) => {
                let t = |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, [b.n, 3, c, c]), device);
                TripletInput::Pixels([t(b.anchors), t(b.pos), t(b.neg)])
            }
        }
    }

    fn loss(&self, input: &Self::Input, _step: usize) -> StepLoss<B> {
        let features = match input.clone() {
            TripletInput::Features(x) => x,
            TripletInput::Pixels(x) => {
                let net = self.trunk.as_ref().expect("pixel batches come with a live trunk");
                x.map(|x| trunk_features(net, self.conv5, self.reads_maps, x))
            }
        };
        let [a, p, n] = features.map(|x| self.model.embed(x));
        let (loss, diff) = energy_triplet_loss(a, p, n, self.model.energy(), self.margin);
        // A triplet is right when its positive is the closer photo.
        let hits = diff.lower_elem(0.0).int().sum().into_scalar().elem::<i64>() as usize;
        StepLoss { loss, hits: Some(hits) }
    }

    fn param_groups(&self, mut grads: B::Gradients) -> Vec<ParamGroup> {
        let Some(net) = &self.trunk else { return engine::single_group(self, grads) };
        let trunk = burn::optim::GradientsParams::from_module(&mut grads, net);
        let head = burn::optim::GradientsParams::from_grads(grads, self);
        vec![ParamGroup { name: "head", lr_mult: 1.0, grads: head }, ParamGroup { name: "trunk", lr_mult: self.backbone_lr_mult, grads: trunk }]
    }
}

/// Embeds every view of `f` with `model`, 256 rows at a time: `[images * views, e]`.
fn embed_all<B: Backend>(model: &SbirModel<B>, f: &ViewFeatures, device: &B::Device) -> Tensor<B, 2> {
    let rows = f.len() * f.views;
    let parts: Vec<Tensor<B, 2>> = (0..rows)
        .step_by(256)
        .map(|at| {
            let end = (at + 256).min(rows);
            let x = Tensor::<B, 2>::from_data(TensorData::new(f.data[at * f.dim..end * f.dim].to_vec(), [end - at, f.dim]), device);
            model.embed(x)
        })
        .collect();
    Tensor::cat(parts, 0)
}

/// Summed energies between the matching `views` of sketches and photos, whose embeddings are
/// `[n * views_of, e]` rows (image-major): `[n sketches, n photos]`, row-major.
fn view_energies<B: Backend>(sk: &Tensor<B, 2>, ph: &Tensor<B, 2>, n: usize, views_of: usize, views: &[usize], w: Option<&Tensor<B, 2>>) -> Vec<f32> {
    let device = sk.device();
    let mut sum = Tensor::<B, 2>::zeros([n, n], &device);
    for &v in views {
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new((0..n).map(|i| (i * views_of + v) as i64).collect::<Vec<_>>(), [n]), &device);
        sum = sum + all_energies(sk.clone().select(0, rows.clone()), ph.clone().select(0, rows), w.cloned());
    }
    sum.into_data().to_vec::<f32>().expect("f32 energies")
}

/// The CVPR paper's %corr: the share of human triplets `[a, b]` of each sketch `k` with
/// `dist[k][a] < dist[k][b]`, percent.
pub fn triplets_correct(dist: &[f32], gallery: usize, triplets: &[Vec<[usize; 2]>]) -> f64 {
    let (mut right, mut all) = (0usize, 0usize);
    for (k, list) in triplets.iter().enumerate() {
        for &[a, b] in list {
            all += 1;
            right += usize::from(dist[k * gallery + a] < dist[k * gallery + b]);
        }
    }
    100.0 * right as f64 / all.max(1) as f64
}

/// The four view sets of recipe `r` on `ds` (training sketches, training photos, test sketches,
/// test photos), from `shared` when an earlier recipe of this process computed them, else
/// through the trunk (then kept in `shared`).
fn views_of<'a, B: Backend>(
    r: &SbirRecipe,
    ds: &fgia_core::datasets::SketchDataset,
    root: &std::path::Path,
    ctx: &RunContext,
    shared: &'a mut Vec<SharedViews>,
    device: &B::Device,
) -> Result<&'a [Views; 4], TrainError> {
    let (d, t, kind) = (&r.data, &r.train, r.model.backbone);
    let key = format!("{}|{}|{}|{}|{}|{}", kind.name(), root.display(), d.side, d.crop, d.train_views, t.seed);
    if let Some(i) = shared.iter().position(|v| v.key == key) {
        return Ok(&shared[i].sets);
    }
    let net = load_network(NetworkConfig::new(kind).init::<B>(device), kind, ctx.pretrained_weights()?)?.0;
    let normalize = kind.normalize();
    let bar = engine::progress_bar(ctx.progress, 2 * (ds.train.len() + ds.test.len()) as u64, &format!("{} views", ds.name));
    let train_views = |i: usize| (0..d.train_views).map(|v| train_view(t.seed, i, v, d.side, d.crop)).collect::<Vec<_>>();
    // Photos draw other windows than their sketches.
    let photo_views = |i: usize| (0..d.train_views).map(|v| train_view(t.seed.wrapping_add(1), i, v, d.side, d.crop)).collect::<Vec<_>>();
    let test_views = |_: usize| ten_view_offsets(d.side, d.crop).to_vec();
    let stage = Some(conv5_stage(kind));
    let one = |paths: &[PathBuf], views: &(dyn Fn(usize) -> Vec<crate::views::View> + Sync)| {
        compute(&net, stage, paths, views, d.side, d.crop, normalize, device, &bar)
    };
    let sets = [
        one(&ds.train.sketches, &train_views)?,
        one(&ds.train.photos, &photo_views)?,
        one(&ds.test.sketches, &test_views)?,
        one(&ds.test.photos, &test_views)?,
    ];
    bar.finish_and_clear();
    shared.push(SharedViews { key, sets });
    Ok(&shared.last().expect("just pushed").sets)
}

/// The features a method reads: the pooled trunk features or the conv5 maps.
fn features(v: &Views, method: Method) -> &ViewFeatures {
    match (method.reads_maps(), &v.maps) {
        (true, Some((m, _))) => m,
        _ => &v.pooled,
    }
}

/// Trains and evaluates one recipe; `None` when stopped early (`RunContext::stop_after_epochs`).
/// `shared` keeps the views of each set for the next recipes of the process.
pub fn run_recipe<B: AutodiffBackend>(
    recipe: &SbirRecipe,
    ctx: &RunContext,
    shared: &mut Vec<SharedViews>,
    device: &B::Device,
) -> Result<Option<ResultRecord>, TrainError> {
    let started = Instant::now();
    let run_dir = &ctx.run_dir;
    let opened = engine::open_run_dir(run_dir, ctx.resume, &recipe.to_toml())?;
    let r = &SbirRecipe::parse(&opened.recipe).map_err(|message| TrainError::Recipe { path: run_dir.join("recipe.toml"), message })?;
    let root = r.root(ctx.data_root.as_deref())?;
    let ds = read_qmul(&root)?;
    engine::check_run_data(run_dir, ctx.resume, &engine::RunData::new(&root, &ds.train.stems))?;
    let (kind, method_kind) = (r.model.backbone, r.method.name);
    let (d, t) = (&r.data, &r.train);
    let end_to_end = r.model.mode == FeatureMode::EndToEnd;
    let sampler = TripletSampler::new(&ds.train.triplets, t.hard_ratio).map_err(|message| TrainError::Recipe { path: root.clone(), message })?;
    let spec = EngineSpec {
        epochs: t.epochs,
        lr: t.lr,
        optimizer: OptimizerSpec::Sgd { momentum: t.momentum, nesterov: false, weight_decay: t.weight_decay },
        schedule: LrSchedule { decay: Decay::Constant, ..LrSchedule::cosine() },
        clip_grad_norm: 0.0,
        seed: t.seed,
        sampler: Sampler::Shuffled { batch_size: t.batch_size },
    };
    let label = format!("{} {}", r.report.method, ds.name);
    let conv5 = conv5_stage(kind);
    let anchors: Vec<usize> = (0..ds.train.len()).collect();
    let (trained, epochs, test_views) = if end_to_end {
        // Pixels through the live trunk; the test views go through the trained trunk after.
        let net = load_network(NetworkConfig::new(kind).init::<B>(device), kind, ctx.pretrained_weights()?)?.0;
        let c = d.crop as usize;
        let map = (0..=conv5).fold(Tensor::<B::InnerBackend, 4>::zeros([1, 3, c, c], device), |x, i| net.valid().forward_stage(i, x));
        let [_, mc, mh, mw] = map.dims();
        let pooled = net.feature_dim();
        B::seed(device, t.seed);
        let method = TripletMethod {
            model: SbirModel::<B>::new(method_kind, t.loss, pooled, [mc, mh, mw], device),
            trunk: Some(net),
            conv5,
            reads_maps: method_kind.reads_maps(),
            backbone_lr_mult: r.model.backbone_lr_mult,
            margin: t.margin,
        };
        let source = TripletPixelSource {
            sampler,
            sketches: &ds.train.sketches,
            photos: &ds.train.photos,
            anchors,
            side: d.side,
            crop: d.crop,
            normalize: kind.normalize(),
            seed: t.seed,
        };
        let (method, epochs) = match engine::train(&spec, &ctx.io(&label), method, &source, None, device)? {
            Trained::Finished { method, epochs, .. } => (method, epochs),
            Trained::Stopped { .. } => return Ok(None),
        };
        let valid = method.valid();
        let trunk = valid.trunk.as_ref().expect("an end-to-end method keeps its trunk");
        let bar = engine::progress_bar(ctx.progress, 2 * ds.test.len() as u64, &format!("{} test views", ds.name));
        let ten = |_: usize| ten_view_offsets(d.side, d.crop).to_vec();
        let sk = compute(trunk, Some(conv5), &ds.test.sketches, &ten, d.side, d.crop, kind.normalize(), device, &bar)?;
        let ph = compute(trunk, Some(conv5), &ds.test.photos, &ten, d.side, d.crop, kind.normalize(), device, &bar)?;
        bar.finish_and_clear();
        (valid.model, epochs, [sk, ph])
    } else {
        let [train_sk, train_ph, test_sk, test_ph] = views_of::<B::InnerBackend>(r, &ds, &root, ctx, shared, device)?;
        let map_shape = train_sk.maps.as_ref().map(|m| m.1).unwrap_or([0; 3]);
        B::seed(device, t.seed);
        let method = TripletMethod {
            model: SbirModel::<B>::new(method_kind, t.loss, train_sk.pooled.dim, map_shape, device),
            trunk: None,
            conv5,
            reads_maps: method_kind.reads_maps(),
            backbone_lr_mult: r.model.backbone_lr_mult,
            margin: t.margin,
        };
        let source = TripletSource { sampler, sketches: features(train_sk, method_kind), photos: features(train_ph, method_kind), anchors, seed: t.seed };
        let (method, epochs) = match engine::train(&spec, &ctx.io(&label), method, &source, None, device)? {
            Trained::Finished { method, epochs, .. } => (method, epochs),
            Trained::Stopped { .. } => return Ok(None),
        };
        (method.valid().model, epochs, [test_sk.clone(), test_ph.clone()])
    };
    let model = trained;
    let n = ds.test.len();
    let sk = embed_all(&model, features(&test_views[0], method_kind), device);
    let ph = embed_all(&model, features(&test_views[1], method_kind), device);
    let w = model.energy();
    let ten_views = view_energies(&sk, &ph, n, 10, &(0..10).collect::<Vec<_>>(), w.as_ref());
    let one_view = view_energies(&sk, &ph, n, 10, &[CENTRE], w.as_ref());
    let truth: Vec<usize> = (0..n).collect();
    let ks: Vec<usize> = (1..=MAX_K).collect();
    let ten = acc_at_k(&ten_views, n, &truth, &ks);
    let one = acc_at_k(&one_view, n, &truth, &ks);
    let mut metrics = std::collections::BTreeMap::new();
    for (k, (a10, a1)) in ks.iter().zip(ten.iter().zip(&one)) {
        metrics.insert(format!("acc@{k}"), *a10);
        metrics.insert(format!("acc@{k}_1view"), *a1);
        metrics.insert(format!("chance@{k}"), 100.0 * (*k).min(n) as f64 / n.max(1) as f64);
    }
    metrics.insert("triplets_correct".into(), triplets_correct(&ten_views, n, &ds.test.triplets));
    metrics.insert("triplets_correct_1view".into(), triplets_correct(&one_view, n, &ds.test.triplets));
    metrics.insert("test_triplets".into(), ds.test.triplets.iter().map(Vec::len).sum::<usize>() as f64);
    metrics.insert("test_sketches".into(), n as f64);
    if let Some(last) = epochs.last() {
        metrics.insert("train_triplets_right".into(), last.train_top1);
    }
    let mut deviations = method_kind.deviations();
    if !end_to_end {
        deviations.push(format!("{} cached random views per training image instead of fresh augmentation every epoch", d.train_views));
    }
    if end_to_end {
        deviations.retain(|d| !d.starts_with("with the trunk frozen"));
        deviations.push(format!(
            "the whole trunk fine-tunes from its ImageNet weights at {} x the learning rate, with fresh random windows every epoch (the release trains only the layers above a pretrained Sketch-a-Net trunk)",
            r.model.backbone_lr_mult
        ));
    }
    deviations.extend(r.report.deviations.iter().cloned());
    deviations.push(format!("{} normalisation of the trunk instead of the authors' mean subtraction (250.42)", kind.display_name()));
    let holef = if t.loss == Loss::Holef { ", HOLEF W" } else { "" };
    let trained_layers = if end_to_end {
        format!("{}{holef}, and the whole trunk from its ImageNet weights (lr x {})", method_kind.trained_layers(), r.model.backbone_lr_mult)
    } else {
        format!("{}{holef} (trunk frozen)", method_kind.trained_layers())
    };
    let record = ResultRecord {
        table: r.report.table.clone(),
        method: r.report.method.clone(),
        dataset: r.report.dataset.clone(),
        data: format!("{} ({} train / {} test pairs)", root.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(), ds.train.len(), n),
        backbone: kind.name().into(),
        resolution: d.crop,
        paper_resolution: r.report.paper_resolution,
        paper_backbone: r.report.paper_backbone.clone(),
        section: Some("6.2".into()),
        protocol: Protocol {
            split: "the set's train / test pairs (QMUL V1 release)".into(),
            train_transform: if end_to_end {
                format!("a random {c}x{c} window of the {s}x{s} image and a random flip, fresh every epoch", c = d.crop, s = d.side)
            } else {
                format!("{} random {c}x{c} windows of the {s}x{s} image, random flip, cached", d.train_views, c = d.crop, s = d.side)
            },
            eval_transform: format!("ten {c}x{c} views (4 corners and centre, each mirrored), energies summed", c = d.crop),
            tta: "ten views".into(),
            checkpoint: "last epoch".into(),
            seeds: vec![t.seed],
            epochs: t.epochs,
            batch_size: t.batch_size,
            optimizer: format!("SGD lr {} momentum {} weight decay {}, constant", t.lr, t.momentum, t.weight_decay),
            trained_layers,
            mode: r.model.mode,
            trained_from_stage: None,
            loss: Some(format!("{}, margin {}", t.loss.describe(), t.margin)),
            data_parallel: ctx.data_parallel(),
        },
        seed: t.seed,
        metrics,
        deviations,
        ..ctx.record(started.elapsed().as_secs_f64())
    };
    Ok(Some(record))
}

/// A finished run's trunk and trained layers, for embedding new sketches and photos: the
/// run's `recipe.toml` and newest checkpoint, and the trunk's ImageNet `weights`.
pub fn trained_model<B: Backend>(
    run_dir: &std::path::Path,
    weights: &std::path::Path,
    device: &B::Device,
) -> Result<(SbirRecipe, fgia_nn::Network<B>, SbirModel<B>), TrainError> {
    let path = run_dir.join("recipe.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let r = SbirRecipe::parse(&text).map_err(|message| TrainError::Recipe { path: path.clone(), message })?;
    let kind = r.model.backbone;
    let net = load_network(NetworkConfig::new(kind).init::<B>(device), kind, weights)?.0;
    // The shapes the layers were built with: one blank view through the trunk.
    let c = r.data.crop as usize;
    let map = (0..=conv5_stage(kind)).fold(Tensor::<B, 4>::zeros([1, 3, c, c], device), |x, i| net.forward_stage(i, x));
    let [_, mc, mh, mw] = map.dims();
    let pooled = fgia_nn::ops::global_avg_pool(net.forward_stages_from(conv5_stage(kind) + 1, map)).dims()[1];
    let end_to_end = r.model.mode == FeatureMode::EndToEnd;
    let fresh = TripletMethod {
        model: SbirModel::<B>::new(r.method.name, r.train.loss, pooled, [mc, mh, mw], device),
        trunk: end_to_end.then(|| net.clone()),
        conv5: conv5_stage(kind),
        reads_maps: r.method.name.reads_maps(),
        backbone_lr_mult: r.model.backbone_lr_mult,
        margin: r.train.margin,
    };
    let (method, _) = engine::load_checkpoint_module(fresh, run_dir, device)?;
    // End to end, the trunk is the run's own.
    let net = method.trunk.unwrap_or(net);
    Ok((r, net, method.model))
}

/// The ten-view embeddings of images (sketches or photos) by a trained run: `[images * 10, e]`,
/// row-major, image-major.
pub fn embed_ten_views<B: Backend>(
    r: &SbirRecipe,
    net: &fgia_nn::Network<B>,
    model: &SbirModel<B>,
    paths: &[PathBuf],
    device: &B::Device,
    progress: bool,
) -> Result<Vec<f32>, TrainError> {
    let (d, kind) = (&r.data, r.model.backbone);
    let bar = engine::progress_bar(progress, paths.len() as u64, "views");
    let test_views = |_: usize| ten_view_offsets(d.side, d.crop).to_vec();
    let views = compute(net, Some(conv5_stage(kind)), paths, &test_views, d.side, d.crop, kind.normalize(), device, &bar)?;
    bar.finish_and_clear();
    embed_all(model, features(&views, r.method.name), device)
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| TrainError::Checkpoint { path: PathBuf::from("embeddings"), message: format!("{e:?}") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn energies_sum_the_matching_views_and_percent_correct_counts_ordered_triplets() {
        let t = |v: &[f32]| Tensor::<Flex, 2>::from_data(TensorData::new(v.to_vec(), [4, 1]), &Default::default());
        // 2 sketches and 2 photos, 2 views each, dim 1, rows image-major.
        let (sk, ph) = (t(&[0.0, 1.0, 2.0, 2.0]), t(&[0.0, 0.0, 1.0, 3.0]));
        // Sketch 0 views (0, 1) against photo 0 (0, 0): 0 + 1; photo 1 (1, 3): 1 + 4.
        assert_eq!(view_energies(&sk, &ph, 2, 2, &[0, 1], None), [1.0, 5.0, 8.0, 2.0]);
        assert_eq!(view_energies(&sk, &ph, 2, 2, &[1], None), [1.0, 4.0, 4.0, 1.0]);
        // W = 2 I doubles every energy.
        let w = Tensor::<Flex, 2>::from_data(TensorData::new(vec![2.0f32], [1, 1]), &Default::default());
        assert_eq!(view_energies(&sk, &ph, 2, 2, &[0, 1], Some(&w)), [2.0, 10.0, 16.0, 4.0]);
        // %corr: sketch 0 orders (0, 1) right and (1, 0) wrong; sketch 1 orders (1, 0) right; a
        // tie is wrong.
        let d = [1.0, 5.0, 8.0, 2.0];
        assert_eq!(triplets_correct(&d, 2, &[vec![[0, 1], [1, 0]], vec![[1, 0]]]), 100.0 * 2.0 / 3.0);
        assert_eq!(triplets_correct(&[1.0, 1.0, 0.0, 0.0], 2, &[vec![[0, 1]], vec![]]), 0.0);
    }
}
