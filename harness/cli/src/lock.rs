//! Exclusive locks on results folders and cache entries.
//!
//! Two runs writing one results folder would both do all the work and write every row twice (the
//! summary then shows `±0.0000` as if there were two seeds). A run therefore holds an advisory
//! lock on `FOLDER/.lock` for as long as it writes there; the OS releases it when the process
//! ends, however it ends, so a crash never leaves a stale lock. The file holds the owner's PID so
//! the refusal can name it. Victims shared by several runs through one cache are trained by one
//! run while the others wait for its result.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::Context;

/// The lock file's name inside a locked folder.
pub const LOCK_FILE: &str = ".lock";

/// A held lock; dropping it releases the lock (the file stays, empty of meaning).
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
}

fn open(path: &Path) -> anyhow::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("failed to open the lock file {}", path.display()))
}

fn write_owner(file: &mut File) -> std::io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "pid {}", std::process::id())?;
    file.flush()
}

/// Takes the lock on `dir` (created if missing) or fails at once, naming the process that holds
/// it. `what` says what the caller is about to do, for the message.
pub fn lock_folder(dir: &Path, what: &str) -> anyhow::Result<FolderLock> {
    let path = dir.join(LOCK_FILE);
    let mut file = open(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut owner = String::new();
            let _ = file.read_to_string(&mut owner);
            let owner = owner.trim();
            let who = if owner.is_empty() {
                "another harness process".to_string()
            } else {
                format!("another harness process ({owner})")
            };
            anyhow::bail!(
                "{} is in use by {who}; two processes writing one results folder would do the \
                 work twice and duplicate its rows. Wait for it to finish, or {what} into another \
                 folder (each shard of a matrix writes to its own folder; `harness merge` joins \
                 them)",
                dir.display()
            );
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("failed to lock {}", path.display()));
        }
    }
    write_owner(&mut file).with_context(|| format!("failed to write {}", path.display()))?;
    Ok(FolderLock { _file: file })
}

/// Takes the lock at `path`, waiting for whoever holds it; `waiting` is printed once if it must
/// wait.
pub fn lock_blocking(path: &Path, waiting: impl FnOnce()) -> anyhow::Result<FolderLock> {
    let mut file = open(path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            waiting();
            file.lock()
                .with_context(|| format!("failed to lock {}", path.display()))?;
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("failed to lock {}", path.display()));
        }
    }
    write_owner(&mut file).with_context(|| format!("failed to write {}", path.display()))?;
    Ok(FolderLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_owner_named_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_folder(dir.path(), "run").unwrap();
        let err = format!("{:#}", lock_folder(dir.path(), "run").unwrap_err());
        assert!(
            err.contains(&format!("pid {}", std::process::id())) && err.contains("in use"),
            "{err}"
        );
        drop(held);
        lock_folder(dir.path(), "run").unwrap();
    }

    #[test]
    fn a_blocking_lock_waits_for_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("victim.lock");
        let held = lock_blocking(&path, || {}).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        let t = std::thread::spawn(move || {
            let mut waited = false;
            let _l = lock_blocking(&p, || waited = true).unwrap();
            tx.send(waited).unwrap();
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(rx.try_recv().is_err(), "the second lock must wait");
        drop(held);
        assert!(rx.recv().unwrap(), "it said it was waiting");
        t.join().unwrap();
    }
}
