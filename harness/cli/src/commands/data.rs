//! `harness data fetch|info`.

use std::time::Instant;

use anyhow::Context;
use datasets::Split;
use datasets::catalog::{DatasetId, LoadOptions};
use datasets::download::{FetchOptions, FetchOutcome};
use serde_json::json;

use super::setup::print_json;
use crate::cli::{DataAction, DataArgs};

/// Runs the command.
pub fn run(args: DataArgs) -> anyhow::Result<()> {
    match args.action {
        DataAction::Fetch {
            name,
            data_dir,
            base_url,
            force,
            quiet,
        } => {
            let data_dir = datasets::data_dir::resolve(data_dir.as_deref());
            let opts = FetchOptions {
                base_url,
                progress: !quiet,
                force,
            };
            let outcome = datasets::download::fetch(&name, &data_dir, &opts)
                .with_context(|| format!("failed to fetch `{name}`"))?;
            match outcome {
                FetchOutcome::AlreadyPresent(path) => {
                    println!(
                        "{name} is already present at {} (use --force to fetch again)",
                        path.display()
                    )
                }
                FetchOutcome::Fetched {
                    path,
                    bytes,
                    seconds,
                } => println!(
                    "{name}: {:.1} MB fetched, checksum verified, unpacked to {} in {seconds:.1} s",
                    bytes as f64 / 1e6,
                    path.display()
                ),
            }
            Ok(())
        }
        DataAction::Info {
            name,
            data_dir,
            json,
        } => info(&name, data_dir.as_deref(), json),
    }
}

fn info(name: &str, data_dir: Option<&std::path::Path>, as_json: bool) -> anyhow::Result<()> {
    let id = DatasetId::parse(name)?;
    let info = id.info();
    let data_dir = datasets::data_dir::resolve(data_dir);
    let mut splits = Vec::new();
    for split in [Split::Train, Split::Test] {
        let start = Instant::now();
        match datasets::catalog::load(&id, &data_dir, split, &LoadOptions::default()) {
            Ok(set) => splits.push(json!({
                "split": split.as_str(),
                "images": set.len(),
                "classes": set.num_classes(),
                "shape": [set.channels, set.height, set.width],
                "load_seconds": start.elapsed().as_secs_f64(),
            })),
            Err(e) => splits.push(json!({ "split": split.as_str(), "error": e.to_string() })),
        }
    }
    let value = json!({
        "dataset": id.id(),
        "description": info.description,
        "data_dir": data_dir,
        "layout": info.layout,
        "normalization": info.normalization,
        "splits": splits,
    });
    if as_json {
        return print_json(&value);
    }
    println!("{}: {}", id.id(), info.description);
    println!("data dir:      {}", data_dir.display());
    println!("layout:        {}", info.layout);
    println!(
        "normalisation: mean {:?} std {:?}",
        info.normalization.mean, info.normalization.std
    );
    for s in &splits {
        match s.get("error") {
            Some(e) => println!(
                "{:<6} not available: {}",
                s["split"].as_str().unwrap_or(""),
                e.as_str().unwrap_or("")
            ),
            None => println!(
                "{:<6} {} images, {} classes, shape {}, loaded in {:.2} s",
                s["split"].as_str().unwrap_or(""),
                s["images"],
                s["classes"],
                s["shape"],
                s["load_seconds"].as_f64().unwrap_or(0.0)
            ),
        }
    }
    Ok(())
}
