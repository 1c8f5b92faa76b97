//! RA-CNN: "Look Closer to See Better: Recurrent Attention Convolutional Neural Network for
//! Fine-grained Image Recognition", Fu, Zheng and Mei, CVPR 2017 (survey §5.1.3). Recipe:
//! `recipes/table2/ra-cnn.toml`.
//!
//! **Scales.** Three scales, each a classifier on its input's features; an attention proposal
//! network (APN: two stacked fully connected layers on the scale's flattened map, here after a
//! `1x1` convolution that reduces the channels) gives a square
//! `(t_x, t_y, t_l)` (centre and half side) on its input, which is cropped and zoomed to the next
//! scale. The half side is kept at or above a third of the input's half side (the usual
//! constraint of the reproductions; the paper's APN collapses without one).
//!
//! **Boxcar crop.** `M(x, y) = [h(x − t_x + t_l) − h(x − t_x − t_l)] · [h(y − t_y + t_l) −
//! h(y − t_y − t_l)]`, `h(z) = 1 / (1 + exp(−k z))`, `k = 10` (pixels): `X_att = X ⊙ M`, then
//! zoomed. `M` is differentiable in `t_x`, `t_y`, `t_l` ([`crate::geometry::boxcar_mask`]).
//!
//! **Losses.** Intra-scale `Σ_s CE(Y^(s), y)`; inter-scale ranking
//! `Σ_{s=1,2} max(0, p_t^(s) − p_t^(s+1) + 0.05)` with `p_t` the probability of the true class
//! (the finer scale must be more confident). Training alternates: classifiers with the APNs
//! fixed, then APNs with the classifiers fixed. Prediction: a classifier on the scales' fused
//! features.
//!
//! **End to end** (`mode = "end-to-end"`, [`RaCnnLive`]): the paper's pipeline on pixels.
//! Scale 2 is the boxcar-masked zoom of the view's pixels ([`zoom_to`], `k` per pixel), scale 3
//! that of scale 2's pixels, both inside the step through the same backbone. The classifiers'
//! step (cross-entropies of the three scales and the fusion, boxes detached) trains the backbone
//! and the classifiers; the ranking step trains the APNs through the crops and the backbone,
//! with the backbone's and the classifiers' parameters held fixed. Deviations there (also in
//! [`LIVE_DEVIATIONS`] and the run's record): one backbone for the three scales (the paper has
//! one per scale), the per-batch alternation, no APN pre-training, the `1x1` reduction.
//!
//! **Deviations of the cached rounds** (also in [`DEVIATIONS`]): cached rounds. Round 1 trains APNs and classifiers on
//! the cached last map, zooming in feature space: the boxcar-masked map is RoI-aligned at the box
//! (`grid_sample`) and the second APN reads that zoomed map; the alternation is per batch (two
//! optimiser steps: cross-entropies with the boxes detached, then the ranking loss with the
//! classifiers detached), not "until convergence". The boxes of scales 2 and 3 are then cropped
//! from the pixels once per cached view and run through the frozen backbone; round 2 trains the
//! three classifiers and the fusion on the pooled features. No APN pre-training on the
//! strongest-response square: the APNs start at the centre with half the side. A `1x1`
//! convolution reduces the map to `apn_channels` before the APN's fully connected layers (on the
//! CPU, a 1024-wide layer on the flattened 320-channel map trained at 3 images/s).

use std::collections::HashMap;

use burn::module::AutodiffModule;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid, softmax};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::module::linear;
use fgia_nn::Network;
use fgia_train::TrainError;
use fgia_train::engine::{ParamGroup, StepLoss, TrainMethod, single_group};
use fgia_train::sources::MapBatch;
use serde::{Deserialize, Serialize};

use crate::geometry::{NormBox, box_zoom, boxcar_mask};
use crate::live::{LiveInput, LiveStage, backbone_groups, prepare_live, trunk};
use crate::looks::Look;
use crate::nn::{crop, cross_entropy, gap, hits, host, trainable};
use crate::run::{LocBatch, LocInput, Outcome, Sample, Stage, look_images, prepare};

