//! `edgepro-guess`: the thief of an EdgePro-locked model guesses the password. What it knows
//! without the secret (the stolen model's `LockDisclosure`): which stages carry the lock hook, their sizes,
//! and the method's public parameters, so the number of authorised neurons per stage. It tries:
//!
//! - `tries` random guesses: per locked stage a uniformly random set of the right size;
//! - the smart guess: per stage the neurons with the highest mean activation on its own images
//!   (authorised neurons are drawn from the top of the owner's activation ranking);
//! - `roulette_tries` guesses drawn as the owner draws them (rank-weighted roulette from the top
//!   `pool_fraction`), but on the attacker's ranking of the locked model (the owner ranked the
//!   pretrained victim, which the thief does not have).
//!
//! Each guess is scored by accuracy on `eval_images` of the attacker's labelled images; the best
//! one is applied to the stolen weights and that is the attacker's model (no retraining).
//!
//! Choice: a guess multiplies the guessed neurons by `locking_value` (default 0, the paper's
//! default lambda) and leaves the others as they are (`scale` 1): the locking values and scale
//! are part of the secret, so the attacker assumes the published defaults.

use std::sync::Arc;

use harness_core::eval::evaluate;
use harness_core::protect::masked::factors;
use harness_core::protect::{
    Attack, AttackContext, Budget, Disclosure, DisclosureKind, Exposure, LockDisclosure, MaskHook,
    MaskedModel, Measure, PlainModel, RegistryEntry, Requirement, Stolen, check, settings,
};
use harness_core::seeded::{rank_roulette, sample_indices};
use harness_core::zoo::activations;
use harness_core::{Error, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use crate::common::stolen_weights;
use harness_core::seeded::derive_seed;

/// Settings of `edgepro-guess` (`[attacks.edgepro-guess]` in a matrix file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeProGuessConfig {
    /// Uniformly random guesses (20).
    pub tries: usize,
    /// Guesses drawn by the owner's roulette on the attacker's ranking (20).
    pub roulette_tries: usize,
    /// Attacker images each guess is scored on (500).
    pub eval_images: usize,
    /// Attacker images the neurons are ranked on (200, as the owner).
    pub rank_images: usize,
    /// Multiplier of guessed neurons (0, the paper's default locking value).
    pub locking_value: f64,
}

impl Default for EdgeProGuessConfig {
    fn default() -> Self {
        Self {
            tries: 20,
            roulette_tries: 20,
            eval_images: 500,
            rank_images: 200,
            locking_value: 0.0,
        }
    }
}

/// Password guessing against EdgePro.
#[derive(Debug)]
pub struct EdgeProGuess {
    config: EdgeProGuessConfig,
}

/// The registry entry of `edgepro-guess`: its id (declared here only), summary and constructor.
pub const ENTRY: RegistryEntry<dyn Attack> = RegistryEntry {
    id: "edgepro-guess",
    summary: "adaptive, edgepro only: guess the password (random and highest-activation neuron sets)",
    build,
};

/// Builds [`EdgeProGuess`] from its settings.
pub fn build(table: &toml::Table) -> Result<Box<dyn Attack>> {
    Ok(Box::new(EdgeProGuess::new(settings(table)?)?))
}

/// The guess-independent part of an attack on one stolen model: the locked stages as stage
/// indices of the model, with their sizes and the number of authorised neurons.
pub(crate) struct Target {
    pub(crate) model: PlainModel,
    pub(crate) info: LockDisclosure,
    /// (stage index, channels, authorised neurons) per locked stage.
    pub(crate) stages: Vec<(usize, usize, usize)>,
}

/// Reads the stolen weights and their EdgePro description.
pub(crate) fn target(exposure: &Exposure, attack: &str) -> Result<Target> {
    let stolen = stolen_weights(exposure, attack)?;
    let Disclosure::Edgepro(info) = &stolen.public else {
        return Err(Error::Unsupported(format!(
            "attack `{attack}` needs an EdgePro-locked model; the stolen model's public \
             description is `{}`",
            stolen.public.kind()
        )));
    };
    let info = info.clone();
    let model = stolen.rebuild()?;
    let mut stages = Vec::with_capacity(info.locked_stages.len());
    for s in &info.locked_stages {
        let i = model.model.find_stage(&s.name).ok_or_else(|| {
            Error::Config(format!(
                "the stolen `{}` has no stage `{}` (described as locked)",
                stolen.spec.arch, s.name
            ))
        })?;
        stages.push((i, s.channels, s.locked_neurons.min(s.channels)));
    }
    Ok(Target {
        model,
        info,
        stages,
    })
}

/// Mean activations of the stolen model's stages on `images` of the attacker's data.
pub(crate) fn attacker_ranking(
    ctx: &AttackContext<'_>,
    model: &PlainModel,
    images: usize,
    purpose: &str,
) -> Result<Vec<Vec<usize>>> {
    let idx = sample_indices(
        ctx.attacker_data.len(),
        images,
        derive_seed(ctx.seed, purpose),
    );
    let means = activations::mean_activations(
        model.model.as_ref(),
        ctx.attacker_data,
        &idx,
        Some(&ctx.normalization),
        256,
        ctx.device,
    )?;
    Ok(means.iter().map(|m| activations::rank(m)).collect())
}

