//! Every architecture runs forward (eval and train mode) with the right output shape, ResNet-20
//! learns with plain SGD, and the files for ci/torch/check_interop.py are written.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::Optimizer;
use common::input;
use harness_core::params::ParamStore;
use harness_core::zoo::{self, Arch, ModelSpec};
use harness_core::{Error, Result};

fn check_shapes(spec: &ModelSpec, batch: usize, side: usize) -> Result<()> {
    let store = ParamStore::new(0, &Device::Cpu);
    let model = zoo::build(spec, &store)?;
    assert_eq!(model.spec(), spec);
    let x = input(&[batch, spec.in_channels, side, side], 1, 1.0);
    let expected: Vec<usize> = if spec.arch.is_classifier() {
        vec![batch, spec.num_classes]
    } else {
        x.dims().to_vec()
    };
    for train in [false, true] {
        let y = model.forward_t(&x, train)?;
        assert_eq!(
            y.dims(),
            expected,
            "{spec:?} train={train} at {side}x{side}"
        );
        let finite = y.abs()?.max_all()?.to_scalar::<f32>()?.is_finite();
        assert!(finite, "{spec:?}: non-finite output");
    }
    Ok(())
}

#[test]
fn every_architecture_runs_at_32x32() -> Result<()> {
    for &arch in Arch::all() {
        let batch = if matches!(arch, Arch::Resnet56 | Arch::Vgg19 | Arch::MobilenetV2) {
            1
        } else {
            2
        };
        // MobileNetV2 at batch 1 would end on a 4x4 map: enough values per channel for
        // batch norm in train mode.
        check_shapes(&ModelSpec::new(arch, 10), batch, 32)?;
    }
    Ok(())
}

#[test]
fn cifar_networks_run_at_64x64_and_other_shapes() -> Result<()> {
    check_shapes(&ModelSpec::new(Arch::Resnet20, 200), 2, 64)?;
    check_shapes(&ModelSpec::new(Arch::Vgg11, 200).with_width(0.25), 2, 64)?;
    check_shapes(
        &ModelSpec::new(Arch::MobilenetV2, 7)
            .with_width(0.5)
            .with_in_channels(1),
        2,
        32,
    )?;
    check_shapes(&ModelSpec::new(Arch::Dncnn, 0).with_in_channels(1), 1, 20)?;
    check_shapes(&ModelSpec::new(Arch::Vgg16, 100).with_width(0.125), 2, 32)?;
    Ok(())
}

#[test]
fn bad_inputs_are_errors_not_panics() -> Result<()> {
    let store = ParamStore::new(0, &Device::Cpu);
    let model = zoo::build(&ModelSpec::new(Arch::VggSmall, 10), &store)?;
    assert!(
        model
            .forward_t(&input(&[1, 3, 64, 64], 0, 1.0), false)
            .is_err()
    );
    assert!(
        model
            .forward_t(&input(&[1, 1, 32, 32], 0, 1.0), false)
            .is_err()
    );
    let store = ParamStore::new(0, &Device::Cpu);
    let model = zoo::build(&ModelSpec::new(Arch::Resnet20, 10), &store)?;
    assert!(model.forward_t(&input(&[2, 3, 32], 0, 1.0), false).is_err());
    // One value per channel cannot be batch-normalised in train mode (PyTorch refuses too).
    assert!(
        model
            .forward_t(&input(&[1, 3, 4, 4], 0, 1.0), true)
            .is_err()
    );
    let err = zoo::build(
        &ModelSpec::new(Arch::Resnet20, 10).with_width(2.0),
        &ParamStore::new(0, &Device::Cpu),
    );
    assert!(matches!(err, Err(Error::Config(_))));
    Ok(())
}

#[test]
fn resnet20_learns_with_plain_sgd() -> Result<()> {
    let store = ParamStore::new(7, &Device::Cpu);
    let model = zoo::build(&ModelSpec::new(Arch::Resnet20, 10), &store)?;
    // 16x16 keeps the test quick (candle's CPU convolution backward is slow); ResNet-20 takes any
    // size (stage 3 runs at 4x4 here).
    let x = input(&[8, 3, 16, 16], 3, 1.0);
    let labels = Tensor::new(&[0u32, 1, 2, 3, 4, 5, 6, 7], &Device::Cpu)?;
    let trainable = store.trainable();
    let mut sgd = candle_nn::SGD::new(trainable.iter().map(|(_, v)| v.clone()).collect(), 0.05)?;
    let mut losses = Vec::new();
    for step in 0..20 {
        let loss = candle_nn::loss::cross_entropy(&model.forward_t(&x, true)?, &labels)?;
        losses.push(loss.to_scalar::<f32>()?);
        let grads = loss.backward()?;
        if step == 0 {
            // Gradients reach every trainable tensor.
            for (name, var) in &trainable {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {name}"));
                let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
                assert!(
                    norm > 0.0 && norm.is_finite(),
                    "{name}: gradient norm {norm}"
                );
            }
        }
        sgd.step(&grads)?;
    }
    println!("losses: {losses:?}");
    let first = losses[0];
    let last = losses[losses.len() - 1];
    assert!(last < 0.5 * first, "loss went from {first} to {last}");
    let counter = store.get("bn1.num_batches_tracked").expect("counter");
    assert_eq!(counter.as_tensor().to_scalar::<i64>()?, 20);
    Ok(())
}

/// Writes `<arch>.safetensors` (our weights, with non-initial batch-norm state) and
/// `<arch>_io.safetensors` (input `x` and eval-mode `logits`) for `ci/torch/check_interop.py`,
/// under `target/tmp/interop`: ResNet-20 always, every architecture when PROTBENCH_INTEROP_ALL
/// is set.
#[test]
fn export_for_torch_interop() -> Result<()> {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let archs: Vec<Arch> = if std::env::var_os("PROTBENCH_INTEROP_ALL").is_some() {
        Arch::all().to_vec()
    } else {
        vec![Arch::Resnet20]
    };
    for arch in archs {
        let store = ParamStore::new(123, &Device::Cpu);
        let model = zoo::build(&ModelSpec::new(arch, 10), &store)?;
        for i in 0..3 {
            model.forward_t(&(input(&[4, 3, 32, 32], 100 + i, 1.0) + 0.3)?, true)?;
        }
        let x = input(&[2, 3, 32, 32], 99, 1.0);
        let y = model.forward_t(&x, false)?;
        store.save(&dir.join(format!("{}.safetensors", arch.id())))?;
        let io = std::collections::HashMap::from([
            ("x".to_string(), x),
            ("logits".to_string(), y.to_dtype(DType::F32)?),
        ]);
        let io_path = dir.join(format!("{}_io.safetensors", arch.id()));
        candle_core::safetensors::save(&io, &io_path)?;
        // What was written is what the Python side will read: the weights rebuild a model that
        // gives the stored logits bit for bit, batch-norm state included.
        let reloaded = ParamStore::new(7, &Device::Cpu);
        let again = zoo::build(&ModelSpec::new(arch, 10), &reloaded)?;
        reloaded.load(&dir.join(format!("{}.safetensors", arch.id())))?;
        let stored = candle_core::safetensors::load(&io_path, &Device::Cpu)?;
        let logits = stored["logits"].flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(
            logits,
            y.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?
        );
        let x2 = &stored["x"];
        let y2 = again.forward_t(x2, false)?.to_dtype(DType::F32)?;
        assert_eq!(y2.flatten_all()?.to_vec1::<f32>()?, logits, "{arch:?}");
    }
    println!("wrote {}", dir.display());
    Ok(())
}
