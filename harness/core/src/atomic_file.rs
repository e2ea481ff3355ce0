//! Results are never half-written: every file the harness produces goes through here.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so readers
/// see either the old file or the new one, never a half-written one. The file gets the usual
/// permissions of a new file (0644 less the umask on Unix): results are meant to be shared.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write(path, bytes, false, true)
}

/// As [`write_atomically`], but never replaces an existing file: the final rename fails (an
/// [`Error::Io`] of kind `AlreadyExists`) when `path` exists, even if it appeared while the
/// content was being computed. For outputs the user has not allowed to overwrite (`--force`).
pub fn write_new_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write(path, bytes, false, false)
}

/// As [`write_atomically`], for secrets (owner keys, licences, passwords): on Unix the file is
/// readable and writable by its owner only (0600), from its creation on.
pub fn write_secret_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write(path, bytes, true, true)
}

/// As [`write_secret_atomically`], but never replaces an existing file (see
/// [`write_new_atomically`]): an owner key overwritten by mistake makes every model encrypted
/// under it undecryptable.
pub fn write_new_secret_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write(path, bytes, true, false)
}

/// Checks, before hours of work, that a file can later be written at `path`: creates its folder
/// if needed, then creates and removes a temporary file there (what [`write_atomically`] will
/// do). Errors name the folder and say why (missing permission, read-only file system, a file
/// where a folder is expected).
pub fn check_writable(path: &Path) -> Result<()> {
    let dir = folder_of(path);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let probe = tempfile::Builder::new()
        .prefix(".protbench-write-check")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    probe.close().map_err(|e| Error::io(dir, e))
}

/// The folder a file at `path` is written into (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn write(path: &Path, bytes: &[u8], secret: bool, replace: bool) -> Result<()> {
    let dir = folder_of(path);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(if secret {
            0o600
        } else {
            0o644
        }));
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut tmp = builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    if replace {
        tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    } else {
        tmp.persist_noclobber(path)
            .map_err(|e| Error::io(path, e.error))?;
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn results_are_shareable_and_secrets_private() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |name: &str| {
            std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        write_atomically(&dir.path().join("r.csv"), b"a,b\n").unwrap();
        write_secret_atomically(&dir.path().join("k.key"), b"secret").unwrap();
        assert_eq!(mode("k.key"), 0o600);
        // 0644 less the umask: never more than that, and always the owner's read and write.
        assert_eq!(mode("r.csv") & !0o644, 0);
        assert_eq!(mode("r.csv") & 0o600, 0o600);
        assert_eq!(std::fs::read(dir.path().join("r.csv")).unwrap(), b"a,b\n");
    }

    #[test]
    fn new_files_never_replace_existing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owner.key");
        write_new_secret_atomically(&path, b"first").unwrap();
        let err = write_new_secret_atomically(&path, b"second").unwrap_err();
        assert!(
            matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
            "{err:?}"
        );
        let err = write_new_atomically(&path, b"third").unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        // No temporary file is left behind by the refused writes.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        write_secret_atomically(&path, b"forced").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"forced");
    }

    #[test]
    fn writability_is_checked_without_leaving_anything() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/m.safetensors");
        check_writable(&nested).unwrap();
        assert!(dir.path().join("a/b").is_dir());
        assert_eq!(
            std::fs::read_dir(dir.path().join("a/b")).unwrap().count(),
            0
        );
        // A file where the folder should be.
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let err = check_writable(&dir.path().join("f/m.safetensors")).unwrap_err();
        assert!(err.to_string().contains("f"), "{err}");
        // A read-only folder (root ignores permissions, so only when they apply).
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
        if std::fs::write(ro.join("probe"), b"").is_err() {
            let err = check_writable(&ro.join("m.safetensors")).unwrap_err();
            assert!(err.to_string().contains("ro"), "{err}");
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}
