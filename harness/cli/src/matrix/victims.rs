//! Victims: the data slices of one (dataset, seed) and the victim model trained on the owner's
//! slice, once, cached on disk by a hash of everything that shapes its weights. Every cell of a
//! victim (each defence, each attack) starts from the same trained weights and the same slices.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use datasets::augment::Augment;
use datasets::catalog::{DatasetId, LoadOptions, Normalization};
use datasets::split::{SplitFractions, disjoint_splits, stratified_subset};
use datasets::{ImageSet, Split};
use harness_core::protect::{PlainModel, Victim};
use harness_core::train::{
    CrossEntropy, Denoise, Objective, SgdConfig, TrainConfig, TrainOptions, train,
};
use harness_core::{Arch, ModelSpec, ParamStore, Task};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use super::cell::VictimKey;
use super::config::OptimizerKind;
use super::plan::ATTACKER_TRANSFER;
use super::run::RunSettings;

/// Bumped when the victim cache format or training semantics change.
const VICTIM_CACHE_VERSION: &str = "victim-v1";

/// The data of one victim: disjoint owner and attacker slices of the training set, the
/// attacker's transfer set for queries, and the test set every model is scored on.
pub struct Slices {
    /// What the owner trains on.
    pub owner: ImageSet,
    /// What the attacker holds.
    pub attacker: ImageSet,
    /// What the attacker may send to a black-box API, by transfer set name
    /// ([`super::plan::AttackEntry::transfer`]): the attacker's slice, or all the training
    /// images of another dataset (the attack's query budget picks from them).
    pub transfers: BTreeMap<String, ImageSet>,
    /// The test set.
    pub test: ImageSet,
    /// The dataset's normalisation.
    pub normalization: Normalization,
}

impl Slices {
    /// Transfer set `name`, which [`Victims::prepare`] loaded.
    pub fn transfer(&self, name: &str) -> anyhow::Result<&ImageSet> {
        self.transfers
            .get(name)
            .with_context(|| format!("transfer set `{name}` was not loaded for this victim"))
    }
}

/// Loads datasets once per run and prepares victims from them.
pub struct Victims<'a> {
    s: &'a RunSettings,
    transfers: Vec<String>,
    loaded: HashMap<String, (ImageSet, ImageSet)>,
}

impl<'a> Victims<'a> {
    /// Victims of the run described by `s`, with the transfer sets its attacks query with.
    pub fn new(s: &'a RunSettings, transfers: Vec<String>) -> Self {
        Self {
            s,
            transfers,
            loaded: HashMap::new(),
        }
    }

    /// The slices of `v` and its trained model: from the cache when a run trained it before,
    /// otherwise trained now (another run training the same victim is waited for).
    pub fn prepare(
        &mut self,
        v: &VictimKey,
        bar: &ProgressBar,
    ) -> anyhow::Result<(Slices, Victim)> {
        let (mut slices, victim) =
            prepare_group(self.s, &mut self.loaded, &v.dataset, &v.model, v.seed, bar)?;
        for name in &self.transfers {
            let set = if name == ATTACKER_TRANSFER {
                slices.attacker.clone()
            } else {
                load_dataset(self.s, &mut self.loaded, name)?.0
            };
            slices.transfers.insert(name.clone(), set);
        }
        Ok((slices, victim))
    }
}

fn load_dataset(
    s: &RunSettings,
    cache: &mut HashMap<String, (ImageSet, ImageSet)>,
    dataset: &str,
) -> anyhow::Result<(ImageSet, ImageSet)> {
    if let Some(d) = cache.get(dataset) {
        return Ok(d.clone());
    }
    let id = DatasetId::parse(dataset)?;
    let opts = LoadOptions {
        progress: s.progress,
        ..LoadOptions::default()
    };
    let train = datasets::catalog::load(&id, &s.data_dir, Split::Train, &opts)
        .with_context(|| format!("failed to load {dataset} (train)"))?;
    let test = datasets::catalog::load(&id, &s.data_dir, Split::Test, &opts)
        .with_context(|| format!("failed to load {dataset} (test)"))?;
    cache.insert(dataset.to_string(), (train.clone(), test.clone()));
    Ok((train, test))
}

