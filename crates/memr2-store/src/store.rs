//! The memory store, its immutable snapshots, and O(1) branching.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use imbl::{OrdMap, Vector};
use serde::{Deserialize, Serialize};

use crate::bm25::{Bm25Index, Bm25Params};
use crate::dense::{DenseIndex, Embedder};
use crate::entry::{Applied, Entry, MemoryId, OpKind, Operation, Provenance};
use crate::error::StoreError;
use crate::history::{BranchPoint, HistoryRecord, OperationRecord};
use crate::tokens::{TokenCounter, whitespace_words};
use crate::topk::Hit;

/// One memory's log records as a persistent list, newest first: recording an operation adds
/// one link (O(1), whatever the length) and shares the older links with every branch.
#[derive(Debug)]
pub(crate) struct HistoryLink {
    record: Arc<OperationRecord>,
    older: Option<Arc<HistoryLink>>,
}

impl HistoryLink {
    /// The records, newest first.
    fn iter(&self) -> impl Iterator<Item = &OperationRecord> {
        std::iter::successors(Some(self), |link| link.older.as_deref()).map(|link| &*link.record)
    }
}

/// Compared link by link (not recursively, so a long history cannot exhaust the stack).
impl PartialEq for HistoryLink {
    fn eq(&self, other: &Self) -> bool {
        let (mut a, mut b) = (Some(self), Some(other));
        loop {
            match (a, b) {
                (None, None) => return true,
                (Some(x), Some(y)) if std::ptr::eq(x, y) => return true,
                (Some(x), Some(y)) if x.record == y.record => {
                    a = x.older.as_deref();
                    b = y.older.as_deref();
                }
                _ => return false,
            }
        }
    }
}

/// Dropped link by link (not recursively, so a long history cannot exhaust the stack).
impl Drop for HistoryLink {
    fn drop(&mut self) {
        let mut older = self.older.take();
        while let Some(link) = older {
            older = match Arc::try_unwrap(link) {
                Ok(mut link) => link.older.take(),
                Err(_) => None,
            };
        }
    }
}

/// Settings of a store, fixed for its lifetime and inherited by its branches.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// Longest accepted memory text, in characters (facts are at most about 20 words).
    pub max_text_chars: usize,
    /// BM25 parameters for [`Store::search`].
    pub bm25: Bm25Params,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_text_chars: 1000,
            bm25: Bm25Params::default(),
        }
    }
}

/// The whole state of a store. Every collection is persistent, so a clone costs a handful of
/// reference-count increments whatever the store's size, and mutating a clone copies only the
/// paths it touches.
#[derive(Clone)]
pub(crate) struct State {
    pub(crate) config: StoreConfig,
    entries: OrdMap<MemoryId, Arc<Entry>>,
    next_id: u64,
    /// Running sum of whitespace words over all entries.
    whitespace_tokens: usize,
    bm25: Bm25Index,
    dense: Option<DenseIndex>,
    log: Vector<Arc<OperationRecord>>,
    /// Id -> its log records (kept after DELETE).
    histories: OrdMap<MemoryId, Arc<HistoryLink>>,
    generation: u32,
    lineage: Vector<BranchPoint>,
}

/// Equality of content: entries, log, lineage and derived indexes. The attached embedder and
/// its vectors are not compared.
impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
            && self.next_id == other.next_id
            && self.whitespace_tokens == other.whitespace_tokens
            && self.generation == other.generation
            && self.lineage == other.lineage
            && self.entries == other.entries
            && self.log == other.log
            && self.histories == other.histories
            && self.bm25 == other.bm25
    }
}

impl State {
    fn new(config: StoreConfig) -> Self {
        Self {
            config,
            entries: OrdMap::new(),
            next_id: 1,
            whitespace_tokens: 0,
            bm25: Bm25Index::default(),
            dense: None,
            log: Vector::new(),
            histories: OrdMap::new(),
            generation: 0,
            lineage: Vector::new(),
        }
    }

