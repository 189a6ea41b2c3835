//! Operations of our own with a gradient of their own, where burn's autodiff composes one
//! slowly.
//!
//! [`masked_attention`] is `softmax(q k^T, masked) v` as one node, worked through in blocks of
//! query rows that skip the keys no row of the block may see and keep their scores in cache;
//! its backward recomputes the probabilities from saved log-sum-exps (module `attention`).
//! burn 0.21 differentiates a softmax as the operations it is written with (a maximum, a
//! subtraction, `exp`, a sum and a division), each recorded and differentiated on its own: the
//! backward pass computes `exp` again and runs the division's two-sided gradient over the
//! `[queries, keys]` scores. [`masked_softmax`] records one node instead, whose backward is
//! `p * (g - sum(g * p))` from the saved probabilities (the model no longer calls it on the
//! CPU backend, where attention is fused whole; the composition around it stands in elsewhere
//! and in the tests). [`token_logprobs`] takes the target's
//! log-probability and the entropy from the LM head's logits in one pass per row (one node,
//! one backward), [`swiglu`] the feed-forward gate `silu(gate) * up` (one node, both
//! gradients in one backward), [`rms_norm`] the norm with the gradients of its input and its
//! weight in one backward (module `norm`), and [`rotary`] the rotary embedding's rotation
//! (module `rope`), and [`matmul`] the dense products, cut over the threads by us (module
//! `product`). They are taken on the CPU backend (`Autodiff<Flex>`, and `Flex` without
//! autodiff for all but the softmax), recognised by type at run time so that the model stays
//! generic over `B: Backend`; every other backend computes the same functions from tensor
//! operations. Tests compare values and gradients of the two.
//!
//! `append_rows` (crate-private) is the key/value cache's append: on `Flex` it writes a step's rows into a
//! buffer with room to grow (module `rows`), which the attention reads in place, instead of
//! concatenating the whole cache every step.

use std::any::Any;

use burn::backend::Autodiff;
use burn::tensor::activation::{log_softmax, silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::ops::{ActivationOps, FloatTensorOps};
use burn::tensor::{Bool, DType, Int, Tensor, TensorData, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

mod attention;
mod norm;
mod product;
mod rope;
mod rows;

/// The CPU training backend, on which the fused operations run.
type FlexAutodiff = Autodiff<Flex>;

/// Masked dot-product attention over grouped queries, `softmax(q k^T, masked) v` with the
/// queries already scaled (a scale of 1), in the projections' sequence-major layout: `q`
/// `[batch, seq, heads, dim]`, `k` `[batch, keys, kv_heads, dim]`, `v` `[batch, keys, kv_heads,
/// value_dim]` (query head `h` attends with key/value head `h / (heads / kv_heads)`), `masked`
/// `[batch, 1, seq, keys]` (true = may not attend), shared by all heads. Returns `[batch, seq,
/// heads, value_dim]`. A row that may attend to no key gives zeros on the CPU backend; the
/// model's masks always keep a row's own position.
///
/// On `Autodiff<Flex>` one node with its own backward, and on `Flex` the same blocked forward
/// pass (module `attention`). Elsewhere: with autodiff, the scores' product, [`masked_softmax`]
/// and the values' product; without, burn's `attention`, which the backends fuse.
pub fn masked_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    masked: Tensor<B, 4, Bool>,
) -> Tensor<B, 4> {
    let [batch, seq, heads, dim] = q.dims();
    let [_, keys, kv_heads, _] = k.dims();
    assert_eq!(
        k.dims(),
        [batch, keys, kv_heads, dim],
        "masked_attention: keys of another shape"
    );
    assert_eq!(
        v.dims()[..3],
        [batch, keys, kv_heads],
        "masked_attention: values of another shape"
    );
    assert!(
        kv_heads > 0 && heads % kv_heads == 0,
        "masked_attention: {heads} query heads do not group over {kv_heads} key/value heads"
    );
    assert_eq!(
        masked.dims(),
        [batch, 1, seq, keys],
        "masked_attention: mask built for another shape"
    );
    if !attention::supported([q.dtype(), k.dtype(), v.dtype()]) {
        return masked_attention_composed(q, k, v, masked);
    }
    let inputs: Box<dyn Any> = Box::new((q, k, v, masked));
    type Four<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4, Bool>);
    let inputs = match inputs.downcast::<Four<FlexAutodiff>>() {
        Ok(flex) => {
            let (q, k, v, masked) = *flex;
            return retype(attention::attention_autodiff(q, k, v, masked));
        }
        Err(inputs) => inputs,
    };
    let inputs = match inputs.downcast::<Four<Flex>>() {
        Ok(flex) => {
            let (q, k, v, masked) = *flex;
            return retype(attention::attention_inference(q, k, v, masked));
        }
        Err(inputs) => inputs,
    };
    let (q, k, v, masked) = *inputs.downcast::<Four<B>>().expect("the inputs keep their type");
    masked_attention_composed(q, k, v, masked)
}

/// The product `lhs [m, k] x rhs [k, n]`, as `lhs.matmul(rhs)`.
///
/// On the CPU backend the output's rows are cut into one band per thread, each band one
/// single-threaded `gemm` call that reads the operands in place (module `product`), and on
/// `Autodiff<Flex>` the backward pass cuts `g rhs^T` the same way and `lhs^T g`, a weight's
/// gradient, along its long inner dimension into two partial products. The cuts depend on
/// the shapes alone, so the result is the same bits on any number of threads. Elsewhere
/// `lhs.matmul(rhs)`.
pub fn matmul<B: Backend>(lhs: Tensor<B, 2>, rhs: Tensor<B, 2>) -> Tensor<B, 2> {
    assert_eq!(lhs.dims()[1], rhs.dims()[0], "matmul: inner dimensions differ");
    if lhs.dtype() != DType::F32 || rhs.dtype() != DType::F32 {
        return lhs.matmul(rhs);
    }
    let inputs: Box<dyn Any> = Box::new((lhs, rhs));
    let inputs = match inputs.downcast::<(Tensor<FlexAutodiff, 2>, Tensor<FlexAutodiff, 2>)>() {
        Ok(flex) => {
            let (lhs, rhs) = *flex;
            return retype(product::autodiff(lhs, rhs));
        }
        Err(inputs) => inputs,
    };
    let inputs = match inputs.downcast::<(Tensor<Flex, 2>, Tensor<Flex, 2>)>() {
        Ok(flex) => {
            let (lhs, rhs) = *flex;
            return retype(product::inference(lhs, rhs));
        }
        Err(inputs) => inputs,
    };
    let (lhs, rhs) = *inputs
        .downcast::<(Tensor<B, 2>, Tensor<B, 2>)>()
        .expect("the inputs keep their type");
    lhs.matmul(rhs)
}

