//! Table 3 recipes: one TOML file per method (`recipes/table3/`).

use std::path::Path;

use fgia_nn::BackboneKind;
use fgia_train::TrainError;
use fgia_train::recipe::{CachedDataSection, ReportSection};
use serde::{Deserialize, Serialize};

use crate::Method;
use crate::geo_prior::GeoSettings;
use crate::kerl::KerlSettings;
use crate::noise::NoiseKind;

/// A Table 3 recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalRecipe {
    /// The method and its parameters.
    pub method: MethodSection,
    /// Label noise on the training labels (the stand-in for web labels); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<NoiseSection>,
    /// The frozen backbone and the trained head.
    pub model: ExternalModel,
    /// Dataset, resize and crop.
    pub data: CachedDataSection,
    /// Training of the head.
    pub train: ExternalTrain,
    /// What goes into the result record.
    pub report: ReportSection,
}

/// Which method, with its paper's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodSection {
    /// Registry name (`cross-entropy`, `co-teaching`, `peer-learning`, `sje`, `sje-zero-shot`,
    /// `twenty-questions`, `kerl`, `geo-prior`).
    pub name: Method,
    /// Co-teaching and Peer-learning: the largest drop rate `ξ`; absent, the noise rate (the
    /// co-teaching paper's assumption that the rate is known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xi: Option<f64>,
    /// Co-teaching and Peer-learning: epochs `T_k` over which the drop rate rises to `ξ`.
    #[serde(default = "ten")]
    pub t_k: f64,
    /// Zero-shot: every `unseen_every`-th class (indices `unseen_every - 1`, `2 unseen_every -
    /// 1`, ...) is unseen in training.
    #[serde(default = "four")]
    pub unseen_every: usize,
    /// Twenty questions: questions per image.
    #[serde(default = "twenty")]
    pub questions: usize,
    /// Twenty questions: the chance `η` that a simulated user answers at random.
    #[serde(default)]
    pub user_noise: f64,
    /// Twenty questions: the clamp of `p(yes | c, a)` to `[floor, 1 - floor]`.
    #[serde(default = "floor")]
    pub floor: f64,
    /// KERL: the graph network and the gates (`[method.kerl]`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub kerl: KerlSettings,
    /// Geo prior: the network, its loss and the synthetic ranges (`[method.geo]`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub geo: GeoSettings,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn ten() -> f64 {
    10.0
}
fn four() -> usize {
    4
}
fn twenty() -> usize {
    20
}
fn floor() -> f64 {
    0.05
}

/// Corruption of the training labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseSection {
    /// `symmetric` or `pair` (pair flips inside the confusable groups).
    pub kind: NoiseName,
    /// Share of training labels to corrupt, in `[0, 1)`.
    pub rate: f64,
    /// Seed of the corruption.
    #[serde(default)]
    pub seed: u64,
}

/// The noise kinds by their recipe names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseName {
    /// Uniform over the other classes.
    Symmetric,
    /// To the next class of the confusable group.
    Pair,
}

impl NoiseName {
    /// The layer's kind.
    pub fn kind(self) -> NoiseKind {
        match self {
            NoiseName::Symmetric => NoiseKind::Symmetric,
            NoiseName::Pair => NoiseKind::PairFlip,
        }
    }
}

/// The frozen backbone and the head on its pooled feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalModel {
    /// ImageNet-pretrained backbone, frozen; its last map is cached.
    pub backbone: BackboneKind,
    /// Hidden width of the classifier heads (0: linear).
    #[serde(default)]
    pub hidden: usize,
}

/// How the head trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalTrain {
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Learning rate (AdamW, cosine decay).
    pub lr: f64,
    /// AdamW's decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Cached augmented views per training image.
    pub views: usize,
    /// Seed of initialisation, order, views and the noise-free draws.
    #[serde(default)]
    pub seed: u64,
}