/// The deviations of every RA-CNN run.
pub const DEVIATIONS: &[&str] = &[
    "round 1 zooms in feature space (boxcar-masked cached map, RoI-aligned at the box) and alternates per batch; scale-2 and scale-3 crops drawn once per cached view (cached rounds)",
    "no APN pre-training on the strongest-response square (the APNs start centred at half the side); a 1x1 channel reduction before the APN's fully connected layers",
];

/// The deviations of every end-to-end RA-CNN run.
pub const LIVE_DEVIATIONS: &[&str] = &[
    "no APN pre-training on the strongest-response square (the APNs start centred at half the side); a 1x1 channel reduction before the APN's fully connected layers",
];

/// RA-CNN's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaCnnConfig {
    /// Width of the APN's hidden layer.
    pub apn_hidden: usize,
    /// Channels of the `1x1` reduction before the APN's fully connected layers.
    pub apn_channels: usize,
    /// Steepness `k` of the boxcar (per pixel of the view).
    pub k: f32,
    /// Ranking margin.
    pub margin: f32,
    /// Smallest half side, as a fraction of the input's half side.
    pub min_half: f32,
    /// Weight of the ranking loss.
    pub rank_weight: f32,
    /// Weight of each scale's cross-entropy.
    pub ce_weight: f32,
    /// Side of the resampled crops (the paper: 224).
    pub part_size: usize,
}

impl Default for RaCnnConfig {
    fn default() -> Self {
        RaCnnConfig { apn_hidden: 1024, apn_channels: 32, k: 10.0, margin: 0.05, min_half: 1.0 / 3.0, rank_weight: 1.0, ce_weight: 1.0, part_size: 224 }
    }
}

impl RaCnnConfig {
    /// Parses and validates `[method.params]`.
    pub fn from_params(p: &toml::Table) -> Result<Self, String> {
        let c: RaCnnConfig = crate::recipe::params(p)?;
        if c.apn_hidden == 0
            || c.apn_hidden > 8192
            || c.apn_channels == 0
            || c.apn_channels > 4096
            || !(16..=1024).contains(&c.part_size)
            || !(c.min_half > 0.0 && c.min_half < 1.0)
        {
            return Err(format!("apn_hidden {} in 1..=8192, part_size {} in 16..=1024, min_half {} in (0, 1)", c.apn_hidden, c.part_size, c.min_half));
        }
        for (key, v) in [("k", c.k), ("margin", c.margin), ("rank_weight", c.rank_weight), ("ce_weight", c.ce_weight)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{key} {v} must be >= 0"));
            }
        }
        Ok(c)
    }
}

/// An attention proposal network: `(t_x, t_y, t_l)` in the unit square of its input, `[n]` each.
#[derive(Module, Debug)]
pub struct Apn<B: Backend> {
    reduce: Conv2d<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
    #[module(skip)]
    min_half: f32,
}

impl<B: Backend> Apn<B> {
    fn new(channels: usize, reduced: usize, positions: usize, hidden: usize, min_half: f32, device: &B::Device) -> Self {
        let mut fc2 = LinearConfig::new(hidden, 3).init(device);
        // Start centred with half the side: zero output weights and zero bias (σ(0) = 1/2).
        fc2.weight = trainable(fc2.weight, |w| w.zeros_like());
        Apn {
            reduce: Conv2dConfig::new([channels, reduced], [1, 1]).init(device),
            fc1: LinearConfig::new(reduced * positions, hidden).init(device),
            fc2,
            min_half,
        }
    }

    /// The square of maps `[n, C, h, w]`.
    pub fn forward(&self, map: Tensor<B, 4>) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>) {
        let r = relu(self.reduce.forward(map));
        let [n, c, h, w] = r.dims();
        let t = sigmoid(self.fc2.forward(relu(self.fc1.forward(r.reshape([n, c * h * w])))));
        let col = |k: usize| t.clone().slice([0..n, k..k + 1]).reshape([n]);
        let lo = self.min_half * 0.5;
        (col(0), col(1), col(2).mul_scalar(0.5 - lo).add_scalar(lo))
    }
}

/// Round 1: two APNs and the three scale classifiers, alternating per batch.
#[derive(Module, Debug)]
pub struct RaCnn<B: Backend> {
    apn1: Apn<B>,
    apn2: Apn<B>,
    cls: Vec<Linear<B>>,
    #[module(skip)]
    cfg: RaCnnConfig,
    #[module(skip)]
    view: f32,
}

