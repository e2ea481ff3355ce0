//! DPRM, the distribution-preserving random mask: a selected kernel w is replaced by w + n with
//! n ~ N(mu - w, sigma), where mu and sigma are the layer's mean and standard deviation at each
//! kernel position over all its kernels. The stored kernel is then a draw of N(mu, sigma), like
//! any kernel of the layer, so statistics do not tell which kernels are encrypted.
//!
//! Choice (exactness): w + n = mu + sigma g with g ~ N(0, 1), whatever w is: the stored value
//! carries no information about w, so n cannot be "regenerated from the key and subtracted"
//! without knowing w (the paper is silent on this). We therefore draw g from the tier's keyed
//! ChaCha20 stream, store t = f32(mu + sigma g) (this is w + n with n = t - w, which follows
//! N(mu - w, sigma) up to the f32 rounding of t), and keep the original bits of w in the tier's
//! escrow, sealed with the tier key (see [`super::cipher`]). Decryption opens the escrow with the
//! tier key and puts the original bits back: exact bit for bit by construction, with no float
//! arithmetic on the way back, and the stored values follow exactly the masked distribution.

use rand::Rng;
use rand_chacha::ChaCha20Rng;

/// Mean and standard deviation of a layer at each kernel position.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStats {
    /// Mean per position (k x k values).
    pub mu: Vec<f64>,
    /// Population standard deviation per position.
    pub sigma: Vec<f64>,
}

/// The statistics of a layer whose `values` are `kernels` kernels of `kk` positions each.
pub fn layer_stats(values: &[f32], kernels: usize, kk: usize) -> LayerStats {
    let n = kernels.max(1) as f64;
    let mut mu = vec![0.0f64; kk];
    for kernel in values.chunks_exact(kk) {
        for (m, &v) in mu.iter_mut().zip(kernel) {
            *m += f64::from(v);
        }
    }
    mu.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0.0f64; kk];
    for kernel in values.chunks_exact(kk) {
        for ((s, &v), m) in var.iter_mut().zip(kernel).zip(&mu) {
            let d = f64::from(v) - m;
            *s += d * d;
        }
    }
    let sigma = var.into_iter().map(|s| (s / n).sqrt()).collect();
    LayerStats { mu, sigma }
}

/// Writes a masked kernel into `kernel`: one draw of N(mu, sigma) per position from `rng`.
pub fn mask_kernel(stats: &LayerStats, rng: &mut ChaCha20Rng, kernel: &mut [f32]) {
    for ((v, m), s) in kernel.iter_mut().zip(&stats.mu).zip(&stats.sigma) {
        let g: f64 = rng.sample(rand_distr::StandardNormal);
        *v = (m + s * g) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn stats_are_per_position() {
        // Two kernels of two positions: (1, 10) and (3, 30).
        let s = layer_stats(&[1.0, 10.0, 3.0, 30.0], 2, 2);
        assert_eq!(s.mu, vec![2.0, 20.0]);
        assert_eq!(s.sigma, vec![1.0, 10.0]);
    }

    #[test]
    fn masks_follow_the_layer_distribution() {
        let stats = LayerStats {
            mu: vec![0.5, -0.2],
            sigma: vec![0.1, 0.3],
        };
        let mut rng = ChaCha20Rng::from_seed([1u8; 32]);
        let n = 20_000;
        let mut values = vec![0f32; 2 * n];
        for k in values.chunks_exact_mut(2) {
            mask_kernel(&stats, &mut rng, k);
        }
        let got = layer_stats(&values, n, 2);
        for p in 0..2 {
            assert!((got.mu[p] - stats.mu[p]).abs() < 0.01, "{got:?}");
            assert!(
                (got.sigma[p] / stats.sigma[p] - 1.0).abs() < 0.03,
                "{got:?}"
            );
        }
    }
}
