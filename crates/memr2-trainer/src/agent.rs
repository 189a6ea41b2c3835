//! The agent loop: extractor and manager over a session, stepped in lockstep across rollouts,
//! and the frozen actor asked a task's probes over a memory.

use burn::prelude::Backend;
use memr2_policy::roles::{self, ChatPrompt, ExtractedFact, MemoryOperation, MemoryView, Role, TurnView};
use memr2_policy::strict::ToolCallConstraint;
use memr2_policy::tokenizer::Tokenizer;
use memr2_policy::{SamplingConfig, Transformer};
use memr2_sim::{AnswerScore, Episode, Probe, Request, Response, Task, Turn};
use memr2_store::{Hit, MemoryId, Operation, Snapshot, Store, TokenCounter};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::AgentConfig;
use crate::parallel;

/// Counts memory and session sizes in the model's own tokens (the reward's size penalty).
pub struct TokenizerCounter<'a>(pub &'a Tokenizer);

impl TokenCounter for TokenizerCounter<'_> {
    fn count(&self, text: &str) -> usize {
        self.0.encode(text).len()
    }
}

/// One model call: what was asked, what came back, and the log-probs of the sampled tokens.
#[derive(Clone, Debug)]
pub struct Generated {
    /// Prompt token ids (chat-templated).
    pub prompt: Vec<u32>,
    /// Completion token ids, the end-of-turn token included when the model emitted it.
    pub completion: Vec<u32>,
    /// Log-probability of each completion token under the sampling policy (untempered).
    pub logprobs: Vec<f32>,
    /// The decoded completion.
    pub text: String,
}

#[cfg(test)]
impl Generated {
    /// A completion written by a scripted stand-in for a model: the text, with placeholder
    /// tokens and log-probs.
    pub(crate) fn scripted(text: String) -> Self {
        Self {
            prompt: vec![1, 2, 3],
            completion: vec![4, 5],
            logprobs: vec![-0.5, -0.5],
            text,
        }
    }
}

/// A model with its tokenizer, as the agent uses it.
pub struct Agent<'a, B: Backend> {
    /// The backbone.
    pub model: &'a Transformer<B>,
    /// Its tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// Retrieval and length settings.
    pub config: &'a AgentConfig,
}

/// What writes the roles' completions: a model with its tokenizer ([`Agent`]), or in tests a
/// scripted stand-in, so that the agent loop and the step's wiring can be checked without a
/// network.
pub trait Generator {
    /// Retrieval and length settings.
    fn config(&self) -> &AgentConfig;
    /// One completion per prompt, batched; `temperature` 0 is greedy.
    fn generate(
        &self,
        prompts: &[ChatPrompt],
        max_new_tokens: usize,
        temperature: f32,
        top_p: f32,
        rng: &mut ChaCha8Rng,
    ) -> Vec<Generated>;

    /// One greedy tool call per prompt, `tools[i]` the tool definitions of prompt `i`. The
    /// built-in model decodes under the tools' schemas when `strict_tool_calls` is set
    /// (`memr2_policy::strict`); otherwise, and by default, the call is written freely.
    fn generate_tool_calls(
        &self,
        prompts: &[ChatPrompt],
        tools: &[&[serde_json::Value]],
        max_new_tokens: usize,
        rng: &mut ChaCha8Rng,
    ) -> Vec<Generated> {
        let _ = tools;
        self.generate(prompts, max_new_tokens, 0.0, 1.0, rng)
    }

    /// One tool call per prompt sampled from the untempered policy, as
    /// [`Generator::generate_tool_calls`] decodes them otherwise (RL on the actor, `rl.actor`).
    fn sample_tool_calls(
        &self,
        prompts: &[ChatPrompt],
        tools: &[&[serde_json::Value]],
        max_new_tokens: usize,
        rng: &mut ChaCha8Rng,
    ) -> Vec<Generated> {
        let _ = tools;
        self.generate(prompts, max_new_tokens, 1.0, 1.0, rng)
    }
}

impl<B: Backend> Generator for Agent<'_, B> {
    fn config(&self) -> &AgentConfig {
        self.config
    }

    fn generate(
        &self,
        prompts: &[ChatPrompt],
        max_new_tokens: usize,
        temperature: f32,
        top_p: f32,
        rng: &mut ChaCha8Rng,
    ) -> Vec<Generated> {
        let sampling = SamplingConfig {
            max_new_tokens,
            temperature,
            top_p,
        };
        self.generate_with(prompts, &sampling, None, rng)
    }

    fn generate_tool_calls(
        &self,
        prompts: &[ChatPrompt],
        tools: &[&[serde_json::Value]],
        max_new_tokens: usize,
        rng: &mut ChaCha8Rng,
    ) -> Vec<Generated> {
        let greedy = SamplingConfig::greedy(max_new_tokens);
        let strict = self.config.strict_tool_calls.then_some(tools);
        self.generate_with(prompts, &greedy, strict, rng)
    }

    fn sample_tool_calls(
        &self,
        prompts: &[ChatPrompt],
        tools: &[&[serde_json::Value]],
        max_new_tokens: usize,
        rng: &mut ChaCha8Rng,
    ) -> Vec<Generated> {
        let sampling = SamplingConfig {
            max_new_tokens,
            temperature: 1.0,
            top_p: 1.0,
        };
        let strict = self.config.strict_tool_calls.then_some(tools);
        self.generate_with(prompts, &sampling, strict, rng)
    }
}

