//! Batching, augmentation and splits through the public API.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use candle_core::Device;
use datasets::augment::{Augment, augment_into};
use datasets::batch::{BatchConfig, epoch_batches, num_batches, to_tensor};
use datasets::catalog::Normalization;
use datasets::split::{SplitFractions, disjoint_splits, stratified_subset};
use datasets::synthetic::{SyntheticSpec, generate};
use datasets::{ImageSet, Split};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn small_set() -> ImageSet {
    generate(
        &SyntheticSpec {
            classes: 4,
            train: 22,
            test: 8,
            channels: 3,
            height: 8,
            width: 6,
            seed: 3,
        },
        Split::Train,
    )
}

fn config(batch_size: usize) -> BatchConfig {
    BatchConfig {
        batch_size,
        shuffle: true,
        drop_last: false,
        augment: None,
        normalization: None,
    }
}

fn collect(
    set: &ImageSet,
    cfg: &BatchConfig,
    seed: u64,
    epoch: u64,
) -> Vec<datasets::batch::Batch> {
    epoch_batches(set, cfg, seed, epoch, &Device::Cpu)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn flat(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn shapes_labels_and_indices() {
    let set = small_set();
    let cfg = config(5);
    let batches = collect(&set, &cfg, 1, 0);
    assert_eq!(batches.len(), 5);
    assert_eq!(num_batches(set.len(), &cfg), 5);
    assert_eq!(batches[0].images.dims(), &[5, 3, 8, 6]);
    assert_eq!(batches[4].images.dims(), &[2, 3, 8, 6]);
    assert_eq!(batches[0].images.dtype(), candle_core::DType::F32);
    assert_eq!(batches[0].labels.dtype(), candle_core::DType::U32);
    let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    for b in &batches {
        let labels = b.labels.to_vec1::<u32>().unwrap();
        let expected: Vec<u32> = b.indices.iter().map(|&i| set.labels[i]).collect();
        assert_eq!(labels, expected);
    }
    seen.sort();
    assert_eq!(seen, (0..22).collect::<Vec<_>>());
}

#[test]
fn drop_last_skips_the_short_batch() {
    let set = small_set();
    let cfg = BatchConfig {
        drop_last: true,
        ..config(5)
    };
    let batches = collect(&set, &cfg, 1, 0);
    assert_eq!(batches.len(), 4);
    assert_eq!(num_batches(22, &cfg), 4);
    assert!(batches.iter().all(|b| b.indices.len() == 5));
}

#[test]
fn normalisation_is_exact() {
    let set = small_set();
    let norm = Normalization::CIFAR10;
    let cfg = BatchConfig {
        shuffle: false,
        normalization: Some(norm),
        ..config(4)
    };
    let batches = collect(&set, &cfg, 0, 0);
    let values = flat(&batches[1].images);
    // Image 5 (second in batch 1), channel 2, row 3, column 4.
    let (c, y, x) = (2, 3, 4);
    let raw = set.image(5)[(c * 8 + y) * 6 + x] as f32;
    let expected = (raw / 255.0 - norm.mean[c]) / norm.std[c];
    let got = values[3 * 8 * 6 + (c * 8 + y) * 6 + x];
    assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");

    // Without normalisation: pixels / 255 only; to_tensor agrees with the batcher.
    let t = to_tensor(&set, &[5], None, &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[1, 3, 8, 6]);
    let got = flat(&t)[(c * 8 + y) * 6 + x];
    assert!((got - raw / 255.0).abs() < 1e-7);
    let t = to_tensor(&set, &[4, 5], Some(&norm), &Device::Cpu).unwrap();
    assert_eq!(flat(&t), flat(&batches[1].images)[..2 * 144].to_vec());
}

#[test]
fn seeded_shuffle_is_reproducible() {
    let set = small_set();
    let cfg = config(4);
    let order = |seed, epoch| -> Vec<usize> {
        collect(&set, &cfg, seed, epoch)
            .iter()
            .flat_map(|b| b.indices.clone())
            .collect()
    };
    assert_eq!(order(9, 2), order(9, 2));
    assert_ne!(order(9, 2), order(9, 3));
    assert_ne!(order(9, 2), order(10, 2));
    let unshuffled = BatchConfig {
        shuffle: false,
        ..config(4)
    };
    let plain: Vec<usize> = collect(&set, &unshuffled, 9, 2)
        .iter()
        .flat_map(|b| b.indices.clone())
        .collect();
    assert_eq!(plain, (0..22).collect::<Vec<_>>());
}

#[test]
fn augmented_batches_do_not_depend_on_thread_count() {
    let set = small_set();
    let cfg = BatchConfig {
        augment: Some(Augment::default()),
        normalization: Some(Normalization::SYNTHETIC),
        ..config(7)
    };
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                collect(&set, &cfg, 5, 1)
                    .iter()
                    .map(|b| flat(&b.images))
                    .collect::<Vec<_>>()
            })
    };
    let one = run(1);
    assert_eq!(one, run(3));
    // Augmentation actually changed something compared with the plain batches.
    let plain = BatchConfig {
        augment: None,
        ..cfg.clone()
    };
    let plain: Vec<Vec<f32>> = collect(&set, &plain, 5, 1)
        .iter()
        .map(|b| flat(&b.images))
        .collect();
    assert_ne!(one, plain);
}

