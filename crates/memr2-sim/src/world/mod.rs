//! The seeded synthetic world: people whose attributes change over dated sessions, with
//! paraphrased turns, gold facts and questions of every category.

mod generate;
mod questions;

pub use questions::UNKNOWN_ANSWER;
mod text;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::attribute::Attribute;
use crate::episode::{Capabilities, Environment, Episode, Split};
use crate::error::SimError;

/// Size knobs of the synthetic world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldConfig {
    /// People per episode; the first two are the speakers, the others are relatives or
    /// friends the speakers talk about. Between 2 and 8.
    pub people: usize,
    /// The attributes people have (no duplicates).
    pub attributes: Vec<Attribute>,
    /// Sessions per episode.
    pub sessions: usize,
    /// Fewest turns in a session (at least 2: a greeting and a fact).
    pub min_turns: usize,
    /// Most turns in a session.
    pub max_turns: usize,
    /// Fewest turns stating a fact in a session.
    pub min_fact_turns: usize,
    /// Most turns stating a fact in a session (below `min_turns`, the greeting carries none).
    pub max_fact_turns: usize,
    /// Most changes (new value, update, removal) of one person's attribute per episode.
    pub max_changes: usize,
    /// Questions per episode (over all sessions; fewer survive a shorter horizon).
    pub questions: usize,
    /// Episodes in the train split.
    pub train_episodes: usize,
    /// Episodes in the validation split.
    pub validation_episodes: usize,
    /// Episodes in the test split.
    pub test_episodes: usize,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self::default_cpu()
    }
}

impl WorldConfig {
    /// The default world, sized for a model of a few million parameters trained on a 2-core
    /// CPU: two speakers and one relative, 32 sessions of 4-6 short turns of which 1-2 state a
    /// fact, a vocabulary of a few hundred words, 16 questions per episode. 64 training
    /// conversations, 16 for validation and 64 for test: a question of the test split is worth
    /// 0.1 F1 point, finer than the differences between policies that it has to tell apart.
    /// Every episode is a function of its split and index alone, so growing a split adds
    /// conversations and leaves the existing ones as they were.
    pub fn default_cpu() -> Self {
        Self {
            people: 3,
            attributes: Attribute::ALL.to_vec(),
            sessions: 32,
            min_turns: 4,
            max_turns: 6,
            min_fact_turns: 1,
            max_fact_turns: 2,
            max_changes: 3,
            questions: 16,
            train_episodes: 64,
            validation_episodes: 16,
            test_episodes: 64,
        }
    }

    /// A tiny world for smoke tests: two speakers, four attributes, 10 sessions of 3 turns.
    pub fn smoke() -> Self {
        Self {
            people: 2,
            attributes: vec![Attribute::City, Attribute::Job, Attribute::Pet, Attribute::Hobby],
            sessions: 10,
            min_turns: 3,
            max_turns: 3,
            min_fact_turns: 1,
            max_fact_turns: 1,
            max_changes: 3,
            questions: 8,
            train_episodes: 4,
            validation_episodes: 2,
            test_episodes: 2,
        }
    }

    /// Rejects sizes the generator cannot honour.
    pub fn validate(&self) -> Result<(), SimError> {
        let err = |m: String| Err(SimError::Config(m));
        if !(2..=8).contains(&self.people) {
            return err(format!("people = {} must be between 2 and 8", self.people));
        }
        if self.attributes.is_empty() {
            return err("attributes must not be empty".into());
        }
        let mut a = self.attributes.clone();
        a.sort_unstable();
        a.dedup();
        if a.len() != self.attributes.len() {
            return err("attributes must not repeat".into());
        }
        if self.sessions == 0 {
            return err("sessions must be at least 1".into());
        }
        if self.min_turns < 2 || self.min_turns > self.max_turns {
            return err(format!(
                "turns per session {}..={} must satisfy 2 <= min <= max",
                self.min_turns, self.max_turns
            ));
        }
        if self.min_fact_turns > self.max_fact_turns || self.max_fact_turns >= self.min_turns {
            return err(format!(
                "fact turns per session {}..={} must satisfy min <= max < min_turns ({})",
                self.min_fact_turns, self.max_fact_turns, self.min_turns
            ));
        }
        if self.max_changes == 0 {
            return err("max_changes must be at least 1".into());
        }
        Ok(())
    }

    /// Number of episodes in a split.
    pub fn episodes_in(&self, split: Split) -> usize {
        match split {
            Split::Train => self.train_episodes,
            Split::Validation => self.validation_episodes,
            Split::Test => self.test_episodes,
        }
    }
}

/// The synthetic environment: every episode is a pure function of the configuration, the
/// seed, the split and the episode's index.
#[derive(Debug, Clone)]
pub struct SyntheticWorld {
    cfg: WorldConfig,
    seed: u64,
}

impl SyntheticWorld {
    /// A world with the given size and seed; fails on an invalid configuration.
    pub fn new(cfg: WorldConfig, seed: u64) -> Result<Self, SimError> {
        cfg.validate()?;
        Ok(Self { cfg, seed })
    }

    /// The world's configuration.
    pub fn config(&self) -> &WorldConfig {
        &self.cfg
    }

    /// The world's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// One episode of a split (any index; the split's size only bounds [`Environment::episodes`]).
    pub fn episode(&self, split: Split, index: usize) -> Episode {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let split_code: u64 = match split {
            Split::Train => 1,
            Split::Validation => 2,
            Split::Test => 3,
        };
        rng.set_stream((split_code << 40) | index as u64);
        let id = format!("synthetic-{}-{index}", split.name());
        generate::episode(&self.cfg, &mut rng, id)
    }
}

impl Environment for SyntheticWorld {
    fn name(&self) -> &str {
        "synthetic"
    }

    fn episodes(&self, split: Split) -> Vec<Episode> {
        (0..self.cfg.episodes_in(split))
            .map(|i| self.episode(split, i))
            .collect()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            gold_facts: true,
            categories: true,
        }
    }
}
