//! S3N: "Selective Sparse Sampling for Fine-grained Image Recognition", Ding, Zhou, Zhu, Ye and
//! Jiao, ICCV 2019 (survey §5.1.2). Recipe: `recipes/table2/s3n.toml`.
//!
//! **Class peak responses.** The raw classifier's weights applied at every position of the map
//! give the class response maps (CAM), upsampled to a `31 x 31` grid. With `p` the softmax of the
//! raw scores, the gate `Σ_top5 p log p` picks the top-1 class's map when it exceeds `−0.2`
//! (confident) and the mean of the top-5 maps otherwise; it is min-max normalised. Peaks are the
//! 3x3 local maxima at or above the map's mean; `s_i` is the normalised response at peak `i`.
//!
//! **Sparse attention.** Each peak goes to the discriminative set `D` with probability `s_i`,
//! else to the complementary set `C` (training); at test `D` is the strongest peak and `C` the
//! weakest (the authors' code). `Q_d = b + Σ_{i∈D} s_i G(r_d √s_i · 31)`,
//! `Q_c = b + Σ_{i∈C} s_i⁻¹ G(r_c √s_i · 31)`, `b = 0.09`, `r_d = 0.09`, `r_c = 0.3`, `G(σ)` a
//! Gaussian of standard deviation `σ` grid cells around the peak, normalised to a maximum of 1.
//!
//! **Selective sampling.** Each `Q` drives the saliency sampler
//! ([`crate::geometry::saliency_grid`]: a Gaussian of FWHM 13 cells over a 61-cell window, the
//! grid padded by 30), whose grid resamples the image: the zoomed discriminative and
//! complementary images run through the shared backbone.
//!
//! **Heads and loss.** Raw, discriminative and complementary classifiers and a fusion classifier
//! on the three pooled features: `CE(fusion) + LS(raw) + CE(D) + LS(C)` (weights 1; `LS` keeps
//! 0.85 on the label, the authors' smoothed loss). Prediction: the fusion classifier.
//!
//! **End to end** (`mode = "end-to-end"`, [`run_live`]): every step draws the two samples from
//! the live map's class peak responses and runs them through the backbone it trains
//! ([`LIVE_DEVIATIONS`]).
//!
//! **Deviations of the cached rounds** (also in [`DEVIATIONS`]): cached rounds (round 1 trains the raw classifier on
//! the cached maps; its peaks pick the samples once per cached view; round 2 trains the four
//! classifiers on the resampled images' pooled features, the raw one continuing); no "buffer"
//! convolution on the sampled branches (their maps are pooled directly); the learnable radii and
//! filter (trained at 1e-4 times the rate by the authors) are fixed at their initial values.

use std::collections::HashMap;

use burn::module::AutodiffModule;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fgia_core::datasets::Record;
use fgia_core::imaging::ViewGeometry;
use fgia_train::TrainError;
use fgia_train::engine::{ParamGroup, StepLoss, TrainMethod, single_group};
use serde::{Deserialize, Serialize};

use crate::geometry::{map_at, saliency_coarse, upsample_grid};
use crate::live::{HostCrops, LiveStage};
use crate::looks::Look;
use crate::looks::thin_grid;
use crate::nn::{crop, cross_entropy, gap, hits, host, item_rng, smoothed_cross_entropy};
use crate::run::{LocBatch, LocInput, Outcome, Sample, Stage, look_images, prepare};

/// The deviations of every S3N run.
pub const DEVIATIONS: &[&str] = &[
    "peaks from the round-1 raw classifier pick the discriminative and complementary samples once per cached view (cached rounds)",
    "no buffer convolution on the sampled branches; radii and the sampler's filter fixed at their initial values",
];

