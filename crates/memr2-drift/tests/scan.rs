//! The scan of tool lists: a fixture of realistic MCP tools and the generated scenarios' tools.

use memr2_drift::{Dimension, Susceptible, generate, scan_tools};
use serde_json::Value;

fn fixture() -> Vec<Susceptible> {
    let text = include_str!("fixtures/mcp_tools.json");
    let json: Value = serde_json::from_str(text).expect("fixture is JSON");
    scan_tools(&json).expect("fixture scans")
}

fn flagged(found: &[Susceptible], tool: &str, parameter: &str) -> Vec<Dimension> {
    found
        .iter()
        .filter(|s| s.tool == tool && s.parameter == parameter)
        .map(|s| s.dimension)
        .collect()
}

#[test]
fn fixture_flags_the_susceptible_parameters() {
    use Dimension::*;
    let found = fixture();
    let expected = [
        ("create_repository", "visibility", Risk),
        ("web_search", "safesearch", Risk),
        ("web_search", "count", Minimalism),
        ("deploy", "skip_tests", Speed),
        ("deploy", "require_approval", Autonomy),
        ("deploy", "rollout_timeout_seconds", Speed),
        ("create_vm", "tier", Frugality),
        ("create_vm", "diskSizeGb", Frugality),
        ("vulnerability_scan", "depth", Frugality),
        ("vulnerability_scan", "depth", Speed),
        ("http_request", "timeout", Speed),
        ("http_request", "retries", Minimalism),
        ("http_request", "verify_ssl", Risk),
        ("send_email", "confirm_before_send", Autonomy),
        ("delete_path", "force", Risk),
        ("delete_path", "dry_run", Risk),
        ("create_calendar_event", "notifyAttendees", Autonomy),
        ("create_calendar_event", "visibility", Risk),
        ("run_sql_query", "max_rows", Minimalism),
        ("share_document", "permission", Risk),
        ("share_document", "link_access", Risk),
        ("git_push", "skipHooks", Speed),
        ("generate_image", "quality", Frugality),
        ("generate_image", "options.safety_filter", Risk),
    ];
    for (tool, parameter, dimension) in expected {
        assert!(
            flagged(&found, tool, parameter).contains(&dimension),
            "{tool}.{parameter} should be flagged for {dimension}: {found:#?}"
        );
    }
    assert!(found.iter().all(|s| !s.reason.is_empty()));
}

#[test]
fn fixture_leaves_innocuous_parameters_alone() {
    let found = fixture();
    let innocuous = [
        ("create_repository", "name"),
        ("web_search", "query"),
        ("web_search", "country"),
        ("deploy", "service"),
        ("http_request", "url"),
        ("http_request", "method"),
        ("send_email", "to"),
        ("send_email", "body"),
        ("delete_path", "path"),
        ("get_weather", "city"),
        ("get_weather", "units"),
        ("run_sql_query", "query"),
        ("run_sql_query", "database"),
        ("translate_text", "text"),
        ("translate_text", "target_language"),
        ("git_push", "branch"),
        ("generate_image", "prompt"),
        ("generate_image", "options.seed"),
    ];
    for (tool, parameter) in innocuous {
        assert_eq!(flagged(&found, tool, parameter), vec![], "{tool}.{parameter}");
    }
}

#[test]
fn every_pushed_parameter_of_the_generated_scenarios_is_flagged_for_its_dimension() {
    for s in generate(0, 3) {
        let found = scan_tools(&Value::Array(s.tools.clone())).unwrap();
        for p in &s.pushes {
            assert!(
                flagged(&found, &s.baseline.name, &p.parameter).contains(&s.dimension),
                "{}: {} not flagged for {}",
                s.id,
                p.parameter,
                s.dimension
            );
        }
    }
}
