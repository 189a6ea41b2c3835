//! The typed training configuration, its presets, and `validate()`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memr2_logo_grpo::LogoGrpoConfig;
use memr2_sim::Category;
use memr2_store::{Embedder, MinScores, Retrieval};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::served::ServedEmbedder;

/// Named starting points for a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The built-in CPU run: synthetic world, tiny model, full 8 -> 16 -> 32 curriculum.
    Default,
    /// A few minutes end to end, for CI and quick checks.
    Smoke,
    /// The tool-drift environment (MEMDRIFT): a defence against memory-induced tool drift
    /// trained with LoGo-GRPO.
    Drift,
}

/// Where episodes come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DataSpec {
    /// The seeded synthetic world of `memr2-sim`.
    Synthetic {
        /// `default` or `smoke` world size.
        size: WorldSize,
        /// Seed of the world (independent of the training seed).
        seed: u64,
        /// Questions per conversation at its full length (absent: the size's own, 16 for
        /// `default`). The conversations do not depend on it, only their questions do; more
        /// questions give each rollout's reward and the evaluation more to go on, at the cost
        /// of answering them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        questions: Option<usize>,
        /// Conversations in the test split (absent: the size's own, 64 for `default`). Every
        /// conversation is a function of its split and index, so a larger split keeps the first
        /// ones and adds others; `eval.test_episodes` may not exceed it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test_episodes: Option<usize>,
    },
    /// LoCoMo from a local `locomo10.json` (the paper's split).
    Locomo {
        /// Path to `locomo10.json`.
        path: PathBuf,
    },
    /// A data file in any format `memr2_sim::load_dataset` reads (LoCoMo JSON, LongMemEval
    /// JSON, memr2 episodes as JSON Lines), told apart by its content.
    File {
        /// Path to the file.
        path: PathBuf,
    },
    /// MEMDRIFT, memory-induced tool drift (`memr2-drift`): the built-in scenarios of a
    /// seed under a memory condition.
    Drift {
        /// Seed of the scenario generator.
        seed: u64,
        /// Memory condition, reward weight and the warm start's drift rate.
        #[serde(default)]
        drift: memr2_drift::DriftConfig,
        /// Scenarios in each of the 25 training cells (absent: 3, as in each held-out cell).
        /// The held-out scenarios do not change with it.
        #[serde(default = "default_train_per_cell")]
        train_per_cell: usize,
    },
    /// An environment defined in code outside memr2 and passed to `train::run_with`; only
    /// its name is recorded.
    External {
        /// The environment's name.
        name: String,
    },
}

fn default_train_per_cell() -> usize {
    memr2_drift::DEFAULT_PER_CELL
}

/// Size of the synthetic world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorldSize {
    /// Sized for the default CPU run.
    Default,
    /// Sized for the smoke run.
    Smoke,
}

impl DataSpec {
    /// The synthetic world's generator settings (its size's, with the spec's questions and
    /// test split), or `None` for data of any other kind.
    pub fn synthetic_world(&self) -> Option<memr2_sim::WorldConfig> {
        let DataSpec::Synthetic {
            size,
            questions,
            test_episodes,
            ..
        } = self
        else {
            return None;
        };
        let mut world = match size {
            WorldSize::Default => memr2_sim::WorldConfig::default_cpu(),
            WorldSize::Smoke => memr2_sim::WorldConfig::smoke(),
        };
        if let Some(questions) = questions {
            world.questions = *questions;
        }
        if let Some(test) = test_episodes {
            world.test_episodes = *test;
        }
        Some(world)
    }
}

/// Which backbone the policy uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelSpec {
    /// The built-in tiny transformer, trained from scratch with our own BPE tokenizer.
    Tiny {
        /// Vocabulary size of the BPE tokenizer trained on the data.
        vocab_size: usize,
        /// Hidden size.
        hidden_size: usize,
        /// Number of decoder layers.
        layers: usize,
        /// Attention heads.
        heads: usize,
    },
    /// A pretrained Hugging Face checkpoint directory (Qwen2 / Llama).
    Pretrained {
        /// The directory holding `config.json`, safetensors and `tokenizer.json`.
        dir: PathBuf,
    },
}

/// Supervised warm start on the simulator's imperfect teacher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// Passes over the teacher traces (0 skips the warm start).
    pub epochs: usize,
    /// Peak AdamW learning rate.
    pub learning_rate: f64,
    /// Optimiser steps of linear warm-up to the peak rate.
    #[serde(default = "default_warmup_steps")]
    pub warmup_steps: usize,
    /// The rate decays along a cosine to this fraction of the peak by the last step (1.0 keeps
    /// it constant).
    #[serde(default = "default_min_lr_fraction")]
    pub min_lr_fraction: f64,
    /// Sequences per optimiser step.
    pub batch_size: usize,
    /// Weight of the prompt tokens in the loss against 1 for a completion token (0: the
    /// completions alone, as in instruction tuning of a pretrained model).
    #[serde(default)]
    pub prompt_loss_weight: f64,
    /// Teacher mistakes: probability of ADD where UPDATE was right.
    pub add_instead_of_update: f64,
    /// Teacher mistakes: probability of leaving out a DELETE.
    pub miss_delete: f64,
    /// Teacher mistakes: probability of dropping a fact.
    pub drop_fact: f64,
}

fn default_warmup_steps() -> usize {
    50
}

fn default_min_lr_fraction() -> f64 {
    0.1
}

