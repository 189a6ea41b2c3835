//! LoGo-GRPO: global and local group-relative advantages and the clipped PPO/KL/entropy
//! objective over burn tensors.
//!
//! Group-relative policy optimisation (GRPO) compares samples that started from the same
//! state. A memory agent's rollouts stop sharing a state as soon as they write different
//! memories, so LoGo-GRPO (Memory-R2) mixes two kinds of groups in one batch:
//!
//! - **global groups** ([`GroupKind::Global`]): the `n` rollouts of one conversation,
//!   compared session by session; each session's reward comes from [`session_rewards`];
//! - **local groups** ([`GroupKind::Local`]): the `k` rerollouts of one session from one
//!   branched memory state, scored right after that session.
//!
//! A [`Sample`] carries its [`GroupKey`] (kind, episode, session, branch) and its reward;
//! samples are compared only with samples of the same key, so global and local groups
//! never mix.
//!
//! # Advantages
//!
//! In a group with rewards `r_1..r_m`, mean `mu` and sample standard deviation `sigma`
//! ([`compute_advantages`]):
//!
//! ```text
//! GRPO     (AdvantageScaling::MeanStd):  A_i = (r_i - mu) / (sigma + eps)
//! Dr. GRPO (AdvantageScaling::MeanOnly): A_i =  r_i - mu
//! ```
//!
//! A group whose rewards are all equal (a group of one included) gives `A_i = 0` and is
//! counted as a zero-variance group.
//!
//! # Objective
//!
//! For sequence `i` with generated tokens `t in T_i`, advantage `A_i` and weight
//! `w_i = local_weight` for a local sample, `1` for a global one ([`logo_grpo_loss`]):
//!
//! ```text
//! rho_it  = exp(logp_new_it - logp_old_it)                           importance ratio
//! clip_it = -min(rho_it * A_i, clamp(rho_it, 1 - eps_low, 1 + eps_high) * A_i)
//! kl_it   = exp(logp_ref_it - logp_new_it) - (logp_ref_it - logp_new_it) - 1     (k3)
//! l_it    = w_i * (clip_it + beta * kl_it - c_ent * H_it)
//!
//! token mean:    L = sum_i sum_{t in T_i} l_it / sum_i |T_i|
//! sequence mean: L = mean over {i : |T_i| > 0} of (sum_{t in T_i} l_it / |T_i|)
//! ```
//!
//! with `eps_low = clip_low`, `eps_high = clip_high`, `beta = kl_coef`,
//! `c_ent = entropy_coef` and `H` the policy's entropy at each position ([`LossConfig`]).
//! Minimising `L` raises the log-probability of tokens with positive advantage until the
//! ratio leaves the clip range, while the k3 term (non-negative, zero when the policies
//! agree) holds the policy near the frozen reference.
//!
//! # Example
//!
//! ```
//! use burn::backend::Flex;
//! use burn::prelude::*;
//! use memr2_logo_grpo::{
//!     AdvantageScaling, GroupKey, LogoGrpoConfig, LossInputs, Sample, compute_advantages, logo_grpo_loss,
//! };
//!
//! let config = LogoGrpoConfig::default();
//! config.validate()?;
//!
//! // Two global rollouts of episode 0 at session 3, and two rerollouts of that session.
//! let samples = [
//!     Sample::new(GroupKey::global(0, 3), 0.8, 0),
//!     Sample::new(GroupKey::global(0, 3), 0.4, 1),
//!     Sample::new(GroupKey::local(0, 3, 0), 0.5, 2),
//!     Sample::new(GroupKey::local(0, 3, 0), 0.5, 3),
//! ];
//! let advantages = compute_advantages(&samples, config.advantage_scaling, config.advantage_eps)?;
//! assert_eq!(advantages.zero_variance_groups, 1); // the two rerollouts tied
//!
//! // Log-probabilities of up to 3 generated tokens per sequence: [batch = 4, seq = 3].
//! let device = Default::default();
//! let logp = Tensor::<Flex, 2>::from_floats(
//!     [[-1.0, -0.5, -2.0], [-0.3, -0.9, 0.0], [-1.2, 0.0, 0.0], [-0.7, -0.1, 0.0]],
//!     &device,
//! );
//! let mask = Tensor::<Flex, 2>::from_floats(
//!     [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]],
//!     &device,
//! );
//! let is_local: Vec<f32> = samples.iter().map(Sample::local_indicator).collect();
//! let output = logo_grpo_loss(
//!     &config.loss_config(),
//!     LossInputs {
//!         new_logp: logp.clone(),
//!         old_logp: logp.clone(),
//!         ref_logp: Some(logp),
//!         entropy: None,
//!         mask,
//!         advantages: Tensor::from_floats(advantages.values.as_slice(), &device),
//!         is_local: Tensor::from_floats(is_local.as_slice(), &device),
//!     },
//! );
//! // On-policy, the ratio is 1: the loss is minus the token-weighted mean advantage.
//! assert_eq!(output.stats.tokens, 8);
//! assert!((output.stats.mean_ratio - 1.0).abs() < 1e-6);
//! assert!(output.stats.loss.is_finite());
//! # Ok::<(), memr2_logo_grpo::GrpoError>(())
//! ```

mod advantage;
mod config;
mod error;
mod group;
mod loss;
mod reward;

pub use advantage::{AdvantageScaling, Advantages, KindStats, compute_advantages};
pub use config::LogoGrpoConfig;
pub use error::GrpoError;
pub use group::{GroupKey, GroupKind, Sample};
pub use loss::{AdvantageStats, Aggregation, LossConfig, LossInputs, LossOutput, LossStats, logo_grpo_loss};
pub use reward::{MEMORY_BUDGET_FRACTION, RewardMode, memory_penalty, session_rewards};

/// The backend unit tests run on: wgpu, CUDA or ndarray when their `test-*` feature is on,
/// the pure-Rust CPU backend `Flex` otherwise.
#[cfg(all(test, feature = "test-wgpu"))]
pub(crate) type TestBackend = burn::backend::Wgpu;
/// The backend unit tests run on.
#[cfg(all(test, feature = "test-cuda", not(feature = "test-wgpu")))]
pub(crate) type TestBackend = burn::backend::Cuda;
/// The backend unit tests run on.
#[cfg(all(
    test,
    feature = "test-ndarray",
    not(any(feature = "test-wgpu", feature = "test-cuda"))
))]
pub(crate) type TestBackend = burn::backend::NdArray;
/// The backend unit tests run on.
#[cfg(all(
    test,
    not(any(feature = "test-wgpu", feature = "test-cuda", feature = "test-ndarray"))
))]
pub(crate) type TestBackend = burn::backend::Flex;

/// [`TestBackend`] with automatic differentiation, for gradient tests.
#[cfg(test)]
pub(crate) type TestAutodiffBackend = burn::backend::Autodiff<TestBackend>;
