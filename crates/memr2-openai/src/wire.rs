//! The OpenAI API's bodies, as much of them as chat completions, embeddings and model lists
//! use. Unknown fields are ignored when reading, so richer servers' answers parse.

use serde::{Deserialize, Serialize};

/// One message of a chat.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message of a role.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model's name.
    pub model: String,
    /// The chat so far.
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Sampling temperature; 0 is greedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling's probability mass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// A seed for sampling, where the server honours one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Answer as server-sent events, a chunk at a time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

impl ChatRequest {
    /// A request for a model with its messages and nothing else set.
    pub fn new(model: impl Into<String>, messages: Vec<ChatMessage>) -> Self {
        Self {
            model: model.into(),
            messages,
            max_tokens: None,
            temperature: None,
            top_p: None,
            seed: None,
            stream: false,
        }
    }
}

/// Tokens a request read and wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
}

impl Usage {
    /// Usage of a prompt and a completion.
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// One completion of a chat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    /// Its index among the choices.
    pub index: u32,
    /// The assistant's message.
    pub message: ChatMessage,
    /// `stop` (the model ended its turn) or `length` (it reached `max_tokens`).
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// The answer to a [`ChatRequest`] that did not stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The completion's id.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// The completions (one, as memr2 asks).
    pub choices: Vec<ChatChoice>,
    /// Tokens read and written.
    #[serde(default)]
    pub usage: Option<Usage>,
}

impl ChatResponse {
    /// The first choice's text, if there is a choice.
    pub fn text(&self) -> Option<&str> {
        self.choices.first().map(|c| c.message.content.as_str())
    }
}

/// What a streamed chunk adds to the message.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatDelta {
    /// The role, in the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// More text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One streamed choice's part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// Its index among the choices.
    pub index: u32,
    /// What it adds.
    pub delta: ChatDelta,
    /// Set in the last chunk.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// One server-sent event of a streamed completion (`data: {...}`, then `data: [DONE]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatChunk {
    /// The completion's id, the same in every chunk.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model.
    pub model: String,
    /// The parts.
    pub choices: Vec<ChunkChoice>,
}

/// The input of an embeddings request: one text or several.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    One(String),
    /// Several texts.
    Many(Vec<String>),
}

impl EmbeddingInput {
    /// The texts, in order.
    pub fn texts(&self) -> Vec<&str> {
        match self {
            EmbeddingInput::One(t) => vec![t.as_str()],
            EmbeddingInput::Many(ts) => ts.iter().map(String::as_str).collect(),
        }
    }
}

/// `POST /v1/embeddings`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingRequest {
    /// The model's name.
    pub model: String,
    /// The texts.
    pub input: EmbeddingInput,
}

/// One text's embedding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    /// `embedding`.
    pub object: String,
    /// The text's index in the request.
    pub index: u32,
    /// The vector.
    pub embedding: Vec<f32>,
}

/// The answer to an [`EmbeddingRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingResponse {
    /// `list`.
    pub object: String,
    /// One embedding per input text.
    pub data: Vec<Embedding>,
    /// The model.
    pub model: String,
    /// Tokens read.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// One entry of `GET /v1/models`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// The model's name, what requests put in `model`.
    pub id: String,
    /// `model`.
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// Who serves it.
    #[serde(default)]
    pub owned_by: String,
}

/// `GET /v1/models`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// `list`.
    pub object: String,
    /// The models.
    pub data: Vec<ModelCard>,
}

/// The body of an error answer: `{"error": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ApiError,
}

/// An OpenAI-shaped error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, for a person.
    pub message: String,
    /// Its kind, e.g. `invalid_request_error`, `authentication_error`, `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, if one is.
    #[serde(default)]
    pub param: Option<String>,
    /// A machine-readable code, if any.
    #[serde(default)]
    pub code: Option<String>,
}

impl ErrorBody {
    /// An error of a kind with its message.
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            error: ApiError {
                message: message.into(),
                kind: kind.to_string(),
                param: None,
                code: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vllm_style_response_parses_and_unknown_fields_are_ignored() {
        let text = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m",
            "choices":[{"index":0,"message":{"role":"assistant","content":"Paris","tool_calls":[]},
            "logprobs":null,"finish_reason":"stop","stop_reason":null}],
            "usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6},"prompt_logprobs":null}"#;
        let response: ChatResponse = serde_json::from_str(text).unwrap();
        assert_eq!(response.text(), Some("Paris"));
        assert_eq!(response.usage, Some(Usage::new(5, 1)));
    }

    #[test]
    fn a_request_leaves_out_what_it_does_not_set() {
        let request = ChatRequest::new("m", vec![ChatMessage::new("user", "hi")]);
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(
            text,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#
        );
        let back: ChatRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, request);
    }

    #[test]
    fn embedding_input_is_one_text_or_many() {
        let one: EmbeddingRequest = serde_json::from_str(r#"{"model":"m","input":"a"}"#).unwrap();
        assert_eq!(one.input.texts(), ["a"]);
        let many: EmbeddingRequest = serde_json::from_str(r#"{"model":"m","input":["a","b"]}"#).unwrap();
        assert_eq!(many.input.texts(), ["a", "b"]);
    }
}
