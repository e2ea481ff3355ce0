//! Command-line definitions. The help texts are the user's first manual: they say what each
//! option changes and what its default is.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// protbench: a benchmark harness for deep-learning model protection.
///
/// Trains victim CNNs, protects them, attacks them, and tabulates accuracy, overhead and
/// robustness. Start with `harness list`, get data with `harness data fetch cifar10` (or point
/// --data-dir at a copy), then `harness train`.
#[derive(Parser, Debug)]
#[command(name = "harness", version, about, long_about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run an attack x defence matrix: train victims, protect them, attack them, tabulate.
    ///
    /// Example: harness run --matrix ci/smoke.toml --data-dir ~/data
    Run(RunArgs),
    /// Train a model of the zoo on a dataset, evaluate it on the test split, save the weights.
    ///
    /// Example: harness train --dataset cifar10 --model resnet20 --epochs 30 --out r20.safetensors
    Train(TrainArgs),
    /// Evaluate saved weights on a dataset's test split (top-1, top-5, loss).
    ///
    /// Example: harness eval --dataset cifar10 --model resnet20 --weights r20.safetensors
    Eval(EvalArgs),
    /// Join the records of several shards of one matrix into one run.
    ///
    /// Example: harness merge results/quick-default-*-shard* --into results/quick-merged
    Merge(MergeArgs),
    /// Compare two runs metric by metric; exit non-zero when a metric regresses beyond its
    /// tolerance (what nightly CI gates on).
    ///
    /// Example: harness compare results/baselines/smoke results/smoke-tiny-0d17bbd81dff
    Compare(CompareArgs),
    /// Measure training and inference speed and peak memory of a zoo model on this machine.
    ///
    /// Example: harness bench --model resnet20 --json
    Bench(BenchArgs),
    /// Selective encryption with hierarchical licences: encrypt a model file, cut licences,
    /// decrypt.
    ///
    /// Example: harness protect encrypt --model m.safetensors --arch vgg19 --width 0.25
    /// --ranking l1 --out enc.safetensors --keys owner.key
    Protect(crate::commands::protect::ProtectArgs),
    /// Fetch datasets from their official sources, or show what is where.
    Data(DataArgs),
    /// List the datasets and models this build knows.
    List(ListArgs),
}

/// Where data lives and how it is loaded; shared by every command that reads a dataset.
#[derive(Args, Debug, Clone)]
pub struct DataOpts {
    /// Dataset id: cifar10, cifar100, cifar100-coarse, tiny-imagenet, synthetic, or
    /// image-folder:PATH (PATH/{train,test}/<class>/*.jpg|png).
    #[arg(long, short = 'd')]
    pub dataset: String,
    /// Root folder holding datasets under their standard names (cifar-10-batches-bin/ or
    /// cifar10/, cifar-100-binary/, tiny-imagenet-200/). Default: $HARNESS_DATA, else the
    /// platform cache folder (~/.cache/protbench/data on Linux).
    #[arg(long, env = "HARNESS_DATA", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Do not read or write the decoded-image cache ($HARNESS_CACHE, else ~/.cache/protbench/decoded).
    #[arg(long)]
    pub no_cache: bool,
    /// Evaluate on at most N test images (a class-balanced, seeded subset). Default: all.
    #[arg(long, value_name = "N")]
    pub test_limit: Option<usize>,
}

/// Model selection; shared by train and eval.
#[derive(Args, Debug, Clone)]
pub struct ModelOpts {
    /// Model id: resnet20, resnet56, vgg11, vgg16, vgg19, vgg-small, mobilenet-v2 (see `harness list`).
    #[arg(long, short = 'm')]
    pub model: String,
    /// Channel width multiplier for VGG and MobileNetV2 (e.g. 0.25 keeps CPU runs small).
    #[arg(long, default_value_t = 1.0)]
    pub width: f64,
}

