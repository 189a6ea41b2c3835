//! The training run, top to bottom: data, tokenizer, model, supervised warm start, the
//! LoGo-GRPO curriculum with validation and best-checkpoint selection, the final evaluation.
//! Every phase checkpoints so that `resume` continues exactly where a killed run stopped.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, Optimizer};
use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;
use memr2_policy::roles::Role;
use memr2_policy::tokenizer::Tokenizer;
use memr2_policy::{Transformer, TransformerConfig};
use memr2_sim::{Episode, TeacherConfig};
use rand::SeedableRng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::{self, Phase, TrainState};
use crate::config::{ModelSpec, SftConfig, TrainConfig};
use crate::data::{Splits, splits};
use crate::eval::{MemorySource, ORACLE_ROW, Scores, evaluate, extraction_score, report_tables};
use crate::metrics::MetricsLog;
use crate::sft::{
    EpochSettings, TokenizedExample, answerer_corpus, answerer_horizons, build_examples, fit_context,
    sft_epoch, tokenize,
};
use crate::step::{StepContext, StepMetrics, rl_step};
use crate::{TrainError, plot};

/// What the caller (the binary's progress bar) is told as the run goes.
pub enum Event<'a> {
    /// A phase starts with this many units of work.
    Phase {
        /// Name shown to the user.
        name: String,
        /// Units of work in it.
        total: u64,
    },
    /// Units done in the current phase, with a short message.
    Progress {
        /// Units done so far.
        done: u64,
        /// What happened.
        message: String,
    },
    /// A step's metrics.
    Step(&'a StepMetrics),
}

/// Options of a run that are not part of its configuration.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The run directory.
    pub dir: PathBuf,
    /// Continue the run in `dir` from its last checkpoint.
    pub resume: bool,
    /// Start from another run's tokenizer and SFT checkpoint instead of running SFT.
    pub init_from: Option<PathBuf>,
    /// Stop (as if killed) once the run has taken this many RL steps in total, counting steps
    /// taken before a resume; for tests of resume.
    pub stop_after_steps: Option<u64>,
}

/// The outcome of a finished run.
pub struct RunReport {
    /// The evaluation tables (Markdown): scores per system, then paired differences.
    pub table: String,
    /// Rows of the table.
    pub rows: Vec<(String, Scores)>,
    /// The run directory.
    pub dir: PathBuf,
}

/// Files of a run directory.
pub struct RunDir(pub PathBuf);

