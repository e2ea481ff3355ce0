//! The denoising objective (DnCNN, Zhang et al. 2017): corrupt each clean training image with
//! additive white Gaussian noise of a fixed standard deviation and minimise the squared error
//! between the model's output and the clean image.
//!
//! Choice: denoisers train and are evaluated on unnormalised images, pixels / 255 in [0,1] (the
//! batches come with `normalization: None`), as DnCNN does. Sigma is then in pixel units and the
//! loss is the pixel MSE that PSNR is computed from; with per-channel standardisation the noise
//! would have to be rescaled per channel and the loss would weigh channels unequally.
//!
//! Choice: the loss is DnCNN's own, 1/(2N) sum_i ||R(y_i) - (y_i - x_i)||^2 over the N images
//! of a batch (squared error summed over each image's pixels, halved, averaged over images).
//! The zoo model returns y - R(y), so this is ||f(y_i) - x_i||^2 / 2, i.e. the pixel MSE x
//! (C x H x W) / 2. The scale matters with SGD: DnCNN's learning rate (0.1, decayed) is set for
//! this sum, and a per-pixel mean would shrink every gradient a thousandfold; selective
//! encryption's PSS adds its L0 term (lambda 1e-4) to the task's published loss.
//!
//! Choice: the noise is not clipped to [0,1] (the usual synthetic AWGN protocol, and what the
//! noisy-input PSNR reference of [`crate::eval_denoise`] assumes).
//!
//! Choice: the noise of a step is drawn from ChaCha20 seeded by the objective's seed and the
//! batch's image indices in batch order. The trainer shuffles with `(seed, epoch)`, so every step
//! of a run gets fresh noise, and a run (or a resumed one) repeats exactly, without any state in
//! the objective.

use candle_core::{Device, Tensor};
use datasets::batch::Batch;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};

use super::{Objective, StepLoss};
use crate::{Error, Model, Result};

/// DnCNN's standard noise level: sigma = 50 on the 0..255 scale.
pub const DEFAULT_SIGMA_255: f64 = 50.0;

/// MSE denoising of additive Gaussian noise with standard deviation `sigma` (pixel units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Denoise {
    /// Noise standard deviation in [0,1] pixel units.
    pub sigma: f64,
    /// Seed of the noise streams.
    pub seed: u64,
}

impl Denoise {
    /// The objective for noise of standard deviation `sigma` (pixel units, > 0 and finite).
    pub fn new(sigma: f64, seed: u64) -> Result<Self> {
        check_sigma(sigma)?;
        Ok(Self { sigma, seed })
    }
}

/// Fails unless `sigma` is a usable noise level (finite, above 0, at most 1 pixel unit).
pub fn check_sigma(sigma: f64) -> Result<()> {
    if sigma.is_finite() && sigma > 0.0 && sigma <= 1.0 {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "the noise sigma must be in (0, 1] pixel units (sigma 50 is 50/255 = 0.196); got {sigma}"
        )))
    }
}

/// Gaussian noise of standard deviation `sigma` with `shape`, from `rng` (f32, row-major).
pub fn gaussian_noise(
    shape: &[usize],
    sigma: f64,
    rng: &mut ChaCha20Rng,
    device: &Device,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let sigma = sigma as f32;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let z: f32 = StandardNormal.sample(rng);
            z * sigma
        })
        .collect();
    Ok(Tensor::from_vec(values, shape, device)?)
}

/// A ChaCha20 stream keyed by a seed and a list of numbers (image indices, a layer, ...), so
/// noise is a pure function of what it is for.
pub fn keyed_rng(seed: u64, tag: &[u8; 8], keys: &[usize]) -> ChaCha20Rng {
    // SplitMix64 folding: cheap, well mixed, and stable across platforms.
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut h = mix(seed ^ u64::from_le_bytes(*tag));
    for &k in keys {
        h = mix(h ^ k as u64);
    }
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&h.to_le_bytes());
    key[8..16].copy_from_slice(&mix(h).to_le_bytes());
    key[16..24].copy_from_slice(&seed.to_le_bytes());
    key[24..].copy_from_slice(tag);
    ChaCha20Rng::from_seed(key)
}

/// DnCNN's loss of the model's output on `clean + noise` against `clean`: per-image squared
/// error summed over pixels, halved, averaged over the batch (a scalar tensor that
/// back-propagates into the model). `train` picks batch-norm mode.
pub fn denoise_loss(
    model: &dyn Model,
    clean: &Tensor,
    noise: &Tensor,
    train: bool,
) -> Result<Tensor> {
    let noisy = (clean + noise)?;
    let out = model.forward_t(&noisy, train)?;
    if out.dims() != clean.dims() {
        return Err(Error::Config(format!(
            "a denoiser must return an image of the input's shape {:?}, got {:?}",
            clean.dims(),
            out.dims()
        )));
    }
    let images = clean.dim(0)?.max(1);
    let per_image = clean.elem_count() / images;
    Ok(((out - clean)?.sqr()?.mean_all()? * (per_image as f64 / 2.0))?)
}

