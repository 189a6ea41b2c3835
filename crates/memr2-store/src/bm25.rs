//! BM25 retrieval over memory texts: a frozen base of flat posting arrays shared by every
//! branch, a small persistent delta of the documents written since, and compaction.
//!
//! An ADD, UPDATE or DELETE touches at most one persistent map (the delta) and one bit of a
//! chunked bitmap (the base documents that were removed or overwritten), whatever the size of
//! the index; indexing a text allocates only its posting list. When the delta and the removed
//! documents together outgrow a fraction of the base, the next change rebuilds the base from
//! the live documents; since that fraction is fixed, rebuilding costs amortised O(1) per
//! change. Corpus statistics (document count, total length, document frequencies) are always
//! exact, so scores equal those of an index built from scratch. A store file holds the index's
//! layout as it is (base postings term by term, removed slots, delta documents), so saving
//! copies it and loading restores it without tokenising.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use crate::entry::MemoryId;
use crate::topk::{Hit, TopK};

/// BM25 parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bm25Params {
    /// Term-frequency saturation (Robertson and Zaragoza's usual 1.2).
    pub k1: f32,
    /// Length normalisation, 0 (none) to 1 (full); usually 0.75.
    pub b: f32,
}

impl Default for Bm25Params {
    fn default() -> Self {
        Self { k1: 1.2, b: 0.75 }
    }
}

/// Splits `text` into lowercase alphanumeric terms (every other character separates terms).
pub fn tokenize(text: &str) -> Vec<String> {
    let terms = Terms::of(text);
    terms.iter().map(str::to_owned).collect()
}

/// The terms of one text, lowercased one after the other into a single buffer: two
/// allocations per text rather than one per term, and none at all when the buffers are reused
/// (see [`Terms::fill`]).
#[derive(Debug, Default)]
struct Terms {
    buf: String,
    /// (start, end) of each term in `buf`, in text order until [`Terms::count`] sorts them.
    spans: Vec<(u32, u32)>,
    /// Distinct terms (as spans, sorted by term) with their frequencies, after [`Terms::count`].
    counts: Vec<((u32, u32), u32)>,
    /// Scratch for [`DeltaDoc::new`]: (base term number, frequency).
    known: Vec<(u32, u32)>,
}

thread_local! {
    /// Term buffers reused by every insertion on this thread, so that indexing a document
    /// allocates nothing but the document's own posting list.
    static TERMS: RefCell<Terms> = RefCell::new(Terms::default());
}

impl Terms {
    /// Splits `text` like [`tokenize`].
    fn of(text: &str) -> Self {
        let mut terms = Terms::default();
        terms.fill(text);
        terms
    }

    /// Replaces the content with the terms of `text`, keeping the buffers' capacity.
    fn fill(&mut self, text: &str) {
        self.buf.clear();
        self.spans.clear();
        self.counts.clear();
        let mut start = 0;
        if text.is_ascii() {
            // The same split byte by byte: for ASCII, `char::is_alphanumeric` is
            // `u8::is_ascii_alphanumeric`.
            for &b in text.as_bytes() {
                if b.is_ascii_alphanumeric() {
                    self.buf.push(char::from(b.to_ascii_lowercase()));
                } else if self.buf.len() > start {
                    self.spans.push((start as u32, self.buf.len() as u32));
                    start = self.buf.len();
                }
            }
        } else {
            for ch in text.chars() {
                if ch.is_alphanumeric() {
                    if ch.is_ascii() {
                        self.buf.push(ch.to_ascii_lowercase());
                    } else {
                        self.buf.extend(ch.to_lowercase());
                    }
                } else if self.buf.len() > start {
                    self.spans.push((start as u32, self.buf.len() as u32));
                    start = self.buf.len();
                }
            }
        }
        if self.buf.len() > start {
            self.spans.push((start as u32, self.buf.len() as u32));
        }
    }

    fn get(&self, (start, end): (u32, u32)) -> &str {
        &self.buf[start as usize..end as usize]
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        self.spans.iter().map(|&span| self.get(span))
    }

    /// Number of terms.
    fn len(&self) -> u32 {
        u32::try_from(self.spans.len()).unwrap_or(u32::MAX)
    }

    /// Sorts the terms and fills `counts` with the distinct terms and their frequencies.
    fn count(&mut self) {
        let Terms {
            buf, spans, counts, ..
        } = self;
        let term = |&(start, end): &(u32, u32)| &buf[start as usize..end as usize];
        spans.sort_unstable_by(|a, b| term(a).cmp(term(b)));
        counts.clear();
        for span in spans.iter() {
            match counts.last_mut() {
                Some((last, tf)) if term(last) == term(span) => *tf += 1,
                _ => counts.push((*span, 1)),
            }
        }
    }

    /// Distinct terms (sorted) with their frequencies, as filled by [`Self::count`].
    fn counted(&self) -> impl Iterator<Item = (&str, u32)> {
        self.counts.iter().map(|&(span, tf)| (self.get(span), tf))
    }
}

/// The BM25 contribution of one term to one document's score. Every path that scores a
/// document uses this one expression, so equal inputs give bit-identical scores.
#[inline]
fn term_score(params: Bm25Params, idf: f32, tf: u32, doc_len: u32, avgdl: f32) -> f32 {
    let tf = tf as f32;
    let norm = params.k1 * (1.0 - params.b + params.b * doc_len as f32 / avgdl);
    idf * tf * (params.k1 + 1.0) / (tf + norm)
}

