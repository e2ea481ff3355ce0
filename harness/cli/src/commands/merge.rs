//! `harness merge RUN_DIR... --into DIR`: joins the records of several shards (or partial runs)
//! of one matrix into one run folder with the same outputs `harness run` writes.
//!
//! Rules: every run must have the same `config_hash` in its `run.json` (shards of different
//! matrices are never joined: usage error). Derived rows are dropped and recomputed. A row of the
//! same cell and metric seen twice keeps the `ok` one; two `ok` rows that disagree are an error,
//! except for timing metrics (rows marked `timing`), which differ from one execution to the next:
//! the first is kept with a warning. Error rows of a cell that has `ok` rows elsewhere are
//! dropped. Each run contributes the latest state of its cells (a cell that failed and later
//! succeeded in one run counts as succeeded). `--into` must not exist unless `--force`.
//!
//! A merge says when it is incomplete: shards of the matrix that were not given, and runs that
//! hold fewer finished cells than their shard has (a run cut short or still going). The outputs
//! are written either way; the command then exits 1 unless `--partial`. It also exits 1 when
//! error rows remain.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::MergeArgs;
use crate::exit::UsageError;
use crate::matrix::compare::is_derived;
use crate::matrix::records::{Record, finished_cells, latest, read_jsonl};
use crate::matrix::sinks;

type CellKey = (String, String, String, String, u64);

fn cell_of(r: &Record) -> CellKey {
    (
        r.dataset.clone(),
        r.model.clone(),
        r.defence.clone(),
        r.attack.clone(),
        r.seed,
    )
}

fn read_run(dir: &Path) -> anyhow::Result<(Value, String, Vec<Record>)> {
    let run_json = dir.join("run.json");
    let records = dir.join("records.jsonl");
    if !run_json.is_file() || !records.is_file() {
        return Err(UsageError(format!(
            "{}: not a run folder (run.json and records.jsonl expected)",
            dir.display()
        ))
        .into());
    }
    let text = std::fs::read_to_string(&run_json)
        .with_context(|| format!("failed to read {}", run_json.display()))?;
    let meta: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", run_json.display()))?;
    let hash = meta
        .get("config_hash")
        .and_then(Value::as_str)
        .with_context(|| format!("{}: no config_hash", run_json.display()))?
        .to_string();
    let rows = latest(&read_jsonl(&records)?)
        .into_iter()
        .filter(|r| !is_derived(&r.metric))
        .collect();
    Ok((meta, hash, rows))
}

