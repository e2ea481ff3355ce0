//! The training loop end to end on tiny synthetic data: it learns, it is deterministic, and an
//! interrupted run resumed from its checkpoint ends bit-identical to an uninterrupted one.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers panic on failure by design"
)]

use candle_core::Device;
use datasets::catalog::{DatasetId, LoadOptions, load};
use datasets::{ImageSet, Split};
use harness_core::train::{CrossEntropy, SgdConfig, TrainConfig, TrainOptions, train};
use harness_core::{Arch, ModelSpec, ParamStore};

fn data(split: Split) -> ImageSet {
    let dir = tempfile::tempdir().unwrap();
    let opts = LoadOptions {
        use_cache: false,
        ..LoadOptions::default()
    };
    load(&DatasetId::Synthetic(8), dir.path(), split, &opts).unwrap()
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 64,
        sgd: SgdConfig {
            lr: 0.05,
            ..SgdConfig::default()
        },
        normalization: Some(DatasetId::Synthetic(8).info().normalization),
        seed: 7,
        ..TrainConfig::default()
    }
}

fn weights(params: &ParamStore) -> Vec<u8> {
    params.to_safetensors_bytes().unwrap()
}

/// Trains a fresh ResNet-20 (weights seeded by 11) and returns its store and report.
fn run(
    set: &ImageSet,
    cfg: &TrainConfig,
    opts: &TrainOptions<'_>,
) -> (ParamStore, harness_core::train::TrainReport) {
    let params = ParamStore::new(11, &Device::Cpu);
    let model = harness_core::zoo::build(&ModelSpec::new(Arch::Resnet20, 10), &params).unwrap();
    let report = train(
        &*model,
        &params,
        set,
        cfg,
        &CrossEntropy,
        opts,
        &Device::Cpu,
    )
    .unwrap();
    (params, report)
}

#[test]
fn learns_and_is_deterministic() {
    let set = data(Split::Train).select(&(0..256).collect::<Vec<_>>());
    let cfg = config(2);
    let (a, ra) = run(&set, &cfg, &TrainOptions::default());
    let (b, _) = run(&set, &cfg, &TrainOptions::default());
    assert_eq!(
        weights(&a),
        weights(&b),
        "same seeds must give bit-identical weights"
    );
    assert_eq!(ra.history.len(), 2);
    assert!(
        ra.history[1].train_loss < ra.history[0].train_loss,
        "loss must fall: {:?}",
        ra.history
    );
    let other = TrainConfig {
        seed: 8,
        ..cfg.clone()
    };
    let (c, _) = run(&set, &other, &TrainOptions::default());
    assert_ne!(
        weights(&a),
        weights(&c),
        "another data seed must change the run"
    );
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let set = data(Split::Train).select(&(0..192).collect::<Vec<_>>());
    let cfg = config(2);
    let (full, full_report) = run(&set, &cfg, &TrainOptions::default());

    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("run.ckpt");
    let first = TrainOptions {
        checkpoint: Some(ckpt.clone()),
        stop_after_epochs: Some(1),
        ..TrainOptions::default()
    };
    let (_, r1) = run(&set, &cfg, &first);
    assert_eq!(r1.history.len(), 1);
    assert!(ckpt.exists());
    let rest = TrainOptions {
        checkpoint: Some(ckpt.clone()),
        ..TrainOptions::default()
    };
    let (resumed, r2) = run(&set, &cfg, &rest);
    assert_eq!(r2.resumed_from_epoch, 1);
    assert_eq!(r2.history.len(), 2);
    assert_eq!(r2.history[1].train_loss, full_report.history[1].train_loss);
    assert_eq!(
        weights(&resumed),
        weights(&full),
        "resume must continue the same run exactly"
    );

    // A checkpoint never resumes a different run.
    let other = TrainConfig {
        seed: 99,
        ..cfg.clone()
    };
    let params = ParamStore::new(11, &Device::Cpu);
    let model = harness_core::zoo::build(&ModelSpec::new(Arch::Resnet20, 10), &params).unwrap();
    let err = train(
        &*model,
        &params,
        &set,
        &other,
        &CrossEntropy,
        &rest,
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(err.to_string().contains("other settings"), "{err}");

    // A file that is not a checkpoint is a clear error, not a panic.
    std::fs::write(&ckpt, b"not a checkpoint").unwrap();
    let err = train(
        &*model,
        &params,
        &set,
        &cfg,
        &CrossEntropy,
        &rest,
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(err.to_string().contains("not a checkpoint"), "{err}");
}

#[test]
fn evaluation_after_training_beats_chance() {
    let train_set = data(Split::Train);
    let test_set = data(Split::Test);
    let cfg = config(3);
    let (params, _) = run(&train_set, &cfg, &TrainOptions::default());
    let model = harness_core::zoo::build(&ModelSpec::new(Arch::Resnet20, 10), &params).unwrap();
    let report = harness_core::eval::evaluate(
        &*model,
        &test_set,
        cfg.normalization.as_ref(),
        128,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(report.images, 256);
    assert!(report.top1 > 0.8, "{report:?}");
    assert!(report.top5 >= report.top1);
}
