//! The Llama / Qwen2 decoder: embedding, pre-norm blocks of grouped-query attention and SwiGLU,
//! final norm and LM head. Field names are HF checkpoint keys (without the `model.` prefix).

use burn::module::{Initializer, Module};
use burn::nn::{Embedding, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::cache::{KvCache, LayerCache};
use crate::config::TransformerConfig;
use crate::fused::{masked_attention, matmul, swiglu};
use crate::norm::RmsNorm;
use crate::rope::{RopeAngles, RotaryEmbedding};

fn init_linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    bias: bool,
    init: &Initializer,
    device: &B::Device,
) -> Linear<B> {
    Linear {
        weight: init.init_with([d_in, d_out], Some(d_in), Some(d_out), device),
        bias: bias.then(|| Initializer::Zeros.init([d_out], device)),
    }
}

/// Grouped-query self-attention with rotary positions.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[hidden, heads * head_dim]`, with a bias in Qwen2.
    pub q_proj: Linear<B>,
    /// `[hidden, kv_heads * head_dim]`.
    pub k_proj: Linear<B>,
    /// `[hidden, kv_heads * head_dim]`.
    pub v_proj: Linear<B>,
    /// `[heads * head_dim, hidden]`.
    pub o_proj: Linear<B>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl<B: Backend> Attention<B> {
    fn new(config: &TransformerConfig, device: &B::Device) -> Self {
        let init = config.initializer();
        let (d, hd) = (config.hidden_size, config.head_dim());
        let (h, kv) = (config.num_attention_heads, config.num_kv_heads());
        let qkv_bias = config.qkv_bias();
        Self {
            q_proj: init_linear(d, h * hd, qkv_bias, &init, device),
            k_proj: init_linear(d, kv * hd, qkv_bias, &init, device),
            v_proj: init_linear(d, kv * hd, qkv_bias, &init, device),
            o_proj: init_linear(h * hd, d, config.o_bias(), &init, device),
            num_heads: h,
            num_kv_heads: kv,
            head_dim: hd,
        }
    }

    /// `x` `[batch, seq, hidden]`, `masked` `[batch, 1, seq, keys]` (true = may not attend);
    /// with a cache, the new keys are appended to the layer's past keys first.
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        masked: Tensor<B, 4, Bool>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        let (h, kv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        // Rotated and attended in the projections' own [batch, seq, heads, hd] layout.
        let split = |t: Tensor<B, 3>, n: usize| t.reshape([batch, seq, n, hd]);
        let q = rope.apply_query(split(rows_linear(&self.q_proj, x.clone()), h));
        let k = rope.apply_key(split(rows_linear(&self.k_proj, x.clone()), kv));
        let v = split(rows_linear(&self.v_proj, x), kv);
        let (k, v) = match cache {
            Some(cache) => cache.append(k, v),
            None => (k, v),
        };
        // The queries come scaled from the rotation.
        let out = masked_attention(q, k, v, masked);
        rows_linear(&self.o_proj, out.reshape([batch, seq, h * hd]))
    }
}

/// `linear` applied to `x` `[batch, seq, in]` as one `[batch * seq, in]` matrix: one product
/// (and one for the weight's gradient) where burn would multiply each sequence of the batch
/// on its own, which at a decoding step (one row per sequence) is `batch` products of a
/// single row.
fn rows_linear<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, seq, d] = x.dims();
    let y = matmul(x.reshape([batch * seq, d]), linear.weight.val());
    let y = match &linear.bias {
        Some(bias) => y + bias.val().unsqueeze(),
        None => y,
    };
    let out = y.dims()[1];
    y.reshape([batch, seq, out])
}

