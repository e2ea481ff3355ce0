//! A zoo model as built: an architecture's stages plus the exit heads of its spec, implementing
//! [`Model`] once for every architecture.

use candle_core::{Result, Tensor, bail};
use candle_nn::VarBuilder;

use super::{Dense, ModelSpec, Pass, StageInfo};
use super::{Model, global_avg_pool_if_map};
use crate::error::suggest;

/// What an architecture provides: its stages and how to run one.
pub(crate) trait Architecture: Send + Sync {
    /// The stages, in forward order, each owning its parameters.
    fn stages(&self) -> &[StageInfo];

    /// Runs stage `stage` on the output of the previous one.
    fn run_stage(&self, stage: usize, xs: &Tensor, pass: &Pass<'_>) -> Result<Tensor>;
}

/// An architecture with the exit heads of its spec.
pub struct Network {
    spec: ModelSpec,
    body: Box<dyn Architecture>,
    stages: Vec<StageInfo>,
    /// (stage read, head) per exit, in spec order.
    exits: Vec<Dense>,
    exit_stages: Vec<usize>,
}

impl Network {
    /// `body` with the exit heads of `spec.exits` created under `vb` (`exits.{k}`).
    pub(crate) fn new(
        spec: ModelSpec,
        body: Box<dyn Architecture>,
        vb: &VarBuilder<'_>,
    ) -> Result<Self> {
        let mut stages = body.stages().to_vec();
        let mut exits = Vec::with_capacity(spec.exits.len());
        let mut exit_stages = Vec::with_capacity(spec.exits.len());
        let all: Vec<String> = stages.iter().map(|s| s.name.clone()).collect();
        for (k, exit) in spec.exits.iter().enumerate() {
            let Some(stage) = all.iter().position(|s| *s == exit.after) else {
                bail!(
                    "{} has no stage `{}` to put an exit head after{}; its stages: {}",
                    spec.arch,
                    exit.after,
                    datasets::names::did_you_mean(&suggest(
                        &exit.after,
                        all.iter().map(String::as_str)
                    )),
                    all.join(", ")
                )
            };
            if stage + 1 == stages.len() {
                bail!(
                    "an exit head after `{}`, the last stage, would duplicate the output",
                    exit.after
                )
            }
            if exit_stages.last().is_some_and(|&last| last >= stage) {
                bail!(
                    "exit heads must follow forward order, one per stage (`{}` comes after a later or equal stage)",
                    exit.after
                )
            }
            let head = Dense::new(
                stages[stage].channels,
                spec.num_classes,
                vb.pp("exits").pp(k),
            )?;
            let mut owned = std::mem::take(&mut stages[stage].params);
            owned.extend(head.param_names());
            stages[stage] = stages[stage].clone().owning(owned);
            exits.push(head);
            exit_stages.push(stage);
        }
        Ok(Self {
            spec,
            body,
            stages,
            exits,
            exit_stages,
        })
    }
}

impl Model for Network {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn stages(&self) -> &[StageInfo] {
        &self.stages
    }

    fn run_stage(&self, stage: usize, xs: &Tensor, pass: &Pass<'_>) -> Result<Tensor> {
        if stage >= self.stages.len() {
            bail!(
                "stage {stage} out of range: {} has {} stages",
                self.spec.arch,
                self.stages.len()
            )
        }
        self.body.run_stage(stage, xs, pass)
    }

    fn exit_stages(&self) -> &[usize] {
        &self.exit_stages
    }

    fn run_exit(&self, exit: usize, xs: &Tensor, pass: &Pass<'_>) -> Result<Tensor> {
        let Some(head) = self.exits.get(exit) else {
            bail!(
                "{} has {} exit heads, not {}",
                self.spec.arch,
                self.exits.len(),
                exit + 1
            )
        };
        head.forward(&global_avg_pool_if_map(xs)?, pass)
    }
}
