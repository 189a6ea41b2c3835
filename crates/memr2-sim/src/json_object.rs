//! Typed reading of the fields of a JSON object, with errors that name the field by its path.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// One JSON object and where it sits in its record (`sessions[2].turns[0]`; empty at the top).
pub(crate) struct Fields<'a> {
    map: &'a Map<String, Value>,
    at: String,
}

impl<'a> Fields<'a> {
    /// The object `value`, which sits at `at`; an error when it is not an object.
    pub(crate) fn of(value: &'a Value, at: impl Into<String>) -> Result<Self, String> {
        let at = at.into();
        match value {
            Value::Object(map) => Ok(Self { map, at }),
            other => Err(if at.is_empty() {
                format!("expected an object, found {}", kind(other))
            } else {
                format!("field \"{at}\" must be an object, found {}", kind(other))
            }),
        }
    }

    /// The path of one of the object's fields.
    pub(crate) fn path(&self, key: &str) -> String {
        if self.at.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.at)
        }
    }

    /// The path of element `i` of one of the object's array fields.
    pub(crate) fn element(&self, key: &str, i: usize) -> String {
        format!("{}[{i}]", self.path(key))
    }

    /// Whether the field is present (even as `null`).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// The raw value of a field that must be present.
    pub(crate) fn value(&self, key: &str) -> Result<&'a Value, String> {
        self.map
            .get(key)
            .ok_or_else(|| format!("missing field \"{}\"", self.path(key)))
    }

    /// A field that must be present, read as `T`.
    pub(crate) fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T, String> {
        self.typed(key, self.value(key)?)
    }

    /// A field that may be absent or `null`, read as `T`.
    pub(crate) fn opt<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => self.typed(key, v).map(Some),
        }
    }

    /// A field that must be present and an array.
    pub(crate) fn array(&self, key: &str) -> Result<&'a [Value], String> {
        match self.value(key)? {
            Value::Array(items) => Ok(items),
            other => Err(format!(
                "field \"{}\" must be an array, found {}",
                self.path(key),
                kind(other)
            )),
        }
    }

    /// A field that may be absent or `null`, else an array.
    pub(crate) fn opt_array(&self, key: &str) -> Result<Option<&'a [Value]>, String> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.array(key).map(Some),
        }
    }

    /// An error when the object has a field not in `known`.
    pub(crate) fn only(&self, known: &[&str]) -> Result<(), String> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(key) => Err(format!(
                "unknown field \"{}\", expected one of {}",
                self.path(key),
                known.join(", ")
            )),
            None => Ok(()),
        }
    }

    fn typed<T: DeserializeOwned>(&self, key: &str, value: &Value) -> Result<T, String> {
        T::deserialize(value).map_err(|e| format!("field \"{}\": {e}", self.path(key)))
    }
}

/// What kind of JSON value this is, for error messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field_path() {
        let v: Value = serde_json::json!({"a": 1, "b": "x", "c": [1]});
        let f = Fields::of(&v, "sessions[2]").unwrap();
        assert_eq!(f.get::<u32>("a").unwrap(), 1);
        let e = f.get::<String>("a").unwrap_err();
        assert!(
            e.starts_with("field \"sessions[2].a\": invalid type: integer `1`"),
            "{e}"
        );
        assert_eq!(f.get::<u32>("z").unwrap_err(), "missing field \"sessions[2].z\"");
        assert_eq!(f.opt::<u32>("z").unwrap(), None);
        assert_eq!(
            f.array("b").unwrap_err(),
            "field \"sessions[2].b\" must be an array, found a string"
        );
        assert_eq!(f.array("c").unwrap().len(), 1);
        assert_eq!(f.element("c", 0), "sessions[2].c[0]");
        assert!(
            f.only(&["a", "b"])
                .unwrap_err()
                .contains("unknown field \"sessions[2].c\"")
        );
        assert_eq!(
            Fields::of(&Value::Null, "").err().unwrap(),
            "expected an object, found null"
        );
    }
}
