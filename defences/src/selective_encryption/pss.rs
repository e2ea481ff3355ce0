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
//!
//! Denoisers (DnCNN, the paper's second task): the gate objective's data term is the victim's
//! own denoising loss instead of cross-entropy. Each step corrupts the clean batch (pixels in
//! [0,1], no normalisation, as the victim was trained) with Gaussian noise of the victim's sigma,
//! drawn from a seeded stream per (layer, epoch, step), and measures the gated model's output
//! against the clean batch. Choice: that data term is DnCNN's own loss, 1/(2N) sum_i ||f(y_i) -
//! x_i||^2 (Zhang et al. 2017; [`denoise_loss`], the victim's training loss), i.e. the pixel MSE
//! x (C x H x W) / 2: the paper keeps lambda = 1e-4 across tasks, so the data term is taken at
//! the scale of the task's published loss rather than the per-pixel mean, which would be about a
//! thousand times smaller and leave the gates to the L0 pressure alone. Every conv layer is
//! eligible, the first (in_channels x 64 kernels) and the last (64 x in_channels) included.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use datasets::ImageSet;
use datasets::batch::{BatchConfig, epoch_batches};
use datasets::catalog::Normalization;
use harness_core::train::denoise::{denoise_loss, gaussian_noise, keyed_rng};
use harness_core::{Error, ModelSpec, ParamStore, Result, Task};
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
    /// The victim's task: cross-entropy on labels, or denoising at the victim's noise level.
    pub task: Task,
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
            task: Task::Classification,
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
        if let Some(sigma) = self.task.noise_sigma() {
            harness_core::train::denoise::check_sigma(sigma)?;
        }
        Ok(())
    }
}

/// log_alpha of every kernel of each of `layers` (tensor names of conv weights of `params`,
/// a trained `spec` classifier or denoiser, as `cfg.task` says), trained one layer at a time on
/// `data` (a denoiser's data comes without normalisation).
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
    match cfg.task {
        Task::Classification if !spec.arch.is_classifier() => {
            return Err(Error::Config(format!(
                "PSS trains gates with cross-entropy and needs a classifier; `{}` is not one (give PSS the denoising task, or use a weight-only ranking: random, l1, mean)",
                spec.arch
            )));
        }
        Task::Denoising { .. } if spec.arch.is_classifier() => {
            return Err(Error::Config(format!(
                "PSS was given the denoising task, but `{}` is a classifier",
                spec.arch
            )));
        }
        _ => {}
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
            for (step, batch) in
                epoch_batches(&set, &batches, seed, epoch as u64, device)?.enumerate()
            {
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
                let data_loss = match cfg.task {
                    Task::Classification => {
                        let logits = model.forward_t(&batch.images, false)?;
                        candle_nn::loss::cross_entropy(&logits, &batch.labels)?
                    }
                    Task::Denoising { sigma } => {
                        let mut noise_rng = keyed_rng(seed, b"pss-nois", &[li, epoch, step]);
                        let noise =
                            gaussian_noise(batch.images.dims(), sigma, &mut noise_rng, device)?;
                        denoise_loss(&*model, &batch.images, &noise, false)?
                    }
                };
                let open = sigmoid(&(log_alpha.as_tensor() - open_shift)?)?.sum_all()?;
                let loss = (data_loss + (open * cfg.lambda)?)?;
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
