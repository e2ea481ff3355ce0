//! What every attack shares: the attacker's training recipe, seeds, and access to the exposure.

use harness_core::protect::{AttackContext, Exposure, StolenWeights};
use harness_core::train::{TrainConfig, TrainOptions};
use harness_core::{Error, Result};

/// A seed for one purpose of one attack, derived from the cell's seed: the attacker's streams
/// never coincide with the owner's (which use the cell seed itself), so a model trained from
/// scratch by the attacker does not start from the victim's initial weights.
pub(crate) fn derive_seed(seed: u64, purpose: &str) -> u64 {
    // 64-bit FNV-1a of the purpose, mixed into the seed with a splitmix64 finaliser.
    let tag = purpose.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut z = seed ^ tag;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The attacker's training run: the victim's recipe (`ctx.train`: batch size, optimiser,
/// schedule, augmentation) with the attack's epochs and learning rate, inputs normalised as the
/// harness feeds the deployed models (`ctx.normalization`), and a seed derived for `purpose`.
pub(crate) fn recipe(
    ctx: &AttackContext<'_>,
    epochs: usize,
    lr: f64,
    purpose: &str,
) -> TrainConfig {
    let mut cfg = ctx.train.clone();
    cfg.epochs = epochs;
    cfg.sgd.lr = lr;
    cfg.normalization = Some(ctx.normalization);
    cfg.seed = derive_seed(ctx.seed, purpose);
    cfg
}

/// Training options of an attack: progress as asked, everything else default.
pub(crate) fn options<'a>(ctx: &AttackContext<'_>) -> TrainOptions<'a> {
    TrainOptions {
        progress: ctx.progress,
        ..TrainOptions::default()
    }
}

/// The stolen weights, or an error naming the attack (the planner should have rejected the pair).
/// The attacks here retrain with a classification loss, so the stolen model must be a classifier.
pub(crate) fn stolen_weights<'e>(
    exposure: &'e Exposure,
    attack: &str,
) -> Result<&'e StolenWeights> {
    let weights = exposure.weights.as_ref().ok_or_else(|| {
        Error::Config(format!(
            "attack `{attack}` needs stolen weights, and this protection exposes none"
        ))
    })?;
    if !weights.spec.arch.is_classifier() {
        return Err(Error::Config(format!(
            "attack `{attack}` retrains classifiers; the stolen model is `{}`",
            weights.spec.arch
        )));
    }
    Ok(weights)
}

/// Checks a learning rate from the settings.
pub(crate) fn check_lr(lr: f64) -> Result<()> {
    if lr.is_finite() && lr > 0.0 {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "`lr` must be a positive number (0 would train nothing), got {lr}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_seeds_differ_by_purpose_and_seed() {
        let a = derive_seed(1, "scratch/init");
        assert_eq!(a, derive_seed(1, "scratch/init"));
        assert_ne!(a, derive_seed(1, "scratch/data"));
        assert_ne!(a, derive_seed(2, "scratch/init"));
        assert_ne!(a, 1);
    }

    #[test]
    fn stolen_weights_must_exist_and_be_a_classifier() {
        use harness_core::{Arch, ModelSpec, ParamStore};
        let none = Exposure::default();
        let err = stolen_weights(&none, "prune").err().map(|e| e.to_string());
        assert!(
            err.unwrap_or_default()
                .contains("`prune` needs stolen weights")
        );
        let weights = |arch| Exposure {
            weights: Some(StolenWeights::plain(
                ModelSpec::new(arch, 10),
                ParamStore::new(0, &candle_core::Device::Cpu),
            )),
            oracle: None,
        };
        assert!(stolen_weights(&weights(Arch::Resnet20), "prune").is_ok());
        assert!(stolen_weights(&weights(Arch::Dncnn), "prune").is_err());
    }

    #[test]
    fn learning_rates_are_checked() {
        // 0 would train nothing (only batch-norm statistics would move): refused.
        assert!(check_lr(0.0).is_err());
        assert!(check_lr(0.01).is_ok());
        assert!(check_lr(-1.0).is_err());
        assert!(check_lr(f64::NAN).is_err());
    }
}