impl SftConfig {
    /// The learning rate of optimiser step `step` (0-based) out of `total`.
    pub fn learning_rate_at(&self, step: usize, total: usize) -> f64 {
        let peak = self.learning_rate;
        if step < self.warmup_steps {
            return peak * (step + 1) as f64 / (self.warmup_steps + 1) as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        peak * (self.min_lr_fraction + (1.0 - self.min_lr_fraction) * cosine)
    }
}

/// The frozen answerer: the SFT model tuned further on answerer examples alone, so that it
/// learns to copy the answer out of the memories it is shown. The policy (extractor and
/// manager) and the KL reference stay the SFT model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswererConfig {
    /// Passes over the answerer examples (0: the SFT model itself answers).
    pub epochs: usize,
    /// Peak AdamW learning rate (warm-up and cosine decay as in the SFT stage).
    pub learning_rate: f64,
    /// Answerer examples are drawn from the perfect teacher's memory after every this many
    /// sessions, up to the largest curriculum horizon, so the answerer reads memories of
    /// every size.
    pub horizon_stride: usize,
    /// Weight of the prompt tokens in the loss (see `SftConfig::prompt_loss_weight`).
    #[serde(default)]
    pub prompt_loss_weight: f64,
}

impl Default for AnswererConfig {
    /// No separate answerer: what a configuration written without this section means.
    fn default() -> Self {
        Self {
            epochs: 0,
            learning_rate: 2e-3,
            horizon_stride: 4,
            prompt_loss_weight: 0.0,
        }
    }
}

/// The reinforcement-learning stage: rollouts and updates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlConfig {
    /// The LoGo-GRPO objective and grouping (n, k, p_local, clip, KL, ...).
    pub logo: LogoGrpoConfig,
    /// Training conversations per step (each rolled out `n` times).
    pub episodes_per_step: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// RL steps at the start of each stage over which the learning rate ramps up linearly:
    /// step `j` of a stage (from 0) uses `(j + 1) / (warmup_steps + 1)` of `learning_rate`
    /// (absent: 0, no ramp). Each stage starts with a fresh AdamW, whose first updates move
    /// every parameter by about the learning rate, however small and noisy its gradient.
    #[serde(default)]
    pub warmup_steps: usize,
    /// Global gradient-norm clip.
    pub max_grad_norm: f64,
    /// Sequences per minibatch in the update.
    pub minibatch_size: usize,
    /// Sampling temperature of global rollouts: 1, as `validate()` requires (the update takes
    /// rollouts as samples of the untempered policy).
    pub temperature: f32,
    /// Nucleus sampling threshold: 1, as `validate()` requires.
    pub top_p: f32,
    /// Train on the first this many training conversations only (absent: all of them). One
    /// conversation is the overfitting check of a new environment or objective: the step
    /// reward, on the same conversation every step, should climb.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_episodes: Option<usize>,
    /// Question categories left out of the rollouts' rewards, global and local (absent: none).
    /// The answerer still learns every category, and validation and the evaluation score them
    /// all. Leaving out `unanswerable` and `adversarial` takes away the reward an empty memory
    /// earns by answering "unknown" (docs/RESULTS.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reward_excludes: Vec<Category>,
    /// A control, not a way to train: permute the rewards within every group before the
    /// advantages, so that each update has the real one's sizes and tokens and none of its
    /// information. What RL learns should beat a placebo run (absent: false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub placebo: bool,
    /// Recompute the update's old log-probs with a forward pass over every sample instead of
    /// taking those the sampler recorded, which agree with them to rounding (absent: false;
    /// docs/PERF.md has what it costs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recompute_old_logprobs: bool,
    /// Train the actor (the answerer, or MEMDRIFT's tool caller) by RL beside the memory
    /// (absent: the actor stays frozen, as in Memory-R2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<ActorRlConfig>,
}

/// RL on the actor: every step, each probe asked of a global rollout's final memory is also
/// answered `samples` times by sampling, the answers form a group of their own (one prompt,
/// one memory, so the comparison is the actor's alone), and the actor takes a clipped
/// policy-gradient update on them with the memory's loss settings. The memory's rewards are
/// still those of the actor's greedy answers, as in validation and evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorRlConfig {
    /// Answers sampled per prompt (the group size, at least 2).
    pub samples: usize,
    /// The actor's AdamW learning rate.
    pub learning_rate: f64,
}

impl RlConfig {
    /// The learning rate of step `step_in_stage` (from 0) of a curriculum stage.
    pub fn learning_rate_at(&self, step_in_stage: usize) -> f64 {
        let ramp = (step_in_stage + 1) as f64 / (self.warmup_steps + 1) as f64;
        self.learning_rate * ramp.min(1.0)
    }
}

/// The progressive curriculum over horizons.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurriculumConfig {
    /// Horizons (sessions) of the stages, in order: the paper's 8 -> 16 -> 32.
    pub horizons: Vec<usize>,
    /// RL steps per stage.
    pub steps_per_stage: usize,
    /// Validate (and keep the best checkpoint) every this many steps.
    pub validate_every: usize,
    /// Which checkpoint of a stage the next stage starts from, and the last stage hands to
    /// the evaluation (absent: the best one).
    #[serde(default, skip_serializing_if = "Keep::is_best")]
    pub keep: Keep,
}

