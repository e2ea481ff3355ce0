//! `prune`: global magnitude pruning of the stolen weights (Han et al. 2015; the removal attack
//! the protection papers test at 20-90 %), optionally followed by fine-tuning on the attacker's
//! data with the pruned weights held at zero.
//!
//! Prunable tensors are the weights of convolutions and linear layers (rank >= 2); biases and
//! batch norm stay. One threshold over all of them (global, not per layer): exactly
//! `floor(rate x N)` of the N prunable scalars are zeroed, the smallest in magnitude, ties at the
//! threshold broken by parameter order.

use candle_core::{DType, Tensor, Var};
use harness_core::protect::{
    Attack, AttackContext, Budget, Exposure, Measure, RegistryEntry, Requirement, Stolen, above,
    check, settings,
};
use harness_core::train::{CrossEntropy, TrainOptions, train};
use harness_core::{ParamStore, Result};
use serde::Deserialize;

use crate::StolenModel;
use crate::common::{options, recipe, stolen_weights};

/// Settings of `prune` (`[attacks.prune]` in a matrix file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PruneConfig {
    /// Fraction of prunable weights set to zero, 0 <= rate < 1 (default 0.5).
    pub rate: f64,
    /// Fine-tune the pruned model on the attacker's data for the budget's epochs, keeping the
    /// mask (default true).
    pub fine_tune: bool,
    /// Learning rate of that fine-tuning (default 0.01).
    pub lr: f64,
}

impl Default for PruneConfig {
    fn default() -> Self {
        Self {
            rate: 0.5,
            fine_tune: true,
            lr: 0.01,
        }
    }
}

/// Global magnitude pruning, then optional masked fine-tuning.
#[derive(Debug)]
pub struct Prune {
    config: PruneConfig,
}

/// The registry entry of `prune`: its id (declared here only), summary and constructor.
pub const ENTRY: RegistryEntry<dyn Attack> = RegistryEntry {
    id: "prune",
    summary: "global magnitude pruning of stolen weights, then masked fine-tuning",
    build,
};

/// Builds [`Prune`] from its settings.
pub fn build(table: &toml::Table) -> Result<Box<dyn Attack>> {
    Ok(Box::new(Prune::new(settings(table)?)?))
}

/// The tensors pruning acts on: conv and linear weights (rank >= 2), by name.
pub fn prunable(params: &ParamStore) -> Vec<(String, Var)> {
    params
        .trainable()
        .into_iter()
        .filter(|(name, v)| name.ends_with("weight") && v.rank() >= 2)
        .collect()
}

/// Zeroes the `floor(rate x N)` smallest-magnitude prunable weights of `params` and returns the
/// masks (1 kept, 0 pruned) with their variables, to re-apply after optimiser steps.
pub fn prune_globally(params: &ParamStore, rate: f64) -> Result<Vec<(Var, Tensor)>> {
    let vars = prunable(params);
    let mut values = Vec::with_capacity(vars.len());
    for (_, v) in &vars {
        values.push(
            v.as_tensor()
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?,
        );
    }
    let total: usize = values.iter().map(Vec::len).sum();
    let k = ((rate * total as f64).floor() as usize).min(total);
    // The k-th smallest magnitude; everything below it goes, and enough of the ties at it.
    let (threshold, mut ties) = if k == 0 {
        (f32::NEG_INFINITY, 0)
    } else {
        let mut mags: Vec<f32> = values.iter().flatten().map(|v| v.abs()).collect();
        let (_, kth, _) = mags.select_nth_unstable_by(k - 1, f32::total_cmp);
        let t = *kth;
        let below = mags.iter().filter(|m| m.total_cmp(&t).is_lt()).count();
        (t, k - below)
    };
    let mut masks = Vec::with_capacity(vars.len());
    for ((_, var), vals) in vars.into_iter().zip(values) {
        let mask: Vec<f32> = vals
            .iter()
            .map(|v| match v.abs().total_cmp(&threshold) {
                std::cmp::Ordering::Less => 0.0,
                std::cmp::Ordering::Equal if ties > 0 => {
                    ties -= 1;
                    0.0
                }
                _ => 1.0,
            })
            .collect();
        let mask = Tensor::from_vec(mask, var.shape(), var.device())?.to_dtype(var.dtype())?;
        var.set(&var.as_tensor().mul(&mask)?)?;
        masks.push((var, mask));
    }
    Ok(masks)
}

