//! `extraction`: black-box model stealing in the style of Knockoff Nets (Orekondy et al. 2019).
//! The attacker sends images of a transfer set to the owner's API, keeps the answers, and trains
//! a substitute from scratch to reproduce them: with the probability rows as soft targets, or
//! with their arg-max as hard labels. Every image sent is charged to the oracle's ledger, which
//! the harness reads; the attack never sends more than the query budget.
//!
//! [chosen] Which images: a seeded shuffle of the transfer set, cut at the budget (Knockoff's
//! "random" strategy; its adaptive strategy is not implemented). Each image is queried once,
//! unaugmented; substitute training then uses the victim's recipe, augmentation included, with
//! the answer of the clean image as the target of its augmented views.

use candle_core::{D, Tensor};
use datasets::ImageSet;
use harness_core::protect::{
    Attack, AttackContext, Budget, Exposure, Measure, PlainModel, RegistryEntry, Requirement,
    Stolen, above, check, check_opt, settings,
};
use harness_core::train::{CrossEntropy, Objective, train};
use harness_core::{Arch, Error, ModelSpec, ParamStore, Result};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use crate::StolenModel;
use crate::common::{options, recipe};
use crate::objectives::SoftCrossEntropy;
use harness_core::seeded::derive_seed;

/// What the substitute learns from the oracle's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Labels {
    /// Cross-entropy against the returned probability rows (Knockoff's default).
    Soft,
    /// Cross-entropy against the arg-max of each answer (what a label-only API gives anyway).
    Hard,
}

/// Settings of `extraction` (`[attacks.extraction]` in a matrix file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExtractionConfig {
    /// Substitute architecture, any zoo classifier id (default `resnet20`). Knockoff uses an
    /// architecture of the attacker's choosing; the harness's default is the smallest model.
    pub substitute: String,
    /// Width multiplier of the substitute (VGG and MobileNetV2 only; default 1.0).
    pub width: f64,
    /// `soft` (default) or `hard` labels.
    pub labels: Labels,
    /// Images per oracle call (default 256). Only the total is budgeted.
    pub query_batch: usize,
    /// Learning rate of substitute training; default: the victim's recipe (training from
    /// scratch, as the victim was).
    pub lr: Option<f64>,
}

impl Default for ExtractionConfig {
    fn default() -> Self {
        Self {
            substitute: "resnet20".into(),
            width: 1.0,
            labels: Labels::Soft,
            query_batch: 256,
            lr: None,
        }
    }
}

/// Knockoff-style extraction through the oracle.
#[derive(Debug)]
pub struct Extraction {
    config: ExtractionConfig,
    arch: Arch,
}

/// The registry entry of `extraction`: its id (declared here only), summary and constructor.
pub const ENTRY: RegistryEntry<dyn Attack> = RegistryEntry {
    id: "extraction",
    summary: "Knockoff-style extraction: query the oracle with transfer images, train a substitute",
    build,
};

/// Builds [`Extraction`] from its settings; an unknown substitute id answers with the closest.
pub fn build(table: &toml::Table) -> Result<Box<dyn Attack>> {
    Ok(Box::new(Extraction::new(settings(table)?)?))
}

impl Extraction {
    /// Checks the settings; an unknown substitute id answers with the closest.
    pub fn new(config: ExtractionConfig) -> Result<Self> {
        check("width", config.width, above(0.0))?;
        check("query_batch", config.query_batch, 1..)?;
        check_opt("lr", config.lr, above(0.0))?;
        let arch = Arch::parse(&config.substitute)?;
        if !arch.is_classifier() {
            return Err(Error::Config(format!(
                "substitute `{arch}` is not a classifier"
            )));
        }
        ModelSpec::new(arch, 1)
            .with_width(config.width)
            .validate()?;
        Ok(Extraction { config, arch })
    }

    /// Runs the attack (see the module docs) and returns the substitute.
    pub fn steal(
        &self,
        ctx: &AttackContext<'_>,
        exposure: &Exposure,
        budget: &Budget,
    ) -> Result<StolenModel> {
        let oracle = exposure.oracle.as_ref().ok_or_else(|| {
            Error::Unsupported(
                "attack `extraction` needs a query oracle, and none is exposed".into(),
            )
        })?;
        let transfer = ctx.transfer_data;
        let wanted = budget.queries.map_or(transfer.len(), |q| {
            transfer.len().min(usize::try_from(q).unwrap_or(usize::MAX))
        });
        if wanted == 0 {
            return Err(nothing_to_query(transfer.len(), budget.queries));
        }
        let mut order: Vec<usize> = (0..transfer.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(
            ctx.seed,
            "extraction/queries",
        )));
        order.truncate(wanted);

