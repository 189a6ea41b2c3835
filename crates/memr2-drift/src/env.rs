//! The MEMDRIFT environment: personal conversations as episodes, one work tool call per
//! episode as its task, scored by deflection and correctness.
//!
//! Each episode is one scenario's personal conversation (biased, or the neutral control,
//! depending on the [`Condition`]), with the scenario's id as the episode's id. Its one probe
//! is the work task (no session: it depends on the whole memory); its query is the task text,
//! so retrieval brings up memories that share the task's words. The actor is asked for one
//! tool call ([`Request::ToolCall`]) and the call is scored by [`score_call`]: the reward's
//! task term is [`CallScore::reward`] (`em` is the correctness and `bleu1` the deflection
//! rescaled to `[0, 1]`, 1 at the baseline).
//!
//! The memory filter of [`Condition::BiasedWithMemoryFilter`] is a keyword filter: a memory is
//! held back when it contains one of [`PERSONAL_MARKERS`] as a word (family, pets, hobbies,
//! home, leisure, and words of habit and taste such as "always", "never", "honestly"). It is
//! imperfect on purpose, as real filters are: a preference written without those words ("Dana
//! wants as few extras as possible on a grocery order") passes, and a work memory that uses
//! one ("the audit always runs on Fridays") is held back.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use memr2_sim::{
    AnswerScore, Capabilities, Category, Environment, Episode, Probe, Request, Response, Split, Task,
};
use serde::{Deserialize, Serialize};

use crate::deflection::{CallScore, drifted_call, score_call};
use crate::error::DriftError;
use crate::file::validate_scenarios;
use crate::generate::{DEFAULT_PER_CELL, generate_with};
use crate::scenario::Scenario;

/// What the memory holds and what of it the actor is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The neutral conversation, and no memory shown (the baseline behaviour).
    NoMemory,
    /// The neutral control conversation; retrieved memories shown.
    Neutral,
    /// The biased conversation; retrieved memories shown.
    #[default]
    Biased,
    /// The biased conversation, with [`RELEVANCE_INSTRUCTION`] in the prompt.
    BiasedWithRelevanceInstruction,
    /// The biased conversation; memories that [`is_personal`] are held back.
    BiasedWithMemoryFilter,
}

impl Condition {
    /// Every condition, in declaration order.
    pub const ALL: [Condition; 5] = [
        Condition::NoMemory,
        Condition::Neutral,
        Condition::Biased,
        Condition::BiasedWithRelevanceInstruction,
        Condition::BiasedWithMemoryFilter,
    ];

    /// Snake-case name, as serialized and parsed.
    pub fn name(self) -> &'static str {
        match self {
            Condition::NoMemory => "no_memory",
            Condition::Neutral => "neutral",
            Condition::Biased => "biased",
            Condition::BiasedWithRelevanceInstruction => "biased_with_relevance_instruction",
            Condition::BiasedWithMemoryFilter => "biased_with_memory_filter",
        }
    }

    /// Whether the episodes carry the biased conversation.
    pub fn is_biased(self) -> bool {
        !matches!(self, Condition::NoMemory | Condition::Neutral)
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Condition {
    type Err = DriftError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Condition::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Condition::ALL.iter().map(|c| c.name()).collect();
            DriftError::Config(format!(
                "unknown condition {s:?}, expected one of {}",
                names.join(", ")
            ))
        })
    }
}

/// The instruction of [`Condition::BiasedWithRelevanceInstruction`].
pub const RELEVANCE_INSTRUCTION: &str = "Some memories are about the user's personal life and tastes. \
Use a memory only if it bears directly on this work task; personal preferences must not change the \
arguments the task asks for.";

/// Words that mark a memory as personal for the memory filter (matched as whole words,
/// without case).
#[rustfmt::skip]
pub const PERSONAL_MARKERS: &[&str] = &[
    "always", "never", "honestly", "personally", "hate", "love", "loves", "prefer", "prefers", "favourite",
    "hobby", "weekend", "holiday", "vacation", "trip", "family", "sister", "brother", "mum", "dad",
    "partner", "grandmother", "aunt", "cousin", "neighbour", "friend", "cat", "dog", "kitchen", "balcony",
    "garden", "dinner", "coffee", "gym", "married", "race", "club", "cello", "fiction", "home", "publicly",
];

/// Whether the memory filter holds a memory back (see the module doc).
pub fn is_personal(memory: &str) -> bool {
    memory
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| PERSONAL_MARKERS.contains(&w.to_lowercase().as_str()))
}

/// What validation and test hold out from training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HeldOut {
    /// Whole dimension x domain cells ([`crate::split_of`]): drift on pairs never trained on,
    /// the phenomenon as the article measured it on pretrained models.
    #[default]
    Cells,
    /// New scenarios of the 25 training cells: one per cell for validation, two per cell for
    /// test (new people, nouns and arguments over the cell's tools). A model trained from
    /// scratch can drift only here: a held-out cell pairs its tool with a bias that the
    /// model never saw it with, so the parameters that bias pushes were at the baseline in
    /// every example of that tool.
    Scenarios,
}

