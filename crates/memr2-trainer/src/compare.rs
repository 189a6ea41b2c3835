//! `memr2 compare`: several finished runs side by side, from what they wrote and nothing else.
//!
//! Each run is named by a label (its policy's name, such as "LoGo-GRPO", "GRPO (global
//! only)" or "LoGo-GRPO (placebo)", unless given as `LABEL=DIR`) and its seed. The comparison
//! has the F1 of every system per seed with the mean over seeds (the rows every run shares,
//! no memory, oracle and the warm start, then one row per label), the same per category, and
//! paired differences per seed: each label against the warm start of its own run, and each
//! label against each other one where both were scored on the same test conversations. Its
//! curves overlay the runs per metric.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use memr2_sim::Category;
use serde_json::Value;

use crate::TrainError;
use crate::config::TrainConfig;
use crate::eval::{ORACLE_ROW, Scores, paired_difference};
use crate::metrics::MetricsLog;
use crate::plot::{self, Figure, Panel, RunRecords, Style};
use crate::report::{EvaluationRecord, NO_MEMORY_ROW, SFT_ROW};
use crate::train::RunDir;

/// One finished run, as `memr2 compare` reads it.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// Its directory.
    pub dir: PathBuf,
    /// Its label in the tables.
    pub label: String,
    /// Its seed.
    pub seed: u64,
    /// Its final evaluation.
    pub evaluation: EvaluationRecord,
    /// Its metrics records.
    pub records: Vec<Value>,
}

impl RunSummary {
    /// Reads `DIR` or `LABEL=DIR`: the run's configuration, evaluation and metrics.
    pub fn load(arg: &str) -> Result<Self, TrainError> {
        let (label, dir) = match arg.split_once('=') {
            Some((label, dir)) if !label.is_empty() && !Path::new(arg).exists() => {
                (Some(label.to_string()), PathBuf::from(dir))
            }
            _ => (None, PathBuf::from(arg)),
        };
        let run = RunDir(dir.clone());
        let config = TrainConfig::from_file(&run.config())?;
        if !run.evaluation().exists() {
            return Err(TrainError::Checkpoint {
                path: run.evaluation(),
                reason: "is missing: the run has not finished its evaluation (resume it with \
                         `memr2 train --resume --run-dir DIR`)"
                    .into(),
            });
        }
        let evaluation = EvaluationRecord::read(&run.evaluation())?;
        let records = match run.metrics() {
            path if path.exists() => MetricsLog::read(&path)?,
            _ => Vec::new(),
        };
        Ok(Self {
            dir,
            label: label.unwrap_or_else(|| config.policy_name()),
            seed: config.seed,
            evaluation,
            records,
        })
    }

    /// The run's own policy row.
    fn policy(&self) -> Option<&Scores> {
        self.evaluation.policy_rows().next().map(|(_, s)| s)
    }

    /// A row by name: the fixed rows by their names, the policy by the run's label.
    fn row(&self, name: &str) -> Option<&Scores> {
        if name == self.label {
            self.policy()
        } else {
            self.evaluation.row(name)
        }
    }

    fn name(&self) -> String {
        format!("{} seed {}", self.label, self.seed)
    }
}

/// The runs being compared, checked for two runs that share a label and a seed.
pub struct Comparison {
    runs: Vec<RunSummary>,
    labels: Vec<String>,
    seeds: Vec<u64>,
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

impl Comparison {
    /// Groups runs by label and seed.
    pub fn new(runs: Vec<RunSummary>) -> Result<Self, TrainError> {
        if runs.is_empty() {
            return Err(TrainError::Invalid(
                "nothing to compare: give at least one run directory".into(),
            ));
        }
        let mut labels: Vec<String> = Vec::new();
        for (i, run) in runs.iter().enumerate() {
            if let Some(other) = runs[..i]
                .iter()
                .find(|o| o.label == run.label && o.seed == run.seed)
            {
                return Err(TrainError::Invalid(format!(
                    "runs {} and {} are both {}: name them apart with LABEL=DIR",
                    other.dir.display(),
                    run.dir.display(),
                    run.name()
                )));
            }
            if [NO_MEMORY_ROW, ORACLE_ROW, SFT_ROW].contains(&run.label.as_str()) {
                return Err(TrainError::Invalid(format!(
                    "label {:?} of {} is the name of a fixed row; choose another with LABEL=DIR",
                    run.label,
                    run.dir.display()
                )));
            }
            if !labels.contains(&run.label) {
                labels.push(run.label.clone());
            }
        }
        let seeds: BTreeSet<u64> = runs.iter().map(|r| r.seed).collect();
        Ok(Self {
            runs,
            labels,
            seeds: seeds.into_iter().collect(),
        })
    }

