//! `harness run --matrix FILE`: plan, run, report.

use anyhow::{Context, bail};
use harness_core::protect::{Attack, Defence, Registry};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::cli::RunArgs;
use crate::exit::UsageError;
use crate::matrix::config::MatrixFile;
use crate::matrix::plan::Plan;
use crate::matrix::records::{RecordLog, SCHEMA_VERSION};
use crate::matrix::run::{RunSettings, execute, run_dir};
use crate::matrix::sinks;
use crate::provenance::Provenance;

fn parse_shard(s: Option<&str>) -> anyhow::Result<(usize, usize)> {
    let Some(s) = s else { return Ok((0, 1)) };
    let bad = || {
        UsageError(format!(
            "--shard `{s}`: write I/N with 1 <= I <= N, e.g. 2/4"
        ))
    };
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if n == 0 || i == 0 || i > n {
        bail!(bad());
    }
    Ok((i - 1, n))
}

/// A run folder is resumed only by the matrix that made it: records of another configuration
/// (a renamed or hand-copied folder, a hash collision) would mix into this run's tables.
/// Refused before anything is written.
fn refuse_foreign_results(dir: &std::path::Path, config_hash: &str) -> anyhow::Result<()> {
    let run_json = dir.join("run.json");
    if !run_json.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&run_json)
        .with_context(|| format!("failed to read {}", run_json.display()))?;
    let found = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("config_hash")?.as_str().map(str::to_string));
    match found {
        Some(h) if h == config_hash => Ok(()),
        other => bail!(crate::exit::UsageError(format!(
            "{} holds the results of another matrix (configuration hash {}, this one is \
             {config_hash}); nothing was written. Use another --results folder, or move that \
             one away",
            dir.display(),
            other.as_deref().unwrap_or("unreadable")
        ))),
    }
}

/// The numerics mode a provenance object names (`fixed (avx2 f32 kernel)` -> `fixed`). Runs
/// recorded before the field existed were all made under `fast`.
fn numerics_mode(provenance: &serde_json::Value) -> String {
    provenance
        .get("numerics")
        .and_then(|v| v.as_str())
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("fast")
        .to_string()
}

/// Every sitting of a resumed run, this one last: a table finished over several sittings, on
/// different machines, keeps the provenance of each (`run.json` used to keep only the last).
/// A run started under one numerics mode is not continued under the other: its cells would be
/// made by two kinds of arithmetic, and under `fast` a change of CPU is warned about, since the
/// two parts may not agree the way two fixed-numerics machines do.
fn sittings(dir: &std::path::Path, now: &Provenance) -> anyhow::Result<Vec<serde_json::Value>> {
    let now = serde_json::to_value(now)?;
    let run_json = dir.join("run.json");
    let mut all = Vec::new();
    if run_json.exists() {
        let text = std::fs::read_to_string(&run_json)
            .with_context(|| format!("failed to read {}", run_json.display()))?;
        let old: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", run_json.display()))?;
        match (
            old.get("sittings").and_then(|v| v.as_array()),
            old.get("provenance"),
        ) {
            (Some(list), _) => all.extend(list.iter().cloned()),
            (None, Some(p)) => all.push(p.clone()),
            (None, None) => {}
        }
    }
    if let Some(first) = all.first() {
        let (was, is) = (numerics_mode(first), numerics_mode(&now));
        if was != is {
            bail!(UsageError(format!(
                "{} was started under {was} numerics and this process runs {is}; its cells                  would mix two kinds of arithmetic, so nothing was written. Continue it with                  PROTBENCH_NUMERICS={was}, or use another --results folder",
                dir.display()
            )));
        }
        if is == "fast"
            && all
                .iter()
                .any(|p| p.get("cpu_model") != now.get("cpu_model"))
        {
            eprintln!(
                "warning: {} was started on another CPU under fast numerics; its cells may not                  agree with the ones run here (fixed numerics, the default, do)",
                dir.display()
            );
        }
    }
    all.push(now);
    Ok(all)
}

