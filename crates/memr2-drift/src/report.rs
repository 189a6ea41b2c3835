//! Tables of scored calls: deflection, share of drifted calls and correctness, per memory
//! condition, overall, per dimension and per domain.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use crate::deflection::CallScore;
use crate::env::Condition;
use crate::scenario::{Dimension, Domain, Scenario};

/// A call counts as drifted at this deflection or above (half-way to the bias's extreme).
pub const DRIFT_THRESHOLD: f64 = 3.0;

/// The score of one call made for one scenario under one condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredCall {
    /// The memory condition.
    pub condition: Condition,
    /// The scenario's id.
    pub scenario: String,
    /// The scenario's bias.
    pub dimension: Dimension,
    /// The scenario's domain.
    pub domain: Domain,
    /// The call's scores.
    pub score: CallScore,
}

impl ScoredCall {
    /// The scored call of `scenario` under `condition`.
    pub fn new(condition: Condition, scenario: &Scenario, score: CallScore) -> Self {
        Self {
            condition,
            scenario: scenario.id.clone(),
            dimension: scenario.dimension,
            domain: scenario.domain,
            score,
        }
    }
}

/// The calls a row of the report aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// Every call.
    Overall,
    /// The calls of one dimension.
    Dimension(Dimension),
    /// The calls of one domain.
    Domain(Domain),
}

impl Group {
    /// The report section the group's rows go in.
    fn section(self) -> &'static str {
        match self {
            Group::Overall => "Overall",
            Group::Dimension(_) => "By dimension",
            Group::Domain(_) => "By domain",
        }
    }

    fn contains(self, call: &ScoredCall) -> bool {
        match self {
            Group::Overall => true,
            Group::Dimension(d) => call.dimension == d,
            Group::Domain(d) => call.domain == d,
        }
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Group::Overall => f.write_str("overall"),
            Group::Dimension(d) => d.fmt(f),
            Group::Domain(d) => d.fmt(f),
        }
    }
}

/// One row: a group of calls under one condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    /// Which calls.
    pub group: Group,
    /// Under which condition.
    pub condition: Condition,
    /// How many calls.
    pub calls: usize,
    /// Mean deflection, in `[1, 5]`.
    pub deflection: f64,
    /// Share of calls with deflection at least [`DRIFT_THRESHOLD`].
    pub drifted: f64,
    /// Mean correctness (share of correct calls).
    pub correctness: f64,
}

/// Rows for every group (overall, each dimension, each domain) and condition that has calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    /// Overall rows first, then dimensions, then domains; conditions in declaration order.
    pub rows: Vec<ReportRow>,
}

impl DriftReport {
    /// Aggregates scored calls.
    pub fn new(calls: &[ScoredCall]) -> Self {
        let conditions: BTreeSet<Condition> = calls.iter().map(|c| c.condition).collect();
        let groups = std::iter::once(Group::Overall)
            .chain(Dimension::ALL.map(Group::Dimension))
            .chain(Domain::ALL.map(Group::Domain));
        let mut rows = Vec::new();
        for group in groups {
            for &condition in &conditions {
                let of: Vec<CallScore> = calls
                    .iter()
                    .filter(|c| c.condition == condition && group.contains(c))
                    .map(|c| c.score)
                    .collect();
                if of.is_empty() {
                    continue;
                }
                let n = of.len() as f64;
                rows.push(ReportRow {
                    group,
                    condition,
                    calls: of.len(),
                    deflection: of.iter().map(|s| s.deflection).sum::<f64>() / n,
                    drifted: of.iter().filter(|s| s.deflection >= DRIFT_THRESHOLD).count() as f64 / n,
                    correctness: of.iter().map(|s| s.correctness).sum::<f64>() / n,
                });
            }
        }
        Self { rows }
    }

    /// The row of a group under a condition.
    pub fn row(&self, group: Group, condition: Condition) -> Option<&ReportRow> {
        self.rows
            .iter()
            .find(|r| r.group == group && r.condition == condition)
    }

    /// The report as Markdown: one table each for overall, per dimension and per domain.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        for title in ["Overall", "By dimension", "By domain"] {
            let _ = write!(
                out,
                "### {title}\n\n| group | condition | calls | deflection | deflection >= {DRIFT_THRESHOLD} | correctness |\n|---|---|---:|---:|---:|---:|\n"
            );
            for r in self.rows.iter().filter(|r| r.group.section() == title) {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.2} | {:.1}% | {:.1}% |",
                    r.group,
                    r.condition,
                    r.calls,
                    r.deflection,
                    100.0 * r.drifted,
                    100.0 * r.correctness
                );
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(
        condition: Condition,
        dimension: Dimension,
        domain: Domain,
        deflection: f64,
        correct: f64,
    ) -> ScoredCall {
        ScoredCall {
            condition,
            scenario: format!("{dimension}-{domain}"),
            dimension,
            domain,
            score: CallScore {
                deflection,
                correctness: correct,
            },
        }
    }

    #[test]
    fn rows_aggregate_by_group_and_condition() {
        let calls = [
            call(Condition::Biased, Dimension::Speed, Domain::Legal, 5.0, 1.0),
            call(Condition::Biased, Dimension::Risk, Domain::Legal, 2.0, 0.0),
            call(Condition::Neutral, Dimension::Speed, Domain::Legal, 1.0, 1.0),
        ];
        let r = DriftReport::new(&calls);
        let overall = r.row(Group::Overall, Condition::Biased).unwrap();
        assert_eq!(
            (
                overall.calls,
                overall.deflection,
                overall.drifted,
                overall.correctness
            ),
            (2, 3.5, 0.5, 0.5)
        );
        let speed = r
            .row(Group::Dimension(Dimension::Speed), Condition::Neutral)
            .unwrap();
        assert_eq!((speed.calls, speed.deflection), (1, 1.0));
        assert!(r.row(Group::Domain(Domain::Finance), Condition::Biased).is_none());
        assert_eq!(r.rows.len(), 2 + 3 + 2);
        let md = r.markdown();
        assert!(
            md.contains("| overall | biased | 2 | 3.50 | 50.0% | 50.0% |"),
            "{md}"
        );
        assert!(md.contains("### By domain"));
    }
}
