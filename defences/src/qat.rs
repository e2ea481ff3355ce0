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
//! linear layers, batch norm folded). On the harness's test set ([`QuantizedCheck`]) the runner
//! records `fake-quant-accuracy`, `int8-agreement` (top-1 agreement of the int8 deployment with
//! the fake-quantized model it was converted from), `int8-accuracy-change` (int8 minus
//! fake-quant accuracy) and `divergence` (mean KL of the quantized model's answers from the f32
//! victim's, what DivQAT raises).

use std::sync::Arc;

use candle_core::Device;
use datasets::ImageSet;
use datasets::catalog::Normalization;
use harness_core::eval::agreement;
use harness_core::protect::{
    Capabilities, Defence, DefenceContext, Deployed, Measure, PlainModel, Protected, RegistryEntry,
    StolenArtifact, TestSetCheck, Theft, Victim, check, settings,
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
}

impl Default for QatConfig {
    fn default() -> Self {
        Self {
            epochs: 4,
            lr: 0.01,
            batch_size: None,
            freeze_bn_after: 2,
            freeze_observers_after: 3,
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

/// What a quantized deployment exposes: its whole (dequantized) weights. Quantization-aware
/// training here trains on labels, so denoisers are refused when the matrix is planned.
pub fn quantized_capabilities() -> Capabilities {
    Capabilities {
        theft: Theft::Whole,
        classifiers_only: true,
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
    let fake = Arc::new(FakeQuantModel::new(model, qat));
    let stolen = fake.dequantized()?;
    let deployed = Int8Model::convert(&fake)?;
    let mut measures = vec![
        Measure::lower("qat-epochs", report.history.len() as f64),
        Measure::timing("qat-seconds", report.train_seconds),
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
        test_set_check: Some(Arc::new(QuantizedCheck {
            reference: victim.model.clone(),
            fake,
        })),
    })
}

/// What the runner measures of a quantized deployment on the test set (see the module docs).
pub struct QuantizedCheck {
    /// The full-precision victim.
    pub reference: PlainModel,
    /// The fake-quantized model the int8 deployment was converted from.
    pub fake: Arc<FakeQuantModel>,
}

/// Images per forward of the test-set check.
const CHECK_BATCH: usize = 256;

impl TestSetCheck for QuantizedCheck {
    fn measure(
        &self,
        test: &ImageSet,
        normalization: &Normalization,
        owner_predictions: &[u32],
        device: &Device,
    ) -> Result<Vec<Measure>> {
        if owner_predictions.len() != test.len() {
            return Err(Error::Mismatch(format!(
                "{} owner predictions for {} test images",
                owner_predictions.len(),
                test.len()
            )));
        }
        let (mut kl_sum, mut fake_predictions) = (0.0f64, Vec::with_capacity(test.len()));
        let idx: Vec<usize> = (0..test.len()).collect();
        for chunk in idx.chunks(CHECK_BATCH) {
            let xs = datasets::batch::to_tensor(test, chunk, Some(normalization), device)?;
            let p = self.reference.logits(&xs)?;
            let q = self.fake.logits(&xs)?;
            let kl = mean_kl(&p, &q, 1.0)?.to_scalar::<f32>()?;
            kl_sum += f64::from(kl) * chunk.len() as f64;
            fake_predictions.extend(q.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?);
        }
        let n = test.len().max(1) as f64;
        let fake_accuracy = agreement(&fake_predictions, &test.labels);
        Ok(vec![
            Measure::higher("fake-quant-accuracy", fake_accuracy),
            Measure::higher(
                "int8-agreement",
                agreement(owner_predictions, &fake_predictions),
            ),
            Measure::higher(
                "int8-accuracy-change",
                agreement(owner_predictions, &test.labels) - fake_accuracy,
            ),
            Measure::higher("divergence", kl_sum / n),
        ])
    }
}
