//! Retrieval recipes: one TOML file per method and setting (`recipes/table5/`).

use std::path::Path;

use fgia_core::imaging::{Normalize, Transform};
use fgia_core::record::FeatureMode;
use fgia_core::retrieval::Distance;
use fgia_nn::BackboneKind;
use fgia_train::TrainError;
use fgia_train::engine::{LrSchedule, OptimizerSpec, engine_checks};
use fgia_train::recipe::{CachedDataSection, ReportSection};
use serde::{Deserialize, Serialize};

use crate::Method;
use crate::rerank::KReciprocal;

/// A retrieval recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CbirRecipe {
    /// The method.
    pub method: MethodSection,
    /// The backbone.
    pub model: CbirModel,
    /// The data and the class-disjoint split.
    pub data: CachedDataSection,
    /// Training of the embedding (ignored by unsupervised methods).
    #[serde(default)]
    pub train: CbirTrain,
    /// Evaluation.
    #[serde(default)]
    pub eval: CbirEval,
    /// What goes into the result record.
    pub report: ReportSection,
}

/// Which method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodSection {
    /// Registry name (`scda`, `crl-wsl`, `dgcrl`, `piecewise-ce`, `contrastive`, `triplet`,
    /// `multi-similarity`, `proxy-anchor`).
    pub name: Method,
}

/// Backbone and embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CbirModel {
    /// Backbone kind.
    pub backbone: BackboneKind,
    /// Embedding size of the trained methods.
    #[serde(default = "d512")]
    pub embedding_dim: usize,
    /// `frozen`: the backbone's last maps are cached and only the embedding head trains;
    /// `end-to-end`: pixels through the whole backbone, every layer trained, augmentation
    /// drawn afresh every epoch. Unsupervised methods ignore it.
    #[serde(default)]
    pub mode: FeatureMode,
}

fn d512() -> usize {
    512
}

/// Training of the embedding head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CbirTrain {
    /// Epochs.
    pub epochs: usize,
    /// Classes per batch (`P`).
    pub classes_per_batch: usize,
    /// Images per class in a batch (`K`).
    pub images_per_class: usize,
    /// Learning rate of the embedding layer.
    pub lr: f64,
    /// Learning rate of class weights (proxies, centres), as a multiple of `lr`.
    pub class_weight_lr_mult: f64,
    /// Learning rate of the backbone (end-to-end mode), as a multiple of `lr`.
    #[serde(default = "one")]
    pub backbone_lr_mult: f64,
    /// The optimiser: `adamw` (decoupled weight decay) or `sgd` (momentum, L2 weight decay).
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// SGD momentum.
    #[serde(default = "momentum")]
    pub momentum: f64,
    /// Weight decay (decoupled for AdamW, added to the gradient for SGD).
    pub weight_decay: f64,
    /// The learning-rate schedule, per iteration (default: cosine decay over the run).
    #[serde(default = "LrSchedule::cosine")]
    pub lr_schedule: LrSchedule,
    /// Seed.
    pub seed: u64,
    /// Augmented views of each training image whose feature maps are cached.
    pub views: usize,
}

/// The optimiser of a retrieval recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW, betas (0.9, 0.999).
    #[default]
    Adamw,
    /// SGD with momentum.
    Sgd,
}

fn one() -> f64 {
    1.0
}
fn momentum() -> f64 {
    0.9
}

impl Default for CbirTrain {
    fn default() -> Self {
        CbirTrain {
            epochs: 30,
            classes_per_batch: 8,
            images_per_class: 4,
            lr: 1e-3,
            class_weight_lr_mult: 10.0,
            backbone_lr_mult: 1.0,
            optimizer: OptimizerKind::Adamw,
            momentum: 0.9,
            weight_decay: 1e-4,
            lr_schedule: LrSchedule::cosine(),
            seed: 0,
            views: 4,
        }
    }
}