/// Which checkpoint of a curriculum stage is carried on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// The checkpoint with the stage's best validation F1, the stage's start included: a
    /// stage whose updates never beat its start on validation hands on its start, and its
    /// steps are discarded. The stage's last step is saved too, as `last-stage-N`, when it is
    /// not the best.
    #[default]
    Best,
    /// The stage's last step, whatever validation says. Validation is still run, logged and
    /// saved as `best-stage-N`: what RL itself does, without selection on a small validation
    /// set (docs/RESULTS.md).
    Last,
}

impl Keep {
    fn is_best(&self) -> bool {
        *self == Keep::Best
    }
}

impl CurriculumConfig {
    /// The longest horizon of the curriculum.
    pub fn max_horizon(&self) -> usize {
        self.horizons.iter().copied().max().unwrap_or(0)
    }
}

/// How the agent is run: retrieval, chunking and generation lengths.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Chunks each session is split into for the extractor.
    pub chunks_per_session: usize,
    /// Memories the manager sees for each fact.
    pub manager_top_k: usize,
    /// Memories the answerer sees for each question.
    pub answer_top_k: usize,
    /// Minimum BM25 score of a retrieved memory.
    pub min_score: f32,
    /// Token budget of the extractor's output.
    pub max_extract_tokens: usize,
    /// Token budget of the manager's output.
    pub max_manage_tokens: usize,
    /// Token budget of the answerer's output.
    pub max_answer_tokens: usize,
    /// Token budget of a tool call (tasks that ask for one); absent from a configuration, 96.
    #[serde(default = "default_tool_call_tokens")]
    pub max_tool_call_tokens: usize,
    /// Strict tool calls: the built-in actor's tool calls are decoded under the tools' JSON
    /// Schemas (`memr2_policy::strict`), so that every call is a valid call and the model
    /// chooses its tool and values, as function-calling servers do with guided decoding.
    /// Absent: false, the actor writes the call freely and a malformed one is a format error.
    /// Served actors are asked as they are.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict_tool_calls: bool,
    /// At most this many facts a chunk may contribute (longer lists are cut).
    pub max_facts_per_chunk: usize,
    /// Each batched generation is split into this many parts generated side by side on the
    /// machine's cores, each sampling from its own seeded generator: the output depends on
    /// this value, not on the core count. 1 keeps the batch whole (what a GPU wants); absent
    /// from a configuration, it is 1.
    #[serde(default = "one_shard")]
    pub generation_shards: usize,
    /// How memories are retrieved for the manager and the answerer: `bm25` (absent from a
    /// configuration), or `dense` / `hybrid` (embeddings from `served.embeddings`; hybrid fuses
    /// both lists by reciprocal rank).
    #[serde(default, skip_serializing_if = "is_bm25")]
    pub retrieval: Retrieval,
    /// Least cosine similarity of a memory retrieved by embeddings (dense and hybrid); absent
    /// from a configuration, 0.1, the paper's manager's threshold.
    #[serde(default = "default_dense_min_score")]
    pub dense_min_score: f32,
    /// Show the model each role's tag instead of its instruction as the system message
    /// (`memr2_policy::roles::shown_system`), in training, generation and serving alike: for a
    /// model trained from scratch, which learns the formats from the examples (absent: false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compact_prompts: bool,
    /// The embedder attached to every memory the run creates, when retrieval uses embeddings:
    /// set at run time from `served.embeddings`, never written to a configuration.
    #[serde(skip)]
    pub embedder: EmbedderSlot,
}

fn is_bm25(retrieval: &Retrieval) -> bool {
    *retrieval == Retrieval::Bm25
}

fn default_dense_min_score() -> f32 {
    0.1
}

/// An embedder attached at run time ([`AgentConfig::embedder`]), and the served model behind
/// it when there is one, whose failures [`EmbedderSlot::check`] reports. Two slots are equal
/// when both are empty or both hold the same embedder.
#[derive(Clone, Default)]
pub struct EmbedderSlot {
    /// What the memory store calls.
    pub embedder: Option<Arc<dyn Embedder>>,
    served: Option<Arc<ServedEmbedder>>,
}

impl EmbedderSlot {
    /// A slot holding any embedder (one of the library user's own, a test's).
    pub fn local(embedder: Arc<dyn Embedder>) -> Self {
        Self {
            embedder: Some(embedder),
            served: None,
        }
    }

    /// A slot holding a served embedding model.
    pub fn served(served: Arc<ServedEmbedder>) -> Self {
        Self {
            embedder: Some(served.clone()),
            served: Some(served),
        }
    }

    /// The served model's first failure since the last check (none for other embedders).
    pub fn check(&self) -> Result<(), TrainError> {
        self.served.as_ref().map_or(Ok(()), |s| s.check())
    }

    /// The served model's request counts, when the embedder is served.
    pub fn stats(&self) -> Option<memr2_openai::client::ClientStats> {
        self.served.as_ref().map(|s| s.stats())
    }
}

impl std::fmt::Debug for EmbedderSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.embedder {
            None => f.write_str("EmbedderSlot(none)"),
            Some(e) => write!(f, "EmbedderSlot(dim {})", e.dim()),
        }
    }
}

