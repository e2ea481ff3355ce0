//! Where datasets and the decoded cache live on disk.
//!
//! Every command takes an optional `--data-dir`; without it the harness looks at the
//! `HARNESS_DATA` environment variable and then at a per-user cache folder, so that a fetched
//! dataset is found again by every later run without repeating the flag.

use std::path::{Path, PathBuf};

/// Environment variable naming the data directory when no `--data-dir` flag is given.
pub const DATA_ENV: &str = "HARNESS_DATA";
/// Environment variable naming the decoded-image cache directory.
pub const CACHE_ENV: &str = "HARNESS_CACHE";

/// The data directory to search: the explicit flag, else `$HARNESS_DATA`, else
/// `<user cache dir>/protbench/data`, else `./data` on systems without a user cache dir.
pub fn resolve(explicit: Option<&Path>) -> PathBuf {
    if let Some(dir) = explicit {
        return dir.to_path_buf();
    }
    if let Some(dir) = env_path(DATA_ENV) {
        return dir;
    }
    match dirs::cache_dir() {
        Some(cache) => cache.join("protbench").join("data"),
        None => PathBuf::from("data"),
    }
}

/// Where decoded image sets are cached: `$HARNESS_CACHE`, else
/// `<user cache dir>/protbench/decoded`, else `./data/.decoded` on systems without one.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = env_path(CACHE_ENV) {
        return dir;
    }
    match dirs::cache_dir() {
        Some(cache) => cache.join("protbench").join("decoded"),
        None => PathBuf::from("data").join(".decoded"),
    }
}

/// A non-empty environment variable as a path (an empty value counts as unset).
fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_flag_wins() {
        assert_eq!(
            resolve(Some(Path::new("/some/where"))),
            PathBuf::from("/some/where")
        );
    }

    #[test]
    fn defaults_are_absolute_or_local() {
        // Whatever the environment, both functions return a usable, non-empty path.
        assert!(!resolve(None).as_os_str().is_empty());
        assert!(!default_cache_dir().as_os_str().is_empty());
    }
}
