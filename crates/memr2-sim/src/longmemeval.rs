//! The LongMemEval loader (`longmemeval_s.json`, `longmemeval_m.json`,
//! `longmemeval_oracle.json`, which share one schema; MIT licence).
//!
//! Each item of the file's top-level array is one question with its own haystack of dated chat
//! sessions, and becomes one [`Episode`] whose id is the item's `question_id`:
//!
//! - **sessions**: the `haystack_sessions` with their `haystack_dates`, in date order (a stable
//!   sort, so `_s` and `_m`, already sorted, keep the file's order; `_oracle`'s unsorted
//!   sessions are put in order). When some date does not start with `YYYY/MM/DD`, the file's
//!   order is kept;
//! - **turns**: `role` `user` / `assistant` become the speakers `User` / `Assistant`, `content`
//!   the text; turn `t` of session `s` is `D{s}:{t}` (both 1-based, after ordering);
//! - **the question** and its gold answer as written (a number answer becomes its decimal
//!   text); `question_date` is not kept, as [`crate::Question`] has no date;
//! - **evidence**: the turns marked `"has_answer": true`; when no turn is marked, every turn of
//!   the sessions that `answer_session_ids` names (ids absent from the haystack are listed by
//!   [`LongMemEval::notes`]);
//! - **category**: `temporal-reasoning` → [`Category::Temporal`], `knowledge-update` →
//!   [`Category::KnowledgeUpdate`], `multi-session` → [`Category::MultiHop`],
//!   `single-session-user` / `-assistant` / `-preference` → [`Category::SingleHop`]; an id ending
//!   in `_abs` (abstention) → [`Category::Unanswerable`], with its gold answer and evidence kept
//!   as the file has them.
//!
//! **Splits**: the file has none; [`crate::dataset::split_by_id`] of the `question_id` decides
//! (about 10% validation, 20% test, 70% train), so a question keeps its split whichever file
//! (`_s`, `_m`, `_oracle`) it is read from.
//!
//! Errors name the file, the record (its index in the array and its `question_id`) and the
//! field.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::dataset::{DataFormat, environment_name, split_by_id};
use crate::episode::{
    Capabilities, Category, DiaId, Environment, Episode, Question, Session, Split, Turn, validate_episode,
};
use crate::error::SimError;
use crate::json_object::{Fields, kind};

/// The LongMemEval questions, one episode each.
#[derive(Debug, Clone)]
pub struct LongMemEval {
    path: PathBuf,
    name: String,
    episodes: Vec<Episode>,
    notes: Vec<String>,
}

impl LongMemEval {
    /// Loads a LongMemEval file. A missing, unreadable, malformed or truncated file is an error
    /// naming the file and what is wrong.
    pub fn load(path: impl AsRef<Path>) -> Result<LongMemEval, SimError> {
        let path = path.as_ref();
        let text = crate::dataset::read_data_file(path)?;
        Self::from_json_str(&text, path)
    }

    /// Parses the file's content; `path` names it in errors.
    pub fn from_json_str(text: &str, path: impl Into<PathBuf>) -> Result<LongMemEval, SimError> {
        let path = path.into();
        let value: Value = serde_json::from_str(text).map_err(|source| SimError::Json {
            path: path.clone(),
            source,
        })?;
        let schema = |what: String| SimError::Schema {
            path: path.clone(),
            what,
        };
        let Value::Array(items) = value else {
            return Err(schema(format!(
                "expected a JSON array of questions at the top level, found {}",
                kind(&value)
            )));
        };
        let mut episodes: Vec<Episode> = Vec::with_capacity(items.len());
        let mut notes = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let id = item
                .get("question_id")
                .and_then(Value::as_str)
                .map(str::to_string);
            let place = match &id {
                Some(id) => format!("record {i} ({id})"),
                None => format!("record {i}"),
            };
            let episode = episode(&item, &mut notes).map_err(|what| schema(format!("{place}: {what}")))?;
            validate_episode(&episode).map_err(|e| schema(format!("{place}: {e}")))?;
            if let Some(j) = episodes.iter().position(|e| e.id == episode.id) {
                return Err(schema(format!(
                    "{place}: question_id {:?} repeats record {j}",
                    episode.id
                )));
            }
            episodes.push(episode);
        }
        Ok(LongMemEval {
            name: environment_name(DataFormat::LongMemEval, &path),
            path,
            episodes,
            notes,
        })
    }

    /// The file the data came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every question's episode, in file order.
    pub fn all_episodes(&self) -> &[Episode] {
        &self.episodes
    }

    /// What was read in a way worth knowing, one line per item.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The split of a question: [`split_by_id`] of its `question_id`.
    pub fn split_of(question_id: &str) -> Split {
        split_by_id(question_id)
    }
}

impl Environment for LongMemEval {
    fn name(&self) -> &str {
        &self.name
    }

    fn episodes(&self, split: Split) -> Vec<Episode> {
        self.episodes
            .iter()
            .filter(|e| Self::split_of(&e.id) == split)
            .cloned()
            .collect()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            gold_facts: false,
            categories: true,
        }
    }
}

/// The category of a `question_type`, or of an abstention question.
fn category(question_id: &str, question_type: &str) -> Option<Category> {
    if question_id.ends_with("_abs") {
        return Some(Category::Unanswerable);
    }
    match question_type {
        "temporal-reasoning" => Some(Category::Temporal),
        "knowledge-update" => Some(Category::KnowledgeUpdate),
        "multi-session" => Some(Category::MultiHop),
        "single-session-user" | "single-session-assistant" | "single-session-preference" => {
            Some(Category::SingleHop)
        }
        _ => None,
    }
}

