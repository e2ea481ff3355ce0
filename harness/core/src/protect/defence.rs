//! A protection: turns a trained victim into what its owner deploys and what an adversary sees.

use std::sync::Arc;

use candle_core::Device;
use datasets::ImageSet;
use datasets::catalog::Normalization;

use super::{Capabilities, Deployed, Measure, OwnershipVerifier, PlainModel, StolenArtifact};
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
    /// out of reach, e.g. a cloud-only API), as declared by [`Defence::capabilities`].
    pub stolen: Option<StolenArtifact>,
    /// Protection-specific measures (fraction encrypted, secret size, ...).
    pub measures: Vec<Measure>,
    /// The owner's ownership verifier, for protections that can recognise their model in a
    /// suspect's hands (fingerprints, watermarks), as declared by [`Defence::capabilities`].
    pub verifier: Option<Arc<dyn OwnershipVerifier>>,
    /// Measures of the deployment that need the harness's test set, which a defence never sees
    /// while protecting (a quantized deployment's agreement with the model it came from).
    pub test_set_check: Option<Arc<dyn TestSetCheck>>,
}

/// What a protection measures of its own deployment on the harness's test set: the runner
/// calls it once per defence with the test images and the owner's predictions on them.
pub trait TestSetCheck: Send + Sync {
    /// The measures, from `test` (normalised with `normalization`) and `owner_predictions`
    /// (the owner deployment's top-1 answer per test image, which the runner has already
    /// computed).
    fn measure(
        &self,
        test: &ImageSet,
        normalization: &Normalization,
        owner_predictions: &[u32],
        device: &Device,
    ) -> Result<Vec<Measure>>;
}

impl Protected {
    /// The unprotected deployment: the owner runs the victim, a thief gets its real weights.
    pub fn unprotected(victim: &Victim) -> Self {
        Self {
            owner: Arc::new(victim.model.clone()),
            levels: Vec::new(),
            stolen: Some(StolenArtifact::plain(
                victim.model.spec.clone(),
                victim.model.params.clone(),
            )),
            measures: Vec::new(),
            verifier: None,
            test_set_check: None,
        }
    }
}

/// A protection method. Implementations live in the `defences` crate, one file each.
pub trait Defence: Send + Sync {
    /// What a thief can take, which public description comes with it, and whether the owner
    /// gets an ownership verifier; the planner pairs defences and attacks by it, and the runner
    /// checks every [`Protected`] against it. The default is an unprotected model's.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Protects `victim`. Time spent here is measured by the harness as protection overhead.
    fn protect(&self, ctx: &DefenceContext<'_>, victim: &Victim) -> Result<Protected>;
}
