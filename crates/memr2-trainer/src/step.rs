//! One LoGo-GRPO step: global rollouts in lockstep, rewards from the frozen answerer, local
//! rerollouts from branched memories, advantages per group, and the update.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::tensor::backend::AutodiffBackend;
use memr2_logo_grpo::{GroupKey, Sample, compute_advantages};
use memr2_policy::Transformer;
use memr2_policy::tokenizer::Tokenizer;
use memr2_sim::{Episode, Probe, ScoreBoard, Task, probes_up_to};
use memr2_store::TokenCounter;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::agent::{
    Agent, Generator, OpCounts, ProbeItem, RolloutSampling, RolloutState, SessionJob, TokenizerCounter,
    ask_probes, run_sessions, sample_probe_responses,
};
use crate::config::TrainConfig;
use crate::reward::{cumulative_session_tokens, penalty_after, rollout_reward};
use crate::served::Answerer;
use crate::update::{TrainSample, UpdateSettings, UpdateStats, ppo_update};

/// The frozen parts of a step.
pub struct StepContext<'a, B: AutodiffBackend> {
    /// Tokenizer of the policy (and answerer).
    pub tokenizer: &'a Tokenizer,
    /// The frozen answerer that supplies the reward: a model of the run or a served one. When
    /// RL trains the actor too (`rl.actor`), the actor being trained answers instead, and this
    /// one, the actor it started from, is its KL reference.
    pub answerer: Answerer<'a, B::InnerBackend>,
    /// What the answerer does with a memory and how it is scored.
    pub task: &'a dyn Task,
    /// The frozen reference policy of the KL term (`None` when its coefficient is zero).
    pub reference: Option<&'a Transformer<B::InnerBackend>>,
    /// The run's configuration.
    pub config: &'a TrainConfig,
}

/// The actor that RL trains beside the memory (`rl.actor`), with its optimizer.
pub struct ActorState<B: AutodiffBackend, O> {
    /// The actor's weights.
    pub model: Transformer<B>,
    /// Its optimizer.
    pub optim: O,
}

/// What the actor's part of a step measured (`rl.actor`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ActorMetrics {
    /// Task values of the sampled answers.
    pub reward: MeanStd,
    /// Fraction of the answer groups (one prompt each) whose values were all equal.
    pub zero_variance_fraction: f64,
    /// Sampled answers that did not parse.
    pub format_errors: u64,
    /// Seconds sampling and scoring the answers.
    pub sampling_s: f64,
    /// Seconds in the actor's update.
    pub update_s: f64,
    /// The actor's update.
    pub update: UpdateStats,
}

/// Mean and standard deviation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    /// Mean.
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    /// Count.
    pub n: usize,
}

impl MeanStd {
    /// Of a list of values.
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        if n == 0 {
            return Self::default();
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        Self {
            mean,
            std: var.sqrt(),
            n,
        }
    }
}

/// Everything one step measured; one JSON line of `metrics.jsonl`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Global step number (1-based, over all stages).
    pub step: u64,
    /// Curriculum horizon of the step.
    pub horizon: usize,
    /// Ids of the training conversations the step rolled out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub episodes: Vec<String>,
    /// Learning rate of the step's update.
    #[serde(default)]
    pub learning_rate: f64,
    /// Per-session rewards of global samples.
    pub reward_global: MeanStd,
    /// Rewards of local rerollouts.
    pub reward_local: MeanStd,
    /// Mean F1 of the global rollouts' final memories.
    pub f1: f64,
    /// F1 per question category.
    pub f1_by_category: BTreeMap<String, f64>,
    /// Fraction of groups whose rewards were all equal.
    pub zero_variance_fraction: f64,
    /// Global and local groups.
    pub groups: usize,
    /// Local groups among them.
    pub local_groups: usize,
    /// The update's statistics.
    pub update: UpdateStats,
    /// Operations applied in the global rollouts.
    pub ops: OpCounts,
    /// Extractor / manager outputs that did not parse.
    pub format_errors: u64,
    /// Answerer outputs that did not parse.
    pub answer_format_errors: u64,
    /// A served answerer's requests, cache hits, retries, errors and tokens since the run (or
    /// its resumption) started; absent when the answerer is a model of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_answerer: Option<memr2_openai::client::ClientStats>,
    /// Requests, cache hits, errors and tokens of the served embedding model so far, when
    /// retrieval uses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_embeddings: Option<memr2_openai::client::ClientStats>,
    /// Mean entries in a final memory.
    pub memory_entries: f64,
    /// Mean whitespace tokens in a final memory.
    pub memory_tokens: f64,
    /// Mean memory-size penalty term `c`.
    pub memory_penalty: f64,
    /// Tokens generated by the trained roles per second of rollout.
    pub rollout_tokens_per_s: f64,
    /// Tokens through the training forward per second of update.
    pub update_tokens_per_s: f64,
    /// Seconds in global and local rollouts (generation, retrieval, parsing).
    pub rollout_s: f64,
    /// Seconds answering questions (rewards).
    pub scoring_s: f64,
    /// Seconds in the update.
    pub update_s: f64,
    /// Seconds of the whole step.
    pub step_s: f64,
    /// The actor's sampled answers and update, when RL trains the actor (`rl.actor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<ActorMetrics>,
    /// Seconds of the step spent in collectives across ranks (exchanging parts and gradients,
    /// and waiting for the slowest rank); absent in a run of one process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collective_s: Option<f64>,
}

