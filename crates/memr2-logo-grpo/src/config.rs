//! The LoGo-GRPO configuration, with the source of every default.

use serde::{Deserialize, Serialize};

use crate::advantage::AdvantageScaling;
use crate::error::GrpoError;
use crate::loss::{Aggregation, LossConfig, non_negative};
use crate::reward::RewardMode;

/// Every knob of LoGo-GRPO. Defaults follow Memory-R2 (arXiv 2605.21768) unless a field
/// says otherwise; a missing field in a serialized config takes its default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogoGrpoConfig {
    /// `n`: rollouts of the same conversation forming each global group. Memory-R2: 8.
    pub n_rollouts: usize,
    /// `k`: rerollouts of one session from a branched memory state, forming each local
    /// group. Memory-R2: 4.
    pub k_rerollouts: usize,
    /// Probability that a session is branched and rerolled (`0.0` gives plain global
    /// GRPO). Memory-R2: 0.25.
    pub p_local: f64,
    /// Most questions (evidence in sessions `1..=s`) that score a rerollout of session `s`.
    /// Memory-R2: 16.
    pub local_questions: usize,
    /// Sampling temperature of rerollouts; greedy rerollouts would be near-identical.
    /// Memory-R2: 1.0.
    pub rerollout_temperature: f32,
    /// How a global rollout's question scores are credited to its sessions. Memory-R2:
    /// per-session.
    pub reward_mode: RewardMode,
    /// `lambda` of the memory-size penalty `r = F1 - lambda * c`. Memory-R2: 0.3.
    pub lambda: f64,
    /// GRPO's mean/std normalisation (DeepSeekMath) or Dr. GRPO's mean-only. Memory-R2:
    /// mean/std.
    pub advantage_scaling: AdvantageScaling,
    /// `eps` in `(r - mean) / (std + eps)`. 1e-4, as TRL's `GRPOTrainer` (neither
    /// DeepSeekMath nor Memory-R2 states a value).
    pub advantage_eps: f32,
    /// Passes over each batch of samples (minibatched) before new rollouts. Memory-R2: 2.
    pub ppo_epochs: usize,
    /// Lower clip of the importance ratio, `1 - clip_low`. PPO (Schulman et al. 2017): 0.2.
    pub clip_low: f32,
    /// Upper clip of the importance ratio, `1 + clip_high`. PPO: 0.2.
    pub clip_high: f32,
    /// Coefficient of the k3 KL to the reference policy. Memory-R2 curriculum runs: 0.01
    /// (DeepSeekMath: 0.04).
    pub kl_coef: f32,
    /// Cap on a token's k3 KL estimate (see [`LossConfig::kl_max`]). verl: 10.
    pub kl_max: f32,
    /// Coefficient of the entropy bonus. Memory-R2: 0.001.
    pub entropy_coef: f32,
    /// Token-mean or sequence-mean aggregation of token losses. Memory-R2: token mean.
    pub aggregation: Aggregation,
    /// Factor on the token losses of local samples. Memory-R2 concatenates local and
    /// global samples unweighted: 1.0.
    pub local_weight: f32,
}

impl Default for LogoGrpoConfig {
    fn default() -> Self {
        let loss = LossConfig::default();
        Self {
            n_rollouts: 8,
            k_rerollouts: 4,
            p_local: 0.25,
            local_questions: 16,
            rerollout_temperature: 1.0,
            reward_mode: RewardMode::PerSession,
            lambda: 0.3,
            advantage_scaling: AdvantageScaling::MeanStd,
            advantage_eps: 1e-4,
            ppo_epochs: 2,
            clip_low: loss.clip_low,
            clip_high: loss.clip_high,
            kl_coef: loss.kl_coef,
            kl_max: loss.kl_max,
            entropy_coef: loss.entropy_coef,
            aggregation: loss.aggregation,
            local_weight: loss.local_weight,
        }
    }
}

impl LogoGrpoConfig {
    /// The coefficients [`logo_grpo_loss`](crate::logo_grpo_loss) needs.
    pub fn loss_config(&self) -> LossConfig {
        LossConfig {
            clip_low: self.clip_low,
            clip_high: self.clip_high,
            kl_coef: self.kl_coef,
            kl_max: self.kl_max,
            entropy_coef: self.entropy_coef,
            aggregation: self.aggregation,
            local_weight: self.local_weight,
        }
    }

    /// Whether local rerollouts are enabled at all (`p_local > 0`).
    pub fn uses_local_groups(&self) -> bool {
        self.p_local > 0.0
    }

