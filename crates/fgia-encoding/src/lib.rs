//! End-to-end feature encoding (the survey's §5.2): high-order pooling layers that turn a
//! backbone's feature map `[B, C, h, w]` into an orderless descriptor for a classifier
//! ([`pooling`]), fine-grained losses and the "other" encodings DCL and PMG ([`methods`]), the
//! registry of the Table 2 methods ([`Method`]), their recipes ([`recipe`]) and runs ([`run`]).
//!
//! One file per method, each headed by its paper, equations and deviations. Every layer works on
//! any backbone's feature map and is generic over burn's `Backend` (gradients through burn's
//! autodiff; MPN-COV's eigendecomposition through an exact linear surrogate, see
//! [`pooling::mpn_cov`]; Tensor Sketch through an exact scatter of the bilinear matrix, see
//! [`pooling::tensor_sketch`]).

pub mod methods;
pub mod pooling;
pub mod recipe;
pub mod run;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use recipe::EncodingRecipe;
pub use run::run_recipe;

/// The survey's §5.2 subsections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// §5.2.1 high-order feature interactions.
    HighOrder,
    /// §5.2.2 specific loss functions.
    Loss,
    /// §5.2.3 other encodings.
    Other,
}

impl Family {
    /// Survey section number.
    pub fn section(self) -> &'static str {
        match self {
            Family::HighOrder => "5.2.1",
            Family::Loss => "5.2.2",
            Family::Other => "5.2.3",
        }
    }
}

/// A pixel-level edit of training images whose maps are cached beside the original ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Edit {
    /// DCL's region shuffling: `regions` per side, neighbourhood `k`.
    Destruct {
        /// Regions per side.
        regions: usize,
        /// Neighbourhood.
        k: usize,
    },
    /// PMG's jigsaw with `n x n` patches.
    Jigsaw(usize),
}

/// The Table 2 methods of this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// B-CNN (Lin et al., ICCV 2015).
    Bcnn,
    /// Compact bilinear pooling, Tensor Sketch (Gao et al., CVPR 2016).
    CbpTs,
    /// Compact bilinear pooling, Random Maclaurin (Gao et al., CVPR 2016).
    CbpRm,
    /// Low-rank bilinear pooling (Kong and Fowlkes, CVPR 2017).
    Lrbp,
    /// Hierarchical bilinear pooling (Yu et al., ECCV 2018).
    Hbp,
    /// Kernel pooling (Cui et al., CVPR 2017).
    KernelPooling,
    /// MPN-COV (Li et al., ICCV 2017).
    MpnCov,
    /// iSQRT-COV (Li et al., CVPR 2018).
    IsqrtCov,
    /// Grouped bilinear, DBTNet (Zheng et al., NeurIPS 2019).
    GroupedBilinear,
    /// Maximum-entropy loss (Dubey et al., NeurIPS 2018).
    Maxent,
    /// Pairwise confusion (Dubey et al., ECCV 2018).
    PairwiseConfusion,
    /// Mutual-channel loss (Chang et al., TIP 2020).
    McLoss,
    /// Attentive pairwise interaction (Zhuang et al., AAAI 2020).
    ApiNet,
    /// Channel interaction network (Gao et al., AAAI 2020).
    Cin,
    /// Gradient-boosting loss with the diversification block (Sun et al., AAAI 2020).
    GbLoss,
    /// Destruction and construction learning (Chen et al., CVPR 2019).
    Dcl,
    /// Progressive multi-granularity training (Du et al., ECCV 2020).
    Pmg,
}

impl Method {
    /// Every method, in the survey's order.
    pub const ALL: [Method; 17] = [
        Method::Bcnn,
        Method::CbpTs,
        Method::CbpRm,
        Method::KernelPooling,
        Method::Lrbp,
        Method::MpnCov,
        Method::IsqrtCov,
        Method::Hbp,
        Method::GroupedBilinear,
        Method::Maxent,
        Method::PairwiseConfusion,
        Method::Cin,
        Method::GbLoss,
        Method::ApiNet,
        Method::McLoss,
        Method::Dcl,
        Method::Pmg,
    ];

