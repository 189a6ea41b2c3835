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
}