    /// The runs of a seed.
    fn of_seed(&self, seed: u64) -> impl Iterator<Item = &RunSummary> {
        self.runs.iter().filter(move |r| r.seed == seed)
    }

    /// The value of a row for a seed: a fixed row's F1 over the seed's runs (with whether
    /// they disagree), or a label's.
    fn cell(&self, row: &str, seed: u64, value: impl Fn(&Scores) -> Option<f64>) -> Option<(f64, bool)> {
        let values: Vec<f64> = self
            .of_seed(seed)
            .filter(|r| !self.labels.contains(&row.to_string()) || r.label == row)
            .filter_map(|r| value(r.row(row)?))
            .collect();
        let m = mean(&values)?;
        let disagree = values.iter().any(|v| (v - m).abs() > 5e-4);
        Some((m, disagree))
    }

    fn rows(&self) -> Vec<String> {
        [NO_MEMORY_ROW, ORACLE_ROW, SFT_ROW]
            .iter()
            .map(|s| s.to_string())
            .chain(self.labels.iter().cloned())
            .filter(|row| self.runs.iter().any(|r| r.row(row).is_some()))
            .collect()
    }

    /// F1 per system and seed, with the mean over seeds.
    pub fn f1_table(&self) -> String {
        let mut out = String::from("| |");
        for s in &self.seeds {
            let _ = write!(out, " seed {s} |");
        }
        out.push_str(" mean |\n|---|");
        out.push_str(&"---:|".repeat(self.seeds.len() + 1));
        out.push('\n');
        let mut footnote = false;
        for row in self.rows() {
            let _ = write!(out, "| {row} |");
            let mut cells = Vec::new();
            for &seed in &self.seeds {
                match self.cell(&row, seed, |s| Some(s.f1())) {
                    Some((v, disagree)) => {
                        cells.push(v);
                        footnote |= disagree;
                        let _ = write!(out, " {:.1}{} |", 100.0 * v, if disagree { "*" } else { "" });
                    }
                    None => out.push_str(" - |"),
                }
            }
            match mean(&cells) {
                Some(m) => {
                    let _ = writeln!(out, " {:.1} |", 100.0 * m);
                }
                None => out.push_str(" - |\n"),
            }
        }
        if footnote {
            out.push_str(
                "\n\\* the runs of this seed disagree on this row (different warm starts or test \
                 conversations); the cell is their mean.\n",
            );
        }
        out
    }

    /// F1 per category, each the mean over seeds, with the questions behind it.
    pub fn category_table(&self) -> String {
        let categories: Vec<(Category, usize)> = Category::ALL
            .iter()
            .filter_map(|&c| {
                let n = self.runs.iter().find_map(|r| {
                    let (_, sums) = r
                        .policy()?
                        .board
                        .categories()
                        .into_iter()
                        .find(|(k, _)| *k == c)?;
                    (sums.count > 0).then_some(sums.count)
                })?;
                Some((c, n))
            })
            .collect();
        let mut out = String::from("| |");
        for (c, n) in &categories {
            let _ = write!(out, " {} (n={n}) |", c.name());
        }
        out.push_str("\n|---|");
        out.push_str(&"---:|".repeat(categories.len()));
        out.push('\n');
        for row in self.rows() {
            let _ = write!(out, "| {row} |");
            for &(c, _) in &categories {
                let per_seed: Vec<f64> = self
                    .seeds
                    .iter()
                    .filter_map(|&seed| {
                        self.cell(&row, seed, |s| {
                            let (_, sums) = s.board.categories().into_iter().find(|(k, _)| *k == c)?;
                            (sums.count > 0).then_some(sums.f1)
                        })
                    })
                    .map(|(v, _)| v)
                    .collect();
                match mean(&per_seed) {
                    Some(m) => {
                        let _ = write!(out, " {:.1} |", 100.0 * m);
                    }
                    None => out.push_str(" - |"),
                }
            }
            out.push('\n');
        }
        out
    }

