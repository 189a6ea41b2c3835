//! Data parallelism on the CPU: training tokens/s of the default preset's model with each
//! minibatch split into 1, 2, 4 and 8 shards (`TrainConfig::shards`), for the two training
//! loops that take most of a run: an SFT epoch on the real teacher corpus and the RL update;
//! and generation tokens/s of a rollout's batched extractor and manager calls split into 1, 2
//! and 4 parts (`AgentConfig::generation_shards`).
//!
//! `cargo bench -p memr2-trainer --bench shards` (about 5 minutes; `SHARDS_BENCH=generate`
//! runs the generation table alone). Runs of each setting are interleaved and the tables give
//! medians, so a load that comes and goes hits all alike.

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use memr2_logo_grpo::LossConfig;
use memr2_policy::optim::AdamWConfig;
use memr2_policy::roles::Role;
use memr2_policy::tokenizer::Tokenizer;
use memr2_policy::{Transformer, TransformerConfig};
use memr2_sim::{Environment, Split, SyntheticWorld, WorldConfig};
use memr2_trainer::TrainConfig;
use memr2_trainer::agent::{Agent, Generator};
use memr2_trainer::config::{AgentConfig, ModelSpec};
use memr2_trainer::sft::{EpochSettings, TokenizedExample, build_examples, sft_epoch, tokenize};
use memr2_trainer::train::teacher_config;
use memr2_trainer::update::{TrainSample, UpdateSettings, ppo_update};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

type B = Autodiff<Flex>;

const ROUNDS: usize = 5;

fn main() {
    memr2_policy::allocator::reuse_freed_buffers();
    let config = TrainConfig::default_cpu();
    let world = SyntheticWorld::new(WorldConfig::default_cpu(), 7).expect("world");
    let episodes = world.episodes(Split::Train);
    let examples = build_examples(
        &episodes[..3],
        &config.curriculum.horizons,
        &teacher_config(&config),
        &config.agent,
        0,
    );
    let corpus = examples.iter().flat_map(|e| {
        [
            e.prompt.system.clone(),
            e.prompt.user.clone(),
            e.completion.clone(),
        ]
    });
    let ModelSpec::Tiny {
        vocab_size,
        hidden_size,
        layers,
        heads,
    } = config.model
    else {
        unreachable!("the default preset is the tiny model")
    };
    let tokenizer = Tokenizer::train_bpe(corpus, vocab_size).expect("tokenizer");
    let mut tokens = tokenize(&examples, &tokenizer, config.agent.compact_prompts);
    // A fixed slice of the corpus, the same for every setting.
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    rand::seq::SliceRandom::shuffle(tokens.as_mut_slice(), &mut rng);
    let sft: Vec<TokenizedExample> = tokens.iter().take(config.sft.batch_size * 12).cloned().collect();
    // RL samples: the same sequences with random advantages, one update's worth.
    let rl: Vec<TrainSample> = tokens
        .iter()
        .skip(sft.len())
        .take(config.rl.minibatch_size * 6)
        .enumerate()
        .map(|(i, e)| TrainSample {
            prompt: e.prompt.clone(),
            completion: e.completion.clone(),
            advantage: if i % 2 == 0 { 1.0 } else { -1.0 },
            local: i % 5 == 0,
            old_logprobs: None,
        })
        .collect();

    let device = Default::default();
    let arch = TransformerConfig::tiny_sized(tokenizer.vocab_size(), hidden_size, layers, heads);
    let model: Transformer<B> = arch.init(&device);
    let reference = model.valid();
    let loss = LossConfig::default();

    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };

    // Generation: the prompts of one lockstep call of each role, 4 rollouts x 2 conversations.
    let inference = model.valid();
    let parts = [1usize, 2, 4];
    println!("| role | prompts | parts | generated tokens/s | vs 1 |");
    println!("|---|---:|---:|---:|---:|");
    for (role, budget) in [
        (Role::Extractor, config.agent.max_extract_tokens),
        (Role::Manager, config.agent.max_manage_tokens),
    ] {
        let prompts: Vec<_> = examples
            .iter()
            .filter(|e| e.role == role)
            .take(8)
            .map(|e| e.prompt.clone())
            .collect();
        let mut times = vec![Vec::new(); parts.len()];
        let mut generated = vec![0usize; parts.len()];
        for _round in 0..ROUNDS {
            for (k, &generation_shards) in parts.iter().enumerate() {
                let agent_config = AgentConfig {
                    generation_shards,
                    ..config.agent.clone()
                };
                let agent = Agent {
                    model: &inference,
                    tokenizer: &tokenizer,
                    config: &agent_config,
                };
                let mut rng = ChaCha8Rng::seed_from_u64(2);
                let start = Instant::now();
                let out = agent.generate(&prompts, budget, 1.0, 1.0, &mut rng);
                times[k].push(start.elapsed().as_secs_f64());
                generated[k] = out.iter().map(|g| g.completion.len()).sum();
            }
        }
        let base = generated[0] as f64 / median(&times[0]);
        for (k, &p) in parts.iter().enumerate() {
            let rate = generated[k] as f64 / median(&times[k]);
            println!(
                "| {role:?} | {} | {p} | {rate:.0} | {:.2}x |",
                prompts.len(),
                rate / base
            );
        }
    }
    if std::env::var("SHARDS_BENCH").is_ok_and(|v| v == "generate") {
        return;
    }
    old_logprobs_table(&model, &reference, &rl, &config, &loss);
    if std::env::var("SHARDS_BENCH").is_ok_and(|v| v == "old") {
        return;
    }

    let sft_tokens: usize = sft.iter().map(|e| e.prompt.len() + e.completion.len()).sum();
    let shard_counts = [1usize, 2, 4, 8];
    let mut sft_times = vec![Vec::new(); shard_counts.len()];
    let mut rl_times = vec![Vec::new(); shard_counts.len()];
    let mut rl_tokens = 0u64;
    for _round in 0..ROUNDS {
        for (k, &shards) in shard_counts.iter().enumerate() {
            let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let start = Instant::now();
            let settings = EpochSettings {
                batch_size: config.sft.batch_size,
                prompt_weight: config.sft.prompt_loss_weight,
                shards,
            };
            let _ = sft_epoch(
                model.clone(),
                &mut optim,
                &sft,
                settings,
                |_| 1e-3,
                &mut rng,
                |_, _| {},
            );
            sft_times[k].push(start.elapsed().as_secs_f64());

            let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
            let settings = UpdateSettings {
                loss: &loss,
                epochs: config.rl.logo.ppo_epochs,
                minibatch_size: config.rl.minibatch_size,
                learning_rate: 1e-4,
                max_grad_norm: 1.0,
                shards,
            };
            let start = Instant::now();
            let (_, stats) = ppo_update(
                model.clone(),
                &mut optim,
                Some(&reference),
                &rl,
                &settings,
                &mut rng,
            );
            rl_times[k].push(start.elapsed().as_secs_f64());
            rl_tokens = stats.tokens;
        }
    }
    println!(
        "SFT: {} sequences in minibatches of {}; RL update: {} samples, minibatches of {}, {} epochs (old and reference log-probs included)",
        sft.len(),
        config.sft.batch_size,
        rl.len(),
        config.rl.minibatch_size,
        config.rl.logo.ppo_epochs
    );
    println!("| shards | SFT tokens/s | vs 1 | RL update tokens/s | vs 1 |");
    println!("|---:|---:|---:|---:|---:|");
    let (sft1, rl1) = (median(&sft_times[0]), median(&rl_times[0]));
    for (k, &shards) in shard_counts.iter().enumerate() {
        let (s, r) = (median(&sft_times[k]), median(&rl_times[k]));
        println!(
            "| {shards} | {:.0} | {:.2}x | {:.0} | {:.2}x |",
            sft_tokens as f64 / s,
            sft1 / s,
            rl_tokens as f64 / r,
            rl1 / r
        );
    }
}

