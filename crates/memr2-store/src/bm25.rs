//! BM25 retrieval over memory texts, kept up to date incrementally in persistent maps.

use std::sync::Arc;

use imbl::{HashMap, OrdMap};
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
    let mut terms = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        if ch.is_alphanumeric() {
            if ch.is_ascii() {
                current.push(ch.to_ascii_lowercase());
            } else {
                current.extend(ch.to_lowercase());
            }
        } else if !current.is_empty() {
            terms.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        terms.push(current);
    }
    terms
}

/// Distinct terms of `text` (sorted) with their frequencies, and the text's length in terms.
fn term_frequencies(text: &str) -> (Vec<(String, u32)>, u32) {
    let mut terms = tokenize(text);
    let len = u32::try_from(terms.len()).unwrap_or(u32::MAX);
    terms.sort_unstable();
    let mut counted: Vec<(String, u32)> = Vec::with_capacity(terms.len());
    for term in terms {
        match counted.last_mut() {
            Some((last, tf)) if *last == term => *tf += 1,
            _ => counted.push((term, 1)),
        }
    }
    (counted, len)
}

/// One document in one term's posting list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Posting {
    /// Occurrences of the term in the document.
    tf: u32,
    /// Length of the document in terms (kept here so scoring needs no second lookup).
    doc_len: u32,
}

/// Inverted index for BM25. Every map is persistent, so cloning the index is O(1) and a
/// clone's changes never reach the original.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Bm25Index {
    /// Term -> documents containing it, ordered by id. Document frequency is the list's length.
    postings: HashMap<Arc<str>, OrdMap<MemoryId, Posting>>,
    /// Number of indexed documents (including those without any term).
    docs: usize,
    /// Sum of document lengths in terms.
    total_len: u64,
}

impl Bm25Index {
    /// Indexes `text` as document `id` (which must not be indexed yet).
    pub(crate) fn insert(&mut self, id: MemoryId, text: &str) {
        let (terms, len) = term_frequencies(text);
        for (term, tf) in terms {
            let posting = Posting { tf, doc_len: len };
            if let Some(list) = self.postings.get_mut(term.as_str()) {
                list.insert(id, posting);
            } else {
                self.postings.insert(Arc::from(term), OrdMap::unit(id, posting));
            }
        }
        self.docs += 1;
        self.total_len += u64::from(len);
    }

    /// Removes document `id`, which was indexed with `text`.
    pub(crate) fn remove(&mut self, id: MemoryId, text: &str) {
        let (terms, len) = term_frequencies(text);
        for (term, _) in terms {
            if let Some(list) = self.postings.get_mut(term.as_str()) {
                list.remove(&id);
                if list.is_empty() {
                    self.postings.remove(term.as_str());
                }
            }
        }
        self.docs -= 1;
        self.total_len -= u64::from(len);
    }

    /// Number of indexed documents.
    #[cfg(test)]
    pub(crate) fn docs(&self) -> usize {
        self.docs
    }

    /// Best `k` documents for `query` scoring at least `min_score`, best first, ties by id.
    ///
    /// Posting lists are ordered by id, so the query terms' lists are merged in one pass and
    /// each document's score is summed in the same (sorted) term order every time: results are
    /// deterministic and equal for equal indexes.
    pub(crate) fn search(&self, params: Bm25Params, query: &str, k: usize, min_score: f32) -> Vec<Hit> {
        if k == 0 || self.docs == 0 {
            return Vec::new();
        }
        let mut terms = tokenize(query);
        terms.sort_unstable();
        terms.dedup();
        let n = self.docs as f32;
        let avgdl = (self.total_len as f32 / n).max(f32::MIN_POSITIVE);
        let mut cursors = Vec::with_capacity(terms.len());
        for term in &terms {
            if let Some(list) = self.postings.get(term.as_str()) {
                let df = list.len() as f32;
                let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                let mut iter = list.iter();
                let head = iter.next().map(|(id, p)| (*id, *p));
                cursors.push((idf, head, iter));
            }
        }
        let mut top = TopK::new(k, min_score);
        while let Some(id) = cursors
            .iter()
            .filter_map(|(_, head, _)| head.map(|(id, _)| id))
            .min()
        {
            let mut score = 0.0f32;
            for (idf, head, iter) in &mut cursors {
                if let Some((head_id, p)) = *head
                    && head_id == id
                {
                    let tf = p.tf as f32;
                    let norm = params.k1 * (1.0 - params.b + params.b * p.doc_len as f32 / avgdl);
                    score += *idf * tf * (params.k1 + 1.0) / (tf + norm);
                    *head = iter.next().map(|(id, p)| (*id, *p));
                }
            }
            top.push(id, score);
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

    #[test]
    fn term_frequencies_count_repeats() {
        let (terms, len) = term_frequencies("the cat saw the dog");
        assert_eq!(len, 5);
        assert_eq!(terms.iter().find(|(t, _)| t == "the").map(|(_, tf)| *tf), Some(2));
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
        index.remove(MemoryId::new(2), "tea tea and more tea");
        assert_eq!(index, before);
        assert_eq!(index.docs(), 1);
    }
}
