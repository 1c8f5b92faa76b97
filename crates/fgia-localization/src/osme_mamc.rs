//! OSME + MAMC: "Multi-Attention Multi-Class Constraint for Fine-grained Image Recognition", Sun,
//! Yuan, Zhou and Ding, ECCV 2018 (survey §5.1.3). Recipe: `recipes/table2/osme-mamc.toml`.
//!
//! **OSME** (one-squeeze multi-excitation) on the last map `U`: one squeeze `z = GAP(U)`, `P = 2`
//! excitations `m^p = σ(W_2^p ReLU(W_1^p z))` (reduction 16, as SE), attended maps
//! `S^p = m^p ⊙ U`, and one embedding per attention `f^p = W_3^p GAP(S^p)` (1024-d). The
//! classifier reads the concatenated `f^1 … f^P` (softmax cross-entropy).
//!
//! **MAMC.** Batches hold `N` classes with 2 images each. For an anchor `f = f^p_i`, the other
//! embeddings of the batch fall into four sets: same attention and same class (`S_sasc`), same
//! attention and different class (`S_sadc`), different attention and same class (`S_dasc`),
//! different attention and different class (`S_dadc`). Three N-pair terms, each
//! `mean_{f⁺ ∈ Pos} log(1 + Σ_{f⁻ ∈ Neg} exp(fᵀf⁻ − fᵀf⁺))`: `Pos = S_sasc` against
//! `S_sadc ∪ S_dasc ∪ S_dadc`; `Pos = S_sadc` against `S_dadc`; `Pos = S_dasc` against
//! `S_dadc`. `L_mamc` sums them per anchor and averages over anchors; `L = CE + λ L_mamc` with
//! `λ = 0.5`. (A public re-implementation returns a sum that is always zero; the test here
//! checks the value against a direct scalar computation.)
//!
//! End to end (`mode = "end-to-end"`): the same module on the live backbone's last map
//! ([`crate::live::Live`]), as the paper trains it.
//!
//! **Deviations** (also in [`DEVIATIONS`]): OSME and the classifier train on the frozen
//! backbone's cached last map (no crops: the method has none), the backbone is not fine-tuned.

use burn::module::AutodiffModule;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::backend::AutodiffBackend;
use fgia_train::TrainError;
use fgia_train::engine::{ParamGroup, StepLoss, TrainMethod, single_group};
use serde::{Deserialize, Serialize};

use crate::live::Trunk;
use crate::looks::Look;
use crate::nn::{cross_entropy, gap, hits, host};
use crate::run::{LocBatch, LocInput, Outcome, look_images, prepare};

/// The deviations of every OSME + MAMC run.
pub const DEVIATIONS: &[&str] = &["OSME and the classifier on the frozen backbone's cached last map; the backbone is not fine-tuned"];

/// The deviations of every end-to-end OSME + MAMC run (none beyond the recipe's).
pub const LIVE_DEVIATIONS: &[&str] = &[];

/// OSME + MAMC's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OsmeMamcConfig {
    /// Excitation branches `P`.
    pub attentions: usize,
    /// SE reduction.
    pub reduction: usize,
    /// Embedding width per attention.
    pub embedding: usize,
    /// Weight `λ` of the MAMC loss.
    pub lambda: f32,
    /// Weight of the softmax cross-entropy.
    pub ce_weight: f32,
}

impl Default for OsmeMamcConfig {
    fn default() -> Self {
        OsmeMamcConfig { attentions: 2, reduction: 16, embedding: 1024, lambda: 0.5, ce_weight: 1.0 }
    }
}

impl OsmeMamcConfig {
    /// Parses and validates `[method.params]`.
    pub fn from_params(p: &toml::Table) -> Result<Self, String> {
        let c: OsmeMamcConfig = crate::recipe::params(p)?;
        if !(2..=16).contains(&c.attentions) || c.reduction == 0 || c.embedding == 0 || c.embedding > 8192 {
            return Err(format!("attentions {} in 2..=16, reduction {} > 0, embedding {} in 1..=8192", c.attentions, c.reduction, c.embedding));
        }
        if !(c.lambda.is_finite() && c.lambda >= 0.0 && c.ce_weight.is_finite() && c.ce_weight >= 0.0) {
            return Err(format!("lambda {} and ce_weight {} must be >= 0", c.lambda, c.ce_weight));
        }
        Ok(c)
    }
}