/// Options common to every command that computes.
#[derive(Args, Debug, Clone)]
pub struct RunOpts {
    /// Compute device: cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print the result as one JSON object on the last line of stdout (logs stay on stderr).
    #[arg(long)]
    pub json: bool,
    /// No progress bars or per-epoch lines on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `harness train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataOpts,
    #[command(flatten)]
    pub model: ModelOpts,
    #[command(flatten)]
    pub run: RunOpts,
    /// Passes over the training set.
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    /// Images per SGD step.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Base learning rate (the schedule scales it per step).
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Use classical instead of Nesterov momentum.
    #[arg(long)]
    pub no_nesterov: bool,
    /// L2 weight decay (applied to all parameters, as PyTorch's SGD does).
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// Learning-rate schedule: cosine, one-cycle, constant, or multi-step:E1,E2 (x0.1 at each).
    #[arg(long, default_value = "cosine")]
    pub schedule: String,
    /// Linear warm-up length in epochs for the cosine schedule.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_epochs: f64,
    /// Turn off random-crop (4-pixel padding) and horizontal-flip augmentation.
    #[arg(long)]
    pub no_augment: bool,
    /// Train on at most N images (a class-balanced, seeded subset). Default: the whole split.
    #[arg(long, value_name = "N")]
    pub train_limit: Option<usize>,
    /// Seed for weights, subset choice, shuffling and augmentation: same seed, same run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Evaluate on the test split after every epoch (slower; the final evaluation always runs).
    #[arg(long)]
    pub eval_every_epoch: bool,
    /// Save a checkpoint here after every epoch; if it exists, resume from it.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Where to write the trained weights (safetensors with PyTorch state-dict names); a
    /// FILE.json with the run's settings and results is written beside it.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    /// Overwrite --out and its FILE.json if they exist (by default an existing file is refused
    /// before training starts).
    #[arg(long)]
    pub force: bool,
}

/// `harness eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub data: DataOpts,
    #[command(flatten)]
    pub model: ModelOpts,
    #[command(flatten)]
    pub run: RunOpts,
    /// Weights to evaluate (safetensors; PyTorch state-dict names, e.g. from `harness train` or
    /// `safetensors.torch.save_file(model.state_dict(), ...)`).
    #[arg(long, short = 'w', value_name = "FILE")]
    pub weights: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Seed of the test subset when --test-limit is given.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `harness data`.
#[derive(Args, Debug)]
pub struct DataArgs {
    /// What to do with data.
    #[command(subcommand)]
    pub action: DataAction,
}

/// `harness data ...` actions.
#[derive(Subcommand, Debug)]
pub enum DataAction {
    /// Download a dataset from its official URL, verify the published checksum, unpack it into
    /// the data folder. Example: harness data fetch cifar10 --data-dir ~/data
    Fetch {
        /// cifar10, cifar100 or tiny-imagenet.
        name: String,
        /// Target root folder (default: $HARNESS_DATA, else ~/.cache/protbench/data).
        #[arg(long, env = "HARNESS_DATA", value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Fetch from a mirror: FILE is taken from URL/FILE instead of the official host.
        #[arg(long, env = "HARNESS_DATA_BASE_URL", value_name = "URL")]
        base_url: Option<String>,
        /// Download again even when the dataset is present.
        #[arg(long)]
        force: bool,
        /// No progress bar.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Show a dataset's layout, classes, normalisation, and (when present) image counts and
    /// load times.
    Info {
        /// Dataset id (see `harness list`).
        name: String,
        /// Root folder (default: $HARNESS_DATA, else ~/.cache/protbench/data).
        #[arg(long, env = "HARNESS_DATA", value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Print one JSON object on the last line of stdout.
        #[arg(long)]
        json: bool,
    },
}

/// `harness list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// `harness run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The matrix file (TOML): axes, victim recipe, data split, budgets, settings, profiles.
    #[arg(long, value_name = "FILE")]
    pub matrix: PathBuf,
    /// A profile of the matrix file (e.g. smoke, quick, nightly) overriding epochs and limits.
    #[arg(long)]
    pub profile: Option<String>,
    /// Run only shard I of N (1-based, e.g. 2/4): cells are assigned to shards by a hash of their
    /// id, so N machines (CI matrix jobs, Slurm or Kubernetes array tasks) split one matrix. A
    /// shard writes RESULTS/<run-id>-shard-IofN/; `harness merge` joins the shards.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Results root; the run writes RESULTS/<run-id>/ and caches victims in RESULTS/cache/. A
    /// run holds a lock on its folder: a second run of the same matrix into it is refused.
    #[arg(long, default_value = "results", value_name = "DIR")]
    pub results: PathBuf,
    /// Root folder holding the datasets (default: $HARNESS_DATA, else ~/.cache/protbench/data).
    #[arg(long, env = "HARNESS_DATA", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Check the matrix and print the cells without running anything.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub run: RunOpts,
}

