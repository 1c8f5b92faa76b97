//! Runs a Table 3 recipe on the engine: the frozen backbone's pooled features of the dataset
//! (cached once per process for every recipe that shares backbone, data, sizes, views and
//! seed), the method's head trained by `engine::train`, its evaluation on the test split, and
//! the result record with the protocol, the noise and every deviation.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::backend::AutodiffBackend;
use fgia_core::datasets::Dataset;
use fgia_core::datasets::read_class_attributes;
use fgia_core::record::{FeatureMode, Protocol, ResultRecord};
use fgia_nn::NetworkConfig;
use fgia_nn::weights::load_network;
use fgia_train::engine::{self, BatchSource, Decay, EngineSpec, LrSchedule, OptimizerSpec, Sampler, TrainMethod, Trained};
use fgia_train::frozen_cache::FrozenCache;
use fgia_train::sources::MapBatch;
use fgia_train::{RunContext, TrainError};

use crate::Method;
use crate::attribute_embedding::{AttributeEmbedding, SjeMethod, attribute_vectors, predict};
use crate::geo_prior::{GeoBatch, GeoImageBatch, GeoImageMethod, GeoMethod, Presence, SyntheticRanges, combine, encode};
use crate::hitl::{Policy, UserModel, simulate};
use crate::kerl::{Graph, Kerl, KerlMethod};
use crate::noise::{NoiseKind, NoisyLabels, corrupt, groups_by_last_word};
use crate::peer::{EpochBatch, Head, NoisyHeads, Rule};
use crate::recipe::ExternalRecipe;

/// The frozen backbone's last map of the training views and test images, and the same pooled,
/// shared by the recipes of a process.
pub struct Features {
    /// `[C, h, w]` maps (KERL's regions).
    pub spatial: FrozenCache,
    /// `[C, 1, 1]` pooled features (every other method).
    pub pooled: FrozenCache,
}

/// The features of each backbone, data and view setting a process has built.
pub type SharedFeatures = Vec<(String, Features)>;

fn features_key(r: &ExternalRecipe, root: &std::path::Path) -> String {
    format!("{}|{}|{}|{}|{}|{}", r.model.backbone.name(), root.display(), r.data.resize, r.data.crop, r.train.views, r.train.seed)
}

/// The last map of the frozen backbone, and its pooled form, for `views` augmented views of every
/// training image and the centre crop of every test image.
fn frozen_features<'a, B: Backend>(
    r: &ExternalRecipe,
    ds: &Dataset,
    root: &std::path::Path,
    ctx: &RunContext,
    shared: &'a mut SharedFeatures,
    device: &B::Device,
) -> Result<&'a Features, TrainError> {
    let key = features_key(r, root);
    if let Some(i) = shared.iter().position(|(k, _)| *k == key) {
        return Ok(&shared[i].1);
    }
    let kind = r.model.backbone;
    let net = load_network(NetworkConfig::new(kind).init::<B>(device), kind, ctx.pretrained_weights()?)?.0;
    let last = net.num_stages() - 1;
    let norm = kind.normalize();
    let maps = FrozenCache::build(
        &net,
        last + 1,
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
    let pooled = maps.pooled();
    shared.push((key, Features { spatial: maps, pooled }));
    Ok(&shared.last().expect("pushed").1)
}

/// Pooled training features of `images` (indices into the training split) with `labels`, one
/// cached view per image and epoch.
struct PooledSource<'a> {
    cache: &'a FrozenCache,
    images: Vec<usize>,
    labels: Vec<usize>,
    seed: u64,
}

impl PooledSource<'_> {
    fn maps(&self, epoch: usize, items: &[usize]) -> MapBatch {
        let images: Vec<usize> = items.iter().map(|&k| self.images[k]).collect();
        let (data, kept) = self.cache.train_batch(&images, self.seed, epoch);
        let items: Vec<usize> = kept.iter().map(|&k| items[k]).collect();
        let [c, h, w] = self.cache.shape;
        MapBatch {
            data,
            shape: [items.len(), c, h, w],
            labels: items.iter().map(|&k| self.labels[k]).collect(),
            skipped: images.len() - items.len(),
            items,
            geometry: Vec::new(),
        }
    }
}

