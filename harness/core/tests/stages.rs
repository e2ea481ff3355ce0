//! The staged-model contract: range execution, stage parameter ownership, layer hooks, exit
//! heads and early exit, and models built from partial stores.

mod common;

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use common::input;
use harness_core::params::ParamStore;
use harness_core::zoo::partial::{Missing, build_partial};
use harness_core::zoo::{self, Arch, ConvBn, Dense, LayerHook, Model, ModelSpec, Pass};
use harness_core::{Error, Result};

/// Every classifier of the zoo, small where the architecture has a width.
fn classifiers() -> Vec<ModelSpec> {
    Arch::all()
        .iter()
        .filter(|a| a.is_classifier())
        .map(|&a| ModelSpec::new(a, 10).with_width(if a.has_width() { 0.25 } else { 1.0 }))
        .collect()
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

#[test]
fn stages_0_to_k_then_k_to_n_equal_the_whole_pass_bit_for_bit() -> Result<()> {
    for spec in classifiers() {
        let params = ParamStore::new(5, &Device::Cpu);
        let model = zoo::build(&spec, &params)?;
        let x = input(&[2, 3, 32, 32], 7, 1.0);
        let whole = values(&model.forward_t(&x, false)?)?;
        let n = model.stages().len();
        let pass = Pass::new(false);
        for k in 0..=n {
            let mid = model.forward_range(0..k, &x, &pass)?;
            let out = model.forward_range(k..n, &mid, &pass)?;
            assert_eq!(values(&out)?, whole, "{} split at {k}", spec.arch);
        }
        assert!(model.forward_range(2..n + 1, &x, &pass).is_err());
    }
    Ok(())
}

#[test]
fn every_parameter_belongs_to_exactly_one_stage() -> Result<()> {
    let mut specs = classifiers();
    specs.push(ModelSpec::new(Arch::Dncnn, 0));
    specs.push(ModelSpec::new(Arch::Resnet20, 10).with_exits(["layer1.2", "layer2.2"]));
    for spec in specs {
        let params = ParamStore::new(0, &Device::Cpu);
        let model = zoo::build(&spec, &params)?;
        let mut owned: Vec<String> = model
            .stages()
            .iter()
            .flat_map(|s| s.params.iter().cloned())
            .collect();
        let count = owned.len();
        owned.sort();
        owned.dedup();
        assert_eq!(
            owned.len(),
            count,
            "{}: a parameter in two stages",
            spec.arch
        );
        assert_eq!(owned, params.names(), "{}", spec.arch);
    }
    Ok(())
}

/// Runs every layer the plain way and records the units it saw.
#[derive(Default)]
struct Recording {
    convs: Mutex<Vec<(String, bool)>>,
    linears: Mutex<Vec<String>>,
}

impl LayerHook for Recording {
    fn conv(&self, unit: &ConvBn, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if let Ok(mut seen) = self.convs.lock() {
            seen.push((unit.name.clone(), unit.bn.is_some()));
        }
        unit.forward_plain(xs, train)
    }

    fn linear(&self, unit: &Dense, xs: &Tensor) -> candle_core::Result<Tensor> {
        if let Ok(mut seen) = self.linears.lock() {
            seen.push(unit.name.clone());
        }
        unit.forward_plain(xs)
    }
}

/// Replaces every linear layer's output with zeros.
struct ZeroLinear;

impl LayerHook for ZeroLinear {
    fn linear(&self, unit: &Dense, xs: &Tensor) -> candle_core::Result<Tensor> {
        unit.forward_plain(xs)?.zeros_like()
    }
}

#[test]
fn layer_hooks_see_every_convolution_with_its_batch_norm_and_every_linear_layer() -> Result<()> {
    let mut specs = classifiers();
    specs.push(ModelSpec::new(Arch::Dncnn, 0));
    for spec in specs {
        let params = ParamStore::new(1, &Device::Cpu);
        let model = zoo::build(&spec, &params)?;
        let x = input(&[2, 3, 32, 32], 3, 1.0);
        let n = model.stages().len();
        let plain = values(&model.forward_t(&x, false)?)?;
        let hook = Recording::default();
        let pass = Pass::new(false).with_layer_hook(&hook);
        let hooked = values(&model.forward_range(0..n, &x, &pass)?)?;
        assert_eq!(hooked, plain, "{}: a pass-through layer hook", spec.arch);
        let convs = hook.convs.lock().map(|c| c.clone()).unwrap_or_default();
        let linears = hook.linears.lock().map(|c| c.clone()).unwrap_or_default();
        // Every weight of the store is a seen convolution's or linear layer's.
        let weights: Vec<String> = params
            .names()
            .into_iter()
            .filter(|n| n.ends_with(".weight") && params.get(n).is_some_and(|v| v.rank() > 1))
            .map(|n| n.trim_end_matches(".weight").to_string())
            .collect();
        let mut seen: Vec<String> = convs.iter().map(|(n, _)| n.clone()).collect();
        seen.extend(linears.iter().cloned());
        seen.sort();
        assert_eq!(seen, weights, "{}", spec.arch);
        // Every batch norm of the store follows a convolution the hook saw with it.
        let bns = params
            .names()
            .iter()
            .filter(|n| n.ends_with(".running_var"))
            .count();
        assert_eq!(
            convs.iter().filter(|(_, bn)| *bn).count(),
            bns,
            "{}",
            spec.arch
        );
        if spec.arch.is_classifier() {
            let zero = Pass::new(false).with_layer_hook(&ZeroLinear);
            let out = model.forward_range(0..n, &x, &zero)?;
            assert!(values(&out)?.iter().all(|v| *v == 0.0), "{}", spec.arch);
        }
    }
    Ok(())
}

#[test]
fn exit_heads_live_under_their_own_prefix_and_early_exit_stops_where_confident() -> Result<()> {
    let spec = ModelSpec::new(Arch::Resnet20, 10).with_exits(["layer1.1", "layer2.2"]);
    let params = ParamStore::new(2, &Device::Cpu);
    let model = zoo::build(&spec, &params)?;
    let heads: Vec<String> = params
        .names()
        .into_iter()
        .filter(|n| n.starts_with("exits."))
        .collect();
    assert_eq!(
        heads,
        [
            "exits.0.bias",
            "exits.0.weight",
            "exits.1.bias",
            "exits.1.weight"
        ]
    );
    assert_eq!(
        params.get("exits.0.weight").map(|v| v.dims().to_vec()),
        Some(vec![10, 16])
    );
    assert_eq!(model.exit_stages(), [2, 6]);
    let x = input(&[6, 3, 32, 32], 9, 1.0);
    let all = model.forward_exits(&x, &Pass::new(false))?;
    assert_eq!(all.len(), 3);
    assert_eq!(values(&all[2])?, values(&model.forward_t(&x, false)?)?);

    // Threshold 0: everyone stops at the first exit; above 1: nobody stops early.
    let first = model.forward_early_exit(&x, 0.0)?;
    assert_eq!(first.exits, vec![0; 6]);
    assert_eq!(values(&first.logits)?, values(&all[0])?);
    let none = model.forward_early_exit(&x, 1.0)?;
    assert_eq!(none.exits, vec![2; 6]);
    assert_eq!(values(&none.logits)?, values(&all[2])?);

    // A threshold between the rows' confidences: each row gets the logits of its own exit, in
    // input order.
    let conf = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(candle_nn::ops::softmax_last_dim(t)?.max(1)?.to_vec1()?)
    };
    let c0 = conf(&all[0])?;
    let c1 = conf(&all[1])?;
    let mut sorted = c0.clone();
    sorted.sort_by(f32::total_cmp);
    let q = (sorted[2] + sorted[3]) / 2.0;
    let mixed = model.forward_early_exit(&x, q)?;
    for r in 0..6 {
        let expected = if c0[r] >= q {
            0
        } else if c1[r] >= q {
            1
        } else {
            2
        };
        assert_eq!(mixed.exits[r], expected, "row {r}");
        let got = mixed.logits.get(r)?.to_vec1::<f32>()?;
        let want = all[expected].get(r)?.to_vec1::<f32>()?;
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "row {r}: {a} vs {b}"
            );
        }
    }
    assert!(model.forward_early_exit(&x, f32::NAN).is_err());
    Ok(())
}

