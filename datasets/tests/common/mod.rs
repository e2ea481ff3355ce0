//! Fixture writers shared by the integration tests: tiny datasets in every supported layout,
//! generated in temporary folders.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::path::Path;

/// A deterministic pixel value for image `seed` at (channel, y, x).
pub fn pixel(seed: u32, c: usize, y: usize, x: usize) -> u8 {
    ((seed as usize * 37 + c * 80 + y * 7 + x * 3) % 256) as u8
}

/// An RGB image of `w` x `h` filled by [`pixel`].
pub fn rgb_image(seed: u32, w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([0, 1, 2].map(|c| pixel(seed, c, y as usize, x as usize)))
    })
}

/// The planar (C x H x W) bytes of [`rgb_image`].
pub fn planar(seed: u32, w: usize, h: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(3 * w * h);
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                v.push(pixel(seed, c, y, x));
            }
        }
    }
    v
}

pub fn mkdirs(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
}

/// Writes a lossless PNG.
pub fn write_png(path: &Path, seed: u32, w: u32, h: u32) {
    mkdirs(path.parent().unwrap());
    rgb_image(seed, w, h)
        .save_with_format(path, image::ImageFormat::Png)
        .unwrap();
}

/// Writes a JPEG (lossy: compare pixels approximately).
pub fn write_jpeg(path: &Path, seed: u32, w: u32, h: u32) {
    mkdirs(path.parent().unwrap());
    rgb_image(seed, w, h)
        .save_with_format(path, image::ImageFormat::Jpeg)
        .unwrap();
}

/// Writes a single-channel grayscale JPEG of constant value `v`.
pub fn write_gray_jpeg(path: &Path, v: u8, w: u32, h: u32) {
    mkdirs(path.parent().unwrap());
    image::GrayImage::from_pixel(w, h, image::Luma([v]))
        .save_with_format(path, image::ImageFormat::Jpeg)
        .unwrap();
}

pub const CIFAR10_CLASSES: [&str; 10] = [
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

/// One CIFAR-10 binary record: label byte then planar pixels of [`planar`]`(seed)`.
pub fn cifar10_record(label: u8, seed: u32) -> Vec<u8> {
    let mut r = vec![label];
    r.extend(planar(seed, 32, 32));
    r
}

/// `cifar-10-batches-bin/` with `per_file` records in each of the six batch files. Record `k` of
/// batch file `b` (0-based; test = 5) has label `(b + k) % 10` and pixel seed `b * 100 + k`.
pub fn write_cifar10_bin(data_dir: &Path, per_file: usize) {
    let dir = data_dir.join("cifar-10-batches-bin");
    mkdirs(&dir);
    let names = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ];
    for (b, name) in names.iter().enumerate() {
        let bytes: Vec<u8> = (0..per_file)
            .flat_map(|k| cifar10_record(((b + k) % 10) as u8, (b * 100 + k) as u32))
            .collect();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let meta: String = CIFAR10_CLASSES.iter().map(|c| format!("{c}\n")).collect();
    std::fs::write(dir.join("batches.meta.txt"), meta + "\n").unwrap();
}

/// `cifar10/{train,test}/<class>/NNNN.png`: `per_class` PNG images per class; image `k` of class
/// `c` has pixel seed `c * 10 + k` (test: `+ 1000`).
pub fn write_cifar10_folder(data_dir: &Path, per_class: usize) {
    for (split, offset) in [("train", 0), ("test", 1000)] {
        for (c, class) in CIFAR10_CLASSES.iter().enumerate() {
            for k in 0..per_class {
                let path = data_dir
                    .join("cifar10")
                    .join(split)
                    .join(class)
                    .join(format!("{k:04}.png"));
                write_png(&path, offset + (c * 10 + k) as u32, 32, 32);
            }
        }
    }
}

/// `cifar-100-binary/{train,test}.bin`: `n` records, record `k` has coarse `k % 20`, fine
/// `k % 100`, pixel seed `k`. Writes the name files when `names`.
pub fn write_cifar100(data_dir: &Path, n: usize, names: bool) {
    let dir = data_dir.join("cifar-100-binary");
    mkdirs(&dir);
    for split in ["train", "test"] {
        let bytes: Vec<u8> = (0..n)
            .flat_map(|k| {
                let mut r = vec![(k % 20) as u8, (k % 100) as u8];
                r.extend(planar(k as u32, 32, 32));
                r
            })
            .collect();
        std::fs::write(dir.join(format!("{split}.bin")), bytes).unwrap();
    }
    if names {
        let fine: String = (0..100).map(|i| format!("fine{i}\n")).collect();
        let coarse: String = (0..20).map(|i| format!("coarse{i}\n")).collect();
        std::fs::write(dir.join("fine_label_names.txt"), fine).unwrap();
        std::fs::write(dir.join("coarse_label_names.txt"), coarse).unwrap();
    }
}

pub const TINY_WNIDS: [&str; 3] = ["n02", "n01", "n03"];

/// `tiny-imagenet-200/`: the three [`TINY_WNIDS`] (not sorted, to check that line order wins),
/// `per_class` PNG-content JPEG files per class, 4 validation images (`val_3` grayscale, value 90)
/// and a words.txt naming n01 and n02.
pub fn write_tiny(data_dir: &Path, per_class: usize) {
    let root = data_dir.join("tiny-imagenet-200");
    mkdirs(&root);
    std::fs::write(root.join("wnids.txt"), TINY_WNIDS.join("\n") + "\n").unwrap();
    std::fs::write(
        root.join("words.txt"),
        "n00\tentity\nn01\tgoldfish, Carassius auratus\nn02\ttabby, tabby cat\n",
    )
    .unwrap();
    for (c, wnid) in TINY_WNIDS.iter().enumerate() {
        for k in 0..per_class {
            let path = root
                .join("train")
                .join(wnid)
                .join("images")
                .join(format!("{wnid}_{k}.JPEG"));
            write_jpeg(&path, (c * 10 + k) as u32, 64, 64);
        }
        std::fs::write(
            root.join("train")
                .join(wnid)
                .join(format!("{wnid}_boxes.txt")),
            "",
        )
        .unwrap();
    }
    let val = root.join("val");
    let mut ann = String::new();
    for (i, wnid) in ["n03", "n02", "n01", "n03"].iter().enumerate() {
        let path = val.join("images").join(format!("val_{i}.JPEG"));
        if i == 3 {
            write_gray_jpeg(&path, 90, 64, 64);
        } else {
            write_jpeg(&path, 500 + i as u32, 64, 64);
        }
        ann.push_str(&format!("val_{i}.JPEG\t{wnid}\t0\t0\t10\t10\n"));
    }
    std::fs::write(val.join("val_annotations.txt"), ann).unwrap();
}

/// Flips one byte of a file.
pub fn corrupt_byte(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// Options that use a private cache folder. The CIFAR binary fixtures are reduced copies, so
/// the official record counts are not required (tests that check them turn it back on).
pub fn cached(cache_dir: &Path) -> datasets::catalog::LoadOptions {
    datasets::catalog::LoadOptions {
        use_cache: true,
        cache_dir: Some(cache_dir.to_path_buf()),
        progress: false,
        official_sizes: false,
    }
}

/// Options without the cache (and, as [`cached`], without the official record counts).
pub fn uncached() -> datasets::catalog::LoadOptions {
    datasets::catalog::LoadOptions {
        use_cache: false,
        cache_dir: None,
        progress: false,
        official_sizes: false,
    }
}
