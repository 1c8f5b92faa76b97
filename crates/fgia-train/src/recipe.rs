//! Training recipes: one TOML file per method and setting. A run folder keeps the resolved
//! recipe it was started with, so a resumed run cannot silently change its settings.

use std::path::{Path, PathBuf};

use fgia_core::imaging::{CropMode, Normalize, Transform};
use fgia_nn::BackboneKind;
use serde::{Deserialize, Serialize};

use crate::engine::{Decay, LrSchedule};
use crate::error::TrainError;

/// What is reported with the result (the survey table and how this run departs from the paper).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSection {
    /// Survey table (`table4`).
    pub table: String,
    /// Method name as in the survey.
    pub method: String,
    /// Dataset name as in the survey (`CUB-200-2011`).
    pub dataset: String,
    /// Backbone name as reported (may differ from `model.backbone` in a smoke profile).
    #[serde(default)]
    pub reported_backbone: Option<String>,
    /// The paper's input side this setting stands in for, when it differs from `data.crop`.
    #[serde(default)]
    pub paper_resolution: Option<u32>,
    /// The paper's backbone this setting stands in for (`vgg16`), when it differs from
    /// `model.backbone`.
    #[serde(default)]
    pub paper_backbone: Option<String>,
    /// Every way this setting departs from the paper's protocol.
    #[serde(default)]
    pub deviations: Vec<String>,
}

/// The network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Backbone kind (`resnet50`, `efficientnet-lite0`, ...).
    pub backbone: BackboneKind,
    /// Start from ImageNet weights.
    #[serde(default = "yes")]
    pub pretrained: bool,
    /// Leading stages kept frozen (no gradient, batch norm in inference mode); 0 trains all.
    #[serde(default)]
    pub freeze_stages: usize,
    /// With frozen stages: compute their output once for this many augmented views of each
    /// training image (and once for each test image), and train the remaining layers on these
    /// cached maps, each epoch drawing one view per image. 0 runs the frozen stages every step.
    #[serde(default)]
    pub cache_views: usize,
    /// Width divisor (tests only; 1 is the real network).
    #[serde(default = "one")]
    pub width_div: usize,
}

/// The data section of the recipes that train heads on cached feature maps (retrieval, feature
/// encoding): which dataset, and the resize and crop of its images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachedDataSection {
    /// Reader: `cub`, `dogs`, `cars`, `aircraft`, ...
    pub format: String,
    /// Root (the CLI's `--data-root` overrides it).
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Human description of the data actually used.
    #[serde(default)]
    pub description: Option<String>,
    /// Shorter side after resizing.
    pub resize: u32,
    /// Centre (test) and random (training) crop side.
    pub crop: u32,
    /// Skip undecodable images (counted) instead of failing.
    #[serde(default)]
    pub skip_bad: bool,
}

impl CachedDataSection {
    /// The dataset root: `root_override`, else `root`.
    pub fn root(&self, root_override: Option<&Path>) -> Result<PathBuf, TrainError> {
        root_override
            .map(Path::to_path_buf)
            .or_else(|| self.root.clone())
            .ok_or_else(|| TrainError::Recipe { path: "<recipe>".into(), message: "no dataset root (set data.root or pass --data-root)".into() })
    }

    /// The reader of `format`.
    pub fn kind(&self) -> Result<fgia_core::datasets::DatasetKind, TrainError> {
        self.format.parse().map_err(|m: String| TrainError::Recipe { path: "<recipe>".into(), message: m })
    }

    /// Reads the dataset (its official split).
    pub fn read(&self, root_override: Option<&Path>) -> Result<fgia_core::datasets::Dataset, TrainError> {
        Ok(self.kind()?.read(&self.root(root_override)?, fgia_core::datasets::ReadOptions { skip_bad: self.skip_bad })?)
    }

    /// Checks the sizes.
    pub fn validate(&self) -> Result<(), String> {
        if self.crop == 0 || self.resize < self.crop {
            return Err(format!("data: resize {} must be >= crop {} > 0", self.resize, self.crop));
        }
        Ok(())
    }

    /// Training images: resize, random crop, random flip.
    pub fn train_transform(&self, normalize: Normalize) -> Transform {
        Transform::train(self.resize, self.crop, normalize)
    }

    /// Test images: resize, centre crop.
    pub fn eval_transform(&self, normalize: Normalize) -> Transform {
        Transform::eval(self.resize, self.crop, normalize)
    }
}

