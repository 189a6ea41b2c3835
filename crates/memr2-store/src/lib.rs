//! Branchable long-term memory store: entries, operations, snapshots and branches.
//!
//! A [`Store`] holds the memories an agent writes with [`Operation`]s (ADD, UPDATE, DELETE,
//! NOOP). All of its state lives in persistent collections (`imbl`), so
//! [`Store::snapshot`] and [`Snapshot::branch`] cost O(1) whatever the store's size, and a
//! branch never changes its parent or its siblings. This is what local rerollouts need: one
//! intermediate memory state is branched several times, for many rollouts at once, from
//! several threads.
//!
//! Alongside the entries a store keeps, equally persistent and shared by branches:
//! - the operation log, complete from the empty store, with each memory's history and the
//!   lineage of snapshots the store descends from;
//! - a BM25 index updated on every change, for [`Store::search`];
//! - optionally, embeddings from an outside [`Embedder`], for cosine [`Store::search_dense`];
//!   [`Store::retrieve`] answers a query by BM25, by embeddings, or by both fused by
//!   reciprocal rank ([`Retrieval`]);
//! - a running whitespace token count, for the reward's memory-size penalty
//!   ([`Store::token_count`], or [`Store::size_tokens`] with any [`TokenCounter`]).
//!
//! [`Store::save`] and [`Store::load`] use a checked file format (magic bytes, version,
//! length, CRC32) written atomically; loading replays the operation log without indexing and
//! restores the BM25 index from the file's index section.
//!
//! ```
//! use memr2_store::{Operation, Store};
//!
//! let mut store = Store::new();
//! store.apply(Operation::Add { text: "Alice lives in Paris".into(), speaker: None }, 1)?;
//! let before_session_2 = store.snapshot();
//! let mut rerollout = before_session_2.branch();
//! let id = rerollout.search("where does alice live", 1, 0.0)[0].id;
//! rerollout.apply(Operation::Update { id, text: "Alice moved to Lyon".into() }, 2)?;
//! assert_eq!(before_session_2.get(id).unwrap().text, "Alice lives in Paris");
//! assert_eq!(rerollout.history(id).len(), 2);
//! # Ok::<(), memr2_store::StoreError>(())
//! ```

mod bm25;
mod dense;
mod entry;
mod error;
mod file;
mod history;
mod retrieval;
mod store;
mod tokens;
mod topk;

pub use bm25::{Bm25Params, tokenize};
pub use dense::Embedder;
pub use entry::{Applied, Entry, MemoryId, OpKind, Operation, ParseMemoryIdError, Provenance};
pub use error::StoreError;
pub use file::{FORMAT_VERSION, HEADER_LEN, MAGIC, OLDEST_FORMAT_VERSION};
pub use history::{BranchPoint, HistoryRecord, OperationRecord};
pub use retrieval::{MinScores, RRF_K, Retrieval};
pub use store::{Snapshot, Store, StoreConfig};
pub use tokens::{TokenCounter, WhitespaceCounter};
pub use topk::Hit;