impl Objective for Denoise {
    fn loss(&self, model: &dyn Model, batch: &Batch) -> Result<StepLoss> {
        let mut rng = keyed_rng(self.seed, b"dn-train", &batch.indices);
        let noise = gaussian_noise(
            batch.images.dims(),
            self.sigma,
            &mut rng,
            batch.images.device(),
        )?;
        let loss = denoise_loss(model, &batch.images, &noise, true)?;
        Ok(StepLoss {
            loss,
            correct: None,
        })
    }

    fn id(&self) -> String {
        format!("dncnn-loss-sigma-{}", self.sigma)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{Schedule, SgdConfig, TrainConfig, TrainOptions, train};
    use crate::{Arch, ModelSpec, ParamStore};
    use datasets::catalog::{DatasetId, LoadOptions};

    #[test]
    fn noise_is_a_pure_function_of_its_keys_with_the_right_spread() {
        let dev = Device::Cpu;
        let a = gaussian_noise(
            &[4, 3, 8, 8],
            0.2,
            &mut keyed_rng(1, b"dn-train", &[3, 1]),
            &dev,
        )
        .unwrap();
        let b = gaussian_noise(
            &[4, 3, 8, 8],
            0.2,
            &mut keyed_rng(1, b"dn-train", &[3, 1]),
            &dev,
        )
        .unwrap();
        let c = gaussian_noise(
            &[4, 3, 8, 8],
            0.2,
            &mut keyed_rng(1, b"dn-train", &[1, 3]),
            &dev,
        )
        .unwrap();
        let (va, vc) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            c.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(va, b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_ne!(va, vc, "a different batch order draws different noise");
        let n = va.len() as f64;
        let mean = va.iter().map(|&v| v as f64).sum::<f64>() / n;
        let sd = (va.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((sd - 0.2).abs() < 0.02, "sd {sd}");
    }

    #[test]
    fn bad_sigmas_are_refused() {
        for s in [0.0, -0.1, 1.5, f64::NAN] {
            assert!(Denoise::new(s, 0).is_err(), "{s}");
        }
        assert!(Denoise::new(50.0 / 255.0, 0).is_ok());
    }

    #[test]
    fn training_a_tiny_dncnn_lowers_the_denoising_loss() {
        let dev = Device::Cpu;
        let id = DatasetId::parse("synthetic:8").unwrap();
        let set = datasets::catalog::load(
            &id,
            std::path::Path::new("/nonexistent"),
            datasets::Split::Train,
            &LoadOptions::default(),
        )
        .unwrap();
        let set = set.select(&(0..64).collect::<Vec<_>>());
        let spec = ModelSpec::new(Arch::Dncnn, 0).with_in_channels(set.channels);
        let params = ParamStore::new(0, &dev);
        let model = crate::zoo::build(&spec, &params).unwrap();
        let cfg = TrainConfig {
            epochs: 8,
            batch_size: 16,
            // DnCNN's own recipe, Adam (Zhang et al. 2017). Plain SGD on the summed loss sat at
            // the edge of stability here: whether it diverged depended on the order of float
            // sums in the convolution kernels.
            sgd: SgdConfig {
                lr: 1e-3,
                weight_decay: 0.0,
                adam: Some(crate::train::AdamConfig::default()),
                ..SgdConfig::default()
            },
            schedule: Schedule::default(),
            augment: None,
            normalization: None,
            seed: 0,
        };
        let obj = Denoise::new(50.0 / 255.0, 0).unwrap();
        let report = train(
            &*model,
            &params,
            &set,
            &cfg,
            &obj,
            &TrainOptions::default(),
            &dev,
        )
        .unwrap();
        let first = report.history[0].train_loss;
        let last = report.history.last().unwrap().train_loss;
        assert!(report.history[0].train_accuracy.is_none());
        // The loss must fall well below the first epoch's (from the random start, about three
        // times the noise energy) to about that of returning the noisy input (sigma^2 x pixels
        // / 2), where a denoiser starts; beating that clearly takes hundreds of steps (the
        // DnCNN matrix runs show it), more than a unit test affords.
        let pixels = (set.channels * set.height * set.width) as f64;
        let identity = (50.0f64 / 255.0).powi(2) * pixels / 2.0;
        let losses: Vec<f64> = report.history.iter().map(|e| e.train_loss).collect();
        assert!(last < 0.5 * first, "loss did not fall: {losses:?}");
        assert!(
            last < 1.05 * identity,
            "loss {last} vs {identity} for the noisy input: {losses:?}"
        );
    }
}
