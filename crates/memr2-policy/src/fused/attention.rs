//! Masked dot-product attention as one operation with a gradient of its own, on the CPU
//! backend.
//!
//! `softmax(q k^T, masked) v` for grouped queries, read and written in the projections'
//! sequence-major layout (`[batch, seq, heads, dim]`) through the products' strides, so no
//! head-major copy of the queries, keys, values, output or their gradients is made. Worked
//! through in blocks of [`BLOCK`] query positions of one query head:
//! - keys after the last one any row of the block may see are never touched, so a causal
//!   mask skips about half of the products that the composition computes whole and masks
//!   afterwards;
//! - a block's scores live in a buffer of `BLOCK x keys` that stays in cache while the mask,
//!   the softmax and the product with the values use it, where the composition writes the
//!   `[queries, keys]` scores of every head out and reads them back once per operation
//!   (about a dozen passes forward and backward);
//! - the backward pass recomputes a block's probabilities from the scores and each row's saved
//!   log-sum-exp (FlashAttention's recomputation) instead of keeping them per layer.
//!
//! The batch's sequences run in parallel (rayon); each product is one `gemm` call on one
//! thread.

use burn::tensor::{Bool, DType, Tensor, TensorData, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::product::gemm_into;
use super::{FlexAutodiff, exp, max, sum, zeros};

/// Query rows per block: a block's scores (`BLOCK x keys` floats, 96 KiB at 384 keys) stay
/// in the L2 cache.
const BLOCK: usize = 64;

/// The operands' sizes. Query head `h` attends with key/value head `h / rep`.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    keys: usize,
    dim: usize,
    value_dim: usize,
}

