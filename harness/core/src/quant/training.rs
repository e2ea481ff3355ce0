//! Quantization-aware training of a trained model, plain (PyTorch's x86 QAT recipe) or with
//! DivQAT's extraction defence (Khaled, de Magalhaes, Nicolescu, arXiv 2512.23948):
//!
//! `loss = CE(y, f_Q(x)) - alpha * min(KL(f_FP(x) || f_Q(x)), cap)`
//!
//! with `f_FP` the frozen full-precision model and `f_Q` the fake-quantized one being trained, so
//! that the quantized model's output distribution moves away from the full-precision one (what an
//! extractor collects is poisoned) while the cross-entropy keeps its top-1 accuracy. Our reading
//! of the paper, which gives the idea but not the formula: the KL divergence is the batch mean of
//! the per-image divergences of the softmax distributions at `temperature` (1 by default; no
//! T² factor, alpha absorbs it), capped after averaging, so that the loss stays bounded below
//! and the cap, once reached, stops the push (its gradient is zero there).
//!
//! Schedule (PyTorch's QAT tutorial): batch norms use their running statistics from epoch
//! `freeze_batch_norm_after`, observers stop from epoch `freeze_observers_after`, so the last
//! epochs train against the fixed ranges and statistics the deployment will use.

use std::sync::Arc;

use candle_core::{D, Device, Tensor};
use candle_nn::ops::{log_softmax, softmax};
use datasets::ImageSet;

use super::Qat;
use crate::protect::{Deployed, PlainModel};
use datasets::batch::Batch;

use crate::train::{Objective, StepLoss, TrainConfig, TrainOptions, TrainReport, train};
use crate::zoo::Pass;
use crate::{Model, Result};

/// When the quantization statistics stop moving, in 0-based epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreezeSchedule {
    /// Batch norms use running statistics from this epoch on.
    pub batch_norm_after: usize,
    /// Observers stop from this epoch on.
    pub observers_after: usize,
}

/// DivQAT's divergence term.
#[derive(Clone)]
pub struct Divergence {
    /// The frozen full-precision model.
    pub reference: PlainModel,
    /// Weight of the term (0 is plain QAT).
    pub alpha: f64,
    /// Largest divergence that still counts (nats).
    pub cap: f64,
    /// Softmax temperature of both distributions.
    pub temperature: f64,
}

/// Cross-entropy of the fake-quantized model, minus DivQAT's capped divergence when given.
pub struct QatObjective {
    qat: Arc<Qat>,
    divergence: Option<Divergence>,
}

impl QatObjective {
    /// The objective of training through `qat`.
    pub fn new(qat: Arc<Qat>, divergence: Option<Divergence>) -> Self {
        Self { qat, divergence }
    }
}

/// Mean over the batch of KL(softmax(p / t) || softmax(q / t)) for logits `p` and `q`.
pub fn mean_kl(p: &Tensor, q: &Tensor, temperature: f64) -> candle_core::Result<Tensor> {
    let (p, q) = ((p / temperature)?, (q / temperature)?);
    let log_p = log_softmax(&p, D::Minus1)?;
    let log_q = log_softmax(&q, D::Minus1)?;
    softmax(&p, D::Minus1)?
        .mul(&(log_p - log_q)?)?
        .sum(D::Minus1)?
        .mean_all()
}

impl Objective for QatObjective {
    fn loss(&self, model: &dyn Model, batch: &Batch) -> Result<StepLoss> {
        let n = model.stages().len();
        let pass = Pass::new(true).with_layer_hook(&*self.qat);
        let logits = model.forward_range(0..n, &batch.images, &pass)?;
        let ce = candle_nn::loss::cross_entropy(&logits, &batch.labels)?;
        let correct = crate::train::correct_count(&logits, &batch.labels)?;
        let loss = match &self.divergence {
            Some(d) if d.alpha > 0.0 => {
                let reference = d.reference.model.forward_t(&batch.images, false)?.detach();
                let kl = mean_kl(&reference, &logits, d.temperature)?;
                (ce - (kl.minimum(d.cap)? * d.alpha)?)?
            }
            _ => ce,
        };
        Ok(StepLoss {
            loss,
            correct: Some(correct),
        })
    }

    fn id(&self) -> String {
        match &self.divergence {
            Some(d) if d.alpha > 0.0 => format!(
                "divqat(alpha={},cap={},t={})",
                d.alpha, d.cap, d.temperature
            ),
            _ => "qat".into(),
        }
    }
}

/// Trains `model` (its weights change: pass a copy) through a new [`Qat`] hook on `set` with
/// `recipe`, freezing batch norm and observers on `schedule`; returns the hook, whose
/// quantizers now hold the deployment's parameters.
pub fn quantization_aware_training(
    model: &PlainModel,
    set: &ImageSet,
    recipe: &TrainConfig,
    schedule: FreezeSchedule,
    divergence: Option<Divergence>,
    progress: bool,
    device: &Device,
) -> Result<(Arc<Qat>, TrainReport)> {
    let qat = Arc::new(Qat::new());
    let objective = QatObjective::new(qat.clone(), divergence);
    let freeze = |epoch: usize| -> Result<()> {
        qat.freeze_batch_norm(epoch >= schedule.batch_norm_after);
        qat.freeze_observers(epoch >= schedule.observers_after);
        Ok(())
    };
    let opts = TrainOptions {
        progress,
        before_epoch: Some(&freeze),
        ..TrainOptions::default()
    };
    let report = train(
        &*model.model,
        &model.params,
        set,
        recipe,
        &objective,
        &opts,
        device,
    )?;
    Ok((qat, report))
}

