//! Training objectives and the input-space attack the attacks share: cross-entropy against an
//! oracle's probability rows (extraction), cross-entropy on a frozen body (last-layer
//! fine-tuning), and PGD adversarial examples with the loss on them (adversarial training).

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{D, DType, Tensor, Var};
use datasets::batch::Batch;
use datasets::catalog::Normalization;
use harness_core::train::{Objective, StepLoss, correct_count};
use harness_core::{Error, Model, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Cross-entropy against soft targets, `mean_i -sum_k t_ik log softmax(z_i)_k`: knockoff
/// extraction learns the oracle's whole probability row, not only its arg-max. The targets of
/// the whole training set are held here and gathered per batch by [`Batch::indices`].
pub struct SoftCrossEntropy {
    /// N x classes probability rows, row `i` for image `i` of the training set, on the device.
    targets: Tensor,
}

impl SoftCrossEntropy {
    /// An objective over `targets` (N x classes, rows summing to 1, on the training device).
    pub fn new(targets: Tensor) -> Result<Self> {
        if targets.rank() != 2 {
            return Err(Error::Config(format!(
                "soft targets must be N x classes, got shape {:?}",
                targets.dims()
            )));
        }
        Ok(Self {
            targets: targets.to_dtype(DType::F32)?.detach(),
        })
    }
}

impl Objective for SoftCrossEntropy {
    fn loss(&self, model: &dyn Model, batch: &Batch) -> Result<StepLoss> {
        let rows = self.targets.dim(0)?;
        if let Some(&bad) = batch.indices.iter().find(|&&i| i >= rows) {
            return Err(Error::Config(format!(
                "image {bad} has no soft target ({rows} rows)"
            )));
        }
        let idx: Vec<u32> = batch.indices.iter().map(|&i| i as u32).collect();
        let idx = Tensor::from_vec(idx, batch.indices.len(), self.targets.device())?;
        let targets = self.targets.index_select(&idx, 0)?;
        let logits = model.forward_t(&batch.images, true)?;
        let log_p = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let loss = (targets.mul(&log_p)?.sum(D::Minus1)?.mean_all()? * -1.0)?;
        let correct = correct_count(&logits, &targets.argmax(D::Minus1)?)?;
        Ok(StepLoss {
            loss,
            correct: Some(correct),
        })
    }

    fn id(&self) -> String {
        "soft-cross-entropy".into()
    }
}

/// Cross-entropy with the model in eval mode: batch norm uses (and keeps) its running
/// statistics, so when only the head is trained (`train_only`) every other tensor, buffers
/// included, stays exactly as stolen. Our reading of "fine-tune the last layer only".
#[derive(Debug, Clone, Copy, Default)]
pub struct FrozenBodyCrossEntropy;

impl Objective for FrozenBodyCrossEntropy {
    fn loss(&self, model: &dyn Model, batch: &Batch) -> Result<StepLoss> {
        let logits = model.forward_t(&batch.images, false)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &batch.labels)?;
        let correct = correct_count(&logits, &batch.labels)?;
        Ok(StepLoss {
            loss,
            correct: Some(correct),
        })
    }

    fn id(&self) -> String {
        "cross-entropy-frozen-body".into()
    }
}

/// Projected gradient descent in the L-infinity ball (Madry et al. 2018), with budgets in pixel
/// space (fractions of the 0..1 range) applied to normalised images channel by channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pgd {
    /// Radius of the ball, in pixel units (8/255 in the literature).
    pub eps: f64,
    /// Step size, in pixel units (2/255).
    pub step: f64,
    /// Gradient-sign steps (7 to 10).
    pub steps: usize,
    /// Start from a uniform random point of the ball instead of the clean image.
    pub random_start: bool,
}

