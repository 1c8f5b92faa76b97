//! Location and time priors: the presence-only geographical prior.
//!
//! Mac Aodha, Cole and Perona, "Presence-Only Geographical Priors for Fine-Grained Image
//! Classification", ICCV 2019 (survey §5.3).
//!
//! **Encoding.** A location (longitude λ, latitude φ in degrees) and, when known, a date (day of
//! the year, as `t ∈ [−1, 1]`) become
//! `x = [sin(πλ/180), cos(πλ/180), sin(πφ/90), cos(πφ/90), sin(πt), cos(πt)]` (the last two are
//! left out without dates): the wrap-around of longitude and of the year is continuous.
//!
//! **Network.** `Linear(d, 256)` and ReLU, then four residual blocks
//! `h + ReLU(W₂ Dropout(ReLU(W₁ h)))`, then a class layer `W ∈ R^{C×256}` and a sigmoid per class:
//! `σ(f_c(x))` is the probability that class `c` occurs at `x`.
//!
//! **Loss** (presence-only, "assume negative, full", the paper's eq. 7): for a batch of `N`
//! observations `(x_i, y_i)` and `N` background points `r_i` drawn uniformly **on the sphere**
//! (and at a uniform date),
//!
//! ```text
//! L = 1/(N C) Σ_i [ λ·ℓ(σ_{y_i}(x_i)) + Σ_{c ≠ y_i} ℓ(1 − σ_c(x_i)) + Σ_c ℓ(1 − σ_c(r_i)) ],
//! ℓ(p) = −log(p + 10⁻⁵),
//! ```
//!
//! with the positive weight `λ` (the authors' release: 2048).
//!
//! **At test time** the prior multiplies the image classifier's posterior,
//! `p(y | I, x) ∝ p(y | I) · σ(f_y(x))`, and an image without a location keeps `p(y | I)`
//! ([`combine`]).
//!
//! **With an image classifier, trained together** ([`GeoImageMethod`]): the image head's
//! cross-entropy and the prior's loss are summed in one engine run. Their parameters are
//! disjoint, so each receives exactly the gradient of its own loss and AdamW updates each as if
//! it trained alone; the two only share the schedule, the batch order and the epochs.
//!
//! **Synthetic locations** ([`SyntheticRanges`]): no offline benchmark has real locations, so
//! the table's row gives each class a range on the globe (a longitude-latitude box around a
//! centre drawn on the sphere) and each image a location drawn in its class's range; a stated
//! share of test images gets no location and keeps the image classifier's posterior. Recipe:
//! `recipes/table3/geo-prior.toml`. The row is a synthetic stand-in, never a reproduction.
//!
//! **Deviations.** The authors' first release drew background points uniformly in the
//! (longitude, latitude) square, which over-samples the poles; this one draws them on the sphere,
//! as the issue tracker of that release later recommended. No photographer (user) embedding.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, Relu};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fgia_core::rng::SplitMix64;
use fgia_train::TrainError;
use fgia_train::engine::{BatchSource, HostBatch, ParamGroup, StepLoss, TrainMethod, single_group};
use fgia_train::parallel::{split_items, split_rows};
use fgia_train::sources::MapBatch;
use serde::{Deserialize, Serialize};

use crate::peer::Head;

/// The network's settings.
#[derive(Config, Debug)]
pub struct GeoPriorConfig {
    /// Classes.
    pub classes: usize,
    /// Use the date (6 inputs) or not (4).
    #[config(default = false)]
    pub with_date: bool,
    /// Hidden width.
    #[config(default = 256)]
    pub hidden: usize,
    /// Residual blocks.
    #[config(default = 4)]
    pub blocks: usize,
    /// Dropout inside the blocks.
    #[config(default = 0.5)]
    pub dropout: f64,
}

/// One residual block.
#[derive(Module, Debug)]
pub struct ResBlock<B: Backend> {
    a: Linear<B>,
    b: Linear<B>,
    drop: Dropout,
}

/// The geo-prior network.
#[derive(Module, Debug)]
pub struct GeoPrior<B: Backend> {
    input: Linear<B>,
    blocks: Vec<ResBlock<B>>,
    classes: Linear<B>,
}

