//! The LoCoMo benchmark loader (`locomo10.json`), tolerant of the file's known quirks.
//!
//! Quirks handled: adversarial items carry `adversarial_answer` instead of `answer`; some
//! answers are integers; some evidence strings are malformed ("D8:6; D9:17", "D:11:26",
//! "D30:05", "D"); some `session_N_date_time` keys have no session; images are described by a
//! `blip_caption`, appended to the turn text as the official evaluation code does; two
//! evidence ids name turns that do not exist ("D10:19" in conv-42, "D4:36" in conv-47), each
//! beside other evidence of its question. Whatever is dropped is listed by [`Locomo::skipped`],
//! whatever is repaired by [`Locomo::notes`].
//!
//! Every episode passes [`crate::validate_episode`]: sessions are numbered by position
//! (`session_N` keys in increasing order), turns by position among the turns kept, and evidence
//! follows the turns it named. An evidence id that names no turn is dropped, and a question
//! whose every evidence id names no turn is dropped with it.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::dataset::{DataFormat, environment_name};
use crate::episode::{
    Capabilities, Category, DiaId, Environment, Episode, Question, Session, Split, Turn, validate_episode,
};
use crate::error::SimError;

/// The gold answer given to adversarial questions (their `adversarial_answer` is the trap).
pub const ADVERSARIAL_ANSWER: &str = "Not mentioned in the conversation";

/// Conversations of the train split (as in the Memory-R2 paper).
pub const TRAIN_IDS: [&str; 2] = ["conv-43", "conv-47"];
/// Conversations of the validation split.
pub const VALIDATION_IDS: [&str; 1] = ["conv-44"];

/// The LoCoMo conversations with their questions.
#[derive(Debug, Clone)]
pub struct Locomo {
    path: PathBuf,
    name: String,
    episodes: Vec<Episode>,
    skipped: Vec<String>,
    notes: Vec<String>,
    include_adversarial: bool,
}

impl Locomo {
    /// Loads `locomo10.json`. A missing, unreadable, malformed or truncated file is an error
    /// naming the file and what is wrong.
    pub fn load(path: impl AsRef<Path>) -> Result<Locomo, SimError> {
        let path = path.as_ref();
        let text = crate::dataset::read_data_file(path)?;
        Self::from_json_str(&text, path)
    }

    /// Parses the file's content; `path` names it in errors.
    pub fn from_json_str(text: &str, path: impl Into<PathBuf>) -> Result<Locomo, SimError> {
        let path = path.into();
        let value: Value = serde_json::from_str(text).map_err(|source| SimError::Json {
            path: path.clone(),
            source,
        })?;
        let mut loader = Loader {
            path,
            skipped: Vec::new(),
            notes: Vec::new(),
        };
        let convs = value
            .as_array()
            .ok_or_else(|| loader.schema("expected a JSON array of conversations at the top level".into()))?;
        let mut episodes = Vec::with_capacity(convs.len());
        for (i, conv) in convs.iter().enumerate() {
            let episode = loader.conversation(i, conv)?;
            validate_episode(&episode).map_err(|e| loader.schema(format!("conversation {i}: {e}")))?;
            episodes.push(episode);
        }
        Ok(Locomo {
            name: environment_name(DataFormat::Locomo, &loader.path),
            path: loader.path,
            episodes,
            skipped: loader.skipped,
            notes: loader.notes,
            include_adversarial: false,
        })
    }

    /// Whether [`Environment::episodes`] keeps adversarial questions (default: no, as in the
    /// paper).
    pub fn with_adversarial(mut self, include: bool) -> Self {
        self.include_adversarial = include;
        self
    }

    /// The file the data came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every conversation with every question, adversarial ones included, in file order.
    pub fn all_episodes(&self) -> &[Episode] {
        &self.episodes
    }

    /// What was dropped while loading, one line per item.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// What was repaired or kept despite looking wrong, one line per item.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The split a conversation id belongs to: train conv-43 and conv-47, validation conv-44,
    /// test every other.
    pub fn split_of(id: &str) -> Split {
        if TRAIN_IDS.contains(&id) {
            Split::Train
        } else if VALIDATION_IDS.contains(&id) {
            Split::Validation
        } else {
            Split::Test
        }
    }
}

impl Environment for Locomo {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            gold_facts: false,
            categories: true,
        }
    }

    fn episodes(&self, split: Split) -> Vec<Episode> {
        self.episodes
            .iter()
            .filter(|e| Self::split_of(&e.id) == split)
            .map(|e| {
                let mut e = e.clone();
                if !self.include_adversarial {
                    e.questions.retain(|q| q.category != Category::Adversarial);
                }
                e
            })
            .collect()
    }
}

