//! Branchable long-term memory store: entries, operations, snapshots and branches.
