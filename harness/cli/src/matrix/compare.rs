//! Comparing two runs metric by metric (`harness compare`), and the helpers `harness merge` shares
//! with it (loading a run's records, telling derived rows from measured ones).
//!
//! Each side is aggregated per (dataset, model, defence, attack, metric) as the mean over seeds of
//! its `ok` rows, after the derived metrics (theft gain, overhead ratios) have been recomputed with
//! [`report::derive`], so those are compared too. For every key present on both sides,
//! `delta = new - base`; a move is in the *wrong direction* when `delta < 0` for a metric where
//! higher is better and `delta > 0` otherwise. A key **regresses** when its wrong-direction move
//! exceeds its tolerance.
//!
//! Default tolerances:
//! - metrics whose name contains `psnr` (denoisers, in dB): 0.5 absolute;
//! - metrics whose name contains `accuracy`, `fidelity` or `gain`: 0.02 absolute;
//! - every other metric (timings, bytes, query counts, ratios): 25% of `|base|`, because timing
//!   and size metrics are noisy.
//!
//! `--tolerance METRIC=VALUE` overrides one metric with an absolute tolerance (`VALUE%` makes it
//! relative to `|base|`); `timing=VALUE` sets every timing metric not named (rows marked
//! `timing` by whoever measured them: what changes with the machine and its load); `*=VALUE`
//! replaces the defaults of every metric not named otherwise. Timing metrics never regress by
//! less than their noise floor ([`noise_floor`]: 0.5 s for stage times, 0.25 ms for latencies,
//! 0.1 for paired latency ratios).
//!
//! **Seed spread.** When BASE holds two or more seeds of a (non-timing) key, the tolerance gives
//! way to the baseline's own noise: the key regresses only when NEW's mean lies beyond the
//! one-sided Student-t bound of BASE's seeds at `--confidence` (default 95%), and by more than a
//! minimum effect ([`seed_spread`]). An explicit `--tolerance` (by name, `*=` or `timing=`) stays
//! a hard bound on top: a move beyond it regresses whatever the spread allows. Timings keep the
//! tolerance rule (their noise is the machine's load, not the seed).
//!
//! A key present only in BASE is reported as `missing` and counts as a regression (a cell that
//! disappeared or failed); a key present only in NEW is reported as `new` and does not.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use tabled::builder::Builder;
use tabled::settings::Style;

use super::records::{Record, latest, read_jsonl};
use super::report;
use super::seed_spread;
use crate::exit::UsageError;

/// Metrics that [`report::derive`] computes from measured rows; they are never measured. The
/// latency ratios were derived by earlier versions from two p50s (or p99s) timed minutes apart,
/// which measured the machine's drift as much as the defence (0.63x for a perturbation that costs
/// nothing); runs now measure a paired `latency-ratio`. The old names stay here so that such rows
/// in older files are still recognised as derived and dropped.
pub const DERIVED_METRICS: [&str; 6] = [
    "theft-gain",
    "owner-accuracy-loss",
    "owner-psnr-loss",
    "latency-p50-ratio",
    "latency-p99-ratio",
    "model-bytes-ratio",
];

/// Whether a metric is computed by [`report::derive`] rather than measured by a run.
pub fn is_derived(metric: &str) -> bool {
    DERIVED_METRICS.contains(&metric)
}

/// Reads the records of a run folder (its `records.jsonl`) or of a `records.jsonl` /
/// `records.csv` file. A path that does not exist is a usage error.
pub fn load_records(path: &Path) -> anyhow::Result<Vec<Record>> {
    let file = if path.is_dir() {
        path.join("records.jsonl")
    } else {
        path.to_path_buf()
    };
    if !file.is_file() {
        return Err(UsageError(format!(
            "{}: no such run folder or records file (expected a folder holding records.jsonl, or a \
             records.jsonl / records.csv file)",
            file.display()
        ))
        .into());
    }
    if file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        let mut reader = csv::Reader::from_path(&file)
            .with_context(|| format!("failed to open {}", file.display()))?;
        let mut out = Vec::new();
        for (i, row) in reader.deserialize::<Record>().enumerate() {
            out.push(row.with_context(|| format!("{}: row {}", file.display(), i + 1))?);
        }
        Ok(out)
    } else {
        Ok(latest(&read_jsonl(&file)?))
    }
}

