//! Fine-tuning and evaluation: recipes, the training loop with exact resume, schedules,
//! gradient clipping, evaluation with test-time augmentation, and run folders.
//!
//! Generic over burn's `AutodiffBackend`; the binary chooses the backend.

pub mod clip;
pub mod error;
pub mod eval;
pub mod frozen_cache;
pub mod recipe;
pub mod schedule;
pub mod trainer;

pub use error::TrainError;
pub use fgia_core::record::{EpochMetrics, read_metrics};
pub use recipe::Recipe;
pub use trainer::{
    BURN_VERSION, Outcome, RunContext, StepRates, StepStats, Trained, append_metrics, build_network, load_dataset, load_trained, save_module, sgd,
    train_and_evaluate, train_step,
};
