//! A content-addressed cache of responses on disk, so that a repeated or resumed run replays
//! identical requests without calling out.
//!
//! An entry's key is the SHA-256 (hex) of the endpoint's base URL, the route and the request
//! body in canonical JSON (object keys sorted at every depth), so the same request to the same
//! endpoint always finds the same entry, whatever order its fields were written in. Each entry
//! is one file, `DIR/ab/abcdef….json` for the key `abcdef…`, written to a temporary file beside
//! it and renamed into place, so a reader never sees half an entry. An entry that cannot be read
//! or parsed is a miss, and the next `put` overwrites it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Responses stored on disk by the key of their request. Cheap to clone; clones share the
/// directory, and any number of threads or processes may read and write it at once.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: Arc<Path>,
}

impl Cache {
    /// The cache in `dir`, creating the directory (and its parents) if there is none.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self { dir: dir.into() })
    }

    /// The key of a request: SHA-256 (lowercase hex) of the base URL, the route and the body's
    /// canonical JSON.
    pub fn key(base_url: &str, route: &str, body: &Value) -> String {
        let mut hasher = Sha256::new();
        // Each part ends with a byte no URL or JSON text holds, so parts cannot run together.
        for part in [base_url, route, &canonical_json(body)] {
            hasher.update(part.as_bytes());
            hasher.update([0u8]);
        }
        hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// The stored value of a key, or `None` when there is none or it cannot be read or parsed
    /// (logged as a warning; the next [`Cache::put`] of the key overwrites it).
    pub fn get(&self, key: &str) -> Option<Value> {
        let path = self.entry_path(key).ok()?;
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "unreadable cache entry, treated as a miss");
                return None;
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(value) => Some(value),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "corrupt cache entry, treated as a miss");
                None
            }
        }
    }

    /// Stores a value under a key, replacing any entry there, atomically: the value goes to a
    /// temporary file that is then renamed over the entry.
    pub fn put(&self, key: &str, value: &Value) -> io::Result<()> {
        let path = self.entry_path(key)?;
        let parent = path.parent().unwrap_or(&self.dir);
        fs::create_dir_all(parent)?;
        let temporary = parent.join(format!(".{key}.{}.{}.tmp", std::process::id(), next_temporary()));
        let written =
            write_file(&temporary, &serde_json::to_vec(value)?).and_then(|()| fs::rename(&temporary, &path));
        if written.is_err() {
            // Best effort: the temporary file is useless now, and the error to report is the first.
            let _ = fs::remove_file(&temporary);
        }
        written
    }

    /// The directory the entries live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry of a key is (whether or not it exists): `DIR/ab/abcdef….json`. An error
    /// of kind `InvalidInput` when the key is not at least three hex digits, as [`Cache::key`]'s
    /// are, so no key can name a path outside the directory.
    pub fn entry_path(&self, key: &str) -> io::Result<PathBuf> {
        if key.len() < 3 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cache key {key:?} is not a hex digest"),
            ));
        }
        Ok(self.dir.join(&key[..2]).join(format!("{key}.json")))
    }
}

/// A number no other temporary file of this process has, so concurrent writers of one key
/// never share a temporary file.
fn next_temporary() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(bytes)?;
    file.flush()
}

/// JSON text with every object's keys sorted, whatever order the value holds them in (serde_json
/// keeps insertion order when any crate in the build turns on its `preserve_order` feature).
fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(files_under(&path));
            } else {
                files.push(path);
            }
        }
        files.sort();
        files
    }

    #[test]
    fn cache_is_send_sync_and_clone() {
        fn assert_shareable<T: Send + Sync + Clone>() {}
        assert_shareable::<Cache>();
    }

    #[test]
    fn key_ignores_field_order_and_sees_every_part() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5});
        let reordered =
            json!({"temperature": 0.5, "messages": [{"content": "hi", "role": "user"}], "model": "m"});
        let key = Cache::key("http://a/v1", "/chat/completions", &body);
        assert_eq!(key.len(), 64);
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(key, Cache::key("http://a/v1", "/chat/completions", &reordered));

        assert_ne!(key, Cache::key("http://b/v1", "/chat/completions", &body));
        assert_ne!(key, Cache::key("http://a/v1", "/embeddings", &body));
        let warmer =
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.6});
        assert_ne!(key, Cache::key("http://a/v1", "/chat/completions", &warmer));
        // The parts cannot slide into one another.
        assert_ne!(Cache::key("ab", "c", &json!(1)), Cache::key("a", "bc", &json!(1)));
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth_and_escapes_them() {
        let value = json!({"b": [{"z": 1, "a": null}], "a\"q": "x\ny", "c": 1.5});
        assert_eq!(
            canonical_json(&value),
            r#"{"a\"q":"x\ny","b":[{"a":null,"z":1}],"c":1.5}"#
        );
    }

    #[test]
    fn put_then_get_round_trips_in_a_two_level_layout() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("nested/cache")).unwrap();
        let key = Cache::key("http://a/v1", "/models", &json!({}));
        assert_eq!(cache.get(&key), None);

        let value = json!({"id": "x", "choices": [1, 2, 3]});
        cache.put(&key, &value).unwrap();
        assert_eq!(cache.get(&key), Some(value));
        let expected = cache.dir().join(&key[..2]).join(format!("{key}.json"));
        assert_eq!(cache.entry_path(&key).unwrap(), expected);
        // Only the entry is left: the temporary file was renamed into place.
        assert_eq!(files_under(cache.dir()), vec![expected]);
    }

    #[test]
    fn a_corrupt_entry_is_a_miss_and_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let key = Cache::key("http://a/v1", "/chat/completions", &json!({"model": "m"}));
        let path = cache.entry_path(&key).unwrap();
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"{\"id\": \"trunc").unwrap();
        assert_eq!(cache.get(&key), None);

        cache.put(&key, &json!({"id": "whole"})).unwrap();
        assert_eq!(cache.get(&key), Some(json!({"id": "whole"})));
    }

    #[test]
    fn an_entry_that_is_a_directory_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let key = "abcdef";
        fs::create_dir_all(cache.entry_path(key).unwrap()).unwrap();
        assert_eq!(cache.get(key), None);
    }

    #[test]
    fn keys_that_are_not_hex_digests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        for key in ["", "ab", "../../etc/passwd", "abc/def", "xyz123"] {
            assert_eq!(cache.get(key), None, "{key}");
            let error = cache.put(key, &json!(1)).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{key}");
        }
        assert!(files_under(cache.dir()).is_empty());
    }

    #[test]
    fn clones_and_reopened_caches_share_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let key = Cache::key("http://a/v1", "/embeddings", &json!({"input": ["a"]}));
        cache.clone().put(&key, &json!([0.5])).unwrap();
        assert_eq!(Cache::open(dir.path()).unwrap().get(&key), Some(json!([0.5])));
    }

    #[test]
    fn concurrent_writers_of_one_key_leave_one_whole_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let key = Cache::key("http://a/v1", "/chat/completions", &json!({}));
        std::thread::scope(|scope| {
            for writer in 0..8 {
                let (cache, key) = (&cache, &key);
                scope.spawn(move || {
                    for round in 0..20 {
                        cache
                            .put(key, &json!({"writer": writer, "round": round}))
                            .unwrap();
                    }
                });
            }
        });
        let entry = cache.get(&key).unwrap();
        assert_eq!(entry["round"], json!(19));
        assert_eq!(files_under(cache.dir()).len(), 1);
    }
}
