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
