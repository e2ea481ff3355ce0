//! The decoded cache seen through `load`: hits, invalidation, corruption, unwritable folders.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use common::*;
use datasets::Split;
use datasets::catalog::{DatasetId, LoadOptions, Origin, load_with_origin};
use std::path::{Path, PathBuf};

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "pbset"));
    v.sort();
    v
}

#[test]
fn second_load_comes_from_the_cache_and_is_equal() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    write_cifar10_folder(data.path(), 2);
    let opts = cached(cache.path());
    let first = load_with_origin(&DatasetId::Cifar10, data.path(), Split::Train, &opts).unwrap();
    assert_eq!(first.origin, Origin::Decoded);
    assert_eq!(cache_files(cache.path()).len(), 1);
    let second = load_with_origin(&DatasetId::Cifar10, data.path(), Split::Train, &opts).unwrap();
    assert_eq!(second.origin, Origin::Cache);
    assert_eq!(second.set, first.set);
    // The other split has its own file.
    let test = load_with_origin(&DatasetId::Cifar10, data.path(), Split::Test, &opts).unwrap();
    assert_eq!(test.origin, Origin::Decoded);
    assert_eq!(cache_files(cache.path()).len(), 2);
}

#[test]
fn changed_sources_invalidate_the_cache() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    write_tiny(data.path(), 2);
    let opts = cached(cache.path());
    let first =
        load_with_origin(&DatasetId::TinyImagenet, data.path(), Split::Train, &opts).unwrap();
    assert_eq!(first.origin, Origin::Decoded);
    // Replace one image with different content and a different size on disk.
    let path = data
        .path()
        .join("tiny-imagenet-200/train/n01/images/n01_0.JPEG");
    write_gray_jpeg(&path, 200, 64, 64);
    let second =
        load_with_origin(&DatasetId::TinyImagenet, data.path(), Split::Train, &opts).unwrap();
    assert_eq!(second.origin, Origin::Decoded);
    assert_ne!(second.set, first.set);
    // The stale file was replaced, not kept next to the new one.
    assert_eq!(cache_files(cache.path()).len(), 1);
    let third =
        load_with_origin(&DatasetId::TinyImagenet, data.path(), Split::Train, &opts).unwrap();
    assert_eq!(third.origin, Origin::Cache);
    assert_eq!(third.set, second.set);
}

#[test]
fn corrupt_or_truncated_cache_is_rebuilt() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    write_cifar10_folder(data.path(), 1);
    let opts = cached(cache.path());
    let first = load_with_origin(&DatasetId::Cifar10, data.path(), Split::Test, &opts).unwrap();
    let file = cache_files(cache.path()).pop().unwrap();
    let len = std::fs::metadata(&file).unwrap().len() as usize;

    corrupt_byte(&file, len / 2);
    let rebuilt = load_with_origin(&DatasetId::Cifar10, data.path(), Split::Test, &opts).unwrap();
    assert_eq!(rebuilt.origin, Origin::Decoded);
    assert_eq!(rebuilt.set, first.set);
    let again = load_with_origin(&DatasetId::Cifar10, data.path(), Split::Test, &opts).unwrap();
    assert_eq!(again.origin, Origin::Cache);

    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..len - 100]).unwrap();
    let rebuilt = load_with_origin(&DatasetId::Cifar10, data.path(), Split::Test, &opts).unwrap();
    assert_eq!(rebuilt.origin, Origin::Decoded);
    assert_eq!(rebuilt.set, first.set);
    assert_eq!(std::fs::metadata(&file).unwrap().len() as usize, len);
}

#[test]
fn no_cache_option_bypasses_it() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    write_cifar10_folder(data.path(), 1);
    let opts = LoadOptions {
        use_cache: false,
        cache_dir: Some(cache.path().to_path_buf()),
        progress: false,
        official_sizes: false,
    };
    for _ in 0..2 {
        let l = load_with_origin(&DatasetId::Cifar10, data.path(), Split::Test, &opts).unwrap();
        assert_eq!(l.origin, Origin::Decoded);
    }
    assert!(cache_files(cache.path()).is_empty());
}

#[test]
fn unwritable_cache_dir_still_loads() {
    let data = tempfile::tempdir().unwrap();
    write_cifar10_folder(data.path(), 1);
    // A cache "folder" below a regular file can never be created, even by root.
    let blocker = data.path().join("blocker");
    std::fs::write(&blocker, b"").unwrap();
    let opts = cached(&blocker.join("cache"));
    for _ in 0..2 {
        let l = load_with_origin(&DatasetId::Cifar10, data.path(), Split::Test, &opts).unwrap();
        assert_eq!(l.origin, Origin::Decoded);
        assert_eq!(l.set.len(), 10);
    }
}

#[test]
fn image_folder_uses_the_cache_too() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let root = data.path().join("pets");
    write_png(&root.join("train/cat/1.png"), 1, 6, 5);
    write_png(&root.join("train/dog/1.png"), 2, 6, 5);
    let id = DatasetId::ImageFolder(root);
    let opts = cached(cache.path());
    let first = load_with_origin(&id, data.path(), Split::Train, &opts).unwrap();
    let second = load_with_origin(&id, data.path(), Split::Train, &opts).unwrap();
    assert_eq!(
        (first.origin, second.origin),
        (Origin::Decoded, Origin::Cache)
    );
    assert_eq!(first.set, second.set);
}

#[test]
fn binary_layouts_do_not_touch_the_cache() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    write_cifar100(data.path(), 3, false);
    let l = load_with_origin(
        &DatasetId::Cifar100,
        data.path(),
        Split::Train,
        &cached(cache.path()),
    )
    .unwrap();
    assert_eq!(l.origin, Origin::Binary);
    assert!(cache_files(cache.path()).is_empty());
}
