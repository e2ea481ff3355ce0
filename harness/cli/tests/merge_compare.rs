//! `harness merge` and `harness compare` end to end: a tiny synthetic matrix run in two shards,
//! merged, then compared with itself and with doctored copies.

// The helpers below run outside `#[test]` functions, where `allow-unwrap-in-tests` does not reach;
// a failing fixture should panic there too.
#![allow(clippy::unwrap_used)]

mod common;

use common::{MATRIX, harness, stderr, stdout};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

/// The two shards of the matrix, each run into its own results folder (as two CI machines
/// would), run once for all tests: (workspace, shard 1 run folder, shard 2 run folder).
fn shards() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static SHARDS: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    SHARDS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.toml"), MATRIX).unwrap();
        let mut runs = Vec::new();
        // Both shards write under one results root, as on a shared volume: each gets its own
        // folder (`<run-id>-shard-IofN`).
        for (shard, results) in [("1/2", "r"), ("2/2", "r")] {
            let out = harness(
                &[
                    "run",
                    "--matrix",
                    "m.toml",
                    "--shard",
                    shard,
                    "--results",
                    results,
                    "--quiet",
                ],
                dir.path(),
            );
            assert!(out.status.success(), "{}", stderr(&out));
            let suffix = format!("-shard-{}", shard.replace('/', "of"));
            let entries: Vec<PathBuf> = std::fs::read_dir(dir.path().join(results))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.join("run.json").exists())
                .filter(|p| p.to_string_lossy().ends_with(&suffix))
                .collect();
            assert_eq!(entries.len(), 1, "{entries:?}");
            runs.push(entries[0].clone());
        }
        let (a, b) = (runs[0].clone(), runs[1].clone());
        (dir, a, b)
    })
}

fn rows(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (cell, metric) identities of a records file, with values.
fn cells(path: &Path) -> BTreeSet<String> {
    rows(path)
        .iter()
        .map(|r| {
            format!(
                "{}/{}/{}/{}/{}/{}={}",
                r["dataset"],
                r["model"],
                r["defence"],
                r["attack"],
                r["seed"],
                r["metric"],
                r["value"]
            )
        })
        .collect()
}

/// A copy of a run folder with each records row passed through `edit`.
fn doctored_copy(run: &Path, to: &Path, edit: impl Fn(&mut serde_json::Value)) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(run.join("run.json"), to.join("run.json")).unwrap();
    let mut text = String::new();
    for mut r in rows(&run.join("records.jsonl")) {
        edit(&mut r);
        if !r.is_null() {
            text.push_str(&r.to_string());
            text.push('\n');
        }
    }
    std::fs::write(to.join("records.jsonl"), text).unwrap();
}

