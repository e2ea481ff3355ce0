//! Every loader on tiny generated fixtures, including bad inputs.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use common::*;
use datasets::catalog::{DatasetId, Origin, load, load_with_origin};
use datasets::{DataError, Split};
use std::path::Path;

fn err_text(id: &DatasetId, dir: &Path, split: Split) -> String {
    load(id, dir, split, &uncached()).unwrap_err().to_string()
}

// ---------------------------------------------------------------- CIFAR-10 binary

#[test]
fn cifar10_binary_loads_records_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10_bin(dir.path(), 3);
    let loaded =
        load_with_origin(&DatasetId::Cifar10, dir.path(), Split::Train, &uncached()).unwrap();
    assert_eq!(loaded.origin, Origin::Binary);
    let set = loaded.set;
    assert_eq!(set.len(), 15);
    assert_eq!((set.channels, set.height, set.width), (3, 32, 32));
    assert_eq!(set.class_names, CIFAR10_CLASSES);
    // Batch 2 (index 1), record 2: label (1 + 2) % 10, seed 102.
    assert_eq!(set.labels[5], 3);
    assert_eq!(set.image(5), &planar(102, 32, 32)[..]);

    let test = load(&DatasetId::Cifar10, dir.path(), Split::Test, &uncached()).unwrap();
    assert_eq!(test.len(), 3);
    assert_eq!(test.labels, vec![5, 6, 7]);
    assert_eq!(test.image(0), &planar(500, 32, 32)[..]);
}

#[test]
fn cifar10_binary_without_meta_uses_standard_names() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10_bin(dir.path(), 1);
    std::fs::remove_file(dir.path().join("cifar-10-batches-bin/batches.meta.txt")).unwrap();
    let set = load(&DatasetId::Cifar10, dir.path(), Split::Test, &uncached()).unwrap();
    assert_eq!(set.class_names[9], "truck");
}

#[test]
fn cifar10_truncated_binary_names_file_record_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10_bin(dir.path(), 3);
    let path = dir.path().join("cifar-10-batches-bin/data_batch_3.bin");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..2 * 3073 + 1000]).unwrap();
    let err = err_text(&DatasetId::Cifar10, dir.path(), Split::Train);
    assert!(err.contains("data_batch_3.bin"), "{err}");
    assert!(err.contains("record 2"), "{err}");
    assert!(err.contains("offset 6146"), "{err}");
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn cifar10_label_out_of_range_names_file_and_record() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10_bin(dir.path(), 3);
    let path = dir.path().join("cifar-10-batches-bin/test_batch.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3073] = 10;
    std::fs::write(&path, bytes).unwrap();
    let err = err_text(&DatasetId::Cifar10, dir.path(), Split::Test);
    assert!(
        err.contains("test_batch.bin") && err.contains("record 1"),
        "{err}"
    );
    assert!(err.contains("label 10"), "{err}");
}

#[test]
fn cifar10_partial_binary_names_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10_bin(dir.path(), 1);
    std::fs::remove_file(dir.path().join("cifar-10-batches-bin/data_batch_4.bin")).unwrap();
    let err = err_text(&DatasetId::Cifar10, dir.path(), Split::Train);
    assert!(err.contains("data_batch_4.bin"), "{err}");
}

#[test]
fn cifar10_binary_cut_at_a_record_boundary_is_refused() {
    assert!(datasets::catalog::LoadOptions::default().official_sizes);
    let official = datasets::catalog::LoadOptions {
        official_sizes: true,
        ..uncached()
    };
    let dir = tempfile::tempdir().unwrap();
    write_cifar10_bin(dir.path(), 3);
    let err = load(&DatasetId::Cifar10, dir.path(), Split::Test, &official)
        .unwrap_err()
        .to_string();
    assert!(err.contains("test_batch.bin"), "{err}");
    assert!(
        err.contains("3 records (9219 bytes)") && err.contains("10000 records (30730000 bytes)"),
        "{err}"
    );
    assert!(err.contains("harness data fetch cifar10"), "{err}");
    // The official size loads.
    let full: Vec<u8> = (0..10_000u32)
        .flat_map(|k| cifar10_record((k % 10) as u8, k))
        .collect();
    std::fs::write(dir.path().join("cifar-10-batches-bin/test_batch.bin"), full).unwrap();
    let set = load(&DatasetId::Cifar10, dir.path(), Split::Test, &official).unwrap();
    assert_eq!(set.len(), 10_000);
    assert_eq!(set.image(9_999), &planar(9_999, 32, 32)[..]);
}

