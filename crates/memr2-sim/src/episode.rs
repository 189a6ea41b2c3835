//! Episodes: speakers, dated sessions of turns, questions, horizons and environments.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::SimError;
use crate::fact::Fact;

/// The id of one dialogue turn, written `D{session}:{turn}` (both 1-based).
///
/// Orders by session, then turn. Serialized as its string form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiaId {
    /// 1-based session index.
    pub session: u32,
    /// 1-based turn index inside the session.
    pub turn: u32,
}

impl DiaId {
    /// A dialogue id from its session and turn.
    pub fn new(session: u32, turn: u32) -> Self {
        Self { session, turn }
    }
}

impl fmt::Display for DiaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "D{}:{}", self.session, self.turn)
    }
}

impl FromStr for DiaId {
    type Err = SimError;

    /// Parses exactly `D{session}:{turn}`; see the LoCoMo loader for the lenient form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SimError::DiaId(s.to_string());
        let rest = s.trim().strip_prefix('D').ok_or_else(bad)?;
        let (session, turn) = rest.split_once(':').ok_or_else(bad)?;
        let session = session.parse().map_err(|_| bad())?;
        let turn = turn.parse().map_err(|_| bad())?;
        Ok(Self { session, turn })
    }
}

impl Serialize for DiaId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DiaId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One utterance of the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    /// Where the turn sits in the conversation.
    pub dia_id: DiaId,
    /// Who says it.
    pub speaker: String,
    /// What is said.
    pub text: String,
}

impl Turn {
    /// The turn as one line of a transcript: `[D3:7] Alice: text`.
    pub fn line(&self) -> String {
        format!("[{}] {}: {}", self.dia_id, self.speaker, self.text)
    }
}

/// Turns as a transcript, one [`Turn::line`] per line.
pub fn transcript(turns: &[Turn]) -> String {
    turns.iter().map(Turn::line).collect::<Vec<_>>().join("\n")
}

/// One dated session of the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// 1-based session index (the `session` of its turns' [`DiaId`]s).
    pub index: u32,
    /// When the session took place, as written in the data (e.g. "8 May 2023").
    pub date: String,
    /// The turns in order.
    pub turns: Vec<Turn>,
}

impl Session {
    /// Splits the turns into `n` contiguous chunks of near-equal size (the first ones one turn
    /// longer when the count does not divide). `n` is clamped to `1..=turns.len()`; a session
    /// without turns has no chunks.
    pub fn chunks(&self, n: usize) -> Vec<&[Turn]> {
        let len = self.turns.len();
        if len == 0 {
            return Vec::new();
        }
        let n = n.clamp(1, len);
        let (base, extra) = (len / n, len % n);
        let mut out = Vec::with_capacity(n);
        let mut start = 0;
        for i in 0..n {
            let size = base + usize::from(i < extra);
            out.push(&self.turns[start..start + size]);
            start += size;
        }
        out
    }

    /// The session's turns as a transcript, one `[D3:7] Alice: text` line per turn.
    pub fn text(&self) -> String {
        transcript(&self.turns)
    }
}

/// The kind of reasoning a question asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// One fact answers it.
    SingleHop,
    /// Two or more facts must be combined.
    MultiHop,
    /// Needs the order of events (e.g. a value before a change).
    Temporal,
    /// Needs world knowledge on top of the conversation.
    OpenDomain,
    /// Needs the latest value of something that changed.
    KnowledgeUpdate,
    /// Built to mislead (LoCoMo category 5); excluded from default training and evaluation.
    Adversarial,
    /// The conversation does not hold the answer; the gold answer is fixed.
    Unanswerable,
}

impl Category {
    /// Every category, in declaration order.
    pub const ALL: [Category; 7] = [
        Category::SingleHop,
        Category::MultiHop,
        Category::Temporal,
        Category::OpenDomain,
        Category::KnowledgeUpdate,
        Category::Adversarial,
        Category::Unanswerable,
    ];

