//! Served models in a run: the frozen answerer behind an OpenAI-compatible endpoint instead of
//! a model of the run ([`Answerer`]), and the policy served the other way round
//! ([`PolicyModel`], what `memr2 serve` puts behind `memr2_openai::server`).
//!
//! A served model answers through the same prompts and parsers as a local one: the chat it is
//! sent is the role prompt's system and user messages, and its text is parsed and scored by the
//! task as a local completion would be. Responses are cached in the run directory
//! (`served-cache/`), so a resumed or repeated run replays identical requests without calling
//! out. An endpoint that fails after its retries fails the run with the cause, at the end of the
//! step, validation or evaluation that called it, before anything of that unit is written.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use burn::prelude::{Backend, Bool, Int, Tensor};
use burn::tensor::TensorData;
use memr2_openai::cache::Cache;
use memr2_openai::client::{Client, ClientError, ClientStats, Endpoint};
use memr2_openai::server::{ChatModel, Completion};
use memr2_openai::wire::{ChatMessage, ChatRequest, ChatResponse};
use memr2_policy::Transformer;
use memr2_policy::roles::ChatPrompt;
use memr2_policy::tokenizer::Tokenizer;
use memr2_store::Embedder;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::agent::{Agent, Generated, Generator};
use crate::config::AgentConfig;

/// The served models a run calls, each optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServedConfig {
    /// The frozen answerer: rewards, validation and evaluation are all answered by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answerer: Option<Endpoint>,
    /// The LLM judge of the final evaluation: J per category beside F1 (`crate::judge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<Endpoint>,
    /// The teacher that writes the warm start's extractor and manager examples for an
    /// environment without gold facts (`crate::teacher`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<Endpoint>,
    /// The embedding model of dense and hybrid retrieval ([`ServedEmbedder`],
    /// `agent.retrieval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<Endpoint>,
}

impl ServedConfig {
    /// Whether no model is served.
    pub fn is_empty(&self) -> bool {
        self.answerer.is_none() && self.judge.is_none() && self.teacher.is_none() && self.embeddings.is_none()
    }

    /// Each served model with its role, in a fixed order.
    pub fn roles(&self) -> Vec<(&'static str, &Endpoint)> {
        [
            ("answerer", &self.answerer),
            ("judge", &self.judge),
            ("teacher", &self.teacher),
            ("embeddings", &self.embeddings),
        ]
        .into_iter()
        .filter_map(|(role, endpoint)| Some((role, endpoint.as_ref()?)))
        .collect()
    }
}

/// A served model in a run: its client, and the first failure its calls met since it was last
/// checked.
pub struct ServedModel {
    role: &'static str,
    client: Client,
    failure: Mutex<Option<String>>,
}

impl ServedModel {
    /// Connects to an endpoint for a role ("answerer", "judge"), caching responses in
    /// `cache_dir`, and checks that the endpoint answers and serves the model.
    pub fn connect(
        role: &'static str,
        endpoint: Endpoint,
        cache_dir: Option<&Path>,
    ) -> Result<Self, TrainError> {
        let fail = |reason: String| TrainError::Endpoint {
            role,
            url: endpoint.base_url.clone(),
            reason,
        };
        let cache = cache_dir
            .map(Cache::open)
            .transpose()
            .map_err(|e| fail(format!("cannot open the response cache: {e}")))?;
        let client = Client::new(endpoint.clone(), cache).map_err(|e| fail(e.to_string()))?;
        let models = client.models().map_err(|e| fail(e.to_string()))?;
        if !models.data.iter().any(|m| m.id == endpoint.model) {
            let served: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).collect();
            return Err(fail(format!(
                "does not serve model {:?} (it serves {})",
                endpoint.model,
                served.join(", ")
            )));
        }
        Ok(Self {
            role,
            client,
            failure: Mutex::new(None),
        })
    }

    /// The model as a [`Generator`] with the run's agent settings.
    pub fn actor<'a>(&'a self, config: &'a AgentConfig) -> ServedActor<'a> {
        ServedActor { model: self, config }
    }

    /// The first failure since the last check, as the run's error.
    pub fn check(&self) -> Result<(), TrainError> {
        match self.failure.lock().expect("not poisoned").take() {
            None => Ok(()),
            Some(reason) => Err(self.error(reason)),
        }
    }

    /// Requests, cache hits, retries, errors and tokens so far.
    pub fn stats(&self) -> ClientStats {
        self.client.stats()
    }

    /// The client, for calls of its own (the judge's).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// An error of this model's role and endpoint.
    fn error(&self, reason: String) -> TrainError {
        TrainError::Endpoint {
            role: self.role,
            url: self.client.endpoint().base_url.clone(),
            reason,
        }
    }

    /// The text of a chat answer, or `None` (the failure recorded) when the call failed or the
    /// response has no choice.
    pub fn reply_text(&self, answer: Result<ChatResponse, ClientError>) -> Option<String> {
        match answer {
            Ok(response) => match response.text() {
                Some(text) => Some(text.to_string()),
                None => {
                    self.fail("a response had no choice".into());
                    None
                }
            },
            Err(error) => {
                self.fail(error.to_string());
                None
            }
        }
    }

    /// Records a failure (the first one is kept).
    pub fn fail(&self, reason: String) {
        let mut failure = self.failure.lock().expect("not poisoned");
        if failure.is_none() {
            tracing::error!(role = self.role, %reason, "served model failed");
            *failure = Some(reason);
        }
    }
}

