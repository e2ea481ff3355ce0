//! Batch-1 latency that can be trusted on a busy machine.
//!
//! A shared 2-core runner's speed drifts while a matrix runs (neighbours, frequency, caches):
//! one ResNet-20 timed three times in one smoke run gave 2.23 ms and 1.41 ms p50, so two
//! deployments timed one after the other differ by the machine's drift, not by what they cost.
//! Here every deployment of a victim is timed in the same rounds, interleaved (A B C, B C A,
//! C A B, ...: each round starts one further along, so no deployment always follows the same
//! one), and a deployment's cost against a reference is the median over rounds of the ratio of
//! the two times *in the same round*, where both saw the same machine. Its 95% interval comes
//! from order statistics of the per-round ratios (distribution-free).
//!
//! The harness's matrix runner and `harness bench` both time through [`time_interleaved`], so
//! there is one timer and one percentile convention (the PyTorch reference's).

use std::time::Instant;

use candle_core::{DType, Device};
use datasets::ImageSet;
use datasets::catalog::Normalization;

use crate::protect::Deployed;
use crate::{Error, Result};

/// How many queries a latency measurement makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyPlan {
    /// Untimed rounds first (allocators, caches, lazy initialisation).
    pub warmup_rounds: usize,
    /// Timed rounds; each times every subject once.
    pub rounds: usize,
}

impl Default for LatencyPlan {
    /// 10 warm-up and 100 timed rounds: the matrix's batch-1 measurement.
    fn default() -> Self {
        Self {
            warmup_rounds: 10,
            rounds: 100,
        }
    }
}

/// Times `subjects` subjects interleaved in rounds: `query(i)` must run subject `i` once and
/// return only when its result is computed (read back to the host on lazy devices). Returns the
/// times in milliseconds, one series per subject, one value per timed round, in round order.
pub fn time_interleaved(
    subjects: usize,
    plan: LatencyPlan,
    mut query: impl FnMut(usize) -> Result<()>,
) -> Result<Vec<Vec<f64>>> {
    let mut times = vec![Vec::with_capacity(plan.rounds); subjects];
    for round in 0..plan.warmup_rounds + plan.rounds {
        for k in 0..subjects {
            let i = (round + k) % subjects;
            let start = Instant::now();
            query(i)?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            if round >= plan.warmup_rounds {
                times[i].push(ms);
            }
        }
    }
    Ok(times)
}

/// Batch-1 times in milliseconds of `deployments`, interleaved in rounds (see the module docs):
/// round `r` sends image `r mod |set|` of `set` to every deployment, each answer read back to
/// the host before the clock stops. One series per deployment, in the order given.
pub fn time_deployments(
    deployments: &[&dyn Deployed],
    set: &ImageSet,
    normalization: Option<&Normalization>,
    plan: LatencyPlan,
    device: &Device,
) -> Result<Vec<Vec<f64>>> {
    if set.is_empty() || plan.rounds == 0 {
        return Err(Error::Config(
            "timing a deployment needs at least one image and one round".into(),
        ));
    }
    let images = (0..plan.warmup_rounds + plan.rounds)
        .map(|r| datasets::batch::to_tensor(set, &[r % set.len()], normalization, device))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut round = 0;
    let mut asked = 0;
    time_interleaved(deployments.len(), plan, |i| {
        let xs = &images[round];
        // Force the computation on lazy devices before the clock stops.
        let _ = deployments[i]
            .logits(xs)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        asked += 1;
        if asked == deployments.len() {
            asked = 0;
            round += 1;
        }
        Ok(())
    })
}

/// Summary of one series of times, with the PyTorch reference's conventions: the median of an
/// even count is the mean of the two middle values; other percentiles are nearest-rank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Fastest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

impl Summary {
    /// The summary of a series (all zeros when it is empty).
    pub fn of(values: &[f64]) -> Self {
        let v = sorted(values);
        Self {
            min: v.first().copied().unwrap_or(0.0),
            p50: median_sorted(&v),
            p99: percentile_sorted(&v, 99.0),
            max: v.last().copied().unwrap_or(0.0),
        }
    }
}

/// A paired ratio of two deployments' times: median over rounds of `subject / reference`, with
/// a 95% interval of that median.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    /// Median of the per-round ratios.
    pub median: f64,
    /// Lower end of its 95% interval.
    pub low: f64,
    /// Upper end of its 95% interval.
    pub high: f64,
}

/// The paired ratio of `subject` against `reference`, both timed in the same rounds (as
/// [`time_interleaved`] returns them). Rounds where the reference took no measurable time are
/// left out; with no round left the ratio is NaN.
pub fn paired_ratio(subject: &[f64], reference: &[f64]) -> Ratio {
    let ratios: Vec<f64> = subject
        .iter()
        .zip(reference)
        .filter(|(_, r)| **r > 0.0)
        .map(|(s, r)| s / r)
        .collect();
    let v = sorted(&ratios);
    if v.is_empty() {
        return Ratio {
            median: f64::NAN,
            low: f64::NAN,
            high: f64::NAN,
        };
    }
    let (lo, hi) = median_interval_ranks(v.len());
    Ratio {
        median: median_sorted(&v),
        low: v[lo],
        high: v[hi],
    }
}

