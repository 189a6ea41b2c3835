//! OpenAI-compatible served models for memr2, both ways.
//!
//! - [`wire`]: the request and response bodies of `/v1/chat/completions` (plain and streamed),
//!   `/v1/embeddings` and `/v1/models`, and the OpenAI-shaped error body.
//! - [`client`]: one client for any OpenAI-compatible endpoint (vLLM, SGLang, llama.cpp's
//!   server, Ollama, OpenAI): many requests in flight with bounded concurrency, timeouts,
//!   retries with backoff on 429 and 5xx, token usage counted, and [`cache`], a
//!   content-addressed cache of responses on disk, so that a repeated or resumed run replays
//!   identical requests without calling out.
//! - [`server`]: serves any [`server::ChatModel`] over the same API, batching concurrent
//!   requests into shared generation calls.
//!
//! This crate knows HTTP and JSON, not tensors: the trainer puts its policy behind
//! [`server::ChatModel`] and its frozen answerer, judge and teacher behind [`client::Client`].

pub mod cache;
pub mod client;
pub mod server;
pub mod wire;
