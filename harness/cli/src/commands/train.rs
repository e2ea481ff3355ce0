//! `harness train`: train a zoo model, evaluate it on the test split, save it.

use std::time::Instant;

use anyhow::Context;
use datasets::Split;
use datasets::augment::Augment;
use harness_core::train::{CrossEntropy, Schedule, SgdConfig, TrainConfig, TrainOptions, train};
use serde_json::json;

use super::output::{check_writable, refuse_overwrite, write};
use super::setup::{build_model, limit, load_split, print_json};
use crate::cli::TrainArgs;
use crate::provenance::Provenance;

/// Runs the command.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let wall = Instant::now();
    let device = crate::device::parse(&args.run.device)?;
    let progress = !args.run.quiet;
    if args.epochs == 0 {
        return Err(crate::exit::UsageError("--epochs must be at least 1".into()).into());
    }
    let mut schedule = Schedule::parse(&args.schedule)?;
    if let Schedule::Cosine { warmup_epochs } = &mut schedule {
        *warmup_epochs = args.warmup_epochs;
    }
    // The outputs are checked before the data is loaded and the model trained: an existing file
    // or an unwritable folder must not cost a training run.
    let card = args.out.with_extension("json");
    if card == args.out {
        return Err(crate::exit::UsageError(format!(
            "--out {}: the run card is written to FILE.json beside the weights; give the weights \
             another extension (e.g. .safetensors)",
            args.out.display()
        ))
        .into());
    }
    refuse_overwrite(&args.out, "--out", args.force, None)?;
    refuse_overwrite(
        &card,
        "--out (its run card)",
        args.force,
        Some("the run card of --out is written there"),
    )?;
    check_writable(&args.out, "--out")?;

    let train_data = load_split(&args.data, Split::Train, progress)?;
    let test_data = load_split(&args.data, Split::Test, progress)?;
    let normalization = train_data.id.info().normalization;
    let train_set = limit(train_data.set, args.train_limit, args.seed)?;
    let test_set = limit(test_data.set, args.data.test_limit, args.seed)?;

    let (spec, params, model) = build_model(&args.model, &train_set, args.seed, &device)?;
    let cfg = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        sgd: SgdConfig {
            lr: args.lr,
            momentum: args.momentum,
            nesterov: !args.no_nesterov,
            weight_decay: args.weight_decay,
            max_grad_norm: None,
            adam: None,
        },
        schedule,
        augment: (!args.no_augment).then(Augment::default),
        normalization: Some(normalization),
        seed: args.seed,
    };
    if progress {
        eprintln!(
            "training {} ({} parameters) on {} images of {}, testing on {}",
            spec.arch.id(),
            params.num_parameters(),
            train_set.len(),
            train_data.id,
            test_set.len()
        );
    }
    let provenance = Provenance::collect(&device);
    let opts = TrainOptions {
        progress,
        log_epochs: progress,
        checkpoint: args.checkpoint.clone(),
        eval_set: args.eval_every_epoch.then_some(&test_set),
        build: Some(provenance.build_tag()),
        ..TrainOptions::default()
    };
    let report = train(
        &*model,
        &params,
        &train_set,
        &cfg,
        &CrossEntropy,
        &opts,
        &device,
    )?;
    let eval = harness_core::eval::evaluate(
        &*model,
        &test_set,
        Some(&normalization),
        args.batch_size.max(256),
        &device,
    )?;
    let weights = params
        .to_safetensors_bytes()
        .context("failed to serialise the trained weights")?;
    write(&args.out, &weights, args.force, "weights")?;

    // A resumed run's `train_seconds` covers this process only; the history covers every epoch,
    // so the whole run's cost is summed from it (a run carried over several sessions).
    let all_epochs_train_seconds: f64 = report.history.iter().map(|e| e.seconds).sum();
    let all_epochs_eval_seconds: f64 = report
        .history
        .iter()
        .filter_map(|e| e.eval.as_ref().map(|r| r.seconds))
        .sum();
    let result = json!({
        "command": "train",
        "dataset": train_data.id.id(),
        "model": spec.arch.id(),
        "model_spec": spec,
        "parameters": params.num_parameters(),
        "test_accuracy": eval.top1,
        "test_top5_accuracy": eval.top5,
        "test_loss": eval.loss,
        "test_images": eval.images,
        "epochs": report.history.len(),
        "train_images": train_set.len(),
        "images_seen": report.images_seen,
        "train_seconds": report.train_seconds,
        "images_per_second": report.images_per_second,
        "resumed_from_epoch": report.resumed_from_epoch,
        "all_epochs_train_seconds": all_epochs_train_seconds,
        "all_epochs_eval_seconds": all_epochs_eval_seconds,
        "data_load_seconds": train_data.seconds + test_data.seconds,
        "wall_seconds": wall.elapsed().as_secs_f64(),
        "seed": args.seed,
        "config": cfg,
        "history": report.history,
        "weights": args.out,
        "provenance": provenance,
    });
    write(
        &card,
        &serde_json::to_vec_pretty(&result)?,
        args.force,
        "run card",
    )?;
    if args.run.json {
        print_json(&result)?;
    } else {
        println!(
            "test accuracy {:.4} (top-5 {:.4}) on {} images; {} epochs on {} images in {:.1} s of training",
            eval.top1,
            eval.top5,
            eval.images,
            report.history.len(),
            train_set.len(),
            all_epochs_train_seconds,
        );
        if report.resumed_from_epoch > 0 {
            print!("resumed after epoch {}: ", report.resumed_from_epoch);
        }
        println!(
            "this process trained {} epochs in {:.1} s ({:.0} img/s)",
            report.history.len() - report.resumed_from_epoch,
            report.train_seconds,
            report.images_per_second
        );
        println!(
            "weights: {}  run card: {}",
            args.out.display(),
            card.display()
        );
    }
    Ok(())
}
