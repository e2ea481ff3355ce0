//! Times the first (decoding) and second (cached) load of every dataset split found under a data
//! directory, with a fresh cache folder so that the first load really decodes.
//!
//! ```text
//! cargo run --release -p datasets --example load_times -- /path/to/data [cache-dir]
//! ```

use datasets::Split;
use datasets::catalog::{DatasetId, LoadOptions, load_with_origin};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let data_dir = PathBuf::from(
        args.next()
            .ok_or("usage: load_times DATA_DIR [CACHE_DIR]")?,
    );
    let tmp = tempfile::tempdir()?;
    let cache_dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let opts = LoadOptions {
        use_cache: true,
        cache_dir: Some(cache_dir.clone()),
        progress: false,
        official_sizes: true,
    };
    println!("data {} cache {}", data_dir.display(), cache_dir.display());
    println!(
        "{:<16} {:<5} {:>7} {:>9} {:>8} {:>9} {:>9}  {:<22} {:<20} origins",
        "dataset",
        "split",
        "images",
        "shape",
        "classes",
        "first",
        "second",
        "mean RGB",
        "per class"
    );
    for name in [
        "cifar10",
        "cifar100",
        "cifar100-coarse",
        "tiny-imagenet",
        "synthetic",
    ] {
        let id = DatasetId::parse(name)?;
        for split in [Split::Train, Split::Test] {
            let t0 = Instant::now();
            let first = match load_with_origin(&id, &data_dir, split, &opts) {
                Ok(l) => l,
                Err(e) => {
                    println!("{name:<16} {split:<5} skipped: {e}");
                    continue;
                }
            };
            let t1 = t0.elapsed();
            let t0 = Instant::now();
            let second = load_with_origin(&id, &data_dir, split, &opts)?;
            let t2 = t0.elapsed();
            assert_eq!(first.set, second.set, "{name} {split}: cached set differs");
            let s = &second.set;
            let counts = s.class_counts();
            let (lo, hi) = (
                counts.iter().min().copied().unwrap_or(0),
                counts.iter().max().copied().unwrap_or(0),
            );
            println!(
                "{name:<16} {split:<5} {:>7} {:>9} {:>8} {:>8.3}s {:>8.3}s  {:<22} {:<20} {:?}/{:?}",
                s.len(),
                format!("{}x{}x{}", s.channels, s.height, s.width),
                s.num_classes(),
                t1.as_secs_f64(),
                t2.as_secs_f64(),
                channel_means(s),
                format!("{lo}..{hi}"),
                first.origin,
                second.origin
            );
        }
    }
    Ok(())
}

/// Mean of x / 255 per channel, as a short string: a check on channel order and decoding.
fn channel_means(set: &datasets::ImageSet) -> String {
    let plane = set.height * set.width;
    let mut sums = vec![0u64; set.channels];
    for img in set.images.chunks(set.image_len()) {
        for (c, p) in img.chunks(plane).enumerate() {
            sums[c] += p.iter().map(|&v| u64::from(v)).sum::<u64>();
        }
    }
    let n = (set.len() * plane) as f64 * 255.0;
    let means: Vec<String> = sums
        .iter()
        .map(|&s| format!("{:.4}", s as f64 / n))
        .collect();
    means.join(" ")
}
