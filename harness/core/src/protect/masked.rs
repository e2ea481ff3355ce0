//! Channel masks on stage outputs: per-stage channel multipliers applied to the outputs of a
//! zoo model's stages ([`crate::zoo::StageHook`]). A neuron-locking protection deploys its locked
//! weights with such a mask built from its password; attacks on it run the same masks with a
//! guessed password or to prune neurons, so the mask lives here, not in either crate.

use super::{Deployed, PlainModel};
use crate::zoo::{Pass, StageHook, StageInfo};
use crate::{Error, Model, ModelSpec, Result};
use candle_core::{Device, Tensor};

/// Multiplies the channels of chosen stages by fixed factors. One mask per stage index of the
/// model (`None`: the stage passes through untouched). With [`MaskHook::first_rows`] only the
/// first rows of a batch are masked, which is how lock training applies the password to half a
/// batch in one forward pass (as the authors' code does with per-sample masks).
#[derive(Clone, Debug)]
pub struct MaskHook {
    masks: Vec<Option<Tensor>>,
    rows: Option<usize>,
}

impl MaskHook {
    /// A hook for a model with `stages`, multiplying stage `i`'s channels by `factors` for each
    /// `(i, factors)` given; `factors` must have one entry per channel of the stage.
    pub fn new(
        stages: &[StageInfo],
        factors: &[(usize, Vec<f32>)],
        device: &Device,
    ) -> Result<Self> {
        let mut masks = vec![None; stages.len()];
        for (stage, f) in factors {
            let info = stages.get(*stage).ok_or_else(|| {
                Error::Config(format!(
                    "stage index {stage} out of range (the model has {} stages)",
                    stages.len()
                ))
            })?;
            if f.len() != info.channels {
                return Err(Error::Config(format!(
                    "stage `{}` has {} channels, the mask has {}",
                    info.name,
                    info.channels,
                    f.len()
                )));
            }
            masks[*stage] = Some(Tensor::from_slice(f, f.len(), device)?);
        }
        Ok(Self { masks, rows: None })
    }

    /// The same hook acting on the first `k` rows of each batch only (the rest pass unmasked).
    pub fn first_rows(&self, k: usize) -> Self {
        Self {
            masks: self.masks.clone(),
            rows: Some(k),
        }
    }

    /// Stage indices this hook masks.
    pub fn masked_stages(&self) -> Vec<usize> {
        (0..self.masks.len())
            .filter(|&i| self.masks[i].is_some())
            .collect()
    }
}

impl StageHook for MaskHook {
    fn on_stage(&self, stage: usize, xs: Tensor) -> candle_core::Result<Tensor> {
        let Some(Some(mask)) = self.masks.get(stage) else {
            return Ok(xs);
        };
        let c = mask.dim(0)?;
        let n = xs.dim(0)?;
        let mask = mask.to_dtype(xs.dtype())?;
        let (mask, rows) = match self.rows {
            Some(0) => return Ok(xs),
            Some(k) if k < n => {
                let head = mask.unsqueeze(0)?.broadcast_as((k, c))?.contiguous()?;
                let tail = Tensor::ones((n - k, c), xs.dtype(), xs.device())?;
                (Tensor::cat(&[head, tail], 0)?, n)
            }
            _ => (mask, 1),
        };
        let mask = match xs.rank() {
            4 => mask.reshape((rows, c, 1, 1))?,
            2 => mask.reshape((rows, c))?,
            r => candle_core::bail!("stage {stage}: cannot mask a rank-{r} activation"),
        };
        xs.broadcast_mul(&mask)
    }
}

/// A zoo model run with a [`MaskHook`]: the owner's locked deployment, an attacker's guessed
/// password, or a pruning mask. It is a [`Model`] (so the trainer and `eval` take it as is) and a
/// [`Deployed`] (so the harness times and queries it).
#[derive(Clone)]
pub struct MaskedModel {
    /// The weights and the network.
    pub plain: PlainModel,
    /// The hook applied at every forward pass.
    pub hook: MaskHook,
    /// Bytes the hook adds to a deployment (the password), for `model_bytes`.
    pub hook_bytes: usize,
}

impl MaskedModel {
    /// `plain` run with `hook`; `hook_bytes` is what shipping the hook costs.
    pub fn new(plain: PlainModel, hook: MaskHook, hook_bytes: usize) -> Self {
        Self {
            plain,
            hook,
            hook_bytes,
        }
    }
}

impl Model for MaskedModel {
    fn spec(&self) -> &ModelSpec {
        &self.plain.spec
    }

    fn stages(&self) -> &[StageInfo] {
        self.plain.model.stages()
    }

    /// The wrapped model's stage, then this hook's mask (before any hook of the pass, which
    /// sees what the locked model computes).
    fn run_stage(&self, stage: usize, xs: &Tensor, pass: &Pass<'_>) -> candle_core::Result<Tensor> {
        let ys = self.plain.model.run_stage(stage, xs, pass)?;
        self.hook.on_stage(stage, ys)
    }

    fn exit_stages(&self) -> &[usize] {
        self.plain.model.exit_stages()
    }

    fn run_exit(&self, exit: usize, xs: &Tensor, pass: &Pass<'_>) -> candle_core::Result<Tensor> {
        self.plain.model.run_exit(exit, xs, pass)
    }
}

impl Deployed for MaskedModel {
    fn logits(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.forward_t(images, false)?.detach())
    }

    fn model_bytes(&self) -> usize {
        self.plain.model_bytes() + self.hook_bytes
    }
}

/// Multipliers of a stage with `channels` channels: `rest` everywhere, `value` at `neurons`.
pub fn factors(channels: usize, neurons: &[usize], values: &[f32], rest: f32) -> Vec<f32> {
    let mut f = vec![rest; channels];
    for (&n, &v) in neurons.iter().zip(values) {
        if let Some(slot) = f.get_mut(n) {
            *slot = v;
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn stages() -> Vec<StageInfo> {
        vec![StageInfo::map("a", 3, 1), StageInfo::vector("b", 2)]
    }

    #[test]
    fn masks_channels_of_the_chosen_stage_and_rows() -> Result<()> {
        let dev = Device::Cpu;
        let hook = MaskHook::new(&stages(), &[(0, factors(3, &[1], &[0.0], 1.0))], &dev)?;
        let xs = Tensor::ones((4, 3, 2, 2), DType::F32, &dev)?;
        let all = hook.on_stage(0, xs.clone())?;
        let per_channel = all.sum((0, 2, 3))?.to_vec1::<f32>()?;
        assert_eq!(per_channel, vec![16.0, 0.0, 16.0]);
        assert_eq!(
            hook.on_stage(1, xs.clone())?
                .sum_all()?
                .to_scalar::<f32>()?,
            48.0
        );
        let half = hook.first_rows(1).on_stage(0, xs)?;
        let per_row = half.sum((1, 2, 3))?.to_vec1::<f32>()?;
        assert_eq!(per_row, vec![8.0, 12.0, 12.0, 12.0]);
        let flat = Tensor::ones((2, 3), DType::F32, &dev)?;
        assert_eq!(
            hook.on_stage(0, flat)?.to_vec2::<f32>()?,
            vec![vec![1.0, 0.0, 1.0]; 2]
        );
        assert!(MaskHook::new(&stages(), &[(1, vec![1.0; 3])], &dev).is_err());
        assert!(MaskHook::new(&stages(), &[(2, vec![1.0; 3])], &dev).is_err());
        Ok(())
    }
}
