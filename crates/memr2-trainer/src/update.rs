//! The policy-gradient update: old and reference log-probs, `ppo_epochs` passes over
//! minibatches of the LoGo-GRPO loss, global gradient-norm clipping, AdamW.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use memr2_logo_grpo::{Aggregation, LossConfig, LossInputs, LossOutput, LossStats, logo_grpo_loss};
use memr2_policy::{Transformer, completion_logprobs};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One generated sequence to train on, with its group-relative advantage.
#[derive(Clone, Debug)]
pub struct TrainSample {
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// Completion ids (the tokens the loss covers).
    pub completion: Vec<u32>,
    /// Advantage of the sample's group member.
    pub advantage: f32,
    /// Whether it comes from a local (rerollout) group.
    pub local: bool,
    /// Log-probs of the completion under the policy that sampled it, as generation recorded
    /// them (untempered, one per completion token), which are the update's old log-probs;
    /// `None` to have the update recompute them with a forward pass. The two agree to rounding
    /// (memr2-policy tests that sampled log-probs match teacher forcing).
    pub old_logprobs: Option<Vec<f32>>,
}

/// What one update did, averaged over its minibatches.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateStats {
    /// Mean loss.
    pub loss: f64,
    /// Fraction of tokens whose ratio was clipped.
    pub clip_fraction: f64,
    /// KL to the reference policy (k3 estimate, token mean).
    pub kl: f64,
    /// Approximate KL between the sampling policy and the updated one.
    pub approx_kl_old: f64,
    /// Mean importance ratio.
    pub ratio_mean: f64,
    /// Mean per-token entropy.
    pub entropy: f64,
    /// Mean gradient norm before clipping.
    pub grad_norm: f64,
    /// Minibatches whose loss or gradient was not finite and were skipped.
    pub skipped_nonfinite: u64,
    /// Minibatches applied.
    pub minibatches: u64,
    /// Tokens (prompt + completion) pushed through the training forward pass.
    pub tokens: u64,
}

/// Learning settings of one update.
pub struct UpdateSettings<'a> {
    /// The loss.
    pub loss: &'a LossConfig,
    /// Passes over the samples.
    pub epochs: usize,
    /// Sequences per minibatch.
    pub minibatch_size: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// Global gradient-norm clip.
    pub max_grad_norm: f64,
    /// Shards each minibatch is split into, their gradients computed side by side
    /// (`shard`, a module of this crate).
    pub shards: usize,
}

/// The LoGo-GRPO loss of the samples `batch` (indices into `samples`) under `model`, against
/// their old and (when given) reference log-probs.
fn minibatch_loss<B: Backend>(
    model: &Transformer<B>,
    batch: &[usize],
    samples: &[TrainSample],
    old: &[Vec<f32>],
    reference: Option<&[Vec<f32>]>,
    loss: &LossConfig,
) -> LossOutput<B> {
    let device = model.device();
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = batch
        .iter()
        .map(|&i| (samples[i].prompt.clone(), samples[i].completion.clone()))
        .collect();
    let out = completion_logprobs(model, &pairs);
    let [rows, width] = out.logprobs.dims();
    let rows_of = |logps: &[Vec<f32>]| {
        let rows: Vec<&[f32]> = batch.iter().map(|&i| logps[i].as_slice()).collect();
        padded::<B>(&rows, width, &device)
    };
    let advantages: Vec<f32> = batch.iter().map(|&i| samples[i].advantage).collect();
    let local: Vec<f32> = batch
        .iter()
        .map(|&i| if samples[i].local { 1.0 } else { 0.0 })
        .collect();
    let inputs = LossInputs {
        new_logp: out.logprobs,
        old_logp: rows_of(old),
        ref_logp: reference.map(rows_of),
        entropy: Some(out.entropy),
        mask: out.mask,
        advantages: Tensor::from_data(TensorData::new(advantages, [rows]), &device),
        is_local: Tensor::from_data(TensorData::new(local, [rows]), &device),
    };
    logo_grpo_loss(loss, inputs)
}

