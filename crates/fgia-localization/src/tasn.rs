//! TASN: "Looking for the Devil in the Details: Learning Trilinear Attention Sampling Network for
//! Fine-grained Image Recognition", Zheng, Fu, Zha and Luo, CVPR 2019 (survey §5.1.3). Recipe:
//! `recipes/table2/tasn.toml`.
//!
//! **Attention.** An attention network gives `X ∈ R^{c×hw}` (the authors: a ResNet-18 with
//! multi-dilation blocks, conv3x3 at dilations 1 and 2 with shared weights, summed) trained by its
//! own cross-entropy. **Trilinear attention**: `N = softmax_row(7 X)` (over positions),
//! `B = softmax_row(N Xᵀ)` (over channels), `M = B X`: `c` attention maps, gradient blocked.
//!
//! **Samplers.** The structure-preserved map is the sum of the channels of `M` whose totals are
//! distinct, squared; the detail-preserved map one such channel drawn at random in training
//! (their sum at test). Each map is upsampled, its row and column maxima become marginal
//! densities, and their inverse CDFs give a separable grid ([`crate::geometry::tasn_grid`]; the
//! zoom capped at `dense = 4` times the uniform density, 5 rounds), which resamples the image:
//! `I_s` (structure) and `I_d` (detail).
//!
//! **Part and master nets.** One backbone on both; a part classifier on `I_d`, a master classifier
//! on `I_s`, and a shared classifier on both. The master is distilled from the part net:
//! `L_kd = −Σ softmax(z_part / T) log softmax(z_master / T)` with `T = 10` (part targets detached,
//! no `T²` factor, as the authors' symbol). Loss: `0.5 (CE_part + CE_master + CE_shared(I_d) +
//! CE_shared(I_s)) + 1 · L_kd` (the authors' gradient scales), plus the attention net's
//! cross-entropy in round 1. Prediction: the shared classifier on `I_s`.
//!
//! **End to end** (`mode = "end-to-end"`, [`TasnJoint`]): attention and nets train together
//! on the live backbone, both samplers redrawn every step from the live map and resampled from
//! the pixels ([`LIVE_DEVIATIONS`]).
//!
//! **Deviations of the cached rounds** (also in [`DEVIATIONS`]): cached rounds (round 1 trains the attention layers and
//! their classifier on the frozen backbone's cached map, one conv3x3 at dilations 1 and 2 with
//! shared weights, instead of a separate ResNet-18; the samples are drawn once per cached view;
//! round 2 trains the classifiers on the samples' pooled features); the cap is applied in every
//! clipping round (the authors' later rounds re-clip at the current maximum).

use std::collections::HashMap;

use burn::module::{AutodiffModule, Param};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, softmax};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use fgia_core::datasets::Record;
use fgia_core::imaging::ViewGeometry;
use fgia_train::TrainError;
use fgia_train::engine::{ParamGroup, StepLoss, TrainMethod, single_group};
use serde::{Deserialize, Serialize};

use crate::geometry::{map_at, tasn_grid};
use crate::live::{HostCrops, LiveStage};
use crate::looks::Look;
use crate::looks::thin_grid;
use crate::nn::{crop, cross_entropy, gap, hits, host, item_rng, soft_cross_entropy};
use crate::run::{LocBatch, LocInput, Outcome, Sample, Stage, look_images, prepare};

/// The deviations of every TASN run.
pub const DEVIATIONS: &[&str] = &[
    "attention layers (conv3x3 at dilations 1 and 2, shared weights) on the frozen backbone's cached map instead of a separate ResNet-18; structure and detail samples drawn once per cached view (cached rounds)",
    "the zoom cap applied in every clipping round",
];

/// TASN's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasnConfig {
    /// Attention channels `c`.
    pub channels: usize,
    /// Scale inside the spatial softmax.
    pub scale: f32,
    /// Side of the samples (the authors: 224 from a 512 input).
    pub sample_size: usize,
    /// Largest magnification over the uniform density.
    pub dense: f32,
    /// Clipping rounds.
    pub iters: usize,
    /// Distillation temperature.
    pub temperature: f32,
    /// Weight of the distillation.
    pub kd_weight: f32,
    /// Weight of each of the four classification terms.
    pub ce_weight: f32,
    /// Weight of the attention net's cross-entropy (round 1).
    pub att_weight: f32,
}

impl Default for TasnConfig {
    fn default() -> Self {
        TasnConfig { channels: 512, scale: 7.0, sample_size: 224, dense: 4.0, iters: 5, temperature: 10.0, kd_weight: 1.0, ce_weight: 0.5, att_weight: 1.0 }
    }
}

