//! The transformer backbone that plays every role of the memory agent.
//!
//! A Llama / Qwen2 decoder on burn, generic over the backend: [`TransformerConfig`] reads HF
//! `config.json`, [`load_hf`] reads HF safetensors weights, [`generate()`] samples completions
//! with a KV cache and reports their log-probabilities, [`completion_logprobs`] recomputes those
//! by teacher forcing (differentiably) for the policy-gradient loss, and
//! [`save_checkpoint`] / [`load_checkpoint`] store trained weights with their config.

pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod generate;
pub mod logprobs;
pub mod model;
pub mod norm;
pub mod roles;
pub mod rope;
pub mod tokenizer;
pub mod weights;

pub use cache::KvCache;
pub use checkpoint::{load_checkpoint, save_checkpoint};
pub use config::{TokenIds, TransformerConfig};
pub use error::PolicyError;
pub use generate::{Generation, SamplingConfig, generate};
pub use logprobs::{CompletionLogProbs, completion_logprobs, sft_loss};
pub use model::{Transformer, positions_from_mask};
pub use weights::load_hf;

/// The backend unit tests run on: wgpu, cuda or ndarray when their `test-*` feature is on,
/// burn's pure-Rust CPU backend `Flex` otherwise.
#[cfg(test)]
#[cfg(feature = "test-wgpu")]
pub(crate) type TestBackend = burn::backend::Wgpu;
#[cfg(test)]
#[cfg(all(feature = "test-cuda", not(feature = "test-wgpu")))]
pub(crate) type TestBackend = burn::backend::Cuda;
#[cfg(test)]
#[cfg(all(
    feature = "test-ndarray",
    not(any(feature = "test-wgpu", feature = "test-cuda"))
))]
pub(crate) type TestBackend = burn::backend::NdArray;
#[cfg(test)]
#[cfg(not(any(feature = "test-wgpu", feature = "test-cuda", feature = "test-ndarray")))]
pub(crate) type TestBackend = burn::backend::Flex;

/// [`TestBackend`] with automatic differentiation.
#[cfg(test)]
pub(crate) type TestAutodiffBackend = burn::backend::Autodiff<TestBackend>;