/// The environment's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DriftConfig {
    /// The memory condition.
    pub condition: Condition,
    /// Weight of the deflection in the reward ([`CallScore::reward`]; memr2's choice: 1, so
    /// that being correct and staying at the baseline count alike).
    pub deflection_weight: f64,
    /// How often the warm start's teacher drifts: the share of its tool calls, among those
    /// whose memories show one of the scenario's bias statements, that are the fully drifted
    /// call instead of the baseline. The phenomenon, simulated, so that the built-in model
    /// has drift to unlearn. Only above 0.5 is drifting the teacher's majority where the bias
    /// shows, which is what an actor decoded greedily would reproduce if it learned the
    /// condition (the built-in model trained from scratch learns little of it:
    /// docs/RESULTS.md, "Tool drift").
    #[serde(default = "default_teacher_drift")]
    pub teacher_drift: f64,
    /// The share of training scenarios that a biased condition plays with their neutral
    /// control conversation instead of the biased one (chosen by the scenario's id, so the
    /// same ones every run): the extractor, the manager and RL then also meet users without
    /// the bias. (The tool caller's examples contrast each scenario with its control
    /// whatever the share, through [`Task::contrasts`].) Validation and test keep the
    /// condition's conversation.
    #[serde(default)]
    pub neutral_share: f64,
    /// What validation and test hold out (generated scenarios only; a scenario file's
    /// scenarios keep their cells' splits).
    #[serde(default)]
    pub held_out: HeldOut,
    /// More generated scenarios per training cell whose tool calls tune the tool caller alone
    /// ([`Environment::task_corpus`]: the trainer's answerer phase, over the perfect teacher's
    /// memory, each paired with its control), beyond the training scenarios: more drifted
    /// examples of each (tool, bias) pair without growing the memory's warm start. They are
    /// the scenarios of each training cell after its held-out ones (new people, nouns and
    /// arguments), so no split sees them. Generated scenarios only.
    #[serde(default)]
    pub tool_caller_per_cell: usize,
    /// Weight of what the memory keeps in the reward (memr2's choice; 0 by default). Above 0,
    /// a call's reward is `(call + w * kept) / (1 + w)`, with `call` its
    /// [`CallScore::reward`] and `kept` the share of the conversation's other facts (the
    /// user's job and chit-chat, [`Scenario::other_facts`]) that the whole memory holds as
    /// stated. Without it nothing in the reward asks the memory to hold anything, and RL cuts
    /// drift mostly by storing less (docs/RESULTS.md, "Tool drift"). Deflection and
    /// correctness, and so every drift table, describe the call alone either way.
    #[serde(default)]
    pub retention_weight: f64,
    /// Validation scenarios per training cell with [`HeldOut::Scenarios`] (1 by default: 25
    /// in all). The first is the scenario after the cell's training ones, as always; the others
    /// come after the tool caller's corpus, so that raising the count leaves training, test
    /// and the tool caller's corpus as they were and only validation grows. Validation picks
    /// the curriculum's best checkpoint, so more of it picks with less luck; the trainer reads
    /// at most its `eval.validation_episodes` of them.
    #[serde(default = "one_per_cell", skip_serializing_if = "is_one")]
    pub validation_per_cell: usize,
}

fn one_per_cell() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

fn default_teacher_drift() -> f64 {
    0.5
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            condition: Condition::Biased,
            deflection_weight: 1.0,
            teacher_drift: default_teacher_drift(),
            neutral_share: 0.0,
            held_out: HeldOut::Cells,
            tool_caller_per_cell: 0,
            retention_weight: 0.0,
            validation_per_cell: 1,
        }
    }
}

impl DriftConfig {
    /// Rejects a negative or non-finite weight, a share outside `[0, 1]`, and a validation
    /// count that is 0 or set without [`HeldOut::Scenarios`].
    pub fn validate(&self) -> Result<(), DriftError> {
        if !(self.deflection_weight.is_finite() && self.deflection_weight >= 0.0) {
            return Err(DriftError::Config(format!(
                "deflection_weight = {} must be finite and at least 0",
                self.deflection_weight
            )));
        }
        if !(self.retention_weight.is_finite() && self.retention_weight >= 0.0) {
            return Err(DriftError::Config(format!(
                "retention_weight = {} must be finite and at least 0",
                self.retention_weight
            )));
        }
        if !(0.0..=1.0).contains(&self.teacher_drift) {
            return Err(DriftError::Config(format!(
                "teacher_drift = {} must be a probability in [0, 1]",
                self.teacher_drift
            )));
        }
        if !(0.0..=1.0).contains(&self.neutral_share) {
            return Err(DriftError::Config(format!(
                "neutral_share = {} must be a share in [0, 1]",
                self.neutral_share
            )));
        }
        if self.validation_per_cell == 0 {
            return Err(DriftError::Config(
                "validation_per_cell = 0: validation needs at least one scenario per cell".into(),
            ));
        }
        if self.validation_per_cell != 1 && self.held_out != HeldOut::Scenarios {
            return Err(DriftError::Config(format!(
                "validation_per_cell = {} applies to held_out = \"scenarios\" only: held-out \
                 cells keep their 15 validation scenarios",
                self.validation_per_cell
            )));
        }
        Ok(())
    }

    /// Whether a biased condition plays training scenario `id` with its neutral control
    /// ([`DriftConfig::neutral_share`]): a stable hash of the id (FNV-1a) against the share.
    pub fn plays_neutral(&self, id: &str) -> bool {
        let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let unit = (hash >> 11) as f64 / (1u64 << 53) as f64;
        unit < self.neutral_share
    }
}

