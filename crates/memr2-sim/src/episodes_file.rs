//! memr2's own dataset format: episodes as JSON Lines, one [`Episode`] per line.
//!
//! Each non-blank line is one JSON object, the serde form of [`Episode`] with a few fields
//! optional; blank lines are ignored:
//!
//! | field | type | |
//! |---|---|---|
//! | `id` | string | required, unique in the file |
//! | `split` | `"train"`, `"validation"` or `"test"` | optional, see below |
//! | `speakers` | array of strings | required |
//! | `sessions` | array of sessions | required |
//! | `sessions[].index` | integer | required, the session's 1-based position |
//! | `sessions[].date` | string | required, as the data writes it (may be empty) |
//! | `sessions[].turns` | array of turns | required |
//! | `sessions[].turns[].dia_id` | `"D{session}:{turn}"` | required, `turn` the turn's 1-based position |
//! | `sessions[].turns[].speaker`, `.text` | string | required |
//! | `questions` | array of questions | required (may be empty) |
//! | `questions[].question`, `.answer` | string | required |
//! | `questions[].evidence` | array of `"D{session}:{turn}"` | optional (default none: nothing in the conversation holds the answer) |
//! | `questions[].category` | `single_hop`, `multi_hop`, `temporal`, `open_domain`, `knowledge_update`, `adversarial` or `unanswerable` | optional (default `single_hop`) |
//! | `facts` | array of [`crate::Fact`]s | optional (default none) |
//! | `facts[].speaker`, `.dia_id`, `.text`, `.subject`, `.attribute`, `.value` | string | required |
//! | `facts[].change` | `new`, `update`, `remove` or `restate` | required |
//! | `facts[].previous` | string or `null` | optional |
//!
//! An example line (wrapped here; one line in the file):
//!
//! ```json
//! {"id": "trip-1", "split": "train", "speakers": ["Ana", "Ben"],
//!  "sessions": [{"index": 1, "date": "8 May 2023", "turns": [
//!    {"dia_id": "D1:1", "speaker": "Ana", "text": "I moved to Lyon last week."},
//!    {"dia_id": "D1:2", "speaker": "Ben", "text": "Lovely, how is it?"}]}],
//!  "questions": [{"question": "Where does Ana live?", "answer": "Lyon",
//!    "evidence": ["D1:1"], "category": "single_hop"}]}
//! ```
//!
//! Every episode must pass [`crate::validate_episode`] (sessions and turns numbered by
//! position, evidence and facts naming existing turns). Fields not in the table are errors, so
//! a misspelt optional field is reported rather than silently defaulted.
//!
//! **Splits**: a line's `split` when it has one; otherwise [`crate::dataset::split_by_id`] of
//! its `id` (about 10% validation, 20% test, 70% train), which does not change when lines are
//! added, removed or reordered.
//!
//! **Capabilities**: gold facts when every episode has at least one fact; categories when some
//! question has a `category` field.
//!
//! [`EpisodeFile::write`] writes this format (with every split explicit, and `facts` left out
//! when empty), so other data can be converted once and loaded like any dataset.
//!
//! Errors name the file, the line, the episode's id when it is known, and the field.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::dataset::{DataFormat, environment_name, split_by_id};
use crate::episode::{
    Capabilities, Category, DiaId, Environment, Episode, Question, Session, Split, Turn, validate_episode,
};
use crate::error::SimError;
use crate::fact::{Change, Fact};
use crate::json_object::Fields;

/// Episodes read from a memr2 JSON Lines file, each with its split.
#[derive(Debug, Clone)]
pub struct EpisodeFile {
    path: PathBuf,
    name: String,
    entries: Vec<(Split, Episode)>,
    capabilities: Capabilities,
}

impl EpisodeFile {
    /// Loads a JSON Lines episode file. A missing, unreadable or malformed file is an error
    /// naming the file, the line and the field.
    pub fn load(path: impl AsRef<Path>) -> Result<EpisodeFile, SimError> {
        let path = path.as_ref();
        let text = crate::dataset::read_data_file(path)?;
        Self::from_jsonl_str(&text, path)
    }

    /// Parses the file's content; `path` names it in errors.
    pub fn from_jsonl_str(text: &str, path: impl Into<PathBuf>) -> Result<EpisodeFile, SimError> {
        let path = path.into();
        let schema = |what: String| SimError::Schema {
            path: path.clone(),
            what,
        };
        let mut entries: Vec<(Split, Episode)> = Vec::new();
        let mut lines_of: Vec<usize> = Vec::new();
        let mut categorised = false;
        for (n, line) in (1usize..).zip(text.lines()) {
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(line).map_err(|e| {
                schema(format!(
                    "line {n}: not valid JSON (malformed or truncated line): {} at column {}",
                    json_message(&e),
                    e.column()
                ))
            })?;
            let place = match value.get("id").and_then(Value::as_str) {
                Some(id) => format!("line {n} (episode {id})"),
                None => format!("line {n}"),
            };
            let read = read_line(&value).map_err(|what| schema(format!("{place}: {what}")))?;
            validate_episode(&read.episode).map_err(|e| schema(format!("line {n}: {e}")))?;
            if let Some(j) = entries.iter().position(|(_, e)| e.id == read.episode.id) {
                return Err(schema(format!(
                    "{place}: id {:?} repeats line {}",
                    read.episode.id, lines_of[j]
                )));
            }
            categorised |= read.categorised;
            let split = read.split.unwrap_or_else(|| split_by_id(&read.episode.id));
            entries.push((split, read.episode));
            lines_of.push(n);
        }
        let capabilities = Capabilities {
            gold_facts: !entries.is_empty() && entries.iter().all(|(_, e)| !e.facts.is_empty()),
            categories: categorised,
        };
        Ok(EpisodeFile {
            name: environment_name(DataFormat::Episodes, &path),
            path,
            entries,
            capabilities,
        })
    }

