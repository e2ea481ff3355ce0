//! `harness run` under faults, end to end: cells that fail beside cells that pass, a crash that
//! cuts `records.jsonl` anywhere, and a second process on the same results folder. The records
//! must survive each: the report is always written, a later success supersedes an error, a cut
//! log resumes to the records an uncut run has, and two writers never share a folder.

// The helpers below run outside `#[test]` functions, where `allow-unwrap-in-tests` does not reach.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use common::{MATRIX, harness, stderr, stdout};

/// The run folders under `results`.
fn run_dirs(results: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(results)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("run.json").exists())
        .collect();
    v.sort();
    v
}

fn rows(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("records.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn cell(r: &serde_json::Value) -> String {
    format!(
        "{}/{}/{}/{}/{}",
        r["dataset"], r["model"], r["seed"], r["defence"], r["attack"]
    )
}

/// Every non-timing (cell, metric) of a run's log with its value; a pair seen twice fails the
/// test (a resumed log holds one attempt per cell when none failed).
fn values(run: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for r in rows(run) {
        let metric = r["metric"].as_str().unwrap().to_string();
        // Timings move from one execution to the next; the runner marks them.
        if r["timing"] == true {
            continue;
        }
        let key = format!("{} {metric}", cell(&r));
        let old = out.insert(key.clone(), format!("{} {}", r["status"], r["value"]));
        assert!(old.is_none(), "{key} recorded twice in {}", run.display());
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A 2-class image folder of 8x8 PNGs: 24 training and 6 test images per class.
fn write_image_folder(root: &Path) {
    for (split, n) in [("train", 24), ("test", 6)] {
        for class in 0..2u8 {
            let dir = root.join(split).join(format!("c{class}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(8, 8, |x, y| {
                    let v = (x * 31 + y * 17 + i * 7) as u8;
                    if class == 0 {
                        image::Rgb([v, 40, 200])
                    } else {
                        image::Rgb([200, v, 40])
                    }
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

#[test]
fn failed_cells_keep_the_report_and_a_later_success_supersedes_them() {
    let dir = tempfile::tempdir().unwrap();
    let matrix = MATRIX.replace(
        "datasets = [\"synthetic:8\"]",
        "datasets = [\"synthetic:8\", \"image-folder:imgs\"]",
    );
    std::fs::write(dir.path().join("m.toml"), matrix).unwrap();
    // The image folder is missing: its 6 cells fail, the synthetic ones pass.
    let out = harness(&["run", "--matrix", "m.toml", "--quiet"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("6 cells failed:"),
        "the terminal lists causes: {err}"
    );
    assert!(
        err.contains("imgs"),
        "the cause names the missing folder: {err}"
    );
    assert!(stdout(&out).contains("synthetic:8"), "the table is printed");
    let run = run_dirs(&dir.path().join("results")).remove(0);
    for f in ["records.csv", "summary.md", "report.html"] {
        assert!(run.join(f).is_file(), "{f} must be written when cells fail");
    }
    let mut csv = csv::Reader::from_path(run.join("records.csv")).unwrap();
    let width = csv.headers().unwrap().len();
    assert!(csv.records().all(|r| r.unwrap().len() == width));
    let summary = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(
        summary.contains("Failed cells") && summary.contains("imgs"),
        "{summary}"
    );
    let first = rows(&run).len();

    // The cause fixed, the same command reruns the failed cells only and exits 0.
    write_image_folder(&dir.path().join("imgs"));
    let out = harness(
        &["run", "--matrix", "m.toml", "--quiet", "--json"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let last = stdout(&out).lines().last().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(
        (v["cells_run"].as_u64(), v["cells_failed"].as_u64()),
        (Some(6), Some(0))
    );
    let mut csv = csv::Reader::from_path(run.join("records.csv")).unwrap();
    let status = csv
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "status")
        .unwrap();
    assert!(
        csv.records().all(|r| &r.unwrap()[status] == "ok"),
        "the report shows the latest state of each cell"
    );
    let summary = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(!summary.contains("Failed cells"), "{summary}");
    assert!(summary.contains("image-folder:imgs"), "{summary}");
    let history = rows(&run);
    assert_eq!(
        history.iter().filter(|r| r["status"] == "error").count(),
        6,
        "the log keeps the failed attempts"
    );

    // Nothing left to do: a third run adds no rows and exits 0.
    let out = harness(&["run", "--matrix", "m.toml", "--quiet"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(rows(&run).len(), history.len());
    assert!(history.len() > first);
}

#[test]
fn a_run_cut_anywhere_resumes_to_the_records_of_an_uncut_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.toml"), MATRIX).unwrap();
    let reference = dir.path().join("reference");
    let out = harness(
        &[
            "run",
            "--matrix",
            "m.toml",
            "--quiet",
            "--results",
            "reference",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let run = run_dirs(&reference).remove(0);
    let name = run.file_name().unwrap().to_owned();
    let want = values(&run);
    let log = std::fs::read(run.join("records.jsonl")).unwrap();
    let line_ends: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i + 1)
        .collect();
    // Mid-line in the last row, at a line boundary inside the last cell, mid-line in the middle
    // of the log, and after the first byte.
    let cuts = [
        log.len() - 7,
        line_ends[line_ends.len() - 2],
        log.len() / 2 + 3,
        1,
    ];
    for (i, cut) in cuts.into_iter().enumerate() {
        let results = dir.path().join(format!("cut-{i}"));
        copy_dir(&reference, &results);
        let cut_run = results.join(&name);
        let f = OpenOptions::new()
            .write(true)
            .open(cut_run.join("records.jsonl"))
            .unwrap();
        f.set_len(cut as u64).unwrap();
        drop(f);
        let out = harness(
            &[
                "run",
                "--matrix",
                "m.toml",
                "--quiet",
                "--results",
                results.to_str().unwrap(),
            ],
            dir.path(),
        );
        assert!(out.status.success(), "cut at {cut}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("set aside"),
            "cut at {cut}: the repair is reported: {}",
            stderr(&out)
        );
        assert!(cut_run.join("records.torn").is_file(), "cut at {cut}");
        assert_eq!(values(&cut_run), want, "cut at {cut}");
        let out = harness(
            &[
                "compare",
                "--exact",
                run.to_str().unwrap(),
                cut_run.to_str().unwrap(),
            ],
            dir.path(),
        );
        assert!(out.status.success(), "cut at {cut}: {}", stdout(&out));
    }
}

#[test]
fn a_results_folder_in_use_is_refused_with_the_owner_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.toml"), MATRIX).unwrap();
    let out = harness(&["run", "--matrix", "m.toml", "--dry-run"], dir.path());
    let id = stderr(&out)
        .split("run id ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    let run = dir.path().join("results").join(&id);
    std::fs::create_dir_all(&run).unwrap();
    // Another process's lock, as a run holds it.
    let mut held = File::create(run.join(".lock")).unwrap();
    held.try_lock().unwrap();
    writeln!(held, "pid 424242").unwrap();
    let out = harness(&["run", "--matrix", "m.toml", "--quiet"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("in use by another harness process (pid 424242)"),
        "{}",
        stderr(&out)
    );
    assert!(!run.join("records.jsonl").exists(), "nothing ran");
    drop(held);
    let out = harness(
        &["run", "--matrix", "m.toml", "--quiet", "--dry-run"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}
