//! `qat`: plain quantization-aware training of the trained victim with PyTorch's x86 recipe
//! (`harness_core::quant`), the baseline DivQAT is compared with. The owner deploys the
//! quantized model; a thief who takes the deployment's weights gets them dequantized (int8
//! weights with the batch norm folded in, as a dumped int8 file gives them), in float.
//!
//! Choices: QAT fine-tunes the victim for `epochs` (default 4) with SGD (momentum 0.9, weight
//! decay 5e-4, cosine schedule) at `lr` (default 0.01, a tenth of a CIFAR training rate, as QAT
//! fine-tuning usually is); batch norm freezes from epoch `freeze_bn_after` (default 2) and the
//! observers from epoch `freeze_observers_after` (default 3), the order and proportions of
//! PyTorch's QAT tutorial (BN after 3 of 8 epochs, observers after 4), so the last epoch trains
//! against the statistics the deployment uses.
//!
//! The owner deploys the int8 model (`harness_core::quant::Int8Model`: integer convolutions and
//! linear layers, batch norm folded; `int8-agreement-owner-images` is its top-1 agreement with
//! the fake-quantized model it comes from). Its dot products use AVX2 where present, but the
//! patch gathering around them does not yet, so its latency is not yet int8's speed.

use std::sync::Arc;

use harness_core::protect::{
    Capabilities, Defence, DefenceContext, Deployed, Measure, PlainModel, Protected, RegistryEntry,
    StolenArtifact, Theft, Victim, check, settings,
};
use harness_core::quant::{
    Divergence, FakeQuantModel, FreezeSchedule, Int8Model, mean_kl, quantization_aware_training,
};
use harness_core::seeded::derive_seed;
use harness_core::train::{SgdConfig, TrainConfig};
use harness_core::{Error, Result, Task};
use serde::Deserialize;

/// Settings of `qat`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QatConfig {
    /// Epochs of quantization-aware training.
    pub epochs: usize,
    /// Learning rate.
    pub lr: f64,
    /// Batch size; the victim's when absent.
    pub batch_size: Option<usize>,
    /// Batch norms use running statistics from this 0-based epoch.
    pub freeze_bn_after: usize,
    /// Observers stop from this 0-based epoch.
    pub freeze_observers_after: usize,
    /// Owner images the `divergence-owner-images` measure averages over.
    pub eval_images: usize,
}

impl Default for QatConfig {
    fn default() -> Self {
        Self {
            epochs: 4,
            lr: 0.01,
            batch_size: None,
            freeze_bn_after: 2,
            freeze_observers_after: 3,
            eval_images: 1000,
        }
    }
}

impl QatConfig {
    /// Checks every numeric setting.
    pub fn check(&self) -> Result<()> {
        check("epochs", self.epochs, 1..)?;
        check("lr", self.lr, harness_core::protect::above(0.0))?;
        harness_core::protect::check_opt("batch_size", self.batch_size, 1..)?;
        check("freeze_bn_after", self.freeze_bn_after, 0..)?;
        check("freeze_observers_after", self.freeze_observers_after, 0..)?;
        check("eval_images", self.eval_images, 1..)?;
        Ok(())
    }
}

/// Plain quantization-aware training.
#[derive(Debug)]
pub struct Qat {
    config: QatConfig,
}

/// The registry entry of `qat`: its id (declared here only), summary and constructor.
pub const ENTRY: RegistryEntry<dyn Defence> = RegistryEntry {
    id: "qat",
    summary: "int8 quantization-aware training (PyTorch's x86 recipe), the DivQAT baseline",
    build,
};

/// Builds [`Qat`] from its settings.
pub fn build(table: &toml::Table) -> Result<Box<dyn Defence>> {
    let config: QatConfig = settings(table)?;
    config.check()?;
    Ok(Box::new(Qat { config }))
}

impl Defence for Qat {
    fn capabilities(&self) -> Capabilities {
        quantized_capabilities()
    }

    fn protect(&self, ctx: &DefenceContext<'_>, victim: &Victim) -> Result<Protected> {
        protect_quantized(&self.config, None, ctx, victim)
    }
}

