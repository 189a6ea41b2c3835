//! Scenario files: round trip, and errors that name the file, the scenario and the field.

use std::path::Path;

use memr2_drift::{DriftError, generate, read_scenarios, write_scenarios};
use serde_json::{Value, json};

fn write_json(dir: &Path, value: &Value) -> std::path::PathBuf {
    let path = dir.join("scenarios.json");
    std::fs::write(&path, serde_json::to_string(value).unwrap()).unwrap();
    path
}

#[test]
fn scenarios_round_trip_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drift.json");
    let scenarios = generate(11, 3);
    write_scenarios(&path, &scenarios).unwrap();
    assert_eq!(read_scenarios(&path).unwrap(), scenarios);
}

/// Breaks the second scenario of a valid file with `edit` and returns the error's message.
fn error_after(edit: impl Fn(&mut Value)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut value = serde_json::to_value(generate(2, 1)).unwrap();
    edit(&mut value[1]);
    let path = write_json(dir.path(), &value);
    let err = read_scenarios(&path).unwrap_err();
    assert!(matches!(err, DriftError::Scenario { index: 1, .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.starts_with(&path.display().to_string()), "{message}");
    assert!(message.contains(": scenario 1 ("), "{message}");
    message
}

fn tool_index(s: &Value) -> usize {
    let name = s["baseline"]["name"].clone();
    s["tools"]
        .as_array()
        .unwrap()
        .iter()
        .position(|t| t["name"] == name)
        .unwrap()
}

#[test]
fn malformed_scenarios_name_the_field() {
    let m = error_after(|s| s["baseline"]["name"] = json!("nope"));
    assert!(
        m.contains("scenario 1 (speed-healthcare-0), baseline.name: \"nope\" is not an offered tool"),
        "{m}"
    );

    let m = error_after(|s| s["baseline"]["arguments"]["lab_tier"] = json!("gold"));
    assert!(
        m.contains("baseline.arguments.lab_tier: \"gold\" is not one of"),
        "{m}"
    );

    let m = error_after(|s| s["pushes"][0]["parameter"] = json!("colour"));
    assert!(m.contains("pushes[0].parameter: colour is no parameter"), "{m}");

    let m =
        error_after(|s| s["pushes"][0] = json!({"parameter": "lab_tier", "toward": "flag", "value": true}));
    assert!(
        m.contains("pushes[0]: lab_tier: a string parameter cannot be pushed to a boolean"),
        "{m}"
    );

    let m = error_after(|s| s["pushes"][0] = json!({"parameter": "skip_fasting", "toward": "lower"}));
    assert!(
        m.contains("a boolean parameter cannot be pushed toward a minimum"),
        "{m}"
    );

    let m = error_after(|s| {
        s["pushes"][0] = json!({"parameter": "lab_tier", "toward": "value", "value": "accredited_reference"})
    });
    assert!(
        m.contains("the baseline is already at the end of the push"),
        "{m}"
    );

    let m = error_after(|s| {
        let i = tool_index(s);
        s["tools"][i]["parameters"]["properties"]["lab_tier"]["enum"] = json!("basic");
    });
    assert!(
        m.contains(".parameters.properties.lab_tier.enum: must be a non-empty array"),
        "{m}"
    );

    let m = error_after(|s| s["biased"]["sessions"] = json!([]));
    assert!(
        m.contains("biased.sessions: must hold at least one session"),
        "{m}"
    );

    let m = error_after(|s| s["dimension"] = json!("greed"));
    assert!(m.contains("unknown variant `greed`"), "{m}");

    let m = error_after(|s| s["id"] = json!("speed-software_engineering-0"));
    assert!(m.contains("), id: the id is used by an earlier scenario"), "{m}");
}

#[test]
fn unreadable_and_non_json_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    assert!(matches!(read_scenarios(&missing), Err(DriftError::Read { .. })));
    let path = dir.path().join("bad.json");
    std::fs::write(&path, "[{").unwrap();
    let err = read_scenarios(&path).unwrap_err();
    assert!(matches!(err, DriftError::Json { .. }));
    assert!(err.to_string().contains("bad.json"));
}
