//! Evaluation of denoisers: PSNR of the model's output on noisy test images against the clean
//! ones, next to the PSNR of the noisy input itself (the reference a useless denoiser cannot
//! beat). Selective encryption's levels of a DnCNN are judged by it.
//!
//! The noise of test image i is a pure function of (seed, i), so every model evaluated with the
//! same seed on the same set sees exactly the same noisy images and their PSNRs are comparable
//! level by level.
//!
//! Choice: PSNR = 10 log10(1 / MSE) per image over its pixels in [0,1], then the mean over
//! images (the usual per-image average of denoising papers; DnCNN reports it this way).
//! Choice: the model's output is clamped to [0,1] before the MSE (an image cannot leave that
//! range, and the DnCNN evaluation code does the same); the noisy input is not clipped, so its
//! PSNR is the AWGN reference, about 14.15 dB at sigma 50/255.
//! Choice: an image reproduced exactly scores [`PSNR_CAP_DB`] instead of infinity, so means and
//! tables stay finite.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use datasets::ImageSet;

use crate::protect::Deployed;
use crate::train::denoise::{gaussian_noise, keyed_rng};
use crate::{Error, Result};

/// PSNR given to an image whose MSE is zero (or below 1e-10), in dB.
pub const PSNR_CAP_DB: f64 = 100.0;

/// What a denoiser achieves on a test set.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PsnrReport {
    /// Mean over images of the PSNR of the denoised output (dB).
    pub psnr: f64,
    /// Mean over images of the PSNR of the noisy input (dB), the do-nothing reference.
    pub noisy_psnr: f64,
    /// Images evaluated.
    pub images: usize,
    /// Wall time of the pass.
    pub seconds: f64,
}

/// PSNR in dB of an image with mean squared error `mse` on a peak of 1, capped at
/// [`PSNR_CAP_DB`].
pub fn psnr_of_mse(mse: f64) -> f64 {
    if mse.is_nan() {
        return f64::NAN;
    }
    if mse <= 1e-10 {
        return PSNR_CAP_DB;
    }
    (10.0 * (1.0 / mse).log10()).min(PSNR_CAP_DB)
}

/// Per-image PSNR (dB) of `images` against `clean`, both N x C x H x W in [0,1] units.
pub fn psnr_per_image(images: &Tensor, clean: &Tensor) -> Result<Vec<f64>> {
    if images.dims() != clean.dims() || images.rank() < 2 {
        return Err(Error::Config(format!(
            "PSNR needs two image batches of one shape; got {:?} and {:?}",
            images.dims(),
            clean.dims()
        )));
    }
    let mse = (images.to_dtype(DType::F32)? - clean.to_dtype(DType::F32)?)?
        .sqr()?
        .flatten_from(1)?
        .mean(1)?
        .to_vec1::<f32>()?;
    Ok(mse.into_iter().map(|m| psnr_of_mse(m as f64)).collect())
}

/// Noisy copies of the images `indices` of `set` (pixels / 255, no normalisation) with Gaussian
/// noise of std `sigma`: image i always gets the noise of `(seed, i)`. Returns (clean, noisy).
pub fn noisy_batch(
    set: &ImageSet,
    indices: &[usize],
    sigma: f64,
    seed: u64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    crate::train::denoise::check_sigma(sigma)?;
    let clean = datasets::batch::to_tensor(set, indices, None, device)?;
    let per_image = [set.channels, set.height, set.width];
    let mut noise = Vec::with_capacity(indices.len());
    for &i in indices {
        let mut rng = keyed_rng(seed, b"dn-evalu", &[i]);
        noise.push(gaussian_noise(&per_image, sigma, &mut rng, device)?);
    }
    let noise = Tensor::stack(&noise, 0)?;
    let noisy = (&clean + noise)?;
    Ok((clean, noisy))
}

