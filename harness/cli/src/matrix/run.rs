//! Runs a plan: trains each victim once (cached on disk by a hash of what shapes it), protects
//! it with each defence, attacks each protected model, and appends tidy records cell by cell.
//! The harness, not the components, measures time, latency and size, so overhead is measured
//! one way for all.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use datasets::augment::Augment;
use datasets::catalog::{DatasetId, LoadOptions, Normalization};
use datasets::split::{SplitFractions, disjoint_splits, stratified_subset};
use datasets::{ImageSet, Split};
use harness_core::eval_denoise::evaluate_psnr;
use harness_core::protect::{
    AttackContext, DefenceContext, Deployed, Exposure, Measure, Oracle, OwnershipVerifier,
    PlainModel, Protected, Requirement, Victim,
};
use harness_core::train::{
    CrossEntropy, Denoise, Objective, SgdConfig, TrainConfig, TrainOptions, train,
};
use harness_core::{Arch, ModelSpec, ParamStore, Task};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use super::config::{MatrixFile, OptimizerKind};
use super::plan::{CellKey, Plan};
use super::records::{Record, RecordLog};

/// Bumped when the victim cache format or training semantics change.
const VICTIM_CACHE_VERSION: &str = "victim-v1";

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

/// Loaded data of one dataset and seed.
struct Slices {
    owner: ImageSet,
    attacker: ImageSet,
    transfer: ImageSet,
    test: ImageSet,
    normalization: Normalization,
}

/// A protected victim with what the harness measured once for all its attack cells.
struct ProtectedCell {
    protected: Protected,
    protect_seconds: f64,
    /// The owner's predictions on the test set (the reference for fidelity).
    owner_preds: Vec<u32>,
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
    let mine: Vec<&CellKey> = plan.shard(s.shard.0, s.shard.1);
    let pending: Vec<&CellKey> = mine
        .iter()
        .copied()
        .filter(|c| !done.contains(&c.id()))
        .collect();
    let skipped = mine.len() - pending.len();
    let bar = overall_bar(s.progress, mine.len() as u64, skipped as u64);

