//! NTS-Net: "Learning to Navigate for Fine-grained Classification", Yang, Luo, Wang, Hu, Gao and
//! Wang, ECCV 2018 (survey §5.1.4). Recipe: `recipes/table2/nts-net.toml`.
//!
//! **Navigator.** On the backbone's last map, `down1 = ReLU(conv3x3, s1)`, `down2 = ReLU(conv3x3,
//! s2)`, `down3 = ReLU(conv3x3, s2)` (128 channels each) and `1x1` "tidy" convolutions giving one
//! informativeness score `I` per anchor: 6, 6 and 9 anchor types on the three maps (at 448 px,
//! `14·14·6 + 7·7·6 + 4·4·9 = 1614` anchors; [`crate::geometry::nts_anchors`]). The navigator reads
//! the map detached (its gradient does not reach the backbone).
//!
//! **Proposals.** Hard NMS over the anchors by score at IoU 0.25 keeps the top `M = 6` (with few
//! anchors, at a small input, NMS can keep fewer: the best remaining anchors fill the list, and
//! the record counts the images where that happened); each is
//! cropped from the zero-padded image, resized to 224 (half the input) and run through the same
//! backbone.
//!
//! **Teacher** `C_i = −log p(y | R_i)` per part (a linear layer on each part's pooled feature).
//! **Ranking loss**: `Σ_{(i,s): C_i < C_s} max(0, 1 − I_i + I_s)`, so the navigator's order
//! follows the teacher's confidence. **Scrutinizer**: a linear layer on the concatenated pooled
//! features of the top `K = 4` parts and the whole image. Total (weights 1, as the authors'
//! code): `CE(raw) + L_rank + CE(scrutinizer) + mean_i CE(teacher, part i)`. Features pass a
//! dropout of 0.5 in training; **dropout is off at evaluation** (the released code builds its
//! dropout inside `forward`, so it stays on at test time; here it is a module and `valid()`
//! turns it off, which a test checks). Prediction: the scrutinizer.
//!
//! **End to end** (`mode = "end-to-end"`, [`NtsLive`]): the paper's training. The navigator reads
//! the live (detached) last map, NMS keeps the top `M`, their boxes are cropped from the pixels
//! inside the step and run through the backbone being trained; the teacher's confidences on those
//! crops rank the navigator, and every loss above trains the backbone through the image and the
//! crops.
//!
//! **Deviations of the cached rounds** (also in [`DEVIATIONS`]):
//! - Cached rounds on the frozen trunk. Round 1 trains the navigator with the ranking loss
//!   against a teacher on RoI-aligned regions of the cached map (feature space, 3x3 bins), with
//!   the raw classifier. The top 6 proposals of every training view (top 4 of every test image)
//!   are then cropped from the pixels once and run through the frozen backbone. Round 2 trains
//!   the teacher, the scrutinizer and the raw classifier on them; the navigator stays as round 1
//!   left it (the paper keeps all four parts training together, re-proposing every step).
//! - Anchors and part crops scale with the input: at 224 px the three maps are 7, 4 and 2 wide
//!   (426 anchors) and parts are resampled at the recipe's `part_size`.

use std::collections::HashMap;

use burn::module::AutodiffModule;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::backend::AutodiffBackend;
use fgia_nn::Network;
use fgia_train::TrainError;
use fgia_train::engine::{ParamGroup, StepLoss, TrainMethod, single_group};
use fgia_train::sources::MapBatch;
use serde::{Deserialize, Serialize};

use crate::geometry::{NormBox, nms, nts_anchors, nts_levels, roi_zoom};
use crate::live::{LiveInput, LiveStage, backbone_groups, box_crops, prepare_live, trunk};
use crate::looks::Look;
use crate::nn::{cross_entropy, cross_entropy_each, gap, hits, host};
use crate::run::{LocBatch, LocInput, Outcome, Sample, Stage, look_images, prepare};

/// The deviations of every NTS-Net run.
pub const DEVIATIONS: &[&str] = &[
    "navigator trained in round 1 against a teacher on RoI-aligned regions of the cached last map (feature space); teacher and scrutinizer trained in round 2 on pixel crops of the round-1 proposals, drawn once per cached view",
];

