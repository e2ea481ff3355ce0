//! The matrix file: axes, the victim recipe, data splits, attack budgets, per-component settings
//! and named profiles. Parsed strictly (`deny_unknown_fields`) so that a typo is an error, not a
//! silently ignored setting.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::exit::UsageError;

/// A whole matrix file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixFile {
    /// Name of the matrix (used in run ids).
    pub name: String,
    /// What to cross.
    pub axes: Axes,
    /// How victims are trained.
    #[serde(default)]
    pub victim: VictimRecipe,
    /// How the training set is divided between owner and attacker.
    #[serde(default)]
    pub data: DataPlan,
    /// What attackers may spend.
    #[serde(default)]
    pub budget: BudgetPlan,
    /// Settings per defence entry of `axes.defences` (by entry name).
    #[serde(default)]
    pub defences: BTreeMap<String, toml::Table>,
    /// Settings per attack entry of `axes.attacks` (by entry name). The harness reads `use`
    /// (registry id, default: the entry name), `queries` and `epochs` (budget overrides); the
    /// rest goes to the attack.
    #[serde(default)]
    pub attacks: BTreeMap<String, toml::Table>,
    /// Named overrides (`smoke`, `quick`, `nightly`, ...) selected with `--profile`.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
    /// The profile [`MatrixFile::with_profile`] applied, if any, so that errors found later can
    /// say where a merged value came from. Not part of the file (nor of its hash).
    #[serde(skip)]
    pub applied_profile: Option<String>,
}

/// The axes of the matrix; cells are their cross product.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Axes {
    /// Dataset ids.
    pub datasets: Vec<String>,
    /// Model ids of the victims.
    pub models: Vec<String>,
    /// Defence entries: a registry id or a `[defences.<name>]` entry, optionally followed by
    /// oracle perturbations: `none+reverse-sigmoid`, `none+top1-label`.
    pub defences: Vec<String>,
    /// Attack entries: a registry id or an `[attacks.<name>]` entry.
    pub attacks: Vec<String>,
    /// Seeds; each seed retrains victims and reruns attacks.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// How victims are trained (the owner's recipe).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VictimRecipe {
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Base learning rate (cosine schedule).
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Width multiplier for VGG / MobileNetV2.
    pub width: f64,
    /// Random crop + flip (for denoisers: flip only, see `run.rs`).
    pub augment: bool,
    /// Denoisers only: the Gaussian noise level they are trained and evaluated at, on the 0..255
    /// scale (default 50, DnCNN's sigma = 50). Left out of the serialised matrix when unset, so
    /// the configuration hash of classifier matrices is what it was before denoisers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_sigma_255: Option<f64>,
    /// Clip the gradients' global L2 norm to this before each step (default: no clipping). Left
    /// out of the serialised matrix when unset, like `noise_sigma_255`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_grad_norm: Option<f64>,
    /// `"sgd"` (Nesterov momentum 0.9, the default) or `"adam"` (PyTorch's defaults, betas 0.9
    /// / 0.999: DnCNN's usual recipe). Left out of the serialised matrix when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<OptimizerKind>,
}

/// The victim's update rule.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with Nesterov momentum 0.9.
    Sgd,
    /// Adam with PyTorch's default betas.
    Adam,
}

impl VictimRecipe {
    /// Noise std of denoiser victims in [0,1] pixel units.
    pub fn noise_sigma(&self) -> f64 {
        self.noise_sigma_255
            .unwrap_or(harness_core::train::DEFAULT_SIGMA_255)
            / 255.0
    }
}

impl Default for VictimRecipe {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 128,
            lr: 0.1,
            weight_decay: 5e-4,
            width: 1.0,
            augment: true,
            noise_sigma_255: None,
            max_grad_norm: None,
            optimizer: None,
        }
    }
}

