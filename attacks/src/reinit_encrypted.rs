//! `reinit-encrypted`: the adaptive attack on selective encryption. The thief knows the method
//! and its public parameters (the stolen file's header: ratio, eligible layers), finds the
//! encrypted kernels, replaces them with fresh initial values, and fine-tunes the whole model
//! on its own data, hoping the intact 90+ % of the weights carry most of the victim's skill.
//!
//! Finding the kernels (`mode = "detect"`, default): DPRM draws each position of a masked
//! kernel independently from the layer's N(mu, sigma), while trained kernels are spatially
//! smooth. [chosen] Each kernel is scored by the mean product of the standardised values
//! (w - mu) / sigma over horizontally and vertically adjacent positions (its spatial
//! autocorrelation, about 0 for a mask); the lowest-scoring floor(ratio x N) + 1 kernels of each
//! eligible layer are suspects (`ratio` from the public header unless `fraction` is set). 1x1
//! kernels have no neighbours and score 0 (ties broken by kernel order), so detection is
//! blind there. `mode = "all"` treats every kernel of the eligible layers as suspect
//! (re-initialising every encrypted layer: close to training those layers from scratch).

use candle_core::{DType, Tensor};
use harness_core::protect::{
    Attack, AttackContext, Budget, Disclosure, DisclosureKind, Exposure, Measure, RegistryEntry,
    Requirement, Stolen, above, check, check_opt, left_open, settings,
};
use harness_core::train::{CrossEntropy, train};
use harness_core::{Error, ParamStore, Result};
use serde::Deserialize;

use crate::StolenModel;
use crate::common::{options, recipe, stolen_weights};
use harness_core::seeded::derive_seed;

/// How suspects are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// By the spatial-autocorrelation statistic (see the module docs).
    Detect,
    /// Every kernel of the eligible layers.
    All,
}

/// Settings of `reinit-encrypted`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReinitConfig {
    /// `detect` (default) or `all`.
    pub mode: Mode,
    /// Fraction of each eligible layer's kernels to re-initialise in `detect` mode; default:
    /// the ratio in the stolen file's public header.
    pub fraction: Option<f64>,
    /// Fine-tuning learning rate (default 0.01).
    pub lr: f64,
}

impl Default for ReinitConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Detect,
            fraction: None,
            lr: 0.01,
        }
    }
}

/// The attack.
#[derive(Debug)]
pub struct ReinitEncrypted {
    config: ReinitConfig,
}

/// The registry entry of `reinit-encrypted`: its id (declared here only), summary and constructor.
pub const ENTRY: RegistryEntry<dyn Attack> = RegistryEntry {
    id: "reinit-encrypted",
    summary: "adaptive: find selectively encrypted kernels, re-initialise them, fine-tune",
    build,
};

/// Builds [`ReinitEncrypted`] from its settings.
pub fn build(table: &toml::Table) -> Result<Box<dyn Attack>> {
    Ok(Box::new(ReinitEncrypted::new(settings(table)?)?))
}

/// Suspicion of each kernel of a layer (values O x I x kh x kw, row-major): the spatial
/// autocorrelation of its standardised values; lower is more suspect.
pub fn smoothness_scores(values: &[f32], kernels: usize, kh: usize, kw: usize) -> Vec<f64> {
    let kl = kh * kw;
    let n = kernels.max(1) as f64;
    let mut mu = vec![0.0f64; kl];
    let mut sq = vec![0.0f64; kl];
    for k in values.chunks_exact(kl) {
        for p in 0..kl {
            mu[p] += f64::from(k[p]) / n;
            sq[p] += f64::from(k[p]) * f64::from(k[p]) / n;
        }
    }
    let sigma: Vec<f64> = (0..kl)
        .map(|p| (sq[p] - mu[p] * mu[p]).max(1e-20).sqrt())
        .collect();
    let mut pairs = Vec::new();
    for r in 0..kh {
        for c in 0..kw {
            if c + 1 < kw {
                pairs.push((r * kw + c, r * kw + c + 1));
            }
            if r + 1 < kh {
                pairs.push((r * kw + c, (r + 1) * kw + c));
            }
        }
    }
    values
        .chunks_exact(kl)
        .map(|k| {
            if pairs.is_empty() {
                return 0.0;
            }
            let z = |p: usize| (f64::from(k[p]) - mu[p]) / sigma[p];
            pairs.iter().map(|&(a, b)| z(a) * z(b)).sum::<f64>() / pairs.len() as f64
        })
        .collect()
}

impl ReinitEncrypted {
    /// Checks the settings.
    pub fn new(config: ReinitConfig) -> Result<Self> {
        check_opt("fraction", config.fraction, left_open(0.0, 1.0))?;
        check("lr", config.lr, above(0.0))?;
        Ok(Self { config })
    }