/// Runs the command with every defence and attack of the workspace.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    run_with(args, &defences::registry(), &attacks::registry())
}

/// Runs the command with the components of the given registries: the seam through which a
/// component compiled elsewhere (a test's toy protection, a fork's new method) runs through the
/// same matrix as the built-in ones.
pub fn run_with(
    args: RunArgs,
    defence_registry: &Registry<dyn Defence>,
    attack_registry: &Registry<dyn Attack>,
) -> anyhow::Result<()> {
    let matrix = MatrixFile::read(&args.matrix)?.with_profile(args.profile.as_deref())?;
    let shard = parse_shard(args.shard.as_deref())?;
    let plan = Plan::new(&matrix, defence_registry, attack_registry)?;
    let config_json = serde_json::to_string(&matrix)?;
    let config_hash: String = Sha256::digest(config_json.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let run_id = format!(
        "{}-{}-{config_hash}",
        matrix.name,
        args.profile.as_deref().unwrap_or("default")
    );
    let mine = plan.shard(shard.0, shard.1).len();
    if args.dry_run {
        for c in plan.shard(shard.0, shard.1) {
            println!("{}", c.id());
        }
        eprintln!(
            "{mine} cells in this shard, {} in the matrix; run id {run_id}",
            plan.cells.len()
        );
        return Ok(());
    }
    let device = crate::device::parse(&args.run.device)?;
    let dir = run_dir(&args.results, &run_id, shard);
    std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let _lock = crate::lock::lock_folder(&dir, "run this matrix")?;
    refuse_foreign_results(&dir, &config_hash)?;
    let provenance = Provenance::collect(&device);
    let sittings = sittings(&dir, &provenance)?;
    let run_json = json!({
        "run_id": run_id,
        "matrix_file": args.matrix,
        "profile": args.profile,
        "shard": format!("{}/{}", shard.0 + 1, shard.1),
        "config_hash": config_hash,
        "records_schema": SCHEMA_VERSION,
        "matrix": matrix,
        "cells": plan.cells.len(),
        "shard_cells": mine,
        "provenance": provenance,
        "sittings": sittings,
    });
    let run_json_text = serde_json::to_string_pretty(&run_json)?;
    harness_core::atomic_file::write_atomically(&dir.join("run.json"), run_json_text.as_bytes())?;
    let log = RecordLog::new(&dir);
    if let Some(r) = log.repair()? {
        eprintln!(
            "warning: {}: a run was cut while writing; set aside {} bytes after the last complete \
             cell into {} (those cells run again)",
            log.path().display(),
            r.bytes,
            r.to.display()
        );
    }
    let settings = RunSettings {
        matrix,
        run_id: run_id.clone(),
        config_hash,
        results_dir: args.results.clone(),
        data_dir: datasets::data_dir::resolve(args.data_dir.as_deref()),
        device,
        progress: !args.run.quiet,
        shard,
    };
    if !args.run.quiet {
        eprintln!(
            "run {run_id}: {mine} cells in this shard -> {}",
            dir.display()
        );
    }
    // Whatever happens to the run (a failed cell, a full disk), the report shows what the log
    // holds: the latest state of each cell.
    let executed = execute(&settings, &plan, &log);
    let records = log.latest()?;
    let title = format!("protbench run {run_id}");
    let errors = sinks::publish(&dir, &title, &run_json_text, &records)?;
    let outcome = executed?;
    if args.run.json {
        println!(
            "{}",
            json!({"run_id": run_id, "dir": dir, "cells_run": outcome.ran, "cells_skipped": outcome.skipped, "cells_failed": errors.len()})
        );
    } else {
        println!("{}", sinks::terminal(&records));
        println!(
            "{} cells run, {} already done, {} failed; records in {}",
            outcome.ran,
            outcome.skipped,
            errors.len(),
            dir.display()
        );
    }
    sinks::fail_on_errors(&errors, log.path())
}