/// S3N's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3nConfig {
    /// Side of the attention grid.
    pub grid: usize,
    /// Base saliency `b`.
    pub base: f32,
    /// Radius of the discriminative kernels `r_d`.
    pub radius_d: f32,
    /// Radius of the complementary kernels `r_c`.
    pub radius_c: f32,
    /// Gate threshold on `Σ_top5 p log p`.
    pub gate: f32,
    /// Full width at half maximum of the sampler's Gaussian, in grid cells.
    pub fwhm: f32,
    /// Padding of the sampler's grid (its window is `2 pad + 1`).
    pub pad: usize,
    /// Label kept by the smoothed losses.
    pub smooth: f32,
    /// Side of the resampled images (the paper: the input side).
    pub sample_size: usize,
    /// Weights of the fusion, raw, discriminative and complementary terms.
    pub weights: [f32; 4],
}

impl Default for S3nConfig {
    fn default() -> Self {
        S3nConfig { grid: 31, base: 0.09, radius_d: 0.09, radius_c: 0.3, gate: -0.2, fwhm: 13.0, pad: 30, smooth: 0.85, sample_size: 448, weights: [1.0; 4] }
    }
}

impl S3nConfig {
    /// Parses and validates `[method.params]`.
    pub fn from_params(p: &toml::Table) -> Result<Self, String> {
        let c: S3nConfig = crate::recipe::params(p)?;
        if !(3..=128).contains(&c.grid) || c.pad > 64 || !(16..=1024).contains(&c.sample_size) {
            return Err(format!("grid {} in 3..=128, pad {} <= 64, sample_size {} in 16..=1024", c.grid, c.pad, c.sample_size));
        }
        for (k, v) in [("base", c.base), ("radius_d", c.radius_d), ("radius_c", c.radius_c), ("fwhm", c.fwhm)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{k} {v} must be positive"));
            }
        }
        if !(c.smooth > 0.0 && c.smooth <= 1.0) || c.weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) || !c.gate.is_finite() {
            return Err(format!("smooth {} in (0, 1], weights {:?} >= 0, gate {} finite", c.smooth, c.weights, c.gate));
        }
        Ok(c)
    }
}

/// Peaks of a `g x g` map: the 3x3 local maxima at or above its mean, `(row, col, value)`.
pub fn peaks(map: &[f32], g: usize) -> Vec<(usize, usize, f32)> {
    let mean = map.iter().sum::<f32>() / map.len().max(1) as f32;
    let mut out = Vec::new();
    for r in 0..g {
        for c in 0..g {
            let v = map[r * g + c];
            if v < mean {
                continue;
            }
            let mut top = true;
            for dr in -1i32..=1 {
                for dc in -1i32..=1 {
                    let (rr, cc) = (r as i32 + dr, c as i32 + dc);
                    if (dr != 0 || dc != 0) && rr >= 0 && cc >= 0 && (rr as usize) < g && (cc as usize) < g && map[rr as usize * g + cc as usize] > v {
                        top = false;
                    }
                }
            }
            if top {
                out.push((r, c, v));
            }
        }
    }
    out
}

/// The sparse attention `b + Σ w_i G(σ_i)` over a `g x g` grid for peaks with weights and radii.
pub fn sparse_attention(g: usize, base: f32, peaks: &[(usize, usize, f32, f32)]) -> Vec<f32> {
    let mut q = vec![base; g * g];
    for &(r, c, w, sigma) in peaks {
        let s2 = 2.0 * sigma.max(1e-3) * sigma.max(1e-3);
        for y in 0..g {
            for x in 0..g {
                let d = (y as f32 - r as f32).powi(2) + (x as f32 - c as f32).powi(2);
                q[y * g + x] += w * (-d / s2).exp();
            }
        }
    }
    q
}