impl<B: Backend> Agent<'_, B> {
    /// Tokenizes, generates (under each prompt's tools' schemas when `strict` gives them) and
    /// decodes.
    fn generate_with(
        &self,
        prompts: &[ChatPrompt],
        sampling: &SamplingConfig,
        strict: Option<&[&[serde_json::Value]]>,
        rng: &mut ChaCha8Rng,
    ) -> Vec<Generated> {
        if prompts.is_empty() {
            return Vec::new();
        }
        let compact = self.config.compact_prompts;
        let ids: Vec<Vec<u32>> = parallel::map(prompts, |p| {
            self.tokenizer
                .chat_prompt(roles::shown_system(&p.system, compact), &p.user)
        });
        let context = self.model.max_positions();
        let too_long = ids.iter().filter(|p| p.len() >= context).count();
        if too_long > 0 {
            // `generate` gives such prompts an empty completion, which then fails to parse.
            tracing::warn!(
                prompts = too_long,
                of = ids.len(),
                longest = ids.iter().map(Vec::len).max().unwrap_or(0),
                context,
                "prompts fill the model's context (max_position_embeddings) and get no completion"
            );
        }
        let stop = self.tokenizer.stop_ids();
        let strict = strict.map(|tools| Strict {
            tools,
            texts: self.tokenizer.token_texts(),
        });
        let out = sharded_generate(
            self.model,
            &ids,
            sampling,
            &stop,
            self.config.generation_shards,
            strict.as_ref(),
            rng,
        );
        let texts = parallel::map(&out, |g| self.tokenizer.decode(&g.tokens));
        ids.into_iter()
            .zip(out)
            .zip(texts)
            .map(|((prompt, g), text)| Generated {
                prompt,
                completion: g.tokens,
                logprobs: g.logprobs,
                text,
            })
            .collect()
    }
}

/// [`memr2_policy::generate`] over `shards` contiguous parts of the batch, side by side on up
/// to as many threads as the machine has cores, each part sampling from its own generator
/// seeded from `rng` in part order: the output depends on `shards`, not on the core count or
/// the number of ranks the parts are dealt to ([`crate::collective::dealt`]). One part (or one
/// prompt) is the plain batched call, made by every rank.
fn sharded_generate<B: Backend>(
    model: &Transformer<B>,
    prompts: &[Vec<u32>],
    sampling: &SamplingConfig,
    stop: &[u32],
    shards: usize,
    strict: Option<&Strict<'_>>,
    rng: &mut ChaCha8Rng,
) -> Vec<memr2_policy::Generation> {
    // Prompts `offset..offset + part.len()`, under their tools' schemas when strict.
    let run = |model: &Transformer<B>, part: &[Vec<u32>], offset: usize, rng: &mut ChaCha8Rng| match strict {
        None => memr2_policy::generate(model, part, sampling, stop, rng),
        Some(strict) => {
            let mut constraints: Vec<memr2_policy::generate::RowConstraint<'_>> = strict.tools
                [offset..offset + part.len()]
                .iter()
                .map(|tools| {
                    let c = ToolCallConstraint::new(tools, strict.texts.clone(), stop);
                    Some(Box::new(c) as Box<dyn memr2_policy::TokenConstraint>)
                })
                .collect();
            memr2_policy::generate_constrained(model, part, sampling, stop, &mut constraints, rng)
        }
    };
    let parts = shards.clamp(1, prompts.len().max(1));
    if parts == 1 {
        return run(model, prompts, 0, rng);
    }
    let size = prompts.len().div_ceil(parts);
    let chunks: Vec<(&[Vec<u32>], u64)> = prompts.chunks(size).map(|c| (c, rng.next_u64())).collect();
    // Over several ranks, part `c` is generated by rank `c % ranks` and the parts gathered.
    crate::collective::dealt(chunks.len(), |mine| {
        crate::shard::round_robin(model, mine.len(), usize::MAX, Clone::clone, |model, j| {
            let (part, seed) = chunks[mine[j]];
            run(model, part, mine[j] * size, &mut ChaCha8Rng::seed_from_u64(seed))
        })
    })
    .into_iter()
    .flatten()
    .collect()
}

/// Strict tool calls: each prompt's tools, and the text of every token id.
struct Strict<'a> {
    tools: &'a [&'a [serde_json::Value]],
    texts: memr2_policy::strict::TokenTexts,
}

/// A recorded generation of a trained role, kept for the policy-gradient update.
#[derive(Clone, Debug)]
pub struct GenRecord {
    /// Extractor or manager.
    pub role: Role,
    /// The session (1-based) the call belongs to.
    pub session: u32,
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// Completion ids.
    pub completion: Vec<u32>,
    /// Log-probability of each completion token under the policy that sampled it.
    pub logprobs: Vec<f32>,
}

