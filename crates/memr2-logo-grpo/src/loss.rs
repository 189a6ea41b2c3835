//! The LoGo-GRPO objective over token tensors: clipped surrogate, k3 KL to the reference
//! policy, entropy bonus, local-sample weight, and the statistics a trainer logs.

use burn::prelude::*;
use burn::tensor::Transaction;
use serde::{Deserialize, Serialize};

use crate::error::GrpoError;

/// How per-token losses are averaged into one scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Aggregation {
    /// Sum over every generated token of the batch, divided by the number of generated
    /// tokens: every token weighs the same, whatever the length of its sequence (DAPO,
    /// Dr. GRPO; the Memory-R2 setting).
    #[default]
    TokenMean,
    /// Mean over the tokens of each sequence, then mean over the sequences that have at
    /// least one generated token (the original GRPO formula of DeepSeekMath): a token of a
    /// short sequence weighs more than one of a long sequence.
    SequenceMean,
}

/// The coefficients of the objective (see the crate documentation for the formula).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LossConfig {
    /// `eps_low`: the ratio is clipped below at `1 - clip_low`. PPO (Schulman et al. 2017):
    /// 0.2.
    pub clip_low: f32,
    /// `eps_high`: the ratio is clipped above at `1 + clip_high`. PPO: 0.2 (DAPO's
    /// "clip-higher" raises it, e.g. to 0.28).
    pub clip_high: f32,
    /// `beta`: coefficient of the k3 KL estimate to the reference policy. Memory-R2's
    /// curriculum runs: 0.01 (DeepSeekMath used 0.04; Dr. GRPO and DAPO drop it, 0.0).
    pub kl_coef: f32,
    /// Cap on a token's k3 KL estimate. k3 grows as `exp(ref - new)`, so one sampled token
    /// the reference finds far likelier than the policy does can outweigh a whole batch;
    /// capped tokens add no KL gradient. 10, as verl's `low_var_kl`.
    pub kl_max: f32,
    /// Coefficient of the entropy bonus. Memory-R2: 0.001.
    pub entropy_coef: f32,
    /// How token losses are averaged. Memory-R2: token mean.
    pub aggregation: Aggregation,
    /// Factor on the token losses of local (rerollout) samples. Memory-R2 concatenates the
    /// two kinds unweighted: 1.0.
    pub local_weight: f32,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            clip_low: 0.2,
            clip_high: 0.2,
            kl_coef: 0.01,
            kl_max: 10.0,
            entropy_coef: 0.001,
            aggregation: Aggregation::TokenMean,
            local_weight: 1.0,
        }
    }
}

impl LossConfig {
    /// Checks that every coefficient is finite and in range: `0 <= clip_low < 1`,
    /// `clip_high >= 0`, `kl_coef >= 0`, `kl_max > 0`, `entropy_coef >= 0`,
    /// `local_weight >= 0`.
    ///
    /// # Errors
    ///
    /// [`GrpoError::InvalidConfig`] naming the first offending field.
    pub fn validate(&self) -> Result<(), GrpoError> {
        non_negative("clip_low", self.clip_low)?;
        if self.clip_low >= 1.0 {
            return Err(GrpoError::config(
                "clip_low",
                format!(
                    "must be < 1 (the ratio's lower bound is 1 - clip_low), got {}",
                    self.clip_low
                ),
            ));
        }
        non_negative("clip_high", self.clip_high)?;
        non_negative("kl_coef", self.kl_coef)?;
        non_negative("kl_max", self.kl_max)?;
        if self.kl_max == 0.0 {
            return Err(GrpoError::config("kl_max", "must be > 0, got 0".to_string()));
        }
        non_negative("entropy_coef", self.entropy_coef)?;
        non_negative("local_weight", self.local_weight)?;
        Ok(())
    }
}

pub(crate) fn non_negative(field: &'static str, value: f32) -> Result<(), GrpoError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(GrpoError::config(
            field,
            format!("must be finite and >= 0, got {value}"),
        ))
    }
}

