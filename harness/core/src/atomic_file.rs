//! Results are never half-written: every file the harness produces goes through here.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so readers
/// see either the old file or the new one, never a half-written one. The file gets the usual
/// permissions of a new file (0644 less the umask on Unix): results are meant to be shared.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write(path, bytes, false)
}

/// As [`write_atomically`], for secrets (owner keys, licences, passwords): on Unix the file is
/// readable and writable by its owner only (0600), from its creation on.
pub fn write_secret_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write(path, bytes, true)
}

fn write(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
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
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
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
}
