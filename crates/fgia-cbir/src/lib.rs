//! Content-based fine-grained image retrieval (the survey's §6.1, Table 5).
//!
//! The pipeline follows PyRetri's decomposition: an **extractor** (a pretrained backbone's
//! feature maps, [`extract`]), an **aggregator** (SCDA, [`scda`], or a trained embedding head,
//! [`model`]), **post-processing** (ℓ2, PCA-whitening learned on the training classes,
//! [`pca`]), **search** (exact with blocked matrix products, or HNSW, [`search`], [`hnsw`]; a
//! persisted [`index`]), optional **re-ranking** (query expansion, k-reciprocal, [`rerank`])
//! and the **evaluator** (Recall@K as the survey defines it, and mAP).
//!
//! Methods are one registry ([`Method`], an enum with exhaustive matches): the survey's SCDA,
//! CRL-WSL, DGCRL and piecewise cross-entropy, and the metric-learning baselines they are
//! compared with. One file per method: [`scda`] and [`losses`].

pub mod extract;
pub mod hnsw;
pub mod index;
pub mod losses;
pub mod model;
pub mod pca;
pub mod recipe;
pub mod report_html;
pub mod rerank;
pub mod run;
pub mod scda;
pub mod search;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use recipe::CbirRecipe;
pub use run::run_recipe;

/// Every retrieval method of the crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// SCDA (Wei et al., TIP 2017): unsupervised.
    Scda,
    /// Centralized ranking loss with weakly supervised localization (Zheng et al., IJCAI 2018).
    CrlWsl,
    /// Decorrelated global-aware centralized loss with normalize-scale layer (Zheng et al.,
    /// AAAI 2019).
    Dgcrl,
    /// Piecewise cross-entropy (Zeng et al., IVC 2020).
    PiecewiseCe,
    /// Contrastive loss (Hadsell et al., CVPR 2006).
    Contrastive,
    /// Triplet loss with semi-hard mining (Schroff et al., CVPR 2015).
    Triplet,
    /// Multi-similarity loss (Wang et al., CVPR 2019).
    MultiSimilarity,
    /// Proxy-anchor loss (Kim et al., CVPR 2020).
    ProxyAnchor,
}

impl Method {
    /// Every method.
    pub const ALL: [Method; 8] =
        [Method::Scda, Method::CrlWsl, Method::Dgcrl, Method::PiecewiseCe, Method::Contrastive, Method::Triplet, Method::MultiSimilarity, Method::ProxyAnchor];

    /// Registry and command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Scda => "scda",
            Method::CrlWsl => "crl-wsl",
            Method::Dgcrl => "dgcrl",
            Method::PiecewiseCe => "piecewise-ce",
            Method::Contrastive => "contrastive",
            Method::Triplet => "triplet",
            Method::MultiSimilarity => "multi-similarity",
            Method::ProxyAnchor => "proxy-anchor",
        }
    }

    /// Name as in the survey's Table 5 (or the method's paper for the baselines).
    pub fn survey_name(self) -> &'static str {
        match self {
            Method::Scda => "SCDA",
            Method::CrlWsl => "CRL-WSL",
            Method::Dgcrl => "DGCRL",
            Method::PiecewiseCe => "Zeng et al.",
            Method::Contrastive => "Contrastive",
            Method::Triplet => "Triplet (semi-hard)",
            Method::MultiSimilarity => "Multi-Similarity",
            Method::ProxyAnchor => "Proxy-Anchor",
        }
    }

    /// Whether the method trains an embedding.
    pub fn is_trained(self) -> bool {
        !matches!(self, Method::Scda)
    }

    /// Whether the loss learns one weight vector per training class.
    pub fn has_class_weights(self) -> bool {
        match self {
            Method::Dgcrl | Method::PiecewiseCe | Method::ProxyAnchor => true,
            Method::Scda | Method::CrlWsl | Method::Contrastive | Method::Triplet | Method::MultiSimilarity => false,
        }
    }

    /// How the head pools the feature map.
    pub fn pooling(self) -> model::Pooling {
        match self {
            Method::CrlWsl => model::Pooling::Localized,
            Method::Scda | Method::Dgcrl | Method::PiecewiseCe | Method::Contrastive | Method::Triplet | Method::MultiSimilarity | Method::ProxyAnchor => {
                model::Pooling::AvgMax
            }
        }
    }

    /// Whether its equations are reconstructed from the paper's abstract and the survey rather
    /// than from the paper's text (shown beside the number in the report).
    pub fn equation_reconstructed(self) -> bool {
        match self {
            Method::CrlWsl | Method::Dgcrl | Method::PiecewiseCe => true,
            Method::Scda | Method::Contrastive | Method::Triplet | Method::MultiSimilarity | Method::ProxyAnchor => false,
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
            format!("unknown retrieval method '{s}' (known: {})", names.join(", "))
        })
    }
}
