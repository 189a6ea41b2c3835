//! Role prompts (fact extractor, memory manager, answerer) and their output parsers.
//!
//! One backbone plays several roles that differ only by their prompt (the tool caller's prompt
//! and parser live in [`crate::tools`]). Each prompt is a one-sentence system instruction that
//! names the output format exactly, and a user message that holds only the data, one item per
//! line: compact enough for a small model trained from scratch, explicit enough for a pretrained
//! instruction model.
//!
//! The parsers accept the canonical JSON, surrounding whitespace and a Markdown code fence; anything
//! else is a [`FormatError`] naming what was wrong, which the trainer counts. The renderers write the
//! canonical completions (compact JSON) that supervised fine-tuning imitates, and
//! `parse(render(x)) == x` for every valid `x`.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The most words a fact may have; longer facts are a format error.
pub const MAX_FACT_WORDS: usize = 40;

/// An answer is cut after this many words.
pub const MAX_ANSWER_WORDS: usize = 32;

const EXTRACTOR_SYSTEM: &str = "Extract facts about the speakers worth remembering. Reply with JSON \
    {\"facts\":[{\"speaker\":\"...\",\"dia_id\":\"...\",\"fact\":\"...\"}]}, one short fact per item.";
const MANAGER_SYSTEM: &str = "Update the memories with the new fact. Reply with JSON \
    {\"operations\":[...]} of {\"operation\":\"ADD\",\"text\":\"...\"}, \
    {\"operation\":\"UPDATE\",\"id\":\"...\",\"text\":\"...\"} or {\"operation\":\"DELETE\",\"id\":\"...\"}; \
    [] if nothing changes.";
const ANSWERER_SYSTEM: &str =
    "Answer the question in a few words from the memories. Reply with the answer only.";
const TOOL_CALLER_SYSTEM: &str =
    "Call one tool for the task. Reply with JSON only: {\"name\":\"...\",\"arguments\":{...}}.";

/// The roles the backbone plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads a chunk of a session and writes facts.
    Extractor,
    /// Turns one new fact and its related memories into memory operations.
    Manager,
    /// Answers a question from retrieved memories.
    Answerer,
    /// Writes one JSON tool call for a task, given the tools and retrieved memories
    /// ([`crate::tools`]).
    #[serde(rename = "tool_caller")]
    ToolCaller,
}

impl Role {
    /// Every role, in pipeline order, the memory's readers last.
    pub const ALL: [Role; 4] = [Role::Extractor, Role::Manager, Role::Answerer, Role::ToolCaller];

    /// Lower-case name: `extractor`, `manager`, `answerer`, `tool_caller`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Extractor => "extractor",
            Role::Manager => "manager",
            Role::Answerer => "answerer",
            Role::ToolCaller => "tool_caller",
        }
    }

    /// The role's system instruction.
    pub fn system_prompt(self) -> &'static str {
        match self {
            Role::Extractor => EXTRACTOR_SYSTEM,
            Role::Manager => MANAGER_SYSTEM,
            Role::Answerer => ANSWERER_SYSTEM,
            Role::ToolCaller => TOOL_CALLER_SYSTEM,
        }
    }

    /// A few words standing for the role's instruction ([`shown_system`]).
    pub fn tag(self) -> &'static str {
        match self {
            Role::Extractor => "extract facts",
            Role::Manager => "manage memory",
            Role::Answerer => "answer",
            Role::ToolCaller => "call a tool",
        }
    }
}

