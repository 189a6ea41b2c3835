//! A blocking client for any OpenAI-compatible endpoint: chat completions, embeddings and model
//! lists, with bounded concurrency, timeouts, retries with backoff, token counts and an optional
//! on-disk [`Cache`] of responses.
//!
//! ```no_run
//! use memr2_openai::client::{Client, Endpoint};
//! use memr2_openai::wire::{ChatMessage, ChatRequest};
//!
//! let client = Client::new(Endpoint::new("http://127.0.0.1:8000/v1", "Qwen/Qwen3-8B"), None)?;
//! let request = ChatRequest::new("", vec![ChatMessage::new("user", "Capital of France?")]);
//! let response = client.chat(&request)?;
//! println!("{}", response.text().unwrap_or_default());
//! # Ok::<(), memr2_openai::client::ClientError>(())
//! ```
//!
//! Retries: a request that gets no answer (refused, reset, timed out), a 429 or a 5xx is sent
//! again up to [`Endpoint::max_retries`] times, waiting [`Endpoint::retry_base_ms`] doubled per
//! retry (at most 30 s), or what the answer's `Retry-After` header says. Any other 4xx fails at
//! once. A 200 whose body is not the expected JSON fails at once, and is never cached.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cache::Cache;
use crate::wire::{
    ChatRequest, ChatResponse, Embedding, EmbeddingInput, EmbeddingRequest, EmbeddingResponse, ErrorBody,
    ModelList, Usage,
};

/// Most texts [`Client::embed_each`] sends in one request (OpenAI accepts 2048 inputs a
/// request; smaller requests keep one slow answer from holding up everything).
pub const EMBED_BATCH: usize = 256;

/// The route of chat completions, after the base URL.
const CHAT_ROUTE: &str = "/chat/completions";
/// The route of embeddings, after the base URL.
const EMBEDDINGS_ROUTE: &str = "/embeddings";
/// The route of the model list, after the base URL.
const MODELS_ROUTE: &str = "/models";
/// The longest wait between two attempts, whatever the backoff or `Retry-After` say.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
/// The largest response body read (embeddings of many long texts run to tens of MiB).
const MAX_BODY_BYTES: u64 = 1 << 30;
/// How much of a body that is not an OpenAI error an error message quotes.
const QUOTED_BODY_CHARS: usize = 200;

/// Where a served model is: base URL (e.g. `http://127.0.0.1:8080/v1`; requests go to
/// `{base_url}/chat/completions`, `/embeddings`, `/models`), model name, and how to call it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The API's root, `http://` or `https://`, usually ending in `/v1`.
    pub base_url: String,
    /// The model's name, put in requests that leave `model` empty.
    pub model: String,
    /// Name of the environment variable holding the API key, sent as `Authorization: Bearer`;
    /// the key itself is never stored in an Endpoint (so never written to a run's config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Seconds one attempt may take, from connecting to the last byte of the answer.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Attempts after the first for a request that got no answer, a 429 or a 5xx.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Milliseconds before the first retry, doubling for each one after (at most 30 s); a
    /// `Retry-After` header in seconds overrides it.
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// Most requests in flight at once from [`Client::chat_many`].
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_timeout_s() -> f64 {
    120.0
}

fn default_max_retries() -> u32 {
    4
}

fn default_retry_base_ms() -> u64 {
    500
}

fn default_concurrency() -> usize {
    8
}

impl Endpoint {
    /// An endpoint without an API key, with the default timeout (120 s), retries (4, from
    /// 500 ms) and concurrency (8).
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: None,
            timeout_s: default_timeout_s(),
            max_retries: default_max_retries(),
            retry_base_ms: default_retry_base_ms(),
            concurrency: default_concurrency(),
        }
    }

    /// Rejects what no request could be sent with: a base URL that is not `http://` or
    /// `https://`, a timeout that is not a positive number of seconds, a concurrency of 0, an
    /// empty key variable name.
    pub fn validate(&self) -> Result<(), ClientError> {
        let invalid = |reason: String| Err(ClientError::InvalidEndpoint { reason });
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return invalid(format!(
                "base_url {:?} does not start with http:// or https://",
                self.base_url
            ));
        }
        if self.attempt_timeout().is_none() {
            return invalid(format!(
                "timeout_s must be a positive number of seconds, not {}",
                self.timeout_s
            ));
        }
        if self.concurrency == 0 {
            return invalid("concurrency must be at least 1".to_string());
        }
        if self.api_key_env.as_deref() == Some("") {
            return invalid("api_key_env is empty; leave it out for no key".to_string());
        }
        Ok(())
    }

    /// `{base_url}{route}`, with no doubled slash.
    fn url(&self, route: &str) -> String {
        format!("{}{route}", self.base_url.trim_end_matches('/'))
    }

    /// The timeout of one attempt, if `timeout_s` is a usable duration.
    fn attempt_timeout(&self) -> Option<Duration> {
        Duration::try_from_secs_f64(self.timeout_s)
            .ok()
            .filter(|d| !d.is_zero())
    }
}

/// Counters of a [`Client`] since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStats {
    /// Requests sent over the network, retries included.
    pub requests: u64,
    /// Calls answered from the cache.
    pub cache_hits: u64,
    /// Requests sent again after no answer, a 429 or a 5xx.
    pub retries: u64,
    /// Calls that returned an error.
    pub errors: u64,
    /// Prompt tokens, from the usage of responses that came over the network.
    pub prompt_tokens: u64,
    /// Completion tokens, from the usage of responses that came over the network.
    pub completion_tokens: u64,
}

/// The live counters behind [`ClientStats`].
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    cache_hits: AtomicU64,
    retries: AtomicU64,
    errors: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn add_usage(&self, usage: Option<Usage>) {
        if let Some(usage) = usage {
            Self::add(&self.prompt_tokens, usage.prompt_tokens);
            Self::add(&self.completion_tokens, usage.completion_tokens);
        }
    }

    fn snapshot(&self) -> ClientStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ClientStats {
            requests: read(&self.requests),
            cache_hits: read(&self.cache_hits),
            retries: read(&self.retries),
            errors: read(&self.errors),
            prompt_tokens: read(&self.prompt_tokens),
            completion_tokens: read(&self.completion_tokens),
        }
    }
}

