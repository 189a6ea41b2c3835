//! The error type of the drift crate.

use std::path::PathBuf;

/// Everything that can go wrong while reading, checking or scoring drift scenarios.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    /// A scenario file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// A scenario file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file that was being written.
        path: PathBuf,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// A scenario file is not a JSON array (malformed or truncated).
    #[error("{path} is not a JSON array of scenarios (malformed or truncated file)")]
    Json {
        /// The file that was being parsed.
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A scenario that breaks the schema's rules.
    #[error("{location}: scenario {index} ({id}), {field}: {what}")]
    Scenario {
        /// The file the scenario came from, or `scenarios` for scenarios built in memory.
        location: String,
        /// Its position in the file or list.
        index: usize,
        /// Its id (`?` when it has none).
        id: String,
        /// The field at fault, as a path (`tools[0].parameters.properties.tier`).
        field: String,
        /// What is wrong.
        what: String,
    },
    /// A tool call that does not follow its tool's schema.
    #[error("call of {tool}: {what}")]
    Call {
        /// The tool called.
        tool: String,
        /// What is wrong.
        what: String,
    },
    /// A tool list that is none of the forms the scan reads.
    #[error("tool list: {0}")]
    Tools(String),
    /// A configuration that cannot be used.
    #[error("invalid drift configuration: {0}")]
    Config(String),
}
