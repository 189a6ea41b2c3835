//! Runs over several processes under `mpirun` (Open MPI), on loopback: a 2-rank run gives the
//! 1-rank run's numbers; a rank that dies or hangs ends the job with an error within a bound;
//! `--resume` then finishes the run, on the same or another number of ranks. Built with the `mpi` feature, which needs MPI installed.
#![cfg(feature = "mpi")]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const MEMR2: &str = env!("CARGO_BIN_EXE_memr2");

/// A short smoke run: two warm-start epochs, one answerer epoch, the two RL stages; two
/// gradient shards and two generation parts, so that each of two ranks gets one of each.
fn train_args(run_dir: &Path) -> Vec<String> {
    [
        "train",
        "--preset",
        "smoke",
        "--sft-epochs",
        "2",
        "--answerer-epochs",
        "1",
        "--shards",
        "2",
        "--check-replicas",
        "--run-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([run_dir.display().to_string()])
    .collect()
}

/// `memr2` as one process.
fn alone(args: &[String]) -> Command {
    let mut cmd = Command::new(MEMR2);
    cmd.args(args);
    cmd
}

fn mpirun(ranks: usize, args: &[String]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        &ranks.to_string(),
    ])
    // Containers often forbid the cross-memory attach Open MPI's shared-memory transport
    // tries first.
    .args(["--mca", "btl_vader_single_copy_mechanism", "none"])
    .arg(MEMR2)
    .args(args);
    cmd
}

fn run(mut cmd: Command) -> Output {
    let out = cmd.output().expect("mpirun runs (is Open MPI installed?)");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The metrics lines without what depends on the machine's speed (seconds, tokens/s).
fn metrics(run_dir: &Path) -> Vec<Value> {
    fn strip(v: &mut Value) {
        if let Value::Object(map) = v {
            map.retain(|k, _| !(k.ends_with("_s") || k.ends_with("per_s") || k == "seconds"));
            map.values_mut().for_each(strip);
        }
    }
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("a metrics line");
            strip(&mut v);
            v
        })
        .collect()
}

fn evaluation(run_dir: &Path) -> Value {
    let text = std::fs::read_to_string(run_dir.join("evaluation.json")).expect("evaluation.json");
    let v: Value = serde_json::from_str(&text).expect("evaluation.json");
    v["evaluation"].clone()
}

/// The pids of the ranks of the job training into `run_dir`, by rank.
fn ranks_of(run_dir: &Path) -> Vec<(usize, u32)> {
    let needle = run_dir.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_none_or(|a| a != MEMR2) || !args.contains(&needle) {
            continue;
        }
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let rank = environ
            .split(|b| *b == 0)
            .filter_map(|kv| {
                String::from_utf8_lossy(kv)
                    .strip_prefix("OMPI_COMM_WORLD_RANK=")
                    .map(String::from)
            })
            .find_map(|r| r.parse().ok());
        if let Some(rank) = rank {
            found.push((rank, pid));
        }
    }
    found.sort();
    found
}

/// Starts a 2-rank run, waits until it has logged `lines` metrics lines, and sends `signal`
/// to rank 1. Returns the job's output and how long it took to end after the signal.
fn signal_rank_1(run_dir: &Path, lines: usize, signal: &str, timeout_s: &str) -> (Output, Duration) {
    let mut cmd = mpirun(2, &train_args(run_dir));
    cmd.env("MEMR2_COLLECTIVE_TIMEOUT_S", timeout_s)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child: Child = cmd.spawn().expect("mpirun starts");
    let start = Instant::now();
    let metrics_path = run_dir.join("metrics.jsonl");
    loop {
        let written = std::fs::read_to_string(&metrics_path)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if written >= lines {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the run never logged {lines} lines"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ranks = ranks_of(run_dir);
    let pid = ranks
        .iter()
        .find(|(rank, _)| *rank == 1)
        .unwrap_or_else(|| panic!("rank 1 not found among {ranks:?}"))
        .1;
    let signalled = Instant::now();
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("mpirun ends");
    (out, signalled.elapsed())
}

#[test]
fn two_ranks_train_like_one_and_survive_a_lost_rank() {
    let scratch = tempfile::tempdir().unwrap();
    let one = scratch.path().join("one");
    let two = scratch.path().join("two");

    // One process, then two ranks with the same global batch: the same numbers.
    run(alone(&train_args(&one)));
    let out = run(mpirun(2, &train_args(&two)));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.matches("run directory:").count(),
        1,
        "rank 0 alone prints the table: {stdout}"
    );
    let (m1, m2) = (metrics(&one), metrics(&two));
    assert!(
        m1.iter().any(|m| m.get("step").is_some()),
        "the run took RL steps"
    );
    assert_eq!(m1.len(), m2.len());
    for (a, b) in m1.iter().zip(&m2) {
        assert_eq!(a, b, "metrics differ between 1 and 2 ranks");
    }
    assert_eq!(evaluation(&one), evaluation(&two));

    // A rank that dies mid-run: mpirun ends the job with an error.
    let killed = scratch.path().join("killed");
    let (out, took) = signal_rank_1(&killed, 2, "-KILL", "600");
    assert!(!out.status.success(), "the job ended with an error");
    assert!(
        took < Duration::from_secs(60),
        "the job took {took:?} to end after the kill"
    );
    // A rank that hangs: the others give up after the collective timeout and end the job.
    let hung = scratch.path().join("hung");
    let (out, took) = signal_rank_1(&hung, 2, "-STOP", "20");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the job ended with an error");
    assert!(stderr.contains("did not complete within 20 s"), "{stderr}");
    assert!(
        took < Duration::from_secs(60),
        "the job took {took:?} to end after the hang"
    );
    assert!(ranks_of(&hung).is_empty(), "no rank is left behind");

    // Resumed on two ranks, the killed run ends as the uninterrupted one did.
    run(mpirun(
        2,
        &["train".into(), "--resume".into(), killed.display().to_string()],
    ));
    assert!(killed.join("report.md").exists());
    assert_eq!(metrics(&killed), m2);
    assert_eq!(evaluation(&killed), evaluation(&two));
    // And the hung one, resumed as one process, too.
    run(alone(&[
        "train".into(),
        "--resume".into(),
        hung.display().to_string(),
    ]));
    assert_eq!(metrics(&hung), m2);
    assert_eq!(evaluation(&hung), evaluation(&two));
}