/// Log-probs of each sample's completion under `model`, without gradients, as host vectors.
/// Batches of `chunk` samples of similar lengths run side by side on the machine's cores when
/// `side_by_side` is set (each batch's numbers are the same whichever thread computes it).
pub fn host_logprobs<B: Backend>(
    model: &Transformer<B>,
    samples: &[&TrainSample],
    chunk: usize,
    side_by_side: bool,
) -> Vec<Vec<f32>> {
    // Batches of similar lengths waste less compute on padding; results go back in input order.
    let mut by_length: Vec<usize> = (0..samples.len()).collect();
    by_length.sort_by_key(|&i| samples[i].prompt.len() + samples[i].completion.len());
    let batches: Vec<&[usize]> = by_length.chunks(chunk.max(1)).collect();
    let threads = if side_by_side { usize::MAX } else { 1 };
    // Over several ranks, batch `b` is computed by rank `b % ranks` and the results gathered.
    let computed: Vec<Vec<f32>> = crate::collective::dealt(batches.len(), |mine| {
        crate::shard::round_robin(model, mine.len(), threads, Clone::clone, |model, j| {
            let pairs: Vec<(Vec<u32>, Vec<u32>)> = batches[mine[j]]
                .iter()
                .map(|&i| (samples[i].prompt.clone(), samples[i].completion.clone()))
                .collect();
            completion_logprobs(model, &pairs)
                .logprobs
                .into_data()
                .to_vec::<f32>()
                .expect("f32 log-probs")
        })
    });
    let mut out = vec![Vec::new(); samples.len()];
    for (batch, data) in batches.iter().zip(computed) {
        let width = data.len() / batch.len();
        for (row, &i) in batch.iter().enumerate() {
            out[i] = data[row * width..row * width + samples[i].completion.len()].to_vec();
        }
    }
    out
}

/// The old log-probs of every sample: its recorded ones when they cover its completion, the
/// others computed under `model` (the policy before the update) in one pass.
fn old_logprobs<B: Backend>(
    model: &Transformer<B>,
    samples: &[TrainSample],
    chunk: usize,
    side_by_side: bool,
) -> Vec<Vec<f32>> {
    fn recorded(s: &TrainSample) -> Option<&Vec<f32>> {
        s.old_logprobs.as_ref().filter(|l| l.len() == s.completion.len())
    }
    let missing: Vec<&TrainSample> = samples.iter().filter(|s| recorded(s).is_none()).collect();
    let computed = if missing.is_empty() {
        Vec::new()
    } else {
        host_logprobs(model, &missing, chunk, side_by_side)
    };
    let mut computed = computed.into_iter();
    samples
        .iter()
        .map(|s| match recorded(s) {
            Some(logprobs) => logprobs.clone(),
            None => computed.next().expect("one computed row per missing sample"),
        })
        .collect()
}

/// Shuffled minibatches of `size` indices into `lengths`, each of similar sequence lengths so
/// that little compute goes to padding: the shuffled order is cut into windows of 8
/// minibatches, each window sorted by length, and the minibatches shuffled.
pub fn length_bucketed(lengths: &[usize], size: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    let size = size.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(rng);
    let mut batches = Vec::new();
    for window in order.chunks(size * 8) {
        let mut w = window.to_vec();
        w.sort_by_key(|&i| lengths[i]);
        batches.extend(w.chunks(size).map(<[usize]>::to_vec));
    }
    batches.shuffle(rng);
    batches
}

/// Right-pads per-sample rows into a `[batch, width]` tensor.
fn padded<B: Backend>(rows: &[&[f32]], width: usize, device: &B::Device) -> Tensor<B, 2> {
    let mut data = vec![0.0f32; rows.len() * width];
    for (r, row) in rows.iter().enumerate() {
        data[r * width..r * width + row.len()].copy_from_slice(row);
    }
    Tensor::from_data(TensorData::new(data, [rows.len(), width]), device)
}

