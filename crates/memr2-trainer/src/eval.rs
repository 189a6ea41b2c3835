//! Evaluation: ask a task's probes (held-out questions, for question answering) of a memory
//! built by no one, by the oracle, or by a policy (greedy), and report F1 / EM / BLEU-1 per
//! category.

use std::fmt::Write as _;

use burn::prelude::Backend;
use memr2_policy::Transformer;
use memr2_policy::roles;
use memr2_policy::tokenizer::Tokenizer;
use memr2_sim::{
    AnswerScore, Category, Episode, Probe, Response, ScoreBoard, Task, Teacher, TeacherConfig,
    facts_in_chunk, normalize_answer,
};
use memr2_store::Snapshot;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::agent::{
    Agent, Generator, ProbeItem, RolloutSampling, RolloutState, SessionJob, answer_prompt,
    ask_probes_for_responses, extractor_prompt_for, new_store, run_sessions,
};
use crate::config::AgentConfig;
use crate::judge::{Judge, JudgeBoard, JudgeItem};
use crate::served::Answerer;
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
        MemorySource::Empty => episodes.iter().map(|_| RolloutState::new(cfg)).collect(),
        MemorySource::Oracle => episodes
            .iter()
            .map(|e| {
                let mut teacher = Teacher::new(TeacherConfig::perfect(), 0);
                let (_, snapshots) = teacher_replay(e, e.sessions.len(), &mut teacher, cfg);
                let last: Snapshot = snapshots
                    .last()
                    .cloned()
                    .unwrap_or_else(|| new_store(cfg).snapshot());
                RolloutState {
                    store: last.branch(),
                    snapshots,
                    ..RolloutState::default()
                }
            })
            .collect(),
        MemorySource::Policy(model) => {
            let agent = Agent {
                model: *model,
                tokenizer,
                config: cfg,
            };
            let mut states: Vec<RolloutState> = episodes.iter().map(|_| RolloutState::new(cfg)).collect();
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

/// A system's scores on a set of episodes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// F1 / EM / BLEU-1 overall and per category.
    pub board: ScoreBoard,
    /// Each episode's question count and its questions' summed F1, in the episodes' order:
    /// what [`paired_difference`] compares, one conversation at a time.
    pub per_episode: Vec<(usize, f64)>,
    /// The LLM judge's labels per category (J), when a judge was asked.
    #[serde(default, skip_serializing_if = "JudgeBoard::is_empty")]
    pub judge: JudgeBoard,
}

impl Scores {
    /// Mean F1 over every question.
    pub fn f1(&self) -> f64 {
        self.board.overall().f1
    }
}

/// Asks every probe of every episode of its final memory and returns the task's score of each
/// response, per episode in the order of [`Task::probes`].
pub fn probe_scores<B: Backend>(
    answerer: Answerer<'_, B>,
    tokenizer: &Tokenizer,
    cfg: &AgentConfig,
    task: &dyn Task,
    episodes: &[Episode],
    memories: &[RolloutState],
    rng: &mut ChaCha8Rng,
) -> Vec<Vec<AnswerScore>> {
    probe_responses(answerer, tokenizer, cfg, task, episodes, memories, rng)
        .into_iter()
        .map(|answered| answered.into_iter().map(|(score, _)| score).collect())
        .collect()
}

/// [`probe_scores`] with each parsed response beside its score.
pub fn probe_responses<B: Backend>(
    answerer: Answerer<'_, B>,
    tokenizer: &Tokenizer,
    cfg: &AgentConfig,
    task: &dyn Task,
    episodes: &[Episode],
    memories: &[RolloutState],
    rng: &mut ChaCha8Rng,
) -> Vec<Vec<(AnswerScore, Response)>> {
    let agent = answerer.generator(tokenizer, cfg);
    let probes: Vec<Vec<Probe>> = episodes.iter().map(|e| task.probes(e)).collect();
    let mut items = Vec::new();
    for (e, (episode, state)) in episodes.iter().zip(memories).enumerate() {
        let memory = state.snapshots.last().expect("a rollout has a snapshot");
        items.extend(probes[e].iter().map(|probe| ProbeItem {
            memory,
            episode,
            probe,
        }));
    }
    let (answered, _) = ask_probes_for_responses(&agent, task, &items, rng);
    let mut answered = answered.into_iter();
    probes
        .iter()
        .map(|p| answered.by_ref().take(p.len()).collect())
        .collect()
}