/// What a quantized deployment exposes: its whole (dequantized) weights.
pub fn quantized_capabilities() -> Capabilities {
    Capabilities {
        theft: Theft::Whole,
        ..Capabilities::default()
    }
}

/// Trains a copy of the victim through fake quantization (with DivQAT's `divergence` when
/// given) and deploys it; shared by `qat` and `divqat`.
pub fn protect_quantized(
    cfg: &QatConfig,
    divergence: Option<(f64, f64, f64)>,
    ctx: &DefenceContext<'_>,
    victim: &Victim,
) -> Result<Protected> {
    if victim.task != Task::Classification {
        return Err(Error::Unsupported(format!(
            "quantization-aware training here trains classifiers; `{}` is a denoiser",
            victim.model.spec.arch
        )));
    }
    let model = victim.model.deep_copy()?;
    let recipe = TrainConfig {
        epochs: cfg.epochs,
        batch_size: cfg.batch_size.unwrap_or(victim.train.batch_size),
        sgd: SgdConfig {
            lr: cfg.lr,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            max_grad_norm: None,
            adam: None,
        },
        schedule: harness_core::train::Schedule::default(),
        normalization: Some(ctx.normalization),
        seed: derive_seed(ctx.seed, "qat/train"),
        ..victim.train.clone()
    };
    let divergence = divergence.map(|(alpha, cap, temperature)| Divergence {
        reference: victim.model.clone(),
        alpha,
        cap,
        temperature,
    });
    let schedule = FreezeSchedule {
        batch_norm_after: cfg.freeze_bn_after,
        observers_after: cfg.freeze_observers_after,
    };
    let (qat, report) = quantization_aware_training(
        &model,
        ctx.owner_data,
        &recipe,
        schedule,
        divergence,
        ctx.progress,
        ctx.device,
    )?;
    let fake = FakeQuantModel::new(model, qat);
    let stolen = fake.dequantized()?;
    let deployed = Int8Model::convert(&fake)?;
    let (divergence, agreement) = owner_checks(cfg, ctx, &victim.model, &fake, &deployed)?;
    let mut measures = vec![
        Measure::lower("qat-epochs", report.history.len() as f64),
        Measure::timing("qat-seconds", report.train_seconds),
        Measure::higher("divergence-owner-images", divergence),
        Measure::higher("int8-agreement-owner-images", agreement),
    ];
    if let Some(last) = report.history.last() {
        measures.push(Measure::lower("qat-train-loss", last.train_loss));
    }
    let spec = stolen.spec.clone();
    Ok(Protected {
        owner: Arc::new(deployed) as Arc<dyn Deployed>,
        levels: Vec::new(),
        stolen: Some(StolenArtifact::plain(spec, stolen.params)),
        measures,
        verifier: None,
    })
}

/// On up to `eval_images` of the owner's images (the test set is the harness's, not the
/// defence's): the mean KL divergence of the fake-quantized model's answers from the
/// full-precision model's, and the top-1 agreement of the int8 deployment with the
/// fake-quantized model it was converted from.
fn owner_checks(
    cfg: &QatConfig,
    ctx: &DefenceContext<'_>,
    reference: &PlainModel,
    fake: &FakeQuantModel,
    int8: &Int8Model,
) -> Result<(f64, f64)> {
    let n = ctx.owner_data.len().min(cfg.eval_images);
    let (mut kl_sum, mut same, mut seen) = (0.0f64, 0usize, 0usize);
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(256) {
        let xs = datasets::batch::to_tensor(
            ctx.owner_data,
            chunk,
            Some(&ctx.normalization),
            ctx.device,
        )?;
        let p = reference.logits(&xs)?;
        let q = fake.logits(&xs)?;
        let kl = mean_kl(&p, &q, 1.0)?.to_scalar::<f32>()?;
        kl_sum += f64::from(kl) * chunk.len() as f64;
        let a = q.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
        let b = int8
            .logits(&xs)?
            .argmax(candle_core::D::Minus1)?
            .to_vec1::<u32>()?;
        same += a.iter().zip(&b).filter(|(x, y)| x == y).count();
        seen += chunk.len();
    }
    Ok(if seen == 0 {
        (0.0, 1.0)
    } else {
        (kl_sum / seen as f64, same as f64 / seen as f64)
    })
}
