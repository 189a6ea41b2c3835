//! Group-relative advantages (GRPO and Dr. GRPO) over global and local groups.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::GrpoError;
use crate::group::{GroupKey, GroupKind, Sample};

/// How a reward is turned into an advantage within its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum AdvantageScaling {
    /// GRPO (DeepSeekMath, Shao et al. 2024): `A = (r - mean) / (std + eps)`, with the
    /// sample (Bessel-corrected) standard deviation of the group, as TRL's `GRPOTrainer`.
    #[default]
    MeanStd,
    /// Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): `A = r - mean`,
    /// without the division by the standard deviation, which up-weights groups whose
    /// rewards barely differ.
    MeanOnly,
}

/// Reward and group statistics over the samples of one [`GroupKind`].
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct KindStats {
    /// Number of samples of this kind.
    pub samples: usize,
    /// Number of groups of this kind.
    pub groups: usize,
    /// Groups of this kind whose rewards are all equal (advantage zero).
    pub zero_variance_groups: usize,
    /// Mean reward over the samples of this kind (`0.0` when there are none).
    pub reward_mean: f32,
    /// Population standard deviation of the rewards of this kind (`0.0` when there are none).
    pub reward_std: f32,
}

impl KindStats {
    /// Fraction of this kind's groups that have zero variance (`0.0` when there are none).
    pub fn zero_variance_fraction(&self) -> f32 {
        fraction(self.zero_variance_groups, self.groups)
    }
}

/// The advantages of a batch of samples, with the statistics a trainer logs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Advantages {
    /// One advantage per sample, in the order of the input slice.
    pub values: Vec<f32>,
    /// Number of distinct groups.
    pub groups: usize,
    /// Groups whose rewards are all equal, including groups of a single sample; their
    /// samples get advantage exactly `0.0` and carry no policy gradient.
    pub zero_variance_groups: usize,
    /// Statistics over the global samples and groups.
    pub global: KindStats,
    /// Statistics over the local (rerollout) samples and groups.
    pub local: KindStats,
}

impl Advantages {
    /// Fraction of all groups that have zero variance (`0.0` when there are no groups).
    pub fn zero_variance_fraction(&self) -> f32 {
        fraction(self.zero_variance_groups, self.groups)
    }

    /// The statistics of one kind of group.
    pub fn kind(&self, kind: GroupKind) -> &KindStats {
        match kind {
            GroupKind::Global => &self.global,
            GroupKind::Local => &self.local,
        }
    }
}

fn fraction(part: usize, whole: usize) -> f32 {
    if whole == 0 {
        0.0
    } else {
        part as f32 / whole as f32
    }
}

