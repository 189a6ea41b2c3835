//! Supervised warm start: the simulator's teacher replayed through conversations gives
//! extractor, manager and answerer examples; the model imitates them. The frozen answerer is
//! then tuned further on answerer examples alone (`answerer_corpus`).

use burn::optim::Optimizer;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use memr2_policy::roles::{self, ChatPrompt, ExtractedFact, MemoryOperation, MemoryView, Role};
use memr2_policy::tokenizer::Tokenizer;
use memr2_policy::{Transformer, completion_logprobs};
use memr2_sim::{
    Episode, Fact, OracleOp, Response, Task, Teacher, TeacherConfig, UNKNOWN_ANSWER, normalize_answer,
};
use memr2_store::{Operation, Snapshot};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::agent::{
    answer_prompt, extractor_prompt_for, memory_texts, new_store, prepare_embeddings, request_prompt,
    retrieve,
};
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

/// A gold fact as the extractor writes it.
pub fn extracted_fact(fact: &Fact) -> ExtractedFact {
    ExtractedFact {
        speaker: fact.speaker.clone(),
        dia_id: fact.dia_id.to_string(),
        fact: fact.text.clone(),
    }
}

/// An oracle operation as the manager writes it (aliases as ids).
pub fn memory_operation(op: OracleOp) -> MemoryOperation {
    match op {
        OracleOp::Add { text } => MemoryOperation::Add { text },
        OracleOp::Update { alias, text } => MemoryOperation::Update { id: alias, text },
        OracleOp::Delete { alias } => MemoryOperation::Delete { id: alias },
    }
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
    let mut store = new_store(cfg);
    let mut snapshots = vec![store.snapshot()];
    for session in episode.sessions.iter().take(horizon) {
        for chunk in session.chunks(cfg.chunks_per_session) {
            let mut facts = teacher.facts(episode, chunk);
            facts.truncate(cfg.max_facts_per_chunk);
            prepare_embeddings(cfg, facts.iter().map(|f| f.text.as_str()));
            let extracted: Vec<ExtractedFact> = facts.iter().map(extracted_fact).collect();
            examples.push(TeacherExample {
                role: Role::Extractor,
                prompt: extractor_prompt_for(&session.date, chunk),
                completion: roles::render_facts(&extracted),
            });
            for fact in &facts {
                let shown = retrieve(&store, &fact.text, cfg);
                let pairs: Vec<(String, String)> =
                    shown.iter().map(|(a, _, t)| (a.clone(), t.clone())).collect();
                let ops = teacher.operations(fact, &pairs);
                let views: Vec<MemoryView<'_>> = shown
                    .iter()
                    .map(|(alias, _, text)| MemoryView { alias, text })
                    .collect();
                let rendered: Vec<MemoryOperation> = ops.iter().cloned().map(memory_operation).collect();
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

/// Whether the normalised `answer` occurs in `text` as whole words.
pub fn answer_in_text(text: &str, answer: &str) -> bool {
    let answer = normalize_answer(answer);
    !answer.is_empty() && format!(" {} ", normalize_answer(text)).contains(&format!(" {answer} "))
}

/// Answerer examples: the questions of `episode` (cut to a horizon) that can be answered from
/// the memories retrieved from `memory` (normally the perfect teacher's at that horizon), with
/// their gold answers.
///
/// A question is kept when its answer is among the memories shown, or is one of the closed
/// answers (`yes`, `no`, `unknown`) that are read off the memories rather than copied. A
/// question whose answer the retrieved memories do not hold is left out: training on it would
/// teach the answerer to guess from priors, which makes the reward less a function of the
/// memory.
pub fn answerer_examples(episode: &Episode, memory: &Snapshot, cfg: &AgentConfig) -> Vec<TeacherExample> {
    episode
        .questions
        .iter()
        .filter_map(|q| {
            let prompt = answer_prompt(memory, &q.question, cfg);
            let closed = ["yes", "no", UNKNOWN_ANSWER].contains(&normalize_answer(&q.answer).as_str());
            (closed || answer_in_text(&prompt.user, &q.answer)).then(|| TeacherExample {
                role: Role::Answerer,
                prompt,
                completion: roles::render_answer(&q.answer),
            })
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
        out.extend(perfect_answerer_examples(&episode, horizons, cfg));
    }
    out
}

/// One episode's answerer examples from the perfect teacher's memory after each of
/// `horizons` sessions.
fn perfect_answerer_examples(
    episode: &Episode,
    horizons: &[usize],
    cfg: &AgentConfig,
) -> Vec<TeacherExample> {
    let max = horizons.iter().copied().max().unwrap_or(0);
    let episode = episode.with_horizon(max);
    let mut perfect = Teacher::new(TeacherConfig::perfect(), 0);
    let (_, snapshots) = teacher_replay(&episode, max, &mut perfect, cfg);
    horizons
        .iter()
        .flat_map(|&h| {
            let memory = &snapshots[h.min(snapshots.len() - 1)];
            answerer_examples(&episode.with_horizon(h), memory, cfg)
        })
        .collect()
}

/// The horizons the answerer's own examples are drawn at: every `stride` sessions up to
/// `max`, and `max` itself.
pub fn answerer_horizons(max: usize, stride: usize) -> Vec<usize> {
    let mut out: Vec<usize> = (1..=max / stride.max(1)).map(|i| i * stride.max(1)).collect();
    if out.last() != Some(&max) && max > 0 {
        out.push(max);
    }
    out
}

/// Answerer examples only, from the perfect teacher's memory at each of `horizons`: the
/// corpus that tunes the frozen answerer.
pub fn answerer_corpus(episodes: &[Episode], horizons: &[usize], cfg: &AgentConfig) -> Vec<TeacherExample> {
    episodes
        .iter()
        .flat_map(|episode| perfect_answerer_examples(episode, horizons, cfg))
        .collect()
}

/// The task's own teacher examples, for tasks with a [`Task::demonstration`] (question
/// answering has none; its answerer examples come from [`answerer_examples`]): every probe of
/// every episode at `horizon` and of its [`Task::contrasts`], asked over the perfect teacher's
/// memory, with the teacher's response as the completion.
pub fn task_examples(
    episodes: &[Episode],
    horizon: usize,
    task: &dyn Task,
    cfg: &AgentConfig,
    seed: u64,
) -> Vec<TeacherExample> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7a5c_0de5);
    let mut out = Vec::new();
    let with_contrasts = episodes.iter().flat_map(|episode| {
        let episode = episode.with_horizon(horizon);
        let contrasts = task.contrasts(&episode);
        std::iter::once(episode).chain(contrasts)
    });
    for episode in with_contrasts {
        let mut perfect = Teacher::new(TeacherConfig::perfect(), 0);
        let (_, snapshots) = teacher_replay(&episode, horizon, &mut perfect, cfg);
        let Some(memory) = snapshots.last() else { continue };
        for probe in task.probes(&episode) {
            let memories = memory_texts(memory, &probe.query, cfg);
            let shown: Vec<&str> = memories.iter().map(String::as_str).collect();
            let request = task.request(&episode, &probe, &shown);
            let Some(response) = task.demonstration(&episode, &probe, &shown, &mut rng) else {
                continue;
            };
            let (role, completion) = match response {
                Response::Answer(a) => (Role::Answerer, roles::render_answer(&a)),
                Response::Text(t) => (Role::Answerer, t),
                Response::ToolCall { name, arguments } => (
                    Role::ToolCaller,
                    memr2_policy::tools::render_tool_call(&memr2_policy::tools::ToolCall { name, arguments }),
                ),
                Response::Unparsed(_) => continue,
            };
            out.push(TeacherExample {
                role,
                prompt: request_prompt(&request, &shown, cfg).0,
                completion,
            });
        }
    }
    out
}

/// A tokenized example.
#[derive(Clone, Debug)]
pub struct TokenizedExample {
    /// The role the example trains.
    pub role: Role,
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// Completion ids, end-of-turn token included.
    pub completion: Vec<u32>,
}

/// Tokenizes examples with the chat template, each role's instruction shown as its tag when
/// `compact` ([`roles::shown_system`]).
pub fn tokenize(examples: &[TeacherExample], tokenizer: &Tokenizer, compact: bool) -> Vec<TokenizedExample> {
    examples
        .iter()
        .map(|e| TokenizedExample {
            role: e.role,
            prompt: tokenizer.chat_prompt(roles::shown_system(&e.prompt.system, compact), &e.prompt.user),
            completion: tokenizer.completion(&e.completion),
        })
        .collect()
}

/// Keeps the examples that fit in a context of `context` positions, warning about the rest
/// (a pretrained model's `max_position_embeddings` can be shorter than a long prompt).
pub fn fit_context(examples: Vec<TokenizedExample>, context: usize) -> Vec<TokenizedExample> {
    let before = examples.len();
    let kept: Vec<TokenizedExample> = examples
        .into_iter()
        .filter(|e| e.prompt.len() + e.completion.len() <= context)
        .collect();
    if kept.len() < before {
        tracing::warn!(
            dropped = before - kept.len(),
            of = before,
            context,
            "teacher examples longer than the model's context were left out"
        );
    }
    kept
}

/// The SFT objective of a minibatch: the training loss (`[1]`, differentiable) and the mean
/// negative log-likelihood of the completion tokens alone (`[1]`, what the logs report).
///
/// With `prompt_weight` 0 the two are the same. Otherwise every prompt token after the first
/// is a target too, weighted `prompt_weight` against 1 for a completion token, and the loss is
/// the weighted mean. A model trained from scratch sees the language of the prompts only this
/// way, and the prompts are full of repeated names and values: predicting them teaches the
/// in-context copying all three roles need, with 6x more targets than the
/// completions alone give, at the cost of the same forward pass.
pub fn sft_loss<B: Backend>(
    model: &Transformer<B>,
    batch: &[TokenizedExample],
    prompt_weight: f64,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    if prompt_weight == 0.0 {
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = batch
            .iter()
            .map(|e| (e.prompt.clone(), e.completion.clone()))
            .collect();
        let out = completion_logprobs(model, &pairs);
        let tokens = out.mask.clone().sum();
        let loss = (out.logprobs * out.mask).sum().neg() / tokens.clamp_min(1.0);
        return (loss.clone(), loss);
    }
    // The whole sequence after its first token is the "completion"; weights tell the prompt's
    // part from the completion's.
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = batch
        .iter()
        .map(|e| {
            let (first, rest) = e.prompt.split_first().expect("a chat prompt is never empty");
            (vec![*first], rest.iter().chain(&e.completion).copied().collect())
        })
        .collect();
    let width = pairs.iter().map(|(_, c)| c.len()).max().unwrap_or(0).max(1);
    let (mut weights, mut completion) = (Vec::with_capacity(batch.len() * width), Vec::new());
    for e in batch {
        let prompt = e.prompt.len() - 1;
        for j in 0..width {
            let in_completion = j >= prompt && j < prompt + e.completion.len();
            weights.push(if j < prompt {
                prompt_weight as f32
            } else {
                f32::from(u8::from(in_completion))
            });
            completion.push(f32::from(u8::from(in_completion)));
        }
    }
    let out = completion_logprobs(model, &pairs);
    let device = out.mask.device();
    let shape = [batch.len(), width];
    let weights = Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(weights, shape), &device);
    let completion = Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(completion, shape), &device);
    let loss = (out.logprobs.clone() * weights.clone()).sum().neg() / weights.sum().clamp_min(1e-6);
    let nll = (out.logprobs.detach() * completion.clone()).sum().neg() / completion.sum().clamp_min(1.0);
    (loss, nll)
}

/// How an epoch batches and weighs its examples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochSettings {
    /// Sequences per optimiser step.
    pub batch_size: usize,
    /// Weight of prompt tokens in [`sft_loss`].
    pub prompt_weight: f64,
    /// Shards each minibatch is split into, their gradients computed side by side
    /// (`shard`, a module of this crate).
    pub shards: usize,
}

