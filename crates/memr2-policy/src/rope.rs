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

/// Cosine and sine gathered for a batch of positions, `[batch, 1, seq, head_dim]` each.
#[derive(Clone, Debug)]
pub struct RopeAngles<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
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

    /// Gathers the angles of `positions` `[batch, seq]`.
    pub fn angles(&self, positions: Tensor<B, 2, Int>) -> RopeAngles<B> {
        let [batch, seq] = positions.dims();
        let flat = positions.reshape([batch * seq]);
        let head_dim = self.cos.dims()[1];
        let gather = |table: &Tensor<B, 2>| {
            table
                .clone()
                .select(0, flat.clone())
                .reshape([batch, 1, seq, head_dim])
        };
        RopeAngles {
            cos: gather(&self.cos),
            sin: gather(&self.sin),
        }
    }
}

impl<B: Backend> RopeAngles<B> {
    /// Rotates `x` `[batch, heads, seq, head_dim]`: `x * cos + rotate_half(x) * sin`.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, heads, seq, head_dim] = x.dims();
        let half = head_dim / 2;
        let x1 = x.clone().slice([0..batch, 0..heads, 0..seq, 0..half]);
        let x2 = x.clone().slice([0..batch, 0..heads, 0..seq, half..head_dim]);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}