/// Everything that can go wrong calling an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer (refused, reset, timed out) after every attempt.
    #[error("no answer from {url} after {attempts} attempt(s): {reason}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's failure.
        reason: String,
    },
    /// An HTTP error status: 4xx other than 429 at once, 429 and 5xx after every attempt.
    #[error("{url} answered {status}: {message}")]
    Status {
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The OpenAI error body's message when it has one, else the body's start.
        message: String,
    },
    /// A 200 whose body is not the expected JSON (or has no choice, or the wrong number of
    /// embeddings).
    #[error("unexpected answer from {url}: {reason}")]
    Malformed {
        /// The URL called.
        url: String,
        /// What is wrong with it: the parser's error, or the check that failed.
        reason: String,
    },
    /// The endpoint names an API key variable that is not set (or is empty).
    #[error("environment variable {var} (the endpoint's API key) is not set")]
    MissingKey {
        /// The variable's name.
        var: String,
    },
    /// A response could not be written to the cache.
    #[error("cannot write the cache entry {}", path.display())]
    Cache {
        /// The entry's file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The endpoint's settings cannot work (see [`Endpoint::validate`]).
    #[error("invalid endpoint: {reason}")]
    InvalidEndpoint {
        /// What is wrong.
        reason: String,
    },
}

impl ClientError {
    /// A short name of the variant, for counting errors by kind: `unreachable`, `status`,
    /// `malformed`, `missing_key`, `cache`, `invalid_endpoint`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Unreachable { .. } => "unreachable",
            ClientError::Status { .. } => "status",
            ClientError::Malformed { .. } => "malformed",
            ClientError::MissingKey { .. } => "missing_key",
            ClientError::Cache { .. } => "cache",
            ClientError::InvalidEndpoint { .. } => "invalid_endpoint",
        }
    }
}

/// A response body the client parses, checks and counts.
trait Answer: DeserializeOwned {
    /// The tokens it says the request used.
    fn usage(&self) -> Option<Usage>;
}

impl Answer for ChatResponse {
    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

impl Answer for EmbeddingResponse {
    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

/// What one attempt brought back.
enum Attempt {
    /// An HTTP answer: its status, its `Retry-After` (if in seconds) and its body.
    Answered {
        status: u16,
        retry_after: Option<Duration>,
        body: Vec<u8>,
    },
    /// No answer, for a reason worth another attempt (refused, reset, timed out).
    Transient(String),
    /// No answer, for a reason another attempt would meet again (a bad URL, a TLS failure).
    Fatal(String),
}

/// A client of one [`Endpoint`]. Share it between threads by reference; it is `Send + Sync`.
pub struct Client {
    endpoint: Endpoint,
    agent: ureq::Agent,
    api_key: Option<String>,
    cache: Option<Cache>,
    counters: Counters,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("cache", &self.cache)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of an endpoint, answering from and storing into `cache` if one is given. Reads
    /// the API key from the named environment variable now: [`ClientError::MissingKey`] if it
    /// is named and unset or empty; [`ClientError::InvalidEndpoint`] if the endpoint does not
    /// pass [`Endpoint::validate`].
    pub fn new(endpoint: Endpoint, cache: Option<Cache>) -> Result<Self, ClientError> {
        Self::with_key_lookup(endpoint, cache, |var| std::env::var(var).ok())
    }

    /// [`Client::new`] with the environment read through `lookup` (tests cannot set variables
    /// without `unsafe`).
    fn with_key_lookup(
        endpoint: Endpoint,
        cache: Option<Cache>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ClientError> {
        endpoint.validate()?;
        let api_key = match &endpoint.api_key_env {
            None => None,
            Some(var) => match lookup(var) {
                Some(key) if !key.is_empty() => Some(key),
                _ => return Err(ClientError::MissingKey { var: var.clone() }),
            },
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(endpoint.attempt_timeout())
            .max_idle_connections_per_host(endpoint.concurrency)
            .max_idle_connections(endpoint.concurrency.max(10))
            .build()
            .new_agent();
        Ok(Self {
            endpoint,
            agent,
            api_key,
            cache,
            counters: Counters::default(),
        })
    }

    /// The endpoint this client calls.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// One chat completion. An empty `request.model` is filled with the endpoint's model, and
    /// `stream` is sent as false (this answers whole). Looks in the cache first; stores
    /// successful responses in it. A response without a choice is [`ClientError::Malformed`].
    pub fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ClientError> {
        let mut request = request.clone();
        if request.model.is_empty() {
            request.model.clone_from(&self.endpoint.model);
        }
        request.stream = false;
        let result = self.cached_post(CHAT_ROUTE, &request, |response: &ChatResponse| {
            if response.choices.is_empty() {
                Err("the response has no choice".to_string())
            } else {
                Ok(())
            }
        });
        self.counted(result)
    }

    /// Many chat completions, at most [`Endpoint::concurrency`] in flight (on scoped threads),
    /// results in request order.
    pub fn chat_many(&self, requests: &[ChatRequest]) -> Vec<Result<ChatResponse, ClientError>> {
        let _span = tracing::debug_span!("chat_many", requests = requests.len()).entered();
        let workers = self.endpoint.concurrency.clamp(1, requests.len().max(1));
        let next = AtomicUsize::new(0);
        let mut answered: Vec<(usize, Result<ChatResponse, ClientError>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(request) = requests.get(i) else { break };
                            mine.push((i, self.chat(request)));
                        }
                        mine
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        answered.sort_by_key(|(i, _)| *i);
        answered.into_iter().map(|(_, result)| result).collect()
    }

    /// Embeddings of texts (one request, cached like [`Client::chat`]), one vector per text in
    /// the texts' order. No texts, no request.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ClientError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let request = EmbeddingRequest {
            model: self.endpoint.model.clone(),
            input: EmbeddingInput::Many(texts.to_vec()),
        };
        let result = self
            .cached_post(EMBEDDINGS_ROUTE, &request, |response: &EmbeddingResponse| {
                check_embedding_indices(response, texts.len())
            })
            .map(|mut response| {
                response.data.sort_by_key(|embedding| embedding.index);
                response
                    .data
                    .into_iter()
                    .map(|embedding| embedding.embedding)
                    .collect()
            });
        self.counted(result)
    }