impl PartialEq for EmbedderSlot {
    fn eq(&self, other: &Self) -> bool {
        match (&self.embedder, &other.embedder) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl AgentConfig {
    /// The least scores of retrieved memories, per index.
    pub fn min_scores(&self) -> MinScores {
        MinScores {
            bm25: self.min_score,
            dense: self.dense_min_score,
        }
    }
}

/// Evaluation sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Validation conversations used to pick the best checkpoint of a stage.
    pub validation_episodes: usize,
    /// Horizon of the validation that picks a stage's best checkpoint (absent: the stage's
    /// own horizon). Validating every stage at the evaluation's horizon scores all candidates
    /// on more questions and on what the run is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_sessions: Option<usize>,
    /// Test conversations of the final evaluation.
    pub test_episodes: usize,
    /// Horizon of the final evaluation.
    pub sessions: usize,
}

/// Everything a training run needs; written to the run directory as `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Seed of everything random in training (sampling, shuffles, branch choice).
    pub seed: u64,
    /// The episodes.
    pub data: DataSpec,
    /// The backbone.
    pub model: ModelSpec,
    /// Agent settings.
    pub agent: AgentConfig,
    /// Supervised warm start.
    pub sft: SftConfig,
    /// The frozen answerer's own tuning after the warm start.
    #[serde(default)]
    pub answerer: AnswererConfig,
    /// Reinforcement learning.
    pub rl: RlConfig,
    /// Curriculum.
    pub curriculum: CurriculumConfig,
    /// Evaluation.
    pub eval: EvalConfig,
    /// Data parallelism: every training minibatch (SFT, the answerer's tuning, the RL update)
    /// is split into this many shards whose gradients are computed on up to as many threads
    /// as the machine has cores, and summed (`memr2_trainer::shard`). The sum is the whole
    /// minibatch's gradient up to rounding, and a run's numbers depend on this value, not on
    /// the machine's core count. Small shards are also faster per token on one core (less
    /// padding, activations in cache; docs/PERF.md), so the CPU preset uses 8; a GPU wants 1.
    /// Absent from a configuration, it is 1.
    #[serde(default = "one_shard")]
    pub shards: usize,
    /// Over several ranks (`mpirun`), compare a checksum of the weights across the ranks after
    /// every update (each SFT epoch, each RL step) and stop with an error naming the ranks
    /// that differ. Cheap (one pass over the weights); off unless asked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub check_replicas: bool,
    /// Models behind OpenAI-compatible endpoints that the run calls instead of its own
    /// (`crate::served`); none by default.
    #[serde(default, skip_serializing_if = "crate::served::ServedConfig::is_empty")]
    pub served: crate::served::ServedConfig,
}

fn one_shard() -> usize {
    1
}

impl TrainConfig {
    /// The configuration of a preset.
    pub fn preset(preset: Preset) -> Self {
        match preset {
            Preset::Default => Self::default_cpu(),
            Preset::Smoke => Self::smoke(),
            Preset::Drift => Self::drift(),
        }
    }

    /// The built-in CPU run. Sizes are chosen from the measured CPU rates in docs/PERF.md: the
    /// whole run (10 SFT epochs, the answerer, three curriculum stages, evaluation) takes about
    /// 19 minutes alone on two cores (the release build, docs/PERF.md), more than half of it the
    /// SFT epochs the extractor needs before it copies facts well (docs/RESULTS.md). The
    /// objective's defaults are the paper's, except the group sizes (n = 4, k = 4 instead of 8
    /// and 4), which the CPU budget forces. The RL learning rate (5e-5) was chosen over 2e-4 on three seeds. Every
    /// stage validates at the evaluation's 32 sessions, so that the checkpoints of all stages
    /// are compared on the same 256 validation questions (16 conversations); the evaluation
    /// reads 64 test conversations (1,024 questions).
    pub fn default_cpu() -> Self {
        let logo = LogoGrpoConfig {
            n_rollouts: 4,
            ..LogoGrpoConfig::default()
        };
        Self {
            seed: 0,
            data: DataSpec::Synthetic {
                size: WorldSize::Default,
                seed: 7,
                questions: None,
                test_episodes: None,
            },
            model: ModelSpec::Tiny {
                vocab_size: 1024,
                hidden_size: 128,
                layers: 4,
                heads: 4,
            },
            agent: AgentConfig {
                generation_shards: 2,
                ..AgentConfig::default()
            },
            sft: SftConfig {
                epochs: 10,
                learning_rate: 4e-3,
                warmup_steps: default_warmup_steps(),
                min_lr_fraction: default_min_lr_fraction(),
                batch_size: 16,
                prompt_loss_weight: 0.1,
                add_instead_of_update: 0.25,
                miss_delete: 0.25,
                drop_fact: 0.1,
            },
            answerer: AnswererConfig {
                epochs: 4,
                learning_rate: 4e-3,
                prompt_loss_weight: 0.1,
                ..AnswererConfig::default()
            },
            rl: RlConfig {
                logo,
                episodes_per_step: 1,
                learning_rate: 5e-5,
                warmup_steps: 0,
                max_grad_norm: 1.0,
                minibatch_size: 32,
                temperature: 1.0,
                top_p: 1.0,
                train_episodes: None,
                reward_excludes: Vec::new(),
                placebo: false,
                recompute_old_logprobs: false,
                actor: None,
            },
            curriculum: CurriculumConfig {
                horizons: vec![8, 16, 32],
                steps_per_stage: 12,
                validate_every: 4,
                keep: Keep::Best,
            },
            eval: EvalConfig {
                validation_episodes: 16,
                validation_sessions: Some(32),
                test_episodes: 64,
                sessions: 32,
            },
            shards: 8,
            check_replicas: false,
            served: Default::default(),
        }
    }

