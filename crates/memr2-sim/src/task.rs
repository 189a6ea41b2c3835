//! Tasks: what an environment does with a memory after a session, and how it is scored.
//!
//! A [`Task`] turns an episode into [`Probe`]s (a question to answer, a tool call to make,
//! anything a frozen actor can do with retrieved memories), says what the actor is asked for
//! each probe ([`Request`]), and scores the actor's [`Response`] into an [`AnswerScore`] whose
//! `f1` is the reward's task term, in `[0, 1]`. The trainer does the rest, the same way for
//! every task:
//!
//! - **global groups**: every probe of an episode is asked of each rollout's *final* memory;
//!   in `persession` mode session `s` is rewarded with the mean value of the probes whose
//!   [`Probe::session`] is `s` (a probe without one belongs to the last session);
//! - **local rerollouts**: after rerunning session `s`, up to `local_questions` probes with
//!   [`Probe::session`] at most `s` (or none) are asked of the rerolled memory at once;
//! - **evaluation**: every probe of every test episode, tabled per [`Probe::category`].
//!
//! Memories are retrieved by the trainer (top `answer_top_k` for [`Probe::query`]) and handed
//! to [`Task::request`] as plain texts, best first. [`QuestionAnswering`], the task of the
//! synthetic world, LoCoMo and LongMemEval, answers the episode's questions and scores token
//! F1 against the gold answer.

use crate::episode::{Category, Episode};
use crate::scoring::{AnswerScore, score_answer};

/// One thing a task asks of a memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Index among the episode's probes, as [`Task::probes`] returned them.
    pub index: usize,
    /// The last session whose content the probe depends on; `None` when it depends on none
    /// (it is then rewarded with the last session and may be asked after any session).
    pub session: Option<u32>,
    /// Row of the evaluation's per-category table.
    pub category: Category,
    /// The text memories are retrieved for.
    pub query: String,
}

/// What the frozen actor is asked for one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The answerer role: a question answered in a few words from the memories (the prompt
    /// and the output format are the answerer's, `{"answer": "..."}`).
    Answer {
        /// The question.
        question: String,
    },
    /// The tool-calling role: one JSON tool call for a work task, with the tools' schemas and
    /// the memories the task chose to show (`{"name": ..., "arguments": {...}}`, checked
    /// against the schemas).
    ToolCall {
        /// The work task, in words.
        task: String,
        /// The tools offered, each `{"name", "description", "parameters"}` with `parameters`
        /// a JSON Schema object.
        tools: Vec<serde_json::Value>,
        /// The memories shown, best first (the task may filter what retrieval returned).
        memories: Vec<String>,
        /// An extra instruction for the prompt (for instance to ignore irrelevant memories).
        instruction: Option<String>,
    },
    /// A prompt of the task's own; the output is handed back as raw text.
    Chat {
        /// System message.
        system: String,
        /// User message, with whatever of the memories the task chose to show.
        user: String,
        /// Most tokens the actor may write.
        max_tokens: usize,
    },
}

/// What the frozen actor gave back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The answer of an [`Request::Answer`].
    Answer(String),
    /// The raw output of a [`Request::Chat`].
    Text(String),
    /// The call of a [`Request::ToolCall`], valid against the tool's schema.
    ToolCall {
        /// The tool called.
        name: String,
        /// Its arguments.
        arguments: serde_json::Map<String, serde_json::Value>,
    },
    /// Output that did not parse as the role's format (counted as a format error).
    Unparsed(String),
}

impl Response {
    /// The answer of an answer or the text of a chat; `""` for anything else (output that
    /// did not parse, a tool call), which scores as an empty answer.
    pub fn answer_text(&self) -> &str {
        match self {
            Response::Answer(a) | Response::Text(a) => a,
            Response::Unparsed(_) | Response::ToolCall { .. } => "",
        }
    }
}

