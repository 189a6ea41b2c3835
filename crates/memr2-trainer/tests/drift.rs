//! The drift environment end to end through the trainer: a LoGo-GRPO step whose rewards are
//! the tool calls' scores, and the evaluation, on a small untrained model (the warm start's
//! tool-call examples are checked in `sft`'s unit tests).

use burn::backend::{Autodiff, Flex};
use memr2_trainer::config::{CurriculumConfig, EvalConfig, ModelSpec, TrainConfig};
use memr2_trainer::metrics::MetricsLog;
use memr2_trainer::train::{RunOptions, run};

type B = Autodiff<Flex>;

#[test]
fn the_drift_preset_trains_and_evaluates_tool_calls() {
    let root = tempfile::tempdir().unwrap();
    let mut config = TrainConfig::drift();
    config.model = ModelSpec::Tiny {
        vocab_size: 512,
        hidden_size: 64,
        layers: 2,
        heads: 4,
    };
    config.sft.epochs = 0;
    config.answerer.epochs = 0;
    config.rl.logo.n_rollouts = 2;
    config.rl.episodes_per_step = 1;
    config.curriculum = CurriculumConfig {
        horizons: vec![3],
        steps_per_stage: 1,
        validate_every: 1,
        keep: Default::default(),
    };
    config.eval = EvalConfig {
        validation_episodes: 1,
        validation_sessions: None,
        test_episodes: 2,
        sessions: 3,
    };
    let options = RunOptions {
        dir: root.path().join("run"),
        ..RunOptions::default()
    };
    let report = run::<B>(config, &options, &Default::default(), &mut |_| {}).unwrap();

    let records = MetricsLog::read(&options.dir.join("metrics.jsonl")).unwrap();
    let step = records
        .iter()
        .find(|r| r.get("reward_global").is_some())
        .expect("an RL step was logged");
    // One tool call per rollout of the step's scenario: a call that does not parse is a
    // counted format error, never a panic.
    let errors = step["answer_format_errors"].as_u64().unwrap();
    let k = TrainConfig::drift().rl.logo.k_rerollouts as u64;
    let calls = 2 + k * step["local_groups"].as_u64().unwrap();
    assert!(errors <= calls, "{errors} format errors in {calls} calls");
    // Every row of the evaluation asked one call per test scenario; the oracle's memory is
    // there, since the drift environment has gold facts.
    assert!(report.unavailable.is_empty());
    let names: Vec<&str> = report.rows.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["no memory", "oracle memory", "SFT only", "LoGo-GRPO"]);
    assert!(report.rows.iter().all(|(_, s)| s.board.overall().count == 2));
    assert!(report.table.contains("Differences paired"), "{}", report.table);

    // `memr2 drift eval` scores another of the run's checkpoints as the trained policy when
    // asked by name, into a file of its own, and refuses a name the run does not have.
    let drift_eval = |trained: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_memr2"))
            .args([
                "drift",
                "eval",
                "--max-scenarios",
                "1",
                "--trained",
                trained,
                "--checkpoint",
            ])
            .arg(&options.dir)
            .output()
            .unwrap()
    };
    let out = drift_eval("best-stage-3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(options.dir.join("drift-eval-test-best-stage-3.json").exists());
    assert!(!options.dir.join("drift-eval-test.json").exists());
    let out = drift_eval("best-stage-9");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no checkpoint \"best-stage-9\""), "{stderr}");
}

/// RL on the tool caller (`rl.actor`): its sampled calls are logged and trained on, the
/// trained caller travels in the checkpoints, and a run stopped mid-curriculum and resumed
/// writes the same metrics as one never stopped.
#[test]
fn the_tool_caller_trains_beside_the_memory_and_resumes_exactly() {
    use memr2_trainer::TrainError;
    use memr2_trainer::checkpoint;
    use memr2_trainer::config::ActorRlConfig;
    use serde_json::Value;

    let root = tempfile::tempdir().unwrap();
    let device = Default::default();
    let config = || {
        let mut config = TrainConfig::drift();
        config.model = ModelSpec::Tiny {
            vocab_size: 512,
            hidden_size: 32,
            layers: 1,
            heads: 2,
        };
        config.sft.epochs = 0;
        config.answerer.epochs = 0;
        config.rl.logo.n_rollouts = 2;
        config.rl.logo.p_local = 0.0;
        config.rl.episodes_per_step = 1;
        config.rl.actor = Some(ActorRlConfig {
            samples: 4,
            learning_rate: 1e-2,
        });
        config.curriculum = CurriculumConfig {
            horizons: vec![3],
            steps_per_stage: 2,
            validate_every: 1,
            keep: Default::default(),
        };
        config.eval = EvalConfig {
            validation_episodes: 1,
            validation_sessions: None,
            test_episodes: 1,
            sessions: 3,
        };
        config
    };
    let quiet = &mut |_: memr2_trainer::train::Event<'_>| {};
    let straight = RunOptions {
        dir: root.path().join("straight"),
        ..RunOptions::default()
    };
    run::<B>(config(), &straight, &device, quiet).unwrap();
    let killed = RunOptions {
        dir: root.path().join("killed"),
        stop_after_steps: Some(1),
        ..RunOptions::default()
    };
    let err = run::<B>(config(), &killed, &device, quiet)
        .err()
        .expect("stopped");
    assert!(matches!(err, TrainError::Stopped { step: 1 }), "{err}");
    let resumed = RunOptions {
        resume: true,
        stop_after_steps: None,
        ..killed.clone()
    };
    run::<B>(config(), &resumed, &device, quiet).unwrap();

    // Wall-clock fields differ from run to run; everything else must not.
    let timeless = |path: &std::path::Path| -> Vec<Value> {
        fn strip(v: &mut Value) {
            if let Some(map) = v.as_object_mut() {
                map.retain(|k, _| !k.ends_with("_s") && !k.ends_with("_per_s"));
                map.values_mut().for_each(strip);
            }
        }
        let mut records = MetricsLog::read(&path.join("metrics.jsonl")).unwrap();
        records.iter_mut().for_each(strip);
        records
    };
    let a = timeless(&straight.dir);
    assert_eq!(a, timeless(&killed.dir), "the resumed run differs");

    // Each step sampled 4 calls for each rollout's memory (2 rollouts, one task each). This
    // untrained model's calls never finish, so there is nothing to learn here; the groups and
    // advantages are checked in `step`'s unit tests.
    let steps: Vec<&Value> = a.iter().filter(|r| r.get("reward_global").is_some()).collect();
    assert_eq!(steps.len(), 2);
    for step in &steps {
        assert_eq!(step["actor"]["reward"]["n"], 8, "{step}");
    }

    // The caller travels with the policy in the checkpoints the run keeps.
    for name in ["final", "best-stage-3", "latest"] {
        let loaded = checkpoint::load::<B>(&straight.dir.join("checkpoints").join(name), &device).unwrap();
        assert!(loaded.actor.is_some(), "checkpoint {name} holds no tool caller");
    }
    let sft = checkpoint::load::<B>(&straight.dir.join("checkpoints/sft"), &device).unwrap();
    assert!(sft.actor.is_none());
}
