//! Part-based R-CNN: "Part-based R-CNNs for Fine-grained Category Detection", Zhang, Donahue,
//! Girshick and Darrell, ECCV 2014 (survey §5.1.1). Recipes: `recipes/table2/part-rcnn.toml`
//! (object box given at test), `recipes/table2/part-rcnn-no-annotations.toml` (nothing given at
//! test) and `recipes/table2/part-rcnn-oracle.toml` (box and parts given at test).
//!
//! **Regions.** The object box and two parts, head and body. Training uses CUB's boxes and
//! keypoints: the head is the tight box of the visible beak, crown, forehead, eyes, nape and
//! throat; the body that of the back, belly, breast and wings (legs and tail left out), each
//! grown by 10 % of the object's longer side and kept inside the grown object box
//! ([`crate::geometry::head_and_body`]; the grouping is our stated choice, the paper does not
//! list it).
//!
//! **Features and classifier.** One feature per region (the paper: fc6 of a network fine-tuned on
//! that region), concatenated, power-normalised `sign(x)|x|^0.3`, then a one-vs-rest linear SVM
//! with the squared hinge loss and L2 regularisation (the authors' classification script):
//! `L = mean_i Σ_c max(0, 1 − y_ic w_cᵀx_i)²`, `y_ic = ±1`, weight decay for the L2 term.
//!
//! **Test settings** (the survey's rows record what each used at training and at test):
//! - oracle: the annotated box, head and body;
//! - box at test: the annotated box; head and body placed by a geometric prior, the mean
//!   position of each part relative to the box over the training set;
//! - no annotations: the whole view as the box, the parts placed by the same prior.
//!
//! **End to end** (`mode = "end-to-end"`, [`PartRcnnLive`]): the regions are cropped from the
//! pixels inside the step; a softmax on their concatenated features fine-tunes the backbone
//! through them while the SVM learns on the same features, detached ([`LIVE_DEVIATIONS`]).
//!
//! **Deviations of the cached rounds** (also in [`DEVIATIONS`]): no selective search proposals and no part detectors
//! (the paper's R-CNN detectors with the δ^NP geometric constraint); the rows without test-time
//! parts use the mean-geometry prior instead, and the row without a box uses the whole view. The
//! region features come from the frozen ImageNet backbone on the resampled regions, not from
//! networks fine-tuned per region.

use burn::module::AutodiffModule;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::backend::AutodiffBackend;
use fgia_core::datasets::{BBox, Record};
use fgia_core::imaging::ViewGeometry;
use fgia_train::TrainError;
use fgia_train::engine::{ParamGroup, StepLoss, TrainMethod, single_group};
use serde::{Deserialize, Serialize};

use crate::geometry::{NormBox, head_and_body};
use crate::live::{HostCrops, LiveStage};
use crate::looks::Look;
use crate::nn::{cross_entropy, hits, host};
use crate::run::{LocBatch, LocInput, Outcome, Sample, Stage, box_of, look_images, prepare};

/// The deviations of every Part-based R-CNN run.
pub const DEVIATIONS: &[&str] = &[
    "no selective-search proposals or part detectors: test-time parts come from the annotations (oracle) or a mean-geometry prior relative to the box",
    "region features from the frozen ImageNet backbone on the resampled regions, not fc6 of networks fine-tuned per region",
];

/// What the test images are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TestAnnotations {
    /// Nothing: the whole view stands for the box.
    None,
    /// The object box.
    Box,
    /// The object box and the parts (oracle).
    BoxAndParts,
}

/// Part-based R-CNN's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PartRcnnConfig {
    /// What the test images are given.
    pub test_annotations: TestAnnotations,
    /// Growth of the keypoint boxes, as a fraction of the object's longer side.
    pub margin: f32,
    /// Exponent of the power normalisation.
    pub power: f32,
    /// Side of the resampled regions (the paper warps to 227).
    pub region_size: usize,
}

impl Default for PartRcnnConfig {
    fn default() -> Self {
        PartRcnnConfig { test_annotations: TestAnnotations::Box, margin: 0.1, power: 0.3, region_size: 227 }
    }
}

