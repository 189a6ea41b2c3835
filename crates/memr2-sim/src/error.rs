//! The error type of the simulator crate.

use std::path::PathBuf;

/// Everything that can go wrong while building or loading environments.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A data file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// A data file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file that was being written.
        path: PathBuf,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// A data file is not valid JSON (malformed or truncated).
    #[error("{path} is not valid JSON (malformed or truncated file)")]
    Json {
        /// The file that was being parsed.
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A data file is valid JSON but does not follow the expected schema.
    #[error("{path}: {what}")]
    Schema {
        /// The file that was being loaded.
        path: PathBuf,
        /// What is wrong, and where in the file.
        what: String,
    },
    /// An episode that breaks [`crate::validate_episode`]'s rules.
    #[error(
        "episode {episode}{}: {what}",
        .question.map(|q| format!(", question {q}")).unwrap_or_default()
    )]
    InvalidEpisode {
        /// The episode's id.
        episode: String,
        /// The index of the question at fault, when one is.
        question: Option<usize>,
        /// What is wrong.
        what: String,
    },
    /// A dialogue id that is not of the form `D{session}:{turn}`.
    #[error("invalid dialogue id {0:?}, expected D{{session}}:{{turn}}")]
    DiaId(String),
    /// A world or teacher configuration that cannot be used.
    #[error("invalid configuration: {0}")]
    Config(String),
}
