use std::path::PathBuf;

/// Result alias for dataset operations.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Everything that can go wrong while finding, fetching, decoding or batching data. Each message
/// names the file (and record or offset where there is one), what was expected, and the fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An id that no dataset has.
    #[error("unknown dataset `{name}`{}; available: {}", crate::names::did_you_mean(.suggestions), .available.join(", "))]
    UnknownDataset {
        /// What the user asked for.
        name: String,
        /// The closest valid ids, best first.
        suggestions: Vec<String>,
        /// Every valid id.
        available: Vec<String>,
    },
    /// The dataset's folder is not under the data directory.
    #[error(
        "dataset `{dataset}` not found under {}: expected {expected}; run `harness data fetch {dataset}` \
         or point --data-dir (or HARNESS_DATA) at a folder that holds it",
        .data_dir.display()
    )]
    NotFound {
        /// The dataset id.
        dataset: String,
        /// The data directory that was searched.
        data_dir: PathBuf,
        /// The layout that was expected there.
        expected: String,
    },
    /// A file or folder has the wrong structure (missing entries, wrong sizes, bad lines).
    #[error("{}: {message}", .path.display())]
    Format {
        /// The offending file or folder.
        path: PathBuf,
        /// What is wrong and what was expected, including record number or byte offset.
        message: String,
    },
    /// An image could not be decoded.
    #[error("{}: cannot decode image: {message}", .path.display())]
    Decode {
        /// The image file.
        path: PathBuf,
        /// The decoder's complaint.
        message: String,
    },
    /// An I/O error on a named path.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or folder being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Pixels and labels that do not fit together.
    #[error("inconsistent image set: {0}")]
    Inconsistent(String),
    /// A download could not be completed.
    #[error("{0}")]
    Download(String),
    /// A downloaded archive does not match its published checksum.
    #[error(
        "{}: checksum mismatch: expected {algorithm} {expected}, got {actual}; the file was removed, \
         run the fetch again (a proxy or a truncated transfer is the usual cause)",
        .path.display()
    )]
    Checksum {
        /// The downloaded file.
        path: PathBuf,
        /// Hash algorithm name (md5, sha256).
        algorithm: &'static str,
        /// The published checksum.
        expected: String,
        /// The checksum of what arrived.
        actual: String,
    },
    /// Invalid options passed by the caller (batch size 0, split fractions above 1, ...).
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// A tensor operation failed while building a batch.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl DataError {
    /// Shorthand for a [`DataError::Format`] error.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Format {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Shorthand for a [`DataError::Io`] error.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
