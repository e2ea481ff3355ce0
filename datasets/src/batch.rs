//! Turning an [`ImageSet`] into f32 tensor batches for training and evaluation.
//!
//! An epoch is a (optionally shuffled) order of the set cut into batches. Each batch is
//! augmented (optional) and normalised on the rayon pool, then moved to the device. All
//! randomness comes from `(seed, epoch)`: the shuffle from one ChaCha stream, each image's
//! augmentation from its own stream selected by its position in the epoch, so batches are the
//! same whatever the thread count.

use crate::augment::{Augment, augment_into};
use crate::catalog::Normalization;
use crate::{DataError, ImageSet, Result};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// How to cut a set into batches.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchConfig {
    /// Images per batch (must be > 0).
    pub batch_size: usize,
    /// Shuffle the order every epoch (seeded).
    pub shuffle: bool,
    /// Skip the last batch when it would be smaller than `batch_size`.
    pub drop_last: bool,
    /// Random crop / flip applied per image, for training.
    pub augment: Option<Augment>,
    /// Per-channel standardisation; `None` gives pixels / 255 only.
    pub normalization: Option<Normalization>,
}

/// One batch ready for a model.
#[derive(Debug, Clone)]
pub struct Batch {
    /// f32, B x C x H x W, `(x / 255 - mean) / std`.
    pub images: Tensor,
    /// u32, shape `[B]`.
    pub labels: Tensor,
    /// Positions in the set of the images, in batch order (for bookkeeping such as per-sample
    /// losses or watermark triggers).
    pub indices: Vec<usize>,
}

/// Number of batches an epoch over `n` images yields with `cfg` (0 when `batch_size` is 0).
pub fn num_batches(n: usize, cfg: &BatchConfig) -> usize {
    if cfg.batch_size == 0 {
        0
    } else if cfg.drop_last {
        n / cfg.batch_size
    } else {
        n.div_ceil(cfg.batch_size)
    }
}

/// Domain tags that keep the shuffle and augmentation streams apart.
const SHUFFLE_DOMAIN: u64 = 0x5348_5546_464c_4521; // "SHUFFLE!"
const AUGMENT_DOMAIN: u64 = 0x4155_474d_454e_5421; // "AUGMENT!"

/// A ChaCha8 generator for `(seed, epoch, domain)`, on stream `stream`: distinct inputs give
/// independent streams, and the same inputs always give the same numbers.
pub(crate) fn stream_rng(seed: u64, epoch: u64, domain: u64, stream: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&epoch.to_le_bytes());
    key[16..24].copy_from_slice(&domain.to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(stream);
    rng
}

/// The order of an epoch: `0..n`, shuffled by `(seed, epoch)` when asked.
pub fn epoch_order(n: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        order.shuffle(&mut stream_rng(seed, epoch, SHUFFLE_DOMAIN, 0));
    }
    order
}

/// The batches of one epoch, built lazily. Errors up front when `batch_size` is 0, the set is
/// empty, or a normalisation is given for images that are not 3-channel.
pub fn epoch_batches<'a>(
    set: &'a ImageSet,
    cfg: &'a BatchConfig,
    seed: u64,
    epoch: u64,
    device: &'a Device,
) -> Result<impl Iterator<Item = Result<Batch>> + 'a> {
    if cfg.batch_size == 0 {
        return Err(DataError::InvalidOption(
            "batch size must be at least 1".into(),
        ));
    }
    if set.is_empty() {
        return Err(DataError::InvalidOption(
            "cannot make batches of an empty image set".into(),
        ));
    }
    let lut = Lut::new(set.channels, cfg.normalization.as_ref())?;
    let order = epoch_order(set.len(), cfg.shuffle, seed, epoch);
    let count = num_batches(set.len(), cfg);
    Ok((0..count).map(move |b| {
        let start = b * cfg.batch_size;
        let end = (start + cfg.batch_size).min(order.len());
        let indices = order[start..end].to_vec();
        let images = match &cfg.augment {
            Some(aug) => pixels_augmented(set, &indices, &lut, aug, seed, epoch, start),
            None => pixels(set, &indices, &lut),
        };
        make_batch(set, indices, images, device)
    }))
}

/// The images at `indices` as one f32 tensor (B x C x H x W), normalised, not augmented: for
/// evaluation and attacks. Errors when an index is out of range or the normalisation does not
/// fit the channel count.
pub fn to_tensor(
    set: &ImageSet,
    indices: &[usize],
    normalization: Option<&Normalization>,
    device: &Device,
) -> Result<Tensor> {
    check_indices(set, indices)?;
    let lut = Lut::new(set.channels, normalization)?;
    let data = pixels(set, indices, &lut);
    Ok(Tensor::from_vec(
        data,
        (indices.len(), set.channels, set.height, set.width),
        device,
    )?)
}

/// Fails when an index does not name an image of `set`.
fn check_indices(set: &ImageSet, indices: &[usize]) -> Result<()> {
    match indices.iter().find(|&&i| i >= set.len()) {
        Some(i) => Err(DataError::InvalidOption(format!(
            "image index {i} out of range for a set of {} images",
            set.len()
        ))),
        None => Ok(()),
    }
}