/// Asks every probe of every episode of its final memory and scores the responses with the
/// task.
pub fn score_memories<B: Backend>(
    answerer: Answerer<'_, B>,
    tokenizer: &Tokenizer,
    cfg: &AgentConfig,
    task: &dyn Task,
    episodes: &[Episode],
    memories: &[RolloutState],
    rng: &mut ChaCha8Rng,
) -> Scores {
    score_memories_judged(answerer, None, tokenizer, cfg, task, episodes, memories, rng)
}

/// [`score_memories`], with the judge labelling every response that the task has a reference
/// answer for. A probe whose response did not parse is judged on its raw text.
#[allow(clippy::too_many_arguments)]
pub fn score_memories_judged<B: Backend>(
    answerer: Answerer<'_, B>,
    judge: Option<&Judge>,
    tokenizer: &Tokenizer,
    cfg: &AgentConfig,
    task: &dyn Task,
    episodes: &[Episode],
    memories: &[RolloutState],
    rng: &mut ChaCha8Rng,
) -> Scores {
    let per_episode = probe_responses(answerer, tokenizer, cfg, task, episodes, memories, rng);
    let mut scores = Scores {
        per_episode: vec![(0, 0.0); episodes.len()],
        ..Scores::default()
    };
    let (mut to_judge, mut categories) = (Vec::new(), Vec::new());
    for (e, (episode, answered)) in episodes.iter().zip(per_episode).enumerate() {
        for (probe, (score, response)) in task.probes(episode).iter().zip(answered) {
            scores.board.add_score(probe.category, score);
            let slot = &mut scores.per_episode[e];
            slot.0 += 1;
            slot.1 += score.f1;
            if judge.is_none() {
                continue;
            }
            if let Some(gold) = task.reference(episode, probe) {
                let generated = match &response {
                    Response::Unparsed(raw) => raw.clone(),
                    other => other.answer_text().to_string(),
                };
                to_judge.push(JudgeItem {
                    question: probe.query.clone(),
                    gold,
                    generated,
                });
                categories.push(probe.category);
            }
        }
    }
    if let Some(judge) = judge {
        let _span = tracing::info_span!("judge", answers = to_judge.len()).entered();
        for (category, label) in categories.into_iter().zip(judge.judge(&to_judge)) {
            scores.judge.add(category, label);
        }
    }
    scores
}

/// Evaluates one memory source end to end.
pub fn evaluate<B: Backend>(
    source: &MemorySource<'_, B>,
    answerer: Answerer<'_, B>,
    tokenizer: &Tokenizer,
    cfg: &AgentConfig,
    task: &dyn Task,
    episodes: &[Episode],
    rng: &mut ChaCha8Rng,
) -> Scores {
    evaluate_judged(source, answerer, None, tokenizer, cfg, task, episodes, rng)
}

/// [`evaluate`], with J from the judge when there is one.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_judged<B: Backend>(
    source: &MemorySource<'_, B>,
    answerer: Answerer<'_, B>,
    judge: Option<&Judge>,
    tokenizer: &Tokenizer,
    cfg: &AgentConfig,
    task: &dyn Task,
    episodes: &[Episode],
    rng: &mut ChaCha8Rng,
) -> Scores {
    let _span = tracing::info_span!("evaluate", episodes = episodes.len()).entered();
    let memories = final_memories(source, episodes, tokenizer, cfg, rng);
    score_memories_judged(answerer, judge, tokenizer, cfg, task, episodes, &memories, rng)
}

/// The difference in mean F1 between two systems scored on the same episodes, paired by
/// episode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairedDifference {
    /// `F1(a) - F1(b)` over all questions: the difference of the two rows of the table.
    pub mean: f64,
    /// Its standard error with the episodes as the unit (a memory's failure costs several of
    /// its conversation's questions at once, so questions are not independent samples).
    pub std_error: f64,
    /// Episodes on which `a` scored higher, lower, and the same.
    pub better: usize,
    /// See `better`.
    pub worse: usize,
    /// See `better`.
    pub level: usize,
}

