//! The crate's error type.

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GrpoError {
    /// A sample's reward is NaN or infinite; its group's advantages would be meaningless.
    #[error("reward of sample {index} is not finite: {reward}")]
    NonFiniteReward {
        /// Position of the offending sample in the input slice.
        index: usize,
        /// The reward as given.
        reward: f32,
    },
    /// A reward-assignment input (an F1 score, a penalty or lambda) is NaN or infinite.
    #[error("{what} is not finite: {value}")]
    NonFiniteInput {
        /// Which input, e.g. `"penalty of session 3"`.
        what: String,
        /// The value as given.
        value: f64,
    },
    /// Two inputs that must have one entry per session (or per sample) differ in length.
    #[error("{what}: expected {expected} entries, found {found}")]
    LengthMismatch {
        /// Which input is too short or too long.
        what: &'static str,
        /// Length it should have.
        expected: usize,
        /// Length it has.
        found: usize,
    },
    /// A configuration value is out of range or contradicts another one.
    #[error("invalid LoGo-GRPO config: {field} {reason}")]
    InvalidConfig {
        /// Name of the offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl GrpoError {
    /// Shorthand for [`GrpoError::InvalidConfig`].
    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }
}
