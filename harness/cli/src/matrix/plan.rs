//! Expands a matrix file into cells and validates every id and every defence x attack pair
//! before anything trains.

use super::cell::{ANY_DEFENCE, Cell, Job, VictimKey};
use super::config::MatrixFile;
use crate::exit::UsageError;
use anyhow::bail;
use harness_core::protect::{
    Attack, Budget, Defence, OutputMode, Perturbation, Registry, Requirement, Theft,
};

/// A defence entry of the axis, resolved.
pub struct DefenceEntry {
    /// The entry as written (`none+reverse-sigmoid`): the value in records.
    pub name: String,
    /// The registry id of its base defence (`none`).
    pub id: String,
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
    /// The images it may send to an oracle: `attacker` (the attacker's slice) or a dataset id,
    /// from `transfer = ...` in its settings or `[data] transfer`.
    pub transfer: String,
}

impl AttackEntry {
    /// Whether the matrix asks for this attack on defence entry `d`.
    fn runs_against(&self, d: &DefenceEntry) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(&d.name))
    }
}

/// The validated plan.
pub struct Plan {
    /// Defence entries by axis order.
    pub defences: Vec<DefenceEntry>,
    /// Attack entries by axis order.
    pub attacks: Vec<AttackEntry>,
    /// Every cell, in a stable order (by [`super::cell::CellKey`]).
    pub cells: Vec<Cell>,
}

/// The transfer set meaning the attacker's own slice of the victim's training set.
pub const ATTACKER_TRANSFER: &str = "attacker";

/// Checks a transfer set name (`origin` is where it was written): the attacker's slice, or
/// another dataset than the victims' (whose training images include the owner's).
fn check_transfer(name: &str, origin: &str, victim_datasets: &[String]) -> anyhow::Result<()> {
    if name == ATTACKER_TRANSFER {
        return Ok(());
    }
    if let Err(e) = datasets::catalog::DatasetId::parse(name) {
        bail!(UsageError(format!(
            "{origin}: transfer = \"{name}\" is neither `{ATTACKER_TRANSFER}` (the attacker's \
             slice) nor a dataset: {e}"
        )));
    }
    if victim_datasets.iter().any(|d| d == name) {
        bail!(UsageError(format!(
            "{origin}: transfer = \"{name}\" is a victim's own dataset, whose training images \
             include the owner's; use transfer = \"{ATTACKER_TRANSFER}\" for the attacker's \
             slice of it"
        )));
    }
    Ok(())
}

