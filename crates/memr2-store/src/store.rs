//! The memory store, its immutable snapshots, and O(1) branching.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use imbl::Vector;
use serde::{Deserialize, Serialize};

use crate::bm25::{Bm25Index, Bm25Params, IndexSection};
use crate::dense::{DenseIndex, Embedder};
use crate::entry::{Applied, Entry, MemoryId, OpKind, Operation, Provenance};
use crate::error::StoreError;
use crate::history::{BranchPoint, HistoryRecord, OperationRecord};
use crate::retrieval::{MinScores, Retrieval};
use crate::tokens::{TokenCounter, whitespace_words};
use crate::topk::Hit;

/// One log record, and through `older` the records of the same memory before it: each memory's
/// history is a persistent list, newest first. Recording an operation allocates one link
/// (O(1), whatever the length of the history), which both the operation log and the memory's
/// history point to, and shares the older links with every branch.
#[derive(Debug)]
pub(crate) struct HistoryLink {
    pub(crate) record: OperationRecord,
    older: Option<Arc<HistoryLink>>,
    /// Whitespace words of the memory's text after this record (0 once deleted), kept so that
    /// the next change of the memory need not read the old text again.
    words: usize,
}

impl HistoryLink {
    fn new(record: OperationRecord, older: Option<Arc<HistoryLink>>) -> Arc<Self> {
        let words = record.after.as_ref().map_or(0, |e| whitespace_words(&e.text));
        Arc::new(Self { record, older, words })
    }

    /// The records, newest first.
    fn iter(&self) -> impl Iterator<Item = &OperationRecord> {
        std::iter::successors(Some(self), |link| link.older.as_deref()).map(|link| &link.record)
    }

    /// The memory's current version: `None` once deleted.
    fn entry(&self) -> Option<&Arc<Entry>> {
        self.record.after.as_ref()
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

/// Position of memory `id` in [`State::memories`]: ids are numbered from 1 without gaps.
fn index_of(id: MemoryId) -> Option<usize> {
    usize::try_from(id.get().checked_sub(1)?).ok()
}

/// Rejects an empty or overlong text (ADD and UPDATE).
fn check_text(config: &StoreConfig, text: &str) -> Result<(), StoreError> {
    if text.trim().is_empty() {
        return Err(StoreError::EmptyText);
    }
    let max = config.max_text_chars;
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
    /// Memory `m{n}` -> the newest link of its history, at position n - 1 (ids are allocated
    /// in sequence and never reused, and a history outlives a DELETE, so there are no gaps).
    /// The current entries are the newest links' `after`: entries and histories are one
    /// collection, and an UPDATE or DELETE finds its memory with one descent of a shallow tree
    /// (64-wide nodes, positions computed rather than searched).
    memories: Vector<Arc<HistoryLink>>,
    /// Number of memories not deleted.
    live: usize,
    /// Running sum of whitespace words over all entries.
    whitespace_tokens: usize,
    bm25: Bm25Index,
    dense: Option<DenseIndex>,
    /// Every applied operation, oldest first (the same links as `memories`, plus NOOPs).
    log: Vector<Arc<HistoryLink>>,
    generation: u32,
    lineage: Vector<BranchPoint>,
}

/// Equality of content: entries, histories, log, lineage and derived indexes. The attached
/// embedder and its vectors are not compared.
impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
            && self.live == other.live
            && self.whitespace_tokens == other.whitespace_tokens
            && self.generation == other.generation
            && self.lineage == other.lineage
            && self.memories == other.memories
            && self.log.len() == other.log.len()
            && self
                .log
                .iter()
                .zip(other.log.iter())
                .all(|(a, b)| Arc::ptr_eq(a, b) || a.record == b.record)
            && self.bm25 == other.bm25
    }
}

impl State {
    pub(crate) fn new(config: StoreConfig) -> Self {
        Self {
            config,
            memories: Vector::new(),
            live: 0,
            whitespace_tokens: 0,
            bm25: Bm25Index::default(),
            dense: None,
            log: Vector::new(),
            generation: 0,
            lineage: Vector::new(),
        }
    }

