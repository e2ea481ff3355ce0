//! An attack: given what a protection exposes and a budget, produce the attacker's model.

use std::sync::Arc;

use candle_core::Device;
use datasets::ImageSet;
use datasets::catalog::Normalization;

use super::{Deployed, DisclosureKind, Exposure, Measure, Requirement};
use crate::Result;
use crate::train::TrainConfig;

/// How much an attacker may spend. Profiles (`smoke`, `quick`, `nightly`) scale these.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Budget {
    /// Training epochs of the attacker's own training (fine-tuning, substitute training).
    pub epochs: usize,
    /// Images the attacker may send to the oracle (extraction), `None` for no limit.
    pub queries: Option<u64>,
}

/// What an attack may use besides the exposure.
pub struct AttackContext<'a> {
    /// Compute device.
    pub device: &'a Device,
    /// The attacker's labelled data: a slice of the training set disjoint from the owner's.
    pub attacker_data: &'a ImageSet,
    /// Unlabelled images for querying an oracle (the attacker slice or another dataset).
    pub transfer_data: &'a ImageSet,
    /// Input normalisation of the victim's dataset (the attacker knows the task).
    pub normalization: Normalization,
    /// The victim's training recipe, as a sensible default for the attacker's own training.
    pub train: TrainConfig,
    /// Seed of this cell.
    pub seed: u64,
    /// Show progress on stderr.
    pub progress: bool,
}

/// The attacker's result.
pub struct Stolen {
    /// The attacker's model, evaluated by the harness (accuracy, fidelity to the victim).
    pub model: Arc<dyn Deployed>,
    /// Attack-specific measures (pruning rate reached, guesses tried, ...).
    pub measures: Vec<Measure>,
}

/// An attack. Implementations live in the `attacks` crate, one file each.
pub trait Attack: Send + Sync {
    /// What the attack needs from an exposure; pairs that cannot run are rejected when the
    /// matrix is planned.
    fn requires(&self) -> Requirement;

    /// For an adaptive attack on one protection's secret, the kind of public description it
    /// reads: the planner pairs it with the defences that publish it only (and rejects a matrix
    /// without one). `None` for generic attacks, which run against every defence.
    fn targets(&self) -> Option<DisclosureKind> {
        None
    }

    /// Runs the attack. Queries go through `exposure.oracle`, whose ledger the harness reads.
    fn run(&self, ctx: &AttackContext<'_>, exposure: &Exposure, budget: &Budget) -> Result<Stolen>;
}