// ---------------------------------------------------------------- CIFAR-10 folders

#[test]
fn cifar10_folder_layout_loads_sorted_classes() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10_folder(dir.path(), 2);
    let loaded =
        load_with_origin(&DatasetId::Cifar10, dir.path(), Split::Train, &uncached()).unwrap();
    assert_eq!(loaded.origin, Origin::Decoded);
    let set = loaded.set;
    assert_eq!(set.len(), 20);
    assert_eq!(set.class_names, CIFAR10_CLASSES);
    assert_eq!(set.class_counts(), vec![2; 10]);
    // Class 3 (cat), image 1 -> position 7, seed 31; PNG is lossless.
    assert_eq!(set.labels[7], 3);
    assert_eq!(set.image(7), &planar(31, 32, 32)[..]);
    let test = load(&DatasetId::Cifar10, dir.path(), Split::Test, &uncached()).unwrap();
    assert_eq!(test.image(0), &planar(1000, 32, 32)[..]);
}

#[test]
fn progress_bar_does_not_change_the_result() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10_folder(dir.path(), 1);
    let opts = datasets::catalog::LoadOptions {
        progress: true,
        ..uncached()
    };
    let with = load(&DatasetId::Cifar10, dir.path(), Split::Test, &opts).unwrap();
    let without = load(&DatasetId::Cifar10, dir.path(), Split::Test, &uncached()).unwrap();
    assert_eq!(with, without);
}

#[test]
fn cifar10_binary_wins_over_folders() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10_folder(dir.path(), 1);
    write_cifar10_bin(dir.path(), 1);
    let loaded =
        load_with_origin(&DatasetId::Cifar10, dir.path(), Split::Test, &uncached()).unwrap();
    assert_eq!(loaded.origin, Origin::Binary);
}

#[test]
fn cifar10_folder_wrong_size_names_file_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10_folder(dir.path(), 2);
    let bad = dir.path().join("cifar10/train/dog/0001.png");
    write_png(&bad, 1, 30, 32);
    let err = err_text(&DatasetId::Cifar10, dir.path(), Split::Train);
    assert!(err.contains("dog") && err.contains("0001.png"), "{err}");
    assert!(
        err.contains("30x32") && err.contains("expected 32x32"),
        "{err}"
    );
}

#[test]
fn cifar10_folder_corrupt_jpeg_names_file() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10_folder(dir.path(), 1);
    let bad = dir.path().join("cifar10/train/ship/0007.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 definitely not a jpeg").unwrap();
    let err = load(&DatasetId::Cifar10, dir.path(), Split::Train, &uncached()).unwrap_err();
    assert!(matches!(err, DataError::Decode { .. }), "{err}");
    let err = err.to_string();
    assert!(
        err.contains("0007.jpg") && err.contains("cannot decode"),
        "{err}"
    );
}

#[test]
fn cifar10_folder_jpeg_decodes_close_to_source() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10_folder(dir.path(), 1);
    let path = dir.path().join("cifar10/train/airplane/0000.png");
    std::fs::remove_file(&path).unwrap();
    write_jpeg(&path.with_extension("JPG"), 0, 32, 32);
    let set = load(&DatasetId::Cifar10, dir.path(), Split::Train, &uncached()).unwrap();
    let diff: f64 = set
        .image(0)
        .iter()
        .zip(planar(0, 32, 32))
        .map(|(a, b)| (*a as f64 - b as f64).abs())
        .sum::<f64>()
        / 3072.0;
    assert!(diff < 20.0, "mean abs difference {diff}");
}

