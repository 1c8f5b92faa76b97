//! One sketch-based retrieval run: the views through the frozen trunk, triplet training of the
//! head on the one engine, the ten-view evaluation, and the result record.
//!
//! Protocol (Yu et al. 2016, §5.1): at test, the ten views of every sketch and photo are
//! embedded, the squared Euclidean sketch × photo distances of matching views are summed over
//! the views, and acc@K is the share of sketches whose own photo ranks in the top K
//! (`fgia_core::metrics::acc_at_k`, ties to the lower index). The centre view alone is
//! recorded beside it (`*_1view`), so the report can show what the ten views add.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use fgia_core::datasets::{SketchSplit, TripletSampler, read_qmul};
use fgia_core::imaging::ten_view_offsets;
use fgia_core::metrics::acc_at_k;
use fgia_core::record::{FeatureMode, Protocol, ResultRecord};
use fgia_core::rng::SplitMix64;
use fgia_nn::NetworkConfig;
use fgia_nn::weights::load_network;
use fgia_train::engine::{self, Decay, EngineSpec, HostBatch, LrSchedule, OptimizerSpec, ParamGroup, Sampler, StepLoss, TrainMethod, Trained};
use fgia_train::{RunContext, TrainError};

use crate::model::{TripletHead, TripletHeadConfig, triplet_loss};
use crate::recipe::SbirRecipe;
use crate::views::{ViewFeatures, compute, train_view};

/// The K of acc@K.
pub const KS: [usize; 3] = [1, 5, 10];
/// The centre view, unmirrored, among the ten.
const CENTRE: usize = 4;

/// A batch of triplets: anchor sketch, positive and negative photo features, `[n, dim]` each.
#[derive(Debug)]
pub struct TripletBatch {
    anchors: Vec<f32>,
    pos: Vec<f32>,
    neg: Vec<f32>,
    n: usize,
    dim: usize,
}

impl HostBatch for TripletBatch {
    fn len(&self) -> usize {
        self.n
    }
    fn skipped(&self) -> usize {
        0
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
        Ok(TripletBatch { anchors, pos, neg, n: items.len(), dim })
    }
}

/// The trained head and its margin, as the engine's method.
#[derive(Module, Debug)]
pub struct TripletMethod<B: Backend> {
    /// `fc6`, `fc7`.
    pub head: TripletHead<B>,
    /// Triplet margin.
    pub margin: f64,
}

impl<B: AutodiffBackend> TrainMethod<B> for TripletMethod<B> {
    type Batch = TripletBatch;
    type Input = [Tensor<B, 2>; 3];

    fn prepare(&self, b: TripletBatch, device: &B::Device) -> Self::Input {
        let t = |v: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v, [b.n, b.dim]), device);
        [t(b.anchors), t(b.pos), t(b.neg)]
    }

    fn loss(&self, input: &Self::Input, _step: usize) -> StepLoss<B> {
        let [a, p, n] = input.clone().map(|x| self.head.forward(x));
        let (loss, diff) = triplet_loss(a, p, n, self.margin);
        // A triplet is right when its positive is the closer photo.
        let hits = diff.lower_elem(0.0).int().sum().into_scalar().elem::<i64>() as usize;
        StepLoss { loss, hits: Some(hits) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        engine::single_group(self, grads)
    }
}

/// Embeds every view of `f` with `head`: `[images * views, 256]`, row-major.
fn embed_all<B: Backend>(head: &TripletHead<B>, f: &ViewFeatures, device: &B::Device) -> Vec<f32> {
    let rows = f.len() * f.views;
    let x = Tensor::<B, 2>::from_data(TensorData::new(f.data.clone(), [rows, f.dim]), device);
    head.forward(x).into_data().to_vec::<f32>().expect("f32 embeddings")
}

/// Summed squared distances between the matching `views` of sketches and photos:
/// `[sketches, photos]`.
fn view_distances(sk: &[f32], ph: &[f32], n: usize, views_of: usize, views: &[usize], dim: usize) -> Vec<f32> {
    let mut d = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            d[i * n + j] = views
                .iter()
                .map(|&v| {
                    let a = &sk[(i * views_of + v) * dim..(i * views_of + v + 1) * dim];
                    let b = &ph[(j * views_of + v) * dim..(j * views_of + v + 1) * dim];
                    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>()
                })
                .sum();
        }
    }
    d
}

fn paths(split: &SketchSplit) -> (Vec<PathBuf>, Vec<PathBuf>) {
    (split.sketches.clone(), split.photos.clone())
}