impl BatchSource for PooledSource<'_> {
    type Batch = EpochBatch;
    fn labels(&self) -> &[usize] {
        &self.labels
    }
    fn load(&self, epoch: usize, _step: usize, items: &[usize]) -> Result<EpochBatch, TrainError> {
        Ok(EpochBatch { maps: self.maps(epoch, items), epoch })
    }
}

/// The same features as plain map batches (for methods that need no epoch).
struct Maps<'a>(PooledSource<'a>);

impl BatchSource for Maps<'_> {
    type Batch = MapBatch;
    fn labels(&self) -> &[usize] {
        &self.0.labels
    }
    fn load(&self, epoch: usize, _step: usize, items: &[usize]) -> Result<MapBatch, TrainError> {
        Ok(self.0.maps(epoch, items))
    }
}

/// Pooled training features with the same images' (synthetic) locations and fresh background
/// points.
struct GeoImageSource<'a> {
    images: PooledSource<'a>,
    presence: &'a Presence,
    seed: u64,
}

impl BatchSource for GeoImageSource<'_> {
    type Batch = GeoImageBatch;
    fn labels(&self) -> &[usize] {
        &self.images.labels
    }
    fn load(&self, epoch: usize, step: usize, items: &[usize]) -> Result<GeoImageBatch, TrainError> {
        let maps = self.images.maps(epoch, items);
        let geo = GeoBatch::draw(self.presence, self.seed, epoch, step, &maps.items);
        Ok(GeoImageBatch { maps, geo })
    }
}

/// Test features of the test images whose labels pass `keep`: the features `[n, D]`, their
/// labels, and how many test images had none (undecodable).
fn test_features(cache: &FrozenCache, ds: &Dataset, keep: impl Fn(usize) -> bool) -> (Vec<f32>, Vec<usize>, usize) {
    let idx: Vec<usize> = (0..ds.test.len()).filter(|&i| keep(ds.test[i].label)).collect();
    let (data, kept) = cache.test_batch(&idx, false);
    let labels = kept.iter().map(|&k| ds.test[idx[k]].label).collect();
    (data, labels, idx.len() - kept.len())
}

/// Row-wise softmax of a head's logits on host features.
fn probabilities<B: Backend>(head: &Head<B>, x: Vec<f32>, dim: usize, device: &B::Device) -> Vec<Vec<f64>> {
    let n = x.len() / dim.max(1);
    let logits = head.forward(Tensor::from_data(TensorData::new(x, [n, dim]), device));
    let c = logits.dims()[1];
    let p: Vec<f32> = softmax(logits, 1).into_data().convert::<f32>().to_vec().unwrap_or_default();
    p.chunks(c.max(1)).map(|row| row.iter().map(|&v| f64::from(v)).collect()).collect()
}

fn top1(pred: &[usize], labels: &[usize]) -> f64 {
    100.0 * pred.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / labels.len().max(1) as f64
}

fn argmax(p: &[Vec<f64>]) -> Vec<usize> {
    p.iter().map(|row| crate::hitl::argmax(row).unwrap_or(0)).collect()
}

/// Trains `method` on `source`; `None` when the run stopped early.
fn fit<B, M, S>(r: &ExternalRecipe, ctx: &RunContext, label: &str, method: M, source: &S, device: &B::Device) -> Result<Option<(M, f64)>, TrainError>
where
    B: AutodiffBackend,
    M: TrainMethod<B, Batch = S::Batch>,
    S: BatchSource,
{
    let t = &r.train;
    let spec = EngineSpec {
        epochs: t.epochs,
        lr: t.lr,
        optimizer: OptimizerSpec::Adamw { weight_decay: t.weight_decay },
        schedule: LrSchedule { decay: Decay::Cosine, ..LrSchedule::cosine() },
        clip_grad_norm: 0.0,
        seed: t.seed,
        sampler: Sampler::Shuffled { batch_size: t.batch_size },
    };
    match engine::train(&spec, &ctx.io(label), method, source, None, device)? {
        Trained::Finished { method, epochs, .. } => Ok(Some((method, epochs.last().map_or(f64::NAN, |e| e.train_top1)))),
        Trained::Stopped { .. } => Ok(None),
    }
}