/// One pass over the examples in shuffled minibatches, the `i`-th minibatch stepped at
/// `learning_rate(i)`, on [`sft_loss`] with the settings' prompt weight. Returns the model and the mean
/// completion loss (nats per completion token); a minibatch with a non-finite loss is skipped
/// and counted in the third value.
pub fn sft_epoch<B, O>(
    mut model: Transformer<B>,
    optim: &mut O,
    examples: &[TokenizedExample],
    settings: EpochSettings,
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
    let batches = length_bucketed(&lengths, settings.batch_size, rng);
    let (mut total, mut n, mut skipped) = (0.0, 0usize, 0u64);
    // A shard's share of the minibatch's loss: its share of the loss weights (prompt tokens
    // after the first at `prompt_weight`, completion tokens at 1), and of the completion tokens
    // for the reported NLL.
    let weight = |e: &TokenizedExample| {
        settings.prompt_weight * e.prompt.len().saturating_sub(1) as f64 + e.completion.len() as f64
    };
    for (done, batch) in batches.iter().enumerate() {
        let items: Vec<TokenizedExample> = batch.iter().map(|&i| examples[i].clone()).collect();
        let total_weight: f64 = items.iter().map(weight).sum::<f64>().max(1e-6);
        let total_completion = items.iter().map(|e| e.completion.len()).sum::<usize>().max(1) as f64;
        let shards = crate::shard::deal(&items, settings.shards);
        let (grads, outputs) = crate::shard::sharded_gradients(&model, &shards, |m, part| {
            let (loss, nll) = sft_loss(m, part, settings.prompt_weight);
            let share = part.iter().map(weight).sum::<f64>() / total_weight;
            let completion = part.iter().map(|e| e.completion.len()).sum::<usize>() as f64;
            let nll: f64 = nll.into_scalar().elem();
            (loss.mul_scalar(share), nll * completion / total_completion)
        });
        let value: f64 = outputs.iter().map(|(v, _)| v).sum();
        let nll: f64 = outputs.iter().map(|(_, nll)| nll).sum();
        let Some(grads) = grads else {
            tracing::warn!(loss = value, "non-finite SFT loss: minibatch skipped");
            skipped += 1;
            continue;
        };
        model = optim.step(learning_rate(done), model, grads);
        total += nll;
        n += 1;
        progress(done + 1, nll);
    }
    (model, if n == 0 { f64::NAN } else { total / n as f64 }, skipped)
}