    /// Registry and command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Bcnn => "bcnn",
            Method::CbpTs => "cbp-ts",
            Method::CbpRm => "cbp-rm",
            Method::Lrbp => "lrbp",
            Method::Hbp => "hbp",
            Method::KernelPooling => "kernel-pooling",
            Method::MpnCov => "mpn-cov",
            Method::IsqrtCov => "isqrt-cov",
            Method::GroupedBilinear => "grouped-bilinear",
            Method::Maxent => "maxent",
            Method::PairwiseConfusion => "pairwise-confusion",
            Method::McLoss => "mc-loss",
            Method::ApiNet => "api-net",
            Method::Cin => "cin",
            Method::GbLoss => "gb-loss",
            Method::Dcl => "dcl",
            Method::Pmg => "pmg",
        }
    }

    /// The method's name in the survey's Table 2 (the reference CSV's `method` column).
    pub fn survey_name(self) -> &'static str {
        match self {
            Method::Bcnn => "B-CNN",
            Method::CbpTs => "CBP (Tensor Sketch)",
            Method::CbpRm => "CBP (Random Maclaurin)",
            Method::Lrbp => "LRBP",
            Method::Hbp => "HBP",
            Method::KernelPooling => "Kernel Pooling (KP)",
            Method::MpnCov => "MPN-COV",
            Method::IsqrtCov => "iSQRT-COV (fast MPN-COV)",
            Method::GroupedBilinear => "DBTNet",
            Method::Maxent => "MaxEnt",
            Method::PairwiseConfusion => "Pairwise Confusion (PC)",
            Method::McLoss => "MC-Loss",
            Method::ApiNet => "API-Net",
            Method::Cin => "CIN",
            Method::GbLoss => "Sun et al. (DB + GB loss)",
            Method::Dcl => "DCL",
            Method::Pmg => "PMG",
        }
    }

    /// Survey subsection.
    pub fn family(self) -> Family {
        match self {
            Method::Bcnn
            | Method::CbpTs
            | Method::CbpRm
            | Method::Lrbp
            | Method::Hbp
            | Method::KernelPooling
            | Method::MpnCov
            | Method::IsqrtCov
            | Method::GroupedBilinear => Family::HighOrder,
            Method::Maxent | Method::PairwiseConfusion | Method::McLoss | Method::ApiNet | Method::Cin | Method::GbLoss => Family::Loss,
            Method::Dcl | Method::Pmg => Family::Other,
        }
    }

    /// Whether the method fine-tunes the backbone's last stage (its idea needs the backbone in
    /// the loop); the others train their own layers on the frozen map.
    pub fn fine_tunes_last_stage(self) -> bool {
        match self {
            Method::McLoss | Method::ApiNet | Method::Dcl | Method::Pmg => true,
            Method::Bcnn
            | Method::CbpTs
            | Method::CbpRm
            | Method::Lrbp
            | Method::Hbp
            | Method::KernelPooling
            | Method::MpnCov
            | Method::IsqrtCov
            | Method::GroupedBilinear
            | Method::Maxent
            | Method::PairwiseConfusion
            | Method::Cin
            | Method::GbLoss => false,
        }
    }

    /// Whether batches are class-balanced (`P` classes x `K` images): the pair-based methods.
    pub fn class_balanced_batches(self) -> bool {
        match self {
            Method::ApiNet | Method::Cin => true,
            Method::Bcnn
            | Method::CbpTs
            | Method::CbpRm
            | Method::Lrbp
            | Method::Hbp
            | Method::KernelPooling
            | Method::MpnCov
            | Method::IsqrtCov
            | Method::GroupedBilinear
            | Method::Maxent
            | Method::PairwiseConfusion
            | Method::McLoss
            | Method::GbLoss
            | Method::Dcl
            | Method::Pmg => false,
        }
    }

    /// Stages whose maps of the unedited view the method reads, for feature stage `f` (the
    /// stage whose output is the "last feature map") and the HBP layers `hbp`.
    pub fn taps(self, f: usize, hbp: &[usize]) -> Vec<usize> {
        match self {
            Method::Hbp => hbp.to_vec(),
            Method::McLoss | Method::ApiNet | Method::Dcl => vec![f - 1],
            Method::Pmg => vec![f - 2, f - 1],
            Method::Bcnn
            | Method::CbpTs
            | Method::CbpRm
            | Method::Lrbp
            | Method::KernelPooling
            | Method::MpnCov
            | Method::IsqrtCov
            | Method::GroupedBilinear
            | Method::Maxent
            | Method::PairwiseConfusion
            | Method::Cin
            | Method::GbLoss => vec![f],
        }
    }

    /// The method's file, relative to `crates/fgia-encoding/src/` (its recipe is
    /// `recipes/table2/<name>.toml`; each names the other).
    pub fn source_file(self) -> &'static str {
        match self {
            Method::Bcnn => "pooling/bcnn.rs",
            Method::CbpTs => "pooling/tensor_sketch.rs",
            Method::CbpRm => "pooling/compact_bilinear.rs",
            Method::KernelPooling => "pooling/kernel_pooling.rs",
            Method::Lrbp => "pooling/lrbp.rs",
            Method::MpnCov => "pooling/mpn_cov.rs",
            Method::IsqrtCov => "pooling/isqrt_cov.rs",
            Method::Hbp => "pooling/hbp.rs",
            Method::GroupedBilinear => "pooling/grouped_bilinear.rs",
            Method::Maxent => "methods/maxent.rs",
            Method::PairwiseConfusion => "methods/pairwise_confusion.rs",
            Method::Cin => "methods/cin.rs",
            Method::GbLoss => "methods/gb_loss.rs",
            Method::ApiNet => "methods/api_net.rs",
            Method::McLoss => "methods/mc_loss.rs",
            Method::Dcl => "methods/dcl.rs",
            Method::Pmg => "methods/pmg.rs",
        }
    }

    /// How this implementation departs from the paper, beyond the recipe's protocol; every run's
    /// record carries these.
    pub fn deviations(self) -> &'static [&'static str] {
        match self {
            Method::Bcnn | Method::CbpTs | Method::CbpRm | Method::MpnCov | Method::IsqrtCov => &[],
            Method::KernelPooling => &[
                "kernel pooling: orders k >= 3 are computed on the detached feature map (burn 0.21 autodiff has no FFT backward): no gradient flows from them into the backbone",
                "kernel pooling: alpha initialised to the RBF Taylor coefficients with gamma = 1 / mean squared norm of training-image features",
            ],
            Method::Lrbp => &["LRBP: U and V initialised from N(0, 0.01), not from the eigenvectors of a trained full bilinear classifier"],
            Method::Hbp => &[
                "HBP: whole backbone stages as the three layers (not relu5_1..5_3); maps of different resolutions average-pooled to the smallest after projection",
            ],
            Method::GroupedBilinear => &[
                "DBTNet: one grouped bilinear pooling layer on the last map, not the transformation inserted in every block of the ResNet",
                "DBTNet: the semantic grouping loss is a pair-count-normalised correlation contrast, not the authors' squared error to a block-diagonal target on the uncentred cosine after ReLU",
            ],
            Method::Maxent | Method::Cin | Method::GbLoss => &[],
            Method::PairwiseConfusion => &[
                "pairwise confusion: the authors' released PairwiseConfusion (first half of the batch paired with the second, unsquared norms), not the paper's equation; an odd batch's last image is left out of the pairs and the divisor",
            ],
            Method::McLoss => &[
                "MC-Loss: the K*xi-channel map is a new 1x1 convolution with ReLU on the last stage (the authors widen the last convolutions); linear classifier on the average-pooled map",
            ],
            Method::ApiNet => &["API-Net: dropout of the mutual-vector MLP omitted"],
            Method::Dcl => &[
                "DCL: the adversarial branch is a 2-way classifier (original vs destructed) on the pooled feature; shuffling follows the paper's formula, not the authors' sliding window",
            ],
            Method::Pmg => &["PMG: classifiers are Linear-ELU-Linear without the batch norms; block width from the recipe"],
        }
    }

    /// Edited views the method trains on, with the stages cached for each.
    pub fn edits(self, f: usize, params: &recipe::Params) -> Vec<(Edit, Vec<usize>)> {
        match self {
            Method::Dcl => vec![(Edit::Destruct { regions: params.get("regions") as usize, k: params.get("k") as usize }, vec![f - 1])],
            Method::Pmg => vec![(Edit::Jigsaw(8), vec![f - 2]), (Edit::Jigsaw(4), vec![f - 1]), (Edit::Jigsaw(2), vec![f - 1])],
            Method::Bcnn
            | Method::CbpTs
            | Method::CbpRm
            | Method::Lrbp
            | Method::Hbp
            | Method::KernelPooling
            | Method::MpnCov
            | Method::IsqrtCov
            | Method::GroupedBilinear
            | Method::Maxent
            | Method::PairwiseConfusion
            | Method::McLoss
            | Method::ApiNet
            | Method::Cin
            | Method::GbLoss => Vec::new(),
        }
    }

    /// The method's parameters with their defaults (the papers' values where they state one);
    /// a recipe's `[method.params]` overrides them, and unknown names are an error.
    pub fn default_params(self) -> &'static [(&'static str, f64)] {
        match self {
            Method::Bcnn => &[],
            Method::CbpTs | Method::CbpRm => &[("dim", 8192.0)],
            Method::Lrbp => &[("reduced", 100.0), ("rank", 8.0)],
            Method::Hbp => &[("dim", 8192.0)],
            Method::KernelPooling => &[("dim", 4096.0), ("order", 4.0)],
            Method::MpnCov | Method::IsqrtCov => &[("reduced", 256.0)],
            Method::GroupedBilinear => &[("groups", 16.0), ("group_channels", 32.0), ("lambda", 0.1)],
            Method::Maxent => &[("gamma", 0.1)],
            Method::PairwiseConfusion => &[("lambda_per_class", 0.1)],
            Method::McLoss => &[("xi", 3.0), ("mu", 2.0), ("lambda", 20.0)],
            Method::ApiNet => &[],
            Method::Cin => &[("lambda", 1.0), ("beta", 0.5)],
            Method::GbLoss => &[("k", 15.0), ("p_peak", 0.5), ("p_patch", 0.5), ("grid", 3.0)],
            Method::Dcl => &[("regions", 7.0), ("k", 2.0)],
            Method::Pmg => &[("width", 512.0)],
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Method::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
            format!("unknown feature-encoding method '{s}' (known: {})", names.join(", "))
        })
    }
}