/// Inverse document frequency of a term found in `df` of `n` documents.
fn idf(n: f32, df: f32) -> f32 {
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

/// Compaction runs once the delta holds more than this many documents (a handful under test,
/// so that the property tests compact often)...
const COMPACT_MIN: usize = if cfg!(test) { 8 } else { 256 };
/// ...or more than the base's size divided by this: the delta is scanned document by document
/// at every query, so it is kept to a quarter of the base...
const DELTA_DIVISOR: usize = 4;
/// ...or once more than this fraction of the base (1 / divisor) is removed or overwritten:
/// removed documents cost queries only a bit test per posting, so more of them are allowed.
const REMOVED_DIVISOR: usize = 2;

/// The hash of rustc's `FxHasher`: a rotate, xor and multiply per eight bytes, several times
/// faster than the default SipHash on short keys such as terms. Not meant to resist keys chosen
/// to collide; the keys here are the words of the memories.
#[derive(Debug, Default, Clone, Copy)]
struct TermHasher(u64);

impl TermHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for TermHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("eight bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Hash map keyed by terms.
type TermMap<K, V> = HashMap<K, V, BuildHasherDefault<TermHasher>>;

/// One document in one term's base posting list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BasePosting {
    /// The document's slot in the base.
    slot: u32,
    /// Occurrences of the term in the document.
    tf: u32,
    /// Length of the document in terms (kept here so scoring needs no second lookup).
    doc_len: u32,
}

/// The documents indexed at the last compaction, in flat arrays. Immutable once built and
/// shared behind an `Arc` by every branch of the index that built it.
#[derive(Debug, Default)]
struct Base {
    /// Slot -> document id, increasing.
    ids: Vec<MemoryId>,
    /// Slot -> document length in terms.
    doc_len: Vec<u32>,
    /// Term -> term number.
    terms: TermMap<Arc<str>, u32>,
    /// Term number -> term.
    names: Vec<Arc<str>>,
    /// Postings of term `t` are `postings[offsets[t]..offsets[t + 1]]`, ordered by slot.
    offsets: Vec<usize>,
    /// Every term's postings, one after the other.
    postings: Vec<BasePosting>,
}

impl Base {
    fn postings(&self, term: u32) -> &[BasePosting] {
        let t = term as usize;
        &self.postings[self.offsets[t]..self.offsets[t + 1]]
    }

    /// The slot of document `id`. Ids are increasing and nearly dense (ids are allocated in
    /// sequence; gaps are deleted documents), so the search starts where interpolation puts
    /// the id and gallops from there: one or two probes instead of a cache miss per level.
    fn slot(&self, id: MemoryId) -> Option<u32> {
        let ids = &self.ids;
        let (first, last) = (ids.first()?.get(), ids.last()?.get());
        let n = id.get();
        if n < first || n > last {
            return None;
        }
        let span = u128::from(last - first).max(1);
        let guess = (u128::from(n - first) * (ids.len() - 1) as u128 / span) as usize;
        let (lo, hi) = if ids[guess] < id {
            let mut step = 1;
            while guess + step < ids.len() && ids[guess + step] < id {
                step *= 2;
            }
            (guess + step / 2 + 1, (guess + step + 1).min(ids.len()))
        } else {
            let mut step = 1;
            while step <= guess && ids[guess - step] > id {
                step *= 2;
            }
            (guess.saturating_sub(step), guess + 1 - step / 2)
        };
        ids[lo..hi].binary_search(&id).ok().map(|i| (lo + i) as u32)
    }
}

/// A document indexed since the last compaction, its terms split by whether the base knows
/// them (by number, so that matching a query compares integers). Held by value in the delta
/// map: a clone is one or two reference counts, and indexing a document allocates only its
/// `known` list (plus `unknown` when it has terms the base lacks).
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeltaDoc {
    /// Length in terms.
    len: u32,
    /// (term number in the base, frequency), ordered by term number.
    known: Arc<[(u32, u32)]>,
    /// (term absent from the base, frequency), ordered by term; `None` when there are none.
    unknown: Option<UnknownTerms>,
}

/// Terms of a delta document that the base lacks, with their frequencies, ordered by term.
type UnknownTerms = Arc<[(Box<str>, u32)]>;

impl DeltaDoc {
    /// The document whose terms `terms` holds ([`Terms::fill`]). Each occurrence is looked up
    /// in the base and the term numbers are sorted as integers; only the terms the base lacks
    /// (usually none) are sorted as strings.
    fn new(base: &Base, terms: &mut Terms) -> Self {
        let mut known = std::mem::take(&mut terms.known);
        known.clear();
        let mut unknown_spans = Vec::new();
        for &span in &terms.spans {
            match base.terms.get(terms.get(span)) {
                Some(&t) => known.push((t, 1)),
                None => unknown_spans.push(span),
            }
        }
        known.sort_unstable();
        known.dedup_by(|next, kept| {
            let same = next.0 == kept.0;
            kept.1 += u32::from(same);
            same
        });
        let unknown = (!unknown_spans.is_empty()).then(|| {
            let term = |&(start, end): &(u32, u32)| &terms.buf[start as usize..end as usize];
            unknown_spans.sort_unstable_by(|a, b| term(a).cmp(term(b)));
            let mut unknown: Vec<(Box<str>, u32)> = Vec::new();
            for span in &unknown_spans {
                match unknown.last_mut() {
                    Some((last, tf)) if **last == *term(span) => *tf += 1,
                    _ => unknown.push((Box::from(term(span)), 1)),
                }
            }
            Arc::from(unknown)
        });
        let doc = Self {
            len: terms.len(),
            known: Arc::from(&known[..]),
            unknown,
        };
        terms.known = known;
        doc
    }

    /// The document of `text`, tokenised with this thread's reusable buffers.
    fn of_text(base: &Base, text: &str) -> Self {
        TERMS.with_borrow_mut(|terms| {
            terms.fill(text);
            Self::new(base, terms)
        })
    }

    fn unknown(&self) -> &[(Box<str>, u32)] {
        self.unknown.as_deref().unwrap_or(&[])
    }
}

/// Words in one chunk of a [`SlotSet`] (4,096 slots).
const CHUNK_WORDS: usize = 64;

/// A persistent set of base slots: a bitmap in chunks of 4,096 slots, each behind its own
/// `Arc`, so that a clone costs one reference count and adding a slot copies at most one
/// chunk (512 bytes) and the chunk table (one pointer per 4,096 slots).
#[derive(Debug, Clone, Default)]
struct SlotSet {
    chunks: Arc<Vec<Option<Arc<[u64; CHUNK_WORDS]>>>>,
    count: usize,
}

impl SlotSet {
    /// An empty set for slots below `slots`.
    fn with_slots(slots: usize) -> Self {
        Self {
            chunks: Arc::new(vec![None; slots.div_ceil(CHUNK_WORDS * 64)]),
            count: 0,
        }
    }

    fn contains(&self, slot: u32) -> bool {
        let slot = slot as usize;
        match &self.chunks[slot / (CHUNK_WORDS * 64)] {
            Some(chunk) => (chunk[(slot / 64) % CHUNK_WORDS] >> (slot % 64)) & 1 == 1,
            None => false,
        }
    }

    /// Adds `slot`, which must not be in the set yet.
    fn insert(&mut self, slot: u32) {
        let slot = slot as usize;
        let chunks = Arc::make_mut(&mut self.chunks);
        let chunk = chunks[slot / (CHUNK_WORDS * 64)].get_or_insert_with(|| Arc::new([0; CHUNK_WORDS]));
        let word = &mut Arc::make_mut(chunk)[(slot / 64) % CHUNK_WORDS];
        debug_assert!((*word >> (slot % 64)) & 1 == 0, "slot {slot} inserted twice");
        *word |= 1 << (slot % 64);
        self.count += 1;
    }

    /// The slots in the set, increasing.
    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.chunks.iter().enumerate().flat_map(|(c, chunk)| {
            chunk.iter().flat_map(move |words| {
                words.iter().enumerate().flat_map(move |(w, &word)| {
                    let base = (c * CHUNK_WORDS + w) * 64;
                    (0..64)
                        .filter(move |bit| (word >> bit) & 1 == 1)
                        .map(move |bit| (base + bit) as u32)
                })
            })
        })
    }
}

