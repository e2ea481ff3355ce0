//! What the harness measures of a model, one probe per kind of output, chosen once per victim
//! from the task its model declares: a classifier is scored by top-1 accuracy on the test labels
//! and by fidelity (agreement with the owner's predictions), a denoiser by the PSNR of its output
//! on noisy test images. The runner asks the probe and never looks at the task itself.

use candle_core::Device;
use datasets::ImageSet;
use datasets::catalog::Normalization;
use harness_core::Task;
use harness_core::eval_denoise::evaluate_psnr;
use harness_core::protect::{Deployed, Measure, TestSetCheck};

use super::victims::Slices;

/// Images per forward when scoring a model.
const EVAL_BATCH: usize = 256;
/// Images per forward when denoising (full-size outputs are kept).
const DENOISE_BATCH: usize = 64;

/// Measures models of one kind of output on a victim's test set.
pub trait Probe {
    /// The owner's answers that an attacker's model is compared with (its test predictions);
    /// empty when the output has no labels.
    fn reference(&self, owner: &dyn Deployed) -> anyhow::Result<Vec<u32>>;

    /// The owner's quality: `owner-accuracy`, or `owner-psnr` with the noisy input's
    /// `noisy-psnr` beside it. `reference` is what [`Probe::reference`] returned for `owner`.
    fn owner(&self, owner: &dyn Deployed, reference: &[u32]) -> anyhow::Result<Vec<Measure>>;

    /// The quality of access level `name` (`level-accuracy:NAME` or `level-psnr:NAME`).
    fn level(&self, name: &str, level: &dyn Deployed) -> anyhow::Result<Vec<Measure>>;

    /// An attacker's model: `attacker-accuracy` and `fidelity` to `reference`. For the thief
    /// these are gains, so lower is better for the owner.
    fn stolen(&self, model: &dyn Deployed, reference: &[u32]) -> anyhow::Result<Vec<Measure>>;

    /// A protection's own measures of its deployment on the test set (see
    /// [`TestSetCheck`]); `reference` is the owner's answers from [`Probe::reference`].
    fn test_set(&self, check: &dyn TestSetCheck, reference: &[u32])
    -> anyhow::Result<Vec<Measure>>;

    /// Why attacks cannot be scored by this probe, if they cannot.
    fn refuses_attacks(&self) -> Option<String>;

    /// How the model sees inputs (for timing it on the same inputs).
    fn normalization(&self) -> Option<&Normalization>;
}

/// The probe for `task` on `data`'s test set; `seed` fixes a denoiser's test noise.
pub fn probe_for<'a>(
    task: Task,
    data: &'a Slices,
    seed: u64,
    device: &'a Device,
) -> Box<dyn Probe + 'a> {
    match task {
        Task::Classification => Box::new(Labels {
            test: &data.test,
            normalization: &data.normalization,
            device,
        }),
        // Denoisers see pixels / 255 (no normalisation), as they were trained.
        Task::Denoising { sigma } => Box::new(Denoising {
            test: &data.test,
            sigma,
            seed,
            device,
        }),
    }
}

/// Classifiers: top-1 against the labels and against the owner.
struct Labels<'a> {
    test: &'a ImageSet,
    normalization: &'a Normalization,
    device: &'a Device,
}

impl Labels<'_> {
    fn predict(&self, model: &dyn Deployed) -> anyhow::Result<Vec<u32>> {
        predict(model, self.test, Some(self.normalization), self.device)
    }

    fn accuracy(&self, preds: &[u32]) -> f64 {
        harness_core::eval::agreement(preds, &self.test.labels)
    }
}

