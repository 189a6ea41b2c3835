//! glibc's allocator set up for tensor buffers.
//!
//! Every operation of the CPU backends allocates its output, and the training step's outputs
//! are megabytes each (attention scores, activations, their gradients). glibc serves blocks
//! above its mmap threshold (128 KiB, raised on the fly to at most 32 MiB) with fresh `mmap`
//! pages and gives them back to the kernel on free, and it trims the heap's free top as soon as
//! it passes the trim threshold; so the next step's buffers fault their pages in again, each one
//! zeroed by the kernel. On the default preset's model that page-faulting was 12% of a training
//! step's CPU time, and a step ran 1.3x faster with both thresholds raised (docs/PERF.md,
//! "The training step on the CPU"). The price is memory held for reuse: freed buffers stay in
//! the process, and an SFT run of the default preset peaked at 1.39 GB resident instead of
//! 1.11 GB.
//!
//! The thresholds are glibc tunables, read once when a process starts, so
//! [`reuse_freed_buffers`] re-executes the program with them set. A `GLIBC_TUNABLES` that
//! already names either threshold is left as it is (the user's choice wins); other tunables in
//! it are kept.

use std::ffi::{OsStr, OsString};

/// The environment variable glibc reads its tunables from.
pub const TUNABLES: &str = "GLIBC_TUNABLES";

/// Both thresholds at 4 GiB: blocks come from the heap and stay there for reuse.
const SETTINGS: &str = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296";

/// The `GLIBC_TUNABLES` value to start with, given the current one; `None` when it already
/// sets a threshold (ours after the re-execution, or the user's).
pub fn tunables_to_set(current: Option<&OsStr>) -> Option<OsString> {
    match current {
        None => Some(SETTINGS.into()),
        Some(value) => {
            let text = value.to_string_lossy();
            if text.contains("glibc.malloc.mmap_threshold") || text.contains("glibc.malloc.trim_threshold") {
                None
            } else if text.is_empty() {
                Some(SETTINGS.into())
            } else {
                let mut joined = value.to_os_string();
                joined.push(":");
                joined.push(SETTINGS);
                Some(joined)
            }
        }
    }
}

/// Re-executes the running program with glibc's thresholds raised, unless they are set
/// already; returns only when they are (or when this is not glibc on Linux, or the
/// re-execution failed, which is logged and otherwise harmless). Call it first thing in `main`,
/// before any thread starts.
pub fn reuse_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let Some(value) = tunables_to_set(std::env::var_os(TUNABLES).as_deref()) else {
            return;
        };
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(exe);
        if let Some(arg0) = args.next() {
            command.arg0(arg0);
        }
        let error = command.args(args).env(TUNABLES, value).exec();
        tracing::warn!("could not re-execute with glibc's malloc thresholds raised: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_added_once_and_never_override_the_users() {
        assert_eq!(tunables_to_set(None), Some(SETTINGS.into()));
        assert_eq!(tunables_to_set(Some(OsStr::new(""))), Some(SETTINGS.into()));
        let added = tunables_to_set(Some(OsStr::new("glibc.malloc.arena_max=2"))).unwrap();
        assert_eq!(
            added,
            OsString::from(format!("glibc.malloc.arena_max=2:{SETTINGS}"))
        );
        // After the re-execution the value names the thresholds, so there is no second one.
        assert_eq!(tunables_to_set(Some(&added)), None);
        assert_eq!(
            tunables_to_set(Some(OsStr::new("glibc.malloc.mmap_threshold=131072"))),
            None
        );
        assert_eq!(
            tunables_to_set(Some(OsStr::new("glibc.malloc.trim_threshold=0"))),
            None
        );
    }
}