/// The configuration hashes the records were made under (normally one).
pub fn config_hashes(records: &[Record]) -> BTreeSet<String> {
    records.iter().map(|r| r.config_hash.clone()).collect()
}

/// How far a metric may move in the wrong direction before it counts as a regression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    /// An absolute amount in the metric's unit.
    Absolute(f64),
    /// A fraction of `|base|`.
    Relative(f64),
}

impl Tolerance {
    /// The allowed move for a base value.
    pub fn allowed(self, base: f64) -> f64 {
        match self {
            Tolerance::Absolute(a) => a,
            Tolerance::Relative(r) => r * base.abs(),
        }
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tolerance::Absolute(a) => write!(f, "{a}"),
            Tolerance::Relative(r) => write!(f, "{}%", r * 100.0),
        }
    }
}

/// The built-in tolerance of a metric (see the module docs).
pub fn default_tolerance(metric: &str) -> Tolerance {
    // PSNR (denoisers) in dB: half a decibel is visible; relative moves of a dB scale mean little.
    if metric.contains("psnr") {
        Tolerance::Absolute(0.5)
    } else if ["accuracy", "fidelity", "gain"]
        .iter()
        .any(|w| metric.contains(w))
    {
        Tolerance::Absolute(0.02)
    } else {
        Tolerance::Relative(0.25)
    }
}

/// Tolerances from the command line on top of the defaults, and the confidence of the
/// seed-spread rule.
#[derive(Debug, Clone)]
pub struct Tolerances {
    /// Per-metric overrides.
    pub overrides: BTreeMap<String, Tolerance>,
    /// `*=VALUE`: replaces the built-in default of every metric not named.
    pub default: Option<Tolerance>,
    /// `timing=VALUE`: every timing metric not named (rows marked `timing`, see
    /// [`Record::is_timing`]).
    pub timing: Option<Tolerance>,
    /// One-sided confidence of the seed-spread rule (`--confidence`).
    pub confidence: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Tolerances {
            overrides: BTreeMap::new(),
            default: None,
            timing: None,
            confidence: seed_spread::DEFAULT_CONFIDENCE,
        }
    }
}

/// The smallest move of a timing metric that can be told from timer and scheduler noise: 0.5 s
/// for stage times in seconds, 0.25 ms for latencies in ms, 0.1 for paired latency ratios
/// (`latency-ratio`: a deployment timed against itself in the same rounds stays within 0.05 of
/// 1), 0 for anything that is not a timing. Without it a relative tolerance on a near-zero base
/// (the `none` defence protects in microseconds) flags noise.
pub fn noise_floor(metric: &str, timing: bool) -> f64 {
    if !timing {
        0.0
    } else if metric.contains("seconds") {
        0.5
    } else if metric.contains("-ms") {
        0.25
    } else if metric.contains("ratio") {
        0.1
    } else {
        0.0
    }
}

impl Tolerances {
    /// Parses `METRIC=VALUE` pairs (`VALUE` a non-negative number, optionally ending in `%`);
    /// anything else is a usage error.
    pub fn parse(specs: &[String]) -> Result<Self, UsageError> {
        let mut t = Tolerances::default();
        for spec in specs {
            let bad = || {
                UsageError(format!(
                    "--tolerance `{spec}`: write METRIC=VALUE with VALUE >= 0, absolute or ending \
                     in % (relative to the base), e.g. owner-accuracy=0.05, latency-ms-p50=30%, \
                     timing=100% (every timing metric) or *=0.1 (every metric)"
                ))
            };
            let (metric, value) = spec.split_once('=').ok_or_else(bad)?;
            let (metric, value) = (metric.trim(), value.trim());
            if metric.is_empty() {
                return Err(bad());
            }
            let tol = match value.strip_suffix('%') {
                Some(p) => Tolerance::Relative(p.trim().parse::<f64>().map_err(|_| bad())? / 100.0),
                None => Tolerance::Absolute(value.parse::<f64>().map_err(|_| bad())?),
            };
            let (Tolerance::Absolute(v) | Tolerance::Relative(v)) = tol;
            if !v.is_finite() || v < 0.0 {
                return Err(bad());
            }
            if metric == "*" {
                t.default = Some(tol);
            } else if metric == "timing" {
                t.timing = Some(tol);
            } else {
                t.overrides.insert(metric.to_string(), tol);
            }
        }
        Ok(t)
    }

