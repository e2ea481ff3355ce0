//! What differs between the machines and arithmetic of two runs, read from their `run.json`.
//! `harness compare` prints it so that a difference is read for what it is: under fixed
//! numerics two CPUs must agree bit for bit, under `fast` (or between the two modes) they need
//! not, and a different thread count or kernel path is worth knowing either way.

use std::path::Path;

use serde_json::Value;

/// The provenance facts compared, as named in `run.json`.
const FACTS: [(&str, &str); 5] = [
    ("numerics", "numerics"),
    ("cpu_model", "CPU"),
    ("threads", "threads"),
    ("git", "build"),
    ("device", "device"),
];

/// The `run.json` beside a run's records: in the folder itself, or beside a records file.
fn run_json(path: &Path) -> Option<Value> {
    let dir = if path.is_dir() { path } else { path.parent()? };
    let text = std::fs::read_to_string(dir.join("run.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Every provenance object of a run: each sitting of a resumed run, else its one provenance.
fn sittings(run: &Value) -> Vec<Value> {
    match (
        run.get("sittings").and_then(Value::as_array),
        run.get("provenance"),
    ) {
        (Some(list), _) => list.clone(),
        (None, Some(p)) => vec![p.clone()],
        (None, None) => Vec::new(),
    }
}

/// A fact as text (`numerics` of runs older than the field: they were all made under `fast`).
fn fact(p: &Value, key: &str) -> String {
    match p.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None if key == "numerics" => "fast (recorded before the field)".into(),
        Some(Value::Null) | None => "unknown".into(),
        Some(v) => v.to_string(),
    }
}

/// One line per fact that differs between the two runs (or between the sittings of one), empty
/// when they agree or a side has no `run.json` (a bare records file).
pub fn differences(base: &Path, new: &Path) -> Vec<String> {
    let (Some(b), Some(n)) = (run_json(base), run_json(new)) else {
        return Vec::new();
    };
    let (b, n) = (sittings(&b), sittings(&n));
    let mut lines = Vec::new();
    for (key, label) in FACTS {
        let values = |side: &[Value]| {
            let mut v: Vec<String> = side.iter().map(|p| fact(p, key)).collect();
            v.dedup();
            v.join(" then ")
        };
        let (vb, vn) = (values(&b), values(&n));
        if vb != vn {
            lines.push(format!("{label}: base {vb}; new {vn}"));
        }
    }
    lines
}

/// Whether the two runs were made under different numerics modes (or either under `fast` on
/// different CPUs): then values may differ without any change of code.
pub fn may_differ_without_a_change(base: &Path, new: &Path) -> bool {
    let (Some(b), Some(n)) = (run_json(base), run_json(new)) else {
        return false;
    };
    let all: Vec<Value> = sittings(&b).into_iter().chain(sittings(&n)).collect();
    let mode = |p: &Value| {
        fact(p, "numerics")
            .split_whitespace()
            .next()
            .map(str::to_string)
    };
    let modes: std::collections::BTreeSet<_> = all.iter().map(mode).collect();
    let cpus: std::collections::BTreeSet<_> = all.iter().map(|p| fact(p, "cpu_model")).collect();
    modes.len() > 1 || (modes.iter().any(|m| m.as_deref() != Some("fixed")) && cpus.len() > 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, provenance: Value) {
        std::fs::create_dir_all(dir).unwrap();
        let v = serde_json::json!({ "provenance": provenance });
        std::fs::write(dir.join("run.json"), v.to_string()).unwrap();
    }

    #[test]
    fn names_what_differs_and_when_values_may_move() {
        let t = tempfile::tempdir().unwrap();
        let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
        let p = |numerics: &str, cpu: &str, threads: u32| serde_json::json!({"numerics": numerics, "cpu_model": cpu, "threads": threads, "git": "x", "device": "cpu"});
        run(&a, p("fixed (avx512 f32 kernel)", "EPYC", 2));
        run(&b, p("fixed (avx2 f32 kernel)", "Xeon", 4));
        run(&c, p("fast (gemm crate)", "Xeon", 2));
        let d = differences(&a, &b);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].contains("avx512") && d[0].contains("avx2"), "{d:?}");
        assert!(
            d.iter().any(|l| l.starts_with("threads: base 2; new 4")),
            "{d:?}"
        );
        assert!(differences(&a, &a).is_empty());
        // Two CPUs under fixed numerics must agree; another mode need not.
        assert!(!may_differ_without_a_change(&a, &b));
        assert!(may_differ_without_a_change(&a, &c));
        // A bare records file has no run.json to read.
        assert!(differences(&a.join("records.jsonl"), &t.path().join("none")).is_empty());
    }
}
