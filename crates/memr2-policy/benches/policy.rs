//! Throughput of the policy model on every compiled-in backend: training tokens/s (forward,
//! backward, AdamW), KV-cache generation tokens/s at batch 1, 8 and 32, full recomputation for
//! comparison, and the plain matmul rate the model's FLOP rate is held against.
//!
//! `cargo bench -p memr2-policy --bench policy` runs `flex` and `ndarray` on the tiny model.
//! `--features test-wgpu` / `--features test-cuda` add those backends;
//! `POLICY_BENCH_BACKENDS=flex,wgpu` picks some, and `POLICY_BENCH_MODELS=tiny,default,qwen0.5b`
//! adds the default preset's model (hidden 128, 4 heads, vocabulary 1024, batches of 16 x 384) and a
//! Qwen2.5-0.5B-shaped model with random weights (slow on a CPU: minutes per backend).
//! `POLICY_BENCH_PARTS=train` (or `generate`) measures only that part, for a profiler
//! (`decode`: the KV-cache generation alone, without the full recomputation), and
//! `POLICY_BENCH_BATCHES=32` decodes at only that batch size (default `1,8,32`);
//! `POLICY_BENCH_TRAIN_STEPS=30` times that many training steps (default 3);
//! `POLICY_BENCH_PARTS=shapes` measures the matmul rate at each workload's own shapes.
//! `crates/memr2-policy/scripts/engine_vs_pytorch.py` runs it against PyTorch side by side.

use std::time::Instant;

use burn::backend::{Autodiff, Flex, NdArray};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use memr2_policy::optim::AdamWConfig;
use memr2_policy::{SamplingConfig, Transformer, TransformerConfig, generate, sft_loss};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const MATMUL: usize = 2048;

/// A model and the sizes of the workloads it is measured on.
struct Workload {
    name: &'static str,
    config: TransformerConfig,
    train_batch: usize,
    train_seq: usize,
    gen_prompt: usize,
    gen_tokens: usize,
}

impl Workload {
    fn tiny() -> Self {
        Self {
            name: "tiny",
            config: TransformerConfig::tiny(2048),
            train_batch: 8,
            train_seq: 256,
            gen_prompt: 16,
            gen_tokens: 240,
        }
    }

    /// The default preset's built-in model (`memr2 train`): hidden 128, 4 layers, 4 heads,
    /// vocabulary 1024, SFT batches of 16, sequences about as long as its manager prompts.
    fn default_preset() -> Self {
        Self {
            name: "default",
            config: TransformerConfig::tiny_sized(1024, 128, 4, 4),
            train_batch: 16,
            train_seq: 384,
            gen_prompt: 16,
            gen_tokens: 240,
        }
    }

    fn qwen() -> Self {
        Self {
            name: "qwen2.5-0.5b",
            config: TransformerConfig::qwen2_5_0_5b(),
            train_batch: 4,
            train_seq: 128,
            gen_prompt: 16,
            gen_tokens: 32,
        }
    }
}

struct Row {
    backend: &'static str,
    model: &'static str,
    what: String,
    tokens_per_s: f64,
    gflops: f64,
    fraction: f64,
}

fn seconds<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed().as_secs_f64())
}

/// GFLOP/s of an `n x n` f32 matmul through burn's `matmul` (best of 5 after a warm-up).
fn matmul_rate<B: Backend>(device: &B::Device) -> f64 {
    shape_rate::<B>(device, 1, MATMUL, MATMUL, MATMUL, 1, Layout::Plain, Product::Burn)
}

/// How the operands of a timed product are laid out: as made, or one of them a transposed view
/// of a contiguous tensor, as autodiff's backward products of `x w` are (`dy w^T` for the
/// input's gradient, `x^T dy` for the weight's).
#[derive(Clone, Copy)]
enum Layout {
    Plain,
    RhsTransposed,
    LhsTransposed,
}

/// Which product a two-dimensional case times.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Product {
    /// `memr2_policy::fused::matmul`, the model's products (split over the threads by rows on
    /// the CPU backend).
    Model,
    /// burn's `Tensor::matmul`, for comparison.
    Burn,
}