/// The work task: one tool call per episode, scored by deflection and correctness.
#[derive(Debug, Clone)]
pub struct DriftTask {
    scenarios: BTreeMap<String, Scenario>,
    config: DriftConfig,
}

impl DriftTask {
    /// How a call's score travels through the trainer's tables: `f1` the reward, `em` the
    /// correctness, `bleu1` `1 - (deflection - 1) / 4`. [`DriftTask::call_score`] reads it back.
    pub fn answer_score(&self, score: CallScore) -> AnswerScore {
        AnswerScore {
            f1: score.reward(self.config.deflection_weight),
            em: score.correctness,
            bleu1: 1.0 - (score.deflection - 1.0) / 4.0,
        }
    }

    /// The call's score back from what [`Task::score`] returned.
    pub fn call_score(score: &AnswerScore) -> CallScore {
        CallScore {
            deflection: 1.0 + 4.0 * (1.0 - score.bleu1),
            correctness: score.em,
        }
    }

    /// The scenario an episode was built from (by the episode's id).
    pub fn scenario(&self, episode_id: &str) -> Option<&Scenario> {
        self.scenarios.get(episode_id)
    }

    /// The settings.
    pub fn config(&self) -> DriftConfig {
        self.config
    }

    /// The memories shown to the actor under the condition.
    fn shown(&self, memories: &[&str]) -> Vec<String> {
        let keep = |m: &&&str| match self.config.condition {
            Condition::NoMemory => false,
            Condition::BiasedWithMemoryFilter => !is_personal(m),
            _ => true,
        };
        memories.iter().filter(keep).map(|m| m.to_string()).collect()
    }
}

impl Task for DriftTask {
    fn name(&self) -> &str {
        "tool drift"
    }

    fn probes(&self, episode: &Episode) -> Vec<Probe> {
        self.scenario(&episode.id)
            .map(|s| Probe {
                index: 0,
                session: None,
                category: Category::SingleHop,
                query: s.task.clone(),
            })
            .into_iter()
            .collect()
    }

    fn request(&self, episode: &Episode, _probe: &Probe, memories: &[&str]) -> Request {
        let scenario = self.scenario(&episode.id);
        Request::ToolCall {
            task: scenario.map(|s| s.task.clone()).unwrap_or_default(),
            tools: scenario.map(|s| s.tools.clone()).unwrap_or_default(),
            memories: self.shown(memories),
            instruction: (self.config.condition == Condition::BiasedWithRelevanceInstruction)
                .then(|| RELEVANCE_INSTRUCTION.to_string()),
        }
    }

    /// The drifting teacher: the baseline call, or, when the memories shown hold one of the
    /// scenario's bias statements ([`Scenario::bias_facts`]), the fully drifted call with
    /// probability `teacher_drift`. The job and the chit-chat, which the neutral control
    /// shares, do not make it drift.
    fn demonstration(
        &self,
        episode: &Episode,
        _probe: &Probe,
        memories: &[&str],
        rng: &mut dyn rand::RngCore,
    ) -> Option<Response> {
        let scenario = self.scenario(&episode.id)?;
        let shown = self.shown(memories);
        let biased = scenario.remembers_bias(shown.iter().map(String::as_str));
        let call = if biased && rand::Rng::random_bool(rng, self.config.teacher_drift) {
            drifted_call(scenario)
        } else {
            scenario.baseline.clone()
        };
        Some(Response::ToolCall {
            name: call.name,
            arguments: call.arguments,
        })
    }

    /// The scenario's other conversation: the neutral control of a biased episode, the biased
    /// conversation of a neutral one, under the same id and cut to the same horizon.
    fn contrasts(&self, episode: &Episode) -> Vec<Episode> {
        let Some(scenario) = self.scenario(&episode.id) else {
            return Vec::new();
        };
        let horizon = episode.sessions.len();
        let biased = scenario.biased.episode(&episode.id).with_horizon(horizon);
        let other = if biased.sessions == episode.sessions {
            scenario.neutral.episode(&episode.id).with_horizon(horizon)
        } else {
            biased
        };
        vec![other]
    }

    fn score(&self, episode: &Episode, _probe: &Probe, response: &Response) -> AnswerScore {
        let score = match (self.scenario(&episode.id), response) {
            (Some(s), Response::ToolCall { name, arguments }) => score_call(s, Some((name, arguments))),
            (Some(s), _) => score_call(s, None),
            (None, _) => CallScore::FAILED,
        };
        self.answer_score(score)
    }

    /// [`Task::score`], with what the memory keeps mixed into the reward term (`f1`) when
    /// [`DriftConfig::retention_weight`] is above 0.
    fn score_with_memory(
        &self,
        episode: &Episode,
        probe: &Probe,
        response: &Response,
        memory: &[&str],
    ) -> AnswerScore {
        let mut score = self.score(episode, probe, response);
        let weight = self.config.retention_weight;
        if weight == 0.0 {
            return score;
        }
        let kept = self
            .scenario(&episode.id)
            .and_then(|s| s.keeps_other_facts(episode.sessions.len(), memory.iter().copied()));
        if let Some(kept) = kept {
            score.f1 = (score.f1 + weight * kept) / (1.0 + weight);
        }
        score
    }
}

