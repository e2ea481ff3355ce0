//! Expands a matrix file into cells and validates every id and every defence x attack pair
//! before anything trains.

use anyhow::bail;
use harness_core::protect::{
    Attack, Budget, Defence, OutputMode, Perturbation, Registry, Requirement,
};
use sha2::{Digest, Sha256};

use super::config::MatrixFile;
use crate::exit::UsageError;

/// A defence entry of the axis, resolved.
pub struct DefenceEntry {
    /// The entry as written (`none+reverse-sigmoid`): the value in records.
    pub name: String,
    /// The built defence.
    pub defence: Box<dyn Defence>,
    /// How the owner's API answers.
    pub mode: OutputMode,
    /// Perturbations applied by the API, in order.
    pub perturbations: Vec<Perturbation>,
}

/// An attack entry of the axis, resolved.
pub struct AttackEntry {
    /// The entry as written: the value in records.
    pub name: String,
    /// The built attack.
    pub attack: Box<dyn Attack>,
    /// Its budget after overrides.
    pub budget: Budget,
    /// The defence entries it runs against (`defences = [...]` in its settings); `None`: all.
    /// Sweeps use it to attack a few points of a sweep instead of every one.
    pub only: Option<Vec<String>>,
}

impl AttackEntry {
    /// Whether the matrix asks for this attack on defence entry `d`.
    fn runs_against(&self, d: &DefenceEntry) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(&d.name))
    }
}

/// One cell: a victim (dataset, model, seed) under one defence and one attack.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct CellKey {
    /// Dataset id.
    pub dataset: String,
    /// Model id.
    pub model: String,
    /// Seed.
    pub seed: u64,
    /// Defence entry name (`*` for attacks that need no exposure: they do not depend on it).
    pub defence: String,
    /// Attack entry name (`-` for the defence's own rows: accuracy and overhead).
    pub attack: String,
}

impl CellKey {
    /// A stable string for shard assignment and resume.
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}/{}/{}",
            self.dataset, self.model, self.seed, self.defence, self.attack
        )
    }

    /// The victim this cell attacks: cells of one victim share its training.
    pub fn victim(&self) -> (String, String, u64) {
        (self.dataset.clone(), self.model.clone(), self.seed)
    }

    /// Whether this cell belongs to shard `i` of `n` by a hash of its id (deterministic,
    /// balanced on average). Used when a matrix has fewer victims than shards.
    fn in_shard_by_hash(&self, i: usize, n: usize) -> bool {
        let h = Sha256::digest(self.id().as_bytes());
        let v = u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
        (v % n as u64) as usize == i
    }
}

/// The validated plan.
pub struct Plan {
    /// Defence entries by axis order.
    pub defences: Vec<DefenceEntry>,
    /// Attack entries by axis order.
    pub attacks: Vec<AttackEntry>,
    /// Every cell, in a stable order.
    pub cells: Vec<CellKey>,
}

/// Perturbation suffixes a defence entry may carry after `+`.
fn perturbation(name: &str) -> anyhow::Result<(Option<OutputMode>, Option<Perturbation>)> {
    let (base, arg) = match name.split_once(':') {
        Some((b, a)) => (b, Some(a)),
        None => (name, None),
    };
    let num = |default: f64| -> anyhow::Result<f64> {
        match arg {
            None => Ok(default),
            Some(a) => a
                .parse::<f64>()
                .map_err(|_| UsageError(format!("`{name}`: `{a}` is not a number")).into()),
        }
    };
    Ok(match base {
        "top1-label" => (Some(OutputMode::Label), None),
        "top-k" => (Some(OutputMode::TopK(num(5.0)? as usize)), None),
        // Reverse sigmoid with ART's defaults (beta 1, gamma 0.1); `reverse-sigmoid:B` sets beta.
        "reverse-sigmoid" => (
            None,
            Some(Perturbation::ReverseSigmoid {
                beta: num(1.0)?,
                gamma: 0.1,
            }),
        ),
        "round" => (
            None,
            Some(Perturbation::Round {
                decimals: num(2.0)? as u32,
            }),
        ),
        "gaussian-noise" => (
            None,
            Some(Perturbation::GaussianNoise {
                std: num(0.05)?,
                seed: 0,
            }),
        ),
        other => {
            let known = [
                "top1-label",
                "top-k",
                "reverse-sigmoid",
                "round",
                "gaussian-noise",
            ];
            bail!(UsageError(format!(
                "unknown output perturbation `{other}`{}; available: {}",
                datasets::names::did_you_mean(&datasets::names::suggest(other, known)),
                known.join(", ")
            )))
        }
    })
}

