//! The list of datasets the harness knows, how to name them, and the single [`load`] entry point.
//!
//! Commands and configs name datasets by a short id (`cifar10`, `tiny-imagenet`,
//! `image-folder:<path>`, ...). This module turns ids into [`DatasetId`]s with helpful errors,
//! describes each dataset ([`DatasetInfo`]: classes, shape, normalisation, expected layout) and
//! dispatches loading to the format-specific modules.

use crate::{DataError, ImageSet, Result, Split};
use std::path::{Path, PathBuf};

/// Per-channel statistics used to standardise pixels: `(x / 255 - mean) / std`.
///
/// Models are trained on standardised inputs; keeping the constants next to the dataset makes
/// every defence and attack use the same ones.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    /// Mean of `x / 255` per RGB channel.
    pub mean: [f32; 3],
    /// Standard deviation of `x / 255` per RGB channel.
    pub std: [f32; 3],
}

impl Normalization {
    /// CIFAR-10 training-set statistics (the values used throughout the literature).
    pub const CIFAR10: Normalization = Normalization {
        mean: [0.4914, 0.4822, 0.4465],
        std: [0.2470, 0.2435, 0.2616],
    };
    /// CIFAR-100 training-set statistics (fine and coarse labels share the images).
    pub const CIFAR100: Normalization = Normalization {
        mean: [0.5071, 0.4865, 0.4409],
        std: [0.2673, 0.2564, 0.2762],
    };
    /// Tiny-ImageNet-200 training-set statistics.
    pub const TINY_IMAGENET: Normalization = Normalization {
        mean: [0.4802, 0.4481, 0.3975],
        std: [0.2770, 0.2691, 0.2821],
    };
    /// ImageNet statistics: the usual choice for arbitrary photographs (image-folder datasets).
    pub const IMAGENET: Normalization = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    /// Synthetic data: pixels are spread around mid-grey, so a fixed 0.5 / 0.25 centres them.
    pub const SYNTHETIC: Normalization = Normalization {
        mean: [0.5, 0.5, 0.5],
        std: [0.25, 0.25, 0.25],
    };
}

/// What the harness knows about a dataset before loading it: for `harness list`,
/// `harness data info`, model construction and error messages.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DatasetInfo {
    /// The id accepted by [`DatasetId::parse`].
    pub id: &'static str,
    /// One line for listings.
    pub description: &'static str,
    /// Number of classes; 0 when only loading can tell (image-folder).
    pub num_classes: usize,
    /// Image shape (channels, height, width); `None` when only loading can tell.
    pub image_shape: Option<(usize, usize, usize)>,
    /// The per-channel normalisation models trained on this dataset use.
    pub normalization: Normalization,
    /// The layout expected under the data directory, shown in errors and `harness data info`.
    pub layout: &'static str,
}

/// A dataset the harness can load, as named on the command line and in configs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DatasetId {
    /// CIFAR-10: 10 classes of 32x32 colour images.
    Cifar10,
    /// CIFAR-100 with its 100 fine labels.
    Cifar100,
    /// CIFAR-100 with its 20 coarse (superclass) labels.
    Cifar100Coarse,
    /// Tiny-ImageNet-200: 200 classes of 64x64 colour images (test = labelled validation set).
    TinyImagenet,
    /// Any `train/<class>/*` + `test/<class>/*` tree of JPEG or PNG files.
    ImageFolder(PathBuf),
    /// Generated, learnable images for tests and smoke runs; needs no files. The value is the
    /// image side in pixels (`synthetic` = 32, `synthetic:16` = 16): small images keep tests fast.
    Synthetic(usize),
}

/// Prefix of synthetic ids with an explicit image side.
const SYNTHETIC_PREFIX: &str = "synthetic:";
/// Image side of plain `synthetic`.
pub const SYNTHETIC_DEFAULT_SIZE: usize = 32;

/// Prefix of image-folder ids.
const IMAGE_FOLDER_PREFIX: &str = "image-folder:";

/// Every id [`DatasetId::parse`] accepts, as shown to users.
const ALL_IDS: [&str; 6] = [
    "cifar10",
    "cifar100",
    "cifar100-coarse",
    "tiny-imagenet",
    "synthetic",
    "image-folder:<path>",
];

/// Expected layout of CIFAR-10 (either form).
pub(crate) const CIFAR10_LAYOUT: &str = "cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin \
     (official binary release) or cifar10/{train,test}/<class>/*.jpg (one folder per class)";
