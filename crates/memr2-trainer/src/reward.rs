//! Rewards: the task's values of the frozen answerer's responses on a memory (token F1 for
//! questions), the memory-size penalty, and the per-session assignment of LoGo-GRPO.

use memr2_logo_grpo::{GrpoError, RewardMode, session_rewards};
use memr2_sim::{Episode, memory_penalty};
use memr2_store::{Snapshot, TokenCounter};

/// Tokens of the conversation up to and including each session: `[s-1]` holds sessions `1..=s`.
pub fn cumulative_session_tokens(episode: &Episode, counter: &dyn TokenCounter) -> Vec<usize> {
    let mut total = 0;
    episode
        .sessions
        .iter()
        .map(|s| {
            total += counter.count(&s.text());
            total
        })
        .collect()
}

/// The penalty term `c` for the memory after session `s`.
pub fn penalty_after(snapshot: &Snapshot, session_tokens_so_far: usize, counter: &dyn TokenCounter) -> f64 {
    memory_penalty(snapshot.size_tokens(counter), session_tokens_so_far)
}

/// What a global rollout earned, per session, from its final memory.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutReward {
    /// The reward of each session `1..=H` (index `s-1`).
    pub per_session: Vec<f64>,
    /// Mean F1 over all questions.
    pub mean_f1: f64,
    /// Mean penalty term `c` over sessions.
    pub mean_penalty: f64,
}

/// Scores a global rollout: `values[i]` is the task's value (F1 for a question) of probe `i`
/// over the final memory and `sessions[i]` the last session it depends on; `snapshots[s]` is
/// the memory after session `s`. A probe belongs to its session; one without a session to
/// the last session.
pub fn rollout_reward(
    mode: RewardMode,
    lambda: f64,
    sessions: &[Option<u32>],
    values: &[f64],
    snapshots: &[Snapshot],
    session_tokens: &[usize],
    counter: &dyn TokenCounter,
) -> Result<RolloutReward, GrpoError> {
    let horizon = snapshots.len() - 1;
    let mut sums = vec![(0.0, 0usize); horizon];
    for (session, f) in sessions.iter().zip(values) {
        // A probe without a session (an unanswerable question) belongs to the last session.
        let s = session.unwrap_or(horizon as u32);
        if (1..=horizon as u32).contains(&s) {
            let slot = &mut sums[s as usize - 1];
            slot.0 += f;
            slot.1 += 1;
        }
    }
    let session_f1: Vec<Option<f64>> = sums
        .iter()
        .map(|&(sum, n)| (n > 0).then(|| sum / n as f64))
        .collect();
    let mean_f1 = if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    };
    let penalties: Vec<f64> = (1..=horizon)
        .map(|s| penalty_after(&snapshots[s], session_tokens[s - 1], counter))
        .collect();
    let per_session = session_rewards(mode, &session_f1, mean_f1, &penalties, lambda)?;
    let mean_penalty = penalties.iter().sum::<f64>() / horizon.max(1) as f64;
    Ok(RolloutReward {
        per_session,
        mean_f1,
        mean_penalty,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use memr2_store::{Operation, Store, WhitespaceCounter};

    #[test]
    fn per_session_rewards_follow_question_sessions() {
        let mut store = Store::new();
        let mut snaps = vec![store.snapshot()];
        store
            .apply(
                Operation::Add {
                    text: "a b".into(),
                    speaker: None,
                },
                1,
            )
            .unwrap();
        snaps.push(store.snapshot());
        snaps.push(store.snapshot());
        let r = rollout_reward(
            RewardMode::PerSession,
            0.3,
            &[Some(1), Some(2)],
            &[1.0, 0.0],
            &snaps,
            &[100, 200],
            &WhitespaceCounter,
        )
        .unwrap();
        assert!((r.per_session[0] - 1.0).abs() < 1e-9);
        assert!((r.per_session[1] - 0.0).abs() < 1e-9);
        assert!((r.mean_f1 - 0.5).abs() < 1e-9);
        assert_eq!(r.mean_penalty, 0.0);
    }

    #[test]
    fn oversized_memory_is_penalised() {
        let mut store = Store::new();
        let mut snaps = vec![store.snapshot()];
        store
            .apply(
                Operation::Add {
                    text: "w ".repeat(50),
                    speaker: None,
                },
                1,
            )
            .unwrap();
        snaps.push(store.snapshot());
        let r = rollout_reward(
            RewardMode::Global,
            0.3,
            &[Some(1)],
            &[1.0],
            &snaps,
            &[10],
            &WhitespaceCounter,
        )
        .unwrap();
        // c = (50 - 7) / 10 = 4.3; r = 1 - 0.3 * 4.3.
        assert!((r.per_session[0] - (1.0 - 0.3 * 4.3)).abs() < 1e-9, "{:?}", r);
    }
}
