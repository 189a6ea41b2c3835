//! Our own checkpoint format: one safetensors file holding the weights (burn layout) and, in its
//! metadata, the model config, so a checkpoint is self-describing.

use std::io::Read;
use std::path::{Path, PathBuf};

use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::backend::Backend;

use crate::config::TransformerConfig;
use crate::error::PolicyError;
use crate::model::Transformer;
use crate::weights::check_complete;

/// Metadata key holding the config JSON.
const CONFIG_KEY: &str = "memr2.policy.config";
/// Metadata key holding the format tag.
const FORMAT_KEY: &str = "memr2.policy.format";
/// Current format tag.
const FORMAT: &str = "memr2-policy/1";

/// Writes `model` and `config` to `path` (a single `.safetensors` file).
///
/// The file is written next to its destination and renamed into place, so a crash during the
/// write leaves any previous checkpoint intact.
pub fn save_checkpoint<B: Backend>(
    model: &Transformer<B>,
    config: &TransformerConfig,
    path: &Path,
) -> Result<(), PolicyError> {
    let _span = tracing::info_span!("save_checkpoint", path = %path.display()).entered();
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut store = SafetensorsStore::from_file(partial.clone())
        .metadata(FORMAT_KEY, FORMAT)
        .metadata(CONFIG_KEY, serde_json::to_string(config).unwrap_or_default())
        .overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|source| PolicyError::CorruptWeights {
            path: partial.clone(),
            source,
        })?;
    std::fs::rename(&partial, path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a checkpoint written by [`save_checkpoint`]; a missing, truncated or foreign file is an
/// error naming the path.
pub fn load_checkpoint<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(Transformer<B>, TransformerConfig), PolicyError> {
    let _span = tracing::info_span!("load_checkpoint", path = %path.display()).entered();
    let config = read_config(path)?;
    config.validate()?;
    let mut model = config.init::<B>(device);
    let mut store = SafetensorsStore::from_file(path.to_path_buf())
        .allow_partial(true)
        .validate(false);
    let outcome = model
        .load_from(&mut store)
        .map_err(|source| PolicyError::CorruptWeights {
            path: path.to_path_buf(),
            source,
        })?;
    check_complete(&[outcome], path)?;
    Ok((model, config))
}

/// The config stored in a checkpoint's safetensors header.
pub fn read_config(path: &Path) -> Result<TransformerConfig, PolicyError> {
    let not_ours = |reason: &str| PolicyError::NotACheckpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    let mut file = std::fs::File::open(path).map_err(|source| PolicyError::io(path, source))?;
    let size = file
        .metadata()
        .map_err(|source| PolicyError::io(path, source))?
        .len();
    let mut prefix = [0_u8; 8];
    file.read_exact(&mut prefix)
        .map_err(|_| not_ours("shorter than a safetensors header"))?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > size.saturating_sub(8) || header_len > 100 << 20 {
        return Err(not_ours("header length exceeds the file"));
    }
    let mut header = vec![0_u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|_| not_ours("truncated header"))?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|source| PolicyError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let metadata = header
        .get("__metadata__")
        .ok_or_else(|| not_ours("no metadata"))?;
    if metadata.get(FORMAT_KEY).and_then(|v| v.as_str()) != Some(FORMAT) {
        return Err(not_ours("no memr2 format tag"));
    }
    let config = metadata
        .get(CONFIG_KEY)
        .and_then(|v| v.as_str())
        .ok_or_else(|| not_ours("no config"))?;
    TransformerConfig::from_json(config).map_err(|source| PolicyError::Json {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::tensor::{Bool, Int, Tensor, TensorData};

    type B = TestBackend;

    fn logits(model: &Transformer<B>) -> Vec<f32> {
        let device = Default::default();
        let tokens =
            Tensor::<B, 2, Int>::from_data(TensorData::new(vec![3_i64, 1, 4, 1, 5], [1, 5]), &device);
        let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(vec![true; 5], [1, 5]), &device);
        model.forward(tokens, mask).into_data().iter::<f32>().collect()
    }

    #[test]
    fn round_trip_restores_weights_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.safetensors");
        for config in [TransformerConfig::for_tests(), TransformerConfig::tiny(50)] {
            let model = config.init_seeded::<B>(13, &Default::default());
            save_checkpoint(&model, &config, &path).unwrap();
            // Overwriting an existing checkpoint works.
            save_checkpoint(&model, &config, &path).unwrap();
            let (loaded, loaded_config) = load_checkpoint::<B>(&path, &Default::default()).unwrap();
            assert_eq!(loaded_config, config);
            let worst = logits(&model)
                .iter()
                .zip(logits(&loaded))
                .map(|(a, b)| (a - b).abs())
                .fold(0.0_f32, f32::max);
            assert!(worst < 1e-6, "{worst}");
        }
    }

    #[test]
    fn missing_truncated_and_foreign_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.safetensors");
        match load_checkpoint::<B>(&missing, &Default::default()) {
            Err(PolicyError::MissingFile { path }) => assert_eq!(path, missing),
            other => panic!("expected a missing-file error, got {:?}", other.err()),
        }

        let config = TransformerConfig::for_tests();
        let model = config.init_seeded::<B>(5, &Default::default());
        let path = dir.path().join("policy.safetensors");
        save_checkpoint(&model, &config, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();

        let truncated = dir.path().join("truncated.safetensors");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let error = load_checkpoint::<B>(&truncated, &Default::default())
            .err()
            .unwrap();
        assert!(error.to_string().contains("truncated.safetensors"), "{error}");

        let garbage = dir.path().join("garbage.safetensors");
        std::fs::write(&garbage, b"not a checkpoint at all").unwrap();
        assert!(matches!(
            load_checkpoint::<B>(&garbage, &Default::default()),
            Err(PolicyError::NotACheckpoint { .. })
        ));

        // A checkpoint of a different shape names the first tensor that does not fit.
        let mut other = config.clone();
        other.hidden_size = 48;
        let other_path = dir.path().join("other.safetensors");
        save_checkpoint(
            &other.init_seeded::<B>(5, &Default::default()),
            &config,
            &other_path,
        )
        .unwrap();
        match load_checkpoint::<B>(&other_path, &Default::default()) {
            Err(PolicyError::ShapeMismatch { name, .. }) => assert!(!name.is_empty()),
            other => panic!("expected a shape mismatch, got {:?}", other.err()),
        }
    }
}