/// Counts of what the manager did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OpCounts {
    /// ADD operations applied.
    pub add: u64,
    /// UPDATE operations applied.
    pub update: u64,
    /// DELETE operations applied.
    pub delete: u64,
    /// Manager calls that changed nothing (an empty operation list).
    pub noop: u64,
    /// Operations the store rejected (unknown alias, empty or over-long text).
    pub invalid: u64,
}

impl OpCounts {
    /// Adds another count into this one.
    pub fn merge(&mut self, other: &OpCounts) {
        self.add += other.add;
        self.update += other.update;
        self.delete += other.delete;
        self.noop += other.noop;
        self.invalid += other.invalid;
    }
}

/// Statistics of one rollout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutStats {
    /// Operations by kind.
    pub ops: OpCounts,
    /// Extractor or manager outputs that did not parse.
    pub format_errors: u64,
    /// Tokens generated by the trained roles.
    pub generated_tokens: u64,
}

/// One trajectory's memory and record as it goes through sessions.
#[derive(Clone, Debug)]
pub struct RolloutState {
    /// The live memory.
    pub store: Store,
    /// `snapshots[s]` is the memory after session `s` (`snapshots[0]` is where it started).
    pub snapshots: Vec<Snapshot>,
    /// Generations of the trained roles.
    pub records: Vec<GenRecord>,
    /// Counters.
    pub stats: RolloutStats,
}

impl RolloutState {
    /// A rollout starting from an empty memory ([`new_store`]).
    pub fn new(cfg: &AgentConfig) -> Self {
        Self::from_snapshot(new_store(cfg).snapshot())
    }

    /// A rollout that branches an existing memory state (structure is shared, not copied).
    pub fn from_snapshot(snapshot: Snapshot) -> Self {
        Self {
            store: snapshot.branch(),
            snapshots: vec![snapshot],
            records: Vec::new(),
            stats: RolloutStats::default(),
        }
    }
}

impl Default for RolloutState {
    /// A rollout from an empty memory without an embedder.
    fn default() -> Self {
        Self::from_snapshot(Store::new().snapshot())
    }
}

/// One rollout and the session it runs next.
pub struct SessionJob<'a> {
    /// The conversation.
    pub episode: &'a Episode,
    /// The session to run, 1-based.
    pub session: u32,
    /// The rollout's state, advanced in place.
    pub state: &'a mut RolloutState,
}

/// Sampling settings of the trained roles during a rollout.
#[derive(Clone, Copy, Debug)]
pub struct RolloutSampling {
    /// Temperature (0 = greedy).
    pub temperature: f32,
    /// Nucleus threshold.
    pub top_p: f32,
    /// Keep [`GenRecord`]s for the update.
    pub record: bool,
}

/// An empty memory for a run: with the run's embedder attached when its retrieval uses one
/// (only then: an attached embedder embeds every memory written). Every memory a run searches
/// starts here, the oracle's included (`sft::teacher_replay`), so branches and snapshots carry
/// the embedder with them.
pub fn new_store(cfg: &AgentConfig) -> Store {
    let mut store = Store::new();
    if let Some(embedder) = &cfg.embedder.embedder
        && cfg.retrieval.needs_embedder()
    {
        store
            .set_embedder(embedder.clone())
            .expect("an empty store embeds nothing");
    }
    store
}

/// The hits of a retrieval, or none when it failed (an embedding endpoint that is down: the
/// embedder has recorded it, and the run fails at its next check).
fn hits_or_none(result: Result<Vec<Hit>, memr2_store::StoreError>, cfg: &AgentConfig) -> Vec<Hit> {
    result.unwrap_or_else(|error| {
        tracing::error!(%error, retrieval = %cfg.retrieval, "retrieval failed; nothing shown");
        Vec::new()
    })
}

/// Memories shown to the manager for a query: aliases "0", "1", ... in retrieval order, with
/// the real id each alias stands for (top `manager_top_k` by the run's retrieval).
pub fn retrieve(store: &Store, query: &str, cfg: &AgentConfig) -> Vec<(String, MemoryId, String)> {
    let found = store.retrieve(query, cfg.manager_top_k, cfg.retrieval, cfg.min_scores());
    hits_or_none(found, cfg)
        .into_iter()
        .enumerate()
        .filter_map(|(i, hit)| store.get(hit.id).map(|e| (i.to_string(), hit.id, e.text.clone())))
        .collect()
}

/// The texts of the memories the answerer is shown for a query: the top `answer_top_k`, best
/// first.
pub fn memory_texts(memory: &Snapshot, query: &str, cfg: &AgentConfig) -> Vec<String> {
    let found = memory.retrieve(query, cfg.answer_top_k, cfg.retrieval, cfg.min_scores());
    hits_or_none(found, cfg)
        .iter()
        .filter_map(|h| memory.get(h.id).map(|e| e.text.clone()))
        .collect()
}