    /// Paired differences per seed: each label against its own run's warm start, then each
    /// later label against each earlier one on the same test conversations; the mean over
    /// seeds and how many seeds came out above and below zero.
    pub fn differences_table(&self) -> String {
        let mut out = String::from("| comparison |");
        for s in &self.seeds {
            let _ = write!(out, " seed {s} |");
        }
        out.push_str(" mean over seeds | seeds above / below zero |\n|---|");
        out.push_str(&"---:|".repeat(self.seeds.len() + 2));
        out.push('\n');
        let mut pairs: Vec<(String, String)> = self
            .labels
            .iter()
            .map(|l| (l.clone(), SFT_ROW.to_string()))
            .collect();
        for (j, later) in self.labels.iter().enumerate() {
            for earlier in &self.labels[..j] {
                pairs.push((later.clone(), earlier.clone()));
            }
        }
        for (b, a) in pairs {
            let mut means = Vec::new();
            let mut cells = String::new();
            for &seed in &self.seeds {
                let run_b = self.of_seed(seed).find(|r| r.label == b);
                let run_a = if a == SFT_ROW {
                    run_b
                } else {
                    self.of_seed(seed).find(|r| r.label == a)
                };
                let d = match (run_a, run_b) {
                    (Some(ra), Some(rb)) if ra.evaluation.episodes == rb.evaluation.episodes => {
                        paired_difference(
                            rb.row(&b).expect("a run has its policy"),
                            ra.row(&a).unwrap_or(&Scores::default()),
                        )
                    }
                    _ => None,
                };
                match d {
                    Some(d) => {
                        means.push(d.mean);
                        let _ = write!(cells, " {:+.1} ({:.1}) |", 100.0 * d.mean, 100.0 * d.std_error);
                    }
                    None => cells.push_str(" - |"),
                }
            }
            if means.is_empty() {
                continue;
            }
            let m = mean(&means).expect("not empty");
            let above = means.iter().filter(|d| **d > 0.0).count();
            let below = means.iter().filter(|d| **d < 0.0).count();
            let _ = writeln!(
                out,
                "| {b} - {a} |{cells} {:+.1} | {above} / {below} |",
                100.0 * m
            );
        }
        out
    }

