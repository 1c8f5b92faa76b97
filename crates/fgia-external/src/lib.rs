//! Fine-grained recognition with external information: §5.3 of Wei et al. and its Table 3.
//!
//! One file per method, headed by its paper, its equations and its deviations:
//!
//! - [`noise`]: a label-noise layer for any dataset (symmetric, and pair flips inside confusable
//!   groups), the controlled stand-in for noisy web labels (§5.3.1);
//! - [`peer`]: the sample-selection rules of Peer-learning (Sun et al. 2021) and of the
//!   co-teaching baseline (Han et al. 2018), with the rising drop rate;
//! - [`attribute_embedding`]: the attribute compatibility `θ(x)ᵀ W φ(y)` with the symmetric
//!   structured joint-embedding loss (Akata et al. 2015; Reed et al. 2016), as a classifier and
//!   zero-shot;
//! - [`geo_prior`]: the presence-only geographical prior (Mac Aodha et al. 2019): the network,
//!   its loss with background points on the sphere, and its product with an image classifier;
//! - [`hitl`]: humans in the loop, the 20-questions game (Branson et al. 2010; Wah et al. 2011):
//!   a vision posterior refined by a user's answers about attributes, each question chosen for
//!   its expected information gain.
//!
//! The crate depends on `fgia-core` (readers, records) and, as its methods train, on `fgia-nn`
//! and `fgia-train`; never on another paradigm crate.

pub mod attribute_embedding;
pub mod geo_prior;
pub mod hitl;
pub mod noise;
pub mod peer;