/// Largest number of floats [`ServedEmbedder`] keeps in memory (1 GiB); past it the memo is
/// emptied and refilled from the run's cache.
const EMBED_MEMO_FLOATS: usize = 1 << 28;

/// An embedding model behind an endpoint, as the memory store's [`Embedder`]: vectors are
/// kept in memory by text and on disk in the run's cache text by text
/// ([`Client::embed_each`]), so each distinct text is sent once, and
/// [`Embedder::prepare`] sends a round's new texts in one request. A failure is recorded for
/// [`ServedEmbedder::check`] (the run fails at the end of the unit that met it) and the
/// operation or search that needed the vector changes nothing.
pub struct ServedEmbedder {
    model: ServedModel,
    dim: usize,
    memo: Mutex<HashMap<String, Arc<[f32]>>>,
}

impl ServedEmbedder {
    /// Connects (as [`ServedModel::connect`]) and learns the dimension from one embedding.
    pub fn connect(endpoint: Endpoint, cache_dir: Option<&Path>) -> Result<Self, TrainError> {
        let model = ServedModel::connect("embeddings", endpoint, cache_dir)?;
        let probe = model
            .client
            .embed_each(&["memory".to_string()])
            .map_err(|e| model.error(e.to_string()))?;
        let dim = probe.first().map_or(0, Vec::len);
        if dim == 0 {
            return Err(model.error("the endpoint returned an empty embedding".to_string()));
        }
        Ok(Self {
            model,
            dim,
            memo: Mutex::new(HashMap::new()),
        })
    }

    /// The first failure since the last check, as the run's error.
    pub fn check(&self) -> Result<(), TrainError> {
        self.model.check()
    }

    /// Requests, cache hits, retries, errors and tokens so far.
    pub fn stats(&self) -> ClientStats {
        self.model.stats()
    }

    /// Fetches the vectors of the texts not in memory yet, in one call of the client.
    fn fetch(&self, texts: &[&str]) -> Result<(), String> {
        let missing: Vec<String> = {
            let memo = self.memo.lock().expect("not poisoned");
            let mut missing: Vec<String> = texts
                .iter()
                .filter(|t| !memo.contains_key(**t))
                .map(|t| t.to_string())
                .collect();
            missing.sort_unstable();
            missing.dedup();
            missing
        };
        if missing.is_empty() {
            return Ok(());
        }
        let vectors = self
            .model
            .client
            .embed_each(&missing)
            .map_err(|e| e.to_string())?;
        let mut memo = self.memo.lock().expect("not poisoned");
        if (memo.len() + missing.len()) * self.dim > EMBED_MEMO_FLOATS {
            memo.clear();
        }
        for (text, vector) in missing.into_iter().zip(vectors) {
            if vector.len() != self.dim {
                return Err(format!(
                    "an embedding has dimension {}, the first one had {}",
                    vector.len(),
                    self.dim
                ));
            }
            memo.insert(text, vector.into());
        }
        Ok(())
    }
}

impl Embedder for ServedEmbedder {
    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&self, text: &str) -> Result<Vec<f32>, String> {
        if let Some(vector) = self.memo.lock().expect("not poisoned").get(text) {
            return Ok(vector.to_vec());
        }
        self.fetch(&[text]).inspect_err(|e| self.model.fail(e.clone()))?;
        self.memo
            .lock()
            .expect("not poisoned")
            .get(text)
            .map(|v| v.to_vec())
            .ok_or_else(|| "the embedding was evicted as soon as it was fetched".to_string())
    }

    fn prepare(&self, texts: &[&str]) {
        if let Err(e) = self.fetch(texts) {
            self.model.fail(e);
        }
    }
}

