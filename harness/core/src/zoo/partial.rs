//! Models built from a partial store: a party that holds some stages of a model (a host of a
//! split deployment, a thief who took part of it). Which stages the store holds is explicit;
//! running a stage that is not held is an error, unless the caller asked for fresh weights for
//! the missing stages (an attacker retraining what it lacks).

use std::collections::BTreeSet;

use candle_core::{DType, Device, Shape, Tensor, bail};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use super::{Model, ModelSpec, Network, Pass, StageInfo, build_network};
use crate::error::{Error, Result};
use crate::params::ParamStore;

/// What to do about the stages a partial store does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Running them is an error naming the stage.
    Error,
    /// They get fresh seeded weights, added to the store (so they train and save).
    Fresh,
}

/// A model whose store holds the stages `held` only.
pub struct PartialModel {
    network: Network,
    held: Vec<bool>,
}

impl PartialModel {
    /// Whether stage `stage` can run.
    pub fn holds(&self, stage: usize) -> bool {
        self.held.get(stage).copied().unwrap_or(false)
    }
}

/// Builds the model of `spec` on `params`, a store that holds exactly the parameters of the
/// stages `held` (indices into the model's stages, any order). A store missing a parameter of a
/// held stage, or holding one of a stage it does not claim, is refused with the names. With
/// [`Missing::Fresh`] the other stages get seeded weights in `params` and the model runs whole;
/// with [`Missing::Error`] they run only as an error.
pub fn build_partial(
    spec: &ModelSpec,
    params: &ParamStore,
    held: &[usize],
    missing: Missing,
) -> Result<PartialModel> {
    // The model's stages and their parameter names, from a throwaway build.
    let scratch = ParamStore::new(params.seed(), params.device());
    let probe = build_network(spec, scratch.var_builder())?;
    let stages = probe.stages();
    let mut is_held = vec![false; stages.len()];
    for &i in held {
        let Some(flag) = is_held.get_mut(i) else {
            return Err(Error::Config(format!(
                "stage {i} out of range: `{}` has {} stages",
                spec.arch,
                stages.len()
            )));
        };
        *flag = true;
    }
    check_holds(stages, &is_held, params)?;
    let network = match missing {
        Missing::Fresh => build_network(spec, params.var_builder())?,
        Missing::Error => {
            let backend = Split {
                held: held_names(stages, &is_held),
                store: params.clone(),
                scratch,
            };
            let vb =
                VarBuilder::from_backend(Box::new(backend), DType::F32, params.device().clone());
            build_network(spec, vb)?
        }
    };
    let held = match missing {
        Missing::Fresh => vec![true; is_held.len()],
        Missing::Error => is_held,
    };
    Ok(PartialModel { network, held })
}

/// Every parameter name of the held stages.
fn held_names(stages: &[StageInfo], held: &[bool]) -> BTreeSet<String> {
    stages
        .iter()
        .zip(held)
        .filter(|(_, h)| **h)
        .flat_map(|(s, _)| s.params.iter().cloned())
        .collect()
}

/// Refuses a store that lacks a parameter of a held stage or has one of another stage.
fn check_holds(stages: &[StageInfo], held: &[bool], params: &ParamStore) -> Result<()> {
    let stored: BTreeSet<String> = params.names().into_iter().collect();
    for (stage, _) in stages.iter().zip(held).filter(|(_, h)| **h) {
        let lacking: Vec<&String> = stage
            .params
            .iter()
            .filter(|n| !stored.contains(*n))
            .take(4)
            .collect();
        if !lacking.is_empty() {
            return Err(Error::Mismatch(format!(
                "the store is said to hold stage `{}` but lacks {lacking:?}",
                stage.name
            )));
        }
    }
    let wanted = held_names(stages, held);
    if let Some(name) = stored.iter().find(|n| !wanted.contains(*n)) {
        let owner = stages.iter().find(|s| s.params.contains(name));
        return Err(Error::Mismatch(match owner {
            Some(s) => format!(
                "the store holds `{name}` of stage `{}`, which it is not said to hold",
                s.name
            ),
            None => format!("the store holds `{name}`, which no stage of this model has"),
        }));
    }
    Ok(())
}

/// Held parameters from the caller's store, the rest from a throwaway one (never run).
struct Split {
    held: BTreeSet<String>,
    store: ParamStore,
    scratch: ParamStore,
}

impl SimpleBackend for Split {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: Init,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let from = if self.held.contains(name) {
            &self.store
        } else {
            &self.scratch
        };
        let Some(var) = from.get(name) else {
            bail!("no parameter `{name}`")
        };
        if var.shape() != &shape {
            bail!(
                "parameter `{name}` has shape {:?} in the store, the model asks for {:?}",
                var.dims(),
                shape.dims()
            )
        }
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.get(Shape::from(()), name, Init::Const(0.0), dtype, dev)
            .or_else(|_| bail!("no parameter `{name}`"))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.store.get(name).is_some() || self.scratch.get(name).is_some()
    }
}

impl Model for PartialModel {
    fn spec(&self) -> &ModelSpec {
        self.network.spec()
    }

    fn stages(&self) -> &[StageInfo] {
        self.network.stages()
    }

    fn run_stage(&self, stage: usize, xs: &Tensor, pass: &Pass<'_>) -> candle_core::Result<Tensor> {
        if !self.holds(stage) {
            let name = self
                .stages()
                .get(stage)
                .map_or_else(|| stage.to_string(), |s| format!("`{}`", s.name));
            bail!(
                "stage {name} is not held by this partial model; build it with fresh weights for the missing stages to run them"
            )
        }
        self.network.run_stage(stage, xs, pass)
    }

    fn exit_stages(&self) -> &[usize] {
        self.network.exit_stages()
    }

    fn run_exit(&self, exit: usize, xs: &Tensor, pass: &Pass<'_>) -> candle_core::Result<Tensor> {
        match self.network.exit_stages().get(exit) {
            Some(&stage) if !self.holds(stage) => {
                bail!("exit head {exit} belongs to a stage this partial model does not hold")
            }
            _ => self.network.run_exit(exit, xs, pass),
        }
    }
}
