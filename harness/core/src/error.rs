use std::path::PathBuf;

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the engine. Messages are lowercase fragments that read after "failed to ...: " and
/// name the file, tensor or option to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model id that the zoo does not have.
    #[error("unknown model `{name}`{}; available: {}", did_you_mean(.suggestions), .available.join(", "))]
    UnknownModel {
        /// What the user asked for.
        name: String,
        /// The closest valid ids, best first.
        suggestions: Vec<String>,
        /// Every valid id.
        available: Vec<String>,
    },
    /// A weights file lacks a tensor the model needs.
    #[error("{}: missing tensor `{name}` (is this file for a different model or width?)", .path.display())]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// The parameter name, PyTorch style.
        name: String,
    },
    /// A weights file has a tensor of the wrong shape.
    #[error("{}: tensor `{name}` has shape {found:?}, the model expects {expected:?}", .path.display())]
    ShapeMismatch {
        /// The weights file.
        path: PathBuf,
        /// The parameter name.
        name: String,
        /// Shape the model expects.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A weights file has tensors the model does not know (strict loading, as PyTorch's default).
    #[error("{}: unexpected tensors {names:?} (is this file for a different model?)", .path.display())]
    UnexpectedTensors {
        /// The weights file.
        path: PathBuf,
        /// The unknown names (at most a few).
        names: Vec<String>,
    },
    /// A parameter store was asked to store, quantise or re-kind a tensor in a way that would
    /// break it (another shape or dtype under an existing name, integers made trainable, a
    /// buffer quantised); the message says what to do instead.
    #[error("parameter `{name}` {problem}")]
    Param {
        /// The tensor's name in the store.
        name: String,
        /// What is wrong, and the fix.
        problem: String,
    },
    /// A file that is not valid safetensors, or a checkpoint whose metadata is wrong.
    #[error("{}{message}", file_prefix(.path))]
    BadFile {
        /// The file; empty when the content was parsed from memory by a function that does not
        /// know its file (the caller that read it names it with [`Error::in_file`]).
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// An I/O error on a named path.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Training diverged: the loss or the weights stopped being finite numbers. A failure, not
    /// a usage error: the same settings may train on other data or seeds.
    #[error("training diverged at epoch {epoch}: {detail}; lower the learning rate")]
    Diverged {
        /// 1-based epoch in which it was noticed.
        epoch: usize,
        /// What was not finite (the loss at a step, or a named tensor).
        detail: String,
    },
    /// An invalid setting (a zero batch size, an empty dataset, a schedule that makes no sense).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A black-box API refused a query because the attacker's query budget is spent: a fact of
    /// the run (the attack asked for more than its budget), not a bad setting.
    #[error("query budget exhausted: {used} of {limit} images used, {asked} more asked")]
    BudgetExhausted {
        /// Images already answered.
        used: u64,
        /// The budget.
        limit: u64,
        /// Images in the refused query.
        asked: u64,
    },
    /// An operation this model, artifact or component cannot do (a whole-model attack on a
    /// thief's partial copy, a stage that is not held); the message says what would work.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Parameters that do not belong to the model they are used with (a store of another
    /// architecture, a partial store holding other stages than it claims).
    #[error("parameters do not fit the model: {0}")]
    Mismatch(String),
    /// A component broke its own contract (a defence returned something other than it
    /// declared): a bug in that component, not a usage error.
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// A sealed secret file could not be opened or written.
    #[error(transparent)]
    Sealed(#[from] crate::sealed::SealError),
    /// A data error from the datasets crate.
    #[error(transparent)]
    Data(#[from] datasets::DataError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

use datasets::names::did_you_mean;
pub use datasets::names::suggest;

/// `"PATH: "` before a message about a file, nothing when the file is not known.
fn file_prefix(path: &std::path::Path) -> String {
    if path.as_os_str().is_empty() {
        String::new()
    } else {
        format!("{}: ", path.display())
    }
}

impl Error {
    /// Names the file that in-memory content came from in an error about that content: a
    /// [`Error::BadFile`] made without a path (by a function that parses bytes) gets `path`, so
    /// the message names the real file instead of a placeholder. Other errors are unchanged.
    pub fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            Error::BadFile { path: p, message } if p.as_os_str().is_empty() => Error::BadFile {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        }
    }

    /// Shorthand for an [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
