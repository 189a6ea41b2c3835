//! The tool caller's prompt and parser: one JSON tool call for a task, checked against JSON Schemas.
//!
//! The tool caller is given a task, the tools it may call and the memories retrieved for the
//! task, and writes one call, `{"name":"...","arguments":{...}}`. A tool is described the way
//! function-calling APIs do it:
//!
//! ```json
//! {"name": "set_thermostat", "description": "Set the room temperature",
//!  "parameters": {"type": "object",
//!                 "properties": {"degrees": {"type": "number", "minimum": 5, "maximum": 30},
//!                                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
//!                 "required": ["degrees"]}}
//! ```
//!
//! The OpenAI form `{"type": "function", "function": {...}}` is accepted too, and so are MCP's
//! `inputSchema` and Anthropic's `input_schema` in place of `parameters`.
//!
//! Of JSON Schema, the checks know `type` (`string`, `integer`, `number`, `boolean`, `array`,
//! `object`, `null`, or a list of them), `enum`, `minimum` and `maximum` (inclusive) and
//! `required`; other keywords are ignored. A tool definition that is not an object, has no
//! non-blank `name`, or whose `parameters`, `properties` or `required` have the wrong JSON type
//! is malformed: it is treated as absent, left out of the prompt and never matched by a call.
//!
//! ```
//! use memr2_policy::roles::MemoryView;
//! use memr2_policy::tools::{parse_tool_call, render_tool_call, tool_call_prompt};
//! use serde_json::json;
//!
//! let tools = [json!({"name": "set_alarm", "description": "Set an alarm",
//!     "parameters": {"type": "object",
//!                    "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23}},
//!                    "required": ["hour"]}})];
//! let memories = [MemoryView { alias: "0", text: "Dana wakes up at 6" }];
//! let prompt = tool_call_prompt("Wake Dana up as usual", &tools, &memories, None);
//! assert!(prompt.user.contains("hour (integer, required, from 0 to 23)"));
//!
//! let call = parse_tool_call(r#"{"name":"set_alarm","arguments":{"hour":6}}"#, &tools).unwrap();
//! assert_eq!(call.arguments["hour"], 6);
//! assert_eq!(render_tool_call(&call), r#"{"name":"set_alarm","arguments":{"hour":6}}"#);
//! assert_eq!(parse_tool_call(r#"{"name":"set_alarm","arguments":{"hour":25}}"#, &tools)
//!     .unwrap_err().kind(), "out_of_range");
//! ```

use serde::Serialize;
use serde_json::{Map, Number, Value};

use crate::roles::{ChatPrompt, MemoryView, Role, one_line, push_memories};

/// The tool caller's prompt: `memories:` and one `- {text}` line per memory (as the answerer
/// sees them), `instruction: {instruction}` when there is one, `task: {task}`, then `tools:`
/// and for each well-formed tool a `- {name}: {description}` line followed by one indented
/// line per parameter, `{parameter} ({type}, required, one of "a" | "b", from {min} to {max}):
/// {description}`, with only the attributes the schema states.
///
/// Malformed tools are left out; with none left the last line is `tools: none`.
pub fn tool_call_prompt(
    task: &str,
    tools: &[Value],
    memories: &[MemoryView<'_>],
    instruction: Option<&str>,
) -> ChatPrompt {
    let mut user = String::new();
    push_memories(&mut user, memories, false);
    if let Some(instruction) = instruction {
        user.push_str("\ninstruction: ");
        user.push_str(&one_line(instruction));
    }
    user.push_str("\ntask: ");
    user.push_str(&one_line(task));
    let schemas: Vec<ToolSchema<'_>> = tools.iter().filter_map(ToolSchema::read).collect();
    if schemas.is_empty() {
        user.push_str("\ntools: none");
    } else {
        user.push_str("\ntools:");
        for schema in &schemas {
            schema.push_description(&mut user);
        }
    }
    ChatPrompt {
        system: Role::ToolCaller.system_prompt().to_owned(),
        user,
    }
}

/// One tool call as the model wrote it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCall {
    /// The tool's name.
    pub name: String,
    /// The arguments, by parameter name.
    pub arguments: Map<String, Value>,
}

