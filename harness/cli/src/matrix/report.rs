//! Turns records into what people read: `records.csv`, `summary.md` and a terminal table that
//! shows, for each defence, the owner's accuracy and overhead and what each attack achieved;
//! values are means over seeds with a 95% interval when there are several.

use std::collections::BTreeMap;

use tabled::builder::Builder;
use tabled::settings::Style;

use super::records::{ANY_DEFENCE, NO_ATTACK, Record};

/// Mean and half-width of the 95% confidence interval (Student t) of a sample.
pub fn mean_ci(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    // Two-sided 97.5% quantiles of Student's t for 1..=30 degrees of freedom, then the normal.
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    let t = T.get(n - 2).copied().unwrap_or(1.96);
    (mean, t * (var / n as f64).sqrt())
}

pub(crate) type Key = (String, String, String, String, String); // dataset, model, defence, attack, metric

pub(crate) fn group(records: &[Record]) -> BTreeMap<Key, Vec<f64>> {
    let mut g: BTreeMap<Key, Vec<f64>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.status == "ok") {
        g.entry((
            r.dataset.clone(),
            r.model.clone(),
            r.defence.clone(),
            r.attack.clone(),
            r.metric.clone(),
        ))
        .or_default()
        .push(r.value);
    }
    g
}

/// Adds derived rows: theft gain (attacker accuracy minus the scratch reference of the same
/// dataset, model and seed), the owner's accuracy loss and the size ratio against the `none`
/// defence. Latency ratios are not derived: two latencies timed apart differ by the machine's
/// drift, so the runner measures a paired `latency-ratio` instead.
pub fn derive(records: &[Record]) -> Vec<Record> {
    let mut out = Vec::new();
    let find = |r: &Record, defence: &str, attack: &str, metric: &str| {
        records
            .iter()
            .find(|x| {
                x.status == "ok"
                    && x.dataset == r.dataset
                    && x.model == r.model
                    && x.seed == r.seed
                    && x.defence == defence
                    && x.attack == attack
                    && x.metric == metric
            })
            .map(|x| x.value)
    };
    let scratch_attack = records
        .iter()
        .find(|r| r.defence == ANY_DEFENCE && r.metric == "attacker-accuracy")
        .map(|r| r.attack.clone());
    for r in records.iter().filter(|r| r.status == "ok") {
        if r.metric == "attacker-accuracy"
            && r.defence != ANY_DEFENCE
            && let Some(sa) = &scratch_attack
            && let Some(base) = find(r, ANY_DEFENCE, sa, "attacker-accuracy")
        {
            out.push(Record {
                metric: "theft-gain".into(),
                value: r.value - base,
                higher_is_better: false,
                ..r.clone()
            });
        }
        // What the protection costs the owner in accuracy (PSNR for a denoiser, in dB), on the
        // test set, against `none`.
        for (metric, loss) in [
            ("owner-accuracy", "owner-accuracy-loss"),
            ("owner-psnr", "owner-psnr-loss"),
        ] {
            if r.metric == metric
                && r.attack == NO_ATTACK
                && r.defence != "none"
                && let Some(base) = find(r, "none", NO_ATTACK, metric)
            {
                out.push(Record {
                    metric: loss.into(),
                    value: base - r.value,
                    higher_is_better: false,
                    ..r.clone()
                });
            }
        }
        if r.metric == "model-bytes"
            && r.attack == NO_ATTACK
            && let Some(base) = find(r, "none", NO_ATTACK, &r.metric)
            && base > 0.0
        {
            out.push(Record {
                metric: "model-bytes-ratio".into(),
                value: r.value / base,
                higher_is_better: false,
                ..r.clone()
            });
        }
    }
    out
}

fn cell(g: &BTreeMap<Key, Vec<f64>>, k: Key, digits: usize) -> String {
    match g.get(&k) {
        None => "-".into(),
        Some(v) => {
            let (m, ci) = mean_ci(v);
            if v.len() > 1 {
                format!("{m:.digits$} ±{ci:.digits$}")
            } else {
                format!("{m:.digits$}")
            }
        }
    }
}