/// Whether a haystack date starts with `YYYY/MM/DD`, so that dates order as strings.
fn sortable_date(date: &str) -> bool {
    let b = date.as_bytes();
    b.len() >= 10
        && b[..10].iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'/'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// One haystack session as read from the file, before ordering.
struct RawSession {
    id: String,
    date: String,
    turns: Vec<RawTurn>,
}

/// One haystack turn as read from the file.
struct RawTurn {
    speaker: &'static str,
    text: String,
    has_answer: bool,
}

fn episode(item: &Value, notes: &mut Vec<String>) -> Result<Episode, String> {
    let f = Fields::of(item, "")?;
    let id: String = f.get("question_id")?;
    let question_type: String = f.get("question_type")?;
    let category = category(&id, &question_type).ok_or_else(|| {
        format!(
            "field \"question_type\": unknown type {question_type:?}, expected one of \
             single-session-user, single-session-assistant, single-session-preference, \
             multi-session, temporal-reasoning, knowledge-update"
        )
    })?;
    let question: String = f.get("question")?;
    let answer = match f.value("answer")? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => {
            return Err(format!(
                "field \"answer\" must be a string or a number, found {}",
                kind(other)
            ));
        }
    };
    let session_ids: Vec<String> = f.get("haystack_session_ids")?;
    let dates: Vec<String> = f.get("haystack_dates")?;
    let haystack = f.array("haystack_sessions")?;
    let answer_sessions: Vec<String> = f.opt("answer_session_ids")?.unwrap_or_default();
    if session_ids.len() != haystack.len() || dates.len() != haystack.len() {
        return Err(format!(
            "fields \"haystack_session_ids\" ({}), \"haystack_dates\" ({}) and \
             \"haystack_sessions\" ({}) must have the same length",
            session_ids.len(),
            dates.len(),
            haystack.len()
        ));
    }

    let mut raw = Vec::with_capacity(haystack.len());
    for (s, ((session, sid), date)) in haystack.iter().zip(session_ids).zip(dates).enumerate() {
        let at = format!("haystack_sessions[{s}]");
        let Value::Array(turns) = session else {
            return Err(format!(
                "field \"{at}\" must be an array, found {}",
                kind(session)
            ));
        };
        let mut out = Vec::with_capacity(turns.len());
        for (t, turn) in turns.iter().enumerate() {
            let tf = Fields::of(turn, format!("{at}[{t}]"))?;
            let role: String = tf.get("role")?;
            let speaker = match role.as_str() {
                "user" => "User",
                "assistant" => "Assistant",
                _ => {
                    return Err(format!(
                        "field \"{}\": unknown role {role:?}, expected user or assistant",
                        tf.path("role")
                    ));
                }
            };
            let content: String = tf.get("content")?;
            let has_answer: bool = tf.opt("has_answer")?.unwrap_or(false);
            out.push(RawTurn {
                speaker,
                text: content,
                has_answer,
            });
        }
        raw.push(RawSession {
            id: sid,
            date,
            turns: out,
        });
    }
    if raw.iter().all(|s| sortable_date(&s.date)) {
        raw.sort_by(|a, b| a.date.cmp(&b.date));
    }

    let marked = raw.iter().any(|s| s.turns.iter().any(|t| t.has_answer));
    if !marked {
        for a in &answer_sessions {
            if !raw.iter().any(|s| &s.id == a) {
                notes.push(format!(
                    "{id}: answer session {a:?} is not in the haystack (no evidence from it)"
                ));
            }
        }
    }
    let mut sessions = Vec::with_capacity(raw.len());
    let mut evidence = Vec::new();
    for (index, s) in (1u32..).zip(raw) {
        let whole = !marked && answer_sessions.contains(&s.id);
        let mut turns = Vec::with_capacity(s.turns.len());
        for (t, turn) in (1u32..).zip(s.turns) {
            let dia_id = DiaId::new(index, t);
            if turn.has_answer || whole {
                evidence.push(dia_id);
            }
            turns.push(Turn {
                dia_id,
                speaker: turn.speaker.to_string(),
                text: turn.text,
            });
        }
        sessions.push(Session {
            index,
            date: s.date,
            turns,
        });
    }
    Ok(Episode {
        id,
        speakers: vec!["User".into(), "Assistant".into()],
        sessions,
        questions: vec![Question {
            question,
            answer,
            evidence,
            category,
        }],
        facts: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_follow_the_question_type() {
        assert_eq!(category("q1", "temporal-reasoning"), Some(Category::Temporal));
        assert_eq!(
            category("q1", "knowledge-update"),
            Some(Category::KnowledgeUpdate)
        );
        assert_eq!(category("q1", "multi-session"), Some(Category::MultiHop));
        assert_eq!(
            category("q1", "single-session-preference"),
            Some(Category::SingleHop)
        );
        assert_eq!(category("q1_abs", "multi-session"), Some(Category::Unanswerable));
        assert_eq!(category("q1", "other"), None);
    }

    #[test]
    fn dates_sort_only_in_the_longmemeval_form() {
        assert!(sortable_date("2023/05/20 (Sat) 02:21"));
        assert!(!sortable_date("20 May 2023"));
        assert!(!sortable_date("2023-05-20"));
    }
}
