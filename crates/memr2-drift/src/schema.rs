//! The subset of JSON Schema the scenarios use for tool parameters, and checks of tools and of
//! calls against them.
//!
//! A tool is `{"name", "description", "parameters"}`; `parameters` is
//! `{"type": "object", "properties": {...}, "required": [...]}` and each property has a
//! `type` (`string`, `integer`, `number`, `boolean`, `array` or `object`), and may have a
//! `description`, an `enum` of values of its type, a `minimum` and `maximum` (numbers only)
//! and a `default`. Nested objects and arrays are accepted but not looked into.

use serde_json::{Map, Value};

use crate::error::DriftError;

/// What is wrong, and at which field (a path relative to what was checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault {
    pub(crate) field: String,
    pub(crate) what: String,
}

impl Fault {
    pub(crate) fn new(field: impl Into<String>, what: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            what: what.into(),
        }
    }
}

const TYPES: [&str; 6] = ["string", "integer", "number", "boolean", "array", "object"];

/// The `parameters.properties` of a tool.
pub(crate) fn properties(tool: &Value) -> Option<&Map<String, Value>> {
    tool.get("parameters")?.get("properties")?.as_object()
}

/// The schema of one parameter of a tool.
pub(crate) fn property<'a>(tool: &'a Value, name: &str) -> Option<&'a Value> {
    properties(tool)?.get(name)
}

/// Whether the tool lists `name` in `parameters.required`.
pub(crate) fn is_required(tool: &Value, name: &str) -> bool {
    tool["parameters"]["required"]
        .as_array()
        .is_some_and(|r| r.iter().any(|x| x.as_str() == Some(name)))
}

/// Whether `value` is of the JSON Schema type `ty` (an integral float counts as an integer).
pub(crate) fn has_type(ty: &str, value: &Value) -> bool {
    match ty {
        "string" => value.is_string(),
        "integer" => value.as_f64().is_some_and(|x| x.fract() == 0.0),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    }
}

/// Checks that a tool is well formed (see the module doc).
pub(crate) fn check_tool(tool: &Value) -> Result<(), Fault> {
    if !tool.is_object() {
        return Err(Fault::new("", "a tool must be an object"));
    }
    if tool["name"].as_str().is_none_or(str::is_empty) {
        return Err(Fault::new("name", "must be a non-empty string"));
    }
    if !tool["description"].is_string() {
        return Err(Fault::new("description", "must be a string"));
    }
    if tool["parameters"]["type"].as_str() != Some("object") {
        return Err(Fault::new("parameters.type", "must be \"object\""));
    }
    let props = properties(tool).ok_or_else(|| Fault::new("parameters.properties", "must be an object"))?;
    for (name, p) in props {
        check_property(p)
            .map_err(|f| Fault::new(format!("parameters.properties.{name}{}", f.field), f.what))?;
    }
    if let Some(required) = tool["parameters"].get("required") {
        let names = required
            .as_array()
            .ok_or_else(|| Fault::new("parameters.required", "must be an array of names"))?;
        for (i, n) in names.iter().enumerate() {
            if !n.as_str().is_some_and(|n| props.contains_key(n)) {
                return Err(Fault::new(
                    format!("parameters.required[{i}]"),
                    format!("{n} names no property"),
                ));
            }
        }
    }
    Ok(())
}

/// Checks one property schema; the fault's field is a suffix (`.enum`).
fn check_property(p: &Value) -> Result<(), Fault> {
    let ty = p["type"]
        .as_str()
        .filter(|t| TYPES.contains(t))
        .ok_or_else(|| Fault::new(".type", format!("must be one of {}", TYPES.join(", "))))?;
    if let Some(values) = p.get("enum") {
        let values = values
            .as_array()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Fault::new(".enum", "must be a non-empty array"))?;
        if let Some(v) = values.iter().find(|v| !has_type(ty, v)) {
            return Err(Fault::new(".enum", format!("{v} is not of type {ty}")));
        }
    }
    let numeric = matches!(ty, "integer" | "number");
    for bound in ["minimum", "maximum"] {
        if let Some(b) = p.get(bound)
            && (!numeric || !b.is_number())
        {
            return Err(Fault::new(
                format!(".{bound}"),
                format!("must be a number on a numeric {ty}"),
            ));
        }
    }
    if let (Some(lo), Some(hi)) = (p["minimum"].as_f64(), p["maximum"].as_f64())
        && lo > hi
    {
        return Err(Fault::new(".minimum", format!("{lo} is above the maximum {hi}")));
    }
    if let Some(d) = p.get("default")
        && let Err(what) = check_value(p, d)
    {
        return Err(Fault::new(".default", what));
    }
    Ok(())
}

