//! Episodes for training, validation and test, from the synthetic world or LoCoMo.

use memr2_sim::{Environment, Episode, Locomo, Split, SyntheticWorld, WorldConfig};

use crate::TrainError;
use crate::config::{DataSpec, WorldSize};

/// The three splits of an environment.
#[derive(Clone, Debug)]
pub struct Splits {
    /// Training conversations.
    pub train: Vec<Episode>,
    /// Validation conversations (best-checkpoint selection).
    pub validation: Vec<Episode>,
    /// Held-out test conversations.
    pub test: Vec<Episode>,
}

/// Builds the environment a spec names. A missing or malformed data file is an error naming it.
pub fn environment(spec: &DataSpec) -> Result<Box<dyn Environment>, TrainError> {
    Ok(match spec {
        DataSpec::Synthetic { size, seed } => {
            let config = match size {
                WorldSize::Default => WorldConfig::default_cpu(),
                WorldSize::Smoke => WorldConfig::smoke(),
            };
            Box::new(SyntheticWorld::new(config, *seed)?)
        }
        DataSpec::Locomo { path } => {
            let locomo = Locomo::load(path)?;
            for skipped in locomo.skipped() {
                tracing::info!(%skipped, "locomo: skipped");
            }
            Box::new(locomo)
        }
    })
}

/// Loads every split.
pub fn splits(spec: &DataSpec) -> Result<Splits, TrainError> {
    let env = environment(spec)?;
    let splits = Splits {
        train: env.episodes(Split::Train),
        validation: env.episodes(Split::Validation),
        test: env.episodes(Split::Test),
    };
    if splits.train.is_empty() {
        return Err(TrainError::Invalid(format!(
            "environment {} has no training episodes",
            env.name()
        )));
    }
    Ok(splits)
}