/// A served model answering role prompts, as the agent loop calls a model.
pub struct ServedActor<'a> {
    model: &'a ServedModel,
    config: &'a AgentConfig,
}

/// The chat request of a role prompt.
pub fn chat_request(
    prompt: &ChatPrompt,
    max_new_tokens: usize,
    temperature: f32,
    top_p: f32,
    seed: Option<u64>,
) -> ChatRequest {
    ChatRequest {
        max_tokens: Some(max_new_tokens as u32),
        temperature: Some(temperature),
        top_p: Some(top_p),
        seed,
        ..ChatRequest::new(
            "",
            vec![
                ChatMessage::new("system", prompt.system.clone()),
                ChatMessage::new("user", prompt.user.clone()),
            ],
        )
    }
}

impl Generator for ServedActor<'_> {
    fn config(&self) -> &AgentConfig {
        self.config
    }

    /// One request per prompt, in flight together up to the endpoint's concurrency. Greedy
    /// requests carry no seed (and draw nothing from `rng`); sampled ones a seed drawn from it.
    /// A failed request answers with empty text and is recorded for [`ServedModel::check`].
    fn generate(
        &self,
        prompts: &[ChatPrompt],
        max_new_tokens: usize,
        temperature: f32,
        top_p: f32,
        rng: &mut ChaCha8Rng,
    ) -> Vec<Generated> {
        let requests: Vec<ChatRequest> = prompts
            .iter()
            .map(|p| {
                let seed = (temperature > 0.0).then(|| rng.next_u64());
                chat_request(p, max_new_tokens, temperature, top_p, seed)
            })
            .collect();
        self.model
            .client
            .chat_many(&requests)
            .into_iter()
            .map(|answer| Generated {
                prompt: Vec::new(),
                completion: Vec::new(),
                logprobs: Vec::new(),
                text: self.model.reply_text(answer).unwrap_or_default(),
            })
            .collect()
    }
}

/// The frozen answerer of a run: one of its models, or a served one.
pub enum Answerer<'a, B: Backend> {
    /// A model of the run, with the run's tokenizer.
    Local(&'a Transformer<B>),
    /// A model behind an endpoint.
    Served(&'a ServedModel),
}

impl<B: Backend> Clone for Answerer<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for Answerer<'_, B> {}

impl<'a, B: Backend> Answerer<'a, B> {
    /// The answerer as a [`Generator`].
    pub fn generator(self, tokenizer: &'a Tokenizer, config: &'a AgentConfig) -> AnswererActor<'a, B> {
        match self {
            Answerer::Local(model) => AnswererActor::Local(Agent {
                model,
                tokenizer,
                config,
            }),
            Answerer::Served(served) => AnswererActor::Served(served.actor(config)),
        }
    }

    /// A served answerer's first failure since the last check.
    pub fn check(self) -> Result<(), TrainError> {
        match self {
            Answerer::Local(_) => Ok(()),
            Answerer::Served(served) => served.check(),
        }
    }
}

/// [`Answerer::generator`]'s result.
pub enum AnswererActor<'a, B: Backend> {
    /// A model of the run.
    Local(Agent<'a, B>),
    /// A served model.
    Served(ServedActor<'a>),
}

impl<B: Backend> Generator for AnswererActor<'_, B> {
    fn config(&self) -> &AgentConfig {
        match self {
            AnswererActor::Local(a) => a.config(),
            AnswererActor::Served(s) => s.config(),
        }
    }

    fn generate(
        &self,
        prompts: &[ChatPrompt],
        max_new_tokens: usize,
        temperature: f32,
        top_p: f32,
        rng: &mut ChaCha8Rng,
    ) -> Vec<Generated> {
        match self {
            AnswererActor::Local(a) => a.generate(prompts, max_new_tokens, temperature, top_p, rng),
            AnswererActor::Served(s) => s.generate(prompts, max_new_tokens, temperature, top_p, rng),
        }
    }

    fn generate_tool_calls(
        &self,
        prompts: &[ChatPrompt],
        tools: &[&[serde_json::Value]],
        max_new_tokens: usize,
        rng: &mut ChaCha8Rng,
    ) -> Vec<Generated> {
        match self {
            AnswererActor::Local(a) => a.generate_tool_calls(prompts, tools, max_new_tokens, rng),
            AnswererActor::Served(s) => s.generate_tool_calls(prompts, tools, max_new_tokens, rng),
        }
    }
}