impl Dims {
    fn rep(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// The inputs: `q` `[batch, seq, heads, dim]`, `mask` `[batch, seq, keys]` (non-zero = may
/// not attend), contiguous; `k` `[batch, keys, kv_heads, dim]` and `v` `[batch, keys,
/// kv_heads, value_dim]` contiguous within each sequence, at the batch stride of their
/// [`Rows`] (a view of the key/value cache's buffer is read in place).
#[derive(Debug, Clone)]
struct Inputs {
    q: FlexTensor,
    k: Rows,
    v: Rows,
    mask: FlexTensor,
    dims: Dims,
}

/// A `[batch, ..]` tensor whose every sequence is one contiguous run of its storage, from
/// `offset` at `stride` elements apart.
#[derive(Debug, Clone)]
struct Rows {
    tensor: FlexTensor,
    offset: usize,
    stride: usize,
}

impl Rows {
    /// `t` read in place when each sequence is contiguous (the first axis's stride at least a
    /// sequence long), else a contiguous copy.
    fn new(t: &FlexTensor) -> Self {
        let (shape, strides) = (t.layout().shape(), t.layout().strides());
        let inner: usize = (1..shape.num_dims()).map(|axis| shape[axis]).product();
        let mut expected = 1;
        let mut contiguous_within = true;
        for axis in (1..shape.num_dims()).rev() {
            contiguous_within &= shape[axis] == 1 || strides[axis] == expected as isize;
            expected *= shape[axis];
        }
        let stride = strides[0];
        if contiguous_within && (shape[0] == 1 || stride >= inner as isize) && stride >= 0 {
            Self {
                tensor: t.clone(),
                offset: t.layout().start_offset(),
                stride: if shape[0] == 1 { inner } else { stride as usize },
            }
        } else {
            Self {
                tensor: t.to_contiguous(),
                offset: 0,
                stride: inner,
            }
        }
    }

    /// Sequence `b`, `len` elements.
    fn sequence(&self, b: usize, len: usize) -> &[f32] {
        let at = self.offset + b * self.stride;
        &self.tensor.storage::<f32>()[at..at + len]
    }
}

impl Inputs {
    fn new(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor, mask: &FlexTensor) -> Self {
        let (qs, ks, vs) = (q.layout().shape(), k.layout().shape(), v.layout().shape());
        Self {
            q: q.to_contiguous(),
            k: Rows::new(k),
            v: Rows::new(v),
            mask: mask.to_contiguous(),
            dims: Dims {
                batch: qs[0],
                seq: qs[1],
                heads: qs[2],
                kv_heads: ks[2],
                keys: ks[1],
                dim: qs[3],
                value_dim: vs[3],
            },
        }
    }

    /// The slices of one sequence of the batch.
    fn sequence(&self, b: usize) -> Sequence<'_> {
        let d = self.dims;
        fn part(t: &FlexTensor, b: usize, len: usize) -> &[f32] {
            &t.storage::<f32>()[b * len..(b + 1) * len]
        }
        let q = part(&self.q, b, d.seq * d.heads * d.dim);
        let k = self.k.sequence(b, d.keys * d.kv_heads * d.dim);
        let v = self.v.sequence(b, d.keys * d.kv_heads * d.value_dim);
        let mask = &self.mask.bytes()[b * d.seq * d.keys..(b + 1) * d.seq * d.keys];
        // All heads share the mask, so the keys each block of rows sees are found once.
        let ends = mask
            .chunks(BLOCK * d.keys.max(1))
            .map(|rows| visible_end(rows, d.keys))
            .collect();
        Sequence {
            q,
            k,
            v,
            mask,
            ends,
            d,
        }
    }
}

/// One past the last key that any row of a block may see (`mask` holds the block's rows of
/// `keys` each); 0 when every key is masked for every row.
fn visible_end(mask: &[u8], keys: usize) -> usize {
    mask.chunks_exact(keys)
        .map(|row| row.iter().rposition(|&m| m == 0).map_or(0, |j| j + 1))
        .max()
        .unwrap_or(0)
}

/// Turns one row of scores into probabilities in place (masked positions 0) and returns the
/// row's log-sum-exp over its visible keys; `+inf` for a row that sees no key, whose
/// probabilities are then all 0 (in the forward pass and in the backward's recomputation).
fn softmax_row(scores: &mut [f32], mask: &[u8]) -> f32 {
    for (s, &m) in scores.iter_mut().zip(mask) {
        *s = if m == 0 { *s } else { f32::NEG_INFINITY };
    }
    let max = max(scores);
    if max == f32::NEG_INFINITY {
        scores.fill(0.0);
        return f32::INFINITY;
    }
    for (s, &m) in scores.iter_mut().zip(mask) {
        let e = exp(*s - max);
        *s = if m == 0 { e } else { 0.0 };
    }
    let total = sum(scores);
    let inv = 1.0 / total;
    scores.iter_mut().for_each(|s| *s *= inv);
    max + total.ln()
}

/// The probabilities of one row from its scores and log-sum-exp, in place.
fn probabilities_row(scores: &mut [f32], mask: &[u8], lse: f32) {
    for (s, &m) in scores.iter_mut().zip(mask) {
        let e = exp(*s - lse);
        *s = if m == 0 { e } else { 0.0 };
    }
}

/// One sequence's operands.
struct Sequence<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    mask: &'a [u8],
    /// Per block of [`BLOCK`] query positions, one past the last key any of its rows sees.
    ends: Vec<usize>,
    d: Dims,
}

/// A block of query positions `start..start + rows` of query head `head`.
#[derive(Debug, Clone, Copy)]
struct Block {
    head: usize,
    start: usize,
    rows: usize,
}

/// Every block of a sequence, head by head.
fn blocks(d: Dims) -> impl Iterator<Item = Block> {
    (0..d.heads).flat_map(move |head| {
        (0..d.seq).step_by(BLOCK).map(move |start| Block {
            head,
            start,
            rows: BLOCK.min(d.seq - start),
        })
    })
}

impl<'a> Sequence<'a> {
    /// Row stride of the queries (and of their gradient).
    fn q_rs(&self) -> usize {
        self.d.heads * self.d.dim
    }