/// Expected layout of CIFAR-100.
pub(crate) const CIFAR100_LAYOUT: &str = "cifar-100-binary/{train,test}.bin (official binary \
     release; optional fine_label_names.txt and coarse_label_names.txt)";
/// Expected layout of Tiny-ImageNet.
pub(crate) const TINY_IMAGENET_LAYOUT: &str = "tiny-imagenet-200/ with wnids.txt, \
     train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt (optional words.txt)";
/// Expected layout of an image-folder dataset.
pub(crate) const IMAGE_FOLDER_LAYOUT: &str =
    "<root>/train/<class>/*.{jpg,jpeg,png} and <root>/test/<class>/* (or <root>/val/<class>/*)";

impl DatasetId {
    /// Parses a dataset id (`cifar10`, `cifar100`, `cifar100-coarse`, `tiny-imagenet`,
    /// `synthetic`, `image-folder:<path>`). Case and `_` versus `-` do not matter for the fixed
    /// ids. An unknown id is an error listing the closest ids and all valid ones.
    pub fn parse(name: &str) -> Result<DatasetId> {
        let trimmed = name.trim();
        if let Some(path) = strip_prefix_ignore_case(trimmed, IMAGE_FOLDER_PREFIX) {
            if path.is_empty() {
                return Err(DataError::InvalidOption(format!(
                    "`{trimmed}` names no folder: write image-folder:<path>, where <path> holds \
                     train/<class>/* and test/<class>/*"
                )));
            }
            return Ok(DatasetId::ImageFolder(PathBuf::from(path)));
        }
        if let Some(size) = strip_prefix_ignore_case(trimmed, SYNTHETIC_PREFIX) {
            return match size.parse::<usize>() {
                Ok(n) if (4..=256).contains(&n) => Ok(DatasetId::Synthetic(n)),
                _ => Err(DataError::InvalidOption(format!(
                    "`{trimmed}`: the synthetic image side must be a whole number from 4 to 256, \
                     e.g. synthetic:16"
                ))),
            };
        }
        let key = trimmed.to_ascii_lowercase().replace('_', "-");
        match key.as_str() {
            "cifar10" => Ok(DatasetId::Cifar10),
            "cifar100" => Ok(DatasetId::Cifar100),
            "cifar100-coarse" => Ok(DatasetId::Cifar100Coarse),
            "tiny-imagenet" => Ok(DatasetId::TinyImagenet),
            "synthetic" => Ok(DatasetId::Synthetic(SYNTHETIC_DEFAULT_SIZE)),
            _ => Err(DataError::UnknownDataset {
                name: name.to_string(),
                suggestions: suggestions(&key),
                available: ALL_IDS.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }

    /// The id string; [`DatasetId::parse`] of it gives back the same value.
    pub fn id(&self) -> String {
        match self {
            DatasetId::ImageFolder(path) => format!("{IMAGE_FOLDER_PREFIX}{}", path.display()),
            DatasetId::Synthetic(SYNTHETIC_DEFAULT_SIZE) => "synthetic".into(),
            DatasetId::Synthetic(n) => format!("{SYNTHETIC_PREFIX}{n}"),
            other => other.info().id.to_string(),
        }
    }

    /// Static facts about the dataset (classes, shape, normalisation, expected layout).
    pub fn info(&self) -> DatasetInfo {
        match self {
            DatasetId::Cifar10 => DatasetInfo {
                id: "cifar10",
                description: "CIFAR-10: 60,000 32x32 colour images in 10 classes (50,000 train, 10,000 test)",
                num_classes: 10,
                image_shape: Some((3, 32, 32)),
                normalization: Normalization::CIFAR10,
                layout: CIFAR10_LAYOUT,
            },
            DatasetId::Cifar100 => DatasetInfo {
                id: "cifar100",
                description: "CIFAR-100: 60,000 32x32 colour images in 100 fine classes",
                num_classes: 100,
                image_shape: Some((3, 32, 32)),
                normalization: Normalization::CIFAR100,
                layout: CIFAR100_LAYOUT,
            },
            DatasetId::Cifar100Coarse => DatasetInfo {
                id: "cifar100-coarse",
                description: "CIFAR-100 images labelled with their 20 coarse superclasses",
                num_classes: 20,
                image_shape: Some((3, 32, 32)),
                normalization: Normalization::CIFAR100,
                layout: CIFAR100_LAYOUT,
            },
            DatasetId::TinyImagenet => DatasetInfo {
                id: "tiny-imagenet",
                description: "Tiny-ImageNet-200: 64x64 colour images in 200 classes (test = labelled validation set)",
                num_classes: 200,
                image_shape: Some((3, 64, 64)),
                normalization: Normalization::TINY_IMAGENET,
                layout: TINY_IMAGENET_LAYOUT,
            },
            DatasetId::ImageFolder(_) => DatasetInfo {
                id: "image-folder:<path>",
                description: "Any folder of JPEG/PNG images, one sub-folder per class, all of one size",
                num_classes: 0,
                image_shape: None,
                normalization: Normalization::IMAGENET,
                layout: IMAGE_FOLDER_LAYOUT,
            },
            DatasetId::Synthetic(n) => DatasetInfo {
                id: "synthetic",
                description: "Generated images in 10 learnable classes (512 train, 256 test), 32x32 or \
                              synthetic:<size>; needs no files",
                num_classes: 10,
                image_shape: Some((3, *n, *n)),
                normalization: Normalization::SYNTHETIC,
                layout: "nothing: generated in memory",
            },
        }
    }
}

impl std::str::FromStr for DatasetId {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        DatasetId::parse(s)
    }
}

impl std::fmt::Display for DatasetId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id())
    }
}