impl PartRcnnConfig {
    /// Parses and validates `[method.params]`.
    pub fn from_params(p: &toml::Table) -> Result<Self, String> {
        let c: PartRcnnConfig = crate::recipe::params(p)?;
        let valid = c.margin.is_finite() && (0.0..=1.0).contains(&c.margin) && c.power.is_finite() && c.power > 0.0 && c.power <= 1.0;
        if !valid {
            return Err(format!("margin {} in [0, 1] and power {} in (0, 1]", c.margin, c.power));
        }
        if !(16..=1024).contains(&c.region_size) {
            return Err(format!("region_size {} must be in 16..=1024", c.region_size));
        }
        Ok(c)
    }

    /// In words, for the record.
    pub fn describe(&self) -> &'static str {
        match self.test_annotations {
            TestAnnotations::None => "training: box + parts; test: none (whole view as the box, parts by the mean-geometry prior)",
            TestAnnotations::Box => "training: box + parts; test: box (parts by the mean-geometry prior)",
            TestAnnotations::BoxAndParts => "training: box + parts; test: box + parts (oracle)",
        }
    }
}

/// A source-image box in the unit square of a view (not clipped: it may leave the view).
pub fn view_box(g: &ViewGeometry, b: BBox) -> Option<NormBox> {
    let (x0, y0) = g.map_point(b.x, b.y);
    let (x1, y1) = g.map_point(b.x + b.w, b.y + b.h);
    NormBox::new(x0.min(x1) / g.crop, y0.min(y1) / g.crop, x0.max(x1) / g.crop, y0.max(y1) / g.crop).ok()
}

/// A part box relative to its object box: `(x0, y0, x1, y1)` in the box's unit square.
fn relative(part: BBox, obj: BBox) -> [f32; 4] {
    [(part.x - obj.x) / obj.w, (part.y - obj.y) / obj.h, (part.x + part.w - obj.x) / obj.w, (part.y + part.h - obj.y) / obj.h]
}

/// The part of `obj` (a unit-square box) at the relative position `r`.
fn place(obj: NormBox, r: [f32; 4]) -> Option<NormBox> {
    let (w, h) = (obj.x1 - obj.x0, obj.y1 - obj.y0);
    NormBox::new(obj.x0 + r[0] * w, obj.y0 + r[1] * h, obj.x0 + r[2] * w, obj.y0 + r[3] * h).ok()
}

/// The mean relative head and body boxes over the training records that have them, and how
/// many records lacked each.
pub fn mean_geometry(train: &[Record], margin: f32) -> ([[f32; 4]; 2], [usize; 2]) {
    let (mut sum, mut n, mut missing) = ([[0f64; 4]; 2], [0usize; 2], [0usize; 2]);
    for rec in train {
        let Some(obj) = rec.bbox.filter(|b| b.w > 0.0 && b.h > 0.0) else { continue };
        let (head, body) = head_and_body(obj, &rec.parts, margin);
        for (g, part) in [head, body].into_iter().enumerate() {
            match part {
                Some(p) => {
                    for (s, v) in sum[g].iter_mut().zip(relative(p, obj)) {
                        *s += f64::from(v);
                    }
                    n[g] += 1;
                }
                None => missing[g] += 1,
            }
        }
    }
    let mean = |g: usize| -> [f32; 4] {
        if n[g] == 0 {
            return [0.0, 0.0, 1.0, 1.0];
        }
        sum[g].map(|s| (s / n[g] as f64) as f32)
    };
    ([mean(0), mean(1)], missing)
}

/// The three regions of a record in a view: box, head, body (`None` for a degenerate box).
fn regions(rec: &Record, g: &ViewGeometry, cfg: &PartRcnnConfig, prior: &[[f32; 4]; 2], given: TestAnnotations) -> Option<[NormBox; 3]> {
    let obj = rec.bbox?;
    let obj_view = match given {
        TestAnnotations::None => NormBox::FULL,
        TestAnnotations::Box | TestAnnotations::BoxAndParts => view_box(g, obj)?,
    };
    let (head, body) = if given == TestAnnotations::BoxAndParts { head_and_body(obj, &rec.parts, cfg.margin) } else { (None, None) };
    let part = |p: Option<BBox>, k: usize| -> Option<NormBox> {
        match p {
            Some(p) => view_box(g, p),
            None => place(obj_view, prior[k]),
        }
    };
    Some([obj_view, part(head, 0)?, part(body, 1)?])
}