    /// Snake-case name, as serialized.
    pub fn name(self) -> &'static str {
        match self {
            Category::SingleHop => "single_hop",
            Category::MultiHop => "multi_hop",
            Category::Temporal => "temporal",
            Category::OpenDomain => "open_domain",
            Category::KnowledgeUpdate => "knowledge_update",
            Category::Adversarial => "adversarial",
            Category::Unanswerable => "unanswerable",
        }
    }

    /// The category of a LoCoMo category number (official code: 1 multi-hop, 2 temporal,
    /// 3 open-domain, 4 single-hop, 5 adversarial).
    pub fn from_locomo(n: i64) -> Option<Category> {
        match n {
            1 => Some(Category::MultiHop),
            2 => Some(Category::Temporal),
            3 => Some(Category::OpenDomain),
            4 => Some(Category::SingleHop),
            5 => Some(Category::Adversarial),
            _ => None,
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A question about the conversation with its gold answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    /// The question text.
    pub question: String,
    /// The gold answer.
    pub answer: String,
    /// The turns that hold the answer; empty when nothing in the conversation does.
    pub evidence: Vec<DiaId>,
    /// What kind of question it is.
    pub category: Category,
}

impl Question {
    /// The last session the evidence lies in; `None` without evidence.
    pub fn last_session(&self) -> Option<u32> {
        self.evidence.iter().map(|d| d.session).max()
    }
}

/// One conversation with its questions (and, for the synthetic world, its gold facts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Episode {
    /// A stable id (e.g. "conv-26" or "synthetic-train-3").
    pub id: String,
    /// The people who talk, in order of appearance.
    pub speakers: Vec<String>,
    /// The sessions in order.
    pub sessions: Vec<Session>,
    /// The questions about the conversation.
    pub questions: Vec<Question>,
    /// Gold facts, in dialogue order; empty where the data has none (LoCoMo).
    pub facts: Vec<Fact>,
}

impl Episode {
    /// The episode cut to its first `n` sessions, with only the questions whose evidence lies
    /// inside them (questions without evidence are kept) and only the facts inside them.
    pub fn with_horizon(&self, n: usize) -> Episode {
        let sessions: Vec<Session> = self.sessions.iter().take(n).cloned().collect();
        let last = sessions.last().map_or(0, |s| s.index);
        let inside = |d: &DiaId| sessions.iter().any(|s| s.index == d.session);
        Episode {
            id: self.id.clone(),
            speakers: self.speakers.clone(),
            questions: self
                .questions
                .iter()
                .filter(|q| q.evidence.iter().all(|d| d.session <= last && inside(d)))
                .cloned()
                .collect(),
            facts: self
                .facts
                .iter()
                .filter(|f| f.dia_id.session <= last)
                .cloned()
                .collect(),
            sessions,
        }
    }

    /// The questions whose evidence ends in session `s` (the session whose memory writes they
    /// reward). Questions without evidence are attributed to the episode's last session.
    pub fn questions_for_session(&self, s: u32) -> Vec<&Question> {
        let last = self.sessions.last().map(|x| x.index);
        self.questions
            .iter()
            .filter(|q| match q.last_session() {
                Some(l) => l == s,
                None => last == Some(s),
            })
            .collect()
    }

    /// The questions whose evidence lies entirely in sessions `1..=s` (questions without
    /// evidence included).
    pub fn questions_up_to(&self, s: u32) -> Vec<&Question> {
        self.questions
            .iter()
            .filter(|q| q.last_session().is_none_or(|l| l <= s))
            .collect()
    }

    /// The session with the given 1-based index.
    pub fn session(&self, index: u32) -> Option<&Session> {
        self.sessions.iter().find(|s| s.index == index)
    }

    /// The turn with the given id.
    pub fn turn(&self, dia_id: DiaId) -> Option<&Turn> {
        self.session(dia_id.session)?
            .turns
            .iter()
            .find(|t| t.dia_id == dia_id)
    }
}

