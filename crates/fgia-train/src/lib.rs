//! Fine-tuning and evaluation: the one training engine ([`engine`]) every family trains
//! through, its batch sources, recipes, gradient clipping, evaluation with test-time
//! augmentation, and run folders.
//!
//! Generic over burn's `AutodiffBackend`; the binary chooses the backend.

pub mod clip;
pub mod engine;
pub mod error;
pub mod eval;
pub mod frozen_cache;
pub mod parallel;
pub mod recipe;
pub mod sources;
pub mod trainer;

pub use engine::append_metrics;
pub use error::TrainError;
pub use fgia_core::record::{EpochMetrics, read_metrics};
pub use recipe::Recipe;
pub use trainer::{BURN_VERSION, Classifier, Outcome, RunContext, Trained, build_network, engine_spec, load_dataset, load_trained, train_and_evaluate};
