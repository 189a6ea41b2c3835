//! Project chores: `cargo xtask tidy` checks the crate boundaries and file headers, `cargo xtask ci`
//! runs the local CI pipeline, `cargo xtask backends` proves the GPU backends (wgpu tests and a
//! short smoke run over any Vulkan driver, the CUDA feature compiled), and `cargo xtask gpu-check` packs the CUDA
//! binaries and a script to run them on a machine with an NVIDIA GPU.

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
    (
        "memr2-drift",
        &["burn", "memr2-policy", "memr2-logo-grpo", "memr2-trainer"],
    ),
    (
        "memr2-openai",
        &[
            "burn",
            "memr2-store",
            "memr2-sim",
            "memr2-policy",
            "memr2-logo-grpo",
            "memr2-drift",
            "memr2-trainer",
        ],
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("tidy") => tidy(),
        Some("ci") => ci(&args[1..]),
        Some("backends") => backends(),
        Some("gpu-check") => gpu_check(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  \
                 tidy               check crate boundaries and that every .rs file opens with a //! line\n  \
                 ci [--no-clippy]   fmt check, tidy, clippy (warnings denied), tests, doc tests, docs\n  \
                 backends           wgpu: policy and objective tests plus the smoke preset (any Vulkan\n                     \
                 driver, a software one included); cuda: build\n  \
                 gpu-check [DIR]    build the CUDA test binaries, the `memr2` binary and the policy\n                     \
                 benchmark into DIR (default target/gpu-check) with a run.sh for a GPU machine"
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

/// The features the checks build with: the trainer's `mpi` feature (and with it the tests that
/// run `mpirun`) where an MPI library is installed.
fn ci_features() -> Vec<&'static str> {
    let mpi = Command::new("mpicc")
        .arg("--showme:version")
        .output()
        .is_ok_and(|o| o.status.success())
        || Command::new("mpicc")
            .arg("-show")
            .output()
            .is_ok_and(|o| o.status.success());
    if mpi {
        eprintln!("xtask: MPI found: building with memr2-trainer/mpi and running the mpirun tests");
        vec!["--features", "memr2-trainer/mpi"]
    } else {
        eprintln!(
            "xtask: MPI not found (no mpicc): the multi-process (mpirun) tests are NOT run; \
             install Open MPI and libclang (Debian: openmpi-bin libopenmpi-dev libclang-dev) to run them"
        );
        Vec::new()
    }
}

fn ci(args: &[String]) -> Result<(), String> {
    let clippy = !args.iter().any(|a| a == "--no-clippy");
    let features = ci_features();
    let with = |base: &[&'static str], tail: &[&'static str]| -> Vec<&'static str> {
        base.iter().chain(&features).chain(tail).copied().collect()
    };
    run("cargo", &["fmt", "--all", "--", "--check"], &[])?;
    tidy()?;
    if clippy {
        run(
            "cargo",
            &with(
                &["clippy", "--workspace", "--all-targets"],
                &["--", "-D", "warnings"],
            ),
            &[],
        )?;
    }
    run(
        "cargo",
        &with(&["nextest", "run", "--workspace", "--no-fail-fast"], &[]),
        &[],
    )?;
    run("cargo", &with(&["test", "--workspace", "--doc"], &[]), &[])?;
    run(
        "cargo",
        &with(&["doc", "--workspace", "--no-deps"], &[]),
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

/// Cargo arguments selecting the unit tests that run on every backend (the policy's and the
/// objective's), with `backend`'s test feature.
fn backend_test_args(backend: &str) -> Vec<String> {
    let features = format!("memr2-policy/test-{backend},memr2-logo-grpo/test-{backend}");
    [
        "-p",
        "memr2-policy",
        "-p",
        "memr2-logo-grpo",
        "--lib",
        "--features",
        &features,
    ]
    .map(String::from)
    .to_vec()
}

/// Features of the one build that proves the GPU backends: the policy's and the objective's tests
/// on wgpu, and the trainer with both GPU backends and the charts' PNG copies. One feature set, so
/// the burn stack is compiled once for all of it.
const BACKENDS_FEATURES: &str = "memr2-policy/test-wgpu,memr2-logo-grpo/test-wgpu,\
memr2-trainer/wgpu,memr2-trainer/cuda,memr2-trainer/png";

/// Proves the GPU backends on a machine without a GPU: the policy's and the objective's tests
/// and the smoke preset on wgpu (over whatever Vulkan driver is installed; Mesa's lavapipe is a
/// software one), the `cuda` feature compiled (it needs no CUDA toolkit to build), and the
/// charts' PNG copies. Everything comes from one build: the test build of the three crates,
/// whose trainer integration test makes cargo build the `memr2` binary with the same features.
fn backends() -> Result<(), String> {
    run(
        "cargo",
        &[
            "nextest",
            "run",
            "-p",
            "memr2-policy",
            "-p",
            "memr2-logo-grpo",
            "-p",
            "memr2-trainer",
            "--lib",
            "--test",
            "drift",
            "--features",
            BACKENDS_FEATURES,
            "--no-fail-fast",
            "-E",
            "package(memr2-policy) | package(memr2-logo-grpo) | (package(memr2-trainer) & test(/plot/))",
        ],
        &[],
    )?;
    let run_dir = std::env::temp_dir().join(format!("memr2-wgpu-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run_dir);
    let binary = workspace_root().join("target/debug/memr2");
    let binary_arg = binary.to_str().ok_or("target path is not UTF-8")?;
    let run_dir_arg = run_dir.to_string_lossy().to_string();
    // The smoke preset cut to one stage of 4 sessions and an evaluation at 4 sessions: every
    // phase runs on wgpu, in a few minutes on a software Vulkan driver.
    let config_path = std::env::temp_dir().join(format!("memr2-wgpu-smoke-{}.json", std::process::id()));
    let smoke_args = [
        "train",
        "--preset",
        "smoke",
        "--sft-epochs",
        "1",
        "--answerer-epochs",
        "1",
        "--backend",
        "wgpu",
    ];
    let printed = Command::new(binary_arg)
        .args(smoke_args)
        .arg("--print-config")
        .output()
        .map_err(|e| format!("could not run {binary_arg}: {e}"))?;
    if !printed.status.success() {
        return Err(format!(
            "`memr2 train --print-config` failed: {}",
            String::from_utf8_lossy(&printed.stderr)
        ));
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&printed.stdout).map_err(|e| format!("the printed configuration: {e}"))?;
    config["curriculum"]["horizons"] = serde_json::json!([4]);
    config["eval"]["sessions"] = serde_json::json!(4);
    std::fs::write(&config_path, config.to_string())
        .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let smoke = run(
        binary_arg,
        &[
            "train",
            "--config",
            config_path.to_str().ok_or("temp path is not UTF-8")?,
            "--backend",
            "wgpu",
            "--run-dir",
            &run_dir_arg,
        ],
        &[],
    );
    let _ = std::fs::remove_file(&config_path);
    let report = run_dir.join("report.md");
    let smoke = smoke.and_then(|()| {
        if !report.exists() {
            return Err("the wgpu smoke run wrote no report.md".into());
        }
        run(binary_arg, &["report", &run_dir_arg, "--png"], &[])?;
        let pngs = walk_count(&run_dir, "png");
        if pngs == 0 {
            return Err("`memr2 report --png` wrote no PNG".into());
        }
        eprintln!("xtask: `memr2 report --png` wrote {pngs} PNG charts");
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&run_dir);
    smoke
}

/// Files under `dir` (recursively) whose extension is `ext`.
fn walk_count(dir: &Path, ext: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| e.path())
        .map(|p| {
            if p.is_dir() {
                walk_count(&p, ext)
            } else {
                usize::from(p.extension().is_some_and(|e| e == ext))
            }
        })
        .sum()
}

/// Executables `cargo <args> --message-format json` built, with their target names.
fn built_executables(args: &[&str]) -> Result<Vec<(String, PathBuf)>, String> {
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--message-format", "json"]);
    eprintln!("xtask: running cargo {}", full.join(" "));
    let out = Command::new("cargo")
        .args(&full)
        .current_dir(workspace_root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!("`cargo {}` failed with {}", full.join(" "), out.status));
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(exe), Some(name)) = (
            message.get("executable").and_then(|e| e.as_str()),
            message.pointer("/target/name").and_then(|n| n.as_str()),
        ) {
            let package = message
                .get("package_id")
                .and_then(|p| p.as_str())
                .and_then(|p| p.split('#').next())
                .and_then(|p| p.rsplit('/').next())
                .unwrap_or("unknown");
            found.push((format!("{package}-{name}"), PathBuf::from(exe)));
        }
    }
    Ok(found)
}

const GPU_SCRIPT: &str = r#"#!/usr/bin/env bash
# Runs memr2's CUDA checks on a machine with an NVIDIA GPU and its driver; no Rust toolchain
# needed. Writes its results to $OUT (default: ./gpu-check-results).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$PWD/gpu-check-results}"
mkdir -p "$out"
# NVRTC, which compiles the kernels at run time, is often outside the loader's cache.
for d in "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
nvidia-smi | tee "$out/nvidia-smi.txt" || echo "nvidia-smi not found" | tee "$out/nvidia-smi.txt"
status=0
for t in "$here"/tests/*; do
    echo "== $(basename "$t")" | tee -a "$out/tests.txt"
    "$t" 2>&1 | tee -a "$out/tests.txt" || status=1
done
echo "== smoke preset on cuda" | tee "$out/smoke.txt"
rm -rf "$out/smoke-run"
start=$SECONDS
"$here/memr2" train --preset smoke --backend cuda --run-dir "$out/smoke-run" 2>&1 \
    | tee -a "$out/smoke.txt" || status=1
echo "smoke preset: $((SECONDS - start)) s" | tee -a "$out/smoke.txt"
echo "== policy benchmark" | tee "$out/bench.txt"
POLICY_BENCH_BACKENDS="${POLICY_BENCH_BACKENDS:-cuda}" POLICY_BENCH_MODELS="${POLICY_BENCH_MODELS:-tiny,qwen0.5b}" \
    "$here/bench-policy" 2>&1 | tee -a "$out/bench.txt" || status=1
exit $status
"#;

/// Builds the CUDA binaries (release) into `dir` with `run.sh`, which runs on a GPU machine.
fn gpu_check(args: &[String]) -> Result<(), String> {
    let dir = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/gpu-check"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tests")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let copy = |from: &Path, to: &Path| -> Result<(), String> {
        std::fs::copy(from, to)
            .map(|_| ())
            .map_err(|e| format!("copy {} -> {}: {e}", from.display(), to.display()))
    };
    let mut args = vec![
        "test".to_string(),
        "--release".to_string(),
        "--no-run".to_string(),
    ];
    args.extend(backend_test_args("cuda"));
    let tests = built_executables(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    for (name, exe) in &tests {
        copy(exe, &dir.join("tests").join(name))?;
    }
    let benches = built_executables(&[
        "bench",
        "--no-run",
        "-p",
        "memr2-policy",
        "--bench",
        "policy",
        "--features",
        "test-cuda",
    ])?;
    let (_, bench) = benches.first().ok_or("the policy benchmark was not built")?;
    copy(bench, &dir.join("bench-policy"))?;
    run(
        "cargo",
        &["build", "--release", "-p", "memr2-trainer", "--features", "cuda"],
        &[],
    )?;
    copy(&workspace_root().join("target/release/memr2"), &dir.join("memr2"))?;
    let script = dir.join("run.sh");
    std::fs::write(&script, GPU_SCRIPT).map_err(|e| format!("{}: {e}", script.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", script.display()))?;
    }
    eprintln!(
        "xtask: {} test binaries, the policy benchmark and memr2 (cuda) are in {}; on a GPU machine run {}/run.sh",
        tests.len(),
        dir.display(),
        dir.display()
    );
    Ok(())
}
