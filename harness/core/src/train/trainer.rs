//! The training loop shared by victims, attackers and protections.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use datasets::ImageSet;
use datasets::augment::Augment;
use datasets::batch::{BatchConfig, epoch_batches, num_batches};
use datasets::catalog::Normalization;
use indicatif::{ProgressBar, ProgressStyle};

use super::checkpoint::Checkpoint;
use super::{Objective, Schedule, Sgd, SgdConfig};
use crate::eval::{EvalReport, evaluate};
use crate::{Error, Model, ParamStore, Result};

/// Everything that shapes a training run's result. Recorded with results and folded into the
/// checkpoint fingerprint, so a resumed run is the same run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per optimisation step.
    pub batch_size: usize,
    /// Optimiser settings (the learning rate is the schedule's base).
    pub sgd: SgdConfig,
    /// Learning-rate schedule, evaluated per step.
    pub schedule: Schedule,
    /// Random crop and flip; `None` trains on the images as they are.
    pub augment: Option<Augment>,
    /// Per-channel normalisation applied after scaling pixels to 0..1.
    pub normalization: Option<Normalization>,
    /// Seed of the shuffling and augmentation streams (weights take their own seed).
    pub seed: u64,
}

impl Default for TrainConfig {
    /// The standard CIFAR recipe: SGD 0.1, Nesterov momentum 0.9, weight decay 5e-4, cosine,
    /// batch 128, crop + flip.
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 128,
            sgd: SgdConfig::default(),
            schedule: Schedule::default(),
            augment: Some(Augment::default()),
            normalization: None,
            seed: 0,
        }
    }
}

/// Called after every optimiser step, e.g. to re-apply a pruning mask.
pub type StepHook<'a> = &'a (dyn Fn() -> Result<()> + Sync);

/// Called with the 0-based epoch before each epoch runs (schedules that change the model, such
/// as freezing quantization observers after some epochs). Also called for the first epoch of a
/// resumed run, so a hook that sets state from the epoch alone resumes correctly.
pub type EpochHook<'a> = &'a (dyn Fn(usize) -> Result<()> + Sync);

/// How a run is carried out: display, checkpoints, which parameters move, per-step hooks.
#[derive(Default)]
pub struct TrainOptions<'a> {
    /// Show a progress bar with images per second on stderr.
    pub progress: bool,
    /// Print one summary line per epoch on stderr.
    pub log_epochs: bool,
    /// Save a checkpoint here after every epoch and resume from it when it exists.
    pub checkpoint: Option<PathBuf>,
    /// Evaluate on this set after every epoch (classification only).
    pub eval_set: Option<&'a ImageSet>,
    /// Train only parameters whose name starts with one of these prefixes (e.g. `fc.` for
    /// fine-tuning the last layer); `None` trains every parameter.
    pub train_only: Option<Vec<String>>,
    /// Runs after every optimiser step.
    pub after_step: Option<StepHook<'a>>,
    /// Runs before every epoch.
    pub before_epoch: Option<EpochHook<'a>>,
    /// Stop after this many epochs in this process (with a checkpoint, a later call resumes):
    /// for time-sliced jobs on preemptible machines.
    pub stop_after_epochs: Option<usize>,
    /// Names the build running this process (version and git commit), stored with every epoch:
    /// a run resumed on another build then says which epochs ran on which.
    pub build: Option<String>,
}

/// What happened in one epoch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochStats {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Fraction of training images predicted right while training (augmented, train mode).
    pub train_accuracy: Option<f64>,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    /// Wall time of the epoch's training steps.
    pub seconds: f64,
    /// Training throughput over the epoch.
    pub images_per_second: f64,
    /// Evaluation after the epoch, when an eval set was given.
    pub eval: Option<EvalReport>,
    /// The build that ran the epoch ([`TrainOptions::build`]), when the caller named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
}