    /// Row stride of the keys (and of their gradient).
    fn k_rs(&self) -> usize {
        self.d.kv_heads * self.d.dim
    }

    /// Row stride of the values (and of their gradient).
    fn v_rs(&self) -> usize {
        self.d.kv_heads * self.d.value_dim
    }

    /// Row stride of the output (and of its gradient).
    fn o_rs(&self) -> usize {
        self.d.heads * self.d.value_dim
    }

    /// Offsets of a block's first query row, and of its key/value head's first key and value.
    fn offsets(&self, block: Block) -> (usize, usize, usize) {
        let kv = block.head / self.d.rep();
        (
            block.start * self.q_rs() + block.head * self.d.dim,
            kv * self.d.dim,
            kv * self.d.value_dim,
        )
    }

    /// A block's mask rows, the keys it sees, and its scores `q k^T` over those keys written
    /// into `scratch` (`rows x end`).
    fn scores<'s>(&self, block: Block, scratch: &'s mut Vec<f32>) -> (&'a [u8], usize, &'s mut [f32]) {
        let (d, rows) = (self.d, block.rows);
        let mask = &self.mask[block.start * d.keys..(block.start + rows) * d.keys];
        let end = self.ends[block.start / BLOCK];
        if scratch.len() < rows * end {
            scratch.resize(rows * end, 0.0);
        }
        let scores = &mut scratch[..rows * end];
        let (q_at, k_at, _) = self.offsets(block);
        gemm_into(
            (rows, end, d.dim),
            scores,
            end,
            false,
            &self.q[q_at..],
            (self.q_rs(), 1),
            &self.k[k_at..],
            (1, self.k_rs()),
        );
        (mask, end, scores)
    }
}

/// The forward pass: the output `[batch, seq, heads, value_dim]` and each row's log-sum-exp
/// (`[batch, heads, seq]`).
fn forward(inputs: &Inputs) -> (Vec<f32>, Vec<f32>) {
    let d = inputs.dims;
    let mut out = zeros(d.batch * d.seq * d.heads * d.value_dim);
    let mut lse = vec![0.0_f32; d.batch * d.heads * d.seq];
    if out.is_empty() || d.keys == 0 {
        return (out, lse);
    }
    let (out_len, lse_len) = (d.seq * d.heads * d.value_dim, d.heads * d.seq);
    let sequence_pass = |scratch: &mut Vec<f32>, (b, (out, lse)): (usize, (&mut [f32], &mut [f32]))| {
        let sequence = inputs.sequence(b);
        for block in blocks(d) {
            let (mask, end, p) = sequence.scores(block, scratch);
            let first = block.head * d.seq + block.start;
            for (row, l) in lse[first..first + block.rows].iter_mut().enumerate() {
                *l = softmax_row(&mut p[row * end..(row + 1) * end], &mask[row * d.keys..]);
            }
            let (_, _, v_at) = sequence.offsets(block);
            let o_at = block.start * sequence.o_rs() + block.head * d.value_dim;
            gemm_into(
                (block.rows, d.value_dim, end),
                &mut out[o_at..],
                sequence.o_rs(),
                false,
                p,
                (end, 1),
                &sequence.v[v_at..],
                (sequence.v_rs(), 1),
            );
        }
    };
    if parallel(d) {
        out.par_chunks_mut(out_len)
            .zip(lse.par_chunks_mut(lse_len))
            .enumerate()
            .for_each_init(Vec::new, sequence_pass);
    } else {
        let mut scratch = Vec::new();
        out.chunks_mut(out_len)
            .zip(lse.chunks_mut(lse_len))
            .enumerate()
            .for_each(|item| sequence_pass(&mut scratch, item));
    }
    (out, lse)
}