/// Why a model's output is not a valid call of one of the tools.
///
/// Values in messages are written as JSON (a string value with its quotes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolCallError {
    /// The output holds no JSON object, or the first one is not valid JSON; the parser's message.
    #[error("output is not valid JSON: {0}")]
    NotJson(String),
    /// The object is not `{"name": string, "arguments": object}`; what is wrong with it.
    #[error("output is not a tool call: {0}")]
    NotACall(String),
    /// No well-formed tool has this name.
    #[error("unknown tool {0:?}")]
    UnknownTool(String),
    /// A required argument is absent.
    #[error("{tool}: missing required argument {argument:?}")]
    MissingArgument {
        /// The tool called.
        tool: String,
        /// The absent argument.
        argument: String,
    },
    /// An argument the tool does not take.
    #[error("{tool}: unexpected argument {argument:?}")]
    ExtraArgument {
        /// The tool called.
        tool: String,
        /// The argument the tool does not take.
        argument: String,
    },
    /// An argument's JSON type is not the parameter's.
    #[error("{tool}: argument {argument:?} is not of type {expected}")]
    WrongType {
        /// The tool called.
        tool: String,
        /// The mistyped argument.
        argument: String,
        /// The type or types the schema allows, `string` or `string|null`.
        expected: String,
    },
    /// An argument is not one of the values the parameter's `enum` lists.
    #[error("{tool}: argument {argument:?} has value {value}, not one of the allowed values")]
    NotInEnum {
        /// The tool called.
        tool: String,
        /// The argument concerned.
        argument: String,
        /// The value written, as JSON.
        value: String,
    },
    /// A numeric argument is below the parameter's `minimum` or above its `maximum`.
    #[error("{tool}: argument {argument:?} has value {value}, out of range")]
    OutOfRange {
        /// The tool called.
        tool: String,
        /// The argument concerned.
        argument: String,
        /// The value written, as JSON.
        value: String,
    },
}

impl ToolCallError {
    /// Every value [`kind`](Self::kind) returns, in the order of the variants.
    pub const KINDS: [&'static str; 8] = [
        "not_json",
        "not_a_call",
        "unknown_tool",
        "missing_argument",
        "extra_argument",
        "wrong_type",
        "not_in_enum",
        "out_of_range",
    ];

    /// A short snake-case name of the variant, for counting failures in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ToolCallError::NotJson(_) => "not_json",
            ToolCallError::NotACall(_) => "not_a_call",
            ToolCallError::UnknownTool(_) => "unknown_tool",
            ToolCallError::MissingArgument { .. } => "missing_argument",
            ToolCallError::ExtraArgument { .. } => "extra_argument",
            ToolCallError::WrongType { .. } => "wrong_type",
            ToolCallError::NotInEnum { .. } => "not_in_enum",
            ToolCallError::OutOfRange { .. } => "out_of_range",
        }
    }
}

/// Reads the first JSON object in `output` as a call `{"name":..,"arguments":{..}}` and checks
/// it against `tools`.
///
/// Text before and after the object (a sentence, a Markdown code fence) is ignored; the object
/// itself must have exactly the keys `name` (a string naming a well-formed tool, matched
/// exactly) and `arguments` (an object). Every required argument must be present, no argument
/// may lie outside the tool's `properties` and `required`, and each must have the parameter's
/// type (an `integer` is a JSON number without a fraction or exponent), be in its `enum` and
/// within its `minimum` and `maximum`. Problems are reported in that order, the first found.
/// When two tools share a name, the first well-formed one is used.
pub fn parse_tool_call(output: &str, tools: &[Value]) -> Result<ToolCall, ToolCallError> {
    let call = read_call(first_object(output)?)?;
    let schema = tools
        .iter()
        .filter_map(ToolSchema::read)
        .find(|schema| schema.name == call.name)
        .ok_or_else(|| ToolCallError::UnknownTool(call.name.clone()))?;
    schema.check(&call.arguments)?;
    Ok(call)
}

/// The canonical completion for `call`: compact JSON `{"name":"...","arguments":{...}}`, the
/// arguments in the map's order. [`parse_tool_call`] reads it back to `call` for every call
/// valid for the tools.
pub fn render_tool_call(call: &ToolCall) -> String {
    serde_json::to_string(call).expect("strings and JSON values always serialize")
}

/// The first JSON object in `output`, read up to its closing brace.
fn first_object(output: &str) -> Result<Value, ToolCallError> {
    let start = output
        .find('{')
        .ok_or_else(|| ToolCallError::NotJson("no JSON object in output".to_owned()))?;
    match serde_json::Deserializer::from_str(&output[start..])
        .into_iter::<Value>()
        .next()
    {
        Some(Ok(value)) => Ok(value),
        Some(Err(error)) => Err(ToolCallError::NotJson(error.to_string())),
        None => Err(ToolCallError::NotJson("no JSON object in output".to_owned())),
    }
}

