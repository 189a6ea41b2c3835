//! Project chores: `cargo xtask tidy` checks the crate boundaries and file headers, `cargo xtask ci` runs the local CI pipeline.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// What each crate must not reach, directly or through another dependency
/// (normal dependencies only; dev-dependencies are free). DESIGN section 3.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "memr2-store",
        &[
            "burn",
            "memr2-sim",
            "memr2-policy",
            "memr2-logo-grpo",
            "memr2-trainer",
        ],
    ),
    (
        "memr2-sim",
        &["burn", "memr2-policy", "memr2-logo-grpo", "memr2-trainer"],
    ),
    (
        "memr2-policy",
        &["memr2-sim", "memr2-logo-grpo", "memr2-trainer", "memr2-store"],
    ),
    (
        "memr2-logo-grpo",
        &["memr2-policy", "memr2-sim", "memr2-store", "memr2-trainer"],
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("tidy") => tidy(),
        Some("ci") => ci(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  tidy             check crate boundaries and that every .rs file opens with a //! line\n  ci [--no-clippy]  fmt check, tidy, clippy (warnings denied), tests, doc tests, docs"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<(), String> {
    eprintln!("xtask: running {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("could not start {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{program} {}` failed with {status}", args.join(" ")))
    }
}

fn ci(args: &[String]) -> Result<(), String> {
    let clippy = !args.iter().any(|a| a == "--no-clippy");
    run("cargo", &["fmt", "--all", "--", "--check"], &[])?;
    tidy()?;
    if clippy {
        run(
            "cargo",
            &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"],
            &[],
        )?;
    }
    run("cargo", &["nextest", "run", "--workspace", "--no-fail-fast"], &[])?;
    run("cargo", &["test", "--workspace", "--doc"], &[])?;
    run(
        "cargo",
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    Ok(())
}

fn tidy() -> Result<(), String> {
    let mut problems = check_boundaries()?;
    problems.extend(check_headers(&workspace_root()));
    if problems.is_empty() {
        eprintln!("xtask: tidy: ok");
        Ok(())
    } else {
        for p in &problems {
            eprintln!("tidy: {p}");
        }
        Err(format!("tidy found {} problem(s)", problems.len()))
    }
}

/// Reads `cargo metadata` and checks [`FORBIDDEN`] over the normal-dependency closure.
fn check_boundaries() -> Result<Vec<String>, String> {
    let out = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(workspace_root())
        .output()
        .or_else(|_| {
            Command::new("cargo")
                .args(["metadata", "--format-version", "1"])
                .current_dir(workspace_root())
                .output()
        })
        .map_err(|e| format!("could not run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata output: {e}"))?;

    // package id -> name, and id -> normal (non-dev, non-build) dependency ids.
    let mut names = BTreeMap::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        names.insert(
            p["id"].as_str().unwrap_or_default().to_string(),
            p["name"].as_str().unwrap_or_default().to_string(),
        );
    }
    let mut edges: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().into_iter().flatten() {
        let id = node["id"].as_str().unwrap_or_default().to_string();
        let deps = node["deps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|k| k["kind"].is_null())
            })
            .filter_map(|d| d["pkg"].as_str().map(str::to_string))
            .collect();
        edges.insert(id, deps);
    }

    let mut problems = Vec::new();
    for (krate, forbidden) in FORBIDDEN {
        let Some(start) = names.iter().find(|(_, n)| n == krate).map(|(id, _)| id.clone()) else {
            problems.push(format!("crate {krate} is missing from the workspace"));
            continue;
        };
        let mut seen = BTreeSet::new();
        let mut stack = vec![start.clone()];
        while let Some(id) = stack.pop() {
            for dep in edges.get(&id).into_iter().flatten() {
                if seen.insert(dep.clone()) {
                    stack.push(dep.clone());
                }
            }
        }
        for dep in &seen {
            let name = &names[dep];
            if forbidden.contains(&name.as_str()) {
                problems.push(format!(
                    "{krate} must not depend on {name}, but it does (normal dependencies)"
                ));
            }
        }
    }
    Ok(problems)
}

/// Every `.rs` file under `crates/` and `xtask/` opens with a `//!` line.
fn check_headers(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let mut stack = vec![root.join("crates"), root.join("xtask")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let first = text.lines().next().unwrap_or_default();
                if !first.starts_with("//!") {
                    problems.push(format!(
                        "{} does not open with a //! line",
                        path.strip_prefix(root).unwrap_or(&path).display()
                    ));
                }
            }
        }
    }
    problems
}