/// The summary table as rows of strings: one row per dataset, model and defence.
pub(crate) fn table_rows(records: &[Record]) -> (Vec<String>, Vec<Vec<String>>) {
    let g = group(records);
    // Cells whose latest attempt failed show `failed`, not a `-` that reads as "not run".
    let failed: std::collections::BTreeSet<(&str, &str, &str, &str)> = records
        .iter()
        .filter(|r| r.is_error())
        .map(|r| {
            (
                r.dataset.as_str(),
                r.model.as_str(),
                r.defence.as_str(),
                r.attack.as_str(),
            )
        })
        .collect();
    let is_failed = |d: &str, m: &str, def: &str, a: &str| failed.contains(&(d, m, def, a));
    let mut attacks: Vec<String> = Vec::new();
    let mut victims: Vec<(String, String, String)> = Vec::new();
    for r in records {
        if r.attack != NO_ATTACK && r.defence != ANY_DEFENCE && !attacks.contains(&r.attack) {
            attacks.push(r.attack.clone());
        }
        let v = (r.dataset.clone(), r.model.clone(), r.defence.clone());
        if r.defence != ANY_DEFENCE && !victims.contains(&v) {
            victims.push(v);
        }
    }
    let has_psnr = records.iter().any(|r| r.metric == "owner-psnr");
    let has_acc = records.iter().any(|r| r.metric == "owner-accuracy");
    let mut header = vec![
        "dataset".to_string(),
        "model".into(),
        "defence".into(),
        match (has_acc, has_psnr) {
            (true, true) => "owner acc / PSNR",
            (false, true) => "owner PSNR (noisy input)",
            _ => "owner acc",
        }
        .into(),
        "p50 ms (x none)".into(),
    ];
    header.extend(attacks.iter().map(|a| format!("{a}: acc / fid / gain")));
    let has_levels = records
        .iter()
        .any(|r| r.metric.starts_with("level-accuracy:") || r.metric.starts_with("level-psnr:"));
    if has_levels {
        let acc_levels = records
            .iter()
            .any(|r| r.metric.starts_with("level-accuracy:"));
        let psnr_levels = records.iter().any(|r| r.metric.starts_with("level-psnr:"));
        header.push(
            match (acc_levels, psnr_levels) {
                (true, true) => "levels: acc / PSNR",
                (false, true) => "levels: PSNR",
                _ => "levels: acc",
            }
            .into(),
        );
    }
    let has_verifier = records
        .iter()
        .any(|r| r.metric == "ownership-detected" || r.metric == "ownership-false-claim");
    if has_verifier {
        header.push("verifier TPR / FPR".into());
    }
    let mut rows = Vec::new();
    for (d, m, def) in &victims {
        let k = |attack: &str, metric: &str| {
            (
                d.clone(),
                m.clone(),
                def.clone(),
                attack.to_string(),
                metric.to_string(),
            )
        };
        // A denoiser's owner column is its PSNR, with the noisy input's for reference.
        let owner = if !g.contains_key(&k(NO_ATTACK, "owner-accuracy"))
            && g.contains_key(&k(NO_ATTACK, "owner-psnr"))
        {
            format!(
                "psnr {} dB ({} dB)",
                cell(&g, k(NO_ATTACK, "owner-psnr"), 2),
                cell(&g, k(NO_ATTACK, "noisy-psnr"), 2)
            )
        } else if is_failed(d, m, def, NO_ATTACK) {
            "failed".into()
        } else {
            cell(&g, k(NO_ATTACK, "owner-accuracy"), 4)
        };
        let mut row = vec![d.clone(), m.clone(), def.clone(), owner];
        row.push(format!(
            "{} ({})",
            cell(&g, k(NO_ATTACK, "latency-ms-p50"), 2),
            cell(&g, k(NO_ATTACK, "latency-ratio"), 2)
        ));
        let base = def.split('+').next().unwrap_or_default();
        for a in &attacks {
            if !g.contains_key(&k(a, "attacker-accuracy"))
                && base != def
                && g.contains_key(&(
                    d.clone(),
                    m.clone(),
                    base.to_string(),
                    a.clone(),
                    "attacker-accuracy".to_string(),
                ))
            {
                // White-box attacks ignore output perturbations; the planner ran them once.
                row.push(format!("as {base}"));
                continue;
            }
            if is_failed(d, m, def, a) {
                row.push("failed".into());
                continue;
            }
            row.push(format!(
                "{} / {} / {}",
                cell(&g, k(a, "attacker-accuracy"), 3),
                cell(&g, k(a, "fidelity"), 3),
                cell(&g, k(a, "theft-gain"), 3)
            ));
        }
        if has_levels {
            let levels: Vec<String> = g
                .iter()
                .filter(|(key, _)| {
                    key.0 == *d && key.1 == *m && key.2 == *def && key.3 == NO_ATTACK
                })
                .filter_map(|(key, v)| {
                    if let Some(name) = key.4.strip_prefix("level-psnr:") {
                        return Some(format!("{name} {:.2} dB", mean_ci(v).0));
                    }
                    let name = key.4.strip_prefix("level-accuracy:")?;
                    Some(format!("{name} {:.3}", mean_ci(v).0))
                })
                .collect();
            row.push(levels.join(", "));
        }
        if has_verifier {
            let rate = |metric: &str| {
                let v: Vec<f64> = g
                    .iter()
                    .filter(|(key, _)| {
                        key.0 == *d && key.1 == *m && key.2 == *def && key.4 == metric
                    })
                    .flat_map(|(_, v)| v.iter().copied())
                    .collect();
                if v.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.2} (n={})", mean_ci(&v).0, v.len())
                }
            };
            row.push(format!(
                "{} / {}",
                rate("ownership-detected"),
                rate("ownership-false-claim")
            ));
        }
        rows.push(row);
    }
    // No-theft references (attacks that need no exposure).
    let mut refs: Vec<(String, String, String)> = Vec::new();
    for r in records.iter().filter(|r| r.defence == ANY_DEFENCE) {
        let v = (r.dataset.clone(), r.model.clone(), r.attack.clone());
        if !refs.contains(&v) {
            refs.push(v);
        }
    }
    for (d, m, a) in refs {
        let mut row = vec![d.clone(), m.clone(), format!("({a}: no theft)")];
        row.push(if is_failed(&d, &m, ANY_DEFENCE, &a) {
            "failed".into()
        } else {
            cell(
                &g,
                (d, m, ANY_DEFENCE.into(), a, "attacker-accuracy".into()),
                4,
            )
        });
        row.resize(header.len(), String::new());
        rows.push(row);
    }
    (header, rows)
}