/// The MAMC loss of embeddings `f` `[n, P, D]` with `labels` (`n` items).
pub fn mamc_loss<B: Backend>(f: Tensor<B, 3>, labels: &[usize]) -> Tensor<B, 1> {
    let [n, p, d] = f.dims();
    let m = n * p;
    let device = f.device();
    let x = f.reshape([m, d]);
    let s = x.clone().matmul(x.transpose()); // [m, m]
    // Sets, row = anchor (i, a), column = other (j, b); index = item * P + attention.
    let set = |same_att: bool, same_class: bool| -> Vec<f32> {
        let mut v = vec![0f32; m * m];
        for r in 0..m {
            for c in 0..m {
                if r == c {
                    continue;
                }
                let (i, a, j, b) = (r / p, r % p, c / p, c % p);
                if (a == b) == same_att && (labels[i] == labels[j]) == same_class {
                    v[r * m + c] = 1.0;
                }
            }
        }
        v
    };
    let (sasc, sadc, dasc, dadc) = (set(true, true), set(true, false), set(false, true), set(false, false));
    let neg_all: Vec<f32> = sadc.iter().zip(&dasc).zip(&dadc).map(|((a, b), c)| a + b + c).collect();
    let t = |v: &Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v.clone(), [m, m]), &device);
    // term(pos, neg)[anchor] = mean_{q ∈ pos} log(1 + Σ_{k ∈ neg} exp(s[a,k] − s[a,q])).
    let term = |pos: &Vec<f32>, neg: &Vec<f32>| -> Tensor<B, 1> {
        let pos_t = t(pos);
        let neg_t = t(neg).reshape([m, 1, m]);
        let diff = s.clone().reshape([m, 1, m]) - s.clone().reshape([m, m, 1]); // [a, q, k] = s[a,k] − s[a,q]
        let big = diff.clone().mul(neg_t.clone()).sub(neg_t.clone().neg().add_scalar(1.0).mul_scalar(1e4)); // masked-out entries very negative
        let top = big.clone().max_dim(2).clamp_min(0.0); // [a, q, 1], ≥ 0 (the "1" term)
        let lse = top.clone() + (top.clone().neg().exp() + (big - top).exp().mul(neg_t).sum_dim(2)).log(); // [a, q, 1]
        let lse = lse.reshape([m, m]) * pos_t.clone();
        let count = pos_t.sum_dim(1).reshape([m]);
        let has = count.clone().greater_elem(0.0).float();
        lse.sum_dim(1).reshape([m]) / count.clamp_min(1.0) * has
    };
    (term(&sasc, &neg_all) + term(&sadc, &dadc) + term(&dasc, &dadc)).mean()
}

/// OSME and the classifier.
#[derive(Module, Debug)]
pub struct OsmeMamc<B: Backend> {
    w1: Vec<Linear<B>>,
    w2: Vec<Linear<B>>,
    w3: Vec<Linear<B>>,
    fc: Linear<B>,
    #[module(skip)]
    cfg: OsmeMamcConfig,
}

impl<B: Backend> OsmeMamc<B> {
    /// A model on `c`-channel maps.
    pub fn new(c: usize, classes: usize, cfg: &OsmeMamcConfig, device: &B::Device) -> Self {
        let p = cfg.attentions;
        let hidden = (c / cfg.reduction).max(1);
        OsmeMamc {
            w1: (0..p).map(|_| LinearConfig::new(c, hidden).init(device)).collect(),
            w2: (0..p).map(|_| LinearConfig::new(hidden, c).init(device)).collect(),
            w3: (0..p).map(|_| LinearConfig::new(c, cfg.embedding).init(device)).collect(),
            fc: LinearConfig::new(p * cfg.embedding, classes).init(device),
            cfg: cfg.clone(),
        }
    }

