//! Batched autoregressive generation with a KV cache: greedy, temperature and top-p sampling,
//! stop ids, and the log-probability of every sampled token.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::cache::KvCache;
use crate::model::Transformer;

/// How tokens are chosen during generation (runtime options, apart from the model config).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    /// Most tokens generated per prompt (the stop token included).
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 (or below) means greedy decoding.
    pub temperature: f32,
    /// Nucleus sampling: sample among the most likely tokens whose probabilities (at the
    /// sampling temperature) add up to at least `top_p`; 1 disables it.
    pub top_p: f32,
}

impl SamplingConfig {
    /// Greedy decoding of at most `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            temperature: 0.0,
            top_p: 1.0,
        }
    }

    /// Plain sampling at `temperature`, no nucleus cut.
    pub fn sampled(max_new_tokens: usize, temperature: f32) -> Self {
        Self {
            max_new_tokens,
            temperature,
            top_p: 1.0,
        }
    }

    fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

impl Default for SamplingConfig {
    /// 256 tokens, temperature 1, no nucleus cut: the rollout setting of the RL loop.
    fn default() -> Self {
        Self::sampled(256, 1.0)
    }
}

/// The completion of one prompt.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Generation {
    /// Generated token ids; when `finished`, the last one is the stop id.
    pub tokens: Vec<u32>,
    /// Log-probability of each generated token under the model's own distribution, that is
    /// `log_softmax(logits)` before temperature and top-p are applied: the same quantity
    /// [`crate::completion_logprobs`] computes by teacher forcing, as the PPO ratio requires.
    pub logprobs: Vec<f32>,
    /// True when generation stopped on a stop id, false when it ran out of length
    /// (`max_new_tokens` or the model's position limit).
    pub finished: bool,
}

/// Decides which tokens a row may emit next (guided decoding). The model's distribution is
/// renormalised over the allowed tokens; the log-probability recorded for a token stays the
/// model's own, over the whole vocabulary.
pub trait TokenConstraint {
    /// Whether the row may emit `candidate` after the tokens it has `generated`.
    fn allows(&mut self, generated: &[u32], candidate: u32) -> bool;
}

/// A row's constraint, or `None` for a free row.
pub type RowConstraint<'a> = Option<Box<dyn TokenConstraint + 'a>>;

/// Generates a completion for each prompt, all in one batch.
///
/// Prompts may differ in length (they are left-padded internally). Each step runs only the rows
/// still generating: a row that emits one of `stop_ids` or reaches its length limit leaves the
/// batch and its cache rows are dropped. Sampling draws from `rng`, so a fixed seed gives the
/// same completions on the same backend; greedy decoding does not touch `rng`.
///
/// # Panics
///
/// If a prompt is empty (start it with a BOS token or a chat-template prefix instead).
pub fn generate<B: Backend>(
    model: &Transformer<B>,
    prompts: &[Vec<u32>],
    sampling: &SamplingConfig,
    stop_ids: &[u32],
    rng: &mut ChaCha8Rng,
) -> Vec<Generation> {
    generate_inner(model, prompts, sampling, stop_ids, None, rng)
}