    fn check_text(&self, text: &str) -> Result<(), StoreError> {
        if text.trim().is_empty() {
            return Err(StoreError::EmptyText);
        }
        let max = self.config.max_text_chars;
        // Counting stops early, so an enormous text costs no more than the limit.
        let chars = text.chars().take(max + 1).count();
        if chars > max {
            return Err(StoreError::TextTooLong {
                chars: text.chars().count(),
                max,
            });
        }
        Ok(())
    }

    fn embed(&self, text: &str) -> Result<Option<Arc<[f32]>>, StoreError> {
        self.dense.as_ref().map(|dense| dense.embed(text)).transpose()
    }

    fn apply(&mut self, op: Operation, session: u32) -> Result<Applied, StoreError> {
        let seq = self.log.len() as u64;
        let provenance = |kind| Provenance {
            kind,
            seq,
            generation: self.generation,
        };
        // Everything fallible happens before the first change, so an error leaves the state as is.
        let (applied, before, after, vector) = match op {
            Operation::Add { text, speaker } => {
                self.check_text(&text)?;
                let vector = self.embed(&text)?;
                let id = MemoryId::new(self.next_id);
                let entry = Entry {
                    id,
                    text,
                    speaker,
                    created_session: session,
                    updated_session: session,
                    provenance: provenance(OpKind::Add),
                };
                (Applied::Added(id), None, Some(Arc::new(entry)), vector)
            }
            Operation::Update { id, text } => {
                let old = self.entries.get(&id).ok_or(StoreError::UnknownId(id))?;
                self.check_text(&text)?;
                let vector = self.embed(&text)?;
                let entry = Entry {
                    id,
                    text,
                    speaker: old.speaker.clone(),
                    created_session: old.created_session,
                    updated_session: session,
                    provenance: provenance(OpKind::Update),
                };
                (
                    Applied::Updated(id),
                    Some(Arc::clone(old)),
                    Some(Arc::new(entry)),
                    vector,
                )
            }
            Operation::Delete { id } => {
                let old = self.entries.get(&id).ok_or(StoreError::UnknownId(id))?;
                (Applied::Deleted(id), Some(Arc::clone(old)), None, None)
            }
            Operation::Noop => (Applied::Noop, None, None, None),
        };

        match (&before, &after) {
            (Some(old), Some(new)) => self.bm25.replace(old.id, &new.text),
            (Some(old), None) => self.bm25.remove(old.id),
            (None, Some(new)) => self.bm25.insert(new.id, &new.text),
            (None, None) => {}
        }
        if let Some(old) = &before {
            self.whitespace_tokens -= whitespace_words(&old.text);
            if after.is_none() {
                // An UPDATE replaces the entry below in one step.
                self.entries.remove(&old.id);
            }
            if let Some(dense) = &mut self.dense {
                dense.remove(old.id);
            }
        }
        if let Some(new) = &after {
            self.whitespace_tokens += whitespace_words(&new.text);
            self.entries.insert(new.id, Arc::clone(new));
            if let (Some(dense), Some(vector)) = (&mut self.dense, vector) {
                dense.insert(new.id, vector);
            }
        }
        if let Applied::Added(_) = applied {
            self.next_id += 1;
        }
        let record = Arc::new(OperationRecord {
            seq,
            session,
            generation: self.generation,
            applied,
            before,
            after,
        });
        if let Some(id) = applied.id() {
            let record = Arc::clone(&record);
            match self.histories.get_mut(&id) {
                Some(newest) => {
                    let older = Some(Arc::clone(newest));
                    *newest = Arc::new(HistoryLink { record, older });
                }
                None => {
                    self.histories
                        .insert(id, Arc::new(HistoryLink { record, older: None }));
                }
            }
        }
        self.log.push_back(record);
        Ok(applied)
    }

    /// Records that a snapshot of this state is being branched, and moves to the next generation.
    pub(crate) fn begin_branch(&mut self) {
        self.lineage.push_back(BranchPoint {
            generation: self.generation,
            log_len: self.log.len() as u64,
        });
        self.generation += 1;
    }

    pub(crate) fn log(&self) -> &Vector<Arc<OperationRecord>> {
        &self.log
    }

