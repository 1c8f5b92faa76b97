//! STN: "Spatial Transformer Networks", Jaderberg, Simonyan, Zisserman and Kavukcuoglu,
//! NeurIPS 2015, §4.3 fine-grained classification on CUB (survey §5.1.4). Recipe:
//! `recipes/table2/stn.toml`.
//!
//! **Transformers.** A localisation network on the image predicts, for each of `N = 2`
//! transformers, an attention transform (isotropic scale and translation)
//! `θ = [[s, 0, t_x], [0, s, t_y]]`; each samples a patch of the input with the standard affine
//! grid and bilinear `grid_sample` (here `align_corners = false`, stated because PyTorch's
//! default changed). The patches go through part networks whose pooled features are
//! concatenated and classified (cross-entropy only; no part supervision).
//!
//! **Initialisation.** The transformers start at distinct boxes of half the side (scale 0.5),
//! shifted left and right (`N = 2`) or to the four quadrants (`N = 4`), as the paper initialises
//! them to different positions; identical starts would train identical branches.
//!
//! **End to end** (`mode = "end-to-end"`, [`StnLive`]): the localisation network reads the
//! live backbone's last map; its transforms crop the view's pixels inside the step (an
//! attention transform is a box: [`crate::live::box_crops`] gives `grid_sample`'s values at its
//! affine grid, differentiable in `θ`), the patches run through the same backbone, and the
//! cross-entropy trains the classifier, the backbone and, through the patches, the localiser.
//! Deviation: one backbone for the image and the patches (the paper: one Inception per part).
//!
//! **Deviations of the cached rounds** (also in [`DEVIATIONS`]): cached rounds. Round 1 trains the localisation
//! network (two fully connected layers on the pooled cached map) and a classifier on transformed
//! samples of the cached map itself: `grid_sample` of the map is differentiable in `θ`, so the
//! classification loss trains the localiser; the transformers' boxes are then cropped from the
//! pixels once per cached view; round 2 trains the classifier on the patches' pooled features
//! through the shared frozen backbone (the paper has a separate Inception per part, trained end
//! to end). The localiser trains at the recipe's rate (the paper lowers it).

use std::collections::HashMap;

use burn::module::AutodiffModule;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid, tanh};
use burn::tensor::backend::AutodiffBackend;
use fgia_nn::Network;
use fgia_train::TrainError;
use fgia_train::engine::{ParamGroup, StepLoss, TrainMethod, single_group};
use fgia_train::sources::MapBatch;
use serde::{Deserialize, Serialize};

use crate::geometry::{NormBox, box_zoom};
use crate::live::{LiveInput, LiveStage, backbone_groups, box_crops, prepare_live, trunk};
use crate::looks::Look;
use crate::nn::{cross_entropy, gap, hits, host, trainable};
use crate::run::{LocBatch, LocInput, Outcome, Sample, Stage, look_images, prepare};

/// The deviations of every STN run.
pub const DEVIATIONS: &[&str] = &[
    "the localiser trains on transformed samples of the cached last map (round 1); the patches are cropped from the pixels once per cached view and classified through the shared frozen backbone (round 2), not separate part Inceptions trained end to end",
];

/// The deviations of every end-to-end STN run (beyond the patches' backbone, which the run
/// states with the patch size).
pub const LIVE_DEVIATIONS: &[&str] = &[];

/// STN's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StnConfig {
    /// Transformers `N` (2 or 4).
    pub transformers: usize,
    /// Hidden width of the localisation network.
    pub hidden: usize,
    /// Initial scale of every transformer.
    pub init_scale: f32,
    /// Smallest and largest scale.
    pub scale_range: [f32; 2],
    /// Side of the sampled patches (the paper: 224 from 448).
    pub patch_size: usize,
    /// Weight of the cross-entropy (the only loss).
    pub ce_weight: f32,
}

impl Default for StnConfig {
    fn default() -> Self {
        StnConfig { transformers: 2, hidden: 256, init_scale: 0.5, scale_range: [0.25, 1.0], patch_size: 224, ce_weight: 1.0 }
    }
}

