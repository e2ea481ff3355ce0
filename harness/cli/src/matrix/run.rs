//! Runs a plan victim by victim: prepares each victim once ([`super::victims`]), protects it with
//! each defence once, times every deployment of the victim together, then runs its cells and
//! appends their records cell by cell. The harness, not the components, measures quality
//! ([`super::measure`]), time, latency and size, so overhead is measured one way for all.
//!
//! Latency: the owner's deployment of every pending defence cell of a victim, each of its
//! access levels and the unprotected victim itself are timed interleaved in the same rounds at
//! batch 1 ([`harness_core::latency`]). Each defence cell records its median and p99
//! (`latency-ms-p50`, `latency-ms-p99`) and its paired ratio to the unprotected victim
//! (`latency-ratio`, with `latency-ratio-low` / `-high`, the 95% interval of that median): the
//! `none` defence deploys the victim as is, so its ratio is a live check of the method, within a
//! few percent of 1. Every timing row is marked `timing`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use datasets::ImageSet;
use harness_core::latency::{LatencyPlan, Summary, paired_ratio, time_deployments};
use harness_core::protect::{
    AttackContext, DefenceContext, Deployed, Exposure, Measure, Oracle, OwnershipVerifier,
    Protected, Requirement, Victim,
};
use indicatif::{ProgressBar, ProgressStyle};

use super::cell::{Cell, CellKey, Job, VictimKey};
use super::config::MatrixFile;
use super::measure::{Probe, probe_for};
use super::plan::Plan;
use super::records::{Record, RecordLog};
use super::victims::{Slices, Victims};

/// Everything a run needs besides the plan.
pub struct RunSettings {
    /// The matrix after its profile.
    pub matrix: MatrixFile,
    /// Run id (folder name under the results dir).
    pub run_id: String,
    /// Hash of the matrix configuration.
    pub config_hash: String,
    /// Results root (`results/`).
    pub results_dir: PathBuf,
    /// Data root.
    pub data_dir: PathBuf,
    /// Compute device.
    pub device: Device,
    /// Show progress.
    pub progress: bool,
    /// Shard `(i, n)`: run only the cells of shard i of n.
    pub shard: (usize, usize),
}

/// What a run did.
pub struct Outcome {
    /// Cells run now.
    pub ran: usize,
    /// Cells skipped because a previous run finished them.
    pub skipped: usize,
}

/// Runs every pending cell of the plan in this shard.
pub fn execute(s: &RunSettings, plan: &Plan, log: &RecordLog) -> anyhow::Result<Outcome> {
    let done = log.finished_cells()?;
    let mine: Vec<&Cell> = plan.shard(s.shard.0, s.shard.1);
    let pending: Vec<&Cell> = mine
        .iter()
        .copied()
        .filter(|c| !done.contains(&c.id()))
        .collect();
    let skipped = mine.len() - pending.len();
    let bar = overall_bar(s.progress, mine.len() as u64, skipped as u64);

    // Group by victim, in plan order.
    let mut groups: BTreeMap<&VictimKey, Vec<&Cell>> = BTreeMap::new();
    for c in &pending {
        groups.entry(&c.victim).or_default().push(c);
    }
    let mut victims = Victims::new(s, plan.transfer_sets());
    for (v, cells) in groups {
        let name = format!("{}/{}/seed {}", v.dataset, v.model, v.seed);
        bar.set_message(format!("{name}: data"));
        let (slices, victim) = match contain_panic(|| victims.prepare(v, &bar)) {
            Ok(p) => p,
            Err(e) => {
                bar.println(format!("error: {name}: {e:#} ({} cells fail)", cells.len()));
                for c in &cells {
                    log.append(&[error_row(s, &c.key, &e)])?;
                    bar.inc(1);
                }
                continue;
            }
        };
        let mut run = VictimRun::new(s, plan, &slices, &victim, v.seed);
        let defences: Vec<usize> = cells
            .iter()
            .filter_map(|c| match c.job {
                Job::Reference { defence } => Some(defence),
                _ => None,
            })
            .collect();
        if !defences.is_empty() {
            bar.set_message(format!("{name}: protecting and timing"));
            journal(
                s,
                &format!("{name}: protecting and timing {} defences", defences.len()),
            );
            run.time_deployments(&defences);
        }
        for cell in cells {
            bar.set_message(cell.id());
            let start = Instant::now();
            let rows = contain_panic(|| run.cell(cell))
                .map_err(|e| e.context(format!("cell {}", cell.id())));
            let outcome = match rows {
                Ok(rows) => {
                    log.append(&rows)?;
                    "done"
                }
                Err(e) => {
                    bar.println(format!("error: {e:#}"));
                    log.append(&[error_row(s, &cell.key, &e)])?;
                    "failed"
                }
            };
            bar.inc(1);
            journal(
                s,
                &format!(
                    "cell {}/{} {} {outcome} in {:.0} s",
                    bar.position(),
                    bar.length().unwrap_or(0),
                    cell.id(),
                    start.elapsed().as_secs_f64()
                ),
            );
        }
    }
    bar.finish_and_clear();
    Ok(Outcome {
        ran: pending.len(),
        skipped,
    })
}