    /// The tolerance that applies to a metric (`timing`: whether its rows are timings).
    pub fn for_metric(&self, metric: &str, timing: bool) -> Tolerance {
        self.explicit(metric, timing)
            .unwrap_or_else(|| default_tolerance(metric))
    }

    /// The tolerance the command line set for a metric, if any: a hard bound even where the
    /// seed-spread rule applies.
    pub fn explicit(&self, metric: &str, timing: bool) -> Option<Tolerance> {
        self.overrides
            .get(metric)
            .copied()
            .or(self.timing.filter(|_| timing))
            .or(self.default)
    }

    /// Sets the seed-spread rule's confidence; outside (0.5, 1) is a usage error.
    pub fn with_confidence(mut self, confidence: f64) -> Result<Self, UsageError> {
        if !(confidence > 0.5 && confidence < 1.0) {
            return Err(UsageError(format!(
                "--confidence {confidence}: give a one-sided confidence between 0.5 and 1, e.g. \
                 0.95 (the default) or 0.99 (fewer false alarms, larger effects missed)"
            )));
        }
        self.confidence = confidence;
        Ok(self)
    }

    /// One line describing the tolerances in force, for the output header.
    pub fn describe(&self) -> String {
        let mut s = match self.default {
            Some(t) => format!("tolerance {t} for every metric"),
            None => {
                "tolerance 0.02 absolute for accuracy, fidelity and gain metrics, 25% of |base| \
                     for the others"
                    .to_string()
            }
        };
        if let Some(t) = self.timing {
            s.push_str(&format!("; timing metrics {t}"));
        }
        s.push_str(&format!(
            "; keys with 2+ base seeds: their spread at {}% one-sided (at least 0.01 for \
             accuracy, fidelity and gain, 10% for the rest), explicit tolerances as hard bounds",
            self.confidence * 100.0
        ));
        if !self.overrides.is_empty() {
            let o: Vec<String> = self
                .overrides
                .iter()
                .map(|(m, t)| format!("{m}={t}"))
                .collect();
            s.push_str(&format!("; overrides: {}", o.join(", ")));
        }
        s
    }
}

/// A comparison key: dataset, model, defence, attack, metric.
pub type Key = (String, String, String, String, String);

/// The mean over seeds of one key's `ok` values, and their spread.
#[derive(Debug, Clone, Copy)]
pub struct Aggregate {
    /// Mean over seeds.
    pub mean: f64,
    /// Sample standard deviation over seeds (NaN for one seed).
    pub sd: f64,
    /// Seeds (rows) averaged.
    pub seeds: usize,
    /// Whether a larger value is better for the owner.
    pub higher_is_better: bool,
    /// Whether the metric is a timing.
    pub timing: bool,
}

/// Recomputes the derived rows (dropping any the input carried) and averages the `ok` rows of
/// each key over seeds.
pub fn aggregate(records: &[Record]) -> BTreeMap<Key, Aggregate> {
    let mut measured: Vec<Record> = records
        .iter()
        .filter(|r| !is_derived(&r.metric))
        .cloned()
        .collect();
    let derived = report::derive(&measured);
    measured.extend(derived);
    let mut values: BTreeMap<Key, (Vec<f64>, bool, bool)> = BTreeMap::new();
    for r in measured.iter().filter(|r| r.status == "ok") {
        values
            .entry((
                r.dataset.clone(),
                r.model.clone(),
                r.defence.clone(),
                r.attack.clone(),
                r.metric.clone(),
            ))
            .or_insert((Vec::new(), r.higher_is_better, r.is_timing()))
            .0
            .push(r.value);
    }
    values
        .into_iter()
        .map(|(k, (v, hib, timing))| {
            (
                k,
                Aggregate {
                    mean: v.iter().sum::<f64>() / v.len() as f64,
                    sd: seed_spread::sample_sd(&v),
                    seeds: v.len(),
                    higher_is_better: hib,
                    timing,
                },
            )
        })
        .collect()
}

