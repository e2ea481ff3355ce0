//! Evaluation of classifiers: top-1 / top-5 accuracy and loss, and the predictions themselves
//! (fidelity between a victim and a stolen copy compares predictions).

use candle_core::{D, DType, Device, Tensor};
use datasets::ImageSet;
use datasets::catalog::Normalization;

use crate::{Model, Result};

/// Accuracy and loss of a classifier on a labelled set.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalReport {
    /// Fraction of images whose highest logit is the label (0..1).
    pub top1: f64,
    /// Fraction of images whose label is among the five highest logits (top-k for k = classes
    /// when there are fewer than five classes).
    pub top5: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Images evaluated.
    pub images: usize,
    /// Wall time of the pass.
    pub seconds: f64,
}

/// Runs `model` in eval mode over `set` and returns its logits, N x classes, in set order.
pub fn logits(
    model: &dyn Model,
    set: &ImageSet,
    normalization: Option<&Normalization>,
    batch_size: usize,
    device: &Device,
) -> Result<Tensor> {
    if batch_size == 0 {
        return Err(crate::Error::Config("batch size must be at least 1".into()));
    }
    let indices: Vec<usize> = (0..set.len()).collect();
    let mut outs = Vec::new();
    for chunk in indices.chunks(batch_size) {
        let xs = datasets::batch::to_tensor(set, chunk, normalization, device)?;
        outs.push(model.forward_t(&xs, false)?.detach());
    }
    if outs.is_empty() {
        return Err(crate::Error::Config(
            "cannot evaluate on an empty set".into(),
        ));
    }
    Ok(Tensor::cat(&outs, 0)?)
}

/// Top-1 predictions of `model` on `set`, in set order.
pub fn predict(
    model: &dyn Model,
    set: &ImageSet,
    normalization: Option<&Normalization>,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<u32>> {
    let logits = logits(model, set, normalization, batch_size, device)?;
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}

/// Evaluates a classifier: accuracy, top-5 accuracy and mean cross-entropy.
pub fn evaluate(
    model: &dyn Model,
    set: &ImageSet,
    normalization: Option<&Normalization>,
    batch_size: usize,
    device: &Device,
) -> Result<EvalReport> {
    let start = std::time::Instant::now();
    let logits = logits(model, set, normalization, batch_size, device)?;
    let labels = Tensor::new(set.labels.as_slice(), device)?;
    let (top1, top5) = topk_accuracy(&logits, &labels)?;
    let loss = candle_nn::loss::cross_entropy(&logits, &labels)?.to_scalar::<f32>()? as f64;
    Ok(EvalReport {
        top1,
        top5,
        loss,
        images: set.len(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Top-1 and top-5 accuracy of `logits` (N x K) against `labels` (N, u32). Ties and NaN count
/// against the label: an image is top-k correct only when fewer than k other classes score at
/// least as high as its label, so a model that outputs constant (or NaN) logits scores zero, never
/// a perfect accuracy.
pub fn topk_accuracy(logits: &Tensor, labels: &Tensor) -> Result<(f64, f64)> {
    let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let labels = labels.to_vec1::<u32>()?;
    if rows.is_empty() || rows.len() != labels.len() {
        return Err(crate::Error::Config(format!(
            "{} logit rows for {} labels",
            rows.len(),
            labels.len()
        )));
    }
    let k5 = rows[0].len().min(5);
    let (mut c1, mut c5) = (0usize, 0usize);
    for (row, &label) in rows.iter().zip(&labels) {
        let Some(&target) = row.get(label as usize) else {
            return Err(crate::Error::Config(format!(
                "label {label} is out of range for {} logits",
                row.len()
            )));
        };
        if target.is_nan() {
            continue;
        }
        let rivals = row
            .iter()
            .enumerate()
            .filter(|&(j, &v)| j != label as usize && (v >= target || v.is_nan()))
            .count();
        c1 += usize::from(rivals < 1);
        c5 += usize::from(rivals < k5);
    }
    let n = rows.len() as f64;
    Ok((c1 as f64 / n, c5 as f64 / n))
}

/// Fraction of positions where two prediction lists agree (fidelity of a copy to its victim).
pub fn agreement(a: &[u32], b: &[u32]) -> f64 {
    if a.is_empty() || a.len() != b.len() {
        return 0.0;
    }
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_counts_ties_against_the_label() {
        let logits = Tensor::new(
            &[
                [0.9f32, 0.1, 0.0, 0.0, 0.0, 0.0],
                [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],
                [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],
                [0.5, 0.5, 0.0, 0.0, 0.0, 0.0],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let labels = Tensor::new(&[0u32, 0, 5, 1], &Device::Cpu).unwrap();
        let (top1, top5) = topk_accuracy(&logits, &labels).unwrap();
        // Row 0 right; row 1 second; row 2 sixth; row 3 tied first (counts as wrong for top-1).
        assert!((top1 - 0.25).abs() < 1e-12, "{top1}");
        assert!((top5 - 0.75).abs() < 1e-12, "{top5}");
    }

    #[test]
    fn constant_or_nan_logits_score_zero() {
        let labels = Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap();
        let flat = Tensor::zeros((3, 10), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(topk_accuracy(&flat, &labels).unwrap(), (0.0, 0.0));
        let nan = Tensor::full(f32::NAN, (3, 10), &Device::Cpu).unwrap();
        assert_eq!(topk_accuracy(&nan, &labels).unwrap(), (0.0, 0.0));
    }

    #[test]
    fn agreement_is_a_fraction() {
        assert_eq!(agreement(&[1, 2, 3, 4], &[1, 2, 0, 4]), 0.75);
        assert_eq!(agreement(&[], &[]), 0.0);
    }
}
