//! `harness compare --exact`: does this run reproduce that one? Every non-timing value of every
//! cell and seed is compared bit for bit, in both directions, and a cell or metric present in one
//! run only is a difference too. It is the tool for "this change alters no result" and "this
//! machine reproduces the baseline"; the tolerance gate answers "did anything get worse".
//!
//! Timing metrics ([`Record::is_timing`]) move with the machine and are left out. Derived
//! metrics are functions of the measured ones and are left out too (they differ exactly when a
//! measured value does). Both runs are read as the latest state of each cell.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use tabled::builder::Builder;
use tabled::settings::Style;

use super::compare::is_derived;
use super::records::Record;

/// How one (cell, seed, metric) differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Difference {
    /// Both runs have it, with other values (or one failed where the other did not).
    Changed,
    /// Only BASE has it.
    OnlyInBase,
    /// Only NEW has it.
    OnlyInNew,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Difference::Changed => "changed",
            Difference::OnlyInBase => "base only",
            Difference::OnlyInNew => "new only",
        })
    }
}

/// One value that is not the same in both runs.
#[derive(Debug, Clone, Serialize)]
pub struct ExactRow {
    /// `dataset/model/seed/defence/attack`.
    pub cell: String,
    /// Metric name (`error` for a failed cell).
    pub metric: String,
    /// The value in BASE (`None`: absent; NaN prints as `null` in JSON).
    pub base: Option<f64>,
    /// The value in NEW.
    pub new: Option<f64>,
    /// How they differ.
    pub difference: Difference,
}

/// The outcome of an exact comparison.
#[derive(Debug, Clone, Serialize)]
pub struct ExactOutcome {
    /// Non-timing values looked at (keys in either run).
    pub compared: usize,
    /// The values that differ, cells in order.
    pub rows: Vec<ExactRow>,
}

/// The non-timing measured values of a run by (cell, metric); an error row counts as metric
/// `error` with value NaN and makes the cell's other values irrelevant.
fn values(records: &[Record]) -> BTreeMap<(String, String), f64> {
    records
        .iter()
        .filter(|r| !r.is_timing() && !is_derived(&r.metric))
        .map(|r| {
            let metric = if r.is_error() {
                "error".to_string()
            } else {
                r.metric.clone()
            };
            ((r.cell_id(), metric), r.value)
        })
        .collect()
}

/// Compares two runs value by value (see the module docs).
pub fn exact(base: &[Record], new: &[Record]) -> ExactOutcome {
    let (b, n) = (values(base), values(new));
    let mut keys: Vec<&(String, String)> = b.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    let compared = keys.len();
    let rows = keys
        .into_iter()
        .filter_map(|k| {
            let (bv, nv) = (b.get(k).copied(), n.get(k).copied());
            let difference = match (bv, nv) {
                (Some(x), Some(y)) if x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()) => {
                    return None;
                }
                (Some(_), Some(_)) => Difference::Changed,
                (Some(_), None) => Difference::OnlyInBase,
                (None, _) => Difference::OnlyInNew,
            };
            Some(ExactRow {
                cell: k.0.clone(),
                metric: k.1.clone(),
                base: bv,
                new: nv,
                difference,
            })
        })
        .collect();
    ExactOutcome { compared, rows }
}

/// The differences as a terminal table (full precision: an exact comparison is about bits).
pub fn table(rows: &[ExactRow]) -> String {
    let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:?}"));
    let mut b = Builder::default();
    b.push_record(["cell", "metric", "base", "new", "difference"]);
    for r in rows {
        b.push_record([
            r.cell.clone(),
            r.metric.clone(),
            show(r.base),
            show(r.new),
            r.difference.to_string(),
        ]);
    }
    b.build().with(Style::rounded()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(defence: &str, metric: &str, value: f64) -> Record {
        Record {
            dataset: "d".into(),
            model: "m".into(),
            defence: defence.into(),
            attack: "-".into(),
            metric: metric.into(),
            value,
            status: "ok".into(),
            ..Record::default()
        }
    }

    #[test]
    fn identical_runs_have_no_differences_whatever_their_timings() {
        let a = vec![
            rec("none", "owner-accuracy", 0.5),
            rec("none", "latency-ms-p50", 1.0),
        ];
        let mut b = a.clone();
        b[1].value = 2.0;
        let out = exact(&a, &b);
        assert_eq!(out.compared, 1);
        assert!(out.rows.is_empty(), "{:?}", out.rows);
    }

    #[test]
    fn a_move_in_either_direction_and_a_missing_cell_are_differences() {
        let base = vec![
            rec("none", "owner-accuracy", 0.5),
            rec("qat", "owner-accuracy", 0.4),
            rec("gone", "owner-accuracy", 0.3),
        ];
        let mut new = base.clone();
        new[0].value = 0.5 + 1e-12; // better for the owner: still a difference
        new[1].value = 0.3;
        new.remove(2);
        new.push(rec("added", "owner-accuracy", 0.1));
        let out = exact(&base, &new);
        let kinds: Vec<(String, Difference)> = out
            .rows
            .iter()
            .map(|r| (r.cell.clone(), r.difference))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("d/m/0/added/-".to_string(), Difference::OnlyInNew),
                ("d/m/0/gone/-".to_string(), Difference::OnlyInBase),
                ("d/m/0/none/-".to_string(), Difference::Changed),
                ("d/m/0/qat/-".to_string(), Difference::Changed),
            ]
        );
    }

    #[test]
    fn a_cell_that_fails_in_one_run_is_a_difference() {
        let base = vec![rec("none", "owner-accuracy", 0.5)];
        let new = vec![Record {
            status: "error".into(),
            value: f64::NAN,
            ..rec("none", "error", 0.0)
        }];
        let out = exact(&base, &new);
        assert_eq!(out.rows.len(), 2, "{:?}", out.rows);
        let both_failed = exact(&new, &new);
        assert!(both_failed.rows.is_empty());
    }
}
