//! Safe extraction of a verified archive into a temporary folder inside the data directory, then
//! an atomic rename of the dataset folder into place and the completion marker.

use super::{Source, marker_path, missing_key_files};
use crate::{DataError, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

/// How an archive is packed, decided from its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TarGz,
    Zip,
}

fn kind_of(file_name: &str) -> Option<Kind> {
    let lower = file_name.to_ascii_lowercase();
    if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
        Some(Kind::TarGz)
    } else if lower.ends_with(".zip") {
        Some(Kind::Zip)
    } else {
        None
    }
}

fn temp_prefix(source: &Source) -> String {
    format!(".extract-{}-", source.dataset)
}

/// Removes temporary extraction folders left by a killed run of the same dataset (best effort).
pub(super) fn remove_stale_temp_dirs(source: &Source, data_dir: &Path) {
    let prefix = temp_prefix(source);
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_stale = name.to_str().is_some_and(|n| n.starts_with(&prefix));
        if is_stale && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Extracts `archive` (already verified) and moves `<extracts_to>` into `data_dir`, replacing any
/// folder of that name, then writes the completion marker.
pub(super) fn extract_into_place(
    source: &Source,
    archive: &Path,
    data_dir: &Path,
    url: &str,
    progress: bool,
) -> Result<()> {
    let kind = kind_of(source.file_name).ok_or_else(|| {
        DataError::format(
            archive,
            "unknown archive type: expected a name ending in .tar.gz, .tgz or .zip",
        )
    })?;
    let temp = tempfile::Builder::new()
        .prefix(&temp_prefix(source))
        .tempdir_in(data_dir)
        .map_err(|e| DataError::io(data_dir, e))?;
    match kind {
        Kind::TarGz => extract_tar_gz(archive, temp.path(), progress)?,
        Kind::Zip => extract_zip(archive, temp.path(), progress)?,
    }

    let extracted = temp.path().join(source.extracts_to);
    if !extracted.is_dir() {
        return Err(DataError::format(
            archive,
            format!(
                "the archive does not hold the folder `{}/` at its top level",
                source.extracts_to
            ),
        ));
    }
    let missing = missing_key_files(source, &extracted);
    if !missing.is_empty() {
        return Err(DataError::format(
            archive,
            format!(
                "the archive's `{}/` folder lacks {}",
                source.extracts_to,
                missing.join(", ")
            ),
        ));
    }

    let marker = marker_path(source, data_dir);
    let dest = data_dir.join(source.extracts_to);
    match std::fs::remove_file(&marker) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(DataError::io(&marker, e)),
    }
    if std::fs::symlink_metadata(&dest).is_ok() {
        // An earlier incomplete copy, or the old copy under `force`: move it into the temporary
        // folder, which is deleted below, so that the new folder appears in one rename.
        let old = temp.path().join(".replaced");
        std::fs::rename(&dest, &old).map_err(|e| DataError::io(&dest, e))?;
    }
    std::fs::rename(&extracted, &dest).map_err(|e| DataError::io(&dest, e))?;
    write_marker(source, &marker, url)?;
    // Deleting the temporary folder (and any replaced copy) may fail without harm.
    let _ = temp.close();
    Ok(())
}

