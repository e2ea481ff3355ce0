//! The statistical rule of `harness compare`: when the baseline holds several seeds of a metric,
//! their spread is the benchmark's real noise (another seed trains another victim and another
//! substitute), so a new value is flagged only when it lies outside what that spread allows.
//!
//! For a metric whose BASE mean over `nb >= 2` seeds is `mb` with sample standard deviation `s`,
//! and a NEW mean over `nn` seeds, the wrong-direction move allowed is the one-sided Student-t
//! prediction bound `t(conf, nb - 1) * s * sqrt(1/nb + 1/nn)`: were NEW drawn from the
//! baseline's distribution, its mean would stay within it with probability `conf`. It is never
//! smaller than a minimum effect ([`min_effect`]), so that a baseline whose seeds happen to
//! agree (or a deterministic metric such as a byte count) does not flag moves too small to
//! matter. Only BASE's spread is used: a gate run on one seed is still judged.

use statrs::distribution::{ContinuousCDF, StudentsT};

/// The default confidence of the rule (one-sided).
pub const DEFAULT_CONFIDENCE: f64 = 0.95;

/// The smallest move the rule flags: 0.25 dB of PSNR, 0.01 of an accuracy, fidelity or gain
/// (one test image in a hundred), 10% of `|base|` for anything else.
pub fn min_effect(metric: &str, base: f64) -> f64 {
    if metric.contains("psnr") {
        0.25
    } else if ["accuracy", "fidelity", "gain"]
        .iter()
        .any(|w| metric.contains(w))
    {
        0.01
    } else {
        0.1 * base.abs()
    }
}

/// One-sided Student-t quantile with `df` degrees of freedom (`df >= 1`).
pub fn t_quantile(confidence: f64, df: usize) -> f64 {
    match StudentsT::new(0.0, 1.0, df as f64) {
        Ok(t) => t.inverse_cdf(confidence),
        // Unreachable for df >= 1; the normal quantile's 95% value keeps the gate usable.
        Err(_) => 1.645,
    }
}

/// The allowed wrong-direction move for a key, or `None` when BASE has fewer than two seeds
/// (no spread to read) or a non-finite spread.
pub fn allowed(
    metric: &str,
    base_mean: f64,
    base_sd: f64,
    base_seeds: usize,
    new_seeds: usize,
    confidence: f64,
) -> Option<f64> {
    if base_seeds < 2 || new_seeds == 0 || !base_sd.is_finite() || !base_mean.is_finite() {
        return None;
    }
    let scale = (1.0 / base_seeds as f64 + 1.0 / new_seeds as f64).sqrt();
    let bound = t_quantile(confidence, base_seeds - 1) * base_sd * scale;
    Some(bound.max(min_effect(metric, base_mean)))
}

/// Sample standard deviation (`n - 1`), NaN for fewer than two values.
pub fn sample_sd(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 2 {
        return f64::NAN;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_the_tables() {
        // Student's t, one-sided 95%: 6.314 (1 df), 2.920 (2), 2.132 (4), 1.833 (9).
        for (df, want) in [(1, 6.314), (2, 2.920), (4, 2.132), (9, 1.833)] {
            assert!((t_quantile(0.95, df) - want).abs() < 1e-3, "{df}");
        }
        assert!((t_quantile(0.99, 2) - 6.965).abs() < 1e-3);
    }

    #[test]
    fn the_bound_grows_with_spread_and_shrinks_with_seeds() {
        // Three seeds, s = 0.02, one new seed: 2.920 * 0.02 * sqrt(4/3) = 0.0674.
        let a = allowed("owner-accuracy", 0.82, 0.02, 3, 1, 0.95).unwrap();
        assert!((a - 0.0674).abs() < 1e-4, "{a}");
        let more_new = allowed("owner-accuracy", 0.82, 0.02, 3, 3, 0.95).unwrap();
        assert!(more_new < a);
        // Seeds that agree: the minimum effect.
        assert_eq!(allowed("owner-accuracy", 0.5, 0.0, 3, 1, 0.95), Some(0.01));
        assert_eq!(allowed("model-bytes", 1000.0, 0.0, 3, 1, 0.95), Some(100.0));
        assert_eq!(allowed("owner-accuracy", 0.5, 0.1, 1, 1, 0.95), None);
        assert!((sample_sd(&[0.80, 0.82, 0.84]) - 0.02).abs() < 1e-12);
        assert!(sample_sd(&[1.0]).is_nan());
    }
}