#[test]
fn exit_heads_are_checked_against_the_stages() {
    let dev = Device::Cpu;
    let bad = [
        ModelSpec::new(Arch::Resnet20, 10).with_exits(["layer9"]),
        ModelSpec::new(Arch::Resnet20, 10).with_exits(["fc"]),
        ModelSpec::new(Arch::Resnet20, 10).with_exits(["layer2.0", "layer1.0"]),
        ModelSpec::new(Arch::Dncnn, 0).with_exits(["dncnn"]),
    ];
    for spec in bad {
        let err = zoo::build(&spec, &ParamStore::new(0, &dev));
        assert!(err.is_err(), "{:?} should be refused", spec.exits);
    }
    match zoo::build(
        &ModelSpec::new(Arch::Resnet20, 10).with_exits(["layer1.7"]),
        &ParamStore::new(0, &dev),
    ) {
        Err(e) => assert!(e.to_string().contains("layer1.0"), "{e}"),
        Ok(_) => panic!("an unknown stage was accepted"),
    }
}

/// A store holding copies of `full`'s tensors of `stages` only.
fn subset(full: &ParamStore, model: &dyn Model, stages: &[usize]) -> Result<ParamStore> {
    let part = ParamStore::new(full.seed(), full.device());
    let vb = part.var_builder();
    for &i in stages {
        for name in &model.stages()[i].params {
            let Some(var) = full.get(name) else {
                return Err(Error::Config(format!("no {name}")));
            };
            let init = candle_nn::Init::Const(0.0);
            let t = vb.get_with_hints_dtype(var.dims(), name, init, var.dtype())?;
            let Some(new) = part.get(name) else {
                return Err(Error::Config(format!("not created: {name}")));
            };
            drop(t);
            new.set(var.as_tensor())?;
        }
    }
    Ok(part)
}