    /// Rejects values out of range and contradictory combinations before any work starts:
    /// fewer than 2 rollouts (every global group would have zero variance), `p_local`
    /// outside `[0, 1]`, fewer than 2 rerollouts or no local question while `p_local > 0`,
    /// a non-positive temperature, a negative `lambda` or `advantage_eps`, zero PPO epochs,
    /// and the loss coefficients [`LossConfig::validate`] rejects.
    ///
    /// # Errors
    ///
    /// [`GrpoError::InvalidConfig`] naming the first offending field.
    pub fn validate(&self) -> Result<(), GrpoError> {
        if self.n_rollouts < 2 {
            return Err(GrpoError::config(
                "n_rollouts",
                format!(
                    "must be >= 2 (a group of one has no variance), got {}",
                    self.n_rollouts
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.p_local) {
            return Err(GrpoError::config(
                "p_local",
                format!("must lie in [0, 1], got {}", self.p_local),
            ));
        }
        if self.uses_local_groups() {
            if self.k_rerollouts < 2 {
                return Err(GrpoError::config(
                    "k_rerollouts",
                    format!("must be >= 2 when p_local > 0, got {}", self.k_rerollouts),
                ));
            }
            if self.local_questions == 0 {
                return Err(GrpoError::config(
                    "local_questions",
                    "must be >= 1 when p_local > 0",
                ));
            }
        }
        if !(self.rerollout_temperature.is_finite() && self.rerollout_temperature > 0.0) {
            return Err(GrpoError::config(
                "rerollout_temperature",
                format!("must be finite and > 0, got {}", self.rerollout_temperature),
            ));
        }
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(GrpoError::config(
                "lambda",
                format!("must be finite and >= 0, got {}", self.lambda),
            ));
        }
        non_negative("advantage_eps", self.advantage_eps)?;
        if self.ppo_epochs == 0 {
            return Err(GrpoError::config("ppo_epochs", "must be >= 1"));
        }
        self.loss_config().validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(config: LogoGrpoConfig) -> &'static str {
        match config.validate() {
            Err(GrpoError::InvalidConfig { field, .. }) => field,
            other => panic!("expected an invalid config, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let c = LogoGrpoConfig::default();
        c.validate().unwrap();
        assert_eq!(
            (c.n_rollouts, c.k_rerollouts, c.local_questions, c.ppo_epochs),
            (8, 4, 16, 2)
        );
        assert!((c.p_local - 0.25).abs() < 1e-12);
        assert!((c.lambda - 0.3).abs() < 1e-12);
        assert!((c.rerollout_temperature - 1.0).abs() < 1e-6);
        assert!((c.kl_coef - 0.01).abs() < 1e-9);
        assert!((c.entropy_coef - 0.001).abs() < 1e-9);
        assert!((c.clip_low - 0.2).abs() < 1e-9 && (c.clip_high - 0.2).abs() < 1e-9);
        assert!((c.local_weight - 1.0).abs() < 1e-9);
        assert!((c.advantage_eps - 1e-4).abs() < 1e-9);
        assert_eq!(c.reward_mode, RewardMode::PerSession);
        assert_eq!(c.advantage_scaling, AdvantageScaling::MeanStd);
        assert_eq!(c.aggregation, Aggregation::TokenMean);
        assert_eq!(c.loss_config(), LossConfig::default());
    }

    #[test]
    fn bad_combinations_are_rejected() {
        let d = LogoGrpoConfig::default();
        assert_eq!(invalid(LogoGrpoConfig { n_rollouts: 1, ..d }), "n_rollouts");
        assert_eq!(invalid(LogoGrpoConfig { p_local: -0.1, ..d }), "p_local");
        assert_eq!(invalid(LogoGrpoConfig { p_local: 1.5, ..d }), "p_local");
        assert_eq!(
            invalid(LogoGrpoConfig {
                p_local: f64::NAN,
                ..d
            }),
            "p_local"
        );
        assert_eq!(invalid(LogoGrpoConfig { k_rerollouts: 1, ..d }), "k_rerollouts");
        assert_eq!(
            invalid(LogoGrpoConfig {
                local_questions: 0,
                ..d
            }),
            "local_questions"
        );
        assert_eq!(
            invalid(LogoGrpoConfig {
                rerollout_temperature: 0.0,
                ..d
            }),
            "rerollout_temperature"
        );
        assert_eq!(invalid(LogoGrpoConfig { lambda: -0.3, ..d }), "lambda");
        assert_eq!(
            invalid(LogoGrpoConfig {
                advantage_eps: -1e-4,
                ..d
            }),
            "advantage_eps"
        );
        assert_eq!(invalid(LogoGrpoConfig { ppo_epochs: 0, ..d }), "ppo_epochs");
        assert_eq!(invalid(LogoGrpoConfig { clip_low: -0.2, ..d }), "clip_low");
        assert_eq!(invalid(LogoGrpoConfig { clip_low: 1.0, ..d }), "clip_low");
        assert_eq!(invalid(LogoGrpoConfig { clip_high: -0.2, ..d }), "clip_high");
        assert_eq!(invalid(LogoGrpoConfig { kl_coef: -0.01, ..d }), "kl_coef");
        assert_eq!(invalid(LogoGrpoConfig { kl_max: 0.0, ..d }), "kl_max");
        assert_eq!(
            invalid(LogoGrpoConfig {
                entropy_coef: f32::INFINITY,
                ..d
            }),
            "entropy_coef"
        );
        assert_eq!(
            invalid(LogoGrpoConfig {
                local_weight: -1.0,
                ..d
            }),
            "local_weight"
        );
    }

    #[test]
    fn global_only_runs_need_no_rerollout_settings() {
        let c = LogoGrpoConfig {
            p_local: 0.0,
            k_rerollouts: 0,
            local_questions: 0,
            ..Default::default()
        };
        c.validate().unwrap();
        assert!(!c.uses_local_groups());
    }
}
