//! Feature-encoding recipes: one TOML file per method and setting (`recipes/table2/`).

use std::collections::BTreeMap;
use std::path::Path;

use fgia_core::imaging::{Normalize, Transform};
use fgia_core::record::FeatureMode;
use fgia_nn::BackboneKind;
use fgia_train::TrainError;
use fgia_train::engine::{LrSchedule, engine_checks};
use fgia_train::recipe::{CachedDataSection, ReportSection};
use serde::{Deserialize, Serialize};

use crate::Method;

/// A feature-encoding recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodingRecipe {
    /// The method and its parameters.
    pub method: MethodSection,
    /// The backbone.
    pub model: EncodingModel,
    /// The data.
    pub data: CachedDataSection,
    /// Training.
    pub train: EncodingTrain,
    /// Evaluation.
    #[serde(default)]
    pub eval: EncodingEval,
    /// What goes into the result record.
    pub report: ReportSection,
}

/// Which method, with which parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodSection {
    /// Registry name (see [`Method::ALL`]).
    pub name: Method,
    /// Overrides of [`Method::default_params`].
    #[serde(default)]
    pub params: BTreeMap<String, f64>,
    /// HBP: the stages whose maps are combined (default: the feature stage and the two before).
    #[serde(default)]
    pub hbp_stages: Vec<usize>,
}

/// Backbone and where its feature map is read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodingModel {
    /// Backbone kind.
    pub backbone: BackboneKind,
    /// The stage (of `Network::forward_stage`) whose output is the "last feature map" the
    /// methods read; the stages after it are not used.
    pub feature_stage: usize,
    /// `frozen`: the backbone's maps are cached and only the method's layers train (plus the
    /// last stage for the methods that fine-tune it); `end-to-end`: pixels through the whole
    /// backbone, every layer trained, augmentation and edits drawn afresh every epoch.
    #[serde(default)]
    pub mode: FeatureMode,
}

/// Training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodingTrain {
    /// Epochs.
    pub epochs: usize,
    /// Batch size (random batches).
    pub batch_size: usize,
    /// Classes per batch for the class-balanced methods (`P`).
    #[serde(default = "eight")]
    pub classes_per_batch: usize,
    /// Images per class for the class-balanced methods (`K`).
    #[serde(default = "four")]
    pub images_per_class: usize,
    /// SGD learning rate of the method's layers.
    pub lr: f64,
    /// The learning-rate schedule, per iteration (default: cosine decay over the run, no
    /// warm-up), e.g. `lr_schedule = { decay = "step", step_size = 60, gamma = 0.1 }`.
    #[serde(default = "LrSchedule::cosine")]
    pub lr_schedule: LrSchedule,
    /// Learning rate of a fine-tuned backbone stage, as a multiple of `lr`.
    #[serde(default = "tenth")]
    pub backbone_lr_mult: f64,
    /// SGD momentum.
    #[serde(default = "momentum")]
    pub momentum: f64,
    /// Nesterov momentum.
    #[serde(default)]
    pub nesterov: bool,
    /// Weight decay.
    pub weight_decay: f64,
    /// Clip the global gradient norm (over every parameter group) to this; 0 = no clipping.
    #[serde(default)]
    pub clip_grad_norm: f64,
    /// Seed.
    pub seed: u64,
    /// Augmented views of each training image whose maps are cached.
    pub views: usize,
    /// Views of each edited kind (destructed, jigsaw) cached per training image.
    #[serde(default = "two")]
    pub edited_views: usize,
}

fn eight() -> usize {
    8
}
fn four() -> usize {
    4
}
fn two() -> usize {
    2
}
fn tenth() -> f64 {
    0.1
}
fn momentum() -> f64 {
    0.9
}

/// Evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EncodingEval {
    /// Average the softmax of the centre crop and its mirror.
    #[serde(default)]
    pub flip: bool,
}

/// A method's resolved parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Params(BTreeMap<String, f64>);

impl Params {
    /// The defaults of `method` with `overrides`; an unknown name or a non-finite value is an
    /// error.
    pub fn resolve(method: Method, overrides: &BTreeMap<String, f64>) -> Result<Self, String> {
        let mut values: BTreeMap<String, f64> = method.default_params().iter().map(|(k, v)| (k.to_string(), *v)).collect();
        for (k, v) in overrides {
            if !values.contains_key(k) {
                let known: Vec<&str> = method.default_params().iter().map(|p| p.0).collect();
                return Err(format!(
                    "method.params: '{k}' is not a parameter of {method} (known: {})",
                    if known.is_empty() { "none".into() } else { known.join(", ") }
                ));
            }
            if !v.is_finite() || *v < 0.0 {
                return Err(format!("method.params.{k} = {v}: must be finite and >= 0"));
            }
            values.insert(k.clone(), *v);
        }
        Ok(Params(values))
    }

