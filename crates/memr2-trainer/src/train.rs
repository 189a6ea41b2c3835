//! The training run, phase by phase: [`run_with`] takes any [`Environment`], builds the
//! tokenizer and model, then runs the supervised warm start (`warm_start`), the frozen
//! answerer's tuning (`tune_answerer`), the LoGo-GRPO curriculum with validation and
//! best-checkpoint selection (`curriculum`), and the final evaluation (`evaluation`), each a
//! function of this module.
//! Every phase checkpoints so that `resume` continues exactly where a killed run stopped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;
use memr2_policy::optim::{AdamW, AdamWConfig};
use memr2_policy::roles::{self, Role};
use memr2_policy::tokenizer::Tokenizer;
use memr2_policy::{Transformer, TransformerConfig};
use memr2_sim::{Environment, Episode, TeacherConfig};
use rand::SeedableRng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

use crate::TrainError;
use crate::checkpoint::{self, Phase, TrainState};
use crate::collective;
use crate::config::{AgentConfig, EmbedderSlot, Keep, ModelSpec, SftConfig, TrainConfig};
use crate::data::{Splits, environment};
use crate::eval::{
    Evaluation, MemorySource, ORACLE_ROW, Scores, Unavailable, evaluate, evaluate_judged, extraction_score,
};
use crate::judge::Judge;
use crate::metrics::MetricsLog;
use crate::report::{self, EvaluationRecord, NO_MEMORY_ROW, SFT_ROW};
use crate::served::{Answerer, ServedEmbedder, ServedModel};
use crate::sft::{
    EpochSettings, TeacherExample, TokenizedExample, answerer_corpus, answerer_horizons, build_examples,
    fit_context, sft_epoch, task_examples, tokenize,
};
use crate::step::{ActorState, StepContext, StepMetrics, rl_step};
use crate::teacher::ServedTeacher;

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
    /// Rows the environment could not offer (the oracle's without gold facts), and why.
    pub unavailable: Vec<Unavailable>,
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
    /// A checkpoint directory by name (`latest`, `sft`, `best-stage-N`, `last-stage-N`, `final`).
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
    /// `evaluation.json`: the final evaluation's rows ([`crate::report::EvaluationRecord`]).
    pub fn evaluation(&self) -> PathBuf {
        self.0.join("evaluation.json")
    }
    /// `served-cache/`: the served models' responses, by the hash of their request.
    pub fn served_cache(&self) -> PathBuf {
        self.0.join("served-cache")
    }
    /// `tensorboard/`: TensorBoard event files mirroring `metrics.jsonl`.
    pub fn tensorboard(&self) -> PathBuf {
        self.0.join("tensorboard")
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

/// Where the warm start's examples come from: the environment (its gold facts make the
/// imperfect and the perfect teachers) and, when one is served, a teacher model.
#[derive(Clone, Copy)]
struct Teachers<'a> {
    env: &'a dyn Environment,
    served: Option<&'a ServedTeacher>,
}

impl Teachers<'_> {
    /// Answerer examples at `horizons`: over the perfect teacher's memory where there are gold
    /// facts, otherwise over the served teacher's.
    fn answerer_examples(
        self,
        data: &Splits,
        horizons: &[usize],
        agent: &AgentConfig,
    ) -> Result<Vec<TeacherExample>, TrainError> {
        match self.served {
            Some(teacher) if !self.env.capabilities().gold_facts => {
                Ok(teacher.traces(&data.train, horizons, agent)?.answerer)
            }
            _ => Ok(answerer_corpus(&data.train, horizons, agent)),
        }
    }
}

/// The warm start's corpus: extractor and manager examples from the served teacher when there
/// is one, otherwise from the environment's imperfect teacher; answerer examples at every
/// curriculum horizon ([`Teachers::answerer_examples`]); and, where there are gold facts, the
/// task's own teacher examples when it has a teacher. The tokenizer of the built-in model is
/// trained on the same texts.
fn warm_start_examples(
    config: &TrainConfig,
    data: &Splits,
    teachers: Teachers<'_>,
) -> Result<Vec<TeacherExample>, TrainError> {
    let agent = &config.agent;
    let horizons = &config.curriculum.horizons;
    let gold_facts = teachers.env.capabilities().gold_facts;
    let mut examples = match teachers.served {
        None => build_examples(&data.train, horizons, &teacher_config(config), agent, config.seed),
        Some(teacher) => {
            let traces = teacher.traces(&data.train, horizons, agent)?;
            let mut examples = traces.examples;
            if gold_facts {
                examples.extend(answerer_corpus(&data.train, horizons, agent));
            } else {
                examples.extend(traces.answerer);
            }
            examples
        }
    };
    if gold_facts {
        let horizon = config.curriculum.max_horizon();
        let task = teachers.env.task();
        examples.extend(task_examples(&data.train, horizon, task, agent, config.seed));
    }
    agent.embedder.check()?;
    Ok(examples)
}