struct Loader {
    path: PathBuf,
    skipped: Vec<String>,
    notes: Vec<String>,
}

impl Loader {
    fn schema(&self, what: String) -> SimError {
        SimError::Schema {
            path: self.path.clone(),
            what,
        }
    }

    fn conversation(&mut self, i: usize, conv: &Value) -> Result<Episode, SimError> {
        let obj = conv
            .as_object()
            .ok_or_else(|| self.schema(format!("conversation {i} is not an object")))?;
        let id = obj
            .get("sample_id")
            .and_then(Value::as_str)
            .ok_or_else(|| self.schema(format!("conversation {i} has no string \"sample_id\"")))?
            .to_string();
        let dialogue = obj
            .get("conversation")
            .and_then(Value::as_object)
            .ok_or_else(|| self.schema(format!("{id} has no \"conversation\" object")))?;
        let mut speakers = Vec::new();
        for key in ["speaker_a", "speaker_b"] {
            let s = dialogue
                .get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| self.schema(format!("{id} has no string \"{key}\"")))?;
            speakers.push(s.to_string());
        }

        let mut turns_of: BTreeMap<u32, &Vec<Value>> = BTreeMap::new();
        let mut dates: BTreeMap<u32, String> = BTreeMap::new();
        for (key, value) in dialogue {
            let Some(rest) = key.strip_prefix("session_") else {
                continue;
            };
            if let Some(n) = rest.strip_suffix("_date_time") {
                let n = n
                    .parse()
                    .map_err(|_| self.schema(format!("{id}: unexpected key \"{key}\"")))?;
                dates.insert(n, value.as_str().unwrap_or_default().to_string());
            } else {
                let n = rest
                    .parse()
                    .map_err(|_| self.schema(format!("{id}: unexpected key \"{key}\"")))?;
                let turns = value
                    .as_array()
                    .ok_or_else(|| self.schema(format!("{id}: \"{key}\" is not an array")))?;
                turns_of.insert(n, turns);
            }
        }
        for n in dates.keys().filter(|n| !turns_of.contains_key(n)) {
            self.skipped
                .push(format!("{id}: session_{n}_date_time has no session"));
        }
        let mut sessions = Vec::with_capacity(turns_of.len());
        // The id each turn has in the data, mapped to its id in the episode.
        let mut renamed: BTreeMap<DiaId, DiaId> = BTreeMap::new();
        for (index, (&n, turns)) in (1u32..).zip(&turns_of) {
            if n != index {
                self.notes
                    .push(format!("{id}: session_{n} numbered {index}, its position"));
            }
            let date = dates.get(&n).cloned().unwrap_or_else(|| {
                self.notes.push(format!("{id}: session_{n} has no date"));
                String::new()
            });
            let mut out: Vec<Turn> = Vec::with_capacity(turns.len());
            for (k, t) in turns.iter().enumerate() {
                let Some(mut turn) = self.turn(&id, n, k, t) else {
                    continue;
                };
                let named = turn.dia_id;
                turn.dia_id = DiaId::new(index, out.len() as u32 + 1);
                if named != turn.dia_id {
                    self.notes.push(format!(
                        "{id}: turn {named} numbered {}, its position",
                        turn.dia_id
                    ));
                }
                match renamed.entry(named) {
                    Entry::Vacant(slot) => {
                        slot.insert(turn.dia_id);
                    }
                    Entry::Occupied(_) => self.notes.push(format!(
                        "{id}: turn id {named} repeats; evidence naming it means its first turn"
                    )),
                }
                out.push(turn);
            }
            sessions.push(Session {
                index,
                date,
                turns: out,
            });
        }