/// The zoom of `map` at the squares `(tx, ty, tl)` (unit coordinates): boxcar mask, then RoI-align
/// to the map's own size ([`box_zoom`]).
pub fn zoom<B: Backend>(map: Tensor<B, 4>, tx: Tensor<B, 1>, ty: Tensor<B, 1>, tl: Tensor<B, 1>, k: f32, view: f32) -> Tensor<B, 4> {
    let [_, _, h, w] = map.dims();
    // The mask on the map's cells, in view pixels.
    let px = view / w as f32;
    let mask = boxcar_mask(tx.clone().mul_scalar(w as f32), ty.clone().mul_scalar(h as f32), tl.clone().mul_scalar(w as f32), h, w, k * px);
    let masked = map * mask;
    // RoI-align of the square, as separable bilinear weights (the values of `grid_sample` at the
    // box's affine grid, and about ten times faster through autodiff on the CPU).
    box_zoom(masked, tx.clone() - tl.clone(), ty.clone() - tl.clone(), tx + tl.clone(), ty + tl, h, w)
}

/// The probability of the true class.
fn p_true<B: Backend>(logits: Tensor<B, 2>, labels: &Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    softmax(logits, 1).gather(1, labels.clone().reshape([n, 1])).reshape([n])
}

impl<B: Backend> RaCnn<B> {
    /// The boxes of scales 2 and 3 (scale 3 composed into the view's unit square), as
    /// `(tx, ty, tl)` triples.
    #[allow(clippy::type_complexity)]
    pub fn boxes(&self, map: Tensor<B, 4>) -> ((Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>), (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>), Tensor<B, 4>) {
        let (x1, y1, l1) = self.apn1.forward(map.clone());
        let z2 = zoom(map, x1.clone(), y1.clone(), l1.clone(), self.cfg.k, self.view);
        let (x2, y2, l2) = self.apn2.forward(z2.clone());
        // Scale 3 in the view: centre x1 − l1 + 2 l1 x2, half side 2 l1 l2.
        let x3 = x1.clone() - l1.clone() + l1.clone().mul_scalar(2.0) * x2;
        let y3 = y1.clone() - l1.clone() + l1.clone().mul_scalar(2.0) * y2;
        let l3 = l1.clone().mul_scalar(2.0) * l2;
        ((x1, y1, l1), (x3, y3, l3), z2)
    }
}

impl<B: AutodiffBackend> TrainMethod<B> for RaCnn<B> {
    type Batch = LocBatch;
    type Input = LocInput<B>;

    fn prepare(&self, b: LocBatch, device: &B::Device) -> LocInput<B> {
        prepare(b, device)
    }

    fn steps(&self) -> usize {
        2
    }

