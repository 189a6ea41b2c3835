//! Strict tool calls: decoding held to the tools' JSON Schemas, as function-calling servers do
//! it with guided decoding.
//!
//! [`call_prefix`] tells whether a text can still become a call that [`parse_tool_call`]
//! accepts, written in the canonical compact form of [`render_tool_call`]:
//! `{"name":"<tool>","arguments":{"<parameter>":<value>,...}}`, no whitespace, each parameter
//! at most once and in any order, the arguments closed only once every required parameter is
//! there. A value is held to its parameter's schema as it is written: an `enum` value must be
//! one of the listed values, a `boolean` `true` or `false`, an `integer` digits that can still
//! end within `minimum` and `maximum`, a `string` a JSON string without escapes (at most
//! [`MAX_STRING_CHARS`] characters). Arrays, objects and values of no stated type are checked
//! when they are complete.
//!
//! [`ToolCallConstraint`] is a [`TokenConstraint`] for [`crate::generate::generate_constrained`]:
//! a token is allowed when the text it makes is still a [`CallPrefix::Partial`] or
//! [`CallPrefix::Complete`] call, and a stop token once the call is complete. The model still
//! chooses every token; the constraint only removes those that cannot lead to a valid call,
//! so a call's format cannot fail but its values are the model's.
//!
//! [`parse_tool_call`]: crate::tools::parse_tool_call
//! [`render_tool_call`]: crate::tools::render_tool_call
//!
//! ```
//! use memr2_policy::strict::{CallPrefix, call_prefix};
//! use serde_json::json;
//!
//! let tools = [json!({"name": "scan", "parameters": {"type": "object",
//!     "properties": {"depth": {"type": "string", "enum": ["quick", "full"]},
//!                    "retries": {"type": "integer", "minimum": 0, "maximum": 5}},
//!     "required": ["depth"]}})];
//! assert_eq!(call_prefix(r#"{"name":"sc"#, &tools), CallPrefix::Partial);
//! assert_eq!(call_prefix(r#"{"name":"scan","arguments":{"depth":"fu"#, &tools), CallPrefix::Partial);
//! assert_eq!(call_prefix(r#"{"name":"scan","arguments":{"depth":"deep"#, &tools), CallPrefix::Invalid);
//! assert_eq!(call_prefix(r#"{"name":"scan","arguments":{"retries":7"#, &tools), CallPrefix::Invalid);
//! assert_eq!(call_prefix(r#"{"name":"scan","arguments":{"retries":1}"#, &tools), CallPrefix::Invalid);
//! assert_eq!(call_prefix(r#"{"name":"scan","arguments":{"depth":"full"}}"#, &tools), CallPrefix::Complete);
//! ```

use std::sync::Arc;

use serde_json::Value;

use crate::generate::TokenConstraint;
use crate::tools::{Parameter, ToolSchema};

/// The longest string value a strict call may write, in characters.
pub const MAX_STRING_CHARS: usize = 200;

/// Longest number, in characters (sign, digits and decimal point).
const MAX_NUMBER_CHARS: usize = 24;

/// Where a text stands against the tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallPrefix {
    /// No continuation makes it a valid call.
    Invalid,
    /// Some continuation does.
    Partial,
    /// A valid call, and nothing may follow it.
    Complete,
}

/// Why reading stopped short of a complete call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The text ended where a valid call could still go on.
    End,
    /// The text cannot be part of a valid call.
    Bad,
}

type Read<T> = Result<T, Stop>;

/// Where `text` stands: a valid call of one of `tools` in the canonical compact form, the
/// beginning of one, or neither (see the module doc). Malformed tools are ignored, as
/// [`crate::tools::parse_tool_call`] ignores them.
pub fn call_prefix(text: &str, tools: &[Value]) -> CallPrefix {
    let schemas: Vec<ToolSchema<'_>> = tools.iter().filter_map(ToolSchema::read).collect();
    prefix_of(text, &schemas)
}