/// SwiGLU feed-forward: `down_proj(silu(gate_proj(x)) * up_proj(x))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[hidden, intermediate]`.
    pub gate_proj: Linear<B>,
    /// `[hidden, intermediate]`.
    pub up_proj: Linear<B>,
    /// `[intermediate, hidden]`.
    pub down_proj: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    fn new(config: &TransformerConfig, device: &B::Device) -> Self {
        let init = config.initializer();
        let (d, ff) = (config.hidden_size, config.intermediate_size);
        Self {
            gate_proj: init_linear(d, ff, false, &init, device),
            up_proj: init_linear(d, ff, false, &init, device),
            down_proj: init_linear(ff, d, false, &init, device),
        }
    }

    /// `[batch, seq, hidden]` to the same shape.
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        rows_linear(
            &self.down_proj,
            swiglu(
                rows_linear(&self.gate_proj, x.clone()),
                rows_linear(&self.up_proj, x),
            ),
        )
    }
}

/// One pre-norm decoder block.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// Attention sub-block.
    pub self_attn: Attention<B>,
    /// Feed-forward sub-block.
    pub mlp: Mlp<B>,
    /// Norm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Norm before the feed-forward.
    pub post_attention_layernorm: RmsNorm<B>,
}

/// The decoder-only language model.
///
/// Build one with [`TransformerConfig::init`] (fresh weights) or [`crate::load_hf`] (an HF
/// checkpoint). For frozen copies (reference policy, answerer) clone the module, or call
/// `.valid()` on an autodiff model to get the same weights on the inner backend.
#[derive(Module, Debug)]
pub struct Transformer<B: Backend> {
    /// Token embedding `[vocab, hidden]`.
    pub embed_tokens: Embedding<B>,
    /// Decoder blocks.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
    /// Output projection `[hidden, vocab]`; `None` when tied to `embed_tokens`.
    pub lm_head: Option<Linear<B>>,
    rope: RotaryEmbedding<B>,
    #[module(skip)]
    config: TransformerConfig,
}

impl<B: Backend> Transformer<B> {
    pub(crate) fn new(config: &TransformerConfig, device: &B::Device) -> Self {
        let init = config.initializer();
        let (v, d) = (config.vocab_size, config.hidden_size);
        let layers = (0..config.num_hidden_layers)
            .map(|_| DecoderLayer {
                self_attn: Attention::new(config, device),
                mlp: Mlp::new(config, device),
                input_layernorm: RmsNorm::new(d, config.rms_norm_eps, device),
                post_attention_layernorm: RmsNorm::new(d, config.rms_norm_eps, device),
            })
            .collect();
        Self {
            embed_tokens: Embedding {
                weight: init.init([v, d], device),
            },
            layers,
            norm: RmsNorm::new(d, config.rms_norm_eps, device),
            lm_head: (!config.tie_word_embeddings).then(|| init_linear(d, v, false, &init, device)),
            rope: RotaryEmbedding::new(
                config.head_dim(),
                config.max_position_embeddings,
                config.rope_base(),
                device,
            ),
            config: config.clone(),
        }
    }

    /// The architecture this model was built from.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    /// Longest sequence (prompt plus completion) the model can process.
    pub fn max_positions(&self) -> usize {
        self.rope.max_positions()
    }

    /// The device the weights live on.
    pub fn device(&self) -> B::Device {
        self.embed_tokens.weight.device()
    }