impl TasnConfig {
    /// Parses and validates `[method.params]`.
    pub fn from_params(p: &toml::Table) -> Result<Self, String> {
        let c: TasnConfig = crate::recipe::params(p)?;
        if c.channels == 0 || c.channels > 4096 || !(16..=1024).contains(&c.sample_size) || c.iters > 100 {
            return Err(format!("channels {} in 1..=4096, sample_size {} in 16..=1024, iters {} <= 100", c.channels, c.sample_size, c.iters));
        }
        for (k, v) in [("scale", c.scale), ("dense", c.dense), ("temperature", c.temperature)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{k} {v} must be positive"));
            }
        }
        for (k, v) in [("kd_weight", c.kd_weight), ("ce_weight", c.ce_weight), ("att_weight", c.att_weight)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{k} {v} must be >= 0"));
            }
        }
        Ok(c)
    }
}

/// The attention layers and their classifier (round 1).
#[derive(Module, Debug)]
pub struct TasnAttention<B: Backend> {
    weight: Param<Tensor<B, 4>>,
    bias: Param<Tensor<B, 1>>,
    fc: Linear<B>,
    #[module(skip)]
    att_weight: f32,
}

impl<B: Backend> TasnAttention<B> {
    /// Attention layers from `c_in` to `c` channels for `classes` classes.
    pub fn new(c_in: usize, c: usize, classes: usize, att_weight: f32, device: &B::Device) -> Self {
        let k = (1.0 / (9.0 * c_in as f64)).sqrt();
        TasnAttention {
            weight: Param::from_tensor(Tensor::random([c, c_in, 3, 3], burn::tensor::Distribution::Uniform(-k, k), device)),
            bias: Param::from_tensor(Tensor::zeros([c], device)),
            fc: LinearConfig::new(c, classes).init(device),
            att_weight,
        }
    }

    /// `X = Σ_d ReLU(conv3x3_d(F))` over dilations 1 and 2, one set of weights.
    pub fn forward(&self, map: Tensor<B, 4>) -> Tensor<B, 4> {
        let conv = |d: usize| relu(conv2d(map.clone(), self.weight.val(), Some(self.bias.val()), ConvOptions::new([1, 1], [d, d], [d, d], 1)));
        conv(1) + conv(2)
    }
}

/// Trilinear attention `M = softmax(softmax(s X) Xᵀ) X`, `[n, c, h w]` from `[n, c, h, w]`.
pub fn trilinear<B: Backend>(x: Tensor<B, 4>, scale: f32) -> Tensor<B, 3> {
    let [n, c, h, w] = x.dims();
    let x = x.reshape([n, c, h * w]);
    let nn = softmax(x.clone().mul_scalar(scale), 2);
    let b = softmax(nn.matmul(x.clone().swap_dims(1, 2)), 2); // [n, c, c]
    b.matmul(x)
}

/// The structure map (squared sum of the channels with distinct totals) and those channels, of
/// one image's `M` (`c x hw`).
pub fn structure_and_channels(m: &[f32], c: usize, hw: usize) -> (Vec<f32>, Vec<usize>) {
    let mut totals: Vec<(usize, f32)> = (0..c).map(|k| (k, m[k * hw..(k + 1) * hw].iter().sum::<f32>())).collect();
    totals.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut keep: Vec<usize> = Vec::new();
    for (j, &(k, t)) in totals.iter().enumerate() {
        if j == 0 || (t - totals[j - 1].1).abs() > 1e-6 * t.abs().max(1.0) {
            keep.push(k);
        }
    }
    keep.sort_unstable();
    let s: Vec<f32> = (0..hw).map(|p| keep.iter().map(|&k| m[k * hw + p]).sum::<f32>().powi(2)).collect();
    (s, keep)
}

fn upsampled(map: &[f32], g: usize, res: usize) -> Vec<f32> {
    (0..res * res).map(|p| map_at(map, g, ((p % res) as f32 + 0.5) / res as f32, ((p / res) as f32 + 0.5) / res as f32)).collect()
}

impl<B: AutodiffBackend> TrainMethod<B> for TasnAttention<B> {
    type Batch = LocBatch;
    type Input = LocInput<B>;

    fn prepare(&self, b: LocBatch, device: &B::Device) -> LocInput<B> {
        prepare(b, device)
    }