/// The system message a model is shown for `system`. With `compact`, a role's instruction is
/// replaced by the role's [`Role::tag`]: a model trained from scratch on the roles' examples
/// learns their formats from the examples, not from the instruction, and the instruction,
/// repeated in every example, is most of a manager's prompt. Any other system text, and every
/// text without `compact`, is shown as it is. Prompts are built and served with the full
/// instruction either way (a served model needs it); only what the model reads changes.
pub fn shown_system(system: &str, compact: bool) -> &str {
    if compact && let Some(role) = Role::ALL.into_iter().find(|r| r.system_prompt() == system) {
        return role.tag();
    }
    system
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A rendered prompt: the system and user messages, for `Tokenizer::chat_prompt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPrompt {
    /// The role's instruction.
    pub system: String,
    /// The data.
    pub user: String,
}

impl ChatPrompt {
    fn new(role: Role, user: String) -> Self {
        Self {
            system: role.system_prompt().to_owned(),
            user,
        }
    }
}

/// One conversation turn as the extractor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnView<'a> {
    /// Dialogue id, `D{session}:{turn}`.
    pub dia_id: &'a str,
    /// Who speaks.
    pub speaker: &'a str,
    /// What is said.
    pub text: &'a str,
}

/// One retrieved memory as the manager or answerer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryView<'a> {
    /// Short alias of the store's id (`"0"`, `"m3"`); the caller maps it back.
    pub alias: &'a str,
    /// The memory's text.
    pub text: &'a str,
}

/// Replaces line breaks with spaces so that one field stays on one prompt line.
pub(crate) fn one_line(text: &str) -> Cow<'_, str> {
    if text.contains(['\n', '\r']) {
        Cow::Owned(text.replace(['\n', '\r'], " "))
    } else {
        Cow::Borrowed(text)
    }
}

/// The extractor's prompt for a chunk of a session held on `date`:
/// `date: {date}` then one `{dia_id} {speaker}: {text}` line per turn.
pub fn extractor_prompt(date: &str, turns: &[TurnView<'_>]) -> ChatPrompt {
    let mut user = format!("date: {}", one_line(date));
    for turn in turns {
        user.push('\n');
        user.push_str(&format!(
            "{} {}: {}",
            one_line(turn.dia_id),
            one_line(turn.speaker),
            one_line(turn.text)
        ));
    }
    ChatPrompt::new(Role::Extractor, user)
}

/// Appends `memories:` and one line per memory, or `memories: none`: `{alias}: {text}` when
/// `aliased`, else `- {text}`.
///
/// Either way a space comes before the memory's first word. With a byte-level BPE, `Hugo` at
/// the start of a line and ` Hugo` after a space are different tokens, and the question asks
/// about ` Hugo`: a line that opened with the bare word would make the model learn that the
/// two are the same name before it could match a question to a memory.
pub(crate) fn push_memories(user: &mut String, memories: &[MemoryView<'_>], aliased: bool) {
    if memories.is_empty() {
        user.push_str("memories: none");
        return;
    }
    user.push_str("memories:");
    for memory in memories {
        user.push('\n');
        if aliased {
            user.push_str(&one_line(memory.alias));
            user.push_str(": ");
        } else {
            user.push_str("- ");
        }
        user.push_str(&one_line(memory.text));
    }
}

/// The manager's prompt for one new fact and its related memories:
/// `fact: {fact}`, `memories:`, then one `{alias}: {text}` line per memory.
pub fn manager_prompt(fact: &str, memories: &[MemoryView<'_>]) -> ChatPrompt {
    let mut user = format!("fact: {}\n", one_line(fact));
    push_memories(&mut user, memories, true);
    ChatPrompt::new(Role::Manager, user)
}

/// The answerer's prompt: `memories:`, one `- {text}` line per memory (the aliases are not
/// shown), then `question: {question}`.
pub fn answerer_prompt(question: &str, memories: &[MemoryView<'_>]) -> ChatPrompt {
    let mut user = String::new();
    push_memories(&mut user, memories, false);
    user.push_str("\nquestion: ");
    user.push_str(&one_line(question));
    ChatPrompt::new(Role::Answerer, user)
}

/// Why a model's output could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The output is not valid JSON.
    #[error("output is not valid JSON")]
    NotJson {
        /// Where parsing stopped and why.
        #[source]
        source: serde_json::Error,
    },
    /// The output is JSON but not an object.
    #[error("output is not a JSON object")]
    NotAnObject,
    /// The object lacks the expected list (`facts` or `operations`), or it is not a list.
    #[error("output has no \"{key}\" list")]
    MissingList {
        /// The expected key.
        key: &'static str,
    },
    /// An item of the list is not an object.
    #[error("item {index} is not a JSON object")]
    ItemNotObject {
        /// Position in the list, from 0.
        index: usize,
    },
    /// An item lacks a required key.
    #[error("item {index} has no \"{key}\"")]
    MissingKey {
        /// Position in the list, from 0.
        index: usize,
        /// The missing key.
        key: &'static str,
    },
    /// An item's value is not a string.
    #[error("item {index}: \"{key}\" is not a string")]
    NotAString {
        /// Position in the list, from 0.
        index: usize,
        /// The key whose value has the wrong type.
        key: &'static str,
    },
    /// An item names an operation other than ADD, UPDATE, DELETE, NOOP.
    #[error("item {index}: unknown operation {operation:?}")]
    UnknownOperation {
        /// Position in the list, from 0.
        index: usize,
        /// What the item said.
        operation: String,
    },
    /// A text or id is empty or only whitespace.
    #[error("item {index}: \"{key}\" is empty")]
    EmptyText {
        /// Position in the list, from 0.
        index: usize,
        /// The empty field.
        key: &'static str,
    },
    /// A fact is longer than [`MAX_FACT_WORDS`].
    #[error("item {index}: fact has {words} words, more than {max}")]
    FactTooLong {
        /// Position in the list, from 0.
        index: usize,
        /// Its length in words.
        words: usize,
        /// The limit.
        max: usize,
    },
    /// The answer is empty or only whitespace.
    #[error("answer is empty")]
    EmptyAnswer,
}

/// Removes surrounding whitespace and a Markdown code fence (```` ```json ... ``` ````).
fn strip_fence(output: &str) -> &str {
    let trimmed = output.trim();
    let Some(inner) = trimmed.strip_prefix("```") else {
        return trimmed;
    };
    let inner = inner.strip_suffix("```").unwrap_or(inner);
    let inner = inner
        .strip_prefix("json")
        .or_else(|| inner.strip_prefix("JSON"))
        .unwrap_or(inner);
    inner.trim()
}