/// A query term with its base term number (if the base knows it) and its weight.
#[derive(Debug)]
struct QueryTerm<'q> {
    name: &'q str,
    base: Option<u32>,
    /// Live documents containing the term (base and delta).
    df: u32,
    idf: f32,
}

/// Per-thread buffers for scoring base documents, reused between queries.
#[derive(Debug, Default)]
struct Scratch {
    /// Slot -> score so far (zero outside a query).
    scores: Vec<f32>,
    /// Slot -> whether the current query has scored it (false outside a query).
    seen: Vec<bool>,
    /// Slots scored by the current query.
    touched: Vec<u32>,
    /// Base term number -> 1 + its position among the query's terms (0 outside a query).
    query_of: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Inverted index for BM25. Cloning is O(1) (a few reference counts) and a clone's changes
/// never reach the original. Equality is equality of content: the same documents with the same
/// terms, however the index got there (whatever was compacted when).
#[derive(Debug, Clone)]
pub(crate) struct Bm25Index {
    /// Documents as of the last compaction.
    base: Arc<Base>,
    /// Base slots whose document was removed or overwritten since.
    removed: SlotSet,
    /// Documents indexed since the last compaction (a document overwritten since is both here
    /// and in `removed`).
    delta: OrdMap<MemoryId, DeltaDoc>,
    /// Number of indexed documents (including those without any term).
    docs: usize,
    /// Sum of document lengths in terms.
    total_len: u64,
}

/// The BM25 index as a store file holds it: its layout as it is in memory (the base, its
/// removed slots and the delta), so that saving copies it and loading restores it, neither
/// merging nor tokenising. Increasing numbers are written as gaps from the previous one (the
/// first from 0): small numbers, short in the file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct IndexSection {
    /// Base slot -> document id, as gaps.
    pub(crate) base_ids: Vec<u64>,
    /// Base slots removed or overwritten since the base was built, as gaps.
    pub(crate) removed: Vec<u32>,
    /// Term number -> term: the base's terms, then the terms only delta documents have.
    pub(crate) terms: Vec<Box<str>>,
    /// Base term -> number of its postings.
    pub(crate) term_docs: Vec<u32>,
    /// (slot gap, frequency) of each base term's postings, term after term.
    pub(crate) postings: Vec<(u32, u32)>,
    /// Delta documents, increasing: (id gap, number of distinct terms).
    pub(crate) delta_docs: Vec<(u64, u32)>,
    /// (term number, frequency) of each delta document, by term number, one after the other.
    pub(crate) delta_terms: Vec<(u32, u32)>,
}

impl Default for Bm25Index {
    fn default() -> Self {
        Self {
            base: Arc::default(),
            removed: SlotSet::with_slots(0),
            delta: OrdMap::new(),
            docs: 0,
            total_len: 0,
        }
    }
}

impl PartialEq for Bm25Index {
    fn eq(&self, other: &Self) -> bool {
        if self.docs != other.docs || self.total_len != other.total_len {
            return false;
        }
        if Arc::ptr_eq(&self.base, &other.base)
            && self.removed.count == other.removed.count
            && (Arc::ptr_eq(&self.removed.chunks, &other.removed.chunks)
                || self.removed.chunks == other.removed.chunks)
            && self.delta == other.delta
        {
            return true;
        }
        self.content() == other.content()
    }
}

impl Bm25Index {
    /// Indexes `text` as document `id` (which must not be indexed yet).
    pub(crate) fn insert(&mut self, id: MemoryId, text: &str) {
        let doc = DeltaDoc::of_text(&self.base, text);
        let len = doc.len;
        let previous = self.delta.insert(id, doc);
        debug_assert!(previous.is_none(), "{id} indexed twice");
        debug_assert!(
            self.base.slot(id).is_none_or(|slot| self.removed.contains(slot)),
            "{id} indexed twice"
        );
        self.docs += 1;
        self.total_len += u64::from(len);
        self.compact_if_due();
    }

    /// Replaces the text of document `id`, which must be indexed: the same as [`Self::remove`]
    /// then [`Self::insert`], with one step in the delta instead of two.
    pub(crate) fn replace(&mut self, id: MemoryId, text: &str) {
        let doc = DeltaDoc::of_text(&self.base, text);
        let len = doc.len;
        let old_len = match self.delta.insert(id, doc) {
            Some(old) => old.len,
            None => {
                let slot = self
                    .base
                    .slot(id)
                    .expect("replacing a document that is not indexed");
                self.removed.insert(slot);
                self.base.doc_len[slot as usize]
            }
        };
        self.total_len = self.total_len - u64::from(old_len) + u64::from(len);
        self.compact_if_due();
    }