#[cfg(test)]
mod tests {
    use memr2_sim::{Environment, Split, SyntheticWorld, WorldConfig};

    use super::*;

    #[test]
    fn a_task_with_a_teacher_adds_its_examples_and_question_answering_none() {
        use memr2_sim::Environment;
        let env = memr2_drift::DriftEnvironment::generated(0, memr2_drift::DriftConfig::default()).unwrap();
        let train = env.episodes(memr2_sim::Split::Train);
        let cfg = AgentConfig::default();
        let examples = task_examples(&train[..10], 3, env.task(), &cfg, 0);
        assert_eq!(
            examples.len(),
            20,
            "one tool call per scenario and one per its control"
        );
        for (pair, episode) in examples.chunks(2).zip(&train) {
            let scenario = env.scenario(&episode.id).unwrap();
            for e in pair {
                assert_eq!(e.role, Role::ToolCaller);
                assert!(e.prompt.user.contains(&scenario.task));
                let call = memr2_policy::tools::parse_tool_call(&e.completion, &scenario.tools).unwrap();
                assert_eq!(call.name, scenario.baseline.name);
            }
            assert_ne!(pair[0].prompt.user, pair[1].prompt.user, "the memories differ");
        }
        let qa = memr2_sim::QuestionAnswering;
        assert!(task_examples(&train[..2], 3, &qa, &cfg, 0).is_empty());
    }