    /// Logits `[batch, seq, vocab]` of `tokens` `[batch, seq]`.
    ///
    /// `attention_mask` `[batch, seq]` is true on real tokens and false on padding, which may sit
    /// on the left or the right of each row. Positions count real tokens only, so padding does
    /// not shift them; attention is causal and never looks at padding. Logits at padded
    /// positions are meaningless.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>, attention_mask: Tensor<B, 2, Bool>) -> Tensor<B, 3> {
        self.lm_logits(self.forward_hidden(tokens, attention_mask))
    }

    /// Final hidden states `[batch, seq, hidden]` (after the last norm, before the LM head).
    pub fn forward_hidden(
        &self,
        tokens: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Bool>,
    ) -> Tensor<B, 3> {
        let positions = positions_from_mask(attention_mask.clone());
        let seq = tokens.dims()[1];
        let masked = attention_masked(attention_mask, 0, seq);
        self.run_layers(tokens, positions, masked, None)
    }

    /// Incremental forward: appends `tokens` `[batch, new]` (real where `valid`, `batch * new`
    /// flags in row-major order, at `positions` `[batch, new]`) to `cache` and returns their
    /// hidden states `[batch, new, hidden]`. Starting from an empty cache with whole prompts is
    /// the prefill.
    pub fn forward_cached(
        &self,
        tokens: Tensor<B, 2, Int>,
        valid: &[bool],
        positions: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let past = cache.len();
        let [batch, seq] = tokens.dims();
        let key_valid = cache.extend_valid(batch, valid, &tokens.device());
        let masked = attention_masked(key_valid, past, seq);
        self.run_layers(tokens, positions, masked, Some(cache))
    }

    /// Applies the LM head to hidden states `[batch, seq, hidden]`, giving `[batch, seq, vocab]`.
    pub fn lm_logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => rows_linear(head, hidden),
            None => {
                let [batch, seq, d] = hidden.dims();
                let weight = self.embed_tokens.weight.val().transpose();
                let vocab = weight.dims()[1];
                matmul(hidden.reshape([batch * seq, d]), weight).reshape([batch, seq, vocab])
            }
        }
    }

    /// Runs the blocks; `positions` `[batch, seq]`, `masked` `[batch, 1, seq, keys]`.
    pub(crate) fn run_layers(
        &self,
        tokens: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        masked: Tensor<B, 4, Bool>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let (heads, kv_heads) = (self.config.num_attention_heads, self.config.num_kv_heads());
        // Attention's 1 / sqrt(head_dim) rides on the query rotation.
        let scale = (self.config.head_dim() as f64).powf(-0.5);
        let rope = self.rope.angles_scaled(positions, heads, kv_heads, scale);
        let mut x = self.embed_tokens.forward(tokens);
        for (index, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| c.layer_mut(index));
            let h = layer.self_attn.forward(
                layer.input_layernorm.forward(x.clone()),
                &rope,
                masked.clone(),
                slot,
            );
            x = x + h;
            x = x.clone() + layer.mlp.forward(layer.post_attention_layernorm.forward(x));
        }
        self.norm.forward(x)
    }
}

/// Positions `[batch, seq]` that count only real tokens: `cumsum(mask) - 1`, at least 0.
pub fn positions_from_mask<B: Backend>(attention_mask: Tensor<B, 2, Bool>) -> Tensor<B, 2, Int> {
    (attention_mask.int().cumsum(1) - 1).clamp_min(0)
}

/// Which keys each query may not attend to, `[batch, 1, queries, keys]` (true = masked), for
/// `queries` new tokens following `past` cached ones; `key_valid` `[batch, keys]` marks real keys.
///
/// A query sees real keys at or before its own position, and always itself, so padded queries
/// never produce an all-masked row.
pub(crate) fn attention_masked<B: Backend>(
    key_valid: Tensor<B, 2, Bool>,
    past: usize,
    queries: usize,
) -> Tensor<B, 4, Bool> {
    let [batch, keys] = key_valid.dims();
    let device = key_valid.device();
    if crate::fused::on_cpu::<B>() {
        // Built on the host: the composition below broadcasts both patterns over the batch
        // and flex runs broadcast boolean operations element by element through a strided
        // index, about 6% of a training step of the default preset's model.
        let valid: Vec<bool> = key_valid.into_data().iter::<bool>().collect();
        let mut masked = Vec::with_capacity(batch * queries * keys);
        // `keys` is `past + queries`, so with no key there is no query either.
        for valid in valid.chunks_exact(keys.max(1)) {
            for i in 0..queries {
                let own = past + i;
                masked.extend((0..keys).map(|j| j != own && !(j < own && valid[j])));
            }
        }
        return Tensor::from_data(TensorData::new(masked, [batch, 1, queries, keys]), &device);
    }
    attention_masked_composed(key_valid, past, queries)
}