    /// Removes document `id`, which must be indexed. A base document that was not overwritten
    /// cannot be in the delta, so removing it costs a bit and no search of the delta.
    pub(crate) fn remove(&mut self, id: MemoryId) {
        let in_base = self.base.slot(id).filter(|&slot| !self.removed.contains(slot));
        let len = match in_base {
            Some(slot) => {
                self.removed.insert(slot);
                self.base.doc_len[slot as usize]
            }
            None => {
                self.delta
                    .remove(&id)
                    .expect("removing a document that is not indexed")
                    .len
            }
        };
        self.docs -= 1;
        self.total_len -= u64::from(len);
        self.compact_if_due();
    }

    /// Number of indexed documents.
    #[cfg(test)]
    pub(crate) fn docs(&self) -> usize {
        self.docs
    }

    /// Whether the index has changes since its last compaction.
    #[cfg(test)]
    pub(crate) fn has_delta(&self) -> bool {
        !self.delta.is_empty() || self.removed.count > 0
    }

    fn compact_if_due(&mut self) {
        let base = self.base.ids.len();
        if self.delta.len() > COMPACT_MIN.max(base / DELTA_DIVISOR)
            || self.removed.count > COMPACT_MIN.max(base / REMOVED_DIVISOR)
        {
            self.compact();
        }
    }

    /// Rebuilds the base from the live documents and empties the delta. Costs time linear in
    /// the number of postings; [`Self::compact_if_due`] calls it rarely enough to amortise that
    /// to O(1) per change.
    pub(crate) fn compact(&mut self) {
        let base = self.rebuilt_base();
        self.removed = SlotSet::with_slots(base.ids.len());
        self.base = Arc::new(base);
        self.delta = OrdMap::new();
    }

