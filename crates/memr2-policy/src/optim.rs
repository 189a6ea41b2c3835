//! AdamW with its update as one pass over each parameter on the CPU backend.
//!
//! burn's `AdamW` updates a parameter with about a dozen element-wise tensor operations (the
//! two moments, their bias corrections, the square root, the division, the decay and the
//! step), each a pass over the parameter that allocates its output. flex runs them on the
//! calling thread, and in the training loop of the policy benchmark's tiny model they were
//! about 4% of a step with the other core waiting. [`AdamW`] here computes the same update,
//! element by element in the same order of operations (so the same bits), keeps the same
//! state ([`AdamWState`], so the records either optimizer saves load into the other), and on
//! flex makes one pass over the parameter, its gradient and its moments, in bands on rayon's
//! pool. On other backends it runs burn's operations.
//!
//! Not supported: AMSGrad and cautious weight decay (burn's options, off by default; nothing
//! here uses them).

use std::any::Any;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamWState, AdaptiveMomentumState, LearningRate, SimpleOptimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::Device;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use crate::fused::{BAND_ELEMENTS as BAND, PARALLEL_ELEMENTS, retype, zeros};

/// [`AdamW`]'s settings; the defaults are burn's `AdamWConfig`'s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Decay of the first moment.
    pub beta_1: f32,
    /// Decay of the second moment.
    pub beta_2: f32,
    /// Added to the second moment's square root.
    pub epsilon: f32,
    /// Decoupled weight decay, per unit of learning rate.
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-5,
            weight_decay: 1e-4,
        }
    }
}

impl AdamWConfig {
    /// burn's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same with another weight decay.
    pub fn with_weight_decay(self, weight_decay: f32) -> Self {
        Self { weight_decay, ..self }
    }

    /// The optimizer for a module, as burn's `AdamWConfig::init` gives it.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(&self) -> OptimizerAdaptor<AdamW, M, B> {
        OptimizerAdaptor::from(AdamW { config: *self })
    }
}

/// AdamW, the same update and state as burn's, one pass per parameter on flex.
#[derive(Debug, Clone, Copy)]
pub struct AdamW {
    config: AdamWConfig,
}

impl<B: Backend> SimpleOptimizer<B> for AdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let state = state.map(|s| s.momentum);
        let time = state.as_ref().map_or(1, |s| s.time + 1);
        let moments = state.map(|s| (s.moment_1, s.moment_2));
        let f32s = tensor.dtype() == DType::F32 && grad.dtype() == DType::F32;
        let inputs: Box<dyn Any> = Box::new((tensor, grad, moments));
        type Inputs<B, const D: usize> = (Tensor<B, D>, Tensor<B, D>, Option<(Tensor<B, D>, Tensor<B, D>)>);
        let inputs = match inputs.downcast::<Inputs<Flex, D>>() {
            Ok(flex) if f32s => Ok(*flex),
            Ok(flex) => Err(flex as Box<dyn Any>),
            Err(inputs) => Err(inputs),
        };
        let (tensor, moment_1, moment_2) = match inputs {
            Ok((tensor, grad, moments)) => {
                let [tensor, m, v] = self.flex_step(lr, time, tensor, grad, moments);
                (retype(tensor), retype(m), retype(v))
            }
            Err(inputs) => {
                let (tensor, grad, moments) = *inputs
                    .downcast::<Inputs<B, D>>()
                    .expect("the inputs keep their type");
                self.composed_step(lr, time, tensor, grad, moments)
            }
        };
        let momentum = AdaptiveMomentumState::new(time, moment_1, moment_2);
        (tensor, Some(AdamWState::new(momentum)))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device<B>) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