    /// A parameter's value.
    ///
    /// # Panics
    /// If `name` is not one of the method's parameters (a programming error: the registry
    /// lists them).
    pub fn get(&self, name: &str) -> f64 {
        *self.0.get(name).unwrap_or_else(|| panic!("no parameter '{name}'"))
    }

    /// An integer parameter.
    pub fn count(&self, name: &str) -> usize {
        self.get(name).round() as usize
    }

    /// All values (for the record).
    pub fn describe(&self) -> String {
        self.0.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", ")
    }
}

impl EncodingRecipe {
    /// Reads and validates a recipe file.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Self::parse(&text).map_err(|message| TrainError::Recipe { path: path.to_path_buf(), message })
    }

    /// Parses and validates.
    pub fn parse(text: &str) -> Result<Self, String> {
        let r: EncodingRecipe = toml::from_str(text).map_err(|e| e.to_string())?;
        r.validate()?;
        Ok(r)
    }

    /// The resolved method parameters.
    pub fn params(&self) -> Params {
        Params::resolve(self.method.name, &self.method.params).expect("validated")
    }

    /// HBP's stages.
    pub fn hbp_stages(&self) -> Vec<usize> {
        if self.method.hbp_stages.is_empty() {
            let f = self.model.feature_stage;
            (f.saturating_sub(2)..=f).collect()
        } else {
            self.method.hbp_stages.clone()
        }
    }

    /// Stages of the unedited view this recipe reads.
    pub fn taps(&self) -> Vec<usize> {
        self.method.name.taps(self.model.feature_stage, &self.hbp_stages())
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.train;
        Params::resolve(self.method.name, &self.method.params)?;
        if t.epochs == 0 || t.batch_size < 2 || t.views == 0 || t.edited_views == 0 {
            return Err("train: epochs, views and edited_views must be > 0 and batch_size >= 2".into());
        }
        if self.method.name.class_balanced_batches() && (t.classes_per_batch < 2 || t.images_per_class < 2) {
            return Err("train: classes_per_batch and images_per_class must be >= 2 for a pair-based method".into());
        }
        if !(t.lr.is_finite()
            && t.lr > 0.0
            && t.weight_decay.is_finite()
            && t.weight_decay >= 0.0
            && t.backbone_lr_mult.is_finite()
            && t.backbone_lr_mult >= 0.0)
        {
            return Err(format!("train: lr {} / weight_decay {} / backbone_lr_mult {} out of range", t.lr, t.weight_decay, t.backbone_lr_mult));
        }
        if !(0.0..1.0).contains(&t.momentum) {
            return Err(format!("train: momentum {} must be in [0, 1)", t.momentum));
        }
        engine_checks(&t.lr_schedule)?;
        self.data.validate()?;
        if !matches!(self.model.mode, FeatureMode::Frozen | FeatureMode::EndToEnd) {
            return Err(format!("model.mode '{}': feature encoding trains 'frozen' or 'end-to-end'", self.model.mode.name()));
        }
        let stages = self.model.backbone.num_stages();
        let f = self.model.feature_stage;
        if f >= stages || f < 2 {
            return Err(format!("model.feature_stage {f} must be in 2..{stages} for {}", self.model.backbone.name()));
        }
        if self.hbp_stages().iter().any(|&s| s >= stages) {
            return Err(format!("method.hbp_stages {:?}: {} has {stages} stages", self.hbp_stages(), self.model.backbone.name()));
        }
        let p = self.params();
        if self.method.name == Method::CbpTs || self.method.name == Method::KernelPooling {
            let d = p.count("dim");
            if !d.is_power_of_two() {
                return Err(format!("method.params.dim = {d}: Tensor Sketch needs a power of two (burn's FFT)"));
            }
        }
        if self.method.name == Method::Dcl {
            let n = p.count("regions");
            if n == 0 || !(self.data.crop as usize).is_multiple_of(n) {
                return Err(format!("method.params.regions = {n} must divide data.crop {}", self.data.crop));
            }
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
