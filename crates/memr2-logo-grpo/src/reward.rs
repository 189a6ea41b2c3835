//! Per-session reward assignment for global rollouts, and the memory-size penalty.

use serde::{Deserialize, Serialize};

use crate::error::GrpoError;

/// Fraction of the session tokens seen so far that memory may hold before it is penalised
/// (Memory-R2): `c = max(0, memory_tokens - 0.7 * session_tokens) / session_tokens`.
pub const MEMORY_BUDGET_FRACTION: f64 = 0.7;

/// How a global rollout's question scores are credited to the sessions it went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum RewardMode {
    /// Session `s` gets the mean F1 of the questions whose evidence lies in session `s`
    /// (scored on the final memory), minus `lambda * c_s` (Memory-R2's default).
    #[default]
    PerSession,
    /// Every session gets the rollout's overall mean F1, minus its own penalty: plain
    /// trajectory-level GRPO credit.
    Global,
    /// Session `s` gets the mean of the per-session rewards of sessions `s..` (its own and
    /// every later one): a session is also credited for what later sessions could answer.
    Cumulative,
}

/// The memory-size penalty `c = max(0, memory_tokens - 0.7 * session_tokens_so_far) /
/// session_tokens_so_far`, or `0.0` when no session token has been seen yet.
pub fn memory_penalty(memory_tokens: usize, session_tokens_so_far: usize) -> f64 {
    if session_tokens_so_far == 0 {
        return 0.0;
    }
    let seen = session_tokens_so_far as f64;
    (memory_tokens as f64 - MEMORY_BUDGET_FRACTION * seen).max(0.0) / seen
}

/// Assigns one reward to each session of a global rollout.
///
/// - `session_f1[s]`: mean token F1 of the questions whose evidence lies in session `s`,
///   scored on the final memory; `None` when no question has evidence there.
/// - `overall_f1`: mean F1 of all the rollout's questions.
/// - `penalties[s]`: the memory-size penalty `c_s` after session `s` (see [`memory_penalty`]).
/// - `lambda`: the penalty's coefficient.
///
/// With `p_s = session_f1[s]` (or `overall_f1` if `None`) and `r_s = p_s - lambda * c_s`:
///
/// - [`RewardMode::PerSession`] gives `r_s`.
/// - [`RewardMode::Global`] gives `overall_f1 - lambda * c_s`.
/// - [`RewardMode::Cumulative`] gives `mean(r_s, r_{s+1}, .., r_{S-1})`.
///
/// A session that no question asks about gets the rollout's overall mean F1 (minus its own
/// penalty) rather than zero or nothing: the memory it wrote still feeds every later
/// answer, its penalty still applies, and the `n` rollouts at that session still form a
/// group whose rewards differ when their overall quality differs.
///
/// # Errors
///
/// [`GrpoError::LengthMismatch`] if `penalties` and `session_f1` differ in length, and
/// [`GrpoError::NonFiniteInput`] if any number is NaN or infinite.
pub fn session_rewards(
    mode: RewardMode,
    session_f1: &[Option<f64>],
    overall_f1: f64,
    penalties: &[f64],
    lambda: f64,
) -> Result<Vec<f64>, GrpoError> {
    if penalties.len() != session_f1.len() {
        return Err(GrpoError::LengthMismatch {
            what: "penalties (one per session)",
            expected: session_f1.len(),
            found: penalties.len(),
        });
    }
    check_finite("overall F1", overall_f1)?;
    check_finite("lambda", lambda)?;
    for (s, (f1, c)) in session_f1.iter().zip(penalties).enumerate() {
        if let Some(f1) = f1 {
            check_finite_with(|| format!("F1 of session {s}"), *f1)?;
        }
        check_finite_with(|| format!("penalty of session {s}"), *c)?;
    }

    let per_session = session_f1
        .iter()
        .zip(penalties)
        .map(|(f1, c)| f1.unwrap_or(overall_f1) - lambda * c);
    Ok(match mode {
        RewardMode::PerSession => per_session.collect(),
        RewardMode::Global => penalties.iter().map(|c| overall_f1 - lambda * c).collect(),
        RewardMode::Cumulative => {
            let rewards: Vec<f64> = per_session.collect();
            let mut out = vec![0.0; rewards.len()];
            let mut tail_sum = 0.0;
            for s in (0..rewards.len()).rev() {
                tail_sum += rewards[s];
                out[s] = tail_sum / (rewards.len() - s) as f64;
            }
            out
        }
    })
}

