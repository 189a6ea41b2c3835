//! The `memr2` command-line program: train, evaluate, inspect, and data statistics.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use memr2_policy::tokenizer::Tokenizer;
use memr2_sim::{Environment, Split};
use memr2_trainer::TrainError;
use memr2_trainer::checkpoint;
use memr2_trainer::config::{DataSpec, Keep, ModelSpec, Preset, TrainConfig};
use memr2_trainer::data::{Splits, environment};
use memr2_trainer::served::{Answerer, ServedModel};
use memr2_trainer::train::{self, Event, RunDir, RunOptions};

#[derive(Parser)]
#[command(
    name = "memr2",
    version,
    about = "RL-trained long-term memory for LLM agents (Memory-R2, LoGo-GRPO)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Compute backends; only those compiled in (cargo features) can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendKind {
    /// burn's `flex` CPU backend.
    Flex,
    /// burn's `ndarray` CPU backend.
    Ndarray,
    /// WebGPU / Vulkan through wgpu (a software Vulkan driver works too).
    Wgpu,
    /// NVIDIA CUDA.
    Cuda,
}

#[derive(Subcommand)]
enum Command {
    /// Train: SFT warm start, then the LoGo-GRPO curriculum, then the evaluation table.
    Train(Box<TrainArgs>),
    /// Evaluate a run's checkpoints per category on held-out conversations.
    Eval(Box<EvalArgs>),
    /// Show one conversation's memory and operation history, session by session.
    Inspect(InspectArgs),
    /// Serve a run's trained policy and its answerer over the OpenAI API
    /// (`/v1/chat/completions`, plain and streamed; `/v1/embeddings`; `/v1/models`;
    /// `/health`), until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Rebuild a run's `report.md` and charts from what it wrote (finished or still going).
    Report {
        /// The run directory.
        run: PathBuf,
        /// Also write a PNG beside each SVG chart (needs the `png` feature).
        #[arg(long)]
        png: bool,
    },
    /// Compare finished runs: test F1 per seed and its mean, F1 per category, paired
    /// differences, and curves overlaid. Trains nothing.
    Compare {
        /// Run directories, each optionally labelled as LABEL=DIR (default label: the run's
        /// algorithm, e.g. "LoGo-GRPO", "GRPO (global only)", "LoGo-GRPO (placebo)").
        #[arg(required = true)]
        runs: Vec<String>,
        /// Write `compare.md` and `plots/` into this directory (otherwise the tables are only
        /// printed).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write a PNG beside each SVG chart (needs the `png` feature).
        #[arg(long)]
        png: bool,
    },
    /// Dataset commands.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Memory-induced tool drift (MEMDRIFT): scenarios and tool scans.
    Drift {
        #[command(subcommand)]
        command: DriftCommand,
    },
}

/// A split of an environment, on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SplitArg {
    /// Training scenarios (what the warm start and RL saw: in-distribution, not held out).
    Train,
    /// Validation scenarios.
    Validation,
    /// Held-out test scenarios.
    Test,
    /// New scenarios of the training cells that training never saw (75; for a run that holds
    /// out scenarios, as the drift preset does, its validation and test together): held out,
    /// but from the dimension x domain pairs trained on, which is where a model trained from
    /// scratch can drift at all (a held-out cell pairs its tool with a bias it never saw it
    /// with).
    TrainingCells,
    /// The test cells' scenarios (15), whatever the run holds out: drift on dimension x
    /// domain pairs never trained on.
    HeldOutCells,
}

#[derive(Subcommand)]
enum DriftCommand {
    /// List the parameters of tool definitions that a remembered preference could push: an MCP
    /// `tools/list` result, or a JSON array of tool definitions (JSON Schema `parameters`,
    /// OpenAI function objects).
    Scan {
        /// The JSON file of tool definitions.
        tools: PathBuf,
    },
    /// Deflection and task correctness of a run trained on the drift environment (`--preset
    /// drift`), on its held-out scenarios: for its warm-start policy under every memory
    /// condition (no memory, neutral, biased, biased with a relevance instruction, biased
    /// behind a memory filter) and for its trained policy with biased memories. Each run's
    /// scored calls are written to `drift-eval-SPLIT.json` in its directory. With several runs
    /// (seeds of one configuration) a summary over all of them follows, with the trained
    /// policy's differences from the warm start's defences paired by scenario.
    Eval {
        /// The run directory (repeat for several runs).
        #[arg(long, required = true)]
        checkpoint: Vec<PathBuf>,
        /// Which of each run's checkpoints is the trained policy: `final` (what the run handed
        /// on), or another under `checkpoints/`, such as `last-stage-N` or `best-stage-N`.
        /// Scored calls of a checkpoint other than `final` go to `drift-eval-SPLIT-NAME.json`.
        #[arg(long, default_value = "final")]
        trained: String,
        /// Which split's scenarios.
        #[arg(long, value_enum, default_value_t = SplitArg::Test)]
        split: SplitArg,
        /// At most N of the split's scenarios, spread evenly over it (the training split has 300 in
        /// the drift preset).
        #[arg(long)]
        max_scenarios: Option<usize>,
        /// An OpenAI-compatible endpoint whose model makes the tool calls instead of the run's
        /// own tool caller (the memories are still the run's policies'): how a real model
        /// drifts. Its replies are cached in the run directory.
        #[arg(long)]
        answerer_endpoint: Option<String>,
        /// The endpoint's model (default: the one model it lists).
        #[arg(long, requires = "answerer_endpoint")]
        answerer_model: Option<String>,
        /// An OpenAI-compatible endpoint whose model also rates each valid call's deflection
        /// (1-5, `memr2_drift::judge`), printed beside the rubric's with their agreement. Its
        /// replies are cached in the run directory.
        #[arg(long)]
        judge_endpoint: Option<String>,
        /// The judge endpoint's model (default: the one model it lists).
        #[arg(long, requires = "judge_endpoint")]
        judge_model: Option<String>,
        /// The environment variable holding the endpoints' API key.
        #[arg(long)]
        api_key_env: Option<String>,
        /// Compute backend.
        #[arg(long, value_enum, default_value_t = default_backend())]
        backend: BackendKind,
    },
    /// Write the built-in scenarios (or check a scenario file) in memr2's scenario format.
    Scenarios {
        /// Seed of the generator.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write the generated scenarios to this JSON file.
        #[arg(long, conflicts_with = "check")]
        out: Option<PathBuf>,
        /// Read and check a scenario file instead, printing its counts per split.
        #[arg(long)]
        check: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct TrainArgs {
    #[command(flatten)]
    served: ServedArgs,
    /// Starting configuration.
    #[arg(long, value_enum, default_value_t = Preset::Default)]
    preset: Preset,
    /// A JSON configuration file (replaces the preset).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the run writes its files (default: runs/PRESET-seedSEED).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long, conflicts_with_all = ["config", "run_dir", "init_from"])]
    resume: Option<PathBuf>,
    /// A pretrained Hugging Face model directory (Qwen2 / Llama) instead of the tiny model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Train on this data file instead of the synthetic world: LoCoMo JSON, LongMemEval JSON,
    /// or memr2 episodes as JSON Lines, told apart by content.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = default_backend())]
    backend: BackendKind,
    /// Training seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Probability of local rerollouts per session (0 = plain GRPO, global groups only).
    #[arg(long)]
    p_local: Option<f64>,
    /// Start from another run's tokenizer and SFT checkpoint (skips SFT).
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Curriculum horizons, e.g. `32` to train straight at 32 sessions.
    #[arg(long, value_delimiter = ',')]
    horizons: Option<Vec<usize>>,
    /// RL steps per curriculum stage.
    #[arg(long)]
    steps_per_stage: Option<usize>,
    /// Which checkpoint of each stage is carried on: `best` on validation (the default) or
    /// the stage's `last` step (curriculum.keep).
    #[arg(long, value_enum)]
    keep: Option<Keep>,
    /// Epochs of the supervised warm start.
    #[arg(long)]
    sft_epochs: Option<usize>,
    /// Show the model each role's short tag instead of its instruction as the system message
    /// (for the built-in model trained from scratch; agent.compact_prompts).
    #[arg(long)]
    compact_prompts: bool,
    /// Epochs of the frozen answerer's own tuning after the warm start (0: the SFT model
    /// answers).
    #[arg(long)]
    answerer_epochs: Option<usize>,
    /// Questions per conversation of the synthetic world (its default: 16).
    #[arg(long)]
    questions: Option<usize>,
    /// Shards of each training minibatch, their gradients computed side by side on the
    /// machine's cores (1: no data parallelism; the presets' default on `wgpu` and `cuda`).
    #[arg(long)]
    shards: Option<usize>,
    /// Parts of each batched generation, generated side by side (and, under `mpirun`, dealt
    /// to the ranks).
    #[arg(long)]
    generation_shards: Option<usize>,
    /// Stop once this many RL steps have been taken in total, leaving the run to continue
    /// with `--resume` (its `latest` checkpoint holds the policy after that step).
    #[arg(long)]
    stop_after_steps: Option<u64>,
    /// Under `mpirun`: check after every update that all ranks hold the same weights (a
    /// checksum compared across ranks), and stop with an error if they do not.
    #[arg(long)]
    check_replicas: bool,
    /// Print the resolved configuration and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The run directory: its `final` checkpoint (else `latest`) is served as the model
    /// `memr2-policy`, its `answerer` checkpoint (else `sft`) as `memr2-answerer`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// The environment variable holding the bearer token clients must send (none: no auth).
    #[arg(long)]
    api_key_env: Option<String>,
    /// Most chats generated in one batch.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// How long a chat waits for others to batch with, in milliseconds.
    #[arg(long, default_value_t = 10)]
    max_wait_ms: u64,
    /// The largest `max_tokens` a request may ask for.
    #[arg(long, default_value_t = 1024)]
    max_tokens_limit: u32,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = default_backend())]
    backend: BackendKind,
}