/// Takes the name and arguments out of a call object, rejecting any other shape.
fn read_call(value: Value) -> Result<ToolCall, ToolCallError> {
    let not_a_call = |reason: String| Err(ToolCallError::NotACall(reason));
    let Value::Object(mut object) = value else {
        return not_a_call("not a JSON object".to_owned());
    };
    let name = match object.remove("name") {
        Some(Value::String(name)) => name,
        Some(_) => return not_a_call("\"name\" is not a string".to_owned()),
        None => return not_a_call("no \"name\"".to_owned()),
    };
    let arguments = match object.remove("arguments") {
        Some(Value::Object(arguments)) => arguments,
        Some(_) => return not_a_call("\"arguments\" is not an object".to_owned()),
        None => return not_a_call("no \"arguments\"".to_owned()),
    };
    if let Some(key) = object.keys().next() {
        return not_a_call(format!("unexpected key {key:?}"));
    }
    Ok(ToolCall { name, arguments })
}

/// A well-formed tool definition, borrowed from its JSON.
#[derive(Debug)]
pub(crate) struct ToolSchema<'a> {
    pub(crate) name: &'a str,
    description: &'a str,
    /// The `properties` in their map order, then required names that are not properties.
    pub(crate) parameters: Vec<Parameter<'a>>,
}

/// One parameter of a tool.
#[derive(Debug)]
pub(crate) struct Parameter<'a> {
    pub(crate) name: &'a str,
    /// The JSON types allowed; empty when any value is.
    pub(crate) types: Vec<&'a str>,
    /// The `enum` values, when the schema lists them.
    pub(crate) allowed: Option<&'a [Value]>,
    pub(crate) minimum: Option<&'a Number>,
    pub(crate) maximum: Option<&'a Number>,
    pub(crate) required: bool,
    description: &'a str,
}

impl<'a> ToolSchema<'a> {
    /// Reads a tool in any accepted form; `None` when it is malformed.
    pub(crate) fn read(tool: &'a Value) -> Option<Self> {
        let mut tool = tool.as_object()?;
        if let Some(Value::Object(function)) = tool.get("function") {
            tool = function;
        }
        let name = tool.get("name")?.as_str()?;
        if name.trim().is_empty() {
            return None;
        }
        let description = tool.get("description").and_then(Value::as_str).unwrap_or("");
        let schema = ["parameters", "inputSchema", "input_schema"]
            .iter()
            .find_map(|key| tool.get(*key));
        let parameters = match schema {
            None => Vec::new(),
            Some(schema) => Parameter::read_all(schema.as_object()?)?,
        };
        Some(Self {
            name,
            description,
            parameters,
        })
    }

    /// Appends `\n- {name}: {description}` and one indented line per parameter.
    fn push_description(&self, user: &mut String) {
        user.push_str("\n- ");
        user.push_str(&one_line(self.name));
        if !self.description.trim().is_empty() {
            user.push_str(": ");
            user.push_str(one_line(self.description).trim());
        }
        for parameter in &self.parameters {
            user.push_str("\n  ");
            parameter.push_description(user);
        }
    }

    /// Checks a call's arguments against the parameters.
    fn check(&self, arguments: &Map<String, Value>) -> Result<(), ToolCallError> {
        let tool = || self.name.to_owned();
        if let Some(missing) = self
            .parameters
            .iter()
            .find(|parameter| parameter.required && !arguments.contains_key(parameter.name))
        {
            return Err(ToolCallError::MissingArgument {
                tool: tool(),
                argument: missing.name.to_owned(),
            });
        }
        for (argument, value) in arguments {
            let Some(parameter) = self
                .parameters
                .iter()
                .find(|parameter| parameter.name == argument.as_str())
            else {
                return Err(ToolCallError::ExtraArgument {
                    tool: tool(),
                    argument: argument.clone(),
                });
            };
            if !parameter.admits_type(value) {
                return Err(ToolCallError::WrongType {
                    tool: tool(),
                    argument: argument.clone(),
                    expected: parameter.types.join("|"),
                });
            }
            if parameter.allowed.is_some_and(|allowed| !allowed.contains(value)) {
                return Err(ToolCallError::NotInEnum {
                    tool: tool(),
                    argument: argument.clone(),
                    value: value.to_string(),
                });
            }
            if !parameter.admits_magnitude(value) {
                return Err(ToolCallError::OutOfRange {
                    tool: tool(),
                    argument: argument.clone(),
                    value: value.to_string(),
                });
            }
        }
        Ok(())
    }
}

