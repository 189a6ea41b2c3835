//! How far did an update move the weights, and does a move of the same size in a random
//! direction cost as much? Compares checkpoint `moved` with checkpoint `from` element by
//! element, prints the size of the move, and writes to `out` the `from` weights moved by the
//! same magnitudes with random signs: a control with the update's per-weight step sizes and
//! none of its direction.
//!
//! ```sh
//! cargo run --release -p memr2-trainer --example perturb -- \
//!     runs/a/checkpoints/sft runs/b/checkpoints/latest /tmp/control 0
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::backend::Flex;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use memr2_trainer::checkpoint;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type B = Flex;

/// Collects every float parameter, in visiting order.
struct Collect(Vec<Vec<f32>>);

impl ModuleVisitor<B> for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let values = param.val().into_data().convert::<f32>().to_vec::<f32>();
        self.0.push(values.expect("float parameters read as f32"));
    }
}

/// Replaces every float parameter, in the same order, with the next of `values`.
struct Replace {
    values: std::vec::IntoIter<Vec<f32>>,
}

impl ModuleMapper<B> for Replace {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let device = tensor.device();
        let values = self.values.next().expect("as many parameters as collected");
        let tensor = Tensor::from_data(TensorData::new(values, shape), &device);
        Param::from_mapped_value(id, tensor, mapper)
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [from, moved, out, seed] = args.as_slice() else {
        bail!("usage: perturb FROM_CHECKPOINT MOVED_CHECKPOINT OUT_CHECKPOINT SEED");
    };
    let seed: u64 = seed.parse().context("SEED must be an integer")?;
    let device = Default::default();
    let base = checkpoint::load::<B>(&PathBuf::from(from), &device)?;
    let other = checkpoint::load::<B>(&PathBuf::from(moved), &device)?;
    let mut a = Collect(Vec::new());
    base.model.visit(&mut a);
    let mut b = Collect(Vec::new());
    other.model.visit(&mut b);
    if a.0.len() != b.0.len() || a.0.iter().zip(&b.0).any(|(x, y)| x.len() != y.len()) {
        bail!("the two checkpoints have different architectures");
    }

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut count, mut sum_abs, mut sum_sq, mut sum_w_sq) = (0usize, 0.0f64, 0.0f64, 0.0f64);
    let mut largest = 0.0f32;
    let mut control = Vec::with_capacity(a.0.len());
    for (x, y) in a.0.iter().zip(&b.0) {
        let mut params = Vec::with_capacity(x.len());
        for (&w, &v) in x.iter().zip(y) {
            let d = v - w;
            count += 1;
            sum_abs += f64::from(d.abs());
            sum_sq += f64::from(d) * f64::from(d);
            sum_w_sq += f64::from(w) * f64::from(w);
            largest = largest.max(d.abs());
            let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
            params.push(w + sign * d.abs());
        }
        control.push(params);
    }
    println!(
        "parameters {count}: mean |move| {:.3e}, rms move {:.3e}, largest {:.3e}, \
         move / weights (rms) {:.3e}",
        sum_abs / count as f64,
        (sum_sq / count as f64).sqrt(),
        largest,
        (sum_sq / sum_w_sq).sqrt()
    );
    let model = base.model.map(&mut Replace {
        values: control.into_iter(),
    });
    checkpoint::save::<B, ()>(&PathBuf::from(out), &model, &base.config, None, None)?;
    println!("wrote the random-sign control to {out}");
    Ok(())
}