        let before = oracle.ledger().images();
        let mut answers = Vec::new();
        for chunk in order.chunks(self.config.query_batch) {
            let xs =
                datasets::batch::to_tensor(transfer, chunk, Some(&ctx.normalization), ctx.device)?;
            answers.push(oracle.query(&xs)?.to_device(ctx.device)?);
        }
        let answers = Tensor::cat(&answers, 0)?;
        let used = oracle.ledger().images() - before;
        let classes = answers.dim(D::Minus1)?;

        let queried = answered_set(transfer, &order, &answers, classes)?;
        let spec = ModelSpec::new(self.arch, classes)
            .with_in_channels(transfer.channels)
            .with_width(self.config.width);
        let params = ParamStore::new(derive_seed(ctx.seed, "extraction/init"), ctx.device);
        let substitute = PlainModel::build(spec, params)?;
        let lr = self.config.lr.unwrap_or(ctx.train.sgd.lr);
        let cfg = recipe(ctx, budget.epochs, lr, "extraction/train");
        let objective: Box<dyn Objective> = match self.config.labels {
            Labels::Soft => Box::new(SoftCrossEntropy::new(answers)?),
            Labels::Hard => Box::new(CrossEntropy),
        };
        train(
            substitute.model.as_ref(),
            &substitute.params,
            &queried,
            &cfg,
            objective.as_ref(),
            &options(ctx),
            ctx.device,
        )?;
        Ok(StolenModel {
            model: substitute,
            // Queries the thief had to spend: more is better for the owner.
            measures: vec![Measure::higher("queries-used", used as f64)],
        })
    }
}

impl Attack for Extraction {
    fn requires(&self) -> Requirement {
        Requirement::Oracle
    }

    fn run(&self, ctx: &AttackContext<'_>, exposure: &Exposure, budget: &Budget) -> Result<Stolen> {
        self.steal(ctx, exposure, budget).map(Into::into)
    }
}

/// The queried images in query order, labelled with the arg-max of their answers (row `i` of
/// `answers` belongs to image `i`, which is what [`SoftCrossEntropy`] relies on).
fn answered_set(
    transfer: &ImageSet,
    order: &[usize],
    answers: &Tensor,
    classes: usize,
) -> Result<ImageSet> {
    let chosen = transfer.select(order);
    let labels = answers.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let names = (0..classes).map(|c| format!("oracle-{c}")).collect();
    Ok(ImageSet::new(
        chosen.images,
        labels,
        (chosen.channels, chosen.height, chosen.width),
        names,
    )?)
}

/// The error of an extraction that may send no query: says which of the two limits is zero,
/// with the values as numbers.
fn nothing_to_query(transfer_images: usize, queries: Option<u64>) -> Error {
    let budget = match queries {
        Some(q) => format!("a budget of {q} queries"),
        None => "no query limit".to_string(),
    };
    Error::Config(format!(
        "extraction has nothing to query: {transfer_images} transfer images and {budget}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_query_prints_numbers_not_options() {
        let text = nothing_to_query(100, Some(0)).to_string();
        assert!(
            text.contains("100 transfer images and a budget of 0 queries"),
            "{text}"
        );
        assert!(!text.contains("Some("), "{text}");
        let text = nothing_to_query(0, None).to_string();
        assert!(
            text.contains("0 transfer images and no query limit"),
            "{text}"
        );
        assert!(!text.contains("None"), "{text}");
    }

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).expect("the test's TOML parses")
    }

    #[test]
    fn defaults_and_settings() {
        let c: ExtractionConfig = settings(&toml::Table::new()).expect("valid settings");
        assert_eq!(c, ExtractionConfig::default());
        assert_eq!(c.substitute, "resnet20");
        assert_eq!(c.labels, Labels::Soft);
        let c: ExtractionConfig = settings(&table(
            "labels = \"hard\"\nsubstitute = \"vgg11\"\nwidth = 0.5",
        ))
        .expect("valid settings");
        assert_eq!((c.labels, c.width), (Labels::Hard, 0.5));
    }

    #[test]
    fn bad_settings_are_rejected() {
        let err = |s: &str| {
            build(&table(s))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err("substitute = \"resnet21\"").contains("resnet20"));
        assert!(err("substitute = \"dncnn\"").contains("not a classifier"));
        assert!(err("substitute = \"resnet20\"\nwidth = 2.0").contains("width"));
        assert!(err("labels = \"fuzzy\"").contains("fuzzy"));
        assert!(err("query_batch = 0").contains("query_batch"));
        assert!(err("lr = -0.1").contains("lr"));
        assert!(err("queries = 5").contains("unknown field"));
        assert!(build(&toml::Table::new()).is_ok());
    }
}
