//! What an owner runs at inference time. Usually a zoo model, but a protection may wrap it (a
//! password hook, a quantised forward pass, layers spread over processes), so the harness times
//! and queries every deployment through this one trait.

use std::sync::Arc;

use candle_core::Tensor;

use crate::{Model, ModelSpec, ParamStore, Result};

/// A deployed classifier: normalised images in, logits out, in eval mode.
pub trait Deployed: Send + Sync {
    /// Logits (N x classes) for a batch of normalised images (N x C x H x W).
    fn logits(&self, images: &Tensor) -> Result<Tensor>;

    /// Bytes an owner ships to deploy it (weights plus any runtime state), for overhead rows.
    fn model_bytes(&self) -> usize;
}

/// A zoo model deployed as is.
#[derive(Clone)]
pub struct PlainModel {
    /// The architecture and its shape.
    pub spec: ModelSpec,
    /// The weights (shared with `model`).
    pub params: ParamStore,
    /// The network built on `params`.
    pub model: Arc<dyn Model>,
}

impl PlainModel {
    /// Builds `spec` on `params` (which may already hold trained weights).
    pub fn build(spec: ModelSpec, params: ParamStore) -> Result<Self> {
        let model: Arc<dyn Model> = Arc::from(crate::zoo::build(&spec, &params)?);
        Ok(Self {
            spec,
            params,
            model,
        })
    }

    /// An independent copy (own variables), for attacks that modify weights.
    pub fn deep_copy(&self) -> Result<Self> {
        Self::build(self.spec.clone(), self.params.deep_copy()?)
    }
}

impl Deployed for PlainModel {
    fn logits(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.model.forward_t(images, false)?.detach())
    }

    fn model_bytes(&self) -> usize {
        self.params
            .trainable()
            .iter()
            .map(|(_, v)| v.elem_count() * v.dtype().size_in_bytes())
            .chain(
                self.params
                    .buffers()
                    .iter()
                    .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes()),
            )
            .sum()
    }
}
