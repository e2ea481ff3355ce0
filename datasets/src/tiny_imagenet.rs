//! Tiny-ImageNet-200 in its official layout under `<data_dir>/tiny-imagenet-200/`:
//!
//! - `wnids.txt`: one WordNet id per line; line order is label order;
//! - `train/<wnid>/images/*.JPEG`: training images (any number per class);
//! - `val/images/*.JPEG` labelled by `val/val_annotations.txt` (`<file>\t<wnid>\t...`); this
//!   labelled validation set is [`Split::Test`] (the official test images have no labels);
//! - `words.txt` (optional): `<wnid>\t<synonyms>`; the first synonym becomes the class name.
//!
//! Images must be 64x64; grayscale ones are expanded to three equal channels. Decoded sets are
//! cached.

use crate::cache::{SourceFile, cached_or_decode};
use crate::catalog::{LoadOptions, Loaded, TINY_IMAGENET_LAYOUT};
use crate::image_folder::{ImageFile, SizeRule, decode_images, image_files, natural_cmp};
use crate::{DataError, Result, Split};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Folder of the dataset under the data directory.
pub const DIR: &str = "tiny-imagenet-200";

/// Loads one split of Tiny-ImageNet (Test = the labelled validation images).
pub fn load(data_dir: &Path, split: Split, opts: &LoadOptions) -> Result<Loaded> {
    let root = data_dir.join(DIR);
    let wnids_path = root.join("wnids.txt");
    if !wnids_path.is_file() {
        return Err(DataError::NotFound {
            dataset: "tiny-imagenet".into(),
            data_dir: data_dir.to_path_buf(),
            expected: TINY_IMAGENET_LAYOUT.into(),
        });
    }
    let wnids = read_wnids(&wnids_path)?;
    let mut sources = vec![SourceFile::stat(&root, "wnids.txt")?];
    let words_path = root.join("words.txt");
    let class_names = if words_path.is_file() {
        sources.push(SourceFile::stat(&root, "words.txt")?);
        class_names_from_words(&words_path, &wnids)?
    } else {
        wnids.clone()
    };
    let files = match split {
        Split::Train => list_train(&root, &wnids, &mut sources)?,
        Split::Test => list_val(&root, &wnids, &mut sources)?,
    };
    if files.is_empty() {
        return Err(DataError::format(
            &root,
            format!("no {split} images found; expected {TINY_IMAGENET_LAYOUT}"),
        ));
    }
    let rule = SizeRule {
        width: 64,
        height: 64,
        reason: "Tiny-ImageNet images are 64x64".into(),
    };
    let progress = opts
        .progress
        .then(|| format!("decoding tiny-imagenet {split}"));
    cached_or_decode(opts, "tiny-imagenet", split, &sources, || {
        decode_images(&files, Some(rule), class_names, progress.as_deref())
    })
}

/// The WordNet ids in label order; blank lines are skipped, duplicates rejected.
fn read_wnids(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let mut wnids: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let wnid = line.trim();
        if wnid.is_empty() {
            continue;
        }
        if wnids.iter().any(|w| w == wnid) {
            return Err(DataError::format(
                path,
                format!("line {}: wnid {wnid} is listed twice", i + 1),
            ));
        }
        wnids.push(wnid.to_string());
    }
    if wnids.is_empty() {
        return Err(DataError::format(
            path,
            "no WordNet ids; expected one id (like n01443537) per line",
        ));
    }
    Ok(wnids)
}

/// The first synonym of each wnid in `words.txt`; the wnid itself where the file has no line.
fn class_names_from_words(path: &Path, wnids: &[String]) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let wanted: HashMap<&str, usize> = wnids
        .iter()
        .enumerate()
        .map(|(i, w)| (w.as_str(), i))
        .collect();
    let mut names = wnids.to_vec();
    for line in text.lines() {
        let Some((wnid, words)) = line.split_once('\t') else {
            continue;
        };
        if let Some(&i) = wanted.get(wnid.trim()) {
            let first = words.split(',').next().unwrap_or("").trim();
            if !first.is_empty() {
                names[i] = first.to_string();
            }
        }
    }
    Ok(names)
}