/// A quantization-aware-trained model deployed with its quantizers frozen, in evaluation: in
/// float, what the int8 deployment computes (every layer's input and batch-norm-folded weight
/// on the int8 grid).
pub struct FakeQuantModel {
    /// The trained weights (float, batch norm not yet folded).
    pub model: PlainModel,
    /// The quantizers, frozen.
    pub qat: Arc<Qat>,
}

impl FakeQuantModel {
    /// Deploys `model` with `qat`, freezing every observer.
    pub fn new(model: PlainModel, qat: Arc<Qat>) -> Self {
        qat.freeze_observers(true);
        qat.freeze_batch_norm(true);
        Self { model, qat }
    }
}

impl FakeQuantModel {
    /// The weights a thief dumping the int8 deployment gets, in float: each quantized layer's
    /// weight dequantized (batch norm scale folded in), and each folded batch norm rewritten to
    /// add only the folded shift (`gamma = sqrt(running_var + eps)`, `running_mean` scaled by
    /// the fold factor), so that the plain model on them computes the deployment's layers
    /// except for the rounding of their inputs.
    pub fn dequantized(&self) -> Result<PlainModel> {
        use crate::quant::{Scheme, fake_quantize};
        let params = self.model.params.deep_copy()?;
        let folded = self.qat.folded_batch_norms();
        for (layer, q) in self.qat.layers() {
            let wname = format!("{layer}.weight");
            let Some(w) = params.get(&wname) else {
                continue;
            };
            let w = w.as_tensor().clone();
            let (scaled, factor) = match folded.get(&layer) {
                Some(bn) => {
                    let get = |leaf: &str| {
                        params
                            .get(&format!("{bn}.{leaf}"))
                            .map(|v| v.as_tensor().clone())
                            .ok_or_else(|| {
                                crate::Error::Mismatch(format!("no `{bn}.{leaf}` for `{layer}`"))
                            })
                    };
                    let (std, factor) =
                        super::qat::fold_factor(&get("weight")?, &get("running_var")?)?;
                    (
                        super::qat::scale_channels(&w, &factor)?,
                        Some((bn, std, factor)),
                    )
                }
                None => (w, None),
            };
            let dq = fake_quantize(&scaled, &q.weight.params(), Scheme::Weight.range())?;
            set(&params, &wname, &dq)?;
            if let Some((bn, std, factor)) = factor {
                let mean = params
                    .get(&format!("{bn}.running_mean"))
                    .map(|v| v.as_tensor().clone())
                    .ok_or_else(|| crate::Error::Mismatch(format!("no `{bn}.running_mean`")))?;
                set(&params, &format!("{bn}.weight"), &std)?;
                set(&params, &format!("{bn}.running_mean"), &mean.mul(&factor)?)?;
            }
        }
        PlainModel::build(self.model.spec.clone(), params)
    }
}

/// Overwrites the tensor `name` of `params` with `value` (same shape).
fn set(params: &crate::ParamStore, name: &str, value: &Tensor) -> Result<()> {
    let var = params
        .get(name)
        .ok_or_else(|| crate::Error::Mismatch(format!("no tensor `{name}`")))?;
    var.set(&value.to_dtype(var.dtype())?)?;
    Ok(())
}

impl Deployed for FakeQuantModel {
    fn logits(&self, images: &Tensor) -> Result<Tensor> {
        let n = self.model.model.stages().len();
        let pass = Pass::new(false).with_layer_hook(&*self.qat);
        Ok(self.model.model.forward_range(0..n, images, &pass)?)
    }

    /// The int8 deployment's size: one byte per convolution and linear weight plus a scale and
    /// a zero point (4 bytes each) per output channel; a batch norm folded into its convolution
    /// leaves a 4-byte bias per channel; everything else f32.
    fn model_bytes(&self) -> usize {
        let layers = self.qat.layers();
        let folded: std::collections::BTreeSet<String> =
            self.qat.folded_batch_norms().into_values().collect();
        let mut bytes = 0usize;
        for name in self.model.params.names() {
            let Some(t) = self.model.params.get(&name) else {
                continue;
            };
            let (prefix, leaf) = name.rsplit_once('.').unwrap_or(("", name.as_str()));
            let elems = t.elem_count();
            bytes += if leaf == "weight" && layers.contains_key(prefix) {
                elems + 8 * t.dims().first().copied().unwrap_or(1)
            } else if folded.contains(prefix) {
                if leaf == "bias" { 4 * elems } else { 0 }
            } else {
                t.dtype().size_in_bytes() * elems
            };
        }
        bytes
    }
}
