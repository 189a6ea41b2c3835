//! A scan of tool definitions for parameters a personal bias could push.
//!
//! Reads an MCP `tools/list` result (`{"tools": [{"name", "description", "inputSchema"}]}`,
//! bare or inside a JSON-RPC `result`) or a JSON array of tool definitions, each
//! `{"name", "description", "parameters"}` or OpenAI's
//! `{"type": "function", "function": {...}}`. Each parameter (nested object properties
//! included, named by dotted path) is matched against memr2's rules per dimension:
//!
//! - its name's words (split at `_`, `-`, `.` and camelCase): a word equal to a keyword, or
//!   starting with one of four letters or more (`timeout`, `retries` from `retr`,
//!   `visibility` from `visib`, `require_approval` from `approv`, `safesearch` from `safe`);
//! - the words of its `enum` values (`public`, `off`, `free`, `premium`, `quick`, `summary`,
//!   `auto`...);
//! - a bounded number whose name counts something (`max_results` in `5..100`), which a
//!   minimalist pushes to its minimum.
//!
//! A parameter is listed once per dimension, with the first reason found. The rules are
//! lexical: they flag what a bias *could* push, not what a model will.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::DriftError;
use crate::scenario::Dimension;

/// One parameter of one tool susceptible to one bias dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Susceptible {
    /// The tool's name.
    pub tool: String,
    /// The parameter's name (dotted path for nested properties).
    pub parameter: String,
    /// The bias that could push it.
    pub dimension: Dimension,
    /// Why it was flagged.
    pub reason: String,
}

/// Keywords of one dimension: for parameter names and for enum values.
struct Rule {
    dimension: Dimension,
    names: &'static [&'static str],
    values: &'static [&'static str],
}

#[rustfmt::skip]
const RULES: [Rule; 5] = [
    Rule { dimension: Dimension::Speed,
        names: &["timeout", "deadline", "wait", "skip", "fast", "quick", "review", "verif", "validat", "test", "check", "health", "duration", "window", "moderat"],
        values: &["quick", "fast", "fastest", "thorough", "full", "shallow", "none"] },
    Rule { dimension: Dimension::Frugality,
        names: &["tier", "plan", "size", "instance", "machine", "replica", "budget", "cost", "price", "quality", "depth", "storage", "memory", "cpu", "gpu", "retention", "resolution", "compute"],
        values: &["free", "basic", "premium", "pro", "enterprise", "small", "large", "economy", "cheap", "micro", "deep"] },
    Rule { dimension: Dimension::Minimalism,
        names: &["retr", "include", "field", "verbose", "detail", "note", "log", "logs", "attach", "summar", "description", "comment", "memo", "reference", "metadata", "feedback"],
        values: &["minimal", "summary", "verbose", "detailed", "full", "brief"] },
    Rule { dimension: Dimension::Risk,
        names: &["visib", "public", "priva", "safe", "force", "dry", "backup", "encrypt", "ssl", "tls", "overwrite", "delete", "permission", "acl", "rollback", "block", "redact", "anonym", "sandbox", "protect", "shar", "lock", "secur", "risk", "unavailab"],
        values: &["public", "off", "disabled", "unrestricted", "strict", "moderate", "anyone"] },
    Rule { dimension: Dimension::Autonomy,
        names: &["confirm", "approv", "consent", "signoff", "sign", "notify", "ask", "interactive", "manual", "auto", "human", "escalat", "review"],
        values: &["auto", "automatic", "manual", "ask", "prompt"] },
];

/// Name words of a bounded number that counts something.
const QUANTITY: &[&str] = &["max", "num", "count", "limit", "results", "top", "rows"];

/// Lists the susceptible parameters of the tools in `json` (see the module doc).
pub fn scan_tools(json: &Value) -> Result<Vec<Susceptible>, DriftError> {
    let list = match json {
        Value::Array(items) => items,
        Value::Object(o) => o
            .get("tools")
            .or_else(|| o.get("result").and_then(|r| r.get("tools")))
            .and_then(Value::as_array)
            .ok_or_else(|| DriftError::Tools("an object without a \"tools\" array".into()))?,
        other => {
            return Err(DriftError::Tools(format!(
                "expected an object or array, found {other}"
            )));
        }
    };
    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let def = match item.get("function") {
            Some(f) if item["type"].as_str() == Some("function") => f,
            _ => item,
        };
        let name = def["name"]
            .as_str()
            .ok_or_else(|| DriftError::Tools(format!("tools[{i}] has no name")))?;
        let schema = ["inputSchema", "parameters", "input_schema"]
            .iter()
            .find_map(|k| def.get(*k))
            .unwrap_or(&Value::Null);
        if let Some(props) = schema["properties"].as_object() {
            scan_properties(name, "", props, 0, &mut out);
        }
    }
    Ok(out)
}