/// Served models a run calls, on the command line.
#[derive(clap::Args, Clone, Debug, Default)]
struct ServedArgs {
    /// An OpenAI-compatible endpoint (base URL, e.g. http://127.0.0.1:8080/v1) whose model is
    /// the frozen answerer: rewards, validation and evaluation are answered by it (the
    /// answerer's own tuning is then skipped).
    #[arg(long)]
    answerer_endpoint: Option<String>,
    /// The answerer endpoint's model (default: the one model it lists).
    #[arg(long, requires = "answerer_endpoint")]
    answerer_model: Option<String>,
    /// An OpenAI-compatible endpoint whose model judges the final evaluation's answers
    /// CORRECT or WRONG: J per category beside F1.
    #[arg(long)]
    judge_endpoint: Option<String>,
    /// The judge endpoint's model (default: the one model it lists).
    #[arg(long, requires = "judge_endpoint")]
    judge_model: Option<String>,
    /// An OpenAI-compatible endpoint whose model writes the warm start's extractor and manager
    /// examples (and the memory the answerer's examples are read from, where the data has no
    /// gold facts), through the roles' own prompts; replies are cached in the run.
    #[arg(long)]
    teacher_endpoint: Option<String>,
    /// The teacher endpoint's model (default: the one model it lists).
    #[arg(long, requires = "teacher_endpoint")]
    teacher_model: Option<String>,
    /// An OpenAI-compatible endpoint whose embedding model serves dense retrieval for the
    /// manager and the answerer (see --retrieval); vectors are cached in the run.
    #[arg(long)]
    embedding_endpoint: Option<String>,
    /// The embedding endpoint's model (default: the one model it lists).
    #[arg(long, requires = "embedding_endpoint")]
    embedding_model: Option<String>,
    /// How memories are retrieved: bm25, dense (cosine over the embedding endpoint's vectors,
    /// at least agent.dense_min_score) or hybrid (both lists fused by reciprocal rank).
    /// Default: dense with --embedding-endpoint, otherwise the configuration's (bm25).
    #[arg(long)]
    retrieval: Option<memr2_store::Retrieval>,
    /// The environment variable holding the endpoints' API key, sent as a bearer token (the key
    /// itself is never written to the run directory).
    #[arg(long)]
    api_key_env: Option<String>,
}

impl ServedArgs {
    /// The endpoints given, each with its model flag, in `ServedConfig::roles` order.
    fn given(&self) -> [(Option<&String>, Option<&str>); 4] {
        [
            (self.answerer_endpoint.as_ref(), self.answerer_model.as_deref()),
            (self.judge_endpoint.as_ref(), self.judge_model.as_deref()),
            (self.teacher_endpoint.as_ref(), self.teacher_model.as_deref()),
            (self.embedding_endpoint.as_ref(), self.embedding_model.as_deref()),
        ]
    }

    /// Puts the endpoints and the retrieval into a configuration; an endpoint given without
    /// its model keeps the model the configuration names, if any.
    fn apply(&self, config: &mut TrainConfig) -> Result<()> {
        let served = &mut config.served;
        let slots = [
            &mut served.answerer,
            &mut served.judge,
            &mut served.teacher,
            &mut served.embeddings,
        ];
        for (slot, (url, model)) in slots.into_iter().zip(self.given()) {
            if let Some(url) = url {
                let model = model
                    .map(str::to_string)
                    .or_else(|| slot.as_ref().map(|e| e.model.clone()));
                *slot = Some(endpoint(url, model.as_deref(), &self.api_key_env)?);
            }
        }
        match self.retrieval {
            Some(retrieval) => config.agent.retrieval = retrieval,
            None if self.embedding_endpoint.is_some()
                && config.agent.retrieval == memr2_store::Retrieval::Bm25 =>
            {
                config.agent.retrieval = memr2_store::Retrieval::Dense;
            }
            None => {}
        }
        Ok(())
    }

    /// Whether any endpoint or the retrieval is given.
    fn any(&self) -> bool {
        self.given().iter().any(|(url, _)| url.is_some()) || self.retrieval.is_some()
    }
}

/// An endpoint of a base URL, with its model named or, when not, the one it lists.
fn endpoint(
    url: &str,
    model: Option<&str>,
    api_key_env: &Option<String>,
) -> Result<memr2_openai::client::Endpoint> {
    use memr2_openai::client::{Client, Endpoint};
    let mut endpoint = Endpoint::new(url.trim_end_matches('/'), model.unwrap_or_default());
    endpoint.api_key_env = api_key_env.clone();
    if model.is_none() {
        let client = Client::new(endpoint.clone(), None)?;
        let models = client
            .models()
            .with_context(|| format!("cannot list the models of {url} (name one with the --*-model flag)"))?;
        match models.data.as_slice() {
            [one] => endpoint.model = one.id.clone(),
            many => bail!(
                "{url} serves {} models ({}): name one with the --*-model flag",
                many.len(),
                many.iter().map(|m| m.id.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    Ok(endpoint)
}

#[derive(clap::Args)]
struct EvalArgs {
    #[command(flatten)]
    served: ServedArgs,
    /// A run directory (its `sft` checkpoint and the one `--trained` names are evaluated).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Which of the run's checkpoints is the trained policy (and the `--grpo` run's): `final`
    /// (what the run handed on), or another under `checkpoints/`, such as `last-stage-N` or
    /// `best-stage-N`.
    #[arg(long, default_value = "final")]
    trained: String,
    /// A run trained with global groups only, from the same SFT start, to compare against.
    #[arg(long)]
    grpo: Option<PathBuf>,
    /// Horizon (sessions) of the evaluation.
    #[arg(long)]
    sessions: Option<usize>,
    /// Test conversations to use (default: the run's setting); the synthetic world generates
    /// more than its test split holds when asked.
    #[arg(long)]
    episodes: Option<usize>,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = default_backend())]
    backend: BackendKind,
}

#[derive(clap::Args)]
struct InspectArgs {
    /// A run directory (the `final` checkpoint is used, else `latest`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Which test conversation.
    #[arg(long, default_value_t = 0)]
    episode: usize,
    /// Horizon (sessions).
    #[arg(long, default_value_t = 8)]
    sessions: usize,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = default_backend())]
    backend: BackendKind,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Counts of an environment: conversations, sessions, turns, questions.
    Stats {
        /// A data file (LoCoMo JSON, LongMemEval JSON, or memr2 episodes as JSON Lines);
        /// without it, the synthetic world of the preset.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Synthetic world size.
        #[arg(long, value_enum, default_value_t = Preset::Default)]
        preset: Preset,
        /// An OpenAI-compatible embedding endpoint: the retrieval ceiling is then printed for
        /// dense and hybrid retrieval beside BM25.
        #[arg(long)]
        embedding_endpoint: Option<String>,
        /// The embedding endpoint's model (default: the one model it lists).
        #[arg(long, requires = "embedding_endpoint")]
        embedding_model: Option<String>,
        /// The environment variable holding the endpoint's API key.
        #[arg(long)]
        api_key_env: Option<String>,
    },
}