fn check_finite(what: &str, value: f64) -> Result<(), GrpoError> {
    check_finite_with(|| what.to_owned(), value)
}

fn check_finite_with(what: impl FnOnce() -> String, value: f64) -> Result<(), GrpoError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(GrpoError::NonFiniteInput { what: what(), value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn assert_all_close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn penalty_formula() {
        assert!((memory_penalty(0, 100) - 0.0).abs() < 1e-12);
        assert!((memory_penalty(70, 100) - 0.0).abs() < 1e-12);
        assert!((memory_penalty(90, 100) - 0.2).abs() < 1e-12);
        assert!((memory_penalty(50, 0) - 0.0).abs() < 1e-12);
    }

    #[test]
    fn three_modes_hand_worked() {
        // f1 = [0.6, -, 0.2], overall 0.5, c = [0, 0.1, 0.5], lambda 0.3 (so lambda*c = [0, .03, .15]).
        let f1 = [Some(0.6), None, Some(0.2)];
        let c = [0.0, 0.1, 0.5];
        let per = session_rewards(RewardMode::PerSession, &f1, 0.5, &c, 0.3).unwrap();
        assert_all_close(&per, &[0.6, 0.47, 0.05]);
        let global = session_rewards(RewardMode::Global, &f1, 0.5, &c, 0.3).unwrap();
        assert_all_close(&global, &[0.5, 0.47, 0.35]);
        // cumulative: [(0.6+0.47+0.05)/3, (0.47+0.05)/2, 0.05]
        let cum = session_rewards(RewardMode::Cumulative, &f1, 0.5, &c, 0.3).unwrap();
        assert_all_close(&cum, &[1.12 / 3.0, 0.26, 0.05]);
    }

    #[test]
    fn empty_rollout_gives_no_rewards() {
        for mode in [RewardMode::PerSession, RewardMode::Global, RewardMode::Cumulative] {
            assert!(session_rewards(mode, &[], 0.3, &[], 0.3).unwrap().is_empty());
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let err = session_rewards(RewardMode::PerSession, &[Some(0.5)], 0.5, &[], 0.3).unwrap_err();
        assert!(matches!(
            err,
            GrpoError::LengthMismatch {
                expected: 1,
                found: 0,
                ..
            }
        ));
        let err = session_rewards(RewardMode::PerSession, &[Some(f64::NAN)], 0.5, &[0.0], 0.3).unwrap_err();
        assert!(matches!(err, GrpoError::NonFiniteInput { .. }), "{err}");
        let err = session_rewards(RewardMode::Global, &[None], f64::INFINITY, &[0.0], 0.3).unwrap_err();
        assert!(matches!(err, GrpoError::NonFiniteInput { .. }), "{err}");
    }

    proptest! {
        #[test]
        fn cumulative_is_the_tail_mean_of_per_session(
            rows in prop::collection::vec((prop::option::of(0.0f64..1.0), 0.0f64..2.0), 0..20),
            overall in 0.0f64..1.0,
        ) {
            let (f1, c): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
            let per = session_rewards(RewardMode::PerSession, &f1, overall, &c, 0.3).unwrap();
            let cum = session_rewards(RewardMode::Cumulative, &f1, overall, &c, 0.3).unwrap();
            for s in 0..per.len() {
                let tail = &per[s..];
                let mean = tail.iter().sum::<f64>() / tail.len() as f64;
                prop_assert!((cum[s] - mean).abs() < 1e-9);
            }
            // The first session's cumulative reward is the mean over the whole rollout.
            if let Some(first) = cum.first() {
                prop_assert!((first - per.iter().sum::<f64>() / per.len() as f64).abs() < 1e-9);
            }
        }
    }
}
