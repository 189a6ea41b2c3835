//! Served models end to end, against a real `memr2 serve` process on loopback: a run's answerer
//! served over HTTP answers (and judges) an evaluation as the in-process answerer does; the
//! response cache replays it once the server is gone; a server that is gone fails a new
//! request with a clear error; SIGTERM shuts the server down cleanly; a served teacher
//! warm-starts data without gold facts, with a served embedding model for retrieval.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use std::sync::Arc;

use std::collections::HashMap;

use memr2_openai::client::Endpoint;
use memr2_openai::server::{ChatModel, Completion, Server, ServerConfig};
use memr2_policy::roles::{self, ExtractedFact, MemoryOperation};
use memr2_trainer::checkpoint;
use memr2_trainer::config::{CurriculumConfig, EvalConfig, TrainConfig};
use memr2_trainer::data::{Splits, environment};
use memr2_trainer::eval::{Evaluation, MemorySource, final_memories, probe_responses};
use memr2_trainer::judge::Judge;
use memr2_trainer::served::{Answerer, ServedModel};
use memr2_trainer::sft::{TeacherExample, extracted_fact, memory_operation};
use memr2_trainer::train::{self, RunDir, RunOptions, run};

type B = Autodiff<Flex>;

fn tiny_config() -> TrainConfig {
    let mut config = TrainConfig::smoke();
    config.sft.epochs = 2;
    config.answerer.epochs = 1;
    config.curriculum = CurriculumConfig {
        horizons: vec![2],
        steps_per_stage: 1,
        validate_every: 1,
        keep: Default::default(),
    };
    config.eval = EvalConfig {
        validation_episodes: 1,
        validation_sessions: None,
        test_episodes: 2,
        sessions: 3,
    };
    config
}

