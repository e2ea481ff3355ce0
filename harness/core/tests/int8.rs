//! Typed parameters and int8 weights: kinds recorded in the store, PyTorch's qint8 rounding,
//! int8 files (round trip, malformed files), partial stores, and the files
//! `ci/torch/load_int8.py` checks against PyTorch.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::input;
use harness_core::params::{
    ParamKind, ParamStore, QuantizedTensor, quantize_per_channel, quantize_per_tensor,
};
use harness_core::zoo::partial::{Missing, build_partial};
use harness_core::zoo::{self, Arch, Model, ModelSpec, Pass};
use harness_core::{Error, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// A ResNet-20 with non-initial batch-norm state.
fn resnet20(seed: u64) -> Result<(ParamStore, Box<dyn Model>)> {
    let store = ParamStore::new(seed, &Device::Cpu);
    let model = zoo::build(&ModelSpec::new(Arch::Resnet20, 10), &store)?;
    for i in 0..3 {
        model.forward_t(&(input(&[4, 3, 32, 32], 100 + i, 1.0) + 0.3)?, true)?;
    }
    Ok((store, model))
}

/// The convolution and linear weights (rank 2 and more) of a store.
fn layer_weights(store: &ParamStore) -> Vec<String> {
    store
        .names()
        .into_iter()
        .filter(|n| n.ends_with(".weight") && store.get(n).is_some_and(|v| v.rank() >= 2))
        .collect()
}

/// Quantises every convolution and linear weight per output channel; returns their names.
fn quantize_layers(store: &ParamStore) -> Result<Vec<String>> {
    let names = layer_weights(store);
    for name in &names {
        store.quantize(name, Some(0))?;
    }
    Ok(names)
}

#[test]
fn kinds_are_recorded_for_a_zoo_model_and_trainable_and_buffers_read_them() -> Result<()> {
    let (store, _) = resnet20(0)?;
    let buffers: Vec<String> = store
        .names()
        .into_iter()
        .filter(|n| harness_core::params::is_buffer(n))
        .collect();
    assert_eq!(store.names_of(ParamKind::Buffer), buffers);
    assert_eq!(
        store.names_of(ParamKind::Trainable).len() + buffers.len(),
        store.len()
    );
    assert_eq!(store.num_parameters(), 272_474);
    let quantized = quantize_layers(&store)?;
    assert_eq!(quantized.len(), 19 + 2 + 1, "19 convs, 2 shortcuts, fc");
    assert_eq!(store.names_of(ParamKind::Quantized), quantized);
    let trainable: Vec<String> = store.trainable().into_iter().map(|(n, _)| n).collect();
    assert!(trainable.iter().all(|n| !quantized.contains(n)));
    assert_eq!(trainable, store.names_of(ParamKind::Trainable));
    let listed: Vec<String> = store.buffers().into_iter().map(|(n, _)| n).collect();
    assert_eq!(listed, buffers);
    assert_eq!(
        store.num_parameters(),
        272_474,
        "int8 weights are still weights"
    );
    Ok(())
}

#[test]
fn quantisation_rounds_as_pytorch_on_a_hand_made_example() -> Result<()> {
    // Channel 0: max |w| = 127, scale 1 (ties at .5 go to the even integer). Channel 1: max
    // |w| = 63.5, scale 0.5 (w * 2 has the ties). Channel 2: all zeros, scale f32::EPSILON.
    let w = Tensor::new(
        &[
            [127.0f32, 0.5, 1.5, 2.5, -0.5, -2.5, 3.49, -126.5],
            [63.5, 0.25, 0.75, 1.25, -0.25, -63.5, -1.75, 10.0],
            [0.0; 8],
        ],
        &Device::Cpu,
    )?;
    let q = quantize_per_channel(&w, 0)?;
    assert_eq!(q.scale, vec![1.0, 0.5, f32::EPSILON]);
    assert_eq!(q.zero_point, vec![0, 0, 0]);
    assert_eq!(q.axis, Some(0));
    assert_eq!(q.shape, vec![3, 8]);
    #[rustfmt::skip]
    let expected: Vec<i8> = vec![
        127, 0, 2, 2, 0, -2, 3, -126,
        127, 0, 2, 2, 0, -127, -4, 20,
        0, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(q.values, expected);
    let deq = values(&q.dequantize()?)?;
    let want: Vec<f32> = expected
        .iter()
        .enumerate()
        .map(|(i, &v)| f32::from(v) * q.scale[i / 8])
        .collect();
    assert_eq!(deq, want);
    // Along axis 1: the columns are the channels.
    let qt = quantize_per_channel(&w.t()?.contiguous()?, 1)?;
    assert_eq!(qt.scale, q.scale);
    assert_eq!(values(&qt.dequantize()?.t()?)?, deq);
    // Per tensor: one scale, max |w| / 127 = 1.
    let p = quantize_per_tensor(&w)?;
    assert_eq!((p.scale.clone(), p.axis), (vec![1.0], None));
    assert_eq!(p.values[8..16], [64, 0, 1, 1, 0, -64, -2, 10]);
    // PyTorch multiplies by the f32 reciprocal of the scale: here w * (1 / scale) is 108.5 and
    // -58.500004 where w / scale is 108.50001 and -58.5, and torch.quantize_per_channel gives 108
    // and -59 (values found and checked with PyTorch 2.15).
    let near_ties = Tensor::new(
        &[
            [f32::from_bits(1_051_297_642), f32::from_bits(1_049_679_220)],
            [f32::from_bits(1_070_923_420), f32::from_bits(3_208_919_341)],
        ],
        &Device::Cpu,
    )?;
    assert_eq!(
        quantize_per_channel(&near_ties, 0)?.values,
        vec![127, 108, 127, -59]
    );
    Ok(())
}

#[test]
fn dequantised_weights_are_within_half_a_step() -> Result<()> {
    let (store, _) = resnet20(1)?;
    for name in layer_weights(&store) {
        let Some(var) = store.get(&name) else {
            panic!("no {name}")
        };
        let w = values(var.as_tensor())?;
        for q in [
            quantize_per_channel(var.as_tensor(), 0)?,
            quantize_per_tensor(var.as_tensor())?,
        ] {
            let deq = values(&q.dequantize()?)?;
            let per_channel = w.len() / q.channels();
            for (i, (a, b)) in w.iter().zip(&deq).enumerate() {
                let scale = q.scale[i / per_channel];
                // scale / 2, up to the rounding of the f32 reciprocal PyTorch multiplies by and
                // the one rounding of the dequantised product.
                let bound = scale / 2.0 * (1.0 + 1e-6) + b.abs() * f32::EPSILON;
                assert!(
                    (a - b).abs() <= bound,
                    "{name}[{i}]: {a} -> {b}, scale {scale}"
                );
            }
            // The largest weight of each channel maps to ±127: the range is used, not clipped.
            for c in 0..q.channels() {
                let chunk = &q.values[c * per_channel..(c + 1) * per_channel];
                assert_eq!(chunk.iter().map(|v| v.unsigned_abs()).max(), Some(127));
            }
        }
    }
    Ok(())
}

#[test]
fn an_int8_store_round_trips_through_safetensors() -> Result<()> {
    let (a, model_a) = resnet20(2)?;
    let quantized = quantize_layers(&a)?;
    // A per-channel tensor along another axis (the file keeps the axis; the scale's length alone
    // cannot tell for a 16 x 16 x 3 x 3 kernel), a per-tensor one, and state.
    let Some(q) = a.quantized("layer1.0.conv2.weight") else {
        panic!("not quantised")
    };
    let along_inputs = quantize_per_channel(&q.dequantize()?, 1)?;
    a.insert_quantized("layer1.0.conv2.weight", along_inputs.clone())?;
    let bias = a.get("fc.bias").map(|v| v.as_tensor().clone());
    let Some(bias) = bias else {
        panic!("no fc.bias")
    };
    a.insert_quantized("fc.bias", quantize_per_tensor(&bias)?)?;
    let state = Tensor::new(&[0.25f32, 0.5, 0.125], &Device::Cpu)?;
    a.insert("act.scale", &state, ParamKind::QuantState)?;
    let bytes = a.to_safetensors_bytes()?;

    let file = SafeTensors::deserialize(&bytes).map_err(|e| Error::Config(e.to_string()))?;
    let conv = file
        .tensor("conv1.weight")
        .map_err(|e| Error::Config(e.to_string()))?;
    assert_eq!(
        (conv.dtype(), conv.shape()),
        (Dtype::I8, &[16usize, 3, 3, 3][..])
    );
    let scale = file.tensor("conv1.weight.scale");
    let zero_point = file.tensor("conv1.weight.zero_point");
    assert!(scale.is_ok_and(|s| s.dtype() == Dtype::F32 && s.shape() == [16]));
    assert!(zero_point.is_ok_and(|z| z.dtype() == Dtype::I64 && z.shape() == [16]));
    let per_tensor = file.tensor("fc.bias.scale");
    assert!(per_tensor.is_ok_and(|s| s.shape().is_empty()));
    let act = file.tensor("act.scale");
    assert!(act.is_ok_and(|s| s.dtype() == Dtype::F32));
    let axis = file.tensor("layer1.0.conv2.weight.axis");
    assert!(axis.is_ok_and(|a| a.dtype() == Dtype::I64 && a.data() == 1i64.to_le_bytes()));
    assert!(
        file.tensor("conv1.weight.axis").is_err(),
        "axis 0 is the default"
    );

    // Into a store of the same model (with the same extra state): kinds, int8 values, scales and
    // bytes come back identical, and both models compute the same logits.
    let (b, model_b) = resnet20(9)?;
    b.insert(
        "act.scale",
        &Tensor::zeros(3, DType::F32, &Device::Cpu)?,
        ParamKind::QuantState,
    )?;
    assert!(b.to_safetensors_bytes()? != bytes);
    b.load_from_bytes(&bytes, Path::new("int8.safetensors"))?;
    assert!(
        b.to_safetensors_bytes()? == bytes,
        "not bit-identical after load"
    );
    for name in a.names() {
        assert_eq!(a.kind(&name), b.kind(&name), "{name}");
        assert_eq!(a.quantized(&name), b.quantized(&name), "{name}");
    }
    assert_eq!(b.names_of(ParamKind::Quantized).len(), quantized.len() + 1);
    assert_eq!(b.quantized("layer1.0.conv2.weight"), Some(along_inputs));
    assert_eq!(
        b.names_of(ParamKind::QuantState),
        vec!["act.scale".to_string()]
    );
    let x = input(&[2, 3, 32, 32], 5, 1.0);
    let ya = values(&model_a.forward_t(&x, false)?)?;
    assert_eq!(values(&model_b.forward_t(&x, false)?)?, ya);
    // A model built on the loaded store afterwards runs the same (dequantised) weights.
    let again = zoo::build(&ModelSpec::new(Arch::Resnet20, 10), &b);
    assert!(again.is_err(), "act.scale is no parameter of the model");
    b.retain(|_, kind| kind != ParamKind::QuantState);
    let again = zoo::build(&ModelSpec::new(Arch::Resnet20, 10), &b)?;
    assert_eq!(values(&again.forward_t(&x, false)?)?, ya);

    // An f32 file makes the int8 tensors f32 again, with the kinds their names give.
    let (f, _) = resnet20(3)?;
    b.load_from_bytes(&f.to_safetensors_bytes()?, Path::new("f32.safetensors"))?;
    assert!(b.names_of(ParamKind::Quantized).is_empty());
    assert_eq!(b.kind("conv1.weight"), Some(ParamKind::Trainable));
    assert!(b.to_safetensors_bytes()? == f.to_safetensors_bytes()?);
    Ok(())
}

/// `bytes` re-serialised with tensor `drop` left out and, if `retype` names one, that tensor's
/// int8 values written as f32.
fn edited(bytes: &[u8], drop: &str, retype: Option<&str>) -> Result<Vec<u8>> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| Error::Config(e.to_string()))?;
    let mut as_f32: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    let mut kept: Vec<(String, TensorView<'_>)> = Vec::new();
    for (name, view) in file.tensors() {
        if name == drop {
            continue;
        }
        if Some(name.as_str()) == retype {
            let data = view
                .data()
                .iter()
                .flat_map(|&b| f32::from(i8::from_le_bytes([b])).to_le_bytes())
                .collect();
            as_f32.push((name, data, view.shape().to_vec()));
        } else {
            kept.push((name, view));
        }
    }
    for (name, data, shape) in &as_f32 {
        let view = TensorView::new(Dtype::F32, shape.clone(), data)
            .map_err(|e| Error::Config(e.to_string()))?;
        kept.push((name.clone(), view));
    }
    safetensors::serialize(kept, None).map_err(|e| Error::Config(e.to_string()))
}

fn bad_file_message(store: &ParamStore, bytes: &[u8]) -> String {
    match store.load_from_bytes(bytes, Path::new("q.safetensors")) {
        Err(e @ Error::BadFile { .. }) => e.to_string(),
        other => panic!("expected a bad-file error, got {other:?}"),
    }
}

#[test]
fn an_orphan_scale_or_a_missing_scale_is_an_error_naming_the_tensor() -> Result<()> {
    let (a, _) = resnet20(4)?;
    quantize_layers(&a)?;
    let Some(fc) = a.quantized("fc.weight") else {
        panic!("not quantised")
    };
    a.insert_quantized("fc.weight", quantize_per_channel(&fc.dequantize()?, 1)?)?;
    let bytes = a.to_safetensors_bytes()?;
    let (b, _) = resnet20(5)?;
    let before = b.to_safetensors_bytes()?;

    let msg = bad_file_message(&b, &edited(&bytes, "fc.weight.scale", None)?);
    assert!(
        msg.contains("`fc.weight`") && msg.contains("`fc.weight.scale`"),
        "{msg}"
    );
    assert!(msg.contains("q.safetensors"), "{msg}");
    let msg = bad_file_message(
        &b,
        &edited(&bytes, "layer2.1.conv1.weight.zero_point", None)?,
    );
    assert!(msg.contains("`layer2.1.conv1.weight.zero_point`"), "{msg}");
    // The int8 tensor gone, its scale left behind.
    let msg = bad_file_message(&b, &edited(&bytes, "conv1.weight", None)?);
    assert!(
        msg.contains("`conv1.weight.scale`") && msg.contains("no `conv1.weight`"),
        "{msg}"
    );
    let msg = bad_file_message(&b, &edited(&bytes, "fc.weight", None)?);
    assert!(
        msg.contains("`fc.weight.axis`") && msg.contains("no `fc.weight`"),
        "{msg}"
    );
    // The tensor present as f32 with an int8 tensor's scale beside it.
    let msg = bad_file_message(&b, &edited(&bytes, "", Some("conv1.weight"))?);
    assert!(
        msg.contains("`conv1.weight.scale`") && msg.contains("F32"),
        "{msg}"
    );
    // A scale that is not positive.
    let mut corrupt = bytes.clone();
    let file = SafeTensors::deserialize(&bytes).map_err(|e| Error::Config(e.to_string()))?;
    let scale = file
        .tensor("fc.weight.scale")
        .map_err(|e| Error::Config(e.to_string()))?;
    let offset = scale.data().as_ptr() as usize - bytes.as_ptr() as usize;
    corrupt[offset..offset + 4].copy_from_slice(&(-1.0f32).to_le_bytes());
    let msg = bad_file_message(&b, &corrupt);
    assert!(
        msg.contains("`fc.weight`") && msg.contains("scale -1"),
        "{msg}"
    );
    // Nothing was loaded by the failed attempts; the intact file loads.
    assert!(b.to_safetensors_bytes()? == before);
    b.load_from_bytes(&bytes, Path::new("q.safetensors"))?;
    assert!(b.to_safetensors_bytes()? == bytes);
    Ok(())
}

#[test]
fn retain_makes_a_partial_store_that_a_partial_model_runs() -> Result<()> {
    let spec = ModelSpec::new(Arch::Resnet20, 10);
    let (full, model) = resnet20(6)?;
    let n = model.stages().len();
    let x = input(&[2, 3, 32, 32], 1, 1.0);
    let pass = Pass::new(false);
    let mid = model.forward_range(0..5, &x, &pass)?;
    let whole = values(&model.forward_t(&x, false)?)?;

    let back: Vec<usize> = (5..n).collect();
    let owned: Vec<String> = back
        .iter()
        .flat_map(|&i| model.stages()[i].params.iter().cloned())
        .collect();
    let part = full.deep_copy()?;
    part.retain(|name, _| owned.iter().any(|o| o == name));
    assert_eq!(part.len(), owned.len());
    assert!(part.len() < full.len());
    let host = build_partial(&spec, &part, &back, Missing::Error)?;
    assert_eq!(values(&host.forward_range(5..n, &mid, &pass)?)?, whole);
    assert!(host.forward_range(0..n, &x, &pass).is_err());
    // The original is untouched.
    assert_eq!(
        full.names().len(),
        model.stages().iter().map(|s| s.params.len()).sum::<usize>()
    );
    Ok(())
}

/// Writes the files `ci/torch/load_int8.py` checks, under `CARGO_TARGET_TMPDIR/int8`:
/// `resnet20_int8.safetensors` (every convolution and linear weight int8 per output channel),
/// `resnet20_f32.safetensors` (the same model before quantisation, so the script can check that
/// PyTorch's `quantize_per_channel` gives the same int8 values) and `resnet20_int8_io.safetensors`
/// (an input `x` and the eval-mode `logits` of the dequantised model).
#[test]
fn export_int8_for_torch() -> Result<()> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("int8");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let (store, model) = resnet20(123)?;
    let f32_copy = store.deep_copy()?;
    store.save(&dir.join("resnet20_f32.safetensors"))?;
    let quantized = quantize_layers(&store)?;
    let x = input(&[2, 3, 32, 32], 99, 1.0);
    // The model built before quantising now runs the dequantised weights.
    let y = model.forward_t(&x, false)?.to_dtype(DType::F32)?;
    let path = dir.join("resnet20_int8.safetensors");
    store.save(&path)?;
    let io = HashMap::from([
        ("x".to_string(), x.clone()),
        ("logits".to_string(), y.clone()),
    ]);
    let io_path = dir.join("resnet20_int8_io.safetensors");
    candle_core::safetensors::save(&io, &io_path)?;

    // The same logits from the f32 model with each weight replaced by its dequantised values.
    let manual = zoo::build(&ModelSpec::new(Arch::Resnet20, 10), &f32_copy)?;
    let plain = values(&manual.forward_t(&x, false)?)?;
    for name in &quantized {
        let (Some(q), Some(var)) = (store.quantized(name), f32_copy.get(name)) else {
            panic!("{name}")
        };
        var.set(&q.dequantize()?)?;
    }
    let logits = values(&y)?;
    assert_eq!(values(&manual.forward_t(&x, false)?)?, logits);
    assert_ne!(plain, logits, "quantisation changed nothing");
    // And from the file.
    let (reloaded, again) = resnet20(7)?;
    reloaded.load(&path)?;
    let stored = candle_core::safetensors::load(&io_path, &Device::Cpu)?;
    assert_eq!(values(&again.forward_t(&stored["x"], false)?)?, logits);
    println!("wrote {}", dir.display());
    Ok(())
}

