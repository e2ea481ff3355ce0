//! `scratch`: the no-theft reference. The attacker ignores the victim and trains its own model
//! on its own data with the victim's recipe; a protection works when stealing plus attacking is
//! no better than this. The architecture is the stolen one when the exposure shows it (it is
//! public in the deployed file), else the configured one; only the spec is read, never weights.

use harness_core::protect::{
    Attack, AttackContext, Budget, Exposure, PlainModel, RegistryEntry, Requirement, Stolen, above,
    check, settings,
};
use harness_core::train::{CrossEntropy, train};
use harness_core::{Arch, Error, ModelSpec, ParamStore, Result};
use serde::Deserialize;

use crate::StolenModel;
use crate::common::{options, recipe};
use harness_core::seeded::derive_seed;

/// Settings of `scratch` (`[attacks.scratch]` in a matrix file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScratchConfig {
    /// Architecture when the exposure does not reveal the victim's (default `resnet20`).
    pub arch: String,
    /// Its width multiplier (VGG and MobileNetV2 only; default 1.0).
    pub width: f64,
}

impl Default for ScratchConfig {
    fn default() -> Self {
        Self {
            arch: "resnet20".into(),
            width: 1.0,
        }
    }
}

/// Training from scratch on the attacker's data alone.
#[derive(Debug)]
pub struct Scratch {
    arch: Arch,
    width: f64,
}

/// The registry entry of `scratch`: its id (declared here only), summary and constructor.
pub const ENTRY: RegistryEntry<dyn Attack> = RegistryEntry {
    id: "scratch",
    summary: "no-theft reference: a model trained from scratch on attacker data alone",
    build,
};

/// Builds [`Scratch`] from its settings; an unknown architecture answers with the closest ids.
pub fn build(table: &toml::Table) -> Result<Box<dyn Attack>> {
    Ok(Box::new(Scratch::new(settings(table)?)?))
}

impl Scratch {
    /// Checks the settings; an unknown architecture answers with the closest ids.
    pub fn new(config: ScratchConfig) -> Result<Self> {
        check("width", config.width, above(0.0))?;
        let arch = Arch::parse(&config.arch)?;
        if !arch.is_classifier() {
            return Err(Error::Config(format!("`{arch}` is not a classifier")));
        }
        ModelSpec::new(arch, 1)
            .with_width(config.width)
            .validate()?;
        Ok(Self {
            arch,
            width: config.width,
        })
    }

    /// The model to train: the stolen spec when exposed, else the configured architecture with
    /// the attacker data's classes and channels.
    pub fn spec(&self, ctx: &AttackContext<'_>, exposure: &Exposure) -> ModelSpec {
        match &exposure.stolen {
            Some(w) => w.spec.clone(),
            None => ModelSpec::new(self.arch, ctx.attacker_data.num_classes())
                .with_in_channels(ctx.attacker_data.channels)
                .with_width(self.width),
        }
    }

    /// Runs the attack (see the module docs) and returns the attacker's model.
    pub fn steal(
        &self,
        ctx: &AttackContext<'_>,
        exposure: &Exposure,
        budget: &Budget,
    ) -> Result<StolenModel> {
        let spec = self.spec(ctx, exposure);
        let params = ParamStore::new(derive_seed(ctx.seed, "scratch/init"), ctx.device);
        let model = PlainModel::build(spec, params)?;
        let cfg = recipe(ctx, budget.epochs, ctx.train.sgd.lr, "scratch/train");
        train(
            model.model.as_ref(),
            &model.params,
            ctx.attacker_data,
            &cfg,
            &CrossEntropy,
            &options(ctx),
            ctx.device,
        )?;
        Ok(StolenModel {
            model,
            measures: Vec::new(),
        })
    }
}

impl Attack for Scratch {
    fn requires(&self) -> Requirement {
        Requirement::Nothing
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
    fn settings_are_checked() {
        assert!(build(&toml::Table::new()).is_ok());
        assert!(build(&table("arch = \"vgg11\"\nwidth = 0.25")).is_ok());
        let err = build(&table("arch = \"resnt20\""))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("resnet20"), "{err}");
        assert!(build(&table("arch = \"dncnn\"")).is_err());
        assert!(build(&table("arch = \"resnet20\"\nwidth = 0.5")).is_err());
        assert!(build(&table("epochs = 3")).is_err());
    }
}
