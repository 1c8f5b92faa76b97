//! Fine-grained sketch-based image retrieval (§6.2 of the survey, Table 6).
//!
//! One method so far, [`Method::TripletSketchANet`] (Yu et al., "Sketch Me That Shoe", CVPR
//! 2016), on the QMUL-Shoe V1 and QMUL-Chair V1 sets (`fgia_core::datasets::read_qmul`):
//! - [`views`]: the sketch and photo views, random 225 crops with flips for training and the
//!   ten fixed views at test, through a frozen ImageNet trunk, cached once;
//! - [`model`]: the trained layers, `fc6` (512) and `fc7` (256) with ℓ2 normalisation;
//! - [`run`]: triplet training on the one engine, the ten-view evaluation, and the record.
//!
//! Recipes: `recipes/table6/*.toml`.

pub mod model;
pub mod recipe;
pub mod run;
pub mod views;

use serde::{Deserialize, Serialize};

/// The registry of sketch-based retrieval methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Triplet Sketch-a-Net (Yu et al., CVPR 2016): `model.rs`.
    TripletSketchANet,
}

impl Method {
    /// Name in reports.
    pub fn display_name(self) -> &'static str {
        match self {
            Method::TripletSketchANet => "Triplet Sketch-a-Net",
        }
    }

    /// What this implementation does not reproduce of the paper, recorded with every result.
    pub fn deviations(self) -> Vec<String> {
        match self {
            Method::TripletSketchANet => vec![
                "the authors' staged Sketch-a-Net pretraining (sketch classification on TU-Berlin, then edge maps of ImageNet) is not available: an ImageNet-pretrained trunk stands in for it, frozen, with grey input replicated to three channels".into(),
                "fc6 and fc7 train over the frozen trunk, as the authors' release trains only them; the trunk's pooled features feed fc6 instead of Sketch-a-Net's conv5, and fc6 / fc7 have no dropout".into(),
            ],
        }
    }
}