    /// Builds the BM25 index of the current entries in one pass, after operations applied with
    /// [`Self::apply_unindexed`]: from `section` (as [`Self::index_section`] saved it) when
    /// given, otherwise by tokenising the texts. Fails, saying why, on a malformed section.
    pub(crate) fn build_index(&mut self, section: Option<IndexSection>) -> Result<(), String> {
        self.bm25 = match section {
            Some(section) => {
                let live: Vec<MemoryId> = self.entries().map(|e| e.id).collect();
                Bm25Index::from_section(&live, section)?
            }
            None => {
                let docs: Vec<(MemoryId, &str)> = self.entries().map(|e| (e.id, e.text.as_str())).collect();
                Bm25Index::from_documents(docs.into_iter())
            }
        };
        Ok(())
    }

    /// The BM25 index in the form a store file holds it.
    pub(crate) fn index_section(&self) -> IndexSection {
        self.bm25.section()
    }

    /// The current version of memory `id`.
    fn entry(&self, id: MemoryId) -> Option<&Arc<Entry>> {
        self.memories.get(index_of(id)?)?.entry()
    }

    fn entries(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.memories.iter().filter_map(|link| link.entry())
    }

    fn next_id(&self) -> u64 {
        self.memories.len() as u64 + 1
    }

    fn apply(&mut self, op: Operation, session: u32) -> Result<Applied, StoreError> {
        self.apply_inner(op, session, true)
    }

    /// [`Self::apply`] leaving the BM25 index as it is, for replaying a log that
    /// [`Self::build_index`] follows.
    pub(crate) fn apply_unindexed(&mut self, op: Operation, session: u32) -> Result<Applied, StoreError> {
        self.apply_inner(op, session, false)
    }

    fn apply_inner(&mut self, op: Operation, session: u32, index: bool) -> Result<Applied, StoreError> {
        let seq = self.log.len() as u64;
        let generation = self.generation;
        let record = |applied, before, after| OperationRecord {
            seq,
            session,
            generation,
            applied,
            before,
            after,
        };
        // Everything fallible happens before the first change, so an error leaves the state as
        // it was (a failed UPDATE or DELETE may have unshared the path to its memory, which
        // changes no content).
        match op {
            Operation::Add { text, speaker } => {
                check_text(&self.config, &text)?;
                let vector = self.dense.as_ref().map(|d| d.embed(&text)).transpose()?;
                let id = MemoryId::new(self.next_id());
                let entry = Arc::new(Entry {
                    id,
                    text,
                    speaker,
                    created_session: session,
                    updated_session: session,
                    provenance: Provenance {
                        kind: OpKind::Add,
                        seq,
                        generation,
                    },
                });
                if index {
                    self.bm25.insert(id, &entry.text);
                }
                if let (Some(dense), Some(vector)) = (&mut self.dense, vector) {
                    dense.insert(id, vector);
                }
                self.live += 1;
                let link = HistoryLink::new(record(Applied::Added(id), None, Some(entry)), None);
                self.whitespace_tokens += link.words;
                self.memories.push_back(Arc::clone(&link));
                self.log.push_back(link);
                Ok(Applied::Added(id))
            }
            Operation::Update { id, text } => {
                let newest = index_of(id)
                    .and_then(|i| self.memories.get_mut(i))
                    .filter(|link| link.entry().is_some())
                    .ok_or(StoreError::UnknownId(id))?;
                check_text(&self.config, &text)?;
                let vector = self.dense.as_ref().map(|d| d.embed(&text)).transpose()?;
                let old = Arc::clone(newest.entry().expect("checked above"));
                let entry = Arc::new(Entry {
                    id,
                    text,
                    speaker: old.speaker.clone(),
                    created_session: old.created_session,
                    updated_session: session,
                    provenance: Provenance {
                        kind: OpKind::Update,
                        seq,
                        generation,
                    },
                });
                if index {
                    self.bm25.replace(id, &entry.text);
                }
                if let Some(dense) = &mut self.dense {
                    dense.remove(id);
                    if let Some(vector) = vector {
                        dense.insert(id, vector);
                    }
                }
                let old_words = newest.words;
                let older = Some(Arc::clone(newest));
                *newest = HistoryLink::new(record(Applied::Updated(id), Some(old), Some(entry)), older);
                self.whitespace_tokens = self.whitespace_tokens - old_words + newest.words;
                self.log.push_back(Arc::clone(newest));
                Ok(Applied::Updated(id))
            }
            Operation::Delete { id } => {
                let newest = index_of(id)
                    .and_then(|i| self.memories.get_mut(i))
                    .filter(|link| link.entry().is_some())
                    .ok_or(StoreError::UnknownId(id))?;
                let old = Arc::clone(newest.entry().expect("checked above"));
                if index {
                    self.bm25.remove(id);
                }
                self.whitespace_tokens -= newest.words;
                if let Some(dense) = &mut self.dense {
                    dense.remove(id);
                }
                self.live -= 1;
                let older = Some(Arc::clone(newest));
                *newest = HistoryLink::new(record(Applied::Deleted(id), Some(old), None), older);
                self.log.push_back(Arc::clone(newest));
                Ok(Applied::Deleted(id))
            }
            Operation::Noop => {
                self.log
                    .push_back(HistoryLink::new(record(Applied::Noop, None, None), None));
                Ok(Applied::Noop)
            }
        }
    }

