//! Learning-rate schedules, evaluated per optimisation step so that short CPU runs (a few epochs)
//! still anneal smoothly.

/// How the learning rate moves over a run. Serialised in run records so a run can be repeated.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Cosine annealing from the base rate to zero (`torch.optim.lr_scheduler.CosineAnnealingLR`
    /// with `T_max` = all steps), after an optional linear warm-up.
    Cosine {
        /// Warm-up length in epochs (fractions allowed), rising linearly from 0.
        #[serde(default)]
        warmup_epochs: f64,
    },
    /// Multiply the rate by `gamma` at each milestone (`MultiStepLR`), milestones in epochs.
    MultiStep {
        /// Epochs after which the rate drops.
        milestones: Vec<usize>,
        /// Factor applied at each milestone.
        gamma: f64,
    },
    /// One-cycle (Smith 2018, `OneCycleLR` with cosine annealing): from base/div up to base over
    /// `pct_start` of the run, then down to base/(div*final_div).
    OneCycle {
        /// Fraction of the steps spent rising.
        pct_start: f64,
        /// Initial rate = base / div.
        div_factor: f64,
        /// Final rate = initial / final_div.
        final_div_factor: f64,
    },
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::Cosine { warmup_epochs: 0.0 }
    }
}

impl Schedule {
    /// The standard one-cycle settings (`OneCycleLR` defaults: 0.3, 25, 1e4).
    pub fn one_cycle() -> Self {
        Schedule::OneCycle {
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
        }
    }

    /// Parses the CLI spelling: `constant`, `cosine`, `one-cycle`, `multi-step:100,150` (gamma 0.1).
    pub fn parse(s: &str) -> crate::Result<Self> {
        let bad = |why: &str| {
            crate::Error::Config(format!(
                "schedule `{s}`: {why}; use constant, cosine, one-cycle or multi-step:E1,E2"
            ))
        };
        match s {
            "constant" => Ok(Schedule::Constant),
            "cosine" => Ok(Schedule::default()),
            "one-cycle" => Ok(Self::one_cycle()),
            _ => {
                let Some(list) = s.strip_prefix("multi-step:") else {
                    return Err(bad("unknown schedule"));
                };
                let milestones = list
                    .split(',')
                    .map(|m| m.trim().parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| bad("milestones must be whole epochs"))?;
                Ok(Schedule::MultiStep {
                    milestones,
                    gamma: 0.1,
                })
            }
        }
    }

    /// The learning rate for step `step` (0-based) of `total_steps`, with `steps_per_epoch` to
    /// place epoch-based milestones.
    pub fn lr_at(&self, base: f64, step: usize, total_steps: usize, steps_per_epoch: usize) -> f64 {
        let total = total_steps.max(1) as f64;
        let t = step as f64;
        match self {
            Schedule::Constant => base,
            Schedule::Cosine { warmup_epochs } => {
                let warm = (warmup_epochs * steps_per_epoch as f64).min(total);
                if t < warm {
                    base * (t + 1.0) / warm
                } else {
                    let span = (total - warm).max(1.0);
                    0.5 * base * (1.0 + (std::f64::consts::PI * (t - warm) / span).cos())
                }
            }
            Schedule::MultiStep { milestones, gamma } => {
                let epoch = step / steps_per_epoch.max(1);
                let drops = milestones.iter().filter(|&&m| epoch >= m).count();
                base * gamma.powi(drops as i32)
            }
            Schedule::OneCycle {
                pct_start,
                div_factor,
                final_div_factor,
            } => {
                let initial = base / div_factor;
                let last = initial / final_div_factor;
                let up = (pct_start * total - 1.0).max(1.0);
                let down = (total - 1.0 - up).max(1.0);
                let cos = |from: f64, to: f64, frac: f64| {
                    to + (from - to) / 2.0 * (1.0 + (std::f64::consts::PI * frac.min(1.0)).cos())
                };
                if t <= up {
                    cos(initial, base, t / up)
                } else {
                    cos(base, last, (t - up) / down)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_starts_at_base_and_ends_near_zero() {
        let s = Schedule::default();
        assert!((s.lr_at(0.1, 0, 100, 10) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(0.1, 50, 100, 10) - 0.05).abs() < 1e-12);
        assert!(s.lr_at(0.1, 99, 100, 10) < 1e-3);
    }

    #[test]
    fn warmup_rises_linearly() {
        let s = Schedule::Cosine { warmup_epochs: 1.0 };
        assert!((s.lr_at(0.1, 0, 100, 10) - 0.01).abs() < 1e-12);
        assert!((s.lr_at(0.1, 9, 100, 10) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn multi_step_drops_at_milestones() {
        let s = Schedule::parse("multi-step:2,4").unwrap();
        assert_eq!(s.lr_at(1.0, 19, 60, 10), 1.0);
        assert!((s.lr_at(1.0, 20, 60, 10) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(1.0, 45, 60, 10) - 0.01).abs() < 1e-12);
    }

    /// Reference: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=100)
    /// gives 0.004 at step 0 and 0.1 at step 29, and 4e-7 at step 99.
    #[test]
    fn one_cycle_matches_torch_landmarks() {
        let s = Schedule::one_cycle();
        assert!((s.lr_at(0.1, 0, 100, 10) - 0.004).abs() < 1e-9);
        assert!((s.lr_at(0.1, 29, 100, 10) - 0.1).abs() < 1e-9);
        assert!((s.lr_at(0.1, 99, 100, 10) - 4e-7).abs() < 1e-9);
    }

    #[test]
    fn parse_rejects_unknown() {
        let err = Schedule::parse("cosin").unwrap_err().to_string();
        assert!(err.contains("cosine"), "{err}");
        assert!(Schedule::parse("multi-step:a").is_err());
    }
}