/// Evaluates a denoiser deployment (its `logits` are the denoised images) on `set` at noise
/// level `sigma` with the noise of `seed`: mean per-image PSNR of the clamped output and of the
/// noisy input.
pub fn evaluate_psnr(
    model: &dyn Deployed,
    set: &ImageSet,
    sigma: f64,
    seed: u64,
    batch_size: usize,
    device: &Device,
) -> Result<PsnrReport> {
    if batch_size == 0 {
        return Err(Error::Config("batch size must be at least 1".into()));
    }
    if set.is_empty() {
        return Err(Error::Config("cannot evaluate on an empty set".into()));
    }
    let start = Instant::now();
    let indices: Vec<usize> = (0..set.len()).collect();
    let (mut out_sum, mut noisy_sum) = (0.0f64, 0.0f64);
    for chunk in indices.chunks(batch_size) {
        let (clean, noisy) = noisy_batch(set, chunk, sigma, seed, device)?;
        let out = model.logits(&noisy)?.clamp(0f32, 1f32)?;
        out_sum += psnr_per_image(&out, &clean)?.iter().sum::<f64>();
        noisy_sum += psnr_per_image(&noisy, &clean)?.iter().sum::<f64>();
    }
    let n = set.len() as f64;
    Ok(PsnrReport {
        psnr: out_sum / n,
        noisy_psnr: noisy_sum / n,
        images: set.len(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_images_are_capped_and_known_errors_match_the_formula() {
        let dev = Device::Cpu;
        let a = Tensor::full(0.5f32, (2, 3, 4, 4), &dev).unwrap();
        assert_eq!(psnr_per_image(&a, &a).unwrap(), vec![PSNR_CAP_DB; 2]);
        // A constant error of 0.1 everywhere: MSE 0.01, PSNR 20 dB exactly.
        let b = (&a + 0.1).unwrap();
        for p in psnr_per_image(&b, &a).unwrap() {
            assert!((p - 20.0).abs() < 1e-4, "{p}");
        }
        // Per-image, not pooled: errors 0.1 and 0.01 give 20 and 40 dB.
        let err = Tensor::cat(
            &[
                Tensor::full(0.1f32, (1, 3, 4, 4), &dev).unwrap(),
                Tensor::full(0.01f32, (1, 3, 4, 4), &dev).unwrap(),
            ],
            0,
        )
        .unwrap();
        let p = psnr_per_image(&(&a + err).unwrap(), &a).unwrap();
        assert!(
            (p[0] - 20.0).abs() < 1e-4 && (p[1] - 40.0).abs() < 1e-3,
            "{p:?}"
        );
        assert!(psnr_per_image(&a, &a.flatten_all().unwrap()).is_err());
    }

    /// Returns its input: the do-nothing denoiser.
    struct Identity;
    impl Deployed for Identity {
        fn logits(&self, images: &Tensor) -> Result<Tensor> {
            Ok(images.clone())
        }
        fn model_bytes(&self) -> usize {
            0
        }
    }

    #[test]
    fn the_noisy_reference_matches_sigma_and_the_noise_repeats() {
        let dev = Device::Cpu;
        let id = datasets::catalog::DatasetId::parse("synthetic:16").unwrap();
        let set = datasets::catalog::load(
            &id,
            std::path::Path::new("/nonexistent"),
            datasets::Split::Test,
            &datasets::catalog::LoadOptions::default(),
        )
        .unwrap();
        let set = set.select(&(0..40).collect::<Vec<_>>());
        let sigma = 50.0 / 255.0;
        let r = evaluate_psnr(&Identity, &set, sigma, 7, 16, &dev).unwrap();
        // Unclipped AWGN: E[MSE] = sigma^2, 10 log10(1 / sigma^2) = 14.15 dB.
        let expected = -20.0 * sigma.log10();
        assert!(
            (r.noisy_psnr - expected).abs() < 0.15,
            "{r:?} vs {expected}"
        );
        // The identity's output is the noisy image clamped to [0,1]: clamping only helps.
        assert!(r.psnr > r.noisy_psnr, "{r:?}");
        // Same seed, other batch size: the same noise per image, the same numbers.
        let again = evaluate_psnr(&Identity, &set, sigma, 7, 7, &dev).unwrap();
        assert!((again.noisy_psnr - r.noisy_psnr).abs() < 1e-9);
        let other = evaluate_psnr(&Identity, &set, sigma, 8, 16, &dev).unwrap();
        assert!((other.noisy_psnr - r.noisy_psnr).abs() > 1e-6);
    }
}
