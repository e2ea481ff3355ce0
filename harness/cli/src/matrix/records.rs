//! Tidy result records: one row per (cell, metric). New metrics never change the columns: every
//! row has every column (an empty `error` on rows that did not fail), so `records.csv` always
//! has one width.
//!
//! `records.jsonl` is an append-only log. Each attempt at a cell appends all its rows in one write
//! and an fsync, and every row says how many rows its attempt wrote (`cell_rows`), so a reader can
//! tell a complete attempt from one that a crash cut short. What a crash can leave is a prefix of
//! the last append: a torn line, or whole lines of an attempt without the rest. A run opening the
//! log ([`RecordLog::repair`]) moves such a tail to `records.torn` and says so; nothing is ever
//! appended after a fragment. The log keeps history (a failed attempt stays when a later one
//! succeeds); what reports, `compare` and `merge` use is [`latest`]: the rows of each cell's last
//! complete attempt. A cell is finished when its last attempt is complete and has no error.

use std::collections::{BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Version of the record schema, written to `run.json` as `records_schema`. 1: `error` only on
/// error rows, no `cell_rows`; 2: every column on every row and `cell_rows`; 3: `timing` on every
/// row. Older logs are still read (a version 1 row counts as complete, a cell's rows being those
/// it appended in one run; a row without `timing` is a timing when its name says so, see
/// [`Record::is_timing`]).
pub const SCHEMA_VERSION: u32 = 3;

/// The `defence` of a cell whose attack needs no exposure: it runs once per victim, whatever the
/// defence (the no-theft reference).
pub const ANY_DEFENCE: &str = "*";

/// The `attack` of a defence's own cell: the owner's accuracy, the overhead, the access levels.
pub const NO_ATTACK: &str = "-";

/// Where the bytes a repair set aside go, beside the log.
pub const TORN_FILE: &str = "records.torn";

/// One measured value.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
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
    /// The error message of a failed cell; empty otherwise (schema 1 omitted it then).
    #[serde(default)]
    pub error: String,
    /// Wall time of the cell's stage that produced the value.
    pub wall_seconds: f64,
    /// Hash of the matrix configuration after the profile.
    pub config_hash: String,
    /// Git commit of the harness build.
    pub git: String,
    /// How many rows the attempt that wrote this row appended (0 in schema 1 logs): a cell whose
    /// last attempt has fewer rows in the log was cut by a crash and runs again.
    #[serde(default)]
    pub cell_rows: u32,
    /// Whether the value is a time or derived from times (it moves with the machine and its
    /// load, so gates compare it loosely and `compare --exact` leaves it out). Set by whoever
    /// measured it; absent (`None`) in logs older than schema 3.
    #[serde(default)]
    pub timing: Option<bool>,
}

impl Record {
    /// The cell this row belongs to, as [`super::plan::CellKey::id`] writes it.
    pub fn cell_id(&self) -> String {
        format!(
            "{}/{}/{}/{}/{}",
            self.dataset, self.model, self.seed, self.defence, self.attack
        )
    }

    /// Whether this is an error row.
    pub fn is_error(&self) -> bool {
        self.status != "ok"
    }

    /// Whether the value is a timing: as marked when it was measured, or, for rows written
    /// before the mark existed, as the name says ([`named_like_a_timing`]).
    pub fn is_timing(&self) -> bool {
        self.timing
            .unwrap_or_else(|| named_like_a_timing(&self.metric))
    }
}

/// How logs older than schema 3 tell a timing: a metric in seconds or milliseconds
/// (`encrypt-seconds`, `latency-ms-p50`, EdgePro's `hook-overhead-ms-p50`) or named a latency.
pub fn named_like_a_timing(metric: &str) -> bool {
    metric.contains("seconds")
        || metric.contains("latency")
        || metric.contains("-ms-")
        || metric.ends_with("-ms")
}

/// Reads a value written by serde_json, which writes non-finite numbers as `null`: without this
/// an error row (value NaN) could not be read back and the run's report would fail.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// What a scan of the log found: the rows of complete attempts, and where they end.
struct Scan {
    rows: Vec<Record>,
    /// Bytes of the log up to the end of the last complete attempt.
    complete_len: usize,
}