    /// The excitations `[n, P, C]`, the embeddings `[n, P, D]` and the class scores.
    pub fn forward(&self, map: Tensor<B, 4>) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 2>) {
        let z = gap(map);
        let [n, c] = z.dims();
        let ms: Vec<Tensor<B, 2>> = (0..self.cfg.attentions).map(|p| sigmoid(self.w2[p].forward(relu(self.w1[p].forward(z.clone()))))).collect();
        // GAP(m ⊙ U) = m ⊙ GAP(U): the excitation is per channel.
        let fs: Vec<Tensor<B, 2>> = ms.iter().enumerate().map(|(p, m)| self.w3[p].forward(m.clone() * z.clone())).collect();
        let logits = self.fc.forward(Tensor::cat(fs.clone(), 1));
        let d = self.cfg.embedding;
        let f = Tensor::stack::<3>(fs, 1).reshape([n, self.cfg.attentions, d]);
        (Tensor::stack::<3>(ms, 1).reshape([n, self.cfg.attentions, c]), f, logits)
    }
}

impl<B: AutodiffBackend> TrainMethod<B> for OsmeMamc<B> {
    type Batch = LocBatch;
    type Input = LocInput<B>;

    fn prepare(&self, b: LocBatch, device: &B::Device) -> LocInput<B> {
        prepare(b, device)
    }

    fn loss(&self, x: &LocInput<B>, _: usize) -> StepLoss<B> {
        let (_, f, logits) = self.forward(x.global.clone());
        let got = hits(&logits, &x.label_vec);
        let loss = cross_entropy(logits, x.labels.clone()).mul_scalar(self.cfg.ce_weight) + mamc_loss(f, &x.label_vec).mul_scalar(self.cfg.lambda);
        StepLoss { loss, hits: Some(got) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

/// Runs OSME + MAMC.
pub fn run<B: AutodiffBackend, T: Trunk<B>>(s: &T) -> Result<Option<Outcome>, TrainError> {
    let cfg = OsmeMamcConfig::from_params(&s.recipe().method.params)
        .map_err(|message| TrainError::Recipe { path: s.context().run_dir.join("recipe.toml"), message })?;
    let [c, h, w] = s.map_shape();
    let classes = s.dataset().num_classes();
    B::seed(s.dev(), s.recipe().train.seed);
    let model = OsmeMamc::<B>::new(c, classes, &cfg, s.dev());
    let Some(model) = s.train_round("osme-mamc", model, true)? else { return Ok(None) };
    let model = model.valid();
    let looks_at = look_images(s.dataset().test.len());
    let mut heats = std::collections::HashMap::new();
    let mut preds = std::collections::HashMap::new();
    let (top1, n) = s.evaluate_maps(&mut |x| {
        let (m, _, logits) = model.forward(x.global.clone());
        // Attended energy of attention 1: Σ_c m_c U_c (per position).
        let maps = host(x.global.clone());
        let mh = host(m);
        let scores = host(logits);
        for (j, &(i, _)) in x.views.iter().enumerate() {
            preds.insert(i, fgia_core::metrics::argmax_rows(&scores[j * classes..(j + 1) * classes], classes)[0]);
            if looks_at.contains(&i) {
                let heat: Vec<f32> = (0..h * w)
                    .map(|p| (0..c).map(|ch| mh[(j * cfg.attentions) * c + ch] * maps[j * c * h * w + ch * h * w + p]).sum::<f32>().max(0.0))
                    .collect();
                heats.insert(i, heat);
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
                caption: preds.get(&i).map(|&p| format!("predicted: {}; map: attention 1", s.dataset().classes.names[p])).unwrap_or_default(),
                ..Default::default()
            })
        })
        .collect();
    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("top1".into(), top1);
    metrics.insert("test_images".into(), n as f64);
    metrics.insert("attentions".into(), cfg.attentions as f64);
    let t = &s.recipe().train;
    Ok(Some(Outcome {
        metrics,
        trained_layers: format!(
            "OSME ({} excitations, reduction {}, {}-d embeddings) and the classifier ({})",
            cfg.attentions,
            cfg.reduction,
            cfg.embedding,
            s.trunk_words()
        ),
        loss: format!(
            "{} CE + {} MAMC (three N-pair terms) on {} classes x {} images per batch",
            cfg.ce_weight, cfg.lambda, t.classes_per_batch, t.images_per_class
        ),
        deviations: Vec::new(),
        tta: "none".into(),
        looks,
    }))
}