/// The outcome for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Moved in the wrong direction by more than its tolerance.
    Regressed,
    /// Present in BASE only (counts as a regression).
    Missing,
    /// Present in NEW only.
    New,
    /// Within tolerance (or better).
    Ok,
}

impl Verdict {
    /// Whether the verdict fails the comparison.
    pub fn is_regression(self) -> bool {
        matches!(self, Verdict::Regressed | Verdict::Missing)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Regressed => "REGRESSED",
            Verdict::Missing => "MISSING",
            Verdict::New => "new",
            Verdict::Ok => "ok",
        })
    }
}

/// One compared key.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Dataset id.
    pub dataset: String,
    /// Victim model id.
    pub model: String,
    /// Defence entry.
    pub defence: String,
    /// Attack entry.
    pub attack: String,
    /// Metric name.
    pub metric: String,
    /// Mean in BASE.
    pub base: Option<f64>,
    /// Mean in NEW.
    pub new: Option<f64>,
    /// `new - base`.
    pub delta: Option<f64>,
    /// The rule that applied: a tolerance (`0.02` absolute or `25%` of the base), or the seed
    /// spread (`3 seeds at 95%`, with `+ hard 0.05` when an explicit tolerance also bounds it).
    pub tolerance: String,
    /// The allowed wrong-direction move for this key's base value.
    pub allowed: Option<f64>,
    /// Seeds behind BASE's mean.
    pub base_seeds: usize,
    /// BASE's standard deviation over seeds (absent for one seed).
    pub base_sd: Option<f64>,
    /// Whether a larger value is better for the owner.
    pub higher_is_better: bool,
    /// The outcome.
    pub verdict: Verdict,
}

impl Row {
    /// `dataset/model/defence/attack metric`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}/{} {}",
            self.dataset, self.model, self.defence, self.attack, self.metric
        )
    }
}

