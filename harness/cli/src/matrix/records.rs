//! Tidy result records: one row per (cell, metric). New metrics never change the columns.
//! Rows are appended to `records.jsonl` one cell at a time with a single write and an fsync, so a
//! crash loses at most the cell in flight; a torn last line is ignored on resume.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// One measured value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Run id.
    pub run: String,
    /// Dataset id.
    pub dataset: String,
    /// Victim model id.
    pub model: String,
    /// Defence entry (`*` for rows that do not depend on the defence).
    pub defence: String,
    /// Attack entry (`-` for the defence's own rows).
    pub attack: String,
    /// Seed.
    pub seed: u64,
    /// Metric name.
    pub metric: String,
    /// Value (NaN for error rows; JSON writes NaN as `null`, which reads back as NaN).
    #[serde(deserialize_with = "nan_if_null")]
    pub value: f64,
    /// Whether a larger value is better for the protection's owner.
    pub higher_is_better: bool,
    /// `ok` or `error`.
    pub status: String,
    /// The error message of a failed cell.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Wall time of the cell's stage that produced the value.
    pub wall_seconds: f64,
    /// Hash of the matrix configuration after the profile.
    pub config_hash: String,
    /// Git commit of the harness build.
    pub git: String,
}

/// Reads a value written by serde_json, which writes non-finite numbers as `null`: without this
/// an error row (value NaN) could not be read back and the run's report would fail.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The append-only record file of one run.
pub struct RecordLog {
    path: PathBuf,
}

impl RecordLog {
    /// The log at `dir/records.jsonl` (created on first append).
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("records.jsonl"),
        }
    }

    /// Where the log lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every complete record; a torn last line (a crash mid-write) is skipped.
    pub fn read(&self) -> anyhow::Result<Vec<Record>> {
        read_jsonl(&self.path)
    }

    /// Ids of cells that finished without error.
    pub fn finished_cells(&self) -> anyhow::Result<BTreeSet<String>> {
        let mut ok = BTreeSet::new();
        let mut failed = BTreeSet::new();
        for r in self.read()? {
            let id = format!(
                "{}/{}/{}/{}/{}",
                r.dataset, r.model, r.seed, r.defence, r.attack
            );
            if r.status == "ok" {
                ok.insert(id);
            } else {
                failed.insert(id);
            }
        }
        Ok(ok.difference(&failed).cloned().collect())
    }

    /// Appends one cell's rows in a single write, then syncs.
    pub fn append(&self, rows: &[Record]) -> anyhow::Result<()> {
        let mut buf = Vec::new();
        for r in rows {
            serde_json::to_writer(&mut buf, r)?;
            buf.push(b'\n');
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("failed to open {}", self.path.display()))?;
        f.write_all(&buf)
            .and_then(|()| f.sync_data())
            .with_context(|| format!("failed to append to {}", self.path.display()))
    }
}

/// Reads a JSON-lines record file, skipping a torn final line.
pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Record>(line) {
            Ok(r) => out.push(r),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {
                eprintln!("warning: ignoring a torn last line in {}", path.display());
            }
            Err(e) => {
                return Err(anyhow::anyhow!("{}: line {}: {e}", path.display(), i + 1));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_rows_read_back() {
        let line = r#"{"run":"r","dataset":"d","model":"m","defence":"none","attack":"-","seed":0,"metric":"error","value":null,"higher_is_better":false,"status":"error","error":"boom","wall_seconds":0.0,"config_hash":"h","git":"g"}"#;
        let r: Record = serde_json::from_str(line).unwrap();
        assert!(r.value.is_nan());
        assert_eq!(r.error, "boom");
        let ok = line.replace("null", "0.5");
        assert_eq!(serde_json::from_str::<Record>(&ok).unwrap().value, 0.5);
    }
}