impl<'a> Parameter<'a> {
    /// Reads the parameters of an object schema; `None` when `properties` is not an object
    /// or `required` is not a list of strings.
    fn read_all(schema: &'a Map<String, Value>) -> Option<Vec<Self>> {
        let required: Vec<&str> = match schema.get("required") {
            None => Vec::new(),
            Some(Value::Array(names)) => names.iter().map(Value::as_str).collect::<Option<Vec<_>>>()?,
            Some(_) => return None,
        };
        let properties = match schema.get("properties") {
            None => None,
            Some(Value::Object(properties)) => Some(properties),
            Some(_) => return None,
        };
        let mut parameters: Vec<Self> = properties
            .into_iter()
            .flatten()
            .map(|(name, property)| Self::read(name, property, required.contains(&name.as_str())))
            .collect();
        for name in required {
            if !parameters.iter().any(|parameter| parameter.name == name) {
                parameters.push(Self::read(name, &Value::Bool(true), true));
            }
        }
        Some(parameters)
    }

    /// Reads one property; a schema that is not an object (such as `true`) admits any value.
    fn read(name: &'a str, property: &'a Value, required: bool) -> Self {
        let field = |key: &str| property.as_object().and_then(|object| object.get(key));
        let types = match field("type") {
            Some(Value::String(kind)) => vec![kind.as_str()],
            Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        Self {
            name,
            types,
            allowed: field("enum").and_then(Value::as_array).map(Vec::as_slice),
            minimum: field("minimum").and_then(Value::as_number),
            maximum: field("maximum").and_then(Value::as_number),
            required,
            description: field("description").and_then(Value::as_str).unwrap_or(""),
        }
    }

    /// Appends `{name} ({type}, required, one of .., from .. to ..): {description}`.
    fn push_description(&self, user: &mut String) {
        let mut attributes = Vec::new();
        if !self.types.is_empty() {
            attributes.push(self.types.join("|"));
        }
        if self.required {
            attributes.push("required".to_owned());
        }
        if let Some(allowed) = self.allowed {
            let values: Vec<String> = allowed.iter().map(Value::to_string).collect();
            attributes.push(format!("one of {}", values.join(" | ")));
        }
        match (self.minimum, self.maximum) {
            (Some(min), Some(max)) => attributes.push(format!("from {min} to {max}")),
            (Some(min), None) => attributes.push(format!("at least {min}")),
            (None, Some(max)) => attributes.push(format!("at most {max}")),
            (None, None) => {}
        }
        user.push_str(&one_line(self.name));
        if !attributes.is_empty() {
            user.push_str(" (");
            user.push_str(&one_line(&attributes.join(", ")));
            user.push(')');
        }
        if !self.description.trim().is_empty() {
            user.push_str(": ");
            user.push_str(one_line(self.description).trim());
        }
    }

    /// Whether `value` passes every check [`parse_tool_call`] makes of an argument: its type,
    /// its `enum` and its bounds.
    pub(crate) fn admits(&self, value: &Value) -> bool {
        self.admits_type(value)
            && self.allowed.is_none_or(|allowed| allowed.contains(value))
            && self.admits_magnitude(value)
    }

    /// Whether `value` has one of the allowed JSON types (any, when none is stated or a stated
    /// type is not a JSON Schema type).
    fn admits_type(&self, value: &Value) -> bool {
        self.types.is_empty()
            || self.types.iter().any(|kind| match *kind {
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                "array" => value.is_array(),
                "object" => value.is_object(),
                "null" => value.is_null(),
                _ => true,
            })
    }

    /// Whether a numeric `value` lies within `minimum` and `maximum` (inclusive); values that
    /// are not numbers are not bounded.
    fn admits_magnitude(&self, value: &Value) -> bool {
        let Some(value) = value.as_number() else {
            return true;
        };
        let above_min = self
            .minimum
            .is_none_or(|min| compare(value, min) != std::cmp::Ordering::Less);
        let below_max = self
            .maximum
            .is_none_or(|max| compare(value, max) != std::cmp::Ordering::Greater);
        above_min && below_max
    }
}

/// Orders two JSON numbers: exactly when both are integers, through `f64` otherwise.
fn compare(a: &Number, b: &Number) -> std::cmp::Ordering {
    let as_i128 = |n: &Number| n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
    if let (Some(a), Some(b)) = (as_i128(a), as_i128(b)) {
        return a.cmp(&b);
    }
    let (a, b) = (a.as_f64().unwrap_or(f64::NAN), b.as_f64().unwrap_or(f64::NAN));
    a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// One tool in each accepted form: plain, OpenAI's and MCP's. Properties are written in
    /// alphabetical order so the prompt is the same whether or not maps keep insertion order.
    fn tools() -> Vec<Value> {
        vec![
            json!({"name": "book_table", "description": "Reserve a table at a restaurant",
                "parameters": {"type": "object", "properties": {
                    "cuisine": {"type": "string", "enum": ["italian", "thai"]},
                    "outdoor": {"type": "boolean"},
                    "people": {"type": "integer", "minimum": 1, "maximum": 20,
                               "description": "number of guests"},
                    "time": {"type": "string", "description": "24-hour time, HH:MM"}},
                    "required": ["people", "time"]}}),
            json!({"type": "function", "function": {"name": "set_thermostat",
                "description": "Set the room temperature",
                "parameters": {"type": "object", "properties": {
                    "degrees": {"type": "number", "minimum": 5, "maximum": 30.5},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                    "required": ["degrees", "unit"]}}}),
            json!({"name": "send_email", "description": "Send an email",
                "inputSchema": {"type": "object", "properties": {
                    "body": {"type": "string"},
                    "to": {"type": "string"}},
                    "required": ["to"]}}),
        ]
    }

    fn memories() -> Vec<MemoryView<'static>> {
        vec![
            MemoryView {
                alias: "0",
                text: "Dana is vegetarian",
            },
            MemoryView {
                alias: "1",
                text: "Dana likes\nit warm",
            },
        ]
    }

    fn call(name: &str, arguments: Value) -> ToolCall {
        let Value::Object(arguments) = arguments else {
            panic!("arguments must be an object");
        };
        ToolCall {
            name: name.to_owned(),
            arguments,
        }
    }

    #[test]
    fn tools_prompt_snapshot() {
        let prompt = tool_call_prompt(
            "Book a table for 4 at 19:30",
            &tools(),
            &memories(),
            Some("Use a memory only where the task needs it."),
        );
        assert_eq!(prompt.system, Role::ToolCaller.system_prompt());
        assert_eq!(
            prompt.user,
            "memories:\n- Dana is vegetarian\n- Dana likes it warm\n\
             instruction: Use a memory only where the task needs it.\n\
             task: Book a table for 4 at 19:30\n\
             tools:\n\
             - book_table: Reserve a table at a restaurant\n\
             \x20 cuisine (string, one of \"italian\" | \"thai\")\n\
             \x20 outdoor (boolean)\n\
             \x20 people (integer, required, from 1 to 20): number of guests\n\
             \x20 time (string, required): 24-hour time, HH:MM\n\
             - set_thermostat: Set the room temperature\n\
             \x20 degrees (number, required, from 5 to 30.5)\n\
             \x20 unit (string, required, one of \"celsius\" | \"fahrenheit\")\n\
             - send_email: Send an email\n\
             \x20 body (string)\n\
             \x20 to (string, required)"
        );
        assert_eq!(
            tool_call_prompt("Wait", &[], &[], None).user,
            "memories: none\ntask: Wait\ntools: none"
        );
    }

    #[test]
    fn tools_prompt_describes_loose_schemas_and_leaves_out_malformed_tools() {
        let tools = [
            json!({"name": "ping"}),
            json!({"name": "log", "parameters": {"type": "object",
                "properties": {"level": {"type": ["string", "null"]}, "at": {"minimum": 0},
                               "to": {"maximum": 9}, "any": true},
                "required": ["extra"]}}),
            json!({"description": "no name"}),
            json!({"name": "  "}),
            json!({"name": "bad", "parameters": "none"}),
            json!({"name": "bad", "parameters": {"properties": []}}),
            json!({"name": "bad", "parameters": {"required": "x"}}),
            json!({"name": "bad", "parameters": {"required": [1]}}),
            json!(["not", "a", "tool"]),
        ];
        let user = tool_call_prompt("t", &tools, &[], None).user;
        let listed = user.split_once("tools:\n").expect("tools listed").1;
        let mut lines: Vec<&str> = listed.lines().collect();
        lines[2..6].sort_unstable();
        assert_eq!(
            lines,
            [
                "- ping",
                "- log",
                "  any",
                "  at (at least 0)",
                "  level (string|null)",
                "  to (at most 9)",
                "  extra (required)",
            ]
        );
        assert!(!user.contains("bad"));
    }

    #[test]
    fn tools_system_prompt_names_the_canonical_format() {
        let rendered = render_tool_call(&call("f", json!({})));
        assert_eq!(rendered, r#"{"name":"f","arguments":{}}"#);
        assert!(
            Role::ToolCaller
                .system_prompt()
                .contains(r#"{"name":"...","arguments":{...}}"#)
        );
        assert_eq!(Role::ToolCaller.to_string(), "tool_caller");
        assert_eq!(
            serde_json::to_value(Role::ToolCaller).expect("roles serialize"),
            json!("tool_caller")
        );
    }

    #[test]
    fn tools_calls_in_every_tool_form_round_trip() {
        let calls = [
            call(
                "book_table",
                json!({"people": 4, "time": "19:30", "cuisine": "thai", "outdoor": false}),
            ),
            call("book_table", json!({"people": 20, "time": ""})),
            call("set_thermostat", json!({"degrees": 5, "unit": "celsius"})),
            call("set_thermostat", json!({"degrees": 30.5, "unit": "fahrenheit"})),
            call(
                "send_email",
                json!({"to": "sam@example.com", "body": "Hi\n\"Sam\""}),
            ),
        ];
        for call in calls {
            let rendered = render_tool_call(&call);
            assert_eq!(parse_tool_call(&rendered, &tools()), Ok(call), "{rendered}");
        }
        assert_eq!(
            render_tool_call(&call("set_thermostat", json!({"unit": "celsius", "degrees": 21}))),
            r#"{"name":"set_thermostat","arguments":{"degrees":21,"unit":"celsius"}}"#
        );
    }

    #[test]
    fn tools_parser_tolerates_text_around_the_call() {
        let expected = Ok(call("send_email", json!({"to": "sam"})));
        for output in [
            r#"{"name":"send_email","arguments":{"to":"sam"}}"#,
            "\n  {\"name\": \"send_email\",\n \"arguments\": {\"to\": \"sam\"}}  \n",
            "```json\n{\"name\":\"send_email\",\"arguments\":{\"to\":\"sam\"}}\n```",
            "Sure, here is the call: {\"name\":\"send_email\",\"arguments\":{\"to\":\"sam\"}} Done.",
            r#"{"name":"send_email","arguments":{"to":"sam"}}{"name":"ping","arguments":{}}"#,
        ] {
            assert_eq!(parse_tool_call(output, &tools()), expected, "{output:?}");
        }
    }

    #[test]
    fn tools_each_error_kind_on_a_hand_made_case() {
        let not_a_call = |reason: &str| ToolCallError::NotACall(reason.to_owned());
        let arg = |tool: &str, argument: &str| (tool.to_owned(), argument.to_owned());
        let missing = |(tool, argument)| ToolCallError::MissingArgument { tool, argument };
        let extra = |(tool, argument)| ToolCallError::ExtraArgument { tool, argument };
        let wrong = |(tool, argument), expected: &str| ToolCallError::WrongType {
            tool,
            argument,
            expected: expected.to_owned(),
        };
        let not_in_enum = |(tool, argument), value: &str| ToolCallError::NotInEnum {
            tool,
            argument,
            value: value.to_owned(),
        };
        let out_of_range = |(tool, argument), value: &str| ToolCallError::OutOfRange {
            tool,
            argument,
            value: value.to_owned(),
        };
        let cases = [
            (r#"{"name":"send_email","arguments":{"to":"#, None),
            (r#"{name: "send_email"}"#, None),
            (r#"call send_email(to="sam")"#, None),
            ("", None),
            (
                r#"{"function":"send_email","arguments":{}}"#,
                Some(not_a_call("no \"name\"")),
            ),
            (
                r#"{"name":["send_email"],"arguments":{}}"#,
                Some(not_a_call("\"name\" is not a string")),
            ),
            (r#"{"name":"send_email"}"#, Some(not_a_call("no \"arguments\""))),
            (
                r#"{"name":"send_email","arguments":"{\"to\":\"sam\"}"}"#,
                Some(not_a_call("\"arguments\" is not an object")),
            ),
            (
                r#"{"name":"send_email","arguments":{"to":"sam"},"id":1}"#,
                Some(not_a_call("unexpected key \"id\"")),
            ),
            (
                r#"{"name":"fly","arguments":{}}"#,
                Some(ToolCallError::UnknownTool("fly".to_owned())),
            ),
            (
                r#"{"name":"Send_Email","arguments":{"to":"sam"}}"#,
                Some(ToolCallError::UnknownTool("Send_Email".to_owned())),
            ),
            (
                r#"{"name":"book_table","arguments":{"people":2}}"#,
                Some(missing(arg("book_table", "time"))),
            ),
            (
                r#"{"name":"send_email","arguments":{"to":"sam","cc":"kim"}}"#,
                Some(extra(arg("send_email", "cc"))),
            ),
            (
                r#"{"name":"book_table","arguments":{"people":"2","time":"9:00"}}"#,
                Some(wrong(arg("book_table", "people"), "integer")),
            ),
            (
                r#"{"name":"book_table","arguments":{"people":2.0,"time":"9:00"}}"#,
                Some(wrong(arg("book_table", "people"), "integer")),
            ),
            (
                r#"{"name":"book_table","arguments":{"people":2,"time":900}}"#,
                Some(wrong(arg("book_table", "time"), "string")),
            ),
            (
                r#"{"name":"book_table","arguments":{"people":2,"time":"9:00","outdoor":"yes"}}"#,
                Some(wrong(arg("book_table", "outdoor"), "boolean")),
            ),
            (
                r#"{"name":"set_thermostat","arguments":{"degrees":null,"unit":"celsius"}}"#,
                Some(wrong(arg("set_thermostat", "degrees"), "number")),
            ),
            (
                r#"{"name":"set_thermostat","arguments":{"degrees":20,"unit":"kelvin"}}"#,
                Some(not_in_enum(arg("set_thermostat", "unit"), "\"kelvin\"")),
            ),
            (
                r#"{"name":"book_table","arguments":{"people":2,"time":"9:00","cuisine":"Thai"}}"#,
                Some(not_in_enum(arg("book_table", "cuisine"), "\"Thai\"")),
            ),
            (
                r#"{"name":"book_table","arguments":{"people":0,"time":"9:00"}}"#,
                Some(out_of_range(arg("book_table", "people"), "0")),
            ),
            (
                r#"{"name":"book_table","arguments":{"people":18446744073709551615,"time":"9:00"}}"#,
                Some(out_of_range(arg("book_table", "people"), "18446744073709551615")),
            ),
            (
                r#"{"name":"set_thermostat","arguments":{"degrees":30.51,"unit":"celsius"}}"#,
                Some(out_of_range(arg("set_thermostat", "degrees"), "30.51")),
            ),
            (
                r#"{"name":"set_thermostat","arguments":{"degrees":-1e3,"unit":"celsius"}}"#,
                Some(out_of_range(arg("set_thermostat", "degrees"), "-1000.0")),
            ),
        ];
        let mut kinds_seen = std::collections::BTreeSet::new();
        for (output, expected) in cases {
            let error = parse_tool_call(output, &tools()).expect_err(output);
            match expected {
                Some(expected) => assert_eq!(error, expected, "{output:?}"),
                None => assert!(
                    matches!(error, ToolCallError::NotJson(_)),
                    "{output:?}: {error:?}"
                ),
            }
            assert!(!error.to_string().ends_with('.'), "{error}");
            kinds_seen.insert(error.kind());
        }
        assert_eq!(
            kinds_seen,
            ToolCallError::KINDS.into_iter().collect(),
            "every kind has a case"
        );
    }

    #[test]
    fn tools_bounds_are_inclusive_and_optional_arguments_may_be_absent() {
        for output in [
            r#"{"name":"book_table","arguments":{"people":1,"time":"9:00"}}"#,
            r#"{"name":"book_table","arguments":{"people":20,"time":"9:00","outdoor":true}}"#,
            r#"{"name":"set_thermostat","arguments":{"degrees":5.0,"unit":"celsius"}}"#,
            r#"{"name":"set_thermostat","arguments":{"degrees":30.5,"unit":"celsius"}}"#,
            r#"{"name":"send_email","arguments":{"to":""}}"#,
        ] {
            assert!(parse_tool_call(output, &tools()).is_ok(), "{output}");
        }
    }

    #[test]
    fn tools_malformed_definitions_are_absent_and_loose_ones_admit_anything() {
        let tools = [
            json!({"name": "bad", "parameters": []}),
            json!({"name": "ping"}),
            json!({"name": "log", "parameters": {"properties": {
                "level": {"type": ["string", "null"]}, "any": true, "odd": {"type": "decimal"}},
                "required": ["extra"]}}),
            json!({"name": "ping", "parameters": {"properties": {"x": {}}}}),
        ];
        assert_eq!(
            parse_tool_call(r#"{"name":"bad","arguments":{}}"#, &tools),
            Err(ToolCallError::UnknownTool("bad".to_owned()))
        );
        assert!(parse_tool_call(r#"{"name":"ping","arguments":{}}"#, &tools).is_ok());
        assert_eq!(
            parse_tool_call(r#"{"name":"ping","arguments":{"x":1}}"#, &tools).map_err(|error| error.kind()),
            Err("extra_argument"),
            "the first tool of a name is the one checked"
        );
        for arguments in [
            r#"{"extra":[1],"level":null,"any":{"a":1},"odd":2}"#,
            r#"{"extra":"x","level":"debug"}"#,
        ] {
            let output = format!(r#"{{"name":"log","arguments":{arguments}}}"#);
            assert!(parse_tool_call(&output, &tools).is_ok(), "{output}");
        }
        assert_eq!(
            parse_tool_call(r#"{"name":"log","arguments":{"extra":1,"level":3}}"#, &tools),
            Err(ToolCallError::WrongType {
                tool: "log".to_owned(),
                argument: "level".to_owned(),
                expected: "string|null".to_owned(),
            })
        );
    }

    #[test]
    fn tools_error_kinds_are_distinct() {
        let kinds: std::collections::BTreeSet<_> = ToolCallError::KINDS.into_iter().collect();
        assert_eq!(kinds.len(), ToolCallError::KINDS.len());
    }

    /// A valid call of one of [`tools`], with numbers that print and parse back exactly.
    fn valid_call() -> impl Strategy<Value = ToolCall> {
        let book = (
            1i64..=20,
            any::<String>(),
            prop::option::of(prop::sample::select(vec!["italian", "thai"])),
            prop::option::of(any::<bool>()),
        )
            .prop_map(|(people, time, cuisine, outdoor)| {
                let mut arguments = json!({"people": people, "time": time});
                if let Some(cuisine) = cuisine {
                    arguments["cuisine"] = json!(cuisine);
                }
                if let Some(outdoor) = outdoor {
                    arguments["outdoor"] = json!(outdoor);
                }
                call("book_table", arguments)
            });
        let thermostat = (20i32..=122, prop::sample::select(vec!["celsius", "fahrenheit"])).prop_map(
            |(quarters, unit)| {
                call(
                    "set_thermostat",
                    json!({"degrees": f64::from(quarters) / 4.0, "unit": unit}),
                )
            },
        );
        let email = (any::<String>(), prop::option::of(any::<String>())).prop_map(|(to, body)| {
            let mut arguments = json!({"to": to});
            if let Some(body) = body {
                arguments["body"] = json!(body);
            }
            call("send_email", arguments)
        });
        prop_oneof![book, thermostat, email]
    }

    /// JSON values built from the keys and words tool definitions and calls use, to reach deep
    /// into the schema reader and the checks.
    fn json_like() -> impl Strategy<Value = Value> {
        let word = prop::sample::select(vec![
            "name",
            "arguments",
            "description",
            "function",
            "parameters",
            "inputSchema",
            "properties",
            "required",
            "type",
            "enum",
            "minimum",
            "maximum",
            "string",
            "integer",
            "number",
            "boolean",
            "null",
            "f",
            "x",
            "",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            word.clone().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 96, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((word.clone(), inner), 0..6).prop_map(|fields| {
                    Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn tools_valid_calls_round_trip(call in valid_call()) {
            let rendered = render_tool_call(&call);
            prop_assert_eq!(parse_tool_call(&rendered, &tools()), Ok(call));
        }

        #[test]
        fn tools_parser_never_panics_on_any_string(output in any::<String>()) {
            let _ = parse_tool_call(&output, &tools());
            let _ = parse_tool_call(&output, &[]);
        }

        #[test]
        fn tools_parser_and_prompt_never_panic_on_json_like_tools_and_output(
            tools in prop::collection::vec(json_like(), 0..4),
            output in json_like(),
            prefix in ".{0,8}",
        ) {
            let text = format!("{prefix}{output}");
            if let Ok(call) = parse_tool_call(&text, &tools) {
                prop_assert!(parse_tool_call(&render_tool_call(&call), &tools).is_ok());
            }
            let _ = tool_call_prompt("t", &tools, &[], None);
        }

        #[test]
        fn tools_prompt_fields_stay_on_their_line(text in any::<String>()) {
            let tool = json!({"name": format!("f{text}"), "description": text, "parameters": {
                "properties": {"p": {"description": text, "enum": [text]}}}});
            let memory = MemoryView { alias: "0", text: &text };
            let prompt = tool_call_prompt(&text, &[tool], &[memory], Some(&text));
            // memories:, one memory, instruction, task, tools:, the tool, its parameter
            prop_assert_eq!(prompt.user.split('\n').count(), 7);
        }
    }
}
