//! The error type of the memory store.

use std::path::PathBuf;

use crate::entry::MemoryId;

/// Everything that can go wrong in the memory store.
///
/// An operation that fails leaves the store exactly as it was.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operation names a memory that does not exist in this store.
    #[error("unknown memory id {0}")]
    UnknownId(MemoryId),
    /// The text of an ADD or UPDATE is empty or only whitespace.
    #[error("memory text is empty")]
    EmptyText,
    /// The text of an ADD or UPDATE is longer than the configured limit.
    #[error("memory text has {chars} characters, more than the limit of {max}")]
    TextTooLong {
        /// Length of the rejected text, in characters.
        chars: usize,
        /// The configured limit, [`crate::StoreConfig::max_text_chars`].
        max: usize,
    },
    /// Dense search was asked of a store without an embedder.
    #[error("no embedder is attached to the store")]
    NoEmbedder,
    /// The attached embedder could not embed a text (a service that is down, for instance).
    #[error("the embedder failed: {reason}")]
    Embedder {
        /// What the embedder said.
        reason: String,
    },
    /// An embedding (from the embedder or a query) has the wrong dimension or a non-finite value.
    #[error("embedding of dimension {got} is invalid, expected {expected} finite values")]
    InvalidEmbedding {
        /// Dimension of the rejected vector.
        got: usize,
        /// Dimension the embedder declares.
        expected: usize,
    },
    /// Reading, writing, syncing or renaming a store file failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done, e.g. "read" or "rename temporary file to".
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the store's magic bytes.
    #[error("{path} is not a memr2 store file")]
    NotAStoreFile {
        /// The file concerned.
        path: PathBuf,
    },
    /// The file was written in a format version this build cannot read.
    #[error(
        "{} has store format version {found}, this build reads versions {} to {supported}",
        path.display(),
        crate::file::OLDEST_FORMAT_VERSION
    )]
    UnsupportedVersion {
        /// The file concerned.
        path: PathBuf,
        /// Version found in the header.
        found: u32,
        /// Newest version this build reads (the one it writes).
        supported: u32,
    },
    /// The file is shorter than its header says.
    #[error("{path} is truncated: expected {expected} bytes, found {found}")]
    Truncated {
        /// The file concerned.
        path: PathBuf,
        /// Size the header announces, in bytes.
        expected: u64,
        /// Actual size, in bytes.
        found: u64,
    },
    /// The file's content does not match its checksum, or it has trailing bytes.
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The body passed its checksum but could not be decoded.
    #[error("cannot decode the body of {path}")]
    Decode {
        /// The file concerned.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: bincode::error::DecodeError,
    },
    /// The body decoded, but replaying its operation log failed.
    #[error("{path} holds an inconsistent operation log at operation {seq}")]
    Inconsistent {
        /// The file concerned.
        path: PathBuf,
        /// Position of the failing operation in the log.
        seq: u64,
        /// Why the operation could not be replayed.
        #[source]
        source: Box<StoreError>,
    },
    /// The store could not be encoded.
    #[error("cannot encode the store")]
    Encode {
        /// The encoder's error.
        #[source]
        source: bincode::error::EncodeError,
    },
}
