//! DFL-CNN: "Learning a Discriminative Filter Bank within a CNN for Fine-grained Recognition",
//! Wang, Morariu and Davis, CVPR 2018 (survey §5.1.2). Recipe: `recipes/table2/dfl-cnn.toml`.
//!
//! **Streams.** The G-stream classifies the pooled map. The P-stream's discriminative filter bank
//! is a `1x1` convolution with `k` filters per class (`k = 10`; each a patch detector), followed
//! by global max pooling over positions and a classifier `z_P`. The side branch pools the bank's
//! responses across each class's `k` channels (cross-channel average pooling,
//! [`cross_channel_pool`]) into one score per class, `z_side`, trained directly so that class
//! `c`'s filters fire on class `c`.
//!
//! **Loss and prediction.** `L = CE(z_G) + CE(z_P) + 0.1 CE(z_side)`; prediction
//! `z_G + z_P + 0.1 z_side`.
//!
//! **Non-random initialisation.** For each class, the positions of high feature energy (the l2
//! norm of the map's vector, the 3x3 local maxima, the strongest few per image) of its training
//! images give l2-normalised vectors; k-means clusters them into `k` centres, which initialise that
//! class's `k` filters (bias 0). The paper's description; the public re-implementation skips it.
//!
//! End to end (`mode = "end-to-end"`): the same module on the live backbone's last map
//! ([`crate::live::Live`]), the initialisation from the ImageNet backbone's maps of the training
//! images ([`LIVE_DEVIATIONS`]).
//!
//! **Deviations** (also in [`DEVIATIONS`]): both streams read the frozen backbone's last map (the
//! paper's P-stream reads conv4_3, a higher-resolution layer, and the backbone is fine-tuned in
//! stages); the P-stream's classifier is a linear layer on the pooled responses (the paper's FC).

use burn::module::AutodiffModule;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fgia_train::TrainError;
use fgia_train::engine::{ParamGroup, StepLoss, TrainMethod, single_group};
use serde::{Deserialize, Serialize};

use crate::live::Trunk;
use crate::looks::Look;
use crate::nn::{cross_entropy, gap, gmp, hits, host, trainable};
use crate::run::{LocBatch, LocInput, Outcome, look_images, prepare};

/// The deviations of every DFL-CNN run.
pub const DEVIATIONS: &[&str] = &["the filter bank reads the frozen backbone's last map (7x7 at 224 px), not conv4_3 of a fine-tuned network"];

/// The deviations of every end-to-end DFL-CNN run.
pub const LIVE_DEVIATIONS: &[&str] =
    &["the filter bank reads the backbone's last map, not conv4_3; one end-to-end stage instead of the paper's staged fine-tuning"];

/// DFL-CNN's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DflConfig {
    /// Filters per class `k`.
    pub filters_per_class: usize,
    /// Weights of the G-stream, P-stream and side-branch cross-entropies.
    pub g_weight: f32,
    /// See `g_weight`.
    pub p_weight: f32,
    /// See `g_weight`.
    pub side_weight: f32,
    /// Initialise the bank from k-means of high-energy positions (the paper); `false` draws it.
    pub patch_init: bool,
    /// High-energy positions taken per training image for the initialisation.
    pub init_positions: usize,
}

impl Default for DflConfig {
    fn default() -> Self {
        DflConfig { filters_per_class: 10, g_weight: 1.0, p_weight: 1.0, side_weight: 0.1, patch_init: true, init_positions: 3 }
    }
}

impl DflConfig {
    /// Parses and validates `[method.params]`.
    pub fn from_params(p: &toml::Table) -> Result<Self, String> {
        let c: DflConfig = crate::recipe::params(p)?;
        if c.filters_per_class == 0 || c.filters_per_class > 64 || c.init_positions == 0 || c.init_positions > 64 {
            return Err(format!("filters_per_class {} and init_positions {} must be in 1..=64", c.filters_per_class, c.init_positions));
        }
        for (k, v) in [("g_weight", c.g_weight), ("p_weight", c.p_weight), ("side_weight", c.side_weight)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{k} {v} must be >= 0"));
            }
        }
        Ok(c)
    }
}

/// Cross-channel average pooling: `[n, k C]` responses (class `c`'s filters at `c k .. (c+1) k`)
/// to `[n, C]` class scores.
pub fn cross_channel_pool<B: Backend>(x: Tensor<B, 2>, k: usize) -> Tensor<B, 2> {
    let [n, kc] = x.dims();
    x.reshape([n, kc / k, k]).mean_dim(2).reshape([n, kc / k])
}

/// The two streams and the side branch.
#[derive(Module, Debug)]
pub struct Dfl<B: Backend> {
    g: Linear<B>,
    bank: Conv2d<B>,
    p: Linear<B>,
    #[module(skip)]
    cfg: DflConfig,
}

