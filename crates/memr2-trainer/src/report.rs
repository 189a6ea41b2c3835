//! `report.md`, the one page of a run: what was trained, whether RL helped and where, what it
//! cost, the evaluation tables and the charts. Built only from what the run wrote
//! (`config.json`, `metrics.jsonl`, `evaluation.json`), so `memr2 report RUN` rebuilds it at
//! any time, for a finished run or one still going.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use memr2_sim::Category;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::TrainError;
use crate::config::{DataSpec, Keep, ModelSpec, TrainConfig};
use crate::eval::{Evaluation, ORACLE_ROW, Scores, paired_difference};
use crate::metrics::MetricsLog;
use crate::plot::{self, RunRecords};
use crate::train::RunDir;

/// The row of the warm start in every evaluation.
pub const SFT_ROW: &str = "SFT only";

/// The row of the empty memory in every evaluation.
pub const NO_MEMORY_ROW: &str = "no memory";

/// `evaluation.json`: the final evaluation as the run scored it, with what it was scored on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvaluationRecord {
    /// The environment's name.
    pub environment: String,
    /// The task's name.
    pub task: String,
    /// The test episodes' ids, in order (what [`Scores::per_episode`] is indexed by).
    pub episodes: Vec<String>,
    /// Sessions each test episode was cut to.
    pub sessions: usize,
    /// The run's seed.
    pub seed: u64,
    /// Seconds the evaluation took.
    pub seconds: f64,
    /// The rows.
    pub evaluation: Evaluation,
}

impl EvaluationRecord {
    /// Writes the record as JSON.
    pub fn write(&self, path: &Path) -> Result<(), TrainError> {
        let text = serde_json::to_string_pretty(self).expect("an evaluation serialises");
        std::fs::write(path, text).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads a record back; a malformed file is an error naming it.
    pub fn read(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("malformed evaluation: {e}"),
        })
    }

    /// A row's scores by name.
    pub fn row(&self, name: &str) -> Option<&Scores> {
        self.evaluation
            .rows
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
    }

    /// The rows of trained policies: everything but the fixed rows (no memory, oracle, SFT).
    pub fn policy_rows(&self) -> impl Iterator<Item = &(String, Scores)> {
        self.evaluation
            .rows
            .iter()
            .filter(|(n, _)| ![NO_MEMORY_ROW, ORACLE_ROW, SFT_ROW].contains(&n.as_str()))
    }
}

/// `12 min 5 s`, `45 s`, `1 h 02 min`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

