//! Sketch-based retrieval recipes: one TOML file per method and set (`recipes/table6/`).

use std::path::{Path, PathBuf};

use fgia_core::record::FeatureMode;
use fgia_nn::BackboneKind;
use fgia_train::TrainError;
use fgia_train::recipe::ReportSection;
use serde::{Deserialize, Serialize};

use crate::{Loss, Method};

/// A sketch-based retrieval recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SbirRecipe {
    /// The method.
    pub method: MethodSection,
    /// The trunk.
    pub model: SbirModel,
    /// The set and the views.
    pub data: SbirData,
    /// Training.
    pub train: SbirTrain,
    /// What goes into the result record.
    pub report: ReportSection,
    /// What `cargo xtask reproduce table6 --smoke` changes (and records as deviations); a run
    /// of the recipe itself ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoke: Option<SbirSmoke>,
}

/// The smoke profile's changes to a recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SbirSmoke {
    /// Epochs instead of `train.epochs`.
    pub epochs: Option<usize>,
    /// Cached training views instead of `data.train_views`.
    pub train_views: Option<usize>,
}

/// Which method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodSection {
    /// Registry name (`triplet-sketch-a-net`, `dssa`).
    pub name: Method,
}

/// The trunk and how it trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SbirModel {
    /// ImageNet-pretrained trunk standing in for Sketch-a-Net.
    pub backbone: BackboneKind,
    /// `frozen` (the default: cached views, the method's layers train) or `end-to-end` (fresh
    /// random views of the pixels every epoch through the whole trunk, which fine-tunes from
    /// its ImageNet weights).
    #[serde(default)]
    pub mode: FeatureMode,
    /// End to end: the trunk's learning rate as a multiple of `train.lr`.
    #[serde(default = "d_lr_mult")]
    pub backbone_lr_mult: f64,
}

fn d_lr_mult() -> f64 {
    0.1
}

/// The set and its views.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SbirData {
    /// The set's folder under the shared data (`qmul-shoes-v1`, `qmul-chairs-v1`), used when no
    /// root is given.
    pub shared: String,
    /// Side the images are resized to (256 in the paper; the sets are stored at 256).
    #[serde(default = "d256")]
    pub side: u32,
    /// Side of the crops (225 in the paper).
    #[serde(default = "d225")]
    pub crop: u32,
    /// Random training views cached per image (a random crop and flip each).
    pub train_views: usize,
}

fn d256() -> u32 {
    256
}

fn d225() -> u32 {
    225
}

/// Triplet training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SbirTrain {
    /// Epochs (one epoch: every training sketch once as an anchor).
    pub epochs: usize,
    /// Triplets per batch (128 in the paper).
    pub batch_size: usize,
    /// Learning rate (1e-3 in the paper).
    pub lr: f64,
    /// SGD momentum (0.9).
    pub momentum: f64,
    /// Weight decay (5e-4).
    pub weight_decay: f64,
    /// Triplet margin on squared distances (0.3 in the authors' release).
    pub margin: f64,
    /// Share of hard negatives (from the human triplets); the rest are easy (0.75).
    pub hard_ratio: f64,
    /// Seed of the initialisation, the views and the triplets.
    pub seed: u64,
    /// The energy of the triplet loss (`triplet`, the default, or DSSA's `holef`).
    #[serde(default)]
    pub loss: Loss,
}

impl SbirRecipe {
    /// Parses and checks a recipe.
    pub fn parse(text: &str) -> Result<Self, String> {
        let r: SbirRecipe = toml::from_str(text).map_err(|e| e.to_string())?;
        r.validate()?;
        Ok(r)
    }

    /// Reads a recipe file.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Self::parse(&text).map_err(|message| TrainError::Recipe { path: path.to_path_buf(), message })
    }

    /// The recipe as TOML (what the run folder keeps).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a recipe serialises")
    }

    /// The paper's constraints on the values.
    pub fn validate(&self) -> Result<(), String> {
        let (d, t) = (&self.data, &self.train);
        if d.crop == 0 || d.crop > d.side || d.side > 4096 {
            return Err(format!("data: crop {} must lie in 1..=side ({})", d.crop, d.side));
        }
        if d.train_views == 0 || d.train_views > 64 {
            return Err(format!("data: train_views {} must lie in 1..=64", d.train_views));
        }
        if t.epochs == 0 || t.batch_size < 2 {
            return Err("train: epochs must be positive and batch_size at least 2".into());
        }
        for (name, v) in [("lr", t.lr), ("margin", t.margin)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("train: {name} must be positive and finite, not {v}"));
            }
        }
        if !matches!(self.model.mode, FeatureMode::Frozen | FeatureMode::EndToEnd) {
            return Err(format!("model: mode {:?}: Table 6 runs frozen or end-to-end", self.model.mode));
        }
        if !(self.model.backbone_lr_mult.is_finite() && self.model.backbone_lr_mult > 0.0 && self.model.backbone_lr_mult <= 10.0) {
            return Err(format!("model: backbone_lr_mult {} must lie in (0, 10]", self.model.backbone_lr_mult));
        }
        if t.loss == Loss::Holef && self.method.name != Method::Dssa {
            return Err("train: loss = \"holef\" belongs to DSSA (method dssa)".into());
        }
        for (name, v) in [("momentum", t.momentum), ("weight_decay", t.weight_decay), ("hard_ratio", t.hard_ratio)] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(format!("train: {name} must lie in [0, 1], not {v}"));
            }
        }
        Ok(())
    }

    /// The set's root, which the caller gives (`--data-root`; xtask passes the shared data's
    /// `data.shared` folder).
    pub fn root(&self, root: Option<&Path>) -> Result<PathBuf, TrainError> {
        root.map(Path::to_path_buf).ok_or_else(|| TrainError::Recipe {
            path: PathBuf::from(&self.data.shared),
            message: format!("no data root was given for the set '{}' (--data-root)", self.data.shared),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipes_of_table6_parse_and_name_their_method_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/table6");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).expect("recipes/table6") {
            let p = e.expect("entry").path();
            let text = std::fs::read_to_string(&p).expect("read");
            let r = SbirRecipe::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(text.contains(r.method.name.file()), "{} names its method file", p.display());
            let file = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(r.method.name.file())).expect("method file");
            let name = p.file_name().and_then(|s| s.to_str()).expect("utf8");
            let family = name.trim_end_matches(".toml").trim_end_matches("-shoes").trim_end_matches("-chairs").trim_end_matches("-holef");
            assert!(file.contains(&format!("recipes/table6/{family}")), "{} names {name}", r.method.name.file());
            assert_eq!(r.report.table, "table6");
            n += 1;
        }
        assert_eq!(n, 6);
        let bad = std::fs::read_to_string(dir.join("triplet-sketch-a-net-shoes.toml")).expect("read").replace("hard_ratio = 0.75", "hard_ratio = 1.5");
        assert!(SbirRecipe::parse(&bad).expect_err("hard_ratio").contains("hard_ratio"));
    }
}