/// A progress line for logs: when progress is on but stderr is not a terminal (a run under
/// `nohup` or CI), the bar draws nothing, so each victim's protection and each finished cell
/// get one timestamped line instead.
fn journal(s: &RunSettings, line: &str) {
    use std::io::IsTerminal;
    if s.progress && !std::io::stderr().is_terminal() {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (h, m, sec) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
        eprintln!("[{h:02}:{m:02}:{sec:02} UTC] {line}");
    }
}

/// Runs `f`, turning a panic (a bug in a component) into an error, so that it fails its cell
/// with the panic's message instead of killing the run before the report is written.
fn contain_panic<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            Err(anyhow::anyhow!("panicked (a bug; please report it): {msg}"))
        }
    }
}

fn overall_bar(show: bool, total: u64, done: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("cells [{bar:30.green/white}] {pos}/{len} (eta {eta}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_position(done);
    bar
}

/// A protected victim with what the harness measured once for all its cells.
struct ProtectedCell {
    protected: Protected,
    protect_seconds: f64,
    /// The owner's answers on the test set (the reference for fidelity).
    reference: Vec<u32>,
}

/// Batch-1 times (ms) of one defence's deployments and of the unprotected victim, from the
/// same interleaved rounds.
struct Timed {
    owner: Vec<f64>,
    levels: Vec<Vec<f64>>,
    unprotected: Arc<Vec<f64>>,
}

/// The state of one victim while its cells run: the defences applied so far and the latencies.
struct VictimRun<'a> {
    s: &'a RunSettings,
    plan: &'a Plan,
    data: &'a Slices,
    victim: &'a Victim,
    seed: u64,
    probe: Box<dyn Probe + 'a>,
    /// By defence entry; entries that differ only by the API's perturbations (`qat`,
    /// `qat+top1-label`) share one protection, since perturbations act in the oracle only.
    protected: HashMap<usize, Result<Arc<ProtectedCell>, String>>,
    timed: HashMap<usize, Result<Timed, String>>,
}

impl<'a> VictimRun<'a> {
    fn new(
        s: &'a RunSettings,
        plan: &'a Plan,
        data: &'a Slices,
        victim: &'a Victim,
        seed: u64,
    ) -> Self {
        Self {
            s,
            plan,
            data,
            victim,
            seed,
            probe: probe_for(victim.task, data, seed, &s.device),
            protected: HashMap::new(),
            timed: HashMap::new(),
        }
    }

