//! `selective-encryption`: probabilistic selective encryption with hierarchical access (Tian,
//! Zhou, Duan, CVPR 2021). The most important kernels of each convolution (PSS: learnt L0 gates,
//! [`pss`]; or a cheap ranking, [`ranking`]) are replaced by distribution-preserving random
//! masks ([`dprm`]); M nested sets of them ([`levels`]) form tiers with one key each
//! ([`keys`]), so a level-m licence restores the top sets and accuracy rises level by level.
//! The encrypted file is an ordinary safetensors model that anyone can run ([`cipher`]).
//!
//! In the matrix the owner runs the fully decrypted model, each level 0..M-1 is recorded as
//! `level-accuracy:level-m` (`level-psnr:level-m` for a DnCNN denoiser, whose PSS searches with
//! the denoising loss; level 0 = no licence = the model as stolen), and a thief gets the
//! encrypted weights with the public parameters (ratio, levels, ranking, eligible layers; never
//! the kernel locations).
//!
//! Choice: in the matrix the master secret (and a `random` ranking's choice of kernels) is
//! derived from the cell's seed, so that the levels' accuracies and the attacks on them repeat
//! run after run, as EdgePro's password does; `os_random_key = true` draws them from the OS
//! random source, as `harness protect` always does for a real deployment.

pub mod cipher;
mod container;
pub mod dprm;
pub mod keys;
pub mod levels;
pub mod pss;
mod pss_memo;
pub mod ranking;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use harness_core::protect::{
    Capabilities, Defence, DefenceContext, Disclosure, DisclosureKind, EncryptedLayer,
    EncryptionDisclosure, Measure, PlainModel, Protected, RegistryEntry, StolenArtifact, Theft,
    Victim, above, check, settings,
};
use harness_core::seeded::derive_seed;
use harness_core::{Error, ModelSpec, ParamStore, Result, Task};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Deserialize;

pub use cipher::{
    Decrypted, EncryptReport, Encrypted, Plan, PublicHeader, decrypt, encrypt, encrypt_with_master,
    licence, public_header,
};
pub use container::model_fingerprint;
pub use pss::PssConfig;
pub use ranking::{ConvLayer, Importance, Ranking};

/// Settings of `selective-encryption` (`[defences.NAME]` with `use = "selective-encryption"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelectiveEncryptionConfig {
    /// `pss` (default, the paper's), `random`, `l1` or `mean`.
    pub ranking: Ranking,
    /// Fraction of each chosen layer's kernels encrypted (paper headline: 0.08).
    pub ratio: f64,
    /// Access levels M (paper default 5).
    pub levels: usize,
    /// Conv weights to encrypt (tensor names, `.weight` optional); empty = every conv layer.
    pub layers: Vec<String>,
    /// PSS epochs per layer (paper: 130; default 1 on CPU).
    pub pss_epochs: usize,
    /// PSS images per epoch at most, class-balanced subset of the owner's data (0 = all).
    pub pss_images: usize,
    /// PSS batch size (paper: 150).
    pub pss_batch_size: usize,
    /// PSS learning rate on log-alpha (paper: 0.1, Nesterov).
    pub pss_lr: f64,
    /// Draw the master secret (and a `random` ranking's choice) from the OS random source
    /// instead of the cell's seed, as a deployment should (`harness protect` always does).
    pub os_random_key: bool,
}

impl Default for SelectiveEncryptionConfig {
    fn default() -> Self {
        let pss = PssConfig::default();
        Self {
            ranking: Ranking::Pss,
            ratio: 0.08,
            levels: 5,
            layers: Vec::new(),
            pss_epochs: pss.epochs,
            pss_images: pss.max_images,
            pss_batch_size: pss.batch_size,
            pss_lr: pss.lr,
            os_random_key: false,
        }
    }
}

impl SelectiveEncryptionConfig {
    /// The encryption plan of these settings.
    pub fn plan(&self) -> Plan {
        Plan {
            ratio: self.ratio,
            levels: self.levels,
            layers: self.layers.clone(),
            ranking: self.ranking,
        }
    }

    /// The PSS settings of these settings.
    pub fn pss(&self) -> PssConfig {
        PssConfig {
            epochs: self.pss_epochs,
            batch_size: self.pss_batch_size,
            lr: self.pss_lr,
            max_images: self.pss_images,
            ..PssConfig::default()
        }
    }
}

/// The defence.
#[derive(Debug)]
pub struct SelectiveEncryption {
    config: SelectiveEncryptionConfig,
}