/// Work (multiply-adds) below which the sequences run one after the other on the calling
/// thread: handing a small call (a decoding step's attention) to rayon's pool costs more than
/// it saves.
const PARALLEL_WORK: usize = 1 << 20;

fn parallel(d: Dims) -> bool {
    d.batch > 1 && d.batch * d.heads * d.seq * d.keys * (d.dim + d.value_dim) >= PARALLEL_WORK
}

/// The backward pass from the output's gradient: the gradients of `q`, `k` and `v`, in their
/// layouts.
fn backward(inputs: &Inputs, out: &[f32], lse: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = inputs.dims;
    let q_len = d.seq * d.heads * d.dim;
    let (k_len, v_len) = (d.keys * d.kv_heads * d.dim, d.keys * d.kv_heads * d.value_dim);
    let o_len = d.seq * d.heads * d.value_dim;
    let mut dq = zeros(d.batch * q_len);
    let mut dk = zeros(d.batch * k_len);
    let mut dv = zeros(d.batch * v_len);
    if d.batch * d.seq * d.keys * d.heads == 0 {
        return (dq, dk, dv);
    }
    type Item<'a> = (usize, ((&'a mut [f32], &'a mut [f32]), &'a mut [f32]));
    let sequence_pass = |(scratch, scratch_dp): &mut (Vec<f32>, Vec<f32>), (b, ((dq, dk), dv)): Item<'_>| {
        let sequence = inputs.sequence(b);
        let out = &out[b * o_len..(b + 1) * o_len];
        let grad = &grad[b * o_len..(b + 1) * o_len];
        let lse = &lse[b * d.heads * d.seq..(b + 1) * d.heads * d.seq];
        let (q_rs, k_rs, v_rs, o_rs) = (sequence.q_rs(), sequence.k_rs(), sequence.v_rs(), sequence.o_rs());
        for block in blocks(d) {
            let rows = block.rows;
            let (mask, end, p) = sequence.scores(block, scratch);
            let first = block.head * d.seq + block.start;
            for row in 0..rows {
                probabilities_row(
                    &mut p[row * end..(row + 1) * end],
                    &mask[row * d.keys..],
                    lse[first + row],
                );
            }
            let (q_at, k_at, v_at) = sequence.offsets(block);
            let o_at = block.start * o_rs + block.head * d.value_dim;
            let grad_block = &grad[o_at..];
            // dv[..end] += p^T grad_block
            gemm_into(
                (end, d.value_dim, rows),
                &mut dv[v_at..],
                v_rs,
                true,
                p,
                (1, end),
                grad_block,
                (o_rs, 1),
            );
            // dp = grad_block v[..end]^T, then ds = p (dp - rowsum(grad * out)) in place.
            if scratch_dp.len() < rows * end {
                scratch_dp.resize(rows * end, 0.0);
            }
            let ds = &mut scratch_dp[..rows * end];
            gemm_into(
                (rows, end, d.value_dim),
                ds,
                end,
                false,
                grad_block,
                (o_rs, 1),
                &sequence.v[v_at..],
                (1, v_rs),
            );
            for row in 0..rows {
                let at = o_at + row * o_rs;
                let delta: f32 = grad[at..at + d.value_dim]
                    .iter()
                    .zip(&out[at..at + d.value_dim])
                    .map(|(g, o)| g * o)
                    .sum();
                let range = row * end..(row + 1) * end;
                for (s, &p) in ds[range.clone()].iter_mut().zip(&p[range]) {
                    *s = p * (*s - delta);
                }
            }
            // dq_block = ds k[..end]; dk[..end] += ds^T q_block.
            gemm_into(
                (rows, d.dim, end),
                &mut dq[q_at..],
                q_rs,
                false,
                ds,
                (end, 1),
                &sequence.k[k_at..],
                (k_rs, 1),
            );
            gemm_into(
                (end, d.dim, rows),
                &mut dk[k_at..],
                k_rs,
                true,
                ds,
                (1, end),
                &sequence.q[q_at..],
                (q_rs, 1),
            );
        }
    };
    if parallel(d) {
        dq.par_chunks_mut(q_len)
            .zip(dk.par_chunks_mut(k_len))
            .zip(dv.par_chunks_mut(v_len))
            .enumerate()
            .for_each_init(|| (Vec::new(), Vec::new()), sequence_pass);
    } else {
        let mut scratch = (Vec::new(), Vec::new());
        dq.chunks_mut(q_len)
            .zip(dk.chunks_mut(k_len))
            .zip(dv.chunks_mut(v_len))
            .enumerate()
            .for_each(|item| sequence_pass(&mut scratch, item));
    }
    (dq, dk, dv)
}

