//! `harness compare BASE NEW`: metric-by-metric comparison of two runs, failing (exit 1) when a
//! metric moved in the wrong direction by more than its tolerance or a cell disappeared. The rules
//! and default tolerances are in [`crate::matrix::compare`].

use serde_json::json;

use crate::cli::CompareArgs;
use crate::matrix::compare::{Tolerances, compare, config_hashes, load_records, table};
use crate::matrix::exact::{exact, table as exact_table};
use crate::matrix::machines;

/// Runs the command.
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let tolerances = Tolerances::parse(&args.tolerance)?.with_confidence(args.confidence)?;
    let base = load_records(&args.base)?;
    let new = load_records(&args.new)?;
    let (hb, hn) = (config_hashes(&base), config_hashes(&new));
    if hb != hn {
        let show = |h: &std::collections::BTreeSet<String>| {
            h.iter().cloned().collect::<Vec<_>>().join(", ")
        };
        eprintln!(
            "note: the two runs were made by different matrices or profiles (configuration hash \
             {} in {}, {} in {}): their cells are compared by name, but equal names may mean \
             different recipes, data sizes or budgets",
            show(&hb),
            args.base.display(),
            show(&hn),
            args.new.display()
        );
    }
    for line in machines::differences(&args.base, &args.new) {
        eprintln!("note: the runs differ in {line}");
    }
    if args.exact {
        return run_exact(&args, &base, &new);
    }
    let rows = compare(&base, &new, &tolerances);
    for m in tolerances.overrides.keys() {
        if !rows.iter().any(|r| &r.metric == m) {
            eprintln!("warning: --tolerance names `{m}`, a metric neither run has");
        }
    }
    let regressed: Vec<String> = rows
        .iter()
        .filter(|r| r.verdict.is_regression())
        .map(|r| format!("{} ({})", r.key(), r.verdict))
        .collect();
    println!(
        "compare {} (base) -> {} (new); means over seeds; {}",
        args.base.display(),
        args.new.display(),
        tolerances.describe()
    );
    println!("{}", table(&rows));
    println!(
        "{} keys compared, {} regressed",
        rows.len(),
        regressed.len()
    );
    if args.json {
        println!("{}", json!({"regressions": regressed.len(), "rows": rows}));
    }
    if !regressed.is_empty() {
        let mut names = regressed
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if regressed.len() > 5 {
            names.push_str(", ...");
        }
        anyhow::bail!("{} metrics regressed: {names}", regressed.len());
    }
    Ok(())
}

/// `--exact`: every non-timing value bit for bit.
fn run_exact(
    args: &CompareArgs,
    base: &[crate::matrix::records::Record],
    new: &[crate::matrix::records::Record],
) -> anyhow::Result<()> {
    let out = exact(base, new);
    println!(
        "compare --exact {} (base) -> {} (new): every non-timing value of every cell and seed",
        args.base.display(),
        args.new.display()
    );
    if !out.rows.is_empty() {
        println!("{}", exact_table(&out.rows));
    }
    println!(
        "{} values compared, {} differ (timing metrics are not compared)",
        out.compared,
        out.rows.len()
    );
    if args.json {
        println!(
            "{}",
            json!({"exact": true, "differences": out.rows.len(), "compared": out.compared, "rows": out.rows})
        );
    }
    if !out.rows.is_empty() {
        if machines::may_differ_without_a_change(&args.base, &args.new) {
            eprintln!(
                "note: one of the runs was made under fast numerics, or the two under different \
                 modes (see the notes above): their values may differ with no change of code. \
                 Runs under fixed numerics (the default) reproduce across CPUs and thread counts"
            );
        }
        anyhow::bail!(
            "{} of {} values differ: the runs are not identical",
            out.rows.len(),
            out.compared
        );
    }
    Ok(())
}