/// Reads the log's bytes. Everything after the last complete attempt is a tail that a crash can
/// leave (a torn line, lines of a cut attempt, or the zero bytes some file systems leave after a
/// power cut); it is reported through `complete_len`. A damaged line *followed by* records cannot
/// come from a crash of this version, so it is an error that says what to do.
fn scan(bytes: &[u8], path: &Path) -> anyhow::Result<Scan> {
    let mut rows = Vec::new();
    let mut complete_len = 0;
    let mut group: Vec<Record> = Vec::new();
    let mut group_line = 0;
    let mut damaged: Option<(usize, String)> = None;
    let mut pos = 0;
    let mut line_no = 0;
    while pos < bytes.len() {
        line_no += 1;
        let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
            break; // a torn last line: no newline yet
        };
        let line = &bytes[pos..pos + nl];
        let next = pos + nl + 1;
        pos = next;
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            if group.is_empty() && damaged.is_none() {
                complete_len = next;
            }
            continue;
        }
        let parsed = std::str::from_utf8(line)
            .map_err(|e| e.to_string())
            .and_then(|l| serde_json::from_str::<Record>(l).map_err(|e| e.to_string()));
        let r = match parsed {
            Ok(r) => r,
            Err(e) => {
                damaged.get_or_insert((line_no, e));
                continue;
            }
        };
        if let Some((at, e)) = &damaged {
            anyhow::bail!(
                "{}: line {at} is not a record ({e}), and records follow it. A crash cut that \
                 line and an older harness appended after it. Move line {at} out of the file \
                 (to {TORN_FILE}, say) and run again: the cells whose rows were on it run again",
                path.display()
            );
        }
        if r.cell_rows == 0 {
            // Schema 1: a row is its own unit.
            if !group.is_empty() {
                anyhow::bail!(
                    "{}: line {line_no}: a row without `cell_rows` inside the attempt that starts \
                     at line {group_line}; the log was edited by hand",
                    path.display()
                );
            }
            rows.push(r);
            complete_len = next;
            continue;
        }
        if let Some(first) = group.first()
            && (first.cell_id() != r.cell_id() || first.cell_rows != r.cell_rows)
        {
            // An attempt cut short, then more records: only a failed roll-back leaves this.
            // Its rows are not results; the cell runs again.
            eprintln!(
                "warning: {}: the attempt at cell {} starting at line {group_line} has {} of its \
                 {} rows; ignoring it (the cell runs again)",
                path.display(),
                first.cell_id(),
                group.len(),
                first.cell_rows
            );
            group.clear();
        }
        if group.is_empty() {
            group_line = line_no;
        }
        let want = r.cell_rows as usize;
        group.push(r);
        if group.len() == want {
            rows.append(&mut group);
            complete_len = next;
        }
    }
    Ok(Scan { rows, complete_len })
}

/// What [`RecordLog::repair`] set aside.
#[derive(Debug, Clone, PartialEq)]
pub struct Repair {
    /// Bytes moved out of the log.
    pub bytes: usize,
    /// Where they went.
    pub to: PathBuf,
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

