//! `fine-tune`: a thief with the weights retrains them on its own labelled data, the removal
//! attack of the watermarking literature (Adi et al. 2018 name the four variants):
//!
//! | variant | head | trains |
//! |---|---|---|
//! | `ftll` | kept | the head only (body frozen) |
//! | `ftal` | kept | every layer |
//! | `rtll` | re-initialised | the head only |
//! | `rtal` | re-initialised | every layer |
//!
//! The head is the final layer ([`harness_core::ModelSpec::head_prefix`]). [chosen] In the
//! last-layer variants the body runs in eval mode (see
//! [`crate::objectives::FrozenBodyCrossEntropy`]), so batch-norm statistics stay as stolen too.

use harness_core::protect::{
    Attack, AttackContext, Budget, Exposure, PlainModel, RegistryEntry, Requirement, Stolen, above,
    check, settings,
};
use harness_core::train::{CrossEntropy, Objective, TrainOptions, train};
use harness_core::{Error, ParamStore, Result};
use serde::Deserialize;

use crate::StolenModel;
use crate::common::{options, recipe, stolen_weights};
use crate::objectives::FrozenBodyCrossEntropy;
use harness_core::seeded::derive_seed;

/// Which layers are re-initialised and which are trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// Fine-tune the last layer.
    Ftll,
    /// Fine-tune all layers.
    Ftal,
    /// Re-initialise the last layer, then train it alone.
    Rtll,
    /// Re-initialise the last layer, then train all layers.
    Rtal,
}

impl Variant {
    /// Whether the head is drawn afresh before training.
    pub fn reinitialises_head(self) -> bool {
        matches!(self, Variant::Rtll | Variant::Rtal)
    }

    /// Whether only the head trains.
    pub fn last_layer_only(self) -> bool {
        matches!(self, Variant::Ftll | Variant::Rtll)
    }
}

/// Settings of `fine-tune` (`[attacks.fine-tune]` in a matrix file); one variant per instance.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FineTuneConfig {
    /// `ftll`, `ftal` (default), `rtll` or `rtal`.
    pub variant: Variant,
    /// Base learning rate (default 0.01: fine-tuning, a tenth of the CIFAR training rate); the
    /// schedule and the rest of the optimiser come from the victim's recipe.
    pub lr: f64,
}

impl Default for FineTuneConfig {
    fn default() -> Self {
        Self {
            variant: Variant::Ftal,
            lr: 0.01,
        }
    }
}

/// Fine-tuning of stolen weights on the attacker's data.
#[derive(Debug)]
pub struct FineTune {
    config: FineTuneConfig,
}

/// The registry entry of `fine-tune`: its id (declared here only), summary and constructor.
pub const ENTRY: RegistryEntry<dyn Attack> = RegistryEntry {
    id: "fine-tune",
    summary: "fine-tune stolen weights on attacker data (ftll, ftal, rtll, rtal)",
    build,
};

/// Builds [`FineTune`] from its settings.
pub fn build(table: &toml::Table) -> Result<Box<dyn Attack>> {
    Ok(Box::new(FineTune::new(settings(table)?)?))
}

/// Overwrites the head of `model` with freshly initialised values (the zoo's initialisation on
/// a new store seeded with `seed`).
pub fn reinitialise_head(model: &PlainModel, seed: u64) -> Result<()> {
    let fresh = ParamStore::new(seed, model.params.device());
    harness_core::zoo::build(&model.spec, &fresh)?;
    let prefix = model.spec.head_prefix();
    let mut replaced = 0;
    for name in model
        .params
        .names()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
    {
        let (Some(dst), Some(src)) = (model.params.get(&name), fresh.get(&name)) else {
            return Err(Error::Config(format!("no fresh tensor for `{name}`")));
        };
        dst.set(src.as_tensor())?;
        replaced += 1;
    }
    if replaced == 0 {
        return Err(Error::Config(format!(
            "`{}` has no parameter under `{prefix}`",
            model.spec.arch
        )));
    }
    Ok(())
}

impl FineTune {
    /// Checks the settings.
    pub fn new(config: FineTuneConfig) -> Result<Self> {
        check("lr", config.lr, above(0.0))?;
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
        let variant = self.config.variant;
        let model = stolen.rebuild()?;
        if variant.reinitialises_head() {
            reinitialise_head(&model, derive_seed(ctx.seed, "fine-tune/head"))?;
        }
        let cfg = recipe(ctx, budget.epochs, self.config.lr, "fine-tune/train");
        let (objective, opts): (&dyn Objective, TrainOptions<'_>) = if variant.last_layer_only() {
            (
                &FrozenBodyCrossEntropy,
                TrainOptions {
                    train_only: Some(vec![model.spec.head_prefix().to_string()]),
                    ..options(ctx)
                },
            )
        } else {
            (&CrossEntropy, options(ctx))
        };
        train(
            model.model.as_ref(),
            &model.params,
            ctx.attacker_data,
            &cfg,
            objective,
            &opts,
            ctx.device,
        )?;
        Ok(StolenModel {
            model,
            measures: Vec::new(),
        })
    }
}

impl Attack for FineTune {
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
    use candle_core::Device;
    use harness_core::{Arch, ModelSpec};

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).expect("the test's TOML parses")
    }

    #[test]
    fn defaults_and_variants() {
        let c: FineTuneConfig = settings(&toml::Table::new()).expect("valid settings");
        assert_eq!((c.variant, c.lr), (Variant::Ftal, 0.01));
        for (s, v) in [
            ("ftll", Variant::Ftll),
            ("ftal", Variant::Ftal),
            ("rtll", Variant::Rtll),
            ("rtal", Variant::Rtal),
        ] {
            let c: FineTuneConfig =
                settings(&table(&format!("variant = \"{s}\""))).expect("valid settings");
            assert_eq!(c.variant, v);
        }
        assert!(build(&table("variant = \"ftxx\"")).is_err());
        assert!(build(&table("variants = [\"ftll\"]")).is_err());
        assert!(build(&table("lr = -1.0")).is_err());
    }

    #[test]
    fn reinitialising_changes_exactly_the_head() -> Result<()> {
        let spec = ModelSpec::new(Arch::Resnet20, 10);
        let model = PlainModel::build(spec, ParamStore::new(1, &Device::Cpu))?;
        let before = model.params.deep_copy()?;
        reinitialise_head(&model, 2)?;
        for name in model.params.names() {
            let (a, b) = (before.get(&name), model.params.get(&name));
            let (Some(a), Some(b)) = (a, b) else {
                panic!("{name} missing")
            };
            let same = a
                .as_tensor()
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?
                == b.as_tensor()
                    .flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1::<f32>()?;
            assert_eq!(same, !name.starts_with("fc."), "{name}");
        }
        Ok(())
    }
}