/// NTS-Net's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NtsConfig {
    /// Proposals kept after NMS (`M`).
    pub proposals: usize,
    /// Parts concatenated by the scrutinizer (`K`).
    pub cat_num: usize,
    /// NMS IoU threshold.
    pub nms_iou: f32,
    /// Navigator width.
    pub navigator_channels: usize,
    /// Side of the resampled part crops (the paper: 224 at a 448 input).
    pub part_size: usize,
    /// Dropout before the classifiers.
    pub dropout: f64,
    /// Hinge margin of the ranking loss.
    pub rank_margin: f32,
    /// Weights of the raw, ranking, scrutinizer and teacher terms.
    pub raw_weight: f32,
    /// See `raw_weight`.
    pub rank_weight: f32,
    /// See `raw_weight`.
    pub concat_weight: f32,
    /// See `raw_weight`.
    pub teacher_weight: f32,
    /// Bins of the round-1 RoI-align on the cached map.
    pub roi_bins: usize,
}

impl Default for NtsConfig {
    fn default() -> Self {
        NtsConfig {
            proposals: 6,
            cat_num: 4,
            nms_iou: 0.25,
            navigator_channels: 128,
            part_size: 224,
            dropout: 0.5,
            rank_margin: 1.0,
            raw_weight: 1.0,
            rank_weight: 1.0,
            concat_weight: 1.0,
            teacher_weight: 1.0,
            roi_bins: 3,
        }
    }
}

impl NtsConfig {
    /// Parses and validates `[method.params]`.
    pub fn from_params(p: &toml::Table) -> Result<Self, String> {
        let c: NtsConfig = crate::recipe::params(p)?;
        if c.proposals == 0 || c.proposals > 64 || c.cat_num == 0 || c.cat_num > c.proposals {
            return Err(format!("proposals {} in 1..=64 and cat_num {} in 1..=proposals", c.proposals, c.cat_num));
        }
        if !(c.nms_iou > 0.0 && c.nms_iou <= 1.0) {
            return Err(format!("nms_iou {} must lie in (0, 1]", c.nms_iou));
        }
        if !(0.0..1.0).contains(&c.dropout) {
            return Err(format!("dropout {} must lie in [0, 1)", c.dropout));
        }
        for (k, v) in [
            ("rank_margin", c.rank_margin),
            ("raw_weight", c.raw_weight),
            ("rank_weight", c.rank_weight),
            ("concat_weight", c.concat_weight),
            ("teacher_weight", c.teacher_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{k} {v} must be a finite number >= 0"));
            }
        }
        if !(16..=1024).contains(&c.part_size) || c.navigator_channels == 0 || !(1..=14).contains(&c.roi_bins) {
            return Err(format!("part_size {} in 16..=1024, navigator_channels {} > 0, roi_bins {} in 1..=14", c.part_size, c.navigator_channels, c.roi_bins));
        }
        Ok(c)
    }
}

/// The navigator: scores of every anchor, in [`nts_anchors`]' order.
#[derive(Module, Debug)]
pub struct Navigator<B: Backend> {
    down1: Conv2d<B>,
    down2: Conv2d<B>,
    down3: Conv2d<B>,
    tidy1: Conv2d<B>,
    tidy2: Conv2d<B>,
    tidy3: Conv2d<B>,
}

