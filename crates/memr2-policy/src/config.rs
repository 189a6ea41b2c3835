//! The model configuration, read from and written to Hugging Face `config.json` with HF key names.

use std::path::Path;

use burn::module::{Initializer, Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor, TensorData};
use rand_burn::SeedableRng;
use rand_burn::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::error::PolicyError;
use crate::model::Transformer;

/// One token id or a list of them, as HF writes `eos_token_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids (Llama 3 lists several end-of-sequence ids).
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a vector.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

/// Architecture of a Llama / Qwen2 decoder, deserialized from an HF `config.json`.
///
/// Field names are HF's. Keys this crate does not use are kept in `extra`, so a config read
/// from a checkpoint is written back unchanged. Runtime choices (sampling, batch sizes) live in
/// [`crate::SamplingConfig`], not here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransformerConfig {
    /// `"qwen2"` or `"llama"`; Qwen2 implies biases on the q/k/v projections.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Number of tokens in the vocabulary (rows of `embed_tokens`).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention); equals the query heads when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// Width of one head; `hidden_size / num_attention_heads` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Longest sequence the rotary tables cover.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Epsilon of every RMSNorm.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// Base of the rotary frequencies; newer files put it in `rope_parameters` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Whether the LM head reuses the token embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Whether q/k/v (and o) projections carry a bias; Qwen2 has q/k/v biases without this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    /// Beginning-of-sequence token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    /// Standard deviation of the normal initialisation (HF `initializer_range`).
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// Every other key of the file, kept for round trips.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_model_type() -> String {
    "qwen2".to_string()
}
fn default_max_positions() -> usize {
    2048
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_initializer_range() -> f64 {
    0.02
}

impl TransformerConfig {
    /// The built-in small model that trains from scratch on a CPU (3,475,712 parameters with a
    /// 2048-token vocabulary): width 256, 4 layers, 4 query heads and 2 key/value heads of
    /// width 64, SwiGLU width 704, tied embeddings, no biases, 2048 positions.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            model_type: "llama".to_string(),
            vocab_size,
            hidden_size: 256,
            intermediate_size: 704,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            head_dim: None,
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-6,
            rope_theta: Some(10_000.0),
            tie_word_embeddings: true,
            attention_bias: Some(false),
            bos_token_id: None,
            eos_token_id: None,
            initializer_range: 0.02,
            extra: serde_json::Map::new(),
        }
    }

    /// The built-in model at another size, as `memr2 train` builds it from `model.tiny`:
    /// [`tiny`](Self::tiny)'s architecture `hidden_size` wide with `layers` layers and `heads`
    /// heads, each with keys and values of its own, and a SwiGLU width of 8/3 of the hidden
    /// size rounded down to a multiple of 16.
    pub fn tiny_sized(vocab_size: usize, hidden_size: usize, layers: usize, heads: usize) -> Self {
        Self {
            hidden_size,
            intermediate_size: hidden_size * 8 / 3 / 16 * 16,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(heads),
            ..Self::tiny(vocab_size)
        }
    }

    /// The shape of Qwen2.5-0.5B-Instruct (494,032,768 parameters): width 896, 24 layers, 14
    /// query heads and 2 key/value heads of width 64, SwiGLU width 4864, a 151,936-token
    /// vocabulary, q/k/v biases, tied embeddings. For benchmarks with random weights; real
    /// weights come with their own `config.json` through [`crate::load_hf`].
    pub fn qwen2_5_0_5b() -> Self {
        Self {
            model_type: "qwen2".to_string(),
            vocab_size: 151_936,
            hidden_size: 896,
            intermediate_size: 4864,
            num_hidden_layers: 24,
            num_attention_heads: 14,
            num_key_value_heads: Some(2),
            head_dim: None,
            max_position_embeddings: 32_768,
            rms_norm_eps: 1e-6,
            rope_theta: Some(1_000_000.0),
            tie_word_embeddings: true,
            attention_bias: None,
            bos_token_id: None,
            eos_token_id: None,
            initializer_range: 0.02,
            extra: serde_json::Map::new(),
        }
    }

    /// Reads an HF `config.json`; a missing file or malformed JSON is an error naming the path.
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::io(path, source))?;
        let config: Self = serde_json::from_str(&text).map_err(|source| PolicyError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Writes the config as pretty JSON with HF key names.
    pub fn save(&self, path: &Path) -> Result<(), PolicyError> {
        std::fs::write(path, self.to_json()).map_err(|source| PolicyError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The config as pretty-printed JSON with HF key names.
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses a config from JSON text.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Rejects configs that cannot build a model.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let fail = |reason: String| Err(PolicyError::InvalidConfig { reason });
        if self.vocab_size == 0 || self.hidden_size == 0 || self.intermediate_size == 0 {
            return fail("vocab_size, hidden_size and intermediate_size must be positive".into());
        }
        if self.num_attention_heads == 0 || self.num_hidden_layers == 0 {
            return fail("num_attention_heads and num_hidden_layers must be positive".into());
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        let kv = self.num_kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return fail(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {kv}",
                self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return fail(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim()
            ));
        }
        if self.rms_norm_eps <= 0.0 {
            return fail("rms_norm_eps must be positive".into());
        }
        if let Some(kind) = self.rope_type()
            && kind != "default"
        {
            return fail(format!("rope scaling type {kind:?} is not supported"));
        }
        Ok(())
    }

    /// Number of key/value heads.
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether the q/k/v projections have biases (always for Qwen2).
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias.unwrap_or(self.model_type == "qwen2")
    }

    /// Whether the output projection has a bias (Llama's `attention_bias` covers it, Qwen2 never).
    pub fn o_bias(&self) -> bool {
        self.model_type != "qwen2" && self.attention_bias.unwrap_or(false)
    }

    /// Rotary base: `rope_theta`, else `rope_parameters.rope_theta`, else 10000.
    pub fn rope_base(&self) -> f64 {
        self.rope_theta
            .or_else(|| self.rope_parameters()?.get("rope_theta")?.as_f64())
            .unwrap_or(10_000.0)
    }

    fn rope_parameters(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        ["rope_parameters", "rope_scaling"]
            .iter()
            .find_map(|key| self.extra.get(*key)?.as_object())
    }

    fn rope_type(&self) -> Option<&str> {
        let params = self.rope_parameters()?;
        params.get("rope_type").or_else(|| params.get("type"))?.as_str()
    }

    /// End-of-sequence ids named by the config (empty when it names none).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    /// Number of trainable parameters of the model this config builds.
    pub fn num_parameters(&self) -> usize {
        let (d, ff, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads * self.head_dim();
        let kv = self.num_kv_heads() * self.head_dim();
        let qkv_bias = if self.qkv_bias() { q + 2 * kv } else { 0 };
        let o_bias = if self.o_bias() { d } else { 0 };
        let attention = d * q + 2 * d * kv + q * d + qkv_bias + o_bias;
        let mlp = 3 * d * ff;
        let layer = attention + mlp + 2 * d;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        v * d + self.num_hidden_layers * layer + d + head
    }

    /// Number of parameters multiplied in a forward pass per token, that is without the
    /// embedding lookup (the LM head counts even when tied).
    pub fn num_matmul_parameters(&self) -> usize {
        let embedding = self.vocab_size * self.hidden_size;
        let head = if self.tie_word_embeddings { embedding } else { 0 };
        self.num_parameters() - embedding + head
    }

    /// Builds a model with freshly initialised weights (normal, std `initializer_range`, biases
    /// zero, norms one) using the backend's RNG; see [`Self::init_seeded`] for reproducible weights.
    ///
    /// # Panics
    ///
    /// If the config does not pass [`Self::validate`].
    pub fn init<B: Backend>(&self, device: &B::Device) -> Transformer<B> {
        if let Err(error) = self.validate() {
            panic!("{error}");
        }
        Transformer::new(self, device)
    }

    /// Initialises from `seed`: the same seed gives the same weights on every backend.
    ///
    /// The weights (every matrix; biases start at zero and norms at one) are drawn on the host
    /// from their own generator, the one the CPU backend seeds for `Backend::seed` (`StdRng`),
    /// in the modules' field order, so on `flex` they are the weights that seeding its RNG and
    /// calling [`Self::init`] gave. They do not come from the backend's RNG, which is global to
    /// the process and drawn lazily (burn initialises a parameter at its first use): other
    /// threads drawing at the same time, or the model's clones initialising on their own,
    /// cannot change them.
    pub fn init_seeded<B: Backend>(&self, seed: u64, device: &B::Device) -> Transformer<B> {
        let mut weights = SeededWeights {
            rng: StdRng::seed_from_u64(seed),
            std: self.initializer_range,
            device: device.clone(),
        };
        self.init(device).map(&mut weights)
    }

    /// A small Qwen2-shaped config (q/k/v biases, grouped-query attention) for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self {
            model_type: "qwen2".to_string(),
            vocab_size: 61,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            max_position_embeddings: 96,
            tie_word_embeddings: false,
            attention_bias: None,
            initializer_range: 0.3,
            ..Self::tiny(61)
        }
    }

    pub(crate) fn initializer(&self) -> Initializer {
        Initializer::Normal {
            mean: 0.0,
            std: self.initializer_range,
        }
    }
}