/// The class-peak map (min-max normalised, `g x g`) from one image's class response maps
/// `cams` (`[classes, h, h]`) and raw scores.
pub fn class_peak_map(cams: &[f32], h: usize, scores: &[f32], cfg: &S3nConfig) -> Vec<f32> {
    let classes = scores.len();
    let max = scores.iter().copied().fold(f32::MIN, f32::max);
    let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let z: f32 = e.iter().sum();
    let mut order: Vec<usize> = (0..classes).collect();
    order.sort_by(|&a, &b| e[b].total_cmp(&e[a]));
    let top: Vec<usize> = order.into_iter().take(5).collect();
    let gate: f32 = top.iter().map(|&k| e[k] / z).map(|p| p * p.max(1e-12).ln()).sum();
    let chosen: Vec<usize> = if gate > cfg.gate { vec![top[0]] } else { top };
    let g = cfg.grid;
    let mut m = vec![0f32; g * g];
    for &k in &chosen {
        let cam = &cams[k * h * h..(k + 1) * h * h];
        for (p, v) in m.iter_mut().enumerate() {
            *v += map_at(cam, h, ((p % g) as f32 + 0.5) / g as f32, ((p / g) as f32 + 0.5) / g as f32) / chosen.len() as f32;
        }
    }
    let (lo, hi) = m.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    m.iter().map(|v| if hi > lo { (v - lo) / (hi - lo) } else { 0.0 }).collect()
}

/// The discriminative and complementary attention of a class-peak map; `split` assigns each
/// peak (`true`: discriminative).
pub fn two_attentions(m: &[f32], cfg: &S3nConfig, mut split: impl FnMut(usize, f32) -> bool) -> (Vec<f32>, Vec<f32>) {
    let g = cfg.grid;
    let (mut d, mut c) = (Vec::new(), Vec::new());
    for (k, (r, col, s)) in peaks(m, g).into_iter().enumerate() {
        let s = s.max(1e-3);
        if split(k, s) {
            d.push((r, col, s, cfg.radius_d * s.sqrt() * g as f32));
        } else {
            c.push((r, col, 1.0 / s, cfg.radius_c * s.sqrt() * g as f32));
        }
    }
    (sparse_attention(g, cfg.base, &d), sparse_attention(g, cfg.base, &c))
}

/// The four classifiers.
#[derive(Module, Debug)]
pub struct S3nHeads<B: Backend> {
    raw: Linear<B>,
    disc: Linear<B>,
    comp: Linear<B>,
    fusion: Linear<B>,
    #[module(skip)]
    cfg: S3nConfig,
    #[module(skip)]
    round2: bool,
}

impl<B: Backend> S3nHeads<B> {
    /// Fusion scores from the global map and the two samples' features `[n, 2, C]`.
    pub fn fuse(&self, global: Tensor<B, 4>, parts: &Tensor<B, 3>) -> Tensor<B, 2> {
        self.fusion.forward(Tensor::cat(vec![gap(global), crop(parts, 0), crop(parts, 1)], 1))
    }
}

impl<B: AutodiffBackend> TrainMethod<B> for S3nHeads<B> {
    type Batch = LocBatch;
    type Input = LocInput<B>;

    fn prepare(&self, b: LocBatch, device: &B::Device) -> LocInput<B> {
        prepare(b, device)
    }