impl<B: Backend> Navigator<B> {
    /// A navigator on `channels`-channel maps with `width` channels and the anchor types of
    /// NTS-Net's three levels (6, 6, 9).
    pub fn new(channels: usize, width: usize, device: &B::Device) -> Self {
        let conv =
            |i: usize, s: usize| Conv2dConfig::new([i, width], [3, 3]).with_stride([s, s]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(device);
        let tidy = |a: usize| Conv2dConfig::new([width, a], [1, 1]).init(device);
        Navigator { down1: conv(channels, 1), down2: conv(width, 2), down3: conv(width, 2), tidy1: tidy(6), tidy2: tidy(6), tidy3: tidy(9) }
    }

    /// Scores `[n, anchors]` of maps `[n, C, h, w]`.
    pub fn forward(&self, map: Tensor<B, 4>) -> Tensor<B, 2> {
        let [n, _, _, _] = map.dims();
        let d1 = relu(self.down1.forward(map));
        let d2 = relu(self.down2.forward(d1.clone()));
        let d3 = relu(self.down3.forward(d2.clone()));
        let flat = |t: Tensor<B, 4>| -> Tensor<B, 2> {
            let [n, a, h, w] = t.dims();
            t.reshape([n, a * h * w])
        };
        let out = Tensor::cat(vec![flat(self.tidy1.forward(d1)), flat(self.tidy2.forward(d2)), flat(self.tidy3.forward(d3))], 1);
        let [_, k] = out.dims();
        out.reshape([n, k])
    }
}

/// The ranking loss: for every pair of a batch item's parts with teacher losses `C_i < C_s`,
/// `max(0, margin − I_i + I_s)`; summed over pairs and averaged over the batch. `scores` and
/// `conf` are `[n, M]`.
pub fn ranking_loss<B: Backend>(scores: Tensor<B, 2>, conf: &[f32], margin: f32) -> Tensor<B, 1> {
    let [n, m] = scores.dims();
    // mask[b, i, s] = 1 where C_bi < C_bs.
    let mut mask = vec![0f32; n * m * m];
    for b in 0..n {
        for i in 0..m {
            for s in 0..m {
                if conf[b * m + i] < conf[b * m + s] {
                    mask[(b * m + i) * m + s] = 1.0;
                }
            }
        }
    }
    let mask = Tensor::<B, 3>::from_data(TensorData::new(mask, [n, m, m]), &scores.device());
    let si = scores.clone().reshape([n, m, 1]);
    let ss = scores.reshape([n, 1, m]);
    let hinge = relu((ss - si).add_scalar(margin)); // [n, M, M]: margin − I_i + I_s
    (hinge * mask).sum().div_scalar(n as f32)
}

/// Round 1: navigator, teacher on map regions, raw classifier.
#[derive(Module, Debug)]
pub struct NtsRound1<B: Backend> {
    navigator: Navigator<B>,
    teacher: Linear<B>,
    raw: Linear<B>,
    dropout: Dropout,
    #[module(skip)]
    anchors: Vec<NormBox>,
    #[module(skip)]
    cfg: NtsConfig,
}

/// The top proposals of each row of `scores` (`[n, anchors]` on the host): hard NMS, and when it
/// keeps fewer than `keep` (few anchors at a small input), the best remaining anchors by score
/// fill the list, so every image has its `keep` parts. Returns the lists and how many were filled.
pub fn propose(scores: &[f32], anchors: &[NormBox], iou: f32, keep: usize) -> (Vec<Vec<usize>>, usize) {
    let mut filled = 0;
    let lists = scores
        .chunks(anchors.len().max(1))
        .map(|row| {
            let mut k = nms(anchors, row, iou, keep);
            if k.len() < keep {
                filled += 1;
                let mut rest: Vec<usize> = (0..row.len()).filter(|a| !k.contains(a) && row[*a].is_finite()).collect();
                rest.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                k.extend(rest.into_iter().take(keep - k.len()));
            }
            k
        })
        .collect();
    (lists, filled)
}

impl<B: AutodiffBackend> TrainMethod<B> for NtsRound1<B> {
    type Batch = LocBatch;
    type Input = LocInput<B>;

    fn prepare(&self, b: LocBatch, device: &B::Device) -> LocInput<B> {
        prepare(b, device)
    }

