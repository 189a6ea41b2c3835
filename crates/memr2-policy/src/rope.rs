//! Rotary position embedding in HF's rotate-half convention (Llama, Qwen2).
//!
//! burn's `RotaryEncoding` rotates interleaved pairs `(x0, x1), (x2, x3), ...`; HF checkpoints
//! are trained with the two halves of each head rotated together, `(x_i, x_{i + d/2})`, so the
//! tables and the rotation are written here.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// The longest rotary table built, whatever the config says (32768 positions).
pub const MAX_ROPE_POSITIONS: usize = 32_768;

/// Precomputed cosine and sine tables; constants, not parameters.
#[derive(Module, Debug)]
pub struct RotaryEmbedding<B: Backend> {
    /// `[positions, head_dim]`, the first half of each row repeated in the second.
    cos: Tensor<B, 2>,
    /// `[positions, head_dim]`.
    sin: Tensor<B, 2>,
}

/// Cosine and sine gathered for a batch of positions, laid out for the projections' own
/// `[batch, seq, heads, head_dim]` order and materialised once per forward pass for the query
/// heads and the key heads, so that every layer's rotation is element-wise over contiguous
/// tensors of one shape (the fast path of the CPU backends; a broadcast over heads, or a
/// head-major view, falls to a strided loop there that cost more than the rotation's matmuls).
#[derive(Clone, Debug)]
pub struct RopeAngles<B: Backend> {
    /// `[batch, seq, query heads, head_dim]`.
    query: (Tensor<B, 4>, Tensor<B, 4>),
    /// `[batch, seq, key heads, head_dim]`.
    key: (Tensor<B, 4>, Tensor<B, 4>),
}

impl<B: Backend> RotaryEmbedding<B> {
    /// Tables for `positions` positions of heads of width `head_dim` with base `theta`.
    pub fn new(head_dim: usize, positions: usize, theta: f64, device: &B::Device) -> Self {
        let positions = positions.min(MAX_ROPE_POSITIONS);
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(positions * head_dim);
        let mut sin = Vec::with_capacity(positions * head_dim);
        // HF computes the inverse frequencies in f32; do the same so long positions agree.
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta.powf((2 * i) as f64 / head_dim as f64) as f32))
            .collect();
        for p in 0..positions {
            for _ in 0..2 {
                for &f in &inv_freq {
                    let angle = p as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let shape = [positions, head_dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// Number of positions the tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Gathers the angles of `positions` `[batch, seq]` for `query_heads` and `key_heads`.
    pub fn angles(
        &self,
        positions: Tensor<B, 2, Int>,
        query_heads: usize,
        key_heads: usize,
    ) -> RopeAngles<B> {
        self.angles_scaled(positions, query_heads, key_heads, 1.0)
    }

    /// [`Self::angles`] with the query tables multiplied by `query_scale`, so that the rotated
    /// queries come out scaled (by attention's `1 / sqrt(head_dim)`, say) at no cost: the
    /// rotation is linear.
    pub fn angles_scaled(
        &self,
        positions: Tensor<B, 2, Int>,
        query_heads: usize,
        key_heads: usize,
        query_scale: f64,
    ) -> RopeAngles<B> {
        let [batch, seq] = positions.dims();
        let flat = positions.reshape([batch * seq]);
        let head_dim = self.cos.dims()[1];
        let gathered = |table: &Tensor<B, 2>| {
            table
                .clone()
                .select(0, flat.clone())
                .reshape([batch, seq, 1, head_dim])
        };
        let (cos, sin) = (gathered(&self.cos), gathered(&self.sin));
        let for_heads = |heads: usize, scale: f64| {
            let scaled = |t: &Tensor<B, 4>| {
                if scale == 1.0 {
                    t.clone()
                } else {
                    t.clone() * scale
                }
            };
            (
                materialised(scaled(&cos), heads),
                materialised(scaled(&sin), heads),
            )
        };
        RopeAngles {
            query: for_heads(query_heads, query_scale),
            key: for_heads(key_heads, 1.0),
        }
    }
}

/// `table` `[batch, seq, 1, head_dim]` repeated over `heads` into a tensor of its own (a
/// reshape that merges a broadcast axis cannot be a view, so it copies).
fn materialised<B: Backend>(table: Tensor<B, 4>, heads: usize) -> Tensor<B, 4> {
    let [batch, seq, _, head_dim] = table.dims();
    table
        .expand([batch, seq, heads, head_dim])
        .reshape([batch * seq * heads, head_dim])
        .reshape([batch, seq, heads, head_dim])
}

impl<B: Backend> RopeAngles<B> {
    /// Rotates query heads `x` `[batch, seq, heads, head_dim]`.
    pub fn apply_query(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.apply(x, &self.query)
    }

    /// Rotates key heads `x` `[batch, seq, heads, head_dim]`.
    pub fn apply_key(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.apply(x, &self.key)
    }

    /// `x * cos + rotate_half(x) * sin` ([`crate::fused::rotary`]).
    fn apply(&self, x: Tensor<B, 4>, (cos, sin): &(Tensor<B, 4>, Tensor<B, 4>)) -> Tensor<B, 4> {
        crate::fused::rotary(x, cos.clone(), sin.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    type B = TestBackend;

    /// HF's formula written out element by element, against the tables and the matmul.
    #[test]
    fn rotation_matches_rotate_half_written_out() {
        let device = Default::default();
        let (batch, seq, heads, head_dim) = (2, 3, 4, 8);
        let rope = RotaryEmbedding::<B>::new(head_dim, 16, 10_000.0, &device);
        let positions = [[0i64, 1, 2], [0, 0, 5]];
        let angles = rope.angles(
            Tensor::from_data(TensorData::new(positions.concat(), [batch, seq]), &device),
            heads,
            2,
        );
        let x: Vec<f32> = (0..batch * seq * heads * head_dim)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let input =
            Tensor::<B, 4>::from_data(TensorData::new(x.clone(), [batch, seq, heads, head_dim]), &device);
        let out: Vec<f32> = angles.apply_query(input).into_data().to_vec().unwrap();
        let half = head_dim / 2;
        for (b, row) in positions.iter().enumerate() {
            for (s, &position) in row.iter().enumerate() {
                let p = position as f32;
                for h in 0..heads {
                    let row = ((b * seq + s) * heads + h) * head_dim;
                    for i in 0..head_dim {
                        let angle = p / 10_000f32.powf((2 * (i % half)) as f32 / head_dim as f32);
                        let partner = if i < half {
                            -x[row + i + half]
                        } else {
                            x[row + i - half]
                        };
                        let want = x[row + i] * angle.cos() + partner * angle.sin();
                        assert!(
                            (out[row + i] - want).abs() < 1e-4,
                            "b{b} s{s} h{h} i{i}: {} vs {want}",
                            out[row + i]
                        );
                    }
                }
            }
        }
    }
}