/// The linear SVM on the power-normalised concatenated region features.
#[derive(Module, Debug)]
pub struct PartSvm<B: Backend> {
    /// `3 C -> classes`.
    pub svm: Linear<B>,
    #[module(skip)]
    power: f32,
}

impl<B: Backend> PartSvm<B> {
    /// Scores of crops `[n, 3, C]`.
    pub fn forward(&self, parts: Tensor<B, 3>) -> Tensor<B, 2> {
        let [n, k, c] = parts.dims();
        let x = parts.reshape([n, k * c]);
        let x = x.clone().sign() * x.abs().add_scalar(1e-12).powf_scalar(self.power);
        self.svm.forward(x)
    }
}

/// The one-vs-rest squared hinge loss of `scores` `[n, C]`.
pub fn squared_hinge<B: Backend>(scores: Tensor<B, 2>, labels: &[usize]) -> Tensor<B, 1> {
    let [n, c] = scores.dims();
    let mut y = vec![-1f32; n * c];
    for (i, &l) in labels.iter().enumerate() {
        y[i * c + l] = 1.0;
    }
    let y = Tensor::<B, 2>::from_data(TensorData::new(y, [n, c]), &scores.device());
    relu((scores * y).neg().add_scalar(1.0)).powi_scalar(2).sum_dim(1).mean()
}

impl<B: AutodiffBackend> TrainMethod<B> for PartSvm<B> {
    type Batch = LocBatch;
    type Input = LocInput<B>;

    fn prepare(&self, b: LocBatch, device: &B::Device) -> LocInput<B> {
        prepare(b, device)
    }