/// How the training set is divided, and how much of it is used.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataPlan {
    /// Use at most this many training images (class-balanced, seeded) before splitting.
    pub train_limit: Option<usize>,
    /// Evaluate on at most this many test images.
    pub test_limit: Option<usize>,
    /// Fraction of the training images the owner trains the victim on.
    pub owner: f64,
    /// Fraction the attacker holds (disjoint from the owner's).
    pub attacker: f64,
    /// Transfer set for extraction queries: `attacker` (the attacker's slice) or a dataset id
    /// (all of its training images, e.g. `cifar100` for a CIFAR-10 victim); an attack entry's
    /// `transfer = ...` overrides it.
    pub transfer: String,
}

impl Default for DataPlan {
    fn default() -> Self {
        Self {
            train_limit: None,
            test_limit: None,
            owner: 0.5,
            attacker: 1.0 / 3.0,
            transfer: "attacker".into(),
        }
    }
}

/// Attack budgets.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetPlan {
    /// Epochs of the attacker's own training.
    pub epochs: usize,
    /// Oracle queries (images) for extraction; `None` for the whole transfer set.
    pub queries: Option<u64>,
}

impl Default for BudgetPlan {
    fn default() -> Self {
        Self {
            epochs: 10,
            queries: None,
        }
    }
}

/// Overrides applied by `--profile NAME`; absent fields keep the file's values.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Victim epochs.
    pub victim_epochs: Option<usize>,
    /// Attacker epochs.
    pub attack_epochs: Option<usize>,
    /// Query budget.
    pub queries: Option<u64>,
    /// Training-image limit.
    pub train_limit: Option<usize>,
    /// Test-image limit.
    pub test_limit: Option<usize>,
    /// Seeds.
    pub seeds: Option<Vec<u64>>,
    /// Settings merged key by key into `[defences.NAME]` (e.g. fewer PSS images for a tiny run).
    #[serde(default)]
    pub defences: BTreeMap<String, toml::Table>,
    /// Settings merged key by key into `[attacks.NAME]` (e.g. a smaller query budget of one
    /// named extraction).
    #[serde(default)]
    pub attacks: BTreeMap<String, toml::Table>,
}

