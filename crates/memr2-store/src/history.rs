//! The operation log, per-memory history, and branch lineage.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::entry::{Applied, Entry, MemoryId, OpKind};

/// One applied operation, as kept in a store's operation log.
///
/// The log is complete from the empty store: replaying it reproduces the store exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRecord {
    /// Position in the log (0 for the first operation ever applied in the lineage).
    pub seq: u64,
    /// Session the operation was applied in.
    pub session: u32,
    /// Branch generation of the store that applied it (see [`BranchPoint`]).
    pub generation: u32,
    /// What it did.
    pub applied: Applied,
    /// The entry before the operation (UPDATE and DELETE).
    pub before: Option<Arc<Entry>>,
    /// The entry after the operation (ADD and UPDATE).
    pub after: Option<Arc<Entry>>,
}

/// One version of one memory, in the shape of Mem0's history table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRecord {
    /// The memory.
    pub id: MemoryId,
    /// Position of the operation in the operation log.
    pub seq: u64,
    /// Session the operation was applied in.
    pub session: u32,
    /// Branch generation of the store that applied it: records with a generation below the
    /// store's own were inherited from the snapshots it was branched from.
    pub generation: u32,
    /// ADD, UPDATE or DELETE.
    pub event: OpKind,
    /// Text before the operation (UPDATE and DELETE).
    pub old_text: Option<String>,
    /// Text after the operation (ADD and UPDATE).
    pub new_text: Option<String>,
}

impl HistoryRecord {
    /// The history view of a log record; `None` for NOOP.
    pub fn from_record(record: &OperationRecord) -> Option<Self> {
        Some(Self {
            id: record.applied.id()?,
            seq: record.seq,
            session: record.session,
            generation: record.generation,
            event: record.applied.kind(),
            old_text: record.before.as_ref().map(|e| e.text.clone()),
            new_text: record.after.as_ref().map(|e| e.text.clone()),
        })
    }
}

/// Where a store was branched from: the snapshot taken of a store of generation `generation`
/// after `log_len` operations. A store's lineage lists these, oldest first; its own generation
/// is the lineage's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BranchPoint {
    /// Generation of the store the snapshot was taken of.
    pub generation: u32,
    /// Number of operations in the log at the snapshot; the branch's own records start here.
    pub log_len: u64,
}
