//! WS-DAN: "See Better Before Looking Closer: Weakly Supervised Data Augmentation Network for
//! Fine-Grained Visual Classification", Hu, Qi, Huang and Lu, arXiv 1901.09891, 2019. Not in the
//! survey's table; the report marks it so. Recipe: `recipes/table2/ws-dan.toml` (CAL, which
//! builds on this file, is `recipes/table2/cal.toml` and `cal.rs`).
//!
//! **Model.** `M` attention maps `A = ReLU(conv1x1(F))` over the feature map `F` (`C x h x w`).
//! Bilinear attention pooling: `P_k = (1/hw) Σ_uv A_k(u,v) F(:,u,v)`, stacked to `M x C`, signed
//! square root `sign(P) sqrt(|P| + ε)`, l2-normalised as one `M C` vector, and classified by a
//! bias-free linear layer on `100 P` (the authors' scale).
//!
//! **Attention regularisation (centre loss).** Class centres `c_y ∈ R^{MC}`, zero at start and not
//! trained by SGD: `L_c = mean_i ‖P_i − ĉ_{y_i}‖²` with `ĉ = c / ‖c‖` (the l2-normalised centre;
//! leaving the normalisation out costs about 2 points in the PyTorch ports), and after each
//! step `c_y ← c_y + β (P − ĉ_y)` with `β = 0.05`, from the raw images' `P` only.
//!
//! **Attention-guided augmentation.** Per training image, one map is drawn with probability
//! `∝ sqrt(mean A_k)` for cropping and another (without replacement, as the PyTorch ports) for
//! dropping. Crop: the box of `A_k ≥ θ_c max A_k` (`θ_c ~ U(0.4, 0.6)`) on the bilinearly
//! upsampled map, grown by 10 % of the side, resampled to the input size. Drop: pixels where
//! `A_k ≥ θ_d max A_k` (`θ_d ~ U(0.2, 0.5)`) are zeroed. Loss:
//! `(CE(raw) + CE(crop) + CE(drop)) / 3 + 1 · L_c`.
//!
//! **Test.** The raw image and the crop of the mean attention map (`θ = 0.1`, padding 5 %),
//! probabilities averaged (the authors' TensorFlow evaluation; the PyTorch port averages logits).
//!
//! **End to end** (`mode = "end-to-end"`, [`WsDanLive`]): as the paper, every step draws the
//! crop and the drop from the current attention, resamples them from the pixels and runs them
//! through the backbone it trains ([`LIVE_DEVIATIONS`]: the attention layer, the centres and
//! the random stream as process state).
//!
//! **Deviations of the cached rounds** (also in [`DEVIATIONS`] and each record):
//! - Cached rounds on the frozen trunk (see [`crate::run`]): round 1 trains attention and
//!   classifier on the raw images' cached maps; the crops and drops are drawn once per training
//!   view from the round-1 attention and run through the frozen backbone; round 2 continues the
//!   same model on raw, crop and drop maps with the full loss. The paper redraws both every step.
//! - The attention is a new 1x1 convolution with ReLU on the last map (the PyTorch port's choice
//!   for a new backbone), without batch norm.
//! - The centres are process state (not in checkpoints): a resumed round restarts them at zero.

use std::sync::{Arc, Mutex};

use burn::module::AutodiffModule;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::backend::AutodiffBackend;
use fgia_nn::Network;
use fgia_train::TrainError;
use fgia_train::engine::{ParamGroup, StepLoss, TrainMethod, single_group};
use fgia_train::sources::MapBatch;
use serde::{Deserialize, Serialize};

use crate::geometry::{NormBox, mask_box};
use crate::live::{LiveInput, LiveStage, backbone_groups, prepare_live, trunk};
use crate::looks::Look;
use crate::nn::{cross_entropy, hits, host, item_rng, probs};
use crate::run::{LocBatch, LocInput, Outcome, Sample, Stage, look_images, prepare};