    /// Protects with defence entry `d` once (later calls find the same result), and returns it.
    fn protected(&mut self, d: usize) -> anyhow::Result<&ProtectedCell> {
        if !self.protected.contains_key(&d) {
            let base = |e: usize| self.plan.defences[e].name.split('+').next();
            let same = self
                .protected
                .iter()
                .find(|(e, _)| base(**e) == base(d))
                .map(|(_, r)| r.clone());
            let result = match same {
                Some(r) => r,
                None => self.protect(d).map(Arc::new).map_err(|e| format!("{e:#}")),
            };
            self.protected.insert(d, result);
        }
        self.applied(d)
    }

    /// The result of defence entry `d`, applied earlier by [`Self::protected`].
    fn applied(&self, d: usize) -> anyhow::Result<&ProtectedCell> {
        let entry = &self.plan.defences[d];
        match self.protected.get(&d) {
            Some(Ok(p)) => Ok(p),
            Some(Err(e)) => anyhow::bail!("defence `{}` failed: {e}", entry.name),
            None => anyhow::bail!("defence `{}` was not run", entry.name),
        }
    }

    fn protect(&self, d: usize) -> anyhow::Result<ProtectedCell> {
        let entry = &self.plan.defences[d];
        let ctx = DefenceContext {
            device: &self.s.device,
            owner_data: &self.data.owner,
            normalization: self.data.normalization,
            seed: self.seed,
            progress: self.s.progress,
        };
        let start = Instant::now();
        let protected = entry.defence.protect(&ctx, self.victim)?;
        let protect_seconds = start.elapsed().as_secs_f64();
        // What came back must be what the defence declared (the planner paired it with attacks
        // by that declaration).
        entry.defence.capabilities().check(&entry.id, &protected)?;
        let reference = self.probe.reference(&*protected.owner)?;
        Ok(ProtectedCell {
            protected,
            protect_seconds,
            reference,
        })
    }

    /// Protects with each of `defences` and times all their deployments with the unprotected
    /// victim in the same rounds. A defence that fails is left out (its cells fail with its
    /// error); a timing that fails fails the defence cells being timed.
    fn time_deployments(&mut self, defences: &[usize]) {
        let ok: Vec<usize> = defences
            .iter()
            .copied()
            .filter(|&d| self.protected(d).is_ok())
            .collect();
        let mut subjects: Vec<&dyn Deployed> = vec![&self.victim.model];
        for d in &ok {
            if let Some(Ok(p)) = self.protected.get(d) {
                subjects.push(&*p.protected.owner);
                subjects.extend(p.protected.levels.iter().map(|(_, l)| &**l));
            }
        }
        let times = time_deployments(
            &subjects,
            &self.data.test,
            self.probe.normalization(),
            LatencyPlan::default(),
            &self.s.device,
        );
        let mut times = match times {
            Ok(t) => t.into_iter(),
            Err(e) => {
                for d in ok {
                    self.timed
                        .insert(d, Err(format!("timing the deployments failed: {e}")));
                }
                return;
            }
        };
        let unprotected = Arc::new(times.next().unwrap_or_default());
        for d in ok {
            let levels = match self.protected.get(&d) {
                Some(Ok(p)) => p.protected.levels.len(),
                _ => 0,
            };
            let owner = times.next().unwrap_or_default();
            let levels = times.by_ref().take(levels).collect();
            self.timed.insert(
                d,
                Ok(Timed {
                    owner,
                    levels,
                    unprotected: unprotected.clone(),
                }),
            );
        }
    }

