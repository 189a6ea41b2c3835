//! Memory entries, their ids, and the operations that change them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Identifier of one memory. Shown as `m{n}`; never reused within a lineage of branches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemoryId(u64);

impl MemoryId {
    /// The id with number `n`.
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    /// The number inside the id.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for MemoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}", self.0)
    }
}

/// Error of parsing a [`MemoryId`] from text that is not `m{n}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a memory id of the form m<number>")]
pub struct ParseMemoryIdError(String);

impl FromStr for MemoryId {
    type Err = ParseMemoryIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix('m')
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse().ok())
            .map(MemoryId)
            .ok_or_else(|| ParseMemoryIdError(s.to_owned()))
    }
}

/// The kind of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OpKind {
    /// A new memory was written.
    Add,
    /// An existing memory's text was replaced.
    Update,
    /// A memory was removed.
    Delete,
    /// Nothing changed.
    Noop,
}

/// Which operation produced the current version of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Provenance {
    /// [`OpKind::Add`] or [`OpKind::Update`].
    pub kind: OpKind,
    /// Position of that operation in the store's operation log.
    pub seq: u64,
    /// Branch generation of the store that applied it (0 for a store made with `new`).
    pub generation: u32,
}

/// One memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its id.
    pub id: MemoryId,
    /// The remembered fact.
    pub text: String,
    /// Who the fact is about or was said by, when known.
    pub speaker: Option<String>,
    /// Session in which the memory was added.
    pub created_session: u32,
    /// Session of the latest change (equal to `created_session` until updated).
    pub updated_session: u32,
    /// The operation that produced this version.
    pub provenance: Provenance,
}

/// A change requested of the store (what the memory manager writes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// Write a new memory.
    Add {
        /// The fact.
        text: String,
        /// Who it is about, when known.
        speaker: Option<String>,
    },
    /// Replace the text of an existing memory (its speaker is kept).
    Update {
        /// The memory to change.
        id: MemoryId,
        /// Its new text.
        text: String,
    },
    /// Remove a memory.
    Delete {
        /// The memory to remove.
        id: MemoryId,
    },
    /// Change nothing.
    Noop,
}

impl Operation {
    /// The kind of this operation.
    pub fn kind(&self) -> OpKind {
        match self {
            Operation::Add { .. } => OpKind::Add,
            Operation::Update { .. } => OpKind::Update,
            Operation::Delete { .. } => OpKind::Delete,
            Operation::Noop => OpKind::Noop,
        }
    }
}

/// What an applied operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Applied {
    /// A memory with this new id was written.
    Added(MemoryId),
    /// This memory's text was replaced.
    Updated(MemoryId),
    /// This memory was removed.
    Deleted(MemoryId),
    /// Nothing changed.
    Noop,
}

impl Applied {
    /// The kind of the operation.
    pub fn kind(self) -> OpKind {
        match self {
            Applied::Added(_) => OpKind::Add,
            Applied::Updated(_) => OpKind::Update,
            Applied::Deleted(_) => OpKind::Delete,
            Applied::Noop => OpKind::Noop,
        }
    }

    /// The memory concerned, if any.
    pub fn id(self) -> Option<MemoryId> {
        match self {
            Applied::Added(id) | Applied::Updated(id) | Applied::Deleted(id) => Some(id),
            Applied::Noop => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_display_and_parse_round_trip() {
        let id = MemoryId::new(12);
        assert_eq!(id.to_string(), "m12");
        assert_eq!("m12".parse::<MemoryId>(), Ok(id));
        for bad in ["12", "m", "m-1", "mx", "M3", "m1 "] {
            assert!(bad.parse::<MemoryId>().is_err(), "{bad}");
        }
    }
}