/// The outcome of a run: per-epoch history and overall throughput.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainReport {
    /// One entry per epoch, including epochs restored from a checkpoint.
    pub history: Vec<EpochStats>,
    /// Images seen by the optimiser (all epochs, including restored ones).
    pub images_seen: usize,
    /// Training wall time of the epochs run in this process (evaluation excluded).
    pub train_seconds: f64,
    /// Images per second over the epochs run in this process.
    pub images_per_second: f64,
    /// Epoch from which this process resumed (0 for a fresh run).
    pub resumed_from_epoch: usize,
}

/// Trains `model` (whose variables live in `params`) on `set` with `objective`.
///
/// Deterministic for a given seed, configuration and thread count: shuffling and augmentation
/// are derived from `(cfg.seed, epoch)`, and initial weights from the `ParamStore`'s seed.
pub fn train(
    model: &dyn Model,
    params: &ParamStore,
    set: &ImageSet,
    cfg: &TrainConfig,
    objective: &dyn Objective,
    opts: &TrainOptions<'_>,
    device: &Device,
) -> Result<TrainReport> {
    if cfg.batch_size == 0 {
        return Err(Error::Config("batch size must be at least 1".into()));
    }
    if set.is_empty() {
        return Err(Error::Config("the training set is empty".into()));
    }
    let batch_cfg = BatchConfig {
        batch_size: cfg.batch_size,
        shuffle: true,
        // Keep every image: small --train-limit runs would otherwise lose a large share.
        drop_last: false,
        augment: cfg.augment,
        normalization: cfg.normalization,
    };
    let steps_per_epoch = num_batches(set.len(), &batch_cfg);
    let total_steps = steps_per_epoch * cfg.epochs;
    let vars: Vec<_> = params
        .trainable()
        .into_iter()
        .filter(|(name, _)| match &opts.train_only {
            None => true,
            Some(prefixes) => prefixes.iter().any(|p| name.starts_with(p.as_str())),
        })
        .collect();
    if vars.is_empty() {
        return Err(Error::Config(format!(
            "no parameter matches the prefixes {:?}",
            opts.train_only.as_deref().unwrap_or_default()
        )));
    }
    let mut opt = Sgd::new(vars, cfg.sgd)?;

    let fingerprint = Checkpoint::fingerprint(
        cfg,
        model.spec(),
        objective,
        set,
        opts.train_only.as_deref(),
    );
    let mut history = Vec::new();
    if let Some(path) = opts.checkpoint.as_ref().filter(|p| p.exists()) {
        let ckpt = Checkpoint::load(path, device)?;
        ckpt.restore(&fingerprint, params, &mut opt)?;
        if let Some(name) = params.first_non_finite()? {
            return Err(Error::BadFile {
                path: path.clone(),
                message: format!(
                    "tensor `{name}` holds NaN or infinite values: the checkpoint is corrupt or \
                     comes from a diverged run; delete it to start afresh"
                ),
            });
        }
        history = ckpt.history;
        if opts.log_epochs {
            eprintln!(
                "resuming from {} after epoch {}/{}",
                path.display(),
                history.len(),
                cfg.epochs
            );
        }
    }
    let resumed_from_epoch = history.len();

    let mut train_seconds = 0.0;
    let mut images_this_run = 0usize;
    let last_epoch = match opts.stop_after_epochs {
        Some(n) => (resumed_from_epoch + n).min(cfg.epochs),
        None => cfg.epochs,
    };
    for epoch in resumed_from_epoch..last_epoch {
        if let Some(hook) = opts.before_epoch {
            hook(epoch)?;
        }
        let bar = epoch_bar(opts.progress, steps_per_epoch, epoch, cfg.epochs);
        let start = Instant::now();
        let (mut loss_sum, mut correct, mut counted, mut seen) = (0.0f64, 0usize, 0usize, 0usize);
        let mut lr = cfg.sgd.lr;
        for (i, batch) in
            epoch_batches(set, &batch_cfg, cfg.seed, epoch as u64, device)?.enumerate()
        {
            let batch = batch?;
            let step = epoch * steps_per_epoch + i;
            lr = cfg
                .schedule
                .lr_at(cfg.sgd.lr, step, total_steps, steps_per_epoch);
            opt.set_learning_rate(lr);
            let out = objective.loss(model, &batch)?;
            opt.backward_step(&out.loss)?;
            if let Some(hook) = opts.after_step {
                hook()?;
            }
            let n = batch.indices.len();
            let loss = out.loss.to_scalar::<f32>()? as f64;
            if !loss.is_finite() {
                return Err(Error::Diverged {
                    epoch: epoch + 1,
                    detail: format!("the loss is {loss} at step {} of {steps_per_epoch}", i + 1),
                });
            }
            loss_sum += loss * n as f64;
            seen += n;
            if let Some(c) = out.correct {
                correct += c;
                counted += n;
            }
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {:.3}  {:.0} img/s  lr {lr:.4}",
                loss_sum / seen as f64,
                seen as f64 / secs
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        // Once per epoch (a reduction per tensor; the per-step check above only sees the loss):
        // weights or batch-norm statistics that stopped being finite, which a loss can hide (a
        // NaN running variance is not used in training mode), fail the run before a checkpoint
        // or the caller's save keeps them.
        if let Some(name) = params.first_non_finite()? {
            return Err(Error::Diverged {
                epoch: epoch + 1,
                detail: format!("tensor `{name}` holds NaN or infinite values"),
            });
        }
        let seconds = start.elapsed().as_secs_f64();
        train_seconds += seconds;
        images_this_run += seen;
        let eval = match opts.eval_set {
            Some(eval_set) => Some(evaluate(
                model,
                eval_set,
                cfg.normalization.as_ref(),
                cfg.batch_size.max(256),
                device,
            )?),
            None => None,
        };
        let stats = EpochStats {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: (counted > 0).then(|| correct as f64 / counted as f64),
            lr,
            seconds,
            images_per_second: seen as f64 / seconds.max(1e-9),
            eval,
            build: opts.build.clone(),
        };
        if opts.log_epochs {
            eprintln!("{}", format_epoch(&stats, cfg.epochs));
        }
        history.push(stats);
        if let Some(path) = &opts.checkpoint {
            Checkpoint::save(path, &fingerprint, &history, params, &opt)?;
        }
    }
    let images_seen = set.len() * history.len();
    Ok(TrainReport {
        history,
        images_seen,
        train_seconds,
        images_per_second: images_this_run as f64 / train_seconds.max(1e-9),
        resumed_from_epoch,
    })
}

fn epoch_bar(show: bool, steps: usize, epoch: usize, epochs: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps as u64);
    let style =
        ProgressStyle::with_template("{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
    bar
}

fn format_epoch(s: &EpochStats, epochs: usize) -> String {
    let mut line = format!("epoch {:>3}/{epochs}  loss {:.4}", s.epoch, s.train_loss);
    if let Some(acc) = s.train_accuracy {
        line.push_str(&format!("  train-acc {acc:.4}"));
    }
    line.push_str(&format!(
        "  lr {:.5}  {:.0} img/s  {:.1}s",
        s.lr, s.images_per_second, s.seconds
    ));
    if let Some(e) = &s.eval {
        line.push_str(&format!(
            "  test-acc {:.4}  test-loss {:.4}",
            e.top1, e.loss
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Arch, ModelSpec};
    use datasets::synthetic::{SyntheticSpec, generate};

    /// 32 synthetic 8x8 images and a fresh ResNet-20 for them.
    fn setup() -> Result<(ImageSet, ParamStore, Box<dyn Model>)> {
        let spec = SyntheticSpec {
            train: 32,
            height: 8,
            width: 8,
            ..SyntheticSpec::default()
        };
        let set = generate(&spec, datasets::Split::Train);
        let params = ParamStore::new(0, &Device::Cpu);
        let model = crate::zoo::build(&ModelSpec::new(Arch::Resnet20, 10), &params)?;
        Ok((set, params, model))
    }

    /// Trains the [`setup`] model for `epochs` at learning rate `lr`.
    fn run(
        (set, params, model): &(ImageSet, ParamStore, Box<dyn Model>),
        epochs: usize,
        lr: f64,
        opts: &TrainOptions<'_>,
    ) -> Result<TrainReport> {
        let cfg = TrainConfig {
            epochs,
            batch_size: 16,
            sgd: SgdConfig {
                lr,
                ..SgdConfig::default()
            },
            augment: None,
            ..TrainConfig::default()
        };
        let objective = super::super::CrossEntropy;
        train(&**model, params, set, &cfg, &objective, opts, &Device::Cpu)
    }

    #[test]
    fn a_non_finite_loss_is_a_divergence_naming_the_epoch() -> Result<()> {
        // NaN classifier weights after the first step: the second step's loss is NaN. (Not a
        // conv: ReLU maps NaN to 0, so NaN conv weights can leave the loss finite.)
        let fixture = setup()?;
        let params = fixture.1.clone();
        let poison = move || -> Result<()> {
            if let Some(var) = params.get("fc.weight") {
                var.set(&(var.as_tensor().ones_like()? * f64::NAN)?)?;
            }
            Ok(())
        };
        let opts = TrainOptions {
            after_step: Some(&poison),
            ..TrainOptions::default()
        };
        let err = run(&fixture, 3, 0.01, &opts).map(|_| ());
        let Err(err @ Error::Diverged { epoch: 1, .. }) = err else {
            panic!("expected a divergence in epoch 1, got {err:?}");
        };
        let text = err.to_string();
        assert!(
            text.contains("diverged at epoch 1") && text.contains("the loss is NaN at step 2 of 2"),
            "{text}"
        );
        // An absurd learning rate: whichever check sees it first, it is a divergence.
        let err = run(&setup()?, 3, 1e30, &TrainOptions::default()).map(|_| ());
        assert!(
            matches!(err, Err(Error::Diverged { epoch: 1, .. })),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn non_finite_weights_that_the_loss_hides_fail_the_epoch() -> Result<()> {
        // A NaN running variance does not reach the training-mode loss; the epoch check sees it.
        let fixture = setup()?;
        let params = fixture.1.clone();
        let poison = move || -> Result<()> {
            if let Some(var) = params.get("bn1.running_var") {
                var.set(&(var.as_tensor().ones_like()? * f64::NAN)?)?;
            }
            Ok(())
        };
        let opts = TrainOptions {
            after_step: Some(&poison),
            ..TrainOptions::default()
        };
        let err = run(&fixture, 2, 0.01, &opts).map(|_| ());
        let Err(err @ Error::Diverged { epoch: 1, .. }) = err else {
            panic!("expected a divergence in epoch 1, got {err:?}");
        };
        let text = err.to_string();
        assert!(
            text.contains("diverged at epoch 1") && text.contains("`bn1.running_var`"),
            "{text}"
        );
        // A healthy run passes the check.
        let report = run(&setup()?, 1, 0.01, &TrainOptions::default())?;
        assert_eq!(report.history.len(), 1);
        Ok(())
    }

    #[test]
    fn epochs_saved_before_the_build_tag_still_load_and_tagged_ones_round_trip() {
        // Epoch 1 of results/summaries/resnet20-cifar10/run3-cosine-200ep.json, as its
        // checkpoint stored it before epochs named their build.
        let old = r#"{"epoch":1,"eval":{"images":10000,"loss":1.912293553352356,"seconds":4.627600168,"top1":0.4215,"top5":0.9079},"images_per_second":579.4278911110403,"lr":0.1,"seconds":86.292014532,"train_accuracy":0.42328,"train_loss":1.5599911445236203}"#;
        let mut stats: EpochStats = serde_json::from_str(old).expect("old history must load");
        assert_eq!(stats.build, None);
        assert_eq!(stats.eval.as_ref().map(|e| e.top1), Some(0.4215));
        stats.build = Some("0.1.0+547e9e68365e release".into());
        let json = serde_json::to_string(&stats).expect("encodes");
        let back: EpochStats = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, stats);
    }
}