impl Probe for Labels<'_> {
    fn reference(&self, owner: &dyn Deployed) -> anyhow::Result<Vec<u32>> {
        self.predict(owner)
    }

    fn owner(&self, _: &dyn Deployed, reference: &[u32]) -> anyhow::Result<Vec<Measure>> {
        Ok(vec![Measure::higher(
            "owner-accuracy",
            self.accuracy(reference),
        )])
    }

    fn level(&self, name: &str, level: &dyn Deployed) -> anyhow::Result<Vec<Measure>> {
        let preds = self.predict(level)?;
        Ok(vec![Measure::higher(
            format!("level-accuracy:{name}"),
            self.accuracy(&preds),
        )])
    }

    fn stolen(&self, model: &dyn Deployed, reference: &[u32]) -> anyhow::Result<Vec<Measure>> {
        let preds = self.predict(model)?;
        Ok(vec![
            Measure::lower("attacker-accuracy", self.accuracy(&preds)),
            Measure::lower("fidelity", harness_core::eval::agreement(&preds, reference)),
        ])
    }

    fn test_set(
        &self,
        check: &dyn TestSetCheck,
        reference: &[u32],
    ) -> anyhow::Result<Vec<Measure>> {
        Ok(check.measure(self.test, self.normalization, reference, self.device)?)
    }

    fn refuses_attacks(&self) -> Option<String> {
        None
    }

    fn normalization(&self) -> Option<&Normalization> {
        Some(self.normalization)
    }
}

/// Denoisers: PSNR of the output against the clean image, with the same seeded noise for every
/// model of the victim.
struct Denoising<'a> {
    test: &'a ImageSet,
    sigma: f64,
    seed: u64,
    device: &'a Device,
}

impl Probe for Denoising<'_> {
    fn reference(&self, _: &dyn Deployed) -> anyhow::Result<Vec<u32>> {
        Ok(Vec::new())
    }

    fn owner(&self, owner: &dyn Deployed, _: &[u32]) -> anyhow::Result<Vec<Measure>> {
        let r = evaluate_psnr(
            owner,
            self.test,
            self.sigma,
            self.seed,
            DENOISE_BATCH,
            self.device,
        )?;
        Ok(vec![
            Measure::higher("owner-psnr", r.psnr),
            // The do-nothing reference: the noisy input itself (same noise for every model).
            Measure::higher("noisy-psnr", r.noisy_psnr),
        ])
    }

    fn level(&self, name: &str, level: &dyn Deployed) -> anyhow::Result<Vec<Measure>> {
        let r = evaluate_psnr(
            level,
            self.test,
            self.sigma,
            self.seed,
            DENOISE_BATCH,
            self.device,
        )?;
        Ok(vec![Measure::higher(format!("level-psnr:{name}"), r.psnr)])
    }

    fn stolen(&self, _: &dyn Deployed, _: &[u32]) -> anyhow::Result<Vec<Measure>> {
        anyhow::bail!(self.refuses_attacks().unwrap_or_default())
    }

    fn test_set(&self, _: &dyn TestSetCheck, _: &[u32]) -> anyhow::Result<Vec<Measure>> {
        anyhow::bail!(
            "this protection's test-set check compares top-1 answers, which a denoiser does not \
             give; the protection should have refused the denoiser"
        )
    }

    fn refuses_attacks(&self) -> Option<String> {
        Some(
            "attacks measure accuracy on labels, which a denoiser does not produce; a matrix \
             with denoisers takes defence cells only"
                .into(),
        )
    }

    fn normalization(&self) -> Option<&Normalization> {
        None
    }
}

/// Top-1 predictions of `model` on every image of `set`.
fn predict(
    model: &dyn Deployed,
    set: &ImageSet,
    norm: Option<&Normalization>,
    device: &Device,
) -> anyhow::Result<Vec<u32>> {
    let idx: Vec<usize> = (0..set.len()).collect();
    let mut out = Vec::with_capacity(set.len());
    for chunk in idx.chunks(EVAL_BATCH) {
        let xs = datasets::batch::to_tensor(set, chunk, norm, device)?;
        let logits = model.logits(&xs)?;
        out.extend(logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?);
    }
    Ok(out)
}