fn default_backend() -> BackendKind {
    if cfg!(feature = "flex") {
        BackendKind::Flex
    } else if cfg!(feature = "ndarray") {
        BackendKind::Ndarray
    } else if cfg!(feature = "wgpu") {
        BackendKind::Wgpu
    } else {
        BackendKind::Cuda
    }
}

/// Runs `$body` with `B` bound to the autodiff backend `$kind` names and `device` its device,
/// or fails with the features that would compile it in.
macro_rules! with_backend {
    ($kind:expr, |$b:ident, $device:ident| $body:expr) => {{
        match $kind {
            #[cfg(feature = "flex")]
            BackendKind::Flex => {
                type $b = burn::backend::Autodiff<burn::backend::Flex>;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "ndarray")]
            BackendKind::Ndarray => {
                type $b = burn::backend::Autodiff<burn::backend::NdArray>;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => {
                type $b = burn::backend::Autodiff<burn::backend::Wgpu>;
                let $device = burn::backend::wgpu::WgpuDevice::default();
                probe_device::<$b>(&$device, "wgpu")?;
                $body
            }
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => {
                type $b = burn::backend::Autodiff<burn::backend::Cuda>;
                let $device = burn::backend::cuda::CudaDevice::new(gpu_index());
                probe_device::<$b>(&$device, "cuda")?;
                $body
            }
            #[allow(unreachable_patterns)]
            other => bail!(
                "backend {other:?} is not compiled into this binary; rebuild with `--features {}` \
                 (compiled in: {})",
                format!("{other:?}").to_lowercase(),
                compiled_backends().join(", ")
            ),
        }
    }};
}

/// The GPU this process uses: `MEMR2_DEVICE_INDEX` when set; else 0 when the launcher shows it
/// one GPU (`CUDA_VISIBLE_DEVICES` with one entry, as Slurm's `--gpus-per-task=1` does); else
/// the rank's index on its machine (`mpirun` with one rank per GPU); 0 for a single process.
#[cfg(feature = "cuda")]
fn gpu_index() -> usize {
    let var = |name: &str| std::env::var(name).ok();
    if let Some(index) = var("MEMR2_DEVICE_INDEX").and_then(|v| v.trim().parse().ok()) {
        return index;
    }
    if var("CUDA_VISIBLE_DEVICES").is_some_and(|v| !v.trim().is_empty() && !v.contains(',')) {
        return 0;
    }
    ["OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"]
        .iter()
        .find_map(|name| var(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs a two-element sum on `device`, so that a backend without a usable device (no GPU, no
/// driver, no Vulkan loader) fails here with a clear error instead of panicking inside a run.
#[allow(dead_code)] // used only when a GPU backend is compiled in
fn probe_device<B: burn::tensor::backend::Backend>(device: &B::Device, name: &str) -> Result<()> {
    use burn::tensor::{ElementConversion, Tensor};
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Tensor::<B, 1>::from_floats([1.0, 2.0], device)
            .sum()
            .into_scalar()
            .elem::<f32>()
    }));
    std::panic::set_hook(previous);
    let others = compiled_backends()
        .into_iter()
        .filter(|b| *b != name)
        .collect::<Vec<_>>()
        .join(", ");
    match result {
        Ok(3.0) => Ok(()),
        Ok(sum) => bail!("the {name} backend computed 1 + 2 = {sum}; its device is not usable"),
        Err(payload) => {
            let why = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            bail!(
                "the {name} backend found no usable device: {why}\n\
                 (wgpu needs a Vulkan, Metal or DX12 driver, e.g. Debian's mesa-vulkan-drivers; cuda \
                 needs an NVIDIA GPU and driver). Other backends compiled in: {others}; pass one \
                 with --backend."
            )
        }
    }
}

fn compiled_backends() -> Vec<&'static str> {
    let mut out = Vec::new();
    for (on, name) in [
        (cfg!(feature = "flex"), "flex"),
        (cfg!(feature = "ndarray"), "ndarray"),
        (cfg!(feature = "wgpu"), "wgpu"),
        (cfg!(feature = "cuda"), "cuda"),
    ] {
        if on {
            out.push(name);
        }
    }
    out
}