/// Fraction of prunable weights that are exactly zero.
pub fn sparsity(params: &ParamStore) -> Result<f64> {
    let (mut zeros, mut total) = (0usize, 0usize);
    for (_, v) in prunable(params) {
        let t = v.as_tensor();
        total += t.elem_count();
        zeros += t
            .eq(0.0)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as usize;
    }
    Ok(if total == 0 {
        0.0
    } else {
        zeros as f64 / total as f64
    })
}

impl Prune {
    /// Checks the settings: 0 <= rate < 1.
    pub fn new(config: PruneConfig) -> Result<Self> {
        check("rate", config.rate, 0.0..1.0)?;
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
        let model = stolen.rebuild()?;
        let masks = prune_globally(&model.params, self.config.rate)?;
        if self.config.fine_tune && budget.epochs > 0 {
            let reapply = || -> Result<()> {
                for (var, mask) in &masks {
                    var.set(&var.as_tensor().mul(mask)?)?;
                }
                Ok(())
            };
            let cfg = recipe(ctx, budget.epochs, self.config.lr, "prune/train");
            let opts = TrainOptions {
                after_step: Some(&reapply),
                ..options(ctx)
            };
            train(
                model.model.as_ref(),
                &model.params,
                ctx.attacker_data,
                &cfg,
                &CrossEntropy,
                &opts,
                ctx.device,
            )?;
        }
        let reached = sparsity(&model.params)?;
        Ok(StolenModel {
            model,
            // Reported as lower-is-better for the owner: a thief who can remove more of the
            // model and keep it working is the stronger one.
            measures: vec![Measure::lower("sparsity", reached)],
        })
    }
}

impl Attack for Prune {
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
    fn rate_is_validated() {
        assert!(build(&toml::Table::new()).is_ok());
        assert!(build(&table("rate = 0.0")).is_ok());
        assert!(build(&table("rate = 0.9\nfine_tune = false")).is_ok());
        for bad in [
            "rate = 1.0",
            "rate = -0.1",
            "rate = nan",
            "lr = -1.0",
            "amount = 0.5",
        ] {
            assert!(build(&table(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn prunes_exactly_the_rate_of_the_smallest_weights() -> Result<()> {
        let params = ParamStore::new(5, &Device::Cpu);
        harness_core::zoo::build(&ModelSpec::new(Arch::Resnet20, 10), &params)?;
        let n: usize = prunable(&params).iter().map(|(_, v)| v.elem_count()).sum();
        assert!(prunable(&params).iter().all(|(n, _)| !n.contains("bn")));
        let bn_before = params
            .get("bn1.weight")
            .map(|v| v.as_tensor().to_vec1::<f32>())
            .transpose()?;
        for rate in [0.0, 0.2, 0.5, 0.9] {
            prune_globally(&params, rate)?;
            let s = sparsity(&params)?;
            assert!(
                (s - rate).abs() <= 1.0 / n as f64,
                "rate {rate}: sparsity {s}"
            );
        }
        let bn_after = params
            .get("bn1.weight")
            .map(|v| v.as_tensor().to_vec1::<f32>())
            .transpose()?;
        assert_eq!(bn_before, bn_after, "batch norm is not pruned");
        Ok(())
    }

    #[test]
    fn ties_at_the_threshold_are_counted() -> Result<()> {
        // A store whose weights are all equal: the mask must still zero exactly floor(rate x N).
        let params = ParamStore::new(0, &Device::Cpu);
        harness_core::zoo::build(&ModelSpec::new(Arch::Resnet20, 10), &params)?;
        for (_, v) in prunable(&params) {
            v.set(&v.as_tensor().ones_like()?)?;
        }
        let n: usize = prunable(&params).iter().map(|(_, v)| v.elem_count()).sum();
        prune_globally(&params, 0.3)?;
        let zeros = (sparsity(&params)? * n as f64).round() as usize;
        assert_eq!(zeros, (0.3 * n as f64).floor() as usize);
        Ok(())
    }
}