/// The deviations of every WS-DAN run.
pub const DEVIATIONS: &[&str] = &[
    "crops and drops drawn once per cached training view from the round-1 attention (cached rounds), not redrawn every step",
    "attention: a new 1x1 convolution with ReLU on the last map, without batch norm",
    "the class centres are process state, not checkpointed: a resumed round restarts them at zero",
    "not in the survey's Table 2",
];

/// WS-DAN's settings (and CAL's, which adds the counterfactual weight).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsDanConfig {
    /// Attention maps `M`.
    pub attentions: usize,
    /// Scale of the normalised features before the classifier.
    pub logit_scale: f32,
    /// Centre update rate `β`.
    pub centre_beta: f32,
    /// Weight of the centre loss.
    pub centre_weight: f32,
    /// Weights of the raw, crop and drop cross-entropies.
    pub raw_weight: f32,
    /// See `raw_weight`.
    pub crop_weight: f32,
    /// See `raw_weight`.
    pub drop_weight: f32,
    /// Crop threshold range `θ_c`.
    pub crop_theta: [f32; 2],
    /// Crop padding (fraction of the side, each side).
    pub crop_padding: f32,
    /// Drop threshold range `θ_d`.
    pub drop_theta: [f32; 2],
    /// Test crop threshold on the mean attention.
    pub test_theta: f32,
    /// Test crop padding.
    pub test_padding: f32,
    /// Side of the resampled crops and drops (the paper: the input side).
    pub crop_size: usize,
    /// CAL: weight of the counterfactual effect's cross-entropy (ignored by WS-DAN).
    pub effect_weight: f32,
}

impl Default for WsDanConfig {
    fn default() -> Self {
        WsDanConfig {
            attentions: 32,
            logit_scale: 100.0,
            centre_beta: 0.05,
            centre_weight: 1.0,
            raw_weight: 1.0 / 3.0,
            crop_weight: 1.0 / 3.0,
            drop_weight: 1.0 / 3.0,
            crop_theta: [0.4, 0.6],
            crop_padding: 0.1,
            drop_theta: [0.2, 0.5],
            test_theta: 0.1,
            test_padding: 0.05,
            crop_size: 448,
            effect_weight: 1.0,
        }
    }
}

impl WsDanConfig {
    /// Parses and validates `[method.params]`.
    pub fn from_params(p: &toml::Table) -> Result<Self, String> {
        let c: WsDanConfig = crate::recipe::params(p)?;
        if c.attentions == 0 || c.attentions > 512 {
            return Err(format!("attentions {} must be in 1..=512", c.attentions));
        }
        for (k, v) in [
            ("logit_scale", c.logit_scale),
            ("centre_beta", c.centre_beta),
            ("centre_weight", c.centre_weight),
            ("raw_weight", c.raw_weight),
            ("crop_weight", c.crop_weight),
            ("drop_weight", c.drop_weight),
            ("effect_weight", c.effect_weight),
            ("crop_padding", c.crop_padding),
            ("test_padding", c.test_padding),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{k} {v} must be a finite number >= 0"));
            }
        }
        for (k, [a, b]) in [("crop_theta", c.crop_theta), ("drop_theta", c.drop_theta), ("test_theta", [c.test_theta, c.test_theta])] {
            if !(0.0..=1.0).contains(&a) || !(a..=1.0).contains(&b) {
                return Err(format!("{k} [{a}, {b}] must satisfy 0 <= low <= high <= 1"));
            }
        }
        if !(16..=1024).contains(&c.crop_size) {
            return Err(format!("crop_size {} must be in 16..=1024", c.crop_size));
        }
        Ok(c)
    }
}

/// What the model computes for a batch of maps.
pub struct WsDanOut<B: Backend> {
    /// Class scores `[n, classes]`.
    pub logits: Tensor<B, 2>,
    /// Normalised pooled features `[n, M C]`.
    pub features: Tensor<B, 2>,
    /// Attention maps `[n, M, h, w]`.
    pub attention: Tensor<B, 4>,
    /// Un-normalised feature map `[n, C, h, w]` (for CAL's counterfactual pooling).
    pub map: Tensor<B, 4>,
}

