//! Folders of image files, one sub-folder per class: the `image-folder:<root>` dataset, and the
//! listing and parallel decoding shared by every image-file layout (CIFAR-10 folders,
//! Tiny-ImageNet).
//!
//! Listings are sorted (numbers inside names compare numerically, so `img_2` precedes
//! `img_10`), so the same files always give the same [`ImageSet`]. Decoding runs on the rayon
//! pool; every image is converted to 8-bit RGB (grayscale, palette, alpha and 16-bit images
//! included) and stored planar (C x H x W).

use crate::cache::{SourceFile, cached_or_decode};
use crate::catalog::{IMAGE_FOLDER_LAYOUT, LoadOptions, Loaded};
use crate::{DataError, ImageSet, Result, Split};
use image::ImageFormat;
use rayon::prelude::*;
use std::cmp::Ordering;
use std::path::{Path, PathBuf};

/// One image to decode and its label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageFile {
    /// Full path of the file.
    pub path: PathBuf,
    /// Class index.
    pub label: u32,
}

/// The size every image of a split must have, and how to explain it when one does not.
#[derive(Debug, Clone)]
pub(crate) struct SizeRule {
    /// Required width in pixels.
    pub width: u32,
    /// Required height in pixels.
    pub height: u32,
    /// Why, for the error message ("CIFAR-10 images are 32x32").
    pub reason: String,
}

/// The format of an image file judged by its extension (case-insensitive): JPEG or PNG.
pub(crate) fn image_format(path: &Path) -> Option<ImageFormat> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "jpg" | "jpeg" => Some(ImageFormat::Jpeg),
        "png" => Some(ImageFormat::Png),
        _ => None,
    }
}

/// Orders names so that embedded numbers compare by value (`a2` < `a10`); ties fall back to
/// plain byte order, so the order is total and deterministic.
pub(crate) fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) if p.is_ascii_digit() && q.is_ascii_digit() => {
                let dx = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let dy = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let nx = trim_zeros(&x[..dx]);
                let ny = trim_zeros(&y[..dy]);
                let ord = nx.len().cmp(&ny.len()).then_with(|| nx.cmp(ny));
                if ord != Ordering::Equal {
                    return ord;
                }
                x = &x[dx..];
                y = &y[dy..];
            }
            (Some(p), Some(q)) => {
                if p != q {
                    return p.cmp(q);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

/// Digits without leading zeros.
fn trim_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|&&c| c == b'0').count();
    &digits[zeros..]
}

/// Names of the sub-folders of `dir` (hidden ones skipped), sorted. `dir` must exist.
pub(crate) fn sub_folders(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if entry.path().is_dir() {
            names.push(name);
        }
    }
    names.sort_by(|a, b| natural_cmp(a, b));
    Ok(names)
}

/// The image files (by extension) directly inside `dir`, sorted, with their metadata for the
/// cache key. `rel_dir` is `dir` relative to the dataset root, `/`-separated.
pub(crate) fn image_files(dir: &Path, rel_dir: &str) -> Result<Vec<(PathBuf, SourceFile)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || image_format(&path).is_none() {
            continue;
        }
        let file_type = entry.file_type().map_err(|e| DataError::io(&path, e))?;
        let meta = if file_type.is_symlink() {
            std::fs::metadata(&path)
        } else {
            entry.metadata()
        }
        .map_err(|e| DataError::io(&path, e))?;
        if !meta.is_file() {
            continue;
        }
        files.push((path, SourceFile::new(format!("{rel_dir}/{name}"), &meta)));
    }
    files.sort_by(|a, b| natural_cmp(&a.1.rel, &b.1.rel));
    Ok(files)
}

/// Lists `<root>/<split_sub>/<class>/*` with labels given by the position of each class folder
/// in `classes`; a folder that is not in `classes` is an error.
pub(crate) fn list_class_tree(
    root: &Path,
    split_sub: &str,
    classes: &[String],
) -> Result<(Vec<ImageFile>, Vec<SourceFile>)> {
    let split_dir = root.join(split_sub);
    let mut labelled = Vec::new();
    for class in sub_folders(&split_dir)? {
        let Some(label) = classes.iter().position(|c| *c == class) else {
            return Err(DataError::format(
                split_dir.join(&class),
                format!(
                    "class folder `{class}` is not among the training classes ({}); train and \
                     test must use the same class folders",
                    classes.join(", ")
                ),
            ));
        };
        labelled.push((class, label as u32));
    }
    // Listing (one stat per file) runs a folder per task; the result keeps folder order.
    let per_class = labelled
        .par_iter()
        .map(|(class, _)| image_files(&split_dir.join(class), &format!("{split_sub}/{class}")))
        .collect::<Result<Vec<_>>>()?;
    let mut images = Vec::new();
    let mut sources = Vec::new();
    for ((_, label), files) in labelled.iter().zip(per_class) {
        for (path, source) in files {
            images.push(ImageFile {
                path,
                label: *label,
            });
            sources.push(source);
        }
    }
    Ok((images, sources))
}