/// Runs the update and returns the new model with its statistics. A minibatch whose loss or
/// gradient norm is not finite is skipped (the model is left as it was) and counted.
pub fn ppo_update<B, O>(
    mut model: Transformer<B>,
    optim: &mut O,
    reference: Option<&Transformer<B::InnerBackend>>,
    samples: &[TrainSample],
    settings: &UpdateSettings<'_>,
    rng: &mut ChaCha8Rng,
) -> (Transformer<B>, UpdateStats)
where
    B: AutodiffBackend,
    O: Optimizer<Transformer<B>, B>,
{
    let _span = tracing::info_span!("update", samples = samples.len()).entered();
    let mut stats = UpdateStats::default();
    if samples.is_empty() {
        return (model, stats);
    }
    let refs: Vec<&TrainSample> = samples.iter().collect();
    let chunk = settings.minibatch_size;
    // Old log-probs: the current policy before any step. Those generation recorded are taken
    // as they are; the others are computed by the training forward. Unsharded runs (a GPU)
    // keep these passes on the calling thread too.
    let side_by_side = settings.shards > 1;
    let old = old_logprobs(&model.valid(), samples, chunk, side_by_side);
    let reference = reference.map(|r| host_logprobs(r, &refs, chunk, side_by_side));

    let lengths: Vec<usize> = samples
        .iter()
        .map(|s| s.prompt.len() + s.completion.len())
        .collect();
    let mut sums = UpdateStats::default();
    for _epoch in 0..settings.epochs {
        for batch in &length_bucketed(&lengths, chunk, rng) {
            stats.tokens += batch
                .iter()
                .map(|&i| (samples[i].prompt.len() + samples[i].completion.len()) as u64)
                .sum::<u64>();
            // A shard's share of the minibatch's loss: of its generated tokens under a token
            // mean, of its (non-empty) sequences under a sequence mean.
            let share_of = |part: &[usize]| -> f64 {
                match settings.loss.aggregation {
                    Aggregation::TokenMean => {
                        part.iter().map(|&i| samples[i].completion.len()).sum::<usize>() as f64
                    }
                    Aggregation::SequenceMean => part
                        .iter()
                        .filter(|&&i| !samples[i].completion.is_empty())
                        .count() as f64,
                }
            };
            let total = share_of(batch).max(1.0);
            let shards = crate::shard::deal(batch, settings.shards);
            let (grads, outputs) = crate::shard::sharded_gradients(&model, &shards, |m, part| {
                let output = minibatch_loss(m, part, samples, &old, reference.as_deref(), settings.loss);
                let share = share_of(part) / total;
                (output.loss.mul_scalar(share), (share, output.stats))
            });
            let loss_value: f64 = outputs.iter().map(|(v, _)| v).sum();
            let Some(mut grads) = grads else {
                tracing::warn!(loss = loss_value, "non-finite loss: minibatch skipped");
                stats.skipped_nonfinite += 1;
                continue;
            };
            let norm = grad_norm::<B>(&model, &grads);
            if !norm.is_finite() {
                tracing::warn!(grad_norm = norm, "non-finite gradient: minibatch skipped");
                stats.skipped_nonfinite += 1;
                continue;
            }
            if norm > settings.max_grad_norm {
                scale_grads::<B>(&model, &mut grads, (settings.max_grad_norm / norm) as f32);
            }
            model = optim.step(settings.learning_rate, model, grads);
            let weighted = |f: &dyn Fn(&LossStats) -> f32| -> f64 {
                outputs
                    .iter()
                    .map(|(_, (share, s))| share * f64::from(f(s)))
                    .sum()
            };
            sums.loss += loss_value;
            sums.clip_fraction += weighted(&|s| s.clip_fraction);
            sums.kl += weighted(&|s| s.ref_kl.unwrap_or(0.0));
            sums.approx_kl_old += weighted(&|s| s.approx_kl);
            sums.ratio_mean += weighted(&|s| s.mean_ratio);
            sums.entropy += weighted(&|s| s.entropy.unwrap_or(0.0));
            sums.grad_norm += norm;
            stats.minibatches += 1;
        }
    }
    let n = stats.minibatches.max(1) as f64;
    stats.loss = sums.loss / n;
    stats.clip_fraction = sums.clip_fraction / n;
    stats.kl = sums.kl / n;
    stats.approx_kl_old = sums.approx_kl_old / n;
    stats.ratio_mean = sums.ratio_mean / n;
    stats.entropy = sums.entropy / n;
    stats.grad_norm = sums.grad_norm / n;
    (model, stats)
}

