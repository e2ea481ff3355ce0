//! CIFAR-100 from the official binary release, `cifar-100-binary/{train,test}.bin`: records of a
//! coarse label byte, a fine label byte and 3,072 pixel bytes (planar RGB, 32x32). The same images
//! serve two datasets: `cifar100` (100 fine labels) and `cifar100-coarse` (20 superclasses).
//! Class names come from `fine_label_names.txt` / `coarse_label_names.txt` when present.

use crate::catalog::CIFAR100_LAYOUT;
use crate::{DataError, ImageSet, Result, Split};
use std::path::Path;

/// Which of the two labels of a record to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelKind {
    /// The 100 fine classes (`cifar100`).
    Fine,
    /// The 20 coarse superclasses (`cifar100-coarse`).
    Coarse,
}

impl LabelKind {
    /// Number of classes of this labelling.
    pub fn num_classes(self) -> usize {
        match self {
            LabelKind::Fine => 100,
            LabelKind::Coarse => 20,
        }
    }

    /// The name file inside `cifar-100-binary/`.
    fn names_file(self) -> &'static str {
        match self {
            LabelKind::Fine => "fine_label_names.txt",
            LabelKind::Coarse => "coarse_label_names.txt",
        }
    }
}

/// Folder of the official binary release.
pub const BINARY_DIR: &str = "cifar-100-binary";
/// Bytes per image (3 x 32 x 32).
const IMAGE_BYTES: usize = 3 * 32 * 32;
/// Bytes per record: coarse label, fine label, pixels.
pub const RECORD_BYTES: usize = 2 + IMAGE_BYTES;

/// The official fine class names, in label order (used when `fine_label_names.txt` is absent).
pub const FINE_NAMES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// The official coarse class names, in label order.
pub const COARSE_NAMES: [&str; 20] = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
];

/// Records in the official files: 50,000 in `train.bin`, 10,000 in `test.bin`.
pub fn official_records(split: Split) -> usize {
    match split {
        Split::Train => 50_000,
        Split::Test => 10_000,
    }
}

/// Loads one split of CIFAR-100 with fine or coarse labels from
/// `<data_dir>/cifar-100-binary/`. With `official_sizes`, the file must hold the official
/// number of records ([`official_records`]; see
/// [`crate::catalog::LoadOptions::official_sizes`]).
pub fn load(
    data_dir: &Path,
    split: Split,
    kind: LabelKind,
    official_sizes: bool,
) -> Result<ImageSet> {
    let dir = data_dir.join(BINARY_DIR);
    let path = dir.join(format!("{}.bin", split.as_str()));
    if !path.is_file() {
        // Both labellings come from the `cifar100` download, so that is the id to fetch.
        let expected = match kind {
            LabelKind::Fine => CIFAR100_LAYOUT.to_string(),
            LabelKind::Coarse => {
                format!("{CIFAR100_LAYOUT}; cifar100-coarse reads the cifar100 files")
            }
        };
        return Err(DataError::NotFound {
            dataset: "cifar100".into(),
            data_dir: data_dir.to_path_buf(),
            expected,
        });
    }
    let class_names = read_class_names(&dir.join(kind.names_file()), kind)?;
    let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
    let (images, labels) = parse_records(&path, bytes, kind)?;
    if official_sizes {
        crate::records::expect_official_count(
            &path,
            labels.len(),
            official_records(split),
            RECORD_BYTES,
            "cifar100",
        )?;
    }
    ImageSet::new(images, labels, (3, 32, 32), class_names)
}

/// Splits a record file into pixels and the chosen labels, checking the length and both labels
/// of every record. The pixels are compacted in place, so the file's buffer becomes the image
/// buffer without a second copy of the dataset in memory.
fn parse_records(path: &Path, mut bytes: Vec<u8>, kind: LabelKind) -> Result<(Vec<u8>, Vec<u32>)> {
    let whole = crate::records::whole_records(
        path,
        bytes.len(),
        RECORD_BYTES,
        "coarse label, fine label, 3072 pixels",
    )?;
    let mut labels = Vec::with_capacity(whole);
    for (i, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let (coarse, fine) = (record[0], record[1]);
        let bad = |what: &str, value: u8, max: u8| {
            DataError::format(
                path,
                format!(
                    "record {i} (byte offset {}) has {what} label {value}, expected 0..={max}; \
                     the file is corrupt or not a CIFAR-100 record file",
                    i * RECORD_BYTES
                ),
            )
        };
        if coarse >= 20 {
            return Err(bad("coarse", coarse, 19));
        }
        if fine >= 100 {
            return Err(bad("fine", fine, 99));
        }
        labels.push(u32::from(match kind {
            LabelKind::Fine => fine,
            LabelKind::Coarse => coarse,
        }));
    }
    for i in 0..whole {
        let src = i * RECORD_BYTES + 2;
        bytes.copy_within(src..src + IMAGE_BYTES, i * IMAGE_BYTES);
    }
    bytes.truncate(whole * IMAGE_BYTES);
    bytes.shrink_to_fit();
    Ok((bytes, labels))
}

/// Class names from a name file (one per line, blank lines ignored), or the official names when
/// the file is absent.
fn read_class_names(path: &Path, kind: LabelKind) -> Result<Vec<String>> {
    let defaults: &[&str] = match kind {
        LabelKind::Fine => &FINE_NAMES,
        LabelKind::Coarse => &COARSE_NAMES,
    };
    if !path.is_file() {
        return Ok(defaults.iter().map(|s| s.to_string()).collect());
    }
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != kind.num_classes() {
        return Err(DataError::format(
            path,
            format!(
                "{} class names, expected {} (one per line); delete the file to use the \
                 standard names",
                names.len(),
                kind.num_classes()
            ),
        ));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(coarse: u8, fine: u8) -> Vec<u8> {
        let mut r = vec![fine; RECORD_BYTES];
        r[0] = coarse;
        r[1] = fine;
        r
    }

    #[test]
    fn fine_and_coarse_labels() {
        let bytes = [record(4, 30), record(19, 99)].concat();
        let (images, fine) =
            parse_records(Path::new("t.bin"), bytes.clone(), LabelKind::Fine).unwrap();
        assert_eq!(fine, vec![30, 99]);
        assert_eq!(images.len(), 2 * IMAGE_BYTES);
        assert_eq!(images[IMAGE_BYTES], 99);
        let (_, coarse) =
            parse_records(Path::new("t.bin"), bytes.clone(), LabelKind::Coarse).unwrap();
        assert_eq!(coarse, vec![4, 19]);
    }

    #[test]
    fn labels_out_of_range_name_the_record() {
        let bytes = [record(0, 0), record(20, 0)].concat();
        let err = parse_records(Path::new("t.bin"), bytes.clone(), LabelKind::Fine)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("record 1") && err.contains("coarse label 20"),
            "{err}"
        );
        let bytes = [record(0, 100)].concat();
        let err = parse_records(Path::new("t.bin"), bytes.clone(), LabelKind::Coarse)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("record 0") && err.contains("fine label 100"),
            "{err}"
        );
    }

    #[test]
    fn length_must_be_a_multiple_of_the_record() {
        let mut bytes = record(0, 0);
        bytes.push(1);
        let err = parse_records(Path::new("t.bin"), bytes.clone(), LabelKind::Fine)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("record 1") && err.contains("offset 3074"),
            "{err}"
        );
    }
}