/// Whether `B` is the CPU backend on which the fused operations run (`Flex`, with or without
/// autodiff).
pub(crate) fn on_cpu<B: Backend>() -> bool {
    use std::any::TypeId;
    [TypeId::of::<Flex>(), TypeId::of::<FlexAutodiff>()].contains(&TypeId::of::<B>())
}

/// `value` as the type it is known to have (`T` and `U` are one type, told apart only at run
/// time).
pub(crate) fn retype<T: 'static, U: 'static>(value: T) -> U {
    let value: Box<dyn Any> = Box::new(value);
    *value.downcast::<U>().expect("the output has the input's type")
}

/// The same function from tensor operations, head-major: the `rep` query heads that share a
/// key/value head are stacked along the sequence axis (`[batch, kv_heads, rep * seq, dim]`) so
/// that keys and values are never repeated; with autodiff the products around
/// [`masked_softmax`], without burn's `attention`. (burn's autodiff backends differentiate
/// `attention` through a generic composition that scales the `[queries, keys]` scores, tracks
/// a row maximum and clamps its sums: about a dozen passes over the scores forward and
/// backward. Every row of the model's masks keeps its own position, so no clamping is needed.)
pub(crate) fn masked_attention_composed<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    masked: Tensor<B, 4, Bool>,
) -> Tensor<B, 4> {
    let [batch, seq, heads, dim] = q.dims();
    let [_, keys, kv_heads, _] = k.dims();
    let value_dim = v.dims()[3];
    let rep = heads / kv_heads;
    let q = q.swap_dims(1, 2).reshape([batch, kv_heads, rep * seq, dim]);
    let (k, v) = (k.swap_dims(1, 2), v.swap_dims(1, 2));
    // Laid out for the stacked queries as a tensor of its own (the flat reshape copies the
    // broadcast view once), so that the masking does not copy it again.
    let masked = masked
        .unsqueeze_dim::<5>(1)
        .expand([batch, kv_heads, rep, seq, keys])
        .reshape([batch * kv_heads * rep * seq, keys])
        .reshape([batch, kv_heads, rep * seq, keys]);
    let out = if B::ad_enabled(&q.device()) {
        masked_softmax(q.matmul(k.swap_dims(2, 3)), masked).matmul(v)
    } else {
        let options = AttentionModuleOptions {
            scale: Some(1.0),
            softcap: None,
            is_causal: false,
        };
        burn_attention(q, k, v, Some(masked), None, options)
    };
    out.reshape([batch, heads, seq, value_dim]).swap_dims(1, 2)
}

/// `exp(x)` for `x` at most 88, to about 2e-7 relative: `2^k exp(r)` with `k` the nearest
/// integer to `x / ln 2` and `exp(r)` a degree-6 polynomial on `|r| <= ln 2 / 2`; below -87
/// it gives about 1.6e-38 instead of less. Plain arithmetic and bit operations, so a loop over
/// a row vectorises, where `f32::exp` is a call into libm per element.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // Adding 1.5 * 2^23 rounds to an integer held in the low bits of the mantissa.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let k = t - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let k = t.to_bits() as i32 - ROUND.to_bits() as i32;
    f32::from_bits(((k + 127) << 23) as u32) * p
}

/// Lanes that the reductions below keep apart, so that they vectorise.
const LANES: usize = 8;

/// Outputs of fewer elements are computed on the calling thread: handing a small pass (a
/// decoding step's rows) to rayon's pool costs more than it saves.
pub(crate) const PARALLEL_ELEMENTS: usize = 1 << 15;

/// Elements in one band of rows handed to the pool (about 64 KiB of f32).
pub(crate) const BAND_ELEMENTS: usize = 1 << 14;

/// `len` zeros, written by rayon's pool when `len` is large: a zero-filled output allocated on
/// the calling thread (reused heap memory has to be cleared) kept one core busy while the
/// other waited, about 2% of a training step of the tiny model.
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    if len < PARALLEL_ELEMENTS {
        return vec![0.0; len];
    }
    let mut out = Vec::with_capacity(len);
    out.par_extend(rayon::iter::repeat_n(0.0_f32, len).with_min_len(BAND_ELEMENTS));
    out
}

/// Rows in a band of rows `width` elements wide.
fn band_rows(width: usize) -> usize {
    (BAND_ELEMENTS / width.max(1)).max(1)
}

/// Calls `f(first_row, rows)` over bands of whole rows of `out` (`width` elements a row): in
/// parallel on rayon's pool when `out` is large, all at once on the calling thread otherwise.
/// The bands depend on the sizes alone, never on the number of threads.
fn for_row_bands(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if out.len() < PARALLEL_ELEMENTS || width == 0 {
        f(0, out);
        return;
    }
    let rows = band_rows(width);
    out.par_chunks_mut(rows * width)
        .enumerate()
        .for_each(|(i, band)| f(i * rows, band));
}

/// [`for_row_bands`] over two outputs with the same rows, `a_width` and `b_width` elements a
/// row.
fn for_row_bands2(
    (a, a_width): (&mut [f32], usize),
    (b, b_width): (&mut [f32], usize),
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) {
    if a.len() < PARALLEL_ELEMENTS || a_width == 0 || b_width == 0 {
        f(0, a, b);
        return;
    }
    let rows = band_rows(a_width);
    a.par_chunks_mut(rows * a_width)
        .zip(b.par_chunks_mut(rows * b_width))
        .enumerate()
        .for_each(|(i, (a, b))| f(i * rows, a, b));
}

/// The maximum of a row (`-inf` when empty).
fn max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(v);
        }
    }
    lanes.iter().fold(tail, |a, &b| a.max(b))
}

/// The sum of a row.
fn sum(row: &[f32]) -> f32 {
    let mut lanes = [0.0_f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `softmax` over the last axis of `scores` `[.., keys]`, with the positions where `masked` is
/// true left out (probability 0). Every row must keep at least one position.
pub fn masked_softmax<B: Backend>(scores: Tensor<B, 4>, masked: Tensor<B, 4, Bool>) -> Tensor<B, 4> {
    let inputs: Box<dyn Any> = Box::new((scores, masked));
    match inputs.downcast::<(Tensor<FlexAutodiff, 4>, Tensor<FlexAutodiff, 4, Bool>)>() {
        Ok(flex) => {
            let (scores, masked) = *flex;
            retype(masked_softmax_flex(scores, masked))
        }
        Err(inputs) => {
            let (scores, masked) = *inputs
                .downcast::<(Tensor<B, 4>, Tensor<B, 4, Bool>)>()
                .expect("the inputs keep their type");
            masked_softmax_composed(scores, masked)
        }
    }
}

/// The same function from tensor operations, differentiated by whatever backend runs it.
pub(crate) fn masked_softmax_composed<B: Backend>(
    scores: Tensor<B, 4>,
    masked: Tensor<B, 4, Bool>,
) -> Tensor<B, 4> {
    softmax(scores.mask_fill(masked, f32::NEG_INFINITY), 3)
}

/// The gradient of a softmax over the last of 4 axes from its output `p`:
/// `dx = p * (g - sum(g * p))`, row by row.
#[derive(Debug)]
struct SoftmaxBackward;

impl Backward<Flex, 1> for SoftmaxBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let p = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let gp = Flex::float_mul(grad, p.clone());
            let row = Flex::float_sum_dim(gp.clone(), 3);
            Flex::float_sub(gp, Flex::float_mul(p, row))
        });
    }
}

