//! `adv-train`: adversarial fine-tuning of stolen weights (Madry et al. 2018): every training
//! batch of the attacker's data is replaced by its PGD L-infinity adversarial version. Used
//! against protections that live in the decision boundary (fingerprints, watermarks), which
//! robust training reshapes. Budgets are in pixel space, 1/255 units in the settings.
//!
//! [chosen] Adversarial examples are crafted with the model in eval mode and the loss on them is
//! taken in train mode (see [`crate::objectives::Pgd::perturb`]); `robust-accuracy` is measured
//! on a seeded slice of the attacker's own (training) images, since the attack may not read the
//! test set.

use candle_core::{D, Tensor};
use harness_core::protect::{
    Attack, AttackContext, Budget, Exposure, Measure, RegistryEntry, Requirement, Stolen, above,
    check, left_open, settings,
};
use harness_core::train::train;
use harness_core::{Error, Model, Result};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use crate::StolenModel;
use crate::common::{options, recipe, stolen_weights};
use crate::objectives::{AdversarialCrossEntropy, Pgd};
use harness_core::seeded::derive_seed;

/// Settings of `adv-train` (`[attacks.adv-train]` in a matrix file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdvTrainConfig {
    /// L-infinity radius in 1/255 pixel units (default 8, i.e. 8/255).
    pub eps_255: f64,
    /// PGD step in 1/255 pixel units (default 2).
    pub step_255: f64,
    /// PGD steps while training (default 7).
    pub steps: usize,
    /// Start each PGD run at a uniform random point of the ball (default true).
    pub random_start: bool,
    /// Base learning rate (default 0.01: fine-tuning).
    pub lr: f64,
    /// Attacker images on which `robust-accuracy` (PGD with the same settings) is measured
    /// after training; 0 skips it (default 256). They are training images of the attacker: the
    /// attack may not touch the test set.
    pub robust_eval_images: usize,
}

impl Default for AdvTrainConfig {
    fn default() -> Self {
        Self {
            eps_255: 8.0,
            step_255: 2.0,
            steps: 7,
            random_start: true,
            lr: 0.01,
            robust_eval_images: 256,
        }
    }
}

impl AdvTrainConfig {
    /// The PGD attack these settings describe (budgets as pixel fractions).
    pub fn pgd(&self) -> Pgd {
        Pgd {
            eps: self.eps_255 / 255.0,
            step: self.step_255 / 255.0,
            steps: self.steps,
            random_start: self.random_start,
        }
    }
}

/// PGD adversarial fine-tuning of stolen weights.
#[derive(Debug)]
pub struct AdvTrain {
    config: AdvTrainConfig,
}

/// The registry entry of `adv-train`: its id (declared here only), summary and constructor.
pub const ENTRY: RegistryEntry<dyn Attack> = RegistryEntry {
    id: "adv-train",
    summary: "PGD L-infinity adversarial fine-tuning of stolen weights",
    build,
};

/// Builds [`AdvTrain`] from its settings.
pub fn build(table: &toml::Table) -> Result<Box<dyn Attack>> {
    Ok(Box::new(AdvTrain::new(settings(table)?)?))
}

