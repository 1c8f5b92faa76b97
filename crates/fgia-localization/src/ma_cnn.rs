//! MA-CNN: "Learning Multi-Attention Convolutional Neural Network for Fine-Grained Image
//! Recognition", Zheng, Fu, Mei and Luo, ICCV 2017 (survey §5.1.3). Recipe:
//! `recipes/table2/ma-cnn.toml`.
//!
//! **Channel grouping.** For each of `N` parts, two fully connected layers map the pooled
//! convolutional features to channel weights `d_i = σ(FC(ReLU(FC(GAP(W)))))`; the part's attention
//! is `M_i = σ(Σ_j d_ij W_j)` (here with the sum divided by the channel count, so that it does not
//! saturate on 320 channels), and its feature `P_i = GAP(W ⊙ M_i)` is classified on its own.
//!
//! **Channel-grouping loss.** With `m_i` the attention normalised to sum to one and `(t_x, t_y)` its
//! peak: `Dis(M_i) = Σ_xy m_i(x,y) [(x − t_x)² + (y − t_y)²]` (compactness; coordinates in the
//! unit square) and `Div(M_i) = Σ_xy m_i(x,y) [max_{k≠i} m_k(x,y) − mrg]` (diversity),
//! `L_cng = Σ_i Dis(M_i) + λ Div(M_i)` with `λ = 2`, `mrg = 0.02` (the paper's values, not
//! checked against code, which was not released).
//!
//! **Part crops.** A square of side 96/448 of the image centred at each attention's peak is
//! zoomed and classified by a part network; the prediction fuses the object and part features
//! (a linear classifier on their concatenation).
//!
//! **End to end** (`mode = "end-to-end"`, [`MaCnnJoint`]): the grouping and the part networks
//! train together on the live backbone, the part squares drawn every step from the current
//! attention and cropped from the pixels ([`LIVE_DEVIATIONS`]).
//!
//! **Deviations of the cached rounds** (also in [`DEVIATIONS`]): cached rounds (round 1 trains the grouping layers,
//! the part classifiers on attention-pooled features and the object classifier jointly with
//! `L_cng`, instead of alternating with convolution updates; the peaks give the crops once per
//! cached view; round 2 trains the part and fusion classifiers on the crops' pooled features);
//! the grouping layers start from random weights (no k-means pre-training on channel peaks);
//! `N = 2` parts.

use std::collections::HashMap;

use burn::module::AutodiffModule;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::backend::AutodiffBackend;
use fgia_core::datasets::Record;
use fgia_core::imaging::ViewGeometry;
use fgia_train::TrainError;
use fgia_train::engine::{ParamGroup, StepLoss, TrainMethod, single_group};
use serde::{Deserialize, Serialize};

use crate::geometry::NormBox;
use crate::live::{HostCrops, LiveStage};
use crate::looks::Look;
use crate::nn::{crop, cross_entropy, gap, hits, host};
use crate::run::{LocBatch, LocInput, Outcome, Sample, Stage, box_of, look_images, prepare};

/// The deviations of every MA-CNN run.
pub const DEVIATIONS: &[&str] = &[
    "grouping layers, part classifiers and L_cng trained jointly on the cached last map (no alternation with convolution updates, no k-means pre-training of the grouping); part crops drawn once per cached view (cached rounds)",
    "part attention σ(Σ_j d_ij W_j / C): the channel sum divided by the channel count",
];

/// MA-CNN's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaCnnConfig {
    /// Parts `N`.
    pub parts: usize,
    /// Weight `λ` of the diversity term.
    pub lambda: f32,
    /// Margin `mrg` of the diversity term.
    pub margin: f32,
    /// Weight of `L_cng` against the cross-entropies.
    pub cng_weight: f32,
    /// Side of the part squares as a fraction of the view (96 / 448).
    pub crop_side: f32,
    /// Side of the resampled part crops.
    pub part_size: usize,
}

impl Default for MaCnnConfig {
    fn default() -> Self {
        MaCnnConfig { parts: 2, lambda: 2.0, margin: 0.02, cng_weight: 1.0, crop_side: 96.0 / 448.0, part_size: 224 }
    }
}