    fn loss(&self, x: &LocInput<B>, _: usize) -> StepLoss<B> {
        let logits = self.fc.forward(gap(self.forward(x.global.clone())));
        let got = hits(&logits, &x.label_vec);
        StepLoss { loss: cross_entropy(logits, x.labels.clone()).mul_scalar(self.att_weight), hits: Some(got) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

/// The part, master and shared classifiers with distillation (round 2).
#[derive(Module, Debug)]
pub struct TasnNets<B: Backend> {
    part: Linear<B>,
    master: Linear<B>,
    shared: Linear<B>,
    #[module(skip)]
    cfg: TasnConfig,
}

impl<B: AutodiffBackend> TrainMethod<B> for TasnNets<B> {
    type Batch = LocBatch;
    type Input = LocInput<B>;

    fn prepare(&self, b: LocBatch, device: &B::Device) -> LocInput<B> {
        prepare(b, device)
    }

    fn loss(&self, x: &LocInput<B>, _: usize) -> StepLoss<B> {
        let parts = x.parts.as_ref().expect("samples");
        let (fs, fd) = (crop(parts, 0), crop(parts, 1));
        let zp = self.part.forward(fd.clone());
        let zm = self.master.forward(fs.clone());
        let zs = self.shared.forward(fs);
        let got = hits(&zs, &x.label_vec);
        let t = self.cfg.temperature;
        let target = softmax(zp.clone().detach().div_scalar(t), 1);
        let kd = soft_cross_entropy(zm.clone().div_scalar(t), target);
        let y = || x.labels.clone();
        let ce = cross_entropy(zp, y()) + cross_entropy(zm, y()) + cross_entropy(self.shared.forward(fd), y()) + cross_entropy(zs, y());
        StepLoss { loss: ce.mul_scalar(self.cfg.ce_weight) + kd.mul_scalar(self.cfg.kd_weight), hits: Some(got) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

/// A view with its structure and detail maps.
type ViewMaps = ((usize, usize), Vec<f32>, Vec<f32>);

/// Runs TASN.
pub fn run<B: AutodiffBackend>(s: &Stage<'_, B>) -> Result<Option<Outcome>, TrainError> {
    let cfg = TasnConfig::from_params(&s.r.method.params).map_err(|message| TrainError::Recipe { path: s.ctx.run_dir.join("recipe.toml"), message })?;
    let [c_in, _, _] = s.maps.shape;
    B::seed(s.device, s.r.train.seed);
    let att = TasnAttention::<B>::new(c_in, cfg.channels, s.classes, cfg.att_weight, s.device);
    let Some(att) = s.round("round-1-attention", att, None, false)? else { return Ok(None) };
    let att = att.valid();
    let seed = s.r.train.seed;
    let res = 8 * s.maps.shape[1];
    let size = cfg.sample_size;
    // Per view: the structure and detail maps at `res x res`.
    let maps_of = |views: &[(usize, usize)], maps: Tensor<B::InnerBackend, 4>, train: bool| -> Vec<ViewMaps> {
        let pick = |j: usize, keep: &[usize]| {
            let (i, v) = views[j];
            (train && !keep.is_empty()).then(|| keep[item_rng(seed, 2, i, v).below(keep.len() as u64) as usize])
        };
        tasn_maps(&att, &cfg, maps, pick).into_iter().zip(views).map(|((st, de), v)| (*v, st, de)).collect()
    };
    let mut train_maps: HashMap<(usize, usize), (Vec<f32>, Vec<f32>)> = HashMap::new();
    s.on_maps(&s.train_views(), true, |views, maps| {
        for (v, st, de) in maps_of(views, maps, true) {
            train_maps.insert(v, (st, de));
        }
    });
    let mut test_maps: HashMap<usize, (Vec<f32>, Vec<f32>)> = HashMap::new();
    s.on_maps(&s.test_views(), false, |views, maps| {
        for (v, st, de) in maps_of(views, maps, false) {
            test_maps.insert(v.0, (st, de));
        }
    });
    let grid = |m: &[f32], out: usize| tasn_grid(m, res, res, out, cfg.dense, cfg.iters);
    let two = |(st, de): &(Vec<f32>, Vec<f32>)| vec![Sample { grid: grid(st, size), erase: None }, Sample { grid: grid(de, size), erase: None }];
    let parts = s.crops("TASN", 2, 2, size, false, &|i, v, _| train_maps.get(&(i, v)).map(two), &|i, _| test_maps.get(&i).map(two))?;
    let [c, _, _] = parts.shape;
    B::seed(s.device, seed ^ 0x2);
    let lin = || LinearConfig::new(c, s.classes).init::<B>(s.device);
    let nets = TasnNets { part: lin(), master: lin(), shared: lin(), cfg: cfg.clone() };
    let Some(nets) = s.round("round-2-part-master", nets, Some(&parts), false)? else { return Ok(None) };
    let nets = nets.valid();
    let mut preds = HashMap::new();
    let (mut master_hits, mut part_hits, mut total) = (0usize, 0usize, 0usize);
    let (top1, n) = s.evaluate(Some(&parts), |x| {
        let p = x.parts.as_ref().expect("samples");
        master_hits += hits(&nets.master.forward(crop(p, 0)), &x.label_vec);
        part_hits += hits(&nets.part.forward(crop(p, 1)), &x.label_vec);
        total += x.label_vec.len();
        let scores = host(nets.shared.forward(crop(p, 0)));
        for (j, &(i, _)) in x.views.iter().enumerate() {
            preds.insert(i, fgia_core::metrics::argmax_rows(&scores[j * s.classes..(j + 1) * s.classes], s.classes)[0]);
        }
        scores
    });
    let looks = look_images(s.ds.test.len())
        .into_iter()
        .filter_map(|i| {
            let (st, de) = test_maps.get(&i)?;
            Some(Look {
                image: i,
                heat: Some((res, st.clone())),
                grids: vec![(32, grid(st, 32), "structure sample".into()), (32, grid(de, 32), "detail sample".into())],
                caption: preds.get(&i).map(|&p| format!("predicted: {}", s.ds.classes.names[p])).unwrap_or_default(),
                ..Default::default()
            })
        })
        .collect();
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".into(), top1);
    metrics.insert("top1_master".into(), 100.0 * master_hits as f64 / total.max(1) as f64);
    metrics.insert("top1_part".into(), 100.0 * part_hits as f64 / total.max(1) as f64);
    metrics.insert("test_images".into(), n as f64);
    Ok(Some(Outcome {
        metrics,
        trained_layers: format!(
            "the attention layers ({} channels) and their classifier (round 1); the part, master and shared classifiers (round 2; backbone frozen)",
            cfg.channels
        ),
        loss: format!(
            "{a} CE(attention) (round 1); {w} (CE(part, I_d) + CE(master, I_s) + CE(shared, I_d) + CE(shared, I_s)) + {k} soft CE(master / {t}, softmax(part / {t})) (round 2)",
            a = cfg.att_weight,
            w = cfg.ce_weight,
            k = cfg.kd_weight,
            t = cfg.temperature
        ),
        deviations: vec![format!("samples resampled at {size} px from the {} px view", s.r.data.crop)],
        tta: "none (the shared classifier on the structure sample)".into(),
        looks,
    }))
}

/// The deviations of every end-to-end TASN run.
pub const LIVE_DEVIATIONS: &[&str] = &[
    "one backbone for the attention, the part net and the master net (the paper: a separate ResNet-18 for the attention); the attention's classifier and the part/master nets trained together in every step",
    "the random draws of the samples follow a per-process step counter, not checkpointed: a resumed run draws differently from an uninterrupted one",
];

/// TASN end to end: the attention layers and the part / master / shared classifiers in one
/// module; every step draws the structure and detail samplers from the current trilinear
/// attention of the live map and resamples both from the pixels.
#[derive(Module, Debug)]
pub struct TasnJoint<B: Backend> {
    att: TasnAttention<B>,
    nets: TasnNets<B>,
}

impl<B: AutodiffBackend> TrainMethod<B> for TasnJoint<B> {
    type Batch = LocBatch;
    type Input = LocInput<B>;

    fn prepare(&self, b: LocBatch, device: &B::Device) -> LocInput<B> {
        prepare(b, device)
    }

    fn loss(&self, x: &LocInput<B>, step: usize) -> StepLoss<B> {
        let a = self.att.loss(x, step);
        let p = self.nets.loss(x, step);
        StepLoss { loss: a.loss + p.loss, hits: p.hits }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

/// The structure and detail maps (at `8 h` per side) of each item of maps `[n, C, h, w]`: in
/// training the detail map is one channel drawn among the distinct ones, at test their sum.
fn tasn_maps<B: Backend>(
    att: &TasnAttention<B>,
    cfg: &TasnConfig,
    maps: Tensor<B, 4>,
    mut detail_channel: impl FnMut(usize, &[usize]) -> Option<usize>,
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let [n, _, h, w] = maps.dims();
    let res = 8 * h;
    let m = host(trilinear(att.forward(maps), cfg.scale));
    let (c, hw) = (cfg.channels, h * w);
    (0..n)
        .map(|j| {
            let mj = &m[j * c * hw..(j + 1) * c * hw];
            let (structure, keep) = structure_and_channels(mj, c, hw);
            let detail: Vec<f32> = match detail_channel(j, &keep) {
                Some(k) => mj[k * hw..(k + 1) * hw].to_vec(),
                None => (0..hw).map(|p| keep.iter().map(|&k| mj[k * hw + p]).sum()).collect(),
            };
            (upsampled(&structure, h, res), upsampled(&detail, h, res))
        })
        .collect()
}

impl<B: Backend> HostCrops<B> for TasnJoint<B> {
    fn crop_spec(&self, _: bool) -> (usize, usize, bool) {
        (2, self.nets.cfg.sample_size, false)
    }

    fn samples(&self, map: Tensor<B, 4>, _: &[Record], items: &[usize], _: &[ViewGeometry], train: bool, draw: u64) -> Vec<Vec<Sample>> {
        let cfg = &self.nets.cfg;
        let [_, _, h, _] = map.dims();
        let res = 8 * h;
        let pick = |j: usize, keep: &[usize]| (train && !keep.is_empty()).then(|| keep[item_rng(draw, 2, items[j], 0).below(keep.len() as u64) as usize]);
        tasn_maps(&self.att, cfg, map, pick)
            .into_iter()
            .map(|(st, de)| {
                let grid = |m: &[f32]| tasn_grid(m, res, res, cfg.sample_size, cfg.dense, cfg.iters);
                vec![Sample { grid: grid(&st), erase: None }, Sample { grid: grid(&de), erase: None }]
            })
            .collect()
    }
}

/// Runs TASN end to end.
pub fn run_live<B: AutodiffBackend>(s: &LiveStage<'_, B>) -> Result<Option<Outcome>, TrainError> {
    let cfg = TasnConfig::from_params(&s.r.method.params).map_err(|message| TrainError::Recipe { path: s.ctx.run_dir.join("recipe.toml"), message })?;
    let [c, _, _] = s.shape;
    let classes = s.classes;
    B::seed(s.device, s.r.train.seed);
    let lin = || LinearConfig::new(c, classes).init::<B>(s.device);
    let joint = TasnJoint {
        att: TasnAttention::new(c, cfg.channels, classes, cfg.att_weight, s.device),
        nets: TasnNets { part: lin(), master: lin(), shared: lin(), cfg: cfg.clone() },
    };
    let Some(live) = s.train_crops(joint, false)? else { return Ok(None) };
    let live = live.valid();
    let looks_at = look_images(s.ds.test.len());
    let mut looks = Vec::new();
    let (mut master_hits, mut part_hits, mut total) = (0usize, 0usize, 0usize);
    let size = cfg.sample_size;
    let (top1, n) = s.evaluate_crops(&live, |x, samples| {
        let nets = &live.m.nets;
        let p = x.parts.as_ref().expect("samples");
        master_hits += hits(&nets.master.forward(crop(p, 0)), &x.label_vec);
        part_hits += hits(&nets.part.forward(crop(p, 1)), &x.label_vec);
        total += x.label_vec.len();
        let scores = host(nets.shared.forward(crop(p, 0)));
        for (j, &(i, _)) in x.views.iter().enumerate().filter(|(_, v)| looks_at.contains(&v.0)) {
            let pred = fgia_core::metrics::argmax_rows(&scores[j * classes..(j + 1) * classes], classes)[0];
            let thin = |k: usize| thin_grid(&samples[j][k].grid, size, 32);
            looks.push(Look {
                image: i,
                grids: vec![(32, thin(0), "structure sample".into()), (32, thin(1), "detail sample".into())],
                caption: format!("predicted: {}", s.ds.classes.names[pred]),
                ..Default::default()
            });
        }
        scores
    })?;
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".into(), top1);
    metrics.insert("top1_master".into(), 100.0 * master_hits as f64 / total.max(1) as f64);
    metrics.insert("top1_part".into(), 100.0 * part_hits as f64 / total.max(1) as f64);
    metrics.insert("test_images".into(), n as f64);
    Ok(Some(Outcome {
        metrics,
        trained_layers: format!(
            "the backbone (at {} times the rate, through the image and both samples), the attention layers ({} channels) and their classifier, the part, master and shared classifiers",
            s.r.train.backbone_lr_mult, cfg.channels
        ),
        loss: format!(
            "{a} CE(attention) + {w} (CE(part, I_d) + CE(master, I_s) + CE(shared, I_d) + CE(shared, I_s)) + {k} soft CE(master / {t}, softmax(part / {t}))",
            a = cfg.att_weight,
            w = cfg.ce_weight,
            k = cfg.kd_weight,
            t = cfg.temperature
        ),
        deviations: vec![format!("samples resampled at {size} px from the {} px view", s.r.data.crop)],
        tta: "none (the shared classifier on the structure sample)".into(),
        looks,
    }))
}
