//! The store's file format: header (magic, version, body length, CRC32) and a bincode body
//! holding the operation log, which is replayed on load (the BM25 index is built once, after
//! the replay).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::entry::{Applied, MemoryId, Operation};
use crate::error::StoreError;
use crate::store::{State, Store, StoreConfig};

/// First bytes of every store file.
pub const MAGIC: [u8; 8] = *b"MEMR2STO";
/// Format version written by this build, and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Header: magic, version (u32 LE), body length (u64 LE), CRC32 of the body (u32 LE).
pub const HEADER_LEN: usize = 8 + 4 + 8 + 4;

/// Body as decoded. The log alone determines the store: loading replays it.
#[derive(Deserialize)]
struct Body {
    config: StoreConfig,
    /// `log_len` of each branch point, oldest first.
    lineage: Vec<u64>,
    /// (session, operation) for each log record.
    log: Vec<(u32, Operation)>,
}

/// Body as encoded, borrowing from the store; serialises exactly like [`Body`].
#[derive(Serialize)]
struct BodyRef<'a> {
    config: &'a StoreConfig,
    lineage: Vec<u64>,
    log: Vec<(u32, OperationRef<'a>)>,
}

/// Mirror of [`Operation`] with borrowed text; variants in the same order.
#[derive(Serialize)]
enum OperationRef<'a> {
    Add { text: &'a str, speaker: Option<&'a str> },
    Update { id: MemoryId, text: &'a str },
    Delete { id: MemoryId },
    Noop,
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn encode(state: &State) -> Result<Vec<u8>, StoreError> {
    let log = state
        .operations()
        .map(|record| {
            let after = record.after.as_deref();
            let op = match (record.applied, after) {
                (Applied::Added(_), Some(e)) => OperationRef::Add {
                    text: &e.text,
                    speaker: e.speaker.as_deref(),
                },
                (Applied::Updated(id), Some(e)) => OperationRef::Update { id, text: &e.text },
                (Applied::Deleted(id), _) => OperationRef::Delete { id },
                _ => OperationRef::Noop,
            };
            (record.session, op)
        })
        .collect();
    let body = BodyRef {
        config: &state.config,
        lineage: state.lineage().iter().map(|p| p.log_len).collect(),
        log,
    };
    bincode::serde::encode_to_vec(&body, bincode::config::standard())
        .map_err(|source| StoreError::Encode { source })
}

/// Counter that keeps temporary names distinct between concurrent saves of one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) fn save(state: &State, path: &Path) -> Result<(), StoreError> {
    let body = encode(state)?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&(body.len() as u64).to_le_bytes());
    header.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());

    let file_name = path.file_name().ok_or_else(|| StoreError::Io {
        action: "save to",
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = dir.join(temp_name);

    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(io_error("create temporary file", &temp))?;
        file.write_all(&header).map_err(io_error("write", &temp))?;
        file.write_all(&body).map_err(io_error("write", &temp))?;
        file.sync_all().map_err(io_error("sync", &temp))?;
        fs::rename(&temp, path).map_err(io_error("rename temporary file to", path))
    })();
    if written.is_err() {
        // Best effort: the original error is the one worth reporting.
        let _ = fs::remove_file(&temp);
        return written;
    }
    // Make the rename itself durable.
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync folder", &dir))
}

pub(crate) fn load(path: &Path) -> Result<Store, StoreError> {
    let mut file = File::open(path).map_err(io_error("open", path))?;
    let file_len = file.metadata().map_err(io_error("read metadata of", path))?.len();
    let truncated = |expected: u64| StoreError::Truncated {
        path: path.to_owned(),
        expected,
        found: file_len,
    };

    let mut header = [0u8; HEADER_LEN];
    let header_read = read_up_to(&mut file, &mut header).map_err(io_error("read", path))?;
    let magic_seen = header_read.min(MAGIC.len());
    if header[..magic_seen] != MAGIC[..magic_seen] {
        return Err(StoreError::NotAStoreFile {
            path: path.to_owned(),
        });
    }
    if header_read < HEADER_LEN {
        return Err(truncated(HEADER_LEN as u64));
    }
    let field = |range: std::ops::Range<usize>| &header[range];
    let version = u32::from_le_bytes(field(8..12).try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(StoreError::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let body_len = u64::from_le_bytes(field(12..20).try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(field(20..24).try_into().expect("4 bytes"));
    let expected = body_len
        .checked_add(HEADER_LEN as u64)
        .ok_or_else(|| truncated(u64::MAX))?;
    if file_len < expected {
        return Err(truncated(expected));
    }
    if file_len > expected {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: format!("{} bytes after the end of the body", file_len - expected),
        });
    }
    // The length is now bounded by the file's size, so this allocation is safe.
    let body_len = usize::try_from(body_len).map_err(|_| truncated(expected))?;
    let mut body = vec![0u8; body_len];
    let body_read = read_up_to(&mut file, &mut body).map_err(io_error("read", path))?;
    if body_read < body_len {
        return Err(StoreError::Truncated {
            path: path.to_owned(),
            expected,
            found: (HEADER_LEN + body_read) as u64,
        });
    }
    if crc32fast::hash(&body) != crc {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: "checksum mismatch".into(),
        });
    }
    let (decoded, used) = decode(&body).map_err(|source| StoreError::Decode {
        path: path.to_owned(),
        source,
    })?;
    if used != body.len() {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: format!("{} undecoded bytes at the end of the body", body.len() - used),
        });
    }
    replay(decoded, path)
}

/// Reads until `buf` is full or the file ends; returns the number of bytes read.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Decodes with a size limit no larger than needed for a body of this length, so that a
/// forged length inside the body cannot make the decoder allocate much more than the file.
fn decode(body: &[u8]) -> Result<(Body, usize), bincode::error::DecodeError> {
    fn with_limit<const N: usize>(body: &[u8]) -> Result<(Body, usize), bincode::error::DecodeError> {
        bincode::serde::decode_from_slice(body, bincode::config::standard().with_limit::<N>())
    }
    match body.len() {
        0..=0x1_0000 => with_limit::<0x1_0000>(body),
        0x1_0001..=0x10_0000 => with_limit::<0x10_0000>(body),
        0x10_0001..=0x100_0000 => with_limit::<0x100_0000>(body),
        0x100_0001..=0x1000_0000 => with_limit::<0x1000_0000>(body),
        _ => with_limit::<{ usize::MAX }>(body),
    }
}

/// Rebuilds the store by applying the logged operations in order, branching where recorded.
/// The operations are checked and recorded one by one, but the BM25 index is built once at
/// the end, in one pass over the final entries, rather than updated by every operation.
fn replay(body: Body, path: &Path) -> Result<Store, StoreError> {
    let log_len = body.log.len() as u64;
    let lineage_ok = body.lineage.windows(2).all(|w| w[0] <= w[1])
        && body.lineage.last().is_none_or(|&last| last <= log_len);
    if !lineage_ok {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: "branch points out of order or past the end of the log".into(),
        });
    }
    let mut store = Store::with_config(body.config);
    let state = store.state_mut();
    let mut points = body.lineage.iter().peekable();
    for (seq, (session, op)) in body.log.into_iter().enumerate() {
        let seq = seq as u64;
        while points.next_if(|&&at| at == seq).is_some() {
            state.begin_branch();
        }
        state
            .apply_unindexed(op, session)
            .map_err(|source| StoreError::Inconsistent {
                path: path.to_owned(),
                seq,
                source: Box::new(source),
            })?;
    }
    for _ in points {
        state.begin_branch();
    }
    state.reindex();
    Ok(store)
}

#[cfg(test)]
mod tests;
