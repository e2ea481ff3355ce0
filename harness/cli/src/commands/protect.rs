//! `harness protect`: selective encryption with hierarchical licences, on model files.
//!
//! `encrypt` writes the encrypted model (an ordinary safetensors file that anyone can load and
//! run, just useless) and the owner's sealed key file; `licence` cuts a level-m licence from the
//! key file; `decrypt` restores what a licence allows (the full licence gives back the original
//! file byte for byte). Every output is computed in memory first and written atomically, so an
//! error writes nothing. Secrets never reach stdout, stderr or the JSON line.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use datasets::Split;
use defences::selective_encryption::{self as se, PssConfig, Ranking};
use harness_core::{Arch, ModelSpec, ParamStore, Task};
use serde_json::json;

use super::output::{refuse_overwrite, write, write_secret};
use super::setup::{load_split, print_json};
use crate::cli::DataOpts;
use crate::exit::UsageError;

/// `harness protect`.
#[derive(Args, Debug)]
pub struct ProtectArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: ProtectAction,
}

/// `harness protect ...` actions.
#[derive(Subcommand, Debug)]
pub enum ProtectAction {
    /// Encrypt the most important conv kernels of a model (PSS + DPRM, Tian et al. 2021) with
    /// hierarchical access levels; writes the encrypted model and the owner's key file.
    ///
    /// Example: harness protect encrypt --model m.safetensors --arch vgg19 --width 0.25
    /// --ranking l1 --out enc.safetensors --keys owner.key
    Encrypt(Box<EncryptArgs>),
    /// Cut a licence of access level M (0 = nothing .. levels = everything) from the owner's key
    /// file.
    ///
    /// Example: harness protect licence --keys owner.key --level 3 --out level-3.licence
    Licence(LicenceArgs),
    /// Decrypt what a licence allows; the full licence restores the original file exactly.
    ///
    /// Example: harness protect decrypt --model enc.safetensors --licence level-3.licence
    /// --out dec.safetensors
    Decrypt(DecryptArgs),
}