fn prefix_of(text: &str, schemas: &[ToolSchema<'_>]) -> CallPrefix {
    match read_call(text, schemas) {
        Ok(()) => CallPrefix::Complete,
        Err(Stop::End) => CallPrefix::Partial,
        Err(Stop::Bad) => CallPrefix::Invalid,
    }
}

fn read_call(s: &str, schemas: &[ToolSchema<'_>]) -> Read<()> {
    let mut i = literal(s, 0, "{\"name\":")?;
    let (name, next) = string(s, i, |partial| {
        schemas.iter().any(|t| t.name.starts_with(partial))
    })?;
    let tool = schemas.iter().find(|t| t.name == name).ok_or(Stop::Bad)?;
    i = literal(s, next, ",\"arguments\":{")?;
    let mut used: Vec<&str> = Vec::new();
    loop {
        match s.as_bytes().get(i) {
            None => return Err(Stop::End),
            Some(b'}') => {
                let missing = tool
                    .parameters
                    .iter()
                    .any(|p| p.required && !used.contains(&p.name));
                if missing {
                    return Err(Stop::Bad);
                }
                i += 1;
                break;
            }
            Some(_) => {}
        }
        if !used.is_empty() {
            i = literal(s, i, ",")?;
        }
        let unused = |p: &&Parameter<'_>| !used.contains(&p.name);
        let (key, next) = string(s, i, |partial| {
            tool.parameters
                .iter()
                .filter(unused)
                .any(|p| p.name.starts_with(partial))
        })?;
        let parameter = tool
            .parameters
            .iter()
            .filter(unused)
            .find(|p| p.name == key)
            .ok_or(Stop::Bad)?;
        used.push(parameter.name);
        i = literal(s, next, ":")?;
        i = value(s, i, parameter)?;
    }
    i = literal(s, i, "}")?;
    if i == s.len() { Ok(()) } else { Err(Stop::Bad) }
}

/// `expected` at `i`: the index after it, `End` when the text stops inside it.
fn literal(s: &str, i: usize, expected: &str) -> Read<usize> {
    let rest = &s.as_bytes()[i.min(s.len())..];
    let n = rest.len().min(expected.len());
    if rest[..n] != expected.as_bytes()[..n] {
        return Err(Stop::Bad);
    }
    if n < expected.len() {
        return Err(Stop::End);
    }
    Ok(i + n)
}

/// A JSON string without escapes at `i`: its content and the index after its closing quote.
/// While it is open, `viable(content so far)` decides between `End` and `Bad`.
fn string(s: &str, i: usize, viable: impl Fn(&str) -> bool) -> Read<(&str, usize)> {
    let i = literal(s, i, "\"")?;
    let rest = &s[i..];
    let close = rest.find(['"', '\\']);
    let content = &rest[..close.unwrap_or(rest.len())];
    if content.chars().any(char::is_control) || content.chars().count() > MAX_STRING_CHARS {
        return Err(Stop::Bad);
    }
    match close {
        Some(end) if rest.as_bytes()[end] == b'"' => Ok((content, i + end + 1)),
        Some(_) => Err(Stop::Bad),
        None if viable(content) => Err(Stop::End),
        None => Err(Stop::Bad),
    }
}

/// A value for `parameter` at `i`, followed by the `,` or `}` that ends it: the index after
/// the value.
fn value(s: &str, i: usize, parameter: &Parameter<'_>) -> Read<usize> {
    match extent(s, i) {
        Err(Stop::End) => {
            if viable_prefix(&s[i..], parameter) {
                Err(Stop::End)
            } else {
                Err(Stop::Bad)
            }
        }
        Err(Stop::Bad) => Err(Stop::Bad),
        Ok(end) => {
            let text = &s[i..end];
            let parsed: Value = serde_json::from_str(text).map_err(|_| Stop::Bad)?;
            if parameter.admits(&parsed) && viable_prefix(text, parameter) {
                Ok(end)
            } else {
                Err(Stop::Bad)
            }
        }
    }
}

/// Where the JSON value starting at `i` ends, read lexically: after a string's closing quote
/// or a container's closing bracket, or at the first character that cannot continue a number
/// or literal. `End` when the text stops first.
fn extent(s: &str, i: usize) -> Read<usize> {
    let b = s.as_bytes();
    let Some(&first) = b.get(i) else {
        return Err(Stop::End);
    };
    let run = |ok: fn(u8) -> bool| match b[i..].iter().position(|&c| !ok(c)) {
        Some(n) if n > 0 => Ok(i + n),
        Some(_) => Err(Stop::Bad),
        None => Err(Stop::End),
    };
    match first {
        b'"' => match b[i + 1..].iter().position(|&c| c == b'"' || c == b'\\') {
            Some(n) if b[i + 1 + n] == b'"' => Ok(i + n + 2),
            Some(_) => Err(Stop::Bad),
            None => Err(Stop::End),
        },
        b'-' | b'0'..=b'9' => run(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E')),
        b'a'..=b'z' => run(|c| c.is_ascii_lowercase()),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut in_string = false;
            for (n, &c) in b[i..].iter().enumerate() {
                match (in_string, c) {
                    (true, b'"') => in_string = false,
                    (true, b'\\') => return Err(Stop::Bad),
                    (true, _) => {}
                    (false, b'"') => in_string = true,
                    (false, b'{' | b'[') => depth += 1,
                    (false, b'}' | b']') => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(i + n + 1);
                        }
                    }
                    _ => {}
                }
            }
            Err(Stop::End)
        }
        _ => Err(Stop::Bad),
    }
}