#[test]
fn f32_stores_serialise_as_before() -> Result<()> {
    // What `safetensors.torch.save_file(state_dict, metadata={"format": "pt"})` writes: every
    // tensor under its name, f32 values and the i64 counters, nothing else.
    let (store, _) = resnet20(8)?;
    let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for name in store.names() {
        let Some(var) = store.get(&name) else {
            panic!("{name}")
        };
        let flat = var.as_tensor().flatten_all()?;
        let (dtype, bytes) = match var.dtype() {
            DType::I64 => (
                Dtype::I64,
                flat.to_vec1::<i64>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            _ => (
                Dtype::F32,
                flat.to_vec1::<f32>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
        };
        data.push((name, dtype, var.dims().to_vec(), bytes));
    }
    let mut views = Vec::new();
    for (name, dtype, shape, bytes) in &data {
        let view = TensorView::new(*dtype, shape.clone(), bytes)
            .map_err(|e| Error::Config(e.to_string()))?;
        views.push((name.clone(), view));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let expected =
        safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Config(e.to_string()))?;
    assert!(store.to_safetensors_bytes()? == expected);
    Ok(())
}

#[test]
fn a_hand_made_int8_tensor_is_checked() {
    let store = ParamStore::new(0, &Device::Cpu);
    let q = QuantizedTensor {
        values: vec![1, 2, 3],
        shape: vec![2, 2],
        scale: vec![1.0],
        zero_point: vec![0],
        axis: None,
    };
    match store.insert_quantized("w", q) {
        Err(e @ Error::Param { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("`w`") && msg.contains("3 int8 values"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Writes an int8 deployment (integer layers, batch norm folded, each layer's input
/// quantization) of a ResNet-20 with non-initial batch-norm state and observers calibrated on
/// random images, with an input and the logits the integer kernels give, for
/// `ci/torch/load_int8_deployment.py`.
#[test]
fn export_int8_deployment_for_torch() -> Result<()> {
    use harness_core::protect::{Deployed, PlainModel};
    use harness_core::quant::{FakeQuantModel, Int8Model, Qat};
    use std::sync::Arc;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("int8");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let (store, _) = resnet20(321)?;
    let spec = ModelSpec::new(Arch::Resnet20, 10);
    let plain = PlainModel::build(spec.clone(), store)?;
    let qat = Arc::new(Qat::new());
    for i in 0..3 {
        qat.observe(&plain, &(input(&[8, 3, 32, 32], 200 + i, 1.0) + 0.1)?)?;
    }
    let int8 = Int8Model::convert(&FakeQuantModel::new(plain, qat))?;
    let path = dir.join("resnet20_deployment.safetensors");
    int8.save(&path)?;
    let x = input(&[4, 3, 32, 32], 77, 1.0);
    let back = Int8Model::load(spec, &path)?;
    let logits = back.logits(&x)?;
    assert_eq!(values(&logits)?, values(&int8.logits(&x)?)?);
    let io = HashMap::from([("x".to_string(), x), ("logits".to_string(), logits)]);
    candle_core::safetensors::save(&io, dir.join("resnet20_deployment_io.safetensors"))?;
    println!("wrote {}", dir.display());
    Ok(())
}
