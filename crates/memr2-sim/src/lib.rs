//! Multi-session conversation environments for memory agents, oracle traces, LoCoMo, and
//! answer scoring.
//!
//! - [`episode`]: episodes of dated sessions of turns, questions with evidence, horizons, and
//!   the [`Environment`] trait with its [`Capabilities`], and [`validate_episode`];
//! - [`SyntheticWorld`]: a seeded world of people whose attributes change over time, with
//!   gold [`Fact`]s per turn and questions of every [`Category`];
//! - [`oracle`]: gold memory operations for any memory state, and an imperfect [`Teacher`];
//! - [`Locomo`]: the LoCoMo benchmark loader;
//! - [`LongMemEval`]: the LongMemEval loader (`longmemeval_s/_m/_oracle.json`);
//! - [`episodes_file`]: memr2's JSON Lines episode format, read and written by [`EpisodeFile`];
//! - [`dataset`]: a dataset file of any of these formats, told by its content ([`load_dataset`]);
//! - [`scoring`]: token F1, exact match, BLEU-1, per-category boards, and the reward;
//! - [`task`]: what is done with a memory after a session and how it is scored.
//!
//! The crate does not depend on any deep-learning framework.

pub mod attribute;
pub mod dataset;
pub mod episode;
pub mod episodes_file;
mod error;
pub mod fact;
mod json_object;
pub mod locomo;
pub mod longmemeval;
pub mod oracle;
pub mod scoring;
pub mod task;
pub mod world;

pub use attribute::Attribute;
pub use dataset::{DataFormat, detect_format, load_dataset};
pub use episode::{Capabilities, validate_episode};
pub use episode::{
    Category, DiaId, EnvStats, Environment, Episode, Question, Session, Split, Turn, stats, transcript,
};
pub use episodes_file::EpisodeFile;
pub use error::SimError;
pub use fact::{Change, Fact, facts_in_chunk};
pub use locomo::Locomo;
pub use longmemeval::LongMemEval;
pub use oracle::{OracleOp, Teacher, TeacherConfig, oracle_operations};
pub use scoring::{
    AnswerScore, ScoreBoard, ScoreSummary, ScoreSums, bleu1, exact_match, memory_penalty, normalize_answer,
    reward, score_answer, token_f1,
};
pub use task::{Probe, QuestionAnswering, Request, Response, Task, probes_up_to};
pub use world::{SyntheticWorld, UNKNOWN_ANSWER, WorldConfig};