impl EdgeProGuess {
    /// Checks the settings.
    pub fn new(config: EdgeProGuessConfig) -> Result<Self> {
        check("tries", config.tries, 0..)?;
        check("roulette_tries", config.roulette_tries, 0..)?;
        check("eval_images", config.eval_images, 1..)?;
        check("rank_images", config.rank_images, 1..)?;
        check("locking_value", config.locking_value, ..)?;
        Ok(Self { config })
    }

    /// Runs the attack (see the module docs); the model is the stolen weights with the best
    /// guessed hook.
    pub fn steal(
        &self,
        ctx: &AttackContext<'_>,
        exposure: &Exposure,
    ) -> Result<(MaskedModel, Vec<Measure>)> {
        let t = target(exposure, ENTRY.id)?;
        let stages = t.model.model.stages();
        let lambda = self.config.locking_value as f32;
        let hook_of = |guess: &[Vec<usize>]| -> Result<MaskHook> {
            let masks: Vec<(usize, Vec<f32>)> = t
                .stages
                .iter()
                .zip(guess)
                .map(|(&(i, c, _), neurons)| {
                    (i, factors(c, neurons, &vec![lambda; neurons.len()], 1.0))
                })
                .collect();
            MaskHook::new(stages, &masks, ctx.device)
        };
        let eval_set = ctx.attacker_data.select(&sample_indices(
            ctx.attacker_data.len(),
            self.config.eval_images,
            derive_seed(ctx.seed, "edgepro-guess/eval"),
        ));
        let score = |hook: &MaskHook| -> Result<f64> {
            let m = MaskedModel::new(t.model.clone(), hook.clone(), 0);
            Ok(evaluate(&m, &eval_set, Some(&ctx.normalization), 256, ctx.device)?.top1)
        };
        let mut best: Option<(f64, MaskHook)> = None;
        let mut consider = |guess: &[Vec<usize>]| -> Result<f64> {
            let hook = hook_of(guess)?;
            let acc = score(&hook)?;
            if best.as_ref().is_none_or(|(b, _)| acc > *b) {
                best = Some((acc, hook));
            }
            Ok(acc)
        };

        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(ctx.seed, "edgepro-guess/random"));
        let mut best_random = f64::NAN;
        for _ in 0..self.config.tries {
            let guess: Vec<Vec<usize>> = t
                .stages
                .iter()
                .map(|&(_, c, k)| rand::seq::index::sample(&mut rng, c, k).into_vec())
                .collect();
            best_random = best_random.max(consider(&guess)?);
        }

        let ranks = attacker_ranking(ctx, &t.model, self.config.rank_images, "edgepro-guess/rank")?;
        let top: Vec<Vec<usize>> = t
            .stages
            .iter()
            .map(|&(i, _, k)| ranks[i].iter().take(k).copied().collect())
            .collect();
        let top_acc = consider(&top)?;

        let mut best_roulette = f64::NAN;
        for _ in 0..self.config.roulette_tries {
            let mut guess = Vec::with_capacity(t.stages.len());
            for (&(i, c, k), stage) in t.stages.iter().zip(&t.info.locked_stages) {
                guess.push(
                    rank_roulette(&ranks[i], stage.pool.min(c), k, &mut rng)
                        .map_err(|e| Error::Config(format!("stage of {c} channels: {e}")))?,
                );
            }
            best_roulette = best_roulette.max(consider(&guess)?);
        }
        let no_password = evaluate(
            t.model.model.as_ref(),
            &eval_set,
            Some(&ctx.normalization),
            256,
            ctx.device,
        )?
        .top1;
        let (best_acc, hook) = best.ok_or_else(|| Error::Config("no guess was tried".into()))?;
        let guesses = self.config.tries + 1 + self.config.roulette_tries;
        // Scores on the attacker's own images; lower is better for the owner.
        let mut measures = vec![
            Measure::lower("guesses", guesses as f64),
            Measure::lower("best-guess-accuracy-attacker-data", best_acc),
            Measure::lower("top-activation-guess-accuracy-attacker-data", top_acc),
            Measure::lower("no-password-accuracy-attacker-data", no_password),
        ];
        if self.config.tries > 0 {
            measures.push(Measure::lower(
                "best-random-guess-accuracy-attacker-data",
                best_random,
            ));
        }
        if self.config.roulette_tries > 0 {
            measures.push(Measure::lower(
                "best-roulette-guess-accuracy-attacker-data",
                best_roulette,
            ));
        }
        Ok((MaskedModel::new(t.model, hook, 0), measures))
    }
}

impl Attack for EdgeProGuess {
    fn requires(&self) -> Requirement {
        Requirement::Weights
    }

    fn targets(&self) -> Option<DisclosureKind> {
        Some(DisclosureKind::Edgepro)
    }

    fn run(
        &self,
        ctx: &AttackContext<'_>,
        exposure: &Exposure,
        _budget: &Budget,
    ) -> Result<Stolen> {
        let (model, measures) = self.steal(ctx, exposure)?;
        Ok(Stolen {
            model: Arc::new(model),
            measures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert!(build(&toml::Table::new()).is_ok());
        let t: toml::Table =
            toml::from_str("tries = 3\nroulette_tries = 0").expect("the test\'s TOML parses");
        assert!(build(&t).is_ok());
        for bad in ["eval_images = 0", "locking_value = nan", "guesses = 3"] {
            let t: toml::Table = toml::from_str(bad).expect("the test\'s TOML parses");
            assert!(build(&t).is_err(), "{bad}");
        }
    }
}
