//! Multi-session conversation environments for memory agents, oracle traces, LoCoMo, and
//! answer scoring.
//!
//! - [`episode`]: episodes of dated sessions of turns, questions with evidence, horizons, and
//!   the [`Environment`] trait;
//! - [`SyntheticWorld`]: a seeded world of people whose attributes change over time, with
//!   gold [`Fact`]s per turn and questions of every [`Category`];
//! - [`oracle`]: gold memory operations for any memory state, and an imperfect [`Teacher`];
//! - [`Locomo`]: the LoCoMo benchmark loader;
//! - [`scoring`]: token F1, exact match, BLEU-1, per-category boards, and the reward.
//!
//! The crate does not depend on any deep-learning framework.

pub mod attribute;
pub mod episode;
mod error;
pub mod fact;
pub mod locomo;
pub mod oracle;
pub mod scoring;
pub mod world;

pub use attribute::Attribute;
pub use episode::{
    Category, DiaId, EnvStats, Environment, Episode, Question, Session, Split, Turn, stats, transcript,
};
pub use error::SimError;
pub use fact::{Change, Fact, facts_in_chunk};
pub use locomo::Locomo;
pub use oracle::{OracleOp, Teacher, TeacherConfig, oracle_operations};
pub use scoring::{
    AnswerScore, ScoreBoard, ScoreSummary, ScoreSums, bleu1, exact_match, memory_penalty, normalize_answer,
    reward, score_answer, token_f1,
};
pub use world::{SyntheticWorld, UNKNOWN_ANSWER, WorldConfig};