/// The registry entry of `selective-encryption`: its id (declared here only), summary and constructor.
pub const ENTRY: RegistryEntry<dyn Defence> = RegistryEntry {
    id: "selective-encryption",
    summary: "PSS + DPRM selective encryption with hierarchical licences",
    build,
};

/// Builds [`SelectiveEncryption`] from its settings.
pub fn build(table: &toml::Table) -> Result<Box<dyn Defence>> {
    Ok(Box::new(SelectiveEncryption::new(settings(table)?)?))
}

impl SelectiveEncryption {
    /// Checks the settings; the `pss_*` ones whatever the ranking, so a bad value is caught
    /// before it matters.
    pub fn new(config: SelectiveEncryptionConfig) -> Result<Self> {
        config.plan().validate()?; // `ratio` and `levels`
        check("pss_epochs", config.pss_epochs, 1..)?;
        check("pss_images", config.pss_images, 0..)?; // 0 = all
        check("pss_batch_size", config.pss_batch_size, 1..)?;
        check("pss_lr", config.pss_lr, above(0.0))?;
        if config.ranking == Ranking::Pss {
            config.pss().validate()?;
        }
        Ok(Self { config })
    }
}

/// The importance of the kernels of `layers` of a model file by `ranking`. PSS needs the
/// model (`spec` built on `params`, holding the same weights as `original`) and data; random
/// draws from the OS random source with `os_random` (the selection is part of the secret),
/// otherwise from `seed` (benchmark rows that repeat).
#[allow(clippy::too_many_arguments)]
pub fn importance(
    original: &[u8],
    ranking: Ranking,
    layers: &[String],
    pss_model: Option<(&ModelSpec, &ParamStore)>,
    data: Option<(
        &datasets::ImageSet,
        Option<&datasets::catalog::Normalization>,
    )>,
    pss: &PssConfig,
    seed: u64,
    os_random: bool,
    device: &candle_core::Device,
    progress: bool,
) -> Result<Importance> {
    let c = container::Container::parse(original)?;
    let chosen = ranking::resolve_layers(&ranking::conv_layers(&c), layers)?;
    match ranking {
        Ranking::Pss => {
            let (Some((spec, params)), Some((set, norm))) = (pss_model, data) else {
                return Err(Error::Config(
                    "PSS ranking needs the model and the owner's data (or pick random, l1 or mean)"
                        .into(),
                ));
            };
            let names: Vec<String> = chosen.into_iter().map(|l| l.name).collect();
            pss::pss_importance(spec, params, &names, set, norm, pss, seed, device, progress)
        }
        other => {
            let mut rng = if os_random {
                ChaCha20Rng::from_seed(*harness_core::sealed::random_secret()?)
            } else {
                ChaCha20Rng::seed_from_u64(derive_seed(seed, "selective-encryption/ranking"))
            };
            ranking::cheap_importance(&c, &chosen, other, &mut rng)
        }
    }
}

/// A deployable model from a model file's bytes.
fn plain_model(
    spec: &ModelSpec,
    bytes: &[u8],
    seed: u64,
    device: &candle_core::Device,
) -> Result<PlainModel> {
    let store = ParamStore::new(seed, device);
    let model = PlainModel::build(spec.clone(), store.clone())?;
    // The bytes never were a file: the origin says what they are.
    store.load_from_bytes(bytes, Path::new("the selective-encryption model in memory"))?;
    Ok(model)
}