/// Tells the run's embedder, if any, that `texts` are about to be embedded.
pub fn prepare_embeddings<'t>(cfg: &AgentConfig, texts: impl IntoIterator<Item = &'t str>) {
    if let Some(embedder) = &cfg.embedder.embedder
        && cfg.retrieval.needs_embedder()
    {
        let texts: Vec<&str> = texts.into_iter().collect();
        if !texts.is_empty() {
            embedder.prepare(&texts);
        }
    }
}

/// The answerer's prompt for a question over a memory: the top-k retrieved memories.
pub fn answer_prompt(memory: &Snapshot, question: &str, cfg: &AgentConfig) -> ChatPrompt {
    let memories = memory_texts(memory, question, cfg);
    let shown: Vec<&str> = memories.iter().map(String::as_str).collect();
    let request = Request::Answer {
        question: question.to_string(),
    };
    request_prompt(&request, &shown, cfg).0
}

/// The extractor's prompt for a chunk of turns of a session held on `date`.
pub fn extractor_prompt_for(date: &str, chunk: &[Turn]) -> ChatPrompt {
    let dia: Vec<String> = chunk.iter().map(|t| t.dia_id.to_string()).collect();
    let turns: Vec<TurnView<'_>> = chunk
        .iter()
        .zip(&dia)
        .map(|(t, d)| TurnView {
            dia_id: d,
            speaker: &t.speaker,
            text: &t.text,
        })
        .collect();
    roles::extractor_prompt(date, &turns)
}

/// Runs one session for every job, batching each generation across all of them: first the
/// extractor over every chunk, then the manager fact by fact (round `j` handles the `j`-th fact
/// of every rollout that has one), applying operations to each rollout's store. Ends by
/// recording the post-session snapshot of every rollout.
pub fn run_sessions(
    agent: &impl Generator,
    jobs: &mut [SessionJob<'_>],
    sampling: RolloutSampling,
    rng: &mut ChaCha8Rng,
) {
    let cfg = agent.config();
    let _span = tracing::info_span!("session", rollouts = jobs.len()).entered();

    // 1. Extraction over every chunk of every job.
    let mut owners = Vec::new();
    let mut prompts = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        let session = &job.episode.sessions[job.session as usize - 1];
        for chunk in session.chunks(cfg.chunks_per_session) {
            prompts.push(extractor_prompt_for(&session.date, chunk));
            owners.push(j);
        }
    }
    let outputs = agent.generate(
        &prompts,
        cfg.max_extract_tokens,
        sampling.temperature,
        sampling.top_p,
        rng,
    );
    let mut facts: Vec<Vec<ExtractedFact>> = vec![Vec::new(); jobs.len()];
    for (j, out) in owners.into_iter().zip(outputs) {
        let job = &mut jobs[j];
        match roles::parse_facts(&out.text) {
            Ok(mut f) => {
                f.truncate(cfg.max_facts_per_chunk);
                facts[j].extend(f);
            }
            Err(e) => {
                tracing::debug!(error = %e, output = %out.text, "extractor output did not parse");
                job.state.stats.format_errors += 1;
            }
        }
        record(job, Role::Extractor, out, sampling.record);
    }

    // 2. The manager, fact by fact, in lockstep.
    let rounds = facts.iter().map(Vec::len).max().unwrap_or(0);
    for round in 0..rounds {
        let queries: Vec<(usize, &Store, &str)> = jobs
            .iter()
            .enumerate()
            .filter_map(|(j, job)| Some((j, &job.state.store, facts[j].get(round)?.fact.as_str())))
            .collect();
        prepare_embeddings(cfg, queries.iter().map(|(_, _, fact)| *fact));
        let shown = parallel::map(&queries, |(_, store, fact)| retrieve(store, fact, cfg));
        let owners: Vec<usize> = queries.iter().map(|(j, _, _)| *j).collect();
        let prompts: Vec<ChatPrompt> = queries
            .iter()
            .zip(&shown)
            .map(|((_, _, fact), memories)| {
                let views: Vec<MemoryView<'_>> = memories
                    .iter()
                    .map(|(alias, _, text)| MemoryView { alias, text })
                    .collect();
                roles::manager_prompt(fact, &views)
            })
            .collect();
        drop(queries);
        let outputs = agent.generate(
            &prompts,
            cfg.max_manage_tokens,
            sampling.temperature,
            sampling.top_p,
            rng,
        );
        let parsed: Vec<_> = outputs
            .iter()
            .map(|out| roles::parse_operations(&out.text))
            .collect();
        prepare_embeddings(
            cfg,
            parsed.iter().flatten().flatten().filter_map(|op| match op {
                MemoryOperation::Add { text } | MemoryOperation::Update { text, .. } => Some(text.as_str()),
                MemoryOperation::Delete { .. } => None,
            }),
        );
        for (((j, out), memories), parsed) in owners.into_iter().zip(outputs).zip(shown).zip(parsed) {
            let job = &mut jobs[j];
            let session = job.session;
            match parsed {
                Ok(ops) if ops.is_empty() => job.state.stats.ops.noop += 1,
                Ok(ops) => {
                    let speaker = Some(facts[j][round].speaker.clone()).filter(|s| !s.is_empty());
                    for op in ops {
                        apply_operation(job.state, op, &memories, speaker.clone(), session);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, output = %out.text, "manager output did not parse");
                    job.state.stats.format_errors += 1;
                }
            }
            record(job, Role::Manager, out, sampling.record);
        }
    }

    for job in jobs.iter_mut() {
        let snapshot = job.state.store.snapshot();
        job.state.snapshots.push(snapshot);
    }
}