    fn bytes(&self) -> anyhow::Result<Vec<u8>> {
        match std::fs::read(&self.path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("failed to read {}", self.path.display())),
        }
    }

    /// Moves whatever follows the last complete attempt (what a crash mid-append leaves) to
    /// `records.torn` beside the log and cuts the log there, so the next append starts on a clean
    /// line. Only a run that holds the folder's lock may call it. `None` when the log was whole.
    pub fn repair(&self) -> anyhow::Result<Option<Repair>> {
        let bytes = self.bytes()?;
        let scan = scan(&bytes, &self.path)?;
        if scan.complete_len == bytes.len() {
            return Ok(None);
        }
        let tail = &bytes[scan.complete_len..];
        let to = self.path.with_file_name(TORN_FILE);
        let mut aside = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&to)
            .with_context(|| format!("failed to open {}", to.display()))?;
        let mut note = tail.to_vec();
        if note.last() != Some(&b'\n') {
            note.push(b'\n');
        }
        aside
            .write_all(&note)
            .and_then(|()| aside.sync_data())
            .with_context(|| format!("failed to write {}", to.display()))?;
        let log = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .with_context(|| format!("failed to open {}", self.path.display()))?;
        log.set_len(scan.complete_len as u64)
            .and_then(|()| log.sync_data())
            .with_context(|| format!("failed to cut {}", self.path.display()))?;
        Ok(Some(Repair {
            bytes: tail.len(),
            to,
        }))
    }

    /// Every row of every complete attempt, in the order written (the history). An incomplete
    /// tail is left out (a reader never changes the log; the next run sets it aside).
    pub fn read(&self) -> anyhow::Result<Vec<Record>> {
        let bytes = self.bytes()?;
        let scan = scan(&bytes, &self.path)?;
        if scan.complete_len < bytes.len() {
            eprintln!(
                "warning: {}: ignoring {} bytes after the last complete cell (a run was cut \
                 mid-write; the next `harness run` of this matrix sets them aside and reruns \
                 those cells)",
                self.path.display(),
                bytes.len() - scan.complete_len
            );
        }
        Ok(scan.rows)
    }

    /// The latest state of each cell (see [`latest`]).
    pub fn latest(&self) -> anyhow::Result<Vec<Record>> {
        Ok(latest(&self.read()?))
    }

    /// Ids of cells whose last attempt is complete and has no error.
    pub fn finished_cells(&self) -> anyhow::Result<BTreeSet<String>> {
        Ok(finished_cells(&self.latest()?))
    }

    /// Appends one attempt at a cell: all its rows in a single write, then an fsync. If the write
    /// fails (a full disk), the log is cut back to where it was, so no partial attempt stays.
    pub fn append(&self, rows: &[Record]) -> anyhow::Result<()> {
        self.append_with(rows, |f, buf| f.write_all(buf))
    }

    /// [`Self::append`] with the write itself given (tests inject a failing one).
    fn append_with(
        &self,
        rows: &[Record],
        write: impl FnOnce(&mut std::fs::File, &[u8]) -> std::io::Result<()>,
    ) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let n = u32::try_from(rows.len()).context("too many rows for one cell")?;
        let mut buf = Vec::new();
        for r in rows {
            let r = Record {
                cell_rows: n,
                ..r.clone()
            };
            serde_json::to_writer(&mut buf, &r)?;
            buf.push(b'\n');
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("failed to open {}", self.path.display()))?;
        let before = f
            .seek(SeekFrom::End(0))
            .with_context(|| format!("failed to read the length of {}", self.path.display()))?;
        if let Err(e) = write(&mut f, &buf).and_then(|()| f.sync_data()) {
            let rolled_back = f.set_len(before).and_then(|()| f.sync_data());
            let what = match rolled_back {
                Ok(()) => "the log is as it was before this cell",
                Err(_) => "the partial rows stay at its end and the next run sets them aside",
            };
            return Err(e).with_context(|| {
                format!(
                    "failed to append {} rows to {} ({what}); free some disk and run the same \
                     command again: it resumes",
                    rows.len(),
                    self.path.display()
                )
            });
        }
        Ok(())
    }
}

/// The rows of each cell's last attempt, cells in the order they first appear. An attempt is
/// one append (rows with `cell_rows` > 0, in groups of that size); in a schema 1 log, the
/// consecutive rows of one cell.
pub fn latest(rows: &[Record]) -> Vec<Record> {
    let mut order: Vec<String> = Vec::new();
    let mut last: HashMap<String, Vec<Record>> = HashMap::new();
    let mut i = 0;
    while i < rows.len() {
        let id = rows[i].cell_id();
        let n = rows[i].cell_rows as usize;
        let mut j = i + 1;
        if n > 0 {
            j = (i + n).min(rows.len());
        } else {
            while j < rows.len() && rows[j].cell_rows == 0 && rows[j].cell_id() == id {
                j += 1;
            }
        }
        if !last.contains_key(&id) {
            order.push(id.clone());
        }
        last.insert(id, rows[i..j].to_vec());
        i = j;
    }
    order
        .into_iter()
        .filter_map(|id| last.remove(&id))
        .flatten()
        .collect()
}

/// Ids of the cells in `latest` rows that have no error row.
pub fn finished_cells(latest: &[Record]) -> BTreeSet<String> {
    let failed: BTreeSet<String> = latest
        .iter()
        .filter(|r| r.is_error())
        .map(Record::cell_id)
        .collect();
    latest
        .iter()
        .map(Record::cell_id)
        .filter(|id| !failed.contains(id))
        .collect()
}