    /// The file the data came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every episode with its split, in file order.
    pub fn entries(&self) -> &[(Split, Episode)] {
        &self.entries
    }

    /// The episodes as JSON Lines, one per line, each with its split. An episode that fails
    /// [`validate_episode`] is an error (the file could not be read back).
    pub fn to_jsonl<'a>(
        episodes: impl IntoIterator<Item = (Split, &'a Episode)>,
    ) -> Result<String, SimError> {
        let mut out = String::new();
        for (split, episode) in episodes {
            validate_episode(episode)?;
            let line = LineOut {
                id: &episode.id,
                split,
                speakers: &episode.speakers,
                sessions: &episode.sessions,
                questions: &episode.questions,
                facts: &episode.facts,
            };
            let text = serde_json::to_string(&line).map_err(|e| SimError::InvalidEpisode {
                episode: episode.id.clone(),
                question: None,
                what: format!("cannot be written as JSON: {e}"),
            })?;
            out.push_str(&text);
            out.push('\n');
        }
        Ok(out)
    }

    /// Writes episodes with their splits to a JSON Lines file (see [`Self::to_jsonl`]).
    pub fn write<'a>(
        path: impl AsRef<Path>,
        episodes: impl IntoIterator<Item = (Split, &'a Episode)>,
    ) -> Result<(), SimError> {
        let path = path.as_ref();
        let text = Self::to_jsonl(episodes)?;
        std::fs::write(path, text).map_err(|source| SimError::Write {
            path: path.into(),
            source,
        })
    }

    /// Writes every split of an environment to a JSON Lines file and returns the number of
    /// episodes written: the way to convert a dataset once into this format.
    pub fn write_environment(path: impl AsRef<Path>, env: &dyn Environment) -> Result<usize, SimError> {
        let by_split: Vec<(Split, Vec<Episode>)> = Split::ALL.iter().map(|&s| (s, env.episodes(s))).collect();
        let count = by_split.iter().map(|(_, e)| e.len()).sum();
        Self::write(
            path,
            by_split
                .iter()
                .flat_map(|(s, episodes)| episodes.iter().map(move |e| (*s, e))),
        )?;
        Ok(count)
    }
}

impl Environment for EpisodeFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn episodes(&self, split: Split) -> Vec<Episode> {
        self.entries
            .iter()
            .filter(|(s, _)| *s == split)
            .map(|(_, e)| e.clone())
            .collect()
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }
}

/// One line as written.
#[derive(Serialize)]
struct LineOut<'a> {
    id: &'a str,
    split: Split,
    speakers: &'a [String],
    sessions: &'a [Session],
    questions: &'a [Question],
    #[serde(skip_serializing_if = "<[Fact]>::is_empty")]
    facts: &'a [Fact],
}

/// One line as read.
struct LineIn {
    split: Option<Split>,
    episode: Episode,
    /// Whether some question has a `category` field.
    categorised: bool,
}

/// serde_json's message without its position (a line is parsed alone, so its line is 1).
fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rsplit_once(" at line ") {
        Some((message, _)) => message.to_string(),
        None => text,
    }
}

fn read_line(value: &Value) -> Result<LineIn, String> {
    let f = Fields::of(value, "")?;
    f.only(&["id", "split", "speakers", "sessions", "questions", "facts"])?;
    let id: String = f.get("id")?;
    let split: Option<Split> = f.opt("split")?;
    let speakers: Vec<String> = f.get("speakers")?;

    let mut sessions = Vec::new();
    for (i, s) in f.array("sessions")?.iter().enumerate() {
        let sf = Fields::of(s, f.element("sessions", i))?;
        sf.only(&["index", "date", "turns"])?;
        let mut turns = Vec::new();
        for (k, t) in sf.array("turns")?.iter().enumerate() {
            let tf = Fields::of(t, sf.element("turns", k))?;
            tf.only(&["dia_id", "speaker", "text"])?;
            turns.push(Turn {
                dia_id: tf.get("dia_id")?,
                speaker: tf.get("speaker")?,
                text: tf.get("text")?,
            });
        }
        sessions.push(Session {
            index: sf.get("index")?,
            date: sf.get("date")?,
            turns,
        });
    }

    let mut questions = Vec::new();
    let mut categorised = false;
    for (i, q) in f.array("questions")?.iter().enumerate() {
        let qf = Fields::of(q, f.element("questions", i))?;
        qf.only(&["question", "answer", "evidence", "category"])?;
        categorised |= qf.has("category");
        questions.push(Question {
            question: qf.get("question")?,
            answer: qf.get("answer")?,
            evidence: qf.opt::<Vec<DiaId>>("evidence")?.unwrap_or_default(),
            category: qf.opt("category")?.unwrap_or(Category::SingleHop),
        });
    }

    let mut facts = Vec::new();
    for (i, x) in f.opt_array("facts")?.unwrap_or_default().iter().enumerate() {
        let xf = Fields::of(x, f.element("facts", i))?;
        xf.only(&[
            "speaker",
            "dia_id",
            "text",
            "subject",
            "attribute",
            "value",
            "change",
            "previous",
        ])?;
        facts.push(Fact {
            speaker: xf.get("speaker")?,
            dia_id: xf.get("dia_id")?,
            text: xf.get("text")?,
            subject: xf.get("subject")?,
            attribute: xf.get("attribute")?,
            value: xf.get("value")?,
            change: xf.get::<Change>("change")?,
            previous: xf.opt("previous")?,
        });
    }

    Ok(LineIn {
        split,
        episode: Episode {
            id,
            speakers,
            sessions,
            questions,
            facts,
        },
        categorised,
    })
}