/// Seeds the backend's RNG and runs `draw` under a process-wide lock: the RNG is global to the
/// process and the tests run on threads, so every test that draws from it does so in here.
#[cfg(test)]
pub(crate) fn with_seed<B: Backend, T>(device: &B::Device, seed: u64, draw: impl FnOnce() -> T) -> T {
    static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = SEEDED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    B::seed(device, seed);
    draw()
}

/// Replaces every matrix of a freshly built model with draws from the normal distribution of
/// its initialiser, from `rng`; vectors (norms, biases) keep their constant initialisers.
struct SeededWeights<B: Backend> {
    rng: StdRng,
    std: f64,
    device: B::Device,
}

impl<B: Backend> ModuleMapper<B> for SeededWeights<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if D != 2 {
            return param;
        }
        let data = TensorData::random::<f32, _, _>(
            param.lazy_shape(),
            Distribution::Normal(0.0, self.std),
            &mut self.rng,
        );
        Param::initialized(param.id, Tensor::from_data(data, &self.device).require_grad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN25_05B: &str = r#"{
      "architectures": ["Qwen2ForCausalLM"],
      "attention_dropout": 0.0,
      "bos_token_id": 151643,
      "eos_token_id": 151645,
      "hidden_act": "silu",
      "hidden_size": 896,
      "initializer_range": 0.02,
      "intermediate_size": 4864,
      "max_position_embeddings": 32768,
      "max_window_layers": 21,
      "model_type": "qwen2",
      "num_attention_heads": 14,
      "num_hidden_layers": 24,
      "num_key_value_heads": 2,
      "rms_norm_eps": 1e-06,
      "rope_theta": 1000000.0,
      "sliding_window": 32768,
      "tie_word_embeddings": true,
      "torch_dtype": "bfloat16",
      "transformers_version": "4.43.1",
      "use_cache": true,
      "use_sliding_window": false,
      "vocab_size": 151936
    }"#;

    #[test]
    fn reads_qwen2_config_and_counts_parameters() {
        let config = TransformerConfig::from_json(QWEN25_05B).unwrap();
        config.validate().unwrap();
        assert_eq!(config.head_dim(), 64);
        assert_eq!(config.num_kv_heads(), 2);
        assert!(config.qkv_bias());
        assert!(!config.o_bias());
        assert!((config.rope_base() - 1e6).abs() < 1e-9);
        assert_eq!(config.eos_ids(), vec![151645]);
        // Qwen2.5-0.5B: 0.49B parameters, 0.36B without the (tied) embedding.
        assert_eq!(config.num_parameters(), 494_032_768);
        assert_eq!(config.num_parameters() - 151_936 * 896, 357_898_112);
    }

    #[test]
    fn built_in_qwen_shape_matches_the_real_config() {
        let real = TransformerConfig::from_json(QWEN25_05B).unwrap();
        let ours = TransformerConfig::qwen2_5_0_5b();
        ours.validate().unwrap();
        assert_eq!(ours.num_parameters(), real.num_parameters());
        assert_eq!(ours.num_matmul_parameters(), real.num_matmul_parameters());
        assert_eq!(
            (ours.head_dim(), ours.num_kv_heads()),
            (real.head_dim(), real.num_kv_heads())
        );
        assert_eq!(ours.qkv_bias(), real.qkv_bias());
        assert_eq!(ours.rope_base(), real.rope_base());
    }

    #[test]
    fn round_trips_hf_json() {
        let config = TransformerConfig::from_json(QWEN25_05B).unwrap();
        let again = TransformerConfig::from_json(&config.to_json()).unwrap();
        assert_eq!(config, again);
        let original: serde_json::Value = serde_json::from_str(QWEN25_05B).unwrap();
        let written: serde_json::Value = serde_json::from_str(&config.to_json()).unwrap();
        assert_eq!(original, written);
    }

    #[test]
    fn llama_eos_list_and_rope_parameters() {
        let text = r#"{"model_type":"llama","vocab_size":100,"hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":2,"num_attention_heads":4,"eos_token_id":[1,2],
            "rope_parameters":{"rope_theta":500000.0,"rope_type":"default"}}"#;
        let config = TransformerConfig::from_json(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.eos_ids(), vec![1, 2]);
        assert_eq!(config.num_kv_heads(), 4);
        assert!(!config.qkv_bias());
        assert!((config.rope_base() - 5e5).abs() < 1e-9);
    }

    #[test]
    fn rejects_bad_configs() {
        let mut config = TransformerConfig::tiny(100);
        config.num_key_value_heads = Some(3);
        assert!(matches!(
            config.validate(),
            Err(PolicyError::InvalidConfig { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("config.json");
        match TransformerConfig::from_file(&missing) {
            Err(PolicyError::MissingFile { path }) => assert_eq!(path, missing),
            other => panic!("expected a missing-file error, got {other:?}"),
        }
        std::fs::write(&missing, "{\"vocab_size\": 12").unwrap();
        assert!(matches!(
            TransformerConfig::from_file(&missing),
            Err(PolicyError::Json { .. })
        ));
    }

    #[test]
    fn tiny_has_a_few_million_parameters() {
        let config = TransformerConfig::tiny(2048);
        config.validate().unwrap();
        let n = config.num_parameters();
        assert!((2_000_000..6_000_000).contains(&n), "{n}");
    }
}
