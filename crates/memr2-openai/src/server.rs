//! An OpenAI-compatible HTTP server for any [`ChatModel`], batching concurrent chats into
//! shared generation calls.
//!
//! Routes: `GET /health` (no key needed), `GET /v1/models`, `GET /v1/models/{name}`,
//! `POST /v1/chat/completions` (plain or `"stream": true`) and `POST /v1/embeddings`. Errors
//! are OpenAI-shaped [`ErrorBody`] JSON with a 4xx or 5xx status.
//!
//! Each connection has a thread that reads its requests (bodies never past
//! [`ServerConfig::max_body_bytes`]) and runs the handler, at most [`ServerConfig::threads`]
//! handlers at once. A chat handler queues its chat for one batching thread. That thread
//! takes the first queued chat, waits up to [`ServerConfig::max_wait_ms`] for company (up to
//! [`ServerConfig::max_batch`] chats), calls [`ChatModel::complete`] once for the whole batch
//! and hands every handler its answer, so throughput grows with the number of concurrent
//! clients. Embeddings are computed by the handler, one request per call.
//!
//! A streamed answer is cut from the finished completion: the model completes whole batches,
//! so the server waits for the whole text and then sends it as server-sent events, one word
//! per chunk. Clients that read streams work unchanged, but the first word arrives no sooner
//! than the whole answer would have.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use memr2_openai::server::{ChatModel, Server, ServerConfig};
//! # fn serve(model: Arc<dyn ChatModel>) -> Result<(), memr2_openai::server::ServerError> {
//! let server = Server::start(model, ServerConfig::default())?;
//! println!("serving on http://{}", server.addr());
//! server.run_until_signal()
//! # }
//! ```

mod http;

use std::net::{SocketAddr, TcpListener};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::wire::{
    ChatChoice, ChatChunk, ChatDelta, ChatMessage, ChatRequest, ChatResponse, ChunkChoice, Embedding,
    EmbeddingRequest, EmbeddingResponse, ErrorBody, ModelCard, ModelList, Usage,
};

/// A model the server can serve. Implemented by the trainer for its policy (a burn model),
/// and by tests with scripted stand-ins.
pub trait ChatModel: Send + Sync {
    /// The name `/v1/models` lists and requests may put in `model`.
    fn name(&self) -> &str;

    /// Completes a batch of chats in one call (the requests may differ in `max_tokens`,
    /// `temperature`, `top_p` and `seed`); one result per request, in order. `Err(message)`
    /// for a request the model cannot complete.
    fn complete(&self, batch: &[ChatRequest]) -> Vec<Result<Completion, String>>;

    /// One vector per text; `Err` when the model offers no embeddings.
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String>;
}

/// One chat's completion, as a [`ChatModel`] returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The assistant's answer.
    pub text: String,
    /// Tokens of the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// `stop` (the model ended its turn) or `length` (it reached `max_tokens`).
    pub finish_reason: String,
}

/// How the server listens, batches and what it accepts.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen, e.g. `127.0.0.1:8080`; port 0 picks a free port.
    pub addr: String,
    /// Most chats per [`ChatModel::complete`] call.
    pub max_batch: usize,
    /// How long the first queued chat waits for company before its batch starts, in
    /// milliseconds.
    pub max_wait_ms: u64,
    /// When set, every route but `/health` needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// The largest request body accepted; a larger one is a 413.
    pub max_body_bytes: usize,
    /// The largest `max_tokens` a chat may ask for; a larger one is a 400.
    pub max_tokens_limit: u32,
    /// Most requests handled at once (each connection has a thread of its own that reads
    /// requests; this many of them may run a handler at the same time).
    pub threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".to_string(),
            max_batch: 16,
            max_wait_ms: 10,
            api_key: None,
            max_body_bytes: 1 << 20,
            max_tokens_limit: 1024,
            threads: 8,
        }
    }
}