    /// The rows of one cell.
    fn cell(&mut self, cell: &Cell) -> anyhow::Result<Vec<Record>> {
        let attack = match cell.job {
            Job::Reference { defence } => return self.reference_cell(cell, defence),
            Job::Unexposed { attack } | Job::Attack { attack, .. } => attack,
        };
        if let Some(why) = self.probe.refuses_attacks() {
            anyhow::bail!(
                "attack `{}` cannot run on `{}`: {why}",
                cell.key.attack,
                cell.key.model
            );
        }
        let entry = &self.plan.attacks[attack];
        let ctx = attack_context(
            self.s,
            self.data,
            self.data.transfer(&entry.transfer)?,
            self.victim,
        );
        let Some(d) = cell.defence() else {
            // No exposure: the attack does not depend on the defence; fidelity is to the victim.
            let reference = self.probe.reference(&self.victim.model)?;
            let start = Instant::now();
            let stolen = entry
                .attack
                .run(&ctx, &Exposure::default(), &entry.budget)?;
            let secs = start.elapsed().as_secs_f64();
            let mut m = self.probe.stolen(&*stolen.model, &reference)?;
            m.push(Measure::timing("attack-seconds", secs));
            m.extend(stolen.measures.iter().cloned());
            return Ok(rows(self.s, &cell.key, &m, secs));
        };
        let dentry = &self.plan.defences[d];
        self.protected(d)?;
        let prot = self.applied(d)?;
        let oracle = Oracle::new(
            prot.protected.owner.clone(),
            dentry.mode,
            dentry.perturbations.clone(),
        )
        .with_limit(entry.budget.queries);
        // An attack that needs nothing runs here only as the null case of the defence's
        // ownership verifier: it must not see the protected model at all.
        let independent = entry.attack.requires() == Requirement::Nothing;
        let exposure = if independent {
            Exposure::default()
        } else {
            Exposure {
                stolen: prot.protected.stolen.clone(),
                oracle: Some(oracle.clone()),
            }
        };
        let start = Instant::now();
        let stolen = entry.attack.run(&ctx, &exposure, &entry.budget)?;
        let secs = start.elapsed().as_secs_f64();
        let mut m = self.probe.stolen(&*stolen.model, &prot.reference)?;
        m.push(Measure::lower(
            "queries-used",
            oracle.ledger().images() as f64,
        ));
        m.push(Measure::timing("attack-seconds", secs));
        let mut out = rows(self.s, &cell.key, &m, secs);
        if let Some(verifier) = &prot.protected.verifier {
            let start = Instant::now();
            let v = verification(&**verifier, &*stolen.model, independent, &self.s.device)?;
            out.extend(rows(self.s, &cell.key, &v, start.elapsed().as_secs_f64()));
        }
        // The harness's own measurement wins over an attack's report of the same metric (the
        // oracle's ledger is the authority on queries).
        for m in &stolen.measures {
            if !out.iter().any(|r| r.metric == m.metric) {
                out.push(record(self.s, &cell.key, m, secs));
            }
        }
        Ok(out)
    }

    /// A defence's own rows: the owner's quality, latency, size, access levels and measures.
    fn reference_cell(&mut self, cell: &Cell, d: usize) -> anyhow::Result<Vec<Record>> {
        self.protected(d)?;
        let timed = match self.timed.get(&d) {
            Some(Ok(t)) => t,
            Some(Err(e)) => anyhow::bail!("{e}"),
            None => anyhow::bail!("the deployments of defence {d} were not timed"),
        };
        let prot = self.applied(d)?;
        let p = &prot.protected;
        let mut m = self.probe.owner(&*p.owner, &prot.reference)?;
        m.extend(latency_measures("", &timed.owner, &timed.unprotected));
        m.push(Measure::timing("protect-seconds", prot.protect_seconds));
        m.push(Measure::lower("model-bytes", p.owner.model_bytes() as f64));
        for ((name, level), times) in p.levels.iter().zip(&timed.levels) {
            m.extend(self.probe.level(name, &**level)?);
            // A level may run differently from the owner (EdgePro's no-password level has no
            // hook), so its latency is the harness's measurement too.
            let l = latency_measures(&format!(":{name}"), times, &timed.unprotected);
            m.extend(
                l.into_iter()
                    .filter(|x| !x.metric.contains("p99"))
                    .map(|x| Measure {
                        metric: format!("level-{}", x.metric),
                        ..x
                    }),
            );
        }
        m.extend(p.measures.iter().cloned());
        if let Some(check) = &p.test_set_check {
            m.extend(self.probe.test_set(&**check, &prot.reference)?);
        }
        Ok(rows(self.s, &cell.key, &m, prot.protect_seconds))
    }
}

