//! The "one file plus one registry line" promise, kept by a test: a toy protection written
//! against the public contract only (`harness_core::protect`), registered with one line, runs
//! through the same matrix as the built-in defences and gets the same records.
//!
//! The toy, `class-shuffle`: the deployed file holds the classifier's output rows in a secret
//! order (the owner's runtime puts them back), so a thief's copy answers with the wrong class
//! names until it is fine-tuned. Not a method from the literature: a fixture.

use std::sync::Arc;

use candle_core::Tensor;
use harness_core::protect::{
    Defence, DefenceContext, Measure, PlainModel, Protected, RegistryEntry, StolenArtifact, Victim,
    settings,
};
use harness_core::seeded::{derive_seed, sample_indices};
use harness_core::{Error, Result};

/// Settings: none.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassShuffleConfig {}

/// The toy defence.
pub struct ClassShuffle;

/// Builds [`ClassShuffle`].
pub fn build(table: &toml::Table) -> Result<Box<dyn Defence>> {
    let _: ClassShuffleConfig = settings(table)?;
    Ok(Box::new(ClassShuffle))
}

/// Its registry entry.
pub const ENTRY: RegistryEntry<dyn Defence> = RegistryEntry {
    id: "class-shuffle",
    summary: "toy: the deployed classifier's output rows in a secret order",
    build,
};

impl Defence for ClassShuffle {
    fn protect(&self, ctx: &DefenceContext<'_>, victim: &Victim) -> Result<Protected> {
        let spec = victim.model.spec.clone();
        let classes = spec.num_classes;
        // A secret permutation of the classes, drawn from the cell's seed.
        let order = sample_indices(classes, classes, derive_seed(ctx.seed, "class-shuffle"));
        let params = victim.model.params.deep_copy()?;
        let model = victim.model.model.as_ref();
        let head = model.stages().last().map(|s| s.params.clone());
        let mut shuffled = 0;
        for name in head.unwrap_or_default() {
            let Some(var) = params.get(&name) else {
                continue;
            };
            if var.dims().first() == Some(&classes) {
                let idx = Tensor::from_vec(
                    order.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                    classes,
                    var.device(),
                )?;
                var.set(&var.as_tensor().index_select(&idx, 0)?)?;
                shuffled += 1;
            }
        }
        if shuffled == 0 {
            return Err(Error::Config(format!(
                "class-shuffle found no classifier rows in `{}`",
                spec.arch
            )));
        }
        let stolen = PlainModel::build(spec.clone(), params)?;
        Ok(Protected {
            owner: Arc::new(victim.model.clone()),
            levels: Vec::new(),
            stolen: Some(StolenArtifact::plain(spec, stolen.params)),
            measures: vec![Measure::lower("shuffled-tensors", shuffled as f64)],
            verifier: None,
            test_set_check: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    const MATRIX: &str = r#"
name = "toy"
[axes]
datasets = ["synthetic:8"]
models = ["resnet20"]
defences = ["none", "class-shuffle"]
attacks = ["ftll"]
seeds = [0]
[victim]
epochs = 2
batch_size = 32
lr = 0.05
[budget]
epochs = 1
[attacks.ftll]
use = "fine-tune"
variant = "ftll"
"#;

    #[test]
    fn a_toy_protection_in_one_file_runs_through_the_matrix() {
        let dir = tempfile::tempdir().expect("temp dir");
        let matrix = dir.path().join("m.toml");
        std::fs::write(&matrix, MATRIX).expect("write matrix");
        let results = dir.path().join("results");
        let cli = Cli::try_parse_from([
            "harness".as_ref(),
            "run".as_ref(),
            "--matrix".as_ref(),
            matrix.as_os_str(),
            "--results".as_ref(),
            results.as_os_str(),
            "--quiet".as_ref(),
        ] as [&std::ffi::OsStr; 7])
        .expect("arguments parse");
        let Command::Run(args) = cli.command else {
            panic!("not a run command");
        };
        // The one registry line.
        let mut defences = defences::registry();
        defences.add(super::ENTRY);
        crate::commands::run::run_with(args, &defences, &attacks::registry()).expect("the run");

        let run = std::fs::read_dir(&results)
            .expect("results folder")
            .map(|e| e.expect("entry").path())
            .find(|p| p.join("records.jsonl").exists())
            .expect("a run folder");
        let jsonl = std::fs::read_to_string(run.join("records.jsonl")).expect("records");
        let rows: Vec<serde_json::Value> = jsonl
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON record"))
            .collect();
        let value = |defence: &str, attack: &str, metric: &str| {
            rows.iter()
                .find(|r| r["defence"] == defence && r["attack"] == attack && r["metric"] == metric)
                .and_then(|r| r["value"].as_f64())
        };
        assert!(rows.iter().all(|r| r["status"] == "ok"), "{jsonl}");
        // Its own measure (ResNet-20's head: fc.weight and fc.bias), the harness's owner metrics,
        // and a generic attack on what it lets a thief take.
        assert_eq!(value("class-shuffle", "-", "shuffled-tensors"), Some(2.0));
        assert_eq!(
            value("class-shuffle", "-", "owner-accuracy"),
            value("none", "-", "owner-accuracy"),
            "the owner's runtime restores the order"
        );
        assert!(
            value("class-shuffle", "ftll", "attacker-accuracy").is_some(),
            "{jsonl}"
        );
    }
}