/// The RL update at the preset's shards with its old log-probs recomputed by a forward pass
/// (`rl.recompute_old_logprobs`) against taken from the sampler (here the same numbers,
/// computed beforehand): seconds per update, medians of interleaved rounds.
fn old_logprobs_table(
    model: &Transformer<B>,
    reference: &Transformer<Flex>,
    rl: &[TrainSample],
    config: &TrainConfig,
    loss: &LossConfig,
) {
    let refs: Vec<&TrainSample> = rl.iter().collect();
    let recorded: Vec<TrainSample> = rl
        .iter()
        .zip(memr2_trainer::update::host_logprobs(
            &model.valid(),
            &refs,
            8,
            true,
        ))
        .map(|(s, old)| TrainSample {
            old_logprobs: Some(old),
            ..s.clone()
        })
        .collect();
    let settings = UpdateSettings {
        loss,
        epochs: config.rl.logo.ppo_epochs,
        minibatch_size: config.rl.minibatch_size,
        learning_rate: 1e-4,
        max_grad_norm: 1.0,
        shards: config.shards,
    };
    let mut times = [Vec::new(), Vec::new()];
    for _round in 0..ROUNDS {
        for (k, samples) in [rl, recorded.as_slice()].into_iter().enumerate() {
            let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let start = Instant::now();
            let _ = ppo_update(
                model.clone(),
                &mut optim,
                Some(reference),
                samples,
                &settings,
                &mut rng,
            );
            times[k].push(start.elapsed().as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (recomputed, taken) = (median(&mut times[0]), median(&mut times[1]));
    println!(
        "RL update, {} samples, {} shards: old log-probs recomputed {recomputed:.2} s, taken from the sampler {taken:.2} s ({:.2}x)",
        rl.len(),
        config.shards,
        recomputed / taken
    );
}