fn write_marker(source: &Source, marker: &Path, url: &str) -> Result<()> {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let text = format!(
        "# written by protbench after a verified download and a complete extraction\n\
         dataset = {}\nfolder = {}\nurl = {url}\nmd5 = {}\ncompleted_unix = {seconds}\n",
        source.dataset, source.extracts_to, source.md5
    );
    let temp = marker.with_extension("complete.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    };
    write().map_err(|e| DataError::io(&temp, e))?;
    std::fs::rename(&temp, marker).map_err(|e| DataError::io(marker, e))
}

/// The relative path an archive entry may be written to, or `None` when it is absolute, climbs
/// with `..`, or names nothing.
fn safe_relative(name: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in name.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn refuse(archive: &Path, entry: &str, why: &str) -> DataError {
    DataError::format(
        archive,
        format!(
            "refusing to extract entry `{entry}`: {why}; official archives never contain such \
             entries, so this file is not the published archive"
        ),
    )
}

const UNSAFE_PATH: &str =
    "absolute paths and `..` components could write outside the data directory";

fn bar(progress: bool, len: u64, message: String, template: &str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}

fn archive_name(archive: &Path) -> String {
    archive.file_name().map_or_else(
        || archive.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn extract_tar_gz(archive: &Path, into: &Path, progress: bool) -> Result<()> {
    let file = File::open(archive).map_err(|e| DataError::io(archive, e))?;
    let len = file.metadata().map_or(0, |m| m.len());
    let bar = bar(
        progress,
        len,
        format!("extracting {}", archive_name(archive)),
        "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} ETA {eta}",
    );
    let gz = flate2::read::GzDecoder::new(bar.wrap_read(BufReader::new(file)));
    let mut tar = tar::Archive::new(gz);
    let corrupt = |e: std::io::Error| DataError::format(archive, format!("corrupt archive: {e}"));
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let name = entry.path().map_err(corrupt)?.into_owned();
        let shown = name.display().to_string();
        let Some(relative) = safe_relative(&name) else {
            return Err(refuse(archive, &shown, UNSAFE_PATH));
        };
        let entry_type = entry.header().entry_type();
        let target = into.join(&relative);
        if entry_type.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| DataError::io(&target, e))?;
        } else if entry_type.is_file() {
            if relative.as_os_str().is_empty() {
                return Err(refuse(archive, &shown, "a file entry without a name"));
            }
            write_entry(&mut entry, &target).map_err(|e| match e {
                EntryError::Read(e) => corrupt(e),
                EntryError::Write(e) => DataError::io(&target, e),
            })?;
        } else if matches!(
            entry_type,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            // Metadata only.
        } else {
            return Err(refuse(
                archive,
                &shown,
                "links and special files are not extracted",
            ));
        }
    }
    bar.finish_and_clear();
    Ok(())
}

fn extract_zip(archive: &Path, into: &Path, progress: bool) -> Result<()> {
    let file = File::open(archive).map_err(|e| DataError::io(archive, e))?;
    let corrupt =
        |e: zip::result::ZipError| DataError::format(archive, format!("corrupt archive: {e}"));
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(corrupt)?;
    let bar = bar(
        progress,
        zip.len() as u64,
        format!("extracting {}", archive_name(archive)),
        "{msg} [{wide_bar}] {human_pos}/{human_len} files ETA {eta}",
    );
    for index in 0..zip.len() {
        let mut entry = zip.by_index(index).map_err(corrupt)?;
        let name = entry.name().map_err(corrupt)?.into_owned();
        // Zip names use `/`; a backslash or a drive letter only appears in archives made to
        // escape on Windows, and `enclosed_name` is zip's own check of the same property.
        let relative =
            if name.contains('\\') || name.contains(':') || entry.enclosed_name().is_none() {
                None
            } else {
                safe_relative(Path::new(&name))
            };
        let Some(relative) = relative else {
            return Err(refuse(archive, &name, UNSAFE_PATH));
        };
        let target = into.join(&relative);
        if entry.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| DataError::io(&target, e))?;
        } else if entry.is_symlink() {
            return Err(refuse(archive, &name, "links are not extracted"));
        } else {
            if relative.as_os_str().is_empty() {
                return Err(refuse(archive, &name, "a file entry without a name"));
            }
            write_entry(&mut entry, &target).map_err(|e| match e {
                EntryError::Read(e) => {
                    DataError::format(archive, format!("corrupt archive entry `{name}`: {e}"))
                }
                EntryError::Write(e) => DataError::io(&target, e),
            })?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

enum EntryError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copies one entry to `target`, creating its parent folders, telling read (archive) errors
/// apart from write (disk) errors.
fn write_entry(reader: &mut impl Read, target: &Path) -> Result<(), EntryError> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(EntryError::Write)?;
    }
    let mut out = File::create(target).map_err(EntryError::Write)?;
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(EntryError::Read(e)),
        };
        out.write_all(&buf[..n]).map_err(EntryError::Write)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_relative_refuses_escapes() {
        assert_eq!(
            safe_relative(Path::new("./a/b.bin")),
            Some(PathBuf::from("a/b.bin"))
        );
        assert_eq!(safe_relative(Path::new("a/../../b")), None);
        assert_eq!(safe_relative(Path::new("/etc/passwd")), None);
        assert_eq!(safe_relative(Path::new("../evil")), None);
    }

    #[test]
    fn archive_kinds() {
        assert_eq!(kind_of("x.tar.gz"), Some(Kind::TarGz));
        assert_eq!(kind_of("x.TGZ"), Some(Kind::TarGz));
        assert_eq!(kind_of("x.zip"), Some(Kind::Zip));
        assert_eq!(kind_of("x.rar"), None);
    }
}
