//! One fixed LoGo-GRPO step of a trained run, at 8 and 32 sessions: seconds of rollout, scoring
//! and update, and the update's tokens/s, with the update's old log-probs recomputed by a
//! forward pass (`rl.recompute_old_logprobs`) and taken from the sampler, interleaved round by
//! round so that both see the same machine. Each step starts from the run's warm-start weights
//! with the same seed, so every round samples the same rollouts.
//!
//! `STEP_BENCH_RUN=runs/default-seed0 cargo bench -p memr2-trainer --bench step` (a run that has
//! finished its warm start; `STEP_BENCH_ROUNDS`, default 3, rounds per setting).

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use memr2_policy::optim::AdamWConfig;
use memr2_policy::tokenizer::Tokenizer;
use memr2_trainer::TrainConfig;
use memr2_trainer::checkpoint;
use memr2_trainer::data::{Splits, environment};
use memr2_trainer::served::Answerer;
use memr2_trainer::step::{StepContext, StepMetrics, rl_step};
use memr2_trainer::train::RunDir;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

type B = Autodiff<Flex>;

fn main() {
    memr2_policy::allocator::reuse_freed_buffers();
    let Some(dir) = std::env::var_os("STEP_BENCH_RUN").map(PathBuf::from) else {
        eprintln!("set STEP_BENCH_RUN to a run directory that has finished its warm start");
        return;
    };
    let rounds: usize = std::env::var("STEP_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let run = RunDir(dir);
    let config = TrainConfig::from_file(&run.config()).expect("the run's config.json");
    let env = environment(&config.data).expect("the run's environment");
    let data = Splits::of(env.as_ref()).expect("episodes");
    let tokenizer = Tokenizer::from_file(&run.tokenizer()).expect("the run's tokenizer");
    let device = Default::default();
    let sft = checkpoint::load::<B>(&run.checkpoint("sft"), &device)
        .expect("the run's sft checkpoint")
        .model;
    let frozen = sft.valid();
    let tuned = run.checkpoint("answerer").exists().then(|| {
        checkpoint::load::<B>(&run.checkpoint("answerer"), &device)
            .expect("answerer")
            .model
            .valid()
    });
    let answerer = tuned.as_ref().unwrap_or(&frozen);

    println!(
        "run {}, {} conversations x {} rollouts a step, {rounds} rounds, medians",
        run.0.display(),
        config.rl.episodes_per_step,
        config.rl.logo.n_rollouts
    );
    println!("| sessions | old log-probs | rollout s | scoring s | update s | step s | update tokens/s |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for horizon in [8usize, 32] {
        let episodes: Vec<_> = data
            .train
            .iter()
            .take(config.rl.episodes_per_step)
            .map(|e| e.with_horizon(horizon))
            .collect();
        let mut measured: [Vec<StepMetrics>; 2] = [Vec::new(), Vec::new()];
        for _round in 0..rounds {
            for (k, recompute) in [true, false].into_iter().enumerate() {
                let mut cfg = config.clone();
                cfg.rl.recompute_old_logprobs = recompute;
                let ctx = StepContext::<B> {
                    tokenizer: &tokenizer,
                    answerer: Answerer::Local(answerer),
                    task: env.task(),
                    reference: (cfg.rl.logo.kl_coef > 0.0).then_some(&frozen),
                    config: &cfg,
                };
                let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
                let mut rng = ChaCha8Rng::seed_from_u64(0);
                let (_, metrics) = rl_step(
                    sft.clone(),
                    &mut optim,
                    None,
                    &ctx,
                    &episodes,
                    cfg.rl.learning_rate,
                    &mut rng,
                )
                .expect("a step");
                measured[k].push(metrics);
            }
        }
        for (k, name) in ["recomputed", "from the sampler"].into_iter().enumerate() {
            let median = |f: &dyn Fn(&StepMetrics) -> f64| {
                let mut v: Vec<f64> = measured[k].iter().map(f).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            println!(
                "| {horizon} | {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
                median(&|m| m.rollout_s),
                median(&|m| m.scoring_s),
                median(&|m| m.update_s),
                median(&|m| m.step_s),
                median(&|m| m.update_tokens_per_s),
            );
        }
    }
}
