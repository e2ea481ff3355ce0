//! `harness run --matrix` end to end on synthetic data: plans, runs, writes every output, resumes,
//! and rejects bad matrices before anything trains.

mod common;

use common::{MATRIX, harness, stderr};

#[test]
fn runs_writes_outputs_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.toml"), MATRIX).unwrap();
    let out = harness(&["run", "--matrix", "m.toml", "--quiet"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let runs: Vec<_> = std::fs::read_dir(dir.path().join("results"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("t-default-"))
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = dir.path().join("results").join(&runs[0]);
    for f in [
        "records.jsonl",
        "records.csv",
        "summary.md",
        "run.json",
        "report.html",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let jsonl = std::fs::read_to_string(run.join("records.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let metric = |defence: &str, attack: &str, metric: &str| {
        rows.iter()
            .find(|r| r["defence"] == defence && r["attack"] == attack && r["metric"] == metric)
            .map(|r| r["value"].as_f64().unwrap())
    };
    // 2 defence cells + extraction on both + ftll once + 1 scratch = 6 cells, none failed.
    assert!(rows.iter().all(|r| r["status"] == "ok"), "{jsonl}");
    // Each metric appears once per cell.
    let mut keys: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}/{}/{}/{}",
                r["defence"], r["attack"], r["seed"], r["metric"]
            )
        })
        .collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "a metric was recorded twice for one cell");
    assert!(metric("none", "-", "owner-accuracy").unwrap() > 0.1);
    assert!(metric("none", "-", "latency-ms-p50").unwrap() > 0.0);
    // Every deployment is timed with the unprotected victim in the same rounds: a paired ratio
    // with its interval, marked as a timing for the gates.
    for d in ["none", "none+top1-label"] {
        let (lo, mid, hi) = (
            metric(d, "-", "latency-ratio-low").unwrap(),
            metric(d, "-", "latency-ratio").unwrap(),
            metric(d, "-", "latency-ratio-high").unwrap(),
        );
        assert!(0.0 < lo && lo <= mid && mid <= hi, "{d}: {lo} {mid} {hi}");
    }
    let marked = |m: &str| {
        rows.iter()
            .filter(|r| r["metric"] == m)
            .all(|r| r["timing"] == true)
    };
    assert!(marked("latency-ratio") && marked("latency-ms-p99") && marked("attack-seconds"));
    assert!(
        rows.iter()
            .filter(|r| r["metric"] == "owner-accuracy")
            .all(|r| r["timing"] == false)
    );
    // Entries that differ only by the API's perturbations share one protection (a second one
    // would have taken its own, different, time).
    assert_eq!(
        metric("none", "-", "protect-seconds"),
        metric("none+top1-label", "-", "protect-seconds")
    );
    assert!(metric("*", "scratch", "attacker-accuracy").is_some());
    assert_eq!(
        metric("none", "extraction", "queries-used"),
        Some(128.0),
        "the ledger counts queries"
    );
    // White-box attacks ignore the oracle: top-1 labels do not change what fine-tuning sees, so
    // the planner runs fine-tuning once, on `none`, and the summary says so.
    assert!(metric("none", "ftll", "fidelity").is_some());
    assert!(metric("none+top1-label", "ftll", "attacker-accuracy").is_none());
    let csv = std::fs::read_to_string(run.join("records.csv")).unwrap();
    assert!(csv.contains("theft-gain"), "derived theft gain in the CSV");
    let summary = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(summary.contains("none+top1-label"), "{summary}");
    assert!(summary.contains("as none"), "{summary}");
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(html.contains("none+top1-label") && html.contains("<svg"));

    // The same command again: every cell is finished, nothing reruns.
    let out = harness(
        &["run", "--matrix", "m.toml", "--json", "--quiet"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["cells_run"], 0);
    assert_eq!(v["cells_skipped"], 6);
    assert_eq!(
        std::fs::read_to_string(run.join("records.jsonl")).unwrap(),
        jsonl
    );
    // Each sitting's provenance is kept, and a run is not continued under other numerics.
    let run_json = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap()
    };
    let mut meta = run_json();
    let sittings = meta["sittings"].as_array().unwrap();
    assert_eq!(sittings.len(), 2, "{meta}");
    assert_eq!(sittings[1], meta["provenance"]);
    let mode = meta["provenance"]["numerics"].as_str().unwrap().to_string();
    let other = if mode.starts_with("fixed") {
        "fast (gemm crate)"
    } else {
        "fixed (avx2 f32 kernel)"
    };
    meta["sittings"][0]["numerics"] = other.into();
    let edited = serde_json::to_string(&meta).unwrap();
    std::fs::write(run.join("run.json"), &edited).unwrap();
    let out = harness(&["run", "--matrix", "m.toml", "--quiet"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("PROTBENCH_NUMERICS="),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(run.join("run.json")).unwrap(),
        edited
    );
}

