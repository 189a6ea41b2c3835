//! LoGo-GRPO training of memory-augmented agents: rollouts, rewards, curriculum, evaluation.
//!
//! The crate is generic over the burn backend; only the `memr2` binary picks one. Read
//! [`train::run_with`] top to bottom for the whole algorithm: supervised warm start on the
//! environment's imperfect teacher, the frozen answerer's tuning, then the 8 -> 16 -> 32
//! session curriculum of LoGo-GRPO steps ([`step::rl_step`]: lockstep rollouts, rewards, local
//! rerollouts, the update), then the evaluation table.
//!
//! # Training your own environment
//!
//! An environment is any [`memr2_sim::Environment`]: episodes by split, its capabilities, and
//! its [`memr2_sim::Task`] (what the frozen answerer is asked of a memory and how the response
//! is scored; every reward is built from it). [`train::run_with`] trains it without any change
//! to memr2; `examples/household.rs` is a complete program that does so.
//!
//! ```no_run
//! use burn::backend::{Autodiff, Flex};
//! use memr2_trainer::config::{DataSpec, TrainConfig};
//! use memr2_trainer::train::{RunOptions, run_with};
//!
//! # fn main() -> Result<(), memr2_trainer::TrainError> {
//! let env = memr2_sim::EpisodeFile::load("my-episodes.jsonl")?; // or a type of your own
//! let mut config = TrainConfig::smoke();
//! config.data = DataSpec::External { name: "my-episodes".into() };
//! let options = RunOptions { dir: "runs/mine".into(), ..RunOptions::default() };
//! let report = run_with::<Autodiff<Flex>>(&env, config, &options, &Default::default(), &mut |_| {})?;
//! println!("{}", report.table);
//! # Ok(())
//! # }
//! ```

pub mod agent;
pub mod checkpoint;
pub mod collective;
pub mod compare;
pub mod config;
pub mod data;
pub mod eval;
pub mod judge;
pub mod metrics;
#[cfg(feature = "mpi")]
pub mod mpi_world;
pub(crate) mod parallel;
pub mod plot;
pub mod report;
pub mod reward;
pub mod served;
pub mod sft;
pub(crate) mod shard;
pub mod step;
pub mod teacher;
pub mod tensorboard;
pub mod train;
pub mod update;

use std::path::PathBuf;

pub use config::{Preset, TrainConfig};

/// Everything that can go wrong in training, with the path or stage it concerns.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("cannot read or write {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file is not valid JSON for [`TrainConfig`].
    #[error("malformed config {}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A configuration value or combination is not allowed.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// The data could not be loaded.
    #[error(transparent)]
    Data(#[from] memr2_sim::SimError),
    /// The model, tokenizer or a checkpoint could not be loaded or saved.
    #[error(transparent)]
    Policy(#[from] memr2_policy::PolicyError),
    /// The tokenizer could not be trained, loaded or saved.
    #[error(transparent)]
    Tokenizer(#[from] memr2_policy::tokenizer::TokenizerError),
    /// The objective rejected its inputs.
    #[error(transparent)]
    Objective(#[from] memr2_logo_grpo::GrpoError),
    /// A memory store could not be saved or loaded.
    #[error(transparent)]
    Store(#[from] memr2_store::StoreError),
    /// The environment lacks a capability a phase of the run needs.
    #[error("environment {environment} has no {capability}, which {needed_by} needs: {fix}")]
    Capability {
        /// The environment's name.
        environment: String,
        /// What it lacks (e.g. "gold facts").
        capability: &'static str,
        /// The phase that needs it, and what for.
        needed_by: String,
        /// What the user can do instead.
        fix: String,
    },
    /// A served model failed after its retries, or did not answer when the run started.
    #[error("the served {role} at {url} failed: {reason}")]
    Endpoint {
        /// What the model does in the run ("answerer", "judge").
        role: &'static str,
        /// The endpoint's base URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The run stopped early because it was asked to (`RunOptions::stop_after_steps`).
    #[error("stopped after {step} steps as asked")]
    Stopped {
        /// RL steps completed.
        step: u64,
    },
    /// A checkpoint or run directory is missing or corrupt.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}