/// `memr2 serve` on a free port; returns the process and the base URL it printed.
fn serve(dir: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_memr2"))
        .args(["serve", "--checkpoint"])
        .arg(dir)
        .args(["--addr", "127.0.0.1:0", "--max-wait-ms", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("memr2 runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    (child, url)
}

/// A run of `config` trained in `root/base`, then served by `memr2 serve`: its options, the
/// server process and its base URL.
fn train_and_serve(root: &Path, config: &TrainConfig) -> (RunOptions, Child, String) {
    let base = RunOptions {
        dir: root.join("base"),
        ..RunOptions::default()
    };
    run::<B>(config.clone(), &base, &Default::default(), &mut |_| {}).unwrap();
    let (server, url) = serve(&base.dir);
    (base, server, url)
}

/// A model served in this process on a free port, with its base URL.
fn serve_in_process(model: Arc<dyn ChatModel>) -> (Server, String) {
    let server = Server::start(
        model,
        ServerConfig {
            addr: "127.0.0.1:0".into(),
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let url = format!("http://{}/v1", server.addr());
    (server, url)
}

fn endpoint(url: &str, model: &str) -> Endpoint {
    Endpoint {
        max_retries: 1,
        retry_base_ms: 10,
        timeout_s: 60.0,
        ..Endpoint::new(url, model)
    }
}

/// A row's name, F1 board and per-conversation sums.
type F1Row = (String, memr2_sim::ScoreBoard, Vec<(usize, f64)>);

/// The F1 rows of an evaluation, without the judge's labels.
fn f1_rows(evaluation: &Evaluation) -> Vec<F1Row> {
    evaluation
        .rows
        .iter()
        .map(|(name, s)| (name.clone(), s.board.clone(), s.per_episode.clone()))
        .collect()
}

#[test]
fn a_served_answerer_answers_as_the_in_process_one_and_its_cache_outlives_the_server() {
    let root = tempfile::tempdir().unwrap();
    let device = Default::default();
    let options = RunOptions {
        dir: root.path().join("run"),
        ..RunOptions::default()
    };
    let config = tiny_config();
    run::<B>(config.clone(), &options, &device, &mut |_| {}).unwrap();
    let dir = RunDir(options.dir.clone());
    let tokenizer = memr2_policy::tokenizer::Tokenizer::from_file(&dir.tokenizer()).unwrap();
    let load = |name: &str| {
        checkpoint::load::<B>(&dir.checkpoint(name), &device)
            .unwrap()
            .model
            .valid()
    };
    let (sft, answerer, policy) = (load("sft"), load("answerer"), load("final"));
    let env = environment(&config.data).unwrap();
    let data = Splits::of(env.as_ref()).unwrap();
    let systems = [("SFT only", Some(&sft), None), ("LoGo-GRPO", Some(&policy), None)];
    let evaluate = |answerer: Answerer<'_, _>, judge: Option<&Judge>| {
        train::final_evaluation(
            &config,
            env.as_ref(),
            &data,
            &tokenizer,
            answerer,
            judge,
            &systems,
            &mut |_| {},
        )
    };
    let local = evaluate(Answerer::Local(&answerer), None).unwrap();

    let (mut server, url) = serve(&options.dir);
    let cache = root.path().join("cache");
    let served = ServedModel::connect("answerer", endpoint(&url, "memr2-answerer"), Some(&cache)).unwrap();
    let judge =
        Judge::new(ServedModel::connect("judge", endpoint(&url, "memr2-answerer"), Some(&cache)).unwrap());
    let remote = evaluate(Answerer::Served(&served), Some(&judge)).unwrap();
    assert_eq!(f1_rows(&remote), f1_rows(&local));
    // Not only the scores: every response, word for word, over the oracle's memories.
    let test: Vec<_> = data.test.iter().take(2).map(|e| e.with_horizon(3)).collect();
    let mut rng = rand::SeedableRng::seed_from_u64(0);
    let memories = final_memories(
        &MemorySource::<Flex>::Oracle,
        &test,
        &tokenizer,
        &config.agent,
        &mut rng,
    );
    let ask = |answerer| {
        let mut rng = rand::SeedableRng::seed_from_u64(0);
        probe_responses(
            answerer,
            &tokenizer,
            &config.agent,
            env.task(),
            &test,
            &memories,
            &mut rng,
        )
    };
    let here = ask(Answerer::Local(&answerer));
    let there = ask(Answerer::Served(&served));
    assert_eq!(there, here);
    let texts: Vec<String> = here.iter().flatten().map(|(_, r)| format!("{r:?}")).collect();
    assert!(
        texts.iter().any(|t| t.len() > 12),
        "the answers say something: {texts:?}"
    );
    // Every answer was judged (the tiny answerer is no judge: most outputs carry no label).
    for (name, scores) in &remote.rows {
        let judged = scores.judge.overall();
        assert_eq!(
            judged.judged + judged.unlabelled,
            scores.board.overall().count,
            "{name}"
        );
    }
    assert!(remote.tables().contains("| J |"), "{}", remote.tables());
    let sent = served.stats().requests;
    assert!(sent > 0);

    // The server is killed: the same evaluation is replayed from the cache, and a request the
    // cache has not seen fails with the endpoint named.
    server.kill().unwrap();
    server.wait().unwrap();
    let replayed = evaluate(Answerer::Served(&served), None).unwrap();
    assert_eq!(f1_rows(&replayed), f1_rows(&local));
    assert_eq!(
        served.stats().requests,
        sent,
        "nothing was sent to the dead server"
    );
    let mut longer = config.clone();
    longer.eval.sessions = 2;
    let err = train::final_evaluation(
        &longer,
        env.as_ref(),
        &data,
        &tokenizer,
        Answerer::Served(&served),
        None,
        &systems,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("served answerer") && err.contains(&url), "{err}");
}

#[test]
fn the_server_stops_cleanly_on_sigterm() {
    let root = tempfile::tempdir().unwrap();
    let options = RunOptions {
        dir: root.path().join("run"),
        ..RunOptions::default()
    };
    let mut config = tiny_config();
    config.sft.epochs = 1;
    config.curriculum.steps_per_stage = 0;
    run::<B>(config, &options, &Default::default(), &mut |_| {}).unwrap();
    let (mut server, url) = serve(&options.dir);
    let health = ureq::get(&format!("{}/health", url.trim_end_matches("/v1")))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(health.contains("ok"), "{health}");
    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = server.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// A model that is listed but completes nothing.
struct Broken;

impl ChatModel for Broken {
    fn name(&self) -> &str {
        "memr2-answerer"
    }

    fn complete(&self, batch: &[memr2_openai::wire::ChatRequest]) -> Vec<Result<Completion, String>> {
        batch.iter().map(|_| Err("out of memory".to_string())).collect()
    }

    fn embed(&self, _texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        Err("none".to_string())
    }
}

/// Metrics without wall-clock fields and the served answerer's counters, which differ between
/// an uninterrupted run and a resumed one.
fn deterministic(records: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    records
        .into_iter()
        .map(|mut r| {
            if let Some(map) = r.as_object_mut() {
                map.retain(|k, _| !k.ends_with("_s") && !k.ends_with("_per_s") && k != "served_answerer");
                if let Some(update) = map.get_mut("update").and_then(serde_json::Value::as_object_mut) {
                    update.retain(|k, _| !k.ends_with("_s"));
                }
            }
            r
        })
        .collect()
}

#[test]
fn a_run_whose_served_answerer_dies_fails_clearly_and_resumes_to_the_same_metrics() {
    use memr2_trainer::TrainError;
    use memr2_trainer::metrics::MetricsLog;
    let root = tempfile::tempdir().unwrap();
    let device = Default::default();
    // The answerer's run, then served.
    let mut config = tiny_config();
    config.curriculum.steps_per_stage = 2;
    let (base, mut server, url) = train_and_serve(root.path(), &config);
    let mut served = config.clone();
    served.answerer.epochs = 0;
    served.served.answerer = Some(endpoint(&url, "memr2-answerer"));
    let from = |name: &str| RunOptions {
        dir: root.path().join(name),
        init_from: Some(base.dir.clone()),
        ..RunOptions::default()
    };

    // Uninterrupted.
    let straight = from("straight");
    run::<B>(served.clone(), &straight, &device, &mut |_| {}).unwrap();

    // Stopped after one step; the server dies; the resumed run fails at its first request
    // the cache has not seen, naming the endpoint, and writes no further metrics line.
    let killed = RunOptions {
        stop_after_steps: Some(1),
        ..from("killed")
    };
    let err = run::<B>(served.clone(), &killed, &device, &mut |_| {})
        .err()
        .expect("stopped");
    assert!(matches!(err, TrainError::Stopped { step: 1 }), "{err}");
    let lines = MetricsLog::read(&killed.dir.join("metrics.jsonl")).unwrap().len();
    server.kill().unwrap();
    server.wait().unwrap();
    let resume = RunOptions {
        resume: true,
        stop_after_steps: None,
        ..killed.clone()
    };
    let err = run::<B>(served.clone(), &resume, &device, &mut |_| {})
        .err()
        .expect("the endpoint is gone");
    let message = err.to_string();
    assert!(
        matches!(err, TrainError::Endpoint { role: "answerer", .. }) && message.contains(&url),
        "{message}"
    );
    assert_eq!(
        MetricsLog::read(&killed.dir.join("metrics.jsonl")).unwrap().len(),
        lines
    );

    // An endpoint that lists the model but fails every chat: the run starts, and its step
    // fails on the answerer's first request, before the update or any line is written.
    let (broken, broken_url) = serve_in_process(Arc::new(Broken));
    let config_path = killed.dir.join("config.json");
    let original = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, original.replace(&url, &broken_url)).unwrap();
    let err = run::<B>(served.clone(), &resume, &device, &mut |_| {})
        .err()
        .expect("the chats fail");
    let message = err.to_string();
    assert!(
        message.contains(&broken_url) && message.contains("500"),
        "{message}"
    );
    assert_eq!(
        MetricsLog::read(&killed.dir.join("metrics.jsonl")).unwrap().len(),
        lines
    );
    broken.shutdown();

    // Back up (on another port: the run's configuration names the old one, so it is
    // rewritten as a user would edit it), the resumed run ends as the uninterrupted one did.
    let (mut server, new_url) = serve(&base.dir);
    std::fs::write(&config_path, original.replace(&url, &new_url)).unwrap();
    run::<B>(served, &resume, &device, &mut |_| {}).unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    let a = deterministic(MetricsLog::read(&straight.dir.join("metrics.jsonl")).unwrap());
    let b = deterministic(MetricsLog::read(&killed.dir.join("metrics.jsonl")).unwrap());
    assert_eq!(a, b);
    assert!(a.iter().filter(|r| r.get("reward_global").is_some()).count() == 2);
}

/// The synthetic world read without its gold facts, like data a user brings.
struct WithoutGoldFacts(Box<dyn memr2_sim::Environment>);

impl memr2_sim::Environment for WithoutGoldFacts {
    fn name(&self) -> &str {
        "synthetic without gold facts"
    }

    fn episodes(&self, split: memr2_sim::Split) -> Vec<memr2_sim::Episode> {
        let mut episodes = self.0.episodes(split);
        episodes.iter_mut().for_each(|e| e.facts.clear());
        episodes
    }

    fn capabilities(&self) -> memr2_sim::Capabilities {
        memr2_sim::Capabilities {
            gold_facts: false,
            ..self.0.capabilities()
        }
    }
}

/// A teacher model that knows the gold facts, behind HTTP: it answers the extractor's prompt
/// of a chunk with the chunk's gold facts, and the manager's prompt of a fact with the oracle's
/// operations over the memories shown, as the simulator's perfect teacher does in process.
struct GoldTeacher {
    /// Extractor prompt (user message) -> the chunk's facts, rendered.
    extractor: HashMap<String, String>,
    /// Fact text -> the fact.
    facts: HashMap<String, memr2_sim::Fact>,
}

impl GoldTeacher {
    fn new(episodes: &[memr2_sim::Episode], cfg: &memr2_trainer::config::AgentConfig) -> Self {
        let mut teacher = memr2_sim::Teacher::new(memr2_sim::TeacherConfig::perfect(), 0);
        let (mut extractor, mut facts) = (HashMap::new(), HashMap::new());
        for episode in episodes {
            for session in &episode.sessions {
                for chunk in session.chunks(cfg.chunks_per_session) {
                    let written = teacher.facts(episode, chunk);
                    let rendered: Vec<ExtractedFact> = written.iter().map(extracted_fact).collect();
                    let prompt = memr2_trainer::agent::extractor_prompt_for(&session.date, chunk);
                    extractor.insert(prompt.user, roles::render_facts(&rendered));
                    facts.extend(written.into_iter().map(|f| (f.text.clone(), f)));
                }
            }
        }
        Self { extractor, facts }
    }

    fn reply(&self, user: &str) -> Result<String, String> {
        if let Some(facts) = self.extractor.get(user) {
            return Ok(facts.clone());
        }
        let mut lines = user.lines();
        let fact = lines
            .next()
            .and_then(|l| l.strip_prefix("fact: "))
            .and_then(|text| self.facts.get(text))
            .ok_or_else(|| format!("not a prompt this teacher knows: {user}"))?;
        let shown: Vec<(String, String)> = lines
            .skip(1)
            .filter_map(|l| l.split_once(": "))
            .map(|(alias, text)| (alias.to_string(), text.to_string()))
            .collect();
        let mut teacher = memr2_sim::Teacher::new(memr2_sim::TeacherConfig::perfect(), 0);
        let operations: Vec<MemoryOperation> = teacher
            .operations(fact, &shown)
            .into_iter()
            .map(memory_operation)
            .collect();
        Ok(roles::render_operations(&operations))
    }
}

impl ChatModel for GoldTeacher {
    fn name(&self) -> &str {
        "gold-teacher"
    }

    fn complete(&self, batch: &[memr2_openai::wire::ChatRequest]) -> Vec<Result<Completion, String>> {
        complete_each(batch, |user| self.reply(user))
    }

    fn embed(&self, _texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        Err("a teacher, not an embedding model".to_string())
    }
}

#[test]
fn a_served_teacher_warm_starts_data_without_gold_facts_and_served_embeddings_retrieve() {
    let root = tempfile::tempdir().unwrap();
    let device = Default::default();
    let mut config = tiny_config();
    config.eval.test_episodes = 1;
    // The trained policy's embeddings, from `memr2 serve`; the teacher, in process.
    let (_, mut server, url) = train_and_serve(root.path(), &config);
    let gold = environment(&config.data).unwrap();
    let data = Splits::of(gold.as_ref()).unwrap();
    let horizon = config.curriculum.max_horizon();
    let train_episodes: Vec<_> = data.train.iter().map(|e| e.with_horizon(horizon)).collect();
    let (_teacher_server, teacher_url) =
        serve_in_process(Arc::new(GoldTeacher::new(&train_episodes, &config.agent)));

    let env = WithoutGoldFacts(gold);
    config.data = memr2_trainer::config::DataSpec::External {
        name: env.0.name().to_string(),
    };
    config.sft.epochs = 1;
    let options = RunOptions {
        dir: root.path().join("taught"),
        ..RunOptions::default()
    };
    // Without a teacher the warm start is refused, with the way out named.
    let refused = train::run_with::<B>(&env, config.clone(), &options, &device, &mut |_| {})
        .err()
        .expect("refused")
        .to_string();
    assert!(refused.contains("--teacher-endpoint"), "{refused}");
    assert!(!options.dir.exists(), "nothing was written");

    config.served.teacher = Some(endpoint(&teacher_url, "gold-teacher"));
    config.served.embeddings = Some(endpoint(&url, "memr2-policy"));
    config.agent.retrieval = memr2_store::Retrieval::Hybrid;
    train::run_with::<B>(&env, config.clone(), &options, &device, &mut |_| {}).unwrap();
    let run_dir = RunDir(options.dir.clone());
    let written = TrainConfig::from_file(&run_dir.config()).unwrap();
    assert_eq!(written.served, config.served);
    assert_eq!(written.agent.retrieval, memr2_store::Retrieval::Hybrid);
    let evaluation: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.evaluation()).unwrap()).unwrap();
    assert!(
        evaluation.to_string().contains("has no gold facts"),
        "the oracle row is unavailable, not empty: {evaluation}"
    );
    let metrics = std::fs::read_to_string(run_dir.metrics()).unwrap();
    let step: serde_json::Value = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r.get("served_embeddings").is_some())
        .expect("a step records the embedding model's calls");
    assert!(
        step["served_embeddings"]["requests"].as_u64().unwrap() > 0,
        "{step}"
    );
    assert_eq!(step["served_embeddings"]["errors"], 0, "{step}");

    // Replayed from the run's cache, the served teacher's traces are word for word the
    // examples the perfect teacher writes in process, over the same (hybrid) retrieval.
    let mut attached = written.clone();
    train::attach_embedder(&mut attached, &run_dir.served_cache()).unwrap();
    let agent = attached.agent;
    let teacher = memr2_trainer::teacher::ServedTeacher::connect(
        endpoint(&teacher_url, "gold-teacher"),
        Some(&run_dir.served_cache()),
    )
    .unwrap();
    let taught = Splits::of(&env).unwrap();
    let traces = teacher
        .traces(&taught.train, &config.curriculum.horizons, &agent)
        .unwrap();
    assert_eq!(
        teacher.stats().requests,
        1,
        "only the model list went out; the traces replayed from the run's cache"
    );
    let stats = traces.stats;
    assert_eq!(
        (stats.extractor_unparsed, stats.manager_unparsed),
        (0, 0),
        "{stats:?}"
    );
    assert!(stats.facts > 0 && stats.operations_applied > 0, "{stats:?}");
    let in_process: Vec<TeacherExample> = train_episodes
        .iter()
        .flat_map(|episode| {
            let mut perfect = memr2_sim::Teacher::new(memr2_sim::TeacherConfig::perfect(), 0);
            memr2_trainer::sft::teacher_replay(episode, horizon, &mut perfect, &agent).0
        })
        .collect();
    let view = |examples: &[TeacherExample]| -> Vec<(String, String, String)> {
        examples
            .iter()
            .map(|e| {
                (
                    format!("{:?}", e.role),
                    e.prompt.user.clone(),
                    e.completion.clone(),
                )
            })
            .collect()
    };
    assert_eq!(view(&traces.examples), view(&in_process));
    assert!(
        !traces.answerer.is_empty(),
        "questions answerable from the teacher's memory"
    );

    // A server that is gone fails the embedding model's connection with the endpoint named.
    server.kill().unwrap();
    server.wait().unwrap();
    let err = memr2_trainer::served::ServedEmbedder::connect(endpoint(&url, "memr2-policy"), None)
        .err()
        .expect("nothing answers")
        .to_string();
    assert!(err.contains("embeddings") && err.contains(&url), "{err}");
}

/// Each request's completion from its user message (empty when it has none).
fn complete_each(
    batch: &[memr2_openai::wire::ChatRequest],
    reply: impl Fn(&str) -> Result<String, String>,
) -> Vec<Result<Completion, String>> {
    batch
        .iter()
        .map(|request| {
            let user = request
                .messages
                .iter()
                .find(|m| m.role == "user")
                .map_or("", |m| m.content.as_str());
            reply(user).map(|text| Completion {
                text,
                prompt_tokens: 1,
                completion_tokens: 1,
                finish_reason: "stop".to_string(),
            })
        })
        .collect()
}

/// A judge of deflection that compares the two calls its prompt shows: 1 when they are the
/// same, 5 when not, and no rating when the rated call has no arguments.
struct CallComparer;

impl ChatModel for CallComparer {
    fn name(&self) -> &str {
        "comparer"
    }

    fn complete(&self, batch: &[memr2_openai::wire::ChatRequest]) -> Vec<Result<Completion, String>> {
        let call_after = |text: &str, heading: &str| -> serde_json::Value {
            let line = text.split_once(heading).unwrap().1.lines().nth(1).unwrap();
            serde_json::from_str(line).unwrap()
        };
        complete_each(batch, |prompt| {
            let baseline = call_after(prompt, "Correct, unbiased call:");
            let rated = call_after(prompt, "Call to rate:");
            Ok(if rated["arguments"].as_object().is_some_and(|a| a.is_empty()) {
                "I cannot tell what this call does.".to_string()
            } else {
                let rating = if rated == baseline { 1 } else { 5 };
                format!("Compared argument by argument. {{\"deflection\": {rating}}}")
            })
        })
    }

    fn embed(&self, _texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        Err("a judge, not an embedding model".to_string())
    }
}

#[test]
fn a_served_judge_rates_tool_calls_and_a_broken_one_fails_clearly() {
    use memr2_trainer::judge::DeflectionJudge;
    let scenarios = memr2_drift::generate(0, 1);
    let s = &scenarios[0];
    let unrated = memr2_drift::Call {
        name: s.baseline.name.clone(),
        arguments: serde_json::Map::new(),
    };
    let drifted = memr2_drift::drifted_call(s);
    let calls = vec![(s, &s.baseline), (s, &drifted), (s, &unrated)];
    let (_server, url) = serve_in_process(Arc::new(CallComparer));
    let judge =
        DeflectionJudge::new(ServedModel::connect("judge", endpoint(&url, "comparer"), None).unwrap());
    assert_eq!(judge.rate(&calls), vec![Some(1.0), Some(5.0), None]);
    judge.check().unwrap();

    let (_broken, url) = serve_in_process(Arc::new(Broken));
    let judge =
        DeflectionJudge::new(ServedModel::connect("judge", endpoint(&url, "memr2-answerer"), None).unwrap());
    assert_eq!(judge.rate(&calls[..1]), vec![None]);
    let error = judge.check().unwrap_err().to_string();
    assert!(error.contains("judge"), "{error}");
}
