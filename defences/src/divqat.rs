//! `divqat`: DivQAT (Khaled, de Magalhaes, Nicolescu, arXiv 2512.23948), quantization-aware
//! training whose loss also pushes the quantized model's answers away from the full-precision
//! model's, so that what an extractor collects from the deployed API is poisoned while top-1
//! accuracy stays: `CE(y, f_Q(x)) - alpha * min(KL(f_FP(x) || f_Q(x)), cap)`, `f_FP` the
//! frozen victim (our reading of the paper; see `harness_core::quant::training`). Everything
//! else is `qat`'s (see `crate::qat`), so the two differ by the divergence term only; an alpha
//! sweep is a set of named entries (`[defences.divqat-a1] use = "divqat"`, `alpha = 1.0`).
//!
//! Choices: alpha 1 and a cap of 1 nat by default (the paper sweeps alpha and gives no cap);
//! temperature 1.

use harness_core::Result;
use harness_core::protect::{
    Capabilities, Defence, DefenceContext, Protected, RegistryEntry, Victim, above, check, settings,
};
use serde::Deserialize;

use crate::qat::{QatConfig, protect_quantized, quantized_capabilities};

/// Settings of `divqat`: `qat`'s plus the divergence term's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DivQatConfig {
    /// Weight of the divergence term (0 is plain QAT).
    pub alpha: f64,
    /// Largest divergence that still counts, in nats.
    pub cap: f64,
    /// Softmax temperature of both distributions.
    pub temperature: f64,
    /// As `qat`'s.
    pub epochs: usize,
    /// As `qat`'s.
    pub lr: f64,
    /// As `qat`'s.
    pub batch_size: Option<usize>,
    /// As `qat`'s.
    pub freeze_bn_after: usize,
    /// As `qat`'s.
    pub freeze_observers_after: usize,
}

impl Default for DivQatConfig {
    fn default() -> Self {
        let q = QatConfig::default();
        Self {
            alpha: 1.0,
            cap: 1.0,
            temperature: 1.0,
            epochs: q.epochs,
            lr: q.lr,
            batch_size: q.batch_size,
            freeze_bn_after: q.freeze_bn_after,
            freeze_observers_after: q.freeze_observers_after,
        }
    }
}

impl DivQatConfig {
    fn qat(&self) -> QatConfig {
        QatConfig {
            epochs: self.epochs,
            lr: self.lr,
            batch_size: self.batch_size,
            freeze_bn_after: self.freeze_bn_after,
            freeze_observers_after: self.freeze_observers_after,
        }
    }
}

/// DivQAT.
#[derive(Debug)]
pub struct DivQat {
    config: DivQatConfig,
}

/// The registry entry of `divqat`: its id (declared here only), summary and constructor.
pub const ENTRY: RegistryEntry<dyn Defence> = RegistryEntry {
    id: "divqat",
    summary: "DivQAT: QAT that pushes the int8 model's outputs away from the f32 model's",
    build,
};

/// Builds [`DivQat`] from its settings.
pub fn build(table: &toml::Table) -> Result<Box<dyn Defence>> {
    let config: DivQatConfig = settings(table)?;
    check("alpha", config.alpha, 0.0..)?;
    check("cap", config.cap, above(0.0))?;
    check("temperature", config.temperature, above(0.0))?;
    config.qat().check()?;
    Ok(Box::new(DivQat { config }))
}

impl Defence for DivQat {
    fn capabilities(&self) -> Capabilities {
        quantized_capabilities()
    }

    fn protect(&self, ctx: &DefenceContext<'_>, victim: &Victim) -> Result<Protected> {
        let c = &self.config;
        protect_quantized(&c.qat(), Some((c.alpha, c.cap, c.temperature)), ctx, victim)
    }
}
