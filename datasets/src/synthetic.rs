//! Generated image data for tests, CI and smoke runs: no files, fully deterministic, learnable.
//!
//! Each class has its own colour and its own stripe orientation and frequency; every sample adds
//! a random stripe phase, a brightness jitter and per-pixel noise. A small CNN separates the
//! classes within a few epochs, so end-to-end pipelines (train, protect, attack, evaluate) can be
//! exercised in seconds. Train and test come from the same distribution with different samples.

use crate::batch::stream_rng;
use crate::{ImageSet, Split};
use rand::Rng;
use rayon::prelude::*;
use std::f32::consts::PI;

/// Size and seed of a synthetic dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticSpec {
    /// Number of classes.
    pub classes: usize,
    /// Images in the train split.
    pub train: usize,
    /// Images in the test split.
    pub test: usize,
    /// Channels per image.
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Seed of the class patterns and the samples.
    pub seed: u64,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        Self {
            classes: 10,
            train: 512,
            test: 256,
            channels: 3,
            height: 32,
            width: 32,
            seed: 0,
        }
    }
}

/// Domain tag of the per-sample streams.
const SAMPLE_DOMAIN: u64 = 0x5359_4e54_4845_5449; // "SYNTHETI"

/// The look of one class.
struct ClassPattern {
    /// Base intensity per channel, 0..1.
    colour: Vec<f32>,
    /// Stripe direction (cos, sin).
    direction: (f32, f32),
    /// Stripe cycles across the image.
    cycles: f32,
}

/// Class patterns: colours evenly spread around the hue circle (3 channels) or spread by
/// class index (other channel counts); orientations evenly spread over 180 degrees; three
/// stripe frequencies alternating.
fn patterns(spec: &SyntheticSpec) -> Vec<ClassPattern> {
    let k = spec.classes.max(1) as f32;
    // Seed-dependent rotation of the hue circle and orientations, so different seeds give
    // different (but equally learnable) datasets.
    let mut rng = stream_rng(spec.seed, u64::MAX, SAMPLE_DOMAIN, 0);
    let hue_shift: f32 = rng.random_range(0.0..1.0);
    let angle_shift: f32 = rng.random_range(0.0..PI);
    (0..spec.classes)
        .map(|c| {
            let t = c as f32 / k;
            let colour = if spec.channels == 3 {
                hsv_to_rgb((t + hue_shift).fract(), 0.65, 0.8).to_vec()
            } else {
                (0..spec.channels)
                    .map(|ch| 0.2 + 0.6 * ((t + ch as f32 * 0.37 + hue_shift).fract()))
                    .collect()
            };
            let angle = angle_shift + PI * (c as f32 * 0.618_034).fract();
            ClassPattern {
                colour,
                direction: (angle.cos(), angle.sin()),
                cycles: 2.0 + (c % 3) as f32,
            }
        })
        .collect()
}

/// HSV (all in 0..1) to RGB.
fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - f * s), v * (1.0 - (1.0 - f) * s));
    match i as i32 % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Generates one split. Deterministic in `spec` and `split`; labels cycle through the classes
/// (`i % classes`), so classes are balanced. A spec with no classes or no pixels gives an empty
/// set.
pub fn generate(spec: &SyntheticSpec, split: Split) -> ImageSet {
    let count = match split {
        Split::Train => spec.train,
        Split::Test => spec.test,
    };
    let (c, h, w) = (spec.channels, spec.height, spec.width);
    let image_len = c * h * w;
    let count = if spec.classes == 0 || image_len == 0 {
        0
    } else {
        count
    };
    let class_names = (0..spec.classes).map(|k| format!("class{k}")).collect();
    let labels: Vec<u32> = (0..count).map(|i| (i % spec.classes) as u32).collect();
    let pats = patterns(spec);
    let split_tag = match split {
        Split::Train => 0,
        Split::Test => 1,
    };
    let mut images = vec![0u8; count * image_len];
    if count > 0 {
        images
            .par_chunks_mut(image_len)
            .zip(labels.par_iter())
            .enumerate()
            .for_each(|(i, (dst, &label))| {
                let mut rng = stream_rng(spec.seed, split_tag, SAMPLE_DOMAIN, i as u64);
                draw(&pats[label as usize], (c, h, w), &mut rng, dst);
            });
    }
    ImageSet {
        images,
        labels,
        channels: c,
        height: h,
        width: w,
        class_names,
    }
}

