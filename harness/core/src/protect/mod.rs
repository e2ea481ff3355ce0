//! The plug-in contract of the benchmark: what a defence produces, what an attacker is exposed
//! to, and what an attack returns. The matrix runner only ever sees these types, so a new
//! protection or attack is one file implementing [`Defence`] or [`Attack`] plus one registry line.

mod attack;
mod defence;
mod deployed;
mod exposure;
mod oracle;
mod registry;
mod verifier;

pub use attack::{Attack, AttackContext, Budget, Stolen};
pub use defence::{Defence, DefenceContext, Protected, Victim};
pub use deployed::{Deployed, PlainModel};
pub use exposure::{Exposure, Requirement, StolenWeights};
pub use oracle::{Oracle, OutputMode, Perturbation, QueryLedger};
pub use registry::{Factory, Registry, RegistryEntry, settings};
pub use verifier::{OwnershipVerifier, Verdict};

/// A named scalar a component reports beyond the harness's own metrics (fraction of parameters
/// encrypted, licence size, ...). It becomes one tidy record row.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Measure {
    /// Stable kebab-case metric name.
    pub metric: String,
    /// The value.
    pub value: f64,
    /// Whether a larger value is better for the protection's owner (drives regression gates).
    pub higher_is_better: bool,
}

impl Measure {
    /// A measure whose larger values are better.
    pub fn higher(metric: impl Into<String>, value: f64) -> Self {
        Self {
            metric: metric.into(),
            value,
            higher_is_better: true,
        }
    }

    /// A measure whose smaller values are better.
    pub fn lower(metric: impl Into<String>, value: f64) -> Self {
        Self {
            metric: metric.into(),
            value,
            higher_is_better: false,
        }
    }
}
