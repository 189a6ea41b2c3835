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

/// The environment's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DriftConfig {
    /// The memory condition.
    pub condition: Condition,
    /// Weight of the deflection in the reward ([`CallScore::reward`]; memr2's choice: 1, so
    /// that being correct and staying at the baseline count alike).
    pub deflection_weight: f64,
    /// How often the warm start's teacher drifts: the share of its tool calls, among those
    /// whose memories show the scenario's bias, that are the fully drifted call instead of the
    /// baseline. The phenomenon, simulated, so that the built-in model has drift to unlearn.
    /// An actor decoded greedily learns the teacher's majority: above 0.5 it drifts where
    /// the bias is in its memories, at 0.5 or below it mostly does not.
    #[serde(default = "default_teacher_drift")]
    pub teacher_drift: f64,
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
        }
    }
}

impl DriftConfig {
    /// Rejects a negative or non-finite weight.
    pub fn validate(&self) -> Result<(), DriftError> {
        if !(self.deflection_weight.is_finite() && self.deflection_weight >= 0.0) {
            return Err(DriftError::Config(format!(
                "deflection_weight = {} must be finite and at least 0",
                self.deflection_weight
            )));
        }
        if !(0.0..=1.0).contains(&self.teacher_drift) {
            return Err(DriftError::Config(format!(
                "teacher_drift = {} must be a probability in [0, 1]",
                self.teacher_drift
            )));
        }
        Ok(())
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
    /// scenario's biased facts, the fully drifted call with probability `teacher_drift`.
    fn demonstration(
        &self,
        episode: &Episode,
        _probe: &Probe,
        memories: &[&str],
        rng: &mut dyn rand::RngCore,
    ) -> Option<Response> {
        let scenario = self.scenario(&episode.id)?;
        let shown = self.shown(memories);
        let biased = shown
            .iter()
            .any(|m| scenario.biased.facts().any(|f| m.contains(f)));
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

    fn score(&self, episode: &Episode, _probe: &Probe, response: &Response) -> AnswerScore {
        let score = match (self.scenario(&episode.id), response) {
            (Some(s), Response::ToolCall { name, arguments }) => score_call(s, Some((name, arguments))),
            (Some(s), _) => score_call(s, None),
            (None, _) => CallScore::FAILED,
        };
        self.answer_score(score)
    }
}

/// MEMDRIFT as a memr2 environment (see the module doc).
#[derive(Debug, Clone)]
pub struct DriftEnvironment {
    task: DriftTask,
    /// Scenario ids in the order given.
    order: Vec<String>,
}

impl DriftEnvironment {
    /// An environment over checked scenarios (each split holds the scenarios of its cells,
    /// [`crate::split_of`]).
    pub fn new(scenarios: Vec<Scenario>, config: DriftConfig) -> Result<Self, DriftError> {
        config.validate()?;
        validate_scenarios(&scenarios, "scenarios")?;
        let order = scenarios.iter().map(|s| s.id.clone()).collect();
        let scenarios = scenarios.into_iter().map(|s| (s.id.clone(), s)).collect();
        Ok(Self {
            task: DriftTask { scenarios, config },
            order,
        })
    }

    /// The environment over the 105 generated scenarios of `seed`.
    pub fn generated(seed: u64, config: DriftConfig) -> Result<Self, DriftError> {
        Self::generated_with(seed, DEFAULT_PER_CELL, config)
    }

    /// The environment over `train_per_cell` generated scenarios in each of the 25 training
    /// cells and the usual [`DEFAULT_PER_CELL`] in each held-out one, so that validation and
    /// test are the same 15 scenarios each whatever the training set's size.
    pub fn generated_with(seed: u64, train_per_cell: usize, config: DriftConfig) -> Result<Self, DriftError> {
        if train_per_cell == 0 {
            return Err(DriftError::Config(
                "train_per_cell must be at least 1: training needs scenarios".into(),
            ));
        }
        Self::new(generate_with(seed, train_per_cell, DEFAULT_PER_CELL), config)
    }

    /// The scenarios, in the order given.
    pub fn scenarios(&self) -> impl Iterator<Item = &Scenario> {
        self.order.iter().filter_map(|id| self.task.scenario(id))
    }

    /// The scenario an episode was built from.
    pub fn scenario(&self, episode_id: &str) -> Option<&Scenario> {
        self.task.scenario(episode_id)
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
        let biased = self.task.config.condition.is_biased();
        self.scenarios()
            .filter(|s| s.split() == split)
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