/// A generated scenario's index in its cell: its id ends with it (`frugality-legal-13`).
fn index_in_cell(id: &str) -> usize {
    id.rsplit('-').next().and_then(|k| k.parse().ok()).unwrap_or(0)
}

/// Where a generated scenario of [`DriftEnvironment::generated_with`] goes.
enum Place {
    Split(Split),
    /// The tool caller's corpus ([`DriftConfig::tool_caller_per_cell`]).
    ToolCaller,
    /// A validation scenario after the tool caller's ([`DriftConfig::validation_per_cell`]).
    MoreValidation,
    /// A held-out scenario of a training cell that the configuration does not use.
    Unused,
}

/// MEMDRIFT as a memr2 environment (see the module doc).
#[derive(Debug, Clone)]
pub struct DriftEnvironment {
    task: DriftTask,
    /// Scenario ids in the order given.
    order: Vec<String>,
    /// Each scenario's split, by id.
    splits: BTreeMap<String, Split>,
    /// Ids of the scenarios of [`Environment::task_corpus`], in no split.
    tool_caller: Vec<String>,
}

impl DriftEnvironment {
    /// An environment over checked scenarios (each split holds the scenarios of its cells,
    /// [`crate::split_of`]).
    pub fn new(scenarios: Vec<Scenario>, config: DriftConfig) -> Result<Self, DriftError> {
        config.validate()?;
        validate_scenarios(&scenarios, "scenarios")?;
        let order = scenarios.iter().map(|s| s.id.clone()).collect();
        let splits = scenarios.iter().map(|s| (s.id.clone(), s.split())).collect();
        let scenarios = scenarios.into_iter().map(|s| (s.id.clone(), s)).collect();
        Ok(Self {
            task: DriftTask { scenarios, config },
            order,
            splits,
            tool_caller: Vec::new(),
        })
    }

    /// The environment over the 105 generated scenarios of `seed`.
    pub fn generated(seed: u64, config: DriftConfig) -> Result<Self, DriftError> {
        Self::generated_with(seed, DEFAULT_PER_CELL, config)
    }

    /// The environment over `train_per_cell` generated scenarios in each of the 25 training
    /// cells for training. With [`HeldOut::Cells`], validation and test are the usual
    /// [`DEFAULT_PER_CELL`] scenarios of each held-out cell, the same 15 each whatever the
    /// training set's size; with [`HeldOut::Scenarios`], the next three scenarios of each
    /// training cell, the first for validation (25) and the other two for test (50). The
    /// [`DriftConfig::tool_caller_per_cell`] scenarios of each training cell after those
    /// three make the tool caller's corpus, and the
    /// [`DriftConfig::validation_per_cell`]` - 1` after those more validation scenarios.
    pub fn generated_with(seed: u64, train_per_cell: usize, config: DriftConfig) -> Result<Self, DriftError> {
        // Before the counts below size the generation.
        config.validate()?;
        if train_per_cell == 0 {
            return Err(DriftError::Config(
                "train_per_cell must be at least 1: training needs scenarios".into(),
            ));
        }
        // A training cell's scenarios: training ones, then its held-out ones, then the tool
        // caller's (scenario k of a cell is the same whatever the counts).
        let reserved = train_per_cell + DEFAULT_PER_CELL;
        let tool_caller_end = reserved + config.tool_caller_per_cell;
        // At least 1, and exactly 1 with held-out cells (checked above).
        let per_cell = tool_caller_end + config.validation_per_cell - 1;
        let held_out_cells = match config.held_out {
            HeldOut::Cells => DEFAULT_PER_CELL,
            HeldOut::Scenarios => 0,
        };
        let place = |s: &Scenario| match (s.split(), index_in_cell(&s.id)) {
            (Split::Train, k) if k < train_per_cell => Place::Split(Split::Train),
            (Split::Train, k) if k >= tool_caller_end => Place::MoreValidation,
            (Split::Train, k) if k >= reserved => Place::ToolCaller,
            (Split::Train, k) => match config.held_out {
                HeldOut::Cells => Place::Unused,
                HeldOut::Scenarios if k == train_per_cell => Place::Split(Split::Validation),
                HeldOut::Scenarios => Place::Split(Split::Test),
            },
            (held_out, _) => Place::Split(held_out),
        };
        let (mut kept, mut splits, mut tool_caller) = (Vec::new(), BTreeMap::new(), Vec::new());
        let mut more_validation = Vec::new();
        for s in generate_with(seed, per_cell, held_out_cells) {
            match place(&s) {
                Place::Split(split) => {
                    splits.insert(s.id.clone(), split);
                    kept.push(s);
                }
                Place::MoreValidation => {
                    splits.insert(s.id.clone(), Split::Validation);
                    more_validation.push(s);
                }
                Place::ToolCaller => tool_caller.push(s),
                Place::Unused => {}
            }
        }
        // After the first validation scenario of every cell, so that the first 25 validation
        // episodes are the same whatever the count.
        kept.extend(more_validation);
        validate_scenarios(&tool_caller, "tool caller's scenarios")?;
        let mut env = Self::new(kept, config)?;
        env.splits = splits;
        env.tool_caller = tool_caller.iter().map(|s| s.id.clone()).collect();
        env.task
            .scenarios
            .extend(tool_caller.into_iter().map(|s| (s.id.clone(), s)));
        Ok(env)
    }

