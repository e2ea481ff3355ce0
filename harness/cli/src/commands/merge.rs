//! `harness merge RUN_DIR... --into DIR`: joins the records of several shards (or partial runs)
//! of one matrix into one run folder with the same outputs `harness run` writes.
//!
//! Rules: every run must have the same `config_hash` in its `run.json` (shards of different
//! matrices are never joined: usage error). Derived rows are dropped and recomputed. A row of the
//! same cell and metric seen twice keeps the `ok` one; two `ok` rows that disagree are an error,
//! except for timing metrics (`*seconds*`, `latency*`), which differ from one execution to the
//! next: the first is kept with a warning. Error rows of a cell that has `ok` rows elsewhere are
//! dropped. The command exits 1 when error rows remain (after writing the outputs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::MergeArgs;
use crate::exit::UsageError;
use crate::matrix::compare::is_derived;
use crate::matrix::records::{Record, read_jsonl};
use crate::matrix::report;

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

fn is_timing(metric: &str) -> bool {
    metric.contains("seconds") || metric.starts_with("latency")
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
    let rows = read_jsonl(&records)?
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
                    if is_timing(&r.metric) {
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

/// Runs the command.
pub fn run(args: MergeArgs) -> anyhow::Result<()> {
    let mut first: Option<(Value, String, String)> = None;
    let mut runs = Vec::new();
    let mut shards = Vec::new();
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
        shards.push(meta.get("shard").cloned().unwrap_or(Value::Null));
        runs.push((name, rows));
    }
    let Some((mut meta, _, _)) = first else {
        return Err(UsageError("merge needs at least one run folder".into()).into());
    };
    let mut records = merge_records(&runs)?;
    let errors: Vec<Record> = records
        .iter()
        .filter(|r| r.status != "ok")
        .cloned()
        .collect();

    let dir = &args.into;
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let mut jsonl = Vec::new();
    for r in &records {
        serde_json::to_writer(&mut jsonl, r)?;
        jsonl.push(b'\n');
    }
    harness_core::atomic_file::write_atomically(&dir.join("records.jsonl"), &jsonl)
        .with_context(|| format!("failed to write {}", dir.join("records.jsonl").display()))?;
    let measured = records.len();
    records.extend(report::derive(&records));
    report::write_csv(&dir.join("records.csv"), &records)?;
    let run_id = meta
        .get("run_id")
        .and_then(Value::as_str)
        .unwrap_or("merged")
        .to_string();
    let error_refs: Vec<&Record> = errors.iter().collect();
    let md = report::markdown(
        &records,
        &format!("protbench run {run_id} (merged from {} runs)", runs.len()),
        &error_refs,
    );
    harness_core::atomic_file::write_atomically(&dir.join("summary.md"), md.as_bytes())?;
    if let Value::Object(m) = &mut meta {
        let from: Vec<Value> = runs.iter().map(|(n, _)| Value::String(n.clone())).collect();
        m.insert("merged_from".into(), Value::Array(from));
        m.insert("merged_shards".into(), Value::Array(shards));
        m.insert("shard".into(), Value::String("merged".into()));
    }
    let meta_text = serde_json::to_string_pretty(&meta)?;
    harness_core::atomic_file::write_atomically(&dir.join("run.json"), meta_text.as_bytes())?;
    let html = crate::matrix::html::render(
        &records,
        &format!("protbench run {run_id} (merged from {} runs)", runs.len()),
        Some(&meta_text),
        &error_refs,
    );
    harness_core::atomic_file::write_atomically(&dir.join("report.html"), html.as_bytes())?;
    println!("{}", report::terminal_table(&records));
    println!(
        "merged {} runs: {} rows, {} error rows; records in {}",
        runs.len(),
        measured,
        errors.len(),
        dir.display()
    );
    if !errors.is_empty() {
        bail!(
            "{} cells failed (error rows in {})",
            errors.len(),
            dir.join("records.jsonl").display()
        );
    }
    Ok(())
}