impl StnConfig {
    /// Parses and validates `[method.params]`.
    pub fn from_params(p: &toml::Table) -> Result<Self, String> {
        let c: StnConfig = crate::recipe::params(p)?;
        if ![2, 4].contains(&c.transformers) || c.hidden == 0 || !(16..=1024).contains(&c.patch_size) {
            return Err(format!("transformers {} must be 2 or 4, hidden {} > 0, patch_size {} in 16..=1024", c.transformers, c.hidden, c.patch_size));
        }
        let [lo, hi] = c.scale_range;
        let valid = lo > 0.0 && lo < hi && hi <= 1.0 && (lo..=hi).contains(&c.init_scale) && c.ce_weight.is_finite() && c.ce_weight >= 0.0;
        if !valid {
            return Err(format!("scale_range [{lo}, {hi}] within (0, 1] must hold init_scale {}; ce_weight {} >= 0", c.init_scale, c.ce_weight));
        }
        Ok(c)
    }

    /// The initial translations.
    pub fn init_translations(&self) -> Vec<(f32, f32)> {
        if self.transformers == 2 { vec![(-0.25, 0.0), (0.25, 0.0)] } else { vec![(-0.25, -0.25), (0.25, -0.25), (-0.25, 0.25), (0.25, 0.25)] }
    }
}

/// The localisation network: `(s, t_x, t_y)` per transformer.
#[derive(Module, Debug)]
pub struct Localiser<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
    #[module(skip)]
    cfg: StnConfig,
}

fn logit(p: f32) -> f32 {
    (p / (1.0 - p)).ln()
}

impl<B: Backend> Localiser<B> {
    fn new(c: usize, cfg: &StnConfig, device: &B::Device) -> Self {
        let n = cfg.transformers;
        let mut fc2 = LinearConfig::new(cfg.hidden, 3 * n).init(device);
        fc2.weight = trainable(fc2.weight, |w| w.zeros_like());
        let [lo, hi] = cfg.scale_range;
        let mut bias = Vec::with_capacity(3 * n);
        for (tx, ty) in cfg.init_translations() {
            let u = ((cfg.init_scale - lo) / (hi - lo)).clamp(1e-3, 1.0 - 1e-3);
            let room = 1.0 - cfg.init_scale;
            bias.extend([logit(u), (tx / room).clamp(-0.999, 0.999).atanh(), (ty / room).clamp(-0.999, 0.999).atanh()]);
        }
        let b = Tensor::<B, 1>::from_data(TensorData::new(bias, [3 * n]), device);
        fc2.bias = fc2.bias.map(|p| trainable(p, |_| b));
        Localiser { fc1: LinearConfig::new(c, cfg.hidden).init(device), fc2, cfg: cfg.clone() }
    }

    /// Scale and translation `(s, t_x, t_y)` of maps `[n, C, h, w]`, `[n N, 1]` each
    /// (item-major), the patch kept inside the view.
    fn params(&self, map: Tensor<B, 4>) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
        let [n, _, _, _] = map.dims();
        let t = self.cfg.transformers;
        let raw = self.fc2.forward(relu(self.fc1.forward(gap(map)))).reshape([n * t, 3]);
        let [lo, hi] = self.cfg.scale_range;
        let col = |k: usize| raw.clone().slice([0..n * t, k..k + 1]);
        let s = sigmoid(col(0)).mul_scalar(hi - lo).add_scalar(lo);
        let room = s.clone().neg().add_scalar(1.0);
        (s, tanh(col(1)) * room.clone(), tanh(col(2)) * room)
    }

    /// `θ` `[n N, 2, 3]` of maps `[n, C, h, w]` (item-major).
    pub fn theta(&self, map: Tensor<B, 4>) -> Tensor<B, 3> {
        let (s, tx, ty) = self.params(map);
        let zero = s.zeros_like();
        let row1 = Tensor::cat(vec![s.clone(), zero.clone(), tx], 1);
        let row2 = Tensor::cat(vec![zero, s, ty], 1);
        Tensor::stack::<3>(vec![row1, row2], 1)
    }

    /// The patches' boxes `(x0, y0, x1, y1)` in the unit square (`[n N]` each), the same boxes
    /// as [`theta_box`] of [`Localiser::theta`], differentiable in the localiser.
    pub fn corners(&self, map: Tensor<B, 4>) -> [Tensor<B, 1>; 4] {
        let (s, tx, ty) = self.params(map);
        let [m, _] = s.dims();
        let edge = |t: Tensor<B, 2>, sign: f32| (t + s.clone().mul_scalar(sign)).add_scalar(1.0).mul_scalar(0.5).reshape([m]);
        [edge(tx.clone(), -1.0), edge(ty.clone(), -1.0), edge(tx, 1.0), edge(ty, 1.0)]
    }
}