/// `a - b`, paired by episode, weighted by each episode's questions; `None` when the two were
/// not scored on the same episodes or have no question.
pub fn paired_difference(a: &Scores, b: &Scores) -> Option<PairedDifference> {
    if a.per_episode.len() != b.per_episode.len()
        || a.per_episode.iter().zip(&b.per_episode).any(|(x, y)| x.0 != y.0)
    {
        return None;
    }
    let total: usize = a.per_episode.iter().map(|e| e.0).sum();
    if total == 0 {
        return None;
    }
    let n = total as f64;
    // Per episode: its questions n_c and its summed difference; the mean is sum(d_c) / N and
    // its cluster-robust variance C/(C-1) * sum((d_c - n_c * mean)^2) / N^2.
    let diffs: Vec<(f64, f64)> = a
        .per_episode
        .iter()
        .zip(&b.per_episode)
        .filter(|(x, _)| x.0 > 0)
        .map(|(x, y)| (x.0 as f64, x.1 - y.1))
        .collect();
    let mean = diffs.iter().map(|d| d.1).sum::<f64>() / n;
    let clusters = diffs.len() as f64;
    let std_error = if clusters > 1.0 {
        let ss: f64 = diffs.iter().map(|(nc, d)| (d - nc * mean).powi(2)).sum();
        (clusters / (clusters - 1.0) * ss).sqrt() / n
    } else {
        0.0
    };
    let tolerance = 1e-9;
    Some(PairedDifference {
        mean,
        std_error,
        better: diffs.iter().filter(|d| d.1 > tolerance).count(),
        worse: diffs.iter().filter(|d| d.1 < -tolerance).count(),
        level: diffs.iter().filter(|d| d.1.abs() <= tolerance).count(),
    })
}

/// The name of the evaluation's upper-bound row, which [`differences_table`] leaves out.
pub const ORACLE_ROW: &str = "oracle memory";

/// A Markdown table of paired differences in F1 between the rows of an evaluation (each later
/// row minus each earlier one, all but the oracle's upper bound), with standard errors over
/// the test conversations: whether the table's ordering is more than the choice of test
/// conversations.
pub fn differences_table(rows: &[(String, Scores)]) -> String {
    let kept: Vec<&(String, Scores)> = rows.iter().filter(|(name, _)| name != ORACLE_ROW).collect();
    let mut out = String::from(
        "| comparison | F1 difference | standard error | conversations better / worse / level |\n|---|---:|---:|---|\n",
    );
    for (j, (later, b)) in kept.iter().enumerate() {
        for (earlier, a) in &kept[..j] {
            if let Some(d) = paired_difference(b, a) {
                let _ = writeln!(
                    out,
                    "| {later} - {earlier} | {:+.1} | {:.1} | {} / {} / {} |",
                    100.0 * d.mean,
                    100.0 * d.std_error,
                    d.better,
                    d.worse,
                    d.level
                );
            }
        }
    }
    out
}

/// A row of the evaluation that could not be computed, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unavailable {
    /// The system's name (e.g. [`ORACLE_ROW`]).
    pub system: String,
    /// Why it is missing.
    pub reason: String,
}

/// An evaluation: the scored rows, and the rows the environment could not offer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Each system's scores, in table order.
    pub rows: Vec<(String, Scores)>,
    /// Systems left out, with the reason, shown as such in the table.
    pub unavailable: Vec<Unavailable>,
}

impl Evaluation {
    /// The evaluation's Markdown: [`report_table`] with a line per unavailable row, then
    /// [`differences_table`].
    pub fn tables(&self) -> String {
        tables(&self.rows, &self.unavailable)
    }
}

/// The evaluation's Markdown: [`report_table`], then [`differences_table`].
pub fn report_tables(rows: &[(String, Scores)]) -> String {
    tables(rows, &[])
}

fn tables(rows: &[(String, Scores)], unavailable: &[Unavailable]) -> String {
    let mut table = report_table(rows);
    for missing in unavailable {
        let _ = writeln!(table, "| {} | unavailable: {} |", missing.system, missing.reason);
    }
    let judge = judge_table(rows);
    let judge = if judge.is_empty() {
        String::new()
    } else {
        format!("\nLLM judge (J, percent labelled CORRECT) per category:\n\n{judge}")
    };
    format!(
        "{table}{judge}\nDifferences paired by test conversation:\n\n{}",
        differences_table(rows)
    )
}

/// J per category, a row per judged system; empty when no row was judged.
pub fn judge_table(rows: &[(String, Scores)]) -> String {
    let judged: Vec<&(String, Scores)> = rows.iter().filter(|(_, s)| !s.judge.is_empty()).collect();
    if judged.is_empty() {
        return String::new();
    }
    let categories: Vec<Category> = Category::ALL
        .iter()
        .copied()
        .filter(|c| judged.iter().any(|(_, s)| s.judge.per_category.contains_key(c)))
        .collect();
    let mut out = String::from("| system | J |");
    for c in &categories {
        let n = judged
            .iter()
            .find_map(|(_, s)| s.judge.per_category.get(c))
            .map_or(0, |j| j.judged + j.unlabelled);
        let _ = write!(out, " {} J (n={n}) |", c.name());
    }
    out.push_str(" unlabelled |\n|---|---:|");
    out.push_str(&"---:|".repeat(categories.len() + 1));
    out.push('\n');
    for (name, scores) in judged {
        let _ = write!(out, "| {name} | {:.1} |", 100.0 * scores.judge.overall().j());
        for c in &categories {
            match scores.judge.per_category.get(c) {
                Some(j) => {
                    let _ = write!(out, " {:.1} |", 100.0 * j.j());
                }
                None => out.push_str(" - |"),
            }
        }
        let _ = writeln!(out, " {} |", scores.judge.overall().unlabelled);
    }
    out
}

