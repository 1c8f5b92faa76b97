//! §5.1 recipes: one TOML file per method under `recipes/table2/`, with `[method] family =
//! "localization"` (what sends them to `fgia localization`).
//!
//! `[method.params]` holds the method's own settings; each method file's typed config parses and
//! validates them (unknown keys are errors naming the key), and every loss weight is there.

use std::path::Path;

use fgia_nn::BackboneKind;
use fgia_train::TrainError;
use fgia_train::engine::LrSchedule;
use fgia_train::recipe::{CachedDataSection, ReportSection};
use serde::{Deserialize, Serialize};

use crate::Method;

/// A §5.1 recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalizationRecipe {
    /// The method and its parameters.
    pub method: MethodSection,
    /// The backbone and the feature mode.
    pub model: LocModel,
    /// Dataset, resize and crop.
    pub data: CachedDataSection,
    /// Training.
    pub train: LocTrain,
    /// What goes into the result record.
    pub report: ReportSection,
}

/// Which method, with its paper's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodSection {
    /// Registry name (`nts-net`, `ws-dan`, ...).
    pub name: Method,
    /// Always `localization` (the table's recipes of §5.2 have none).
    pub family: String,
    /// The method's settings (its file's typed config).
    #[serde(default)]
    pub params: toml::Table,
}

/// The backbone and how it is used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocModel {
    /// ImageNet-pretrained backbone.
    pub backbone: BackboneKind,
    /// `frozen` (cached rounds on the frozen trunk, the smoke profile) or `end-to-end` (the
    /// paper's; see [`crate::run`]).
    pub mode: String,
}

/// How the method trains (each cached round runs this schedule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocTrain {
    /// Epochs of each round.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Classes per batch for class-balanced batches (MAMC's N-pair terms).
    #[serde(default = "eight")]
    pub classes_per_batch: usize,
    /// Images per class for class-balanced batches.
    #[serde(default = "two")]
    pub images_per_class: usize,
    /// SGD learning rate.
    pub lr: f64,
    /// The schedule, per iteration (default cosine decay over the round).
    #[serde(default = "LrSchedule::cosine")]
    pub lr_schedule: LrSchedule,
    /// SGD momentum.
    #[serde(default = "momentum")]
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Learning rate of a fine-tuned backbone, as a multiple of `lr` (end-to-end).
    #[serde(default = "one")]
    pub backbone_lr_mult: f64,
    /// Seed.
    #[serde(default)]
    pub seed: u64,
    /// Cached augmented views per training image (frozen mode).
    #[serde(default = "two")]
    pub views: usize,
}

fn eight() -> usize {
    8
}
fn two() -> usize {
    2
}
fn momentum() -> f64 {
    0.9
}
fn one() -> f64 {
    1.0
}

impl LocalizationRecipe {
    /// Parses and checks a recipe.
    pub fn parse(text: &str) -> Result<Self, String> {
        let r: LocalizationRecipe = toml::from_str(text).map_err(|e| e.to_string())?;
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

    /// Checks the values, the method's parameters included.
    pub fn validate(&self) -> Result<(), String> {
        self.data.validate()?;
        if self.method.family != "localization" {
            return Err(format!("method: family '{}' must be 'localization'", self.method.family));
        }
        if !matches!(self.model.mode.as_str(), "frozen" | "end-to-end") {
            return Err(format!("model: mode '{}' must be 'frozen' or 'end-to-end'", self.model.mode));
        }
        let t = &self.train;
        if t.epochs == 0 || t.epochs > 10_000 || t.batch_size < 2 || t.views == 0 || t.views > 64 {
            return Err(format!("train: epochs {} in 1..=10000, batch_size {} >= 2 and views {} in 1..=64", t.epochs, t.batch_size, t.views));
        }
        if t.classes_per_batch < 2 || t.images_per_class < 2 {
            return Err(format!("train: classes_per_batch {} and images_per_class {} must be >= 2", t.classes_per_batch, t.images_per_class));
        }
        for (k, v) in [("lr", t.lr), ("backbone_lr_mult", t.backbone_lr_mult)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("train: {k} {v} must be positive"));
            }
        }
        for (k, v) in [("momentum", t.momentum), ("weight_decay", t.weight_decay)] {
            if !(v.is_finite() && (0.0..1.0).contains(&v)) {
                return Err(format!("train: {k} {v} must lie in [0, 1)"));
            }
        }
        fgia_train::engine::engine_checks(&t.lr_schedule).map_err(|m| format!("train: lr_schedule: {m}"))?;
        self.method.name.check_params(&self.method.params).map_err(|m| format!("method.params: {m}"))
    }
}

/// Parses a method's `[method.params]` into its typed config (defaults for absent keys,
/// unknown keys refused).
pub fn params<T: serde::de::DeserializeOwned>(p: &toml::Table) -> Result<T, String> {
    toml::Value::Table(p.clone()).try_into().map_err(|e: toml::de::Error| e.message().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The §5.1 recipes of `recipes/table2/`, as the CLI receives them (xtask strips `[smoke]`
    /// and `requires_parts`).
    fn repository_recipes() -> Vec<(String, String, LocalizationRecipe)> {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut out = Vec::new();
        for e in std::fs::read_dir(ws.join("recipes/table2")).expect("recipes/table2") {
            let p = e.expect("entry").path();
            let text = std::fs::read_to_string(&p).expect("read");
            let mut v: toml::Value = toml::from_str(&text).expect("TOML");
            if v.get("method").and_then(|m| m.get("family")).and_then(|f| f.as_str()) != Some("localization") {
                continue;
            }
            let t = v.as_table_mut().expect("table");
            t.remove("smoke");
            t.remove("requires_parts");
            let r = LocalizationRecipe::parse(&toml::to_string(&v).expect("TOML")).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            out.push((p.file_name().and_then(|s| s.to_str()).expect("utf8").to_string(), text, r));
        }
        out
    }

    #[test]
    fn every_method_has_a_recipe_and_each_names_the_other() {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let recipes = repository_recipes();
        for m in Method::ALL {
            assert!(recipes.iter().any(|(_, _, r)| r.method.name == m), "{} has no recipe", m.key());
        }
        for (name, text, r) in &recipes {
            assert!(text.contains(r.method.name.file()), "{name} names its method file");
            let file = std::fs::read_to_string(ws.join(r.method.name.file())).expect("method file");
            assert!(file.contains(&format!("recipes/table2/{name}")), "{} names {name}", r.method.name.file());
            assert_eq!(LocalizationRecipe::parse(&r.to_toml()).expect("round trip"), *r);
            assert_eq!(r.model.mode, "end-to-end", "{name}: the recipe holds the paper's setting; [smoke] says what the CPU profile changes");
        }
        assert_eq!(recipes.len(), 13, "11 methods, Part-based R-CNN with three test settings");
    }

    #[test]
    fn bad_values_are_refused_with_the_field_named() {
        let (_, _, base) = repository_recipes().into_iter().find(|(n, _, _)| n == "nts-net.toml").expect("nts-net");
        let text = base.to_toml();
        for (from, to, field) in [
            ("nms_iou = 0.25", "nms_iou = 0.0", "nms_iou"),
            ("cat_num = 4", "cat_num = 9", "cat_num"),
            ("proposals = 6", "proposals = 6\nunknown_key = 1", "unknown_key"),
            ("epochs = 500", "epochs = 0", "epochs"),
            ("mode = \"end-to-end\"", "mode = \"sideways\"", "mode"),
        ] {
            assert!(text.contains(from), "{from}");
            let e = LocalizationRecipe::parse(&text.replacen(from, to, 1)).expect_err(field);
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
