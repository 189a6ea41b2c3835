//! Checkpoints that resume exactly: weights, optimizer state, RNG, curriculum position and
//! step, each file checksummed, a checkpoint directory replaced atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::Backend;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use memr2_policy::{Transformer, TransformerConfig};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Where training stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
pub enum Phase {
    /// Supervised warm start, after `epochs_done` epochs.
    Sft {
        /// Completed epochs.
        epochs_done: usize,
    },
    /// Tuning the frozen answerer after the warm start, after `epochs_done` epochs.
    Answerer {
        /// Completed epochs.
        epochs_done: usize,
    },
    /// Curriculum stage `stage` (index into the horizons), after `steps_done` steps of it.
    Rl {
        /// Stage index.
        stage: usize,
        /// Completed steps in the stage.
        steps_done: usize,
    },
    /// Training is over; the final evaluation remains or is done.
    Done,
}

/// Everything besides tensors that a resumed run needs to continue bit for bit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Where training stands.
    pub phase: Phase,
    /// RL steps completed over all stages.
    pub step: u64,
    /// The run's random stream.
    pub rng: ChaCha8Rng,
    /// Lines of `metrics.jsonl` written up to this state.
    pub metrics_lines: u64,
    /// Best validation F1 of the current stage and the step it was reached at.
    pub best: Option<(f64, u64)>,
}

const MODEL: &str = "model.bin";
const OPTIM: &str = "optim.bin";
const STATE: &str = "state.json";
/// The actor trained beside the policy (`rl.actor`), when there is one, and its optimizer.
const ACTOR: &str = "actor.bin";
const ACTOR_OPTIM: &str = "actor-optim.bin";

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    model: TransformerConfig,
    state: Option<TrainState>,
    /// CRC32 of each tensor file.
    checksums: BTreeMap<String, u32>,
}