impl GeoPriorConfig {
    /// Inputs per location.
    pub fn inputs(&self) -> usize {
        if self.with_date { 6 } else { 4 }
    }

    /// A network with fresh weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> GeoPrior<B> {
        let block = || ResBlock {
            a: LinearConfig::new(self.hidden, self.hidden).init(device),
            b: LinearConfig::new(self.hidden, self.hidden).init(device),
            drop: DropoutConfig::new(self.dropout).init(),
        };
        GeoPrior {
            input: LinearConfig::new(self.inputs(), self.hidden).init(device),
            blocks: (0..self.blocks).map(|_| block()).collect(),
            classes: LinearConfig::new(self.hidden, self.classes).with_bias(false).init(device),
        }
    }
}

impl<B: Backend> GeoPrior<B> {
    /// The class logits `f(x)`.
    ///
    /// # Shapes
    /// `[N, inputs]` to `[N, C]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let relu = Relu::new();
        let mut h = relu.forward(self.input.forward(x));
        for b in &self.blocks {
            h = h.clone() + relu.forward(b.b.forward(b.drop.forward(relu.forward(b.a.forward(h)))));
        }
        self.classes.forward(h)
    }
}

/// The encoding of a location in degrees and an optional date `t ∈ [−1, 1]`.
pub fn encode(lon: f32, lat: f32, t: Option<f32>) -> Vec<f32> {
    use std::f32::consts::PI;
    let mut v = vec![(PI * lon / 180.0).sin(), (PI * lon / 180.0).cos(), (PI * lat / 90.0).sin(), (PI * lat / 90.0).cos()];
    if let Some(t) = t {
        v.extend([(PI * t).sin(), (PI * t).cos()]);
    }
    v
}

/// A date as `t ∈ [−1, 1]` from the day of the year (1..=366).
pub fn date_feature(day_of_year: u32) -> f32 {
    2.0 * (day_of_year.clamp(1, 366) - 1) as f32 / 365.0 - 1.0
}

/// A point drawn uniformly on the sphere: `(lon, lat)` in degrees.
pub fn random_on_sphere(rng: &mut SplitMix64) -> (f32, f32) {
    // z uniform in [−1, 1] and an independent uniform azimuth give the uniform measure.
    let z = 2.0 * rng.next_f64() - 1.0;
    let lon = 360.0 * rng.next_f64() - 180.0;
    (lon as f32, z.asin().to_degrees() as f32)
}

/// The presence-only loss above, from the logits at the observations (`[N, C]`), at the
/// background points (`[N, C]`) and the observed classes.
pub fn presence_only_loss<B: Backend>(at_obs: Tensor<B, 2>, at_bg: Tensor<B, 2>, labels: &[usize], pos_weight: f64) -> Tensor<B, 1> {
    let [n, c] = at_obs.dims();
    let device = at_obs.device();
    let l = |p: Tensor<B, 2>| p.add_scalar(1e-5).log().neg();
    let p_obs = burn::tensor::activation::sigmoid(at_obs);
    let p_bg = burn::tensor::activation::sigmoid(at_bg);
    let mut onehot = vec![0.0f32; n * c];
    for (i, &y) in labels.iter().enumerate() {
        onehot[i * c + y] = 1.0;
    }
    let onehot = Tensor::<B, 2>::from_data(TensorData::new(onehot, [n, c]), &device);
    let negatives = l(p_obs.clone().neg().add_scalar(1.0)) * onehot.clone().neg().add_scalar(1.0);
    let positives = l(p_obs) * onehot.mul_scalar(pos_weight);
    let background = l(p_bg.neg().add_scalar(1.0));
    (positives + negatives).mean() + background.mean()
}

