//! Fine-grained recognition with external information: §5.3 of Wei et al. and its Table 3.
//!
//! One file per method, headed by its paper, its equations and its deviations:
//!
//! - [`noise`]: a label-noise layer for any dataset (symmetric, and pair flips inside confusable
//!   groups), the controlled stand-in for noisy web labels (§5.3.1);
//! - [`peer`]: the sample-selection rules of Peer-learning (Sun et al. 2021) and of the
//!   co-teaching baseline (Han et al. 2018), with the rising drop rate, and the heads that train
//!   with them (and with plain cross-entropy) on the engine;
//! - [`attribute_embedding`]: the attribute compatibility `θ(x)ᵀ W φ(y)` with the symmetric
//!   structured joint-embedding loss (Akata et al. 2015; Reed et al. 2016), as a classifier and
//!   zero-shot;
//! - [`geo_prior`]: the presence-only geographical prior (Mac Aodha et al. 2019): the network,
//!   its loss with background points on the sphere, and its product with an image classifier;
//! - [`kerl`]: knowledge-embedded representation learning (Chen et al. 2018): a gated graph
//!   network over the classes and CUB's attributes, fed by the image, whose node features gate
//!   the image's regions;
//! - [`hitl`]: humans in the loop, the 20-questions game (Branson et al. 2010; Wah et al. 2011):
//!   a vision posterior refined by a user's answers about attributes, each question chosen for
//!   its expected information gain.
//!
//! [`Method`] is the registry of the methods that `fgia external` runs from a recipe
//! ([`recipe`]) on the frozen backbone's pooled features ([`run`]).
//!
//! The crate depends on `fgia-core` (readers, records) and, as its methods train, on `fgia-nn`
//! and `fgia-train`; never on another paradigm crate.

use serde::{Deserialize, Serialize};

pub mod attribute_embedding;
pub mod geo_prior;
pub mod hitl;
pub mod kerl;
pub mod noise;
pub mod peer;
pub mod recipe;
pub mod run;

/// The methods a Table 3 recipe names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Plain cross-entropy on (noisy) labels: the baseline of §5.3.1.
    CrossEntropy,
    /// Co-teaching (Han et al. 2018).
    CoTeaching,
    /// Peer-learning (Sun et al. 2021).
    PeerLearning,
    /// Attribute embedding with the symmetric SJE loss, as a classifier over every class.
    Sje,
    /// The same, zero-shot on classes never seen in training.
    SjeZeroShot,
    /// The 20-questions game on a classifier's posteriors.
    TwentyQuestions,
    /// KERL: the knowledge graph of classes and attributes guiding the image's regions.
    Kerl,
    /// The presence-only geo prior times an image classifier, on synthetic locations.
    GeoPrior,
}

impl Method {
    /// Every method.
    pub const ALL: [Method; 8] = [
        Method::CrossEntropy,
        Method::CoTeaching,
        Method::PeerLearning,
        Method::Sje,
        Method::SjeZeroShot,
        Method::TwentyQuestions,
        Method::Kerl,
        Method::GeoPrior,
    ];

    /// The recipe name.
    pub fn key(self) -> &'static str {
        match self {
            Method::CrossEntropy => "cross-entropy",
            Method::CoTeaching => "co-teaching",
            Method::PeerLearning => "peer-learning",
            Method::Sje => "sje",
            Method::SjeZeroShot => "sje-zero-shot",
            Method::TwentyQuestions => "twenty-questions",
            Method::Kerl => "kerl",
            Method::GeoPrior => "geo-prior",
        }
    }

    /// The method's file, relative to the workspace.
    pub fn file(self) -> &'static str {
        match self {
            Method::CrossEntropy | Method::CoTeaching | Method::PeerLearning => "crates/fgia-external/src/peer.rs",
            Method::Sje | Method::SjeZeroShot => "crates/fgia-external/src/attribute_embedding.rs",
            Method::TwentyQuestions => "crates/fgia-external/src/hitl.rs",
            Method::Kerl => "crates/fgia-external/src/kerl.rs",
            Method::GeoPrior => "crates/fgia-external/src/geo_prior.rs",
        }
    }

    /// The survey section.
    pub fn section(self) -> &'static str {
        match self {
            Method::CrossEntropy | Method::CoTeaching | Method::PeerLearning => "5.3.1",
            Method::Sje | Method::SjeZeroShot | Method::Kerl => "5.3.2",
            Method::TwentyQuestions => "5.3.3",
            // The survey discusses location and time priors in §5.3 without a subsection.
            Method::GeoPrior => "5.3",
        }
    }

    /// Whether the method trains on labels that a `[noise]` section may corrupt.
    pub fn reads_noisy_labels(self) -> bool {
        match self {
            Method::CrossEntropy | Method::CoTeaching | Method::PeerLearning => true,
            Method::Sje | Method::SjeZeroShot | Method::TwentyQuestions | Method::Kerl | Method::GeoPrior => false,
        }
    }

    /// The deviations every run of the method has (its file's header says why).
    pub fn deviations(self) -> &'static [&'static str] {
        match self {
            Method::CrossEntropy | Method::CoTeaching | Method::PeerLearning => &[
                "heads on the frozen backbone's pooled feature instead of fine-tuned B-CNNs (VGG-16)",
                "synthetic label noise on clean labels stands in for crawled web images (WebFG-496 is not available offline)",
            ],
            Method::Sje | Method::SjeZeroShot => &[
                "CUB's 312 class-level attribute percentages stand in for the paper's sentences (one vector per class)",
                "θ(x) is the frozen ImageNet backbone's pooled feature, not a trained image encoder",
            ],
            Method::TwentyQuestions => &[
                "binary answers without the user's certainty, class-level attribute statistics as the user model, no part-click questions",
                "the vision posterior is a cross-entropy head on the frozen backbone's pooled feature",
            ],
            Method::Kerl => &[
                "the graph and the gates run on the frozen EfficientNet-Lite0's last map (7x7 at 224 px), reduced by a learned 1x1 projection, instead of a fine-tuned VGG-16's conv5_3 at 448 px",
                "the score vector that initialises the graph comes from a linear head trained jointly on the pooled feature, not from a separately pre-trained classifier",
            ],
            Method::GeoPrior => &[
                "synthetic locations: each class is given a range on the globe and each image a location drawn from its class's range (no offline benchmark has real locations)",
                "the image classifier is a cross-entropy head on the frozen backbone's pooled feature",
            ],
        }
    }
}