    /// Embeddings of texts cached text by text, one vector per text in the texts' order: each
    /// text is looked up under the key of a request for it alone, and the texts not cached are
    /// sent together, [`EMBED_BATCH`] per request, each answer cached under its own text's key.
    /// So which texts a run happens to batch together never changes what a resumed or repeated
    /// run replays. No texts, no request.
    pub fn embed_each(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ClientError> {
        let one = |text: &String| EmbeddingRequest {
            model: self.endpoint.model.clone(),
            input: EmbeddingInput::Many(vec![text.clone()]),
        };
        let keys: Vec<Option<String>> = texts
            .iter()
            .map(|text| {
                let body = serde_json::to_value(one(text)).ok()?;
                self.cache
                    .as_ref()
                    .map(|_| self.cache_key(EMBEDDINGS_ROUTE, &body))
            })
            .collect();
        let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        if let Some(cache) = &self.cache {
            for (slot, key) in out.iter_mut().zip(&keys) {
                let check = |r: &EmbeddingResponse| check_embedding_indices(r, 1);
                if let Some(key) = key
                    && let Some(mut answer) = cached_answer(cache, key, check)
                {
                    Counters::add(&self.counters.cache_hits, 1);
                    *slot = answer.data.pop().map(|e| e.embedding);
                }
            }
        }
        let missing: Vec<usize> = (0..texts.len()).filter(|&i| out[i].is_none()).collect();
        for batch in missing.chunks(EMBED_BATCH) {
            let request = EmbeddingRequest {
                model: self.endpoint.model.clone(),
                input: EmbeddingInput::Many(batch.iter().map(|&i| texts[i].clone()).collect()),
            };
            let answer = self.counted(self.post_embeddings(&request, batch.len()))?;
            let model = answer.model.clone();
            for embedding in answer.data {
                let i = batch[embedding.index as usize];
                if let (Some(cache), Some(key)) = (&self.cache, &keys[i]) {
                    let single = EmbeddingResponse {
                        object: "list".to_string(),
                        data: vec![Embedding {
                            index: 0,
                            ..embedding.clone()
                        }],
                        model: model.clone(),
                        usage: None,
                    };
                    let value = serde_json::to_value(&single).expect("an embedding serialises");
                    put_cached(cache, key, &value)?;
                }
                out[i] = Some(embedding.embedding);
            }
        }
        Ok(out
            .into_iter()
            .map(|v| v.expect("every text answered from the cache or the endpoint"))
            .collect())
    }

    /// POSTs an embeddings request without the cache, checking one embedding per text.
    fn post_embeddings(
        &self,
        request: &EmbeddingRequest,
        texts: usize,
    ) -> Result<EmbeddingResponse, ClientError> {
        let url = self.endpoint.url(EMBEDDINGS_ROUTE);
        let body = serde_json::to_string(request).map_err(|error| ClientError::Malformed {
            url: url.clone(),
            reason: format!("the request cannot be written as JSON: {error}"),
        })?;
        let text = self.send(&url, Some(&body))?;
        let (answer, _) = parse::<EmbeddingResponse>(&url, &text)?;
        check_embedding_indices(&answer, texts).map_err(|reason| ClientError::Malformed { url, reason })?;
        self.counters.add_usage(answer.usage);
        Ok(answer)
    }

    /// The models the endpoint serves (never cached).
    pub fn models(&self) -> Result<ModelList, ClientError> {
        let url = self.endpoint.url(MODELS_ROUTE);
        let result = self
            .send(&url, None)
            .and_then(|body| parse::<ModelList>(&url, &body).map(|(list, _)| list));
        self.counted(result)
    }

    /// Counters since the client was made.
    pub fn stats(&self) -> ClientStats {
        self.counters.snapshot()
    }

    /// Counts a call's error, if it is one.
    fn counted<T>(&self, result: Result<T, ClientError>) -> Result<T, ClientError> {
        if result.is_err() {
            Counters::add(&self.counters.errors, 1);
        }
        result
    }

    /// POSTs a request to a route, or answers it from the cache: a cached entry is used if it
    /// parses and passes `check`; an answer from the network is used, counted and cached if it
    /// parses and passes `check`, and is [`ClientError::Malformed`] otherwise.
    fn cached_post<R: Serialize, A: Answer>(
        &self,
        route: &str,
        request: &R,
        check: impl Fn(&A) -> Result<(), String>,
    ) -> Result<A, ClientError> {
        let url = self.endpoint.url(route);
        let body = serde_json::to_value(request).map_err(|error| ClientError::Malformed {
            url: url.clone(),
            reason: format!("the request cannot be written as JSON: {error}"),
        })?;
        let cached = self
            .cache
            .as_ref()
            .map(|cache| (cache, self.cache_key(route, &body)));
        if let Some((cache, key)) = &cached
            && let Some(answer) = cached_answer(cache, key, &check)
        {
            Counters::add(&self.counters.cache_hits, 1);
            return Ok(answer);
        }

        let text = self.send(&url, Some(&body.to_string()))?;
        let (answer, raw) = parse::<A>(&url, &text)?;
        check(&answer).map_err(|reason| ClientError::Malformed {
            url: url.clone(),
            reason,
        })?;
        self.counters.add_usage(answer.usage());
        if let Some((cache, key)) = &cached {
            put_cached(cache, key, &raw)?;
        }
        Ok(answer)
    }

    /// The cache key of a request body to a route of this endpoint.
    fn cache_key(&self, route: &str, body: &Value) -> String {
        Cache::key(self.endpoint.base_url.trim_end_matches('/'), route, body)
    }

    /// Sends a request (a POST of `body`, or a GET without one) until it succeeds or may not be
    /// retried, and returns the body of its 2xx answer.
    fn send(&self, url: &str, body: Option<&str>) -> Result<Vec<u8>, ClientError> {
        let attempts = self.endpoint.max_retries.saturating_add(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            Counters::add(&self.counters.requests, 1);
            let (cause, retry_after) = match self.attempt(url, body) {
                Attempt::Answered { status, body, .. } if (200..300).contains(&status) => return Ok(body),
                Attempt::Answered {
                    status,
                    retry_after,
                    body,
                } => {
                    let message = error_message(&body);
                    if !is_retryable_status(status) || attempt >= attempts {
                        return Err(ClientError::Status {
                            url: url.to_string(),
                            status,
                            message,
                        });
                    }
                    (format!("status {status}: {message}"), retry_after)
                }
                Attempt::Transient(reason) if attempt < attempts => (reason, None),
                Attempt::Transient(reason) | Attempt::Fatal(reason) => {
                    return Err(ClientError::Unreachable {
                        url: url.to_string(),
                        attempts: attempt,
                        reason,
                    });
                }
            };
            let wait = retry_wait(self.endpoint.retry_base_ms, attempt - 1, retry_after);
            tracing::warn!(
                url,
                attempt,
                of = attempts,
                cause = %cause,
                wait_ms = wait.as_millis() as u64,
                "request failed, retrying"
            );
            std::thread::sleep(wait);
            Counters::add(&self.counters.retries, 1);
        }
    }

    /// One HTTP exchange, its body read whole.
    fn attempt(&self, url: &str, body: Option<&str>) -> Attempt {
        let sent = match body {
            Some(body) => self
                .authorized(self.agent.post(url))
                .header("Content-Type", "application/json")
                .send(body),
            None => self.authorized(self.agent.get(url)).call(),
        };
        let read = sent.and_then(|mut response| {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok())
                .and_then(parse_retry_after);
            let body = response
                .body_mut()
                .with_config()
                .limit(MAX_BODY_BYTES)
                .read_to_vec()?;
            Ok(Attempt::Answered {
                status,
                retry_after,
                body,
            })
        });
        read.unwrap_or_else(|error| {
            let transient = matches!(
                error,
                ureq::Error::Io(_)
                    | ureq::Error::Timeout(_)
                    | ureq::Error::ConnectionFailed
                    | ureq::Error::HostNotFound
                    | ureq::Error::Protocol(_)
            );
            if transient {
                Attempt::Transient(error.to_string())
            } else {
                Attempt::Fatal(error.to_string())
            }
        })
    }