fn prepare_group(
    s: &RunSettings,
    data_cache: &mut HashMap<String, (ImageSet, ImageSet)>,
    dataset: &str,
    model: &str,
    seed: u64,
    bar: &ProgressBar,
) -> anyhow::Result<(Slices, Victim)> {
    let m = &s.matrix;
    let (train_all, test_all) = load_dataset(s, data_cache, dataset)?;
    let normalization = DatasetId::parse(dataset)?.info().normalization;
    let train_set = match m.data.train_limit {
        Some(n) if n < train_all.len() => train_all.select(&stratified_subset(&train_all, n, seed)),
        _ => train_all,
    };
    let test = match m.data.test_limit {
        Some(n) if n < test_all.len() => test_all.select(&stratified_subset(&test_all, n, seed)),
        _ => test_all,
    };
    let fractions = SplitFractions {
        owner: m.data.owner,
        attacker: m.data.attacker,
        held_out: 0.0,
    };
    let splits = disjoint_splits(&train_set, &fractions, seed)?;
    let owner = train_set.select(&splits.owner);
    let attacker = train_set.select(&splits.attacker);
    let arch = Arch::parse(model)?;
    let spec = ModelSpec::new(arch, owner.num_classes())
        .with_in_channels(owner.channels)
        .with_width(if arch.has_width() {
            m.victim.width
        } else {
            1.0
        });
    let task = if arch.is_classifier() {
        Task::Classification
    } else {
        Task::Denoising {
            sigma: m.victim.noise_sigma(),
        }
    };
    let recipe = TrainConfig {
        epochs: m.victim.epochs,
        batch_size: m.victim.batch_size,
        sgd: SgdConfig {
            lr: m.victim.lr,
            weight_decay: m.victim.weight_decay,
            max_grad_norm: m.victim.max_grad_norm,
            adam: (m.victim.optimizer == Some(OptimizerKind::Adam))
                .then(harness_core::train::AdamConfig::default),
            ..SgdConfig::default()
        },
        augment: m.victim.augment.then(|| victim_augment(task)),
        normalization: match task {
            Task::Classification => Some(normalization),
            Task::Denoising { .. } => None,
        },
        seed,
        ..TrainConfig::default()
    };
    let objective: Box<dyn Objective> = match task {
        Task::Classification => Box::new(CrossEntropy),
        Task::Denoising { sigma } => Box::new(Denoise::new(sigma, seed)?),
    };
    let params = ParamStore::new(seed, &s.device);
    let plain = PlainModel::build(spec.clone(), params.clone())?;
    let key = victim_key(dataset, &spec, &recipe, task, &*objective, s, seed);
    let cache_dir = s.results_dir.join("cache").join("victims");
    let cached = cache_dir.join(format!("{key}.safetensors"));
    // Runs sharing this cache (other matrices, other shards on a shared volume) train a victim
    // once: whoever comes first trains it, the others wait and load its result.
    let _trainer = crate::lock::lock_blocking(&cache_dir.join(format!("{key}.lock")), || {
        bar.println(format!(
            "victim {dataset}/{model}/seed {seed}: another run is training it; waiting for its \
             result"
        ))
    })?;
    if cached.exists() && params.load(&cached).is_ok() {
        bar.println(format!(
            "victim {dataset}/{model}/seed {seed}: cached ({})",
            cached.display()
        ));
    } else {
        bar.set_message(format!(
            "{dataset}/{model}/seed {seed}: training the victim"
        ));
        let report = train(
            &*plain.model,
            &params,
            &owner,
            &recipe,
            &*objective,
            &TrainOptions::default(),
            &s.device,
        )?;
        params.save(&cached)?;
        bar.println(format!(
            "victim {dataset}/{model}/seed {seed}: trained {} epochs on {} images in {:.0} s",
            report.history.len(),
            owner.len(),
            report.train_seconds
        ));
    }
    Ok((
        Slices {
            owner,
            attacker,
            transfers: BTreeMap::new(),
            test,
            normalization,
        },
        Victim {
            model: plain,
            train: recipe,
            task,
        },
    ))
}

/// The victim's augmentation when the recipe asks for one.
///
/// Choice: denoisers get horizontal flips only. The zero-padded random crop of the CIFAR recipe
/// would paste black borders into the clean targets; DnCNN augments with flips (and rotations)
/// of patches, never with padding.
fn victim_augment(task: Task) -> Augment {
    match task {
        Task::Classification => Augment::default(),
        Task::Denoising { .. } => Augment {
            crop_padding: 0,
            horizontal_flip: true,
        },
    }
}

/// Hash of everything that shapes a victim's weights. The task enters the hash only for
/// denoisers (objective and noise level), so classifier victims keep their cache keys.
fn victim_key(
    dataset: &str,
    spec: &ModelSpec,
    recipe: &TrainConfig,
    task: Task,
    objective: &dyn Objective,
    s: &RunSettings,
    seed: u64,
) -> String {
    let d = &s.matrix.data;
    let mut value = serde_json::json!({
        "version": VICTIM_CACHE_VERSION,
        "harness": env!("CARGO_PKG_VERSION"),
        "dataset": dataset,
        "spec": spec,
        "recipe": recipe,
        "train_limit": d.train_limit,
        "owner": d.owner,
        "attacker": d.attacker,
        "seed": seed,
        "device": crate::device::describe(&s.device),
        // Fixed and fast numerics train different weights from the same recipe.
        "numerics": harness_core::nn::cpu::numerics::Numerics::selected().name(),
    });
    if let Task::Denoising { sigma } = task {
        value["objective"] = serde_json::json!(objective.id());
        value["noise_sigma"] = serde_json::json!(sigma);
    }
    let h = Sha256::digest(value.to_string().as_bytes());
    h.iter().take(12).map(|b| format!("{b:02x}")).collect()
}
