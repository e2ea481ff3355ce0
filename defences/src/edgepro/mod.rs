//! `edgepro`: neuron locking with passwords (Chen et al., "EdgePro: Edge Deep Learning Model
//! Protection via Neuron Authorization", arXiv 2303.12397, TDSC 2024; code Leon022/EdgePro).
//!
//! 1. Rank the neurons of every locked stage of the pretrained victim by mean activation on a
//!    few hundred clean images ([`ranking`]).
//! 2. Per locked stage, draw `floor(gamma x N) + 1` authorised neurons by rank-weighted roulette
//!    from the top 30 % ([`selection`]). With their locking values and the scale they form the
//!    password ([`password`]), the only secret.
//! 3. Lock-train: half of every batch with the password and true labels, half without it and
//!    random labels ([`lock_training`]).
//! 4. Deploy the locked weights plus a runtime hook that applies the password after each locked
//!    stage ([`harness_core::protect::MaskHook`]). Without the password the same weights predict near chance (NUA); with it
//!    they keep the victim's accuracy (NLA).
//!
//! The owner's deployment is built by opening the sealed password file bound to the locked
//! weights, as a real owner's runtime would. `levels` holds `no-password` (the locked weights
//! run without the hook: NUA); a thief gets the locked weights and a [`harness_core::protect::LockDisclosure`].
//!
//! Choice: lock training starts from the victim's weights (`init = "victim"`), the reading under
//! which ranking the pretrained victim's neurons (step 1) describes the model being locked; the
//! authors' script trains a fresh network instead (`init = "scratch"` does that).
//! Choice: the optimiser is SGD with plain (not Nesterov) momentum 0.9, weight decay 5e-4 and
//! cosine annealing over the run, lr 0.01 (the paper's settings); batch size and augmentation
//! are the victim's recipe's; epochs default to the victim's (the paper: 40-50).
//! Choice: every stage of the model is locked by default, as the authors' ResNet locks the stem,
//! each residual stage and the pooled features.
//! Choice: the password is drawn from the cell's seed so that benchmark rows repeat;
//! `os_random_password = true` draws it from the OS random source instead, as a deployment should.

pub mod lock_training;
pub mod overhead;
pub mod password;
pub mod selection;

use std::sync::Arc;

use harness_core::Model;
use harness_core::eval::evaluate;
use harness_core::protect::{
    Capabilities, Defence, DefenceContext, Disclosure, DisclosureKind, LockDisclosure, LockedStage,
    MaskedModel, Measure, PlainModel, Protected, RegistryEntry, StolenArtifact, Theft, Victim,
    above, check, check_opt, left_open, settings,
};
use harness_core::seeded::{derive_seed, sample_indices};
use harness_core::train::{SgdConfig, TrainOptions, TrainReport, train};
use harness_core::zoo::activations;
use harness_core::{Error, ParamStore, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use lock_training::LockObjective;
use password::{Password, StageLock};

/// Where lock training starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// From a copy of the victim's weights (default).
    Victim,
    /// From freshly initialised weights, as the authors' script.
    Scratch,
}

/// Settings of `edgepro` (`[defences.edgepro]` in a matrix file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeProConfig {
    /// Stages to lock, by group (`layer1`, `block3`, `pool`: the lock points of the reference
    /// code) or by stage name (`layer1.0`); default: every group.
    pub stages: Option<Vec<String>>,
    /// Fraction of each locked stage's neurons authorised: `floor(gamma x N) + 1` (0.1), in
    /// [0, 1) (1 would ask for N + 1 of N neurons).
    pub gamma: f64,
    /// Top fraction of the activation ranking the authorised neurons are drawn from (0.3).
    pub pool_fraction: f64,
    /// Locking value lambda: an authorised neuron's multiplier with the password (0).
    pub locking_value: f64,
    /// Multiplier of the other neurons of a locked stage with the password (1).
    pub scale: f64,
    /// Clean owner images the neurons are ranked on (200).
    pub rank_images: usize,
    /// Lock-training epochs; default: the victim's.
    pub epochs: Option<usize>,
    /// Lock-training learning rate (0.01).
    pub lr: f64,
    /// Lock-training batch size; default: the victim's.
    pub batch_size: Option<usize>,
    /// `victim` (default) or `scratch`.
    pub init: Init,
    /// Owner images the accuracy loss against the victim is measured on (1000).
    pub eval_images: usize,
    /// Batch-1 calls per model when timing the hook's overhead (50; 0 skips it).
    pub latency_runs: usize,
    /// Name of an environment variable holding a passphrase for the sealed password file;
    /// without it the file is sealed without one (integrity only).
    pub passphrase_env: Option<String>,
    /// Draw the password from the OS random source instead of the cell's seed.
    pub os_random_password: bool,
}

