//! Training-time augmentation: random crop with zero padding, then a random horizontal flip.
//!
//! This is the standard CIFAR recipe (pad 4, crop back to the original size, flip half the
//! images). It works on `u8` planar images so it can run before normalisation, one image at a
//! time, with an RNG the caller derives per image; results then do not depend on thread count.

use rand::Rng;

/// Augmentation settings; the default is the standard CIFAR recipe (padding 4, flips on).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Zero padding added on every side before cropping back to the original size; 0 disables
    /// cropping.
    pub crop_padding: usize,
    /// Mirror left-right with probability 0.5.
    pub horizontal_flip: bool,
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            crop_padding: 4,
            horizontal_flip: true,
        }
    }
}

/// Writes an augmented copy of `src` (C x H x W) into `dst` (same shape): a random crop of the
/// zero-padded image (offsets uniform in `0..=2 * crop_padding` along each axis), then a
/// horizontal flip with probability 0.5 when enabled.
///
/// Draws, in order: the vertical and horizontal crop offsets (only when `crop_padding > 0`), then
/// the flip (only when `horizontal_flip`). Panics when `src` or `dst` does not hold `c * h * w`
/// bytes: the batcher sizes them, users never do.
pub fn augment_into(
    src: &[u8],
    c: usize,
    h: usize,
    w: usize,
    aug: &Augment,
    rng: &mut impl Rng,
    dst: &mut [u8],
) {
    let len = c * h * w;
    assert!(
        src.len() == len && dst.len() == len,
        "augment_into: src {} and dst {} bytes, expected {c}x{h}x{w} = {len}",
        src.len(),
        dst.len()
    );
    let p = aug.crop_padding as i64;
    let (dy, dx) = if p > 0 {
        (
            (rng.random_range(0..=2 * p) - p) as isize,
            (rng.random_range(0..=2 * p) - p) as isize,
        )
    } else {
        (0, 0)
    };
    let flip = aug.horizontal_flip && rng.random_bool(0.5);
    let (hi, wi) = (h as isize, w as isize);
    for ch in 0..c {
        let plane_src = &src[ch * h * w..(ch + 1) * h * w];
        let plane_dst = &mut dst[ch * h * w..(ch + 1) * h * w];
        for y in 0..hi {
            let row_dst = &mut plane_dst[(y * wi) as usize..((y + 1) * wi) as usize];
            let sy = y + dy;
            if sy < 0 || sy >= hi {
                row_dst.fill(0);
                continue;
            }
            let row_src = &plane_src[(sy * wi) as usize..((sy + 1) * wi) as usize];
            for (x, out) in row_dst.iter_mut().enumerate() {
                // The flip mirrors the cropped image: output column x shows crop column w-1-x.
                let cx = if flip {
                    wi - 1 - x as isize
                } else {
                    x as isize
                };
                let sx = cx + dx;
                *out = if sx < 0 || sx >= wi {
                    0
                } else {
                    row_src[sx as usize]
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn ramp(c: usize, h: usize, w: usize) -> Vec<u8> {
        (0..c * h * w).map(|v| (v % 251) as u8 + 1).collect()
    }

    #[test]
    fn identity_when_disabled() {
        let src = ramp(3, 5, 7);
        let mut dst = vec![0; src.len()];
        let aug = Augment {
            crop_padding: 0,
            horizontal_flip: false,
        };
        augment_into(
            &src,
            3,
            5,
            7,
            &aug,
            &mut ChaCha8Rng::seed_from_u64(1),
            &mut dst,
        );
        assert_eq!(src, dst);
    }

    #[test]
    fn flip_mirrors_rows() {
        let src = ramp(2, 3, 4);
        let aug = Augment {
            crop_padding: 0,
            horizontal_flip: true,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut seen_flip = false;
        for _ in 0..20 {
            let mut dst = vec![0; src.len()];
            augment_into(&src, 2, 3, 4, &aug, &mut rng, &mut dst);
            if dst != src {
                seen_flip = true;
                for row in 0..6 {
                    let mut mirrored = src[row * 4..row * 4 + 4].to_vec();
                    mirrored.reverse();
                    assert_eq!(&dst[row * 4..row * 4 + 4], &mirrored[..]);
                }
            }
        }
        assert!(seen_flip);
    }

    #[test]
    fn crop_shifts_content_and_pads_with_zeros() {
        let (c, h, w) = (3, 8, 8);
        let src = ramp(c, h, w);
        let aug = Augment {
            crop_padding: 2,
            horizontal_flip: false,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..30 {
            let mut dst = vec![7; src.len()];
            augment_into(&src, c, h, w, &aug, &mut rng, &mut dst);
            // Every output pixel is zero padding or the source pixel at one common offset.
            let mut offset = None;
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        let v = dst[(ch * h + y) * w + x];
                        if v == 0 {
                            continue;
                        }
                        let i = src.iter().position(|&s| s == v).unwrap();
                        let (sy, sx) = ((i / w) % h, i % w);
                        let o = (sy as isize - y as isize, sx as isize - x as isize);
                        assert!(o.0.abs() <= 2 && o.1.abs() <= 2);
                        assert_eq!(*offset.get_or_insert(o), o);
                    }
                }
            }
        }
    }

    #[test]
    fn deterministic_by_seed() {
        let src = ramp(3, 16, 16);
        let aug = Augment::default();
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..8)
                .map(|_| {
                    let mut dst = vec![0; src.len()];
                    augment_into(&src, 3, 16, 16, &aug, &mut rng, &mut dst);
                    dst
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }
}