/// GFLOP/s of `batch` products `[m, k] x [k, n]` laid out as `layout` says (best of 5, each
/// timing `reps` products after a warm-up), waiting for the backend by reading one element back.
#[allow(clippy::too_many_arguments)]
fn shape_rate<B: Backend>(
    device: &B::Device,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    reps: usize,
    layout: Layout,
    product: Product,
) -> f64 {
    let best = if batch == 1 {
        // Two-dimensional, as the model multiplies its rows.
        let multiply = match product {
            Product::Model => memr2_policy::fused::matmul::<B>,
            Product::Burn => Tensor::<B, 2>::matmul,
        };
        best_product_seconds::<B, 2>(device, [m, k], [k, n], layout, reps, multiply)
    } else {
        best_product_seconds::<B, 3>(device, [batch, m, k], [batch, k, n], layout, reps, Tensor::matmul)
    };
    2.0 * (batch * m * k * n) as f64 / best / 1e9
}

/// Seconds per product of random operands of shapes `lhs` and `rhs` laid out as `layout` says
/// (a transposed operand is made in the other order and viewed transposed): the best of 5
/// timings of `reps` products after a warm-up, reading one element back to wait for the backend.
fn best_product_seconds<B: Backend, const D: usize>(
    device: &B::Device,
    lhs: [usize; D],
    rhs: [usize; D],
    layout: Layout,
    reps: usize,
    multiply: fn(Tensor<B, D>, Tensor<B, D>) -> Tensor<B, D>,
) -> f64 {
    let operand = |mut shape: [usize; D], transposed: bool| {
        if transposed {
            shape.swap(D - 2, D - 1);
        }
        let t = Tensor::<B, D>::random(shape, burn::tensor::Distribution::Default, device);
        if transposed { t.swap_dims(D - 2, D - 1) } else { t }
    };
    let a = operand(lhs, matches!(layout, Layout::LhsTransposed));
    let b = operand(rhs, matches!(layout, Layout::RhsTransposed));
    let first: [std::ops::Range<usize>; D] = std::array::from_fn(|_| 0..1);
    let run = || {
        let _ = multiply(a.clone(), b.clone()).slice(first.clone()).into_data();
    };
    run();
    (0..5)
        .map(|_| seconds(|| (0..reps).for_each(|_| run())).1 / reps as f64)
        .fold(f64::INFINITY, f64::min)
}

/// The matmul rate at a training workload's shapes: the projections and the MLP over all
/// its tokens, the LM head, and attention's batched score product.
fn shapes<B: Backend>(
    work: &Workload,
    name: &'static str,
    device: &B::Device,
    peak: f64,
    rows: &mut Vec<Row>,
) {
    let c = &work.config;
    let tokens = work.train_batch * work.train_seq;
    let (h, d, s) = (c.hidden_size, c.head_dim(), work.train_seq);
    let heads = work.train_batch * c.num_attention_heads;
    let ff = c.intermediate_size;
    let cases = [
        (1, tokens, h, h, Layout::Plain, "projection"),
        (1, tokens, h, ff, Layout::Plain, "MLP up"),
        (1, tokens, ff, h, Layout::Plain, "MLP down"),
        (1, tokens, h, c.vocab_size, Layout::Plain, "LM head"),
        (heads, s, d, s, Layout::Plain, "attention scores"),
        // The backward products of the projections and the MLP.
        (1, tokens, h, h, Layout::RhsTransposed, "projection, dy w^T"),
        (1, h, tokens, h, Layout::LhsTransposed, "projection, x^T dy"),
        (1, h, tokens, ff, Layout::LhsTransposed, "MLP up, x^T dy"),
        (1, ff, tokens, h, Layout::LhsTransposed, "MLP down, x^T dy"),
    ];
    for (batch, m, k, n, layout, what) in cases {
        // The model's product, then (two-dimensional cases) burn's matmul of the same operands.
        let products: &[Product] = if batch == 1 {
            &[Product::Model, Product::Burn]
        } else {
            &[Product::Model]
        };
        for &product in products {
            // Ten products a timing: the small ones take well under a millisecond each.
            let gflops = shape_rate::<B>(device, batch, m, k, n, 10, layout, product);
            let suffix = if product == Product::Burn {
                ", burn's matmul"
            } else {
                ""
            };
            rows.push(Row {
                backend: name,
                model: work.name,
                what: format!("matmul {batch}x[{m}x{k}]x[{k}x{n}] ({what}{suffix})"),
                tokens_per_s: f64::NAN,
                gflops,
                fraction: gflops / peak,
            });
        }
    }
}

/// FLOPs of one token through the model (forward only): 2 per matmul parameter plus the
/// attention products (`QK^T` and `AV`, 4 * context * heads * head_dim per layer).
fn forward_flops(config: &TransformerConfig, context: f64) -> f64 {
    let attention_width = (config.num_attention_heads * config.head_dim()) as f64;
    2.0 * config.num_matmul_parameters() as f64
        + 4.0 * context * attention_width * config.num_hidden_layers as f64
}