/// `harness merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Run folders (each holding records.jsonl and run.json) to join.
    #[arg(required = true, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// The merged run folder to write. It must not exist yet (see --force).
    #[arg(long, value_name = "DIR")]
    pub into: PathBuf,
    /// Replace the outputs of an existing --into folder.
    #[arg(long)]
    pub force: bool,
    /// Accept an incomplete merge (shards missing, or cells a shard did not finish): the outputs
    /// are written either way, but without this flag the command then exits 1.
    #[arg(long)]
    pub partial: bool,
}

/// `harness compare`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The reference run folder (or a records.jsonl / records.csv file).
    pub base: PathBuf,
    /// The new run folder (or records file).
    pub new: PathBuf,
    /// Allowed move in the wrong direction: METRIC=VALUE, repeatable. VALUE is absolute, or
    /// relative to the base with a trailing % (owner-accuracy=0.05, latency-ms-p50=30%).
    /// `timing=VALUE` covers every timing metric (seconds, latency: they move with the machine),
    /// `*=VALUE` every metric not named. Defaults: 0.02 for accuracy, fidelity and gain, 25%
    /// for the rest.
    #[arg(long, value_name = "METRIC=VALUE", conflicts_with = "exact")]
    pub tolerance: Vec<String>,
    /// Where BASE holds two or more seeds of a metric, their spread replaces the default
    /// tolerance: NEW's mean regresses only beyond BASE's one-sided Student-t bound at this
    /// confidence (and by at least 0.01 for accuracy, fidelity and gain, 10% for the rest).
    /// Explicit --tolerance values stay hard bounds. Timings keep their tolerance.
    #[arg(
        long,
        default_value_t = 0.95,
        value_name = "P",
        conflicts_with = "exact"
    )]
    pub confidence: f64,
    /// Exact mode: every non-timing value of every cell and seed must be bit-identical in the two
    /// runs, moves in either direction and cells present in one run only are reported, and the
    /// command exits 1 if anything differs. For "this change alters no result" and "this machine
    /// reproduces the baseline".
    #[arg(long)]
    pub exact: bool,
    /// Print the comparison as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// `harness bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// resnet20 or vgg-small (the speed reference's nets), or any zoo classifier.
    #[arg(long, default_value = "resnet20")]
    pub model: String,
    /// Training batch size.
    #[arg(long, default_value_t = 128)]
    pub train_batch: usize,
    /// Inference batch size.
    #[arg(long, default_value_t = 256)]
    pub infer_batch: usize,
    /// Timed rounds of each measurement (after warm-up).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Force candle's stock kernels (to compare with the fast CPU path).
    #[arg(long)]
    pub stock: bool,
    /// `int8` also measures the model's int8 deployment (observers calibrated on the random
    /// inputs, batch norm folded) beside f32: inference at --infer-batch and batch-1 latency,
    /// the latter as a paired ratio to f32 timed in the same rounds.
    #[arg(long, default_value = "f32", value_parser = ["f32", "int8"])]
    pub precision: String,
    /// Print one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
}