impl CbirTrain {
    /// The engine's optimiser.
    pub fn optimizer_spec(&self) -> OptimizerSpec {
        match self.optimizer {
            OptimizerKind::Adamw => OptimizerSpec::Adamw { weight_decay: self.weight_decay },
            OptimizerKind::Sgd => OptimizerSpec::Sgd { momentum: self.momentum, nesterov: false, weight_decay: self.weight_decay },
        }
    }
}

/// Re-ranking after the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rerank {
    /// None (the survey's protocol).
    None,
    /// Average query expansion.
    Qe,
    /// k-reciprocal re-ranking.
    KReciprocal,
}

/// Evaluation pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CbirEval {
    /// Comparison of embeddings.
    pub distance: Distance,
    /// Recall@K cut-offs.
    pub ks: Vec<usize>,
    /// PCA-whitening to this many dimensions, learned on the training classes (0 = off).
    pub pca_whiten: usize,
    /// Re-ranking for the headline numbers.
    pub rerank: Rerank,
    /// Also record the metrics after query expansion and k-reciprocal re-ranking (as
    /// `qe/...` and `kr/...`).
    pub also_reranked: bool,
    /// Neighbours of query expansion.
    pub qe_k: usize,
    /// k-reciprocal parameters.
    pub k_reciprocal: KReciprocal,
}

impl Default for CbirEval {
    fn default() -> Self {
        CbirEval {
            distance: Distance::Cosine,
            ks: vec![1, 2, 4, 8],
            pca_whiten: 0,
            rerank: Rerank::None,
            also_reranked: true,
            qe_k: 2,
            k_reciprocal: KReciprocal::default(),
        }
    }
}

impl CbirRecipe {
    /// Reads and validates a recipe file.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Self::parse(&text).map_err(|message| TrainError::Recipe { path: path.to_path_buf(), message })
    }

    /// Parses and validates.
    pub fn parse(text: &str) -> Result<Self, String> {
        let r: CbirRecipe = toml::from_str(text).map_err(|e| e.to_string())?;
        r.validate()?;
        Ok(r)
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.train;
        if self.method.name.is_trained() {
            if t.epochs == 0 || t.classes_per_batch < 2 || t.images_per_class < 2 || t.views == 0 {
                return Err("train: epochs and views must be > 0, classes_per_batch and images_per_class >= 2".into());
            }
            if !(t.lr.is_finite() && t.lr > 0.0 && t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
                return Err(format!("train: lr {} / weight_decay {} out of range", t.lr, t.weight_decay));
            }
            if !(t.backbone_lr_mult.is_finite() && t.backbone_lr_mult >= 0.0 && t.class_weight_lr_mult.is_finite() && t.class_weight_lr_mult >= 0.0) {
                return Err(format!("train: backbone_lr_mult {} / class_weight_lr_mult {} out of range", t.backbone_lr_mult, t.class_weight_lr_mult));
            }
            if !(0.0..1.0).contains(&t.momentum) {
                return Err(format!("train: momentum {} must be in [0, 1)", t.momentum));
            }
            engine_checks(&t.lr_schedule)?;
            if !matches!(self.model.mode, FeatureMode::Frozen | FeatureMode::EndToEnd) {
                return Err(format!("model.mode '{}': retrieval trains 'frozen' or 'end-to-end'", self.model.mode.name()));
            }
        }
        self.data.validate()?;
        if self.eval.ks.is_empty() || self.eval.ks.contains(&0) {
            return Err("eval.ks must be non-empty and positive".into());
        }
        if self.model.embedding_dim == 0 {
            return Err("model.embedding_dim must be > 0".into());
        }
        Ok(())
    }

    /// Training images: resize, random crop, random flip.
    pub fn train_transform(&self) -> Transform {
        self.data.train_transform(self.normalize())
    }

    /// Test images: resize, centre crop.
    pub fn eval_transform(&self) -> Transform {
        self.data.eval_transform(self.normalize())
    }

    fn normalize(&self) -> Normalize {
        self.model.backbone.normalize()
    }

    /// The recipe as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a recipe serialises")
    }
}