/// Top-1 accuracy of `model` on the PGD versions of `images` (normalised) against `labels`,
/// in batches of `batch_size`.
pub fn robust_accuracy(
    model: &dyn Model,
    images: &Tensor,
    labels: &Tensor,
    pgd: &Pgd,
    norm: &datasets::catalog::Normalization,
    batch_size: usize,
    seed: u64,
) -> Result<f64> {
    let n = images.dim(0)?;
    if n == 0 || batch_size == 0 {
        return Err(Error::Config(
            "robust accuracy needs images and a batch size".into(),
        ));
    }
    let mut correct = 0usize;
    for (b, start) in (0..n).step_by(batch_size).enumerate() {
        let len = batch_size.min(n - start);
        let (x, y) = (images.narrow(0, start, len)?, labels.narrow(0, start, len)?);
        let adv = pgd.perturb(model, &x, &y, norm, seed ^ b as u64)?;
        let pred = model.forward_t(&adv, false)?.argmax(D::Minus1)?;
        correct += pred
            .eq(&y)?
            .to_dtype(candle_core::DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as usize;
    }
    Ok(correct as f64 / n as f64)
}

impl AdvTrain {
    /// Checks the settings: budgets within the pixel range, in 1/255 units (0 would be plain
    /// fine-tuning), at least one PGD step, a positive learning rate.
    pub fn new(config: AdvTrainConfig) -> Result<Self> {
        check("eps_255", config.eps_255, left_open(0.0, 255.0))?;
        check("step_255", config.step_255, left_open(0.0, 255.0))?;
        check("steps", config.steps, 1..)?;
        check("lr", config.lr, above(0.0))?;
        check("robust_eval_images", config.robust_eval_images, 0..)?;
        config.pgd().validate()?;
        Ok(Self { config })
    }

    /// Runs the attack (see the module docs) and returns the attacker's model.
    pub fn steal(
        &self,
        ctx: &AttackContext<'_>,
        exposure: &Exposure,
        budget: &Budget,
    ) -> Result<StolenModel> {
        let stolen = stolen_weights(exposure, ENTRY.id)?;
        let model = stolen.rebuild()?;
        let pgd = self.config.pgd();
        let cfg = recipe(ctx, budget.epochs, self.config.lr, "adv-train/train");
        let objective = AdversarialCrossEntropy::new(
            pgd,
            ctx.normalization,
            derive_seed(ctx.seed, "adv-train/pgd"),
        );
        train(
            model.model.as_ref(),
            &model.params,
            ctx.attacker_data,
            &cfg,
            &objective,
            &options(ctx),
            ctx.device,
        )?;
        let mut measures = Vec::new();
        let n = self.config.robust_eval_images.min(ctx.attacker_data.len());
        if n > 0 {
            let mut order: Vec<usize> = (0..ctx.attacker_data.len()).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(
                ctx.seed,
                "adv-train/robust-slice",
            )));
            order.truncate(n);
            let images = datasets::batch::to_tensor(
                ctx.attacker_data,
                &order,
                Some(&ctx.normalization),
                ctx.device,
            )?;
            let labels: Vec<u32> = order.iter().map(|&i| ctx.attacker_data.labels[i]).collect();
            let labels = Tensor::from_vec(labels, n, ctx.device)?;
            let acc = robust_accuracy(
                model.model.as_ref(),
                &images,
                &labels,
                &pgd,
                &ctx.normalization,
                ctx.train.batch_size.max(1),
                derive_seed(ctx.seed, "adv-train/robust-eval"),
            )?;
            // The attacker's gain, so lower is better for the owner.
            measures.push(Measure::lower("robust-accuracy", acc));
        }
        Ok(StolenModel { model, measures })
    }
}

impl Attack for AdvTrain {
    fn requires(&self) -> Requirement {
        Requirement::Weights
    }

    fn run(&self, ctx: &AttackContext<'_>, exposure: &Exposure, budget: &Budget) -> Result<Stolen> {
        self.steal(ctx, exposure, budget).map(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).expect("the test's TOML parses")
    }

    #[test]
    fn defaults_follow_the_literature() {
        let c: AdvTrainConfig = settings(&toml::Table::new()).expect("valid settings");
        let pgd = c.pgd();
        assert!((pgd.eps - 8.0 / 255.0).abs() < 1e-12);
        assert!((pgd.step - 2.0 / 255.0).abs() < 1e-12);
        assert_eq!((pgd.steps, pgd.random_start), (7, true));
        // Integers are accepted for the 1/255 budgets.
        let c: AdvTrainConfig =
            settings(&table("eps_255 = 4\nsteps = 10")).expect("valid settings");
        assert_eq!((c.eps_255, c.steps), (4.0, 10));
    }

    #[test]
    fn bad_settings_are_rejected() {
        assert!(build(&toml::Table::new()).is_ok());
        for bad in [
            "eps_255 = 300",
            "step_255 = -1",
            "lr = -0.5",
            "lr = 0.0",
            "eps = 0.03",
            "eps_255 = 0",
            "step_255 = 0",
            "steps = 0",
        ] {
            let err = build(&table(bad)).err().expect(bad).to_string();
            let key = bad.split(' ').next().unwrap_or_default();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }
}