/// `train/<wnid>/images/*` for every wnid, in wnid order, files sorted.
fn list_train(
    root: &Path,
    wnids: &[String],
    sources: &mut Vec<SourceFile>,
) -> Result<Vec<ImageFile>> {
    for wnid in wnids {
        let dir = root.join("train").join(wnid).join("images");
        if !dir.is_dir() {
            return Err(DataError::format(
                &dir,
                format!(
                    "missing: wnids.txt lists {wnid}, so train/{wnid}/images/ must hold its \
                     training images"
                ),
            ));
        }
    }
    // One folder per task; the result keeps wnid order.
    let per_class = wnids
        .par_iter()
        .map(|wnid| {
            let rel = format!("train/{wnid}/images");
            image_files(&root.join(&rel), &rel)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut files = Vec::new();
    for (label, listed) in per_class.into_iter().enumerate() {
        for (path, source) in listed {
            files.push(ImageFile {
                path,
                label: label as u32,
            });
            sources.push(source);
        }
    }
    Ok(files)
}

/// `val/images/*` labelled by `val/val_annotations.txt`, sorted by file name.
fn list_val(
    root: &Path,
    wnids: &[String],
    sources: &mut Vec<SourceFile>,
) -> Result<Vec<ImageFile>> {
    let ann_rel = "val/val_annotations.txt";
    let ann_path = root.join(ann_rel);
    if !ann_path.is_file() {
        return Err(DataError::format(
            &ann_path,
            format!("missing; the labelled validation set needs it: {TINY_IMAGENET_LAYOUT}"),
        ));
    }
    sources.push(SourceFile::stat(root, ann_rel)?);
    let images_dir = root.join("val/images");
    if !images_dir.is_dir() {
        return Err(DataError::format(
            &images_dir,
            format!("missing; expected the validation images there: {TINY_IMAGENET_LAYOUT}"),
        ));
    }
    let mut on_disk: HashMap<String, (PathBuf, SourceFile)> =
        image_files(&images_dir, "val/images")?
            .into_iter()
            .map(|(path, source)| {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (name, (path, source))
            })
            .collect();
    let label_of: HashMap<&str, u32> = wnids
        .iter()
        .enumerate()
        .map(|(i, w)| (w.as_str(), i as u32))
        .collect();
    let text = std::fs::read_to_string(&ann_path).map_err(|e| DataError::io(&ann_path, e))?;
    let mut entries: Vec<(String, PathBuf, SourceFile, u32)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_no = i + 1;
        let mut fields = line.split('\t');
        let (Some(file), Some(wnid)) = (fields.next(), fields.next()) else {
            return Err(DataError::format(
                &ann_path,
                format!("line {line_no}: expected `<file>\\t<wnid>\\t...`, found `{line}`"),
            ));
        };
        let (file, wnid) = (file.trim(), wnid.trim());
        let Some(&label) = label_of.get(wnid) else {
            return Err(DataError::format(
                &ann_path,
                format!("line {line_no}: unknown wnid {wnid} for {file} (not in wnids.txt)"),
            ));
        };
        let Some((path, source)) = on_disk.remove(file) else {
            let why = if entries.iter().any(|e| e.0 == file) {
                "is annotated twice"
            } else {
                "is not in val/images/"
            };
            return Err(DataError::format(
                &ann_path,
                format!("line {line_no}: {file} {why}"),
            ));
        };
        entries.push((file.to_string(), path, source, label));
    }
    entries.sort_by(|a, b| natural_cmp(&a.0, &b.0));
    let mut files = Vec::with_capacity(entries.len());
    for (_, path, source, label) in entries {
        files.push(ImageFile { path, label });
        sources.push(source);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_synonym_is_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let words = dir.path().join("words.txt");
        std::fs::write(&words, "n1\tgoldfish, Carassius auratus\nn9\tother\n").unwrap();
        let names = class_names_from_words(&words, &["n1".into(), "n2".into()]).unwrap();
        assert_eq!(names, vec!["goldfish".to_string(), "n2".to_string()]);
    }

    #[test]
    fn duplicate_wnid_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wnids.txt");
        std::fs::write(&path, "n1\nn2\nn1\n").unwrap();
        let err = read_wnids(&path).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
    }
}