impl Pgd {
    /// Checks the budgets: 0 <= eps <= 1 and 0 <= step <= 1.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("eps", self.eps), ("step", self.step)] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(Error::Config(format!(
                    "PGD {name} must be within the pixel range 0..1, got {v}"
                )));
            }
        }
        Ok(())
    }

    /// Adversarial versions of `images` (normalised with `norm`, N x 3 x H x W) that raise the
    /// cross-entropy of `model` against `labels`. The model runs in eval mode while crafting
    /// (batch-norm running statistics are neither used from the batch nor updated; the usual
    /// PyTorch code crafts in train mode, which is simpler to get wrong and changes the
    /// statistics). Every result lies within `eps` of its image in pixel space and inside the
    /// valid pixel range; the random start is drawn from `seed`.
    pub fn perturb(
        &self,
        model: &dyn Model,
        images: &Tensor,
        labels: &Tensor,
        norm: &Normalization,
        seed: u64,
    ) -> Result<Tensor> {
        let (_, channels, _, _) = images.dims4()?;
        if channels != norm.std.len() {
            return Err(Error::Config(format!(
                "PGD works on {}-channel normalised images, got {channels} channels",
                norm.std.len()
            )));
        }
        let device = images.device();
        let per_channel = |f: &dyn Fn(usize) -> f32| -> Result<Tensor> {
            let v: Vec<f32> = (0..channels).map(f).collect();
            Ok(Tensor::from_vec(v, (1, channels, 1, 1), device)?)
        };
        let eps = per_channel(&|c| self.eps as f32 / norm.std[c])?;
        let step = per_channel(&|c| self.step as f32 / norm.std[c])?;
        let lo = per_channel(&|c| -norm.mean[c] / norm.std[c])?;
        let hi = per_channel(&|c| (1.0 - norm.mean[c]) / norm.std[c])?;
        let x = images.to_dtype(DType::F32)?.detach();
        let lower = x.broadcast_sub(&eps)?.broadcast_maximum(&lo)?;
        let upper = x.broadcast_add(&eps)?.broadcast_minimum(&hi)?;
        let mut adv = if self.random_start {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let u: Vec<f32> = (0..x.elem_count())
                .map(|_| rng.random_range(-1.0f32..=1.0))
                .collect();
            let u = Tensor::from_vec(u, x.shape(), device)?;
            x.add(&u.broadcast_mul(&eps)?)?
                .maximum(&lower)?
                .minimum(&upper)?
        } else {
            x.clone()
        };
        for _ in 0..self.steps {
            let var = Var::from_tensor(&adv)?;
            let logits = model.forward_t(var.as_tensor(), false)?;
            let loss = candle_nn::loss::cross_entropy(&logits, labels)?;
            let grads = loss.backward()?;
            let grad = grads.get(var.as_tensor()).ok_or_else(|| {
                Error::Config("the model's output does not depend on its input".into())
            })?;
            adv = adv
                .add(&grad.sign()?.broadcast_mul(&step)?)?
                .maximum(&lower)?
                .minimum(&upper)?
                .detach();
        }
        Ok(adv)
    }
}

/// Adversarial training's loss: each batch is replaced by its PGD version (crafted in eval mode,
/// see [`Pgd::perturb`]) and the cross-entropy on it is taken in train mode. Every call draws a
/// new random start from the seed and a call counter, so a run is repeatable.
pub struct AdversarialCrossEntropy {
    pgd: Pgd,
    normalization: Normalization,
    seed: u64,
    calls: AtomicU64,
}

impl AdversarialCrossEntropy {
    /// An objective attacking with `pgd` the images normalised with `normalization`.
    pub fn new(pgd: Pgd, normalization: Normalization, seed: u64) -> Self {
        Self {
            pgd,
            normalization,
            seed,
            calls: AtomicU64::new(0),
        }
    }
}