    /// The request with the API key, if there is one.
    fn authorized<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.api_key {
            Some(key) => request.header("Authorization", format!("Bearer {key}")),
            None => request,
        }
    }
}

/// The cached answer of a key, if there is one that parses and passes `check`; an entry that
/// does not is a miss (with a warning), to be overwritten by the network's answer.
fn cached_answer<A: Answer>(cache: &Cache, key: &str, check: impl Fn(&A) -> Result<(), String>) -> Option<A> {
    let value = cache.get(key)?;
    let reason = match A::deserialize(&value) {
        Ok(answer) => match check(&answer) {
            Ok(()) => return Some(answer),
            Err(reason) => reason,
        },
        Err(error) => error.to_string(),
    };
    tracing::warn!(key, %reason, "unusable cache entry, treated as a miss");
    None
}

/// Stores an answer in the cache, an error naming the entry's file when it cannot.
fn put_cached(cache: &Cache, key: &str, value: &Value) -> Result<(), ClientError> {
    cache.put(key, value).map_err(|source| ClientError::Cache {
        path: cache
            .entry_path(key)
            .unwrap_or_else(|_| cache.dir().to_path_buf()),
        source,
    })
}

/// A 2xx body as an answer, and as the JSON value to cache.
fn parse<A: DeserializeOwned>(url: &str, body: &[u8]) -> Result<(A, Value), ClientError> {
    let malformed = |error: serde_json::Error| ClientError::Malformed {
        url: url.to_string(),
        reason: error.to_string(),
    };
    let raw: Value = serde_json::from_slice(body).map_err(malformed)?;
    let answer = A::deserialize(&raw).map_err(malformed)?;
    Ok((answer, raw))
}

/// Whether an embeddings response holds exactly one embedding per text, indices `0..texts`.
fn check_embedding_indices(response: &EmbeddingResponse, texts: usize) -> Result<(), String> {
    if response.data.len() != texts {
        return Err(format!("{} embeddings for {texts} texts", response.data.len()));
    }
    let mut seen = vec![false; texts];
    for embedding in &response.data {
        match seen.get_mut(embedding.index as usize) {
            Some(slot) if !*slot => *slot = true,
            _ => {
                return Err(format!(
                    "embedding index {} is out of range or repeated",
                    embedding.index
                ));
            }
        }
    }
    Ok(())
}

/// Whether an error status is worth another attempt: rate limits and server errors.
fn is_retryable_status(status: u16) -> bool {
    status == 429 || (500..600).contains(&status)
}

/// The wait before retry number `retry` (0 for the first): `Retry-After` if the answer had
/// one, else `base_ms` doubled per retry; at most [`MAX_RETRY_WAIT`] either way.
fn retry_wait(base_ms: u64, retry: u32, retry_after: Option<Duration>) -> Duration {
    let backoff = || {
        let factor = 1u64.checked_shl(retry).unwrap_or(u64::MAX);
        Duration::from_millis(base_ms.saturating_mul(factor))
    };
    retry_after.unwrap_or_else(backoff).min(MAX_RETRY_WAIT)
}

/// A `Retry-After` header's delay, when it is in seconds (the HTTP-date form is ignored).
fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

/// What an error answer says: the OpenAI error body's message, or a common variant's
/// (`{"error": "..."}`, `{"message": "..."}`, `{"detail": "..."}`), else the body's start.
fn error_message(body: &[u8]) -> String {
    if let Ok(error) = serde_json::from_slice::<ErrorBody>(body) {
        return error.error.message;
    }
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        let said = [
            &value["error"]["message"],
            &value["error"],
            &value["message"],
            &value["detail"],
        ]
        .into_iter()
        .find_map(Value::as_str);
        if let Some(message) = said {
            return message.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_string();
    }
    let mut quoted: String = text.chars().take(QUOTED_BODY_CHARS).collect();
    if quoted.len() < text.len() {
        quoted.push('…');
    }
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ChatMessage, Embedding, ModelCard};
    use serde_json::json;
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;

    /// A request as the fake server received it.
    #[derive(Clone, Debug)]
    struct Received {
        method: String,
        path: String,
        authorization: Option<String>,
        body: String,
    }

    impl Received {
        fn json(&self) -> Value {
            serde_json::from_str(&self.body).unwrap()
        }
    }

    /// A scripted answer.
    struct Reply {
        status: u16,
        body: String,
        headers: Vec<(&'static str, String)>,
    }

    impl Reply {
        fn json(status: u16, body: Value) -> Self {
            Self::text(status, &body.to_string())
        }

        fn text(status: u16, body: &str) -> Self {
            Self {
                status,
                body: body.to_string(),
                headers: Vec::new(),
            }
        }