    fn loss(&self, x: &LocInput<B>, _: usize) -> StepLoss<B> {
        let [wf, wr, wd, wc] = self.cfg.weights;
        let raw = self.raw.forward(gap(x.global.clone()));
        if !self.round2 {
            let got = hits(&raw, &x.label_vec);
            return StepLoss { loss: cross_entropy(raw, x.labels.clone()), hits: Some(got) };
        }
        let parts = x.parts.as_ref().expect("samples");
        let fused = self.fuse(x.global.clone(), parts);
        let got = hits(&fused, &x.label_vec);
        let y = || x.labels.clone();
        let loss = cross_entropy(fused, y()).mul_scalar(wf)
            + smoothed_cross_entropy(raw, y(), self.cfg.smooth).mul_scalar(wr)
            + cross_entropy(self.disc.forward(crop(parts, 0)), y()).mul_scalar(wd)
            + smoothed_cross_entropy(self.comp.forward(crop(parts, 1)), y(), self.cfg.smooth).mul_scalar(wc);
        StepLoss { loss, hits: Some(got) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

/// The class response maps `[n, classes, h, h]` and raw scores of maps under `raw`.
fn cams<B: Backend>(raw: &Linear<B>, maps: Tensor<B, 4>) -> (Vec<f32>, Vec<f32>, usize) {
    let [n, c, h, w] = maps.dims();
    let scores = raw.forward(gap(maps.clone()));
    // Per position: W F(:, u, v) + b.
    let flat = maps.swap_dims(1, 3).swap_dims(1, 2).reshape([n * h * w, c]); // [n h w, C]
    let per = raw.forward(flat); // [n h w, K]
    let [_, k] = per.dims();
    let cam = per.reshape([n, h, w, k]).swap_dims(1, 3).swap_dims(2, 3); // [n, K, h, w]
    (host(cam), host(scores), h)
}

/// The coarse sampling grids (discriminative, complementary; [`saliency_coarse`]) of a class
/// peak map `m`: in training (`rng`) the peaks split at random by their response, at test the
/// strongest peak makes the discriminative attention and all but the weakest the complementary
/// one (the base attention where there are too few peaks).
fn coarse_pair(m: &[f32], cfg: &S3nConfig, rng: Option<&mut fgia_core::rng::SplitMix64>) -> Coarse {
    let g = cfg.grid;
    let sigma = cfg.fwhm / (2.0 * (2.0 * 2f32.ln()).sqrt());
    let (qd, qc) = match rng {
        Some(rng) => two_attentions(m, cfg, |_, s| rng.next_f64() < f64::from(s)),
        None => {
            let p = peaks(m, g);
            let strongest = (0..p.len()).max_by(|&a, &b| p[a].2.total_cmp(&p[b].2));
            let weakest = (0..p.len()).min_by(|&a, &b| p[a].2.total_cmp(&p[b].2));
            let (mut qd, _) = two_attentions(m, cfg, |k, _| Some(k) == strongest);
            let (_, mut qc) = two_attentions(m, cfg, |k, _| Some(k) != weakest);
            if p.len() == 1 {
                qc = vec![cfg.base; g * g];
            }
            if p.is_empty() {
                qd = vec![cfg.base; g * g];
            }
            (qd, qc)
        }
    };
    (saliency_coarse(&qd, g, cfg.pad, sigma), saliency_coarse(&qc, g, cfg.pad, sigma))
}

/// Coarse grids of the two samples.
type Coarse = (Vec<f32>, Vec<f32>);

impl<B: Backend> HostCrops<B> for S3nHeads<B> {
    fn crop_spec(&self, _: bool) -> (usize, usize, bool) {
        (2, self.cfg.sample_size, false)
    }

    fn samples(&self, map: Tensor<B, 4>, _: &[Record], items: &[usize], _: &[ViewGeometry], train: bool, draw: u64) -> Vec<Vec<Sample>> {
        let (cam, scores, h) = cams(&self.raw, map);
        let classes = scores.len() / items.len().max(1);
        let (g, size) = (self.cfg.grid, self.cfg.sample_size);
        items
            .iter()
            .enumerate()
            .map(|(j, &i)| {
                let m = class_peak_map(&cam[j * classes * h * h..(j + 1) * classes * h * h], h, &scores[j * classes..(j + 1) * classes], &self.cfg);
                let (d, c) = coarse_pair(&m, &self.cfg, train.then(|| item_rng(draw, 2, i, 0)).as_mut());
                vec![Sample { grid: upsample_grid(&d, g, size), erase: None }, Sample { grid: upsample_grid(&c, g, size), erase: None }]
            })
            .collect()
    }
}

/// Runs S3N.
pub fn run<B: AutodiffBackend>(s: &Stage<'_, B>) -> Result<Option<Outcome>, TrainError> {
    let cfg = S3nConfig::from_params(&s.r.method.params).map_err(|message| TrainError::Recipe { path: s.ctx.run_dir.join("recipe.toml"), message })?;
    let [c, _, _] = s.maps.shape;
    let classes = s.classes;
    B::seed(s.device, s.r.train.seed);
    let lin = |i: usize| LinearConfig::new(i, classes).init::<B>(s.device);
    let heads = S3nHeads { raw: lin(c), disc: lin(c), comp: lin(c), fusion: lin(3 * c), cfg: cfg.clone(), round2: false };
    let Some(heads) = s.round("round-1-raw", heads, None, false)? else { return Ok(None) };
    let raw = heads.valid().raw;
    let g = cfg.grid;
    let seed = s.r.train.seed;
    let mut train_grids: HashMap<(usize, usize), Coarse> = HashMap::new();
    s.on_maps(&s.train_views(), true, |views, maps| {
        let (cam, scores, h) = cams(&raw, maps);
        for (j, &(i, v)) in views.iter().enumerate() {
            let m = class_peak_map(&cam[j * classes * h * h..(j + 1) * classes * h * h], h, &scores[j * classes..(j + 1) * classes], &cfg);
            train_grids.insert((i, v), coarse_pair(&m, &cfg, Some(&mut item_rng(seed, 2, i, v))));
        }
    });
    let mut test_grids: HashMap<usize, (Coarse, Vec<f32>)> = HashMap::new();
    s.on_maps(&s.test_views(), false, |views, maps| {
        let (cam, scores, h) = cams(&raw, maps);
        for (j, &(i, _)) in views.iter().enumerate() {
            let m = class_peak_map(&cam[j * classes * h * h..(j + 1) * classes * h * h], h, &scores[j * classes..(j + 1) * classes], &cfg);
            test_grids.insert(i, (coarse_pair(&m, &cfg, None), m));
        }
    });
    let size = cfg.sample_size;
    let two = |(d, c): &Coarse| -> Vec<Sample> {
        vec![Sample { grid: upsample_grid(d, g, size), erase: None }, Sample { grid: upsample_grid(c, g, size), erase: None }]
    };
    let parts = s.crops("S3N", 2, 2, size, false, &|i, v, _| train_grids.get(&(i, v)).map(two), &|i, _| test_grids.get(&i).map(|(q, _)| two(q)))?;
    let Some(heads) = s.round("round-2-samples", S3nHeads { round2: true, ..heads }, Some(&parts), false)? else { return Ok(None) };
    let model = heads.valid();
    let mut preds = HashMap::new();
    let mut raw_hits = (0usize, 0usize);
    let (top1, n) = s.evaluate(Some(&parts), |x| {
        let scores = host(model.fuse(x.global.clone(), x.parts.as_ref().expect("samples")));
        raw_hits.0 += hits(&model.raw.forward(gap(x.global.clone())), &x.label_vec);
        raw_hits.1 += x.label_vec.len();
        for (j, &(i, _)) in x.views.iter().enumerate() {
            preds.insert(i, fgia_core::metrics::argmax_rows(&scores[j * classes..(j + 1) * classes], classes)[0]);
        }
        scores
    });
    let looks = look_images(s.ds.test.len())
        .into_iter()
        .filter_map(|i| {
            let ((d, c), m) = test_grids.get(&i)?;
            Some(Look {
                image: i,
                heat: Some((g, m.clone())),
                grids: vec![(32, upsample_grid(d, g, 32), "discriminative sample".into()), (32, upsample_grid(c, g, 32), "complementary sample".into())],
                caption: preds.get(&i).map(|&p| format!("predicted: {}", s.ds.classes.names[p])).unwrap_or_default(),
                ..Default::default()
            })
        })
        .collect();
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".into(), top1);
    metrics.insert("top1_raw_only".into(), 100.0 * raw_hits.0 as f64 / raw_hits.1.max(1) as f64);
    metrics.insert("test_images".into(), n as f64);
    let [wf, wr, wd, wc] = cfg.weights;
    Ok(Some(Outcome {
        metrics,
        trained_layers:
            "the raw classifier (round 1, its class maps pick the peaks), then the raw, discriminative, complementary and fusion classifiers (backbone frozen)"
                .into(),
        loss: format!(
            "{wf} CE(fusion) + {wr} LS(raw, {s}) + {wd} CE(discriminative) + {wc} LS(complementary, {s}) (round 2; round 1: CE(raw))",
            s = cfg.smooth
        ),
        deviations: vec![format!("samples resampled at {size} px")],
        tta: "none (the fusion classifier on the image and its two samples)".into(),
        looks,
    }))
}

/// The deviations of every end-to-end S3N run.
pub const LIVE_DEVIATIONS: &[&str] = &[
    "the samples are drawn on the host from the class peak responses of the detached map (no gradient through the sampler); no buffer convolutions before the classifiers",
    "the random draws of the samples follow a per-process step counter, not checkpointed: a resumed run draws differently from an uninterrupted one",
];

/// Runs S3N end to end: every step draws the two samples from the current raw classifier's
/// class peak responses on the live map, resamples them from the pixels (`grid_sample` on the
/// saliency grids) and runs them through the backbone it trains, with the four classifiers'
/// losses from the first step.
pub fn run_live<B: AutodiffBackend>(s: &LiveStage<'_, B>) -> Result<Option<Outcome>, TrainError> {
    let cfg = S3nConfig::from_params(&s.r.method.params).map_err(|message| TrainError::Recipe { path: s.ctx.run_dir.join("recipe.toml"), message })?;
    let [c, _, _] = s.shape;
    let classes = s.classes;
    B::seed(s.device, s.r.train.seed);
    let lin = |i: usize| LinearConfig::new(i, classes).init::<B>(s.device);
    let heads = S3nHeads { raw: lin(c), disc: lin(c), comp: lin(c), fusion: lin(3 * c), cfg: cfg.clone(), round2: true };
    let Some(live) = s.train_crops(heads, false)? else { return Ok(None) };
    let live = live.valid();
    let looks_at = look_images(s.ds.test.len());
    let mut looks = Vec::new();
    let mut raw_hits = (0usize, 0usize);
    let size = cfg.sample_size;
    let (top1, n) = s.evaluate_crops(&live, |x, samples| {
        let model = &live.m;
        let scores = host(model.fuse(x.global.clone(), x.parts.as_ref().expect("samples")));
        raw_hits.0 += hits(&model.raw.forward(gap(x.global.clone())), &x.label_vec);
        raw_hits.1 += x.label_vec.len();
        for (j, &(i, _)) in x.views.iter().enumerate().filter(|(_, v)| looks_at.contains(&v.0)) {
            let pred = fgia_core::metrics::argmax_rows(&scores[j * classes..(j + 1) * classes], classes)[0];
            let thin = |k: usize| thin_grid(&samples[j][k].grid, size, 32);
            looks.push(Look {
                image: i,
                grids: vec![(32, thin(0), "discriminative sample".into()), (32, thin(1), "complementary sample".into())],
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
    let [wf, wr, wd, wc] = cfg.weights;
    Ok(Some(Outcome {
        metrics,
        trained_layers: format!(
            "the backbone (at {} times the rate, through the image and both samples) and the raw, discriminative, complementary and fusion classifiers",
            s.r.train.backbone_lr_mult
        ),
        loss: format!("{wf} CE(fusion) + {wr} LS(raw, {s}) + {wd} CE(discriminative) + {wc} LS(complementary, {s})", s = cfg.smooth),
        deviations: vec![format!("samples resampled at {size} px")],
        tta: "none (the fusion classifier on the image and its two samples)".into(),
        looks,
    }))
}