/// The gradients of [`masked_attention`](super::masked_attention) with respect to the
/// queries, keys and values.
#[derive(Debug)]
struct AttentionBackward;

/// What the backward pass needs: the inputs, the output (the node's own tensor, shared) and
/// the rows' log-sum-exps.
#[derive(Debug, Clone)]
struct AttentionState {
    inputs: Inputs,
    out: FlexTensor,
    lse: Vec<f32>,
}

impl Backward<Flex, 3> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let AttentionState { inputs, out, lse } = ops.state;
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (dq, dk, dv) = backward(&inputs, out.storage::<f32>(), &lse, grad.storage::<f32>());
        let d = inputs.dims;
        let shapes = [
            [d.batch, d.seq, d.heads, d.dim],
            [d.batch, d.keys, d.kv_heads, d.dim],
            [d.batch, d.keys, d.kv_heads, d.value_dim],
        ];
        for ((node, g), shape) in ops.parents.into_iter().zip([dq, dk, dv]).zip(shapes) {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(g, shape)));
            }
        }
    }
}

fn output(inputs: &Inputs, out: Vec<f32>) -> FlexTensor {
    let d = inputs.dims;
    FlexTensor::from_data(TensorData::new(out, [d.batch, d.seq, d.heads, d.value_dim]))
}

/// The attention on `Autodiff<Flex>`: one node whose backward is [`backward`]. `masked`
/// `[batch, 1, seq, keys]`.
pub(super) fn attention_autodiff(
    q: Tensor<FlexAutodiff, 4>,
    k: Tensor<FlexAutodiff, 4>,
    v: Tensor<FlexAutodiff, 4>,
    masked: Tensor<FlexAutodiff, 4, Bool>,
) -> Tensor<FlexAutodiff, 4> {
    let (q, k, v) = (
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
    );
    let inputs = Inputs::new(&q.primitive, &k.primitive, &v.primitive, &masked.into_primitive());
    let (out, lse) = forward(&inputs);
    let result = output(&inputs, out);
    let result = match AttentionBackward
        .prepare::<NoCheckpointing>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let out = result.clone();
            prep.finish(AttentionState { inputs, out, lse }, result)
        }
        OpsKind::UnTracked(prep) => prep.finish(result),
    };
    Tensor::from_primitive(TensorPrimitive::Float(result))
}

/// The attention on `Flex` without autodiff (generation): the same forward pass.
pub(super) fn attention_inference(
    q: Tensor<Flex, 4>,
    k: Tensor<Flex, 4>,
    v: Tensor<Flex, 4>,
    masked: Tensor<Flex, 4, Bool>,
) -> Tensor<Flex, 4> {
    let inputs = Inputs::new(
        &q.into_primitive().tensor(),
        &k.into_primitive().tensor(),
        &v.into_primitive().tensor(),
        &masked.into_primitive(),
    );
    let (out, _) = forward(&inputs);
    Tensor::from_primitive(TensorPrimitive::Float(output(&inputs, out)))
}

/// Whether the fused kernels can take these operands (f32 throughout).
pub(super) fn supported(dtypes: [DType; 3]) -> bool {
    dtypes.iter().all(|&d| d == DType::F32)
}