fn masked_softmax_flex(
    scores: Tensor<FlexAutodiff, 4>,
    masked: Tensor<FlexAutodiff, 4, Bool>,
) -> Tensor<FlexAutodiff, 4> {
    let scores = scores.into_primitive().tensor();
    let filled = Flex::float_mask_fill(
        scores.primitive.clone(),
        masked.into_primitive(),
        f32::NEG_INFINITY.into(),
    );
    let p = Flex::softmax(filled, 3);
    let out = match SoftmaxBackward
        .prepare::<NoCheckpointing>([scores.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(p.clone(), p),
        OpsKind::UnTracked(prep) => prep.finish(p),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The log-probability of each position's target token and the entropy of its next-token
/// distribution, from LM-head logits `[batch, seq, vocab]` and one target per position
/// (`targets.len() == batch * seq`, row-major): `[batch, seq, 2]`, `[.., 0]` the log-probability
/// and `[.., 1]` the entropy, both differentiable.
///
/// On the CPU backend this is one pass over each row of logits forward (maximum, then
/// log-sum-exp, target and entropy together) and one backward, where burn's composition
/// (`log_softmax`, `gather`, `exp`, a product and a sum) records nine operations over the
/// `[batch, seq, vocab]` logits and differentiates each.
///
/// # Panics
///
/// If `targets` does not hold one token per position or a target is outside the vocabulary.
pub fn token_logprobs<B: Backend>(logits: Tensor<B, 3>, targets: &[u32]) -> Tensor<B, 3> {
    let [batch, seq, vocab] = logits.dims();
    assert_eq!(
        targets.len(),
        batch * seq,
        "token_logprobs: one target per position"
    );
    assert!(
        targets.iter().all(|&t| (t as usize) < vocab),
        "token_logprobs: a target is outside the vocabulary of {vocab}"
    );
    if logits.dtype() != DType::F32 {
        return token_logprobs_composed(logits, targets);
    }
    let inputs: Box<dyn Any> = Box::new(logits);
    let inputs = match inputs.downcast::<Tensor<FlexAutodiff, 3>>() {
        Ok(flex) => {
            return retype(token_logprobs_autodiff(*flex, [batch, seq, vocab], targets));
        }
        Err(inputs) => inputs,
    };
    match inputs.downcast::<Tensor<Flex, 3>>() {
        Ok(flex) => {
            let primitive = flex.into_primitive().tensor();
            let (out, _) = token_logprobs_forward(&primitive, [batch, seq, vocab], targets);
            retype(Tensor::<Flex, 3>::from_primitive(TensorPrimitive::Float(out)))
        }
        Err(inputs) => {
            let logits = *inputs
                .downcast::<Tensor<B, 3>>()
                .expect("the input keeps its type");
            token_logprobs_composed(logits, targets)
        }
    }
}

/// The same function from tensor operations, differentiated by whatever backend runs it.
pub(crate) fn token_logprobs_composed<B: Backend>(logits: Tensor<B, 3>, targets: &[u32]) -> Tensor<B, 3> {
    let [batch, seq, _] = logits.dims();
    let device = logits.device();
    let ids: Vec<i64> = targets.iter().map(|&t| i64::from(t)).collect();
    let targets = Tensor::<B, 3, Int>::from_data(TensorData::new(ids, [batch, seq, 1]), &device);
    let all = log_softmax(logits, 2);
    let logprobs = all.clone().gather(2, targets);
    let entropy = (all.clone().exp() * all).sum_dim(2).neg();
    Tensor::cat(vec![logprobs, entropy], 2)
}

/// Per row of logits: `log p(target)`, the entropy, and the log-sum-exp the backward pass
/// recomputes the probabilities from. Returns the `[.., 2]` output and the log-sum-exps.
fn token_logprobs_forward(logits: &FlexTensor, dims: [usize; 3], targets: &[u32]) -> (FlexTensor, Vec<f32>) {
    let vocab = dims[2];
    let logits = logits.to_contiguous();
    let x: &[f32] = logits.storage();
    // Per row: log p(target), the entropy and the log-sum-exp.
    let row = |(x, &target): (&[f32], &u32)| token_logprob_row(x, target);
    let rows: Vec<[f32; 3]> = if x.len() < PARALLEL_ELEMENTS || vocab == 0 {
        x.chunks_exact(vocab.max(1)).zip(targets).map(row).collect()
    } else {
        let rows = x.par_chunks_exact(vocab).zip(targets);
        rows.with_min_len(band_rows(vocab)).map(row).collect()
    };
    let out: Vec<f32> = rows.iter().flat_map(|r| [r[0], r[1]]).collect();
    let lse = rows.iter().map(|r| r[2]).collect();
    let shape = [dims[0], dims[1], 2];
    (FlexTensor::from_data(TensorData::new(out, shape)), lse)
}

/// `[log p(target), entropy, log-sum-exp]` of one row of logits.
fn token_logprob_row(x: &[f32], target: u32) -> [f32; 3] {
    let max = max(x);
    // sum exp(x - max) and sum exp(x - max) (x - max), in lanes that vectorise.
    let (mut sums, mut weighted) = ([0.0_f32; LANES], [0.0_f32; LANES]);
    let chunks = x.chunks_exact(LANES);
    let (mut tail_sum, mut tail_weighted) = (0.0_f32, 0.0_f32);
    for &v in chunks.remainder() {
        let shifted = v - max;
        let e = exp(shifted);
        tail_sum += e;
        tail_weighted += e * shifted;
    }
    for chunk in chunks {
        for ((s, w), &v) in sums.iter_mut().zip(&mut weighted).zip(chunk) {
            let shifted = v - max;
            let e = exp(shifted);
            *s += e;
            *w += e * shifted;
        }
    }
    let total = sum(&sums) + tail_sum;
    let weighted = sum(&weighted) + tail_weighted;
    let log_sum = total.ln();
    let lse = max + log_sum;
    // H = -sum p log p = log_sum - sum p (x - max).
    [x[target as usize] - lse, log_sum - weighted / total, lse]
}

/// The gradient of [`token_logprobs`]: with `p = softmax(x)`, `g` the gradient of the
/// log-probability and `h` that of the entropy `H`,
/// `dx_j = g (δ_jt - p_j) - h p_j (log p_j + H)`.
#[derive(Debug, Clone)]
struct TokenLogProbsBackward;

/// What the backward pass needs: the logits, the targets, per row the log-sum-exp, and the
/// forward's output (whose `[.., 1]` are the entropies).
#[derive(Debug, Clone)]
struct TokenLogProbsState {
    logits: FlexTensor,
    dims: [usize; 3],
    targets: Vec<u32>,
    lse: Vec<f32>,
    out: FlexTensor,
}

impl Backward<Flex, 1> for TokenLogProbsBackward {
    type State = TokenLogProbsState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let state = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = grad.to_contiguous();
            let g: &[f32] = grad.storage();
            let dims = state.dims;
            let vocab = dims[2];
            let x: &[f32] = state.logits.storage();
            let out: &[f32] = state.out.storage();
            let mut dx = zeros(x.len());
            for_row_bands(&mut dx, vocab, |first, dx| {
                for (i, d) in dx.chunks_exact_mut(vocab).enumerate() {
                    let row = first + i;
                    let x = &x[row * vocab..(row + 1) * vocab];
                    let (g_logp, g_entropy) = (g[2 * row], g[2 * row + 1]);
                    let (lse, entropy) = (state.lse[row], out[2 * row + 1]);
                    for (&v, d) in x.iter().zip(d.iter_mut()) {
                        let log_p = v - lse;
                        let p = exp(log_p);
                        *d = -p * (g_logp + g_entropy * (log_p + entropy));
                    }
                    d[state.targets[row] as usize] += g_logp;
                }
            });
            FlexTensor::from_data(TensorData::new(dx, dims))
        });
    }
}