#[test]
fn shards_partition_the_cells() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.toml"), MATRIX).unwrap();
    let cells = |shard: Option<&str>| {
        let mut args = vec!["run", "--matrix", "m.toml", "--dry-run"];
        if let Some(s) = shard {
            args.extend(["--shard", s]);
        }
        let out = harness(&args, dir.path());
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let all = cells(None);
    assert_eq!(all.len(), 6);
    let mut joined = [cells(Some("1/3")), cells(Some("2/3")), cells(Some("3/3"))].concat();
    joined.sort();
    let mut all_sorted = all.clone();
    all_sorted.sort();
    assert_eq!(
        joined, all_sorted,
        "shards are disjoint and cover the matrix"
    );
}

#[test]
fn bad_matrices_are_usage_errors_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            MATRIX.replace("\"extraction\"", "\"extractoin\""),
            "did you mean `extraction`",
        ),
        (
            MATRIX.replace("\"none\",", "\"none\", \"nope\","),
            "unknown defence `nope`",
        ),
        (
            MATRIX.replace("variant = \"ftll\"", "variant = \"ftll\"\nfoo = 1"),
            "unknown field `foo`",
        ),
        (
            MATRIX.replace("[victim]", "[victim]\nepoch = 3"),
            "unknown field `epoch`",
        ),
        (
            MATRIX.replace("none+top1-label", "none+top2-label"),
            "unknown output perturbation",
        ),
        (MATRIX.replace("\"resnet20\"", "\"resnet21\""), "resnet20"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        std::fs::write(dir.path().join("bad.toml"), text).unwrap();
        let out = harness(&["run", "--matrix", "bad.toml"], dir.path());
        assert_eq!(out.status.code(), Some(2), "case {i}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "case {i}: {}",
            stderr(&out)
        );
        assert!(
            !dir.path().join("results").exists(),
            "case {i}: nothing may run"
        );
    }
    let out = harness(
        &["run", "--matrix", "bad.toml", "--profile", "fast"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let out = harness(
        &["run", "--matrix", "bad.toml", "--shard", "4/3"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn meaningless_settings_are_usage_errors_naming_the_key_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            MATRIX.replace("epochs = 2", "epochs = 0"),
            vec![],
            "victim.epochs must be an integer >= 1, got 0",
        ),
        (
            MATRIX.replace("queries = 128", "queries = 0"),
            vec![],
            "budget.queries must be an integer >= 1, got 0",
        ),
        (
            MATRIX.replace("lr = 0.05", "lr = -0.05"),
            vec![],
            "victim.lr must be a number > 0, got -0.05",
        ),
        (
            MATRIX.replace("none+top1-label", "none+top-k:0"),
            vec![],
            "`top-k:0`: top-k's argument must be an integer >= 1, got 0",
        ),
        (
            format!("{MATRIX}lr = -1.0\n"),
            vec![],
            "attacks.ftll: settings of attack `fine-tune`: `lr` must be in (0, inf), got -1",
        ),
        (
            format!("{MATRIX}defences = []\n"),
            vec![],
            "[attacks.ftll] defences = [] runs the attack against no defence",
        ),
        (
            MATRIX.replace("seeds = [0]", "seeds = [0, 0]"),
            vec![],
            "axes.seeds lists `0` more than once",
        ),
        (
            format!("{MATRIX}[profiles.p]\nqueries = 0\n"),
            vec!["--profile", "p"],
            "profiles.p.queries must be an integer >= 1, got 0",
        ),
    ];
    for (i, (text, extra, expected)) in cases.iter().enumerate() {
        std::fs::write(dir.path().join("bad.toml"), text).unwrap();
        // A real run, not a dry run: it must stop before training anything.
        let mut args = vec!["run", "--matrix", "bad.toml", "--quiet"];
        args.extend(extra);
        let out = harness(&args, dir.path());
        assert_eq!(out.status.code(), Some(2), "case {i}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "case {i}: {}",
            stderr(&out)
        );
        assert!(
            !dir.path().join("results").exists(),
            "case {i}: nothing may run"
        );
        let mut args = vec!["run", "--matrix", "bad.toml", "--dry-run"];
        args.extend(extra);
        let out = harness(&args, dir.path());
        assert_eq!(out.status.code(), Some(2), "case {i} (dry run)");
    }
}

#[test]
fn a_results_folder_of_another_matrix_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.toml"), MATRIX).unwrap();
    let out = harness(&["run", "--matrix", "m.toml", "--dry-run"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stderr(&out)
        .split("run id ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    let run = dir.path().join("results").join(&id);
    std::fs::create_dir_all(&run).unwrap();
    let foreign = r#"{"config_hash": "0123456789ab", "run_id": "x"}"#;
    std::fs::write(run.join("run.json"), foreign).unwrap();
    let out = harness(&["run", "--matrix", "m.toml", "--quiet"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("another matrix"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(run.join("run.json")).unwrap(),
        foreign,
        "nothing overwritten"
    );
    assert!(!run.join("records.jsonl").exists());
}