#[test]
fn cifar10_missing_is_not_found_with_fix() {
    let dir = tempfile::tempdir().unwrap();
    let err = load(&DatasetId::Cifar10, dir.path(), Split::Train, &uncached()).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }), "{err}");
    let err = err.to_string();
    assert!(err.contains("harness data fetch cifar10"), "{err}");
    assert!(err.contains("--data-dir"), "{err}");
    assert!(
        err.contains("cifar-10-batches-bin") && err.contains("cifar10/{train,test}"),
        "{err}"
    );
}

// ---------------------------------------------------------------- CIFAR-100

#[test]
fn cifar100_fine_and_coarse() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar100(dir.path(), 250, true);
    let fine = load(&DatasetId::Cifar100, dir.path(), Split::Train, &uncached()).unwrap();
    assert_eq!(fine.len(), 250);
    assert_eq!(fine.num_classes(), 100);
    assert_eq!(fine.labels[123], 23);
    assert_eq!(fine.class_names[7], "fine7");
    assert_eq!(fine.image(123), &planar(123, 32, 32)[..]);
    let coarse = load(
        &DatasetId::Cifar100Coarse,
        dir.path(),
        Split::Test,
        &uncached(),
    )
    .unwrap();
    assert_eq!(coarse.num_classes(), 20);
    assert_eq!(coarse.labels[123], 3);
    assert_eq!(coarse.class_names[19], "coarse19");
    assert_eq!(coarse.images, fine.images);
}

#[test]
fn cifar100_without_name_files_uses_standard_names() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar100(dir.path(), 5, false);
    let fine = load(&DatasetId::Cifar100, dir.path(), Split::Test, &uncached()).unwrap();
    assert_eq!(fine.class_names[0], "apple");
    assert_eq!(fine.class_names[99], "worm");
    let coarse = load(
        &DatasetId::Cifar100Coarse,
        dir.path(),
        Split::Test,
        &uncached(),
    )
    .unwrap();
    assert_eq!(coarse.class_names[19], "vehicles_2");
}

#[test]
fn cifar100_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar100(dir.path(), 4, true);
    let path = dir.path().join("cifar-100-binary/train.bin");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..3074 * 3 + 5]).unwrap();
    let err = err_text(&DatasetId::Cifar100, dir.path(), Split::Train);
    assert!(
        err.contains("train.bin") && err.contains("record 3"),
        "{err}"
    );
    assert!(
        err.contains("offset 9222") && err.contains("multiple of 3074"),
        "{err}"
    );

    let mut bytes = bytes;
    bytes[3074 + 1] = 100;
    std::fs::write(&path, &bytes).unwrap();
    let err = err_text(&DatasetId::Cifar100, dir.path(), Split::Train);
    assert!(
        err.contains("record 1") && err.contains("fine label 100"),
        "{err}"
    );
    bytes[3074 + 1] = 1;
    bytes[2 * 3074] = 20;
    std::fs::write(&path, &bytes).unwrap();
    let err = err_text(&DatasetId::Cifar100Coarse, dir.path(), Split::Train);
    assert!(
        err.contains("record 2") && err.contains("coarse label 20"),
        "{err}"
    );

    let names = dir.path().join("cifar-100-binary/fine_label_names.txt");
    std::fs::write(&names, "a\nb\n").unwrap();
    let err = err_text(&DatasetId::Cifar100, dir.path(), Split::Test);
    assert!(
        err.contains("fine_label_names.txt") && err.contains("expected 100"),
        "{err}"
    );
}

#[test]
fn cifar100_file_cut_at_a_record_boundary_is_refused() {
    let official = datasets::catalog::LoadOptions {
        official_sizes: true,
        ..uncached()
    };
    let dir = tempfile::tempdir().unwrap();
    write_cifar100(dir.path(), 4, false);
    for (id, split, file, expected) in [
        (
            DatasetId::Cifar100,
            Split::Train,
            "train.bin",
            "50000 records (153700000 bytes)",
        ),
        (
            DatasetId::Cifar100Coarse,
            Split::Test,
            "test.bin",
            "10000 records (30740000 bytes)",
        ),
    ] {
        let err = load(&id, dir.path(), split, &official)
            .unwrap_err()
            .to_string();
        assert!(err.contains(file), "{err}");
        assert!(
            err.contains("4 records (12296 bytes)") && err.contains(expected),
            "{err}"
        );
        assert!(err.contains("harness data fetch cifar100"), "{err}");
    }
    // The official size loads.
    let full: Vec<u8> = (0..10_000usize)
        .flat_map(|k| {
            let mut r = vec![(k % 20) as u8, (k % 100) as u8];
            r.extend(planar(k as u32, 32, 32));
            r
        })
        .collect();
    std::fs::write(dir.path().join("cifar-100-binary/test.bin"), full).unwrap();
    let set = load(&DatasetId::Cifar100, dir.path(), Split::Test, &official).unwrap();
    assert_eq!(set.len(), 10_000);
    assert_eq!(set.labels[9_999], 99);
}