impl ExternalRecipe {
    /// Parses and checks a recipe.
    pub fn parse(text: &str) -> Result<Self, String> {
        let r: ExternalRecipe = toml::from_str(text).map_err(|e| e.to_string())?;
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

    /// The drop rate's ceiling `ξ`: the recipe's, else the noise rate.
    pub fn xi(&self) -> f64 {
        self.method.xi.unwrap_or_else(|| self.noise.as_ref().map_or(0.0, |n| n.rate))
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), String> {
        self.data.validate()?;
        let (m, t) = (&self.method, &self.train);
        if t.epochs == 0 || t.epochs > 10_000 || t.batch_size < 2 || t.views == 0 || t.views > 64 {
            return Err(format!("train: epochs {} in 1..=10000, batch_size {} >= 2 and views {} in 1..=64", t.epochs, t.batch_size, t.views));
        }
        if !(t.lr.is_finite() && t.lr > 0.0) || !(t.weight_decay.is_finite() && (0.0..=1.0).contains(&t.weight_decay)) {
            return Err(format!("train: lr {} must be positive and weight_decay {} in [0, 1]", t.lr, t.weight_decay));
        }
        if let Some(n) = &self.noise
            && !(n.rate.is_finite() && (0.0..1.0).contains(&n.rate))
        {
            return Err(format!("noise: rate {} must lie in [0, 1)", n.rate));
        }
        if self.noise.as_ref().is_some_and(|n| n.rate > 0.0) && !m.name.reads_noisy_labels() {
            return Err(format!("noise: {} trains on clean labels (noise belongs to cross-entropy, co-teaching and peer-learning)", m.name.key()));
        }
        if let Some(xi) = m.xi
            && !(xi.is_finite() && (0.0..1.0).contains(&xi))
        {
            return Err(format!("method: xi {xi} must lie in [0, 1)"));
        }
        if !(m.t_k.is_finite() && m.t_k >= 0.0) {
            return Err(format!("method: t_k {} must be >= 0", m.t_k));
        }
        if m.unseen_every < 2 {
            return Err(format!("method: unseen_every {} must be at least 2 (some classes must be seen)", m.unseen_every));
        }
        if m.questions > 312 {
            return Err(format!("method: questions {} exceeds the 312 attributes", m.questions));
        }
        if !(m.user_noise.is_finite() && (0.0..=1.0).contains(&m.user_noise)) || !(m.floor.is_finite() && (0.0..0.5).contains(&m.floor)) {
            return Err(format!("method: user_noise {} in [0, 1] and floor {} in [0, 0.5)", m.user_noise, m.floor));
        }
        m.kerl.validate()?;
        m.geo.validate()?;
        if self.model.hidden > 8192 {
            return Err(format!("model: hidden {} must be at most 8192", self.model.hidden));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipes_of_table3_parse_and_name_their_method_file() {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut n = 0;
        for e in std::fs::read_dir(ws.join("recipes/table3")).expect("recipes/table3") {
            let p = e.expect("entry").path();
            let text = std::fs::read_to_string(&p).expect("read");
            let r = ExternalRecipe::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(text.contains(r.method.name.file()), "{} names its method file", p.display());
            let file = std::fs::read_to_string(ws.join(r.method.name.file())).expect("method file");
            let name = p.file_name().and_then(|s| s.to_str()).expect("utf8");
            assert!(file.contains(&format!("recipes/table3/{name}")), "{} names {name}", r.method.name.file());
            assert_eq!(ExternalRecipe::parse(&r.to_toml()).expect("round trip"), r);
            n += 1;
        }
        assert!(n >= 9, "{n} recipes");
    }

    #[test]
    fn bad_values_are_refused_with_the_field_named() {
        let base = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/table3/peer-learning.toml")).expect("recipe");
        for (from, to, field) in
            [("epochs = ", "epochs = 0 #", "epochs"), ("lr = ", "lr = -1.0 #", "lr"), ("rate = ", "rate = 1.5 #", "rate"), ("t_k = ", "t_k = -2.0 #", "t_k")]
        {
            let bad = base.replacen(from, to, 1);
            let e = ExternalRecipe::parse(&bad).expect_err(field);
            assert!(e.contains(field), "{field}: {e}");
        }
        let noisy_sje = "[method]\nname = \"sje\"\n[noise]\nkind = \"pair\"\nrate = 0.2\n[model]\nbackbone = \"efficientnet-lite0\"\n[data]\nformat = \"cub\"\nresize = 256\ncrop = 224\n[train]\nepochs = 1\nbatch_size = 8\nlr = 0.001\nviews = 1\n[report]\ntable = \"table3\"\nmethod = \"SJE\"\ndataset = \"CUB-200-2011\"\n";
        assert!(ExternalRecipe::parse(noisy_sje).expect_err("noise on sje").contains("clean labels"));
        assert!(ExternalRecipe::parse(&noisy_sje.replace("rate = 0.2", "rate = 0.0")).is_ok());
    }
}
