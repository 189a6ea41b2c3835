//! Samples and the keys that put them into groups.

use serde::{Deserialize, Serialize};

/// Which of the two kinds of LoGo-GRPO group a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum GroupKind {
    /// One of the `n` rollouts of the same conversation, compared at the same session.
    Global,
    /// One of the `k` rerollouts of a single session from one branched memory state.
    Local,
}

/// The identity of a group: samples with equal keys are compared with each other, and with
/// nothing else.
///
/// The kind is part of the key, so a local group can never share a key with a global group,
/// even when episode, session and branch coincide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupKey {
    /// Global or local group.
    pub kind: GroupKind,
    /// The conversation (episode) the rollouts run through.
    pub episode: u64,
    /// The session whose generated tokens the sample's reward is credited to.
    pub session: u32,
    /// `0` for global groups; for local groups, which branched memory state was rerolled
    /// (a session may be branched from more than one global rollout).
    pub branch: u32,
}

impl GroupKey {
    /// The key of the global group at `(episode, session)`.
    pub fn global(episode: u64, session: u32) -> Self {
        Self {
            kind: GroupKind::Global,
            episode,
            session,
            branch: 0,
        }
    }

    /// The key of the local group that rerolls `session` from branched state `branch`.
    pub fn local(episode: u64, session: u32, branch: u32) -> Self {
        Self {
            kind: GroupKind::Local,
            episode,
            session,
            branch,
        }
    }

    /// Whether this is a local (rerollout) group.
    pub fn is_local(&self) -> bool {
        self.kind == GroupKind::Local
    }
}

/// One scored sample: the tokens a rollout (or rerollout) generated for one session, with
/// the reward credited to them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The group the sample is compared within.
    pub key: GroupKey,
    /// The scalar reward (`F1 - lambda * c`).
    pub reward: f32,
    /// Index of the sample's generated token sequence in the trainer's batch; this crate
    /// does not interpret it.
    pub sequence: usize,
}

impl Sample {
    /// A sample of group `key` with reward `reward` whose tokens are sequence `sequence`.
    pub fn new(key: GroupKey, reward: f32, sequence: usize) -> Self {
        Self {
            key,
            reward,
            sequence,
        }
    }

    /// `1.0` for a local sample, `0.0` for a global one: the value the loss expects in
    /// [`LossInputs::is_local`](crate::LossInputs::is_local).
    pub fn local_indicator(&self) -> f32 {
        if self.key.is_local() { 1.0 } else { 0.0 }
    }
}