/// What an environment does with a memory after a session, and how it is scored.
pub trait Task: Send + Sync {
    /// A short name for logs and reports.
    fn name(&self) -> &str;
    /// The probes of an episode (already cut to its horizon), in a stable order.
    fn probes(&self, episode: &Episode) -> Vec<Probe>;
    /// What the actor is asked for `probe`, given the texts of the memories retrieved for its
    /// query (best first).
    fn request(&self, episode: &Episode, probe: &Probe, memories: &[&str]) -> Request;
    /// Scores the actor's response; `f1` is the reward's task term, in `[0, 1]`.
    fn score(&self, episode: &Episode, probe: &Probe, response: &Response) -> AnswerScore;
    /// [`Task::score`] with the whole memory the probe was asked of in view (the texts of all
    /// its entries, not only those retrieved): what rollouts, validation and evaluation call.
    /// The default ignores the memory. A task whose reward also values what the memory holds
    /// overrides it (MEMDRIFT can reward keeping the user's other facts while the bias goes),
    /// and should keep the scores that describe the response alone unchanged.
    fn score_with_memory(
        &self,
        episode: &Episode,
        probe: &Probe,
        response: &Response,
        _memory: &[&str],
    ) -> AnswerScore {
        self.score(episode, probe, response)
    }
    /// What a teacher answers for `probe` over `memories` (what [`Task::request`] was given),
    /// for the supervised warm start of the actor's role; `None` (the default) when the task
    /// has no teacher. Question answering has none here: the trainer writes its answerer
    /// examples from the gold answers itself.
    fn demonstration(
        &self,
        _episode: &Episode,
        _probe: &Probe,
        _memories: &[&str],
        _rng: &mut dyn rand::RngCore,
    ) -> Option<Response> {
        None
    }
    /// Matched controls of a training episode that the teacher also demonstrates on: the same
    /// probes over another conversation (the default: none). An environment with controls
    /// (MEMDRIFT's neutral conversation beside the biased one) gives them so that the warm
    /// start's examples differ only in what the memory holds, and the actor learns what in
    /// the memory its response depends on rather than the response's overall rate.
    fn contrasts(&self, _episode: &Episode) -> Vec<Episode> {
        Vec::new()
    }
    /// The reference answer an LLM judge compares a response with (the gold answer, for
    /// question answering); `None` (the default) when the task has none, and its responses
    /// are not judged.
    fn reference(&self, _episode: &Episode, _probe: &Probe) -> Option<String> {
        None
    }
}

/// Answer the episode's questions; score token F1 (with exact match and BLEU-1) against the
/// gold answer. An answer that did not parse scores as an empty answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuestionAnswering;

impl Task for QuestionAnswering {
    fn name(&self) -> &str {
        "question answering"
    }

    fn probes(&self, episode: &Episode) -> Vec<Probe> {
        episode
            .questions
            .iter()
            .enumerate()
            .map(|(index, q)| Probe {
                index,
                session: q.last_session(),
                category: q.category,
                query: q.question.clone(),
            })
            .collect()
    }

    fn request(&self, _episode: &Episode, probe: &Probe, _memories: &[&str]) -> Request {
        Request::Answer {
            question: probe.query.clone(),
        }
    }

    fn score(&self, episode: &Episode, probe: &Probe, response: &Response) -> AnswerScore {
        let answer = response.answer_text();
        let gold = episode
            .questions
            .get(probe.index)
            .map_or("", |q| q.answer.as_str());
        score_answer(answer, gold)
    }

    fn reference(&self, episode: &Episode, probe: &Probe) -> Option<String> {
        episode.questions.get(probe.index).map(|q| q.answer.clone())
    }
}

/// The probes of `episode` that may be asked once session `s` is in memory: those depending
/// on sessions `1..=s` only, or on none.
pub fn probes_up_to(probes: &[Probe], s: u32) -> Vec<&Probe> {
    probes
        .iter()
        .filter(|p| p.session.is_none_or(|l| l <= s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::episode::{DiaId, Question, Session, Turn};

    fn episode() -> Episode {
        let session = |index: u32| Session {
            index,
            date: "1 May 2023".into(),
            turns: vec![Turn {
                dia_id: DiaId::new(index, 1),
                speaker: "A".into(),
                text: "I live in Lyon".into(),
            }],
        };
        let q = |evidence: Vec<DiaId>, answer: &str| Question {
            question: "Where does A live?".into(),
            answer: answer.into(),
            evidence,
            category: Category::SingleHop,
        };
        Episode {
            id: "e".into(),
            speakers: vec!["A".into()],
            sessions: vec![session(1), session(2)],
            questions: vec![
                q(vec![DiaId::new(2, 1)], "Lyon"),
                q(vec![], "unknown"),
                q(vec![DiaId::new(1, 1)], "Paris"),
            ],
            facts: Vec::new(),
        }
    }

    #[test]
    fn question_answering_probes_follow_the_questions() {
        let e = episode();
        let probes = QuestionAnswering.probes(&e);
        let sessions: Vec<Option<u32>> = probes.iter().map(|p| p.session).collect();
        assert_eq!(sessions, vec![Some(2), None, Some(1)]);
        assert_eq!(probes_up_to(&probes, 1).len(), 2);
        assert_eq!(probes_up_to(&probes, 2).len(), 3);
        assert_eq!(
            QuestionAnswering.request(&e, &probes[0], &["A lives in Lyon"]),
            Request::Answer {
                question: "Where does A live?".into()
            }
        );
    }

    #[test]
    fn question_answering_scores_token_f1_and_unparsed_as_empty() {
        let e = episode();
        let probes = QuestionAnswering.probes(&e);
        let right = QuestionAnswering.score(&e, &probes[0], &Response::Answer("Lyon".into()));
        assert_eq!(right.f1, 1.0);
        let wrong = QuestionAnswering.score(&e, &probes[2], &Response::Answer("Lyon".into()));
        assert_eq!(wrong.f1, 0.0);
        let unparsed = QuestionAnswering.score(&e, &probes[0], &Response::Unparsed("{".into()));
        assert_eq!(unparsed, score_answer("", "Lyon"));
    }
}
