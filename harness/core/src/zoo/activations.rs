//! Neuron ranking: the mean activation of every channel (conv stages) or unit (pooled stages)
//! of every stage over a few hundred clean images. EdgePro draws its authorised neurons from the
//! top of this ranking; the attacks on it rank the same way on their own images, so the ranking
//! lives here, beside the stages it reads.

use std::sync::Mutex;

use super::StageHook;
use crate::{Error, Model, Result};
use candle_core::{DType, Device, Tensor};
use datasets::ImageSet;
use datasets::catalog::Normalization;

/// Sums activations per stage and channel over the images it sees.
struct Recorder {
    sums: Mutex<Vec<Vec<f64>>>,
}

impl StageHook for Recorder {
    fn on_stage(&self, stage: usize, xs: Tensor) -> candle_core::Result<Tensor> {
        // Per-image mean over the spatial positions, summed over the batch.
        let per_channel = match xs.rank() {
            4 => {
                let (_, _, h, w) = xs.dims4()?;
                (xs.to_dtype(DType::F32)?.sum((0, 2, 3))? / (h * w) as f64)?
            }
            2 => xs.to_dtype(DType::F32)?.sum(0)?,
            r => candle_core::bail!("stage {stage}: cannot rank a rank-{r} activation"),
        };
        let v = per_channel.to_vec1::<f32>()?;
        let mut sums = self
            .sums
            .lock()
            .map_err(|_| candle_core::Error::Msg("activation recorder poisoned".into()))?;
        if sums.len() <= stage {
            sums.resize(stage + 1, Vec::new());
        }
        let slot = &mut sums[stage];
        if slot.is_empty() {
            slot.resize(v.len(), 0.0);
        }
        for (s, x) in slot.iter_mut().zip(v) {
            *s += f64::from(x);
        }
        Ok(xs)
    }
}

/// Mean activation of every channel of every stage of `model` (eval mode) over the images of
/// `set` at `indices`: one vector per stage of [`Model::stages`], one entry per channel.
///
/// Choice: the mean of the activations themselves, signed (stage outputs after a ReLU are
/// non-negative; MobileNetV2's residual outputs are not), averaged over images and spatial
/// positions: the "mean activation" the paper ranks by. The authors' script sums only the
/// diagonal positions of each map (`out[g][m][m]`), an indexing slip we do not copy.
pub fn mean_activations(
    model: &dyn Model,
    set: &ImageSet,
    indices: &[usize],
    normalization: Option<&Normalization>,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<Vec<f64>>> {
    if indices.is_empty() {
        return Err(Error::Config("ranking needs at least one image".into()));
    }
    let stages = model.stages();
    if stages.is_empty() {
        return Err(Error::Config(format!(
            "`{}` has no stages to rank",
            model.spec().arch
        )));
    }
    let recorder = Recorder {
        sums: Mutex::new(vec![Vec::new(); stages.len()]),
    };
    for chunk in indices.chunks(batch_size.max(1)) {
        let xs = datasets::batch::to_tensor(set, chunk, normalization, device)?;
        model.forward_hooked(&xs, false, &recorder)?;
    }
    let sums = recorder
        .sums
        .into_inner()
        .map_err(|_| Error::Config("activation recorder poisoned".into()))?;
    let n = indices.len() as f64;
    Ok(sums
        .into_iter()
        .map(|s| s.into_iter().map(|x| x / n).collect())
        .collect())
}

/// Channel indices by decreasing score (ties: lower index first; NaN last).
pub fn rank(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (scores[a], scores[b]);
        match (x.is_nan(), y.is_nan()) {
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ => y.total_cmp(&x).then(a.cmp(&b)),
        }
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_decreasing_score() {
        assert_eq!(rank(&[0.1, 3.0, f64::NAN, 3.0, -1.0]), vec![1, 3, 0, 4, 2]);
        assert!(rank(&[]).is_empty());
    }
}
