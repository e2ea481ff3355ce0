//! Output files of the commands: an existing file is never replaced without `--force`, the check
//! runs before any expensive work (training, encryption), and every write stays atomic. A key
//! file overwritten by mistake makes every model encrypted under the old key undecryptable, and
//! a trained model overwritten by mistake costs the hours that trained it.

use std::path::Path;

use anyhow::Context;

use crate::exit::UsageError;

/// Refuses an output path that already holds something, unless `force`: a usage error (exit 2)
/// that names the option and the file and says how to go on. `why` adds what would be lost.
/// A folder is refused even with `force`: a file cannot replace it.
pub fn refuse_overwrite(
    path: &Path,
    option: &str,
    force: bool,
    why: Option<&str>,
) -> anyhow::Result<()> {
    // symlink_metadata: a dangling symbolic link is still something a rename would replace.
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if meta.is_dir() {
        return Err(UsageError(format!(
            "{option} {}: this is a folder; give the path of a file",
            path.display()
        ))
        .into());
    }
    if force {
        return Ok(());
    }
    Err(UsageError(format!(
        "{option} {}: the file already exists; pass --force to overwrite it, or choose another path{}",
        path.display(),
        why.map(|w| format!(" ({w})")).unwrap_or_default()
    ))
    .into())
}

/// Writes `bytes` atomically; replaces an existing file only when `force` (otherwise a file that
/// appeared since [`refuse_overwrite`] ran is kept and the write fails).
pub fn write(path: &Path, bytes: &[u8], force: bool, what: &str) -> anyhow::Result<()> {
    let written = if force {
        harness_core::atomic_file::write_atomically(path, bytes)
    } else {
        harness_core::atomic_file::write_new_atomically(path, bytes)
    };
    written.with_context(|| format!("failed to write the {what} {}", path.display()))
}

/// [`write`] for secrets (key files, licences): owner-only permissions (0600 on Unix) from
/// creation on.
pub fn write_secret(path: &Path, bytes: &[u8], force: bool, what: &str) -> anyhow::Result<()> {
    let written = if force {
        harness_core::atomic_file::write_secret_atomically(path, bytes)
    } else {
        harness_core::atomic_file::write_new_secret_atomically(path, bytes)
    };
    written.with_context(|| format!("failed to write the {what} {}", path.display()))
}

/// Checks that `path` can be written (its folder exists or can be made, a file can be created
/// there), so that an unwritable path fails at once instead of after the work.
pub fn check_writable(path: &Path, option: &str) -> anyhow::Result<()> {
    harness_core::atomic_file::check_writable(path).with_context(|| {
        format!(
            "{option} {}: cannot write there; choose a path in a folder you can write to",
            path.display()
        )
    })
}
