//! Lock training: the model learns to be accurate with the password and useless without it.
//! Every batch is split in half; the first half runs with the password applied and keeps its
//! true labels, the second half runs without it and gets uniformly random labels; the loss is
//! plain cross-entropy over the whole batch (the paper, and the authors' `EdgePro_training.py`).
//!
//! It plugs into the harness's trainer as an [`Objective`], so the optimiser, schedule, shuffling,
//! augmentation and progress display are the ones every other run uses.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::Tensor;
use datasets::batch::Batch;
use harness_core::train::{Objective, StepLoss, correct_count};
use harness_core::{Model, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use harness_core::protect::MaskHook;

/// The lock-training loss. Random labels come from a stream keyed by `seed` and the step
/// number, so a run is repeatable.
pub struct LockObjective {
    hook: MaskHook,
    classes: u32,
    seed: u64,
    step: AtomicU64,
}

impl LockObjective {
    /// The objective for a password `hook` (built on the model being trained) and `classes`
    /// output classes.
    pub fn new(hook: MaskHook, classes: usize, seed: u64) -> Self {
        Self {
            hook,
            classes: classes.max(1) as u32,
            seed,
            step: AtomicU64::new(0),
        }
    }

    /// How many rows of a batch of `n` run with the password: the first `floor(n / 2)`.
    ///
    /// Choice: the first half of each (already shuffled) batch rather than a random half as in
    /// the authors' code (`np.random.permutation(n)[:n/2]`): the same distribution, and a
    /// contiguous half is one mask per stage instead of one per image.
    pub fn locked_rows(n: usize) -> usize {
        n / 2
    }

    /// The hook and targets of one batch with true `labels`: the hook masks the first
    /// [`Self::locked_rows`] rows, whose targets are their labels; every other row gets a
    /// label drawn uniformly from all classes (which may equal its true one, as in the authors'
    /// `random.choice(range(10))`).
    pub fn prepare(&self, labels: &Tensor) -> Result<(MaskHook, Tensor)> {
        let step = self.step.fetch_add(1, Ordering::Relaxed);
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut targets = labels.to_vec1::<u32>()?;
        let k = Self::locked_rows(targets.len());
        for t in targets.iter_mut().skip(k) {
            *t = rng.random_range(0..self.classes);
        }
        let n = targets.len();
        let targets = Tensor::from_vec(targets, n, labels.device())?;
        Ok((self.hook.first_rows(k), targets))
    }
}

impl Objective for LockObjective {
    fn loss(&self, model: &dyn Model, batch: &Batch) -> Result<StepLoss> {
        let (hook, targets) = self.prepare(&batch.labels)?;
        let logits = model.forward_hooked(&batch.images, true, &hook)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
        let correct = correct_count(&logits, &targets)?;
        Ok(StepLoss {
            loss,
            correct: Some(correct),
        })
    }

    fn id(&self) -> String {
        "edgepro-lock".into()
    }
}
