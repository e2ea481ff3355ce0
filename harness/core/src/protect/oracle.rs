//! The black-box API an extraction attacker queries: the owner's deployed model behind an output
//! mode and optional output perturbations, with a ledger that counts every image queried.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{D, DType, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use super::Deployed;
use crate::{Error, Result};

/// What the API returns per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "k")]
pub enum OutputMode {
    /// The full probability vector.
    Soft,
    /// The k largest probabilities, the rest zero.
    TopK(usize),
    /// Only the predicted label (one-hot).
    Label,
}

/// A prediction-perturbation defence applied to the probabilities before they leave the API
/// (the baselines of ART's `postprocessor` module).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Perturbation {
    /// Reverse sigmoid (Lee et al. 2019): `p - beta * (sigmoid(-gamma * ln((1 - p) / p)) - 0.5)`,
    /// clipped to 0..1 and renormalised; keeps the top-1 label in most cases while poisoning the
    /// probabilities an extractor learns from.
    ReverseSigmoid {
        /// Perturbation magnitude.
        beta: f64,
        /// Sigmoid slope.
        gamma: f64,
    },
    /// Probabilities rounded to `decimals` decimal places.
    Round {
        /// Decimal places kept.
        decimals: u32,
    },
    /// Gaussian noise of standard deviation `std` added to the probabilities, clipped to 0..1 and
    /// renormalised; seeded, and different for every query batch.
    GaussianNoise {
        /// Noise standard deviation.
        std: f64,
        /// Seed of the noise stream.
        seed: u64,
    },
}

impl Perturbation {
    /// Applies the perturbation to probabilities `p` (N x K, rows summing to 1); `batch` numbers
    /// the query batch so noise differs between batches but repeats across runs.
    pub fn apply(&self, p: &Tensor, batch: u64) -> Result<Tensor> {
        match *self {
            Perturbation::ReverseSigmoid { beta, gamma } => {
                let eps = 1e-7;
                let pc = p.clamp(eps, 1.0 - eps)?;
                let log_odds = ((pc.affine(-1.0, 1.0)? / &pc)?).log()?;
                let sig = candle_nn::ops::sigmoid(&(log_odds * -gamma)?)?;
                let r = ((sig - 0.5)? * beta)?;
                renormalise(&(p - r)?.clamp(0.0, 1.0)?)
            }
            Perturbation::Round { decimals } => {
                let scale = 10f64.powi(decimals as i32);
                Ok(((p * scale)?.round()? / scale)?)
            }
            Perturbation::GaussianNoise { std, seed } => {
                let normal = Normal::new(0.0f32, std as f32)
                    .map_err(|e| Error::Config(format!("gaussian noise std {std}: {e}")))?;
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ batch.rotate_left(32));
                let noise: Vec<f32> = (0..p.elem_count())
                    .map(|_| normal.sample(&mut rng))
                    .collect();
                let noise = Tensor::from_vec(noise, p.shape(), p.device())?;
                renormalise(&(p + noise)?.clamp(0.0, 1.0)?)
            }
        }
    }
}

/// Divides each row by its sum; an all-zero row becomes uniform.
fn renormalise(p: &Tensor) -> Result<Tensor> {
    let k = p.dim(D::Minus1)? as f64;
    let p = (p + 1e-12 / k)?;
    Ok(p.broadcast_div(&p.sum_keepdim(D::Minus1)?)?)
}

/// Counts images queried; shared by every handle of one oracle so that no query goes unbilled.
#[derive(Debug, Default)]
pub struct QueryLedger {
    images: AtomicU64,
    batches: AtomicU64,
}

impl QueryLedger {
    /// Images queried so far.
    pub fn images(&self) -> u64 {
        self.images.load(Ordering::SeqCst)
    }

    fn charge(&self, n: u64, limit: Option<u64>) -> Result<u64> {
        let before = self.images.fetch_add(n, Ordering::SeqCst);
        if let Some(limit) = limit
            && before + n > limit
        {
            self.images.fetch_sub(n, Ordering::SeqCst);
            return Err(Error::BudgetExhausted {
                used: before,
                limit,
                asked: n,
            });
        }
        Ok(self.batches.fetch_add(1, Ordering::SeqCst))
    }
}

/// The black-box API: owner's model, output mode, perturbations, ledger and optional budget.
#[derive(Clone)]
pub struct Oracle {
    model: Arc<dyn Deployed>,
    mode: OutputMode,
    perturbations: Vec<Perturbation>,
    ledger: Arc<QueryLedger>,
    limit: Option<u64>,
}

impl Oracle {
    /// An oracle over `model` answering in `mode` after `perturbations`, in order.
    pub fn new(
        model: Arc<dyn Deployed>,
        mode: OutputMode,
        perturbations: Vec<Perturbation>,
    ) -> Self {
        Self {
            model,
            mode,
            perturbations,
            ledger: Arc::new(QueryLedger::default()),
            limit: None,
        }
    }

    /// The same oracle (same ledger) refusing queries beyond `limit` images in total.
    pub fn with_limit(mut self, limit: Option<u64>) -> Self {
        self.limit = limit;
        self
    }

    /// How answers are formatted.
    pub fn mode(&self) -> OutputMode {
        self.mode
    }