/// `s` without `prefix`, compared case-insensitively (ASCII).
fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Up to three ids close to `key`, best first.
fn suggestions(key: &str) -> Vec<String> {
    crate::names::suggest(
        key,
        ALL_IDS
            .iter()
            .map(|id| id.strip_suffix(":<path>").unwrap_or(id)),
    )
    .into_iter()
    .map(|id| match id.as_str() {
        "image-folder" => "image-folder:<path>".to_string(),
        _ => id,
    })
    .collect()
}

/// Facts about every dataset the harness can load, for `harness list`.
pub fn builtin() -> Vec<DatasetInfo> {
    [
        DatasetId::Cifar10,
        DatasetId::Cifar100,
        DatasetId::Cifar100Coarse,
        DatasetId::TinyImagenet,
        DatasetId::Synthetic(SYNTHETIC_DEFAULT_SIZE),
        DatasetId::ImageFolder(PathBuf::new()),
    ]
    .iter()
    .map(DatasetId::info)
    .collect()
}

/// How [`load`] may use the decoded cache and the terminal.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Read and write the decoded cache for image-file layouts (default true).
    pub use_cache: bool,
    /// Cache folder; `None` means [`crate::data_dir::default_cache_dir`].
    pub cache_dir: Option<PathBuf>,
    /// Show a progress bar on stderr while decoding image files (default false).
    pub progress: bool,
    /// Require the record counts of the official CIFAR binary files (10,000 per CIFAR-10 batch,
    /// 50,000 and 10,000 in CIFAR-100's train.bin and test.bin), so that a file cut short at a
    /// record boundary is refused instead of silently giving fewer images (default true). Off
    /// only for reduced copies made on purpose, such as test fixtures.
    pub official_sizes: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            use_cache: true,
            cache_dir: None,
            progress: false,
            official_sizes: true,
        }
    }
}

impl LoadOptions {
    /// The cache folder these options select.
    pub fn resolved_cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(crate::data_dir::default_cache_dir)
    }
}

/// Where the images of a [`Loaded`] set came from; lets callers and tests see cache hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Copied out of a binary record file (no decoding, no cache needed).
    Binary,
    /// Decoded from image files (and written to the cache when enabled).
    Decoded,
    /// Read back from the decoded cache.
    Cache,
    /// Generated in memory (synthetic).
    Generated,
}

/// A loaded image set together with where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The images and labels.
    pub set: ImageSet,
    /// Binary file, decoded images, cache or generator.
    pub origin: Origin,
}

/// Loads one split of a dataset from `data_dir` (see [`DatasetInfo::layout`] for what must be
/// there), using the decoded cache for image-file layouts unless `opts` disables it.
pub fn load(id: &DatasetId, data_dir: &Path, split: Split, opts: &LoadOptions) -> Result<ImageSet> {
    load_with_origin(id, data_dir, split, opts).map(|loaded| loaded.set)
}

