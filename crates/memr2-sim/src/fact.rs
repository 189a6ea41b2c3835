//! Gold facts: what a perfect extractor writes for a chunk of a session.

use serde::{Deserialize, Serialize};

use crate::episode::{DiaId, Episode, Turn};

/// How a fact changes what is known about its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// The attribute had no value before.
    New,
    /// The attribute's value replaces an earlier one.
    Update,
    /// The attribute's value ended without a replacement.
    Remove,
    /// The attribute's current value is mentioned again.
    Restate,
}

/// One gold fact, tied to the turn that states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    /// Who says it.
    pub speaker: String,
    /// The turn that states it.
    pub dia_id: DiaId,
    /// The canonical short sentence ("Alice moved to Lyon"), at most about 20 words.
    pub text: String,
    /// Whom it is about.
    pub subject: String,
    /// Which attribute it is about ([`crate::Attribute::name`] for the synthetic world).
    pub attribute: String,
    /// The new value, or for a removal the value that ended.
    pub value: String,
    /// The kind of change.
    pub change: Change,
    /// The value before this fact (`None` for a new attribute).
    pub previous: Option<String>,
}

/// The gold facts stated by the turns of `chunk`, in dialogue order.
pub fn facts_in_chunk<'a>(episode: &'a Episode, chunk: &[Turn]) -> Vec<&'a Fact> {
    episode
        .facts
        .iter()
        .filter(|f| chunk.iter().any(|t| t.dia_id == f.dia_id))
        .collect()
}