fn main() {
    use std::io::IsTerminal;
    memr2_policy::allocator::reuse_freed_buffers();
    let cli = Cli::parse();
    let ranks = match start_ranks(&cli.command) {
        Ok(ranks) => ranks,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    // Colour codes only on a terminal: a log written to a file or a pipe stays plain text.
    // Over several ranks, the others log errors only (they repeat rank 0's work).
    let default_filter = if ranks.rank() == 0 {
        "warn,memr2=info"
    } else {
        "error"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = real_main(cli) {
        if ranks.size() > 1 {
            // The other ranks would wait for this one: end them all.
            ranks.abort(&format!("rank {}: {e:#}", ranks.rank()), 1);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    drop(ranks);
    // Shuts MPI down (MPI_Finalize) when the run had several ranks.
    drop(memr2_trainer::collective::uninstall());
}

/// The ranks of this process: one, or those of the MPI job that started it (`mpirun`, `srun`),
/// installed for the whole program. Only `train` and `eval` divide their work among ranks.
fn start_ranks(command: &Command) -> Result<std::sync::Arc<dyn memr2_trainer::collective::Collective>> {
    use memr2_trainer::collective;
    #[cfg(feature = "mpi")]
    if collective::launched_by_mpi() {
        let world = memr2_trainer::mpi_world::MpiWorld::init().map_err(anyhow::Error::msg)?;
        let world: std::sync::Arc<dyn collective::Collective> = std::sync::Arc::new(world);
        if world.size() > 1 && !matches!(command, Command::Train(_) | Command::Eval(_)) {
            world.abort(
                "only `memr2 train` and `memr2 eval` run over several ranks; run this command as one process",
                1,
            );
        }
        collective::install(world.clone());
        return Ok(world);
    }
    if let Some(launched) = collective::launched_ranks().filter(|&n| n > 1) {
        bail!(
            "started as one of {launched} MPI processes, but this memr2 was built without the `mpi` feature: \
             build it with `cargo build --release -p memr2-trainer --features mpi`"
        );
    }
    let _ = command;
    Ok(collective::world())
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => train_command(*args),
        Command::Eval(args) => with_backend!(args.backend, |B, device| eval_command::<B>(&args, &device)),
        Command::Serve(args) => with_backend!(args.backend, |B, device| serve_command::<B>(&args, &device)),
        Command::Report { run, png } => {
            let path = memr2_trainer::report::write_report(&RunDir(run), png)?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Compare { runs, out, png } => compare_command(&runs, out.as_deref(), png),
        Command::Inspect(args) => {
            with_backend!(args.backend, |B, device| inspect_command::<B>(&args, &device))
        }
        Command::Data {
            command:
                DataCommand::Stats {
                    data,
                    preset,
                    embedding_endpoint,
                    embedding_model,
                    api_key_env,
                },
        } => {
            let embeddings = embedding_endpoint
                .map(|url| endpoint(&url, embedding_model.as_deref(), &api_key_env))
                .transpose()?;
            data_stats(data, preset, embeddings)
        }
        Command::Drift {
            command: DriftCommand::Scan { tools },
        } => drift_scan(&tools),
        Command::Drift {
            command:
                DriftCommand::Eval {
                    checkpoint,
                    trained,
                    split,
                    max_scenarios,
                    answerer_endpoint,
                    answerer_model,
                    judge_endpoint,
                    judge_model,
                    api_key_env,
                    backend,
                },
        } => {
            let served = answerer_endpoint
                .map(|url| endpoint(&url, answerer_model.as_deref(), &api_key_env))
                .transpose()?;
            let judge = judge_endpoint
                .map(|url| endpoint(&url, judge_model.as_deref(), &api_key_env))
                .transpose()?;
            let endpoints = DriftEndpoints {
                actor: served.as_ref(),
                judge: judge.as_ref(),
            };
            with_backend!(backend, |B, device| drift_eval::<B>(
                &checkpoint,
                &trained,
                split,
                max_scenarios,
                endpoints,
                &device
            ))
        }
        Command::Drift {
            command: DriftCommand::Scenarios { seed, out, check },
        } => drift_scenarios(seed, out, check),
    }
}

fn serve_command<B: AutodiffBackend>(args: &ServeArgs, device: &B::Device) -> Result<()> {
    use memr2_openai::server::{ChatModel, Server, ServerConfig};
    use memr2_trainer::served::PolicyModel;
    use std::sync::Arc;
    let run = RunDir(args.checkpoint.clone());
    let config = TrainConfig::from_file(&run.config())?;
    let tokenizer = Tokenizer::from_file(&run.tokenizer())?;
    let pick = |names: &[&str]| -> Result<PathBuf> {
        names
            .iter()
            .map(|n| run.checkpoint(n))
            .find(|d| d.exists())
            .with_context(|| format!("run {} has none of the checkpoints {names:?}", run.0.display()))
    };
    let load = |dir: PathBuf| -> Result<_> { Ok(checkpoint::load::<B>(&dir, device)?.model.valid()) };
    let trained = checkpoint::load::<B>(&pick(&["final", "latest"])?, device)?;
    let policy = trained.model.valid();
    // The actor RL trained beside the policy (`rl.actor`), else the frozen one.
    let answerer = match trained.actor {
        Some(actor) => actor.valid(),
        None => load(pick(&["answerer", "sft"])?)?,
    };
    let models: Vec<Arc<dyn ChatModel>> = vec![
        Arc::new(PolicyModel::new(
            "memr2-policy".into(),
            policy,
            tokenizer.clone(),
            config.agent.clone(),
        )),
        Arc::new(PolicyModel::new(
            "memr2-answerer".into(),
            answerer,
            tokenizer,
            config.agent.clone(),
        )),
    ];
    let api_key = match &args.api_key_env {
        Some(var) => {
            Some(std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?)
        }
        None => None,
    };
    let server = Server::start_models(
        models,
        ServerConfig {
            addr: args.addr.clone(),
            max_batch: args.max_batch,
            max_wait_ms: args.max_wait_ms,
            api_key,
            max_tokens_limit: args.max_tokens_limit,
            // Enough requests in hand at once to fill several batches.
            threads: 4 * args.max_batch.max(1),
            ..ServerConfig::default()
        },
    )?;
    // Scripts wait for this line to know the port (`--addr 127.0.0.1:0` picks a free one).
    println!(
        "serving memr2-policy and memr2-answerer on http://{}/v1",
        server.addr()
    );
    server.run_until_signal()?;
    Ok(())
}

fn compare_command(runs: &[String], out: Option<&Path>, png: bool) -> Result<()> {
    use memr2_trainer::compare::{Comparison, RunSummary};
    let runs = runs
        .iter()
        .map(|arg| RunSummary::load(arg).with_context(|| format!("cannot read run {arg}")))
        .collect::<Result<Vec<_>>>()?;
    let comparison = Comparison::new(runs)?;
    println!("{}", comparison.markdown());
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = comparison.write(dir, png)?;
        println!("written: {}", path.display());
    }
    Ok(())
}

fn drift_scan(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let found =
        memr2_drift::scan_tools(&json).with_context(|| format!("tool definitions in {}", path.display()))?;
    let tools: std::collections::BTreeSet<&str> = found.iter().map(|s| s.tool.as_str()).collect();
    println!(
        "{}: {} susceptible parameters in {} tools",
        path.display(),
        found.len(),
        tools.len()
    );
    println!("| tool | parameter | bias | why |");
    println!("|---|---|---|---|");
    for s in &found {
        println!(
            "| {} | {} | {} | {} |",
            s.tool, s.parameter, s.dimension, s.reason
        );
    }
    Ok(())
}

/// The scored calls of one drift run: its warm-start policy under every condition, its tool
/// caller over the oracle's memory (neutral and biased), and its trained policy with biased
/// memories when it has one.
#[derive(serde::Serialize)]
struct DriftCalls {
    run: PathBuf,
    split: String,
    warm_start: Vec<memr2_drift::ScoredCall>,
    oracle_memory: Vec<memr2_drift::ScoredCall>,
    trained: Option<Vec<memr2_drift::ScoredCall>>,
}

/// The served models of `drift eval`: one that makes the tool calls instead of the run's
/// own tool caller, and a judge of the calls' deflection.
#[derive(Clone, Copy)]
struct DriftEndpoints<'a> {
    actor: Option<&'a memr2_openai::client::Endpoint>,
    judge: Option<&'a memr2_openai::client::Endpoint>,
}

/// The checkpoint `--trained` names, when it is not the run's `final` one (the default): what
/// the output then says it scored.
fn named_checkpoint(trained: &str) -> Option<&str> {
    (trained != "final").then_some(trained)
}

fn drift_eval<B: AutodiffBackend>(
    dirs: &[PathBuf],
    trained: &str,
    split: SplitArg,
    max_scenarios: Option<usize>,
    endpoints: DriftEndpoints<'_>,
    device: &B::Device,
) -> Result<()> {
    let mut runs = Vec::new();
    for dir in dirs {
        let calls = drift_eval_run::<B>(dir, trained, split, max_scenarios, endpoints, device)?;
        let suffix = named_checkpoint(trained)
            .map(|name| format!("-{name}"))
            .unwrap_or_default();
        let path = dir.join(format!("drift-eval-{}{suffix}.json", calls.split));
        std::fs::write(&path, serde_json::to_string_pretty(&calls)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        runs.push(calls);
    }
    if runs.len() > 1 || runs.iter().any(|r| r.trained.is_some()) {
        println!("{}", drift_summary(&runs));
    }
    Ok(())
}

/// Over every run: each system's deflection and correctness, then the trained policy's paired
/// differences from the warm start with biased memories and from its two defences.
fn drift_summary(runs: &[DriftCalls]) -> String {
    use memr2_drift::{Condition, DRIFT_THRESHOLD, DriftReport, Group, PairedDifference, ScoredCall, paired};
    use std::fmt::Write as _;
    let of = |calls: &[ScoredCall], condition: Condition| -> Vec<ScoredCall> {
        calls
            .iter()
            .filter(|c| c.condition == condition)
            .cloned()
            .collect()
    };
    let mut out = format!(
        "## Over {} run(s)\n\n| policy | memories | calls | deflection | deflection >= {DRIFT_THRESHOLD} | correctness | memory holds the bias | other facts kept |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
        runs.len()
    );
    let warm: Vec<ScoredCall> = runs.iter().flat_map(|r| r.warm_start.iter().cloned()).collect();
    let trained: Vec<ScoredCall> = runs
        .iter()
        .filter_map(|r| r.trained.as_deref())
        .flat_map(|t| of(t, Condition::Biased))
        .collect();
    let rows = [
        ("warm start", DriftReport::new(&warm)),
        ("trained", DriftReport::new(&trained)),
    ];
    for (policy, report) in &rows {
        for r in report.rows.iter().filter(|r| r.group == Group::Overall) {
            let _ = writeln!(
                out,
                "| {policy} | {} | {} | {:.2} | {:.1}% | {:.1}% | {} | {} |",
                r.condition,
                r.calls,
                r.deflection,
                100.0 * r.drifted,
                100.0 * r.correctness,
                memr2_drift::report::share(r.bias_in_memory),
                memr2_drift::report::share(r.other_facts_kept)
            );
        }
    }
    if trained.is_empty() {
        return out;
    }
    let _ = write!(
        out,
        "\nTrained policy (biased memories) minus the warm start, paired by scenario within each run \
         (mean and standard error); the last column averages each scenario's difference over the runs, \
         then takes the mean and standard error over scenarios.\n\n| against | metric |"
    );
    for r in runs {
        let _ = write!(out, " {} |", r.run.display());
    }
    out.push_str(" all runs |\n|---|---|");
    out.push_str(&"---:|".repeat(runs.len() + 1));
    out.push('\n');
    fn deflection(s: &memr2_drift::CallScore) -> f64 {
        s.deflection
    }
    fn correctness(s: &memr2_drift::CallScore) -> f64 {
        s.correctness
    }
    type Metric = fn(&memr2_drift::CallScore) -> f64;
    let metrics: [(&str, Metric); 2] = [("deflection", deflection), ("correctness", correctness)];
    for against in [
        Condition::Biased,
        Condition::BiasedWithRelevanceInstruction,
        Condition::BiasedWithMemoryFilter,
    ] {
        for (name, metric) in metrics {
            let _ = write!(out, "| warm start, {against} | {name} |");
            let mut by_scenario: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
            for r in runs {
                let Some(trained) = &r.trained else {
                    out.push_str(" - |");
                    continue;
                };
                let biased = of(trained, Condition::Biased);
                let pairs = paired(&of(&r.warm_start, against), &biased, metric);
                for &(scenario, d) in &pairs {
                    by_scenario.entry(scenario.to_owned()).or_default().push(d);
                }
                let differences: Vec<f64> = pairs.iter().map(|&(_, d)| d).collect();
                match PairedDifference::from_differences(&differences) {
                    Some(d) => {
                        let _ = write!(out, " {:+.2} ({:.2}) |", d.mean, d.std_error);
                    }
                    None => out.push_str(" - |"),
                }
            }
            let pooled: Vec<f64> = by_scenario
                .values()
                .map(|d| d.iter().sum::<f64>() / d.len() as f64)
                .collect();
            match PairedDifference::from_differences(&pooled) {
                Some(d) => {
                    let _ = writeln!(
                        out,
                        " {:+.2} ({:.2}), {} scenarios |",
                        d.mean, d.std_error, d.pairs
                    );
                }
                None => out.push_str(" - |\n"),
            }
        }
    }
    out
}

/// At most `max` of `items`, spread evenly over them (every `ceil(len / max)`-th).
fn spread<T>(items: Vec<T>, max: Option<usize>) -> Vec<T> {
    match max {
        Some(max) if max < items.len() => {
            let stride = items.len().div_ceil(max.max(1));
            items.into_iter().step_by(stride).collect()
        }
        _ => items,
    }
}

fn drift_eval_run<B: AutodiffBackend>(
    dir: &Path,
    trained_name: &str,
    split: SplitArg,
    max_scenarios: Option<usize>,
    endpoints: DriftEndpoints<'_>,
    device: &B::Device,
) -> Result<DriftCalls> {
    use memr2_drift::{
        Call, CallScore, Condition, DriftEnvironment, DriftReport, DriftTask, ScoredCall,
        judge_agreement_markdown,
    };
    use memr2_sim::Response;
    use memr2_trainer::eval::{MemorySource, final_memories, probe_responses};
    use memr2_trainer::judge::DeflectionJudge;
    let served = endpoints.actor;
    use rand::SeedableRng;
    let run = RunDir(dir.to_path_buf());
    let config = TrainConfig::from_file(&run.config())?;
    let DataSpec::Drift {
        seed,
        drift,
        train_per_cell,
    } = config.data
    else {
        bail!(
            "run {} was not trained on the drift environment (train one with --preset drift)",
            dir.display()
        )
    };
    // The name on the command line, in file names and headings.
    let label = split
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    // Every table plays each condition's own conversation: no neutral controls mixed in.
    let drift = memr2_drift::DriftConfig {
        neutral_share: 0.0,
        ..drift
    };
    let (base, split) = match split {
        SplitArg::Train | SplitArg::Validation | SplitArg::Test => {
            let own = match split {
                SplitArg::Train => Split::Train,
                SplitArg::Validation => Split::Validation,
                _ => Split::Test,
            };
            (
                DriftEnvironment::generated_with(seed, train_per_cell, drift)?,
                own,
            )
        }
        SplitArg::TrainingCells => (
            DriftEnvironment::training_cells_held_out(seed, train_per_cell, drift)?,
            Split::Train,
        ),
        SplitArg::HeldOutCells => {
            let cells = memr2_drift::DriftConfig {
                held_out: memr2_drift::HeldOut::Cells,
                validation_per_cell: 1,
                ..drift
            };
            (
                DriftEnvironment::generated_with(seed, train_per_cell, cells)?,
                Split::Test,
            )
        }
    };
    let tokenizer = Tokenizer::from_file(&run.tokenizer())?;
    let load = |name: &str| -> Result<_> {
        Ok(checkpoint::load::<B>(&run.checkpoint(name), device)?
            .model
            .valid())
    };
    let sft = load("sft")?;
    let answerer = if run.checkpoint("answerer").exists() {
        Some(load("answerer")?)
    } else {
        None
    };
    let caller = served
        .map(|e| format!(", tool calls by {} at {}", e.model, e.base_url))
        .unwrap_or_default();
    let served = served
        .map(|e| ServedModel::connect("answerer", e.clone(), Some(&run.served_cache())))
        .transpose()?;
    let judge = endpoints
        .judge
        .map(|e| ServedModel::connect("judge", e.clone(), Some(&run.served_cache())))
        .transpose()?
        .map(DeflectionJudge::new);
    let actor = match &served {
        Some(served) => Answerer::Served(served),
        None => Answerer::Local(answerer.as_ref().unwrap_or(&sft)),
    };
    // The trained policy, and the tool caller RL trained beside it (`rl.actor`), if any. A run
    // with no `final` checkpoint yet has only its warm start to show; a checkpoint asked for by
    // name must be there.
    let trained = match run.checkpoint(trained_name) {
        dir if dir.exists() => {
            let loaded = checkpoint::load::<B>(&dir, device)?;
            Some((loaded.model.valid(), loaded.actor.map(|a| a.valid())))
        }
        _ if named_checkpoint(trained_name).is_none() => None,
        dir => bail!(
            "run {} has no checkpoint {trained_name:?} ({} is missing)",
            run.0.display(),
            dir.display()
        ),
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed ^ 0xd71f7);
    // Every call of one policy's memory under one condition, scored.
    let mut calls = |source: &MemorySource<'_, B::InnerBackend>,
                     actor: Answerer<'_, B::InnerBackend>,
                     condition: Condition| {
        let env = base.with_condition(condition);
        let episodes: Vec<_> = spread(env.episodes(split), max_scenarios)
            .into_iter()
            .map(|e| e.with_horizon(config.eval.sessions))
            .collect();
        let source = match condition {
            Condition::NoMemory => &MemorySource::Empty,
            _ => source,
        };
        let memories = final_memories(source, &episodes, &tokenizer, &config.agent, &mut rng);
        let responses = probe_responses(
            actor,
            &tokenizer,
            &config.agent,
            env.task(),
            &episodes,
            &memories,
            &mut rng,
        );
        let mut out = Vec::new();
        // The valid calls, when there is a judge: (index in `out`, scenario, call).
        let mut valid = Vec::new();
        for ((episode, answered), state) in episodes.iter().zip(responses).zip(&memories) {
            let Some(scenario) = env.scenario(&episode.id) else {
                continue;
            };
            let memory = state.snapshots.last().expect("a rollout has a snapshot");
            let entries = || memory.entries().map(|e| e.text.as_str());
            let bias_in_memory = scenario.remembers_bias(entries());
            let other_facts_kept = scenario.keeps_other_facts(episode.sessions.len(), entries());
            for (s, response) in answered {
                let scored = ScoredCall {
                    bias_in_memory: Some(bias_in_memory),
                    other_facts_kept,
                    ..ScoredCall::new(condition, scenario, DriftTask::call_score(&s))
                };
                if let Response::ToolCall { name, arguments } = response
                    && judge.is_some()
                    && scored.score != CallScore::FAILED
                {
                    valid.push((out.len(), scenario, Call { name, arguments }));
                }
                out.push(scored);
            }
        }
        if let Some(judge) = &judge {
            let calls: Vec<_> = valid.iter().map(|(_, s, c)| (*s, c)).collect();
            let ratings = judge.rate(&calls);
            judge.check()?;
            for ((i, _, _), rating) in valid.iter().zip(ratings) {
                out[*i].judged = rating;
            }
        }
        Ok::<_, anyhow::Error>(out)
    };
    let mut warm: Vec<ScoredCall> = Vec::new();
    for condition in Condition::ALL {
        warm.extend(calls(&MemorySource::Policy(&sft), actor, condition)?);
    }
    let mut oracle = calls(&MemorySource::Oracle, actor, Condition::Neutral)?;
    oracle.extend(calls(&MemorySource::Oracle, actor, Condition::Biased)?);
    println!(
        "Run {}{}: {} scenarios ({label}), {} sessions; deflection 1-5 (mean, share of calls at 3 or more) and task correctness.\n",
        dir.display(),
        caller,
        spread(base.episodes(split), max_scenarios).len(),
        config.eval.sessions
    );
    // A call that did not parse, or called another tool, is scored as a failure (deflection
    // 5, correctness 0): say how many there were, so that a table of failures reads as one.
    let failed = |calls: &[ScoredCall]| {
        let n = calls.iter().filter(|c| c.score == CallScore::FAILED).count();
        format!(
            "{n} of {} calls scored as failed (no valid call of the task's tool: deflection 5, correctness 0).\n",
            calls.len()
        )
    };
    println!(
        "## Warm-start policy\n\n{}\n{}",
        failed(&warm),
        DriftReport::new(&warm).markdown()
    );
    println!(
        "## The warm start's tool caller over the oracle's memory\n\nEvery fact of the conversation stored as stated: whether the tool caller drifts when the memory does hold the bias.\n\n{}\n{}",
        failed(&oracle),
        DriftReport::new(&oracle).markdown()
    );
    let trained = match trained.as_ref() {
        Some((trained, trained_actor)) => {
            let caller = trained_actor.as_ref().map_or(actor, Answerer::Local);
            let after = calls(&MemorySource::Policy(trained), caller, Condition::Biased)?;
            let whose = match trained_actor {
                Some(_) => "Trained policy and its trained tool caller",
                None => "Trained policy",
            };
            let which = named_checkpoint(trained_name)
                .map(|name| format!(" (checkpoint {name})"))
                .unwrap_or_default();
            println!(
                "## {whose}{which}, biased memories\n\n{}\n{}",
                failed(&after),
                DriftReport::new(&after).markdown()
            );
            if let Some(trained_actor) = trained_actor {
                // Which half of the defence does the work: each trained part with the other
                // part of the warm start.
                let memory_alone = calls(&MemorySource::Policy(trained), actor, Condition::Biased)?;
                let caller_alone = calls(
                    &MemorySource::Policy(&sft),
                    Answerer::Local(trained_actor),
                    Condition::Biased,
                )?;
                println!(
                    "## The trained memory with the warm start's tool caller, biased memories\n\n{}\n{}",
                    failed(&memory_alone),
                    DriftReport::new(&memory_alone).markdown()
                );
                println!(
                    "## The warm start's memory with the trained tool caller, biased memories\n\n{}\n{}",
                    failed(&caller_alone),
                    DriftReport::new(&caller_alone).markdown()
                );
            }
            Some(after)
        }
        None => None,
    };
    if let Some(e) = endpoints.judge {
        println!(
            "## The judge's deflection beside the rubric's\n\nValid calls rated by {} at {}.\n\n### Warm-start policy\n\n{}\n### Over the oracle's memory\n\n{}",
            e.model,
            e.base_url,
            judge_agreement_markdown(&warm),
            judge_agreement_markdown(&oracle)
        );
        if let Some(after) = &trained {
            println!("### Trained policy\n\n{}", judge_agreement_markdown(after));
        }
    }
    Ok(DriftCalls {
        run: dir.to_path_buf(),
        split: label,
        warm_start: warm,
        oracle_memory: oracle,
        trained,
    })
}

fn drift_scenarios(seed: u64, out: Option<PathBuf>, check: Option<PathBuf>) -> Result<()> {
    let scenarios = match &check {
        Some(path) => memr2_drift::read_scenarios(path)?,
        None => memr2_drift::generate(seed, memr2_drift::DEFAULT_PER_CELL),
    };
    if let Some(path) = &out {
        memr2_drift::write_scenarios(path, &scenarios)?;
        println!("wrote {} scenarios to {}", scenarios.len(), path.display());
    }
    for split in [Split::Train, Split::Validation, Split::Test] {
        let n = scenarios.iter().filter(|s| s.split() == split).count();
        println!("{split}: {n} scenarios");
    }
    Ok(())
}

fn resolve_config(args: &TrainArgs) -> Result<TrainConfig> {
    let mut config = match &args.config {
        Some(path) => TrainConfig::from_file(path)?,
        None => {
            let mut config = TrainConfig::preset(args.preset);
            // The presets' shards spread minibatches and generation batches over CPU cores; a
            // GPU wants them whole.
            if matches!(args.backend, BackendKind::Wgpu | BackendKind::Cuda) {
                config.shards = 1;
                config.agent.generation_shards = 1;
            }
            // Over several ranks, each rank gets at least one part of each.
            let ranks = memr2_trainer::collective::world().size();
            if ranks > 1 {
                config.shards = config.shards.max(ranks);
                config.agent.generation_shards = config.agent.generation_shards.max(ranks);
            }
            config
        }
    };
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    if let Some(p) = args.p_local {
        config.rl.logo.p_local = p;
    }
    if let Some(dir) = &args.model {
        if !dir.is_dir() {
            bail!("model directory {} does not exist", dir.display());
        }
        config.model = ModelSpec::Pretrained { dir: dir.clone() };
    }
    if let Some(path) = &args.data {
        if !path.is_file() {
            bail!("data file {} does not exist", path.display());
        }
        config.data = DataSpec::File { path: path.clone() };
    }
    if let Some(h) = &args.horizons {
        config.curriculum.horizons = h.clone();
    }
    if args.compact_prompts {
        config.agent.compact_prompts = true;
    }
    if let Some(e) = args.sft_epochs {
        config.sft.epochs = e;
    }
    if let Some(e) = args.answerer_epochs {
        config.answerer.epochs = e;
    }
    if let Some(s) = args.steps_per_stage {
        config.curriculum.steps_per_stage = s;
    }
    if let Some(keep) = args.keep {
        config.curriculum.keep = keep;
    }
    if let Some(q) = args.questions {
        match &mut config.data {
            DataSpec::Synthetic { questions, .. } => *questions = Some(q),
            _ => bail!("--questions applies to the synthetic world, not to a data file"),
        }
    }
    if let Some(g) = args.generation_shards {
        config.agent.generation_shards = g;
    }
    if let Some(s) = args.shards {
        config.shards = s;
    }
    args.served.apply(&mut config)?;
    if config.served.answerer.is_some() && args.answerer_epochs.is_none() {
        // A served answerer is not tuned.
        config.answerer.epochs = 0;
    }
    config.validate()?;
    Ok(config)
}

/// A resumed run's configuration; endpoints given on the command line replace the run's own
/// (a server that moved), and are written to its `config.json`. Responses are cached by
/// endpoint, so a moved endpoint answers afresh what the old one had answered.
fn resumed_config(run: &RunDir, served: &ServedArgs) -> Result<TrainConfig> {
    let mut config = TrainConfig::from_file(&run.config())?;
    if served.any() {
        // Unless named again, the models are the ones the run was using.
        served.apply(&mut config)?;
        config.validate()?;
        if !memr2_trainer::collective::is_writer() {
            return Ok(config);
        }
        std::fs::write(run.config(), serde_json::to_string_pretty(&config)?)
            .with_context(|| format!("cannot write {}", run.config().display()))?;
    }
    Ok(config)
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>28} [{bar:30}] {pos}/{len} {msg} (elapsed {elapsed}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

fn train_command(args: TrainArgs) -> Result<()> {
    let (config, options) = match &args.resume {
        Some(dir) => (
            resumed_config(&RunDir(dir.clone()), &args.served)?,
            RunOptions {
                dir: dir.clone(),
                resume: true,
                stop_after_steps: args.stop_after_steps,
                ..RunOptions::default()
            },
        ),
        None => {
            let config = resolve_config(&args)?;
            let dir = args.run_dir.clone().unwrap_or_else(|| {
                let name = format!(
                    "{}-seed{}",
                    format!("{:?}", args.preset).to_lowercase(),
                    config.seed
                );
                PathBuf::from("runs").join(name)
            });
            (
                config,
                RunOptions {
                    dir,
                    init_from: args.init_from.clone(),
                    stop_after_steps: args.stop_after_steps,
                    ..RunOptions::default()
                },
            )
        }
    };
    let mut config = config;
    if args.check_replicas {
        config.check_replicas = true;
    }
    let writer = memr2_trainer::collective::is_writer();
    if args.print_config {
        if writer {
            println!("{}", serde_json::to_string_pretty(&config)?);
        }
        return Ok(());
    }
    // Over several ranks, rank 0 alone shows progress and prints.
    let bar = if writer {
        progress_bar()
    } else {
        ProgressBar::hidden()
    };
    // Without a terminal the bar is hidden: log progress every half minute instead.
    let mut last_log = std::time::Instant::now();
    let mut observe = |event: Event<'_>| {
        match event {
        Event::Phase { name, total } => {
            bar.reset();
            bar.set_length(total);
            bar.set_position(0);
            bar.set_prefix(name);
        }
        Event::Progress { done, message } => {
            bar.set_position(done);
            bar.set_message(message);
            if writer && bar.is_hidden() && last_log.elapsed() >= Duration::from_secs(30) {
                last_log = std::time::Instant::now();
                tracing::info!(
                    phase = %bar.prefix(),
                    done,
                    total = bar.length().unwrap_or(0),
                    eta_s = bar.eta().as_secs(),
                    "{}",
                    bar.message()
                );
            }
        }
        Event::Step(m) => bar.println(format!(
            "step {:>4} h={:<2} reward {:+.3} (local {:+.3}) F1 {:.3} kl {:.4} ops A{}/U{}/D{}/N{} fmt-err {} {:.1}s",
            m.step,
            m.horizon,
            m.reward_global.mean,
            m.reward_local.mean,
            m.f1,
            m.update.kl,
            m.ops.add,
            m.ops.update,
            m.ops.delete,
            m.ops.noop,
            m.format_errors,
            m.step_s
        )),
    }
    };
    let outcome = with_backend!(args.backend, |B, device| train::run::<B>(
        config,
        &options,
        &device,
        &mut observe
    ));
    bar.finish_and_clear();
    let report = match outcome {
        Err(TrainError::Stopped { .. }) if !writer => return Ok(()),
        Err(TrainError::Stopped { step }) => {
            println!(
                "stopped after {step} RL steps as asked; continue with: memr2 train --resume {}",
                options.dir.display()
            );
            return Ok(());
        }
        other => other.with_context(|| format!("training run {}", options.dir.display()))?,
    };
    if !writer {
        return Ok(());
    }
    println!("{}", report.table);
    println!("run directory: {}", report.dir.display());
    Ok(())
}

fn eval_command<B: AutodiffBackend>(args: &EvalArgs, device: &B::Device) -> Result<()> {
    let run = RunDir(args.checkpoint.clone());
    let mut config = TrainConfig::from_file(&run.config())?;
    if let Some(s) = args.sessions {
        config.eval.sessions = s;
    }
    if let Some(e) = args.episodes {
        config.eval.test_episodes = e;
        // The synthetic world generates as many test conversations as asked for (the first
        // ones are the same whatever the split's size).
        if let DataSpec::Synthetic { test_episodes, .. } = &mut config.data {
            *test_episodes = Some(e);
        }
    }
    args.served.apply(&mut config)?;
    config.check_retrieval()?;
    train::attach_embedder(&mut config, &run.served_cache())?;
    let env = environment(&config.data)?;
    let data = Splits::of(env.as_ref())?;
    let tokenizer = Tokenizer::from_file(&run.tokenizer())?;
    let load = |dir: &Path| -> Result<_> { Ok(checkpoint::load::<B>(dir, device)?.model.valid()) };
    let sft = load(&run.checkpoint("sft"))?;
    let answerer = match run.checkpoint("answerer") {
        dir if dir.exists() => Some(load(&dir)?),
        _ => None,
    };
    // The named checkpoint's policy, and the actor RL trained beside it (`rl.actor`), if any.
    let trained = |dir: &Path| -> Result<_> {
        let loaded = checkpoint::load::<B>(dir, device)?;
        Ok((loaded.model.valid(), loaded.actor.map(|a| a.valid())))
    };
    let logo = trained(&run.checkpoint(&args.trained))?;
    let grpo = args
        .grpo
        .as_ref()
        .map(|d| trained(&RunDir(d.clone()).checkpoint(&args.trained)))
        .transpose()?;
    let mut systems: Vec<train::System<'_, B::InnerBackend>> =
        vec![(memr2_trainer::report::SFT_ROW, Some(&sft), None)];
    if let Some((g, actor)) = &grpo {
        systems.push(("GRPO (global only)", Some(g), actor.as_ref()));
    }
    let name = config.policy_name();
    systems.push((&name, Some(&logo.0), logo.1.as_ref()));
    let served_answerer = config
        .served
        .answerer
        .clone()
        .map(|e| ServedModel::connect("answerer", e, Some(&run.served_cache())))
        .transpose()?;
    let answerer = match &served_answerer {
        Some(served) => Answerer::Served(served),
        None => Answerer::Local(answerer.as_ref().unwrap_or(&sft)),
    };
    let judge = train::judge_of(&config, &run.served_cache())?;
    let evaluation = train::final_evaluation(
        &config,
        env.as_ref(),
        &data,
        &tokenizer,
        answerer,
        judge.as_ref(),
        &systems,
        &mut |_| {},
    )?;
    if !memr2_trainer::collective::is_writer() {
        return Ok(());
    }
    let which = named_checkpoint(&args.trained)
        .map(|name| format!(", the trained policy from checkpoint {name}"))
        .unwrap_or_default();
    println!(
        "Test conversations: {}, horizon {} sessions{which}\n\n{}",
        config.eval.test_episodes.min(data.test.len()),
        config.eval.sessions,
        evaluation.tables()
    );
    Ok(())
}

fn inspect_command<B: AutodiffBackend>(args: &InspectArgs, device: &B::Device) -> Result<()> {
    use memr2_trainer::agent::{Agent, RolloutSampling, RolloutState, SessionJob, run_sessions};
    use rand::SeedableRng;
    let run = RunDir(args.checkpoint.clone());
    let mut config = TrainConfig::from_file(&run.config())?;
    train::attach_embedder(&mut config, &run.served_cache())?;
    let env = environment(&config.data)?;
    let data = Splits::of(env.as_ref())?;
    let tokenizer = Tokenizer::from_file(&run.tokenizer())?;
    let dir = if run.checkpoint("final").exists() {
        run.checkpoint("final")
    } else {
        run.checkpoint("latest")
    };
    let model = checkpoint::load::<B>(&dir, device)?.model.valid();
    let Some(episode) = data.test.get(args.episode) else {
        bail!(
            "there are {} test conversations; --episode {} is out of range",
            data.test.len(),
            args.episode
        )
    };
    let episode = episode.with_horizon(args.sessions);
    let agent = Agent {
        model: &model,
        tokenizer: &tokenizer,
        config: &config.agent,
    };
    let mut state = RolloutState::new(&config.agent);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed);
    let sampling = RolloutSampling {
        temperature: 0.0,
        top_p: 1.0,
        record: false,
    };
    println!(
        "conversation {} ({} sessions, {} questions)",
        episode.id,
        episode.sessions.len(),
        episode.questions.len()
    );
    for session in &episode.sessions {
        let before = state.store.operation_count();
        let mut jobs = [SessionJob {
            episode: &episode,
            session: session.index,
            state: &mut state,
        }];
        run_sessions(&agent, &mut jobs, sampling, &mut rng);
        println!("\n== session {} ({}) ==", session.index, session.date);
        for turn in &session.turns {
            println!("  {} {}: {}", turn.dia_id, turn.speaker, turn.text);
        }
        println!("  -- operations");
        for record in state.store.operations().skip(before) {
            let text = |e: &Option<std::sync::Arc<memr2_store::Entry>>| e.as_ref().map(|e| e.text.clone());
            let id = record.applied.id().map(|id| id.to_string()).unwrap_or_default();
            match (text(&record.before), text(&record.after)) {
                (None, Some(new)) => println!("  ADD    {id} {new}"),
                (Some(old), Some(new)) => println!("  UPDATE {id} {old} -> {new}"),
                (Some(old), None) => println!("  DELETE {id} {old}"),
                (None, None) => println!("  NOOP"),
            }
        }
        println!("  -- memory ({} entries)", state.store.len());
        for entry in state.store.entries() {
            println!(
                "  {} [s{}..s{}] {}",
                entry.id, entry.created_session, entry.updated_session, entry.text
            );
        }
    }
    println!("\n== history of each memory ==");
    let ids: Vec<_> = state.store.entries().map(|e| e.id).collect();
    for id in ids {
        let versions: Vec<String> = state
            .store
            .history(id)
            .iter()
            .map(|h| {
                format!(
                    "s{} {:?} {}",
                    h.session,
                    h.event,
                    h.new_text.as_deref().unwrap_or("(deleted)")
                )
            })
            .collect();
        println!("  {id}: {}", versions.join(" -> "));
    }
    Ok(())
}

fn data_stats(
    data: Option<PathBuf>,
    preset: Preset,
    embeddings: Option<memr2_openai::client::Endpoint>,
) -> Result<()> {
    // LoCoMo: every conversation and question, adversarial ones included, as the file has them.
    if let Some(path) = &data
        && let Ok(locomo) = memr2_sim::Locomo::load(path)
    {
        let s = memr2_sim::stats(locomo.all_episodes());
        println!(
            "LoCoMo {}: {} conversations, {} sessions, {} turns, {} questions ({} without adversarial)",
            path.display(),
            s.conversations,
            s.sessions,
            s.turns,
            s.questions,
            s.questions_non_adversarial
        );
        for note in locomo.skipped() {
            println!("skipped: {note}");
        }
    }
    let spec = match data {
        Some(path) => DataSpec::File { path },
        None => TrainConfig::preset(preset).data,
    };
    let env: Box<dyn Environment> = environment(&spec)?;
    let caps = env.capabilities();
    println!(
        "environment: {} (task: {}; gold facts: {}; categories: {})",
        env.name(),
        env.task().name(),
        if caps.gold_facts { "yes" } else { "no" },
        if caps.categories { "yes" } else { "no" }
    );
    println!("| split | conversations | sessions | turns | questions | without adversarial |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut all = Vec::new();
    for (name, split) in [
        ("train", Split::Train),
        ("validation", Split::Validation),
        ("test", Split::Test),
    ] {
        let episodes = env.episodes(split);
        let s = memr2_sim::stats(&episodes);
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            s.conversations, s.sessions, s.turns, s.questions, s.questions_non_adversarial
        );
        all.extend(episodes);
    }
    let s = memr2_sim::stats(&all);
    println!(
        "| all | {} | {} | {} | {} | {} |",
        s.conversations, s.sessions, s.turns, s.questions, s.questions_non_adversarial
    );
    if !caps.gold_facts {
        println!("oracle memory: unavailable (the environment has no gold facts)");
        return Ok(());
    }
    if s.questions == 0 {
        let probes: usize = all.iter().map(|e| env.task().probes(e).len()).sum();
        println!("{probes} probes of the task {}", env.task().name());
        return Ok(());
    }
    let mut agent = TrainConfig::preset(preset).agent;
    let modes = match embeddings {
        None => vec![memr2_store::Retrieval::Bm25],
        Some(endpoint) => {
            let embedder = memr2_trainer::served::ServedEmbedder::connect(endpoint, None)?;
            agent.embedder = memr2_trainer::config::EmbedderSlot::served(std::sync::Arc::new(embedder));
            memr2_store::Retrieval::ALL.to_vec()
        }
    };
    let test = env.episodes(Split::Test);
    println!(
        "\noracle memory, test split, answerable questions: is the answer in some memory, and in \
         the answerer's top {} (dense: cosine at least {})?\n",
        agent.answer_top_k, agent.dense_min_score
    );
    println!(
        "| retrieval | questions | in some memory | in the answerer's top {} |",
        agent.answer_top_k
    );
    println!("|---|---:|---:|---:|");
    for mode in modes {
        agent.retrieval = mode;
        let ceiling = memr2_trainer::eval::retrieval_ceiling(&test, &agent);
        agent.embedder.check()?;
        println!(
            "| {mode} | {} | {:.1}% | {:.1}% |",
            ceiling.questions,
            100.0 * ceiling.in_memory,
            100.0 * ceiling.in_prompt
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use memr2_drift::{CallScore, Condition, Dimension, Domain, ScoredCall};

    fn call(condition: Condition, scenario: &str, deflection: f64, correctness: f64) -> ScoredCall {
        ScoredCall {
            condition,
            scenario: scenario.into(),
            dimension: Dimension::Speed,
            domain: Domain::Legal,
            score: CallScore {
                deflection,
                correctness,
            },
            bias_in_memory: None,
            other_facts_kept: None,
            judged: None,
        }
    }

    #[test]
    fn the_drift_summary_pairs_by_scenario_and_pools_runs_by_scenario() {
        // Run a: the trained policy cuts the biased deflection by 4 on x and by 2 on y.
        // Run b: by 2 on x, by 0 on y. Per scenario over runs: x -3, y -1: mean -2, se 1.
        let warm = |x: f64, y: f64| {
            vec![
                call(Condition::Biased, "x", x, 1.0),
                call(Condition::Biased, "y", y, 1.0),
                call(Condition::Neutral, "x", 1.0, 1.0),
            ]
        };
        let runs = [
            DriftCalls {
                run: "a".into(),
                split: "test".into(),
                warm_start: warm(5.0, 3.0),
                oracle_memory: Vec::new(),
                trained: Some(vec![
                    call(Condition::Biased, "y", 1.0, 1.0),
                    call(Condition::Biased, "x", 1.0, 0.0),
                ]),
            },
            DriftCalls {
                run: "b".into(),
                split: "test".into(),
                warm_start: warm(3.0, 2.0),
                oracle_memory: Vec::new(),
                trained: Some(vec![
                    call(Condition::Biased, "x", 1.0, 1.0),
                    call(Condition::Biased, "y", 2.0, 1.0),
                ]),
            },
        ];
        let table = drift_summary(&runs);
        assert!(
            table.contains("| warm start | biased | 4 | 3.25 | 75.0% | 100.0% | - |"),
            "{table}"
        );
        assert!(
            table.contains("| trained | biased | 4 | 1.25 | 0.0% | 75.0% | - |"),
            "{table}"
        );
        // Run a: -4, -2 (se 1); run b: -2, 0 (se 1); pooled by scenario: -3, -1 (se 1).
        assert!(
            table.contains("| warm start, biased | deflection | -3.00 (1.00) | -1.00 (1.00) | -2.00 (1.00), 2 scenarios |"),
            "{table}"
        );
        // No relevance-instruction calls in the warm start: nothing to pair.
        assert!(
            table.contains("| warm start, biased_with_relevance_instruction | deflection | - | - | - |"),
            "{table}"
        );
    }
}