fn token_logprobs_autodiff(
    logits: Tensor<FlexAutodiff, 3>,
    dims: [usize; 3],
    targets: &[u32],
) -> Tensor<FlexAutodiff, 3> {
    let logits = logits.into_primitive().tensor();
    let (out, lse) = token_logprobs_forward(&logits.primitive, dims, targets);
    let out = match TokenLogProbsBackward
        .prepare::<NoCheckpointing>([logits.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = TokenLogProbsState {
                logits: logits.primitive.to_contiguous(),
                dims,
                targets: targets.to_vec(),
                lse,
                out: out.clone(),
            };
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// SwiGLU's gate, `silu(gate) * up`, element-wise over two tensors of one shape.
///
/// On the CPU backend one node: one pass forward, and one backward that computes both
/// gradients, `d gate = g up s (1 + gate (1 - s))` and `d up = g gate s` with
/// `s = sigmoid(gate)`, where burn's composition records a sigmoid and two products (three
/// outputs forward, six passes and a sum backward).
pub fn swiglu<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    assert_eq!(gate.dims(), up.dims(), "swiglu: gate and up differ in shape");
    if gate.dtype() != DType::F32 || up.dtype() != DType::F32 {
        return swiglu_composed(gate, up);
    }
    let inputs: Box<dyn Any> = Box::new((gate, up));
    let inputs = match inputs.downcast::<(Tensor<FlexAutodiff, 3>, Tensor<FlexAutodiff, 3>)>() {
        Ok(flex) => {
            let (gate, up) = *flex;
            return retype(swiglu_autodiff(gate, up));
        }
        Err(inputs) => inputs,
    };
    match inputs.downcast::<(Tensor<Flex, 3>, Tensor<Flex, 3>)>() {
        Ok(flex) => {
            let (gate, up) = *flex;
            let dims = gate.dims();
            let out = swiglu_forward(
                &gate.into_primitive().tensor(),
                &up.into_primitive().tensor(),
                dims,
            );
            retype(Tensor::<Flex, 3>::from_primitive(TensorPrimitive::Float(out)))
        }
        Err(inputs) => {
            let (gate, up) = *inputs
                .downcast::<(Tensor<B, 3>, Tensor<B, 3>)>()
                .expect("the inputs keep their type");
            swiglu_composed(gate, up)
        }
    }
}

/// Appends `new` `[batch, added, heads, dim]` to a key/value cache buffer that holds `len`
/// positions along axis 1, and returns all `len + added` of them.
///
/// On the CPU backend the buffer has room to grow (`reserve` positions when first made, if
/// that is enough, and doubled whenever full) and only the new rows
/// are written, in place (module `rows`); returned views of it never change afterwards, as a
/// buffer someone else still holds is copied before it is written. Elsewhere the buffer is
/// the concatenation itself.
pub(crate) fn append_rows<B: Backend>(
    buffer: &mut Option<Tensor<B, 4>>,
    len: usize,
    new: Tensor<B, 4>,
    reserve: usize,
) -> Tensor<B, 4> {
    if new.dtype() == DType::F32 {
        let inputs: Box<dyn Any> = Box::new((buffer.take(), new));
        match inputs.downcast::<(Option<Tensor<Flex, 4>>, Tensor<Flex, 4>)>() {
            Ok(flex) => {
                let (old, new) = *flex;
                let (kept, view) = rows::append(old, len, new, reserve);
                *buffer = Some(retype(kept));
                return retype(view);
            }
            Err(inputs) => {
                let (old, new) = *inputs
                    .downcast::<(Option<Tensor<B, 4>>, Tensor<B, 4>)>()
                    .expect("the inputs keep their type");
                *buffer = old;
                return concatenated(buffer, len, new);
            }
        }
    }
    concatenated(buffer, len, new)
}

/// [`append_rows`] as a concatenation: the buffer holds exactly the cached positions.
fn concatenated<B: Backend>(
    buffer: &mut Option<Tensor<B, 4>>,
    len: usize,
    new: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let all = match buffer.take() {
        Some(past) => {
            let [batch, capacity, heads, dim] = past.dims();
            let past = if capacity == len {
                past
            } else {
                past.slice([0..batch, 0..len, 0..heads, 0..dim])
            };
            Tensor::cat(vec![past, new], 1)
        }
        None => new,
    };
    *buffer = Some(all.clone());
    all
}

/// The rotary embedding's rotation in HF's rotate-half convention, `x cos + rotate_half(x)
/// sin`, for `x`, `cos` and `sin` `[batch, seq, heads, head_dim]` (the tables constants, with
/// no gradient), where `rotate_half(x) = cat(-x[.., d/2..], x[.., ..d/2])`.
///
/// On the CPU backend one node: a pass forward, and one backward (module `rope`), where
/// burn's composition records two slices, a negation, a concatenation, two products and a sum.
pub fn rotary<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    let dims = x.dims();
    assert_eq!(cos.dims(), dims, "rotary: tables built for another shape");
    assert_eq!(sin.dims(), dims, "rotary: tables built for another shape");
    assert!(dims[3].is_multiple_of(2), "rotary: an odd head width {}", dims[3]);
    if [x.dtype(), cos.dtype(), sin.dtype()] != [DType::F32; 3] {
        return rotary_composed(x, cos, sin);
    }
    let inputs: Box<dyn Any> = Box::new((x, cos, sin));
    type Three<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>);
    let inputs = match inputs.downcast::<Three<FlexAutodiff>>() {
        Ok(flex) => {
            let (x, cos, sin) = *flex;
            return retype(rope::autodiff(x, cos, sin));
        }
        Err(inputs) => inputs,
    };
    let inputs = match inputs.downcast::<Three<Flex>>() {
        Ok(flex) => {
            let (x, cos, sin) = *flex;
            let [x, cos, sin] = [x, cos, sin].map(|t| t.into_primitive().tensor());
            let out = rope::forward(&x, &cos, &sin, dims[3]);
            return retype(Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(out)));
        }
        Err(inputs) => inputs,
    };
    let (x, cos, sin) = *inputs.downcast::<Three<B>>().expect("the inputs keep their type");
    rotary_composed(x, cos, sin)
}

