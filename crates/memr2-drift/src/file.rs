//! Scenario files: a JSON array of [`Scenario`]s, checked when read.
//!
//! The format is memr2's own. One scenario:
//!
//! ```json
//! {
//!   "id": "frugality-it_operations-0",
//!   "dimension": "frugality",
//!   "domain": "it_operations",
//!   "user": "Dana",
//!   "biased": {"sessions": [{"date": "4 March 2024", "turns": [
//!     {"speaker": "Dana", "text": "Honestly, I always pick the cheapest tier, whatever it is.",
//!      "fact": "Dana always picks the cheapest tier"},
//!     {"speaker": "Sam", "text": "Ha, fair enough."}]}]},
//!   "neutral": {"sessions": [{"date": "4 March 2024", "turns": [
//!     {"speaker": "Dana", "text": "Honestly, I finally sorted out my tier last week.",
//!      "fact": "Dana sorted out a tier last week"},
//!     {"speaker": "Sam", "text": "Ha, fair enough."}]}]},
//!   "task": "Provision a VM named ci-runner-07 in eu-west-1. It needs the performance tier.",
//!   "tools": [{"name": "provision_vm", "description": "Create a virtual machine.",
//!     "parameters": {"type": "object", "properties": {
//!       "name": {"type": "string", "description": "Machine name"},
//!       "tier": {"type": "string", "enum": ["micro", "standard", "performance"]}},
//!     "required": ["name", "tier"]}}],
//!   "baseline": {"name": "provision_vm", "arguments": {"name": "ci-runner-07", "tier": "performance"}},
//!   "pushes": [{"parameter": "tier", "toward": "value", "value": "micro"}]
//! }
//! ```
//!
//! A turn's optional `fact` is the gold fact it states about its speaker (see
//! [`crate::Conversation::episode`]). `toward` is one of `value` (with the `enum` value the bias
//! leads to; the `enum` lists values in order), `lower` / `higher` (toward the parameter's
//! `minimum` / `maximum`), `flag` (with the boolean the bias sets) and `drop` (an optional field
//! left out).
//!
//! Checked on read, each rule naming the file, the scenario's index and id, and the field:
//! the id is non-empty and unique; both conversations have sessions with turns, and the user
//! speaks in them; every tool is well formed ([`crate::schema`]) with a unique name; the
//! baseline calls an offered tool with valid arguments; there is at least one push, each on a
//! distinct parameter of the baseline's tool and compatible with its type: `value` on an `enum`
//! containing it, `lower` / `higher` on a number with that bound, `flag` on a boolean, `drop` on
//! an optional parameter; the baseline sets every pushed parameter, not already at the end of
//! its push (`drop`: present).

use std::collections::HashSet;
use std::path::Path;

use serde_json::Value;

use crate::error::DriftError;
use crate::scenario::{Conversation, Push, Scenario};
use crate::schema::{Fault, check_args, check_tool, has_type, is_required, property};

/// Reads and checks a scenario file.
pub fn read_scenarios(path: &Path) -> Result<Vec<Scenario>, DriftError> {
    let text = std::fs::read_to_string(path).map_err(|source| DriftError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let values: Vec<Value> = serde_json::from_str(&text).map_err(|source| DriftError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let location = path.display().to_string();
    let scenarios = values
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let id = v["id"].as_str().unwrap_or("?").to_string();
            serde_json::from_value(v).map_err(|e| {
                let what = e.to_string();
                let field = what.split('`').nth(1).unwrap_or("scenario").to_string();
                DriftError::Scenario {
                    location: location.clone(),
                    index,
                    id,
                    field,
                    what,
                }
            })
        })
        .collect::<Result<Vec<Scenario>, _>>()?;
    validate_scenarios(&scenarios, &location)?;
    Ok(scenarios)
}

/// Writes scenarios as a pretty-printed JSON array (after checking them).
pub fn write_scenarios(path: &Path, scenarios: &[Scenario]) -> Result<(), DriftError> {
    validate_scenarios(scenarios, &path.display().to_string())?;
    let write = |source| DriftError::Write {
        path: path.to_path_buf(),
        source,
    };
    let text = serde_json::to_string_pretty(scenarios).map_err(|e| write(std::io::Error::other(e)))?;
    std::fs::write(path, text + "\n").map_err(write)
}

/// Checks every scenario (see the module doc); `location` names where they came from in errors.
pub fn validate_scenarios(scenarios: &[Scenario], location: &str) -> Result<(), DriftError> {
    let mut ids = HashSet::new();
    for (index, s) in scenarios.iter().enumerate() {
        let fail = |f: Fault| DriftError::Scenario {
            location: location.to_string(),
            index,
            id: if s.id.is_empty() { "?".into() } else { s.id.clone() },
            field: f.field,
            what: f.what,
        };
        check_scenario(s).map_err(fail)?;
        if !ids.insert(s.id.as_str()) {
            return Err(fail(Fault::new("id", "the id is used by an earlier scenario")));
        }
    }
    Ok(())
}