/// Settings of an entry without the harness's own keys, and the registry id it uses.
fn split_settings(
    name: &str,
    table: Option<&toml::Table>,
) -> anyhow::Result<(String, toml::Table)> {
    let mut table = table.cloned().unwrap_or_default();
    let id = match table.remove("use") {
        None => name.to_string(),
        Some(toml::Value::String(s)) => s,
        Some(other) => bail!(UsageError(format!(
            "`use` of `{name}` must be a string, got {other}"
        ))),
    };
    Ok((id, table))
}

impl Plan {
    /// The cells of shard `i` of `n`. When the matrix has at least `n` victims (dataset x model x
    /// seed), whole victims are dealt round-robin in plan order, so each victim trains on one
    /// machine only; otherwise cells are spread by a hash of their id. Either way the shards
    /// partition the matrix and depend only on the plan, so every machine computes the same split.
    pub fn shard(&self, i: usize, n: usize) -> Vec<&CellKey> {
        let mut victims: Vec<(String, String, u64)> =
            self.cells.iter().map(CellKey::victim).collect();
        victims.dedup();
        if n > 1 && victims.len() >= n {
            self.cells
                .iter()
                .filter(|c| victims.iter().position(|v| *v == c.victim()).unwrap_or(0) % n == i)
                .collect()
        } else {
            self.cells
                .iter()
                .filter(|c| c.in_shard_by_hash(i, n))
                .collect()
        }
    }

