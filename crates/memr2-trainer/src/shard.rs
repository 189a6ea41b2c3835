//! Data parallelism on one device: a minibatch is split into shards, each shard's loss and
//! gradients are computed on its own thread, and the gradients are summed.
//!
//! At the tiny model's sizes one forward/backward keeps about one core busy (the matmuls are
//! below the size where gemm splits work, element-wise kernels are single-threaded), so a
//! second core only helps if it runs a second shard. Each thread works on its own fork of
//! the model: the same parameters (same tensors, same [`ParamId`](burn::module::ParamId)s)
//! under a separate autodiff graph, so the graphs never merge and neither thread waits on the
//! other's graph lock.
//!
//! The caller weighs each shard's loss so that the shard losses add up to the loss of the
//! whole minibatch; the summed gradient is then that of the whole minibatch, up to rounding.
//! Shards are summed in shard order whatever the number of threads, so a run's numbers depend
//! on the number of shards (a configuration value) and not on the machine's cores.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
use memr2_policy::Transformer;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// `items` dealt into at most `shards` non-empty parts: item `i` goes to part `i % shards`, so
/// that each part of a length-sorted minibatch gets the same mix of lengths.
pub fn deal<T: Clone>(items: &[T], shards: usize) -> Vec<Vec<T>> {
    let parts = shards.clamp(1, items.len().max(1));
    let mut out = vec![Vec::with_capacity(items.len().div_ceil(parts)); parts];
    for (i, item) in items.iter().enumerate() {
        out[i % parts].push(item.clone());
    }
    out.retain(|part| !part.is_empty());
    out
}

/// `(0..n).map(|i| work(model, i))` on up to `max_threads` threads, and no more than the
/// machine has cores: thread `t` takes `t, t + threads, ...`, the calling thread with `model`
/// itself and every other thread with its own `copy(model)`. Results come back in index
/// order, so they do not depend on the number of threads when `work` does not.
pub fn round_robin<M, R>(
    model: &M,
    n: usize,
    max_threads: usize,
    copy: impl Fn(&M) -> M,
    work: impl Fn(&M, usize) -> R + Sync,
) -> Vec<R>
where
    M: Send,
    R: Send,
{
    let threads = crate::parallel::threads().min(max_threads).min(n).max(1);
    let run = |m: &M, t: usize| {
        (t..n)
            .step_by(threads)
            .map(|i| (i, work(m, i)))
            .collect::<Vec<_>>()
    };
    let mut out = if threads == 1 {
        run(model, 0)
    } else {
        let copies: Vec<M> = (1..threads).map(|_| copy(model)).collect();
        let run = &run;
        std::thread::scope(|scope| {
            let handles: Vec<_> = copies
                .into_iter()
                .enumerate()
                .map(|(k, m)| scope.spawn(move || run(&m, k + 1)))
                .collect();
            let mut all = run(model, 0);
            for handle in handles {
                all.extend(
                    handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                );
            }
            all
        })
    };
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// The gradients of `Σ_s loss(model, shard_s)` and each shard's loss value and extra output,
/// in shard order. Shards run on up to as many threads as the machine has cores, each thread
/// on its own fork of `model`. The gradients are `None` when some shard's loss is not finite
/// (nothing is back-propagated then), so the caller can skip the minibatch.
///
/// Over several ranks ([`crate::collective`]), shard `s` is computed by rank `s % size`; the
/// losses and outputs are gathered and the gradients summed by one all-reduce of one flat
/// buffer, so every rank returns the same values.
pub fn sharded_gradients<B, S, X, F>(
    model: &Transformer<B>,
    shards: &[S],
    loss: F,
) -> (Option<GradientsParams>, Vec<(f64, X)>)
where
    B: AutodiffBackend,
    S: Sync,
    X: Send + Serialize + DeserializeOwned,
    F: Fn(&Transformer<B>, &S) -> (Tensor<B, 1>, X) + Sync,
{
    let device = model.devices()[0].clone();
    // Over several ranks, shard `s` is computed by rank `s % ranks`; losses and outputs are
    // gathered, each rank keeps its own shards' gradients.
    let mut grads = Vec::new();
    let outputs: Vec<(f64, X)> = crate::collective::dealt(shards.len(), |mine| {
        round_robin(
            model,
            mine.len(),
            usize::MAX,
            |m| m.clone().fork(&device),
            |m, j| {
                let (value, extra) = loss(m, &shards[mine[j]]);
                let scalar: f64 = value.clone().into_scalar().elem();
                let grads = scalar
                    .is_finite()
                    .then(|| GradientsParams::from_grads(value.backward(), m));
                (scalar, extra, grads)
            },
        )
        .into_iter()
        .map(|(value, extra, g)| {
            grads.extend(g);
            (value, extra)
        })
        .collect()
    });
    if !outputs.iter().all(|(value, _)| value.is_finite()) {
        return (None, outputs);
    }
    let summed = sum_gradients(model, grads);
    let world = crate::collective::world();
    if world.size() > 1 {
        return (Some(all_reduce_gradients(model, summed, world.as_ref())), outputs);
    }
    (Some(summed), outputs)
}

/// The sum over the ranks of each rank's gradients, by one all-reduce of one flat buffer: each
/// parameter's gradient (zeros where a rank has none) and, after them, one count per parameter
/// of the ranks that had one, so that a parameter no rank touched stays without a gradient,
/// as in one process.
pub fn all_reduce_gradients<B: AutodiffBackend>(
    model: &Transformer<B>,
    grads: GradientsParams,
    world: &dyn crate::collective::Collective,
) -> GradientsParams {
    struct Flatten<'a> {
        grads: &'a GradientsParams,
        values: Vec<f32>,
        present: Vec<f32>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            match self.grads.get::<B::InnerBackend, D>(param.id) {
                Some(g) => {
                    self.values.extend(
                        g.into_data()
                            .convert::<f32>()
                            .to_vec::<f32>()
                            .expect("f32 gradient"),
                    );
                    self.present.push(1.0);
                }
                None => {
                    self.values
                        .extend(std::iter::repeat_n(0.0, param.shape().num_elements()));
                    self.present.push(0.0);
                }
            }
        }
    }
    struct Unflatten<'a, B: AutodiffBackend> {
        values: &'a [f32],
        present: &'a [f32],
        at: usize,
        param: usize,
        device: B::Device,
        out: GradientsParams,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let shape = param.shape();
            let n = shape.num_elements();
            if self.present[self.param] > 0.0 {
                let data = TensorData::new(self.values[self.at..self.at + n].to_vec(), shape);
                self.out.register::<B::InnerBackend, D>(
                    param.id,
                    Tensor::<B::InnerBackend, D>::from_data(data, &self.device),
                );
            }
            self.at += n;
            self.param += 1;
        }
    }
    let mut flat = Flatten {
        grads: &grads,
        values: Vec::new(),
        present: Vec::new(),
    };
    model.visit(&mut flat);
    let (mut buf, params) = (flat.values, flat.present.len());
    let values_len = buf.len();
    buf.extend(flat.present);
    world.all_reduce_sum(&mut buf);
    let (values, present) = buf.split_at(values_len);
    debug_assert_eq!(present.len(), params);
    let mut unflat = Unflatten::<B> {
        values,
        present,
        at: 0,
        param: 0,
        device: model.devices()[0].clone(),
        out: GradientsParams::new(),
    };
    model.visit(&mut unflat);
    unflat.out
}