/// The L2 norm of all gradients together.
pub fn grad_norm<B: AutodiffBackend>(model: &Transformer<B>, grads: &GradientsParams) -> f64 {
    struct Norm<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        total: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Norm<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let sq = g.powi_scalar(2).sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + sq,
                    None => sq,
                });
            }
        }
    }
    let mut visitor = Norm::<B> { grads, total: None };
    model.visit(&mut visitor);
    visitor
        .total
        .map(|t| t.into_scalar().elem::<f64>().sqrt())
        .unwrap_or(0.0)
}

/// Multiplies every gradient by `factor`.
fn scale_grads<B: AutodiffBackend>(model: &Transformer<B>, grads: &mut GradientsParams, factor: f32) {
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f32,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads
                    .register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    model.visit(&mut Scale { grads, factor });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use memr2_logo_grpo::LossConfig;
    use memr2_policy::TransformerConfig;
    use memr2_policy::optim::AdamWConfig;
    use rand::SeedableRng;

    pub(crate) type B = Autodiff<Flex>;

    /// A one-layer model for tests, seeded.
    pub(crate) fn model() -> Transformer<B> {
        let mut c = TransformerConfig::tiny(64);
        c.hidden_size = 32;
        c.intermediate_size = 64;
        c.num_hidden_layers = 1;
        c.num_attention_heads = 2;
        c.num_key_value_heads = Some(2);
        c.init_seeded::<B>(3, &Default::default())
    }

    fn mean_logprob(model: &Transformer<B>, sample: &TrainSample) -> f32 {
        let lp = host_logprobs(&model.valid(), &[sample], 1, false);
        lp[0].iter().sum::<f32>() / lp[0].len() as f32
    }

    #[test]
    fn update_moves_probability_towards_positive_advantages() {
        let good = TrainSample {
            prompt: vec![1, 2, 3],
            completion: vec![7, 8, 9],
            advantage: 1.0,
            local: false,
            old_logprobs: None,
        };
        let bad = TrainSample {
            prompt: vec![1, 2, 3],
            completion: vec![20, 21, 22],
            advantage: -1.0,
            local: true,
            old_logprobs: None,
        };
        let samples = vec![good.clone(), bad.clone()];
        let mut model = model();
        let reference = model.valid();
        let (good0, bad0) = (mean_logprob(&model, &good), mean_logprob(&model, &bad));
        let mut optim = AdamWConfig::new()
            .with_weight_decay(0.0)
            .init::<B, Transformer<B>>();
        let loss = LossConfig::default();
        let settings = UpdateSettings {
            loss: &loss,
            epochs: 2,
            minibatch_size: 2,
            learning_rate: 1e-2,
            max_grad_norm: 1.0,
            shards: 2,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut last = UpdateStats::default();
        for _ in 0..5 {
            let (next, stats) =
                ppo_update(model, &mut optim, Some(&reference), &samples, &settings, &mut rng);
            model = next;
            last = stats;
        }
        assert_eq!(last.minibatches, 2);
        assert_eq!(last.skipped_nonfinite, 0);
        assert!(
            last.loss.is_finite() && last.grad_norm > 0.0 && last.kl >= 0.0,
            "{last:?}"
        );
        assert_eq!(last.tokens, 24, "two epochs of two 6-token sequences");
        assert!(
            mean_logprob(&model, &good) > good0,
            "the positive sample became likelier"
        );
        assert!(
            mean_logprob(&model, &bad) < bad0,
            "the negative sample became less likely"
        );
    }

    #[test]
    fn host_logprobs_side_by_side_equal_the_sequential_ones() {
        let model = model().valid();
        let samples: Vec<TrainSample> = (0..7u32)
            .map(|i| TrainSample {
                prompt: (1..3 + i).collect(),
                completion: vec![5 + i % 3; 1 + (i as usize % 4)],
                advantage: 0.0,
                local: false,
                old_logprobs: None,
            })
            .collect();
        let refs: Vec<&TrainSample> = samples.iter().collect();
        let sequential = host_logprobs(&model, &refs, 2, false);
        let side_by_side = host_logprobs(&model, &refs, 2, true);
        assert_eq!(sequential, side_by_side);
        for (s, lp) in samples.iter().zip(&sequential) {
            assert_eq!(lp.len(), s.completion.len());
            assert!(lp.iter().all(|x| x.is_finite() && *x < 0.0));
        }
    }

    #[test]
    fn recorded_old_logprobs_are_used_and_equal_ones_update_as_recomputed() {
        let sample = |i: u32, advantage: f32| TrainSample {
            prompt: (1..4 + i).collect(),
            completion: vec![6 + i, 9, 11 + i],
            advantage,
            local: i.is_multiple_of(2),
            old_logprobs: None,
        };
        let plain: Vec<TrainSample> = (0..6u32)
            .map(|i| sample(i, if i % 2 == 0 { 1.0 } else { -1.0 }))
            .collect();
        let start = model();
        let refs: Vec<&TrainSample> = plain.iter().collect();
        // The batches the update's own pass forms (products over several rows may round
        // differently from single-row ones in the last place).
        let computed = host_logprobs(&start.valid(), &refs, 3, false);
        let with = |old: &dyn Fn(usize) -> Option<Vec<f32>>| -> Vec<TrainSample> {
            plain
                .iter()
                .enumerate()
                .map(|(i, s)| TrainSample {
                    old_logprobs: old(i),
                    ..s.clone()
                })
                .collect()
        };
        let loss = LossConfig::default();
        let settings = UpdateSettings {
            loss: &loss,
            epochs: 2,
            minibatch_size: 3,
            learning_rate: 1e-2,
            max_grad_norm: 1.0,
            shards: 1,
        };
        let after = |samples: &[TrainSample]| -> Vec<Vec<f32>> {
            let mut optim = AdamWConfig::new().init::<B, Transformer<B>>();
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            let (model, _) = ppo_update(start.clone(), &mut optim, None, samples, &settings, &mut rng);
            host_logprobs(&model.valid(), &refs, 1, false)
        };
        let recomputed = after(&plain);
        // The log-probs the update's pass gives, recorded, and some recorded with the wrong
        // length (recomputed): the same update.
        assert_eq!(after(&with(&|i| Some(computed[i].clone()))), recomputed);
        assert_eq!(
            after(&with(&|i| (i % 2 == 0)
                .then(|| computed[i].clone())
                .or(Some(vec![0.0])))),
            recomputed
        );
        // Recorded log-probs that differ are what the ratios are taken against.
        let shifted = after(&with(&|i| Some(computed[i].iter().map(|x| x - 0.5).collect())));
        assert_ne!(shifted, recomputed);
    }

    #[test]
    fn length_buckets_cover_every_index_once() {
        let lengths: Vec<usize> = (0..203).map(|i| (i * 37) % 101).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let batches = length_bucketed(&lengths, 8, &mut rng);
        let mut seen: Vec<usize> = batches.concat();
        seen.sort_unstable();
        assert_eq!(seen, (0..203).collect::<Vec<_>>());
        assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= 8));
        // Sorting inside windows keeps each minibatch's spread well below the whole range's.
        let spread: usize = batches
            .iter()
            .map(|b| {
                b.iter().map(|&i| lengths[i]).max().unwrap() - b.iter().map(|&i| lengths[i]).min().unwrap()
            })
            .sum::<usize>()
            / batches.len();
        assert!(spread < 40, "mean spread {spread}");
    }

    #[test]
    fn gradient_clipping_caps_the_norm() {
        let model = model();
        let sample = TrainSample {
            prompt: vec![1, 2],
            completion: vec![5, 6],
            advantage: 1.0,
            local: false,
            old_logprobs: None,
        };
        let out = completion_logprobs(&model, &[(sample.prompt.clone(), sample.completion.clone())]);
        let loss = (out.logprobs * out.mask).sum().neg().mul_scalar(100.0);
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let norm = grad_norm(&model, &grads);
        assert!(norm > 1.0, "{norm}");
        scale_grads(&model, &mut grads, (1.0 / norm) as f32);
        assert!((grad_norm(&model, &grads) - 1.0).abs() < 1e-3);
    }
}
