//! Exit heads and early exit. A multi-exit network (Shallow-Deep Networks, Kaya et al. 2019)
//! has small classifiers after some of its stages; at inference an input stops at the first one
//! that is confident enough, so easy inputs cost less and how long a query takes reveals where
//! it exited.
//!
//! Head: global average pooling of the stage's map (nothing for a vector stage) and one linear
//! layer to the classes, under `exits.{k}.weight` / `exits.{k}.bias` (a PyTorch `ModuleList` of
//! `nn.Linear` named `exits`). [chosen] SDN reduces features with a mix of max and average
//! pooling to a small map before the linear layer; plain global average pooling keeps a head at
//! `C x classes` parameters on every architecture and is what "pooling + linear" reads as.

use candle_core::{D, Tensor, bail};

use super::{Model, Pass};

/// One exit head of a [`super::ModelSpec`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitSpec {
    /// Name of the stage whose output the head reads ([`super::StageInfo::name`]).
    pub after: String,
}

impl ExitSpec {
    /// A head after the stage named `stage`.
    pub fn after(stage: impl Into<String>) -> Self {
        Self {
            after: stage.into(),
        }
    }
}

/// What early-exit inference returns.
#[derive(Debug, Clone)]
pub struct EarlyExit {
    /// N x classes: each input's logits at the exit where it stopped.
    pub logits: Tensor,
    /// Where each input stopped: `k` for exit head `k`, the number of exit heads for the final
    /// output.
    pub exits: Vec<usize>,
}

/// See [`Model::forward_exits`].
pub(crate) fn forward_exits<M: Model + ?Sized>(
    model: &M,
    xs: &Tensor,
    pass: &Pass<'_>,
) -> candle_core::Result<Vec<Tensor>> {
    let exit_stages = model.exit_stages();
    let mut out = Vec::with_capacity(exit_stages.len() + 1);
    let mut ys = xs.clone();
    for stage in 0..model.stages().len() {
        ys = model.forward_range(stage..stage + 1, &ys, pass)?;
        for (k, _) in exit_stages.iter().enumerate().filter(|(_, s)| **s == stage) {
            out.push(model.run_exit(k, &ys, pass)?);
        }
    }
    out.push(ys);
    Ok(out)
}

/// See [`Model::forward_early_exit`].
pub(crate) fn forward_early_exit<M: Model + ?Sized>(
    model: &M,
    xs: &Tensor,
    threshold: f32,
) -> candle_core::Result<EarlyExit> {
    if !(threshold.is_finite() && (0.0..=1.0).contains(&threshold)) {
        bail!("the early-exit threshold must be a probability in [0, 1], got {threshold}")
    }
    let pass = Pass::new(false);
    let exit_stages = model.exit_stages();
    let n = xs.dim(0)?;
    // Rows still running (their index in `xs`), and the logits of those that stopped.
    let mut active: Vec<u32> = (0..n as u32).collect();
    let mut exits = vec![exit_stages.len(); n];
    let mut parts: Vec<(Vec<u32>, Tensor)> = Vec::new();
    let mut ys = xs.clone();
    for stage in 0..model.stages().len() {
        ys = model.run_stage(stage, &ys, &pass)?;
        for (k, _) in exit_stages.iter().enumerate().filter(|(_, s)| **s == stage) {
            let logits = model.run_exit(k, &ys, &pass)?;
            let confidence: Vec<f32> = candle_nn::ops::softmax_last_dim(&logits)?
                .max(D::Minus1)?
                .to_vec1()?;
            let (stop, go): (Vec<usize>, Vec<usize>) =
                (0..active.len()).partition(|&r| confidence[r] >= threshold);
            if stop.is_empty() {
                continue;
            }
            let stop_rows = rows(&stop, logits.device())?;
            parts.push((
                stop.iter().map(|&r| active[r]).collect(),
                logits.index_select(&stop_rows, 0)?,
            ));
            for &r in &stop {
                exits[active[r] as usize] = k;
            }
            if go.is_empty() {
                return Ok(EarlyExit {
                    logits: assemble(parts, n)?,
                    exits,
                });
            }
            ys = ys.index_select(&rows(&go, ys.device())?, 0)?;
            active = go.iter().map(|&r| active[r]).collect();
        }
    }
    parts.push((active, ys));
    Ok(EarlyExit {
        logits: assemble(parts, n)?,
        exits,
    })
}

/// `indices` as a u32 index tensor.
fn rows(indices: &[usize], device: &candle_core::Device) -> candle_core::Result<Tensor> {
    let v: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
    Tensor::from_vec(v, indices.len(), device)
}

/// Puts the logits of each group of rows back in the order of the input.
fn assemble(parts: Vec<(Vec<u32>, Tensor)>, n: usize) -> candle_core::Result<Tensor> {
    if let [(order, logits)] = parts.as_slice()
        && order.iter().enumerate().all(|(i, &r)| i as u32 == r)
    {
        return Ok(logits.clone());
    }
    let mut position = vec![0u32; n];
    let mut at = 0u32;
    let mut tensors = Vec::with_capacity(parts.len());
    for (order, logits) in parts {
        for r in order {
            position[r as usize] = at;
            at += 1;
        }
        tensors.push(logits);
    }
    let all = Tensor::cat(&tensors, 0)?;
    let index = Tensor::from_vec(position, n, all.device())?;
    all.index_select(&index, 0)
}