/// Draws one sample of `pattern` into `dst` (C x H x W).
fn draw(
    pattern: &ClassPattern,
    (c, h, w): (usize, usize, usize),
    rng: &mut impl Rng,
    dst: &mut [u8],
) {
    let phase: f32 = rng.random_range(0.0..2.0 * PI);
    let brightness: f32 = rng.random_range(0.85..1.15);
    let size = h.max(w) as f32;
    let freq = 2.0 * PI * pattern.cycles / size;
    let (dx, dy) = pattern.direction;
    for ch in 0..c {
        let base = pattern.colour[ch] * brightness;
        for y in 0..h {
            for x in 0..w {
                let s = (freq * (x as f32 * dx + y as f32 * dy) + phase).sin();
                let noise: f32 = rng.random_range(-0.08..0.08);
                let v = (base + 0.2 * s + noise).clamp(0.0, 1.0);
                dst[(ch * h + y) * w + x] = (v * 255.0).round() as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_split_dependent() {
        let spec = SyntheticSpec::default();
        let a = generate(&spec, Split::Train);
        assert_eq!(a, generate(&spec, Split::Train));
        assert_eq!(a.len(), 512);
        assert_eq!((a.channels, a.height, a.width), (3, 32, 32));
        assert_eq!(
            a.class_counts(),
            vec![52, 52, 51, 51, 51, 51, 51, 51, 51, 51]
        );
        let t = generate(&spec, Split::Test);
        assert_eq!(t.len(), 256);
        assert_ne!(a.image(0), t.image(0));
        let other = generate(&SyntheticSpec { seed: 1, ..spec }, Split::Train);
        assert_ne!(a.images, other.images);
    }

    #[test]
    fn classes_differ_more_than_samples() {
        // Mean colour per class: samples of one class agree, classes differ.
        let set = generate(&SyntheticSpec::default(), Split::Train);
        let mean = |i: usize| -> Vec<f32> {
            set.image(i)
                .chunks(32 * 32)
                .map(|p| p.iter().map(|&v| v as f32).sum::<f32>() / p.len() as f32)
                .collect()
        };
        let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>();
        let same = dist(&mean(0), &mean(10));
        let other = dist(&mean(0), &mean(1));
        assert!(same < other, "same class {same}, other class {other}");
    }

    #[test]
    fn nearest_class_mean_separates_test_images() {
        // A linear classifier already separates the classes; a CNN also sees the stripes.
        let spec = SyntheticSpec::default();
        let train = generate(&spec, Split::Train);
        let test = generate(&spec, Split::Test);
        let len = train.image_len();
        let mut means = vec![vec![0f32; len]; spec.classes];
        for i in 0..train.len() {
            let m = &mut means[train.labels[i] as usize];
            for (a, &v) in m.iter_mut().zip(train.image(i)) {
                *a += v as f32;
            }
        }
        for (m, n) in means.iter_mut().zip(train.class_counts()) {
            m.iter_mut().for_each(|a| *a /= n as f32);
        }
        let correct = (0..test.len())
            .filter(|&i| {
                let img = test.image(i);
                let dist = |m: &Vec<f32>| -> f32 {
                    m.iter()
                        .zip(img)
                        .map(|(a, &v)| (a - v as f32).powi(2))
                        .sum()
                };
                let best = (0..spec.classes)
                    .min_by(|&a, &b| dist(&means[a]).total_cmp(&dist(&means[b])))
                    .unwrap_or(0);
                best as u32 == test.labels[i]
            })
            .count();
        let acc = correct as f32 / test.len() as f32;
        assert!(acc > 0.9, "nearest-mean accuracy {acc}");
    }

    #[test]
    fn degenerate_specs_are_empty() {
        let spec = SyntheticSpec {
            classes: 0,
            ..SyntheticSpec::default()
        };
        assert!(generate(&spec, Split::Train).is_empty());
    }
}