/// Computes the group-relative advantage of every sample.
///
/// Samples are grouped by their [`GroupKey`]; each sample is compared only with the samples
/// of its own group, so global and local groups never mix. Within a group of rewards
/// `r_1..r_m` with mean `mu` and sample standard deviation `sigma`
/// (`sqrt(sum (r_i - mu)^2 / (m - 1))`):
///
/// - [`AdvantageScaling::MeanStd`] gives `A_i = (r_i - mu) / (sigma + eps)`,
/// - [`AdvantageScaling::MeanOnly`] gives `A_i = r_i - mu` (`eps` is unused).
///
/// A group whose rewards are all exactly equal, including a group of one sample, is a
/// zero-variance group: its advantages are exactly `0.0` and it is counted in
/// [`Advantages::zero_variance_groups`]. Arithmetic is done in `f64`.
///
/// # Errors
///
/// [`GrpoError::NonFiniteReward`] if a reward is NaN or infinite, and
/// [`GrpoError::InvalidConfig`] if `eps` is negative or not finite.
pub fn compute_advantages(
    samples: &[Sample],
    scaling: AdvantageScaling,
    eps: f32,
) -> Result<Advantages, GrpoError> {
    if !eps.is_finite() || eps < 0.0 {
        return Err(GrpoError::config(
            "advantage_eps",
            format!("must be finite and >= 0, got {eps}"),
        ));
    }
    if let Some((index, sample)) = samples.iter().enumerate().find(|(_, s)| !s.reward.is_finite()) {
        return Err(GrpoError::NonFiniteReward {
            index,
            reward: sample.reward,
        });
    }

    let mut groups: BTreeMap<GroupKey, Vec<usize>> = BTreeMap::new();
    for (index, sample) in samples.iter().enumerate() {
        groups.entry(sample.key).or_default().push(index);
    }

    let mut out = Advantages {
        values: vec![0.0; samples.len()],
        groups: groups.len(),
        ..Default::default()
    };
    for (key, members) in &groups {
        let rewards: Vec<f64> = members.iter().map(|&i| f64::from(samples[i].reward)).collect();
        let first = rewards[0];
        let zero_variance = rewards.iter().all(|&r| r == first);
        let stats = match key.kind {
            GroupKind::Global => &mut out.global,
            GroupKind::Local => &mut out.local,
        };
        stats.groups += 1;
        if zero_variance {
            out.zero_variance_groups += 1;
            stats.zero_variance_groups += 1;
            continue;
        }
        let m = rewards.len() as f64;
        let mean = rewards.iter().sum::<f64>() / m;
        let scale = match scaling {
            AdvantageScaling::MeanStd => {
                let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (m - 1.0);
                var.sqrt() + f64::from(eps)
            }
            AdvantageScaling::MeanOnly => 1.0,
        };
        for (&index, &reward) in members.iter().zip(&rewards) {
            out.values[index] = ((reward - mean) / scale) as f32;
        }
    }

    for kind in [GroupKind::Global, GroupKind::Local] {
        let rewards: Vec<f64> = samples
            .iter()
            .filter(|s| s.key.kind == kind)
            .map(|s| f64::from(s.reward))
            .collect();
        let stats = match kind {
            GroupKind::Global => &mut out.global,
            GroupKind::Local => &mut out.local,
        };
        stats.samples = rewards.len();
        if !rewards.is_empty() {
            let n = rewards.len() as f64;
            let mean = rewards.iter().sum::<f64>() / n;
            let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
            stats.reward_mean = mean as f32;
            stats.reward_std = var.sqrt() as f32;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn assert_close(a: f32, b: f32, tol: f32) {
        assert!((a - b).abs() <= tol, "{a} vs {b} (tolerance {tol})");
    }

    #[test]
    fn hand_worked_group() {
        // rewards 1, 2, 3: mean 2, sample std 1 -> advantages -1, 0, 1 (eps 0).
        let samples: Vec<Sample> = [1.0, 2.0, 3.0]
            .iter()
            .enumerate()
            .map(|(i, &r)| Sample::new(GroupKey::global(7, 1), r, i))
            .collect();
        let adv = compute_advantages(&samples, AdvantageScaling::MeanStd, 0.0).unwrap();
        for (a, e) in adv.values.iter().zip([-1.0, 0.0, 1.0]) {
            assert_close(*a, e, 1e-6);
        }
        let adv = compute_advantages(&samples, AdvantageScaling::MeanOnly, 0.5).unwrap();
        for (a, e) in adv.values.iter().zip([-1.0, 0.0, 1.0]) {
            assert_close(*a, e, 1e-6);
        }
        assert_eq!(adv.groups, 1);
        assert_eq!(adv.zero_variance_groups, 0);
        assert_eq!(adv.global.samples, 3);
        assert_close(adv.global.reward_mean, 2.0, 1e-6);
        assert_close(adv.global.reward_std, (2.0f32 / 3.0).sqrt(), 1e-6);
    }

    #[test]
    fn single_sample_and_constant_groups_are_zero_variance() {
        let samples = vec![
            Sample::new(GroupKey::global(0, 0), 0.7, 0),
            Sample::new(GroupKey::local(0, 0, 0), 0.4, 1),
            Sample::new(GroupKey::local(0, 0, 0), 0.4, 2),
            Sample::new(GroupKey::local(0, 1, 0), 0.1, 3),
            Sample::new(GroupKey::local(0, 1, 0), 0.9, 4),
        ];
        let adv = compute_advantages(&samples, AdvantageScaling::MeanStd, 1e-4).unwrap();
        assert_eq!(adv.groups, 3);
        assert_eq!(adv.zero_variance_groups, 2);
        assert_eq!(adv.global.zero_variance_groups, 1);
        assert_eq!(adv.local.zero_variance_groups, 1);
        assert_eq!(adv.local.groups, 2);
        assert_close(adv.zero_variance_fraction(), 2.0 / 3.0, 1e-6);
        assert_eq!(&adv.values[..3], &[0.0, 0.0, 0.0]);
        assert!(adv.values[3] < 0.0 && adv.values[4] > 0.0);
    }

    #[test]
    fn empty_input_is_fine() {
        let adv = compute_advantages(&[], AdvantageScaling::MeanStd, 1e-4).unwrap();
        assert!(adv.values.is_empty());
        assert_eq!(adv.groups, 0);
        assert_close(adv.zero_variance_fraction(), 0.0, 0.0);
    }

    #[test]
    fn non_finite_reward_is_rejected() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let samples = vec![
                Sample::new(GroupKey::global(0, 0), 0.5, 0),
                Sample::new(GroupKey::global(0, 0), bad, 1),
            ];
            let err = compute_advantages(&samples, AdvantageScaling::MeanStd, 1e-4).unwrap_err();
            assert!(
                matches!(err, GrpoError::NonFiniteReward { index: 1, .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_eps_is_rejected() {
        for eps in [-1e-4, f32::NAN] {
            let err = compute_advantages(&[], AdvantageScaling::MeanStd, eps).unwrap_err();
            assert!(matches!(
                err,
                GrpoError::InvalidConfig {
                    field: "advantage_eps",
                    ..
                }
            ));
        }
    }

    /// Rewards on a 1/64 grid so that shifting and scaling by grid values are exact in f32.
    fn reward() -> impl Strategy<Value = f32> {
        (-256i32..=256).prop_map(|k| k as f32 / 64.0)
    }

    fn key() -> impl Strategy<Value = GroupKey> {
        (any::<bool>(), 0u64..3, 0u32..3, 0u32..2).prop_map(|(local, e, s, b)| {
            if local {
                GroupKey::local(e, s, b)
            } else {
                GroupKey::global(e, s)
            }
        })
    }

    fn samples() -> impl Strategy<Value = Vec<Sample>> {
        prop::collection::vec((key(), reward()), 0..40).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (k, r))| Sample::new(k, r, i))
                .collect()
        })
    }

    fn scaling() -> impl Strategy<Value = AdvantageScaling> {
        prop_oneof![Just(AdvantageScaling::MeanStd), Just(AdvantageScaling::MeanOnly)]
    }

    fn group_members(samples: &[Sample]) -> BTreeMap<GroupKey, Vec<usize>> {
        let mut groups: BTreeMap<GroupKey, Vec<usize>> = BTreeMap::new();
        for (i, s) in samples.iter().enumerate() {
            groups.entry(s.key).or_default().push(i);
        }
        groups
    }

    proptest! {
        #[test]
        fn advantages_sum_to_zero_in_every_group(samples in samples(), scaling in scaling()) {
            let adv = compute_advantages(&samples, scaling, 1e-4).unwrap();
            prop_assert_eq!(adv.values.len(), samples.len());
            for members in group_members(&samples).values() {
                let sum: f32 = members.iter().map(|&i| adv.values[i]).sum();
                prop_assert!(sum.abs() <= 1e-4 * members.len() as f32 * 8.0, "group sum {}", sum);
            }
        }

        #[test]
        fn zero_variance_groups_give_exactly_zero(samples in samples(), scaling in scaling()) {
            let adv = compute_advantages(&samples, scaling, 1e-4).unwrap();
            let mut zero_variance = 0;
            for members in group_members(&samples).values() {
                let r0 = samples[members[0]].reward;
                if members.iter().all(|&i| samples[i].reward == r0) {
                    zero_variance += 1;
                    for &i in members {
                        prop_assert_eq!(adv.values[i], 0.0);
                    }
                }
            }
            prop_assert_eq!(adv.zero_variance_groups, zero_variance);
            prop_assert_eq!(adv.global.zero_variance_groups + adv.local.zero_variance_groups, zero_variance);
        }

        #[test]
        fn invariant_to_shifting_rewards(samples in samples(), shift in reward(), scaling in scaling()) {
            let shifted: Vec<Sample> =
                samples.iter().map(|s| Sample { reward: s.reward + shift, ..*s }).collect();
            let a = compute_advantages(&samples, scaling, 1e-4).unwrap();
            let b = compute_advantages(&shifted, scaling, 1e-4).unwrap();
            prop_assert_eq!(a.zero_variance_groups, b.zero_variance_groups);
            for (x, y) in a.values.iter().zip(&b.values) {
                prop_assert!((x - y).abs() <= 1e-4, "{} vs {}", x, y);
            }
        }

        #[test]
        fn mean_std_is_invariant_to_positive_scaling(samples in samples(), k in 1i32..=64) {
            // Scale by k / 4 (exact in f32 on the reward grid). With eps > 0 the invariance is
            // approximate: the smallest non-zero std on the grid is ~0.01, so eps = 1e-6
            // moves advantages by at most ~1e-4 relative.
            let factor = k as f32 / 4.0;
            let scaled: Vec<Sample> =
                samples.iter().map(|s| Sample { reward: s.reward * factor, ..*s }).collect();
            let a = compute_advantages(&samples, AdvantageScaling::MeanStd, 1e-6).unwrap();
            let b = compute_advantages(&scaled, AdvantageScaling::MeanStd, 1e-6).unwrap();
            for (x, y) in a.values.iter().zip(&b.values) {
                prop_assert!((x - y).abs() <= 1e-3 * (1.0 + x.abs()), "{} vs {}", x, y);
            }
        }

        #[test]
        fn local_advantages_depend_only_on_their_local_group(
            samples in samples(),
            extra in prop::collection::vec((0u64..3, 0u32..3, reward()), 0..20),
            scaling in scaling(),
        ) {
            // Add global samples that share episode and session with the local groups, and
            // perturb every global reward: local advantages must not move.
            let mut mixed: Vec<Sample> = samples
                .iter()
                .map(|s| if s.key.is_local() { *s } else { Sample { reward: s.reward + 0.5, ..*s } })
                .collect();
            mixed.extend(extra.iter().map(|&(e, s, r)| Sample::new(GroupKey::global(e, s), r, 999)));
            let a = compute_advantages(&samples, scaling, 1e-4).unwrap();
            let b = compute_advantages(&mixed, scaling, 1e-4).unwrap();
            for (i, s) in samples.iter().enumerate() {
                if s.key.is_local() {
                    prop_assert_eq!(a.values[i], b.values[i]);
                }
            }
            prop_assert_eq!(a.local, b.local);
        }
    }
}
