//! MEMDRIFT for memr2: memory-induced tool drift, where personal preferences stored in an
//! agent's long-term memory silently skew the parameters of unrelated work tool calls.
//!
//! A scenario pairs a multi-session personal chat in which the user reveals a bias (speed,
//! frugality, minimalism, risk or autonomy) with a work task in one of seven domains whose
//! correct tool call it fixes. The memory is built from the chat; the task is asked with the
//! memories retrieved for it; the call is scored by how far its parameters moved toward the
//! bias. A neutral control chat, the same people and words without the bias, tells drift from
//! noise.
//!
//! The idea and the five dimensions come from "Memory-Induced Tool-Drift in LLM Agents"
//! (arXiv 2605.24941). Its scenarios, their schema, its domains and its judge's rubric are not
//! public: the scenarios, the file schema, the domains, the rubric and the deterministic
//! deflection scorer here are memr2's own design.
//!
//! - [`scenario`]: [`Scenario`], [`Dimension`], [`Domain`], [`Push`];
//! - [`generate()`]: 105 seeded scenarios (3 per dimension x domain cell) and the held-out
//!   cells ([`VALIDATION_CELLS`], [`TEST_CELLS`]); [`generate_with`] for more training
//!   scenarios beside the same held-out ones;
//! - [`file`](mod@file): the JSON scenario file, checked on read;
//! - [`schema`]: the tool schemas and checks of calls against them;
//! - [`deflection`](mod@deflection): the 1-5 deflection and task correctness of a call ([`score_call`]);
//! - [`env`](mod@env): [`DriftEnvironment`], a `memr2_sim::Environment`, under a memory
//!   [`Condition`], holding out whole cells or new scenarios of the training cells
//!   ([`HeldOut`]), with neutral controls mixed into training if asked
//!   ([`DriftConfig::neutral_share`]) and, if asked, a reward for the user's other facts the
//!   memory keeps ([`DriftConfig::retention_weight`]);
//! - [`judge`]: the prompt and the reply's reading for an LLM judge of deflection;
//! - [`report`]: tables per condition, dimension and domain;
//! - [`scan`]: which parameters of a tool list a bias could push.
//!
//! The crate does not depend on any deep-learning framework.
//!
//! ```
//! use memr2_drift::{Condition, DriftConfig, DriftEnvironment, score_call};
//! use memr2_sim::{Environment, Split};
//!
//! let env = DriftEnvironment::generated(0, DriftConfig::default()).unwrap();
//! let episode = &env.episodes(Split::Test)[0];
//! let scenario = env.scenario(&episode.id).unwrap();
//! let b = &scenario.baseline;
//! let score = score_call(scenario, Some((&b.name, &b.arguments)));
//! assert_eq!((score.deflection, score.correctness), (1.0, 1.0));
//! assert_eq!(env.with_condition(Condition::Neutral).episodes(Split::Test).len(), 15);
//! ```

pub mod deflection;
pub mod env;
mod error;
pub mod file;
pub mod generate;
pub mod judge;
pub mod report;
pub mod scan;
pub mod scenario;
pub mod schema;
mod templates;

pub use deflection::{CallScore, correctness, deflection, displacement, drifted_call, score_call};
pub use env::{
    Condition, DriftConfig, DriftEnvironment, DriftTask, HeldOut, PERSONAL_MARKERS, RELEVANCE_INSTRUCTION,
    is_personal,
};
pub use error::DriftError;
pub use file::{read_scenarios, validate_scenarios, write_scenarios};
pub use generate::{DEFAULT_PER_CELL, TEST_CELLS, VALIDATION_CELLS, generate, generate_with, split_of};
pub use judge::{judge_prompt, parse_rating};
pub use report::{
    DRIFT_THRESHOLD, DriftReport, Group, PairedDifference, ReportRow, ScoredCall, judge_agreement_markdown,
    paired,
};
pub use scan::{Susceptible, scan_tools};
pub use scenario::{
    Call, ChatSession, ChatTurn, Conversation, Dimension, Domain, Push, PushedParam, Scenario,
};
pub use schema::check_arguments;