/// Joins the rows of several runs by the rules in the module docs.
pub fn merge_records(runs: &[(String, Vec<Record>)]) -> anyhow::Result<Vec<Record>> {
    let ok_cells: BTreeSet<CellKey> = runs
        .iter()
        .flat_map(|(_, rows)| rows.iter())
        .filter(|r| r.status == "ok")
        .map(cell_of)
        .collect();
    let mut out: Vec<Record> = Vec::new();
    let mut index: BTreeMap<(CellKey, String), usize> = BTreeMap::new();
    for (name, rows) in runs {
        for r in rows {
            if r.status != "ok" && ok_cells.contains(&cell_of(r)) {
                continue;
            }
            let key = (cell_of(r), r.metric.clone());
            let Some(&i) = index.get(&key) else {
                index.insert(key, out.len());
                out.push(r.clone());
                continue;
            };
            let old = &out[i];
            match (old.status == "ok", r.status == "ok") {
                (false, true) => out[i] = r.clone(),
                (true, true) if old.value.to_bits() != r.value.to_bits() => {
                    let id = format!(
                        "{}/{}/{}/{}/seed {} {}",
                        r.dataset, r.model, r.defence, r.attack, r.seed, r.metric
                    );
                    if r.is_timing() || old.is_timing() {
                        eprintln!(
                            "warning: {id}: {} in an earlier run, {} in {name}; keeping the first",
                            old.value, r.value
                        );
                    } else {
                        bail!(
                            "{id}: two ok rows disagree ({} in an earlier run, {} in {name}); \
                             these runs measured the same cell differently",
                            old.value,
                            r.value
                        );
                    }
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// What is missing from a merge: shards of the matrix not given, and runs with fewer finished
/// cells than their shard has. Empty when the merge is complete.
fn missing_parts(metas: &[(String, Value, Vec<Record>)]) -> Vec<String> {
    let mut missing = Vec::new();
    let mut seen: BTreeSet<usize> = BTreeSet::new();
    let mut of: Option<usize> = None;
    for (name, meta, rows) in metas {
        let shard = meta.get("shard").and_then(Value::as_str).unwrap_or("1/1");
        if let Some((i, n)) = shard.split_once('/')
            && let (Ok(i), Ok(n)) = (i.parse::<usize>(), n.parse::<usize>())
        {
            seen.insert(i);
            of = Some(n);
        }
        if let Some(want) = meta.get("shard_cells").and_then(Value::as_u64) {
            let have = finished_cells(rows).len() as u64;
            if have < want {
                missing.push(format!(
                    "{name} (shard {shard}) has {have} of its {want} cells finished: it was cut \
                     short, is still running or has failed cells; run it again to complete it"
                ));
            }
        }
    }
    if let Some(n) = of {
        let absent: Vec<String> = (1..=n)
            .filter(|i| !seen.contains(i))
            .map(|i| format!("{i}/{n}"))
            .collect();
        if !absent.is_empty() {
            missing.push(format!(
                "shards {} of the matrix were not given",
                absent.join(", ")
            ));
        }
    }
    missing
}

/// The merged rows with each cell's rows together and `cell_rows` set, so the merged
/// `records.jsonl` reads back as one complete attempt per cell.
fn as_log(records: &[Record]) -> Vec<Record> {
    let mut order: Vec<String> = Vec::new();
    let mut by_cell: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for r in records {
        let id = r.cell_id();
        if !by_cell.contains_key(&id) {
            order.push(id.clone());
        }
        by_cell.entry(id).or_default().push(r.clone());
    }
    let mut out = Vec::with_capacity(records.len());
    for id in order {
        let rows = by_cell.remove(&id).unwrap_or_default();
        let n = rows.len() as u32;
        out.extend(rows.into_iter().map(|r| Record { cell_rows: n, ..r }));
    }
    out
}

/// Runs the command.
pub fn run(args: MergeArgs) -> anyhow::Result<()> {
    let mut first: Option<(Value, String, String)> = None;
    let mut runs = Vec::new();
    let mut metas = Vec::new();
    for dir in &args.runs {
        let (meta, hash, rows) = read_run(dir)?;
        let name = dir.display().to_string();
        match &first {
            None => first = Some((meta.clone(), hash, name.clone())),
            Some((_, h, first_name)) if *h != hash => {
                return Err(UsageError(format!(
                    "{first_name} has config hash {h} but {name} has {hash}: these are runs of \
                     different matrices (or profiles) and cannot be merged"
                ))
                .into());
            }
            Some(_) => {}
        }
        metas.push((name.clone(), meta, rows.clone()));
        runs.push((name, rows));
    }
    let Some((mut meta, _, _)) = first else {
        return Err(UsageError("merge needs at least one run folder".into()).into());
    };
    let dir = &args.into;
    if dir.exists() && !args.force {
        return Err(UsageError(format!(
            "{} already exists; nothing was written. Pass --force to replace its outputs, or \
             choose another --into folder",
            dir.display()
        ))
        .into());
    }
    let missing = missing_parts(&metas);
    let records = as_log(&merge_records(&runs)?);

    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let _lock = crate::lock::lock_folder(dir, "merge")?;
    let mut jsonl = Vec::new();
    for r in &records {
        serde_json::to_writer(&mut jsonl, r)?;
        jsonl.push(b'\n');
    }
    harness_core::atomic_file::write_atomically(&dir.join("records.jsonl"), &jsonl)
        .with_context(|| format!("failed to write {}", dir.join("records.jsonl").display()))?;
    let shards: Vec<Value> = metas
        .iter()
        .map(|(_, m, _)| m.get("shard").cloned().unwrap_or(Value::Null))
        .collect();
    let run_id = meta
        .get("run_id")
        .and_then(Value::as_str)
        .unwrap_or("merged")
        .to_string();
    if let Value::Object(m) = &mut meta {
        let from: Vec<Value> = runs.iter().map(|(n, _)| Value::String(n.clone())).collect();
        m.insert("merged_from".into(), Value::Array(from));
        m.insert("merged_shards".into(), Value::Array(shards));
        m.insert("shard".into(), Value::String("merged".into()));
        m.insert("shard_cells".into(), Value::Null);
        m.insert(
            "merge_incomplete".into(),
            Value::Array(missing.iter().cloned().map(Value::String).collect()),
        );
    }
    let meta_text = serde_json::to_string_pretty(&meta)?;
    harness_core::atomic_file::write_atomically(&dir.join("run.json"), meta_text.as_bytes())?;
    let title = format!("protbench run {run_id} (merged from {} runs)", runs.len());
    let errors = sinks::publish(dir, &title, &meta_text, &records)?;
    println!("{}", sinks::terminal(&records));
    println!(
        "merged {} runs: {} rows, {} error rows; records in {}",
        runs.len(),
        records.len(),
        errors.len(),
        dir.display()
    );
    for m in &missing {
        eprintln!("warning: incomplete merge: {m}");
    }
    sinks::fail_on_errors(&errors, &dir.join("records.jsonl"))?;
    if !missing.is_empty() && !args.partial {
        bail!(
            "the merge is incomplete ({}); the outputs were written. Pass --partial to accept an \
             incomplete merge",
            missing.join("; ")
        );
    }
    Ok(())
}
