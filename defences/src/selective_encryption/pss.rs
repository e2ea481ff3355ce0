//! PSS, the probabilistic selection strategy: the importance of every kernel of a layer, learnt
//! with hard-concrete L0 gates (Louizos et al. 2018) on the trained, frozen model.
//!
//! Each (out, in) kernel of the layer gets a gate z = min(1, max(0, s (zeta - gamma) + gamma)),
//! s = sigmoid((log u - log(1 - u) + log_alpha) / beta), u ~ U(0, 1), with beta = 2/3 and the
//! stretch (gamma, zeta) = (-0.1, 1.1). With every weight frozen and the other layers' gates
//! pinned open, only this layer's log_alpha is trained to minimise cross-entropy + lambda x the
//! expected number of open gates, sum sigmoid(log_alpha - beta log(-gamma / zeta)), lambda = 1e-4.
//! Gates that stay open under that pressure mark important kernels; kernels rank by log_alpha.
//!
//! The gated forward pass builds the zoo model on plain tensors (`VarBuilder::from_tensors`):
//! every stored tensor detached, and this layer's weight replaced by `w x z` computed from the
//! log_alpha variable, so back-propagation reaches log_alpha and nothing else. The model is
//! rebuilt each step (it only gathers tensors), since z is resampled.
//!
//! Choice: log_alpha starts at 2 for every kernel (gates mostly open, so the network under
//! gating performs close to the trained one and the cross-entropy gradient measures what closing
//! each kernel costs; the paper does not give its initialisation). Choice: batch norm runs in
//! eval mode (the model is frozen, running statistics included). Choice: no augmentation, and an
//! optional cap on the images per epoch (`max_images`, a class-balanced seeded subset) so the
//! search fits a CPU; the paper trains 130 epochs with SGD lr 0.1 Nesterov, batch 150: here the
//! epochs are a setting, recorded in the results as `pss-epochs`.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use datasets::ImageSet;
use datasets::batch::{BatchConfig, epoch_batches};
use datasets::catalog::Normalization;
use harness_core::{Error, ModelSpec, ParamStore, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::ranking::Importance;

/// Hard-concrete temperature.
const BETA: f64 = 2.0 / 3.0;
/// Lower end of the stretch interval.
const GAMMA: f64 = -0.1;
/// Upper end of the stretch interval.
const ZETA: f64 = 1.1;
/// Keeps u away from 0 and 1 (log of 0).
const EPS: f32 = 1e-6;

/// Settings of the gate training.
#[derive(Debug, Clone, PartialEq)]
pub struct PssConfig {
    /// Passes over the (capped) data per layer.
    pub epochs: usize,
    /// Images per step (paper: 150).
    pub batch_size: usize,
    /// SGD learning rate on log_alpha (paper: 0.1, Nesterov momentum 0.9).
    pub lr: f64,
    /// Images per epoch at most (class-balanced seeded subset); 0 = all.
    pub max_images: usize,
    /// Weight of the expected number of open gates (paper: 1e-4).
    pub lambda: f64,
    /// Initial log_alpha of every gate.
    pub init_log_alpha: f64,
}

impl Default for PssConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            batch_size: 150,
            lr: 0.1,
            max_images: 2048,
            lambda: 1e-4,
            init_log_alpha: 2.0,
        }
    }
}

impl PssConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(Error::Config(
                "PSS needs at least one epoch and a batch size of at least 1".into(),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lambda.is_finite() && self.lambda >= 0.0)
        {
            return Err(Error::Config(format!(
                "PSS learning rate must be positive and lambda non-negative (got {} and {})",
                self.lr, self.lambda
            )));
        }
        Ok(())
    }
}

