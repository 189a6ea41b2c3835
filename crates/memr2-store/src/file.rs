//! The store's file format: header (magic, version, body length, CRC32) and a bincode body
//! holding the operation log, which is replayed on load without indexing, and (from version
//! 2) an index section from which the BM25 index is restored as it was.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::bm25::IndexSection;
use crate::entry::{Applied, MemoryId, Operation};
use crate::error::StoreError;
use crate::store::{State, Store, StoreConfig};

/// First bytes of every store file.
pub const MAGIC: [u8; 8] = *b"MEMR2STO";
/// Format version written by this build. Version 2 added the index section; this build also
/// reads version 1 files (which it indexes by tokenising the texts).
pub const FORMAT_VERSION: u32 = 2;
/// Oldest format version this build reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// Header: magic, version (u32 LE), body length (u64 LE), CRC32 of the body (u32 LE).
pub const HEADER_LEN: usize = 8 + 4 + 8 + 4;

/// Body as decoded (version 2). The log determines the entries and their histories, and
/// loading replays it (checking each operation, without indexing); the index section spares
/// the load tokenising every text to rebuild the BM25 index, and is checked against the
/// memories the replay leaves.
#[derive(Deserialize)]
struct Body {
    config: StoreConfig,
    /// `log_len` of each branch point, oldest first.
    lineage: Vec<u64>,
    /// (session, operation) for each log record.
    log: Vec<(u32, Operation)>,
    /// The BM25 index, as it was laid out in memory.
    index: IndexSection,
}

/// Body of a version 1 file: [`Body`] without the index section.
#[derive(Deserialize)]
struct BodyV1 {
    config: StoreConfig,
    lineage: Vec<u64>,
    log: Vec<(u32, Operation)>,
}

/// Body as encoded, borrowing from the store; serialises exactly like [`Body`].
#[derive(Serialize)]
struct BodyRef<'a> {
    config: &'a StoreConfig,
    lineage: Vec<u64>,
    log: Vec<(u32, OperationRef<'a>)>,
    index: IndexSection,
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

/// The log as encoded: (session, operation) for each record.
fn log_refs(state: &State) -> Vec<(u32, OperationRef<'_>)> {
    state
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
        .collect()
}

fn encode(state: &State) -> Result<Vec<u8>, StoreError> {
    let body = BodyRef {
        config: &state.config,
        lineage: state.lineage().iter().map(|p| p.log_len).collect(),
        log: log_refs(state),
        index: state.index_section(),
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
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
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
    let decode_error = |source| StoreError::Decode {
        path: path.to_owned(),
        source,
    };
    let (decoded, used) = if version == 1 {
        let (v1, used) = decode::<BodyV1>(&body).map_err(decode_error)?;
        let decoded = Body {
            config: v1.config,
            lineage: v1.lineage,
            log: v1.log,
            index: IndexSection::default(),
        };
        (decoded, used)
    } else {
        decode::<Body>(&body).map_err(decode_error)?
    };
    if used != body.len() {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: format!("{} undecoded bytes at the end of the body", body.len() - used),
        });
    }
    drop(body);
    let index = (version >= 2).then_some(decoded.index);
    let mut state = replay(decoded.config, &decoded.lineage, decoded.log, path)?;
    state.build_index(index).map_err(|reason| StoreError::Corrupt {
        path: path.to_owned(),
        reason,
    })?;
    Ok(Store::from_state(state))
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

/// Upper bound on the bytes the decoder's limit counts per byte of body: it counts every
/// integer at its full width (8 bytes for a length or an id) however short its encoding (one
/// byte at least), and string bytes one for one.
const LIMIT_PER_BODY_BYTE: usize = 8;

/// Decodes with a size limit no larger than a body of this length can need (the next power of
/// two above [`LIMIT_PER_BODY_BYTE`] times its length), so that a forged length inside the body
/// cannot make the decoder allocate much more than the file.
fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<(T, usize), bincode::error::DecodeError> {
    fn with_limit<T: serde::de::DeserializeOwned, const N: usize>(
        body: &[u8],
    ) -> Result<(T, usize), bincode::error::DecodeError> {
        bincode::serde::decode_from_slice(body, bincode::config::standard().with_limit::<N>())
    }
    let need = body.len().saturating_mul(LIMIT_PER_BODY_BYTE);
    macro_rules! smallest_limit {
        ($($bits:literal)*) => {
            $(
                if need <= 1usize << $bits {
                    return with_limit::<T, { 1usize << $bits }>(body);
                }
            )*
        };
    }
    smallest_limit!(16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);
    // Bodies over 256 MiB: the file itself is the bound.
    with_limit::<T, { usize::MAX }>(body)
}

/// Rebuilds the entries, histories and log by applying the logged operations in order,
/// branching where recorded. Each operation is checked and recorded as [`Store::apply`] would,
/// but the BM25 index is left to the caller, which builds it once for the final entries.
fn replay(
    config: StoreConfig,
    lineage: &[u64],
    log: Vec<(u32, Operation)>,
    path: &Path,
) -> Result<State, StoreError> {
    let log_len = log.len() as u64;
    let lineage_ok =
        lineage.windows(2).all(|w| w[0] <= w[1]) && lineage.last().is_none_or(|&last| last <= log_len);
    if !lineage_ok {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: "branch points out of order or past the end of the log".into(),
        });
    }
    let mut state = State::new(config);
    let mut points = lineage.iter().peekable();
    for (seq, (session, op)) in log.into_iter().enumerate() {
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
    Ok(state)
}

#[cfg(test)]
mod tests;
