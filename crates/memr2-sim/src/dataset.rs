//! Datasets users bring as files: telling their format from their content, loading them as an
//! [`Environment`], and the split rule shared by the formats whose files name no split.
//!
//! | format | detected by | loader |
//! |---|---|---|
//! | LoCoMo (`locomo10.json`) | a JSON array whose first element has `conversation` and `qa` | [`crate::Locomo`] |
//! | LongMemEval (`longmemeval_s/_m/_oracle.json`) | a JSON array whose first element has `haystack_sessions` | [`crate::LongMemEval`] |
//! | memr2 episodes (JSON Lines) | a first non-blank line that is an object with `sessions` | [`crate::EpisodeFile`] |

use std::path::Path;

use serde_json::Value;

use crate::episode::{Environment, Split};
use crate::episodes_file::EpisodeFile;
use crate::error::SimError;
use crate::locomo::Locomo;
use crate::longmemeval::LongMemEval;

/// The file formats [`load_dataset`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataFormat {
    /// The LoCoMo benchmark (`locomo10.json`).
    Locomo,
    /// LongMemEval (`longmemeval_s.json`, `longmemeval_m.json`, `longmemeval_oracle.json`).
    LongMemEval,
    /// memr2's JSON Lines episodes ([`crate::episodes_file`]).
    Episodes,
}

impl DataFormat {
    /// Every format.
    pub const ALL: [DataFormat; 3] = [DataFormat::Locomo, DataFormat::LongMemEval, DataFormat::Episodes];

    /// Short lower-case name, the first word of the loaded environment's name.
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Locomo => "locomo",
            DataFormat::LongMemEval => "longmemeval",
            DataFormat::Episodes => "episodes",
        }
    }

    /// What identifies the format, for error messages.
    fn signature(self) -> &'static str {
        match self {
            DataFormat::Locomo => "LoCoMo (a JSON array whose first element has \"conversation\" and \"qa\")",
            DataFormat::LongMemEval => {
                "LongMemEval (a JSON array whose first element has \"haystack_sessions\")"
            }
            DataFormat::Episodes => {
                "memr2 episodes (JSON Lines whose first line is an object with \"sessions\")"
            }
        }
    }
}

/// The name of an environment loaded from a file: `locomo (data/locomo10.json)`.
pub(crate) fn environment_name(format: DataFormat, path: &Path) -> String {
    format!("{} ({})", format.name(), path.display())
}

/// Tells a dataset's format from its content; `None` when it is none of [`DataFormat::ALL`].
///
/// Only the first element of an array (or the first non-blank line) is parsed, so a file
/// truncated further on is still recognised and its loader reports where it breaks.
pub fn detect_format(text: &str) -> Option<DataFormat> {
    let trimmed = text.trim_start();
    if let Some(rest) = trimmed.strip_prefix('[') {
        let first = serde_json::Deserializer::from_str(rest)
            .into_iter::<Value>()
            .next()?
            .ok()?;
        let has = |key: &str| first.get(key).is_some();
        return if has("conversation") && has("qa") {
            Some(DataFormat::Locomo)
        } else if has("haystack_sessions") {
            Some(DataFormat::LongMemEval)
        } else {
            None
        };
    }
    let line = text.lines().find(|l| !l.trim().is_empty())?;
    let first: Value = serde_json::from_str(line).ok()?;
    first.get("sessions").is_some().then_some(DataFormat::Episodes)
}

/// Loads a dataset file of any format in [`DataFormat::ALL`], told by its content. An
/// unreadable file, content of no known format, and every loader error name the file.
pub fn load_dataset(path: &Path) -> Result<Box<dyn Environment>, SimError> {
    let text = read_data_file(path)?;
    Ok(match detect_format(&text) {
        Some(DataFormat::Locomo) => Box::new(Locomo::from_json_str(&text, path)?),
        Some(DataFormat::LongMemEval) => Box::new(LongMemEval::from_json_str(&text, path)?),
        Some(DataFormat::Episodes) => Box::new(EpisodeFile::from_jsonl_str(&text, path)?),
        None => {
            let formats: Vec<&str> = DataFormat::ALL.iter().map(|f| f.signature()).collect();
            return Err(SimError::Schema {
                path: path.into(),
                what: format!("unknown dataset format, expected one of: {}", formats.join("; ")),
            });
        }
    })
}

/// 64-bit FNV-1a hash: stable across runs, platforms and Rust versions (unlike std's hasher).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The split of a record that names none, from its id alone: with `b = fnv1a64(id) % 10`,
/// validation when `b == 0`, test when `b` is 1 or 2, train otherwise (about 10% / 20% / 70%).
/// Adding, removing or reordering records leaves every other record's split as it was.
pub fn split_by_id(id: &str) -> Split {
    match fnv1a64(id.as_bytes()) % 10 {
        0 => Split::Validation,
        1 | 2 => Split::Test,
        _ => Split::Train,
    }
}

/// The text of a data file; a missing or unreadable file is an error naming it.
pub(crate) fn read_data_file(path: &Path) -> Result<String, SimError> {
    std::fs::read_to_string(path).map_err(|source| SimError::Io {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn split_by_id_is_near_10_20_70() {
        let mut counts = [0usize; 3];
        for i in 0..10_000 {
            match split_by_id(&format!("q{i:05}")) {
                Split::Validation => counts[0] += 1,
                Split::Test => counts[1] += 1,
                Split::Train => counts[2] += 1,
            }
        }
        assert!((800..1_200).contains(&counts[0]), "{counts:?}");
        assert!((1_700..2_300).contains(&counts[1]), "{counts:?}");
        assert!((6_500..7_500).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn detection_reads_only_the_first_record() {
        assert_eq!(
            detect_format(r#" [{"conversation": {}, "qa": []}, {"trunc"#),
            Some(DataFormat::Locomo)
        );
        assert_eq!(
            detect_format(r#"[{"question_id": "a", "haystack_sessions": []}"#),
            Some(DataFormat::LongMemEval)
        );
        assert_eq!(
            detect_format("\n\n{\"id\": \"e\", \"sessions\": []}\n{\"id\""),
            Some(DataFormat::Episodes)
        );
        assert_eq!(detect_format("[]"), None);
        assert_eq!(detect_format(r#"[{"qa": []}]"#), None);
        assert_eq!(detect_format(r#"{"id": "e"}"#), None);
        assert_eq!(detect_format(""), None);
        assert_eq!(detect_format("not json"), None);
    }
}