/// Checks that an episode is well formed: session `i` (1-based position) has index `i`; turn
/// `k` of session `i` has the dialogue id `D{i}:{k}`; every question's evidence and every fact
/// names a turn of the episode. The loaders check every episode they return, so code that reads
/// episodes may index turns by their ids.
pub fn validate_episode(episode: &Episode) -> Result<(), SimError> {
    let invalid = |question: Option<usize>, what: String| SimError::InvalidEpisode {
        episode: episode.id.clone(),
        question,
        what,
    };
    for (position, session) in (1u32..).zip(&episode.sessions) {
        if session.index != position {
            return Err(invalid(
                None,
                format!("session {position} has index {}", session.index),
            ));
        }
        for (k, turn) in (1u32..).zip(&session.turns) {
            let expected = DiaId::new(position, k);
            if turn.dia_id != expected {
                return Err(invalid(
                    None,
                    format!(
                        "turn {k} of session {position} has id {}, expected {expected}",
                        turn.dia_id
                    ),
                ));
            }
        }
    }
    for (i, q) in episode.questions.iter().enumerate() {
        if let Some(d) = q.evidence.iter().find(|&&d| episode.turn(d).is_none()) {
            return Err(invalid(
                Some(i),
                format!("evidence {d} of {:?} names no turn of the episode", q.question),
            ));
        }
    }
    if let Some(f) = episode.facts.iter().find(|f| episode.turn(f.dia_id).is_none()) {
        return Err(invalid(
            None,
            format!("fact {:?} names {}, no turn of the episode", f.text, f.dia_id),
        ));
    }
    Ok(())
}

/// Which part of an environment's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Training episodes.
    Train,
    /// Episodes for choosing checkpoints.
    Validation,
    /// Held-out episodes for the final report.
    Test,
}

impl Split {
    /// Every split.
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an environment can offer beyond episodes; the trainer checks these before using them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capabilities {
    /// Gold facts per turn and so oracle operations (needed by SFT without a teacher and by the
    /// oracle row).
    pub gold_facts: bool,
    /// Questions carry meaningful categories.
    pub categories: bool,
}

/// A source of episodes by split. Implemented by [`crate::SyntheticWorld`], [`crate::Locomo`],
/// [`crate::LongMemEval`] and [`crate::EpisodeFile`]; users may implement it for their own data.
pub trait Environment: Send + Sync {
    /// A short name for logs and reports.
    fn name(&self) -> &str;
    /// The episodes of a split, in a stable order.
    fn episodes(&self, split: Split) -> Vec<Episode>;
    /// What the environment offers beyond episodes (gold facts, question categories).
    fn capabilities(&self) -> Capabilities;
    /// What is done with a memory after a session and how it is scored (default: answer the
    /// episodes' questions, scored by token F1).
    fn task(&self) -> &dyn crate::task::Task {
        &crate::task::QuestionAnswering
    }
    /// Episodes whose task demonstrations ([`crate::task::Task::demonstration`]) tune the
    /// actor that answers or calls tools, beyond the training split's: more examples for the
    /// frozen answerer's own tuning without growing the memory's warm start (the default:
    /// none). They belong to no split, so nothing is validated or tested on them. MEMDRIFT
    /// gives more scenarios of its training cells, so that each (tool, bias) pair has many
    /// demonstrations.
    fn task_corpus(&self) -> Vec<Episode> {
        Vec::new()
    }
}

/// Size figures of a set of episodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvStats {
    /// Number of episodes.
    pub conversations: usize,
    /// Number of sessions.
    pub sessions: usize,
    /// Number of turns.
    pub turns: usize,
    /// Number of whitespace-separated words over all turns.
    pub words: usize,
    /// Number of questions.
    pub questions: usize,
    /// Number of questions that are not adversarial.
    pub questions_non_adversarial: usize,
    /// Number of gold facts.
    pub facts: usize,
}