/// Attention, bilinear attention pooling and the classifier.
#[derive(Module, Debug)]
pub struct WsDan<B: Backend> {
    /// `C -> M` attention.
    pub attention: Conv2d<B>,
    /// `M C -> classes`, no bias.
    pub fc: Linear<B>,
    #[module(skip)]
    centres: Arc<Mutex<Vec<f32>>>,
    #[module(skip)]
    cfg: WsDanConfig,
    #[module(skip)]
    counterfactual: bool,
}

/// Bilinear attention pooling, signed square root and l2 normalisation: `[n, M C]`.
pub fn bap<B: Backend>(attention: Tensor<B, 4>, map: Tensor<B, 4>) -> Tensor<B, 2> {
    let [n, m, h, w] = attention.dims();
    let [_, c, _, _] = map.dims();
    let a = attention.reshape([n, m, h * w]);
    let f = map.reshape([n, c, h * w]).swap_dims(1, 2);
    let p = a.matmul(f).div_scalar((h * w) as f32).reshape([n, m * c]); // [n, M C]
    let p = p.clone().sign() * (p.abs() + 1e-12).sqrt();
    // The epsilon inside the root: an all-zero attention gives P = 0, where sqrt's derivative is
    // infinite.
    let norm = p.clone().powi_scalar(2).sum_dim(1).add_scalar(1e-12).sqrt();
    p / norm
}

impl<B: Backend> WsDan<B> {
    /// A model for `channels`-channel maps and `classes` classes.
    pub fn new(channels: usize, classes: usize, cfg: &WsDanConfig, counterfactual: bool, device: &B::Device) -> Self {
        let m = cfg.attentions;
        WsDan {
            attention: Conv2dConfig::new([channels, m], [1, 1]).init(device),
            fc: LinearConfig::new(m * channels, classes).with_bias(false).init(device),
            centres: Arc::new(Mutex::new(vec![0.0; classes * m * channels])),
            cfg: cfg.clone(),
            counterfactual,
        }
    }

    /// The scale of the normalised features before the classifier.
    pub fn logit_scale(&self) -> f32 {
        self.cfg.logit_scale
    }

    /// Attention, pooled features and class scores of maps `[n, C, h, w]`.
    pub fn forward(&self, map: Tensor<B, 4>) -> WsDanOut<B> {
        let attention = relu(self.attention.forward(map.clone()));
        let features = bap(attention.clone(), map.clone());
        let logits = self.fc.forward(features.clone().mul_scalar(self.cfg.logit_scale));
        WsDanOut { logits, features, attention, map }
    }

    /// The loss of a batch: the raw view's output, and the crop's and the drop's when augmented;
    /// updates the centres from the raw view.
    pub fn loss(&self, raw: WsDanOut<B>, augmented: Option<[WsDanOut<B>; 2]>, labels: &Tensor<B, 1, Int>, label_vec: &[usize]) -> StepLoss<B> {
        let cfg = &self.cfg;
        let got = hits(&raw.logits, label_vec);
        let centre = self.centre_loss(raw.features.clone(), label_vec, true).mul_scalar(cfg.centre_weight);
        let aug = augmented.is_some();
        let mut outs = vec![(raw, if aug { cfg.raw_weight } else { 1.0 })];
        if let Some([crop, drop]) = augmented {
            outs.push((crop, cfg.crop_weight));
            outs.push((drop, cfg.drop_weight));
        }
        let mut loss = centre;
        for (o, w) in &outs {
            loss = loss + cross_entropy(o.logits.clone(), labels.clone()).mul_scalar(*w);
            if self.counterfactual {
                loss = loss + crate::cal::effect_loss(self, o, labels.clone()).mul_scalar(cfg.effect_weight * if aug { 1.0 / 3.0 } else { 1.0 });
            }
        }
        StepLoss { loss, hits: Some(got) }
    }

