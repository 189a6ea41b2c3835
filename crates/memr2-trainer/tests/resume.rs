//! A run killed mid-curriculum and resumed writes the same metrics as a run never stopped.

use burn::backend::{Autodiff, Flex};
use memr2_trainer::config::{CurriculumConfig, EvalConfig, Keep, TrainConfig};
use memr2_trainer::metrics::MetricsLog;
use memr2_trainer::train::{RunOptions, run};
use memr2_trainer::{TrainError, checkpoint};
use serde_json::Value;

type B = Autodiff<Flex>;

fn tiny_config() -> TrainConfig {
    let mut config = TrainConfig::smoke();
    config.sft.epochs = 1;
    config.answerer.epochs = 2;
    config.curriculum = CurriculumConfig {
        horizons: vec![2, 3],
        steps_per_stage: 2,
        validate_every: 1,
        keep: Default::default(),
    };
    config.rl.warmup_steps = 1;
    config.eval = EvalConfig {
        validation_episodes: 1,
        // Every stage validated at the evaluation's horizon (and the learning rate ramped
        // above): a resumed run must reproduce both.
        validation_sessions: Some(3),
        test_episodes: 1,
        sessions: 3,
    };
    config
}

/// Metrics without the wall-clock fields, which differ from run to run.
fn deterministic(records: Vec<Value>) -> Vec<Value> {
    records
        .into_iter()
        .map(|mut r| {
            if let Some(map) = r.as_object_mut() {
                map.retain(|k, _| !k.ends_with("_s") && !k.ends_with("_per_s"));
                if let Some(update) = map.get_mut("update").and_then(Value::as_object_mut) {
                    update.retain(|k, _| !k.ends_with("_s"));
                }
            }
            r
        })
        .collect()
}

#[test]
fn resumed_run_matches_uninterrupted_run() {
    let root = tempfile::tempdir().unwrap();
    let device = Default::default();
    let quiet = &mut |_: memr2_trainer::train::Event<'_>| {};

    let straight = RunOptions {
        dir: root.path().join("straight"),
        ..RunOptions::default()
    };
    run::<B>(tiny_config(), &straight, &device, quiet).unwrap();

    // Stop after the first RL step (as if killed), then resume.
    let killed = RunOptions {
        dir: root.path().join("killed"),
        stop_after_steps: Some(1),
        ..RunOptions::default()
    };
    let err = run::<B>(tiny_config(), &killed, &device, quiet)
        .err()
        .expect("the run stops early");
    assert!(matches!(err, TrainError::Stopped { step: 1 }), "{err}");
    let partial = MetricsLog::read(&killed.dir.join("metrics.jsonl")).unwrap();
    let resumed = RunOptions {
        resume: true,
        stop_after_steps: None,
        ..killed.clone()
    };
    run::<B>(tiny_config(), &resumed, &device, quiet).unwrap();

    let a = deterministic(MetricsLog::read(&straight.dir.join("metrics.jsonl")).unwrap());
    let b = deterministic(MetricsLog::read(&killed.dir.join("metrics.jsonl")).unwrap());
    assert!(partial.len() < b.len(), "the resumed run wrote more lines");
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "metrics line {i} differs after resuming");
    }
    assert!(
        a.iter().any(|r| r.get("reward_global").is_some()),
        "RL steps were logged"
    );

    let answerer_epochs: Vec<&Value> = a.iter().filter(|r| r.get("answerer_epoch").is_some()).collect();
    assert_eq!(answerer_epochs.len(), 2, "one line per answerer epoch");
    assert!(
        answerer_epochs[0]
            .get("validation_oracle_f1")
            .is_some_and(Value::is_f64)
    );

    // The run directory has what a user expects.
    for file in ["config.json", "tokenizer.json", "report.md", "plots/reward.svg"] {
        assert!(straight.dir.join(file).exists(), "{file} is missing");
    }
    for name in ["final", "sft", "answerer"] {
        let dir = straight.dir.join("checkpoints").join(name);
        assert!(checkpoint::load::<B>(&dir, &device).is_ok(), "checkpoint {name}");
    }
}

#[test]
fn corrupt_checkpoint_and_nonempty_run_dir_are_clear_errors() {
    let root = tempfile::tempdir().unwrap();
    let device = Default::default();
    let quiet = &mut |_: memr2_trainer::train::Event<'_>| {};
    let dir = root.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "keep me").unwrap();
    let options = RunOptions {
        dir: dir.clone(),
        ..RunOptions::default()
    };
    let err = run::<B>(tiny_config(), &options, &device, quiet)
        .err()
        .expect("refuses a non-empty dir");
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.join("notes.txt")).unwrap(), "keep me");

    // Resuming a directory without a run is an error naming what is missing.
    let resume = RunOptions {
        resume: true,
        ..options
    };
    let err = run::<B>(tiny_config(), &resume, &device, quiet)
        .err()
        .expect("nothing to resume");
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn validating_more_often_leaves_the_rollouts_alone() {
    let root = tempfile::tempdir().unwrap();
    let device = Default::default();
    let steps = |validate_every: usize, validation_shards: usize, name: &str| {
        let mut config = tiny_config();
        config.curriculum.validate_every = validate_every;
        config.agent.generation_shards = validation_shards;
        let options = RunOptions {
            dir: root.path().join(name),
            ..RunOptions::default()
        };
        run::<B>(config, &options, &device, &mut |_| {}).unwrap();
        let records = deterministic(MetricsLog::read(&options.dir.join("metrics.jsonl")).unwrap());
        let steps: Vec<Value> = records
            .into_iter()
            .filter(|r| r.get("reward_global").is_some())
            .collect();
        assert_eq!(steps.len(), 4, "{name}: two stages of two steps");
        steps
    };
    // Validation after every step or only at the end of a stage: the same RL steps. Its
    // generation is split in two parts, each seeded by a draw of its own generator. (The
    // parts change the rollouts themselves, so both runs use two.)
    assert_eq!(steps(1, 2, "every"), steps(2, 2, "end"));
}

