//! The seam for dense embeddings supplied from outside, and cosine top-k over them.

use std::fmt;
use std::sync::Arc;

use imbl::OrdMap;

use crate::entry::MemoryId;
use crate::error::StoreError;
use crate::topk::{Hit, TopK};

/// Turns text into a dense vector (a sentence encoder, or the policy model's hidden states).
///
/// The store calls it once per ADD and UPDATE while it is attached, and keeps the vectors in a
/// persistent map that branches share like the entries themselves. An embedder that calls a
/// service may fail: the operation or search that needed the vector then fails with
/// [`StoreError::Embedder`] and changes nothing.
pub trait Embedder: Send + Sync {
    /// Dimension of every vector [`Embedder::embed`] returns.
    fn dim(&self) -> usize;

    /// The embedding of `text`, of length [`Embedder::dim`], or why it could not be made.
    fn embed(&self, text: &str) -> Result<Vec<f32>, String>;

    /// A hint that `texts` are about to be embedded (the memories of a round of operations, the
    /// queries of a round of searches): an embedder that calls a service computes them now in
    /// one batched request and answers the [`Embedder::embed`] calls that follow from memory.
    /// The default does nothing.
    fn prepare(&self, _texts: &[&str]) {}
}

/// Unit-normalised embeddings of the current entries, with the embedder that made them.
#[derive(Clone)]
pub(crate) struct DenseIndex {
    embedder: Arc<dyn Embedder>,
    /// Id -> unit vector (all zeros for a zero embedding).
    vectors: OrdMap<MemoryId, Arc<[f32]>>,
}

impl fmt::Debug for DenseIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DenseIndex")
            .field("dim", &self.embedder.dim())
            .field("vectors", &self.vectors.len())
            .finish()
    }
}

impl DenseIndex {
    /// An empty index for vectors from `embedder`.
    pub(crate) fn new(embedder: Arc<dyn Embedder>) -> Self {
        Self {
            embedder,
            vectors: OrdMap::new(),
        }
    }

    /// Embeds `text` and normalises it, rejecting a vector of the wrong dimension or non-finite.
    pub(crate) fn embed(&self, text: &str) -> Result<Arc<[f32]>, StoreError> {
        let mut vector = self
            .embedder
            .embed(text)
            .map_err(|reason| StoreError::Embedder { reason })?;
        self.check(&vector)?;
        let norm = norm(&vector);
        if norm > 0.0 {
            vector.iter_mut().for_each(|x| *x /= norm);
        }
        Ok(vector.into())
    }

    fn check(&self, vector: &[f32]) -> Result<(), StoreError> {
        let expected = self.embedder.dim();
        if vector.len() != expected || !vector.iter().all(|x| x.is_finite()) {
            return Err(StoreError::InvalidEmbedding {
                got: vector.len(),
                expected,
            });
        }
        Ok(())
    }

    /// Stores the (normalised) vector of memory `id`.
    pub(crate) fn insert(&mut self, id: MemoryId, vector: Arc<[f32]>) {
        self.vectors.insert(id, vector);
    }

    /// Forgets memory `id`.
    pub(crate) fn remove(&mut self, id: MemoryId) {
        self.vectors.remove(&id);
    }

    /// Best `k` memories by cosine similarity to `query`, at least `min_score`, ties by id.
    pub(crate) fn search(&self, query: &[f32], k: usize, min_score: f32) -> Result<Vec<Hit>, StoreError> {
        self.check(query)?;
        let query_norm = norm(query);
        let mut top = TopK::new(k, min_score);
        for (id, vector) in &self.vectors {
            let dot: f32 = vector.iter().zip(query).map(|(a, b)| a * b).sum();
            let cosine = if query_norm > 0.0 { dot / query_norm } else { 0.0 };
            top.push(*id, cosine);
        }
        Ok(top.into_sorted())
    }

    /// Embeds `query` with the attached embedder and searches with it.
    pub(crate) fn search_text(&self, query: &str, k: usize, min_score: f32) -> Result<Vec<Hit>, StoreError> {
        let vector = self
            .embedder
            .embed(query)
            .map_err(|reason| StoreError::Embedder { reason })?;
        self.search(&vector, k, min_score)
    }
}

fn norm(vector: &[f32]) -> f32 {
    vector.iter().map(|x| x * x).sum::<f32>().sqrt()
}