    /// Builds and validates the plan: every dataset, model, defence and attack id must exist,
    /// every setting must be known, and every pair must be runnable.
    pub fn new(
        m: &MatrixFile,
        defence_registry: &Registry<dyn Defence>,
        attack_registry: &Registry<dyn Attack>,
    ) -> anyhow::Result<Self> {
        for d in &m.axes.datasets {
            datasets::catalog::DatasetId::parse(d)?;
        }
        // Denoisers (DnCNN) get defence cells only: every attack measures attacker accuracy
        // against labels, which a denoiser does not produce.
        let mut denoisers = Vec::new();
        for model in &m.axes.models {
            if !harness_core::Arch::parse(model)?.is_classifier() {
                denoisers.push(model.as_str());
            }
        }
        if !denoisers.is_empty() {
            let sigma = m.victim.noise_sigma();
            harness_core::train::denoise::check_sigma(sigma).map_err(|_| {
                UsageError(format!(
                    "victim.noise_sigma_255 must be in (0, 255], got {}",
                    sigma * 255.0
                ))
            })?;
            if let (Some(model), Some(attack)) = (denoisers.first(), m.axes.attacks.first()) {
                bail!(UsageError(format!(
                    "attack `{attack}` cannot run on `{model}`: `{model}` is a denoiser and every \
                     attack measures attacker accuracy on labels; a matrix with denoisers takes \
                     defence cells only (`attacks = []`; put classifiers in their own matrix)"
                )));
            }
            if let Some(entry) = m.axes.defences.iter().find(|d| d.contains('+')) {
                bail!(UsageError(format!(
                    "defence `{entry}` perturbs class probabilities, but `{}` is a denoiser; \
                     use the defence without `+...`",
                    denoisers[0]
                )));
            }
        }
        let only_denoisers = denoisers.len() == m.axes.models.len();
        if m.data.transfer != "attacker" {
            datasets::catalog::DatasetId::parse(&m.data.transfer)?;
        }
        if !(m.data.owner > 0.0
            && m.data.attacker > 0.0
            && m.data.owner + m.data.attacker <= 1.0 + 1e-9)
        {
            bail!(UsageError(format!(
                "data.owner ({}) and data.attacker ({}) must be positive and sum to at most 1",
                m.data.owner, m.data.attacker
            )));
        }
        for (what, list) in [
            ("datasets", m.axes.datasets.len()),
            ("models", m.axes.models.len()),
            ("defences", m.axes.defences.len()),
            ("attacks", m.axes.attacks.len()),
            ("seeds", m.axes.seeds.len()),
        ] {
            // A denoiser matrix has no attacks (see above); anything else needs every axis.
            if list == 0 && !(what == "attacks" && only_denoisers) {
                bail!(UsageError(format!("axes.{what} is empty")));
            }
        }
        for name in m.defences.keys() {
            if !m
                .axes
                .defences
                .iter()
                .any(|d| d.split('+').next() == Some(name))
            {
                bail!(UsageError(format!(
                    "[defences.{name}] is not used by axes.defences"
                )));
            }
        }
        for name in m.attacks.keys() {
            if !m.axes.attacks.contains(name) {
                bail!(UsageError(format!(
                    "[attacks.{name}] is not used by axes.attacks"
                )));
            }
        }

        let mut defences = Vec::new();
        for entry in &m.axes.defences {
            let mut parts = entry.split('+');
            let base = parts.next().unwrap_or_default();
            let (id, settings) = split_settings(base, m.defences.get(base))?;
            let defence = defence_registry.build(&id, &settings)?;
            let mut mode = OutputMode::Soft;
            let mut perturbations = Vec::new();
            for p in parts {
                let (m, pert) = perturbation(p)?;
                if let Some(m) = m {
                    mode = m;
                }
                perturbations.extend(pert);
            }
            defences.push(DefenceEntry {
                name: entry.clone(),
                defence,
                mode,
                perturbations,
            });
        }

        let mut attacks = Vec::new();
        for entry in &m.axes.attacks {
            let (id, mut settings) = split_settings(entry, m.attacks.get(entry))?;
            let mut budget = Budget {
                epochs: m.budget.epochs,
                queries: m.budget.queries,
            };
            if let Some(v) = settings.remove("epochs") {
                budget.epochs = v.as_integer().filter(|e| *e > 0).ok_or_else(|| {
                    UsageError(format!(
                        "[attacks.{entry}] epochs must be a positive integer"
                    ))
                })? as usize;
            }
            if let Some(v) = settings.remove("queries") {
                budget.queries = Some(v.as_integer().filter(|q| *q > 0).ok_or_else(|| {
                    UsageError(format!(
                        "[attacks.{entry}] queries must be a positive integer"
                    ))
                })? as u64);
            }
            let only = match settings.remove("defences") {
                None => None,
                Some(v) => {
                    let names = v
                        .as_array()
                        .and_then(|a| {
                            a.iter()
                                .map(|x| x.as_str().map(str::to_string))
                                .collect::<Option<Vec<_>>>()
                        })
                        .ok_or_else(|| {
                            UsageError(format!(
                                "[attacks.{entry}] defences must be a list of defence entries, \
                                 e.g. defences = [\"none\"]"
                            ))
                        })?;
                    if let Some(bad) = names.iter().find(|n| !m.axes.defences.contains(n)) {
                        bail!(UsageError(format!(
                            "[attacks.{entry}] defences names `{bad}`, which is not in \
                             axes.defences ({})",
                            m.axes.defences.join(", ")
                        )));
                    }
                    Some(names)
                }
            };
            let attack = attack_registry.build(&id, &settings)?;
            attacks.push(AttackEntry {
                name: entry.clone(),
                attack,
                budget,
                only,
            });
        }

        let mut cells = Vec::new();
        for dataset in &m.axes.datasets {
            for model in &m.axes.models {
                for &seed in &m.axes.seeds {
                    let key = |defence: &str, attack: &str| CellKey {
                        dataset: dataset.clone(),
                        model: model.clone(),
                        seed,
                        defence: defence.to_string(),
                        attack: attack.to_string(),
                    };
                    for d in &defences {
                        cells.push(key(&d.name, "-"));
                    }
                    for a in &attacks {
                        if a.attack.requires() == Requirement::Nothing {
                            cells.push(key("*", &a.name));
                            // Independent models are also the null cases of ownership verifiers.
                            for d in defences
                                .iter()
                                .filter(|d| d.defence.verifies_ownership() && a.runs_against(d))
                            {
                                cells.push(key(&d.name, &a.name));
                            }
                            continue;
                        }
                        if let Some(target) = a.attack.targets()
                            && !defences.iter().any(|d| d.defence.id() == target)
                        {
                            bail!(UsageError(format!(
                                "attack `{}` is an adaptive attack on defence `{target}`, which is not \
                                 in the matrix; add `{target}` to axes.defences or remove the attack",
                                a.name
                            )));
                        }
                        for d in &defences {
                            if a.attack.targets().is_some_and(|t| t != d.defence.id())
                                || !a.runs_against(d)
                            {
                                continue;
                            }
                            // Output perturbations act on the oracle only: a white-box attack on
                            // `base+perturbation` is the same run as on `base`; run it once.
                            let base = d.name.split('+').next().unwrap_or_default();
                            if a.attack.requires() == Requirement::Weights
                                && base != d.name
                                && defences.iter().any(|o| o.name == base)
                            {
                                continue;
                            }
                            if a.attack.requires() == Requirement::Weights
                                && !d.defence.exposes_weights()
                            {
                                bail!(UsageError(format!(
                                    "attack `{}` needs stolen weights, but defence `{}` keeps them out \
                                     of reach; remove the pair from the matrix",
                                    a.name, d.name
                                )));
                            }
                            cells.push(key(&d.name, &a.name));
                        }
                    }
                }
            }
        }
        cells.sort();
        cells.dedup();
        Ok(Self {
            defences,
            attacks,
            cells,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harness_core::protect::{
        AttackContext, Budget, DefenceContext, Exposure, Protected, Stolen, Victim,
    };

    /// A defence that may claim to verify ownership (only its plan-time answers matter here).
    struct Verifying(bool);
    impl Defence for Verifying {
        fn id(&self) -> &'static str {
            if self.0 { "verifying" } else { "none" }
        }
        fn verifies_ownership(&self) -> bool {
            self.0
        }
        fn protect(&self, _: &DefenceContext<'_>, v: &Victim) -> harness_core::Result<Protected> {
            Ok(Protected::unprotected(v))
        }
    }

    /// An attack with a fixed requirement and target (only its plan-time answers matter here).
    struct Fake(Requirement, Option<&'static str>);
    impl Attack for Fake {
        fn id(&self) -> &'static str {
            "fake"
        }
        fn requires(&self) -> Requirement {
            self.0
        }
        fn targets(&self) -> Option<&'static str> {
            self.1
        }
        fn run(
            &self,
            _: &AttackContext<'_>,
            _: &Exposure,
            _: &Budget,
        ) -> harness_core::Result<Stolen> {
            Err(harness_core::Error::Config("not run in plan tests".into()))
        }
    }

    fn registries() -> (Registry<dyn Defence>, Registry<dyn Attack>) {
        let mut d: Registry<dyn Defence> = Registry::new("defence");
        d.add("none", "", |_| Ok(Box::new(Verifying(false))));
        d.add("verifying", "", |_| Ok(Box::new(Verifying(true))));
        let mut a: Registry<dyn Attack> = Registry::new("attack");
        a.add("scratch", "", |_| {
            Ok(Box::new(Fake(Requirement::Nothing, None)))
        });
        a.add("steal", "", |_| {
            Ok(Box::new(Fake(Requirement::Weights, None)))
        });
        a.add("guess", "", |_| {
            Ok(Box::new(Fake(Requirement::Weights, Some("verifying"))))
        });
        (d, a)
    }

    fn matrix(defences: &str, attacks: &str) -> MatrixFile {
        toml::from_str(&format!(
            "name = \"t\"\n[axes]\ndatasets = [\"synthetic\"]\nmodels = [\"resnet20\"]\n\
             defences = [{defences}]\nattacks = [{attacks}]\nseeds = [0]\n"
        ))
        .unwrap()
    }

    fn cells(plan: &Plan) -> Vec<(String, String)> {
        plan.cells
            .iter()
            .map(|c| (c.defence.clone(), c.attack.clone()))
            .collect()
    }

    #[test]
    fn verifying_defences_get_independent_models_and_adaptive_attacks_their_target() {
        let (d, a) = registries();
        let m = matrix("\"verifying\"", "\"scratch\", \"steal\", \"guess\"");
        let plan = Plan::new(&m, &d, &a).unwrap();
        let got = cells(&plan);
        for want in [
            ("*", "scratch"),
            ("verifying", "scratch"),
            ("verifying", "steal"),
            ("verifying", "guess"),
            ("verifying", "-"),
        ] {
            assert!(
                got.contains(&(want.0.to_string(), want.1.to_string())),
                "{want:?} missing from {got:?}"
            );
        }
        assert_eq!(got.len(), 5);
    }

    #[test]
    fn shards_partition_the_matrix_and_keep_victims_whole_when_they_can() {
        let (d, a) = registries();
        let mut m = matrix("\"none\", \"verifying\"", "\"scratch\", \"steal\"");
        m.axes.seeds = vec![0, 1, 2];
        let plan = Plan::new(&m, &d, &a).unwrap();
        for n in 1..=5 {
            let mut all: Vec<String> = (0..n)
                .flat_map(|i| plan.shard(i, n).into_iter().map(CellKey::id))
                .collect();
            all.sort();
            let mut want: Vec<String> = plan.cells.iter().map(CellKey::id).collect();
            want.sort();
            assert_eq!(all, want, "{n} shards must cover every cell exactly once");
        }
        // Three victims over three shards: each shard holds exactly one victim.
        for i in 0..3 {
            let mut victims: Vec<_> = plan.shard(i, 3).iter().map(|c| c.victim()).collect();
            victims.dedup();
            assert_eq!(victims.len(), 1, "shard {i}: {victims:?}");
        }
    }

    #[test]
    fn an_attack_limited_to_some_defences_runs_against_those_only() {
        let (d, a) = registries();
        let src = "name = \"t\"\n[axes]\ndatasets = [\"synthetic\"]\nmodels = [\"resnet20\"]\n\
                   defences = [\"none\", \"verifying\"]\nattacks = [\"scratch\", \"steal\"]\n\
                   seeds = [0]\n[attacks.steal]\ndefences = [\"verifying\"]\n";
        let m: MatrixFile = toml::from_str(src).unwrap();
        let got = cells(&Plan::new(&m, &d, &a).unwrap());
        assert!(
            got.contains(&("verifying".into(), "steal".into())),
            "{got:?}"
        );
        assert!(!got.contains(&("none".into(), "steal".into())), "{got:?}");
        // A name that is not a defence entry of the matrix is refused, naming it.
        let bad: MatrixFile =
            toml::from_str(&src.replace("[\"verifying\"]\n", "[\"verifyng\"]\n")).unwrap();
        let err = Plan::new(&bad, &d, &a).err().unwrap().to_string();
        assert!(err.contains("verifyng"), "{err}");
    }

    #[test]
    fn denoisers_take_defence_cells_only() {
        let (d, a) = registries();
        let mut m = matrix("\"none\", \"verifying\"", "");
        m.axes.models = vec!["dncnn".into()];
        let plan = Plan::new(&m, &d, &a).unwrap();
        assert_eq!(
            cells(&plan),
            vec![
                ("none".to_string(), "-".to_string()),
                ("verifying".to_string(), "-".to_string())
            ]
        );
        // Any attack, even one that needs nothing, names the pair it refuses.
        for attack in ["\"scratch\"", "\"steal\""] {
            let mut m = matrix("\"none\"", attack);
            m.axes.models = vec!["dncnn".into()];
            let err = Plan::new(&m, &d, &a).err().unwrap();
            let msg = err.to_string();
            assert!(err.downcast_ref::<UsageError>().is_some(), "{msg}");
            assert!(
                msg.contains(&format!(
                    "attack {} cannot run on `dncnn`",
                    attack.replace('"', "`")
                )),
                "{msg}"
            );
        }
        // Classifiers keep needing attacks, also next to a denoiser.
        let mut m = matrix("\"none\"", "");
        m.axes.models = vec!["dncnn".into(), "resnet20".into()];
        let msg = Plan::new(&m, &d, &a).err().unwrap().to_string();
        assert!(msg.contains("axes.attacks is empty"), "{msg}");
        let m = matrix("\"none\"", "");
        assert!(Plan::new(&m, &d, &a).is_err());
    }

    #[test]
    fn an_adaptive_attack_without_its_target_is_refused_before_training() {
        let (d, a) = registries();
        let m = matrix("\"none\"", "\"guess\"");
        let err = Plan::new(&m, &d, &a).err().unwrap().to_string();
        assert!(
            err.contains("adaptive attack on defence `verifying`"),
            "{err}"
        );
    }
}