        let qa = obj
            .get("qa")
            .and_then(Value::as_array)
            .ok_or_else(|| self.schema(format!("{id} has no \"qa\" array")))?;
        let mut questions = Vec::with_capacity(qa.len());
        for (k, q) in qa.iter().enumerate() {
            if let Some(q) = self.question(&id, k, q, &renamed) {
                questions.push(q);
            }
        }
        Ok(Episode {
            id,
            speakers,
            sessions,
            questions,
            facts: Vec::new(),
        })
    }

    /// Turn `k` (0-based) of `session_{n}`, with the id the data gives it (its position when
    /// that id is unusable); `None` when it has no speaker or text.
    fn turn(&mut self, id: &str, n: u32, k: usize, t: &Value) -> Option<Turn> {
        let (Some(speaker), Some(text)) = (
            t.get("speaker").and_then(Value::as_str),
            t.get("text").and_then(Value::as_str),
        ) else {
            self.skipped
                .push(format!("{id}: session_{n} turn {} has no speaker or text", k + 1));
            return None;
        };
        let position = DiaId::new(n, k as u32 + 1);
        let given = t.get("dia_id").and_then(Value::as_str).unwrap_or_default();
        let dia_id = match parse_evidence(given).as_slice() {
            [d] if d.session == n => *d,
            _ => {
                self.notes
                    .push(format!("{id}: turn dia_id {given:?} replaced by {position}"));
                position
            }
        };
        let text = match t.get("blip_caption").and_then(Value::as_str) {
            Some(caption) if !caption.is_empty() => format!("{text} and shared {caption}."),
            _ => text.to_string(),
        };
        Some(Turn {
            dia_id,
            speaker: speaker.to_string(),
            text,
        })
    }

    /// One question, its evidence renamed as the turns were (`renamed` maps the turn ids of the
    /// data to those of the episode).
    fn question(
        &mut self,
        id: &str,
        k: usize,
        q: &Value,
        renamed: &BTreeMap<DiaId, DiaId>,
    ) -> Option<Question> {
        let Some(text) = q.get("question").and_then(Value::as_str) else {
            self.skipped.push(format!("{id}: qa {k} has no question"));
            return None;
        };
        let Some(category) = q
            .get("category")
            .and_then(Value::as_i64)
            .and_then(Category::from_locomo)
        else {
            self.skipped.push(format!(
                "{id}: qa {k} has no known category: {:?}",
                q.get("category")
            ));
            return None;
        };
        let answer = if category == Category::Adversarial {
            ADVERSARIAL_ANSWER.to_string()
        } else {
            match q.get("answer") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(x)) => x.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                other => {
                    self.skipped
                        .push(format!("{id}: qa {k} has no usable answer: {other:?}"));
                    return None;
                }
            }
        };
        let raw: Vec<&str> = match q.get("evidence") {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(s)) => vec![s.as_str()],
            _ => Vec::new(),
        };
        let mut evidence = Vec::new();
        let mut missing = Vec::new();
        for r in raw {
            let parsed = parse_evidence(r);
            let canonical = parsed.iter().map(DiaId::to_string).collect::<Vec<_>>().join("; ");
            if parsed.is_empty() {
                self.skipped
                    .push(format!("{id}: qa {k} evidence {r:?} names no turn"));
            } else if canonical != r {
                self.notes
                    .push(format!("{id}: qa {k} evidence {r:?} read as {canonical}"));
            }
            for d in parsed {
                match renamed.get(&d) {
                    Some(&turn) => evidence.push(turn),
                    None => missing.push(d.to_string()),
                }
            }
        }
        if !missing.is_empty() {
            let missing = missing.join(", ");
            if evidence.is_empty() {
                self.skipped.push(format!(
                    "{id}: qa {k} dropped: its evidence {missing} names no turn of the conversation"
                ));
                return None;
            }
            self.skipped.push(format!(
                "{id}: qa {k} evidence {missing} names no turn of the conversation (dropped)"
            ));
        }
        evidence.sort_unstable();
        evidence.dedup();
        Some(Question {
            question: text.to_string(),
            answer,
            evidence,
            category,
        })
    }
}

/// Reads every dialogue id in a possibly malformed evidence string: ids may be separated by
/// `;`, `,` or spaces, written with a stray colon ("D:11:26") or leading zeros ("D30:05").
pub fn parse_evidence(s: &str) -> Vec<DiaId> {
    s.split(|c: char| c == ';' || c == ',' || c.is_whitespace())
        .filter_map(|token| {
            let rest = token.strip_prefix('D')?.trim_start_matches(':');
            let (session, turn) = rest.split_once(':')?;
            Some(DiaId::new(session.parse().ok()?, turn.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_quirks() {
        assert_eq!(
            parse_evidence("D8:6; D9:17"),
            vec![DiaId::new(8, 6), DiaId::new(9, 17)]
        );
        assert_eq!(parse_evidence("D:11:26"), vec![DiaId::new(11, 26)]);
        assert_eq!(parse_evidence("D30:05"), vec![DiaId::new(30, 5)]);
        assert_eq!(parse_evidence("D9:1 D4:4 D4:6").len(), 3);
        assert!(parse_evidence("D").is_empty());
        assert!(parse_evidence("").is_empty());
    }

    #[test]
    fn splits_follow_the_paper() {
        assert_eq!(Locomo::split_of("conv-43"), Split::Train);
        assert_eq!(Locomo::split_of("conv-44"), Split::Validation);
        assert_eq!(Locomo::split_of("conv-26"), Split::Test);
    }
}