fn record(job: &mut SessionJob<'_>, role: Role, out: Generated, keep: bool) {
    job.state.stats.generated_tokens += out.completion.len() as u64;
    if keep {
        job.state.records.push(GenRecord {
            role,
            session: job.session,
            prompt: out.prompt,
            completion: out.completion,
            logprobs: out.logprobs,
        });
    }
}

/// Maps a parsed operation's alias back to a real id and applies it; a bad alias or an
/// operation the store rejects is counted as invalid and changes nothing.
pub(crate) fn apply_operation(
    state: &mut RolloutState,
    op: MemoryOperation,
    shown: &[(String, MemoryId, String)],
    speaker: Option<String>,
    session: u32,
) {
    let resolve = |alias: &str| shown.iter().find(|(a, _, _)| a == alias).map(|(_, id, _)| *id);
    let op = match op {
        MemoryOperation::Add { text } => Some(Operation::Add { text, speaker }),
        MemoryOperation::Update { id, text } => resolve(&id).map(|id| Operation::Update { id, text }),
        MemoryOperation::Delete { id } => resolve(&id).map(|id| Operation::Delete { id }),
    };
    let counts = &mut state.stats.ops;
    match op.map(|op| state.store.apply(op, session)) {
        Some(Ok(memr2_store::Applied::Added(_))) => counts.add += 1,
        Some(Ok(memr2_store::Applied::Updated(_))) => counts.update += 1,
        Some(Ok(memr2_store::Applied::Deleted(_))) => counts.delete += 1,
        Some(Ok(memr2_store::Applied::Noop)) => counts.noop += 1,
        Some(Err(e)) => {
            tracing::debug!(error = %e, "store rejected an operation");
            counts.invalid += 1;
        }
        None => counts.invalid += 1,
    }
}

/// One probe of a task asked of one memory.
#[derive(Clone, Copy)]
pub struct ProbeItem<'a> {
    /// The memory the probe is asked of.
    pub memory: &'a Snapshot,
    /// The episode the probe belongs to.
    pub episode: &'a Episode,
    /// The probe.
    pub probe: &'a Probe,
}

/// The actor's prompt for one request, over the memories retrieved for it (aliases "0", "1",
/// ... in retrieval order), and the most tokens it may write.
pub(crate) fn request_prompt(request: &Request, memories: &[&str], cfg: &AgentConfig) -> (ChatPrompt, usize) {
    match request {
        Request::Answer { question } => {
            let aliases: Vec<String> = (0..memories.len()).map(|i| i.to_string()).collect();
            let views: Vec<MemoryView<'_>> = aliases
                .iter()
                .zip(memories)
                .map(|(alias, text)| MemoryView { alias, text })
                .collect();
            (roles::answerer_prompt(question, &views), cfg.max_answer_tokens)
        }
        Request::Chat {
            system,
            user,
            max_tokens,
        } => (
            ChatPrompt {
                system: system.clone(),
                user: user.clone(),
            },
            *max_tokens,
        ),
        Request::ToolCall {
            task,
            tools,
            memories,
            instruction,
        } => {
            let aliases: Vec<String> = (0..memories.len()).map(|i| i.to_string()).collect();
            let views: Vec<MemoryView<'_>> = aliases
                .iter()
                .zip(memories)
                .map(|(alias, text)| MemoryView { alias, text })
                .collect();
            let prompt = memr2_policy::tools::tool_call_prompt(task, tools, &views, instruction.as_deref());
            (prompt, cfg.max_tool_call_tokens)
        }
    }
}