/// The same function from tensor operations, `rotate_half` as slices and a concatenation: exact
/// on every backend (a product with the rotate-half matrix, which this once was, runs in TF32
/// on CUDA and rounds `x` to 10 bits of mantissa).
pub(crate) fn rotary_composed<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [batch, seq, heads, head_dim] = x.dims();
    let half = head_dim / 2;
    let first = x.clone().slice([0..batch, 0..seq, 0..heads, 0..half]);
    let second = x.clone().slice([0..batch, 0..seq, 0..heads, half..head_dim]);
    let rotated = Tensor::cat(vec![second.neg(), first], 3);
    x * cos + rotated * sin
}

/// RMSNorm over the last axis, `x / sqrt(mean(x^2) + eps) * weight`, for `x` `[.., hidden]`
/// and `weight` `[hidden]`.
///
/// On the CPU backend one node: a pass over each row forward, and one backward that gives
/// both gradients (module `norm`), where burn's composition records six operations and
/// differentiates each.
pub fn rms_norm<B: Backend, const D: usize>(x: Tensor<B, D>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, D> {
    let dims = x.dims();
    let hidden = dims[D - 1];
    assert_eq!(weight.dims(), [hidden], "rms_norm: a weight of another width");
    if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        return rms_norm_composed(x, weight, eps);
    }
    let rows = dims[..D - 1].iter().product();
    let flat = x.reshape([rows, hidden]);
    let eps32 = eps as f32;
    let inputs: Box<dyn Any> = Box::new((flat, weight));
    let inputs = match inputs.downcast::<(Tensor<FlexAutodiff, 2>, Tensor<FlexAutodiff, 1>)>() {
        Ok(flex) => {
            let (x, w) = *flex;
            return retype::<_, Tensor<B, 2>>(norm::autodiff(x, w, eps32)).reshape(dims);
        }
        Err(inputs) => inputs,
    };
    let inputs = match inputs.downcast::<(Tensor<Flex, 2>, Tensor<Flex, 1>)>() {
        Ok(flex) => {
            let (x, w) = *flex;
            let (x, w) = (x.into_primitive().tensor(), w.into_primitive().tensor());
            let (out, _) = norm::forward(&x, &w, eps32);
            let out = Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(out));
            return retype::<_, Tensor<B, 2>>(out).reshape(dims);
        }
        Err(inputs) => inputs,
    };
    let (flat, weight) = *inputs
        .downcast::<(Tensor<B, 2>, Tensor<B, 1>)>()
        .expect("the inputs keep their type");
    rms_norm_composed(flat.reshape(dims), weight, eps)
}

/// The same function from tensor operations, differentiated by whatever backend runs it.
pub(crate) fn rms_norm_composed<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let rms = (x.clone().square().mean_dim(D - 1) + eps).sqrt();
    (x / rms) * weight.unsqueeze()
}

/// The same function from tensor operations, differentiated by whatever backend runs it.
pub(crate) fn swiglu_composed<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    silu(gate) * up
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

fn swiglu_forward(gate: &FlexTensor, up: &FlexTensor, dims: [usize; 3]) -> FlexTensor {
    let (gate, up) = (gate.to_contiguous(), up.to_contiguous());
    let (gate, up): (&[f32], &[f32]) = (gate.storage(), up.storage());
    let mut out = zeros(gate.len());
    for_row_bands(&mut out, 1, |first, out| {
        let range = first..first + out.len();
        for ((o, &g), &u) in out.iter_mut().zip(&gate[range.clone()]).zip(&up[range]) {
            *o = g * sigmoid(g) * u;
        }
    });
    FlexTensor::from_data(TensorData::new(out, dims))
}

/// The gradients of [`swiglu`] with respect to the gate and the up projection.
#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 2> for SwigluBackward {
    /// The gate and up inputs, contiguous, and their shape.
    type State = (FlexTensor, FlexTensor, [usize; 3]);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let (gate, up, dims) = ops.state;
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (g, gate, up) = (grad.storage::<f32>(), gate.storage::<f32>(), up.storage::<f32>());
        // Both gradients from one sigmoid per element.
        let (mut d_gate, mut d_up) = (zeros(g.len()), zeros(g.len()));
        for_row_bands2((&mut d_gate, 1), (&mut d_up, 1), |first, d_gate, d_up| {
            let range = first..first + d_gate.len();
            let inputs = g[range.clone()].iter().zip(&gate[range.clone()]).zip(&up[range]);
            for (((&g, &x), &u), (dg, du)) in inputs.zip(d_gate.iter_mut().zip(d_up.iter_mut())) {
                let s = sigmoid(x);
                *dg = g * u * s * (1.0 + x * (1.0 - s));
                *du = g * x * s;
            }
        });
        let [gate_node, up_node] = ops.parents;
        for (node, d) in [(gate_node, d_gate), (up_node, d_up)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(d, dims)));
            }
        }
    }
}

