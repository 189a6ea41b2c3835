//! RMSNorm with HF's parameter name (`weight`), so checkpoints load without renaming.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Root-mean-square normalisation over the last dimension: `x / sqrt(mean(x^2) + eps) * weight`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Per-channel scale `[hidden]`, initialised to one.
    pub weight: Param<Tensor<B, 1>>,
    /// Added to the mean square for numerical stability.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// A norm of width `size` with unit scale.
    pub fn new(size: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([size], device)),
            eps,
        }
    }

    /// Normalises `[..., hidden]` to the same shape.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        crate::fused::rms_norm(x, self.weight.val(), self.eps)
    }
}