fn random_batch(
    rng: &mut ChaCha8Rng,
    vocab: usize,
    rows: usize,
    prompt: usize,
    completion: usize,
) -> Vec<(Vec<u32>, Vec<u32>)> {
    let mut ids = |n: usize| {
        (0..n)
            .map(|_| rng.random_range(0..vocab as u32))
            .collect::<Vec<_>>()
    };
    (0..rows).map(|_| (ids(prompt), ids(completion))).collect()
}

fn train<B: AutodiffBackend>(
    work: &Workload,
    name: &'static str,
    device: &B::Device,
    peak: f64,
    rows: &mut Vec<Row>,
) {
    let config = &work.config;
    let (train_batch, train_seq) = (work.train_batch, work.train_seq);
    let mut model: Transformer<B> = config.init_seeded(1, device);
    let mut optim = AdamWConfig::new().init();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    // Teacher forcing over the whole row: a 1-token prompt and the rest as completion.
    let batch = random_batch(&mut rng, config.vocab_size, train_batch, 1, train_seq - 1);
    let mut step = |model: Transformer<B>| {
        let loss = sft_loss(&model, &batch);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = optim.step(1e-4, model, grads);
        let _ = model.embed_tokens.weight.val().slice([0..1, 0..1]).into_data();
        model
    };
    model = step(model);
    // More steps than the default 3 give a profiler the training loop to look at.
    let steps: usize = std::env::var("POLICY_BENCH_TRAIN_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let (_, elapsed) = seconds(|| {
        for _ in 0..steps {
            model = step(model.clone());
        }
    });
    let tokens = (steps * train_batch * train_seq) as f64;
    let flops_per_token = 3.0 * forward_flops(config, train_seq as f64);
    let gflops = tokens * flops_per_token / elapsed / 1e9;
    rows.push(Row {
        backend: name,
        model: work.name,
        what: format!("train {train_batch}x{train_seq} (fwd+bwd+AdamW)"),
        tokens_per_s: tokens / elapsed,
        gflops,
        fraction: gflops / peak,
    });
}

fn decode<B: Backend>(
    work: &Workload,
    name: &'static str,
    device: &B::Device,
    peak: f64,
    rows: &mut Vec<Row>,
    recompute: bool,
) {
    let config = &work.config;
    let (gen_prompt, gen_tokens) = (work.gen_prompt, work.gen_tokens);
    let model: Transformer<B> = config.init_seeded(1, device);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let sampling = SamplingConfig::greedy(gen_tokens);
    let mean_context = (gen_prompt + gen_tokens / 2) as f64;
    let batches: Vec<usize> = std::env::var("POLICY_BENCH_BATCHES")
        .unwrap_or_else(|_| "1,8,32".to_string())
        .split(',')
        .map(|b| {
            b.trim()
                .parse()
                .expect("POLICY_BENCH_BATCHES: batch sizes, comma-separated")
        })
        .collect();
    for batch in batches {
        let prompts: Vec<Vec<u32>> = random_batch(&mut rng, config.vocab_size, batch, gen_prompt, 0)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let _ = generate(&model, &prompts[..1], &SamplingConfig::greedy(4), &[], &mut rng);
        let (out, elapsed) = seconds(|| generate(&model, &prompts, &sampling, &[], &mut rng));
        let tokens = out.iter().map(|g| g.tokens.len()).sum::<usize>() as f64;
        let gflops = tokens * forward_flops(config, mean_context) / elapsed / 1e9;
        rows.push(Row {
            backend: name,
            model: work.name,
            what: format!("generate, KV cache, batch {batch}, {gen_prompt}+{gen_tokens} tokens"),
            tokens_per_s: tokens / elapsed,
            gflops,
            fraction: gflops / peak,
        });
    }
    if !recompute {
        return;
    }
    // Full recomputation: every new token reruns the whole sequence.
    let seq = gen_prompt + gen_tokens;
    let ids: Vec<i64> = (0..seq)
        .map(|_| rng.random_range(0..config.vocab_size as i64))
        .collect();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, seq]), device);
    let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(vec![true; seq], [1, seq]), device);
    let run = || {
        let logits = model.forward(tokens.clone(), mask.clone());
        let _ = logits.slice([0..1, seq - 1..seq, 0..1]).into_data();
    };
    run();
    let (_, elapsed) = seconds(|| (0..3).for_each(|_| run()));
    let per_token = elapsed / 3.0;
    let gflops = seq as f64 * forward_flops(config, seq as f64) / per_token / 1e9;
    rows.push(Row {
        backend: name,
        model: work.name,
        what: format!("generate, full recompute at {seq} tokens, batch 1"),
        tokens_per_s: 1.0 / per_token,
        gflops,
        fraction: gflops / peak,
    });
}

