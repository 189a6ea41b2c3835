//! The transformer backbone that plays every role of the memory agent.
//!
//! A Llama / Qwen2 decoder on burn, generic over the backend: [`TransformerConfig`] reads HF
//! `config.json`, [`load_hf`] reads HF safetensors weights, [`generate()`] samples completions
//! with a KV cache and reports their log-probabilities, [`completion_logprobs`] recomputes those
//! by teacher forcing (differentiably) for the policy-gradient loss, and
//! [`save_checkpoint`] / [`load_checkpoint`] store trained weights with their config.
//!
//! The roles the backbone plays are prompts and parsers:
//!
//! - [`roles`]: the fact extractor, the memory manager and the answerer, with their prompts,
//!   output parsers and canonical completions;
//! - [`tools`]: the tool caller, which writes one JSON call for a task given the tools' JSON
//!   Schemas and the retrieved memories ([`tool_call_prompt`], [`parse_tool_call`] checking the
//!   call against the schemas, [`render_tool_call`]);
//! - [`strict`]: strict tool calls, decoding held to the tools' schemas
//!   ([`generate_constrained`] with a [`strict::ToolCallConstraint`]).
//!
//! Speed on the CPU: [`fused`] holds operations with a gradient of their own (the masked
//! attention, the dense products cut over the cores, the token log-probabilities, the SwiGLU
//! gate, RMSNorm, the rotary rotation), [`optim`] burn's AdamW as one pass per parameter, and
//! [`allocator`] the glibc set-up that binaries start with
//! ([`allocator::reuse_freed_buffers`]); docs/PERF.md has the measurements.

pub mod allocator;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod fused;
pub mod generate;
pub mod logprobs;
pub mod model;
pub mod norm;
pub mod optim;
pub mod roles;
pub mod rope;
pub mod strict;
pub mod tokenizer;
pub mod tools;
pub mod weights;

pub use cache::KvCache;
pub use checkpoint::{load_checkpoint, save_checkpoint};
pub use config::{TokenIds, TransformerConfig};
pub use error::PolicyError;
pub use generate::{Generation, SamplingConfig, TokenConstraint, generate, generate_constrained};
pub use logprobs::{CompletionLogProbs, completion_logprobs, sft_loss};
pub use model::{Transformer, positions_from_mask};
pub use tools::{ToolCall, ToolCallError, parse_tool_call, render_tool_call, tool_call_prompt};
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