/// Parses `{"<key>":[{...},...]}` and returns the items, each checked to be an object.
fn parse_items(output: &str, key: &'static str) -> Result<Vec<Map<String, Value>>, FormatError> {
    let value: Value =
        serde_json::from_str(strip_fence(output)).map_err(|source| FormatError::NotJson { source })?;
    let Value::Object(mut object) = value else {
        return Err(FormatError::NotAnObject);
    };
    let Some(Value::Array(items)) = object.remove(key) else {
        return Err(FormatError::MissingList { key });
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::Object(fields) => Ok(fields),
            _ => Err(FormatError::ItemNotObject { index }),
        })
        .collect()
}

/// The string at `key` of item `index`, taken out of the item.
fn take_string(
    item: &mut Map<String, Value>,
    index: usize,
    key: &'static str,
) -> Result<String, FormatError> {
    match item.remove(key) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(FormatError::NotAString { index, key }),
        None => Err(FormatError::MissingKey { index, key }),
    }
}

/// Like [`take_string`], but rejects blank text.
fn take_text(item: &mut Map<String, Value>, index: usize, key: &'static str) -> Result<String, FormatError> {
    let text = take_string(item, index, key)?;
    if text.trim().is_empty() {
        return Err(FormatError::EmptyText { index, key });
    }
    Ok(text)
}

/// A memory id: a non-blank string, or a non-negative integer (models shown aliases `0`, `1`, ...
/// sometimes write them as numbers), returned as its decimal string.
fn take_id(item: &mut Map<String, Value>, index: usize) -> Result<String, FormatError> {
    if let Some(id) = item.get("id").and_then(Value::as_u64) {
        return Ok(id.to_string());
    }
    take_text(item, index, "id")
}

/// One fact written by the extractor.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExtractedFact {
    /// Who the fact is about or who said it.
    pub speaker: String,
    /// The turn it comes from, `D{session}:{turn}`.
    pub dia_id: String,
    /// The fact, at most [`MAX_FACT_WORDS`] words.
    pub fact: String,
}

/// Parses the extractor's output `{"facts":[{"speaker":..,"dia_id":..,"fact":..}]}`.
///
/// Extra keys are ignored; strings are kept as written. A missing or non-string field, a blank
/// fact or one over [`MAX_FACT_WORDS`] words is an error.
pub fn parse_facts(output: &str) -> Result<Vec<ExtractedFact>, FormatError> {
    parse_items(output, "facts")?
        .into_iter()
        .enumerate()
        .map(|(index, mut item)| {
            let speaker = take_string(&mut item, index, "speaker")?;
            let dia_id = take_string(&mut item, index, "dia_id")?;
            let fact = take_text(&mut item, index, "fact")?;
            let words = fact.split_whitespace().count();
            if words > MAX_FACT_WORDS {
                return Err(FormatError::FactTooLong {
                    index,
                    words,
                    max: MAX_FACT_WORDS,
                });
            }
            Ok(ExtractedFact {
                speaker,
                dia_id,
                fact,
            })
        })
        .collect()
}