    /// The centre loss of `features` `[n, M C]` for `labels`, and the centres' update (applied
    /// when `update`).
    pub fn centre_loss(&self, features: Tensor<B, 2>, labels: &[usize], update: bool) -> Tensor<B, 1> {
        let [n, d] = features.dims();
        let device = features.device();
        let mut centres = self.centres.lock().unwrap_or_else(|p| p.into_inner());
        let mut hat = Vec::with_capacity(n * d);
        for &y in labels {
            let c = &centres[y * d..(y + 1) * d];
            let norm = c.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            hat.extend(c.iter().map(|v| v / norm));
        }
        if update {
            let p = host(features.clone());
            for (i, &y) in labels.iter().enumerate() {
                for j in 0..d {
                    centres[y * d + j] += self.cfg.centre_beta * (p[i * d + j] - hat[i * d + j]);
                }
            }
        }
        let hat = Tensor::<B, 2>::from_data(TensorData::new(hat, [n, d]), &device);
        (features - hat).powi_scalar(2).sum_dim(1).mean()
    }
}

/// The model as the engine trains it; `aug` adds the crop and drop terms (round 2).
#[derive(Module, Debug)]
pub struct WsDanMethod<B: Backend> {
    /// The model.
    pub model: WsDan<B>,
    #[module(skip)]
    aug: bool,
}

impl<B: AutodiffBackend> TrainMethod<B> for WsDanMethod<B> {
    type Batch = LocBatch;
    type Input = LocInput<B>;

    fn prepare(&self, b: LocBatch, device: &B::Device) -> LocInput<B> {
        prepare(b, device)
    }