/// Trains and evaluates one recipe; `None` when stopped early (`RunContext::stop_after_epochs`).
pub fn run_recipe<B: AutodiffBackend>(recipe: &SbirRecipe, ctx: &RunContext, device: &B::Device) -> Result<Option<ResultRecord>, TrainError> {
    let started = Instant::now();
    let run_dir = &ctx.run_dir;
    let opened = engine::open_run_dir(run_dir, ctx.resume, &recipe.to_toml())?;
    let r = &SbirRecipe::parse(&opened.recipe).map_err(|message| TrainError::Recipe { path: run_dir.join("recipe.toml"), message })?;
    let root = r.root(ctx.data_root.as_deref())?;
    let ds = read_qmul(&root)?;
    engine::check_run_data(run_dir, ctx.resume, &engine::RunData::new(&root, &ds.train.stems))?;
    let kind = r.model.backbone;
    let net = load_network(NetworkConfig::new(kind).init::<B::InnerBackend>(device), kind, ctx.pretrained_weights()?)?.0;
    let (d, t) = (&r.data, &r.train);
    let normalize = kind.normalize();
    let total = 2 * (ds.train.len() + ds.test.len());
    let bar = engine::progress_bar(ctx.progress, total as u64, &format!("{} views", ds.name));
    let train_views = |i: usize| (0..d.train_views).map(|v| train_view(t.seed, i, v, d.side, d.crop)).collect::<Vec<_>>();
    // Photos draw other windows than their sketches.
    let photo_views = |i: usize| (0..d.train_views).map(|v| train_view(t.seed.wrapping_add(1), i, v, d.side, d.crop)).collect::<Vec<_>>();
    let test_views = |_: usize| ten_view_offsets(d.side, d.crop).to_vec();
    let (tr_sk, tr_ph) = paths(&ds.train);
    let (te_sk, te_ph) = paths(&ds.test);
    let train_sk = compute(&net, &tr_sk, &train_views, d.side, d.crop, normalize, device, &bar)?;
    let train_ph = compute(&net, &tr_ph, &photo_views, d.side, d.crop, normalize, device, &bar)?;
    let test_sk = compute(&net, &te_sk, &test_views, d.side, d.crop, normalize, device, &bar)?;
    let test_ph = compute(&net, &te_ph, &test_views, d.side, d.crop, normalize, device, &bar)?;
    bar.finish_and_clear();

    let sampler = TripletSampler::new(&ds.train.triplets, t.hard_ratio).map_err(|message| TrainError::Recipe { path: root.clone(), message })?;
    B::seed(device, t.seed);
    let method = TripletMethod { head: TripletHeadConfig::new(train_sk.dim).init::<B>(device), margin: t.margin };
    let source = TripletSource { sampler, sketches: &train_sk, photos: &train_ph, anchors: (0..ds.train.len()).collect(), seed: t.seed };
    let spec = EngineSpec {
        epochs: t.epochs,
        lr: t.lr,
        optimizer: OptimizerSpec::Sgd { momentum: t.momentum, nesterov: false, weight_decay: t.weight_decay },
        schedule: LrSchedule { decay: Decay::Constant, ..LrSchedule::cosine() },
        clip_grad_norm: 0.0,
        seed: t.seed,
        sampler: Sampler::Shuffled { batch_size: t.batch_size },
    };
    let label = format!("{} {}", r.method.name.display_name(), ds.name);
    let (method, epochs) = match engine::train(&spec, &ctx.io(&label), method, &source, None, device)? {
        Trained::Finished { method, epochs, .. } => (method, epochs),
        Trained::Stopped { .. } => return Ok(None),
    };
    let head = method.valid().head;
    let n = ds.test.len();
    let (sk, ph) = (embed_all(&head, &test_sk, device), embed_all(&head, &test_ph, device));
    let dim = sk.len() / (n * 10).max(1);
    let truth: Vec<usize> = (0..n).collect();
    let ten = acc_at_k(&view_distances(&sk, &ph, n, 10, &(0..10).collect::<Vec<_>>(), dim), n, &truth, &KS);
    let one = acc_at_k(&view_distances(&sk, &ph, n, 10, &[CENTRE], dim), n, &truth, &KS);
    let mut metrics = std::collections::BTreeMap::new();
    for (k, (a10, a1)) in KS.iter().zip(ten.iter().zip(&one)) {
        metrics.insert(format!("acc@{k}"), *a10);
        metrics.insert(format!("acc@{k}_1view"), *a1);
        metrics.insert(format!("chance@{k}"), 100.0 * (*k).min(n) as f64 / n.max(1) as f64);
    }
    metrics.insert("test_sketches".into(), n as f64);
    if let Some(last) = epochs.last() {
        metrics.insert("train_triplets_right".into(), last.train_top1);
    }
    let mut deviations = r.method.name.deviations();
    deviations.extend(r.report.deviations.iter().cloned());
    deviations.push(format!("{} normalisation of the trunk instead of the authors' mean subtraction (250.42)", kind.display_name()));
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
            train_transform: format!("{} random {c}x{c} windows of the {s}x{s} image, random flip, cached", d.train_views, c = d.crop, s = d.side),
            eval_transform: format!("ten {c}x{c} views (4 corners and centre, each mirrored), distances summed", c = d.crop),
            tta: "ten views".into(),
            checkpoint: "last epoch".into(),
            seeds: vec![t.seed],
            epochs: t.epochs,
            batch_size: t.batch_size,
            optimizer: format!("SGD lr {} momentum {} weight decay {}, constant", t.lr, t.momentum, t.weight_decay),
            trained_layers: "fc6, fc7 (trunk frozen)".into(),
            mode: FeatureMode::Frozen,
            trained_from_stage: None,
        },
        seed: t.seed,
        metrics,
        deviations,
        ..ctx.record(started.elapsed().as_secs_f64())
    };
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_sum_the_matching_views() {
        // 2 sketches and 2 photos, 2 views each, dim 1.
        let sk = [0.0, 1.0, 2.0, 2.0];
        let ph = [0.0, 0.0, 1.0, 3.0];
        let d = view_distances(&sk, &ph, 2, 2, &[0, 1], 1);
        // Sketch 0 views (0, 1) against photo 0 (0, 0): 0 + 1; photo 1 (1, 3): 1 + 4.
        assert_eq!(d, [1.0, 5.0, 8.0, 2.0]);
        assert_eq!(view_distances(&sk, &ph, 2, 2, &[1], 1), [1.0, 4.0, 4.0, 1.0]);
    }
}