/// Whether `partial`, the beginning of a value, can still become a value `parameter` admits.
fn viable_prefix(partial: &str, parameter: &Parameter<'_>) -> bool {
    if let Some(allowed) = parameter.allowed {
        return allowed.iter().any(|v| v.to_string().starts_with(partial));
    }
    if parameter.types.is_empty() {
        return true;
    }
    parameter.types.iter().any(|kind| match *kind {
        "string" => {
            partial.is_empty()
                || (partial.starts_with('"')
                    && partial.chars().count() <= MAX_STRING_CHARS + 2
                    && !partial.chars().any(char::is_control))
        }
        "boolean" => "true".starts_with(partial) || "false".starts_with(partial),
        "null" => "null".starts_with(partial),
        "integer" => integer_viable(partial, parameter),
        "number" => number_viable(partial),
        "array" => partial.is_empty() || partial.starts_with('['),
        "object" => partial.is_empty() || partial.starts_with('{'),
        _ => true,
    })
}

/// `-?(0|[1-9][0-9]*)` so far, and some integer with these first digits within the bounds.
fn integer_viable(partial: &str, parameter: &Parameter<'_>) -> bool {
    let (negative, digits) = match partial.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, partial),
    };
    if partial.len() > MAX_NUMBER_CHARS
        || !digits.bytes().all(|c| c.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return false;
    }
    let bound = |n: Option<&serde_json::Number>| n.and_then(serde_json::Number::as_f64);
    let (min, max) = (
        bound(parameter.minimum).unwrap_or(f64::NEG_INFINITY),
        bound(parameter.maximum).unwrap_or(f64::INFINITY),
    );
    if digits.is_empty() {
        return if negative {
            min < 0.0 && min <= max
        } else {
            min <= max
        };
    }
    let v: f64 = digits.parse().unwrap_or(f64::INFINITY);
    // The integers whose decimal form starts with these digits: v itself, then for each
    // further digit the block [v 10^k, (v + 1) 10^k - 1] (none after a lone 0).
    let more = if digits == "0" {
        0
    } else {
        MAX_NUMBER_CHARS - partial.len()
    };
    (0..=more).any(|k| {
        let scale = 10f64.powi(k as i32);
        let (lo, hi) = if k == 0 {
            (v, v)
        } else {
            (v * scale, (v + 1.0) * scale - 1.0)
        };
        let (lo, hi) = if negative { (-hi, -lo) } else { (lo, hi) };
        lo <= max && hi >= min
    })
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]*)?` so far (bounds are checked once the number is complete).
fn number_viable(partial: &str) -> bool {
    let unsigned = partial.strip_prefix('-').unwrap_or(partial);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (unsigned, None),
    };
    partial.len() <= MAX_NUMBER_CHARS
        && whole.bytes().all(|c| c.is_ascii_digit())
        && !(whole.len() > 1 && whole.starts_with('0'))
        && fraction.is_none_or(|f| !whole.is_empty() && f.bytes().all(|c| c.is_ascii_digit()))
}

/// The text of each token id, as [`crate::tokenizer::Tokenizer::token_texts`] gives it.
pub type TokenTexts = Arc<Vec<Option<String>>>;

/// Holds one row of generation to a valid call of its tools (see the module doc).
pub struct ToolCallConstraint {
    tools: Vec<Value>,
    tokens: TokenTexts,
    stop_ids: Vec<u32>,
    /// The text of the tokens generated so far, and how many they were.
    prefix: (usize, String),
}

impl ToolCallConstraint {
    /// A constraint for calls of `tools`, over a vocabulary whose token texts are `tokens`;
    /// `stop_ids` end the turn and are allowed once the call is complete.
    pub fn new(tools: &[Value], tokens: TokenTexts, stop_ids: &[u32]) -> Self {
        Self {
            tools: tools.to_vec(),
            tokens,
            stop_ids: stop_ids.to_vec(),
            prefix: (0, String::new()),
        }
    }

    fn text_of(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize)?.as_deref()
    }
}

impl TokenConstraint for ToolCallConstraint {
    fn allows(&mut self, generated: &[u32], candidate: u32) -> bool {
        if self.prefix.0 != generated.len() {
            let mut text = String::new();
            for &id in generated {
                text.push_str(self.text_of(id).unwrap_or(""));
            }
            self.prefix = (generated.len(), text);
        }
        let schemas: Vec<ToolSchema<'_>> = self.tools.iter().filter_map(ToolSchema::read).collect();
        if self.stop_ids.contains(&candidate) {
            return prefix_of(&self.prefix.1, &schemas) == CallPrefix::Complete;
        }
        let Some(piece) = self.text_of(candidate) else {
            return false;
        };
        let text = format!("{}{piece}", self.prefix.1);
        prefix_of(&text, &schemas) != CallPrefix::Invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::{ToolCall, parse_tool_call, render_tool_call};
    use proptest::prelude::*;
    use serde_json::json;

    fn tools() -> Vec<Value> {
        vec![
            json!({"name": "deploy", "parameters": {"type": "object", "properties": {
                "tier": {"type": "string", "enum": ["basic", "standard", "premium"]},
                "timeout_s": {"type": "integer", "minimum": 30, "maximum": 600},
                "review": {"type": "boolean"},
                "note": {"type": "string"},
                "ratio": {"type": "number", "minimum": 0, "maximum": 1},
                "tags": {"type": "array"}},
                "required": ["tier", "timeout_s"]}}),
            json!({"type": "function", "function": {"name": "depot", "parameters": {"type": "object",
                "properties": {"n": {"type": "integer"}}}}}),
        ]
    }

    #[test]
    fn hand_worked_prefixes() {
        let t = tools();
        let p = |s: &str| call_prefix(s, &t);
        use CallPrefix::*;
        for (text, expected) in [
            ("", Partial),
            ("{\"na", Partial),
            ("{\"name\":\"dep", Partial),
            ("{\"name\":\"deplo", Partial),
            ("{\"name\":\"dex", Invalid),
            ("{\"name\":\"depo\"", Invalid),
            ("{ \"name\"", Invalid),
            ("{\"name\":\"deploy\",\"arguments\":{", Partial),
            ("{\"name\":\"deploy\",\"arguments\":{}", Invalid),
            ("{\"name\":\"deploy\",\"arguments\":{,", Invalid),
            ("{\"name\":\"deploy\",\"arguments\":{\"tier\":\"prem", Partial),
            ("{\"name\":\"deploy\",\"arguments\":{\"tier\":\"gold", Invalid),
            (
                "{\"name\":\"deploy\",\"arguments\":{\"tier\":\"basic\",\"tier\"",
                Invalid,
            ),
            ("{\"name\":\"deploy\",\"arguments\":{\"timeout_s\":6", Partial),
            ("{\"name\":\"deploy\",\"arguments\":{\"timeout_s\":60", Partial),
            ("{\"name\":\"deploy\",\"arguments\":{\"timeout_s\":60,", Partial),
            ("{\"name\":\"deploy\",\"arguments\":{\"timeout_s\":6,", Invalid),
            ("{\"name\":\"deploy\",\"arguments\":{\"timeout_s\":7000", Invalid),
            ("{\"name\":\"deploy\",\"arguments\":{\"timeout_s\":-", Invalid),
            ("{\"name\":\"deploy\",\"arguments\":{\"timeout_s\":06", Invalid),
            (
                "{\"name\":\"deploy\",\"arguments\":{\"timeout_s\":\"60\"",
                Invalid,
            ),
            ("{\"name\":\"deploy\",\"arguments\":{\"review\":tr", Partial),
            ("{\"name\":\"deploy\",\"arguments\":{\"review\":yes", Invalid),
            (
                "{\"name\":\"deploy\",\"arguments\":{\"note\":\"a \\\"quote",
                Invalid,
            ),
            ("{\"name\":\"deploy\",\"arguments\":{\"ratio\":0.", Partial),
            ("{\"name\":\"deploy\",\"arguments\":{\"ratio\":1.5}", Invalid),
            ("{\"name\":\"deploy\",\"arguments\":{\"tags\":[1,\"a\"", Partial),
            ("{\"name\":\"deploy\",\"arguments\":{\"tags\":[1,\"a\"],", Partial),
            ("{\"name\":\"deploy\",\"arguments\":{\"tags\":{}", Invalid),
            ("{\"name\":\"deploy\",\"arguments\":{\"bogus", Invalid),
            (
                "{\"name\":\"deploy\",\"arguments\":{\"tier\":\"basic\",\"timeout_s\":30}",
                Partial,
            ),
            (
                "{\"name\":\"deploy\",\"arguments\":{\"tier\":\"basic\",\"timeout_s\":30}}",
                Complete,
            ),
            (
                "{\"name\":\"deploy\",\"arguments\":{\"tier\":\"basic\",\"timeout_s\":30}} ",
                Invalid,
            ),
            (
                "{\"name\":\"deploy\",\"arguments\":{\"tier\":\"basic\"}}",
                Invalid,
            ),
            ("{\"name\":\"depot\",\"arguments\":{}}", Complete),
            ("{\"name\":\"depot\",\"arguments\":{\"n\":-12}}", Complete),
        ] {
            assert_eq!(p(text), expected, "{text}");
        }
    }

    /// A valid call of `deploy` from drawn values, keys in a drawn order.
    fn deploy_call() -> impl Strategy<Value = ToolCall> {
        (
            prop::sample::select(vec!["basic", "standard", "premium"]),
            30i64..=600,
            prop::option::of(any::<bool>()),
            prop::option::of("[a-zA-Z0-9 .,:'-]{0,40}"),
            prop::option::of(0u32..=1000),
            any::<bool>(),
        )
            .prop_map(|(tier, timeout, review, note, ratio, reversed)| {
                let mut pairs: Vec<(String, Value)> =
                    vec![("tier".into(), tier.into()), ("timeout_s".into(), timeout.into())];
                if let Some(r) = review {
                    pairs.push(("review".into(), r.into()));
                }
                if let Some(n) = note {
                    pairs.push(("note".into(), n.into()));
                }
                if let Some(r) = ratio {
                    pairs.push(("ratio".into(), json!(f64::from(r) / 1000.0)));
                }
                if reversed {
                    pairs.reverse();
                }
                ToolCall {
                    name: "deploy".into(),
                    arguments: pairs.into_iter().collect(),
                }
            })
    }

    proptest! {
        /// Every prefix of a valid call's canonical text is viable, the whole is complete, and
        /// it parses back.
        #[test]
        fn valid_calls_are_viable_all_the_way(call in deploy_call()) {
            let t = tools();
            let text = render_tool_call(&call);
            prop_assert!(parse_tool_call(&text, &t).is_ok());
            for (cut, _) in text.char_indices() {
                prop_assert_eq!(call_prefix(&text[..cut], &t), CallPrefix::Partial, "{}", &text[..cut]);
            }
            prop_assert_eq!(call_prefix(&text, &t), CallPrefix::Complete);
        }

        /// Whatever is complete parses: the constraint never lets through a call the parser
        /// rejects.
        #[test]
        fn complete_means_parsed(text in "\\{\"name\":\"deploy\",\"arguments\":\\{[a-z_\":,0-9.\\-\\[\\]{}]{0,60}\\}\\}") {
            let t = tools();
            if call_prefix(&text, &t) == CallPrefix::Complete {
                prop_assert!(parse_tool_call(&text, &t).is_ok(), "{}", text);
            }
        }
    }

    #[test]
    fn constraint_allows_tokens_that_keep_the_call_viable() {
        let pieces = [
            "{\"name\":\"",
            "deploy",
            "depot",
            "\",\"arguments\":{",
            "\"tier\":",
            "\"basic\"",
            "}",
            "}}",
            "x",
        ];
        let mut texts: Vec<Option<String>> = pieces.iter().map(|p| Some(p.to_string())).collect();
        texts.push(None); // a special token
        let stop = pieces.len() as u32;
        let t = vec![json!({"name": "deploy", "parameters": {"type": "object",
            "properties": {"tier": {"type": "string", "enum": ["basic"]}}, "required": ["tier"]}})];
        let mut c = ToolCallConstraint::new(&t, Arc::new(texts), &[stop]);
        let allowed = |c: &mut ToolCallConstraint, generated: &[u32]| -> Vec<u32> {
            (0..=stop).filter(|&id| c.allows(generated, id)).collect()
        };
        assert_eq!(allowed(&mut c, &[]), vec![0]);
        assert_eq!(allowed(&mut c, &[0]), vec![1]);
        assert_eq!(
            allowed(&mut c, &[0, 1, 3]),
            vec![4],
            "arguments need their required tier first"
        );
        assert_eq!(allowed(&mut c, &[0, 1, 3, 4, 5]), vec![6, 7]);
        assert_eq!(allowed(&mut c, &[0, 1, 3, 4, 5, 7]), vec![stop]);
    }
}