#[test]
fn cifar100_missing_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let err = err_text(&DatasetId::Cifar100Coarse, dir.path(), Split::Test);
    assert!(err.contains("harness data fetch cifar100`"), "{err}");
    assert!(
        err.contains("cifar100-coarse reads the cifar100 files"),
        "{err}"
    );
    assert!(err.contains("cifar-100-binary"), "{err}");
}

// ---------------------------------------------------------------- Tiny-ImageNet

#[test]
fn tiny_imagenet_train_follows_wnids_order() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny(dir.path(), 3);
    let set = load(
        &DatasetId::TinyImagenet,
        dir.path(),
        Split::Train,
        &uncached(),
    )
    .unwrap();
    assert_eq!(set.len(), 9);
    assert_eq!((set.channels, set.height, set.width), (3, 64, 64));
    assert_eq!(set.class_names, vec!["tabby", "goldfish", "n03"]);
    assert_eq!(set.labels, vec![0, 0, 0, 1, 1, 1, 2, 2, 2]);
}

#[test]
fn tiny_imagenet_val_labels_and_grayscale() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny(dir.path(), 1);
    let set = load(
        &DatasetId::TinyImagenet,
        dir.path(),
        Split::Test,
        &uncached(),
    )
    .unwrap();
    // val_0 n03, val_1 n02, val_2 n01, val_3 n03; labels follow wnids.txt order (n02, n01, n03).
    assert_eq!(set.labels, vec![2, 0, 1, 2]);
    let gray = set.image(3);
    let plane = 64 * 64;
    assert_eq!(&gray[..plane], &gray[plane..2 * plane]);
    assert_eq!(&gray[..plane], &gray[2 * plane..]);
    assert!(
        gray.iter().all(|&v| v.abs_diff(90) <= 2),
        "grayscale value lost"
    );
    // A colour image really has different channels.
    let colour = set.image(0);
    assert_ne!(&colour[..plane], &colour[plane..2 * plane]);
}

#[test]
fn tiny_imagenet_unknown_wnid_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny(dir.path(), 1);
    let ann = dir.path().join("tiny-imagenet-200/val/val_annotations.txt");
    let text = std::fs::read_to_string(&ann)
        .unwrap()
        .replace("val_2.JPEG\tn01", "val_2.JPEG\tn77");
    std::fs::write(&ann, text).unwrap();
    let err = err_text(&DatasetId::TinyImagenet, dir.path(), Split::Test);
    assert!(
        err.contains("val_annotations.txt") && err.contains("line 3"),
        "{err}"
    );
    assert!(err.contains("n77"), "{err}");
}

#[test]
fn tiny_imagenet_wrong_size_and_missing_class() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny(dir.path(), 2);
    let bad = dir
        .path()
        .join("tiny-imagenet-200/train/n01/images/n01_1.JPEG");
    write_jpeg(&bad, 0, 32, 32);
    let err = err_text(&DatasetId::TinyImagenet, dir.path(), Split::Train);
    assert!(
        err.contains("n01_1.JPEG") && err.contains("32x32") && err.contains("expected 64x64"),
        "{err}"
    );

    std::fs::remove_dir_all(dir.path().join("tiny-imagenet-200/train/n03")).unwrap();
    let err = err_text(&DatasetId::TinyImagenet, dir.path(), Split::Train);
    assert!(err.contains("n03"), "{err}");
}