/// The box of an attention transform `[s, 0, tx, 0, s, ty]` in the unit square.
pub fn theta_box(t: &[f32]) -> NormBox {
    let (s, tx, ty) = (t[0], t[2], t[5]);
    NormBox { x0: (tx - s + 1.0) / 2.0, y0: (ty - s + 1.0) / 2.0, x1: (tx + s + 1.0) / 2.0, y1: (ty + s + 1.0) / 2.0 }
}

/// Round 1: the localiser and a classifier on transformed samples of the cached map.
#[derive(Module, Debug)]
pub struct StnMap<B: Backend> {
    loc: Localiser<B>,
    fc: Linear<B>,
}

impl<B: AutodiffBackend> TrainMethod<B> for StnMap<B> {
    type Batch = LocBatch;
    type Input = LocInput<B>;

    fn prepare(&self, b: LocBatch, device: &B::Device) -> LocInput<B> {
        prepare(b, device)
    }

    fn loss(&self, x: &LocInput<B>, _: usize) -> StepLoss<B> {
        let [n, c, h, w] = x.global.dims();
        let t = self.loc.cfg.transformers;
        let [x0, y0, x1, y1] = self.loc.corners(x.global.clone());
        let rep = x.global.clone().reshape([n, 1, c, h, w]).repeat_dim(1, t).reshape([n * t, c, h, w]);
        // `affine_grid(θ)` + `grid_sample` of an attention transform is a box crop: the same values
        // by separable bilinear weights ([`box_zoom`], tested equal), five times faster through
        // autodiff on the CPU.
        let patches = box_zoom(rep, x0, y0, x1, y1, h, w);
        let feats = gap(patches).reshape([n, t * c]);
        let logits = self.fc.forward(feats);
        let got = hits(&logits, &x.label_vec);
        StepLoss { loss: cross_entropy(logits, x.labels.clone()).mul_scalar(self.loc.cfg.ce_weight), hits: Some(got) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

/// Round 2: the classifier on the patches' pooled features.
#[derive(Module, Debug)]
pub struct StnHead<B: Backend> {
    fc: Linear<B>,
    #[module(skip)]
    ce_weight: f32,
}

impl<B: Backend> StnHead<B> {
    /// Scores of the patches `[n, N, C]`.
    pub fn forward(&self, parts: &Tensor<B, 3>) -> Tensor<B, 2> {
        let [n, t, c] = parts.dims();
        self.fc.forward(parts.clone().reshape([n, t * c]))
    }
}

impl<B: AutodiffBackend> TrainMethod<B> for StnHead<B> {
    type Batch = LocBatch;
    type Input = LocInput<B>;

    fn prepare(&self, b: LocBatch, device: &B::Device) -> LocInput<B> {
        prepare(b, device)
    }

    fn loss(&self, x: &LocInput<B>, _: usize) -> StepLoss<B> {
        let logits = self.forward(x.parts.as_ref().expect("patches"));
        let got = hits(&logits, &x.label_vec);
        StepLoss { loss: cross_entropy(logits, x.labels.clone()).mul_scalar(self.ce_weight), hits: Some(got) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

/// Runs STN.
pub fn run<B: AutodiffBackend>(s: &Stage<'_, B>) -> Result<Option<Outcome>, TrainError> {
    let cfg = StnConfig::from_params(&s.r.method.params).map_err(|message| TrainError::Recipe { path: s.ctx.run_dir.join("recipe.toml"), message })?;
    let [c, _, _] = s.maps.shape;
    let t = cfg.transformers;
    B::seed(s.device, s.r.train.seed);
    let model = StnMap { loc: Localiser::new(c, &cfg, s.device), fc: LinearConfig::new(t * c, s.classes).init(s.device) };
    let Some(model) = s.round("round-1-localiser", model, None, false)? else { return Ok(None) };
    let loc = model.valid().loc;
    let boxes_of = |maps: Tensor<B::InnerBackend, 4>| -> Vec<Vec<NormBox>> {
        host(loc.theta(maps)).chunks(6 * t).map(|item| item.chunks(6).map(theta_box).collect()).collect()
    };
    let mut train_boxes: HashMap<(usize, usize), Vec<NormBox>> = HashMap::new();
    s.on_maps(&s.train_views(), true, |views, maps| {
        for (v, b) in views.iter().zip(boxes_of(maps)) {
            train_boxes.insert(*v, b);
        }
    });
    let mut test_boxes: HashMap<usize, Vec<NormBox>> = HashMap::new();
    s.on_maps(&s.test_views(), false, |views, maps| {
        for (v, b) in views.iter().zip(boxes_of(maps)) {
            test_boxes.insert(v.0, b);
        }
    });
    let size = cfg.patch_size;
    let to = |b: &Vec<NormBox>| b.iter().map(|x| Sample::from_box(*x, size)).collect::<Vec<_>>();
    let parts = s.crops("STN", t, t, size, false, &|i, v, _| train_boxes.get(&(i, v)).map(to), &|i, _| test_boxes.get(&i).map(to))?;
    B::seed(s.device, s.r.train.seed ^ 0x2);
    let head = StnHead { fc: LinearConfig::new(t * c, s.classes).init(s.device), ce_weight: cfg.ce_weight };
    let Some(head) = s.round("round-2-patches", head, Some(&parts), false)? else { return Ok(None) };
    let head = head.valid();
    let mut preds = HashMap::new();
    let (top1, n) = s.evaluate(Some(&parts), |x| {
        let scores = host(head.forward(x.parts.as_ref().expect("patches")));
        for (j, &(i, _)) in x.views.iter().enumerate() {
            preds.insert(i, fgia_core::metrics::argmax_rows(&scores[j * s.classes..(j + 1) * s.classes], s.classes)[0]);
        }
        scores
    });
    let looks = look_images(s.ds.test.len())
        .into_iter()
        .filter_map(|i| {
            let b = test_boxes.get(&i)?;
            Some(Look {
                image: i,
                boxes: b.iter().enumerate().map(|(k, x)| (*x, format!("transformer {}", k + 1))).collect(),
                caption: preds.get(&i).map(|&p| format!("predicted: {}", s.ds.classes.names[p])).unwrap_or_default(),
                ..Default::default()
            })
        })
        .collect();
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".into(), top1);
    metrics.insert("test_images".into(), n as f64);
    metrics.insert("transformers".into(), t as f64);
    Ok(Some(Outcome {
        metrics,
        trained_layers: format!(
            "the localisation network ({} hidden units, {t} attention transforms) and a classifier on transformed map samples (round 1); the classifier on the {t} patches (round 2; backbone frozen)",
            cfg.hidden
        ),
        loss: format!("{} CE (both rounds)", cfg.ce_weight),
        deviations: vec![format!("patches sampled at {size} px; scales kept in [{}, {}]", cfg.scale_range[0], cfg.scale_range[1])],
        tta: "none".into(),
        looks,
    }))
}

/// STN end to end (`mode = "end-to-end"`): the backbone, the localisation network on its last
/// map, and the classifier on the patches, which are sampled from the pixels inside the step
/// (the attention transforms are box crops: [`box_crops`], `grid_sample`'s values) and run
/// through the same backbone, so the localiser learns through the patches and the backbone.
#[derive(Module, Debug)]
pub struct StnLive<B: Backend> {
    net: Network<B>,
    loc: Localiser<B>,
    fc: Linear<B>,
    backbone_lr_mult: f64,
}

impl<B: Backend> StnLive<B> {
    /// Scores `[n, classes]` and the patches' boxes `(x0, y0, x1, y1)` (`[n N]` each).
    pub fn forward(&self, pixels: Tensor<B, 4>) -> (Tensor<B, 2>, [Tensor<B, 1>; 4]) {
        let [n, _, _, _] = pixels.dims();
        let t = self.loc.cfg.transformers;
        let corners = self.loc.corners(trunk(&self.net, pixels.clone()));
        let f = box_crops(&self.net, pixels, corners.clone(), t, self.loc.cfg.patch_size);
        let [_, _, c] = f.dims();
        (self.fc.forward(f.reshape([n, t * c])), corners)
    }
}

impl<B: AutodiffBackend> TrainMethod<B> for StnLive<B> {
    type Batch = MapBatch;
    type Input = LiveInput<B>;

    fn prepare(&self, b: MapBatch, device: &B::Device) -> LiveInput<B> {
        prepare_live(b, device)
    }

    fn loss(&self, x: &LiveInput<B>, _: usize) -> StepLoss<B> {
        let (logits, _) = self.forward(x.pixels.clone());
        let got = hits(&logits, &x.label_vec);
        StepLoss { loss: cross_entropy(logits, x.labels.clone()).mul_scalar(self.loc.cfg.ce_weight), hits: Some(got) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        backbone_groups(&self.net, self, grads, self.backbone_lr_mult)
    }
}

/// Runs STN end to end.
pub fn run_live<B: AutodiffBackend>(s: &LiveStage<'_, B>) -> Result<Option<Outcome>, TrainError> {
    let cfg = StnConfig::from_params(&s.r.method.params).map_err(|message| TrainError::Recipe { path: s.ctx.run_dir.join("recipe.toml"), message })?;
    let [c, _, _] = s.shape;
    let t = cfg.transformers;
    B::seed(s.device, s.r.train.seed);
    let model = StnLive {
        net: s.net.clone(),
        loc: Localiser::new(c, &cfg, s.device),
        fc: LinearConfig::new(t * c, s.classes).init(s.device),
        backbone_lr_mult: s.r.train.backbone_lr_mult,
    };
    let Some(model) = s.train(model, false)? else { return Ok(None) };
    let m = model.valid();
    let looks_at = look_images(s.ds.test.len());
    let mut looks = Vec::new();
    let classes = s.classes;
    let (top1, n) = s.evaluate(|x| {
        let (logits, corners) = m.forward(x.pixels.clone());
        let scores = host(logits);
        let [x0, y0, x1, y1] = corners.map(host);
        for (j, &i) in x.items.iter().enumerate().filter(|(_, i)| looks_at.contains(i)) {
            let pred = fgia_core::metrics::argmax_rows(&scores[j * classes..(j + 1) * classes], classes)[0];
            let boxes =
                (0..t).map(|k| (NormBox { x0: x0[j * t + k], y0: y0[j * t + k], x1: x1[j * t + k], y1: y1[j * t + k] }, format!("transformer {}", k + 1)));
            looks.push(Look { image: i, boxes: boxes.collect(), caption: format!("predicted: {}", s.ds.classes.names[pred]), ..Default::default() });
        }
        scores
    })?;
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".into(), top1);
    metrics.insert("test_images".into(), n as f64);
    metrics.insert("transformers".into(), t as f64);
    Ok(Some(Outcome {
        metrics,
        trained_layers: format!(
            "the backbone (at {} times the rate), the localisation network ({} hidden units, {t} attention transforms) through the patches, and the classifier on the {t} patches",
            s.r.train.backbone_lr_mult, cfg.hidden
        ),
        loss: format!("{} CE", cfg.ce_weight),
        deviations: vec![format!(
            "patches sampled at {} px through the same backbone (the paper: one Inception per part); scales kept in [{}, {}]",
            cfg.patch_size, cfg.scale_range[0], cfg.scale_range[1]
        )],
        tta: "none".into(),
        looks,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    type F = burn::backend::Flex;

    #[test]
    fn the_initialised_localiser_trains() {
        // Its output layer is set at init (zero weights, the distinct starting boxes in the bias):
        // both must stay parameters that take gradients.
        let device = Default::default();
        let loc = Localiser::<burn::backend::Autodiff<F>>::new(5, &StnConfig { hidden: 8, ..StnConfig::default() }, &device);
        assert!(loc.fc2.weight.is_require_grad());
        assert!(loc.fc2.bias.as_ref().is_some_and(|b| b.is_require_grad()));
        let map = Tensor::<burn::backend::Autodiff<F>, 4>::ones([1, 5, 3, 3], &device);
        let mut grads = loc.theta(map).sum().backward();
        let g = burn::optim::GradientsParams::from_module(&mut grads, &loc.fc2);
        assert_eq!(g.len(), 2, "weight and bias of the output layer");
    }

    #[test]
    fn the_corners_are_the_boxes_of_theta() {
        let device = Default::default();
        for t in [2, 4] {
            let cfg = StnConfig { transformers: t, hidden: 8, ..StnConfig::default() };
            let mut loc = Localiser::<F>::new(5, &cfg, &device);
            // Non-zero output weights: the boxes depend on the map.
            loc.fc2.weight = loc.fc2.weight.map(|w| w.ones_like().mul_scalar(0.3));
            let map = Tensor::<F, 4>::from_data(TensorData::new((0..2 * 5 * 9).map(|k| (k % 7) as f32 * 0.2).collect::<Vec<_>>(), [2, 5, 3, 3]), &device);
            let want: Vec<NormBox> = host(loc.theta(map.clone())).chunks(6).map(theta_box).collect();
            let c: Vec<Vec<f32>> = loc.corners(map).into_iter().map(host).collect();
            assert_eq!(want.len(), 2 * t);
            for (k, b) in want.iter().enumerate() {
                for (got, w) in [(c[0][k], b.x0), (c[1][k], b.y0), (c[2][k], b.x1), (c[3][k], b.y1)] {
                    assert!((got - w).abs() < 1e-6, "transformer {k}: {got} vs {w}");
                }
            }
        }
    }
}