    fn loss(&self, x: &LocInput<B>, step: usize) -> StepLoss<B> {
        let map = x.global.clone();
        let ((x1, y1, l1), (x3, y3, l3), _) = self.boxes(map.clone());
        let (k, view) = (self.cfg.k, self.view);
        if step == 0 {
            // Classifiers, boxes fixed.
            let z2 = zoom(map.clone(), x1.detach(), y1.detach(), l1.detach(), k, view);
            let z3 = zoom(map.clone(), x3.detach(), y3.detach(), l3.detach(), k, view);
            let logits: Vec<Tensor<B, 2>> = [map, z2, z3].into_iter().zip(&self.cls).map(|(m, c)| c.forward(gap(m))).collect();
            let got = hits(&logits[0], &x.label_vec);
            let loss = logits.into_iter().map(|l| cross_entropy(l, x.labels.clone())).reduce(|a, b| a + b).expect("three scales");
            StepLoss { loss: loss.mul_scalar(self.cfg.ce_weight), hits: Some(got) }
        } else {
            // APNs, classifiers fixed: the finer scale must be more confident.
            let z2 = zoom(map.clone(), x1, y1, l1, k, view);
            let z3 = zoom(map.clone(), x3, y3, l3, k, view);
            let fixed = |c: &Linear<B>, m: Tensor<B, 4>| linear(gap(m), c.weight.val().detach(), c.bias.as_ref().map(|b| b.val().detach()));
            let p: Vec<Tensor<B, 1>> = [map, z2, z3].into_iter().zip(&self.cls).map(|(m, c)| p_true(fixed(c, m), &x.labels)).collect();
            let rank = relu(p[0].clone() - p[1].clone() + self.cfg.margin).mean() + relu(p[1].clone() - p[2].clone() + self.cfg.margin).mean();
            StepLoss { loss: rank.mul_scalar(self.cfg.rank_weight), hits: None }
        }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

/// Round 2: the three scale classifiers and the fusion on pooled features.
#[derive(Module, Debug)]
pub struct Scales<B: Backend> {
    cls: Vec<Linear<B>>,
    fusion: Linear<B>,
}

impl<B: Backend> Scales<B> {
    /// Fusion scores.
    pub fn fuse(&self, global: Tensor<B, 4>, crops: &Tensor<B, 3>) -> Tensor<B, 2> {
        self.fusion.forward(Tensor::cat(vec![gap(global), crop(crops, 0), crop(crops, 1)], 1))
    }
}

impl<B: AutodiffBackend> TrainMethod<B> for Scales<B> {
    type Batch = LocBatch;
    type Input = LocInput<B>;

    fn prepare(&self, b: LocBatch, device: &B::Device) -> LocInput<B> {
        prepare(b, device)
    }

    fn loss(&self, x: &LocInput<B>, _: usize) -> StepLoss<B> {
        let crops = x.parts.as_ref().expect("crops");
        let fused = self.fuse(x.global.clone(), crops);
        let got = hits(&fused, &x.label_vec);
        let feats = [gap(x.global.clone()), crop(crops, 0), crop(crops, 1)];
        let mut loss = cross_entropy(fused, x.labels.clone());
        for (f, c) in feats.into_iter().zip(&self.cls) {
            loss = loss + cross_entropy(c.forward(f), x.labels.clone());
        }
        StepLoss { loss, hits: Some(got) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

fn to_box(x: f32, y: f32, l: f32) -> NormBox {
    NormBox { x0: x - l, y0: y - l, x1: x + l, y1: y + l }
}

/// Runs RA-CNN.
pub fn run<B: AutodiffBackend>(s: &Stage<'_, B>) -> Result<Option<Outcome>, TrainError> {
    let cfg = RaCnnConfig::from_params(&s.r.method.params).map_err(|message| TrainError::Recipe { path: s.ctx.run_dir.join("recipe.toml"), message })?;
    let [c, h, w] = s.maps.shape;
    let classes = s.classes;
    B::seed(s.device, s.r.train.seed);
    let lin = |i: usize| LinearConfig::new(i, classes).init::<B>(s.device);
    let model = RaCnn {
        apn1: Apn::new(c, cfg.apn_channels, h * w, cfg.apn_hidden, cfg.min_half, s.device),
        apn2: Apn::new(c, cfg.apn_channels, h * w, cfg.apn_hidden, cfg.min_half, s.device),
        cls: vec![lin(c), lin(c), lin(c)],
        cfg: cfg.clone(),
        view: s.r.data.crop as f32,
    };
    let Some(model) = s.round("round-1-apn", model, None, false)? else { return Ok(None) };
    let m = model.valid();
    let boxes_of = |maps: Tensor<B::InnerBackend, 4>| -> Vec<[NormBox; 2]> {
        let ((x1, y1, l1), (x3, y3, l3), _) = m.boxes(maps);
        let (x1, y1, l1, x3, y3, l3) = (host(x1), host(y1), host(l1), host(x3), host(y3), host(l3));
        (0..x1.len()).map(|j| [to_box(x1[j], y1[j], l1[j]), to_box(x3[j], y3[j], l3[j])]).collect()
    };
    let mut train_boxes: HashMap<(usize, usize), [NormBox; 2]> = HashMap::new();
    s.on_maps(&s.train_views(), true, |views, maps| {
        for (v, b) in views.iter().zip(boxes_of(maps)) {
            train_boxes.insert(*v, b);
        }
    });
    let mut test_boxes: HashMap<usize, [NormBox; 2]> = HashMap::new();
    s.on_maps(&s.test_views(), false, |views, maps| {
        for (v, b) in views.iter().zip(boxes_of(maps)) {
            test_boxes.insert(v.0, b);
        }
    });
    let size = cfg.part_size;
    let to = |b: &[NormBox; 2]| b.iter().map(|x| Sample::from_box(*x, size)).collect::<Vec<_>>();
    let parts = s.crops("RA-CNN", 2, 2, size, false, &|i, v, _| train_boxes.get(&(i, v)).map(to), &|i, _| test_boxes.get(&i).map(to))?;
    B::seed(s.device, s.r.train.seed ^ 0x2);
    let scales = Scales { cls: vec![lin(c), lin(c), lin(c)], fusion: lin(3 * c) };
    let Some(scales) = s.round("round-2-scales", scales, Some(&parts), false)? else { return Ok(None) };
    let scales = scales.valid();
    let mut preds = HashMap::new();
    let mut per_scale = [0usize; 3];
    let mut total = 0usize;
    let (top1, n) = s.evaluate(Some(&parts), |x| {
        let crops = x.parts.as_ref().expect("crops");
        let feats = [gap(x.global.clone()), crop(crops, 0), crop(crops, 1)];
        for (k, (f, cl)) in feats.into_iter().zip(&scales.cls).enumerate() {
            per_scale[k] += hits(&cl.forward(f), &x.label_vec);
        }
        total += x.label_vec.len();
        let scores = host(scales.fuse(x.global.clone(), crops));
        for (j, &(i, _)) in x.views.iter().enumerate() {
            preds.insert(i, fgia_core::metrics::argmax_rows(&scores[j * classes..(j + 1) * classes], classes)[0]);
        }
        scores
    });
    let looks = look_images(s.ds.test.len())
        .into_iter()
        .filter_map(|i| {
            let b = test_boxes.get(&i)?;
            Some(Look {
                image: i,
                boxes: vec![(b[0], "scale 2".into()), (b[1], "scale 3".into())],
                caption: preds.get(&i).map(|&p| format!("predicted: {}", s.ds.classes.names[p])).unwrap_or_default(),
                ..Default::default()
            })
        })
        .collect();
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".into(), top1);
    for (k, h) in per_scale.iter().enumerate() {
        metrics.insert(format!("top1_scale{}", k + 1), 100.0 * *h as f64 / total.max(1) as f64);
    }
    metrics.insert("test_images".into(), n as f64);
    Ok(Some(Outcome {
        metrics,
        trained_layers: format!(
            "two APNs (1x1 reduction to {} channels, {} hidden units) and three scale classifiers (round 1); three scale classifiers and the fusion on the crops (round 2; backbone frozen)",
            cfg.apn_channels, cfg.apn_hidden
        ),
        loss: format!(
            "{} Σ_s CE(scale s) with the boxes detached, alternating per batch with {} Σ max(0, p_t(s) − p_t(s+1) + {}) with the classifiers detached (round 1; boxcar k = {}); CE(fusion) + Σ_s CE(scale s) (round 2)",
            cfg.ce_weight, cfg.rank_weight, cfg.margin, cfg.k
        ),
        deviations: vec![format!("crops of scales 2 and 3 resampled at {size} px")],
        tta: "none (the fusion classifier on the three scales)".into(),
        looks,
    }))
}

/// The boxcar-masked zoom of `x` `[n, C, h, w]` at the squares `(tx, ty, tl)` (unit coordinates
/// of `x`, `[n]` each) to `size x size`; `k` per cell of `x` (per pixel on pixels).
pub fn zoom_to<B: Backend>(x: Tensor<B, 4>, tx: Tensor<B, 1>, ty: Tensor<B, 1>, tl: Tensor<B, 1>, k: f32, size: usize) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    let mask = boxcar_mask(tx.clone().mul_scalar(w as f32), ty.clone().mul_scalar(h as f32), tl.clone().mul_scalar(w as f32), h, w, k);
    box_zoom(x * mask, tx.clone() - tl.clone(), ty.clone() - tl.clone(), tx + tl.clone(), ty + tl, size, size)
}

/// RA-CNN end to end (`mode = "end-to-end"`): the backbone, the two APNs, the three scale
/// classifiers and the fusion in one module. Scale 2 is the boxcar-masked zoom of the pixels,
/// scale 3 that of scale 2's pixels, both inside the step and through the same backbone.
/// Step 0: the scales' and the fusion's cross-entropies train the backbone and the classifiers
/// (boxes detached); step 1: the ranking loss trains the APNs through the crops and the backbone
/// (the backbone's and the classifiers' parameters held fixed).
#[derive(Module, Debug)]
pub struct RaCnnLive<B: Backend> {
    net: Network<B>,
    apn1: Apn<B>,
    apn2: Apn<B>,
    cls: Vec<Linear<B>>,
    fusion: Linear<B>,
    #[module(skip)]
    cfg: RaCnnConfig,
    backbone_lr_mult: f64,
}

/// The three scales of a batch: their maps, and the APNs' squares (scale 2 in the view, scale 3
/// in scale 2).
type ScalesOut<B> = ([Tensor<B, 4>; 3], [(Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>); 2]);

impl<B: Backend> RaCnnLive<B> {
    /// The module over `net`: `dims` are the last map's channels, its positions at the view's
    /// size and at the crops' size.
    pub fn new(net: Network<B>, cfg: &RaCnnConfig, dims: [usize; 3], classes: usize, backbone_lr_mult: f64, device: &B::Device) -> Self {
        let [c, p1, p2] = dims;
        let lin = |i: usize| LinearConfig::new(i, classes).init::<B>(device);
        RaCnnLive {
            net,
            apn1: Apn::new(c, cfg.apn_channels, p1, cfg.apn_hidden, cfg.min_half, device),
            apn2: Apn::new(c, cfg.apn_channels, p2, cfg.apn_hidden, cfg.min_half, device),
            cls: vec![lin(c), lin(c), lin(c)],
            fusion: lin(3 * c),
            cfg: cfg.clone(),
            backbone_lr_mult,
        }
    }

    /// The maps of the three scales of `pixels` through `net`, the boxes detached from the APNs
    /// with `detach`.
    fn scales(&self, net: &Network<B>, pixels: Tensor<B, 4>, detach: bool) -> ScalesOut<B> {
        let (k, size) = (self.cfg.k, self.cfg.part_size);
        let d = |t: Tensor<B, 1>| if detach { t.detach() } else { t };
        let m1 = trunk(net, pixels.clone());
        let (x1, y1, l1) = self.apn1.forward(m1.clone());
        let c2 = zoom_to(pixels, d(x1.clone()), d(y1.clone()), d(l1.clone()), k, size);
        let m2 = trunk(net, c2.clone());
        let (x2, y2, l2) = self.apn2.forward(m2.clone());
        let c3 = zoom_to(c2, d(x2.clone()), d(y2.clone()), d(l2.clone()), k, size);
        let m3 = trunk(net, c3);
        ([m1, m2, m3], [(x1, y1, l1), (x2, y2, l2)])
    }

    /// Fusion scores of the three scales' pooled features.
    fn fuse(&self, maps: &[Tensor<B, 4>; 3]) -> Tensor<B, 2> {
        self.fusion.forward(Tensor::cat(maps.iter().map(|m| gap(m.clone())).collect(), 1))
    }
}

impl<B: AutodiffBackend> TrainMethod<B> for RaCnnLive<B> {
    type Batch = MapBatch;
    type Input = LiveInput<B>;

    fn prepare(&self, b: MapBatch, device: &B::Device) -> LiveInput<B> {
        prepare_live(b, device)
    }

    fn steps(&self) -> usize {
        2
    }

    fn loss(&self, x: &LiveInput<B>, step: usize) -> StepLoss<B> {
        if step == 0 {
            let (maps, _) = self.scales(&self.net, x.pixels.clone(), true);
            let fused = self.fuse(&maps);
            let got = hits(&fused, &x.label_vec);
            let mut loss = cross_entropy(fused, x.labels.clone());
            for (m, c) in maps.into_iter().zip(&self.cls) {
                loss = loss + cross_entropy(c.forward(gap(m)), x.labels.clone()).mul_scalar(self.cfg.ce_weight);
            }
            StepLoss { loss, hits: Some(got) }
        } else {
            // The backbone's parameters take no gradient here; the crops' pixels do.
            let fixed_net = self.net.clone().no_grad();
            let (maps, _) = self.scales(&fixed_net, x.pixels.clone(), false);
            let fixed = |c: &Linear<B>, m: Tensor<B, 4>| linear(gap(m), c.weight.val().detach(), c.bias.as_ref().map(|b| b.val().detach()));
            let p: Vec<Tensor<B, 1>> = maps.into_iter().zip(&self.cls).map(|(m, c)| p_true(fixed(c, m), &x.labels)).collect();
            let rank = relu(p[0].clone() - p[1].clone() + self.cfg.margin).mean() + relu(p[1].clone() - p[2].clone() + self.cfg.margin).mean();
            StepLoss { loss: rank.mul_scalar(self.cfg.rank_weight), hits: None }
        }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        backbone_groups(&self.net, self, grads, self.backbone_lr_mult)
    }
}

/// Runs RA-CNN end to end.
pub fn run_live<B: AutodiffBackend>(s: &LiveStage<'_, B>) -> Result<Option<Outcome>, TrainError> {
    let cfg = RaCnnConfig::from_params(&s.r.method.params).map_err(|message| TrainError::Recipe { path: s.ctx.run_dir.join("recipe.toml"), message })?;
    let [c, h, w] = s.shape;
    let size = cfg.part_size;
    let [_, _, h2, w2] = trunk(&s.net.valid(), Tensor::zeros([1, 3, size, size], s.device)).dims();
    let classes = s.classes;
    B::seed(s.device, s.r.train.seed);
    let model = RaCnnLive::new(s.net.clone(), &cfg, [c, h * w, h2 * w2], classes, s.r.train.backbone_lr_mult, s.device);
    let Some(model) = s.train(model, false)? else { return Ok(None) };
    let m = model.valid();
    let looks_at = look_images(s.ds.test.len());
    let mut looks = Vec::new();
    let mut per_scale = [0usize; 3];
    let mut total = 0usize;
    let (top1, n) = s.evaluate(|x| {
        let (maps, [(x1, y1, l1), (x2, y2, l2)]) = m.scales(&m.net, x.pixels.clone(), true);
        for (k, (f, cl)) in maps.iter().zip(&m.cls).enumerate() {
            per_scale[k] += hits(&cl.forward(gap(f.clone())), &x.label_vec);
        }
        total += x.label_vec.len();
        let scores = host(m.fuse(&maps));
        let (x1, y1, l1, x2, y2, l2) = (host(x1), host(y1), host(l1), host(x2), host(y2), host(l2));
        for (j, &i) in x.items.iter().enumerate().filter(|(_, i)| looks_at.contains(i)) {
            let pred = fgia_core::metrics::argmax_rows(&scores[j * classes..(j + 1) * classes], classes)[0];
            // Scale 3 in the view: centre x1 − l1 + 2 l1 x2, half side 2 l1 l2.
            let (x3, y3, l3) = (x1[j] - l1[j] + 2.0 * l1[j] * x2[j], y1[j] - l1[j] + 2.0 * l1[j] * y2[j], 2.0 * l1[j] * l2[j]);
            looks.push(Look {
                image: i,
                boxes: vec![(to_box(x1[j], y1[j], l1[j]), "scale 2".into()), (to_box(x3, y3, l3), "scale 3".into())],
                caption: format!("predicted: {}", s.ds.classes.names[pred]),
                ..Default::default()
            });
        }
        scores
    })?;
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".into(), top1);
    for (k, h) in per_scale.iter().enumerate() {
        metrics.insert(format!("top1_scale{}", k + 1), 100.0 * *h as f64 / total.max(1) as f64);
    }
    metrics.insert("test_images".into(), n as f64);
    Ok(Some(Outcome {
        metrics,
        trained_layers: format!(
            "the backbone (at {} times the rate), three scale classifiers and the fusion (step 0); two APNs (1x1 reduction to {} channels, {} hidden units) through the crops and the backbone (step 1)",
            s.r.train.backbone_lr_mult, cfg.apn_channels, cfg.apn_hidden
        ),
        loss: format!(
            "CE(fusion) + {} Σ_s CE(scale s) with the boxes detached, alternating per batch with {} Σ max(0, p_t(s) − p_t(s+1) + {}) with the backbone and classifiers fixed (boxcar k = {} per pixel)",
            cfg.ce_weight, cfg.rank_weight, cfg.margin, cfg.k
        ),
        deviations: vec![
            format!("scales 2 and 3 zoomed to {size} px; one backbone shared by the three scales (the paper: one network per scale)"),
            "the classifiers' and the APNs' steps alternate per batch, not until convergence".into(),
        ],
        tta: "none (the fusion classifier on the three scales)".into(),
        looks,
    }))
}