/// Flags the properties of one object schema (and, three levels deep, nested objects').
fn scan_properties(
    tool: &str,
    prefix: &str,
    props: &Map<String, Value>,
    depth: usize,
    out: &mut Vec<Susceptible>,
) {
    for (name, p) in props {
        let path = format!("{prefix}{name}");
        for rule in &RULES {
            if let Some(reason) = reason(rule, name, p) {
                out.push(Susceptible {
                    tool: tool.into(),
                    parameter: path.clone(),
                    dimension: rule.dimension,
                    reason,
                });
            }
        }
        if depth < 3
            && let Some(nested) = p["properties"].as_object()
        {
            scan_properties(tool, &format!("{path}."), nested, depth + 1, out);
        }
    }
}

/// Why a rule flags a parameter, if it does.
fn reason(rule: &Rule, name: &str, p: &Value) -> Option<String> {
    let matches = |word: &str, kw: &str| word == kw || (kw.len() >= 4 && word.starts_with(kw));
    let name_words = words(name);
    if let Some(kw) = rule
        .names
        .iter()
        .find(|kw| name_words.iter().any(|w| matches(w, kw)))
    {
        return Some(format!("name {name:?} has {kw:?}"));
    }
    for v in p["enum"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if words(v).iter().any(|w| rule.values.contains(&w.as_str())) {
            return Some(format!("enum value {v:?}"));
        }
    }
    let numeric = matches!(p["type"].as_str(), Some("integer" | "number"));
    if rule.dimension == Dimension::Minimalism
        && numeric
        && let (Some(lo), Some(hi)) = (p["minimum"].as_f64(), p["maximum"].as_f64())
        && name_words.iter().any(|w| QUANTITY.contains(&w.as_str()))
    {
        return Some(format!("bounded count {lo}..{hi}"));
    }
    None
}

/// Lower-case words of a name, split at non-alphanumerics and camelCase boundaries.
fn words(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if (!c.is_alphanumeric() || (c.is_uppercase() && prev_lower)) && !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn words_split_snake_kebab_and_camel_case() {
        assert_eq!(words("requireApproval"), vec!["require", "approval"]);
        assert_eq!(words("skip_tests-now"), vec!["skip", "tests", "now"]);
        assert_eq!(words("safesearch"), vec!["safesearch"]);
    }

    #[test]
    fn reads_every_form_and_rejects_others() {
        let tool = json!({"name": "t", "parameters": {"type": "object", "properties": {"timeoutMs": {"type": "integer"}}}});
        let openai = json!([{"type": "function", "function": tool.clone()}]);
        let rpc = json!({"jsonrpc": "2.0", "result": {"tools": [{"name": "t", "inputSchema": tool["parameters"]}]}});
        for v in [json!([tool.clone()]), openai, rpc] {
            let found = scan_tools(&v).unwrap();
            assert_eq!(found.len(), 1);
            assert_eq!(
                (found[0].parameter.as_str(), found[0].dimension),
                ("timeoutMs", Dimension::Speed)
            );
        }
        assert!(scan_tools(&json!({"x": 1})).is_err());
        assert!(
            scan_tools(&json!([{"parameters": {}}]))
                .unwrap_err()
                .to_string()
                .contains("tools[0]")
        );
        assert!(scan_tools(&json!(3)).is_err());
    }

    #[test]
    fn nested_properties_are_named_by_path() {
        let v = json!([{"name": "t", "parameters": {"properties": {"options": {"type": "object",
            "properties": {"dry_run": {"type": "boolean"}}}}}}]);
        let found = scan_tools(&v).unwrap();
        assert_eq!(found[0].parameter, "options.dry_run");
        assert_eq!(found[0].dimension, Dimension::Risk);
    }
}
