//! The transformer backbone that plays every role of the memory agent.

pub mod roles;
pub mod tokenizer;