    fn loss(&self, x: &LocInput<B>, _: usize) -> StepLoss<B> {
        let raw = self.model.forward(x.global.clone());
        let augmented = match (&x.parts, self.aug) {
            (Some(parts), true) => {
                let shape = self.crop_shape(x);
                Some([0, 1].map(|k| self.model.forward(crate::nn::crop_map(parts, k, shape))))
            }
            _ => None,
        };
        self.model.loss(raw, augmented, &x.labels, &x.label_vec)
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

impl<B: Backend> WsDanMethod<B> {
    fn crop_shape(&self, x: &LocInput<B>) -> [usize; 3] {
        let [_, c, _, _] = x.global.dims();
        let per = x.parts.as_ref().map_or(0, |p| p.dims()[2]);
        let side = ((per / c.max(1)) as f64).sqrt().round() as usize;
        [c, side, side]
    }
}

/// The attention maps of `maps` on the host: `[n][M][h w]`.
fn attention_host<B: Backend>(model: &WsDan<B>, maps: Tensor<B, 4>) -> (Vec<f32>, usize, usize) {
    let a = relu(model.attention.forward(maps));
    let [_, m, h, _] = a.dims();
    (host(a), m, h)
}

/// A crop box and a drop (`g`, its map, its threshold).
pub type Augmentation = (NormBox, usize, Vec<f32>, f32);

/// WS-DAN's augmentation of one training image from its attention maps `maps_j` (`M` maps of
/// `g x g`): the crop box (a map drawn with probability `∝ sqrt(mean A_k)`, thresholded at
/// `θ_c ~ U` of its maximum, padded) and the drop (another map, drawn without replacement, and
/// its threshold `θ_d ~ U` of its maximum): `(box, g, drop map, threshold)`.
pub fn draw_augmentation(maps_j: &[f32], mm: usize, g: usize, cfg: &WsDanConfig, rng: &mut fgia_core::rng::SplitMix64) -> Augmentation {
    let weights: Vec<f64> = (0..mm).map(|k| f64::from(maps_j[k * g * g..(k + 1) * g * g].iter().sum::<f32>() / (g * g) as f32).max(0.0).sqrt()).collect();
    let pick = |rng: &mut fgia_core::rng::SplitMix64, w: &[f64]| -> usize {
        let total: f64 = w.iter().sum();
        if total <= 0.0 {
            return rng.below(w.len() as u64) as usize;
        }
        let mut t = rng.next_f64() * total;
        for (k, &x) in w.iter().enumerate() {
            if t < x {
                return k;
            }
            t -= x;
        }
        w.len() - 1
    };
    let kc = pick(rng, &weights);
    let mut rest = weights.clone();
    rest[kc] = 0.0;
    let kd = pick(rng, &rest);
    let theta_c = cfg.crop_theta[0] + (cfg.crop_theta[1] - cfg.crop_theta[0]) * rng.next_f64() as f32;
    let theta_d = cfg.drop_theta[0] + (cfg.drop_theta[1] - cfg.drop_theta[0]) * rng.next_f64() as f32;
    let amap = &maps_j[kc * g * g..(kc + 1) * g * g];
    let b = mask_box(amap, g, theta_c, 8 * g).unwrap_or(NormBox::FULL);
    let b = b.padded(cfg.crop_padding * (b.x1 - b.x0), cfg.crop_padding * (b.y1 - b.y0)).clipped().unwrap_or(NormBox::FULL);
    let dmap = maps_j[kd * g * g..(kd + 1) * g * g].to_vec();
    let dmax = dmap.iter().copied().fold(f32::MIN, f32::max);
    (b, g, dmap, theta_d * dmax.max(1e-12))
}

/// The test crop of one image from its attention maps: the box of the mean map at `test_theta`
/// of its maximum, padded, and the mean map.
pub fn test_crop(maps_j: &[f32], mm: usize, g: usize, cfg: &WsDanConfig) -> (NormBox, Vec<f32>) {
    let mean: Vec<f32> = (0..g * g).map(|p| (0..mm).map(|k| maps_j[k * g * g + p]).sum::<f32>() / mm as f32).collect();
    let b = mask_box(&mean, g, cfg.test_theta, 8 * g).unwrap_or(NormBox::FULL);
    let b = b.padded(cfg.test_padding * (b.x1 - b.x0), cfg.test_padding * (b.y1 - b.y0)).clipped().unwrap_or(NormBox::FULL);
    (b, mean)
}

/// Runs WS-DAN (or CAL with `counterfactual`).
pub fn run<B: AutodiffBackend>(s: &Stage<'_, B>, counterfactual: bool) -> Result<Option<Outcome>, TrainError> {
    let cfg = WsDanConfig::from_params(&s.r.method.params).map_err(|message| TrainError::Recipe { path: s.ctx.run_dir.join("recipe.toml"), message })?;
    let [c, _, _] = s.maps.shape;
    let seed = s.r.train.seed;
    B::seed(s.device, seed);
    let model = WsDan::<B>::new(c, s.classes, &cfg, counterfactual, s.device);
    let Some(m) = s.round("round-1-attention", WsDanMethod { model, aug: false }, None, false)? else { return Ok(None) };

    // Round 2's crops and drops, drawn from the round-1 attention of every cached view.
    let valid = m.model.valid();
    let mut drawn: std::collections::HashMap<(usize, usize), Augmentation> = Default::default();
    s.on_maps(&s.train_views(), true, |views, maps| {
        let (a, mm, g) = attention_host(&valid, maps);
        for (j, &(i, v)) in views.iter().enumerate() {
            let mut rng = item_rng(seed, 2, i, v);
            drawn.insert((i, v), draw_augmentation(&a[j * mm * g * g..(j + 1) * mm * g * g], mm, g, &cfg, &mut rng));
        }
    });
    let mut test_boxes: std::collections::HashMap<usize, (NormBox, Vec<f32>, usize)> = Default::default();
    s.on_maps(&s.test_views(), false, |views, maps| {
        let (a, mm, g) = attention_host(&valid, maps);
        for (j, &(i, _)) in views.iter().enumerate() {
            let (b, mean) = test_crop(&a[j * mm * g * g..(j + 1) * mm * g * g], mm, g, &cfg);
            test_boxes.insert(i, (b, mean, g));
        }
    });
    let size = cfg.crop_size;
    let parts = s.crops(
        if counterfactual { "CAL" } else { "WS-DAN" },
        2,
        1,
        size,
        true,
        &|i, v, _| {
            drawn.get(&(i, v)).map(|(b, g, dmap, t)| {
                vec![Sample::from_box(*b, size), Sample { erase: Some((*g, dmap.clone(), *t)), ..Sample::from_box(NormBox::FULL, size) }]
            })
        },
        &|i, _| test_boxes.get(&i).map(|(b, _, _)| vec![Sample::from_box(*b, size)]),
    )?;
    let Some(m) = s.round("round-2-augmented", WsDanMethod { model: m.model, aug: true }, Some(&parts), false)? else { return Ok(None) };

    // Test: raw and attention crop, probabilities averaged.
    let model = m.model.valid();
    let shape = parts.shape;
    let mut raw_hits = (0usize, 0usize);
    let mut preds: std::collections::HashMap<usize, usize> = Default::default();
    let (top1, n) = s.evaluate(Some(&parts), |x| {
        let raw = model.forward(x.global.clone());
        let parts = x.parts.as_ref().expect("test crops");
        let crop = model.forward(crate::nn::crop_map(parts, 0, shape));
        raw_hits.0 += hits(&raw.logits, &x.label_vec);
        raw_hits.1 += x.label_vec.len();
        let p = (probs(raw.logits) + probs(crop.logits)).div_scalar(2.0);
        let scores = host(p);
        for (j, &(i, _)) in x.views.iter().enumerate() {
            let row = &scores[j * s.classes..(j + 1) * s.classes];
            preds.insert(i, fgia_core::metrics::argmax_rows(row, s.classes)[0]);
        }
        scores
    });
    let looks = look_images(s.ds.test.len())
        .into_iter()
        .filter_map(|i| {
            let (b, mean, g) = test_boxes.get(&i)?;
            Some(Look {
                image: i,
                boxes: vec![(*b, "attention crop".into())],
                heat: Some((*g, mean.clone())),
                caption: preds.get(&i).map(|&p| format!("predicted: {}", s.ds.classes.names[p])).unwrap_or_default(),
                ..Default::default()
            })
        })
        .collect();
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".into(), top1);
    metrics.insert("top1_raw_only".into(), 100.0 * raw_hits.0 as f64 / raw_hits.1.max(1) as f64);
    metrics.insert("test_images".into(), n as f64);
    metrics.insert("attentions".into(), cfg.attentions as f64);
    let name = if counterfactual { "CAL" } else { "WS-DAN" };
    Ok(Some(Outcome {
        metrics,
        trained_layers: format!(
            "{name}: the 1x1 attention ({c} to {}) and the bias-free classifier on the pooled {} x {c} features (backbone frozen)",
            cfg.attentions, cfg.attentions
        ),
        loss: format!(
            "{} CE(raw) + {} CE(crop) + {} CE(drop) (round 2; round 1: CE(raw)) + {} centre loss with β = {}{}",
            cfg.raw_weight,
            cfg.crop_weight,
            cfg.drop_weight,
            cfg.centre_weight,
            cfg.centre_beta,
            if counterfactual { format!(" + {} CE(counterfactual effect) over the raw, crop and drop views", cfg.effect_weight) } else { String::new() }
        ),
        deviations: vec![format!("crops and drops resampled at {size} px")],
        tta: format!(
            "the raw image and its attention crop (mean attention ≥ {} of its maximum, padding {}), probabilities averaged",
            cfg.test_theta, cfg.test_padding
        ),
        looks,
    }))
}

/// The deviations of every end-to-end WS-DAN run.
pub const LIVE_DEVIATIONS: &[&str] = &[
    "attention: a new 1x1 convolution with ReLU on the last map, without batch norm",
    "the class centres and the augmentation's random stream are process state, not checkpointed: a resumed run restarts them",
    "not in the survey's Table 2",
];

/// WS-DAN (or CAL) end to end (`mode = "end-to-end"`): every step draws each training image's
/// crop and drop from its current attention (detached, as the authors' code), resamples them from
/// the image's pixels, and runs the raw image, the crop and the drop through the backbone it
/// trains, with the full loss.
#[derive(Module, Debug)]
pub struct WsDanLive<B: Backend> {
    net: Network<B>,
    /// The model.
    pub model: WsDan<B>,
    #[module(skip)]
    rng: Arc<Mutex<fgia_core::rng::SplitMix64>>,
    backbone_lr_mult: f64,
}

/// The pixels `[n, 3, s, s]` with the drop applied: zero where the bilinearly upsampled `g x g`
/// map is at or above the threshold, one mask per item.
fn drop_pixels<B: Backend>(pixels: Tensor<B, 4>, drops: &[(usize, Vec<f32>, f32)]) -> Tensor<B, 4> {
    let [n, ch, s, _] = pixels.dims();
    let mut keep = Vec::with_capacity(n * s * s);
    for (g, map, t) in drops {
        for y in 0..s {
            for x in 0..s {
                let v = crate::geometry::map_at(map, *g, (x as f32 + 0.5) / s as f32, (y as f32 + 0.5) / s as f32);
                keep.push(if v >= *t { 0.0f32 } else { 1.0 });
            }
        }
    }
    let keep = Tensor::<B, 4>::from_data(TensorData::new(keep, [n, 1, s, s]), &pixels.device()).repeat_dim(1, ch);
    pixels * keep
}

/// The crops of `pixels` at one box per item, zoomed to `size x size`.
fn box_pixels<B: Backend>(pixels: Tensor<B, 4>, boxes: &[NormBox], size: usize) -> Tensor<B, 4> {
    let device = pixels.device();
    let n = boxes.len();
    let edge = |f: fn(&NormBox) -> f32| Tensor::<B, 1>::from_data(TensorData::new(boxes.iter().map(f).collect::<Vec<_>>(), [n]), &device);
    crate::geometry::box_zoom(pixels, edge(|b| b.x0), edge(|b| b.y0), edge(|b| b.x1), edge(|b| b.y1), size, size)
}

impl<B: AutodiffBackend> TrainMethod<B> for WsDanLive<B> {
    type Batch = MapBatch;
    type Input = LiveInput<B>;

    fn prepare(&self, b: MapBatch, device: &B::Device) -> LiveInput<B> {
        prepare_live(b, device)
    }

    fn loss(&self, x: &LiveInput<B>, _: usize) -> StepLoss<B> {
        let cfg = &self.model.cfg;
        let raw = self.model.forward(trunk(&self.net, x.pixels.clone()));
        let [_, mm, g, _] = raw.attention.dims();
        let a = host(raw.attention.clone());
        let mut boxes = Vec::new();
        let mut drops = Vec::new();
        {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            for j in 0..x.label_vec.len() {
                let (b, g, dmap, t) = draw_augmentation(&a[j * mm * g * g..(j + 1) * mm * g * g], mm, g, cfg, &mut rng);
                boxes.push(b);
                drops.push((g, dmap, t));
            }
        }
        let size = cfg.crop_size;
        let crop = self.model.forward(trunk(&self.net, box_pixels(x.pixels.clone(), &boxes, size)));
        let dropped = drop_pixels(x.pixels.clone(), &drops);
        let drop = self.model.forward(trunk(&self.net, box_pixels(dropped, &vec![NormBox::FULL; boxes.len()], size)));
        self.model.loss(raw, Some([crop, drop]), &x.labels, &x.label_vec)
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        backbone_groups(&self.net, self, grads, self.backbone_lr_mult)
    }
}

/// Runs WS-DAN (or CAL with `counterfactual`) end to end.
pub fn run_live<B: AutodiffBackend>(s: &LiveStage<'_, B>, counterfactual: bool) -> Result<Option<Outcome>, TrainError> {
    let cfg = WsDanConfig::from_params(&s.r.method.params).map_err(|message| TrainError::Recipe { path: s.ctx.run_dir.join("recipe.toml"), message })?;
    let [c, _, _] = s.shape;
    let seed = s.r.train.seed;
    B::seed(s.device, seed);
    let model = WsDanLive {
        net: s.net.clone(),
        model: WsDan::<B>::new(c, s.classes, &cfg, counterfactual, s.device),
        rng: Arc::new(Mutex::new(fgia_core::rng::SplitMix64::new(seed ^ 0x5eed))),
        backbone_lr_mult: s.r.train.backbone_lr_mult,
    };
    let Some(m) = s.train(model, false)? else { return Ok(None) };
    let m = m.valid();
    let classes = s.classes;
    let looks_at = look_images(s.ds.test.len());
    let mut looks = Vec::new();
    let mut raw_hits = (0usize, 0usize);
    let (top1, n) = s.evaluate(|x| {
        let raw = m.model.forward(trunk(&m.net, x.pixels.clone()));
        let [_, mm, g, _] = raw.attention.dims();
        let a = host(raw.attention.clone());
        let crops: Vec<(NormBox, Vec<f32>)> = (0..x.label_vec.len()).map(|j| test_crop(&a[j * mm * g * g..(j + 1) * mm * g * g], mm, g, &cfg)).collect();
        let boxes: Vec<NormBox> = crops.iter().map(|c| c.0).collect();
        let crop = m.model.forward(trunk(&m.net, box_pixels(x.pixels.clone(), &boxes, cfg.crop_size)));
        raw_hits.0 += hits(&raw.logits, &x.label_vec);
        raw_hits.1 += x.label_vec.len();
        let scores = host((probs(raw.logits) + probs(crop.logits)).div_scalar(2.0));
        for (j, &i) in x.items.iter().enumerate().filter(|(_, i)| looks_at.contains(i)) {
            let pred = fgia_core::metrics::argmax_rows(&scores[j * classes..(j + 1) * classes], classes)[0];
            looks.push(Look {
                image: i,
                boxes: vec![(crops[j].0, "attention crop".into())],
                heat: Some((g, crops[j].1.clone())),
                caption: format!("predicted: {}", s.ds.classes.names[pred]),
                ..Default::default()
            });
        }
        scores
    })?;
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".into(), top1);
    metrics.insert("top1_raw_only".into(), 100.0 * raw_hits.0 as f64 / raw_hits.1.max(1) as f64);
    metrics.insert("test_images".into(), n as f64);
    metrics.insert("attentions".into(), cfg.attentions as f64);
    let name = if counterfactual { "CAL" } else { "WS-DAN" };
    Ok(Some(Outcome {
        metrics,
        trained_layers: format!(
            "{name}: the backbone (at {} times the rate), the 1x1 attention ({c} to {}) and the bias-free classifier on the pooled {} x {c} features",
            s.r.train.backbone_lr_mult, cfg.attentions, cfg.attentions
        ),
        loss: format!(
            "{} CE(raw) + {} CE(crop) + {} CE(drop), crop and drop redrawn every step from the current attention, + {} centre loss with β = {}{}",
            cfg.raw_weight,
            cfg.crop_weight,
            cfg.drop_weight,
            cfg.centre_weight,
            cfg.centre_beta,
            if counterfactual { format!(" + {} CE(counterfactual effect) over the raw, crop and drop views", cfg.effect_weight) } else { String::new() }
        ),
        deviations: vec![format!("crops and drops resampled at {} px", cfg.crop_size)],
        tta: format!(
            "the raw image and its attention crop (mean attention ≥ {} of its maximum, padding {}), probabilities averaged",
            cfg.test_theta, cfg.test_padding
        ),
        looks,
    }))
}
