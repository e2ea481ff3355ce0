//! Exit codes and error printing: user errors (unknown names, bad options, bad configuration) exit
//! with 2, everything else that fails with 1, as the README documents.

use std::process::ExitCode;

use harness_core::sealed::SealError;

/// Exit code of a usage or configuration error.
pub const USAGE: u8 = 2;
/// Exit code of a failure while working (missing data, corrupt file, diverged training, ...).
pub const FAILURE: u8 = 1;

/// Prints the error chain on stderr and picks the exit code.
pub fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(code_of(&err))
        }
    }
}

fn code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<harness_core::Error>() {
            return match e {
                harness_core::Error::UnknownModel { .. } | harness_core::Error::Config(_) => USAGE,
                // A passphrase missing for a protected file, or given for an unprotected one: the
                // command line must change (--passphrase-env), not the file.
                harness_core::Error::Sealed(
                    SealError::NeedsPassphrase { .. } | SealError::UnexpectedPassphrase { .. },
                ) => USAGE,
                harness_core::Error::Data(d) => data_code(d),
                _ => FAILURE,
            };
        }
        if let Some(d) = cause.downcast_ref::<datasets::DataError>() {
            return data_code(d);
        }
        if cause.downcast_ref::<UsageError>().is_some() {
            return USAGE;
        }
    }
    FAILURE
}

fn data_code(e: &datasets::DataError) -> u8 {
    match e {
        datasets::DataError::UnknownDataset { .. } | datasets::DataError::InvalidOption(_) => USAGE,
        _ => FAILURE,
    }
}

/// A usage error found by the CLI itself (a flag combination that makes no sense).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