/// The sum of a field over records, `None` when no record has it.
fn total(records: &[plot::Staged<'_>], pointer: &str) -> Option<f64> {
    let values: Vec<f64> = records
        .iter()
        .filter_map(|r| r.record.pointer(pointer).and_then(Value::as_f64))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The time each phase took, from the records' timings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PhaseTimes {
    /// Warm-start epochs and their seconds.
    pub sft: (usize, Option<f64>),
    /// Answerer epochs and their seconds.
    pub answerer: (usize, Option<f64>),
    /// RL steps and their seconds.
    pub steps: (usize, Option<f64>),
    /// Seconds in the steps' rollouts, scoring and updates.
    pub rollout: Option<f64>,
    /// See `rollout`.
    pub scoring: Option<f64>,
    /// See `rollout`.
    pub update: Option<f64>,
    /// Validations and their seconds.
    pub validation: (usize, Option<f64>),
    /// Seconds of the final evaluation.
    pub evaluation: Option<f64>,
}

impl PhaseTimes {
    /// Reads the timings out of a run's records.
    pub fn of(records: &RunRecords<'_>, evaluation: Option<&EvaluationRecord>) -> Self {
        Self {
            sft: (records.sft_epochs.len(), total(&records.sft_epochs, "/epoch_s")),
            answerer: (
                records.answerer_epochs.len(),
                total(&records.answerer_epochs, "/epoch_s"),
            ),
            steps: (records.steps.len(), total(&records.steps, "/step_s")),
            rollout: total(&records.steps, "/rollout_s"),
            scoring: total(&records.steps, "/scoring_s"),
            update: total(&records.steps, "/update_s"),
            validation: (
                records.validations.len(),
                total(&records.validations, "/validation_s"),
            ),
            evaluation: evaluation.map(|e| e.seconds),
        }
    }

    /// The Markdown table.
    pub fn table(&self) -> String {
        let t = |s: Option<f64>| s.map(duration).unwrap_or_else(|| "-".into());
        let share = |part: Option<f64>| match (part, self.steps.1) {
            (Some(p), Some(all)) if all > 0.0 => {
                format!("{} ({:.0}% of the steps)", duration(p), 100.0 * p / all)
            }
            _ => "-".into(),
        };
        let mut out = String::from("| phase | time | units |\n|---|---:|---|\n");
        let _ = writeln!(
            out,
            "| SFT warm start | {} | {} epochs |",
            t(self.sft.1),
            self.sft.0
        );
        let _ = writeln!(
            out,
            "| answerer | {} | {} epochs |",
            t(self.answerer.1),
            self.answerer.0
        );
        let _ = writeln!(out, "| RL steps | {} | {} steps |", t(self.steps.1), self.steps.0);
        let _ = writeln!(out, "| - rollout | {} | |", share(self.rollout));
        let _ = writeln!(
            out,
            "| - scoring (answering for rewards) | {} | |",
            share(self.scoring)
        );
        let _ = writeln!(out, "| - update | {} | |", share(self.update));
        let _ = writeln!(
            out,
            "| validation | {} | {} validations |",
            t(self.validation.1),
            self.validation.0
        );
        let _ = writeln!(out, "| final evaluation | {} | |", t(self.evaluation));
        let all = [
            self.sft.1,
            self.answerer.1,
            self.steps.1,
            self.validation.1,
            self.evaluation,
        ];
        if all.iter().any(Option::is_some) {
            let sum: f64 = all.iter().flatten().sum();
            let _ = writeln!(out, "| total | {} | |", duration(sum));
        }
        out
    }
}

/// The configuration in a few lines.
pub fn configuration(config: &TrainConfig) -> String {
    let data = match &config.data {
        DataSpec::Synthetic { size, seed, .. } => {
            format!("synthetic world ({size:?}, world seed {seed})").to_lowercase()
        }
        DataSpec::Locomo { path } | DataSpec::File { path } => format!("`{}`", path.display()),
        DataSpec::Drift {
            seed,
            drift,
            train_per_cell,
        } => format!(
            "MEMDRIFT scenarios (seed {seed}, {train_per_cell} per training cell and {} more for the tool caller, {:?} memories)",
            drift.tool_caller_per_cell, drift.condition
        ),
        DataSpec::External { name } => format!("environment `{name}`"),
    };
    let model = match &config.model {
        ModelSpec::Tiny {
            vocab_size,
            hidden_size,
            layers,
            heads,
        } => format!(
            "built-in transformer: hidden {hidden_size}, {layers} layers, {heads} heads, vocabulary {vocab_size}"
        ),
        ModelSpec::Pretrained { dir } => format!("pretrained `{}`", dir.display()),
    };
    let rl = &config.rl;
    let logo = &rl.logo;
    let horizons: Vec<String> = config.curriculum.horizons.iter().map(|h| h.to_string()).collect();
    let mut out = String::from("| | |\n|---|---|\n");
    let _ = writeln!(out, "| data | {data} |");
    let _ = writeln!(out, "| model | {model} |");
    let _ = writeln!(
        out,
        "| warm start | {} SFT epoch(s) (learning rate {:e}), then {} answerer epoch(s) |",
        config.sft.epochs, config.sft.learning_rate, config.answerer.epochs
    );
    let _ = writeln!(
        out,
        "| RL | {}: {} conversation(s) x {} rollouts per step, local groups of {} rerollouts with probability {}, learning rate {:e}{} |",
        config.policy_name(),
        rl.episodes_per_step,
        logo.n_rollouts,
        logo.k_rerollouts,
        logo.p_local,
        rl.learning_rate,
        if rl.placebo {
            ", rewards permuted within each group (placebo)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "| curriculum | {} sessions, {} steps per stage, validation every {} steps on {} conversation(s), {} |",
        horizons.join(" -> "),
        config.curriculum.steps_per_stage,
        config.curriculum.validate_every,
        config.eval.validation_episodes,
        match config.curriculum.keep {
            Keep::Best => "each stage's best checkpoint carried on",
            Keep::Last => "each stage's last step carried on",
        }
    );
    let _ = writeln!(
        out,
        "| evaluation | {} test conversation(s) at {} sessions |",
        config.eval.test_episodes, config.eval.sessions
    );
    let _ = writeln!(out, "| seed | {} |", config.seed);
    out
}

/// F1 per category of two rows side by side, with the questions behind each and the
/// difference.
fn category_table(before: &Scores, after: &Scores, names: (&str, &str)) -> String {
    let mut out = format!(
        "| category | questions | {} F1 | {} F1 | difference |\n|---|---:|---:|---:|---:|\n",
        names.0, names.1
    );
    let per_a = before.board.categories();
    let per_b = after.board.categories();
    for c in Category::ALL {
        let (Some((_, a)), Some((_, b))) = (
            per_a.iter().find(|(k, _)| *k == c),
            per_b.iter().find(|(k, _)| *k == c),
        ) else {
            continue;
        };
        if a.count == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {:+.1} |",
            c.name(),
            a.count,
            100.0 * a.f1,
            100.0 * b.f1,
            100.0 * (b.f1 - a.f1)
        );
    }
    out
}

/// The answer to "did RL help": the trained policy against the warm start, paired by test
/// conversation, and per category.
fn at_a_glance(record: &EvaluationRecord, times: &PhaseTimes) -> String {
    let mut out = String::new();
    let Some(sft) = record.row(SFT_ROW) else {
        return "The evaluation has no warm-start row to compare with.\n".into();
    };
    for (name, scores) in record.policy_rows() {
        let Some(d) = paired_difference(scores, sft) else {
            continue;
        };
        let verdict = if d.mean.abs() <= 2.0 * d.std_error {
            "within two standard errors of zero: on these test conversations RL is not distinguishable from the warm start"
        } else if d.mean > 0.0 {
            "more than two standard errors above zero: RL helped"
        } else {
            "more than two standard errors below zero: RL hurt"
        };
        let _ = writeln!(
            out,
            "- **Did RL help?** {name} - {SFT_ROW}: {:+.1} F1 (standard error {:.1}), better on {} test conversations, worse on {}, level on {}; {verdict}.",
            100.0 * d.mean,
            100.0 * d.std_error,
            d.better,
            d.worse,
            d.level
        );
        let per_a = sft.board.categories();
        let mut moves: Vec<(f64, &str, usize)> = scores
            .board
            .categories()
            .iter()
            .filter_map(|(c, b)| {
                let (_, a) = per_a.iter().find(|(k, _)| k == c)?;
                Some((b.f1 - a.f1, c.name(), a.count))
            })
            .filter(|m| m.2 > 0)
            .collect();
        moves.sort_by(|a, b| b.0.total_cmp(&a.0));
        let gained = moves.first().filter(|m| m.0 > 0.0);
        let lost = moves.last().filter(|m| m.0 < 0.0);
        let describe =
            |m: &(f64, &str, usize)| format!("{} ({:+.1} F1 over {} questions)", m.1, 100.0 * m.0, m.2);
        let where_ = match (gained, lost) {
            (None, None) => "no category moved".to_string(),
            (Some(g), None) => format!("most gained: {}; no category lost", describe(g)),
            (None, Some(l)) => format!("no category gained; most lost: {}", describe(l)),
            (Some(g), Some(l)) => format!("most gained: {}; most lost: {}", describe(g), describe(l)),
        };
        let _ = writeln!(out, "- **Where?** {where_}. Per category below.");
    }
    if let (Some(oracle), Some(none)) = (record.row(ORACLE_ROW), record.row(NO_MEMORY_ROW)) {
        let _ = writeln!(
            out,
            "- **Headroom:** the oracle's memory scores {:.1} F1 and no memory {:.1}, with the same answerer.",
            100.0 * oracle.f1(),
            100.0 * none.f1()
        );
    }
    if let Some(rl) = times.steps.1.map(|s| s + times.validation.1.unwrap_or(0.0)) {
        let _ = writeln!(
            out,
            "- **At what cost?** The curriculum took {} ({} steps and {} validations); the update was {} of the steps' time.",
            duration(rl),
            times.steps.0,
            times.validation.0,
            match (times.update, times.steps.1) {
                (Some(u), Some(all)) if all > 0.0 => format!("{:.0}%", 100.0 * u / all),
                _ => "-".into(),
            }
        );
    }
    out
}

/// What each chart shows, in the report's order.
const CHARTS: [(&str, &str); 8] = [
    (
        "reward",
        "Reward per RL step; the level changes with the horizon, not only with the policy.",
    ),
    (
        "validation",
        "Validation F1, which picks each stage's checkpoint (ringed).",
    ),
    (
        "f1",
        "F1 of the training rollouts' memories, per question category.",
    ),
    ("time", "Seconds per RL step, by phase."),
    ("ops", "Memory operations the manager issued."),
    ("memory", "Size of the final memories."),
    ("kl", "KL divergence from the reference (warm-start) policy."),
    ("warm_start", "The warm start's and the answerer's epochs."),
];

/// Builds `report.md` (and the charts it shows, PNG copies too when `png`) from what the run
/// wrote; returns its path.
pub fn write_report(run: &RunDir, png: bool) -> Result<PathBuf, TrainError> {
    let config = TrainConfig::from_file(&run.config())?;
    let records = match run.metrics() {
        path if path.exists() => MetricsLog::read(&path)?,
        _ => Vec::new(),
    };
    let evaluation = match run.evaluation() {
        path if path.exists() => Some(EvaluationRecord::read(&path)?),
        _ => None,
    };
    let charts = plot::plot_run(&records, config.curriculum.keep, &run.plots(), png)?;
    let sorted = RunRecords::of(&records);
    let times = PhaseTimes::of(&sorted, evaluation.as_ref());
    let mut out = format!("# {} run\n\n", config.policy_name());
    match &evaluation {
        Some(e) => {
            let _ = writeln!(
                out,
                "Environment {} ({}), {} test conversations at {} sessions, seed {}.\n",
                e.environment,
                e.task,
                e.episodes.len(),
                e.sessions,
                e.seed
            );
            out.push_str(&at_a_glance(e, &times));
        }
        None => out.push_str("No final evaluation yet: the run has not finished.\n"),
    }
    let _ = write!(out, "\n## Configuration\n\n{}", configuration(&config));
    let _ = write!(out, "\n## Time per phase\n\n{}", times.table());
    if let Some(e) = &evaluation {
        let _ = write!(
            out,
            "\n## Evaluation\n\nF1 in percent; `(n=...)` is the number of questions behind a column, and `-` marks a category a row has no question in.\n\n{}",
            e.evaluation.tables()
        );
        if let Some(sft) = e.row(SFT_ROW) {
            for (name, scores) in e.policy_rows() {
                let _ = write!(
                    out,
                    "\n{name} against the warm start, per category:\n\n{}",
                    category_table(sft, scores, (SFT_ROW, name))
                );
            }
        }
    }
    if !charts.is_empty() {
        out.push_str("\n## Curves\n\n");
        for (stem, caption) in CHARTS {
            let file = format!("{stem}.svg");
            if charts
                .iter()
                .any(|c| c.file_name().is_some_and(|f| f == file.as_str()))
            {
                let _ = writeln!(out, "{caption}\n\n![{stem}](plots/{file})\n");
            }
        }
    }
    let path = run.report();
    std::fs::write(&path, out).map_err(|source| TrainError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::eval::Unavailable;
    use memr2_sim::AnswerScore;

    /// Scores with one single-hop question per episode, of the F1 values given.
    pub(crate) fn scores(f1s: &[f64]) -> Scores {
        let mut out = Scores::default();
        for &f1 in f1s {
            out.board.add_score(
                Category::SingleHop,
                AnswerScore {
                    f1,
                    em: f1,
                    bleu1: f1,
                },
            );
            out.per_episode.push((1, f1));
        }
        out
    }

    pub(crate) fn record(policy: &str, f1s: &[f64]) -> EvaluationRecord {
        EvaluationRecord {
            environment: "synthetic".into(),
            task: "question answering".into(),
            episodes: (0..f1s.len()).map(|i| format!("e{i}")).collect(),
            sessions: 8,
            seed: 0,
            seconds: 75.0,
            evaluation: Evaluation {
                rows: vec![
                    (NO_MEMORY_ROW.into(), scores(&vec![0.0; f1s.len()])),
                    (SFT_ROW.into(), scores(&vec![0.5; f1s.len()])),
                    (policy.into(), scores(f1s)),
                ],
                unavailable: vec![Unavailable {
                    system: ORACLE_ROW.into(),
                    reason: "no gold facts".into(),
                }],
            },
        }
    }

    #[test]
    fn the_report_answers_did_rl_help_where_and_at_what_cost() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir(dir.path().to_path_buf());
        let mut config = TrainConfig::smoke();
        config.seed = 3;
        std::fs::write(run.config(), serde_json::to_string(&config).unwrap()).unwrap();
        let metrics: Vec<String> = crate::plot::tests::two_stage_records()
            .into_iter()
            .map(|mut r| {
                if r.get("sft_epoch").is_some() {
                    r["epoch_s"] = 120.0.into();
                }
                if r.get("validation_f1").is_some() {
                    r["validation_s"] = 10.0.into();
                }
                r.to_string()
            })
            .collect();
        std::fs::write(run.metrics(), metrics.join("\n") + "\n").unwrap();
        record("LoGo-GRPO", &[1.0, 0.75, 0.5, 0.5])
            .write(&run.evaluation())
            .unwrap();
        let text = std::fs::read_to_string(write_report(&run, false).unwrap()).unwrap();
        // +0.1875 over 4 conversations: 2 better, 0 worse, 2 level.
        assert!(
            text.contains("LoGo-GRPO - SFT only: +18.8 F1 (standard error 12.0), better on 2 test conversations, worse on 0, level on 2"),
            "{text}"
        );
        assert!(
            text.contains("| SFT warm start | 2 min 0 s | 1 epochs |"),
            "{text}"
        );
        // 8 steps of 6.5 s, of which 3 s update.
        assert!(text.contains("| RL steps | 52 s | 8 steps |"), "{text}");
        assert!(
            text.contains("| - update | 24 s (46% of the steps) | |"),
            "{text}"
        );
        assert!(
            text.contains("| validation | 1 min 0 s | 6 validations |"),
            "{text}"
        );
        assert!(text.contains("| final evaluation | 1 min 15 s | |"), "{text}");
        assert!(
            text.contains("| system | F1 (n=4) | EM | BLEU-1 | single_hop F1 (n=4) | questions |"),
            "{text}"
        );
        assert!(
            text.contains("| oracle memory | unavailable: no gold facts |"),
            "{text}"
        );
        assert!(
            text.contains("| single_hop | 4 | 50.0 | 68.8 | +18.8 |"),
            "{text}"
        );
        assert!(text.contains("| seed | 3 |"), "{text}");
        assert!(text.contains("![reward](plots/reward.svg)"), "{text}");
        assert!(run.plots().join("reward.svg").exists());
    }

    #[test]
    fn a_run_without_an_evaluation_yet_still_gets_a_report() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir(dir.path().to_path_buf());
        std::fs::write(
            run.config(),
            serde_json::to_string(&TrainConfig::smoke()).unwrap(),
        )
        .unwrap();
        let text = std::fs::read_to_string(write_report(&run, false).unwrap()).unwrap();
        assert!(text.contains("No final evaluation yet"), "{text}");
        assert!(
            text.contains("| total |") || text.contains("| SFT warm start | - | 0 epochs |"),
            "{text}"
        );
    }

    #[test]
    fn a_malformed_evaluation_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evaluation.json");
        std::fs::write(&path, "{\"environment\": 3").unwrap();
        let err = EvaluationRecord::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("evaluation.json") && err.contains("malformed evaluation"),
            "{err}"
        );
    }

    #[test]
    fn durations_read_as_a_person_would_write_them() {
        assert_eq!(duration(45.2), "45 s");
        assert_eq!(duration(725.0), "12 min 5 s");
        assert_eq!(duration(3720.0), "1 h 02 min");
    }
}
