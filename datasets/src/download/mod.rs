//! Fetching the official dataset archives into a data directory.
//!
//! `harness data fetch <dataset>` calls [`fetch`]. A fetch goes through four steps, each of which
//! leaves the data directory in a state that a later run recognises:
//!
//! 1. **Download** the archive with a streaming HTTP client to
//!    `<data_dir>/.downloads/<file_name>.partial`, hashing it (md5) while it is written. A killed or
//!    interrupted download leaves only the `.partial` file, which never counts as complete; the next
//!    run resumes it with an HTTP `Range` request when the server allows it (and falls back to a full
//!    download when the resumed file does not match its checksum).
//! 2. **Verify** the md5 against the published checksum. On a mismatch the file is deleted and
//!    [`DataError::Checksum`] is returned. Only a verified file is renamed to
//!    `<data_dir>/.downloads/<file_name>`.
//! 3. **Extract** into a temporary folder `<data_dir>/.extract-<dataset>-XXXXXX`, refusing entries
//!    with absolute paths, `..` components or links, then rename the dataset folder
//!    (`<data_dir>/<extracts_to>`, e.g. `cifar-10-batches-bin`) into place. A folder of the same
//!    name that was there before (an incomplete copy, or the old copy under `force`) is removed.
//! 4. **Mark** completion by writing `<data_dir>/.<extracts_to>.complete` (for example
//!    `.cifar-10-batches-bin.complete`, a small `key = value` text file naming the dataset, URL, md5
//!    and time), then delete the verified archive to save disk space.
//!
//! [`is_present`] accepts either the folder with its completion marker, or (for folders copied by
//! hand) the folder holding the dataset's key files. A present dataset is never downloaded again
//! unless [`FetchOptions::force`] is set.
//!
//! Mirrors: [`FetchOptions::base_url`] replaces the directory of the official URL, so the archive is
//! fetched from `{base_url}/{file_name}`; `http://`, `https://` and `file://` base URLs are accepted.
//! An archive already placed at `<data_dir>/.downloads/<file_name>` is verified and used without any
//! network access.
//!
//! Two fetches of the same dataset into the same data directory at the same time are not
//! coordinated; run one at a time.

mod extract;
mod transfer;

use crate::{DataError, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Environment variable the CLI reads for [`FetchOptions::base_url`] when `--base-url` is absent,
/// defined here so that every front end and every message spells it the same way.
pub const BASE_URL_ENV: &str = "HARNESS_DATA_BASE_URL";

/// Folder under the data directory that holds partial and verified archives while a fetch runs.
pub const DOWNLOADS_DIR: &str = ".downloads";

/// Where one dataset's official archive lives and what it must contain, so that downloads can be
/// verified against the published checksum and the result recognised later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// Dataset id as used on the command line: `cifar10`, `cifar100` or `tiny-imagenet`.
    pub dataset: &'static str,
    /// The official download URL.
    pub url: &'static str,
    /// File name of the archive; also the name fetched from a mirror (`{base_url}/{file_name}`).
    /// Ends in `.tar.gz`/`.tgz` (gzip-compressed tar) or `.zip`.
    pub file_name: &'static str,
    /// Published md5 of the archive, lowercase hex.
    pub md5: &'static str,
    /// Archive size in bytes, for messages and the progress bar before the server reports it.
    pub size_bytes: u64,
    /// Folder the archive extracts to, directly under the data directory.
    pub extracts_to: &'static str,
    /// Files (or folders) inside `extracts_to` whose presence makes a hand-copied folder count as
    /// complete, and which every extracted archive must contain.
    pub key_files: &'static [&'static str],
}

const SOURCES: &[Source] = &[
    Source {
        dataset: "cifar10",
        url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        file_name: "cifar-10-binary.tar.gz",
        md5: "c32a1d4ab5d03f1284b67883e8d87530",
        size_bytes: 170_052_171,
        extracts_to: "cifar-10-batches-bin",
        key_files: &[
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
            "test_batch.bin",
        ],
    },
    Source {
        dataset: "cifar100",
        url: "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        file_name: "cifar-100-binary.tar.gz",
        md5: "03b5dce01913d631647c71ecec9e9cb8",
        size_bytes: 168_513_733,
        extracts_to: "cifar-100-binary",
        key_files: &["train.bin", "test.bin"],
    },
    Source {
        dataset: "tiny-imagenet",
        url: "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        file_name: "tiny-imagenet-200.zip",
        md5: "90528d7ca1a48142e341f4ef8d21d0de",
        size_bytes: 248_100_043,
        extracts_to: "tiny-imagenet-200",
        key_files: &["wnids.txt", "train", "val/val_annotations.txt"],
    },
];

/// Every downloadable dataset, so that the CLI can list them and tests can check them.
pub fn sources() -> &'static [Source] {
    SOURCES
}