#[test]
fn tiny_imagenet_missing_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let err = err_text(&DatasetId::TinyImagenet, dir.path(), Split::Train);
    assert!(
        err.contains("harness data fetch tiny-imagenet") && err.contains("--data-dir"),
        "{err}"
    );
    assert!(err.contains("wnids.txt"), "{err}");
}

// ---------------------------------------------------------------- image-folder

fn image_folder_id(root: &Path) -> DatasetId {
    DatasetId::parse(&format!("image-folder:{}", root.display())).unwrap()
}

#[test]
fn image_folder_loads_mixed_formats_and_val() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flowers");
    write_png(&root.join("train/rose/a.PNG"), 1, 20, 12);
    write_jpeg(&root.join("train/daisy/b.jpeg"), 2, 20, 12);
    write_png(&root.join("train/daisy/a.png"), 3, 20, 12);
    std::fs::write(root.join("train/daisy/notes.txt"), "not an image").unwrap();
    write_png(&root.join("val/rose/x.png"), 4, 20, 12);
    let id = image_folder_id(&root);
    let set = load(&id, dir.path(), Split::Train, &uncached()).unwrap();
    assert_eq!(set.class_names, vec!["daisy", "rose"]);
    assert_eq!(set.labels, vec![0, 0, 1]);
    assert_eq!((set.channels, set.height, set.width), (3, 12, 20));
    assert_eq!(set.image(0), &planar(3, 20, 12)[..]);
    let test = load(&id, dir.path(), Split::Test, &uncached()).unwrap();
    assert_eq!(test.labels, vec![1]);
    assert_eq!(test.class_names, vec!["daisy", "rose"]);
    assert_eq!(
        id.info().normalization,
        datasets::catalog::Normalization::IMAGENET
    );
}

#[test]
fn image_folder_relative_to_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("mine/train/a/1.png"), 1, 4, 4);
    let id = DatasetId::parse("image-folder:mine").unwrap();
    let set = load(&id, dir.path(), Split::Train, &uncached()).unwrap();
    assert_eq!(set.len(), 1);
}

#[test]
fn image_folder_size_must_match_first_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("x");
    write_png(&root.join("train/a/1.png"), 1, 8, 8);
    write_png(&root.join("train/b/2.png"), 1, 8, 9);
    let err = err_text(&image_folder_id(&root), dir.path(), Split::Train);
    assert!(
        err.contains("2.png") && err.contains("8x9") && err.contains("expected 8x8"),
        "{err}"
    );
    assert!(err.contains("first one") && err.contains("1.png"), "{err}");
}

#[test]
fn image_folder_test_class_must_exist_in_train() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("x");
    write_png(&root.join("train/a/1.png"), 1, 8, 8);
    write_png(&root.join("test/zebra/1.png"), 1, 8, 8);
    let err = err_text(&image_folder_id(&root), dir.path(), Split::Test);
    assert!(err.contains("zebra"), "{err}");
}

#[test]
fn image_folder_missing() {
    let dir = tempfile::tempdir().unwrap();
    let err = err_text(
        &image_folder_id(&dir.path().join("nope")),
        dir.path(),
        Split::Train,
    );
    assert!(err.contains("nope") && err.contains("--data-dir"), "{err}");
    let root = dir.path().join("only-train");
    write_png(&root.join("train/a/1.png"), 1, 8, 8);
    let err = err_text(&image_folder_id(&root), dir.path(), Split::Test);
    assert!(err.contains("test/<class>"), "{err}");
}

// ---------------------------------------------------------------- synthetic

#[test]
fn synthetic_needs_no_files_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let a = load_with_origin(
        &DatasetId::Synthetic(32),
        dir.path(),
        Split::Train,
        &uncached(),
    )
    .unwrap();
    assert_eq!(a.origin, Origin::Generated);
    let b = load(
        &DatasetId::Synthetic(32),
        dir.path(),
        Split::Train,
        &uncached(),
    )
    .unwrap();
    assert_eq!(a.set, b);
    let info = DatasetId::Synthetic(32).info();
    assert_eq!(info.image_shape, Some((b.channels, b.height, b.width)));
    assert_eq!(info.num_classes, b.num_classes());
}