/// `p(y | I, x) ∝ p(y | I) σ(f_y(x))`, renormalised; `None` (no location) keeps `p(y | I)`.
pub fn combine(image_probs: &[f32], prior: Option<&[f32]>) -> Vec<f32> {
    let Some(prior) = prior else { return image_probs.to_vec() };
    let mut p: Vec<f32> = image_probs.iter().zip(prior).map(|(a, b)| a * b).collect();
    let s: f32 = p.iter().sum();
    if s > 0.0 && s.is_finite() {
        p.iter_mut().for_each(|x| *x /= s);
        p
    } else {
        image_probs.to_vec()
    }
}

/// Observations for training: encoded locations (`[n, dim]` row-major) and their classes.
#[derive(Debug, Clone)]
pub struct Presence {
    /// Encoded locations ([`encode`]).
    pub features: Vec<f32>,
    /// Observed class per location.
    pub labels: Vec<usize>,
    /// Inputs per location (4, or 6 with dates).
    pub dim: usize,
}

/// A batch: observations and as many background points.
#[derive(Debug)]
pub struct GeoBatch {
    obs: Vec<f32>,
    bg: Vec<f32>,
    labels: Vec<usize>,
    dim: usize,
}

impl HostBatch for GeoBatch {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn skipped(&self) -> usize {
        0
    }
    fn split(self, sizes: &[usize]) -> Vec<Self> {
        let (obs, bg, labels) = (split_rows(&self.obs, self.dim, sizes), split_rows(&self.bg, self.dim, sizes), split_items(&self.labels, sizes));
        obs.into_iter().zip(bg).zip(labels).map(|((obs, bg), labels)| GeoBatch { obs, bg, labels, dim: self.dim }).collect()
    }
}

/// Batches of observations, each with fresh background points drawn on the sphere (and at a
/// uniform date) from `(seed, epoch, step)`.
pub struct PresenceSource<'a> {
    /// The observations.
    pub data: &'a Presence,
    /// Seed of the background draws.
    pub seed: u64,
}

impl BatchSource for PresenceSource<'_> {
    type Batch = GeoBatch;

    fn labels(&self) -> &[usize] {
        &self.data.labels
    }

    fn load(&self, epoch: usize, step: usize, items: &[usize]) -> Result<GeoBatch, TrainError> {
        Ok(GeoBatch::draw(self.data, self.seed, epoch, step, items))
    }
}

/// The geo prior as the engine's method: the network and the positive weight `λ`.
#[derive(Module, Debug)]
pub struct GeoMethod<B: Backend> {
    /// The network.
    pub net: GeoPrior<B>,
    /// `λ`.
    pub pos_weight: f64,
}

impl<B: AutodiffBackend> TrainMethod<B> for GeoMethod<B> {
    type Batch = GeoBatch;
    type Input = (Tensor<B, 2>, Tensor<B, 2>, Vec<usize>);

