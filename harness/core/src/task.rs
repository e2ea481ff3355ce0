//! What a model is for: classification (labels, accuracy) or denoising (clean images, PSNR).
//! The matrix runner and protections that search with a loss (selective encryption's PSS) read
//! it to pick the objective and the measure, so a denoiser is never judged by a top-1 accuracy.

use serde::{Deserialize, Serialize};

/// The task a victim was trained for.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "task")]
pub enum Task {
    /// Image classification, trained with cross-entropy on normalised images.
    #[default]
    Classification,
    /// Gaussian denoising, trained with [`crate::train::Denoise`] on unnormalised [0,1] images.
    Denoising {
        /// Noise standard deviation in [0,1] pixel units (DnCNN's sigma 50 is 50/255).
        sigma: f64,
    },
}

impl Task {
    /// The noise level of a denoising task, `None` for classification.
    pub fn noise_sigma(&self) -> Option<f64> {
        match self {
            Task::Classification => None,
            Task::Denoising { sigma } => Some(*sigma),
        }
    }
}