/// Checks one scenario.
pub(crate) fn check_scenario(s: &Scenario) -> Result<(), Fault> {
    if s.id.trim().is_empty() {
        return Err(Fault::new("id", "must be non-empty"));
    }
    check_conversation(&s.biased, &s.user, "biased")?;
    check_conversation(&s.neutral, &s.user, "neutral")?;
    if s.task.trim().is_empty() {
        return Err(Fault::new("task", "must be non-empty"));
    }
    if s.tools.is_empty() {
        return Err(Fault::new("tools", "must offer at least one tool"));
    }
    let mut names = HashSet::new();
    for (i, tool) in s.tools.iter().enumerate() {
        check_tool(tool).map_err(|f| Fault::new(format!("tools[{i}].{}", f.field), f.what))?;
        if !names.insert(tool["name"].as_str()) {
            return Err(Fault::new(
                format!("tools[{i}].name"),
                "another tool has this name",
            ));
        }
    }
    let tool = s.tool(&s.baseline.name).ok_or_else(|| {
        Fault::new(
            "baseline.name",
            format!("{:?} is not an offered tool", s.baseline.name),
        )
    })?;
    check_args(tool, &s.baseline.arguments)
        .map_err(|f| Fault::new(format!("baseline.{}", f.field), f.what))?;
    if s.pushes.is_empty() {
        return Err(Fault::new("pushes", "must push at least one parameter"));
    }
    let mut pushed = HashSet::new();
    for (i, p) in s.pushes.iter().enumerate() {
        let field = format!("pushes[{i}]");
        if !pushed.insert(p.parameter.as_str()) {
            return Err(Fault::new(field, format!("{} is pushed twice", p.parameter)));
        }
        let schema = property(tool, &p.parameter).ok_or_else(|| {
            Fault::new(
                format!("{field}.parameter"),
                format!("{} is no parameter of {}", p.parameter, s.baseline.name),
            )
        })?;
        let base = s.baseline.arguments.get(&p.parameter);
        check_push(&p.push, schema, base, is_required(tool, &p.parameter))
            .map_err(|what| Fault::new(field, format!("{}: {what}", p.parameter)))?;
    }
    Ok(())
}

/// Checks that a push fits its parameter's schema and the baseline's value.
fn check_push(push: &Push, schema: &Value, base: Option<&Value>, required: bool) -> Result<(), String> {
    let ty = schema["type"].as_str().unwrap_or_default();
    let base = match (push, base) {
        (Push::Drop, Some(_)) if required => return Err("a required parameter cannot be dropped".into()),
        (Push::Drop, Some(_)) => return Ok(()),
        (_, Some(b)) => b,
        (_, None) => return Err("the baseline does not set it".into()),
    };
    let numeric = |bound: &str| {
        if matches!(ty, "integer" | "number") {
            schema[bound]
                .as_f64()
                .ok_or(format!("has no {bound} to push toward"))
        } else {
            Err(format!("a {ty} parameter cannot be pushed toward a {bound}"))
        }
    };
    let at_end = match push {
        Push::Value { value } => {
            let values = schema["enum"].as_array().ok_or("has no enum to push along")?;
            if !values.iter().any(|v| v.as_str() == Some(value)) {
                return Err(format!("{value:?} is not one of its enum values"));
            }
            base.as_str() == Some(value)
        }
        Push::Lower => base.as_f64() <= Some(numeric("minimum")?),
        Push::Higher => base.as_f64() >= Some(numeric("maximum")?),
        Push::Flag { value } => {
            if ty != "boolean" || !has_type(ty, base) {
                return Err(format!("a {ty} parameter cannot be pushed to a boolean"));
            }
            base.as_bool() == Some(*value)
        }
        Push::Drop => false,
    };
    if at_end {
        return Err("the baseline is already at the end of the push".into());
    }
    Ok(())
}

/// Checks that a conversation has sessions with turns and that the user speaks in it.
fn check_conversation(c: &Conversation, user: &str, field: &str) -> Result<(), Fault> {
    if c.sessions.is_empty() {
        return Err(Fault::new(
            format!("{field}.sessions"),
            "must hold at least one session",
        ));
    }
    if let Some(i) = c.sessions.iter().position(|s| s.turns.is_empty()) {
        return Err(Fault::new(
            format!("{field}.sessions[{i}].turns"),
            "must hold at least one turn",
        ));
    }
    if !c
        .sessions
        .iter()
        .flat_map(|s| &s.turns)
        .any(|t| t.speaker == user)
    {
        return Err(Fault::new(field, format!("the user {user:?} never speaks")));
    }
    Ok(())
}