/// `harness protect encrypt`.
#[derive(Args, Debug)]
pub struct EncryptArgs {
    /// The trained weights (safetensors with PyTorch state-dict names).
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Architecture of the weights (see `harness list`).
    #[arg(long)]
    pub arch: String,
    /// Output classes of the model (default: the dataset's, else 10).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Channel width multiplier the model was trained with (VGG and MobileNetV2).
    #[arg(long, default_value_t = 1.0)]
    pub width: f64,
    /// Kernel ranking: pss (learnt L0 gates, needs --dataset), random, l1 or mean.
    #[arg(long, default_value = "pss")]
    pub ranking: String,
    /// Fraction of each chosen layer's kernels to encrypt: floor(ratio x N) + 1 kernels.
    #[arg(long, default_value_t = 0.08)]
    pub ratio: f64,
    /// Access levels M (nested sets, one key per tier).
    #[arg(long, default_value_t = 5)]
    pub levels: usize,
    /// Conv weights to encrypt, comma-separated tensor names (`.weight` optional). Default: all.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub layers: Vec<String>,
    /// Dataset whose training split PSS learns on (cifar10, synthetic, ...).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Root folder of the datasets (default: $HARNESS_DATA, else ~/.cache/protbench/data).
    #[arg(long, env = "HARNESS_DATA", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Do not read or write the decoded-image cache.
    #[arg(long)]
    pub no_cache: bool,
    /// PSS epochs per layer (the paper trains 130; a few on a CPU).
    #[arg(long, default_value_t = 1)]
    pub pss_epochs: usize,
    /// PSS training images per epoch at most (class-balanced subset; 0 = all).
    #[arg(long, default_value_t = 2048)]
    pub pss_images: usize,
    /// Denoisers (dncnn) only: the Gaussian noise level PSS trains the gates at, on the 0..255
    /// scale (DnCNN's loss on [0,1] images, no normalisation; default 50, as the matrix).
    #[arg(long, value_name = "SIGMA_255")]
    pub noise_sigma: Option<f64>,
    /// Seed of the PSS subset, shuffling and gate noise (the keys never derive from it).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the encrypted model.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    /// Where to write the owner's key file (keep it secret: it opens every level).
    #[arg(long, value_name = "FILE")]
    pub keys: PathBuf,
    /// Protect the key file with the passphrase held in this environment variable.
    #[arg(long, value_name = "VAR")]
    pub passphrase_env: Option<String>,
    /// Overwrite --out and --keys if they exist (by default an existing file is refused: a
    /// replaced key file makes every model encrypted under the old key undecryptable).
    #[arg(long)]
    pub force: bool,
    /// Compute device for PSS: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print the result as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `harness protect licence`.
#[derive(Args, Debug)]
pub struct LicenceArgs {
    /// The owner's key file written by `harness protect encrypt`.
    #[arg(long, value_name = "FILE")]
    pub keys: PathBuf,
    /// Access level of the licence: 0 (nothing) to the model's number of levels (everything).
    #[arg(long)]
    pub level: usize,
    /// Where to write the licence.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    /// The key file's passphrase is in this environment variable.
    #[arg(long, value_name = "VAR")]
    pub passphrase_env: Option<String>,
    /// Overwrite --out if it exists (by default an existing file is refused).
    #[arg(long)]
    pub force: bool,
    /// Print the result as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// `harness protect decrypt`.
#[derive(Args, Debug)]
pub struct DecryptArgs {
    /// The encrypted model.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// A licence for this model.
    #[arg(long, value_name = "FILE")]
    pub licence: PathBuf,
    /// Where to write the decrypted model.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    /// Overwrite --out if it exists (by default an existing file is refused).
    #[arg(long)]
    pub force: bool,
    /// Print the result as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(args: ProtectArgs) -> anyhow::Result<()> {
    match args.action {
        ProtectAction::Encrypt(a) => encrypt(*a),
        ProtectAction::Licence(a) => licence(a),
        ProtectAction::Decrypt(a) => decrypt(a),
    }
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("failed to read the {what} {}", path.display()))
}

/// The passphrase in environment variable `var` (never echoed).
fn passphrase(var: Option<&str>) -> anyhow::Result<Option<String>> {
    match var {
        None => Ok(None),
        Some(v) => match std::env::var(v) {
            Ok(p) if !p.is_empty() => Ok(Some(p)),
            _ => Err(UsageError(format!(
                "--passphrase-env {v}: the environment variable is unset or empty"
            ))
            .into()),
        },
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

fn encrypt(args: EncryptArgs) -> anyhow::Result<()> {
    let ranking = Ranking::parse(&args.ranking)?;
    if same_file(&args.out, &args.keys)
        || same_file(&args.out, &args.model)
        || same_file(&args.keys, &args.model)
    {
        return Err(
            UsageError("--model, --out and --keys must be three different files".into()).into(),
        );
    }
    refuse_overwrite(
        &args.keys,
        "--keys",
        args.force,
        Some("every model encrypted under the key it holds would become undecryptable"),
    )?;
    refuse_overwrite(&args.out, "--out", args.force, None)?;
    if ranking == Ranking::Pss && args.dataset.is_none() {
        return Err(UsageError(
            "PSS ranking learns on data: give --dataset (and --data-dir), or pick --ranking random, l1 or mean".into(),
        )
        .into());
    }
    let pass = passphrase(args.passphrase_env.as_deref())?;
    let plan = se::Plan {
        ratio: args.ratio,
        levels: args.levels,
        layers: args.layers.clone(),
        ranking,
    };
    plan.validate()?;
    let arch = Arch::parse(&args.arch)?;
    let task = if arch.is_classifier() {
        if args.noise_sigma.is_some() {
            return Err(UsageError(format!(
                "--noise-sigma is for denoisers (dncnn); `{arch}` is a classifier"
            ))
            .into());
        }
        Task::Classification
    } else {
        let sigma = args
            .noise_sigma
            .unwrap_or(harness_core::train::DEFAULT_SIGMA_255)
            / 255.0;
        harness_core::train::denoise::check_sigma(sigma)
            .map_err(|e| UsageError(format!("--noise-sigma: {e}")))?;
        Task::Denoising { sigma }
    };
    let pss = PssConfig {
        epochs: args.pss_epochs,
        max_images: args.pss_images,
        task,
        ..PssConfig::default()
    };
    let original = read(&args.model, "model")?;
    // NaN or impossible weights are refused before the data is loaded and the kernels ranked.
    harness_core::params::check_values(&original, &args.model)
        .with_context(|| format!("refusing to encrypt {}", args.model.display()))?;
    let device = crate::device::parse(&args.device)?;
    let progress = !args.quiet;
    let data = match &args.dataset {
        Some(name) if ranking == Ranking::Pss => {
            let opts = DataOpts {
                dataset: name.clone(),
                data_dir: args.data_dir.clone(),
                no_cache: args.no_cache,
                test_limit: None,
            };
            let loaded = load_split(&opts, Split::Train, progress)?;
            // Denoisers learn and run on [0,1] pixels, classifiers on normalised ones.
            let norm = matches!(task, Task::Classification).then(|| loaded.id.info().normalization);
            Some((loaded.set, norm))
        }
        _ => None,
    };
    let classes = args
        .classes
        .or(data.as_ref().map(|(s, _)| s.num_classes()))
        .unwrap_or(10);
    let spec = ModelSpec::new(arch, classes).with_width(args.width);
    // Check the file holds this architecture (PSS runs it) before anything else.
    let params = ParamStore::new(0, &device);
    harness_core::zoo::build(&spec, &params)?;
    params
        .load_from_bytes(&original, &args.model)
        .with_context(|| format!("failed to load {} as {}", args.model.display(), arch))?;
    let rank_start = std::time::Instant::now();
    let importance = se::importance(
        &original,
        ranking,
        &args.layers,
        (ranking == Ranking::Pss).then_some((&spec, &params)),
        data.as_ref().map(|(s, n)| (s, n.as_ref())),
        &pss,
        args.seed,
        true,
        &device,
        progress,
    )
    .map_err(|e| e.in_file(&args.model))
    .with_context(|| format!("failed to rank the kernels of {}", args.model.display()))?;
    let rank_seconds = rank_start.elapsed().as_secs_f64();
    let enc = se::encrypt(&original, &importance, &plan, pass.as_deref())
        .map_err(|e| e.in_file(&args.model))
        .with_context(|| format!("failed to encrypt {}", args.model.display()))?;
    write_secret(&args.keys, &enc.owner_key, args.force, "key file")?;
    if let Err(e) = write(&args.out, &enc.model, args.force, "encrypted model") {
        // Nothing half-done: a key file without its model is useless and confusing.
        let _ = std::fs::remove_file(&args.keys);
        return Err(e);
    }
    let r = &enc.report;
    let frac = |a: usize, b: usize| a as f64 / b.max(1) as f64;
    if args.json {
        print_json(&json!({
            "command": "protect encrypt",
            "model": args.model,
            "arch": arch.id(),
            "out": args.out,
            "keys": args.keys,
            "ranking": ranking.id(),
            "ratio": args.ratio,
            "levels": args.levels,
            "pss_epochs": if ranking == Ranking::Pss { args.pss_epochs } else { 0 },
            "layers": r.layers,
            "encrypted_params": r.encrypted_params,
            "conv_params": r.conv_params,
            "total_params": r.total_params,
            "encrypted_fraction": frac(r.encrypted_params, r.total_params),
            "encrypted_conv_fraction": frac(r.encrypted_params, r.conv_params),
            "escrow_bytes": r.escrow_bytes,
            "fingerprint": r.fingerprint,
            "rank_seconds": rank_seconds,
            "encrypt_seconds": r.seconds,
            "passphrase": pass.is_some(),
        }))?;
    } else {
        println!(
            "encrypted {} of {} conv parameters ({:.2}%, {:.2}% of all) in {} layers by {} ranking, {} levels; model {} (fingerprint {}), key file {}{}",
            r.encrypted_params,
            r.conv_params,
            100.0 * frac(r.encrypted_params, r.conv_params),
            100.0 * frac(r.encrypted_params, r.total_params),
            r.layers.len(),
            ranking.id(),
            args.levels,
            args.out.display(),
            r.fingerprint,
            args.keys.display(),
            if pass.is_some() {
                " (passphrase-protected)"
            } else {
                " (no passphrase: keep it private)"
            },
        );
    }
    Ok(())
}

fn licence(args: LicenceArgs) -> anyhow::Result<()> {
    if same_file(&args.out, &args.keys) {
        return Err(UsageError("--out must differ from --keys".into()).into());
    }
    refuse_overwrite(&args.out, "--out", args.force, None)?;
    let pass = passphrase(args.passphrase_env.as_deref())?;
    let key_file = read(&args.keys, "key file")?;
    let (owner, binding) = se::keys::open_owner_key(&key_file, pass.as_deref())
        .with_context(|| format!("failed to open the key file {}", args.keys.display()))?;
    // The key file opened: a level it lacks is the command line's mistake, not the file's.
    if args.level > owner.levels {
        return Err(UsageError(format!(
            "--level {}: this level does not exist; the model of {} has levels 0 (nothing) to {} \
             (everything)",
            args.level,
            args.keys.display(),
            owner.levels
        ))
        .into());
    }
    let lic = se::keys::licence_for(&owner, args.level)
        .and_then(|l| se::keys::seal_licence(&l, &binding))
        .with_context(|| format!("failed to cut a level-{} licence", args.level))?;
    write_secret(&args.out, &lic, args.force, "licence")?;
    if args.json {
        print_json(&json!({
            "command": "protect licence",
            "level": args.level,
            "out": args.out,
            "licence_bytes": lic.len(),
        }))?;
    } else {
        println!(
            "level-{} licence ({} bytes) written to {}",
            args.level,
            lic.len(),
            args.out.display()
        );
    }
    Ok(())
}

fn decrypt(args: DecryptArgs) -> anyhow::Result<()> {
    if same_file(&args.out, &args.model) || same_file(&args.out, &args.licence) {
        return Err(UsageError("--out must differ from --model and --licence".into()).into());
    }
    refuse_overwrite(&args.out, "--out", args.force, None)?;
    let model = read(&args.model, "encrypted model")?;
    let lic = read(&args.licence, "licence")?;
    let dec = se::decrypt(&model, &lic)
        .map_err(|e| e.in_file(&args.model))
        .with_context(|| {
            format!(
                "failed to decrypt {} with {}",
                args.model.display(),
                args.licence.display()
            )
        })?;
    write(&args.out, &dec.model, args.force, "decrypted model")?;
    if args.json {
        print_json(&json!({
            "command": "protect decrypt",
            "model": args.model,
            "out": args.out,
            "level": dec.level,
            "levels": dec.levels,
            "kernels_restored": dec.kernels_restored,
            "decrypt_seconds": dec.seconds,
        }))?;
    } else {
        println!(
            "level {} of {}: restored {} kernels; written to {}",
            dec.level,
            dec.levels,
            dec.kernels_restored,
            args.out.display()
        );
    }
    Ok(())
}