/// The canonical extractor output for `facts`: compact JSON, keys in the order
/// `speaker`, `dia_id`, `fact`.
pub fn render_facts(facts: &[ExtractedFact]) -> String {
    #[derive(Serialize)]
    struct Facts<'a> {
        facts: &'a [ExtractedFact],
    }
    serde_json::to_string(&Facts { facts }).expect("structs of strings always serialize")
}

/// The kind of a memory operation, as the manager writes it (`ADD`, `UPDATE`, `DELETE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum OperationKind {
    /// A new memory.
    Add,
    /// A memory's text replaced.
    Update,
    /// A memory removed.
    Delete,
}

impl OperationKind {
    /// The upper-case name the manager writes.
    pub fn name(self) -> &'static str {
        match self {
            OperationKind::Add => "ADD",
            OperationKind::Update => "UPDATE",
            OperationKind::Delete => "DELETE",
        }
    }
}

/// One operation written by the manager. Ids are the aliases shown in the prompt.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MemoryOperation {
    /// Store a new memory.
    Add {
        /// Its text.
        text: String,
    },
    /// Replace the text of memory `id`.
    Update {
        /// The memory's alias.
        id: String,
        /// The new text.
        text: String,
    },
    /// Remove memory `id`.
    Delete {
        /// The memory's alias.
        id: String,
    },
}

impl MemoryOperation {
    /// What the operation does.
    pub fn kind(&self) -> OperationKind {
        match self {
            MemoryOperation::Add { .. } => OperationKind::Add,
            MemoryOperation::Update { .. } => OperationKind::Update,
            MemoryOperation::Delete { .. } => OperationKind::Delete,
        }
    }
}

/// Parses the manager's output `{"operations":[...]}` with items
/// `{"operation":"ADD","text":..}`, `{"operation":"UPDATE","id":..,"text":..}`,
/// `{"operation":"DELETE","id":..}`.
///
/// An empty list means no change (NOOP); `{"operation":"NOOP"}` items are accepted and dropped.
/// Operation names are matched without regard to case; ids may be strings or non-negative
/// integers. A missing, blank or mistyped id or text, or an unknown operation, is an error.
pub fn parse_operations(output: &str) -> Result<Vec<MemoryOperation>, FormatError> {
    let mut operations = Vec::new();
    for (index, mut item) in parse_items(output, "operations")?.into_iter().enumerate() {
        let name = take_string(&mut item, index, "operation")?;
        let name = name.trim();
        let operation = if name.eq_ignore_ascii_case("ADD") {
            MemoryOperation::Add {
                text: take_text(&mut item, index, "text")?,
            }
        } else if name.eq_ignore_ascii_case("UPDATE") {
            MemoryOperation::Update {
                id: take_id(&mut item, index)?,
                text: take_text(&mut item, index, "text")?,
            }
        } else if name.eq_ignore_ascii_case("DELETE") {
            MemoryOperation::Delete {
                id: take_id(&mut item, index)?,
            }
        } else if name.eq_ignore_ascii_case("NOOP") || name.eq_ignore_ascii_case("NONE") {
            continue;
        } else {
            return Err(FormatError::UnknownOperation {
                index,
                operation: name.to_owned(),
            });
        };
        operations.push(operation);
    }
    Ok(operations)
}

/// The canonical manager output for `ops`: compact JSON, keys in the order `operation`, `id`,
/// `text`; `{"operations":[]}` for no change.
pub fn render_operations(ops: &[MemoryOperation]) -> String {
    #[derive(Serialize)]
    struct Item<'a> {
        operation: OperationKind,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct Operations<'a> {
        operations: Vec<Item<'a>>,
    }
    let operations = ops
        .iter()
        .map(|op| {
            let (id, text) = match op {
                MemoryOperation::Add { text } => (None, Some(text.as_str())),
                MemoryOperation::Update { id, text } => (Some(id.as_str()), Some(text.as_str())),
                MemoryOperation::Delete { id } => (Some(id.as_str()), None),
            };
            Item {
                operation: op.kind(),
                id,
                text,
            }
        })
        .collect();
    serde_json::to_string(&Operations { operations }).expect("structs of strings always serialize")
}