    fn prepare(&self, b: GeoBatch, device: &B::Device) -> Self::Input {
        let n = b.labels.len();
        let t = |v: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v, [n, b.dim]), device);
        (t(b.obs), t(b.bg), b.labels)
    }

    fn loss(&self, (obs, bg, labels): &Self::Input, _: usize) -> StepLoss<B> {
        let at_obs = self.net.forward(obs.clone());
        let at_bg = self.net.forward(bg.clone());
        let classes = at_obs.dims()[1];
        let logits: Vec<f32> = at_obs.clone().into_data().convert::<f32>().to_vec().unwrap_or_default();
        let hits = fgia_core::metrics::argmax_rows(&logits, classes).iter().zip(labels).filter(|(p, l)| p == l).count();
        StepLoss { loss: presence_only_loss(at_obs, at_bg, labels, self.pos_weight), hits: Some(hits) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

/// The recipe's `[method.geo]`: the prior's network and loss, and the synthetic ranges of the
/// table's stand-in row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeoSettings {
    /// Hidden width (the paper: 256).
    pub hidden: usize,
    /// Residual blocks (the paper: 4).
    pub blocks: usize,
    /// Dropout inside the blocks (the paper: 0.5).
    pub dropout: f64,
    /// The positive weight `λ` (the authors: 2048 for 8,142 classes, a quarter of the classes).
    pub pos_weight: f64,
    /// Half the longitude width of a class's range, degrees.
    pub range_lon: f32,
    /// Half the latitude height of a class's range, degrees.
    pub range_lat: f32,
    /// Share of test images without a location (they keep the image posterior).
    pub test_missing: f64,
    /// Seed of the ranges and the locations.
    pub seed: u64,
}

impl Default for GeoSettings {
    fn default() -> Self {
        GeoSettings { hidden: 256, blocks: 4, dropout: 0.5, pos_weight: 2048.0, range_lon: 40.0, range_lat: 25.0, test_missing: 0.1, seed: 0 }
    }
}

impl GeoSettings {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), String> {
        if self.hidden == 0 || self.hidden > 4096 || self.blocks > 16 {
            return Err(format!("method.geo: hidden {} in 1..=4096 and blocks {} at most 16", self.hidden, self.blocks));
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) || !(self.pos_weight.is_finite() && self.pos_weight > 0.0) {
            return Err(format!("method.geo: dropout {} in [0, 1) and pos_weight {} > 0", self.dropout, self.pos_weight));
        }
        if !(self.range_lon > 0.0 && self.range_lon <= 180.0 && self.range_lat > 0.0 && self.range_lat <= 90.0) {
            return Err(format!("method.geo: range_lon {} in (0, 180] and range_lat {} in (0, 90]", self.range_lon, self.range_lat));
        }
        if !(self.test_missing.is_finite() && (0.0..1.0).contains(&self.test_missing)) {
            return Err(format!("method.geo: test_missing {} in [0, 1)", self.test_missing));
        }
        Ok(())
    }

    /// The network's configuration for `classes`.
    pub fn config(&self, classes: usize) -> GeoPriorConfig {
        GeoPriorConfig::new(classes).with_hidden(self.hidden).with_blocks(self.blocks).with_dropout(self.dropout)
    }
}

/// One longitude-latitude box per class, centred at a point drawn on the sphere.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticRanges {
    /// `(centre longitude, centre latitude)` per class, degrees.
    pub centres: Vec<(f32, f32)>,
    /// Half width and half height, degrees.
    pub half: (f32, f32),
}

impl SyntheticRanges {
    /// Ranges for `classes` from the settings' seed.
    pub fn new(classes: usize, s: &GeoSettings) -> Self {
        let mut g = SplitMix64::new(s.seed ^ 0x6e0_5eed);
        SyntheticRanges { centres: (0..classes).map(|_| random_on_sphere(&mut g)).collect(), half: (s.range_lon, s.range_lat) }
    }

    /// A location of class `c` for item `i`, uniform in its box (longitude wrapped, latitude
    /// clamped to the poles).
    pub fn draw(&self, c: usize, seed: u64, i: usize) -> (f32, f32) {
        let mut g = SplitMix64::for_item(seed ^ 0x10c, c as u64, i as u64);
        let (lon0, lat0) = self.centres[c];
        let lon = lon0 + self.half.0 * (2.0 * g.next_f64() as f32 - 1.0);
        let lat = (lat0 + self.half.1 * (2.0 * g.next_f64() as f32 - 1.0)).clamp(-90.0, 90.0);
        let lon = if lon > 180.0 {
            lon - 360.0
        } else if lon < -180.0 {
            lon + 360.0
        } else {
            lon
        };
        (lon, lat)
    }

    /// Whether a location lies in class `c`'s box.
    pub fn contains(&self, c: usize, lon: f32, lat: f32) -> bool {
        let (lon0, lat0) = self.centres[c];
        let mut d = (lon - lon0).abs() % 360.0;
        if d > 180.0 {
            d = 360.0 - d;
        }
        d <= self.half.0 + 1e-3 && (lat - lat0).abs() <= self.half.1 + 1e-3
    }
}

/// Image features and the same images' locations, with fresh background points.
#[derive(Debug)]
pub struct GeoImageBatch {
    /// Pooled image features `[n, D, 1, 1]` and labels.
    pub maps: MapBatch,
    /// Their locations and the background points.
    pub geo: GeoBatch,
}

