//! Fixed-size record files (the CIFAR binary releases): length checks shared by their loaders.

use std::path::Path;

use crate::{DataError, Result};

/// The number of whole records in a file of `len` bytes; an empty or truncated file is an error
/// naming the file, the first incomplete record and its byte offset.
pub(crate) fn whole_records(
    path: &Path,
    len: usize,
    record_bytes: usize,
    layout: &str,
) -> Result<usize> {
    if len == 0 {
        return Err(DataError::format(
            path,
            format!("empty file; expected records of {record_bytes} bytes ({layout})"),
        ));
    }
    let whole = len / record_bytes;
    if !len.is_multiple_of(record_bytes) {
        let offset = whole * record_bytes;
        return Err(DataError::format(
            path,
            format!(
                "truncated: record {whole} at byte offset {offset} has {} of {record_bytes} bytes \
                 (file is {len} bytes, not a multiple of {record_bytes}); fetch the dataset again",
                len - offset
            ),
        ));
    }
    Ok(whole)
}

/// Refuses a file of an official release that holds `found` whole records where the release's
/// file holds `expected`: a download or copy cut short at a record boundary would otherwise load
/// silently with fewer images. The error names the file, both sizes and the fix.
pub(crate) fn expect_official_count(
    path: &Path,
    found: usize,
    expected: usize,
    record_bytes: usize,
    dataset: &str,
) -> Result<()> {
    if found == expected {
        return Ok(());
    }
    Err(DataError::format(
        path,
        format!(
            "{found} records ({} bytes), but the official {dataset} file has {expected} records \
             ({} bytes): the file is incomplete or not from the official release; fetch the \
             dataset again with `harness data fetch {dataset} --force` (or copy the file again)",
            found * record_bytes,
            expected * record_bytes
        ),
    ))
}
