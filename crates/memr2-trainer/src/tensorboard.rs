//! TensorBoard scalars beside `metrics.jsonl`: every number of every record, as it is
//! appended, in `RUN_DIR/tensorboard/`, so that `tensorboard --logdir runs/` follows runs live.
//!
//! The event files mirror the log exactly: when a run resumes and its log is cut back to the
//! checkpoint, the events are rewritten from the kept lines, so that TensorBoard never shows
//! steps the resumed run took again. The files are written by `syntaxdot-summary` (scalars in
//! TensorFlow's event format, one dependency on `prost`); the reasons are in
//! docs/ARCHITECTURE.md.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use serde_json::Value;
use syntaxdot_summary::SummaryWriter;

use crate::TrainError;

/// A record's scalars: the step they belong to, and `(tag, value)` pairs.
pub type Scalars = (i64, Vec<(String, f64)>);

/// The scalars of a metrics record, tagged by the phase that wrote it (`sft/`, `answerer/`,
/// `rl/`, `validation/`) and the record's own JSON path; `None` for a record of no known
/// phase.
pub fn scalars(record: &Value) -> Option<Scalars> {
    let (prefix, x) = if record.get("sft_epoch").is_some() {
        ("sft", "sft_epoch")
    } else if record.get("answerer_epoch").is_some() {
        ("answerer", "answerer_epoch")
    } else if record.get("validation_f1").is_some() {
        ("validation", "step")
    } else if record.get("step").is_some() {
        ("rl", "step")
    } else {
        return None;
    };
    let step = record.get(x)?.as_i64()?;
    let mut out = Vec::new();
    flatten(record, prefix, &mut out);
    out.retain(|(tag, _)| *tag != format!("{prefix}/{x}"));
    if prefix == "validation" {
        for (tag, _) in &mut out {
            *tag = match tag.strip_prefix("validation/validation_") {
                Some("s") => "validation/seconds".to_string(),
                Some(rest) => format!("validation/{rest}"),
                None => tag.clone(),
            };
        }
    }
    Some((step, out))
}

fn flatten(value: &Value, path: &str, out: &mut Vec<(String, f64)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                flatten(v, &format!("{path}/{key}"), out);
            }
        }
        Value::Number(n) => {
            if let Some(v) = n.as_f64().filter(|v| v.is_finite()) {
                out.push((path.to_string(), v));
            }
        }
        Value::Bool(b) => out.push((path.to_string(), f64::from(u8::from(*b)))),
        _ => {}
    }
}

/// An event file in a run's `tensorboard/` directory.
pub struct TensorBoard {
    dir: PathBuf,
    writer: SummaryWriter<BufWriter<File>>,
}