impl ServerConfig {
    /// Rejects a config the server cannot run with: no threads, empty batches, a zero limit or
    /// an empty key.
    pub fn validate(&self) -> Result<(), ServerError> {
        let invalid = |message: &str| Err(ServerError::InvalidConfig(message.to_string()));
        if self.threads == 0 {
            return invalid("threads must be at least 1");
        }
        if self.max_batch == 0 {
            return invalid("max_batch must be at least 1");
        }
        if self.max_body_bytes == 0 {
            return invalid("max_body_bytes must be at least 1");
        }
        if self.max_tokens_limit == 0 {
            return invalid("max_tokens_limit must be at least 1");
        }
        if self.api_key.as_deref().is_some_and(str::is_empty) {
            return invalid("api_key must not be empty (leave it unset to serve without one)");
        }
        Ok(())
    }
}

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address could not be bound.
    #[error("could not listen on {addr}: {reason}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why binding failed.
        reason: String,
    },
    /// The SIGTERM and SIGINT handlers could not be installed.
    #[error("could not listen for SIGTERM and SIGINT")]
    Signal(#[source] std::io::Error),
    /// The accept thread or the batching thread could not be started.
    #[error("could not start a server thread")]
    Spawn(#[source] std::io::Error),
    /// The config was rejected by [`ServerConfig::validate`].
    #[error("invalid server config: {0}")]
    InvalidConfig(String),
}

/// A running server: an accept thread, a thread per connection and one batching thread
/// around a [`ChatModel`].
///
/// Dropping it shuts it down like [`Server::shutdown`].
pub struct Server {
    addr: SocketAddr,
    listener: http::Listener,
    batchers: Option<Vec<JoinHandle<()>>>,
}

impl Server {
    /// Binds and starts serving `model` on connection threads plus one batching thread.
    pub fn start(model: Arc<dyn ChatModel>, config: ServerConfig) -> Result<Self, ServerError> {
        Self::start_models(vec![model], config)
    }

    /// Serves several models side by side, each under its name with a batching thread of its
    /// own; a request's `model` picks one.
    pub fn start_models(models: Vec<Arc<dyn ChatModel>>, config: ServerConfig) -> Result<Self, ServerError> {
        config.validate()?;
        if models.is_empty() {
            return Err(ServerError::InvalidConfig("no model to serve".into()));
        }
        for (i, model) in models.iter().enumerate() {
            if models[..i].iter().any(|m| m.name() == model.name()) {
                return Err(ServerError::InvalidConfig(format!(
                    "two models are named `{}`",
                    model.name()
                )));
            }
        }
        let bind_error = |e: std::io::Error| ServerError::Bind {
            addr: config.addr.clone(),
            reason: e.to_string(),
        };
        let socket = TcpListener::bind(config.addr.as_str()).map_err(bind_error)?;
        let addr = socket.local_addr().map_err(bind_error)?;

        let mut batchers = Vec::new();
        let mut served = Vec::new();
        for model in models {
            let (jobs, queue) = mpsc::channel();
            let batching = Batching {
                max_batch: config.max_batch,
                max_wait: Duration::from_millis(config.max_wait_ms),
            };
            let batch_model = Arc::clone(&model);
            let batcher = std::thread::Builder::new()
                .name("memr2-openai-batch".to_string())
                .spawn(move || batching.run(&*batch_model, &queue))
                .map_err(ServerError::Spawn)?;
            batchers.push(batcher);
            served.push((model, jobs));
        }

        let limits = http::Limits {
            max_body_bytes: config.max_body_bytes,
            max_handlers: config.threads,
        };
        let names: Vec<String> = served.iter().map(|(m, _)| m.name().to_string()).collect();
        let threads = config.threads;
        let service = Arc::new(Service::new(served, config));
        // On failure the service, and with it the queue's last sender, is gone: the batching
        // thread ends.
        let listener = match http::Listener::start(socket, service, limits) {
            Ok(listener) => listener,
            Err(e) => {
                for batcher in batchers {
                    let _ = batcher.join();
                }
                return Err(ServerError::Spawn(e));
            }
        };
        tracing::info!(%addr, models = ?names, threads, "serving");
        Ok(Self {
            addr,
            listener,
            batchers: Some(batchers),
        })
    }

    /// The bound address (the real port when the config asked for 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in flight finish, and waits for every thread to end.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Blocks until SIGTERM or SIGINT (signal-hook), then shuts down cleanly.
    pub fn run_until_signal(self) -> Result<(), ServerError> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals =
            signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(ServerError::Signal)?;
        if let Some(signal) = signals.forever().next() {
            tracing::info!(signal, "shutting down on a signal");
        }
        self.shutdown();
        Ok(())
    }

    /// Stops the listener (which waits for the connections), then joins the batching thread,
    /// which ends once the last handle on its queue, held by the routes, is gone.
    fn stop(&mut self) {
        let Some(batchers) = self.batchers.take() else {
            return;
        };
        if !self.listener.stop() {
            // The accept thread still holds the routes, so the batching thread would wait
            // forever; both are left behind, idle.
            return;
        }
        for batcher in batchers {
            if batcher.join().is_err() {
                tracing::error!("a batching thread panicked");
            }
        }
        tracing::info!(addr = %self.addr, "stopped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A chat waiting for its batch, and where its answer goes.
struct Job {
    request: ChatRequest,
    reply: mpsc::Sender<Result<Completion, String>>,
}

/// How the batching thread groups queued chats.
struct Batching {
    max_batch: usize,
    max_wait: Duration,
}

impl Batching {
    /// Completes batches until every queue handle is gone.
    fn run(&self, model: &dyn ChatModel, queue: &mpsc::Receiver<Job>) {
        while let Ok(first) = queue.recv() {
            let batch = self.gather(first, queue);
            answer(model, batch);
        }
    }

    /// The first chat and whatever else arrives within `max_wait` of it, up to `max_batch`.
    fn gather(&self, first: Job, queue: &mpsc::Receiver<Job>) -> Vec<Job> {
        let deadline = Instant::now() + self.max_wait;
        let mut batch = vec![first];
        while batch.len() < self.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match queue.recv_timeout(left) {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        batch
    }
}

/// Completes one batch in one model call and replies to every chat in it.
fn answer(model: &dyn ChatModel, batch: Vec<Job>) {
    let (requests, replies): (Vec<ChatRequest>, Vec<_>) =
        batch.into_iter().map(|job| (job.request, job.reply)).unzip();
    let _span = tracing::debug_span!("complete", chats = requests.len()).entered();
    let started = Instant::now();
    let mut results = match catch_unwind(AssertUnwindSafe(|| model.complete(&requests))) {
        Ok(results) => results,
        Err(_) => {
            tracing::error!("the model panicked while completing a batch");
            Vec::new()
        }
    };
    if results.len() != requests.len() {
        tracing::error!(
            chats = requests.len(),
            results = results.len(),
            "the model returned a result count unlike its batch"
        );
        results.resize_with(requests.len(), || {
            Err("the model returned no result for this chat".to_string())
        });
    }
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "batch completed");
    for (reply, result) in replies.into_iter().zip(results) {
        // A handler that stopped waiting has nobody left to tell.
        let _ = reply.send(result);
    }
}

/// The routes, and what they share: the model, the limits, the batching queue and the id
/// counter.
struct Service {
    /// Each model with its batching queue.
    models: Vec<(Arc<dyn ChatModel>, mpsc::Sender<Job>)>,
    config: ServerConfig,
    next_id: AtomicU64,
    /// Unix seconds at start, the `created` of the model's card.
    started: u64,
}

impl http::Handler for Service {
    fn handle(&self, request: &http::Request) -> http::Response {
        let started = Instant::now();
        let response = self.route(request).unwrap_or_else(HttpError::into_response);
        tracing::debug!(
            method = request.method,
            target = request.target,
            status = response.status,
            ms = started.elapsed().as_millis() as u64,
            "answered"
        );
        response
    }

    fn reject(&self, status: u16, message: &str) -> http::Response {
        let kind = if status >= 500 {
            "server_error"
        } else {
            "invalid_request_error"
        };
        HttpError::new(status, kind, message).into_response()
    }
}

impl Service {
    fn new(models: Vec<(Arc<dyn ChatModel>, mpsc::Sender<Job>)>, config: ServerConfig) -> Self {
        Self {
            models,
            config,
            next_id: AtomicU64::new(1),
            started: unix_now(),
        }
    }

    fn route(&self, request: &http::Request) -> Result<http::Response, HttpError> {
        let (method, path) = (request.method.as_str(), request.path());
        if path == "/health" {
            allow(method, "GET", path)?;
            return json_response(&serde_json::json!({ "status": "ok" }));
        }
        self.authorize(request)?;
        match path {
            "/v1/models" => {
                allow(method, "GET", path)?;
                json_response(&ModelList {
                    object: "list".to_string(),
                    data: self.models.iter().map(|(m, _)| self.card(m.name())).collect(),
                })
            }
            "/v1/chat/completions" => {
                allow(method, "POST", path)?;
                self.chat(body(request)?)
            }
            "/v1/embeddings" => {
                allow(method, "POST", path)?;
                self.embeddings(body(request)?)
            }
            _ => match path.strip_prefix("/v1/models/") {
                Some(name) => {
                    allow(method, "GET", path)?;
                    let model = self.check_model(name)?;
                    json_response(&self.card(self.models[model].0.name()))
                }
                None => Err(HttpError::not_found(format!("no route {method} {path}"))),
            },
        }
    }

    /// Checks the bearer token when the server has a key.
    fn authorize(&self, request: &http::Request) -> Result<(), HttpError> {
        let Some(key) = &self.config.api_key else {
            return Ok(());
        };
        let header = request
            .header("Authorization")
            .ok_or_else(|| HttpError::unauthorized("missing bearer token in the Authorization header"))?;
        let token = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| HttpError::unauthorized("the Authorization header is not `Bearer <key>`"))?;
        if same_secret(token.as_bytes(), key.as_bytes()) {
            Ok(())
        } else {
            Err(HttpError::unauthorized("wrong API key"))
        }
    }

    fn card(&self, name: &str) -> ModelCard {
        ModelCard {
            id: name.to_string(),
            object: "model".to_string(),
            created: self.started,
            owned_by: "memr2".to_string(),
        }
    }

    /// The index of the model a request names.
    fn check_model(&self, asked: &str) -> Result<usize, HttpError> {
        self.models
            .iter()
            .position(|(m, _)| m.name() == asked)
            .ok_or_else(|| {
                let served: Vec<&str> = self.models.iter().map(|(m, _)| m.name()).collect();
                HttpError::model_not_found(asked, &served.join("`, `"))
            })
    }

    /// `POST /v1/chat/completions`: checks the chat, waits for its batch, answers plain or
    /// streamed.
    fn chat(&self, body: &[u8]) -> Result<http::Response, HttpError> {
        let request: ChatRequest = serde_json::from_slice(body)
            .map_err(|e| HttpError::invalid(format!("the body is not a chat completion request: {e}")))?;
        let index = self.check_model(&request.model)?;
        check_chat(&request, self.config.max_tokens_limit)?;
        let stream = request.stream;
        let completion = self.complete(index, request)?;
        let id = format!("chatcmpl-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let (created, model) = (unix_now(), self.models[index].0.name());
        if stream {
            return Ok(events_response(event_stream(&id, created, model, &completion)?));
        }
        json_response(&ChatResponse {
            id,
            object: "chat.completion".to_string(),
            created,
            model: model.to_string(),
            choices: vec![ChatChoice {
                index: 0,
                message: ChatMessage::new("assistant", completion.text),
                finish_reason: Some(completion.finish_reason),
            }],
            usage: Some(Usage::new(completion.prompt_tokens, completion.completion_tokens)),
        })
    }

    /// Queues a chat for the batching thread and waits for its completion.
    fn complete(&self, model: usize, request: ChatRequest) -> Result<Completion, HttpError> {
        let (reply, answer) = mpsc::channel();
        self.models[model]
            .1
            .send(Job { request, reply })
            .map_err(|_| HttpError::server("the model has stopped"))?;
        match answer.recv() {
            Ok(Ok(completion)) => Ok(completion),
            Ok(Err(message)) => {
                tracing::warn!(message, "the model could not complete a chat");
                Err(HttpError::server(format!(
                    "the model could not complete the chat: {message}"
                )))
            }
            Err(_) => Err(HttpError::server("the model gave no answer")),
        }
    }

    /// `POST /v1/embeddings`: one model call for all of the request's texts.
    fn embeddings(&self, body: &[u8]) -> Result<http::Response, HttpError> {
        let request: EmbeddingRequest = serde_json::from_slice(body)
            .map_err(|e| HttpError::invalid(format!("the body is not an embeddings request: {e}")))?;
        let model = &self.models[self.check_model(&request.model)?].0;
        let texts: Vec<String> = request.input.texts().into_iter().map(String::from).collect();
        if texts.is_empty() {
            return Err(HttpError::invalid_param(
                "input",
                "input must hold at least one text",
            ));
        }
        let vectors = model.embed(&texts).map_err(|message| {
            HttpError::invalid_param(
                "model",
                format!("the model `{}` gives no embeddings: {message}", model.name()),
            )
        })?;
        if vectors.len() != texts.len() {
            return Err(HttpError::server(format!(
                "the model returned {} embeddings for {} texts",
                vectors.len(),
                texts.len()
            )));
        }
        json_response(&EmbeddingResponse {
            object: "list".to_string(),
            data: (0u32..)
                .zip(vectors)
                .map(|(index, embedding)| Embedding {
                    object: "embedding".to_string(),
                    index,
                    embedding,
                })
                .collect(),
            model: model.name().to_string(),
            usage: None,
        })
    }
}

/// A 405 unless the request uses the route's method.
fn allow(method: &str, allowed: &'static str, path: &str) -> Result<(), HttpError> {
    if method == allowed {
        Ok(())
    } else {
        Err(HttpError::method_not_allowed(method, allowed, path))
    }
}

/// The request's body, or the 413 or 400 for why it was not read.
fn body(request: &http::Request) -> Result<&[u8], HttpError> {
    match &request.body {
        Ok(body) => Ok(body),
        Err(http::BodyError::TooLarge { limit }) => Err(HttpError::too_large(*limit)),
        Err(http::BodyError::Malformed(message)) => Err(HttpError::invalid(format!(
            "could not read the request body: {message}"
        ))),
    }
}

/// Rejects chats the server will not queue: no messages, or sampling settings out of range.
fn check_chat(request: &ChatRequest, max_tokens_limit: u32) -> Result<(), HttpError> {
    if request.messages.is_empty() {
        return Err(HttpError::invalid_param(
            "messages",
            "messages must hold at least one message",
        ));
    }
    match request.max_tokens {
        Some(0) => {
            return Err(HttpError::invalid_param(
                "max_tokens",
                "max_tokens must be at least 1",
            ));
        }
        Some(asked) if asked > max_tokens_limit => {
            return Err(HttpError::invalid_param(
                "max_tokens",
                format!("max_tokens is {asked}, more than this server's limit of {max_tokens_limit}"),
            ));
        }
        _ => {}
    }
    if let Some(temperature) = request.temperature
        && !(0.0..=2.0).contains(&temperature)
    {
        return Err(HttpError::invalid_param(
            "temperature",
            format!("temperature is {temperature}, outside 0 to 2"),
        ));
    }
    if let Some(top_p) = request.top_p
        && !(0.0..=1.0).contains(&top_p)
    {
        return Err(HttpError::invalid_param(
            "top_p",
            format!("top_p is {top_p}, outside 0 to 1"),
        ));
    }
    Ok(())
}

/// A finished completion as server-sent events: a chunk with the assistant role, one chunk per
/// word of the text (with the whitespace after it), a chunk with the finish reason, then
/// `data: [DONE]`.
fn event_stream(id: &str, created: u64, model: &str, completion: &Completion) -> Result<String, HttpError> {
    let chunk = |delta: ChatDelta, finish_reason: Option<String>| ChatChunk {
        id: id.to_string(),
        object: "chat.completion.chunk".to_string(),
        created,
        model: model.to_string(),
        choices: vec![ChunkChoice {
            index: 0,
            delta,
            finish_reason,
        }],
    };
    let role = ChatDelta {
        role: Some("assistant".to_string()),
        content: None,
    };
    let words = word_pieces(&completion.text).into_iter().map(|piece| ChatDelta {
        role: None,
        content: Some(piece.to_string()),
    });
    let mut chunks = vec![chunk(role, None)];
    chunks.extend(words.map(|delta| chunk(delta, None)));
    chunks.push(chunk(
        ChatDelta::default(),
        Some(completion.finish_reason.clone()),
    ));

    let mut events = String::new();
    for chunk in &chunks {
        let json = serde_json::to_string(chunk)
            .map_err(|e| HttpError::server(format!("could not write a stream chunk: {e}")))?;
        events.push_str("data: ");
        events.push_str(&json);
        events.push_str("\n\n");
    }
    events.push_str("data: [DONE]\n\n");
    Ok(events)
}

/// Splits a text into words, each with the whitespace after it, so that the pieces concatenate
/// to the text; whitespace before the first word is a piece of its own.
fn word_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let (mut start, mut after_space) = (0, false);
    for (at, c) in text.char_indices() {
        if c.is_whitespace() {
            after_space = true;
        } else if after_space {
            pieces.push(&text[start..at]);
            (start, after_space) = (at, false);
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

/// Compares two secrets in time that does not depend on where they differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// 200 with a JSON body.
fn json_response(value: &impl Serialize) -> Result<http::Response, HttpError> {
    let body = serde_json::to_vec(value)
        .map_err(|e| HttpError::server(format!("could not write the response: {e}")))?;
    Ok(http::Response {
        status: 200,
        headers: vec![("Content-Type", "application/json".to_string())],
        body,
    })
}

/// 200 with server-sent events.
fn events_response(events: String) -> http::Response {
    http::Response {
        status: 200,
        headers: vec![
            ("Content-Type", "text/event-stream".to_string()),
            ("Cache-Control", "no-cache".to_string()),
        ],
        body: events.into_bytes(),
    }
}

/// A request the server refuses or failed: its status, OpenAI-shaped body and extra headers.
#[derive(Debug)]
struct HttpError {
    status: u16,
    /// Boxed: the error travels through every handler's `Result`.
    body: Box<ErrorBody>,
    headers: Vec<(&'static str, String)>,
}

impl HttpError {
    fn new(status: u16, kind: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: Box::new(ErrorBody::new(kind, message)),
            headers: Vec::new(),
        }
    }

    /// 400: the request is malformed or asks for something the server does not allow.
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", message)
    }

    /// 400, naming the field at fault.
    fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        let mut error = Self::invalid(message);
        error.body.error.param = Some(param.to_string());
        error
    }

    /// 401, with the OpenAI code `invalid_api_key`.
    fn unauthorized(message: &str) -> Self {
        let mut error = Self::new(401, "authentication_error", message);
        error.body.error.code = Some("invalid_api_key".to_string());
        error.headers.push(("WWW-Authenticate", "Bearer".to_string()));
        error
    }

    /// 404: no such route.
    fn not_found(message: String) -> Self {
        Self::new(404, "invalid_request_error", message)
    }

    /// 404 with the OpenAI code `model_not_found`.
    fn model_not_found(asked: &str, served: &str) -> Self {
        let mut error = Self::new(
            404,
            "invalid_request_error",
            format!("the model `{asked}` does not exist; this server serves `{served}`"),
        );
        error.body.error.param = Some("model".to_string());
        error.body.error.code = Some("model_not_found".to_string());
        error
    }

    /// 405, saying which method the route takes.
    fn method_not_allowed(method: &str, allowed: &'static str, path: &str) -> Self {
        let mut error = Self::new(
            405,
            "invalid_request_error",
            format!("{path} takes {allowed}, not {method}"),
        );
        error.headers.push(("Allow", allowed.to_string()));
        error
    }

    /// 413: the body is over the limit.
    fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            format!("the request body is over this server's limit of {limit} bytes"),
        )
    }

    /// 500: the model failed or the server did.
    fn server(message: impl Into<String>) -> Self {
        Self::new(500, "server_error", message)
    }

    fn into_response(self) -> http::Response {
        let mut headers = vec![("Content-Type", "application/json".to_string())];
        headers.extend(self.headers);
        http::Response {
            status: self.status,
            headers,
            // An ErrorBody is strings only: serializing it cannot fail.
            body: serde_json::to_vec(&self.body).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::wire::ApiError;

    /// Answers with the last user message's words in reverse order, counts words as tokens,
    /// records the size of every batch; fails on "fail" and panics on "panic".
    struct Scripted {
        delay: Duration,
        embeddings: bool,
        batches: Mutex<Vec<usize>>,
    }

    impl Scripted {
        fn new() -> Self {
            Self {
                delay: Duration::ZERO,
                embeddings: true,
                batches: Mutex::new(Vec::new()),
            }
        }

        fn batches(&self) -> Vec<usize> {
            self.batches.lock().unwrap().clone()
        }
    }

    fn reverse_words(request: &ChatRequest) -> Result<Completion, String> {
        let user = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or("", |m| m.content.as_str());
        match user {
            "fail" => return Err("scripted failure".to_string()),
            "panic" => panic!("scripted panic"),
            _ => {}
        }
        let words: Vec<&str> = user.split_whitespace().rev().collect();
        let limit = request.max_tokens.map_or(words.len(), |n| n as usize);
        let kept = &words[..words.len().min(limit)];
        Ok(Completion {
            text: kept.join(" "),
            prompt_tokens: request
                .messages
                .iter()
                .map(|m| m.content.split_whitespace().count() as u64)
                .sum(),
            completion_tokens: kept.len() as u64,
            finish_reason: if kept.len() < words.len() {
                "length"
            } else {
                "stop"
            }
            .to_string(),
        })
    }

    impl ChatModel for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }

        fn complete(&self, batch: &[ChatRequest]) -> Vec<Result<Completion, String>> {
            self.batches.lock().unwrap().push(batch.len());
            std::thread::sleep(self.delay);
            batch.iter().map(reverse_words).collect()
        }

        fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
            if !self.embeddings {
                return Err("scripted models of this kind have none".to_string());
            }
            Ok(texts
                .iter()
                .map(|t| vec![t.len() as f32, t.split_whitespace().count() as f32])
                .collect())
        }
    }

    fn local() -> ServerConfig {
        ServerConfig {
            addr: "127.0.0.1:0".to_string(),
            ..ServerConfig::default()
        }
    }

    fn serve(model: Scripted, config: ServerConfig) -> (Server, Arc<Scripted>, String) {
        let model = Arc::new(model);
        let server = Server::start(Arc::clone(&model) as Arc<dyn ChatModel>, config).unwrap();
        let base = format!("http://{}", server.addr());
        (server, model, base)
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent()
    }

    struct Answer {
        status: u16,
        content_type: String,
        body: String,
    }

    impl Answer {
        fn json<T: serde::de::DeserializeOwned>(&self) -> T {
            serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {} {}", self.status, self.body))
        }

        fn error(&self) -> ApiError {
            self.json::<ErrorBody>().error
        }
    }

    fn read(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
        let response = response.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response.into_body().read_to_string().unwrap();
        Answer {
            status,
            content_type,
            body,
        }
    }

    fn get(url: &str) -> Answer {
        read(agent().get(url).call())
    }

    fn post(url: &str, body: &str) -> Answer {
        post_with(&agent(), url, body, None)
    }

    fn post_with(agent: &ureq::Agent, url: &str, body: &str, key: Option<&str>) -> Answer {
        let mut request = agent.post(url).header("Content-Type", "application/json");
        if let Some(key) = key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        read(request.send(body))
    }

    fn chat(text: &str) -> ChatRequest {
        ChatRequest::new("scripted", vec![ChatMessage::new("user", text)])
    }

    fn body(request: &ChatRequest) -> String {
        serde_json::to_string(request).unwrap()
    }

    #[test]
    fn health_is_ok_and_models_list_the_model() {
        let (server, _, base) = serve(Scripted::new(), local());
        let health = get(&format!("{base}/health"));
        assert_eq!((health.status, health.body.as_str()), (200, r#"{"status":"ok"}"#));
        assert_eq!(health.content_type, "application/json");

        let models: ModelList = get(&format!("{base}/v1/models")).json();
        assert_eq!(models.object, "list");
        assert_eq!(models.data.len(), 1);
        assert_eq!(
            (models.data[0].id.as_str(), models.data[0].object.as_str()),
            ("scripted", "model")
        );

        let card: ModelCard = get(&format!("{base}/v1/models/scripted")).json();
        assert_eq!(card, models.data[0]);
        let other = get(&format!("{base}/v1/models/gpt-4o"));
        assert_eq!(other.status, 404);
        assert_eq!(other.error().code.as_deref(), Some("model_not_found"));
        server.shutdown();
    }

    /// A second scripted model under another name, answering in upper case.
    struct Shouting;

    impl ChatModel for Shouting {
        fn name(&self) -> &str {
            "shouting"
        }

        fn complete(&self, batch: &[ChatRequest]) -> Vec<Result<Completion, String>> {
            batch
                .iter()
                .map(|r| {
                    reverse_words(r).map(|c| Completion {
                        text: c.text.to_uppercase(),
                        ..c
                    })
                })
                .collect()
        }

        fn embed(&self, _texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
            Err("none".to_string())
        }
    }

    #[test]
    fn several_models_are_served_side_by_side_by_name() {
        let models: Vec<Arc<dyn ChatModel>> = vec![Arc::new(Scripted::new()), Arc::new(Shouting)];
        let server = Server::start_models(models, local()).unwrap();
        let base = format!("http://{}", server.addr());
        let listed: ModelList = get(&format!("{base}/v1/models")).json();
        let names: Vec<&str> = listed.data.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(names, ["scripted", "shouting"]);
        let url = format!("{base}/v1/chat/completions");
        let ask = |model: &str| {
            let request = ChatRequest::new(model, vec![ChatMessage::new("user", "one two")]);
            post(&url, &serde_json::to_string(&request).unwrap())
        };
        let plain: ChatResponse = ask("scripted").json();
        let loud: ChatResponse = ask("shouting").json();
        assert_eq!(
            (plain.text(), plain.model.as_str()),
            (Some("two one"), "scripted")
        );
        assert_eq!((loud.text(), loud.model.as_str()), (Some("TWO ONE"), "shouting"));
        let missing = ask("other");
        assert_eq!(missing.status, 404);
        assert!(missing.error().message.contains("shouting"), "{}", missing.body);
        server.shutdown();
        let clash: Vec<Arc<dyn ChatModel>> = vec![Arc::new(Shouting), Arc::new(Shouting)];
        assert!(matches!(
            Server::start_models(clash, local()),
            Err(ServerError::InvalidConfig(_))
        ));
        assert!(matches!(
            Server::start_models(Vec::new(), local()),
            Err(ServerError::InvalidConfig(_))
        ));
    }

    #[test]
    fn chat_round_trip_reports_usage_and_finish_reason() {
        let (server, _, base) = serve(Scripted::new(), local());
        let url = format!("{base}/v1/chat/completions");
        let mut request = ChatRequest::new(
            "scripted",
            vec![
                ChatMessage::new("system", "be brief"),
                ChatMessage::new("user", "one two three"),
            ],
        );
        let answer = post(&url, &body(&request));
        assert_eq!(answer.status, 200, "{}", answer.body);
        let response: ChatResponse = answer.json();
        assert!(response.id.starts_with("chatcmpl-"), "{}", response.id);
        assert_eq!(response.object, "chat.completion");
        assert_eq!(response.model, "scripted");
        assert!(response.created > 0);
        assert_eq!(response.text(), Some("three two one"));
        assert_eq!(response.choices[0].message.role, "assistant");
        assert_eq!(response.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(response.usage, Some(Usage::new(5, 3)));

        request.max_tokens = Some(2);
        let cut: ChatResponse = post(&url, &body(&request)).json();
        assert_eq!(cut.text(), Some("three two"));
        assert_eq!(cut.choices[0].finish_reason.as_deref(), Some("length"));
        assert_ne!(cut.id, response.id);
        server.shutdown();
    }

    #[test]
    fn stream_reassembles_to_the_plain_answer_and_ends_with_done() {
        let (server, _, base) = serve(Scripted::new(), local());
        let url = format!("{base}/v1/chat/completions");
        let mut request = chat("the  quick brown fox jumps");
        let plain: ChatResponse = post(&url, &body(&request)).json();

        request.stream = true;
        let answer = post(&url, &body(&request));
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.content_type, "text/event-stream");
        let events: Vec<&str> = answer.body.split_terminator("\n\n").collect();
        assert_eq!(events.last(), Some(&"data: [DONE]"));
        let chunks: Vec<ChatChunk> = events[..events.len() - 1]
            .iter()
            .map(|event| serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap())
            .collect();
        assert!(
            chunks
                .iter()
                .all(|c| c.object == "chat.completion.chunk" && c.id == chunks[0].id)
        );
        assert_eq!(chunks[0].choices[0].delta.role.as_deref(), Some("assistant"));
        let content: Vec<&str> = chunks
            .iter()
            .filter_map(|c| c.choices[0].delta.content.as_deref())
            .collect();
        assert!(content.len() > 1, "{content:?}");
        assert_eq!(Some(content.concat().as_str()), plain.text());
        let finish: Vec<_> = chunks
            .iter()
            .filter_map(|c| c.choices[0].finish_reason.as_deref())
            .collect();
        assert_eq!(finish, ["stop"]);
        assert!(chunks.last().unwrap().choices[0].finish_reason.is_some());
        server.shutdown();
    }

    #[test]
    fn batches_concurrent_clients_and_answers_each_as_alone() {
        let model = Scripted {
            delay: Duration::from_millis(50),
            ..Scripted::new()
        };
        let config = ServerConfig {
            threads: 16,
            ..local()
        };
        let (server, model, base) = serve(model, config);
        let url = format!("{base}/v1/chat/completions");
        let requests: Vec<ChatRequest> = (0..16)
            .map(|i| {
                let mut request = chat(&format!("client {i} asks {} things", i * 7));
                request.max_tokens = Some(1 + i % 5);
                request.temperature = Some(0.1 * (i % 3) as f32);
                request
            })
            .collect();
        let one_at_a_time: Vec<ChatResponse> = requests.iter().map(|r| post(&url, &body(r)).json()).collect();
        assert!(model.batches().iter().all(|&size| size == 1));

        let concurrent: Vec<ChatResponse> = std::thread::scope(|scope| {
            let handles: Vec<_> = requests
                .iter()
                .map(|r| scope.spawn(|| post(&url, &body(r)).json::<ChatResponse>()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (alone, together) in one_at_a_time.iter().zip(&concurrent) {
            assert_eq!(alone.choices, together.choices);
            assert_eq!(alone.usage, together.usage);
        }
        let batches = model.batches();
        assert_eq!(batches.iter().sum::<usize>(), 32);
        assert!(batches.iter().any(|&size| size > 1), "{batches:?}");
        assert!(batches.iter().all(|&size| size <= 16), "{batches:?}");
        server.shutdown();
    }

    #[test]
    fn batches_hold_at_most_max_batch_chats() {
        let model = Scripted {
            delay: Duration::from_millis(30),
            ..Scripted::new()
        };
        let config = ServerConfig {
            threads: 12,
            max_batch: 3,
            max_wait_ms: 50,
            ..local()
        };
        let (server, model, base) = serve(model, config);
        let url = format!("{base}/v1/chat/completions");
        std::thread::scope(|scope| {
            for i in 0..12 {
                let url = &url;
                scope.spawn(move || assert_eq!(post(url, &body(&chat(&format!("n {i}")))).status, 200));
            }
        });
        let batches = model.batches();
        assert_eq!(batches.iter().sum::<usize>(), 12);
        assert!(batches.iter().all(|&size| size <= 3), "{batches:?}");
        server.shutdown();
    }

    #[test]
    fn api_key_guards_every_route_but_health() {
        let config = ServerConfig {
            api_key: Some("sesame".to_string()),
            ..local()
        };
        let (server, _, base) = serve(Scripted::new(), config);
        let url = format!("{base}/v1/chat/completions");
        let agent = agent();
        for key in [None, Some("wrong"), Some("sesame2"), Some("")] {
            let answer = post_with(&agent, &url, &body(&chat("hi")), key);
            assert_eq!(answer.status, 401, "{key:?}: {}", answer.body);
            assert_eq!(answer.error().kind, "authentication_error");
        }
        assert_eq!(get(&format!("{base}/v1/models")).status, 401);
        let basic = read(
            agent
                .get(format!("{base}/v1/models"))
                .header("Authorization", "Basic sesame")
                .call(),
        );
        assert_eq!(basic.status, 401);

        assert_eq!(get(&format!("{base}/health")).status, 200);
        let answer = post_with(&agent, &url, &body(&chat("hi there")), Some("sesame"));
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json::<ChatResponse>().text(), Some("there hi"));
        let models = read(
            agent
                .get(format!("{base}/v1/models"))
                .header("Authorization", "Bearer sesame")
                .call(),
        );
        assert_eq!(models.status, 200);
        server.shutdown();
    }

    #[test]
    fn refuses_a_body_over_the_limit_with_413() {
        let config = ServerConfig {
            max_body_bytes: 2000,
            ..local()
        };
        let (server, _, base) = serve(Scripted::new(), config);
        let url = format!("{base}/v1/chat/completions");
        let long = body(&chat(&"word ".repeat(2000)));
        let answer = post(&url, &long);
        assert_eq!(answer.status, 413, "{}", answer.body);
        assert_eq!(answer.error().kind, "invalid_request_error");

        // A chunked body declares no length: the server finds out while reading.
        let mut reader = long.as_bytes();
        let chunked = read(agent().post(&url).send(ureq::SendBody::from_reader(&mut reader)));
        assert_eq!(chunked.status, 413, "{}", chunked.body);

        // A client that sends its whole body before reading still gets the answer.
        let huge = body(&chat(&"word ".repeat(1 << 20)));
        let answer = post(&url, &huge);
        assert_eq!(answer.status, 413, "{}", answer.body);

        let fits = post(&url, &body(&chat("short")));
        assert_eq!(fits.status, 200, "{}", fits.body);
        server.shutdown();
    }

    #[test]
    fn rejects_malformed_requests_with_openai_errors() {
        let (server, _, base) = serve(Scripted::new(), local());
        let url = format!("{base}/v1/chat/completions");

        let malformed = post(&url, "{not json");
        assert_eq!(malformed.status, 400);
        assert_eq!(malformed.content_type, "application/json");
        assert_eq!(malformed.error().kind, "invalid_request_error");
        assert!(
            malformed
                .error()
                .message
                .contains("not a chat completion request")
        );

        let missing = post(&url, r#"{"model":"scripted"}"#);
        assert_eq!(missing.status, 400);
        assert!(missing.error().message.contains("messages"), "{}", missing.body);

        let empty = post(&url, r#"{"model":"scripted","messages":[]}"#);
        assert_eq!(empty.status, 400);
        assert_eq!(empty.error().param.as_deref(), Some("messages"));

        let mut request = chat("hi");
        request.max_tokens = Some(1025);
        let too_many = post(&url, &body(&request));
        assert_eq!(too_many.status, 400);
        assert_eq!(too_many.error().param.as_deref(), Some("max_tokens"));
        assert!(too_many.error().message.contains("1024"), "{}", too_many.body);
        request.max_tokens = Some(1024);
        assert_eq!(post(&url, &body(&request)).status, 200);

        let mut hot = chat("hi");
        hot.temperature = Some(2.5);
        assert_eq!(
            post(&url, &body(&hot)).error().param.as_deref(),
            Some("temperature")
        );

        let binary = read(agent().post(&url).send(&[0xff, 0xfe, 0x00][..]));
        assert_eq!(binary.status, 400);
        server.shutdown();
    }

    #[test]
    fn answers_404_for_unknown_routes_and_models_and_405_for_wrong_methods() {
        let (server, _, base) = serve(Scripted::new(), local());
        let unknown = get(&format!("{base}/v1/nothing"));
        assert_eq!(unknown.status, 404);
        assert_eq!(unknown.error().kind, "invalid_request_error");

        let mut request = chat("hi");
        request.model = "gpt-4o".to_string();
        let other = post(&format!("{base}/v1/chat/completions"), &body(&request));
        assert_eq!(other.status, 404);
        assert_eq!(other.error().code.as_deref(), Some("model_not_found"));
        let other_embeddings = post(
            &format!("{base}/v1/embeddings"),
            r#"{"model":"gpt-4o","input":"a"}"#,
        );
        assert_eq!(other_embeddings.error().code.as_deref(), Some("model_not_found"));

        let wrong_method = get(&format!("{base}/v1/chat/completions"));
        assert_eq!(wrong_method.status, 405);
        assert_eq!(wrong_method.error().kind, "invalid_request_error");
        assert_eq!(post(&format!("{base}/v1/models"), "{}").status, 405);
        server.shutdown();
    }

    #[test]
    fn model_failures_are_500_and_the_server_keeps_serving() {
        let (server, _, base) = serve(Scripted::new(), local());
        let url = format!("{base}/v1/chat/completions");
        let failed = post(&url, &body(&chat("fail")));
        assert_eq!(failed.status, 500);
        assert_eq!(failed.error().kind, "server_error");
        assert!(
            failed.error().message.contains("scripted failure"),
            "{}",
            failed.body
        );

        let panicked = post(&url, &body(&chat("panic")));
        assert_eq!(panicked.status, 500);
        assert_eq!(panicked.error().kind, "server_error");

        let fine: ChatResponse = post(&url, &body(&chat("still here"))).json();
        assert_eq!(fine.text(), Some("here still"));
        server.shutdown();
    }

    #[test]
    fn embeddings_round_trip_and_400_without_embeddings() {
        let (server, _, base) = serve(Scripted::new(), local());
        let url = format!("{base}/v1/embeddings");
        let many: EmbeddingResponse = post(&url, r#"{"model":"scripted","input":["a b","cde"]}"#).json();
        assert_eq!((many.object.as_str(), many.model.as_str()), ("list", "scripted"));
        let vectors: Vec<(u32, Vec<f32>)> = many.data.into_iter().map(|e| (e.index, e.embedding)).collect();
        assert_eq!(vectors, [(0, vec![3.0, 2.0]), (1, vec![3.0, 1.0])]);
        let one: EmbeddingResponse = post(&url, r#"{"model":"scripted","input":"abcd"}"#).json();
        assert_eq!(one.data.len(), 1);
        assert_eq!(one.data[0].object, "embedding");
        assert_eq!(post(&url, r#"{"model":"scripted","input":[]}"#).status, 400);
        server.shutdown();

        let model = Scripted {
            embeddings: false,
            ..Scripted::new()
        };
        let (server, _, base) = serve(model, local());
        let none = post(
            &format!("{base}/v1/embeddings"),
            r#"{"model":"scripted","input":"a"}"#,
        );
        assert_eq!(none.status, 400);
        assert_eq!(none.error().kind, "invalid_request_error");
        assert!(none.error().message.contains("no embeddings"), "{}", none.body);
        server.shutdown();
    }

    #[test]
    fn shutdown_is_prompt_and_closes_the_port() {
        let (server, _, base) = serve(Scripted::new(), local());
        let addr = server.addr();
        // An idle keep-alive connection and a request half sent must not hold the stop up.
        let pooled = agent();
        assert_eq!(read(pooled.get(format!("{base}/health")).call()).status, 200);
        let mut half_sent = TcpStream::connect(addr).unwrap();
        half_sent.write_all(b"GET /hea").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        server.shutdown();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let refused = (0..100).any(|_| {
            let refused = TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err();
            if !refused {
                std::thread::sleep(Duration::from_millis(10));
            }
            refused
        });
        assert!(refused, "{addr} still accepts connections");
    }

    #[test]
    fn shutdown_lets_a_request_in_flight_finish() {
        let model = Scripted {
            delay: Duration::from_millis(300),
            ..Scripted::new()
        };
        let (server, model, base) = serve(model, local());
        let url = format!("{base}/v1/chat/completions");
        std::thread::scope(|scope| {
            let in_flight = scope.spawn(|| post(&url, &body(&chat("almost done"))));
            while model.batches().is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
            server.shutdown();
            let answer = in_flight.join().unwrap();
            assert_eq!(answer.status, 200, "{}", answer.body);
            assert_eq!(answer.json::<ChatResponse>().text(), Some("done almost"));
        });
    }

    #[test]
    fn start_rejects_a_taken_address_and_a_bad_config() {
        let (server, _, _) = serve(Scripted::new(), local());
        let taken = ServerConfig {
            addr: server.addr().to_string(),
            ..local()
        };
        let error = Server::start(Arc::new(Scripted::new()), taken).err().unwrap();
        assert!(matches!(error, ServerError::Bind { .. }), "{error}");
        server.shutdown();

        for config in [
            ServerConfig {
                threads: 0,
                ..local()
            },
            ServerConfig {
                max_batch: 0,
                ..local()
            },
            ServerConfig {
                api_key: Some(String::new()),
                ..local()
            },
        ] {
            let error = Server::start(Arc::new(Scripted::new()), config).err().unwrap();
            assert!(matches!(error, ServerError::InvalidConfig(_)), "{error}");
        }
    }

    #[test]
    fn runs_until_sigterm() {
        // Keep SIGTERM from ending the test process while the server's handler is not yet in.
        let caught = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&caught)).unwrap();
        let (server, _, _) = serve(Scripted::new(), local());
        let running = std::thread::spawn(move || server.run_until_signal());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !running.is_finished() && Instant::now() < deadline {
            signal_hook::low_level::raise(signal_hook::consts::SIGTERM).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(running.is_finished(), "still running after SIGTERM");
        running.join().unwrap().unwrap();
        assert!(caught.load(Ordering::Relaxed));
    }

    /// Sends raw bytes and reads the answer until the server closes the connection.
    fn raw(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn refuses_a_huge_declared_length_unread_and_keeps_serving() {
        let (server, _, base) = serve(Scripted::new(), local());
        for length in ["100000000000", "18446744073709551615"] {
            let request = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n{{}}"
            );
            let answer = raw(server.addr(), &request);
            assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
            assert!(answer.contains("Connection: close"), "{answer}");
        }
        assert_eq!(get(&format!("{base}/health")).status, 200);
        server.shutdown();
    }

    #[test]
    fn answers_unreadable_requests_with_an_openai_error_and_closes() {
        let (server, _, _) = serve(Scripted::new(), local());
        let answer = raw(server.addr(), "NONSENSE\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
        let error: ErrorBody = serde_json::from_str(body).unwrap();
        assert_eq!(error.error.kind, "invalid_request_error");

        let broken = "POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n";
        let answer = raw(server.addr(), broken);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        server.shutdown();
    }

    #[test]
    fn keeps_a_connection_alive_across_requests() {
        let (server, _, _) = serve(Scripted::new(), local());
        let chat = body(&chat("a b"));
        let post = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n{chat}",
            chat.len()
        );
        let answer = raw(
            server.addr(),
            &format!(
                "{post}GET /health HTTP/1.1\r\n\r\nHEAD /v1/models HTTP/1.1\r\nConnection: close\r\n\r\n"
            ),
        );
        assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
        assert!(answer.contains(r#""content":"b a""#), "{answer}");
        assert!(answer.contains(r#"{"status":"ok"}"#), "{answer}");
        assert!(
            answer.ends_with("Connection: close\r\n\r\n"),
            "HEAD has no body: {answer}"
        );
        server.shutdown();
    }

    #[test]
    fn word_pieces_concatenate_to_the_text() {
        for text in [
            "",
            "one",
            "one two",
            "  lead",
            "trail  ",
            "a \n b\tc ",
            "héllo wörld",
        ] {
            assert_eq!(word_pieces(text).concat(), text, "{text:?}");
        }
        assert_eq!(word_pieces("a  b c"), ["a  ", "b ", "c"]);
    }

    #[test]
    fn same_secret_needs_every_byte() {
        assert!(same_secret(b"key", b"key"));
        assert!(!same_secret(b"kez", b"key"));
        assert!(!same_secret(b"ke", b"key"));
        assert!(!same_secret(b"", b"key"));
    }
}
