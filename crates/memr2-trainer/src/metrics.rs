//! `metrics.jsonl`: one JSON object per training step, appended, and cut back on resume;
//! mirrored, when asked, into TensorBoard event files ([`crate::tensorboard`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::TrainError;
use crate::tensorboard::TensorBoard;

/// Appends one JSON line per record.
pub struct MetricsLog {
    /// `None` for a log that only counts (on the ranks other than the one that writes).
    path: Option<PathBuf>,
    lines: u64,
    tensorboard: Option<TensorBoard>,
}

impl MetricsLog {
    /// Opens the log for a run, keeping exactly its first `keep` lines (what the checkpoint
    /// being resumed had seen) and dropping lines written after it.
    pub fn open(path: &Path, keep: u64) -> Result<Self, TrainError> {
        let io = |source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        };
        let existing = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        let kept: Vec<&str> = existing.lines().take(keep as usize).collect();
        if (kept.len() as u64) < keep {
            return Err(TrainError::Checkpoint {
                path: path.to_path_buf(),
                reason: format!("has {} lines but the checkpoint expects {keep}", kept.len()),
            });
        }
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        std::fs::write(path, text).map_err(io)?;
        Ok(Self {
            path: Some(path.to_path_buf()),
            lines: keep,
            tensorboard: None,
        })
    }

    /// A log that writes nothing and counts the records as if it did, starting at `lines`:
    /// what the ranks other than rank 0 keep, so that their checkpoint state is the same.
    pub fn counting(lines: u64) -> Self {
        Self {
            path: None,
            lines,
            tensorboard: None,
        }
    }

    /// Mirrors the log into TensorBoard event files in `dir` from now on, starting them
    /// afresh with the lines the log holds.
    pub fn mirror_to_tensorboard(&mut self, dir: &Path) -> Result<(), TrainError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let records = Self::read(path)?;
        self.tensorboard = Some(TensorBoard::create(dir, &records)?);
        Ok(())
    }

    /// Appends a record as one line and flushes it.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<(), TrainError> {
        let Some(path) = &self.path else {
            self.lines += 1;
            return Ok(());
        };
        let io = |source| TrainError::Io {
            path: path.clone(),
            source,
        };
        let line = serde_json::to_string(record).expect("metrics serialise");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        writeln!(file, "{line}").map_err(io)?;
        self.lines += 1;
        if let Some(board) = &mut self.tensorboard {
            board.write(&serde_json::to_value(record).expect("metrics serialise"))?;
        }
        Ok(())
    }

    /// Lines written so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Reads every record back.
    pub fn read(path: &Path) -> Result<Vec<serde_json::Value>, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).map_err(|e| TrainError::Checkpoint {
                    path: path.to_path_buf(),
                    reason: format!("bad metrics line: {e}"),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_cuts_back_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::open(&path, 0).unwrap();
        for i in 0..5 {
            log.append(&serde_json::json!({ "step": i })).unwrap();
        }
        let mut log = MetricsLog::open(&path, 3).unwrap();
        assert_eq!(MetricsLog::read(&path).unwrap().len(), 3);
        log.append(&serde_json::json!({ "step": 3 })).unwrap();
        let back = MetricsLog::read(&path).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back[3]["step"], 3);
        assert!(MetricsLog::open(&path, 10).is_err());
    }

    #[test]
    fn the_tensorboard_mirror_follows_the_log_across_a_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let board = dir.path().join("tensorboard");
        let mut log = MetricsLog::open(&path, 0).unwrap();
        log.mirror_to_tensorboard(&board).unwrap();
        for step in 1..=4 {
            log.append(&serde_json::json!({ "step": step, "f1": 0.5 }))
                .unwrap();
        }
        let steps = || -> Vec<i64> {
            crate::tensorboard::tests::read_scalars(&board)
                .into_iter()
                .map(|(step, _, _)| step)
                .collect()
        };
        assert_eq!(steps(), [1, 2, 3, 4]);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut log = MetricsLog::open(&path, 2).unwrap();
        log.mirror_to_tensorboard(&board).unwrap();
        log.append(&serde_json::json!({ "step": 3, "f1": 0.75 })).unwrap();
        assert_eq!(steps(), [1, 2, 3]);
    }
}