/// Permutes the rewards among the members of each group: the placebo update of
/// `rl.placebo`, with the real update's advantages (the same values per group) attached to
/// the wrong samples.
fn shuffle_within_groups(samples: &mut [Sample], rng: &mut ChaCha8Rng) {
    let mut groups: BTreeMap<GroupKey, Vec<usize>> = BTreeMap::new();
    for (i, sample) in samples.iter().enumerate() {
        groups.entry(sample.key).or_default().push(i);
    }
    for members in groups.values() {
        let mut rewards: Vec<f32> = members.iter().map(|&i| samples[i].reward).collect();
        rewards.shuffle(rng);
        for (&i, reward) in members.iter().zip(rewards) {
            samples[i].reward = reward;
        }
    }
}

/// Whose reward a sample of the step is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SampleOwner {
    /// Session `session` of global rollout `rollout` of episode `episode`.
    Global {
        /// Index into the step's episodes.
        episode: usize,
        /// Index among the episode's `n` rollouts.
        rollout: usize,
        /// 1-based session.
        session: u32,
    },
    /// Local rerollout `index` (into [`Collected::local`]).
    Local {
        /// Index into [`Collected::local`].
        index: usize,
    },
}

/// One local rerollout: session `session` of episode `episode` rerun from global rollout
/// `branch`'s memory after session `session - 1`, scored at once on `probes`.
#[derive(Clone, Debug)]
pub struct Rerollout {
    /// Index into the step's episodes.
    pub episode: usize,
    /// The 1-based session rerun.
    pub session: u32,
    /// The global rollout whose memory it branches.
    pub branch: usize,
    /// Indices of the probes its memory was scored on (the same for the whole group).
    pub probes: Vec<usize>,
    /// The rerollout: `snapshots[0]` the branched memory, `snapshots[1]` the memory after it.
    pub state: RolloutState,
}

/// What a step collected before its update: the rollouts, every sample's reward and group
/// with its advantage, and the generations to train on.
pub struct Collected {
    /// Global rollouts, `[episode][rollout]`.
    pub global: Vec<Vec<RolloutState>>,
    /// Local rerollouts, `k` consecutive ones per group.
    pub local: Vec<Rerollout>,
    /// Rewards and group keys: global samples first, then local ones.
    pub samples: Vec<Sample>,
    /// Whose reward each sample is, aligned with `samples`.
    pub owners: Vec<SampleOwner>,
    /// The advantage of each sample, aligned with `samples`.
    pub advantages: Vec<f32>,
    /// The recorded generations of samples with a non-zero advantage, each with its
    /// sample's advantage. Samples of zero-variance groups are left out before any forward
    /// pass: in the loss they would carry only the KL and entropy terms, and with half the
    /// groups at zero variance (docs/RESULTS.md) their passes would be half the update's cost.
    /// The KL to the reference and the entropy bonus therefore act, and are reported, on the
    /// samples the update learns from, which is where they restrain it.
    pub train: Vec<TrainSample>,
    /// The step's metrics so far (all but the update's).
    pub metrics: StepMetrics,
}