/// Like [`load`], but also says whether the set came from the cache, a binary file, freshly
/// decoded images or the generator.
pub fn load_with_origin(
    id: &DatasetId,
    data_dir: &Path,
    split: Split,
    opts: &LoadOptions,
) -> Result<Loaded> {
    match id {
        DatasetId::Cifar10 => crate::cifar10::load(data_dir, split, opts),
        DatasetId::Cifar100 => binary(crate::cifar100::load(
            data_dir,
            split,
            crate::cifar100::LabelKind::Fine,
            opts.official_sizes,
        )),
        DatasetId::Cifar100Coarse => binary(crate::cifar100::load(
            data_dir,
            split,
            crate::cifar100::LabelKind::Coarse,
            opts.official_sizes,
        )),
        DatasetId::TinyImagenet => crate::tiny_imagenet::load(data_dir, split, opts),
        DatasetId::ImageFolder(root) => {
            let root = resolve_image_folder(root, data_dir)?;
            crate::image_folder::load(&root, &id.id(), split, opts)
        }
        DatasetId::Synthetic(n) => Ok(Loaded {
            set: crate::synthetic::generate(
                &crate::synthetic::SyntheticSpec {
                    height: *n,
                    width: *n,
                    ..Default::default()
                },
                split,
            ),
            origin: Origin::Generated,
        }),
    }
}

/// Wraps a binary-format result.
fn binary(set: Result<ImageSet>) -> Result<Loaded> {
    set.map(|set| Loaded {
        set,
        origin: Origin::Binary,
    })
}

/// An image-folder root: absolute as given; relative to the working directory when it exists
/// there, else relative to the data directory.
fn resolve_image_folder(root: &Path, data_dir: &Path) -> Result<PathBuf> {
    if root.is_dir() {
        return Ok(root.to_path_buf());
    }
    if root.is_relative() && data_dir.join(root).is_dir() {
        return Ok(data_dir.join(root));
    }
    // Not a NotFound: an image folder cannot be fetched, so the fix is a correct path.
    Err(DataError::format(
        root,
        format!(
            "image-folder dataset not found: no such folder (a relative path is tried from the \
             working directory, then from the data directory {} set by --data-dir or \
             HARNESS_DATA); expected {IMAGE_FOLDER_LAYOUT}",
            data_dir.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_id_round_trip() {
        for info in builtin() {
            let id = if info.id.starts_with(IMAGE_FOLDER_PREFIX) {
                DatasetId::ImageFolder(PathBuf::from("/tmp/x"))
            } else {
                DatasetId::parse(info.id).unwrap()
            };
            assert_eq!(DatasetId::parse(&id.id()).unwrap(), id);
            assert_eq!(id.to_string().parse::<DatasetId>().unwrap(), id);
        }
    }

    #[test]
    fn parse_is_lenient_on_case_and_underscores() {
        assert_eq!(DatasetId::parse("CIFAR10").unwrap(), DatasetId::Cifar10);
        assert_eq!(
            DatasetId::parse("tiny_imagenet").unwrap(),
            DatasetId::TinyImagenet
        );
        assert_eq!(
            DatasetId::parse("image-folder:some/dir").unwrap(),
            DatasetId::ImageFolder(PathBuf::from("some/dir"))
        );
    }

    #[test]
    fn unknown_id_suggests_close_ones() {
        let err = DatasetId::parse("cifar-10").unwrap_err();
        let DataError::UnknownDataset { suggestions, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(suggestions.first().map(String::as_str), Some("cifar10"));
        assert!(suggestions.len() <= 3);
        let msg = err.to_string();
        assert!(
            msg.contains("did you mean") && msg.contains("tiny-imagenet"),
            "{msg}"
        );

        let err = DatasetId::parse("imagefolder").unwrap_err().to_string();
        assert!(err.contains("image-folder:<path>"), "{err}");
        let err = DatasetId::parse("zzzz").unwrap_err().to_string();
        assert!(!err.contains("did you mean"), "{err}");
    }

    #[test]
    fn empty_image_folder_path_is_rejected() {
        assert!(matches!(
            DatasetId::parse("image-folder:"),
            Err(DataError::InvalidOption(_))
        ));
    }

    #[test]
    fn synthetic_takes_an_image_side() {
        assert_eq!(
            DatasetId::parse("synthetic").unwrap(),
            DatasetId::Synthetic(32)
        );
        assert_eq!(
            DatasetId::parse("synthetic:16").unwrap(),
            DatasetId::Synthetic(16)
        );
        assert_eq!(DatasetId::Synthetic(16).id(), "synthetic:16");
        assert_eq!(DatasetId::Synthetic(32).id(), "synthetic");
        assert_eq!(DatasetId::Synthetic(8).info().image_shape, Some((3, 8, 8)));
        for bad in ["synthetic:2", "synthetic:x", "synthetic:"] {
            assert!(
                matches!(DatasetId::parse(bad), Err(DataError::InvalidOption(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn builtin_lists_every_id() {
        let ids: Vec<_> = builtin().iter().map(|i| i.id).collect();
        assert_eq!(ids.len(), ALL_IDS.len());
        for id in ALL_IDS {
            assert!(ids.contains(&id), "{id}");
        }
    }
}