    /// Records that a snapshot of this state is being branched, and moves to the next generation.
    pub(crate) fn begin_branch(&mut self) {
        self.lineage.push_back(BranchPoint {
            generation: self.generation,
            log_len: self.log.len() as u64,
        });
        self.generation += 1;
    }

    /// The operation log, oldest first.
    pub(crate) fn operations(&self) -> impl ExactSizeIterator<Item = &OperationRecord> {
        self.log.iter().map(|link| &link.record)
    }

    pub(crate) fn lineage(&self) -> &Vector<BranchPoint> {
        &self.lineage
    }

    fn history(&self, id: MemoryId) -> Vec<HistoryRecord> {
        let mut records: Vec<HistoryRecord> = index_of(id)
            .and_then(|i| self.memories.get(i))
            .map(|newest| newest.iter().filter_map(HistoryRecord::from_record).collect())
            .unwrap_or_default();
        records.reverse();
        records
    }

    fn size_tokens(&self, counter: &dyn TokenCounter) -> usize {
        if counter.counts_whitespace_words() {
            self.whitespace_tokens
        } else {
            self.entries().map(|e| counter.count(&e.text)).sum()
        }
    }
}

/// The read-only methods shared by [`Store`] and [`Snapshot`].
macro_rules! read_methods {
    () => {
        /// The memory `id`, if it exists.
        pub fn get(&self, id: MemoryId) -> Option<&Entry> {
            self.state().entry(id).map(|e| &**e)
        }

        /// Whether memory `id` exists.
        pub fn contains(&self, id: MemoryId) -> bool {
            self.state().entry(id).is_some()
        }

        /// Number of memories.
        pub fn len(&self) -> usize {
            self.state().live
        }

        /// Whether there are no memories.
        pub fn is_empty(&self) -> bool {
            self.state().live == 0
        }

        /// All memories, ordered by id.
        pub fn entries(&self) -> impl Iterator<Item = &Entry> {
            self.state().entries().map(|e| &**e)
        }

        /// The id the next ADD will receive.
        pub fn next_id(&self) -> MemoryId {
            MemoryId::new(self.state().next_id())
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

        /// The `k` memories most related to `query` under `mode`, best first: BM25 with a
        /// score of at least `min.bm25`, cosine similarity over the attached embedder of at
        /// least `min.dense`, or both lists (each cut to `k` by its own threshold) fused by
        /// reciprocal rank, whose scores are then the fused ones. Fails when the mode needs an
        /// embedder and none is attached, or when the embedder fails on the query.
        pub fn retrieve(
            &self,
            query: &str,
            k: usize,
            mode: Retrieval,
            min: MinScores,
        ) -> Result<Vec<Hit>, StoreError> {
            match mode {
                Retrieval::Bm25 => Ok(self.search(query, k, min.bm25)),
                Retrieval::Dense => self.search_dense_text(query, k, min.dense),
                Retrieval::Hybrid => {
                    let dense = self.search_dense_text(query, k, min.dense)?;
                    Ok(crate::retrieval::fuse(
                        &[self.search(query, k, min.bm25), dense],
                        k,
                    ))
                }
            }
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
            self.state().operations()
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
        .field("len", &state.live)
        .field("next_id", &state.next_id())
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

    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    pub(crate) fn from_state(state: State) -> Self {
        Self { state }
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
        for entry in self.state.entries() {
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