/// Counts conversations, sessions, turns, words, questions and facts.
pub fn stats(episodes: &[Episode]) -> EnvStats {
    let mut s = EnvStats {
        conversations: episodes.len(),
        ..EnvStats::default()
    };
    for e in episodes {
        s.sessions += e.sessions.len();
        for session in &e.sessions {
            s.turns += session.turns.len();
            s.words += session
                .turns
                .iter()
                .map(|t| t.text.split_whitespace().count())
                .sum::<usize>();
        }
        s.questions += e.questions.len();
        s.questions_non_adversarial += e
            .questions
            .iter()
            .filter(|q| q.category != Category::Adversarial)
            .count();
        s.facts += e.facts.len();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(index: u32, turns: u32) -> Session {
        Session {
            index,
            date: "1 May 2023".into(),
            turns: (1..=turns)
                .map(|t| Turn {
                    dia_id: DiaId::new(index, t),
                    speaker: "A".into(),
                    text: format!("t{t}"),
                })
                .collect(),
        }
    }

    fn question(evidence: &[(u32, u32)]) -> Question {
        Question {
            question: "q".into(),
            answer: "a".into(),
            evidence: evidence.iter().map(|&(s, t)| DiaId::new(s, t)).collect(),
            category: Category::SingleHop,
        }
    }

    #[test]
    fn dia_id_round_trips() {
        let d: DiaId = "D3:7".parse().unwrap();
        assert_eq!(d, DiaId::new(3, 7));
        assert_eq!(d.to_string(), "D3:7");
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"D3:7\"");
        assert_eq!(
            serde_json::from_str::<DiaId>("\"D12:1\"").unwrap(),
            DiaId::new(12, 1)
        );
        assert!("D3".parse::<DiaId>().is_err());
        assert!("3:7".parse::<DiaId>().is_err());
        assert!(DiaId::new(2, 9) < DiaId::new(3, 1));
        assert!(DiaId::new(3, 2) < DiaId::new(3, 10));
    }

    #[test]
    fn chunks_cover_the_turns_in_order() {
        let s = session(1, 5);
        let chunks = s.chunks(2);
        assert_eq!(chunks.iter().map(|c| c.len()).collect::<Vec<_>>(), vec![3, 2]);
        assert_eq!(s.chunks(9).len(), 5);
        assert_eq!(s.chunks(0).len(), 1);
        assert!(session(1, 0).chunks(3).is_empty());
        assert_eq!(s.text().lines().next().unwrap(), "[D1:1] A: t1");
    }

    #[test]
    fn horizon_keeps_questions_inside() {
        let e = Episode {
            id: "e".into(),
            speakers: vec!["A".into()],
            sessions: (1..=4).map(|i| session(i, 2)).collect(),
            questions: vec![question(&[(1, 1)]), question(&[(1, 1), (3, 2)]), question(&[])],
            facts: Vec::new(),
        };
        let h = e.with_horizon(2);
        assert_eq!(h.sessions.len(), 2);
        assert_eq!(h.questions.len(), 2);
        assert_eq!(e.questions_for_session(3).len(), 1);
        assert_eq!(
            e.questions_for_session(4).len(),
            1,
            "evidence-less question goes to the last session"
        );
        assert_eq!(e.questions_up_to(2).len(), 2);
        assert_eq!(e.questions_up_to(4).len(), 3);
    }

    #[test]
    fn validation_names_the_episode_question_and_rule() {
        let valid = Episode {
            id: "e".into(),
            speakers: vec!["A".into()],
            sessions: (1..=2).map(|i| session(i, 2)).collect(),
            questions: vec![question(&[(1, 1)]), question(&[(2, 2)])],
            facts: Vec::new(),
        };
        validate_episode(&valid).unwrap();
        let message = |e: &Episode| validate_episode(e).unwrap_err().to_string();

        let mut e = valid.clone();
        e.sessions[1].index = 3;
        assert_eq!(message(&e), "episode e: session 2 has index 3");

        let mut e = valid.clone();
        e.sessions[0].turns.remove(0);
        assert_eq!(
            message(&e),
            "episode e: turn 1 of session 1 has id D1:2, expected D1:1"
        );

        let mut e = valid.clone();
        e.questions[1].evidence = vec![DiaId::new(2, 3)];
        let err = validate_episode(&e).unwrap_err();
        assert!(matches!(
            err,
            SimError::InvalidEpisode {
                question: Some(1),
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "episode e, question 1: evidence D2:3 of \"q\" names no turn of the episode"
        );

        let mut e = valid.clone();
        e.questions[0].evidence = vec![DiaId::new(3, 1)];
        assert!(message(&e).contains("evidence D3:1"));

        let mut e = valid;
        e.facts.push(Fact {
            speaker: "A".into(),
            dia_id: DiaId::new(1, 9),
            text: "A likes tea".into(),
            subject: "A".into(),
            attribute: "drink".into(),
            value: "tea".into(),
            change: crate::fact::Change::New,
            previous: None,
        });
        assert_eq!(
            message(&e),
            "episode e: fact \"A likes tea\" names D1:9, no turn of the episode"
        );
    }

    #[test]
    fn category_names() {
        assert_eq!(Category::KnowledgeUpdate.to_string(), "knowledge_update");
        assert_eq!(
            serde_json::to_string(&Category::MultiHop).unwrap(),
            "\"multi_hop\""
        );
        assert_eq!(Category::from_locomo(4), Some(Category::SingleHop));
        assert_eq!(Category::from_locomo(6), None);
    }
}
