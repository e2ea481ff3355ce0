//! Ownership verification: a protection may hand its owner a way to tell whether a suspect model
//! derives from the victim (a fingerprint, a watermark). The harness puts every attacked model to
//! it (a stolen copy should be recognised) and the independently trained reference models (they
//! should not be), so each verifier gets a true-positive and a false-positive rate measured the
//! same way.

use candle_core::Device;

use super::Deployed;
use crate::Result;

/// A verifier's judgement of one suspect.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Whether the verifier claims the suspect derives from the victim.
    pub derived: bool,
    /// The score the decision thresholds (higher means more likely derived), for ROC curves.
    pub score: f64,
}

/// Judges suspects for the owner of one protected victim. The suspect is a black box: only its
/// predictions (and, through `Deployed`, its timing) are available, as in a real dispute.
pub trait OwnershipVerifier: Send + Sync {
    /// Judges `suspect`. Queries it makes are the verifier's own, not the attacker's budget.
    fn verify(&self, suspect: &dyn Deployed, device: &Device) -> Result<Verdict>;
}