impl MaCnnConfig {
    /// Parses and validates `[method.params]`.
    pub fn from_params(p: &toml::Table) -> Result<Self, String> {
        let c: MaCnnConfig = crate::recipe::params(p)?;
        let valid = (1..=8).contains(&c.parts) && (16..=1024).contains(&c.part_size) && c.crop_side > 0.0 && c.crop_side <= 1.0;
        if !valid {
            return Err(format!("parts {} in 1..=8, part_size {} in 16..=1024, crop_side {} in (0, 1]", c.parts, c.part_size, c.crop_side));
        }
        for (k, v) in [("lambda", c.lambda), ("margin", c.margin), ("cng_weight", c.cng_weight)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{k} {v} must be >= 0"));
            }
        }
        Ok(c)
    }
}

/// `L_cng` of attention maps `[n, N, h, w]` (each normalised to sum to one inside).
pub fn channel_grouping_loss<B: Backend>(att: Tensor<B, 4>, lambda: f32, margin: f32) -> Tensor<B, 1> {
    let [n, parts, h, w] = att.dims();
    let device = att.device();
    let m = att.reshape([n, parts, h * w]);
    let m = m.clone() / m.sum_dim(2).clamp_min(1e-12); // [n, N, hw]
    let mh = host(m.clone());
    // Squared distance of every position to each map's peak (peak detached).
    let mut dist = vec![0f32; n * parts * h * w];
    for b in 0..n {
        for i in 0..parts {
            let row = &mh[(b * parts + i) * h * w..(b * parts + i + 1) * h * w];
            let peak = (0..h * w).max_by(|&a, &c| row[a].total_cmp(&row[c])).unwrap_or(0);
            let (ty, tx) = (((peak / w) as f32 + 0.5) / h as f32, ((peak % w) as f32 + 0.5) / w as f32);
            for p in 0..h * w {
                let (y, x) = (((p / w) as f32 + 0.5) / h as f32, ((p % w) as f32 + 0.5) / w as f32);
                dist[(b * parts + i) * h * w + p] = (x - tx).powi(2) + (y - ty).powi(2);
            }
        }
    }
    let dist = Tensor::<B, 3>::from_data(TensorData::new(dist, [n, parts, h * w]), &device);
    let dis = (m.clone() * dist).sum_dim(2); // [n, N, 1]
    let div = if parts > 1 {
        let others: Vec<Tensor<B, 3>> = (0..parts)
            .map(|i| {
                let rest: Vec<Tensor<B, 3>> = (0..parts).filter(|&k| k != i).map(|k| m.clone().slice([0..n, k..k + 1, 0..h * w])).collect();
                Tensor::cat(rest, 1).max_dim(1) // [n, 1, hw]
            })
            .collect();
        (m * Tensor::cat(others, 1).sub_scalar(margin)).sum_dim(2)
    } else {
        Tensor::zeros([n, parts, 1], &device)
    };
    (dis + div.mul_scalar(lambda)).sum_dim(1).mean()
}

/// Channel grouping, part classifiers and the object classifier (round 1).
#[derive(Module, Debug)]
pub struct Grouping<B: Backend> {
    fc1: Vec<Linear<B>>,
    fc2: Vec<Linear<B>>,
    part_fc: Vec<Linear<B>>,
    object: Linear<B>,
    #[module(skip)]
    cfg: MaCnnConfig,
}

impl<B: Backend> Grouping<B> {
    /// The attention maps `[n, N, h, w]` of maps `[n, C, h, w]`.
    pub fn attention(&self, map: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = map.dims();
        let z = gap(map.clone());
        let maps: Vec<Tensor<B, 4>> = (0..self.cfg.parts)
            .map(|i| {
                let d = sigmoid(self.fc2[i].forward(relu(self.fc1[i].forward(z.clone())))).reshape([n, c, 1, 1]);
                sigmoid((map.clone() * d).sum_dim(1).div_scalar(c as f32)).reshape([n, 1, h, w])
            })
            .collect();
        Tensor::cat(maps, 1)
    }
}

impl<B: AutodiffBackend> TrainMethod<B> for Grouping<B> {
    type Batch = LocBatch;
    type Input = LocInput<B>;

    fn prepare(&self, b: LocBatch, device: &B::Device) -> LocInput<B> {
        prepare(b, device)
    }