    pub(crate) fn lineage(&self) -> &Vector<BranchPoint> {
        &self.lineage
    }

    fn history(&self, id: MemoryId) -> Vec<HistoryRecord> {
        let mut records: Vec<HistoryRecord> = self
            .histories
            .get(&id)
            .map(|newest| newest.iter().filter_map(HistoryRecord::from_record).collect())
            .unwrap_or_default();
        records.reverse();
        records
    }

    fn size_tokens(&self, counter: &dyn TokenCounter) -> usize {
        if counter.counts_whitespace_words() {
            self.whitespace_tokens
        } else {
            self.entries.values().map(|e| counter.count(&e.text)).sum()
        }
    }
}

/// The read-only methods shared by [`Store`] and [`Snapshot`].
macro_rules! read_methods {
    () => {
        /// The memory `id`, if it exists.
        pub fn get(&self, id: MemoryId) -> Option<&Entry> {
            self.state().entries.get(&id).map(|e| &**e)
        }

        /// Whether memory `id` exists.
        pub fn contains(&self, id: MemoryId) -> bool {
            self.state().entries.contains_key(&id)
        }

        /// Number of memories.
        pub fn len(&self) -> usize {
            self.state().entries.len()
        }

        /// Whether there are no memories.
        pub fn is_empty(&self) -> bool {
            self.state().entries.is_empty()
        }

        /// All memories, ordered by id.
        pub fn entries(&self) -> impl Iterator<Item = &Entry> {
            self.state().entries.values().map(|e| &**e)
        }

        /// The id the next ADD will receive.
        pub fn next_id(&self) -> MemoryId {
            MemoryId::new(self.state().next_id)
        }

        /// The settings.
        pub fn config(&self) -> &StoreConfig {
            &self.state().config
        }

        /// The `k` memories most related to `query` by BM25 with a score of at least
        /// `min_score`, best first, equal scores ordered by id. Only memories sharing a term
        /// with the query are returned.
        pub fn search(&self, query: &str, k: usize, min_score: f32) -> Vec<Hit> {
            let state = self.state();
            state.bm25.search(state.config.bm25, query, k, min_score)
        }

        /// The `k` memories whose embeddings are most cosine-similar to `query` (a vector of
        /// the attached embedder's dimension), at least `min_score`, best first, ties by id.
        pub fn search_dense(&self, query: &[f32], k: usize, min_score: f32) -> Result<Vec<Hit>, StoreError> {
            self.state()
                .dense
                .as_ref()
                .ok_or(StoreError::NoEmbedder)?
                .search(query, k, min_score)
        }

        /// Like [`Self::search_dense`], embedding the query text with the attached embedder.
        pub fn search_dense_text(
            &self,
            query: &str,
            k: usize,
            min_score: f32,
        ) -> Result<Vec<Hit>, StoreError> {
            self.state()
                .dense
                .as_ref()
                .ok_or(StoreError::NoEmbedder)?
                .search_text(query, k, min_score)
        }

        /// Size of all memories in whitespace-separated words, kept as a running total (O(1)).
        pub fn token_count(&self) -> usize {
            self.state().whitespace_tokens
        }

        /// Size of all memories in tokens of `counter`; O(1) for [`crate::WhitespaceCounter`],
        /// otherwise one call of `counter` per memory.
        pub fn size_tokens(&self, counter: &dyn TokenCounter) -> usize {
            self.state().size_tokens(counter)
        }

        /// Every version of memory `id`, oldest first, including versions inherited from the
        /// snapshots this store descends from and its deletion; empty for an unknown id.
        pub fn history(&self, id: MemoryId) -> Vec<HistoryRecord> {
            self.state().history(id)
        }

        /// The applied-operation log, oldest first, including the operations inherited from
        /// the snapshots this store descends from.
        pub fn operations(&self) -> impl ExactSizeIterator<Item = &OperationRecord> {
            self.state().log.iter().map(|r| &**r)
        }

        /// Number of operations in the log.
        pub fn operation_count(&self) -> usize {
            self.state().log.len()
        }

        /// Branch generation: 0 for a store made with `new`, one more than its parent's for a
        /// branch.
        pub fn generation(&self) -> u32 {
            self.state().generation
        }

        /// The snapshots this state descends from, oldest first (empty for a root store).
        pub fn lineage(&self) -> Vec<BranchPoint> {
            self.state().lineage.iter().copied().collect()
        }

        /// The snapshot this state was branched from, if any.
        pub fn parent(&self) -> Option<BranchPoint> {
            self.state().lineage.last().copied()
        }

        /// Whether an embedder is attached (dense search available).
        pub fn has_embedder(&self) -> bool {
            self.state().dense.is_some()
        }
    };
}

