//! The rotary embedding's rotation as one operation on the CPU backend.
//!
//! `y = x cos + rotate_half(x) sin` over rows of one head's width `d`, where
//! `rotate_half(x) = cat(-x[d/2..], x[..d/2])`. The tables are constants, so only `x` has a
//! gradient: `dx = g cos + rotate_half^T(g sin)`, with `rotate_half^T(z) = cat(z[d/2..],
//! -z[..d/2])`. burn records the composition (a matmul by the rotation, two products and a
//! sum) as four nodes, each a pass forward and one or two backward.

use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn_flex::{Flex, FlexTensor};

use super::{FlexAutodiff, for_row_bands, zeros};

/// `x`, `cos` and `sin` of one shape, contiguous, rows of `head_dim` (even).
pub(super) fn forward(x: &FlexTensor, cos: &FlexTensor, sin: &FlexTensor, head_dim: usize) -> FlexTensor {
    let (x, cos, sin) = (x.to_contiguous(), cos.to_contiguous(), sin.to_contiguous());
    let dims = x.layout().shape().clone();
    let (xs, cs, ss): (&[f32], &[f32], &[f32]) = (x.storage(), cos.storage(), sin.storage());
    let half = head_dim / 2;
    let mut out = zeros(xs.len());
    for_row_bands(&mut out, head_dim, |first, out| {
        let range = first * head_dim..first * head_dim + out.len();
        let rows = out
            .chunks_exact_mut(head_dim)
            .zip(xs[range.clone()].chunks_exact(head_dim))
            .zip(cs[range.clone()].chunks_exact(head_dim))
            .zip(ss[range].chunks_exact(head_dim));
        for (((o, x), c), s) in rows {
            let (x_lo, x_hi) = x.split_at(half);
            let (o_lo, o_hi) = o.split_at_mut(half);
            let (c_lo, c_hi) = c.split_at(half);
            let (s_lo, s_hi) = s.split_at(half);
            for i in 0..half {
                o_lo[i] = x_lo[i] * c_lo[i] - x_hi[i] * s_lo[i];
                o_hi[i] = x_hi[i] * c_hi[i] + x_lo[i] * s_hi[i];
            }
        }
    });
    FlexTensor::from_data(TensorData::new(out, dims))
}

#[derive(Debug)]
struct RotaryBackward;

impl Backward<Flex, 1> for RotaryBackward {
    /// The tables, contiguous, and the head width.
    type State = (FlexTensor, FlexTensor, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let (cos, sin, head_dim) = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = grad.to_contiguous();
            let dims = grad.layout().shape().clone();
            let (gs, cs, ss): (&[f32], &[f32], &[f32]) = (grad.storage(), cos.storage(), sin.storage());
            let half = head_dim / 2;
            let mut dx = zeros(gs.len());
            for_row_bands(&mut dx, head_dim, |first, dx| {
                let range = first * head_dim..first * head_dim + dx.len();
                let rows = dx
                    .chunks_exact_mut(head_dim)
                    .zip(gs[range.clone()].chunks_exact(head_dim))
                    .zip(cs[range.clone()].chunks_exact(head_dim))
                    .zip(ss[range].chunks_exact(head_dim));
                for (((d, g), c), s) in rows {
                    let (g_lo, g_hi) = g.split_at(half);
                    let (d_lo, d_hi) = d.split_at_mut(half);
                    let (c_lo, c_hi) = c.split_at(half);
                    let (s_lo, s_hi) = s.split_at(half);
                    for i in 0..half {
                        d_lo[i] = g_lo[i] * c_lo[i] + g_hi[i] * s_hi[i];
                        d_hi[i] = g_hi[i] * c_hi[i] - g_lo[i] * s_lo[i];
                    }
                }
            });
            FlexTensor::from_data(TensorData::new(dx, dims))
        });
    }
}

/// The node on the autodiff backend; the tables carry no gradient.
pub(super) fn autodiff(
    x: Tensor<FlexAutodiff, 4>,
    cos: Tensor<FlexAutodiff, 4>,
    sin: Tensor<FlexAutodiff, 4>,
) -> Tensor<FlexAutodiff, 4> {
    let head_dim = x.dims()[3];
    let x = x.into_primitive().tensor();
    let cos = cos.into_primitive().tensor().primitive.to_contiguous();
    let sin = sin.into_primitive().tensor().primitive.to_contiguous();
    let out = forward(&x.primitive, &cos, &sin, head_dim);
    let out = match RotaryBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((cos, sin, head_dim), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
