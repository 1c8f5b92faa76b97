//! One retrieval run: read the class-disjoint split, extract (SCDA) or train an embedding (the
//! head on the frozen backbone's cached feature maps, or the whole network end to end from
//! pixels), embed the test classes, post-process, search, re-rank, evaluate, and write the result
//! record.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fgia_core::datasets::Dataset;
use fgia_core::record::{FeatureMode, Protocol, ResultRecord, write_json_atomic};
use fgia_core::retrieval::Distance;
use fgia_nn::weights::load_network;
use fgia_nn::{Network, NetworkConfig};
use fgia_train::engine::{self, EngineSpec, ParamGroup, RunIo, Sampler, StepLoss, TrainMethod, Trained, open_run_dir};
use fgia_train::frozen_cache::FrozenCache;
use fgia_train::recipe::describe_transform;
use fgia_train::sources::{CachedSource, ImageSource, MapBatch};
use fgia_train::{RunContext, TrainError};

use crate::Method;
use crate::extract::{Aggregator, extract};
use crate::losses::{contrastive, crl, dgcrl, multi_similarity, piecewise_ce, proxy_anchor, triplet};
use crate::model::{EmbeddingHead, EmbeddingHeadConfig};
use crate::pca::{PcaWhitening, l2_normalise_rows};
use crate::recipe::{CbirRecipe, Rerank};
use crate::rerank::{k_reciprocal, query_expansion};
use crate::search::{distance_matrix, random_ranking_recall, ranking_metrics};

/// Feature maps of a frozen backbone, shared between the methods of one dataset and setting.
pub struct SharedCache {
    key: String,
    cache: FrozenCache,
}

/// Reads the dataset of a recipe and applies the class-disjoint split: the first half of the
/// classes (by id) train, the rest test. For CUB-200-2011 and Stanford Cars this is the
/// standard 1-100 / 101-200 and 1-98 / 99-196.
pub fn retrieval_dataset(recipe: &CbirRecipe, root_override: Option<&Path>) -> Result<Dataset, TrainError> {
    let kind = recipe.data.kind()?;
    let root = recipe.data.root(root_override)?;
    let ds = recipe.data.read(root_override)?;
    let n = ds.num_classes();
    if n < 2 {
        return Err(TrainError::Recipe { path: root, message: format!("{n} classes: a class-disjoint split needs at least 2") });
    }
    let ids = &ds.classes.ids;
    let half = match kind.retrieval_train_classes() {
        Some(r) if n >= 196 => r,
        _ => ids[0]..=ids[n / 2 - 1],
    };
    Ok(ds.retrieval_split(half)?)
}

fn build_backbone<B: Backend>(recipe: &CbirRecipe, weights: &Path, device: &B::Device) -> Result<Network<B>, TrainError> {
    let net = NetworkConfig::new(recipe.model.backbone).init::<B>(device);
    let (net, _) = load_network(net, recipe.model.backbone, weights)?;
    Ok(net)
}

/// What a trained head gives: unit embeddings of the training and the test images.
struct Embedded {
    train: Vec<f32>,
    test: Vec<f32>,
    test_labels: Vec<usize>,
    dim: usize,
}

fn loss_of<B: Backend>(method: Method, head: &EmbeddingHead<B>, emb: Tensor<B, 2>, labels: &[usize]) -> Tensor<B, 1> {
    let w = || head.weights().expect("methods with class weights have them");
    match method {
        Method::Contrastive => contrastive::contrastive_loss(emb, labels, contrastive::MARGIN),
        Method::Triplet => triplet::triplet_semi_hard_loss(emb, labels, triplet::MARGIN),
        Method::MultiSimilarity => multi_similarity::multi_similarity_loss(emb, labels, Default::default()),
        Method::ProxyAnchor => proxy_anchor::proxy_anchor_loss(emb, w(), labels, proxy_anchor::ALPHA, proxy_anchor::DELTA),
        Method::CrlWsl => crl::centralized_ranking_loss(emb, labels, crl::MARGIN),
        Method::Dgcrl => dgcrl::dgcrl_loss(emb, w(), labels, Default::default()),
        Method::PiecewiseCe => piecewise_ce::piecewise_ce_loss(emb, w(), labels, Default::default()),
        Method::Scda => unreachable!("SCDA is not trained"),
    }
}

