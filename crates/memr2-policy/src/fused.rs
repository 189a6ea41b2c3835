//! Operations of our own with a gradient of their own, where burn's autodiff composes one
//! slowly.
//!
//! burn 0.21 differentiates a softmax as the operations it is written with (a maximum, a
//! subtraction, `exp`, a sum and a division), each recorded and differentiated on its own: the
//! backward pass computes `exp` again and runs the division's two-sided gradient over the
//! `[queries, keys]` scores. [`masked_softmax`] records one node instead, whose backward is
//! `p * (g - sum(g * p))` from the saved probabilities. It is taken on the CPU training backend
//! (`Autodiff<Flex>`), recognised by type at run time so that the model stays generic over
//! `B: Backend`; every other backend computes the same function from tensor operations. Tests
//! compare values and gradients of the two.

use std::any::Any;

use burn::backend::Autodiff;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ActivationOps, FloatTensorOps};
use burn::tensor::{Bool, Tensor, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn_flex::{Flex, FlexTensor};

/// The CPU training backend, on which the fused operations run.
type FlexAutodiff = Autodiff<Flex>;

/// `softmax` over the last axis of `scores` `[.., keys]`, with the positions where `masked` is
/// true left out (probability 0). Every row must keep at least one position.
pub fn masked_softmax<B: Backend>(scores: Tensor<B, 4>, masked: Tensor<B, 4, Bool>) -> Tensor<B, 4> {
    let inputs: Box<dyn Any> = Box::new((scores, masked));
    match inputs.downcast::<(Tensor<FlexAutodiff, 4>, Tensor<FlexAutodiff, 4, Bool>)>() {
        Ok(flex) => {
            let (scores, masked) = *flex;
            let out: Box<dyn Any> = Box::new(masked_softmax_flex(scores, masked));
            *out.downcast::<Tensor<B, 4>>()
                .expect("the output has the input's type")
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    type Ad = Autodiff<crate::TestBackend>;

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
        let scores = Tensor::<Ad, 4>::random(shape, Distribution::Normal(0.0, 2.0), &device);
        let weights = Tensor::<Ad, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
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
}