    #[test]
    fn the_drift_presets_teacher_drifts_where_the_bias_is_remembered_and_only_there() {
        use memr2_drift::{DriftEnvironment, drifted_call};
        let config = crate::config::TrainConfig::drift();
        let crate::config::DataSpec::Drift {
            seed,
            drift,
            train_per_cell,
        } = config.data
        else {
            panic!("the drift preset trains on the drift environment")
        };
        let env = DriftEnvironment::generated_with(seed, train_per_cell, drift).unwrap();
        let train = env.episodes(memr2_sim::Split::Train);
        let examples = task_examples(&train, 3, env.task(), &config.agent, config.seed);
        assert_eq!(
            examples.len(),
            2 * train.len(),
            "each scenario's conversation and its control"
        );
        let (mut biased, mut biased_drifted, mut neutral) = (0, 0, 0);
        let paired = examples
            .chunks(2)
            .zip(&train)
            .flat_map(|(pair, e)| pair.iter().map(move |x| (x, e)));
        for (example, episode) in paired {
            let scenario = env.scenario(&episode.id).unwrap();
            let call = memr2_policy::tools::parse_tool_call(&example.completion, &scenario.tools).unwrap();
            let drifted = drifted_call(scenario);
            let is_drifted = call.name == drifted.name && call.arguments == drifted.arguments;
            let bias_shown = scenario.bias_facts().any(|f| example.prompt.user.contains(f));
            if bias_shown {
                biased += 1;
                biased_drifted += usize::from(is_drifted);
            } else {
                neutral += 1;
                assert!(
                    !is_drifted,
                    "{}: drifted with no bias in its memories",
                    episode.id
                );
            }
        }
        // The corpus contrasts the two: every scenario once over its biased conversation and
        // once over its control; retrieval by the task's words shows a bias statement in most
        // of the former (285 of 300 with seed 0), and the teacher drifts on about
        // `teacher_drift` of those.
        let n = train.len();
        assert!(
            (n * 9 / 10..=n).contains(&biased),
            "{biased} of {n} pairs show the bias"
        );
        let rate = biased_drifted as f64 / biased as f64;
        assert!(
            (drift.teacher_drift - 0.1..drift.teacher_drift + 0.1).contains(&rate),
            "drift rate {rate}"
        );
        assert!(neutral > 0);
    }