/// [`attention_masked`] from tensor operations, for the backends that keep the mask on their
/// device.
fn attention_masked_composed<B: Backend>(
    key_valid: Tensor<B, 2, Bool>,
    past: usize,
    queries: usize,
) -> Tensor<B, 4, Bool> {
    let [batch, keys] = key_valid.dims();
    let device = key_valid.device();
    let mut causal = Vec::with_capacity(queries * keys);
    let mut diagonal = Vec::with_capacity(queries * keys);
    for i in 0..queries {
        for j in 0..keys {
            causal.push(j <= past + i);
            diagonal.push(j == past + i);
        }
    }
    let pattern = |values: Vec<bool>| {
        Tensor::<B, 2, Bool>::from_data(TensorData::new(values, [queries, keys]), &device)
            .reshape([1, 1, queries, keys])
            .expand([batch, 1, queries, keys])
    };
    let valid = key_valid
        .reshape([batch, 1, 1, keys])
        .expand([batch, 1, queries, keys]);
    let allowed = pattern(causal).bool_and(valid).bool_or(pattern(diagonal));
    allowed.bool_not()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    /// The mask built on the host equals the composition, with padding anywhere, cached keys
    /// and a row whose keys are all padding.
    #[test]
    fn host_mask_equals_the_composition() {
        let device = Default::default();
        for (batch, past, queries) in [(3, 0, 5), (2, 4, 3), (1, 6, 1)] {
            let keys = past + queries;
            let valid: Vec<bool> = (0..batch * keys)
                .map(|i| (i * 7 + i / keys) % 3 != 0 && i % keys != 2 || i < keys)
                .collect();
            let mut valid = valid;
            valid[(batch - 1) * keys..].fill(batch == 1);
            let key_valid = || {
                Tensor::<TestBackend, 2, Bool>::from_data(
                    TensorData::new(valid.clone(), [batch, keys]),
                    &device,
                )
            };
            assert_eq!(
                attention_masked(key_valid(), past, queries).into_data(),
                attention_masked_composed(key_valid(), past, queries).into_data(),
                "batch {batch}, past {past}, queries {queries}"
            );
        }
    }

    type B = TestBackend;

    fn tokens<T: Backend>(rows: &[Vec<i64>]) -> Tensor<T, 2, Int> {
        let width = rows[0].len();
        let flat: Vec<i64> = rows.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), width]), &Default::default())
    }

    fn mask<T: Backend>(rows: &[Vec<bool>]) -> Tensor<T, 2, Bool> {
        let width = rows[0].len();
        let flat: Vec<bool> = rows.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), width]), &Default::default())
    }

    fn row(logits: &Tensor<B, 3>, batch: usize, seq: std::ops::Range<usize>) -> Vec<f32> {
        let vocab = logits.dims()[2];
        logits
            .clone()
            .slice([batch..batch + 1, seq, 0..vocab])
            .into_data()
            .iter::<f32>()
            .collect()
    }

    fn assert_close(a: &[f32], b: &[f32], tolerance: f32) {
        assert_eq!(a.len(), b.len());
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0_f32, f32::max);
        assert!(
            worst <= tolerance,
            "largest difference {worst} exceeds {tolerance}"
        );
    }

    #[test]
    fn parameter_count_matches_the_module() {
        let device = Default::default();
        for config in [TransformerConfig::for_tests(), TransformerConfig::tiny(300)] {
            let model = config.init::<B>(&device);
            assert_eq!(model.num_params(), config.num_parameters());
        }
    }

    #[test]
    fn padding_left_or_right_leaves_real_logits_unchanged() {
        let device = Default::default();
        let model = TransformerConfig::for_tests().init_seeded::<B>(11, &device);
        let seq = vec![5_i64, 17, 3, 42, 8];
        let alone = model.forward(tokens(std::slice::from_ref(&seq)), mask(&[vec![true; 5]]));
        let expected = row(&alone, 0, 0..5);

        let left = [vec![0, 0, 0], seq.clone()].concat();
        let right = [seq.clone(), vec![0, 0, 0]].concat();
        let left_mask: Vec<bool> = (0..8).map(|j| j >= 3).collect();
        let right_mask: Vec<bool> = (0..8).map(|j| j < 5).collect();
        let batch = model.forward(tokens(&[left, right]), mask(&[left_mask, right_mask]));
        assert_close(&row(&batch, 0, 3..8), &expected, 1e-4);
        assert_close(&row(&batch, 1, 0..5), &expected, 1e-4);
    }

    /// The sampler runs the model without autodiff and the update with it, and the old
    /// log-probs taken from the sampler are only right if both compute the same logits: the
    /// same seed gives the same weights on both, and padded batches the same real logits.
    #[test]
    fn forward_with_and_without_autodiff_agree() {
        type Ad = crate::TestAutodiffBackend;
        let device = Default::default();
        let config = TransformerConfig::for_tests();
        let plain = config.init_seeded::<B>(8, &device);
        let tracked = config.init_seeded::<Ad>(8, &device);
        let weights = |t: Tensor<B, 2>| t.into_data().iter::<f32>().collect::<Vec<_>>();
        assert_close(
            &weights(plain.embed_tokens.weight.val()),
            &weights(tracked.embed_tokens.weight.val().inner()),
            0.0,
        );
        let rows = [vec![0_i64, 0, 3, 14, 15, 9], vec![7, 1, 8, 28, 5, 2]];
        let flags = [vec![false, false, true, true, true, true], vec![true; 6]];
        let a = plain.forward(tokens(&rows), mask(&flags));
        let b = tracked.forward(tokens(&rows), mask(&flags)).inner();
        // Products may round differently (TF32 on CUDA): agreement to 1e-2 on logits of a few units.
        assert_close(&row(&a, 0, 2..6), &row(&b, 0, 2..6), 1e-2);
        assert_close(&row(&a, 1, 0..6), &row(&b, 1, 0..6), 1e-2);
    }

    #[test]
    fn logits_are_causal() {
        let device = Default::default();
        let model = TransformerConfig::for_tests().init_seeded::<B>(5, &device);
        let a = model.forward(tokens(&[vec![1, 2, 3, 4]]), mask(&[vec![true; 4]]));
        let b = model.forward(tokens(&[vec![1, 2, 3, 9]]), mask(&[vec![true; 4]]));
        assert_close(&row(&a, 0, 0..3), &row(&b, 0, 0..3), 1e-5);
        let last_a = row(&a, 0, 3..4);
        let last_b = row(&b, 0, 3..4);
        assert!(last_a.iter().zip(&last_b).any(|(x, y)| (x - y).abs() > 1e-3));
    }

    #[test]
    fn positions_skip_padding() {
        let m = mask::<B>(&[vec![false, false, true, true], vec![true, true, true, false]]);
        let p: Vec<i64> = positions_from_mask(m).into_data().iter::<i64>().collect();
        assert_eq!(p, vec![0, 0, 0, 1, 0, 1, 2, 2]);
    }

    #[test]
    fn seeded_init_is_reproducible() {
        let device = Default::default();
        let config = TransformerConfig::for_tests();
        let a = config
            .init_seeded::<B>(3, &device)
            .embed_tokens
            .weight
            .val()
            .into_data();
        let b = config
            .init_seeded::<B>(3, &device)
            .embed_tokens
            .weight
            .val()
            .into_data();
        assert_close(
            &a.iter::<f32>().collect::<Vec<_>>(),
            &b.iter::<f32>().collect::<Vec<_>>(),
            0.0,
        );
    }
}