impl RunDir {
    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
    /// `tokenizer.json`.
    pub fn tokenizer(&self) -> PathBuf {
        self.0.join("tokenizer.json")
    }
    /// `metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }
    /// A checkpoint directory by name (`latest`, `sft`, `best-stage-N`, `final`).
    pub fn checkpoint(&self, name: &str) -> PathBuf {
        self.0.join("checkpoints").join(name)
    }
    /// `plots/`.
    pub fn plots(&self) -> PathBuf {
        self.0.join("plots")
    }
    /// `report.md`.
    pub fn report(&self) -> PathBuf {
        self.0.join("report.md")
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The teacher configuration of the SFT stage.
pub fn teacher_config(config: &TrainConfig) -> TeacherConfig {
    TeacherConfig {
        add_instead_of_update: config.sft.add_instead_of_update,
        miss_delete: config.sft.miss_delete,
        drop_fact: config.sft.drop_fact,
        ..TeacherConfig::default()
    }
}

/// Trains (or loads) the tokenizer of a run.
fn tokenizer_for(config: &TrainConfig, run: &RunDir, data: &Splits) -> Result<Tokenizer, TrainError> {
    if run.tokenizer().exists() {
        return Ok(Tokenizer::from_file(&run.tokenizer())?);
    }
    let tokenizer = match &config.model {
        ModelSpec::Pretrained { dir } => Tokenizer::from_dir(dir)?,
        ModelSpec::Tiny { vocab_size, .. } => {
            let _span = tracing::info_span!("tokenizer").entered();
            let examples = build_examples(
                &data.train,
                &config.curriculum.horizons,
                &teacher_config(config),
                &config.agent,
                config.seed,
            );
            let mut corpus: Vec<String> = Vec::new();
            for e in &examples {
                corpus.push(e.prompt.system.clone());
                corpus.push(e.prompt.user.clone());
                corpus.push(e.completion.clone());
            }
            for episode in &data.train {
                corpus.extend(episode.questions.iter().map(|q| q.answer.clone()));
            }
            Tokenizer::train_bpe(corpus, *vocab_size)?
        }
    };
    tokenizer.save(&run.tokenizer())?;
    Ok(tokenizer)
}

/// A fresh model: the tiny architecture initialised from the seed, or pretrained weights.
fn initial_model<B: Backend>(
    config: &TrainConfig,
    tokenizer: &Tokenizer,
    device: &B::Device,
) -> Result<(Transformer<B>, TransformerConfig), TrainError> {
    match &config.model {
        ModelSpec::Tiny {
            hidden_size,
            layers,
            heads,
            ..
        } => {
            let mut arch = TransformerConfig::tiny(tokenizer.vocab_size());
            arch.hidden_size = *hidden_size;
            arch.intermediate_size = hidden_size * 8 / 3 / 16 * 16;
            arch.num_hidden_layers = *layers;
            arch.num_attention_heads = *heads;
            arch.num_key_value_heads = Some(*heads);
            B::seed(device, config.seed);
            Ok((arch.init(device), arch))
        }
        ModelSpec::Pretrained { dir } => Ok(memr2_policy::load_hf(dir, device)?),
    }
}

/// Mean F1 of the policy's greedy memories on validation episodes at a horizon.
fn validate<B: Backend>(
    policy: &Transformer<B>,
    answerer: &Transformer<B>,
    tokenizer: &Tokenizer,
    config: &TrainConfig,
    episodes: &[Episode],
    rng: &mut ChaCha8Rng,
) -> f64 {
    let _span = tracing::info_span!("validate").entered();
    evaluate(
        &MemorySource::Policy(policy),
        answerer,
        tokenizer,
        &config.agent,
        episodes,
        rng,
    )
    .f1()
}

/// Reports an SFT-style epoch's progress: minibatches done and the last loss.
fn loss_progress<'a>(observe: &'a mut dyn FnMut(Event<'_>)) -> impl FnMut(usize, f64) + 'a {
    move |done, loss| {
        observe(Event::Progress {
            done: done as u64,
            message: format!("loss {loss:.3}"),
        })
    }
}

/// Logs the size of a training corpus, in all and per role.
fn log_corpus(name: &str, tokens: &[TokenizedExample]) {
    let count = |of: &dyn Fn(&TokenizedExample) -> bool| {
        let chosen = tokens.iter().filter(|e| of(e));
        chosen.fold((0, 0, 0), |(n, p, c), e| {
            (n + 1, p + e.prompt.len(), c + e.completion.len())
        })
    };
    let (examples, prompt_tokens, completion_tokens) = count(&|_| true);
    tracing::info!(
        corpus = name,
        examples,
        prompt_tokens,
        completion_tokens,
        "corpus"
    );
    for role in [Role::Extractor, Role::Manager, Role::Answerer] {
        let (examples, prompt_tokens, completion_tokens) = count(&|e| e.role == role);
        if examples > 0 {
            tracing::info!(
                corpus = name,
                ?role,
                examples,
                prompt_tokens,
                completion_tokens,
                "corpus role"
            );
        }
    }
}

fn at_horizon(episodes: &[Episode], h: usize, limit: usize) -> Vec<Episode> {
    episodes.iter().take(limit).map(|e| e.with_horizon(h)).collect()
}

/// Runs (or resumes) a training run to the end and evaluates it.
pub fn run<B: AutodiffBackend>(
    config: TrainConfig,
    options: &RunOptions,
    device: &B::Device,
    observe: &mut dyn FnMut(Event<'_>),
) -> Result<RunReport, TrainError> {
    let run = RunDir(options.dir.clone());
    // 1. The run directory and its configuration.
    let config = if options.resume {
        TrainConfig::from_file(&run.config())?
    } else {
        config.validate()?;
        if run.0.exists() && std::fs::read_dir(&run.0).map_err(io(&run.0))?.next().is_some() {
            return Err(TrainError::Invalid(format!(
                "run directory {} is not empty: pass --resume to continue it, or choose another",
                run.0.display()
            )));
        }
        std::fs::create_dir_all(&run.0).map_err(io(&run.0))?;
        let text = serde_json::to_string_pretty(&config).expect("config serialises");
        std::fs::write(run.config(), text).map_err(io(&run.config()))?;
        if let Some(from) = &options.init_from {
            let from = RunDir(from.clone());
            std::fs::copy(from.tokenizer(), run.tokenizer()).map_err(io(&from.tokenizer()))?;
            for name in ["sft", "answerer"] {
                if name == "sft" || from.checkpoint(name).exists() {
                    let loaded = checkpoint::load::<B>(&from.checkpoint(name), device)?;
                    checkpoint::save::<B, ()>(
                        &run.checkpoint(name),
                        &loaded.model,
                        &loaded.config,
                        None,
                        None,
                    )?;
                }
            }
        }
        config
    };

    // 2. Data, tokenizer, model, optimizer, state.
    let data = splits(&config.data)?;
    let tokenizer = tokenizer_for(&config, &run, &data)?;
    let horizons = config.curriculum.horizons.clone();
    let sft_adam = AdamWConfig::new().with_weight_decay(0.0);
    let rl_adam = AdamWConfig::new().with_weight_decay(0.0);
    // After the warm start: the answerer's own tuning unless there is nothing to tune or it
    // was copied from the run this one starts from.
    let after_sft = if config.answerer.epochs > 0 && !run.checkpoint("answerer").exists() {
        Phase::Answerer { epochs_done: 0 }
    } else {
        Phase::Rl {
            stage: 0,
            steps_done: 0,
        }
    };
    let (mut model, arch, mut optim, mut state) = if options.resume {
        let loaded = checkpoint::load::<B>(&run.checkpoint("latest"), device)?;
        let state = loaded.state.clone().ok_or_else(|| TrainError::Checkpoint {
            path: run.checkpoint("latest"),
            reason: "checkpoint has no training state".into(),
        })?;
        let mut optim = match state.phase {
            Phase::Sft { .. } => sft_adam.init::<B, Transformer<B>>(),
            _ => rl_adam.init::<B, Transformer<B>>(),
        };
        if let Some(record) = loaded.optimizer(device)? {
            optim = optim.load_record(record);
        }
        (loaded.model, loaded.config, optim, state)
    } else if options.init_from.is_some() {
        let sft = checkpoint::load::<B>(&run.checkpoint("sft"), device)?;
        let state = TrainState {
            phase: after_sft.clone(),
            step: 0,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            metrics_lines: 0,
            best: None,
        };
        (sft.model, sft.config, rl_adam.init::<B, Transformer<B>>(), state)
    } else {
        let (model, arch) = initial_model::<B>(&config, &tokenizer, device)?;
        let state = TrainState {
            phase: Phase::Sft { epochs_done: 0 },
            step: 0,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            metrics_lines: 0,
            best: None,
        };
        (model, arch, sft_adam.init::<B, Transformer<B>>(), state)
    };
    let mut log = MetricsLog::open(&run.metrics(), state.metrics_lines)?;
    // The resumable checkpoint: weights, optimiser state and where the run stands.
    let latest = run.checkpoint("latest");
    let save_latest = |model: &Transformer<B>, optim_record, state: &TrainState| {
        checkpoint::save(&latest, model, &arch, Some(optim_record), Some(state))
    };
    tracing::info!(
        parameters = arch.num_parameters(),
        vocab = tokenizer.vocab_size(),
        "model ready"
    );

    // 3. Supervised warm start on the imperfect teacher.
    if let Phase::Sft { epochs_done } = state.phase {
        // The answerer's examples stay in the warm start even when it has a phase of its
        // own: without them the extractor learns to copy more slowly (docs/RESULTS.md).
        let examples = build_examples(
            &data.train,
            &horizons,
            &teacher_config(&config),
            &config.agent,
            config.seed,
        );
        let tokens = fit_context(tokenize(&examples, &tokenizer), model.max_positions());
        log_corpus("sft", &tokens);
        let batches = tokens.len().div_ceil(config.sft.batch_size) as u64;
        for epoch in epochs_done..config.sft.epochs {
            observe(Event::Phase {
                name: format!("SFT epoch {}/{}", epoch + 1, config.sft.epochs),
                total: batches,
            });
            let (next, loss, skipped) = sft_epoch(
                model,
                &mut optim,
                &tokens,
                EpochSettings {
                    batch_size: config.sft.batch_size,
                    prompt_weight: config.sft.prompt_loss_weight,
                    shards: config.shards,
                },
                |i| {
                    let step = epoch * batches as usize + i;
                    config
                        .sft
                        .learning_rate_at(step, config.sft.epochs * batches as usize)
                },
                &mut state.rng,
                loss_progress(observe),
            );
            model = next;
            // How well the extractor copies facts out of the turns, on validation conversations.
            let probe = at_horizon(&data.validation, horizons[0], config.eval.validation_episodes);
            let extraction = extraction_score(&model.valid(), &tokenizer, &config.agent, &probe);
            tracing::info!(
                epoch,
                loss,
                skipped,
                extractor_precision = extraction.precision,
                extractor_recall = extraction.recall,
                "sft epoch done"
            );
            log.append(&serde_json::json!({
                "sft_epoch": epoch + 1,
                "loss": loss,
                "skipped_nonfinite": skipped,
                "validation_extractor_precision": extraction.precision,
                "validation_extractor_recall": extraction.recall,
                "validation_extractor_format_errors": extraction.format_errors,
            }))?;
            state.phase = Phase::Sft {
                epochs_done: epoch + 1,
            };
            state.metrics_lines = log.lines();
            save_latest(&model, optim.to_record(), &state)?;
        }
        checkpoint::save::<B, ()>(&run.checkpoint("sft"), &model, &arch, None, None)?;
        state.phase = after_sft;
        optim = rl_adam.init::<B, Transformer<B>>();
        save_latest(&model, optim.to_record(), &state)?;
    }

    // 4. The frozen answerer: the SFT weights tuned on answerer examples alone, judged after
    //    each epoch by how well it answers the validation questions from the oracle's memory.
    if let Phase::Answerer { epochs_done } = state.phase {
        let a = &config.answerer;
        let max = horizons.iter().copied().max().unwrap_or(0);
        let examples = answerer_corpus(
            &data.train,
            &answerer_horizons(max, a.horizon_stride),
            &config.agent,
        );
        let tokens = fit_context(tokenize(&examples, &tokenizer), model.max_positions());
        log_corpus("answerer", &tokens);
        let validation = at_horizon(&data.validation, max, usize::MAX);
        let schedule = SftConfig {
            learning_rate: a.learning_rate,
            ..config.sft.clone()
        };
        let batches = tokens.len().div_ceil(config.sft.batch_size) as u64;
        for epoch in epochs_done..a.epochs {
            observe(Event::Phase {
                name: format!("answerer epoch {}/{}", epoch + 1, a.epochs),
                total: batches,
            });
            let (next, loss, skipped) = sft_epoch(
                model,
                &mut optim,
                &tokens,
                EpochSettings {
                    batch_size: config.sft.batch_size,
                    prompt_weight: a.prompt_loss_weight,
                    shards: config.shards,
                },
                |i| schedule.learning_rate_at(epoch * batches as usize + i, a.epochs * batches as usize),
                &mut state.rng,
                loss_progress(observe),
            );
            model = next;
            let answerer = model.valid();
            let mut score = |source: MemorySource<'_, B::InnerBackend>| {
                evaluate(
                    &source,
                    &answerer,
                    &tokenizer,
                    &config.agent,
                    &validation,
                    &mut state.rng,
                )
                .f1()
            };
            let (oracle_f1, no_memory_f1) = (score(MemorySource::Oracle), score(MemorySource::Empty));
            tracing::info!(
                epoch,
                loss,
                skipped,
                oracle_f1,
                no_memory_f1,
                "answerer epoch done"
            );
            log.append(&serde_json::json!({
                "answerer_epoch": epoch + 1,
                "loss": loss,
                "skipped_nonfinite": skipped,
                "validation_oracle_f1": oracle_f1,
                "validation_no_memory_f1": no_memory_f1,
            }))?;
            state.phase = Phase::Answerer {
                epochs_done: epoch + 1,
            };
            state.metrics_lines = log.lines();
            save_latest(&model, optim.to_record(), &state)?;
        }
        checkpoint::save::<B, ()>(&run.checkpoint("answerer"), &model, &arch, None, None)?;
        // The policy starts the curriculum from the SFT weights, not the answerer's.
        model = checkpoint::load::<B>(&run.checkpoint("sft"), device)?.model;
        state.phase = Phase::Rl {
            stage: 0,
            steps_done: 0,
        };
        optim = rl_adam.init::<B, Transformer<B>>();
        save_latest(&model, optim.to_record(), &state)?;
    }

    // 5. The frozen answerer (its own checkpoint, or the SFT model when it has none) and the
    //    KL reference (the SFT model), read back from their checkpoints.
    let sft_model = checkpoint::load::<B>(&run.checkpoint("sft"), device)?
        .model
        .valid();
    let answerer_model = match run.checkpoint("answerer") {
        dir if dir.exists() => Some(checkpoint::load::<B>(&dir, device)?.model.valid()),
        _ => None,
    };
    let answerer = answerer_model.as_ref().unwrap_or(&sft_model);
    let logo = &config.rl.logo;
    let context = StepContext::<B> {
        tokenizer: &tokenizer,
        answerer,
        reference: (logo.kl_coef > 0.0).then_some(&sft_model),
        config: &config,
    };

    // 6. The curriculum: each stage starts from the best validation checkpoint of the last.
    while let Phase::Rl { stage, steps_done } = state.phase {
        let h = horizons[stage];
        let mut train_pool = at_horizon(&data.train, h, config.rl.train_episodes.unwrap_or(usize::MAX));
        for episode in &mut train_pool {
            episode
                .questions
                .retain(|q| !config.rl.reward_excludes.contains(&q.category));
        }
        let validation_h = config.eval.validation_sessions.unwrap_or(h);
        let validation = at_horizon(&data.validation, validation_h, config.eval.validation_episodes);
        let best_dir = run.checkpoint(&format!("best-stage-{h}"));
        let total = config.curriculum.steps_per_stage as u64;
        observe(Event::Phase {
            name: format!("LoGo-GRPO stage {}/{} ({h} sessions)", stage + 1, horizons.len()),
            total,
        });
        let score = |model: &Transformer<B>, rng: &mut ChaCha8Rng| {
            validate(&model.valid(), answerer, &tokenizer, &config, &validation, rng)
        };
        let record = |step: u64, f1: f64| {
            serde_json::json!({
                "step": step,
                "horizon": h,
                "validation_sessions": validation_h,
                "validation_f1": f1
            })
        };
        if steps_done == 0 {
            let f1 = score(&model, &mut state.rng);
            state.best = Some((f1, state.step));
            log.append(&record(state.step, f1))?;
            checkpoint::save::<B, ()>(&best_dir, &model, &arch, None, None)?;
        }
        for step_in_stage in steps_done..config.curriculum.steps_per_stage {
            if options.stop_after_steps.is_some_and(|s| state.step >= s) {
                return Err(TrainError::Stopped { step: state.step });
            }
            let episodes: Vec<Episode> = train_pool
                .choose_multiple(&mut state.rng, config.rl.episodes_per_step.min(train_pool.len()))
                .cloned()
                .collect();
            let (next, mut metrics) = rl_step(
                model,
                &mut optim,
                &context,
                &episodes,
                config.rl.learning_rate_at(step_in_stage),
                &mut state.rng,
            )?;
            model = next;
            state.step += 1;
            metrics.step = state.step;
            observe(Event::Step(&metrics));
            log.append(&metrics)?;
            let done = step_in_stage + 1;
            if done % config.curriculum.validate_every == 0 || done == config.curriculum.steps_per_stage {
                let f1 = score(&model, &mut state.rng);
                log.append(&record(state.step, f1))?;
                if state.best.is_none_or(|(best, _)| f1 > best) {
                    state.best = Some((f1, state.step));
                    checkpoint::save::<B, ()>(&best_dir, &model, &arch, None, None)?;
                }
            }
            observe(Event::Progress {
                done: done as u64,
                message: format!("F1 {:.3}", metrics.f1),
            });
            state.phase = Phase::Rl {
                stage,
                steps_done: done,
            };
            state.metrics_lines = log.lines();
            save_latest(&model, optim.to_record(), &state)?;
        }
        // The next stage starts from this stage's best checkpoint, with a fresh optimizer.
        model = checkpoint::load::<B>(&best_dir, device)?.model;
        tracing::info!(horizon = h, best = ?state.best, "stage done");
        state.phase = if stage + 1 < horizons.len() {
            Phase::Rl {
                stage: stage + 1,
                steps_done: 0,
            }
        } else {
            Phase::Done
        };
        state.best = None;
        optim = rl_adam.init::<B, Transformer<B>>();
        state.metrics_lines = log.lines();
        save_latest(&model, optim.to_record(), &state)?;
    }
    checkpoint::save::<B, ()>(&run.checkpoint("final"), &model, &arch, None, None)?;

    // 7. Plots and the final evaluation.
    if let Ok(records) = MetricsLog::read(&run.metrics()) {
        let steps: Vec<_> = records
            .into_iter()
            .filter(|r| r.get("reward_global").is_some())
            .collect();
        plot::plot_run(&steps, &run.plots())?;
    }
    let name = if logo.p_local > 0.0 {
        "LoGo-GRPO"
    } else {
        "GRPO (global only)"
    };
    let final_model = model.valid();
    let systems: Vec<(&str, Option<&Transformer<B::InnerBackend>>)> =
        vec![("SFT only", Some(&sft_model)), (name, Some(&final_model))];
    let rows = final_evaluation(&config, &data, &tokenizer, answerer, &systems, observe)?;
    let table = report_tables(&rows);
    let report = format!(
        "# Evaluation\n\nTest conversations: {}, horizon {} sessions, seed {}.\n\n{table}",
        config.eval.test_episodes.min(data.test.len()),
        config.eval.sessions,
        config.seed
    );
    std::fs::write(run.report(), &report).map_err(io(&run.report()))?;
    Ok(RunReport {
        table,
        rows,
        dir: run.0,
    })
}

/// The evaluation table: no memory, oracle memory, then each named policy's memory, all
/// answered by the same frozen answerer on the test conversations.
pub fn final_evaluation<B: Backend>(
    config: &TrainConfig,
    data: &Splits,
    tokenizer: &Tokenizer,
    answerer: &Transformer<B>,
    systems: &[(&str, Option<&Transformer<B>>)],
    observe: &mut dyn FnMut(Event<'_>),
) -> Result<Vec<(String, Scores)>, TrainError> {
    let test = at_horizon(&data.test, config.eval.sessions, config.eval.test_episodes);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x5eed);
    let mut rows = Vec::new();
    observe(Event::Phase {
        name: "evaluation".into(),
        total: 2 + systems.len() as u64,
    });
    let fixed: [(&str, MemorySource<'_, B>); 2] = [
        ("no memory", MemorySource::Empty),
        (ORACLE_ROW, MemorySource::Oracle),
    ];
    for (name, source) in fixed.iter() {
        rows.push((
            name.to_string(),
            evaluate(source, answerer, tokenizer, &config.agent, &test, &mut rng),
        ));
        observe(Event::Progress {
            done: rows.len() as u64,
            message: name.to_string(),
        });
    }
    for (name, model) in systems {
        if let Some(model) = model {
            let source = MemorySource::Policy(*model);
            rows.push((
                name.to_string(),
                evaluate(&source, answerer, tokenizer, &config.agent, &test, &mut rng),
            ));
        }
        observe(Event::Progress {
            done: rows.len() as u64,
            message: name.to_string(),
        });
    }
    Ok(rows)
}