/// Batch items whose nearest other batch item (by dot product) has their class.
fn batch_nearest_hits(emb: &[f32], dim: usize, labels: &[usize]) -> usize {
    let n = labels.len();
    (0..n)
        .filter(|&i| {
            let a = &emb[i * dim..(i + 1) * dim];
            let best = (0..n).filter(|&j| j != i).max_by(|&x, &y| {
                let dx: f32 = a.iter().zip(&emb[x * dim..(x + 1) * dim]).map(|(p, q)| p * q).sum();
                let dy: f32 = a.iter().zip(&emb[y * dim..(y + 1) * dim]).map(|(p, q)| p * q).sum();
                dx.total_cmp(&dy).then(y.cmp(&x))
            });
            best.is_some_and(|j| labels[j] == labels[i])
        })
        .count()
}

/// A retrieval method as the engine trains it: the embedding head and the method's loss, and in
/// end-to-end mode the backbone, trained live from pixels. Parameter groups: the embedding
/// layer at the base learning rate; the class weights (proxies, centres) at
/// `class_weight_lr_mult` times it, as in the proxy-based papers; the live backbone at
/// `backbone_lr_mult` times it. The training "top-1" is the share of batch items whose nearest
/// other batch item has their class.
#[derive(Module, Debug)]
pub struct Embedder<B: Backend> {
    /// The live backbone (end-to-end mode); `None` when the maps come from the cache.
    pub live: Option<Network<B>>,
    /// The head.
    pub head: EmbeddingHead<B>,
    /// The method (its loss and pooling).
    #[module(skip)]
    pub method: Method,
    /// Learning-rate multiplier of the class weights.
    pub class_weight_lr_mult: f64,
    /// Learning-rate multiplier of the live backbone.
    pub backbone_lr_mult: f64,
}

impl<B: Backend> Embedder<B> {
    /// Embeddings of a batch: cached maps `[B, C, h, w]`, or in end-to-end mode pixels
    /// `[B, 3, H, W]` through the live backbone first.
    ///
    /// # Shapes
    /// to `[B, D]`.
    pub fn embed(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let maps = match &self.live {
            Some(net) => net.features(x),
            None => x,
        };
        self.head.forward(maps, self.method.pooling())
    }
}

impl<B: AutodiffBackend> TrainMethod<B> for Embedder<B> {
    type Batch = MapBatch;
    type Input = (Tensor<B, 4>, Vec<usize>);

    fn prepare(&self, b: MapBatch, device: &B::Device) -> Self::Input {
        (Tensor::<B, 4>::from_data(TensorData::new(b.data, b.shape), device), b.labels) // [B, C, h, w] maps or [B, 3, H, W] pixels
    }

    fn loss(&self, (x, labels): &Self::Input, _step: usize) -> StepLoss<B> {
        let emb = self.embed(x.clone()); // [B, D]
        let loss = loss_of(self.method, &self.head, emb.clone(), labels);
        let dim = emb.dims()[1];
        let e: Vec<f32> = emb.into_data().convert::<f32>().to_vec().unwrap_or_default();
        StepLoss { loss, hits: Some(batch_nearest_hits(&e, dim, labels)) }
    }

