//! Parity with the Hugging Face reference: tiny random Qwen2 checkpoints made by
//! `scripts/make_parity_fixture.py`, their logits and greedy tokens from `transformers`, and the
//! token ids of their `tokenizer.json`.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use memr2_policy::{PolicyError, SamplingConfig, Transformer, generate, load_hf};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

type B = Flex;

#[derive(Deserialize)]
struct Reference {
    prompts: Vec<String>,
    ids: Vec<Vec<u32>>,
    greedy: Vec<Vec<u32>>,
    batch: BatchReference,
}

#[derive(Deserialize)]
struct BatchReference {
    input_ids: Vec<Vec<i64>>,
    attention_mask: Vec<Vec<i64>>,
    /// `[batch, seq, vocab]`.
    logits: Vec<Vec<Vec<f32>>>,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn reference(dir: &Path) -> Reference {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

fn forward(model: &Transformer<B>, ids: &[Vec<i64>], mask: &[Vec<bool>]) -> Vec<f32> {
    let device = Default::default();
    let (rows, width) = (ids.len(), ids[0].len());
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.concat(), [rows, width]), &device);
    let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(mask.concat(), [rows, width]), &device);
    model.forward(tokens, mask).into_data().iter::<f32>().collect()
}

fn max_difference(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn check_fixture(name: &str) {
    let dir = fixture(name);
    let reference = reference(&dir);
    let (model, config) = load_hf::<B>(&dir, &Default::default()).unwrap();
    let vocab = config.vocab_size;

    // Left-padded batch, positions from the mask: real positions match.
    let batch = &reference.batch;
    let mask: Vec<Vec<bool>> = batch
        .attention_mask
        .iter()
        .map(|row| row.iter().map(|&m| m == 1).collect())
        .collect();
    let ours = forward(&model, &batch.input_ids, &mask);
    let width = batch.input_ids[0].len();
    for (b, row_mask) in mask.iter().enumerate() {
        for (j, _) in row_mask.iter().enumerate().filter(|(_, real)| **real) {
            let at = (b * width + j) * vocab;
            let diff = max_difference(&ours[at..at + vocab], &batch.logits[b][j]);
            assert!(
                diff < 1e-4,
                "{name}: batch row {b} position {j} differs by {diff}"
            );
        }
    }

    // Each prompt alone matches the real part of its padded row.
    for (b, ids) in reference.ids.iter().enumerate() {
        let ids: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
        let ours = forward(&model, std::slice::from_ref(&ids), &[vec![true; ids.len()]]);
        let pad = width - ids.len();
        let theirs: Vec<f32> = batch.logits[b][pad..].concat();
        let diff = max_difference(&ours, &theirs);
        assert!(diff < 1e-4, "{name}: prompt {b} alone differs by {diff}");
    }

    // Greedy generation with the KV cache gives HF's tokens, all prompts in one batch.
    let generated = generate(
        &model,
        &reference.ids,
        &SamplingConfig::greedy(6),
        &[],
        &mut ChaCha8Rng::seed_from_u64(0),
    );
    for (generation, expected) in generated.iter().zip(&reference.greedy) {
        assert_eq!(&generation.tokens, expected, "{name}: greedy tokens");
    }
}

#[test]
fn untied_f32_qwen2_matches_transformers() {
    check_fixture("tiny-qwen2");
}

#[test]
fn tied_bf16_qwen2_matches_transformers() {
    check_fixture("tiny-qwen2-tied");
}

#[test]
fn tokenizer_json_gives_the_reference_ids() {
    for name in ["tiny-qwen2", "tiny-qwen2-tied"] {
        let dir = fixture(name);
        let reference = reference(&dir);
        let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        for (text, ids) in reference.prompts.iter().zip(&reference.ids) {
            let encoding = tokenizer.encode(text.as_str(), false).unwrap();
            assert_eq!(encoding.get_ids(), ids.as_slice(), "{name}: {text:?}");
        }
    }
}

fn copy_fixture(into: &Path) {
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny-qwen2").join(file), into.join(file)).unwrap();
    }
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config[key] = value;
    std::fs::write(&path, config.to_string()).unwrap();
}

#[test]
fn sharded_layout_loads_through_its_index() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    let shard = "model-00001-of-00001.safetensors";
    std::fs::rename(dir.path().join("model.safetensors"), dir.path().join(shard)).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": {"model.embed_tokens.weight": shard, "lm_head.weight": shard}});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    load_hf::<B>(dir.path(), &Default::default()).unwrap();

    // An index naming an absent shard is an error naming it.
    let index = serde_json::json!({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    match load_hf::<B>(dir.path(), &Default::default()) {
        Err(PolicyError::MissingFile { path }) => assert!(path.ends_with("model-00002-of-00002.safetensors")),
        other => panic!("expected a missing shard, got {:?}", other.err()),
    }
}

#[test]
fn missing_files_and_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    match load_hf::<B>(&dir.path().join("absent"), &Default::default()) {
        Err(PolicyError::MissingFile { path }) => assert!(path.ends_with("absent")),
        other => panic!("expected a missing directory, got {:?}", other.err()),
    }
    match load_hf::<B>(dir.path(), &Default::default()) {
        Err(PolicyError::MissingFile { path }) => assert!(path.ends_with("config.json")),
        other => panic!("expected a missing config, got {:?}", other.err()),
    }
    copy_fixture(dir.path());
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    match load_hf::<B>(dir.path(), &Default::default()) {
        Err(PolicyError::MissingFile { path }) => assert!(path.ends_with("model.safetensors")),
        other => panic!("expected missing weights, got {:?}", other.err()),
    }

    // One layer more than the file holds: the first absent tensor is named.
    copy_fixture(dir.path());
    edit_config(dir.path(), "num_hidden_layers", 3.into());
    match load_hf::<B>(dir.path(), &Default::default()) {
        Err(PolicyError::MissingTensor { name, .. }) => assert!(name.starts_with("layers.2."), "{name}"),
        other => panic!("expected a missing tensor, got {:?}", other.err()),
    }

    // A wider MLP than the file holds: the mismatched tensor is named.
    copy_fixture(dir.path());
    edit_config(dir.path(), "intermediate_size", 80.into());
    match load_hf::<B>(dir.path(), &Default::default()) {
        Err(PolicyError::ShapeMismatch { name, .. }) => assert!(name.contains("mlp"), "{name}"),
        other => panic!("expected a shape mismatch, got {:?}", other.err()),
    }

    // Truncated weights are an error, not a panic.
    copy_fixture(dir.path());
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    assert!(load_hf::<B>(dir.path(), &Default::default()).is_err());
}