    /// The curves of every run overlaid, one figure per metric.
    pub fn figures(&self) -> Vec<(String, Figure)> {
        let sorted: Vec<(String, RunRecords<'_>)> = self
            .runs
            .iter()
            .map(|r| (r.name(), RunRecords::of(&r.records)))
            .collect();
        let stages = sorted.first().map(|(_, r)| r.stages()).unwrap_or_default();
        let figure = |title: &str,
                      y_label: &str,
                      style: Style,
                      pick: &dyn Fn(&str, &RunRecords<'_>) -> plot::Line| Figure {
            title: title.to_string(),
            x_label: "RL step".into(),
            panels: vec![Panel {
                title: title.to_string(),
                y_label: y_label.to_string(),
                lines: sorted.iter().map(|(name, r)| pick(name, r)).collect(),
                marks: Vec::new(),
                style,
            }],
            stages: stages.clone(),
            mark_name: String::new(),
        };
        vec![
            (
                "reward".into(),
                figure(
                    "Reward per step (global groups)",
                    "reward (F1 - memory penalty)",
                    Style::Smoothed,
                    &|n, r| plot::line(&r.steps, n, "/step", "/reward_global/mean", 1.0),
                ),
            ),
            (
                "validation".into(),
                figure("Validation F1", "token F1 (%)", Style::Points, &|n, r| {
                    plot::line(&r.validations, n, "/step", "/validation_f1", 100.0)
                }),
            ),
            (
                "f1".into(),
                figure(
                    "F1 of the training rollouts",
                    "token F1 (%)",
                    Style::Smoothed,
                    &|n, r| plot::line(&r.steps, n, "/step", "/f1", 100.0),
                ),
            ),
            (
                "kl".into(),
                figure(
                    "KL to the reference policy",
                    "KL (nats per token)",
                    Style::Smoothed,
                    &|n, r| plot::line(&r.steps, n, "/step", "/update/kl", 1.0),
                ),
            ),
            (
                "memory".into(),
                figure("Final memory entries", "entries", Style::Smoothed, &|n, r| {
                    plot::line(&r.steps, n, "/step", "/memory_entries", 1.0)
                }),
            ),
            (
                "step_time".into(),
                figure("Seconds per RL step", "seconds", Style::Smoothed, &|n, r| {
                    plot::line(&r.steps, n, "/step", "/step_s", 1.0)
                }),
            ),
        ]
    }

    /// The comparison's Markdown: the runs, then the three tables.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "# Comparison\n\n| run | label | seed | test conversations |\n|---|---|---:|---:|\n",
        );
        for r in &self.runs {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} |",
                r.dir.display(),
                r.label,
                r.seed,
                r.evaluation.episodes.len()
            );
        }
        let _ = write!(
            out,
            "\n## Test F1\n\n{}\n## F1 per category (mean over seeds)\n\n{}\n## Paired differences\n\nF1 points, paired by test conversation, with the standard error over conversations in brackets; a comparison between two labels needs both runs of a seed to have been scored on the same conversations.\n\n{}",
            self.f1_table(),
            self.category_table(),
            self.differences_table()
        );
        out
    }

    /// Writes `compare.md` and the overlaid curves into `dir`; returns the Markdown file.
    pub fn write(&self, dir: &Path, png: bool) -> Result<PathBuf, TrainError> {
        let charts = plot::write_figures(&self.figures(), &dir.join("plots"), png)?;
        let mut text = self.markdown();
        if !charts.is_empty() {
            text.push_str("\n## Curves\n\n");
            for chart in charts {
                let file = chart.file_name().expect("a file").to_string_lossy().into_owned();
                let _ = writeln!(text, "![{}](plots/{file})\n", file.trim_end_matches(".svg"));
            }
        }
        let path = dir.join("compare.md");
        std::fs::write(&path, text).map_err(|source| TrainError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::record;

    fn write_run(root: &Path, name: &str, config: &TrainConfig, policy: &str, f1s: &[f64]) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let run = RunDir(dir.clone());
        std::fs::write(run.config(), serde_json::to_string(config).unwrap()).unwrap();
        let mut evaluation = record(policy, f1s);
        evaluation.seed = config.seed;
        evaluation.write(&run.evaluation()).unwrap();
        let lines: Vec<String> = crate::plot::tests::two_stage_records()
            .iter()
            .map(|r| r.to_string())
            .collect();
        std::fs::write(run.metrics(), lines.join("\n")).unwrap();
        dir
    }

    /// Two seeds of LoGo-GRPO and of GRPO, on the same four conversations; the warm start
    /// scores 50 everywhere.
    fn four_runs(root: &Path) -> Vec<RunSummary> {
        let mut runs = Vec::new();
        for (seed, logo, grpo) in [
            (0, [1.0, 1.0, 0.5, 0.5], [0.5; 4]),
            (1, [0.5, 0.5, 0.5, 0.25], [0.25; 4]),
        ] {
            let mut config = TrainConfig::smoke();
            config.seed = seed;
            let a = write_run(root, &format!("logo-{seed}"), &config, "LoGo-GRPO", &logo);
            config.rl.logo.p_local = 0.0;
            let b = write_run(
                root,
                &format!("grpo-{seed}"),
                &config,
                "GRPO (global only)",
                &grpo,
            );
            runs.push(RunSummary::load(a.to_str().unwrap()).unwrap());
            runs.push(RunSummary::load(b.to_str().unwrap()).unwrap());
        }
        runs
    }

    #[test]
    fn the_f1_table_has_a_column_per_seed_and_their_mean() {
        let dir = tempfile::tempdir().unwrap();
        let comparison = Comparison::new(four_runs(dir.path())).unwrap();
        let table = comparison.f1_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "| | seed 0 | seed 1 | mean |");
        assert!(table.contains("| no memory | 0.0 | 0.0 | 0.0 |"), "{table}");
        assert!(table.contains("| SFT only | 50.0 | 50.0 | 50.0 |"), "{table}");
        // LoGo-GRPO: 75.0 and 43.75 -> 59.4; GRPO: 50.0 and 25.0 -> 37.5.
        assert!(table.contains("| LoGo-GRPO | 75.0 | 43.8 | 59.4 |"), "{table}");
        assert!(
            table.contains("| GRPO (global only) | 50.0 | 25.0 | 37.5 |"),
            "{table}"
        );
        // No oracle row: every run had it unavailable.
        assert!(!table.contains(ORACLE_ROW), "{table}");
    }

    #[test]
    fn paired_differences_are_per_seed_with_their_mean() {
        let dir = tempfile::tempdir().unwrap();
        let comparison = Comparison::new(four_runs(dir.path())).unwrap();
        let table = comparison.differences_table();
        // Seed 0: LoGo - SFT = +25.0 (per-conversation 0.5, 0.5, 0, 0: se 14.4); seed 1:
        // -6.25 (0, 0, 0, -0.25: se 6.25).
        assert!(
            table.contains("| LoGo-GRPO - SFT only | +25.0 (14.4) | -6.2 (6.2) | +9.4 | 1 / 1 |"),
            "{table}"
        );
        assert!(
            table.contains("| GRPO (global only) - LoGo-GRPO | -25.0 (14.4) | -18.8 (6.2) | -21.9 | 0 / 2 |"),
            "{table}"
        );
    }

    #[test]
    fn runs_are_written_side_by_side_with_overlaid_curves() {
        let dir = tempfile::tempdir().unwrap();
        let comparison = Comparison::new(four_runs(dir.path())).unwrap();
        let out = dir.path().join("cmp");
        let md = std::fs::read_to_string(comparison.write(&out, false).unwrap()).unwrap();
        assert!(
            md.contains("## Test F1") && md.contains("![reward](plots/reward.svg)"),
            "{md}"
        );
        let svg = std::fs::read_to_string(out.join("plots/reward.svg")).unwrap();
        roxmltree::Document::parse(&svg).unwrap();
        for name in ["LoGo-GRPO seed 0", "GRPO (global only) seed 1"] {
            assert!(svg.contains(name), "{name}");
        }
    }

    #[test]
    fn labels_tell_runs_apart_and_clashes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let runs = four_runs(dir.path());
        let logo0 = runs[0].dir.to_str().unwrap().to_string();
        let clash = Comparison::new(vec![runs[0].clone(), RunSummary::load(&logo0).unwrap()]);
        let err = clash.err().unwrap().to_string();
        assert!(
            err.contains("LABEL=DIR") && err.contains("LoGo-GRPO seed 0"),
            "{err}"
        );
        let renamed = RunSummary::load(&format!("straight at 32={logo0}")).unwrap();
        assert_eq!(renamed.label, "straight at 32");
        let comparison = Comparison::new(vec![runs[0].clone(), renamed]).unwrap();
        assert!(comparison.f1_table().contains("| straight at 32 | 75.0 | 75.0 |"));
        let missing = RunSummary::load(dir.path().join("nowhere").to_str().unwrap());
        assert!(missing.is_err());
    }
}