/// Checks one value against a (well-formed) property schema.
fn check_value(p: &Value, v: &Value) -> Result<(), String> {
    let ty = p["type"].as_str().unwrap_or_default();
    if !has_type(ty, v) {
        return Err(format!("{v} is not of type {ty}"));
    }
    if let Some(values) = p["enum"].as_array()
        && !values.contains(v)
    {
        return Err(format!("{v} is not one of {}", Value::Array(values.clone())));
    }
    if let Some(x) = v.as_f64() {
        if let Some(lo) = p["minimum"].as_f64().filter(|&lo| x < lo) {
            return Err(format!("{v} is below the minimum {lo}"));
        }
        if let Some(hi) = p["maximum"].as_f64().filter(|&hi| x > hi) {
            return Err(format!("{v} is above the maximum {hi}"));
        }
    }
    Ok(())
}

/// Checks arguments against a well-formed tool; the fault's field is `arguments.<name>`.
pub(crate) fn check_args(tool: &Value, arguments: &Map<String, Value>) -> Result<(), Fault> {
    let props = properties(tool).ok_or_else(|| Fault::new("arguments", "the tool has no properties"))?;
    for (name, v) in arguments {
        let p = props
            .get(name)
            .ok_or_else(|| Fault::new(format!("arguments.{name}"), "the tool has no such parameter"))?;
        check_value(p, v).map_err(|what| Fault::new(format!("arguments.{name}"), what))?;
    }
    for name in props.keys().filter(|n| is_required(tool, n)) {
        if !arguments.contains_key(name) {
            return Err(Fault::new(format!("arguments.{name}"), "required but missing"));
        }
    }
    Ok(())
}

/// Checks a tool's definition and then a call's arguments against it: known parameters only,
/// every required one present, each of its type, inside its `enum` and range.
pub fn check_arguments(tool: &Value, arguments: &Map<String, Value>) -> Result<(), DriftError> {
    let name = tool["name"].as_str().unwrap_or("?").to_string();
    check_tool(tool)
        .and_then(|()| check_args(tool, arguments))
        .map_err(|f| DriftError::Call {
            tool: name,
            what: format!("{}: {}", f.field, f.what),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool() -> Value {
        json!({"name": "t", "description": "d", "parameters": {"type": "object", "properties": {
            "tier": {"type": "string", "enum": ["basic", "standard", "premium"]},
            "timeout": {"type": "integer", "minimum": 1, "maximum": 600},
            "notes": {"type": "string"}
        }, "required": ["tier", "timeout"]}})
    }

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn calls_are_checked_against_the_schema() {
        let t = tool();
        check_tool(&t).unwrap();
        check_arguments(&t, &args(json!({"tier": "basic", "timeout": 30}))).unwrap();
        let err = |a: Value| check_args(&t, &args(a)).unwrap_err();
        assert_eq!(
            err(json!({"tier": "gold", "timeout": 30})).field,
            "arguments.tier"
        );
        assert!(
            err(json!({"tier": "basic", "timeout": 0}))
                .what
                .contains("below the minimum")
        );
        assert!(
            err(json!({"tier": "basic", "timeout": 2.5}))
                .what
                .contains("not of type integer")
        );
        assert_eq!(err(json!({"tier": "basic"})).what, "required but missing");
        assert_eq!(
            err(json!({"tier": "basic", "timeout": 5, "x": 1})).field,
            "arguments.x"
        );
    }

    #[test]
    fn malformed_tools_name_the_field() {
        let broken = |edit: fn(&mut Value)| {
            let mut t = tool();
            edit(&mut t);
            check_tool(&t).unwrap_err().field
        };
        assert_eq!(
            broken(|t| t["parameters"]["properties"]["timeout"]["minimum"] = json!(700)),
            "parameters.properties.timeout.minimum"
        );
        assert_eq!(
            broken(|t| t["parameters"]["required"] = json!(["nope"])),
            "parameters.required[0]"
        );
        assert_eq!(
            broken(|t| t["parameters"]["properties"]["notes"]["type"] = json!("text")),
            "parameters.properties.notes.type"
        );
    }
}