impl TensorBoard {
    /// Starts the run's event file afresh, removing earlier ones, and writes `records` (the
    /// metrics log's kept lines) into it.
    pub fn create(dir: &Path, records: &[Value]) -> Result<Self, TrainError> {
        let io = |source| TrainError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains(".tfevents."))
            {
                std::fs::remove_file(&path).map_err(io)?;
            }
        }
        let writer = SummaryWriter::from_prefix(dir.join("memr2")).map_err(io)?;
        let mut board = Self {
            dir: dir.to_path_buf(),
            writer,
        };
        for record in records {
            board.write(record)?;
        }
        Ok(board)
    }

    /// Appends a record's scalars (and flushes them, so TensorBoard sees them at once).
    pub fn write(&mut self, record: &Value) -> Result<(), TrainError> {
        let Some((step, scalars)) = scalars(record) else {
            return Ok(());
        };
        for (tag, value) in scalars {
            self.writer
                .write_scalar(tag, step, value as f32)
                .map_err(|source| TrainError::Io {
                    path: self.dir.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use prost::Message;

    /// TensorFlow's `Event`, as much of it as scalars use.
    #[derive(Clone, PartialEq, Message)]
    pub struct Event {
        #[prost(double, tag = "1")]
        pub wall_time: f64,
        #[prost(int64, tag = "2")]
        pub step: i64,
        #[prost(string, optional, tag = "3")]
        pub file_version: Option<String>,
        #[prost(message, optional, tag = "5")]
        pub summary: Option<Summary>,
    }

    /// TensorFlow's `Summary`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Summary {
        #[prost(message, repeated, tag = "1")]
        pub value: Vec<SummaryValue>,
    }

    /// TensorFlow's `Summary.Value` with a simple value.
    #[derive(Clone, PartialEq, Message)]
    pub struct SummaryValue {
        #[prost(string, tag = "1")]
        pub tag: String,
        #[prost(float, optional, tag = "2")]
        pub simple_value: Option<f32>,
    }

    fn masked_crc32c(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82f6_3b78
                } else {
                    crc >> 1
                };
            }
        }
        (!crc).rotate_right(15).wrapping_add(0xa282_ead8)
    }

    /// Every `(step, tag, value)` of the event files in `dir`, checking the TFRecord framing
    /// and both checksums of every record.
    pub(crate) fn read_scalars(dir: &Path) -> Vec<(i64, String, f32)> {
        let mut out = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            let mut at = 0;
            while at < bytes.len() {
                let len_bytes = &bytes[at..at + 8];
                let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
                let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
                assert_eq!(len_crc, masked_crc32c(len_bytes), "length checksum");
                let data = &bytes[at + 12..at + 12 + len];
                let data_crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
                assert_eq!(data_crc, masked_crc32c(data), "data checksum");
                let event = Event::decode(data).unwrap();
                if let Some(summary) = event.summary {
                    for v in summary.value {
                        out.push((event.step, v.tag, v.simple_value.unwrap()));
                    }
                } else {
                    assert_eq!(event.file_version.as_deref(), Some("brain.Event:2"));
                }
                at += 16 + len;
            }
        }
        out
    }

    #[test]
    fn records_become_tagged_scalars_at_their_step() {
        let (step, tagged) = scalars(&serde_json::json!({
            "step": 7, "horizon": 16, "reward_global": {"mean": 0.25, "std": 0.5},
            "f1_by_category": {"single_hop": 0.5}, "kl": f64::NAN, "note": "text"
        }))
        .unwrap();
        assert_eq!(step, 7);
        assert_eq!(
            tagged,
            vec![
                ("rl/f1_by_category/single_hop".to_string(), 0.5),
                ("rl/horizon".to_string(), 16.0),
                ("rl/reward_global/mean".to_string(), 0.25),
                ("rl/reward_global/std".to_string(), 0.5),
            ]
        );
        let sft = scalars(&serde_json::json!({"sft_epoch": 2, "loss": 1.5})).unwrap();
        assert_eq!(sft, (2, vec![("sft/loss".to_string(), 1.5)]));
        let (_, validation) = scalars(&serde_json::json!({
            "step": 4, "horizon": 8, "validation_f1": 0.4, "validation_s": 3.0
        }))
        .unwrap();
        let tags: Vec<&str> = validation.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            tags,
            ["validation/horizon", "validation/f1", "validation/seconds"]
        );
    }

    #[test]
    fn the_event_file_mirrors_the_log_and_is_rewritten_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<Value> = (1..=3)
            .map(|s| serde_json::json!({"step": s, "reward_global": {"mean": s as f64 / 10.0}}))
            .collect();
        let mut board = TensorBoard::create(dir.path(), &records[..2]).unwrap();
        board.write(&records[2]).unwrap();
        drop(board);
        let read = read_scalars(dir.path());
        assert_eq!(
            read,
            vec![
                (1, "rl/reward_global/mean".to_string(), 0.1),
                (2, "rl/reward_global/mean".to_string(), 0.2),
                (3, "rl/reward_global/mean".to_string(), 0.3),
            ]
        );
        // A resume from the checkpoint after step 1: one file, holding step 1 alone.
        std::thread::sleep(std::time::Duration::from_millis(2));
        drop(TensorBoard::create(dir.path(), &records[..1]).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(
            read_scalars(dir.path()),
            vec![(1, "rl/reward_global/mean".to_string(), 0.1)]
        );
    }
}