/// Runs one step on `episodes` (already cut to the stage's horizon), updating at
/// `learning_rate`, and returns the updated model with the step's metrics. With `actor`
/// (`rl.actor`), that actor answers instead of `ctx.answerer` and is updated on answers of its
/// own after the memory's update.
pub fn rl_step<B, O>(
    model: Transformer<B>,
    optim: &mut O,
    actor: Option<&mut ActorState<B, O>>,
    ctx: &StepContext<'_, B>,
    episodes: &[Episode],
    learning_rate: f64,
    rng: &mut ChaCha8Rng,
) -> Result<(Transformer<B>, StepMetrics), crate::TrainError>
where
    B: AutodiffBackend,
    O: Optimizer<Transformer<B>, B>,
{
    let start = Instant::now();
    let world = crate::collective::world();
    let waited_before = world.waited();
    let cfg = ctx.config;
    let policy = model.valid();
    let agent = Agent {
        model: &policy,
        tokenizer: ctx.tokenizer,
        config: &cfg.agent,
    };
    let actor_now = actor.as_ref().map(|a| a.model.valid());
    let answering = match &actor_now {
        Some(model) => Answerer::Local(model),
        None => ctx.answerer,
    };
    let answerer = answering.generator(ctx.tokenizer, &cfg.agent);
    let counter = TokenizerCounter(ctx.tokenizer);
    let collected = collect(&agent, &answerer, ctx.task, &counter, cfg, episodes, rng)?;
    // A served answerer that failed leaves rewards that mean nothing: stop before the update.
    ctx.answerer.check()?;
    cfg.agent.embedder.check()?;
    let mut metrics = collected.metrics;
    if let Answerer::Served(served) = ctx.answerer {
        metrics.served_answerer = Some(served.stats());
    }
    metrics.served_embeddings = cfg.agent.embedder.stats();
    metrics.learning_rate = learning_rate;

    // 5. The update.
    let update_start = Instant::now();
    let logo = &cfg.rl.logo;
    let loss = logo.loss_config();
    let settings = UpdateSettings {
        loss: &loss,
        epochs: logo.ppo_epochs,
        minibatch_size: cfg.rl.minibatch_size,
        learning_rate,
        max_grad_norm: cfg.rl.max_grad_norm,
        shards: cfg.shards,
    };
    let (model, update) = ppo_update(model, optim, ctx.reference, &collected.train, &settings, rng);
    metrics.update_s = update_start.elapsed().as_secs_f64();
    metrics.update_tokens_per_s = update.tokens as f64 / metrics.update_s.max(1e-9);
    metrics.update = update;

    // 6. The actor's own answers and update, when RL trains it.
    if let (Some(state), Some(current), Some(actor_cfg)) = (actor, &actor_now, &cfg.rl.actor) {
        let sampling_start = Instant::now();
        let speaker = Agent {
            model: current,
            tokenizer: ctx.tokenizer,
            config: &cfg.agent,
        };
        let (train, mut actor_metrics) = actor_samples(
            &speaker,
            ctx.task,
            cfg,
            episodes,
            &collected.global,
            actor_cfg.samples,
            rng,
        )?;
        actor_metrics.sampling_s = sampling_start.elapsed().as_secs_f64();
        let reference = match ctx.answerer {
            Answerer::Local(frozen) if cfg.rl.logo.kl_coef > 0.0 => Some(frozen),
            _ => None,
        };
        let settings = UpdateSettings {
            learning_rate: actor_cfg.learning_rate,
            ..settings
        };
        let update_start = Instant::now();
        let (next, update) = ppo_update(
            state.model.clone(),
            &mut state.optim,
            reference,
            &train,
            &settings,
            rng,
        );
        state.model = next;
        actor_metrics.update_s = update_start.elapsed().as_secs_f64();
        actor_metrics.update = update;
        metrics.actor = Some(actor_metrics);
    }
    metrics.step_s = start.elapsed().as_secs_f64();
    if world.size() > 1 {
        metrics.collective_s = Some((world.waited() - waited_before).as_secs_f64());
    }
    Ok((model, metrics))
}

/// Every probe of every global rollout's final memory, episode by episode and rollout by
/// rollout: what the rewards and the actor's samples are asked of.
fn final_probe_items<'a>(
    episodes: &'a [Episode],
    global: &'a [Vec<RolloutState>],
    probes: &'a [Vec<Probe>],
) -> Vec<ProbeItem<'a>> {
    let mut items = Vec::new();
    for (e, episode) in episodes.iter().enumerate() {
        for state in &global[e] {
            let memory = state.snapshots.last().expect("a rollout has its start snapshot");
            items.extend(probes[e].iter().map(|probe| ProbeItem {
                memory,
                episode,
                probe,
            }));
        }
    }
    items
}

/// The actor's training samples of a step (`rl.actor`): every probe of every global
/// rollout's final memory answered `samples` times by sampling, each prompt's answers a group
/// whose advantages are their task values normalised within it (`rl.logo.advantage_scaling`),
/// and the answers with a non-zero advantage as samples.
fn actor_samples(
    actor: &impl Generator,
    task: &dyn Task,
    cfg: &TrainConfig,
    episodes: &[Episode],
    global: &[Vec<RolloutState>],
    samples: usize,
    rng: &mut ChaCha8Rng,
) -> Result<(Vec<TrainSample>, ActorMetrics), crate::TrainError> {
    let probes: Vec<Vec<Probe>> = episodes.iter().map(|e| task.probes(e)).collect();
    let items = final_probe_items(episodes, global, &probes);
    let answered = sample_probe_responses(actor, task, &items, samples, rng);
    let mut scored = Vec::new();
    let mut metrics = ActorMetrics::default();
    for (i, answers) in answered.iter().enumerate() {
        for answer in answers {
            scored.push(Sample::new(
                GroupKey::global(i as u64, 0),
                answer.score.f1 as f32,
                scored.len(),
            ));
            metrics.format_errors += u64::from(!answer.parsed);
        }
    }
    let values: Vec<f64> = scored.iter().map(|s| f64::from(s.reward)).collect();
    metrics.reward = MeanStd::of(&values);
    if cfg.rl.placebo {
        shuffle_within_groups(&mut scored, rng);
    }
    let logo = &cfg.rl.logo;
    let advantages = compute_advantages(&scored, logo.advantage_scaling, logo.advantage_eps)?;
    metrics.zero_variance_fraction = advantages.zero_variance_groups as f64 / advantages.groups.max(1) as f64;
    let train = answered
        .into_iter()
        .flatten()
        .zip(&advantages.values)
        .filter(|(_, advantage)| **advantage != 0.0)
        .map(|(answer, &advantage)| TrainSample {
            prompt: answer.generated.prompt,
            completion: answer.generated.completion,
            advantage,
            local: false,
            old_logprobs: (!cfg.rl.recompute_old_logprobs).then_some(answer.generated.logprobs),
        })
        .collect();
    Ok((train, metrics))
}