        fn with_header(mut self, name: &'static str, value: &str) -> Self {
            self.headers.push((name, value.to_string()));
            self
        }
    }

    /// An OpenAI-compatible endpoint on 127.0.0.1 whose answers a closure scripts: it gets the
    /// request's number (from 0) and the request. Each request is answered on its own thread.
    struct FakeServer {
        base_url: String,
        received: Arc<Mutex<Vec<Received>>>,
        server: Arc<tiny_http::Server>,
        thread: Option<JoinHandle<()>>,
    }

    impl FakeServer {
        fn start(script: impl Fn(usize, &Received) -> Reply + Send + Sync + 'static) -> Self {
            let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
            let port = server.server_addr().to_ip().unwrap().port();
            let received = Arc::new(Mutex::new(Vec::new()));
            let script = Arc::new(script);
            let thread = {
                let (server, received) = (Arc::clone(&server), Arc::clone(&received));
                std::thread::spawn(move || {
                    while let Ok(request) = server.recv() {
                        let (received, script) = (Arc::clone(&received), Arc::clone(&script));
                        std::thread::spawn(move || answer(request, &received, &*script));
                    }
                })
            };
            Self {
                base_url: format!("http://127.0.0.1:{port}/v1"),
                received,
                server,
                thread: Some(thread),
            }
        }

        fn endpoint(&self) -> Endpoint {
            Endpoint {
                retry_base_ms: 1,
                ..Endpoint::new(&self.base_url, "test-model")
            }
        }

        fn hits(&self) -> usize {
            self.received.lock().unwrap().len()
        }

        fn received(&self) -> Vec<Received> {
            self.received.lock().unwrap().clone()
        }
    }

    fn answer(
        mut request: tiny_http::Request,
        received: &Mutex<Vec<Received>>,
        script: &dyn Fn(usize, &Received) -> Reply,
    ) {
        let mut body = String::new();
        request.as_reader().read_to_string(&mut body).unwrap();
        let authorization = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .map(|h| h.value.to_string());
        let seen = Received {
            method: request.method().to_string(),
            path: request.url().to_string(),
            authorization,
            body,
        };
        let n = {
            let mut received = received.lock().unwrap();
            received.push(seen.clone());
            received.len() - 1
        };
        let reply = script(n, &seen);
        let mut response = tiny_http::Response::from_string(reply.body)
            .with_status_code(reply.status)
            .with_header(tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap());
        for (name, value) in reply.headers {
            response.add_header(tiny_http::Header::from_bytes(name, value.as_bytes()).unwrap());
        }
        // The client may have given up (timeouts); that is not the server's failure.
        let _ = request.respond(response);
    }

    impl Drop for FakeServer {
        fn drop(&mut self) {
            self.server.unblock();
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    fn chat_body(text: &str, prompt_tokens: u64, completion_tokens: u64) -> Value {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "test-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}
        })
    }

    fn ok_chat(text: &str) -> Reply {
        Reply::json(200, chat_body(text, 3, 1))
    }

    fn question(text: &str) -> ChatRequest {
        ChatRequest::new("", vec![ChatMessage::new("user", text)])
    }

    fn plain_client(endpoint: Endpoint) -> Client {
        Client::new(endpoint, None).unwrap()
    }