impl Default for EdgeProConfig {
    fn default() -> Self {
        Self {
            stages: None,
            gamma: 0.1,
            pool_fraction: 0.3,
            locking_value: 0.0,
            scale: 1.0,
            rank_images: 200,
            epochs: None,
            lr: 0.01,
            batch_size: None,
            init: Init::Victim,
            eval_images: 1000,
            latency_runs: 50,
            passphrase_env: None,
            os_random_password: false,
        }
    }
}

/// Neuron locking with passwords.
#[derive(Debug)]
pub struct EdgePro {
    config: EdgeProConfig,
}

/// The registry entry of `edgepro`: its id (declared here only), summary and constructor.
pub const ENTRY: RegistryEntry<dyn Defence> = RegistryEntry {
    id: "edgepro",
    summary: "EdgePro: neuron locking with a sealed password",
    build,
};

/// Builds [`EdgePro`] from its settings.
pub fn build(table: &toml::Table) -> Result<Box<dyn Defence>> {
    Ok(Box::new(EdgePro::new(settings(table)?)?))
}

/// A locked model and its secret, before it is wrapped for the harness.
pub struct Locked {
    /// The locked weights (what is deployed, and what a thief takes).
    pub model: PlainModel,
    /// The password.
    pub password: Password,
    /// The sealed password file bound to `model`'s weights.
    pub sealed: Vec<u8>,
    /// The lock-training run.
    pub report: TrainReport,
}

impl EdgePro {
    /// Checks the settings.
    pub fn new(config: EdgeProConfig) -> Result<Self> {
        // gamma = 1 would authorise floor(N) + 1 > N neurons of every stage.
        check("gamma", config.gamma, 0.0..1.0)?;
        check("pool_fraction", config.pool_fraction, left_open(0.0, 1.0))?;
        check("locking_value", config.locking_value, ..)?;
        check("scale", config.scale, ..)?;
        check("rank_images", config.rank_images, 1..)?;
        check_opt("epochs", config.epochs, 1..)?;
        check("lr", config.lr, above(0.0))?;
        check_opt("batch_size", config.batch_size, 1..)?;
        check("eval_images", config.eval_images, 1..)?;
        check("latency_runs", config.latency_runs, 0..)?;
        if matches!(&config.stages, Some(s) if s.is_empty()) {
            return Err(Error::Config(
                "`stages` is empty: lock at least one stage, or leave it out to lock all".into(),
            ));
        }
        Ok(Self { config })
    }

    /// The settings.
    pub fn config(&self) -> &EdgeProConfig {
        &self.config
    }