    /// A run of a few minutes: smoke-sized world, two short stages.
    pub fn smoke() -> Self {
        let mut config = Self::default_cpu();
        config.data = DataSpec::Synthetic {
            size: WorldSize::Smoke,
            seed: 7,
            questions: None,
            test_episodes: None,
        };
        config.model = ModelSpec::Tiny {
            vocab_size: 512,
            hidden_size: 64,
            layers: 2,
            heads: 4,
        };
        config.sft.epochs = 30;
        config.rl.logo.n_rollouts = 3;
        config.rl.logo.k_rerollouts = 2;
        config.rl.logo.p_local = 0.5;
        config.curriculum = CurriculumConfig {
            horizons: vec![4, 8],
            steps_per_stage: 2,
            validate_every: 2,
            keep: Keep::Best,
        };
        config.eval = EvalConfig {
            validation_episodes: 1,
            validation_sessions: None,
            test_episodes: 2,
            sessions: 8,
        };
        config
    }

    /// The tool-drift defence: the default model and objective on 300 MEMDRIFT training
    /// scenarios (12 per training cell, 3 sessions each; half of them played with their
    /// neutral control), warm-started on a teacher that drifts on every call whose memories
    /// show a bias statement, each tool-call example paired with the same call over
    /// the scenario's other conversation ([`memr2_sim::Task::contrasts`]); the tool caller
    /// (the frozen answerer) then tuned on the calls of 36 more scenarios per training cell
    /// (`tool_caller_per_cell`, 2,400 examples), enough for it to learn to drift; the actor's
    /// tool calls held to the tools' schemas; then 60 steps of LoGo-GRPO (learning rate
    /// 2e-4) at the scenarios' full length, rewarded by task correctness minus the
    /// deflection, averaged at half weight with the share of the user's other facts the
    /// memory keeps (`retention_weight` 0.5); validated and tested on new scenarios of the
    /// training cells (100 and 50, [`memr2_drift::HeldOut::Scenarios`],
    /// `validation_per_cell` 4), the only ones on which a model trained from scratch can
    /// drift. `memr2 drift eval --split held-out-cells` measures the held-out
    /// cells.
    pub fn drift() -> Self {
        let mut config = Self::default_cpu();
        config.data = DataSpec::Drift {
            seed: 0,
            drift: memr2_drift::DriftConfig {
                // At 0.8 the tool caller of this training step learned to drift only a
                // little, or not at all (deflection 1.00 and 1.32 with biased memories, two
                // seeds); at 1 it drifts (2.76) (docs/RESULTS.md, "Tool drift").
                teacher_drift: 1.0,
                neutral_share: 0.5,
                held_out: memr2_drift::HeldOut::Scenarios,
                // With the 12 training scenarios alone (about three drifted calls per tool
                // and bias) the tool caller did not learn to drift on new scenarios; with 36
                // more it does (docs/RESULTS.md, "Tool drift").
                tool_caller_per_cell: 36,
                // Without a reward for what the memory keeps, RL cut drift mostly by storing
                // less; at 0.5 it cut more than at 1 and kept most of the rest
                // (docs/RESULTS.md, "Tool drift").
                retention_weight: 0.5,
                // 100 validation scenarios: with the 25 of one per cell, validation never
                // rose above the preset's warm start, and RL changed nothing
                // (docs/RESULTS.md, "Tool drift").
                validation_per_cell: 4,
                ..memr2_drift::DriftConfig::default()
            },
            train_per_cell: 12,
        };
        config.agent.max_tool_call_tokens = 128;
        config.agent.strict_tool_calls = true;
        // The extractor copies facts only after its copying transition: validation precision
        // 47% after 3 epochs, 90% after 10 (docs/RESULTS.md, "Tool drift").
        config.sft.epochs = 10;
        config.answerer.epochs = 4;
        config.rl.logo.p_local = 0.5;
        config.rl.episodes_per_step = 2;
        // At 5e-5, 60 steps cut one warm start's drift by 0.48 on the mean of three seeds; at
        // 2e-4 by 1.04 without the retention term, 1.09 with weight 0.5 (docs/RESULTS.md).
        config.rl.learning_rate = 2e-4;
        config.curriculum = CurriculumConfig {
            horizons: vec![3],
            steps_per_stage: 60,
            validate_every: 10,
            keep: Keep::Best,
        };
        config.eval = EvalConfig {
            validation_episodes: 100,
            validation_sessions: None,
            test_episodes: 50,
            sessions: 3,
        };
        config
    }

    /// The trained policy's name in tables and reports: the algorithm (LoGo-GRPO, or GRPO
    /// when it has no local groups), with "(placebo)" when its rewards are permuted.
    pub fn policy_name(&self) -> String {
        let algorithm = if self.rl.logo.p_local > 0.0 {
            "LoGo-GRPO"
        } else {
            "GRPO (global only)"
        };
        if self.rl.placebo {
            format!("{algorithm} (placebo)")
        } else {
            algorithm.to_string()
        }
    }