fn swiglu_autodiff(gate: Tensor<FlexAutodiff, 3>, up: Tensor<FlexAutodiff, 3>) -> Tensor<FlexAutodiff, 3> {
    let dims = gate.dims();
    let (gate, up) = (gate.into_primitive().tensor(), up.into_primitive().tensor());
    let out = swiglu_forward(&gate.primitive, &up.primitive, dims);
    let out = match SwigluBackward
        .prepare::<NoCheckpointing>([gate.node.clone(), up.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = (gate.primitive.to_contiguous(), up.primitive.to_contiguous(), dims);
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    type Ad = Autodiff<crate::TestBackend>;

    /// The vectorisable `exp` is within 3e-7 relative of libm's over the range the operations use.
    #[test]
    fn exp_matches_libm() {
        let mut worst = 0.0_f32;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (ours, libm) = (exp(x), x.exp());
            worst = worst.max(((ours - libm) / libm).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(exp(f32::NEG_INFINITY) < 1e-37 && exp(-1000.0) >= 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    /// Values and gradients of the fused operation (on flex) equal those of the composition.
    #[test]
    fn masked_softmax_matches_the_composition_and_its_gradient() {
        // On the default test backend this exercises the fused operation itself.
        #[cfg(not(any(feature = "test-wgpu", feature = "test-cuda", feature = "test-ndarray")))]
        assert_eq!(
            std::any::TypeId::of::<Ad>(),
            std::any::TypeId::of::<FlexAutodiff>()
        );
        let device = Default::default();
        let shape = [2, 3, 5, 7];
        let (scores, weights) = crate::config::with_seed::<Ad, _>(&device, 1, || {
            (
                Tensor::<Ad, 4>::random(shape, Distribution::Normal(0.0, 2.0), &device),
                Tensor::<Ad, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device),
            )
        });
        // Causal-like masks with some padding; every row keeps its diagonal.
        let mask: Vec<bool> = (0..shape.iter().product::<usize>())
            .map(|i| {
                let (q, k) = ((i / 7) % 5, i % 7);
                k > q + 2 || (k == 0 && q % 2 == 1)
            })
            .collect();
        let masked = Tensor::<Ad, 4, Bool>::from_data(TensorData::new(mask.clone(), shape), &device);
        let run = |fused: bool| {
            let x = Tensor::<Ad, 4>::from_data(scores.to_data(), &device).require_grad();
            let p = if fused {
                masked_softmax(x.clone(), masked.clone())
            } else {
                masked_softmax_composed(x.clone(), masked.clone())
            };
            let grads = (p.clone() * weights.clone()).sum().backward();
            (p.into_data(), x.grad(&grads).unwrap().into_data())
        };
        let (p_fused, g_fused) = run(true);
        let (p_composed, g_composed) = run(false);
        p_fused.assert_approx_eq::<f32>(&p_composed, Tolerance::absolute(1e-6));
        g_fused.assert_approx_eq::<f32>(&g_composed, Tolerance::absolute(1e-5));
        let p: Vec<f32> = p_fused.to_vec().unwrap();
        assert!(
            p.iter().zip(&mask).all(|(&v, &m)| !m || v == 0.0),
            "masked positions get 0"
        );
        for row in p.chunks(7) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    /// A mask like the model's `[batch, 1, queries, keys]` for `queries` new tokens after
    /// `past` cached ones, with the keys in `padded` left out of the first sequence: causal,
    /// and every row keeps its own position.
    fn model_like_mask(batch: usize, queries: usize, keys: usize, padded: &[usize]) -> Vec<bool> {
        let past = keys - queries;
        (0..batch * queries * keys)
            .map(|i| {
                let (b, q, k) = (i / (queries * keys), (i / keys) % queries, i % keys);
                let own = k == past + q;
                !own && (k > past + q || (b == 0 && padded.contains(&k)))
            })
            .collect()
    }

    /// Values and gradients (queries, keys and values) of the fused attention against the
    /// head-major composition, on `Autodiff<Flex>`, and its forward pass without autodiff
    /// against burn's attention. `shape` is the queries' `[batch, seq, heads, dim]`.
    fn check_attention(
        shape: [usize; 4],
        kv_heads: usize,
        keys: usize,
        value_dim: usize,
        padded: &[usize],
        seed: u64,
    ) {
        let device = Default::default();
        let [batch, queries, _, dim] = shape;
        let normal = Distribution::Normal(0.0, 1.0);
        let (q, k, v, weights) = crate::config::with_seed::<Ad, _>(&device, seed, || {
            (
                Tensor::<Ad, 4>::random(shape, normal, &device),
                Tensor::<Ad, 4>::random([batch, keys, kv_heads, dim], normal, &device),
                Tensor::<Ad, 4>::random([batch, keys, kv_heads, value_dim], normal, &device),
                Tensor::<Ad, 4>::random([batch, queries, shape[2], value_dim], normal, &device),
            )
        });
        let mask = model_like_mask(batch, queries, keys, padded);
        let masked =
            Tensor::<Ad, 4, Bool>::from_data(TensorData::new(mask, [batch, 1, queries, keys]), &device);
        let run = |fused: bool| {
            let leaf = |t: &Tensor<Ad, 4>| Tensor::<Ad, 4>::from_data(t.to_data(), &device).require_grad();
            let (ql, kl, vl) = (leaf(&q), leaf(&k), leaf(&v));
            let attend = if fused {
                masked_attention
            } else {
                masked_attention_composed
            };
            let out = attend(ql.clone(), kl.clone(), vl.clone(), masked.clone());
            let grads = (out.clone() * weights.clone()).sum().backward();
            let grad = |t: &Tensor<Ad, 4>| t.grad(&grads).unwrap().into_data();
            [out.into_data(), grad(&ql), grad(&kl), grad(&vl)]
        };
        let (fused, composed) = (run(true), run(false));
        for (name, (f, c)) in ["output", "d q", "d k", "d v"]
            .iter()
            .zip(fused.iter().zip(&composed))
        {
            assert_eq!(f.shape, c.shape, "{name}");
            let (f, c): (Vec<f32>, Vec<f32>) = (f.to_vec().unwrap(), c.to_vec().unwrap());
            let worst = f
                .iter()
                .zip(&c)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0_f32, f32::max);
            assert!(
                worst < 1e-4,
                "{name}: off by {worst} for {shape:?}, {kv_heads} kv heads, {keys} keys"
            );
        }
        let inner = |t: &Tensor<Ad, 4>| t.clone().inner();
        let plain = masked_attention(inner(&q), inner(&k), inner(&v), masked.clone().inner());
        let burn = masked_attention_composed(inner(&q), inner(&k), inner(&v), masked.inner());
        plain
            .into_data()
            .assert_approx_eq::<f32>(&burn.into_data(), Tolerance::absolute(1e-4));
    }

    #[test]
    fn masked_attention_matches_the_composition_and_its_gradients() {
        // Blocks of 64 queries: one partial block, a whole and a partial one; cached keys
        // before the queries; padded keys; grouped heads; values of another width.
        check_attention([2, 5, 3, 4], 3, 5, 4, &[], 1);
        check_attention([2, 100, 4, 8], 2, 100, 8, &[0, 1, 2, 57], 2);
        check_attention([1, 70, 2, 16], 1, 77, 12, &[3, 75], 3);
        check_attention([3, 1, 4, 8], 4, 40, 8, &[0], 4);
    }

    #[test]
    fn masked_attention_matches_the_composition_at_a_tool_calls_length() {
        // A tool caller's example is 600-700 tokens, its memories at the start: training on
        // one (eleven blocks of queries), and decoding its first token after it.
        check_attention([2, 700, 4, 32], 4, 700, 32, &[690, 695, 699], 5);
        check_attention([1, 1, 4, 32], 4, 760, 32, &[], 6);
    }

    // The fused kernel exists on the CPU backend only; elsewhere both sides are the
    // composition, and each new shape would cost a kernel compilation on the GPU backends.
    #[cfg(not(any(feature = "test-wgpu", feature = "test-cuda", feature = "test-ndarray")))]
    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Any shape, grouping and padding: the fused attention equals the composition.
        #[test]
        fn masked_attention_matches_the_composition_for_any_shape(
            batch in 1usize..3,
            kv_heads in 1usize..3,
            rep in 1usize..3,
            queries in 1usize..140,
            past in 0usize..20,
            dim in 1usize..20,
            value_dim in 1usize..20,
            padded in proptest::collection::vec(0usize..160, 0..6),
            seed in 0u64..1000,
        ) {
            check_attention([batch, queries, kv_heads * rep, dim], kv_heads, queries + past, value_dim, &padded, seed);
        }
    }

    /// Values and gradients of the fused token log-probabilities (log-probability and
    /// entropy, both in the loss) equal those of the composition, and without autodiff too.
    #[test]
    fn token_logprobs_match_the_composition_and_its_gradient() {
        // The second shape is large enough to run in bands on the pool.
        for (batch, seq, vocab) in [(2, 3, 11), (3, 40, 300)] {
            token_logprobs_case(batch, seq, vocab);
        }
    }

    fn token_logprobs_case(batch: usize, seq: usize, vocab: usize) {
        let device = Default::default();
        // Spread logits (one row far off-scale) so that the log-sum-exp's shift matters.
        let logits: Vec<f32> = (0..batch * seq * vocab)
            .map(|i| ((i * 29 % 37) as f32 - 18.0) / 3.0 + if i / vocab == 4 { 60.0 } else { 0.0 })
            .collect();
        let targets: Vec<u32> = (0..batch * seq).map(|i| (i * 7 % vocab) as u32).collect();
        let weights = crate::config::with_seed::<Ad, _>(&device, 2, || {
            Tensor::<Ad, 3>::random([batch, seq, 2], Distribution::Normal(0.0, 1.0), &device)
        });
        let run = |fused: bool| {
            let x = Tensor::<Ad, 3>::from_data(TensorData::new(logits.clone(), [batch, seq, vocab]), &device)
                .require_grad();
            let out = if fused {
                token_logprobs(x.clone(), &targets)
            } else {
                token_logprobs_composed(x.clone(), &targets)
            };
            let grads = (out.clone() * weights.clone()).sum().backward();
            (out.into_data(), x.grad(&grads).unwrap().into_data())
        };
        let (out_fused, g_fused) = run(true);
        let (out_composed, g_composed) = run(false);
        out_fused.assert_approx_eq::<f32>(&out_composed, Tolerance::absolute(1e-5));
        g_fused.assert_approx_eq::<f32>(&g_composed, Tolerance::absolute(1e-5));
        let inner =
            Tensor::<crate::TestBackend, 3>::from_data(TensorData::new(logits, [batch, seq, vocab]), &device);
        token_logprobs(inner, &targets)
            .into_data()
            .assert_approx_eq::<f32>(&out_composed, Tolerance::absolute(1e-5));
        let out: Vec<f32> = out_fused.to_vec().unwrap();
        for pair in out.chunks(2) {
            assert!(pair[0] <= 0.0, "a log-probability is at most 0");
            assert!(
                (0.0..=(vocab as f32).ln() + 1e-5).contains(&pair[1]),
                "entropy in [0, ln V]"
            );
        }
    }

    /// Values and gradients of the fused SwiGLU gate equal those of `silu(gate) * up`.
    #[test]
    fn swiglu_matches_the_composition_and_its_gradient() {
        // The second shape is large enough to run in bands on the pool.
        for shape in [[2, 5, 7], [3, 129, 100]] {
            swiglu_case(shape);
        }
    }

    fn swiglu_case(shape: [usize; 3]) {
        let device = Default::default();
        let normal = |std: f64| Tensor::<Ad, 3>::random(shape, Distribution::Normal(0.0, std), &device);
        let (gate, up, weights) =
            crate::config::with_seed::<Ad, _>(&device, 3, || (normal(3.0), normal(1.0), normal(1.0)));
        let run = |fused: bool| {
            let g = Tensor::<Ad, 3>::from_data(gate.to_data(), &device).require_grad();
            let u = Tensor::<Ad, 3>::from_data(up.to_data(), &device).require_grad();
            let out = if fused {
                swiglu(g.clone(), u.clone())
            } else {
                swiglu_composed(g.clone(), u.clone())
            };
            let grads = (out.clone() * weights.clone()).sum().backward();
            (
                out.into_data(),
                g.grad(&grads).unwrap().into_data(),
                u.grad(&grads).unwrap().into_data(),
            )
        };
        let (out_f, dg_f, du_f) = run(true);
        let (out_c, dg_c, du_c) = run(false);
        out_f.assert_approx_eq::<f32>(&out_c, Tolerance::absolute(1e-5));
        dg_f.assert_approx_eq::<f32>(&dg_c, Tolerance::absolute(1e-5));
        du_f.assert_approx_eq::<f32>(&du_c, Tolerance::absolute(1e-5));
    }

    /// The split product and its gradients equal burn's `matmul` and its gradients, for a
    /// product large enough to be split, with the right-hand side plain and as a transposed
    /// view (the tied LM head), and with one operand outside the graph; without autodiff too.
    #[test]
    fn matmul_matches_burns_and_its_gradients() {
        let device = Default::default();
        let (m, k, n) = (300, 48, 700);
        let (lhs, rhs, rhs_t, weights) = crate::config::with_seed::<Ad, _>(&device, 5, || {
            let normal =
                |shape: [usize; 2]| Tensor::<Ad, 2>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            (normal([m, k]), normal([k, n]), normal([n, k]), normal([m, n]))
        });
        for (transposed, lhs_tracked) in [(false, true), (true, true), (false, false)] {
            let run = |fused: bool| {
                let l = Tensor::<Ad, 2>::from_data(lhs.to_data(), &device);
                let l = if lhs_tracked { l.require_grad() } else { l };
                let r = if transposed { &rhs_t } else { &rhs };
                let r = Tensor::<Ad, 2>::from_data(r.to_data(), &device).require_grad();
                let view = if transposed {
                    r.clone().transpose()
                } else {
                    r.clone()
                };
                let out = if fused {
                    matmul(l.clone(), view)
                } else {
                    l.clone().matmul(view)
                };
                let grads = (out.clone() * weights.clone()).sum().backward();
                (
                    out.into_data(),
                    l.grad(&grads).map(|g| g.into_data()),
                    r.grad(&grads).unwrap().into_data(),
                )
            };
            let (out_f, dl_f, dr_f) = run(true);
            let (out_c, dl_c, dr_c) = run(false);
            let tolerance = Tolerance::absolute(1e-4);
            out_f.assert_approx_eq::<f32>(&out_c, tolerance);
            dr_f.assert_approx_eq::<f32>(&dr_c, tolerance);
            assert_eq!(dl_f.is_some(), lhs_tracked);
            if let (Some(f), Some(c)) = (dl_f, dl_c) {
                f.assert_approx_eq::<f32>(&c, tolerance);
            }
        }
        // Without autodiff.
        type B = crate::TestBackend;
        let (l, r) = (
            Tensor::<B, 2>::from_data(lhs.to_data(), &device),
            Tensor::<B, 2>::from_data(rhs_t.to_data(), &device).transpose(),
        );
        matmul(l.clone(), r.clone())
            .into_data()
            .assert_approx_eq::<f32>(&l.matmul(r).into_data(), Tolerance::absolute(1e-4));
    }

    /// Appending to a cache buffer gives the concatenation of everything appended, across
    /// growth of the buffer (none, reserved room, too little room), and a view handed out
    /// earlier keeps its values while it is held.
    #[test]
    fn appended_rows_equal_the_concatenation_and_held_views_never_change() {
        for reserve in [0, 211, 100] {
            append_rows_case(reserve);
        }
    }

    fn append_rows_case(reserve: usize) {
        type B = crate::TestBackend;
        let device = Default::default();
        let (batch, heads, dim) = (3, 2, 4);
        let mut buffer = None;
        let mut appended: Vec<Tensor<B, 4>> = Vec::new();
        let mut held: Vec<(Tensor<B, 4>, TensorData)> = Vec::new();
        let mut len = 0;
        for (step, added) in [5, 1, 1, 70, 3, 1, 130].into_iter().enumerate() {
            let new = Tensor::<B, 4>::random([batch, added, heads, dim], Distribution::Default, &device);
            appended.push(new.clone());
            let view = append_rows(&mut buffer, len, new, reserve);
            len += added;
            let expected = Tensor::cat(appended.clone(), 1);
            assert_eq!(view.dims(), [batch, len, heads, dim]);
            view.to_data().assert_eq(&expected.to_data(), true);
            if step % 2 == 0 {
                held.push((view.clone(), view.to_data()));
            }
        }
        for (view, data) in held {
            view.into_data().assert_eq(&data, true);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]

        /// RMSNorm: values and both gradients of the fused node equal the composition's, and
        /// the forward pass without autodiff equals it too, over random shapes and scales.
        #[test]
        fn rms_norm_matches_the_composition_and_its_gradient(
            batch in 1_usize..4,
            seq in 1_usize..9,
            hidden in 1_usize..40,
            scale in 0.01_f64..100.0,
            seed in 0_u64..1000,
        ) {
            rms_norm_case([batch, seq, hidden], scale, seed);
        }

        /// The rotation: values and the gradient of the fused node equal the composition's,
        /// and so does the forward pass without autodiff.
        #[test]
        fn rotary_matches_the_composition_and_its_gradient(
            batch in 1_usize..3,
            seq in 1_usize..6,
            heads in 1_usize..4,
            half in 1_usize..9,
            seed in 0_u64..1000,
        ) {
            rotary_case([batch, seq, heads, 2 * half], seed);
        }
    }

    /// RMSNorm and the rotation over inputs large enough to run in bands on the pool.
    #[test]
    fn norm_and_rotation_in_bands_match_their_compositions() {
        rms_norm_case([3, 130, 100], 3.0, 7);
        rotary_case([2, 100, 4, 48], 8);
    }

    fn rms_norm_case(shape: [usize; 3], scale: f64, seed: u64) {
        let device = Default::default();
        let [_, _, hidden] = shape;
        let (x, w, weights) = crate::config::with_seed::<Ad, _>(&device, seed, || {
            (
                Tensor::<Ad, 3>::random(shape, Distribution::Normal(0.0, scale), &device),
                Tensor::<Ad, 1>::random([hidden], Distribution::Normal(1.0, 0.5), &device),
                Tensor::<Ad, 3>::random(shape, Distribution::Normal(0.0, 1.0), &device),
            )
        });
        let eps = 1e-6;
        let run = |fused: bool| {
            let xs = Tensor::<Ad, 3>::from_data(x.to_data(), &device).require_grad();
            let ws = Tensor::<Ad, 1>::from_data(w.to_data(), &device).require_grad();
            let out = if fused {
                rms_norm(xs.clone(), ws.clone(), eps)
            } else {
                rms_norm_composed(xs.clone(), ws.clone(), eps)
            };
            let grads = (out.clone() * weights.clone()).sum().backward();
            (
                out.into_data(),
                xs.grad(&grads).unwrap().into_data(),
                ws.grad(&grads).unwrap().into_data(),
            )
        };
        let (out_f, dx_f, dw_f) = run(true);
        let (out_c, dx_c, dw_c) = run(false);
        let tolerance = Tolerance::rel_abs(1e-4, 1e-5);
        out_f.assert_approx_eq::<f32>(&out_c, tolerance);
        dx_f.assert_approx_eq::<f32>(&dx_c, tolerance);
        dw_f.assert_approx_eq::<f32>(&dw_c, Tolerance::rel_abs(1e-4, 1e-4));
        let x = Tensor::<crate::TestBackend, 3>::from_data(x.to_data(), &device);
        let w = Tensor::<crate::TestBackend, 1>::from_data(w.to_data(), &device);
        rms_norm(x.clone(), w.clone(), eps)
            .into_data()
            .assert_approx_eq::<f32>(&rms_norm_composed(x, w, eps).into_data(), tolerance);
    }

    fn rotary_case(shape: [usize; 4], seed: u64) {
        let device = Default::default();
        let normal = |std: f64| Tensor::<Ad, 4>::random(shape, Distribution::Normal(0.0, std), &device);
        let (x, cos, sin, weights) = crate::config::with_seed::<Ad, _>(&device, seed, || {
            (normal(2.0), normal(1.0), normal(1.0), normal(1.0))
        });
        let run = |fused: bool| {
            let xs = Tensor::<Ad, 4>::from_data(x.to_data(), &device).require_grad();
            let out = if fused {
                rotary(xs.clone(), cos.clone(), sin.clone())
            } else {
                rotary_composed(xs.clone(), cos.clone(), sin.clone())
            };
            let grads = (out.clone() * weights.clone()).sum().backward();
            (out.into_data(), xs.grad(&grads).unwrap().into_data())
        };
        let (out_f, dx_f) = run(true);
        let (out_c, dx_c) = run(false);
        out_f.assert_approx_eq::<f32>(&out_c, Tolerance::absolute(1e-5));
        dx_f.assert_approx_eq::<f32>(&dx_c, Tolerance::absolute(1e-5));
        let inner = |t: &Tensor<Ad, 4>| Tensor::<crate::TestBackend, 4>::from_data(t.to_data(), &device);
        rotary(inner(&x), inner(&cos), inner(&sin))
            .into_data()
            .assert_approx_eq::<f32>(
                &rotary_composed(inner(&x), inner(&cos), inner(&sin)).into_data(),
                Tolerance::absolute(1e-5),
            );
    }
}
