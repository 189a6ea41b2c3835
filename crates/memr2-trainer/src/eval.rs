//! Evaluation: answer held-out questions from a memory built by no one, by the oracle, or by a
//! policy (greedy), and report F1 / EM / BLEU-1 per category.

use std::fmt::Write as _;

use burn::prelude::Backend;
use memr2_policy::Transformer;
use memr2_policy::roles;
use memr2_policy::tokenizer::Tokenizer;
use memr2_sim::{Category, Episode, ScoreBoard, Teacher, TeacherConfig, facts_in_chunk, normalize_answer};
use memr2_store::{Snapshot, Store};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::agent::{
    Agent, RolloutSampling, RolloutState, SessionJob, answer_prompt, answer_questions, extractor_prompt_for,
    run_sessions,
};
use crate::config::AgentConfig;
use crate::sft::{answer_in_text, teacher_replay};

/// How far the oracle memory and retrieval reach: the upper bound on what any answerer can get
/// from memory.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RetrievalCeiling {
    /// Questions looked at (unanswerable and adversarial ones left out).
    pub questions: usize,
    /// Fraction whose normalised gold answer appears in some memory of the oracle memory.
    pub in_memory: f64,
    /// Fraction whose normalised gold answer appears in the memories the answerer is shown
    /// (top `answer_top_k` by BM25 on the question).
    pub in_prompt: f64,
}

/// Measures [`RetrievalCeiling`] over episodes at their full horizon.
pub fn retrieval_ceiling(episodes: &[Episode], cfg: &AgentConfig) -> RetrievalCeiling {
    let contains = answer_in_text;
    let (mut n, mut in_memory, mut in_prompt) = (0usize, 0usize, 0usize);
    for episode in episodes {
        let mut teacher = Teacher::new(TeacherConfig::perfect(), 0);
        let (_, snapshots) = teacher_replay(episode, episode.sessions.len(), &mut teacher, cfg);
        let Some(memory) = snapshots.last() else { continue };
        let all: Vec<String> = memory.entries().map(|e| e.text.clone()).collect();
        for q in &episode.questions {
            if matches!(q.category, Category::Unanswerable | Category::Adversarial) {
                continue;
            }
            n += 1;
            in_memory += usize::from(all.iter().any(|t| contains(t, &q.answer)));
            in_prompt += usize::from(contains(&answer_prompt(memory, &q.question, cfg).user, &q.answer));
        }
    }
    let frac = |k: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
    RetrievalCeiling {
        questions: n,
        in_memory: frac(in_memory),
        in_prompt: frac(in_prompt),
    }
}

/// How well the extractor, run greedily, writes the facts the oracle knows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ExtractionScore {
    /// Fraction of written facts that are oracle facts of their chunk (normalised text).
    pub precision: f64,
    /// Fraction of the oracle's facts that were written.
    pub recall: f64,
    /// Chunks whose output did not parse (counted as writing nothing).
    pub format_errors: usize,
}

