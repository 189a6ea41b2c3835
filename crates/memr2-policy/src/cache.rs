//! Key/value cache for incremental decoding: past keys and values of every layer plus which
//! cached positions hold real tokens.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

/// Per-layer keys and values `[batch, cached, kv_heads, head_dim]` (the projections' layout),
/// empty before the first step.
pub(crate) type LayerCache<B> = (Option<Tensor<B, 4>>, Option<Tensor<B, 4>>);

/// Cached keys and values of a batch of sequences.
#[derive(Debug)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
    /// Per row, true where the cached position holds a real token. Kept on the host: it is
    /// tiny, and row selection of bool tensors is not uniform across backends.
    key_valid: Vec<Vec<bool>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for a model of `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| (None, None)).collect(),
            key_valid: Vec::new(),
        }
    }

    /// Number of cached positions (padding included).
    pub fn len(&self) -> usize {
        self.key_valid.first().map_or(0, Vec::len)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn layer_mut(&mut self, index: usize) -> &mut LayerCache<B> {
        &mut self.layers[index]
    }

    /// Records that `valid` `[batch * new]` (row-major) positions are about to be appended and
    /// returns the validity of all keys `[batch, cached + new]`.
    pub(crate) fn extend_valid(
        &mut self,
        batch: usize,
        valid: &[bool],
        device: &B::Device,
    ) -> Tensor<B, 2, Bool> {
        let new = valid.len() / batch.max(1);
        if self.key_valid.is_empty() {
            self.key_valid = vec![Vec::new(); batch];
        }
        for (row, chunk) in self.key_valid.iter_mut().zip(valid.chunks(new.max(1))) {
            row.extend_from_slice(chunk);
        }
        let keys = self.len();
        let flat: Vec<bool> = self.key_valid.concat();
        Tensor::from_data(TensorData::new(flat, [batch, keys]), device)
    }

    /// Keeps only the batch rows listed in `rows` (in that order).
    pub fn retain_rows(&mut self, rows: &[usize], device: &B::Device) {
        let index: Vec<i64> = rows.iter().map(|&row| row as i64).collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [rows.len()]), device);
        for (k, v) in &mut self.layers {
            *k = k.take().map(|t| t.select(0, index.clone()));
            *v = v.take().map(|t| t.select(0, index.clone()));
        }
        self.key_valid = rows
            .iter()
            .map(|&row| std::mem::take(&mut self.key_valid[row]))
            .collect();
    }
}
