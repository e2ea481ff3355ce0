//! The plug-in contract of the benchmark: what a defence produces, what an attacker is exposed
//! to, and what an attack returns. The matrix runner only ever sees these types, so a new
//! protection or attack is one file implementing [`Defence`] or [`Attack`] plus one registry line
//! (its [`RegistryEntry`], which holds its id, the one place the id is declared).
//!
//! A defence declares its [`Capabilities`] (what a thief takes, the kind of [`Disclosure`], an
//! ownership verifier or not); the planner pairs it with attacks by their [`Requirement`] and,
//! for adaptive attacks, by the [`DisclosureKind`] they target, and the runner checks the
//! declaration against what `protect` returned. Pieces both sides need (channel masks on
//! stages, activation ranking, seeded sampling) live in the core, so attacks never import
//! defences.
//!
//! A component's settings struct derives `Deserialize` with `deny_unknown_fields, default` and
//! is read with [`settings`]; its constructor then checks every numeric field with one line of
//! [`check`] (or [`check_opt`] for an `Option`), naming the key and its range:
//! `check("lr", config.lr, above(0.0))?`. The registry builds components when the matrix is
//! planned, so an out-of-range value is a usage error (exit 2) naming the table, the key and
//! the range, before anything runs.

mod attack;
mod capabilities;
mod check;
mod defence;
mod deployed;
mod disclosure;
pub mod masked;
mod oracle;
mod registry;
mod stolen;
mod verifier;

pub use attack::{Attack, AttackContext, Budget, Stolen};
pub use capabilities::Capabilities;
pub use check::{Setting, above, check, check_opt, describe, left_open, open, setting_keys};
pub use defence::{Defence, DefenceContext, Protected, TestSetCheck, Victim};
pub use deployed::{Deployed, PlainModel};
pub use disclosure::{
    Disclosure, DisclosureKind, EncryptedLayer, EncryptionDisclosure, LockDisclosure, LockedStage,
};
pub use masked::{MaskHook, MaskedModel};
pub use oracle::{Oracle, OutputMode, Perturbation, QueryLedger};
pub use registry::{Factory, Registry, RegistryEntry, settings};
pub use stolen::{Exposure, Parts, Requirement, StolenArtifact, Theft};
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
    /// Whether the value is a time, or derived from times: it moves with the machine and its
    /// load, so gates compare it loosely and `compare --exact` leaves it out.
    #[serde(default)]
    pub timing: bool,
}

impl Measure {
    /// A measure whose larger values are better.
    pub fn higher(metric: impl Into<String>, value: f64) -> Self {
        Self {
            metric: metric.into(),
            value,
            higher_is_better: true,
            timing: false,
        }
    }

    /// A measure whose smaller values are better.
    pub fn lower(metric: impl Into<String>, value: f64) -> Self {
        Self {
            metric: metric.into(),
            value,
            higher_is_better: false,
            timing: false,
        }
    }

    /// A time (or a value derived from times) in the unit its name says; smaller is better.
    pub fn timing(metric: impl Into<String>, value: f64) -> Self {
        Self {
            timing: true,
            ..Self::lower(metric, value)
        }
    }
}
