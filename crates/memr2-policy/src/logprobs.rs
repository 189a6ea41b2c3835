//! Teacher-forced log-probabilities and entropies of completions (differentiable), and the SFT
//! loss built on them.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::fused::token_logprobs;
use crate::model::Transformer;

/// Per-token statistics of a batch of completions, all `[batch, max_completion_len]`.
#[derive(Clone, Debug)]
pub struct CompletionLogProbs<B: Backend> {
    /// `log p(token | prefix)` under the untempered model; 0 on padding.
    pub logprobs: Tensor<B, 2>,
    /// Entropy of the model's next-token distribution at each completion position; 0 on padding.
    pub entropy: Tensor<B, 2>,
    /// 1 on real completion tokens, 0 on padding.
    pub mask: Tensor<B, 2>,
}

/// Log-probabilities of the given completions, each following its prompt.
///
/// `batch` holds `(prompt ids, completion ids)` pairs. Rows are laid out with the prompts
/// left-padded so every completion starts in the same column, then right-padded; only the
/// completion columns go through the LM head. Gradients flow when `B` is an autodiff backend.
///
/// # Panics
///
/// If a prompt is empty (the first completion token would have no context).
pub fn completion_logprobs<B: Backend>(
    model: &Transformer<B>,
    batch: &[(Vec<u32>, Vec<u32>)],
) -> CompletionLogProbs<B> {
    assert!(
        batch.iter().all(|(p, _)| !p.is_empty()),
        "completion_logprobs: empty prompt"
    );
    let _span = tracing::debug_span!("completion_logprobs", batch = batch.len()).entered();
    let device = model.device();
    let rows = batch.len();
    let prompt_width = batch.iter().map(|(p, _)| p.len()).max().unwrap_or(1);
    let completion_width = batch.iter().map(|(_, c)| c.len()).max().unwrap_or(0).max(1);
    // The last completion token is only a target, never an input.
    let width = prompt_width + completion_width - 1;
    let mut tokens = Vec::with_capacity(rows * width);
    let mut valid = Vec::with_capacity(rows * width);
    let mut targets = Vec::with_capacity(rows * completion_width);
    let mut mask = Vec::with_capacity(rows * completion_width);
    for (prompt, completion) in batch {
        let pad = prompt_width - prompt.len();
        let row: Vec<i64> = std::iter::repeat_n(0, pad)
            .chain(prompt.iter().chain(completion).map(|&t| i64::from(t)))
            .chain(std::iter::repeat(0))
            .take(width)
            .collect();
        tokens.extend(row);
        valid.extend((0..width).map(|j| j >= pad && j < prompt_width + completion.len()));
        for j in 0..completion_width {
            targets.push(completion.get(j).copied().unwrap_or(0));
            mask.push(if j < completion.len() { 1.0_f32 } else { 0.0 });
        }
    }
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [rows, width]), &device);
    let valid = Tensor::<B, 2, Bool>::from_data(TensorData::new(valid, [rows, width]), &device);
    let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [rows, completion_width]), &device);

    let hidden = model.forward_hidden(tokens, valid);
    let start = prompt_width - 1;
    let hidden = hidden.slice([0..rows, start..start + completion_width]);
    let both = token_logprobs(model.lm_logits(hidden), &targets);
    let logprobs = both
        .clone()
        .slice([0..rows, 0..completion_width, 0..1])
        .reshape([rows, completion_width]);
    let entropy = both
        .slice([0..rows, 0..completion_width, 1..2])
        .reshape([rows, completion_width]);
    CompletionLogProbs {
        logprobs: logprobs * mask.clone(),
        entropy: entropy * mask.clone(),
        mask,
    }
}

/// Supervised fine-tuning loss: mean negative log-likelihood over all completion tokens of
/// the batch, `[1]`.
pub fn sft_loss<B: Backend>(model: &Transformer<B>, batch: &[(Vec<u32>, Vec<u32>)]) -> Tensor<B, 1> {
    let out = completion_logprobs(model, batch);
    let count = out.mask.clone().sum().clamp_min(1.0);
    out.logprobs.sum().neg() / count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestAutodiffBackend;
    use crate::config::TransformerConfig;
    use crate::optim::AdamWConfig;
    use burn::optim::{GradientsParams, Optimizer};

    type B = TestAutodiffBackend;

    fn batch() -> Vec<(Vec<u32>, Vec<u32>)> {
        vec![
            (vec![1, 2, 3, 4], vec![10, 11, 12]),
            (vec![5], vec![20, 21, 22, 23, 24]),
            (vec![7, 8], vec![30]),
        ]
    }

    #[test]
    fn shapes_mask_and_entropy_bounds() {
        let model = TransformerConfig::for_tests().init_seeded::<B>(1, &Default::default());
        let out = completion_logprobs(&model, &batch());
        assert_eq!(out.logprobs.dims(), [3, 5]);
        let mask: Vec<f32> = out.mask.clone().into_data().iter::<f32>().collect();
        let expected = [[1., 1., 1., 0., 0.], [1., 1., 1., 1., 1.], [1., 0., 0., 0., 0.]];
        for (got, want) in mask.iter().zip(expected.iter().flatten()) {
            assert!((got - want).abs() < 1e-6);
        }
        let max_entropy = (61.0_f32).ln();
        let entropy: Vec<f32> = out.entropy.into_data().iter::<f32>().collect();
        let logprobs: Vec<f32> = out.logprobs.into_data().iter::<f32>().collect();
        for ((h, lp), m) in entropy.iter().zip(&logprobs).zip(&mask) {
            assert!(*h >= -1e-5 && *h <= max_entropy + 1e-4);
            assert!(*lp <= 1e-6);
            if *m < 0.5 {
                assert!(h.abs() < 1e-6 && lp.abs() < 1e-6);
            }
        }
    }

    #[test]
    fn adamw_steps_lower_the_loss() {
        let mut model = TransformerConfig::for_tests().init_seeded::<B>(7, &Default::default());
        let mut optim = AdamWConfig::new().init();
        let batch = batch();
        let loss_of = |model: &Transformer<B>| sft_loss(model, &batch).into_scalar();
        let before = loss_of(&model);
        for _ in 0..8 {
            let loss = sft_loss(&model, &batch);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(3e-3, model, grads);
        }
        let after = loss_of(&model);
        assert!(after < before - 0.1, "loss {before} -> {after}");
    }
}
