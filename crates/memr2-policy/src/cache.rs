//! Key/value cache for incremental decoding: past keys and values of every layer plus which
//! cached positions hold real tokens.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::fused::append_rows;

/// One layer's keys and values in the projections' layout, `[batch, capacity, kv_heads,
/// head_dim]`, of which the first `len` positions are cached (on the CPU backend the buffers
/// have room to grow, [`crate::fused::append_rows`]); empty before the first step.
#[derive(Debug)]
pub(crate) struct LayerCache<B: Backend> {
    keys: Option<Tensor<B, 4>>,
    values: Option<Tensor<B, 4>>,
    len: usize,
    /// Positions a first buffer is given room for.
    reserve: usize,
}

impl<B: Backend> LayerCache<B> {
    fn new(reserve: usize) -> Self {
        Self {
            keys: None,
            values: None,
            len: 0,
            reserve,
        }
    }

    /// Appends a step's keys and values `[batch, new, kv_heads, head_dim]` and returns all of
    /// them so far, `[batch, cached + new, ..]`.
    pub(crate) fn append(
        &mut self,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let added = keys.dims()[1];
        let keys = append_rows(&mut self.keys, self.len, keys, self.reserve);
        let values = append_rows(&mut self.values, self.len, values, self.reserve);
        self.len += added;
        (keys, values)
    }
}

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
        Self::with_capacity(num_layers, 0)
    }

    /// An empty cache with room for `positions` positions before its buffers grow (on the CPU
    /// backend, where they are allocated at that size; elsewhere a hint without effect).
    pub fn with_capacity(num_layers: usize, positions: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| LayerCache::new(positions)).collect(),
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
        for layer in &mut self.layers {
            layer.keys = layer.keys.take().map(|t| t.select(0, index.clone()));
            layer.values = layer.values.take().map(|t| t.select(0, index.clone()));
        }
        self.key_valid = rows
            .iter()
            .map(|&row| std::mem::take(&mut self.key_valid[row]))
            .collect();
    }
}