/// [`generate`] with a [`TokenConstraint`] per prompt (`constraints[i]` for prompt `i`, `None`
/// for a free row). A constrained row draws only among the tokens its constraint allows:
/// greedy decoding takes the most likely allowed token, sampling renormalises over them
/// (temperature and top-p then apply as usual). A row whose constraint allows nothing emits
/// `stop_ids[0]` and ends. Constrained rows bring their log-probabilities to the host at every
/// step.
///
/// # Panics
///
/// If `constraints` and `prompts` differ in length, or a prompt is empty.
pub fn generate_constrained<B: Backend>(
    model: &Transformer<B>,
    prompts: &[Vec<u32>],
    sampling: &SamplingConfig,
    stop_ids: &[u32],
    constraints: &mut [RowConstraint<'_>],
    rng: &mut ChaCha8Rng,
) -> Vec<Generation> {
    assert_eq!(
        constraints.len(),
        prompts.len(),
        "one constraint (or None) per prompt"
    );
    generate_inner(model, prompts, sampling, stop_ids, Some(constraints), rng)
}

fn generate_inner<B: Backend>(
    model: &Transformer<B>,
    prompts: &[Vec<u32>],
    sampling: &SamplingConfig,
    stop_ids: &[u32],
    mut constraints: Option<&mut [RowConstraint<'_>]>,
    rng: &mut ChaCha8Rng,
) -> Vec<Generation> {
    assert!(
        prompts.iter().all(|p| !p.is_empty()),
        "generate: every prompt needs at least one token"
    );
    let _span = tracing::debug_span!("generate", batch = prompts.len()).entered();
    let mut out: Vec<Generation> = prompts
        .iter()
        .map(|_| Generation {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            finished: false,
        })
        .collect();
    let budgets: Vec<usize> = prompts
        .iter()
        .map(|p| {
            sampling
                .max_new_tokens
                .min(model.max_positions().saturating_sub(p.len()))
        })
        .collect();
    let mut active: Vec<usize> = (0..prompts.len()).filter(|&row| budgets[row] > 0).collect();
    if active.is_empty() {
        return out;
    }
    let device = model.device();
    // Prefill: the prompts of the active rows, left-padded to a common length.
    let width = active.iter().map(|&row| prompts[row].len()).max().unwrap_or(0);
    let longest = active.iter().map(|&row| budgets[row]).max().unwrap_or(0);
    let mut cache = KvCache::with_capacity(model.layers.len(), width + longest);
    let (mut tokens, mut valid, mut positions) = (Vec::new(), Vec::new(), Vec::new());
    for &row in &active {
        let prompt = &prompts[row];
        let pad = width - prompt.len();
        tokens.extend(std::iter::repeat_n(0_i64, pad).chain(prompt.iter().map(|&t| i64::from(t))));
        valid.extend((0..width).map(|j| j >= pad));
        positions.extend((0..width).map(|j| j.saturating_sub(pad) as i64));
    }
    let shape = [active.len(), width];
    let hidden = model.forward_cached(
        Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, shape), &device),
        &valid,
        Tensor::<B, 2, Int>::from_data(TensorData::new(positions, shape), &device),
        &mut cache,
    );
    let last = hidden.slice([0..active.len(), width - 1..width]);
    let mut logits = model.lm_logits(last);
    let mut next_position: Vec<usize> = prompts.iter().map(Vec::len).collect();

    loop {
        let rows = active.len();
        let vocab = logits.dims()[2];
        let logprobs = log_softmax(logits.reshape([rows, vocab]), 1);
        let picks = match constraints.as_deref_mut() {
            None => choose(logprobs, sampling, rng),
            Some(constraints) => {
                let generated: Vec<&[u32]> = active.iter().map(|&row| out[row].tokens.as_slice()).collect();
                let rows = active.iter().copied();
                choose_constrained(logprobs, sampling, stop_ids, &generated, rows, constraints, rng)
            }
        };
        let mut keep = Vec::with_capacity(rows);
        for (slot, (&row, (token, logprob))) in active.iter().zip(picks).enumerate() {
            let generation = &mut out[row];
            generation.tokens.push(token);
            generation.logprobs.push(logprob);
            if stop_ids.contains(&token) {
                generation.finished = true;
            } else if generation.tokens.len() < budgets[row] {
                keep.push(slot);
            }
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < rows {
            cache.retain_rows(&keep, &device);
        }
        active = keep.iter().map(|&slot| active[slot]).collect();
        let step_tokens: Vec<i64> = active
            .iter()
            .map(|&row| i64::from(*out[row].tokens.last().unwrap_or(&0)))
            .collect();
        let step_positions: Vec<i64> = active
            .iter()
            .map(|&row| {
                let position = next_position[row];
                next_position[row] += 1;
                position as i64
            })
            .collect();
        let shape = [active.len(), 1];
        let hidden = model.forward_cached(
            Tensor::from_data(TensorData::new(step_tokens, shape), &device),
            &vec![true; active.len()],
            Tensor::from_data(TensorData::new(step_positions, shape), &device),
            &mut cache,
        );
        logits = model.lm_logits(hidden);
    }
    out
}

/// Picks one token per row of `logprobs` `[rows, vocab]`; returns (token, its log-probability).
fn choose<B: Backend>(
    logprobs: Tensor<B, 2>,
    sampling: &SamplingConfig,
    rng: &mut ChaCha8Rng,
) -> Vec<(u32, f32)> {
    let [rows, vocab] = logprobs.dims();
    if sampling.is_greedy() {
        // Only two numbers per row leave the device.
        let index = logprobs.clone().argmax(1);
        let chosen = logprobs.gather(1, index.clone());
        let index = index.into_data().iter::<i64>().collect::<Vec<_>>();
        let chosen = chosen.into_data().iter::<f32>().collect::<Vec<_>>();
        return index
            .into_iter()
            .zip(chosen)
            .map(|(t, lp)| (t as u32, lp))
            .collect();
    }
    let values: Vec<f32> = logprobs.into_data().iter::<f32>().collect();
    (0..rows)
        .map(|row| {
            let row_lp = &values[row * vocab..(row + 1) * vocab];
            let token = sample_token(row_lp, sampling.temperature, sampling.top_p, rng);
            (token as u32, row_lp[token])
        })
        .collect()
}

/// [`choose`] for rows of which some are constrained: `rows` gives each row's index into
/// `constraints`, `generated` its tokens so far.
fn choose_constrained<B: Backend>(
    logprobs: Tensor<B, 2>,
    sampling: &SamplingConfig,
    stop_ids: &[u32],
    generated: &[&[u32]],
    rows: impl Iterator<Item = usize>,
    constraints: &mut [RowConstraint<'_>],
    rng: &mut ChaCha8Rng,
) -> Vec<(u32, f32)> {
    let [_, vocab] = logprobs.dims();
    let values: Vec<f32> = logprobs.into_data().iter::<f32>().collect();
    rows.enumerate()
        .map(|(slot, row)| {
            let lp = &values[slot * vocab..(slot + 1) * vocab];
            let token = match constraints[row].as_mut() {
                None if sampling.is_greedy() => argmax(lp),
                None => sample_token(lp, sampling.temperature, sampling.top_p, rng),
                Some(constraint) => {
                    let before = generated[slot];
                    let chosen = if sampling.is_greedy() {
                        // The most likely token is nearly always allowed: sort only when not.
                        let best = argmax(lp);
                        if constraint.allows(before, best as u32) {
                            Some(best)
                        } else {
                            let mut order: Vec<usize> = (0..vocab).filter(|&t| t != best).collect();
                            order.sort_unstable_by(|&a, &b| lp[b].total_cmp(&lp[a]));
                            order.into_iter().find(|&t| constraint.allows(before, t as u32))
                        }
                    } else {
                        let masked: Vec<f32> = lp
                            .iter()
                            .enumerate()
                            .map(|(t, &v)| {
                                if constraint.allows(before, t as u32) {
                                    v
                                } else {
                                    f32::NEG_INFINITY
                                }
                            })
                            .collect();
                        masked
                            .iter()
                            .any(|v| v.is_finite())
                            .then(|| sample_token(&masked, sampling.temperature, sampling.top_p, rng))
                    };
                    chosen.unwrap_or_else(|| stop_ids.first().map_or_else(|| argmax(lp), |&s| s as usize))
                }
            };
            (token as u32, lp[token])
        })
        .collect()
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Samples an index from `softmax(logprobs / temperature)` restricted to the top-p nucleus.
fn sample_token(logprobs: &[f32], temperature: f32, top_p: f32, rng: &mut ChaCha8Rng) -> usize {
    let inv_t = 1.0 / f64::from(temperature);
    let max = logprobs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = logprobs
        .iter()
        .map(|&lp| ((f64::from(lp - max)) * inv_t).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    if top_p < 1.0 {
        let mut order: Vec<usize> = (0..weights.len()).collect();
        order.sort_unstable_by(|&a, &b| weights[b].total_cmp(&weights[a]));
        let target = f64::from(top_p.max(0.0)) * total;
        let mut mass = 0.0;
        let mut cut = order.len();
        for (rank, &index) in order.iter().enumerate() {
            mass += weights[index];
            if mass >= target {
                cut = rank + 1;
                break;
            }
        }
        let nucleus = &order[..cut];
        let nucleus_total: f64 = nucleus.iter().map(|&i| weights[i]).sum();
        return draw(nucleus.iter().map(|&i| (i, weights[i])), nucleus_total, rng);
    }
    draw(weights.iter().copied().enumerate(), total, rng)
}

fn draw(weights: impl Iterator<Item = (usize, f64)>, total: f64, rng: &mut ChaCha8Rng) -> usize {
    let mut remaining = rng.random::<f64>() * total;
    let mut last = 0;
    for (index, weight) in weights {
        if weight <= 0.0 {
            continue;
        }
        last = index;
        remaining -= weight;
        if remaining < 0.0 {
            return index;
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TransformerConfig;
    use crate::logprobs::completion_logprobs;
    use crate::{TestAutodiffBackend, TestBackend};
    use burn::module::AutodiffModule;
    use burn::tensor::Bool;
    use rand::SeedableRng;

    type B = TestBackend;

    fn model(seed: u64) -> Transformer<B> {
        TransformerConfig::for_tests().init_seeded::<B>(seed, &Default::default())
    }

    fn prompts() -> Vec<Vec<u32>> {
        vec![vec![3, 14, 15, 9, 2, 6, 5], vec![7], vec![1, 8, 28]]
    }

    /// Greedy decoding by running the whole sequence through the model at every step.
    fn greedy_without_cache(model: &Transformer<B>, prompt: &[u32], steps: usize) -> Vec<u32> {
        let device = Default::default();
        let mut seq: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
        let mut out = Vec::new();
        for _ in 0..steps {
            let n = seq.len();
            let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(seq.clone(), [1, n]), &device);
            let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(vec![true; n], [1, n]), &device);
            let logits = model.forward(tokens, mask);
            let vocab = logits.dims()[2];
            let last = logits.slice([0..1, n - 1..n, 0..vocab]).reshape([vocab]);
            let next = last.argmax(0).into_data().iter::<i64>().next().unwrap_or(0);
            out.push(next as u32);
            seq.push(next);
        }
        out
    }

    #[test]
    fn cached_greedy_matches_full_recomputation() {
        let model = model(21);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let generated = generate(&model, &prompts(), &SamplingConfig::greedy(12), &[], &mut rng);
        for (prompt, generation) in prompts().iter().zip(&generated) {
            assert_eq!(generation.tokens, greedy_without_cache(&model, prompt, 12));
            assert_eq!(generation.logprobs.len(), 12);
            assert!(!generation.finished);
        }
    }

    #[test]
    fn batched_generation_matches_one_prompt_at_a_time() {
        let model = model(4);
        let sampling = SamplingConfig::greedy(9);
        let batch = generate(
            &model,
            &prompts(),
            &sampling,
            &[],
            &mut ChaCha8Rng::seed_from_u64(0),
        );
        for (prompt, together) in prompts().iter().zip(&batch) {
            let alone = generate(
                &model,
                std::slice::from_ref(prompt),
                &sampling,
                &[],
                &mut ChaCha8Rng::seed_from_u64(0),
            );
            assert_eq!(alone[0].tokens, together.tokens);
        }
    }

    /// The first sampled token's log-prob, from a padded batched prefill through the cache,
    /// against the log-softmax of each prompt's own forward pass.
    #[test]
    fn first_sampled_logprob_matches_each_prompts_forward_pass() {
        let model = model(8);
        let sampling = SamplingConfig {
            max_new_tokens: 1,
            temperature: 0.8,
            top_p: 0.95,
        };
        let generated = generate(
            &model,
            &prompts(),
            &sampling,
            &[],
            &mut ChaCha8Rng::seed_from_u64(3),
        );
        let device = Default::default();
        for (row, prompt) in prompts().iter().enumerate() {
            let ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
            let len = ids.len();
            let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, len]), &device);
            let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(vec![true; len], [1, len]), &device);
            let logprobs: Vec<f32> = log_softmax(model.forward(tokens, mask).slice([0..1, len - 1..len]), 2)
                .into_data()
                .iter::<f32>()
                .collect();
            let want = logprobs[generated[row].tokens[0] as usize];
            let got = generated[row].logprobs[0];
            assert!(
                (got - want).abs() < 1e-3,
                "row {row}: sampled {got}, forward {want}"
            );
        }
    }

    #[test]
    fn sampled_logprobs_match_teacher_forcing() {
        let model = model(8);
        let sampling = SamplingConfig {
            max_new_tokens: 10,
            temperature: 0.8,
            top_p: 0.95,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let generated = generate(&model, &prompts(), &sampling, &[5, 6], &mut rng);
        let batch: Vec<(Vec<u32>, Vec<u32>)> = prompts()
            .into_iter()
            .zip(generated.iter().map(|g| g.tokens.clone()))
            .collect();
        // Teacher forcing under autodiff, as the loss computes it.
        let trained =
            TransformerConfig::for_tests().init_seeded::<TestAutodiffBackend>(8, &Default::default());
        let forced = completion_logprobs(&trained, &batch);
        let width = forced.logprobs.dims()[1];
        let values: Vec<f32> = forced.logprobs.inner().into_data().iter::<f32>().collect();
        let mask: Vec<f32> = forced.mask.inner().into_data().iter::<f32>().collect();
        for (row, generation) in generated.iter().enumerate() {
            for (j, &lp) in generation.logprobs.iter().enumerate() {
                let forced_lp = values[row * width + j];
                assert!(
                    (lp - forced_lp).abs() < 1e-4,
                    "row {row} token {j}: {lp} vs {forced_lp}"
                );
                assert!((mask[row * width + j] - 1.0).abs() < 1e-6);
            }
            for j in generation.logprobs.len()..width {
                assert!(mask[row * width + j].abs() < 1e-6);
            }
        }
        // The non-autodiff copy agrees too.
        let frozen = completion_logprobs(&trained.valid(), &batch);
        let frozen: Vec<f32> = frozen.logprobs.into_data().iter::<f32>().collect();
        assert!(frozen.iter().zip(&values).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    /// Allows only odd token ids, and the stop id 6 once three tokens are out.
    struct OddThenStop;

    impl TokenConstraint for OddThenStop {
        fn allows(&mut self, generated: &[u32], candidate: u32) -> bool {
            if candidate == 6 {
                generated.len() >= 3
            } else {
                candidate % 2 == 1
            }
        }
    }

    #[test]
    fn constrained_rows_keep_to_their_constraint_and_free_rows_are_unchanged() {
        let model = model(8);
        for sampling in [SamplingConfig::greedy(10), SamplingConfig::sampled(10, 1.0)] {
            let free = generate(
                &model,
                &prompts(),
                &sampling,
                &[6],
                &mut ChaCha8Rng::seed_from_u64(3),
            );
            let mut constraints: Vec<RowConstraint<'_>> = prompts().iter().map(|_| None).collect();
            constraints[0] = Some(Box::new(OddThenStop));
            let guided = generate_constrained(
                &model,
                &prompts(),
                &sampling,
                &[6],
                &mut constraints,
                &mut ChaCha8Rng::seed_from_u64(3),
            );
            let row = &guided[0];
            let body = if row.finished {
                &row.tokens[..row.tokens.len() - 1]
            } else {
                &row.tokens[..]
            };
            assert!(body.iter().all(|t| t % 2 == 1), "{:?}", row.tokens);
            assert!(!row.finished || row.tokens.len() >= 4);
            if sampling.is_greedy() {
                // Rows are independent under greedy decoding: the free ones match a free batch.
                assert_eq!(guided[1..], free[1..]);
            }
            // The recorded log-probs stay the model's own, as teacher forcing computes them.
            let batch = vec![(prompts()[0].clone(), row.tokens.clone())];
            let forced = completion_logprobs(&model, &batch);
            let values: Vec<f32> = forced.logprobs.into_data().iter::<f32>().collect();
            for (j, lp) in row.logprobs.iter().enumerate() {
                assert!((lp - values[j]).abs() < 1e-4, "token {j}: {lp} vs {}", values[j]);
            }
        }
    }

    #[test]
    fn same_seed_same_samples_and_stop_ids_end_rows() {
        let model = model(2);
        let sampling = SamplingConfig::sampled(8, 1.0);
        let a = generate(
            &model,
            &prompts(),
            &sampling,
            &[],
            &mut ChaCha8Rng::seed_from_u64(9),
        );
        let b = generate(
            &model,
            &prompts(),
            &sampling,
            &[],
            &mut ChaCha8Rng::seed_from_u64(9),
        );
        assert_eq!(a, b);
        // Stopping on the first sampled token of row 0 ends that row after one token.
        let stop = a[0].tokens[0];
        let c = generate(
            &model,
            &prompts(),
            &sampling,
            &[stop],
            &mut ChaCha8Rng::seed_from_u64(9),
        );
        assert_eq!(c[0].tokens, vec![stop]);
        assert!(c[0].finished);
        for generation in &c {
            let stopped = generation.tokens.iter().position(|&t| t == stop);
            match stopped {
                Some(at) => assert!(generation.finished && at + 1 == generation.tokens.len()),
                None => assert!(!generation.finished && generation.tokens.len() == 8),
            }
        }
    }

    #[test]
    fn length_is_capped_by_the_position_table() {
        let model = model(1);
        let prompt = vec![vec![1_u32; 90]];
        let out = generate(
            &model,
            &prompt,
            &SamplingConfig::greedy(50),
            &[],
            &mut ChaCha8Rng::seed_from_u64(0),
        );
        assert_eq!(out[0].tokens.len(), 96 - 90);
        let none = generate(
            &model,
            &prompt,
            &SamplingConfig::greedy(0),
            &[],
            &mut ChaCha8Rng::seed_from_u64(0),
        );
        assert!(none[0].tokens.is_empty());
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let logprobs: Vec<f32> = [0.6_f32, 0.3, 0.05, 0.05].iter().map(|p| p.ln()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..200 {
            let token = sample_token(&logprobs, 1.0, 0.8, &mut rng);
            assert!(token < 2, "sampled {token} outside the 0.8 nucleus");
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let logprobs: Vec<f32> = [0.7_f32, 0.2, 0.1].iter().map(|p| p.ln()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut counts = [0_usize; 3];
        for _ in 0..4000 {
            counts[sample_token(&logprobs, 1.0, 1.0, &mut rng)] += 1;
        }
        let freq = counts[0] as f64 / 4000.0;
        assert!((freq - 0.7).abs() < 0.04, "frequency {freq}");
    }
}
