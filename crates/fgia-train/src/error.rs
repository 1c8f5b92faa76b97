//! Errors of training and evaluation.

use std::path::{Path, PathBuf};

/// What can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Dataset or image problem.
    #[error(transparent)]
    Data(#[from] fgia_core::DataError),
    /// Network construction or weight import problem.
    #[error(transparent)]
    Nn(#[from] fgia_nn::NnError),
    /// File system problem.
    #[error("{path}: {source}")]
    Io {
        /// Path concerned.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Invalid recipe.
    #[error("{path}: invalid recipe: {message}")]
    Recipe {
        /// Recipe file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The loss or the gradient norm became NaN or infinite: the run stops before the update
    /// rather than continue with garbage.
    #[error(
        "{what} is {value} at epoch {epoch}, step {step}: stopping before the update (lower the learning rate or enable clip_grad_norm; the last good checkpoint is kept)"
    )]
    NonFinite {
        /// 1-based epoch.
        epoch: usize,
        /// 0-based step in the epoch.
        step: usize,
        /// What was not finite: `loss` or `gradient norm`.
        what: &'static str,
        /// The value.
        value: f64,
    },
    /// The run folder exists and `--resume` was not asked for.
    #[error("{0}: run folder exists; runs are never overwritten (use --resume to continue it, or choose another folder)")]
    RunExists(PathBuf),
    /// A checkpoint could not be written or read.
    #[error("{path}: checkpoint: {message}")]
    Checkpoint {
        /// Checkpoint path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A file a run wrote for later use (an index of embeddings) is not what it claims to be.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

impl TrainError {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        TrainError::Io { path: path.as_ref().to_path_buf(), source }
    }
}