/// Runs the extractor over every chunk of every session of `episodes` in one batch and compares
/// its facts with the oracle's, as normalised text.
pub fn extraction_score<B: Backend>(
    model: &Transformer<B>,
    tokenizer: &Tokenizer,
    cfg: &AgentConfig,
    episodes: &[Episode],
) -> ExtractionScore {
    let _span = tracing::info_span!("extraction_score", episodes = episodes.len()).entered();
    let agent = Agent {
        model,
        tokenizer,
        config: cfg,
    };
    let (mut prompts, mut gold) = (Vec::new(), Vec::new());
    for episode in episodes {
        for session in &episode.sessions {
            for chunk in session.chunks(cfg.chunks_per_session) {
                prompts.push(extractor_prompt_for(&session.date, chunk));
                let facts: Vec<String> = facts_in_chunk(episode, chunk)
                    .iter()
                    .map(|f| normalize_answer(&f.text))
                    .collect();
                gold.push(facts);
            }
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let outputs = agent.generate(&prompts, cfg.max_extract_tokens, 0.0, 1.0, &mut rng);
    let (mut written, mut right, mut known, mut found, mut format_errors) = (0, 0, 0, 0, 0);
    for (output, gold) in outputs.iter().zip(&gold) {
        let facts: Vec<String> = match roles::parse_facts(&output.text) {
            Ok(facts) => facts
                .iter()
                .take(cfg.max_facts_per_chunk)
                .map(|f| normalize_answer(&f.fact))
                .collect(),
            Err(_) => {
                format_errors += 1;
                Vec::new()
            }
        };
        written += facts.len();
        right += facts.iter().filter(|f| gold.contains(f)).count();
        known += gold.len();
        found += gold.iter().filter(|g| facts.contains(g)).count();
    }
    let frac = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    ExtractionScore {
        precision: frac(right, written),
        recall: frac(found, known),
        format_errors,
    }
}

/// Where the memory that questions are answered from comes from.
pub enum MemorySource<'a, B: Backend> {
    /// An empty memory: the answerer alone.
    Empty,
    /// The perfect teacher's memory: an upper bound for the extractor and manager.
    Oracle,
    /// A policy's extractor and manager, run greedily.
    Policy(&'a Transformer<B>),
}

/// The final memory of every episode under a source.
pub fn final_memories<B: Backend>(
    source: &MemorySource<'_, B>,
    episodes: &[Episode],
    tokenizer: &Tokenizer,
    cfg: &AgentConfig,
    rng: &mut ChaCha8Rng,
) -> Vec<RolloutState> {
    match source {
        MemorySource::Empty => episodes.iter().map(|_| RolloutState::new()).collect(),
        MemorySource::Oracle => episodes
            .iter()
            .map(|e| {
                let mut teacher = Teacher::new(TeacherConfig::perfect(), 0);
                let (_, snapshots) = teacher_replay(e, e.sessions.len(), &mut teacher, cfg);
                let last: Snapshot = snapshots
                    .last()
                    .cloned()
                    .unwrap_or_else(|| Store::new().snapshot());
                RolloutState {
                    store: last.branch(),
                    snapshots,
                    ..RolloutState::new()
                }
            })
            .collect(),
        MemorySource::Policy(model) => {
            let agent = Agent {
                model: *model,
                tokenizer,
                config: cfg,
            };
            let mut states: Vec<RolloutState> = episodes.iter().map(|_| RolloutState::new()).collect();
            let horizon = episodes.iter().map(|e| e.sessions.len()).max().unwrap_or(0);
            let sampling = RolloutSampling {
                temperature: 0.0,
                top_p: 1.0,
                record: false,
            };
            for s in 1..=horizon as u32 {
                let mut jobs: Vec<SessionJob<'_>> = episodes
                    .iter()
                    .zip(states.iter_mut())
                    .filter(|(e, _)| e.sessions.len() >= s as usize)
                    .map(|(episode, state)| SessionJob {
                        episode,
                        session: s,
                        state,
                    })
                    .collect();
                run_sessions(&agent, &mut jobs, sampling, rng);
            }
            states
        }
    }
}

/// Answers every question of every episode from the final memories and scores them.
pub fn score_memories<B: Backend>(
    answerer: &Transformer<B>,
    tokenizer: &Tokenizer,
    cfg: &AgentConfig,
    episodes: &[Episode],
    memories: &[RolloutState],
    rng: &mut ChaCha8Rng,
) -> ScoreBoard {
    let agent = Agent {
        model: answerer,
        tokenizer,
        config: cfg,
    };
    let mut items = Vec::new();
    for (episode, state) in episodes.iter().zip(memories) {
        let last = state.snapshots.last().expect("a rollout has a snapshot");
        items.extend(episode.questions.iter().map(|q| (last, q)));
    }
    let (answers, _) = answer_questions(&agent, &items, rng);
    let mut board = ScoreBoard::default();
    for ((_, q), a) in items.iter().zip(&answers) {
        tracing::debug!(category = q.category.name(), question = %q.question, gold = %q.answer, answer = %a, "answered");
        board.add(q.category, a, &q.answer);
    }
    board
}

/// Evaluates one memory source end to end.
pub fn evaluate<B: Backend>(
    source: &MemorySource<'_, B>,
    answerer: &Transformer<B>,
    tokenizer: &Tokenizer,
    cfg: &AgentConfig,
    episodes: &[Episode],
    rng: &mut ChaCha8Rng,
) -> ScoreBoard {
    let _span = tracing::info_span!("evaluate", episodes = episodes.len()).entered();
    let memories = final_memories(source, episodes, tokenizer, cfg, rng);
    score_memories(answerer, tokenizer, cfg, episodes, &memories, rng)
}

/// A Markdown table: one row per system, F1 / EM / BLEU-1 overall and F1 per category.
pub fn report_table(rows: &[(String, ScoreBoard)]) -> String {
    let categories: Vec<Category> = Category::ALL
        .iter()
        .copied()
        .filter(|c| {
            rows.iter()
                .any(|(_, b)| b.categories().iter().any(|(k, _)| k == c))
        })
        .collect();
    let mut out = String::new();
    let _ = write!(out, "| system | F1 | EM | BLEU-1 |");
    for c in &categories {
        let _ = write!(out, " {} F1 |", c.name());
    }
    let _ = write!(out, " questions |\n|---|---:|---:|---:|");
    for _ in &categories {
        out.push_str("---:|");
    }
    out.push_str("---:|\n");
    for (name, board) in rows {
        let all = board.overall();
        let _ = write!(
            out,
            "| {name} | {:.1} | {:.1} | {:.1} |",
            100.0 * all.f1,
            100.0 * all.em,
            100.0 * all.bleu1
        );
        let per = board.categories();
        for c in &categories {
            match per.iter().find(|(k, _)| k == c) {
                Some((_, s)) => {
                    let _ = write!(out, " {:.1} |", 100.0 * s.f1);
                }
                None => out.push_str(" - |"),
            }
        }
        let _ = writeln!(out, " {} |", all.count);
    }
    out
}