/// A Markdown table: one row per system, F1 / EM / BLEU-1 overall and F1 per category, with
/// the number of questions behind each column. A category a row has no question in shows
/// "-"; counts that differ between rows (never, for rows scored on the same episodes) are
/// written in the cells instead of the header.
pub fn report_table(rows: &[(String, Scores)]) -> String {
    let count = |scores: &Scores, c: Category| {
        scores
            .board
            .categories()
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, s)| s.count)
            .filter(|&n| n > 0)
    };
    let categories: Vec<Category> = Category::ALL
        .iter()
        .copied()
        .filter(|&c| rows.iter().any(|(_, s)| count(s, c).is_some()))
        .collect();
    // The one count of a column, when every row that has the category agrees on it.
    let shared = |c: Category| {
        let mut counts = rows.iter().filter_map(|(_, s)| count(s, c));
        let first = counts.next()?;
        counts.all(|n| n == first).then_some(first)
    };
    let overall = {
        let mut counts = rows.iter().map(|(_, s)| s.board.overall().count);
        let first = counts.next();
        first.filter(|&f| counts.all(|n| n == f))
    };
    let n = |count: Option<usize>| count.map(|k| format!(" (n={k})")).unwrap_or_default();
    let judged = rows.iter().any(|(_, s)| !s.judge.is_empty());
    let mut out = String::new();
    let _ = write!(out, "| system | F1{} | EM | BLEU-1 |", n(overall));
    if judged {
        out.push_str(" J |");
    }
    for &c in &categories {
        let _ = write!(out, " {} F1{} |", c.name(), n(shared(c)));
    }
    let _ = write!(out, " questions |\n|---|---:|---:|---:|");
    if judged {
        out.push_str("---:|");
    }
    for _ in &categories {
        out.push_str("---:|");
    }
    out.push_str("---:|\n");
    for (name, scores) in rows {
        let board = &scores.board;
        let all = board.overall();
        let _ = write!(
            out,
            "| {name} | {:.1} | {:.1} | {:.1} |",
            100.0 * all.f1,
            100.0 * all.em,
            100.0 * all.bleu1
        );
        if judged {
            match scores.judge.is_empty() {
                true => out.push_str(" - |"),
                false => {
                    let _ = write!(out, " {:.1} |", 100.0 * scores.judge.overall().j());
                }
            }
        }
        let per = board.categories();
        for &c in &categories {
            match per.iter().find(|(k, s)| *k == c && s.count > 0) {
                Some((_, s)) if shared(c).is_some() => {
                    let _ = write!(out, " {:.1} |", 100.0 * s.f1);
                }
                Some((_, s)) => {
                    let _ = write!(out, " {:.1} (n={}) |", 100.0 * s.f1, s.count);
                }
                None => out.push_str(" - |"),
            }
        }
        let _ = writeln!(out, " {} |", all.count);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use memr2_sim::AnswerScore;
    use proptest::prelude::*;

    /// Scores whose episode `e` has `f1s[e]` as its questions' F1 values.
    fn scores(f1s: &[Vec<f64>]) -> Scores {
        let mut out = Scores::default();
        for values in f1s {
            for &f1 in values {
                let score = AnswerScore {
                    f1,
                    em: f1,
                    bleu1: f1,
                };
                out.board.add_score(Category::SingleHop, score);
            }
            out.per_episode.push((values.len(), values.iter().sum()));
        }
        out
    }

    #[test]
    fn a_constant_gap_has_no_spread() {
        let a = scores(&[vec![1.0, 0.5], vec![0.5, 0.5], vec![1.0, 1.0]]);
        let b = scores(&[vec![0.5, 0.5], vec![0.5, 0.0], vec![1.0, 0.5]]);
        let d = paired_difference(&a, &b).unwrap();
        assert!((d.mean - 0.25).abs() < 1e-12, "{d:?}");
        assert!(d.std_error < 1e-12, "{d:?}");
        assert_eq!((d.better, d.worse, d.level), (3, 0, 0));
    }

    #[test]
    fn other_episodes_cannot_be_paired() {
        let a = scores(&[vec![1.0], vec![0.0]]);
        assert_eq!(paired_difference(&a, &scores(&[vec![1.0]])), None);
        assert_eq!(paired_difference(&a, &scores(&[vec![1.0], vec![0.0, 1.0]])), None);
        assert_eq!(paired_difference(&scores(&[vec![]]), &scores(&[vec![]])), None);
    }

    #[test]
    fn an_unavailable_row_says_so_and_has_no_scores() {
        let evaluation = Evaluation {
            rows: vec![("no memory".to_string(), scores(&[vec![0.5]]))],
            unavailable: vec![Unavailable {
                system: ORACLE_ROW.to_string(),
                reason: "environment x has no gold facts".into(),
            }],
        };
        let tables = evaluation.tables();
        assert!(
            tables.contains("| oracle memory | unavailable: environment x has no gold facts |"),
            "{tables}"
        );
        assert!(!tables.contains("| oracle memory | 0.0"), "{tables}");
    }

    #[test]
    fn the_table_says_how_many_questions_stand_behind_each_column() {
        let mut a = scores(&[vec![1.0, 0.5], vec![0.0]]);
        a.board.add_score(
            Category::Temporal,
            AnswerScore {
                f1: 1.0,
                em: 1.0,
                bleu1: 1.0,
            },
        );
        let b = scores(&[vec![0.0, 0.0], vec![0.0]]);
        let table = report_table(&[("a".into(), a), ("b".into(), b)]);
        let lines: Vec<&str> = table.lines().collect();
        // Overall counts differ (4 and 3), so the header has none; single-hop has 3 in both.
        assert_eq!(
            lines[0], "| system | F1 | EM | BLEU-1 | single_hop F1 (n=3) | temporal F1 (n=1) | questions |",
            "{table}"
        );
        assert_eq!(
            lines[2], "| a | 62.5 | 62.5 | 62.5 | 50.0 | 100.0 | 4 |",
            "{table}"
        );
        // b has no temporal question: "-", not 0.0.
        assert_eq!(lines[3], "| b | 0.0 | 0.0 | 0.0 | 0.0 | - | 3 |", "{table}");
    }

    #[test]
    fn the_table_lists_each_later_row_against_each_earlier_one() {
        let rows = vec![
            ("no memory".to_string(), scores(&[vec![0.0], vec![1.0]])),
            (ORACLE_ROW.to_string(), scores(&[vec![1.0], vec![1.0]])),
            ("SFT only".to_string(), scores(&[vec![1.0], vec![1.0]])),
            ("LoGo-GRPO".to_string(), scores(&[vec![1.0], vec![0.0]])),
        ];
        let table = differences_table(&rows);
        assert!(
            table.contains("| SFT only - no memory | +50.0 | 50.0 | 1 / 0 / 1 |"),
            "{table}"
        );
        assert!(
            table.contains("| LoGo-GRPO - SFT only | -50.0 | 50.0 | 0 / 1 / 1 |"),
            "{table}"
        );
        assert!(
            table.contains("| LoGo-GRPO - no memory | +0.0 | 100.0 | 1 / 1 / 0 |"),
            "{table}"
        );
        assert!(!table.contains(ORACLE_ROW), "{table}");
    }

    fn episodes() -> impl Strategy<Value = Vec<Vec<f64>>> {
        prop::collection::vec(prop::collection::vec(0.0..=1.0f64, 0..6), 1..12)
    }

    proptest! {
        #[test]
        fn the_mean_is_the_gap_between_the_rows_and_swapping_negates_it(
            a in episodes(),
            shift in prop::collection::vec(-1.0..=1.0f64, 12),
        ) {
            // b: the same episodes and question counts, other F1 values.
            let b: Vec<Vec<f64>> = a
                .iter()
                .zip(&shift)
                .map(|(v, s)| v.iter().map(|x| (x + s).clamp(0.0, 1.0)).collect())
                .collect();
            let (sa, sb) = (scores(&a), scores(&b));
            match paired_difference(&sa, &sb) {
                None => prop_assert!(a.iter().all(Vec::is_empty)),
                Some(d) => {
                    prop_assert!((d.mean - (sa.f1() - sb.f1())).abs() < 1e-9);
                    let r = paired_difference(&sb, &sa).unwrap();
                    prop_assert!((r.mean + d.mean).abs() < 1e-12);
                    prop_assert!((r.std_error - d.std_error).abs() < 1e-12);
                    prop_assert_eq!((r.better, r.worse, r.level), (d.worse, d.better, d.level));
                    let answered = a.iter().filter(|v| !v.is_empty()).count();
                    prop_assert_eq!(d.better + d.worse + d.level, answered);
                    prop_assert!(d.std_error >= 0.0 && d.std_error.is_finite());
                }
            }
        }
    }
}