impl Defence for SelectiveEncryption {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            theft: Theft::Whole,
            disclosure: DisclosureKind::SelectiveEncryption,
            verifies_ownership: false,
            ..Capabilities::default()
        }
    }

    fn protect(&self, ctx: &DefenceContext<'_>, victim: &Victim) -> Result<Protected> {
        let cfg = &self.config;
        let spec = &victim.model.spec;
        let original = victim.model.params.to_safetensors_bytes()?;
        // PSS searches with the victim's own objective: cross-entropy on normalised images for
        // a classifier, the denoising loss on [0,1] images (as it was trained) for a denoiser.
        let pss = PssConfig {
            task: victim.task,
            ..cfg.pss()
        };
        let norm = match victim.task {
            Task::Classification => Some(&ctx.normalization),
            Task::Denoising { .. } => victim.train.normalization.as_ref(),
        };
        let compute = || {
            let rank_start = Instant::now();
            let importance = importance(
                &original,
                cfg.ranking,
                &cfg.layers,
                Some((spec, &victim.model.params)),
                Some((ctx.owner_data, norm)),
                &pss,
                ctx.seed,
                cfg.os_random_key,
                ctx.device,
                ctx.progress,
            )?;
            Ok((importance, rank_start.elapsed().as_secs_f64()))
        };
        let (importance, rank_seconds) = if cfg.ranking == Ranking::Pss {
            pss_memo::get_or_compute(
                &original,
                &cfg.layers,
                &pss,
                ctx.seed,
                ctx.owner_data,
                compute,
            )?
        } else {
            compute()?
        };
        let enc = if cfg.os_random_key {
            encrypt(&original, &importance, &cfg.plan(), None)?
        } else {
            // A benchmark key: derived from the cell's seed so that the levels' accuracies and
            // the attacks on them repeat run after run. Not a secret; deployments draw one.
            let mut master = zeroize::Zeroizing::new([0u8; 32]);
            ChaCha20Rng::seed_from_u64(derive_seed(ctx.seed, "selective-encryption/master"))
                .fill_bytes(&mut master[..]);
            encrypt_with_master(&original, &importance, &cfg.plan(), &master, None)?
        };
        let header = public_header(&enc.model)?;

        let mut levels = Vec::with_capacity(cfg.levels);
        for m in 0..cfg.levels {
            let lic = licence(&enc.owner_key, m, None)?;
            let dec = decrypt(&enc.model, &lic)?;
            let model: Arc<dyn harness_core::protect::Deployed> =
                Arc::new(plain_model(spec, &dec.model, ctx.seed, ctx.device)?);
            levels.push((format!("level-{m}"), model));
        }
        let full_licence = licence(&enc.owner_key, cfg.levels, None)?;
        let full = decrypt(&enc.model, &full_licence)?;
        if full.model != original {
            return Err(Error::Config(
                "selective encryption: the fully decrypted model differs from the original".into(),
            ));
        }
        let owner = plain_model(spec, &full.model, ctx.seed, ctx.device)?;
        let stolen = plain_model(spec, &enc.model, ctx.seed, ctx.device)?;
        let r = &enc.report;
        let frac = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let public = Disclosure::SelectiveEncryption(EncryptionDisclosure {
            ratio: header.ratio,
            levels: header.levels,
            ranking: header.ranking.id().to_string(),
            layers: header
                .layers
                .iter()
                .map(|l| EncryptedLayer {
                    name: l.name.clone(),
                    kernels: l.kernels,
                    kernel_len: l.kernel_len,
                })
                .collect(),
        });
        Ok(Protected {
            owner: Arc::new(owner),
            levels,
            stolen: Some(StolenArtifact::whole(spec.clone(), stolen.params, public)),
            measures: vec![
                Measure::lower(
                    "encrypted-fraction",
                    frac(r.encrypted_params, r.total_params),
                ),
                Measure::lower(
                    "encrypted-conv-fraction",
                    frac(r.encrypted_params, r.conv_params),
                ),
                Measure::timing("encrypt-seconds", r.seconds),
                Measure::timing("decrypt-seconds", full.seconds),
                Measure::timing("rank-seconds", rank_seconds),
                Measure::lower("licence-bytes", full_licence.len() as f64),
                Measure::lower("escrow-bytes", r.escrow_bytes as f64),
                Measure::lower(
                    "pss-epochs",
                    if cfg.ranking == Ranking::Pss {
                        cfg.pss_epochs as f64
                    } else {
                        0.0
                    },
                ),
            ],
            verifier: None,
            test_set_check: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).expect("the test's TOML parses")
    }

    #[test]
    fn settings_are_validated() {
        assert!(build(&toml::Table::new()).is_ok());
        assert!(build(&table("ranking = \"l1\"\nratio = 0.4\nlevels = 3")).is_ok());
        for bad in [
            "ratio = 0.0",
            "ratio = 1.5",
            "levels = 0",
            "levels = 99",
            "ranking = \"magic\"",
            "pss_epochs = 0",
            "pss_batch_size = 0",
            "pss_lr = 0.0",
            "pss_lr = -1.0",
            "ratio = nan",
            "seed = 1",
        ] {
            let err = build(&table(bad)).err().expect(bad).to_string();
            // The message names the key it refuses.
            let key = bad.split(' ').next().unwrap_or_default();
            assert!(bad.contains('"') || err.contains(key), "{bad}: {err}");
        }
    }
}