/// Trains (or loads) the tokenizer of a run.
fn tokenizer_for(
    config: &TrainConfig,
    run: &RunDir,
    data: &Splits,
    teachers: Teachers<'_>,
) -> Result<Tokenizer, TrainError> {
    if run.tokenizer().exists() {
        return Ok(Tokenizer::from_file(&run.tokenizer())?);
    }
    let tokenizer = match &config.model {
        ModelSpec::Pretrained { dir } => Tokenizer::from_dir(dir)?,
        ModelSpec::Tiny { vocab_size, .. } => {
            let _span = tracing::info_span!("tokenizer").entered();
            let examples = warm_start_examples(config, data, teachers)?;
            let mut corpus: Vec<String> = Vec::new();
            for e in &examples {
                let system = roles::shown_system(&e.prompt.system, config.agent.compact_prompts);
                corpus.push(system.to_string());
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
            let arch = TransformerConfig::tiny_sized(tokenizer.vocab_size(), *hidden_size, *layers, *heads);
            Ok((arch.init_seeded(config.seed, device), arch))
        }
        ModelSpec::Pretrained { dir } => Ok(memr2_policy::load_hf(dir, device)?),
    }
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
    for role in Role::ALL {
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

/// The settings that ask for more validation or test conversations than the data holds, each
/// with what will be used instead: all of the split's conversations ([`at_horizon`] takes at
/// most the split). A data file's splits are fixed by the file, so this is a warning, not an
/// error; the report's headline gives the count the evaluation used.
fn short_splits(config: &TrainConfig, data: &Splits) -> Vec<String> {
    [
        (
            "eval.validation_episodes",
            config.eval.validation_episodes,
            "validation",
            data.validation.len(),
        ),
        (
            "eval.test_episodes",
            config.eval.test_episodes,
            "test",
            data.test.len(),
        ),
    ]
    .into_iter()
    .filter(|&(_, asked, _, held)| asked > held)
    .map(|(setting, asked, split, held)| {
        format!("{setting} = {asked} but the data holds {held} {split} conversation(s): all {held} are used")
    })
    .collect()
}

fn at_horizon(episodes: &[Episode], h: usize, limit: usize) -> Vec<Episode> {
    episodes.iter().take(limit).map(|e| e.with_horizon(h)).collect()
}

/// The optimizer of every phase: AdamW without weight decay.
type Adam<B> = OptimizerAdaptor<AdamW, Transformer<B>, B>;

fn adam<B: AutodiffBackend>() -> Adam<B> {
    AdamWConfig::new()
        .with_weight_decay(0.0)
        .init::<B, Transformer<B>>()
}

/// What a run carries from phase to phase: the model being trained, its optimizer, where the
/// run stands, and its metrics log.
struct Training<B: AutodiffBackend> {
    model: Transformer<B>,
    arch: TransformerConfig,
    optim: Adam<B>,
    /// The actor RL trains beside the policy (`rl.actor`), from the curriculum on.
    actor: Option<ActorState<B, Adam<B>>>,
    state: TrainState,
    log: MetricsLog,
    run: RunDir,
}

impl<B: AutodiffBackend> Training<B> {
    /// Saves the resumable checkpoint: weights, optimizer state and where the run stands (rank
    /// 0 alone writes).
    fn save_latest(&mut self) -> Result<(), TrainError> {
        self.state.metrics_lines = self.log.lines();
        if !collective::is_writer() {
            return Ok(());
        }
        checkpoint::save_with_actor(
            &self.run.checkpoint("latest"),
            &self.model,
            &self.arch,
            Some(self.optim.to_record()),
            Some(&self.state),
            self.actor.as_ref().map(|a| (&a.model, Some(a.optim.to_record()))),
        )
    }

    /// Saves the model alone under a checkpoint name (rank 0 alone writes).
    fn save_as(&self, name: &str) -> Result<(), TrainError> {
        if !collective::is_writer() {
            return Ok(());
        }
        checkpoint::save_with_actor::<B, ()>(
            &self.run.checkpoint(name),
            &self.model,
            &self.arch,
            None,
            None,
            self.actor.as_ref().map(|a| (&a.model, None)),
        )
    }

    /// Moves to `phase` with fresh optimizers and saves.
    fn enter(&mut self, phase: Phase) -> Result<(), TrainError> {
        self.state.phase = phase;
        self.optim = adam::<B>();
        if let Some(actor) = &mut self.actor {
            actor.optim = adam::<B>();
        }
        self.save_latest()
    }

    /// Reads the policy, and the actor when RL trains one, back from checkpoint `name`.
    fn restore(&mut self, name: &str, device: &B::Device) -> Result<(), TrainError> {
        let path = self.run.checkpoint(name);
        let loaded = checkpoint::load::<B>(&path, device)?;
        self.model = loaded.model;
        if let Some(actor) = &mut self.actor {
            actor.model = loaded.actor.ok_or_else(|| TrainError::Checkpoint {
                path,
                reason: "rl.actor is set but the checkpoint holds no actor".into(),
            })?;
        }
        Ok(())
    }

    /// Starts training the actor (`rl.actor`) from the frozen one, unless a resumed
    /// checkpoint brought it back.
    fn start_actor(
        &mut self,
        config: &TrainConfig,
        frozen: &Frozen<B>,
        device: &B::Device,
    ) -> Result<(), TrainError> {
        if config.rl.actor.is_none() || self.actor.is_some() {
            return Ok(());
        }
        let name = if frozen.tuned_answerer.is_some() {
            "answerer"
        } else {
            "sft"
        };
        self.actor = Some(ActorState {
            model: checkpoint::load::<B>(&self.run.checkpoint(name), device)?.model,
            optim: adam::<B>(),
        });
        Ok(())
    }
}

/// Runs (or resumes) a training run on the environment its configuration names
/// ([`TrainConfig::data`]) to the end and evaluates it.
pub fn run<B: AutodiffBackend>(
    config: TrainConfig,
    options: &RunOptions,
    device: &B::Device,
    observe: &mut dyn FnMut(Event<'_>),
) -> Result<RunReport, TrainError> {
    let data = if options.resume {
        TrainConfig::from_file(&RunDir(options.dir.clone()).config())?.data
    } else {
        config.data.clone()
    };
    let env = environment(&data)?;
    run_with::<B>(env.as_ref(), config, options, device, observe)
}

/// Runs (or resumes) a training run on any environment to the end and evaluates it: the
/// library's entry point for environments defined outside memr2. `config.data` is recorded
/// in the run's `config.json` but not read; on resume, pass the same environment again.
///
/// The phases, in order: the supervised warm start (from the environment's gold facts,
/// [`Environment::capabilities`], or from a served teacher, `served.teacher`), the frozen
/// answerer's tuning, the LoGo-GRPO curriculum, the evaluation.
pub fn run_with<B: AutodiffBackend>(
    env: &dyn Environment,
    config: TrainConfig,
    options: &RunOptions,
    device: &B::Device,
    observe: &mut dyn FnMut(Event<'_>),
) -> Result<RunReport, TrainError> {
    let run = RunDir(options.dir.clone());
    let mut config = if options.resume {
        // An embedder of the caller's own is not written to config.json: it comes back from
        // the configuration passed in.
        let mut resumed = TrainConfig::from_file(&run.config())?;
        resumed.agent.embedder = config.agent.embedder.clone();
        resumed.check_retrieval()?;
        resumed
    } else {
        config.validate()?;
        config
    };
    check_capabilities(env, &config, options)?;
    let ranks = collective::world().size();
    if ranks > 1 && (config.shards % ranks != 0 || config.agent.generation_shards % ranks != 0) {
        tracing::warn!(
            ranks,
            shards = config.shards,
            generation_shards = config.agent.generation_shards,
            "shards and generation shards that are not multiples of the ranks leave some ranks idle part of the time"
        );
    }
    // Decided once, before anything is written (other ranks would see rank 0's files).
    let need_teacher = teacher_needed(&config, options, &run);
    // Served models answer before any work starts, not after the warm start.
    for (role, endpoint) in config.served.roles() {
        if role == "teacher" && !need_teacher {
            continue;
        }
        if role == "embeddings" {
            ServedEmbedder::connect(endpoint.clone(), None)?;
        } else {
            ServedModel::connect(role, endpoint.clone(), None)?;
        }
    }
    let data = Splits::of(env)?;
    for message in short_splits(&config, &data) {
        tracing::warn!("{message}");
    }
    // Rank 0 creates the run directory; over several ranks, the others wait for it.
    collective::rank0_only(|| {
        if options.resume {
            return Ok(());
        }
        create_run_dir::<B>(&run, &config, options, device)
    })?;
    attach_embedder(&mut config, &run.served_cache())?;
    let teacher = match &config.served.teacher {
        Some(endpoint) if need_teacher => Some(ServedTeacher::connect(
            endpoint.clone(),
            Some(&run.served_cache()),
        )?),
        _ => None,
    };
    let teachers = Teachers {
        env,
        served: teacher.as_ref(),
    };
    // Rank 0 trains and writes the tokenizer; the others read it.
    let tokenizer = collective::rank0_first(|| tokenizer_for(&config, &run, &data, teachers))?;
    let mut training = start_or_resume::<B>(&config, options, run, &tokenizer, device)?;
    tracing::info!(
        parameters = training.arch.num_parameters(),
        vocab = tokenizer.vocab_size(),
        environment = env.name(),
        task = env.task().name(),
        "model ready"
    );
    if let Phase::Sft { epochs_done } = training.state.phase {
        training = warm_start(
            training,
            &config,
            teachers,
            &data,
            &tokenizer,
            epochs_done,
            observe,
        )?;
    }
    if let Phase::Answerer { epochs_done } = training.state.phase {
        training = tune_answerer(
            training,
            &config,
            teachers,
            &data,
            &tokenizer,
            epochs_done,
            device,
            observe,
        )?;
    }
    // The warm start's checkpoints are read back: rank 0 has written them once all get here.
    collective::world().barrier();
    let frozen = Frozen::<B>::load(&training.run, &config, device)?;
    training.start_actor(&config, &frozen, device)?;
    let context = StepContext::<B> {
        tokenizer: &tokenizer,
        answerer: frozen.answerer(),
        task: env.task(),
        reference: (config.rl.logo.kl_coef > 0.0).then_some(&frozen.sft),
        config: &config,
    };
    let training = curriculum(training, &context, &data, options, device, observe)?;
    training.save_as("final")?;
    evaluation(&training, &config, env, &data, &tokenizer, &frozen, observe)
}

/// Connects the embedding model a configuration serves (`served.embeddings`), caching its
/// vectors in `cache`, and attaches it to `config.agent`, so that every memory made with that
/// agent configuration carries it. Does nothing when no embedding model is served.
pub fn attach_embedder(config: &mut TrainConfig, cache: &Path) -> Result<(), TrainError> {
    if let Some(endpoint) = &config.served.embeddings {
        let embedder = ServedEmbedder::connect(endpoint.clone(), Some(cache))?;
        config.agent.embedder = EmbedderSlot::served(Arc::new(embedder));
    }
    Ok(())
}

/// Whether the phases a teacher writes examples for are still to run: the tokenizer of the
/// built-in model, the warm start, the answerer's tuning. A phase is skipped when the run it
/// starts from (or the run being resumed) has its checkpoint already.
fn teacher_needed(config: &TrainConfig, options: &RunOptions, run: &RunDir) -> bool {
    let from = match (&options.init_from, options.resume) {
        (Some(dir), _) => RunDir(dir.clone()),
        _ => RunDir(run.0.clone()),
    };
    let tokenizer = matches!(config.model, ModelSpec::Tiny { .. }) && !run.tokenizer().exists();
    let sft = config.sft.epochs > 0 && !from.checkpoint("sft").exists();
    let answerer = config.answerer.epochs > 0 && !from.checkpoint("answerer").exists();
    tokenizer || sft || answerer
}

/// Refuses, before any work, what the environment cannot support.
fn check_capabilities(
    env: &dyn Environment,
    config: &TrainConfig,
    options: &RunOptions,
) -> Result<(), TrainError> {
    if env.capabilities().gold_facts || config.served.teacher.is_some() {
        return Ok(());
    }
    let missing = |needed_by: &str, fix: &str| TrainError::Capability {
        environment: env.name().to_string(),
        capability: "gold facts",
        needed_by: needed_by.to_string(),
        fix: fix.to_string(),
    };
    // A phase is skipped when the run it starts from (or the run being resumed) has its
    // checkpoint already.
    let from = match (&options.init_from, options.resume) {
        (Some(dir), _) => Some(RunDir(dir.clone())),
        (None, true) => Some(RunDir(options.dir.clone())),
        (None, false) => None,
    };
    let done = |name: &str| from.as_ref().is_some_and(|r| r.checkpoint(name).exists());
    if config.sft.epochs > 0 && !done("sft") {
        return Err(missing(
            "the supervised warm start (its extractor and manager examples are written from them)",
            "pass --teacher-endpoint URL --teacher-model NAME to have a served model write them, \
             --sft-epochs 0 --answerer-epochs 0 to start RL from the initial model, or \
             --init-from RUN to start from another run's warm start",
        ));
    }
    if config.answerer.epochs > 0 && !done("answerer") {
        return Err(missing(
            "the answerer's tuning (it answers from the memory the gold facts make)",
            "pass --teacher-endpoint URL --teacher-model NAME to tune it on a served teacher's \
             memory, or --answerer-epochs 0 to let the warm-start model answer",
        ));
    }
    Ok(())
}

/// Creates the run directory with its `config.json` and, for `init_from`, the tokenizer and
/// checkpoints of the run it starts from.
fn create_run_dir<B: AutodiffBackend>(
    run: &RunDir,
    config: &TrainConfig,
    options: &RunOptions,
    device: &B::Device,
) -> Result<(), TrainError> {
    if run.0.exists() && std::fs::read_dir(&run.0).map_err(io(&run.0))?.next().is_some() {
        return Err(TrainError::Invalid(format!(
            "run directory {} is not empty: pass --resume to continue it, or choose another",
            run.0.display()
        )));
    }
    std::fs::create_dir_all(&run.0).map_err(io(&run.0))?;
    let text = serde_json::to_string_pretty(config).expect("config serialises");
    std::fs::write(run.config(), text).map_err(io(&run.config()))?;
    if let Some(from) = &options.init_from {
        let from = RunDir(from.clone());
        std::fs::copy(from.tokenizer(), run.tokenizer()).map_err(io(&from.tokenizer()))?;
        for name in ["sft", "answerer"] {
            if name == "sft" || from.checkpoint(name).exists() {
                let loaded = checkpoint::load::<B>(&from.checkpoint(name), device)?;
                checkpoint::save::<B, ()>(&run.checkpoint(name), &loaded.model, &loaded.config, None, None)?;
            }
        }
    }
    Ok(())
}

/// The model, optimizer and state a run starts from: its `latest` checkpoint on resume,
/// another run's warm start for `init_from`, else a fresh model before the warm start.
fn start_or_resume<B: AutodiffBackend>(
    config: &TrainConfig,
    options: &RunOptions,
    run: RunDir,
    tokenizer: &Tokenizer,
    device: &B::Device,
) -> Result<Training<B>, TrainError> {
    let fresh_state = |phase| TrainState {
        phase,
        step: 0,
        rng: ChaCha8Rng::seed_from_u64(config.seed),
        metrics_lines: 0,
        best: None,
    };
    let mut actor = None;
    let (model, arch, optim, state) = if options.resume {
        let loaded = checkpoint::load::<B>(&run.checkpoint("latest"), device)?;
        let state = loaded.state.clone().ok_or_else(|| TrainError::Checkpoint {
            path: run.checkpoint("latest"),
            reason: "checkpoint has no training state".into(),
        })?;
        let mut optim = adam::<B>();
        if let Some(record) = loaded.optimizer(device)? {
            optim = optim.load_record(record);
        }
        if let Some(model) = loaded.actor.clone() {
            let mut actor_optim = adam::<B>();
            if let Some(record) = loaded.actor_optimizer(device)? {
                actor_optim = actor_optim.load_record(record);
            }
            actor = Some(ActorState {
                model,
                optim: actor_optim,
            });
        }
        (loaded.model, loaded.config, optim, state)
    } else if options.init_from.is_some() {
        let sft = checkpoint::load::<B>(&run.checkpoint("sft"), device)?;
        let state = fresh_state(after_warm_start(config, &run));
        (sft.model, sft.config, adam::<B>(), state)
    } else {
        let (model, arch) = initial_model::<B>(config, tokenizer, device)?;
        (
            model,
            arch,
            adam::<B>(),
            fresh_state(Phase::Sft { epochs_done: 0 }),
        )
    };
    let log = if collective::is_writer() {
        let mut log = MetricsLog::open(&run.metrics(), state.metrics_lines)?;
        log.mirror_to_tensorboard(&run.tensorboard())?;
        log
    } else {
        MetricsLog::counting(state.metrics_lines)
    };
    Ok(Training {
        model,
        arch,
        optim,
        actor,
        state,
        log,
        run,
    })
}

/// The phase after the warm start: the answerer's own tuning unless there is nothing to tune
/// or it was copied from the run this one starts from.
fn after_warm_start(config: &TrainConfig, run: &RunDir) -> Phase {
    if config.answerer.epochs > 0 && !run.checkpoint("answerer").exists() {
        Phase::Answerer { epochs_done: 0 }
    } else {
        Phase::Rl {
            stage: 0,
            steps_done: 0,
        }
    }
}

/// One supervised phase: epochs over a corpus, each followed by a probe of the model whose
/// figures (and seconds, `probe_s`) join the epoch's metrics line, the resumable checkpoint
/// saved after each.
struct Supervised<'a> {
    /// Name in progress bars and the key of the epoch in the metrics (`{name}_epoch`).
    name: &'a str,
    tokens: &'a [TokenizedExample],
    epochs_done: usize,
    /// Learning-rate schedule and epoch count.
    schedule: SftConfig,
    prompt_weight: f64,
    /// The phase after `n` epochs.
    phase: fn(usize) -> Phase,
    /// The [`side_stream`] its epochs' probes draw from.
    probe_stream: u64,
}

/// [`side_stream`] purposes: what draws from a generator of its own rather than from the run's
/// main one (the rollouts', persisted in the checkpoints).
const SFT_PROBE_STREAM: u64 = 1;
const ANSWERER_PROBE_STREAM: u64 = 2;
const VALIDATION_STREAM: u64 = 3;
const TRAIN_EPISODES_STREAM: u64 = 4;

/// A generator for one purpose and index (an epoch, a step), derived from the run's seed:
/// what validation and the epochs' probes draw from, so that how often they run, or how
/// their generation is split, never moves the stream the rollouts draw from. A function of
/// its arguments, so a resumed run draws the same.
fn side_stream(seed: u64, purpose: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(purpose << 48 | index);
    rng
}

/// What a supervised phase measures after each epoch: named figures for its metrics line.
type EpochProbe<'a, B> = dyn FnMut(
        &Transformer<<B as AutodiffBackend>::InnerBackend>,
        &mut ChaCha8Rng,
    ) -> serde_json::Map<String, serde_json::Value>
    + 'a;

fn supervised_epochs<B: AutodiffBackend>(
    mut training: Training<B>,
    config: &TrainConfig,
    spec: Supervised<'_>,
    probe: &mut EpochProbe<'_, B>,
    observe: &mut dyn FnMut(Event<'_>),
) -> Result<Training<B>, TrainError> {
    let batches = spec.tokens.len().div_ceil(config.sft.batch_size) as u64;
    let epochs = spec.schedule.epochs;
    for epoch in spec.epochs_done..epochs {
        let started = std::time::Instant::now();
        let waited_before = collective::world().waited();
        observe(Event::Phase {
            name: format!("{} epoch {}/{}", spec.name, epoch + 1, epochs),
            total: batches,
        });
        let (next, loss, skipped) = sft_epoch(
            training.model,
            &mut training.optim,
            spec.tokens,
            EpochSettings {
                batch_size: config.sft.batch_size,
                prompt_weight: spec.prompt_weight,
                shards: config.shards,
            },
            |i| {
                let step = epoch * batches as usize + i;
                spec.schedule.learning_rate_at(step, epochs * batches as usize)
            },
            &mut training.state.rng,
            loss_progress(observe),
        );
        training.model = next;
        if config.check_replicas {
            collective::check_replicas(
                &training.model,
                &format!("after {} epoch {}", spec.name, epoch + 1),
            )?;
        }
        let probe_started = std::time::Instant::now();
        let mut probe_rng = side_stream(config.seed, spec.probe_stream, epoch as u64);
        let mut record = probe(&training.model.valid(), &mut probe_rng);
        record.insert("probe_s".into(), probe_started.elapsed().as_secs_f64().into());
        tracing::info!(phase = spec.name, epoch, loss, skipped, probe = %serde_json::Value::Object(record.clone()), "epoch done");
        record.insert(format!("{}_epoch", spec.name.to_lowercase()), (epoch + 1).into());
        record.insert("loss".into(), loss.into());
        record.insert("skipped_nonfinite".into(), skipped.into());
        // The epoch's seconds, its probe (`probe_s`) included.
        record.insert("epoch_s".into(), started.elapsed().as_secs_f64().into());
        let world = collective::world();
        if world.size() > 1 {
            // Of which in collectives across ranks (exchanges and waiting for the slowest).
            record.insert(
                "collective_s".into(),
                (world.waited() - waited_before).as_secs_f64().into(),
            );
        }
        training.log.append(&record)?;
        training.state.phase = (spec.phase)(epoch + 1);
        training.save_latest()?;
    }
    Ok(training)
}

/// The supervised warm start on the imperfect teacher's examples.
fn warm_start<B: AutodiffBackend>(
    training: Training<B>,
    config: &TrainConfig,
    teachers: Teachers<'_>,
    data: &Splits,
    tokenizer: &Tokenizer,
    epochs_done: usize,
    observe: &mut dyn FnMut(Event<'_>),
) -> Result<Training<B>, TrainError> {
    let horizons = &config.curriculum.horizons;
    // The answerer's examples stay in the warm start even when it has a phase of its own:
    // without them the extractor learns to copy more slowly (docs/RESULTS.md).
    let examples = warm_start_examples(config, data, teachers)?;
    let tokens = fit_context(
        tokenize(&examples, tokenizer, config.agent.compact_prompts),
        training.model.max_positions(),
    );
    log_corpus("sft", &tokens);
    // How well the extractor copies facts out of the turns, on validation conversations (where
    // there are gold facts to compare with).
    let gold_facts = teachers.env.capabilities().gold_facts;
    let probe_episodes = at_horizon(&data.validation, horizons[0], config.eval.validation_episodes);
    let mut probe = |model: &Transformer<B::InnerBackend>, _: &mut ChaCha8Rng| {
        if !gold_facts {
            return serde_json::Map::new();
        }
        let extraction = extraction_score(model, tokenizer, &config.agent, &probe_episodes);
        let mut record = serde_json::Map::new();
        record.insert(
            "validation_extractor_precision".into(),
            extraction.precision.into(),
        );
        record.insert("validation_extractor_recall".into(), extraction.recall.into());
        record.insert(
            "validation_extractor_format_errors".into(),
            extraction.format_errors.into(),
        );
        record
    };
    let spec = Supervised {
        name: "SFT",
        tokens: &tokens,
        epochs_done,
        schedule: config.sft.clone(),
        prompt_weight: config.sft.prompt_loss_weight,
        phase: |epochs_done| Phase::Sft { epochs_done },
        probe_stream: SFT_PROBE_STREAM,
    };
    let mut training = supervised_epochs(training, config, spec, &mut probe, observe)?;
    training.save_as("sft")?;
    let next = after_warm_start(config, &training.run);
    training.enter(next)?;
    Ok(training)
}

/// The frozen answerer: the warm-start weights tuned on answerer examples alone, judged after
/// each epoch by how well it answers the validation probes from the oracle's memory (where
/// there are gold facts) and from none. The policy then goes back to the warm-start weights.
#[allow(clippy::too_many_arguments)]
fn tune_answerer<B: AutodiffBackend>(
    training: Training<B>,
    config: &TrainConfig,
    teachers: Teachers<'_>,
    data: &Splits,
    tokenizer: &Tokenizer,
    epochs_done: usize,
    device: &B::Device,
    observe: &mut dyn FnMut(Event<'_>),
) -> Result<Training<B>, TrainError> {
    let a = &config.answerer;
    let max = config.curriculum.horizons.iter().copied().max().unwrap_or(0);
    let env = teachers.env;
    let gold_facts = env.capabilities().gold_facts;
    let horizons = answerer_horizons(max, a.horizon_stride);
    let mut examples = teachers.answerer_examples(data, &horizons, &config.agent)?;
    if gold_facts {
        // The training conversations, then the environment's own corpus for this phase.
        let corpus = env.task_corpus();
        if !corpus.is_empty() {
            tracing::info!(episodes = corpus.len(), "answerer: the environment's task corpus");
        }
        let episodes: Vec<Episode> = data.train.iter().cloned().chain(corpus).collect();
        examples.extend(task_examples(
            &episodes,
            max,
            env.task(),
            &config.agent,
            config.seed,
        ));
    }
    let tokens = fit_context(
        tokenize(&examples, tokenizer, config.agent.compact_prompts),
        training.model.max_positions(),
    );
    log_corpus("answerer", &tokens);
    let validation = at_horizon(&data.validation, max, usize::MAX);
    let mut probe = |answerer: &Transformer<B::InnerBackend>, rng: &mut ChaCha8Rng| {
        let mut score = |source: MemorySource<'_, B::InnerBackend>| {
            evaluate(
                &source,
                Answerer::Local(answerer),
                tokenizer,
                &config.agent,
                env.task(),
                &validation,
                rng,
            )
            .f1()
        };
        let mut record = serde_json::Map::new();
        if gold_facts {
            record.insert("validation_oracle_f1".into(), score(MemorySource::Oracle).into());
        }
        record.insert(
            "validation_no_memory_f1".into(),
            score(MemorySource::Empty).into(),
        );
        record
    };
    let spec = Supervised {
        name: "answerer",
        tokens: &tokens,
        epochs_done,
        schedule: SftConfig {
            learning_rate: a.learning_rate,
            epochs: a.epochs,
            ..config.sft.clone()
        },
        prompt_weight: a.prompt_loss_weight,
        phase: |epochs_done| Phase::Answerer { epochs_done },
        probe_stream: ANSWERER_PROBE_STREAM,
    };
    let mut training = supervised_epochs(training, config, spec, &mut probe, observe)?;
    training.save_as("answerer")?;
    // The policy starts the curriculum from the warm-start weights, not the answerer's (rank 0
    // wrote them).
    collective::world().barrier();
    training.model = checkpoint::load::<B>(&training.run.checkpoint("sft"), device)?.model;
    training.enter(Phase::Rl {
        stage: 0,
        steps_done: 0,
    })?;
    Ok(training)
}

/// The frozen models of the curriculum, read back from their checkpoints: the warm start (the
/// KL reference) and the answerer (its own checkpoint, or the warm start when it has none).
pub struct Frozen<B: AutodiffBackend> {
    /// The warm-start model.
    pub sft: Transformer<B::InnerBackend>,
    /// The answerer's own tuning, when it had one.
    pub tuned_answerer: Option<Transformer<B::InnerBackend>>,
    /// The served answerer, when the configuration names one: it answers instead of both.
    pub served_answerer: Option<ServedModel>,
}

impl<B: AutodiffBackend> Frozen<B> {
    fn load(run: &RunDir, config: &TrainConfig, device: &B::Device) -> Result<Self, TrainError> {
        let load =
            |dir: &Path| -> Result<_, TrainError> { Ok(checkpoint::load::<B>(dir, device)?.model.valid()) };
        let sft = load(&run.checkpoint("sft"))?;
        let tuned_answerer = match run.checkpoint("answerer") {
            dir if dir.exists() => Some(load(&dir)?),
            _ => None,
        };
        let served_answerer = config
            .served
            .answerer
            .clone()
            .map(|endpoint| ServedModel::connect("answerer", endpoint, Some(&run.served_cache())))
            .transpose()?;
        Ok(Self {
            sft,
            tuned_answerer,
            served_answerer,
        })
    }

    /// The frozen answerer: the served one, else the tuned one, else the warm start.
    pub fn answerer(&self) -> Answerer<'_, B::InnerBackend> {
        match &self.served_answerer {
            Some(served) => Answerer::Served(served),
            None => Answerer::Local(self.tuned_answerer.as_ref().unwrap_or(&self.sft)),
        }
    }
}

/// The LoGo-GRPO curriculum: each stage's steps, validation every `validate_every` steps, the
/// stage's best checkpoint, and the next stage started from it.
fn curriculum<B: AutodiffBackend>(
    mut training: Training<B>,
    context: &StepContext<'_, B>,
    data: &Splits,
    options: &RunOptions,
    device: &B::Device,
    observe: &mut dyn FnMut(Event<'_>),
) -> Result<Training<B>, TrainError> {
    let config = context.config;
    let horizons = &config.curriculum.horizons;
    while let Phase::Rl { stage, steps_done } = training.state.phase {
        let h = horizons[stage];
        let mut train_pool = at_horizon(&data.train, h, config.rl.train_episodes.unwrap_or(usize::MAX));
        for episode in &mut train_pool {
            episode
                .questions
                .retain(|q| !config.rl.reward_excludes.contains(&q.category));
        }
        let validation_h = config.eval.validation_sessions.unwrap_or(h);
        let validation = at_horizon(&data.validation, validation_h, config.eval.validation_episodes);
        let best_name = format!("best-stage-{h}");
        let total = config.curriculum.steps_per_stage as u64;
        observe(Event::Phase {
            name: format!("LoGo-GRPO stage {}/{} ({h} sessions)", stage + 1, horizons.len()),
            total,
        });
        let score = |model: &Transformer<B>, actor: Option<&Transformer<B>>, rng: &mut ChaCha8Rng| {
            let _span = tracing::info_span!("validate").entered();
            let policy = model.valid();
            let source = MemorySource::Policy(&policy);
            let actor = actor.map(|a| a.valid());
            evaluate(
                &source,
                actor.as_ref().map_or(context.answerer, Answerer::Local),
                context.tokenizer,
                &config.agent,
                context.task,
                &validation,
                rng,
            )
            .f1()
        };
        let record = |step: u64, (f1, seconds): (f64, f64)| {
            serde_json::json!({
                "step": step,
                "horizon": h,
                "validation_sessions": validation_h,
                "validation_f1": f1,
                "validation_s": seconds
            })
        };
        let timed = |training: &Training<B>, rng: &mut ChaCha8Rng| -> Result<(f64, f64), TrainError> {
            let started = std::time::Instant::now();
            let f1 = score(&training.model, training.actor.as_ref().map(|a| &a.model), rng);
            context.answerer.check()?;
            config.agent.embedder.check()?;
            Ok((f1, started.elapsed().as_secs_f64()))
        };
        let validation_rng = |step: u64| side_stream(config.seed, VALIDATION_STREAM, step);
        if steps_done == 0 {
            let validated = timed(&training, &mut validation_rng(training.state.step))?;
            training.state.best = Some((validated.0, training.state.step));
            training.log.append(&record(training.state.step, validated))?;
            training.save_as(&best_name)?;
        }
        for step_in_stage in steps_done..config.curriculum.steps_per_stage {
            if options.stop_after_steps.is_some_and(|s| training.state.step >= s) {
                return Err(TrainError::Stopped {
                    step: training.state.step,
                });
            }
            let state = &mut training.state;
            // Each step's conversations come from a stream of their own, so that runs of the
            // same seed (LoGo-GRPO, GRPO, a placebo) train on the same conversation at every
            // step, however their rollouts drew from the run's generator.
            let episodes: Vec<Episode> = train_pool
                .choose_multiple(
                    &mut side_stream(config.seed, TRAIN_EPISODES_STREAM, state.step),
                    config.rl.episodes_per_step.min(train_pool.len()),
                )
                .cloned()
                .collect();
            let (next, mut metrics) = rl_step(
                training.model,
                &mut training.optim,
                training.actor.as_mut(),
                context,
                &episodes,
                config.rl.learning_rate_at(step_in_stage),
                &mut state.rng,
            )?;
            training.model = next;
            state.step += 1;
            if config.check_replicas {
                collective::check_replicas(&training.model, &format!("after step {}", state.step))?;
            }
            metrics.step = state.step;
            observe(Event::Step(&metrics));
            training.log.append(&metrics)?;
            let done = step_in_stage + 1;
            if done % config.curriculum.validate_every == 0 || done == config.curriculum.steps_per_stage {
                let validated = timed(&training, &mut validation_rng(training.state.step))?;
                let f1 = validated.0;
                training.log.append(&record(training.state.step, validated))?;
                if training.state.best.is_none_or(|(best, _)| f1 > best) {
                    training.state.best = Some((f1, training.state.step));
                    training.save_as(&best_name)?;
                }
            }
            observe(Event::Progress {
                done: done as u64,
                message: format!("F1 {:.3}", metrics.f1),
            });
            training.state.phase = Phase::Rl {
                stage,
                steps_done: done,
            };
            training.save_latest()?;
        }
        // The next stage starts from this stage's best checkpoint (written by rank 0, read by
        // every rank), or from its last step, with a fresh optimizer either way.
        collective::world().barrier();
        if config.curriculum.keep == Keep::Best {
            // The last step is kept beside the best, so that both can be evaluated.
            if training
                .state
                .best
                .is_some_and(|(_, step)| step != training.state.step)
            {
                training.save_as(&format!("last-stage-{h}"))?;
            }
            training.restore(&best_name, device)?;
        }
        tracing::info!(horizon = h, best = ?training.state.best, keep = ?config.curriculum.keep, "stage done");
        training.state.best = None;
        let next = if stage + 1 < horizons.len() {
            Phase::Rl {
                stage: stage + 1,
                steps_done: 0,
            }
        } else {
            Phase::Done
        };
        training.enter(next)?;
    }
    Ok(training)
}

/// Plots the run's curves, evaluates the warm start and the trained policy on the test
/// episodes, and writes `report.md`.
fn evaluation<B: AutodiffBackend>(
    training: &Training<B>,
    config: &TrainConfig,
    env: &dyn Environment,
    data: &Splits,
    tokenizer: &Tokenizer,
    frozen: &Frozen<B>,
    observe: &mut dyn FnMut(Event<'_>),
) -> Result<RunReport, TrainError> {
    let run = &training.run;
    let started = std::time::Instant::now();
    let name = config.policy_name();
    let final_model = training.model.valid();
    let final_actor = training.actor.as_ref().map(|a| a.model.valid());
    let systems: Vec<System<'_, B::InnerBackend>> = vec![
        (SFT_ROW, Some(&frozen.sft), None),
        (&name, Some(&final_model), final_actor.as_ref()),
    ];
    let judge = judge_of(config, &run.served_cache())?;
    let evaluation = final_evaluation(
        config,
        env,
        data,
        tokenizer,
        frozen.answerer(),
        judge.as_ref(),
        &systems,
        observe,
    )?;
    let table = evaluation.tables();
    let test = at_horizon(&data.test, config.eval.sessions, config.eval.test_episodes);
    let record = EvaluationRecord {
        environment: env.name().to_string(),
        task: env.task().name().to_string(),
        episodes: test.iter().map(|e| e.id.clone()).collect(),
        sessions: config.eval.sessions,
        seed: config.seed,
        seconds: started.elapsed().as_secs_f64(),
        evaluation: evaluation.clone(),
    };
    if collective::is_writer() {
        record.write(&run.evaluation())?;
        report::write_report(run, false)?;
    }
    Ok(RunReport {
        table,
        rows: evaluation.rows,
        unavailable: evaluation.unavailable,
        dir: run.0.clone(),
    })
}

/// The configuration's judge, connected, with its responses cached in `cache`.
pub fn judge_of(config: &TrainConfig, cache: &Path) -> Result<Option<Judge>, TrainError> {
    config
        .served
        .judge
        .clone()
        .map(|endpoint| Ok(Judge::new(ServedModel::connect("judge", endpoint, Some(cache))?)))
        .transpose()
}

/// A row of the evaluation: its name, the policy that writes its memory (`None`: counted, not
/// run), and the actor that answers from it when RL trained one (`None`: the frozen answerer).
pub type System<'a, B> = (&'a str, Option<&'a Transformer<B>>, Option<&'a Transformer<B>>);

/// The evaluation table: no memory, oracle memory (when the environment has gold facts), then
/// each named policy's memory, all asked the task's probes on the test episodes by the frozen
/// answerer (or by the actor RL trained with the policy, `rl.actor`).
#[allow(clippy::too_many_arguments)]
pub fn final_evaluation<B: Backend>(
    config: &TrainConfig,
    env: &dyn Environment,
    data: &Splits,
    tokenizer: &Tokenizer,
    answerer: Answerer<'_, B>,
    judge: Option<&Judge>,
    systems: &[System<'_, B>],
    observe: &mut dyn FnMut(Event<'_>),
) -> Result<Evaluation, TrainError> {
    let test = at_horizon(&data.test, config.eval.sessions, config.eval.test_episodes);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x5eed);
    let mut evaluation = Evaluation::default();
    observe(Event::Phase {
        name: "evaluation".into(),
        total: 2 + systems.len() as u64,
    });
    let mut fixed: Vec<(&str, MemorySource<'_, B>)> = vec![(NO_MEMORY_ROW, MemorySource::Empty)];
    if env.capabilities().gold_facts {
        fixed.push((ORACLE_ROW, MemorySource::Oracle));
    } else {
        evaluation.unavailable.push(Unavailable {
            system: ORACLE_ROW.to_string(),
            reason: format!("environment {} has no gold facts", env.name()),
        });
    }
    let task = env.task();
    // The fixed rows, then each named policy's (a system without a model is only counted).
    let rows = fixed
        .into_iter()
        .map(|(name, source)| (name, Some(source), None))
        .chain(
            systems
                .iter()
                .map(|(name, model, actor)| (*name, model.map(MemorySource::Policy), *actor)),
        );
    for (done, (name, source, actor)) in (1..).zip(rows) {
        if let Some(source) = source {
            let scores = evaluate_judged(
                &source,
                actor.map_or(answerer, Answerer::Local),
                judge,
                tokenizer,
                &config.agent,
                task,
                &test,
                &mut rng,
            );
            answerer.check()?;
            config.agent.embedder.check()?;
            judge.map(Judge::check).transpose()?;
            evaluation.rows.push((name.to_string(), scores));
        }
        observe(Event::Progress {
            done,
            message: name.to_string(),
        });
    }
    Ok(evaluation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_asking_more_conversations_than_the_data_holds_are_named() {
        let mut config = TrainConfig::smoke();
        let data = crate::data::splits(&config.data).unwrap();
        config.eval.validation_episodes = data.validation.len();
        config.eval.test_episodes = data.test.len();
        assert!(short_splits(&config, &data).is_empty());

        config.eval.test_episodes = data.test.len() + 5;
        let messages = short_splits(&config, &data);
        assert_eq!(messages.len(), 1);
        let held = data.test.len();
        assert!(messages[0].starts_with(&format!("eval.test_episodes = {}", held + 5)));
        assert!(messages[0].contains(&format!("holds {held} test conversation(s)")));

        config.eval.validation_episodes = data.validation.len() + 1;
        assert_eq!(short_splits(&config, &data).len(), 2);
    }
}