/// The merged run, made once per caller in its own folder.
fn merged(name: &str) -> PathBuf {
    let (dir, s1, s2) = shards();
    let into = dir.path().join(name);
    let out = harness(
        &[
            "merge",
            s1.to_str().unwrap(),
            s2.to_str().unwrap(),
            "--into",
            into.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    into
}

#[test]
fn merge_joins_shards_into_one_run() {
    let (dir, s1, s2) = shards();
    let into = merged("merged-a");
    for f in [
        "records.jsonl",
        "records.csv",
        "summary.md",
        "run.json",
        "report.html",
    ] {
        assert!(into.join(f).exists(), "{f} missing");
    }
    let a = cells(&s1.join("records.jsonl"));
    let b = cells(&s2.join("records.jsonl"));
    assert!(!a.is_empty() && !b.is_empty(), "both shards ran cells");
    assert!(a.is_disjoint(&b));
    let union: BTreeSet<String> = a.union(&b).cloned().collect();
    assert_eq!(cells(&into.join("records.jsonl")), union);
    // 6 cells in all, as in the unsharded run.
    let ids: BTreeSet<String> = rows(&into.join("records.jsonl"))
        .iter()
        .map(|r| format!("{}/{}", r["defence"], r["attack"]))
        .collect();
    assert_eq!(ids.len(), 6, "{ids:?}");
    let csv = std::fs::read_to_string(into.join("records.csv")).unwrap();
    assert!(csv.contains("theft-gain"), "derived rows in the CSV");
    let summary = std::fs::read_to_string(into.join("summary.md")).unwrap();
    assert!(summary.contains("none+top1-label"), "{summary}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(into.join("run.json")).unwrap()).unwrap();
    assert_eq!(meta["merged_from"].as_array().map(Vec::len), Some(2));

    // Merging a shard with itself keeps one copy of each row. Shard 2/2 is missing: the merge
    // says so and exits 1, unless --partial.
    let twice = dir.path().join("twice");
    let merge_s1_twice = |extra: &[&str]| {
        let mut args = vec![
            "merge",
            s1.to_str().unwrap(),
            s1.to_str().unwrap(),
            "--into",
            twice.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        harness(&args, dir.path())
    };
    let out = merge_s1_twice(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("shards 2/2 of the matrix were not given"),
        "{}",
        stderr(&out)
    );
    assert!(twice.join("summary.md").is_file(), "outputs written anyway");
    // The folder exists now: replacing it needs --force.
    let out = merge_s1_twice(&["--partial"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    let out = merge_s1_twice(&["--partial", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // (Set equality: a run may log one metric twice for a cell; the merge keeps one row.)
    assert_eq!(
        cells(&twice.join("records.jsonl")),
        cells(&s1.join("records.jsonl"))
    );
}

#[test]
fn merge_refuses_other_matrices_and_conflicts() {
    let (dir, s1, s2) = shards();
    // A shard of another matrix: a different config hash in run.json.
    let other = dir.path().join("other");
    doctored_copy(s2, &other, |_| {});
    let meta = std::fs::read_to_string(other.join("run.json")).unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    meta["config_hash"] = "ffffffffffff".into();
    std::fs::write(other.join("run.json"), meta.to_string()).unwrap();
    let into = dir.path().join("bad-merge");
    let out = harness(
        &[
            "merge",
            s1.to_str().unwrap(),
            other.to_str().unwrap(),
            "--into",
            into.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("ffffffffffff"), "{}", stderr(&out));
    assert!(!into.join("records.jsonl").exists());

    // The same cell measured twice with different accuracies.
    let conflict = dir.path().join("conflict");
    doctored_copy(s1, &conflict, |r| {
        if r["metric"] == "owner-accuracy" || r["metric"] == "attacker-accuracy" {
            r["value"] = (r["value"].as_f64().unwrap() + 0.5).into();
        }
    });
    let out = harness(
        &[
            "merge",
            s1.to_str().unwrap(),
            conflict.to_str().unwrap(),
            "--into",
            into.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("disagree"), "{}", stderr(&out));

    // Not a run folder.
    let out = harness(
        &["merge", "nowhere", "--into", into.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // A shard cut by a crash (its last cell torn): the merge names the shard and its count.
    let cut = dir.path().join("cut");
    doctored_copy(s2, &cut, |_| {});
    let log = cut.join("records.jsonl");
    let len = std::fs::metadata(&log).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    let cut_into = dir.path().join("cut-merge");
    let out = harness(
        &[
            "merge",
            s1.to_str().unwrap(),
            cut.to_str().unwrap(),
            "--into",
            cut_into.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let want = cells_of_run(s2).len();
    assert!(
        stderr(&out).contains(&format!("(shard 2/2) has {} of its {want} cells", want - 1)),
        "{}",
        stderr(&out)
    );
}

/// The cell ids of a run folder's log.
fn cells_of_run(run: &Path) -> BTreeSet<String> {
    rows(&run.join("records.jsonl"))
        .iter()
        .map(|r| format!("{}/{}/{}", r["defence"], r["attack"], r["seed"]))
        .collect()
}

#[test]
fn compare_passes_on_itself_and_catches_regressions() {
    let (dir, _, _) = shards();
    let run = merged("merged-b");
    let run_s = run.to_str().unwrap();
    let cmp = |args: &[&str]| {
        let mut all = vec!["compare"];
        all.extend_from_slice(args);
        harness(&all, dir.path())
    };
    let last_json = |out: &Output| -> serde_json::Value {
        let text = stdout(out);
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    };

    // A run against itself, and against its own CSV (derived rows are recomputed, not doubled).
    let out = cmp(&[run_s, run_s, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = last_json(&out);
    assert_eq!(v["regressions"], 0);
    assert!(
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["verdict"] == "ok")
    );
    assert!(
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["metric"] == "theft-gain"),
        "derived metrics are compared"
    );
    let csv = run.join("records.csv");
    let out = cmp(&[run_s, csv.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Owner accuracy 0.1 lower: beyond the 0.02 default.
    let worse = dir.path().join("worse");
    doctored_copy(&run, &worse, |r| {
        if r["metric"] == "owner-accuracy" {
            r["value"] = (r["value"].as_f64().unwrap() - 0.1).into();
        }
    });
    let worse_jsonl = worse.join("records.jsonl");
    let worse_s = worse_jsonl.to_str().unwrap();
    let out = cmp(&[run_s, worse_s, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("owner-accuracy"), "{}", stderr(&out));
    assert!(stdout(&out).contains("REGRESSED"), "{}", stdout(&out));
    let v = last_json(&out);
    assert_eq!(v["regressions"], 2, "one row per defence: {v}");
    assert_eq!(
        v["rows"][0]["metric"], "owner-accuracy",
        "regressions first"
    );
    assert_eq!(v["rows"][0]["verdict"], "regressed");
    // The other way round it is an improvement.
    let out = cmp(&[worse_s, run_s]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // --exact: a run reproduces itself; a move in either direction is a difference.
    let out = cmp(&[run_s, run_s, "--exact"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(" 0 differ"), "{}", stdout(&out));
    for (a, b) in [(run_s, worse_s), (worse_s, run_s)] {
        let out = cmp(&[a, b, "--exact", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert_eq!(last_json(&out)["differences"], 2, "{}", stdout(&out));
    }
    let out = cmp(&[
        run_s,
        worse_s,
        "--exact",
        "--tolerance",
        "owner-accuracy=0.2",
    ]);
    assert_eq!(out.status.code(), Some(2), "--exact takes no tolerances");
    // Runs of different matrices are compared, with a note saying so.
    let other = dir.path().join("other-matrix");
    doctored_copy(&run, &other, |r| r["config_hash"] = "ffffffffffff".into());
    let out = cmp(&[run_s, other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("different matrices") && stderr(&out).contains("ffffffffffff"),
        "{}",
        stderr(&out)
    );
    let out = cmp(&[run_s, run_s]);
    assert!(
        !stderr(&out).contains("different matrices"),
        "{}",
        stderr(&out)
    );
    // A wider tolerance lets it pass.
    let out = cmp(&[run_s, worse_s, "--tolerance", "owner-accuracy=0.2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // A cell that disappeared is a regression; a new one is not.
    let fewer = dir.path().join("fewer");
    doctored_copy(&run, &fewer, |r| {
        if r["attack"] == "ftll" && r["defence"] == "none" {
            *r = serde_json::Value::Null;
        }
    });
    let out = cmp(&[run_s, fewer.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("MISSING"), "{}", stdout(&out));
    let out = cmp(&[fewer.to_str().unwrap(), run_s]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Usage errors.
    for bad in ["foo", "owner-accuracy=", "owner-accuracy=-1", "=0.1"] {
        let out = cmp(&[run_s, run_s, "--tolerance", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
    }
    let out = cmp(&[run_s, "no-such-run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