    fn param_groups(&self, mut grads: B::Gradients) -> Vec<ParamGroup> {
        let backbone = self.live.as_ref().map(|net| GradientsParams::from_module(&mut grads, net));
        let mut main = GradientsParams::from_grads(grads, self);
        let mut groups = Vec::new();
        if let Some(p) = &self.head.class_weights {
            let mut cls = GradientsParams::new();
            if let Some(g) = main.remove::<B::InnerBackend, 2>(p.id) {
                cls.register::<B::InnerBackend, 2>(p.id, g);
            }
            groups.push(ParamGroup { name: "embedding", lr_mult: 1.0, grads: main });
            groups.push(ParamGroup { name: "class weights", lr_mult: self.class_weight_lr_mult, grads: cls });
        } else {
            groups.push(ParamGroup { name: "embedding", lr_mult: 1.0, grads: main });
        }
        if let Some(b) = backbone {
            groups.push(ParamGroup { name: "backbone", lr_mult: self.backbone_lr_mult, grads: b });
        }
        groups
    }
}

/// The engine settings of a retrieval recipe: the recipe's optimiser (AdamW by default) and
/// per-iteration schedule (cosine by default), class-balanced batches.
pub fn engine_spec(recipe: &CbirRecipe) -> EngineSpec {
    let t = &recipe.train;
    EngineSpec {
        epochs: t.epochs,
        lr: t.lr,
        optimizer: t.optimizer_spec(),
        schedule: t.lr_schedule.clone(),
        clip_grad_norm: 0.0,
        seed: t.seed,
        sampler: Sampler::ClassBalanced { p: t.classes_per_batch, k: t.images_per_class },
    }
}