/// Decodes `files` in parallel into one [`ImageSet`] of RGB images. With `size` set, every image
/// must have that size; without, every image must have the size of the first one. Errors name
/// the offending file; when several files are bad, the first in listing order is reported.
pub(crate) fn decode_images(
    files: &[ImageFile],
    size: Option<SizeRule>,
    class_names: Vec<String>,
    progress: Option<&str>,
) -> Result<ImageSet> {
    let Some(first) = files.first() else {
        return Err(DataError::Inconsistent("no image files to decode".into()));
    };
    let rule = match size {
        Some(rule) => rule,
        None => {
            let img = decode_file(&first.path)?;
            SizeRule {
                width: img.width(),
                height: img.height(),
                reason: format!(
                    "every image must have the size of the first one, {} ({}x{})",
                    first.path.display(),
                    img.width(),
                    img.height()
                ),
            }
        }
    };
    let image_len = 3 * rule.width as usize * rule.height as usize;
    let mut pixels = vec![0u8; files.len() * image_len];
    let bar = progress.map(|msg| progress_bar(files.len() as u64, msg));
    let first_error = pixels
        .par_chunks_mut(image_len)
        .zip(files.par_iter())
        .enumerate()
        .filter_map(|(i, (dst, file))| {
            let result = decode_into(&file.path, &rule, dst);
            if let Some(bar) = &bar {
                bar.inc(1);
            }
            result.err().map(|e| (i, e))
        })
        .min_by_key(|(i, _)| *i);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let Some((_, e)) = first_error {
        return Err(e);
    }
    let labels = files.iter().map(|f| f.label).collect();
    ImageSet::new(
        pixels,
        labels,
        (3, rule.height as usize, rule.width as usize),
        class_names,
    )
}

/// A progress bar on stderr for `n` files.
fn progress_bar(n: u64, msg: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(n);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {pos}/{len} images ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(msg.to_string());
    bar
}

/// Reads and decodes one image file (format from its content, else its extension).
fn decode_file(path: &Path) -> Result<image::DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let decode_err = |message: String| DataError::Decode {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes));
    if let Some(format) = image_format(path) {
        reader.set_format(format);
    }
    let reader = reader
        .with_guessed_format()
        .map_err(|e| decode_err(e.to_string()))?;
    reader.decode().map_err(|e| decode_err(e.to_string()))
}

/// Decodes `path` into `dst` as planar RGB, checking its size against `rule`.
fn decode_into(path: &Path, rule: &SizeRule, dst: &mut [u8]) -> Result<()> {
    let img = decode_file(path)?;
    if (img.width(), img.height()) != (rule.width, rule.height) {
        return Err(DataError::format(
            path,
            format!(
                "image is {}x{}, expected {}x{}: {}",
                img.width(),
                img.height(),
                rule.width,
                rule.height,
                rule.reason
            ),
        ));
    }
    let rgb = img.into_rgb8();
    let plane = rule.width as usize * rule.height as usize;
    let (r, rest) = dst.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in rgb.as_raw().chunks_exact(3).enumerate() {
        r[i] = px[0];
        g[i] = px[1];
        b[i] = px[2];
    }
    Ok(())
}

/// Loads `<root>/train/<class>/*` (Split::Train) or `<root>/test/<class>/*` (Split::Test, or
/// `<root>/val/<class>/*` when there is no `test`). Classes are the sorted folder names of
/// `train/` (of the split itself when there is no `train/`), so labels agree between splits.
/// `dataset` is the id used for messages and the cache key.
pub fn load(root: &Path, dataset: &str, split: Split, opts: &LoadOptions) -> Result<Loaded> {
    let split_sub = match split {
        Split::Train => "train",
        Split::Test if !root.join("test").is_dir() && root.join("val").is_dir() => "val",
        Split::Test => "test",
    };
    if !root.join(split_sub).is_dir() {
        return Err(DataError::format(
            root.join(split_sub),
            format!(
                "missing: the {split} split of {dataset} needs {split_sub}/<class>/ folders; \
                 expected {IMAGE_FOLDER_LAYOUT}"
            ),
        ));
    }
    let class_dir = if root.join("train").is_dir() {
        root.join("train")
    } else {
        root.join(split_sub)
    };
    let classes = sub_folders(&class_dir)?;
    if classes.is_empty() {
        return Err(DataError::format(
            &class_dir,
            format!("no class folders found; expected {IMAGE_FOLDER_LAYOUT}"),
        ));
    }
    let (files, sources) = list_class_tree(root, split_sub, &classes)?;
    if files.is_empty() {
        return Err(DataError::format(
            root.join(split_sub),
            "no .jpg, .jpeg or .png files found in the class folders",
        ));
    }
    let key_id = match root.canonicalize() {
        Ok(abs) => format!("image-folder:{}", abs.display()),
        Err(_) => dataset.to_string(),
    };
    let progress = opts.progress.then(|| format!("decoding {dataset} {split}"));
    cached_or_decode(opts, &key_id, split, &sources, || {
        decode_images(&files, None, classes, progress.as_deref())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut v = vec!["a10", "a2", "a02", "b", "a1", "a", "val_100", "val_20"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["a", "a1", "a02", "a2", "a10", "b", "val_20", "val_100"]);
    }

    #[test]
    fn formats_by_extension() {
        assert_eq!(image_format(Path::new("x.JPEG")), Some(ImageFormat::Jpeg));
        assert_eq!(image_format(Path::new("x.Png")), Some(ImageFormat::Png));
        assert_eq!(image_format(Path::new("x.txt")), None);
        assert_eq!(image_format(Path::new("jpg")), None);
    }
}
