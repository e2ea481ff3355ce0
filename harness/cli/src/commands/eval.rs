//! `harness eval`: evaluate saved weights on a test split.

use anyhow::Context;
use datasets::Split;
use serde_json::json;

use super::setup::{build_model, limit, load_split, print_json};
use crate::cli::EvalArgs;
use crate::provenance::Provenance;

/// Runs the command.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let device = crate::device::parse(&args.run.device)?;
    let test_data = load_split(&args.data, Split::Test, !args.run.quiet)?;
    let normalization = test_data.id.info().normalization;
    let test_set = limit(test_data.set, args.data.test_limit, args.seed)?;
    let (spec, params, model) = build_model(&args.model, &test_set, 0, &device)?;
    params.load(&args.weights).with_context(|| {
        format!(
            "failed to load {} as {}",
            args.weights.display(),
            spec.arch.id()
        )
    })?;
    let eval = harness_core::eval::evaluate(
        &*model,
        &test_set,
        Some(&normalization),
        args.batch_size,
        &device,
    )?;
    if args.run.json {
        print_json(&json!({
            "command": "eval",
            "dataset": test_data.id.id(),
            "model": spec.arch.id(),
            "weights": args.weights,
            "test_accuracy": eval.top1,
            "test_top5_accuracy": eval.top5,
            "test_loss": eval.loss,
            "test_images": eval.images,
            "wall_seconds": eval.seconds,
            "images_per_second": eval.images as f64 / eval.seconds.max(1e-9),
            "seed": args.seed,
            "provenance": Provenance::collect(&device),
        }))?;
    } else {
        println!(
            "test accuracy {:.4} (top-5 {:.4}, loss {:.4}) on {} images in {:.1} s",
            eval.top1, eval.top5, eval.loss, eval.images, eval.seconds
        );
    }
    Ok(())
}