    /// Runs the attack (see the module docs) and returns the attacker's model.
    pub fn steal(
        &self,
        ctx: &AttackContext<'_>,
        exposure: &Exposure,
        budget: &Budget,
    ) -> Result<StolenModel> {
        let stolen = stolen_weights(exposure, ENTRY.id)?;
        let model = stolen.rebuild()?;
        let Disclosure::SelectiveEncryption(public) = &stolen.public else {
            return Err(Error::Unsupported(format!(
                "`reinit-encrypted` needs a selectively encrypted model (its public header names \
                 the encrypted layers); the stolen model's public description is `{}`",
                stolen.public.kind()
            )));
        };
        let layers: Vec<String> = public.layers.iter().map(|l| l.name.clone()).collect();
        if layers.is_empty() {
            return Err(Error::Config(
                "`reinit-encrypted`: the stolen model's public header lists no encrypted layers"
                    .into(),
            ));
        }
        let fraction = match (self.config.mode, self.config.fraction) {
            (Mode::All, _) => 1.0,
            (Mode::Detect, Some(f)) => f,
            (Mode::Detect, None) => public.ratio,
        };
        let fresh = ParamStore::new(
            derive_seed(ctx.seed, "reinit-encrypted/init"),
            model.params.device(),
        );
        harness_core::zoo::build(&model.spec, &fresh)?;
        let (mut suspects, mut total) = (0usize, 0usize);
        for name in &layers {
            let (Some(var), Some(init)) = (model.params.get(name), fresh.get(name)) else {
                return Err(Error::Config(format!("the stolen model has no `{name}`")));
            };
            let (o, i, kh, kw) = var.dims4()?;
            let kernels = o * i;
            let kl = kh * kw;
            let values = var
                .as_tensor()
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
            let count = if fraction >= 1.0 {
                kernels
            } else {
                (((fraction * kernels as f64).floor() as usize) + 1).min(kernels)
            };
            let scores = smoothness_scores(&values, kernels, kh, kw);
            let mut order: Vec<usize> = (0..kernels).collect();
            order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
            let fresh_values = init.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let mut out = values;
            for &k in &order[..count] {
                out[k * kl..(k + 1) * kl].copy_from_slice(&fresh_values[k * kl..(k + 1) * kl]);
            }
            var.set(&Tensor::from_vec(out, var.shape(), var.device())?)?;
            suspects += count;
            total += kernels;
        }
        if budget.epochs > 0 {
            let cfg = recipe(ctx, budget.epochs, self.config.lr, "reinit-encrypted/train");
            train(
                model.model.as_ref(),
                &model.params,
                ctx.attacker_data,
                &cfg,
                &CrossEntropy,
                &options(ctx),
                ctx.device,
            )?;
        }
        Ok(StolenModel {
            model,
            measures: vec![Measure::lower(
                "reinitialised-fraction",
                if total == 0 {
                    0.0
                } else {
                    suspects as f64 / total as f64
                },
            )],
        })
    }
}

impl Attack for ReinitEncrypted {
    fn requires(&self) -> Requirement {
        Requirement::Weights
    }

    fn targets(&self) -> Option<DisclosureKind> {
        Some(DisclosureKind::SelectiveEncryption)
    }

    fn run(&self, ctx: &AttackContext<'_>, exposure: &Exposure, budget: &Budget) -> Result<Stolen> {
        self.steal(ctx, exposure, budget).map(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_validated() {
        assert!(build(&toml::Table::new()).is_ok());
        let t = |s: &str| toml::from_str::<toml::Table>(s).expect("the test\'s TOML parses");
        assert!(build(&t("mode = \"all\"")).is_ok());
        assert!(build(&t("fraction = 0.2")).is_ok());
        for bad in [
            "fraction = 0.0",
            "fraction = 2.0",
            "mode = \"x\"",
            "lr = -1.0",
            "k = 1",
        ] {
            assert!(build(&t(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn masks_score_lower_than_smooth_kernels() {
        // 200 smooth 3x3 kernels (a ramp times a random scale) and 200 independent draws.
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let mut values = Vec::new();
        for _ in 0..200 {
            let a: f32 = rng.random_range(-1.0..1.0);
            for r in 0..3 {
                for c in 0..3 {
                    values.push(a * (r + c) as f32 + rng.random_range(-0.1..0.1));
                }
            }
        }
        for _ in 0..200 {
            for _ in 0..9 {
                values.push(rng.random_range(-2.0..2.0));
            }
        }
        let s = smoothness_scores(&values, 400, 3, 3);
        let smooth: f64 = s[..200].iter().sum::<f64>() / 200.0;
        let masked: f64 = s[200..].iter().sum::<f64>() / 200.0;
        assert!(smooth > masked + 0.3, "smooth {smooth}, masked {masked}");
    }
}