    // Group by victim (dataset, model, seed), in plan order.
    let mut groups: BTreeMap<(String, String, u64), Vec<&CellKey>> = BTreeMap::new();
    for c in &pending {
        groups
            .entry((c.dataset.clone(), c.model.clone(), c.seed))
            .or_default()
            .push(c);
    }
    let mut data_cache: HashMap<String, (ImageSet, ImageSet)> = HashMap::new();
    for ((dataset, model, seed), cells) in groups {
        bar.set_message(format!("{dataset}/{model}/seed {seed}: data"));
        let prepared =
            contain_panic(|| prepare_group(s, &mut data_cache, &dataset, &model, seed, &bar));
        let (slices, victim) = match prepared {
            Ok(p) => p,
            Err(e) => {
                bar.println(format!(
                    "error: {dataset}/{model}/seed {seed}: {e:#} ({} cells fail)",
                    cells.len()
                ));
                for c in &cells {
                    log.append(&[error_row(s, c, &e)])?;
                    bar.inc(1);
                }
                continue;
            }
        };
        let mut protected: HashMap<String, Result<ProtectedCell, String>> = HashMap::new();
        for cell in cells {
            bar.set_message(cell.id());
            let rows = contain_panic(|| run_cell(s, plan, cell, &slices, &victim, &mut protected))
                .map_err(|e| e.context(format!("cell {}", cell.id())));
            match rows {
                Ok(rows) => log.append(&rows)?,
                Err(e) => {
                    bar.println(format!("error: {e:#}"));
                    log.append(&[error_row(s, cell, &e)])?;
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(Outcome {
        ran: pending.len(),
        skipped,
    })
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
    let transfer = if m.data.transfer == "attacker" {
        attacker.clone()
    } else {
        let (other, _) = load_dataset(s, data_cache, &m.data.transfer)?;
        let n = attacker.len().min(other.len());
        other.select(&stratified_subset(&other, n, seed))
    };

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
            transfer,
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
    });
    if let Task::Denoising { sigma } = task {
        value["objective"] = serde_json::json!(objective.id());
        value["noise_sigma"] = serde_json::json!(sigma);
    }
    let h = Sha256::digest(value.to_string().as_bytes());
    h.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

fn run_cell(
    s: &RunSettings,
    plan: &Plan,
    cell: &CellKey,
    data: &Slices,
    victim: &Victim,
    protected: &mut HashMap<String, Result<ProtectedCell, String>>,
) -> anyhow::Result<Vec<Record>> {
    let row = |metric: &str, value: f64, higher: bool, secs: f64| Record {
        run: s.run_id.clone(),
        dataset: cell.dataset.clone(),
        model: cell.model.clone(),
        defence: cell.defence.clone(),
        attack: cell.attack.clone(),
        seed: cell.seed,
        metric: metric.to_string(),
        value,
        higher_is_better: higher,
        status: "ok".into(),
        error: String::new(),
        wall_seconds: secs,
        config_hash: s.config_hash.clone(),
        git: env!("PROTBENCH_GIT").to_string(),
        cell_rows: 0,
    };
    let mut rows = Vec::new();
    // Denoisers see pixels / 255 (no normalisation), as they were trained.
    let norm = match victim.task {
        Task::Classification => Some(&data.normalization),
        Task::Denoising { .. } => None,
    };

    if victim.task != Task::Classification && cell.attack != "-" {
        anyhow::bail!(
            "attack `{}` measures accuracy and cannot run on the denoiser `{}`",
            cell.attack,
            cell.model
        );
    }

    // Attacks that need no exposure do not depend on the defence.
    if cell.defence == "*" {
        let entry = plan
            .attacks
            .iter()
            .find(|a| a.name == cell.attack)
            .context("attack entry vanished from the plan")?;
        let victim_preds = predict(&victim.model, &data.test, norm, &s.device)?;
        let ctx = attack_context(s, data, victim);
        let start = Instant::now();
        let stolen = entry
            .attack
            .run(&ctx, &Exposure::default(), &entry.budget)?;
        let secs = start.elapsed().as_secs_f64();
        rows.extend(model_rows(
            &row,
            &*stolen.model,
            data,
            &victim_preds,
            s,
            secs,
        )?);
        rows.push(row("attack-seconds", secs, false, secs));
        rows.extend(stolen.measures.iter().map(|m| measure_row(&row, m, secs)));
        return Ok(rows);
    }

    let dentry = plan
        .defences
        .iter()
        .find(|d| d.name == cell.defence)
        .context("defence entry vanished from the plan")?;
    if !protected.contains_key(&dentry.name) {
        let ctx = DefenceContext {
            device: &s.device,
            owner_data: &data.owner,
            normalization: data.normalization,
            seed: cell.seed,
            progress: s.progress,
        };
        let start = Instant::now();
        let result = dentry
            .defence
            .protect(&ctx, victim)
            .map_err(|e| format!("{e}"))
            .and_then(|protected| {
                let protect_seconds = start.elapsed().as_secs_f64();
                // What came back must be what the defence declared (the planner paired it with
                // attacks by that declaration).
                dentry
                    .defence
                    .capabilities()
                    .check(&dentry.id, &protected)
                    .map_err(|e| format!("{e}"))?;
                // A denoiser has no predictions: its quality is measured as PSNR below.
                let owner_preds = match victim.task {
                    Task::Classification => predict(&*protected.owner, &data.test, norm, &s.device)
                        .map_err(|e| format!("{e:#}"))?,
                    Task::Denoising { .. } => Vec::new(),
                };
                Ok(ProtectedCell {
                    protected,
                    protect_seconds,
                    owner_preds,
                })
            });
        protected.insert(dentry.name.clone(), result);
    }
    let (prot, protect_secs, owner_preds) = match protected.get(&dentry.name) {
        Some(Ok(p)) => (&p.protected, p.protect_seconds, &p.owner_preds),
        Some(Err(e)) => anyhow::bail!("defence `{}` failed: {e}", dentry.name),
        None => anyhow::bail!("defence `{}` was not run", dentry.name),
    };

    if cell.attack == "-" {
        match victim.task {
            Task::Classification => {
                let owner_acc = agreement_with_labels(owner_preds, &data.test.labels);
                rows.push(row("owner-accuracy", owner_acc, true, protect_secs));
            }
            Task::Denoising { sigma } => {
                let r = evaluate_psnr(&*prot.owner, &data.test, sigma, cell.seed, 64, &s.device)?;
                rows.push(row("owner-psnr", r.psnr, true, protect_secs));
                // The do-nothing reference: the noisy input itself (same noise for every model).
                rows.push(row("noisy-psnr", r.noisy_psnr, true, protect_secs));
            }
        }
        let (p50, p99) = latency_ms(&*prot.owner, &data.test, norm, &s.device)?;
        rows.push(row("latency-ms-p50", p50, false, protect_secs));
        rows.push(row("latency-ms-p99", p99, false, protect_secs));
        rows.push(row("protect-seconds", protect_secs, false, protect_secs));
        rows.push(row(
            "model-bytes",
            prot.owner.model_bytes() as f64,
            false,
            protect_secs,
        ));
        for (name, level) in &prot.levels {
            match victim.task {
                Task::Classification => {
                    let acc = accuracy(&**level, &data.test, norm, &s.device)?;
                    rows.push(row(
                        &format!("level-accuracy:{name}"),
                        acc,
                        true,
                        protect_secs,
                    ));
                }
                Task::Denoising { sigma } => {
                    let r = evaluate_psnr(&**level, &data.test, sigma, cell.seed, 64, &s.device)?;
                    rows.push(row(
                        &format!("level-psnr:{name}"),
                        r.psnr,
                        true,
                        protect_secs,
                    ));
                }
            }
            // A level may run differently from the owner (EdgePro's no-password level has no
            // hook), so its latency is the harness's measurement too.
            let (p50, _) = latency_ms(&**level, &data.test, norm, &s.device)?;
            rows.push(row(
                &format!("level-latency-ms-p50:{name}"),
                p50,
                false,
                protect_secs,
            ));
        }
        rows.extend(
            prot.measures
                .iter()
                .map(|m| measure_row(&row, m, protect_secs)),
        );
        return Ok(rows);
    }

    let aentry = plan
        .attacks
        .iter()
        .find(|a| a.name == cell.attack)
        .context("attack entry vanished from the plan")?;
    let oracle = Oracle::new(
        prot.owner.clone(),
        dentry.mode,
        dentry.perturbations.clone(),
    )
    .with_limit(aentry.budget.queries);
    // An attack that needs nothing runs here only as the null case of the defence's ownership
    // verifier: it must not see the protected model at all.
    let independent = aentry.attack.requires() == Requirement::Nothing;
    let exposure = if independent {
        Exposure::default()
    } else {
        Exposure {
            stolen: prot.stolen.clone(),
            oracle: Some(oracle.clone()),
        }
    };
    let ctx = attack_context(s, data, victim);
    let start = Instant::now();
    let stolen = aentry.attack.run(&ctx, &exposure, &aentry.budget)?;
    let secs = start.elapsed().as_secs_f64();
    rows.extend(model_rows(
        &row,
        &*stolen.model,
        data,
        owner_preds,
        s,
        secs,
    )?);
    rows.push(row(
        "queries-used",
        oracle.ledger().images() as f64,
        false,
        secs,
    ));
    rows.push(row("attack-seconds", secs, false, secs));
    if let Some(verifier) = &prot.verifier {
        rows.extend(verification_rows(
            &row,
            &**verifier,
            &*stolen.model,
            independent,
            &s.device,
        )?);
    }
    // The harness's own measurement wins over an attack's report of the same metric (the
    // oracle's ledger is the authority on queries).
    for m in &stolen.measures {
        if !rows.iter().any(|r| r.metric == m.metric) {
            rows.push(measure_row(&row, m, secs));
        }
    }
    Ok(rows)
}

fn attack_context<'a>(s: &'a RunSettings, data: &'a Slices, victim: &Victim) -> AttackContext<'a> {
    AttackContext {
        device: &s.device,
        attacker_data: &data.attacker,
        transfer_data: &data.transfer,
        normalization: data.normalization,
        train: victim.train.clone(),
        seed: victim.train.seed,
        progress: s.progress,
    }
}

/// Attacker accuracy and fidelity to the owner's deployed model.
fn model_rows(
    row: &dyn Fn(&str, f64, bool, f64) -> Record,
    model: &dyn Deployed,
    data: &Slices,
    reference: &[u32],
    s: &RunSettings,
    secs: f64,
) -> anyhow::Result<Vec<Record>> {
    let preds = predict(model, &data.test, Some(&data.normalization), &s.device)?;
    let acc = agreement_with_labels(&preds, &data.test.labels);
    let fidelity = harness_core::eval::agreement(&preds, reference);
    // For an attacker, accuracy and fidelity are the thief's gains: lower is better for the owner.
    Ok(vec![
        row("attacker-accuracy", acc, false, secs),
        row("fidelity", fidelity, false, secs),
    ])
}

/// What the defence's ownership verifier says of the attacker's model. On a model derived from
/// the victim a claim is a detection (`ownership-detected`, higher is better for the owner); on
/// an independently trained model it is a false accusation (`ownership-false-claim`, lower is
/// better). The score is recorded too, for ROC curves across cells.
fn verification_rows(
    row: &dyn Fn(&str, f64, bool, f64) -> Record,
    verifier: &dyn OwnershipVerifier,
    suspect: &dyn Deployed,
    independent: bool,
    device: &Device,
) -> anyhow::Result<Vec<Record>> {
    let start = Instant::now();
    let verdict = verifier
        .verify(suspect, device)
        .context("the ownership verifier failed")?;
    let secs = start.elapsed().as_secs_f64();
    let claim = if verdict.derived { 1.0 } else { 0.0 };
    Ok(if independent {
        vec![
            row("ownership-false-claim", claim, false, secs),
            row("verifier-score-independent", verdict.score, false, secs),
            row("verify-seconds", secs, false, secs),
        ]
    } else {
        vec![
            row("ownership-detected", claim, true, secs),
            row("verifier-score", verdict.score, true, secs),
            row("verify-seconds", secs, false, secs),
        ]
    })
}

fn measure_row(row: &dyn Fn(&str, f64, bool, f64) -> Record, m: &Measure, secs: f64) -> Record {
    row(&m.metric, m.value, m.higher_is_better, secs)
}

fn error_row(s: &RunSettings, cell: &CellKey, e: &anyhow::Error) -> Record {
    Record {
        run: s.run_id.clone(),
        dataset: cell.dataset.clone(),
        model: cell.model.clone(),
        defence: cell.defence.clone(),
        attack: cell.attack.clone(),
        seed: cell.seed,
        metric: "error".into(),
        value: f64::NAN,
        higher_is_better: false,
        status: "error".into(),
        error: format!("{e:#}"),
        wall_seconds: 0.0,
        config_hash: s.config_hash.clone(),
        git: env!("PROTBENCH_GIT").to_string(),
        cell_rows: 0,
    }
}

fn predict(
    model: &dyn Deployed,
    set: &ImageSet,
    norm: Option<&Normalization>,
    device: &Device,
) -> anyhow::Result<Vec<u32>> {
    let idx: Vec<usize> = (0..set.len()).collect();
    let mut out = Vec::with_capacity(set.len());
    for chunk in idx.chunks(256) {
        let xs = datasets::batch::to_tensor(set, chunk, norm, device)?;
        let logits = model.logits(&xs)?;
        out.extend(logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?);
    }
    Ok(out)
}

fn accuracy(
    model: &dyn Deployed,
    set: &ImageSet,
    norm: Option<&Normalization>,
    device: &Device,
) -> anyhow::Result<f64> {
    let preds = predict(model, set, norm, device)?;
    Ok(agreement_with_labels(&preds, &set.labels))
}

fn agreement_with_labels(preds: &[u32], labels: &[u32]) -> f64 {
    harness_core::eval::agreement(preds, labels)
}

/// Batch-1 latency of a deployment: median and 99th percentile over 100 timed queries after 10
/// warm-up queries, in milliseconds.
fn latency_ms(
    model: &dyn Deployed,
    set: &ImageSet,
    norm: Option<&Normalization>,
    device: &Device,
) -> anyhow::Result<(f64, f64)> {
    let mut times = Vec::with_capacity(100);
    for i in 0..110 {
        let xs = datasets::batch::to_tensor(set, &[i % set.len()], norm, device)?;
        let start = Instant::now();
        let out = model.logits(&xs)?;
        // Force the computation on lazy devices before stopping the clock.
        let _ = out
            .to_dtype(candle_core::DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        if i >= 10 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((p / 100.0) * (times.len() - 1) as f64).round() as usize];
    Ok((pct(50.0), pct(99.0)))
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

    fn row(metric: &str, value: f64, higher: bool, secs: f64) -> Record {
        Record {
            run: "r".into(),
            dataset: "d".into(),
            model: "m".into(),
            defence: "x".into(),
            attack: "a".into(),
            seed: 0,
            metric: metric.into(),
            value,
            higher_is_better: higher,
            status: "ok".into(),
            error: String::new(),
            wall_seconds: secs,
            config_hash: String::new(),
            git: String::new(),
            cell_rows: 0,
        }
    }

    fn value(rows: &[Record], metric: &str) -> Option<(f64, bool)> {
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
        let stolen = verification_rows(&row, &Threshold, &Constant(0.9), false, &dev).unwrap();
        assert_eq!(value(&stolen, "ownership-detected"), Some((1.0, true)));
        assert!(value(&stolen, "ownership-false-claim").is_none());
        let missed = verification_rows(&row, &Threshold, &Constant(0.1), false, &dev).unwrap();
        assert_eq!(value(&missed, "ownership-detected"), Some((0.0, true)));
        let null = verification_rows(&row, &Threshold, &Constant(0.9), true, &dev).unwrap();
        assert_eq!(value(&null, "ownership-false-claim"), Some((1.0, false)));
        assert!(value(&null, "ownership-detected").is_none());
        let score = value(&null, "verifier-score-independent").unwrap().0;
        assert!((score - 0.9).abs() < 1e-6);
    }
}
