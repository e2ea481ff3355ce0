//! What every attack shares: the attacker's training recipe, seeds, and access to the exposure.

use harness_core::protect::{AttackContext, Exposure, StolenArtifact};
use harness_core::seeded::derive_seed;
use harness_core::train::{TrainConfig, TrainOptions};
use harness_core::{Error, Result};

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

/// The stolen model, or an error naming the attack (the planner should have rejected the pair).
/// The attacks here retrain with a classification loss, so the stolen model must be a classifier.
pub(crate) fn stolen_weights<'e>(
    exposure: &'e Exposure,
    attack: &str,
) -> Result<&'e StolenArtifact> {
    let weights = exposure.stolen.as_ref().ok_or_else(|| {
        Error::Unsupported(format!(
            "attack `{attack}` needs stolen weights, and this protection exposes none"
        ))
    })?;
    if !weights.spec.arch.is_classifier() {
        return Err(Error::Unsupported(format!(
            "attack `{attack}` retrains classifiers; the stolen model is `{}`",
            weights.spec.arch
        )));
    }
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            stolen: Some(StolenArtifact::plain(
                ModelSpec::new(arch, 10),
                ParamStore::new(0, &candle_core::Device::Cpu),
            )),
            oracle: None,
        };
        assert!(stolen_weights(&weights(Arch::Resnet20), "prune").is_ok());
        assert!(stolen_weights(&weights(Arch::Dncnn), "prune").is_err());
    }
}