    /// The ledger of this oracle.
    pub fn ledger(&self) -> &QueryLedger {
        &self.ledger
    }

    /// Answers a batch of normalised images: N x classes, rows are probability vectors (one-hot
    /// in `Label` mode). Every image is charged to the ledger before the model runs.
    pub fn query(&self, images: &Tensor) -> Result<Tensor> {
        let n = images.dim(0)? as u64;
        let batch = self.ledger.charge(n, self.limit)?;
        let logits = self.model.logits(images)?.to_dtype(DType::F32)?;
        let mut p = candle_nn::ops::softmax_last_dim(&logits)?;
        for pert in &self.perturbations {
            p = pert.apply(&p, batch)?;
        }
        match self.mode {
            OutputMode::Soft => Ok(p),
            OutputMode::Label => one_hot_argmax(&p),
            OutputMode::TopK(k) => keep_top_k(&p, k),
        }
    }
}

fn one_hot_argmax(p: &Tensor) -> Result<Tensor> {
    let k = p.dim(D::Minus1)?;
    let idx = p.argmax_keepdim(D::Minus1)?;
    let classes = Tensor::arange(0u32, k as u32, p.device())?.unsqueeze(0)?;
    Ok(classes.broadcast_eq(&idx)?.to_dtype(DType::F32)?)
}

fn keep_top_k(p: &Tensor, k: usize) -> Result<Tensor> {
    let classes = p.dim(D::Minus1)?;
    if k == 0 || k >= classes {
        return Ok(p.clone());
    }
    let sorted = p.sort_last_dim(false)?.0;
    let kth = sorted.narrow(D::Minus1, k - 1, 1)?;
    let mask = p.broadcast_ge(&kth)?.to_dtype(DType::F32)?;
    Ok((p * mask)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    struct Fixed(Tensor);
    impl Deployed for Fixed {
        fn logits(&self, images: &Tensor) -> Result<Tensor> {
            Ok(self.0.narrow(0, 0, images.dim(0)?)?)
        }
        fn model_bytes(&self) -> usize {
            0
        }
    }

    fn oracle(mode: OutputMode, perturbations: Vec<Perturbation>) -> Oracle {
        let logits = Tensor::new(&[[2.0f32, 1.0, 0.0], [0.0, 0.5, 3.0]], &Device::Cpu).unwrap();
        Oracle::new(Arc::new(Fixed(logits)), mode, perturbations)
    }

    fn images(n: usize) -> Tensor {
        Tensor::zeros((n, 3, 2, 2), DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn ledger_counts_every_image_and_enforces_the_limit() {
        let o = oracle(OutputMode::Soft, vec![]).with_limit(Some(3));
        o.query(&images(2)).unwrap();
        let copy = o.clone();
        assert_eq!(copy.ledger().images(), 2, "clones share the ledger");
        assert!(copy.query(&images(2)).is_err(), "4 > 3 images");
        assert_eq!(o.ledger().images(), 2, "a refused query is not charged");
        o.query(&images(1)).unwrap();
        assert_eq!(o.ledger().images(), 3);
    }

    #[test]
    fn label_mode_returns_one_hot_of_the_argmax() {
        let a = oracle(OutputMode::Label, vec![]).query(&images(2)).unwrap();
        assert_eq!(
            a.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 0.0, 0.0], vec![0.0, 0.0, 1.0]]
        );
    }

    #[test]
    fn top_k_keeps_the_largest() {
        let a = oracle(OutputMode::TopK(2), vec![])
            .query(&images(2))
            .unwrap();
        let rows = a.to_vec2::<f32>().unwrap();
        assert_eq!(rows[0][2], 0.0);
        assert!(rows[0][0] > 0.0 && rows[0][1] > 0.0);
        assert_eq!(rows[1][0], 0.0);
    }

    #[test]
    fn reverse_sigmoid_keeps_a_distribution_and_changes_it() {
        let soft = oracle(OutputMode::Soft, vec![]).query(&images(2)).unwrap();
        let rs = oracle(
            OutputMode::Soft,
            vec![Perturbation::ReverseSigmoid {
                beta: 1.0,
                gamma: 0.1,
            }],
        )
        .query(&images(2))
        .unwrap();
        for row in rs.to_vec2::<f32>().unwrap() {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
            assert!(row.iter().all(|v| (0.0..=1.0).contains(v)));
        }
        let diff = (soft - &rs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff > 0.01,
            "the perturbation must change the answer ({diff})"
        );
    }

    #[test]
    fn rounding_and_noise_behave() {
        let r = oracle(OutputMode::Soft, vec![Perturbation::Round { decimals: 1 }])
            .query(&images(2))
            .unwrap();
        for v in r.flatten_all().unwrap().to_vec1::<f32>().unwrap() {
            assert!(((v * 10.0).round() - v * 10.0).abs() < 1e-5, "{v}");
        }
        let noisy = |seed| {
            oracle(
                OutputMode::Soft,
                vec![Perturbation::GaussianNoise { std: 0.05, seed }],
            )
            .query(&images(2))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
        };
        assert_eq!(noisy(1), noisy(1), "seeded noise repeats");
        assert_ne!(noisy(1), noisy(2));
    }
}