/// The sum of several gradient sets of `model`'s parameters, added in the order given.
pub fn sum_gradients<B: AutodiffBackend>(
    model: &Transformer<B>,
    parts: Vec<GradientsParams>,
) -> GradientsParams {
    struct Sum<'a> {
        parts: &'a mut [GradientsParams],
        out: GradientsParams,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Sum<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let total = self
                .parts
                .iter_mut()
                .filter_map(|g| g.remove::<B::InnerBackend, D>(param.id))
                .reduce(|a, b| a + b);
            if let Some(total) = total {
                self.out.register::<B::InnerBackend, D>(param.id, total);
            }
        }
    }
    let mut parts = parts;
    if parts.len() == 1 {
        return parts.pop().expect("one part");
    }
    let mut visitor = Sum {
        parts: &mut parts,
        out: GradientsParams::new(),
    };
    model.visit(&mut visitor);
    visitor.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::tests::{B, model};

    #[test]
    fn deal_keeps_every_item_once_in_balanced_parts() {
        let items: Vec<usize> = (0..7).collect();
        let parts = deal(&items, 3);
        assert_eq!(parts, vec![vec![0, 3, 6], vec![1, 4], vec![2, 5]]);
        assert_eq!(deal(&items[..2], 4), vec![vec![0], vec![1]]);
        assert_eq!(deal(&items, 1), vec![items.clone()]);
        assert!(deal::<usize>(&[], 2).is_empty());
    }

    fn sample_loss(model: &Transformer<B>, rows: &[(Vec<u32>, Vec<u32>)], total_tokens: f32) -> Tensor<B, 1> {
        let out = memr2_policy::completion_logprobs(model, rows);
        (out.logprobs * out.mask).sum().neg() / total_tokens
    }

    /// Gradient of every parameter, flattened in visiting order.
    fn flat(model: &Transformer<B>, grads: &GradientsParams) -> Vec<f32> {
        struct Flat<'a> {
            grads: &'a GradientsParams,
            out: Vec<f32>,
        }
        impl ModuleVisitor<B> for Flat<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if let Some(g) = self
                    .grads
                    .get::<<B as AutodiffBackend>::InnerBackend, D>(param.id)
                {
                    self.out.extend(g.into_data().to_vec::<f32>().expect("f32"));
                }
            }
        }
        let mut visitor = Flat {
            grads,
            out: Vec::new(),
        };
        model.visit(&mut visitor);
        visitor.out
    }

    /// Five sequences of different prompt and completion lengths.
    fn batch() -> Vec<(Vec<u32>, Vec<u32>)> {
        vec![
            (vec![1, 5, 9, 13], vec![7, 2]),
            (vec![1, 4], vec![8, 8, 2]),
            (vec![1, 6, 6], vec![3, 2]),
            (vec![1, 9, 4, 4, 7], vec![5, 5, 5, 2]),
            (vec![1, 2], vec![9, 2]),
        ]
    }

    fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max)
    }

    #[test]
    fn sharded_gradients_equal_the_whole_batch_gradient() {
        let model = model();
        let batch = batch();
        let tokens: f32 = batch.iter().map(|(_, c)| c.len() as f32).sum();
        let whole = sample_loss(&model, &batch, tokens);
        let whole_value: f64 = whole.clone().into_scalar().elem();
        let whole = GradientsParams::from_grads(whole.backward(), &model);
        let whole = flat(&model, &whole);
        for shards in [1, 2, 3] {
            let parts = deal(&batch, shards);
            let (grads, outputs) = sharded_gradients(&model, &parts, |m, rows| {
                (sample_loss(m, rows, tokens), rows.len())
            });
            let grads = flat(&model, &grads.expect("finite"));
            assert_eq!(outputs.iter().map(|(_, n)| n).sum::<usize>(), batch.len());
            let value: f64 = outputs.iter().map(|(v, _)| v).sum();
            assert!(
                (value - whole_value).abs() < 1e-5,
                "{shards}: {value} vs {whole_value}"
            );
            assert_eq!(grads.len(), whole.len());
            let worst = largest_difference(&grads, &whole);
            assert!(worst < 1e-5, "{shards} shards: largest difference {worst}");
            assert!(
                whole.iter().any(|g| g.abs() > 1e-4),
                "the gradient is not trivially zero"
            );
        }
    }

    #[test]
    fn shards_dealt_to_ranks_give_the_one_process_gradient_on_every_rank() {
        let batch = batch();
        let tokens: f32 = batch.iter().map(|(_, c)| c.len() as f32).sum();
        // Made and initialised once (burn initialises parameters lazily, from the backend's
        // global generator, which threads would share), and forked for each rank's thread, as
        // separate processes have separate autodiff graphs.
        let base = model();
        crate::collective::parameter_checksum(&base);
        let gradients = |shards: usize| {
            let model = base.clone().fork(&Default::default());
            let parts = deal(&batch, shards);
            let (grads, outputs) = sharded_gradients(&model, &parts, |m, rows| {
                (sample_loss(m, rows, tokens), rows.len())
            });
            (flat(&model, &grads.expect("finite")), outputs)
        };
        for shards in [2, 3, 5] {
            let (alone, alone_outputs) = gradients(shards);
            for ranks in [2, 3] {
                let out = crate::collective::tests::on_ranks(ranks, || gradients(shards));
                for (rank, (grads, outputs)) in out.iter().enumerate() {
                    assert_eq!(outputs, &alone_outputs, "{shards} shards, rank {rank} of {ranks}");
                    let worst = largest_difference(grads, &alone);
                    assert!(worst < 1e-6, "{shards} shards on {ranks} ranks: {worst}");
                    if shards == ranks {
                        // One shard per rank: the all-reduce adds what one process adds.
                        assert_eq!(grads, &alone, "{shards} shards on {ranks} ranks");
                    }
                }
            }
        }
    }

    #[test]
    fn a_non_finite_shard_loss_on_another_rank_skips_the_minibatch_everywhere() {
        let base = model();
        crate::collective::parameter_checksum(&base);
        let out = crate::collective::tests::on_ranks(2, || {
            let (grads, outputs) = nan_in_second_shard(&base.clone().fork(&Default::default()));
            (grads.is_none(), outputs.len())
        });
        assert_eq!(out, vec![(true, 2), (true, 2)]);
    }

    /// Two one-sequence shards, the second one's loss NaN.
    fn nan_in_second_shard(model: &Transformer<B>) -> (Option<GradientsParams>, Vec<(f64, ())>) {
        let parts = vec![
            vec![(vec![1u32, 5], vec![7u32, 2])],
            vec![(vec![1u32, 4], vec![8u32, 2])],
        ];
        sharded_gradients(model, &parts, |m, rows| {
            let loss = sample_loss(m, rows, 2.0);
            let loss = if rows[0].0[1] == 4 { loss * f32::NAN } else { loss };
            (loss, ())
        })
    }

    #[test]
    fn a_non_finite_shard_loss_gives_no_gradients() {
        let (grads, outputs) = nan_in_second_shard(&model());
        assert!(grads.is_none());
        assert!(outputs[0].0.is_finite() && outputs[1].0.is_nan());
    }
}