    fn cached_client(endpoint: Endpoint, dir: &std::path::Path) -> Client {
        Client::new(endpoint, Some(Cache::open(dir).unwrap())).unwrap()
    }

    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    fn cache_files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|shard| std::fs::read_dir(shard.unwrap().path()).unwrap().count())
            .sum()
    }

    #[test]
    fn client_is_send_and_sync() {
        fn assert_shareable<T: Send + Sync>() {}
        assert_shareable::<Client>();
    }

    #[test]
    fn endpoint_defaults_fill_a_minimal_config_and_no_key_variable_is_written() {
        let endpoint: Endpoint =
            serde_json::from_str(r#"{"base_url": "http://h/v1", "model": "m"}"#).unwrap();
        assert_eq!(endpoint, Endpoint::new("http://h/v1", "m"));
        assert_eq!(endpoint.timeout_s, 120.0);
        assert_eq!(
            (endpoint.max_retries, endpoint.retry_base_ms, endpoint.concurrency),
            (4, 500, 8)
        );
        let written = serde_json::to_value(&endpoint).unwrap();
        assert!(written.get("api_key_env").is_none());
        assert_eq!(serde_json::from_value::<Endpoint>(written).unwrap(), endpoint);
    }

    #[test]
    fn endpoints_that_cannot_work_are_refused() {
        let good = Endpoint::new("https://api.example.com/v1", "m");
        assert!(good.validate().is_ok());
        let bad = [
            Endpoint::new("api.example.com/v1", "m"),
            Endpoint {
                timeout_s: 0.0,
                ..good.clone()
            },
            Endpoint {
                timeout_s: f64::NAN,
                ..good.clone()
            },
            Endpoint {
                timeout_s: -1.0,
                ..good.clone()
            },
            Endpoint {
                concurrency: 0,
                ..good.clone()
            },
            Endpoint {
                api_key_env: Some(String::new()),
                ..good.clone()
            },
        ];
        for endpoint in bad {
            let error = Client::new(endpoint.clone(), None).unwrap_err();
            assert_eq!(error.kind(), "invalid_endpoint", "{endpoint:?}");
        }
    }

    #[test]
    fn a_named_but_unset_key_variable_is_missing_key() {
        let endpoint = Endpoint {
            api_key_env: Some("MEMR2_OPENAI_TEST_KEY_THAT_IS_NEVER_SET_7F3A".to_string()),
            ..Endpoint::new("http://127.0.0.1:1/v1", "m")
        };
        let error = Client::new(endpoint, None).unwrap_err();
        assert!(
            matches!(&error, ClientError::MissingKey { var } if var == "MEMR2_OPENAI_TEST_KEY_THAT_IS_NEVER_SET_7F3A")
        );
        assert_eq!(error.kind(), "missing_key");
        assert!(!error.to_string().ends_with('.'));
    }

    #[test]
    fn chat_round_trip_sends_the_request_as_written_with_the_model_and_a_bearer_key() {
        let server = FakeServer::start(|_, _| ok_chat("Paris"));
        let var = "MEMR2_OPENAI_TEST_ROUND_TRIP_KEY";
        let endpoint = Endpoint {
            api_key_env: Some(var.to_string()),
            ..server.endpoint()
        };
        let client = Client::with_key_lookup(endpoint, None, |name| {
            (name == var).then(|| "sk-test-123".to_string())
        })
        .unwrap();
        let request = ChatRequest {
            max_tokens: Some(5),
            temperature: Some(0.0),
            stream: true,
            ..question("Capital of France?")
        };
        let response = client.chat(&request).unwrap();
        assert_eq!(response.text(), Some("Paris"));

        let received = server.received();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].method, "POST");
        assert_eq!(received[0].path, "/v1/chat/completions");
        assert_eq!(received[0].authorization.as_deref(), Some("Bearer sk-test-123"));
        assert_eq!(
            received[0].json(),
            json!({"model": "test-model", "messages": [{"role": "user", "content": "Capital of France?"}],
                   "max_tokens": 5, "temperature": 0.0})
        );
        let stats = client.stats();
        assert_eq!(
            (stats.requests, stats.retries, stats.errors, stats.cache_hits),
            (1, 0, 0, 0)
        );
        // Without a key variable, no Authorization header is sent; a request's own model stays.
        let keyless = plain_client(server.endpoint());
        let request = ChatRequest::new("other-model", vec![ChatMessage::new("user", "hi")]);
        keyless.chat(&request).unwrap();
        let received = server.received();
        assert_eq!(received[1].authorization, None);
        assert_eq!(received[1].json()["model"], "other-model");
    }

    #[test]
    fn rate_limit_then_unavailable_then_ok_succeeds_with_two_retries() {
        let server = FakeServer::start(|n, _| match n {
            0 => Reply::json(
                429,
                json!({"error": {"message": "slow down", "type": "rate_limit"}}),
            )
            .with_header("Retry-After", "0"),
            1 => Reply::text(503, "overloaded"),
            _ => ok_chat("fine"),
        });
        let client = plain_client(server.endpoint());
        let response = client.chat(&question("q")).unwrap();
        assert_eq!(response.text(), Some("fine"));
        assert_eq!(server.hits(), 3);
        let stats = client.stats();
        assert_eq!((stats.requests, stats.retries, stats.errors), (3, 2, 0));
    }

    #[test]
    fn a_server_error_forever_is_a_status_error_after_every_attempt() {
        let server = FakeServer::start(|_, _| {
            Reply::json(
                500,
                json!({"error": {"message": "the GPU fell over", "type": "server_error"}}),
            )
        });
        let endpoint = Endpoint {
            max_retries: 2,
            ..server.endpoint()
        };
        let client = plain_client(endpoint);
        let error = client.chat(&question("q")).unwrap_err();
        match &error {
            ClientError::Status { url, status, message } => {
                assert_eq!(url, &format!("{}/chat/completions", server.base_url));
                assert_eq!(*status, 500);
                assert_eq!(message, "the GPU fell over");
            }
            other => panic!("expected a status error, got {other:?}"),
        }
        assert_eq!(error.kind(), "status");
        assert_eq!(server.hits(), 3);
        let stats = client.stats();
        assert_eq!((stats.requests, stats.retries, stats.errors), (3, 2, 1));
    }

    #[test]
    fn a_bad_request_is_not_retried() {
        let server = FakeServer::start(|_, _| {
            Reply::json(
                400,
                json!({"error": {"message": "max_tokens is too large", "type": "invalid_request_error", "param": "max_tokens"}}),
            )
        });
        let client = plain_client(server.endpoint());
        let error = client.chat(&question("q")).unwrap_err();
        assert!(
            matches!(&error, ClientError::Status { status: 400, message, .. } if message == "max_tokens is too large")
        );
        assert_eq!(server.hits(), 1);
        let stats = client.stats();
        assert_eq!((stats.requests, stats.retries, stats.errors), (1, 0, 1));
    }

    #[test]
    fn garbage_or_choiceless_ok_bodies_are_malformed_and_not_cached() {
        let server = FakeServer::start(|n, _| match n {
            0 => Reply::text(200, "<html>gateway</html>"),
            1 => Reply::json(200, json!({"id": "x", "object": "chat.completion"})),
            _ => Reply::json(
                200,
                json!({"id": "x", "object": "chat.completion", "model": "m", "choices": []}),
            ),
        });
        let dir = tempfile::tempdir().unwrap();
        let client = cached_client(server.endpoint(), dir.path());
        for expected in ["expected value", "missing field", "no choice"] {
            let error = client.chat(&question("q")).unwrap_err();
            assert_eq!(error.kind(), "malformed");
            assert!(error.to_string().contains(expected), "{error}");
        }
        assert_eq!(server.hits(), 3);
        assert_eq!(cache_files(dir.path()), 0);
        assert_eq!(client.stats().errors, 3);
    }

    #[test]
    fn a_closed_port_is_unreachable_after_every_attempt() {
        let endpoint = Endpoint {
            max_retries: 2,
            retry_base_ms: 1,
            ..Endpoint::new(format!("http://127.0.0.1:{}/v1", closed_port()), "m")
        };
        let client = plain_client(endpoint);
        let error = client.chat(&question("q")).unwrap_err();
        assert!(
            matches!(&error, ClientError::Unreachable { attempts: 3, .. }),
            "{error:?}"
        );
        assert_eq!(error.kind(), "unreachable");
        let stats = client.stats();
        assert_eq!((stats.requests, stats.retries, stats.errors), (3, 2, 1));
    }

    #[test]
    fn a_slow_server_times_out_as_unreachable() {
        let server = FakeServer::start(|_, _| {
            std::thread::sleep(Duration::from_millis(1500));
            ok_chat("too late")
        });
        let endpoint = Endpoint {
            timeout_s: 0.2,
            max_retries: 1,
            ..server.endpoint()
        };
        let client = plain_client(endpoint);
        let error = client.chat(&question("q")).unwrap_err();
        match &error {
            ClientError::Unreachable { attempts, reason, .. } => {
                assert_eq!(*attempts, 2);
                assert!(reason.contains("timeout"), "{reason}");
            }
            other => panic!("expected unreachable, got {other:?}"),
        }
        assert_eq!(client.stats().retries, 1);
    }

    #[test]
    fn chat_many_keeps_order_and_bounds_requests_in_flight() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let server = {
            let (in_flight, most) = (Arc::clone(&in_flight), Arc::clone(&most));
            FakeServer::start(move |_, request| {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(30));
                let question = request.json()["messages"][0]["content"]
                    .as_str()
                    .unwrap()
                    .to_string();
                in_flight.fetch_sub(1, Ordering::SeqCst);
                ok_chat(&format!("answer to {question}"))
            })
        };
        let endpoint = Endpoint {
            concurrency: 3,
            ..server.endpoint()
        };
        let client = plain_client(endpoint);
        let requests: Vec<ChatRequest> = (0..16).map(|i| question(&format!("q{i}"))).collect();
        let responses = client.chat_many(&requests);
        let texts: Vec<String> = responses
            .into_iter()
            .map(|r| r.unwrap().text().unwrap().to_string())
            .collect();
        let expected: Vec<String> = (0..16).map(|i| format!("answer to q{i}")).collect();
        assert_eq!(texts, expected);
        let most = most.load(Ordering::SeqCst);
        assert!(most <= 3, "{most} requests in flight");
        assert!(most >= 2, "requests were not concurrent");
        assert!(client.chat_many(&[]).is_empty());
    }

    #[test]
    fn usage_tokens_are_summed_into_stats() {
        let server = FakeServer::start(|n, _| Reply::json(200, chat_body("a", 10 + n as u64, 2)));
        let client = plain_client(server.endpoint());
        let results = client.chat_many(&[question("a"), question("b"), question("c")]);
        assert!(results.iter().all(Result::is_ok));
        let stats = client.stats();
        assert_eq!(stats.prompt_tokens, 10 + 11 + 12);
        assert_eq!(stats.completion_tokens, 6);
    }

    #[test]
    fn a_repeated_request_is_answered_from_the_cache() {
        let server = FakeServer::start(|_, _| Reply::json(200, chat_body("cached", 7, 3)));
        let dir = tempfile::tempdir().unwrap();
        let client = cached_client(server.endpoint(), dir.path());
        let first = client.chat(&question("q")).unwrap();
        let second = client.chat(&question("q")).unwrap();
        assert_eq!(first, second);
        assert_eq!(server.hits(), 1);
        let stats = client.stats();
        assert_eq!((stats.requests, stats.cache_hits), (1, 1));
        // Tokens count what was sent over the network, not replays.
        assert_eq!((stats.prompt_tokens, stats.completion_tokens), (7, 3));
        // An explicit model equal to the endpoint's is the same request.
        client
            .chat(&ChatRequest::new("test-model", question("q").messages))
            .unwrap();
        assert_eq!(server.hits(), 1);
    }

    #[test]
    fn a_request_differing_in_one_field_misses_the_cache() {
        let server = FakeServer::start(|_, _| ok_chat("x"));
        let dir = tempfile::tempdir().unwrap();
        let client = cached_client(server.endpoint(), dir.path());
        client.chat(&question("q")).unwrap();
        let warmer = ChatRequest {
            temperature: Some(0.7),
            ..question("q")
        };
        client.chat(&warmer).unwrap();
        assert_eq!(server.hits(), 2);
        assert_eq!(client.stats().cache_hits, 0);
        assert_eq!(cache_files(dir.path()), 2);
    }

    #[test]
    fn a_corrupt_cache_entry_is_a_miss_and_is_rewritten() {
        let server = FakeServer::start(|_, _| ok_chat("fresh"));
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let client = Client::new(server.endpoint(), Some(cache.clone())).unwrap();
        client.chat(&question("q")).unwrap();

        let body = serde_json::to_value(ChatRequest {
            model: "test-model".to_string(),
            ..question("q")
        })
        .unwrap();
        let path = cache
            .entry_path(&Cache::key(&server.base_url, "/chat/completions", &body))
            .unwrap();
        assert!(path.exists());
        for corrupt in [&b"{\"id\": \"chatcmpl"[..], br#"{"id": "no choices here"}"#] {
            std::fs::write(&path, corrupt).unwrap();
            assert_eq!(client.chat(&question("q")).unwrap().text(), Some("fresh"));
            let rewritten: ChatResponse = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            assert_eq!(rewritten.text(), Some("fresh"));
        }
        assert_eq!(server.hits(), 3);
        assert_eq!(client.stats().cache_hits, 0);
        client.chat(&question("q")).unwrap();
        assert_eq!((server.hits(), client.stats().cache_hits), (3, 1));
    }

    #[test]
    fn a_fresh_client_replays_from_the_cache_without_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let server = FakeServer::start(|_, _| ok_chat("remembered"));
        let endpoint = Endpoint {
            max_retries: 0,
            timeout_s: 2.0,
            ..server.endpoint()
        };
        cached_client(endpoint.clone(), dir.path())
            .chat(&question("q"))
            .unwrap();
        drop(server);

        let replay = cached_client(endpoint.clone(), dir.path());
        assert_eq!(replay.chat(&question("q")).unwrap().text(), Some("remembered"));
        let stats = replay.stats();
        assert_eq!((stats.requests, stats.cache_hits, stats.errors), (0, 1, 0));
        // A request never made before does go out, and finds nothing there.
        let error = replay.chat(&question("new")).unwrap_err();
        assert_eq!(error.kind(), "unreachable");
    }

    #[test]
    fn embed_returns_vectors_in_the_texts_order_and_is_cached() {
        let server = FakeServer::start(|_, request| {
            let texts = request.json()["input"].as_array().unwrap().len();
            // Answer in reverse order: the indices say which text each vector is for.
            let data: Vec<Embedding> = (0..texts)
                .rev()
                .map(|i| Embedding {
                    object: "embedding".to_string(),
                    index: i as u32,
                    embedding: vec![i as f32, 0.5],
                })
                .collect();
            Reply::json(
                200,
                json!({"object": "list", "data": data, "model": "test-model",
                       "usage": {"prompt_tokens": 4, "completion_tokens": 0, "total_tokens": 4}}),
            )
        });
        let dir = tempfile::tempdir().unwrap();
        let client = cached_client(server.endpoint(), dir.path());
        let texts: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let vectors = client.embed(&texts).unwrap();
        assert_eq!(vectors, vec![vec![0.0, 0.5], vec![1.0, 0.5], vec![2.0, 0.5]]);
        let received = server.received();
        assert_eq!(received[0].path, "/v1/embeddings");
        assert_eq!(
            received[0].json(),
            json!({"model": "test-model", "input": ["a", "b", "c"]})
        );

        assert_eq!(client.embed(&texts).unwrap(), vectors);
        assert_eq!(server.hits(), 1);
        assert!(client.embed(&[]).unwrap().is_empty());
        let stats = client.stats();
        assert_eq!((stats.cache_hits, stats.prompt_tokens), (1, 4));
    }

    #[test]
    fn embed_each_caches_text_by_text_whatever_the_batches() {
        // Each text's vector is its length, so a vector shows which text it was made for.
        let server = FakeServer::start(|_, request| {
            let input = request.json()["input"].as_array().unwrap().clone();
            let data: Vec<Embedding> = input
                .iter()
                .enumerate()
                .map(|(i, text)| Embedding {
                    object: "embedding".to_string(),
                    index: i as u32,
                    embedding: vec![text.as_str().unwrap().len() as f32],
                })
                .collect();
            Reply::json(
                200,
                json!({"object": "list", "data": data, "model": "test-model"}),
            )
        });
        let dir = tempfile::tempdir().unwrap();
        let texts = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<String>>();
        let client = cached_client(server.endpoint(), dir.path());
        assert_eq!(
            client.embed_each(&texts(&["a", "bb"])).unwrap(),
            [vec![1.0], vec![2.0]]
        );
        assert_eq!(server.hits(), 1);

        // A later batch mixing cached and new texts sends only the new ones, in one request.
        let mixed = texts(&["ccc", "a", "dddd", "bb"]);
        let vectors = client.embed_each(&mixed).unwrap();
        assert_eq!(vectors, [vec![3.0], vec![1.0], vec![4.0], vec![2.0]]);
        assert_eq!(server.hits(), 2);
        assert_eq!(server.received()[1].json()["input"], json!(["ccc", "dddd"]));

        // A new client on the same cache, batching differently, replays without calling out.
        drop(server);
        let replay = cached_client(client.endpoint().clone(), dir.path());
        assert_eq!(
            replay.embed_each(&texts(&["dddd", "a"])).unwrap(),
            [vec![4.0], vec![1.0]]
        );
        let stats = replay.stats();
        assert_eq!((stats.requests, stats.cache_hits), (0, 2));
        assert!(replay.embed_each(&[]).unwrap().is_empty());
        assert_eq!(
            replay.embed_each(&texts(&["new"])).unwrap_err().kind(),
            "unreachable"
        );
    }

    #[test]
    fn embeddings_of_the_wrong_number_or_indices_are_malformed() {
        let embedding = |index| Embedding {
            object: "embedding".to_string(),
            index,
            embedding: vec![1.0],
        };
        let answer = |data: Vec<Embedding>| EmbeddingResponse {
            object: "list".to_string(),
            data,
            model: "m".to_string(),
            usage: None,
        };
        assert!(check_embedding_indices(&answer(vec![embedding(1), embedding(0)]), 2).is_ok());
        assert!(check_embedding_indices(&answer(vec![embedding(0)]), 2).is_err());
        assert!(check_embedding_indices(&answer(vec![embedding(0), embedding(0)]), 2).is_err());
        assert!(check_embedding_indices(&answer(vec![embedding(0), embedding(2)]), 2).is_err());

        let server = FakeServer::start(|_, _| {
            Reply::json(
                200,
                json!({"object": "list", "model": "m", "data": [{"object": "embedding", "index": 0, "embedding": [1.0]}]}),
            )
        });
        let error = plain_client(server.endpoint())
            .embed(&["a".to_string(), "b".to_string()])
            .unwrap_err();
        assert!(
            matches!(&error, ClientError::Malformed { reason, .. } if reason == "1 embeddings for 2 texts"),
            "{error}"
        );
    }

    #[test]
    fn models_are_listed_and_never_cached() {
        let server = FakeServer::start(|_, _| {
            let list = ModelList {
                object: "list".to_string(),
                data: vec![ModelCard {
                    id: "test-model".to_string(),
                    object: "model".to_string(),
                    created: 0,
                    owned_by: "memr2".to_string(),
                }],
            };
            Reply::json(200, serde_json::to_value(list).unwrap())
        });
        let dir = tempfile::tempdir().unwrap();
        let client = cached_client(server.endpoint(), dir.path());
        for _ in 0..2 {
            assert_eq!(client.models().unwrap().data[0].id, "test-model");
        }
        let received = server.received();
        assert_eq!(
            (received[1].method.as_str(), received[1].path.as_str()),
            ("GET", "/v1/models")
        );
        assert_eq!((server.hits(), client.stats().cache_hits), (2, 0));
        assert_eq!(cache_files(dir.path()), 0);
    }

    #[test]
    fn retry_waits_double_from_the_base_and_honour_retry_after_up_to_the_cap() {
        assert_eq!(retry_wait(500, 0, None), Duration::from_millis(500));
        assert_eq!(retry_wait(500, 1, None), Duration::from_millis(1000));
        assert_eq!(retry_wait(500, 3, None), Duration::from_millis(4000));
        assert_eq!(retry_wait(500, 10, None), MAX_RETRY_WAIT);
        assert_eq!(retry_wait(500, 200, None), MAX_RETRY_WAIT);
        assert_eq!(retry_wait(u64::MAX, 3, None), MAX_RETRY_WAIT);
        assert_eq!(
            retry_wait(500, 3, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            retry_wait(500, 0, Some(Duration::from_secs(3600))),
            MAX_RETRY_WAIT
        );

        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn error_messages_prefer_what_the_body_says_then_quote_its_start() {
        let openai = br#"{"error": {"message": "bad key", "type": "authentication_error"}}"#;
        assert_eq!(error_message(openai), "bad key");
        assert_eq!(
            error_message(br#"{"error": "model not found"}"#),
            "model not found"
        );
        assert_eq!(
            error_message(br#"{"object": "error", "message": "too long", "code": 400}"#),
            "too long"
        );
        assert_eq!(error_message(br#"{"detail": "Not Found"}"#), "Not Found");
        assert_eq!(error_message(b"  Bad Gateway\n"), "Bad Gateway");
        assert_eq!(error_message(b""), "(empty body)");
        let long = "é".repeat(500);
        let quoted = error_message(long.as_bytes());
        assert_eq!(quoted.chars().count(), QUOTED_BODY_CHARS + 1);
        assert!(quoted.ends_with('…'));
    }
}