/// The tensors the objective is computed from. Positions where `mask` is `0.0` (prompt,
/// padding) are ignored, whatever they hold (even NaN or infinities), and receive zero
/// gradient.
#[derive(Debug, Clone)]
pub struct LossInputs<B: Backend> {
    /// `[batch, seq]` log-probabilities of the generated tokens under the policy being
    /// trained; the only input gradients are expected to flow through.
    pub new_logp: Tensor<B, 2>,
    /// `[batch, seq]` log-probabilities under the policy that generated the samples (fixed
    /// for the whole update).
    pub old_logp: Tensor<B, 2>,
    /// `[batch, seq]` log-probabilities under the frozen reference policy; `None` leaves
    /// the KL term out (and [`LossStats::ref_kl`] empty).
    pub ref_logp: Option<Tensor<B, 2>>,
    /// `[batch, seq]` entropy of the trained policy's next-token distribution at each
    /// position; `None` leaves the entropy bonus out (and [`LossStats::entropy`] empty).
    pub entropy: Option<Tensor<B, 2>>,
    /// `[batch, seq]` `1.0` on generated tokens, `0.0` elsewhere (values above 0.5 count
    /// as generated).
    pub mask: Tensor<B, 2>,
    /// `[batch]` the advantage of each sequence (see [`compute_advantages`](crate::compute_advantages)).
    pub advantages: Tensor<B, 1>,
    /// `[batch]` `1.0` for a local (rerollout) sample, `0.0` for a global one.
    pub is_local: Tensor<B, 1>,
}

/// Statistics of the advantages of one kind of sample in the batch.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct AdvantageStats {
    /// Number of sequences of this kind.
    pub samples: usize,
    /// Mean advantage (`0.0` when there are none).
    pub mean: f32,
    /// Population standard deviation of the advantages (`0.0` when there are none).
    pub std: f32,
}

/// What a trainer logs about one loss evaluation, read back to the host as plain numbers.
///
/// Token statistics are plain means over the generated tokens of the batch, neither
/// weighted by `local_weight` nor affected by the aggregation mode.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LossStats {
    /// The loss value (the same number as [`LossOutput::loss`]).
    pub loss: f32,
    /// The clipped-surrogate part of the loss alone, aggregated and weighted like the loss.
    pub policy_loss: f32,
    /// Number of generated tokens in the batch.
    pub tokens: usize,
    /// Fraction of tokens whose gradient the clip removed: ratio below `1 - clip_low` with
    /// a negative advantage, or above `1 + clip_high` with a positive one.
    pub clip_fraction: f32,
    /// The part of `clip_fraction` clipped at the lower bound.
    pub clip_fraction_low: f32,
    /// The part of `clip_fraction` clipped at the upper bound.
    pub clip_fraction_high: f32,
    /// Approximate KL between the sampling (old) policy and the trained one:
    /// the token mean of `(ratio - 1) - log(ratio)`.
    pub approx_kl: f32,
    /// Token mean of the importance ratio `exp(new_logp - old_logp)`.
    pub mean_ratio: f32,
    /// Token mean of the k3 estimate of the KL to the reference policy, when given.
    pub ref_kl: Option<f32>,
    /// Token mean of the entropy, when given.
    pub entropy: Option<f32>,
    /// Advantages of the global sequences.
    pub global: AdvantageStats,
    /// Advantages of the local sequences.
    pub local: AdvantageStats,
    /// Fraction of sequences whose advantage is exactly zero (from zero-variance groups):
    /// they contribute no policy gradient, only KL and entropy terms. (memr2's trainer leaves
    /// them out before the loss and reports the zero-variance fraction of its groups instead:
    /// see `memr2_trainer::step`.)
    pub zero_advantage_fraction: f32,
}

/// The objective's value and its statistics.
#[derive(Debug, Clone)]
pub struct LossOutput<B: Backend> {
    /// `[1]` the loss to minimise; carries the autodiff graph of `new_logp` (and of
    /// `entropy`, if that was computed from the trained policy).
    pub loss: Tensor<B, 1>,
    /// Host-side statistics.
    pub stats: LossStats,
}