    /// Indices (into the model's stages) of the stages to lock: the groups named in `stages`
    /// (or any stage by its own name), by default every group (the lock points of the
    /// reference code, one per resolution).
    fn locked_stage_indices(&self, model: &dyn Model) -> Result<Vec<usize>> {
        let arch = model.spec().arch;
        let groups = model.groups();
        if groups.is_empty() {
            return Err(Error::Unsupported(format!(
                "`{arch}` has no stages to lock (edgepro needs a classifier of the zoo)"
            )));
        }
        let Some(names) = &self.config.stages else {
            return Ok(groups.into_iter().map(|(i, _)| i).collect());
        };
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let i = model.find_stage(name).ok_or_else(|| {
                let all: Vec<&str> = groups.iter().map(|(_, g)| g.as_str()).collect();
                Error::Config(format!(
                    "`{arch}` has no stage `{name}`{}; its lock points: {} (or any stage by its name, see `harness list`)",
                    datasets::names::did_you_mean(&datasets::names::suggest(
                        name,
                        all.iter().copied()
                    )),
                    all.join(", ")
                ))
            })?;
            if !out.contains(&i) {
                out.push(i);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The activation ranking of every locked stage of `model` (stage index, neurons most
    /// active first) on `rank_images` owner images chosen by `seed`.
    pub fn rankings(
        &self,
        ctx: &DefenceContext<'_>,
        model: &PlainModel,
        seed: u64,
    ) -> Result<Vec<(usize, Vec<usize>)>> {
        let locked = self.locked_stage_indices(model.model.as_ref())?;
        let images = sample_indices(
            ctx.owner_data.len(),
            self.config.rank_images,
            derive_seed(seed, "edgepro/rank-images"),
        );
        let means = activations::mean_activations(
            model.model.as_ref(),
            ctx.owner_data,
            &images,
            Some(&ctx.normalization),
            256,
            ctx.device,
        )?;
        Ok(locked
            .into_iter()
            .map(|i| (i, activations::rank(&means[i])))
            .collect())
    }

    /// Ranks, selects and builds the password for `model` (the pretrained victim); `seed`
    /// drives the choice of ranking images and the roulette.
    pub fn make_password(
        &self,
        ctx: &DefenceContext<'_>,
        model: &PlainModel,
        seed: u64,
    ) -> Result<Password> {
        let stages = model.model.stages();
        let rankings = self.rankings(ctx, model, seed)?;
        let mut rng = if self.config.os_random_password {
            ChaCha8Rng::from_seed(*harness_core::sealed::random_secret()?)
        } else {
            ChaCha8Rng::seed_from_u64(derive_seed(seed, "edgepro/password"))
        };
        let mut locks = Vec::with_capacity(rankings.len());
        for (i, order) in rankings {
            let (Some(info), Some(address)) = (stages.get(i), model.model.stage_address(i)) else {
                return Err(Error::Config(format!("stage index {i} out of range")));
            };
            let neurons = selection::select_neurons(
                &order,
                self.config.gamma,
                self.config.pool_fraction,
                &mut rng,
            )
            .map_err(|e| Error::Config(format!("stage `{}`: {e}", info.name)))?;
            let values = vec![self.config.locking_value as f32; neurons.len()];
            locks.push(StageLock {
                stage: address,
                channels: info.channels,
                neurons,
                values,
            });
        }
        Ok(Password {
            scale: self.config.scale as f32,
            locks,
        })
    }

    /// Locks a copy of the victim: password, lock training, sealed password file.
    pub fn lock(&self, ctx: &DefenceContext<'_>, victim: &Victim) -> Result<Locked> {
        let spec = victim.model.spec.clone();
        if !spec.arch.is_classifier() {
            return Err(Error::Config(format!(
                "edgepro locks classifiers; `{}` is not one",
                spec.arch
            )));
        }
        let password = self.make_password(ctx, &victim.model, ctx.seed)?;
        let model = match self.config.init {
            Init::Victim => victim.model.deep_copy()?,
            Init::Scratch => PlainModel::build(
                spec.clone(),
                ParamStore::new(derive_seed(ctx.seed, "edgepro/init"), ctx.device),
            )?,
        };
        let hook = password.hook(model.model.as_ref(), ctx.device)?;
        let mut cfg = victim.train.clone();
        cfg.epochs = self.config.epochs.unwrap_or(victim.train.epochs);
        cfg.batch_size = self.config.batch_size.unwrap_or(victim.train.batch_size);
        cfg.sgd = SgdConfig {
            lr: self.config.lr,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            max_grad_norm: None,
            adam: None,
        };
        cfg.schedule = harness_core::train::Schedule::default();
        cfg.normalization = Some(ctx.normalization);
        cfg.seed = derive_seed(ctx.seed, "edgepro/train");
        let objective = LockObjective::new(
            hook,
            spec.num_classes,
            derive_seed(ctx.seed, "edgepro/random-labels"),
        );
        let report = train(
            model.model.as_ref(),
            &model.params,
            ctx.owner_data,
            &cfg,
            &objective,
            &TrainOptions {
                progress: ctx.progress,
                ..TrainOptions::default()
            },
            ctx.device,
        )?;
        let passphrase = self.passphrase()?;
        let sealed = password.seal(&model.params, passphrase.as_deref())?;
        Ok(Locked {
            model,
            password,
            sealed,
            report,
        })
    }

    /// The passphrase of the password file, from the variable `passphrase_env` names.
    fn passphrase(&self) -> Result<Option<String>> {
        match &self.config.passphrase_env {
            Some(var) => std::env::var(var).map(Some).map_err(|_| {
                Error::Config(format!(
                    "`passphrase_env` names `{var}`, which is not set (or not UTF-8)"
                ))
            }),
            None => Ok(None),
        }
    }

    /// What a thief learns without the password: which stages the runtime hooks, their sizes,
    /// and the method's public parameters with the per-stage counts they imply.
    pub fn public_info(&self, password: &Password) -> LockDisclosure {
        LockDisclosure {
            locked_stages: password
                .locks
                .iter()
                .map(|l| LockedStage {
                    name: l.stage.clone(),
                    channels: l.channels,
                    locked_neurons: l.neurons.len(),
                    pool: selection::pool_size(l.channels, self.config.pool_fraction),
                })
                .collect(),
            gamma: self.config.gamma,
            pool_fraction: self.config.pool_fraction,
        }
    }
}

/// The owner's runtime: opens the sealed password file for the locked weights `model` and
/// returns the model with its password hook.
pub fn owner_deployment(
    model: PlainModel,
    sealed: &[u8],
    passphrase: Option<&str>,
    device: &candle_core::Device,
) -> Result<MaskedModel> {
    let password = Password::open(sealed, &model.params, passphrase)?;
    let hook = password.hook(model.model.as_ref(), device)?;
    Ok(MaskedModel::new(model, hook, sealed.len()))
}

impl Defence for EdgePro {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            theft: Theft::Whole,
            disclosure: DisclosureKind::Edgepro,
            verifies_ownership: false,
            ..Capabilities::default()
        }
    }

    fn protect(&self, ctx: &DefenceContext<'_>, victim: &Victim) -> Result<Protected> {
        let locked = self.lock(ctx, victim)?;
        let passphrase = self.passphrase()?;
        let owner = owner_deployment(
            locked.model.clone(),
            &locked.sealed,
            passphrase.as_deref(),
            ctx.device,
        )?;
        let no_password = locked.model.clone();

        let mut measures = vec![
            Measure::lower("password-bytes", locked.password.to_bytes()?.len() as f64),
            Measure::lower("password-file-bytes", locked.sealed.len() as f64),
            Measure::higher("locked-neurons", locked.password.locked_neurons() as f64),
        ];
        // Accuracy loss against the victim on owner images (a defence never sees the test set;
        // the matrix's owner-accuracy rows give the test-set figure).
        let eval_set = ctx.owner_data.select(&sample_indices(
            ctx.owner_data.len(),
            self.config.eval_images,
            derive_seed(ctx.seed, "edgepro/eval-images"),
        ));
        let norm = Some(&ctx.normalization);
        let victim_acc = evaluate(
            victim.model.model.as_ref(),
            &eval_set,
            norm,
            256,
            ctx.device,
        )?
        .top1;
        let nla = evaluate(&owner, &eval_set, norm, 256, ctx.device)?.top1;
        let nua = evaluate(no_password.model.as_ref(), &eval_set, norm, 256, ctx.device)?.top1;
        measures.push(Measure::lower(
            "accuracy-loss-owner-images",
            victim_acc - nla,
        ));
        measures.push(Measure::lower("nua-owner-images", nua));
        if self.config.latency_runs > 0 {
            let (with, without) = overhead::paired_latency_ms_p50(
                &owner,
                &no_password,
                &eval_set,
                norm,
                self.config.latency_runs,
                ctx.device,
            )?;
            measures.push(Measure::timing("latency-no-hook-ms-p50", without));
            measures.push(Measure::timing("hook-overhead-ms-p50", with - without));
        }
        if let Some(last) = locked.report.history.last() {
            measures.push(Measure::lower("lock-train-loss", last.train_loss));
        }
        measures.push(Measure::lower(
            "lock-train-epochs",
            locked.report.history.len() as f64,
        ));

        let public = Disclosure::Edgepro(self.public_info(&locked.password));
        Ok(Protected {
            owner: Arc::new(owner),
            levels: vec![("no-password".into(), Arc::new(no_password))],
            stolen: Some(StolenArtifact::whole(
                locked.model.spec.clone(),
                locked.model.params.deep_copy()?,
                public,
            )),
            measures,
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
    fn settings_are_checked() {
        assert!(build(&toml::Table::new()).is_ok());
        assert!(
            build(&table(
                "gamma = 0.2\nstages = [\"layer1\"]\ninit = \"scratch\""
            ))
            .is_ok()
        );
        for bad in [
            "gamma = 1.5",
            "gamma = -0.1",
            "pool_fraction = 0.0",
            "lr = -1.0",
            "scale = nan",
            "stages = []",
            "rank_images = 0",
            "batch_size = 0",
            "epochs = 0",
            "lr = 0.0",
            "init = \"fresh\"",
            "lam = 0.0",
        ] {
            let err = build(&table(bad)).err().expect(bad).to_string();
            // The message names the key it refuses.
            let key = bad.split(' ').next().unwrap_or_default();
            assert!(bad.contains('"') || err.contains(key), "{bad}: {err}");
        }
    }
}