/// The terminal table.
pub fn terminal_table(records: &[Record]) -> String {
    let (header, rows) = table_rows(records);
    let mut b = Builder::default();
    b.push_record(header);
    for r in rows {
        b.push_record(r);
    }
    b.build().with(Style::rounded()).to_string()
}

/// A Markdown summary.
pub fn markdown(records: &[Record], title: &str, errors: &[&Record]) -> String {
    let (header, rows) = table_rows(records);
    let mut s = format!("# {title}\n\n");
    s.push_str(
        "Owner accuracy is top-1 on the test split (for a denoiser: mean per-image PSNR in dB of \
         its output on the noisy test images, then that of the noisy input itself); p50 is \
         batch-1 latency in ms (in brackets: the median ratio to the unprotected victim, both \
         timed in the same interleaved rounds). \
         For each attack: the attacker's test accuracy, fidelity (top-1 agreement with the owner's \
         model), and theft gain (accuracy minus the no-theft reference trained on the attacker's \
         data alone). Means over seeds, ±95% interval when there are several. `as none`: \
         white-box attacks never see output perturbations, so they run once, on the base \
         defence.\n\n",
    );
    s.push_str(&format!("| {} |\n", header.join(" | ")));
    s.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    if !errors.is_empty() {
        s.push_str("\n## Failed cells\n\n");
        for e in errors {
            s.push_str(&format!(
                "- {}/{}/{}/{}/seed {}: {}\n",
                e.dataset, e.model, e.defence, e.attack, e.seed, e.error
            ));
        }
    }
    s
}

/// The measured rows followed by the rows [`derive`] computes from them.
pub fn with_derived(measured: &[Record]) -> Vec<Record> {
    let mut all = measured.to_vec();
    all.extend(derive(measured));
    all
}

/// Why cells failed, for the terminal: cells grouped by cause (a missing dataset fails every
/// cell of its victims with one message), at most ten causes, each cut to one screen line.
pub fn failure_causes(errors: &[Record]) -> String {
    let mut causes: Vec<(String, Vec<String>)> = Vec::new();
    for e in errors {
        let cause = e.error.lines().next().unwrap_or("").to_string();
        // The runner prefixes the cell; group by what follows it.
        let key = cause
            .strip_prefix(&format!("cell {}: ", e.cell_id()))
            .unwrap_or(&cause)
            .to_string();
        match causes.iter_mut().find(|(c, _)| *c == key) {
            Some((_, cells)) => cells.push(e.cell_id()),
            None => causes.push((key, vec![e.cell_id()])),
        }
    }
    let mut s = format!("{} cells failed:", errors.len());
    for (cause, cells) in causes.iter().take(10) {
        let mut cause = cause.clone();
        if cause.chars().count() > 300 {
            cause = cause.chars().take(300).collect::<String>() + " ...";
        }
        let who = match cells.len() {
            1 => cells[0].clone(),
            n => format!("{} and {} more", cells[0], n - 1),
        };
        s.push_str(&format!("\n  {who}: {cause}"));
    }
    if causes.len() > 10 {
        s.push_str(&format!(
            "\n  ... and {} more causes (summary.md lists every failed cell)",
            causes.len() - 10
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_of_a_known_sample() {
        let (m, ci) = mean_ci(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12);
        // sd = 1, t(2) = 4.303, ci = 4.303 / sqrt(3)
        assert!((ci - 4.303 / 3f64.sqrt()).abs() < 1e-9);
        assert_eq!(mean_ci(&[5.0]), (5.0, 0.0));
    }

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
            value: if status == "ok" { 0.5 } else { f64::NAN },
            status: status.into(),
            error: error.into(),
            ..Record::default()
        }
    }

    #[test]
    fn failure_causes_group_cells_by_cause() {
        let mut errors = vec![
            rec(
                "a",
                "error",
                "cell cifar10/resnet20/0/a/-: dataset not found",
            ),
            rec(
                "b",
                "error",
                "cell cifar10/resnet20/0/b/-: dataset not found",
            ),
            rec("c", "error", "budget exhausted"),
        ];
        errors[2].seed = 1;
        let s = failure_causes(&errors);
        assert!(s.starts_with("3 cells failed:"), "{s}");
        assert!(
            s.contains("cifar10/resnet20/0/a/- and 1 more: dataset not found"),
            "{s}"
        );
        assert!(
            s.contains("cifar10/resnet20/1/c/-: budget exhausted"),
            "{s}"
        );
    }
}