/// Asks every probe of its memory with the frozen actor (greedy, one batch) and scores the
/// responses with `task`. Returns one score per item and the number of outputs that did not
/// parse (scored as the task scores [`Response::Unparsed`]).
pub fn ask_probes(
    actor: &impl Generator,
    task: &dyn Task,
    items: &[ProbeItem<'_>],
    rng: &mut ChaCha8Rng,
) -> (Vec<AnswerScore>, u64) {
    let (answered, failures) = ask_probes_for_responses(actor, task, items, rng);
    (answered.into_iter().map(|(score, _)| score).collect(), failures)
}

/// The actor's greedy completions of `prompts`, in order: the tool calls through
/// [`Generator::generate_tool_calls`] with their tools, the rest in one batch.
fn ask_actor(
    actor: &impl Generator,
    prompts: &[ChatPrompt],
    requests: &[Request],
    limits: &[usize],
    rng: &mut ChaCha8Rng,
) -> Vec<Generated> {
    let is_call = |r: &Request| matches!(r, Request::ToolCall { .. });
    let (calls, others): (Vec<usize>, Vec<usize>) = (0..prompts.len()).partition(|&i| is_call(&requests[i]));
    let pick = |indices: &[usize]| -> (Vec<ChatPrompt>, usize) {
        let prompts = indices.iter().map(|&i| prompts[i].clone()).collect();
        (prompts, indices.iter().map(|&i| limits[i]).max().unwrap_or(0))
    };
    let mut out: Vec<Option<Generated>> = vec![None; prompts.len()];
    if !others.is_empty() {
        let (asked, max_tokens) = pick(&others);
        for (i, g) in others
            .iter()
            .zip(actor.generate(&asked, max_tokens, 0.0, 1.0, rng))
        {
            out[*i] = Some(g);
        }
    }
    if !calls.is_empty() {
        let (asked, max_tokens) = pick(&calls);
        let tools: Vec<&[serde_json::Value]> = calls
            .iter()
            .map(|&i| match &requests[i] {
                Request::ToolCall { tools, .. } => tools.as_slice(),
                _ => &[],
            })
            .collect();
        for (i, g) in calls
            .iter()
            .zip(actor.generate_tool_calls(&asked, &tools, max_tokens, rng))
        {
            out[*i] = Some(g);
        }
    }
    out.into_iter()
        .map(|g| g.expect("every prompt was asked once"))
        .collect()
}

/// [`ask_probes`], keeping each parsed response beside its score (what a judge reads).
pub fn ask_probes_for_responses(
    actor: &impl Generator,
    task: &dyn Task,
    items: &[ProbeItem<'_>],
    rng: &mut ChaCha8Rng,
) -> (Vec<(AnswerScore, Response)>, u64) {
    let cfg = actor.config();
    let _span = tracing::info_span!("answer", probes = items.len()).entered();
    prepare_embeddings(cfg, items.iter().map(|item| item.probe.query.as_str()));
    let (asked, limits): (Vec<(ChatPrompt, Request)>, Vec<usize>) = items
        .iter()
        .map(|item| {
            let memories = memory_texts(item.memory, &item.probe.query, cfg);
            let shown: Vec<&str> = memories.iter().map(String::as_str).collect();
            let request = task.request(item.episode, item.probe, &shown);
            let (prompt, limit) = request_prompt(&request, &shown, cfg);
            ((prompt, request), limit)
        })
        .unzip();
    let (prompts, requests): (Vec<ChatPrompt>, Vec<Request>) = asked.into_iter().unzip();
    let mut failures = 0;
    let scores = ask_actor(actor, &prompts, &requests, &limits, rng)
        .into_iter()
        .zip(items.iter().zip(&requests))
        .map(|(g, (item, request))| {
            let (score, response) = score_response(task, item, request, g.text);
            failures += u64::from(matches!(response, Response::Unparsed(_)));
            (score, response)
        })
        .collect();
    (scores, failures)
}

/// The actor's response to `request` parsed from `text`, and the task's score of it over the
/// item's memory. A request for an answer or a tool call whose text does not parse is
/// `Response::Unparsed`.
fn score_response(
    task: &dyn Task,
    item: &ProbeItem<'_>,
    request: &Request,
    text: String,
) -> (AnswerScore, Response) {
    let response = match request {
        Request::Answer { .. } => match roles::parse_answer(&text) {
            Ok(a) => Response::Answer(a),
            Err(_) => Response::Unparsed(text),
        },
        Request::Chat { .. } => Response::Text(text),
        Request::ToolCall { tools, .. } => match memr2_policy::tools::parse_tool_call(&text, tools) {
            Ok(call) => Response::ToolCall {
                name: call.name,
                arguments: call.arguments,
            },
            Err(e) => {
                tracing::debug!(error = %e, kind = e.kind(), output = %text, "tool call did not parse");
                Response::Unparsed(text)
            }
        },
    };
    tracing::debug!(category = item.probe.category.name(), probe = %item.probe.query, ?response, "asked");
    let memory: Vec<&str> = item.memory.entries().map(|e| e.text.as_str()).collect();
    let score = task.score_with_memory(item.episode, item.probe, &response, &memory);
    (score, response)
}

/// One sampled answer of the actor ([`sample_probe_responses`]).
#[derive(Clone, Debug)]
pub struct SampledAnswer {
    /// The task's score of it.
    pub score: AnswerScore,
    /// Whether it parsed as the response the request asks for.
    pub parsed: bool,
    /// The generation, with its tokens and log-probs.
    pub generated: Generated,
}

/// `samples` answers of the actor to each of `items`, sampled from its untempered policy
/// (tool calls under the tools' schemas when `strict_tool_calls` is set), each with the
/// task's score: `[item][sample]`. The recorded log-probs are the model's own, so they are
/// the old log-probs of an update of the actor on these answers.
pub fn sample_probe_responses(
    actor: &impl Generator,
    task: &dyn Task,
    items: &[ProbeItem<'_>],
    samples: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<Vec<SampledAnswer>> {
    let cfg = actor.config();
    let _span = tracing::info_span!("sample_answers", probes = items.len(), samples).entered();
    prepare_embeddings(cfg, items.iter().map(|item| item.probe.query.as_str()));
    let asked: Vec<(ChatPrompt, Request, usize)> = items
        .iter()
        .map(|item| {
            let memories = memory_texts(item.memory, &item.probe.query, cfg);
            let shown: Vec<&str> = memories.iter().map(String::as_str).collect();
            let request = task.request(item.episode, item.probe, &shown);
            let (prompt, limit) = request_prompt(&request, &shown, cfg);
            (prompt, request, limit)
        })
        .collect();
    // Tool calls and the rest are generated apart (the calls under their schemas), each batch
    // with every item repeated `samples` times.
    let mut out: Vec<Vec<SampledAnswer>> = (0..items.len()).map(|_| Vec::new()).collect();
    for calls in [false, true] {
        let chosen: Vec<usize> = (0..items.len())
            .filter(|&i| matches!(asked[i].1, Request::ToolCall { .. }) == calls)
            .collect();
        if chosen.is_empty() {
            continue;
        }
        let repeated: Vec<usize> = chosen
            .iter()
            .flat_map(|&i| std::iter::repeat_n(i, samples))
            .collect();
        let prompts: Vec<ChatPrompt> = repeated.iter().map(|&i| asked[i].0.clone()).collect();
        let max_new_tokens = repeated.iter().map(|&i| asked[i].2).max().unwrap_or(0);
        let generated = if calls {
            let tools: Vec<&[serde_json::Value]> = repeated
                .iter()
                .map(|&i| match &asked[i].1 {
                    Request::ToolCall { tools, .. } => tools.as_slice(),
                    _ => &[],
                })
                .collect();
            actor.sample_tool_calls(&prompts, &tools, max_new_tokens, rng)
        } else {
            actor.generate(&prompts, max_new_tokens, 1.0, 1.0, rng)
        };
        for (&i, g) in repeated.iter().zip(generated) {
            let (score, response) = score_response(task, &items[i], &asked[i].1, g.text.clone());
            out[i].push(SampledAnswer {
                score,
                parsed: !matches!(response, Response::Unparsed(_)),
                generated: g,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use burn::module::AutodiffModule;
    use memr2_sim::{Environment, Split};

    use super::*;
    use crate::update::tests::model;

    /// An actor that writes the same text for every prompt, after checking what it was shown.
    struct Fixed {
        config: AgentConfig,
        text: String,
        expect_in_prompt: String,
    }

    impl Generator for Fixed {
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
                    assert!(p.user.contains(&self.expect_in_prompt), "{}", p.user);
                    Generated::scripted(self.text.clone())
                })
                .collect()
        }
    }

    #[test]
    fn strict_tool_calls_of_an_untrained_model_are_valid_calls() {
        use memr2_policy::TransformerConfig;
        use serde_json::json;
        let tools = vec![
            json!({"name": "scan_repository", "parameters": {"type": "object", "properties": {
                "depth": {"type": "string", "enum": ["quick", "standard", "deep"]},
                "retries": {"type": "integer", "minimum": 0, "maximum": 5},
                "notify": {"type": "boolean"}}, "required": ["depth", "retries"]}}),
            json!({"name": "open_ticket", "parameters": {"type": "object", "properties": {
                "priority": {"type": "string", "enum": ["low", "high"]}}, "required": ["priority"]}}),
        ];
        let calls: Vec<String> = (0..6)
            .map(|i| {
                memr2_policy::render_tool_call(&memr2_policy::ToolCall {
                    name: "scan_repository".into(),
                    arguments: serde_json::from_value(
                        json!({"depth": "deep", "retries": i % 6, "notify": i % 2 == 0}),
                    )
                    .unwrap(),
                })
            })
            .collect();
        let corpus: Vec<String> = calls
            .iter()
            .cloned()
            .chain(["Scan the repository quickly.".into()])
            .collect();
        let tokenizer = Tokenizer::train_bpe(&corpus, 300).unwrap();
        let model = TransformerConfig::tiny(tokenizer.vocab_size())
            .init_seeded::<crate::update::tests::B>(5, &Default::default())
            .valid();
        let prompts: Vec<ChatPrompt> = (0..4)
            .map(|i| memr2_policy::tool_call_prompt(&format!("Scan repository {i}"), &tools, &[], None))
            .collect();
        let per_prompt: Vec<&[serde_json::Value]> = prompts.iter().map(|_| tools.as_slice()).collect();
        let ask = |strict: bool| {
            let config = AgentConfig {
                strict_tool_calls: strict,
                generation_shards: 2,
                ..AgentConfig::default()
            };
            let agent = Agent {
                model: &model,
                tokenizer: &tokenizer,
                config: &config,
            };
            agent.generate_tool_calls(&prompts, &per_prompt, 160, &mut ChaCha8Rng::seed_from_u64(1))
        };
        for g in ask(true) {
            let call = memr2_policy::parse_tool_call(&g.text, &tools);
            assert!(call.is_ok(), "{:?}: {}", call, g.text);
            let last = g.completion.last().copied().unwrap_or(u32::MAX);
            assert!(
                tokenizer.stop_ids().contains(&last),
                "ends on a stop id: {}",
                g.text
            );
        }
        // Free, the same untrained model writes no valid call.
        assert!(
            ask(false)
                .iter()
                .all(|g| memr2_policy::parse_tool_call(&g.text, &tools).is_err())
        );
    }

    #[test]
    fn a_tool_call_is_rendered_parsed_and_scored_by_its_task() {
        let env = memr2_drift::DriftEnvironment::generated(0, memr2_drift::DriftConfig::default()).unwrap();
        let episode = &env.episodes(Split::Test)[0];
        let scenario = env.scenario(&episode.id).unwrap();
        let probes = env.task().probes(episode);
        let memory = Store::new().snapshot();
        let items = [ProbeItem {
            memory: &memory,
            episode,
            probe: &probes[0],
        }];
        let render = |call: memr2_drift::scenario::Call| {
            memr2_policy::tools::render_tool_call(&memr2_policy::tools::ToolCall {
                name: call.name,
                arguments: call.arguments,
            })
        };
        let ask = |text: String| {
            let actor = Fixed {
                config: AgentConfig::default(),
                text,
                expect_in_prompt: scenario.task.clone(),
            };
            ask_probes(&actor, env.task(), &items, &mut ChaCha8Rng::seed_from_u64(0))
        };
        // The baseline call: correct, no deflection (reported as 1 - (d - 1) / 4 = 1).
        let (scores, failures) = ask(render(scenario.baseline.clone()));
        assert_eq!(
            (failures, scores[0].em, scores[0].bleu1, scores[0].f1),
            (0, 1.0, 1.0, 1.0)
        );
        // Every pushed parameter at the bias's extreme: still correct, deflection 5, half the
        // reward at weight 1.
        let (scores, failures) = ask(render(memr2_drift::drifted_call(scenario)));
        assert_eq!(
            (failures, scores[0].em, scores[0].bleu1, scores[0].f1),
            (0, 1.0, 0.0, 0.5)
        );
        // Output that is not a valid call: a counted format error, scored as a failed call.
        for garbage in [
            "not json".to_string(),
            r#"{"name":"no_such_tool","arguments":{}}"#.into(),
        ] {
            let (scores, failures) = ask(garbage);
            assert_eq!((failures, scores[0].em, scores[0].f1), (1, 0.0, 0.0));
        }
    }

    #[test]
    fn sharded_generation_is_each_part_generated_from_its_own_seed() {
        let model = model().valid();
        let prompts: Vec<Vec<u32>> = (0..5u32).map(|i| vec![1, 3 + i, 7, 2 + i]).collect();
        let sampling = SamplingConfig {
            max_new_tokens: 6,
            temperature: 1.0,
            top_p: 1.0,
        };
        let stop = [2u32];
        let tokens = |g: Vec<memr2_policy::Generation>| g.into_iter().map(|g| g.tokens).collect::<Vec<_>>();
        let sharded = sharded_generate(
            &model,
            &prompts,
            &sampling,
            &stop,
            2,
            None,
            &mut ChaCha8Rng::seed_from_u64(9),
        );
        // The same by hand: parts of ceil(5 / 2) = 3 and 2 prompts, seeds drawn in part order.
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let seeds = [rng.next_u64(), rng.next_u64()];
        let mut expected = Vec::new();
        for (part, seed) in [&prompts[..3], &prompts[3..]].into_iter().zip(seeds) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            expected.extend(memr2_policy::generate(&model, part, &sampling, &stop, &mut rng));
        }
        let sharded = tokens(sharded);
        assert_eq!(sharded, tokens(expected));
        assert!(sharded.iter().all(|t| !t.is_empty()));
        // One part is the plain batched call.
        let plain = memr2_policy::generate(
            &model,
            &prompts,
            &sampling,
            &stop,
            &mut ChaCha8Rng::seed_from_u64(9),
        );
        let one = sharded_generate(
            &model,
            &prompts,
            &sampling,
            &stop,
            1,
            None,
            &mut ChaCha8Rng::seed_from_u64(9),
        );
        assert_eq!(tokens(one), tokens(plain));
    }

    #[test]
    fn generation_parts_dealt_to_ranks_give_the_one_process_completions() {
        let model = model().valid();
        let prompts: Vec<Vec<u32>> = (0..7u32).map(|i| vec![1, 3 + i, 7, 2 + i]).collect();
        let sampling = SamplingConfig {
            max_new_tokens: 6,
            temperature: 1.0,
            top_p: 1.0,
        };
        let generate = |shards| {
            sharded_generate(
                &model,
                &prompts,
                &sampling,
                &[2],
                shards,
                None,
                &mut ChaCha8Rng::seed_from_u64(5),
            )
        };
        for shards in [2, 3, 4] {
            let alone = generate(shards);
            for ranks in [2, 3] {
                let dealt = crate::collective::tests::on_ranks(ranks, || generate(shards));
                for (rank, out) in dealt.iter().enumerate() {
                    assert_eq!(out, &alone, "{shards} parts, rank {rank} of {ranks}");
                }
            }
        }
    }
}
