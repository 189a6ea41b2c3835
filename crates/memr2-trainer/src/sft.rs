//! Supervised warm start: the simulator's teacher replayed through conversations gives
//! extractor, manager and answerer examples; the model imitates them.

use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use memr2_policy::roles::{self, ChatPrompt, ExtractedFact, MemoryOperation, MemoryView, Role, TurnView};
use memr2_policy::tokenizer::Tokenizer;
use memr2_policy::{Transformer, completion_logprobs};
use memr2_sim::{Episode, OracleOp, Teacher, TeacherConfig};
use memr2_store::{Operation, Snapshot, Store};
use rand_chacha::ChaCha8Rng;

use crate::agent::{answer_prompt, retrieve};
use crate::config::AgentConfig;
use crate::update::length_bucketed;

/// A prompt and the completion the teacher wrote for it.
#[derive(Clone, Debug)]
pub struct TeacherExample {
    /// The role the example trains.
    pub role: Role,
    /// The prompt.
    pub prompt: ChatPrompt,
    /// The teacher's completion text.
    pub completion: String,
}

/// Replays `teacher` through the first `horizon` sessions of an episode, the way the agent
/// would run (same chunking, same retrieval), and returns the examples it wrote together with
/// the memory after each session (`[0]` empty).
pub fn teacher_replay(
    episode: &Episode,
    horizon: usize,
    teacher: &mut Teacher,
    cfg: &AgentConfig,
) -> (Vec<TeacherExample>, Vec<Snapshot>) {
    let mut examples = Vec::new();
    let mut store = Store::new();
    let mut snapshots = vec![store.snapshot()];
    for session in episode.sessions.iter().take(horizon) {
        for chunk in session.chunks(cfg.chunks_per_session) {
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
            let mut facts = teacher.facts(episode, chunk);
            facts.truncate(cfg.max_facts_per_chunk);
            let extracted: Vec<ExtractedFact> = facts
                .iter()
                .map(|f| ExtractedFact {
                    speaker: f.speaker.clone(),
                    dia_id: f.dia_id.to_string(),
                    fact: f.text.clone(),
                })
                .collect();
            examples.push(TeacherExample {
                role: Role::Extractor,
                prompt: roles::extractor_prompt(&session.date, &turns),
                completion: roles::render_facts(&extracted),
            });
            for fact in &facts {
                let shown = retrieve(&store, &fact.text, cfg.manager_top_k, cfg.min_score);
                let pairs: Vec<(String, String)> =
                    shown.iter().map(|(a, _, t)| (a.clone(), t.clone())).collect();
                let ops = teacher.operations(fact, &pairs);
                let views: Vec<MemoryView<'_>> = shown
                    .iter()
                    .map(|(alias, _, text)| MemoryView { alias, text })
                    .collect();
                let rendered: Vec<MemoryOperation> = ops
                    .iter()
                    .map(|op| match op {
                        OracleOp::Add { text } => MemoryOperation::Add { text: text.clone() },
                        OracleOp::Update { alias, text } => MemoryOperation::Update {
                            id: alias.clone(),
                            text: text.clone(),
                        },
                        OracleOp::Delete { alias } => MemoryOperation::Delete { id: alias.clone() },
                    })
                    .collect();
                examples.push(TeacherExample {
                    role: Role::Manager,
                    prompt: roles::manager_prompt(&fact.text, &views),
                    completion: roles::render_operations(&rendered),
                });
                for op in ops {
                    let resolve =
                        |alias: &str| shown.iter().find(|(a, _, _)| a == alias).map(|(_, id, _)| *id);
                    let op = match op {
                        OracleOp::Add { text } => Some(Operation::Add {
                            text,
                            speaker: Some(fact.speaker.clone()),
                        }),
                        OracleOp::Update { alias, text } => {
                            resolve(&alias).map(|id| Operation::Update { id, text })
                        }
                        OracleOp::Delete { alias } => resolve(&alias).map(|id| Operation::Delete { id }),
                    };
                    if let Some(op) = op {
                        // The teacher only names memories it was shown, so this cannot fail
                        // short of an over-long text, which is then simply not stored.
                        let _ = store.apply(op, session.index);
                    }
                }
            }
        }
        snapshots.push(store.snapshot());
    }
    (examples, snapshots)
}