impl AdamW {
    /// burn's composition: the moments, their bias corrections, `m / (sqrt(v) + eps)`, the
    /// decay and the step. Returns the parameter and the two moments.
    fn composed_step<B: Backend, const D: usize>(
        &self,
        lr: LearningRate,
        time: usize,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        moments: Option<(Tensor<B, D>, Tensor<B, D>)>,
    ) -> (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>) {
        let c = &self.config;
        let (f1, f2) = (1.0 - c.beta_1, 1.0 - c.beta_2);
        let (m, v) = match moments {
            Some((m, v)) => (
                m.mul_scalar(c.beta_1).add(grad.clone().mul_scalar(f1)),
                v.mul_scalar(c.beta_2).add(grad.square().mul_scalar(f2)),
            ),
            None => (grad.clone().mul_scalar(f1), grad.square().mul_scalar(f2)),
        };
        let (c1, c2) = corrections(c, time);
        let delta = m
            .clone()
            .div_scalar(c1)
            .div(v.clone().div_scalar(c2).sqrt().add_scalar(c.epsilon));
        let decay_rate = lr * c.weight_decay as f64;
        let decayed = if decay_rate == 0.0 {
            tensor
        } else {
            tensor.mul_scalar(1.0 - decay_rate)
        };
        (decayed - delta.mul_scalar(lr), m, v)
    }

    /// The same update in one pass over each element, in bands on rayon's pool when large.
    fn flex_step<const D: usize>(
        &self,
        lr: LearningRate,
        time: usize,
        tensor: Tensor<Flex, D>,
        grad: Tensor<Flex, D>,
        moments: Option<(Tensor<Flex, D>, Tensor<Flex, D>)>,
    ) -> [Tensor<Flex, D>; 3] {
        let c = self.config;
        let shape = tensor.shape();
        let flat = |t: Tensor<Flex, D>| t.into_primitive().tensor().to_contiguous();
        let (p, g) = (flat(tensor), flat(grad));
        let moments = moments.map(|(m, v)| (flat(m), flat(v)));
        let (ps, gs): (&[f32], &[f32]) = (p.storage(), g.storage());
        let ms: Option<(&[f32], &[f32])> = moments.as_ref().map(|(m, v)| (m.storage(), v.storage()));
        let (f1, f2) = (1.0 - c.beta_1, 1.0 - c.beta_2);
        let (c1, c2) = corrections(&c, time);
        let decay_rate = lr * c.weight_decay as f64;
        // burn multiplies by these as f32 scalars.
        let (keep, lr32) = ((1.0 - decay_rate) as f32, lr as f32);
        let n = ps.len();
        let (mut p_out, mut m_out, mut v_out) = (zeros(n), zeros(n), zeros(n));
        let band = |first: usize, p_out: &mut [f32], m_out: &mut [f32], v_out: &mut [f32]| {
            for (i, ((p_out, m_out), v_out)) in p_out.iter_mut().zip(m_out).zip(v_out).enumerate() {
                let at = first + i;
                let g = gs[at];
                let (m, v) = match ms {
                    Some((m, v)) => (m[at] * c.beta_1 + g * f1, v[at] * c.beta_2 + (g * g) * f2),
                    None => (g * f1, (g * g) * f2),
                };
                let delta = (m / c1) / ((v / c2).sqrt() + c.epsilon);
                let p = if decay_rate == 0.0 { ps[at] } else { ps[at] * keep };
                *p_out = p - delta * lr32;
                *m_out = m;
                *v_out = v;
            }
        };
        if n < PARALLEL_ELEMENTS {
            band(0, &mut p_out, &mut m_out, &mut v_out);
        } else {
            p_out
                .par_chunks_mut(BAND)
                .zip(m_out.par_chunks_mut(BAND))
                .zip(v_out.par_chunks_mut(BAND))
                .enumerate()
                .for_each(|(i, ((p, m), v))| band(i * BAND, p, m, v));
        }
        [p_out, m_out, v_out].map(|values| {
            let t = FlexTensor::from_data(TensorData::new(values, shape.clone()));
            Tensor::from_primitive(TensorPrimitive::Float(t))
        })
    }
}