/// A mutable memory store. Cloning is O(1); so are [`Store::snapshot`] and [`Snapshot::branch`].
#[derive(Clone, PartialEq)]
pub struct Store {
    state: State,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_state("Store", &self.state, f)
    }
}

fn debug_state(name: &str, state: &State, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.debug_struct(name)
        .field("len", &state.entries.len())
        .field("next_id", &state.next_id)
        .field("token_count", &state.whitespace_tokens)
        .field("operations", &state.log.len())
        .field("generation", &state.generation)
        .field("dense", &state.dense)
        .finish()
}

impl Store {
    /// An empty store with the default settings.
    pub fn new() -> Self {
        Self::with_config(StoreConfig::default())
    }

    /// An empty store with `config`.
    pub fn with_config(config: StoreConfig) -> Self {
        Self {
            state: State::new(config),
        }
    }

    fn state(&self) -> &State {
        &self.state
    }

    pub(crate) fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    read_methods!();

    /// Applies `op` in `session` and records it in the log.
    ///
    /// Fails, leaving the store unchanged, on an unknown id (UPDATE, DELETE), an empty or
    /// whitespace-only text, a text longer than [`StoreConfig::max_text_chars`], or an invalid
    /// embedding when an embedder is attached.
    pub fn apply(&mut self, op: Operation, session: u32) -> Result<Applied, StoreError> {
        self.state.apply(op, session)
    }

    /// An immutable view of the current state, in O(1).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(Arc::new(self.state.clone()))
    }

    /// A new store branched from the current state; shorthand for `self.snapshot().branch()`.
    pub fn branch(&self) -> Store {
        let mut state = self.state.clone();
        state.begin_branch();
        Store { state }
    }

    /// Attaches `embedder` for dense search, embedding every current memory (one call each).
    /// Branches and snapshots taken afterwards share the vectors.
    pub fn set_embedder(&mut self, embedder: Arc<dyn Embedder>) -> Result<(), StoreError> {
        let mut dense = DenseIndex::new(embedder);
        for entry in self.state.entries.values() {
            let vector = dense.embed(&entry.text)?;
            dense.insert(entry.id, vector);
        }
        self.state.dense = Some(dense);
        Ok(())
    }

    /// Detaches the embedder and drops the vectors.
    pub fn clear_embedder(&mut self) {
        self.state.dense = None;
    }

    /// Writes the store to `path` atomically (temporary file in the same folder, fsync, rename).
    /// The embedder is not saved.
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        crate::file::save(&self.state, path)
    }

    /// Reads a store written by [`Store::save`], checking header, length and checksum.
    pub fn load(path: &Path) -> Result<Store, StoreError> {
        crate::file::load(path)
    }
}

/// An immutable view of a store's state: `Send + Sync`, cloned in O(1), and the source of any
/// number of independent branches.
#[derive(Clone, PartialEq)]
pub struct Snapshot(Arc<State>);

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_state("Snapshot", &self.0, f)
    }
}

impl Snapshot {
    fn state(&self) -> &State {
        &self.0
    }

    read_methods!();

    /// A new mutable store starting from this state and sharing its structure, in O(1).
    /// Its changes never reach this snapshot or other branches of it.
    pub fn branch(&self) -> Store {
        let mut state = State::clone(&self.0);
        state.begin_branch();
        Store { state }
    }
}

#[cfg(test)]
pub(crate) mod tests;
