//! Errors of model construction and weight import.

use std::path::PathBuf;

/// What can go wrong while building a network or importing its weights.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// The checkpoint could not be read.
    #[error("{path}: cannot read weights: {message}")]
    Read {
        /// Checkpoint file.
        path: PathBuf,
        /// Reader message.
        message: String,
    },
    /// Keys did not line up with the network after the remap rules.
    #[error("{path}: checkpoint does not match {network}:\n{details}")]
    Mismatch {
        /// Checkpoint file.
        path: PathBuf,
        /// Network name.
        network: String,
        /// Missing keys, unexpected keys and shape errors, one per line.
        details: String,
    },
    /// A Hugging Face hub file is not in the local cache.
    #[error("{repo}/{file} is not in the hub cache at {cache} (fetch it with `cargo xtask weights fetch {hint}`)")]
    NotCached {
        /// Repository id.
        repo: String,
        /// File in the repository.
        file: String,
        /// Cache folder searched.
        cache: PathBuf,
        /// Name to pass to `weights fetch`.
        hint: String,
    },
    /// An unknown name or invalid setting.
    #[error("{0}")]
    Invalid(String),
}
