//! How memories are retrieved for a query: BM25, dense cosine over an attached embedder, or the
//! two lists fused by reciprocal rank.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::entry::MemoryId;
use crate::topk::{Hit, TopK};

/// The rank offset of reciprocal rank fusion: a memory at rank `r` (from 1) of a list adds
/// `1 / (RRF_K + r)` to its fused score. 60 is the value of the method's paper (Cormack et al.,
/// 2009), which damps the weight of the very first ranks.
pub const RRF_K: f32 = 60.0;

/// Which index answers a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Retrieval {
    /// BM25 over the memories' words: a memory must share a term with the query.
    #[default]
    Bm25,
    /// Cosine similarity of embeddings from the attached [`crate::Embedder`].
    Dense,
    /// Both lists, fused by reciprocal rank ([`RRF_K`]); each list keeps its own threshold.
    Hybrid,
}

impl Retrieval {
    /// Every mode.
    pub const ALL: [Retrieval; 3] = [Retrieval::Bm25, Retrieval::Dense, Retrieval::Hybrid];

    /// Lower-case name, as configurations and the command line spell it.
    pub fn name(self) -> &'static str {
        match self {
            Retrieval::Bm25 => "bm25",
            Retrieval::Dense => "dense",
            Retrieval::Hybrid => "hybrid",
        }
    }

    /// Whether the mode needs an embedder attached to the store.
    pub fn needs_embedder(self) -> bool {
        self != Retrieval::Bm25
    }
}

impl fmt::Display for Retrieval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Retrieval {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Retrieval::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown retrieval {s:?}: expected bm25, dense or hybrid"))
    }
}

/// The least score a retrieved memory must have, per index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinScores {
    /// Least BM25 score.
    pub bm25: f32,
    /// Least cosine similarity (the paper's manager uses 0.1).
    pub dense: f32,
}

/// The best `k` of the union of ranked lists, each memory scored `sum 1 / (RRF_K + rank)` over
/// the lists it is in; ties by id.
pub(crate) fn fuse(lists: &[Vec<Hit>], k: usize) -> Vec<Hit> {
    let mut scores: Vec<(MemoryId, f32)> = Vec::new();
    for list in lists {
        for (rank, hit) in (1..).zip(list) {
            let add = 1.0 / (RRF_K + rank as f32);
            match scores.iter_mut().find(|(id, _)| *id == hit.id) {
                Some((_, score)) => *score += add,
                None => scores.push((hit.id, add)),
            }
        }
    }
    let mut top = TopK::new(k, f32::NEG_INFINITY);
    for (id, score) in scores {
        top.push(id, score);
    }
    top.into_sorted()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(ids: &[u64]) -> Vec<Hit> {
        ids.iter()
            .map(|&i| Hit {
                id: MemoryId::new(i),
                score: 1.0,
            })
            .collect()
    }

    fn ids(hits: &[Hit]) -> Vec<u64> {
        hits.iter().map(|h| h.id.get()).collect()
    }

    #[test]
    fn fusion_favours_memories_both_lists_rank() {
        // 2 is second in both lists and beats each list's single first place.
        let fused = fuse(&[hits(&[1, 2, 3]), hits(&[4, 2, 5])], 3);
        assert_eq!(ids(&fused), [2, 1, 4]);
        assert!((fused[0].score - 2.0 / (RRF_K + 2.0)).abs() < 1e-7);
        assert!((fused[1].score - 1.0 / (RRF_K + 1.0)).abs() < 1e-7);
        assert_eq!(ids(&fuse(&[hits(&[7]), Vec::new()], 5)), [7]);
        assert!(fuse(&[Vec::new(), Vec::new()], 5).is_empty());
        assert!(fuse(&[hits(&[1, 2])], 0).is_empty());
    }

    #[test]
    fn modes_parse_and_print() {
        for mode in Retrieval::ALL {
            assert_eq!(mode.name().parse::<Retrieval>().unwrap(), mode);
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{mode}\""));
        }
        assert!(
            "cosine"
                .parse::<Retrieval>()
                .unwrap_err()
                .contains("bm25, dense or hybrid")
        );
        assert!(!Retrieval::Bm25.needs_embedder());
        assert!(Retrieval::Hybrid.needs_embedder());
    }
}
