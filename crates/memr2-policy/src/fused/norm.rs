//! RMSNorm as one operation on the CPU backend: one pass over each row forward, one backward
//! that gives the input's and the weight's gradients together.
//!
//! burn differentiates `x / sqrt(mean(x^2) + eps) * w` as the six operations it is written
//! with (a square, a mean, a scalar sum, a square root, a broadcast division and a broadcast
//! product), each a pass over the `[rows, hidden]` activations forward and one or two
//! backward, with the weight's gradient a product and a sum over rows of its own. Here, with
//! `r = 1 / sqrt(mean(x^2) + eps)` kept per row:
//!
//! - `y = x r w`;
//! - `dx = r (g w) - x r^3 mean(g w x)`;
//! - `dw = sum over rows of g x r`.

use burn::tensor::{TensorData, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::{Flex, FlexTensor};

use rayon::prelude::*;

use super::{FlexAutodiff, LANES, PARALLEL_ELEMENTS, band_rows, for_row_bands2, sum, zeros};
use burn::tensor::Tensor;

/// `x` `[rows, hidden]` normalised row by row and scaled by `w` `[hidden]`; also returns each
/// row's `r`.
pub(super) fn forward(x: &FlexTensor, w: &FlexTensor, eps: f32) -> (FlexTensor, Vec<f32>) {
    let (x, w) = (x.to_contiguous(), w.to_contiguous());
    let dims = x.layout().shape();
    let [rows, hidden] = [dims[0], dims[1]];
    let (xs, ws): (&[f32], &[f32]) = (x.storage(), w.storage());
    let mut out = zeros(rows * hidden);
    let mut inv = vec![0.0_f32; rows];
    let band = |first: usize, out: &mut [f32], inv: &mut [f32]| {
        let xs = &xs[first * hidden..];
        for ((row, o), r) in xs
            .chunks_exact(hidden)
            .zip(out.chunks_exact_mut(hidden))
            .zip(inv.iter_mut())
        {
            *r = 1.0 / (sum_of_squares(row) / hidden as f32 + eps).sqrt();
            for ((o, &v), &w) in o.iter_mut().zip(row).zip(ws) {
                *o = v * *r * w;
            }
        }
    };
    for_row_bands2((&mut out, hidden), (&mut inv, 1), band);
    (FlexTensor::from_data(TensorData::new(out, [rows, hidden])), inv)
}

/// `sum(x^2)` over a row, in lanes that vectorise.
fn sum_of_squares(row: &[f32]) -> f32 {
    let mut lanes = [0.0_f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v * v;
        }
    }
    sum(&lanes) + tail
}

#[derive(Debug)]
struct RmsNormBackward;

/// The input and the weight, contiguous, and each row's `r`.
#[derive(Debug, Clone)]
struct State {
    x: FlexTensor,
    w: FlexTensor,
    inv: Vec<f32>,
}

impl Backward<Flex, 2> for RmsNormBackward {
    type State = State;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let State { x, w, inv } = ops.state;
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let dims = x.layout().shape();
        let [rows, hidden] = [dims[0], dims[1]];
        let (g, xs, ws): (&[f32], &[f32], &[f32]) = (grad.storage(), x.storage(), w.storage());
        let [x_node, w_node] = ops.parents;
        let mut dx = zeros(if x_node.is_some() { rows * hidden } else { 0 });
        // A band of rows from `first`: its rows of `dx` (when wanted) and its part of `dw`.
        let band = |first: usize, count: usize, dx: Option<&mut [f32]>| -> Vec<f32> {
            let mut dw = vec![0.0_f32; hidden];
            let mut gw = vec![0.0_f32; hidden];
            let span = first * hidden..(first + count) * hidden;
            let (g, xs) = (&g[span.clone()], &xs[span]);
            let mut dx = dx;
            for (i, (&r, (g, x))) in inv[first..first + count]
                .iter()
                .zip(g.chunks_exact(hidden).zip(xs.chunks_exact(hidden)))
                .enumerate()
            {
                for (((gw, &g), &w), (dw, &x)) in gw.iter_mut().zip(g).zip(ws).zip(dw.iter_mut().zip(x)) {
                    *gw = g * w;
                    *dw += g * x * r;
                }
                if let Some(dx) = dx.as_deref_mut() {
                    let mut lanes = [0.0_f32; LANES];
                    let chunks = gw.chunks_exact(LANES).zip(x.chunks_exact(LANES));
                    for (gw, x) in chunks {
                        for ((lane, &a), &b) in lanes.iter_mut().zip(gw).zip(x) {
                            *lane += a * b;
                        }
                    }
                    let rem = hidden - hidden % LANES;
                    let tail: f32 = gw[rem..].iter().zip(&x[rem..]).map(|(a, b)| a * b).sum();
                    let k = r * r * r * (sum(&lanes) + tail) / hidden as f32;
                    let d = &mut dx[i * hidden..(i + 1) * hidden];
                    for ((d, &gw), &x) in d.iter_mut().zip(&gw).zip(x) {
                        *d = r * gw - x * k;
                    }
                }
            }
            dw
        };
        // The weight's gradient sums the bands' parts in order: the same bits whatever the
        // number of threads.
        let parts: Vec<Vec<f32>> = if rows * hidden < PARALLEL_ELEMENTS || hidden == 0 {
            vec![band(0, rows, x_node.is_some().then_some(&mut dx[..]))]
        } else {
            let n = band_rows(hidden);
            if x_node.is_some() {
                dx.par_chunks_mut(n * hidden)
                    .enumerate()
                    .map(|(i, dx)| band(i * n, dx.len() / hidden, Some(dx)))
                    .collect()
            } else {
                (0..rows.div_ceil(n))
                    .into_par_iter()
                    .map(|i| band(i * n, n.min(rows - i * n), None))
                    .collect()
            }
        };
        let mut dw = vec![0.0_f32; hidden];
        for part in parts {
            dw.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }
        if let Some(node) = x_node {
            grads.register::<Flex>(
                node.id,
                FlexTensor::from_data(TensorData::new(dx, [rows, hidden])),
            );
        }
        if let Some(node) = w_node {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dw, [hidden])));
        }
    }
}

/// The node on the autodiff backend: `x` `[rows, hidden]`, `w` `[hidden]`.
pub(super) fn autodiff(
    x: Tensor<FlexAutodiff, 2>,
    w: Tensor<FlexAutodiff, 1>,
    eps: f32,
) -> Tensor<FlexAutodiff, 2> {
    let (x, w) = (x.into_primitive().tensor(), w.into_primitive().tensor());
    let (out, inv) = forward(&x.primitive, &w.primitive, eps);
    let out = match RmsNormBackward
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = State {
                x: x.primitive.to_contiguous(),
                w: w.primitive.to_contiguous(),
                inv,
            };
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