/// Phases 1-4 of a step, without the model: global rollouts, their rewards, local
/// rerollouts and theirs, advantages per group, and the samples to train on. `policy` writes
/// the trained roles' completions, `answerer` answers the task's probes.
pub fn collect(
    policy: &impl Generator,
    answerer: &impl Generator,
    task: &dyn Task,
    counter: &dyn TokenCounter,
    cfg: &TrainConfig,
    episodes: &[Episode],
    rng: &mut ChaCha8Rng,
) -> Result<Collected, crate::TrainError> {
    let logo = &cfg.rl.logo;
    let n = logo.n_rollouts;
    // The answerer draws from a generator of its own, seeded by one draw per step, so that
    // how it asks (its generation parts, how many probes) never moves the rollouts' stream.
    let mut answer_rng = ChaCha8Rng::seed_from_u64(rand::RngCore::next_u64(rng));
    let horizon = episodes.iter().map(|e| e.sessions.len()).max().unwrap_or(0);
    let mut metrics = StepMetrics {
        horizon,
        episodes: episodes.iter().map(|e| e.id.clone()).collect(),
        ..StepMetrics::default()
    };

    // 1. Global rollouts, all sessions, in lockstep across episodes and rollouts.
    let rollout_start = Instant::now();
    let mut global: Vec<Vec<RolloutState>> = episodes
        .iter()
        .map(|_| vec![RolloutState::new(policy.config()); n])
        .collect();
    let sampling = RolloutSampling {
        temperature: cfg.rl.temperature,
        top_p: cfg.rl.top_p,
        record: true,
    };
    {
        let _span = tracing::info_span!("rollout", horizon).entered();
        for s in 1..=horizon as u32 {
            let mut jobs: Vec<SessionJob<'_>> = episodes
                .iter()
                .zip(global.iter_mut())
                .filter(|(e, _)| e.sessions.len() >= s as usize)
                .flat_map(|(e, rs)| {
                    rs.iter_mut().map(move |state| SessionJob {
                        episode: e,
                        session: s,
                        state,
                    })
                })
                .collect();
            run_sessions(policy, &mut jobs, sampling, rng);
        }
    }
    metrics.rollout_s = rollout_start.elapsed().as_secs_f64();

    // 2. Rewards of the global rollouts: the task's probes asked of their final memories.
    let scoring_start = Instant::now();
    let mut board = ScoreBoard::default();
    let mut samples = Vec::new();
    let mut owners = Vec::new();
    let probes: Vec<Vec<Probe>> = episodes.iter().map(|e| task.probes(e)).collect();
    // The conversation's size in tokens after each session: the memory penalty's reference.
    let session_tokens: Vec<Vec<usize>> = episodes
        .iter()
        .map(|e| cumulative_session_tokens(e, counter))
        .collect();
    {
        let _span = tracing::info_span!("scoring").entered();
        let items = final_probe_items(episodes, &global, &probes);
        let (scores, failures) = ask_probes(answerer, task, &items, &mut answer_rng);
        metrics.answer_format_errors = failures;
        let mut offset = 0;
        let mut penalties = Vec::new();
        let mut f1_all = Vec::new();
        for (e, episode_probes) in probes.iter().enumerate() {
            let sessions: Vec<Option<u32>> = episode_probes.iter().map(|p| p.session).collect();
            for (r, state) in global[e].iter().enumerate() {
                let scored = &scores[offset..offset + probes[e].len()];
                offset += probes[e].len();
                for (probe, score) in probes[e].iter().zip(scored) {
                    board.add_score(probe.category, *score);
                }
                let values: Vec<f64> = scored.iter().map(|s| s.f1).collect();
                let reward = rollout_reward(
                    logo.reward_mode,
                    logo.lambda,
                    &sessions,
                    &values,
                    &state.snapshots,
                    &session_tokens[e],
                    counter,
                )?;
                f1_all.push(reward.mean_f1);
                penalties.push(reward.mean_penalty);
                for (s, value) in (1u32..).zip(&reward.per_session) {
                    let key = GroupKey::global(e as u64, s);
                    samples.push(Sample::new(key, *value as f32, samples.len()));
                    owners.push(SampleOwner::Global {
                        episode: e,
                        rollout: r,
                        session: s,
                    });
                }
            }
        }
        metrics.f1 = MeanStd::of(&f1_all).mean;
        metrics.memory_penalty = MeanStd::of(&penalties).mean;
    }
    metrics.scoring_s = scoring_start.elapsed().as_secs_f64();
    let n_global = samples.len();

    // 3. Local rerollouts: branch one rollout's memory after session s-1, rerun session s k
    //    times with sampling, score at once on probes from sessions 1..=s.
    let local_start = Instant::now();
    let mut local: Vec<Rerollout> = Vec::new();
    if logo.p_local > 0.0 {
        for (e, episode) in episodes.iter().enumerate() {
            for s in 1..=episode.sessions.len() as u32 {
                if !rng.random_bool(logo.p_local) || probes_up_to(&probes[e], s).is_empty() {
                    continue;
                }
                let branch = rng.random_range(0..n);
                let base = global[e][branch].snapshots[s as usize - 1].clone();
                for _ in 0..logo.k_rerollouts {
                    local.push(Rerollout {
                        episode: e,
                        session: s,
                        branch,
                        probes: Vec::new(),
                        state: RolloutState::from_snapshot(base.clone()),
                    });
                }
            }
        }
        let local_sampling = RolloutSampling {
            temperature: logo.rerollout_temperature,
            top_p: cfg.rl.top_p,
            record: true,
        };
        let _span = tracing::info_span!("rerollout", rollouts = local.len()).entered();
        let mut jobs: Vec<SessionJob<'_>> = local
            .iter_mut()
            .map(|re| SessionJob {
                episode: &episodes[re.episode],
                session: re.session,
                state: &mut re.state,
            })
            .collect();
        run_sessions(policy, &mut jobs, local_sampling, rng);
    }
    let mut local_rewards = Vec::new();
    if !local.is_empty() {
        let _span = tracing::info_span!("local_scoring").entered();
        // The same probes for the k members of a group.
        let mut chosen: BTreeMap<(usize, u32, usize), Vec<usize>> = BTreeMap::new();
        for re in &local {
            chosen
                .entry((re.episode, re.session, re.branch))
                .or_insert_with(|| {
                    let pool = probes_up_to(&probes[re.episode], re.session);
                    pool.choose_multiple(rng, logo.local_questions.min(pool.len()))
                        .map(|p| p.index)
                        .collect()
                });
        }
        for re in &mut local {
            re.probes = chosen[&(re.episode, re.session, re.branch)].clone();
        }
        let mut items = Vec::new();
        for re in &local {
            let memory = re
                .state
                .snapshots
                .last()
                .expect("a rerollout ends with its snapshot");
            let episode = &episodes[re.episode];
            items.extend(re.probes.iter().map(|&p| ProbeItem {
                memory,
                episode,
                probe: &probes[re.episode][p],
            }));
        }
        let (scores, failures) = ask_probes(answerer, task, &items, &mut answer_rng);
        metrics.answer_format_errors += failures;
        let mut offset = 0;
        for (index, re) in local.iter().enumerate() {
            let f1: Vec<f64> = scores[offset..offset + re.probes.len()]
                .iter()
                .map(|s| s.f1)
                .collect();
            offset += re.probes.len();
            let mean_f1 = f1.iter().sum::<f64>() / f1.len().max(1) as f64;
            let c = penalty_after(
                re.state.snapshots.last().expect("snapshot"),
                session_tokens[re.episode][re.session as usize - 1],
                counter,
            );
            let reward = mean_f1 - logo.lambda * c;
            local_rewards.push(reward);
            let key = GroupKey::local(re.episode as u64, re.session, re.branch as u32);
            samples.push(Sample::new(key, reward as f32, samples.len()));
            owners.push(SampleOwner::Local { index });
        }
    }
    metrics.rollout_s += local_start.elapsed().as_secs_f64();

    // 4. Advantages per group, then the samples to train on.
    if cfg.rl.placebo {
        shuffle_within_groups(&mut samples, rng);
    }
    let advantages = compute_advantages(&samples, logo.advantage_scaling, logo.advantage_eps)?;
    metrics.groups = advantages.groups;
    metrics.local_groups = local.len() / logo.k_rerollouts.max(1);
    metrics.zero_variance_fraction = advantages.zero_variance_groups as f64 / advantages.groups.max(1) as f64;
    let global_rewards: Vec<f64> = samples[..n_global].iter().map(|s| s.reward as f64).collect();
    metrics.reward_global = MeanStd::of(&global_rewards);
    metrics.reward_local = MeanStd::of(&local_rewards);

    let advantage_of: BTreeMap<SampleOwner, f32> = owners
        .iter()
        .copied()
        .zip(advantages.values.iter().copied())
        .collect();
    let mut train = Vec::new();
    let mut generated = 0u64;
    // The sampler's log-probs are the update's old ones, unless asked to recompute them.
    let recorded =
        |rec: &crate::agent::GenRecord| (!cfg.rl.recompute_old_logprobs).then(|| rec.logprobs.clone());
    for (e, rollouts) in global.iter().enumerate() {
        for (r, state) in rollouts.iter().enumerate() {
            metrics.ops.merge(&state.stats.ops);
            metrics.format_errors += state.stats.format_errors;
            generated += state.stats.generated_tokens;
            let last = state.snapshots.last().expect("snapshot");
            metrics.memory_entries += last.len() as f64;
            metrics.memory_tokens += last.token_count() as f64;
            for rec in &state.records {
                let owner = SampleOwner::Global {
                    episode: e,
                    rollout: r,
                    session: rec.session,
                };
                let advantage = advantage_of[&owner];
                if advantage != 0.0 {
                    train.push(TrainSample {
                        prompt: rec.prompt.clone(),
                        completion: rec.completion.clone(),
                        advantage,
                        local: false,
                        old_logprobs: recorded(rec),
                    });
                }
            }
        }
    }
    let rollouts = (episodes.len() * n).max(1) as f64;
    metrics.memory_entries /= rollouts;
    metrics.memory_tokens /= rollouts;
    for (index, re) in local.iter().enumerate() {
        generated += re.state.stats.generated_tokens;
        let advantage = advantage_of[&SampleOwner::Local { index }];
        if advantage == 0.0 {
            continue;
        }
        train.extend(re.state.records.iter().map(|rec| TrainSample {
            prompt: rec.prompt.clone(),
            completion: rec.completion.clone(),
            advantage,
            local: true,
            old_logprobs: recorded(rec),
        }));
    }
    metrics.rollout_tokens_per_s = generated as f64 / metrics.rollout_s.max(1e-9);
    metrics.f1_by_category = board
        .categories()
        .into_iter()
        .map(|(category, s)| (category.name().to_string(), s.f1))
        .collect();
    Ok(Collected {
        global,
        local,
        samples,
        owners,
        advantages: advantages.values,
        train,
        metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Generated;
    use crate::config::AgentConfig;
    use memr2_logo_grpo::{AdvantageScaling, RewardMode};
    use memr2_policy::roles::{self, ChatPrompt, ExtractedFact, MemoryOperation, Role};
    use memr2_sim::{Category, DiaId, Question, Session, Turn};
    use memr2_store::WhitespaceCounter;
    use rand::SeedableRng;

    /// The policy, scripted: the extractor writes one fact per chunk, `note s{S} good` or
    /// `note s{S} bad` by a coin from the step's generator (so rollouts differ); the manager
    /// ADDs every fact it is shown.
    struct ScriptedPolicy(AgentConfig);

    /// The answerer, scripted: question `note s{S}` is answered right (`gold`) when the
    /// memories shown hold `note s{S} good`, else `wrong`; with `always_wrong`, never right.
    struct ScriptedAnswerer {
        config: AgentConfig,
        always_wrong: bool,
    }

    impl Generator for ScriptedPolicy {
        fn config(&self) -> &AgentConfig {
            &self.0
        }

        fn generate(
            &self,
            prompts: &[ChatPrompt],
            _: usize,
            _: f32,
            _: f32,
            rng: &mut ChaCha8Rng,
        ) -> Vec<Generated> {
            prompts
                .iter()
                .map(|p| {
                    let first = p.user.lines().nth(1).unwrap_or_default();
                    let text = if p.system == Role::Extractor.system_prompt() {
                        let dia_id = first.split_whitespace().next().unwrap_or_default();
                        let session = dia_id.parse::<DiaId>().map_or(0, |d| d.session);
                        let coin = if rng.random_bool(0.5) { "good" } else { "bad" };
                        roles::render_facts(&[ExtractedFact {
                            speaker: "A".into(),
                            dia_id: dia_id.into(),
                            fact: format!("note s{session} {coin}"),
                        }])
                    } else {
                        let fact = p
                            .user
                            .lines()
                            .next()
                            .unwrap_or_default()
                            .trim_start_matches("fact: ");
                        roles::render_operations(&[MemoryOperation::Add { text: fact.into() }])
                    };
                    Generated::scripted(text)
                })
                .collect()
        }
    }

    impl Generator for ScriptedAnswerer {
        fn config(&self) -> &AgentConfig {
            &self.config
        }

        fn generate(
            &self,
            prompts: &[ChatPrompt],
            _: usize,
            _: f32,
            _: f32,
            _: &mut ChaCha8Rng,
        ) -> Vec<Generated> {
            prompts
                .iter()
                .map(|p| {
                    let question = p.user.rsplit("question: ").next().unwrap_or_default();
                    let right = !self.always_wrong && p.user.contains(&format!("{question} good"));
                    Generated::scripted(roles::render_answer(if right { "gold" } else { "wrong" }))
                })
                .collect()
        }
    }

    /// `sessions` sessions of one turn each; question `note s{S}` has its evidence in session
    /// `S` (the answerer retrieves the memories for it by its words).
    fn episode(sessions: u32) -> Episode {
        Episode {
            id: "scripted".into(),
            speakers: vec!["A".into()],
            sessions: (1..=sessions)
                .map(|s| Session {
                    index: s,
                    date: format!("{s} May 2023"),
                    turns: vec![Turn {
                        dia_id: DiaId::new(s, 1),
                        speaker: "A".into(),
                        text: format!("something about s{s}"),
                    }],
                })
                .collect(),
            questions: (1..=sessions)
                .map(|s| Question {
                    question: format!("note s{s}"),
                    answer: "gold".into(),
                    evidence: vec![DiaId::new(s, 1)],
                    category: Category::SingleHop,
                })
                .collect(),
            facts: Vec::new(),
        }
    }

    fn config(mode: RewardMode) -> TrainConfig {
        let mut config = TrainConfig::smoke();
        let logo = &mut config.rl.logo;
        logo.n_rollouts = 4;
        logo.k_rerollouts = 3;
        logo.p_local = 1.0;
        logo.local_questions = 16;
        logo.lambda = 0.0;
        logo.reward_mode = mode;
        logo.advantage_scaling = AdvantageScaling::MeanStd;
        config.agent.chunks_per_session = 1;
        config.agent.answer_top_k = 16;
        config.agent.manager_top_k = 4;
        config
    }

    fn collect_scripted(mode: RewardMode, always_wrong: bool, seed: u64) -> (Collected, Vec<Episode>) {
        let config = config(mode);
        let episodes = vec![episode(3), episode(4)];
        let policy = ScriptedPolicy(config.agent.clone());
        let answerer = ScriptedAnswerer {
            config: config.agent.clone(),
            always_wrong,
        };
        let collected = collect(
            &policy,
            &answerer,
            &memr2_sim::QuestionAnswering,
            &WhitespaceCounter,
            &config,
            &episodes,
            &mut ChaCha8Rng::seed_from_u64(seed),
        )
        .unwrap();
        (collected, episodes)
    }

    /// An actor whose greedy answer is always wrong and whose sampled answer is right by a
    /// coin, each answer with log-probs of its own.
    struct CoinActor(AgentConfig);

    impl Generator for CoinActor {
        fn config(&self) -> &AgentConfig {
            &self.0
        }

        fn generate(
            &self,
            prompts: &[ChatPrompt],
            _: usize,
            temperature: f32,
            _: f32,
            rng: &mut ChaCha8Rng,
        ) -> Vec<Generated> {
            prompts
                .iter()
                .map(|_| {
                    let right = temperature > 0.0 && rng.random_bool(0.5);
                    let mut g =
                        Generated::scripted(roles::render_answer(if right { "gold" } else { "wrong" }));
                    g.logprobs = vec![if right { -0.25 } else { -1.5 }; g.completion.len()];
                    g
                })
                .collect()
        }
    }

    #[test]
    fn the_actor_learns_from_groups_of_its_own_samples_of_one_prompt() {
        let (c, episodes) = collect_scripted(RewardMode::PerSession, false, 3);
        let config = config(RewardMode::PerSession);
        let actor = CoinActor(config.agent.clone());
        let samples = 4;
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (train, metrics) = actor_samples(
            &actor,
            &memr2_sim::QuestionAnswering,
            &config,
            &episodes,
            &c.global,
            samples,
            &mut rng,
        )
        .unwrap();
        // Every probe of every rollout's final memory, answered `samples` times.
        let probes: usize = episodes
            .iter()
            .map(|e| e.questions.len() * config.rl.logo.n_rollouts)
            .sum();
        assert_eq!(metrics.reward.n, probes * samples);
        assert_eq!(metrics.format_errors, 0);
        // Only groups whose answers differ are trained on: a right answer gets a positive
        // advantage and a wrong one a negative one, and each group's advantages sum to zero.
        assert!(!train.is_empty() && train.len() < probes * samples);
        let mut sum = 0.0;
        for sample in &train {
            let right = sample.old_logprobs.as_ref().expect("the sampler's log-probs")[0] == -0.25;
            assert_eq!(sample.advantage > 0.0, right, "{:?}", sample.advantage);
            sum += sample.advantage;
        }
        assert!(sum.abs() < 1e-4, "{sum}");
        let mixed = train.len() as f64 / samples as f64;
        assert!((metrics.zero_variance_fraction - (1.0 - mixed / probes as f64)).abs() < 1e-9);

        // With the old log-probs recomputed, none are passed on.
        let mut recompute = config.clone();
        recompute.rl.recompute_old_logprobs = true;
        let (train, _) = actor_samples(
            &actor,
            &memr2_sim::QuestionAnswering,
            &recompute,
            &episodes,
            &c.global,
            samples,
            &mut ChaCha8Rng::seed_from_u64(9),
        )
        .unwrap();
        assert!(train.iter().all(|s| s.old_logprobs.is_none()));
    }

    fn texts(snapshot: &memr2_store::Snapshot) -> Vec<String> {
        let mut out: Vec<String> = snapshot.entries().map(|e| e.text.clone()).collect();
        out.sort();
        out
    }

    #[test]
    fn rerollouts_start_from_their_branch_memory_after_the_session_before() {
        for seed in 0..4 {
            let (c, _) = collect_scripted(RewardMode::PerSession, false, seed);
            assert!(!c.local.is_empty());
            for re in &c.local {
                let branch = &c.global[re.episode][re.branch];
                let start = &re.state.snapshots[0];
                assert_eq!(texts(start), texts(&branch.snapshots[re.session as usize - 1]));
                // The rerollout wrote session `session` and nothing later.
                let end = texts(re.state.snapshots.last().unwrap());
                assert_eq!(end.len(), re.session as usize, "{end:?}");
                assert!(end.iter().all(|t| {
                    let s: u32 = t["note s".len()..].split(' ').next().unwrap().parse().unwrap();
                    s <= re.session
                }));
                assert!(re.state.records.iter().all(|r| r.session == re.session));
            }
        }
    }

    #[test]
    fn local_groups_are_scored_on_probes_up_to_their_session_only() {
        let (c, episodes) = collect_scripted(RewardMode::PerSession, false, 1);
        for re in &c.local {
            let probes = memr2_sim::QuestionAnswering.probes(&episodes[re.episode]);
            assert_eq!(re.probes.len(), re.session as usize);
            assert!(re.probes.iter().all(|&p| probes[p].session <= Some(re.session)));
        }
        // The k members of a group are scored on the same probes.
        for group in c.local.chunks(3) {
            assert!(
                group
                    .iter()
                    .all(|re| re.probes == group[0].probes && re.branch == group[0].branch)
            );
        }
    }

    #[test]
    fn every_sample_gets_the_advantage_of_its_own_group() {
        let (c, _) = collect_scripted(RewardMode::PerSession, false, 2);
        let mut groups: BTreeMap<GroupKey, Vec<usize>> = BTreeMap::new();
        for (i, (sample, owner)) in c.samples.iter().zip(&c.owners).enumerate() {
            let expected = match *owner {
                SampleOwner::Global { episode, session, .. } => GroupKey::global(episode as u64, session),
                SampleOwner::Local { index } => {
                    let re = &c.local[index];
                    GroupKey::local(re.episode as u64, re.session, re.branch as u32)
                }
            };
            assert_eq!(sample.key, expected, "sample {i} of {owner:?}");
            groups.entry(sample.key).or_default().push(i);
        }
        let eps = TrainConfig::smoke().rl.logo.advantage_eps as f64;
        let mut nonzero = 0;
        for members in groups.values() {
            let rewards: Vec<f64> = members.iter().map(|&i| c.samples[i].reward as f64).collect();
            let m = rewards.len() as f64;
            let mean = rewards.iter().sum::<f64>() / m;
            let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (m - 1.0).max(1.0);
            let flat = rewards.iter().all(|&r| r == rewards[0]);
            for (&i, r) in members.iter().zip(&rewards) {
                let want = if flat {
                    0.0
                } else {
                    (r - mean) / (var.sqrt() + eps)
                };
                assert!(
                    (c.advantages[i] as f64 - want).abs() < 1e-4,
                    "{} vs {want}",
                    c.advantages[i]
                );
                nonzero += usize::from(!flat);
            }
            let sum: f64 = members.iter().map(|&i| c.advantages[i] as f64).sum();
            assert!(sum.abs() < 1e-4, "a group's advantages sum to zero");
        }
        assert!(nonzero > 0, "some group had a spread");
        // The generations trained on: exactly those of samples with a non-zero advantage.
        let mut want = 0;
        for (owner, &a) in c.owners.iter().zip(&c.advantages) {
            let records = match *owner {
                SampleOwner::Global {
                    episode,
                    rollout,
                    session,
                } => c.global[episode][rollout]
                    .records
                    .iter()
                    .filter(|r| r.session == session)
                    .count(),
                SampleOwner::Local { index } => c.local[index].state.records.len(),
            };
            if a != 0.0 {
                want += records;
            }
        }
        assert_eq!(c.train.len(), want);
        assert!(c.train.iter().all(|t| t.advantage != 0.0));
    }

    #[test]
    fn groups_without_a_spread_train_nothing() {
        let (c, _) = collect_scripted(RewardMode::PerSession, true, 3);
        assert_eq!(c.metrics.zero_variance_fraction, 1.0);
        assert!(c.advantages.iter().all(|&a| a == 0.0));
        assert!(c.train.is_empty());
    }

    #[test]
    fn the_three_reward_modes_assign_the_final_memory_score_to_sessions() {
        for mode in [RewardMode::PerSession, RewardMode::Global, RewardMode::Cumulative] {
            let (c, episodes) = collect_scripted(mode, false, 4);
            for (sample, owner) in c.samples.iter().zip(&c.owners) {
                let SampleOwner::Global {
                    episode,
                    rollout,
                    session,
                } = *owner
                else {
                    continue;
                };
                let last = c.global[episode][rollout].snapshots.last().unwrap();
                let memory = texts(last);
                let right = |s: u32| f64::from(u8::from(memory.contains(&format!("note s{s} good"))));
                let horizon = episodes[episode].sessions.len() as u32;
                let mean_from =
                    |from: u32| (from..=horizon).map(right).sum::<f64>() / f64::from(horizon - from + 1);
                let want = match mode {
                    RewardMode::PerSession => right(session),
                    RewardMode::Global => mean_from(1),
                    RewardMode::Cumulative => mean_from(session),
                };
                assert!(
                    (sample.reward as f64 - want).abs() < 1e-6,
                    "{mode:?} {owner:?}: {} vs {want}",
                    sample.reward
                );
            }
        }
    }

    #[test]
    fn the_placebo_permutes_rewards_within_each_group_only() {
        let mut samples = Vec::new();
        for session in 1..=3u32 {
            for r in 0..4 {
                let key = GroupKey::global(0, session);
                let reward = session as f32 * 10.0 + r as f32;
                samples.push(Sample::new(key, reward, samples.len()));
            }
        }
        for r in 0..4 {
            let reward = 100.0 + r as f32;
            samples.push(Sample::new(GroupKey::local(0, 2, 1), reward, samples.len()));
        }
        let before = samples.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        shuffle_within_groups(&mut samples, &mut rng);
        let mut moved = false;
        for (a, b) in before.chunks(4).zip(samples.chunks(4)) {
            // Same keys and sequences in place, the same rewards per group, in another order.
            assert!(
                a.iter()
                    .zip(b)
                    .all(|(x, y)| x.key == y.key && x.sequence == y.sequence)
            );
            let mut x: Vec<f32> = a.iter().map(|s| s.reward).collect();
            let mut y: Vec<f32> = b.iter().map(|s| s.reward).collect();
            moved |= x != y;
            x.sort_by(f32::total_cmp);
            y.sort_by(f32::total_cmp);
            assert_eq!(x, y);
        }
        assert!(moved, "four groups of four kept their order");
    }
}
