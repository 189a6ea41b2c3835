//! Top-k selection of scored memories, best first, ties broken by smaller id.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::entry::MemoryId;

/// A retrieved memory and its score (higher is more related).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// The memory.
    pub id: MemoryId,
    /// Its relevance to the query: BM25 score, or cosine similarity for dense search.
    pub score: f32,
}

/// Heap item ordered so that the *worst* hit is the greatest (lower score, then larger id).
#[derive(Debug, Clone, Copy)]
struct Worst(Hit);

impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .0
            .score
            .total_cmp(&self.0.score)
            .then(self.0.id.cmp(&other.0.id))
    }
}

impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Worst {}

/// Keeps the best `k` hits whose score is at least `min_score`.
#[derive(Debug)]
pub(crate) struct TopK {
    k: usize,
    min_score: f32,
    heap: BinaryHeap<Worst>,
}

impl TopK {
    /// An empty selection of at most `k` hits scoring at least `min_score`.
    pub(crate) fn new(k: usize, min_score: f32) -> Self {
        Self {
            k,
            min_score,
            heap: BinaryHeap::with_capacity(k.min(1024) + 1),
        }
    }

    /// Offers one candidate.
    pub(crate) fn push(&mut self, id: MemoryId, score: f32) {
        if self.k == 0 || score.is_nan() || score < self.min_score {
            return;
        }
        let item = Worst(Hit { id, score });
        if self.heap.len() < self.k {
            self.heap.push(item);
        } else if let Some(mut worst) = self.heap.peek_mut()
            && item < *worst
        {
            *worst = item;
        }
    }

    /// The kept hits, best first.
    pub(crate) fn into_sorted(self) -> Vec<Hit> {
        self.heap.into_sorted_vec().into_iter().map(|w| w.0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_best_k_with_id_tie_break() {
        let mut top = TopK::new(3, 0.5);
        for (id, score) in [(5, 1.0), (1, 0.2), (2, 1.0), (3, 2.0), (4, 0.5), (6, 1.0)] {
            top.push(MemoryId::new(id), score);
        }
        let ids: Vec<u64> = top.into_sorted().iter().map(|h| h.id.get()).collect();
        assert_eq!(ids, vec![3, 2, 5]);
    }

    #[test]
    fn zero_k_keeps_nothing() {
        let mut top = TopK::new(0, f32::NEG_INFINITY);
        top.push(MemoryId::new(1), 1.0);
        assert!(top.into_sorted().is_empty());
    }
}