/// Latency rows of one deployment: p50, p99 and the paired ratio to the unprotected victim with
/// its interval, each name followed by `suffix` (`:LEVEL` for an access level).
fn latency_measures(suffix: &str, times: &[f64], unprotected: &[f64]) -> Vec<Measure> {
    let summary = Summary::of(times);
    let ratio = paired_ratio(times, unprotected);
    vec![
        Measure::timing(format!("latency-ms-p50{suffix}"), summary.p50),
        Measure::timing(format!("latency-ms-p99{suffix}"), summary.p99),
        Measure::timing(format!("latency-ratio{suffix}"), ratio.median),
        Measure::timing(format!("latency-ratio-low{suffix}"), ratio.low),
        Measure::timing(format!("latency-ratio-high{suffix}"), ratio.high),
    ]
}

fn attack_context<'a>(
    s: &'a RunSettings,
    data: &'a Slices,
    transfer: &'a ImageSet,
    victim: &Victim,
) -> AttackContext<'a> {
    AttackContext {
        device: &s.device,
        attacker_data: &data.attacker,
        transfer_data: transfer,
        normalization: data.normalization,
        train: victim.train.clone(),
        seed: victim.train.seed,
        progress: s.progress,
    }
}

/// What the defence's ownership verifier says of the attacker's model. On a model derived from
/// the victim a claim is a detection (`ownership-detected`, higher is better for the owner); on
/// an independently trained model it is a false accusation (`ownership-false-claim`, lower is
/// better). The score is recorded too, for ROC curves across cells.
fn verification(
    verifier: &dyn OwnershipVerifier,
    suspect: &dyn Deployed,
    independent: bool,
    device: &Device,
) -> anyhow::Result<Vec<Measure>> {
    let start = Instant::now();
    let verdict = verifier
        .verify(suspect, device)
        .context("the ownership verifier failed")?;
    let secs = start.elapsed().as_secs_f64();
    let claim = if verdict.derived { 1.0 } else { 0.0 };
    Ok(if independent {
        vec![
            Measure::lower("ownership-false-claim", claim),
            Measure::lower("verifier-score-independent", verdict.score),
            Measure::timing("verify-seconds", secs),
        ]
    } else {
        vec![
            Measure::higher("ownership-detected", claim),
            Measure::higher("verifier-score", verdict.score),
            Measure::timing("verify-seconds", secs),
        ]
    })
}

/// The record of one measured value of a cell; `secs` is the wall time of the stage that
/// produced it.
fn record(s: &RunSettings, key: &CellKey, m: &Measure, secs: f64) -> Record {
    Record {
        run: s.run_id.clone(),
        dataset: key.dataset.clone(),
        model: key.model.clone(),
        defence: key.defence.clone(),
        attack: key.attack.clone(),
        seed: key.seed,
        metric: m.metric.clone(),
        value: m.value,
        higher_is_better: m.higher_is_better,
        status: "ok".into(),
        error: String::new(),
        wall_seconds: secs,
        config_hash: s.config_hash.clone(),
        git: env!("PROTBENCH_GIT").to_string(),
        cell_rows: 0,
        timing: Some(m.timing),
    }
}

fn rows(s: &RunSettings, key: &CellKey, measures: &[Measure], secs: f64) -> Vec<Record> {
    measures.iter().map(|m| record(s, key, m, secs)).collect()
}

fn error_row(s: &RunSettings, key: &CellKey, e: &anyhow::Error) -> Record {
    Record {
        metric: "error".into(),
        value: f64::NAN,
        higher_is_better: false,
        status: "error".into(),
        error: format!("{e:#}"),
        wall_seconds: 0.0,
        timing: Some(false),
        ..record(s, key, &Measure::lower("error", f64::NAN), 0.0)
    }
}