/// Answerer examples: each question of the episode at `horizon`, with the memories retrieved
/// from `memory` (normally the perfect teacher's), and its gold answer.
pub fn answerer_examples(episode: &Episode, memory: &Snapshot, cfg: &AgentConfig) -> Vec<TeacherExample> {
    episode
        .questions
        .iter()
        .map(|q| TeacherExample {
            role: Role::Answerer,
            prompt: answer_prompt(memory, &q.question, cfg),
            completion: q.answer.clone(),
        })
        .collect()
}

/// Every teacher example of the training episodes: extractor and manager examples from the
/// imperfect teacher at the largest horizon, answerer examples from the perfect teacher's
/// memory at every horizon (so the frozen answerer reads memories of every size).
pub fn build_examples(
    episodes: &[Episode],
    horizons: &[usize],
    teacher_config: &TeacherConfig,
    cfg: &AgentConfig,
    seed: u64,
) -> Vec<TeacherExample> {
    let mut out = Vec::new();
    let max = horizons.iter().copied().max().unwrap_or(0);
    for (i, episode) in episodes.iter().enumerate() {
        let episode = episode.with_horizon(max);
        let mut imperfect = Teacher::new(teacher_config.clone(), seed.wrapping_add(i as u64));
        let (examples, _) = teacher_replay(&episode, max, &mut imperfect, cfg);
        out.extend(examples);
        let mut perfect = Teacher::new(TeacherConfig::perfect(), 0);
        let (_, snapshots) = teacher_replay(&episode, max, &mut perfect, cfg);
        for &h in horizons {
            let at = episode.with_horizon(h);
            let memory = &snapshots[h.min(snapshots.len() - 1)];
            out.extend(answerer_examples(&at, memory, cfg));
        }
    }
    out
}

/// A tokenized example.
#[derive(Clone, Debug)]
pub struct TokenizedExample {
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// Completion ids, end-of-turn token included.
    pub completion: Vec<u32>,
}

/// Tokenizes examples with the chat template.
pub fn tokenize(examples: &[TeacherExample], tokenizer: &Tokenizer) -> Vec<TokenizedExample> {
    examples
        .iter()
        .map(|e| TokenizedExample {
            prompt: tokenizer.chat_prompt(&e.prompt.system, &e.prompt.user),
            completion: tokenizer.completion(&e.completion),
        })
        .collect()
}

/// Mean negative log-likelihood of the completions: `[1]`.
pub fn sft_loss<B: Backend>(model: &Transformer<B>, batch: &[TokenizedExample]) -> Tensor<B, 1> {
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = batch
        .iter()
        .map(|e| (e.prompt.clone(), e.completion.clone()))
        .collect();
    let out = completion_logprobs(model, &pairs);
    let tokens = out.mask.clone().sum();
    (out.logprobs * out.mask).sum().neg() / tokens.clamp_min(1.0)
}

/// One pass over the examples in shuffled minibatches, the `i`-th minibatch stepped at
/// `learning_rate(i)`. Returns the model and the mean loss; a minibatch with a non-finite loss
/// is skipped and counted in the third value.
pub fn sft_epoch<B, O>(
    mut model: Transformer<B>,
    optim: &mut O,
    examples: &[TokenizedExample],
    batch_size: usize,
    learning_rate: impl Fn(usize) -> f64,
    rng: &mut ChaCha8Rng,
    mut progress: impl FnMut(usize, f64),
) -> (Transformer<B>, f64, u64)
where
    B: AutodiffBackend,
    O: Optimizer<Transformer<B>, B>,
{
    let _span = tracing::info_span!("sft_epoch", examples = examples.len()).entered();
    let lengths: Vec<usize> = examples
        .iter()
        .map(|e| e.prompt.len() + e.completion.len())
        .collect();
    let batches = length_bucketed(&lengths, batch_size, rng);
    let (mut total, mut n, mut skipped) = (0.0, 0usize, 0u64);
    for (done, batch) in batches.iter().enumerate() {
        let items: Vec<TokenizedExample> = batch.iter().map(|&i| examples[i].clone()).collect();
        let loss = sft_loss(&model, &items);
        let value: f64 = loss.clone().into_scalar().elem();
        if !value.is_finite() {
            tracing::warn!(loss = value, "non-finite SFT loss: minibatch skipped");
            skipped += 1;
            continue;
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(learning_rate(done), model, grads);
        total += value;
        n += 1;
        progress(done + 1, value);
    }
    (model, if n == 0 { f64::NAN } else { total / n as f64 }, skipped)
}
