//! CIFAR-10, from either of two layouts under the data directory, tried in this order:
//!
//! 1. the official binary release, `cifar-10-batches-bin/data_batch_{1..5}.bin` and
//!    `test_batch.bin`: records of 1 label byte and 3,072 pixel bytes (planar RGB, 32x32);
//!    class names come from `batches.meta.txt` when present;
//! 2. one JPEG/PNG file per image, `cifar10/{train,test}/<class>/*.jpg`; the class folders sorted
//!    alphabetically give the official label order. Decoded sets are cached.

use crate::cache::cached_or_decode;
use crate::catalog::{CIFAR10_LAYOUT, LoadOptions, Loaded, Origin};
use crate::image_folder::{SizeRule, decode_images, list_class_tree, sub_folders};
use crate::{DataError, ImageSet, Result, Split};
use std::path::{Path, PathBuf};

/// The official class names, in label order.
pub const CLASS_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Bytes per image (3 x 32 x 32).
const IMAGE_BYTES: usize = 3 * 32 * 32;
/// Bytes per binary record: one label byte, then the pixels.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Folder of the official binary release.
pub const BINARY_DIR: &str = "cifar-10-batches-bin";
/// Folder of the one-file-per-image layout.
pub const FOLDER_DIR: &str = "cifar10";
/// Records in each official batch file (the five training batches and the test batch).
pub const RECORDS_PER_FILE: usize = 10_000;

/// The binary batch files of a split.
fn batch_files(split: Split) -> Vec<String> {
    match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".to_string()],
    }
}

/// Loads one split of CIFAR-10 from whichever layout `data_dir` holds.
pub fn load(data_dir: &Path, split: Split, opts: &LoadOptions) -> Result<Loaded> {
    let bin_dir = data_dir.join(BINARY_DIR);
    let folder_split = data_dir.join(FOLDER_DIR).join(split.as_str());
    let binary_complete = batch_files(split).iter().all(|f| bin_dir.join(f).is_file());
    if binary_complete || (bin_dir.is_dir() && !folder_split.is_dir()) {
        // A partial binary folder without an alternative: load it so that the error names the
        // missing file.
        return load_binary(&bin_dir, split, opts.official_sizes).map(|set| Loaded {
            set,
            origin: Origin::Binary,
        });
    }
    if folder_split.is_dir() {
        return load_folder(&data_dir.join(FOLDER_DIR), split, opts);
    }
    Err(DataError::NotFound {
        dataset: "cifar10".into(),
        data_dir: data_dir.to_path_buf(),
        expected: CIFAR10_LAYOUT.into(),
    })
}

/// Loads a split from the official binary batches in `bin_dir`. With `official_sizes`, every
/// batch file must hold the official [`RECORDS_PER_FILE`] records (see
/// [`crate::catalog::LoadOptions::official_sizes`]).
pub fn load_binary(bin_dir: &Path, split: Split, official_sizes: bool) -> Result<ImageSet> {
    let class_names = read_class_names(&bin_dir.join("batches.meta.txt"))?;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for name in batch_files(split) {
        let path = bin_dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        let before = labels.len();
        parse_records(&path, &bytes, &mut images, &mut labels)?;
        if official_sizes {
            crate::records::expect_official_count(
                &path,
                labels.len() - before,
                RECORDS_PER_FILE,
                RECORD_BYTES,
                "cifar10",
            )?;
        }
    }
    ImageSet::new(images, labels, (3, 32, 32), class_names)
}

/// Appends the records of one batch file, checking its length and every label.
fn parse_records(
    path: &Path,
    bytes: &[u8],
    images: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> Result<()> {
    let whole =
        crate::records::whole_records(path, bytes.len(), RECORD_BYTES, "1 label + 3072 pixels")?;
    images.reserve(whole * IMAGE_BYTES);
    labels.reserve(whole);
    for (i, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let label = record[0];
        if label > 9 {
            return Err(DataError::format(
                path,
                format!(
                    "record {i} (byte offset {}) has label {label}, expected 0..=9; the file is \
                     corrupt or not a CIFAR-10 batch",
                    i * RECORD_BYTES
                ),
            ));
        }
        labels.push(u32::from(label));
        images.extend_from_slice(&record[1..]);
    }
    Ok(())
}

/// Class names from `batches.meta.txt` (one per line, blank lines ignored), or the official
/// names when the file is absent.
fn read_class_names(path: &Path) -> Result<Vec<String>> {
    if !path.is_file() {
        return Ok(CLASS_NAMES.iter().map(|s| s.to_string()).collect());
    }
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != 10 {
        return Err(DataError::format(
            path,
            format!(
                "{} class names, expected 10 (one per line); delete the file to use the \
                 standard names",
                names.len()
            ),
        ));
    }
    Ok(names)
}

/// Loads a split from `cifar10/{train,test}/<class>/*` under `root` = `<data_dir>/cifar10`.
pub fn load_folder(root: &Path, split: Split, opts: &LoadOptions) -> Result<Loaded> {
    let class_root: PathBuf = if root.join("train").is_dir() {
        root.join("train")
    } else {
        root.join(split.as_str())
    };
    let classes = sub_folders(&class_root)?;
    if classes.len() != 10 {
        return Err(DataError::format(
            &class_root,
            format!(
                "{} class folders ({}), expected the 10 CIFAR-10 classes ({})",
                classes.len(),
                classes.join(", "),
                CLASS_NAMES.join(", ")
            ),
        ));
    }
    let (files, sources) = list_class_tree(root, split.as_str(), &classes)?;
    if files.is_empty() {
        return Err(DataError::format(
            root.join(split.as_str()),
            "no .jpg, .jpeg or .png files in the class folders",
        ));
    }
    let rule = SizeRule {
        width: 32,
        height: 32,
        reason: "CIFAR-10 images are 32x32".into(),
    };
    let progress = opts.progress.then(|| format!("decoding cifar10 {split}"));
    cached_or_decode(opts, "cifar10", split, &sources, || {
        decode_images(&files, Some(rule), classes, progress.as_deref())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: u8, fill: u8) -> Vec<u8> {
        let mut r = vec![fill; RECORD_BYTES];
        r[0] = label;
        r
    }

    #[test]
    fn parses_records() {
        let bytes = [record(3, 7), record(9, 8)].concat();
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        parse_records(Path::new("b.bin"), &bytes, &mut images, &mut labels).unwrap();
        assert_eq!(labels, vec![3, 9]);
        assert_eq!(images.len(), 2 * IMAGE_BYTES);
        assert_eq!(images[IMAGE_BYTES], 8);
    }

    #[test]
    fn truncated_names_record_and_offset() {
        let mut bytes = [record(1, 0), record(2, 0)].concat();
        bytes.truncate(RECORD_BYTES + 100);
        let err = parse_records(Path::new("b.bin"), &bytes, &mut Vec::new(), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("b.bin") && err.contains("record 1"), "{err}");
        assert!(err.contains(&format!("offset {RECORD_BYTES}")), "{err}");
    }

    #[test]
    fn label_out_of_range() {
        let bytes = [record(1, 0), record(10, 0)].concat();
        let err = parse_records(Path::new("b.bin"), &bytes, &mut Vec::new(), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("record 1") && err.contains("label 10"),
            "{err}"
        );
    }
}