/// The three score sets of a batch.
pub struct DflOut<B: Backend> {
    /// G-stream.
    pub g: Tensor<B, 2>,
    /// P-stream.
    pub p: Tensor<B, 2>,
    /// Side branch.
    pub side: Tensor<B, 2>,
    /// The bank's responses `[n, k C, h, w]`.
    pub responses: Tensor<B, 4>,
}

impl<B: Backend> Dfl<B> {
    /// Scores of maps `[n, C, h, w]`.
    pub fn forward(&self, map: Tensor<B, 4>) -> DflOut<B> {
        let responses = self.bank.forward(map.clone());
        let pooled = gmp(responses.clone());
        DflOut { g: self.g.forward(gap(map)), p: self.p.forward(pooled.clone()), side: cross_channel_pool(pooled, self.cfg.filters_per_class), responses }
    }

    /// The prediction `z_G + z_P + w_side z_side`.
    pub fn predict(&self, o: &DflOut<B>) -> Tensor<B, 2> {
        o.g.clone() + o.p.clone() + o.side.clone().mul_scalar(self.cfg.side_weight)
    }
}

impl<B: AutodiffBackend> TrainMethod<B> for Dfl<B> {
    type Batch = LocBatch;
    type Input = LocInput<B>;

    fn prepare(&self, b: LocBatch, device: &B::Device) -> LocInput<B> {
        prepare(b, device)
    }