    fn loss(&self, x: &LocInput<B>, _: usize) -> StepLoss<B> {
        let cfg = &self.cfg;
        let [n, _, _, _] = x.global.dims();
        let scores = self.navigator.forward(x.global.clone().detach());
        let (kept, _) = propose(&host(scores.clone()), &self.anchors, cfg.nms_iou, cfg.proposals);
        let m = cfg.proposals;
        if kept.iter().any(|k| k.len() < m) {
            // Fewer than M finite scores (fewer anchors than M): the raw classifier alone.
            let raw = self.raw.forward(self.dropout.forward(gap(x.global.clone())));
            let got = hits(&raw, &x.label_vec);
            return StepLoss { loss: cross_entropy(raw, x.labels.clone()), hits: Some(got) };
        }
        let rois: Vec<(usize, NormBox)> =
            kept.iter().enumerate().flat_map(|(b, k)| k.iter().map(move |&a| (b, a))).map(|(b, a)| (b, self.anchors[a])).collect();
        let regions = roi_zoom(x.global.clone(), &rois, cfg.roi_bins);
        let part_logits = self.teacher.forward(self.dropout.forward(gap(regions)));
        let part_labels = x.labels.clone().reshape([n, 1]).repeat_dim(1, m).reshape([n * m]);
        let each = cross_entropy_each(part_logits, part_labels);
        let conf = host(each.clone());
        let idx: Vec<i64> = kept.iter().flatten().map(|&a| a as i64).collect();
        let picked = scores.gather(1, Tensor::<B, 2, Int>::from_data(TensorData::new(idx, [n, m]), &x.global.device()));
        let rank = ranking_loss(picked, &conf, cfg.rank_margin);
        let raw = self.raw.forward(self.dropout.forward(gap(x.global.clone())));
        let got = hits(&raw, &x.label_vec);
        let loss =
            cross_entropy(raw, x.labels.clone()).mul_scalar(cfg.raw_weight) + rank.mul_scalar(cfg.rank_weight) + each.mean().mul_scalar(cfg.teacher_weight);
        StepLoss { loss, hits: Some(got) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

/// Round 2: teacher, scrutinizer and raw classifier on the pixel crops' features.
#[derive(Module, Debug)]
pub struct NtsRound2<B: Backend> {
    teacher: Linear<B>,
    scrutinizer: Linear<B>,
    raw: Linear<B>,
    dropout: Dropout,
    #[module(skip)]
    cfg: NtsConfig,
}

impl<B: Backend> NtsRound2<B> {
    /// A new round-2 model for `c`-channel features.
    pub fn new(c: usize, classes: usize, cfg: &NtsConfig, device: &B::Device) -> Self {
        NtsRound2 {
            teacher: LinearConfig::new(c, classes).init(device),
            scrutinizer: LinearConfig::new(c * (cfg.cat_num + 1), classes).init(device),
            raw: LinearConfig::new(c, classes).init(device),
            dropout: DropoutConfig::new(cfg.dropout).init(),
            cfg: cfg.clone(),
        }
    }

    /// The scrutinizer's scores from the global map and the first `K` crops `[n, ≥K, C]`.
    pub fn scrutinize(&self, global: Tensor<B, 4>, parts: &Tensor<B, 3>) -> Tensor<B, 2> {
        let [n, _, c] = parts.dims();
        let k = self.cfg.cat_num;
        let top = parts.clone().slice([0..n, 0..k, 0..c]).reshape([n, k * c]);
        let cat = Tensor::cat(vec![top, gap(global)], 1);
        self.scrutinizer.forward(self.dropout.forward(cat))
    }
}

impl<B: AutodiffBackend> TrainMethod<B> for NtsRound2<B> {
    type Batch = LocBatch;
    type Input = LocInput<B>;

    fn prepare(&self, b: LocBatch, device: &B::Device) -> LocInput<B> {
        prepare(b, device)
    }

    fn loss(&self, x: &LocInput<B>, _: usize) -> StepLoss<B> {
        let cfg = &self.cfg;
        let parts = x.parts.as_ref().expect("round 2 reads crops");
        let [n, m, c] = parts.dims();
        let concat = self.scrutinize(x.global.clone(), parts);
        let got = hits(&concat, &x.label_vec);
        let part_logits = self.teacher.forward(self.dropout.forward(parts.clone().reshape([n * m, c])));
        let part_labels = x.labels.clone().reshape([n, 1]).repeat_dim(1, m).reshape([n * m]);
        let raw = self.raw.forward(self.dropout.forward(gap(x.global.clone())));
        let loss = cross_entropy(raw, x.labels.clone()).mul_scalar(cfg.raw_weight)
            + cross_entropy(concat, x.labels.clone()).mul_scalar(cfg.concat_weight)
            + cross_entropy(part_logits, part_labels).mul_scalar(cfg.teacher_weight);
        StepLoss { loss, hits: Some(got) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

/// Runs NTS-Net.
pub fn run<B: AutodiffBackend>(s: &Stage<'_, B>) -> Result<Option<Outcome>, TrainError> {
    let cfg = NtsConfig::from_params(&s.r.method.params).map_err(|message| TrainError::Recipe { path: s.ctx.run_dir.join("recipe.toml"), message })?;
    let [c, _, _] = s.maps.shape;
    let anchors = nts_anchors(&nts_levels(), s.r.data.crop as usize);
    B::seed(s.device, s.r.train.seed);
    let r1 = NtsRound1::<B> {
        navigator: Navigator::new(c, cfg.navigator_channels, s.device),
        teacher: LinearConfig::new(c, s.classes).init(s.device),
        raw: LinearConfig::new(c, s.classes).init(s.device),
        dropout: DropoutConfig::new(cfg.dropout).init(),
        anchors: anchors.clone(),
        cfg: cfg.clone(),
    };
    let Some(r1) = s.round("round-1-navigator", r1, None, false)? else { return Ok(None) };
    let nav = r1.valid().navigator;
    let mut filled = [0usize; 2];
    let mut train_props: HashMap<(usize, usize), Vec<usize>> = HashMap::new();
    s.on_maps(&s.train_views(), true, |views, maps| {
        let (lists, f) = propose(&host(nav.forward(maps)), &anchors, cfg.nms_iou, cfg.proposals);
        filled[0] += f;
        for (v, k) in views.iter().zip(lists) {
            train_props.insert(*v, k);
        }
    });
    let mut test_props: HashMap<usize, Vec<usize>> = HashMap::new();
    s.on_maps(&s.test_views(), false, |views, maps| {
        let (lists, f) = propose(&host(nav.forward(maps)), &anchors, cfg.nms_iou, cfg.proposals);
        filled[1] += f;
        for (v, k) in views.iter().zip(lists) {
            test_props.insert(v.0, k);
        }
    });
    let size = cfg.part_size;
    let boxes =
        |k: &Vec<usize>, n: usize| -> Option<Vec<Sample>> { (k.len() >= n).then(|| k[..n].iter().map(|&a| Sample::from_box(anchors[a], size)).collect()) };
    let parts =
        s.crops("NTS-Net", cfg.proposals, cfg.cat_num, size, false, &|i, v, _| train_props.get(&(i, v)).and_then(|k| boxes(k, cfg.proposals)), &|i, _| {
            test_props.get(&i).and_then(|k| boxes(k, cfg.cat_num))
        })?;
    B::seed(s.device, s.r.train.seed ^ 0x2);
    let r2 = NtsRound2::<B>::new(c, s.classes, &cfg, s.device);
    let Some(r2) = s.round("round-2-parts", r2, Some(&parts), false)? else { return Ok(None) };
    let model = r2.valid();
    let mut preds: HashMap<usize, usize> = HashMap::new();
    let mut raw_hits = (0usize, 0usize);
    let (top1, n) = s.evaluate(Some(&parts), |x| {
        let logits = model.scrutinize(x.global.clone(), x.parts.as_ref().expect("test crops"));
        let raw = model.raw.forward(gap(x.global.clone()));
        raw_hits.0 += hits(&raw, &x.label_vec);
        raw_hits.1 += x.label_vec.len();
        let scores = host(logits);
        for (j, &(i, _)) in x.views.iter().enumerate() {
            preds.insert(i, fgia_core::metrics::argmax_rows(&scores[j * s.classes..(j + 1) * s.classes], s.classes)[0]);
        }
        scores
    });
    let looks = look_images(s.ds.test.len())
        .into_iter()
        .filter_map(|i| {
            let k = test_props.get(&i)?;
            Some(Look {
                image: i,
                boxes: k
                    .iter()
                    .enumerate()
                    .map(|(r, &a)| (anchors[a], format!("#{}{}", r + 1, if r < cfg.cat_num { "" } else { " (teacher only)" })))
                    .collect(),
                caption: preds.get(&i).map(|&p| format!("predicted: {}", s.ds.classes.names[p])).unwrap_or_default(),
                ..Default::default()
            })
        })
        .collect();
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".into(), top1);
    metrics.insert("top1_raw_only".into(), 100.0 * raw_hits.0 as f64 / raw_hits.1.max(1) as f64);
    metrics.insert("test_images".into(), n as f64);
    metrics.insert("anchors".into(), anchors.len() as f64);
    metrics.insert("proposals".into(), cfg.proposals as f64);
    metrics.insert("train_views_nms_filled".into(), filled[0] as f64);
    metrics.insert("test_images_nms_filled".into(), filled[1] as f64);
    Ok(Some(Outcome {
        metrics,
        trained_layers: format!(
            "the navigator ({} channels) in round 1; the teacher, the scrutinizer ({} parts + image) and the raw classifier in round 2 (backbone frozen)",
            cfg.navigator_channels, cfg.cat_num
        ),
        loss: format!(
            "{} CE(raw) + {} ranking hinge (margin {}) + {} CE(teacher, each of {} parts) (round 1, parts RoI-aligned on the map); {} CE(raw) + {} CE(scrutinizer) + {} CE(teacher) (round 2, pixel crops)",
            cfg.raw_weight, cfg.rank_weight, cfg.rank_margin, cfg.teacher_weight, cfg.proposals, cfg.raw_weight, cfg.concat_weight, cfg.teacher_weight
        ),
        deviations: vec![format!(
            "{} anchors at {} px (the paper's 1614 are at 448 px); parts resampled at {size} px; NMS at IoU {} keeps {}",
            anchors.len(),
            s.r.data.crop,
            cfg.nms_iou,
            cfg.proposals
        )],
        tta: "none (the scrutinizer on the image and its top 4 proposals)".into(),
        looks,
    }))
}

/// The deviations of every end-to-end NTS-Net run (none beyond the recipe's and the anchors').
pub const LIVE_DEVIATIONS: &[&str] = &[];

/// NTS-Net end to end (`mode = "end-to-end"`): the navigator scores the anchors on the live
/// backbone's last map (detached, as the authors' code), hard NMS keeps the top `M`, their boxes
/// are cropped from the pixels (zeros outside the image, as the authors' zero-padded image) and
/// run through the same backbone inside the step; the teacher's confidences on those crops
/// rank the navigator's scores, and the scrutinizer reads the top `K` crops and the image.
#[derive(Module, Debug)]
pub struct NtsLive<B: Backend> {
    net: Network<B>,
    navigator: Navigator<B>,
    head: NtsRound2<B>,
    #[module(skip)]
    anchors: Vec<NormBox>,
    backbone_lr_mult: f64,
}

impl<B: Backend> NtsLive<B> {
    /// The pooled features `[n, k, C]` of the first `k` proposals of each item, cropped from the
    /// pixels at `part_size`.
    fn parts(&self, pixels: Tensor<B, 4>, kept: &[Vec<usize>], k: usize) -> Tensor<B, 3> {
        let device = pixels.device();
        let boxes: Vec<NormBox> = kept.iter().flat_map(|l| l[..k].iter().map(|&a| self.anchors[a])).collect();
        let m = boxes.len();
        let edge = |f: fn(&NormBox) -> f32| Tensor::<B, 1>::from_data(TensorData::new(boxes.iter().map(f).collect::<Vec<_>>(), [m]), &device);
        box_crops(&self.net, pixels, [edge(|b| b.x0), edge(|b| b.y0), edge(|b| b.x1), edge(|b| b.y1)], k, self.head.cfg.part_size)
    }
}

impl<B: AutodiffBackend> TrainMethod<B> for NtsLive<B> {
    type Batch = MapBatch;
    type Input = LiveInput<B>;

    fn prepare(&self, b: MapBatch, device: &B::Device) -> LiveInput<B> {
        prepare_live(b, device)
    }

    fn loss(&self, x: &LiveInput<B>, _: usize) -> StepLoss<B> {
        let cfg = &self.head.cfg;
        let map = trunk(&self.net, x.pixels.clone());
        let [n, _, _, _] = map.dims();
        let scores = self.navigator.forward(map.clone().detach());
        let (kept, _) = propose(&host(scores.clone()), &self.anchors, cfg.nms_iou, cfg.proposals);
        let raw = self.head.raw.forward(self.head.dropout.forward(gap(map.clone())));
        let m = cfg.proposals;
        if kept.iter().any(|k| k.len() < m) {
            // Fewer anchors than M: the raw classifier alone.
            let got = hits(&raw, &x.label_vec);
            return StepLoss { loss: cross_entropy(raw, x.labels.clone()), hits: Some(got) };
        }
        let parts = self.parts(x.pixels.clone(), &kept, m);
        let [_, _, c] = parts.dims();
        let part_logits = self.head.teacher.forward(self.head.dropout.forward(parts.clone().reshape([n * m, c])));
        let part_labels = x.labels.clone().reshape([n, 1]).repeat_dim(1, m).reshape([n * m]);
        let each = cross_entropy_each(part_logits, part_labels);
        let conf = host(each.clone());
        let idx: Vec<i64> = kept.iter().flatten().map(|&a| a as i64).collect();
        let picked = scores.gather(1, Tensor::<B, 2, Int>::from_data(TensorData::new(idx, [n, m]), &x.pixels.device()));
        let rank = ranking_loss(picked, &conf, cfg.rank_margin);
        let concat = self.head.scrutinize(map, &parts);
        let got = hits(&concat, &x.label_vec);
        let loss = cross_entropy(raw, x.labels.clone()).mul_scalar(cfg.raw_weight)
            + rank.mul_scalar(cfg.rank_weight)
            + each.mean().mul_scalar(cfg.teacher_weight)
            + cross_entropy(concat, x.labels.clone()).mul_scalar(cfg.concat_weight);
        StepLoss { loss, hits: Some(got) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        backbone_groups(&self.net, self, grads, self.backbone_lr_mult)
    }
}

/// Runs NTS-Net end to end.
pub fn run_live<B: AutodiffBackend>(s: &LiveStage<'_, B>) -> Result<Option<Outcome>, TrainError> {
    let cfg = NtsConfig::from_params(&s.r.method.params).map_err(|message| TrainError::Recipe { path: s.ctx.run_dir.join("recipe.toml"), message })?;
    let [c, _, _] = s.shape;
    let anchors = nts_anchors(&nts_levels(), s.r.data.crop as usize);
    B::seed(s.device, s.r.train.seed);
    let model = NtsLive {
        net: s.net.clone(),
        navigator: Navigator::new(c, cfg.navigator_channels, s.device),
        head: NtsRound2::new(c, s.classes, &cfg, s.device),
        anchors: anchors.clone(),
        backbone_lr_mult: s.r.train.backbone_lr_mult,
    };
    let Some(model) = s.train(model, false)? else { return Ok(None) };
    let m = model.valid();
    let classes = s.classes;
    let looks_at = look_images(s.ds.test.len());
    let mut looks = Vec::new();
    let mut raw_hits = (0usize, 0usize);
    let mut filled = 0usize;
    let (top1, n) = s.evaluate(|x| {
        let map = trunk(&m.net, x.pixels.clone());
        let (kept, f) = propose(&host(m.navigator.forward(map.clone())), &anchors, cfg.nms_iou, cfg.proposals);
        filled += f;
        let raw = m.head.raw.forward(gap(map.clone()));
        raw_hits.0 += hits(&raw, &x.label_vec);
        raw_hits.1 += x.label_vec.len();
        let scores =
            if kept.iter().all(|k| k.len() >= cfg.cat_num) { host(m.head.scrutinize(map, &m.parts(x.pixels.clone(), &kept, cfg.cat_num))) } else { host(raw) };
        for (j, &i) in x.items.iter().enumerate().filter(|(_, i)| looks_at.contains(i)) {
            let pred = fgia_core::metrics::argmax_rows(&scores[j * classes..(j + 1) * classes], classes)[0];
            let boxes = kept[j].iter().enumerate().map(|(r, &a)| (anchors[a], format!("#{}{}", r + 1, if r < cfg.cat_num { "" } else { " (teacher only)" })));
            looks.push(Look { image: i, boxes: boxes.collect(), caption: format!("predicted: {}", s.ds.classes.names[pred]), ..Default::default() });
        }
        scores
    })?;
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".into(), top1);
    metrics.insert("top1_raw_only".into(), 100.0 * raw_hits.0 as f64 / raw_hits.1.max(1) as f64);
    metrics.insert("test_images".into(), n as f64);
    metrics.insert("anchors".into(), anchors.len() as f64);
    metrics.insert("proposals".into(), cfg.proposals as f64);
    metrics.insert("test_images_nms_filled".into(), filled as f64);
    Ok(Some(Outcome {
        metrics,
        trained_layers: format!(
            "the backbone (at {} times the rate, through the image and the {} part crops), the navigator ({} channels, on the detached map), the teacher, the scrutinizer ({} parts + image) and the raw classifier",
            s.r.train.backbone_lr_mult, cfg.proposals, cfg.navigator_channels, cfg.cat_num
        ),
        loss: format!(
            "{} CE(raw) + {} ranking hinge (margin {}) on the teacher's confidences of the pixel crops + {} CE(teacher, each of {} parts) + {} CE(scrutinizer)",
            cfg.raw_weight, cfg.rank_weight, cfg.rank_margin, cfg.teacher_weight, cfg.proposals, cfg.concat_weight
        ),
        deviations: vec![format!(
            "{} anchors at {} px (the paper's 1614 are at 448 px); parts resampled at {} px; NMS at IoU {} keeps {}",
            anchors.len(),
            s.r.data.crop,
            cfg.part_size,
            cfg.nms_iou,
            cfg.proposals
        )],
        tta: "none (the scrutinizer on the image and its top 4 proposals)".into(),
        looks,
    }))
}