    /// Reads a JSON configuration file.
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Self = serde_json::from_str(&text).map_err(|source| TrainError::Config {
            path: path.to_path_buf(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses a retrieval that needs embeddings without an embedding model served, and a
    /// cosine threshold out of range (what an evaluation of a run checks too).
    pub fn check_retrieval(&self) -> Result<(), TrainError> {
        let bad = |what: String| Err(TrainError::Invalid(what));
        let embedder = self.served.embeddings.is_some() || self.agent.embedder.embedder.is_some();
        if self.agent.retrieval.needs_embedder() && !embedder {
            return bad(format!(
                "agent.retrieval is {} but no embedding model is served (served.embeddings) or \
                 attached (agent.embedder): pass --embedding-endpoint URL, or --retrieval bm25",
                self.agent.retrieval
            ));
        }
        if !(-1.0..=1.0).contains(&self.agent.dense_min_score) {
            return bad(format!(
                "agent.dense_min_score is a cosine similarity, between -1 and 1; got {}",
                self.agent.dense_min_score
            ));
        }
        Ok(())
    }

    /// Rejects bad values and bad combinations before any work starts.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |what: String| Err(TrainError::Invalid(what));
        if self.served.answerer.is_some() && self.answerer.epochs > 0 {
            return bad(format!(
                "answerer.epochs is {} but the answerer is served (served.answerer): a served answerer is \
                 not tuned, set answerer.epochs to 0 (--answerer-epochs 0)",
                self.answerer.epochs
            ));
        }
        self.check_retrieval()?;
        self.rl
            .logo
            .validate()
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
        if self.curriculum.horizons.is_empty() {
            return bad("curriculum.horizons is empty".into());
        }
        if self.curriculum.horizons.windows(2).any(|w| w[0] >= w[1]) || self.curriculum.horizons[0] == 0 {
            return bad(format!(
                "curriculum.horizons must grow strictly from at least 1, got {:?}",
                self.curriculum.horizons
            ));
        }
        if self.curriculum.validate_every == 0 {
            return bad("curriculum.validate_every must be at least 1".into());
        }
        if self.rl.train_episodes == Some(0) {
            return bad("rl.train_episodes must be at least 1 when given".into());
        }
        if self.rl.episodes_per_step == 0 || self.rl.minibatch_size == 0 {
            return bad("rl.episodes_per_step and rl.minibatch_size must be at least 1".into());
        }
        if !(self.rl.learning_rate > 0.0 && self.rl.learning_rate.is_finite()) {
            return bad(format!(
                "rl.learning_rate must be positive, got {}",
                self.rl.learning_rate
            ));
        }
        if !(self.sft.learning_rate > 0.0 && self.sft.learning_rate.is_finite()) {
            return bad(format!(
                "sft.learning_rate must be positive, got {}",
                self.sft.learning_rate
            ));
        }
        if !(0.0..=1.0).contains(&self.sft.min_lr_fraction) {
            return bad(format!(
                "sft.min_lr_fraction must be in [0, 1], got {}",
                self.sft.min_lr_fraction
            ));
        }
        if !(self.answerer.learning_rate > 0.0 && self.answerer.learning_rate.is_finite()) {
            return bad(format!(
                "answerer.learning_rate must be positive, got {}",
                self.answerer.learning_rate
            ));
        }
        for (name, w) in [
            ("sft.prompt_loss_weight", self.sft.prompt_loss_weight),
            ("answerer.prompt_loss_weight", self.answerer.prompt_loss_weight),
        ] {
            if !(w >= 0.0 && w.is_finite()) {
                return bad(format!("{name} must be a finite weight >= 0, got {w}"));
            }
        }
        if self.answerer.horizon_stride == 0 {
            return bad("answerer.horizon_stride must be at least 1".into());
        }
        if let DataSpec::Synthetic {
            questions: Some(0), ..
        } = self.data
        {
            return bad("data.questions must be at least 1 when given".into());
        }
        if let Some(available) = self.data.synthetic_world().map(|w| w.test_episodes)
            && self.eval.test_episodes > available
        {
            return bad(format!(
                "eval.test_episodes = {} exceeds the synthetic world's {available} test \
                 conversations; set data.test_episodes to at least {0} to generate more (the \
                 first {available} stay as they are)",
                self.eval.test_episodes
            ));
        }
        if self.shards == 0 {
            return bad("shards must be at least 1".into());
        }
        if self.sft.batch_size == 0 {
            return bad("sft.batch_size must be at least 1".into());
        }
        for (name, p) in [
            ("sft.add_instead_of_update", self.sft.add_instead_of_update),
            ("sft.miss_delete", self.sft.miss_delete),
            ("sft.drop_fact", self.sft.drop_fact),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{name} is a probability, got {p}"));
            }
        }
        if self.rl.max_grad_norm.is_nan() || self.rl.max_grad_norm <= 0.0 {
            return bad("rl.max_grad_norm must be positive".into());
        }
        // The update treats every rollout as a sample of the untempered policy: the old
        // log-probs recorded at generation are the full-vocabulary, untempered ones, as the
        // PPO ratio's numerator is. Sampling at another temperature, or from a nucleus, would
        // make every update off-policy without saying so.
        let untempered = |t: f32| t == 1.0;
        if !untempered(self.rl.temperature)
            || !untempered(self.rl.logo.rerollout_temperature)
            || self.rl.top_p != 1.0
        {
            return bad(format!(
                "rl.temperature = {}, rl.logo.rerollout_temperature = {} and rl.top_p = {} must all be 1: \
                 the update takes rollouts as samples of the untempered policy (its old log-probs are \
                 the full-vocabulary, untempered ones), so another temperature or a nucleus would make \
                 every update off-policy; a temperature of 0 would also make a group's rollouts identical",
                self.rl.temperature, self.rl.logo.rerollout_temperature, self.rl.top_p
            ));
        }
        if let Some(actor) = &self.rl.actor {
            if actor.samples < 2 {
                return bad(format!(
                    "rl.actor.samples must be at least 2 (a group of one answer has nothing to compare), got {}",
                    actor.samples
                ));
            }
            if !(actor.learning_rate > 0.0 && actor.learning_rate.is_finite()) {
                return bad(format!(
                    "rl.actor.learning_rate must be positive, got {}",
                    actor.learning_rate
                ));
            }
            if self.served.answerer.is_some() {
                return bad(
                    "rl.actor trains the run's own actor, but the answerer is served (served.answerer): \
                            drop one of the two"
                        .into(),
                );
            }
        }
        let a = &self.agent;
        if a.chunks_per_session == 0 || a.manager_top_k == 0 || a.answer_top_k == 0 {
            return bad("agent.chunks_per_session, manager_top_k and answer_top_k must be at least 1".into());
        }
        if a.generation_shards == 0 {
            return bad("agent.generation_shards must be at least 1".into());
        }
        if [
            a.max_extract_tokens,
            a.max_manage_tokens,
            a.max_answer_tokens,
            a.max_tool_call_tokens,
        ]
        .contains(&0)
        {
            return bad("agent token budgets must be at least 1".into());
        }
        if self.eval.sessions == 0 || self.eval.validation_sessions == Some(0) {
            return bad("eval.sessions and eval.validation_sessions must be at least 1".into());
        }
        if let ModelSpec::Tiny {
            vocab_size,
            hidden_size,
            layers,
            heads,
        } = &self.model
        {
            if *heads == 0 || hidden_size % heads != 0 || (hidden_size / heads) % 2 != 0 {
                return bad(format!(
                    "model.hidden_size ({hidden_size}) must split into an even head size over {heads} heads"
                ));
            }
            if *layers == 0 || *vocab_size < 300 {
                return bad(
                    "model.layers must be >= 1 and model.vocab_size >= 300 (256 bytes + specials)".into(),
                );
            }
        }
        Ok(())
    }
}

fn default_tool_call_tokens() -> usize {
    96
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            chunks_per_session: 1,
            manager_top_k: 3,
            answer_top_k: 4,
            min_score: 0.0,
            max_extract_tokens: 96,
            max_manage_tokens: 48,
            max_answer_tokens: 12,
            max_tool_call_tokens: default_tool_call_tokens(),
            strict_tool_calls: false,
            max_facts_per_chunk: 6,
            generation_shards: 1,
            retrieval: Retrieval::Bm25,
            dense_min_score: default_dense_min_score(),
            compact_prompts: false,
            embedder: EmbedderSlot::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sft_schedule_warms_up_then_decays_to_the_floor() {
        let sft = TrainConfig::default_cpu().sft;
        let total = 1000;
        let rates: Vec<f64> = (0..total).map(|s| sft.learning_rate_at(s, total)).collect();
        assert!(rates[0] < sft.learning_rate / 10.0);
        let peak = rates.iter().cloned().fold(0.0, f64::max);
        assert!((peak - sft.learning_rate).abs() < 1e-3 * sft.learning_rate);
        assert!(rates.windows(2).skip(sft.warmup_steps).all(|w| w[1] <= w[0]));
        let floor = sft.learning_rate * sft.min_lr_fraction;
        assert!((rates[total - 1] - floor).abs() < 1e-3 * sft.learning_rate);
        let constant = SftConfig {
            min_lr_fraction: 1.0,
            warmup_steps: 0,
            ..sft.clone()
        };
        assert!((0..total).all(|s| constant.learning_rate_at(s, total) == sft.learning_rate));
    }

    #[test]
    fn presets_validate() {
        TrainConfig::default_cpu().validate().unwrap();
        TrainConfig::smoke().validate().unwrap();
    }

    #[test]
    fn json_round_trip() {
        let config = TrainConfig::default_cpu();
        let text = serde_json::to_string_pretty(&config).unwrap();
        let back: TrainConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(config, back);
    }

    #[test]
    fn bad_combinations_are_rejected() {
        let mut c = TrainConfig::smoke();
        c.curriculum.horizons = vec![16, 8];
        assert!(c.validate().is_err());
        let mut c = TrainConfig::smoke();
        c.model = ModelSpec::Tiny {
            vocab_size: 512,
            hidden_size: 66,
            layers: 2,
            heads: 4,
        };
        assert!(c.validate().is_err());
        let mut c = TrainConfig::smoke();
        c.sft.drop_fact = 1.5;
        assert!(c.validate().is_err());
        let mut c = TrainConfig::smoke();
        c.answerer.horizon_stride = 0;
        assert!(c.validate().is_err());
        let mut c = TrainConfig::smoke();
        c.answerer.learning_rate = f64::NAN;
        assert!(c.validate().is_err());
        let mut c = TrainConfig::smoke();
        c.rl.train_episodes = Some(0);
        assert!(c.validate().is_err());
        c.rl.train_episodes = Some(1);
        assert!(c.validate().is_ok());
        let mut c = TrainConfig::smoke();
        c.shards = 0;
        assert!(c.validate().is_err());
        // Tempered or nucleus rollouts would be off-policy for the update: refused, by name.
        for change in [
            |c: &mut TrainConfig| c.rl.temperature = 0.0,
            |c: &mut TrainConfig| c.rl.temperature = 0.7,
            |c: &mut TrainConfig| c.rl.top_p = 0.9,
            |c: &mut TrainConfig| c.rl.logo.rerollout_temperature = 1.2,
        ] {
            let mut c = TrainConfig::smoke();
            change(&mut c);
            let refused = c.validate().unwrap_err().to_string();
            assert!(refused.contains("off-policy"), "{refused}");
        }
        // RL on the actor: a group needs two answers, and a served answerer is not ours to train.
        let actor = |samples, learning_rate| {
            let mut c = TrainConfig::smoke();
            c.rl.actor = Some(ActorRlConfig {
                samples,
                learning_rate,
            });
            c
        };
        assert!(actor(4, 1e-4).validate().is_ok());
        let refused = actor(1, 1e-4).validate().unwrap_err().to_string();
        assert!(refused.contains("rl.actor.samples"), "{refused}");
        let refused = actor(4, 0.0).validate().unwrap_err().to_string();
        assert!(refused.contains("rl.actor.learning_rate"), "{refused}");
        let mut c = actor(4, 1e-4);
        c.answerer.epochs = 0;
        c.served.answerer = Some(memr2_openai::client::Endpoint::new("http://127.0.0.1:9/v1", "m"));
        let refused = c.validate().unwrap_err().to_string();
        assert!(refused.contains("served.answerer"), "{refused}");
        let mut c = TrainConfig::smoke();
        c.eval.validation_sessions = Some(0);
        assert!(c.validate().is_err());
        c.eval.validation_sessions = Some(8);
        assert!(c.validate().is_ok());
        let mut c = TrainConfig::smoke();
        c.agent.retrieval = Retrieval::Hybrid;
        let refused = c.validate().unwrap_err().to_string();
        assert!(refused.contains("--embedding-endpoint"), "{refused}");
        c.served.embeddings = Some(memr2_openai::client::Endpoint::new("http://127.0.0.1:1/v1", "e"));
        assert!(c.validate().is_ok());
        c.agent.dense_min_score = 1.5;
        assert!(c.check_retrieval().is_err());
        // A library user's own embedder does as well as a served one.
        struct Ones;
        impl Embedder for Ones {
            fn dim(&self) -> usize {
                2
            }
            fn embed(&self, _text: &str) -> Result<Vec<f32>, String> {
                Ok(vec![1.0, 1.0])
            }
        }
        let mut c = TrainConfig::smoke();
        c.agent.retrieval = Retrieval::Dense;
        c.agent.embedder = EmbedderSlot::local(Arc::new(Ones));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn retrieval_round_trips_and_defaults_to_bm25() {
        let mut config = TrainConfig::smoke();
        let text = serde_json::to_string(&config).unwrap();
        assert!(!text.contains("\"retrieval\""), "bm25 is left out: {text}");
        config.agent.retrieval = Retrieval::Dense;
        config.agent.dense_min_score = 0.25;
        let back: TrainConfig = serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(back, config);
        assert_eq!(back.agent.retrieval, Retrieval::Dense);
    }

    #[test]
    fn rl_warmup_ramps_the_learning_rate_then_holds_it() {
        let mut rl = TrainConfig::default_cpu().rl;
        rl.learning_rate = 6e-5;
        rl.warmup_steps = 2;
        let rates: Vec<f64> = (0..5).map(|j| rl.learning_rate_at(j)).collect();
        for (got, want) in rates.iter().zip([2e-5, 4e-5, 6e-5, 6e-5, 6e-5]) {
            assert!((got - want).abs() < 1e-12, "{rates:?}");
        }
        rl.warmup_steps = 0;
        assert_eq!(rl.learning_rate_at(0), 6e-5);
        // Configurations written before the field existed have no ramp.
        let mut value = serde_json::to_value(TrainConfig::default_cpu()).unwrap();
        value["rl"].as_object_mut().unwrap().remove("warmup_steps");
        let config: TrainConfig = serde_json::from_value(value).unwrap();
        assert_eq!(config.rl.warmup_steps, 0);
    }

    #[test]
    fn reward_excludes_name_question_categories() {
        let mut value = serde_json::to_value(TrainConfig::default_cpu()).unwrap();
        value["rl"]["reward_excludes"] = serde_json::json!(["unanswerable", "adversarial"]);
        let config: TrainConfig = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(
            config.rl.reward_excludes,
            vec![Category::Unanswerable, Category::Adversarial]
        );
        value["rl"]["reward_excludes"] = serde_json::json!(["nonsense"]);
        assert!(serde_json::from_value::<TrainConfig>(value).is_err());
        assert!(TrainConfig::default_cpu().rl.reward_excludes.is_empty());
    }

    #[test]
    fn a_config_without_shards_is_not_sharded() {
        let mut value = serde_json::to_value(TrainConfig::default_cpu()).unwrap();
        value.as_object_mut().unwrap().remove("shards");
        let config: TrainConfig = serde_json::from_value(value).unwrap();
        assert_eq!(config.shards, 1);
        assert_eq!(TrainConfig::default_cpu().shards, 8);
    }

    #[test]
    fn a_config_without_an_answerer_section_keeps_the_sft_answerer() {
        let mut value = serde_json::to_value(TrainConfig::default_cpu()).unwrap();
        value.as_object_mut().unwrap().remove("answerer");
        let config: TrainConfig = serde_json::from_value(value).unwrap();
        assert_eq!(config.answerer.epochs, 0);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn unknown_fields_and_bad_json_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, "{\"seed\": 1, \"nonsense\": true}").unwrap();
        let err = TrainConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("c.json"), "{err}");
        std::fs::write(&path, "{ truncated").unwrap();
        assert!(TrainConfig::from_file(&path).is_err());
        assert!(TrainConfig::from_file(&dir.path().join("missing.json")).is_err());
    }
}