fn corrupt(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn crc_of(path: &Path) -> Result<u32, TrainError> {
    Ok(crc32fast::hash(&std::fs::read(path).map_err(io(path))?))
}

/// Writes a checkpoint directory: the model, optionally an optimizer record and a state. The
/// directory is written beside `dir` and renamed into place, so a crash leaves the previous
/// checkpoint intact.
pub fn save<B: Backend, R: burn::record::Record<B>>(
    dir: &Path,
    model: &Transformer<B>,
    config: &TransformerConfig,
    optim: Option<R>,
    state: Option<&TrainState>,
) -> Result<(), TrainError> {
    save_with_actor(dir, model, config, optim, state, None)
}

/// [`save`], with the actor that RL trains beside the policy (`rl.actor`) and optionally its
/// optimizer record, in the same directory, so that the two are replaced together.
pub fn save_with_actor<B: Backend, R: burn::record::Record<B>>(
    dir: &Path,
    model: &Transformer<B>,
    config: &TransformerConfig,
    optim: Option<R>,
    state: Option<&TrainState>,
    actor: Option<(&Transformer<B>, Option<R>)>,
) -> Result<(), TrainError> {
    let parent = dir
        .parent()
        .ok_or_else(|| corrupt(dir, "checkpoint path has no parent"))?;
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| corrupt(dir, "bad name"))?;
    let tmp = parent.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
    let mut checksums = BTreeMap::new();
    // Writes one record and its checksum.
    fn write<B: Backend, R: burn::record::Record<B>>(
        recorder: &BinFileRecorder<FullPrecisionSettings>,
        checksums: &mut BTreeMap<String, u32>,
        dir: &Path,
        file: &str,
        record: R,
    ) -> Result<(), TrainError> {
        let path = dir.join(file);
        recorder
            .record(record, path.clone())
            .map_err(|e| corrupt(&path, e.to_string()))?;
        checksums.insert(file.to_string(), crc_of(&path)?);
        Ok(())
    }
    write::<B, _>(
        &recorder,
        &mut checksums,
        &tmp,
        MODEL,
        model.clone().into_record(),
    )?;
    if let Some(record) = optim {
        write::<B, _>(&recorder, &mut checksums, &tmp, OPTIM, record)?;
    }
    if let Some((actor, actor_optim)) = actor {
        write::<B, _>(
            &recorder,
            &mut checksums,
            &tmp,
            ACTOR,
            actor.clone().into_record(),
        )?;
        if let Some(record) = actor_optim {
            write::<B, _>(&recorder, &mut checksums, &tmp, ACTOR_OPTIM, record)?;
        }
    }
    let manifest = Manifest {
        format: 1,
        model: config.clone(),
        state: state.cloned(),
        checksums,
    };
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
    let state_path = tmp.join(STATE);
    std::fs::write(&state_path, text).map_err(io(&state_path))?;

    let old = parent.join(format!(".{name}.old"));
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        std::fs::rename(dir, &old).map_err(io(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io(dir))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}

/// A checkpoint read back and verified.
pub struct Loaded<B: Backend> {
    /// The model.
    pub model: Transformer<B>,
    /// Its architecture.
    pub config: TransformerConfig,
    /// The training state, when the checkpoint has one.
    pub state: Option<TrainState>,
    /// The actor trained beside the policy (`rl.actor`), when the checkpoint has one.
    pub actor: Option<Transformer<B>>,
    /// Where the optimizer record is, when there is one (verified).
    optim: Option<PathBuf>,
    /// Where the actor's optimizer record is, when there is one (verified).
    actor_optim: Option<PathBuf>,
}

impl<B: Backend> Loaded<B> {
    /// The optimizer record, when the checkpoint has one.
    pub fn optimizer<R: burn::record::Record<B>>(&self, device: &B::Device) -> Result<Option<R>, TrainError> {
        load_optimizer(self.optim.as_deref(), device)
    }

    /// The actor's optimizer record, when the checkpoint has one.
    pub fn actor_optimizer<R: burn::record::Record<B>>(
        &self,
        device: &B::Device,
    ) -> Result<Option<R>, TrainError> {
        load_optimizer(self.actor_optim.as_deref(), device)
    }
}

fn load_optimizer<B: Backend, R: burn::record::Record<B>>(
    path: Option<&Path>,
    device: &B::Device,
) -> Result<Option<R>, TrainError> {
    let Some(path) = path else { return Ok(None) };
    BinFileRecorder::<FullPrecisionSettings>::new()
        .load(path.to_path_buf(), device)
        .map(Some)
        .map_err(|e| corrupt(path, format!("optimizer state does not load: {e}")))
}

/// The directory to read: `dir`, or the previous copy left by an interrupted save.
fn resolve(dir: &Path) -> PathBuf {
    if dir.join(STATE).exists() {
        return dir.to_path_buf();
    }
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let old = dir.parent().map(|p| p.join(format!(".{name}.old")));
    match old {
        Some(old) if old.join(STATE).exists() => old,
        _ => dir.to_path_buf(),
    }
}

/// Reads a checkpoint directory, verifying every checksum before loading tensors.
pub fn load<B: Backend>(dir: &Path, device: &B::Device) -> Result<Loaded<B>, TrainError> {
    let dir = resolve(dir);
    if !dir.is_dir() {
        return Err(corrupt(&dir, "no checkpoint directory here"));
    }
    let state_path = dir.join(STATE);
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| corrupt(&state_path, format!("malformed: {e}")))?;
    if manifest.format != 1 {
        return Err(corrupt(
            &state_path,
            format!("unknown checkpoint format {}", manifest.format),
        ));
    }
    for (file, expected) in &manifest.checksums {
        let path = dir.join(file);
        let actual = crc_of(&path)?;
        if actual != *expected {
            return Err(corrupt(
                &path,
                format!("checksum mismatch (expected {expected:08x}, found {actual:08x})"),
            ));
        }
    }
    if !manifest.checksums.contains_key(MODEL) {
        return Err(corrupt(&dir, "checkpoint has no model"));
    }
    let weights = |file: &str| -> Result<Transformer<B>, TrainError> {
        let path = dir.join(file);
        let record = BinFileRecorder::<FullPrecisionSettings>::new()
            .load(path.clone(), device)
            .map_err(|e| corrupt(&path, format!("weights do not load: {e}")))?;
        Ok(manifest.model.init::<B>(device).load_record(record))
    };
    let model = weights(MODEL)?;
    let actor = manifest
        .checksums
        .contains_key(ACTOR)
        .then(|| weights(ACTOR))
        .transpose()?;
    let listed = |file: &str| manifest.checksums.contains_key(file).then(|| dir.join(file));
    Ok(Loaded {
        model,
        config: manifest.model.clone(),
        state: manifest.state.clone(),
        actor,
        optim: listed(OPTIM),
        actor_optim: listed(ACTOR_OPTIM),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use rand::SeedableRng;

    type B = Flex;

    fn tiny() -> TransformerConfig {
        let mut c = TransformerConfig::tiny(300);
        c.hidden_size = 32;
        c.intermediate_size = 64;
        c.num_hidden_layers = 1;
        c.num_attention_heads = 2;
        c.num_key_value_heads = Some(2);
        c
    }

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let device = Default::default();
        let config = tiny();
        let model = config.init::<B>(&device);
        let state = TrainState {
            phase: Phase::Rl {
                stage: 1,
                steps_done: 3,
            },
            step: 7,
            rng: ChaCha8Rng::seed_from_u64(5),
            metrics_lines: 7,
            best: Some((0.5, 6)),
        };
        let path = dir.path().join("latest");
        save::<B, ()>(&path, &model, &config, None, Some(&state)).unwrap();
        // Saving again replaces the checkpoint atomically.
        save::<B, ()>(&path, &model, &config, None, Some(&state)).unwrap();
        let loaded = load::<B>(&path, &device).unwrap();
        assert_eq!(loaded.state.as_ref(), Some(&state));

        // A flipped byte in the weights is caught by the checksum.
        let weights = path.join(MODEL);
        let mut bytes = std::fs::read(&weights).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&weights, &bytes).unwrap();
        let err = load::<B>(&path, &device)
            .err()
            .expect("corrupt weights must not load")
            .to_string();
        assert!(err.contains("checksum"), "{err}");

        // Truncated manifest and missing directory are errors too.
        std::fs::write(path.join(STATE), "{\"format\":").unwrap();
        assert!(load::<B>(&path, &device).is_err());
        assert!(load::<B>(&dir.path().join("nothing"), &device).is_err());
    }

    #[test]
    fn the_actor_travels_with_the_policy() {
        use burn::tensor::Tensor;
        let dir = tempfile::tempdir().unwrap();
        let device = Default::default();
        let config = tiny();
        let model = config.init::<B>(&device);
        let actor = config.init::<B>(&device);
        let flat = |m: &Transformer<B>| -> Vec<f32> {
            let tokens = Tensor::<B, 2, burn::tensor::Int>::from_data([[1i64, 2, 3]], &device);
            let mask = Tensor::<B, 2, burn::tensor::Bool>::from_data([[true, true, true]], &device);
            m.forward(tokens, mask).into_data().to_vec().unwrap()
        };
        // Parameters are drawn when first used: draw them before saving.
        let (policy_out, actor_out) = (flat(&model), flat(&actor));
        let path = dir.path().join("best");
        save_with_actor::<B, ()>(&path, &model, &config, None, None, Some((&actor, None))).unwrap();
        let loaded = load::<B>(&path, &device).unwrap();
        let back = loaded.actor.as_ref().expect("the actor was saved");
        assert_eq!(flat(back), actor_out);
        assert_eq!(flat(&loaded.model), policy_out);
        assert_ne!(actor_out, policy_out, "actor and policy are different weights");
        assert!(loaded.actor_optimizer::<()>(&device).unwrap().is_none());

        // A checkpoint without one has none; a damaged actor is caught like the policy.
        save::<B, ()>(&dir.path().join("plain"), &model, &config, None, None).unwrap();
        assert!(
            load::<B>(&dir.path().join("plain"), &device)
                .unwrap()
                .actor
                .is_none()
        );
        let weights = path.join(ACTOR);
        let mut bytes = std::fs::read(&weights).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&weights, &bytes).unwrap();
        let err = load::<B>(&path, &device)
            .err()
            .expect("a corrupt actor must not load")
            .to_string();
        assert!(err.contains("checksum") && err.contains(ACTOR), "{err}");
    }
}
