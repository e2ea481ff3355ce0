//! End-to-end tests through the `harness` binary, on small synthetic images and ResNet-20, so
//! that every test trains for real in a few seconds.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `harness` with a whitespace-separated argument line (paths here never hold spaces).
fn harness(args: &str, cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(args.split_whitespace())
        .env("HARNESS_CACHE", cache)
        .env_remove("HARNESS_DATA")
        .output()
        .expect("the harness binary runs")
}

fn last_json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().expect("some stdout");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {line}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const TRAIN: &str =
    "train --dataset synthetic:8 --model resnet20 --batch-size 32 --lr 0.05 --quiet";

#[test]
fn train_then_eval_reproduces_the_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("m.safetensors");
    let w = w.display();
    let out = harness(
        &format!("{TRAIN} --epochs 3 --seed 3 --out {w} --json"),
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let train = last_json(&out);
    for key in [
        "test_accuracy",
        "epochs",
        "train_images",
        "wall_seconds",
        "images_per_second",
        "seed",
    ] {
        assert!(train.get(key).is_some(), "missing {key} in {train}");
    }
    assert_eq!(train["epochs"], 3);
    assert_eq!(train["seed"], 3);
    assert_eq!(train["train_images"], 512);
    let acc = train["test_accuracy"].as_f64().unwrap();
    // Ten synthetic classes: chance is 0.1. The patterns are easy; a model that trained is far above.
    assert!(acc > 0.8, "synthetic accuracy {acc}");
    assert!(
        dir.path().join("m.json").exists(),
        "run card written beside the weights"
    );

    let out = harness(
        &format!("eval --dataset synthetic:8 --model resnet20 --weights {w} --json --quiet"),
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(last_json(&out)["test_accuracy"].as_f64().unwrap(), acc);
}

#[test]
fn same_seed_same_result_and_checkpoint_resume_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, seed: u64| {
        let w = dir.path().join(name);
        // --force: the resume below writes the same weights file again.
        let args = format!(
            "{TRAIN} --epochs 1 --train-limit 256 --seed {seed} --out {} --checkpoint {}.ckpt --json --force",
            w.display(),
            w.display()
        );
        let out = harness(&args, dir.path());
        assert!(out.status.success(), "{}", stderr(&out));
        last_json(&out)
    };
    let a = run("a.safetensors", 5);
    let b = run("b.safetensors", 5);
    assert_eq!(
        a["test_loss"], b["test_loss"],
        "same seed must give the same run"
    );
    let c = run("c.safetensors", 6);
    assert_ne!(
        a["test_loss"], c["test_loss"],
        "another seed must give another run"
    );
    // Re-running with a finished checkpoint resumes after the last epoch and trains nothing.
    let again = run("a.safetensors", 5);
    assert_eq!(again["resumed_from_epoch"], 1);
    assert_eq!(again["test_loss"], a["test_loss"]);
    // Every epoch names the build that ran it (version and the provenance's git commit).
    let build = a["history"][0]["build"].as_str().unwrap();
    let git = a["provenance"]["git"].as_str().unwrap();
    assert!(build.contains(git), "{build} should name {git}");
    // The whole run's training time survives the resume; this process's time is nil.
    assert_eq!(again["train_seconds"].as_f64(), Some(0.0));
    assert!(a["all_epochs_train_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(
        again["all_epochs_train_seconds"],
        a["all_epochs_train_seconds"]
    );
}

#[test]
fn unknown_model_is_a_usage_error_with_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let out = harness(
        "train --dataset synthetic --model resnet2 --out x.safetensors",
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("did you mean") && err.contains("resnet20"),
        "{err}"
    );
}

#[test]
fn unknown_dataset_is_a_usage_error_with_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let out = harness(
        "eval --dataset cifar-10 --model resnet20 --weights x.safetensors",
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("`cifar10`"), "{}", stderr(&out));
}

#[test]
fn missing_data_is_a_failure_that_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let args = format!(
        "train --dataset cifar10 --model resnet20 --data-dir {} --out x.safetensors",
        dir.path().display()
    );
    let out = harness(&args, dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("harness data fetch cifar10") && err.contains("--data-dir"),
        "{err}"
    );
}

#[test]
fn eval_with_weights_of_another_model_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("v.safetensors");
    let w = w.display();
    let out = harness(
        &format!("{TRAIN} --epochs 1 --train-limit 64 --test-limit 32 --out {w}"),
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = harness(
        &format!("eval --dataset synthetic:8 --model resnet56 --weights {w}"),
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    // ResNet-56 has blocks layer1.3 .. layer1.8 that a ResNet-20 file lacks.
    assert!(err.contains("missing tensor `layer1.3."), "{err}");
}

#[test]
fn bad_options_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        format!("{TRAIN} --epochs 0 --out x.safetensors"),
        format!("{TRAIN} --schedule cosin --out x.safetensors"),
        format!("{TRAIN} --train-limit 0 --out x.safetensors"),
        format!("{TRAIN} --device tpu --out x.safetensors"),
        "train --dataset synthetic:2 --model resnet20 --out x.safetensors".to_string(),
        "train --dataset synthetic --model resnet20 --width 0.5 --out x.safetensors".to_string(),
    ] {
        let out = harness(&args, dir.path());
        assert_eq!(out.status.code(), Some(2), "{args}: {}", stderr(&out));
        assert!(
            stderr(&out).starts_with("error: "),
            "{args}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn list_shows_datasets_and_models() {
    let dir = tempfile::tempdir().unwrap();
    let out = harness("list --json", dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let v = last_json(&out);
    let models: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for m in [
        "resnet20",
        "resnet56",
        "vgg11",
        "vgg16",
        "vgg19",
        "vgg-small",
        "mobilenet-v2",
        "dncnn",
    ] {
        assert!(models.contains(&m), "{m} missing from {models:?}");
    }
    let ids = |key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(ids("defences").contains(&"none".to_string()));
    for a in ["extraction", "fine-tune", "prune", "adv-train", "scratch"] {
        assert!(ids("attacks").contains(&a.to_string()), "{a}");
    }
    let r20 = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "resnet20")
        .unwrap();
    assert_eq!(r20["parameters"], "272474");
}