/// Per-channel lookup table from byte value to normalised f32.
struct Lut {
    /// `channels x 256` values.
    table: Vec<f32>,
}

impl Lut {
    fn new(channels: usize, normalization: Option<&Normalization>) -> Result<Self> {
        if let Some(n) = normalization {
            if channels != 3 {
                return Err(DataError::InvalidOption(format!(
                    "a per-channel RGB normalisation needs 3-channel images, these have {channels}"
                )));
            }
            if n.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                return Err(DataError::InvalidOption(format!(
                    "normalisation std must be positive, got {:?}",
                    n.std
                )));
            }
        }
        let mut table = Vec::with_capacity(channels * 256);
        for c in 0..channels {
            for v in 0..256 {
                let x = v as f32 / 255.0;
                table.push(match normalization {
                    Some(n) => (x - n.mean[c]) / n.std[c],
                    None => x,
                });
            }
        }
        Ok(Self { table })
    }

    /// Converts one C x H x W image into `dst`.
    fn apply(&self, src: &[u8], plane: usize, dst: &mut [f32]) {
        for (c, (s, d)) in src.chunks(plane).zip(dst.chunks_mut(plane)).enumerate() {
            let t = &self.table[c * 256..(c + 1) * 256];
            for (o, &v) in d.iter_mut().zip(s) {
                *o = t[v as usize];
            }
        }
    }
}

/// Normalised pixels of `indices`, in order.
fn pixels(set: &ImageSet, indices: &[usize], lut: &Lut) -> Vec<f32> {
    let n = set.image_len();
    let plane = set.height * set.width;
    let mut out = vec![0f32; indices.len() * n];
    if n == 0 {
        return out;
    }
    out.par_chunks_mut(n)
        .zip(indices.par_iter())
        .for_each(|(dst, &i)| lut.apply(set.image(i), plane, dst));
    out
}

/// Augmented, normalised pixels of `indices`; image `j` uses the augmentation stream of epoch
/// position `first_pos + j`.
fn pixels_augmented(
    set: &ImageSet,
    indices: &[usize],
    lut: &Lut,
    aug: &Augment,
    seed: u64,
    epoch: u64,
    first_pos: usize,
) -> Vec<f32> {
    let n = set.image_len();
    let plane = set.height * set.width;
    let (c, h, w) = (set.channels, set.height, set.width);
    let mut out = vec![0f32; indices.len() * n];
    if n == 0 {
        return out;
    }
    out.par_chunks_mut(n)
        .zip(indices.par_iter())
        .enumerate()
        .for_each_init(
            || vec![0u8; n],
            |tmp, (j, (dst, &i))| {
                let mut rng = stream_rng(seed, epoch, AUGMENT_DOMAIN, (first_pos + j) as u64);
                augment_into(set.image(i), c, h, w, aug, &mut rng, tmp);
                lut.apply(tmp, plane, dst);
            },
        );
    out
}

/// Moves pixels and labels to the device.
fn make_batch(
    set: &ImageSet,
    indices: Vec<usize>,
    images: Vec<f32>,
    device: &Device,
) -> Result<Batch> {
    let b = indices.len();
    let images = Tensor::from_vec(images, (b, set.channels, set.height, set.width), device)?;
    let labels: Vec<u32> = indices.iter().map(|&i| set.labels[i]).collect();
    let labels = Tensor::from_vec(labels, b, device)?;
    Ok(Batch {
        images,
        labels,
        indices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> ImageSet {
        let images = (0..n * 3 * 4 * 4).map(|v| (v % 256) as u8).collect();
        let labels = (0..n as u32).map(|i| i % 3).collect();
        ImageSet::new(
            images,
            labels,
            (3, 4, 4),
            vec!["a".into(), "b".into(), "c".into()],
        )
        .unwrap()
    }

    fn cfg(batch_size: usize) -> BatchConfig {
        BatchConfig {
            batch_size,
            shuffle: true,
            drop_last: false,
            augment: None,
            normalization: None,
        }
    }

    #[test]
    fn counts() {
        let mut c = cfg(4);
        assert_eq!(num_batches(10, &c), 3);
        c.drop_last = true;
        assert_eq!(num_batches(10, &c), 2);
        assert_eq!(num_batches(10, &cfg(0)), 0);
        assert_eq!(num_batches(0, &cfg(3)), 0);
    }

    #[test]
    fn order_is_a_seeded_permutation() {
        let a = epoch_order(100, true, 1, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, true, 1, 0));
        assert_ne!(a, epoch_order(100, true, 1, 1));
        assert_ne!(a, epoch_order(100, true, 2, 0));
        assert_eq!(epoch_order(5, false, 1, 0), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn rejects_bad_input() {
        let s = set(3);
        assert!(epoch_batches(&s, &cfg(0), 0, 0, &Device::Cpu).is_err());
        let empty = s.select(&[]);
        assert!(epoch_batches(&empty, &cfg(2), 0, 0, &Device::Cpu).is_err());
        assert!(to_tensor(&s, &[3], None, &Device::Cpu).is_err());
    }

    #[test]
    fn empty_selection_gives_an_empty_tensor() {
        let t = to_tensor(&set(2), &[], None, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[0, 3, 4, 4]);
    }
}