/// Computes the LoGo-GRPO loss (see the crate documentation for the formula) and its
/// statistics.
///
/// Computing [`LossStats`] reads a few small tensors back to the host (one transaction:
/// the scalar statistics, `advantages` and `is_local`), which synchronises the device once
/// per call. The statistics are computed on detached values and add nothing to the graph.
///
/// # Panics
///
/// If the tensors' shapes disagree (`[batch, seq]` for the token tensors, `[batch]` for
/// `advantages` and `is_local`), as burn does for mismatched operands.
pub fn logo_grpo_loss<B: Backend>(config: &LossConfig, inputs: LossInputs<B>) -> LossOutput<B> {
    let LossInputs {
        new_logp,
        old_logp,
        ref_logp,
        entropy,
        mask,
        advantages,
        is_local,
    } = inputs;

    let valid = mask.greater_elem(0.5); // [batch, seq]
    let pad = valid.clone().bool_not();
    let valid_f = valid.float();
    let adv = advantages.clone().unsqueeze_dim::<2>(1); // [batch, 1]
    let weight = is_local
        .clone()
        .mul_scalar(config.local_weight - 1.0)
        .add_scalar(1.0)
        .unsqueeze_dim::<2>(1);

    // Clipped surrogate, per token. Pad positions are zeroed before `exp` so that whatever
    // they hold cannot turn into NaN.
    let log_ratio = (new_logp.clone() - old_logp).mask_fill(pad.clone(), 0.0);
    let ratio = log_ratio.clone().exp();
    let clipped = ratio.clone().clamp(1.0 - config.clip_low, 1.0 + config.clip_high);
    let surrogate = (ratio.clone() * adv.clone()).min_pair(clipped * adv.clone());
    let policy = surrogate.neg();
    let mut token_loss = policy.clone();

    // k3 estimator of KL(pi_theta || pi_ref): exp(ref - new) - (ref - new) - 1 >= 0, capped
    // per token at `kl_max`.
    let ref_kl = ref_logp.map(|ref_logp| {
        let diff = (ref_logp - new_logp).mask_fill(pad.clone(), 0.0);
        (diff.clone().exp() - diff - 1.0).clamp_max(config.kl_max)
    });
    if let Some(kl) = &ref_kl
        && config.kl_coef != 0.0
    {
        token_loss = token_loss + kl.clone().mul_scalar(config.kl_coef);
    }
    let entropy = entropy.map(|entropy| entropy.mask_fill(pad.clone(), 0.0));
    if let Some(entropy) = &entropy
        && config.entropy_coef != 0.0
    {
        token_loss = token_loss - entropy.clone().mul_scalar(config.entropy_coef);
    }

    let aggregate = |token_values: Tensor<B, 2>| -> Tensor<B, 1> {
        let weighted = token_values.mask_fill(pad.clone(), 0.0) * weight.clone();
        match config.aggregation {
            Aggregation::TokenMean => weighted.sum() / valid_f.clone().sum().clamp_min(1.0),
            Aggregation::SequenceMean => {
                let lengths = valid_f.clone().sum_dim(1); // [batch, 1]
                let per_sequence = weighted.sum_dim(1) / lengths.clone().clamp_min(1.0);
                let sequences = lengths.greater_elem(0.0).float().sum().clamp_min(1.0);
                per_sequence.sum() / sequences
            }
        }
    };
    let loss = aggregate(token_loss);
    let policy_loss = aggregate(policy.detach());

    // Statistics, on detached values.
    let count = valid_f.clone().sum();
    let token_mean = |x: Tensor<B, 2>| (x * valid_f.clone()).sum() / count.clone().clamp_min(1.0);
    let ratio = ratio.detach();
    let adv = adv.detach();
    let low = ratio.clone().lower_elem(1.0 - config.clip_low).float() * adv.clone().lower_elem(0.0).float();
    let high = ratio.clone().greater_elem(1.0 + config.clip_high).float() * adv.greater_elem(0.0).float();
    let approx_kl = (ratio.clone() - 1.0) - log_ratio.detach();
    let zero = || Tensor::<B, 1>::zeros([1], &count.device());
    let has_ref = ref_kl.is_some();
    let scalars = Tensor::cat(
        vec![
            loss.clone().detach(),
            policy_loss,
            count.clone(),
            token_mean(low),
            token_mean(high),
            token_mean(approx_kl),
            token_mean(ratio),
            ref_kl.map(|kl| token_mean(kl.detach())).unwrap_or_else(zero),
            entropy
                .as_ref()
                .map(|e| token_mean(e.clone().detach()))
                .unwrap_or_else(zero),
        ],
        0,
    );
    let data = Transaction::default()
        .register(scalars)
        .register(advantages.detach())
        .register(is_local.detach())
        .execute();
    let [scalars, advantages, is_local]: [Vec<f32>; 3] = data
        .into_iter()
        .map(|d| {
            d.convert::<f32>()
                .into_vec::<f32>()
                .expect("data converted to f32")
        })
        .collect::<Vec<_>>()
        .try_into()
        .expect("three tensors registered");

    let [
        loss_value,
        policy_loss,
        tokens,
        clip_low,
        clip_high,
        approx_kl,
        mean_ratio,
        ref_kl_value,
        entropy_value,
    ] = scalars[..]
    else {
        unreachable!("nine scalars concatenated")
    };
    let kind_stats = |local: bool| {
        let values: Vec<f64> = advantages
            .iter()
            .zip(&is_local)
            .filter(|(_, l)| (**l > 0.5) == local)
            .map(|(a, _)| f64::from(*a))
            .collect();
        if values.is_empty() {
            return AdvantageStats::default();
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n;
        AdvantageStats {
            samples: values.len(),
            mean: mean as f32,
            std: var.sqrt() as f32,
        }
    };
    let zero_advantages = advantages.iter().filter(|a| **a == 0.0).count();
    let stats = LossStats {
        loss: loss_value,
        policy_loss,
        tokens: tokens.round() as usize,
        clip_fraction: clip_low + clip_high,
        clip_fraction_low: clip_low,
        clip_fraction_high: clip_high,
        approx_kl,
        mean_ratio,
        ref_kl: has_ref.then_some(ref_kl_value),
        entropy: entropy.map(|_| entropy_value),
        global: kind_stats(false),
        local: kind_stats(true),
        zero_advantage_fraction: if advantages.is_empty() {
            0.0
        } else {
            zero_advantages as f32 / advantages.len() as f32
        },
    };
    LossOutput { loss, stats }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TestAutodiffBackend, TestBackend};
    use proptest::prelude::*;

    fn assert_close(got: f32, want: f32, tol: f32) {
        assert!(
            (got - want).abs() <= tol,
            "got {got}, want {want} (tolerance {tol})"
        );
    }

    fn tensor2<B: Backend>(rows: &[Vec<f32>]) -> Tensor<B, 2> {
        let seq = rows.first().map_or(0, Vec::len);
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), seq]), &Default::default())
    }

    fn tensor1<B: Backend>(values: &[f32]) -> Tensor<B, 1> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len()]),
            &Default::default(),
        )
    }

    /// Plain host-side description of a batch, turned into tensors on any backend.
    #[derive(Debug, Clone)]
    struct Batch {
        new: Vec<Vec<f32>>,
        old: Vec<Vec<f32>>,
        reference: Option<Vec<Vec<f32>>>,
        entropy: Option<Vec<Vec<f32>>>,
        mask: Vec<Vec<f32>>,
        advantages: Vec<f32>,
        is_local: Vec<f32>,
    }

    impl Batch {
        fn inputs_with_new<B: Backend>(&self, new_logp: Tensor<B, 2>) -> LossInputs<B> {
            LossInputs {
                new_logp,
                old_logp: tensor2(&self.old),
                ref_logp: self.reference.as_deref().map(tensor2),
                entropy: self.entropy.as_deref().map(tensor2),
                mask: tensor2(&self.mask),
                advantages: tensor1(&self.advantages),
                is_local: tensor1(&self.is_local),
            }
        }

        fn inputs<B: Backend>(&self) -> LossInputs<B> {
            self.inputs_with_new(tensor2(&self.new))
        }

        /// The loss and the gradient of the loss with respect to `new`, by autodiff.
        fn loss_and_grad(&self, config: &LossConfig) -> (f32, Vec<f32>) {
            let new = tensor2::<TestAutodiffBackend>(&self.new).require_grad();
            let output = logo_grpo_loss(config, self.inputs_with_new(new.clone()));
            let grads = output.loss.backward();
            let grad = new.grad(&grads).expect("new_logp has a gradient");
            (
                output.stats.loss,
                grad.into_data().convert::<f32>().into_vec::<f32>().unwrap(),
            )
        }
    }

    /// The hand-worked batch: two sequences of two positions, the second one padded.
    fn hand_worked() -> (LossConfig, Batch) {
        let config = LossConfig {
            clip_low: 0.2,
            clip_high: 0.2,
            kl_coef: 0.1,
            kl_max: 10.0,
            entropy_coef: 0.01,
            aggregation: Aggregation::TokenMean,
            local_weight: 2.0,
        };
        let ln = f32::ln;
        let batch = Batch {
            new: vec![vec![-1.0, ln(1.5)], vec![ln(0.5), f32::NAN]],
            old: vec![vec![-1.0, 0.0], vec![0.0, f32::NEG_INFINITY]],
            reference: Some(vec![vec![-1.0 + ln(2.0), ln(1.5)], vec![ln(0.5), f32::INFINITY]]),
            entropy: Some(vec![vec![0.5, 1.0], vec![2.0, f32::NAN]]),
            mask: vec![vec![1.0, 1.0], vec![1.0, 0.0]],
            advantages: vec![1.0, -0.5],
            is_local: vec![0.0, 1.0],
        };
        (config, batch)
    }

    #[test]
    fn hand_worked_example() {
        // Sequence 0 (global, A = 1, weight 1):
        //   t0: ratio 1,   clip term -min(1*1, 1*1)      = -1;   kl: d = ln 2, 2 - ln 2 - 1 = 0.306853;
        //       H 0.5 -> -1 + 0.1*0.306853 - 0.01*0.5      = -0.974315
        //   t1: ratio 1.5, clip term -min(1.5*1, 1.2*1)  = -1.2 (clipped high); kl 0;
        //       H 1.0 -> -1.2 - 0.01                        = -1.21
        // Sequence 1 (local, A = -0.5, weight 2), t1 is padding (NaN/inf there are ignored):
        //   t0: ratio 0.5, clip term -min(-0.25, -0.4)   =  0.4 (clipped low); kl 0;
        //       H 2.0 -> 2 * (0.4 - 0.02)                   =  0.76
        // token mean:    (-0.974315 - 1.21 + 0.76) / 3      = -0.474772
        // sequence mean: ((-0.974315 - 1.21) / 2 + 0.76) / 2 = -0.166079
        let (config, batch) = hand_worked();
        let out = logo_grpo_loss(&config, batch.inputs::<TestBackend>());
        let loss = out.loss.into_data().convert::<f32>().into_vec::<f32>().unwrap();
        assert_eq!(loss.len(), 1);
        assert_close(loss[0], -0.474772, 1e-5);
        let s = out.stats;
        assert_close(s.loss, -0.474772, 1e-5);
        // Policy part alone: (-1 - 1.2 + 2 * 0.4) / 3.
        assert_close(s.policy_loss, -1.4 / 3.0, 1e-5);
        assert_eq!(s.tokens, 3);
        assert_close(s.clip_fraction_high, 1.0 / 3.0, 1e-6);
        assert_close(s.clip_fraction_low, 1.0 / 3.0, 1e-6);
        assert_close(s.clip_fraction, 2.0 / 3.0, 1e-6);
        assert_close(s.mean_ratio, 1.0, 1e-6);
        // (0 + (0.5 - ln 1.5) + (-0.5 + ln 2)) / 3
        assert_close(s.approx_kl, (0.5 - 1.5f32.ln() - 0.5 + 2f32.ln()) / 3.0, 1e-6);
        assert_close(s.ref_kl.unwrap(), (1.0 - 2f32.ln()) / 3.0, 1e-6);
        assert_close(s.entropy.unwrap(), 3.5 / 3.0, 1e-6);
        assert_eq!((s.global.samples, s.local.samples), (1, 1));
        assert_close(s.global.mean, 1.0, 1e-6);
        assert_close(s.local.mean, -0.5, 1e-6);
        assert_close(s.global.std, 0.0, 1e-6);
        assert_close(s.zero_advantage_fraction, 0.0, 0.0);

        let config = LossConfig {
            aggregation: Aggregation::SequenceMean,
            ..config
        };
        let out = logo_grpo_loss(&config, batch.inputs::<TestBackend>());
        assert_close(out.stats.loss, -0.166079, 1e-5);
    }

    #[test]
    fn padding_gets_zero_gradient_even_when_not_finite() {
        let (config, batch) = hand_worked();
        let (loss, grad) = batch.loss_and_grad(&config);
        assert!(loss.is_finite());
        assert!(grad.iter().all(|g| g.is_finite()), "{grad:?}");
        assert_close(grad[3], 0.0, 0.0);
    }

    #[test]
    fn optional_terms_absent() {
        let (config, mut batch) = hand_worked();
        batch.reference = None;
        batch.entropy = None;
        let out = logo_grpo_loss(&config, batch.inputs::<TestBackend>());
        assert_eq!(out.stats.ref_kl, None);
        assert_eq!(out.stats.entropy, None);
        // Only the weighted policy part is left.
        assert_close(out.stats.loss, -1.4 / 3.0, 1e-5);
    }

    #[test]
    fn empty_mask_gives_zero_loss() {
        let (config, mut batch) = hand_worked();
        batch.mask = vec![vec![0.0, 0.0], vec![0.0, 0.0]];
        for aggregation in [Aggregation::TokenMean, Aggregation::SequenceMean] {
            let config = LossConfig {
                aggregation,
                ..config
            };
            let out = logo_grpo_loss(&config, batch.inputs::<TestBackend>());
            assert_eq!(out.stats.tokens, 0);
            assert_close(out.stats.loss, 0.0, 0.0);
            assert_close(out.stats.clip_fraction, 0.0, 0.0);
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        // Log-ratios in {-0.5, -0.1, 0, 0.1, 0.3}: every ratio is at least 0.05 away (in log
        // space) from the clip bounds ln 0.8 = -0.223 and ln 1.2 = 0.182, so the loss is
        // smooth within the finite-difference step.
        let old = vec![
            vec![-1.0, -2.0, -0.5, -3.0],
            vec![-0.2, -1.5, -2.5, 0.0],
            vec![-0.7, -0.9, -1.1, -1.3],
        ];
        let log_ratio = [
            [0.1, -0.5, 0.0, 0.3],
            [-0.1, 0.3, 0.1, 0.0],
            [0.3, -0.5, -0.1, 0.1],
        ];
        let new: Vec<Vec<f32>> = old
            .iter()
            .zip(&log_ratio)
            .map(|(o, d)| o.iter().zip(d).map(|(o, d)| o + d).collect())
            .collect();
        let batch = Batch {
            reference: Some(vec![
                vec![-1.2, -1.8, -0.4, -2.0],
                vec![-0.1, -1.0, -2.0, 0.0],
                vec![-0.5, -1.2, -1.0, -1.5],
            ]),
            entropy: Some(vec![vec![0.3; 4]; 3]),
            mask: vec![
                vec![1.0, 1.0, 1.0, 1.0],
                vec![1.0, 1.0, 1.0, 0.0],
                vec![1.0, 1.0, 0.0, 0.0],
            ],
            advantages: vec![0.8, -1.3, 0.5],
            is_local: vec![0.0, 1.0, 1.0],
            new,
            old,
        };
        for aggregation in [Aggregation::TokenMean, Aggregation::SequenceMean] {
            let config = LossConfig {
                kl_coef: 0.05,
                aggregation,
                local_weight: 1.5,
                ..Default::default()
            };
            let (_, grad) = batch.loss_and_grad(&config);
            let h = 5e-3;
            for i in 0..3 {
                for t in 0..4 {
                    let eval = |delta: f32| {
                        let mut new = batch.new.clone();
                        new[i][t] += delta;
                        logo_grpo_loss(&config, batch.inputs_with_new::<TestBackend>(tensor2(&new)))
                            .stats
                            .loss
                    };
                    let numeric = (eval(h) - eval(-h)) / (2.0 * h);
                    let analytic = grad[i * 4 + t];
                    assert!(
                        (numeric - analytic).abs() <= 2e-3,
                        "{aggregation:?} [{i}, {t}]: autodiff {analytic}, finite differences {numeric}"
                    );
                }
            }
        }
    }

    /// One token, ratio `ratio`, advantage `adv`: the loss and its gradient in `new_logp`.
    fn single_token(ratio: f32, adv: f32) -> (f32, f32) {
        let batch = Batch {
            new: vec![vec![ratio.ln()]],
            old: vec![vec![0.0]],
            reference: None,
            entropy: None,
            mask: vec![vec![1.0]],
            advantages: vec![adv],
            is_local: vec![0.0],
        };
        let config = LossConfig {
            kl_coef: 0.0,
            entropy_coef: 0.0,
            ..Default::default()
        };
        let (loss, grad) = batch.loss_and_grad(&config);
        (loss, grad[0])
    }

    #[test]
    fn clipping_with_positive_advantage() {
        // Above 1 + eps the gain is capped and the gradient vanishes.
        let (loss, grad) = single_token(1.5, 2.0);
        assert_close(loss, -1.2 * 2.0, 1e-5);
        assert_close(grad, 0.0, 1e-7);
        // Below 1 - eps nothing is clipped: d(-ratio * A)/d logp = -ratio * A.
        let (loss, grad) = single_token(0.5, 2.0);
        assert_close(loss, -0.5 * 2.0, 1e-5);
        assert_close(grad, -0.5 * 2.0, 1e-5);
        // Inside the range.
        let (loss, grad) = single_token(1.1, 2.0);
        assert_close(loss, -1.1 * 2.0, 1e-5);
        assert_close(grad, -1.1 * 2.0, 1e-5);
    }

    #[test]
    fn clipping_with_negative_advantage() {
        // Below 1 - eps the loss stops falling and the gradient vanishes.
        let (loss, grad) = single_token(0.5, -2.0);
        assert_close(loss, 0.8 * 2.0, 1e-5);
        assert_close(grad, 0.0, 1e-7);
        // Above 1 + eps nothing is clipped: the penalty keeps growing with the ratio.
        let (loss, grad) = single_token(1.5, -2.0);
        assert_close(loss, 1.5 * 2.0, 1e-5);
        assert_close(grad, 1.5 * 2.0, 1e-5);
    }

    #[test]
    fn clip_bounds_are_separate() {
        let batch = Batch {
            new: vec![vec![1.25f32.ln(), 0.85f32.ln()]],
            old: vec![vec![0.0, 0.0]],
            reference: None,
            entropy: None,
            mask: vec![vec![1.0, 1.0]],
            advantages: vec![1.0],
            is_local: vec![0.0],
        };
        // clip_high 0.28 (DAPO): ratio 1.25 is inside; clip_low 0.1: 0.85 is below but A > 0.
        let config = LossConfig {
            clip_low: 0.1,
            clip_high: 0.28,
            kl_coef: 0.0,
            entropy_coef: 0.0,
            ..Default::default()
        };
        let out = logo_grpo_loss(&config, batch.inputs::<TestBackend>());
        assert_close(out.stats.loss, -(1.25 + 0.85) / 2.0, 1e-5);
        assert_close(out.stats.clip_fraction, 0.0, 0.0);
        let config = LossConfig {
            clip_high: 0.2,
            ..config
        };
        let out = logo_grpo_loss(&config, batch.inputs::<TestBackend>());
        assert_close(out.stats.loss, -(1.2 + 0.85) / 2.0, 1e-5);
        assert_close(out.stats.clip_fraction_high, 0.5, 1e-6);
    }

    #[test]
    fn k3_kl_is_non_negative_and_zero_at_the_reference() {
        let batch = Batch {
            new: vec![vec![-1.0, -2.0, -0.5]],
            old: vec![vec![-1.0, -2.0, -0.5]],
            reference: Some(vec![vec![-1.0, -0.5, -3.0]]),
            entropy: None,
            mask: vec![vec![1.0, 1.0, 1.0]],
            advantages: vec![0.0],
            is_local: vec![0.0],
        };
        let config = LossConfig {
            kl_coef: 1.0,
            ..Default::default()
        };
        let out = logo_grpo_loss(&config, batch.inputs::<TestBackend>());
        // d = ref - new = [0, 1.5, -2.5]; k3 = e^d - d - 1.
        let k3 = |d: f32| d.exp() - d - 1.0;
        let want = (k3(0.0) + k3(1.5) + k3(-2.5)) / 3.0;
        assert!(want > 0.0);
        assert_close(out.stats.ref_kl.unwrap(), want, 1e-5);
        assert_close(out.stats.loss, want, 1e-5);
        assert_close(out.stats.zero_advantage_fraction, 1.0, 0.0);
    }

    #[test]
    fn k3_kl_is_capped_per_token_and_the_capped_token_gets_no_kl_gradient() {
        // d = ref - new = [8, 0.5]: k3(8) = e^8 - 9 ~ 2972 is capped at 10.
        let batch = Batch {
            new: vec![vec![-9.0, -1.0]],
            old: vec![vec![-9.0, -1.0]],
            reference: Some(vec![vec![-1.0, -0.5]]),
            entropy: None,
            mask: vec![vec![1.0, 1.0]],
            advantages: vec![0.0],
            is_local: vec![0.0],
        };
        let config = LossConfig {
            kl_coef: 1.0,
            entropy_coef: 0.0,
            ..Default::default()
        };
        let (loss, grad) = batch.loss_and_grad(&config);
        let k3 = |d: f32| d.exp() - d - 1.0;
        assert_close(loss, (10.0 + k3(0.5)) / 2.0, 1e-5);
        // d(k3)/d(new) = 1 - e^d, over 2 tokens; the capped token's is zero.
        assert_close(grad[0], 0.0, 1e-6);
        assert_close(grad[1], (1.0 - 0.5f32.exp()) / 2.0, 1e-5);
    }

    #[test]
    fn validate_rejects_bad_coefficients() {
        LossConfig::default().validate().unwrap();
        for bad in [
            LossConfig {
                clip_low: 1.0,
                ..Default::default()
            },
            LossConfig {
                clip_high: f32::NAN,
                ..Default::default()
            },
            LossConfig {
                kl_coef: -1.0,
                ..Default::default()
            },
            LossConfig {
                kl_max: 0.0,
                ..Default::default()
            },
            LossConfig {
                local_weight: -0.5,
                ..Default::default()
            },
        ] {
            assert!(matches!(bad.validate(), Err(GrpoError::InvalidConfig { .. })));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn on_policy_loss_is_minus_the_token_weighted_mean_advantage(
            rows in prop::collection::vec(
                (prop::collection::vec(-3.0f32..0.0, 5), 0usize..=5, -2.0f32..2.0, any::<bool>()),
                1..6,
            ),
        ) {
            // Ratio 1 (new == old) and no KL or entropy: every generated token of sequence i
            // contributes -A_i, so the token-mean loss is -sum_i |T_i| A_i / sum_i |T_i|.
            let batch = Batch {
                new: rows.iter().map(|r| r.0.clone()).collect(),
                old: rows.iter().map(|r| r.0.clone()).collect(),
                reference: Some(rows.iter().map(|r| r.0.iter().map(|x| x - 0.3).collect()).collect()),
                entropy: Some(vec![vec![1.0; 5]; rows.len()]),
                mask: rows.iter().map(|r| (0..5).map(|t| if t < r.1 { 1.0 } else { 0.0 }).collect()).collect(),
                advantages: rows.iter().map(|r| r.2).collect(),
                is_local: rows.iter().map(|r| if r.3 { 1.0 } else { 0.0 }).collect(),
            };
            let config = LossConfig { kl_coef: 0.0, entropy_coef: 0.0, ..Default::default() };
            let out = logo_grpo_loss(&config, batch.inputs::<TestBackend>());
            let tokens: usize = rows.iter().map(|r| r.1).sum();
            let weighted: f32 = rows.iter().map(|r| r.1 as f32 * r.2).sum();
            let want = if tokens == 0 { 0.0 } else { -weighted / tokens as f32 };
            prop_assert!((out.stats.loss - want).abs() <= 1e-5, "{} vs {}", out.stats.loss, want);
            let want_ratio = if tokens == 0 { 0.0 } else { 1.0 };
            prop_assert!((out.stats.mean_ratio - want_ratio).abs() <= 1e-6);
            prop_assert_eq!(out.stats.tokens, tokens);
        }
    }
}
