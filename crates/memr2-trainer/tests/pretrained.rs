//! Training a Hugging Face checkpoint on LoCoMo: the tiny random Qwen2 of memr2-policy's parity
//! tests, on the LoCoMo-format fixture of memr2-sim, for a couple of steps per stage.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use memr2_trainer::checkpoint;
use memr2_trainer::config::{CurriculumConfig, DataSpec, EvalConfig, ModelSpec, TrainConfig};
use memr2_trainer::eval::ORACLE_ROW;
use memr2_trainer::metrics::MetricsLog;
use memr2_trainer::train::{RunOptions, run};

type B = Autodiff<Flex>;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A copy of the tiny Qwen2 fixture whose `max_position_embeddings` (128 in the fixture, shorter
/// than a LoCoMo session prompt) is raised: RoPE weights do not depend on it.
fn long_context_fixture(dir: &Path) -> PathBuf {
    let source = workspace().join("crates/memr2-policy/tests/fixtures/tiny-qwen2");
    let target = dir.join("tiny-qwen2");
    std::fs::create_dir_all(&target).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
    }
    let path = target.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["max_position_embeddings"] = 4096.into();
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    target
}

fn locomo_config(model: PathBuf) -> TrainConfig {
    let mut config = TrainConfig::smoke();
    config.data = DataSpec::Locomo {
        path: workspace().join("crates/memr2-sim/tests/fixtures/locomo_mini.json"),
    };
    config.model = ModelSpec::Pretrained { dir: model };
    // LoCoMo has no gold facts: no warm start from them, the pretrained model answers.
    config.sft.epochs = 0;
    config.answerer.epochs = 0;
    config.agent.max_extract_tokens = 24;
    config.agent.max_manage_tokens = 16;
    config.curriculum = CurriculumConfig {
        horizons: vec![1, 2],
        steps_per_stage: 2,
        validate_every: 2,
        keep: Default::default(),
    };
    config.eval = EvalConfig {
        validation_episodes: 1,
        validation_sessions: None,
        test_episodes: 1,
        sessions: 2,
    };
    config
}

#[test]
fn a_hf_checkpoint_trains_on_locomo_end_to_end() {
    let root = tempfile::tempdir().unwrap();
    let model = long_context_fixture(root.path());
    let device = Default::default();
    let options = RunOptions {
        dir: root.path().join("run"),
        ..RunOptions::default()
    };
    let report = run::<B>(locomo_config(model.clone()), &options, &device, &mut |_| {}).unwrap();

    // The model's own tokenizer is the run's.
    assert_eq!(
        std::fs::read_to_string(options.dir.join("tokenizer.json")).unwrap(),
        std::fs::read_to_string(model.join("tokenizer.json")).unwrap()
    );
    // Four RL steps ran, each generating from the loaded weights.
    let steps: Vec<serde_json::Value> = MetricsLog::read(&options.dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| r.get("reward_global").is_some())
        .collect();
    assert_eq!(steps.len(), 4);
    assert!(
        steps
            .iter()
            .all(|s| s["rollout_tokens_per_s"].as_f64().unwrap() > 0.0)
    );
    // The evaluation is over LoCoMo's held-out conversation, in its categories.
    assert!(
        report
            .rows
            .iter()
            .all(|(_, scores)| scores.board.overall().count > 0)
    );
    assert!(report.table.contains("single_hop"), "{}", report.table);
    // Without gold facts there is no oracle memory: the row says so instead of scoring an
    // empty memory under the oracle's name.
    assert!(report.rows.iter().all(|(name, _)| name != ORACLE_ROW));
    assert!(
        report.table.contains("| oracle memory | unavailable: "),
        "{}",
        report.table
    );
    // Checkpoints keep the HF architecture.
    let loaded = checkpoint::load::<B>(&options.dir.join("checkpoints/final"), &device).unwrap();
    assert_eq!(loaded.config.hidden_size, 32);
}

#[test]
fn a_warm_start_without_gold_facts_is_refused_before_any_work() {
    let root = tempfile::tempdir().unwrap();
    let model = long_context_fixture(root.path());
    let options = RunOptions {
        dir: root.path().join("run"),
        ..RunOptions::default()
    };
    let mut config = locomo_config(model);
    config.sft.epochs = 1;
    let err = run::<B>(config, &options, &Default::default(), &mut |_| {})
        .err()
        .expect("SFT needs gold facts");
    let message = err.to_string();
    assert!(message.contains("has no gold facts"), "{message}");
    assert!(message.contains("--sft-epochs 0"), "{message}");
    assert!(!options.dir.exists(), "nothing was written");
}

#[test]
fn a_missing_model_directory_is_a_clear_error_that_writes_nothing_else() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("no-such-model");
    let options = RunOptions {
        dir: root.path().join("run"),
        ..RunOptions::default()
    };
    let err = run::<B>(
        locomo_config(missing.clone()),
        &options,
        &Default::default(),
        &mut |_| {},
    )
    .err()
    .expect("no model, no run");
    assert!(err.to_string().contains("no-such-model"), "{err}");
    assert!(!options.dir.join("checkpoints").exists());
}