/// log_alpha of every kernel of each of `layers` (tensor names of conv weights of `params`,
/// a trained `spec` classifier), trained one layer at a time on `data`.
#[allow(clippy::too_many_arguments)]
pub fn pss_importance(
    spec: &ModelSpec,
    params: &ParamStore,
    layers: &[String],
    data: &ImageSet,
    normalization: Option<&Normalization>,
    cfg: &PssConfig,
    seed: u64,
    device: &Device,
    progress: bool,
) -> Result<Importance> {
    cfg.validate()?;
    if !spec.arch.is_classifier() {
        return Err(Error::Config(format!(
            "PSS trains gates with cross-entropy and needs a classifier; `{}` is not one (use a weight-only ranking: random, l1, mean)",
            spec.arch
        )));
    }
    let set = if cfg.max_images > 0 && cfg.max_images < data.len() {
        data.select(&datasets::split::stratified_subset(
            data,
            cfg.max_images,
            seed,
        ))
    } else {
        data.clone()
    };
    let base: HashMap<String, Tensor> = params
        .names()
        .into_iter()
        .filter_map(|n| params.get(&n).map(|v| (n, v.as_tensor().detach())))
        .collect();
    let batches = BatchConfig {
        batch_size: cfg.batch_size,
        shuffle: true,
        drop_last: false,
        augment: None,
        normalization: normalization.copied(),
    };
    let mut out = Importance::new();
    for (li, name) in layers.iter().enumerate() {
        let w = base
            .get(name)
            .ok_or_else(|| Error::Config(format!("the model has no tensor `{name}`")))?
            .clone();
        let (o, i, _, _) = w.dims4()?;
        let gates = o * i;
        let log_alpha = Var::from_tensor(
            &Tensor::full(cfg.init_log_alpha as f32, (o, i, 1, 1), device)?.to_dtype(DType::F32)?,
        )?;
        let mut velocity = Tensor::zeros((o, i, 1, 1), DType::F32, device)?;
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&(li as u64).to_le_bytes());
        key[16..].copy_from_slice(b"protbench-pss-u!");
        let mut rng = ChaCha20Rng::from_seed(key);
        let open_shift = BETA * (-GAMMA / ZETA).ln();
        for epoch in 0..cfg.epochs {
            let mut loss_sum = 0.0;
            let mut steps = 0usize;
            for batch in epoch_batches(&set, &batches, seed, epoch as u64, device)? {
                let batch = batch?;
                let noise: Vec<f32> = (0..gates)
                    .map(|_| {
                        let u = rng.random_range(EPS..1.0 - EPS);
                        u.ln() - (1.0 - u).ln()
                    })
                    .collect();
                let noise = Tensor::from_vec(noise, (o, i, 1, 1), device)?;
                let s = sigmoid(&((log_alpha.as_tensor() + noise)? / BETA)?)?;
                let z = s.affine(ZETA - GAMMA, GAMMA)?.clamp(0f32, 1f32)?;
                let mut tensors = base.clone();
                tensors.insert(name.clone(), w.broadcast_mul(&z)?);
                let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
                let model = harness_core::zoo::build_with(spec, vb)?;
                let logits = model.forward_t(&batch.images, false)?;
                let ce = candle_nn::loss::cross_entropy(&logits, &batch.labels)?;
                let open = sigmoid(&(log_alpha.as_tensor() - open_shift)?)?.sum_all()?;
                let loss = (ce + (open * cfg.lambda)?)?;
                let grads = loss.backward()?;
                let g = grads.get(log_alpha.as_tensor()).ok_or_else(|| {
                    Error::Config(format!("no gradient reaches the gates of `{name}`"))
                })?;
                // SGD with Nesterov momentum 0.9, as torch.optim.SGD.
                velocity = ((velocity * 0.9)? + g)?;
                let step = (g + (&velocity * 0.9)?)?;
                log_alpha.set(&(log_alpha.as_tensor() - (step * cfg.lr)?)?)?;
                loss_sum += loss.to_scalar::<f32>()? as f64;
                steps += 1;
            }
            if progress {
                eprintln!(
                    "pss: {name} ({gates} kernels) epoch {}/{}: loss {:.4}",
                    epoch + 1,
                    cfg.epochs,
                    loss_sum / steps.max(1) as f64
                );
            }
        }
        let scores = log_alpha.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        out.insert(name.clone(), scores);
    }
    Ok(out)
}

/// sigmoid(x) = 1 / (1 + exp(-x)) from differentiable primitives.
fn sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}