/// The first `max` whitespace-separated words of `text`, with the spacing between them kept.
fn first_words(text: &str, max: usize) -> &str {
    let mut words = 0;
    let mut in_word = false;
    let mut end = 0;
    for (at, c) in text.char_indices() {
        if c.is_whitespace() {
            in_word = false;
            continue;
        }
        if !in_word {
            words += 1;
            if words > max {
                break;
            }
            in_word = true;
        }
        end = at + c.len_utf8();
    }
    &text[..end]
}

/// Reads the answerer's output: its first non-blank line, trimmed, cut after
/// [`MAX_ANSWER_WORDS`] words. Blank output is [`FormatError::EmptyAnswer`].
pub fn parse_answer(output: &str) -> Result<String, FormatError> {
    let line = output
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .ok_or(FormatError::EmptyAnswer)?;
    Ok(first_words(line, MAX_ANSWER_WORDS).to_owned())
}

/// The canonical answerer output: the answer on one line after a single space. The space
/// matters with a byte-level BPE: the answer's words appear inside the memories with a space
/// in front, and ` Boston` is one token where `Boston` at the start of a text is two
/// (`B`, `oston`), so without it the answerer would have to learn to respell every word
/// it copies. [`parse_answer`] trims it away.
pub fn render_answer(answer: &str) -> String {
    format!(" {}", one_line(answer).trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Whether an error is the one a malformed output should give.
    type ErrorCheck = fn(&FormatError) -> bool;

    fn turns() -> Vec<TurnView<'static>> {
        vec![
            TurnView {
                dia_id: "D3:1",
                speaker: "Alice",
                text: "I finally moved to Lyon!",
            },
            TurnView {
                dia_id: "D3:2",
                speaker: "Bob",
                text: "Great news.\nHow is the new job?",
            },
        ]
    }

    fn memories() -> Vec<MemoryView<'static>> {
        vec![
            MemoryView {
                alias: "0",
                text: "Alice lives in Paris",
            },
            MemoryView {
                alias: "1",
                text: "Alice works as a nurse",
            },
        ]
    }

    #[test]
    fn compact_prompts_show_a_tag_for_each_role_instruction_and_nothing_else() {
        for role in Role::ALL {
            assert_eq!(shown_system(role.system_prompt(), true), role.tag());
            assert_eq!(shown_system(role.system_prompt(), false), role.system_prompt());
            assert!(role.tag().len() * 4 < role.system_prompt().len());
        }
        let tags: std::collections::BTreeSet<&str> = Role::ALL.iter().map(|r| r.tag()).collect();
        assert_eq!(tags.len(), Role::ALL.len(), "tags tell the roles apart");
        assert_eq!(
            shown_system("You are a helpful assistant.", true),
            "You are a helpful assistant."
        );
        let prompt = manager_prompt("Alice lives in Paris", &[]);
        assert_eq!(prompt.system, MANAGER_SYSTEM, "prompts keep the full instruction");
    }

    #[test]
    fn roles_extractor_prompt_snapshot() {
        let prompt = extractor_prompt("8 May 2023", &turns());
        assert_eq!(prompt.system, Role::Extractor.system_prompt());
        assert_eq!(
            prompt.user,
            "date: 8 May 2023\nD3:1 Alice: I finally moved to Lyon!\nD3:2 Bob: Great news. How is the new job?"
        );
        assert_eq!(extractor_prompt("8 May 2023", &[]).user, "date: 8 May 2023");
    }

    #[test]
    fn roles_manager_prompt_snapshot() {
        let prompt = manager_prompt("Alice moved to Lyon", &memories());
        assert_eq!(prompt.system, Role::Manager.system_prompt());
        assert_eq!(
            prompt.user,
            "fact: Alice moved to Lyon\nmemories:\n0: Alice lives in Paris\n1: Alice works as a nurse"
        );
        assert_eq!(
            manager_prompt("Alice moved to Lyon", &[]).user,
            "fact: Alice moved to Lyon\nmemories: none"
        );
    }

    #[test]
    fn roles_answerer_prompt_snapshot() {
        let prompt = answerer_prompt("Where does Alice live?", &memories());
        assert_eq!(prompt.system, Role::Answerer.system_prompt());
        assert_eq!(
            prompt.user,
            "memories:\n- Alice lives in Paris\n- Alice works as a nurse\nquestion: Where does Alice live?"
        );
        assert_eq!(
            answerer_prompt("Why?", &[]).user,
            "memories: none\nquestion: Why?"
        );
    }

    #[test]
    fn roles_system_prompts_are_one_short_sentence_naming_the_format() {
        for role in Role::ALL {
            let words = role.system_prompt().split_whitespace().count();
            assert!((10..=30).contains(&words), "{role}: {words} words");
            assert!(!role.system_prompt().contains('\n'));
        }
        assert!(
            Role::Extractor
                .system_prompt()
                .contains(r#"{"facts":[{"speaker":"#)
        );
        for op in ["ADD", "UPDATE", "DELETE"] {
            assert!(
                Role::Manager
                    .system_prompt()
                    .contains(&format!(r#"{{"operation":"{op}""#))
            );
        }
        assert_eq!(Role::Manager.to_string(), "manager");
    }

    #[test]
    fn roles_render_canonical_json() {
        let facts = vec![ExtractedFact {
            speaker: "Alice".into(),
            dia_id: "D3:7".into(),
            fact: "Alice moved to \"Lyon\"".into(),
        }];
        assert_eq!(
            render_facts(&facts),
            r#"{"facts":[{"speaker":"Alice","dia_id":"D3:7","fact":"Alice moved to \"Lyon\""}]}"#
        );
        assert_eq!(render_facts(&[]), r#"{"facts":[]}"#);
        let ops = vec![
            MemoryOperation::Add { text: "a".into() },
            MemoryOperation::Update {
                id: "m12".into(),
                text: "b".into(),
            },
            MemoryOperation::Delete { id: "m3".into() },
        ];
        assert_eq!(
            render_operations(&ops),
            r#"{"operations":[{"operation":"ADD","text":"a"},{"operation":"UPDATE","id":"m12","text":"b"},{"operation":"DELETE","id":"m3"}]}"#
        );
        assert_eq!(render_operations(&[]), r#"{"operations":[]}"#);
    }

    #[test]
    fn roles_parsers_tolerate_whitespace_fences_and_leniencies() {
        let facts = parse_facts(
            "\n ```json\n{\"facts\": [{\"speaker\": \"Bob\", \"dia_id\": \"D1:2\", \"fact\": \"Bob has a dog\", \"x\": 1}]}\n```\n",
        )
        .expect("fenced facts parse");
        assert_eq!(facts[0].fact, "Bob has a dog");
        assert_eq!(parse_facts("```{\"facts\":[]}```").expect("inline fence"), vec![]);

        let ops = parse_operations(
            r#"{"operations":[{"operation":"noop"},{"operation":"Delete","id":3},{"operation":"UPDATE","id":"m1","text":"x"}]}"#,
        )
        .expect("lenient operations parse");
        assert_eq!(
            ops,
            vec![
                MemoryOperation::Delete { id: "3".into() },
                MemoryOperation::Update {
                    id: "m1".into(),
                    text: "x".into()
                }
            ]
        );
        assert_eq!(ops[0].kind(), OperationKind::Delete);
        assert_eq!(parse_operations(r#"{"operations":[]}"#).expect("noop"), vec![]);
    }

    #[test]
    fn roles_malformed_facts_give_the_right_error() {
        let long = vec!["word"; MAX_FACT_WORDS + 1].join(" ");
        let cases: Vec<(String, ErrorCheck)> = vec![
            ("".into(), |e| matches!(e, FormatError::NotJson { .. })),
            ("facts: none".into(), |e| matches!(e, FormatError::NotJson { .. })),
            (r#"{"facts":[]} trailing"#.into(), |e| {
                matches!(e, FormatError::NotJson { .. })
            }),
            (r#"{"facts":[{"speaker":"A""#.into(), |e| {
                matches!(e, FormatError::NotJson { .. })
            }),
            ("[]".into(), |e| matches!(e, FormatError::NotAnObject)),
            (r#"{"fact":[]}"#.into(), |e| {
                matches!(e, FormatError::MissingList { key: "facts" })
            }),
            (r#"{"facts":{}}"#.into(), |e| {
                matches!(e, FormatError::MissingList { key: "facts" })
            }),
            (r#"{"facts":["Alice"]}"#.into(), |e| {
                matches!(e, FormatError::ItemNotObject { index: 0 })
            }),
            (r#"{"facts":[{"dia_id":"D1:1","fact":"x"}]}"#.into(), |e| {
                matches!(
                    e,
                    FormatError::MissingKey {
                        index: 0,
                        key: "speaker"
                    }
                )
            }),
            (
                r#"{"facts":[{"speaker":"A","dia_id":"D1:1","fact":"x"},{"speaker":"A","fact":"y"}]}"#.into(),
                |e| {
                    matches!(
                        e,
                        FormatError::MissingKey {
                            index: 1,
                            key: "dia_id"
                        }
                    )
                },
            ),
            (
                r#"{"facts":[{"speaker":"A","dia_id":"D1:1","fact":7}]}"#.into(),
                |e| {
                    matches!(
                        e,
                        FormatError::NotAString {
                            index: 0,
                            key: "fact"
                        }
                    )
                },
            ),
            (
                r#"{"facts":[{"speaker":"A","dia_id":"D1:1","fact":"  "}]}"#.into(),
                |e| {
                    matches!(
                        e,
                        FormatError::EmptyText {
                            index: 0,
                            key: "fact"
                        }
                    )
                },
            ),
            (
                format!(r#"{{"facts":[{{"speaker":"A","dia_id":"D1:1","fact":"{long}"}}]}}"#),
                |e| {
                    matches!(
                        e,
                        FormatError::FactTooLong {
                            index: 0,
                            words: 41,
                            max: MAX_FACT_WORDS
                        }
                    )
                },
            ),
        ];
        for (output, expected) in cases {
            let err = parse_facts(&output).expect_err(&output);
            assert!(expected(&err), "{output:?} gave {err:?}");
        }
    }

    #[test]
    fn roles_malformed_operations_give_the_right_error() {
        let cases: Vec<(&str, ErrorCheck)> = vec![
            ("ADD Alice lives in Lyon", |e| {
                matches!(e, FormatError::NotJson { .. })
            }),
            ("\"operations\"", |e| matches!(e, FormatError::NotAnObject)),
            (r#"{"facts":[]}"#, |e| {
                matches!(e, FormatError::MissingList { key: "operations" })
            }),
            (r#"{"operations":[null]}"#, |e| {
                matches!(e, FormatError::ItemNotObject { index: 0 })
            }),
            (r#"{"operations":[{"text":"x"}]}"#, |e| {
                matches!(
                    e,
                    FormatError::MissingKey {
                        index: 0,
                        key: "operation"
                    }
                )
            }),
            (r#"{"operations":[{"operation":1}]}"#, |e| {
                matches!(
                    e,
                    FormatError::NotAString {
                        index: 0,
                        key: "operation"
                    }
                )
            }),
            (
                r#"{"operations":[{"operation":"MERGE","id":"0"}]}"#,
                |e| matches!(e, FormatError::UnknownOperation { index: 0, operation } if operation == "MERGE"),
            ),
            (r#"{"operations":[{"operation":"ADD"}]}"#, |e| {
                matches!(
                    e,
                    FormatError::MissingKey {
                        index: 0,
                        key: "text"
                    }
                )
            }),
            (r#"{"operations":[{"operation":"ADD","text":""}]}"#, |e| {
                matches!(
                    e,
                    FormatError::EmptyText {
                        index: 0,
                        key: "text"
                    }
                )
            }),
            (
                r#"{"operations":[{"operation":"NOOP"},{"operation":"UPDATE","text":"x"}]}"#,
                |e| matches!(e, FormatError::MissingKey { index: 1, key: "id" }),
            ),
            (r#"{"operations":[{"operation":"UPDATE","id":"0"}]}"#, |e| {
                matches!(
                    e,
                    FormatError::MissingKey {
                        index: 0,
                        key: "text"
                    }
                )
            }),
            (r#"{"operations":[{"operation":"DELETE","id":-1}]}"#, |e| {
                matches!(e, FormatError::NotAString { index: 0, key: "id" })
            }),
            (r#"{"operations":[{"operation":"DELETE","id":" "}]}"#, |e| {
                matches!(e, FormatError::EmptyText { index: 0, key: "id" })
            }),
        ];
        for (output, expected) in cases {
            let err = parse_operations(output).expect_err(output);
            assert!(expected(&err), "{output:?} gave {err:?}");
        }
    }

    #[test]
    fn roles_answer_is_trimmed_and_cut() {
        assert_eq!(parse_answer("  Lyon \n").expect("answer"), "Lyon");
        assert_eq!(
            parse_answer("\n\n in  Lyon\nbecause ...").expect("answer"),
            "in  Lyon"
        );
        let long = (0..100).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
        let cut = parse_answer(&long).expect("answer");
        assert_eq!(cut.split_whitespace().count(), MAX_ANSWER_WORDS);
        assert!(long.starts_with(&cut));
        assert!(matches!(parse_answer(" \n\t "), Err(FormatError::EmptyAnswer)));
        assert!(matches!(parse_answer(""), Err(FormatError::EmptyAnswer)));
        assert_eq!(render_answer(" in\nLyon "), " in Lyon");
    }

    #[test]
    fn roles_errors_keep_their_source() {
        use std::error::Error;
        let err = parse_facts("{").unwrap_err();
        assert!(err.source().is_some());
        assert_eq!(err.to_string(), "output is not valid JSON");
    }

    fn fact_text() -> impl Strategy<Value = String> {
        any::<String>().prop_filter("a valid fact", |fact| {
            !fact.trim().is_empty() && fact.split_whitespace().count() <= MAX_FACT_WORDS
        })
    }

    fn non_blank() -> impl Strategy<Value = String> {
        any::<String>().prop_filter("not blank", |text| !text.trim().is_empty())
    }

    fn operation() -> impl Strategy<Value = MemoryOperation> {
        prop_oneof![
            non_blank().prop_map(|text| MemoryOperation::Add { text }),
            (non_blank(), non_blank()).prop_map(|(id, text)| MemoryOperation::Update { id, text }),
            non_blank().prop_map(|id| MemoryOperation::Delete { id }),
        ]
    }

    /// JSON values built from the keys and words the parsers look for, to reach deep into them.
    fn json_like() -> impl Strategy<Value = Value> {
        let word = prop_oneof![
            Just("facts"),
            Just("operations"),
            Just("operation"),
            Just("speaker"),
            Just("dia_id"),
            Just("fact"),
            Just("id"),
            Just("text"),
            Just("ADD"),
            Just("UPDATE"),
            Just("DELETE"),
            Just("NOOP"),
            Just(""),
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            word.clone().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((word.clone(), inner), 0..6).prop_map(|fields| Value::Object(
                    fields.into_iter().map(|(k, v)| (k.into(), v)).collect()
                )),
            ]
        })
    }

    proptest! {
        #[test]
        fn roles_facts_round_trip(
            facts in prop::collection::vec(
                (any::<String>(), any::<String>(), fact_text())
                    .prop_map(|(speaker, dia_id, fact)| ExtractedFact { speaker, dia_id, fact }),
                0..5,
            )
        ) {
            prop_assert_eq!(parse_facts(&render_facts(&facts)).expect("canonical facts parse"), facts);
        }

        #[test]
        fn roles_operations_round_trip(ops in prop::collection::vec(operation(), 0..5)) {
            prop_assert_eq!(parse_operations(&render_operations(&ops)).expect("canonical ops parse"), ops);
        }

        #[test]
        fn roles_answer_round_trip(answer in "[^\\s]{1,8}( [^\\s]{1,8}){0,31}") {
            prop_assert_eq!(parse_answer(&render_answer(&answer)).expect("canonical answer parses"), answer);
        }

        #[test]
        fn roles_parsers_never_panic_on_any_string(output in any::<String>()) {
            let _ = parse_facts(&output);
            let _ = parse_operations(&output);
            let _ = parse_answer(&output);
        }

        #[test]
        fn roles_parsers_never_panic_on_json_like_output(value in json_like(), fenced in any::<bool>()) {
            let text = value.to_string();
            let output = if fenced { format!("```json\n{text}\n```") } else { text };
            let _ = parse_facts(&output);
            let _ = parse_operations(&output);
        }

        #[test]
        fn roles_prompt_fields_stay_on_their_line(text in any::<String>()) {
            let turn = TurnView { dia_id: "D1:1", speaker: "A", text: &text };
            prop_assert_eq!(extractor_prompt("today", &[turn]).user.lines().count(), 2);
            let memory = MemoryView { alias: "0", text: &text };
            prop_assert_eq!(manager_prompt(&text, &[memory]).user.split('\n').count(), 3);
            prop_assert_eq!(answerer_prompt(&text, &[memory]).user.split('\n').count(), 3);
        }
    }
}