/// 0-based ranks of the order statistics that bound a 95% interval of the median of `n`
/// values: the binomial(n, 1/2) quantiles, by the normal approximation (as in Conover's
/// *Practical Nonparametric Statistics*), clamped to the sample.
fn median_interval_ranks(n: usize) -> (usize, usize) {
    let half_width = 1.96 * (n as f64).sqrt() / 2.0;
    let centre = n as f64 / 2.0;
    // 1-based ranks j = floor(n/2 - w), k = ceil(1 + n/2 + w).
    let j = (centre - half_width).floor().max(1.0) as usize;
    let k = ((1.0 + centre + half_width).ceil() as usize).min(n);
    (j - 1, k - 1)
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

fn median_sorted(v: &[f64]) -> f64 {
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The `p`-th percentile of a sorted series, nearest rank.
fn percentile_sorted(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0 * (v.len() - 1) as f64).round() as usize).min(v.len() - 1);
    v[idx]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic stand-in for a busy machine: the cost of a query in round `r` is the
    /// deployment's own cost times a load factor that drifts from 1x to 3x over the run and
    /// jitters from query to query (a seeded LCG, no clock).
    struct BusyMachine {
        state: u64,
    }

    impl BusyMachine {
        fn jitter(&mut self) -> f64 {
            self.state = self
                .state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Uniform in [0.97, 1.03).
            0.97 + 0.06 * ((self.state >> 11) as f64 / (1u64 << 53) as f64)
        }

        fn load(round: usize, rounds: usize) -> f64 {
            1.0 + 2.0 * round as f64 / rounds as f64
        }
    }

    #[test]
    fn median_and_percentiles_follow_the_reference() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 4.0]);
        assert_eq!((s.min, s.p50, s.max), (1.0, 2.5, 4.0));
        assert_eq!(Summary::of(&[3.0, 1.0, 2.0]).p50, 2.0);
        let two_hundred: Vec<f64> = (0..200).map(f64::from).collect();
        // round(0.99 * 199) = 197
        assert_eq!(Summary::of(&two_hundred).p99, 197.0);
        assert_eq!(Summary::of(&[]).p50, 0.0);
    }

    #[test]
    fn rounds_rotate_so_no_subject_always_goes_first() {
        let mut order = Vec::new();
        let plan = LatencyPlan {
            warmup_rounds: 1,
            rounds: 3,
        };
        let times = time_interleaved(3, plan, |i| {
            order.push(i);
            Ok(())
        })
        .unwrap();
        assert_eq!(order, [0, 1, 2, 1, 2, 0, 2, 0, 1, 0, 1, 2]);
        assert!(times.iter().all(|t| t.len() == 3));
    }

    #[test]
    fn a_deployment_against_itself_is_one_on_a_drifting_machine() {
        // Two copies of one deployment timed interleaved while the machine slows down 3x.
        let rounds = 100;
        let mut m = BusyMachine { state: 7 };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            let load = BusyMachine::load(r, rounds);
            a.push(1.5 * load * m.jitter());
            b.push(1.5 * load * m.jitter());
        }
        let ratio = paired_ratio(&a, &b);
        assert!((ratio.median - 1.0).abs() < 0.05, "{ratio:?}");
        assert!(ratio.low <= ratio.median && ratio.median <= ratio.high);
        assert!(ratio.low < 1.0 && ratio.high > 1.0, "{ratio:?}");
        // The same deployment timed in two windows one after the other (the old way) reads as
        // a large overhead: the drift, not the deployment.
        let first = Summary::of(&a[..rounds / 2]).p50;
        let second = Summary::of(&b[rounds / 2..]).p50;
        assert!(second / first > 1.5, "{first} {second}");
    }

    #[test]
    fn a_real_overhead_is_found_through_the_drift() {
        let rounds = 100;
        let mut m = BusyMachine { state: 11 };
        let (mut base, mut slow) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            let load = BusyMachine::load(r, rounds);
            base.push(2.0 * load * m.jitter());
            slow.push(2.0 * 1.2 * load * m.jitter());
        }
        let ratio = paired_ratio(&slow, &base);
        assert!((ratio.median - 1.2).abs() < 0.03, "{ratio:?}");
        assert!(ratio.low > 1.1 && ratio.high < 1.3, "{ratio:?}");
    }

    #[test]
    fn the_interval_of_the_median_has_the_binomial_ranks() {
        // n = 100: 50 -/+ 9.8 -> 1-based ranks 40 and 61.
        assert_eq!(median_interval_ranks(100), (39, 60));
        // Tiny samples clamp to the extremes.
        assert_eq!(median_interval_ranks(1), (0, 0));
        assert_eq!(median_interval_ranks(3), (0, 2));
        let r = paired_ratio(&[1.0, 2.0], &[0.0, 0.0]);
        assert!(r.median.is_nan());
    }
}