impl MatrixFile {
    /// Reads and parses a matrix file; errors name the file and the offending key.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read the matrix file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            UsageError(format!("{}: {}", path.display(), e.to_string().trim_end())).into()
        })
    }

    /// Applies the named profile, if any.
    pub fn with_profile(mut self, name: Option<&str>) -> anyhow::Result<Self> {
        let Some(name) = name else { return Ok(self) };
        let Some(p) = self.profiles.get(name).cloned() else {
            let names: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
            bail!(UsageError(format!(
                "unknown profile `{name}`{}; this matrix has: {}",
                datasets::names::did_you_mean(&datasets::names::suggest(
                    name,
                    names.iter().copied()
                )),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )));
        };
        if let Some(v) = p.victim_epochs {
            self.victim.epochs = v;
        }
        if let Some(v) = p.attack_epochs {
            self.budget.epochs = v;
        }
        if p.queries.is_some() {
            self.budget.queries = p.queries;
        }
        if p.train_limit.is_some() {
            self.data.train_limit = p.train_limit;
        }
        if p.test_limit.is_some() {
            self.data.test_limit = p.test_limit;
        }
        if let Some(s) = p.seeds {
            self.axes.seeds = s;
        }
        for (name, table) in p.defences {
            self.defences.entry(name).or_default().extend(table);
        }
        for (name, table) in p.attacks {
            self.attacks.entry(name).or_default().extend(table);
        }
        self.applied_profile = Some(name.to_string());
        // The merged matrix must hold up on its own; `Plan::new` checks it again (and the
        // component settings), which is harmless.
        self.validate()?;
        Ok(self)
    }

    /// Checks every setting of the file itself before anything trains: each numeric key must
    /// be in its range, each axis free of duplicates, and each profile's overrides valid. A
    /// problem is a usage error naming the key (`victim.epochs`, `profiles.tiny.queries`) and
    /// the allowed range. Component settings (`[defences.X]`, `[attacks.Y]`) are checked by
    /// the components themselves when the plan builds them.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, p) in &self.profiles {
            p.validate(name)?;
        }
        let note = match &self.applied_profile {
            Some(p) => format!(" (in the matrix after profile `{p}`)"),
            None => String::new(),
        };
        self.validate_merged()
            .map_err(|e| UsageError(format!("{e}{note}")).into())
    }

    fn validate_merged(&self) -> Result<(), String> {
        let v = &self.victim;
        at_least_one("victim.epochs", v.epochs as u64)?;
        at_least_one("victim.batch_size", v.batch_size as u64)?;
        positive("victim.lr", v.lr)?;
        if !(v.weight_decay.is_finite() && v.weight_decay >= 0.0) {
            return Err(format!(
                "victim.weight_decay must be a number >= 0, got {}",
                v.weight_decay
            ));
        }
        positive("victim.width", v.width)?;
        if let Some(s) = v.noise_sigma_255
            && !(s.is_finite() && s > 0.0 && s <= 255.0)
        {
            return Err(format!(
                "victim.noise_sigma_255 must be in (0, 255] (the 0..255 pixel scale), got {s}"
            ));
        }
        if let Some(n) = v.max_grad_norm {
            positive("victim.max_grad_norm", n)?;
        }

        let d = &self.data;
        for (key, f) in [("data.owner", d.owner), ("data.attacker", d.attacker)] {
            if !(f.is_finite() && f > 0.0 && f <= 1.0) {
                return Err(format!(
                    "{key} must be a fraction in (0, 1] of the training images, got {f}"
                ));
            }
        }
        if d.owner + d.attacker > 1.0 + 1e-9 {
            return Err(format!(
                "data.owner ({}) and data.attacker ({}) must sum to at most 1: their slices \
                 are disjoint",
                d.owner, d.attacker
            ));
        }
        if let Some(n) = d.train_limit {
            at_least_one("data.train_limit", n as u64)?;
            for (who, f) in [("owner", d.owner), ("attacker", d.attacker)] {
                if f * (n as f64) < 1.0 {
                    return Err(format!(
                        "data.train_limit = {n} leaves the {who} (data.{who} = {f}) no training \
                         image; raise data.train_limit to at least {}",
                        (1.0 / f).ceil()
                    ));
                }
            }
        }
        if let Some(n) = d.test_limit {
            at_least_one("data.test_limit", n as u64)?;
        }

        at_least_one("budget.epochs", self.budget.epochs as u64)?;
        if let Some(q) = self.budget.queries {
            at_least_one("budget.queries", q)?;
        }

        let a = &self.axes;
        no_duplicates("axes.datasets", &a.datasets)?;
        no_duplicates("axes.models", &a.models)?;
        no_duplicates("axes.defences", &a.defences)?;
        no_duplicates("axes.attacks", &a.attacks)?;
        no_duplicates("axes.seeds", &a.seeds)?;
        Ok(())
    }
}

impl Profile {
    /// Checks the profile's own overrides, naming them `profiles.NAME.KEY`.
    fn validate(&self, name: &str) -> anyhow::Result<()> {
        let key = |k: &str| format!("profiles.{name}.{k}");
        let check = || -> Result<(), String> {
            for (k, v) in [
                ("victim_epochs", self.victim_epochs.map(|v| v as u64)),
                ("attack_epochs", self.attack_epochs.map(|v| v as u64)),
                ("queries", self.queries),
                ("train_limit", self.train_limit.map(|v| v as u64)),
                ("test_limit", self.test_limit.map(|v| v as u64)),
            ] {
                if let Some(v) = v {
                    at_least_one(&key(k), v)?;
                }
            }
            if let Some(seeds) = &self.seeds {
                if seeds.is_empty() {
                    return Err(format!("{} is empty", key("seeds")));
                }
                no_duplicates(&key("seeds"), seeds)?;
            }
            Ok(())
        };
        check().map_err(|e| UsageError(e).into())
    }
}

