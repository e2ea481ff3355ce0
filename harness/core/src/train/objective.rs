//! What a training step minimises. Plain classification uses [`CrossEntropy`]; protections that
//! train with an unusual loss (locking with random labels, divergence terms, denoising) bring
//! their own [`Objective`] and reuse the whole loop: optimiser, schedule, checkpoints, progress.

use candle_core::{D, Tensor};
use datasets::batch::Batch;

use crate::{Model, Result};

/// The loss of one training batch, and how many of its images the model got right (top-1) when
/// that is meaningful, for the progress display.
pub struct StepLoss {
    /// Scalar loss to back-propagate.
    pub loss: Tensor,
    /// Correct top-1 predictions in the batch, if the objective is a classification.
    pub correct: Option<usize>,
}

/// A training objective: maps a model and a batch to a scalar loss.
pub trait Objective: Send + Sync {
    /// The loss of `batch` with the model in training mode.
    fn loss(&self, model: &dyn Model, batch: &Batch) -> Result<StepLoss>;

    /// A stable id recorded with the run (and in checkpoint fingerprints).
    fn id(&self) -> String;
}

/// Mean cross-entropy of the logits against the batch labels.
#[derive(Debug, Clone, Copy, Default)]
pub struct CrossEntropy;

impl Objective for CrossEntropy {
    fn loss(&self, model: &dyn Model, batch: &Batch) -> Result<StepLoss> {
        let logits = model.forward_t(&batch.images, true)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &batch.labels)?;
        let correct = correct_count(&logits, &batch.labels)?;
        Ok(StepLoss {
            loss,
            correct: Some(correct),
        })
    }

    fn id(&self) -> String {
        "cross-entropy".into()
    }
}

/// Number of rows whose arg-max equals the label.
pub fn correct_count(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let pred = logits.detach().argmax(D::Minus1)?;
    let hits = pred
        .eq(labels)?
        .to_dtype(candle_core::DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(hits as usize)
}