impl Objective for AdversarialCrossEntropy {
    fn loss(&self, model: &dyn Model, batch: &Batch) -> Result<StepLoss> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let seed = self.seed ^ call.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let adv = self.pgd.perturb(
            model,
            &batch.images,
            &batch.labels,
            &self.normalization,
            seed,
        )?;
        let logits = model.forward_t(&adv, true)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &batch.labels)?;
        let correct = correct_count(&logits, &batch.labels)?;
        Ok(StepLoss {
            loss,
            correct: Some(correct),
        })
    }

    fn id(&self) -> String {
        let p = &self.pgd;
        format!(
            "pgd-linf-eps{}-step{}-n{}{}",
            p.eps,
            p.step,
            p.steps,
            if p.random_start { "-rand" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use harness_core::{Arch, ModelSpec, ParamStore};

    fn model() -> (Box<dyn Model>, ParamStore) {
        let params = ParamStore::new(3, &Device::Cpu);
        let m = harness_core::zoo::build(&ModelSpec::new(Arch::Resnet20, 4), &params).unwrap();
        (m, params)
    }

    fn batch(n: usize, seed: u64) -> Batch {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let norm = Normalization::SYNTHETIC;
        let px: Vec<f32> = (0..n * 3 * 8 * 8)
            .map(|i| {
                let c = (i / 64) % 3;
                (rng.random_range(0.0f32..=1.0) - norm.mean[c]) / norm.std[c]
            })
            .collect();
        Batch {
            images: Tensor::from_vec(px, (n, 3, 8, 8), &Device::Cpu).unwrap(),
            labels: Tensor::from_vec((0..n as u32).map(|i| i % 4).collect(), n, &Device::Cpu)
                .unwrap(),
            indices: (0..n).rev().collect(),
        }
    }

    #[test]
    fn soft_cross_entropy_matches_hand_computation_and_gathers_by_index() {
        let (m, _) = model();
        let b = batch(3, 0);
        // Targets for set positions 0..3; the batch holds positions 2, 1, 0.
        let t = Tensor::new(
            &[
                [1.0f32, 0.0, 0.0, 0.0],
                [0.25, 0.25, 0.25, 0.25],
                [0.1, 0.2, 0.3, 0.4],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let loss = SoftCrossEntropy::new(t.clone())
            .unwrap()
            .loss(m.as_ref(), &b)
            .unwrap()
            .loss
            .to_scalar::<f32>()
            .unwrap();
        let logits = m.forward_t(&b.images, true).unwrap();
        let lp = candle_nn::ops::log_softmax(&logits, 1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let rows = t.to_vec2::<f32>().unwrap();
        let expected: f32 = (0..3)
            .map(|j| {
                let target = &rows[b.indices[j]];
                -target.iter().zip(&lp[j]).map(|(a, b)| a * b).sum::<f32>()
            })
            .sum::<f32>()
            / 3.0;
        // Two train-mode passes give the same logits (batch statistics of the same batch).
        assert!((loss - expected).abs() < 1e-4, "{loss} vs {expected}");
        let bad = Batch {
            indices: vec![7, 0, 1],
            ..b
        };
        assert!(
            SoftCrossEntropy::new(t)
                .unwrap()
                .loss(m.as_ref(), &bad)
                .is_err()
        );
    }

    #[test]
    fn pgd_stays_in_the_ball_and_the_pixel_range() {
        let (m, _) = model();
        let b = batch(4, 1);
        let norm = Normalization::SYNTHETIC;
        let pgd = Pgd {
            eps: 8.0 / 255.0,
            step: 2.0 / 255.0,
            steps: 3,
            random_start: true,
        };
        let adv = pgd
            .perturb(m.as_ref(), &b.images, &b.labels, &norm, 9)
            .unwrap();
        let to_pixels = |t: &Tensor| -> Vec<f32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, v)| v * norm.std[(i / 64) % 3] + norm.mean[(i / 64) % 3])
                .collect()
        };
        let (clean, moved) = (to_pixels(&b.images), to_pixels(&adv));
        let max_delta = clean
            .iter()
            .zip(&moved)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max_delta <= 8.0 / 255.0 + 1e-5, "{max_delta}");
        assert!(max_delta > 1.0 / 255.0, "PGD moved nothing ({max_delta})");
        assert!(moved.iter().all(|v| (-1e-5..=1.0 + 1e-5).contains(v)));
        let again = pgd
            .perturb(m.as_ref(), &b.images, &b.labels, &norm, 9)
            .unwrap();
        assert_eq!(to_pixels(&again), moved, "seeded");
        assert!(
            Pgd { eps: 2.0, ..pgd }.validate().is_err() && pgd.validate().is_ok(),
            "eps is a pixel fraction"
        );
    }
}
