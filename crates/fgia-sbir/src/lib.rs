//! Fine-grained sketch-based image retrieval (§6.2 of the survey, Table 6).
//!
//! Two methods on the QMUL-Shoe V1 and QMUL-Chair V1 sets (`fgia_core::datasets::read_qmul`):
//! [`Method::TripletSketchANet`] (Yu et al., "Sketch Me That Shoe", CVPR 2016) and
//! [`Method::Dssa`] (Song et al., ICCV 2017). Modules:
//! - [`views`]: the sketch and photo views, random 225 crops with flips for training and the
//!   ten fixed views at test, through a frozen ImageNet trunk, cached once per set;
//! - [`triplet_sketch_a_net`] and [`dssa`]: one file per method, the layers they train;
//! - [`loss`]: the triplet loss on an energy (squared Euclidean, or DSSA's HOLEF);
//! - [`run`]: training on the one engine, the ten-view evaluation, and the record;
//! - [`index`]: a photo index of a trained run, ranked for sketch queries.
//!
//! Recipes: `recipes/table6/*.toml`.

pub mod dssa;
pub mod index;
pub mod loss;
pub mod recipe;
pub mod run;
pub mod triplet_sketch_a_net;
pub mod views;

use serde::{Deserialize, Serialize};

/// The registry of sketch-based retrieval methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Triplet Sketch-a-Net (Yu et al., CVPR 2016): `triplet_sketch_a_net.rs`.
    TripletSketchANet,
    /// Deep spatial-semantic attention (Song et al., ICCV 2017): `dssa.rs`.
    Dssa,
}

/// The energy of the triplet loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    /// Squared Euclidean distance (both papers; the only loss of the authors' releases).
    #[default]
    Triplet,
    /// DSSA's higher-order learnable energy function (`dssa::Holef`).
    Holef,
}

impl Loss {
    /// Name in records and reports.
    pub fn describe(self) -> &'static str {
        match self {
            Loss::Triplet => "triplet loss on squared Euclidean distances",
            Loss::Holef => "triplet loss on HOLEF (learned W, from the identity)",
        }
    }
}

impl Method {
    /// Name in reports.
    pub fn display_name(self) -> &'static str {
        match self {
            Method::TripletSketchANet => "Triplet Sketch-a-Net",
            Method::Dssa => "DSSA",
        }
    }

    /// The method's file, which its recipes name.
    pub fn file(self) -> &'static str {
        match self {
            Method::TripletSketchANet => "crates/fgia-sbir/src/triplet_sketch_a_net.rs",
            Method::Dssa => "crates/fgia-sbir/src/dssa.rs",
        }
    }

    /// Whether the method reads the conv5 maps (else the pooled trunk features).
    pub fn reads_maps(self) -> bool {
        match self {
            Method::TripletSketchANet => false,
            Method::Dssa => true,
        }
    }

    /// The layers it trains over a frozen trunk.
    pub fn trained_layers(self) -> &'static str {
        match self {
            Method::TripletSketchANet => "fc6, fc7",
            Method::Dssa => "attention (two 1x1 convolutions), fc6, fc7",
        }
    }

    /// What this implementation does not reproduce of the paper, recorded with every result.
    pub fn deviations(self) -> Vec<String> {
        let trunk = "the authors' staged Sketch-a-Net pretraining (sketch classification on TU-Berlin, then edge maps of ImageNet) is not available: an ImageNet-pretrained trunk stands in for it, with grey input replicated to three channels".to_string();
        match self {
            Method::TripletSketchANet => vec![
                trunk,
                "with the trunk frozen, fc6 and fc7 train over it, as the authors' release trains only them; the trunk's pooled features feed fc6 instead of Sketch-a-Net's conv5, and fc6 / fc7 have no dropout".into(),
            ],
            Method::Dssa => vec![
                trunk,
                "with the trunk frozen, the attention, fc6 and fc7 train over its conv5 stand-in (EfficientNet-Lite0: the 320-channel 8x8 map before the head convolution) instead of Sketch-a-Net's 256-channel 7x7 conv5; the release also trains conv5".into(),
                "the attention mask is the release's softmax variant; HOLEF, absent from the release, follows the paper's energy with a ridge penalty toward W = I (the weight decay) as the regulariser".into(),
            ],
        }
    }
}