/// Which data, and how images are transformed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Reader: `cub`, `dogs`, `cars`, `aircraft`.
    pub format: String,
    /// Dataset root (the CLI's `--data-root` overrides it).
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Human description of the data actually used (`cub-mini: 40 classes`).
    #[serde(default)]
    pub description: Option<String>,
    /// Shorter side after resizing.
    pub resize: u32,
    /// Square crop side (the "resolution").
    pub crop: u32,
    /// Crop training and test images to the annotated box.
    #[serde(default)]
    pub box_crop: bool,
    /// Random horizontal flip in training.
    #[serde(default = "yes")]
    pub flip: bool,
    /// Skip undecodable images (counted) instead of failing.
    #[serde(default)]
    pub skip_bad: bool,
}

/// Optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Epochs.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Learning rate of the pretrained layers.
    pub lr: f64,
    /// Learning rate of the new head.
    pub head_lr: f64,
    /// SGD momentum.
    #[serde(default = "momentum")]
    pub momentum: f64,
    /// Nesterov momentum.
    #[serde(default)]
    pub nesterov: bool,
    /// L2 weight decay (PyTorch convention: added to the gradient).
    #[serde(default)]
    pub weight_decay: f64,
    /// Decay after warm-up (`constant`, `cosine`, `step`, `multi-step`), per iteration.
    pub schedule: Decay,
    /// Linear warm-up length in epochs (may be fractional).
    #[serde(default)]
    pub warmup_epochs: f64,
    /// Epochs between decays of the `step` schedule.
    #[serde(default)]
    pub step_size: usize,
    /// Milestone epochs of the `multi-step` schedule.
    #[serde(default)]
    pub milestones: Vec<usize>,
    /// Factor of the step schedule.
    #[serde(default = "gamma")]
    pub gamma: f64,
    /// Clip the global gradient norm to this value (0 disables clipping).
    #[serde(default)]
    pub clip_grad_norm: f64,
    /// Label smoothing of the cross-entropy.
    #[serde(default)]
    pub label_smoothing: f32,
    /// Seed of data order, augmentation and initialisation.
    #[serde(default)]
    pub seed: u64,
}

impl TrainSection {
    /// The engine's schedule of this section.
    pub fn lr_schedule(&self) -> LrSchedule {
        LrSchedule {
            decay: self.schedule,
            warmup_epochs: self.warmup_epochs,
            step_size: self.step_size,
            milestones: self.milestones.clone(),
            gamma: self.gamma,
        }
    }
}

/// Evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Test-time augmentation: `none` or `flip` (average of the image and its mirror).
    #[serde(default = "none")]
    pub tta: String,
    /// Also evaluate on the test split every N epochs for the curves (0: only at the end). The
    /// reported number is always the last epoch's.
    #[serde(default)]
    pub every: usize,
    /// Batch size of evaluation.
    #[serde(default = "eval_batch")]
    pub batch_size: usize,
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection { tta: none(), every: 0, batch_size: eval_batch() }
    }
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn momentum() -> f64 {
    0.9
}
fn gamma() -> f64 {
    0.1
}
fn none() -> String {
    "none".into()
}
fn eval_batch() -> usize {
    32
}

/// A complete recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// What the result reproduces.
    pub report: ReportSection,
    /// The network.
    pub model: ModelSection,
    /// The data.
    pub data: DataSection,
    /// Optimisation.
    pub train: TrainSection,
    /// Evaluation.
    #[serde(default)]
    pub eval: EvalSection,
}