    fn loss(&self, x: &LocInput<B>, _: usize) -> StepLoss<B> {
        let o = self.forward(x.global.clone());
        let got = hits(&self.predict(&o), &x.label_vec);
        let y = || x.labels.clone();
        let c = &self.cfg;
        let loss = cross_entropy(o.g, y()).mul_scalar(c.g_weight)
            + cross_entropy(o.p, y()).mul_scalar(c.p_weight)
            + cross_entropy(o.side, y()).mul_scalar(c.side_weight);
        StepLoss { loss, hits: Some(got) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

/// Plain k-means (Lloyd, `iters` rounds) of unit vectors `x` (`n x d`) into `k` centres, started
/// from evenly spaced samples; returns `k x d` (with fewer samples than `k`, they repeat).
pub fn kmeans(x: &[Vec<f32>], k: usize, iters: usize) -> Vec<Vec<f32>> {
    if x.is_empty() {
        return Vec::new();
    }
    let mut c: Vec<Vec<f32>> = (0..k).map(|j| x[j * x.len() / k.max(1) % x.len()].clone()).collect();
    let d = x[0].len();
    for _ in 0..iters {
        let mut sum = vec![vec![0f64; d]; k];
        let mut cnt = vec![0usize; k];
        for v in x {
            let best = (0..k)
                .max_by(|&a, &b| {
                    let da: f32 = v.iter().zip(&c[a]).map(|(p, q)| p * q).sum();
                    let db: f32 = v.iter().zip(&c[b]).map(|(p, q)| p * q).sum();
                    da.total_cmp(&db)
                })
                .unwrap_or(0);
            cnt[best] += 1;
            for (s, &val) in sum[best].iter_mut().zip(v) {
                *s += f64::from(val);
            }
        }
        for j in 0..k {
            if cnt[j] > 0 {
                let norm = sum[j].iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                c[j] = sum[j].iter().map(|v| (v / norm) as f32).collect();
            }
        }
    }
    c
}

/// Unit vectors at the `per_image` strongest 3x3 energy peaks of one map `[C, h, w]`.
pub fn energy_patches(map: &[f32], c: usize, h: usize, w: usize, per_image: usize) -> Vec<Vec<f32>> {
    let hw = h * w;
    let energy: Vec<f32> = (0..hw).map(|p| (0..c).map(|ch| map[ch * hw + p].powi(2)).sum::<f32>().sqrt()).collect();
    let mut peaks: Vec<usize> = (0..hw)
        .filter(|&p| {
            let (y, x) = ((p / w) as i32, (p % w) as i32);
            (-1..=1).all(|dy| {
                (-1..=1).all(|dx| {
                    let (yy, xx) = (y + dy, x + dx);
                    yy < 0 || xx < 0 || yy >= h as i32 || xx >= w as i32 || energy[yy as usize * w + xx as usize] <= energy[p]
                })
            })
        })
        .collect();
    peaks.sort_by(|&a, &b| energy[b].total_cmp(&energy[a]));
    peaks
        .into_iter()
        .take(per_image)
        .map(|p| {
            let v: Vec<f32> = (0..c).map(|ch| map[ch * hw + p]).collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.into_iter().map(|x| x / n).collect()
        })
        .collect()
}

/// The filter bank (`k` filters per class of `c` channels) initialised from each class's
/// high-energy positions (`per_class[class]`, unit vectors): class `y`'s filters are the `k`
/// k-means centres of its positions, biases zero; every weight stays trainable.
pub fn patch_bank<B: Backend>(c: usize, k: usize, per_class: &[Vec<Vec<f32>>], device: &B::Device) -> Conv2d<B> {
    let classes = per_class.len();
    let mut bank = Conv2dConfig::new([c, k * classes], [1, 1]).init::<B>(device);
    let mut weight = vec![0f32; k * classes * c];
    for (cl, patches) in per_class.iter().enumerate() {
        for (j, centre) in kmeans(patches, k, 10).iter().enumerate() {
            weight[(cl * k + j) * c..(cl * k + j + 1) * c].copy_from_slice(centre);
        }
    }
    let wt = Tensor::<B, 4>::from_data(TensorData::new(weight, [k * classes, c, 1, 1]), device);
    bank.weight = trainable(bank.weight, |_| wt);
    if let Some(b) = bank.bias.take() {
        bank.bias = Some(trainable(b, |t| t.zeros_like()));
    }
    bank
}

/// Runs DFL-CNN.
pub fn run<B: AutodiffBackend, T: Trunk<B>>(s: &T) -> Result<Option<Outcome>, TrainError> {
    let cfg =
        DflConfig::from_params(&s.recipe().method.params).map_err(|message| TrainError::Recipe { path: s.context().run_dir.join("recipe.toml"), message })?;
    let [c, h, w] = s.map_shape();
    let (k, classes) = (cfg.filters_per_class, s.dataset().num_classes());
    B::seed(s.dev(), s.recipe().train.seed);
    let bank = if cfg.patch_init {
        let mut per_class: Vec<Vec<Vec<f32>>> = vec![Vec::new(); classes];
        let train = &s.dataset().train;
        s.each_train_map(&mut |i, m| per_class[train[i].label].extend(energy_patches(m, c, h, w, cfg.init_positions)))?;
        patch_bank(c, k, &per_class, s.dev())
    } else {
        Conv2dConfig::new([c, k * classes], [1, 1]).init::<B>(s.dev())
    };
    let model = Dfl { g: LinearConfig::new(c, classes).init(s.dev()), bank, p: LinearConfig::new(k * classes, classes).init(s.dev()), cfg: cfg.clone() };
    let Some(model) = s.train_round("filter-bank", model, false)? else { return Ok(None) };
    let model = model.valid();
    let looks_at: Vec<usize> = look_images(s.dataset().test.len());
    let mut heats = std::collections::HashMap::new();
    let mut preds = std::collections::HashMap::new();
    let (mut g_hits, mut total) = (0usize, 0usize);
    let (top1, n) = s.evaluate_maps(&mut |x| {
        let o = model.forward(x.global.clone());
        g_hits += hits(&o.g, &x.label_vec);
        total += x.label_vec.len();
        let scores = host(model.predict(&o));
        let resp = host(o.responses);
        for (j, &(i, _)) in x.views.iter().enumerate() {
            let pred = fgia_core::metrics::argmax_rows(&scores[j * classes..(j + 1) * classes], classes)[0];
            preds.insert(i, pred);
            if looks_at.contains(&i) {
                // The strongest response map among the predicted class's filters.
                let base = j * k * classes * h * w;
                let best = (0..k)
                    .max_by(|&a, &b| {
                        let m = |f: usize| resp[base + (pred * k + f) * h * w..base + (pred * k + f + 1) * h * w].iter().copied().fold(f32::MIN, f32::max);
                        m(a).total_cmp(&m(b))
                    })
                    .unwrap_or(0);
                heats.insert(i, resp[base + (pred * k + best) * h * w..base + (pred * k + best + 1) * h * w].iter().map(|v| v.max(0.0)).collect::<Vec<_>>());
            }
        }
        scores
    })?;
    let looks = looks_at
        .into_iter()
        .filter_map(|i| {
            Some(Look {
                image: i,
                heat: Some((h, heats.get(&i)?.clone())),
                caption: preds.get(&i).map(|&p| format!("predicted: {}; map: its strongest filter", s.dataset().classes.names[p])).unwrap_or_default(),
                ..Default::default()
            })
        })
        .collect();
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".into(), top1);
    metrics.insert("top1_g_stream".into(), 100.0 * g_hits as f64 / total.max(1) as f64);
    metrics.insert("test_images".into(), n as f64);
    metrics.insert("filters".into(), (k * classes) as f64);
    Ok(Some(Outcome {
        metrics,
        trained_layers: format!(
            "the G-stream classifier, the filter bank ({k} x {classes} 1x1 filters{}) and the P-stream classifier ({})",
            if cfg.patch_init { ", initialised by k-means of high-energy positions" } else { "" },
            s.trunk_words()
        ),
        loss: format!("{} CE(G) + {} CE(P) + {} CE(side, cross-channel pooled)", cfg.g_weight, cfg.p_weight, cfg.side_weight),
        deviations: Vec::new(),
        tta: "none".into(),
        looks,
    }))
}