#[test]
fn only_a_run_that_keeps_the_best_checkpoint_reads_it_back() {
    // Each run stops after its first step; the first stage's best checkpoint (its start, which
    // no step of this tiny run beats on validation) is then replaced by a corrupt file, and
    // the run resumed. Keeping the best, the second stage starts from that file: a clear
    // error naming it. Keeping the last step, the file is never read.
    let root = tempfile::tempdir().unwrap();
    let device = Default::default();
    let resumed = |keep: Keep| {
        let mut config = tiny_config();
        config.curriculum.keep = keep;
        let options = RunOptions {
            dir: root.path().join(format!("{keep:?}")),
            stop_after_steps: Some(1),
            ..RunOptions::default()
        };
        let err = run::<B>(config.clone(), &options, &device, &mut |_| {})
            .err()
            .expect("the run stops early");
        assert!(matches!(err, TrainError::Stopped { step: 1 }), "{err}");
        let best = options.dir.join("checkpoints/best-stage-2/model.bin");
        assert!(best.exists(), "the stage's start is saved as its best");
        std::fs::write(&best, b"not a checkpoint").unwrap();
        let options = RunOptions {
            resume: true,
            stop_after_steps: None,
            ..options
        };
        let result = run::<B>(config, &options, &device, &mut |_| {});
        (result, options.dir)
    };

    let (result, _) = resumed(Keep::Best);
    let err = result.err().expect("the corrupt best checkpoint is read back");
    assert!(err.to_string().contains("best-stage-2"), "{err}");

    let (result, dir) = resumed(Keep::Last);
    result.expect("the last step is carried on, the best checkpoint is not read");
    let records = MetricsLog::read(&dir.join("metrics.jsonl")).unwrap();
    let step_2 = records
        .iter()
        .find(|r| {
            r.get("horizon").and_then(Value::as_u64) == Some(2)
                && r["step"] == 2
                && r.get("validation_f1").is_some()
        })
        .expect("the first stage's last validation");
    let step_0 = &records
        .iter()
        .find(|r| r.get("validation_f1").is_some())
        .expect("the first validation")["validation_f1"];
    assert!(
        step_2["validation_f1"].as_f64() <= step_0.as_f64(),
        "the first stage's steps did not beat its start, so its best checkpoint is the corrupt one"
    );
    assert!(dir.join("checkpoints/final/model.bin").exists());
}

#[test]
fn a_run_that_keeps_the_best_saves_each_stages_last_step_beside_it() {
    // No step of this tiny run beats a stage's start on validation, so each stage's best is
    // its start, and a run that hands the best on saves the last step beside it, for `eval
    // --trained last-stage-N`. A run that hands the last step on has it as `final` already.
    let root = tempfile::tempdir().unwrap();
    let device = Default::default();
    for keep in [Keep::Best, Keep::Last] {
        let mut config = tiny_config();
        config.curriculum.keep = keep;
        let options = RunOptions {
            dir: root.path().join(format!("{keep:?}")),
            ..RunOptions::default()
        };
        run::<B>(config, &options, &device, &mut |_| {}).unwrap();
        let saved = |name: &str| {
            options
                .dir
                .join("checkpoints")
                .join(name)
                .join("model.bin")
                .exists()
        };
        for h in [2, 3] {
            assert!(saved(&format!("best-stage-{h}")), "{keep:?}: stage {h}'s best");
            assert_eq!(
                saved(&format!("last-stage-{h}")),
                keep == Keep::Best,
                "{keep:?}: stage {h}'s last step"
            );
        }
    }
}

#[test]
fn a_placebo_trains_on_the_same_conversations_as_its_run() {
    // The placebo's permutations draw from the run's generator, so from the second step its
    // rollouts differ from the real run's; the conversations each step trains on must not.
    let root = tempfile::tempdir().unwrap();
    let device = Default::default();
    let conversations = |placebo: bool| {
        let mut config = tiny_config();
        config.curriculum.steps_per_stage = 4;
        config.rl.placebo = placebo;
        let options = RunOptions {
            dir: root.path().join(format!("placebo-{placebo}")),
            ..RunOptions::default()
        };
        run::<B>(config, &options, &device, &mut |_| {}).unwrap();
        MetricsLog::read(&options.dir.join("metrics.jsonl"))
            .unwrap()
            .into_iter()
            .filter(|r| r.get("reward_global").is_some())
            .map(|r| r["episodes"].clone())
            .collect::<Vec<Value>>()
    };
    let real = conversations(false);
    assert_eq!(real.len(), 8, "two stages of four steps");
    let distinct: std::collections::BTreeSet<String> = real.iter().map(Value::to_string).collect();
    assert!(distinct.len() > 1, "the steps draw their conversations: {real:?}");
    assert_eq!(real, conversations(true));
}