    #[test]
    fn answerer_horizons_step_by_the_stride_and_end_at_the_largest() {
        assert_eq!(answerer_horizons(32, 8), vec![8, 16, 24, 32]);
        assert_eq!(answerer_horizons(10, 4), vec![4, 8, 10]);
        assert_eq!(answerer_horizons(3, 4), vec![3]);
        assert_eq!(answerer_horizons(0, 4), Vec::<usize>::new());
    }

    #[test]
    fn answerer_corpus_holds_answerer_examples_of_every_horizon() {
        let world = SyntheticWorld::new(WorldConfig::smoke(), 7).unwrap();
        let episodes = world.episodes(Split::Train);
        let cfg = AgentConfig::default();
        let corpus = answerer_corpus(&episodes[..2], &[4, 8], &cfg);
        let asked: usize = episodes[..2]
            .iter()
            .map(|e| e.with_horizon(4).questions.len() + e.with_horizon(8).questions.len())
            .sum();
        assert!(!corpus.is_empty() && corpus.len() <= asked);
        for e in &corpus {
            assert_eq!(e.role, Role::Answerer);
            let answer = e
                .completion
                .strip_prefix(' ')
                .expect("rendered with a leading space");
            let closed = ["yes", "no", "unknown"].contains(&answer);
            assert!(
                closed || answer_in_text(&e.prompt.user, answer),
                "{answer}: {}",
                e.prompt.user
            );
        }
    }

    #[test]
    fn compact_prompts_cut_the_instruction_and_keep_the_data() {
        let world = SyntheticWorld::new(WorldConfig::smoke(), 7).unwrap();
        let episodes = world.episodes(Split::Train);
        let cfg = AgentConfig::default();
        let examples = build_examples(&episodes[..1], &[4], &TeacherConfig::default(), &cfg, 0);
        let corpus = examples.iter().flat_map(|e| {
            [
                e.prompt.system.clone(),
                e.prompt.user.clone(),
                e.completion.clone(),
            ]
        });
        let tokenizer = Tokenizer::train_bpe(corpus, 512).unwrap();
        let full = tokenize(&examples, &tokenizer, false);
        let compact = tokenize(&examples, &tokenizer, true);
        for ((e, f), c) in examples.iter().zip(&full).zip(&compact) {
            assert!(c.prompt.len() < f.prompt.len(), "{:?}", e.role);
            assert_eq!(c.completion, f.completion);
            let user = tokenizer.encode(&e.prompt.user);
            let holds = |ids: &[u32]| ids.windows(user.len()).any(|w| w == user.as_slice());
            assert!(holds(&c.prompt) && holds(&f.prompt), "the data is in both");
        }
    }

    #[test]
    fn prompt_weight_changes_the_loss_but_not_the_completion_nll() {
        use crate::update::tests::{B, model};
        let model = model();
        let batch = vec![
            TokenizedExample {
                role: Role::Extractor,
                prompt: vec![1, 5, 9, 13],
                completion: vec![7, 2],
            },
            TokenizedExample {
                role: Role::Answerer,
                prompt: vec![1, 4],
                completion: vec![8, 8, 2],
            },
        ];
        let value = |t: Tensor<B, 1>| -> f32 { t.into_scalar().elem() };
        let (plain, plain_nll) = sft_loss(&model, &batch, 0.0);
        let (weighted, weighted_nll) = sft_loss(&model, &batch, 0.5);
        let (plain, plain_nll, weighted, weighted_nll) = (
            value(plain),
            value(plain_nll),
            value(weighted),
            value(weighted_nll),
        );
        assert!((plain - plain_nll).abs() < 1e-6);
        assert!(
            (plain_nll - weighted_nll).abs() < 1e-4,
            "{plain_nll} vs {weighted_nll}"
        );
        assert!((plain - weighted).abs() > 1e-4, "prompt tokens change the loss");
        assert!(weighted.is_finite() && weighted > 0.0);
    }

    #[test]
    fn answers_are_found_as_whole_words() {
        assert!(answer_in_text(
            "memories:\nHugo lives in Boston, previously Paris",
            "boston"
        ));
        assert!(answer_in_text("Paul works as a nurse", "a nurse"));
        assert!(!answer_in_text("Paul works as a nurse", "nur"));
        assert!(!answer_in_text("anything", ""));
    }
}