#[test]
fn a_model_built_from_a_partial_store_runs_the_stages_it_holds() -> Result<()> {
    let dev = Device::Cpu;
    let spec = ModelSpec::new(Arch::Resnet20, 10);
    let full = ParamStore::new(4, &dev);
    let model = zoo::build(&spec, &full)?;
    let n = model.stages().len();
    let x = input(&[2, 3, 32, 32], 1, 1.0);
    let pass = Pass::new(false);
    let mid = model.forward_range(0..5, &x, &pass)?;
    let whole = values(&model.forward_t(&x, false)?)?;

    // The back half only: its stages run, the front half is refused by name.
    let back: Vec<usize> = (5..n).collect();
    let store = subset(&full, model.as_ref(), &back)?;
    let host = build_partial(&spec, &store, &back, Missing::Error)?;
    assert_eq!(values(&host.forward_range(5..n, &mid, &pass)?)?, whole);
    match host.forward_range(0..n, &x, &pass) {
        Err(e) => assert!(e.to_string().contains("`stem`"), "{e}"),
        Ok(_) => panic!("ran a stage it does not hold"),
    }
    assert_eq!(
        store.len(),
        full.len() - subset(&full, model.as_ref(), &[0, 1, 2, 3, 4])?.len()
    );

    // Claiming a stage it lacks, or holding one it does not claim, is refused.
    assert!(build_partial(&spec, &store, &[4, 5], Missing::Error).is_err());
    assert!(build_partial(&spec, &store, &back[1..], Missing::Error).is_err());

    // Fresh weights for the rest: the model runs whole and the store now holds everything.
    let thief = build_partial(&spec, &store, &back, Missing::Fresh)?;
    let out = thief.forward_t(&x, false)?;
    assert_eq!(out.dims(), [2, 10]);
    assert_eq!(store.len(), full.len());
    assert_eq!(out.dtype(), DType::F32);
    Ok(())
}
