//! A protection: turns a trained victim into what its owner deploys and what an adversary sees.

use std::sync::Arc;

use candle_core::Device;
use datasets::ImageSet;
use datasets::catalog::Normalization;

use super::{Deployed, Measure, OwnershipVerifier, PlainModel, StolenWeights};
use crate::train::TrainConfig;
use crate::{Result, Task};

/// The unprotected victim, trained once by the harness and shared by every defence of a cell.
pub struct Victim {
    /// The trained model (defences must not modify it: copy with `deep_copy`).
    pub model: PlainModel,
    /// The recipe it was trained with (defences that retrain reuse it).
    pub train: TrainConfig,
    /// What it was trained for: a protection that searches with a loss (PSS) must use the
    /// victim's own objective, and a denoiser's noise level is part of it.
    pub task: Task,
}

/// What a defence may use besides the victim.
pub struct DefenceContext<'a> {
    /// Compute device.
    pub device: &'a Device,
    /// The owner's training data (the victim was trained on it).
    pub owner_data: &'a ImageSet,
    /// Input normalisation of the dataset.
    pub normalization: Normalization,
    /// Seed of this cell; every secret a defence draws must come from the OS random source or
    /// from this seed, never from a constant.
    pub seed: u64,
    /// Show progress on stderr.
    pub progress: bool,
}

/// The result of protecting a victim.
pub struct Protected {
    /// What the owner runs with full access.
    pub owner: Arc<dyn Deployed>,
    /// Each access level below full, weakest first, for protections with levels (name, model).
    pub levels: Vec<(String, Arc<dyn Deployed>)>,
    /// What a thief of the deployed files gets (`None` when the threat model keeps the weights
    /// out of reach, e.g. a cloud-only API).
    pub stolen: Option<StolenWeights>,
    /// Protection-specific measures (fraction encrypted, secret size, ...).
    pub measures: Vec<Measure>,
    /// The owner's ownership verifier, for protections that can recognise their model in a
    /// suspect's hands (fingerprints, watermarks); then [`Defence::verifies_ownership`] is true.
    pub verifier: Option<Arc<dyn OwnershipVerifier>>,
}

impl Protected {
    /// The unprotected deployment: the owner runs the victim, a thief gets its real weights.
    pub fn unprotected(victim: &Victim) -> Self {
        Self {
            owner: Arc::new(victim.model.clone()),
            levels: Vec::new(),
            stolen: Some(StolenWeights::plain(
                victim.model.spec.clone(),
                victim.model.params.clone(),
            )),
            measures: Vec::new(),
            verifier: None,
        }
    }
}

/// A protection method. Implementations live in the `defences` crate, one file each.
pub trait Defence: Send + Sync {
    /// Stable kebab-case id (the registry key, and the value in result records).
    fn id(&self) -> &'static str;

    /// Whether a thief can take the deployed weights under this protection's threat model (then
    /// [`Protected::stolen`] is `Some`). The owner's prediction API is always there. The planner
    /// uses this to reject pairs with attacks that need stolen weights before anything trains.
    fn exposes_weights(&self) -> bool {
        true
    }

    /// Whether [`Protected::verifier`] will be set. The planner then adds cells that put
    /// independently trained models (the no-theft references) to the verifier, which give its
    /// false-positive rate.
    fn verifies_ownership(&self) -> bool {
        false
    }

    /// Protects `victim`. Time spent here is measured by the harness as protection overhead.
    fn protect(&self, ctx: &DefenceContext<'_>, victim: &Victim) -> Result<Protected>;
}
