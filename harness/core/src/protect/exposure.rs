//! What an adversary gets from a protected model. Attacks declare what they need; the planner
//! rejects impossible defence x attack pairs before any training starts, instead of an attack
//! printing "not supported" at run time.

use super::Oracle;
use crate::{ModelSpec, ParamStore};

/// Weights as a thief finds them on a device or server: for an unprotected model the real ones,
/// for an encrypted or locked model the protected ones, without any secret.
#[derive(Clone)]
pub struct StolenWeights {
    /// The architecture (public: it is in the deployed file).
    pub spec: ModelSpec,
    /// The weights as stolen.
    pub params: ParamStore,
    /// What else the deployed files reveal about the protection without any secret (which
    /// layers are encrypted, which stages carry a lock hook, ...), as the defence describes it.
    /// Adaptive attacks read it; generic attacks ignore it. `Null` for plain weights.
    pub public: serde_json::Value,
}

impl StolenWeights {
    /// Weights with nothing else revealed.
    pub fn plain(spec: ModelSpec, params: ParamStore) -> Self {
        Self {
            spec,
            params,
            public: serde_json::Value::Null,
        }
    }
}

/// The adversary's view of a protected model.
#[derive(Clone, Default)]
pub struct Exposure {
    /// White-box: the deployed weights, when the threat model lets them be stolen.
    pub weights: Option<StolenWeights>,
    /// Black-box: the owner's prediction API.
    pub oracle: Option<Oracle>,
}

/// What an attack needs from an [`Exposure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Requirement {
    /// Stolen weights (fine-tuning, pruning, adversarial training, adaptive attacks).
    Weights,
    /// A query oracle (extraction).
    Oracle,
    /// Nothing (the no-theft reference trained on the attacker's own data).
    Nothing,
}

impl Exposure {
    /// Whether this exposure gives the attack what it needs.
    pub fn satisfies(&self, need: Requirement) -> bool {
        match need {
            Requirement::Weights => self.weights.is_some(),
            Requirement::Oracle => self.oracle.is_some(),
            Requirement::Nothing => true,
        }
    }
}
