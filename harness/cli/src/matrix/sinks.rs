//! The files a run folder holds for people and tools besides its record log, and the terminal
//! summary: one list of sinks that `harness run` and `harness merge` both publish through, so a
//! new output format is one entry in [`SINKS`] and appears in both.
//!
//! Every sink renders from the latest state of each cell with the derived rows added, and is
//! written to a temporary file then renamed, so a crash never leaves half a report.

use std::path::Path;

use anyhow::{Context, bail};

use super::records::Record;
use super::report;

/// What a sink renders from.
pub struct Published<'a> {
    /// Report title (`protbench run RUN-ID`).
    pub title: &'a str,
    /// The run's `run.json`, shown in the HTML report.
    pub meta_json: &'a str,
    /// Measured rows followed by the derived ones.
    pub records: &'a [Record],
    /// The error rows.
    pub errors: &'a [&'a Record],
}

/// One output file of a run folder.
pub struct Sink {
    /// File name in the run folder.
    pub file: &'static str,
    /// Its bytes.
    pub render: fn(&Published<'_>) -> anyhow::Result<Vec<u8>>,
}

/// Every output of a run folder, in the order they are written.
pub const SINKS: &[Sink] = &[
    Sink {
        file: "records.csv",
        render: csv_bytes,
    },
    Sink {
        file: "summary.md",
        render: |p| Ok(report::markdown(p.records, p.title, p.errors).into_bytes()),
    },
    Sink {
        file: "report.html",
        render: |p| {
            Ok(super::html::render(p.records, p.title, Some(p.meta_json), p.errors).into_bytes())
        },
    },
];

/// All rows (derived ones included), one width whatever failed.
fn csv_bytes(p: &Published<'_>) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in p.records {
        w.serialize(r)?;
    }
    w.into_inner().context("failed to finish the CSV")
}

/// Writes every sink into `dir` from `measured` (the latest state of each cell, without derived
/// rows). Returns the error rows.
pub fn publish(
    dir: &Path,
    title: &str,
    meta_json: &str,
    measured: &[Record],
) -> anyhow::Result<Vec<Record>> {
    let errors: Vec<Record> = measured.iter().filter(|r| r.is_error()).cloned().collect();
    let records = report::with_derived(measured);
    let error_refs: Vec<&Record> = errors.iter().collect();
    let view = Published {
        title,
        meta_json,
        records: &records,
        errors: &error_refs,
    };
    for sink in SINKS {
        let path = dir.join(sink.file);
        let bytes = (sink.render)(&view)?;
        harness_core::atomic_file::write_atomically(&path, &bytes)
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    Ok(errors)
}

/// The terminal table of `measured` (derived rows added).
pub fn terminal(measured: &[Record]) -> String {
    report::terminal_table(&report::with_derived(measured))
}

/// Prints why cells failed and fails with a message pointing at `log`, when any did.
pub fn fail_on_errors(errors: &[Record], log: &Path) -> anyhow::Result<()> {
    if errors.is_empty() {
        return Ok(());
    }
    eprintln!("{}", report::failure_causes(errors));
    bail!(
        "{} cells failed (their error rows are in {}; the causes are above and in summary.md)",
        errors.len(),
        log.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(defence: &str, status: &str, error: &str) -> Record {
        Record {
            dataset: "cifar10".into(),
            model: "resnet20".into(),
            defence: defence.into(),
            attack: "-".into(),
            metric: if status == "ok" {
                "owner-accuracy"
            } else {
                "error"
            }
            .into(),
            value: 0.5,
            status: status.into(),
            error: error.into(),
            ..Record::default()
        }
    }

    #[test]
    fn a_run_with_failed_and_passed_cells_writes_every_sink() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![
            rec("none", "ok", ""),
            rec("edgepro", "error", "dataset not found"),
        ];
        let errors = publish(dir.path(), "t", "{}", &rows).unwrap();
        assert_eq!(errors.len(), 1);
        for sink in SINKS {
            assert!(dir.path().join(sink.file).is_file(), "{}", sink.file);
        }
        let mut reader = csv::Reader::from_path(dir.path().join("records.csv")).unwrap();
        let width = reader.headers().unwrap().len();
        let widths: Vec<usize> = reader.records().map(|r| r.unwrap().len()).collect();
        assert_eq!(widths, vec![width, width]);
        let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
        assert!(md.contains("dataset not found"), "{md}");
        assert!(
            md.contains("| failed |"),
            "the table marks the failed cell: {md}"
        );
        assert!(fail_on_errors(&errors, Path::new("records.jsonl")).is_err());
        assert!(fail_on_errors(&[], Path::new("records.jsonl")).is_ok());
    }
}