/// Where the embedder's training batches come from.
enum Feed<'a> {
    /// The frozen backbone's cached last maps.
    Cached(&'a FrozenCache),
    /// Pixels, decoded and augmented afresh every epoch, through a live backbone.
    Live(&'a Dataset),
}

/// Trains the embedder and embeds the test images and the training images (the latter for
/// PCA-whitening): on cached maps in frozen mode (one cached view of each training image), on
/// centre crops in end-to-end mode.
#[allow(clippy::too_many_arguments)]
fn train_embedder<B: AutodiffBackend>(
    recipe: &CbirRecipe,
    feed: Feed<'_>,
    live: Option<Network<B>>,
    channels: usize,
    train_labels: &[usize],
    test_labels: &[usize],
    num_train_classes: usize,
    ctx: &RunContext,
    io: &RunIo,
    device: &B::Device,
) -> Result<Option<Embedded>, TrainError> {
    let t = &recipe.train;
    let method = recipe.method.name;
    B::seed(device, t.seed);
    let head: EmbeddingHead<B> = EmbeddingHeadConfig::new(channels, recipe.model.embedding_dim)
        .with_classes(if method.has_class_weights() { num_train_classes } else { 0 })
        .init(device);
    let dim = recipe.model.embedding_dim;
    let model = Embedder { live, head, method, class_weight_lr_mult: t.class_weight_lr_mult, backbone_lr_mult: t.backbone_lr_mult };
    let trained = match &feed {
        Feed::Cached(cache) => {
            let source = CachedSource { cache, labels: train_labels.to_vec(), seed: t.seed };
            engine::train(&engine_spec(recipe), io, model, &source, None, device)?
        }
        Feed::Live(ds) => {
            // The batches carry the records' labels: give them the training-class indices.
            let records: Vec<_> = ds.train.iter().zip(train_labels).map(|(r, &label)| fgia_core::datasets::Record { label, ..r.clone() }).collect();
            let source = ImageSource::new(&records, recipe.train_transform(), t.seed, recipe.data.skip_bad);
            engine::train(&engine_spec(recipe), io, model, &source, None, device)?
        }
    };
    let model = match trained {
        Trained::Finished { method, .. } => method,
        Trained::Stopped { .. } => return Ok(None),
    };
    let inner = model.valid();
    let embed = |data: Vec<f32>, shape: [usize; 4]| -> Vec<f32> {
        let x = Tensor::<B::InnerBackend, 4>::from_data(TensorData::new(data, shape), device);
        inner.embed(x).into_data().convert::<f32>().to_vec().unwrap_or_default()
    };
    let (mut train, mut test, mut kept_test_labels) = (Vec::new(), Vec::new(), Vec::new());
    match &feed {
        Feed::Cached(cache) => {
            let [c, h, w] = cache.shape;
            for chunk in (0..test_labels.len()).collect::<Vec<_>>().chunks(64) {
                let (maps, kept) = cache.test_batch(chunk, false);
                if !kept.is_empty() {
                    test.extend(embed(maps, [kept.len(), c, h, w]));
                    kept_test_labels.extend(kept.iter().map(|&k| test_labels[chunk[k]]));
                }
            }
            for chunk in (0..train_labels.len()).collect::<Vec<_>>().chunks(64) {
                let (maps, kept) = cache.train_batch(chunk, t.seed, 0);
                if !kept.is_empty() {
                    train.extend(embed(maps, [kept.len(), c, h, w]));
                }
            }
        }
        Feed::Live(ds) => {
            let transform = recipe.eval_transform();
            let side = transform.crop as usize;
            let images = |records: &[fgia_core::datasets::Record], out: &mut Vec<f32>, labels: Option<&mut Vec<usize>>| -> Result<(), TrainError> {
                let mut kept_labels = Vec::new();
                let bar = engine::progress_bar(ctx.progress, records.len() as u64, "embed");
                for chunk in (0..records.len()).collect::<Vec<_>>().chunks(32) {
                    let b = fgia_core::imaging::load_batch(records, chunk, &transform, 0, 0, recipe.data.skip_bad)?;
                    if !b.labels.is_empty() {
                        out.extend(embed(b.pixels, [b.labels.len(), 3, side, side]));
                        kept_labels.extend(b.labels);
                    }
                    bar.inc(chunk.len() as u64);
                }
                bar.finish_and_clear();
                if let Some(l) = labels {
                    *l = kept_labels;
                }
                Ok(())
            };
            images(&ds.test, &mut test, Some(&mut kept_test_labels))?;
            if recipe.eval.pca_whiten > 0 {
                images(&ds.train, &mut train, None)?;
            }
        }
    }
    Ok(Some(Embedded { train, test, test_labels: kept_test_labels, dim }))
}

/// Evaluates test embeddings: optional PCA-whitening learned on the training embeddings, then
/// Recall@K and mAP without re-ranking, and after query expansion and k-reciprocal
/// re-ranking. Returns the metrics (headline ones follow `eval.rerank`).
pub fn evaluate_embeddings(recipe: &CbirRecipe, train: &[f32], test: &[f32], dim: usize, test_labels: &[usize]) -> Result<BTreeMap<String, f64>, TrainError> {
    let e = &recipe.eval;
    let (mut x, mut d) = (test.to_vec(), dim);
    if e.pca_whiten > 0 {
        let p = PcaWhitening::fit(train, dim, e.pca_whiten, 1e-6)
            .map_err(|err| TrainError::Recipe { path: "<eval.pca_whiten>".into(), message: err.to_string() })?;
        x = p.apply(test);
        d = p.output_dim;
    } else if e.distance == Distance::Cosine {
        l2_normalise_rows(&mut x, d);
    }
    let ks = &e.ks;
    let mut metrics = BTreeMap::new();
    let mut put = |prefix: &str, (recall, map): (Vec<f64>, f64)| {
        for (k, r) in ks.iter().zip(recall) {
            metrics.insert(format!("{prefix}recall@{k}"), r);
        }
        metrics.insert(format!("{prefix}map"), map);
    };
    let plain = ranking_metrics(&distance_matrix(&x, d, e.distance), test_labels, ks);
    let qe = (e.also_reranked || e.rerank == Rerank::Qe).then(|| ranking_metrics(&query_expansion(&x, d, e.qe_k, e.distance), test_labels, ks));
    let kr = (e.also_reranked || e.rerank == Rerank::KReciprocal).then(|| ranking_metrics(&k_reciprocal(&x, d, e.distance, e.k_reciprocal), test_labels, ks));
    let headline = match e.rerank {
        Rerank::None => plain.clone(),
        Rerank::Qe => qe.clone().expect("computed"),
        Rerank::KReciprocal => kr.clone().expect("computed"),
    };
    put("", headline);
    if e.rerank != Rerank::None {
        put("plain/", plain);
    }
    if let Some(q) = qe.filter(|_| e.also_reranked) {
        put("qe/", q);
    }
    if let Some(k) = kr.filter(|_| e.also_reranked) {
        put("kr/", k);
    }
    for (k, r) in ks.iter().zip(random_ranking_recall(test_labels, ks)) {
        metrics.insert(format!("random/recall@{k}"), r);
    }
    metrics.insert("test_images".into(), test_labels.len() as f64);
    metrics.insert("embedding_dim".into(), d as f64);
    Ok(metrics)
}

/// Runs one recipe. `caches` holds feature maps already computed by earlier recipes of the
/// same process (same backbone, data, input size, views and seed), and receives this run's.
///
/// Returns `None` when the run stopped early ([`RunContext::stop_after_epochs`]).
pub fn run_recipe<B: AutodiffBackend>(
    recipe: &CbirRecipe,
    ctx: &RunContext,
    caches: &mut Vec<SharedCache>,
    device: &B::Device,
) -> Result<Option<ResultRecord>, TrainError> {
    let started = Instant::now();
    let run_dir = &ctx.run_dir;
    // On resume the run folder's own recipe rules.
    let opened = open_run_dir(run_dir, ctx.resume, &recipe.to_toml())?;
    let recipe = &CbirRecipe::parse(&opened.recipe).map_err(|message| TrainError::Recipe { path: run_dir.join("recipe.toml"), message })?;
    let ds = retrieval_dataset(recipe, ctx.data_root.as_deref())?;
    engine::check_run_data(run_dir, ctx.resume, &engine::RunData::new(&ds.root, &ds.classes.names))?;
    let net: Network<B::InnerBackend> = build_backbone(recipe, ctx.pretrained_weights()?, device)?;
    let method = recipe.method.name;
    let mut deviations = recipe.report.deviations.clone();
    let (trained_layers, epochs, batch, optimizer, tta, mode);
    let metrics = if method.is_trained() {
        let t = &recipe.train;
        let end_to_end = recipe.model.mode == FeatureMode::EndToEnd;
        let feed = if end_to_end {
            Feed::Live(&ds)
        } else {
            let key = format!("{}|{}|{}|{}|{}|{}", recipe.model.backbone, ds.root.display(), recipe.data.crop, recipe.data.resize, t.views, t.seed);
            if !caches.iter().any(|c| c.key == key) {
                let cache = FrozenCache::build(
                    &net,
                    net.num_stages(),
                    t.views,
                    &ds.train,
                    &recipe.train_transform(),
                    &ds.test,
                    &recipe.eval_transform(),
                    false,
                    t.seed,
                    recipe.data.skip_bad,
                    device,
                    ctx.progress,
                )?;
                caches.push(SharedCache { key: key.clone(), cache });
            }
            Feed::Cached(&caches.iter().find(|c| c.key == key).expect("just inserted").cache)
        };
        let train_labels: Vec<usize> = ds.train.iter().map(|r| r.label).collect();
        let test_labels: Vec<usize> = ds.test.iter().map(|r| r.label).collect();
        // Class weights are indexed by training class: remap labels to 0..n_train.
        let mut train_classes: Vec<usize> = train_labels.clone();
        train_classes.sort_unstable();
        train_classes.dedup();
        let local: Vec<usize> = train_labels.iter().map(|l| train_classes.binary_search(l).expect("present")).collect();
        let io = ctx.io(method.name());
        let live = if end_to_end { Some(build_backbone::<B>(recipe, ctx.pretrained_weights()?, device)?) } else { None };
        // Channels of the maps the head reads: the cache's, or the live backbone's last map.
        let channels = match &feed {
            Feed::Cached(cache) => cache.shape[0],
            Feed::Live(_) => net.feature_dim(),
        };
        let Some(emb) = train_embedder::<B>(recipe, feed, live, channels, &local, &test_labels, train_classes.len(), ctx, &io, device)? else {
            return Ok(None);
        };
        let head = format!(
            "avg+max pooling, linear {} -> {}{}",
            2 * channels,
            emb.dim,
            if method.has_class_weights() { ", plus one weight vector per training class" } else { "" }
        );
        if end_to_end {
            trained_layers = format!("every layer: the backbone and the embedding head ({head})");
        } else {
            deviations.push(format!(
                "backbone frozen at its ImageNet weights: only the embedding head ({head}) is trained, on feature maps cached for {} augmented views per training image",
                t.views
            ));
            trained_layers = "embedding head only (backbone frozen)".to_string();
        }
        mode = recipe.model.mode;
        epochs = t.epochs;
        batch = t.classes_per_batch * t.images_per_class;
        optimizer = format!(
            "{}; class weights at {}x lr{}",
            engine_spec(recipe).describe(),
            t.class_weight_lr_mult,
            if end_to_end { format!("; backbone at {}x lr", t.backbone_lr_mult) } else { String::new() }
        );
        tta = "none".to_string();
        evaluate_embeddings(recipe, &emb.train, &emb.test, emb.dim, &emb.test_labels)?
    } else {
        let agg = Aggregator::ScdaFlipPlus;
        let test = extract(&net, &ds.test, &recipe.eval_transform(), agg, recipe.data.skip_bad, device, ctx.progress)?;
        let train = if recipe.eval.pca_whiten > 0 {
            extract(&net, &ds.train, &recipe.eval_transform(), agg, recipe.data.skip_bad, device, ctx.progress)?.vectors
        } else {
            Vec::new()
        };
        let labels: Vec<usize> = test.kept.iter().map(|&i| ds.test[i].label).collect();
        trained_layers = "none (unsupervised: ImageNet features)".into();
        mode = FeatureMode::Untrained;
        epochs = 0;
        batch = 0;
        optimizer = "none".into();
        tta = "flip (SCDA_flip+: descriptors of the image and its mirror averaged)".into();
        let mut m = evaluate_embeddings(recipe, &train, &test.vectors, test.dim, &labels)?;
        m.insert("skipped_images".into(), test.skipped.len() as f64);
        m
    };
    if method.equation_reconstructed() {
        deviations.push(
            "loss equation reconstructed from the paper's abstract and the survey's description, not from the paper's text (see the method file's header)"
                .into(),
        );
    }
    let record = ResultRecord {
        table: recipe.report.table.clone(),
        method: recipe.report.method.clone(),
        dataset: recipe.report.dataset.clone(),
        data: recipe.data.description.clone().unwrap_or_else(|| format!("{} ({} train / {} test images)", ds.name, ds.train.len(), ds.test.len())),
        backbone: recipe.model.backbone.display_name().to_string(),
        resolution: recipe.data.crop,
        paper_resolution: recipe.report.paper_resolution,
        paper_backbone: recipe.report.paper_backbone.clone(),
        section: None,
        protocol: Protocol {
            split: ds.split_note.clone(),
            train_transform: if method.is_trained() { describe_transform(&recipe.train_transform()) } else { "none (no training)".into() },
            eval_transform: describe_transform(&recipe.eval_transform()),
            tta,
            checkpoint: if method.is_trained() { "last epoch".into() } else { "none".into() },
            seeds: vec![recipe.train.seed],
            epochs,
            batch_size: batch,
            optimizer,
            trained_layers,
            mode,
            trained_from_stage: None,
            loss: None,
            data_parallel: ctx.data_parallel(),
        },
        seed: recipe.train.seed,
        metrics,
        deviations,
        ..ctx.record(started.elapsed().as_secs_f64())
    };
    write_json_atomic(&run_dir.join("result.json"), &record)?;
    Ok(Some(record))
}
