//! `edgepro-prune`: pruning aimed at EdgePro's locked stages. With a locking value of 0 the
//! password zeroes a few of the most active neurons of each locked stage; a thief who removes
//! those neurons for good reproduces the password without knowing it. Not knowing which, it
//! prunes the top `rate` of each locked stage's neurons by mean activation on its own images
//! (the owner drew the authorised ones from the top 30 % of the same ranking on the pretrained
//! victim), then fine-tunes every layer on its labelled data with the pruned neurons held at
//! zero, to win back what the innocent pruned neurons carried.
//!
//! Choice: neurons are pruned where the lock acts, at the stage outputs (a channel fixed at
//! zero by a mask, the same stage hook the owner's runtime uses), not by zeroing filters inside
//! the stage: a residual stage's output channel also carries its shortcut, so zeroing the last
//! convolution's filter would not remove it. Choice: highest-activation selection rather than
//! weight magnitude, because authorised neurons are chosen by activation; the generic `prune`
//! attack already covers global weight magnitude.

use std::sync::Arc;

use harness_core::Result;
use harness_core::protect::masked::factors;
use harness_core::protect::{
    Attack, AttackContext, Budget, DisclosureKind, Exposure, MaskHook, MaskedModel, Measure,
    RegistryEntry, Requirement, Stolen, above, check, open, settings,
};
use harness_core::train::{CrossEntropy, train};
use serde::Deserialize;

use crate::common::{options, recipe};
use crate::edgepro_guess::{attacker_ranking, target};

/// Settings of `edgepro-prune` (`[attacks.edgepro-prune]` in a matrix file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeProPruneConfig {
    /// Fraction of each locked stage's neurons pruned, most active first, 0 < rate < 1 (0.3:
    /// the pool the owner draws from).
    pub rate: f64,
    /// Fine-tune all layers on the attacker's data for the budget's epochs (true).
    pub fine_tune: bool,
    /// Learning rate of that fine-tuning (0.01).
    pub lr: f64,
    /// Attacker images the neurons are ranked on (200).
    pub rank_images: usize,
}

impl Default for EdgeProPruneConfig {
    fn default() -> Self {
        Self {
            rate: 0.3,
            fine_tune: true,
            lr: 0.01,
            rank_images: 200,
        }
    }
}

/// Activation-guided pruning of the locked stages, then masked fine-tuning.
#[derive(Debug)]
pub struct EdgeProPrune {
    config: EdgeProPruneConfig,
}

/// The registry entry of `edgepro-prune`: its id (declared here only), summary and constructor.
pub const ENTRY: RegistryEntry<dyn Attack> = RegistryEntry {
    id: "edgepro-prune",
    summary: "adaptive, edgepro only: prune the most active neurons of the locked stages, fine-tune",
    build,
};

/// Builds [`EdgeProPrune`] from its settings.
pub fn build(table: &toml::Table) -> Result<Box<dyn Attack>> {
    Ok(Box::new(EdgeProPrune::new(settings(table)?)?))
}

impl EdgeProPrune {
    /// Checks the settings.
    pub fn new(config: EdgeProPruneConfig) -> Result<Self> {
        check("rate", config.rate, open(0.0, 1.0))?;
        check("lr", config.lr, above(0.0))?;
        check("rank_images", config.rank_images, 1..)?;
        Ok(Self { config })
    }

    /// Runs the attack (see the module docs) and returns the pruned, fine-tuned model.
    pub fn steal(
        &self,
        ctx: &AttackContext<'_>,
        exposure: &Exposure,
        budget: &Budget,
    ) -> Result<(MaskedModel, Vec<Measure>)> {
        let t = target(exposure, ENTRY.id)?;
        let ranks = attacker_ranking(ctx, &t.model, self.config.rank_images, "edgepro-prune/rank")?;
        let mut masks = Vec::with_capacity(t.stages.len());
        let mut pruned = 0usize;
        for &(i, c, _) in &t.stages {
            let k = ((self.config.rate * c as f64).round() as usize).clamp(1, c);
            let neurons: Vec<usize> = ranks[i].iter().take(k).copied().collect();
            pruned += neurons.len();
            masks.push((i, factors(c, &neurons, &vec![0.0; neurons.len()], 1.0)));
        }
        let hook = MaskHook::new(t.model.model.stages(), &masks, ctx.device)?;
        let model = MaskedModel::new(t.model, hook, 0);
        if self.config.fine_tune && budget.epochs > 0 {
            let cfg = recipe(ctx, budget.epochs, self.config.lr, "edgepro-prune/train");
            train(
                &model,
                &model.plain.params,
                ctx.attacker_data,
                &cfg,
                &CrossEntropy,
                &options(ctx),
                ctx.device,
            )?;
        }
        Ok((model, vec![Measure::lower("pruned-neurons", pruned as f64)]))
    }
}

impl Attack for EdgeProPrune {
    fn requires(&self) -> Requirement {
        Requirement::Weights
    }

    fn targets(&self) -> Option<DisclosureKind> {
        Some(DisclosureKind::Edgepro)
    }

    fn run(&self, ctx: &AttackContext<'_>, exposure: &Exposure, budget: &Budget) -> Result<Stolen> {
        let (model, measures) = self.steal(ctx, exposure, budget)?;
        Ok(Stolen {
            model: Arc::new(model),
            measures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert!(build(&toml::Table::new()).is_ok());
        for bad in [
            "rate = 0.0",
            "rate = 1.0",
            "lr = -1.0",
            "rank_images = 0",
            "amount = 1",
        ] {
            let t: toml::Table = toml::from_str(bad).expect("the test\'s TOML parses");
            assert!(build(&t).is_err(), "{bad}");
        }
    }
}