/// Reads a JSON-lines record file (the history; an incomplete tail is left out with a warning).
pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Record>> {
    RecordLog {
        path: path.to_path_buf(),
    }
    .read()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cell: &str, metric: &str, value: f64) -> Record {
        Record {
            run: "r".into(),
            dataset: "d".into(),
            model: "m".into(),
            defence: cell.into(),
            attack: "-".into(),
            metric: metric.into(),
            value,
            status: "ok".into(),
            ..Record::default()
        }
    }

    fn error(cell: &str, msg: &str) -> Record {
        Record {
            status: "error".into(),
            error: msg.into(),
            value: f64::NAN,
            ..row(cell, "error", 0.0)
        }
    }

    /// Values of the latest state, NaN-safe, for equality checks.
    fn state(rows: &[Record]) -> Vec<(String, String, u64, String)> {
        let mut v: Vec<_> = latest(rows)
            .into_iter()
            .map(|r| (r.cell_id(), r.metric, r.value.to_bits(), r.status))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn error_rows_read_back() {
        let line = r#"{"run":"r","dataset":"d","model":"m","defence":"none","attack":"-","seed":0,"metric":"error","value":null,"higher_is_better":false,"status":"error","error":"boom","wall_seconds":0.0,"config_hash":"h","git":"g"}"#;
        let r: Record = serde_json::from_str(line).unwrap();
        assert!(r.value.is_nan());
        assert_eq!(r.error, "boom");
        assert_eq!(r.cell_rows, 0);
        let ok = line.replace("null", "0.5");
        assert_eq!(serde_json::from_str::<Record>(&ok).unwrap().value, 0.5);
    }

    #[test]
    fn every_row_has_every_column() {
        let ok = serde_json::to_value(row("a", "x", 1.0)).unwrap();
        let err = serde_json::to_value(error("a", "boom")).unwrap();
        let keys =
            |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&ok), keys(&err));
        assert!(keys(&ok).contains(&"error".to_string()));
    }

    #[test]
    fn a_later_success_supersedes_an_error_and_the_history_stays() {
        let dir = tempfile::tempdir().unwrap();
        let log = RecordLog::new(dir.path());
        log.append(&[error("a", "dataset not found")]).unwrap();
        log.append(&[row("b", "x", 1.0)]).unwrap();
        assert_eq!(
            log.finished_cells().unwrap(),
            BTreeSet::from(["d/m/0/b/-".to_string()])
        );
        log.append(&[row("a", "x", 2.0), row("a", "y", 3.0)])
            .unwrap();
        let latest = log.latest().unwrap();
        assert!(latest.iter().all(|r| !r.is_error()), "{latest:?}");
        assert_eq!(latest.len(), 3);
        assert_eq!(log.finished_cells().unwrap().len(), 2);
        assert_eq!(
            log.read().unwrap().len(),
            4,
            "the log keeps the failed attempt"
        );
    }

    #[test]
    fn schema_1_logs_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.jsonl");
        let mut text = String::new();
        for r in [row("a", "x", 1.0), row("a", "y", 2.0), error("b", "boom")] {
            let mut v = serde_json::to_value(&r).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("cell_rows");
            if r.error.is_empty() {
                o.remove("error");
            }
            text.push_str(&format!("{v}\n"));
        }
        std::fs::write(&path, text).unwrap();
        let log = RecordLog::new(dir.path());
        assert_eq!(log.read().unwrap().len(), 3);
        assert_eq!(
            log.finished_cells().unwrap(),
            BTreeSet::from(["d/m/0/a/-".to_string()])
        );
    }

    /// The crash test: the log of a run cut at every byte, then resumed by appending the cells
    /// the cut log does not count as finished, ends in the same latest state as the uncut run.
    #[test]
    fn a_cut_at_any_byte_resumes_to_the_same_records() {
        let dir = tempfile::tempdir().unwrap();
        let cells: Vec<Vec<Record>> = vec![
            vec![row("a", "x", 1.0), row("a", "y", 2.0), row("a", "z", 3.0)],
            vec![error("b", "boom")],
            vec![row("c", "x", 4.0)],
            vec![row("b", "x", 5.0), row("b", "y", 6.0)],
        ];
        let full = RecordLog::new(dir.path());
        for c in &cells {
            full.append(c).unwrap();
        }
        let bytes = std::fs::read(full.path()).unwrap();
        let want = state(&full.read().unwrap());
        // What each cell's next attempt writes: its final rows.
        let reference: HashMap<String, Vec<Record>> = latest(&full.read().unwrap())
            .into_iter()
            .fold(HashMap::new(), |mut m, r| {
                m.entry(r.cell_id()).or_default().push(r);
                m
            });
        for cut in 0..bytes.len() {
            let d = tempfile::tempdir().unwrap();
            let log = RecordLog::new(d.path());
            std::fs::write(log.path(), &bytes[..cut]).unwrap();
            let repaired = log.repair().unwrap();
            let on_disk = std::fs::read(log.path()).unwrap();
            assert!(
                on_disk.is_empty() || on_disk.ends_with(b"\n"),
                "cut at {cut}: the log must end on a whole line after repair"
            );
            assert_eq!(repaired.is_some(), on_disk.len() < cut, "cut at {cut}");
            let done = log.finished_cells().unwrap();
            for (id, rows) in &reference {
                if !done.contains(id) {
                    log.append(rows).unwrap();
                }
            }
            assert_eq!(state(&log.read().unwrap()), want, "cut at {cut}");
            // Nothing was glued: every line of the log parses.
            let text = std::fs::read_to_string(log.path()).unwrap();
            for line in text.lines() {
                serde_json::from_str::<Record>(line).unwrap();
            }
        }
    }

    #[test]
    fn a_torn_tail_is_set_aside_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let log = RecordLog::new(dir.path());
        log.append(&[row("a", "x", 1.0)]).unwrap();
        let mut f = OpenOptions::new().append(true).open(log.path()).unwrap();
        f.write_all(b"{\"run\":\"r\",\"datas").unwrap();
        drop(f);
        let r = log.repair().unwrap().unwrap();
        assert_eq!(r.bytes, 17);
        let aside = std::fs::read_to_string(dir.path().join(TORN_FILE)).unwrap();
        assert!(aside.starts_with("{\"run\":\"r\",\"datas"), "{aside}");
        assert_eq!(log.repair().unwrap(), None);
        log.append(&[row("b", "x", 2.0)]).unwrap();
        assert_eq!(log.read().unwrap().len(), 2);
    }

    #[test]
    fn a_damaged_line_followed_by_records_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let log = RecordLog::new(dir.path());
        log.append(&[row("a", "x", 1.0)]).unwrap();
        let mut f = OpenOptions::new().append(true).open(log.path()).unwrap();
        // What an older harness left: a fragment with the next cell glued to it.
        f.write_all(b"{\"run\":\"r\",\"datas").unwrap();
        drop(f);
        let mut f = OpenOptions::new().append(true).open(log.path()).unwrap();
        let mut line = serde_json::to_vec(&row("b", "x", 2.0)).unwrap();
        line.push(b'\n');
        f.write_all(&line).unwrap();
        f.write_all(&line).unwrap();
        drop(f);
        let msg = format!("{:#}", log.read().unwrap_err());
        assert!(
            msg.contains("line 2") && msg.contains("Move line 2"),
            "{msg}"
        );
    }

    #[test]
    fn a_failed_append_leaves_the_log_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let log = RecordLog::new(dir.path());
        log.append(&[row("a", "x", 1.0)]).unwrap();
        let before = std::fs::read(log.path()).unwrap();
        let err = log
            .append_with(&[row("b", "x", 2.0), row("b", "y", 3.0)], |f, buf| {
                f.write_all(&buf[..buf.len() / 2])?;
                Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "No space left on device",
                ))
            })
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("as it was") && msg.contains("No space left"),
            "{msg}"
        );
        assert_eq!(std::fs::read(log.path()).unwrap(), before);
        assert_eq!(log.repair().unwrap(), None);
    }

    #[test]
    fn an_attempt_cut_at_a_line_boundary_is_not_finished() {
        let dir = tempfile::tempdir().unwrap();
        let log = RecordLog::new(dir.path());
        log.append(&[row("a", "x", 1.0), row("a", "y", 2.0)])
            .unwrap();
        let text = std::fs::read_to_string(log.path()).unwrap();
        let first_line = text.split_inclusive('\n').next().unwrap();
        std::fs::write(log.path(), first_line).unwrap();
        assert!(log.finished_cells().unwrap().is_empty());
        assert!(log.repair().unwrap().is_some());
        assert!(std::fs::read(log.path()).unwrap().is_empty());
    }
}