/// The source of one dataset by id; an unknown id gives [`DataError::UnknownDataset`] with the
/// closest ids, so that typos such as `cifar-10` get a useful answer.
pub fn source(dataset: &str) -> Result<&'static Source> {
    if let Some(found) = SOURCES.iter().find(|s| s.dataset == dataset) {
        return Ok(found);
    }
    let suggestions = crate::names::suggest(dataset, SOURCES.iter().map(|s| s.dataset));
    Err(DataError::UnknownDataset {
        name: dataset.to_string(),
        suggestions,
        available: SOURCES.iter().map(|s| s.dataset.to_string()).collect(),
    })
}

/// How a fetch should behave; filled by the CLI from its flags and environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchOptions {
    /// Mirror that replaces the directory of the official URL: the archive is fetched from
    /// `{base_url}/{file_name}`. `http://`, `https://` and `file://` are accepted. The CLI fills it
    /// from `--base-url` or the [`BASE_URL_ENV`] environment variable.
    pub base_url: Option<String>,
    /// Draw a progress bar (bytes, rate, ETA) on stderr while downloading and extracting.
    pub progress: bool,
    /// Download and extract again even when the dataset is already present, replacing it.
    pub force: bool,
}

/// What a fetch did, so that the CLI can report it.
#[derive(Debug, Clone, PartialEq)]
pub enum FetchOutcome {
    /// The dataset folder was already complete; nothing was downloaded. Holds the folder.
    AlreadyPresent(PathBuf),
    /// The archive was obtained, verified and extracted.
    Fetched {
        /// The dataset folder, `<data_dir>/<extracts_to>`.
        path: PathBuf,
        /// Size of the verified archive in bytes.
        bytes: u64,
        /// Wall-clock seconds for the whole fetch (download, verification and extraction).
        seconds: f64,
    },
}

impl FetchOutcome {
    /// The dataset folder, whichever way it came to be there.
    pub fn path(&self) -> &Path {
        match self {
            FetchOutcome::AlreadyPresent(path) | FetchOutcome::Fetched { path, .. } => path,
        }
    }
}

/// Fetches one of the official datasets into `data_dir` (created if missing) unless it is already
/// present. See the module documentation for the steps and the files it leaves behind.
pub fn fetch(dataset: &str, data_dir: &Path, opts: &FetchOptions) -> Result<FetchOutcome> {
    fetch_source(source(dataset)?, data_dir, opts)
}