/// The seen / unseen split of the zero-shot rows: class `c` is unseen when `(c + 1) % every == 0`.
pub fn is_unseen(c: usize, every: usize) -> bool {
    (c + 1).is_multiple_of(every)
}

/// Trains and evaluates one recipe; `None` when stopped early (`RunContext::stop_after_epochs`).
pub fn run_recipe<B: AutodiffBackend>(
    recipe: &ExternalRecipe,
    ctx: &RunContext,
    shared: &mut SharedFeatures,
    device: &B::Device,
) -> Result<Option<ResultRecord>, TrainError> {
    let started = Instant::now();
    let run_dir = &ctx.run_dir;
    let opened = engine::open_run_dir(run_dir, ctx.resume, &recipe.to_toml())?;
    let r = &ExternalRecipe::parse(&opened.recipe).map_err(|message| TrainError::Recipe { path: run_dir.join("recipe.toml"), message })?;
    let ds = r.data.read(ctx.data_root.as_deref())?;
    let root = r.data.root(ctx.data_root.as_deref())?;
    engine::check_run_data(run_dir, ctx.resume, &engine::RunData::new(&root, &ds.classes.names))?;
    let classes = ds.num_classes();
    let method = r.method.name;
    let features = frozen_features::<B::InnerBackend>(r, &ds, &root, ctx, shared, device)?;
    let cache = &features.pooled;
    let dim = cache.shape[0];
    let clean: Vec<usize> = ds.train.iter().map(|x| x.label).collect();
    let (t, seed) = (&r.train, r.train.seed);
    let mut metrics = BTreeMap::new();
    let mut deviations: Vec<String> = method.deviations().iter().map(|s| s.to_string()).collect();
    let mut data = format!(
        "{} ({classes} classes, {} train / {} test images)",
        r.data.description.clone().unwrap_or_else(|| ds.name.clone()),
        ds.train.len(),
        ds.test.len()
    );
    let (trained_layers, loss_text);
    let label = r.report.method.clone();
    match method {
        Method::CrossEntropy | Method::CoTeaching | Method::PeerLearning | Method::TwentyQuestions => {
            let noisy: Option<NoisyLabels> = match &r.noise {
                Some(n) => Some(
                    corrupt(&clean, classes, n.kind.kind(), n.rate, n.seed, &groups_by_last_word(&ds.classes.names))
                        .map_err(|message| TrainError::Recipe { path: run_dir.join("recipe.toml"), message })?,
                ),
                None => None,
            };
            let labels = noisy.as_ref().map_or_else(|| clean.clone(), |n| n.labels.clone());
            let rule = match method {
                Method::CoTeaching => Rule::CoTeaching,
                Method::PeerLearning => Rule::PeerLearning,
                _ => Rule::All,
            };
            B::seed(device, seed);
            let first = Head::<B>::new(dim, r.model.hidden, classes, device);
            B::seed(device, seed ^ 0x9e37_79b9);
            let second = (rule != Rule::All).then(|| Head::<B>::new(dim, r.model.hidden, classes, device));
            let heads = NoisyHeads { first, second, rule, xi: r.xi(), t_k: r.method.t_k };
            let source = PooledSource { cache, images: (0..clean.len()).collect(), labels, seed };
            let Some((heads, train_top1)) = fit(r, ctx, &label, heads, &source, device)? else { return Ok(None) };
            let heads = heads.valid();
            let (x, test_labels, missing) = test_features(cache, &ds, |_| true);
            let probs = probabilities(&heads.first, x.clone(), dim, device);
            metrics.insert("top1".into(), top1(&argmax(&probs), &test_labels));
            if let Some(second) = &heads.second {
                metrics.insert("top1_second".into(), top1(&argmax(&probabilities(second, x, dim, device)), &test_labels));
            }
            metrics.insert("chance".into(), 100.0 / classes as f64);
            metrics.insert("train_top1_noisy_labels".into(), train_top1);
            metrics.insert("test_images".into(), test_labels.len() as f64);
            metrics.insert("test_images_unreadable".into(), missing as f64);
            if let Some(n) = noisy.as_ref().filter(|n| n.rate > 0.0) {
                metrics.insert("noise_rate".into(), 100.0 * n.rate);
                metrics.insert("noise_drawn".into(), 100.0 * n.drawn_rate);
                // The kind as a number, for the report: 1 for pair flips, 0 for symmetric noise.
                metrics.insert("noise_pair_flip".into(), f64::from(u8::from(n.kind == NoiseKind::PairFlip)));
                deviations.push(n.describe());
                data.push_str(&format!("; {:.0} % {} label noise (synthetic)", 100.0 * n.rate, n.kind.name()));
            } else if r.data.format == "webfg" {
                data.push_str("; the crawled web labels as they are (real noise of unknown rate)");
                deviations.retain(|d| !d.starts_with("synthetic label noise"));
            } else if method.reads_noisy_labels() {
                data.push_str("; clean labels");
                metrics.insert("noise_rate".into(), 0.0);
                metrics.insert("noise_drawn".into(), 0.0);
            }
            if rule != Rule::All {
                metrics.insert("xi".into(), r.xi());
                deviations.push(format!("drop rate rising to ξ = {} over T_k = {} epochs, stepped per epoch", r.xi(), r.method.t_k));
            }
            trained_layers = format!(
                "{} on the pooled feature (backbone frozen)",
                if r.model.hidden == 0 { "a linear head".to_string() } else { format!("a {}-unit MLP head", r.model.hidden) }
            ) + if rule == Rule::All { "" } else { ", two of them (the peer initialised from another seed)" };
            loss_text = match rule {
                Rule::All => "cross-entropy on the (noisy) labels".to_string(),
                Rule::CoTeaching => "cross-entropy of each network on its peer's small-loss samples".into(),
                Rule::PeerLearning => "cross-entropy on the disagreement samples, and on the peer's small-loss agreement samples".into(),
            };
            if method == Method::TwentyQuestions {
                let attributes = read_class_attributes(&root, classes)?;
                let m = &r.method;
                let user = UserModel::from_percent(&attributes.percent, m.user_noise, m.floor);
                for policy in Policy::ALL {
                    let acc = simulate(&probs, &test_labels, &user, policy, m.questions, seed);
                    for (q, a) in acc.iter().enumerate() {
                        metrics.insert(format!("acc_q{q}_{}", policy_key(policy)), *a);
                    }
                }
                metrics.insert("questions".into(), m.questions as f64);
                deviations.push(format!(
                    "simulated users answer from the class-level attribute percentages with a random answer at rate η = {} and p(yes | c, a) clamped to [{f}, {g}]; the same model drives the posterior (optimistic)",
                    m.user_noise,
                    f = m.floor,
                    g = 1.0 - m.floor
                ));
            }
        }
        Method::Sje | Method::SjeZeroShot => {
            let attributes = read_class_attributes(&root, classes)?;
            let zero_shot = method == Method::SjeZeroShot;
            let every = r.method.unseen_every;
            let seen: Vec<usize> = (0..classes).filter(|&c| !zero_shot || !is_unseen(c, every)).collect();
            let unseen: Vec<usize> = (0..classes).filter(|&c| zero_shot && is_unseen(c, every)).collect();
            let phi = |cs: &[usize]| -> Vec<f32> {
                let rows: Vec<Vec<f32>> = cs.iter().map(|&c| attributes.percent[c].clone()).collect();
                attribute_vectors(&rows)
            };
            let mut to_seen = vec![usize::MAX; classes];
            for (k, &c) in seen.iter().enumerate() {
                to_seen[c] = k;
            }
            let images: Vec<usize> = (0..clean.len()).filter(|&i| to_seen[clean[i]] != usize::MAX).collect();
            let labels: Vec<usize> = images.iter().map(|&i| to_seen[clean[i]]).collect();
            B::seed(device, seed);
            let sje = SjeMethod { model: AttributeEmbedding::<B>::new(dim, attributes.len(), seed, device), phi: phi(&seen), classes: seen.len() };
            let source = Maps(PooledSource { cache, images, labels, seed });
            let Some((sje, train_top1)) = fit(r, ctx, &label, sje, &source, device)? else { return Ok(None) };
            let model = sje.valid().model;
            let test_classes = if zero_shot { &unseen } else { &seen };
            let (x, test_labels, missing) = test_features(cache, &ds, |c| test_classes.contains(&c));
            let pred: Vec<usize> = predict(&model, x, dim, phi(test_classes), test_classes.len()).into_iter().map(|k| test_classes[k]).collect();
            metrics.insert("top1".into(), top1(&pred, &test_labels));
            metrics.insert("chance".into(), 100.0 / test_classes.len().max(1) as f64);
            metrics.insert("train_top1".into(), train_top1);
            metrics.insert("test_images".into(), test_labels.len() as f64);
            metrics.insert("test_images_unreadable".into(), missing as f64);
            if zero_shot {
                metrics.insert("seen_classes".into(), seen.len() as f64);
                metrics.insert("unseen_classes".into(), unseen.len() as f64);
                data.push_str(&format!(
                    "; zero-shot: {} unseen classes (every {every}th: {}) never trained on, test images of those only",
                    unseen.len(),
                    unseen.iter().map(|&c| ds.classes.names[c].clone()).collect::<Vec<_>>().join(", ")
                ));
            }
            trained_layers = format!("W ({dim} x {}) of θ(x)ᵀWφ(y) (backbone frozen)", attributes.len());
            loss_text = "symmetric structured joint embedding (image and class sides, 0-1 margin)".into();
        }
        Method::Kerl => {
            let attributes = read_class_attributes(&root, classes)?;
            let graph = Graph::from_percent(&attributes.percent)
                .map_err(|m| TrainError::Data(fgia_core::DataError::format(root.join("attributes/class_attribute_labels_continuous.txt"), m)))?;
            let spatial = &features.spatial;
            let [k, h, w] = spatial.shape;
            let settings = &r.method.kerl;
            B::seed(device, seed);
            let kerl = KerlMethod { model: Kerl::<B>::new(k, &graph, settings, device) };
            let source = Maps(PooledSource { cache: spatial, images: (0..clean.len()).collect(), labels: clean.clone(), seed });
            let Some((kerl, train_top1)) = fit(r, ctx, &label, kerl, &source, device)? else { return Ok(None) };
            let model = kerl.valid().model;
            let (x, test_labels, missing) = test_features(spatial, &ds, |_| true);
            let per = k * h * w;
            let (mut pred, mut scorer_pred) = (Vec::new(), Vec::new());
            for chunk in x.chunks(64 * per.max(1)) {
                let n = chunk.len() / per.max(1);
                let out = model.forward(Tensor::from_data(TensorData::new(chunk.to_vec(), [n, k, h, w]), device));
                let host = |t: Tensor<B::InnerBackend, 2>| -> Vec<f32> { t.into_data().convert::<f32>().to_vec().unwrap_or_default() };
                pred.extend(fgia_core::metrics::argmax_rows(&host(out.logits), classes));
                scorer_pred.extend(fgia_core::metrics::argmax_rows(&host(out.scorer_logits), classes));
            }
            metrics.insert("top1".into(), top1(&pred, &test_labels));
            metrics.insert("top1_score_classifier".into(), top1(&scorer_pred, &test_labels));
            metrics.insert("chance".into(), 100.0 / classes as f64);
            metrics.insert("train_top1".into(), train_top1);
            metrics.insert("test_images".into(), test_labels.len() as f64);
            metrics.insert("test_images_unreadable".into(), missing as f64);
            metrics.insert("graph_nodes".into(), graph.nodes() as f64);
            metrics.insert("graph_edges".into(), graph.s.iter().filter(|&&v| v > 0.0).count() as f64);
            metrics.insert("knowledge".into(), f64::from(u8::from(settings.knowledge)));
            data.push_str(&format!(
                "; graph of {} classes and {} real CUB attributes ({} class-attribute edges)",
                graph.classes,
                graph.attributes,
                graph.s.iter().filter(|&&v| v > 0.0).count()
            ));
            if !settings.knowledge {
                deviations.push("self-guided ablation: the gates see each region alone, not the knowledge graph".into());
            }
            deviations
                .push(format!("H = {}, O = {}, T = {}, regions projected to {} channels", settings.hidden, settings.out, settings.steps, settings.region_dim));
            trained_layers =
                format!("the score classifier, the 1x1 projection ({k} to {}), the GGNN, the gates and the classifier (backbone frozen)", settings.region_dim);
            loss_text = "cross-entropy of KERL's classifier plus cross-entropy of the score classifier".into();
        }
        Method::GeoPrior => {
            let g = &r.method.geo;
            let ranges = SyntheticRanges::new(classes, g);
            let features: Vec<f32> = clean
                .iter()
                .enumerate()
                .flat_map(|(i, &c)| {
                    let (lon, lat) = ranges.draw(c, g.seed, i);
                    encode(lon, lat, None)
                })
                .collect();
            let presence = Presence { features, labels: clean.clone(), dim: 4 };
            B::seed(device, seed);
            let method = GeoImageMethod {
                head: Head::<B>::new(dim, r.model.hidden, classes, device),
                prior: GeoMethod { net: g.config(classes).init(device), pos_weight: g.pos_weight },
            };
            let source =
                GeoImageSource { images: PooledSource { cache, images: (0..clean.len()).collect(), labels: clean.clone(), seed }, presence: &presence, seed };
            let Some((method, train_top1)) = fit(r, ctx, &label, method, &source, device)? else { return Ok(None) };
            let method = method.valid();
            let idx: Vec<usize> = (0..ds.test.len()).collect();
            let (x, kept) = cache.test_batch(&idx, false);
            let test_labels: Vec<usize> = kept.iter().map(|&k| ds.test[k].label).collect();
            let image = probabilities(&method.head, x, dim, device);
            // Test locations: drawn like the training ones (other draws), a share left missing.
            let located: Vec<Option<(f32, f32)>> = kept
                .iter()
                .map(|&i| {
                    let mut u = fgia_core::rng::SplitMix64::for_item(g.seed ^ 0x7e57, 0, i as u64);
                    (u.next_f64() >= g.test_missing).then(|| ranges.draw(ds.test[i].label, g.seed ^ 0x7e57, i))
                })
                .collect();
            let with: Vec<usize> = (0..located.len()).filter(|&k| located[k].is_some()).collect();
            let enc: Vec<f32> = with.iter().flat_map(|&k| located[k].map(|(lo, la)| encode(lo, la, None)).unwrap_or_default()).collect();
            let sig = burn::tensor::activation::sigmoid(method.prior.net.forward(Tensor::from_data(TensorData::new(enc, [with.len(), 4]), device)));
            let sig: Vec<f32> = sig.into_data().convert::<f32>().to_vec().unwrap_or_default();
            let mut prior_of: Vec<Option<&[f32]>> = vec![None; located.len()];
            for (j, &k) in with.iter().enumerate() {
                prior_of[k] = Some(&sig[j * classes..(j + 1) * classes]);
            }
            let combined: Vec<usize> = image
                .iter()
                .zip(&prior_of)
                .map(|(p, prior)| {
                    let p32: Vec<f32> = p.iter().map(|&v| v as f32).collect();
                    let c = combine(&p32, *prior);
                    fgia_core::metrics::argmax_rows(&c, classes)[0]
                })
                .collect();
            let image_pred = argmax(&image);
            let subset = |pred: &[usize]| -> f64 {
                let (p, l): (Vec<usize>, Vec<usize>) = with.iter().map(|&k| (pred[k], test_labels[k])).unzip();
                top1(&p, &l)
            };
            // How well the prior alone knows the ranges: of the test locations, the share whose
            // own class has σ > 0.5 (recall) and the mean σ of classes whose range excludes them.
            let (mut hit, mut outside, mut n_out) = (0usize, 0.0f64, 0usize);
            for (j, &k) in with.iter().enumerate() {
                let (lo, la) = located[k].expect("located");
                let row = &sig[j * classes..(j + 1) * classes];
                hit += usize::from(row[test_labels[k]] > 0.5);
                for (c, &v) in row.iter().enumerate() {
                    if !ranges.contains(c, lo, la) {
                        outside += f64::from(v);
                        n_out += 1;
                    }
                }
            }
            metrics.insert("top1".into(), top1(&combined, &test_labels));
            metrics.insert("top1_image_only".into(), top1(&image_pred, &test_labels));
            metrics.insert("top1_located_with_prior".into(), subset(&combined));
            metrics.insert("top1_located_image_only".into(), subset(&image_pred));
            metrics.insert("prior_recall".into(), 100.0 * hit as f64 / with.len().max(1) as f64);
            metrics.insert("prior_mean_outside_range".into(), outside / n_out.max(1) as f64);
            metrics.insert("test_without_location".into(), (located.len() - with.len()) as f64);
            metrics.insert("chance".into(), 100.0 / classes as f64);
            metrics.insert("train_top1".into(), train_top1);
            metrics.insert("test_images".into(), test_labels.len() as f64);
            metrics.insert("test_images_unreadable".into(), (ds.test.len() - kept.len()) as f64);
            data.push_str(&format!(
                "; SYNTHETIC locations: a {}x{} degree range per class, {:.0} % of test images without a location",
                2.0 * g.range_lon,
                2.0 * g.range_lat,
                100.0 * g.test_missing
            ));
            deviations.push(format!("no dates, no photographer embedding; λ = {} for {classes} classes; background points on the sphere", g.pos_weight));
            trained_layers = format!(
                "the image head on the pooled feature and the geo prior ({} wide, {} residual blocks), trained together (backbone frozen)",
                g.hidden, g.blocks
            );
            loss_text = "cross-entropy of the image head plus the presence-only loss with background points".into();
        }
    }
    deviations.push(format!(
        "{} ImageNet backbone frozen: its {} of {} cached views per training image",
        r.model.backbone.display_name(),
        if method == Method::Kerl { "last map (7x7 regions at 224 px)" } else { "pooled last map" },
        t.views
    ));
    deviations.extend(r.report.deviations.iter().cloned());
    let c = r.data.crop;
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
            split: if method == Method::SjeZeroShot {
                format!("the official train / test split; classes c with (c + 1) % {} == 0 unseen", r.method.unseen_every)
            } else {
                "the official train / test split".into()
            },
            train_transform: format!("{} cached views: resize {}, random {c}x{c} crop, random flip", t.views, r.data.resize),
            eval_transform: format!("resize {}, centre {c}x{c} crop", r.data.resize),
            tta: "none".into(),
            checkpoint: "last epoch".into(),
            seeds: vec![seed],
            epochs: t.epochs,
            batch_size: t.batch_size,
            optimizer: format!("AdamW lr {} weight decay {}, cosine decay", t.lr, t.weight_decay),
            trained_layers,
            mode: FeatureMode::Frozen,
            trained_from_stage: None,
            loss: Some(loss_text),
            data_parallel: ctx.data_parallel(),
        },
        seed,
        metrics,
        deviations,
        ..ctx.record(started.elapsed().as_secs_f64())
    };
    Ok(Some(record))
}

/// A policy's key in metric names.
pub fn policy_key(p: Policy) -> &'static str {
    match p {
        Policy::VisionOnly => "vision",
        Policy::Random => "random",
        Policy::InformationGain => "info_gain",
    }
}