impl Recipe {
    /// Reads and validates a recipe file.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Self::parse(&text).map_err(|message| TrainError::Recipe { path: path.to_path_buf(), message })
    }

    /// Parses and validates recipe text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let r: Recipe = toml::from_str(text).map_err(|e| e.to_string())?;
        r.validate()?;
        Ok(r)
    }

    /// Checks values a TOML schema cannot express.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.train;
        let d = &self.data;
        let checks: [(bool, String); 9] = [
            (t.epochs >= 1, "train.epochs must be at least 1".into()),
            (t.batch_size >= 1, "train.batch_size must be at least 1".into()),
            (t.lr.is_finite() && t.lr >= 0.0, format!("train.lr {} must be finite and non-negative", t.lr)),
            (t.head_lr.is_finite() && t.head_lr > 0.0, format!("train.head_lr {} must be positive", t.head_lr)),
            ((0.0..1.0).contains(&t.momentum), format!("train.momentum {} must be in [0, 1)", t.momentum)),
            (t.warmup_epochs >= 0.0 && t.warmup_epochs < t.epochs as f64, "train.warmup_epochs must be shorter than the run".into()),
            (d.crop >= 32 && (d.resize == 0 || d.resize >= d.crop), format!("data.crop {} must be >= 32 and <= data.resize {}", d.crop, d.resize)),
            (matches!(self.eval.tta.as_str(), "none" | "flip"), format!("eval.tta '{}' is not 'none' or 'flip'", self.eval.tta)),
            ((0.0..1.0).contains(&t.label_smoothing), "train.label_smoothing must be in [0, 1)".into()),
        ];
        for (ok, msg) in checks {
            if !ok {
                return Err(msg);
            }
        }
        crate::engine::engine_checks(&t.lr_schedule())?;
        if self.model.cache_views > 0 && self.model.freeze_stages == 0 {
            return Err("model.cache_views needs model.freeze_stages > 0 (only frozen stages can be cached)".into());
        }
        if d.format.parse::<fgia_core::datasets::DatasetKind>().is_err() {
            return Err(format!("data.format '{}' is not one of cub, dogs, cars, aircraft", d.format));
        }
        Ok(())
    }

    /// The training transform.
    pub fn train_transform(&self) -> Transform {
        Transform {
            resize: self.data.resize,
            crop: self.data.crop,
            crop_mode: CropMode::Random,
            random_flip: self.data.flip,
            box_crop: self.data.box_crop,
            normalize: self.normalize(),
        }
    }

    /// The evaluation transform.
    pub fn eval_transform(&self) -> Transform {
        Transform {
            resize: self.data.resize,
            crop: self.data.crop,
            crop_mode: CropMode::Center,
            random_flip: false,
            box_crop: self.data.box_crop,
            normalize: self.normalize(),
        }
    }

    fn normalize(&self) -> Normalize {
        self.model.backbone.normalize()
    }

    /// Serialises the recipe (the resolved copy kept in a run folder).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a recipe always serialises")
    }
}

/// Describes a transform in words for the result record.
pub fn describe_transform(t: &Transform) -> String {
    let mut parts = Vec::new();
    if t.box_crop {
        parts.push("crop to box".to_string());
    }
    if t.resize > 0 {
        parts.push(format!("resize shorter side to {}", t.resize));
    }
    parts.push(format!("{} crop {}", if t.crop_mode == CropMode::Random { "random" } else { "centre" }, t.crop));
    if t.random_flip {
        parts.push("random horizontal flip".into());
    }
    parts.push(match t.normalize {
        Normalize::Imagenet => "ImageNet mean/std".into(),
        Normalize::Symmetric127 => "(x-127)/128".into(),
    });
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SAMPLE: &str = r#"
[report]
table = "table4"
method = "ResNet-50 baseline"
dataset = "CUB-200-2011"
deviations = ["smaller input"]

[model]
backbone = "efficientnet-lite0"
freeze_stages = 2

[data]
format = "cub"
resize = 128
crop = 112

[train]
epochs = 3
batch_size = 16
lr = 0.01
head_lr = 0.1
schedule = "cosine"
warmup_epochs = 0.5
"#;

    #[test]
    fn parses_with_defaults() {
        let r = Recipe::parse(SAMPLE).expect("valid");
        assert!(r.model.pretrained);
        assert_eq!(r.train.momentum, 0.9);
        assert_eq!(r.eval.tta, "none");
        assert_eq!(r.train_transform().normalize, Normalize::Symmetric127);
        let again = Recipe::parse(&r.to_toml()).expect("round trip");
        assert_eq!(again, r);
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        let cases = [
            (SAMPLE.replace("epochs = 3", "epochs = 0"), "epochs"),
            (SAMPLE.replace("crop = 112", "crop = 256"), "data.crop"),
            (SAMPLE.replace("format = \"cub\"", "format = \"birds\""), "data.format"),
            (SAMPLE.replace("backbone = \"efficientnet-lite0\"", "backbone = \"alexnet\""), "alexnet"),
            (SAMPLE.replace("lr = 0.01", "lr = nan"), "train.lr"),
            (SAMPLE.replace("[train]", "[train]\nbogus = 1"), "bogus"),
        ];
        for (text, want) in cases {
            let e = Recipe::parse(&text).expect_err(want);
            assert!(e.contains(want), "{e} should mention {want}");
        }
    }
}