fn run_backend<B: AutodiffBackend>(
    name: &'static str,
    device: &B::Device,
    workloads: &[Workload],
    rows: &mut Vec<Row>,
) {
    let peak = matmul_rate::<B::InnerBackend>(device);
    rows.push(Row {
        backend: name,
        model: "-",
        what: format!("matmul {MATMUL}x{MATMUL}x{MATMUL} f32"),
        tokens_per_s: f64::NAN,
        gflops: peak,
        fraction: 1.0,
    });
    let parts = std::env::var("POLICY_BENCH_PARTS").unwrap_or_else(|_| "train,generate".to_string());
    let part = |p: &str| parts.split(',').any(|w| w.trim() == p);
    for work in workloads {
        if part("shapes") {
            shapes::<B::InnerBackend>(work, name, device, peak, rows);
        }
        if part("train") {
            train::<B>(work, name, device, peak, rows);
        }
        if part("generate") || part("decode") {
            decode::<B::InnerBackend>(work, name, device, peak, rows, part("generate"));
        }
    }
}

fn compiled_backends() -> Vec<&'static str> {
    let mut out = vec!["flex", "ndarray"];
    if cfg!(feature = "test-wgpu") {
        out.push("wgpu");
    }
    if cfg!(feature = "test-cuda") {
        out.push("cuda");
    }
    out
}

fn main() {
    memr2_policy::allocator::reuse_freed_buffers();
    let wanted = std::env::var("POLICY_BENCH_BACKENDS").unwrap_or_else(|_| compiled_backends().join(","));
    let models = std::env::var("POLICY_BENCH_MODELS").unwrap_or_else(|_| "tiny".to_string());
    let workloads: Vec<Workload> = models
        .split(',')
        .filter_map(|m| match m.trim() {
            "tiny" => Some(Workload::tiny()),
            "default" => Some(Workload::default_preset()),
            "qwen0.5b" => Some(Workload::qwen()),
            other => {
                eprintln!("unknown model {other} (tiny, default, qwen0.5b), skipped");
                None
            }
        })
        .collect();
    for work in &workloads {
        let c = &work.config;
        println!(
            "{}: hidden {}, {} layers, {} heads ({} kv), ffn {}, vocab {}: {} parameters ({} in matmuls)",
            work.name,
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_kv_heads(),
            c.intermediate_size,
            c.vocab_size,
            c.num_parameters(),
            c.num_matmul_parameters()
        );
    }
    let mut rows = Vec::new();
    for backend in wanted.split(',') {
        match backend.trim() {
            "flex" => run_backend::<Autodiff<Flex>>("flex", &Default::default(), &workloads, &mut rows),
            "ndarray" => {
                run_backend::<Autodiff<NdArray>>("ndarray", &Default::default(), &workloads, &mut rows)
            }
            #[cfg(feature = "test-wgpu")]
            "wgpu" => run_backend::<Autodiff<burn::backend::Wgpu>>(
                "wgpu",
                &Default::default(),
                &workloads,
                &mut rows,
            ),
            #[cfg(feature = "test-cuda")]
            "cuda" => run_backend::<Autodiff<burn::backend::Cuda>>(
                "cuda",
                &Default::default(),
                &workloads,
                &mut rows,
            ),
            other => eprintln!(
                "backend {other} is not compiled in (compiled: {}), skipped",
                compiled_backends().join(", ")
            ),
        }
    }
    println!("| backend | model | workload | tokens/s | GFLOP/s | of matmul rate |");
    println!("|---|---|---|---:|---:|---:|");
    for row in &rows {
        let tokens = if row.tokens_per_s.is_nan() {
            "-".to_string()
        } else {
            format!("{:.0}", row.tokens_per_s)
        };
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.0}% |",
            row.backend,
            row.model,
            row.what,
            tokens,
            row.gflops,
            100.0 * row.fraction
        );
    }
    for backend in compiled_backends() {
        for work in &workloads {
            let find = |prefix: &str| {
                rows.iter()
                    .find(|r| r.backend == backend && r.model == work.name && r.what.starts_with(prefix))
            };
            if let (Some(cached), Some(full)) = (find("generate, KV cache, batch 1"), find("generate, full"))
            {
                println!(
                    "{backend} {}: KV cache is {:.1}x faster per token than recomputing {} tokens",
                    work.name,
                    cached.tokens_per_s / full.tokens_per_s,
                    work.gen_prompt + work.gen_tokens
                );
            }
        }
    }
}