/// Compares NEW against BASE; rows come regressions first, then new keys, then the rest, each in
/// key order.
pub fn compare(base: &[Record], new: &[Record], tolerances: &Tolerances) -> Vec<Row> {
    let b = aggregate(base);
    let n = aggregate(new);
    let mut keys: Vec<&Key> = b.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut rows: Vec<Row> = keys
        .into_iter()
        .map(|k| {
            let (bv, nv) = (b.get(k), n.get(k));
            let timing = bv.or(nv).is_some_and(|a| a.timing);
            let tol = tolerances.for_metric(&k.4, timing);
            let floor = noise_floor(&k.4, timing);
            let higher_is_better = bv.or(nv).is_some_and(|a| a.higher_is_better);
            // The seed-spread rule where BASE has the seeds, the tolerance elsewhere; an
            // explicit tolerance bounds either.
            let spread = match (bv, nv) {
                (Some(b), Some(n)) if !timing => seed_spread::allowed(
                    &k.4,
                    b.mean,
                    b.sd,
                    b.seeds,
                    n.seeds,
                    tolerances.confidence,
                ),
                _ => None,
            };
            let hard = tolerances.explicit(&k.4, timing);
            let (rule, allowed) = match (spread, bv) {
                (Some(s), Some(b)) => {
                    let rule = format!("{} seeds at {}%", b.seeds, tolerances.confidence * 100.0);
                    match hard {
                        Some(h) => (format!("{rule} + hard {h}"), Some(s.min(h.allowed(b.mean)))),
                        None => (rule, Some(s)),
                    }
                }
                _ => (tol.to_string(), bv.map(|a| tol.allowed(a.mean).max(floor))),
            };
            let mut row = Row {
                dataset: k.0.clone(),
                model: k.1.clone(),
                defence: k.2.clone(),
                attack: k.3.clone(),
                metric: k.4.clone(),
                base: bv.map(|a| a.mean),
                new: nv.map(|a| a.mean),
                delta: None,
                tolerance: rule,
                allowed,
                base_seeds: bv.map_or(0, |a| a.seeds),
                base_sd: bv.map(|a| a.sd).filter(|s| s.is_finite()),
                higher_is_better,
                verdict: Verdict::Ok,
            };
            row.verdict = match (bv, nv) {
                (Some(_), None) => Verdict::Missing,
                (None, _) => Verdict::New,
                (Some(bv), Some(nv)) => {
                    let delta = nv.mean - bv.mean;
                    row.delta = Some(delta);
                    let wrong = if higher_is_better { -delta } else { delta };
                    let both_nan = bv.mean.is_nan() && nv.mean.is_nan();
                    let limit = allowed.unwrap_or(0.0);
                    if (delta.is_nan() && !both_nan) || wrong > limit + 1e-12 {
                        Verdict::Regressed
                    } else {
                        Verdict::Ok
                    }
                }
            };
            row
        })
        .collect();
    rows.sort_by(|x, y| match x.verdict.cmp(&y.verdict) {
        Ordering::Equal => x.key().cmp(&y.key()),
        o => o,
    });
    rows
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.4}"),
    }
}