/// Fetches an arbitrary [`Source`]: the hook used by tests (with a fixture archive and its md5
/// served from a local HTTP server) and by callers that mirror a dataset under a different
/// checksum. [`fetch`] is this function applied to the official source, whose checksum cannot be
/// overridden.
pub fn fetch_source(source: &Source, data_dir: &Path, opts: &FetchOptions) -> Result<FetchOutcome> {
    let started = Instant::now();
    let dataset_dir = data_dir.join(source.extracts_to);
    if !opts.force && is_source_present(source, data_dir) {
        return Ok(FetchOutcome::AlreadyPresent(dataset_dir));
    }
    let url = url_for(source, opts)?;
    let downloads = prepare_data_dir(data_dir)?;
    extract::remove_stale_temp_dirs(source, data_dir);

    let archive = downloads.join(source.file_name);
    if opts.force {
        remove_if_exists(&archive)?;
    }
    let bytes = if archive.is_file() {
        // A verified archive from an earlier run whose extraction did not finish, or one the
        // user placed there by hand: check it again, then use it without any network access.
        let actual = transfer::md5_of_file(&archive)?;
        if !actual.eq_ignore_ascii_case(source.md5) {
            remove_if_exists(&archive)?;
            return Err(DataError::Checksum {
                path: archive,
                algorithm: "md5",
                expected: source.md5.to_string(),
                actual,
            });
        }
        file_len(&archive)?
    } else {
        transfer::download(source, &url, data_dir, &downloads, opts)?
    };

    extract::extract_into_place(source, &archive, data_dir, &url, opts.progress)?;
    // The archive is no longer needed once the marker is written; keeping it would double the
    // disk footprint. Failing to delete it is harmless.
    let _ = std::fs::remove_file(&archive);
    let _ = std::fs::remove_dir(&downloads);
    Ok(FetchOutcome::Fetched {
        path: dataset_dir,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// True when one of the official datasets is ready to load from `data_dir`: its folder exists and
/// either carries the completion marker or holds the key files (a folder copied by hand).
/// An unknown id is simply not present.
pub fn is_present(dataset: &str, data_dir: &Path) -> bool {
    match source(dataset) {
        Ok(source) => is_source_present(source, data_dir),
        Err(_) => false,
    }
}

/// [`is_present`] for an arbitrary [`Source`], the companion of [`fetch_source`].
pub fn is_source_present(source: &Source, data_dir: &Path) -> bool {
    let dir = data_dir.join(source.extracts_to);
    if !dir.is_dir() {
        return false;
    }
    marker_path(source, data_dir).is_file() || missing_key_files(source, &dir).is_empty()
}

/// The completion marker written after a successful extraction:
/// `<data_dir>/.<extracts_to>.complete`. A `.partial` download or an interrupted extraction never
/// produces it.
pub fn marker_path(source: &Source, data_dir: &Path) -> PathBuf {
    data_dir.join(format!(".{}.complete", source.extracts_to))
}

/// The URL a fetch with these options downloads from: the official URL, or
/// `{base_url}/{file_name}` when a mirror is given. A base URL with an unsupported scheme is an
/// [`DataError::InvalidOption`].
pub fn url_for(source: &Source, opts: &FetchOptions) -> Result<String> {
    let Some(base) = opts.base_url.as_deref().map(str::trim) else {
        return Ok(source.url.to_string());
    };
    if base.is_empty() {
        return Ok(source.url.to_string());
    }
    let lower = base.to_ascii_lowercase();
    if !["http://", "https://", "file://"]
        .iter()
        .any(|scheme| lower.starts_with(scheme))
    {
        return Err(DataError::InvalidOption(format!(
            "base URL `{base}` (--base-url or {BASE_URL_ENV}) must start with http://, https:// \
             or file://; the archive is fetched from <base URL>/{}",
            source.file_name
        )));
    }
    Ok(format!(
        "{}/{}",
        base.trim_end_matches('/'),
        source.file_name
    ))
}

/// The key files (relative to the dataset folder) that are missing from `dir`.
fn missing_key_files(source: &Source, dir: &Path) -> Vec<&'static str> {
    source
        .key_files
        .iter()
        .copied()
        .filter(|key| {
            let path = dir.join(key);
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => false,
                Ok(meta) => meta.len() == 0,
                Err(_) => true,
            }
        })
        .collect()
}

/// Human-readable expected layout, e.g.
/// `/data/cifar-10-batches-bin/{data_batch_1.bin, ..., test_batch.bin}`.
fn expected_layout(source: &Source, data_dir: &Path) -> String {
    let dir = data_dir.join(source.extracts_to);
    match source.key_files {
        [] => format!("{}/", dir.display()),
        [one] => format!("{}/{one}", dir.display()),
        many => format!("{}/{{{}}}", dir.display(), many.join(", ")),
    }
}

/// Creates the data directory and its downloads folder, turning failures into a message that
/// names the data directory and the option to change it.
fn prepare_data_dir(data_dir: &Path) -> Result<PathBuf> {
    let downloads = data_dir.join(DOWNLOADS_DIR);
    std::fs::create_dir_all(&downloads).map_err(|e| {
        DataError::Download(format!(
            "cannot create or write to the data directory {}: {e}; pass --data-dir (or set \
             HARNESS_DATA) to a writable folder",
            data_dir.display()
        ))
    })?;
    Ok(downloads)
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DataError::io(path, e)),
    }
}

fn file_len(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| DataError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_sources_are_consistent() {
        for s in sources() {
            assert_eq!(s.md5.len(), 32, "{}", s.dataset);
            assert!(
                s.md5
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
            assert!(s.url.ends_with(s.file_name), "{}", s.dataset);
            assert!(!s.key_files.is_empty());
            assert_eq!(source(s.dataset).ok(), Some(s));
        }
    }

    #[test]
    fn unknown_dataset_suggests_close_ids() {
        let Err(err) = source("cifar-10") else {
            panic!("cifar-10 is not an id")
        };
        let message = err.to_string();
        assert!(message.contains("(did you mean `cifar10`?)"), "{message}");
        assert!(message.contains("tiny-imagenet"), "{message}");
        let Err(DataError::UnknownDataset { suggestions, .. }) = source("cifar1000") else {
            panic!("cifar1000 is not an id")
        };
        assert_eq!(suggestions.first().map(String::as_str), Some("cifar100"));
        let Err(DataError::UnknownDataset { suggestions, .. }) = source("mnist") else {
            panic!("mnist is not an id")
        };
        assert!(suggestions.is_empty(), "{suggestions:?}");
    }

    #[test]
    fn base_url_replaces_the_directory() {
        let s = &sources()[0];
        let opts = FetchOptions {
            base_url: Some("http://mirror.example/data/".into()),
            ..FetchOptions::default()
        };
        assert_eq!(
            url_for(s, &opts).ok().as_deref(),
            Some("http://mirror.example/data/cifar-10-binary.tar.gz")
        );
        assert_eq!(
            url_for(s, &FetchOptions::default()).ok().as_deref(),
            Some(s.url)
        );
        let bad = FetchOptions {
            base_url: Some("mirror.example".into()),
            ..FetchOptions::default()
        };
        assert!(matches!(url_for(s, &bad), Err(DataError::InvalidOption(_))));
    }

    #[test]
    fn layout_lists_key_files() {
        let s = &sources()[0];
        let layout = expected_layout(s, Path::new("/data"));
        assert!(
            layout.starts_with("/data/cifar-10-batches-bin/{data_batch_1.bin, "),
            "{layout}"
        );
    }
}