    fn loss(&self, x: &LocInput<B>, _: usize) -> StepLoss<B> {
        let scores = self.forward(x.parts.clone().expect("regions"));
        let got = hits(&scores, &x.label_vec);
        StepLoss { loss: squared_hinge(scores, &x.label_vec), hits: Some(got) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

/// Runs Part-based R-CNN.
pub fn run<B: AutodiffBackend>(s: &Stage<'_, B>) -> Result<Option<Outcome>, TrainError> {
    let cfg = PartRcnnConfig::from_params(&s.r.method.params).map_err(|message| TrainError::Recipe { path: s.ctx.run_dir.join("recipe.toml"), message })?;
    let (prior, missing) = mean_geometry(&s.ds.train, cfg.margin);
    let size = cfg.region_size;
    let test_regions = std::sync::Mutex::new(std::collections::HashMap::<usize, [NormBox; 3]>::new());
    let to_samples = |r: [NormBox; 3]| r.iter().map(|b| Sample::from_box(*b, size)).collect::<Vec<_>>();
    // The training regions (box, head, body from the annotations) do not depend on the test
    // setting: the three recipes of a process draw them once.
    let train_key = format!("part-rcnn|{}|{}", cfg.margin, cfg.region_size);
    let parts = s.crops_sharing_train(
        Some(&train_key),
        "Part-based R-CNN",
        3,
        3,
        size,
        false,
        &|i, _, g| regions(&s.ds.train[i], g, &cfg, &prior, TestAnnotations::BoxAndParts).map(to_samples),
        &|i, g| {
            let r = regions(&s.ds.test[i], g, &cfg, &prior, cfg.test_annotations)?;
            test_regions.lock().unwrap_or_else(|p| p.into_inner()).insert(i, r);
            Some(to_samples(r))
        },
    )?;
    let c = parts.per;
    B::seed(s.device, s.r.train.seed);
    let svm = PartSvm::<B> { svm: LinearConfig::new(3 * c, s.classes).init(s.device), power: cfg.power };
    let Some(svm) = s.round("svm", svm, Some(&parts), false)? else { return Ok(None) };
    let model = svm.valid();
    let mut preds = std::collections::HashMap::new();
    let (top1, n) = s.evaluate(Some(&parts), |x| {
        let scores = host(model.forward(x.parts.expect("regions")));
        for (j, &(i, _)) in x.views.iter().enumerate() {
            preds.insert(i, fgia_core::metrics::argmax_rows(&scores[j * s.classes..(j + 1) * s.classes], s.classes)[0]);
        }
        scores
    });
    let test_regions = test_regions.into_inner().unwrap_or_else(|p| p.into_inner());
    let looks = look_images(s.ds.test.len())
        .into_iter()
        .filter_map(|i| {
            let r = test_regions.get(&i)?;
            Some(Look {
                image: i,
                boxes: vec![(r[0], "box".into()), (r[1], "head".into()), (r[2], "body".into())],
                caption: preds.get(&i).map(|&p| format!("predicted: {}", s.ds.classes.names[p])).unwrap_or_default(),
                ..Default::default()
            })
        })
        .collect();
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".into(), top1);
    metrics.insert("test_images".into(), n as f64);
    metrics.insert("train_head_missing".into(), missing[0] as f64);
    metrics.insert("train_body_missing".into(), missing[1] as f64);
    let mut deviations = vec![format!("regions resampled at {size} px; head and body keypoint groups grown by {} of the object's longer side", cfg.margin)];
    deviations.push(format!("annotations: {}", cfg.describe()));
    Ok(Some(Outcome {
        metrics,
        trained_layers: format!("a linear SVM on the power-normalised ({}) box, head and body features (3 x {c}; backbone frozen)", cfg.power),
        loss: "one-vs-rest squared hinge (L2-SVM), L2 regularisation by weight decay".into(),
        deviations,
        tta: "none".into(),
        looks,
    }))
}

/// The deviations of every end-to-end Part-based R-CNN run.
pub const LIVE_DEVIATIONS: &[&str] = &[
    "no selective-search proposals or part detectors: test-time parts come from the annotations (oracle) or a mean-geometry prior relative to the box",
    "one backbone fine-tuned on the three regions together by a softmax on their concatenated features, with the SVM trained on the same (detached) features in the same step (the paper fine-tunes one network per region, then trains the SVM on fc6)",
];

/// Part-based R-CNN end to end: the regions of each view come from its annotations (training:
/// box and parts; test: the recipe's setting), are cropped from the pixels inside the step and run
/// through the backbone, which the SVM's loss fine-tunes.
#[derive(Module, Debug)]
pub struct PartRcnnLive<B: Backend> {
    svm: PartSvm<B>,
    /// The fine-tuning classifier (softmax) on the concatenated region features.
    soft: Linear<B>,
    #[module(skip)]
    cfg: PartRcnnConfig,
    #[module(skip)]
    prior: [[f32; 4]; 2],
    /// Views whose regions could not be placed (a degenerate box): they fall back to the whole
    /// view for every region.
    #[module(skip)]
    unplaced: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<B: AutodiffBackend> TrainMethod<B> for PartRcnnLive<B> {
    type Batch = LocBatch;
    type Input = LocInput<B>;

    fn prepare(&self, b: LocBatch, device: &B::Device) -> LocInput<B> {
        prepare(b, device)
    }

    fn loss(&self, x: &LocInput<B>, _: usize) -> StepLoss<B> {
        // The paper's two stages in one step: the softmax fine-tunes the backbone on the regions;
        // the SVM learns on the same features, detached (the power normalisation's derivative is
        // infinite at zero and would flood the backbone).
        let parts = x.parts.clone().expect("regions");
        let [n, k, c] = parts.dims();
        let soft = self.soft.forward(parts.clone().reshape([n, k * c]));
        let scores = self.svm.forward(parts.detach());
        let got = hits(&scores, &x.label_vec);
        StepLoss { loss: cross_entropy(soft, x.labels.clone()) + squared_hinge(scores, &x.label_vec), hits: Some(got) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

impl<B: Backend> HostCrops<B> for PartRcnnLive<B> {
    fn crop_spec(&self, _: bool) -> (usize, usize, bool) {
        (3, self.cfg.region_size, false)
    }

    fn samples(&self, _: Tensor<B, 4>, records: &[Record], items: &[usize], geometry: &[ViewGeometry], train: bool, _: u64) -> Vec<Vec<Sample>> {
        let given = if train { TestAnnotations::BoxAndParts } else { self.cfg.test_annotations };
        items
            .iter()
            .zip(geometry)
            .map(|(&i, g)| {
                let r = regions(&records[i], g, &self.cfg, &self.prior, given).unwrap_or_else(|| {
                    self.unplaced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    [NormBox::FULL; 3]
                });
                r.iter().map(|b| Sample::from_box(*b, self.cfg.region_size)).collect()
            })
            .collect()
    }
}

/// Runs Part-based R-CNN end to end.
pub fn run_live<B: AutodiffBackend>(s: &LiveStage<'_, B>) -> Result<Option<Outcome>, TrainError> {
    let cfg = PartRcnnConfig::from_params(&s.r.method.params).map_err(|message| TrainError::Recipe { path: s.ctx.run_dir.join("recipe.toml"), message })?;
    let (prior, missing) = mean_geometry(&s.ds.train, cfg.margin);
    let [c, _, _] = s.shape;
    B::seed(s.device, s.r.train.seed);
    let model = PartRcnnLive {
        svm: PartSvm { svm: LinearConfig::new(3 * c, s.classes).init(s.device), power: cfg.power },
        soft: LinearConfig::new(3 * c, s.classes).init(s.device),
        cfg: cfg.clone(),
        prior,
        unplaced: Default::default(),
    };
    let Some(live) = s.train_crops(model, false)? else { return Ok(None) };
    let train_unplaced = live.m.unplaced.load(std::sync::atomic::Ordering::Relaxed);
    let live = live.valid();
    live.m.unplaced.store(0, std::sync::atomic::Ordering::Relaxed);
    let looks_at = look_images(s.ds.test.len());
    let mut looks = Vec::new();
    let classes = s.classes;
    let (top1, n) = s.evaluate_crops(&live, |x, samples| {
        let scores = host(live.m.svm.forward(x.parts.expect("regions")));
        for (j, &(i, _)) in x.views.iter().enumerate().filter(|(_, v)| looks_at.contains(&v.0)) {
            let pred = fgia_core::metrics::argmax_rows(&scores[j * classes..(j + 1) * classes], classes)[0];
            let boxes = samples[j].iter().zip(["box", "head", "body"]).map(|(smp, name)| (box_of(&smp.grid), name.to_string()));
            looks.push(Look { image: i, boxes: boxes.collect(), caption: format!("predicted: {}", s.ds.classes.names[pred]), ..Default::default() });
        }
        scores
    })?;
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".into(), top1);
    metrics.insert("test_images".into(), n as f64);
    metrics.insert("train_head_missing".into(), missing[0] as f64);
    metrics.insert("train_body_missing".into(), missing[1] as f64);
    metrics.insert("train_views_unplaced".into(), train_unplaced as f64);
    metrics.insert("test_images_unplaced".into(), live.m.unplaced.load(std::sync::atomic::Ordering::Relaxed) as f64);
    let size = cfg.region_size;
    Ok(Some(Outcome {
        metrics,
        trained_layers: format!(
            "the backbone (at {} times the rate, through the three regions, by a softmax on their concatenated features) and the linear SVM on the power-normalised ({}) box, head and body features (3 x {c}, detached)",
            s.r.train.backbone_lr_mult, cfg.power
        ),
        loss: "CE(softmax on the concatenated regions; fine-tunes the backbone) + one-vs-rest squared hinge (L2-SVM on the detached features), L2 regularisation by weight decay".into(),
        deviations: vec![
            format!("regions resampled at {size} px; head and body keypoint groups grown by {} of the object's longer side", cfg.margin),
            format!("annotations: {}", cfg.describe()),
        ],
        tta: "none".into(),
        looks,
    }))
}