impl Plan {
    /// Every transfer set an attack of the plan queries with, each once.
    pub fn transfer_sets(&self) -> Vec<String> {
        let mut names: Vec<String> = self.attacks.iter().map(|a| a.transfer.clone()).collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Perturbation suffixes a defence entry may carry after `+`, with their arguments checked:
/// `classes` are the class counts of the matrix's datasets (0 where only loading can tell).
fn perturbation(
    name: &str,
    classes: &[(&str, usize)],
) -> anyhow::Result<(Option<OutputMode>, Option<Perturbation>)> {
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
    // A number within `range`, or a usage error naming the perturbation and the range.
    let checked = |default: f64, ok: &dyn Fn(f64) -> bool, range: &str| -> anyhow::Result<f64> {
        let v = num(default)?;
        if v.is_finite() && ok(v) {
            Ok(v)
        } else {
            bail!(UsageError(format!(
                "`{name}`: {base}'s argument must be {range}, got {v}"
            )))
        }
    };
    let integer = |v: f64| v.fract() == 0.0;
    Ok(match base {
        "top1-label" => {
            if let Some(a) = arg {
                bail!(UsageError(format!(
                    "`{name}`: top1-label takes no argument (got `{a}`)"
                )));
            }
            (Some(OutputMode::Label), None)
        }
        "top-k" => {
            let k = checked(5.0, &|v| integer(v) && v >= 1.0, "an integer >= 1")? as usize;
            // k at or above the number of classes returns every probability: no perturbation.
            if let Some((dataset, n)) = classes.iter().find(|(_, n)| *n > 0 && k >= *n) {
                bail!(UsageError(format!(
                    "`{name}` keeps every probability of `{dataset}` ({n} classes), the same as \
                     no perturbation; top-k's argument must be an integer in [1, {}]",
                    n - 1
                )));
            }
            (Some(OutputMode::TopK(k)), None)
        }
        // Reverse sigmoid with ART's defaults (beta 1, gamma 0.1); `reverse-sigmoid:B` sets beta.
        "reverse-sigmoid" => (
            None,
            Some(Perturbation::ReverseSigmoid {
                beta: checked(1.0, &|v| v > 0.0, "a number > 0 (beta)")?,
                gamma: 0.1,
            }),
        ),
        // Probabilities are f32: past 7 decimals, p x 10^D leaves f32's exact integers.
        "round" => (
            None,
            Some(Perturbation::Round {
                decimals: checked(
                    2.0,
                    &|v| integer(v) && (0.0..=7.0).contains(&v),
                    "an integer in [0, 7] (decimal places of f32 probabilities)",
                )? as u32,
            }),
        ),
        "gaussian-noise" => (
            None,
            Some(Perturbation::GaussianNoise {
                std: checked(
                    0.05,
                    &|v| v > 0.0,
                    "a number > 0 (standard deviation; 0 adds no noise)",
                )?,
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
    pub fn shard(&self, i: usize, n: usize) -> Vec<&Cell> {
        let mut victims: Vec<&VictimKey> = self.cells.iter().map(|c| &c.victim).collect();
        victims.dedup();
        if n > 1 && victims.len() >= n {
            self.cells
                .iter()
                .filter(|c| victims.iter().position(|v| **v == c.victim).unwrap_or(0) % n == i)
                .collect()
        } else {
            self.cells
                .iter()
                .filter(|c| c.key.in_shard_by_hash(i, n))
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
        // Numeric settings, duplicates, profile overrides: before anything else.
        m.validate()?;
        let mut classes = Vec::new();
        for d in &m.axes.datasets {
            let id = datasets::catalog::DatasetId::parse(d)?;
            classes.push((d.as_str(), id.info().num_classes));
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
            // `victim.noise_sigma_255` was checked by `m.validate()`.
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
        check_transfer(&m.data.transfer, "[data]", &m.axes.datasets)?;
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

        // Where a component's settings come from, for its errors: the table, and the profile
        // that overrode some of it.
        let origin = |kind: &str, name: &str| {
            let by_profile = m.applied_profile.as_ref().filter(|p| {
                m.profiles.get(*p).is_some_and(|p| match kind {
                    "defences" => p.defences.contains_key(name),
                    _ => p.attacks.contains_key(name),
                })
            });
            match by_profile {
                Some(p) => format!("{kind}.{name} (with profiles.{p}.{kind}.{name})"),
                None => format!("{kind}.{name}"),
            }
        };

        let mut defences = Vec::new();
        for entry in &m.axes.defences {
            let mut parts = entry.split('+');
            let base = parts.next().unwrap_or_default();
            let (id, settings) = split_settings(base, m.defences.get(base))?;
            // An unknown id keeps its own message; a bad setting names the entry's table (the
            // component names the key and its range).
            defence_registry.get(&id)?;
            let defence = defence_registry.build(&id, &settings).map_err(|e| {
                UsageError(format!(
                    "{}: {}",
                    origin("defences", base),
                    config_message(e)
                ))
            })?;
            let mut mode = OutputMode::Soft;
            let mut perturbations = Vec::new();
            for p in parts {
                let (m, pert) = perturbation(p, &classes)?;
                if let Some(m) = m {
                    mode = m;
                }
                perturbations.extend(pert);
            }
            if let Some(model) = denoisers.first()
                && defence.capabilities().classifiers_only
            {
                bail!(UsageError(format!(
                    "defence `{entry}` works on classifiers only, but `{model}` is a denoiser; \
                     take `{model}` out of axes.models or `{entry}` out of axes.defences (put \
                     the denoiser in its own matrix)"
                )));
            }
            defences.push(DefenceEntry {
                name: entry.clone(),
                id: id.clone(),
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
            let at_least_one = |key: &str, v: &toml::Value| {
                v.as_integer().filter(|e| *e >= 1).ok_or_else(|| {
                    UsageError(format!(
                        "{}: {key} must be an integer >= 1, got {v}",
                        origin("attacks", entry)
                    ))
                })
            };
            if let Some(v) = settings.remove("epochs") {
                budget.epochs = at_least_one("epochs", &v)? as usize;
            }
            if let Some(v) = settings.remove("queries") {
                budget.queries = Some(at_least_one("queries", &v)? as u64);
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
                    if names.is_empty() {
                        bail!(UsageError(format!(
                            "[attacks.{entry}] defences = [] runs the attack against no defence; \
                             list defence entries, or leave `defences` out to run against all"
                        )));
                    }
                    if let Some((_, dup)) = names
                        .iter()
                        .enumerate()
                        .find(|(i, n)| names[..*i].contains(n))
                    {
                        bail!(UsageError(format!(
                            "[attacks.{entry}] defences lists `{dup}` more than once"
                        )));
                    }
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
            let transfer = match settings.remove("transfer") {
                None => m.data.transfer.clone(),
                Some(v) => {
                    let name = v.as_str().map(str::to_string).ok_or_else(|| {
                        UsageError(format!(
                            "[attacks.{entry}] transfer must be a string: \"{ATTACKER_TRANSFER}\" \
                             or a dataset id"
                        ))
                    })?;
                    check_transfer(&name, &format!("[attacks.{entry}]"), &m.axes.datasets)?;
                    name
                }
            };
            attack_registry.get(&id)?;
            let attack = attack_registry.build(&id, &settings).map_err(|e| {
                UsageError(format!(
                    "{}: {}",
                    origin("attacks", entry),
                    config_message(e)
                ))
            })?;
            attacks.push(AttackEntry {
                name: entry.clone(),
                attack,
                budget,
                only,
                transfer,
            });
        }

        let mut jobs = Vec::new();
        for (di, _) in defences.iter().enumerate() {
            jobs.push(Job::Reference { defence: di });
        }
        for (ai, a) in attacks.iter().enumerate() {
            if a.attack.requires() == Requirement::Nothing {
                jobs.push(Job::Unexposed { attack: ai });
                // Independent models are also the null cases of ownership verifiers.
                for (di, _) in defences.iter().enumerate().filter(|(_, d)| {
                    d.defence.capabilities().verifies_ownership && a.runs_against(d)
                }) {
                    jobs.push(Job::Attack {
                        defence: di,
                        attack: ai,
                    });
                }
                continue;
            }
            if let Some(target) = a.attack.targets()
                && !defences
                    .iter()
                    .any(|d| d.defence.capabilities().disclosure == target)
            {
                bail!(UsageError(format!(
                    "attack `{}` is an adaptive attack on `{target}` (it reads the public \
                     description a `{target}` defence publishes), and no defence in the \
                     matrix publishes one; add `{target}` to axes.defences or remove \
                     the attack",
                    a.name
                )));
            }
            for (di, d) in defences.iter().enumerate() {
                let caps = d.defence.capabilities();
                if a.attack.targets().is_some_and(|t| t != caps.disclosure) || !a.runs_against(d) {
                    continue;
                }
                // Output perturbations act on the oracle only: a white-box attack on
                // `base+perturbation` is the same run as on `base`; run it once.
                let base = d.name.split('+').next().unwrap_or_default();
                let white_box = matches!(
                    a.attack.requires(),
                    Requirement::Weights | Requirement::Parts
                );
                if white_box && base != d.name && defences.iter().any(|o| o.name == base) {
                    continue;
                }
                if !a.attack.requires().met_by(caps.theft) {
                    let (needs, has) = match caps.theft {
                        Theft::Parts => (
                            "the whole stolen model",
                            "lets a thief take some stages only",
                        ),
                        _ => ("stolen weights", "keeps them out of reach"),
                    };
                    bail!(UsageError(format!(
                        "attack `{}` needs {needs}, but defence `{}` {has}; remove the pair \
                         from the matrix",
                        a.name, d.name
                    )));
                }
                jobs.push(Job::Attack {
                    defence: di,
                    attack: ai,
                });
            }
        }
        let mut cells = Vec::new();
        for dataset in &m.axes.datasets {
            for model in &m.axes.models {
                for &seed in &m.axes.seeds {
                    let victim = VictimKey {
                        dataset: dataset.clone(),
                        model: model.clone(),
                        seed,
                    };
                    cells.extend(
                        jobs.iter()
                            .map(|&job| Cell::new(&victim, job, &defences, &attacks)),
                    );
                }
            }
        }
        cells.sort_by(|a, b| a.key.cmp(&b.key));
        cells.dedup_by(|a, b| a.key == b.key);
        check_every_attack_has_cells(&defences, &attacks, &cells)?;
        Ok(Self {
            defences,
            attacks,
            cells,
        })
    }
}

/// The message of a component's error, without `Error::Config`'s generic prefix.
fn config_message(e: harness_core::Error) -> String {
    match e {
        harness_core::Error::Config(m) => m,
        other => other.to_string(),
    }
}

/// An attack entry that ends with no cell, or that names a defence entry it gets no cell
/// against, would silently vanish from the results: refuse it, saying why.
fn check_every_attack_has_cells(
    defences: &[DefenceEntry],
    attacks: &[AttackEntry],
    cells: &[Cell],
) -> anyhow::Result<()> {
    for a in attacks {
        let has = |defence: &str| {
            cells
                .iter()
                .any(|c| c.key.attack == a.name && c.key.defence == defence)
        };
        for d in defences
            .iter()
            .filter(|d| a.only.as_ref().is_some_and(|o| o.contains(&d.name)))
        {
            if has(&d.name) {
                continue;
            }
            let base = d.name.split('+').next().unwrap_or_default();
            let why = match (a.attack.requires(), a.attack.targets()) {
                (Requirement::Nothing, _) => format!(
                    "`{}` needs no exposure: it runs once per victim (defence `{ANY_DEFENCE}`), and against a \
                     defence entry only when that defence verifies ownership, which `{}` does not",
                    a.name, d.name
                ),
                (_, Some(t)) if t != d.defence.capabilities().disclosure => format!(
                    "`{}` is an adaptive attack on `{t}`, and `{}` is a `{}` entry",
                    a.name, d.name, d.id
                ),
                (Requirement::Weights | Requirement::Parts, _) if base != d.name => format!(
                    "`{}` works on stolen weights, which output perturbations do not change: it \
                     runs against `{base}` instead (list `{base}`)",
                    a.name
                ),
                _ => format!("`{}` gets no cell against `{}`", a.name, d.name),
            };
            bail!(UsageError(format!(
                "[attacks.{}] defences lists `{}`, but the attack does not run against it: {why}",
                a.name, d.name
            )));
        }
        if !cells.iter().any(|c| c.key.attack == a.name) {
            bail!(UsageError(format!(
                "attack `{}` has no cell in the matrix (no defence entry it can run against); \
                 remove it or add a defence it runs against",
                a.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use harness_core::protect::{
        AttackContext, Budget, Capabilities, DefenceContext, DisclosureKind, Exposure, Factory,
        Protected, RegistryEntry, Stolen, Victim,
    };

    fn entry<T: ?Sized>(id: &'static str, build: Factory<T>) -> RegistryEntry<T> {
        RegistryEntry {
            id,
            summary: "",
            build,
        }
    }

    /// A defence that may claim to verify ownership and then publishes an EdgePro-kind
    /// description (only its plan-time answers matter here).
    struct Verifying(bool);
    impl Defence for Verifying {
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                verifies_ownership: self.0,
                disclosure: if self.0 {
                    DisclosureKind::Edgepro
                } else {
                    DisclosureKind::Nothing
                },
                ..Capabilities::default()
            }
        }
        fn protect(&self, _: &DefenceContext<'_>, v: &Victim) -> harness_core::Result<Protected> {
            Ok(Protected::unprotected(v))
        }
    }

    /// An attack with a fixed requirement and target (only its plan-time answers matter here).
    struct Fake(Requirement, Option<DisclosureKind>);
    impl Attack for Fake {
        fn requires(&self) -> Requirement {
            self.0
        }
        fn targets(&self) -> Option<DisclosureKind> {
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
        d.add(entry("none", |_| Ok(Box::new(Verifying(false)))));
        d.add(entry("verifying", |_| Ok(Box::new(Verifying(true)))));
        let mut a: Registry<dyn Attack> = Registry::new("attack");
        a.add(entry("scratch", |_| {
            Ok(Box::new(Fake(Requirement::Nothing, None)))
        }));
        a.add(entry("steal", |_| {
            Ok(Box::new(Fake(Requirement::Weights, None)))
        }));
        a.add(entry("guess", |_| {
            Ok(Box::new(Fake(
                Requirement::Weights,
                Some(DisclosureKind::Edgepro),
            )))
        }));
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
            .map(|c| (c.key.defence.clone(), c.key.attack.clone()))
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
                .flat_map(|i| plan.shard(i, n).into_iter().map(Cell::id))
                .collect();
            all.sort();
            let mut want: Vec<String> = plan.cells.iter().map(Cell::id).collect();
            want.sort();
            assert_eq!(all, want, "{n} shards must cover every cell exactly once");
        }
        // Three victims over three shards: each shard holds exactly one victim.
        for i in 0..3 {
            let mut victims: Vec<_> = plan.shard(i, 3).iter().map(|c| c.victim.clone()).collect();
            victims.dedup();
            assert_eq!(victims.len(), 1, "shard {i}: {victims:?}");
        }
    }

    #[test]
    fn an_attack_entry_may_query_its_own_transfer_set() {
        let (d, a) = registries();
        let m = matrix_with(
            "\"none\"",
            "\"scratch\", \"steal\"",
            "[attacks.steal]\ntransfer = \"cifar100\"",
        );
        let plan = Plan::new(&m, &d, &a).unwrap();
        let transfers: Vec<&str> = plan.attacks.iter().map(|e| e.transfer.as_str()).collect();
        assert_eq!(transfers, ["attacker", "cifar100"]);
        assert_eq!(plan.transfer_sets(), ["attacker", "cifar100"]);
        for (value, says) in [
            ("\"synthetic\"", "is a victim's own dataset"),
            (
                "\"cifar1000\"",
                "is neither `attacker` (the attacker's slice) nor a dataset",
            ),
            ("3", "transfer must be a string"),
        ] {
            let m = matrix_with(
                "\"none\"",
                "\"steal\"",
                &format!("[attacks.steal]\ntransfer = {value}"),
            );
            let msg = usage_error(&m, &d, &a);
            assert!(
                msg.contains("[attacks.steal]") && msg.contains(says),
                "{msg}"
            );
        }
        let mut m = matrix("\"none\"", "\"steal\"");
        m.data.transfer = "synthetic".into();
        assert!(
            usage_error(&m, &d, &a).contains("[data]: transfer = \"synthetic\" is a victim's own")
        );
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
    fn classifier_only_defences_are_refused_on_denoisers_before_training() {
        let (_, a) = registries();
        let d = defences::registry();
        let mut m = matrix("\"none\", \"qat\"", "");
        m.axes.models = vec!["dncnn".into()];
        let err = Plan::new(&m, &d, &a).err().unwrap();
        let msg = err.to_string();
        assert!(err.downcast_ref::<UsageError>().is_some(), "{msg}");
        assert!(
            msg.contains("defence `qat` works on classifiers only, but `dncnn` is a denoiser"),
            "{msg}"
        );
        let mut m = matrix("\"none\", \"divqat\"", "");
        m.axes.models = vec!["dncnn".into()];
        let msg = Plan::new(&m, &d, &a).err().unwrap().to_string();
        assert!(
            msg.contains("defence `divqat` works on classifiers only"),
            "{msg}"
        );
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
        assert!(err.contains("adaptive attack on `edgepro`"), "{err}");
    }

    /// `matrix(defences, attacks)` with more TOML after it (tables of settings).
    fn matrix_with(defences: &str, attacks: &str, extra: &str) -> MatrixFile {
        toml::from_str(&format!(
            "name = \"t\"\n[axes]\ndatasets = [\"synthetic\"]\nmodels = [\"resnet20\"]\n\
             defences = [{defences}]\nattacks = [{attacks}]\nseeds = [0]\n{extra}\n"
        ))
        .unwrap()
    }

    /// The usage error `Plan::new` gives `m` (panics when it plans, or fails otherwise).
    fn usage_error(m: &MatrixFile, d: &Registry<dyn Defence>, a: &Registry<dyn Attack>) -> String {
        match Plan::new(m, d, a) {
            Ok(_) => panic!("planned"),
            Err(e) => {
                assert!(
                    e.downcast_ref::<UsageError>().is_some(),
                    "not a usage error: {e}"
                );
                e.to_string()
            }
        }
    }

    #[test]
    fn numeric_settings_out_of_range_are_usage_errors_naming_key_and_range() {
        let (d, a) = registries();
        for (extra, want) in [
            (
                "[victim]\nepochs = 0",
                "victim.epochs must be an integer >= 1, got 0",
            ),
            (
                "[victim]\nbatch_size = 0",
                "victim.batch_size must be an integer >= 1",
            ),
            (
                "[victim]\nlr = -0.1",
                "victim.lr must be a number > 0, got -0.1",
            ),
            ("[victim]\nlr = 0.0", "victim.lr must be a number > 0"),
            ("[victim]\nlr = nan", "victim.lr must be a number > 0"),
            (
                "[victim]\nweight_decay = -1.0",
                "victim.weight_decay must be a number >= 0",
            ),
            ("[victim]\nwidth = 0.0", "victim.width must be a number > 0"),
            (
                "[victim]\nmax_grad_norm = 0.0",
                "victim.max_grad_norm must be a number > 0",
            ),
            (
                "[victim]\nnoise_sigma_255 = 300.0",
                "victim.noise_sigma_255 must be in (0, 255]",
            ),
            (
                "[data]\ntrain_limit = 0",
                "data.train_limit must be an integer >= 1",
            ),
            (
                "[data]\ntrain_limit = 2",
                "data.train_limit = 2 leaves the attacker",
            ),
            (
                "[data]\ntest_limit = 0",
                "data.test_limit must be an integer >= 1",
            ),
            (
                "[data]\nowner = 0.0",
                "data.owner must be a fraction in (0, 1]",
            ),
            (
                "[data]\nattacker = 1.5",
                "data.attacker must be a fraction in (0, 1]",
            ),
            (
                "[data]\nowner = 0.8\nattacker = 0.5",
                "must sum to at most 1",
            ),
            (
                "[budget]\nepochs = 0",
                "budget.epochs must be an integer >= 1, got 0",
            ),
            (
                "[budget]\nqueries = 0",
                "budget.queries must be an integer >= 1, got 0",
            ),
            (
                "[attacks.scratch]\nepochs = 0",
                "attacks.scratch: epochs must be an integer >= 1",
            ),
            (
                "[attacks.scratch]\nqueries = -5",
                "attacks.scratch: queries must be an integer >= 1",
            ),
        ] {
            let m = matrix_with("\"none\"", "\"scratch\"", extra);
            let err = usage_error(&m, &d, &a);
            assert!(err.contains(want), "{extra}: {err}");
        }
        // The ranges' edges plan.
        let m = matrix_with(
            "\"none\"",
            "\"scratch\"",
            "[victim]\nepochs = 1\nweight_decay = 0.0\n[data]\ntrain_limit = 3\n\
             owner = 0.5\nattacker = 0.5\n[budget]\nepochs = 1\nqueries = 1",
        );
        assert!(Plan::new(&m, &d, &a).is_ok());
    }

    #[test]
    fn perturbation_arguments_are_checked() {
        let (d, a) = registries();
        for (entry, want) in [
            (
                "none+top-k:0",
                "top-k's argument must be an integer >= 1, got 0",
            ),
            ("none+top-k:2.5", "top-k's argument must be an integer >= 1"),
            (
                "none+top-k:10",
                "keeps every probability of `synthetic` (10 classes)",
            ),
            (
                "none+reverse-sigmoid:-1",
                "reverse-sigmoid's argument must be a number > 0",
            ),
            (
                "none+reverse-sigmoid:0",
                "reverse-sigmoid's argument must be a number > 0",
            ),
            (
                "none+round:-1",
                "round's argument must be an integer in [0, 7]",
            ),
            (
                "none+round:8",
                "round's argument must be an integer in [0, 7]",
            ),
            (
                "none+gaussian-noise:-0.1",
                "gaussian-noise's argument must be a number > 0",
            ),
            (
                "none+gaussian-noise:0",
                "gaussian-noise's argument must be a number > 0",
            ),
            (
                "none+gaussian-noise:inf",
                "gaussian-noise's argument must be a number > 0",
            ),
            ("none+top1-label:3", "top1-label takes no argument"),
        ] {
            let m = matrix(&format!("\"{entry}\""), "\"scratch\"");
            let err = usage_error(&m, &d, &a);
            let arg = entry.trim_start_matches("none+");
            assert!(err.contains(&format!("`{arg}`")), "{entry}: {err}");
            assert!(err.contains(want), "{entry}: {err}");
        }
        let m = matrix(
            "\"none+top-k:9\", \"none+round:0\", \"none+reverse-sigmoid:2.5\", \
             \"none+gaussian-noise:0.1\"",
            "\"scratch\"",
        );
        let plan = Plan::new(&m, &d, &a).unwrap();
        assert_eq!(plan.defences[0].mode, OutputMode::TopK(9));
    }

    #[test]
    fn duplicate_axis_entries_are_refused_naming_axis_and_entry() {
        let (d, a) = registries();
        let mut m = matrix("\"none\", \"verifying\", \"none\"", "\"scratch\"");
        let err = usage_error(&m, &d, &a);
        assert!(
            err.contains("axes.defences lists `none` more than once"),
            "{err}"
        );
        m = matrix("\"none\"", "\"scratch\", \"steal\", \"scratch\"");
        let err = usage_error(&m, &d, &a);
        assert!(
            err.contains("axes.attacks lists `scratch` more than once"),
            "{err}"
        );
        m = matrix("\"none\"", "\"scratch\"");
        m.axes.seeds = vec![0, 1, 0];
        let err = usage_error(&m, &d, &a);
        assert!(err.contains("axes.seeds lists `0` more than once"), "{err}");
        m = matrix("\"none\"", "\"scratch\"");
        m.axes.models = vec!["resnet20".into(), "resnet20".into()];
        let err = usage_error(&m, &d, &a);
        assert!(err.contains("axes.models lists `resnet20`"), "{err}");
        m = matrix("\"none\"", "\"scratch\"");
        m.axes.datasets = vec!["synthetic".into(), "synthetic".into()];
        let err = usage_error(&m, &d, &a);
        assert!(err.contains("axes.datasets lists `synthetic`"), "{err}");
    }

    #[test]
    fn an_attack_limited_to_defences_it_does_not_run_against_is_refused() {
        let (d, a) = registries();
        let both = "\"none\", \"verifying\"";
        for (attacks, extra, want) in [
            // An adaptive attack limited to a defence it does not target.
            (
                "\"guess\"",
                "[attacks.guess]\ndefences = [\"none\"]",
                "`guess` is an adaptive attack on `edgepro`, and `none` is a `none` entry",
            ),
            // An empty list.
            (
                "\"steal\"",
                "[attacks.steal]\ndefences = []",
                "defences = [] runs the attack against no defence",
            ),
            // An attack that needs nothing gets defence cells of ownership verifiers only.
            (
                "\"scratch\"",
                "[attacks.scratch]\ndefences = [\"none\"]",
                "which `none` does not",
            ),
            // A repeated entry.
            (
                "\"steal\"",
                "[attacks.steal]\ndefences = [\"none\", \"none\"]",
                "lists `none` more than once",
            ),
        ] {
            let m = matrix_with(both, attacks, extra);
            let err = usage_error(&m, &d, &a);
            assert!(err.contains(want), "{extra}: {err}");
        }
        // White-box attacks do not see output perturbations: they run against the base entry.
        let m = matrix_with(
            "\"none\", \"none+top1-label\"",
            "\"steal\"",
            "[attacks.steal]\ndefences = [\"none+top1-label\"]",
        );
        let err = usage_error(&m, &d, &a);
        assert!(err.contains("runs against `none` instead"), "{err}");
        // Still fine: a limit the attack honours.
        let m = matrix_with(
            both,
            "\"guess\"",
            "[attacks.guess]\ndefences = [\"verifying\"]",
        );
        assert!(Plan::new(&m, &d, &a).is_ok());
    }

    #[test]
    fn component_settings_are_checked_at_plan_time_naming_the_entry_and_key() {
        let d = defences::registry();
        let a = attacks::registry();
        let m = matrix_with(
            "\"none\", \"se\"",
            "\"scratch\", \"ft\"",
            "[defences.se]\nuse = \"selective-encryption\"\nratio = 0.0\n",
        );
        let err = usage_error(&m, &d, &a);
        assert!(err.contains("defences.se: "), "{err}");
        assert!(err.contains("`ratio` must be in (0, 1], got 0"), "{err}");
        let m = matrix_with(
            "\"none\"",
            "\"scratch\", \"ft\"",
            "[attacks.ft]\nuse = \"fine-tune\"\nlr = -0.5\n",
        );
        let err = usage_error(&m, &d, &a);
        assert!(err.contains("attacks.ft: "), "{err}");
        assert!(err.contains("`lr` must be in (0, inf), got -0.5"), "{err}");
        // A profile's override is named too.
        let m = matrix_with(
            "\"none\", \"se\"",
            "\"scratch\"",
            "[defences.se]\nuse = \"selective-encryption\"\nranking = \"l1\"\n\
             [profiles.tiny.defences.se]\nlevels = 0\n",
        )
        .with_profile(Some("tiny"))
        .unwrap();
        let err = usage_error(&m, &d, &a);
        assert!(
            err.contains("defences.se (with profiles.tiny.defences.se): "),
            "{err}"
        );
        assert!(err.contains("`levels` must be in [1, 32], got 0"), "{err}");
    }
}