impl HostBatch for GeoImageBatch {
    fn len(&self) -> usize {
        self.maps.len()
    }
    fn skipped(&self) -> usize {
        self.maps.skipped()
    }
    fn split(self, sizes: &[usize]) -> Vec<Self> {
        self.maps.split(sizes).into_iter().zip(self.geo.split(sizes)).map(|(maps, geo)| GeoImageBatch { maps, geo }).collect()
    }
}

impl GeoBatch {
    /// Observations at the locations of `items` (rows of `data`) and as many background points,
    /// drawn from `(seed, epoch, step)`.
    pub fn draw(data: &Presence, seed: u64, epoch: usize, step: usize, items: &[usize]) -> GeoBatch {
        let d = data.dim;
        let obs = items.iter().flat_map(|&i| data.features[i * d..(i + 1) * d].iter().copied()).collect();
        let mut g = SplitMix64::for_item(seed ^ 0x6e0, epoch as u64, step as u64);
        let bg = (0..items.len())
            .flat_map(|_| {
                let (lon, lat) = random_on_sphere(&mut g);
                let t = (d == 6).then(|| 2.0 * g.next_f64() as f32 - 1.0);
                encode(lon, lat, t)
            })
            .collect();
        GeoBatch { obs, bg, labels: items.iter().map(|&i| data.labels[i]).collect(), dim: d }
    }
}

/// An image head and the geo prior, trained together (their losses summed; disjoint
/// parameters).
#[derive(Module, Debug)]
pub struct GeoImageMethod<B: Backend> {
    /// The image classifier on the pooled feature.
    pub head: Head<B>,
    /// The prior and its positive weight.
    pub prior: GeoMethod<B>,
}

impl<B: AutodiffBackend> TrainMethod<B> for GeoImageMethod<B> {
    type Batch = GeoImageBatch;
    type Input = (Tensor<B, 2>, Tensor<B, 1, Int>, <GeoMethod<B> as TrainMethod<B>>::Input);

    fn prepare(&self, b: GeoImageBatch, device: &B::Device) -> Self::Input {
        let [n, d, _, _] = b.maps.shape;
        let x = Tensor::from_data(TensorData::new(b.maps.data, [n, d]), device); // [N, D]
        let y = Tensor::from_data(TensorData::new(b.maps.labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [n]), device);
        (x, y, self.prior.prepare(b.geo, device))
    }

    fn loss(&self, (x, y, geo): &Self::Input, step: usize) -> StepLoss<B> {
        let logits = self.head.forward(x.clone());
        let classes = logits.dims()[1];
        let host: Vec<f32> = logits.clone().into_data().convert::<f32>().to_vec().unwrap_or_default();
        let labels: Vec<i64> = y.clone().into_data().convert::<i64>().to_vec().unwrap_or_default();
        let hits = fgia_core::metrics::argmax_rows(&host, classes).iter().zip(&labels).filter(|(p, l)| **p as i64 == **l).count();
        let ce = burn::nn::loss::CrossEntropyLossConfig::new().init(&logits.device()).forward(logits, y.clone());
        let prior = self.prior.loss(geo, step).loss;
        StepLoss { loss: ce + prior, hits: Some(hits) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_points_are_uniform_on_the_sphere() {
        let mut g = SplitMix64::new(1);
        let n = 40_000;
        // The share within 30 degrees of the equator is sin(30°) = 0.5 on the sphere (a third in
        // the longitude-latitude square).
        let band = (0..n).filter(|_| random_on_sphere(&mut g).1.abs() < 30.0).count() as f64 / n as f64;
        assert!((band - 0.5).abs() < 0.01, "{band}");
        assert_eq!(combine(&[0.5, 0.5], None), vec![0.5, 0.5]);
        let c = combine(&[0.5, 0.5], Some(&[0.9, 0.1]));
        assert!((c[0] - 0.9).abs() < 1e-6);
        assert!((date_feature(1) + 1.0).abs() < 1e-6 && (date_feature(366) - 1.0).abs() < 1e-6);
        let e = encode(180.0, 0.0, Some(0.0));
        assert!(e.len() == 6 && (e[0]).abs() < 1e-6 && (e[1] + 1.0).abs() < 1e-6);
    }
}