#[test]
fn bad_batch_options_are_errors() {
    let set = small_set();
    assert!(epoch_batches(&set, &config(0), 0, 0, &Device::Cpu).is_err());
    let empty = set.select(&[]);
    assert!(epoch_batches(&empty, &config(2), 0, 0, &Device::Cpu).is_err());
    let gray = ImageSet::new(vec![0; 4], vec![0], (1, 2, 2), vec!["a".into()]).unwrap();
    let cfg = BatchConfig {
        normalization: Some(Normalization::CIFAR10),
        ..config(1)
    };
    assert!(epoch_batches(&gray, &cfg, 0, 0, &Device::Cpu).is_err());
}

#[test]
fn augment_keeps_shape_flips_and_is_seeded() {
    let (c, h, w) = (3, 8, 8);
    let src: Vec<u8> = (0..(c * h * w) as u32)
        .map(|v| (v % 200 + 1) as u8)
        .collect();
    let mut dst = vec![0u8; src.len()];
    let flip_only = Augment {
        crop_padding: 0,
        horizontal_flip: true,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut flipped = 0;
    for _ in 0..40 {
        augment_into(&src, c, h, w, &flip_only, &mut rng, &mut dst);
        if dst != src {
            flipped += 1;
            assert_eq!(dst[0], src[w - 1]);
            assert_eq!(dst[w - 1], src[0]);
        }
    }
    assert!((10..=30).contains(&flipped), "{flipped} flips out of 40");

    let run = |seed| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = vec![0u8; src.len()];
        augment_into(&src, c, h, w, &Augment::default(), &mut rng, &mut out);
        out
    };
    assert_eq!(run(1).len(), src.len());
    assert_eq!(run(1), run(1));
    assert!((0..10).any(|s| run(s) != run(s + 1)));
}

#[test]
fn splits_are_disjoint_stratified_deterministic() {
    let set = generate(&SyntheticSpec::default(), Split::Train);
    let f = SplitFractions {
        owner: 0.5,
        attacker: 0.25,
        held_out: 0.25,
    };
    let s = disjoint_splits(&set, &f, 11).unwrap();
    assert_eq!(s.owner.len() + s.attacker.len() + s.held_out.len(), 512);
    assert_eq!(s.owner.len(), 256);
    let mut all = [s.owner.clone(), s.attacker.clone(), s.held_out.clone()].concat();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 512);
    // Per class, the owner share is half of the class (within rounding).
    let whole = set.class_counts();
    let owner = set.select(&s.owner).class_counts();
    for (o, n) in owner.iter().zip(&whole) {
        assert!(o.abs_diff(n / 2) <= 1, "{owner:?} vs {whole:?}");
    }
    assert_eq!(s, disjoint_splits(&set, &f, 11).unwrap());
    assert_ne!(s.owner, disjoint_splits(&set, &f, 12).unwrap().owner);
    let bad = SplitFractions {
        owner: 0.7,
        attacker: 0.4,
        held_out: 0.0,
    };
    assert!(disjoint_splits(&set, &bad, 0).is_err());
}

#[test]
fn stratified_subset_for_train_limit() {
    let set = generate(&SyntheticSpec::default(), Split::Train);
    let sub = stratified_subset(&set, 100, 4);
    assert_eq!(sub.len(), 100);
    assert_eq!(set.select(&sub).class_counts(), vec![10; 10]);
    assert_eq!(sub, stratified_subset(&set, 100, 4));
    assert_ne!(sub, stratified_subset(&set, 100, 5));
    let all = stratified_subset(&set, 10_000, 4);
    assert_eq!(all.len(), 512);
    assert_ne!(all, (0..512).collect::<Vec<_>>());
}
