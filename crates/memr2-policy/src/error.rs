//! The error type of the policy crate: configs, weight files and checkpoints.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while reading configs, weights or checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file the model needs does not exist.
    #[error("missing file {path}")]
    MissingFile {
        /// The path that was looked for.
        path: PathBuf,
    },
    /// A file exists but could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config or shard index) is not valid for its schema.
    #[error("malformed JSON in {path}")]
    Json {
        /// The file concerned.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The model configuration is inconsistent (for example heads that do not divide the width).
    #[error("invalid model config: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// A weight file could not be parsed (truncated, corrupt, unsupported dtype).
    #[error("corrupt weight file {path}")]
    CorruptWeights {
        /// The file concerned.
        path: PathBuf,
        /// What the reader reported.
        #[source]
        source: burn::store::SafetensorsStoreError,
    },
    /// A checkpoint file does not carry the metadata this crate writes.
    #[error("{path} is not a memr2 policy checkpoint: {reason}")]
    NotACheckpoint {
        /// The file concerned.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// The model expects a tensor that no weight file provides.
    #[error("tensor {name} is missing from the weights in {path}")]
    MissingTensor {
        /// The tensor's path in the model (`layers.0.self_attn.q_proj.weight`).
        name: String,
        /// The file or directory that was loaded.
        path: PathBuf,
    },
    /// A tensor exists but its shape differs from the model's.
    #[error("tensor {name} has shape {found:?} in {path}, the model expects {expected:?}")]
    ShapeMismatch {
        /// The tensor's path in the model.
        name: String,
        /// The file or directory that was loaded.
        path: PathBuf,
        /// Shape the model expects (burn layout).
        expected: Vec<usize>,
        /// Shape found in the file (after layout conversion).
        found: Vec<usize>,
    },
    /// A tensor could not be read or converted.
    #[error("cannot load tensor {name} from {path}: {reason}")]
    BadTensor {
        /// The tensor's path in the model.
        name: String,
        /// The file or directory that was loaded.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl PolicyError {
    /// Classifies an IO error on `path`: not-found becomes [`PolicyError::MissingFile`].
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            Self::MissingFile {
                path: path.to_path_buf(),
            }
        } else {
            Self::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}