/// The comparison as a terminal table.
pub fn table(rows: &[Row]) -> String {
    let mut b = Builder::default();
    b.push_record(["key", "base", "new", "delta", "allowed (rule)", "verdict"]);
    for r in rows {
        // The interval NEW's mean may lie in, beside the rule that drew it.
        let tol = match (r.allowed, r.base) {
            (Some(a), Some(base)) if r.base_seeds >= 2 || r.tolerance.ends_with('%') => {
                let bound = if r.higher_is_better {
                    format!(">= {}", num(Some(base - a)))
                } else {
                    format!("<= {}", num(Some(base + a)))
                };
                let sd = r
                    .base_sd
                    .map_or(String::new(), |s| format!(", sd {}", num(Some(s))));
                format!("{bound} ({}{sd})", r.tolerance)
            }
            _ => r.tolerance.clone(),
        };
        let delta = match r.delta {
            Some(d) if d > 0.0 => format!("+{}", num(Some(d))),
            d => num(d),
        };
        b.push_record([
            r.key(),
            num(r.base),
            num(r.new),
            delta,
            tol,
            r.verdict.to_string(),
        ]);
    }
    b.build().with(Style::rounded()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(metric: &str, value: f64, higher: bool, seed: u64) -> Record {
        Record {
            run: "r".into(),
            dataset: "d".into(),
            model: "m".into(),
            defence: "none".into(),
            attack: "-".into(),
            seed,
            metric: metric.into(),
            value,
            higher_is_better: higher,
            status: "ok".into(),
            error: String::new(),
            wall_seconds: 0.0,
            config_hash: "h".into(),
            git: "g".into(),
            cell_rows: 0,
            timing: Some(crate::matrix::records::named_like_a_timing(metric)),
        }
    }

    #[test]
    fn tolerance_syntax() {
        let t = Tolerances::parse(&["owner-accuracy=0.1".into(), "*=5%".into()]).unwrap();
        assert_eq!(
            t.for_metric("owner-accuracy", false),
            Tolerance::Absolute(0.1)
        );
        assert_eq!(
            t.for_metric("latency-ms-p50", true),
            Tolerance::Relative(0.05)
        );
        for bad in ["foo", "=1", "x=", "x=-1", "x=abc", "x=inf"] {
            assert!(Tolerances::parse(&[bad.into()]).is_err(), "{bad}");
        }
        let t = Tolerances::parse(&["timing=100%".into()]).unwrap();
        assert_eq!(
            t.for_metric("attack-seconds", true),
            Tolerance::Relative(1.0)
        );
        assert_eq!(
            t.for_metric("latency-p50-ratio", true),
            Tolerance::Relative(1.0)
        );
        assert_eq!(
            t.for_metric("owner-accuracy", false),
            Tolerance::Absolute(0.02)
        );
        assert_eq!(
            t.for_metric("model-bytes", false),
            Tolerance::Relative(0.25)
        );
        let d = Tolerances::default();
        assert_eq!(d.for_metric("fidelity", false), Tolerance::Absolute(0.02));
        assert_eq!(d.for_metric("theft-gain", false), Tolerance::Absolute(0.02));
        assert_eq!(
            d.for_metric("model-bytes", false),
            Tolerance::Relative(0.25)
        );
        for psnr in [
            "owner-psnr",
            "level-psnr:level-0",
            "noisy-psnr",
            "owner-psnr-loss",
        ] {
            assert_eq!(
                d.for_metric(psnr, false),
                Tolerance::Absolute(0.5),
                "{psnr}"
            );
        }
    }

    #[test]
    fn direction_tolerance_and_missing_keys() {
        let base = vec![
            rec("owner-accuracy", 0.80, true, 0),
            rec("owner-accuracy", 0.90, true, 1),
            rec("latency-ms-p50", 10.0, false, 0),
            rec("protect-seconds", 1.0, false, 0),
        ];
        let new = vec![
            rec("owner-accuracy", 0.82, true, 0),
            rec("owner-accuracy", 0.84, true, 1), // mean 0.83: -0.02 allowed... -0.02 exactly
            rec("latency-ms-p50", 13.0, false, 0), // +30% > 25%
            rec("queries-used", 5.0, false, 0),
        ];
        let rows = compare(&base, &new, &Tolerances::default());
        let v = |m: &str| rows.iter().find(|r| r.metric == m).unwrap().verdict;
        assert_eq!(v("owner-accuracy"), Verdict::Ok);
        assert_eq!(v("latency-ms-p50"), Verdict::Regressed);
        assert_eq!(v("protect-seconds"), Verdict::Missing);
        assert_eq!(v("queries-used"), Verdict::New);
        assert!(rows[0].verdict.is_regression() && rows[1].verdict.is_regression());
        // Lower latency is an improvement, however large.
        let faster = vec![rec("latency-ms-p50", 1.0, false, 0)];
        let rows = compare(&base[2..3], &faster, &Tolerances::default());
        assert_eq!(rows[0].verdict, Verdict::Ok);
    }

    #[test]
    fn a_baseline_with_seeds_is_judged_by_its_spread() {
        // BASE: three seeds, mean 0.82, sd 0.02; one new seed. The bound is
        // t(95%, 2 df) * 0.02 * sqrt(1/3 + 1) = 0.0674: a drop of 0.05, which the default
        // tolerance (0.02) would flag, is within this benchmark's seed noise; 0.08 is not.
        let base: Vec<Record> = [0.80, 0.82, 0.84]
            .iter()
            .enumerate()
            .map(|(s, v)| rec("owner-accuracy", *v, true, s as u64))
            .collect();
        let verdict = |v: f64, t: &Tolerances| {
            let rows = compare(&base, &[rec("owner-accuracy", v, true, 0)], t);
            (
                rows[0].verdict,
                rows[0].allowed.unwrap(),
                rows[0].tolerance.clone(),
            )
        };
        let (ok, allowed, rule) = verdict(0.77, &Tolerances::default());
        assert_eq!(ok, Verdict::Ok);
        assert!((allowed - 0.0674).abs() < 1e-4, "{allowed}");
        assert_eq!(rule, "3 seeds at 95%");
        assert_eq!(verdict(0.74, &Tolerances::default()).0, Verdict::Regressed);
        // Better is never a regression.
        assert_eq!(verdict(0.95, &Tolerances::default()).0, Verdict::Ok);
        // An explicit tolerance is a hard bound under the spread.
        let hard = Tolerances::parse(&["owner-accuracy=0.03".into()]).unwrap();
        let (v, allowed, rule) = verdict(0.77, &hard);
        assert_eq!((v, allowed), (Verdict::Regressed, 0.03));
        assert_eq!(rule, "3 seeds at 95% + hard 0.03");
        // A higher confidence widens the bound.
        let strict = Tolerances::default().with_confidence(0.99).unwrap();
        assert!(verdict(0.74, &strict).1 > allowed);
        assert!(Tolerances::default().with_confidence(1.0).is_err());
        assert!(Tolerances::default().with_confidence(0.3).is_err());
        // Seeds that agree: only the minimum effect (0.01) is allowed.
        let flat: Vec<Record> = (0..3)
            .map(|s| rec("owner-accuracy", 0.5, true, s))
            .collect();
        let v = |x: f64| {
            compare(
                &flat,
                &[rec("owner-accuracy", x, true, 0)],
                &Tolerances::default(),
            )[0]
            .verdict
        };
        assert_eq!(v(0.495), Verdict::Ok);
        assert_eq!(v(0.48), Verdict::Regressed);
        // Timings keep their tolerance, whatever the seeds.
        let lat: Vec<Record> = [10.0, 30.0]
            .iter()
            .enumerate()
            .map(|(s, x)| rec("latency-ms-p50", *x, false, s as u64))
            .collect();
        let rows = compare(
            &lat,
            &[rec("latency-ms-p50", 30.0, false, 0)],
            &Tolerances::default(),
        );
        assert_eq!(
            rows[0].verdict,
            Verdict::Regressed,
            "20 -> 30 ms is +50% > 25%"
        );
    }

    #[test]
    fn only_rows_marked_timing_are_compared_as_timings() {
        // A value in seconds that its measurer did not mark as a timing is gated as a value: no
        // noise floor, no `timing=` tolerance.
        let mut marked = rec("protect-seconds", 1e-4, false, 0);
        let mut unmarked = marked.clone();
        unmarked.timing = Some(false);
        let slower = |r: &Record| Record {
            value: 0.3,
            ..r.clone()
        };
        let rows = compare(
            &[unmarked.clone()],
            &[slower(&unmarked)],
            &Tolerances::default(),
        );
        assert_eq!(rows[0].verdict, Verdict::Regressed);
        marked.timing = Some(true);
        let rows = compare(
            &[marked.clone()],
            &[slower(&marked)],
            &Tolerances::default(),
        );
        assert_eq!(rows[0].verdict, Verdict::Ok);
        // Rows of older logs carry no mark: their names decide.
        marked.timing = None;
        assert!(marked.is_timing());
        for m in [
            "owner-accuracy",
            "msd-fidelity",
            "queries-used",
            "password-bytes",
        ] {
            assert!(
                !Record {
                    metric: m.into(),
                    timing: None,
                    ..marked.clone()
                }
                .is_timing()
            );
        }
    }

    #[test]
    fn paired_latency_ratios_have_a_small_noise_floor() {
        let base = vec![rec("latency-ratio", 1.0, false, 0)];
        let verdict = |v: f64| {
            compare(
                &base,
                &[rec("latency-ratio", v, false, 0)],
                &Tolerances::parse(&["timing=0".into()]).unwrap(),
            )[0]
            .verdict
        };
        assert_eq!(verdict(1.08), Verdict::Ok);
        assert_eq!(verdict(1.2), Verdict::Regressed);
    }

    #[test]
    fn timings_near_zero_do_not_regress_on_noise() {
        let base = vec![rec("protect-seconds", 1e-4, false, 0)];
        let verdict = |secs: f64| {
            compare(
                &base,
                &[rec("protect-seconds", secs, false, 0)],
                &Tolerances::default(),
            )[0]
            .verdict
        };
        assert_eq!(verdict(0.3), Verdict::Ok, "within the 0.5 s noise floor");
        assert_eq!(verdict(0.7), Verdict::Regressed, "beyond it");
    }
}