/// `key` must be at least 1.
fn at_least_one(key: &str, v: u64) -> Result<(), String> {
    if v >= 1 {
        Ok(())
    } else {
        Err(format!("{key} must be an integer >= 1, got {v}"))
    }
}

/// `key` must be a finite number above 0.
fn positive(key: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(format!("{key} must be a number > 0, got {v}"))
    }
}

/// `key` must list each value once: the planner would drop a repeat, but the configuration
/// hash would still differ from the same matrix without it (no resume, no merge).
fn no_duplicates<T: PartialEq + std::fmt::Display>(key: &str, list: &[T]) -> Result<(), String> {
    for (i, x) in list.iter().enumerate() {
        if list[..i].contains(x) {
            return Err(format!(
                "{key} lists `{x}` more than once; list each entry once"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_override_component_settings_key_by_key() {
        let m: MatrixFile = toml::from_str(
            r#"
            name = "t"
            [axes]
            datasets = ["synthetic"]
            models = ["resnet20"]
            defences = ["se"]
            attacks = ["scratch"]
            seeds = [0]
            [defences.se]
            use = "selective-encryption"
            ratio = 0.08
            pss_images = 2048
            [profiles.tiny]
            victim_epochs = 1
            [profiles.tiny.defences.se]
            pss_images = 64
            [profiles.tiny.attacks.scratch]
            epochs = 1
            "#,
        )
        .unwrap();
        let tiny = m.clone().with_profile(Some("tiny")).unwrap();
        let se = &tiny.defences["se"];
        assert_eq!(se["pss_images"].as_integer(), Some(64));
        assert_eq!(se["ratio"].as_float(), Some(0.08), "untouched keys stay");
        assert_eq!(tiny.attacks["scratch"]["epochs"].as_integer(), Some(1));
        assert_eq!(m.defences["se"]["pss_images"].as_integer(), Some(2048));
    }

    fn with_profile_lines(profile: &str) -> MatrixFile {
        toml::from_str(&format!(
            "name = \"t\"\n[axes]\ndatasets = [\"synthetic\"]\nmodels = [\"resnet20\"]\n\
             defences = [\"none\"]\nattacks = [\"scratch\"]\n[profiles.tiny]\n{profile}\n"
        ))
        .unwrap()
    }

    #[test]
    fn profile_overrides_are_validated_naming_the_profile_key() {
        for (profile, want) in [
            (
                "victim_epochs = 0",
                "profiles.tiny.victim_epochs must be an integer >= 1",
            ),
            (
                "attack_epochs = 0",
                "profiles.tiny.attack_epochs must be an integer >= 1",
            ),
            (
                "queries = 0",
                "profiles.tiny.queries must be an integer >= 1",
            ),
            (
                "train_limit = 0",
                "profiles.tiny.train_limit must be an integer >= 1",
            ),
            (
                "test_limit = 0",
                "profiles.tiny.test_limit must be an integer >= 1",
            ),
            ("seeds = []", "profiles.tiny.seeds is empty"),
            (
                "seeds = [1, 1]",
                "profiles.tiny.seeds lists `1` more than once",
            ),
        ] {
            let m = with_profile_lines(profile);
            for err in [
                m.clone().with_profile(Some("tiny")).err(),
                // A broken profile is an error even when another one (or none) is chosen.
                m.validate().err(),
            ] {
                let err = err.expect(profile);
                assert!(err.downcast_ref::<UsageError>().is_some(), "{err}");
                assert!(err.to_string().contains(want), "{profile}: {err}");
            }
        }
        // The merged matrix is checked too: a valid override may break another key's range.
        let m = with_profile_lines("train_limit = 2");
        assert!(m.validate().is_ok());
        let err = m.with_profile(Some("tiny")).err().unwrap().to_string();
        assert!(
            err.contains("data.train_limit = 2 leaves the attacker"),
            "{err}"
        );
        assert!(err.contains("after profile `tiny`"), "{err}");
    }
}