    /// The index of `docs` (ids increasing), built in one pass straight into a base, as
    /// [`Self::compact`] would leave it: what loading a version 1 store file (which has no
    /// index section) uses instead of indexing its documents one by one.
    pub(crate) fn from_documents<'a>(docs: impl ExactSizeIterator<Item = (MemoryId, &'a str)>) -> Self {
        let mut ids = Vec::with_capacity(docs.len());
        let mut doc_len = Vec::with_capacity(docs.len());
        let mut terms: TermMap<Arc<str>, u32> = TermMap::default();
        let mut names: Vec<Arc<str>> = Vec::new();
        // Each document's (term number, frequency), one document after the other.
        let mut doc_terms: Vec<(u32, u32)> = Vec::new();
        let mut doc_ends: Vec<usize> = Vec::with_capacity(docs.len());
        let mut counts: Vec<usize> = Vec::new();
        let mut text_terms = Terms::default();
        let mut numbered: Vec<(u32, u32)> = Vec::new();
        for (id, text) in docs {
            debug_assert!(ids.last().is_none_or(|&last| last < id), "ids out of order");
            text_terms.fill(text);
            // Each occurrence numbered, then the numbers sorted as integers (like
            // `DeltaDoc::new`), rather than the terms sorted as strings.
            numbered.clear();
            for &span in &text_terms.spans {
                let name = text_terms.get(span);
                let t = match terms.get(name) {
                    Some(&t) => t,
                    None => {
                        let t = names.len() as u32;
                        let name: Arc<str> = Arc::from(name);
                        terms.insert(Arc::clone(&name), t);
                        names.push(name);
                        counts.push(0);
                        t
                    }
                };
                numbered.push((t, 1));
            }
            numbered.sort_unstable();
            numbered.dedup_by(|next, kept| {
                let same = next.0 == kept.0;
                kept.1 += u32::from(same);
                same
            });
            for &(t, tf) in &numbered {
                counts[t as usize] += 1;
                doc_terms.push((t, tf));
            }
            doc_ends.push(doc_terms.len());
            ids.push(id);
            doc_len.push(text_terms.len());
        }
        // Postings grouped by term (a counting sort); documents come in slot order, so each
        // term's postings are ordered by slot.
        let mut offsets = Vec::with_capacity(counts.len() + 1);
        offsets.push(0);
        for count in &counts {
            offsets.push(offsets.last().copied().unwrap_or(0) + count);
        }
        let mut fill = offsets.clone();
        let empty = BasePosting {
            slot: 0,
            tf: 0,
            doc_len: 0,
        };
        let mut postings = vec![empty; doc_terms.len()];
        let mut start = 0;
        for (slot, &end) in doc_ends.iter().enumerate() {
            for &(t, tf) in &doc_terms[start..end] {
                postings[fill[t as usize]] = BasePosting {
                    slot: slot as u32,
                    tf,
                    doc_len: doc_len[slot],
                };
                fill[t as usize] += 1;
            }
            start = end;
        }
        let docs = ids.len();
        let total_len = doc_len.iter().map(|&len| u64::from(len)).sum();
        Self {
            removed: SlotSet::with_slots(docs),
            base: Arc::new(Base {
                ids,
                doc_len,
                terms,
                names,
                offsets,
                postings,
            }),
            delta: OrdMap::new(),
            docs,
            total_len,
        }
    }

    /// The index as saved in a store file: a copy of its layout.
    pub(crate) fn section(&self) -> IndexSection {
        let base = &*self.base;
        let gaps64 = |values: &mut dyn Iterator<Item = u64>| {
            let mut previous = 0;
            values
                .map(|value| {
                    let gap = value - previous;
                    previous = value;
                    gap
                })
                .collect::<Vec<u64>>()
        };
        let mut postings = Vec::with_capacity(base.postings.len());
        for t in 0..base.names.len() {
            let mut previous = 0;
            for p in base.postings(t as u32) {
                postings.push((p.slot - previous, p.tf));
                previous = p.slot;
            }
        }
        let mut terms: Vec<Box<str>> = base.names.iter().map(|name| Box::from(&**name)).collect();
        // Terms the base lacks (rare), numbered after the base's.
        let mut new_numbers: TermMap<&str, u32> = TermMap::default();
        let mut delta_docs = Vec::with_capacity(self.delta.len());
        let mut delta_terms = Vec::new();
        let mut previous = 0;
        for (id, doc) in &self.delta {
            let start = delta_terms.len();
            delta_terms.extend_from_slice(&doc.known);
            for (name, tf) in doc.unknown() {
                let t = *new_numbers.entry(&**name).or_insert_with(|| {
                    terms.push(name.clone());
                    (terms.len() - 1) as u32
                });
                delta_terms.push((t, *tf));
            }
            // Known terms are numbered below every new one; the new ones need sorting.
            delta_terms[start..].sort_unstable();
            delta_docs.push((id.get() - previous, (delta_terms.len() - start) as u32));
            previous = id.get();
        }
        let removed = gaps64(&mut self.removed.iter().map(u64::from));
        IndexSection {
            base_ids: gaps64(&mut base.ids.iter().map(|id| id.get())),
            removed: removed.into_iter().map(|gap| gap as u32).collect(),
            terms,
            term_docs: base.offsets.windows(2).map(|w| (w[1] - w[0]) as u32).collect(),
            postings,
            delta_docs,
            delta_terms,
        }
    }

    /// The index [`Self::section`] saved, for the live documents `live` (increasing). Checks
    /// that the section is well formed and agrees with `live` (increasing ids and slots, every
    /// number in range, positive frequencies, distinct terms, and the base's documents not
    /// removed plus the delta's being exactly `live`), and says what is wrong otherwise; it
    /// cannot check that the terms are those of the texts.
    pub(crate) fn from_section(live: &[MemoryId], section: IndexSection) -> Result<Self, String> {
        let IndexSection {
            base_ids,
            removed,
            terms,
            term_docs,
            postings: gaps,
            delta_docs,
            delta_terms,
        } = section;
        // Increasing numbers from their gaps (every gap after the first at least 1).
        fn ungap(gaps: impl Iterator<Item = u64>, what: &str) -> Result<Vec<u64>, String> {
            let mut value = 0u64;
            gaps.enumerate()
                .map(|(i, gap)| {
                    value = value
                        .checked_add(gap)
                        .filter(|_| i == 0 || gap > 0)
                        .ok_or_else(|| format!("{what} not increasing in the index section"))?;
                    Ok(value)
                })
                .collect()
        }
        let ids: Vec<MemoryId> = ungap(base_ids.into_iter(), "base ids")?
            .into_iter()
            .map(MemoryId::new)
            .collect();
        let slots = ids.len();
        let mut removed_set = SlotSet::with_slots(slots);
        for slot in ungap(removed.into_iter().map(u64::from), "removed slots")? {
            if slot >= slots as u64 {
                return Err(format!("removed slot {slot} of {slots} in the index section"));
            }
            removed_set.insert(slot as u32);
        }
        if term_docs.len() > terms.len() {
            return Err(format!(
                "{} base terms but {} terms in the index section",
                term_docs.len(),
                terms.len()
            ));
        }
        let listed: u64 = term_docs.iter().map(|&n| u64::from(n)).sum();
        if listed != gaps.len() as u64 {
            return Err(format!(
                "{listed} postings listed by the terms of the index section, {} present",
                gaps.len()
            ));
        }
        // Base postings from their gaps, and document lengths summed from the frequencies.
        let mut doc_len = vec![0u64; slots];
        let mut postings = Vec::with_capacity(gaps.len());
        let mut offsets = Vec::with_capacity(term_docs.len() + 1);
        offsets.push(0);
        let mut start = 0;
        for (t, &n) in term_docs.iter().enumerate() {
            let mut slot = 0u64;
            for (i, &(gap, tf)) in gaps[start..start + n as usize].iter().enumerate() {
                slot += u64::from(gap);
                if (i > 0 && gap == 0) || slot >= slots as u64 || tf == 0 {
                    return Err(format!(
                        "bad posting of term {t} (gap {gap}, frequency {tf}, {slots} slots) \
                         in the index section"
                    ));
                }
                doc_len[slot as usize] += u64::from(tf);
                postings.push(BasePosting {
                    slot: slot as u32,
                    tf,
                    doc_len: 0,
                });
            }
            start += n as usize;
            offsets.push(postings.len());
        }
        let doc_len: Vec<u32> = doc_len
            .into_iter()
            .map(u32::try_from)
            .collect::<Result<_, _>>()
            .map_err(|_| "a document too long in the index section")?;
        for p in &mut postings {
            p.doc_len = doc_len[p.slot as usize];
        }
        let base_terms = term_docs.len();
        let mut names: Vec<Arc<str>> = Vec::with_capacity(base_terms);
        let mut term_map: TermMap<Arc<str>, u32> = TermMap::default();
        let mut new_names: TermMap<&str, ()> = TermMap::default();
        for (t, name) in terms.iter().enumerate() {
            let twice = if t < base_terms {
                let name: Arc<str> = Arc::from(&**name);
                names.push(Arc::clone(&name));
                term_map.insert(name, t as u32).is_some()
            } else {
                term_map.contains_key(&**name) || new_names.insert(name, ()).is_some()
            };
            if twice {
                return Err(format!("term {name:?} listed twice in the index section"));
            }
        }
        let base = Base {
            ids,
            doc_len,
            terms: term_map,
            names,
            offsets,
            postings,
        };

        // Delta documents.
        let listed: u64 = delta_docs.iter().map(|&(_, n)| u64::from(n)).sum();
        if listed != delta_terms.len() as u64 {
            return Err(format!(
                "{listed} terms listed by the delta documents of the index section, {} present",
                delta_terms.len()
            ));
        }
        let delta_ids = ungap(delta_docs.iter().map(|&(gap, _)| gap), "delta ids")?;
        let mut delta = OrdMap::new();
        let mut start = 0;
        for (&id, &(_, n)) in delta_ids.iter().zip(&delta_docs) {
            let own = &delta_terms[start..start + n as usize];
            start += n as usize;
            let mut known = Vec::with_capacity(own.len());
            let mut unknown: Vec<(Box<str>, u32)> = Vec::new();
            let mut len = 0u64;
            for (i, &(t, tf)) in own.iter().enumerate() {
                if t as usize >= terms.len() || tf == 0 || (i > 0 && own[i - 1].0 >= t) {
                    return Err(format!(
                        "bad term {t} (of {}) with frequency {tf} in a delta document of the \
                         index section",
                        terms.len()
                    ));
                }
                if (t as usize) < base_terms {
                    known.push((t, tf));
                } else {
                    unknown.push((terms[t as usize].clone(), tf));
                }
                len += u64::from(tf);
            }
            unknown.sort_unstable();
            let doc = DeltaDoc {
                len: u32::try_from(len).map_err(|_| "a document too long in the index section")?,
                known: Arc::from(known),
                unknown: (!unknown.is_empty()).then(|| Arc::from(unknown)),
            };
            delta.insert(MemoryId::new(id), doc);
        }

        // The base's documents not removed, and the delta's, must be the live ones, once each.
        let mut in_base = base
            .ids
            .iter()
            .zip(&base.doc_len)
            .enumerate()
            .filter(|&(slot, _)| !removed_set.contains(slot as u32))
            .map(|(_, (&id, &len))| (id, len))
            .peekable();
        let mut in_delta = delta.iter().map(|(&id, doc)| (id, doc.len)).peekable();
        let mut total_len = 0u64;
        for &id in live {
            let from_base = in_base.next_if(|&(base_id, _)| base_id == id);
            let from_delta = in_delta.next_if(|&(delta_id, _)| delta_id == id);
            match (from_base, from_delta) {
                (Some((_, len)), None) | (None, Some((_, len))) => total_len += u64::from(len),
                _ => return Err(format!("the index section and the log disagree on memory {id}")),
            }
        }
        if let Some((id, _)) = in_base.next().or_else(|| in_delta.next()) {
            return Err(format!(
                "the index section indexes memory {id}, which the log does not keep"
            ));
        }
        Ok(Self {
            base: Arc::new(base),
            removed: removed_set,
            delta,
            docs: live.len(),
            total_len,
        })
    }

    /// The base [`Self::compact`] installs: every live document, in flat arrays.
    fn rebuilt_base(&self) -> Base {
        let old = &*self.base;
        let mut ids = Vec::with_capacity(self.docs);
        let mut doc_len = Vec::with_capacity(self.docs);
        // Old slot -> new slot (u32::MAX for removed documents), and the delta's new slots.
        let mut remap = vec![u32::MAX; old.ids.len()];
        let mut delta_slots: Vec<(u32, &DeltaDoc)> = Vec::with_capacity(self.delta.len());
        let mut delta = self.delta.iter().peekable();
        for (slot, &id) in old.ids.iter().enumerate() {
            while let Some((&delta_id, doc)) = delta.next_if(|(delta_id, _)| **delta_id < id) {
                delta_slots.push((ids.len() as u32, doc));
                ids.push(delta_id);
                doc_len.push(doc.len);
            }
            if !self.removed.contains(slot as u32) {
                remap[slot] = ids.len() as u32;
                ids.push(id);
                doc_len.push(old.doc_len[slot]);
            }
        }
        for (&delta_id, doc) in delta {
            delta_slots.push((ids.len() as u32, doc));
            ids.push(delta_id);
            doc_len.push(doc.len);
        }

        // Terms: the old base's numbers, then the delta's new terms. The delta's postings as
        // (term, posting), reading each document's terms once: the documents lie scattered in
        // memory, the flat list does not.
        let old_terms = old.names.len();
        let mut new_names: Vec<&str> = Vec::new();
        let mut new_numbers: TermMap<&str, u32> = TermMap::default();
        let mut delta_counts = vec![0usize; old_terms];
        let mut delta_flat: Vec<(u32, BasePosting)> = Vec::with_capacity(self.delta.len() * 16);
        for &(slot, doc) in &delta_slots {
            let posting = |tf| BasePosting {
                slot,
                tf,
                doc_len: doc.len,
            };
            for &(t, tf) in doc.known.iter() {
                delta_counts[t as usize] += 1;
                delta_flat.push((t, posting(tf)));
            }
            for (name, tf) in doc.unknown() {
                let t = *new_numbers.entry(&**name).or_insert_with(|| {
                    new_names.push(name);
                    delta_counts.push(0);
                    (delta_counts.len() - 1) as u32
                });
                delta_counts[t as usize] += 1;
                delta_flat.push((t, posting(*tf)));
            }
        }

        // The delta's postings grouped by term (a counting sort), each group ordered by slot.
        let mut delta_offsets = Vec::with_capacity(delta_counts.len() + 1);
        delta_offsets.push(0);
        for count in &delta_counts {
            delta_offsets.push(delta_offsets.last().copied().unwrap_or(0) + count);
        }
        let mut fill = delta_offsets.clone();
        let empty = BasePosting {
            slot: 0,
            tf: 0,
            doc_len: 0,
        };
        let mut delta_postings = vec![empty; delta_flat.len()];
        for &(t, posting) in &delta_flat {
            delta_postings[fill[t as usize]] = posting;
            fill[t as usize] += 1;
        }

        // Each term's surviving base postings merged with its delta postings, by slot.
        let live_postings = old.postings.len() - old.postings.len().min(self.removed.count * 16);
        let mut base = Base {
            ids,
            doc_len,
            terms: TermMap::with_capacity_and_hasher(delta_counts.len(), Default::default()),
            names: Vec::with_capacity(delta_counts.len()),
            offsets: Vec::with_capacity(delta_counts.len() + 1),
            postings: Vec::with_capacity(live_postings + delta_postings.len()),
        };
        base.offsets.push(0);
        for t in 0..delta_counts.len() {
            let old_part: &[BasePosting] = if t < old_terms {
                old.postings(t as u32)
            } else {
                &[]
            };
            let mut surviving = old_part.iter().filter_map(|p| {
                let slot = remap[p.slot as usize];
                (slot != u32::MAX).then_some(BasePosting { slot, ..*p })
            });
            let mut next_old = surviving.next();
            for &d in &delta_postings[delta_offsets[t]..delta_offsets[t + 1]] {
                while let Some(p) = next_old.filter(|p| p.slot < d.slot) {
                    base.postings.push(p);
                    next_old = surviving.next();
                }
                base.postings.push(d);
            }
            base.postings.extend(next_old);
            base.postings.extend(surviving);
            if base.postings.len() > *base.offsets.last().unwrap_or(&0) {
                let name = if t < old_terms {
                    Arc::clone(&old.names[t])
                } else {
                    Arc::from(new_names[t - old_terms])
                };
                base.terms.insert(Arc::clone(&name), base.names.len() as u32);
                base.names.push(name);
                base.offsets.push(base.postings.len());
            }
        }
        base
    }

    /// Every live (term, document, frequency, document length), sorted: the index's content
    /// independent of its layout.
    fn content(&self) -> Vec<(&str, MemoryId, u32, u32)> {
        let base = &*self.base;
        let mut content = Vec::new();
        for (t, name) in base.names.iter().enumerate() {
            for p in base.postings(t as u32) {
                if !self.removed.contains(p.slot) {
                    content.push((&**name, base.ids[p.slot as usize], p.tf, p.doc_len));
                }
            }
        }
        for (&id, doc) in &self.delta {
            for &(t, tf) in doc.known.iter() {
                content.push((&*base.names[t as usize], id, tf, doc.len));
            }
            for (name, tf) in doc.unknown() {
                content.push((&**name, id, *tf, doc.len));
            }
        }
        content.sort_unstable();
        content
    }

    /// Best `k` documents for `query` scoring at least `min_score`, best first, ties by id.
    ///
    /// Each document's score is summed over the query terms in sorted order, with document
    /// frequencies counted over the live documents only, so results equal those of an index
    /// rebuilt from scratch, bit for bit. Base postings are scored into a dense per-thread
    /// array indexed by slot; delta documents are matched one by one.
    pub(crate) fn search(&self, params: Bm25Params, query: &str, k: usize, min_score: f32) -> Vec<Hit> {
        if k == 0 || self.docs == 0 {
            return Vec::new();
        }
        let base = &*self.base;
        let mut query_terms = Terms::of(query);
        query_terms.count();
        let mut terms: Vec<QueryTerm<'_>> = query_terms
            .counted()
            .map(|(name, _)| {
                let t = base.terms.get(name).copied();
                let df = match t {
                    None => 0,
                    Some(t) if self.removed.count == 0 => base.postings(t).len() as u32,
                    Some(t) => {
                        let postings = base.postings(t);
                        postings.iter().filter(|p| !self.removed.contains(p.slot)).count() as u32
                    }
                };
                QueryTerm {
                    name,
                    base: t,
                    df,
                    idf: 0.0,
                }
            })
            .collect();

        SCRATCH.with_borrow_mut(|scratch| self.score(scratch, params, &mut terms, k, min_score))
    }

    /// [`Self::search`] once the query terms are resolved and their base document frequencies
    /// counted.
    fn score(
        &self,
        scratch: &mut Scratch,
        params: Bm25Params,
        terms: &mut [QueryTerm<'_>],
        k: usize,
        min_score: f32,
    ) -> Vec<Hit> {
        let base = &*self.base;
        if scratch.scores.len() < base.ids.len() {
            scratch.scores.resize(base.ids.len(), 0.0);
            scratch.seen.resize(base.ids.len(), false);
        }
        if scratch.query_of.len() < base.names.len() {
            scratch.query_of.resize(base.names.len(), 0);
        }
        let Scratch {
            scores,
            seen,
            touched,
            query_of,
        } = scratch;

        // Delta documents matching a term: (id, length, first of `terms.len()` frequencies).
        for (q, term) in terms.iter().enumerate() {
            if let Some(t) = term.base {
                query_of[t as usize] = q as u32 + 1;
            }
        }
        let unknown_terms = terms.iter().any(|term| term.base.is_none());
        let mut delta_hits: Vec<(MemoryId, u32, usize)> = Vec::new();
        let mut delta_tfs: Vec<u32> = Vec::new();
        for (&id, doc) in &self.delta {
            // A branch-free test first: most documents of a large delta share no query term.
            let known_hit = doc
                .known
                .iter()
                .fold(0, |hit, &(t, _)| hit | query_of[t as usize])
                != 0;
            if !known_hit && (!unknown_terms || doc.unknown.is_none()) {
                continue;
            }
            let start = delta_tfs.len();
            delta_tfs.resize(start + terms.len(), 0);
            let tfs = &mut delta_tfs[start..];
            let mut any = false;
            for &(t, tf) in &*doc.known {
                let q = query_of[t as usize];
                if q != 0 {
                    tfs[q as usize - 1] = tf;
                    any = true;
                }
            }
            if unknown_terms {
                for (name, tf) in doc.unknown() {
                    let q = terms
                        .iter()
                        .position(|term| term.base.is_none() && term.name == &**name);
                    if let Some(q) = q {
                        tfs[q] = *tf;
                        any = true;
                    }
                }
            }
            if any {
                for (term, &tf) in terms.iter_mut().zip(tfs.iter()) {
                    term.df += u32::from(tf > 0);
                }
                delta_hits.push((id, doc.len, start));
            } else {
                delta_tfs.truncate(start);
            }
        }
        for term in terms.iter() {
            if let Some(t) = term.base {
                query_of[t as usize] = 0;
            }
        }

        let n = self.docs as f32;
        let avgdl = (self.total_len as f32 / n).max(f32::MIN_POSITIVE);
        for term in terms.iter_mut() {
            term.idf = idf(n, term.df as f32);
        }

        let mut top = TopK::new(k, min_score);
        for &(id, len, start) in &delta_hits {
            let mut score = 0.0f32;
            for (term, &tf) in terms.iter().zip(&delta_tfs[start..]) {
                if tf > 0 {
                    score += term_score(params, term.idf, tf, len, avgdl);
                }
            }
            top.push(id, score);
        }
        for term in terms.iter() {
            let Some(t) = term.base else { continue };
            for p in base.postings(t) {
                if self.removed.count > 0 && self.removed.contains(p.slot) {
                    continue;
                }
                let slot = p.slot as usize;
                if !seen[slot] {
                    seen[slot] = true;
                    touched.push(p.slot);
                }
                scores[slot] += term_score(params, term.idf, p.tf, p.doc_len, avgdl);
            }
        }
        for slot in touched.drain(..) {
            let slot = slot as usize;
            top.push(base.ids[slot], scores[slot]);
            scores[slot] = 0.0;
            seen[slot] = false;
        }
        top.into_sorted()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenize_lowercases_and_splits_on_non_alphanumerics() {
        assert_eq!(
            tokenize("Alice moved to Lyon, in 2023!"),
            ["alice", "moved", "to", "lyon", "in", "2023"]
        );
        assert_eq!(tokenize("Ärger--ÉCOLE"), ["ärger", "école"]);
        assert!(tokenize(" ... ").is_empty());
    }

    proptest::proptest! {
        #[test]
        fn tokenize_splits_any_text_like_a_char_by_char_split(
            text in proptest::prop_oneof!["[ -~\t\n]{0,40}", "\\PC{0,40}"],
        ) {
            let expected: Vec<String> = text
                .split(|c: char| !c.is_alphanumeric())
                .filter(|word| !word.is_empty())
                .map(|word| word.chars().flat_map(char::to_lowercase).collect())
                .collect();
            proptest::prop_assert_eq!(tokenize(&text), expected);
        }
    }

    #[test]
    fn term_frequencies_count_repeats() {
        let mut terms = Terms::of("the cat saw the dog");
        assert_eq!(terms.len(), 5);
        terms.count();
        let terms: Vec<(&str, u32)> = terms.counted().collect();
        assert_eq!(
            terms.iter().find(|(t, _)| *t == "the").map(|(_, tf)| *tf),
            Some(2)
        );
        assert_eq!(terms.len(), 4);
    }

    #[test]
    fn rarer_terms_and_shorter_documents_score_higher() {
        let mut index = Bm25Index::default();
        index.insert(MemoryId::new(1), "alice likes tea");
        index.insert(MemoryId::new(2), "bob likes coffee and long walks by the river");
        index.insert(MemoryId::new(3), "carol likes tea");
        let hits = index.search(Bm25Params::default(), "alice tea", 10, 0.0);
        assert_eq!(hits[0].id, MemoryId::new(1));
        assert_eq!(hits[1].id, MemoryId::new(3));
        assert_eq!(hits.len(), 2);
        let hits = index.search(Bm25Params::default(), "likes", 10, 0.0);
        assert_eq!(hits.len(), 3);
        assert_eq!(hits[2].id, MemoryId::new(2), "the longest document ranks last");
    }

    #[test]
    fn remove_undoes_insert() {
        let mut index = Bm25Index::default();
        index.insert(MemoryId::new(1), "alice likes tea");
        let before = index.clone();
        index.insert(MemoryId::new(2), "tea tea and more tea");
        index.remove(MemoryId::new(2));
        assert_eq!(index, before);
        assert_eq!(index.docs(), 1);
    }

    #[test]
    fn slots_are_found_by_interpolation_despite_gaps() {
        let ids: Vec<u64> = (1..2000u64)
            .filter(|n| n % 7 != 0 && !(300..900).contains(n))
            .collect();
        let base = Base {
            ids: ids.iter().map(|&n| MemoryId::new(n)).collect(),
            ..Base::default()
        };
        for n in 0..2100u64 {
            let expected = ids.binary_search(&n).ok().map(|slot| slot as u32);
            assert_eq!(base.slot(MemoryId::new(n)), expected, "m{n}");
        }
        assert_eq!(Base::default().slot(MemoryId::new(1)), None);
    }

    #[test]
    fn compaction_changes_layout_not_content_or_scores() {
        let mut index = Bm25Index::default();
        for i in 1..=50u64 {
            index.insert(
                MemoryId::new(i),
                &format!("fact {i} about topic {} and more", i % 7),
            );
        }
        for i in (1..=50u64).step_by(3) {
            index.remove(MemoryId::new(i));
        }
        for i in (2..=50u64).step_by(5).filter(|i| i % 3 != 1) {
            index.remove(MemoryId::new(i));
            index.insert(MemoryId::new(i), &format!("rewritten {i} topic {}", i % 3));
        }
        let mut compacted = index.clone();
        compacted.compact();
        assert!(index.has_delta() && !compacted.has_delta());
        assert_eq!(compacted, index);
        for query in ["topic 3", "rewritten fact", "more about 4", "unknown"] {
            assert_eq!(
                compacted.search(Bm25Params::default(), query, 7, 0.0),
                index.search(Bm25Params::default(), query, 7, 0.0),
                "{query}"
            );
        }
        // Changes after a compaction go to a fresh delta on top of the new base.
        compacted.remove(MemoryId::new(3));
        compacted.insert(MemoryId::new(51), "fresh topic 3");
        index.remove(MemoryId::new(3));
        index.insert(MemoryId::new(51), "fresh topic 3");
        // Replacing equals removing and inserting, for base and delta documents alike.
        for i in [5, 51] {
            compacted.replace(MemoryId::new(i), "replaced fresh text");
            index.remove(MemoryId::new(i));
            index.insert(MemoryId::new(i), "replaced fresh text");
        }
        assert_eq!(compacted, index);
        assert_eq!(
            compacted.search(Bm25Params::default(), "fresh topic", 5, 0.0),
            index.search(Bm25Params::default(), "fresh topic", 5, 0.0)
        );
    }
}
