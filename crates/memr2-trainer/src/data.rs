//! The environments a configuration names (the synthetic world, or a data file in one of the
//! formats `memr2_sim::load_dataset` tells apart), and the three splits of any environment.

use memr2_sim::{Environment, Episode, Locomo, Split, SyntheticWorld};

use crate::TrainError;
use crate::config::DataSpec;

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
        DataSpec::Synthetic { seed, .. } => {
            let world = spec.synthetic_world().expect("a synthetic spec");
            Box::new(SyntheticWorld::new(world, *seed)?)
        }
        DataSpec::Locomo { path } => {
            let locomo = Locomo::load(path)?;
            for skipped in locomo.skipped() {
                tracing::info!(%skipped, "locomo: skipped");
            }
            Box::new(locomo)
        }
        DataSpec::File { path } => memr2_sim::load_dataset(path)?,
        DataSpec::Drift {
            seed,
            drift,
            train_per_cell,
        } => Box::new(
            memr2_drift::DriftEnvironment::generated_with(*seed, *train_per_cell, *drift)
                .map_err(|e| TrainError::Invalid(format!("drift environment: {e}")))?,
        ),
        DataSpec::External { name } => {
            return Err(TrainError::Invalid(format!(
                "environment {name} is defined by the program that trained this run, not by memr2; \
                 use that program (memr2's library API, `train::run_with`) to resume or evaluate it"
            )));
        }
    })
}

impl Splits {
    /// Every split of an environment; one without training episodes is an error.
    pub fn of(env: &dyn Environment) -> Result<Splits, TrainError> {
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
}

/// Loads every split of the environment a spec names.
pub fn splits(spec: &DataSpec) -> Result<Splits, TrainError> {
    Splits::of(environment(spec)?.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrainConfig;
    use crate::config::WorldSize;

    fn world(questions: Option<usize>, test_episodes: Option<usize>) -> Splits {
        splits(&DataSpec::Synthetic {
            size: WorldSize::Default,
            seed: 7,
            questions,
            test_episodes,
        })
        .unwrap()
    }

    fn synthetic(questions: Option<usize>) -> Splits {
        world(questions, None)
    }

    #[test]
    fn a_larger_test_split_keeps_its_first_conversations_and_the_other_splits() {
        let (base, more) = (world(None, None), world(None, Some(80)));
        assert_eq!((base.test.len(), more.test.len()), (64, 80));
        assert_eq!(base.train, more.train);
        assert_eq!(base.validation, more.validation);
        assert_eq!(base.test[..], more.test[..64]);
        assert!(more.test[64..].iter().all(|e| !base.test.contains(e)));
    }

    #[test]
    fn asking_for_more_test_conversations_than_the_world_holds_is_an_error_naming_the_fix() {
        let mut config = TrainConfig::default_cpu();
        config.eval.test_episodes = 256;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("eval.test_episodes = 256") && err.contains("data.test_episodes"));
        if let DataSpec::Synthetic { test_episodes, .. } = &mut config.data {
            *test_episodes = Some(256);
        }
        config.validate().unwrap();
        assert_eq!(splits(&config.data).unwrap().test.len(), 256);
    }

    #[test]
    fn more_questions_leave_the_conversations_as_they_are() {
        let (base, more) = (synthetic(None), synthetic(Some(48)));
        for (a, b) in [(&base.train, &more.train), (&base.test, &more.test)] {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                assert_eq!(x.sessions, y.sessions);
                assert_eq!(x.facts, y.facts);
                assert_eq!(x.questions.len(), 16);
                assert!(y.questions.len() > 32, "{}", y.questions.len());
            }
        }
        let total: usize = more.test.iter().map(|e| e.questions.len()).sum();
        eprintln!("test questions at 48 per conversation: {total}");
    }
}