/// A model of a run served over the OpenAI API (`memr2 serve`): chats are completed with the
/// run's tokenizer and chat template, a batch of requests sharing one generation call per set
/// of sampling settings. The first message with role `system` is the system prompt; the
/// user messages, joined, are the user turn (the roles' prompts are one of each).
pub struct PolicyModel<B: Backend> {
    name: String,
    model: Transformer<B>,
    tokenizer: Tokenizer,
    config: AgentConfig,
}

impl<B: Backend> PolicyModel<B> {
    /// Serves `model` under `name`.
    pub fn new(name: String, model: Transformer<B>, tokenizer: Tokenizer, config: AgentConfig) -> Self {
        Self {
            name,
            model,
            tokenizer,
            config,
        }
    }

    fn prompt(request: &ChatRequest) -> Result<ChatPrompt, String> {
        let system = request
            .messages
            .iter()
            .filter(|m| m.role == "system")
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let user: Vec<&str> = request
            .messages
            .iter()
            .filter(|m| m.role == "user")
            .map(|m| m.content.as_str())
            .collect();
        if user.is_empty() {
            return Err("the chat has no user message".into());
        }
        Ok(ChatPrompt {
            system,
            user: user.join("\n"),
        })
    }
}

/// Sampling settings that a batch's requests must share to be generated together.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Sampling {
    max_tokens: usize,
    temperature: f32,
    top_p: f32,
    seed: Option<u64>,
}

impl<B: Backend> ChatModel for PolicyModel<B>
where
    Transformer<B>: Sync,
{
    fn name(&self) -> &str {
        &self.name
    }

    /// Greedy requests (temperature 0) with the same `max_tokens` are generated in one batch,
    /// which gives each the text it would get alone; sampled ones are generated one by one
    /// from their own seed (0 when they bring none), so that a seeded request's answer does
    /// not depend on what it was batched with.
    fn complete(&self, batch: &[ChatRequest]) -> Vec<Result<Completion, String>> {
        let agent = Agent {
            model: &self.model,
            tokenizer: &self.tokenizer,
            config: &self.config,
        };
        let mut out: Vec<Option<Result<Completion, String>>> = vec![None; batch.len()];
        let mut groups: Vec<(Sampling, Vec<(usize, ChatPrompt)>)> = Vec::new();
        for (i, request) in batch.iter().enumerate() {
            let prompt = match Self::prompt(request) {
                Ok(p) => p,
                Err(e) => {
                    out[i] = Some(Err(e));
                    continue;
                }
            };
            let temperature = request.temperature.unwrap_or(1.0);
            let sampling = Sampling {
                max_tokens: request
                    .max_tokens
                    .map_or(self.config.max_answer_tokens, |m| m as usize),
                temperature,
                top_p: request.top_p.unwrap_or(1.0),
                seed: (temperature > 0.0).then_some(request.seed.unwrap_or(0)),
            };
            match groups
                .iter_mut()
                .find(|(s, _)| *s == sampling && s.seed.is_none())
            {
                Some((_, members)) => members.push((i, prompt)),
                None => groups.push((sampling, vec![(i, prompt)])),
            }
        }
        for (sampling, members) in groups {
            let prompts: Vec<ChatPrompt> = members.iter().map(|(_, p)| p.clone()).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(sampling.seed.unwrap_or(0));
            let generated = agent.generate(
                &prompts,
                sampling.max_tokens,
                sampling.temperature,
                sampling.top_p,
                &mut rng,
            );
            for ((i, _), g) in members.iter().zip(generated) {
                let ended = g
                    .completion
                    .last()
                    .is_some_and(|t| self.tokenizer.stop_ids().contains(t));
                out[*i] = Some(Ok(Completion {
                    text: g.text,
                    prompt_tokens: g.prompt.len() as u64,
                    completion_tokens: g.completion.len() as u64,
                    finish_reason: if ended { "stop".into() } else { "length".into() },
                }));
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err("not completed".into())))
            .collect()
    }

    /// The mean of the model's final hidden states over the text's tokens (cut to the model's
    /// context), L2-normalised: what the policy has, not a trained embedding model.
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        let device = self.model.device();
        texts
            .iter()
            .map(|text| {
                let mut ids: Vec<i64> = self.tokenizer.encode(text).into_iter().map(i64::from).collect();
                ids.truncate(self.model.max_positions());
                if ids.is_empty() {
                    return Err("cannot embed an empty text".to_string());
                }
                let n = ids.len();
                let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), &device);
                let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(vec![true; n], [1, n]), &device);
                let mean = self.model.forward_hidden(tokens, mask).mean_dim(1);
                let mut v: Vec<f32> = mean
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .map_err(|e| format!("{e:?}"))?;
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                Ok(v)
            })
            .collect()
    }
}