    fn loss(&self, x: &LocInput<B>, _: usize) -> StepLoss<B> {
        let att = self.attention(x.global.clone());
        let [n, parts, h, w] = att.dims();
        let object = self.object.forward(gap(x.global.clone()));
        let got = hits(&object, &x.label_vec);
        let mut loss = cross_entropy(object, x.labels.clone());
        for i in 0..parts {
            let mi = att.clone().slice([0..n, i..i + 1, 0..h, 0..w]);
            loss = loss + cross_entropy(self.part_fc[i].forward(gap(x.global.clone() * mi)), x.labels.clone());
        }
        loss = loss + channel_grouping_loss(att, self.cfg.lambda, self.cfg.margin).mul_scalar(self.cfg.cng_weight);
        StepLoss { loss, hits: Some(got) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

/// Part and fusion classifiers on the crops (round 2).
#[derive(Module, Debug)]
pub struct PartNets<B: Backend> {
    parts: Vec<Linear<B>>,
    object: Linear<B>,
    fusion: Linear<B>,
}

impl<B: Backend> PartNets<B> {
    /// Fusion scores.
    pub fn fuse(&self, global: Tensor<B, 4>, crops: &Tensor<B, 3>) -> Tensor<B, 2> {
        let [_, k, _] = crops.dims();
        let mut feats = vec![gap(global)];
        feats.extend((0..k).map(|i| crop(crops, i)));
        self.fusion.forward(Tensor::cat(feats, 1))
    }
}

impl<B: AutodiffBackend> TrainMethod<B> for PartNets<B> {
    type Batch = LocBatch;
    type Input = LocInput<B>;

    fn prepare(&self, b: LocBatch, device: &B::Device) -> LocInput<B> {
        prepare(b, device)
    }

    fn loss(&self, x: &LocInput<B>, _: usize) -> StepLoss<B> {
        let crops = x.parts.as_ref().expect("crops");
        let fused = self.fuse(x.global.clone(), crops);
        let got = hits(&fused, &x.label_vec);
        let mut loss = cross_entropy(fused, x.labels.clone()) + cross_entropy(self.object.forward(gap(x.global.clone())), x.labels.clone());
        for (i, fc) in self.parts.iter().enumerate() {
            loss = loss + cross_entropy(fc.forward(crop(crops, i)), x.labels.clone());
        }
        StepLoss { loss, hits: Some(got) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

/// The part squares of one image's attention maps `[N][h w]`.
fn squares(att: &[f32], parts: usize, h: usize, side: f32) -> Vec<NormBox> {
    (0..parts)
        .map(|i| {
            let row = &att[i * h * h..(i + 1) * h * h];
            let p = (0..h * h).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap_or(0);
            let (cx, cy) = (((p % h) as f32 + 0.5) / h as f32, ((p / h) as f32 + 0.5) / h as f32);
            let half = side / 2.0;
            let (cx, cy) = (cx.clamp(half, 1.0 - half), cy.clamp(half, 1.0 - half));
            NormBox { x0: cx - half, y0: cy - half, x1: cx + half, y1: cy + half }
        })
        .collect()
}

/// Runs MA-CNN.
pub fn run<B: AutodiffBackend>(s: &Stage<'_, B>) -> Result<Option<Outcome>, TrainError> {
    let cfg = MaCnnConfig::from_params(&s.r.method.params).map_err(|message| TrainError::Recipe { path: s.ctx.run_dir.join("recipe.toml"), message })?;
    let [c, h, _] = s.maps.shape;
    let (np, classes) = (cfg.parts, s.classes);
    B::seed(s.device, s.r.train.seed);
    let lin = |i: usize, o: usize| LinearConfig::new(i, o).init::<B>(s.device);
    let grouping = Grouping {
        fc1: (0..np).map(|_| lin(c, c)).collect(),
        fc2: (0..np).map(|_| lin(c, c)).collect(),
        part_fc: (0..np).map(|_| lin(c, classes)).collect(),
        object: lin(c, classes),
        cfg: cfg.clone(),
    };
    let Some(grouping) = s.round("round-1-grouping", grouping, None, false)? else { return Ok(None) };
    let g = grouping.valid();
    let mut train_boxes: HashMap<(usize, usize), Vec<NormBox>> = HashMap::new();
    s.on_maps(&s.train_views(), true, |views, maps| {
        let a = host(g.attention(maps));
        for (j, v) in views.iter().enumerate() {
            train_boxes.insert(*v, squares(&a[j * np * h * h..(j + 1) * np * h * h], np, h, cfg.crop_side));
        }
    });
    let mut test_boxes: HashMap<usize, (Vec<NormBox>, Vec<f32>)> = HashMap::new();
    s.on_maps(&s.test_views(), false, |views, maps| {
        let a = host(g.attention(maps));
        for (j, v) in views.iter().enumerate() {
            let aj = &a[j * np * h * h..(j + 1) * np * h * h];
            let heat: Vec<f32> = (0..h * h).map(|p| (0..np).map(|i| aj[i * h * h + p]).fold(0.0, f32::max)).collect();
            test_boxes.insert(v.0, (squares(aj, np, h, cfg.crop_side), heat));
        }
    });
    let size = cfg.part_size;
    let to = |b: &Vec<NormBox>| b.iter().map(|x| Sample::from_box(*x, size)).collect::<Vec<_>>();
    let parts = s.crops("MA-CNN", np, np, size, false, &|i, v, _| train_boxes.get(&(i, v)).map(to), &|i, _| test_boxes.get(&i).map(|(b, _)| to(b)))?;
    B::seed(s.device, s.r.train.seed ^ 0x2);
    let nets = PartNets { parts: (0..np).map(|_| lin(c, classes)).collect(), object: lin(c, classes), fusion: lin((np + 1) * c, classes) };
    let Some(nets) = s.round("round-2-parts", nets, Some(&parts), false)? else { return Ok(None) };
    let nets = nets.valid();
    let mut preds = HashMap::new();
    let (top1, n) = s.evaluate(Some(&parts), |x| {
        let scores = host(nets.fuse(x.global.clone(), x.parts.as_ref().expect("crops")));
        for (j, &(i, _)) in x.views.iter().enumerate() {
            preds.insert(i, fgia_core::metrics::argmax_rows(&scores[j * classes..(j + 1) * classes], classes)[0]);
        }
        scores
    });
    let looks = look_images(s.ds.test.len())
        .into_iter()
        .filter_map(|i| {
            let (b, heat) = test_boxes.get(&i)?;
            Some(Look {
                image: i,
                boxes: b.iter().enumerate().map(|(k, x)| (*x, format!("part {}", k + 1))).collect(),
                heat: Some((h, heat.clone())),
                caption: preds.get(&i).map(|&p| format!("predicted: {}", s.ds.classes.names[p])).unwrap_or_default(),
                ..Default::default()
            })
        })
        .collect();
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".into(), top1);
    metrics.insert("test_images".into(), n as f64);
    metrics.insert("parts".into(), np as f64);
    Ok(Some(Outcome {
        metrics,
        trained_layers: format!(
            "channel grouping ({np} parts, two FC layers each), part and object classifiers (round 1); part, object and fusion classifiers on the crops (round 2; backbone frozen)"
        ),
        loss: format!(
            "CE(object) + Σ CE(part on attention-pooled features) + {} (Dis + {} Div, mrg {}) (round 1); CE(fusion) + CE(object) + Σ CE(part crop) (round 2)",
            cfg.cng_weight, cfg.lambda, cfg.margin
        ),
        deviations: vec![format!("part squares of side {:.3} of the view resampled at {size} px", cfg.crop_side)],
        tta: "none (the fusion classifier on the image and its part crops)".into(),
        looks,
    }))
}

/// The deviations of every end-to-end MA-CNN run.
pub const LIVE_DEVIATIONS: &[&str] = &[
    "the channel-grouping loss and the part classification are summed in every step, not alternated until convergence; no k-means pre-grouping of the channels",
    "the attention is the channel-weighted sum of the map scaled by the channel count (not a plain sum)",
];

/// MA-CNN end to end: the grouping layers and the part networks in one module; the part squares
/// are drawn from the current attention of the live map and cropped from the pixels.
#[derive(Module, Debug)]
pub struct MaCnnJoint<B: Backend> {
    grouping: Grouping<B>,
    nets: PartNets<B>,
}

impl<B: AutodiffBackend> TrainMethod<B> for MaCnnJoint<B> {
    type Batch = LocBatch;
    type Input = LocInput<B>;

    fn prepare(&self, b: LocBatch, device: &B::Device) -> LocInput<B> {
        prepare(b, device)
    }

    fn loss(&self, x: &LocInput<B>, step: usize) -> StepLoss<B> {
        let g = self.grouping.loss(x, step);
        let p = self.nets.loss(x, step);
        StepLoss { loss: g.loss + p.loss, hits: p.hits }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

impl<B: Backend> HostCrops<B> for MaCnnJoint<B> {
    fn crop_spec(&self, _: bool) -> (usize, usize, bool) {
        (self.grouping.cfg.parts, self.grouping.cfg.part_size, false)
    }

    fn samples(&self, map: Tensor<B, 4>, _: &[Record], items: &[usize], _: &[ViewGeometry], _: bool, _: u64) -> Vec<Vec<Sample>> {
        let [_, _, h, _] = map.dims();
        let cfg = &self.grouping.cfg;
        let np = cfg.parts;
        let a = host(self.grouping.attention(map));
        (0..items.len())
            .map(|j| squares(&a[j * np * h * h..(j + 1) * np * h * h], np, h, cfg.crop_side).iter().map(|b| Sample::from_box(*b, cfg.part_size)).collect())
            .collect()
    }
}

/// Runs MA-CNN end to end.
pub fn run_live<B: AutodiffBackend>(s: &LiveStage<'_, B>) -> Result<Option<Outcome>, TrainError> {
    let cfg = MaCnnConfig::from_params(&s.r.method.params).map_err(|message| TrainError::Recipe { path: s.ctx.run_dir.join("recipe.toml"), message })?;
    let [c, _, _] = s.shape;
    let (np, classes) = (cfg.parts, s.classes);
    B::seed(s.device, s.r.train.seed);
    let lin = |i: usize, o: usize| LinearConfig::new(i, o).init::<B>(s.device);
    let joint = MaCnnJoint {
        grouping: Grouping {
            fc1: (0..np).map(|_| lin(c, c)).collect(),
            fc2: (0..np).map(|_| lin(c, c)).collect(),
            part_fc: (0..np).map(|_| lin(c, classes)).collect(),
            object: lin(c, classes),
            cfg: cfg.clone(),
        },
        nets: PartNets { parts: (0..np).map(|_| lin(c, classes)).collect(), object: lin(c, classes), fusion: lin((np + 1) * c, classes) },
    };
    let Some(live) = s.train_crops(joint, false)? else { return Ok(None) };
    let live = live.valid();
    let looks_at = look_images(s.ds.test.len());
    let mut looks = Vec::new();
    let (top1, n) = s.evaluate_crops(&live, |x, samples| {
        let scores = host(live.m.nets.fuse(x.global.clone(), x.parts.as_ref().expect("crops")));
        for (j, &(i, _)) in x.views.iter().enumerate().filter(|(_, v)| looks_at.contains(&v.0)) {
            let pred = fgia_core::metrics::argmax_rows(&scores[j * classes..(j + 1) * classes], classes)[0];
            let boxes = samples[j].iter().enumerate().map(|(k, smp)| (box_of(&smp.grid), format!("part {}", k + 1)));
            looks.push(Look { image: i, boxes: boxes.collect(), caption: format!("predicted: {}", s.ds.classes.names[pred]), ..Default::default() });
        }
        scores
    })?;
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".into(), top1);
    metrics.insert("test_images".into(), n as f64);
    metrics.insert("parts".into(), np as f64);
    Ok(Some(Outcome {
        metrics,
        trained_layers: format!(
            "the backbone (at {} times the rate, through the image and the part crops), channel grouping ({np} parts, two FC layers each), the part, object and fusion classifiers",
            s.r.train.backbone_lr_mult
        ),
        loss: format!(
            "CE(object) + Σ CE(part on attention-pooled features) + {} (Dis + {} Div, mrg {}) + CE(fusion) + CE(object) + Σ CE(part crop)",
            cfg.cng_weight, cfg.lambda, cfg.margin
        ),
        deviations: vec![format!("part squares of side {:.3} of the view resampled at {} px", cfg.crop_side, cfg.part_size)],
        tta: "none (the fusion classifier on the image and its part crops)".into(),
        looks,
    }))
}