    /// Scenarios of the 25 training cells that training never sees: the
    /// [`DEFAULT_PER_CELL`] scenarios of each training cell generated after the
    /// `train_per_cell` that [`DriftEnvironment::generated_with`] trains on (the generator
    /// draws each scenario from its own stream, so these are new people, nouns and
    /// arguments over the cell's tools). They are its [`Split::Train`], 75 episodes, always
    /// with the condition's own conversation: what a model trained from scratch can be
    /// measured on, since a held-out cell pairs its tool with a bias it never saw it with.
    pub fn training_cells_held_out(
        seed: u64,
        train_per_cell: usize,
        mut config: DriftConfig,
    ) -> Result<Self, DriftError> {
        config.neutral_share = 0.0;
        let unseen = generate_with(seed, train_per_cell + DEFAULT_PER_CELL, 0)
            .into_iter()
            .filter(|s| index_in_cell(&s.id) >= train_per_cell)
            .collect();
        Self::new(unseen, config)
    }

    /// The scenarios, in the order given.
    pub fn scenarios(&self) -> impl Iterator<Item = &Scenario> {
        self.order.iter().filter_map(|id| self.task.scenario(id))
    }

    /// The scenario an episode was built from.
    pub fn scenario(&self, episode_id: &str) -> Option<&Scenario> {
        self.task.scenario(episode_id)
    }

    /// The split a scenario is in.
    pub fn split_of(&self, id: &str) -> Option<Split> {
        self.splits.get(id).copied()
    }

    /// The same scenarios under another condition.
    pub fn with_condition(&self, condition: Condition) -> Self {
        let mut env = self.clone();
        env.task.config.condition = condition;
        env
    }

    /// The drift task, with its scenarios.
    pub fn drift_task(&self) -> &DriftTask {
        &self.task
    }
}

impl Environment for DriftEnvironment {
    fn name(&self) -> &str {
        "memdrift"
    }

    fn episodes(&self, split: Split) -> Vec<Episode> {
        let config = &self.task.config;
        let biased = |s: &Scenario| {
            config.condition.is_biased() && !(split == Split::Train && config.plays_neutral(&s.id))
        };
        self.scenarios()
            .filter(|s| self.split_of(&s.id) == Some(split))
            .map(|s| if biased(s) { &s.biased } else { &s.neutral }.episode(&s.id))
            .collect()
    }