/// The bias corrections `1 - beta^t` of the two moments, as burn computes them.
fn corrections(c: &AdamWConfig, time: usize) -> (f32, f32) {
    let t = time as i32;
    (1.0 - c.beta_1.powi(t), 1.0 - c.beta_2.powi(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Transformer, TransformerConfig};
    use burn::backend::Autodiff;
    use burn::optim::{GradientsParams, Optimizer};
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
    use burn::tensor::Int;

    type Ad = Autodiff<crate::TestBackend>;

    fn model() -> Transformer<Ad> {
        TransformerConfig::tiny_sized(64, 64, 1, 2).init_seeded(3, &Default::default())
    }

    fn grads(model: &Transformer<Ad>, shift: i64) -> GradientsParams {
        let device = Default::default();
        let tokens = Tensor::<Ad, 2, Int>::from_data(
            TensorData::new(
                (0..24).map(|i| (i * 7 + shift) % 64).collect::<Vec<i64>>(),
                [2, 12],
            ),
            &device,
        );
        let mask =
            Tensor::<Ad, 2, burn::tensor::Bool>::from_data(TensorData::new(vec![true; 24], [2, 12]), &device);
        let loss = model.forward(tokens, mask).square().mean();
        GradientsParams::from_grads(loss.backward(), model)
    }

    /// The model's output on a fixed input, with its embedding table: the same bits only when
    /// the weights are.
    fn weights(model: &Transformer<Ad>) -> Vec<f32> {
        let device = Default::default();
        let tokens =
            Tensor::<Ad, 2, Int>::from_data(TensorData::new((0..10).collect::<Vec<i64>>(), [1, 10]), &device);
        let mask =
            Tensor::<Ad, 2, burn::tensor::Bool>::from_data(TensorData::new(vec![true; 10], [1, 10]), &device);
        let mut out: Vec<f32> = model.forward(tokens, mask).into_data().to_vec().unwrap();
        out.extend(
            model
                .embed_tokens
                .weight
                .val()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
        );
        out
    }

    /// Three steps give the same bits as burn's AdamW, with and without weight decay, and a
    /// record saved by burn's optimizer resumes here to the same bits as burn's own resume.
    #[test]
    fn the_same_bits_as_burns_adamw_and_its_records() {
        for decay in [0.0, 0.01] {
            let mut ours = AdamWConfig::new()
                .with_weight_decay(decay)
                .init::<Ad, Transformer<Ad>>();
            let mut burns = burn::optim::AdamWConfig::new()
                .with_weight_decay(decay)
                .init::<Ad, Transformer<Ad>>();
            let (mut a, mut b) = (model(), model());
            for step in 0..3 {
                let lr = 1e-2 / (1 + step) as f64;
                a = ours.step(lr, a.clone(), grads(&a, step));
                b = burns.step(lr, b.clone(), grads(&b, step));
                assert_eq!(weights(&a), weights(&b), "decay {decay}, step {step}");
            }
            // burn's record into ours, and one more step each.
            let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
            let bytes = recorder.record(burns.to_record(), ()).unwrap();
            type Ours = OptimizerAdaptor<AdamW, Transformer<Ad>, Ad>;
            let record = recorder
                .load::<<Ours as Optimizer<Transformer<Ad>, Ad>>::Record>(bytes, &Default::default())
                .expect("burn's AdamW record loads as ours");
            let mut resumed = AdamWConfig::new()
                .with_weight_decay(decay)
                .init::<Ad, Transformer<Ad>>()
                .load_record(record);
            // The record is keyed by the parameters' ids, so both resume the same model.
            let a = resumed.step(1e-3, b.clone(), grads(&b, 9));
            let b = burns.step(1e-3, b.clone(), grads(&b, 9));
            assert_eq!(weights(&a), weights(&b), "decay {decay}, resumed");
        }
    }

    /// The pass in bands (a parameter large enough) equals burn's composition on the same
    /// backend.
    #[test]
    fn the_banded_pass_equals_the_composition() {
        let device = Default::default();
        let n = 3 * PARALLEL_ELEMENTS + 17;
        let values =
            |k: usize| -> Vec<f32> { (0..n).map(|i| (((i * k) % 97) as f32 - 48.0) / 50.0).collect() };
        let t = |v: Vec<f32>| Tensor::<Flex, 1>::from_data(TensorData::new(v, [n]), &device);
        let optim = AdamW {
            config: AdamWConfig::new().with_weight_decay(0.1),
        };
        let moments = || Some((t(values(3)), t(values(5).iter().map(|x| x * x).collect())));
        let fused = optim.flex_step(1e-3, 4, t(values(1)), t(values(2)), moments());
        let (p, m, v) = optim.composed_step(1e-3, 4, t(values(1)), t(values(2)), moments());
        for (a, b) in fused.into_iter().zip([p, m, v]) {
            assert_eq!(a.into_data(), b.into_data());
        }
    }
}