/// Results folder of a run: `RESULTS/<run-id>`, and `RESULTS/<run-id>-shard-IofN` for shard I of
/// N, so shards sharing one results root (a shared volume) never write one folder.
pub fn run_dir(results: &Path, run_id: &str, (i, n): (usize, usize)) -> PathBuf {
    if n > 1 {
        results.join(format!("{run_id}-shard-{}of{n}", i + 1))
    } else {
        results.join(run_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;
    use harness_core::protect::Verdict;

    /// A suspect whose logits are a constant: the verifier below reads it.
    struct Constant(f32);
    impl Deployed for Constant {
        fn logits(&self, images: &Tensor) -> harness_core::Result<Tensor> {
            Ok(Tensor::full(self.0, (images.dim(0)?, 2), images.device())?)
        }
        fn model_bytes(&self) -> usize {
            0
        }
    }

    /// Claims derivation when the suspect's first logit exceeds one half.
    struct Threshold;
    impl OwnershipVerifier for Threshold {
        fn verify(&self, suspect: &dyn Deployed, device: &Device) -> harness_core::Result<Verdict> {
            let x = Tensor::zeros((1, 3, 4, 4), candle_core::DType::F32, device)?;
            let score = f64::from(suspect.logits(&x)?.flatten_all()?.to_vec1::<f32>()?[0]);
            Ok(Verdict {
                derived: score > 0.5,
                score,
            })
        }
    }

    fn value(rows: &[Measure], metric: &str) -> Option<(f64, bool)> {
        rows.iter()
            .find(|r| r.metric == metric)
            .map(|r| (r.value, r.higher_is_better))
    }

    #[test]
    fn a_panic_fails_its_cell_with_its_message() {
        let err = contain_panic::<()>(|| panic!("index out of bounds")).unwrap_err();
        assert!(
            err.to_string().contains("panicked") && err.to_string().contains("out of bounds"),
            "{err}"
        );
        let ok = contain_panic(|| Ok(3)).unwrap();
        assert_eq!(ok, 3);
    }

    #[test]
    fn a_stolen_copy_is_a_detection_and_an_independent_model_a_false_claim() {
        let dev = Device::Cpu;
        let stolen = verification(&Threshold, &Constant(0.9), false, &dev).unwrap();
        assert_eq!(value(&stolen, "ownership-detected"), Some((1.0, true)));
        assert!(value(&stolen, "ownership-false-claim").is_none());
        let missed = verification(&Threshold, &Constant(0.1), false, &dev).unwrap();
        assert_eq!(value(&missed, "ownership-detected"), Some((0.0, true)));
        let null = verification(&Threshold, &Constant(0.9), true, &dev).unwrap();
        assert_eq!(value(&null, "ownership-false-claim"), Some((1.0, false)));
        assert!(value(&null, "ownership-detected").is_none());
        let score = value(&null, "verifier-score-independent").unwrap().0;
        assert!((score - 0.9).abs() < 1e-6);
    }

    #[test]
    fn every_latency_row_is_marked_a_timing_and_named_for_its_deployment() {
        let rows = latency_measures(":level-0", &[2.0, 2.2, 2.4], &[1.0, 1.1, 1.2]);
        let names: Vec<&str> = rows.iter().map(|m| m.metric.as_str()).collect();
        assert_eq!(
            names,
            [
                "latency-ms-p50:level-0",
                "latency-ms-p99:level-0",
                "latency-ratio:level-0",
                "latency-ratio-low:level-0",
                "latency-ratio-high:level-0"
            ]
        );
        assert!(rows.iter().all(|m| m.timing && !m.higher_is_better));
        assert_eq!(rows[0].value, 2.2);
        assert_eq!(rows[2].value, 2.0);
    }
}
