//! Errors of the data layer. Every variant that comes from a file names the file, and the line
//! where there is one, so a user can open the file at the fault.

use std::path::{Path, PathBuf};

/// Result alias of the data layer.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// What can go wrong while reading datasets, images and records.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// File concerned.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A text annotation line does not have the expected form.
    #[error("{path}:{line}: {message}")]
    Malformed {
        /// Annotation file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was expected.
        message: String,
    },
    /// An id used in one annotation file is missing from another.
    #[error("{path}:{line}: id {id} is not listed in {other}")]
    UnknownId {
        /// File that uses the id.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The id.
        id: String,
        /// File that should define it.
        other: PathBuf,
    },
    /// An id defined in one file is absent from another that must cover every id.
    #[error("{path}: id {id} (defined in {defined_in}) has no entry")]
    MissingEntry {
        /// File lacking the entry.
        path: PathBuf,
        /// The id.
        id: String,
        /// File defining the id.
        defined_in: PathBuf,
    },
    /// A structured file (MAT, XML, JSON, TOML) could not be parsed.
    #[error("{path}: {message}")]
    Format {
        /// File concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An image could not be decoded.
    #[error("{path}: cannot decode image: {message}")]
    Image {
        /// Image file.
        path: PathBuf,
        /// Decoder message.
        message: String,
    },
    /// A required file or folder is absent.
    #[error("{path}: not found ({what})")]
    NotFound {
        /// Path that was looked for.
        path: PathBuf,
        /// What it should have been.
        what: String,
    },
    /// A caller-supplied argument is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A run folder is held by another process.
    #[error("{0}: another process is writing this run folder (its lock is held); wait for it or choose another folder")]
    Busy(std::path::PathBuf),
}

impl DataError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io { path: path.as_ref().to_path_buf(), source }
    }

    /// A malformed-line error.
    pub fn malformed(path: impl AsRef<Path>, line: usize, message: impl Into<String>) -> Self {
        Self::Malformed { path: path.as_ref().to_path_buf(), line, message: message.into() }
    }

    /// A parse error of a structured file.
    pub fn format(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Self::Format { path: path.as_ref().to_path_buf(), message: message.into() }
    }
}
