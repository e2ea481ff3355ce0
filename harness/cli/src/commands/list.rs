//! `harness list`: the datasets and models this build knows.

use harness_core::{Arch, ModelSpec, ParamStore};
use serde_json::json;
use tabled::{Table, Tabled, settings::Style};

use super::setup::print_json;
use crate::cli::ListArgs;

#[derive(Tabled)]
struct DatasetRow {
    id: &'static str,
    classes: String,
    shape: String,
    description: &'static str,
}

#[derive(Tabled)]
struct ComponentRow {
    id: &'static str,
    summary: &'static str,
}

#[derive(Tabled)]
struct ModelRow {
    id: &'static str,
    #[tabled(rename = "parameters (10 classes)")]
    parameters: String,
    description: &'static str,
}

/// Runs the command.
pub fn run(args: ListArgs) -> anyhow::Result<()> {
    let datasets: Vec<DatasetRow> = datasets::catalog::builtin()
        .into_iter()
        .map(|d| DatasetRow {
            id: d.id,
            classes: if d.num_classes == 0 {
                "from folders".into()
            } else {
                d.num_classes.to_string()
            },
            shape: d
                .image_shape
                .map(|(c, h, w)| format!("{c}x{h}x{w}"))
                .unwrap_or_else(|| "from files".into()),
            description: d.description,
        })
        .collect();
    let mut models = Vec::new();
    for &arch in Arch::all() {
        let params = ParamStore::new(0, &candle_core::Device::Cpu);
        let spec = ModelSpec::new(arch, 10);
        harness_core::zoo::build(&spec, &params)?;
        models.push(ModelRow {
            id: arch.id(),
            parameters: params.num_parameters().to_string(),
            description: arch.description(),
        });
    }
    let defence_registry = defences::registry();
    let mut attack_registry = harness_core::protect::Registry::new("attack");
    attacks::register(&mut attack_registry);
    let components = |entries: Vec<(&'static str, &'static str)>| -> Vec<ComponentRow> {
        entries
            .into_iter()
            .map(|(id, summary)| ComponentRow { id, summary })
            .collect()
    };
    let defence_rows = components(
        defence_registry
            .entries()
            .iter()
            .map(|e| (e.id, e.summary))
            .collect(),
    );
    let attack_rows = components(
        attack_registry
            .entries()
            .iter()
            .map(|e| (e.id, e.summary))
            .collect(),
    );
    if args.json {
        return print_json(&json!({
            "defences": defence_rows.iter().map(|d| json!({"id": d.id, "summary": d.summary})).collect::<Vec<_>>(),
            "attacks": attack_rows.iter().map(|d| json!({"id": d.id, "summary": d.summary})).collect::<Vec<_>>(),
            "datasets": datasets.iter().map(|d| json!({"id": d.id, "classes": d.classes, "shape": d.shape, "description": d.description})).collect::<Vec<_>>(),
            "models": models.iter().map(|m| json!({"id": m.id, "parameters": m.parameters, "description": m.description})).collect::<Vec<_>>(),
        }));
    }
    println!(
        "Datasets (--dataset):\n{}\n",
        Table::new(&datasets).with(Style::rounded())
    );
    println!(
        "Models (--model):\n{}",
        Table::new(&models).with(Style::rounded())
    );
    println!("\nimage-folder:PATH reads PATH/{{train,test}}/<class>/*.jpg|png.");
    println!(
        "\nDefences (matrix axes.defences; add +reverse-sigmoid, +top1-label, +top-k:K, +round:D, +gaussian-noise:STD for output perturbations):\n{}",
        Table::new(&defence_rows).with(Style::rounded())
    );
    println!(
        "\nAttacks (matrix axes.attacks):\n{}",
        Table::new(&attack_rows).with(Style::rounded())
    );
    Ok(())
}
