//! Key/value cache for incremental decoding: past keys and values of every layer plus which
//! cached positions hold real tokens.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};

/// Per-layer keys and values `[batch, kv_heads, cached, head_dim]`, empty before the first step.
pub(crate) type LayerCache<B> = (Option<Tensor<B, 4>>, Option<Tensor<B, 4>>);

/// Cached keys and values of a batch of sequences.
#[derive(Debug)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
    /// `[batch, cached]`, true where the cached position holds a real token.
    key_valid: Option<Tensor<B, 2, Bool>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for a model of `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| (None, None)).collect(),
            key_valid: None,
        }
    }

    /// Number of cached positions (padding included).
    pub fn len(&self) -> usize {
        self.key_valid.as_ref().map_or(0, |valid| valid.dims()[1])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn layer_mut(&mut self, index: usize) -> &mut LayerCache<B> {
        &mut self.layers[index]
    }

    /// Records that `valid` `[batch, new]` positions are about to be appended and returns the
    /// validity of all keys `[batch, cached + new]`.
    pub(crate) fn extend_valid(&mut self, valid: Tensor<B, 2, Bool>) -> Tensor<B, 2, Bool> {
        let all = match self.key_valid.take() {
            Some(past) => Tensor::cat(vec![past, valid], 1),
            None => valid,
        };
        self.key_valid = Some(all.clone());
        all
    }

    /// Keeps only the batch rows listed in `rows` (in that order).
    pub fn retain_rows(&mut self, rows: Tensor<B, 1, Int>) {
        for (k, v) in &mut self.layers {
            *k = k.take().map(|t| t.select(0, rows.clone()));
            *v = v.take().map(|t| t.select(0, rows.clone()));
        }
        self.key_valid = self.key_valid.take().map(|t| t.select(0, rows));
    }
}