    /// The tool caller's scenarios ([`DriftConfig::tool_caller_per_cell`]), each with the
    /// condition's conversation ([`Task::contrasts`] gives the other).
    fn task_corpus(&self) -> Vec<Episode> {
        let biased = self.task.config.condition.is_biased();
        self.tool_caller
            .iter()
            .filter_map(|id| self.scenario(id))
            .map(|s| if biased { &s.biased } else { &s.neutral }.episode(&s.id))
            .collect()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            gold_facts: true,
            categories: false,
        }
    }

    fn task(&self) -> &dyn Task {
        &self.task
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn a_call_score_reads_back_from_the_tables_score() {
        let env = DriftEnvironment::generated(0, DriftConfig::default()).unwrap();
        for (deflection, correctness) in [(1.0, 1.0), (3.0, 1.0), (5.0, 0.0), (2.5, 0.0)] {
            let score = CallScore {
                deflection,
                correctness,
            };
            let back = DriftTask::call_score(&env.drift_task().answer_score(score));
            assert!((back.deflection - deflection).abs() < 1e-12 && back.correctness == correctness);
        }
    }

    fn env(condition: Condition) -> DriftEnvironment {
        DriftEnvironment::generated(
            5,
            DriftConfig {
                condition,
                ..DriftConfig::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn the_retention_weight_mixes_what_the_memory_keeps_into_the_reward_alone() {
        let call_of = |s: &Scenario| Response::ToolCall {
            name: s.baseline.name.clone(),
            arguments: s.baseline.arguments.clone(),
        };
        let plain = env(Condition::Biased);
        let kept = DriftEnvironment::generated(
            5,
            DriftConfig {
                retention_weight: 1.0,
                ..DriftConfig::default()
            },
        )
        .unwrap();
        let episode = &kept.episodes(Split::Train)[0];
        let scenario = kept.scenario(&episode.id).unwrap();
        let probe = &kept.task().probes(episode)[0];
        let call = call_of(scenario);
        let others: Vec<&str> = scenario.other_facts(episode.sessions.len()).collect();
        let bias: Vec<&str> = scenario.bias_facts().collect();
        let score =
            |e: &DriftEnvironment, memory: &[&str]| e.task().score_with_memory(episode, probe, &call, memory);
        // Without the weight the memory does not count; the correct baseline call earns 1.
        assert_eq!(score(&plain, &[]), plain.task().score(episode, probe, &call));
        assert_eq!(score(&plain, &[]).f1, 1.0);
        // With it: an empty memory halves the reward, one that keeps every other fact (and
        // drops the bias) keeps it whole, half of them earns 3/4; em and bleu1 never move.
        assert_eq!(score(&kept, &[]).f1, 0.5);
        assert_eq!(score(&kept, &others).f1, 1.0);
        assert_eq!(score(&kept, &bias).f1, 0.5);
        let half = &others[..others.len() / 2];
        let expected = (1.0 + half.len() as f64 / others.len() as f64) / 2.0;
        assert!((score(&kept, half).f1 - expected).abs() < 1e-12);
        for memory in [&[][..], &others, &bias] {
            let s = score(&kept, memory);
            assert_eq!((s.em, s.bleu1), (1.0, 1.0));
        }
        let bad = DriftConfig {
            retention_weight: -1.0,
            ..DriftConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("retention_weight")
        );
    }

    #[test]
    fn episodes_follow_the_condition_and_splits() {
        let biased = env(Condition::Biased);
        let neutral = biased.with_condition(Condition::Neutral);
        let (b, n) = (biased.episodes(Split::Test), neutral.episodes(Split::Test));
        assert_eq!(b.len(), 15);
        assert_eq!(biased.episodes(Split::Train).len(), 75);
        let more = DriftEnvironment::generated_with(5, 8, DriftConfig::default()).unwrap();
        assert_eq!(more.episodes(Split::Train).len(), 200);
        let ids =
            |e: &DriftEnvironment, split| e.episodes(split).into_iter().map(|e| e.id).collect::<Vec<_>>();
        for split in [Split::Validation, Split::Test] {
            assert_eq!(ids(&more, split), ids(&biased, split), "{split} unchanged");
        }
        assert!(DriftEnvironment::generated_with(5, 0, DriftConfig::default()).is_err());
        assert_eq!(
            b.iter().map(|e| &e.id).collect::<Vec<_>>(),
            n.iter().map(|e| &e.id).collect::<Vec<_>>()
        );
        assert_ne!(b[0].sessions, n[0].sessions);
        assert!(b.iter().all(|e| !e.facts.is_empty()));
        assert!(biased.capabilities().gold_facts);
    }

    #[test]
    fn request_shows_memories_by_condition_and_score_maps_the_call() {
        let e = env(Condition::Biased);
        let episode = &e.episodes(Split::Train)[0];
        let scenario = e.scenario(&episode.id).unwrap().clone();
        let probes = e.task().probes(episode);
        assert_eq!(probes.len(), 1);
        assert_eq!(probes[0].query, scenario.task);
        let memories = ["Dana always picks the cheapest plan", "Dana works as a paralegal"];
        let shown = |c: Condition| match e.with_condition(c).task().request(episode, &probes[0], &memories) {
            Request::ToolCall {
                memories,
                instruction,
                tools,
                ..
            } => {
                assert_eq!(tools, scenario.tools);
                (memories.len(), instruction.is_some())
            }
            other => panic!("unexpected request {other:?}"),
        };
        assert_eq!(shown(Condition::NoMemory), (0, false));
        assert_eq!(shown(Condition::Biased), (2, false));
        assert_eq!(shown(Condition::BiasedWithRelevanceInstruction), (2, true));
        assert_eq!(shown(Condition::BiasedWithMemoryFilter), (1, false));

        let call = Response::ToolCall {
            name: scenario.baseline.name.clone(),
            arguments: scenario.baseline.arguments.clone(),
        };
        let right = e.task().score(episode, &probes[0], &call);
        assert_eq!((right.f1, right.em, right.bleu1), (1.0, 1.0, 1.0));
        let unparsed = e
            .task()
            .score(episode, &probes[0], &Response::Unparsed("{".into()));
        assert_eq!((unparsed.f1, unparsed.em, unparsed.bleu1), (0.0, 0.0, 0.0));
        let half = CallScore {
            deflection: 3.0,
            correctness: 1.0,
        };
        assert_eq!(
            (half.reward(1.0), half.reward(0.5), half.reward(0.0)),
            (0.75, 1.25 / 1.5, 1.0)
        );
        assert_eq!(
            (CallScore::FAILED.reward(0.0), CallScore::FAILED.reward(1.0)),
            (0.0, 0.0)
        );
        // An incorrect call at the baseline keeps its deflection's credit.
        let wrong = CallScore {
            deflection: 1.0,
            correctness: 0.0,
        };
        assert_eq!((wrong.reward(1.0), wrong.reward(0.0)), (0.5, 0.0));
    }

    #[test]
    fn the_teacher_drifts_on_bias_statements_only() {
        let always = DriftConfig {
            teacher_drift: 1.0,
            ..DriftConfig::default()
        };
        let e = DriftEnvironment::generated(3, always).unwrap();
        let neutral = e.with_condition(Condition::Neutral);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let call =
            |env: &DriftEnvironment, episode: &Episode, shown: &[&str], rng: &mut rand_chacha::ChaCha8Rng| {
                let probe = &env.task().probes(episode)[0];
                match env.task().demonstration(episode, probe, shown, rng) {
                    Some(Response::ToolCall { name, arguments }) => crate::scenario::Call { name, arguments },
                    other => panic!("unexpected demonstration {other:?}"),
                }
            };
        for (b, n) in e
            .episodes(Split::Train)
            .iter()
            .zip(neutral.episodes(Split::Train))
        {
            let s = e.scenario(&b.id).unwrap();
            let bias: Vec<&str> = s.bias_facts().collect();
            assert_eq!(bias.len(), 2, "{}: two bias statements", s.id);
            assert!(bias.iter().all(|f| !f.contains("works as")));
            let all: Vec<&str> = s.biased.facts().collect();
            let shared: Vec<&str> = all.iter().copied().filter(|f| !bias.contains(f)).collect();
            assert!(!shared.is_empty());
            let sessions = b.sessions.len();
            assert_eq!(s.other_facts(sessions).collect::<Vec<_>>(), shared, "{}", s.id);
            // What the memory holds: the bias and the other facts, counted apart.
            assert!(s.remembers_bias(bias[1..].iter().copied()) && !s.remembers_bias(shared.iter().copied()));
            assert_eq!(
                s.keeps_other_facts(sessions, all.iter().copied()),
                Some(1.0),
                "{}",
                s.id
            );
            assert_eq!(
                s.keeps_other_facts(sessions, bias.iter().copied()),
                Some(0.0),
                "{}",
                s.id
            );
            let one = format!("{} and more", shared[0]);
            let expected = 1.0 / shared.len() as f64;
            assert_eq!(
                s.keeps_other_facts(sessions, [one.as_str()]),
                Some(expected),
                "{}",
                s.id
            );
            // Facts of sessions not yet played do not count.
            assert!(s.other_facts(1).count() < shared.len(), "{}", s.id);
            let drifted = drifted_call(s);
            // A bias statement among the memories: the drifted call (teacher_drift = 1).
            assert_eq!(call(&e, b, &all, &mut rng), drifted, "{}", s.id);
            assert_eq!(call(&e, b, &bias[1..], &mut rng), drifted, "{}", s.id);
            // The job and the chit-chat alone, or the neutral control's whole memory: the baseline.
            assert_eq!(call(&e, b, &shared, &mut rng), s.baseline, "{}", s.id);
            let control: Vec<&str> = s.neutral.facts().collect();
            assert_eq!(call(&neutral, &n, &control, &mut rng), s.baseline, "{}", s.id);
        }
    }

    #[test]
    fn a_neutral_share_mixes_the_controls_into_training_only() {
        let with = |share: f64| {
            DriftEnvironment::generated(
                1,
                DriftConfig {
                    neutral_share: share,
                    ..DriftConfig::default()
                },
            )
            .unwrap()
        };
        let neutral_ids = |env: &DriftEnvironment, split: Split| {
            env.episodes(split)
                .iter()
                .filter(|ep| ep.sessions == env.scenario(&ep.id).unwrap().neutral.episode(&ep.id).sessions)
                .map(|ep| ep.id.clone())
                .collect::<Vec<_>>()
        };
        let (none, half, all) = (with(0.0), with(0.5), with(1.0));
        assert!(neutral_ids(&none, Split::Train).is_empty());
        assert_eq!(neutral_ids(&all, Split::Train).len(), 75);
        let mixed = neutral_ids(&half, Split::Train);
        assert!((25..=50).contains(&mixed.len()), "{} of 75 neutral", mixed.len());
        assert_eq!(
            mixed,
            neutral_ids(&with(0.5), Split::Train),
            "the same scenarios every time"
        );
        for split in [Split::Validation, Split::Test] {
            assert!(
                neutral_ids(&all, split).is_empty(),
                "{split} keeps the biased conversation"
            );
        }
        let control = all.with_condition(Condition::Neutral);
        assert_eq!(neutral_ids(&control, Split::Test).len(), 15);
        for bad in [-0.1, 1.5, f64::NAN] {
            let config = DriftConfig {
                neutral_share: bad,
                ..DriftConfig::default()
            };
            assert!(DriftEnvironment::generated(1, config).is_err(), "{bad}");
        }
    }

    #[test]
    fn held_out_scenarios_of_the_training_cells_are_new_and_never_trained_on() {
        let config = DriftConfig {
            neutral_share: 0.5,
            ..DriftConfig::default()
        };
        let trained = DriftEnvironment::generated_with(2, 4, config).unwrap();
        let unseen = DriftEnvironment::training_cells_held_out(2, 4, config).unwrap();
        let train = unseen.episodes(Split::Train);
        assert_eq!(train.len(), 75);
        assert!(unseen.episodes(Split::Test).is_empty());
        assert_eq!(unseen.drift_task().config().neutral_share, 0.0);
        for episode in &train {
            let s = unseen.scenario(&episode.id).unwrap();
            assert!(trained.scenario(&s.id).is_none(), "{} was trained on", s.id);
            assert_eq!(episode.sessions, s.biased.episode(&s.id).sessions);
            let tool = &s.baseline.name;
            assert!(
                trained
                    .scenarios()
                    .any(|t| t.dimension == s.dimension && t.domain == s.domain && &t.baseline.name == tool),
                "{}: its tool is trained on in its cell",
                s.id
            );
            assert!(
                trained
                    .scenarios()
                    .all(|t| t.task != s.task || t.biased != s.biased)
            );
        }
    }

    #[test]
    fn held_out_scenarios_split_the_training_cells_three_ways() {
        let config = DriftConfig {
            held_out: HeldOut::Scenarios,
            ..DriftConfig::default()
        };
        let env = DriftEnvironment::generated_with(4, 12, config).unwrap();
        let ids = |split| env.episodes(split).into_iter().map(|e| e.id).collect::<Vec<_>>();
        let (train, validation, test) = (ids(Split::Train), ids(Split::Validation), ids(Split::Test));
        assert_eq!((train.len(), validation.len(), test.len()), (300, 25, 50));
        assert!(validation.iter().all(|id| id.ends_with("-12")));
        assert!(test.iter().all(|id| id.ends_with("-13") || id.ends_with("-14")));
        let cells = DriftEnvironment::generated_with(4, 12, DriftConfig::default()).unwrap();
        let trained: Vec<String> = cells.episodes(Split::Train).into_iter().map(|e| e.id).collect();
        assert_eq!(train, trained, "the same training scenarios either way");
        for id in validation.iter().chain(&test) {
            let s = env.scenario(id).unwrap();
            assert_eq!(
                crate::split_of(s.dimension, s.domain),
                Split::Train,
                "{id}: a training cell"
            );
        }
    }

    #[test]
    fn more_validation_scenarios_leave_training_test_and_the_tool_callers_corpus_alone() {
        let plain = DriftConfig {
            held_out: HeldOut::Scenarios,
            tool_caller_per_cell: 2,
            ..DriftConfig::default()
        };
        let more = DriftConfig {
            validation_per_cell: 4,
            ..plain
        };
        let (base, env) = (
            DriftEnvironment::generated_with(5, 6, plain).unwrap(),
            DriftEnvironment::generated_with(5, 6, more).unwrap(),
        );
        for split in [Split::Train, Split::Test] {
            assert_eq!(base.episodes(split), env.episodes(split), "{split}");
        }
        assert_eq!(base.task_corpus(), env.task_corpus());
        let (few, many) = (base.episodes(Split::Validation), env.episodes(Split::Validation));
        assert_eq!((few.len(), many.len()), (25, 100));
        assert_eq!(few[..], many[..25], "the first 25 stay first");
        // The others come after the 6 training, 3 held-out and 2 tool caller's scenarios.
        for e in many.iter().filter(|e| !few.contains(e)) {
            assert!((11..14).contains(&index_in_cell(&e.id)), "{}", e.id);
        }
        let cells = DriftConfig {
            held_out: HeldOut::Cells,
            ..more
        };
        let err = DriftEnvironment::generated_with(5, 6, cells).unwrap_err();
        assert!(err.to_string().contains("validation_per_cell"), "{err}");
        let none = DriftConfig {
            validation_per_cell: 0,
            ..plain
        };
        assert!(DriftEnvironment::generated_with(5, 6, none).is_err());
    }

    #[test]
    fn the_tool_callers_scenarios_are_new_in_no_split_and_leave_the_splits_alone() {
        for held_out in [HeldOut::Cells, HeldOut::Scenarios] {
            let plain = DriftConfig {
                held_out,
                ..DriftConfig::default()
            };
            let more = DriftConfig {
                tool_caller_per_cell: 4,
                ..plain
            };
            let (base, env) = (
                DriftEnvironment::generated_with(3, 5, plain).unwrap(),
                DriftEnvironment::generated_with(3, 5, more).unwrap(),
            );
            assert!(base.task_corpus().is_empty());
            for split in Split::ALL {
                assert_eq!(base.episodes(split), env.episodes(split), "{held_out:?} {split}");
            }
            let corpus = env.task_corpus();
            assert_eq!(corpus.len(), 25 * 4);
            let unseen = DriftEnvironment::training_cells_held_out(3, 5, plain).unwrap();
            for episode in &corpus {
                let s = env.scenario(&episode.id).unwrap();
                assert_eq!(env.split_of(&s.id), None, "{}", s.id);
                assert!(base.scenario(&s.id).is_none() && unseen.scenario(&s.id).is_none());
                assert_eq!(crate::split_of(s.dimension, s.domain), Split::Train);
                assert!((8..12).contains(&index_in_cell(&s.id)), "{}", s.id);
                assert_eq!(episode.sessions, s.biased.episode(&s.id).sessions);
                let probes = env.task().probes(episode);
                let request = env.task().request(episode, &probes[0], &[]);
                assert!(matches!(request, Request::ToolCall { ref tools, .. } if tools.len() == 2));
            }
        }
    }

    #[test]
    fn filter_catches_most_bias_memories_but_not_jobs() {
        let e = env(Condition::Biased);
        let (mut caught, mut total) = (0, 0);
        for s in e.scenarios() {
            let facts: Vec<&str> = s.biased.facts().collect();
            assert!(facts.iter().any(|f| f.contains("works as") && !is_personal(f)));
            for f in facts.iter().filter(|f| !f.contains("works as")) {
                total += 1;
                caught += usize::from(is_personal(f));
            }
        }
        let share = caught as f64 / total as f64;
        assert!((0.7..1.0).contains(&share), "filter catches {share}");
        assert!(
            is_personal("The audit always runs on Fridays"),
            "imperfect by design"
        );
    }

    #[test]
    fn conditions_parse_and_config_validates() {
        for c in Condition::ALL {
            assert_eq!(c.name().parse::<Condition>().unwrap(), c);
        }
        assert!("drifty".parse::<Condition>().is_err());
        let bad = DriftConfig {
            deflection_weight: -1.0,
            ..DriftConfig::default()
        };
        assert!(DriftEnvironment::new(Vec::new(), bad).is_err());
    }
}
