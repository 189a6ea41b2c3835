//! Loading Hugging Face checkpoints (config.json plus safetensors weights).
//!
//! HF keys are the model's field paths behind a `model.` prefix (`lm_head.weight` has none);
//! PyTorch stores linear weights `[out, in]` where burn stores `[in, out]`, which burn-store's
//! PyTorch adapter transposes. Half-precision weights (bf16, f16) are widened to the backend's
//! float type.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use burn::store::{
    ApplyError, ApplyResult, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
    TensorSnapshot,
};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Element};

use crate::config::TransformerConfig;
use crate::error::PolicyError;
use crate::model::Transformer;

/// Loads an HF model directory: `config.json` and either `model.safetensors` or the shards named
/// by `model.safetensors.index.json`. Weights may be bf16, f16 or f32.
///
/// Every parameter of the model must be present with the right shape; otherwise the error names
/// the tensor. Extra tensors in the files (such as a tied `lm_head.weight`) are ignored.
pub fn load_hf<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(Transformer<B>, TransformerConfig), PolicyError> {
    let _span = tracing::info_span!("load_hf", dir = %dir.display()).entered();
    if !dir.is_dir() {
        return Err(PolicyError::MissingFile {
            path: dir.to_path_buf(),
        });
    }
    let config = TransformerConfig::from_file(&dir.join("config.json"))?;
    let files = weight_files(dir)?;
    let mut model = config.init::<B>(device);
    let mut outcomes = Vec::with_capacity(files.len());
    for file in &files {
        let mut store = SafetensorsStore::from_file(file.clone())
            .with_key_remapping(r"^model\.", "")
            .with_from_adapter(PyTorchToBurnAdapter.chain(CastAdapter::to::<B::FloatElem>()))
            .allow_partial(true)
            .validate(false);
        let result = model
            .load_from(&mut store)
            .map_err(|source| PolicyError::CorruptWeights {
                path: file.clone(),
                source,
            })?;
        outcomes.push(result);
    }
    check_complete(&outcomes, dir)?;
    tracing::info!(
        files = files.len(),
        parameters = config.num_parameters(),
        "loaded HF weights"
    );
    Ok((model, config))
}

/// The safetensors files of an HF directory, sharded or not.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|source| PolicyError::io(&index, source))?;
        let parsed: ShardIndex = serde_json::from_str(&text).map_err(|source| PolicyError::Json {
            path: index.clone(),
            source,
        })?;
        let shards: BTreeSet<String> = parsed.weight_map.into_values().collect();
        let files: Vec<PathBuf> = shards.into_iter().map(|name| dir.join(name)).collect();
        if let Some(missing) = files.iter().find(|file| !file.is_file()) {
            return Err(PolicyError::MissingFile {
                path: missing.clone(),
            });
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if !single.is_file() {
        return Err(PolicyError::MissingFile { path: single });
    }
    Ok(vec![single])
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// Turns the per-file results into one verdict: every parameter applied by some file.
pub(crate) fn check_complete(outcomes: &[ApplyResult], source: &Path) -> Result<(), PolicyError> {
    let path = source.to_path_buf();
    for outcome in outcomes {
        if let Some(error) = outcome.errors.first() {
            return Err(match error.clone() {
                ApplyError::ShapeMismatch {
                    path: name,
                    expected,
                    found,
                } => PolicyError::ShapeMismatch {
                    name,
                    path,
                    expected: expected.to_vec(),
                    found: found.to_vec(),
                },
                ApplyError::DTypeMismatch {
                    path: name,
                    expected,
                    found,
                } => PolicyError::BadTensor {
                    name,
                    path,
                    reason: format!("dtype {found:?} where {expected:?} is expected"),
                },
                ApplyError::AdapterError { path: name, message }
                | ApplyError::LoadError { path: name, message } => PolicyError::BadTensor {
                    name,
                    path,
                    reason: message,
                },
            });
        }
    }
    let applied: BTreeSet<&str> = outcomes
        .iter()
        .flat_map(|o| o.applied.iter().map(String::as_str))
        .collect();
    let missing = outcomes
        .iter()
        .flat_map(|o| o.missing.iter().map(|(name, _)| name.as_str()))
        .find(|name| !applied.contains(name));
    if let Some(name) = missing {
        return Err(PolicyError::MissingTensor {
            name: name.to_string(),
            path,
        });
    }
    let unused: BTreeSet<&str> = outcomes
        .iter()
        .flat_map(|o| o.unused.iter().map(String::as_str))
        .filter(|name| !applied.contains(name))
        .collect();
    if !unused.is_empty() {
        tracing::debug!(?unused, "tensors in the weight files that the model does not use");
    }
    Ok(())
}

/// Converts floating-point tensors to one dtype as they are loaded.
#[derive(Clone, Debug)]
pub(crate) struct CastAdapter {
    target: DType,
}

impl CastAdapter {
    /// Casts to the dtype of element type `E` (the backend's float element).
    pub(crate) fn to<E: Element>() -> Self {
        Self { target: E::dtype() }
    }
}

impl ModuleAdapter for CastAdapter {
    fn adapt(&self, snapshot: &TensorSnapshot) -> TensorSnapshot {
        let is_float = matches!(snapshot.dtype, DType::F64 | DType::F32 | DType::F16 | DType::BF16);
        if !is_float || snapshot.dtype == self.target {
            return snapshot.clone();
        }
        let target = self.target;
        let data = snapshot.clone_data_fn();
        TensorSnapshot::from_closure(
            Rc::new(move || Ok(data()?.convert_dtype(target))),
            target,
            snapshot.shape.clone(),
            snapshot.path_stack.clone().unwrap_or_default(),
            snapshot.container_stack.clone().unwrap_or_default(),
            snapshot.tensor_id.unwrap_or_default(),
        )
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}
